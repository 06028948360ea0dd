//! System-call-shaped entry points, one per intercepted call.
//!
//! Each returns `None` when flex does not manage the descriptor or path (the caller then
//! passes the call to the kernel untouched), or `Some(result)` with the kernel's errno
//! semantics. The preload library turns `Err(errno)` into `-1` + `errno`.

use crate::config::LogLevel;
use crate::config::{normalize, O_FLEX, O_FLEX_ATOMIC};
use crate::desc::Desc;
use crate::engine::{engine, engine_if_started, Engine};
use crate::fault;
use crate::inode::{AppendAt, FAST_LIMIT, MAX_RW};
use crate::log::flex_log;
use crate::stats::Call;
use crate::sys::{self, Errno, Res};
use crate::trailer::{self, Recovery};
use std::ffi::CStr;
use std::sync::atomic::Ordering::*;
use std::sync::Arc;

type Fd = i32;
const IOV_MAX: i32 = 1024;
/// RWF_* flags the engine serves itself; any other flag (RWF_NOWAIT, RWF_NOAPPEND,
/// RWF_ATOMIC, RWF_DONTCACHE, unknown bits) sends the whole call to the kernel, whose
/// answer depends on its version and the file system (see [`kernel_rw2`]).
const SERVED_RWF: i32 = libc::RWF_HIPRI | libc::RWF_DSYNC | libc::RWF_SYNC | libc::RWF_APPEND;

fn check_rwf(off: i64, total: usize) -> Res<()> {
    if off >= 0 {
        verify_area(off, total)?;
    }
    Ok(())
}

/// preadv2/pwritev2 with flags flex does not serve: the kernel does the call on the
/// exact-size file from flex's offset (the kernel descriptor carries O_APPEND itself);
/// then flex takes the offset and size back. In atomic mode such a call is a commit point
/// (README, "Failure-atomic mode").
///
/// # Safety
/// As the public entry points.
unsafe fn kernel_rw2(
    d: &Desc,
    fd: Fd,
    bufs: &[(*mut u8, usize)],
    off: i64,
    flags: i32,
    write: bool,
) -> Res<usize> {
    let e = engine();
    e.stats
        .passed(if write { Call::pwritev } else { Call::preadv });
    e.stats
        .fallback("preadv2/pwritev2 flag served by the kernel");
    crate::atomic::commit_for_kernel(&d.inode);
    d.inode.trim(fd)?;
    let mut pos = d.pos_at(fd);
    if off == -1 {
        // At the file position: the kernel's own (it alone knows where the call lands,
        // e.g. overlayfs appends even under RWF_NOAPPEND), moved there first, read after.
        sys::lseek(fd, *pos as i64, libc::SEEK_SET)?;
    }
    // SAFETY: forwarded contract (the kernel checks the buffers).
    let r = unsafe { sys::rw2(fd, bufs, off, flags, write) };
    // Even a failed write can move the size.
    let size = write.then(|| refresh_from_kernel(d, fd));
    if off == -1 {
        *pos = sys::lseek(fd, 0, libc::SEEK_CUR)?;
    }
    let n = r?;
    size.transpose()?;
    Ok(n)
}

/// Does this kernel check a vectored call's iovec array (EINVAL, EFAULT) before the
/// descriptor's access mode (EBADF)? Linux 6.1 does, later kernels do not. Asked once, on
/// a pipe end opened the wrong way round.
fn iov_before_access(write: bool) -> bool {
    use std::sync::atomic::AtomicU8;
    static ORDER: [AtomicU8; 2] = [AtomicU8::new(0), AtomicU8::new(0)];
    let slot = &ORDER[write as usize];
    match slot.load(Relaxed) {
        1 => return true,
        2 => return false,
        _ => {}
    }
    let Ok((r, w)) = rustix::pipe::pipe() else {
        return false;
    };
    use rustix::fd::AsRawFd;
    let (fd, nr) = if write {
        (r.as_raw_fd(), libc::SYS_writev)
    } else {
        (w.as_raw_fd(), libc::SYS_readv)
    };
    // Another thread of the program may close a descriptor number it does not own (ours)
    // and open a file that takes it: only an answer about our own pipe counts.
    let ours = || sys::fstat(fd).map(|st| st.st_ino).ok();
    let before = ours();
    // SAFETY: a raw system call with an invalid count: the kernel rejects it before
    // touching any memory.
    let rc = unsafe { libc::syscall(nr, fd, core::ptr::null::<libc::iovec>(), -1i32) };
    // SAFETY: this thread's errno.
    let errno = if rc < 0 {
        unsafe { *libc::__errno_location() }
    } else {
        0
    };
    if before.is_none() || ours() != before || (errno != libc::EINVAL && errno != libc::EBADF) {
        return false; // not known: the newer kernels' order, asked again next time
    }
    let first = errno == libc::EINVAL;
    slot.store(if first { 1 } else { 2 }, Relaxed);
    first
}

/// The kernel's rw_verify_area: offset + count must not pass the largest offset (EINVAL).
fn verify_area(off: i64, count: usize) -> Res<()> {
    if (off as u64).saturating_add(count as u64) > i64::MAX as u64 {
        return Err(Errno::INVAL);
    }
    Ok(())
}

fn iov_total<T>(b: &[(T, usize)]) -> usize {
    b.iter()
        .fold(0usize, |a, x| a.saturating_add(x.1))
        .min(MAX_RW)
}

/// The managed description of `fd`, if any (cheap when nothing is managed).
#[inline]
fn desc(fd: Fd) -> Option<Arc<Desc>> {
    engine_if_started()?.table.get(fd)
}

/// Is this open for flex? Absolute or relative path under FLEX_PATHS, or O_FLEX.
fn wants(e: &Engine, dirfd: Fd, path: &CStr, flags: i32) -> bool {
    if flags & (O_FLEX | O_FLEX_ATOMIC) != 0 {
        return true;
    }
    if e.config.paths.is_empty() || e.config.disabled {
        return false;
    }
    let p = path.to_bytes();
    if p.first() == Some(&b'/') {
        return e.config.path_managed(&normalize(p));
    }
    let base = if dirfd == libc::AT_FDCWD {
        e.cwd()
    } else {
        let link = format!("/proc/self/fd/{dirfd}");
        std::fs::read_link(link)
            .ok()
            .map(|b| std::os::unix::ffi::OsStrExt::as_bytes(b.as_os_str()).to_vec())
    };
    let Some(mut abs) = base else { return false };
    abs.push(b'/');
    abs.extend_from_slice(p);
    e.config.path_managed(&normalize(&abs))
}

