//! FLEX engine: serves file IO from memory mappings with user-level persistence.
//!
//! The engine knows nothing of LD_PRELOAD: `flex-preload` exports the C ABI on top of
//! [`posix`], and `flexio` offers a `File` to Rust programs.
//!
//! Map of the crate:
//! - [`persist`]: CPU persistence primitives (flush, fence) and [`persist::Granularity`].
//! - [`fault`]: copies that survive faults (bad user pointers, truncated mappings, ENOSPC).
//! - [`trailer`]: the logical-size record of over-allocated files, and crash recovery.
//! - [`inode`]: per-file mapping, size, growth, and the read/write data paths.
//! - [`desc`]: open file descriptions and the descriptor table.
//! - [`lease`]: write leases, which tell flex it is a file's only opener.
//! - [`runtime`]: the process-wide state (config, stats, table, inode/mapping cache).
//! - [`posix`]: one system-call-shaped function per intercepted call.
//! - [`config`], [`stats`], [`log`], [`sys`]: environment, counters, logging, raw syscalls.

pub mod atomic;
pub mod config;
pub(crate) mod desc;
pub mod fault;
pub(crate) mod inode;
pub(crate) mod lease;
pub(crate) mod log;
pub mod persist;
pub mod posix;
pub mod runtime;
pub mod snapshot;
pub mod stats;
pub mod sys;
pub mod trailer;

pub use config::{O_FLEX, O_FLEX_ATOMIC};
pub use persist::Granularity;
