//! `flexio bench-worker`: one measured sample of one built-in workload.
//!
//! The worker does its IO with direct `libc::` calls, as a C program would, so that under
//! `LD_PRELOAD=libflex.so` every call goes through the interposed symbol and nothing else
//! (no `std::fs` buffering or extra syscalls) is measured. It sets up outside the timed
//! part, warms up (which also calibrates how many operations fit in about a millisecond),
//! then runs the operation loop for `--seconds`, reading `CLOCK_MONOTONIC` only once per
//! batch, and prints one JSON line.

use std::ffi::CString;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Barrier};
use std::time::Instant;

use anyhow::{bail, Context};

/// The built-in workloads a worker can run.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Workload {
    /// Random `pread` of `--bs` bytes from `--file` (`--size` bytes long).
    Pread,
    /// Random `pwrite` of `--bs` bytes into `--file`.
    Pwrite,
    /// `memcpy` from a private mapping of `--file` at the same offsets as `pread`.
    Memcpy,
    /// Sequential `write` of `--bs` bytes to a new file `--file.<thread>`, `fsync`
    /// every `--fsync-every` writes (0: never), at most `--size` bytes in all.
    Append,
    /// `open` + `read` of `--bs` bytes + `close` over `--count` files `--file/fNNNNN`.
    Smallfiles,
    /// `write` then `read` of 1 byte on a pipe: the cost of a call flex passes through.
    Pipe,
    /// `write` then `read` of 1 byte on a Unix socket pair.
    Socket,
    /// `--procs` processes at once, each appending `--bs`-byte records with `write` on its
    /// own `O_WRONLY|O_APPEND` descriptor of the one shared file `--file`; at most `--size`
    /// bytes in all. The parent then checks that no record was lost or overwritten.
    MpAppend,
}

impl Workload {
    pub(crate) fn name(self) -> &'static str {
        match self {
            Workload::Pread => "pread",
            Workload::Pwrite => "pwrite",
            Workload::Memcpy => "memcpy",
            Workload::Append => "append",
            Workload::Smallfiles => "smallfiles",
            Workload::Pipe => "pipe",
            Workload::Socket => "socket",
            Workload::MpAppend => "mp-append",
        }
    }
}

/// Arguments of the hidden `flexio bench-worker` subcommand.
#[derive(clap::Args, Debug, Clone)]
pub struct WorkerArgs {
    /// The workload to run.
    #[arg(value_enum)]
    pub workload: Workload,
    /// Data file (pread, pwrite, memcpy), file prefix (append) or directory (smallfiles).
    #[arg(long)]
    pub file: Option<PathBuf>,
    /// IO size in bytes.
    #[arg(long, default_value_t = 4096)]
    pub bs: usize,
    /// Size of the data file in bytes (random IO), or the byte cap of append.
    #[arg(long, default_value_t = 0)]
    pub size: u64,
    /// Number of threads, each with its own RNG stream (and file, for append).
    #[arg(long, default_value_t = 1)]
    pub threads: usize,
    /// Length of the timed part in seconds.
    #[arg(long, default_value_t = 1.0)]
    pub seconds: f64,
    /// Length of the warm-up in seconds (default: a fifth of --seconds, at least 20 ms).
    #[arg(long)]
    pub warmup: Option<f64>,
    /// For append and pwrite: fsync every N writes (0: never).
    #[arg(long, default_value_t = 0)]
    pub fsync_every: u64,
    /// For smallfiles: the number of files.
    #[arg(long, default_value_t = 0)]
    pub count: usize,
    /// For pwrite: random `pread`s of `--bs` bytes before each `pwrite` (a read-mostly mix;
    /// every call counts as an operation, `--fsync-every` counts writes).
    #[arg(long, default_value_t = 0)]
    pub reads_per_write: u64,
    /// Seed of the offset sequence (the same for pread, pwrite and memcpy).
    #[arg(long, default_value_t = 0x9E37_79B9_7F4A_7C15)]
    pub seed: u64,
    /// For mp-append: the number of appending processes (each single-threaded).
    #[arg(long, default_value_t = 4)]
    pub procs: usize,
    /// For mp-append: run as appending process N of --procs (set by the parent, which
    /// starts the processes, releases them together and checks the file).
    #[arg(long, hide = true)]
    pub proc_index: Option<usize>,
}

