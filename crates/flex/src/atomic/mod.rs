//! Failure-atomic mode (`FLEX_MODE=atomic`, or `O_FLEX_ATOMIC` at open): after a crash a
//! file is exactly as it was at its last completed fsync, fdatasync or close.
//!
//! - [`log`]: the on-disk redo log format and the [`log::Media`] seam (mapping, plain file,
//!   or the persistence simulator of [`crate::persist::sim`]).
//! - [`protocol`]: the protocol (log, index of uncommitted ranges, commit, apply, checkpoint,
//!   recovery), generic over the log medium and the data file.
//! - `media`: the log mapped (`MapLog`), or through plain system calls (`FileLog`).
//! - `data`: the data file through the inode (`InodeData`) or a descriptor (`FdData`).
//! - `logfile`: finding, creating, opening, locking and removing a data file's log.
//! - `recover`: recovery through plain system calls ([`recover_fd`]), of old-location logs
//!   and of the sibling logs that processes sharing a file left.
//! - Here: attaching the atomic state to the inode, the engine hooks, and the per-process
//!   background applier (`Worker`) that applies committed batches off the application's
//!   threads.

mod data;
pub mod log;
mod logfile;
mod media;
pub mod protocol;
mod recover;
pub mod site;

#[cfg(test)]
mod tests;

pub use recover::recover_fd;

use self::data::InodeData;
use self::logfile::{find_log, find_sibling_log, unlink_log};
use self::media::MapLog;
use self::protocol::{Core, DataDev};
use self::recover::{fresh_gen, recover_legacy, recover_read_only, recover_siblings};
use crate::engine::engine;
use crate::inode::Inode;
use crate::sys::{self, Errno, Res};
use arc_swap::ArcSwapOption;
use rustix::fd::RawFd;
use std::collections::VecDeque;
use std::ffi::{CStr, CString};
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicPtr, Ordering::*};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, Weak};

/// One failure-atomic file of this process.
pub struct AtomicFile {
    /// Itself, for handing to the background applier.
    me: Weak<AtomicFile>,
    core: Mutex<Core<MapLog>>,
    /// Signalled when a batch finishes (the foreground waits for it before checkpoints).
    idle: Condvar,
    /// The inode, for the background applier.
    inode: Weak<Inode>,
    /// A private read-write duplicate of the data descriptor: every change to the data
    /// file goes through it (the application's descriptor may be read-only, or closed).
    /// Read under the core mutex (it moves when the application dup2s onto its number).
    dfd: AtomicI32,
    /// `dfd`'s description holds a write lease on the data file: no other process has the
    /// file open, so transactions may be redo-logged (see [`AtomicFile::go_shared`]).
    lease: AtomicBool,
    /// `dfd` is a duplicate of the program's descriptor (one description): the program's
    /// F_SETFL would reach it (see [`AtomicFile::own_description`]).
    shares: AtomicBool,
    /// Held while a descriptor of this file is used outside the core mutex (the
    /// background checkpoint's sync) and while one moves.
    moving: Mutex<()>,
    /// Queued for the background applier (set by commits, cleared when it starts).
    queued: AtomicBool,
    /// Detached: the applier leaves it alone.
    gone: AtomicBool,
    /// Absolute path of the log (unlinked when the last description closes).
    log_path: CString,
    log_ino: u64,
    /// `FLEX_ATOMIC=write`: every write is its own transaction, durable when it returns.
    per_write: bool,
    /// The core's counters already added to the engine's stats.
    reported: Mutex<self::protocol::CoreStats>,
}

/// The per-inode attachment point (a field of [`Inode`]): empty for ordinary files.
/// Looked up on every IO of an atomic file: a lock-free load, no reference count taken.
#[derive(Default)]
pub struct Slot {
    on: AtomicBool,
    /// Serialises attach and detach.
    init: Mutex<()>,
    f: ArcSwapOption<AtomicFile>,
}

/// A borrowed atomic state (see [`Slot::get`]).
pub struct Attached {
    _g: arc_swap::Guard<Option<Arc<AtomicFile>>>,
    p: *const AtomicFile,
}

