//! open, close, close_range: which opens flex manages, how a managed one is set up
//! (atomic O_TRUNC, crash-left trailer recovery), and forgetting a descriptor.

use super::size::ftruncate;
use super::{desc, Fd, Pass, Route};
use crate::config::LogLevel;
use crate::config::{normalize, Config, O_FLEX, O_FLEX_ATOMIC};
use crate::desc::Desc;
use crate::log::flex_log;
use crate::runtime::{config, engine, engine_if_started, Engine};
use crate::stats::Call;
use crate::sys::{self, Errno, Res};
use crate::trailer::{self, Recovery};
use std::ffi::CStr;
use std::sync::atomic::Ordering::*;
use std::sync::Arc;

/// Is this open for flex? Absolute or relative path under FLEX_PATHS, or O_FLEX.
fn wants(c: &Config, dirfd: Fd, path: &CStr, flags: i32) -> bool {
    if flags & (O_FLEX | O_FLEX_ATOMIC) != 0 {
        return true;
    }
    if c.paths.is_empty() || c.disabled {
        return false;
    }
    let p = path.to_bytes();
    if p.first() == Some(&b'/') {
        return c.path_managed(&normalize(p));
    }
    let base = if dirfd == libc::AT_FDCWD {
        // The working directory is cached by the engine (and dropped at chdir).
        engine().cwd()
    } else {
        let link = format!("/proc/self/fd/{dirfd}");
        std::fs::read_link(link)
            .ok()
            .map(|b| std::os::unix::ffi::OsStrExt::as_bytes(b.as_os_str()).to_vec())
    };
    let Some(mut abs) = base else { return false };
    abs.push(b'/');
    abs.extend_from_slice(p);
    c.path_managed(&normalize(&abs))
}

/// open, open64, openat, creat. `flags` may carry O_FLEX. The engine starts at the first
/// open it wants, not before.
pub fn open(dirfd: Fd, path: &CStr, flags: i32, mode: u32) -> Route<Fd> {
    if !wants(config(), dirfd, path, flags) {
        return Route::Pass(Pass::NotManaged);
    }
    let e = engine();
    if flags & libc::O_ACCMODE != libc::O_RDONLY || flags & libc::O_TRUNC != 0 {
        // Before the descriptor exists: a snapshotter that sees it sees a process that
        // can take part.
        crate::snapshot::arm();
    }
    let atomic = flags & O_FLEX_ATOMIC != 0 || e.config.atomic;
    let explicit = flags & (O_FLEX | O_FLEX_ATOMIC) != 0;
    let kflags = flags & !O_FLEX & !O_FLEX_ATOMIC;
    if e.config.disabled || kflags & (libc::O_PATH | libc::O_DIRECTORY) != 0 {
        return Route::Served(sys::openat(dirfd, path, kflags, mode));
    }
    if atomic && kflags & libc::O_TRUNC != 0 {
        // O_TRUNC becomes a logged truncation: a crash before the next commit keeps the
        // old contents. O_RDONLY|O_TRUNC truncates too (with write permission), but a
        // read-only open puts no file in atomic mode: it joins a transaction only of a
        // file in atomic mode here already, else the kernel truncates.
        let ro = kflags & libc::O_ACCMODE == libc::O_RDONLY;
        if !ro || atomic_here(e, dirfd, path) {
            if ro {
                if let Err(err) = sys::check_writable(dirfd, path) {
                    return Route::err(err);
                }
            }
            return Route::Served(open_truncated(e, dirfd, path, kflags, mode, explicit, ro));
        }
    }
    if !atomic && !explicit && lazy_opens(e) {
        // Nothing is looked at yet: the kernel serves the file until its IO calls show
        // that flex should (io_desc takes it over then).
        let r = sys::openat(dirfd, path, kflags, mode);
        if let Ok(fd) = r {
            if fd > 2 {
                let truncated = kflags & libc::O_TRUNC != 0;
                e.table
                    .make_lazy(fd, truncated.then_some(0), kflags & libc::O_APPEND != 0);
            }
        }
        // Flex's open (it keeps track of the descriptor); its IO is the kernel's for now.
        e.stats.served(Call::open);
        e.stats.fell_back(Pass::Lazy);
        return Route::Served(r);
    }
    Route::Served(open_managed(e, dirfd, path, kflags, mode, explicit, atomic))
}

