//! Configuration from `FLEX_*` environment variables, read once.
//!
//! This module is the one home of the rules: [`Config::parse`] gives, per variable, the
//! value or a precise [`ConfigError`]. The engine warns about each error at start and uses
//! the default; `flexio run` refuses to start the program.

use std::ffi::{OsStr, OsString};
use std::fmt;
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
    /// `FLEX_STATS`: file that receives one JSON line per process at exit (absolute after
    /// [`Config::from_env`]: a relative name is resolved against the cwd at engine start).
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
    /// `FLEX_SNAPSHOTS=0`: this process never takes part in a live snapshot (its writes
    /// skip the snapshot gate; a snapshot of a file it writes is refused).
    pub no_snapshots: bool,
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
    pub atomic_policy: crate::atomic::protocol::Policy,
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
            no_snapshots: false,
            atomic: false,
            atomic_write: false,
            atomic_log: 16 << 20,
            atomic_apply_inline: true,
            atomic_policy: crate::atomic::protocol::Policy::Auto,
        }
    }
}

/// Every variable of README's "Environment" table that libflex.so reads, with its default
/// (spelled as a value the variable accepts, where there is one: `FLEX_MODE=off`). The
/// warnings name it. `FLEX_CPU` and `FLEX_FLUSH` are read by `persist` (which falls back to
/// the detected instruction); their values are checked here all the same.
pub const VARS: [(&str, &str); 18] = [
    ("FLEX_PATHS", "none"),
    ("FLEX_STATS", "off"),
    ("FLEX_LOG", "off"),
    ("FLEX_ADOPT_AFTER", "2"),
    ("FLEX_POPULATE_MAX", "4G"),
    ("FLEX_MAP_CACHE", "16384"),
    ("FLEX_IDLE_UNMAP", "1"),
    ("FLEX_IDLE_BYTES", "1G"),
    ("FLEX_GROW_MIN", "1M"),
    ("FLEX_MODE", "off"),
    ("FLEX_ATOMIC", "fsync"),
    ("FLEX_ATOMIC_LOG", "16M"),
    ("FLEX_ATOMIC_APPLY", "inline"),
    ("FLEX_ATOMIC_POLICY", "auto"),
    ("FLEX_DISABLE", "0"),
    ("FLEX_SNAPSHOTS", "1"),
    ("FLEX_CPU", "detected"),
    ("FLEX_FLUSH", "detected"),
];

/// A variable whose value breaks its rule: `FLEX_GROW_MIN=abc: not a size (...)`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub var: &'static str,
    pub value: OsString,
    pub reason: String,
}

impl ConfigError {
    /// The default used instead (as README's "Environment" table writes it).
    pub fn default_value(&self) -> &'static str {
        VARS.iter()
            .find(|(n, _)| *n == self.var)
            .map_or("?", |(_, d)| d)
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Control characters escaped: the message stays on one line.
        let mut v = String::new();
        for ch in String::from_utf8_lossy(self.value.as_bytes()).chars() {
            if ch.is_control() {
                v.extend(ch.escape_default());
            } else {
                v.push(ch);
            }
        }
        write!(f, "{}={v}: {}", self.var, self.reason)
    }
}

impl std::error::Error for ConfigError {}

/// Write one warning line per error to stderr, with a raw write each (engine start: the
/// defaults are in use).
pub fn warn(errors: &[ConfigError]) {
    if errors.is_empty() {
        return;
    }
    let pid = rustix::process::getpid().as_raw_nonzero().get();
    for e in errors {
        let line = format!(
            "flex[{pid}]: warning: {e}; using the default ({})\n",
            e.default_value()
        );
        crate::sys::stderr(line.as_bytes());
    }
}

/// A variable's rule: its value, or why not.
type Rule<T> = Result<T, String>;

const NOT_A_SIZE: &str = "not a size (use a number with an optional k/M/G suffix)";
const NOT_A_COUNT: &str = "not a count (use a whole number)";

fn text(v: &OsStr) -> Rule<&str> {
    v.to_str().ok_or_else(|| "not valid UTF-8".to_string())
}

