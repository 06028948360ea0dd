//! The snapshotter: a point-in-time copy of a file that flex processes keep writing.
//!
//! 1. Find every process of this user that has the file open for writing (or maps it
//!    shared and writable). Each must be a flex process (it maps flex's marker memfd)
//!    whose writable descriptors of the file flex serves; anything else is refused, with
//!    the process and the reason.
//! 2. Ask each to join (a queued signal carrying this control block's descriptor). A
//!    process joins when its writes in flight are done; new ones wait.
//! 3. All joined: that is the instant. The size is read, the writers are let go, and the
//!    pages are copied; a writer that changes a page first copies its old bytes, so the
//!    snapshot is the file at the instant.
//! 4. The copy is checked (no process the snapshot did not know wrote the file: inotify
//!    saw no close of a writable descriptor of it, and no writer appeared), synced, and
//!    only then given its name: a snapshot is complete or absent.
//!
//! Processes of other users cannot be seen (their descriptors are not readable): a file
//! other users write is not covered.

use flex_engine::snapshot::control::{
    answer, state, Reason, Shared, MAP_LEN, MARKER, MAX_FDS, MAX_PAGES, MAX_SLOTS, PAGE,
};
use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering::*;
use std::time::{Duration, Instant};

/// How a snapshot is taken.
#[derive(Clone, Debug)]
pub struct Options {
    /// How long the writers have to join (their writes wait at most this long).
    pub join_timeout: Duration,
    /// Attempts when the file is opened by an unknown process during the copy.
    pub attempts: u32,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            join_timeout: Duration::from_secs(1),
            attempts: 3,
        }
    }
}

/// What a snapshot did.
#[derive(Clone, Debug)]
pub struct Report {
    pub dest: PathBuf,
    /// The file's size at the instant.
    pub size: u64,
    /// The writer processes that took part.
    pub writers: Vec<i32>,
    /// Pages the writers copied before changing them (the rest the snapshotter did).
    pub copied_by_writers: u64,
    /// From the request to the instant (the longest any write waited).
    pub join_time: Duration,
    /// The whole snapshot.
    pub elapsed: Duration,
    pub attempts: u32,
}

/// A snapshot of `file` at `dest` (replaced if it exists), while flex processes write it.
pub fn snapshot(file: &Path, dest: &Path, opts: &Options) -> io::Result<Report> {
    let started = Instant::now();
    let mut last = None;
    for attempt in 1..=opts.attempts.max(1) {
        match attempt_once(file, dest, opts) {
            Ok(mut r) => {
                r.attempts = attempt;
                r.elapsed = started.elapsed();
                return Ok(r);
            }
            Err(Failure::Retry(why)) => last = Some(why),
            Err(Failure::Fatal(e)) => return Err(e),
        }
    }
    Err(io::Error::other(format!(
        "no consistent snapshot of {} in {} attempts: {}",
        file.display(),
        opts.attempts.max(1),
        last.unwrap_or_default()
    )))
}

enum Failure {
    /// Something changed under the snapshot; another attempt may succeed.
    Retry(String),
    Fatal(io::Error),
}

impl From<io::Error> for Failure {
    fn from(e: io::Error) -> Self {
        Failure::Fatal(e)
    }
}

impl From<flex_engine::sys::Errno> for Failure {
    fn from(e: flex_engine::sys::Errno) -> Self {
        Failure::Fatal(crate::err(e))
    }
}

fn fatal(msg: String) -> Failure {
    Failure::Fatal(io::Error::other(msg))
}

fn cpath(p: &Path) -> io::Result<CString> {
    CString::new(p.as_os_str().as_bytes()).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))
}

fn cvt(r: libc::c_int) -> io::Result<libc::c_int> {
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

/// A process that holds the file for writing.
struct Holder {
    pid: i32,
    comm: String,
    /// Empty: it only maps the file shared and writable.
    write_fds: Vec<i32>,
    flex: bool,
}

fn holders(dev: u64, ino: u64) -> Vec<Holder> {
    let mut out = Vec::new();
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return out;
    };
    for ent in dir.flatten() {
        let Some(pid) = ent.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
            continue;
        };
        let mut write_fds = Vec::new();
        if let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) {
            for f in fds.flatten() {
                let Some(n) = f.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
                    continue;
                };
                let Ok(m) = std::fs::metadata(f.path()) else {
                    continue;
                };
                if m.dev() != dev || m.ino() != ino {
                    continue;
                }
                if fd_writable(pid, n) {
                    write_fds.push(n);
                }
            }
        }
        let maps = std::fs::read_to_string(format!("/proc/{pid}/maps")).unwrap_or_default();
        if write_fds.is_empty() && !maps_file_writable(&maps, dev, ino) {
            continue;
        }
        let marker = format!("/memfd:{MARKER}");
        let flex = maps.lines().any(|l| l.contains(&marker));
        let comm = std::fs::read_to_string(format!("/proc/{pid}/comm"))
            .map(|s| s.trim().to_string())
            .unwrap_or_default();
        out.push(Holder {
            pid,
            comm,
            write_fds,
            flex,
        });
    }
    out
}