/// May opens be lazy? Only where the kernel's view of a file is always what flex would
/// serve until flex takes it over: no failure-atomic mode, and no file on this machine
/// that a crashed flex process may have left over-allocated (DAX only, or the test knob).
fn lazy_opens(e: &Engine) -> bool {
    e.config.adopt_after > 0
        && !crate::lease::overallocate_everywhere()
        && !crate::inode::dax_anywhere()
}

/// A lazy descriptor's IO calls came to FLEX_ADOPT_AFTER: look at it now as an open would
/// have (fstat, inode, crash-left trailer), with the kernel's status flags and offset.
pub(super) fn take_over(e: &Engine, fd: Fd) -> Result<Arc<Desc>, Pass> {
    if !e.table.unlazy(fd) {
        // Another thread took it over (or closed it) first.
        return e.table.get(fd).ok_or(Pass::NotManaged);
    }
    let Ok(kflags) = sys::fcntl_int(fd, libc::F_GETFL, 0) else {
        return Err(Pass::NotManaged);
    };
    let path = rustix::fs::readlink(format!("/proc/self/fd/{fd}").as_str(), Vec::new())
        .map(|p| p.into_bytes())
        .unwrap_or_default();
    let path = std::ffi::CString::new(path).unwrap_or_default();
    let _ = manage(e, fd, libc::AT_FDCWD, &path, kflags, false, false, true);
    // The calls the kernel served before do not count towards FLEX_ADOPT_AFTER: they may
    // have been appends or writes past the end (a journal's), which never map a file.
    let d = e.table.get(fd).ok_or(Pass::NotManaged)?;
    e.stats.adoptions.fetch_add(1, Relaxed);
    flex_log!(LogLevel::Debug, "take over lazy fd={fd}");
    Ok(d)
}

/// Is the file at `path` in atomic mode in this process?
fn atomic_here(e: &Engine, dirfd: Fd, path: &CStr) -> bool {
    sys::fstatat(dirfd, path, 0)
        .ok()
        .and_then(|st| e.lookup(st.st_dev, st.st_ino))
        .is_some_and(|i| i.atomic.get().is_some())
}

/// An atomic open with O_TRUNC: open without it, then truncate inside the transaction.
fn open_truncated(
    e: &Engine,
    dirfd: Fd,
    path: &CStr,
    kflags: i32,
    mode: u32,
    explicit: bool,
    ro: bool,
) -> Res<Fd> {
    let fd = open_managed(
        e,
        dirfd,
        path,
        kflags & !libc::O_TRUNC,
        mode,
        explicit,
        true,
    )?;
    let r = if !ro {
        // Through the new descriptor: the transaction's truncation. An unmanaged one
        // (descriptor 0-2, not a regular file) gets the kernel's, for regular files only
        // (the kernel ignores O_TRUNC on the others).
        ftruncate(fd, 0).or_kernel(|| match sys::fstat(fd) {
            Ok(st) if st.st_mode & libc::S_IFMT == libc::S_IFREG => sys::ftruncate(fd, 0),
            _ => Ok(()),
        })
    } else {
        // Read-only: through the file's atomic state (the caller saw it has one).
        let inode = match desc(fd) {
            Ok(d) => Some(d.inode.clone()),
            Err(_) => sys::fstat(fd)
                .ok()
                .and_then(|st| e.lookup(st.st_dev, st.st_ino)),
        };
        match inode.as_ref().and_then(|i| i.atomic.get().map(|a| (i, a))) {
            Some((i, a)) => a.truncate(i, 0),
            None => Ok(()),
        }
    };
    if let Err(err) = r {
        let _ = close(fd);
        return Err(err);
    }
    Ok(fd)
}

