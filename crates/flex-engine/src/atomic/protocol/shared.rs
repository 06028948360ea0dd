//! Files other processes have open: every transaction undo-logged in place and stamped
//! (so recovery spares other processes' bytes), the size taken from the data file, and
//! the conversion of a redo transaction in progress when the file goes shared.

use super::recover::chunk_hashes;
use super::{Core, DataDev, Mode, Policy};
use crate::atomic::log::{self, Media, Op};
use crate::sys::{Errno, Res};

/// A shared file's truncation that cuts more bytes than this is a commit point (the bytes
/// are not saved: a shared file cannot go on as redo).
pub const SHARED_CUT_MAX: u64 = 64 << 20;

impl<M: Media> Core<M> {
    /// Shared with other processes (see [`Core::go_shared`]).
    pub fn shared(&self) -> bool {
        self.shared
    }

    /// Shared: the data file holds every byte of this process in place, and other
    /// processes change it too: its size is the truth (reads past the size this process
    /// knew, `fstat`, `SEEK_END`).
    pub fn observe_size<D: DataDev>(&mut self, data: &D) -> Res<u64> {
        if self.shared && self.ops.is_empty() && self.inflight == 0 {
            self.size = data.size()?;
        }
        Ok(self.size)
    }

    /// Stamp `[s, e)` as this process just stored it, and the file's size `before` the
    /// change and now (shared files; see `log::STAMP`), durably before the call returns.
    pub(super) fn stamp<D: DataDev>(
        &mut self,
        data: &mut D,
        s: u64,
        e: u64,
        before: u64,
    ) -> Res<()> {
        let first = s - s % log::CHUNK;
        let end =
            (e.div_ceil(log::CHUNK) * log::CHUNK).max(first + log::CHUNK * (s > first) as u64);
        let hashes = if end > first {
            chunk_hashes(data, first, end)?
        } else {
            Vec::new()
        };
        let after = data.size()?;
        // The stamp vouches for bytes that survive a crash of the machine too: the data
        // first (a fence on DAX, where the write made it durable already).
        data.sync()?;
        self.log.append_stamp(first, before, after, &hashes)?;
        self.log.m.barrier()
    }

    /// Other processes have the file open (or the program mapped it): from now on every
    /// transaction is undo-logged, so the data file holds this process's writes at once,
    /// as the kernel's write would. A redo transaction in progress goes on as undo: what
    /// is committed is applied and checkpointed, the uncommitted writes are taken out of
    /// the log and made again in place, each with its old bytes saved first, so a crash
    /// still rolls the whole transaction back. No batch may be in flight.
    pub fn go_shared<D: DataDev>(&mut self, data: &mut D) -> Res<()> {
        self.check()?;
        if self.inflight > 0 {
            return Err(Errno::BUSY);
        }
        if self.shared {
            return Ok(());
        }
        self.policy = Policy::Undo;
        self.shared = true;
        if self.mode == Mode::Undo && self.ops.is_empty() {
            // Undo already (or idle after undo): in place; later transactions stay undo.
            if !self.dirty() {
                return self.checkpoint(data);
            }
            // An undo transaction in progress: mark it shared and stamp what it changed so
            // far, durably, before anyone else can write (recovery then spares their
            // bytes, see `roll_back_shared`).
            self.log
                .append_undo_size(self.size0.unwrap_or(self.size), true)?;
            // Until now nobody else could change the size: one link of the chain from the
            // transaction's first size to the size now.
            let now = data.size()?;
            self.log
                .append_stamp(0, self.size0.unwrap_or(now), now, &[])?;
            let saved: Vec<(u64, u64)> = self.saved.iter().map(|(&a, &b)| (a, b)).collect();
            for (a, b) in saved {
                self.stamp(data, a, b, now)?;
            }
            return self.log.m.barrier();
        }
        if self.size0.is_some() || self.inplace {
            // An undo transaction that went on as redo (a large truncation): its in-place
            // part cannot be redone; commit it here (a commit point the program did not
            // ask for, counted as an early commit).
            self.stats.early_commits += 1;
            self.commit(data)?;
        }
        self.apply_all(data)?;
        // The uncommitted redo writes, in order, with their bytes.
        let ops = core::mem::take(&mut self.ops);
        let mut redo: Vec<(Op, Vec<u8>)> = Vec::with_capacity(ops.len());
        for op in ops {
            let bytes = match op {
                Op::Write { len, at, .. } => {
                    let mut b = vec![0u8; len as usize];
                    self.log.m.read(at, &mut b);
                    b
                }
                Op::Truncate { .. } => Vec::new(),
            };
            redo.push((op, bytes));
        }
        // The data file holds everything committed: a new generation drops the log.
        data.sync()?;
        self.log.reset()?;
        self.stats.checkpoints += 1;
        self.ext.clear();
        self.base_limit = u64::MAX;
        self.size = self.committed_size;
        self.mode = Mode::Undo;
        for (op, bytes) in redo {
            match op {
                Op::Write { off, .. } => {
                    // SAFETY: our own buffer of bytes.len() bytes.
                    let (n, _) =
                        unsafe { self.write(data, off, bytes.as_ptr(), bytes.len(), false) }?;
                    if n != bytes.len() {
                        self.broken = true;
                        return Err(Errno::IO);
                    }
                }
                Op::Truncate { len } => self.truncate(data, len)?,
            }
        }
        Ok(())
    }

    /// The file is this process's alone again (between transactions only): `policy`
    /// from the next transaction on.
    pub fn end_shared(&mut self, policy: Policy) {
        if !self.dirty() {
            self.shared = false;
            self.policy = policy;
        }
    }
}
