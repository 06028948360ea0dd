//! The failure-atomic protocol over a [`Media`] (the log) and a [`DataDev`] (the data
//! file): redo logging (new bytes to the log, an in-memory index of them, applied after
//! the commit) and undo logging (old bytes to the log, new bytes in place, the log
//! dropped at the commit), chosen per transaction from the file's measured read/write
//! mix; commit, apply, checkpoint and recovery. Generic so that the persistence simulator
//! runs the very code the engine runs.

use super::log::{self, Log, Media, Op, Scan};
use crate::sys::{Errno, Res};
use std::collections::BTreeMap;

/// The data file as the protocol sees it: its committed bytes and size.
pub trait DataDev {
    /// The data file's current size.
    fn size(&self) -> Res<u64>;
    /// Read committed bytes; returns the count (short at the data file's end).
    ///
    /// # Safety
    /// `dst` must be valid for `len` bytes or fault inside a guarded copy.
    unsafe fn read_raw(&self, off: u64, dst: *mut u8, len: usize) -> Res<usize>;
    /// Write bytes (not durable before [`DataDev::sync`]).
    ///
    /// # Safety
    /// `src` must be valid for `len` bytes.
    unsafe fn write_raw(&mut self, off: u64, src: *const u8, len: usize) -> Res<()>;
    /// A bulk write of bytes nobody reads soon (applying the log): the same as
    /// [`DataDev::write_raw`], possibly with streaming stores that only become visible and
    /// ordered at the next [`DataDev::settle`].
    ///
    /// # Safety
    /// As [`DataDev::write_raw`].
    unsafe fn write_stream(&mut self, off: u64, src: *const u8, len: usize) -> Res<()> {
        // SAFETY: forwarded contract.
        unsafe { self.write_raw(off, src, len) }
    }
    /// Order the streaming stores of [`DataDev::write_stream`] before what follows.
    fn settle(&mut self) {}
    /// A batch is applied: the data file's size as others see it becomes the logical one
    /// (an over-allocated DAX file drops its slack), as after a non-atomic fsync.
    fn exact(&mut self) -> Res<()> {
        Ok(())
    }
    /// Write many ranges as [`DataDev::write_stream`] would, in order (they may overlap:
    /// the later wins).
    ///
    /// # Safety
    /// Each source valid for its length.
    unsafe fn write_many(&mut self, ranges: &[(u64, *const u8, usize)]) -> Res<()> {
        for &(off, src, len) in ranges {
            // SAFETY: forwarded contract.
            unsafe { self.write_stream(off, src, len) }?;
        }
        Ok(())
    }
    /// Write an application's bytes: as [`DataDev::write_raw`], but a source that faults
    /// part way writes the bytes before the fault and returns their count (as the kernel's
    /// short write); EFAULT when none could be read.
    ///
    /// # Safety
    /// `src` must be valid for `len` bytes or fault inside a guarded copy.
    unsafe fn write_user(&mut self, off: u64, src: *const u8, len: usize) -> Res<usize> {
        // SAFETY: forwarded contract.
        unsafe { self.write_raw(off, src, len) }?;
        Ok(len)
    }
    /// Append an application's bytes at the end of file, atomically with respect to other
    /// processes' appends (the kernel's O_APPEND). Returns the count and where they went.
    ///
    /// # Safety
    /// As [`DataDev::write_user`].
    unsafe fn append_user(&mut self, src: *const u8, len: usize) -> Res<(usize, u64)> {
        let off = self.size()?;
        // SAFETY: forwarded contract.
        let n = unsafe { self.write_user(off, src, len) }?;
        Ok((n, off))
    }
    fn set_len(&mut self, len: u64) -> Res<()>;
    /// Make every byte and the size durable.
    fn sync(&mut self) -> Res<()>;
}

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
fn chunk_hashes<D: DataDev>(data: &D, s: u64, e: u64) -> Res<Vec<u64>> {
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

#[derive(Clone, Copy, Debug, Default)]
pub struct CoreStats {
    pub commits: u64,
    /// Commits of undo transactions (the rest were redo).
    pub undo_commits: u64,
    /// Transactions that began in the other mode than the one before.
    pub switches: u64,
    /// Undo transactions that went on as redo (a large truncation).
    pub undo_to_redo: u64,
    pub early_commits: u64,
    pub checkpoints: u64,
    pub logged_bytes: u64,
}

/// A shared file's truncation that cuts more bytes than this is a commit point (the bytes
/// are not saved: a shared file cannot go on as redo).
pub const SHARED_CUT_MAX: u64 = 64 << 20;

/// The largest log a commit leaves without a checkpoint (see [`Core::ckpt_at`]).
pub const CKPT_MAX: u64 = 1 << 20;

/// How a transaction keeps its promise.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// New bytes go to the log; reads overlay them; the data file changes after commit.
    /// One copy more per write, none per read outside the uncommitted ranges; suits
    /// writes.
    Redo,
    /// Old bytes go to the log (durably, before), new bytes in place; reads are plain;
    /// the commit syncs the data and drops the log. A barrier pair per write that saves
    /// bytes; suits files mostly read.
    Undo,
}

