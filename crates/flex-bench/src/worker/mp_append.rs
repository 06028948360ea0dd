//! mp-append: several processes appending records to one shared file, then a check that
//! no record was lost or overwritten.

use std::path::Path;

use anyhow::{bail, Context};

use super::drive::{drive, Op};
use super::sys::{cstring, short_io, Buffer, Fd};
use super::{WorkerArgs, WorkerResult, Workload};

/// The first bytes of every mp-append record: magic, writer process, its sequence number.
const MP_MAGIC: u32 = 0x464c_5852; // "FLXR"
const MP_HEADER: usize = 16;

/// The parent of an mp-append sample: truncates the shared file, starts `--procs`
/// processes of this executable (which inherit the environment, so the flex side's
/// children run under libflex.so too), lets them warm up, releases them together, sums
/// their results and checks the file: its size is exactly every record of every process
/// (a lost append would make it shorter) and each process's records are all there, in
/// its order (an append that overwrote another would break a sequence).
pub(super) fn mp_append_parent(args: &WorkerArgs, warm: f64) -> anyhow::Result<WorkerResult> {
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
pub(super) fn mp_append_child(
    args: &WorkerArgs,
    index: usize,
    warm: f64,
) -> anyhow::Result<WorkerResult> {
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

#[cfg(test)]
mod tests {
    use super::*;

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
}
