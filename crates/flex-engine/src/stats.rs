//! Counters for `FLEX_STATS` and `flexio run --stats`: calls served by flex and passed to
//! the kernel per call name, bytes, maps and unmaps, fallbacks with their reasons.

use crate::posix::Pass;
use serde::Serialize;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Mutex;

macro_rules! calls {
    ($($name:ident),* $(,)?) => {
        /// Every call the engine counts.
        #[allow(non_camel_case_types)]
        #[derive(Clone, Copy, Debug, PartialEq, Eq)]
        #[repr(usize)]
        pub enum Call { $($name),* }
        impl Call {
            pub const ALL: &'static [Call] = &[$(Call::$name),*];
            pub fn name(self) -> &'static str {
                match self { $(Call::$name => stringify!($name)),* }
            }
        }
    };
}

calls!(
    open,
    close,
    read,
    write,
    pread,
    pwrite,
    readv,
    writev,
    preadv,
    pwritev,
    lseek,
    fsync,
    fdatasync,
    sync_file_range,
    ftruncate,
    truncate,
    fallocate,
    dup,
    fcntl,
    fstat,
    stat,
    mmap,
    sendfile,
    copy_file_range,
    splice,
    fork,
    exec,
    spawn,
    unlink,
    rename,
    stdio
);

const N: usize = Call::ALL.len();

pub struct Stats {
    served: [AtomicU64; N],
    passed: [AtomicU64; N],
    pub bytes_read: AtomicU64,
    pub bytes_written: AtomicU64,
    pub maps: AtomicU64,
    pub unmaps: AtomicU64,
    pub remaps: AtomicU64,
    pub grows: AtomicU64,
    pub adoptions: AtomicU64,
    pub recoveries: AtomicU64,
    /// Failure-atomic mode: commits of redo and of undo transactions, mode switches.
    pub atomic_redo: AtomicU64,
    pub atomic_undo: AtomicU64,
    pub atomic_switches: AtomicU64,
    /// Fallbacks by reason: one counter per [`Pass`].
    fallbacks: [AtomicU64; Pass::COUNT],
    files: Mutex<BTreeMap<Vec<u8>, FileStat>>,
}

#[derive(Serialize, Clone, Debug)]
pub struct FileStat {
    pub granularity: &'static str,
    pub map_sync: bool,
}

#[allow(clippy::declare_interior_mutable_const)]
const Z: AtomicU64 = AtomicU64::new(0);

impl Default for Stats {
    fn default() -> Self {
        Stats {
            served: [Z; N],
            passed: [Z; N],
            bytes_read: Z,
            bytes_written: Z,
            maps: Z,
            unmaps: Z,
            remaps: Z,
            grows: Z,
            adoptions: Z,
            recoveries: Z,
            atomic_redo: Z,
            atomic_undo: Z,
            atomic_switches: Z,
            fallbacks: [Z; Pass::COUNT],
            files: Mutex::new(BTreeMap::new()),
        }
    }
}

#[derive(Serialize)]
struct Report<'a> {
    pid: u32,
    exe: String,
    served: BTreeMap<&'static str, u64>,
    passthrough: BTreeMap<&'static str, u64>,
    bytes_read: u64,
    bytes_written: u64,
    maps: u64,
    unmaps: u64,
    remaps: u64,
    grows: u64,
    adoptions: u64,
    recoveries: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    atomic: Option<AtomicReport>,
    fallbacks: BTreeMap<&'static str, u64>,
    files: BTreeMap<String, FileStat>,
    cpu: Cpu<'a>,
}

#[derive(Serialize)]
struct AtomicReport {
    redo_commits: u64,
    undo_commits: u64,
    switches: u64,
}

#[derive(Serialize)]
struct Cpu<'a> {
    flush: &'a str,
    nt_copy: &'a str,
}

impl Stats {
    #[inline]
    pub fn served(&self, c: Call) {
        self.served[c as usize].fetch_add(1, Relaxed);
    }
    #[inline]
    pub fn passed(&self, c: Call) {
        self.passed[c as usize].fetch_add(1, Relaxed);
    }
    /// Did this process use flex at all (served or passed a managed call)?
    pub fn active(&self) -> bool {
        self.served
            .iter()
            .chain(self.passed.iter())
            .any(|c| c.load(Relaxed) > 0)
    }

