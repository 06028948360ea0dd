//! The process-wide engine: configuration, statistics, the descriptor table and the
//! inode cache (which keeps mappings alive across close, so reopening is cheap), and the
//! background thread that releases idle mappings.

use crate::config::{Config, LogLevel};
use crate::desc::Table;
use crate::inode::Inode;
use crate::log::flex_log;
use crate::stats::Stats;
use crate::sys;
use rustc_hash::FxHashMap;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicI64, Ordering::*};
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::time::Instant;

pub struct Engine {
    pub config: &'static Config,
    pub stats: Stats,
    pub table: Table,
    inodes: Mutex<Inodes>,
    /// Wakes the unmapper (paired with `inodes`).
    unmapper_cv: Condvar,
    /// Inodes of this process currently over-allocated (in trailer mode).
    pub trailer_files: AtomicI64,
    /// Files in atomic mode in this process (stat by path reports their size).
    pub atomic_files: AtomicI64,
    /// Set at exit: writes after the exit hook (late stdio flushes) go through the kernel,
    /// so the kernel size stays exact.
    pub exiting: std::sync::atomic::AtomicBool,
    /// The process this state belongs to (a vfork child shares the memory, not the pid).
    pub pid: std::sync::atomic::AtomicU32,
    /// Cached current directory, for matching relative paths against FLEX_PATHS.
    cwd: Mutex<Option<Vec<u8>>>,
    /// Descriptors flex keeps for itself (atomic logs, their data duplicates).
    private: PrivateFds,
    /// flex's own descriptors of data files whose close waits for the file's last
    /// description to close: closing any descriptor of a file drops the process's POSIX
    /// record locks on it (SQLite's), so flex never closes one while the program may hold
    /// such a lock.
    deferred: Mutex<Vec<(i32, (u64, u64))>>,
}

/// Descriptors flex keeps for itself. They sit above the numbers scripts name (0-9); the
/// application's close and close_range leave them alone, and a dup2 onto one moves it
/// first: otherwise a later commit would write through whatever file took the number.
const PRIVATE_FD_BASE: libc::c_long = 10;

#[derive(Default)]
struct PrivateFds {
    n: std::sync::atomic::AtomicUsize,
    set: Mutex<Vec<i32>>,
}

#[derive(Default)]
struct Inodes {
    /// By (dev, ino), with a fast hash: keys come from the file system, not from an adversary.
    /// One table for the inode and its idle state: an open or a close of a file that is
    /// not in the CPU's caches (10,000 small files) misses on one bucket, not two.
    map: FxHashMap<(u64, u64), Cached>,
    /// Entries of `map` that are idle.
    idle_n: usize,
    /// Idle inodes oldest first, by tick, for eviction past FLEX_MAP_CACHE. A close pushes
    /// and a reopen leaves its entry behind (stale: its tick is no longer the inode's), so
    /// a close/open pair costs a push and a hash update, not ordered-map surgery; stale
    /// entries are skipped when met and swept when they outnumber the live ones.
    idle: VecDeque<(u64, (u64, u64))>,
    /// The idle inodes that hold a mapping, as `idle`, with the instant they went idle:
    /// the unmapper's queue.
    mapped: VecDeque<(u64, (u64, u64), Instant)>,
    /// Live entries of `mapped`.
    mapped_n: usize,
    /// Address space held by idle mappings (the sum over the live `mapped`).
    idle_bytes: u64,
    clock: u64,
    /// The process whose unmapper thread runs (0: none; another pid: inherited by fork,
    /// the thread did not survive it).
    unmapper: u32,
    /// The thread could not be created: closes release due mappings themselves.
    no_unmapper: bool,
    unmapper_wait: Wait,
}

/// An inode of the cache and its idle state.
struct Cached {
    inode: Arc<Inode>,
    /// The tick it went idle at (0: a description is open).
    idle: u64,
    /// Bytes its mapping held then.
    bytes: u64,
}

/// What the unmapper thread is doing: a close wakes it only when it has to.
#[derive(Default, Clone, Copy, PartialEq, Eq)]
enum Wait {
    /// Running (it looks at the queue again before it sleeps).
    #[default]
    Awake,
    /// Until the oldest idle mapping is due.
    Timed,
    /// Until woken (nothing was due at any time it can compute).
    Forever,
}

impl Inodes {
    /// Is the queue entry (tick `t`, key `k`) current (the inode is idle since `t`)?
    fn live(&self, t: u64, k: (u64, u64)) -> bool {
        self.map.get(&k).is_some_and(|c| c.idle == t)
    }

