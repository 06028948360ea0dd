//! Undo logging: the old bytes of a range are made durable in the log before the data
//! file changes in place, once per range per transaction.

use super::{Core, DataDev};
use crate::atomic::log::{self, Media};
use crate::sys::Res;

impl<M: Media> Core<M> {
    /// Undo: bytes of `[s, e)` below the transaction's first size whose old contents the
    /// log does not hold yet.
    pub(super) fn unsaved(&self, s: u64, e: u64) -> u64 {
        let e = e.min(self.size0.unwrap_or(self.size));
        self.gaps(s, e).iter().map(|g| g.1 - g.0).sum()
    }

    /// The parts of `[s, e)` not in `saved`.
    pub(super) fn gaps(&self, s: u64, e: u64) -> Vec<(u64, u64)> {
        let mut out = Vec::new();
        let mut at = s;
        let first = match self.saved.range(..=s).next_back() {
            Some((&k, _)) => k,
            None => s,
        };
        for (&k, &ke) in self.saved.range(first..e) {
            if ke <= at {
                continue;
            }
            if k > at {
                out.push((at, k));
            }
            at = at.max(ke);
            if at >= e {
                break;
            }
        }
        if at < e {
            out.push((at, e));
        }
        out
    }

    /// Undo: before `[s, e)` changes in place, make the old bytes durable in the log (and,
    /// first in a transaction, the size it began with). Payloads, barrier, headers,
    /// barrier: a valid UNDO header always has its whole payload.
    pub(super) fn save<D: DataDev>(&mut self, data: &mut D, s: u64, e: u64) -> Res<()> {
        let fresh = self.size0.is_none();
        if fresh {
            self.log.append_undo_size(self.size, self.shared)?;
            self.size0 = Some(self.size);
        }
        // Shared: every byte that exists now is saved (other processes may have extended
        // the file since this transaction began).
        let lim = if self.shared {
            e.min(data.size()?)
        } else {
            e.min(self.size0.unwrap_or(0))
        };
        let gaps = if s < lim {
            self.gaps(s, lim)
        } else {
            Vec::new()
        };
        if gaps.is_empty() {
            if fresh {
                self.log.m.barrier()?;
            }
            return Ok(());
        }
        let mut staged = Vec::with_capacity(gaps.len());
        let mut scratch = core::mem::take(&mut self.scratch);
        let r = (|| {
            for &(a, b) in &gaps {
                let n = (b - a) as usize;
                scratch.clear();
                scratch.resize(n, 0);
                // Unsaved bytes below the first size are below the current size (a
                // shrink saves what it cuts); a short read leaves zeros, as the file
                // reads there.
                // SAFETY: our own buffer of n bytes.
                unsafe { data.read_raw(a, scratch.as_mut_ptr(), n) }?;
                // SAFETY: as above.
                staged.push(unsafe { self.log.stage(log::UNDO, a, scratch.as_ptr(), n) }?);
                self.stats.logged_bytes += n as u64;
            }
            self.log.m.barrier()?;
            for st in &staged {
                self.log.seal_staged(st);
            }
            self.log.m.barrier()
        })();
        self.scratch = scratch;
        r?;
        self.mark_saved(s, lim);
        Ok(())
    }

    fn mark_saved(&mut self, s: u64, e: u64) {
        let (mut ns, mut ne) = (s, e);
        if let Some((&ps, &pe)) = self.saved.range(..=s).next_back() {
            if pe >= s {
                ns = ps;
                ne = ne.max(pe);
            }
        }
        while let Some((&k, &ke)) = self.saved.range(ns..=ne).next() {
            self.saved.remove(&k);
            ne = ne.max(ke);
        }
        self.saved.insert(ns, ne);
    }
}