    /// Forget everything (a forked child starts its own account).
    pub fn reset(&self) {
        for c in self.served.iter().chain(self.passed.iter()) {
            c.store(0, Relaxed);
        }
        for c in [
            &self.bytes_read,
            &self.bytes_written,
            &self.maps,
            &self.unmaps,
            &self.remaps,
            &self.grows,
            &self.adoptions,
            &self.recoveries,
            &self.atomic_redo,
            &self.atomic_undo,
            &self.atomic_switches,
        ] {
            c.store(0, Relaxed);
        }
        for c in &self.fallbacks {
            c.store(0, Relaxed);
        }
    }

    /// Count a fallback (lock-free: one counter per reason).
    #[inline]
    pub fn fell_back(&self, reason: Pass) {
        self.fallbacks[reason as usize].fetch_add(1, Relaxed);
    }

    /// Every fallback counted, by its text.
    fn fallback_counts(&self) -> BTreeMap<&'static str, u64> {
        let mut m = BTreeMap::new();
        for p in Pass::ALL {
            let v = self.fallbacks[*p as usize].load(Relaxed);
            if v > 0 {
                *m.entry(p.why()).or_insert(0) += v;
            }
        }
        m
    }
    pub fn file(&self, path: &[u8], f: FileStat) {
        if let Ok(mut m) = self.files.lock() {
            m.insert(path.to_vec(), f);
        }
    }

    /// One JSON object (a single line) describing this process's activity.
    pub fn to_json(&self) -> String {
        let pick = |a: &[AtomicU64; N]| {
            Call::ALL
                .iter()
                .filter_map(|c| {
                    let v = a[*c as usize].load(Relaxed);
                    (v > 0).then_some((c.name(), v))
                })
                .collect::<BTreeMap<_, _>>()
        };
        let exe = std::fs::read_link("/proc/self/exe")
            .map(|p| p.display().to_string())
            .unwrap_or_default();
        let r = Report {
            pid: std::process::id(),
            exe,
            served: pick(&self.served),
            passthrough: pick(&self.passed),
            bytes_read: self.bytes_read.load(Relaxed),
            bytes_written: self.bytes_written.load(Relaxed),
            maps: self.maps.load(Relaxed),
            unmaps: self.unmaps.load(Relaxed),
            remaps: self.remaps.load(Relaxed),
            grows: self.grows.load(Relaxed),
            adoptions: self.adoptions.load(Relaxed),
            recoveries: self.recoveries.load(Relaxed),
            atomic: {
                let a = AtomicReport {
                    redo_commits: self.atomic_redo.load(Relaxed),
                    undo_commits: self.atomic_undo.load(Relaxed),
                    switches: self.atomic_switches.load(Relaxed),
                };
                (a.redo_commits + a.undo_commits > 0).then_some(a)
            },
            fallbacks: self.fallback_counts(),
            files: self
                .files
                .lock()
                .map(|m| {
                    m.iter()
                        .map(|(k, v)| (String::from_utf8_lossy(k).into_owned(), v.clone()))
                        .collect()
                })
                .unwrap_or_default(),
            cpu: Cpu {
                flush: crate::persist::flush_instruction(),
                nt_copy: crate::persist::nt_copy_kind(),
            },
        };
        serde_json::to_string(&r).unwrap_or_else(|_| "{}".into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fallbacks_count_by_reason_and_print_its_text() {
        let s = Stats::default();
        s.fell_back(Pass::MmapFailed);
        s.fell_back(Pass::MmapFailed);
        s.fell_back(Pass::AtomicEarlyCommit);
        let m = s.fallback_counts();
        assert_eq!(m.get("mmap failed"), Some(&2));
        assert_eq!(m.get("atomic: early commit (log full)"), Some(&1));
        assert_eq!(m.len(), 2);
        s.reset();
        assert!(s.fallback_counts().is_empty());
    }
}
