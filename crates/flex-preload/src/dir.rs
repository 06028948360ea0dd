//! Directory listings: flex's own directory of atomic-mode logs (`.flex-atomic`, at the
//! root of a file system's mount, see `flex_engine::atomic::site`) is never shown to the program.
//! `getdents64` drops its entry from the kernel's buffer; `readdir` and friends (glibc's
//! call the system call directly) skip it. Only an entry with exactly that name that is a
//! sticky directory is hidden; everything else is the kernel's answer.

use crate::{hook, raw, real};
use flex_engine::atomic::site;
use libc::{c_int, c_void, dirent, dirent64, DIR};
use std::ffi::CStr;

/// Is `name` (a directory entry of the directory `fd`) flex's directory?
fn hidden(fd: c_int, name: &[u8]) -> bool {
    if name != site::DIR {
        return false;
    }
    let mut h = false;
    hook(|| h = site::is_flex_dir(fd, name));
    h
}

/// Drop flex's entry from a `getdents64` buffer of `n` bytes; returns the new length.
///
/// # Safety
/// `buf` holds `n` bytes of `linux_dirent64` records the kernel just wrote.
unsafe fn filter(fd: c_int, buf: *mut u8, n: usize) -> usize {
    let mut at = 0usize;
    let mut n = n;
    while at + 19 < n {
        // SAFETY: a record header inside the kernel-filled bytes (d_reclen at 16).
        let reclen = unsafe { u16::from_ne_bytes([*buf.add(at + 16), *buf.add(at + 17)]) } as usize;
        if reclen == 0 || at + reclen > n {
            break;
        }
        // SAFETY: d_name starts at 19 and is NUL-terminated inside the record.
        let name = unsafe { CStr::from_ptr(buf.add(at + 19).cast()) }.to_bytes();
        if hidden(fd, name) {
            // SAFETY: both ranges lie inside the buffer; copy handles the overlap.
            unsafe { std::ptr::copy(buf.add(at + reclen), buf.add(at), n - at - reclen) };
            n -= reclen;
            continue;
        }
        at += reclen;
    }
    n
}

#[no_mangle]
pub unsafe extern "C" fn getdents64(fd: c_int, dirp: *mut c_void, count: usize) -> isize {
    loop {
        let r = raw!(libc::SYS_getdents64, fd, dirp, count) as isize;
        if r <= 0 {
            return r;
        }
        // SAFETY: the kernel just wrote r bytes of records at dirp.
        let m = unsafe { filter(fd, dirp.cast(), r as usize) };
        if m > 0 {
            return m as isize;
        }
        // Everything in this batch was hidden: 0 would mean the end, so read on.
    }
}

/// One readdir-like call: the next entry that is not flex's.
macro_rules! readdir_call {
    ($name:ident, $ent:ty) => {
        #[no_mangle]
        pub unsafe extern "C" fn $name(d: *mut DIR) -> *mut $ent {
            let Some(f) = real!(@ident $name: unsafe extern "C" fn(*mut DIR) -> *mut $ent) else {
                crate::set_errno(libc::ENOSYS);
                return std::ptr::null_mut();
            };
            loop {
                // SAFETY: the application's stream, handed on as it gave it.
                let e = unsafe { f(d) };
                // SAFETY: a non-null entry from libc, valid until the next call on `d`.
                if e.is_null() || !unsafe { skip(d, (*e).d_name.as_ptr()) } {
                    return e;
                }
            }
        }
    };
}

macro_rules! readdir_r_call {
    ($name:ident, $ent:ty) => {
        #[no_mangle]
        pub unsafe extern "C" fn $name(d: *mut DIR, ent: *mut $ent, res: *mut *mut $ent) -> c_int {
            type F = unsafe extern "C" fn(*mut DIR, *mut $ent, *mut *mut $ent) -> c_int;
            let Some(f) = real!(@ident $name: F) else {
                return libc::ENOSYS;
            };
            loop {
                // SAFETY: the application's arguments, handed on as it gave them.
                let r = unsafe { f(d, ent, res) };
                // SAFETY: on success `*res` is null or `ent`, which libc filled.
                if r != 0 || res.is_null() || unsafe { (*res).is_null() } {
                    return r;
                }
                // SAFETY: as above.
                if !unsafe { skip(d, (**res).d_name.as_ptr()) } {
                    return r;
                }
            }
        }
    };
}

/// Is the entry named `name` of the stream `d` flex's? errno is left as it was.
///
/// # Safety
/// `name` is a NUL-terminated entry name libc returned for `d`.
unsafe fn skip(d: *mut DIR, name: *const libc::c_char) -> bool {
    // SAFETY: as the contract says.
    let name = unsafe { CStr::from_ptr(name) }.to_bytes();
    if name != site::DIR {
        return false;
    }
    let e = crate::errno();
    // SAFETY: the application's open stream.
    let fd = unsafe { libc::dirfd(d) };
    let h = fd >= 0 && hidden(fd, name);
    crate::set_errno(e);
    h
}