/// Which mode new transactions use (`FLEX_ATOMIC_POLICY`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Policy {
    /// From the measured mix: undo once reads outnumber writes [`UNDO_READS`] to one.
    Auto,
    Redo,
    Undo,
}

/// Reads per write from which [`Policy::Auto`] picks undo logging.
pub const UNDO_READS: u64 = 4;

/// One operation of a [`Batch`], its payload resolved to a pointer into the log.
#[derive(Clone, Copy, Debug)]
pub enum BatchOp {
    Write { off: u64, len: u64, src: *const u8 },
    Truncate { len: u64 },
}

/// Committed operations taken by the background applier: applied to the data file outside
/// the file's lock (their log bytes stay unchanged until the next checkpoint, which waits
/// for the batch), then handed back with [`Core::finish_batch`].
#[derive(Debug)]
pub struct Batch {
    pub ops: Vec<BatchOp>,
    /// Logical size after the last transaction of the batch.
    pub size: u64,
    /// Log offset where the batch's records end: index entries below it are its own.
    pub log_end: u64,
}

// SAFETY: the pointers address log bytes that stay valid and unchanged until the batch is
// finished (the log is reset only when no batch is in flight; its mapping never moves).
unsafe impl Send for Batch {}

impl Batch {
    /// Apply step `i` of the batch (`i == ops.len()`: set the final size). The simulator
    /// tests interleave these steps with foreground operations.
    ///
    /// # Safety
    /// The batch comes from [`Core::take_batch`] and was not finished yet.
    pub unsafe fn step<D: DataDev>(&self, data: &mut D, i: usize) -> Res<()> {
        match self.ops.get(i) {
            // SAFETY: per the contract, `src` addresses `len` unchanged log bytes.
            Some(&BatchOp::Write { off, len, src }) => unsafe {
                data.write_stream(off, src, len as usize)
            },
            Some(&BatchOp::Truncate { len }) => {
                data.settle();
                data.set_len(len)
            }
            None => {
                data.settle();
                if data.size()? != self.size {
                    data.set_len(self.size)?;
                }
                data.exact()
            }
        }
    }

    /// Apply the whole batch.
    ///
    /// # Safety
    /// As [`Batch::step`].
    pub unsafe fn apply<D: DataDev>(&self, data: &mut D) -> Res<()> {
        // Runs of writes go to the data file together (one fence per run).
        let mut run: Vec<(u64, *const u8, usize)> = Vec::with_capacity(self.ops.len());
        for (i, op) in self.ops.iter().enumerate() {
            match *op {
                BatchOp::Write { off, len, src } => run.push((off, src, len as usize)),
                BatchOp::Truncate { .. } => {
                    // SAFETY: forwarded contract (log bytes of this batch).
                    unsafe { data.write_many(&run) }?;
                    run.clear();
                    // SAFETY: forwarded contract.
                    unsafe { self.step(data, i) }?;
                }
            }
        }
        // SAFETY: as above.
        unsafe { data.write_many(&run) }?;
        // SAFETY: forwarded contract.
        unsafe { self.step(data, self.ops.len()) }
    }
}

