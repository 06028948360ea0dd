//! Bad configuration is loud: `flexio run` refuses a `FLEX_*` variable whose value breaks
//! its rule, libflex.so (preloaded by hand) warns once per such variable and uses the
//! default, a relative `FLEX_STATS` names one file whatever directories the program
//! visits, and `flexio stats` fails on a file that is not statistics.
//!
//! Needs python3 and coreutils. Build the workspace first (libflex.so).

#[path = "common/run.rs"]
mod run;

use run::*;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

/// Variable, broken value, the reason flex gives, the default flex uses instead.
#[rustfmt::skip]
const BAD: &[(&str, &str, &str, &str)] = &[
    ("FLEX_PATHS", "/tmp:rel/dir", "`rel/dir` is not an absolute path (use colon-separated absolute paths)", "none"),
    ("FLEX_LOG", "verbose", "not a log level (use off, info, debug, 0, 1 or 2)", "off"),
    ("FLEX_ADOPT_AFTER", "two", "not a count (use a whole number)", "2"),
    ("FLEX_POPULATE_MAX", "12Q", "not a size (use a number with an optional k/M/G suffix)", "4G"),
    ("FLEX_MAP_CACHE", "-1", "not a count (use a whole number)", "16384"),
    ("FLEX_GROW_MIN", "abc", "not a size (use a number with an optional k/M/G suffix)", "1M"),
    ("FLEX_MODE", "bogus", "not a mode (use atomic or off)", "off"),
    ("FLEX_ATOMIC", "each", "not a grain (use write or fsync)", "fsync"),
    ("FLEX_ATOMIC_LOG", "1T", "not a size (use a number with an optional k/M/G suffix)", "16M"),
    ("FLEX_ATOMIC_APPLY", "later", "not a way (use inline or background)", "inline"),
    ("FLEX_ATOMIC_POLICY", "both", "not a policy (use auto, redo or undo)", "auto"),
    ("FLEX_DISABLE", "yes", "not a switch (use 1 or 0)", "0"),
    ("FLEX_CPU", "neon", "not a copy kernel (use sse2, avx2 or avx512)", "detected"),
    ("FLEX_FLUSH", "sfence", "not a flush instruction (use clflush, clflushopt or clwb)", "detected"),
];

/// A command with none of the FLEX_* variables of the test's own environment.
fn clean(prog: impl AsRef<std::ffi::OsStr>, cwd: &Path) -> Command {
    let mut c = Command::new(prog);
    c.current_dir(cwd).env_remove("LD_PRELOAD");
    for (k, _) in std::env::vars_os() {
        if k.to_str()
            .is_some_and(|k| k.starts_with("FLEX_") && k != "FLEX_LIB")
        {
            c.env_remove(k);
        }
    }
    c
}

