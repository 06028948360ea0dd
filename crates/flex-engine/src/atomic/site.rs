//! Where a failure-atomic file's log lives: never in the program's directories, but on
//! the data file's own file system (a DAX log must be on the DAX device, and recovery must
//! find it after a crash), in a flex directory at the root of that file system's mount:
//! `<mount root>/.flex-atomic/<ino>.log`, keyed by the data file's inode number. The
//! log's header carries the data file's identity (inode number mixed with its birth time
//! where the file system records one): a log whose identity differs belongs to an earlier
//! file that had the same inode number (it is gone, so its log is foreign) and is
//! overwritten, never replayed.
//!
//! - The mount root: the mount of the data file's `st_dev` in `/proc/self/mountinfo`
//!   whose root is the file system's own root (one place per file system, whichever path
//!   or bind mount the program used), else the topmost directory above the data file
//!   with the same `st_dev`.
//! - The flex directory is created `01777` (sticky: users share it, none removes
//!   another's log). Where it cannot be created (read-only mount root, no permission),
//!   `$HOME/.flex-atomic` (`01700`) when `$HOME` is on the same file system; else the file
//!   is not put in atomic mode (stats: `atomic: no place for the log`).
//! - It is hidden from directory listings by libflex.so (`getdents64`, `readdir` ...): an
//!   entry named [`DIR`] that is a sticky directory.
//! - Logs of older versions, `<dir>/.<name>.flexlog` beside the data file, are still
//!   recovered and removed once (see `recover_legacy`).

use super::log::hash;
use crate::sys::{self, Errno, Res};
use rustix::fd::RawFd;
use std::ffi::CString;
use std::sync::Mutex;

/// A flex directory's absolute path and the mode it is created with.
pub type FlexDir = (Vec<u8>, u32);

/// The flex directory's name (at the mount root, or in `$HOME`).
pub const DIR: &[u8] = b".flex-atomic";

/// The identity a log header carries for the data file `fd` (inode number `ino`): the
/// inode number, mixed with the birth time where the file system records one (a reused
/// inode number then never matches an old log).
pub fn ident(fd: RawFd, ino: u64) -> u64 {
    let b = rustix::fs::statx(
        sys::bfd(fd),
        c"",
        rustix::fs::AtFlags::EMPTY_PATH,
        rustix::fs::StatxFlags::INO | rustix::fs::StatxFlags::BTIME,
    );
    match b {
        Ok(x) if x.stx_mask & rustix::fs::StatxFlags::BTIME.bits() != 0 => {
            let mut w = [0u8; 24];
            w[..8].copy_from_slice(&ino.to_le_bytes());
            w[8..16].copy_from_slice(&x.stx_btime.tv_sec.to_le_bytes());
            w[16..20].copy_from_slice(&x.stx_btime.tv_nsec.to_le_bytes());
            // Never equal to a plain inode number's identity by accident of the format.
            hash(0x666c_6578_6174_6f6d, &w) | 1 << 63
        }
        _ => ino,
    }
}

fn stat_dev(path: &[u8]) -> Option<libc::stat> {
    let c = CString::new(path).ok()?;
    sys::fstatat(libc::AT_FDCWD, &c, 0).ok()
}

/// mountinfo escapes space, tab, newline and backslash as `\ooo`.
fn unescape(s: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(s.len());
    let mut i = 0;
    while i < s.len() {
        if s[i] == b'\\'
            && i + 4 <= s.len()
            && s[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            let o = s[i + 1..i + 4]
                .iter()
                .fold(0u32, |a, c| a * 8 + (c - b'0') as u32);
            v.push(o as u8);
            i += 4;
        } else {
            v.push(s[i]);
            i += 1;
        }
    }
    v
}

