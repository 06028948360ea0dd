//! Random pread and pwrite of `--bs` blocks of the data file (with fsync and read-mostly
//! mixes), and memcpy from a mapping of it at the same offsets: the bound.

use std::io;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{bail, Context};

use super::drive::Op;
use super::sys::{short_io, Buffer, Fd, Mapping};
use super::{WorkerArgs, Workload};

/// The offset generator of thread `thread`: the same `seed` gives the same sequence (so
/// pread, pwrite and memcpy of one seed visit the same blocks), and each thread has a
/// stream of its own.
fn offset_rng(seed: u64, thread: u64) -> fastrand::Rng {
    fastrand::Rng::with_seed(seed ^ thread.wrapping_add(1).wrapping_mul(0xD1B5_4A32_D192_ED03))
}

/// One op per thread; the threads share one descriptor (or the mapping).
pub(super) fn ops(args: &WorkerArgs, path: PathBuf) -> anyhow::Result<Vec<Box<dyn Op>>> {
    let mut ops: Vec<Box<dyn Op>> = Vec::with_capacity(args.threads);
    let nblocks = args.size / args.bs as u64;
    if args.bs == 0 || nblocks == 0 {
        bail!("--size must hold at least one --bs block");
    }
    let write = args.workload == Workload::Pwrite;
    let map = if args.workload == Workload::Memcpy {
        Some(Arc::new(Mapping::new(&path, args.size)?))
    } else {
        None
    };
    // One descriptor shared by all threads, as a server would do.
    let fd = match &map {
        Some(_) => None,
        None => Some(Arc::new(Fd::open(
            &path,
            if write { libc::O_RDWR } else { libc::O_RDONLY },
            0,
        )?)),
    };
    for t in 0..args.threads {
        let buf = Buffer::new(args.bs, 0xA5 ^ t as u8);
        let rng = offset_rng(args.seed, t as u64);
        ops.push(match (&map, &fd) {
            (Some(m), _) => Box::new(MemcpyOp {
                map: m.clone(),
                buf,
                bs: args.bs,
                nblocks,
                rng,
            }),
            (None, Some(fd)) => Box::new(RandomOp {
                fd: fd.clone(),
                buf,
                bs: args.bs,
                nblocks,
                rng,
                write,
                fsync_every: if write { args.fsync_every } else { 0 },
                n: 0,
                reads_per_write: if write { args.reads_per_write } else { 0 },
                k: 0,
            }),
            (None, None) => unreachable!(),
        });
    }
    Ok(ops)
}

struct RandomOp {
    fd: Arc<Fd>,
    buf: Buffer,
    bs: usize,
    nblocks: u64,
    rng: fastrand::Rng,
    write: bool,
    fsync_every: u64,
    n: u64,
    reads_per_write: u64,
    /// Calls so far (with `reads_per_write`: which one is the write).
    k: u64,
}

impl Op for RandomOp {
    #[inline]
    fn op(&mut self) -> anyhow::Result<u64> {
        let off = (self.rng.u64(..self.nblocks) * self.bs as u64) as libc::off_t;
        let write = self.write
            && (self.reads_per_write == 0 || self.k.is_multiple_of(self.reads_per_write + 1));
        self.k += 1;
        let n = if write {
            // SAFETY: buf holds bs readable bytes.
            unsafe { libc::pwrite(self.fd.0, self.buf.ptr.cast(), self.bs, off) }
        } else {
            // SAFETY: buf holds bs writable bytes.
            unsafe { libc::pread(self.fd.0, self.buf.ptr.cast(), self.bs, off) }
        };
        if n != self.bs as isize {
            return Err(short_io(n, if write { "pwrite" } else { "pread" }, off));
        }
        if self.fsync_every > 0 && write {
            self.n += 1;
            if self.n == self.fsync_every {
                self.n = 0;
                // SAFETY: fsync on a descriptor we own.
                if unsafe { libc::fsync(self.fd.0) } != 0 {
                    return Err(io::Error::last_os_error()).context("fsync");
                }
            }
        }
        Ok(self.bs as u64)
    }
}

struct MemcpyOp {
    map: Arc<Mapping>,
    buf: Buffer,
    bs: usize,
    nblocks: u64,
    rng: fastrand::Rng,
}

impl Op for MemcpyOp {
    #[inline]
    fn op(&mut self) -> anyhow::Result<u64> {
        let off = (self.rng.u64(..self.nblocks) * self.bs as u64) as usize;
        // SAFETY: off + bs <= map.len by construction of nblocks; buf holds bs bytes;
        // the mapping and the buffer do not overlap.
        unsafe { std::ptr::copy_nonoverlapping(self.map.ptr.add(off), self.buf.ptr, self.bs) };
        std::hint::black_box(self.buf.ptr);
        Ok(self.bs as u64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offsets_are_deterministic_bounded_and_aligned() {
        let (size, bs) = (1u64 << 20, 4096u64);
        let nblocks = size / bs;
        let mut a = offset_rng(7, 0);
        let mut b = offset_rng(7, 0);
        let mut c = offset_rng(7, 1);
        let mut differs = false;
        for _ in 0..10_000 {
            let x = a.u64(..nblocks);
            assert_eq!(x, b.u64(..nblocks));
            let off = x * bs;
            assert!(off.is_multiple_of(bs) && off + bs <= size, "offset {off}");
            differs |= x != c.u64(..nblocks);
        }
        assert!(differs, "threads share a stream");
    }

    #[test]
    fn offsets_cover_the_file() {
        let mut r = offset_rng(1, 0);
        let mut seen = [false; 64];
        for _ in 0..10_000 {
            seen[r.u64(..64) as usize] = true;
        }
        assert!(seen.iter().all(|&s| s));
    }
}