    /// An inode went idle: queue it (its mapping's `bytes`, if any, for the unmapper).
    fn enter_idle(&mut self, k: (u64, u64), bytes: u64) {
        self.clock += 1;
        let t = self.clock;
        let Some(c) = self.map.get_mut(&k) else {
            return;
        };
        if c.idle == 0 {
            self.idle_n += 1;
        } else if c.bytes > 0 {
            self.mapped_n -= 1;
            self.idle_bytes = self.idle_bytes.saturating_sub(c.bytes);
        }
        (c.idle, c.bytes) = (t, bytes);
        self.idle.push_back((t, k));
        if bytes > 0 {
            self.mapped.push_back((t, k, Instant::now()));
            self.mapped_n += 1;
            self.idle_bytes += bytes;
        }
        self.sweep();
    }

    /// Drop stale queue entries once they outnumber the live ones (amortised O(1)).
    fn sweep(&mut self) {
        if self.idle.len() > 2 * self.idle_n + 64 {
            let mut q = std::mem::take(&mut self.idle);
            q.retain(|&(t, k)| self.live(t, k));
            self.idle = q;
        }
        if self.mapped.len() > 2 * self.mapped_n + 64 {
            let mut q = std::mem::take(&mut self.mapped);
            q.retain(|&(t, k, _)| self.live(t, k));
            self.mapped = q;
        }
    }

    /// The entry is no longer idle (a description opened, or it leaves the cache).
    fn unidle(c: &mut Cached, idle_n: &mut usize, mapped_n: &mut usize, idle_bytes: &mut u64) {
        if c.idle != 0 {
            *idle_n -= 1;
            if c.bytes > 0 {
                *mapped_n -= 1;
                *idle_bytes = idle_bytes.saturating_sub(c.bytes);
            }
            (c.idle, c.bytes) = (0, 0);
        }
    }

    /// Take an idle inode out of the cache (the caller unmaps it, outside the lock).
    fn take(&mut self, k: (u64, u64)) -> Option<Arc<Inode>> {
        let mut c = self.map.remove(&k)?;
        Self::unidle(
            &mut c,
            &mut self.idle_n,
            &mut self.mapped_n,
            &mut self.idle_bytes,
        );
        Some(c.inode)
    }

    /// The oldest idle inode, past the cache's bound: taken out (None: within the bound).
    fn evict_one(&mut self, bound: usize) -> Option<Option<Arc<Inode>>> {
        while self.idle_n > bound {
            let (t, k) = self.idle.pop_front()?;
            if self.live(t, k) {
                return Some(self.take(k));
            }
        }
        None
    }

    /// The oldest live entry of the unmapper's queue (stale ones in front are dropped).
    fn oldest_mapped(&mut self) -> Option<((u64, u64), Instant)> {
        while let Some(&(t, k, at)) = self.mapped.front() {
            if self.live(t, k) {
                return Some((k, at));
            }
            self.mapped.pop_front();
        }
        None
    }

    /// Idle mappings due for release: the oldest while idle mapped bytes exceed the bound,
    /// and every one idle for longer than the idle time.
    fn due(&mut self, now: Instant, c: &Config) -> Vec<Arc<Inode>> {
        let mut out = Vec::new();
        while let Some((k, at)) = self.oldest_mapped() {
            if self.idle_bytes <= c.idle_bytes && now.saturating_duration_since(at) < c.idle_unmap {
                break;
            }
            self.mapped.pop_front();
            out.extend(self.take(k));
        }
        out
    }
}

/// What [`Engine::inode`] found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Found {
    /// First open of this file in the process (crash recovery may be due).
    Fresh,
    /// Cached, no description open: its size was adopted from the open's fstat.
    Idle,
    /// Other descriptions are open: re-read the size under the size lock.
    Busy,
}

static ENGINE: OnceLock<Engine> = OnceLock::new();

static CONFIG: OnceLock<Config> = OnceLock::new();

/// The FLEX_* configuration, read once (its warnings printed once). An open asks it before
/// the engine exists: a program that opens no file flex would manage never starts the
/// engine (fault handlers, its pid, tables).
pub fn config() -> &'static Config {
    CONFIG.get_or_init(|| {
        let (config, errors) = Config::from_env();
        crate::config::warn(&errors);
        config
    })
}

/// The engine, created from the configuration at the first open flex wants.
pub fn engine() -> &'static Engine {
    ENGINE.get_or_init(|| Engine::new(config()))
}

/// The engine if it was already created (exit hooks must not create it).
pub fn engine_if_started() -> Option<&'static Engine> {
    ENGINE.get()
}

