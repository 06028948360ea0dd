//! The process-wide engine: configuration, statistics, the descriptor table and the
//! inode cache (which keeps mappings alive across close, so reopening is cheap).

use crate::config::{Config, LogLevel};
use crate::desc::Table;
use crate::inode::Inode;
use crate::stats::Stats;
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicI64, Ordering::*};
use std::sync::{Arc, Mutex, OnceLock};

pub struct Engine {
    pub config: Config,
    pub stats: Stats,
    pub table: Table,
    inodes: Mutex<Inodes>,
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
    map: HashMap<(u64, u64), Arc<Inode>>,
    /// Inodes with no open description (the mapping cache), by the time they went idle:
    /// oldest first, O(log n) to find and to remove.
    idle: BTreeMap<u64, (u64, u64)>,
    /// When each idle inode went idle (its key in `idle`).
    idle_since: HashMap<(u64, u64), u64>,
    clock: u64,
}

impl Inodes {
    fn unidle(&mut self, k: (u64, u64)) {
        if let Some(t) = self.idle_since.remove(&k) {
            self.idle.remove(&t);
        }
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

/// The engine, created from the environment on first use.
pub fn engine() -> &'static Engine {
    ENGINE.get_or_init(|| {
        let (config, errors) = Config::from_env();
        crate::config::warn(&errors);
        Engine::new(config)
    })
}

/// The engine if it was already created (exit hooks must not create it).
pub fn engine_if_started() -> Option<&'static Engine> {
    ENGINE.get()
}

pub fn log_enabled(lvl: LogLevel) -> bool {
    crate::log::enabled(engine().config.log, lvl)
}

impl Engine {
    fn new(config: Config) -> Engine {
        crate::fault::install();
        Engine {
            config,
            stats: Stats::default(),
            table: Table::new(),
            inodes: Mutex::new(Inodes::default()),
            trailer_files: AtomicI64::new(0),
            atomic_files: AtomicI64::new(0),
            exiting: std::sync::atomic::AtomicBool::new(false),
            pid: std::sync::atomic::AtomicU32::new(
                rustix::process::getpid().as_raw_nonzero().get() as u32,
            ),
            cwd: Mutex::new(None),
            private: PrivateFds::default(),
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
        if let Some(i) = g.map.get(&(dev, ino)) {
            let i = i.clone();
            if i.descs.fetch_add(1, std::sync::atomic::Ordering::AcqRel) == 0 {
                g.unidle((dev, ino));
                i.adopt_size(size);
                return (i, Found::Idle);
            }
            return (i, Found::Busy);
        }
        let i = Arc::new(Inode::new(dev, ino, size, path.to_vec()));
        i.descs.store(1, std::sync::atomic::Ordering::Release);
        g.map.insert((dev, ino), i.clone());
        (i, Found::Fresh)
    }

    /// A description of this inode closed: keep it cached, evicting the oldest idle ones.
    pub fn release(&self, inode: &Arc<Inode>) {
        let mut g = self.inodes.lock().unwrap_or_else(|p| p.into_inner());
        if inode
            .descs
            .fetch_sub(1, std::sync::atomic::Ordering::AcqRel)
            != 1
        {
            return;
        }
        g.clock += 1;
        let (t, k) = (g.clock, (inode.dev, inode.ino));
        g.idle.insert(t, k);
        g.idle_since.insert(k, t);
        let mut evicted = Vec::new();
        while g.idle.len() > self.config.map_cache {
            let Some((_, k)) = g.idle.pop_first() else {
                break;
            };
            g.idle_since.remove(&k);
            if let Some(i) = g.map.remove(&k) {
                evicted.push(i);
            }
        }
        drop(g);
        for i in evicted {
            i.unmap();
        }
    }

    /// A path is unlinked or replaced: drop its cached mapping if no description uses it,
    /// so the file's space is freed and the mapping never outlives the file's identity.
    pub fn forget(&self, dev: u64, ino: u64) {
        let mut g = self.inodes.lock().unwrap_or_else(|p| p.into_inner());
        let idle = g
            .map
            .get(&(dev, ino))
            .is_some_and(|i| i.descs.load(std::sync::atomic::Ordering::Acquire) == 0);
        if idle {
            let i = g.map.remove(&(dev, ino));
            g.unidle((dev, ino));
            drop(g);
            if let Some(i) = i {
                i.unmap();
            }
        }
    }

    /// The inode for (dev, ino) if this process has it.
    pub fn lookup(&self, dev: u64, ino: u64) -> Option<Arc<Inode>> {
        let g = self.inodes.lock().unwrap_or_else(|p| p.into_inner());
        g.map.get(&(dev, ino)).cloned()
    }

    /// Every cached inode (for exit and exec).
    pub fn all_inodes(&self) -> Vec<Arc<Inode>> {
        let g = self.inodes.lock().unwrap_or_else(|p| p.into_inner());
        g.map.values().cloned().collect()
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
