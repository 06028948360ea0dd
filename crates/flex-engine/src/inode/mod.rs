//! Per-file state shared by every open description of one file in this process: the
//! mapping, the logical size, growth and trimming, and the read/write data paths.
//!
//! Locking: `size` (a mutex) serialises every change of size or mapping, and writes that
//! extend the file (so O_APPEND is atomic). `map` (a rwlock) is held shared while bytes
//! are copied to or from the mapping, exclusively while the mapping moves and during a
//! multi-buffer write (so `writev` is atomic with respect to other writes). Order: size, map.
//!
//! Invariants: bytes in `[lsize, ksize - 64)` are zero; in trailer mode the trailer sits
//! at `ksize - 64` and holds `lsize`; outside trailer mode `ksize == lsize` as far as this
//! process knows (another process may change it: short reads refresh it).
//!
//! The parts, one file per concern: `mapping` (the mapping, its creation and its moves),
//! `holes` (what is known of a file's holes), `fs` (the file system's facts), `size` (the
//! lease, adoption of the kernel's size, trimming, sync and truncation), `read` and `write`
//! (the data paths, growth included).

mod fs;
mod holes;
mod mapping;
mod read;
mod size;
mod write;

use crate::persist::{Granularity, Strategy};
use crate::trailer;
pub(crate) use fs::{dax_anywhere, FsFacts};
use mapping::MapWrite;
pub use mapping::Mapping;
use rustix::fd::RawFd;
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicU32, AtomicU64, AtomicUsize, Ordering::*};
use std::sync::{Mutex, MutexGuard, RwLock};

/// Largest count one read or write moves, as the kernel (MAX_RW_COUNT).
pub const MAX_RW: usize = 0x7fff_f000;
/// How an append goes to the kernel (see [`Inode::kernel_write`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AppendAt {
    /// write(2) and friends on the program's descriptor: the kernel checks (and then
    /// moves) the file position, set to flex's position first. The end is not read back
    /// (the caller learns it from the file position when it needs it).
    Position(u64),
    /// The same, with the file position holding the description's offset already.
    KernelPos,
    /// pwrite(2) and friends: the offset is checked and ignored, the position stays.
    Offset(u64),
    /// flex's own descriptor (atomic mode's data duplicate): its position is flex's.
    Private,
}

/// Offsets beyond this go to the kernel, which knows each file system's size limits.
pub const FAST_LIMIT: u64 = 1 << 40;

pub struct Inode {
    pub dev: u64,
    pub ino: u64,
    pub path: Vec<u8>,
    lsize: AtomicU64,
    size: Mutex<()>,
    map: RwLock<Mapping>,
    /// Open descriptions using this inode (0: it sits in the mapping cache).
    pub descs: AtomicUsize,
    /// Keep the kernel size exact from now on (the application mapped the file, or a
    /// description of it sits on descriptor 0-2): grow by ftruncate, never over-allocate.
    exact_only: AtomicBool,
    /// Size or allocation changed since the last fsync (cache-line granularity only needs
    /// a real fsync then).
    meta_dirty: AtomicBool,
    /// Lock-free mirror of the mapping state for the hot checks (bits MAPPED, WRITABLE,
    /// PAGE, TRAILER), updated under the map lock.
    state: AtomicU32,
    /// IO calls seen while unmapped: mapping pays off only for files that see enough IO.
    io: AtomicU32,
    /// mmap refused (file system without mmap...): the kernel serves this file.
    nomap: AtomicBool,
    /// Its file system's facts, asked at the first mapping.
    fs: std::sync::OnceLock<FsFacts>,
    /// Failure-atomic state (empty unless the file is open in atomic mode).
    pub atomic: crate::atomic::Slot,
    /// The descriptor holding this file's write lease (-1: none). Held exactly while the
    /// file is over-allocated: the lease says no other process has the file open.
    lease_fd: AtomicI32,
    /// A lease was refused or broken: another opener exists; extend exactly from now on
    /// (until the inode is opened afresh).
    lease_refused: AtomicBool,
}

const MAPPED: u32 = 1;
const WRITABLE: u32 = 2;
const PAGE: u32 = 4;
const TRAILER: u32 = 8;

fn state_of(m: &Mapping) -> u32 {
    let mut s = 0;
    if !m.base.is_null() {
        s |= MAPPED;
        if m.writable {
            s |= WRITABLE;
        }
        if m.persist.granularity == Granularity::Page {
            s |= PAGE;
        }
    }
    if m.trailer {
        s |= TRAILER;
    }
    s
}

fn round_up(v: u64, to: u64) -> u64 {
    v.div_ceil(to) * to
}

/// The kernel size an over-allocating write that ends at `end` grows the file to: room for
/// the trailer, in steps of a quarter of the size between `grow_min` and 256 MiB. The step
/// is a power of two, so the size, and the trailer, stay page- and 8-byte aligned
/// (recovery only trusts page-multiple sizes; the trailer's size word is one aligned store).
fn grow_target(end: u64, grow_min: u64) -> u64 {
    let step = (end / 4)
        .next_power_of_two()
        .clamp(grow_min.min(256 << 20), 256 << 20);
    round_up(end + trailer::SIZE, step).max(round_up(end + trailer::SIZE, 4096))
}

