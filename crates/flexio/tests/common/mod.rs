//! Shared helpers of the differential tests: the two sides (the kernel through libc, the
//! engine through the same `flex_engine::posix` entry points `libflex.so` calls, a pass made as
//! the raw system call it makes), special buffers, and the test directory.
#![allow(dead_code)]

pub mod run;

use flex_engine::posix::{self, Route};
use flex_engine::stats::Call;
use std::ffi::{CStr, CString};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard, OnceLock};

/// A call's outcome: the return value, or the errno of a -1 return.
pub type R = Result<i64, i32>;

pub fn errno() -> i32 {
    std::io::Error::last_os_error().raw_os_error().unwrap_or(0)
}

fn ret(r: i64) -> R {
    if r < 0 {
        Err(errno())
    } else {
        Ok(r)
    }
}

/// What libflex.so answers: the engine's served result (an error as its errno), or for a
/// pass the raw system call (`raw`, the call libflex.so makes).
fn eng<T: TryInto<i64>>(r: Route<T>, raw: impl FnOnce() -> i64) -> R {
    match r {
        Route::Served(Ok(v)) => Ok(v.try_into().unwrap_or(i64::MAX)),
        Route::Served(Err(e)) => Err(e.raw_os_error()),
        Route::Pass(_) => ret(raw()),
    }
}

/// Tests share one process: the fd table, the engine and its inode cache. They run one at
/// a time so that descriptor numbers (closed-fd cases) and global state stay predictable.
pub fn serial() -> MutexGuard<'static, ()> {
    static M: OnceLock<Mutex<()>> = OnceLock::new();
    M.get_or_init(|| Mutex::new(()))
        .lock()
        .unwrap_or_else(|p| p.into_inner())
}

/// `FLEX_TEST_DIR`, else /dev/shm (tmpfs), else the system temporary directory.
pub fn base_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("FLEX_TEST_DIR") {
        return d.into();
    }
    let shm = Path::new("/dev/shm");
    if shm.is_dir() {
        shm.into()
    } else {
        std::env::temp_dir()
    }
}

pub fn tempdir() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("flexdiff")
        .tempdir_in(base_dir())
        .expect("create the test directory")
}

pub fn cstr(p: &Path) -> CString {
    use std::os::unix::ffi::OsStrExt;
    CString::new(p.as_os_str().as_bytes()).expect("path without NUL")
}

/// Remove a file as the preload library's unlink does: the engine forgets its cached
/// mapping, so a later file that reuses the inode number never meets a stale mapping.
pub fn remove_file(p: &Path) {
    let c = cstr(p);
    let id = posix::path_identity(libc::AT_FDCWD, &c);
    let _ = std::fs::remove_file(p);
    posix::forget(id, Call::unlink);
}

pub fn remove_dir(d: tempfile::TempDir) {
    if let Ok(rd) = std::fs::read_dir(d.path()) {
        for e in rd.flatten() {
            remove_file(&e.path());
        }
    }
    let _ = d.close();
}

/// The kernel (libc straight to the kernel: this binary is not under LD_PRELOAD) or the
/// engine (the `flex_engine::posix` entry points libflex.so exports, argument checks included).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Side {
    Kernel,
    /// `explicit`: open with O_FLEX (mapped at once); else FLEX_PATHS decides.
    Engine {
        explicit: bool,
    },
}

impl Side {
    pub fn is_engine(self) -> bool {
        matches!(self, Side::Engine { .. })
    }

    pub fn openat(self, dirfd: i32, path: &CStr, flags: i32, mode: u32) -> R {
        match self {
            // SAFETY: a valid NUL-terminated path.
            Side::Kernel => ret(unsafe { libc::openat(dirfd, path.as_ptr(), flags, mode) } as i64),
            Side::Engine { explicit } => {
                let f = if explicit {
                    flags | flex_engine::O_FLEX
                } else {
                    flags
                };
                eng(posix::open(dirfd, path, f, mode), || {
                    // SAFETY: a raw system call with a valid path.
                    unsafe { libc::syscall(libc::SYS_openat, dirfd, path.as_ptr(), flags, mode) }
                })
            }
        }
    }

