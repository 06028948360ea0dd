//! The on-disk format of a failure-atomic file's log (redo and undo records), and the
//! [`Media`] seam through which every byte of it is stored, flushed and fenced.
//!
//! Layout (little endian). Line 0 is the header:
//! `magic[8] "FLEXLOG2" | ino u64 | gen u64 | sum u64 (hash of magic+ino)`.
//! Records start at byte 64, each on its own 64-byte line(s): a 48-byte header
//! `tag u32 | kind u32 | gen u64 | seq u64 | a u64 | b u64 | sum u64`, then from the next
//! line boundary (byte 64 of the record: aligned for streaming copies) `b` payload bytes.
//! - kind 1 WRITE (redo): `a` = file offset, `b` = payload length (the new bytes);
//! - kind 2 TRUNCATE (redo): `a` = new length;
//! - kind 3 COMMIT: `a` = logical size after the transaction;
//! - kind 4 UNDO: `a` = file offset, `b` = payload length (the old bytes, saved before the
//!   data file is changed in place);
//! - kind 5 UNDO_SIZE: `a` = the file's size when the transaction began; `b` = 1 if the
//!   file is shared with other processes (then its STAMP records decide what rolls back);
//! - kind 6 STAMP (shared files): `a` = file offset of a 64-byte-aligned chunk, `b` =
//!   payload length; payload = its own hash, the file's size before and after the change, then one
//!   hash per chunk of the chunks' contents right after this process changed them in
//!   place. Recovery rolls a chunk back only if it still holds exactly that: bytes another
//!   process wrote since are never overwritten (the later write wins, as with the
//!   kernel), and the size goes back only if the stamps' sizes chain from the
//!   transaction's first size to the size now (no other process changed it meanwhile).
//!
//! `sum` hashes the first 40 header bytes (a torn header fails its check). Payloads are
//! not hashed: a commit makes the transaction's records durable (barrier) before it stores
//! the COMMIT record (second barrier), so the records before a durable COMMIT are whole;
//! an UNDO payload is made durable (barrier) before its header is stored (second barrier),
//! and the data file changes only after that, so a valid UNDO header has a whole payload.
//! `seq` starts at 1 in each generation and increases by one per record; a scan stops at
//! the first record that fails (tag, gen, seq, sum). The records before the last valid
//! COMMIT are committed: their redo records are replayed, their undo records are moot.
//! The rest is the uncommitted tail: its redo records are discarded, its undo records are
//! rolled back (newest first), then the size goes back to its UNDO_SIZE.
//! A checkpoint (data synced) starts a new generation by storing `gen + 1` (one aligned
//! 8-byte store): every older record becomes invisible at once, without rewriting it. An
//! undo transaction commits that way (its in-place changes synced first).

use crate::sys::{Errno, Res};

pub const MAGIC: [u8; 8] = *b"FLEXLOG2";
pub const HEADER: u64 = 64;
pub const REC_HDR: u64 = 48;
/// Where a record's payload starts, from the record's start.
pub const PAYLOAD_AT: u64 = 64;
pub const TAG: u32 = 0x4C58_4652;
pub const GEN_AT: u64 = 16;

pub const WRITE: u32 = 1;
pub const TRUNCATE: u32 = 2;
pub const COMMIT: u32 = 3;
pub const UNDO: u32 = 4;
pub const UNDO_SIZE: u32 = 5;
pub const STAMP: u32 = 6;
/// Bytes of file one STAMP hash covers.
pub const CHUNK: u64 = 64;
/// A STAMP whose first payload word is this is an intent: the second word's count of
/// chunks from `a` are about to change in place, the third is the size before (a crash
/// before the write's own STAMP rolls them back).
pub const INTENT: u64 = u64::MAX;