impl std::ops::Deref for Attached {
    type Target = AtomicFile;
    fn deref(&self) -> &AtomicFile {
        // SAFETY: `p` points into the Arc the guard protects (a debt or a full reference
        // keeps it alive for the guard's lifetime, which is ours).
        unsafe { &*self.p }
    }
}

impl Slot {
    fn lock(&self) -> MutexGuard<'_, ()> {
        self.init.lock().unwrap_or_else(|p| p.into_inner())
    }
    /// The atomic state, if this file is in atomic mode (one relaxed load otherwise).
    #[inline]
    pub fn get(&self) -> Option<Attached> {
        if !self.on.load(Acquire) {
            return None;
        }
        let g = self.f.load();
        let p = Arc::as_ptr(g.as_ref()?);
        Some(Attached { _g: g, p })
    }
    fn take(&self) -> Option<Arc<AtomicFile>> {
        let _g = self.lock();
        self.on.store(false, Release);
        self.f.swap(None)
    }
}

/// Fallback reason: the file's log is not one flex may use (see [`open_log`]).
const UNTRUSTED: &str = "atomic: untrusted log (not flex's, or another user's)";

/// At open in atomic mode: find or create the file's log, recover what a crash left, and
/// attach the atomic state to the inode: exclusive under a write lease, else shared (a
/// log of this process's own beside the main one; README, "Sharing").
pub fn attach(inode: &Arc<Inode>, fd: RawFd, writable: bool, dirfd: RawFd, path: &CStr) -> Res<()> {
    let e = engine();
    let _slot = inode.atomic.lock();
    if inode.atomic.f.load().is_some() {
        return Ok(());
    }
    // Overlay, FUSE and network file systems are left to the kernel in every mode: the
    // log must sit on the data's own local file system, where fdatasync orders the two
    // and no other machine or copy-up sees it.
    if let Some(reason) = inode.fs(fd).unmappable() {
        e.stats.fallback(reason);
        inode.set_nomap();
        return Ok(());
    }
    if !writable {
        drop(_slot);
        // Readers see the last committed state: replay a crashed writer's log first.
        return match recover_read_only(dirfd, path, fd) {
            Ok(Some(r)) => {
                inode.adopt_size(r.size);
                e.stats.recoveries.fetch_add(1, Relaxed);
                Ok(())
            }
            Ok(None) => Ok(()),
            Err(Errno::BUSY) => {
                e.stats
                    .fallback("atomic: reader while another process writes");
                Ok(())
            }
            Err(Errno::PERM) => {
                e.stats.fallback(UNTRUSTED);
                Ok(())
            }
            Err(err) => Err(err),
        };
    }
    // A crash under an older version left its log beside the file: recover it first.
    if let Some(r) = recover_legacy(dirfd, path, fd)? {
        inode.adopt_size(r.size);
        e.stats.recoveries.fetch_add(1, Relaxed);
    }
    let st = sys::fstat(fd)?;
    // The file's main log, or (another live process holds it: the file is shared) a log
    // of this process's own beside it.
    let (l, main, owner) = match find_log(fd, &st, true) {
        Ok(Some(l)) => {
            let main = l.path.clone();
            (l, main, true)
        }
        Ok(None) => {
            // Never a log in the program's directories: the file is served plainly.
            e.stats.fallback("atomic: no place for the log");
            return Ok(());
        }
        Err(Errno::BUSY) => match find_sibling_log(fd, &st)? {
            Some((l, main)) => (l, main, false),
            None => {
                e.stats.fallback("atomic: no place for the log");
                return Ok(());
            }
        },
        Err(Errno::PERM) => {
            e.stats.fallback(UNTRUSTED);
            return Ok(());
        }
        Err(err) => return Err(err),
    };
    let (lfd, lino, abs, ident) = (e.keep_private(l.fd), l.ino, l.path, l.ident);
    let mut m = match MapLog::new(lfd) {
        Ok(m) => m,
        Err(err) => {
            e.close_private(lfd);
            return Err(err);
        }
    };
    m.fits = m.fits.max(inode.lsize());
    // Commits, truncations and the background applier write through a private
    // read-write descriptor: the descriptor that commits (a close, an fsync) may be a
    // read-only or write-only one of the same file, and the application may close its
    // own. A duplicate of a read-write, non-appending descriptor shares its file
    // description, so a write lease can be had (one description of the file); any other
    // is a reopened description, never O_APPEND.
    let (dfd, same) = match data_descriptor(fd) {
        Ok((d, same)) => (e.keep_private_in_place(d), same),
        Err(err) => {
            e.close_private(lfd);
            return Err(err);
        }
    };
    // Exclusive (redo allowed) only with a write lease on the data file: no other process
    // has it open, and the kernel tells us before one does. Taken before the mapping
    // exists, which is made through the same description.
    let leased = owner && same && !inode.is_mapped(false) && crate::lease::acquire(dfd);
    if leased {
        // Another process may have changed the file between our open and the lease (and
        // closed it since): the size to build on is the one read now.
        let _ = inode.adopt_kernel_size(dfd);
    }
    // Committed transactions are applied through the mapping: map now (no adoption delay).
    if !inode.nomap() && inode.map_for(dfd, true).is_err() {
        inode.set_nomap();
    }
    let mut data = InodeData { inode, fd: dfd };
    let (log, r) = match protocol::recover(m, ident, &mut data, fresh_gen()) {
        Ok(v) => v,
        Err(err) => {
            if leased {
                crate::lease::release(dfd);
            }
            e.close_private(dfd);
            return Err(err);
        }
    };
    if r.txns > 0 || r.discarded > 0 {
        e.stats.recoveries.fetch_add(1, Relaxed);
    }
    // Logs of processes that died while sharing the file: roll their uncommitted
    // transactions back (none of them can be ours: each holds its owner's lock).
    recover_siblings(&main, ident, &st, &mut data);
    let mut core = Core::new(log, inode.lsize(), e.config.atomic_log);
    core.policy = e.config.atomic_policy;
    core.background = !e.config.atomic_apply_inline && worker().is_some();
    if !leased {
        // Shared from the start: every write in place, undo-logged and stamped.
        core.go_shared(&mut data)?;
        e.stats
            .fallback("atomic: shared with another opener (undo, in place)");
    }
    inode.atomic.f.store(Some(Arc::new_cyclic(|me| AtomicFile {
        me: me.clone(),
        core: Mutex::new(core),
        idle: Condvar::new(),
        inode: Arc::downgrade(inode),
        dfd: AtomicI32::new(dfd),
        lease: AtomicBool::new(leased),
        shares: AtomicBool::new(same),
        moving: Mutex::new(()),
        queued: AtomicBool::new(false),
        gone: AtomicBool::new(false),
        log_path: abs,
        log_ino: lino,
        per_write: e.config.atomic_write,
        reported: Mutex::new(Default::default()),
    })));
    inode.atomic.on.store(true, Release);
    e.atomic_files.fetch_add(1, Relaxed);
    Ok(())
}

