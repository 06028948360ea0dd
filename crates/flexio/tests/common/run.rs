//! Helpers for the real-program and process tests: the flexio binary and libflex.so,
//! per-test directories on tmpfs, running a command with and without FLEX, parsing
//! FLEX_STATS, and a small C helper compiled at test time.
#![allow(dead_code)]

use serde_json::Value;
use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;

/// The flexio binary, after checking that libflex.so sits beside it. Both come from other
/// packages (flexio-cli, flex-preload), so cargo gives no CARGO_BIN_EXE_ path: they are
/// in the target directory this test executable runs from (`target/<profile>/deps/..`).
pub fn flexio() -> PathBuf {
    let me = std::env::current_exe().expect("the test executable's path");
    let dir = me
        .parent()
        .and_then(Path::parent)
        .expect("test executable in target/<profile>/deps");
    let exe = dir.join("flexio");
    assert!(
        exe.is_file(),
        "{} is missing: run `cargo build --workspace` first (the tests drive the flexio \
         command, package flexio-cli, which `cargo test -p flexio` does not build)",
        exe.display()
    );
    if std::env::var_os("FLEX_LIB").is_none() {
        let lib = exe.with_file_name("libflex.so");
        assert!(
            lib.exists(),
            "{} is missing: run `cargo build --workspace` first (the tests run programs \
             under libflex.so, which `cargo test -p flexio` does not build)",
            lib.display()
        );
    }
    exe
}

/// The libflex.so to preload: `FLEX_LIB`, or the one [`flexio`] found beside the binary.
pub fn libflex() -> PathBuf {
    std::env::var_os("FLEX_LIB")
        .map(PathBuf::from)
        .unwrap_or_else(|| flexio().with_file_name("libflex.so"))
}

/// Fail (never skip) when a program the test needs is missing.
pub fn require(prog: &str, package: &str) {
    let found = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join(prog).is_file()))
        .unwrap_or(false);
    assert!(
        found,
        "`{prog}` is not installed: install the Debian package `{package}` \
         (apt-get install {package}); CI installs it through scripts/deps"
    );
}

/// A fresh directory for one test, on tmpfs (/dev/shm) unless FLEX_TEST_DIR says otherwise.
/// Removed on drop.
pub struct TestDir {
    pub path: PathBuf,
}

impl TestDir {
    pub fn new(name: &str) -> TestDir {
        let base = std::env::var_os("FLEX_TEST_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from("/dev/shm"));
        let path = base.join(format!("flex-{name}-{}-{}", std::process::id(), unique()));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).expect("create test dir");
        TestDir { path }
    }
    /// A subdirectory, created.
    pub fn sub(&self, name: &str) -> PathBuf {
        let p = self.path.join(name);
        std::fs::create_dir_all(&p).expect("create subdir");
        p
    }
    pub fn join(&self, name: &str) -> PathBuf {
        self.path.join(name)
    }
}

impl Drop for TestDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

fn unique() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    N.fetch_add(1, Ordering::Relaxed)
}

/// Statistics of every process of one `flexio run` (one JSON line each).
#[derive(Debug, Default)]
pub struct Stats {
    pub procs: Vec<Value>,
}

