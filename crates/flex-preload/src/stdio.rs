//! stdio on managed files. glibc's stdio calls its internal read/write, never ours, so a
//! stream on a managed file is built with `fopencookie` over the engine; `fileno` keeps
//! working through our own FILE -> fd table. Streams on other files are libc's.

use crate::{guarded, real};
use flex_engine::posix::{Pass, Route};
use libc::{c_char, c_int, c_void, size_t, ssize_t, FILE};
use rustc_hash::FxHashMap;
use std::ffi::CStr;
use std::mem::MaybeUninit;
use std::sync::Mutex;

#[repr(C)]
struct CookieIo {
    read: Option<unsafe extern "C" fn(*mut c_void, *mut c_char, size_t) -> ssize_t>,
    write: Option<unsafe extern "C" fn(*mut c_void, *const c_char, size_t) -> ssize_t>,
    seek: Option<unsafe extern "C" fn(*mut c_void, *mut i64, c_int) -> c_int>,
    close: Option<unsafe extern "C" fn(*mut c_void) -> c_int>,
}

extern "C" {
    fn fopencookie(cookie: *mut c_void, mode: *const c_char, io: CookieIo) -> *mut FILE;
}

/// Streams we created, FILE address -> descriptor (for fileno). Fx: no random hash keys
/// (a getrandom in every program that closes a stream).
static STREAMS: Mutex<Option<FxHashMap<usize, c_int>>> = Mutex::new(None);

fn streams<R>(f: impl FnOnce(&mut FxHashMap<usize, c_int>) -> R) -> R {
    let mut g = STREAMS.lock().unwrap_or_else(|p| p.into_inner());
    f(g.get_or_insert_with(FxHashMap::default))
}

fn stream_fd(f: *mut FILE) -> Option<c_int> {
    let g = STREAMS.lock().unwrap_or_else(|p| p.into_inner());
    g.as_ref()?.get(&(f as usize)).copied()
}

unsafe extern "C" fn c_read(c: *mut c_void, buf: *mut c_char, n: size_t) -> ssize_t {
    // SAFETY: the cookie is the descriptor we stored; glibc passes its own buffer.
    unsafe { crate::io::read(c as usize as c_int, buf.cast(), n) }
}

unsafe extern "C" fn c_write(c: *mut c_void, buf: *const c_char, n: size_t) -> ssize_t {
    // SAFETY: as above.
    let r = unsafe { crate::io::write(c as usize as c_int, buf.cast(), n) };
    // A cookie write reports an error as 0 (errno set), never a negative count.
    r.max(0)
}

unsafe extern "C" fn c_seek(c: *mut c_void, off: *mut i64, whence: c_int) -> c_int {
    // SAFETY: glibc passes a valid pointer to the requested offset.
    let r = unsafe { crate::io::lseek(c as usize as c_int, *off, whence) };
    if r < 0 {
        return -1;
    }
    // SAFETY: as above.
    unsafe { *off = r };
    0
}

unsafe extern "C" fn c_close(c: *mut c_void) -> c_int {
    // SAFETY: the descriptor belongs to this stream, which is closing.
    unsafe { crate::io::close(c as usize as c_int) }
}

/// fopen mode -> open flags, as glibc parses it (first letter, then modifiers).
fn mode_flags(mode: &[u8]) -> Option<(c_int, bool)> {
    let (mut acc, mut extra, append_only) = match mode.first()? {
        b'r' => (libc::O_RDONLY, 0, false),
        b'w' => (libc::O_WRONLY, libc::O_CREAT | libc::O_TRUNC, false),
        b'a' => (libc::O_WRONLY, libc::O_CREAT | libc::O_APPEND, true),
        _ => return None,
    };
    let mut plus = false;
    for &c in &mode[1..] {
        match c {
            b'+' => {
                acc = libc::O_RDWR;
                plus = true;
            }
            b'x' => extra |= libc::O_EXCL,
            b'e' => extra |= libc::O_CLOEXEC,
            b',' => break,
            _ => {}
        }
    }
    Some((acc | extra, append_only && !plus))
}

