//! [`AtomicFile`]: one failure-atomic file of this process, and the engine's hooks on it
//! (read, write, truncate, commit, going shared, the commit before a call hands the file
//! to the kernel).

use super::data::InodeData;
use super::media::MapLog;
use super::protocol::{self, Core};
use crate::inode::Inode;
use crate::posix::Pass;
use crate::runtime::engine;
use crate::sys::{self, Errno, Res};
use rustix::fd::RawFd;
use std::ffi::CString;
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering::*};
use std::sync::{Condvar, Mutex, MutexGuard, Weak};

/// One failure-atomic file of this process.
pub struct AtomicFile {
    /// Itself, for handing to the background applier.
    pub(super) me: Weak<AtomicFile>,
    pub(super) core: Mutex<Core<MapLog>>,
    /// Signalled when a batch finishes (the foreground waits for it before checkpoints).
    pub(super) idle: Condvar,
    /// The inode, for the background applier.
    pub(super) inode: Weak<Inode>,
    /// A private read-write duplicate of the data descriptor: every change to the data
    /// file goes through it (the application's descriptor may be read-only, or closed).
    /// Read under the core mutex (it moves when the application dup2s onto its number).
    pub(super) dfd: AtomicI32,
    /// `dfd`'s description holds a write lease on the data file: no other process has the
    /// file open, so transactions may be redo-logged (see [`AtomicFile::go_shared`]).
    pub(super) lease: AtomicBool,
    /// `dfd` is a duplicate of the program's descriptor (one description): the program's
    /// F_SETFL would reach it (see [`AtomicFile::own_description`]).
    pub(super) shares: AtomicBool,
    /// Held while a descriptor of this file is used outside the core mutex (the
    /// background checkpoint's sync) and while one moves.
    pub(super) moving: Mutex<()>,
    /// Queued for the background applier (set by commits, cleared when it starts).
    pub(super) queued: AtomicBool,
    /// Detached: the applier leaves it alone.
    pub(super) gone: AtomicBool,
    /// Absolute path of the log (unlinked when the last description closes).
    pub(super) log_path: CString,
    pub(super) log_ino: u64,
    /// `FLEX_ATOMIC=write`: every write is its own transaction, durable when it returns.
    pub(super) per_write: bool,
    /// The core's counters already added to the engine's stats.
    pub(super) reported: Mutex<protocol::CoreStats>,
}

/// The application's buffers copied into one (a buffer that faults part way ends it
/// there, as the kernel's short write; EFAULT if nothing could be read). Grown as bytes
/// are read, never sized from the lengths the program claims.
fn gather(bufs: &[(*const u8, usize)]) -> Res<Vec<u8>> {
    const STEP: usize = 64 << 10;
    let mut v: Vec<u8> = Vec::new();
    'all: for &(p, l) in bufs {
        let mut done = 0usize;
        while done < l {
            let n = (l - done).min(STEP).min(crate::inode::MAX_RW - v.len());
            if n == 0 {
                break 'all;
            }
            let at = v.len();
            v.resize(at + n, 0);
            // SAFETY: [at, at+n) lies inside `v`; the source lies inside the application's
            // buffer of `l` bytes, and a fault on it is caught by the guarded copy and
            // reported as a remainder.
            let src = p.wrapping_add(done);
            let rem = unsafe { crate::fault::copy(v.as_mut_ptr().add(at), src, n) };
            v.truncate(at + n - rem);
            if rem != 0 {
                // The guarded copy may stop short of the fault: go on a page at a time (a
                // page is readable whole or not at all), so the count is the kernel's.
                let mut got = n - rem;
                while got < n {
                    let q = src.wrapping_add(got);
                    let k = (4096 - (q as usize & 4095)).min(n - got);
                    let at2 = v.len();
                    v.resize(at2 + k, 0);
                    // SAFETY: as above, one page of the same source range.
                    let r = unsafe { crate::fault::copy(v.as_mut_ptr().add(at2), q, k) };
                    if r != 0 {
                        v.truncate(at2);
                        break;
                    }
                    got += k;
                }
                break 'all;
            }
            done += n;
        }
    }
    if v.is_empty() && bufs.iter().any(|b| b.1 > 0) {
        return Err(Errno::FAULT);
    }
    Ok(v)
}

