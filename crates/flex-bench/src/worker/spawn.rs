//! posix_spawn of `/bin/true` and a wait for it: the cost of starting a process. The
//! worker's environment goes to the child, so on the flex side libflex.so is loaded into
//! every child: the cell measures what preloading adds to each exec.

use std::ffi::CString;
use std::io;

use anyhow::Context;

use super::drive::Op;
use super::WorkerArgs;

const PROGRAM: &str = "/bin/true";

/// One op per thread.
pub(super) fn ops(args: &WorkerArgs) -> anyhow::Result<Vec<Box<dyn Op>>> {
    let prog = CString::new(PROGRAM)?;
    if !std::path::Path::new(PROGRAM).exists() {
        anyhow::bail!("{PROGRAM} is missing");
    }
    Ok((0..args.threads)
        .map(|_| Box::new(SpawnOp { prog: prog.clone() }) as Box<dyn Op>)
        .collect())
}

struct SpawnOp {
    prog: CString,
}

extern "C" {
    static environ: *const *mut libc::c_char;
}

impl Op for SpawnOp {
    fn op(&mut self) -> anyhow::Result<u64> {
        let argv = [
            self.prog.as_ptr() as *mut libc::c_char,
            core::ptr::null_mut(),
        ];
        let mut pid: libc::pid_t = 0;
        // SAFETY: prog and argv are NUL-terminated and outlive the call; environ is the
        // process's environment, read by posix_spawn only.
        let rc = unsafe {
            libc::posix_spawn(
                &mut pid,
                self.prog.as_ptr(),
                core::ptr::null(),
                core::ptr::null(),
                argv.as_ptr(),
                environ,
            )
        };
        if rc != 0 {
            return Err(io::Error::from_raw_os_error(rc)).context("posix_spawn /bin/true");
        }
        let mut status = 0;
        // SAFETY: waiting for our own child.
        if unsafe { libc::waitpid(pid, &mut status, 0) } != pid {
            return Err(io::Error::last_os_error()).context("waitpid");
        }
        if !libc::WIFEXITED(status) || libc::WEXITSTATUS(status) != 0 {
            anyhow::bail!("/bin/true failed: status {status:#x}");
        }
        Ok(1)
    }
}