/// One failure-atomic file: the log writer, the operations not yet in the data file
/// (committed but not applied, then uncommitted) and their index.
pub struct Core<M: Media> {
    pub log: Log<M>,
    /// Logical size as this process sees it (uncommitted operations included).
    size: u64,
    /// Bytes of the data file at or above this read as zero unless an extent covers them
    /// (the smallest truncation among the operations not yet applied).
    base_limit: u64,
    /// Ranges not yet in the data file (committed-unapplied and uncommitted, the newest
    /// wins): start -> (end, log offset of the byte at start).
    ext: BTreeMap<u64, (u64, u64)>,
    /// Uncommitted operations in order.
    ops: Vec<Op>,
    /// Committed operations not yet applied to the data file, in order.
    committed: Vec<Op>,
    /// Logical size after the last commit.
    committed_size: u64,
    /// Operations at the front of `committed` being applied by a batch (0: none).
    inflight: usize,
    /// Batches finished (a background checkpoint checks none finished during its sync).
    pub applied: u64,
    /// Commit only logs; applying and checkpointing are left to [`Core::take_batch`] and
    /// [`Core::checkpoint`] (the background applier). False: commit applies inline.
    pub background: bool,
    /// Idle files checkpoint in the background once the log holds this many bytes.
    pub idle_min: u64,
    /// Checkpoint when the log passes this many bytes.
    pub bound: u64,
    pub stats: CoreStats,
    /// A failed apply left the data file behind the log: refuse further IO (recovery at
    /// the next open repairs it).
    broken: bool,
    pub policy: Policy,
    /// The current transaction's mode (or the last one's, between transactions).
    mode: Mode,
    /// Undo: the size when the transaction began (its UNDO_SIZE is logged).
    size0: Option<u64>,
    /// Undo: ranges below `size0` whose old bytes the log holds (start -> end, disjoint).
    saved: BTreeMap<u64, u64>,
    /// Undo: the data file was changed in place.
    inplace: bool,
    /// The measured mix: reads and writes (halved now and then, so it follows changes).
    reads: u64,
    writes: u64,
    /// Old bytes on their way to the log.
    scratch: Vec<u8>,
    /// Other processes have the file open: every transaction is undo-logged in place and
    /// stamped, appends are the kernel's (see [`Core::go_shared`]).
    shared: bool,
}

impl<M: Media> Core<M> {
    pub fn new(log: Log<M>, size: u64, bound: u64) -> Core<M> {
        Core {
            log,
            size,
            base_limit: u64::MAX,
            ext: BTreeMap::new(),
            ops: Vec::new(),
            committed: Vec::new(),
            committed_size: size,
            inflight: 0,
            applied: 0,
            background: false,
            idle_min: (bound / 2).min(CKPT_MAX) / 2,
            bound,
            stats: CoreStats::default(),
            broken: false,
            policy: Policy::Auto,
            mode: Mode::Redo,
            size0: None,
            saved: BTreeMap::new(),
            inplace: false,
            reads: 0,
            writes: 0,
            scratch: Vec::new(),
            shared: false,
        }
    }

    /// Shared with other processes (see [`Core::go_shared`]).
    pub fn shared(&self) -> bool {
        self.shared
    }

    /// Shared: the data file holds every byte of this process in place, and other
    /// processes change it too: its size is the truth (reads past the size this process
    /// knew, `fstat`, `SEEK_END`).
    pub fn observe_size<D: DataDev>(&mut self, data: &D) -> Res<u64> {
        if self.shared && self.ops.is_empty() && self.inflight == 0 {
            self.size = data.size()?;
        }
        Ok(self.size)
    }

    /// Stamp `[s, e)` as this process just stored it, and the file's size `before` the
    /// change and now (shared files; see `log::STAMP`), durably before the call returns.
    fn stamp<D: DataDev>(&mut self, data: &mut D, s: u64, e: u64, before: u64) -> Res<()> {
        let first = s - s % log::CHUNK;
        let end =
            (e.div_ceil(log::CHUNK) * log::CHUNK).max(first + log::CHUNK * (s > first) as u64);
        let hashes = if end > first {
            chunk_hashes(data, first, end)?
        } else {
            Vec::new()
        };
        let after = data.size()?;
        // The stamp vouches for bytes that survive a crash of the machine too: the data
        // first (a fence on DAX, where the write made it durable already).
        data.sync()?;
        self.log.append_stamp(first, before, after, &hashes)?;
        self.log.m.barrier()
    }

    /// The mode of the current (or last) transaction.
    pub fn mode(&self) -> Mode {
        self.mode
    }

