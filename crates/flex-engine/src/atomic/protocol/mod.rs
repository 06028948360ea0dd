//! The failure-atomic protocol over a [`Media`] (the log) and a [`DataDev`] (the data
//! file): redo logging (new bytes to the log, an in-memory index of them, applied after
//! the commit) and undo logging (old bytes to the log, new bytes in place, the log
//! dropped at the commit), chosen per transaction from the file's measured read/write
//! mix; commit, apply, checkpoint and recovery. Generic so that the persistence simulator
//! runs the very code the engine runs.
//!
//! One file per concern, each adding an `impl Core` block where it needs one:
//! - `data_dev`: [`DataDev`], the data file as the protocol sees it;
//! - `policy`: which mode (redo or undo) a transaction uses;
//! - `transaction`: logging writes and truncations (and making room in the log);
//! - `index`: the index of uncommitted ranges, and reads through it;
//! - `undo`: saving old bytes in the log before the data file changes in place;
//! - `commit`: the commit point;
//! - `apply`: batches for the background applier, applying and checkpointing;
//! - `shared`: files other processes have open (stamps, going shared);
//! - `recover`: replay and roll back what a crash left in the log.
//!
//! Here: [`Core`] (one file's state), its counters and its small accessors.

mod apply;
mod commit;
mod data_dev;
mod index;
mod policy;
mod recover;
mod shared;
mod transaction;
mod undo;

pub use apply::{Batch, BatchOp, CKPT_MAX};
pub use data_dev::DataDev;
pub use policy::{Mode, Policy, UNDO_READS};
pub use recover::{image, recover, replay, Replayed};
pub use shared::SHARED_CUT_MAX;

use super::log::{Log, Media, Op};
use crate::sys::{Errno, Res};
use std::collections::BTreeMap;

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

    /// The log was taken away (kept as a spare, see `atomic::spare`): refuse further IO,
    /// as a broken core does.
    pub fn retire(&mut self) {
        self.broken = true;
    }

    /// Is the log clean: everything committed is applied and checkpointed, nothing in
    /// flight or pending (the log holds no record a scan would replay)?
    pub fn is_clean(&self) -> bool {
        !self.broken
            && !self.dirty()
            && self.inflight == 0
            && self.committed.is_empty()
            && self.log.tail == super::log::HEADER
    }

    fn check(&self) -> Res<()> {
        if self.broken {
            Err(Errno::IO)
        } else {
            Ok(())
        }
    }
}
