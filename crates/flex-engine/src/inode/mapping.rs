//! The mapping of one file: its bounds and fast paths, the exclusive guard that publishes
//! the lock-free state mirror, creating and widening it, unmapping, and the mmap calls.

use super::holes::{first_hole, Holes, Span, PAGE_SZ};
use super::{round_up, state_of, Inode, MAPPED};
use crate::config::LogLevel;
use crate::log::flex_log;
use crate::persist::{Granularity, Strategy};
use crate::runtime::{engine, Engine};
use crate::stats::FileStat;
use crate::sys::{self, Errno, Res};
use rustix::fd::RawFd;
use rustix::mm::{MapFlags, ProtFlags};
use std::sync::atomic::{AtomicU32, Ordering::*};

const HUGE: u64 = 2 << 20;

pub struct Mapping {
    pub(super) base: *mut u8,
    /// Length of the virtual reservation (file-backed up to here; beyond EOF faults).
    pub(super) len: usize,
    pub(super) writable: bool,
    /// How stores into this mapping become durable, chosen when it was made.
    pub persist: &'static Strategy,
    pub map_sync: bool,
    /// The kernel's size of the file as this process set or last saw it.
    pub(super) ksize: u64,
    /// Over-allocated with a trailer at `ksize - 64`.
    pub(super) trailer: bool,
    /// tmpfs or DAX: populating page tables ahead is cheap and never dirties disk pages.
    pub(super) populate_ok: bool,
    /// Reads that end at or below this copy straight from the mapping: its length, or on
    /// tmpfs the end of the file's hole-free prefix. 0 while unmapped.
    pub(super) rfast: u64,
    /// The same for single-buffer overwrites (the hole-free prefix wherever holes are
    /// tracked).
    pub(super) wfast: u64,
    /// What this process knows of the file's holes, where a fault on one allocates what
    /// the kernel's call would not. tmpfs: a read fault on a hole allocates a page (the
    /// kernel's read of a hole allocates nothing), so reads that touch a hole, or a part
    /// of the file not looked at yet, go to the kernel. Blocks smaller than a page (ext4
    /// -b 1024...): a write fault allocates the page's every block, the kernel's write only
    /// those it touches, so writes into holes go to the kernel. Elsewhere `None`: a read
    /// fault on a hole allocates no block (page cache: a zero-filled page; DAX: the zero
    /// page), a write fault the page the kernel's write would.
    pub(super) holes: Option<Holes>,
    /// tmpfs: reads must not fault holes in (`holes` is then set).
    pub(super) hole_reads: bool,
}

// SAFETY: `base` points to a shared file mapping owned by this struct; all access to the
// pointed-to bytes goes through the guarded copy routines under the inode's locks.
unsafe impl Send for Mapping {}
// SAFETY: as above; shared references only read the fields.
unsafe impl Sync for Mapping {}

impl Mapping {
    /// Recompute the fast bounds after the mapping or the hole knowledge changed.
    pub(super) fn refast(&mut self) {
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
    pub(super) fn write_in_place(&self, off: u64, end: u64, ls: u64) -> bool {
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
pub(super) struct MapWrite<'a> {
    pub(super) g: std::sync::RwLockWriteGuard<'a, Mapping>,
    pub(super) state: &'a AtomicU32,
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

impl Inode {
    /// Create or widen the mapping so that it covers `need` bytes (and is writable if asked).
    /// Caller holds the size lock.
    pub(super) fn ensure_map(
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
            #[cfg(feature = "sim")]
            {
                m.persist =
                    crate::persist::sim_map::on_map(fd, m.base, want, m.persist.granularity).1;
            }
            m.refast();
            e.stats.remaps.fetch_add(1, Relaxed);
            return Ok(());
        }
        let fs = self.fs(fd);
        let (base, gran, sync) = map_through(fd, want, write, fs.may_be_dax())?;
        // MAP_SYNC took: with eADR a fenced store is durable, no flush needed.
        let gran = match gran {
            Granularity::CacheLine if fs.cpu_caches_persist() => Granularity::Byte,
            g => g,
        };
        #[cfg(feature = "sim")]
        let (gran, persist) = crate::persist::sim_map::on_map(fd, base, want, gran);
        #[cfg(not(feature = "sim"))]
        let persist = Strategy::of(gran);
        if !m.base.is_null() {
            // SAFETY: the old mapping is ours and no copy runs (exclusive map lock).
            let _ = unsafe { rustix::mm::munmap(m.base.cast(), m.len) };
            e.stats.unmaps.fetch_add(1, Relaxed);
        }
        m.base = base;
        m.len = want;
        m.writable = write;
        m.persist = persist;
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
                e.stats.fell_back(reason);
                self.set_nomap();
                return Err(Errno::OPNOTSUPP);
            }
        }
        let _s = self.lock_size();
        let mut m = self.map_w();
        let k = m.ksize;
        self.ensure_map(&mut m, fd, k, write, e)
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
