//! The deterministic workload shared by `writer` and `verify`.
//!
//! A power-cut run is one seed: operation `k` (1-based) is a pure function of the seed and
//! `k`, and so is every byte it writes. The verifier regenerates the operations instead of
//! trusting anything stored in the file, so it can tell, for every byte, which values the
//! file may legitimately hold after a cut.

/// The writer stops after this many operations (the host cuts the power long before).
pub const MAX_OPS: u64 = 4000;
/// Appends stop once the file is this large; from then on only overwrites.
pub const MAX_LEN: u64 = 2 << 20;
/// Page mode: `sync_data` after every this many operations.
pub const SYNC_EVERY: u64 = 8;

fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// A seed from a name (FNV-1a), so writer and verifier agree given the same directory.
pub fn seed_of(name: &str) -> u64 {
    name.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// The byte operation `seq` stores at file offset `pos`. Depends on both, so a byte left
/// from another operation or another place in the file is told apart (up to 1/256).
pub fn byte(seed: u64, seq: u64, pos: u64) -> u8 {
    let w = mix(seed ^ seq.wrapping_mul(0x1000_0000_01b3) ^ (pos >> 3).rotate_left(20));
    (w >> ((pos & 7) * 8)) as u8
}

/// Fills `buf` with what operation `seq` writes at `off`.
pub fn fill(seed: u64, seq: u64, off: u64, buf: &mut [u8]) {
    for (i, b) in buf.iter_mut().enumerate() {
        *b = byte(seed, seq, off + i as u64);
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Op {
    pub off: u64,
    pub len: u64,
}

impl Op {
    pub fn end(&self) -> u64 {
        self.off + self.len
    }
}

/// A length drawn so that tiny, sub-cache-line, page-crossing and multi-page writes all occur.
fn draw_len(r: u64) -> u64 {
    match r % 4 {
        0 => 1 + (r >> 8) % 63,
        1 => 1 + (r >> 8) % 511,
        2 => 1 + (r >> 8) % 4500,
        _ => 1 + (r >> 8) % 16384,
    }
}

/// Operation `seq` given the logical size before it: an append, an overwrite inside the
/// file, or an overwrite that also extends the file.
pub fn op(seed: u64, seq: u64, size: u64) -> Op {
    let r = mix(seed.wrapping_add(seq.wrapping_mul(0x2545_f491_4f6c_dd1d)));
    let len = draw_len(mix(r));
    let kind = r % 8;
    if size == 0 || (kind < 3 && size < MAX_LEN) {
        Op { off: size, len }
    } else if kind == 3 && size < MAX_LEN {
        let back = (r >> 16) % len.min(size).max(1);
        Op {
            off: size - back,
            len,
        }
    } else {
        let len = len.min(size);
        let off = (r >> 24) % (size - len + 1);
        Op { off, len }
    }
}

/// The logical size after each operation: `sizes[k]` is the size after operations 1..=k.
pub fn sizes(seed: u64, n: u64) -> Vec<u64> {
    let mut v = Vec::with_capacity(n as usize + 1);
    v.push(0);
    let mut size = 0;
    for k in 1..=n {
        size = size.max(op(seed, k, size).end());
        v.push(size);
    }
    v
}

/// The file contents after operations 1..=n.
pub fn state(seed: u64, n: u64) -> Vec<u8> {
    let mut data = Vec::new();
    for k in 1..=n {
        let o = op(seed, k, data.len() as u64);
        if (data.len() as u64) < o.end() {
            data.resize(o.end() as usize, 0);
        }
        fill(seed, k, o.off, &mut data[o.off as usize..o.end() as usize]);
    }
    data
}

/// `create` mode: the length of file `k`.
pub fn create_len(seed: u64, k: u64) -> u64 {
    draw_len(mix(seed ^ k.wrapping_mul(0x9e37)))
}

/// The outcome of comparing a recovered file with the model.
#[derive(Debug, Default)]
pub struct Report {
    pub problems: Vec<String>,
    /// Bytes that hold a value written after the base operation.
    pub newer_bytes: u64,
    /// The operations whose sizes match the recovered size.
    pub size_ops: Vec<u64>,
}

/// Checks `file` against the model, given that operations 1..=`base` must be present.
///
/// Rule: the size must be exactly the logical size after some operation k >= base (never
/// an over-allocated size, never smaller than after `base`). Every byte below the size
/// must hold the value it had after operation `base`, or a value that a later operation
/// (base < j <= MAX_OPS) wrote at that offset; with `zero_ok` (page granularity, where
/// unsynced pages may not have been written back) a zero is also accepted at offsets past
/// the size after `base` that a later operation wrote. Nothing else: no garbage, no stale or misplaced data.
pub fn check(seed: u64, base: u64, file: &[u8], zero_ok: bool) -> Report {
    let mut rep = Report::default();
    let sizes = sizes(seed, MAX_OPS);
    let flen = file.len() as u64;
    rep.size_ops = (base..=MAX_OPS)
        .filter(|&k| sizes[k as usize] == flen)
        .collect();
    if rep.size_ops.is_empty() {
        rep.problems.push(format!(
            "size {flen} is not the logical size after any operation >= {base} (size after {base} = {})",
            sizes[base as usize]
        ));
    }
    let s_base = state(seed, base);
    let n = file.len();
    let mut touched = vec![false; n];
    let mut matched = vec![false; n];
    let mut size = sizes[base as usize];
    for k in base + 1..=MAX_OPS {
        let o = op(seed, k, size);
        size = size.max(o.end());
        for pos in o.off..o.end().min(flen) {
            touched[pos as usize] = true;
            if file[pos as usize] == byte(seed, k, pos) {
                matched[pos as usize] = true;
            }
        }
    }
    let mut bad = 0u64;
    let mut first_bad = None;
    for i in 0..n {
        let old = s_base.get(i).copied();
        let ok = if old == Some(file[i]) {
            true
        } else if touched[i] {
            if matched[i] {
                rep.newer_bytes += 1;
                true
            } else {
                zero_ok && file[i] == 0 && i >= s_base.len()
            }
        } else {
            false
        };
        if !ok {
            bad += 1;
            first_bad.get_or_insert(i);
        }
    }
    if let Some(i) = first_bad {
        rep.problems.push(format!(
            "{bad} bytes hold a value no operation >= {base} left there (first at offset {i}: {:#04x}, \
             expected {:?} after op {base})",
            file[i],
            s_base.get(i)
        ));
    }
    rep
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_passes_for_every_prefix() {
        let seed = seed_of("t");
        for n in [0, 1, 2, 17, 200] {
            let s = state(seed, n);
            let r = check(seed, n, &s, false);
            assert!(r.problems.is_empty(), "{n}: {:?}", r.problems);
            let r0 = check(seed, 0, &s, false);
            assert!(r0.problems.is_empty(), "{n} vs 0: {:?}", r0.problems);
        }
    }

    #[test]
    fn lost_write_and_overallocation_are_caught() {
        let seed = seed_of("t");
        let s10 = state(seed, 10);
        let s20 = state(seed, 20);
        // The file as it was after 10 ops, while the writer reported 20: lost writes.
        let r = check(seed, 20, &s10, false);
        assert!(!r.problems.is_empty());
        let mut over = s20.clone();
        over.resize(s20.len() + 4096, 0);
        assert!(!check(seed, 20, &over, false).problems.is_empty());
        let mut garbage = s20.clone();
        garbage[3] ^= 0x55;
        assert!(!check(seed, 20, &garbage, false).problems.is_empty());
    }

    #[test]
    fn ops_stay_in_bounds() {
        let seed = seed_of("x");
        let mut size = 0;
        for k in 1..=MAX_OPS {
            let o = op(seed, k, size);
            assert!(o.len > 0 && o.off <= size);
            size = size.max(o.end());
        }
        assert!(size <= MAX_LEN + 16384);
    }
}
