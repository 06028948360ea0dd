//! Direct kernel probes that do not go through the engine: what the file system offers.

use std::ffi::CString;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::io::AsRawFd;
use std::path::Path;

const MAP_SHARED_VALIDATE: libc::c_int = 0x03;
const MAP_SYNC: libc::c_int = 0x80000;
const STATX_ATTR_DAX: u64 = 0x0020_0000;

/// Tries a one-page MAP_SHARED_VALIDATE|MAP_SYNC mapping of `file` (which must be at least
/// one page long). Ok(()) if the kernel grants it.
pub fn map_sync(file: &std::fs::File) -> io::Result<()> {
    // SAFETY: a fresh mapping of a file we own, at an address the kernel picks; nothing
    // else refers to it and it is unmapped right below.
    let p = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            4096,
            libc::PROT_READ | libc::PROT_WRITE,
            MAP_SHARED_VALIDATE | MAP_SYNC,
            file.as_raw_fd(),
            0,
        )
    };
    if p == libc::MAP_FAILED {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `p` is the 4096-byte mapping created above and not used afterwards.
    unsafe { libc::munmap(p, 4096) };
    Ok(())
}

/// Whether the kernel reports STATX_ATTR_DAX for `path`.
pub fn statx_dax(path: &Path) -> io::Result<bool> {
    let c = CString::new(path.as_os_str().as_bytes())?;
    // SAFETY: statx only writes into this buffer; all-zero is a valid `statx`.
    let mut st: libc::statx = unsafe { std::mem::zeroed() };
    // SAFETY: `c` is a NUL-terminated path and `st` a valid, writable statx buffer.
    let r = unsafe {
        libc::statx(
            libc::AT_FDCWD,
            c.as_ptr(),
            0,
            libc::STATX_BASIC_STATS,
            &mut st,
        )
    };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(st.stx_attributes & st.stx_attributes_mask & STATX_ATTR_DAX != 0)
}