    pub fn open(self, path: &CStr, flags: i32, mode: u32) -> R {
        match self {
            // SAFETY: a valid NUL-terminated path.
            Side::Kernel => ret(unsafe { libc::open(path.as_ptr(), flags, mode) } as i64),
            _ => self.openat(libc::AT_FDCWD, path, flags, mode),
        }
    }

    pub fn creat(self, path: &CStr, mode: u32) -> R {
        match self {
            // SAFETY: a valid NUL-terminated path.
            Side::Kernel => ret(unsafe { libc::creat(path.as_ptr(), mode) } as i64),
            _ => self.openat(
                libc::AT_FDCWD,
                path,
                libc::O_CREAT | libc::O_WRONLY | libc::O_TRUNC,
                mode,
            ),
        }
    }

    pub fn close(self, fd: i32) -> R {
        match self {
            // SAFETY: closing a descriptor number (possibly invalid: EBADF).
            Side::Kernel => ret(unsafe { libc::close(fd) } as i64),
            Side::Engine { .. } => eng(posix::close(fd).map(|()| 0i64), || {
                // SAFETY: as above.
                unsafe { libc::syscall(libc::SYS_close, fd) }
            }),
        }
    }

    /// # Safety
    /// `buf` is valid for `len` bytes, or invalid so that any access faults.
    pub unsafe fn read(self, fd: i32, buf: *mut u8, len: usize) -> R {
        match self {
            // SAFETY: forwarded contract; the kernel checks the buffer.
            Side::Kernel => ret(unsafe { libc::read(fd, buf.cast(), len) } as i64),
            // SAFETY: forwarded contract.
            Side::Engine { .. } => eng(unsafe { posix::read(fd, buf, len) }, || {
                // SAFETY: the kernel checks the buffer.
                unsafe { libc::syscall(libc::SYS_read, fd, buf, len) }
            }),
        }
    }

    /// # Safety
    /// As [`Side::read`].
    pub unsafe fn write(self, fd: i32, buf: *const u8, len: usize) -> R {
        match self {
            // SAFETY: forwarded contract.
            Side::Kernel => ret(unsafe { libc::write(fd, buf.cast(), len) } as i64),
            // SAFETY: forwarded contract.
            Side::Engine { .. } => eng(unsafe { posix::write(fd, buf, len) }, || {
                // SAFETY: the kernel checks the buffer.
                unsafe { libc::syscall(libc::SYS_write, fd, buf, len) }
            }),
        }
    }

    /// # Safety
    /// As [`Side::read`].
    pub unsafe fn pread(self, fd: i32, buf: *mut u8, len: usize, off: i64) -> R {
        match self {
            // SAFETY: forwarded contract.
            Side::Kernel => ret(unsafe { libc::pread(fd, buf.cast(), len, off) } as i64),
            // SAFETY: forwarded contract.
            Side::Engine { .. } => eng(unsafe { posix::pread(fd, buf, len, off) }, || {
                // SAFETY: the kernel checks the buffer.
                unsafe { libc::syscall(libc::SYS_pread64, fd, buf, len, off) }
            }),
        }
    }

    /// # Safety
    /// As [`Side::read`].
    pub unsafe fn pwrite(self, fd: i32, buf: *const u8, len: usize, off: i64) -> R {
        match self {
            // SAFETY: forwarded contract.
            Side::Kernel => ret(unsafe { libc::pwrite(fd, buf.cast(), len, off) } as i64),
            // SAFETY: forwarded contract.
            Side::Engine { .. } => eng(unsafe { posix::pwrite(fd, buf, len, off) }, || {
                // SAFETY: the kernel checks the buffer.
                unsafe { libc::syscall(libc::SYS_pwrite64, fd, buf, len, off) }
            }),
        }
    }

