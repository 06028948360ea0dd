//! Open file descriptions and the descriptor table.
//!
//! A [`Desc`] is what POSIX calls an open file description: the file offset and status
//! flags, shared by every descriptor `dup`ed from it. The table maps descriptor numbers to
//! descriptions without a global lock (one `ArcSwapOption` per descriptor, in lazily
//! allocated pages). Descriptors that flex does not manage are simply absent: a lookup of
//! them is one atomic load.

use crate::inode::Inode;
use arc_swap::ArcSwapOption;
use std::sync::atomic::{
    AtomicBool, AtomicI32, AtomicPtr, AtomicU32, AtomicU64, AtomicU8, AtomicUsize, Ordering::*,
};
use std::sync::{Arc, Mutex, MutexGuard};

pub struct Desc {
    pub inode: Arc<Inode>,
    /// Access mode the application asked for (O_RDONLY, O_WRONLY, O_RDWR). The kernel
    /// descriptor may be O_RDWR where the application asked O_WRONLY (mapping needs read).
    pub acc: i32,
    /// Status flags as the application sees them (F_GETFL); O_APPEND is emulated.
    pub flags: AtomicI32,
    /// Handed back to the kernel (after fork, exec, dup onto 0-2): the kernel owns the
    /// offset and the size from then on.
    pub demoted: AtomicBool,
    /// Reachable through descriptor 0, 1 or 2 (the program dup'ed it there): stdio writes
    /// to those straight through the kernel, so the kernel's offset stays authoritative and
    /// the file's size exact; flex still serves the bytes.
    pub coherent: AtomicBool,
    /// The file offset; the mutex is also the position lock of read/write/lseek.
    pos: Mutex<u64>,
    /// The kernel's file position holds the offset (an append the kernel placed moved it
    /// to the end), not `pos`: read back when needed ([`Desc::pos_at`]), so a run of
    /// appends costs one system call each, as without flex.
    pos_in_kernel: AtomicBool,
    /// Descriptors in the table that point here.
    pub fds: AtomicU32,
    /// The application opened it with O_FLEX (map at once).
    pub explicit: bool,
}

impl Desc {
    pub fn new(inode: Arc<Inode>, acc: i32, flags: i32, explicit: bool) -> Desc {
        Desc {
            inode,
            acc,
            flags: AtomicI32::new(flags),
            demoted: AtomicBool::new(false),
            coherent: AtomicBool::new(false),
            pos: Mutex::new(0),
            pos_in_kernel: AtomicBool::new(false),
            fds: AtomicU32::new(0),
            explicit,
        }
    }
    /// The position lock, with the offset as flex last set it (see [`Desc::pos_at`]).
    pub fn pos(&self) -> MutexGuard<'_, u64> {
        self.pos.lock().unwrap_or_else(|p| p.into_inner())
    }
    /// The position lock with the current offset (read back from the kernel through `fd`,
    /// one of this description's descriptors, if an append left it there).
    pub fn pos_at(&self, fd: i32) -> MutexGuard<'_, u64> {
        let mut g = self.pos();
        self.sync_pos(&mut g, fd);
        g
    }
    /// Take the offset back from the kernel if it holds it (caller holds the lock).
    pub fn sync_pos(&self, g: &mut MutexGuard<'_, u64>, fd: i32) {
        if self.pos_in_kernel.load(Acquire) {
            if let Ok(k) = crate::sys::lseek(fd, 0, libc::SEEK_CUR) {
                **g = k;
                self.pos_in_kernel.store(false, Release);
            }
        }
    }
    pub fn pos_is_in_kernel(&self) -> bool {
        self.pos_in_kernel.load(Acquire)
    }
    /// `in_kernel`: the kernel's file position now holds the offset (caller holds the lock).
    pub fn set_pos_in_kernel(&self, in_kernel: bool) {
        self.pos_in_kernel.store(in_kernel, Release);
    }
    pub fn readable(&self) -> bool {
        self.acc != libc::O_WRONLY
    }
    pub fn writable(&self) -> bool {
        self.acc != libc::O_RDONLY
    }
    pub fn append(&self) -> bool {
        self.flags.load(Relaxed) & libc::O_APPEND != 0
    }
    /// Opened O_SYNC (Some(false)) or O_DSYNC (Some(true)): every write is durable on
    /// return (fixed at open: F_SETFL cannot change these on Linux).
    #[inline]
    pub fn sync_writes(&self) -> Option<bool> {
        let f = self.flags.load(Relaxed);
        if f & libc::O_SYNC == libc::O_SYNC {
            Some(false)
        } else if f & libc::O_DSYNC != 0 {
            Some(true)
        } else {
            None
        }
    }
    pub fn is_coherent(&self) -> bool {
        self.coherent.load(Acquire)
    }
    pub fn is_demoted(&self) -> bool {
        self.demoted.load(Acquire)
    }
}

