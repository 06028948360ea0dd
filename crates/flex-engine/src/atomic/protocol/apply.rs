//! Committed operations reach the data file: batches taken by the background applier
//! (applied outside the file's lock), applying inline, and checkpoints (data synced, a
//! new log generation).

use super::{Core, DataDev, Mode};
use crate::atomic::log::{self, Media, Op};
use crate::sys::{Errno, Res};

/// The largest log a commit leaves without a checkpoint (see [`Core::ckpt_at`]).
pub const CKPT_MAX: u64 = 1 << 20;

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

impl<M: Media> Core<M> {
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