impl Stats {
    pub fn load(path: &Path) -> Stats {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        let procs = text
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("bad stats line {l}: {e}")))
            .collect();
        Stats { procs }
    }
    fn sum(&self, section: &str, call: &str) -> u64 {
        self.procs
            .iter()
            .map(|p| p[section][call].as_u64().unwrap_or(0))
            .sum()
    }
    /// Calls of this name served by flex, over all processes.
    pub fn served(&self, call: &str) -> u64 {
        self.sum("served", call)
    }
    pub fn passed(&self, call: &str) -> u64 {
        self.sum("passthrough", call)
    }
    /// Fallbacks with this reason (its text), over all processes.
    pub fn fallbacks(&self, why: &str) -> u64 {
        self.sum("fallbacks", why)
    }
    /// A top-level counter (`maps`, `adoptions`, ...), over all processes.
    pub fn counter(&self, key: &str) -> u64 {
        self.procs
            .iter()
            .map(|p| p[key].as_u64().unwrap_or(0))
            .sum()
    }
    pub fn bytes_read(&self) -> u64 {
        self.procs
            .iter()
            .map(|p| p["bytes_read"].as_u64().unwrap_or(0))
            .sum()
    }
    pub fn bytes_written(&self) -> u64 {
        self.procs
            .iter()
            .map(|p| p["bytes_written"].as_u64().unwrap_or(0))
            .sum()
    }
    /// Is a file whose path ends with `name` listed as mapped by some process?
    pub fn has_file(&self, name: &str) -> bool {
        self.files().iter().any(|f| {
            f == name
                || f.ends_with(&format!("/{name}"))
                || Path::new(f).file_name() == Some(OsStr::new(name))
        })
    }
    pub fn files(&self) -> Vec<String> {
        self.procs
            .iter()
            .filter_map(|p| p["files"].as_object())
            .flat_map(|o| o.keys().cloned())
            .collect()
    }
    /// On a file system flex never maps (`FLEX_TEST_UNMAPPED=1`, set by scripts/fs-matrix
    /// for overlayfs and FUSE), flex leaves the files to the kernel on purpose, with the
    /// reason in stats: then there is nothing served to check.
    fn left_to_kernel(&self) -> bool {
        if std::env::var_os("FLEX_TEST_UNMAPPED").is_none_or(|v| v != "1") {
            return false;
        }
        // (A test on a file system of its own, a small tmpfs, is served as anywhere.)
        let d = self.dump();
        ["overlayfs:", "FUSE:", "network file system:"]
            .iter()
            .any(|r| d.contains(r))
    }
    /// Assert that flex served reads (or writes) and mapped `file`.
    pub fn assert_served(&self, calls: &[&str], file: &str) {
        if self.left_to_kernel() {
            return;
        }
        let n: u64 = calls.iter().map(|c| self.served(c)).sum();
        assert!(
            n > 0,
            "flex served none of {calls:?}; stats: {}",
            self.dump()
        );
        assert!(
            self.has_file(file),
            "{file} is not among the files flex mapped; stats: {}",
            self.dump()
        );
    }
    /// A file the program only extended (an output written front to back): off DAX the
    /// kernel extends files, so flex never maps it (DaxVM's lesson: a mapping that serves
    /// nothing only costs), and its writes are the kernel's: handed over by flex, or made
    /// through a descriptor that stayed lazy (written at its end, never taken over).
    pub fn assert_extended_by_kernel(&self, file: &str) {
        if self.left_to_kernel() {
            return;
        }
        let passed = self.passed("write") + self.passed("pwrite");
        let lazy: u64 = self
            .procs
            .iter()
            .filter_map(|p| p["fallbacks"].as_object())
            .flat_map(|f| f.iter())
            .filter(|(k, _)| k.starts_with("lazy:"))
            .filter_map(|(_, v)| v.as_u64())
            .sum();
        assert!(
            passed > 0 || lazy > 0,
            "flex saw no write of {file}; stats: {}",
            self.dump()
        );
        assert!(
            !self.has_file(file),
            "{file}, only ever extended, was mapped; stats: {}",
            self.dump()
        );
    }
    /// Assert that some process mapped `file` (flex managed it).
    pub fn assert_mapped(&self, file: &str) {
        if self.left_to_kernel() {
            return;
        }
        assert!(
            self.has_file(file),
            "{file} is not among the files flex mapped; stats: {}",
            self.dump()
        );
    }
    pub fn dump(&self) -> String {
        self.procs
            .iter()
            .map(|p| p.to_string())
            .collect::<Vec<_>>()
            .join("\n")
    }
}

/// One run of a program: its output, plus FLEX's statistics when run under flex.
pub struct Ran {
    pub out: Output,
    pub stats: Stats,
}

impl Ran {
    pub fn stdout(&self) -> &[u8] {
        &self.out.stdout
    }
    pub fn code(&self) -> Option<i32> {
        self.out.status.code()
    }
    pub fn assert_ok(&self, what: &str) -> &Ran {
        assert!(
            self.out.status.success(),
            "{what} failed: {:?}\nstdout: {}\nstderr: {}",
            self.out.status,
            String::from_utf8_lossy(&self.out.stdout),
            String::from_utf8_lossy(&self.out.stderr)
        );
        self
    }
}