/// Vectored writes up to this size are gathered into one write in shared mode.
const GATHER_MAX: u64 = 64 << 20;

impl AtomicFile {
    /// Another process opens the file (the kernel breaks the lease), or the program maps
    /// it: from now on this process's writes are in the data file at once (undo-logged),
    /// where the others and the mapping see them, as with the kernel. Then the lease is
    /// given back (an open waiting for the break proceeds).
    pub fn go_shared(&self, inode: &Inode) {
        let c = self.lock();
        let mut c = self.quiet(c);
        let mut data = self.data(inode);
        if c.go_shared(&mut data).is_err() {
            engine().stats.fell_back(Pass::AtomicGoingSharedFailed);
        }
        drop(c);
        if self.lease.swap(false, AcqRel) {
            crate::lease::release(self.dfd());
            engine().stats.fell_back(Pass::AtomicSharedUndo);
        }
    }

    /// The program changes the status flags (O_APPEND) of a description: if flex's data
    /// descriptor is a duplicate of it, give flex a description of its own first (its
    /// writes at offsets must never append), and with it the lease goes: shared.
    pub fn own_description(&self, inode: &Inode) {
        if !self.shares.load(Acquire) {
            return;
        }
        self.go_shared(inode);
        let c = self.lock();
        let _c = self.quiet(c);
        let _m = self.moving.lock().unwrap_or_else(|p| p.into_inner());
        if !self.shares.swap(false, AcqRel) {
            return;
        }
        let old = self.dfd();
        if let Ok(n) = sys::reopen_rw(old) {
            let e = engine();
            let n = e.keep_private_in_place(n);
            self.dfd.store(n, Release);
            e.close_data_fd(old, inode.dev, inode.ino);
        }
    }

    /// The descriptor holding this file's write lease, if any.
    pub fn lease_fd(&self) -> Option<RawFd> {
        self.lease.load(Acquire).then(|| self.dfd())
    }

    pub(super) fn lock(&self) -> MutexGuard<'_, Core<MapLog>> {
        self.core.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(super) fn dfd(&self) -> RawFd {
        self.dfd.load(Acquire)
    }