/// The JSON line a worker prints.
#[derive(serde::Serialize, serde::Deserialize, Debug, Clone)]
pub struct WorkerResult {
    pub workload: String,
    /// Operations (calls, for pipe and socket) in the timed part, all threads.
    pub ops: u64,
    /// Length of the timed part (the longest thread's).
    pub seconds: f64,
    /// `seconds / ops` in ns: the inverse of the aggregate throughput.
    pub ns_per_op: f64,
    pub ops_per_sec: f64,
    /// Bytes moved in the timed part.
    pub bytes: u64,
    pub threads: usize,
    /// Operations in the warm-up, all threads (flex counts them too).
    pub warmup_ops: u64,
}

/// Run one sample and print its JSON line on stdout.
pub fn worker(args: &WorkerArgs) -> anyhow::Result<()> {
    let res = run_worker(args)?;
    println!("{}", serde_json::to_string(&res)?);
    Ok(())
}

fn run_worker(args: &WorkerArgs) -> anyhow::Result<WorkerResult> {
    if args.threads == 0 {
        bail!("--threads must be at least 1");
    }
    if args.seconds.is_nan() || args.seconds <= 0.0 {
        bail!("--seconds must be positive");
    }
    let warm = args.warmup.unwrap_or((args.seconds / 5.0).max(0.02));
    if args.workload == Workload::MpAppend {
        return match args.proc_index {
            None => mp_append_parent(args, warm),
            Some(i) => mp_append_child(args, i, warm),
        };
    }
    let file = || {
        args.file
            .clone()
            .context("--file is required for this workload")
    };
    let mut ops: Vec<Box<dyn Op>> = Vec::with_capacity(args.threads);
    // Everything below is set-up, outside the timed part.
    match args.workload {
        Workload::Pread | Workload::Pwrite | Workload::Memcpy => {
            let path = file()?;
            let nblocks = args.size / args.bs as u64;
            if args.bs == 0 || nblocks == 0 {
                bail!("--size must hold at least one --bs block");
            }
            let write = args.workload == Workload::Pwrite;
            let map = if args.workload == Workload::Memcpy {
                Some(Arc::new(Mapping::new(&path, args.size)?))
            } else {
                None
            };
            // One descriptor shared by all threads, as a server would do.
            let fd = match &map {
                Some(_) => None,
                None => Some(Arc::new(Fd::open(
                    &path,
                    if write { libc::O_RDWR } else { libc::O_RDONLY },
                    0,
                )?)),
            };
            for t in 0..args.threads {
                let buf = Buffer::new(args.bs, 0xA5 ^ t as u8);
                let rng = offset_rng(args.seed, t as u64);
                ops.push(match (&map, &fd) {
                    (Some(m), _) => Box::new(MemcpyOp {
                        map: m.clone(),
                        buf,
                        bs: args.bs,
                        nblocks,
                        rng,
                    }),
                    (None, Some(fd)) => Box::new(RandomOp {
                        fd: fd.clone(),
                        buf,
                        bs: args.bs,
                        nblocks,
                        rng,
                        write,
                        fsync_every: if write { args.fsync_every } else { 0 },
                        n: 0,
                        reads_per_write: if write { args.reads_per_write } else { 0 },
                        k: 0,
                    }),
                    (None, None) => unreachable!(),
                });
            }
        }
        Workload::Append => {
            let prefix = file()?;
            let cap = if args.size == 0 {
                u64::MAX
            } else {
                args.size / args.threads as u64
            };
            for t in 0..args.threads {
                let mut p = prefix.clone().into_os_string();
                p.push(format!(".{t}"));
                let path = PathBuf::from(p);
                let fd = Fd::open(&path, libc::O_WRONLY | libc::O_CREAT | libc::O_TRUNC, 0o644)?;
                ops.push(Box::new(AppendOp {
                    fd,
                    path: cstring(&path)?,
                    buf: Buffer::new(args.bs, 0x5A ^ t as u8),
                    bs: args.bs,
                    left: cap / args.bs as u64,
                    fsync_every: args.fsync_every,
                    n: 0,
                }));
            }
        }
        Workload::Smallfiles => {
            let dir = file()?;
            if args.count == 0 {
                bail!("--count is required for smallfiles");
            }
            for t in 0..args.threads {
                let paths: Vec<CString> = (t..args.count)
                    .step_by(args.threads)
                    .map(|i| cstring(&small_file_path(&dir, i)))
                    .collect::<anyhow::Result<_>>()?;
                if paths.is_empty() {
                    bail!("fewer files than threads");
                }
                ops.push(Box::new(SmallFilesOp {
                    paths,
                    next: 0,
                    buf: Buffer::new(args.bs, 0),
                    bs: args.bs,
                }));
            }
        }
        Workload::MpAppend => unreachable!("handled above"),
        Workload::Pipe | Workload::Socket => {
            for _ in 0..args.threads {
                let mut fds = [0 as libc::c_int; 2];
                let rc = if args.workload == Workload::Pipe {
                    // SAFETY: fds is a valid array of two ints for pipe to fill.
                    unsafe { libc::pipe(fds.as_mut_ptr()) }
                } else {
                    // SAFETY: fds is a valid array of two ints for socketpair to fill.
                    unsafe {
                        libc::socketpair(libc::AF_UNIX, libc::SOCK_STREAM, 0, fds.as_mut_ptr())
                    }
                };
                if rc != 0 {
                    return Err(io::Error::last_os_error()).context("pipe/socketpair");
                }
                ops.push(Box::new(PingOp {
                    rd: Fd(fds[0]),
                    wr: Fd(fds[1]),
                    byte: [0u8; 1],
                }));
            }
        }
    }
    let calls_per_op = match args.workload {
        Workload::Pipe | Workload::Socket => 2,
        _ => 1,
    };
    let bytes_per_op = match args.workload {
        Workload::Pipe | Workload::Socket => 1,
        _ => args.bs as u64,
    };

    let (ops_done, warm_ops, seconds) = drive_all(ops, warm, args.seconds)?;
    if ops_done == 0 {
        bail!("no operation in the timed part (the append cap was reached in the warm-up?)");
    }
    let ops = ops_done * calls_per_op;
    Ok(WorkerResult {
        workload: args.workload.name().to_string(),
        ops,
        seconds,
        ns_per_op: seconds * 1e9 / ops.max(1) as f64,
        ops_per_sec: ops as f64 / seconds,
        bytes: ops_done * bytes_per_op,
        threads: args.threads,
        warmup_ops: warm_ops * calls_per_op,
    })
}