/// How to run a program: in `cwd`, with optional stdin bytes and extra environment.
#[derive(Clone, Default)]
pub struct Spec {
    pub prog: String,
    pub args: Vec<String>,
    pub cwd: PathBuf,
    pub stdin: Option<Vec<u8>>,
    pub env: Vec<(String, String)>,
}

impl Spec {
    pub fn new(prog: &str, args: &[&str], cwd: &Path) -> Spec {
        Spec {
            prog: prog.into(),
            args: args.iter().map(|s| s.to_string()).collect(),
            cwd: cwd.to_path_buf(),
            ..Spec::default()
        }
    }
    pub fn stdin(mut self, b: &[u8]) -> Spec {
        self.stdin = Some(b.to_vec());
        self
    }
    pub fn env(mut self, k: &str, v: &str) -> Spec {
        self.env.push((k.into(), v.into()));
        self
    }
    /// The same program in another directory.
    pub fn in_dir(&self, cwd: &Path) -> Spec {
        let mut s = self.clone();
        s.cwd = cwd.to_path_buf();
        s
    }
}

fn finish(mut c: Command, stdin: Option<&[u8]>) -> Output {
    c.stdout(Stdio::piped()).stderr(Stdio::piped());
    c.stdin(if stdin.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    });
    let mut child = c
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {c:?}: {e}"));
    if let Some(b) = stdin {
        let mut w = child.stdin.take().expect("stdin pipe");
        let b = b.to_vec();
        std::thread::spawn(move || {
            use std::io::Write;
            let _ = w.write_all(&b);
        });
    }
    child.wait_with_output().expect("wait for child")
}

/// The first line a child writes to its piped stdout (a "ready" handshake).
pub fn first_line(out: &mut impl std::io::Read) -> String {
    let mut line = String::new();
    std::io::BufRead::read_line(&mut std::io::BufReader::new(out), &mut line)
        .expect("read the child's first line");
    line
}

/// Run without flex.
pub fn plain(s: &Spec) -> Ran {
    let mut c = Command::new(&s.prog);
    c.args(&s.args).current_dir(&s.cwd).env_remove("LD_PRELOAD");
    for (k, v) in &s.env {
        c.env(k, v);
    }
    Ran {
        out: finish(c, s.stdin.as_deref()),
        stats: Stats::default(),
    }
}

/// Run under `flexio run --paths <paths> --stats-file <tmp>`; the statistics are parsed.
pub fn flex(s: &Spec, paths: &[&Path]) -> Ran {
    let stats = std::env::temp_dir().join(format!(
        "flex-test-stats-{}-{}.json",
        std::process::id(),
        unique()
    ));
    let _ = std::fs::remove_file(&stats);
    let mut c = Command::new(flexio());
    c.arg("run");
    for p in paths {
        c.arg("--paths").arg(p);
    }
    c.arg("--stats-file")
        .arg(&stats)
        .arg("--")
        .arg(&s.prog)
        .args(&s.args)
        .current_dir(&s.cwd);
    for (k, v) in &s.env {
        c.env(k, v);
    }
    let out = finish(c, s.stdin.as_deref());
    let st = Stats::load(&stats);
    let _ = std::fs::remove_file(&stats);
    Ran { out, stats: st }
}

/// Assert two runs ended alike: same exit code and same stdout bytes.
pub fn assert_same_output(what: &str, a: &Ran, b: &Ran) {
    assert_eq!(
        a.out.status.code(),
        b.out.status.code(),
        "{what}: exit codes differ (plain {:?}, flex {:?})\nplain stderr: {}\nflex stderr: {}",
        a.out.status,
        b.out.status,
        String::from_utf8_lossy(&a.out.stderr),
        String::from_utf8_lossy(&b.out.stderr)
    );
    if a.out.stdout != b.out.stdout {
        panic!(
            "{what}: stdout differs ({} vs {} bytes); first difference at {:?}\nflex stderr: {}",
            a.out.stdout.len(),
            b.out.stdout.len(),
            first_diff(&a.out.stdout, &b.out.stdout),
            String::from_utf8_lossy(&b.out.stderr)
        );
    }
}