/// Where the log lives: a mapped or plain file in production, the persistence simulator in
/// tests. The persistence contract is the one of a DAX mapping: a stored byte is durable
/// once its range was flushed and a barrier followed. On page granularity `flush` does
/// nothing and `barrier` is an `fdatasync`.
#[allow(clippy::len_without_is_empty)]
pub trait Media {
    /// Bytes currently addressable.
    fn len(&self) -> u64;
    /// Make at least `len` bytes addressable (durably, size included).
    fn ensure(&mut self, len: u64) -> Res<()>;
    fn read(&self, off: u64, buf: &mut [u8]);
    fn store(&mut self, off: u64, data: &[u8]);
    /// Store `len` bytes from a raw (application) pointer; returns the bytes NOT copied.
    ///
    /// # Safety
    /// `src` must be valid for `len` bytes or fault inside a guarded copy.
    unsafe fn store_raw(&mut self, off: u64, src: *const u8, len: usize) -> usize;
    /// Copy `len` stored bytes at `off` to a raw (application) pointer; returns the bytes
    /// NOT copied.
    ///
    /// # Safety
    /// `dst` must be valid for `len` bytes or fault inside a guarded copy.
    unsafe fn load_raw(&self, off: u64, dst: *mut u8, len: usize) -> usize;
    /// A pointer to `len` stored bytes at `off` for a copy out (None: not addressable).
    fn ptr(&self, off: u64, len: u64) -> Option<*const u8>;
    fn flush(&mut self, off: u64, len: u64);
    fn barrier(&mut self) -> Res<()>;
}

/// A 64-bit hash of a few little-endian words (a record header): enough to detect a torn
/// or stale header, cheap enough for every write (payloads are not hashed, see above).
pub fn hash(seed: u64, bytes: &[u8]) -> u64 {
    const P1: u64 = 0x9E37_79B1_85EB_CA87;
    const P2: u64 = 0xC2B2_AE3D_27D4_EB4F;
    let mut x = seed ^ P2 ^ (bytes.len() as u64).wrapping_mul(P1);
    for w in bytes.chunks(8) {
        let mut b = [0u8; 8];
        b[..w.len()].copy_from_slice(w);
        x = (x ^ u64::from_le_bytes(b)).wrapping_mul(P1).rotate_left(31);
    }
    x ^= x >> 33;
    x = x.wrapping_mul(P2);
    x ^= x >> 29;
    x = x.wrapping_mul(P1);
    x ^ (x >> 32)
}

/// The hash a STAMP payload carries: of its body, seeded with the record's generation and
/// sequence number (a stale payload left at the same log offset by an older record fails).
pub fn stamp_sum(gen: u64, seq: u64, body: &[u8]) -> u64 {
    hash(
        STAMP as u64 ^ gen.rotate_left(17) ^ seq.rotate_left(41),
        body,
    )
}

pub fn rec_len(payload: u64) -> u64 {
    PAYLOAD_AT + payload.div_ceil(64) * 64
}

pub fn header_bytes(ino: u64, gen: u64) -> [u8; 64] {
    let mut b = [0u8; 64];
    b[0..8].copy_from_slice(&MAGIC);
    b[8..16].copy_from_slice(&ino.to_le_bytes());
    b[16..24].copy_from_slice(&gen.to_le_bytes());
    let s = hash(0, &b[0..16]);
    b[24..32].copy_from_slice(&s.to_le_bytes());
    b
}

/// Parse a header: Some((ino, gen)) if valid.
pub fn parse_header(b: &[u8]) -> Option<(u64, u64)> {
    if b.len() < 32 || b[0..8] != MAGIC {
        return None;
    }
    let s = u64::from_le_bytes(b[24..32].try_into().ok()?);
    if s != hash(0, &b[0..16]) {
        return None;
    }
    let ino = u64::from_le_bytes(b[8..16].try_into().ok()?);
    let gen = u64::from_le_bytes(b[16..24].try_into().ok()?);
    Some((ino, gen))
}

pub fn rec_header(kind: u32, gen: u64, seq: u64, a: u64, b: u64) -> [u8; REC_HDR as usize] {
    let mut h = [0u8; REC_HDR as usize];
    h[0..4].copy_from_slice(&TAG.to_le_bytes());
    h[4..8].copy_from_slice(&kind.to_le_bytes());
    h[8..16].copy_from_slice(&gen.to_le_bytes());
    h[16..24].copy_from_slice(&seq.to_le_bytes());
    h[24..32].copy_from_slice(&a.to_le_bytes());
    h[32..40].copy_from_slice(&b.to_le_bytes());
    h
}