    /// The data file of `inode` through the private descriptor (under the core mutex).
    pub(super) fn data<'a>(&self, inode: &'a Inode) -> InodeData<'a> {
        InodeData {
            inode,
            fd: self.dfd(),
        }
    }

    pub fn size(&self) -> u64 {
        let mut c = self.lock();
        self.observe(&mut c);
        c.size()
    }

    /// Shared: take the data file's size (other processes change it too).
    fn observe(&self, c: &mut Core<MapLog>) {
        if c.shared() {
            if let Some(inode) = self.inode.upgrade() {
                let _ = c.observe_size(&self.data(&inode));
            }
        }
    }

    /// The kernel changed the data file after `commit_for_kernel`: take its size.
    pub fn adopt_size(&self, size: u64) -> bool {
        self.lock().adopt_size(size)
    }

    /// The size, and whether the data file holds every byte of it (nothing logged,
    /// committed or not, waits to be applied).
    pub fn size_settled(&self) -> (u64, bool) {
        let mut c = self.lock();
        self.observe(&mut c);
        (c.size(), !c.dirty() && !c.unapplied() && !c.inflight())
    }

    /// # Safety
    /// As the engine's read paths: buffers valid or faulting inside guarded copies.
    pub unsafe fn read(
        &self,
        inode: &Inode,
        fd: RawFd,
        bufs: &[(*mut u8, usize)],
        off: u64,
    ) -> Res<usize> {
        let mut c = self.lock();
        c.note_read();
        let data = InodeData { inode, fd };
        let total = bufs.iter().fold(0u64, |a, b| a.saturating_add(b.1 as u64));
        if c.shared() && off.saturating_add(total) > c.size() {
            // Past the size this process knew: another may have appended.
            let _ = c.observe_size(&data);
        }
        let mut done = 0usize;
        for &(p, l) in bufs {
            let l = l.min(crate::inode::MAX_RW - done);
            let at = off + done as u64;
            // SAFETY: forwarded contract.
            let n = match unsafe { c.read(&data, at, p, l) } {
                Ok(n) => n,
                Err(Errno::FAULT) => {
                    // A buffer that turns unwritable part way: the bytes before it, as
                    // the kernel's short read.
                    let want = (l as u64).min(c.size().saturating_sub(at)) as usize;
                    // SAFETY: forwarded contract (the read overwrites these bytes).
                    let w = unsafe { crate::fault::zero_writable_prefix(p, want) };
                    // SAFETY: as above, the first w bytes only.
                    match (w, unsafe { c.read(&data, at, p, w) }) {
                        (1.., Ok(n)) => done += n,
                        _ if done == 0 => return Err(Errno::FAULT),
                        _ => {}
                    }
                    break;
                }
                Err(err) if done == 0 => return Err(err),
                Err(_) => break,
            };
            done += n;
            if n < l {
                break;
            }
        }
        engine().stats.bytes_read.fetch_add(done as u64, Relaxed);
        Ok(done)
    }

    /// # Safety
    /// As the engine's write paths.
    pub unsafe fn write(
        &self,
        inode: &Inode,
        bufs: &[(*const u8, usize)],
        off: u64,
        append: bool,
    ) -> Res<(usize, u64)> {
        let mut c = self.lock();
        let mut data = self.data(inode);
        let total = bufs.iter().fold(0u64, |a, b| a.saturating_add(b.1 as u64));
        if c.inflight() && c.needs_room(total) {
            c = self.quiet(c);
        }
        // Shared: a vectored write is one write, as the kernel's (another process's write
        // or append never lands between its buffers): gather them first.
        let gathered;
        let one;
        let bufs = if c.shared() && bufs.len() > 1 && total <= GATHER_MAX {
            gathered = gather(bufs)?;
            one = [(gathered.as_ptr(), gathered.len())];
            &one[..]
        } else {
            bufs
        };
        let mut done = 0usize;
        let mut end = off;
        let mut first = true;
        for &(p, l) in bufs {
            let l = l.min(crate::inode::MAX_RW - done);
            if l == 0 {
                continue;
            }
            // Past the largest file the write stops short; at it, EFBIG (and SIGXFSZ for
            // RLIMIT_FSIZE), as the kernel's.
            let start = if append && first { c.size() } else { end };
            let lim = c.log.m.limit(start.saturating_add(l as u64));
            if start >= lim {
                if done > 0 {
                    break;
                }
                file_too_big(start.saturating_add(1));
                return Err(Errno::FBIG);
            }
            let l = l.min((lim - start) as usize);
            // SAFETY: forwarded contract.
            match unsafe { c.write(&mut data, end, p, l, append && first) } {
                Ok((n, e)) => {
                    done += n;
                    end = e;
                    if n < l {
                        // A short write (the source faulted part way) ends the call.
                        break;
                    }
                }
                Err(err) if done == 0 => return Err(err),
                Err(_) => break,
            }
            first = false;
        }
        engine().stats.bytes_written.fetch_add(done as u64, Relaxed);
        if self.per_write {
            self.commit_locked(c, &mut data)?;
        }
        Ok((done, end))
    }

    /// fsync/fdatasync/close: commit; the applier applies it in the background. Past half
    /// the log's bound the foreground checkpoints (after the batch in flight), so the log
    /// and the fsync latency stay bounded.
    pub fn commit(&self, inode: &Inode) -> Res<()> {
        let c = self.lock();
        self.commit_locked(c, &mut self.data(inode))
    }

    fn commit_locked(
        &self,
        mut c: MutexGuard<'_, Core<MapLog>>,
        data: &mut InodeData<'_>,
    ) -> Res<()> {
        // The applier has not taken the previous commit yet (its core is busy elsewhere):
        // apply here rather than queue behind it.
        let lagging = c.background && c.unapplied() && !c.inflight();
        let r = c.commit(data);
        self.report(&c.stats);
        r?;
        if !c.background || !c.unapplied() {
            return Ok(());
        }
        if c.wants_checkpoint() {
            let mut c = self.quiet(c);
            return c.checkpoint(data);
        }
        if lagging {
            return c.apply_all(data);
        }
        drop(c);
        self.kick();
        Ok(())
    }

    /// Add what the core counted since the last report to the engine's stats.
    pub(super) fn report(&self, now: &protocol::CoreStats) {
        let mut was = self.reported.lock().unwrap_or_else(|p| p.into_inner());
        let s = &engine().stats;
        let undo = now.undo_commits - was.undo_commits;
        let redo = (now.commits - was.commits).saturating_sub(undo);
        if redo > 0 {
            s.atomic_redo.fetch_add(redo, Relaxed);
        }
        if undo > 0 {
            s.atomic_undo.fetch_add(undo, Relaxed);
        }
        if now.switches > was.switches {
            s.atomic_switches
                .fetch_add(now.switches - was.switches, Relaxed);
        }
        *was = *now;
    }

    /// Wait until no batch is in flight (the applier finishes it and signals).
    pub(super) fn quiet<'a>(
        &'a self,
        mut c: MutexGuard<'a, Core<MapLog>>,
    ) -> MutexGuard<'a, Core<MapLog>> {
        while c.inflight() {
            c = self.idle.wait(c).unwrap_or_else(|p| p.into_inner());
        }
        c
    }

    pub fn truncate(&self, inode: &Inode, len: u64) -> Res<()> {
        let mut c = self.lock();
        let mut data = self.data(inode);
        if c.inflight() && c.needs_room(0) {
            c = self.quiet(c);
        }
        if c.log.m.limit(len) < len {
            file_too_big(len);
            return Err(Errno::FBIG);
        }
        c.truncate(&mut data, len)?;
        if self.per_write {
            return self.commit_locked(c, &mut data);
        }
        Ok(())
    }
}