/// The mode string fopencookie understands (it ignores x/e/m; keep r/w/a and +).
fn cookie_mode(mode: &[u8]) -> &'static CStr {
    let plus = mode.iter().take_while(|&&c| c != b',').any(|&c| c == b'+');
    match (mode.first(), plus) {
        (Some(b'r'), false) => c"r",
        (Some(b'r'), true) => c"r+",
        (Some(b'w'), false) => c"w",
        (Some(b'w'), true) => c"w+",
        (Some(b'a'), false) => c"a",
        _ => c"a+",
    }
}

/// A cookie stream over a managed descriptor.
fn cookie_stream(fd: c_int, mode: &[u8]) -> *mut FILE {
    let io = CookieIo {
        read: Some(c_read),
        write: Some(c_write),
        seek: Some(c_seek),
        close: Some(c_close),
    };
    // SAFETY: the cookie is the descriptor number (no allocation to leak); the functions
    // have the signatures fopencookie expects.
    let f = unsafe { fopencookie(fd as usize as *mut c_void, cookie_mode(mode).as_ptr(), io) };
    if !f.is_null() {
        streams(|m| m.insert(f as usize, fd));
    }
    f
}

type FopenFn = unsafe extern "C" fn(*const c_char, *const c_char) -> *mut FILE;

/// The longest fopen/fdopen mode string flex parses; a longer one (or an unreadable one)
/// is libc's to judge.
const MODE_MAX: usize = 256;

fn open_stream(path: *const c_char, mode: *const c_char, real_fopen: Option<FopenFn>) -> *mut FILE {
    let fallback = || match real_fopen {
        // SAFETY: libc's fopen with the application's arguments.
        Some(f) => unsafe { f(path, mode) },
        None => core::ptr::null_mut(),
    };
    if path.is_null() || mode.is_null() {
        return fallback();
    }
    // Both strings are copied fault-safely; one that cannot be read goes to libc as given
    // (a bad path: its open answers EFAULT; a bad mode: it faults, as without flex).
    let mut mbuf = [MaybeUninit::uninit(); MODE_MAX];
    let mut m: &[u8] = &[];
    let mut append_only = false;
    let r = guarded(|| {
        // An unreadable mode, or one flex does not parse: libc's to judge.
        let Some((mb, (flags, ao))) = crate::user_str(mode, &mut mbuf)
            .map(|s| s.to_bytes())
            .and_then(|mb| Some((mb, mode_flags(mb)?)))
        else {
            return Route::Pass(Pass::BadArgument);
        };
        (m, append_only) = (mb, ao);
        crate::on_path(path, |p| {
            flex_engine::posix::open(libc::AT_FDCWD, p, flags, 0o666)
        })
    });
    let Route::Served(r) = r else {
        return fallback();
    };
    let fd = match r {
        Ok(fd) => fd,
        Err(e) => {
            crate::set_errno(e.raw_os_error());
            return core::ptr::null_mut();
        }
    };
    crate::hook(|| flex_engine::posix::take_over_for_stream(fd));
    if !flex_engine::posix::is_managed(fd) {
        // Not a regular file after all: a libc stream on the kernel descriptor.
        return match real!("fdopen": unsafe extern "C" fn(c_int, *const c_char) -> *mut FILE) {
            // SAFETY: libc's fdopen with a descriptor we just opened.
            Some(f) => unsafe { f(fd, mode) },
            None => core::ptr::null_mut(),
        };
    }
    if append_only {
        // glibc positions an "a" stream at the end, so ftell reports the size.
        // SAFETY: our own descriptor.
        unsafe { crate::io::lseek(fd, 0, libc::SEEK_END) };
    }
    let f = cookie_stream(fd, m);
    if f.is_null() {
        let e = crate::errno();
        // SAFETY: our own descriptor, not handed out.
        unsafe { crate::io::close(fd) };
        crate::set_errno(e);
    }
    f
}

#[no_mangle]
pub unsafe extern "C" fn fopen(path: *const c_char, mode: *const c_char) -> *mut FILE {
    open_stream(path, mode, real!("fopen": FopenFn))
}

#[no_mangle]
pub unsafe extern "C" fn fopen64(path: *const c_char, mode: *const c_char) -> *mut FILE {
    open_stream(path, mode, real!("fopen64": FopenFn))
}

