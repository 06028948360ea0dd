//! Descriptor calls: open, close, the read/write family, seeking, syncing, sizing, dup.

use crate::{guarded, hook, raw, real, CRet};
use flex_engine::posix::{self, Route};
use libc::{c_char, c_int, c_long, c_uint, c_void, iovec, mode_t, off_t, size_t, ssize_t};

/// Does flex manage any descriptor at all? (One atomic load: the passthrough fast path.)
#[inline]
fn any() -> bool {
    flex_engine::runtime::engine_if_started().is_some_and(|e| !e.table.is_empty())
}

/// One exported descriptor call: ask the engine when anything is managed, else (or when
/// the engine passes the call) make the raw system call.
macro_rules! fd_call {
    ($( $(#[$m:meta])* fn $name:ident($fd:ident: c_int $(, $a:ident: $t:ty)*) -> $r:ty { $(gate: $op:expr,)? engine: $eng:expr, kernel: $kern:expr } )*) => {$(
        $(#[$m])*
        #[no_mangle]
        pub unsafe extern "C" fn $name($fd: c_int $(, $a: $t)*) -> $r {
            if any() {
                // A call that changes the file passes the snapshot gate, its kernel half
                // included (held until the end of this block).
                $( let _gate = flex_engine::snapshot::enter_fd($fd, || $op); )?
                // SAFETY: the pointers are the application's, passed on unchanged under the
                // contract of the libc function we stand in for; the engine guards every
                // access to them (a bad pointer gives EFAULT, never a crash).
                #[allow(unused_unsafe)]
                if let Route::Served(r) = guarded(|| unsafe { $eng }) {
                    return r.c() as $r;
                }
                return $kern as $r;
            }
            $kern as $r
        }
    )*};
}

fd_call! {
    fn read(fd: c_int, buf: *mut c_void, n: size_t) -> ssize_t {
        engine: posix::read(fd, buf.cast(), n),
        kernel: raw!(libc::SYS_read, fd, buf, n)
    }
    fn write(fd: c_int, buf: *const c_void, n: size_t) -> ssize_t {
        gate: flex_engine::snapshot::Op::Write { fd, off: None, len: n as u64 },
        engine: posix::write(fd, buf.cast(), n),
        kernel: raw!(libc::SYS_write, fd, buf, n)
    }
    fn pread(fd: c_int, buf: *mut c_void, n: size_t, off: off_t) -> ssize_t {
        engine: posix::pread(fd, buf.cast(), n, off),
        kernel: raw!(libc::SYS_pread64, fd, buf, n, off)
    }
    fn pread64(fd: c_int, buf: *mut c_void, n: size_t, off: off_t) -> ssize_t {
        engine: posix::pread(fd, buf.cast(), n, off),
        kernel: raw!(libc::SYS_pread64, fd, buf, n, off)
    }
    fn pwrite(fd: c_int, buf: *const c_void, n: size_t, off: off_t) -> ssize_t {
        gate: flex_engine::snapshot::Op::Write { fd, off: Some(off as u64), len: n as u64 },
        engine: posix::pwrite(fd, buf.cast(), n, off),
        kernel: raw!(libc::SYS_pwrite64, fd, buf, n, off)
    }
    fn pwrite64(fd: c_int, buf: *const c_void, n: size_t, off: off_t) -> ssize_t {
        gate: flex_engine::snapshot::Op::Write { fd, off: Some(off as u64), len: n as u64 },
        engine: posix::pwrite(fd, buf.cast(), n, off),
        kernel: raw!(libc::SYS_pwrite64, fd, buf, n, off)
    }
    fn readv(fd: c_int, iov: *const iovec, cnt: c_int) -> ssize_t {
        engine: posix::readv(fd, iov, cnt),
        kernel: raw!(libc::SYS_readv, fd, iov, cnt)
    }
    fn writev(fd: c_int, iov: *const iovec, cnt: c_int) -> ssize_t {
        gate: flex_engine::snapshot::Op::Write { fd, off: None, len: posix::iov_len(iov, cnt) },
        engine: posix::writev(fd, iov, cnt),
        kernel: raw!(libc::SYS_writev, fd, iov, cnt)
    }
    fn preadv(fd: c_int, iov: *const iovec, cnt: c_int, off: off_t) -> ssize_t {
        engine: posix::preadv(fd, iov, cnt, off),
        kernel: raw!(libc::SYS_preadv, fd, iov, cnt, off, 0)
    }
    fn preadv64(fd: c_int, iov: *const iovec, cnt: c_int, off: off_t) -> ssize_t {
        engine: posix::preadv(fd, iov, cnt, off),
        kernel: raw!(libc::SYS_preadv, fd, iov, cnt, off, 0)
    }
    fn pwritev(fd: c_int, iov: *const iovec, cnt: c_int, off: off_t) -> ssize_t {
        gate: flex_engine::snapshot::Op::Write { fd, off: Some(off as u64), len: posix::iov_len(iov, cnt) },
        engine: posix::pwritev(fd, iov, cnt, off),
        kernel: raw!(libc::SYS_pwritev, fd, iov, cnt, off, 0)
    }
    fn pwritev64(fd: c_int, iov: *const iovec, cnt: c_int, off: off_t) -> ssize_t {
        gate: flex_engine::snapshot::Op::Write { fd, off: Some(off as u64), len: posix::iov_len(iov, cnt) },
        engine: posix::pwritev(fd, iov, cnt, off),
        kernel: raw!(libc::SYS_pwritev, fd, iov, cnt, off, 0)
    }
    fn preadv2(fd: c_int, iov: *const iovec, cnt: c_int, off: off_t, flags: c_int) -> ssize_t {
        engine: posix::preadv2(fd, iov, cnt, off, flags),
        kernel: raw!(libc::SYS_preadv2, fd, iov, cnt, off, 0, flags)
    }
    fn preadv64v2(fd: c_int, iov: *const iovec, cnt: c_int, off: off_t, flags: c_int) -> ssize_t {
        engine: posix::preadv2(fd, iov, cnt, off, flags),
        kernel: raw!(libc::SYS_preadv2, fd, iov, cnt, off, 0, flags)
    }
    fn pwritev2(fd: c_int, iov: *const iovec, cnt: c_int, off: off_t, flags: c_int) -> ssize_t {
        gate: flex_engine::snapshot::Op::Write { fd, off: (off != -1).then_some(off as u64), len: posix::iov_len(iov, cnt) },
        engine: posix::pwritev2(fd, iov, cnt, off, flags),
        kernel: raw!(libc::SYS_pwritev2, fd, iov, cnt, off, 0, flags)
    }
    fn pwritev64v2(fd: c_int, iov: *const iovec, cnt: c_int, off: off_t, flags: c_int) -> ssize_t {
        gate: flex_engine::snapshot::Op::Write { fd, off: (off != -1).then_some(off as u64), len: posix::iov_len(iov, cnt) },
        engine: posix::pwritev2(fd, iov, cnt, off, flags),
        kernel: raw!(libc::SYS_pwritev2, fd, iov, cnt, off, 0, flags)
    }
    fn lseek(fd: c_int, off: off_t, whence: c_int) -> off_t {
        engine: posix::lseek(fd, off, whence),
        kernel: raw!(libc::SYS_lseek, fd, off, whence)
    }
    fn lseek64(fd: c_int, off: off_t, whence: c_int) -> off_t {
        engine: posix::lseek(fd, off, whence),
        kernel: raw!(libc::SYS_lseek, fd, off, whence)
    }
    fn fsync(fd: c_int) -> c_int {
        engine: posix::fsync(fd, false),
        kernel: raw!(libc::SYS_fsync, fd)
    }
    fn fdatasync(fd: c_int) -> c_int {
        engine: posix::fsync(fd, true),
        kernel: raw!(libc::SYS_fdatasync, fd)
    }
    fn sync_file_range(fd: c_int, off: off_t, n: off_t, flags: c_uint) -> c_int {
        engine: posix::sync_file_range(fd, off, n, flags),
        kernel: raw!(libc::SYS_sync_file_range, fd, off, n, flags)
    }
    fn ftruncate(fd: c_int, len: off_t) -> c_int {
        gate: flex_engine::snapshot::Op::Truncate { fd, len: len.max(0) as u64 },
        engine: posix::ftruncate(fd, len),
        kernel: raw!(libc::SYS_ftruncate, fd, len)
    }
    fn ftruncate64(fd: c_int, len: off_t) -> c_int {
        gate: flex_engine::snapshot::Op::Truncate { fd, len: len.max(0) as u64 },
        engine: posix::ftruncate(fd, len),
        kernel: raw!(libc::SYS_ftruncate, fd, len)
    }
    fn fallocate(fd: c_int, mode: c_int, off: off_t, len: off_t) -> c_int {
        gate: flex_engine::snapshot::Op::Fallocate { fd, mode, off: off.max(0) as u64, len: len.max(0) as u64 },
        engine: posix::fallocate(fd, mode, off, len),
        kernel: raw!(libc::SYS_fallocate, fd, mode, off, len)
    }
    fn fallocate64(fd: c_int, mode: c_int, off: off_t, len: off_t) -> c_int {
        gate: flex_engine::snapshot::Op::Fallocate { fd, mode, off: off.max(0) as u64, len: len.max(0) as u64 },
        engine: posix::fallocate(fd, mode, off, len),
        kernel: raw!(libc::SYS_fallocate, fd, mode, off, len)
    }
    fn close(fd: c_int) -> c_int {
        engine: posix::close(fd),
        kernel: raw!(libc::SYS_close, fd)
    }
}

/// Fortified read (`_FORTIFY_SOURCE`): the same call with a known buffer size.
#[no_mangle]
pub unsafe extern "C" fn __read_chk(
    fd: c_int,
    buf: *mut c_void,
    n: size_t,
    buflen: size_t,
) -> ssize_t {
    if n > buflen {
        if let Some(f) =
            real!("__read_chk": unsafe extern "C" fn(c_int, *mut c_void, size_t, size_t) -> ssize_t)
        {
            // SAFETY: libc's own checker, which reports the overflow and aborts.
            return unsafe { f(fd, buf, n, buflen) };
        }
    }
    // SAFETY: same contract as read.
    unsafe { read(fd, buf, n) }
}

#[no_mangle]
pub unsafe extern "C" fn __pread_chk(
    fd: c_int,
    buf: *mut c_void,
    n: size_t,
    off: off_t,
    buflen: size_t,
) -> ssize_t {
    if n > buflen {
        if let Some(f) = real!("__pread_chk": unsafe extern "C" fn(c_int, *mut c_void, size_t, off_t, size_t) -> ssize_t)
        {
            // SAFETY: libc's own checker, which reports the overflow and aborts.
            return unsafe { f(fd, buf, n, off, buflen) };
        }
    }
    // SAFETY: same contract as pread.
    unsafe { pread(fd, buf, n, off) }
}

#[no_mangle]
pub unsafe extern "C" fn __pread64_chk(
    fd: c_int,
    buf: *mut c_void,
    n: size_t,
    off: off_t,
    buflen: size_t,
) -> ssize_t {
    // SAFETY: same contract.
    unsafe { __pread_chk(fd, buf, n, off, buflen) }
}

/// posix_fallocate returns an error number instead of setting errno (the engine serves it
/// as `Ok(number)`).
#[no_mangle]
pub unsafe extern "C" fn posix_fallocate(fd: c_int, off: off_t, len: off_t) -> c_int {
    if any() {
        let emulate = || real_posix_fallocate(fd, off, len);
        if let Route::Served(Ok(r)) = guarded(|| posix::posix_fallocate(fd, off, len, emulate)) {
            return r;
        }
    }
    real_posix_fallocate(fd, off, len)
}

fn real_posix_fallocate(fd: c_int, off: off_t, len: off_t) -> c_int {
    match real!("posix_fallocate": unsafe extern "C" fn(c_int, off_t, off_t) -> c_int) {
        // SAFETY: libc's implementation with the application's arguments.
        Some(f) => unsafe { f(fd, off, len) },
        None => libc::ENOSYS,
    }
}

#[no_mangle]
pub unsafe extern "C" fn posix_fallocate64(fd: c_int, off: off_t, len: off_t) -> c_int {
    // SAFETY: same contract.
    unsafe { posix_fallocate(fd, off, len) }
}

/// The flags of an open: the mode argument is read only with O_CREAT or O_TMPFILE, as libc does.
/// The path is copied fault-safely for the engine; one that cannot be read (EFAULT,
/// ENAMETOOLONG) goes to the kernel as the program passed it, and the kernel answers.
fn open_engine(dirfd: c_int, path: *const c_char, flags: c_int, mode: mode_t) -> c_int {
    let needs_mode = flags & libc::O_CREAT != 0 || flags & libc::O_TMPFILE == libc::O_TMPFILE;
    let mode = if needs_mode { mode } else { 0 };
    if !path.is_null() {
        flex_engine::snapshot::calls_are_gated();
        let open = |p: &std::ffi::CStr| posix::open(dirfd, p, flags, mode);
        if let Route::Served(r) = guarded(|| crate::on_path(path, open)) {
            return r.c();
        }
    }
    raw!(
        libc::SYS_openat,
        dirfd,
        path,
        flags & !(flex_engine::O_FLEX | flex_engine::config::O_FLEX_ATOMIC),
        mode
    ) as c_int
}

/// One exported open-like call; `mode` is the first variadic argument (x86_64 passes it in
/// a register whether or not the caller supplied it, and it is only read with O_CREAT).
macro_rules! open_call {
    ($( fn $name:ident($($a:ident: $t:ty),*) => ($dirfd:expr, $path:expr, $flags:expr, $mode:expr); )*) => {$(
        #[no_mangle]
        pub unsafe extern "C" fn $name($($a: $t),*) -> c_int {
            open_engine($dirfd, $path, $flags, $mode)
        }
    )*};
}

open_call! {
    fn open(path: *const c_char, flags: c_int, mode: mode_t) => (libc::AT_FDCWD, path, flags, mode);
    fn open64(path: *const c_char, flags: c_int, mode: mode_t) => (libc::AT_FDCWD, path, flags, mode);
    fn openat(dirfd: c_int, path: *const c_char, flags: c_int, mode: mode_t) => (dirfd, path, flags, mode);
    fn openat64(dirfd: c_int, path: *const c_char, flags: c_int, mode: mode_t) => (dirfd, path, flags, mode);
    fn __open_2(path: *const c_char, flags: c_int) => (libc::AT_FDCWD, path, flags, 0);
    fn __open64_2(path: *const c_char, flags: c_int) => (libc::AT_FDCWD, path, flags, 0);
    fn __openat_2(dirfd: c_int, path: *const c_char, flags: c_int) => (dirfd, path, flags, 0);
    fn __openat64_2(dirfd: c_int, path: *const c_char, flags: c_int) => (dirfd, path, flags, 0);
    fn creat(path: *const c_char, mode: mode_t) => (libc::AT_FDCWD, path, libc::O_CREAT | libc::O_WRONLY | libc::O_TRUNC, mode);
    fn creat64(path: *const c_char, mode: mode_t) => (libc::AT_FDCWD, path, libc::O_CREAT | libc::O_WRONLY | libc::O_TRUNC, mode);
}

/// close_range: the engine forgets the managed descriptors in the range, and closes it
/// around flex's own descriptors if any are in it.
#[no_mangle]
pub unsafe extern "C" fn close_range(first: c_uint, last: c_uint, flags: c_int) -> c_int {
    if any() {
        if let Route::Served(r) = guarded(|| posix::close_range(first, last, flags)) {
            return r.c();
        }
    }
    raw!(libc::SYS_close_range, first, last, flags) as c_int
}

#[no_mangle]
pub unsafe extern "C" fn closefrom(first: c_int) {
    // SAFETY: same contract as close_range.
    unsafe { close_range(first.max(0) as c_uint, c_uint::MAX, 0) };
}

#[no_mangle]
pub unsafe extern "C" fn dup(fd: c_int) -> c_int {
    let r = raw!(libc::SYS_dup, fd) as c_int;
    if r >= 0 && any() {
        hook(|| posix::dup_result(fd, r));
    }
    r
}

#[no_mangle]
pub unsafe extern "C" fn dup3(old: c_int, new: c_int, flags: c_int) -> c_int {
    if any() && old != new {
        hook(|| posix::dup2_before(old, new));
    }
    let r = raw!(libc::SYS_dup3, old, new, flags) as c_int;
    if r >= 0 && any() {
        hook(|| posix::dup_result(old, r));
    }
    r
}

#[no_mangle]
pub unsafe extern "C" fn dup2(old: c_int, new: c_int) -> c_int {
    if old == new {
        // dup2(fd, fd) checks fd and returns it.
        return if raw!(libc::SYS_fcntl, old, libc::F_GETFD) < 0 {
            -1
        } else {
            old
        };
    }
    // SAFETY: same contract.
    unsafe { dup3(old, new, 0) }
}

/// fcntl: the variadic third argument is an integer or a pointer; both travel as a long.
#[no_mangle]
pub unsafe extern "C" fn fcntl(fd: c_int, cmd: c_int, arg: c_long) -> c_int {
    if any() {
        // SAFETY: `arg` is the application's; a lock's pointer is read fault-safely.
        if let Route::Served(r) = guarded(|| unsafe { posix::fcntl(fd, cmd, arg) }) {
            return r.c();
        }
    }
    raw!(libc::SYS_fcntl, fd, cmd, arg) as c_int
}

#[no_mangle]
pub unsafe extern "C" fn fcntl64(fd: c_int, cmd: c_int, arg: c_long) -> c_int {
    // SAFETY: same contract.
    unsafe { fcntl(fd, cmd, arg) }
}

/// mmap of a managed file: the kernel size becomes exact (and stays so).
#[no_mangle]
pub unsafe extern "C" fn mmap(
    addr: *mut c_void,
    len: size_t,
    prot: c_int,
    flags: c_int,
    fd: c_int,
    off: off_t,
) -> *mut c_void {
    if fd >= 0 {
        hook(|| flex_engine::snapshot::before_mmap(fd, prot, flags));
    }
    if fd >= 0 && any() {
        hook(|| {
            if let Some(after) = posix::kernel_handoff(fd, false, flex_engine::stats::Call::mmap) {
                after();
            }
        });
    }
    raw!(libc::SYS_mmap, addr, len, prot, flags, fd, off) as *mut c_void
}

#[no_mangle]
pub unsafe extern "C" fn mmap64(
    addr: *mut c_void,
    len: size_t,
    prot: c_int,
    flags: c_int,
    fd: c_int,
    off: off_t,
) -> *mut c_void {
    // SAFETY: same contract.
    unsafe { mmap(addr, len, prot, flags, fd, off) }
}

/// The snapshot gate for a kernel call that writes `n` bytes into `out`: at its position,
/// or (`at_offset`: an offset the program passes by pointer) anywhere from the start, as
/// far as the snapshot is concerned (copying more pages first is only slower).
fn gate_out(out: c_int, at_offset: bool, n: size_t) -> flex_engine::snapshot::Gate {
    flex_engine::snapshot::enter_fd(out, || {
        let (off, len) = if at_offset {
            (Some(0), u64::MAX)
        } else {
            (None, n as u64)
        };
        flex_engine::snapshot::Op::Write { fd: out, off, len }
    })
}

/// Run a kernel data-moving call with both descriptors handed over (exact size, offsets
/// synced when the call uses them), then take the offsets and sizes back.
fn handoff<R>(fds: &[(c_int, bool)], call: flex_engine::stats::Call, f: impl FnOnce() -> R) -> R {
    let mut afters = Vec::new();
    if any() {
        hook(|| {
            for &(fd, uses_offset) in fds {
                if let Some(a) = posix::kernel_handoff(fd, uses_offset, call) {
                    afters.push(a);
                }
            }
        });
    }
    let saved = crate::errno();
    let r = f();
    let e = crate::errno();
    if !afters.is_empty() {
        hook(|| afters.into_iter().for_each(|a| a()));
    }
    let _ = saved;
    crate::set_errno(e);
    r
}

#[no_mangle]
pub unsafe extern "C" fn sendfile(out: c_int, inp: c_int, off: *mut off_t, n: size_t) -> ssize_t {
    let _gate = gate_out(out, false, n);
    handoff(
        &[(out, true), (inp, off.is_null())],
        flex_engine::stats::Call::sendfile,
        || raw!(libc::SYS_sendfile, out, inp, off, n) as ssize_t,
    )
}

#[no_mangle]
pub unsafe extern "C" fn sendfile64(out: c_int, inp: c_int, off: *mut off_t, n: size_t) -> ssize_t {
    // SAFETY: same contract.
    unsafe { sendfile(out, inp, off, n) }
}

#[no_mangle]
pub unsafe extern "C" fn copy_file_range(
    inp: c_int,
    off_in: *mut off_t,
    out: c_int,
    off_out: *mut off_t,
    n: size_t,
    flags: c_uint,
) -> ssize_t {
    let _gate = gate_out(out, !off_out.is_null(), n);
    handoff(
        &[(inp, off_in.is_null()), (out, off_out.is_null())],
        flex_engine::stats::Call::copy_file_range,
        || {
            raw!(
                libc::SYS_copy_file_range,
                inp,
                off_in,
                out,
                off_out,
                n,
                flags
            ) as ssize_t
        },
    )
}

#[no_mangle]
pub unsafe extern "C" fn splice(
    inp: c_int,
    off_in: *mut libc::loff_t,
    out: c_int,
    off_out: *mut libc::loff_t,
    n: size_t,
    flags: c_uint,
) -> ssize_t {
    let _gate = gate_out(out, !off_out.is_null(), n);
    handoff(
        &[(inp, off_in.is_null()), (out, off_out.is_null())],
        flex_engine::stats::Call::splice,
        || raw!(libc::SYS_splice, inp, off_in, out, off_out, n, flags) as ssize_t,
    )
}

/// lockf: glibc implements it with an internal fcntl (not interposed) that locks from the
/// kernel's file offset: put flex's offset there first.
#[no_mangle]
pub unsafe extern "C" fn lockf(fd: c_int, cmd: c_int, len: off_t) -> c_int {
    if any() {
        hook(|| posix::offset_to_kernel(fd));
    }
    match real!("lockf": unsafe extern "C" fn(c_int, c_int, off_t) -> c_int) {
        // SAFETY: libc's lockf, with the caller's arguments.
        Some(f) => unsafe { f(fd, cmd, len) },
        None => {
            crate::set_errno(libc::ENOSYS);
            -1
        }
    }
}

#[no_mangle]
pub unsafe extern "C" fn lockf64(fd: c_int, cmd: c_int, len: off_t) -> c_int {
    // SAFETY: same contract.
    unsafe { lockf(fd, cmd, len) }
}
