//! Recovering what a crash left: a writer's log replayed through plain system calls
//! (read-only opens, `flexio recover`), logs of older versions beside the data file, and
//! the sibling logs of processes that died while sharing a file; and the generation a
//! fresh log starts with.

use super::data::{FdData, InodeData};
use super::logfile::{find_log, has_log, open_log, unlink_log};
use super::media::{FileLog, MapLog};
use super::protocol::{self, Replayed};
use super::site;
use crate::posix::Pass;
use crate::runtime::engine;
use crate::sys::{self, Errno, Res};
use rustix::fd::RawFd;
use std::ffi::{CStr, CString};
use std::sync::atomic::Ordering::*;

pub(super) fn fresh_gen() -> u64 {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    (t ^ (std::process::id() as u64) << 40) >> 1
}

/// Replay the log `lfd` into the data file `fd` through plain system calls.
fn replay_plain(lfd: RawFd, ident: u64, fd: RawFd) -> Res<Replayed> {
    let m = FileLog {
        fd: lfd,
        len: sys::fstat(lfd)?.st_size as u64,
    };
    let (_log, r) = protocol::recover(m, ident, &mut FdData(fd), fresh_gen())?;
    Ok(r)
}

/// A log of an older version, `<dir>/.<name>.flexlog` beside the data file (its header
/// names the data file by inode number only): recover from it and remove it. Such logs
/// are never created any more.
pub(super) fn recover_legacy(dirfd: RawFd, path: &CStr, fd: RawFd) -> Res<Option<Replayed>> {
    let Some(lpath) = site::legacy_path(path.to_bytes()) else {
        return Ok(None);
    };
    if sys::fstatat(dirfd, &lpath, libc::AT_SYMLINK_NOFOLLOW).is_err() {
        return Ok(None);
    }
    let st = sys::fstat(fd)?;
    let Some((lfd, _)) = open_log(dirfd, &lpath, st.st_mode, None, false)? else {
        return Ok(None);
    };
    let r = replay_plain(lfd, st.st_ino, fd);
    if r.is_ok() {
        let _ = sys::unlinkat(dirfd, &lpath);
    }
    let _ = sys::close(lfd);
    r.map(Some)
}

/// Recover through a plain read-write descriptor (read-only opens, `flexio recover`):
/// replay the committed transactions of the file's log, if any, then remove the log (an
/// old-location log first, see [`recover_legacy`]). Ok(None): no log.
pub fn recover_fd(dirfd: RawFd, path: &CStr, fd: RawFd) -> Res<Option<Replayed>> {
    let old = recover_legacy(dirfd, path, fd)?;
    let st = sys::fstat(fd)?;
    let Some(l) = find_log(fd, &st, false)? else {
        return Ok(old);
    };
    let r = replay_plain(l.fd, l.ident, fd);
    if r.is_ok() {
        unlink_log(&l.path, l.ino);
    }
    let _ = sys::close(l.fd);
    r.map(Some)
}

/// Recover and remove every sibling log of `main` whose owner is gone (its lock can be
/// taken). A crash of a sharing process leaves one; its uncommitted undo transaction is
/// rolled back, its committed ones (a sibling only ever logs undo) are in the data file.
pub(super) fn recover_siblings(
    main: &CStr,
    ident: u64,
    st: &rustix::fs::Stat,
    data: &mut InodeData<'_>,
) {
    let bytes = main.to_bytes();
    let (dir, name) = match bytes.iter().rposition(|&b| b == b'/') {
        Some(i) => (&bytes[..i.max(1)], &bytes[i + 1..]),
        None => (&b"."[..], bytes),
    };
    let Ok(dirc) = CString::new(dir.to_vec()) else {
        return;
    };
    let Ok(names) = sys::list_dir(&dirc) else {
        return;
    };
    super::spare::sweep(&dirc, &names);
    let mut prefix = name.to_vec();
    prefix.push(b'.');
    for n in names.into_iter().filter(|n| n.starts_with(&prefix)) {
        let mut p = dirc.to_bytes().to_vec();
        p.push(b'/');
        p.extend_from_slice(&n);
        let Ok(pc) = CString::new(p) else { continue };
        // Only a log nobody holds (open_log takes its owner's lock, never creates).
        let Ok(Some((lfd, lino))) =
            open_log(libc::AT_FDCWD, &pc, st.st_mode, Some(st.st_uid), false)
        else {
            continue;
        };
        if let Ok(m) = MapLog::new(lfd) {
            if let Ok((_log, r)) = protocol::recover(m, ident, data, fresh_gen()) {
                if r.txns > 0 || r.discarded > 0 {
                    engine().stats.recoveries.fetch_add(1, Relaxed);
                }
                unlink_log(&pc, lino);
            }
        } else {
            let _ = sys::close(lfd);
        }
    }
}

pub(super) fn recover_read_only(dirfd: RawFd, path: &CStr, fd: RawFd) -> Res<Option<Replayed>> {
    if !has_log(fd, &sys::fstat(fd)?, dirfd, path) {
        return Ok(None);
    }
    let rw = match sys::reopen_rw(fd) {
        Ok(rw) => rw,
        Err(Errno::ACCESS | Errno::PERM | Errno::ROFS) => {
            // A reader without write permission cannot replay a log: it reads what the
            // kernel has (a live writer's log is its own to apply anyway).
            engine().stats.fell_back(Pass::AtomicReaderNoRecover);
            return Ok(None);
        }
        Err(err) => return Err(err),
    };
    let r = recover_fd(dirfd, path, rw);
    let st = sys::fstat(fd)?;
    engine().close_data_fd(rw, st.st_dev, st.st_ino);
    r
}
