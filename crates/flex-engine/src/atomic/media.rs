//! The log's media: [`MapLog`], the log file mapped (the engine's), and [`FileLog`],
//! the log file through plain system calls (recovery without an inode).

use super::log::Media;
use crate::fault;
use crate::persist::{Granularity, Strategy};
use crate::sys::{self, Errno, Res};
use rustix::fd::RawFd;
use rustix::mm::{MapFlags, ProtFlags};

/// Virtual address space reserved for one log mapping (costs nothing until used).
const LOG_VIRT: usize = 1 << 30;

/// The log file, mapped: stores are memory copies; on DAX (MAP_SYNC) non-temporal stores
/// or flushes plus a fence make them durable, elsewhere `fdatasync` of the log.
pub(crate) struct MapLog {
    pub(super) fd: RawFd,
    base: *mut u8,
    len: u64,
    /// How stores into the log become durable (from the mapping's granularity).
    persist: &'static Strategy,
    /// Sizes up to this are known to be within the file system's largest file (changes
    /// are logged before the kernel sees them, so flex asks: see [`MapLog::limit`]).
    pub(super) fits: u64,
}

// SAFETY: the mapping is owned by this struct and only touched under the file's mutex.
unsafe impl Send for MapLog {}

impl MapLog {
    pub(super) fn new(fd: RawFd) -> Res<MapLog> {
        // Past the mapping the log holds nothing (a crash during a size probe can leave
        // it longer, sparse: see `fs_allows`).
        let len = (sys::fstat(fd)?.st_size as u64).min(LOG_VIRT as u64);
        let prot = ProtFlags::READ | ProtFlags::WRITE;
        // SAFETY: a fresh shared mapping of our own log descriptor at an address of the
        // kernel's choice; pages beyond the file's end are never touched (ensure grows it).
        let (p, gran) = match unsafe {
            rustix::mm::mmap(
                std::ptr::null_mut(),
                LOG_VIRT,
                prot,
                MapFlags::SHARED_VALIDATE | MapFlags::SYNC,
                sys::bfd(fd),
                0,
            )
        } {
            Ok(p) => (p, Granularity::CacheLine),
            // SAFETY: as above, without MAP_SYNC.
            Err(_) => (
                unsafe {
                    rustix::mm::mmap(
                        std::ptr::null_mut(),
                        LOG_VIRT,
                        prot,
                        MapFlags::SHARED,
                        sys::bfd(fd),
                        0,
                    )
                }?,
                Granularity::Page,
            ),
        };
        Ok(MapLog {
            fd,
            base: p.cast(),
            fits: len,
            len,
            persist: Strategy::of(gran),
        })
    }
}

impl MapLog {
    /// Move the log out (to keep it as a spare), leaving an inert medium in its place: no
    /// bytes, no mapping, no descriptor; every store is out of bounds and ignored, every
    /// barrier fails. Its core must be retired ([`Core::retire`]) with it.
    ///
    /// [`Core::retire`]: super::protocol::Core::retire
    pub(super) fn take_out(&mut self) -> MapLog {
        let empty = MapLog {
            fd: -1,
            base: std::ptr::null_mut(),
            len: 0,
            persist: self.persist,
            fits: 0,
        };
        std::mem::replace(self, empty)
    }

    /// The bytes the log file holds.
    pub(super) fn bytes(&self) -> u64 {
        self.len
    }

    /// Is `[off, off + len)` inside the log (an inert medium has nothing)?
    fn inside(&self, off: u64, len: usize) -> bool {
        off.checked_add(len as u64)
            .is_some_and(|end| end <= self.len)
    }
}

impl Drop for MapLog {
    fn drop(&mut self) {
        if self.base.is_null() {
            return;
        }
        // SAFETY: our own mapping; nobody uses it any more.
        let _ = unsafe { rustix::mm::munmap(self.base.cast(), LOG_VIRT) };
        match crate::runtime::engine_if_started() {
            Some(e) => e.close_private(self.fd),
            None => {
                let _ = sys::close(self.fd);
            }
        }
    }
}

impl MapLog {
    /// Does the file system take a file of `x` bytes (its s_maxbytes)? Asked of the log
    /// file, which lives beside the data: grown to `x` (sparse) and put back.
    fn fs_allows(&self, x: u64) -> bool {
        if x <= self.len {
            return true;
        }
        let ok = sys::ftruncate(self.fd, x).is_ok();
        if ok {
            let _ = sys::ftruncate(self.fd, self.len);
        }
        ok
    }

    /// The largest end a change reaching `end` may have: `end` itself, or less when it
    /// passes the file system's largest file or RLIMIT_FSIZE (the kernel's write stops
    /// short there, its truncate fails with EFBIG). Sizes known to fit are remembered,
    /// and asked for doubled, so a growing file asks O(log size) times.
    pub(super) fn limit(&mut self, end: u64) -> u64 {
        let fits = self.fits;
        if end <= fits {
            return end;
        }
        let rl = match rustix::process::getrlimit(rustix::process::Resource::Fsize).current {
            Some(v) => v.min(i64::MAX as u64),
            None => i64::MAX as u64,
        };
        let end = end.min(rl);
        if end <= fits {
            return end;
        }
        let ask = end
            .saturating_mul(2)
            .max(end.saturating_add(64 << 20))
            .min(rl);
        if self.fs_allows(ask) {
            self.fits = self.fits.max(ask);
            return end;
        }
        if self.fs_allows(end) {
            self.fits = self.fits.max(end);
            return end;
        }
        // Past the largest file: find it (rare).
        let (mut lo, mut hi) = (fits, end);
        while hi - lo > 1 {
            let mid = lo + (hi - lo) / 2;
            if self.fs_allows(mid) {
                lo = mid;
            } else {
                hi = mid;
            }
        }
        self.fits = self.fits.max(lo);
        lo
    }
}

