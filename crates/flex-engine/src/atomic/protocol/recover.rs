//! Recovery: replay the committed transactions of a log onto the data file and roll
//! back the uncommitted tail (undo records; on a shared file only the chunks that still
//! hold this process's bytes), then start a fresh generation.

use super::DataDev;
use crate::atomic::log::{self, Log, Media, Op, Scan};
use crate::sys::Res;
use std::collections::BTreeMap;

/// What recovery did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Replayed {
    /// Committed transactions re-applied.
    pub txns: usize,
    /// Undo records of an uncommitted transaction rolled back.
    pub rolled_back: usize,
    /// Uncommitted records discarded.
    pub discarded: usize,
    /// The data file's size afterwards.
    pub size: u64,
}

/// Replay the committed transactions of a log image onto the data file, make it durable.
/// Idempotent: every operation is absolute (bytes at an offset, a length), so replaying
/// over a file that already holds some or all of them gives the same result.
pub fn replay<D: DataDev>(img: &[u8], s: &Scan, data: &mut D) -> Res<Replayed> {
    let mut r = Replayed {
        discarded: s.tail_records,
        ..Replayed::default()
    };
    let mut size = None;
    for (ops, after) in &s.txns {
        for op in ops {
            match *op {
                Op::Write { off, len, at } => {
                    let p = &img[at as usize..(at + len) as usize];
                    // SAFETY: `p` is a slice of the image we own.
                    unsafe { data.write_stream(off, p.as_ptr(), p.len()) }?;
                }
                Op::Truncate { len } => {
                    data.settle();
                    data.set_len(len)?;
                }
            }
        }
        size = Some(*after);
        r.txns += 1;
    }
    if s.shared {
        // SAFETY: forwarded: the image and its records are ours.
        let (rolled, z) = unsafe { roll_back_shared(img, s, data) }?;
        r.rolled_back += rolled;
        if z.is_some() {
            size = z;
        }
    } else {
        // An uncommitted undo transaction changed the data file in place: put the old
        // bytes back, newest record first, then the size it began with.
        for &(off, len, at) in s.undo.iter().rev() {
            let p = &img[at as usize..(at + len) as usize];
            // SAFETY: `p` is a slice of the image we own.
            unsafe { data.write_stream(off, p.as_ptr(), p.len()) }?;
            r.rolled_back += 1;
        }
        if let Some(z) = s.undo_size {
            size = Some(z);
        }
    }
    let Some(size) = size.or(if r.rolled_back > 0 {
        Some(data.size()?)
    } else {
        None
    }) else {
        r.size = data.size()?;
        return Ok(r);
    };
    data.settle();
    if data.size()? != size {
        data.set_len(size)?;
    }
    data.sync()?;
    r.size = size;
    Ok(r)
}

/// The hashes of the 64-byte chunks of `[s, e)` (chunk-aligned `s`) as the data file holds
/// them now (a chunk past the end hashes what is there). Read in bounded pieces.
pub(super) fn chunk_hashes<D: DataDev>(data: &D, s: u64, e: u64) -> Res<Vec<u64>> {
    const PIECE: u64 = 64 << 10;
    let mut out = Vec::with_capacity(((e - s) / log::CHUNK).min(1 << 20) as usize + 1);
    let mut buf = vec![0u8; PIECE.min(e - s) as usize];
    let mut at = s;
    while at < e {
        let want = (e - at).min(PIECE) as usize;
        // The last chunk of a file near the largest size ends past 2^63 - 1, where the
        // kernel refuses the whole read (EINVAL): ask only for bytes that can exist.
        let room = (i64::MAX as u64 - at).min(want as u64) as usize;
        // SAFETY: our own buffer of at least `want` >= `room` bytes.
        let n = unsafe { data.read_raw(at, buf.as_mut_ptr(), room) }?;
        for i in 0..(want as u64).div_ceil(log::CHUNK) {
            let a = ((i * log::CHUNK) as usize).min(n);
            let b = (a + log::CHUNK as usize).min(n);
            out.push(log::hash(at + i * log::CHUNK, &buf[a..b]));
        }
        at += want as u64;
    }
    Ok(out)
}