    /// A read of this file (the mix that picks the mode).
    pub fn note_read(&mut self) {
        self.reads += 1;
    }

    /// The mode the policy wants for the next transaction.
    pub fn wanted(&self) -> Mode {
        match self.policy {
            Policy::Redo => Mode::Redo,
            Policy::Undo => Mode::Undo,
            Policy::Auto if self.reads >= UNDO_READS * self.writes.max(1) => Mode::Undo,
            Policy::Auto => Mode::Redo,
        }
    }

    /// A transaction begins (its first write or truncation): undo if wanted and the log
    /// is empty (undo records live only in a generation's first transaction, so recovery
    /// never rolls back bytes a committed redo record replays), else redo.
    fn begin(&mut self) {
        if self.reads + self.writes > 4096 {
            self.reads /= 2;
            self.writes /= 2;
        }
        let empty = self.log.tail == log::HEADER && self.committed.is_empty() && self.inflight == 0;
        let mode = match self.wanted() {
            Mode::Undo if empty => Mode::Undo,
            _ => Mode::Redo,
        };
        if mode != self.mode {
            self.stats.switches += 1;
            self.mode = mode;
        }
    }

    pub fn size(&self) -> u64 {
        self.size
    }

    /// The kernel changed the data file (a call handed to it after a commit and a
    /// checkpoint): take its size. Refused (false) while anything is logged.
    pub fn adopt_size(&mut self, size: u64) -> bool {
        if self.dirty() || self.unapplied() || self.inflight() {
            return false;
        }
        self.size = size;
        self.committed_size = size;
        true
    }

    /// Uncommitted operations exist.
    pub fn dirty(&self) -> bool {
        !self.ops.is_empty() || self.size0.is_some() || self.inplace
    }

    /// Committed operations are not yet applied to the data file.
    pub fn unapplied(&self) -> bool {
        !self.committed.is_empty()
    }

    /// A batch is being applied outside the lock.
    pub fn inflight(&self) -> bool {
        self.inflight > 0
    }

    /// Logging `payload` bytes would make room (early commit and checkpoint), which needs
    /// the in-flight batch finished.
    pub fn needs_room(&self, payload: u64) -> bool {
        self.log.tail + log::rec_len(payload) + log::rec_len(0) * 2 > self.bound
            && self.log.tail != log::HEADER
    }

    /// The log passed half its bound: checkpoint at this commit (the foreground does it,
    /// after the in-flight batch finished, so the log stays bounded).
    pub fn wants_checkpoint(&self) -> bool {
        self.log.tail >= self.ckpt_at()
            || (self.wanted() == Mode::Undo && self.log.tail > log::HEADER)
    }

    /// Checkpoint at a commit once the log holds this much: half the bound, at most
    /// [`CKPT_MAX`] (a small log stays in the CPU caches; transactions may still use the
    /// whole bound before an early commit).
    pub fn ckpt_at(&self) -> u64 {
        (self.bound / 2).min(CKPT_MAX)
    }

    /// A background checkpoint is worth it: nothing pending, the log passed `idle_min`.
    pub fn idle_checkpoint(&self) -> bool {
        !self.dirty()
            && self.committed.is_empty()
            && self.inflight == 0
            && self.log.tail > log::HEADER
            && self.log.tail >= self.idle_min
    }

    /// Take the committed operations not yet applied as a batch (None: nothing to do or a
    /// batch already in flight).
    pub fn take_batch(&mut self) -> Option<Batch> {
        if self.inflight > 0 || self.committed.is_empty() || self.broken {
            return None;
        }
        let mut ops = Vec::with_capacity(self.committed.len());
        for op in &self.committed {
            ops.push(match *op {
                Op::Write { off, len, at } => BatchOp::Write {
                    off,
                    len,
                    src: self.log.m.ptr(at, len)?,
                },
                Op::Truncate { len } => BatchOp::Truncate { len },
            });
        }
        self.inflight = self.committed.len();
        Some(Batch {
            ops,
            size: self.committed_size,
            log_end: self.log.committed,
        })
    }

