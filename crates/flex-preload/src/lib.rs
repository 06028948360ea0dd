//! libflex.so: the C ABI of FLEX. Its only job is to export the intercepted libc calls,
//! copy the program's strings fault-safely, hand the calls to the engine (`flex_engine::posix`)
//! under a re-entrancy guard, turn a served error into -1 + errno, and make every call the
//! engine passes (`Route::Pass`) itself, with raw system calls (or, for calls that are
//! more than a system call, such as fork or fopen, with the next definition in libc). The
//! argument policy (which errno, in which order) is the engine's.
//!
//! Nothing here panics into C: a panic inside the engine becomes -1/EIO.

#[cfg(not(all(target_os = "linux", target_arch = "x86_64")))]
compile_error!("libflex.so targets x86_64 Linux (variadic calls rely on the SysV register ABI)");

use flex_engine::posix::{Pass, Route};
use flex_engine::sys::{Errno, Res};

use std::ffi::{c_char, c_int, CStr};
use std::mem::MaybeUninit;
use std::panic::{catch_unwind, AssertUnwindSafe};

mod dir;
mod io;
mod meta;
mod proc;
mod stdio;
mod times;

extern "C" {
    /// Mark this thread as running engine code: 1, or 0 when it already is (a libc call
    /// made from inside the engine, by std say, must go straight to the kernel instead of
    /// re-entering the engine). csrc/guard.c: an initial-exec thread-local.
    fn flex_guard_enter() -> c_int;
    /// Leave engine code.
    fn flex_guard_leave();
}

/// Run an engine entry point. Re-entered (engine code calling libc): `Pass::Reentered`,
/// the caller makes the call itself. errno is preserved on success, a panic becomes EIO.
#[inline]
pub(crate) fn guarded<T>(f: impl FnOnce() -> Route<T>) -> Route<T> {
    // SAFETY: plain C functions on this thread's own flag.
    if unsafe { flex_guard_enter() } == 0 {
        return Route::Pass(Pass::Reentered);
    }
    let saved = errno();
    let r = catch_unwind(AssertUnwindSafe(f)).unwrap_or(Route::Served(Err(Errno::IO)));
    // SAFETY: as above.
    unsafe { flex_guard_leave() };
    if matches!(r, Route::Served(Ok(_))) {
        set_errno(saved);
    }
    r
}

/// Run engine code that returns nothing to the caller (hooks around kernel calls).
#[inline]
pub(crate) fn hook(f: impl FnOnce()) {
    let _ = guarded(|| {
        f();
        Route::Served(Ok(()))
    });
}

/// The program's NUL-terminated string at `p` (a path, a mode), copied into `buf` with the
/// fault-safe copy (at most `buf.len()` bytes, NUL included). `None` when it cannot be read
/// whole (NULL, unreadable memory, no NUL within the bound): the caller then passes the
/// original pointer to the kernel (or libc), whose answer (EFAULT, ENAMETOOLONG, a crash in
/// libc) is the one the program gets without flex. It may install the fault handler, so
/// call it inside [`guarded`] where the engine may not exist yet.
#[inline]
pub(crate) fn user_str(p: *const c_char, buf: &mut [MaybeUninit<u8>]) -> Option<&CStr> {
    // SAFETY: copy_cstr accepts any address; a bad one faults inside the guarded copy.
    unsafe { flex_engine::fault::copy_cstr(p, buf) }.ok()
}

/// Run `f` on the program's path at `p`, copied as [`user_str`] does, up to PATH_MAX bytes.
/// `None` (without calling `f`) when it cannot be read whole: pass the original pointer to
/// the kernel. Paths up to 512 bytes are copied to the stack, longer ones to the heap: a
/// 4 KiB buffer in every open would weigh on small thread stacks and signal stacks.
pub(crate) fn with_path<R>(p: *const c_char, f: impl FnOnce(&CStr) -> R) -> Option<R> {
    let mut small = [MaybeUninit::uninit(); 512];
    // SAFETY: copy_cstr accepts any address; a bad one faults inside the guarded copy.
    match unsafe { flex_engine::fault::copy_cstr(p, &mut small) } {
        Ok(s) => Some(f(s)),
        Err(e) if e == Errno::NAMETOOLONG => {
            let mut big = Box::<[u8]>::new_uninit_slice(flex_engine::fault::PATH_MAX);
            Some(f(user_str(p, &mut big)?))
        }
        Err(_) => None,
    }
}