fn open_managed(
    e: &Engine,
    dirfd: Fd,
    path: &CStr,
    kflags: i32,
    mode: u32,
    explicit: bool,
    atomic: bool,
) -> Res<Fd> {
    // The kernel descriptor is exactly what the application asked for (access mode,
    // O_APPEND): every call flex hands to the kernel sees it, and appends are the kernel's,
    // atomic between processes. Flex maps through a private read-write description.
    let fd = sys::openat(dirfd, path, kflags, mode)?;
    manage(e, fd, dirfd, path, kflags, explicit, atomic, false)
}

/// Set up flex's state for `fd`, just opened with `kflags` (or a lazy descriptor taken
/// over, whose offset the kernel holds: `pos_in_kernel`). A file flex leaves to the
/// kernel stays out of the table; `fd` is returned either way, unless atomic mode refuses
/// the file (then it is closed).
#[allow(clippy::too_many_arguments)]
fn manage(
    e: &Engine,
    fd: Fd,
    dirfd: Fd,
    path: &CStr,
    kflags: i32,
    explicit: bool,
    atomic: bool,
    pos_in_kernel: bool,
) -> Res<Fd> {
    let acc = kflags & libc::O_ACCMODE;
    // A lazy descriptor's open was counted (served) when the program made it.
    let count_open = !pos_in_kernel;
    let unmanaged = |reason: Pass| -> Res<Fd> {
        e.stats.fell_back(reason);
        if count_open {
            e.stats.passed(Call::open);
        }
        Ok(fd)
    };
    if fd <= 2 {
        return unmanaged(Pass::Fd012);
    }
    let st = match sys::fstat(fd) {
        Ok(st) => st,
        Err(_) => return unmanaged(Pass::FstatFailed),
    };
    if st.st_mode & libc::S_IFMT != libc::S_IFREG {
        return unmanaged(Pass::NotRegular);
    }
    let size = st.st_size as u64;
    let pathb = path.to_bytes();
    let (inode, found) = e.inode(st.st_dev, st.st_ino, size, pathb);
    let fresh = found == crate::runtime::Found::Fresh;
    if found != crate::runtime::Found::Busy {
        inode.lease_may_retry();
    }
    if fresh {
        // Over-allocated files are at least one growth step (64 KiB) and page multiples.
        if size >= 64 << 10 && size.is_multiple_of(4096) {
            match recover_at_open(fd, size, st.st_ino, acc) {
                Ok(Some(lsize)) => inode.adopt_size(lsize),
                Ok(None) => {}
                Err(reason) => {
                    e.release(&inode);
                    return unmanaged(reason);
                }
            }
        }
    } else if found == crate::runtime::Found::Busy {
        // `size` was read before this process's writers were excluded: read it again.
        let _ = inode.adopt_kernel_size(fd);
    }
    let d = Arc::new(Desc::new(
        inode,
        acc,
        kflags & !libc::O_ACCMODE & !libc::O_CLOEXEC,
        explicit,
    ));
    d.set_pos_in_kernel(pos_in_kernel);
    if atomic {
        if let Err(err) = crate::atomic::attach(&d.inode, fd, d.writable(), dirfd, path) {
            e.stats.fell_back(Pass::AtomicOpenRefused);
            flex_log!(
                LogLevel::Info,
                "atomic open of {} refused: {err}",
                String::from_utf8_lossy(pathb)
            );
            e.release(&d.inode);
            let _ = sys::close(fd);
            return Err(err);
        }
    }
    e.table.set(fd, d.clone());
    if count_open {
        e.stats.served(Call::open);
    }
    flex_log!(
        LogLevel::Debug,
        "open {} fd={} size={}",
        String::from_utf8_lossy(pathb),
        fd,
        size
    );
    if explicit {
        let _ = d.inode.map_for(fd, d.writable());
    }
    Ok(fd)
}