/// A change refused because the file would need `need` bytes: past RLIMIT_FSIZE it gets
/// the kernel's SIGXFSZ too.
fn file_too_big(need: u64) {
    if let Some(v) = rustix::process::getrlimit(rustix::process::Resource::Fsize).current {
        if need > v {
            sys::signal::raise(libc::SIGXFSZ);
        }
    }
}

impl Drop for AtomicFile {
    fn drop(&mut self) {
        let e = engine();
        match self.inode.upgrade() {
            // Not while the program may hold POSIX locks on the file (see close_data_fd).
            Some(i) => e.close_data_fd(self.dfd(), i.dev, i.ino),
            None => e.close_private(self.dfd()),
        }
    }
}

/// The program is about to set the timestamps of the file `(dev, ino)` (`utimensat`,
/// `futimens`, ...): if it is in atomic mode here, commit and apply what is logged, so
/// that no change flex makes to the data file later (a redo transaction's writes, the
/// truncation of an `O_TRUNC` open) bumps the times the program sets. A commit point, as
/// the other calls that hand the file to the kernel.
pub fn before_set_times(dev: u64, ino: u64) {
    let Some(e) = crate::runtime::engine_if_started() else {
        return;
    };
    if let Some(inode) = e.lookup(dev, ino) {
        commit_for_kernel(&inode);
    }
}

/// Commit without leaving atomic mode (fsync hooks use `AtomicFile::commit`; this is for
/// calls that hand the file to the kernel: mmap, sendfile, fallocate).
pub(crate) fn commit_for_kernel(inode: &Inode) {
    if let Some(a) = inode.atomic.get() {
        let c = a.lock();
        let mut c = a.quiet(c);
        let mut data = a.data(inode);
        if c.commit(&mut data).is_ok() {
            let _ = c.checkpoint(&mut data);
        }
    }
}
