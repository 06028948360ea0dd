//! Failure-atomic mode (`FLEX_MODE=atomic`, or `O_FLEX_ATOMIC` at open): after a crash a
//! file is exactly as it was at its last completed fsync, fdatasync or close.
//!
//! - [`log`]: the on-disk redo log format and the [`log::Media`] seam (mapping, plain file,
//!   or the persistence simulator of [`crate::persist::sim`]).
//! - [`core`]: the protocol (log, index of uncommitted ranges, commit, apply, checkpoint,
//!   recovery), generic over the log medium and the data file.

pub mod core;
pub mod log;

#[cfg(test)]
mod tests;
