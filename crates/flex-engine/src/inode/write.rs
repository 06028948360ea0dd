//! The write paths: through the mapping, through the kernel (appends included), the
//! fallback after a fault in a copy, and growth of the over-allocated file.

use super::mapping::Mapping;
use super::{grow_target, round_up, AppendAt, Inode, FAST_LIMIT, MAPPED, MAX_RW, PAGE};
use crate::config::LogLevel;
use crate::log::flex_log;
use crate::persist;
use crate::posix::Pass;
use crate::runtime::{engine, Engine};
use crate::sys::{self, Errno, Res};
use crate::trailer::{self, Trailer};
use rustix::fd::RawFd;
use std::sync::atomic::Ordering::*;

impl Inode {
    /// Write through the kernel (unmapped file, or a fallback). An append is the kernel's
    /// own (O_APPEND or RWF_APPEND): the kernel picks the end of file under its inode
    /// lock, so appends of every process, with flex or without, never overlap.
    ///
    /// # Safety
    /// Each buffer must be valid for its length or invalid (the kernel answers EFAULT).
    pub unsafe fn kernel_write(
        &self,
        fd: RawFd,
        bufs: &[(*const u8, usize)],
        off: u64,
        append: Option<AppendAt>,
    ) -> Res<(usize, u64)> {
        let _s = self.lock_size();
        if let Some(how) = append {
            // SAFETY: forwarded contract.
            return unsafe { self.kernel_append_locked(fd, bufs, how) };
        }
        self.kernel_write_locked(fd, bufs, off)
    }

    /// The kernel appends (caller holds the size lock). Leaves trailer mode first, so the
    /// kernel's end of file is the logical one.
    ///
    /// # Safety
    /// As [`Inode::kernel_write`].
    unsafe fn kernel_append_locked(
        &self,
        fd: RawFd,
        bufs: &[(*const u8, usize)],
        how: AppendAt,
    ) -> Res<(usize, u64)> {
        self.trim_locked(fd)?;
        let (n, end) = match how {
            // SAFETY (all four): forwarded contract.
            AppendAt::Position(_) | AppendAt::KernelPos => {
                if let AppendAt::Position(pos) = how {
                    // The kernel checks the file position before it appends, as for
                    // write(2): flex's position goes there first.
                    sys::lseek(fd, pos as i64, libc::SEEK_SET)?;
                }
                let n = unsafe { sys::append_at(fd, bufs, -1) }?;
                if n > 0 && self.state.load(Acquire) & (MAPPED | PAGE) == MAPPED {
                    sys::fdatasync(fd)?;
                }
                // The size grew past what flex knows: a read at its end asks the kernel.
                engine().stats.bytes_written.fetch_add(n as u64, Relaxed);
                return Ok((n, u64::MAX));
            }
            AppendAt::Private => {
                // Its position may be the program's too (a duplicate of a read-write
                // descriptor): from 0, the kernel's check never trips on it.
                sys::lseek(fd, 0, libc::SEEK_SET)?;
                unsafe { sys::append(fd, bufs) }?
            }
            AppendAt::Offset(off) => {
                // pwrite(2) on an O_APPEND descriptor: the offset is checked, then ignored,
                // and the file position stays; where the bytes went does not matter.
                let n = unsafe { sys::append_at(fd, bufs, off as i64) }?;
                let size = sys::fstat(fd)?.st_size as u64;
                (n, size.max(n as u64))
            }
        };
        self.saw_end(end - n as u64, end);
        if n > 0 && self.state.load(Acquire) & (MAPPED | PAGE) == MAPPED {
            // Cache-line granularity promises a write durable on return: the kernel's
            // DAX write stored the bytes durably, the new size needs the journal.
            sys::fdatasync(fd)?;
        }
        engine().stats.bytes_written.fetch_add(n as u64, Relaxed);
        Ok((n, end))
    }

    /// The kernel's file holds `[off, end)` now and reaches at least `end` (a write
    /// through it returned there).
    fn saw_end(&self, off: u64, end: u64) {
        if end > self.lsize() {
            self.lsize.store(end, Release);
            let mut m = self.map_w();
            let old = m.ksize;
            m.ksize = m.ksize.max(end);
            if let Some(h) = m.holes.as_mut() {
                // An append keeps a hole-free file hole-free, and the fast path with it.
                h.wrote(off, end, old);
                m.refast();
            }
        }
    }

