//! The logical size and who owns it: the write lease, adoption of the kernel's size,
//! leaving trailer mode (trim), sync, truncation and exact mode.

use super::{Inode, MAPPED, PAGE};
use crate::config::LogLevel;
use crate::log::flex_log;
use crate::posix::Pass;
use crate::runtime::engine;
use crate::sys::{self, Res};
use crate::trailer;
use rustix::fd::RawFd;
use std::sync::atomic::Ordering::*;

impl Inode {
    /// The descriptor that holds this file's write lease, or -1.
    pub fn lease_fd(&self) -> i32 {
        self.lease_fd.load(Acquire)
    }

    /// Opened afresh (no other description of it in this process): a lease may be granted
    /// again.
    pub fn lease_may_retry(&self) {
        self.lease_refused.store(false, Relaxed);
    }

    /// The kernel breaks the lease (another process opens or truncates the file), or the
    /// program took the lease signal: make the size exact and give the lease back.
    pub fn lease_broken(&self) {
        let _s = self.lock_size();
        self.lease_refused.store(true, Relaxed);
        let fd = self.lease_fd();
        if fd >= 0 {
            if self.trim_locked(fd).is_err() {
                // Nothing to trim through (the descriptor went): still let the opener go.
                self.give_back_lease();
            }
            engine().stats.fell_back(Pass::LeaseBroken);
        }
    }

    pub(super) fn give_back_lease(&self) {
        let fd = self.lease_fd.swap(-1, AcqRel);
        if fd >= 0 {
            crate::lease::release(fd);
        }
    }

    /// May this process over-allocate the file (cache-line granularity, not mapped by the
    /// application, no other opener seen)? Caller holds the size lock.
    pub(super) fn may_overallocate(&self) -> bool {
        let s = self.state.load(Acquire);
        s & MAPPED != 0
            && (s & PAGE == 0 || crate::lease::overallocate_everywhere())
            && !self.exact_only.load(Relaxed)
            && !self.lease_refused.load(Relaxed)
    }

    /// Own the file's size: hold a write lease on it (taken now through `fd` if need be).
    /// Caller holds the size lock.
    pub(super) fn own_size(&self, fd: RawFd) -> bool {
        if self.lease_fd() >= 0 {
            return true;
        }
        if !self.may_overallocate() {
            return false;
        }
        if crate::lease::acquire(fd) {
            self.lease_fd.store(fd, Release);
            // Sole opener now: the kernel's size is final (appends the kernel placed
            // before, whose ends flex did not read back, are in it).
            if let Ok(st) = sys::fstat(fd) {
                let k = st.st_size as u64;
                if k > self.lsize() {
                    self.lsize.store(k, Release);
                }
            }
            true
        } else {
            self.lease_refused.store(true, Relaxed);
            false
        }
    }

    /// The kernel changed the file for this process (fallocate, a call flex left to the
    /// kernel): re-read its size, and on tmpfs look at its holes again if its allocation
    /// changed (preallocated pages are holes to SEEK_DATA until written).
    pub fn refresh(&self, fd: RawFd) -> Res<u64> {
        self.refresh_as(fd, true)
    }

    /// Re-read the kernel's size when this process does not own it (no trailer). Called
    /// when a read comes up short: another process may have extended the file. The hole
    /// knowledge is dropped if blocks were freed (holes punched, a truncation).
    pub(super) fn refresh_as(&self, fd: RawFd, changed: bool) -> Res<u64> {
        let _s = self.lock_size();
        let mut m = self.map_w();
        if m.trailer {
            return Ok(self.lsize());
        }
        let st = sys::fstat(fd)?;
        let k = st.st_size as u64;
        m.ksize = k;
        self.lsize.store(k, Release);
        if let Some(h) = m.holes.as_mut() {
            let blocks = st.st_blocks as u64;
            if blocks < h.blocks || (changed && blocks != h.blocks) {
                // Freed blocks (a punched hole, a truncation by someone else) or new ones
                // of unknown kind: look again.
                h.forget();
            }
            h.blocks = blocks;
            h.cut(k);
            m.refast();
        }
        Ok(k)
    }

    /// A cached inode is reused by a new open, or the application looked at the size:
    /// take the kernel's size, read under the size lock. (A size read before the lock may
    /// be stale: writers of this process extend the file under the lock, and a stale size
    /// adopted afterwards shrinks the logical size below bytes already written; a write
    /// then "extends" the file into trailer mode and the next trim cuts off those bytes.)
    /// The size to report for a kernel `stat` answer `raw`: the logical size in trailer
    /// mode, decided under the size lock so a growth in progress is never seen half-done.
    pub fn settled_size(&self, raw: u64) -> u64 {
        let _s = self.lock_size();
        if self.in_trailer_mode() {
            self.lsize()
        } else {
            raw
        }
    }

