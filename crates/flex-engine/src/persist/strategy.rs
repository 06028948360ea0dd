//! How the stores into one mapping become durable, chosen once, when the mapping is made.
//!
//! As in PMDK's libpmem2 (`persist_fn`, `flush_fn`, `drain_fn`, `memcpy_fn` picked at map
//! time from the granularity), a [`Strategy`] is a table of the operations a data path
//! needs: copy in, zero, flush, drain. The data paths call the table and never match on
//! the granularity themselves, so a new granularity is one new table here.
//!
//! | granularity | copy | streaming copy | zero | flush | drain | durable without the kernel |
//! |---|---|---|---|---|---|---|
//! | byte (eADR) | cached | NT | cached | none | sfence | yes |
//! | cache line (DAX + MAP_SYNC) | NT + head/tail flush | NT | NT | clwb/clflushopt | sfence | yes |
//! | page (page cache) | cached | NT | cached | none | none | no: fdatasync/msync |

use super::{fence, Granularity};
use crate::fault;

/// The persistence operations of one mapping. Every copy and zero returns the number of
/// bytes it could NOT store (a fault stopped it), as [`crate::fault::copy`] does.
#[derive(Clone, Copy)]
pub struct Strategy {
    pub granularity: Granularity,
    copy: unsafe fn(*mut u8, *const u8, usize) -> usize,
    copy_stream: unsafe fn(*mut u8, *const u8, usize) -> usize,
    zero: unsafe fn(*mut u8, usize) -> usize,
    flush: unsafe fn(*const u8, usize) -> usize,
    store_u64: unsafe fn(*mut u64, u64),
    drain: fn(),
    /// A drained store is durable: fsync need not ask the kernel when nothing but data
    /// changed.
    pub user_durable: bool,
}

/// No flush needed: the store is in the persistence domain once it is globally visible
/// (eADR), or durability waits for the kernel (page cache).
unsafe fn no_flush(_: *const u8, _: usize) -> usize {
    0
}

fn no_drain() {}

/// An aligned 8-byte store: the unit that is failure-atomic on persistent memory.
unsafe fn store_volatile(p: *mut u64, v: u64) {
    // SAFETY: the caller passes an aligned, writable, mapped word.
    unsafe { core::ptr::write_volatile(p, v) }
}

/// Byte granularity: the CPU caches are inside the persistence domain (eADR, PMDK's
/// `PMEM2_GRANULARITY_BYTE`); ordinary stores are durable once a fence orders them.
static BYTE: Strategy = Strategy {
    granularity: Granularity::Byte,
    copy: fault::copy,
    copy_stream: fault::copy_nt,
    zero: fault::zero,
    flush: no_flush,
    store_u64: store_volatile,
    drain: fence,
    user_durable: true,
};

/// Cache-line granularity: DAX with MAP_SYNC; a store is durable once its line is written
/// back (NT stores do that themselves) and a fence drains the write-pending queue.
static CACHE_LINE: Strategy = Strategy {
    granularity: Granularity::CacheLine,
    copy: fault::copy_nt,
    copy_stream: fault::copy_nt,
    zero: fault::zero_nt,
    flush: fault::flush,
    store_u64: store_volatile,
    drain: fence,
    user_durable: true,
};

/// Page granularity: the page cache; durability is the kernel's (fdatasync, msync). Large
/// streaming copies still use NT stores so they do not evict the program's cache.
static PAGE: Strategy = Strategy {
    granularity: Granularity::Page,
    copy: fault::copy,
    copy_stream: fault::copy_nt,
    zero: fault::zero,
    flush: no_flush,
    store_u64: store_volatile,
    drain: no_drain,
    user_durable: false,
};

impl Strategy {
    /// A table from its operations (the simulator's own, [`super::sim_map`]).
    #[cfg(feature = "sim")]
    pub(super) const fn table(
        granularity: Granularity,
        copy: unsafe fn(*mut u8, *const u8, usize) -> usize,
        zero: unsafe fn(*mut u8, usize) -> usize,
        flush: unsafe fn(*const u8, usize) -> usize,
        store_u64: unsafe fn(*mut u64, u64),
        drain: fn(),
    ) -> Strategy {
        Strategy {
            granularity,
            copy,
            copy_stream: copy,
            zero,
            flush,
            store_u64,
            drain,
            user_durable: true,
        }
    }