    /// Write the buffers at `off` (or at the end if `append`). Returns the count and the
    /// offset just past the written bytes, as pwritev(2) plus O_APPEND.
    ///
    /// `stream`: on page granularity, store with non-temporal stores and no fence (the
    /// caller fences once, [`crate::persist::fence`], before anyone may look). For bulk
    /// copies of bytes nobody reads soon (the atomic mode's apply): no read-for-ownership
    /// of the destination lines, about 2.5x less memory traffic on cold pages.
    ///
    /// # Safety
    /// Each buffer must be valid for its length or fault when read (the copy is guarded).
    pub unsafe fn write_at(
        &self,
        fd: RawFd,
        bufs: &[(*const u8, usize)],
        off: u64,
        append: Option<AppendAt>,
        stream: bool,
    ) -> Res<(usize, u64)> {
        let e = engine();
        let how_append = append;
        let total: usize = bufs
            .iter()
            .fold(0usize, |a, b| a.saturating_add(b.1))
            .min(MAX_RW);
        if total == 0 {
            return Ok((0, off));
        }
        // Fast path: an overwrite inside the logical size by a single buffer, in parallel
        // with other such writes.
        if append.is_none() && bufs.len() == 1 {
            let end = off.saturating_add(total as u64);
            let m = self.map_r();
            // `wfast` (not the mapping's length): a write into a hole takes the locked
            // path below, which records the hole filled (or, with blocks smaller than a
            // page, lets the kernel write); an overwrite of data past the first hole
            // stays here.
            let ls = self.lsize();
            if !m.base.is_null() && m.writable && end <= ls && m.write_in_place(off, end, ls) {
                let rem = self.copy_in(&m, bufs, off, total, stream);
                drop(m);
                if rem == 0 {
                    e.stats.bytes_written.fetch_add(total as u64, Relaxed);
                    return Ok((total, end));
                }
                let _s = self.lock_size();
                return self.fault_fallback(fd, bufs, off, total - rem);
            }
        }
        let _s = self.lock_size();
        if let Some(how) = append.filter(|_| !self.in_trailer_mode() && !self.own_size(fd)) {
            // Not the owner of the size: only the kernel appends atomically.
            // SAFETY: forwarded contract.
            return unsafe { self.kernel_append_locked(fd, bufs, how) };
        }
        let append = append.is_some();
        let off = if append { self.lsize() } else { off };
        let end = off.checked_add(total as u64).ok_or(Errno::FBIG)?;
        if end > FAST_LIMIT {
            e.stats.fell_back(Pass::BeyondFastRange);
            if let Some(how) = how_append {
                // SAFETY: forwarded contract.
                return unsafe { self.kernel_append_locked(fd, bufs, how) };
            }
            return self.kernel_write_locked(fd, bufs, off);
        }
        let mut m = self.map_w();
        let old = m.ksize;
        if end > self.lsize() {
            if !m.trailer && !self.own_size(fd) {
                // Not the sole opener (or the program maps the file): the kernel extends
                // it, exactly as it would (a bad buffer extends nothing; another process's
                // append is never cut).
                drop(m);
                return self.kernel_write_locked(fd, bufs, off);
            }
            let grown = self.grow(&mut m, fd, end, e);
            match grown {
                Ok(()) => {}
                Err(Errno::NOSPC) | Err(Errno::FBIG) | Err(Errno::DQUOT) => {
                    e.stats.fell_back(Pass::CannotReserve);
                    drop(m);
                    return self.kernel_write_locked(fd, bufs, off);
                }
                Err(err) => return Err(err),
            }
        }
        if self.ensure_map(&mut m, fd, end, true, e).is_err() {
            // No mapping can cover the file (sparse, far beyond the fast range): the
            // kernel writes.
            e.stats.fell_back(Pass::CannotMap);
            drop(m);
            return self.kernel_write_locked(fd, bufs, off);
        }
        if m.holes.is_some() && !m.hole_reads && !m.write_in_place(off, end, self.lsize()) {
            // Blocks smaller than a page: a write fault would allocate all of the page's.
            drop(m);
            e.stats.fell_back(Pass::WriteIntoHole);
            let r = self.kernel_write_locked(fd, bufs, off);
            if let Ok((n, _)) = r {
                let mut m = self.map_w();
                let k = m.ksize;
                if let Some(h) = m.holes.as_mut() {
                    h.wrote(off, off + n as u64, k);
                }
                m.refast();
            }
            return r;
        }
        let rem = self.copy_in(&m, bufs, off, total, stream);
        let reached = off + (total - rem) as u64;
        if let Some(h) = m.holes.as_mut() {
            h.wrote(off, reached, old);
            m.refast();
        }
        // A write that copied nothing (a bad buffer) must not extend the file.
        if rem < total && reached > self.lsize() {
            self.publish_size(&m, reached);
        }
        drop(m);
        if rem == 0 {
            e.stats.bytes_written.fetch_add(total as u64, Relaxed);
            return Ok((total, end));
        }
        self.fault_fallback(fd, bufs, off, total - rem)
    }

