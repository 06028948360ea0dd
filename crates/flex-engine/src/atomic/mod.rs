//! Failure-atomic mode (`FLEX_MODE=atomic`, or `O_FLEX_ATOMIC` at open): after a crash a
//! file is exactly as it was at its last completed fsync, fdatasync or close.
//!
//! - [`log`]: the on-disk redo log format and the [`log::Media`] seam (mapping, plain file,
//!   or the persistence simulator of [`crate::persist::sim`]).
//! - [`protocol`]: log, index of uncommitted ranges, commit, apply, checkpoint and
//!   recovery, generic over the log medium and the data file.
//! - [`site`]: where a file's log lives, and which directory entry is hidden.
//! - `media`: the log mapped (`MapLog`), or through plain system calls (`FileLog`).
//! - `data`: the data file through the inode (`InodeData`) or a descriptor (`FdData`).
//! - `logfile`: finding, creating, opening, locking and removing a data file's log.
//! - `recover`: recovery through plain system calls ([`recover_fd`]), of old-location logs
//!   and of the sibling logs that processes sharing a file left.
//! - `attach`: the per-inode [`Slot`]; `attach` at open, `detach` at the last close.
//! - `file`: [`AtomicFile`] and the engine's hooks on it (read, write, truncate, commit).
//! - `applier`: the per-process background applier (`Worker`) that applies committed
//!   batches off the application's threads.
//! - `private`: flex's own descriptors of atomic files (`move_private`).
//! - `spare`: clean logs kept for the next atomic file instead of removed and remade.

mod applier;
mod attach;
mod data;
mod file;
pub mod log;
mod logfile;
mod media;
mod private;
pub mod protocol;
mod recover;
pub mod site;
mod spare;

#[cfg(test)]
mod tests;

pub use attach::{any_attached, Attached, Slot};
pub(crate) use attach::{attach, detach};
pub(crate) use file::commit_for_kernel;
pub use file::{before_set_times, AtomicFile};
pub(crate) use private::move_private;
pub use recover::recover_fd;
pub(crate) use spare::{forget_in_child as forget_spares_in_child, release_all as release_spares};
