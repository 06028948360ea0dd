//! Handing a managed file to the kernel for a call it does itself (mmap, sendfile,
//! copy_file_range, splice, emulated posix_fallocate).

use super::size::refresh_from_kernel;
use super::{desc, Fd};
use crate::runtime::engine;
use crate::stats::Call;
use crate::sys;

/// The application maps a managed file, or hands it to the kernel (sendfile,
/// copy_file_range, splice): the kernel must see the exact size and, for calls that use the
/// file offset, our offset. Returns a closure to run after the call.
/// `None`: nothing to hand over (a descriptor flex does not manage, or one handed back).
pub fn kernel_handoff(fd: Fd, uses_offset: bool, call: Call) -> Option<impl FnOnce()> {
    let Ok(d) = desc(fd) else {
        // A lazy descriptor: the kernel's call may move its position and grow its file.
        if call != Call::mmap {
            super::lazy_moved(fd, true);
        }
        return None;
    };
    if d.is_demoted() {
        return None;
    }
    let e = engine();
    e.stats.served(call);
    let forever = call == Call::mmap;
    if forever {
        if let Some(a) = d.inode.atomic.get() {
            // The program's own mapping must see its later writes: in place from now on.
            a.go_shared(&d.inode);
        }
    }
    crate::atomic::commit_for_kernel(&d.inode);
    let _ = d.inode.make_exact(fd, forever);
    // A coherent description keeps its offset in the kernel already.
    let uses_offset = uses_offset && !d.is_coherent();
    if uses_offset {
        let pos = *d.pos_at(fd);
        let _ = sys::lseek(fd, pos as i64, libc::SEEK_SET);
    }
    Some(move || {
        if uses_offset {
            if let Ok(k) = sys::lseek(fd, 0, libc::SEEK_CUR) {
                *d.pos() = k;
            }
        }
        let _ = refresh_from_kernel(&d, fd);
    })
}