/// A byte count: digits with an optional k/M/G (binary) suffix.
pub fn parse_size(v: &OsStr) -> Rule<u64> {
    let s = text(v)?.trim();
    let (num, mul) = match s.as_bytes().last() {
        Some(b'k' | b'K') => (&s[..s.len() - 1], 1u64 << 10),
        Some(b'm' | b'M') => (&s[..s.len() - 1], 1 << 20),
        Some(b'g' | b'G') => (&s[..s.len() - 1], 1 << 30),
        _ => (s, 1),
    };
    if num.is_empty() || !num.bytes().all(|b| b.is_ascii_digit()) {
        return Err(NOT_A_SIZE.into());
    }
    num.parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(mul))
        .ok_or_else(|| "too large (more than 64 bits)".into())
}

fn parse_count(v: &OsStr, max: u64) -> Rule<u64> {
    let s = text(v)?.trim();
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return Err(NOT_A_COUNT.into());
    }
    s.parse::<u64>()
        .ok()
        .filter(|&n| n <= max)
        .ok_or_else(|| format!("too large (at most {max})"))
}

/// One of `names`, exactly; the error lists them.
fn parse_word<T: Copy>(v: &OsStr, what: &str, names: &[(&str, T)]) -> Rule<T> {
    let list: Vec<&str> = names.iter().map(|(n, _)| *n).collect();
    let s = text(v)?;
    names
        .iter()
        .find(|(n, _)| *n == s)
        .map(|&(_, t)| t)
        .ok_or_else(|| format!("not {what} (use {})", or_list(&list)))
}

/// One of `names` in any case (as `persist` reads FLEX_CPU and FLEX_FLUSH).
fn parse_name_nocase(v: &OsStr, what: &str, names: &[&str]) -> Rule<()> {
    let s = text(v)?;
    if names.iter().any(|n| n.eq_ignore_ascii_case(s)) {
        Ok(())
    } else {
        Err(format!("not {what} (use {})", or_list(names)))
    }
}

/// "a, b or c".
fn or_list(names: &[&str]) -> String {
    match names {
        [] => String::new(),
        [one] => one.to_string(),
        [init @ .., last] => format!("{} or {last}", init.join(", ")),
    }
}

/// Colon-separated absolute paths (empty entries are skipped), normalised.
fn parse_paths(v: &OsStr) -> Rule<Vec<Vec<u8>>> {
    let mut out = Vec::new();
    for p in v.as_bytes().split(|&b| b == b':').filter(|p| !p.is_empty()) {
        if p[0] != b'/' {
            return Err(format!(
                "`{}` is not an absolute path (use colon-separated absolute paths)",
                String::from_utf8_lossy(p)
            ));
        }
        out.push(normalize(p).into_owned());
    }
    Ok(out)
}

/// Reads variables and collects the errors of those that break their rule.
struct Reader<G> {
    get: G,
    errors: Vec<ConfigError>,
}

impl<G: Fn(&str) -> Option<OsString>> Reader<G> {
    /// The value of `var` under `rule`; `None` when unset, empty or broken (the error is
    /// kept: the caller leaves the default).
    fn take<T>(&mut self, var: &'static str, rule: impl FnOnce(&OsStr) -> Rule<T>) -> Option<T> {
        debug_assert!(VARS.iter().any(|(n, _)| *n == var), "{var} is not in VARS");
        let value = (self.get)(var).filter(|v| !v.is_empty())?;
        match rule(&value) {
            Ok(t) => Some(t),
            Err(reason) => {
                self.errors.push(ConfigError { var, value, reason });
                None
            }
        }
    }
}

/// Seconds, fractions allowed (`0.001`).
fn parse_secs(v: &OsStr) -> Rule<std::time::Duration> {
    text(v)?
        .trim()
        .parse::<f64>()
        .ok()
        .and_then(|f| std::time::Duration::try_from_secs_f64(f).ok())
        .ok_or_else(|| "not a time (use seconds, fractions allowed: 0.5)".to_string())
}