    /// A batch was applied (or failed: the file refuses IO until recovery repairs it).
    pub fn finish_batch(&mut self, b: Batch, r: Res<()>) {
        let n = self.inflight.min(b.ops.len()).min(self.committed.len());
        self.inflight = 0;
        if r.is_err() {
            self.broken = true;
            return;
        }
        self.committed.drain(..n);
        self.applied += 1;
        if self.committed.is_empty() && self.ops.is_empty() {
            self.ext.clear();
            self.base_limit = u64::MAX;
            return;
        }
        // Entries pointing at the batch's records are in the data file now; every later
        // operation's entries point past them (the log only grows within a generation,
        // and no checkpoint happens while a batch is in flight).
        let end = b.log_end;
        self.ext.retain(|_, v| v.1 >= end);
        self.base_limit = self
            .committed
            .iter()
            .chain(&self.ops)
            .filter_map(|op| match *op {
                Op::Truncate { len } => Some(len),
                Op::Write { .. } => None,
            })
            .min()
            .unwrap_or(u64::MAX);
    }

    /// Background checkpoint, second half: the data file was synced while `applied` was
    /// `epoch`; start a new generation if still nothing is pending and no batch finished
    /// since (everything committed was then in the synced data file).
    pub fn reset_after_sync(&mut self, epoch: u64) -> Res<bool> {
        self.check()?;
        if self.applied != epoch
            || self.dirty()
            || !self.committed.is_empty()
            || self.inflight > 0
            || self.log.tail == log::HEADER
        {
            return Ok(false);
        }
        self.log.reset()?;
        self.stats.checkpoints += 1;
        Ok(true)
    }

    fn check(&self) -> Res<()> {
        if self.broken {
            Err(Errno::IO)
        } else {
            Ok(())
        }
    }

    /// Before logging `payload` bytes: when the log would pass its bound, commit what is
    /// pending (an early commit: atomicity is kept, the commit point moves earlier) and
    /// checkpoint, so the log restarts empty.
    fn make_room<D: DataDev>(&mut self, data: &mut D, payload: u64) -> Res<()> {
        // With a batch in flight the caller waits for it first; if it did not, the log
        // grows past its bound rather than reset under the batch.
        if !self.needs_room(payload) || self.inflight > 0 {
            return Ok(());
        }
        if self.dirty() {
            self.stats.early_commits += 1;
            self.commit(data)?;
        }
        if self.log.tail > log::HEADER && self.inflight == 0 {
            self.checkpoint(data)?;
        }
        Ok(())
    }

    /// Log a write of `len` bytes from `src` at `off` (or at the end if `append`).
    /// Returns the count and the offset after it.
    ///
    /// # Safety
    /// `src` must be valid for `len` bytes or fault inside a guarded copy (EFAULT).
    pub unsafe fn write<D: DataDev>(
        &mut self,
        data: &mut D,
        off: u64,
        src: *const u8,
        len: usize,
        append: bool,
    ) -> Res<(usize, u64)> {
        self.check()?;
        if len == 0 {
            return Ok((0, off));
        }
        self.make_room(data, len as u64)?;
        if !self.dirty() {
            self.observe_size(data)?;
            self.begin();
        }
        self.writes += 1;
        if self.shared && self.mode == Mode::Undo && append {
            // The kernel places the append (other processes append too); nothing old is
            // overwritten, the stamp lets recovery cut it only while it is the file's end.
            let before = data.size()?;
            self.log.append_intent(before, before, before)?;
            self.save(data, 0, 0)?;
            self.log.m.barrier()?;
            self.inplace = true;
            // SAFETY: forwarded contract.
            let (n, at) = unsafe { data.append_user(src, len) }?;
            let end = at + n as u64;
            self.size = self.size.max(end);
            self.stamp(data, at, end, at)?;
            return Ok((n, end));
        }
        let off = if append { self.size } else { off };
        let end = off.checked_add(len as u64).ok_or(Errno::FBIG)?;
        if self.mode == Mode::Undo {
            if self.shared {
                // Which chunks are about to change, durable with the saved bytes (the
                // save's barriers): a crash inside the write rolls them back.
                let before = data.size()?;
                self.log.append_intent(off, end, before)?;
            }
            self.save(data, off, end)?;
            if self.shared {
                self.log.m.barrier()?;
            }
            self.inplace = true;
            let before = if self.shared { data.size()? } else { 0 };
            // SAFETY: forwarded contract.
            let n = match unsafe { data.write_user(off, src, len) } {
                Ok(n) => n,
                Err(err) => {
                    // tmpfs and ext4 leave the size at `off` after a write past the end
                    // that copied nothing: a failed call changes nothing here.
                    if off > self.size {
                        let _ = data.set_len(self.size);
                    }
                    return Err(err);
                }
            };
            let end = off + n as u64;
            self.size = self.size.max(end);
            if self.shared {
                self.stamp(data, off, end, before)?;
            }
            return Ok((n, end));
        }
        // SAFETY: forwarded contract.
        let (at, len) = unsafe { self.log.append_write(off, src, len) }?;
        let end = off + len as u64;
        self.index(off, end, Some(at));
        self.ops.push(Op::Write {
            off,
            len: len as u64,
            at,
        });
        self.size = self.size.max(end);
        self.stats.logged_bytes += len as u64;
        Ok((len, end))
    }