/// The first bytes of every mp-append record: magic, writer process, its sequence number.
const MP_MAGIC: u32 = 0x464c_5852; // "FLXR"
const MP_HEADER: usize = 16;

/// The parent of an mp-append sample: truncates the shared file, starts `--procs`
/// processes of this executable (which inherit the environment, so the flex side's
/// children run under libflex.so too), lets them warm up, releases them together, sums
/// their results and checks the file: its size is exactly every record of every process
/// (a lost append would make it shorter) and each process's records are all there, in
/// its order (an append that overwrote another would break a sequence).
fn mp_append_parent(args: &WorkerArgs, warm: f64) -> anyhow::Result<WorkerResult> {
    use std::io::{BufRead, BufReader, Read as _, Write as _};
    use std::process::{Command, Stdio};
    let path = args
        .file
        .clone()
        .context("--file is required for mp-append")?;
    if args.procs == 0 || args.bs < MP_HEADER {
        bail!("mp-append needs --procs >= 1 and --bs >= {MP_HEADER}");
    }
    drop(Fd::open(
        &path,
        libc::O_WRONLY | libc::O_CREAT | libc::O_TRUNC,
        0o644,
    )?);
    let exe = std::env::current_exe().context("current executable")?;
    let mut children = Vec::with_capacity(args.procs);
    let result = (|| -> anyhow::Result<WorkerResult> {
        for i in 0..args.procs {
            let mut cmd = Command::new(&exe);
            cmd.arg("bench-worker")
                .arg("mp-append")
                .arg("--file")
                .arg(&path)
                .args(["--bs", &args.bs.to_string()])
                .args(["--size", &args.size.to_string()])
                .args(["--procs", &args.procs.to_string()])
                .args(["--seconds", &args.seconds.to_string()])
                .args(["--warmup", &warm.to_string()])
                .args(["--proc-index", &i.to_string()])
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::inherit());
            let mut child = cmd.spawn().context("spawn an mp-append process")?;
            let out = BufReader::new(child.stdout.take().context("child stdout")?);
            children.push((child, out));
        }
        // Every process has warmed up and waits; then all start at once.
        for (i, (_, out)) in children.iter_mut().enumerate() {
            let mut line = String::new();
            out.read_line(&mut line)?;
            if line.trim() != "ready" {
                bail!("mp-append process {i} did not get ready (printed {line:?})");
            }
        }
        for (child, _) in children.iter_mut() {
            let mut stdin = child.stdin.take().context("child stdin")?;
            stdin.write_all(b"g")?;
        }
        let (mut ops, mut warm_ops, mut seconds) = (0u64, 0u64, 0f64);
        let mut records = Vec::with_capacity(args.procs);
        for (i, (child, out)) in children.iter_mut().enumerate() {
            let mut text = String::new();
            out.read_to_string(&mut text)?;
            let st = child.wait()?;
            if !st.success() {
                bail!("mp-append process {i} exited with {st}");
            }
            let line = text
                .lines()
                .rev()
                .find(|l| l.trim_start().starts_with('{'))
                .with_context(|| format!("mp-append process {i} printed no JSON"))?;
            let r: WorkerResult = serde_json::from_str(line)?;
            ops += r.ops;
            warm_ops += r.warmup_ops;
            seconds = seconds.max(r.seconds);
            records.push(r.ops + r.warmup_ops);
        }
        children.clear();
        verify_mp_file(&path, args.bs, &records)?;
        if ops == 0 {
            bail!("no operation in the timed part (the append cap was reached in the warm-up?)");
        }
        Ok(WorkerResult {
            workload: Workload::MpAppend.name().to_string(),
            ops,
            seconds,
            ns_per_op: seconds * 1e9 / ops as f64,
            ops_per_sec: ops as f64 / seconds,
            bytes: ops * args.bs as u64,
            threads: args.procs,
            warmup_ops: warm_ops,
        })
    })();
    for (mut child, _) in children {
        let _ = child.kill();
        let _ = child.wait();
    }
    if let Ok(c) = cstring(&path) {
        // SAFETY: c is a valid NUL-terminated path.
        unsafe { libc::unlink(c.as_ptr()) };
    }
    result
}

