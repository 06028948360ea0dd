//! The timestamp calls (`utimensat`, `futimens`, `utimes`, ...): a file this process has in
//! atomic mode is committed and its logged changes applied first, so flex's own deferred
//! changes to the data file (a redo transaction's writes, an `O_TRUNC`'s truncation)
//! cannot bump the times the program sets afterwards. Then libc's call, unchanged.

use crate::{hook, raw, real};
use flex_engine::atomic;
use libc::{c_char, c_int, timespec, timeval, utimbuf};

/// Before the program sets the times of the file `fd`, or `path` relative to `dirfd`.
fn before(dirfd: c_int, path: *const c_char, flags: c_int) {
    if !atomic::any_attached() {
        return;
    }
    // SAFETY: stat is plain old data.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    let st_p = &mut st as *mut libc::stat;
    let r = if path.is_null() {
        raw!(libc::SYS_fstat, dirfd, st_p)
    } else {
        raw!(
            libc::SYS_newfstatat,
            dirfd,
            path,
            st_p,
            flags & libc::AT_SYMLINK_NOFOLLOW
        )
    };
    if r == 0 {
        hook(|| atomic::before_set_times(st.st_dev, st.st_ino));
    }
}

/// Run `before`, keeping errno, then libc's call.
macro_rules! times_call {
    ($( fn $name:ident($($a:ident: $t:ty),*) => before($d:expr, $p:expr, $fl:expr); )*) => {$(
        #[no_mangle]
        pub unsafe extern "C" fn $name($($a: $t),*) -> c_int {
            let e = crate::errno();
            before($d, $p, $fl);
            crate::set_errno(e);
            match real!(@ident $name: unsafe extern "C" fn($($t),*) -> c_int) {
                // SAFETY: libc's definition with the application's own arguments.
                Some(f) => unsafe { f($($a),*) },
                None => {
                    crate::set_errno(libc::ENOSYS);
                    -1
                }
            }
        }
    )*};
}

times_call! {
    fn utimensat(d: c_int, p: *const c_char, t: *const timespec, fl: c_int) => before(d, p, fl);
    fn futimens(fd: c_int, t: *const timespec) => before(fd, std::ptr::null(), 0);
    fn utimes(p: *const c_char, t: *const timeval) => before(libc::AT_FDCWD, p, 0);
    fn lutimes(p: *const c_char, t: *const timeval) => before(libc::AT_FDCWD, p, libc::AT_SYMLINK_NOFOLLOW);
    fn futimes(fd: c_int, t: *const timeval) => before(fd, std::ptr::null(), 0);
    fn futimesat(d: c_int, p: *const c_char, t: *const timeval) => before(d, p, 0);
    fn utime(p: *const c_char, t: *const utimbuf) => before(libc::AT_FDCWD, p, 0);
}