    /// Log a truncation (or extension) to `len`.
    pub fn truncate<D: DataDev>(&mut self, data: &mut D, len: u64) -> Res<()> {
        self.check()?;
        self.make_room(data, 0)?;
        if !self.dirty() {
            self.observe_size(data)?;
            self.begin();
        }
        self.writes += 1;
        if self.mode == Mode::Undo {
            let keep = self.size0.unwrap_or(self.size).min(self.size);
            // Shared: what a cut loses is every byte there now (see `save`).
            let cut = if self.shared {
                let now = data.size()?;
                self.gaps(len.min(now), now).iter().map(|g| g.1 - g.0).sum()
            } else {
                0
            };
            if self.shared && cut > SHARED_CUT_MAX {
                // Too much to save, and a shared file cannot go on as redo: a commit
                // point (as the byte-changing fallocate modes). The truncation is its own
                // redo transaction, committed before the file changes (a crash replays it).
                if self.dirty() {
                    self.stats.early_commits += 1;
                    self.commit(data)?;
                }
                if self.log.tail > log::HEADER {
                    self.checkpoint(data)?;
                }
                self.log.append_truncate(len)?;
                self.log.commit(len)?;
                self.stats.commits += 1;
                data.settle();
                data.set_len(len)?;
                data.sync()?;
                self.log.reset()?;
                self.size = len;
                self.committed_size = len;
                return Ok(());
            }
            if len >= keep || self.shared || self.unsaved(len, keep) <= self.bound / 4 {
                let before = if self.shared { data.size()? } else { 0 };
                if self.shared {
                    self.log
                        .append_intent(len.min(before), len.max(before), before)?;
                }
                self.save(data, len, if self.shared { u64::MAX } else { self.size })?;
                if self.shared {
                    self.log.m.barrier()?;
                }
                self.inplace = true;
                data.set_len(len)?;
                self.size = len;
                if self.shared {
                    // The chunk at the old or new end is the only one whose bytes change.
                    let m = len.min(before);
                    self.stamp(data, m, (m + 1).min(len.max(before)), before)?;
                }
                return Ok(());
            }
            // Too much to save: the transaction goes on as redo (its undo records stay
            // valid: recovery rolls them back if it does not commit).
            self.mode = Mode::Redo;
            self.stats.undo_to_redo += 1;
        }
        self.log.append_truncate(len)?;
        self.index(len, u64::MAX, None);
        self.base_limit = self.base_limit.min(len);
        self.ops.push(Op::Truncate { len });
        self.size = len;
        Ok(())
    }

    /// Undo: bytes of `[s, e)` below the transaction's first size whose old contents the
    /// log does not hold yet.
    fn unsaved(&self, s: u64, e: u64) -> u64 {
        let e = e.min(self.size0.unwrap_or(self.size));
        self.gaps(s, e).iter().map(|g| g.1 - g.0).sum()
    }

    /// The parts of `[s, e)` not in `saved`.
    fn gaps(&self, s: u64, e: u64) -> Vec<(u64, u64)> {
        let mut out = Vec::new();
        let mut at = s;
        let first = match self.saved.range(..=s).next_back() {
            Some((&k, _)) => k,
            None => s,
        };
        for (&k, &ke) in self.saved.range(first..e) {
            if ke <= at {
                continue;
            }
            if k > at {
                out.push((at, k));
            }
            at = at.max(ke);
            if at >= e {
                break;
            }
        }
        if at < e {
            out.push((at, e));
        }
        out
    }