const L2: usize = 1024;
const L1: usize = 1024;
/// A page of descriptor slots, with one bit per slot saying whether it is set: a call on
/// a descriptor flex does not manage costs one load of that word, not the slot's (whose
/// load takes a thread-local debt slot, in arc-swap).
struct Page {
    slots: [ArcSwapOption<Desc>; L2],
    used: [AtomicU64; L2 / 64],
    /// Lazy descriptors: opened under FLEX_PATHS, not looked at yet (no fstat, no
    /// inode, no description), the kernel serving them. 0: not lazy; else 1 + the IO
    /// calls the kernel served so far (saturating).
    lazy: [AtomicU8; L2],
    /// A lazy descriptor's file end as far as this process knows it ([`END_UNKNOWN`]
    /// until an fstat, or an O_TRUNC open, said; then raised by its positioned writes).
    lazy_end: [AtomicU64; L2],
    /// A lazy descriptor's file position as far as this process knows it (0 at open,
    /// moved by its read and write calls; [`POS_UNKNOWN`] after an lseek or a call that
    /// moves it by an amount flex does not see), or [`POS_APPENDS`] (O_APPEND: every
    /// write goes to the end).
    lazy_pos: [AtomicU64; L2],
    /// Lazy descriptors that became the kernel's for good at a fork: flex serves nothing
    /// on them but still sees their calls (the snapshot gate counts them).
    forked: [AtomicU64; L2 / 64],
}

/// No end known for a lazy descriptor: every IO call counts towards taking it over.
const END_UNKNOWN: u64 = u64::MAX;
/// No position known for a lazy descriptor: its unpositioned calls count.
const POS_UNKNOWN: u64 = u64::MAX;
/// A lazy O_APPEND descriptor: its writes extend the file wherever its position is.
const POS_APPENDS: u64 = u64::MAX - 1;

/// A lazy descriptor's position is no longer known (an O_APPEND one needs none).
fn forget_pos(pos: &AtomicU64) {
    if pos.load(Relaxed) != POS_APPENDS {
        pos.store(POS_UNKNOWN, Relaxed);
    }
}

/// An IO call on a lazy descriptor (see [`Table::lazy_io`]): its range, at `off` or
/// (None) at the file position.
#[derive(Clone, Copy)]
pub struct LazyAt {
    pub off: Option<u64>,
    pub len: u64,
    pub write: bool,
}

impl Page {
    fn is_used(&self, b: usize) -> bool {
        self.used[b / 64].load(Acquire) & (1 << (b % 64)) != 0
    }
    fn mark(&self, b: usize, used: bool) {
        let bit = 1u64 << (b % 64);
        if used {
            self.used[b / 64].fetch_or(bit, Release);
        } else {
            self.used[b / 64].fetch_and(!bit, Release);
        }
    }
}

