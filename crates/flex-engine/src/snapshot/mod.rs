//! Live snapshots: a point-in-time copy of a file that flex processes keep writing
//! (versioning mmap's problem, solved where flex sits: on the write path).
//!
//! The snapshotter (`flexio snapshot`, in the `flexio` crate) finds every process that
//! has the file open for writing, refuses if one cannot take part, and sends each a
//! request (a queued signal, [`crate::lease::SIGNAL`], carrying its control block's
//! descriptor). Each process *joins* from the signal handler: the calls in flight finish,
//! new ones wait ([`gate`]). When all have joined, that is the instant: the snapshotter
//! notes the size and starts copying; from then on a process copies a page's old bytes
//! into the snapshot before it changes the page ([`cow`]), so only pages written during
//! the snapshot cost anything. The parts: [`control`] (the shared block's layout, used by
//! both sides), [`gate`] (the write gate), [`join`] (arming and joining), [`cow`].

pub mod control;
pub(crate) mod cow;
pub mod gate;
pub(crate) mod join;

pub use cow::move_pages;
pub use gate::{abandon, after_fork_child, enter, enter_fd, Gate, Op};
pub(crate) use join::{arm, disarm, note_atomic, on_request};
pub use join::{before_mmap, calls_are_gated};

/// The signal that carries a request (shared with lease breaks, told apart by si_code).
pub const SIGNAL: i32 = crate::lease::SIGNAL;
