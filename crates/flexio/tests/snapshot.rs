//! Live snapshots (`flexio snapshot`): several processes under libflex.so (one forked
//! from another, one writing at its file position) rewrite a file continuously in
//! recognisable generations (tests/scripts/snap_writer.py) while snapshots are taken at
//! random moments; each must be one consistent state: every writer's pages read
//! g, ..., g, g-1, ..., g-1 and no page mixes two rounds. `cp` of the same file is the
//! negative control (the checker catches its torn copies). Refusals (a writer without
//! flex, a program mapping the file, a stranger opening it mid-copy) publish nothing, and
//! a snapshotter killed mid-copy leaves nothing and stops no writer.
//!
//! Run after `cargo build --workspace` (libflex.so).

#[path = "common/run.rs"]
mod run;

use run::{flexio, libflex, TestDir};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

const PAGE: usize = 4096;

fn writer_py() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/scripts/snap_writer.py")
}

/// One writer process (`flex`: under libflex.so managing that directory).
fn writer(
    file: &Path,
    wid: usize,
    nw: usize,
    pages: usize,
    secs: f64,
    extra: &[&str],
    flex: Option<&Path>,
) -> Child {
    let mut c = Command::new("python3");
    c.arg(writer_py())
        .arg(file)
        .args([
            wid.to_string(),
            nw.to_string(),
            pages.to_string(),
            secs.to_string(),
        ])
        .args(extra)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    if let Some(dir) = flex {
        c.env("LD_PRELOAD", libflex()).env("FLEX_PATHS", dir);
    }
    c.spawn().expect("python3")
}

