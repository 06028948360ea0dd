//! Path calls flex follows: unlink and rename (forget the inode), chdir (the cached
//! working directory).

use super::Fd;
use crate::runtime::engine_if_started;
use crate::stats::Call;
use crate::sys;
use std::ffi::CStr;

/// unlink/rename: the identity of `path` is about to go; returns (dev, ino) to forget after
/// (None: nothing flex holds could be forgotten).
pub fn path_identity(dirfd: Fd, path: &CStr) -> Option<(u64, u64)> {
    let e = engine_if_started()?;
    // Only an idle inode is forgotten: with none in the cache there is nothing to look
    // up (SQLite unlinks its journal once per transaction; the stat was one path walk).
    if (e.config.paths.is_empty() && e.table.is_empty()) || !e.has_idle() {
        return None;
    }
    let st = sys::fstatat(dirfd, path, libc::AT_SYMLINK_NOFOLLOW).ok()?;
    e.lookup(st.st_dev, st.st_ino)
        .map(|_| (st.st_dev, st.st_ino))
}

pub fn forget(id: Option<(u64, u64)>, call: Call) {
    if let (Some((dev, ino)), Some(e)) = (id, engine_if_started()) {
        e.stats.served(call);
        e.forget(dev, ino);
    }
}

pub fn chdir_happened() {
    if let Some(e) = engine_if_started() {
        e.chdir_happened();
    }
}