pub struct Table {
    pages: [AtomicPtr<Page>; L1],
    count: AtomicUsize,
    /// Lazy descriptors (a call on an unmanaged descriptor looks at its byte only
    /// when some exist).
    lazy: AtomicUsize,
    /// Descriptors with a `forked` bit.
    forked: AtomicUsize,
}

impl Default for Table {
    fn default() -> Self {
        Self::new()
    }
}

impl Table {
    pub fn new() -> Table {
        Table {
            pages: [const { AtomicPtr::new(core::ptr::null_mut()) }; L1],
            count: AtomicUsize::new(0),
            lazy: AtomicUsize::new(0),
            forked: AtomicUsize::new(0),
        }
    }

    fn slot(&self, fd: i32, create: bool) -> Option<(&Page, usize)> {
        let fd = usize::try_from(fd).ok()?;
        let (a, b) = (fd / L2, fd % L2);
        let cell = self.pages.get(a)?;
        let mut p = cell.load(Acquire);
        if p.is_null() {
            if !create {
                return None;
            }
            let fresh: Box<Page> = Box::new(Page {
                slots: core::array::from_fn(|_| ArcSwapOption::empty()),
                used: [const { AtomicU64::new(0) }; L2 / 64],
                lazy: [const { AtomicU8::new(0) }; L2],
                lazy_end: [const { AtomicU64::new(END_UNKNOWN) }; L2],
                lazy_pos: [const { AtomicU64::new(POS_UNKNOWN) }; L2],
                forked: [const { AtomicU64::new(0) }; L2 / 64],
            });
            let raw = Box::into_raw(fresh);
            match cell.compare_exchange(core::ptr::null_mut(), raw, AcqRel, Acquire) {
                Ok(_) => p = raw,
                Err(cur) => {
                    // SAFETY: `raw` came from Box::into_raw above and was never shared.
                    drop(unsafe { Box::from_raw(raw) });
                    p = cur;
                }
            }
        }
        // SAFETY: pages are allocated once and never freed, so the reference is valid for
        // the life of the table (the process).
        Some((unsafe { &*p }, b))
    }

    /// The description behind `fd`, if flex manages it.
    #[inline]
    pub fn get(&self, fd: i32) -> Option<Arc<Desc>> {
        if self.count.load(Relaxed) == 0 {
            return None;
        }
        let (page, b) = self.slot(fd, false)?;
        if !page.is_used(b) {
            return None;
        }
        page.slots[b].load_full()
    }

    /// Does the table know `fd`? As `get(fd).is_some()`, without taking a reference to
    /// the description (the lock commands of fcntl ask this, many times a transaction).
    #[inline]
    pub fn knows(&self, fd: i32) -> bool {
        self.count.load(Relaxed) != 0 && self.slot(fd, false).is_some_and(|(p, b)| p.is_used(b))
    }

    /// Does flex see `fd`'s calls (a description, or a lazy descriptor)? Loads only: the
    /// snapshot request's signal handler asks it.
    pub fn sees(&self, fd: i32) -> bool {
        if self.count.load(Relaxed) == 0
            && self.lazy.load(Relaxed) == 0
            && self.forked.load(Relaxed) == 0
        {
            return false;
        }
        self.slot(fd, false).is_some_and(|(p, b)| {
            p.is_used(b)
                || p.lazy[b].load(Relaxed) != 0
                || p.forked[b / 64].load(Relaxed) & (1 << (b % 64)) != 0
        })
    }

    /// Point `fd` at `d` (replacing what was there; returns the old description).
    pub fn set(&self, fd: i32, d: Arc<Desc>) -> Option<Arc<Desc>> {
        let (page, b) = self.slot(fd, true)?;
        d.fds.fetch_add(1, AcqRel);
        let old = page.slots[b].swap(Some(d));
        // After the slot: a call that sees the bit finds the description.
        page.mark(b, true);
        if old.is_none() {
            self.count.fetch_add(1, AcqRel);
        }
        old
    }