pub fn log_enabled(lvl: LogLevel) -> bool {
    crate::log::enabled(engine().config.log, lvl)
}

impl Engine {
    fn new(config: &'static Config) -> Engine {
        crate::fault::install();
        Engine {
            config,
            stats: Stats::default(),
            table: Table::new(),
            inodes: Mutex::new(Inodes::default()),
            unmapper_cv: Condvar::new(),
            trailer_files: AtomicI64::new(0),
            atomic_files: AtomicI64::new(0),
            exiting: std::sync::atomic::AtomicBool::new(false),
            pid: std::sync::atomic::AtomicU32::new(
                rustix::process::getpid().as_raw_nonzero().get() as u32,
            ),
            cwd: Mutex::new(None),
            private: PrivateFds::default(),
            deferred: Mutex::new(Vec::new()),
        }
    }

    /// Keep `fd` for flex: moved to 10 or above (close-on-exec) and registered. Returns
    /// the descriptor to use. Not higher: growing the descriptor table past its first 64
    /// slots cost 60 ms per short-lived process here (measured with the kill -9 runs).
    pub fn keep_private(&self, fd: i32) -> i32 {
        let fd = match crate::sys::fcntl_int(fd, libc::F_DUPFD_CLOEXEC, PRIVATE_FD_BASE) {
            Ok(high) => {
                let _ = crate::sys::close(fd);
                high
            }
            Err(_) => fd,
        };
        let mut s = self.private.set.lock().unwrap_or_else(|p| p.into_inner());
        s.push(fd);
        self.private.n.store(s.len(), Release);
        fd
    }

    /// Close flex's own descriptor `fd` of the data file (dev, ino): at once if no
    /// description of the file is open in this process, else when the last one closes
    /// (see `deferred`). `fd` becomes one of flex's private descriptors meanwhile.
    pub fn close_data_fd(&self, fd: i32, dev: u64, ino: u64) {
        let open = self
            .lookup(dev, ino)
            .is_some_and(|i| i.descs.load(Acquire) > 0);
        if !open {
            self.close_private(fd);
            return;
        }
        self.defer_data_fd(fd, dev, ino);
    }

    /// As [`Engine::close_data_fd`] for a file with an open description (the caller's):
    /// without the engine's inode lock, so callers holding an inode's locks may use it.
    pub fn defer_data_fd(&self, fd: i32, dev: u64, ino: u64) {
        let fd = if self.is_private(fd) {
            fd
        } else {
            self.keep_private_in_place(fd)
        };
        self.deferred
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push((fd, (dev, ino)));
    }

    /// The file's last description closed: its deferred descriptors go.
    fn close_deferred(&self, k: (u64, u64)) {
        let fds: Vec<i32> = {
            let mut d = self.deferred.lock().unwrap_or_else(|p| p.into_inner());
            if d.is_empty() {
                return;
            }
            let (go, keep): (Vec<_>, Vec<_>) = d.drain(..).partition(|e| e.1 == k);
            *d = keep;
            go.into_iter().map(|e| e.0).collect()
        };
        for fd in fds {
            self.close_private(fd);
        }
    }

    /// Register `fd` as one of flex's own where it is: a descriptor of a data file is
    /// never moved (moving closes the old number, which drops the process's POSIX locks on
    /// the file).
    pub fn keep_private_in_place(&self, fd: i32) -> i32 {
        let mut s = self.private.set.lock().unwrap_or_else(|p| p.into_inner());
        s.push(fd);
        self.private.n.store(s.len(), Release);
        fd
    }

    /// Close a descriptor of flex's own (registered or not).
    pub fn close_private(&self, fd: i32) {
        {
            let mut s = self.private.set.lock().unwrap_or_else(|p| p.into_inner());
            s.retain(|&x| x != fd);
            self.private.n.store(s.len(), Release);
        }
        let _ = crate::sys::close(fd);
    }

    /// Is `fd` one of flex's own?
    pub fn is_private(&self, fd: i32) -> bool {
        self.private.n.load(Acquire) > 0
            && self
                .private
                .set
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .contains(&fd)
    }

    /// `[first, last]` without flex's own descriptors, as ranges to close.
    pub fn ranges_without_private(&self, first: u32, last: u32) -> Vec<(u32, u32)> {
        let mut own: Vec<u32> = if self.private.n.load(Acquire) == 0 {
            Vec::new()
        } else {
            let s = self.private.set.lock().unwrap_or_else(|p| p.into_inner());
            s.iter()
                .map(|&x| x as u32)
                .filter(|x| (first..=last).contains(x))
                .collect()
        };
        own.sort_unstable();
        let mut out = Vec::new();
        let mut at = first;
        for x in own {
            if x > at {
                out.push((at, x - 1));
            }
            if x == u32::MAX {
                return out;
            }
            at = x + 1;
        }
        if at <= last {
            out.push((at, last));
        }
        out
    }