/// Is descriptor `fd` of `pid` open for writing? (`flags:` in fdinfo, octal.)
fn fd_writable(pid: i32, fd: i32) -> bool {
    let info = std::fs::read_to_string(format!("/proc/{pid}/fdinfo/{fd}")).unwrap_or_default();
    let flags = info
        .lines()
        .find_map(|l| l.strip_prefix("flags:"))
        .and_then(|v| u32::from_str_radix(v.trim(), 8).ok());
    // Unknown: count it as a writer (refusing is safe, missing one is not).
    flags.is_none_or(|f| f as i32 & libc::O_ACCMODE != libc::O_RDONLY)
}

/// Does a `/proc/<pid>/maps` text hold a shared writable mapping of (dev, ino)?
fn maps_file_writable(maps: &str, dev: u64, ino: u64) -> bool {
    let want = format!("{:02x}:{:02x}", libc::major(dev), libc::minor(dev));
    maps.lines().any(|l| {
        let mut it = l.split_ascii_whitespace();
        let (_, Some(perms), _, Some(d), Some(i)) =
            (it.next(), it.next(), it.next(), it.next(), it.next())
        else {
            return false;
        };
        let p = perms.as_bytes();
        p.len() >= 4 && p[1] == b'w' && p[3] == b's' && d == want && i.parse::<u64>() == Ok(ino)
    })
}

fn alive(pid: i32) -> bool {
    // SAFETY: signal 0 only checks for existence and permission.
    unsafe { libc::kill(pid, 0) == 0 || *libc::__errno_location() == libc::EPERM }
}

/// The mapped control memfd; unmapped and closed on drop.
struct Control {
    fd: OwnedFd,
    base: *mut u8,
}

impl Control {
    fn new() -> io::Result<Control> {
        let name = CString::new("flex-snapshot-ctrl").expect("no NUL");
        // SAFETY: a plain system call with a valid name.
        let fd = cvt(unsafe { libc::memfd_create(name.as_ptr(), libc::MFD_CLOEXEC) })?;
        // SAFETY: a fresh descriptor we own.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        // SAFETY: a plain system call on our descriptor.
        cvt(unsafe { libc::ftruncate(fd.as_raw_fd(), MAP_LEN as libc::off_t) })?;
        // SAFETY: a fresh shared mapping at an address the kernel picks.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                MAP_LEN,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                fd.as_raw_fd(),
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        Ok(Control { fd, base: p.cast() })
    }
    fn shared(&self) -> Shared {
        // SAFETY: mapped with MAP_LEN bytes for the life of self, which outlives every use.
        unsafe { Shared::new(self.base) }
    }
}

impl Drop for Control {
    fn drop(&mut self) {
        // SAFETY: our own mapping; nothing uses it after drop.
        unsafe { libc::munmap(self.base.cast(), MAP_LEN) };
    }
}

/// The snapshot's file while it is written: unnamed (O_TMPFILE) where the file system
/// allows it, else a hidden temporary name that is removed on failure.
struct Dest {
    fd: std::fs::File,
    temp: Option<PathBuf>,
}

