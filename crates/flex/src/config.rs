//! Configuration from `FLEX_*` environment variables, read once.

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;

/// Value of the opt-in open flag `O_FLEX` (octal 0100000000); never reaches the kernel.
pub const O_FLEX: i32 = 0o100000000;
/// Value of `O_FLEX_ATOMIC` (octal 0200000000): manage this file in failure-atomic mode;
/// never reaches the kernel.
pub const O_FLEX_ATOMIC: i32 = 0o200000000;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum LogLevel {
    Off,
    Info,
    Debug,
}

#[derive(Debug, Clone)]
pub struct Config {
    /// Path prefixes whose regular files are managed (`FLEX_PATHS`, colon-separated).
    pub paths: Vec<Vec<u8>>,
    /// `FLEX_STATS`: file that receives one JSON line per process at exit.
    pub stats: Option<Vec<u8>>,
    pub log: LogLevel,
    /// IO calls on a description served by the kernel before flex adopts it (`FLEX_ADOPT_AFTER`).
    /// Small, short-lived files stay on the kernel path, where they are cheapest.
    pub adopt_after: u32,
    /// Populate page tables at mapping time for files up to this size (`FLEX_POPULATE_MAX`).
    pub populate_max: u64,
    /// Mappings kept after the last close, for reuse by the next open (`FLEX_MAP_CACHE`).
    pub map_cache: usize,
    /// A closed file's mapping is released in the background after this idle time
    /// (`FLEX_IDLE_UNMAP`, seconds, fractions allowed).
    pub idle_unmap: std::time::Duration,
    /// Idle mapped bytes beyond this are released at once, oldest first (`FLEX_IDLE_BYTES`).
    pub idle_bytes: u64,
    /// Smallest growth step of an appended file (`FLEX_GROW_MIN`).
    pub grow_min: u64,
    /// Disable the engine entirely (`FLEX_DISABLE=1`): everything passes through.
    pub disabled: bool,
    /// `FLEX_MODE=atomic`: every managed file is failure-atomic (see `atomic`).
    pub atomic: bool,
    /// `FLEX_ATOMIC=write`: each write is its own transaction, durable when it returns.
    pub atomic_write: bool,
    /// `FLEX_ATOMIC_LOG`: checkpoint a file's log when it passes this size.
    pub atomic_log: u64,
    /// Apply committed transactions on the committing thread (default), or with
    /// `FLEX_ATOMIC_APPLY=background` in a background thread per process (it pays off only
    /// with an idle core; measured slower on this project's 2-core machines).
    pub atomic_apply_inline: bool,
    /// `FLEX_ATOMIC_POLICY=auto|redo|undo`: how transactions log (auto: from each file's
    /// measured read/write mix).
    pub atomic_policy: crate::atomic::core::Policy,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            paths: Vec::new(),
            stats: None,
            log: LogLevel::Off,
            adopt_after: 2,
            populate_max: 4 << 30,
            map_cache: 16384,
            idle_unmap: std::time::Duration::from_secs(1),
            idle_bytes: 1 << 30,
            grow_min: 1 << 20,
            disabled: false,
            atomic: false,
            atomic_write: false,
            atomic_log: 16 << 20,
            atomic_apply_inline: true,
            atomic_policy: crate::atomic::core::Policy::Auto,
        }
    }
}

fn parse_size(v: &OsStr) -> Option<u64> {
    let s = v.to_str()?.trim();
    let (num, mul) = match s.as_bytes().last()? {
        b'k' | b'K' => (&s[..s.len() - 1], 1u64 << 10),
        b'm' | b'M' => (&s[..s.len() - 1], 1 << 20),
        b'g' | b'G' => (&s[..s.len() - 1], 1 << 30),
        _ => (s, 1),
    };
    num.parse::<u64>().ok()?.checked_mul(mul)
}

/// Seconds, fractions allowed (`0.001`).
fn parse_secs(v: &OsStr) -> Option<std::time::Duration> {
    std::time::Duration::try_from_secs_f64(v.to_str()?.trim().parse().ok()?).ok()
}