/// The mount point of the file system `dev` that mounts its root (`/proc/self/mountinfo`),
/// checked to be reachable with that device.
fn mountinfo_root(dev: u64) -> Option<Vec<u8>> {
    let text = crate::sys::read_file(c"/proc/self/mountinfo")?;
    let want = format!(
        "{}:{}",
        libc::major(dev as libc::dev_t),
        libc::minor(dev as libc::dev_t)
    );
    for line in text.split(|&b| b == b'\n') {
        let mut f = line.split(|&b| b == b' ');
        let (_id, _parent, mm, root, point) = (f.next(), f.next(), f.next(), f.next(), f.next());
        let (Some(mm), Some(root), Some(point)) = (mm, root, point) else {
            continue;
        };
        if mm != want.as_bytes() || root != b"/" {
            continue;
        }
        let p = unescape(point);
        if stat_dev(&p).is_some_and(|st| st.st_dev == dev) {
            return Some(p);
        }
    }
    None
}

/// The topmost directory above the data file (absolute path `file`) with its `st_dev`.
fn walk_root(file: &[u8], dev: u64) -> Option<Vec<u8>> {
    let mut cur = file.to_vec();
    let mut best = None;
    while let Some(i) = cur.iter().rposition(|&b| b == b'/') {
        cur.truncate(i);
        let p = if cur.is_empty() {
            b"/".to_vec()
        } else {
            cur.clone()
        };
        match stat_dev(&p) {
            Some(st) if st.st_dev == dev => best = Some(p),
            _ => break,
        }
    }
    best
}

/// The data file's absolute path (as this process sees it).
fn fd_path(fd: RawFd) -> Option<Vec<u8>> {
    let p = CString::new(format!("/proc/self/fd/{fd}")).ok()?;
    let v = rustix::fs::readlinkat(rustix::fs::CWD, &p, Vec::new())
        .ok()?
        .into_bytes();
    (v.first() == Some(&b'/')).then_some(v)
}

fn join(dir: &[u8], name: &[u8]) -> Vec<u8> {
    let mut v = dir.to_vec();
    if v.last() != Some(&b'/') {
        v.push(b'/');
    }
    v.extend_from_slice(name);
    v
}

/// The flex directories a log of the data file `fd` (device `dev`) may be in, in order:
/// the mount root's (shared, `01777`), then `$HOME`'s if on the same file system (`01700`).
/// Computed once per file system and process (a read-only atomic open asks too).
pub fn dirs(fd: RawFd, dev: u64) -> Vec<FlexDir> {
    static CACHE: Mutex<Vec<(u64, Vec<FlexDir>)>> = Mutex::new(Vec::new());
    let lock = || CACHE.lock().unwrap_or_else(|p| p.into_inner());
    if let Some((_, v)) = lock().iter().find(|(d, _)| *d == dev) {
        return v.clone();
    }
    let v = find_dirs(fd, dev);
    if !v.is_empty() {
        lock().push((dev, v.clone()));
    }
    v
}

fn find_dirs(fd: RawFd, dev: u64) -> Vec<FlexDir> {
    let mut v = Vec::with_capacity(2);
    let root = mountinfo_root(dev).or_else(|| walk_root(&fd_path(fd)?, dev));
    if let Some(r) = &root {
        v.push((join(r, DIR), 0o1777));
    }
    if let Some(h) = std::env::var_os("HOME") {
        let h = std::os::unix::ffi::OsStrExt::as_bytes(h.as_os_str()).to_vec();
        if h.first() == Some(&b'/') && stat_dev(&h).is_some_and(|st| st.st_dev == dev) {
            let d = join(&h, DIR);
            if v.iter().all(|(x, _)| *x != d) {
                v.push((d, 0o1700));
            }
        }
    }
    v
}

/// The log's path in the flex directory `dir`.
pub fn log_in(dir: &[u8], ino: u64) -> Option<CString> {
    CString::new(join(dir, format!("{ino}.log").as_bytes())).ok()
}