/// Checks an mp-append file: `records[p]` records of process `p`, each in its order.
fn verify_mp_file(path: &Path, bs: usize, records: &[u64]) -> anyhow::Result<()> {
    use std::io::Read as _;
    let total: u64 = records.iter().sum();
    let expect = total * bs as u64;
    let size = std::fs::metadata(path)?.len();
    if size != expect {
        bail!(
            "LOST APPENDS: {} is {size} bytes, expected {expect} ({} processes wrote {total} \
             records of {bs} B: {records:?})",
            path.display(),
            records.len()
        );
    }
    let mut f = std::fs::File::open(path)?;
    let mut next = vec![0u64; records.len()];
    let mut chunk = vec![0u8; bs * 256];
    let mut at = 0u64;
    while at < total {
        let n = ((total - at) as usize).min(256);
        f.read_exact(&mut chunk[..n * bs])
            .with_context(|| format!("read back {}", path.display()))?;
        for rec in chunk[..n * bs].chunks_exact(bs) {
            let magic = u32::from_le_bytes(rec[0..4].try_into().expect("4 bytes"));
            let p = u32::from_le_bytes(rec[4..8].try_into().expect("4 bytes")) as usize;
            let seq = u64::from_le_bytes(rec[8..16].try_into().expect("8 bytes"));
            if magic != MP_MAGIC || p >= next.len() || seq != next[p] {
                bail!(
                    "CORRUPT APPENDS: record {at} of {} holds magic {magic:#x}, process {p}, \
                     sequence {seq} (expected the next records {next:?})",
                    path.display()
                );
            }
            next[p] += 1;
            at += 1;
        }
    }
    if next != records {
        bail!("CORRUPT APPENDS: records per process {next:?}, expected {records:?}");
    }
    Ok(())
}

/// One mp-append process: opens the shared file `O_WRONLY|O_APPEND`, warms up, says
/// `ready`, waits for the parent's byte on stdin, runs the timed part, prints its JSON.
fn mp_append_child(args: &WorkerArgs, index: usize, warm: f64) -> anyhow::Result<WorkerResult> {
    use std::io::{Read as _, Write as _};
    let path = args
        .file
        .clone()
        .context("--file is required for mp-append")?;
    if args.bs < MP_HEADER {
        bail!("mp-append needs --bs >= {MP_HEADER}");
    }
    let fd = Fd::open(&path, libc::O_WRONLY | libc::O_APPEND, 0)?;
    let cap = if args.size == 0 {
        u64::MAX
    } else {
        args.size / args.procs.max(1) as u64
    };
    let mut op = MpAppendOp {
        fd,
        buf: Buffer::new(args.bs, 0x3C ^ index as u8),
        bs: args.bs,
        left: cap / args.bs as u64,
        index: index as u32,
        seq: 0,
    };
    let sync = || -> anyhow::Result<()> {
        let mut out = std::io::stdout().lock();
        out.write_all(b"ready\n")?;
        out.flush()?;
        let mut b = [0u8; 1];
        std::io::stdin().lock().read_exact(&mut b)?;
        Ok(())
    };
    let (ops, warm_ops, seconds) = drive(&mut op, warm, args.seconds, &sync)?;
    Ok(WorkerResult {
        workload: Workload::MpAppend.name().to_string(),
        ops,
        seconds,
        ns_per_op: seconds * 1e9 / ops.max(1) as f64,
        ops_per_sec: ops as f64 / seconds.max(1e-9),
        bytes: ops * args.bs as u64,
        threads: 1,
        warmup_ops: warm_ops,
    })
}