    /// Returns the logical size after adoption (in trailer mode the kernel's size is the
    /// over-allocated one: never report that).
    pub fn adopt_kernel_size(&self, fd: RawFd) -> Res<u64> {
        let _s = self.lock_size();
        let k = sys::fstat(fd)?.st_size as u64;
        self.adopt_size_locked(k);
        Ok(self.lsize())
    }

    /// The program's fstat just read `seen`: the size to report, as
    /// [`Inode::adopt_kernel_size`], without a second fstat when nothing of this process
    /// has moved the size away from `seen` (the common case).
    pub fn adopt_seen_size(&self, fd: RawFd, seen: u64) -> Res<u64> {
        {
            let _s = self.lock_size();
            let m = self.map_r();
            if !m.trailer && m.ksize == seen && self.lsize() == seen {
                return Ok(seen);
            }
        }
        self.adopt_kernel_size(fd)
    }

    /// Called at adoption when the cached inode is reused, or fresh: take the kernel's size.
    pub fn adopt_size(&self, ksize: u64) {
        let _s = self.lock_size();
        self.adopt_size_locked(ksize);
    }

    /// Caller holds the size lock.
    fn adopt_size_locked(&self, ksize: u64) {
        let mut m = self.map_w();
        if m.trailer && m.ksize == ksize {
            return;
        }
        if m.trailer {
            // Someone truncated the file behind our back (O_TRUNC open, another process).
            m.trailer = false;
            engine().trailer_files.fetch_sub(1, Relaxed);
        }
        m.ksize = ksize;
        self.lsize.store(ksize, Release);
        if let Some(h) = m.holes.as_mut() {
            h.cut(ksize);
            m.refast();
        }
    }

    /// Leave trailer mode: make the kernel size exact. Caller holds the size lock.
    pub fn trim_locked(&self, fd: RawFd) -> Res<()> {
        if !self.in_trailer_mode() {
            // Only the size lock (held) changes trailer mode: nothing to do.
            return Ok(());
        }
        let mut m = self.map_w();
        if !m.trailer {
            return Ok(());
        }
        let ls = self.lsize();
        sys::ftruncate(fd, ls)?;
        let _ = sys::ofd_lock(fd, trailer::LOCK_AT, false, false);
        engine().trailer_files.fetch_sub(1, Relaxed);
        m.trailer = false;
        m.ksize = ls;
        // Exact now: another opener may come (one waiting for a break proceeds).
        self.give_back_lease();
        self.meta_dirty.store(true, Relaxed);
        flex_log!(
            LogLevel::Debug,
            "trim {} to {}",
            String::from_utf8_lossy(&self.path),
            ls
        );
        Ok(())
    }

    /// Run `f` under the size lock (no write that extends the file runs meanwhile).
    pub fn with_size_lock<R>(&self, f: impl FnOnce() -> R) -> R {
        let _s = self.lock_size();
        f()
    }

    pub fn trim(&self, fd: RawFd) -> Res<()> {
        let _s = self.lock_size();
        self.trim_locked(fd)
    }

    /// fsync/fdatasync: the kernel size becomes exact; then durability by granularity.
    pub fn sync(&self, fd: RawFd, data_only: bool) -> Res<()> {
        let _s = self.lock_size();
        self.trim_locked(fd)?;
        let persist = self.map_r().persist;
        let mapped = !self.map_r().base.is_null();
        if mapped && persist.user_durable && !self.meta_dirty.swap(false, AcqRel) {
            // Every write was made durable before it returned; nothing else changed.
            persist.drain();
            return Ok(());
        }
        if data_only {
            sys::fdatasync(fd)
        } else {
            sys::fsync(fd)
        }
    }

    /// The application truncates (ftruncate, truncate): exact mode, then the kernel.
    pub fn set_len(
        &self,
        fd: Option<RawFd>,
        len: u64,
        kernel: impl FnOnce() -> Res<()>,
    ) -> Res<()> {
        let _s = self.lock_size();
        if let Some(fd) = fd {
            self.trim_locked(fd)?;
        }
        kernel()?;
        let mut m = self.map_w();
        let old = m.ksize;
        m.ksize = len;
        if let Some(h) = m.holes.as_mut() {
            h.resized(old, len);
            m.refast();
        }
        self.lsize.store(len, Release);
        self.meta_dirty.store(true, Relaxed);
        Ok(())
    }

    /// The application maps the file itself, or hands it to the kernel (sendfile...).
    pub fn make_exact(&self, fd: RawFd, forever: bool) -> Res<()> {
        if forever {
            self.exact_only.store(true, Relaxed);
        }
        self.trim(fd)
    }
}
