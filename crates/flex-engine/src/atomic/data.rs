//! The data file as the protocol's [`DataDev`]: [`InodeData`] through the engine's
//! inode (mapping or kernel path), [`FdData`] through plain system calls.

use super::protocol::DataDev;
use crate::inode::{AppendAt, Inode};
use crate::persist;
use crate::sys::{self, Errno, Res};
use rustix::fd::RawFd;

/// The data file seen through the engine's inode (mapping or kernel path).
pub(crate) struct InodeData<'a> {
    pub inode: &'a Inode,
    pub fd: RawFd,
}

impl DataDev for InodeData<'_> {
    fn size(&self) -> Res<u64> {
        // The kernel's (another process may have changed it while the file is shared).
        self.inode.refresh(self.fd)
    }
    unsafe fn append_user(&mut self, src: *const u8, len: usize) -> Res<(usize, u64)> {
        // SAFETY: forwarded contract.
        let (n, end) = unsafe {
            self.inode
                .kernel_write(self.fd, &[(src, len)], 0, Some(AppendAt::Private))
        }?;
        Ok((n, end - n as u64))
    }
    unsafe fn read_raw(&self, off: u64, dst: *mut u8, len: usize) -> Res<usize> {
        // SAFETY: forwarded contract.
        unsafe { self.inode.read_at(self.fd, dst, len, off) }
    }
    unsafe fn write_raw(&mut self, off: u64, src: *const u8, len: usize) -> Res<()> {
        // SAFETY: forwarded contract.
        unsafe { self.write(off, src, len, false) }
    }
    unsafe fn write_stream(&mut self, off: u64, src: *const u8, len: usize) -> Res<()> {
        // SAFETY: forwarded contract.
        unsafe { self.write(off, src, len, true) }
    }
    unsafe fn write_user(&mut self, off: u64, src: *const u8, len: usize) -> Res<usize> {
        // SAFETY: forwarded contract.
        unsafe { self.write_n(off, src, len, false) }
    }
    fn settle(&mut self) {
        persist::fence();
    }
    unsafe fn write_many(&mut self, ranges: &[(u64, *const u8, usize)]) -> Res<()> {
        // SAFETY: forwarded contract.
        let done = unsafe { self.inode.overwrite_many(ranges) };
        for &(off, src, len) in &ranges[done..] {
            // SAFETY: forwarded contract.
            unsafe { self.write(off, src, len, true) }?;
        }
        Ok(())
    }
    fn set_len(&mut self, len: u64) -> Res<()> {
        let fd = self.fd;
        self.inode
            .set_len(Some(fd), len, || sys::ftruncate(fd, len))
    }
    fn exact(&mut self) -> Res<()> {
        self.inode.trim(self.fd)
    }
    fn sync(&mut self) -> Res<()> {
        self.inode.sync(self.fd, true)
    }
}

impl InodeData<'_> {
    /// # Safety
    /// As [`DataDev::write_raw`].
    unsafe fn write(&mut self, off: u64, src: *const u8, len: usize, stream: bool) -> Res<()> {
        // SAFETY: forwarded contract.
        if unsafe { self.write_n(off, src, len, stream) }? != len {
            return Err(Errno::NOSPC);
        }
        Ok(())
    }

    /// # Safety
    /// As [`DataDev::write_user`]. Returns the count written (short: a fault, or no space).
    unsafe fn write_n(&mut self, off: u64, src: *const u8, len: usize, stream: bool) -> Res<usize> {
        let end = off + len as u64;
        let bufs = [(src, len)];
        // SAFETY: forwarded contract.
        let (n, _) = unsafe {
            if self.inode.is_mapped(true) && !self.inode.kernel_extends(end, false) {
                self.inode.write_at(self.fd, &bufs, off, None, stream)
            } else {
                self.inode.kernel_write(self.fd, &bufs, off, None)
            }
        }?;
        Ok(n)
    }
}

/// The data file through plain system calls (recovery without an inode: `flexio recover`).
pub(crate) struct FdData(pub RawFd);

impl DataDev for FdData {
    fn size(&self) -> Res<u64> {
        Ok(sys::fstat(self.0)?.st_size as u64)
    }
    unsafe fn read_raw(&self, off: u64, dst: *mut u8, len: usize) -> Res<usize> {
        // SAFETY: forwarded contract.
        unsafe { sys::pread(self.0, dst, len, off) }
    }
    unsafe fn write_raw(&mut self, off: u64, src: *const u8, len: usize) -> Res<()> {
        let mut done = 0;
        while done < len {
            // SAFETY: forwarded contract, within the buffer.
            let n = unsafe { sys::pwrite(self.0, src.add(done), len - done, off + done as u64) }?;
            if n == 0 {
                return Err(Errno::NOSPC);
            }
            done += n;
        }
        Ok(())
    }
    fn set_len(&mut self, len: u64) -> Res<()> {
        sys::ftruncate(self.0, len)
    }
    fn sync(&mut self) -> Res<()> {
        sys::fdatasync(self.0)
    }
}