/// Lexically normalise an absolute path: collapse `//`, `.` and `..` (no symlinks resolved).
/// A path that is normal already (most are) is returned as it is, without allocating.
pub fn normalize(path: &[u8]) -> std::borrow::Cow<'_, [u8]> {
    if is_normal(path) {
        return std::borrow::Cow::Borrowed(path);
    }
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
    std::borrow::Cow::Owned(out)
}

/// Absolute, and no empty, `.` or `..` component (a trailing `/` is an empty one). Every
/// open of a path asks: one pass over the bytes with the current name's length and
/// whether it is all dots (about 180 instructions for an 18-byte path, where a split
/// into components took 220).
fn is_normal(path: &[u8]) -> bool {
    let Some((&b'/', rest)) = path.split_first() else {
        return false;
    };
    if rest.is_empty() {
        return true;
    }
    let (mut len, mut dots) = (0usize, true);
    for &b in rest {
        if b == b'/' {
            if len == 0 || (dots && len <= 2) {
                return false;
            }
            (len, dots) = (0, true);
        } else {
            len += 1;
            dots &= b == b'.';
        }
    }
    len != 0 && !(dots && len <= 2)
}

impl Config {
    /// The configuration of this process: [`Config::parse`] of the environment, with a
    /// relative `FLEX_STATS` resolved against the current directory now (once, at engine
    /// start: a program that changes directory still writes one file). Also returns the
    /// variables that broke their rule (their defaults are in use).
    pub fn from_env() -> (Config, Vec<ConfigError>) {
        let (mut c, errors) = Config::parse(|k| std::env::var_os(k));
        if let Some(s) = &mut c.stats {
            if s.first() != Some(&b'/') {
                if let Ok(cwd) = rustix::process::getcwd(Vec::new()) {
                    let mut abs = cwd.into_bytes();
                    abs.push(b'/');
                    abs.extend_from_slice(s);
                    *s = abs;
                }
            }
        }
        (c, errors)
    }