#[no_mangle]
pub unsafe extern "C" fn fdopen(fd: c_int, mode: *const c_char) -> *mut FILE {
    if !mode.is_null() {
        crate::hook(|| flex_engine::posix::take_over_for_stream(fd));
    }
    if !mode.is_null() && flex_engine::posix::is_managed(fd) {
        // An unreadable mode goes to libc as given (it faults there, as without flex).
        let mut mbuf = [MaybeUninit::uninit(); MODE_MAX];
        let mut m: Option<&[u8]> = None;
        crate::hook(|| m = crate::user_str(mode, &mut mbuf).map(|s| s.to_bytes()));
        if let Some((m, (flags, _))) = m.and_then(|m| Some((m, mode_flags(m)?))) {
            if !fdopen_check(fd, m, flags) {
                return core::ptr::null_mut();
            }
            return cookie_stream(fd, m);
        }
    }
    match real!("fdopen": unsafe extern "C" fn(c_int, *const c_char) -> *mut FILE) {
        // SAFETY: libc's fdopen with the application's arguments.
        Some(f) => unsafe { f(fd, mode) },
        None => core::ptr::null_mut(),
    }
}

/// glibc's fdopen checks before it builds a stream: the descriptor's access mode must
/// allow the mode's (EINVAL), and an "a" mode sets O_APPEND on the description. False
/// with errno set when the stream must not be made.
fn fdopen_check(fd: c_int, m: &[u8], flags: c_int) -> bool {
    // SAFETY: fcntl with integer arguments (ours: the engine answers for its descriptor).
    let fl = unsafe { crate::io::fcntl(fd, libc::F_GETFL, 0) };
    if fl < 0 {
        return false;
    }
    let (have, want) = (fl & libc::O_ACCMODE, flags & libc::O_ACCMODE);
    if (have == libc::O_RDONLY && want != libc::O_RDONLY)
        || (have == libc::O_WRONLY && want != libc::O_WRONLY)
    {
        crate::set_errno(libc::EINVAL);
        return false;
    }
    if m.first() == Some(&b'a') && fl & libc::O_APPEND == 0 {
        // SAFETY: as above.
        let r =
            unsafe { crate::io::fcntl(fd, libc::F_SETFL, (fl | libc::O_APPEND) as libc::c_long) };
        if r < 0 {
            return false;
        }
    }
    true
}

/// freopen: a stream of ours stops being ours (libc reopens it on a kernel descriptor).
macro_rules! freopen_call {
    ($($name:ident),*) => {$(
        #[no_mangle]
        pub unsafe extern "C" fn $name(path: *const c_char, mode: *const c_char, f: *mut FILE) -> *mut FILE {
            streams(|m| m.remove(&(f as usize)));
            match real!(@ident $name: unsafe extern "C" fn(*const c_char, *const c_char, *mut FILE) -> *mut FILE) {
                // SAFETY: libc's freopen with the application's arguments.
                Some(r) => unsafe { r(path, mode, f) },
                None => core::ptr::null_mut(),
            }
        }
    )*};
}

freopen_call!(freopen, freopen64);

#[no_mangle]
pub unsafe extern "C" fn fclose(f: *mut FILE) -> c_int {
    streams(|m| m.remove(&(f as usize)));
    match real!("fclose": unsafe extern "C" fn(*mut FILE) -> c_int) {
        // SAFETY: libc's fclose; for our streams it calls c_close.
        Some(r) => unsafe { r(f) },
        None => libc::EOF,
    }
}

/// fileno and fileno_unlocked: cookie streams have no descriptor in libc's eyes.
macro_rules! fileno_call {
    ($($name:ident),*) => {$(
        #[no_mangle]
        pub unsafe extern "C" fn $name(f: *mut FILE) -> c_int {
            if let Some(fd) = stream_fd(f) {
                return fd;
            }
            match real!(@ident $name: unsafe extern "C" fn(*mut FILE) -> c_int) {
                // SAFETY: libc's fileno with the application's stream.
                Some(r) => unsafe { r(f) },
                None => -1,
            }
        }
    )*};
}

fileno_call!(fileno, fileno_unlocked);

/// At exit, before statistics: flush our streams so their data reaches the engine while
/// it still serves them (glibc flushes streams only after library destructors ran).
pub fn flush_all() {
    if streams(|m| m.is_empty()) {
        return;
    }
    if let Some(f) = real!("fflush": unsafe extern "C" fn(*mut FILE) -> c_int) {
        // SAFETY: fflush(NULL) flushes every stream.
        unsafe { f(core::ptr::null_mut()) };
    }
}
