//! The background applier, simulated: batches applied step by step and idle files
//! checkpointed, interleaved at random with the foreground.

use super::workload::Tag;
use crate::atomic::protocol::{Batch, Core, DataDev};
use crate::persist::sim::SimDev;

/// The background applier, simulated: a batch taken from the core and the next step to
/// apply, interleaved with the foreground operations at random.
pub(super) struct Bg {
    pub(super) batch: Option<(Batch, usize)>,
    /// A background checkpoint synced the data file at this epoch; its reset is pending.
    pub(super) synced: Option<u64>,
    pub(super) batches: u64,
    pub(super) resets: u64,
}

impl Bg {
    /// Finish the batch in flight (the foreground waits for it).
    pub(super) fn drain<D: DataDev>(&mut self, core: &mut Core<SimDev<Tag>>, data: &mut D) {
        if let Some((b, i)) = self.batch.take() {
            for k in i..=b.ops.len() {
                // SAFETY: a batch taken and not finished.
                unsafe { b.step(data, k) }.expect("apply step");
            }
            core.finish_batch(b, Ok(()));
            self.batches += 1;
        }
    }

    /// One random move of the applier.
    pub(super) fn act<D: DataDev>(
        &mut self,
        r: &mut fastrand::Rng,
        core: &mut Core<SimDev<Tag>>,
        data: &mut D,
    ) {
        match r.u32(..5) {
            0 => {
                if self.batch.is_none() {
                    self.batch = core.take_batch().map(|b| (b, 0));
                }
            }
            1 | 2 => {
                let done = match &mut self.batch {
                    Some((b, i)) => {
                        let end = (*i + 1 + r.usize(..3)).min(b.ops.len() + 1);
                        for k in *i..end {
                            // SAFETY: a batch taken and not finished.
                            unsafe { b.step(data, k) }.expect("apply step");
                        }
                        *i = end;
                        end > b.ops.len()
                    }
                    None => false,
                };
                if done {
                    if let Some((b, _)) = self.batch.take() {
                        core.finish_batch(b, Ok(()));
                        self.batches += 1;
                    }
                }
            }
            3 => {
                // The applier catches up (finishes the batch, applies the rest), then
                // checkpoints if the file is idle.
                self.drain(core, data);
                self.batch = core.take_batch().map(|b| (b, 0));
                self.drain(core, data);
                if core.idle_checkpoint() {
                    // A newer sync replaces a pending one.
                    data.sync().expect("sync");
                    self.synced = Some(core.applied);
                    if r.bool() {
                        // The reset right after the sync (else after later foreground ops).
                        self.act_reset(core);
                    }
                }
            }
            _ => {
                // Often late: foreground operations (commits, applied batches) come
                // between the sync and the reset, which must then refuse.
                if r.u32(..4) == 0 {
                    self.act_reset(core);
                }
            }
        }
    }

    fn act_reset(&mut self, core: &mut Core<SimDev<Tag>>) {
        if let Some(epoch) = self.synced.take() {
            if core.reset_after_sync(epoch).expect("reset") {
                self.resets += 1;
            }
        }
    }
}
