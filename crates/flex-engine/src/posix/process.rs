//! Process hand-over: demote to the kernel before fork, exec and spawn; the forked
//! child's reset; exit and `_exit`; writing the statistics.

use super::{Fd, Pass};
use crate::config::LogLevel;
use crate::desc::Desc;
use crate::log::flex_log;
use crate::runtime::{engine, engine_if_started, Engine};
use crate::stats::Call;
use crate::sys;
use std::sync::atomic::Ordering::*;

/// Hand a description back to the kernel: offset and exact size.
pub fn demote(fd: Fd, d: &Desc) {
    if d.demoted.swap(true, AcqRel) {
        return;
    }
    if d.inode.atomic.get().is_some() {
        // Another image will use the file through the kernel: commit, leave atomic mode.
        engine().stats.fell_back(Pass::AtomicForkExec);
        let _ = crate::atomic::detach(&d.inode);
    }
    if d.is_coherent() {
        // The kernel already holds the offset (stdio and lseek moved it there, our copy is
        // stale) and the exact size.
        flex_log!(LogLevel::Debug, "demote fd={fd} (coherent)");
        return;
    }
    let pos = *d.pos_at(fd);
    let _ = sys::lseek(fd, pos as i64, libc::SEEK_SET);
    let _ = d.inode.trim(fd);
    flex_log!(LogLevel::Debug, "demote fd={fd} pos={pos}");
}

/// Before fork: descriptions become shared with another process whose memory we cannot
/// see, so the kernel takes them over in both.
pub fn before_fork() {
    let Some(e) = engine_if_started() else { return };
    e.stats.served(Call::fork);
    // Lazy descriptors' descriptions are shared with the child now: the kernel's for good.
    e.table.unlazy_range(0, u32::MAX, true);
    for (fd, d) in e.table.entries() {
        demote(fd, &d);
    }
}

/// In a forked child: its statistics start from zero (the parent reports its own).
pub fn after_fork_child() {
    crate::snapshot::after_fork_child();
    if let Some(e) = engine_if_started() {
        e.stats.reset();
        e.pid.store(
            rustix::process::getpid().as_raw_nonzero().get() as u32,
            Relaxed,
        );
        e.after_fork_child();
        crate::atomic::forget_spares_in_child();
    }
}

/// `_exit`: the exit hook, unless this is a vfork child (it shares the parent's memory:
/// trimming and "exiting" would be the parent's).
pub fn before_underscore_exit() {
    let Some(e) = engine_if_started() else { return };
    if e.pid.load(Relaxed) == rustix::process::getpid().as_raw_nonzero().get() as u32 {
        at_exit();
    }
}

/// Before exec (and spawn): every descriptor that survives exec goes back to the kernel;
/// statistics of this image are written.
pub fn before_exec(all: bool) {
    // The new program's writes would not pass this image's snapshot gate.
    crate::snapshot::abandon(crate::snapshot::control::Reason::Exec);
    let Some(e) = engine_if_started() else { return };
    e.stats.served(if all { Call::spawn } else { Call::exec });
    for (fd, d) in e.table.entries() {
        let cloexec = sys::fcntl_int(fd, libc::F_GETFD, 0)
            .map(|f| f & libc::FD_CLOEXEC != 0)
            .unwrap_or(true);
        if all || !cloexec {
            demote(fd, &d);
        } else {
            // Exec closes it: a commit point. Committed and checkpointed, the data file
            // holds every write (the log left behind is clean; the next open of the file
            // reuses or removes it), and a failed exec goes on in atomic mode.
            if d.inode.atomic.get().is_some() {
                crate::atomic::commit_for_kernel(&d.inode);
            }
            let _ = d.inode.trim(fd);
        }
    }
    if !all {
        // This image ends here (unless exec fails: then the next atomic file makes a new
        // log). Not in a vfork child: the spares are its parent's, which goes on.
        if e.pid.load(Relaxed) == rustix::process::getpid().as_raw_nonzero().get() as u32 {
            crate::atomic::release_spares();
        }
        write_stats(e);
    }
}

/// At exit: make every managed file's kernel size exact, then write the statistics.
pub fn at_exit() {
    let Some(e) = engine_if_started() else { return };
    e.exiting.store(true, Relaxed);
    for (fd, d) in e.table.entries() {
        if !d.is_demoted() {
            // Exit closes every descriptor: a commit point for atomic files.
            let _ = crate::atomic::detach(&d.inode);
            let _ = d.inode.trim(fd);
        }
    }
    crate::atomic::release_spares();
    write_stats(e);
}

fn write_stats(e: &Engine) {
    let Some(path) = e.config.stats.as_ref() else {
        return;
    };
    let mut line = e.stats.to_json();
    line.push('\n');
    let Ok(p) = std::ffi::CString::new(path.clone()) else {
        return;
    };
    if let Ok(fd) = sys::openat(
        libc::AT_FDCWD,
        &p,
        libc::O_WRONLY | libc::O_CREAT | libc::O_APPEND | libc::O_CLOEXEC,
        0o644,
    ) {
        // One write of one line with O_APPEND: lines of concurrent processes never mix.
        // SAFETY: `line` is our own string.
        let _ = unsafe { sys::write(fd, line.as_ptr(), line.len()) };
        let _ = sys::close(fd);
    }
}
