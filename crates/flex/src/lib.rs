//! FLEX engine: serves file IO from memory mappings with user-level persistence.
//!
//! The engine knows nothing of LD_PRELOAD: `flex-preload` exports the C ABI on top of
//! [`posix`], and `flexio` offers [`File`] to Rust programs.

pub mod fault;
pub mod persist;