    /// Find or create the inode for (dev, ino). Returns it and whether it is new.
    ///
    /// `size` is the kernel's size read at open. An inode that was idle (no description
    /// open in this process) adopts it here, under the cache lock: no writer of this
    /// process can have changed the size since, and a concurrent opener finds the inode
    /// busy and re-reads the size under the size lock. `Found::Busy` asks the caller to.
    pub fn inode(&self, dev: u64, ino: u64, size: u64, path: &[u8]) -> (Arc<Inode>, Found) {
        let mut g = self.inodes.lock().unwrap_or_else(|p| p.into_inner());
        let g = &mut *g;
        if let Some(c) = g.map.get_mut(&(dev, ino)) {
            let i = c.inode.clone();
            if i.descs.fetch_add(1, std::sync::atomic::Ordering::AcqRel) == 0 {
                Inodes::unidle(c, &mut g.idle_n, &mut g.mapped_n, &mut g.idle_bytes);
                i.adopt_size(size);
                return (i, Found::Idle);
            }
            return (i, Found::Busy);
        }
        let i = Arc::new(Inode::new(dev, ino, size, path.to_vec()));
        i.descs.store(1, std::sync::atomic::Ordering::Release);
        g.map.insert(
            (dev, ino),
            Cached {
                inode: i.clone(),
                idle: 0,
                bytes: 0,
            },
        );
        (i, Found::Fresh)
    }

    /// A description of this inode closed: keep it cached, evicting the oldest idle ones.
    /// Its mapping is released later by the unmapper thread (idle time, idle bytes).
    pub fn release(&self, inode: &Arc<Inode>) {
        let mut g = self.inodes.lock().unwrap_or_else(|p| p.into_inner());
        if inode
            .descs
            .fetch_sub(1, std::sync::atomic::Ordering::AcqRel)
            != 1
        {
            return;
        }
        let k = (inode.dev, inode.ino);
        self.close_deferred(k);
        let bytes = inode.mapped_len();
        g.enter_idle(k, bytes);
        let mut evicted = Vec::new();
        while let Some(i) = g.evict_one(self.config.map_cache) {
            evicted.extend(i);
        }
        let (mut wake, mut spawn) = (false, false);
        if bytes > 0 && g.map.get(&k).is_some_and(|c| c.idle != 0) {
            let pid = self.pid.load(Relaxed);
            if g.no_unmapper {
                evicted.extend(g.due(Instant::now(), self.config));
            } else if g.unmapper != pid {
                // First idle mapping of this process (or of this forked child).
                if !self.exiting.load(Relaxed) {
                    g.unmapper = pid;
                    g.unmapper_wait = Wait::Awake;
                    spawn = true;
                }
            } else if (g.unmapper_wait == Wait::Forever && g.mapped_n == 1)
                || (g.unmapper_wait != Wait::Awake && g.idle_bytes > self.config.idle_bytes)
            {
                // Its queue was empty, or the bound is passed: the thread's timeout does
                // not cover this one. (Otherwise the oldest entry's deadline comes first.)
                g.unmapper_wait = Wait::Awake;
                wake = true;
            }
        }
        drop(g);
        if wake {
            self.unmapper_cv.notify_one();
        }
        for i in evicted {
            i.unmap();
        }
        if spawn {
            self.start_unmapper();
        }
    }

    /// Start this process's unmapper thread. Signals stay blocked in it (they are the
    /// application's, for its own threads), except glibc's internal cancellation and
    /// set*id signals (32, 33: setuid waits for every thread to take the latter).
    fn start_unmapper(&self) {
        let all: u64 = !((1 << 31) | (1 << 32));
        let mut old: u64 = 0;
        let masked = sys::signal::sigprocmask(libc::SIG_SETMASK, Some(&all), Some(&mut old));
        let spawned = std::thread::Builder::new()
            .name("flex-unmap".into())
            .stack_size(128 << 10)
            .spawn(|| engine().unmapper())
            .is_ok();
        if masked {
            // Restore this thread's own mask.
            sys::signal::sigprocmask(libc::SIG_SETMASK, Some(&old), None);
        }
        if !spawned {
            flex_log!(
                LogLevel::Info,
                "no unmapper thread: closes release idle mappings"
            );
            let mut g = self.inodes.lock().unwrap_or_else(|p| p.into_inner());
            g.no_unmapper = true;
            let due = g.due(Instant::now(), self.config);
            drop(g);
            for i in due {
                i.unmap();
            }
        }
    }

