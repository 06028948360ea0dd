//! A file's atomic state and its inode: the per-inode [`Slot`], [`attach`] at an open in
//! atomic mode (find or create the log, recover, choose exclusive or shared) and
//! [`detach`] at the last close (commit, checkpoint, remove the log).

use super::applier::worker;
use super::data::InodeData;
use super::file::AtomicFile;
use super::log::Log;
use super::logfile::{find_log, find_sibling_log, unlink_log};
use super::media::MapLog;
use super::protocol::{self, Core, DataDev, Replayed};
use super::recover::{fresh_gen, recover_legacy, recover_read_only, recover_siblings};
use super::spare;
use crate::inode::Inode;
use crate::posix::Pass;
use crate::runtime::engine;
use crate::sys::{self, Errno, Res};
use arc_swap::ArcSwapOption;
use rustix::fd::RawFd;
use std::ffi::CStr;
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering::*};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};

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

/// At open in atomic mode: find or create the file's log, recover what a crash left, and
/// attach the atomic state to the inode: exclusive under a write lease, else shared (a
/// log of this process's own beside the main one; README, "Sharing").
pub(crate) fn attach(
    inode: &Arc<Inode>,
    fd: RawFd,
    writable: bool,
    dirfd: RawFd,
    path: &CStr,
) -> Res<()> {
    let e = engine();
    crate::snapshot::note_atomic();
    let _slot = inode.atomic.lock();
    if inode.atomic.f.load().is_some() {
        return Ok(());
    }
    // Overlay, FUSE and network file systems are left to the kernel in every mode: the
    // log must sit on the data's own local file system, where fdatasync orders the two
    // and no other machine or copy-up sees it.
    if let Some(reason) = inode.fs(fd).unmappable() {
        e.stats.fell_back(reason);
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
                e.stats.fell_back(Pass::AtomicReaderWhileWriting);
                Ok(())
            }
            Err(Errno::PERM) => {
                e.stats.fell_back(Pass::AtomicUntrustedLog);
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
    let mut tries = 0;
    let (l, main, owner) = loop {
        match find_log(fd, &st, true) {
            Ok(Some(l)) => {
                let main = l.path.clone();
                break (l, main, true);
            }
            Ok(None) => {
                // Never a log in the program's directories: the file is served plainly.
                e.stats.fell_back(Pass::AtomicNoLogPlace);
                return Ok(());
            }
            Err(Errno::BUSY) => match find_sibling_log(fd, &st)? {
                Some((l, main)) => break (l, main, false),
                // The main log's holder closed the file and removed it since: look again
                // (the main log may be ours to take now).
                None if tries < 8 => tries += 1,
                None => {
                    e.stats.fell_back(Pass::AtomicNoLogPlace);
                    return Ok(());
                }
            },
            Err(Errno::PERM) => {
                e.stats.fell_back(Pass::AtomicUntrustedLog);
                return Ok(());
            }
            Err(err) => return Err(err),
        }
    };
    let (lino, abs, ident) = (l.ino, l.path, l.ident);
    let reused = l.spare.is_some();
    let mut m = match l.spare {
        Some(m) => m,
        None => {
            let lfd = e.keep_private(l.fd);
            match MapLog::new(lfd) {
                Ok(m) => m,
                Err(err) => {
                    e.close_private(lfd);
                    return Err(err);
                }
            }
        }
    };
    m.fits = m.fits.max(inode.lsize());
    // Commits, truncations and the background applier write through a private
    // read-write descriptor: the descriptor that commits (a close, an fsync) may be a
    // read-only or write-only one of the same file, and the application may close its
    // own. A duplicate of a read-write, non-appending descriptor shares its file
    // description, so a write lease can be had (one description of the file); any other
    // is a reopened description, never O_APPEND.
    // (On an error from here on, dropping `m` unmaps and closes the log.)
    let (dfd, same) = match data_descriptor(fd) {
        Ok((d, same)) => (e.keep_private_in_place(d), same),
        Err(err) => return Err(err),
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
    // A spare holds nothing to replay (it was checkpointed before it was kept): a fresh
    // header is all it needs.
    let started = if reused {
        Log::create(m, ident, fresh_gen()).and_then(|l| {
            let size = data.size()?;
            Ok((
                l,
                Replayed {
                    size,
                    ..Replayed::default()
                },
            ))
        })
    } else {
        protocol::recover(m, ident, &mut data, fresh_gen())
    };
    let (log, r) = match started {
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
        e.stats.fell_back(Pass::AtomicSharedUndo);
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

/// The last description of an atomic file closes (or the file goes back to the kernel):
/// commit, checkpoint, remove the log. The file leaves atomic mode in this process.
pub(crate) fn detach(inode: &Inode) -> Res<()> {
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
    // A clean log is kept for this process's next atomic file, else removed.
    let kept = c.is_clean() && {
        let m = c.log.m.take_out();
        match spare::keep(m, &a.log_path, a.log_ino) {
            Ok(()) => {
                c.retire();
                true
            }
            Err(m) => {
                c.log.m = m;
                false
            }
        }
    };
    drop(c);
    if !kept {
        unlink_log(&a.log_path, a.log_ino);
    }
    let e = engine();
    if st.early_commits > 0 {
        e.stats.fell_back(Pass::AtomicEarlyCommit);
    }
    Ok(())
}

/// Does this process have a file in atomic mode (one load; the timestamp calls ask)?
pub fn any_attached() -> bool {
    crate::runtime::engine_if_started().is_some_and(|e| e.atomic_files.load(Relaxed) > 0)
}