/// Roll back the uncommitted tail of a shared file's log: only the chunks that still hold
/// exactly what this process stored there (its last STAMP for them), so bytes another
/// process wrote since stay (the later write wins, as with the kernel). The size goes
/// back (and what a truncation cut comes back) only if every size change since the
/// transaction began was this process's own: its stamps' sizes form an unbroken chain
/// from the transaction's first size to the file's size now. Otherwise the size stays
/// (cutting or growing the file could lose another process's bytes).
///
/// Idempotent, so a crash during recovery is recovered the same way: chunks restored
/// already no longer match their stamps and are left alone; the size changes only after
/// those bytes are durable, and once it is back a new recovery sees it as its own.
/// Returns the records rolled back (in part or whole) and the size to set, if any.
///
/// # Safety
/// The scan `s` is of `img`.
unsafe fn roll_back_shared<D: DataDev>(
    img: &[u8],
    s: &Scan,
    data: &mut D,
) -> Res<(usize, Option<u64>)> {
    let word = |at: u64| {
        let mut b = [0u8; 8];
        b.copy_from_slice(&img[at as usize..at as usize + 8]);
        u64::from_le_bytes(b)
    };
    let size_now = data.size()?;
    // The last stamp of each chunk (None: a write was in flight there, its intent
    // logged but not its stamp), the chain of sizes, and the smallest size this
    // process's changes left (where its truncations cut).
    let mut stamp: BTreeMap<u64, u64> = BTreeMap::new();
    let mut chain = s.undo_size;
    let mut in_flight = None;
    // The chunks of the write in flight at the crash (its intent, no stamp after it).
    let mut flight = (0u64, 0u64);
    let mut cut_from = s.undo_size.unwrap_or(u64::MAX);
    for &(first, at, len, seq) in &s.stamps {
        let body = &img[(at + 8) as usize..(at + len) as usize];
        if len < 24 || word(at) != log::stamp_sum(s.gen, seq, body) {
            // Torn (the crash came before its barrier): as if not logged.
            continue;
        }
        let (at, len) = (at + 8, len - 8);
        let (before, after) = (word(at), word(at + 8));
        if before == log::INTENT {
            flight = (
                first,
                first.saturating_add(after.saturating_mul(log::CHUNK)),
            );
            in_flight = (len >= 24).then(|| word(at + 16));
            continue;
        }
        in_flight = None;
        flight = (0, 0);
        chain = chain.filter(|&c| c == before).map(|_| after);
        cut_from = cut_from.min(after);
        for i in 0..(len.saturating_sub(16) / 8) {
            stamp.insert(first + i * log::CHUNK, word(at + 16 + i * 8));
        }
    }
    if let Some(b) = in_flight {
        // The last write was in flight: whatever size it left is its own.
        chain = chain.filter(|&c| c == b).map(|_| size_now);
        cut_from = cut_from.min(size_now);
    }
    // The size is this process's to restore: its own chain, or restored already by a
    // recovery that crashed.
    let own_size =
        s.undo_size.is_some() && (chain == Some(size_now) || s.undo_size == Some(size_now));
    let cut_from = if own_size {
        cut_from.min(size_now)
    } else {
        u64::MAX
    };
    // Decide per chunk before anything changes (several records may share a chunk).
    let mut ok: BTreeMap<u64, bool> = BTreeMap::new();
    for (&c, &h) in &stamp {
        let in_flight = c >= flight.0 && c < flight.1;
        ok.insert(
            c,
            in_flight || chunk_hashes(data, c, c + log::CHUNK)?[0] == h,
        );
    }
    let mine = |c: u64| (c >= flight.0 && c < flight.1) || ok.get(&c).copied().unwrap_or(false);
    let mut rolled = 0;
    // Bytes below the cut that still hold this process's writes.
    for &(off, len, at) in s.undo.iter().rev() {
        let mut any = false;
        let mut c = off - off % log::CHUNK;
        while c < off + len {
            let (a, b) = (
                off.max(c),
                (off + len).min(c + log::CHUNK).min(size_now).min(cut_from),
            );
            if a < b && mine(c) {
                let p = &img[(at + a - off) as usize..(at + b - off) as usize];
                // SAFETY: `p` is a slice of the image we own.
                unsafe { data.write_stream(a, p.as_ptr(), p.len()) }?;
                any = true;
            }
            c += log::CHUNK;
        }
        rolled += any as usize;
    }
    let Some(size0) = s.undo_size.filter(|_| own_size) else {
        return Ok((rolled, None));
    };
    // Durable before the size moves (a recovery after this point sees the size as its
    // own and skips these chunks, which no longer match their stamps).
    data.settle();
    data.sync()?;
    if data.size()? != size0 {
        data.set_len(size0)?;
    }
    // What this process's truncations cut: nobody else wrote there (the sizes were all
    // its own), put back whole.
    for &(off, len, at) in s.undo.iter().rev() {
        let (a, b) = (off.max(cut_from), (off + len).min(size0));
        if a < b {
            let p = &img[(at + a - off) as usize..(at + b - off) as usize];
            // SAFETY: `p` is a slice of the image we own.
            unsafe { data.write_stream(a, p.as_ptr(), p.len()) }?;
            rolled += 1;
        }
    }
    Ok((rolled, Some(size0)))
}

/// Read a whole medium into memory.
pub fn image<M: Media>(m: &M) -> Vec<u8> {
    let mut v = vec![0u8; m.len() as usize];
    m.read(0, &mut v);
    v
}

/// Recover the data file from the log on `m` (if it is a log of `ino`), then start a fresh
/// generation on `m`. Returns the writer and what was replayed.
pub fn recover<M: Media, D: DataDev>(
    m: M,
    ino: u64,
    data: &mut D,
    fresh_gen: u64,
) -> Res<(Log<M>, Replayed)> {
    let img = image(&m);
    let (r, after) = match log::scan(&img, ino) {
        Some(s) => (replay(&img, &s, data)?, s.gen),
        None => (
            Replayed {
                size: data.size()?,
                ..Replayed::default()
            },
            fresh_gen,
        ),
    };
    drop(img);
    let l = Log::create(m, ino, after)?;
    Ok((l, r))
}