    /// # Safety
    /// `iov` points to `cnt` iovecs (or is invalid), each buffer as in [`Side::read`].
    pub unsafe fn readv(self, fd: i32, iov: *const libc::iovec, cnt: i32) -> R {
        match self {
            // SAFETY: forwarded contract.
            Side::Kernel => ret(unsafe { libc::readv(fd, iov, cnt) } as i64),
            // SAFETY: forwarded contract.
            Side::Engine { .. } => eng(unsafe { posix::readv(fd, iov, cnt) }, || {
                // SAFETY: the kernel checks the iovecs.
                unsafe { libc::syscall(libc::SYS_readv, fd, iov, cnt) }
            }),
        }
    }

    /// # Safety
    /// As [`Side::readv`].
    pub unsafe fn writev(self, fd: i32, iov: *const libc::iovec, cnt: i32) -> R {
        match self {
            // SAFETY: forwarded contract.
            Side::Kernel => ret(unsafe { libc::writev(fd, iov, cnt) } as i64),
            // SAFETY: forwarded contract.
            Side::Engine { .. } => eng(unsafe { posix::writev(fd, iov, cnt) }, || {
                // SAFETY: the kernel checks the iovecs.
                unsafe { libc::syscall(libc::SYS_writev, fd, iov, cnt) }
            }),
        }
    }

    /// preadv (flags == None) or preadv2.
    /// # Safety
    /// As [`Side::readv`].
    pub unsafe fn preadv(
        self,
        fd: i32,
        iov: *const libc::iovec,
        cnt: i32,
        off: i64,
        flags: Option<i32>,
    ) -> R {
        let raw = || match flags {
            // SAFETY: the kernel checks the iovecs.
            None => unsafe { libc::syscall(libc::SYS_preadv, fd, iov, cnt, off, 0) },
            // SAFETY: as above.
            Some(f) => unsafe { libc::syscall(libc::SYS_preadv2, fd, iov, cnt, off, 0, f) },
        };
        match self {
            Side::Kernel => ret(raw()),
            Side::Engine { .. } => {
                let r = match flags {
                    // SAFETY: forwarded contract.
                    None => unsafe { posix::preadv(fd, iov, cnt, off) },
                    // SAFETY: forwarded contract.
                    Some(f) => unsafe { posix::preadv2(fd, iov, cnt, off, f) },
                };
                eng(r, raw)
            }
        }
    }

    /// pwritev (flags == None) or pwritev2.
    /// # Safety
    /// As [`Side::readv`].
    pub unsafe fn pwritev(
        self,
        fd: i32,
        iov: *const libc::iovec,
        cnt: i32,
        off: i64,
        flags: Option<i32>,
    ) -> R {
        let raw = || match flags {
            // SAFETY: the kernel checks the iovecs.
            None => unsafe { libc::syscall(libc::SYS_pwritev, fd, iov, cnt, off, 0) },
            // SAFETY: as above.
            Some(f) => unsafe { libc::syscall(libc::SYS_pwritev2, fd, iov, cnt, off, 0, f) },
        };
        match self {
            Side::Kernel => ret(raw()),
            Side::Engine { .. } => {
                let r = match flags {
                    // SAFETY: forwarded contract.
                    None => unsafe { posix::pwritev(fd, iov, cnt, off) },
                    // SAFETY: forwarded contract.
                    Some(f) => unsafe { posix::pwritev2(fd, iov, cnt, off, f) },
                };
                eng(r, raw)
            }
        }
    }

    pub fn lseek(self, fd: i32, off: i64, whence: i32) -> R {
        match self {
            // SAFETY: scalar arguments.
            Side::Kernel => ret(unsafe { libc::lseek(fd, off, whence) }),
            Side::Engine { .. } => eng(posix::lseek(fd, off, whence), || {
                // SAFETY: scalar arguments.
                unsafe { libc::syscall(libc::SYS_lseek, fd, off, whence) }
            }),
        }
    }

