//! Tests of `flex_engine::fault` (guarded copies) and `flex_engine::persist` (flush/kernel selection).
//!
//! Contents: every length 0..=8192 with every destination alignment in a cache line (the
//! source alignment varies with the length, so every (src, dst) pair occurs many times),
//! plus the full 64x64 alignment grid for lengths 0..=256 and around 4096 and 8192, for
//! each routine and each NT kernel; each flush instruction forced on shorter lengths.
//! Guard bytes around the destination are checked after every call.
//!
//! Faults: unmapped source/destination, a truncated MAP_SHARED file (SIGBUS), partial
//! copies, faults on other threads; signal forwarding and death by SIGSEGV/SIGBUS run in
//! child processes (this test binary re-executed with FLEX_PERSIST_CHILD=<case>).

use std::ffi::c_int;
use std::os::unix::process::ExitStatusExt;
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};

use flex_engine::fault;
use flex_engine::persist::{self, FlushKind, NtKind};

const MAX: usize = 8192;
const GUARD: u8 = 0xFF;
const PAGE: usize = 4096;
static GUARDS: [u8; 256] = [GUARD; 256];
static ZEROS: [u8; MAX] = [0; MAX];

/// A 64-byte aligned scratch buffer: `[64 guard bytes][63 alignment bytes][MAX][64 guard]`.
struct Buf {
    mem: Vec<u8>,
    base: usize,
}

impl Buf {
    fn new() -> Buf {
        let mem = vec![GUARD; MAX + 4 * 64 + 64];
        let base = (64 - (mem.as_ptr() as usize % 64)) % 64;
        Buf { mem, base }
    }
    fn region(&mut self) -> &mut [u8] {
        let b = self.base;
        &mut self.mem[b..b + MAX + 3 * 64]
    }
}

/// `len` bytes in `base..base + 126` (never GUARD, never 0).
fn pattern(len: usize, seed: usize, base: u8) -> Vec<u8> {
    (0..len)
        .map(|i| ((i * 131 + seed * 17 + i / 251) % 126) as u8 + base)
        .collect()
}

#[derive(Clone, Copy, Debug)]
enum Op {
    Copy,
    Zero,
    CopyNt(NtKind, FlushKind),
    ZeroNt(NtKind, FlushKind),
}

impl Op {
    fn has_src(self) -> bool {
        matches!(self, Op::Copy | Op::CopyNt(..))
    }

    /// # Safety
    /// Ranges valid and disjoint.
    unsafe fn run(self, dst: *mut u8, src: *const u8, len: usize) -> usize {
        // SAFETY: forwarded caller contract.
        unsafe {
            match self {
                Op::Copy => fault::copy(dst, src, len),
                Op::Zero => fault::zero(dst, len),
                Op::CopyNt(k, f) => fault::copy_nt_with(k, f, dst, src, len),
                Op::ZeroNt(k, f) => fault::zero_nt_with(k, f, dst, len),
            }
        }
    }

    fn supported(self) -> bool {
        match self {
            Op::Copy | Op::Zero => true,
            Op::CopyNt(k, f) | Op::ZeroNt(k, f) => {
                let ok = k.is_supported() && f.is_supported();
                if !ok {
                    eprintln!("skipping {self:?}: not supported by this CPU");
                }
                ok
            }
        }
    }
}

/// Runs one routine and checks contents and guard bytes.
///
/// Copies alternate between two sources whose bytes lie in disjoint ranges (1..=126 and
/// 128..=253), neither containing `GUARD`. After a checked call, `[0, clean_end)` of the
/// region holds only guard bytes and bytes of the other source, so the next copy's body
/// needs no refill (only the part past `clean_end`): a byte it fails to write keeps a
/// value that can never equal the expected one. Zeroing refills the whole body.
struct Checker {
    op: Op,
    src: [Vec<u8>; 2],
    dst: Buf,
    calls: usize,
    clean_end: usize,
}

impl Checker {
    fn new(op: Op) -> Checker {
        Checker {
            op,
            src: [pattern(MAX + 64, 3, 1), pattern(MAX + 64, 5, 128)],
            dst: Buf::new(),
            calls: 0,
            clean_end: 0,
        }
    }

