//! The persistence simulator for the engine's own mappings: crash tests of the plain
//! (non-atomic) cache-line data path (grow, trailer, copies) on a machine without
//! persistent memory. Compiled only with the `sim` feature.
//!
//! [`watch`] switches it on for the next mapping of a regular file: that mapping takes
//! cache-line granularity and the [`SIM`] strategy, which performs every store for real
//! and tracks it per 64-byte line of the file: a line stored since the last drain keeps
//! its content from before (what a crash may leave), and is *pending* once written back
//! (an NT store, or a flush of a cached store). At every drain, before the drain takes
//! effect, the simulator records a crash point: the kernel's size of the file, its bytes
//! as loads see them (kernel writes, `pwrite` of the trailer included, are durable at
//! once, as on DAX), and for each tracked line its old bytes and whether it was pending.
//! A crash at that point may leave any subset of the tracked lines new (the CPU may write
//! back a cached line at any time); after the drain, pending lines are durable.
//! The points go to a file (see [`CrashPoint::decode_all`]) that a test replays.

use super::{fence, Granularity, Strategy, CACHE_LINE as LINE};
use crate::fault;
use crate::sys;
use std::collections::BTreeMap;
use std::io::Write;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::*};
use std::sync::Mutex;

static ON: AtomicBool = AtomicBool::new(false);
/// Writes the test reports as returned; recorded with each crash point.
static EPOCH: AtomicU64 = AtomicU64::new(0);
static STATE: Mutex<Option<State>> = Mutex::new(None);

struct State {
    /// The watched mapping (0 until the first mapping while on).
    base: usize,
    len: usize,
    fd: i32,
    /// File offset of a line -> (its bytes before the first store since the last drain,
    /// written back yet).
    lines: BTreeMap<u64, ([u8; LINE], bool)>,
    out: std::fs::File,
}

/// Watch the next mapping this process makes (tests; `out` receives the crash points).
pub fn watch(out: std::fs::File) {
    *STATE.lock().unwrap_or_else(|p| p.into_inner()) = Some(State {
        base: 0,
        len: 0,
        fd: -1,
        lines: BTreeMap::new(),
        out,
    });
    ON.store(true, Release);
}

/// The test's count of writes that have returned.
pub fn set_epoch(n: u64) {
    EPOCH.store(n, Release);
}

/// Stop watching and flush the recorded points.
pub fn finish() {
    ON.store(false, Release);
    if let Some(mut s) = STATE.lock().unwrap_or_else(|p| p.into_inner()).take() {
        let _ = s.out.flush();
    }
}

/// Called by the mapping code for each new or moved mapping of `fd`: the granularity and
/// strategy it gets (the simulated ones while watching the first file mapped).
pub fn on_map(
    fd: i32,
    base: *mut u8,
    len: usize,
    gran: Granularity,
) -> (Granularity, &'static Strategy) {
    if ON.load(Acquire) {
        let mut g = STATE.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(s) = g.as_mut() {
            if s.fd < 0 || s.fd == fd {
                s.fd = fd;
                s.base = base as usize;
                s.len = len;
                return (Granularity::CacheLine, &SIM);
            }
        }
    }
    (gran, Strategy::of(gran))
}

/// The file offsets of the lines of `[addr, addr+len)` inside the watched mapping.
fn lines_of(s: &State, addr: usize, len: usize) -> impl Iterator<Item = u64> {
    let lo = addr.max(s.base);
    let hi = (addr + len).min(s.base + s.len);
    let first = (lo - s.base) / LINE * LINE;
    let end = if hi > lo { hi - s.base } else { first };
    (first..end).step_by(LINE).map(|o| o as u64)
}

/// Remember the old bytes of the lines about to be stored to; mark them pending or not.
fn before_store(addr: *const u8, len: usize, written_back: bool) {
    let mut g = STATE.lock().unwrap_or_else(|p| p.into_inner());
    let Some(s) = g.as_mut() else { return };
    let offs: Vec<u64> = lines_of(s, addr as usize, len).collect();
    for off in offs {
        let base = s.base;
        let e = s.lines.entry(off).or_insert_with(|| {
            let mut old = [0u8; LINE];
            // SAFETY: the line lies inside the watched mapping (lines_of clamps to it); a
            // line past the file's end faults and is caught, leaving zeros.
            unsafe { fault::copy(old.as_mut_ptr(), (base + off as usize) as *const u8, LINE) };
            (old, false)
        });
        e.1 = written_back;
    }
}

fn mark_written_back(addr: *const u8, len: usize) {
    let mut g = STATE.lock().unwrap_or_else(|p| p.into_inner());
    let Some(s) = g.as_mut() else { return };
    let offs: Vec<u64> = lines_of(s, addr as usize, len).collect();
    for off in offs {
        if let Some(e) = s.lines.get_mut(&off) {
            e.1 = true;
        }
    }
}

