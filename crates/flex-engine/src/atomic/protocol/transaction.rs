//! A transaction's operations: writes and truncations, redo-logged (new bytes to the log
//! and the index) or undo-logged (old bytes saved, new bytes in place); an early commit
//! when the log would pass its bound.

use super::{Core, DataDev, Mode, SHARED_CUT_MAX};
use crate::atomic::log::{self, Media, Op};
use crate::sys::{Errno, Res};

impl<M: Media> Core<M> {
    /// Logging `payload` bytes would make room (early commit and checkpoint), which needs
    /// the in-flight batch finished.
    pub fn needs_room(&self, payload: u64) -> bool {
        self.log.tail + log::rec_len(payload) + log::rec_len(0) * 2 > self.bound
            && self.log.tail != log::HEADER
    }

    /// Before logging `payload` bytes: when the log would pass its bound, commit what is
    /// pending (an early commit: atomicity is kept, the commit point moves earlier) and
    /// checkpoint, so the log restarts empty.
    fn make_room<D: DataDev>(&mut self, data: &mut D, payload: u64) -> Res<()> {
        // With a batch in flight the caller waits for it first; if it did not, the log
        // grows past its bound rather than reset under the batch.
        if !self.needs_room(payload) || self.inflight > 0 {
            return Ok(());
        }
        if self.dirty() {
            self.stats.early_commits += 1;
            self.commit(data)?;
        }
        if self.log.tail > log::HEADER && self.inflight == 0 {
            self.checkpoint(data)?;
        }
        Ok(())
    }

    /// Log a write of `len` bytes from `src` at `off` (or at the end if `append`).
    /// Returns the count and the offset after it.
    ///
    /// # Safety
    /// `src` must be valid for `len` bytes or fault inside a guarded copy (EFAULT).
    pub unsafe fn write<D: DataDev>(
        &mut self,
        data: &mut D,
        off: u64,
        src: *const u8,
        len: usize,
        append: bool,
    ) -> Res<(usize, u64)> {
        self.check()?;
        if len == 0 {
            return Ok((0, off));
        }
        self.make_room(data, len as u64)?;
        if !self.dirty() {
            self.observe_size(data)?;
            self.begin();
        }
        self.writes += 1;
        if self.shared && self.mode == Mode::Undo && append {
            // The kernel places the append (other processes append too); nothing old is
            // overwritten, the stamp lets recovery cut it only while it is the file's end.
            let before = data.size()?;
            self.log.append_intent(before, before, before)?;
            self.save(data, 0, 0)?;
            self.log.m.barrier()?;
            self.inplace = true;
            // SAFETY: forwarded contract.
            let (n, at) = unsafe { data.append_user(src, len) }?;
            let end = at + n as u64;
            self.size = self.size.max(end);
            self.stamp(data, at, end, at)?;
            return Ok((n, end));
        }
        let off = if append { self.size } else { off };
        let end = off.checked_add(len as u64).ok_or(Errno::FBIG)?;
        if self.mode == Mode::Undo {
            // A write past the end also changes the chunk of the old end: the kernel
            // fills the gap with zeros, which that chunk's last stamp did not cover.
            let mut old_end = None;
            if self.shared {
                let before = data.size()?;
                if off > before && before % log::CHUNK != 0 {
                    old_end = Some(before);
                }
                // Which chunks are about to change, durable with the saved bytes (the
                // save's barriers): a crash inside the write rolls them back.
                self.log.append_intent(off.min(before), end, before)?;
            }
            self.save(data, off, end)?;
            if self.shared {
                self.log.m.barrier()?;
            }
            self.inplace = true;
            let before = if self.shared { data.size()? } else { 0 };
            // SAFETY: forwarded contract.
            let n = match unsafe { data.write_user(off, src, len) } {
                Ok(n) => n,
                Err(err) => {
                    // tmpfs and ext4 leave the size at `off` after a write past the end
                    // that copied nothing: a failed call changes nothing here.
                    if off > self.size {
                        let _ = data.set_len(self.size);
                    }
                    return Err(err);
                }
            };
            let end = off + n as u64;
            self.size = self.size.max(end);
            if self.shared {
                match old_end.filter(|&b| b / log::CHUNK < off / log::CHUNK) {
                    Some(b) => {
                        // The old end's chunk first: once its stamp is in, a crash before
                        // the next one leaves [off, end) past the old size, which the size
                        // going back cuts. The second stamp continues the size chain.
                        self.stamp(data, b, b + 1, before)?;
                        let now = data.size()?;
                        self.stamp(data, off, end, now)?;
                    }
                    None => self.stamp(data, off, end, before)?,
                }
            }
            return Ok((n, end));
        }
        // SAFETY: forwarded contract.
        let (at, len) = unsafe { self.log.append_write(off, src, len) }?;
        let end = off + len as u64;
        self.index(off, end, Some(at));
        self.ops.push(Op::Write {
            off,
            len: len as u64,
            at,
        });
        self.size = self.size.max(end);
        self.stats.logged_bytes += len as u64;
        Ok((len, end))
    }

    /// Log a truncation (or extension) to `len`.
    pub fn truncate<D: DataDev>(&mut self, data: &mut D, len: u64) -> Res<()> {
        self.check()?;
        self.make_room(data, 0)?;
        if !self.dirty() {
            self.observe_size(data)?;
            self.begin();
        }
        self.writes += 1;
        if self.mode == Mode::Undo {
            let keep = self.size0.unwrap_or(self.size).min(self.size);
            // Shared: what a cut loses is every byte there now (see `save`).
            let cut = if self.shared {
                let now = data.size()?;
                self.gaps(len.min(now), now).iter().map(|g| g.1 - g.0).sum()
            } else {
                0
            };
            if self.shared && cut > SHARED_CUT_MAX {
                // Too much to save, and a shared file cannot go on as redo: a commit
                // point (as the byte-changing fallocate modes). The truncation is its own
                // redo transaction, committed before the file changes (a crash replays it).
                if self.dirty() {
                    self.stats.early_commits += 1;
                    self.commit(data)?;
                }
                if self.log.tail > log::HEADER {
                    self.checkpoint(data)?;
                }
                self.log.append_truncate(len)?;
                self.log.commit(len)?;
                self.stats.commits += 1;
                data.settle();
                data.set_len(len)?;
                data.sync()?;
                self.log.reset()?;
                self.size = len;
                self.committed_size = len;
                return Ok(());
            }
            if len >= keep || self.shared || self.unsaved(len, keep) <= self.bound / 4 {
                let before = if self.shared { data.size()? } else { 0 };
                if self.shared {
                    self.log
                        .append_intent(len.min(before), len.max(before), before)?;
                }
                self.save(data, len, if self.shared { u64::MAX } else { self.size })?;
                if self.shared {
                    self.log.m.barrier()?;
                }
                self.inplace = true;
                data.set_len(len)?;
                self.size = len;
                if self.shared {
                    // The chunk at the old or new end is the only one whose bytes change.
                    let m = len.min(before);
                    self.stamp(data, m, (m + 1).min(len.max(before)), before)?;
                }
                return Ok(());
            }
            // Too much to save: the transaction goes on as redo (its undo records stay
            // valid: recovery rolls them back if it does not commit).
            self.mode = Mode::Redo;
            self.stats.undo_to_redo += 1;
        }
        self.log.append_truncate(len)?;
        self.index(len, u64::MAX, None);
        self.base_limit = self.base_limit.min(len);
        self.ops.push(Op::Truncate { len });
        self.size = len;
        Ok(())
    }
}