pub fn seal(h: &mut [u8; REC_HDR as usize]) {
    let kind = u32::from_le_bytes([h[4], h[5], h[6], h[7]]);
    let s = hash(kind as u64, &h[0..40]);
    h[40..48].copy_from_slice(&s.to_le_bytes());
}

/// One logged operation, as found by a scan.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    /// Write `len` bytes at file offset `off`; the payload is at log offset `at`.
    Write {
        off: u64,
        len: u64,
        at: u64,
    },
    Truncate {
        len: u64,
    },
}

/// What a scan of a log image found.
#[derive(Debug, Default)]
pub struct Scan {
    pub ino: u64,
    pub gen: u64,
    /// Committed transactions: their operations and the logical size after each.
    pub txns: Vec<(Vec<Op>, u64)>,
    /// Records after the last commit (discarded or rolled back by recovery).
    pub tail_records: usize,
    /// UNDO records of the uncommitted tail, oldest first: (file offset, length, payload's
    /// log offset).
    pub undo: Vec<(u64, u64, u64)>,
    /// The tail's UNDO_SIZE: the size to return to when rolling back.
    pub undo_size: Option<u64>,
    /// The tail's transaction ran on a shared file (its UNDO_SIZE says so).
    pub shared: bool,
    /// STAMP records of the tail, oldest first: (chunk offset, payload's log offset,
    /// payload length, seq).
    pub stamps: Vec<(u64, u64, u64, u64)>,
}

/// Scan a whole log image (header valid for `ino`, else None).
pub fn scan(img: &[u8], ino: u64) -> Option<Scan> {
    let (hino, gen) = parse_header(img)?;
    if hino != ino {
        return None;
    }
    let mut s = Scan {
        ino,
        gen,
        ..Scan::default()
    };
    let mut pos = HEADER as usize;
    let mut seq = 1u64;
    let mut ops = Vec::new();
    let mut tail = 0usize;
    while pos + REC_HDR as usize <= img.len() {
        let h = &img[pos..pos + REC_HDR as usize];
        let u32_at = |i: usize| u32::from_le_bytes([h[i], h[i + 1], h[i + 2], h[i + 3]]);
        let u64_at = |i: usize| {
            let mut b = [0u8; 8];
            b.copy_from_slice(&h[i..i + 8]);
            u64::from_le_bytes(b)
        };
        let (kind, rgen, rseq, a, b, sum) = (
            u32_at(4),
            u64_at(8),
            u64_at(16),
            u64_at(24),
            u64_at(32),
            u64_at(40),
        );
        if u32_at(0) != TAG || rgen != gen || rseq != seq {
            break;
        }
        let plen = if kind == WRITE || kind == UNDO || kind == STAMP {
            b
        } else {
            0
        };
        let _fits = match (pos as u64)
            .checked_add(PAYLOAD_AT)
            .and_then(|v| v.checked_add(plen))
        {
            Some(e) if e <= img.len() as u64 => e as usize,
            _ => break,
        };
        if hash(kind as u64, &h[0..40]) != sum {
            break;
        }
        match kind {
            WRITE => ops.push(Op::Write {
                off: a,
                len: b,
                at: pos as u64 + PAYLOAD_AT,
            }),
            TRUNCATE => ops.push(Op::Truncate { len: a }),
            UNDO => s.undo.push((a, b, pos as u64 + PAYLOAD_AT)),
            UNDO_SIZE => {
                s.undo_size.get_or_insert(a);
                s.shared |= b == 1;
            }
            STAMP => s.stamps.push((a, pos as u64 + PAYLOAD_AT, b, rseq)),
            COMMIT => {
                s.txns.push((core::mem::take(&mut ops), a));
                s.undo.clear();
                s.undo_size = None;
                s.shared = false;
                s.stamps.clear();
                tail = 0;
                seq += 1;
                pos += rec_len(0) as usize;
                continue;
            }
            _ => break,
        }
        tail += 1;
        seq += 1;
        pos += rec_len(plen) as usize;
    }
    s.tail_records = tail;
    Some(s)
}

