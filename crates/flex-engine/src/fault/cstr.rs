//! Reading a NUL-terminated string (a path, an fopen mode) out of program memory without
//! trusting the pointer: the bytes are copied with the guarded [`copy`](super::copy) into a
//! buffer of ours, a piece at a time that never crosses a page boundary, so a string that
//! ends right before an unreadable page is read whole and one that runs into it is EFAULT.
//!
//! Same answers as the kernel's `strncpy_from_user` for a path (`getname`): no NUL within
//! the buffer's length (PATH_MAX = 4096 bytes including the NUL for a path) is
//! ENAMETOOLONG; a fault before the NUL, or a string in or reaching the kernel's half of
//! the address space, is EFAULT. Bytes past the bound are never read.

use core::ffi::{c_char, CStr};
use core::mem::MaybeUninit;

use crate::sys::{Errno, Res};

/// The kernel's PATH_MAX: the longest path it reads, its NUL included.
pub const PATH_MAX: usize = 4096;

/// Bytes per guarded copy: one covers most paths, and a string ending early costs little.
const CHUNK: usize = 256;
const PAGE: usize = 4096;
/// The end of user space as far as a string may reach. The kernel's bound (TASK_SIZE_MAX)
/// is lower, but the addresses between it and here are non-canonical or never mapped, so
/// reading them faults inside the guarded copy; above it lie kernel addresses, one of
/// which (the vsyscall page) may be readable from user mode, so they are refused unread.
const USER_END: usize = 1 << 63;

