//! Persistence simulator: devices with a volatile image (what loads see) and a durable
//! image (what survives a power cut). A line reaches the durable image only when it was
//! stored, flushed, and a fence followed (a non-temporal store counts as store + flush).
//! Page-granularity devices (the page cache) use 4 KiB lines and make every dirty line
//! durable at their `sync` (fdatasync).
//!
//! At every fence the simulator can record a crash point: the durable images plus the
//! lines still in flight (stored but not yet durable, flushed or not: the CPU may write
//! any of them back at any time), and sizes not yet durable. [`CrashPoint::image`] builds
//! the device contents a crash at that point may leave, for any subset of the lines in
//! flight. Used by the failure-atomic protocol's tests (`crate::atomic`), which run the
//! engine's own code against it.

use crate::atomic::log::Media;
use crate::atomic::protocol::DataDev;
use crate::sys::Res;
use std::cell::RefCell;
use std::collections::BTreeSet;
use std::rc::Rc;

pub struct Dev {
    line: usize,
    vol: Vec<u8>,
    dur: Vec<u8>,
    vol_len: u64,
    dur_len: u64,
    dirty: BTreeSet<usize>,
    flushed: BTreeSet<usize>,
    /// The size changed since the last sync (data devices: ftruncate, extension).
    len_dirty: bool,
}

impl Dev {
    fn touch(&mut self, off: u64, len: u64) {
        if len == 0 {
            return;
        }
        let a = off as usize / self.line;
        let b = (off + len - 1) as usize / self.line;
        for l in a..=b {
            self.dirty.insert(l);
            self.flushed.remove(&l);
        }
    }
    fn room(&mut self, end: u64) {
        let want = (end as usize).div_ceil(self.line) * self.line;
        if self.vol.len() < want {
            self.vol.resize(want, 0);
        }
    }
}

/// What may be in flight at a crash.
#[derive(Clone, Debug)]
pub enum InFlight {
    Line {
        dev: usize,
        line: usize,
        bytes: Vec<u8>,
    },
    Len {
        dev: usize,
        len: u64,
    },
}

#[derive(Clone, Debug)]
pub struct CrashPoint<T: Clone> {
    /// The test's label for the moment (e.g. which model states are acceptable).
    pub tag: T,
    pub durable: Vec<(Vec<u8>, u64)>,
    pub inflight: Vec<InFlight>,
    pub line: Vec<usize>,
}

impl<T: Clone> CrashPoint<T> {
    /// Device contents after a crash here, keeping in-flight item `i` iff `keep(i)`.
    pub fn image(&self, keep: impl Fn(usize) -> bool) -> Vec<Vec<u8>> {
        let mut out: Vec<(Vec<u8>, u64)> = self.durable.clone();
        for (i, f) in self.inflight.iter().enumerate() {
            if !keep(i) {
                continue;
            }
            match f {
                InFlight::Line { dev, line, bytes } => {
                    let d = &mut out[*dev].0;
                    let at = line * self.line[*dev];
                    if d.len() < at + bytes.len() {
                        d.resize(at + bytes.len(), 0);
                    }
                    d[at..at + bytes.len()].copy_from_slice(bytes);
                }
                InFlight::Len { dev, len } => out[*dev].1 = *len,
            }
        }
        out.into_iter()
            .map(|(mut b, len)| {
                b.resize(len as usize, 0);
                b
            })
            .collect()
    }
}

pub struct World<T: Clone> {
    pub devs: Vec<Dev>,
    pub points: Vec<CrashPoint<T>>,
    pub tag: T,
    pub capture: bool,
    pub fences: u64,
}

pub type Shared<T> = Rc<RefCell<World<T>>>;

impl<T: Clone> World<T> {
    pub fn new(tag: T) -> Shared<T> {
        Rc::new(RefCell::new(World {
            devs: Vec::new(),
            points: Vec::new(),
            tag,
            capture: false,
            fences: 0,
        }))
    }

    /// Add a device holding `init` durably; `page`: 4 KiB lines (page cache), else 64 B.
    pub fn add(w: &Shared<T>, init: &[u8], page: bool) -> usize {
        let line = if page { 4096 } else { 64 };
        let mut g = w.borrow_mut();
        let mut vol = Vec::with_capacity(16 << 20);
        vol.extend_from_slice(init);
        g.devs.push(Dev {
            line,
            dur: vol.clone(),
            vol,
            vol_len: init.len() as u64,
            dur_len: init.len() as u64,
            dirty: BTreeSet::new(),
            flushed: BTreeSet::new(),
            len_dirty: false,
        });
        g.devs.len() - 1
    }

    /// The volatile contents of a device (what a program reads now).
    pub fn contents(&self, dev: usize) -> Vec<u8> {
        let d = &self.devs[dev];
        let mut v = d.vol.clone();
        v.resize(d.vol_len as usize, 0);
        v
    }

    /// A fence: record the crash point first, then make flushed lines durable.
    pub fn fence(&mut self) {
        self.fences += 1;
        if self.capture {
            let mut inflight = Vec::new();
            for (i, d) in self.devs.iter().enumerate() {
                for &l in &d.dirty {
                    let a = l * d.line;
                    let b = (a + d.line).min(d.vol.len());
                    inflight.push(InFlight::Line {
                        dev: i,
                        line: l,
                        bytes: d.vol[a..b].to_vec(),
                    });
                }
                if d.len_dirty {
                    inflight.push(InFlight::Len {
                        dev: i,
                        len: d.vol_len,
                    });
                }
            }
            let p = CrashPoint {
                tag: self.tag.clone(),
                durable: self
                    .devs
                    .iter()
                    .map(|d| (d.dur.clone(), d.dur_len))
                    .collect(),
                inflight,
                line: self.devs.iter().map(|d| d.line).collect(),
            };
            self.points.push(p);
        }
        for d in &mut self.devs {
            let fl = core::mem::take(&mut d.flushed);
            for l in fl {
                let a = l * d.line;
                let b = (a + d.line).min(d.vol.len());
                if d.dur.len() < b {
                    d.dur.resize(b, 0);
                }
                d.dur[a..b].copy_from_slice(&d.vol[a..b]);
                d.dirty.remove(&l);
            }
        }
    }

