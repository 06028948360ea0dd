//! What the workloads own at the libc level: file descriptors, page-aligned buffers and
//! read-only mappings, each released on drop, and the errors of short calls.

use std::ffi::CString;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use anyhow::Context;

/// An owned file descriptor, closed with `libc::close` on drop.
pub(super) struct Fd(pub(super) libc::c_int);

impl Fd {
    pub(super) fn open(path: &Path, flags: libc::c_int, mode: libc::mode_t) -> anyhow::Result<Fd> {
        let c = cstring(path)?;
        // SAFETY: c is a valid NUL-terminated path; open does not keep the pointer.
        let fd = unsafe { libc::open(c.as_ptr(), flags | libc::O_CLOEXEC, mode as libc::c_uint) };
        if fd < 0 {
            return Err(io::Error::last_os_error())
                .with_context(|| format!("open {}", path.display()));
        }
        Ok(Fd(fd))
    }
}

impl Drop for Fd {
    fn drop(&mut self) {
        // SAFETY: we own this descriptor and close it exactly once.
        unsafe { libc::close(self.0) };
    }
}

/// A page-aligned IO buffer filled with a pattern.
pub(super) struct Buffer {
    pub(super) ptr: *mut u8,
    layout: std::alloc::Layout,
}

// SAFETY: the buffer is plain owned memory; only its owning op touches it.
unsafe impl Send for Buffer {}

impl Buffer {
    pub(super) fn new(len: usize, pattern: u8) -> Buffer {
        let layout = std::alloc::Layout::from_size_align(len.max(1), 4096).expect("buffer layout");
        // SAFETY: the layout has a non-zero size.
        let ptr = unsafe { std::alloc::alloc(layout) };
        if ptr.is_null() {
            std::alloc::handle_alloc_error(layout);
        }
        // SAFETY: ptr points to layout.size() writable bytes; filling them also faults
        // the pages in before the timed part.
        unsafe { std::ptr::write_bytes(ptr, pattern | 1, layout.size()) };
        Buffer { ptr, layout }
    }
}

impl Drop for Buffer {
    fn drop(&mut self) {
        // SAFETY: ptr was allocated with this layout and is freed once.
        unsafe { std::alloc::dealloc(self.ptr, self.layout) };
    }
}

/// A read-only shared mapping of a whole file, populated up front.
pub(super) struct Mapping {
    pub(super) ptr: *mut u8,
    len: usize,
}

// SAFETY: the mapping is read-only and outlives every thread that reads it (Arc).
unsafe impl Send for Mapping {}
// SAFETY: as above: concurrent reads of a read-only mapping are fine.
unsafe impl Sync for Mapping {}

impl Mapping {
    pub(super) fn new(path: &Path, len: u64) -> anyhow::Result<Mapping> {
        let fd = Fd::open(path, libc::O_RDONLY, 0)?;
        let len = usize::try_from(len)?;
        // SAFETY: mapping a valid fd read-only; the result is checked against MAP_FAILED.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ,
                libc::MAP_SHARED | libc::MAP_POPULATE,
                fd.0,
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(io::Error::last_os_error()).context("mmap");
        }
        Ok(Mapping {
            ptr: ptr.cast(),
            len,
        })
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: ptr/len come from a successful mmap and are unmapped once.
        unsafe { libc::munmap(self.ptr.cast(), self.len) };
    }
}

pub(super) fn cstring(p: &Path) -> anyhow::Result<CString> {
    CString::new(p.as_os_str().as_bytes()).context("path with a NUL byte")
}

pub(super) fn short_io(n: isize, call: &str, off: libc::off_t) -> anyhow::Error {
    if n < 0 {
        anyhow::Error::new(io::Error::last_os_error()).context(format!("{call} at {off}"))
    } else {
        anyhow::anyhow!("short {call} at {off}: {n} bytes")
    }
}