    /// Forget `fd`; returns its description if it had one.
    pub fn take(&self, fd: i32) -> Option<Arc<Desc>> {
        if self.count.load(Relaxed) == 0 {
            return None;
        }
        let (page, b) = self.slot(fd, false)?;
        page.mark(b, false);
        let old = page.slots[b].swap(None);
        if old.is_some() {
            self.count.fetch_sub(1, AcqRel);
        }
        old
    }

    /// `fd` was opened for flex, which looks at it only if the program's IO calls on it
    /// come to more than a few (see [`Table::lazy_io`]). `end`: the file's size if the
    /// open said it (O_TRUNC: 0); `appends`: opened with O_APPEND.
    pub fn make_lazy(&self, fd: i32, end: Option<u64>, appends: bool) {
        if let Some((page, b)) = self.slot(fd, true) {
            page.lazy_end[b].store(end.unwrap_or(END_UNKNOWN), Relaxed);
            // A new open description starts at 0.
            page.lazy_pos[b].store(if appends { POS_APPENDS } else { 0 }, Relaxed);
            if page.lazy[b].swap(1, AcqRel) == 0 {
                self.lazy.fetch_add(1, AcqRel);
            }
        }
    }

    /// An IO call on `fd` (`at`: its range, if known): if it is lazy, the calls the kernel
    /// served on it before this one that count (None: not lazy). A call at or past the
    /// end this process knows does not count: flex would pass it to the kernel too (a
    /// write there extends the file, a read there finds its end), nor does a write of an
    /// O_APPEND descriptor. So a file written front to back (a log, dd's output, a
    /// rollback journal) and read only past its end stays the kernel's and never pays
    /// for a take-over. The position and the end are what this process saw; a stale one
    /// (another process grew or cut the file, a call moved the position unseen) only
    /// moves the take-over: the kernel serves a lazy file exactly.
    #[inline]
    pub fn lazy_io(&self, fd: i32, at: Option<LazyAt>) -> Option<u32> {
        if self.lazy.load(Relaxed) == 0 {
            return None;
        }
        let (page, b) = self.slot(fd, false)?;
        let c = &page.lazy[b];
        match c.load(Acquire) {
            0 => None,
            n => {
                // Only this descriptor's callers race on its slots (a lazy descriptor has
                // no duplicate in this process: dup takes it over, fork ends laziness); a
                // lost update is one more kernel call or one fewer, never a wrong answer.
                let uncounted = Some(u32::from(n - 1));
                if let Some(at) = at {
                    let pos = &page.lazy_pos[b];
                    let p = pos.load(Relaxed);
                    if p == POS_APPENDS && at.write {
                        // Linux: pwrite on an O_APPEND descriptor appends too.
                        return uncounted;
                    }
                    let off = match at.off {
                        Some(o) => Some(o),
                        None if p < POS_APPENDS => {
                            // A short call leaves the position too far on: past the end,
                            // where nothing counts, or a stale end below it; either way
                            // only the count is off.
                            pos.store(p.saturating_add(at.len).min(POS_APPENDS - 1), Relaxed);
                            Some(p)
                        }
                        None => None,
                    };
                    let end = &page.lazy_end[b];
                    let e = end.load(Relaxed);
                    if let (Some(off), true) = (off, e != END_UNKNOWN) {
                        if at.write {
                            // A short write leaves this end too high: more calls count.
                            end.store(e.max(off.saturating_add(at.len)), Relaxed);
                        }
                        if off >= e {
                            return uncounted;
                        }
                    }
                } else {
                    // A call of a length not known here (vectored): the position is lost.
                    forget_pos(&page.lazy_pos[b]);
                }
                if n < u8::MAX {
                    c.store(n + 1, Release);
                }
                uncounted
            }
        }
    }