    /// fdatasync of one device: every dirty line and the size, then a fence.
    pub fn sync(&mut self, dev: usize) {
        let d = &mut self.devs[dev];
        let dirty: Vec<usize> = d.dirty.iter().copied().collect();
        d.flushed.extend(dirty);
        let len_dirty = d.len_dirty;
        self.fence();
        let d = &mut self.devs[dev];
        if len_dirty {
            d.dur_len = d.vol_len;
            d.len_dirty = false;
        }
    }
}

/// A simulated device used as the log ([`Media`]) or the data file ([`DataDev`]).
pub struct SimDev<T: Clone> {
    pub w: Shared<T>,
    pub dev: usize,
    /// Page granularity: `flush` is a no-op, `barrier` is a sync of this device.
    pub page: bool,
}

impl<T: Clone> Media for SimDev<T> {
    fn len(&self) -> u64 {
        self.w.borrow().devs[self.dev].vol_len
    }
    fn ensure(&mut self, len: u64) -> Res<()> {
        let mut g = self.w.borrow_mut();
        let d = &mut g.devs[self.dev];
        if d.vol_len < len {
            d.room(len);
            d.vol_len = len;
            // The engine fdatasyncs after growing a log: the size is durable at once.
            d.dur_len = len;
        }
        Ok(())
    }
    fn read(&self, off: u64, buf: &mut [u8]) {
        let g = self.w.borrow();
        let d = &g.devs[self.dev];
        let a = off as usize;
        let b = (a + buf.len()).min(d.vol.len());
        if a < b {
            buf[..b - a].copy_from_slice(&d.vol[a..b]);
        }
    }
    fn store(&mut self, off: u64, data: &[u8]) {
        let mut g = self.w.borrow_mut();
        let d = &mut g.devs[self.dev];
        d.room(off + data.len() as u64);
        d.vol[off as usize..off as usize + data.len()].copy_from_slice(data);
        d.touch(off, data.len() as u64);
    }
    unsafe fn store_raw(&mut self, off: u64, src: *const u8, len: usize) -> usize {
        // SAFETY: tests pass valid buffers.
        let s = unsafe { core::slice::from_raw_parts(src, len) };
        self.store(off, s);
        0
    }
    unsafe fn load_raw(&self, off: u64, dst: *mut u8, len: usize) -> usize {
        // SAFETY: tests pass valid buffers.
        let s = unsafe { core::slice::from_raw_parts_mut(dst, len) };
        self.read(off, s);
        0
    }
    fn ptr(&self, off: u64, len: u64) -> Option<*const u8> {
        let g = self.w.borrow();
        let d = &g.devs[self.dev];
        ((off + len) as usize <= d.vol.len()).then(|| {
            // SAFETY: in bounds; the vector was allocated with room for every test, so it
            // does not move while the pointer is used.
            unsafe { d.vol.as_ptr().add(off as usize) }
        })
    }
    fn flush(&mut self, off: u64, len: u64) {
        if self.page || len == 0 {
            return;
        }
        let mut g = self.w.borrow_mut();
        let d = &mut g.devs[self.dev];
        let a = off as usize / d.line;
        let b = (off + len - 1) as usize / d.line;
        for l in a..=b {
            if d.dirty.contains(&l) {
                d.flushed.insert(l);
            }
        }
    }
    fn barrier(&mut self) -> Res<()> {
        let mut g = self.w.borrow_mut();
        if self.page {
            g.sync(self.dev);
        } else {
            g.fence();
        }
        Ok(())
    }
}

impl<T: Clone> DataDev for SimDev<T> {
    fn size(&self) -> Res<u64> {
        Ok(Media::len(self))
    }
    unsafe fn read_raw(&self, off: u64, dst: *mut u8, len: usize) -> Res<usize> {
        let size = Media::len(self);
        let n = (size.saturating_sub(off)).min(len as u64) as usize;
        // SAFETY: tests pass valid buffers.
        unsafe { self.load_raw(off, dst, n) };
        Ok(n)
    }
    unsafe fn write_raw(&mut self, off: u64, src: *const u8, len: usize) -> Res<()> {
        // SAFETY: forwarded contract.
        unsafe { self.store_raw(off, src, len) };
        let mut g = self.w.borrow_mut();
        let d = &mut g.devs[self.dev];
        if off + len as u64 > d.vol_len {
            d.vol_len = off + len as u64;
            d.len_dirty = true;
        }
        Ok(())
    }
    fn set_len(&mut self, len: u64) -> Res<()> {
        let mut g = self.w.borrow_mut();
        let d = &mut g.devs[self.dev];
        if len < d.vol_len {
            // The cut bytes read as zero if the file grows again.
            let (a, b) = (len as usize, (d.vol_len as usize).min(d.vol.len()));
            if a < b {
                d.vol[a..b].fill(0);
                d.touch(len, (b - a) as u64);
            }
        } else {
            d.room(len);
        }
        d.vol_len = len;
        d.len_dirty = true;
        Ok(())
    }
    fn sync(&mut self) -> Res<()> {
        self.w.borrow_mut().sync(self.dev);
        Ok(())
    }
}