/// A crashed writer may have left this file over-allocated: trim it (the trailer says to
/// what). Returns the logical size if the file was trimmed.
fn recover_at_open(fd: Fd, size: u64, ino: u64, acc: i32) -> Result<Option<u64>, Pass> {
    // Read-only or write-only descriptor: look and recover through a private read-write
    // one (/proc/self/fd/N is a magic link: recover_path's O_NOFOLLOW would fail with
    // ELOOP and leave the reader the junk past the logical size).
    let (rw, own) = if acc == libc::O_RDWR {
        (fd, false)
    } else {
        match sys::reopen_rw(fd) {
            Ok(rw) => (rw, true),
            // Neither readable nor writable by us: nobody can trust the size; the kernel
            // serves this file.
            Err(_) => return Err(Pass::NoReadWrite),
        }
    };
    let r = match trailer::read(rw, size, ino) {
        Ok(Some(_)) => trailer::recover_fd(rw),
        _ => Ok(Recovery::Clean),
    };
    if own {
        engine().close_data_fd(rw, st_dev_ino(fd).0, st_dev_ino(fd).1);
    }
    match r {
        Ok(Recovery::Trimmed { to, .. }) => {
            engine().stats.recoveries.fetch_add(1, Relaxed);
            Ok(Some(to))
        }
        Ok(Recovery::Clean) => Ok(None),
        Ok(Recovery::InUse { .. }) => Err(Pass::OverAllocatedElsewhere),
        Err(_) => Err(Pass::RecoveryFailed),
    }
}

/// The (dev, ino) of an open descriptor ((0, 0) if fstat fails).
fn st_dev_ino(fd: Fd) -> (u64, u64) {
    sys::fstat(fd).map_or((0, 0), |st| (st.st_dev, st.st_ino))
}

/// Forget `fd` (closing or being replaced by dup2): the description closes with its last fd.
pub(super) fn drop_fd(e: &Engine, fd: Fd, d: Arc<Desc>) {
    if let Some(a) = d.inode.atomic.get() {
        // Atomic mode: a close is a commit point.
        let _ = a.commit(&d.inode);
        if d.fds.load(Acquire) == 1 && d.inode.descs.load(Acquire) == 1 {
            let _ = crate::atomic::detach(&d.inode);
        }
    }
    if d.inode.lease_fd() == fd {
        // The lease lives on this descriptor's file: exact size, lease given back.
        let _ = d.inode.trim(fd);
    }
    if d.fds.fetch_sub(1, AcqRel) == 1 {
        if !d.is_demoted() {
            // The kernel size is exact once a description closes.
            let _ = d.inode.trim(fd);
        }
        e.release(&d.inode);
    }
}

pub fn close(fd: Fd) -> Route<()> {
    let Some(e) = engine_if_started() else {
        return Route::Pass(Pass::NotManaged);
    };
    if e.is_private(fd) {
        // flex's own: to the application it is not open.
        return Route::err(Errno::BADF);
    }
    let Some(d) = e.table.take(fd) else {
        e.table.unlazy(fd);
        return Route::Pass(Pass::NotManaged);
    };
    drop_fd(e, fd, d);
    e.stats.served(Call::close);
    Route::Served(sys::close(fd))
}

/// close_range: forget managed descriptors in the range first (CLOEXEC only marks them),
/// then close the range around flex's own descriptors, which stay open. A range without
/// any of them (or an empty one, `first > last`: the kernel's EINVAL) passes whole.
pub fn close_range(first: u32, last: u32, flags: i32) -> Route<()> {
    let Some(e) = engine_if_started() else {
        return Route::Pass(Pass::NotManaged);
    };
    if flags & libc::CLOSE_RANGE_CLOEXEC as i32 != 0 {
        return Route::Pass(Pass::CloexecOnly);
    }
    e.table.unlazy_range(first, last, false);
    for (fd, _) in e.table.entries() {
        if (fd as u32) >= first && (fd as u32) <= last {
            if let Some(d) = e.table.take(fd) {
                drop_fd(e, fd, d);
            }
        }
    }
    let pieces = e.ranges_without_private(first, last);
    if first > last || pieces == [(first, last)] {
        return Route::Pass(Pass::Forgotten);
    }
    // Each piece closed even after a failure; the last failure's errno is the answer.
    let mut r = Ok(());
    for (a, b) in pieces {
        if let Err(err) = sys::close_range(a, b, flags) {
            r = Err(err);
        }
    }
    Route::Served(r)
}