/// The path of small file `i` in `dir` (shared with the parent, which creates them).
pub(crate) fn small_file_path(dir: &Path, i: usize) -> PathBuf {
    dir.join(format!("f{i:05}"))
}

fn cstring(p: &Path) -> anyhow::Result<CString> {
    CString::new(p.as_os_str().as_bytes()).context("path with a NUL byte")
}

/// Runs the ops, one per thread; returns (timed ops, warm-up ops, seconds).
fn drive_all(mut ops: Vec<Box<dyn Op>>, warm: f64, secs: f64) -> anyhow::Result<(u64, u64, f64)> {
    if ops.len() == 1 {
        let r = drive(ops[0].as_mut(), warm, secs, &|| Ok(()))?;
        ops.pop().unwrap().finish();
        return Ok(r);
    }
    let barrier = Arc::new(Barrier::new(ops.len()));
    let handles: Vec<_> = ops
        .into_iter()
        .map(|mut op| {
            let b = barrier.clone();
            std::thread::spawn(move || {
                let r = drive(op.as_mut(), warm, secs, &|| {
                    b.wait();
                    Ok(())
                });
                op.finish();
                r
            })
        })
        .collect();
    let (mut ops_sum, mut warm_sum, mut secs_max) = (0, 0, 0f64);
    for h in handles {
        let (o, w, s) = h
            .join()
            .map_err(|_| anyhow::anyhow!("worker thread panicked"))??;
        ops_sum += o;
        warm_sum += w;
        secs_max = secs_max.max(s);
    }
    Ok((ops_sum, warm_sum, secs_max))
}

/// Warm up for `warm` seconds, wait for the other threads or processes (`sync`), then run
/// batches of about a millisecond each until `secs` have passed (or the op says it is
/// exhausted).
fn drive(
    op: &mut dyn Op,
    warm: f64,
    secs: f64,
    sync: &dyn Fn() -> anyhow::Result<()>,
) -> anyhow::Result<(u64, u64, f64)> {
    let t0 = Instant::now();
    let mut warm_ops = 0u64;
    let mut exhausted = false;
    'warm: loop {
        for _ in 0..16 {
            if op.op()? == 0 {
                exhausted = true;
                break 'warm;
            }
            warm_ops += 1;
        }
        if t0.elapsed().as_secs_f64() >= warm {
            break;
        }
    }
    let rate = warm_ops as f64 / t0.elapsed().as_secs_f64().max(1e-9);
    let batch = ((rate / 1000.0) as u64).clamp(1, 1 << 20);
    sync()?;
    let start = Instant::now();
    let mut n = 0u64;
    if !exhausted {
        'run: loop {
            for _ in 0..batch {
                if op.op()? == 0 {
                    break 'run;
                }
                n += 1;
            }
            if start.elapsed().as_secs_f64() >= secs {
                break;
            }
        }
    }
    let elapsed = start.elapsed().as_secs_f64();
    Ok((n, warm_ops, elapsed))
}

/// One operation of a workload. Returns the bytes moved, or 0 when exhausted.
trait Op: Send {
    fn op(&mut self) -> anyhow::Result<u64>;
    /// Clean-up after the timed part.
    fn finish(&mut self) {}
}

/// The offset generator of thread `thread`: the same `seed` gives the same sequence (so
/// pread, pwrite and memcpy of one seed visit the same blocks), and each thread has a
/// stream of its own.
pub(crate) fn offset_rng(seed: u64, thread: u64) -> fastrand::Rng {
    fastrand::Rng::with_seed(seed ^ thread.wrapping_add(1).wrapping_mul(0xD1B5_4A32_D192_ED03))
}

/// An owned file descriptor, closed with `libc::close` on drop.
struct Fd(libc::c_int);

impl Fd {
    fn open(path: &Path, flags: libc::c_int, mode: libc::mode_t) -> anyhow::Result<Fd> {
        let c = cstring(path)?;
        // SAFETY: c is a valid NUL-terminated path; open does not keep the pointer.
        let fd = unsafe { libc::open(c.as_ptr(), flags | libc::O_CLOEXEC, mode as libc::c_uint) };
        if fd < 0 {
            return Err(io::Error::last_os_error())
                .with_context(|| format!("open {}", path.display()));
        }
        Ok(Fd(fd))
    }
}