/// Wait (at most 30 s) until process `pid` has `file` open, or (`mapped`) maps it: a
/// loaded machine starts python3 slowly, and a snapshot taken before it would see nothing.
fn wait_for(pid: u32, file: &Path, mapped: bool) {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(file).unwrap();
    let start = Instant::now();
    loop {
        let found = if mapped {
            std::fs::read_to_string(format!("/proc/{pid}/maps"))
                .unwrap_or_default()
                .lines()
                .any(|l| l.split_ascii_whitespace().nth(4) == Some(&m.ino().to_string()))
        } else {
            std::fs::read_dir(format!("/proc/{pid}/fd"))
                .map(|d| {
                    d.flatten().any(|e| {
                        std::fs::metadata(e.path())
                            .is_ok_and(|x| x.dev() == m.dev() && x.ino() == m.ino())
                    })
                })
                .unwrap_or(false)
        };
        if found {
            return;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "process {pid} never opened {}",
            file.display()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn finish(c: Child) -> Output {
    let out = c.wait_with_output().expect("wait");
    assert!(
        out.status.success(),
        "writer failed: {:?} {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// The generations of writer `w`'s pages, or why the image is not one state.
fn check(img: &[u8], nw: usize, pages: usize) -> Result<(), String> {
    if img.len() != pages * PAGE {
        return Err(format!("size {} != {}", img.len(), pages * PAGE));
    }
    for w in 0..nw {
        let mut gens = Vec::new();
        for p in (w..pages).step_by(nw) {
            let pg = &img[p * PAGE..(p + 1) * PAGE];
            let word = |i: usize| u32::from_le_bytes(pg[i * 4..i * 4 + 4].try_into().unwrap());
            let (id, g) = (word(0), word(1));
            if (0..1024)
                .step_by(2)
                .any(|i| word(i) != id || word(i + 1) != g)
            {
                return Err(format!("page {p} mixes two rounds"));
            }
            if g != 0 && id as usize != w {
                return Err(format!("page {p} holds writer {id}'s data"));
            }
            gens.push(g);
        }
        let first = gens[0];
        let k = gens.iter().take_while(|&&g| g == first).count();
        if gens[k..].iter().any(|&g| g.wrapping_add(1) != first) {
            return Err(format!("writer {w}: rounds {:?} are not one instant", {
                let mut s = gens.clone();
                s.dedup();
                s
            }));
        }
    }
    Ok(())
}

fn snapshot(file: &Path, to: &Path, pace_us: u64) -> Output {
    Command::new(flexio())
        .args(["snapshot"])
        .arg(file)
        .arg("--to")
        .arg(to)
        .env("FLEX_TEST_SNAPSHOT_PACE_US", pace_us.to_string())
        .output()
        .expect("flexio snapshot")
}

/// Pages the writers copied before writing, from the command's report.
fn copied_by_writers(out: &Output) -> u64 {
    let s = String::from_utf8_lossy(&out.stdout);
    s.split(", ")
        .find_map(|part| part.strip_suffix(" page(s) copied by writers"))
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no copy count in {s:?}"))
}

/// The directory holds exactly these names (no temporary of the snapshot's left).
fn assert_names(dir: &Path, want: &[&str]) {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    let mut want: Vec<String> = want.iter().map(|s| s.to_string()).collect();
    want.sort();
    assert_eq!(names, want, "files in {}", dir.display());
}

/// The file read 64 KiB at a time with a pause between chunks.
fn chunked_copy(file: &Path) -> Vec<u8> {
    use std::io::Read;
    let mut f = std::fs::File::open(file).unwrap();
    let mut img = Vec::new();
    let mut buf = vec![0u8; 16 * PAGE];
    loop {
        let n = f.read(&mut buf).unwrap();
        if n == 0 {
            return img;
        }
        img.extend_from_slice(&buf[..n]);
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// The writers of [`run_consistent`]: writer processes and the writers each one is.
enum Writers {
    /// Four: pwrite, lseek + write, and a process and its forked child on one descriptor.
    Processes,
    /// Four: three threads of one process writing at once, and one more process; each
    /// rewrites a run of pages with one call (`--span`).
    Threads,
}

/// A `--span` image: each writer's run of pages is of one round (a call is never split by
/// the instant).
fn check_spans(img: &[u8], nw: usize, pages: usize) -> Result<(), String> {
    let run = pages / nw;
    for w in 0..nw {
        let first = &img[w * run * PAGE..w * run * PAGE + 8];
        if first != [0; 8] && first[..4] != (w as u32).to_le_bytes() {
            return Err(format!("writer {w}'s pages hold another writer's data"));
        }
        for p in w * run..(w + 1) * run {
            let pg = &img[p * PAGE..(p + 1) * PAGE];
            if pg.chunks(8).any(|c| c != first) {
                return Err(format!(
                    "writer {w}: page {p} is of another round than page {}",
                    w * run
                ));
            }
        }
    }
    Ok(())
}

fn run_consistent(base: Option<&Path>) {
    run_consistent_with(base, Writers::Processes)
}

fn run_consistent_with(base: Option<&Path>, kind: Writers) {
    let td = match base {
        Some(b) => {
            let d = b.join(format!("flex-snap-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&d);
            std::fs::create_dir_all(&d).unwrap();
            TestDir { path: d }
        }
        None => TestDir::new("snap"),
    };
    let dir = td.sub("data");
    let out = td.sub("snaps");
    let file = dir.join("f");
    let (nw, pages) = (4, 768);
    std::fs::write(&file, vec![0u8; pages * PAGE]).unwrap();
    let secs = 6.0;
    let ws = match kind {
        Writers::Processes => vec![
            writer(&file, 0, nw, pages, secs, &[], Some(&dir)),
            writer(&file, 1, nw, pages, secs, &["--mode", "write"], Some(&dir)),
            // Writers 2 and 3: a process and its forked child, one descriptor.
            writer(&file, 2, nw, pages, secs, &["--fork"], Some(&dir)),
        ],
        Writers::Threads => vec![
            writer(
                &file,
                0,
                nw,
                pages,
                secs,
                &["--threads", "3", "--span"],
                Some(&dir),
            ),
            writer(&file, 3, nw, pages, secs, &["--span"], Some(&dir)),
        ],
    };
    for w in &ws {
        wait_for(w.id(), &file, false);
    }
    std::thread::sleep(Duration::from_millis(100));
    let mut rng = fastrand::Rng::with_seed(7);
    let mut copied = 0;
    let start = Instant::now();
    let mut n = 0;
    while start.elapsed() < Duration::from_secs_f64(secs - 1.5) {
        n += 1;
        let to = out.join(format!("s{n}"));
        // Every other snapshot copies slowly, so the writers race the copy.
        let r = snapshot(&file, &to, if n % 2 == 0 { 300 } else { 0 });
        assert!(
            r.status.success(),
            "snapshot {n}: {}",
            String::from_utf8_lossy(&r.stderr)
        );
        copied += copied_by_writers(&r);
        let img = std::fs::read(&to).unwrap();
        let checked = match kind {
            Writers::Processes => check(&img, nw, pages),
            Writers::Threads => check_spans(&img, nw, pages),
        };
        checked.unwrap_or_else(|e| panic!("snapshot {n} is not one state: {e}"));
        std::thread::sleep(Duration::from_millis(rng.u64(10..150)));
    }
    // The negative control: a plain copy under the same writers (read as `cp` of a large
    // file would, a chunk at a time) is caught torn.
    let mut torn = 0;
    for _ in 0..5 {
        let img = chunked_copy(&file);
        torn += match kind {
            Writers::Processes => check(&img, nw, pages),
            Writers::Threads => check_spans(&img, nw, pages),
        }
        .is_err() as u32;
    }
    for w in ws {
        finish(w);
    }
    assert!(n >= 3, "only {n} snapshots");
    assert!(
        copied > 0,
        "no writer ever copied a page before writing it ({n} snapshots)"
    );
    assert!(
        torn > 0,
        "5 plain copies under the writers all looked consistent: the check proves nothing"
    );
    let names: Vec<String> = (1..=n).map(|i| format!("s{i}")).collect();
    assert_names(&out, &names.iter().map(String::as_str).collect::<Vec<_>>());
}

#[test]
fn snapshots_of_a_file_four_flex_writers_rewrite_are_each_one_instant() {
    run::require("python3", "python3");
    run_consistent(None);
}

/// Threads of one process count their calls in flight each in its own counter: the
/// request's barrier must still see every one of them.
#[test]
fn snapshots_while_threads_of_one_process_write_are_each_one_instant() {
    run::require("python3", "python3");
    run_consistent_with(None, Writers::Threads);
}

#[test]
fn snapshots_on_ext4_are_each_one_instant() {
    run::require("python3", "python3");
    // The repository's own file system (ext4 on the CI machines), beside the target dir.
    let base = PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
    run_consistent(Some(&base));
}

#[test]
fn the_checker_catches_a_torn_image() {
    let (nw, pages) = (2, 8);
    let mut img = vec![0u8; pages * PAGE];
    let put = |img: &mut Vec<u8>, p: usize, w: u32, g: u32| {
        for i in 0..512 {
            let o = p * PAGE + i * 8;
            img[o..o + 4].copy_from_slice(&w.to_le_bytes());
            img[o + 4..o + 8].copy_from_slice(&g.to_le_bytes());
        }
    };
    for p in 0..pages {
        put(&mut img, p, (p % nw) as u32, 5);
    }
    assert_eq!(check(&img, nw, pages), Ok(()));
    put(&mut img, 0, 0, 6);
    assert_eq!(
        check(&img, nw, pages),
        Ok(()),
        "a prefix of the next round is one instant"
    );
    put(&mut img, 4, 0, 6);
    assert!(check(&img, nw, pages).is_err(), "a gap in the round");
    put(&mut img, 4, 0, 5);
    img[PAGE + 100] ^= 1;
    assert!(check(&img, nw, pages).is_err(), "a page of two rounds");
}

#[test]
fn a_writer_without_flex_is_refused_by_pid_and_nothing_is_published() {
    run::require("python3", "python3");
    let td = TestDir::new("snap-plain");
    let dir = td.sub("data");
    let file = dir.join("f");
    std::fs::write(&file, vec![0u8; 64 * PAGE]).unwrap();
    let flexed = writer(&file, 0, 2, 64, 2.0, &[], Some(&dir));
    let plain = writer(&file, 1, 2, 64, 2.0, &[], None);
    wait_for(flexed.id(), &file, false);
    wait_for(plain.id(), &file, false);
    let r = snapshot(&file, &dir.join("s"), 0);
    let err = String::from_utf8_lossy(&r.stderr);
    assert!(
        !r.status.success(),
        "a snapshot with a writer outside flex succeeded"
    );
    assert!(
        err.contains(&format!("process {} (python3)", plain.id())) && err.contains("without flex"),
        "{err}"
    );
    finish(flexed);
    finish(plain);
    assert_names(&dir, &["f"]);
}

#[test]
fn a_program_that_maps_the_file_is_refused() {
    run::require("python3", "python3");
    let td = TestDir::new("snap-map");
    let dir = td.sub("data");
    let file = dir.join("f");
    std::fs::write(&file, vec![0u8; 16 * PAGE]).unwrap();
    let script =
        "import mmap,os,sys,time\nfd=os.open(sys.argv[1],os.O_RDWR)\nm=mmap.mmap(fd,16*4096)\n\
                  end=time.time()+2\nwhile time.time()<end:\n    m[0:8]=b'abcdefgh'\n";
    let mapper = Command::new("python3")
        .args(["-c", script])
        .arg(&file)
        .env("LD_PRELOAD", libflex())
        .env("FLEX_PATHS", &dir)
        .spawn()
        .unwrap();
    wait_for(mapper.id(), &file, true);
    let r = snapshot(&file, &dir.join("s"), 0);
    let err = String::from_utf8_lossy(&r.stderr);
    assert!(!r.status.success());
    assert!(
        err.contains(&format!("process {}", mapper.id())) && err.contains("maps the file"),
        "{err}"
    );
    finish(mapper);
    assert_names(&dir, &["f"]);
}

#[test]
fn a_stranger_opening_the_file_during_the_copy_prevents_a_snapshot() {
    run::require("python3", "python3");
    let td = TestDir::new("snap-stranger");
    let dir = td.sub("data");
    let file = dir.join("f");
    let pages = 512;
    std::fs::write(&file, vec![0u8; pages * PAGE]).unwrap();
    let w = writer(&file, 0, 1, pages, 4.0, &[], Some(&dir));
    // Without flex: opens, writes a page and closes every 20 ms (never open long enough
    // for a scan of /proc to see it).
    let script = "import os,sys,time\nend=time.time()+4\nprint('go',flush=True)\nwhile time.time()<end:\n    \
                  fd=os.open(sys.argv[1],os.O_RDWR); os.pwrite(fd,b'x'*4096,0); os.close(fd); time.sleep(0.02)\n";
    let mut stranger = Command::new("python3")
        .args(["-c", script])
        .arg(&file)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    wait_for(w.id(), &file, false);
    // The stranger is running (it says so just before its first open).
    let line = run::first_line(stranger.stdout.as_mut().unwrap());
    assert_eq!(line.trim(), "go");
    // A slow copy (512 pages at 2 ms per 16) spans several of the stranger's opens.
    let r = snapshot(&file, &dir.join("s"), 2000);
    let err = String::from_utf8_lossy(&r.stderr);
    assert!(
        !r.status.success(),
        "published although a stranger wrote during the copy"
    );
    assert!(
        err.contains("may not have coordinated")
            || err.contains("during the snapshot")
            || err.contains("without flex"),
        "{err}"
    );
    finish(w);
    let _ = stranger.kill();
    let _ = stranger.wait();
    assert_names(&dir, &["f"]);
}

#[test]
fn a_snapshotter_killed_mid_copy_leaves_nothing_and_the_writers_go_on() {
    run::require("python3", "python3");
    let td = TestDir::new("snap-kill");
    let dir = td.sub("data");
    let file = dir.join("f");
    let (nw, pages) = (2, 1024);
    std::fs::write(&file, vec![0u8; pages * PAGE]).unwrap();
    let ws = vec![
        writer(&file, 0, nw, pages, 4.0, &[], Some(&dir)),
        writer(&file, 1, nw, pages, 4.0, &[], Some(&dir)),
    ];
    for w in &ws {
        wait_for(w.id(), &file, false);
    }
    std::thread::sleep(Duration::from_millis(100));
    // 64 runs of 16 pages at 20 ms each: over a second of copying.
    let mut s = Command::new(flexio())
        .arg("snapshot")
        .arg(&file)
        .arg("--to")
        .arg(dir.join("s"))
        .env("FLEX_TEST_SNAPSHOT_PACE_US", "20000")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(400));
    s.kill().unwrap();
    let _ = s.wait();
    let before = std::fs::read(&file).unwrap();
    std::thread::sleep(Duration::from_millis(300));
    assert_ne!(before, std::fs::read(&file).unwrap(), "the writers stopped");
    // Nothing at the destination. Where the file system has no O_TMPFILE (FUSE) the
    // snapshot was written under a hidden temporary name, which the next snapshot to
    // that destination removes.
    assert!(!dir.join("s").exists(), "a killed snapshotter published");
    // The writers take part in the next one as if nothing happened.
    let r = snapshot(&file, &dir.join("s"), 0);
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    check(&std::fs::read(dir.join("s")).unwrap(), nw, pages).unwrap();
    assert_names(&dir, &["f", "s"]);
    for w in ws {
        let out = finish(w);
        let rounds: u64 = String::from_utf8_lossy(&out.stdout)
            .split_whitespace()
            .nth(1)
            .and_then(|g| g.parse().ok())
            .unwrap();
        assert!(rounds >= 2, "a writer made only {rounds} round(s)");
    }
}
