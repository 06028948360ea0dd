//! One byte written and read back on a pipe or a Unix socket pair: calls flex passes
//! through.

use std::io;

use anyhow::Context;

use super::drive::Op;
use super::sys::Fd;
use super::{WorkerArgs, Workload};

/// One op per thread, each with its own pipe or socket pair.
pub(super) fn ops(args: &WorkerArgs) -> anyhow::Result<Vec<Box<dyn Op>>> {
    let mut ops: Vec<Box<dyn Op>> = Vec::with_capacity(args.threads);
    for _ in 0..args.threads {
        let mut fds = [0 as libc::c_int; 2];
        let rc = if args.workload == Workload::Pipe {
            // SAFETY: fds is a valid array of two ints for pipe to fill.
            unsafe { libc::pipe(fds.as_mut_ptr()) }
        } else {
            // SAFETY: fds is a valid array of two ints for socketpair to fill.
            unsafe { libc::socketpair(libc::AF_UNIX, libc::SOCK_STREAM, 0, fds.as_mut_ptr()) }
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
    Ok(ops)
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
