//! Spare logs: a clean log this process no longer needs is kept for the next file it puts
//! in atomic mode on the same file system, instead of being unmapped, unlinked and freed
//! only for a new one to be created, grown, mapped and locked a moment later. SQLite's
//! rollback journal, created and deleted by every transaction, is what this is for: one
//! `rename` at each end replaces about twenty system calls, among them a 1 GiB `munmap`
//! (a TLB shootdown) and the freeing and zeroing of the log's blocks.
//!
//! A spare is renamed to `<flex dir>/spare.<pid>.<n>` and stays open, locked (its OFD
//! lock, as any live log) and mapped. It holds no record a scan would replay (it is
//! checkpointed before it is kept), and no recovery looks at such a name. Taking it over
//! is a `RENAME_NOREPLACE` to the new log's name (an existing log there is never
//! replaced) and a fresh header. Exit and exec unlink this process's spares; a process
//! killed before leaves its spares unlocked, and the first attach of another process in
//! that directory removes them ([`sweep`]). A forked child forgets the parent's spares
//! without touching their names.

use super::media::MapLog;
use crate::sys;
use std::ffi::{CStr, CString};
use std::sync::atomic::{AtomicU64, Ordering::*};
use std::sync::Mutex;

/// Spares one process keeps (more files than this closing at once are rare).
const KEEP: usize = 4;
/// A log that grew past this is removed, not kept (its blocks are worth freeing).
const MAX_BYTES: u64 = 1 << 20;
/// The name prefix of spares in a flex directory.
const PREFIX: &[u8] = b"spare.";

struct Spare {
    log: MapLog,
    /// The flex directory it lives in (absolute, no trailing slash).
    dir: Vec<u8>,
    path: CString,
    ino: u64,
}

static POOL: Mutex<Vec<Spare>> = Mutex::new(Vec::new());
/// Flex directories this process has swept of dead processes' spares.
static SWEPT: Mutex<Vec<Vec<u8>>> = Mutex::new(Vec::new());

fn pool() -> std::sync::MutexGuard<'static, Vec<Spare>> {
    POOL.lock().unwrap_or_else(|p| p.into_inner())
}

fn dir_of(path: &[u8]) -> &[u8] {
    match path.iter().rposition(|&b| b == b'/') {
        Some(i) => &path[..i.max(1)],
        None => b".",
    }
}

/// Keep the clean log `log` (named `path`, inode `ino`) as a spare. Gives it back when it
/// cannot be kept (too large, the pool full, the rename failed): the caller removes it as
/// before.
pub(super) fn keep(log: MapLog, path: &CStr, ino: u64) -> Result<(), MapLog> {
    if log.bytes() > MAX_BYTES || pool().len() >= KEEP {
        return Err(log);
    }
    static N: AtomicU64 = AtomicU64::new(0);
    let dir = dir_of(path.to_bytes()).to_vec();
    let mut name = dir.clone();
    name.push(b'/');
    name.extend_from_slice(PREFIX);
    name.extend_from_slice(
        format!("{}.{}", std::process::id(), N.fetch_add(1, Relaxed)).as_bytes(),
    );
    let Ok(spare) = CString::new(name) else {
        return Err(log);
    };
    // Still the log we locked (nobody can swap a name in a sticky or private directory,
    // but the check is one stat).
    let same = sys::fstatat(libc::AT_FDCWD, path, libc::AT_SYMLINK_NOFOLLOW)
        .is_ok_and(|s| s.st_ino == ino);
    if !same || sys::rename_noreplace(path, &spare).is_err() {
        return Err(log);
    }
    pool().push(Spare {
        log,
        dir,
        path: spare,
        ino,
    });
    Ok(())
}