impl Media for MapLog {
    fn len(&self) -> u64 {
        self.len
    }
    fn ensure(&mut self, len: u64) -> Res<()> {
        if len <= self.len {
            return Ok(());
        }
        if len > LOG_VIRT as u64 {
            return Err(Errno::FBIG);
        }
        match rustix::fs::fallocate(
            sys::bfd(self.fd),
            rustix::fs::FallocateFlags::empty(),
            self.len,
            len - self.len,
        ) {
            Ok(()) | Err(Errno::OPNOTSUPP) => {}
            Err(e) => return Err(e),
        }
        if sys::fstat(self.fd)?.st_size < len as i64 {
            sys::ftruncate(self.fd, len)?;
        }
        if self.persist.user_durable {
            // The new size is metadata: durable before the log relies on it.
            sys::fsync(self.fd)?;
        }
        self.len = len;
        Ok(())
    }
    fn read(&self, off: u64, buf: &mut [u8]) {
        let n = (self.len.saturating_sub(off) as usize).min(buf.len());
        if n == 0 {
            return;
        }
        // SAFETY: [off, off+n) lies inside the log file and its mapping.
        unsafe { fault::copy(buf.as_mut_ptr(), self.base.add(off as usize), n) };
    }
    fn store(&mut self, off: u64, data: &[u8]) {
        if !self.inside(off, data.len()) {
            return;
        }
        // SAFETY: inside the log and its mapping (checked above).
        unsafe { fault::copy(self.base.add(off as usize), data.as_ptr(), data.len()) };
    }
    unsafe fn store_raw(&mut self, off: u64, src: *const u8, len: usize) -> usize {
        if !self.inside(off, len) {
            return len;
        }
        // SAFETY: destination inside the log (checked above); the source is the
        // application's buffer, and a fault on it is reported as a remainder by the
        // guarded copy.
        unsafe {
            self.persist
                .copy(self.base.add(off as usize), src, len, false)
        }
    }
    unsafe fn load_raw(&self, off: u64, dst: *mut u8, len: usize) -> usize {
        if !self.inside(off, len) {
            return len;
        }
        // SAFETY: source inside the log (checked above); the destination is the
        // application's buffer.
        unsafe { fault::copy(dst, self.base.add(off as usize), len) }
    }
    fn ptr(&self, off: u64, len: u64) -> Option<*const u8> {
        // SAFETY: in bounds of the mapping when the check passes.
        (off.checked_add(len)? <= self.len)
            .then(|| unsafe { self.base.add(off as usize) as *const u8 })
    }
    fn flush(&mut self, off: u64, len: u64) {
        if !self.inside(off, len as usize) {
            return;
        }
        // SAFETY: inside the log mapping (checked above).
        unsafe {
            self.persist
                .flush(self.base.add(off as usize), len as usize)
        };
    }
    fn barrier(&mut self) -> Res<()> {
        self.persist.barrier(self.fd)
    }
}

/// The log through plain system calls (recovery only).
pub(super) struct FileLog {
    pub(super) fd: RawFd,
    pub(super) len: u64,
}

impl Media for FileLog {
    fn len(&self) -> u64 {
        self.len
    }
    fn ensure(&mut self, len: u64) -> Res<()> {
        if len > self.len {
            sys::ftruncate(self.fd, len)?;
            self.len = len;
        }
        Ok(())
    }
    fn read(&self, off: u64, buf: &mut [u8]) {
        let mut done = 0;
        while done < buf.len() {
            // SAFETY: our own buffer.
            match unsafe {
                sys::pread(
                    self.fd,
                    buf[done..].as_mut_ptr(),
                    buf.len() - done,
                    off + done as u64,
                )
            } {
                Ok(0) | Err(_) => break,
                Ok(n) => done += n,
            }
        }
    }
    fn store(&mut self, off: u64, data: &[u8]) {
        // SAFETY: our own buffer.
        let _ = unsafe { sys::pwrite(self.fd, data.as_ptr(), data.len(), off) };
    }
    unsafe fn store_raw(&mut self, off: u64, src: *const u8, len: usize) -> usize {
        // SAFETY: forwarded contract; the kernel checks the buffer.
        match unsafe { sys::pwrite(self.fd, src, len, off) } {
            Ok(n) => len - n,
            Err(_) => len,
        }
    }
    unsafe fn load_raw(&self, off: u64, dst: *mut u8, len: usize) -> usize {
        // SAFETY: forwarded contract; the kernel checks the buffer.
        match unsafe { sys::pread(self.fd, dst, len, off) } {
            Ok(n) => len - n,
            Err(_) => len,
        }
    }
    fn ptr(&self, _off: u64, _len: u64) -> Option<*const u8> {
        None
    }
    fn flush(&mut self, _off: u64, _len: u64) {}
    fn barrier(&mut self) -> Res<()> {
        sys::fdatasync(self.fd)
    }
}