pub fn first_diff(a: &[u8], b: &[u8]) -> Option<usize> {
    a.iter()
        .zip(b)
        .position(|(x, y)| x != y)
        .or(if a.len() != b.len() {
            Some(a.len().min(b.len()))
        } else {
            None
        })
}

/// Assert two files hold the same bytes.
pub fn assert_same_file(a: &Path, b: &Path) {
    let x = std::fs::read(a).unwrap_or_else(|e| panic!("read {}: {e}", a.display()));
    let y = std::fs::read(b).unwrap_or_else(|e| panic!("read {}: {e}", b.display()));
    if x != y {
        panic!(
            "{} ({} bytes) and {} ({} bytes) differ; first difference at {:?}",
            a.display(),
            x.len(),
            b.display(),
            y.len(),
            first_diff(&x, &y)
        );
    }
}

/// Relative path -> bytes of every regular file below `root` (and directories as None).
pub fn tree(root: &Path) -> std::collections::BTreeMap<PathBuf, Option<Vec<u8>>> {
    let mut out = std::collections::BTreeMap::new();
    fn walk(root: &Path, d: &Path, out: &mut std::collections::BTreeMap<PathBuf, Option<Vec<u8>>>) {
        for e in std::fs::read_dir(d).expect("read_dir") {
            let e = e.expect("dir entry");
            let p = e.path();
            let rel = p.strip_prefix(root).expect("prefix").to_path_buf();
            let ft = e.file_type().expect("file type");
            if ft.is_dir() {
                out.insert(rel, None);
                walk(root, &p, out);
            } else {
                out.insert(rel, Some(std::fs::read(&p).expect("read file")));
            }
        }
    }
    walk(root, root, &mut out);
    out
}

/// Deterministic pseudo-random bytes, reproducible from `seed` (fastrand's generator: the
/// tests that need a stream of numbers use `fastrand::Rng::with_seed` directly).
pub fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut b = vec![0u8; len];
    fastrand::Rng::with_seed(seed).fill(&mut b);
    b
}

/// A large text file: numbered lines with words, some containing "needle".
pub fn text(lines: usize) -> Vec<u8> {
    let words = [
        "alpha", "bravo", "charlie", "delta", "echo", "foxtrot", "golf", "hotel", "india",
    ];
    let mut s = String::new();
    for i in 0..lines {
        let w = words[i % words.len()];
        let v = words[(i * 7 + 3) % words.len()];
        if i % 97 == 0 {
            s += &format!("{i:08} {w} needle {v} {}\n", i * 31);
        } else {
            s += &format!("{i:08} {w} {v} haystack {}\n", i * 17 % 1013);
        }
    }
    s.into_bytes()
}

/// Kernel size of a file (stat without flex: this test process is not preloaded).
pub fn ksize(p: &Path) -> u64 {
    std::fs::metadata(p)
        .unwrap_or_else(|e| panic!("stat {}: {e}", p.display()))
        .len()
}

/// The C helper (tests/common/helper.c), compiled once per test binary with `cc`.
pub fn helper() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        require("cc", "gcc");
        let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/common/helper.c");
        let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
        // Named by the source's hash: reused while the source is unchanged.
        let text = std::fs::read(&src).expect("read helper.c");
        let hash = text.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &b| {
            (h ^ b as u64).wrapping_mul(0x100_0000_01b3)
        });
        let out = dir.join(format!("flex-helper-{hash:016x}"));
        if out.exists() {
            return out;
        }
        let tmp = dir.join(format!(
            "flex-helper-{hash:016x}.{}.tmp",
            std::process::id()
        ));
        let o = Command::new("cc")
            .args(["-O1", "-Wall", "-pthread", "-o"])
            .arg(&tmp)
            .arg(&src)
            .output()
            .expect("run cc");
        assert!(
            o.status.success(),
            "cc failed on {}: {}",
            src.display(),
            String::from_utf8_lossy(&o.stderr)
        );
        std::fs::rename(&tmp, &out).expect("rename helper");
        out
    })
    .clone()
}
