//! The commit point: everything logged becomes durable as one transaction.

use super::{Core, DataDev};
use crate::atomic::log::Media;
use crate::sys::Res;

impl<M: Media> Core<M> {
    /// fsync: make everything logged durable as one transaction. Inline mode then applies
    /// it to the data file (not synced: the log holds it until the next checkpoint) and
    /// checkpoints past half the bound; background mode leaves both to the applier and
    /// the caller ([`Core::wants_checkpoint`]).
    pub fn commit<D: DataDev>(&mut self, data: &mut D) -> Res<()> {
        self.check()?;
        if !self.dirty() {
            return Ok(());
        }
        if self.inplace || self.size0.is_some() {
            // Undo: the new bytes (and size) in the data file are durable before the
            // commit point.
            data.sync()?;
            if self.ops.is_empty() {
                // The new generation is the commit: the undo records are gone at once.
                self.log.reset()?;
                self.stats.commits += 1;
                self.stats.undo_commits += 1;
                self.size0 = None;
                self.inplace = false;
                self.saved.clear();
                self.committed_size = self.size;
                return Ok(());
            }
            // A transaction that went on as redo commits as redo (COMMIT record).
            self.size0 = None;
            self.inplace = false;
            self.saved.clear();
        }
        self.log.commit(self.size)?;
        self.stats.commits += 1;
        let ops = core::mem::take(&mut self.ops);
        self.committed.extend(ops);
        self.committed_size = self.size;
        if self.background {
            return Ok(());
        }
        self.apply_all(data)?;
        if self.wants_checkpoint() {
            self.checkpoint(data)?;
        }
        Ok(())
    }
}