    fn check(&mut self, len: usize, s: usize, d: usize) {
        let op = self.op;
        let srcbuf = &self.src[self.calls % 2];
        let region = self.dst.region();
        let start = 64 + d;
        let end = start + len;
        region[..start].fill(GUARD);
        if op.has_src() {
            let from = self.clean_end.clamp(start, end);
            region[from..end + 64].fill(GUARD);
        } else {
            region[start..end + 64].fill(GUARD);
        }
        let dst = region[start..].as_mut_ptr();
        let src = srcbuf[s..].as_ptr();
        // SAFETY: dst has len + 64 bytes after it in `region`, src has MAX + 64 - s >= len
        // bytes; the buffers are distinct allocations.
        let left = unsafe { op.run(dst, src, len) };
        // No fence per call: loads see the NT-stored data anyway, and fencing every call
        // only waits for the memory writes.
        assert_eq!(left, 0, "{op:?} len {len} src+{s} dst+{d}: not done");
        assert!(
            region[..start] == GUARDS[..start],
            "{op:?} len {len} s {s} d {d}: head guard"
        );
        let body = &region[start..end];
        let ok = if op.has_src() {
            *body == srcbuf[s..s + len]
        } else {
            *body == ZEROS[..len]
        };
        assert!(ok, "{op:?} len {len} src+{s} dst+{d}: wrong contents");
        assert!(
            region[end..end + 64] == GUARDS[..64],
            "{op:?} len {len} s {s} d {d}: tail guard"
        );
        self.clean_end = end + 64;
        self.calls += 1;
    }

    /// Every length 0..=MAX, every destination alignment, source alignment varying.
    fn sweep(&mut self) {
        for len in 0..=MAX {
            for d in 0..64 {
                self.check(len, (len * 7 + d) % 64, d);
            }
        }
    }

    /// Every (src, dst) alignment pair for the given lengths (dst only without a source).
    fn grid(&mut self, lens: impl Iterator<Item = usize>) {
        let srcs = if self.op.has_src() { 64 } else { 1 };
        for len in lens {
            for s in 0..srcs {
                for d in 0..64 {
                    self.check(len, s, d);
                }
            }
        }
    }
}

fn grid_lens() -> impl Iterator<Item = usize> {
    (0..=256)
        .chain(4030..=4034)
        .chain(4094..=4098)
        .chain(8188..=8192)
}

fn best_flush() -> FlushKind {
    FlushKind::ALL
        .into_iter()
        .rev()
        .find(|f| f.is_supported())
        .unwrap()
}

fn full(op: Op) {
    if !op.supported() {
        return;
    }
    let mut c = Checker::new(op);
    let t = std::time::Instant::now();
    c.sweep();
    let t1 = t.elapsed();
    c.grid(grid_lens());
    persist::fence();
    eprintln!(
        "{op:?}: {} calls, sweep {t1:?}, grid {:?}",
        c.calls,
        t.elapsed() - t1
    );
}

#[test]
fn copy_all_lengths_and_alignments() {
    full(Op::Copy);
}

#[test]
fn zero_all_lengths_and_alignments() {
    full(Op::Zero);
}

#[test]
fn copy_nt_sse2_all_lengths_and_alignments() {
    full(Op::CopyNt(NtKind::Sse2, best_flush()));
}

#[test]
fn copy_nt_avx2_all_lengths_and_alignments() {
    full(Op::CopyNt(NtKind::Avx2, best_flush()));
}

#[test]
fn copy_nt_avx512_all_lengths_and_alignments() {
    full(Op::CopyNt(NtKind::Avx512, best_flush()));
}

#[test]
fn zero_nt_sse2_all_lengths_and_alignments() {
    full(Op::ZeroNt(NtKind::Sse2, best_flush()));
}

#[test]
fn zero_nt_avx2_all_lengths_and_alignments() {
    full(Op::ZeroNt(NtKind::Avx2, best_flush()));
}

#[test]
fn zero_nt_avx512_all_lengths_and_alignments() {
    full(Op::ZeroNt(NtKind::Avx512, best_flush()));
}