    /// Undo: before `[s, e)` changes in place, make the old bytes durable in the log (and,
    /// first in a transaction, the size it began with). Payloads, barrier, headers,
    /// barrier: a valid UNDO header always has its whole payload.
    fn save<D: DataDev>(&mut self, data: &mut D, s: u64, e: u64) -> Res<()> {
        let fresh = self.size0.is_none();
        if fresh {
            self.log.append_undo_size(self.size, self.shared)?;
            self.size0 = Some(self.size);
        }
        // Shared: every byte that exists now is saved (other processes may have extended
        // the file since this transaction began).
        let lim = if self.shared {
            e.min(data.size()?)
        } else {
            e.min(self.size0.unwrap_or(0))
        };
        let gaps = if s < lim {
            self.gaps(s, lim)
        } else {
            Vec::new()
        };
        if gaps.is_empty() {
            if fresh {
                self.log.m.barrier()?;
            }
            return Ok(());
        }
        let mut staged = Vec::with_capacity(gaps.len());
        let mut scratch = core::mem::take(&mut self.scratch);
        let r = (|| {
            for &(a, b) in &gaps {
                let n = (b - a) as usize;
                scratch.clear();
                scratch.resize(n, 0);
                // Unsaved bytes below the first size are below the current size (a
                // shrink saves what it cuts); a short read leaves zeros, as the file
                // reads there.
                // SAFETY: our own buffer of n bytes.
                unsafe { data.read_raw(a, scratch.as_mut_ptr(), n) }?;
                // SAFETY: as above.
                staged.push(unsafe { self.log.stage(log::UNDO, a, scratch.as_ptr(), n) }?);
                self.stats.logged_bytes += n as u64;
            }
            self.log.m.barrier()?;
            for st in &staged {
                self.log.seal_staged(st);
            }
            self.log.m.barrier()
        })();
        self.scratch = scratch;
        r?;
        self.mark_saved(s, lim);
        Ok(())
    }

    fn mark_saved(&mut self, s: u64, e: u64) {
        let (mut ns, mut ne) = (s, e);
        if let Some((&ps, &pe)) = self.saved.range(..=s).next_back() {
            if pe >= s {
                ns = ps;
                ne = ne.max(pe);
            }
        }
        while let Some((&k, &ke)) = self.saved.range(ns..=ne).next() {
            self.saved.remove(&k);
            ne = ne.max(ke);
        }
        self.saved.insert(ns, ne);
    }

