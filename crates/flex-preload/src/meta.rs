//! Metadata calls: the stat family (logical sizes of over-allocated files), unlink and
//! rename (a cached mapping must not outlive its file's identity), chdir (relative paths),
//! and sigaction for SIGSEGV/SIGBUS (our fault handler stays installed, the application's
//! runs for faults that are not ours).

use crate::{guarded, hook, raw, real};
use flex_engine::posix::{self, Route};
use flex_engine::stats::Call;
use libc::{c_char, c_int, c_uint, sighandler_t};

fn fix(st: *mut libc::stat) {
    if st.is_null() {
        return;
    }
    // SAFETY: the kernel just filled `st` successfully, so it is valid and writable.
    let st = unsafe { &mut *st };
    let mut size = st.st_size;
    hook(|| posix::fix_stat(st.st_dev, st.st_ino, &mut size));
    st.st_size = size;
}

fn fix_fd(fd: c_int, st: *mut libc::stat) {
    if st.is_null() {
        return;
    }
    // SAFETY: the kernel just filled `st` successfully.
    let st = unsafe { &mut *st };
    let mut size = st.st_size;
    hook(|| posix::fstat_fix(fd, st.st_dev, st.st_ino, &mut size));
    st.st_size = size;
}

/// One exported stat-like call: the kernel answers, flex corrects the size.
macro_rules! stat_call {
    ($( fn $name:ident($($a:ident: $t:ty),*) => $sys:expr, fix: $fix:expr; )*) => {$(
        #[no_mangle]
        pub unsafe extern "C" fn $name($($a: $t),*) -> c_int {
            let r = $sys as c_int;
            if r == 0 {
                $fix;
            }
            r
        }
    )*};
}

stat_call! {
    fn stat(p: *const c_char, st: *mut libc::stat) => raw!(libc::SYS_newfstatat, libc::AT_FDCWD, p, st, 0), fix: fix(st);
    fn stat64(p: *const c_char, st: *mut libc::stat) => raw!(libc::SYS_newfstatat, libc::AT_FDCWD, p, st, 0), fix: fix(st);
    fn lstat(p: *const c_char, st: *mut libc::stat) => raw!(libc::SYS_newfstatat, libc::AT_FDCWD, p, st, libc::AT_SYMLINK_NOFOLLOW), fix: fix(st);
    fn lstat64(p: *const c_char, st: *mut libc::stat) => raw!(libc::SYS_newfstatat, libc::AT_FDCWD, p, st, libc::AT_SYMLINK_NOFOLLOW), fix: fix(st);
    fn fstat(fd: c_int, st: *mut libc::stat) => raw!(libc::SYS_fstat, fd, st), fix: fix_fd(fd, st);
    fn fstat64(fd: c_int, st: *mut libc::stat) => raw!(libc::SYS_fstat, fd, st), fix: fix_fd(fd, st);
    fn fstatat(d: c_int, p: *const c_char, st: *mut libc::stat, fl: c_int) => raw!(libc::SYS_newfstatat, d, p, st, fl), fix: at_fix(d, p, st, fl);
    fn fstatat64(d: c_int, p: *const c_char, st: *mut libc::stat, fl: c_int) => raw!(libc::SYS_newfstatat, d, p, st, fl), fix: at_fix(d, p, st, fl);
}

/// fstatat with AT_EMPTY_PATH on a descriptor is an fstat.
fn at_fix(dirfd: c_int, p: *const c_char, st: *mut libc::stat, flags: c_int) {
    if empty_path(p, flags) {
        fix_fd(dirfd, st)
    } else {
        fix(st)
    }
}

/// AT_EMPTY_PATH with a NULL or empty path: the call is about `dirfd` itself. The first
/// byte is read fault-safely (the kernel succeeded, but another thread may have unmapped
/// the string since); unreadable counts as not empty.
fn empty_path(p: *const c_char, flags: c_int) -> bool {
    if flags & libc::AT_EMPTY_PATH == 0 {
        return false;
    }
    if p.is_null() {
        return true;
    }
    let mut first = [std::mem::MaybeUninit::uninit(); 1];
    let mut empty = false;
    hook(|| empty = crate::user_str(p, &mut first).is_some());
    empty
}

#[no_mangle]
pub unsafe extern "C" fn statx(
    dirfd: c_int,
    p: *const c_char,
    flags: c_int,
    mask: c_uint,
    stx: *mut libc::statx,
) -> c_int {
    let r = raw!(libc::SYS_statx, dirfd, p, flags, mask, stx) as c_int;
    if r == 0 && !stx.is_null() {
        // SAFETY: the kernel just filled `stx` successfully.
        let s = unsafe { &mut *stx };
        let dev = libc::makedev(s.stx_dev_major, s.stx_dev_minor);
        let mut size = s.stx_size as i64;
        if s.stx_mask & libc::STATX_SIZE == 0 {
            // No size asked for nor given: nothing to fix or learn.
        } else if empty_path(p, flags) {
            hook(|| posix::fstat_fix(dirfd, dev, s.stx_ino, &mut size));
        } else {
            hook(|| posix::fix_stat(dev, s.stx_ino, &mut size));
        }
        s.stx_size = size as u64;
    }
    r
}

