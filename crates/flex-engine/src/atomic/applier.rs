//! The per-process background applier ([`Worker`]): applies committed batches to the
//! data files off the application's threads, and checkpoints idle files.

use super::data::InodeData;
use super::file::AtomicFile;
use super::protocol::DataDev;
use crate::sys::Errno;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicPtr, Ordering::*};
use std::sync::{Arc, Condvar, Mutex};

/// The per-process background applier: one thread, created at the first background
/// commit, sleeping on a condvar while no file has committed work (an idle process costs
/// nothing). A forked child gets its own at its first commit (threads do not survive
/// fork; the parent's queue, possibly locked at the fork, is abandoned).
pub(super) struct Worker {
    pid: u32,
    q: Mutex<VecDeque<Arc<AtomicFile>>>,
    cv: Condvar,
    /// The thread waits on `cv` (else a push needs no wake-up system call).
    sleeping: AtomicBool,
}

static WORKER: AtomicPtr<Worker> = AtomicPtr::new(std::ptr::null_mut());
static WORKER_INIT: Mutex<()> = Mutex::new(());

pub(super) fn worker() -> Option<&'static Worker> {
    let pid = std::process::id();
    let p = WORKER.load(Acquire);
    // SAFETY: a published worker is leaked, never freed.
    if let Some(w) = unsafe { p.as_ref() } {
        if w.pid == pid {
            return Some(w);
        }
    }
    let _g = WORKER_INIT.lock().unwrap_or_else(|p| p.into_inner());
    let p = WORKER.load(Acquire);
    // SAFETY: as above.
    if let Some(w) = unsafe { p.as_ref() } {
        if w.pid == pid {
            return Some(w);
        }
    }
    let w: &'static Worker = Box::leak(Box::new(Worker {
        pid,
        q: Mutex::new(VecDeque::new()),
        cv: Condvar::new(),
        sleeping: AtomicBool::new(false),
    }));
    std::thread::Builder::new()
        .name("flex-atomic".into())
        .stack_size(256 << 10)
        .spawn(move || w.run())
        .ok()?;
    WORKER.store(w as *const Worker as *mut Worker, Release);
    Some(w)
}

impl Worker {
    fn push(&self, f: Arc<AtomicFile>) {
        self.q
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push_back(f);
        self.cv.notify_one();
    }

    fn run(&self) {
        loop {
            let f = {
                let mut q = self.q.lock().unwrap_or_else(|p| p.into_inner());
                loop {
                    if let Some(f) = q.pop_front() {
                        break f;
                    }
                    self.sleeping.store(true, Relaxed);
                    q = self.cv.wait(q).unwrap_or_else(|p| p.into_inner());
                    self.sleeping.store(false, Relaxed);
                }
            };
            f.background();
        }
    }
}

impl AtomicFile {
    /// Hand the file to the background applier.
    pub(super) fn kick(&self) {
        if self.queued.swap(true, AcqRel) {
            return;
        }
        match (worker(), self.me.upgrade()) {
            (Some(w), Some(me)) => w.push(me),
            _ => {
                // No applier (thread creation failed): apply here.
                self.queued.store(false, Release);
                if let Some(inode) = self.inode.upgrade() {
                    let mut c = self.lock();
                    let _ = c.apply_all(&mut self.data(&inode));
                }
            }
        }
    }

    /// The applier's work on this file: apply batches outside the lock until none is
    /// left, then checkpoint if the file is idle and its log passed a quarter.
    fn background(&self) {
        self.queued.store(false, Release);
        let Some(inode) = self.inode.upgrade() else {
            return;
        };
        let mut data = InodeData {
            inode: &inode,
            fd: -1,
        };
        loop {
            let b = {
                let mut c = self.lock();
                if self.gone.load(Acquire) {
                    return;
                }
                data.fd = self.dfd();
                match c.take_batch() {
                    Some(b) => b,
                    None => break,
                }
            };
            // A panic must not leave the batch in flight (close and exit wait for it).
            let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                // SAFETY: a batch just taken, finished right below.
                unsafe { b.apply(&mut data) }
            }))
            .unwrap_or(Err(Errno::IO));
            self.lock().finish_batch(b, r);
            self.idle.notify_all();
            if r.is_err() {
                return;
            }
        }
        let _m = self.moving.lock().unwrap_or_else(|p| p.into_inner());
        let epoch = {
            let c = self.lock();
            if self.gone.load(Acquire) || !c.idle_checkpoint() {
                return;
            }
            data.fd = self.dfd();
            c.applied
        };
        // Sync outside the lock; reset only if nothing was applied meanwhile.
        if data.sync().is_ok() {
            let _ = self.lock().reset_after_sync(epoch);
        }
    }
}