/// A spare in the flex directory `dir`, renamed to `target` (which must not exist): the
/// log open, locked and mapped, its inode number. Its permission bits become `mode` (a
/// log is never more readable than its data file).
pub(super) fn take(dir: &[u8], target: &CStr, mode: u32) -> Option<(MapLog, u64)> {
    let s = {
        let mut p = pool();
        let i = p.iter().position(|s| s.dir == dir)?;
        p.swap_remove(i)
    };
    if sys::rename_noreplace(&s.path, target).is_err() {
        // A log exists there (another process's), or the name went away: this spare
        // is not to be trusted any more; remove it.
        drop_spare(s);
        return None;
    }
    // The same file under the new name (a rename moves the entry we named, whichever
    // file it is now: check, as open_log checks after its lock).
    if !sys::fstatat(libc::AT_FDCWD, target, libc::AT_SYMLINK_NOFOLLOW)
        .is_ok_and(|st| st.st_ino == s.ino)
    {
        // Not ours: leave the entry alone, forget our descriptor and mapping.
        drop(s.log);
        return None;
    }
    let _ = rustix::fs::fchmod(sys::bfd(s.log.fd), rustix::fs::Mode::from_raw_mode(mode));
    Some((s.log, s.ino))
}

/// The program `dup2`s onto `fd`: if a spare's log uses that number, remove the spare
/// first (its descriptor is about to be replaced).
pub(crate) fn before_dup_onto(fd: i32) -> bool {
    let s = {
        let mut p = pool();
        let Some(i) = p.iter().position(|s| s.log.fd == fd) else {
            return false;
        };
        p.swap_remove(i)
    };
    drop_spare(s);
    true
}

fn drop_spare(s: Spare) {
    if sys::fstatat(libc::AT_FDCWD, &s.path, libc::AT_SYMLINK_NOFOLLOW)
        .is_ok_and(|st| st.st_ino == s.ino)
    {
        let _ = sys::unlinkat(libc::AT_FDCWD, &s.path);
    }
    drop(s.log);
}

/// Exit or exec: remove every spare of this process (their locks go with it).
pub(crate) fn release_all() {
    let all = std::mem::take(&mut *pool());
    for s in all {
        drop_spare(s);
    }
}

/// In a forked child: the spares are the parent's (their names, locks and files); forget
/// this copy of their descriptors and mappings.
pub(crate) fn forget_in_child() {
    let all = std::mem::take(&mut *pool());
    drop(all);
}

/// Remove the spares of dead processes from the flex directory `dir` (its entries
/// `names`), once per directory and process: a spare whose lock can be taken has no owner.
pub(super) fn sweep(dir: &CStr, names: &[Vec<u8>]) {
    {
        let mut s = SWEPT.lock().unwrap_or_else(|p| p.into_inner());
        if s.iter().any(|d| d == dir.to_bytes()) {
            return;
        }
        s.push(dir.to_bytes().to_vec());
    }
    let ours = {
        let mut v = PREFIX.to_vec();
        v.extend_from_slice(format!("{}.", std::process::id()).as_bytes());
        v
    };
    for n in names
        .iter()
        .filter(|n| n.starts_with(PREFIX) && !n.starts_with(&ours))
    {
        let mut p = dir.to_bytes().to_vec();
        p.push(b'/');
        p.extend_from_slice(n);
        let Ok(pc) = CString::new(p) else { continue };
        let flags = libc::O_RDWR | libc::O_NOFOLLOW | libc::O_CLOEXEC | libc::O_NONBLOCK;
        let Ok(fd) = sys::openat(libc::AT_FDCWD, &pc, flags, 0) else {
            continue;
        };
        let dead = sys::ofd_lock(fd, 0, true, true).is_ok();
        let same = sys::fstat(fd).ok().map(|st| st.st_ino);
        if dead
            && sys::fstatat(libc::AT_FDCWD, &pc, libc::AT_SYMLINK_NOFOLLOW)
                .is_ok_and(|st| Some(st.st_ino) == same)
        {
            let _ = sys::unlinkat(libc::AT_FDCWD, &pc);
        }
        let _ = sys::close(fd);
    }
}