/// Run a kernel call that removes or replaces the name `path` refers to, then drop the
/// cached mapping of the file it named.
fn identity_call(
    dirfd: c_int,
    path: *const c_char,
    call: Call,
    f: impl FnOnce() -> c_int,
) -> c_int {
    let mut id = None;
    if !path.is_null() && flex_engine::runtime::engine_if_started().is_some() {
        let _ = guarded(|| {
            // An unreadable path: the kernel answers EFAULT, no name goes away.
            id = crate::with_path(path, |p| posix::path_identity(dirfd, p)).flatten();
            Route::Served(Ok(()))
        });
    }
    let r = f();
    if r == 0 && id.is_some() {
        let e = crate::errno();
        hook(|| posix::forget(id, call));
        crate::set_errno(e);
    }
    r
}

#[no_mangle]
pub unsafe extern "C" fn unlink(p: *const c_char) -> c_int {
    identity_call(libc::AT_FDCWD, p, Call::unlink, || {
        raw!(libc::SYS_unlinkat, libc::AT_FDCWD, p, 0) as c_int
    })
}

#[no_mangle]
pub unsafe extern "C" fn unlinkat(d: c_int, p: *const c_char, fl: c_int) -> c_int {
    identity_call(d, p, Call::unlink, || {
        raw!(libc::SYS_unlinkat, d, p, fl) as c_int
    })
}

#[no_mangle]
pub unsafe extern "C" fn remove(p: *const c_char) -> c_int {
    identity_call(libc::AT_FDCWD, p, Call::unlink, || {
        let r = raw!(libc::SYS_unlinkat, libc::AT_FDCWD, p, 0) as c_int;
        if r < 0 && crate::errno() == libc::EISDIR {
            return raw!(libc::SYS_unlinkat, libc::AT_FDCWD, p, libc::AT_REMOVEDIR) as c_int;
        }
        r
    })
}

#[no_mangle]
pub unsafe extern "C" fn rename(old: *const c_char, new: *const c_char) -> c_int {
    identity_call(libc::AT_FDCWD, new, Call::rename, || {
        raw!(
            libc::SYS_renameat2,
            libc::AT_FDCWD,
            old,
            libc::AT_FDCWD,
            new,
            0
        ) as c_int
    })
}

#[no_mangle]
pub unsafe extern "C" fn renameat(
    od: c_int,
    old: *const c_char,
    nd: c_int,
    new: *const c_char,
) -> c_int {
    identity_call(nd, new, Call::rename, || {
        raw!(libc::SYS_renameat2, od, old, nd, new, 0) as c_int
    })
}

#[no_mangle]
pub unsafe extern "C" fn renameat2(
    od: c_int,
    old: *const c_char,
    nd: c_int,
    new: *const c_char,
    fl: c_uint,
) -> c_int {
    identity_call(nd, new, Call::rename, || {
        raw!(libc::SYS_renameat2, od, old, nd, new, fl) as c_int
    })
}

#[no_mangle]
pub unsafe extern "C" fn truncate(p: *const c_char, len: libc::off_t) -> c_int {
    if !p.is_null() && flex_engine::runtime::engine_if_started().is_some() {
        let path = p;
        let _gate = flex_engine::snapshot::enter(|| flex_engine::snapshot::Op::TruncatePath {
            path,
            len: len.max(0) as u64,
        });
        // An unreadable path goes to the kernel as given (EFAULT, ENAMETOOLONG).
        if let Route::Served(r) = guarded(|| crate::on_path(p, |p| posix::truncate(p, len))) {
            return crate::CRet::c(r);
        }
        return raw!(libc::SYS_truncate, p, len) as c_int;
    }
    raw!(libc::SYS_truncate, p, len) as c_int
}

#[no_mangle]
pub unsafe extern "C" fn truncate64(p: *const c_char, len: libc::off_t) -> c_int {
    // SAFETY: same contract.
    unsafe { truncate(p, len) }
}

#[no_mangle]
pub unsafe extern "C" fn chdir(p: *const c_char) -> c_int {
    let r = raw!(libc::SYS_chdir, p) as c_int;
    if r == 0 {
        hook(posix::chdir_happened);
    }
    r
}

#[no_mangle]
pub unsafe extern "C" fn fchdir(fd: c_int) -> c_int {
    let r = raw!(libc::SYS_fchdir, fd) as c_int;
    if r == 0 {
        hook(posix::chdir_happened);
    }
    r
}

/// sigaction: SIGSEGV and SIGBUS are recorded as the application's (our handler forwards
/// faults that are not ours); every other signal goes to libc.
#[no_mangle]
pub unsafe extern "C" fn sigaction(
    sig: c_int,
    act: *const libc::sigaction,
    old: *mut libc::sigaction,
) -> c_int {
    // SAFETY: same contract as sigaction; app_sigaction passes other signals to libc.
    unsafe { flex_engine::fault::app_sigaction(sig, act, old) }
}

/// signal, bsd_signal, sysv_signal, sigset: libc implements them with its internal
/// sigaction, so they are interposed here too.
macro_rules! signal_call {
    ($($name:ident),*) => {$(
        #[no_mangle]
        pub unsafe extern "C" fn $name(sig: c_int, h: sighandler_t) -> sighandler_t {
            if sig == libc::SIGSEGV || sig == libc::SIGBUS {
                // SAFETY: same contract as signal.
                return unsafe { flex_engine::fault::app_signal(sig, h) };
            }
            match real!(@ident $name: unsafe extern "C" fn(c_int, sighandler_t) -> sighandler_t) {
                // SAFETY: libc's implementation with the application's arguments.
                Some(f) => unsafe { f(sig, h) },
                None => libc::SIG_ERR,
            }
        }
    )*};
}

signal_call!(signal, bsd_signal, sysv_signal, sigset);