    /// The unmapper thread: sleeps until the oldest idle mapping is due (or a close wakes
    /// it), takes every due inode out of the cache under the lock, unmaps them outside it.
    /// An open that finds an inode before that revives it (the thread no longer sees it);
    /// one that comes after creates a fresh inode. Never joined: exit does not wait.
    fn unmapper(&self) {
        let mut g = self.inodes.lock().unwrap_or_else(|p| p.into_inner());
        loop {
            let now = Instant::now();
            let batch = g.due(now, self.config);
            if !batch.is_empty() {
                drop(g);
                let (n, t0) = (batch.len(), Instant::now());
                let mut bytes = 0;
                for i in &batch {
                    bytes += i.mapped_len();
                    i.unmap();
                }
                drop(batch);
                flex_log!(
                    LogLevel::Debug,
                    "idle unmap: {n} files, {bytes} bytes in {} us",
                    t0.elapsed().as_micros()
                );
                g = self.inodes.lock().unwrap_or_else(|p| p.into_inner());
                continue;
            }
            let deadline = g
                .oldest_mapped()
                .and_then(|(_, at)| at.checked_add(self.config.idle_unmap));
            g = match deadline {
                Some(d) => {
                    g.unmapper_wait = Wait::Timed;
                    let wait = d.saturating_duration_since(now);
                    self.unmapper_cv
                        .wait_timeout(g, wait)
                        .unwrap_or_else(|p| p.into_inner())
                        .0
                }
                None => {
                    g.unmapper_wait = Wait::Forever;
                    self.unmapper_cv.wait(g).unwrap_or_else(|p| p.into_inner())
                }
            };
            g.unmapper_wait = Wait::Awake;
        }
    }

    /// In a forked child: the parent's unmapper did not survive fork; start the child's
    /// own if it inherited idle mappings. (A lock held at the fork by a thread that is
    /// gone stays held: then nothing is started here.)
    pub fn after_fork_child(&self) {
        let mut g = match self.inodes.try_lock() {
            Ok(g) => g,
            Err(std::sync::TryLockError::Poisoned(p)) => p.into_inner(),
            Err(std::sync::TryLockError::WouldBlock) => return,
        };
        if g.mapped_n == 0 || g.no_unmapper {
            return;
        }
        g.unmapper = self.pid.load(Relaxed);
        g.unmapper_wait = Wait::Awake;
        drop(g);
        self.start_unmapper();
    }

    /// A path is unlinked or replaced: drop its cached mapping if no description uses it,
    /// so the file's space is freed and the mapping never outlives the file's identity.
    pub fn forget(&self, dev: u64, ino: u64) {
        let mut g = self.inodes.lock().unwrap_or_else(|p| p.into_inner());
        let idle = g
            .map
            .get(&(dev, ino))
            .is_some_and(|c| c.inode.descs.load(std::sync::atomic::Ordering::Acquire) == 0);
        if idle {
            let i = g.take((dev, ino));
            drop(g);
            if let Some(i) = i {
                i.unmap();
            }
        }
    }

    /// Does the cache hold an idle inode (one [`Engine::forget`] could act on)?
    pub fn has_idle(&self) -> bool {
        self.inodes.lock().unwrap_or_else(|p| p.into_inner()).idle_n > 0
    }

    /// The inode for (dev, ino) if this process has it.
    pub fn lookup(&self, dev: u64, ino: u64) -> Option<Arc<Inode>> {
        let g = self.inodes.lock().unwrap_or_else(|p| p.into_inner());
        g.map.get(&(dev, ino)).map(|c| c.inode.clone())
    }

    /// Every cached inode (for exit and exec).
    pub fn all_inodes(&self) -> Vec<Arc<Inode>> {
        let g = self.inodes.lock().unwrap_or_else(|p| p.into_inner());
        g.map.values().map(|c| c.inode.clone()).collect()
    }

    /// The current directory, cached until chdir.
    pub fn cwd(&self) -> Option<Vec<u8>> {
        let mut g = self.cwd.lock().unwrap_or_else(|p| p.into_inner());
        if g.is_none() {
            let c = rustix::process::getcwd(Vec::new()).ok()?;
            *g = Some(c.as_bytes().to_vec());
        }
        g.clone()
    }

    pub fn chdir_happened(&self) {
        *self.cwd.lock().unwrap_or_else(|p| p.into_inner()) = None;
    }
}
