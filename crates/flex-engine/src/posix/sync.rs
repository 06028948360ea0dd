//! fsync, fdatasync, sync_file_range (a commit point in atomic mode).

use super::{Fd, Pass, Route};
use crate::desc::Desc;
use crate::runtime::engine;
use crate::stats::Call;
use crate::sys::{self, Res};

/// fsync or fdatasync of a description: a commit in atomic mode.
pub(super) fn sync_desc(d: &Desc, fd: Fd, data_only: bool) -> Res<()> {
    match d.inode.atomic.get() {
        Some(a) => a.commit(&d.inode),
        None => d.inode.sync(fd, data_only),
    }
}

pub fn fsync(fd: Fd, data_only: bool) -> Route<()> {
    let d = desc_or_pass!(fd);
    if d.is_demoted() {
        return Route::Pass(Pass::Demoted);
    }
    if panic_in_fsync() {
        // Before any lock or change: only the unwinding is tested.
        panic!("FLEX_TEST_PANIC=fsync");
    }
    engine().stats.served(if data_only {
        Call::fdatasync
    } else {
        Call::fsync
    });
    Route::Served(sync_desc(&d, fd, data_only))
}

pub fn sync_file_range(fd: Fd, off: i64, n: i64, flags: u32) -> Route<()> {
    let d = desc_or_pass!(fd);
    if d.is_demoted() {
        return Route::Pass(Pass::Demoted);
    }
    engine().stats.served(Call::sync_file_range);
    if let Err(e) = d.inode.trim(fd) {
        return Route::err(e);
    }
    Route::Served(sys::sync_file_range(fd, off, n, flags))
}

/// Test knob `FLEX_TEST_PANIC=fsync`: fsync of a managed descriptor panics in the engine,
/// so tests see a panic caught at the C boundary of a real program (EIO, nothing else).
fn panic_in_fsync() -> bool {
    static V: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *V.get_or_init(|| std::env::var_os("FLEX_TEST_PANIC").is_some_and(|v| v == "fsync"))
}