    /// `fd`'s position or size moved in a way flex did not follow (lseek, a kernel data
    /// call at the position, ftruncate, fallocate): if it is lazy, forget them.
    pub fn lazy_moved(&self, fd: i32, size_too: bool) {
        if self.lazy.load(Relaxed) == 0 {
            return;
        }
        if let Some((page, b)) = self.slot(fd, false) {
            if page.lazy[b].load(Acquire) != 0 {
                forget_pos(&page.lazy_pos[b]);
                if size_too {
                    page.lazy_end[b].store(END_UNKNOWN, Relaxed);
                }
            }
        }
    }

    /// The program's fstat of `fd` found `size`: if `fd` is lazy, its known end.
    pub fn lazy_saw_size(&self, fd: i32, size: u64) {
        if self.lazy.load(Relaxed) == 0 {
            return;
        }
        if let Some((page, b)) = self.slot(fd, false) {
            if page.lazy[b].load(Acquire) != 0 {
                page.lazy_end[b].store(size, Relaxed);
            }
        }
    }

    /// `fd` is no longer lazy (closed, duplicated, shared by fork, or taken over):
    /// true if it was.
    pub fn unlazy(&self, fd: i32) -> bool {
        if self.forked.load(Relaxed) != 0 {
            if let Some((page, b)) = self.slot(fd, false) {
                let bit = 1u64 << (b % 64);
                if page.forked[b / 64].fetch_and(!bit, AcqRel) & bit != 0 {
                    self.forked.fetch_sub(1, AcqRel);
                }
            }
        }
        if self.lazy.load(Relaxed) == 0 {
            return false;
        }
        let Some((page, b)) = self.slot(fd, false) else {
            return false;
        };
        let was = page.lazy[b].swap(0, AcqRel) != 0;
        if was {
            self.lazy.fetch_sub(1, AcqRel);
        }
        was
    }

    /// Every lazy descriptor in `[first, last]` is no longer lazy (`forked`: a fork made
    /// them the kernel's for good; else they are closed, and forget that too).
    pub fn unlazy_range(&self, first: u32, last: u32, forked: bool) {
        if (self.lazy.load(Acquire) == 0 && self.forked.load(Acquire) == 0) || first > last {
            return;
        }
        for (a, page) in self.allocated_pages() {
            for (b, c) in page.lazy.iter().enumerate() {
                let fd = (a * L2 + b) as u32;
                if fd < first || fd > last {
                    continue;
                }
                let bit = 1u64 << (b % 64);
                if c.swap(0, AcqRel) != 0 {
                    self.lazy.fetch_sub(1, AcqRel);
                    if forked && page.forked[b / 64].fetch_or(bit, AcqRel) & bit == 0 {
                        self.forked.fetch_add(1, AcqRel);
                    }
                } else if !forked && page.forked[b / 64].fetch_and(!bit, AcqRel) & bit != 0 {
                    self.forked.fetch_sub(1, AcqRel);
                }
            }
        }
    }

    /// Every (fd, description) pair.
    pub fn entries(&self) -> Vec<(i32, Arc<Desc>)> {
        let mut out = Vec::new();
        if self.count.load(Acquire) == 0 {
            return out;
        }
        for (a, page) in self.allocated_pages() {
            for (b, s) in page.slots.iter().enumerate() {
                if let Some(d) = s.load_full() {
                    out.push(((a * L2 + b) as i32, d));
                }
            }
        }
        out
    }

    /// The pages allocated so far, with their index.
    fn allocated_pages(&self) -> impl Iterator<Item = (usize, &Page)> {
        self.pages.iter().enumerate().filter_map(|(a, cell)| {
            let p = cell.load(Acquire);
            // SAFETY: a non-null page was allocated once and is never freed.
            (!p.is_null()).then(|| (a, unsafe { &*p }))
        })
    }

    pub fn len(&self) -> usize {
        self.count.load(Acquire)
    }
    /// No managed and no lazy descriptor: a call on any descriptor is the kernel's.
    pub fn is_empty(&self) -> bool {
        self.len() == 0 && self.lazy.load(Acquire) == 0 && self.forked.load(Acquire) == 0
    }
}
