//! Directory listings: flex's own directory of atomic-mode logs (`.flex-atomic`, at the
//! root of a file system's mount, see `flex::atomic::site`) is never shown to the program.
//! `getdents64` drops its entry from the kernel's buffer; `readdir` and friends (glibc's
//! call the system call directly) skip it. Only an entry with exactly that name that is a
//! sticky directory is hidden; everything else is the kernel's answer.

use crate::{hook, raw, real};
use engine::atomic::site;
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