/// The private data descriptor for `fd` and whether it shares `fd`'s description.
fn data_descriptor(fd: RawFd) -> Res<(RawFd, bool)> {
    match sys::access_of(fd)? {
        (libc::O_RDWR, false) => Ok((sys::fcntl_int(fd, libc::F_DUPFD_CLOEXEC, 0)?, true)),
        _ => Ok((sys::reopen_rw(fd)?, false)),
    }
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
            engine()
                .stats
                .fallback("atomic: going shared failed (file refuses IO)");
        }
        drop(c);
        if self.lease.swap(false, AcqRel) {
            crate::lease::release(self.dfd());
            engine()
                .stats
                .fallback("atomic: shared with another opener (undo, in place)");
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

    fn lock(&self) -> MutexGuard<'_, Core<MapLog>> {
        self.core.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn dfd(&self) -> RawFd {
        self.dfd.load(Acquire)
    }

    /// The data file of `inode` through the private descriptor (under the core mutex).
    fn data<'a>(&self, inode: &'a Inode) -> InodeData<'a> {
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

    /// The kernel changed the data file after [`commit_for_kernel`]: take its size.
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
    fn report(&self, now: &self::protocol::CoreStats) {
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
    fn quiet<'a>(&'a self, mut c: MutexGuard<'a, Core<MapLog>>) -> MutexGuard<'a, Core<MapLog>> {
        while c.inflight() {
            c = self.idle.wait(c).unwrap_or_else(|p| p.into_inner());
        }
        c
    }

    /// Hand the file to the background applier.
    fn kick(&self) {
        if self.queued.swap(true, AcqRel) {
            return;
        }
        match (worker(), self.me.upgrade()) {
            (Some(w), Some(me)) => w.push(me),
            _ => {
                // No applier (thread creation failed): apply here.
                self.queued.store(false, Release);
                if let Some(inode) = self.inode.upgrade() {
                    let mut c = self.lock();
                    let _ = c.apply_all(&mut self.data(&inode));
                }
            }
        }
    }

    /// The applier's work on this file: apply batches outside the lock until none is
    /// left, then checkpoint if the file is idle and its log passed a quarter.
    fn background(&self) {
        self.queued.store(false, Release);
        let Some(inode) = self.inode.upgrade() else {
            return;
        };
        let mut data = InodeData {
            inode: &inode,
            fd: -1,
        };
        loop {
            let b = {
                let mut c = self.lock();
                if self.gone.load(Acquire) {
                    return;
                }
                data.fd = self.dfd();
                match c.take_batch() {
                    Some(b) => b,
                    None => break,
                }
            };
            // A panic must not leave the batch in flight (close and exit wait for it).
            let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                // SAFETY: a batch just taken, finished right below.
                unsafe { b.apply(&mut data) }
            }))
            .unwrap_or(Err(Errno::IO));
            self.lock().finish_batch(b, r);
            self.idle.notify_all();
            if r.is_err() {
                return;
            }
        }
        let _m = self.moving.lock().unwrap_or_else(|p| p.into_inner());
        let epoch = {
            let c = self.lock();
            if self.gone.load(Acquire) || !c.idle_checkpoint() {
                return;
            }
            data.fd = self.dfd();
            c.applied
        };
        // Sync outside the lock; reset only if nothing was applied meanwhile.
        if data.sync().is_ok() {
            let _ = self.lock().reset_after_sync(epoch);
        }
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
            // SAFETY: a raw system call sending a signal to this thread.
            unsafe {
                libc::syscall(
                    libc::SYS_tgkill,
                    libc::getpid(),
                    libc::syscall(libc::SYS_gettid),
                    libc::SIGXFSZ,
                )
            };
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

