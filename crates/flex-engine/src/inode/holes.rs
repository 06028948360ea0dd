//! What this process knows of a file's holes (tmpfs, or blocks smaller than a page), and
//! looking at them with SEEK_DATA and SEEK_HOLE.

use super::mapping::Mapping;
use super::{round_up, Inode};
use crate::sys::{self, Errno};
use rustix::fd::RawFd;

/// Most data extents remembered per file (16 bytes each); past them the file is "not
/// looked at" and reads there go to the kernel.
const MAX_EXTENTS: usize = 1 << 16;
pub(super) const PAGE_SZ: u64 = 4096;

/// The data extents of `[0, known)` (sorted, disjoint, not adjacent); the rest of that
/// range is a hole; `[known, ..)` has not been looked at. Data may be remembered as hole
/// (a write of another process filled it: the kernel then reads it, correctly), never a
/// hole as data (a read through the mapping would allocate it).
#[derive(Default)]
pub(super) struct Holes {
    pub(super) data: Vec<(u64, u64)>,
    pub(super) known: u64,
    /// What a write allocates around its bytes: the page on tmpfs, the block elsewhere.
    pub(super) gran: u64,
    /// st_blocks when last seen: fewer means something was freed (a hole punched, the
    /// file truncated and extended again) and the knowledge is dropped.
    pub(super) blocks: u64,
}

#[derive(Debug, PartialEq, Eq)]
pub(super) enum Span {
    /// All data: the mapping serves it.
    Data,
    /// Touches a hole: the kernel reads.
    Hole,
    /// Reaches past what is known: look first.
    Unknown,
}

impl Holes {
    /// End of the hole-free prefix.
    pub(super) fn prefix(&self) -> u64 {
        match self.data.first() {
            Some(&(0, e)) => e.min(self.known),
            _ => 0,
        }
    }

    pub(super) fn span(&self, a: u64, b: u64) -> Span {
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
    pub(super) fn wrote(&mut self, off: u64, end: u64, old: u64) {
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
    pub(super) fn cut(&mut self, len: u64) {
        self.known = self.known.min(len);
        let i = self.data.partition_point(|e| e.0 < len);
        self.data.truncate(i);
        if let Some(last) = self.data.last_mut() {
            last.1 = last.1.min(len);
        }
    }

    /// This process truncated or extended the file from `old` to `new` (an extension is a
    /// hole).
    pub(super) fn resized(&mut self, old: u64, new: u64) {
        let full = self.known >= old;
        self.cut(new);
        if full {
            self.known = new;
        }
    }

    pub(super) fn forget(&mut self) {
        self.data.clear();
        self.known = 0;
    }
}

impl Inode {
    /// Look at the file's holes until `[0, need)` is known, if it can be (tmpfs only; the
    /// caller holds the size lock and the exclusive map lock). Returns whether it is.
    pub(super) fn learn_holes(&self, m: &mut Mapping, fd: RawFd, need: u64) -> bool {
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
pub(super) fn first_hole(fd: RawFd, limit: u64) -> u64 {
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
}