    pub fn fsync(self, fd: i32, data_only: bool) -> R {
        match self {
            Side::Kernel => ret(if data_only {
                // SAFETY: scalar argument.
                unsafe { libc::fdatasync(fd) }
            } else {
                // SAFETY: scalar argument.
                unsafe { libc::fsync(fd) }
            } as i64),
            Side::Engine { .. } => {
                let nr = if data_only {
                    libc::SYS_fdatasync
                } else {
                    libc::SYS_fsync
                };
                eng(posix::fsync(fd, data_only).map(|()| 0i64), || {
                    // SAFETY: scalar argument.
                    unsafe { libc::syscall(nr, fd) }
                })
            }
        }
    }

    pub fn ftruncate(self, fd: i32, len: i64) -> R {
        match self {
            // SAFETY: scalar arguments.
            Side::Kernel => ret(unsafe { libc::ftruncate(fd, len) } as i64),
            Side::Engine { .. } => eng(posix::ftruncate(fd, len).map(|()| 0i64), || {
                // SAFETY: scalar arguments.
                unsafe { libc::syscall(libc::SYS_ftruncate, fd, len) }
            }),
        }
    }

    pub fn fallocate(self, fd: i32, mode: i32, off: i64, len: i64) -> R {
        match self {
            // SAFETY: scalar arguments.
            Side::Kernel => ret(unsafe { libc::fallocate(fd, mode, off, len) } as i64),
            Side::Engine { .. } => eng(
                posix::fallocate(fd, mode, off, len).map(|()| 0i64),
                // SAFETY: scalar arguments.
                || unsafe { libc::syscall(libc::SYS_fallocate, fd, mode, off, len) },
            ),
        }
    }

    /// posix_fallocate returns the error number; mapped to `Err` here.
    pub fn posix_fallocate(self, fd: i32, off: i64, len: i64) -> R {
        let code = match self {
            // SAFETY: scalar arguments.
            Side::Kernel => unsafe { libc::posix_fallocate(fd, off, len) },
            Side::Engine { .. } => {
                // SAFETY: scalar arguments (the C library's own, as libflex.so's passes).
                let libc_call = || unsafe { libc::posix_fallocate(fd, off, len) };
                // As libflex.so: the served error number, else the C library's call.
                match posix::posix_fallocate(fd, off, len, libc_call) {
                    Route::Served(Ok(code)) => code,
                    _ => libc_call(),
                }
            }
        };
        if code == 0 {
            Ok(0)
        } else {
            Err(code)
        }
    }

    pub fn dup(self, fd: i32) -> R {
        // SAFETY: scalar argument.
        let r = ret(unsafe { libc::syscall(libc::SYS_dup, fd) });
        if let (Side::Engine { .. }, Ok(n)) = (self, r) {
            posix::dup_result(fd, n as i32);
        }
        r
    }

    pub fn dup2(self, old: i32, new: i32) -> R {
        match self {
            // SAFETY: scalar arguments.
            Side::Kernel => ret(unsafe { libc::dup2(old, new) } as i64),
            Side::Engine { .. } => {
                if old == new {
                    // SAFETY: scalar arguments.
                    let ok = unsafe { libc::syscall(libc::SYS_fcntl, old, libc::F_GETFD) } >= 0;
                    return if ok { Ok(old as i64) } else { Err(errno()) };
                }
                posix::dup2_before(old, new);
                // SAFETY: scalar arguments.
                let r = ret(unsafe { libc::syscall(libc::SYS_dup3, old, new, 0) });
                if let Ok(n) = r {
                    posix::dup_result(old, n as i32);
                }
                r
            }
        }
    }

