//! The read path: through the mapping where it may, else (holes, past the mapping) the
//! kernel.

use super::holes::Span;
use super::{Inode, MAX_RW};
use crate::fault;
use crate::posix::Pass;
use crate::runtime::engine;
use crate::sys::{self, Res};
use rustix::fd::RawFd;
use std::sync::atomic::Ordering::*;

impl Inode {
    /// Read up to `len` bytes at `off` into `buf`. Returns the count, as pread(2).
    ///
    /// # Safety
    /// `buf` must be valid for `len` bytes or fault when touched (the copy is guarded);
    /// it must never point into memory the caller does not own.
    pub unsafe fn read_at(&self, fd: RawFd, buf: *mut u8, len: usize, off: u64) -> Res<usize> {
        let e = engine();
        let len = len.min(MAX_RW);
        let mut done = 0usize;
        let mut refreshed = false;
        while done < len {
            let pos = off + done as u64;
            let ls = self.lsize();
            if pos >= ls {
                // At our idea of EOF: another process may have extended the file.
                if refreshed || self.refresh_as(fd, false)? <= pos {
                    break;
                }
                refreshed = true;
                continue;
            }
            let n = ((ls - pos) as usize).min(len - done);
            let m = self.map_r();
            // One bound for the dense case: past it lies the end of the mapping or, on
            // tmpfs, a hole or a part of the file not looked at yet.
            if pos + n as u64 > m.rfast && !m.base.is_null() && pos + n as u64 <= m.len as u64 {
                let span = match &m.holes {
                    Some(h) if m.hole_reads => h.span(pos, pos + n as u64),
                    _ => Span::Data,
                };
                match span {
                    Span::Data => {}
                    Span::Hole => {
                        drop(m);
                        // SAFETY: forwarded contract of read_at.
                        return unsafe { self.hole_read(fd, buf, len, off, done) };
                    }
                    Span::Unknown => {
                        drop(m);
                        let s = self.lock_size();
                        let mut m = self.map_w();
                        if !self.learn_holes(&mut m, fd, pos + n as u64) {
                            drop(m);
                            drop(s);
                            // SAFETY: forwarded contract of read_at.
                            return unsafe { self.hole_read(fd, buf, len, off, done) };
                        }
                        continue;
                    }
                }
            } else if pos + n as u64 > m.rfast {
                drop(m);
                // A mapping that cannot cover the file (a sparse file of exabytes): the
                // kernel reads.
                let ok = self.map_for(fd, false).is_ok();
                let m = self.map_r();
                if !ok || m.base.is_null() || pos + n as u64 > m.len as u64 {
                    drop(m);
                    e.stats.fell_back(Pass::ReadBeyondMapping);
                    // SAFETY: forwarded contract of read_at.
                    return unsafe { self.kernel_read(fd, buf, len, off, done) };
                }
                continue;
            }
            // SAFETY: [pos, pos+n) lies inside our mapping and below the logical size; the
            // destination is the application's buffer: a bad pointer, or a page truncated
            // away by another process, faults inside the guarded copy and is reported as a
            // remainder instead of a signal.
            let rem = unsafe { fault::copy(buf.add(done), m.base.add(pos as usize), n) };
            let owned = m.trailer;
            drop(m);
            done += n - rem;
            if rem != 0 {
                // The kernel knows the truth (EFAULT, or a file truncated under us).
                e.stats.fell_back(Pass::FaultDuringRead);
                if !owned {
                    // Truncated: the bytes copied before the fault may lie past the new
                    // end (the zero-filled tail of its last page).
                    let k = self.refresh_as(fd, false)?;
                    done = done.min(k.saturating_sub(off) as usize);
                }
                // SAFETY: forwarded contract of read_at.
                return unsafe { self.kernel_read(fd, buf, len, off, done) };
            }
            // Another process may have truncated the file inside the last page copied: the
            // kernel zero-fills that page past its new end instead of faulting. Bytes past
            // the kernel's end read as zero, so a copy whose last byte is not zero lies
            // below it; otherwise ask the kernel (unless this process owns the size).
            // SAFETY: `done >= n > 0` bytes of the buffer were just written by the copy.
            if !owned && unsafe { *buf.add(done - 1) } == 0 {
                let k = self.refresh_as(fd, false)?;
                if k < pos + n as u64 {
                    done = done.min(k.saturating_sub(off) as usize);
                    break;
                }
            }
            if done < len && !refreshed {
                // Short: the file may have grown behind us; the loop re-checks.
                continue;
            }
        }
        e.stats.bytes_read.fetch_add(done as u64, Relaxed);
        Ok(done)
    }

    /// A read that touches a hole on tmpfs (a read fault there would allocate a page): the
    /// kernel's read copies zeros, or what another process wrote meanwhile. Short (another
    /// process truncated the file): the size is re-read, as after a fault in the copy.
    ///
    /// # Safety
    /// As [`Inode::read_at`].
    unsafe fn hole_read(
        &self,
        fd: RawFd,
        buf: *mut u8,
        len: usize,
        off: u64,
        done: usize,
    ) -> Res<usize> {
        engine().stats.fell_back(Pass::ReadOverHole);
        // SAFETY: forwarded contract of read_at.
        let r = unsafe { self.kernel_read(fd, buf, len, off, done) };
        if matches!(r, Ok(n) if n < len) {
            let _ = self.refresh_as(fd, false);
        }
        r
    }

    /// # Safety
    /// As [`Inode::read_at`].
    unsafe fn kernel_read(
        &self,
        fd: RawFd,
        buf: *mut u8,
        len: usize,
        off: u64,
        done: usize,
    ) -> Res<usize> {
        // In trailer mode the kernel sees zeros and the trailer past lsize: clamp.
        let ls = self.lsize();
        let pos = off + done as u64;
        let want = if self.in_trailer_mode() {
            (len - done).min(ls.saturating_sub(pos) as usize)
        } else {
            len - done
        };
        if want == 0 {
            return Ok(done);
        }
        // SAFETY: within the application's buffer of `len` bytes (contract of read_at).
        match unsafe { sys::pread(fd, buf.add(done), want, pos) } {
            Ok(n) => Ok(done + n),
            Err(e) if done == 0 => Err(e),
            Err(_) => Ok(done),
        }
    }
}
