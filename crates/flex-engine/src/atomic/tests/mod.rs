//! The protocol against the persistence simulator: random workloads of writes, appends,
//! truncates and fsyncs; a crash at every fence, with no, all, and random subsets of the
//! lines still in flight; recovery on the durable image; the result must be exactly the
//! last committed state of a model (or, for a crash inside a commit, the state it commits).

//!
//! The harness: `workload` (random workloads on the simulator and the model's states),
//! `applier` (the background applier, simulated step by step) and `crash` (a crash at
//! every fence, recovery of each image, crashes inside recovery). The tests, by what they
//! cover: `redo`, `undo`, `policy` (auto and switching modes), `background` (applying
//! off the foreground), `shared` (files going shared) and `log_format`.

mod applier;
mod background;
mod crash;
mod log_format;
mod policy;
mod redo;
mod shared;
mod undo;
mod workload;