/// The per-process background applier: one thread, created at the first background
/// commit, sleeping on a condvar while no file has committed work (an idle process costs
/// nothing). A forked child gets its own at its first commit (threads do not survive
/// fork; the parent's queue, possibly locked at the fork, is abandoned).
struct Worker {
    pid: u32,
    q: Mutex<VecDeque<Arc<AtomicFile>>>,
    cv: Condvar,
    /// The thread waits on `cv` (else a push needs no wake-up system call).
    sleeping: AtomicBool,
}

static WORKER: AtomicPtr<Worker> = AtomicPtr::new(std::ptr::null_mut());
static WORKER_INIT: Mutex<()> = Mutex::new(());

fn worker() -> Option<&'static Worker> {
    let pid = std::process::id();
    let p = WORKER.load(Acquire);
    // SAFETY: a published worker is leaked, never freed.
    if let Some(w) = unsafe { p.as_ref() } {
        if w.pid == pid {
            return Some(w);
        }
    }
    let _g = WORKER_INIT.lock().unwrap_or_else(|p| p.into_inner());
    let p = WORKER.load(Acquire);
    // SAFETY: as above.
    if let Some(w) = unsafe { p.as_ref() } {
        if w.pid == pid {
            return Some(w);
        }
    }
    let w: &'static Worker = Box::leak(Box::new(Worker {
        pid,
        q: Mutex::new(VecDeque::new()),
        cv: Condvar::new(),
        sleeping: AtomicBool::new(false),
    }));
    std::thread::Builder::new()
        .name("flex-atomic".into())
        .stack_size(256 << 10)
        .spawn(move || w.run())
        .ok()?;
    WORKER.store(w as *const Worker as *mut Worker, Release);
    Some(w)
}

