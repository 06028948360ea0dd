//! A data file's log file: finding it in its flex directory (see [`super::site`]) or
//! creating it, opening and locking it with the trust checks, the sibling logs of a
//! shared file, and removing a log.

use super::media::MapLog;
use super::{site, spare};
use crate::sys::{self, Errno, Res};
use rustix::fd::RawFd;
use std::ffi::{CStr, CString};
use std::sync::atomic::Ordering::*;

/// Open (or create) the log of the data file (mode `data_mode`) and lock it. None: no log
/// and `create` is false. EBUSY: another live process holds it. EPERM: not a regular
/// file; or, in a shared flex directory (`shared`: the data file's owner), a log flex may
/// not trust: other links, or owned by someone else than this process's user, the data
/// file's owner or root (replaying a planted log would write into the data file).
pub(super) fn open_log(
    dirfd: RawFd,
    lpath: &CStr,
    data_mode: u32,
    shared: Option<u32>,
    create: bool,
) -> Res<Option<(RawFd, u64)>> {
    for _ in 0..8 {
        let flags = libc::O_RDWR | libc::O_NOFOLLOW | libc::O_CLOEXEC;
        let (fd, created) = match sys::openat(dirfd, lpath, flags, 0) {
            Ok(fd) => (fd, false),
            Err(Errno::NOENT) if create => {
                match sys::openat(dirfd, lpath, flags | libc::O_CREAT | libc::O_EXCL, 0o600) {
                    Ok(fd) => (fd, true),
                    Err(Errno::EXIST) => continue,
                    Err(e) => return Err(e),
                }
            }
            Err(Errno::NOENT) => return Ok(None),
            Err(e) => return Err(e),
        };
        let st = match sys::fstat(fd) {
            Ok(st) => st,
            Err(e) => {
                let _ = sys::close(fd);
                return Err(e);
            }
        };
        if st.st_nlink == 0 {
            // Removed since we opened it: its owner's last close, or (a log we just
            // created, not locked yet) another process's sweep of unheld sibling logs.
            // Look again.
            let _ = sys::close(fd);
            continue;
        }
        let planted = shared.is_some_and(|u| st.st_nlink != 1 || !site::trusted(st.st_uid, u));
        if st.st_mode & libc::S_IFMT != libc::S_IFREG || planted {
            let _ = sys::close(fd);
            return Err(Errno::PERM);
        }
        // Never more readable than the data file.
        let mode = data_mode & 0o666;
        if st.st_mode & 0o7777 != mode {
            let _ = rustix::fs::fchmod(sys::bfd(fd), rustix::fs::Mode::from_raw_mode(mode));
        }
        if sys::ofd_lock(fd, 0, true, true).is_err() {
            let _ = sys::close(fd);
            if created {
                // Ours, but another process's sweep took it first (it was not locked
                // yet) and will remove it: make another.
                continue;
            }
            return Err(Errno::BUSY);
        }
        // The previous owner may have unlinked it between our open and our lock.
        match sys::fstatat(dirfd, lpath, libc::AT_SYMLINK_NOFOLLOW) {
            Ok(s2) if s2.st_ino == st.st_ino && s2.st_dev == st.st_dev => {
                return Ok(Some((fd, st.st_ino)))
            }
            _ => {
                let _ = sys::close(fd);
            }
        }
    }
    Err(Errno::BUSY)
}

pub(super) fn unlink_log(path: &CStr, ino: u64) {
    if sys::fstatat(libc::AT_FDCWD, path, libc::AT_SYMLINK_NOFOLLOW).is_ok_and(|s| s.st_ino == ino)
    {
        let _ = sys::unlinkat(libc::AT_FDCWD, path);
    }
}

/// A data file's log, open and locked (see [`site`]).
pub(super) struct LogFile {
    pub(super) fd: RawFd,
    /// The log's own inode number (it is removed only if still the same file).
    pub(super) ino: u64,
    /// Absolute path.
    pub(super) path: CString,
    /// The data file's identity in the header ([`site::ident`]).
    pub(super) ident: u64,
    /// A spare log taken over ([`spare`]): already a private descriptor, mapped, and
    /// holding nothing to replay.
    pub(super) spare: Option<MapLog>,
}