impl Dest {
    fn create(dest: &Path) -> io::Result<Dest> {
        let dir = match dest.parent() {
            Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
            _ => PathBuf::from("."),
        };
        use std::os::unix::fs::OpenOptionsExt;
        let tmp = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_TMPFILE)
            .mode(0o600)
            .open(&dir);
        match tmp {
            Ok(fd) => Ok(Dest { fd, temp: None }),
            Err(_) => {
                sweep_temps(dest);
                let path = temp_name(dest);
                let fd = std::fs::OpenOptions::new()
                    .read(true)
                    .write(true)
                    .create_new(true)
                    .mode(0o600)
                    .open(&path)?;
                Ok(Dest {
                    fd,
                    temp: Some(path),
                })
            }
        }
    }

    /// Give the complete snapshot its name (atomically replacing what was there).
    fn publish(mut self, dest: &Path) -> io::Result<()> {
        let from = match self.temp.take() {
            Some(t) => t,
            None => {
                let t = temp_name(dest);
                let src = cpath(Path::new(&format!("/proc/self/fd/{}", self.fd.as_raw_fd())))?;
                let to = cpath(&t)?;
                // SAFETY: plain system call with valid strings.
                cvt(unsafe {
                    libc::linkat(
                        libc::AT_FDCWD,
                        src.as_ptr(),
                        libc::AT_FDCWD,
                        to.as_ptr(),
                        libc::AT_SYMLINK_FOLLOW,
                    )
                })?;
                t
            }
        };
        if let Err(e) = std::fs::rename(&from, dest) {
            let _ = std::fs::remove_file(&from);
            return Err(e);
        }
        if let Some(dir) = dest.parent().filter(|d| !d.as_os_str().is_empty()) {
            if let Ok(d) = std::fs::File::open(dir) {
                let _ = d.sync_all();
            }
        }
        Ok(())
    }
}

impl Drop for Dest {
    fn drop(&mut self) {
        if let Some(t) = self.temp.take() {
            let _ = std::fs::remove_file(t);
        }
    }
}

/// Remove what a killed snapshotter left for `dest` where the file system has no
/// O_TMPFILE: its hidden temporary, whose pid no longer runs.
fn sweep_temps(dest: &Path) {
    let name = dest
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let prefix = format!(".{name}.flexsnap-");
    let dir = dest
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let n = e.file_name().to_string_lossy().into_owned();
        if let Some(pid) = n.strip_prefix(&prefix).and_then(|p| p.parse::<i32>().ok()) {
            if !alive(pid) {
                let _ = std::fs::remove_file(e.path());
            }
        }
    }
}

fn temp_name(dest: &Path) -> PathBuf {
    let name = dest
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    dest.with_file_name(format!(".{name}.flexsnap-{}", std::process::id()))
}

/// inotify on the file: every close of a writable descriptor of it while the snapshot
/// runs (the writers' own copies read through read-only descriptors). Opens cannot be
/// counted: inotify merges identical events in a row.
struct Opens {
    fd: OwnedFd,
}