/// open, open64, openat, creat. `flags` may carry O_FLEX.
pub fn open(dirfd: Fd, path: &CStr, flags: i32, mode: u32) -> Option<Res<Fd>> {
    let e = engine();
    if !wants(e, dirfd, path, flags) {
        return None;
    }
    let atomic = flags & O_FLEX_ATOMIC != 0 || e.config.atomic;
    let explicit = flags & (O_FLEX | O_FLEX_ATOMIC) != 0;
    let kflags = flags & !O_FLEX & !O_FLEX_ATOMIC;
    if e.config.disabled || kflags & (libc::O_PATH | libc::O_DIRECTORY) != 0 {
        return Some(sys::openat(dirfd, path, kflags, mode));
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
                    return Some(Err(err));
                }
            }
            return Some(open_truncated(e, dirfd, path, kflags, mode, explicit, ro));
        }
    }
    Some(open_managed(e, dirfd, path, kflags, mode, explicit, atomic))
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
        ftruncate(fd, 0).unwrap_or_else(|| match sys::fstat(fd) {
            Ok(st) if st.st_mode & libc::S_IFMT == libc::S_IFREG => sys::ftruncate(fd, 0),
            _ => Ok(()),
        })
    } else {
        // Read-only: through the file's atomic state (the caller saw it has one).
        let inode = match desc(fd) {
            Some(d) => Some(d.inode.clone()),
            None => sys::fstat(fd)
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
    let acc = kflags & libc::O_ACCMODE;
    // The kernel descriptor is exactly what the application asked for (access mode,
    // O_APPEND): every call flex hands to the kernel sees it, and appends are the kernel's,
    // atomic between processes. Flex maps through a private read-write description.
    let fd = sys::openat(dirfd, path, kflags, mode)?;
    let unmanaged = |reason: &'static str| -> Res<Fd> {
        e.stats.fallback(reason);
        e.stats.passed(Call::open);
        Ok(fd)
    };
    if fd <= 2 {
        return unmanaged("descriptor 0-2");
    }
    let st = match sys::fstat(fd) {
        Ok(st) => st,
        Err(_) => return unmanaged("fstat failed"),
    };
    if st.st_mode & libc::S_IFMT != libc::S_IFREG {
        return unmanaged("not a regular file");
    }
    let size = st.st_size as u64;
    let pathb = path.to_bytes();
    let (inode, found) = e.inode(st.st_dev, st.st_ino, size, pathb);
    let fresh = found == crate::engine::Found::Fresh;
    if found != crate::engine::Found::Busy {
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
    } else if found == crate::engine::Found::Busy {
        // `size` was read before this process's writers were excluded: read it again.
        let _ = inode.adopt_kernel_size(fd);
    }
    let d = Arc::new(Desc::new(
        inode,
        acc,
        kflags & !libc::O_ACCMODE & !libc::O_CLOEXEC,
        explicit,
    ));
    if atomic {
        if let Err(err) = crate::atomic::attach(&d.inode, fd, d.writable(), dirfd, path) {
            e.stats.fallback("atomic: open refused (log error)");
            e.release(&d.inode);
            let _ = sys::close(fd);
            return Err(err);
        }
    }
    e.table.set(fd, d.clone());
    e.stats.served(Call::open);
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
fn recover_at_open(fd: Fd, size: u64, ino: u64, acc: i32) -> Result<Option<u64>, &'static str> {
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
            Err(_) => return Err("cannot open read-write to check for a crash-left trailer"),
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
        Ok(Recovery::InUse { .. }) => Err("over-allocated by another live process"),
        Err(_) => Err("recovery failed"),
    }
}

/// The (dev, ino) of an open descriptor ((0, 0) if fstat fails).
fn st_dev_ino(fd: Fd) -> (u64, u64) {
    sys::fstat(fd).map_or((0, 0), |st| (st.st_dev, st.st_ino))
}