/// An engine entry point on the program's path at `p` ([`with_path`]); a path that cannot
/// be read whole passes (`Pass::BadArgument`): the kernel answers for the original pointer.
pub(crate) fn on_path<T>(p: *const c_char, f: impl FnOnce(&CStr) -> Route<T>) -> Route<T> {
    with_path(p, f).unwrap_or(Route::Pass(Pass::BadArgument))
}

#[inline]
pub(crate) fn errno() -> i32 {
    // SAFETY: __errno_location returns this thread's errno slot.
    unsafe { *libc::__errno_location() }
}

#[inline]
pub(crate) fn set_errno(e: i32) {
    // SAFETY: as above.
    unsafe { *libc::__errno_location() = e }
}

/// Convert an engine result to the C convention: the value, or -1 with errno.
pub(crate) trait CRet {
    type Out;
    fn c(self) -> Self::Out;
}
impl CRet for Res<usize> {
    type Out = isize;
    fn c(self) -> isize {
        match self {
            Ok(v) => v as isize,
            Err(e) => {
                set_errno(e.raw_os_error());
                -1
            }
        }
    }
}
impl CRet for Res<()> {
    type Out = i32;
    fn c(self) -> i32 {
        match self {
            Ok(()) => 0,
            Err(e) => {
                set_errno(e.raw_os_error());
                -1
            }
        }
    }
}
impl CRet for Res<i32> {
    type Out = i32;
    fn c(self) -> i32 {
        match self {
            Ok(v) => v,
            Err(e) => {
                set_errno(e.raw_os_error());
                -1
            }
        }
    }
}
impl CRet for Res<i64> {
    type Out = i64;
    fn c(self) -> i64 {
        match self {
            Ok(v) => v,
            Err(e) => {
                set_errno(e.raw_os_error());
                -1
            }
        }
    }
}

/// Resolve the next definition of a libc symbol (the one we interpose), once.
macro_rules! real {
    (@ident $name:ident : $ty:ty) => {
        real!(@str concat!(stringify!($name), "\0") ; $ty)
    };
    ($name:literal : $ty:ty) => {
        real!(@str concat!($name, "\0") ; $ty)
    };
    (@str $cname:expr ; $ty:ty) => {{
        static SLOT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let mut p = SLOT.load(std::sync::atomic::Ordering::Acquire);
        if p == 0 {
            // SAFETY: dlsym with a NUL-terminated name; RTLD_NEXT finds libc's definition.
            p = unsafe { libc::dlsym(libc::RTLD_NEXT, $cname.as_ptr().cast()) } as usize;
            SLOT.store(p, std::sync::atomic::Ordering::Release);
        }
        if p == 0 {
            None
        } else {
            // SAFETY: the symbol has the C signature `$ty` (libc's documented prototype).
            Some(unsafe { std::mem::transmute::<usize, $ty>(p) })
        }
    }};
}
pub(crate) use real;

/// A raw system call with the C return convention (-1 + errno), for passthrough.
macro_rules! raw {
    ($nr:expr $(, $a:expr)*) => {{
        #[allow(clippy::unnecessary_cast)]
        let args: &[usize] = &[$($a as usize),*];
        // SAFETY: a system call with the application's own arguments, exactly as the libc
        // wrapper would make it; the kernel validates every pointer.
        unsafe { $crate::raw_syscall($nr as libc::c_long, args) }
    }};
}
pub(crate) use raw;

/// One system call with the application's arguments ([`flex_engine::sys::raw::syscall`]);
/// -1 with errno on failure, as libc's wrappers.
///
/// # Safety
/// The arguments must be valid for system call `nr` as the application passed them.
#[inline(always)]
pub(crate) unsafe fn raw_syscall(nr: libc::c_long, args: &[usize]) -> libc::c_long {
    // SAFETY: forwarded contract.
    let ret = unsafe { flex_engine::sys::raw::syscall(nr, args) };
    if (-4095..0).contains(&ret) {
        set_errno(-ret as i32);
        -1
    } else {
        ret as libc::c_long
    }
}

/// Exit-time destructor: flush our stdio streams, make sizes exact, write statistics.
extern "C" fn flex_fini() {
    stdio::flush_all();
    hook(flex_engine::posix::at_exit);
}

// No constructor: the engine (FLEX_* parsing, fault handlers) is created by the first
// open that may be managed, so programs that never touch a managed file pay only for
// loading the library. Handlers the application installed earlier become the ones our
// fault handler forwards to.

#[used]
#[link_section = ".fini_array"]
static FINI: extern "C" fn() = flex_fini;
