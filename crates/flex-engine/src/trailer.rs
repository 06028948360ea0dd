//! The logical-size trailer.
//!
//! To make appends a `memcpy`, flex grows a file in large steps, so the kernel's size
//! (`ksize`) runs ahead of the logical size (`lsize`). The logical size lives in a 64-byte
//! trailer in the last cache line of the over-allocated file:
//! - it is in the page cache (or on DAX, in persistent memory), so other processes that map
//!   the file and a crash (kill -9, or a power cut once flushed) all see it;
//! - `flexio recover`, and the next open by flex, truncate the file to `lsize` when the
//!   trailer is valid and no live process holds the file's trailer lock.
//!
//! Layout (little endian u64s): magic, lsize, ksize, ino, check(magic^ksize^ino^SALT), 0, 0, 0.
//! `lsize` is one aligned 8-byte store: atomic with respect to crashes.

use crate::sys::{self, Errno, Res};
use rustix::fd::RawFd;

pub const SIZE: u64 = 64;
const MAGIC: u64 = 0x5846_4c45_5853_5a31; // "1ZSXELFX"
const SALT: u64 = 0x9e37_79b9_7f4a_7c15;
/// Byte offset of the one-byte OFD lock that a live over-allocating writer holds (read lock)
/// so that recovery (write lock) never trims a file in use. Far above any real data or
/// application lock range.
pub const LOCK_AT: u64 = 1 << 62;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Trailer {
    pub lsize: u64,
    pub ksize: u64,
    pub ino: u64,
}

impl Trailer {
    pub fn encode(&self) -> [u8; SIZE as usize] {
        let mut b = [0u8; SIZE as usize];
        let words = [
            MAGIC,
            self.lsize,
            self.ksize,
            self.ino,
            MAGIC ^ self.ksize ^ self.ino ^ SALT,
        ];
        for (i, w) in words.iter().enumerate() {
            b[i * 8..i * 8 + 8].copy_from_slice(&w.to_le_bytes());
        }
        b
    }

    /// Parse a trailer read from offset `ksize - 64` of a file of kernel size `ksize`.
    pub fn decode(b: &[u8], ksize: u64, ino: u64) -> Option<Trailer> {
        if b.len() < SIZE as usize {
            return None;
        }
        let w = |i: usize| u64::from_le_bytes(b[i * 8..i * 8 + 8].try_into().unwrap_or([0; 8]));
        let t = Trailer {
            lsize: w(1),
            ksize: w(2),
            ino: w(3),
        };
        let valid = w(0) == MAGIC
            && w(4) == MAGIC ^ t.ksize ^ t.ino ^ SALT
            && t.ksize == ksize
            && t.ino == ino
            && t.lsize <= ksize - SIZE;
        valid.then_some(t)
    }

    /// Offset of the `lsize` word inside the file.
    pub fn lsize_offset(ksize: u64) -> u64 {
        ksize - SIZE + 8
    }
}

/// Outcome of [`recover_fd`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Recovery {
    /// No trailer: the file's size is already exact.
    Clean,
    /// A crashed writer left it over-allocated; truncated from `from` to `to`.
    Trimmed { from: u64, to: u64 },
    /// A live process is over-allocating this file right now: its logical size is `lsize`.
    InUse { lsize: u64 },
}

/// Read the trailer of an open file, if it has a valid one.
pub fn read(fd: RawFd, ksize: u64, ino: u64) -> Res<Option<Trailer>> {
    if ksize < SIZE {
        return Ok(None);
    }
    let mut b = [0u8; SIZE as usize];
    // SAFETY: `b` is our own 64-byte buffer.
    let n = unsafe { sys::pread(fd, b.as_mut_ptr(), b.len(), ksize - SIZE) }?;
    Ok(if n == b.len() {
        Trailer::decode(&b, ksize, ino)
    } else {
        None
    })
}

/// Trim a file left over-allocated by a crashed writer. Idempotent: a crash during
/// recovery leaves either the old state (trailer intact) or the exact size.
/// `fd` must be open for writing.
pub fn recover_fd(fd: RawFd) -> Res<Recovery> {
    let st = sys::fstat(fd)?;
    let (ksize, ino) = (st.st_size as u64, st.st_ino);
    let Some(t) = read(fd, ksize, ino)? else {
        return Ok(Recovery::Clean);
    };
    // A live writer holds a read lock on LOCK_AT: then the trailer is its shared state.
    match sys::ofd_lock(fd, LOCK_AT, true, true) {
        Ok(()) => {}
        Err(Errno::AGAIN) | Err(Errno::ACCESS) => return Ok(Recovery::InUse { lsize: t.lsize }),
        Err(e) => return Err(e),
    }
    let r = sys::ftruncate(fd, t.lsize).and_then(|_| sys::fdatasync(fd));
    let _ = sys::ofd_lock(fd, LOCK_AT, true, false);
    r?;
    Ok(Recovery::Trimmed {
        from: ksize,
        to: t.lsize,
    })
}

/// Open `path` and recover it (used by `flexio recover` and the Rust API).
pub fn recover_path(path: &std::ffi::CStr) -> Res<Recovery> {
    let fd = sys::openat(
        libc::AT_FDCWD,
        path,
        libc::O_RDWR | libc::O_CLOEXEC | libc::O_NOFOLLOW,
        0,
    )?;
    let r = recover_fd(fd);
    let _ = sys::close(fd);
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roundtrip_and_rejects_mismatch() {
        let t = Trailer {
            lsize: 100,
            ksize: 1 << 20,
            ino: 7,
        };
        let b = t.encode();
        assert_eq!(Trailer::decode(&b, 1 << 20, 7), Some(t));
        assert_eq!(Trailer::decode(&b, 2 << 20, 7), None, "wrong ksize");
        assert_eq!(Trailer::decode(&b, 1 << 20, 8), None, "wrong inode");
        let mut c = b;
        c[0] ^= 1;
        assert_eq!(Trailer::decode(&c, 1 << 20, 7), None, "bad magic");
        let mut d = b;
        d[8..16].copy_from_slice(&(2u64 << 20).to_le_bytes());
        assert_eq!(
            Trailer::decode(&d, 1 << 20, 7),
            None,
            "lsize beyond trailer"
        );
    }
}