/// Lexically normalise an absolute path: collapse `//`, `.` and `..` (no symlinks resolved).
pub fn normalize(path: &[u8]) -> Vec<u8> {
    let mut parts: Vec<&[u8]> = Vec::new();
    for c in path.split(|&b| b == b'/') {
        match c {
            b"" | b"." => {}
            b".." => {
                parts.pop();
            }
            c => parts.push(c),
        }
    }
    let mut out = Vec::with_capacity(path.len());
    for p in parts {
        out.push(b'/');
        out.extend_from_slice(p);
    }
    if out.is_empty() {
        out.push(b'/');
    }
    out
}

impl Config {
    pub fn from_env() -> Config {
        let mut c = Config::default();
        let get = |k: &str| std::env::var_os(k);
        if let Some(p) = get("FLEX_PATHS") {
            c.paths = p
                .as_bytes()
                .split(|&b| b == b':')
                .filter(|s| s.first() == Some(&b'/'))
                .map(normalize)
                .collect();
        }
        c.stats = get("FLEX_STATS")
            .filter(|s| !s.is_empty())
            .map(|s| s.as_bytes().to_vec());
        c.log = match get("FLEX_LOG").as_deref().and_then(|s| s.to_str()) {
            Some("debug") | Some("2") => LogLevel::Debug,
            Some("info") | Some("1") => LogLevel::Info,
            _ => LogLevel::Off,
        };
        if let Some(v) = get("FLEX_ADOPT_AFTER").as_deref().and_then(parse_size) {
            c.adopt_after = v.min(u32::MAX as u64) as u32;
        }
        if let Some(v) = get("FLEX_POPULATE_MAX").as_deref().and_then(parse_size) {
            c.populate_max = v;
        }
        if let Some(v) = get("FLEX_MAP_CACHE").as_deref().and_then(parse_size) {
            c.map_cache = v as usize;
        }
        if let Some(v) = get("FLEX_IDLE_UNMAP").as_deref().and_then(parse_secs) {
            c.idle_unmap = v;
        }
        if let Some(v) = get("FLEX_IDLE_BYTES").as_deref().and_then(parse_size) {
            c.idle_bytes = v;
        }
        if let Some(v) = get("FLEX_GROW_MIN").as_deref().and_then(parse_size) {
            c.grow_min = v.max(64 << 10).next_power_of_two();
        }
        c.disabled = get("FLEX_DISABLE").is_some_and(|v| v == "1");
        c.atomic = get("FLEX_MODE").is_some_and(|v| v == "atomic");
        c.atomic_write = get("FLEX_ATOMIC").is_some_and(|v| v == "write");
        c.atomic_apply_inline = get("FLEX_ATOMIC_APPLY").is_none_or(|v| v != "background");
        c.atomic_policy = match get("FLEX_ATOMIC_POLICY") {
            Some(v) if v == "redo" => crate::atomic::core::Policy::Redo,
            Some(v) if v == "undo" => crate::atomic::core::Policy::Undo,
            _ => crate::atomic::core::Policy::Auto,
        };
        if let Some(v) = get("FLEX_ATOMIC_LOG").as_deref().and_then(parse_size) {
            c.atomic_log = v.max(64 << 10);
        }
        c
    }

    /// Is this normalised absolute path under one of the managed prefixes?
    pub fn path_managed(&self, abs: &[u8]) -> bool {
        self.paths.iter().any(|p| {
            p == b"/" || (abs.starts_with(p) && (abs.len() == p.len() || abs[p.len()] == b'/'))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalizes_and_matches_prefixes() {
        assert_eq!(normalize(b"/a//b/./c/../d"), b"/a/b/d");
        assert_eq!(normalize(b"/.."), b"/");
        let c = Config {
            paths: vec![b"/dev/shm/x".to_vec()],
            ..Config::default()
        };
        assert!(c.path_managed(b"/dev/shm/x/f"));
        assert!(c.path_managed(b"/dev/shm/x"));
        assert!(!c.path_managed(b"/dev/shm/xy/f"));
        assert!(!c.path_managed(b"/dev/shm"));
        assert_eq!(parse_size(OsStr::new("4k")), Some(4096));
        assert_eq!(parse_size(OsStr::new("2M")), Some(2 << 20));
        assert_eq!(parse_size(OsStr::new("x")), None);
        assert_eq!(
            parse_secs(OsStr::new("0.001")),
            Some(std::time::Duration::from_millis(1))
        );
        assert_eq!(parse_secs(OsStr::new("-1")), None);
    }
}