/// Every other flush instruction forced (the best one is covered above), with every
/// kernel: lengths up to 300 (head, tail and body paths) in every destination alignment,
/// and all 64x64 pairs for the lengths around one and two cache lines.
#[test]
fn nt_every_flush_instruction() {
    for f in FlushKind::ALL.into_iter().filter(|&f| f != best_flush()) {
        for k in NtKind::ALL {
            for op in [Op::CopyNt(k, f), Op::ZeroNt(k, f)] {
                if !op.supported() {
                    continue;
                }
                let mut c = Checker::new(op);
                for len in 0..=300 {
                    for d in 0..64 {
                        c.check(len, (len * 7 + d) % 64, d);
                    }
                }
                c.grid([0, 1, 2, 63, 64, 65, 127, 128, 129].into_iter());
            }
        }
    }
    // Every flush instruction on its own, guarded and not.
    let mut buf = Buf::new();
    let r = buf.region();
    for f in FlushKind::ALL {
        if !f.is_supported() {
            eprintln!("skipping {}: not supported by this CPU", f.as_str());
            continue;
        }
        for (off, len) in [(0, 0), (1, 0), (3, 1), (0, 64), (63, 2), (5, 4000)] {
            // SAFETY: off + len is inside `r`.
            let left = unsafe { fault::flush_with(f, r[off..].as_ptr(), len) };
            assert_eq!(left, 0);
            // SAFETY: as above.
            unsafe { persist::flush_with(f, r[off..].as_ptr(), len) };
        }
    }
    persist::fence();
}

#[test]
fn default_dispatch() {
    let mut c = Checker::new(Op::Copy);
    let mut d = Buf::new();
    for len in [0, 1, 63, 64, 65, 1000, 4096, 8192] {
        let dst = d.region();
        dst.fill(GUARD);
        // SAFETY: in-bounds, disjoint buffers.
        assert_eq!(
            unsafe { fault::copy_nt(dst[1..].as_mut_ptr(), c.src[0].as_ptr(), len) },
            0
        );
        assert!(dst[1..1 + len] == c.src[0][..len]);
        // SAFETY: in-bounds.
        assert_eq!(unsafe { fault::zero_nt(dst[1..].as_mut_ptr(), len) }, 0);
        assert!(dst[1..1 + len] == ZEROS[..len]);
        // SAFETY: in-bounds.
        assert_eq!(unsafe { fault::flush(dst.as_ptr(), len) }, 0);
        assert_eq!(dst[1 + len], GUARD);
        persist::fence();
    }
    c.check(5, 1, 2);
}

// ---------------------------------------------------------------- faults (in process)

/// An anonymous mapping of `pages` pages; `none` lists pages made PROT_NONE.
struct Map {
    ptr: *mut u8,
    len: usize,
}

impl Map {
    fn anon(pages: usize, none: &[usize]) -> Map {
        let len = pages * PAGE;
        // SAFETY: fresh anonymous private mapping.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        assert_ne!(p, libc::MAP_FAILED);
        for &i in none {
            // SAFETY: page i is inside the mapping just created.
            let r = unsafe {
                libc::mprotect(p.cast::<u8>().add(i * PAGE).cast(), PAGE, libc::PROT_NONE)
            };
            assert_eq!(r, 0);
        }
        Map { ptr: p.cast(), len }
    }

    fn at(&self, off: usize) -> *mut u8 {
        assert!(off <= self.len);
        // SAFETY: in bounds of the mapping.
        unsafe { self.ptr.add(off) }
    }
}

impl Drop for Map {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly the mapping this value owns.
        unsafe { libc::munmap(self.ptr.cast(), self.len) };
    }
}

fn all_ops() -> Vec<Op> {
    let mut v = vec![Op::Copy, Op::Zero];
    for k in NtKind::ALL {
        for f in FlushKind::ALL {
            if k.is_supported() && f.is_supported() {
                v.push(Op::CopyNt(k, f));
                v.push(Op::ZeroNt(k, f));
            }
        }
    }
    v
}