impl Inode {
    pub fn new(dev: u64, ino: u64, size: u64, path: Vec<u8>) -> Inode {
        Inode {
            dev,
            ino,
            path,
            lsize: AtomicU64::new(size),
            size: Mutex::new(()),
            map: RwLock::new(Mapping {
                base: core::ptr::null_mut(),
                len: 0,
                writable: false,
                persist: Strategy::of(Granularity::Page),
                map_sync: false,
                ksize: size,
                trailer: false,
                populate_ok: false,
                rfast: 0,
                wfast: 0,
                holes: None,
                hole_reads: false,
            }),
            descs: AtomicUsize::new(0),
            exact_only: AtomicBool::new(false),
            meta_dirty: AtomicBool::new(false),
            state: AtomicU32::new(0),
            io: AtomicU32::new(0),
            nomap: AtomicBool::new(false),
            fs: std::sync::OnceLock::new(),
            atomic: crate::atomic::Slot::default(),
            lease_fd: AtomicI32::new(-1),
            lease_refused: AtomicBool::new(false),
        }
    }

    fn lock_size(&self) -> MutexGuard<'_, ()> {
        self.size.lock().unwrap_or_else(|p| p.into_inner())
    }
    fn map_r(&self) -> std::sync::RwLockReadGuard<'_, Mapping> {
        self.map.read().unwrap_or_else(|p| p.into_inner())
    }
    fn map_w(&self) -> MapWrite<'_> {
        MapWrite {
            g: self.map.write().unwrap_or_else(|p| p.into_inner()),
            state: &self.state,
        }
    }

    pub fn lsize(&self) -> u64 {
        self.lsize.load(Acquire)
    }
    pub fn granularity(&self) -> Option<Granularity> {
        let m = self.map_r();
        (!m.base.is_null()).then_some(m.persist.granularity)
    }
    pub fn is_mapped(&self, write: bool) -> bool {
        let s = self.state.load(Acquire);
        s & MAPPED != 0 && (s & WRITABLE != 0 || !write)
    }
    /// Count an IO call a mapping could serve (towards FLEX_ADOPT_AFTER); the count
    /// before this one.
    pub fn count_io(&self) -> u32 {
        self.io.fetch_add(1, Relaxed)
    }
    pub fn nomap(&self) -> bool {
        self.nomap.load(Relaxed)
    }
    pub fn set_nomap(&self) {
        self.nomap.store(true, Relaxed)
    }
    /// The file's file system (one fstatfs per inode: a file never changes file system).
    pub(crate) fn fs(&self, fd: RawFd) -> FsFacts {
        *self.fs.get_or_init(|| FsFacts::of(fd))
    }
    /// On page granularity the kernel extends files: its write path fills a new page-cache
    /// page without zeroing or mapping it, which a mapping cannot beat, and the kernel's
    /// size then stays exact. Over-allocation is for cache-line granularity (DAX), where
    /// the kernel's write path is the slow one.
    ///
    /// Appends go to the kernel unless this process owns the file's size (trailer mode,
    /// under a write lease: nobody else has the file open): only the kernel can place an
    /// append atomically with respect to other processes.
    pub fn kernel_extends(&self, end: u64, append: bool) -> bool {
        let s = self.state.load(Acquire);
        if s & TRAILER != 0 {
            return false;
        }
        (append && !self.may_overallocate())
            || (s & MAPPED != 0
                && s & PAGE != 0
                && end > self.lsize()
                && !crate::lease::overallocate_everywhere())
    }

    /// The same rule before the file is mapped: off DAX (and without the test knob that
    /// over-allocates everywhere) a write past the end or an append goes to the kernel
    /// whatever the mapping would be, so it need not map the file (DaxVM's lesson: a
    /// mapping that serves nothing only costs).
    pub fn kernel_extends_unmapped(&self, fd: RawFd, end: u64, append: bool) -> bool {
        (append || end > self.lsize())
            && !self.is_mapped(true)
            && !self.fs(fd).maps_extending_writes()
            && !crate::lease::overallocate_everywhere()
    }

    /// Whether the kernel writes `..end` as things stand: by `kernel_extends` once the
    /// file is mapped, by `kernel_extends_unmapped` before (an explicit `O_FLEX`
    /// descriptor maps instead). The append path asks it; `do_write` asks its two halves
    /// with the mapping between them.
    pub fn kernel_places(&self, fd: RawFd, end: u64, append: bool, explicit: bool) -> bool {
        if self.is_mapped(true) {
            self.kernel_extends(end, append)
        } else {
            !explicit && self.kernel_extends_unmapped(fd, end, append)
        }
    }

    pub fn in_trailer_mode(&self) -> bool {
        self.state.load(Acquire) & TRAILER != 0
    }
}

impl Drop for Inode {
    fn drop(&mut self) {
        let m = self.map.get_mut().unwrap_or_else(|p| p.into_inner());
        if !m.base.is_null() {
            // SAFETY: our own mapping, no other reference to the inode exists.
            let _ = unsafe { rustix::mm::munmap(m.base.cast(), m.len) };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grow_target_is_page_aligned_and_fits_the_trailer() {
        // 5247826 once produced an unaligned size (a step of end/4 is not a power of two).
        for end in [
            0,
            1,
            4032,
            4033,
            1 << 20,
            3_806_912,
            5_247_826,
            123_456_789,
            1 << 40,
        ] {
            for min in [64 << 10, 1 << 20, 1 << 30] {
                let t = grow_target(end, min);
                assert_eq!(t % 4096, 0, "end {end} min {min} -> {t}");
                assert!(t >= end + trailer::SIZE, "end {end} min {min} -> {t}");
            }
        }
    }
}
