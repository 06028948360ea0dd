//! [`DataDev`]: the data file as the protocol sees it (the engine's inode, a plain
//! descriptor for recovery, or the persistence simulator).

use crate::sys::Res;

/// The data file as the protocol sees it: its committed bytes and size.
pub trait DataDev {
    /// The data file's current size.
    fn size(&self) -> Res<u64>;
    /// Read committed bytes; returns the count (short at the data file's end).
    ///
    /// # Safety
    /// `dst` must be valid for `len` bytes or fault inside a guarded copy.
    unsafe fn read_raw(&self, off: u64, dst: *mut u8, len: usize) -> Res<usize>;
    /// Write bytes (not durable before [`DataDev::sync`]).
    ///
    /// # Safety
    /// `src` must be valid for `len` bytes.
    unsafe fn write_raw(&mut self, off: u64, src: *const u8, len: usize) -> Res<()>;
    /// A bulk write of bytes nobody reads soon (applying the log): the same as
    /// [`DataDev::write_raw`], possibly with streaming stores that only become visible and
    /// ordered at the next [`DataDev::settle`].
    ///
    /// # Safety
    /// As [`DataDev::write_raw`].
    unsafe fn write_stream(&mut self, off: u64, src: *const u8, len: usize) -> Res<()> {
        // SAFETY: forwarded contract.
        unsafe { self.write_raw(off, src, len) }
    }
    /// Order the streaming stores of [`DataDev::write_stream`] before what follows.
    fn settle(&mut self) {}
    /// A batch is applied: the data file's size as others see it becomes the logical one
    /// (an over-allocated DAX file drops its slack), as after a non-atomic fsync.
    fn exact(&mut self) -> Res<()> {
        Ok(())
    }
    /// Write many ranges as [`DataDev::write_stream`] would, in order (they may overlap:
    /// the later wins).
    ///
    /// # Safety
    /// Each source valid for its length.
    unsafe fn write_many(&mut self, ranges: &[(u64, *const u8, usize)]) -> Res<()> {
        for &(off, src, len) in ranges {
            // SAFETY: forwarded contract.
            unsafe { self.write_stream(off, src, len) }?;
        }
        Ok(())
    }
    /// Write an application's bytes: as [`DataDev::write_raw`], but a source that faults
    /// part way writes the bytes before the fault and returns their count (as the kernel's
    /// short write); EFAULT when none could be read.
    ///
    /// # Safety
    /// `src` must be valid for `len` bytes or fault inside a guarded copy.
    unsafe fn write_user(&mut self, off: u64, src: *const u8, len: usize) -> Res<usize> {
        // SAFETY: forwarded contract.
        unsafe { self.write_raw(off, src, len) }?;
        Ok(len)
    }
    /// Append an application's bytes at the end of file, atomically with respect to other
    /// processes' appends (the kernel's O_APPEND). Returns the count and where they went.
    ///
    /// # Safety
    /// As [`DataDev::write_user`].
    unsafe fn append_user(&mut self, src: *const u8, len: usize) -> Res<(usize, u64)> {
        let off = self.size()?;
        // SAFETY: forwarded contract.
        let n = unsafe { self.write_user(off, src, len) }?;
        Ok((n, off))
    }
    fn set_len(&mut self, len: u64) -> Res<()>;
    /// Make every byte and the size durable.
    fn sync(&mut self) -> Res<()>;
}