#[test]
fn fault_unmapped_source_and_destination() {
    fault::install();
    let bad = Map::anon(3, &[0, 1, 2]);
    let mut good = Buf::new();
    let src = pattern(MAX, 1, 1);
    for op in all_ops() {
        for len in [1usize, 7, 64, 100, 4096, 8192] {
            for off in [0usize, 1, 63] {
                let dst = good.region()[off..].as_mut_ptr();
                if op.has_src() {
                    // SAFETY: dst has room for len; the source is PROT_NONE: the fault is
                    // recovered by the installed handler.
                    let left = unsafe { op.run(dst, bad.at(off), len) };
                    assert!(
                        left > 0 && left <= len,
                        "{op:?} read len {len}: left {left}"
                    );
                }
                // SAFETY: the destination is PROT_NONE (recovered); the source is valid.
                let left = unsafe { op.run(bad.at(off), src.as_ptr(), len) };
                assert_eq!(left, len, "{op:?} write len {len} off {off}");
            }
        }
    }
    // Null and non-canonical pointers (the latter is a #GP: SIGSEGV with SI_KERNEL).
    for p in [0usize, 8, 0x8000_0000_0000_0000, 0xdead_0000_0000_0000] {
        // SAFETY: faulting accesses recovered by the handler.
        unsafe {
            assert_eq!(
                fault::copy(good.region().as_mut_ptr(), p as *const u8, 100),
                100
            );
            assert_eq!(fault::copy_nt(p as *mut u8, src.as_ptr(), 100), 100);
            assert_eq!(fault::zero(p as *mut u8, 100), 100);
            assert_eq!(fault::zero_nt(p as *mut u8, 5000), 5000);
        }
    }
    // A read-only destination.
    let ro = Map::anon(1, &[]);
    // SAFETY: the page belongs to `ro`.
    assert_eq!(
        unsafe { libc::mprotect(ro.ptr.cast(), PAGE, libc::PROT_READ) },
        0
    );
    for op in all_ops() {
        // SAFETY: write to a read-only page: recovered.
        assert_eq!(unsafe { op.run(ro.ptr, src.as_ptr(), 300) }, 300, "{op:?}");
    }
}

#[test]
fn fault_partial_source() {
    fault::install();
    // Source: page 0 readable, page 1 PROT_NONE.
    let m = Map::anon(2, &[1]);
    let src = pattern(PAGE, 9, 1);
    // SAFETY: page 0 is readable and writable.
    unsafe { std::ptr::copy_nonoverlapping(src.as_ptr(), m.ptr, PAGE) };
    let mut dst = Buf::new();
    for op in all_ops().into_iter().filter(|o| o.has_src()) {
        for d in [0usize, 1, 17, 63] {
            for (soff, len) in [(0usize, 2 * PAGE), (100, PAGE), (PAGE - 1, 2)] {
                let r = dst.region();
                r.fill(GUARD);
                let avail = PAGE - soff;
                // SAFETY: dst has room for len (<= MAX); the source's second page faults.
                let left = unsafe { op.run(r[64 + d..].as_mut_ptr(), m.at(soff), len) };
                let done = len - left;
                assert!(left > 0, "{op:?}");
                // rep movsb stops exactly at the page (copies of 768 bytes or more, or of
                // 32 KiB or more where the AVX2 kernel is used); the short copy commits
                // pieces of at most 64 bytes, the AVX2 copy 256-byte chunks, the NT
                // kernels pieces of at most 256 bytes after a partial head line.
                let avx2 = flex_engine::persist::nt_kind() >= flex_engine::persist::NtKind::Avx2;
                let rep_from = if avx2 { 32 << 10 } else { 768 };
                let exact = matches!(op, Op::Copy) && len >= rep_from;
                let slack = match op {
                    _ if exact => 0,
                    Op::Copy if avx2 && len >= 256 => 256,
                    Op::Copy => 64,
                    _ => 256 + 63,
                };
                assert!(
                    done + slack >= avail && done <= avail,
                    "{op:?} d {d} len {len}: done {done}"
                );
                if exact || d == 0 && soff == 0 && len >= 768 {
                    assert_eq!(left, len - avail, "{op:?} d {d} soff {soff}");
                }
                assert!(
                    r[64 + d..64 + d + done] == src[soff..soff + done],
                    "{op:?}: prefix"
                );
                assert!(r[..64 + d] == GUARDS[..64 + d]);
            }
        }
    }
}