/// Record a crash point, then let the pending lines become durable.
fn drain_point() {
    let mut g = STATE.lock().unwrap_or_else(|p| p.into_inner());
    let Some(s) = g.as_mut() else { return };
    if s.fd < 0 {
        return;
    }
    let ksize = sys::fstat(s.fd).map_or(0, |st| st.st_size as u64);
    let mut bytes = vec![0u8; ksize as usize];
    let mut got = 0;
    while got < bytes.len() {
        // SAFETY: our own buffer, `bytes.len() - got` bytes from `got`.
        match unsafe {
            sys::pread(
                s.fd,
                bytes[got..].as_mut_ptr(),
                bytes.len() - got,
                got as u64,
            )
        } {
            Ok(0) | Err(_) => break,
            Ok(n) => got += n,
        }
    }
    let mut rec = Vec::with_capacity(24 + s.lines.len() * (9 + LINE) + bytes.len());
    rec.extend_from_slice(&EPOCH.load(Acquire).to_le_bytes());
    rec.extend_from_slice(&ksize.to_le_bytes());
    rec.extend_from_slice(&(s.lines.len() as u64).to_le_bytes());
    for (off, (old, wb)) in &s.lines {
        rec.extend_from_slice(&off.to_le_bytes());
        rec.push(*wb as u8);
        rec.extend_from_slice(old);
    }
    rec.extend_from_slice(&bytes);
    let _ = s.out.write_all(&(rec.len() as u64).to_le_bytes());
    let _ = s.out.write_all(&rec);
    s.lines.retain(|_, (_, wb)| !*wb);
}

/// One recorded crash point.
#[derive(Debug)]
pub struct CrashPoint {
    /// Writes that had returned.
    pub epoch: u64,
    /// The file's bytes as loads saw them (its kernel size).
    pub bytes: Vec<u8>,
    /// Lines stored since the last drain: (file offset, old bytes, written back).
    pub lines: Vec<(u64, [u8; LINE], bool)>,
}

impl CrashPoint {
    /// Parse the points a watched process wrote.
    pub fn decode_all(mut b: &[u8]) -> Vec<CrashPoint> {
        let u64_at = |b: &[u8], at: usize| u64::from_le_bytes(b[at..at + 8].try_into().unwrap());
        let mut out = Vec::new();
        while b.len() >= 8 {
            let n = u64_at(b, 0) as usize;
            let r = &b[8..8 + n];
            let (epoch, ksize, nl) = (u64_at(r, 0), u64_at(r, 8), u64_at(r, 16) as usize);
            let mut at = 24;
            let mut lines = Vec::with_capacity(nl);
            for _ in 0..nl {
                let off = u64_at(r, at);
                let wb = r[at + 8] != 0;
                let old: [u8; LINE] = r[at + 9..at + 9 + LINE].try_into().unwrap();
                lines.push((off, old, wb));
                at += 9 + LINE;
            }
            let bytes = r[at..at + ksize as usize].to_vec();
            out.push(CrashPoint {
                epoch,
                bytes,
                lines,
            });
            b = &b[8 + n..];
        }
        out
    }

    /// The file a crash at this point leaves when the tracked lines for which `keep_new`
    /// says true reached the media and the others did not.
    pub fn image(&self, mut keep_new: impl FnMut(usize, bool) -> bool) -> Vec<u8> {
        let mut img = self.bytes.clone();
        for (i, (off, old, wb)) in self.lines.iter().enumerate() {
            if keep_new(i, *wb) {
                continue;
            }
            let a = *off as usize;
            if a < img.len() {
                let n = LINE.min(img.len() - a);
                img[a..a + n].copy_from_slice(&old[..n]);
            }
        }
        img
    }
}

unsafe fn sim_copy(dst: *mut u8, src: *const u8, len: usize) -> usize {
    before_store(dst, len, true);
    // SAFETY: forwarded caller contract (fault::copy's).
    unsafe { fault::copy(dst, src, len) }
}

unsafe fn sim_zero(dst: *mut u8, len: usize) -> usize {
    before_store(dst, len, true);
    // SAFETY: forwarded caller contract (fault::zero's).
    unsafe { fault::zero(dst, len) }
}

unsafe fn sim_flush(addr: *const u8, len: usize) -> usize {
    mark_written_back(addr, len);
    0
}

fn sim_drain() {
    drain_point();
    fence();
}

/// Cache-line granularity, simulated: copies and zeroing count as non-temporal stores
/// (written back, durable at the next drain), as the real table's.
/// The trailer's word is an ordinary store, durable only once flushed and drained.
pub static SIM: Strategy = Strategy::table(
    Granularity::CacheLine,
    sim_copy,
    sim_zero,
    sim_flush,
    sim_store_u64,
    sim_drain,
);

unsafe fn sim_store_u64(p: *mut u64, v: u64) {
    before_store(p as *const u8, 8, false);
    // SAFETY: forwarded caller contract (an aligned word of the mapping).
    unsafe { core::ptr::write_volatile(p, v) }
}

// Stores the program makes through its own mapping of the file are not tracked.
#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn images_replace_only_lines_not_kept() {
        let p = CrashPoint {
            epoch: 3,
            bytes: vec![7u8; 200],
            lines: vec![(64, [1; LINE], true), (128, [2; LINE], false)],
        };
        let all_old = p.image(|_, _| false);
        assert_eq!(&all_old[..64], &[7; 64][..]);
        assert_eq!(&all_old[64..128], &[1; 64][..]);
        assert_eq!(&all_old[128..192], &[2; 64][..]);
        assert_eq!(&all_old[192..], &[7; 8][..]);
        let pending_only = p.image(|_, wb| wb);
        assert_eq!(&pending_only[64..128], &[7; 64][..]);
        assert_eq!(&pending_only[128..192], &[2; 64][..]);
    }
}