/// Copy the NUL-terminated string at `src` into `buf`, reading at most `buf.len()` bytes;
/// returns it (NUL included, in `buf`). EFAULT if a byte before the NUL cannot be read
/// (NULL, `(char*)1`, an unmapped or PROT_NONE page, a kernel address), ENAMETOOLONG if
/// there is no NUL in the first `buf.len()` bytes. Installs the fault handler if it is not
/// yet (see [`install`](super::install)): call it where the engine could be created.
///
/// # Safety
/// `src` may be any address. Faults are recovered only while our handler is the process's
/// SIGSEGV/SIGBUS action (an application that replaced it with a raw `rt_sigaction`
/// dies on a bad pointer, as with an unguarded read). Readable memory is read as the
/// kernel would read it (no regard for side effects of device mappings).
pub unsafe fn copy_cstr(src: *const c_char, buf: &mut [MaybeUninit<u8>]) -> Res<&CStr> {
    super::install();
    let cap = buf.len();
    let base = src as usize;
    let mut got = 0;
    while got < cap {
        let at = base.wrapping_add(got);
        if at >= USER_END {
            return Err(Errno::FAULT);
        }
        // Never across a page (a page is readable whole or not at all), nor past the bound.
        let n = CHUNK
            .min(PAGE - at % PAGE)
            .min(cap - got)
            .min(USER_END - at);
        // SAFETY: `buf[got..got + n]` is ours and writable (n <= cap - got); the source is
        // the program's and a bad one faults inside the guarded copy, which the handler
        // (installed above) turns into a short count. No overlap: `buf` is our memory.
        let left = unsafe { super::copy(buf.as_mut_ptr().add(got).cast(), at as *const u8, n) };
        let done = n - left;
        // SAFETY: the copy initialised `buf[got..got + done]` (its count is conservative);
        // memchr reads only those bytes (libc's, SIMD; a byte loop was 100x slower here).
        let nul = unsafe { libc::memchr(buf.as_ptr().add(got).cast(), 0, done) };
        if !nul.is_null() {
            let len = nul as usize - buf.as_ptr() as usize + 1;
            // SAFETY: `buf[..len]` was initialised by this and the earlier copies.
            let bytes = unsafe { core::slice::from_raw_parts(buf.as_ptr().cast::<u8>(), len) };
            // SAFETY: the first NUL of `bytes` is its last byte (earlier pieces had none).
            return Ok(unsafe { CStr::from_bytes_with_nul_unchecked(bytes) });
        }
        if left != 0 {
            return Err(Errno::FAULT);
        }
        got += n;
    }
    Err(Errno::NAMETOOLONG)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `pages` readable pages followed by one PROT_NONE page; unmapped on drop.
    struct Mapping {
        base: *mut u8,
        len: usize,
        readable: usize,
    }

    impl Mapping {
        fn new(pages: usize) -> Mapping {
            let len = (pages + 1) * PAGE;
            // SAFETY: an anonymous private mapping of fresh memory; no existing memory is
            // affected. The result is checked.
            let base = unsafe {
                libc::mmap(
                    core::ptr::null_mut(),
                    len,
                    libc::PROT_READ | libc::PROT_WRITE,
                    libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                    -1,
                    0,
                )
            };
            assert_ne!(base, libc::MAP_FAILED);
            let readable = pages * PAGE;
            // SAFETY: the last page of the mapping just created.
            let r = unsafe {
                libc::mprotect(
                    base.cast::<u8>().add(readable).cast(),
                    PAGE,
                    libc::PROT_NONE,
                )
            };
            assert_eq!(r, 0);
            Mapping {
                base: base.cast(),
                len,
                readable,
            }
        }
        /// Put `s` so that its last byte is the last readable byte; returns its start.
        fn place_at_end(&mut self, s: &[u8]) -> *const c_char {
            assert!(s.len() <= self.readable);
            let at = self.readable - s.len();
            // SAFETY: `[at, readable)` lies in the readable, writable pages we mapped.
            unsafe {
                core::ptr::copy_nonoverlapping(s.as_ptr(), self.base.add(at), s.len());
                self.base.add(at).cast()
            }
        }
        fn none_page(&self) -> *const c_char {
            // SAFETY: the PROT_NONE page of our mapping (not dereferenced here).
            unsafe { self.base.add(self.readable).cast() }
        }
    }

    impl Drop for Mapping {
        fn drop(&mut self) {
            // SAFETY: the mapping we created, no longer referenced.
            unsafe { libc::munmap(self.base.cast(), self.len) };
        }
    }

    fn read(p: *const c_char) -> Res<Vec<u8>> {
        let mut buf = [MaybeUninit::uninit(); PATH_MAX];
        // SAFETY: any address is allowed; faults are recovered by the handler.
        unsafe { copy_cstr(p, &mut buf) }.map(|s| s.to_bytes().to_vec())
    }

    #[test]
    fn ordinary_string() {
        assert_eq!(read(c"/tmp/some/file".as_ptr()).unwrap(), b"/tmp/some/file");
        assert_eq!(read(c"".as_ptr()).unwrap(), b"");
    }

    #[test]
    fn bad_pointers_are_efault() {
        assert_eq!(read(core::ptr::null()), Err(Errno::FAULT));
        assert_eq!(read(core::ptr::dangling()), Err(Errno::FAULT));
        assert_eq!(read(4095 as *const c_char), Err(Errno::FAULT));
        // Kernel addresses: the direct map, the vsyscall page, the last byte.
        for a in [
            0xffff_8880_0000_0000usize,
            0xffff_ffff_ff60_0000,
            usize::MAX,
        ] {
            assert_eq!(read(a as *const c_char), Err(Errno::FAULT), "{a:#x}");
        }
        // Non-canonical.
        assert_eq!(
            read(0x0000_8000_0000_0000 as *const c_char),
            Err(Errno::FAULT)
        );
        assert_eq!(
            read(0x7fff_ffff_ffff_f000 as *const c_char),
            Err(Errno::FAULT)
        );
        let m = Mapping::new(1);
        assert_eq!(read(m.none_page()), Err(Errno::FAULT));
    }

    #[test]
    fn string_ending_at_page_end() {
        let mut m = Mapping::new(2);
        // Every length up to two pages, so the string also starts mid-page and spans a
        // page boundary before the NUL on the last readable byte.
        for len in [0usize, 1, 2, 63, 64, 255, 256, 257, 4095, 4096, 5000, 8190] {
            let mut s = vec![b'x'; len];
            s.push(0);
            let p = m.place_at_end(&s);
            let got = read(p);
            if len < PATH_MAX {
                assert_eq!(got.unwrap().len(), len, "len {len}");
            } else {
                assert_eq!(got, Err(Errno::NAMETOOLONG), "len {len}");
            }
        }
    }

    #[test]
    fn string_running_into_prot_none_is_efault() {
        let mut m = Mapping::new(2);
        for len in [1usize, 100, 256, 257, 4095] {
            let p = m.place_at_end(&vec![b'y'; len]);
            assert_eq!(read(p), Err(Errno::FAULT), "len {len}");
        }
        // PATH_MAX bytes or more before the fault: the kernel stops at the bound first.
        for len in [4096usize, 5000] {
            let p = m.place_at_end(&vec![b'y'; len]);
            assert_eq!(read(p), Err(Errno::NAMETOOLONG), "len {len}");
        }
    }

    #[test]
    fn path_max_bound() {
        let mut s = vec![b'a'; 4095];
        s.push(0);
        assert_eq!(read(s.as_ptr().cast()).unwrap().len(), 4095);
        let mut s = vec![b'a'; 4096];
        s.push(0);
        assert_eq!(read(s.as_ptr().cast()), Err(Errno::NAMETOOLONG));
        // A smaller bound for other strings.
        let mut small = [MaybeUninit::uninit(); 4];
        // SAFETY: a valid string.
        assert_eq!(
            unsafe { copy_cstr(c"abc".as_ptr(), &mut small) }
                .unwrap()
                .to_bytes(),
            b"abc"
        );
        // SAFETY: as above.
        assert_eq!(
            unsafe { copy_cstr(c"abcd".as_ptr(), &mut small) },
            Err(Errno::NAMETOOLONG)
        );
    }
}