/// A MAP_SHARED file mapping truncated through another descriptor: SIGBUS past EOF.
#[test]
fn fault_truncated_shared_file() {
    use std::os::fd::AsRawFd;
    fault::install();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("f");
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(&path)
        .unwrap();
    f.set_len(4 * PAGE as u64).unwrap();
    // SAFETY: shared mapping of a 4-page file we own.
    let p = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            4 * PAGE,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED,
            f.as_raw_fd(),
            0,
        )
    };
    assert_ne!(p, libc::MAP_FAILED);
    let map = p.cast::<u8>();
    let src = pattern(MAX, 5, 1);
    // SAFETY: the file is 4 pages long: all of it is writable now.
    assert_eq!(unsafe { fault::copy(map, src.as_ptr(), 2 * PAGE) }, 0);
    // Another descriptor truncates the file to one page.
    std::fs::OpenOptions::new()
        .write(true)
        .open(&path)
        .unwrap()
        .set_len(PAGE as u64)
        .unwrap();
    let mut buf = Buf::new();
    for op in all_ops() {
        // SAFETY: page 0 is inside the file, page 1 past EOF: SIGBUS, recovered.
        let left = unsafe { op.run(map.add(PAGE / 2), src.as_ptr(), PAGE) };
        assert!(
            (PAGE / 2..=PAGE).contains(&left),
            "{op:?} write: left {left}"
        );
        if matches!(op, Op::Copy | Op::Zero) {
            assert_eq!(left, PAGE / 2, "{op:?}");
        }
        if op.has_src() {
            // SAFETY: reading past EOF: SIGBUS, recovered.
            let left = unsafe { op.run(buf.region().as_mut_ptr(), map.add(PAGE), 100) };
            assert_eq!(left, 100, "{op:?} read");
        }
    }
    // SAFETY: reading page 0, inside the file.
    let first = unsafe { std::slice::from_raw_parts(map, 64) };
    assert!(first == &src[..64]);
    // SAFETY: unmapping our mapping.
    unsafe { libc::munmap(p, 4 * PAGE) };
}

#[test]
fn fault_on_many_threads() {
    fault::install();
    let done = AtomicUsize::new(0);
    std::thread::scope(|s| {
        for t in 0..4 {
            let done = &done;
            s.spawn(move || {
                let bad = Map::anon(1, &[0]);
                let mut good = Buf::new();
                for i in 0..200 {
                    let len = 1 + (i * 37 + t) % 5000;
                    // SAFETY: PROT_NONE source: recovered.
                    let left = unsafe { fault::copy(good.region().as_mut_ptr(), bad.ptr, len) };
                    assert_eq!(left, len);
                    // SAFETY: PROT_NONE destination: recovered.
                    let left = unsafe { fault::zero_nt(bad.ptr.add(i % 64), len) };
                    assert_eq!(left, len);
                }
                done.fetch_add(1, Ordering::Relaxed);
            });
        }
    });
    assert_eq!(done.load(Ordering::Relaxed), 4);
}

#[test]
fn install_is_idempotent() {
    let ts: Vec<_> = (0..4).map(|_| std::thread::spawn(fault::install)).collect();
    for t in ts {
        t.join().unwrap();
    }
    fault::install();
    assert!(fault::is_installed());
}

// ---------------------------------------------------------------- child processes

const CHILD_ENV: &str = "FLEX_PERSIST_CHILD";

fn run_child(case: &str, extra_env: &[(&str, &str)]) -> std::process::ExitStatus {
    let mut cmd = Command::new(std::env::current_exe().unwrap());
    cmd.args(["--exact", "child_entry", "--nocapture", "--test-threads=1"])
        .env(CHILD_ENV, case);
    for (k, v) in extra_env {
        cmd.env(k, v);
    }
    cmd.stdout(std::process::Stdio::null());
    cmd.status().unwrap()
}

static HITS: AtomicUsize = AtomicUsize::new(0);

extern "C" fn exit_42(_sig: c_int) {
    // SAFETY: _exit is async-signal-safe.
    unsafe { libc::_exit(42) };
}

extern "C" fn exit_43_info(sig: c_int, info: *mut libc::siginfo_t, _uc: *mut std::ffi::c_void) {
    // SAFETY: the kernel's siginfo; _exit is async-signal-safe.
    unsafe {
        if sig == libc::SIGSEGV && (*info).si_code > 0 {
            libc::_exit(43);
        }
        libc::_exit(44);
    }
}

extern "C" fn count_hit(_sig: c_int) {
    HITS.fetch_add(1, Ordering::SeqCst);
}

static UNPROTECT: AtomicUsize = AtomicUsize::new(0);
static MASK_OK: AtomicUsize = AtomicUsize::new(0);

/// SA_SIGINFO handler that makes the faulting page readable, and records whether the
/// delivery mask is what the kernel would set (signal itself and SIGUSR1 blocked).
extern "C" fn unprotect(sig: c_int, _info: *mut libc::siginfo_t, _uc: *mut std::ffi::c_void) {
    HITS.fetch_add(1, Ordering::SeqCst);
    // SAFETY: sigprocmask/mprotect are async-signal-safe; UNPROTECT holds a page address.
    unsafe {
        let mut cur: libc::sigset_t = std::mem::zeroed();
        libc::pthread_sigmask(libc::SIG_BLOCK, std::ptr::null(), &mut cur);
        if libc::sigismember(&cur, sig) == 1 && libc::sigismember(&cur, libc::SIGUSR1) == 1 {
            MASK_OK.store(1, Ordering::SeqCst);
        }
        libc::mprotect(
            UNPROTECT.load(Ordering::SeqCst) as *mut libc::c_void,
            PAGE,
            libc::PROT_READ,
        );
    }
}