    /// Put `[s, e)` in the index (pointing at log offset `at`), or with `None` drop it.
    fn index(&mut self, s: u64, e: u64, at: Option<u64>) {
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

    /// fsync: make everything logged durable as one transaction. Inline mode then applies
    /// it to the data file (not synced: the log holds it until the next checkpoint) and
    /// checkpoints past half the bound; background mode leaves both to the applier and
    /// the caller ([`Core::wants_checkpoint`]).
    pub fn commit<D: DataDev>(&mut self, data: &mut D) -> Res<()> {
        self.check()?;
        if !self.dirty() {
            return Ok(());
        }
        if self.inplace || self.size0.is_some() {
            // Undo: the new bytes (and size) in the data file are durable before the
            // commit point.
            data.sync()?;
            if self.ops.is_empty() {
                // The new generation is the commit: the undo records are gone at once.
                self.log.reset()?;
                self.stats.commits += 1;
                self.stats.undo_commits += 1;
                self.size0 = None;
                self.inplace = false;
                self.saved.clear();
                self.committed_size = self.size;
                return Ok(());
            }
            // A transaction that went on as redo commits as redo (COMMIT record).
            self.size0 = None;
            self.inplace = false;
            self.saved.clear();
        }
        self.log.commit(self.size)?;
        self.stats.commits += 1;
        let ops = core::mem::take(&mut self.ops);
        self.committed.extend(ops);
        self.committed_size = self.size;
        if self.background {
            return Ok(());
        }
        self.apply_all(data)?;
        if self.wants_checkpoint() {
            self.checkpoint(data)?;
        }
        Ok(())
    }

    /// Other processes have the file open (or the program mapped it): from now on every
    /// transaction is undo-logged, so the data file holds this process's writes at once,
    /// as the kernel's write would. A redo transaction in progress goes on as undo: what
    /// is committed is applied and checkpointed, the uncommitted writes are taken out of
    /// the log and made again in place, each with its old bytes saved first, so a crash
    /// still rolls the whole transaction back. No batch may be in flight.
    pub fn go_shared<D: DataDev>(&mut self, data: &mut D) -> Res<()> {
        self.check()?;
        if self.inflight > 0 {
            return Err(Errno::BUSY);
        }
        if self.shared {
            return Ok(());
        }
        self.policy = Policy::Undo;
        self.shared = true;
        if self.mode == Mode::Undo && self.ops.is_empty() {
            // Undo already (or idle after undo): in place; later transactions stay undo.
            if !self.dirty() {
                return self.checkpoint(data);
            }
            // An undo transaction in progress: mark it shared and stamp what it changed so
            // far, durably, before anyone else can write (recovery then spares their
            // bytes, see `roll_back_shared`).
            self.log
                .append_undo_size(self.size0.unwrap_or(self.size), true)?;
            // Until now nobody else could change the size: one link of the chain from the
            // transaction's first size to the size now.
            let now = data.size()?;
            self.log
                .append_stamp(0, self.size0.unwrap_or(now), now, &[])?;
            let saved: Vec<(u64, u64)> = self.saved.iter().map(|(&a, &b)| (a, b)).collect();
            for (a, b) in saved {
                self.stamp(data, a, b, now)?;
            }
            return self.log.m.barrier();
        }
        if self.size0.is_some() || self.inplace {
            // An undo transaction that went on as redo (a large truncation): its in-place
            // part cannot be redone; commit it here (a commit point the program did not
            // ask for, counted as an early commit).
            self.stats.early_commits += 1;
            self.commit(data)?;
        }
        self.apply_all(data)?;
        // The uncommitted redo writes, in order, with their bytes.
        let ops = core::mem::take(&mut self.ops);
        let mut redo: Vec<(Op, Vec<u8>)> = Vec::with_capacity(ops.len());
        for op in ops {
            let bytes = match op {
                Op::Write { len, at, .. } => {
                    let mut b = vec![0u8; len as usize];
                    self.log.m.read(at, &mut b);
                    b
                }
                Op::Truncate { .. } => Vec::new(),
            };
            redo.push((op, bytes));
        }
        // The data file holds everything committed: a new generation drops the log.
        data.sync()?;
        self.log.reset()?;
        self.stats.checkpoints += 1;
        self.ext.clear();
        self.base_limit = u64::MAX;
        self.size = self.committed_size;
        self.mode = Mode::Undo;
        for (op, bytes) in redo {
            match op {
                Op::Write { off, .. } => {
                    // SAFETY: our own buffer of bytes.len() bytes.
                    let (n, _) =
                        unsafe { self.write(data, off, bytes.as_ptr(), bytes.len(), false) }?;
                    if n != bytes.len() {
                        self.broken = true;
                        return Err(Errno::IO);
                    }
                }
                Op::Truncate { len } => self.truncate(data, len)?,
            }
        }
        Ok(())
    }

    /// The file is this process's alone again (between transactions only): `policy`
    /// from the next transaction on.
    pub fn end_shared(&mut self, policy: Policy) {
        if !self.dirty() {
            self.shared = false;
            self.policy = policy;
        }
    }

    /// Apply every committed operation now, on this thread (no batch may be in flight).
    pub fn apply_all<D: DataDev>(&mut self, data: &mut D) -> Res<()> {
        self.check()?;
        if self.inflight > 0 {
            return Err(Errno::BUSY);
        }
        let Some(b) = self.take_batch() else {
            return Ok(());
        };
        // SAFETY: a batch just taken, finished right after.
        let r = unsafe { b.apply(data) };
        self.finish_batch(b, r);
        r
    }

    /// Apply what is committed, sync the data file, then start a new log generation. Only
    /// with nothing uncommitted and no batch in flight.
    pub fn checkpoint<D: DataDev>(&mut self, data: &mut D) -> Res<()> {
        self.check()?;
        if self.dirty() || self.inflight > 0 {
            return Err(Errno::BUSY);
        }
        if self.log.tail == log::HEADER {
            return Ok(());
        }
        self.apply_all(data)?;
        data.sync()?;
        self.log.reset()?;
        self.stats.checkpoints += 1;
        Ok(())
    }
}
