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

use crate::config::LogLevel;
use crate::engine::{engine, Engine};
use crate::fault;
use crate::log::flex_log;
use crate::persist::{self, Granularity};
use crate::stats::FileStat;
use crate::sys::{self, Errno, Res};
use crate::trailer::{self, Trailer};
use rustix::fd::RawFd;
use rustix::mm::{MapFlags, ProtFlags};
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicU32, AtomicU64, AtomicUsize, Ordering::*};
use std::sync::{Mutex, MutexGuard, RwLock};

const HUGE: u64 = 2 << 20;
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
const TMPFS_MAGIC: i64 = 0x0102_1994;

pub struct Mapping {
    base: *mut u8,
    /// Length of the virtual reservation (file-backed up to here; beyond EOF faults).
    len: usize,
    writable: bool,
    pub gran: Granularity,
    pub map_sync: bool,
    /// The kernel's size of the file as this process set or last saw it.
    ksize: u64,
    /// Over-allocated with a trailer at `ksize - 64`.
    trailer: bool,
    /// tmpfs or DAX: populating page tables ahead is cheap and never dirties disk pages.
    populate_ok: bool,
    /// Reads that end at or below this copy straight from the mapping: its length, or on
    /// tmpfs the end of the file's hole-free prefix. 0 while unmapped.
    rfast: u64,
    /// The same for single-buffer overwrites (the hole-free prefix wherever holes are
    /// tracked).
    wfast: u64,
    /// What this process knows of the file's holes, where a fault on one allocates what
    /// the kernel's call would not. tmpfs: a read fault on a hole allocates a page (the
    /// kernel's read of a hole allocates nothing), so reads that touch a hole, or a part
    /// of the file not looked at yet, go to the kernel. Blocks smaller than a page (ext4
    /// -b 1024...): a write fault allocates the page's every block, the kernel's write only
    /// those it touches, so writes into holes go to the kernel. Elsewhere `None`: a read
    /// fault on a hole allocates no block (page cache: a zero-filled page; DAX: the zero
    /// page), a write fault the page the kernel's write would.
    holes: Option<Holes>,
    /// tmpfs: reads must not fault holes in (`holes` is then set).
    hole_reads: bool,
}

/// Most data extents remembered per file (16 bytes each); past them the file is "not
/// looked at" and reads there go to the kernel.
const MAX_EXTENTS: usize = 1 << 16;
const PAGE_SZ: u64 = 4096;

/// The data extents of `[0, known)` (sorted, disjoint, not adjacent); the rest of that
/// range is a hole; `[known, ..)` has not been looked at. Data may be remembered as hole
/// (a write of another process filled it: the kernel then reads it, correctly), never a
/// hole as data (a read through the mapping would allocate it).
#[derive(Default)]
struct Holes {
    data: Vec<(u64, u64)>,
    known: u64,
    /// What a write allocates around its bytes: the page on tmpfs, the block elsewhere.
    gran: u64,
    /// st_blocks when last seen: fewer means something was freed (a hole punched, the
    /// file truncated and extended again) and the knowledge is dropped.
    blocks: u64,
}

#[derive(Debug, PartialEq, Eq)]
enum Span {
    /// All data: the mapping serves it.
    Data,
    /// Touches a hole: the kernel reads.
    Hole,
    /// Reaches past what is known: look first.
    Unknown,
}

impl Holes {
    /// End of the hole-free prefix.
    fn prefix(&self) -> u64 {
        match self.data.first() {
            Some(&(0, e)) => e.min(self.known),
            _ => 0,
        }
    }

    fn span(&self, a: u64, b: u64) -> Span {
        if a >= self.known {
            return Span::Unknown;
        }
        let i = self.data.partition_point(|e| e.0 <= a);
        if i == 0 || self.data[i - 1].1 < b.min(self.known) {
            return Span::Hole;
        }
        if b > self.known {
            Span::Unknown
        } else {
            Span::Data
        }
    }

    /// `[a, b)` is data now (clipped to what is known).
    fn mark_data(&mut self, a: u64, b: u64) {
        let b = b.min(self.known);
        if a >= b {
            return;
        }
        let i = self.data.partition_point(|e| e.1 < a);
        let j = self.data.partition_point(|e| e.0 <= b);
        if i < j {
            let a = a.min(self.data[i].0);
            let b = b.max(self.data[j - 1].1);
            self.data.splice(i..j, [(a, b)]);
        } else if self.data.len() < MAX_EXTENTS {
            self.data.insert(i, (a, b));
        }
    }

    /// This process wrote `[off, end)` into a file whose size was `old` before.
    fn wrote(&mut self, off: u64, end: u64, old: u64) {
        if off >= end {
            return;
        }
        if self.known >= old || off <= self.known {
            // Known up to the old size: a write past it leaves a new hole before it.
            self.known = self.known.max(end);
        }
        // The pages (blocks) the bytes landed in are allocated.
        let g = self.gran.max(1);
        self.mark_data(off / g * g, round_up(end, g));
    }

    /// The file is cut to `len` (what lies past it is gone).
    fn cut(&mut self, len: u64) {
        self.known = self.known.min(len);
        let i = self.data.partition_point(|e| e.0 < len);
        self.data.truncate(i);
        if let Some(last) = self.data.last_mut() {
            last.1 = last.1.min(len);
        }
    }

    /// This process truncated or extended the file from `old` to `new` (an extension is a
    /// hole).
    fn resized(&mut self, old: u64, new: u64) {
        let full = self.known >= old;
        self.cut(new);
        if full {
            self.known = new;
        }
    }

    fn forget(&mut self) {
        self.data.clear();
        self.known = 0;
    }
}

// SAFETY: `base` points to a shared file mapping owned by this struct; all access to the
// pointed-to bytes goes through the guarded copy routines under the inode's locks.
unsafe impl Send for Mapping {}
// SAFETY: as above; shared references only read the fields.
unsafe impl Sync for Mapping {}

impl Mapping {
    /// Recompute the fast bounds after the mapping or the hole knowledge changed.
    fn refast(&mut self) {
        let len = if self.base.is_null() {
            0
        } else {
            self.len as u64
        };
        (self.rfast, self.wfast) = match &self.holes {
            None => (len, len),
            Some(h) if self.hole_reads => (h.prefix().min(len), h.prefix().min(len)),
            Some(h) => {
                // A write fault allocates the whole page: only whole pages of the prefix
                // (or up to the end of file, past which no block is allocated).
                let p = h.prefix();
                let p = if p >= self.ksize {
                    p
                } else {
                    p / PAGE_SZ * PAGE_SZ
                };
                (len, p.min(len))
            }
        };
    }

