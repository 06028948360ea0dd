//! The index of ranges not yet in the data file (committed but unapplied, then
//! uncommitted; the newest wins), and reads through it.

use super::{Core, DataDev};
use crate::atomic::log::Media;
use crate::sys::{Errno, Res};

impl<M: Media> Core<M> {
    /// Put `[s, e)` in the index (pointing at log offset `at`), or with `None` drop it.
    pub(super) fn index(&mut self, s: u64, e: u64, at: Option<u64>) {
        // An entry starting before `s` and reaching into it keeps its head (and its tail
        // past `e`).
        if let Some((&ps, &(pe, pat))) = self.ext.range(..s).next_back() {
            if pe > s {
                self.ext.insert(ps, (s, pat));
                if pe > e {
                    self.ext.insert(e, (pe, pat + (e - ps)));
                }
            }
        }
        // Entries starting inside go, but for their tails past `e`.
        while let Some((&k, &(ke, kat))) = self.ext.range(s..e).next() {
            self.ext.remove(&k);
            if ke > e {
                self.ext.insert(e, (ke, kat + (e - k)));
            }
        }
        if let Some(at) = at {
            self.ext.insert(s, (e, at));
        }
    }

    /// Read as this process sees the file: committed bytes, then its own uncommitted ones.
    ///
    /// # Safety
    /// `dst` must be valid for `len` bytes or fault inside a guarded copy (EFAULT).
    pub unsafe fn read<D: DataDev>(
        &self,
        data: &D,
        off: u64,
        dst: *mut u8,
        len: usize,
    ) -> Res<usize> {
        self.check()?;
        if off >= self.size || len == 0 {
            return Ok(0);
        }
        let n = (len as u64).min(self.size - off) as usize;
        let end = off + n as u64;
        let base_end = end.min(self.base_limit).max(off);
        let mut got = 0usize;
        if base_end > off {
            // SAFETY: forwarded contract; within the first n bytes of dst.
            got = unsafe { data.read_raw(off, dst, (base_end - off) as usize) }?;
        }
        if got < n {
            // SAFETY: within dst's n bytes; a bad buffer faults inside the guarded zeroing.
            if unsafe { crate::fault::zero(dst.add(got), n - got) } != 0 {
                return Err(Errno::FAULT);
            }
        }
        let first = self
            .ext
            .range(..off)
            .next_back()
            .map(|(&k, _)| k)
            .unwrap_or(off);
        for (&s, &(e, at)) in self.ext.range(first..end) {
            let (a, b) = (s.max(off), e.min(end));
            if a >= b {
                continue;
            }
            // SAFETY: [a, b) lies inside [off, end), so inside dst; the log bytes are ours.
            let rem = unsafe {
                self.log
                    .m
                    .load_raw(at + (a - s), dst.add((a - off) as usize), (b - a) as usize)
            };
            if rem != 0 {
                return Err(Errno::FAULT);
            }
        }
        Ok(n)
    }
}