    /// Overwrite many ranges inside the logical size under one hold of the mapping (the
    /// atomic mode applying a batch): streaming stores on page granularity and a single
    /// fence at the end, where per-call locking would drain the stores after each copy.
    /// Returns how many leading ranges were written; the caller writes the rest one by one
    /// (a range past the size or the mapping, or a fault).
    ///
    /// # Safety
    /// Each source must be valid for its length or fault when read (the copy is guarded).
    pub unsafe fn overwrite_many(&self, ranges: &[(u64, *const u8, usize)]) -> usize {
        let m = self.map_r();
        if m.base.is_null() || !m.writable {
            return 0;
        }
        let size = self.lsize().min(m.len as u64);
        let mut done = 0;
        for &(off, src, len) in ranges {
            if off.checked_add(len as u64).is_none_or(|e| e > size) {
                break;
            }
            // SAFETY: [off, off+len) lies inside the writable mapping and the logical size
            // (checked above, under the mapping's read lock); a fault on the source is
            // caught by the guarded copy.
            let rem = unsafe { m.persist.copy(m.base.add(off as usize), src, len, true) };
            if rem != 0 {
                break;
            }
            done += 1;
        }
        // Durable where the granularity allows, and ordered before anyone looks: streaming
        // stores are weakly ordered on every granularity.
        m.persist.drain();
        persist::fence();
        drop(m);
        let bytes: usize = ranges[..done].iter().map(|r| r.2).sum();
        engine()
            .stats
            .bytes_written
            .fetch_add(bytes as u64, Relaxed);
        done
    }

    /// Copy the buffers into the mapping at `off`, durably on cache-line granularity.
    /// Returns the number of bytes not copied (a fault stopped the copy).
    fn copy_in(
        &self,
        m: &Mapping,
        bufs: &[(*const u8, usize)],
        off: u64,
        total: usize,
        stream: bool,
    ) -> usize {
        let mut at = off as usize;
        let mut left = total;
        for &(p, l) in bufs {
            let l = l.min(left);
            if l == 0 {
                continue;
            }
            // SAFETY: [at, at+l) lies inside the writable mapping (checked by the callers
            // against its length); the source is the application's buffer, and a fault on
            // either side is caught by the guarded copy and reported as a remainder.
            let rem = unsafe { m.persist.copy(m.base.add(at), p, l, stream) };
            left -= l - rem;
            if rem != 0 {
                break;
            }
            at += l;
        }
        m.persist.drain();
        left
    }

    /// A copy faulted after `done` bytes: a bad source buffer, or a page the file system
    /// could not provide. The kernel gives the exact answer for the rest (EFAULT, ENOSPC,
    /// a short count). Caller holds the size lock.
    fn fault_fallback(
        &self,
        fd: RawFd,
        bufs: &[(*const u8, usize)],
        off: u64,
        done: usize,
    ) -> Res<(usize, u64)> {
        let e = engine();
        e.stats.fell_back(Pass::FaultDuringWrite);
        let rest = skip(bufs, done);
        match self.kernel_write_locked(fd, &rest, off + done as u64) {
            Ok((n, end)) => {
                e.stats.bytes_written.fetch_add(done as u64, Relaxed);
                Ok((done + n, end))
            }
            Err(err) if done == 0 => Err(err),
            Err(_) => {
                e.stats.bytes_written.fetch_add(done as u64, Relaxed);
                Ok((done, off + done as u64))
            }
        }
    }

    /// The kernel writes: leave trailer mode first so the kernel sees the logical size.
    /// Caller holds the size lock.
    fn kernel_write_locked(
        &self,
        fd: RawFd,
        bufs: &[(*const u8, usize)],
        off: u64,
    ) -> Res<(usize, u64)> {
        self.trim_locked(fd)?;
        // SAFETY: the buffers come from write_at/kernel_write, whose contract they carry.
        let n = unsafe { sys::pwritev(fd, bufs, off) }?;
        let end = off + n as u64;
        self.saw_end(off, end);
        if n > 0 && self.state.load(Acquire) & (MAPPED | PAGE) == MAPPED {
            // Cache-line granularity promises a write durable on return, size included.
            sys::fdatasync(fd)?;
        }
        engine().stats.bytes_written.fetch_add(n as u64, Relaxed);
        Ok((n, end))
    }

