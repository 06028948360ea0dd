//! Sequential writes, each thread to a file of its own, with an optional fsync every N.

use std::ffi::CString;
use std::io;
use std::path::PathBuf;

use anyhow::Context;

use super::drive::Op;
use super::sys::{cstring, short_io, Buffer, Fd};
use super::WorkerArgs;

/// One op per thread, each on the new file `<prefix>.<thread>`, removed at the end.
pub(super) fn ops(args: &WorkerArgs, prefix: PathBuf) -> anyhow::Result<Vec<Box<dyn Op>>> {
    let mut ops: Vec<Box<dyn Op>> = Vec::with_capacity(args.threads);
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
    Ok(ops)
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