impl Opens {
    fn watch(src: RawFd) -> io::Result<Opens> {
        // SAFETY: plain system calls.
        let fd = cvt(unsafe { libc::inotify_init1(libc::IN_CLOEXEC | libc::IN_NONBLOCK) })?;
        // SAFETY: a fresh descriptor we own.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        let p = cpath(Path::new(&format!("/proc/self/fd/{src}")))?;
        // SAFETY: plain system call with a valid path.
        cvt(unsafe { libc::inotify_add_watch(fd.as_raw_fd(), p.as_ptr(), libc::IN_CLOSE_WRITE) })?;
        Ok(Opens { fd })
    }
    /// Closes of writable descriptors since the watch (None: the queue overflowed).
    fn count(&self) -> Option<u64> {
        let mut n = 0u64;
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            // SAFETY: reading into our own buffer.
            let r = unsafe { libc::read(self.fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
            if r <= 0 {
                return Some(n);
            }
            let mut off = 0usize;
            while off + 16 <= r as usize {
                let mask = u32::from_ne_bytes(buf[off + 4..off + 8].try_into().ok()?);
                let len = u32::from_ne_bytes(buf[off + 12..off + 16].try_into().ok()?) as usize;
                if mask & libc::IN_Q_OVERFLOW != 0 {
                    return None;
                }
                if mask & libc::IN_CLOSE_WRITE != 0 {
                    n += 1;
                }
                off += 16 + len;
            }
        }
    }
}

/// A pause per 16 pages (a test knob: it widens the copy so writers race it).
fn pace() -> Option<Duration> {
    std::env::var("FLEX_TEST_SNAPSHOT_PACE_US")
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
        .map(Duration::from_micros)
}

fn attempt_once(file: &Path, dest: &Path, opts: &Options) -> Result<Report, Failure> {
    let src = std::fs::File::open(file)?;
    let meta = src.metadata()?;
    if !meta.file_type().is_file() {
        return Err(fatal(format!("{} is not a regular file", file.display())));
    }
    let (dev, ino) = (meta.dev(), meta.ino());
    let opens = Opens::watch(src.as_raw_fd())?;
    let me = std::process::id() as i32;

    let found = holders(dev, ino);
    for h in &found {
        let who = format!("process {} ({})", h.pid, h.comm);
        if h.write_fds.is_empty() {
            return Err(fatal(format!(
                "{who} maps {} shared and writable without a writable descriptor: its stores cannot be coordinated",
                file.display()
            )));
        }
        if !h.flex {
            return Err(fatal(format!(
                "{who} has {} open for writing without flex (not under libflex.so, or FLEX_SNAPSHOTS=0): its writes cannot be coordinated",
                file.display()
            )));
        }
    }
    if found.len() > MAX_SLOTS {
        return Err(fatal(format!(
            "{} writers of {}: a snapshot coordinates at most {MAX_SLOTS}",
            found.len(),
            file.display()
        )));
    }

    let dst = Dest::create(dest)?;
    let ctl = Control::new()?;
    let s = ctl.shared();
    let c = s.ctrl();
    c.state.store(state::JOINING, Relaxed);
    c.snapshotter.store(me, Relaxed);
    c.src_fd.store(src.as_raw_fd(), Relaxed);
    c.dst_fd.store(dst.fd.as_raw_fd(), Relaxed);
    c.dev.store(dev, Relaxed);
    c.ino.store(ino, Relaxed);
    c.nslots.store(found.len() as u32, Relaxed);
    for (i, h) in found.iter().enumerate() {
        let sl = &c.slots[i];
        sl.pid.store(h.pid, Relaxed);
        sl.state.store(answer::ASKED, Relaxed);
        let fds = &h.write_fds[..h.write_fds.len().min(MAX_FDS)];
        for (k, &f) in fds.iter().enumerate() {
            sl.fds[k].store(f, Relaxed);
        }
        sl.nfds.store(fds.len() as u32, Relaxed);
    }
    c.magic
        .store(flex_engine::snapshot::control::MAGIC, Release);

    // Ask.
    let asked = Instant::now();
    let mut gone = vec![false; found.len()];
    for (i, h) in found.iter().enumerate() {
        let value = libc::sigval {
            sival_ptr: (ctl.fd.as_raw_fd() as u32 as usize | (i << 32)) as *mut libc::c_void,
        };
        // SAFETY: a queued signal with a plain value (the writer installed its handler:
        // its marker says so).
        if unsafe { libc::sigqueue(h.pid, flex_engine::snapshot::SIGNAL, value) } != 0 {
            gone[i] = true;
        }
    }
    // Wait for every answer.
    loop {
        let seen = c.answers.load(Acquire);
        let mut waiting = None;
        for (i, h) in found.iter().enumerate() {
            match c.slots[i].state.load(Acquire) {
                answer::JOINED => {}
                answer::REFUSED => {
                    s.abort(state::JOINING, Reason::None, 0);
                    let why = Reason::from_raw(c.slots[i].reason.load(Acquire));
                    return Err(fatal(format!(
                        "process {} ({}) cannot take part in a snapshot of {}: {}",
                        h.pid,
                        h.comm,
                        file.display(),
                        why.describe()
                    )));
                }
                _ if gone[i] || !alive(h.pid) => gone[i] = true,
                _ => waiting = Some(i),
            }
        }
        if c.state.load(Acquire) != state::JOINING {
            return Err(Failure::Retry(given_up(&s)));
        }
        let Some(i) = waiting else { break };
        if asked.elapsed() > opts.join_timeout {
            s.abort(state::JOINING, Reason::None, 0);
            let h = &found[i];
            return Err(fatal(format!(
                "process {} ({}) did not answer the snapshot request within {:?}",
                h.pid, h.comm, opts.join_timeout
            )));
        }
        flex_engine::sys::thread::futex_wait_shared(&c.answers, seen, Duration::from_millis(20));
    }

    // The instant: no write of any writer is in flight.
    let size = src.metadata()?.len();
    let pages = size.div_ceil(PAGE);
    if pages > MAX_PAGES {
        s.abort(state::JOINING, Reason::None, 0);
        return Err(fatal(format!("{} is larger than 1 TiB", file.display())));
    }
    c.size.store(size, Release);
    c.pages.store(pages, Release);
    dst.fd.set_len(size)?;
    if c.state
        .compare_exchange(state::JOINING, state::COPYING, AcqRel, Acquire)
        .is_err()
    {
        return Err(Failure::Retry(given_up(&s)));
    }
    flex_engine::sys::thread::futex_wake_shared(&c.state);
    let join_time = asked.elapsed();

    let r = copy_all(&s, src.as_raw_fd(), dst.fd.as_raw_fd(), pages, size, &found);
    if r.is_ok() {
        c.state
            .compare_exchange(state::COPYING, state::DONE, AcqRel, Acquire)
            .ok();
    } else {
        s.abort(state::COPYING, Reason::None, 0);
    }
    flex_engine::sys::thread::futex_wake_shared(&c.state);
    r?;
    if c.state.load(Acquire) != state::DONE {
        return Err(Failure::Retry(given_up(&s)));
    }

    // Nobody the snapshot did not coordinate wrote the file meanwhile: no writable
    // descriptor of it was closed, and every one open now was there at the start.
    match opens.count() {
        None => return Err(Failure::Retry("too many events on the file to check".into())),
        Some(0) => {}
        Some(n) => {
            return Err(Failure::Retry(format!(
                "{n} writable descriptor(s) of the file were closed during the snapshot, by processes it may not have coordinated"
            )))
        }
    }
    for h in holders(dev, ino) {
        let before = found.iter().find(|k| k.pid == h.pid);
        if before.is_none_or(|k| h.write_fds.iter().any(|f| !k.write_fds.contains(f))) {
            return Err(Failure::Retry(format!(
                "process {} ({}) opened the file for writing during the snapshot",
                h.pid, h.comm
            )));
        }
    }
    let copied_by_writers = (0..found.len())
        .map(|i| c.slots[i].copied.load(Acquire))
        .sum();

    dst.fd.sync_all()?;
    let _ = dst
        .fd
        .set_permissions(std::fs::Permissions::from_mode(meta.mode() & 0o777));
    dst.publish(dest)?;
    Ok(Report {
        dest: dest.to_path_buf(),
        size,
        writers: found
            .iter()
            .zip(&gone)
            .filter(|(_, g)| !**g)
            .map(|(h, _)| h.pid)
            .collect(),
        copied_by_writers,
        join_time,
        elapsed: Duration::ZERO,
        attempts: 0,
    })
}

fn given_up(s: &Shared) -> String {
    // The reason is stored just after the state: give it a moment.
    std::thread::sleep(Duration::from_millis(1));
    let c = s.ctrl();
    let why = Reason::from_raw(c.failed.load(Acquire));
    format!(
        "process {} gave the snapshot up: {}",
        c.failed_pid.load(Acquire),
        why.describe()
    )
}

/// Copy every page nobody copied, then wait for the pages writers are copying.
fn copy_all(
    s: &Shared,
    src: RawFd,
    dst: RawFd,
    pages: u64,
    size: u64,
    found: &[Holder],
) -> Result<(), Failure> {
    let c = s.ctrl();
    let pace = pace();
    let mut p = 0u64;
    let mut paced = 0u64;
    while p < pages {
        if c.state.load(Acquire) != state::COPYING {
            return Err(Failure::Retry(given_up(s)));
        }
        if let Some(d) = pace.filter(|_| p >= paced + 16) {
            paced = p;
            std::thread::sleep(d);
        }
        if !s.claim(p) {
            p += 1;
            continue;
        }
        let a = p;
        p += 1;
        while p < pages && p - a < 16 && s.claim(p) {
            p += 1;
        }
        flex_engine::snapshot::move_pages(src, dst, a, p, size)?;
        for q in a..p {
            s.set_done(q);
        }
    }
    let start = Instant::now();
    loop {
        let pending: Vec<u64> = (0..pages).filter(|&q| !s.is_done(q)).collect();
        if pending.is_empty() {
            return Ok(());
        }
        if c.state.load(Acquire) != state::COPYING {
            return Err(Failure::Retry(given_up(s)));
        }
        // A writer that died while copying leaves its pages claimed: unchanged (it writes
        // a page only after copying it), so copy them here once every live writer is idle.
        let live_idle =
            (0..found.len()).all(|i| !alive(found[i].pid) || c.slots[i].busy.load(Acquire) == 0);
        let some_dead = found.iter().any(|h| !alive(h.pid));
        if live_idle && some_dead && start.elapsed() > Duration::from_millis(50) {
            for q in pending {
                // The dead writer may have left part of the page written: clear it first
                // (the copy leaves zero pages as holes).
                // SAFETY: a plain system call on our descriptor.
                unsafe {
                    libc::fallocate(
                        dst,
                        libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
                        (q * PAGE) as libc::off_t,
                        PAGE as libc::off_t,
                    )
                };
                flex_engine::snapshot::move_pages(src, dst, q, q + 1, size)?;
                s.set_done(q);
            }
            continue;
        }
        if start.elapsed() > Duration::from_secs(10) {
            return Err(Failure::Retry(
                "a writer did not finish copying its pages".into(),
            ));
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}