    /// Extend the kernel size so that `end` fits before the trailer, in large steps.
    fn grow(&self, m: &mut Mapping, fd: RawFd, end: u64, e: &Engine) -> Res<()> {
        if m.trailer && end + trailer::SIZE <= m.ksize {
            return Ok(());
        }
        let old = m.ksize;
        let new = grow_target(end, e.config.grow_min);
        // Reserve the blocks first: ENOSPC surfaces here, never as SIGBUS later.
        let from = if m.trailer {
            old
        } else {
            self.lsize().min(old)
        };
        let fail = |err| {
            if !m.trailer {
                self.give_back_lease();
            }
            Err(err)
        };
        match sys::reserve(fd, from, new - from) {
            // Without fallocate, a page that cannot be allocated faults in the guarded
            // copy and the write falls back to the kernel.
            Ok(()) | Err(Errno::OPNOTSUPP) => {}
            Err(err) => return fail(err),
        }
        if !m.trailer {
            // Tell recovery that a live process owns the over-allocation.
            let _ = sys::ofd_lock(fd, trailer::LOCK_AT, false, true);
            engine().trailer_files.fetch_add(1, Relaxed);
        }
        let t = Trailer {
            lsize: self.lsize(),
            ksize: new,
            ino: self.ino,
        };
        let b = t.encode();
        // One system call extends the file and writes the trailer: a crash sees either
        // the old size or the new size with a valid trailer.
        // SAFETY: `b` is our own buffer.
        let n = match unsafe { sys::pwrite_exact(fd, b.as_ptr(), b.len(), new - trailer::SIZE) } {
            Ok(n) => n,
            Err(err) => return fail(err),
        };
        if n != b.len() {
            return fail(Errno::NOSPC);
        }
        let was_trailer = m.trailer;
        m.ksize = new;
        m.trailer = true;
        self.meta_dirty.store(true, Relaxed);
        e.stats.grows.fetch_add(1, Relaxed);
        self.ensure_map(m, fd, new, true, e)?;
        if was_trailer {
            // The old trailer now lies inside the zero region: clear it.
            // SAFETY: [old-64, old) is inside the mapping (old < new <= len).
            unsafe { self.store_zero(m, old - trailer::SIZE, trailer::SIZE as usize) };
        }
        if m.populate_ok {
            let a = round_up(from, 4096) as usize;
            let b = round_up(new, 4096) as usize;
            if b > a {
                // SAFETY: advice on our own mapping within the file's new size.
                let _ = unsafe {
                    rustix::mm::madvise(
                        m.base.add(a).cast(),
                        b - a,
                        rustix::mm::Advice::LinuxPopulateWrite,
                    )
                };
            }
        }
        flex_log!(
            LogLevel::Debug,
            "grow {} {} -> {}",
            String::from_utf8_lossy(&self.path),
            old,
            new
        );
        Ok(())
    }

    /// Zero `[at, at+len)` in the mapping, durably on cache-line granularity.
    ///
    /// # Safety
    /// The range must lie inside the writable mapping.
    unsafe fn store_zero(&self, m: &Mapping, at: u64, len: usize) {
        // SAFETY: forwarded contract; the copy is guarded anyway.
        unsafe { m.persist.zero(m.base.add(at as usize), len) };
        m.persist.drain();
    }

    /// Publish a larger logical size (caller holds the size lock and the map lock).
    fn publish_size(&self, m: &Mapping, end: u64) {
        self.lsize.store(end, Release);
        if m.trailer {
            let at = Trailer::lsize_offset(m.ksize) as usize;
            // SAFETY: the trailer lies inside the mapping (ksize <= len), 8-byte aligned.
            unsafe {
                let p = m.base.add(at) as *mut u64;
                m.persist.store_u64(p, end.to_le());
                m.persist.persist(p as *const u8, 8);
            }
        }
    }
}

/// The buffers after skipping `n` bytes.
fn skip(bufs: &[(*const u8, usize)], mut n: usize) -> Vec<(*const u8, usize)> {
    let mut out = Vec::with_capacity(bufs.len());
    for &(p, l) in bufs {
        if n >= l {
            n -= l;
            continue;
        }
        // SAFETY: pointer arithmetic inside the application's buffer of length l.
        out.push((unsafe { p.add(n) }, l - n));
        n = 0;
    }
    out
}
