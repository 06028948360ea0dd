//! Which mode a transaction uses: redo or undo, from the policy (`FLEX_ATOMIC_POLICY`)
//! and the file's measured read/write mix.

use super::Core;
use crate::atomic::log::{self, Media};

/// How a transaction keeps its promise.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// New bytes go to the log; reads overlay them; the data file changes after commit.
    /// One copy more per write, none per read outside the uncommitted ranges; suits
    /// writes.
    Redo,
    /// Old bytes go to the log (durably, before), new bytes in place; reads are plain;
    /// the commit syncs the data and drops the log. A barrier pair per write that saves
    /// bytes; suits files mostly read.
    Undo,
}

/// Which mode new transactions use (`FLEX_ATOMIC_POLICY`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Policy {
    /// From the measured mix: undo once reads outnumber writes [`UNDO_READS`] to one.
    Auto,
    Redo,
    Undo,
}

/// Reads per write from which [`Policy::Auto`] picks undo logging.
pub const UNDO_READS: u64 = 4;

impl<M: Media> Core<M> {
    /// The mode of the current (or last) transaction.
    pub fn mode(&self) -> Mode {
        self.mode
    }

    /// A read of this file (the mix that picks the mode).
    pub fn note_read(&mut self) {
        self.reads += 1;
    }

    /// The mode the policy wants for the next transaction.
    pub fn wanted(&self) -> Mode {
        match self.policy {
            Policy::Redo => Mode::Redo,
            Policy::Undo => Mode::Undo,
            Policy::Auto if self.reads >= UNDO_READS * self.writes.max(1) => Mode::Undo,
            Policy::Auto => Mode::Redo,
        }
    }

    /// A transaction begins (its first write or truncation): undo if wanted and the log
    /// is empty (undo records live only in a generation's first transaction, so recovery
    /// never rolls back bytes a committed redo record replays), else redo.
    pub(super) fn begin(&mut self) {
        if self.reads + self.writes > 4096 {
            self.reads /= 2;
            self.writes /= 2;
        }
        let empty = self.log.tail == log::HEADER && self.committed.is_empty() && self.inflight == 0;
        let mode = match self.wanted() {
            Mode::Undo if empty => Mode::Undo,
            _ => Mode::Redo,
        };
        if mode != self.mode {
            self.stats.switches += 1;
            self.mode = mode;
        }
    }
}
