//! Process calls. Before fork, exec and spawn, every managed description that another
//! process image will share goes back to the kernel (offset, O_APPEND, exact size), so
//! the kernel's sharing semantics hold exactly. vfork is not interposed (a wrapper cannot
//! return twice through one stack frame); its child reaches exec, which is.

use crate::{hook, real};
use libc::{c_char, c_int, pid_t, posix_spawn_file_actions_t, posix_spawnattr_t, FILE};

type SpawnFn = unsafe extern "C" fn(
    *mut pid_t,
    *const c_char,
    *const posix_spawn_file_actions_t,
    *const posix_spawnattr_t,
    *const *mut c_char,
    *const *mut c_char,
) -> c_int;

fn enosys<T>(v: T) -> T {
    crate::set_errno(libc::ENOSYS);
    v
}

#[no_mangle]
pub unsafe extern "C" fn fork() -> pid_t {
    hook(flex_engine::posix::before_fork);
    let pid = match real!("fork": unsafe extern "C" fn() -> pid_t) {
        // SAFETY: libc's fork (it runs the atfork handlers).
        Some(f) => unsafe { f() },
        None => enosys(-1),
    };
    if pid == 0 {
        hook(flex_engine::posix::after_fork_child);
    }
    pid
}

/// One exported exec call: hand back descriptors that survive exec, then let libc exec.
macro_rules! exec_call {
    ($( fn $name:ident($($a:ident: $t:ty),*); )*) => {$(
        #[no_mangle]
        pub unsafe extern "C" fn $name($($a: $t),*) -> c_int {
            hook(|| flex_engine::posix::before_exec(false));
            match real!(@ident $name: unsafe extern "C" fn($($t),*) -> c_int) {
                // SAFETY: libc's implementation with the application's arguments.
                Some(f) => unsafe { f($($a),*) },
                None => enosys(-1),
            }
        }
    )*};
}

exec_call! {
    fn execve(p: *const c_char, argv: *const *const c_char, envp: *const *const c_char);
    fn execv(p: *const c_char, argv: *const *const c_char);
    fn execvp(p: *const c_char, argv: *const *const c_char);
    fn execvpe(p: *const c_char, argv: *const *const c_char, envp: *const *const c_char);
    fn fexecve(fd: c_int, argv: *const *const c_char, envp: *const *const c_char);
    fn execveat(d: c_int, p: *const c_char, argv: *const *const c_char, envp: *const *const c_char, fl: c_int);
}

/// `execl`, `execlp` and `execle` take a variadic argument list, which stable Rust cannot
/// read: csrc/variadic.c gathers it (`flex_execl` & co.) and calls the `execve`/`execvp`
/// above. The exported names are these naked functions, a single jump to the C code: no
/// register (`al`, the count of vector arguments, included) and no stack slot changes, so
/// the C function receives the caller's arguments as if called directly. C definitions of
/// the exported names themselves would not be exported (a cdylib's version script lists
/// Rust's symbols only) and, referenced by nothing, not even linked.
macro_rules! variadic_exec {
    ($($name:ident => $imp:ident),*) => {
        extern "C" {
            $(fn $imp();)*
        }
        $(
            // SAFETY: the body is one `jmp` to a C function of the same ABI defined in this
            // library (csrc/variadic.c): it touches no register and no stack slot, so the
            // C function sees the caller's arguments and returns to the caller itself.
            #[unsafe(naked)]
            #[no_mangle]
            pub unsafe extern "C" fn $name() {
                core::arch::naked_asm!("jmp {}", sym $imp)
            }
        )*
    };
}

variadic_exec!(execl => flex_execl, execlp => flex_execlp, execle => flex_execle);

/// posix_spawn's file actions may dup any descriptor onto 0-2: hand back all of them.
macro_rules! spawn_call {
    ($($name:ident),*) => {$(
        #[no_mangle]
        pub unsafe extern "C" fn $name(
            pid: *mut pid_t,
            path: *const c_char,
            fa: *const posix_spawn_file_actions_t,
            attr: *const posix_spawnattr_t,
            argv: *const *mut c_char,
            envp: *const *mut c_char,
        ) -> c_int {
            hook(|| flex_engine::posix::before_exec(true));
            match real!(@ident $name: SpawnFn) {
                // SAFETY: libc's implementation with the application's arguments.
                Some(f) => unsafe { f(pid, path, fa, attr, argv, envp) },
                None => libc::ENOSYS,
            }
        }
    )*};
}

spawn_call!(posix_spawn, posix_spawnp);

#[no_mangle]
pub unsafe extern "C" fn system(cmd: *const c_char) -> c_int {
    hook(|| flex_engine::posix::before_exec(true));
    match real!("system": unsafe extern "C" fn(*const c_char) -> c_int) {
        // SAFETY: libc's implementation with the application's argument.
        Some(f) => unsafe { f(cmd) },
        None => enosys(-1),
    }
}

#[no_mangle]
pub unsafe extern "C" fn popen(cmd: *const c_char, mode: *const c_char) -> *mut FILE {
    hook(|| flex_engine::posix::before_exec(true));
    match real!("popen": unsafe extern "C" fn(*const c_char, *const c_char) -> *mut FILE) {
        // SAFETY: libc's implementation with the application's arguments.
        Some(f) => unsafe { f(cmd, mode) },
        None => enosys(core::ptr::null_mut()),
    }
}

/// `_exit` and `_Exit` skip atexit and library destructors: make sizes exact and write
/// statistics here (forked workers, such as fio's jobs, leave this way).
macro_rules! exit_call {
    ($($name:ident),*) => {$(
        #[no_mangle]
        pub unsafe extern "C" fn $name(status: c_int) -> ! {
            hook(flex_engine::posix::before_underscore_exit);
            if let Some(f) = real!(@ident $name: unsafe extern "C" fn(c_int) -> !) {
                // SAFETY: libc's _exit with the application's status.
                unsafe { f(status) }
            }
            // SAFETY: the raw exit_group system call never returns, so the end of this
            // function is never reached.
            unsafe {
                flex_engine::sys::raw::syscall(libc::SYS_exit_group, &[status as usize]);
                core::hint::unreachable_unchecked()
            }
        }
    )*};
}

exit_call!(_exit, _Exit);