    /// Parse the variables of [`VARS`] read through `get`. Unset and empty variables keep
    /// their defaults; a value that breaks its variable's rule keeps the default too and
    /// is reported, one error per variable.
    pub fn parse(get: impl Fn(&str) -> Option<OsString>) -> (Config, Vec<ConfigError>) {
        use crate::atomic::protocol::Policy;
        use crate::persist::{FlushKind, NtKind};
        let mut c = Config::default();
        let mut r = Reader {
            get,
            errors: Vec::new(),
        };
        if let Some(p) = r.take("FLEX_PATHS", parse_paths) {
            c.paths = p;
        }
        c.stats = r.take("FLEX_STATS", |v| Ok(v.as_bytes().to_vec()));
        let levels = [
            ("off", LogLevel::Off),
            ("info", LogLevel::Info),
            ("debug", LogLevel::Debug),
            ("0", LogLevel::Off),
            ("1", LogLevel::Info),
            ("2", LogLevel::Debug),
        ];
        if let Some(l) = r.take("FLEX_LOG", |v| parse_word(v, "a log level", &levels)) {
            c.log = l;
        }
        if let Some(n) = r.take("FLEX_ADOPT_AFTER", |v| parse_count(v, u32::MAX.into())) {
            c.adopt_after = n as u32;
        }
        if let Some(n) = r.take("FLEX_POPULATE_MAX", parse_size) {
            c.populate_max = n;
        }
        if let Some(v) = r.take("FLEX_IDLE_UNMAP", parse_secs) {
            c.idle_unmap = v;
        }
        if let Some(v) = r.take("FLEX_IDLE_BYTES", parse_size) {
            c.idle_bytes = v;
        }
        if let Some(n) = r.take("FLEX_MAP_CACHE", |v| parse_count(v, usize::MAX as u64)) {
            c.map_cache = n as usize;
        }
        // Rounded up to a power of two, at least 64 KiB.
        let grow = |v: &OsStr| {
            parse_size(v)?
                .max(64 << 10)
                .checked_next_power_of_two()
                .ok_or_else(|| "too large (at most 8589934592G)".to_string())
        };
        if let Some(n) = r.take("FLEX_GROW_MIN", grow) {
            c.grow_min = n;
        }
        let modes = [("atomic", true), ("off", false)];
        if let Some(a) = r.take("FLEX_MODE", |v| parse_word(v, "a mode", &modes)) {
            c.atomic = a;
        }
        let grains = [("write", true), ("fsync", false)];
        if let Some(w) = r.take("FLEX_ATOMIC", |v| parse_word(v, "a grain", &grains)) {
            c.atomic_write = w;
        }
        // At least 64 KiB.
        if let Some(n) = r.take("FLEX_ATOMIC_LOG", parse_size) {
            c.atomic_log = n.max(64 << 10);
        }
        let ways = [("inline", true), ("background", false)];
        if let Some(i) = r.take("FLEX_ATOMIC_APPLY", |v| parse_word(v, "a way", &ways)) {
            c.atomic_apply_inline = i;
        }
        let policies = [
            ("auto", Policy::Auto),
            ("redo", Policy::Redo),
            ("undo", Policy::Undo),
        ];
        if let Some(p) = r.take("FLEX_ATOMIC_POLICY", |v| {
            parse_word(v, "a policy", &policies)
        }) {
            c.atomic_policy = p;
        }
        let switch = [("1", true), ("0", false)];
        if let Some(d) = r.take("FLEX_DISABLE", |v| parse_word(v, "a switch", &switch)) {
            c.disabled = d;
        }
        if let Some(on) = r.take("FLEX_SNAPSHOTS", |v| parse_word(v, "a switch", &switch)) {
            c.no_snapshots = !on;
        }
        // Read by `persist` itself; checked here so that a typo is reported.
        let kinds = NtKind::ALL.map(NtKind::as_str);
        r.take("FLEX_CPU", |v| {
            parse_name_nocase(v, "a copy kernel", &kinds)
        });
        let kinds = FlushKind::ALL.map(FlushKind::as_str);
        r.take("FLEX_FLUSH", |v| {
            parse_name_nocase(v, "a flush instruction", &kinds)
        });
        (c, r.errors)
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

    fn parse(vars: &[(&str, &str)]) -> (Config, Vec<String>) {
        let (c, e) = Config::parse(|k| {
            vars.iter()
                .find(|(n, _)| *n == k)
                .map(|(_, v)| OsString::from(v))
        });
        (c, e.iter().map(|e| e.to_string()).collect())
    }

    /// The scan agrees with the definition (split on `/`, no empty, `.` or `..` name) on
    /// every path of up to 8 bytes over `/`, `.` and a letter.
    #[test]
    fn is_normal_is_the_definition() {
        fn by_definition(p: &[u8]) -> bool {
            p == b"/"
                || (p.first() == Some(&b'/')
                    && p[1..]
                        .split(|&b| b == b'/')
                        .all(|c| !matches!(c, b"" | b"." | b"..")))
        }
        let mut paths: Vec<Vec<u8>> = vec![Vec::new()];
        for _ in 0..8 {
            let next: Vec<Vec<u8>> = paths
                .iter()
                .flat_map(|p| {
                    [b'/', b'.', b'a'].map(|c| {
                        let mut q = p.clone();
                        q.push(c);
                        q
                    })
                })
                .collect();
            for p in &next {
                assert_eq!(
                    is_normal(p),
                    by_definition(p),
                    "{:?}",
                    String::from_utf8_lossy(p)
                );
            }
            paths = next;
        }
    }

    #[test]
    fn normalizes_and_matches_prefixes() {
        assert_eq!(&*normalize(b"/a//b/./c/../d"), b"/a/b/d");
        assert_eq!(&*normalize(b"/.."), b"/");
        for p in [&b"/"[..], b"/a", b"/a/b.c/.d/..e"] {
            assert!(
                matches!(normalize(p), std::borrow::Cow::Borrowed(_)),
                "{p:?}"
            );
            assert_eq!(&*normalize(p), p);
        }
        for (p, n) in [
            (&b"/a/"[..], &b"/a"[..]),
            (b"/a/.", b"/a"),
            (b"//a", b"/a"),
            (b"/a/b/..", b"/a"),
        ] {
            assert_eq!(&*normalize(p), n, "{p:?}");
        }
        let c = Config {
            paths: vec![b"/dev/shm/x".to_vec()],
            ..Config::default()
        };
        assert!(c.path_managed(b"/dev/shm/x/f"));
        assert!(c.path_managed(b"/dev/shm/x"));
        assert!(!c.path_managed(b"/dev/shm/xy/f"));
        assert!(!c.path_managed(b"/dev/shm"));
        assert_eq!(parse_size(OsStr::new("4k")), Ok(4096));
        assert_eq!(parse_size(OsStr::new("2M")), Ok(2 << 20));
        assert!(parse_size(OsStr::new("x")).is_err());
        assert!(parse_size(OsStr::new("k")).is_err());
        assert!(parse_size(OsStr::new("-1")).is_err());
        assert!(parse_size(OsStr::new("99999999999G")).is_err());
    }

    #[test]
    fn vars_are_readme_environment_table() {
        let readme = include_str!("../../../README.md");
        let mut documented: Vec<&str> = readme
            .lines()
            .filter(|l| l.starts_with("| `FLEX_"))
            .flat_map(|l| l.split('|').nth(1).unwrap_or("").split('`'))
            .filter(|w| w.starts_with("FLEX_") && *w != "FLEX_LIB")
            .collect();
        documented.sort_unstable();
        let mut vars: Vec<&str> = VARS.iter().map(|v| v.0).collect();
        vars.sort_unstable();
        assert_eq!(
            vars, documented,
            "VARS and README's Environment table (FLEX_LIB is flexio's)"
        );
    }

    #[test]
    fn valid_values_are_taken() {
        let (c, e) = parse(&[
            ("FLEX_PATHS", "/a/../b::/c/"),
            ("FLEX_LOG", "info"),
            ("FLEX_ADOPT_AFTER", "0"),
            ("FLEX_GROW_MIN", "100k"),
            ("FLEX_MODE", "atomic"),
            ("FLEX_ATOMIC", "write"),
            ("FLEX_ATOMIC_LOG", "1k"),
            ("FLEX_ATOMIC_APPLY", "background"),
            ("FLEX_ATOMIC_POLICY", "undo"),
            ("FLEX_DISABLE", ""),
            ("FLEX_CPU", "AVX2"),
            ("FLEX_FLUSH", "clwb"),
        ]);
        assert!(e.is_empty(), "{e:?}");
        assert_eq!(c.paths, vec![b"/b".to_vec(), b"/c".to_vec()]);
        assert_eq!(c.log, LogLevel::Info);
        assert_eq!(c.adopt_after, 0);
        assert_eq!(c.grow_min, 128 << 10);
        assert!(c.atomic && c.atomic_write && !c.atomic_apply_inline && !c.disabled);
        assert_eq!(c.atomic_log, 64 << 10);
        assert_eq!(c.atomic_policy, crate::atomic::protocol::Policy::Undo);
    }

    #[test]
    fn broken_values_are_reported_and_keep_the_default() {
        let (c, e) = parse(&[
            ("FLEX_GROW_MIN", "abc"),
            ("FLEX_MODE", "bogus"),
            ("FLEX_PATHS", "/ok:rel/dir"),
            ("FLEX_MAP_CACHE", "1k"),
            ("FLEX_LOG", "loud\n"),
        ]);
        let d = Config::default();
        assert_eq!(
            (c.grow_min, c.atomic, c.map_cache),
            (d.grow_min, false, d.map_cache)
        );
        assert!(c.paths.is_empty());
        assert_eq!(
            e,
            [
                "FLEX_PATHS=/ok:rel/dir: `rel/dir` is not an absolute path (use colon-separated absolute paths)",
                "FLEX_LOG=loud\\n: not a log level (use off, info, debug, 0, 1 or 2)",
                "FLEX_MAP_CACHE=1k: not a count (use a whole number)",
                "FLEX_GROW_MIN=abc: not a size (use a number with an optional k/M/G suffix)",
                "FLEX_MODE=bogus: not a mode (use atomic or off)",
            ]
        );
        assert_eq!(
            parse_secs(OsStr::new("0.001")),
            Ok(std::time::Duration::from_millis(1))
        );
        assert!(parse_secs(OsStr::new("-1")).is_err());
    }
}