impl Drop for Fd {
    fn drop(&mut self) {
        // SAFETY: we own this descriptor and close it exactly once.
        unsafe { libc::close(self.0) };
    }
}

/// A page-aligned IO buffer filled with a pattern.
struct Buffer {
    ptr: *mut u8,
    layout: std::alloc::Layout,
}

// SAFETY: the buffer is plain owned memory; only its owning op touches it.
unsafe impl Send for Buffer {}

impl Buffer {
    fn new(len: usize, pattern: u8) -> Buffer {
        let layout = std::alloc::Layout::from_size_align(len.max(1), 4096).expect("buffer layout");
        // SAFETY: the layout has a non-zero size.
        let ptr = unsafe { std::alloc::alloc(layout) };
        if ptr.is_null() {
            std::alloc::handle_alloc_error(layout);
        }
        // SAFETY: ptr points to layout.size() writable bytes; filling them also faults
        // the pages in before the timed part.
        unsafe { std::ptr::write_bytes(ptr, pattern | 1, layout.size()) };
        Buffer { ptr, layout }
    }
}

impl Drop for Buffer {
    fn drop(&mut self) {
        // SAFETY: ptr was allocated with this layout and is freed once.
        unsafe { std::alloc::dealloc(self.ptr, self.layout) };
    }
}

/// A read-only shared mapping of a whole file, populated up front.
struct Mapping {
    ptr: *mut u8,
    len: usize,
}

// SAFETY: the mapping is read-only and outlives every thread that reads it (Arc).
unsafe impl Send for Mapping {}
// SAFETY: as above: concurrent reads of a read-only mapping are fine.
unsafe impl Sync for Mapping {}

impl Mapping {
    fn new(path: &Path, len: u64) -> anyhow::Result<Mapping> {
        let fd = Fd::open(path, libc::O_RDONLY, 0)?;
        let len = usize::try_from(len)?;
        // SAFETY: mapping a valid fd read-only; the result is checked against MAP_FAILED.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ,
                libc::MAP_SHARED | libc::MAP_POPULATE,
                fd.0,
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(io::Error::last_os_error()).context("mmap");
        }
        Ok(Mapping {
            ptr: ptr.cast(),
            len,
        })
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: ptr/len come from a successful mmap and are unmapped once.
        unsafe { libc::munmap(self.ptr.cast(), self.len) };
    }
}

struct RandomOp {
    fd: Arc<Fd>,
    buf: Buffer,
    bs: usize,
    nblocks: u64,
    rng: fastrand::Rng,
    write: bool,
    fsync_every: u64,
    n: u64,
    reads_per_write: u64,
    /// Calls so far (with `reads_per_write`: which one is the write).
    k: u64,
}

impl Op for RandomOp {
    #[inline]
    fn op(&mut self) -> anyhow::Result<u64> {
        let off = (self.rng.u64(..self.nblocks) * self.bs as u64) as libc::off_t;
        let write = self.write
            && (self.reads_per_write == 0 || self.k.is_multiple_of(self.reads_per_write + 1));
        self.k += 1;
        let n = if write {
            // SAFETY: buf holds bs readable bytes.
            unsafe { libc::pwrite(self.fd.0, self.buf.ptr.cast(), self.bs, off) }
        } else {
            // SAFETY: buf holds bs writable bytes.
            unsafe { libc::pread(self.fd.0, self.buf.ptr.cast(), self.bs, off) }
        };
        if n != self.bs as isize {
            return Err(short_io(n, if write { "pwrite" } else { "pread" }, off));
        }
        if self.fsync_every > 0 && write {
            self.n += 1;
            if self.n == self.fsync_every {
                self.n = 0;
                // SAFETY: fsync on a descriptor we own.
                if unsafe { libc::fsync(self.fd.0) } != 0 {
                    return Err(io::Error::last_os_error()).context("fsync");
                }
            }
        }
        Ok(self.bs as u64)
    }
}

fn short_io(n: isize, call: &str, off: libc::off_t) -> anyhow::Error {
    if n < 0 {
        anyhow::Error::new(io::Error::last_os_error()).context(format!("{call} at {off}"))
    } else {
        anyhow::anyhow!("short {call} at {off}: {n} bytes")
    }
}

struct MemcpyOp {
    map: Arc<Mapping>,
    buf: Buffer,
    bs: usize,
    nblocks: u64,
    rng: fastrand::Rng,
}