/// Make the flex directory `dir` (mode `mode`, whatever the umask). Ok if it exists as a
/// directory.
pub fn make_dir(dir: &[u8], mode: u32) -> Res<()> {
    let c = CString::new(dir).map_err(|_| Errno::INVAL)?;
    use rustix::fs::{Mode, CWD};
    match rustix::fs::mkdirat(CWD, &c, Mode::from_raw_mode(0o700)) {
        Ok(()) => {
            // Only we can use it yet (0700): give it its real mode.
            let _ = rustix::fs::chmodat(
                CWD,
                &c,
                Mode::from_raw_mode(mode),
                rustix::fs::AtFlags::empty(),
            );
            Ok(())
        }
        Err(Errno::EXIST) => match sys::fstatat(libc::AT_FDCWD, &c, libc::AT_SYMLINK_NOFOLLOW) {
            Ok(st) if st.st_mode & libc::S_IFMT == libc::S_IFDIR => Ok(()),
            Ok(_) => Err(Errno::NOTDIR),
            Err(e) => Err(e),
        },
        Err(e) => Err(e),
    }
}

/// May a log or flex directory owned by `uid` be trusted for a data file owned by
/// `data_uid`: this process's user, the data file's owner, or root.
pub fn trusted(uid: u32, data_uid: u32) -> bool {
    uid == 0 || uid == data_uid || uid == rustix::process::geteuid().as_raw()
}

/// Is the flex directory `dir` one whose logs may be trusted: a real directory owned as
/// [`trusted`] says, and sticky if others may write it (nobody swaps another's log).
pub fn trusted_dir(dir: &[u8], data_uid: u32) -> bool {
    let Ok(c) = CString::new(dir) else {
        return false;
    };
    sys::fstatat(libc::AT_FDCWD, &c, libc::AT_SYMLINK_NOFOLLOW).is_ok_and(|st| {
        st.st_mode & libc::S_IFMT == libc::S_IFDIR
            && trusted(st.st_uid, data_uid)
            && (st.st_mode & 0o022 == 0 || st.st_mode & libc::S_ISVTX != 0)
    })
}

/// The log path of older versions: `<dir>/.<name>.flexlog` beside the data file opened as
/// `path` (recovered and removed once, never created).
pub fn legacy_path(path: &[u8]) -> Option<CString> {
    let (dir, name) = match path.iter().rposition(|&b| b == b'/') {
        Some(i) => (&path[..=i], &path[i + 1..]),
        None => (&b""[..], path),
    };
    if name.is_empty() {
        return None;
    }
    let mut v = dir.to_vec();
    v.push(b'.');
    v.extend_from_slice(name);
    v.extend_from_slice(b".flexlog");
    CString::new(v).ok()
}

/// Is the directory entry `name` in the directory `dirfd` flex's own directory (to be
/// hidden from listings)? The name must match and the entry be a sticky directory.
pub fn is_flex_dir(dirfd: RawFd, name: &[u8]) -> bool {
    if name != DIR {
        return false;
    }
    let Ok(c) = CString::new(name) else {
        return false;
    };
    sys::fstatat(dirfd, &c, libc::AT_SYMLINK_NOFOLLOW).is_ok_and(|st| {
        st.st_mode & libc::S_IFMT == libc::S_IFDIR && st.st_mode & libc::S_ISVTX != 0
    })
}

/// Where the log of the data file at `path` is, if it has one, else where it would be
/// created (for tests and tools; `None`: the file cannot be opened, or no flex directory).
pub fn log_location(path: &std::path::Path) -> Option<std::path::PathBuf> {
    use std::os::unix::ffi::{OsStrExt, OsStringExt};
    let c = CString::new(path.as_os_str().as_bytes()).ok()?;
    let fd = sys::openat(libc::AT_FDCWD, &c, libc::O_PATH | libc::O_CLOEXEC, 0).ok()?;
    let st = sys::fstat(fd);
    let dirs = st
        .as_ref()
        .map(|st| dirs(fd, st.st_dev))
        .unwrap_or_default();
    let _ = sys::close(fd);
    let ino = st.ok()?.st_ino;
    let all: Vec<CString> = dirs.iter().filter_map(|(d, _)| log_in(d, ino)).collect();
    let pick = all
        .iter()
        .find(|p| sys::fstatat(libc::AT_FDCWD, p, libc::AT_SYMLINK_NOFOLLOW).is_ok())
        .or(all.first())?;
    Some(std::ffi::OsString::from_vec(pick.as_bytes().to_vec()).into())
}