/// A record whose payload is stored but whose header is not (see [`Log::stage`]).
#[derive(Clone, Copy, Debug)]
pub struct Staged {
    kind: u32,
    at: u64,
    seq: u64,
    off: u64,
    len: u64,
}

/// The writer side of a log: appends records, commits, starts generations.
pub struct Log<M: Media> {
    pub m: M,
    pub ino: u64,
    pub gen: u64,
    /// Where the next record goes.
    pub tail: u64,
    /// End of the last committed (and durable) record.
    pub committed: u64,
    seq: u64,
}

impl<M: Media> Log<M> {
    /// Start a fresh log on `m` (whatever it held is ignored) with a generation above
    /// `after` (the one a scan found, or 0).
    pub fn create(mut m: M, ino: u64, after: u64) -> Res<Log<M>> {
        m.ensure(64 << 10)?;
        let gen = after.wrapping_add(1).max(1);
        let h = header_bytes(ino, gen);
        m.store(0, &h);
        m.flush(0, 64);
        m.barrier()?;
        Ok(Log {
            m,
            ino,
            gen,
            tail: HEADER,
            committed: HEADER,
            seq: 1,
        })
    }

    /// Room for a record of `payload` bytes; grows the medium in steps.
    fn room(&mut self, payload: u64) -> Res<u64> {
        let need = self.tail.checked_add(rec_len(payload)).ok_or(Errno::FBIG)?;
        if need > self.m.len() {
            self.m.ensure(need.next_multiple_of(1 << 20))?;
        }
        Ok(self.tail)
    }

    /// Append a WRITE record with the payload read from `src`. Returns the payload's log
    /// offset. Nothing is durable before [`Log::commit`].
    ///
    /// # Safety
    /// `src` must be valid for `len` bytes or fault inside a guarded copy (EFAULT).
    /// An application's source that faults part way logs the bytes before the fault (the
    /// kernel's short write): returns where the payload is and its length.
    pub unsafe fn append_write(
        &mut self,
        off: u64,
        src: *const u8,
        len: usize,
    ) -> Res<(u64, usize)> {
        // SAFETY: forwarded contract.
        let st = unsafe { self.stage_inner(WRITE, off, src, len, true) }?;
        self.seal_staged(&st);
        Ok((st.at + PAYLOAD_AT, st.len as usize))
    }

    /// Store a record's payload (and flush it) but not its header: the record stays
    /// invisible to a scan until [`Log::seal_staged`] (after a barrier, for UNDO).
    ///
    /// # Safety
    /// `src` must be valid for `len` bytes or fault inside a guarded copy (EFAULT).
    pub unsafe fn stage(&mut self, kind: u32, off: u64, src: *const u8, len: usize) -> Res<Staged> {
        // SAFETY: forwarded contract.
        unsafe { self.stage_inner(kind, off, src, len, false) }
    }

    /// # Safety
    /// As [`Log::stage`]. `partial`: a fault part way keeps the bytes before it.
    unsafe fn stage_inner(
        &mut self,
        kind: u32,
        off: u64,
        src: *const u8,
        len: usize,
        partial: bool,
    ) -> Res<Staged> {
        let at = self.room(len as u64)?;
        // SAFETY: forwarded contract.
        let rem = unsafe { self.m.store_raw(at + PAYLOAD_AT, src, len) };
        let mut got = len - rem;
        if rem != 0 && partial {
            // The guarded copy may stop short of the fault: go on a page at a time (a
            // page is readable whole or not at all), so the count is the kernel's.
            while got < len {
                // SAFETY: inside the source range the caller gave.
                let p = unsafe { src.add(got) };
                let n = (4096 - (p as usize & 4095)).min(len - got);
                // SAFETY: destination inside the room reserved above; a faulting source
                // is reported as a remainder.
                if unsafe { self.m.store_raw(at + PAYLOAD_AT + got as u64, p, n) } != 0 {
                    break;
                }
                got += n;
            }
        }
        if got == 0 || (got != len && !partial) {
            return Err(Errno::FAULT);
        }
        let len = got;
        self.m.flush(at + PAYLOAD_AT, len as u64);
        let st = Staged {
            kind,
            at,
            seq: self.seq,
            off,
            len: len as u64,
        };
        self.seq += 1;
        self.tail = at + rec_len(len as u64);
        Ok(st)
    }

