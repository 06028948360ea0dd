//! lseek, SEEK_DATA/SEEK_HOLE included.

use super::{Fd, Pass, Route};
use crate::inode::FAST_LIMIT;
use crate::runtime::engine;
use crate::stats::Call;
use crate::sys::{self, Errno};

pub fn lseek(fd: Fd, off: i64, whence: i32) -> Route<i64> {
    let d = desc_or_pass!(fd, moves_lazy: false);
    if d.is_demoted() {
        return Route::Pass(Pass::Demoted);
    }
    if d.is_coherent() {
        return Route::Pass(Pass::Coherent);
    }
    let e = engine();
    e.stats.served(Call::lseek);
    let mut pos = d.pos_at(fd);
    let cur = *pos as i128;
    let (size, settled) = match d.inode.atomic.get() {
        Some(a) => a.size_settled(),
        // Relative to the end: the kernel's size unless this process owns it (appends the
        // kernel placed, other processes' writes), as the kernel's own lseek.
        None if whence != libc::SEEK_SET && whence != libc::SEEK_CUR => {
            match d.inode.adopt_kernel_size(fd) {
                Ok(s) => (s, true),
                Err(err) => return Route::err(err),
            }
        }
        None => (d.inode.lsize(), true),
    };
    let target: i128 = match whence {
        libc::SEEK_SET => off as i128,
        libc::SEEK_CUR => cur + off as i128,
        libc::SEEK_END => size as i128 + off as i128,
        libc::SEEK_DATA | libc::SEEK_HOLE => {
            // Past the end: ENXIO. Negative offsets: ENXIO on ext4, xfs and tmpfs; btrfs
            // searches from 0 (ENXIO only when the file is empty). The kernel's answer
            // where it knows the file's size (not over-allocated, nothing logged).
            let plain = !d.inode.in_trailer_mode() && d.inode.atomic.get().is_none();
            if off < 0 && plain {
                return Route::Served(sys::lseek(fd, off, whence).map(|k| {
                    *pos = k;
                    k as i64
                }));
            }
            let off = if off < 0 && d.inode.fs(fd).seeks_negative_from_start() {
                0
            } else {
                off
            };
            if off < 0 {
                return Route::err(Errno::NXIO);
            }
            if off as u64 >= size {
                return Route::err(Errno::NXIO);
            }
            if !settled {
                // Atomic mode with logged bytes the data file lacks: all of it is data
                // (as on a file system without holes).
                if whence == libc::SEEK_DATA {
                    off as i128
                } else {
                    size as i128
                }
            } else if d.inode.in_trailer_mode() || d.inode.atomic.get().is_some() {
                // Past the logical size the kernel sees preallocated zeros: clamp.
                match sys::lseek(fd, off, whence) {
                    Ok(k) if whence == libc::SEEK_HOLE => (k.min(size)) as i128,
                    Ok(k) if k >= size => return Route::err(Errno::NXIO),
                    Ok(k) => k as i128,
                    Err(Errno::NXIO) if whence == libc::SEEK_HOLE => size as i128,
                    Err(err) => return Route::err(err),
                }
            } else {
                match sys::lseek(fd, off, whence) {
                    Ok(k) => k as i128,
                    Err(err) => return Route::err(err),
                }
            }
        }
        _ => return Route::err(Errno::INVAL),
    };
    if target < 0 {
        return Route::err(Errno::INVAL);
    }
    if target >= FAST_LIMIT as i128 {
        // Each file system has its own limit (s_maxbytes): let the kernel judge.
        if target > i64::MAX as i128 {
            return Route::err(Errno::INVAL);
        }
        if let Err(err) = sys::lseek(fd, target as i64, libc::SEEK_SET) {
            return Route::err(err);
        }
    }
    *pos = target as u64;
    Route::Served(Ok(target as i64))
}