    /// The table of a granularity.
    pub fn of(granularity: Granularity) -> &'static Strategy {
        match granularity {
            Granularity::Byte => &BYTE,
            Granularity::CacheLine => &CACHE_LINE,
            Granularity::Page => &PAGE,
        }
    }

    /// Copy `len` bytes into the mapping (a streaming copy for large writes that will not
    /// be read back soon); durable after [`Strategy::drain`] where the granularity allows.
    /// Returns the bytes not copied.
    ///
    /// # Safety
    /// As [`crate::fault::copy`]: the ranges do not overlap, and faults are ones the
    /// handler recovers.
    #[inline]
    pub unsafe fn copy(&self, dst: *mut u8, src: *const u8, len: usize, stream: bool) -> usize {
        let f = if stream { self.copy_stream } else { self.copy };
        // SAFETY: forwarded caller contract; every table entry has fault::copy's contract.
        unsafe { f(dst, src, len) }
    }

    /// Zero `len` bytes of the mapping, with [`Strategy::copy`]'s durability contract.
    ///
    /// # Safety
    /// As [`crate::fault::zero`].
    #[inline]
    pub unsafe fn zero(&self, dst: *mut u8, len: usize) -> usize {
        // SAFETY: forwarded caller contract.
        unsafe { (self.zero)(dst, len) }
    }

    /// Write back the lines of `[addr, addr+len)` that ordinary stores changed (nothing
    /// where the granularity needs no flush). Returns non-zero when a fault stopped it.
    ///
    /// # Safety
    /// As [`crate::fault::flush`].
    #[inline]
    pub unsafe fn flush(&self, addr: *const u8, len: usize) -> usize {
        // SAFETY: forwarded caller contract.
        unsafe { (self.flush)(addr, len) }
    }

    /// Store the aligned word `p` (8 bytes: failure-atomic on persistent memory); durable
    /// after [`Strategy::persist`] of it.
    ///
    /// # Safety
    /// `p` is 8-byte aligned, inside a writable mapping.
    #[inline]
    pub unsafe fn store_u64(&self, p: *mut u64, v: u64) {
        // SAFETY: forwarded caller contract.
        unsafe { (self.store_u64)(p, v) }
    }

    /// Wait until the flushed and NT-stored lines are durable (nothing on page granularity).
    #[inline]
    pub fn drain(&self) {
        (self.drain)()
    }

    /// Make every drained store durable: nothing more where the granularity is durable in
    /// user space, else the kernel's fdatasync of `fd`.
    pub fn barrier(&self, fd: rustix::fd::RawFd) -> crate::sys::Res<()> {
        self.drain();
        if self.user_durable {
            Ok(())
        } else {
            crate::sys::fdatasync(fd)
        }
    }

    /// Flush then drain: ordinary stores to `[addr, addr+len)` become durable.
    ///
    /// # Safety
    /// As [`Strategy::flush`].
    #[inline]
    pub unsafe fn persist(&self, addr: *const u8, len: usize) -> usize {
        // SAFETY: forwarded caller contract.
        let rem = unsafe { self.flush(addr, len) };
        self.drain();
        rem
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_granularity_has_its_own_table() {
        for g in [Granularity::Byte, Granularity::CacheLine, Granularity::Page] {
            let s = Strategy::of(g);
            assert_eq!(s.granularity, g);
            assert_eq!(s.user_durable, g != Granularity::Page, "{g:?}");
        }
    }

    #[test]
    fn table_operations_store_what_they_say() {
        crate::fault::install();
        let src: Vec<u8> = (0..5000u32).map(|i| (i * 7) as u8).collect();
        for g in [Granularity::Byte, Granularity::CacheLine, Granularity::Page] {
            let s = Strategy::of(g);
            for stream in [false, true] {
                let mut dst = vec![0u8; 5100];
                // SAFETY: both buffers are ours, valid and disjoint.
                let rem = unsafe { s.copy(dst.as_mut_ptr().add(3), src.as_ptr(), 5000, stream) };
                s.drain();
                assert_eq!(rem, 0);
                assert_eq!(&dst[3..5003], &src[..], "{g:?} stream={stream}");
                assert_eq!(dst[..3], [0; 3]);
                // SAFETY: inside our buffer.
                let rem = unsafe { s.zero(dst.as_mut_ptr().add(10), 100) };
                // SAFETY: inside our buffer.
                let flushed = unsafe { s.persist(dst.as_ptr(), dst.len()) };
                assert_eq!((rem, flushed), (0, 0));
                assert!(dst[10..110].iter().all(|&b| b == 0), "{g:?}");
                assert_eq!(dst[110], src[107]);
            }
        }
    }
}