impl Worker {
    fn push(&self, f: Arc<AtomicFile>) {
        self.q
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push_back(f);
        self.cv.notify_one();
    }

    fn run(&self) {
        loop {
            let f = {
                let mut q = self.q.lock().unwrap_or_else(|p| p.into_inner());
                loop {
                    if let Some(f) = q.pop_front() {
                        break f;
                    }
                    self.sleeping.store(true, Relaxed);
                    q = self.cv.wait(q).unwrap_or_else(|p| p.into_inner());
                    self.sleeping.store(false, Relaxed);
                }
            };
            f.background();
        }
    }
}

/// The application `dup2`s onto `fd`, one of flex's own descriptors: move ours to another
/// number first (the kernel would silently replace it, and the next commit would write
/// through whatever the application put there). Best effort: without a free descriptor it
/// stays.
pub fn move_private(fd: RawFd) {
    let e = engine();
    let moved = |old: RawFd| -> Option<RawFd> {
        let d = sys::fcntl_int(old, libc::F_DUPFD_CLOEXEC, 0).ok()?;
        let new = e.keep_private(d);
        e.close_private(old);
        Some(new)
    };
    for inode in e.all_inodes() {
        let Some(a) = inode.atomic.get() else {
            continue;
        };
        let _m = a.moving.lock().unwrap_or_else(|p| p.into_inner());
        let c = a.lock();
        let mut c = a.quiet(c);
        if c.log.m.fd == fd {
            if let Some(n) = moved(fd) {
                c.log.m.fd = n;
            }
            return;
        }
        if a.dfd() == fd {
            if let Some(n) = moved(fd) {
                a.dfd.store(n, Release);
            }
            return;
        }
    }
}

/// The last description of an atomic file closes (or the file goes back to the kernel):
/// commit, checkpoint, remove the log. The file leaves atomic mode in this process.
pub fn detach(inode: &Inode) -> Res<()> {
    let Some(a) = inode.atomic.take() else {
        return Ok(());
    };
    engine().atomic_files.fetch_sub(1, Relaxed);
    let c = a.lock();
    let mut c = a.quiet(c);
    a.gone.store(true, Release);
    if a.lease.swap(false, AcqRel) {
        crate::lease::release(a.dfd());
    }
    let mut data = a.data(inode);
    let r = c.commit(&mut data);
    a.report(&c.stats);
    r?;
    c.checkpoint(&mut data)?;
    let st = c.stats;
    drop(c);
    unlink_log(&a.log_path, a.log_ino);
    let e = engine();
    if st.early_commits > 0 {
        e.stats.fallback("atomic: early commit (log full)");
    }
    Ok(())
}

/// Does this process have a file in atomic mode (one load; the timestamp calls ask)?
pub fn any_attached() -> bool {
    crate::engine::engine_if_started().is_some_and(|e| e.atomic_files.load(Relaxed) > 0)
}

/// The program is about to set the timestamps of the file `(dev, ino)` (`utimensat`,
/// `futimens`, ...): if it is in atomic mode here, commit and apply what is logged, so
/// that no change flex makes to the data file later (a redo transaction's writes, the
/// truncation of an `O_TRUNC` open) bumps the times the program sets. A commit point, as
/// the other calls that hand the file to the kernel.
pub fn before_set_times(dev: u64, ino: u64) {
    let Some(e) = crate::engine::engine_if_started() else {
        return;
    };
    if let Some(inode) = e.lookup(dev, ino) {
        commit_for_kernel(&inode);
    }
}

/// Commit without leaving atomic mode (fsync hooks use `AtomicFile::commit`; this is for
/// calls that hand the file to the kernel: mmap, sendfile, fallocate).
pub fn commit_for_kernel(inode: &Inode) {
    if let Some(a) = inode.atomic.get() {
        let c = a.lock();
        let mut c = a.quiet(c);
        let mut data = a.data(inode);
        if c.commit(&mut data).is_ok() {
            let _ = c.checkpoint(&mut data);
        }
    }
}