/// Find the log of the data file `fd` (status `st`) in its flex directory, or with
/// `create` make one. Ok(None): none found (`create` false), or no flex directory can be
/// made (the caller serves the file plainly). EBUSY: another live process holds it.
/// Where the log lives is decided here only ([`site`]); [`attach`](super::attach::attach)
/// and recovery call it.
pub(super) fn find_log(fd: RawFd, st: &rustix::fs::Stat, create: bool) -> Res<Option<LogFile>> {
    let ident = site::ident(fd, st.st_ino);
    let dirs = site::dirs(fd, st.st_dev);
    let found = |lfd: RawFd, ino: u64, path: CString| LogFile {
        fd: lfd,
        ino,
        path,
        ident,
        spare: None,
    };
    // An existing log first, in whichever directory it is.
    for (d, _) in &dirs {
        if !site::trusted_dir(d, st.st_uid) {
            continue;
        }
        let Some(p) = site::log_in(d, st.st_ino) else {
            continue;
        };
        if sys::fstatat(libc::AT_FDCWD, &p, libc::AT_SYMLINK_NOFOLLOW).is_err() {
            continue;
        }
        // A log this process cannot open (another user's) is not one to replace either.
        let r = open_log(libc::AT_FDCWD, &p, st.st_mode, Some(st.st_uid), false);
        let r = r.map_err(|e| if e == Errno::ACCESS { Errno::PERM } else { e });
        if let Some((lfd, ino)) = r? {
            return Ok(Some(found(lfd, ino, p)));
        }
    }
    if !create {
        return Ok(None);
    }
    for (d, mode) in &dirs {
        if site::make_dir(d, *mode).is_err() || !site::trusted_dir(d, st.st_uid) {
            continue;
        }
        let Some(p) = site::log_in(d, st.st_ino) else {
            continue;
        };
        if let Some((m, ino)) = spare::take(d, &p, st.st_mode & 0o666) {
            return Ok(Some(LogFile {
                spare: Some(m),
                ..found(-1, ino, p)
            }));
        }
        match open_log(libc::AT_FDCWD, &p, st.st_mode, Some(st.st_uid), true) {
            Ok(Some((lfd, ino))) => return Ok(Some(found(lfd, ino, p))),
            Err(e @ (Errno::BUSY | Errno::PERM)) => return Err(e),
            Ok(None) | Err(_) => {}
        }
    }
    Ok(None)
}

/// The main log of the data file is held by another live process (the file is shared):
/// a log of this process's own beside it, and the main log's path.
pub(super) fn find_sibling_log(
    fd: RawFd,
    st: &rustix::fs::Stat,
) -> Res<Option<(LogFile, CString)>> {
    let ident = site::ident(fd, st.st_ino);
    for (d, _) in &site::dirs(fd, st.st_dev) {
        if !site::trusted_dir(d, st.st_uid) {
            continue;
        }
        let Some(main) = site::log_in(d, st.st_ino) else {
            continue;
        };
        if sys::fstatat(libc::AT_FDCWD, &main, libc::AT_SYMLINK_NOFOLLOW).is_err() {
            continue;
        }
        let own = sibling_path(&main)?;
        if let Some((m, ino)) = spare::take(d, &own, st.st_mode & 0o666) {
            let l = LogFile {
                fd: -1,
                ino,
                path: own,
                ident,
                spare: Some(m),
            };
            return Ok(Some((l, main)));
        }
        // The name is this process's alone; only another process's sweep of unheld
        // sibling logs can hold it (it came between our create and our lock): take the
        // next name then.
        let mut own = own;
        for _ in 0..8 {
            match open_log(libc::AT_FDCWD, &own, st.st_mode, Some(st.st_uid), true) {
                Ok(Some((lfd, ino))) => {
                    let l = LogFile {
                        fd: lfd,
                        ino,
                        path: own,
                        ident,
                        spare: None,
                    };
                    return Ok(Some((l, main)));
                }
                Err(Errno::BUSY) => own = sibling_path(&main)?,
                Ok(None) => break,
                Err(e) => return Err(e),
            }
        }
    }
    Ok(None)
}

/// Is there a log of the data file (a new-location one, or an old `.<name>.flexlog`)?
pub(super) fn has_log(fd: RawFd, st: &rustix::fs::Stat, dirfd: RawFd, path: &CStr) -> bool {
    let exists = |p: &CStr| sys::fstatat(dirfd, p, libc::AT_SYMLINK_NOFOLLOW).is_ok();
    site::legacy_path(path.to_bytes()).is_some_and(|p| exists(&p))
        || site::dirs(fd, st.st_dev)
            .iter()
            .filter_map(|(d, _)| site::log_in(d, st.st_ino))
            .any(|p| exists(&p))
}

/// A log of this process's own for a file another process holds the main log of:
/// `<main log>.<pid>.<n>`.
fn sibling_path(main: &CStr) -> Res<CString> {
    use std::sync::atomic::AtomicU64;
    static N: AtomicU64 = AtomicU64::new(0);
    let mut v = main.to_bytes().to_vec();
    let n = N.fetch_add(1, Relaxed);
    v.extend_from_slice(format!(".{}.{n}", std::process::id()).as_bytes());
    CString::new(v).map_err(|_| Errno::INVAL)
}