impl Op for MemcpyOp {
    #[inline]
    fn op(&mut self) -> anyhow::Result<u64> {
        let off = (self.rng.u64(..self.nblocks) * self.bs as u64) as usize;
        // SAFETY: off + bs <= map.len by construction of nblocks; buf holds bs bytes;
        // the mapping and the buffer do not overlap.
        unsafe { std::ptr::copy_nonoverlapping(self.map.ptr.add(off), self.buf.ptr, self.bs) };
        std::hint::black_box(self.buf.ptr);
        Ok(self.bs as u64)
    }
}

struct AppendOp {
    fd: Fd,
    path: CString,
    buf: Buffer,
    bs: usize,
    left: u64,
    fsync_every: u64,
    n: u64,
}

impl Op for AppendOp {
    #[inline]
    fn op(&mut self) -> anyhow::Result<u64> {
        if self.left == 0 {
            return Ok(0);
        }
        // SAFETY: buf holds bs readable bytes.
        let n = unsafe { libc::write(self.fd.0, self.buf.ptr.cast(), self.bs) };
        if n != self.bs as isize {
            return Err(short_io(n, "write", -1));
        }
        self.left -= 1;
        self.n += 1;
        if self.n == self.fsync_every {
            self.n = 0;
            // SAFETY: fsync on an owned descriptor.
            if unsafe { libc::fsync(self.fd.0) } != 0 {
                return Err(io::Error::last_os_error()).context("fsync");
            }
        }
        Ok(self.bs as u64)
    }
    fn finish(&mut self) {
        // SAFETY: path is a valid NUL-terminated string.
        unsafe { libc::unlink(self.path.as_ptr()) };
    }
}

/// An mp-append record write: the header (magic, process, sequence) then `write(2)`.
struct MpAppendOp {
    fd: Fd,
    buf: Buffer,
    bs: usize,
    left: u64,
    index: u32,
    seq: u64,
}

impl Op for MpAppendOp {
    #[inline]
    fn op(&mut self) -> anyhow::Result<u64> {
        if self.left == 0 {
            return Ok(0);
        }
        let mut h = [0u8; MP_HEADER];
        h[0..4].copy_from_slice(&MP_MAGIC.to_le_bytes());
        h[4..8].copy_from_slice(&self.index.to_le_bytes());
        h[8..16].copy_from_slice(&self.seq.to_le_bytes());
        // SAFETY: buf holds bs >= MP_HEADER writable bytes (mp_append_child checks bs)
        // and does not overlap h.
        unsafe { std::ptr::copy_nonoverlapping(h.as_ptr(), self.buf.ptr, MP_HEADER) };
        // SAFETY: buf holds bs readable bytes.
        let n = unsafe { libc::write(self.fd.0, self.buf.ptr.cast(), self.bs) };
        if n != self.bs as isize {
            return Err(short_io(n, "append", -1));
        }
        self.left -= 1;
        self.seq += 1;
        Ok(self.bs as u64)
    }
}

struct SmallFilesOp {
    paths: Vec<CString>,
    next: usize,
    buf: Buffer,
    bs: usize,
}

impl Op for SmallFilesOp {
    #[inline]
    fn op(&mut self) -> anyhow::Result<u64> {
        let p = &self.paths[self.next];
        self.next += 1;
        if self.next == self.paths.len() {
            self.next = 0;
        }
        // SAFETY: p is a valid NUL-terminated path.
        let fd = unsafe { libc::open(p.as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error()).with_context(|| format!("open {p:?}"));
        }
        // SAFETY: buf holds bs writable bytes; fd is open.
        let n = unsafe { libc::read(fd, self.buf.ptr.cast(), self.bs) };
        // SAFETY: closing the descriptor opened above, once.
        let rc = unsafe { libc::close(fd) };
        if n != self.bs as isize {
            return Err(short_io(n, "read", 0));
        }
        if rc != 0 {
            return Err(io::Error::last_os_error()).context("close");
        }
        Ok(self.bs as u64)
    }
}

struct PingOp {
    rd: Fd,
    wr: Fd,
    byte: [u8; 1],
}