fn output(mut c: Command) -> Output {
    c.stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {c:?}: {e}"))
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// The python interpreter itself (`python3` may be a shell-script shim, whose shells would
/// be processes of their own under the preload).
fn python() -> PathBuf {
    require("python3", "python3");
    let o = output({
        let mut c = Command::new("python3");
        c.args(["-c", "import sys; print(sys.executable)"]);
        c
    });
    assert!(o.status.success(), "python3: {}", text(&o.stderr));
    PathBuf::from(text(&o.stdout).trim())
}

fn libflex() -> PathBuf {
    flexio().with_file_name("libflex.so")
}

#[test]
fn flexio_run_refuses_each_bad_variable() {
    let t = TestDir::new("cfg-run");
    for &(var, value, reason, _) in BAD {
        let mut c = clean(flexio(), &t.path);
        c.args(["run", "--", "touch", "ran"]).env(var, value);
        let o = output(c);
        let err = text(&o.stderr);
        assert_eq!(
            o.status.code(),
            Some(2),
            "{var}={value}: {:?}\n{err}",
            o.status
        );
        assert!(
            err.contains(&format!("flexio: {var}={value}: {reason}\n")),
            "{var}={value}: {err}"
        );
        assert!(!t.join("ran").exists(), "{var}={value}: the program ran");
    }
    // All at once: one line for each.
    let mut c = clean(flexio(), &t.path);
    c.args(["run", "--", "touch", "ran"]);
    for &(var, value, _, _) in BAD {
        c.env(var, value);
    }
    let o = output(c);
    let err = text(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{err}");
    for &(var, value, reason, _) in BAD {
        let line = format!("flexio: {var}={value}: {reason}");
        assert_eq!(
            err.lines().filter(|l| *l == line).count(),
            1,
            "{line}\n{err}"
        );
    }
    assert_eq!(err.lines().count(), BAD.len() + 1, "{err}");
    assert!(!t.join("ran").exists());
    // Valid spellings (and empty values) run.
    let mut c = clean(flexio(), &t.path);
    c.args(["run", "--", "touch", "ran"]);
    for (var, value) in [
        ("FLEX_MODE", "off"),
        ("FLEX_DISABLE", "0"),
        ("FLEX_ATOMIC", "fsync"),
        ("FLEX_ATOMIC_APPLY", "inline"),
        ("FLEX_LOG", ""),
        ("FLEX_GROW_MIN", "2M"),
        ("FLEX_CPU", "SSE2"),
    ] {
        c.env(var, value);
    }
    let o = output(c);
    assert!(o.status.success(), "{:?}: {}", o.status, text(&o.stderr));
    assert!(t.join("ran").exists());
}

#[test]
fn libflex_warns_once_per_bad_variable_and_uses_the_default() {
    let t = TestDir::new("cfg-preload");
    std::fs::write(t.join("f"), b"hello\n".repeat(1000)).unwrap();
    let stats = t.join("stats.json");
    // Many opens and reads in one process, and a child that execs cat: each process
    // warns once (the forked child shares its parent's engine until it execs).
    let script = r#"
import os
for i in range(20):
    # Unbuffered, 600 bytes a call: more calls than FLEX_ADOPT_AFTER, so flex serves.
    with open("f", "rb", buffering=0) as f:
        assert b"".join(iter(lambda: f.read(600), b"")) == b"hello\n" * 1000
pid = os.fork()
if pid == 0:
    os.dup2(os.open("/dev/null", os.O_WRONLY), 1)
    os.execv("/bin/cat", ["cat", "f"])
_, status = os.waitpid(pid, 0)
assert status == 0, status
print("ok")
"#;
    let mut c = clean(python(), &t.path);
    c.args(["-c", script])
        .env("LD_PRELOAD", libflex())
        .env("FLEX_STATS", &stats);
    for &(var, value, _, _) in BAD {
        if var != "FLEX_PATHS" {
            c.env(var, value);
        }
    }
    c.env("FLEX_PATHS", &t.path);
    let o = output(c);
    let err = text(&o.stderr);
    assert!(o.status.success(), "{:?}\n{err}", o.status);
    assert_eq!(text(&o.stdout), "ok\n");
    let st = Stats::load(&stats);
    let pids: std::collections::BTreeSet<u64> = st
        .procs
        .iter()
        .map(|p| p["pid"].as_u64().unwrap())
        .collect();
    assert_eq!(pids.len(), 2, "{}", st.dump());
    for &(var, value, reason, default) in BAD.iter().filter(|b| b.0 != "FLEX_PATHS") {
        for pid in &pids {
            let line = format!(
                "flex[{pid}]: warning: {var}={value}: {reason}; using the default ({default})"
            );
            assert_eq!(
                err.lines().filter(|l| *l == line).count(),
                1,
                "{line}\n{err}"
            );
        }
    }
    assert_eq!(err.lines().count(), 2 * (BAD.len() - 1), "{err}");
    // The defaults are in use: the engine is on (FLEX_DISABLE=yes is not 1), serves reads.
    st.assert_served(&["read"], "f");
    // A relative entry in FLEX_PATHS: the warning, and no path is managed (the default).
    let mut c = clean("cat", &t.path);
    c.arg("f")
        .env("LD_PRELOAD", libflex())
        .env("FLEX_PATHS", format!("{}:rel/dir", t.path.display()))
        .env("FLEX_STATS", &stats);
    let _ = std::fs::remove_file(&stats);
    let o = output(c);
    let err = text(&o.stderr);
    assert!(o.status.success(), "{:?}\n{err}", o.status);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.contains(&format!(
            "warning: FLEX_PATHS={}:rel/dir: `rel/dir` is not an absolute path (use \
             colon-separated absolute paths); using the default (none)",
            t.path.display()
        )),
        "{err}"
    );
    let st = Stats::load(&stats);
    assert!(!st.has_file("f"), "{}", st.dump());
}

/// Files named `name` below `root`.
fn find(root: &Path, name: &str) -> Vec<PathBuf> {
    tree(root)
        .into_keys()
        .filter(|p| p.file_name().is_some_and(|n| n == name))
        .collect()
}

#[test]
fn relative_flex_stats_is_one_file() {
    let t = TestDir::new("cfg-stats");
    std::fs::write(t.join("f"), b"data\n".repeat(4000)).unwrap();
    t.sub("a");
    t.sub("b");
    // Processes in two other directories, under `flexio run`: the relative name from the
    // environment, then from --stats-file.
    let sh = "cd a && cat ../f ../f >/dev/null && cd ../b && cat ../f ../f >/dev/null";
    for how in ["env", "option"] {
        let mut c = clean(flexio(), &t.path);
        // Map at the first read: each cat reads the small file once (then EOF).
        c.env("FLEX_ADOPT_AFTER", "0");
        c.arg("run").arg("--paths").arg(&t.path);
        if how == "env" {
            c.env("FLEX_STATS", "s.json");
        } else {
            c.args(["--stats-file", "s.json"]);
        }
        c.args(["--", "sh", "-c", sh]);
        let o = output(c);
        assert!(
            o.status.success(),
            "{how}: {:?} {}",
            o.status,
            text(&o.stderr)
        );
        assert_eq!(find(&t.path, "s.json"), [PathBuf::from("s.json")], "{how}");
        let st = Stats::load(&t.join("s.json"));
        assert!(st.procs.len() >= 2, "{how}: {}", st.dump());
        st.assert_served(&["read"], "f");
        std::fs::remove_file(t.join("s.json")).unwrap();
    }
    // libflex.so preloaded by hand: resolved against the directory of the engine's start.
    let script = r#"
import os
open("f", "rb").read()
os.chdir("a")
open("../f", "rb").read()
"#;
    let mut c = clean(python(), &t.path);
    c.args(["-c", script])
        .env("LD_PRELOAD", libflex())
        .env("FLEX_PATHS", &t.path)
        .env("FLEX_ADOPT_AFTER", "0")
        .env("FLEX_STATS", "s.json");
    let o = output(c);
    assert!(o.status.success(), "{:?} {}", o.status, text(&o.stderr));
    assert_eq!(find(&t.path, "s.json"), [PathBuf::from("s.json")]);
    Stats::load(&t.join("s.json")).assert_served(&["read"], "f");
}

#[test]
fn flexio_stats_fails_on_what_is_not_statistics() {
    let t = TestDir::new("cfg-statsfile");
    std::fs::write(t.join("empty"), b"").unwrap();
    std::fs::write(t.join("blank"), b"\n\n  \n").unwrap();
    std::fs::write(t.join("binary"), noise(4096, 7)).unwrap();
    std::fs::write(t.join("text"), b"hello world\n").unwrap();
    std::fs::write(t.join("json"), b"{\"a\": 1}\n").unwrap();
    std::fs::write(t.join("number"), b"17\n").unwrap();
    t.sub("dir");
    for (name, reason) in [
        ("missing", "cannot read"),
        ("dir", "cannot read"),
        ("empty", "is empty"),
        ("blank", "is empty"),
        ("binary", "not a FLEX_STATS file (not text)"),
        ("text", ":1: not a FLEX_STATS record"),
        (
            "json",
            ":1: not a FLEX_STATS record (no pid, served or passthrough)",
        ),
        (
            "number",
            ":1: not a FLEX_STATS record (no pid, served or passthrough)",
        ),
    ] {
        let mut c = clean(flexio(), &t.path);
        c.args(["stats", name]);
        let o = output(c);
        let (out, err) = (text(&o.stdout), text(&o.stderr));
        assert_eq!(
            o.status.code(),
            Some(1),
            "{name}: {:?} {out} {err}",
            o.status
        );
        assert!(!out.contains("used FLEX"), "{name}: {out}");
        assert!(
            err.starts_with("flexio: ") && err.contains(reason),
            "{name}: {err}"
        );
    }
    // A real one.
    std::fs::write(t.join("f"), b"x".repeat(100_000)).unwrap();
    let mut c = clean(flexio(), &t.path);
    c.args(["run", "--stats-file", "real", "--", "cat", "f"]);
    let o = output(c);
    assert!(o.status.success(), "{}", text(&o.stderr));
    let mut c = clean(flexio(), &t.path);
    c.args(["stats", "real"]);
    let o = output(c);
    assert!(o.status.success(), "{}", text(&o.stderr));
    assert!(text(&o.stdout).starts_with("flexio: 1 process(es) used FLEX\n"));
}