fn action(handler: usize, flags: c_int) -> libc::sigaction {
    // SAFETY: all-zero is a valid sigaction.
    let mut a: libc::sigaction = unsafe { std::mem::zeroed() };
    a.sa_sigaction = handler;
    a.sa_flags = flags;
    a
}

fn no_core_dump() {
    let lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: valid rlimit struct.
    unsafe { libc::setrlimit(libc::RLIMIT_CORE, &lim) };
}

/// Read a byte from a PROT_NONE page outside any guarded routine.
fn touch_bad() -> u8 {
    let m = Map::anon(1, &[0]);
    let p = m.ptr;
    std::mem::forget(m);
    // SAFETY: deliberately faulting read (the test expects the signal).
    unsafe { std::ptr::read_volatile(p) }
}

fn guarded_works() {
    let bad = Map::anon(1, &[0]);
    let mut b = [0u8; 64];
    // SAFETY: PROT_NONE source: recovered.
    assert_eq!(unsafe { fault::copy(b.as_mut_ptr(), bad.ptr, 64) }, 64);
}

fn current_kernel_handler(sig: c_int) -> usize {
    let mut cur = action(0, 0);
    // SAFETY: queries only (null act); in the test binary libc::sigaction is libc's.
    unsafe { libc::sigaction(sig, std::ptr::null(), &mut cur) };
    cur.sa_sigaction
}