impl Op for PingOp {
    #[inline]
    fn op(&mut self) -> anyhow::Result<u64> {
        // SAFETY: byte is a valid 1-byte buffer; both descriptors are open.
        let w = unsafe { libc::write(self.wr.0, self.byte.as_ptr().cast(), 1) };
        // SAFETY: as above.
        let r = unsafe { libc::read(self.rd.0, self.byte.as_mut_ptr().cast(), 1) };
        if w != 1 || r != 1 {
            return Err(io::Error::last_os_error()).context("pipe write/read");
        }
        Ok(1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offsets_are_deterministic_bounded_and_aligned() {
        let (size, bs) = (1u64 << 20, 4096u64);
        let nblocks = size / bs;
        let mut a = offset_rng(7, 0);
        let mut b = offset_rng(7, 0);
        let mut c = offset_rng(7, 1);
        let mut differs = false;
        for _ in 0..10_000 {
            let x = a.u64(..nblocks);
            assert_eq!(x, b.u64(..nblocks));
            let off = x * bs;
            assert!(off.is_multiple_of(bs) && off + bs <= size, "offset {off}");
            differs |= x != c.u64(..nblocks);
        }
        assert!(differs, "threads share a stream");
    }

    #[test]
    fn offsets_cover_the_file() {
        let mut r = offset_rng(1, 0);
        let mut seen = [false; 64];
        for _ in 0..10_000 {
            seen[r.u64(..64) as usize] = true;
        }
        assert!(seen.iter().all(|&s| s));
    }

    fn mp_record(p: u32, seq: u64) -> Vec<u8> {
        let mut r = vec![0u8; 64];
        r[0..4].copy_from_slice(&MP_MAGIC.to_le_bytes());
        r[4..8].copy_from_slice(&p.to_le_bytes());
        r[8..16].copy_from_slice(&seq.to_le_bytes());
        r
    }

    #[test]
    fn mp_file_check_finds_lost_and_overwritten_records() {
        let dir = std::env::temp_dir().join(format!("flexbench-mp-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("log");
        // Two processes interleaved: 0/0 1/0 1/1 0/1.
        let recs = [(0, 0), (1, 0), (1, 1), (0, 1)];
        let good: Vec<u8> = recs.iter().flat_map(|&(p, s)| mp_record(p, s)).collect();
        std::fs::write(&f, &good).unwrap();
        verify_mp_file(&f, 64, &[2, 2]).unwrap();
        // One append lost: the file is a record short.
        let e = verify_mp_file(&f, 64, &[3, 2]).unwrap_err().to_string();
        assert!(e.contains("LOST APPENDS"), "{e}");
        // One append overwrote another (same size, a sequence number missing).
        let mut bad = good.clone();
        bad[64..128].copy_from_slice(&mp_record(0, 1));
        std::fs::write(&f, &bad).unwrap();
        let e = verify_mp_file(&f, 64, &[2, 2]).unwrap_err().to_string();
        assert!(e.contains("CORRUPT APPENDS"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn workloads_run_on_a_tiny_file() {
        let dir = std::env::temp_dir().join(format!("flexbench-unit-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let data = dir.join("data");
        std::fs::write(&data, vec![7u8; 1 << 20]).unwrap();
        let small = dir.join("small");
        std::fs::create_dir_all(&small).unwrap();
        for i in 0..8 {
            std::fs::write(small_file_path(&small, i), vec![1u8; 4096]).unwrap();
        }
        let base = WorkerArgs {
            workload: Workload::Pread,
            file: Some(data.clone()),
            bs: 4096,
            size: 1 << 20,
            threads: 1,
            seconds: 0.01,
            warmup: Some(0.005),
            fsync_every: 0,
            count: 8,
            seed: 1,
            reads_per_write: 0,
            procs: 4,
            proc_index: None,
        };
        for (w, file, threads, fsync) in [
            (Workload::Pread, &data, 1, 0),
            (Workload::Pread, &data, 2, 0),
            (Workload::Pwrite, &data, 2, 0),
            (Workload::Memcpy, &data, 1, 0),
            (Workload::Append, &dir.join("log"), 2, 4),
            (Workload::Smallfiles, &small, 2, 0),
            (Workload::Pipe, &data, 1, 0),
            (Workload::Socket, &data, 1, 0),
        ] {
            let a = WorkerArgs {
                workload: w,
                file: Some(file.clone()),
                threads,
                fsync_every: fsync,
                ..base.clone()
            };
            let r = run_worker(&a).unwrap_or_else(|e| panic!("{w:?}: {e:#}"));
            assert!(r.ops > 0, "{w:?}");
            assert!(r.seconds > 0.0, "{w:?}");
            assert_eq!(r.threads, threads);
        }
        // The read-mostly mix: every call counts, one in four writes.
        let mix = WorkerArgs {
            workload: Workload::Pwrite,
            reads_per_write: 3,
            fsync_every: 2,
            ..base.clone()
        };
        let r = run_worker(&mix).unwrap_or_else(|e| panic!("mix: {e:#}"));
        assert!(r.ops >= 4, "mix: {} ops", r.ops);
        assert!(!dir.join("log.0").exists(), "append removes its files");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