    /// A single-buffer overwrite of `[off, end)` (below the logical size `ls`) may go
    /// through the mapping: it allocates what the kernel's write would.
    fn write_in_place(&self, off: u64, end: u64, ls: u64) -> bool {
        if end <= self.wfast {
            return true;
        }
        match &self.holes {
            Some(_) if end > self.len as u64 => false,
            Some(h) if self.hole_reads => h.span(off, end) == Span::Data,
            // Every block of the pages the write faults in must be allocated already.
            Some(h) => {
                let a = off / PAGE_SZ * PAGE_SZ;
                let b = round_up(end, PAGE_SZ).min(ls.max(end));
                h.span(a, b) == Span::Data
            }
            None => end <= self.len as u64,
        }
    }
}

/// The exclusive map guard; publishes the lock-free state mirror when released.
struct MapWrite<'a> {
    g: std::sync::RwLockWriteGuard<'a, Mapping>,
    state: &'a AtomicU32,
}

impl core::ops::Deref for MapWrite<'_> {
    type Target = Mapping;
    fn deref(&self) -> &Mapping {
        &self.g
    }
}

impl core::ops::DerefMut for MapWrite<'_> {
    fn deref_mut(&mut self) -> &mut Mapping {
        &mut self.g
    }
}

impl Drop for MapWrite<'_> {
    fn drop(&mut self) {
        self.state.store(state_of(&self.g), Release);
    }
}

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
    pub io: AtomicU32,
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
        if m.gran == Granularity::Page {
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
                gran: Granularity::Page,
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
        (!m.base.is_null()).then_some(m.gran)
    }
    pub fn is_mapped(&self, write: bool) -> bool {
        let s = self.state.load(Acquire);
        s & MAPPED != 0 && (s & WRITABLE != 0 || !write)
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

    pub fn in_trailer_mode(&self) -> bool {
        self.state.load(Acquire) & TRAILER != 0
    }

    /// The descriptor that holds this file's write lease, or -1.
    pub fn lease_fd(&self) -> i32 {
        self.lease_fd.load(Acquire)
    }

    /// Opened afresh (no other description of it in this process): a lease may be granted
    /// again.
    pub fn lease_may_retry(&self) {
        self.lease_refused.store(false, Relaxed);
    }

    /// The kernel breaks the lease (another process opens or truncates the file), or the
    /// program took the lease signal: make the size exact and give the lease back.
    pub fn lease_broken(&self) {
        let _s = self.lock_size();
        self.lease_refused.store(true, Relaxed);
        let fd = self.lease_fd();
        if fd >= 0 {
            if self.trim_locked(fd).is_err() {
                // Nothing to trim through (the descriptor went): still let the opener go.
                self.give_back_lease();
            }
            engine()
                .stats
                .fallback("lease broken: another process opened the file");
        }
    }

    fn give_back_lease(&self) {
        let fd = self.lease_fd.swap(-1, AcqRel);
        if fd >= 0 {
            crate::lease::release(fd);
        }
    }

    /// May this process over-allocate the file (cache-line granularity, not mapped by the
    /// application, no other opener seen)? Caller holds the size lock.
    fn may_overallocate(&self) -> bool {
        let s = self.state.load(Acquire);
        s & MAPPED != 0
            && (s & PAGE == 0 || crate::lease::overallocate_everywhere())
            && !self.exact_only.load(Relaxed)
            && !self.lease_refused.load(Relaxed)
    }

    /// Own the file's size: hold a write lease on it (taken now through `fd` if need be).
    /// Caller holds the size lock.
    fn own_size(&self, fd: RawFd) -> bool {
        if self.lease_fd() >= 0 {
            return true;
        }
        if !self.may_overallocate() {
            return false;
        }
        if crate::lease::acquire(fd) {
            self.lease_fd.store(fd, Release);
            // Sole opener now: the kernel's size is final (appends the kernel placed
            // before, whose ends flex did not read back, are in it).
            if let Ok(st) = sys::fstat(fd) {
                let k = st.st_size as u64;
                if k > self.lsize() {
                    self.lsize.store(k, Release);
                }
            }
            true
        } else {
            self.lease_refused.store(true, Relaxed);
            false
        }
    }

    /// The kernel changed the file for this process (fallocate, a call flex left to the
    /// kernel): re-read its size, and on tmpfs look at its holes again if its allocation
    /// changed (preallocated pages are holes to SEEK_DATA until written).
    pub fn refresh(&self, fd: RawFd) -> Res<u64> {
        self.refresh_as(fd, true)
    }

    /// Re-read the kernel's size when this process does not own it (no trailer). Called
    /// when a read comes up short: another process may have extended the file. The hole
    /// knowledge is dropped if blocks were freed (holes punched, a truncation).
    fn refresh_as(&self, fd: RawFd, changed: bool) -> Res<u64> {
        let _s = self.lock_size();
        let mut m = self.map_w();
        if m.trailer {
            return Ok(self.lsize());
        }
        let st = sys::fstat(fd)?;
        let k = st.st_size as u64;
        m.ksize = k;
        self.lsize.store(k, Release);
        if let Some(h) = m.holes.as_mut() {
            let blocks = st.st_blocks as u64;
            if blocks < h.blocks || (changed && blocks != h.blocks) {
                // Freed blocks (a punched hole, a truncation by someone else) or new ones
                // of unknown kind: look again.
                h.forget();
            }
            h.blocks = blocks;
            h.cut(k);
            m.refast();
        }
        Ok(k)
    }

    /// A cached inode is reused by a new open, or the application looked at the size:
    /// take the kernel's size, read under the size lock. (A size read before the lock may
    /// be stale: writers of this process extend the file under the lock, and a stale size
    /// adopted afterwards shrinks the logical size below bytes already written; a write
    /// then "extends" the file into trailer mode and the next trim cuts off those bytes.)
    /// The size to report for a kernel `stat` answer `raw`: the logical size in trailer
    /// mode, decided under the size lock so a growth in progress is never seen half-done.
    pub fn settled_size(&self, raw: u64) -> u64 {
        let _s = self.lock_size();
        if self.in_trailer_mode() {
            self.lsize()
        } else {
            raw
        }
    }

    /// Returns the logical size after adoption (in trailer mode the kernel's size is the
    /// over-allocated one: never report that).
    pub fn adopt_kernel_size(&self, fd: RawFd) -> Res<u64> {
        let _s = self.lock_size();
        let k = sys::fstat(fd)?.st_size as u64;
        self.adopt_size_locked(k);
        Ok(self.lsize())
    }

    /// The program's fstat just read `seen`: the size to report, as
    /// [`Inode::adopt_kernel_size`], without a second fstat when nothing of this process
    /// has moved the size away from `seen` (the common case).
    pub fn adopt_seen_size(&self, fd: RawFd, seen: u64) -> Res<u64> {
        {
            let _s = self.lock_size();
            let m = self.map_r();
            if !m.trailer && m.ksize == seen && self.lsize() == seen {
                return Ok(seen);
            }
        }
        self.adopt_kernel_size(fd)
    }

    /// Called at adoption when the cached inode is reused, or fresh: take the kernel's size.
    pub fn adopt_size(&self, ksize: u64) {
        let _s = self.lock_size();
        self.adopt_size_locked(ksize);
    }

    /// Caller holds the size lock.
    fn adopt_size_locked(&self, ksize: u64) {
        let mut m = self.map_w();
        if m.trailer && m.ksize == ksize {
            return;
        }
        if m.trailer {
            // Someone truncated the file behind our back (O_TRUNC open, another process).
            m.trailer = false;
            engine().trailer_files.fetch_sub(1, Relaxed);
        }
        m.ksize = ksize;
        self.lsize.store(ksize, Release);
        if let Some(h) = m.holes.as_mut() {
            h.cut(ksize);
            m.refast();
        }
    }

    /// Write through the kernel (unmapped file, or a fallback). An append is the kernel's
    /// own (O_APPEND or RWF_APPEND): the kernel picks the end of file under its inode
    /// lock, so appends of every process, with flex or without, never overlap.
    ///
    /// # Safety
    /// Each buffer must be valid for its length or invalid (the kernel answers EFAULT).
    pub unsafe fn kernel_write(
        &self,
        fd: RawFd,
        bufs: &[(*const u8, usize)],
        off: u64,
        append: Option<AppendAt>,
    ) -> Res<(usize, u64)> {
        let _s = self.lock_size();
        if let Some(how) = append {
            // SAFETY: forwarded contract.
            return unsafe { self.kernel_append_locked(fd, bufs, how) };
        }
        self.kernel_write_locked(fd, bufs, off)
    }

    /// The kernel appends (caller holds the size lock). Leaves trailer mode first, so the
    /// kernel's end of file is the logical one.
    ///
    /// # Safety
    /// As [`Inode::kernel_write`].
    unsafe fn kernel_append_locked(
        &self,
        fd: RawFd,
        bufs: &[(*const u8, usize)],
        how: AppendAt,
    ) -> Res<(usize, u64)> {
        self.trim_locked(fd)?;
        let (n, end) = match how {
            // SAFETY (all four): forwarded contract.
            AppendAt::Position(_) | AppendAt::KernelPos => {
                if let AppendAt::Position(pos) = how {
                    // The kernel checks the file position before it appends, as for
                    // write(2): flex's position goes there first.
                    sys::lseek(fd, pos as i64, libc::SEEK_SET)?;
                }
                let n = unsafe { sys::append_at(fd, bufs, -1) }?;
                if n > 0 && self.state.load(Acquire) & (MAPPED | PAGE) == MAPPED {
                    sys::fdatasync(fd)?;
                }
                // The size grew past what flex knows: a read at its end asks the kernel.
                engine().stats.bytes_written.fetch_add(n as u64, Relaxed);
                return Ok((n, u64::MAX));
            }
            AppendAt::Private => {
                // Its position may be the program's too (a duplicate of a read-write
                // descriptor): from 0, the kernel's check never trips on it.
                sys::lseek(fd, 0, libc::SEEK_SET)?;
                unsafe { sys::append(fd, bufs) }?
            }
            AppendAt::Offset(off) => {
                // pwrite(2) on an O_APPEND descriptor: the offset is checked, then ignored,
                // and the file position stays; where the bytes went does not matter.
                let n = unsafe { sys::append_at(fd, bufs, off as i64) }?;
                let size = sys::fstat(fd)?.st_size as u64;
                (n, size.max(n as u64))
            }
        };
        self.saw_end(end - n as u64, end);
        if n > 0 && self.state.load(Acquire) & (MAPPED | PAGE) == MAPPED {
            // Cache-line granularity promises a write durable on return: the kernel's
            // DAX write stored the bytes durably, the new size needs the journal.
            sys::fdatasync(fd)?;
        }
        engine().stats.bytes_written.fetch_add(n as u64, Relaxed);
        Ok((n, end))
    }

    /// The kernel's file holds `[off, end)` now and reaches at least `end` (a write
    /// through it returned there).
    fn saw_end(&self, off: u64, end: u64) {
        if end > self.lsize() {
            self.lsize.store(end, Release);
            let mut m = self.map_w();
            let old = m.ksize;
            m.ksize = m.ksize.max(end);
            if let Some(h) = m.holes.as_mut() {
                // An append keeps a hole-free file hole-free, and the fast path with it.
                h.wrote(off, end, old);
                m.refast();
            }
        }
    }

    /// Create or widen the mapping so that it covers `need` bytes (and is writable if asked).
    /// Caller holds the size lock.
    fn ensure_map(
        &self,
        m: &mut Mapping,
        fd: RawFd,
        need: u64,
        write: bool,
        e: &Engine,
    ) -> Res<()> {
        if !m.base.is_null() && (m.len as u64) >= need && (m.writable || !write) {
            return Ok(());
        }
        // Checked before doubling and rounding, which would overflow near 2^63.
        if need.max(m.ksize) > isize::MAX as u64 / 4 {
            return Err(Errno::FBIG);
        }
        let base_need = need.max(m.ksize).saturating_mul(2);
        // Small files get small mappings (one mmap); large ones 2 MiB-aligned reservations.
        let want = if base_need < HUGE {
            round_up(base_need.max(64 << 10), 4096)
        } else {
            round_up(base_need, HUGE)
        };
        if want > isize::MAX as u64 / 2 {
            return Err(Errno::FBIG);
        }
        let want = want as usize;
        if !m.base.is_null() && (m.writable || !write) {
            // SAFETY: base/len describe our own mapping; holding the exclusive map lock, no
            // copy is in progress; MAYMOVE lets the kernel pick a new address.
            let p = unsafe {
                rustix::mm::mremap(m.base.cast(), m.len, want, rustix::mm::MremapFlags::MAYMOVE)
            }?;
            m.base = p.cast();
            m.len = want;
            m.refast();
            e.stats.remaps.fetch_add(1, Relaxed);
            return Ok(());
        }
        let fs = self.fs(fd);
        let (base, gran, sync) = map_through(fd, want, write, fs.may_be_dax())?;
        if !m.base.is_null() {
            // SAFETY: the old mapping is ours and no copy runs (exclusive map lock).
            let _ = unsafe { rustix::mm::munmap(m.base.cast(), m.len) };
            e.stats.unmaps.fetch_add(1, Relaxed);
        }
        m.base = base;
        m.len = want;
        m.writable = write;
        m.gran = gran;
        m.map_sync = sync;
        let (tmpfs, bsize) = (fs.tmpfs(), fs.bsize);
        m.populate_ok = sync || tmpfs;
        // The file is looked at anew with each new mapping (the knowledge of the old one
        // may be stale). DAX maps in pages or 2 MiB extents, never below a page.
        let small_blocks = !sync && bsize < PAGE_SZ;
        m.hole_reads = tmpfs;
        m.holes = (tmpfs || small_blocks).then(|| Holes {
            gran: if tmpfs { PAGE_SZ } else { bsize.max(512) },
            ..Holes::default()
        });
        self.learn_holes(m, fd, m.ksize);
        m.refast();
        e.stats.maps.fetch_add(1, Relaxed);
        e.stats.file(
            &self.path,
            FileStat {
                granularity: gran.as_str(),
                map_sync: sync,
            },
        );
        flex_log!(
            LogLevel::Debug,
            "map {} len={} gran={} write={}",
            String::from_utf8_lossy(&self.path),
            want,
            gran.as_str(),
            write
        );
        let mut ks = m.ksize.min(m.len as u64);
        if m.populate_ok && ks > 64 << 10 && ks <= e.config.populate_max {
            // Pre-faulting a hole allocates it (tmpfs: any fault; DAX: a write fault, and
            // this one is writable), where the kernel's read would not: only the hole-free
            // prefix of the file.
            ks = match &m.holes {
                Some(_) => ks.min(m.wfast),
                None => ks.min(first_hole(fd, ks)),
            };
        }
        if m.populate_ok && ks > 64 << 10 && ks <= e.config.populate_max {
            // tmpfs and DAX have no writeback to dirty: pre-faulting writable spares the
            // first store to each page a write fault.
            let adv = if write {
                rustix::mm::Advice::LinuxPopulateWrite
            } else {
                rustix::mm::Advice::LinuxPopulateRead
            };
            // SAFETY: advice on our own mapping, within the file's size.
            let _ = unsafe { rustix::mm::madvise(base.cast(), round_up(ks, 4096) as usize, adv) };
        }
        Ok(())
    }

    /// Look at the file's holes until `[0, need)` is known, if it can be (tmpfs only; the
    /// caller holds the size lock and the exclusive map lock). Returns whether it is.
    fn learn_holes(&self, m: &mut Mapping, fd: RawFd, need: u64) -> bool {
        let Some(h) = m.holes.as_mut() else {
            return true;
        };
        if h.known < need {
            if let Ok(st) = sys::fstat(fd) {
                let (size, blocks) = (st.st_size as u64, st.st_blocks as u64);
                if blocks < h.blocks {
                    h.forget();
                }
                h.blocks = blocks;
                h.cut(size);
                // st_blocks cannot tell a dense file: tmpfs counts preallocated pages
                // (fallocate), which SEEK_DATA reports as holes until written, and which
                // a read fault would turn into data.
                walk_extents(h, fd, size);
            }
        }
        let known = h.known >= need;
        m.refast();
        known
    }

    /// Make sure a mapping exists for reading or writing (used at adoption and by the paths).
    pub fn map_for(&self, fd: RawFd, write: bool) -> Res<()> {
        let e = engine();
        {
            let m = self.map_r();
            if !m.base.is_null() && (m.writable || !write) && m.len as u64 >= m.ksize {
                return Ok(());
            }
        }
        if !self.is_mapped(false) {
            if let Some(reason) = self.fs(fd).unmappable() {
                e.stats.fallback(reason);
                self.set_nomap();
                return Err(Errno::OPNOTSUPP);
            }
        }
        let _s = self.lock_size();
        let mut m = self.map_w();
        let k = m.ksize;
        self.ensure_map(&mut m, fd, k, write, e)
    }

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
                    e.stats.fallback("read beyond mapping");
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
                e.stats.fallback("fault during read");
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
        engine().stats.fallback("read over a hole");
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

    /// Write the buffers at `off` (or at the end if `append`). Returns the count and the
    /// offset just past the written bytes, as pwritev(2) plus O_APPEND.
    ///
    /// `stream`: on page granularity, store with non-temporal stores and no fence (the
    /// caller fences once, [`crate::persist::fence`], before anyone may look). For bulk
    /// copies of bytes nobody reads soon (the atomic mode's apply): no read-for-ownership
    /// of the destination lines, about 2.5x less memory traffic on cold pages.
    ///
    /// # Safety
    /// Each buffer must be valid for its length or fault when read (the copy is guarded).
    pub unsafe fn write_at(
        &self,
        fd: RawFd,
        bufs: &[(*const u8, usize)],
        off: u64,
        append: Option<AppendAt>,
        stream: bool,
    ) -> Res<(usize, u64)> {
        let e = engine();
        let how_append = append;
        let total: usize = bufs
            .iter()
            .fold(0usize, |a, b| a.saturating_add(b.1))
            .min(MAX_RW);
        if total == 0 {
            return Ok((0, off));
        }
        // Fast path: an overwrite inside the logical size by a single buffer, in parallel
        // with other such writes.
        if append.is_none() && bufs.len() == 1 {
            let end = off.saturating_add(total as u64);
            let m = self.map_r();
            // `wfast` (not the mapping's length): a write into a hole takes the locked
            // path below, which records the hole filled (or, with blocks smaller than a
            // page, lets the kernel write); an overwrite of data past the first hole
            // stays here.
            let ls = self.lsize();
            if !m.base.is_null() && m.writable && end <= ls && m.write_in_place(off, end, ls) {
                let rem = self.copy_in(&m, bufs, off, total, stream);
                drop(m);
                if rem == 0 {
                    e.stats.bytes_written.fetch_add(total as u64, Relaxed);
                    return Ok((total, end));
                }
                let _s = self.lock_size();
                return self.fault_fallback(fd, bufs, off, total - rem);
            }
        }
        let _s = self.lock_size();
        if let Some(how) = append.filter(|_| !self.in_trailer_mode() && !self.own_size(fd)) {
            // Not the owner of the size: only the kernel appends atomically.
            // SAFETY: forwarded contract.
            return unsafe { self.kernel_append_locked(fd, bufs, how) };
        }
        let append = append.is_some();
        let off = if append { self.lsize() } else { off };
        let end = off.checked_add(total as u64).ok_or(Errno::FBIG)?;
        if end > FAST_LIMIT {
            e.stats.fallback("offset beyond fast range");
            if let Some(how) = how_append {
                // SAFETY: forwarded contract.
                return unsafe { self.kernel_append_locked(fd, bufs, how) };
            }
            return self.kernel_write_locked(fd, bufs, off);
        }
        let mut m = self.map_w();
        let old = m.ksize;
        if end > self.lsize() {
            if !m.trailer && !self.own_size(fd) {
                // Not the sole opener (or the program maps the file): the kernel extends
                // it, exactly as it would (a bad buffer extends nothing; another process's
                // append is never cut).
                drop(m);
                return self.kernel_write_locked(fd, bufs, off);
            }
            let grown = self.grow(&mut m, fd, end, e);
            match grown {
                Ok(()) => {}
                Err(Errno::NOSPC) | Err(Errno::FBIG) | Err(Errno::DQUOT) => {
                    e.stats.fallback("cannot reserve space");
                    drop(m);
                    return self.kernel_write_locked(fd, bufs, off);
                }
                Err(err) => return Err(err),
            }
        }
        if self.ensure_map(&mut m, fd, end, true, e).is_err() {
            // No mapping can cover the file (sparse, far beyond the fast range): the
            // kernel writes.
            e.stats.fallback("cannot map");
            drop(m);
            return self.kernel_write_locked(fd, bufs, off);
        }
        if m.holes.is_some() && !m.hole_reads && !m.write_in_place(off, end, self.lsize()) {
            // Blocks smaller than a page: a write fault would allocate all of the page's.
            drop(m);
            e.stats.fallback("write into a hole");
            let r = self.kernel_write_locked(fd, bufs, off);
            if let Ok((n, _)) = r {
                let mut m = self.map_w();
                let k = m.ksize;
                if let Some(h) = m.holes.as_mut() {
                    h.wrote(off, off + n as u64, k);
                }
                m.refast();
            }
            return r;
        }
        let rem = self.copy_in(&m, bufs, off, total, stream);
        let reached = off + (total - rem) as u64;
        if let Some(h) = m.holes.as_mut() {
            h.wrote(off, reached, old);
            m.refast();
        }
        // A write that copied nothing (a bad buffer) must not extend the file.
        if rem < total && reached > self.lsize() {
            self.publish_size(&m, reached);
        }
        drop(m);
        if rem == 0 {
            e.stats.bytes_written.fetch_add(total as u64, Relaxed);
            return Ok((total, end));
        }
        self.fault_fallback(fd, bufs, off, total - rem)
    }

    /// Overwrite many ranges inside the logical size under one hold of the mapping (the
    /// atomic mode applying a batch): streaming stores on page granularity and a single
    /// fence at the end, where per-call locking would drain the stores after each copy.
    /// Returns how many leading ranges were written; the caller writes the rest one by one
    /// (a range past the size or the mapping, or a fault).
    ///
    /// # Safety
    /// Each source must be valid for its length or fault when read (the copy is guarded).
    pub unsafe fn overwrite_many(&self, ranges: &[(u64, *const u8, usize)]) -> usize {
        let m = self.map_r();
        if m.base.is_null() || !m.writable {
            return 0;
        }
        let size = self.lsize().min(m.len as u64);
        let mut done = 0;
        for &(off, src, len) in ranges {
            if off.checked_add(len as u64).is_none_or(|e| e > size) {
                break;
            }
            // SAFETY: [off, off+len) lies inside the writable mapping and the logical size
            // (checked above, under the mapping's read lock); a fault on the source is
            // caught by the guarded copy.
            let rem = unsafe { fault::copy_nt(m.base.add(off as usize), src, len) };
            if rem != 0 {
                break;
            }
            done += 1;
        }
        persist::fence();
        drop(m);
        let bytes: usize = ranges[..done].iter().map(|r| r.2).sum();
        engine()
            .stats
            .bytes_written
            .fetch_add(bytes as u64, Relaxed);
        done
    }

    /// Copy the buffers into the mapping at `off`, durably on cache-line granularity.
    /// Returns the number of bytes not copied (a fault stopped the copy).
    fn copy_in(
        &self,
        m: &Mapping,
        bufs: &[(*const u8, usize)],
        off: u64,
        total: usize,
        stream: bool,
    ) -> usize {
        let mut at = off as usize;
        let mut left = total;
        for &(p, l) in bufs {
            let l = l.min(left);
            if l == 0 {
                continue;
            }
            // SAFETY: [at, at+l) lies inside the writable mapping (checked by the callers
            // against its length); the source is the application's buffer, and a fault on
            // either side is caught by the guarded copy and reported as a remainder.
            let rem = unsafe {
                match m.gran {
                    Granularity::CacheLine => fault::copy_nt(m.base.add(at), p, l),
                    Granularity::Page if stream => fault::copy_nt(m.base.add(at), p, l),
                    Granularity::Page => fault::copy(m.base.add(at), p, l),
                }
            };
            left -= l - rem;
            if rem != 0 {
                break;
            }
            at += l;
        }
        if m.gran == Granularity::CacheLine {
            persist::fence();
        }
        left
    }

    /// A copy faulted after `done` bytes: a bad source buffer, or a page the file system
    /// could not provide. The kernel gives the exact answer for the rest (EFAULT, ENOSPC,
    /// a short count). Caller holds the size lock.
    fn fault_fallback(
        &self,
        fd: RawFd,
        bufs: &[(*const u8, usize)],
        off: u64,
        done: usize,
    ) -> Res<(usize, u64)> {
        let e = engine();
        e.stats.fallback("fault during write");
        let rest = skip(bufs, done);
        match self.kernel_write_locked(fd, &rest, off + done as u64) {
            Ok((n, end)) => {
                e.stats.bytes_written.fetch_add(done as u64, Relaxed);
                Ok((done + n, end))
            }
            Err(err) if done == 0 => Err(err),
            Err(_) => {
                e.stats.bytes_written.fetch_add(done as u64, Relaxed);
                Ok((done, off + done as u64))
            }
        }
    }

    /// The kernel writes: leave trailer mode first so the kernel sees the logical size.
    /// Caller holds the size lock.
    fn kernel_write_locked(
        &self,
        fd: RawFd,
        bufs: &[(*const u8, usize)],
        off: u64,
    ) -> Res<(usize, u64)> {
        self.trim_locked(fd)?;
        // SAFETY: the buffers come from write_at/kernel_write, whose contract they carry.
        let n = unsafe { sys::pwritev(fd, bufs, off) }?;
        let end = off + n as u64;
        self.saw_end(off, end);
        if n > 0 && self.state.load(Acquire) & (MAPPED | PAGE) == MAPPED {
            // Cache-line granularity promises a write durable on return, size included.
            sys::fdatasync(fd)?;
        }
        engine().stats.bytes_written.fetch_add(n as u64, Relaxed);
        Ok((n, end))
    }

    /// Extend the kernel size so that `end` fits before the trailer, in large steps.
    fn grow(&self, m: &mut Mapping, fd: RawFd, end: u64, e: &Engine) -> Res<()> {
        if m.trailer && end + trailer::SIZE <= m.ksize {
            return Ok(());
        }
        let old = m.ksize;
        let new = grow_target(end, e.config.grow_min);
        // Reserve the blocks first: ENOSPC surfaces here, never as SIGBUS later.
        let from = if m.trailer {
            old
        } else {
            self.lsize().min(old)
        };
        let fail = |err| {
            if !m.trailer {
                self.give_back_lease();
            }
            Err(err)
        };
        match sys::reserve(fd, from, new - from) {
            // Without fallocate, a page that cannot be allocated faults in the guarded
            // copy and the write falls back to the kernel.
            Ok(()) | Err(Errno::OPNOTSUPP) => {}
            Err(err) => return fail(err),
        }
        if !m.trailer {
            // Tell recovery that a live process owns the over-allocation.
            let _ = sys::ofd_lock(fd, trailer::LOCK_AT, false, true);
            engine().trailer_files.fetch_add(1, Relaxed);
        }
        let t = Trailer {
            lsize: self.lsize(),
            ksize: new,
            ino: self.ino,
        };
        let b = t.encode();
        // One system call extends the file and writes the trailer: a crash sees either
        // the old size or the new size with a valid trailer.
        // SAFETY: `b` is our own buffer.
        let n = match unsafe { sys::pwrite_exact(fd, b.as_ptr(), b.len(), new - trailer::SIZE) } {
            Ok(n) => n,
            Err(err) => return fail(err),
        };
        if n != b.len() {
            return fail(Errno::NOSPC);
        }
        let was_trailer = m.trailer;
        m.ksize = new;
        m.trailer = true;
        self.meta_dirty.store(true, Relaxed);
        e.stats.grows.fetch_add(1, Relaxed);
        self.ensure_map(m, fd, new, true, e)?;
        if was_trailer {
            // The old trailer now lies inside the zero region: clear it.
            // SAFETY: [old-64, old) is inside the mapping (old < new <= len).
            unsafe { self.store_zero(m, old - trailer::SIZE, trailer::SIZE as usize) };
        }
        if m.populate_ok {
            let a = round_up(from, 4096) as usize;
            let b = round_up(new, 4096) as usize;
            if b > a {
                // SAFETY: advice on our own mapping within the file's new size.
                let _ = unsafe {
                    rustix::mm::madvise(
                        m.base.add(a).cast(),
                        b - a,
                        rustix::mm::Advice::LinuxPopulateWrite,
                    )
                };
            }
        }
        flex_log!(
            LogLevel::Debug,
            "grow {} {} -> {}",
            String::from_utf8_lossy(&self.path),
            old,
            new
        );
        Ok(())
    }

    /// Zero `[at, at+len)` in the mapping, durably on cache-line granularity.
    ///
    /// # Safety
    /// The range must lie inside the writable mapping.
    unsafe fn store_zero(&self, m: &Mapping, at: u64, len: usize) {
        // SAFETY: forwarded contract; the copy is guarded anyway.
        unsafe {
            match m.gran {
                Granularity::CacheLine => {
                    fault::zero_nt(m.base.add(at as usize), len);
                    persist::fence();
                }
                Granularity::Page => {
                    fault::zero(m.base.add(at as usize), len);
                }
            }
        }
    }

    /// Publish a larger logical size (caller holds the size lock and the map lock).
    fn publish_size(&self, m: &Mapping, end: u64) {
        self.lsize.store(end, Release);
        if m.trailer {
            let at = Trailer::lsize_offset(m.ksize) as usize;
            // SAFETY: the trailer lies inside the mapping (ksize <= len), 8-byte aligned.
            unsafe {
                let p = m.base.add(at) as *mut u64;
                core::ptr::write_volatile(p, end.to_le());
                if m.gran == Granularity::CacheLine {
                    persist::flush(p as *const u8, 8);
                    persist::fence();
                }
            }
        }
    }

    /// Leave trailer mode: make the kernel size exact. Caller holds the size lock.
    pub fn trim_locked(&self, fd: RawFd) -> Res<()> {
        if !self.in_trailer_mode() {
            // Only the size lock (held) changes trailer mode: nothing to do.
            return Ok(());
        }
        let mut m = self.map_w();
        if !m.trailer {
            return Ok(());
        }
        let ls = self.lsize();
        sys::ftruncate(fd, ls)?;
        let _ = sys::ofd_lock(fd, trailer::LOCK_AT, false, false);
        engine().trailer_files.fetch_sub(1, Relaxed);
        m.trailer = false;
        m.ksize = ls;
        // Exact now: another opener may come (one waiting for a break proceeds).
        self.give_back_lease();
        self.meta_dirty.store(true, Relaxed);
        flex_log!(
            LogLevel::Debug,
            "trim {} to {}",
            String::from_utf8_lossy(&self.path),
            ls
        );
        Ok(())
    }

    /// Run `f` under the size lock (no write that extends the file runs meanwhile).
    pub fn with_size_lock<R>(&self, f: impl FnOnce() -> R) -> R {
        let _s = self.lock_size();
        f()
    }

    pub fn trim(&self, fd: RawFd) -> Res<()> {
        let _s = self.lock_size();
        self.trim_locked(fd)
    }

    /// fsync/fdatasync: the kernel size becomes exact; then durability by granularity.
    pub fn sync(&self, fd: RawFd, data_only: bool) -> Res<()> {
        let _s = self.lock_size();
        self.trim_locked(fd)?;
        let gran = self.map_r().gran;
        let mapped = !self.map_r().base.is_null();
        if mapped && gran == Granularity::CacheLine && !self.meta_dirty.swap(false, AcqRel) {
            // Every write was made durable before it returned; nothing else changed.
            persist::fence();
            return Ok(());
        }
        if data_only {
            sys::fdatasync(fd)
        } else {
            sys::fsync(fd)
        }
    }

    /// The application truncates (ftruncate, truncate): exact mode, then the kernel.
    pub fn set_len(
        &self,
        fd: Option<RawFd>,
        len: u64,
        kernel: impl FnOnce() -> Res<()>,
    ) -> Res<()> {
        let _s = self.lock_size();
        if let Some(fd) = fd {
            self.trim_locked(fd)?;
        }
        kernel()?;
        let mut m = self.map_w();
        let old = m.ksize;
        m.ksize = len;
        if let Some(h) = m.holes.as_mut() {
            h.resized(old, len);
            m.refast();
        }
        self.lsize.store(len, Release);
        self.meta_dirty.store(true, Relaxed);
        Ok(())
    }

    /// The application maps the file itself, or hands it to the kernel (sendfile...).
    pub fn make_exact(&self, fd: RawFd, forever: bool) -> Res<()> {
        if forever {
            self.exact_only.store(true, Relaxed);
        }
        self.trim(fd)
    }

    /// Bytes of address space the mapping holds (0: unmapped).
    pub fn mapped_len(&self) -> u64 {
        if self.state.load(Acquire) & MAPPED == 0 {
            // Published as the map lock is released: an IO that mapped the file before
            // this close is seen (never-mapped small files skip the lock).
            return 0;
        }
        let m = self.map_r();
        if m.base.is_null() {
            0
        } else {
            m.len as u64
        }
    }

    /// Unmap (cache eviction, unlink, idle release).
    pub fn unmap(&self) {
        let mut m = self.map_w();
        if !m.base.is_null() {
            // SAFETY: our own mapping; exclusive lock, so no copy is in progress.
            let _ = unsafe { rustix::mm::munmap(m.base.cast(), m.len) };
            m.base = core::ptr::null_mut();
            m.len = 0;
            m.refast();
            engine().stats.unmaps.fetch_add(1, Relaxed);
        }
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

/// The buffers after skipping `n` bytes.
fn skip(bufs: &[(*const u8, usize)], mut n: usize) -> Vec<(*const u8, usize)> {
    let mut out = Vec::with_capacity(bufs.len());
    for &(p, l) in bufs {
        if n >= l {
            n -= l;
            continue;
        }
        // SAFETY: pointer arithmetic inside the application's buffer of length l.
        out.push((unsafe { p.add(n) }, l - n));
        n = 0;
    }
    out
}

/// What flex needs to know of a file's file system, asked once per inode (one fstatfs).
#[derive(Clone, Copy)]
pub(crate) struct FsFacts {
    f_type: i64,
    bsize: u64,
    /// The file is DAX (statx's STATX_ATTR_DAX; asked only where DAX can be).
    dax: bool,
}

impl FsFacts {
    fn of(fd: RawFd) -> FsFacts {
        let mut f = rustix::fs::fstatfs(sys::bfd(fd))
            .map(|s| FsFacts {
                f_type: s.f_type,
                bsize: s.f_bsize as u64,
                dax: false,
            })
            .unwrap_or(FsFacts {
                f_type: 0,
                bsize: PAGE_SZ,
                dax: false,
            });
        if f.may_be_dax() {
            let dax = rustix::fs::StatxAttributes::DAX;
            f.dax = rustix::fs::statx(
                sys::bfd(fd),
                "",
                rustix::fs::AtFlags::EMPTY_PATH,
                rustix::fs::StatxFlags::BASIC_STATS,
            )
            // An old kernel that cannot say: maybe DAX (the mapping will tell).
            .map_or(true, |x| {
                !x.stx_attributes_mask.contains(dax) || x.stx_attributes.contains(dax)
            });
        }
        f
    }

    /// Can this file's writes past its end ever be served from a mapping? Only on DAX
    /// (cache-line granularity, under a write lease); elsewhere the kernel extends files.
    pub(crate) fn maps_extending_writes(&self) -> bool {
        self.dax
    }

    fn tmpfs(&self) -> bool {
        self.f_type == TMPFS_MAGIC
    }

    /// Can a mapping of this file system be MAP_SYNC (DAX)? ext4 (and ext2) and xfs only;
    /// elsewhere the MAP_SYNC attempt is a failing mmap per mapping.
    fn may_be_dax(&self) -> bool {
        const EXT4: i64 = 0xef53;
        const XFS: i64 = 0x5846_5342;
        matches!(self.f_type, EXT4 | XFS)
    }

    /// File systems whose files flex leaves to the kernel, and why: a mapping of them is
    /// not coherent with what the kernel's own calls see.
    pub(crate) fn unmappable(&self) -> Option<&'static str> {
        const OVERLAYFS: i64 = 0x794c_7630;
        const FUSE: i64 = 0x6573_5546;
        const NFS: i64 = 0x6969;
        const SMB2: i64 = 0xfe53_4d42;
        const CIFS: i64 = 0xff53_4d42;
        const CEPH: i64 = 0x00c3_6400;
        const V9FS: i64 = 0x0102_1997;
        Some(match self.f_type {
            // Copy-up moves the file to the upper layer: a mapping keeps the lower one.
            OVERLAYFS => "overlayfs: a mapping goes stale when the file is copied up",
            // The daemon's file changes behind the page cache (invalidated at open).
            FUSE => "FUSE: the page cache is not coherent across opens",
            // Close-to-open coherence: a mapping kept across close misses other clients.
            NFS | SMB2 | CIFS | CEPH | V9FS => "network file system: close-to-open coherence",
            _ => return None,
        })
    }
}

/// Map `len` bytes of the file behind `fd`. A mapping needs read access (and write access
/// to be writable): a write-only or read-only application descriptor maps through a
/// private read-write description, closed again at once (the mapping keeps the file).
fn map_through(fd: RawFd, len: usize, write: bool, dax: bool) -> Res<(*mut u8, Granularity, bool)> {
    let (acc, _) = sys::access_of(fd)?;
    if acc == libc::O_RDWR || (acc == libc::O_RDONLY && !write) {
        return map_file(fd, len, write, dax);
    }
    let rw = sys::reopen_rw(fd)?;
    let r = map_file(rw, len, write, dax);
    // Not closed while the program may hold POSIX locks on the file (close_data_fd).
    match sys::fstat(fd) {
        Ok(st) => engine().defer_data_fd(rw, st.st_dev, st.st_ino),
        Err(_) => {
            let _ = sys::close(rw);
        }
    }
    r
}

/// Learn the data extents of `[h.known, size)` with SEEK_DATA and SEEK_HOLE, at most
/// MAX_EXTENTS in all. Stops early (leaving the rest unknown) on any error.
fn walk_extents(h: &mut Holes, fd: RawFd, size: u64) {
    let Some(rfd) = Seeker::new(fd) else { return };
    let rfd = rfd.0;
    let mut off = h.known;
    while off < size && h.data.len() < MAX_EXTENTS {
        let d = match sys::lseek(rfd, off as i64, libc::SEEK_DATA) {
            Ok(d) => d.min(size),
            Err(Errno::NXIO) => size,
            Err(_) => break,
        };
        if d >= size {
            off = size;
            break;
        }
        let end = match sys::lseek(rfd, d as i64, libc::SEEK_HOLE) {
            Ok(e) if e > d => e.min(size),
            _ => break,
        };
        match h.data.last_mut() {
            Some(last) if last.1 >= d => last.1 = last.1.max(end),
            _ => h.data.push((d, end)),
        }
        off = end;
    }
    h.known = h.known.max(off);
}

/// The first hole below `limit` (`limit` if none; 0 if the file cannot be looked at).
fn first_hole(fd: RawFd, limit: u64) -> u64 {
    let Some(s) = Seeker::new(fd) else { return 0 };
    sys::lseek(s.0, 0, libc::SEEK_HOLE).map_or(0, |h| h.min(limit))
}

/// SEEK_DATA and SEEK_HOLE move the kernel descriptor's offset, which a description
/// that keeps its offset in the kernel (a coherent one, on 0-2) relies on: put it back.
struct Seeker(RawFd, u64);

impl Seeker {
    fn new(fd: RawFd) -> Option<Seeker> {
        sys::lseek(fd, 0, libc::SEEK_CUR)
            .ok()
            .map(|at| Seeker(fd, at))
    }
}

impl Drop for Seeker {
    fn drop(&mut self) {
        let _ = sys::lseek(self.0, self.1 as i64, libc::SEEK_SET);
    }
}

/// Map `len` bytes of the file, 2 MiB aligned. Tries MAP_SYNC first: accepted only on DAX.
/// Map `len` bytes of `fd`: MAP_SYNC where the file system may be DAX (`dax`), else a
/// plain shared mapping. Mappings of 2 MiB and more are 2 MiB-aligned (DAX huge pages,
/// transparent huge pages on tmpfs) inside a reservation; smaller ones are one mmap.
fn map_file(fd: RawFd, len: usize, write: bool, dax: bool) -> Res<(*mut u8, Granularity, bool)> {
    let prot = if write {
        ProtFlags::READ | ProtFlags::WRITE
    } else {
        ProtFlags::READ
    };
    let huge = len as u64 >= HUGE;
    let res = if huge {
        // SAFETY: an anonymous PROT_NONE reservation at an address of the kernel's choice.
        unsafe {
            rustix::mm::mmap_anonymous(
                core::ptr::null_mut(),
                len + HUGE as usize,
                ProtFlags::empty(),
                MapFlags::PRIVATE | MapFlags::NORESERVE,
            )
        }?
    } else {
        core::ptr::null_mut()
    };
    let start = res as usize;
    let aligned = if huge {
        round_up(start as u64, HUGE) as usize
    } else {
        0
    };
    let try_map = |flags: MapFlags| {
        let flags = if huge { flags | MapFlags::FIXED } else { flags };
        // SAFETY: MAP_FIXED over the reservation we own and nobody else uses, or (small
        // mappings) at an address of the kernel's choice.
        unsafe { rustix::mm::mmap(aligned as *mut _, len, prot, flags, sys::bfd(fd), 0) }
    };
    let synced = if dax {
        try_map(MapFlags::SHARED_VALIDATE | MapFlags::SYNC).ok()
    } else {
        None
    };
    let (base, gran, sync) = match synced {
        Some(p) => (p, Granularity::CacheLine, true),
        None => match try_map(MapFlags::SHARED) {
            Ok(p) => (p, Granularity::Page, false),
            Err(err) => {
                if huge {
                    // SAFETY: releasing our own reservation.
                    let _ = unsafe { rustix::mm::munmap(res, len + HUGE as usize) };
                }
                return Err(err);
            }
        },
    };
    if huge {
        // SAFETY: trimming the unused head and tail of our own reservation.
        unsafe {
            if aligned > start {
                let _ = rustix::mm::munmap(res, aligned - start);
            }
            let tail = start + len + HUGE as usize - (aligned + len);
            if tail > 0 {
                let _ = rustix::mm::munmap((aligned + len) as *mut _, tail);
            }
        }
    }
    Ok((base.cast(), gran, sync))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn holes_never_call_a_hole_data() {
        let mut h = Holes {
            data: vec![(0, 8192), (1 << 20, (1 << 20) + 4096)],
            known: 2 << 20,
            gran: 4096,
            blocks: 0,
        };
        assert_eq!(h.prefix(), 8192);
        assert_eq!(h.span(0, 8192), Span::Data);
        assert_eq!(h.span(100, 8193), Span::Hole);
        assert_eq!(h.span(8192, 8193), Span::Hole);
        assert_eq!(h.span(1 << 20, (1 << 20) + 10), Span::Data);
        assert_eq!(h.span((2 << 20) - 1, 2 << 20), Span::Hole);
        assert_eq!(h.span(2 << 20, (2 << 20) + 1), Span::Unknown);
        // A write into the hole after the prefix joins it (whole pages).
        h.wrote(8192, 8193, 2 << 20);
        assert_eq!(h.data[0], (0, 12288));
        // A write bridging two extents merges them.
        h.wrote(12288, (1 << 20) + 1, 2 << 20);
        assert_eq!(h.data, vec![(0, (1 << 20) + 4096)]);
        // An append past the known end of a fully known file: the gap is a hole.
        h.wrote(3 << 20, (3 << 20) + 5, 2 << 20);
        assert_eq!(h.known, (3 << 20) + 5);
        assert_eq!(h.span((3 << 20) - 1, 3 << 20), Span::Hole);
        assert_eq!(h.span(3 << 20, (3 << 20) + 5), Span::Data);
        // Truncate inside an extent, then extend: the extension is a hole.
        h.resized((3 << 20) + 5, 5000);
        h.resized(5000, 1 << 20);
        assert_eq!(h.data, vec![(0, 5000)]);
        assert_eq!(h.known, 1 << 20);
        assert_eq!(h.span(4096, 5000), Span::Data);
        assert_eq!(h.span(4096, 5001), Span::Hole);
        // Not fully known: a write past the known end stays unknown.
        let mut u = Holes {
            data: vec![(0, 4096)],
            known: 4096,
            gran: 4096,
            blocks: 0,
        };
        u.wrote(1 << 20, (1 << 20) + 1, 2 << 20);
        assert_eq!((u.known, u.data.len()), (4096, 1));
    }

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