/// Entry point of the child processes; a no-op in the normal test run.
#[test]
fn child_entry() {
    let Some(case) = std::env::var_os(CHILD_ENV) else {
        return;
    };
    let case = case.into_string().unwrap();
    no_core_dump();
    // SAFETY (whole block): signal manipulation in a dedicated child process.
    unsafe {
        match case.as_str() {
            "app_before" => {
                libc::sigaction(
                    libc::SIGSEGV,
                    &action(exit_43_info as *const () as usize, libc::SA_SIGINFO),
                    std::ptr::null_mut(),
                );
                fault::install();
                guarded_works();
                touch_bad();
                libc::_exit(1);
            }
            "app_after" => {
                fault::install();
                let ours = current_kernel_handler(libc::SIGSEGV);
                let mut old = action(0, 0);
                let h = action(exit_42 as *const () as usize, 0);
                assert_eq!(fault::app_sigaction(libc::SIGSEGV, &h, &mut old), 0);
                assert_ne!(old.sa_sigaction, exit_42 as *const () as usize);
                // The kernel still runs our handler; the app sees its own.
                assert_eq!(current_kernel_handler(libc::SIGSEGV), ours);
                let mut cur = action(0, 0);
                assert_eq!(
                    fault::app_sigaction(libc::SIGSEGV, std::ptr::null(), &mut cur),
                    0
                );
                assert_eq!(cur.sa_sigaction, exit_42 as *const () as usize);
                guarded_works();
                touch_bad();
                libc::_exit(1);
            }
            "app_thread" => {
                fault::install();
                let h = action(exit_43_info as *const () as usize, libc::SA_SIGINFO);
                fault::app_sigaction(libc::SIGSEGV, &h, std::ptr::null_mut());
                std::thread::spawn(|| {
                    guarded_works();
                    touch_bad();
                })
                .join()
                .ok();
                libc::_exit(1);
            }
            "dfl_segv" | "ign_segv" => {
                // No application handler (not even Rust's stack-overflow one).
                let h = if case == "dfl_segv" {
                    libc::SIG_DFL
                } else {
                    libc::SIG_IGN
                };
                libc::sigaction(libc::SIGSEGV, &action(h, 0), std::ptr::null_mut());
                fault::install();
                guarded_works();
                touch_bad();
                libc::_exit(1);
            }
            "dfl_segv_after" => {
                fault::install();
                fault::app_sigaction(
                    libc::SIGSEGV,
                    &action(libc::SIG_DFL, 0),
                    std::ptr::null_mut(),
                );
                touch_bad();
                libc::_exit(1);
            }
            "dfl_bus" => {
                fault::install();
                fault::app_sigaction(
                    libc::SIGBUS,
                    &action(libc::SIG_DFL, 0),
                    std::ptr::null_mut(),
                );
                let f = tempfile::tempfile().unwrap();
                f.set_len(PAGE as u64).unwrap();
                use std::os::fd::AsRawFd;
                let p = libc::mmap(
                    std::ptr::null_mut(),
                    2 * PAGE,
                    libc::PROT_READ,
                    libc::MAP_SHARED,
                    f.as_raw_fd(),
                    0,
                );
                assert_ne!(p, libc::MAP_FAILED);
                let mut b = [0u8; 8];
                assert_eq!(fault::copy(b.as_mut_ptr(), p.cast::<u8>().add(PAGE), 8), 8);
                std::ptr::read_volatile(p.cast::<u8>().add(PAGE));
                libc::_exit(1);
            }
            "kill_dfl" => {
                fault::install();
                fault::app_sigaction(
                    libc::SIGSEGV,
                    &action(libc::SIG_DFL, 0),
                    std::ptr::null_mut(),
                );
                libc::kill(libc::getpid(), libc::SIGSEGV);
                // Process-directed: another thread may take it; give it time to kill us.
                std::thread::sleep(std::time::Duration::from_secs(5));
                libc::_exit(1);
            }
            "kill_handler" => {
                fault::install();
                assert_ne!(
                    fault::app_signal(libc::SIGSEGV, count_hit as *const () as usize),
                    libc::SIG_ERR
                );
                // Process-directed: any thread may take it; wait for the handler.
                libc::kill(libc::getpid(), libc::SIGSEGV);
                let t0 = std::time::Instant::now();
                while HITS.load(Ordering::SeqCst) < 1 && t0.elapsed().as_secs() < 5 {
                    std::thread::yield_now();
                }
                libc::raise(libc::SIGSEGV);
                // Sent signals with SIG_IGN are ignored.
                fault::app_sigaction(
                    libc::SIGSEGV,
                    &action(libc::SIG_IGN, 0),
                    std::ptr::null_mut(),
                );
                libc::raise(libc::SIGSEGV);
                libc::_exit(if HITS.load(Ordering::SeqCst) == 2 {
                    42
                } else {
                    1
                });
            }
            "semantics" => {
                fault::install();
                let errno = || *libc::__errno_location();
                // Bad signals: EINVAL from the real sigaction.
                for sig in [0, 65, -1] {
                    assert_eq!(
                        fault::app_sigaction(sig, std::ptr::null(), std::ptr::null_mut()),
                        -1
                    );
                    assert_eq!(errno(), libc::EINVAL);
                }
                // Other signals go to the kernel.
                let mut old = action(0, 0);
                assert_eq!(
                    fault::app_sigaction(
                        libc::SIGUSR2,
                        &action(count_hit as *const () as usize, 0),
                        &mut old
                    ),
                    0
                );
                assert_eq!(
                    current_kernel_handler(libc::SIGUSR2),
                    count_hit as *const () as usize
                );
                // SIG_IGN round trip; null act and null old.
                assert_eq!(
                    fault::app_sigaction(
                        libc::SIGBUS,
                        &action(libc::SIG_IGN, 0),
                        std::ptr::null_mut()
                    ),
                    0
                );
                assert_eq!(
                    fault::app_sigaction(libc::SIGBUS, std::ptr::null(), &mut old),
                    0
                );
                assert_eq!(old.sa_sigaction, libc::SIG_IGN);
                assert_eq!(
                    fault::app_sigaction(libc::SIGBUS, std::ptr::null(), std::ptr::null_mut()),
                    0
                );
                // Mask and flags are kept; SIGKILL/SIGSTOP are dropped from the mask.
                let mut a = action(
                    unprotect as *const () as usize,
                    libc::SA_SIGINFO | libc::SA_RESETHAND,
                );
                libc::sigemptyset(&mut a.sa_mask);
                libc::sigaddset(&mut a.sa_mask, libc::SIGUSR1);
                libc::sigaddset(&mut a.sa_mask, libc::SIGKILL);
                assert_eq!(
                    fault::app_sigaction(libc::SIGSEGV, &a, std::ptr::null_mut()),
                    0
                );
                assert_eq!(
                    fault::app_sigaction(libc::SIGSEGV, std::ptr::null(), &mut old),
                    0
                );
                assert_eq!(old.sa_sigaction, a.sa_sigaction);
                assert_eq!(old.sa_flags, a.sa_flags);
                assert_eq!(libc::sigismember(&old.sa_mask, libc::SIGUSR1), 1);
                assert_eq!(libc::sigismember(&old.sa_mask, libc::SIGKILL), 0);
                // Bad pointers: EFAULT, no crash, nothing changed.
                assert_eq!(
                    fault::app_sigaction(
                        libc::SIGSEGV,
                        std::ptr::dangling::<libc::sigaction>(),
                        std::ptr::null_mut()
                    ),
                    -1
                );
                assert_eq!(errno(), libc::EFAULT);
                assert_eq!(
                    fault::app_sigaction(
                        libc::SIGSEGV,
                        std::ptr::null(),
                        std::ptr::dangling_mut::<libc::sigaction>()
                    ),
                    -1
                );
                assert_eq!(errno(), libc::EFAULT);
                // Delivery: the handler runs with sa_mask + the signal blocked, fixes the
                // page, the access is retried; SA_RESETHAND resets the action to SIG_DFL.
                let m = Map::anon(1, &[0]);
                UNPROTECT.store(m.ptr as usize, Ordering::SeqCst);
                let v = std::ptr::read_volatile(m.ptr);
                assert_eq!(v, 0);
                assert_eq!(HITS.load(Ordering::SeqCst), 1);
                assert_eq!(MASK_OK.load(Ordering::SeqCst), 1);
                assert_eq!(
                    fault::app_sigaction(libc::SIGSEGV, std::ptr::null(), &mut old),
                    0
                );
                assert_eq!(old.sa_sigaction, libc::SIG_DFL);
                // The mask was restored after the handler.
                let mut cur: libc::sigset_t = std::mem::zeroed();
                libc::pthread_sigmask(libc::SIG_BLOCK, std::ptr::null(), &mut cur);
                assert_eq!(libc::sigismember(&cur, libc::SIGSEGV), 0);
                assert_eq!(libc::sigismember(&cur, libc::SIGUSR1), 0);
                guarded_works();
                libc::_exit(42);
            }
            "env_sse2" => {
                assert_eq!(persist::nt_copy_kind(), "sse2");
                assert_eq!(persist::flush_instruction(), "clflush");
                libc::_exit(42);
            }
            "env_avx2" => {
                let want = if NtKind::Avx2.is_supported() {
                    "avx2"
                } else {
                    "sse2"
                };
                assert_eq!(persist::nt_copy_kind(), want);
                if FlushKind::Clflushopt.is_supported() {
                    assert_eq!(persist::flush_instruction(), "clflushopt");
                }
                libc::_exit(42);
            }
            other => panic!("unknown child case {other}"),
        }
    }
}