    /// Store (and flush) the header of a staged record.
    pub fn seal_staged(&mut self, st: &Staged) {
        let mut h = rec_header(st.kind, self.gen, st.seq, st.off, st.len);
        seal(&mut h);
        self.m.store(st.at, &h);
        self.m.flush(st.at, REC_HDR);
    }

    fn append_small(&mut self, kind: u32, a: u64) -> Res<()> {
        self.append_header(kind, a, 0)
    }

    /// A record without payload.
    fn append_header(&mut self, kind: u32, a: u64, b: u64) -> Res<()> {
        let at = self.room(0)?;
        let mut h = rec_header(kind, self.gen, self.seq, a, b);
        seal(&mut h);
        self.m.store(at, &h);
        self.m.flush(at, REC_HDR);
        self.seq += 1;
        self.tail = at + rec_len(0);
        Ok(())
    }

    /// The size an undo transaction began with (before its first in-place change).
    pub fn append_undo_size(&mut self, size: u64, shared: bool) -> Res<()> {
        self.append_header(UNDO_SIZE, size, shared as u64)
    }

    /// An intent (see [`INTENT`]) for the chunks of `[s, e)`, with the file's size before
    /// the write: made durable by the barrier that follows.
    pub fn append_intent(&mut self, s: u64, e: u64, before: u64) -> Res<()> {
        let first = s - s % CHUNK;
        let n = (e.div_ceil(CHUNK) - first / CHUNK).max((s > first) as u64);
        self.append_stamp(first, INTENT, n, &[before])
    }

    /// A STAMP record (see the module doc): the file's size before and after the change,
    /// the hashes of the chunks from `first` on. Durable with the next barrier.
    pub fn append_stamp(&mut self, first: u64, before: u64, after: u64, hashes: &[u64]) -> Res<()> {
        let mut p = vec![0u8; 8];
        p.extend_from_slice(&before.to_le_bytes());
        p.extend_from_slice(&after.to_le_bytes());
        for h in hashes {
            p.extend_from_slice(&h.to_le_bytes());
        }
        // Stored without a barrier between payload and header: the payload carries its
        // own hash, so recovery tells a torn stamp from a whole one.
        let sum = stamp_sum(self.gen, self.seq, &p[8..]);
        p[..8].copy_from_slice(&sum.to_le_bytes());
        // SAFETY: our own buffer.
        let st = unsafe { self.stage_inner(STAMP, first, p.as_ptr(), p.len(), false) }?;
        self.seal_staged(&st);
        Ok(())
    }

    pub fn append_truncate(&mut self, len: u64) -> Res<()> {
        self.append_small(TRUNCATE, len)
    }

    /// Make the transaction durable: its records first (one barrier), then the COMMIT
    /// record (a second barrier). A durable COMMIT thus implies durable records, so
    /// payloads need no checksum (hashing every byte cost more than the second barrier).
    pub fn commit(&mut self, size: u64) -> Res<()> {
        self.m.barrier()?;
        self.append_small(COMMIT, size)?;
        self.m.barrier()?;
        self.committed = self.tail;
        Ok(())
    }

    pub fn seq(&self) -> u64 {
        self.seq
    }

    /// New generation: every record logged so far becomes invisible. Only after the data
    /// file holds (durably) everything committed.
    pub fn reset(&mut self) -> Res<()> {
        let gen = self.gen + 1;
        self.m.store(GEN_AT, &gen.to_le_bytes());
        self.m.flush(GEN_AT, 8);
        self.m.barrier()?;
        self.gen = gen;
        self.tail = HEADER;
        self.committed = HEADER;
        self.seq = 1;
        Ok(())
    }
}