readdir_call!(readdir, dirent);
readdir_call!(readdir64, dirent64);
readdir_r_call!(readdir_r, dirent);
readdir_r_call!(readdir64_r, dirent64);

/// glibc's `scandir` reads with its internal readdir: drop flex's entry from the list it
/// made (the application's filter and comparison ran on it; neither can see it after).
///
/// # Safety
/// `list`/`n` as a successful scandir returned them; `dirfd`/`path` name the directory.
unsafe fn scan_filter<E>(
    dirfd: c_int,
    path: *const libc::c_char,
    list: *mut *mut *mut E,
    n: c_int,
    name_at: usize,
) -> c_int {
    if n <= 0 || list.is_null() {
        return n;
    }
    let e = crate::errno();
    // SAFETY: scandir filled *list with n entries.
    let v = unsafe { *list };
    let mut n = n as usize;
    let mut i = 0;
    let mut dfd = -1;
    while i < n {
        // SAFETY: entry i of the list; its name is NUL-terminated at name_at.
        let name =
            unsafe { CStr::from_ptr((*v.add(i) as *const u8).add(name_at).cast()) }.to_bytes();
        if name == site::DIR {
            if dfd < 0 {
                dfd = raw!(
                    libc::SYS_openat,
                    dirfd,
                    path,
                    libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC,
                    0
                ) as c_int;
            }
            if dfd >= 0 && hidden(dfd, name) {
                // SAFETY: the entry was malloc'ed by scandir and is ours to drop; the
                // rest of the list moves down one slot.
                unsafe {
                    libc::free((*v.add(i)).cast());
                    std::ptr::copy(v.add(i + 1), v.add(i), n - i - 1);
                }
                n -= 1;
                continue;
            }
        }
        i += 1;
    }
    if dfd >= 0 {
        raw!(libc::SYS_close, dfd);
    }
    crate::set_errno(e);
    n as c_int
}

macro_rules! scandir_call {
    ($name:ident, $ent:ty, at) => {
        #[no_mangle]
        pub unsafe extern "C" fn $name(
            dfd: c_int,
            path: *const libc::c_char,
            list: *mut *mut *mut $ent,
            filt: Option<unsafe extern "C" fn(*const $ent) -> c_int>,
            cmp: Option<unsafe extern "C" fn(*mut *const $ent, *mut *const $ent) -> c_int>,
        ) -> c_int {
            type F = unsafe extern "C" fn(
                c_int,
                *const libc::c_char,
                *mut *mut *mut $ent,
                Option<unsafe extern "C" fn(*const $ent) -> c_int>,
                Option<unsafe extern "C" fn(*mut *const $ent, *mut *const $ent) -> c_int>,
            ) -> c_int;
            let Some(f) = real!(@ident $name: F) else {
                crate::set_errno(libc::ENOSYS);
                return -1;
            };
            // SAFETY: libc's definition with the application's own arguments.
            let n = unsafe { f(dfd, path, list, filt, cmp) };
            // SAFETY: a successful scandir's list.
            unsafe { scan_filter(dfd, path, list, n, std::mem::offset_of!($ent, d_name)) }
        }
    };
    ($name:ident, $ent:ty) => {
        #[no_mangle]
        pub unsafe extern "C" fn $name(
            path: *const libc::c_char,
            list: *mut *mut *mut $ent,
            filt: Option<unsafe extern "C" fn(*const $ent) -> c_int>,
            cmp: Option<unsafe extern "C" fn(*mut *const $ent, *mut *const $ent) -> c_int>,
        ) -> c_int {
            type F = unsafe extern "C" fn(
                *const libc::c_char,
                *mut *mut *mut $ent,
                Option<unsafe extern "C" fn(*const $ent) -> c_int>,
                Option<unsafe extern "C" fn(*mut *const $ent, *mut *const $ent) -> c_int>,
            ) -> c_int;
            let Some(f) = real!(@ident $name: F) else {
                crate::set_errno(libc::ENOSYS);
                return -1;
            };
            // SAFETY: libc's definition with the application's own arguments.
            let n = unsafe { f(path, list, filt, cmp) };
            // SAFETY: a successful scandir's list.
            unsafe {
                scan_filter(libc::AT_FDCWD, path, list, n, std::mem::offset_of!($ent, d_name))
            }
        }
    };
}

scandir_call!(scandir, dirent);
scandir_call!(scandir64, dirent64);
scandir_call!(scandirat, dirent, at);
scandir_call!(scandirat64, dirent64, at);