/// Forget `fd` (closing or being replaced by dup2): the description closes with its last fd.
fn drop_fd(e: &Engine, fd: Fd, d: Arc<Desc>) {
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

pub fn close(fd: Fd) -> Option<Res<()>> {
    let e = engine_if_started()?;
    if e.is_private(fd) {
        // flex's own: to the application it is not open.
        return Some(Err(Errno::BADF));
    }
    let d = e.table.take(fd)?;
    drop_fd(e, fd, d);
    e.stats.served(Call::close);
    Some(sys::close(fd))
}

/// close_range: forget managed descriptors in the range first (CLOEXEC only marks them).
/// Returns the ranges to close: the range without flex's own descriptors.
pub fn close_range(first: u32, last: u32, flags: i32) -> Option<Vec<(u32, u32)>> {
    let e = engine_if_started()?;
    if flags & libc::CLOSE_RANGE_CLOEXEC as i32 != 0 {
        return None;
    }
    for (fd, _) in e.table.entries() {
        if (fd as u32) >= first && (fd as u32) <= last {
            if let Some(d) = e.table.take(fd) {
                drop_fd(e, fd, d);
            }
        }
    }
    Some(e.ranges_without_private(first, last))
}

/// Decide whether this IO goes through the mapping (true) or the kernel (false).
fn mapped(e: &Engine, d: &Desc, fd: Fd, write: bool) -> bool {
    let i = &d.inode;
    if i.nomap() || e.exiting.load(Relaxed) {
        return false;
    }
    if i.is_mapped(write) {
        return true;
    }
    if !d.explicit && i.io.fetch_add(1, Relaxed) < e.config.adopt_after {
        return false;
    }
    // A read-write description maps writable at once: no remap at its first write.
    match i.map_for(fd, write || d.writable()) {
        Ok(()) => true,
        Err(err) => {
            flex_log!(
                LogLevel::Info,
                "mmap failed ({err}): kernel path for {}",
                String::from_utf8_lossy(&i.path)
            );
            e.stats.fallback("mmap failed");
            i.set_nomap();
            false
        }
    }
}

/// # Safety
/// As the public entry points.
unsafe fn do_read(
    e: &Engine,
    d: &Desc,
    fd: Fd,
    bufs: &[(*mut u8, usize)],
    off: u64,
    call: Call,
) -> Res<usize> {
    let total: usize = bufs.iter().fold(0usize, |a, b| a.saturating_add(b.1));
    if total == 0 {
        return Ok(0);
    }
    if let Some(a) = d.inode.atomic.get() {
        // The kernel refuses a range past the largest offset (elsewhere it answers this).
        verify_area(off as i64, total.min(MAX_RW))?;
        e.stats.served(call);
        // SAFETY: forwarded contract.
        return unsafe { a.read(&d.inode, fd, bufs, off) };
    }
    // A read at or past the end serves nothing from a mapping (SQLite probes past its
    // journal's end): the kernel answers it, and it maps nothing.
    let past_end = off >= d.inode.lsize() && !d.inode.is_mapped(false);
    if past_end && off < FAST_LIMIT {
        e.stats.passed(call);
        // SAFETY: forwarded contract.
        let r = unsafe { sys::preadv(fd, bufs, off) };
        if matches!(r, Ok(n) if n > 0) {
            // Another process grew the file: take its size, and the read counts towards
            // adoption (a reader following a growing file gets mapped).
            let _ = d.inode.adopt_kernel_size(fd);
            d.inode.io.fetch_add(1, Relaxed);
        }
        return r;
    }
    if off >= FAST_LIMIT || !mapped(e, d, fd, false) {
        e.stats.passed(call);
        // SAFETY: forwarded contract.
        return unsafe { sys::preadv(fd, bufs, off) };
    }
    e.stats.served(call);
    let mut done = 0usize;
    for &(p, l) in bufs {
        let l = l.min(MAX_RW - done);
        // SAFETY: forwarded contract.
        let n = match unsafe { d.inode.read_at(fd, p, l, off + done as u64) } {
            Ok(n) => n,
            Err(err) if done == 0 => return Err(err),
            Err(_) => break,
        };
        done += n;
        if n < l || done >= MAX_RW {
            break;
        }
    }
    Ok(done)
}

/// # Safety
/// As the public entry points.
/// `how`: an append, and how the kernel places it if it does (see [`AppendAt`]). A
/// returned end of `u64::MAX`: the kernel appended at the file position, which now holds
/// the description's position (see `Desc::pos_at`).
unsafe fn do_write(
    e: &Engine,
    d: &Desc,
    fd: Fd,
    bufs: &[(*const u8, usize)],
    off: u64,
    how: Option<AppendAt>,
    call: Call,
) -> Res<(usize, u64)> {
    let append = how.is_some();
    let total: usize = bufs.iter().fold(0usize, |a, b| a.saturating_add(b.1));
    if total == 0 {
        return Ok((0, off));
    }
    if let Some(a) = d.inode.atomic.get() {
        e.stats.served(call);
        // SAFETY: forwarded contract.
        let r = unsafe { a.write(&d.inode, bufs, off, append) }?;
        if d.sync_writes().is_some() {
            // O_SYNC/O_DSYNC: each write is its own transaction, durable on return.
            a.commit(&d.inode)?;
        }
        return Ok(r);
    }
    let end = off.saturating_add(total as u64);
    // DaxVM's lesson: map only where the mapping serves. Off DAX the kernel extends files
    // anyway, so a file only ever extended (a new journal, a log) is never mapped, and
    // such writes do not count towards adoption (FLEX_ADOPT_AFTER counts servable calls).
    let extending = append || end > d.inode.lsize();
    let unmapped_extend = extending
        && !d.explicit
        && !d.inode.is_mapped(true)
        && !d.inode.fs(fd).maps_extending_writes()
        && !crate::lease::overallocate_everywhere();
    if unmapped_extend || !mapped(e, d, fd, true) || d.inode.kernel_extends(end, append) {
        e.stats.passed(call);
        // SAFETY: forwarded contract (the kernel honours O_SYNC/O_DSYNC itself).
        return unsafe { d.inode.kernel_write(fd, bufs, off, how) };
    }
    e.stats.served(call);
    // SAFETY: forwarded contract.
    let r = unsafe { d.inode.write_at(fd, bufs, off, how, false) }?;
    if let Some(data_only) = d.sync_writes() {
        // O_SYNC/O_DSYNC: durable before the write returns, as the kernel's would be.
        d.inode.sync(fd, data_only)?;
    }
    Ok(r)
}

/// fsync or fdatasync of a description: a commit in atomic mode.
fn sync_desc(d: &Desc, fd: Fd, data_only: bool) -> Res<()> {
    match d.inode.atomic.get() {
        Some(a) => a.commit(&d.inode),
        None => d.inode.sync(fd, data_only),
    }
}

/// Copy an application iovec array into our memory; EFAULT/EINVAL as the kernel.
fn iovecs(iov: *const libc::iovec, cnt: i32) -> Res<Vec<(*mut u8, usize)>> {
    if !(0..=IOV_MAX).contains(&cnt) {
        return Err(Errno::INVAL);
    }
    let mut v: Vec<libc::iovec> = Vec::with_capacity(cnt as usize);
    let bytes = cnt as usize * core::mem::size_of::<libc::iovec>();
    // SAFETY: `v` has capacity for `cnt` iovecs; the source is the application's pointer,
    // and a bad one faults inside the guarded copy instead of crashing.
    let rem = unsafe { fault::copy(v.as_mut_ptr().cast(), iov.cast(), bytes) };
    if rem != 0 {
        return Err(Errno::FAULT);
    }
    // SAFETY: all `cnt` elements were just initialised by the copy.
    unsafe { v.set_len(cnt as usize) };
    // As the kernel's import_iovec: a negative length anywhere is EINVAL, then any buffer
    // outside user space (zero-length ones included) is EFAULT. The total is clamped to
    // MAX_RW by the data paths, never an error.
    if v.iter().any(|i| i.iov_len > isize::MAX as usize) {
        return Err(Errno::INVAL);
    }
    if !v
        .iter()
        .all(|i| access_ok(i.iov_base as *const u8, i.iov_len))
    {
        return Err(Errno::FAULT);
    }
    Ok(v.into_iter()
        .map(|i| (i.iov_base.cast::<u8>(), i.iov_len))
        .collect())
}

/// The kernel's access_ok(): the buffer lies in the user half of the address space (also
/// for zero lengths). The kernel's bound is TASK_SIZE (47 or 56 bits); we check the sign
/// bit, which catches kernel pointers; other non-canonical ones fault in the guarded copy.
fn access_ok(p: *const u8, len: usize) -> bool {
    (p as usize)
        .checked_add(len)
        .is_some_and(|end| end <= isize::MAX as usize)
}

/// One application buffer, checked as the kernel does before any IO.
fn user_buf<P>(p: *const u8, len: usize, keep: P) -> Res<Vec<(P, usize)>> {
    if access_ok(p, len) {
        Ok(vec![(keep, len.min(MAX_RW))])
    } else {
        Err(Errno::FAULT)
    }
}

fn check_read(d: &Desc) -> Res<()> {
    if d.readable() {
        Ok(())
    } else {
        Err(Errno::BADF)
    }
}
fn check_write(d: &Desc) -> Res<()> {
    if d.writable() {
        Ok(())
    } else {
        Err(Errno::BADF)
    }
}

/// read, readv, preadv(-1): at the description's offset, under its position lock.
/// # Safety
/// As the public entry points.
unsafe fn read_pos(fd: Fd, bufs: Res<Vec<(*mut u8, usize)>>, call: Call) -> Option<Res<usize>> {
    let d = desc(fd)?;
    if let Err(e) = check_read(&d) {
        if let Err(ie) = &bufs {
            if call != Call::read && iov_before_access(false) {
                return Some(Err(*ie));
            }
        }
        return Some(Err(e));
    }
    if d.is_demoted() {
        return None;
    }
    let e = engine();
    let bufs = match bufs {
        Ok(b) => b,
        Err(err) => return Some(Err(err)),
    };
    let mut pos = d.pos_at(fd);
    if d.is_coherent() {
        // The kernel's offset is the truth (stdio may have moved it).
        let k = match sys::lseek(fd, 0, libc::SEEK_CUR) {
            Ok(k) => k,
            Err(err) => return Some(Err(err)),
        };
        // SAFETY: forwarded contract.
        let r = unsafe { do_read(e, &d, fd, &bufs, k, call) };
        if let Ok(n) = r {
            let _ = sys::lseek(fd, (k + n as u64) as i64, libc::SEEK_SET);
        }
        return Some(r);
    }
    // SAFETY: forwarded contract.
    let r = unsafe { do_read(e, &d, fd, &bufs, *pos, call) };
    if let Ok(n) = r {
        *pos += n as u64;
    }
    Some(r)
}

/// # Safety
/// As the public entry points.
unsafe fn write_pos(
    fd: Fd,
    bufs: Res<Vec<(*const u8, usize)>>,
    call: Call,
    append: Option<bool>,
) -> Option<Res<usize>> {
    let d = desc(fd)?;
    if let Err(e) = check_write(&d) {
        if let Err(ie) = &bufs {
            if call != Call::write && iov_before_access(true) {
                return Some(Err(*ie));
            }
        }
        return Some(Err(e));
    }
    if d.is_demoted() {
        return None;
    }
    let e = engine();
    let bufs = match bufs {
        Ok(b) => b,
        Err(err) => return Some(Err(err)),
    };
    let mut pos = d.pos();
    let appending = append.unwrap_or(d.append());
    if !appending {
        d.sync_pos(&mut pos, fd);
    }
    if d.is_coherent() {
        if append.unwrap_or(d.append()) {
            // The kernel descriptor carries O_APPEND again: let the kernel append.
            return None;
        }
        let k = match sys::lseek(fd, 0, libc::SEEK_CUR) {
            Ok(k) => k,
            Err(err) => return Some(Err(err)),
        };
        // SAFETY: forwarded contract.
        let r = unsafe { do_write(e, &d, fd, &bufs, k, None, call) };
        if let Ok((_, end)) = r {
            let _ = sys::lseek(fd, end as i64, libc::SEEK_SET);
        }
        return Some(r.map(|(n, _)| n));
    }
    // The kernel checks the file position before it appends (itself, where it holds it).
    if !(appending && d.pos_is_in_kernel()) {
        if let Err(err) = verify_area(*pos as i64, iov_total(&bufs)) {
            return Some(Err(err));
        }
    }
    // SAFETY: forwarded contract.
    let how = appending.then_some(if d.pos_is_in_kernel() {
        AppendAt::KernelPos
    } else {
        AppendAt::Position(*pos)
    });
    let r = unsafe { do_write(e, &d, fd, &bufs, *pos, how, call) };
    Some(r.map(|(n, end)| {
        if end == u64::MAX {
            // The kernel appended at the file position and moved it to the end.
            d.set_pos_in_kernel(true);
        } else if n > 0 || !d.append() {
            *pos = end;
            d.set_pos_in_kernel(false);
        } else {
            d.sync_pos(&mut pos, fd);
        }
        n
    }))
}

/// # Safety
/// Buffer pointers come from the application: each must be valid for its length, or
/// invalid so that the access faults (answered with EFAULT, never a crash). They must not
/// point into memory the application does not own.
pub unsafe fn read(fd: Fd, buf: *mut u8, len: usize) -> Option<Res<usize>> {
    // SAFETY: forwarded contract.
    unsafe { read_pos(fd, user_buf(buf, len, buf), Call::read) }
}

/// # Safety
/// Buffer pointers come from the application: each must be valid for its length, or
/// invalid so that the access faults (answered with EFAULT, never a crash). They must not
/// point into memory the application does not own.
pub unsafe fn write(fd: Fd, buf: *const u8, len: usize) -> Option<Res<usize>> {
    // SAFETY: forwarded contract.
    unsafe { write_pos(fd, user_buf(buf, len, buf), Call::write, None) }
}

/// # Safety
/// Buffer pointers come from the application: each must be valid for its length, or
/// invalid so that the access faults (answered with EFAULT, never a crash). They must not
/// point into memory the application does not own.
pub unsafe fn pread(fd: Fd, buf: *mut u8, len: usize, off: i64) -> Option<Res<usize>> {
    let d = desc(fd)?;
    if off < 0 {
        return Some(Err(Errno::INVAL));
    }
    if let Err(e) = check_read(&d) {
        return Some(Err(e));
    }
    if d.is_demoted() {
        return None;
    }
    if !access_ok(buf, len) {
        return Some(Err(Errno::FAULT));
    }
    // SAFETY: forwarded contract.
    Some(unsafe {
        do_read(
            engine(),
            &d,
            fd,
            &[(buf, len.min(MAX_RW))],
            off as u64,
            Call::pread,
        )
    })
}

/// # Safety
/// Buffer pointers come from the application: each must be valid for its length, or
/// invalid so that the access faults (answered with EFAULT, never a crash). They must not
/// point into memory the application does not own.
pub unsafe fn pwrite(fd: Fd, buf: *const u8, len: usize, off: i64) -> Option<Res<usize>> {
    let d = desc(fd)?;
    if off < 0 {
        return Some(Err(Errno::INVAL));
    }
    if let Err(e) = check_write(&d) {
        return Some(Err(e));
    }
    if d.is_demoted() {
        return None;
    }
    if !access_ok(buf, len) {
        return Some(Err(Errno::FAULT));
    }
    // The offset is checked even when O_APPEND ignores it.
    if let Err(e) = verify_area(off, len) {
        return Some(Err(e));
    }
    // Linux: pwrite on an O_APPEND descriptor appends, whatever the offset.
    // SAFETY: forwarded contract.
    Some(
        unsafe {
            do_write(
                engine(),
                &d,
                fd,
                &[(buf, len.min(MAX_RW))],
                off as u64,
                d.append().then_some(AppendAt::Offset(off as u64)),
                Call::pwrite,
            )
        }
        .map(|r| r.0),
    )
}

/// # Safety
/// Buffer pointers come from the application: each must be valid for its length, or
/// invalid so that the access faults (answered with EFAULT, never a crash). They must not
/// point into memory the application does not own.
pub unsafe fn readv(fd: Fd, iov: *const libc::iovec, cnt: i32) -> Option<Res<usize>> {
    desc(fd)?;
    // SAFETY: forwarded contract.
    unsafe { read_pos(fd, iovecs(iov, cnt), Call::readv) }
}

/// # Safety
/// Buffer pointers come from the application: each must be valid for its length, or
/// invalid so that the access faults (answered with EFAULT, never a crash). They must not
/// point into memory the application does not own.
pub unsafe fn writev(fd: Fd, iov: *const libc::iovec, cnt: i32) -> Option<Res<usize>> {
    desc(fd)?;
    let b = iovecs(iov, cnt).map(|v| v.into_iter().map(|(p, l)| (p as *const u8, l)).collect());
    // SAFETY: forwarded contract.
    unsafe { write_pos(fd, b, Call::writev, None) }
}

/// preadv, preadv2 (flags; offset -1 means the file position).
/// # Safety
/// Buffer pointers come from the application: each must be valid for its length, or
/// invalid so that the access faults (answered with EFAULT, never a crash). They must not
/// point into memory the application does not own.
pub unsafe fn preadv2(
    fd: Fd,
    iov: *const libc::iovec,
    cnt: i32,
    off: i64,
    flags: i32,
) -> Option<Res<usize>> {
    let d = desc(fd)?;
    // The kernel's order: offset, descriptor, iovecs, zero total, flags.
    if off < -1 {
        return Some(Err(Errno::INVAL));
    }
    if let Err(e) = check_read(&d) {
        if iov_before_access(false) {
            if let Err(ie) = iovecs(iov, cnt) {
                return Some(Err(ie));
            }
        }
        return Some(Err(e));
    }
    if d.is_demoted() {
        return None;
    }
    let b = match iovecs(iov, cnt) {
        Ok(b) => b,
        Err(e) => return Some(Err(e)),
    };
    let total = iov_total(&b);
    if total == 0 {
        return Some(Ok(0));
    }
    if let Err(e) = check_rwf(off, total) {
        return Some(Err(e));
    }
    if flags & !SERVED_RWF != 0 {
        // SAFETY: forwarded contract.
        return Some(unsafe { kernel_rw2(&d, fd, &b, off, flags, false) });
    }
    if off == -1 {
        // SAFETY: forwarded contract.
        return unsafe { read_pos(fd, Ok(b), Call::preadv) };
    }
    // SAFETY: forwarded contract.
    Some(unsafe { do_read(engine(), &d, fd, &b, off as u64, Call::preadv) })
}

/// pwritev, pwritev2 (RWF_APPEND, RWF_NOAPPEND, RWF_DSYNC/RWF_SYNC; offset -1 means the
/// file position).
/// # Safety
/// Buffer pointers come from the application: each must be valid for its length, or
/// invalid so that the access faults (answered with EFAULT, never a crash). They must not
/// point into memory the application does not own.
pub unsafe fn pwritev2(
    fd: Fd,
    iov: *const libc::iovec,
    cnt: i32,
    off: i64,
    flags: i32,
) -> Option<Res<usize>> {
    let d = desc(fd)?;
    // The kernel's order: offset, descriptor, iovecs, zero total, flags.
    if off < -1 {
        return Some(Err(Errno::INVAL));
    }
    if let Err(e) = check_write(&d) {
        if iov_before_access(true) {
            if let Err(ie) = iovecs(iov, cnt) {
                return Some(Err(ie));
            }
        }
        return Some(Err(e));
    }
    if d.is_demoted() {
        return None;
    }
    let b: Vec<(*const u8, usize)> = match iovecs(iov, cnt) {
        Ok(v) => v.into_iter().map(|(p, l)| (p as *const u8, l)).collect(),
        Err(e) => return Some(Err(e)),
    };
    let total = iov_total(&b);
    if total == 0 {
        return Some(Ok(0));
    }
    if let Err(e) = check_rwf(off, total) {
        return Some(Err(e));
    }
    if flags & !SERVED_RWF != 0 {
        let bm: Vec<(*mut u8, usize)> = b.iter().map(|&(p, l)| (p as *mut u8, l)).collect();
        // SAFETY: forwarded contract (the kernel only reads these buffers).
        return Some(unsafe { kernel_rw2(&d, fd, &bm, off, flags, true) });
    }
    let append = (flags & libc::RWF_APPEND != 0).then_some(true);
    let r = if off == -1 {
        // SAFETY: forwarded contract.
        unsafe { write_pos(fd, Ok(b), Call::pwritev, append) }?
    } else {
        // SAFETY: forwarded contract.
        unsafe {
            do_write(
                engine(),
                &d,
                fd,
                &b,
                off as u64,
                append
                    .unwrap_or(d.append())
                    .then_some(AppendAt::Offset(off as u64)),
                Call::pwritev,
            )
        }
        .map(|r| r.0)
    };
    if r.is_ok() && flags & (libc::RWF_DSYNC | libc::RWF_SYNC) != 0 {
        // Per-write O_DSYNC/O_SYNC: durable on return (in atomic mode: a commit).
        if let Err(err) = sync_desc(&d, fd, flags & libc::RWF_SYNC == 0) {
            return Some(Err(err));
        }
    }
    Some(r)
}

pub fn lseek(fd: Fd, off: i64, whence: i32) -> Option<Res<i64>> {
    let d = desc(fd)?;
    if d.is_demoted() || d.is_coherent() {
        return None;
    }
    let e = engine();
    e.stats.served(Call::lseek);
    let mut pos = d.pos_at(fd);
    let cur = *pos as i128;
    let (size, settled) = match d.inode.atomic.get() {
        Some(a) => a.size_settled(),
        // Relative to the end: the kernel's size unless this process owns it (appends the
        // kernel placed, other processes' writes), as the kernel's own lseek.
        None if whence != libc::SEEK_SET && whence != libc::SEEK_CUR => {
            match d.inode.adopt_kernel_size(fd) {
                Ok(s) => (s, true),
                Err(err) => return Some(Err(err)),
            }
        }
        None => (d.inode.lsize(), true),
    };
    let target: i128 = match whence {
        libc::SEEK_SET => off as i128,
        libc::SEEK_CUR => cur + off as i128,
        libc::SEEK_END => size as i128 + off as i128,
        libc::SEEK_DATA | libc::SEEK_HOLE => {
            // Past the end: ENXIO. Negative offsets: ENXIO on ext4, xfs and tmpfs; btrfs
            // searches from 0 (ENXIO only when the file is empty). The kernel's answer
            // where it knows the file's size (not over-allocated, nothing logged).
            let plain = !d.inode.in_trailer_mode() && d.inode.atomic.get().is_none();
            if off < 0 && plain {
                return Some(sys::lseek(fd, off, whence).map(|k| {
                    *pos = k;
                    k as i64
                }));
            }
            let off = if off < 0 && negative_seek_from_start(fd) {
                0
            } else {
                off
            };
            if off < 0 {
                return Some(Err(Errno::NXIO));
            }
            if off as u64 >= size {
                return Some(Err(Errno::NXIO));
            }
            if !settled {
                // Atomic mode with logged bytes the data file lacks: all of it is data
                // (as on a file system without holes).
                if whence == libc::SEEK_DATA {
                    off as i128
                } else {
                    size as i128
                }
            } else if d.inode.in_trailer_mode() || d.inode.atomic.get().is_some() {
                // Past the logical size the kernel sees preallocated zeros: clamp.
                match sys::lseek(fd, off, whence) {
                    Ok(k) if whence == libc::SEEK_HOLE => (k.min(size)) as i128,
                    Ok(k) if k >= size => return Some(Err(Errno::NXIO)),
                    Ok(k) => k as i128,
                    Err(Errno::NXIO) if whence == libc::SEEK_HOLE => size as i128,
                    Err(err) => return Some(Err(err)),
                }
            } else {
                match sys::lseek(fd, off, whence) {
                    Ok(k) => k as i128,
                    Err(err) => return Some(Err(err)),
                }
            }
        }
        _ => return Some(Err(Errno::INVAL)),
    };
    if target < 0 {
        return Some(Err(Errno::INVAL));
    }
    if target >= FAST_LIMIT as i128 {
        // Each file system has its own limit (s_maxbytes): let the kernel judge.
        if target > i64::MAX as i128 {
            return Some(Err(Errno::INVAL));
        }
        if let Err(err) = sys::lseek(fd, target as i64, libc::SEEK_SET) {
            return Some(Err(err));
        }
    }
    *pos = target as u64;
    Some(Ok(target as i64))
}

/// Does the file system answer SEEK_DATA/SEEK_HOLE at a negative offset as at 0 (btrfs)?
fn negative_seek_from_start(fd: Fd) -> bool {
    const BTRFS: u64 = 0x9123_683e;
    rustix::fs::fstatfs(sys::bfd(fd)).is_ok_and(|s| s.f_type as u64 == BTRFS)
}

pub fn fsync(fd: Fd, data_only: bool) -> Option<Res<()>> {
    let d = desc(fd)?;
    if d.is_demoted() {
        return None;
    }
    engine().stats.served(if data_only {
        Call::fdatasync
    } else {
        Call::fsync
    });
    Some(sync_desc(&d, fd, data_only))
}

pub fn sync_file_range(fd: Fd, off: i64, n: i64, flags: u32) -> Option<Res<()>> {
    let d = desc(fd)?;
    if d.is_demoted() {
        return None;
    }
    engine().stats.served(Call::sync_file_range);
    if let Err(e) = d.inode.trim(fd) {
        return Some(Err(e));
    }
    // SAFETY: a raw system call with scalar arguments.
    let r = unsafe { libc::syscall(libc::SYS_sync_file_range, fd, off, n, flags) };
    Some(if r < 0 {
        // SAFETY: this thread's errno.
        Err(Errno::from_raw_os_error(unsafe {
            *libc::__errno_location()
        }))
    } else {
        Ok(())
    })
}

pub fn ftruncate(fd: Fd, len: i64) -> Option<Res<()>> {
    let d = desc(fd)?;
    if d.is_demoted() {
        return None;
    }
    engine().stats.served(Call::ftruncate);
    if len < 0 {
        return Some(Err(Errno::INVAL));
    }
    if !d.writable() {
        return Some(Err(Errno::INVAL));
    }
    if let Some(a) = d.inode.atomic.get() {
        return Some(a.truncate(&d.inode, len as u64));
    }
    Some(
        d.inode
            .set_len(Some(fd), len as u64, || sys::ftruncate(fd, len as u64)),
    )
}

/// truncate(path): if this process has the file over-allocated, trim it first.
pub fn truncate(path: &CStr, len: i64) -> Option<Res<()>> {
    let e = engine_if_started()?;
    // Open descriptions cache the size even outside trailer mode: they must see the new one.
    if e.trailer_files.load(Relaxed) <= 0 && e.table.is_empty() {
        return None;
    }
    let st = sys::fstatat(libc::AT_FDCWD, path, 0).ok()?;
    let inode = e.lookup(st.st_dev, st.st_ino)?;
    let fd = e
        .table
        .entries()
        .into_iter()
        .find(|(_, d)| Arc::ptr_eq(&d.inode, &inode))
        .map(|(fd, _)| fd);
    e.stats.served(Call::truncate);
    if len < 0 {
        return Some(Err(Errno::INVAL));
    }
    if let Some(a) = inode.atomic.get() {
        // A file in atomic mode here: the truncation joins the open transaction (the
        // kernel's permission check first: the path must be writable by us).
        if let Err(err) = sys::check_writable(libc::AT_FDCWD, path) {
            return Some(Err(err));
        }
        return Some(a.truncate(&inode, len as u64));
    }
    Some(inode.set_len(fd, len as u64, || {
        // SAFETY: a raw system call with a valid path string.
        let r = unsafe { libc::syscall(libc::SYS_truncate, path.as_ptr(), len) };
        if r < 0 {
            // SAFETY: this thread's errno.
            Err(Errno::from_raw_os_error(unsafe {
                *libc::__errno_location()
            }))
        } else {
            Ok(())
        }
    }))
}

/// fallocate and posix_fallocate: leave trailer mode, let the kernel allocate, re-read size.
pub fn fallocate(fd: Fd, mode: i32, off: i64, len: i64) -> Option<Res<()>> {
    let d = desc(fd)?;
    if d.is_demoted() {
        return None;
    }
    engine().stats.served(Call::fallocate);
    if let Some(a) = d.inode.atomic.get() {
        return Some(atomic_fallocate(&d, &a, fd, mode, off, len));
    }
    // A read-only description has a read-only kernel descriptor: the kernel refuses in its
    // own order (EINVAL for the range, EOPNOTSUPP for the mode, then EBADF).
    if d.writable() {
        if let Err(e) = d.inode.trim(fd) {
            return Some(Err(e));
        }
    }
    if let Err(err) = sys::fallocate(fd, mode, off, len) {
        return Some(Err(err));
    }
    Some(d.inode.refresh(fd).map(|_| ()))
}

/// posix_fallocate: the error number, as the C call returns it (None: not managed).
/// `emulate` is the C library's own, which writes the bytes where the file system has no
/// fallocate (FUSE, NFS...): the file is handed to the kernel around it.
pub fn posix_fallocate(fd: Fd, off: i64, len: i64, emulate: impl FnOnce() -> i32) -> Option<i32> {
    desc(fd)?;
    if off < 0 || len <= 0 {
        return Some(libc::EINVAL);
    }
    match fallocate(fd, 0, off, len)? {
        Ok(()) => Some(0),
        Err(Errno::OPNOTSUPP) => {
            let after = kernel_handoff(fd, false, Call::fallocate);
            let r = emulate();
            if let Some(after) = after {
                after();
            }
            Some(r)
        }
        Err(e) => Some(e.raw_os_error()),
    }
}

/// fallocate of a file in atomic mode. Allocation (mode 0, KEEP_SIZE) changes no byte: the
/// kernel allocates without growing, and the growth joins the open transaction. The modes
/// that change bytes (punch, zero, collapse, insert) are a commit point: commit, then the
/// kernel (README, "Failure-atomic mode").
fn atomic_fallocate(
    d: &Desc,
    a: &crate::atomic::Attached,
    fd: Fd,
    mode: i32,
    off: i64,
    len: i64,
) -> Res<()> {
    if mode & !libc::FALLOC_FL_KEEP_SIZE == 0 {
        sys::fallocate(fd, mode | libc::FALLOC_FL_KEEP_SIZE, off, len)?;
        let end = (off as u64).saturating_add(len as u64);
        if mode & libc::FALLOC_FL_KEEP_SIZE == 0 && end > a.size() {
            a.truncate(&d.inode, end)?;
        }
        return Ok(());
    }
    crate::atomic::commit_for_kernel(&d.inode);
    let r = sys::fallocate(fd, mode, off, len);
    let _ = refresh_from_kernel(d, fd);
    r
}

/// The kernel changed the file behind flex: take its size, in atomic mode into the
/// atomic state too (a commit and checkpoint emptied its log first).
fn refresh_from_kernel(d: &Desc, fd: Fd) -> Res<u64> {
    let size = d.inode.refresh(fd)?;
    if let Some(a) = d.inode.atomic.get() {
        a.adopt_size(size);
    }
    Ok(size)
}

/// dup, F_DUPFD, F_DUPFD_CLOEXEC: the new descriptor shares the description.
pub fn dup_result(old: Fd, new: Fd) {
    let Some(e) = engine_if_started() else { return };
    let Some(d) = e.table.get(old) else { return };
    e.stats.served(Call::dup);
    if new <= 2 {
        make_coherent(old, &d);
    }
    if let Some(prev) = e.table.set(new, d) {
        prev.fds.fetch_sub(1, AcqRel);
    }
}

/// A description now reachable through descriptor 0-2: hand the offset and an exact size
/// to the kernel and keep them there (see [`Desc::coherent`]).
fn make_coherent(fd: Fd, d: &Desc) {
    if d.is_demoted() || d.coherent.swap(true, AcqRel) {
        return;
    }
    let pos = *d.pos_at(fd);
    let _ = sys::lseek(fd, pos as i64, libc::SEEK_SET);
    let _ = d.inode.make_exact(fd, true);
    flex_log!(LogLevel::Debug, "coherent fd={fd} pos={pos}");
}

/// dup2/dup3 before the kernel call: `new` is about to be closed silently.
pub fn dup2_before(old: Fd, new: Fd) {
    let Some(e) = engine_if_started() else { return };
    if old != new && e.is_private(new) {
        crate::atomic::move_private(new);
    }
    if old == new || e.table.get(old).is_none() && e.table.get(new).is_none() {
        return;
    }
    // Only forget `new` if `old` is valid (else the kernel fails and `new` stays open).
    if sys::fcntl_int(old, libc::F_GETFD, 0).is_err() {
        return;
    }
    if let Some(d) = e.table.take(new) {
        drop_fd(e, new, d);
    }
}

/// Hand a description back to the kernel: offset and exact size.
pub fn demote(fd: Fd, d: &Desc) {
    if d.demoted.swap(true, AcqRel) {
        return;
    }
    if d.inode.atomic.get().is_some() {
        // Another image will use the file through the kernel: commit, leave atomic mode.
        engine()
            .stats
            .fallback("atomic: fork/exec hands the file to the kernel");
        let _ = crate::atomic::detach(&d.inode);
    }
    if d.is_coherent() {
        // The kernel already holds the offset (stdio and lseek moved it there, our copy is
        // stale) and the exact size.
        flex_log!(LogLevel::Debug, "demote fd={fd} (coherent)");
        return;
    }
    let pos = *d.pos_at(fd);
    let _ = sys::lseek(fd, pos as i64, libc::SEEK_SET);
    let _ = d.inode.trim(fd);
    flex_log!(LogLevel::Debug, "demote fd={fd} pos={pos}");
}

/// Before fork: descriptions become shared with another process whose memory we cannot
/// see, so the kernel takes them over in both.
pub fn before_fork() {
    let Some(e) = engine_if_started() else { return };
    e.stats.served(Call::fork);
    for (fd, d) in e.table.entries() {
        demote(fd, &d);
    }
}

/// In a forked child: its statistics start from zero (the parent reports its own).
pub fn after_fork_child() {
    if let Some(e) = engine_if_started() {
        e.stats.reset();
        e.pid.store(
            rustix::process::getpid().as_raw_nonzero().get() as u32,
            Relaxed,
        );
        e.after_fork_child();
    }
}

/// `_exit`: the exit hook, unless this is a vfork child (it shares the parent's memory:
/// trimming and "exiting" would be the parent's).
pub fn before_underscore_exit() {
    let Some(e) = engine_if_started() else { return };
    if e.pid.load(Relaxed) == rustix::process::getpid().as_raw_nonzero().get() as u32 {
        at_exit();
    }
}

/// Before exec (and spawn): every descriptor that survives exec goes back to the kernel;
/// statistics of this image are written.
pub fn before_exec(all: bool) {
    let Some(e) = engine_if_started() else { return };
    e.stats.served(if all { Call::spawn } else { Call::exec });
    for (fd, d) in e.table.entries() {
        let cloexec = sys::fcntl_int(fd, libc::F_GETFD, 0)
            .map(|f| f & libc::FD_CLOEXEC != 0)
            .unwrap_or(true);
        if all || !cloexec {
            demote(fd, &d);
        } else {
            let _ = d.inode.trim(fd);
        }
    }
    if !all {
        write_stats(e);
    }
}

/// A call the kernel resolves against the descriptor's file offset (record and OFD locks
/// with SEEK_CUR, lockf): put flex's offset there first. A coherent or demoted description
/// keeps its offset in the kernel already.
/// fcntl record and OFD locks (and F_GETLK): the kernel resolves `l_whence = SEEK_CUR`
/// against the descriptor's own offset, so only such a lock needs flex's offset there
/// (SQLite's, all SEEK_SET, cost an lseek each before).
///
/// # Safety
/// `lock` comes from the application: valid, or faulting (then the kernel answers EFAULT
/// and nothing is resolved).
pub unsafe fn offset_to_kernel_for_lock(fd: Fd, lock: *const libc::flock) {
    let mut whence: libc::c_short = 0;
    // Plain address arithmetic: the program's pointer is never dereferenced by Rust.
    let field = lock
        .cast::<u8>()
        .wrapping_add(core::mem::offset_of!(libc::flock, l_whence));
    // SAFETY: a guarded copy of the struct's l_whence field into our own short.
    let rem = unsafe {
        fault::copy(
            (&raw mut whence).cast(),
            field,
            core::mem::size_of::<libc::c_short>(),
        )
    };
    if rem == 0 && whence as i32 == libc::SEEK_CUR {
        offset_to_kernel(fd);
    }
}

pub fn offset_to_kernel(fd: Fd) {
    let Some(d) = desc(fd) else { return };
    if d.is_demoted() || d.is_coherent() {
        return;
    }
    let pos = *d.pos_at(fd);
    let _ = sys::lseek(fd, pos as i64, libc::SEEK_SET);
}

/// fcntl F_GETFL: the kernel's flags, but O_ASYNC only if the program set it (a write
/// lease flex takes sets it on the description).
pub fn fcntl_getfl(fd: Fd) -> Option<Res<i32>> {
    let d = desc(fd)?;
    Some(
        sys::fcntl_int(fd, libc::F_GETFL, 0)
            .map(|k| (k & !libc::O_ASYNC) | (d.flags.load(Relaxed) & libc::O_ASYNC)),
    )
}

/// fcntl F_SETFL: the kernel descriptor takes the flags as they are (O_APPEND included),
/// flex keeps its copy of the status flags in step.
pub fn fcntl_setfl(fd: Fd, arg: i32) -> Option<Res<i32>> {
    let d = desc(fd)?;
    if let Some(a) = d.inode.atomic.get() {
        if arg & libc::O_APPEND != 0 {
            a.own_description(&d.inode);
        }
    }
    const CHANGEABLE: i32 =
        libc::O_APPEND | libc::O_NONBLOCK | libc::O_ASYNC | libc::O_DIRECT | libc::O_NOATIME;
    // Under the size lock: an append in progress finishes with the mode it started with,
    // and flex's own exact-offset writes (which lift O_APPEND for a moment) are not mixed
    // with the application's change.
    let r = d.inode.with_size_lock(|| {
        sys::fcntl_int(fd, libc::F_SETFL, arg as libc::c_long)?;
        let keep = d.flags.load(Relaxed) & !CHANGEABLE;
        d.flags.store(keep | (arg & CHANGEABLE), Relaxed);
        Ok(0)
    });
    engine().stats.served(Call::fcntl);
    Some(r)
}

/// After a successful fstat/stat/statx: report the logical size of over-allocated files.
pub fn fix_stat(dev: u64, ino: u64, size: &mut i64) {
    let Some(e) = engine_if_started() else { return };
    if e.trailer_files.load(Relaxed) <= 0 && e.atomic_files.load(Relaxed) <= 0 {
        return;
    }
    if let Some(i) = e.lookup(dev, ino) {
        if let Some(a) = i.atomic.get() {
            // Atomic mode: this process's view, its uncommitted operations included.
            *size = a.size() as i64;
            e.stats.served(Call::stat);
            return;
        }
        let settled = i.settled_size(*size as u64) as i64;
        if settled != *size {
            *size = settled;
            e.stats.served(Call::stat);
        }
    }
}

/// fstat on a managed descriptor: the kernel's answer with the logical size. Also keeps
/// the cached size of exact files in step with the kernel.
pub fn fstat_fix(fd: Fd, dev: u64, ino: u64, size: &mut i64) {
    let Some(d) = desc(fd) else { return };
    if d.is_demoted() || d.inode.dev != dev || d.inode.ino != ino {
        return;
    }
    engine().stats.served(Call::fstat);
    if let Some(a) = d.inode.atomic.get() {
        *size = a.size() as i64;
        return;
    }
    if d.inode.in_trailer_mode() {
        *size = d.inode.lsize() as i64;
    } else {
        // Not the size just read: a writer of this process may have extended (or, on DAX,
        // over-allocated) the file since; report the size adopted under the size lock.
        if let Ok(l) = d.inode.adopt_seen_size(fd, *size as u64) {
            *size = l as i64;
        }
    }
}

/// The application maps a managed file, or hands it to the kernel (sendfile,
/// copy_file_range, splice): the kernel must see the exact size and, for calls that use the
/// file offset, our offset. Returns a closure to run after the call.
pub fn kernel_handoff(fd: Fd, uses_offset: bool, call: Call) -> Option<impl FnOnce()> {
    let d = desc(fd)?;
    if d.is_demoted() {
        return None;
    }
    let e = engine();
    e.stats.served(call);
    let forever = call == Call::mmap;
    if forever {
        if let Some(a) = d.inode.atomic.get() {
            // The program's own mapping must see its later writes: in place from now on.
            a.go_shared(&d.inode);
        }
    }
    crate::atomic::commit_for_kernel(&d.inode);
    let _ = d.inode.make_exact(fd, forever);
    // A coherent description keeps its offset in the kernel already.
    let uses_offset = uses_offset && !d.is_coherent();
    if uses_offset {
        let pos = *d.pos_at(fd);
        let _ = sys::lseek(fd, pos as i64, libc::SEEK_SET);
    }
    Some(move || {
        if uses_offset {
            if let Ok(k) = sys::lseek(fd, 0, libc::SEEK_CUR) {
                *d.pos() = k;
            }
        }
        let _ = refresh_from_kernel(&d, fd);
    })
}

/// unlink/rename: the identity of `path` is about to go; returns (dev, ino) to forget after.
pub fn path_identity(dirfd: Fd, path: &CStr) -> Option<(u64, u64)> {
    let e = engine_if_started()?;
    if e.config.paths.is_empty() && e.table.is_empty() {
        return None;
    }
    let st = sys::fstatat(dirfd, path, libc::AT_SYMLINK_NOFOLLOW).ok()?;
    e.lookup(st.st_dev, st.st_ino)
        .map(|_| (st.st_dev, st.st_ino))
}

pub fn forget(id: Option<(u64, u64)>, call: Call) {
    if let (Some((dev, ino)), Some(e)) = (id, engine_if_started()) {
        e.stats.served(call);
        e.forget(dev, ino);
    }
}

pub fn chdir_happened() {
    if let Some(e) = engine_if_started() {
        e.chdir_happened();
    }
}

/// Count a call passed to the kernel (for the statistics of managed descriptors).
pub fn count_passthrough(call: Call) {
    if let Some(e) = engine_if_started() {
        e.stats.passed(call);
    }
}

/// At exit: make every managed file's kernel size exact, then write the statistics.
pub fn at_exit() {
    let Some(e) = engine_if_started() else { return };
    e.exiting.store(true, Relaxed);
    for (fd, d) in e.table.entries() {
        if !d.is_demoted() {
            // Exit closes every descriptor: a commit point for atomic files.
            let _ = crate::atomic::detach(&d.inode);
            let _ = d.inode.trim(fd);
        }
    }
    write_stats(e);
}

fn write_stats(e: &Engine) {
    let Some(path) = e.config.stats.as_ref() else {
        return;
    };
    let mut line = e.stats.to_json();
    line.push('\n');
    let Ok(p) = std::ffi::CString::new(path.clone()) else {
        return;
    };
    if let Ok(fd) = sys::openat(
        libc::AT_FDCWD,
        &p,
        libc::O_WRONLY | libc::O_CREAT | libc::O_APPEND | libc::O_CLOEXEC,
        0o644,
    ) {
        // One write of one line with O_APPEND: lines of concurrent processes never mix.
        // SAFETY: `line` is our own string.
        let _ = unsafe { sys::write(fd, line.as_ptr(), line.len()) };
        let _ = sys::close(fd);
    }
}

/// Fail a call on a managed descriptor with `errno` (argument checks the kernel makes
/// before anything else); `None` for descriptors flex does not manage.
pub fn reject(fd: Fd, errno: i32) -> Option<Res<usize>> {
    desc(fd).map(|_| Err(Errno::from_raw_os_error(errno)))
}

/// Does the table know `fd` (managed, or handed back to the kernel)?
pub fn desc_exists(fd: Fd) -> bool {
    desc(fd).is_some()
}

/// Is `fd` managed (for the shim's stdio and for tests)?
pub fn is_managed(fd: Fd) -> bool {
    desc(fd).is_some_and(|d| !d.is_demoted())
}

/// Granularity of a managed descriptor's mapping (None until mapped).
pub fn granularity(fd: Fd) -> Option<crate::persist::Granularity> {
    desc(fd)?.inode.granularity()
}

/// Map a managed descriptor now (used by the Rust API, which always wants the mapping).
pub fn map_now(fd: Fd) -> Res<()> {
    let d = desc(fd).ok_or(Errno::BADF)?;
    d.inode.map_for(fd, d.writable())
}
