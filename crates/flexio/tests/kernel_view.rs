//! What the kernel sees of a descriptor flex manages: the access mode the program asked
//! for (mmap of a write-only descriptor is EACCES, sendfile/splice/copy_file_range from it
//! EBADF), O_APPEND (splice into it EINVAL, copy_file_range into it EBADF, fdinfo and
//! F_GETFL show it), and flex's file offset (record and OFD locks with SEEK_CUR, F_GETLK,
//! lockf). `tests/scripts/kernel_view.py` prints one line per check; its output under
//! libflex.so must equal its output without it.
//!
//! Run after `cargo build --workspace` (libflex.so).

#[path = "common/run.rs"]
mod run;

use run::{flexio, TestDir};
use std::path::PathBuf;
use std::process::Command;

fn script() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/scripts/kernel_view.py")
}

fn output(dir: &std::path::Path, env: &[(&str, &str)]) -> String {
    let mut c = Command::new("python3");
    c.arg(script()).arg(dir);
    for (k, v) in env {
        c.env(k, v);
    }
    let o = c.output().expect("python3");
    assert!(
        o.status.success(),
        "kernel_view.py failed ({:?}): {}",
        env,
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8(o.stdout).unwrap()
}

#[test]
fn the_kernel_sees_the_programs_descriptor() {
    let lib = flexio().with_file_name("libflex.so");
    let lib = std::env::var("FLEX_LIB").unwrap_or_else(|_| lib.display().to_string());
    let base = TestDir::new("kview-kernel");
    let want = output(&base.path, &[]);
    for extra in [
        &[("FLEX_ADOPT_AFTER", "0")][..],
        &[][..],
        &[("FLEX_ADOPT_AFTER", "0"), ("FLEX_TEST_OVERALLOCATE", "1")][..],
    ] {
        let d = TestDir::new("kview-flex");
        let paths = d.path.display().to_string();
        let mut env = vec![("LD_PRELOAD", lib.as_str()), ("FLEX_PATHS", paths.as_str())];
        env.extend_from_slice(extra);
        let got = output(&d.path, &env);
        for (w, g) in want.lines().zip(got.lines()) {
            assert_eq!(w, g, "under flex ({extra:?})");
        }
        assert_eq!(want.lines().count(), got.lines().count());
    }
}
