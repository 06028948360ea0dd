//! open + read + close over many small files.

use std::ffi::CString;
use std::io;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};

use super::drive::Op;
use super::sys::{cstring, short_io, Buffer};
use super::WorkerArgs;

/// The path of small file `i` in `dir` (shared with the parent, which creates them).
pub(crate) fn small_file_path(dir: &Path, i: usize) -> PathBuf {
    dir.join(format!("f{i:05}"))
}

/// One op per thread; thread `t` of `n` reads files `t`, `t + n`, ... of `dir`.
pub(super) fn ops(args: &WorkerArgs, dir: PathBuf) -> anyhow::Result<Vec<Box<dyn Op>>> {
    let mut ops: Vec<Box<dyn Op>> = Vec::with_capacity(args.threads);
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
    Ok(ops)
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
