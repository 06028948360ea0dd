//! Copy-before-write: while a snapshot copies, a gated call that changes pages of the
//! file below the snapshot's size first puts their old bytes into the snapshot (unless
//! someone did already), claiming each page in the shared bitmap so that exactly one
//! process copies it and every other waits for it.

use super::control::{state, Reason, Shared, PAGE};
use super::gate::{Op, SLOT};
use super::join::ProcFd;
use crate::sys;
use core::sync::atomic::Ordering::*;
use std::time::{Duration, Instant};

/// Pages one copy moves at most (one read, one write per page run).
const RUN: u64 = 16;
/// How long a call waits for a page someone else copies.
const WAIT_BOUND: Duration = Duration::from_secs(5);

/// Where the descriptor's next write lands.
enum Pos {
    At(u64),
    /// O_APPEND: at the end, past every page the snapshot still needs (a truncation
    /// below the snapshot's size copied the pages it cut first).
    End,
    Unknown,
}

fn position(fd: i32) -> Pos {
    match crate::posix::write_position(fd) {
        Ok(Some(p)) => Pos::At(p),
        Ok(None) => Pos::End,
        Err(_) => Pos::Unknown,
    }
}

pub(super) fn before(s: Shared, op: &Op) {
    let c = s.ctrl();
    let id = match op {
        Op::TruncatePath { path, .. } => {
            let mut buf = [core::mem::MaybeUninit::<u8>::uninit(); 4096];
            // SAFETY: the program's string, read with the fault-safe copy into our buffer.
            match unsafe { crate::fault::copy_cstr(*path, &mut buf) } {
                Ok(p) => sys::fstatat(libc::AT_FDCWD, p, 0).map(|st| (st.st_dev, st.st_ino)),
                Err(e) => Err(e),
            }
        }
        Op::Write { fd, .. } | Op::Truncate { fd, .. } | Op::Fallocate { fd, .. } => {
            sys::fstat(*fd).map(|st| (st.st_dev, st.st_ino))
        }
    };
    if id != Ok((c.dev.load(Acquire), c.ino.load(Acquire))) {
        return;
    }
    let size = c.size.load(Acquire);
    let (lo, hi) = match *op {
        Op::Write { fd, off, len } => match off.map(Pos::At).unwrap_or_else(|| position(fd)) {
            Pos::At(o) => (o, o.saturating_add(len)),
            Pos::End => return,
            Pos::Unknown => (0, size),
        },
        Op::Truncate { len, .. } | Op::TruncatePath { len, .. } => (len, size),
        Op::Fallocate { mode, off, len, .. } => {
            if mode & !libc::FALLOC_FL_KEEP_SIZE == 0 {
                return; // allocation only: no byte changes
            }
            if mode & (libc::FALLOC_FL_COLLAPSE_RANGE | libc::FALLOC_FL_INSERT_RANGE) != 0 {
                (off, size) // everything after `off` moves
            } else {
                (off, off.saturating_add(len))
            }
        }
    };
    copy_range(s, lo, hi.min(size));
}

fn copy_range(s: Shared, lo: u64, hi: u64) {
    if lo >= hi {
        return;
    }
    let (p0, p1) = (lo / PAGE, hi.div_ceil(PAGE));
    let slot = s.slot(SLOT.load(Acquire) as usize);
    if let Some(sl) = slot {
        sl.busy.fetch_add(1, AcqRel);
    }
    let mut others = Vec::new();
    let mut p = p0;
    while p < p1 {
        if s.is_done(p) {
            p += 1;
        } else if s.claim(p) {
            let start = p;
            p += 1;
            while p < p1 && p - start < RUN && s.claim(p) {
                p += 1;
            }
            copy_pages(s, start, p);
        } else {
            others.push(p);
            p += 1;
        }
    }
    if let Some(sl) = slot {
        sl.busy.fetch_sub(1, AcqRel);
    }
    // Pages someone else is copying: their old bytes must be in before ours land.
    let start = Instant::now();
    for p in others {
        while !s.is_done(p) && s.ctrl().state.load(Acquire) == state::COPYING {
            if start.elapsed() > WAIT_BOUND {
                s.abort(state::COPYING, Reason::CopyFailed, sys::thread::getpid());
                return;
            }
            s.wait_done(p, Duration::from_millis(10));
        }
    }
}

/// Copy pages `[a, b)` of the file into the snapshot, through the snapshotter's own
/// descriptors, then mark them done.
fn copy_pages(s: Shared, a: u64, b: u64) {
    let c = s.ctrl();
    let spid = c.snapshotter.load(Acquire);
    let me = sys::thread::getpid();
    // Read-only: its close is no IN_CLOSE_WRITE, which the snapshotter takes for a
    // stranger's write.
    let ok = (|| -> sys::Res<()> {
        let src = ProcFd::new(spid, c.src_fd.load(Acquire));
        let dst = ProcFd::new(spid, c.dst_fd.load(Acquire));
        let sfd = sys::openat(
            libc::AT_FDCWD,
            src.cstr(),
            libc::O_RDONLY | libc::O_CLOEXEC,
            0,
        )?;
        let dfd = sys::openat(
            libc::AT_FDCWD,
            dst.cstr(),
            libc::O_WRONLY | libc::O_CLOEXEC,
            0,
        );
        let r = dfd.and_then(|dfd| {
            let r = move_pages(sfd, dfd, a, b, c.size.load(Acquire));
            let _ = sys::close(dfd);
            r
        });
        let _ = sys::close(sfd);
        r
    })();
    if ok.is_err() {
        s.abort(state::COPYING, Reason::CopyFailed, me);
        return;
    }
    for p in a..b {
        s.set_done(p);
    }
    if let Some(sl) = s.slot(SLOT.load(Acquire) as usize) {
        sl.copied.fetch_add(b - a, Relaxed);
    }
}

/// Pages `[a, b)` from `sfd` to the same offsets of `dfd`, leaving zero pages as holes
/// (the snapshot starts as a sparse file of the right size), nothing past `size`.
pub fn move_pages(sfd: i32, dfd: i32, a: u64, b: u64, size: u64) -> sys::Res<()> {
    let len = (b * PAGE).min(size).saturating_sub(a * PAGE) as usize;
    let mut buf = vec![0u8; len];
    let mut got = 0usize;
    while got < len {
        // SAFETY: the tail of our own buffer.
        let n = unsafe {
            sys::pread(
                sfd,
                buf[got..].as_mut_ptr(),
                len - got,
                a * PAGE + got as u64,
            )
        }?;
        if n == 0 {
            break; // past the end now: those bytes read as zeroes in the snapshot too
        }
        got += n;
    }
    for (i, page) in buf.chunks(PAGE as usize).enumerate() {
        if page.iter().all(|&x| x == 0) {
            continue;
        }
        let off = (a + i as u64) * PAGE;
        let mut done = 0usize;
        while done < page.len() {
            // SAFETY: the tail of a slice of our own buffer.
            let n = unsafe {
                sys::pwrite(
                    dfd,
                    page[done..].as_ptr(),
                    page.len() - done,
                    off + done as u64,
                )
            }?;
            if n == 0 {
                return Err(sys::Errno::NOSPC);
            }
            done += n;
        }
    }
    Ok(())
}