fn expect_exit(case: &str, env: &[(&str, &str)], code: i32) {
    let st = run_child(case, env);
    assert_eq!(st.code(), Some(code), "child {case}: {st:?}");
}

fn expect_signal(case: &str, sig: c_int) {
    let st = run_child(case, &[]);
    assert_eq!(st.signal(), Some(sig), "child {case}: {st:?}");
}

#[test]
fn forward_to_app_handler_installed_before() {
    expect_exit("app_before", &[], 43);
}

#[test]
fn forward_to_app_handler_installed_after() {
    expect_exit("app_after", &[], 42);
}

#[test]
fn forward_on_other_thread() {
    expect_exit("app_thread", &[], 43);
}

#[test]
fn no_app_handler_dies_of_sigsegv() {
    expect_signal("dfl_segv", libc::SIGSEGV);
    expect_signal("dfl_segv_after", libc::SIGSEGV);
    // A fault is fatal even when the application ignores SIGSEGV.
    expect_signal("ign_segv", libc::SIGSEGV);
}

#[test]
fn no_app_handler_dies_of_sigbus() {
    expect_signal("dfl_bus", libc::SIGBUS);
}

#[test]
fn sent_signals() {
    expect_signal("kill_dfl", libc::SIGSEGV);
    expect_exit("kill_handler", &[], 42);
}

#[test]
fn app_sigaction_semantics() {
    expect_exit("semantics", &[], 42);
}

#[test]
fn env_overrides() {
    expect_exit(
        "env_sse2",
        &[("FLEX_CPU", "sse2"), ("FLEX_FLUSH", "clflush")],
        42,
    );
    expect_exit(
        "env_avx2",
        &[("FLEX_CPU", "AVX2"), ("FLEX_FLUSH", "clflushopt")],
        42,
    );
}