    /// fcntl with an integer argument (F_DUPFD, F_DUPFD_CLOEXEC, F_GETFL, F_SETFL, F_GETFD).
    pub fn fcntl(self, fd: i32, cmd: i32, arg: i32) -> R {
        // SAFETY: integer commands only.
        let raw = || unsafe { libc::syscall(libc::SYS_fcntl, fd, cmd, arg as libc::c_long) };
        match self {
            // SAFETY: integer commands only.
            Side::Kernel => ret(unsafe { libc::fcntl(fd, cmd, arg) } as i64),
            Side::Engine { .. } => {
                // SAFETY: integer commands only (a lock's pointer would be read
                // fault-safely).
                eng(unsafe { posix::fcntl(fd, cmd, arg as libc::c_long) }, raw)
            }
        }
    }

    /// fstat's st_size (the engine corrects it to the logical size, as libflex.so does).
    pub fn fstat_size(self, fd: i32) -> R {
        // SAFETY: stat is plain old data.
        let mut st: libc::stat = unsafe { core::mem::zeroed() };
        // SAFETY: fstat writes into `st`, which we own.
        let r = unsafe { libc::fstat(fd, &mut st) };
        if r < 0 {
            return Err(errno());
        }
        let mut size = st.st_size;
        if self.is_engine() {
            posix::fstat_fix(fd, st.st_dev, st.st_ino, &mut size);
        }
        Ok(size)
    }
}

/// The kernel's own size of a descriptor's file (no correction).
pub fn raw_size(fd: i32) -> R {
    Side::Kernel.fstat_size(fd)
}

/// Deterministic bytes for writes.
pub fn pattern(seed: u64, len: usize) -> Vec<u8> {
    run::noise(len, seed)
}

/// Memory whose last page is PROT_NONE: `ptr_before_guard(n)` points `n` bytes before it,
/// so an access of more than `n` bytes faults exactly at the page boundary.
pub struct Guarded {
    base: *mut u8,
    len: usize,
    guard: *mut u8,
}

// SAFETY: the region is owned by this struct; tests hand out raw pointers only.
unsafe impl Send for Guarded {}
// SAFETY: as above.
unsafe impl Sync for Guarded {}

impl Guarded {
    pub fn new(good: usize) -> Guarded {
        let good = good.div_ceil(4096) * 4096;
        let len = good + 4096;
        // SAFETY: an anonymous private mapping at an address of the kernel's choice.
        let p = unsafe {
            libc::mmap(
                core::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        assert_ne!(p, libc::MAP_FAILED, "mmap");
        let base = p.cast::<u8>();
        // SAFETY: `good` is inside the mapping just made.
        let guard = unsafe { base.add(good) };
        // SAFETY: protecting the last page of our own mapping.
        let r = unsafe { libc::mprotect(guard.cast(), 4096, libc::PROT_NONE) };
        assert_eq!(r, 0, "mprotect");
        Guarded { base, len, guard }
    }

    /// Pointer `n` bytes before the PROT_NONE page (n <= the good size).
    pub fn before_guard(&self, n: usize) -> *mut u8 {
        assert!(n <= self.good());
        // SAFETY: within our mapping.
        unsafe { self.guard.sub(n) }
    }

    pub fn good(&self) -> usize {
        self.len - 4096
    }

    /// The `n` good bytes before the guard.
    pub fn bytes_before_guard(&self, n: usize) -> Vec<u8> {
        // SAFETY: the n bytes before the guard are readable and ours.
        unsafe { std::slice::from_raw_parts(self.before_guard(n), n).to_vec() }
    }

    /// Fill the good part with `b`.
    pub fn fill(&self, b: u8) {
        // SAFETY: the good part is ours and writable.
        unsafe { core::ptr::write_bytes(self.base, b, self.good()) };
    }

    /// Pointer to the PROT_NONE page itself.
    pub fn guard_page(&self) -> *mut u8 {
        self.guard
    }
}

impl Drop for Guarded {
    fn drop(&mut self) {
        // SAFETY: unmapping our own region; no pointer into it outlives the tests using it.
        unsafe { libc::munmap(self.base.cast(), self.len) };
    }
}

/// A pointer that is never valid user memory (the start of the kernel half).
pub const KERNEL_PTR: usize = 0xffff_8000_0000_0000;
