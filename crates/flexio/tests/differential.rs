//! Differential tests: random sequences of file calls run once through the kernel (libc on
//! file A) and once through the engine (`flex_engine::posix`, dispatched as libflex.so does, on
//! twin file B). After every step: identical return values and errno, identical file
//! offsets of every open descriptor, identical logical sizes; at check points and at the
//! end: identical bytes, and after the last close identical kernel sizes and contents.
//! On tmpfs outside atomic mode also after every step: identical st_blocks and data
//! extents (SEEK_DATA/SEEK_HOLE): reading through the engine allocates nothing, writing
//! allocates what the kernel's write does (FLEX_DIFF_BLOCKS=1 compares st_blocks on
//! other file systems too).
//!
//! Files live in /dev/shm (tmpfs) unless `FLEX_TEST_DIR` says otherwise. `PROPTEST_CASES`
//! raises the number of cases. Deliberate differences from the kernel are listed where
//! they are tolerated (SEEK_DATA/SEEK_HOLE in atomic mode and on DAX: see
//! `seek_data_hole`).

mod common;

use common::*;
use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestRunner};
use std::ffi::CString;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;

const SLOTS: usize = 3;
const FILES: usize = 2;
const FAST_LIMIT: u64 = 1 << 40;
/// Files up to this size are compared whole; larger (sparse) ones by regions.
const WHOLE: u64 = 64 << 20;

fn cases(default: u32) -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}

// ---------------------------------------------------------------------------------------
// Operations

/// An offset (or length), evaluated against the file's logical size at the time of the step.
#[derive(Debug, Clone, Copy)]
enum Off {
    At(u64),
    /// size + delta (may come out negative).
    End(i64),
    Neg(i64),
    Huge(u64),
}

impl Off {
    fn eval(self, size: u64) -> i64 {
        match self {
            Off::At(v) | Off::Huge(v) => v as i64,
            Off::End(d) => (size as i64).saturating_add(d),
            Off::Neg(v) => v,
        }
    }
}

/// Where a buffer points.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Buf {
    Good,
    /// Address 8.
    Low,
    /// A PROT_NONE page.
    Guard,
    /// The kernel half of the address space.
    Kernel,
    /// Only this many bytes are valid, then a PROT_NONE page.
    Partial(usize),
}

#[derive(Debug, Clone, Copy)]
enum Cnt {
    Exact,
    Neg,
    Over,
}

#[derive(Debug, Clone, Copy)]
enum VKind {
    Plain,
    P(Off),
    P2(Off, i32),
}

#[derive(Debug, Clone)]
enum Op {
    Open {
        slot: usize,
        file: usize,
        acc: i32,
        append: bool,
        trunc: bool,
        creat: bool,
        excl: bool,
        how: u8,
    },
    Close {
        slot: usize,
    },
    Read {
        slot: usize,
        len: usize,
        buf: Buf,
    },
    Write {
        slot: usize,
        len: usize,
        buf: Buf,
        seed: u64,
    },
    Appends {
        slot: usize,
        n: usize,
        len: usize,
        seed: u64,
    },
    Pread {
        slot: usize,
        len: usize,
        off: Off,
        buf: Buf,
    },
    Pwrite {
        slot: usize,
        len: usize,
        off: Off,
        buf: Buf,
        seed: u64,
    },
    Vec {
        slot: usize,
        write: bool,
        kind: VKind,
        iov: Vec<(usize, Buf)>,
        cnt: Cnt,
        bad_array: bool,
        seed: u64,
    },
    Lseek {
        slot: usize,
        off: Off,
        whence: i32,
    },
    Sync {
        slot: usize,
        data: bool,
    },
    Ftruncate {
        slot: usize,
        len: Off,
    },
    Fallocate {
        slot: usize,
        mode: i32,
        off: Off,
        len: i64,
    },
    PosixFallocate {
        slot: usize,
        off: Off,
        len: i64,
    },
    Dup {
        from: usize,
        to: usize,
        how: u8,
    },
    GetFl {
        slot: usize,
    },
    SetFl {
        slot: usize,
        append: bool,
    },
    Fstat {
        slot: usize,
    },
    Check,
}

fn len_s() -> impl Strategy<Value = usize> {
    prop_oneof![
        3 => prop::sample::select(vec![0usize, 1, 2, 63, 64, 100, 4095, 4096, 4097, 8192, 65536, 65537]),
        3 => 0usize..5000,
        1 => 0usize..300 * 1024,
    ]
}

fn off_s(write: bool) -> impl Strategy<Value = Off> {
    let mut huge = vec![
        FAST_LIMIT,
        FAST_LIMIT + 4096,
        1 << 62,
        i64::MAX as u64 - 10,
        i64::MAX as u64,
    ];
    if !write {
        // Reads cross the engine's fast range from below. (Writes that end just below it
        // would make the engine reserve a terabyte: see the report on growth.)
        huge.push(FAST_LIMIT - 10);
    }
    prop_oneof![
        4 => prop::sample::select(vec![
            0u64, 1, 100, 4095, 4096, 4097, 8192, 65536,
            (2 << 20) - 1, 2 << 20, (2 << 20) + 1, (4 << 20) + 7,
        ]).prop_map(Off::At),
        5 => (-5000i64..5000).prop_map(Off::End),
        1 => prop::sample::select(vec![-1i64, -4096, i64::MIN]).prop_map(Off::Neg),
        1 => prop::sample::select(huge).prop_map(Off::Huge),
        1 => (0u64..(8 << 20)).prop_map(Off::At),
    ]
}

fn buf_s() -> impl Strategy<Value = Buf> {
    prop_oneof![
        12 => Just(Buf::Good),
        1 => Just(Buf::Low),
        1 => Just(Buf::Guard),
        1 => Just(Buf::Kernel),
        1 => prop::sample::select(vec![0usize, 1, 100, 4095, 4096, 5000]).prop_map(Buf::Partial),
    ]
}

fn slot_s() -> impl Strategy<Value = usize> {
    0..SLOTS
}

fn rwf_s() -> impl Strategy<Value = i32> {
    prop::sample::select(vec![
        0,
        0,
        libc::RWF_HIPRI,
        libc::RWF_DSYNC,
        libc::RWF_SYNC,
        libc::RWF_NOWAIT,
        libc::RWF_APPEND,
        libc::RWF_APPEND | libc::RWF_DSYNC,
        0x20,    // RWF_NOAPPEND (Linux 6.9)
        1 << 20, // unknown
    ])
}

fn op_s() -> impl Strategy<Value = Op> {
    let open = (
        slot_s(),
        0..FILES,
        prop::sample::select(vec![
            libc::O_RDONLY,
            libc::O_WRONLY,
            libc::O_RDWR,
            libc::O_RDWR,
        ]),
        any::<bool>(),
        prop::bool::weighted(0.15),
        any::<bool>(),
        prop::bool::weighted(0.2),
        0u8..3,
    )
        .prop_map(
            |(slot, file, acc, append, trunc, creat, excl, how)| Op::Open {
                slot,
                file,
                acc,
                append,
                trunc,
                creat,
                excl,
                how,
            },
        );
    let vkind = prop_oneof![
        Just(VKind::Plain),
        off_s(false).prop_map(VKind::P),
        (
            prop_oneof![Just(Off::Neg(-1)), off_s(false), Just(Off::Neg(-2))],
            rwf_s()
        )
            .prop_map(|(o, f)| VKind::P2(o, f)),
    ];
    let vecop = (
        slot_s(),
        any::<bool>(),
        vkind,
        prop::collection::vec((len_s(), buf_s()), 0..5),
        prop_oneof![8 => Just(Cnt::Exact), 1 => Just(Cnt::Neg), 1 => Just(Cnt::Over)],
        prop::bool::weighted(0.05),
        any::<u64>(),
    )
        .prop_map(|(slot, write, kind, iov, cnt, bad_array, seed)| {
            // Pwrite offsets near the fast limit: see off_s.
            let kind = match kind {
                VKind::P(Off::Huge(v)) | VKind::P2(Off::Huge(v), _) if write && v < FAST_LIMIT => {
                    VKind::Plain
                }
                k => k,
            };
            Op::Vec {
                slot,
                write,
                kind,
                iov,
                cnt,
                bad_array,
                seed,
            }
        });
    prop_oneof![
        3 => open,
        2 => slot_s().prop_map(|slot| Op::Close { slot }),
        6 => (slot_s(), len_s(), buf_s()).prop_map(|(slot, len, buf)| Op::Read { slot, len, buf }),
        6 => (slot_s(), len_s(), buf_s(), any::<u64>())
            .prop_map(|(slot, len, buf, seed)| Op::Write { slot, len, buf, seed }),
        2 => (slot_s(), 1usize..150, 1usize..300, any::<u64>())
            .prop_map(|(slot, n, len, seed)| Op::Appends { slot, n, len, seed }),
        5 => (slot_s(), len_s(), off_s(false), buf_s())
            .prop_map(|(slot, len, off, buf)| Op::Pread { slot, len, off, buf }),
        5 => (slot_s(), len_s(), off_s(true), buf_s(), any::<u64>())
            .prop_map(|(slot, len, off, buf, seed)| Op::Pwrite { slot, len, off, buf, seed }),
        5 => vecop,
        4 => (slot_s(), off_s(false), prop::sample::select(vec![
                libc::SEEK_SET, libc::SEEK_CUR, libc::SEEK_END, libc::SEEK_END,
                libc::SEEK_DATA, libc::SEEK_HOLE, 7,
            ]))
            .prop_map(|(slot, off, whence)| Op::Lseek { slot, off, whence }),
        1 => (slot_s(), any::<bool>()).prop_map(|(slot, data)| Op::Sync { slot, data }),
        2 => (slot_s(), prop_oneof![
                3 => (-5000i64..5000).prop_map(Off::End),
                2 => off_s(true),
            ])
            .prop_map(|(slot, len)| Op::Ftruncate { slot, len }),
        1 => (slot_s(), prop::sample::select(vec![
                0,
                libc::FALLOC_FL_KEEP_SIZE,
                libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
                libc::FALLOC_FL_ZERO_RANGE,
            ]), off_s(true), prop::sample::select(vec![-1i64, 0, 1, 4096, 10000, 1 << 20]))
            .prop_map(|(slot, mode, off, len)| Op::Fallocate { slot, mode, off, len }),
        1 => (slot_s(), off_s(true), prop::sample::select(vec![-1i64, 0, 1, 4096, 70000]))
            .prop_map(|(slot, off, len)| Op::PosixFallocate { slot, off, len }),
        2 => (slot_s(), slot_s(), 0u8..4).prop_map(|(from, to, how)| Op::Dup { from, to, how }),
        1 => slot_s().prop_map(|slot| Op::GetFl { slot }),
        1 => (slot_s(), any::<bool>()).prop_map(|(slot, append)| Op::SetFl { slot, append }),
        1 => slot_s().prop_map(|slot| Op::Fstat { slot }),
        1 => Just(Op::Check),
    ]
}

/// Initial sizes of file 0 (file 1 starts absent).
fn init_s() -> impl Strategy<Value = usize> {
    prop_oneof![
        prop::sample::select(vec![0usize, 1, 4096, 5000, (2 << 20) + 3]),
        0usize..300 * 1024,
    ]
}

// ---------------------------------------------------------------------------------------
// The runner

#[derive(Clone, Copy, Debug)]
struct Slot {
    k: i32,
    e: i32,
    file: usize,
}

/// Per-side buffers with a PROT_NONE page after them (partial buffers), and the write
/// source (shared: only read).
struct Mem {
    k: Guarded,
    e: Guarded,
    src: Guarded,
}

impl Mem {
    fn new() -> Mem {
        Mem {
            k: Guarded::new(320 << 10),
            e: Guarded::new(320 << 10),
            src: Guarded::new(320 << 10),
        }
    }
}

struct Runner<'m> {
    eside: Side,
    dir: Option<tempfile::TempDir>,
    dirfd: i32,
    /// (kernel file A, engine file B) per file.
    paths: [(PathBuf, PathBuf); FILES],
    names: [(CString, CString); FILES],
    slots: [Option<Slot>; SLOTS],
    /// Descriptor numbers a slot last had (closed-descriptor cases).
    stale: [(i32, i32); SLOTS],
    /// Ranges written or resized, per file (regions compared in sparse files).
    touched: [Vec<(u64, u64)>; FILES],
    mem: &'m Mem,
    step: usize,
    /// The engine side runs in failure-atomic mode (a child of `sequences_atomic`), with
    /// the background applier or not.
    atomic: bool,
    applier: bool,
    /// Compare what the files have allocated (st_blocks) after every step: the engine
    /// must allocate exactly what the kernel does. On tmpfs outside atomic mode (the log
    /// applies later); elsewhere only with FLEX_DIFF_BLOCKS=1, as a disk file system's
    /// st_blocks also counts what its own timing decides (ext4's delayed allocation and
    /// extent-tree blocks, xfs's speculative preallocation past the end).
    alloc: bool,
    /// And the SEEK_DATA/SEEK_HOLE extents, on tmpfs. Elsewhere SEEK_DATA also reports
    /// preallocated (unwritten) blocks as data where clean pages are cached over them,
    /// and a fault's readahead caches more of them than the kernel's read.
    extents: bool,
    /// On btrfs: writes whose source faults part way are cut to their good bytes (see
    /// `good_bytes_only`), and SEEK_DATA/SEEK_HOLE at a negative offset search from 0.
    btrfs: bool,
}

/// The data extents of a file as SEEK_DATA/SEEK_HOLE tell them, and its st_blocks.
fn allocation(path: &std::path::Path) -> Result<(u64, Vec<(u64, u64)>), String> {
    use std::os::fd::AsRawFd;
    use std::os::unix::fs::MetadataExt;
    let f = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(x) if x.kind() == std::io::ErrorKind::NotFound => return Ok((0, vec![])),
        Err(x) => return Err(format!("open {}: {x}", path.display())),
    };
    let md = f.metadata().map_err(|x| x.to_string())?;
    let mut v = vec![];
    let mut at = 0u64;
    while at < md.len() {
        let Ok(d) = Side::Kernel.lseek(f.as_raw_fd(), at as i64, libc::SEEK_DATA) else {
            break;
        };
        let h = match Side::Kernel.lseek(f.as_raw_fd(), d, libc::SEEK_HOLE) {
            Ok(h) => h,
            // tmpfs rounds the hole at the end up to a page: when the size lies in the last
            // page below 2^63 that wraps negative (measured on 6.18: a negative offset, not
            // an errno) from any data extent that runs to the end, wherever it starts, for
            // the twin without flex as much as for flex's. The hole is at the size.
            Err(_) if md.len() > (1u64 << 63) - 4096 => md.len() as i64,
            Err(x) => return Err(format!("SEEK_HOLE from {d}: {x}")),
        };
        v.push((d as u64, h as u64));
        at = h as u64;
    }
    Ok((md.blocks(), v))
}

fn on_tmpfs(dir: &std::path::Path) -> bool {
    fs_magic(dir) == Some(libc::TMPFS_MAGIC)
}

const BTRFS_MAGIC: libc::c_long = 0x9123_683e;

/// The file system type (statfs's f_type) of `dir`.
fn fs_magic(dir: &std::path::Path) -> Option<libc::c_long> {
    let p = cstr(dir);
    // SAFETY: statfs is plain old data; `p` is a valid path string.
    unsafe {
        let mut st: libc::statfs = core::mem::zeroed();
        (libc::statfs(p.as_ptr(), &mut st) == 0).then_some(st.f_type as libc::c_long)
    }
}

/// btrfs keeps only the whole pages of a write whose source faults part way (EFAULT when
/// that is none), where flex, as ext4, xfs and tmpfs, keeps every byte it copied (a
/// documented difference). On btrfs such a write is cut to the bytes before the fault,
/// so the rest of the sequence still compares; the other file systems test the faults.
fn good_bytes_only(op: &Op) -> Option<Op> {
    let bad = |b: Buf| matches!(b, Buf::Low | Buf::Guard | Buf::Kernel);
    match op {
        Op::Write {
            slot,
            len,
            buf: Buf::Partial(n),
            seed,
        } if *n < *len && *n > 0 => Some(Op::Write {
            slot: *slot,
            len: *n,
            buf: Buf::Good,
            seed: *seed,
        }),
        Op::Pwrite {
            slot,
            len,
            off,
            buf: Buf::Partial(n),
            seed,
        } if *n < *len && *n > 0 => Some(Op::Pwrite {
            slot: *slot,
            len: *n,
            off: *off,
            buf: Buf::Good,
            seed: *seed,
        }),
        Op::Vec {
            write: true, iov, ..
        } => {
            let mut good = 0usize;
            for (i, &(len, b)) in iov.iter().enumerate() {
                let cut = match b {
                    Buf::Partial(n) if n < len => Some(n),
                    b if bad(b) && len > 0 => Some(0),
                    _ => None,
                };
                let Some(n) = cut else {
                    good += len;
                    continue;
                };
                if good + n == 0 {
                    return None; // nothing copied: EFAULT everywhere
                }
                let mut kept = iov[..i].to_vec();
                if n > 0 {
                    kept.push((n, Buf::Good));
                }
                let mut op = op.clone();
                if let Op::Vec { iov, .. } = &mut op {
                    *iov = kept;
                }
                return Some(op);
            }
            None
        }
        _ => None,
    }
}

/// Whether files in `dir` are on DAX (statx's STATX_ATTR_DAX on the directory).
fn on_dax(dir: &std::path::Path) -> bool {
    let p = cstr(dir);
    // SAFETY: statx is plain old data; `p` is a valid path string.
    unsafe {
        let mut st: libc::statx = core::mem::zeroed();
        libc::statx(
            libc::AT_FDCWD,
            p.as_ptr(),
            0,
            libc::STATX_BASIC_STATS,
            &mut st,
        ) == 0
            && st.stx_attributes & libc::STATX_ATTR_DAX as u64 != 0
    }
}

type Out = Result<(), String>;

fn fail<T>(msg: String) -> Result<T, String> {
    Err(msg)
}

impl<'m> Runner<'m> {
    fn new(eside: Side, mem: &'m Mem) -> Runner<'m> {
        let dir = tempdir();
        let dpath = cstr(dir.path());
        // SAFETY: a valid path string.
        let dirfd = unsafe {
            libc::open(
                dpath.as_ptr(),
                libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC,
            )
        };
        assert!(dirfd >= 0, "open the test directory");
        let atomic = std::env::var_os("FLEX_DIFF_ATOMIC").is_some();
        let tmpfs = on_tmpfs(dir.path());
        let alloc = !atomic
            && (tmpfs || std::env::var_os("FLEX_DIFF_BLOCKS").is_some() && !on_dax(dir.path()));
        let extents = alloc && tmpfs;
        let btrfs = fs_magic(dir.path()) == Some(BTRFS_MAGIC);
        let paths = core::array::from_fn(|i| {
            (
                dir.path().join(format!("k{i}")),
                dir.path().join(format!("e{i}")),
            )
        });
        let names = core::array::from_fn(|i| {
            (
                CString::new(format!("k{i}")).unwrap(),
                CString::new(format!("e{i}")).unwrap(),
            )
        });
        Runner {
            eside,
            dir: Some(dir),
            dirfd,
            paths,
            names,
            slots: [None; SLOTS],
            stale: [(-1, -1); SLOTS],
            touched: Default::default(),
            mem,
            step: 0,
            atomic,
            applier: std::env::var("FLEX_ATOMIC_APPLY").is_ok_and(|v| v == "background"),
            alloc,
            extents,
            btrfs,
        }
    }

    fn cmp(&self, what: &str, k: R, e: R) -> Out {
        if k != e {
            return fail(format!(
                "step {}: {what}: kernel {k:?} engine {e:?}",
                self.step
            ));
        }
        Ok(())
    }

    /// The kernel file's size (A is always exact).
    fn ksize(&self, file: usize) -> u64 {
        std::fs::metadata(&self.paths[file].0)
            .map(|m| m.len())
            .unwrap_or(0)
    }

    /// Descriptors of a slot; a closed slot gives its last numbers if nothing reuses them
    /// (else -1): calls on them must fail with EBADF on both sides.
    fn fds(&self, slot: usize) -> (i32, i32, Option<usize>) {
        if let Some(s) = self.slots[slot] {
            return (s.k, s.e, Some(s.file));
        }
        let (k, e) = self.stale[slot];
        let open = |fd: i32| {
            // SAFETY: F_GETFD takes no argument.
            fd >= 0 && unsafe { libc::fcntl(fd, libc::F_GETFD) } >= 0
        };
        if open(k) || open(e) {
            (-1, -1, None)
        } else {
            (k, e, None)
        }
    }

    fn size_of(&self, file: Option<usize>) -> u64 {
        file.map(|f| self.ksize(f)).unwrap_or(0)
    }

    fn touch(&mut self, file: Option<usize>, off: i64, len: usize) {
        if let Some(f) = file {
            if off >= 0 {
                self.touched[f].push((off as u64, len as u64));
            }
        }
    }

    /// Pointers for a buffer of `len` bytes. Reads get one per side; writes share `src`.
    fn ptrs(&self, buf: Buf, len: usize, write: bool, seed: u64) -> (*mut u8, *mut u8) {
        let fixed = |p: usize| (p as *mut u8, p as *mut u8);
        match buf {
            Buf::Good | Buf::Partial(_) => {
                let n = match buf {
                    Buf::Partial(n) => n.min(len),
                    _ => len,
                };
                if write {
                    let p = self.mem.src.before_guard(n);
                    let data = pattern(seed, n);
                    // SAFETY: `n` writable bytes before the guard page, ours.
                    unsafe { core::ptr::copy_nonoverlapping(data.as_ptr(), p, n) };
                    (p, p)
                } else {
                    self.mem.k.fill(0xaa);
                    self.mem.e.fill(0xaa);
                    (self.mem.k.before_guard(n), self.mem.e.before_guard(n))
                }
            }
            Buf::Low => fixed(8),
            Buf::Guard => {
                let p = self.mem.src.guard_page();
                (p, p)
            }
            Buf::Kernel => fixed(KERNEL_PTR),
        }
    }

    /// Compare the bytes read into the per-side buffers.
    fn cmp_read(&self, what: &str, buf: Buf, len: usize, r: R) -> Out {
        let n = match (buf, r) {
            (Buf::Good, Ok(n)) => n as usize,
            (Buf::Partial(p), Ok(n)) => (n as usize).max(p.min(len)),
            _ => return Ok(()),
        };
        let avail = match buf {
            Buf::Partial(p) => p.min(len),
            _ => len,
        };
        let n = n.min(avail);
        let k = self.mem.k.bytes_before_guard(avail);
        let e = self.mem.e.bytes_before_guard(avail);
        if k[..n] != e[..n] {
            let at = (0..n).find(|&i| k[i] != e[i]).unwrap_or(0);
            return fail(format!(
                "step {}: {what}: data differs at byte {at} of {n}",
                self.step
            ));
        }
        Ok(())
    }

    /// After every step: offsets of every open descriptor, logical sizes.
    fn check_state(&self) -> Out {
        let mut sized = [false; FILES];
        for (i, s) in self.slots.iter().enumerate() {
            let Some(s) = s else { continue };
            let k = Side::Kernel.lseek(s.k, 0, libc::SEEK_CUR);
            let e = self.eside.lseek(s.e, 0, libc::SEEK_CUR);
            self.cmp(&format!("offset of slot {i}"), k, e)?;
            if !sized[s.file] {
                sized[s.file] = true;
                let k = Side::Kernel.fstat_size(s.k);
                let e = self.eside.fstat_size(s.e);
                self.cmp(&format!("fstat size of file {}", s.file), k, e)?;
                // The engine's kernel size may run ahead (trailer), never behind (but in
                // atomic mode, where uncommitted growth lives in the log).
                let raw = raw_size(s.e).unwrap_or(-1);
                if raw < e.unwrap_or(0) && !self.atomic {
                    return fail(format!(
                        "step {}: kernel size of B {raw} below its logical size {e:?}",
                        self.step
                    ));
                }
            }
        }
        self.check_allocation()
    }

    /// The engine allocated exactly what the kernel did: the same st_blocks and the same
    /// data extents (a read fault on a tmpfs hole allocates a page, the kernel's read of
    /// a hole allocates nothing).
    fn check_allocation(&self) -> Out {
        if !self.alloc {
            return Ok(());
        }
        for (file, (a, b)) in self.paths.iter().enumerate() {
            let (ka, kb) = (allocation(a)?, allocation(b)?);
            if ka.0 != kb.0 {
                return fail(format!(
                    "step {}: st_blocks of file {file}: kernel {} engine {}",
                    self.step, ka.0, kb.0
                ));
            }
            if self.extents && ka.1 != kb.1 {
                return fail(format!(
                    "step {}: data extents of file {file}: kernel {:?} engine {:?}",
                    self.step, ka.1, kb.1
                ));
            }
        }
        Ok(())
    }

    fn close_slot(&mut self, slot: usize) -> Out {
        let (k, e, _) = self.fds(slot);
        let rk = Side::Kernel.close(k);
        let re = self.eside.close(e);
        self.cmp(&format!("close slot {slot}"), rk, re)?;
        if let Some(s) = self.slots[slot].take() {
            self.stale[slot] = (s.k, s.e);
        }
        Ok(())
    }

    fn open(&mut self, slot: usize, file: usize, flags: i32, how: u8) -> Out {
        if self.slots[slot].is_some() {
            self.close_slot(slot)?;
        }
        let (rk, re) = match how {
            1 => {
                let (nk, ne) = &self.names[file];
                (
                    Side::Kernel.openat(self.dirfd, nk, flags, 0o644),
                    self.eside.openat(self.dirfd, ne, flags, 0o644),
                )
            }
            2 => {
                let (pk, pe) = (&cstr(&self.paths[file].0), &cstr(&self.paths[file].1));
                (Side::Kernel.creat(pk, 0o644), self.eside.creat(pe, 0o644))
            }
            _ => {
                let (pk, pe) = (&cstr(&self.paths[file].0), &cstr(&self.paths[file].1));
                (
                    Side::Kernel.open(pk, flags, 0o644),
                    self.eside.open(pe, flags, 0o644),
                )
            }
        };
        let ok = |r: R| r.map(|_| 0);
        if ok(rk) != ok(re) {
            // Close whichever succeeded, then report.
            if let Ok(k) = rk {
                Side::Kernel.close(k as i32).ok();
            }
            if let Ok(e) = re {
                self.eside.close(e as i32).ok();
            }
            return fail(format!(
                "step {}: open file {file} flags {flags:#o} how {how}: kernel {rk:?} engine {re:?}",
                self.step
            ));
        }
        if let (Ok(k), Ok(e)) = (rk, re) {
            self.slots[slot] = Some(Slot {
                k: k as i32,
                e: e as i32,
                file,
            });
            if flags & libc::O_TRUNC != 0 || how == 2 {
                self.touched[file].push((0, 0));
            }
        }
        Ok(())
    }

    /// A write past the end whose source faults before its first byte (EFAULT) leaves the
    /// size at the write's offset on tmpfs and ext4 (their write_end runs with nothing
    /// copied). Atomic mode keeps the file as it was, as a failed call should (README,
    /// "Failure-atomic mode"): put the kernel's twin back to the engine's size.
    fn failed_write_growth(&mut self, k: i32, e: i32, rk: R) -> Out {
        if rk != Err(libc::EFAULT) || !self.atomic {
            return Ok(());
        }
        let (sk, se) = (Side::Kernel.fstat_size(k), self.eside.fstat_size(e));
        if let (Ok(sk), Ok(se)) = (sk, se) {
            if sk > se {
                Side::Kernel
                    .ftruncate(k, se)
                    .map_err(|x| format!("step {}: ftruncate the twin: {x}", self.step))?;
            }
        }
        Ok(())
    }

    fn run(&mut self, op: &Op) -> Out {
        match good_bytes_only(op).filter(|_| self.btrfs) {
            Some(op) => self.run_op(&op),
            None => self.run_op(op),
        }
    }

    fn run_op(&mut self, op: &Op) -> Out {
        match *op {
            Op::Open {
                slot,
                file,
                acc,
                append,
                trunc,
                creat,
                excl,
                how,
            } => {
                let mut flags = acc | libc::O_CLOEXEC;
                if append {
                    flags |= libc::O_APPEND;
                }
                if trunc {
                    flags |= libc::O_TRUNC;
                }
                if creat {
                    flags |= libc::O_CREAT;
                    if excl {
                        flags |= libc::O_EXCL;
                    }
                }
                self.open(slot, file, flags, how)
            }
            Op::Close { slot } => self.close_slot(slot),
            Op::Read { slot, len, buf } => {
                let (k, e, _) = self.fds(slot);
                let (pk, pe) = self.ptrs(buf, len, false, 0);
                // SAFETY: the pointers are ours (valid for len, or faulting by design).
                let rk = unsafe { Side::Kernel.read(k, pk, len) };
                // SAFETY: as above.
                let re = unsafe { self.eside.read(e, pe, len) };
                self.cmp("read", rk, re)?;
                self.cmp_read("read", buf, len, rk)
            }
            Op::Write {
                slot,
                len,
                buf,
                seed,
            } => {
                let (k, e, file) = self.fds(slot);
                let pos = Side::Kernel.lseek(k, 0, libc::SEEK_CUR).unwrap_or(0);
                self.touch(file, pos, len);
                let size = self.size_of(file);
                self.touch(file, size as i64, len);
                let (p, _) = self.ptrs(buf, len, true, seed);
                // SAFETY: as for Read.
                let rk = unsafe { Side::Kernel.write(k, p, len) };
                // SAFETY: as above.
                let re = unsafe { self.eside.write(e, p, len) };
                self.cmp("write", rk, re)?;
                self.failed_write_growth(k, e, rk)
            }
            Op::Appends { slot, n, len, seed } => {
                let (k, e, file) = self.fds(slot);
                for i in 0..n {
                    let l = (len + i * 7) % 301;
                    let size = self.size_of(file);
                    let pos = Side::Kernel.lseek(k, 0, libc::SEEK_CUR).unwrap_or(0);
                    self.touch(file, pos, l);
                    self.touch(file, size as i64, l);
                    let (p, _) = self.ptrs(Buf::Good, l, true, seed + i as u64);
                    // SAFETY: as for Read.
                    let rk = unsafe { Side::Kernel.write(k, p, l) };
                    // SAFETY: as above.
                    let re = unsafe { self.eside.write(e, p, l) };
                    self.cmp(&format!("small write {i}"), rk, re)?;
                    if i % 16 == 0 {
                        self.check_state()?;
                    }
                }
                Ok(())
            }
            Op::Pread {
                slot,
                len,
                off,
                buf,
            } => {
                let (k, e, file) = self.fds(slot);
                let off = off.eval(self.size_of(file));
                let (pk, pe) = self.ptrs(buf, len, false, 0);
                // SAFETY: as for Read.
                let rk = unsafe { Side::Kernel.pread(k, pk, len, off) };
                // SAFETY: as above.
                let re = unsafe { self.eside.pread(e, pe, len, off) };
                self.cmp(&format!("pread at {off}"), rk, re)?;
                self.cmp_read("pread", buf, len, rk)
            }
            Op::Pwrite {
                slot,
                len,
                off,
                buf,
                seed,
            } => {
                let (k, e, file) = self.fds(slot);
                let size = self.size_of(file);
                let off = off.eval(size);
                self.touch(file, off, len);
                self.touch(file, size as i64, len);
                let (p, _) = self.ptrs(buf, len, true, seed);
                // SAFETY: as for Read.
                let rk = unsafe { Side::Kernel.pwrite(k, p, len, off) };
                // SAFETY: as above.
                let re = unsafe { self.eside.pwrite(e, p, len, off) };
                self.cmp(&format!("pwrite at {off}"), rk, re)?;
                self.failed_write_growth(k, e, rk)
            }
            Op::Vec {
                slot,
                write,
                kind,
                ref iov,
                cnt,
                bad_array,
                seed,
            } => self.vec_op(slot, write, kind, iov, cnt, bad_array, seed),
            Op::Lseek { slot, off, whence } => {
                let (k, e, file) = self.fds(slot);
                let size = self.size_of(file);
                let off = off.eval(size);
                let rk = Side::Kernel.lseek(k, off, whence);
                let re = self.eside.lseek(e, off, whence);
                if (whence == libc::SEEK_DATA || whence == libc::SEEK_HOLE)
                    && rk != re
                    && !self.extents
                {
                    return self.seek_data_hole(file, k, e, off, whence, size, rk, re);
                }
                self.cmp(&format!("lseek {off} whence {whence}"), rk, re)
            }
            Op::Sync { slot, data } => {
                let (k, e, _) = self.fds(slot);
                let rk = Side::Kernel.fsync(k, data);
                let re = self.eside.fsync(e, data);
                self.cmp("fsync", rk, re)?;
                // Synced: the engine's kernel size is exact (with atomic mode's background
                // applier, once it has applied the commit: later).
                if re.is_ok() && !(self.atomic && self.applier) {
                    self.cmp("kernel size after fsync", raw_size(k), raw_size(e))?;
                }
                Ok(())
            }
            Op::Ftruncate { slot, len } => {
                let (k, e, file) = self.fds(slot);
                let size = self.size_of(file);
                let len = len.eval(size);
                self.touch(file, len, 0);
                self.touch(file, size as i64, 0);
                let rk = Side::Kernel.ftruncate(k, len);
                let re = self.eside.ftruncate(e, len);
                self.cmp(&format!("ftruncate {len}"), rk, re)
            }
            Op::Fallocate {
                slot,
                mode,
                off,
                len,
            } => {
                let (k, e, file) = self.fds(slot);
                let off = off.eval(self.size_of(file));
                self.touch(file, off, len.max(0) as usize);
                let rk = Side::Kernel.fallocate(k, mode, off, len);
                let re = self.eside.fallocate(e, mode, off, len);
                self.cmp(&format!("fallocate mode {mode} {off}+{len}"), rk, re)
            }
            Op::PosixFallocate { slot, off, len } => {
                let (k, e, file) = self.fds(slot);
                let off = off.eval(self.size_of(file));
                self.touch(file, off, len.max(0) as usize);
                let rk = Side::Kernel.posix_fallocate(k, off, len);
                let re = self.eside.posix_fallocate(e, off, len);
                self.cmp(&format!("posix_fallocate {off}+{len}"), rk, re)
            }
            Op::Dup { from, to, how } => self.dup(from, to, how),
            Op::GetFl { slot } => {
                let (k, e, _) = self.fds(slot);
                let rk = Side::Kernel.fcntl(k, libc::F_GETFL, 0);
                let re = self.eside.fcntl(e, libc::F_GETFL, 0);
                self.cmp("F_GETFL", rk, re)
            }
            Op::SetFl { slot, append } => {
                let (k, e, _) = self.fds(slot);
                let cur = Side::Kernel.fcntl(k, libc::F_GETFL, 0).unwrap_or(0) as i32;
                let arg = if append {
                    cur | libc::O_APPEND
                } else {
                    cur & !libc::O_APPEND
                };
                let rk = Side::Kernel.fcntl(k, libc::F_SETFL, arg);
                let re = self.eside.fcntl(e, libc::F_SETFL, arg);
                self.cmp("F_SETFL", rk, re)?;
                let rk = Side::Kernel.fcntl(k, libc::F_GETFL, 0);
                let re = self.eside.fcntl(e, libc::F_GETFL, 0);
                self.cmp("F_GETFL after F_SETFL", rk, re)
            }
            Op::Fstat { slot } => {
                let (k, e, _) = self.fds(slot);
                let rk = Side::Kernel.fstat_size(k);
                let re = self.eside.fstat_size(e);
                self.cmp("fstat", rk, re)
            }
            Op::Check => self.check_contents(),
        }
    }

    fn dup(&mut self, from: usize, to: usize, how: u8) -> Out {
        let (fk, fe, file) = self.fds(from);
        if how == 1 && from != to && self.slots[to].is_some() {
            // dup2 onto an open descriptor: the kernel closes it silently.
            let t = self.slots[to].expect("open");
            let rk = Side::Kernel.dup2(fk, t.k);
            let re = self.eside.dup2(fe, t.e);
            self.cmp("dup2 onto an open descriptor", rk.map(|_| 0), re.map(|_| 0))?;
            if let (Ok(_), Some(file)) = (rk, file) {
                self.slots[to] = Some(Slot {
                    k: t.k,
                    e: t.e,
                    file,
                });
            }
            return Ok(());
        }
        if how == 1 && from == to {
            let rk = Side::Kernel.dup2(fk, fk);
            let re = self.eside.dup2(fe, fe);
            return self.cmp("dup2 onto itself", rk.map(|_| 0), re.map(|_| 0));
        }
        if self.slots[to].is_some() {
            if from == to {
                return Ok(());
            }
            self.close_slot(to)?;
        }
        let (rk, re) = match how {
            0 | 1 => (Side::Kernel.dup(fk), self.eside.dup(fe)),
            _ => {
                let cmd = if how == 2 {
                    libc::F_DUPFD
                } else {
                    libc::F_DUPFD_CLOEXEC
                };
                (
                    Side::Kernel.fcntl(fk, cmd, 100 + to as i32),
                    self.eside.fcntl(fe, cmd, 200 + to as i32),
                )
            }
        };
        self.cmp("dup", rk.map(|_| 0), re.map(|_| 0))?;
        if let (Ok(k), Ok(e)) = (rk, re) {
            let file = file.expect("a dup of an open slot");
            self.slots[to] = Some(Slot {
                k: k as i32,
                e: e as i32,
                file,
            });
        }
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    fn vec_op(
        &mut self,
        slot: usize,
        write: bool,
        kind: VKind,
        iov: &[(usize, Buf)],
        cnt: Cnt,
        bad_array: bool,
        seed: u64,
    ) -> Out {
        let (k, e, file) = self.fds(slot);
        let size = self.size_of(file);
        // Buffers: good ones own their memory; only the first Partial uses the guard.
        let mut owned_k: Vec<Vec<u8>> = Vec::new();
        let mut owned_e: Vec<Vec<u8>> = Vec::new();
        let mut vk = Vec::new();
        let mut ve = Vec::new();
        let mut partial_used = false;
        let mut partial: Option<(usize, usize)> = None; // (index, len)
        for (i, &(len, buf)) in iov.iter().enumerate() {
            let buf = match buf {
                Buf::Partial(_) if partial_used => Buf::Good,
                b => b,
            };
            let (pk, pe) = match buf {
                Buf::Good => {
                    let (a, b) = if write {
                        let d = pattern(seed + i as u64, len);
                        (d.clone(), d)
                    } else {
                        (vec![0xaa; len], vec![0xaa; len])
                    };
                    owned_k.push(a);
                    owned_e.push(b);
                    let pk = owned_k.last_mut().unwrap().as_mut_ptr();
                    let pe = owned_e.last_mut().unwrap().as_mut_ptr();
                    (pk, pe)
                }
                Buf::Partial(_) => {
                    partial_used = true;
                    partial = Some((i, len));
                    self.ptrs(buf, len, write, seed + i as u64)
                }
                b => self.ptrs(b, len, write, 0),
            };
            vk.push(libc::iovec {
                iov_base: pk.cast(),
                iov_len: len,
            });
            ve.push(libc::iovec {
                iov_base: pe.cast(),
                iov_len: len,
            });
        }
        let n = match cnt {
            Cnt::Exact => vk.len() as i32,
            Cnt::Neg => -1,
            Cnt::Over => 1025,
        };
        // Counts beyond the arrays are negative or above IOV_MAX: the kernel (and the engine)
        // reject them before reading the array.
        let (ak, ae) = if bad_array {
            (
                std::ptr::dangling::<libc::iovec>(),
                std::ptr::dangling::<libc::iovec>(),
            )
        } else {
            (vk.as_ptr(), ve.as_ptr())
        };
        let total: usize = iov.iter().map(|x| x.0).sum();
        let pos = Side::Kernel.lseek(k, 0, libc::SEEK_CUR).unwrap_or(0);
        let what;
        // SAFETY (all calls below): the iovec arrays and buffers are ours, valid for their
        // lengths or faulting by design; counts beyond the arrays exceed IOV_MAX or are
        // negative, which the kernel (and the engine) reject before reading the array.
        let (rk, re) = unsafe {
            match (kind, write) {
                (VKind::Plain, false) => {
                    what = "readv".to_string();
                    (Side::Kernel.readv(k, ak, n), self.eside.readv(e, ae, n))
                }
                (VKind::Plain, true) => {
                    what = "writev".to_string();
                    self.touch(file, pos, total);
                    self.touch(file, size as i64, total);
                    (Side::Kernel.writev(k, ak, n), self.eside.writev(e, ae, n))
                }
                (VKind::P(off), w) | (VKind::P2(off, _), w) => {
                    let flags = match kind {
                        VKind::P2(_, f) => Some(f),
                        _ => None,
                    };
                    let off = off.eval(size);
                    what = format!(
                        "{}v{} at {off} flags {flags:?}",
                        if w { "pwrite" } else { "pread" },
                        if flags.is_some() { "2" } else { "" }
                    );
                    if w {
                        self.touch(file, off, total);
                        self.touch(file, pos, total);
                        self.touch(file, size as i64, total);
                        (
                            Side::Kernel.pwritev(k, ak, n, off, flags),
                            self.eside.pwritev(e, ae, n, off, flags),
                        )
                    } else {
                        (
                            Side::Kernel.preadv(k, ak, n, off, flags),
                            self.eside.preadv(e, ae, n, off, flags),
                        )
                    }
                }
            }
        };
        let what = format!("{what} {:?} cnt {n}", iov);
        self.cmp(&what, rk, re)?;
        if write {
            self.failed_write_growth(k, e, rk)?;
        }
        if write {
            return Ok(());
        }
        // Compare what was read, buffer by buffer.
        let Ok(mut left) = rk.map(|v| v as usize) else {
            return Ok(());
        };
        let mut good = 0;
        for (i, &(len, buf)) in iov.iter().enumerate() {
            if left == 0 {
                break;
            }
            let m = left.min(len);
            if partial.map(|p| p.0) == Some(i) {
                self.cmp_read(&what, buf, len, Ok(m as i64))?;
            } else if matches!(buf, Buf::Good | Buf::Partial(_)) {
                let (a, b) = (&owned_k[good], &owned_e[good]);
                if a[..m] != b[..m] {
                    return fail(format!(
                        "step {}: {what}: data of iovec {i} differs",
                        self.step
                    ));
                }
            }
            if matches!(buf, Buf::Good | Buf::Partial(_)) && partial.map(|p| p.0) != Some(i) {
                good += 1;
            }
            left -= m;
        }
        Ok(())
    }

    /// SEEK_DATA/SEEK_HOLE may legitimately differ outside tmpfs and in atomic mode: a
    /// file system may report a hole as data (lseek(2)), cached clean pages over
    /// preallocated blocks count as data, and the engine's file has holes allocated in
    /// atomic mode and on DAX (growth reserves blocks; the log applies whole ranges).
    /// Both answers must be consistent with the bytes; then the engine's offset is set
    /// to the kernel's so the sequence goes on.
    #[allow(clippy::too_many_arguments)]
    fn seek_data_hole(
        &self,
        file: Option<usize>,
        k: i32,
        e: i32,
        off: i64,
        whence: i32,
        size: u64,
        rk: R,
        re: R,
    ) -> Out {
        let what = format!(
            "lseek {off} {} (size {size})",
            if whence == libc::SEEK_DATA {
                "SEEK_DATA"
            } else {
                "SEEK_HOLE"
            }
        );
        let Some(file) = file else {
            return self.cmp(&what, rk, re);
        };
        let f = std::fs::File::open(&self.paths[file].0).map_err(|x| x.to_string())?;
        // Are A's bytes in [a, b) all zero? Only A's data regions (the kernel's answer on
        // A) need reading: its holes read as zeros.
        let zeros = |a: u64, b: u64| -> bool {
            use std::os::fd::AsRawFd;
            let mut at = a;
            let mut buf = vec![0u8; 1 << 16];
            while at < b {
                let Ok(d) = Side::Kernel.lseek(f.as_raw_fd(), at as i64, libc::SEEK_DATA) else {
                    return true;
                };
                let d = d as u64;
                if d >= b {
                    return true;
                }
                let h = Side::Kernel
                    .lseek(f.as_raw_fd(), d as i64, libc::SEEK_HOLE)
                    .map_or(b, |h| (h as u64).min(b));
                at = d;
                while at < h {
                    let n = ((h - at) as usize).min(buf.len());
                    let got = f.read_at(&mut buf[..n], at).unwrap_or(0);
                    if got == 0 {
                        return true;
                    }
                    if buf[..got].iter().any(|&x| x != 0) {
                        return false;
                    }
                    at += got as u64;
                }
            }
            true
        };
        let off = if self.btrfs { off.max(0) } else { off };
        let valid = |r: R| -> bool {
            if off < 0 || off as u64 >= size {
                return r == Err(libc::ENXIO);
            }
            let o = off as u64;
            match (whence == libc::SEEK_DATA, r) {
                (true, Ok(p)) => (p as u64) >= o && (p as u64) < size && zeros(o, p as u64),
                (true, Err(libc::ENXIO)) => zeros(o, size),
                (false, Ok(p)) => {
                    let p = p as u64;
                    p >= o && p <= size && (p == size || zeros(p, p + 1))
                }
                _ => false,
            }
        };
        if !valid(rk) || !valid(re) {
            return fail(format!(
                "step {}: {what}: kernel {rk:?} engine {re:?} (an answer contradicts the bytes)",
                self.step
            ));
        }
        let kpos = Side::Kernel
            .lseek(k, 0, libc::SEEK_CUR)
            .map_err(|x| x.to_string())?;
        self.eside
            .lseek(e, kpos, libc::SEEK_SET)
            .map_err(|x| format!("resync: {x}"))?;
        Ok(())
    }

    /// Regions to compare of a file of `size` bytes.
    fn regions(&self, file: usize, size: u64) -> Vec<(u64, u64)> {
        if size <= WHOLE {
            return vec![(0, size)];
        }
        let mut v = vec![(0, 16 << 20), (size.saturating_sub(1 << 20), size)];
        for &(o, l) in &self.touched[file] {
            v.push((o.saturating_sub(64 << 10), o.saturating_add(l + (64 << 10))));
        }
        v.into_iter()
            .map(|(a, b)| (a.min(size), b.min(size)))
            .filter(|(a, b)| a < b)
            .collect()
    }

    /// The bytes of each file as the engine serves them equal the kernel file's.
    fn check_contents(&self) -> Out {
        for file in 0..FILES {
            let open = self
                .slots
                .iter()
                .flatten()
                .find(|s| s.file == file)
                .copied();
            let kfile = match std::fs::File::open(&self.paths[file].0) {
                Ok(f) => f,
                Err(_) => continue,
            };
            let size = self.ksize(file);
            // Read B through the engine: a readable open descriptor, else a fresh one.
            let readable = self.slots.iter().flatten().find(|s| {
                s.file == file
                    && Side::Kernel
                        .fcntl(s.k, libc::F_GETFL, 0)
                        .is_ok_and(|f| f as i32 & libc::O_ACCMODE != libc::O_WRONLY)
            });
            let (efd, fresh) = match readable {
                Some(s) => (s.e, false),
                None => {
                    let p = cstr(&self.paths[file].1);
                    match self.eside.open(&p, libc::O_RDONLY | libc::O_CLOEXEC, 0) {
                        Ok(fd) => (fd as i32, true),
                        Err(x) => return fail(format!("open B{file} for checking: {x}")),
                    }
                }
            };
            if let Some(s) = open {
                self.cmp("size at check", Ok(size as i64), self.eside.fstat_size(s.e))?;
            }
            let mut res = Ok(());
            'regions: for (a, b) in self.regions(file, size) {
                let mut at = a;
                while at < b {
                    let n = ((b - at) as usize).min(1 << 20);
                    let mut kb = vec![0u8; n];
                    let mut eb = vec![0u8; n];
                    let kn = kfile.read_at(&mut kb, at).map_err(|x| x.to_string())?;
                    // SAFETY: `eb` is our buffer of n bytes.
                    let en = unsafe { self.eside.pread(efd, eb.as_mut_ptr(), n, at as i64) };
                    if en != Ok(kn as i64) || kb[..kn] != eb[..kn] {
                        let first = (0..kn).find(|&i| kb[i] != eb[i]);
                        res = fail(format!(
                            "step {}: file {file} bytes at {at}+{n}: kernel {kn} engine {en:?}, first difference at {first:?}",
                            self.step
                        ));
                        break 'regions;
                    }
                    if kn == 0 {
                        break;
                    }
                    at += kn as u64;
                }
            }
            if fresh {
                self.eside.close(efd).ok();
            }
            res?;
        }
        Ok(())
    }

    /// Close everything, then the kernel's view of both files must be identical.
    fn finish(&mut self) -> Out {
        self.check_contents()?;
        for s in 0..SLOTS {
            if self.slots[s].is_some() {
                self.close_slot(s)?;
            }
        }
        for file in 0..FILES {
            let (a, b) = &self.paths[file];
            let ma = std::fs::metadata(a).map(|m| m.len()).ok();
            let mb = std::fs::metadata(b).map(|m| m.len()).ok();
            if ma != mb {
                return fail(format!(
                    "after close: kernel sizes of file {file}: A {ma:?} B {mb:?}"
                ));
            }
            let Some(size) = ma else { continue };
            let (fa, fb) = (
                std::fs::File::open(a).map_err(|x| x.to_string())?,
                std::fs::File::open(b).map_err(|x| x.to_string())?,
            );
            for (x, y) in self.regions(file, size) {
                let mut at = x;
                while at < y {
                    let n = ((y - at) as usize).min(1 << 20);
                    let mut ka = vec![0u8; n];
                    let mut kb = vec![0u8; n];
                    let na = fa.read_at(&mut ka, at).map_err(|x| x.to_string())?;
                    let nb = fb.read_at(&mut kb, at).map_err(|x| x.to_string())?;
                    if na != nb || ka[..na] != kb[..nb] {
                        return fail(format!(
                            "after close: file {file} differs in {at}+{n} (read {na} vs {nb})"
                        ));
                    }
                    if na == 0 {
                        break;
                    }
                    at += na as u64;
                }
            }
        }
        Ok(())
    }
}

impl Drop for Runner<'_> {
    fn drop(&mut self) {
        for s in self.slots.iter_mut() {
            if let Some(s) = s.take() {
                Side::Kernel.close(s.k).ok();
                self.eside.close(s.e).ok();
            }
        }
        // SAFETY: our directory descriptor.
        unsafe { libc::close(self.dirfd) };
        if let Some(d) = self.dir.take() {
            remove_dir(d);
        }
    }
}

/// Run one sequence; the error names the step and the difference.
fn run_sequence(eside: Side, mem: &Mem, init: usize, ops: &[Op]) -> Out {
    let mut r = Runner::new(eside, mem);
    let data = pattern(init as u64 ^ 0x5555, init);
    std::fs::write(&r.paths[0].0, &data).map_err(|x| x.to_string())?;
    std::fs::write(&r.paths[0].1, &data).map_err(|x| x.to_string())?;
    r.open(0, 0, libc::O_RDWR | libc::O_CLOEXEC, 0)?;
    r.check_state()?;
    let trace = std::env::var_os("FLEX_DIFF_TRACE").is_some();
    for (i, op) in ops.iter().enumerate() {
        r.step = i + 1;
        if trace {
            eprintln!("step {}: {op:?}", r.step);
        }
        r.run(op).map_err(|m| format!("{m}\n  op: {op:?}"))?;
        r.check_state()
            .map_err(|m| format!("{m}\n  after op: {op:?}"))?;
    }
    r.step = ops.len() + 1;
    r.finish()
}

fn sequences(eside: Side, default_cases: u32) {
    let _g = serial();
    let mem = Mem::new();
    let mut runner = TestRunner::new(Config {
        cases: cases(default_cases),
        failure_persistence: None,
        max_shrink_iters: 2000,
        ..Config::default()
    });
    let strat = (init_s(), prop::collection::vec(op_s(), 1..60));
    let r = runner.run(&strat, |(init, ops)| {
        run_sequence(eside, &mem, init, &ops).map_err(TestCaseError::fail)
    });
    if let Err(e) = r {
        panic!("{e}");
    }
}

/// Sequences on descriptors opened with O_FLEX: mapped at once.
#[test]
fn sequences_mapped() {
    sequences(Side::Engine { explicit: true }, 256);
}

/// The same through FLEX_PATHS with lazy adoption (the first IO calls are served by the
/// kernel, then the file is mapped) and small growth steps. The engine reads its
/// configuration once per process, so this runs in a child process of this test binary.
#[test]
fn sequences_lazy() {
    if std::env::var_os("FLEX_DIFF_CHILD").is_some() {
        sequences(Side::Engine { explicit: false }, 32);
        return;
    }
    run_child(
        "sequences_lazy",
        "lazy",
        &[("FLEX_ADOPT_AFTER", "3"), ("FLEX_GROW_MIN", "64k")],
    );
}

/// Run `test` of this binary in a child process (the engine reads its configuration once
/// per process) with FLEX_PATHS on the test directory and `envs`; it must pass.
fn run_child(test: &str, name: &str, envs: &[(&str, &str)]) {
    let exe = std::env::current_exe().expect("current exe");
    let out = std::process::Command::new(exe)
        .args(["--exact", test, "--nocapture", "--test-threads=1"])
        .env("FLEX_DIFF_CHILD", "1")
        .env("FLEX_PATHS", base_dir())
        .envs(envs.iter().copied())
        .output()
        .expect("run the child");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success() && text.contains("1 passed"),
        "child ({name}) failed:\n{text}"
    );
}

/// The same sequences with every managed file in failure-atomic mode (FLEX_MODE=atomic),
/// once per logging policy, then with the background applier and with per-write
/// transactions (FLEX_ATOMIC=write): atomic mode keeps the kernel's semantics for this
/// process (the file's own reads, sizes and offsets see its uncommitted operations), and
/// after the last close the file is the kernel's. Child processes, as `sequences_lazy`.
#[test]
fn sequences_atomic() {
    if std::env::var_os("FLEX_DIFF_CHILD").is_some() {
        sequences(Side::Engine { explicit: false }, 24);
        return;
    }
    let variants: [(&str, (&str, &str)); 5] = [
        ("redo", ("FLEX_ATOMIC_POLICY", "redo")),
        ("undo", ("FLEX_ATOMIC_POLICY", "undo")),
        ("auto", ("FLEX_ATOMIC_POLICY", "auto")),
        ("background", ("FLEX_ATOMIC_APPLY", "background")),
        ("per-write", ("FLEX_ATOMIC", "write")),
    ];
    // The DAX guest runs the policies only (the other variants do not depend on the file
    // system, and the software CPU is slow).
    let n = if std::env::var_os("FLEX_DIFF_ATOMIC_POLICIES_ONLY").is_some() {
        3
    } else {
        variants.len()
    };
    for (i, (name, var)) in variants.into_iter().take(n).enumerate() {
        let mut envs = vec![
            ("FLEX_DIFF_ATOMIC", "1"),
            ("FLEX_MODE", "atomic"),
            ("FLEX_ATOMIC_LOG", "256k"),
            var,
        ];
        if i >= 3 && std::env::var_os("PROPTEST_CASES").is_none() {
            // The applier and per-write variants: half the cases.
            envs.push(("PROPTEST_CASES", "12"));
        }
        run_child("sequences_atomic", name, &envs);
    }
}

/// Sequences that once differed (each names the engine bug it found), kept as fixed cases.
#[test]
fn regressions() {
    let _g = serial();
    run_regressions(Side::Engine { explicit: true });
}

/// The fixed cases again with every managed file in failure-atomic mode, once per logging
/// policy and with the background applier (child processes, as `sequences_atomic`).
#[test]
fn regressions_atomic() {
    if std::env::var_os("FLEX_DIFF_CHILD").is_some() {
        run_regressions(Side::Engine { explicit: false });
        return;
    }
    let _g = serial();
    for (name, var) in [
        ("redo", ("FLEX_ATOMIC_POLICY", "redo")),
        ("undo", ("FLEX_ATOMIC_POLICY", "undo")),
        ("background", ("FLEX_ATOMIC_APPLY", "background")),
    ] {
        let envs = [
            ("FLEX_DIFF_ATOMIC", "1"),
            ("FLEX_MODE", "atomic"),
            ("FLEX_ATOMIC_LOG", "256k"),
            var,
        ];
        run_child("regressions_atomic", name, &envs);
    }
}

fn run_regressions(side: Side) {
    let mem = Mem::new();
    let rw = |slot, acc, append| Op::Open {
        slot,
        file: 0,
        acc,
        append,
        trunc: false,
        creat: false,
        excl: false,
        how: 0,
    };
    let vec_op = |write, kind, iov: Vec<(usize, Buf)>, cnt| Op::Vec {
        slot: 0,
        write,
        kind,
        iov,
        cnt,
        bad_array: false,
        seed: 1,
    };
    let cases: Vec<(&str, usize, Vec<Op>)> = vec![
        (
            "preadv2: offset < -1 is EINVAL before the flags are looked at",
            0,
            vec![vec_op(
                false,
                VKind::P2(Off::Neg(-4096), 0x20),
                vec![],
                Cnt::Exact,
            )],
        ),
        (
            "preadv2: iovec errors come before flag errors; a zero total returns 0",
            100,
            vec![
                vec_op(
                    false,
                    VKind::P2(Off::At(0), 1 << 20),
                    vec![(1, Buf::Good)],
                    Cnt::Neg,
                ),
                vec_op(
                    false,
                    VKind::P2(Off::At(0), 1 << 20),
                    vec![(0, Buf::Good)],
                    Cnt::Exact,
                ),
                vec_op(true, VKind::P2(Off::Neg(-1), 1 << 20), vec![], Cnt::Exact),
            ],
        ),
        (
            "RWF_NOWAIT: refused where the file system refuses it (tmpfs)",
            100,
            vec![
                vec_op(
                    false,
                    VKind::P2(Off::Neg(-1), libc::RWF_NOWAIT),
                    vec![(1, Buf::Good)],
                    Cnt::Exact,
                ),
                vec_op(
                    true,
                    VKind::P2(Off::At(5), libc::RWF_NOWAIT),
                    vec![(1, Buf::Good)],
                    Cnt::Exact,
                ),
            ],
        ),
        (
            "RWF_NOAPPEND: writes at the offset on an O_APPEND descriptor; with RWF_APPEND EINVAL",
            5000,
            vec![
                rw(0, libc::O_RDWR, true),
                vec_op(
                    true,
                    VKind::P2(Off::At(10), 0x20),
                    vec![(100, Buf::Good)],
                    Cnt::Exact,
                ),
                vec_op(
                    true,
                    VKind::P2(Off::Neg(-1), 0x20),
                    vec![(100, Buf::Good)],
                    Cnt::Exact,
                ),
                vec_op(
                    true,
                    VKind::P2(Off::At(10), 0x20 | libc::RWF_APPEND),
                    vec![(1, Buf::Good)],
                    Cnt::Exact,
                ),
            ],
        ),
        (
            "reads beyond the mapping of a sparse file of 2^62 bytes (was EFBIG)",
            0,
            vec![
                Op::Pwrite {
                    slot: 0,
                    len: 1,
                    off: Off::Huge(1 << 62),
                    buf: Buf::Good,
                    seed: 0,
                },
                Op::Pread {
                    slot: 0,
                    len: 100,
                    off: Off::At(3 << 20),
                    buf: Buf::Good,
                },
                Op::Pwrite {
                    slot: 0,
                    len: 100,
                    off: Off::At(5 << 20),
                    buf: Buf::Good,
                    seed: 2,
                },
                Op::Check,
            ],
        ),
        (
            "writes into a file of nearly 2^63 bytes (mapping size overflowed)",
            0,
            vec![
                Op::Ftruncate {
                    slot: 0,
                    len: Off::Huge(i64::MAX as u64 - 10),
                },
                Op::Pwrite {
                    slot: 0,
                    len: 100,
                    off: Off::At(3 << 20),
                    buf: Buf::Good,
                    seed: 2,
                },
                Op::Pread {
                    slot: 0,
                    len: 100,
                    off: Off::At(3 << 20),
                    buf: Buf::Good,
                },
            ],
        ),
        (
            "atomic: an O_APPEND write at the end of a file of nearly 2^63 bytes",
            0,
            vec![
                Op::Ftruncate {
                    slot: 0,
                    len: Off::Huge(i64::MAX as u64 - 10),
                },
                Op::SetFl {
                    slot: 0,
                    append: true,
                },
                Op::Write {
                    slot: 0,
                    len: 1,
                    buf: Buf::Good,
                    seed: 0,
                },
                Op::Fstat { slot: 0 },
            ],
        ),
        (
            "SEEK_DATA/SEEK_HOLE with a negative offset: ENXIO (was EINVAL)",
            100,
            vec![
                Op::Lseek {
                    slot: 0,
                    off: Off::Neg(-1),
                    whence: libc::SEEK_DATA,
                },
                Op::Lseek {
                    slot: 0,
                    off: Off::Neg(-4096),
                    whence: libc::SEEK_HOLE,
                },
            ],
        ),
        (
            "kernel-half buffers: EFAULT even for zero lengths and at end of file",
            0,
            vec![
                Op::Pread {
                    slot: 0,
                    len: 0,
                    off: Off::At(0),
                    buf: Buf::Kernel,
                },
                Op::Read {
                    slot: 0,
                    len: 10,
                    buf: Buf::Kernel,
                },
                Op::Write {
                    slot: 0,
                    len: 0,
                    buf: Buf::Kernel,
                    seed: 0,
                },
                vec_op(
                    false,
                    VKind::Plain,
                    vec![(0, Buf::Good), (0, Buf::Kernel)],
                    Cnt::Exact,
                ),
            ],
        ),
        (
            "pwrite on O_APPEND checks its offset first (EINVAL at 2^63 - 1)",
            0,
            vec![
                rw(0, libc::O_WRONLY, true),
                Op::Pwrite {
                    slot: 0,
                    len: 1,
                    off: Off::Huge(i64::MAX as u64),
                    buf: Buf::Good,
                    seed: 0,
                },
            ],
        ),
        (
            "fallocate on a read-only descriptor: the kernel's order (EINVAL before EBADF)",
            0,
            vec![
                rw(0, libc::O_RDONLY, false),
                Op::Fallocate {
                    slot: 0,
                    mode: 0,
                    off: Off::At(0),
                    len: -1,
                },
                Op::Fallocate {
                    slot: 0,
                    mode: 0,
                    off: Off::At(0),
                    len: 10,
                },
            ],
        ),
        (
            "O_APPEND at the largest file size: the count is cut, not EINVAL",
            0,
            vec![
                rw(0, libc::O_WRONLY, true),
                Op::Ftruncate {
                    slot: 0,
                    len: Off::Huge(i64::MAX as u64 - 10),
                },
                Op::Write {
                    slot: 0,
                    len: 63,
                    buf: Buf::Good,
                    seed: 0,
                },
                Op::Write {
                    slot: 0,
                    len: 63,
                    buf: Buf::Good,
                    seed: 0,
                },
            ],
        ),
        (
            "reads over holes allocate nothing (tmpfs: a read fault on a hole allocates)",
            (300 << 10) + 5,
            vec![
                // Sparse writes far apart, an ftruncate-extend, reads across the holes.
                Op::Ftruncate {
                    slot: 0,
                    len: Off::At(8 << 20),
                },
                Op::Pwrite {
                    slot: 0,
                    len: 5000,
                    off: Off::At((4 << 20) + 7),
                    buf: Buf::Good,
                    seed: 3,
                },
                Op::Pread {
                    slot: 0,
                    len: 300 << 10,
                    off: Off::At(1 << 20),
                    buf: Buf::Good,
                },
                Op::Pread {
                    slot: 0,
                    len: 65537,
                    off: Off::At((4 << 20) - 4096),
                    buf: Buf::Good,
                },
                Op::Pwrite {
                    slot: 0,
                    len: 100,
                    off: Off::At((6 << 20) + 1),
                    buf: Buf::Good,
                    seed: 4,
                },
                Op::Ftruncate {
                    slot: 0,
                    len: Off::End(3 << 20),
                },
                Op::Lseek {
                    slot: 0,
                    off: Off::At(0),
                    whence: libc::SEEK_SET,
                },
                Op::Read {
                    slot: 0,
                    len: 300 << 10,
                    buf: Buf::Good,
                },
                Op::Pread {
                    slot: 0,
                    len: 300 << 10,
                    off: Off::End(-(200 << 10)),
                    buf: Buf::Good,
                },
                Op::Lseek {
                    slot: 0,
                    off: Off::At(4096),
                    whence: libc::SEEK_DATA,
                },
                Op::Lseek {
                    slot: 0,
                    off: Off::At((4 << 20) + 10),
                    whence: libc::SEEK_HOLE,
                },
                Op::Pwrite {
                    slot: 0,
                    len: 1,
                    off: Off::At((2 << 20) + 4095),
                    buf: Buf::Good,
                    seed: 5,
                },
                Op::Pread {
                    slot: 0,
                    len: 300 << 10,
                    off: Off::At(2 << 20),
                    buf: Buf::Good,
                },
                Op::Ftruncate {
                    slot: 0,
                    len: Off::At((5 << 20) + 3),
                },
                Op::Ftruncate {
                    slot: 0,
                    len: Off::At(9 << 20),
                },
                Op::Pread {
                    slot: 0,
                    len: 300 << 10,
                    off: Off::At(5 << 20),
                    buf: Buf::Good,
                },
                Op::Check,
            ],
        ),
        (
            "SEEK_DATA over a terabyte hole (the checker must stay sparse)",
            0,
            vec![
                Op::Pwrite {
                    slot: 0,
                    len: 1923,
                    off: Off::Huge(FAST_LIMIT),
                    buf: Buf::Good,
                    seed: 0,
                },
                Op::Write {
                    slot: 0,
                    len: 3440,
                    buf: Buf::Good,
                    seed: 1,
                },
                Op::Lseek {
                    slot: 0,
                    off: Off::At(4096),
                    whence: libc::SEEK_DATA,
                },
                Op::Lseek {
                    slot: 0,
                    off: Off::At(4096),
                    whence: libc::SEEK_HOLE,
                },
            ],
        ),
        (
            "a data extent of two pages that ends in the last page below 2^63 (CI, session 7)",
            0,
            vec![
                Op::PosixFallocate {
                    slot: 0,
                    off: Off::Huge(1 << 62),
                    len: 1,
                },
                Op::Lseek {
                    slot: 0,
                    off: Off::End(-4099),
                    whence: libc::SEEK_END,
                },
                Op::Appends {
                    slot: 0,
                    n: 1,
                    len: 2,
                    seed: 0,
                },
            ],
        ),
    ];
    let mut failed = Vec::new();
    // Off tmpfs a RWF_NOWAIT write's answer depends on time, not on the file: it is EAGAIN
    // when the write would have to update the file's timestamps (it cannot wait for that),
    // so twin files written a coarse clock tick apart get different answers (seen on
    // xfs-DAX). That case is tmpfs's.
    let tmpfs = on_tmpfs(&base_dir());
    for (name, init, ops) in &cases {
        if name.starts_with("RWF_NOWAIT") && !tmpfs {
            continue;
        }
        if let Err(e) = run_sequence(side, &mem, *init, ops) {
            failed.push(format!("{name}:\n  {e}"));
        }
    }
    assert!(failed.is_empty(), "{}", failed.join("\n"));
}

// ---------------------------------------------------------------------------------------
// Threads

/// How the threads of one side reach the shared file.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Share {
    /// One descriptor for all threads (shared offset).
    OneFd,
    /// A descriptor per thread.
    OwnFd,
    /// A `flexio::File` per thread (engine side; the kernel side uses `std::fs::File`).
    Api,
}

/// Thread `t` of `n` works on bytes [t*span, (t+1)*span) only: pwrite/pwritev/pread/preadv,
/// reads checked against the thread's own model of its range.
fn disjoint_worker(
    side: Side,
    share: Share,
    fd: i32,
    path: &std::path::Path,
    t: usize,
    span: usize,
    seed: u64,
) -> Result<(), String> {
    let base = t * span;
    let mut model = vec![0u8; span];
    let mut written_end = 0usize; // relative to base
    let fd = match share {
        Share::OneFd => fd,
        Share::OwnFd => side
            .open(&cstr(path), libc::O_RDWR | libc::O_CLOEXEC, 0)
            .map_err(|e| format!("open: {e}"))? as i32,
        Share::Api => -1,
    };
    let api = if share != Share::Api {
        None
    } else if side.is_engine() {
        Some(Ok(flexio::File::options()
            .read(true)
            .write(true)
            .open(path)
            .map_err(|e| e.to_string())?))
    } else {
        Some(Err(std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .map_err(|e| e.to_string())?))
    };
    let mut rng = fastrand::Rng::with_seed(seed ^ t as u64);
    let mut next = move |m: usize| rng.usize(..m);
    for i in 0..40 {
        let off = next(span);
        let len = [0, 1, 4095, 4096, 4097, 65536, next(20000)][next(7)].min(span - off);
        let at = (base + off) as u64;
        match next(4) {
            0 | 1 => {
                let data = pattern(seed ^ ((t as u64) << 32) ^ i, len);
                let r = match &api {
                    Some(Ok(f)) => f
                        .write_at(&data, at)
                        .map(|n| n as i64)
                        .map_err(|e| e.raw_os_error().unwrap_or(0)),
                    Some(Err(f)) => f
                        .write_at(&data, at)
                        .map(|n| n as i64)
                        .map_err(|e| e.raw_os_error().unwrap_or(0)),
                    None if i % 2 == 0 => {
                        // SAFETY: `data` is our buffer of len bytes.
                        unsafe { side.pwrite(fd, data.as_ptr(), len, at as i64) }
                    }
                    None => {
                        let h = len / 2;
                        let iov = [
                            libc::iovec {
                                iov_base: data.as_ptr() as *mut _,
                                iov_len: h,
                            },
                            // SAFETY: within `data`.
                            libc::iovec {
                                iov_base: unsafe { data.as_ptr().add(h) } as *mut _,
                                iov_len: len - h,
                            },
                        ];
                        // SAFETY: two iovecs over our buffer.
                        unsafe { side.pwritev(fd, iov.as_ptr(), 2, at as i64, None) }
                    }
                };
                if r != Ok(len as i64) {
                    return Err(format!("thread {t} op {i}: write of {len} at {at}: {r:?}"));
                }
                model[off..off + len].copy_from_slice(&data);
                if len > 0 {
                    written_end = written_end.max(off + len);
                }
            }
            _ => {
                let mut buf = vec![0x55u8; len];
                let r = match &api {
                    Some(Ok(f)) => f
                        .read_at(&mut buf, at)
                        .map(|n| n as i64)
                        .map_err(|e| e.raw_os_error().unwrap_or(0)),
                    Some(Err(f)) => f
                        .read_at(&mut buf, at)
                        .map(|n| n as i64)
                        .map_err(|e| e.raw_os_error().unwrap_or(0)),
                    None if i % 2 == 0 => {
                        // SAFETY: our buffer of len bytes.
                        unsafe { side.pread(fd, buf.as_mut_ptr(), len, at as i64) }
                    }
                    None => {
                        let iov = [libc::iovec {
                            iov_base: buf.as_mut_ptr().cast(),
                            iov_len: len,
                        }];
                        // SAFETY: one iovec over our buffer.
                        unsafe { side.preadv(fd, iov.as_ptr(), 1, at as i64, None) }
                    }
                };
                let n =
                    r.map_err(|e| format!("thread {t} op {i}: read at {at}: errno {e}"))? as usize;
                // Our own writes make the file at least this long (others only add).
                let must = written_end.saturating_sub(off).min(len);
                if n < must || n > len {
                    return Err(format!(
                        "thread {t} op {i}: read {n} of {len} at {at}, expected at least {must}"
                    ));
                }
                if buf[..n] != model[off..off + n] {
                    let d = (0..n).find(|&j| buf[j] != model[off + j]).unwrap_or(0);
                    let end = (0..n)
                        .rev()
                        .find(|&j| buf[j] != model[off + j])
                        .unwrap_or(0);
                    return Err(format!(
                        "thread {t} op {i}: read {n} of {len} at {at}: bytes {d}..={end} differ from the model (got {:?}, want {:?})",
                        &buf[d..(d + 8).min(n)],
                        &model[off + d..off + (d + 8).min(n)]
                    ));
                }
            }
        }
    }
    if share == Share::OwnFd {
        side.close(fd).map_err(|e| format!("close: {e}"))?;
    }
    Ok(())
}

fn disjoint_run(
    side: Side,
    share: Share,
    path: &std::path::Path,
    n: usize,
    span: usize,
    seed: u64,
) -> Result<(), String> {
    let fd = side
        .open(
            &cstr(path),
            libc::O_RDWR | libc::O_CREAT | libc::O_CLOEXEC,
            0o644,
        )
        .map_err(|e| format!("open: {e}"))? as i32;
    let res: Vec<Result<(), String>> = std::thread::scope(|s| {
        let hs: Vec<_> = (0..n)
            .map(|t| s.spawn(move || disjoint_worker(side, share, fd, path, t, span, seed)))
            .collect();
        hs.into_iter()
            .map(|h| h.join().unwrap_or_else(|_| Err("thread panicked".into())))
            .collect()
    });
    let size = side.fstat_size(fd);
    side.close(fd).map_err(|e| format!("close: {e}"))?;
    for r in res {
        r?;
    }
    let after = std::fs::metadata(path)
        .map(|m| m.len() as i64)
        .map_err(|e| e.to_string())?;
    if size != Ok(after) {
        return Err(format!(
            "logical size {size:?} before close, kernel size {after} after"
        ));
    }
    Ok(())
}

/// Threads on disjoint ranges of one file, through the kernel and through the engine:
/// identical final bytes.
#[test]
fn threads_disjoint_ranges() {
    let _g = serial();
    let mut runner = TestRunner::new(Config {
        cases: cases(6),
        failure_persistence: None,
        ..Config::default()
    });
    let strat = (
        2usize..=4,
        prop::sample::select(vec![4096usize, 300_001, 700_000, 1 << 20]),
        prop::sample::select(vec![Share::OneFd, Share::OwnFd, Share::Api]),
        any::<u64>(),
    );
    let r = runner.run(&strat, |(n, span, share, seed)| {
        let dir = tempdir();
        let (a, b) = (dir.path().join("k"), dir.path().join("e"));
        let out = disjoint_run(Side::Kernel, share, &a, n, span, seed)
            .map_err(|e| format!("kernel side (checker): {e}"))
            .and_then(|()| {
                disjoint_run(Side::Engine { explicit: true }, share, &b, n, span, seed)
                    .map_err(|e| format!("engine side: {e}"))
            })
            .and_then(|()| {
                let (ka, kb) = (
                    std::fs::read(&a).map_err(|e| e.to_string())?,
                    std::fs::read(&b).map_err(|e| e.to_string())?,
                );
                if ka != kb {
                    return Err(format!(
                        "final bytes differ: sizes {} and {}",
                        ka.len(),
                        kb.len()
                    ));
                }
                Ok(())
            });
        remove_dir(dir);
        out.map_err(TestCaseError::fail)
    });
    if let Err(e) = r {
        panic!("{e}");
    }
}

// Records: magic, thread, seq, total length, payload, checksum. Whole and not interleaved
// records can be parsed back one after the other.
const MAGIC: u32 = 0xf1e7_c0de;

fn record(t: u32, seq: u32, payload: usize) -> Vec<u8> {
    let mut r = Vec::with_capacity(payload + 24);
    let total = (payload + 24) as u32;
    r.extend_from_slice(&MAGIC.to_le_bytes());
    r.extend_from_slice(&t.to_le_bytes());
    r.extend_from_slice(&seq.to_le_bytes());
    r.extend_from_slice(&total.to_le_bytes());
    r.extend_from_slice(&pattern(((t as u64) << 32) | seq as u64, payload));
    let sum = r
        .iter()
        .fold(0u64, |a, &b| a.wrapping_mul(31).wrapping_add(b as u64));
    r.extend_from_slice(&sum.to_le_bytes());
    r
}

/// Parse a file of records; every (thread, seq) of `threads` x `per` exactly once.
fn check_records(bytes: &[u8], threads: u32, per: u32) -> Result<(), String> {
    let mut seen = vec![false; (threads * per) as usize];
    let mut at = 0usize;
    let word = |o: usize| u32::from_le_bytes(bytes[o..o + 4].try_into().unwrap());
    while at < bytes.len() {
        if bytes.len() - at < 24 || word(at) != MAGIC {
            return Err(format!("no record at {at} of {}", bytes.len()));
        }
        let (t, seq, total) = (word(at + 4), word(at + 8), word(at + 12) as usize);
        if t >= threads || seq >= per || total < 24 || at + total > bytes.len() {
            return Err(format!(
                "bad header at {at}: thread {t} seq {seq} len {total}"
            ));
        }
        if bytes[at..at + total] != record(t, seq, total - 24)[..] {
            return Err(format!("record {t}/{seq} at {at} is torn or interleaved"));
        }
        let k = (t * per + seq) as usize;
        if seen[k] {
            return Err(format!("record {t}/{seq} twice"));
        }
        seen[k] = true;
        at += total;
    }
    match seen.iter().position(|s| !s) {
        Some(k) => Err(format!(
            "record {}/{} missing",
            k as u32 / per,
            k as u32 % per
        )),
        None => Ok(()),
    }
}

/// `threads` writers of `per` records each. `append`: O_APPEND (own descriptors if
/// `own`, else one); else one shared descriptor and its offset. Odd records go through
/// writev in three pieces.
fn records_run(
    side: Side,
    path: &std::path::Path,
    threads: u32,
    per: u32,
    append: bool,
    own: bool,
) -> Result<usize, String> {
    let flags =
        libc::O_WRONLY | libc::O_CREAT | libc::O_CLOEXEC | if append { libc::O_APPEND } else { 0 };
    let p = cstr(path);
    let fd = side
        .open(&p, flags, 0o644)
        .map_err(|e| format!("open: {e}"))? as i32;
    let writing = &std::sync::atomic::AtomicU32::new(threads);
    let res: Vec<Result<usize, String>> = std::thread::scope(|s| {
        // A watcher looks at the size (fstat, new opens) while the file grows: what it
        // sees must never disturb the writers (a stale size adopted by the engine did).
        let watcher = {
            let p = &p;
            s.spawn(move || {
                let mut last = 0;
                while writing.load(std::sync::atomic::Ordering::Acquire) > 0 {
                    let size = side.fstat_size(fd).unwrap_or(-1);
                    assert!(size >= last, "the size went back from {last} to {size}");
                    last = size;
                    if let Ok(f) = side.open(p, libc::O_RDONLY | libc::O_CLOEXEC, 0) {
                        side.close(f as i32).ok();
                    }
                }
            })
        };
        let hs: Vec<_> = (0..threads)
            .map(|t| {
                let p = &p;
                s.spawn(move || -> Result<usize, String> {
                    let fd = if own {
                        side.open(p, flags, 0).map_err(|e| format!("open: {e}"))? as i32
                    } else {
                        fd
                    };
                    let mut bytes = 0;
                    for seq in 0..per {
                        let payload = [0usize, 1, 100, 4000, 4096, 9000, 70000]
                            [((t + seq) % 7) as usize]
                            + (seq as usize * 13) % 97;
                        let r = record(t, seq, payload);
                        let n = if seq % 2 == 1 {
                            let (a, rest) = r.split_at(16);
                            let (b, c) = rest.split_at(rest.len() - 8);
                            let iov = [
                                libc::iovec {
                                    iov_base: a.as_ptr() as *mut _,
                                    iov_len: a.len(),
                                },
                                libc::iovec {
                                    iov_base: b.as_ptr() as *mut _,
                                    iov_len: b.len(),
                                },
                                libc::iovec {
                                    iov_base: c.as_ptr() as *mut _,
                                    iov_len: c.len(),
                                },
                            ];
                            // SAFETY: three iovecs over our record.
                            unsafe { side.writev(fd, iov.as_ptr(), 3) }
                        } else {
                            // SAFETY: our record.
                            unsafe { side.write(fd, r.as_ptr(), r.len()) }
                        };
                        if n != Ok(r.len() as i64) {
                            return Err(format!(
                                "thread {t} record {seq}: write of {} gave {n:?}",
                                r.len()
                            ));
                        }
                        bytes += r.len();
                    }
                    if own {
                        side.close(fd).map_err(|e| format!("close: {e}"))?;
                    }
                    writing.fetch_sub(1, std::sync::atomic::Ordering::AcqRel);
                    Ok(bytes)
                })
            })
            .collect();
        let r = hs
            .into_iter()
            .map(|h| h.join().unwrap_or_else(|_| Err("thread panicked".into())))
            .collect();
        writing.store(0, std::sync::atomic::Ordering::Release);
        if watcher.join().is_err() {
            return vec![Err("watcher: the size went back".to_string())];
        }
        r
    });
    let size = side.fstat_size(fd);
    side.close(fd).map_err(|e| format!("close: {e}"))?;
    let mut total = 0;
    for r in res {
        total += r?;
    }
    if size != Ok(total as i64) {
        return Err(format!("logical size {size:?}, records total {total}"));
    }
    let bytes = std::fs::read(path).map_err(|e| e.to_string())?;
    if bytes.len() != total {
        return Err(format!(
            "kernel size after close {} != {total}",
            bytes.len()
        ));
    }
    check_records(&bytes, threads, per)?;
    Ok(total)
}

/// O_APPEND records from several threads (own descriptors, or one shared), and writers
/// sharing one descriptor's offset: every record whole, once, never interleaved; the
/// kernel run checks the checker.
#[test]
fn threads_atomic_records() {
    let _g = serial();
    for (append, own) in [(true, true), (true, false), (false, false)] {
        for threads in [2u32, 4] {
            let dir = tempdir();
            let (a, b) = (dir.path().join("k"), dir.path().join("e"));
            let k = records_run(Side::Kernel, &a, threads, 60, append, own);
            let e = records_run(
                Side::Engine { explicit: true },
                &b,
                threads,
                60,
                append,
                own,
            );
            remove_dir(dir);
            let what = format!("append {append} own descriptors {own} threads {threads}");
            let k = k.unwrap_or_else(|m| panic!("kernel side (checker), {what}: {m}"));
            let e = e.unwrap_or_else(|m| panic!("engine, {what}: {m}"));
            assert_eq!(k, e, "{what}: total bytes");
        }
    }
}

/// Readers race an appender that grows the file (remaps included): every byte a reader
/// gets is the byte written at that offset.
#[test]
fn threads_reads_during_growth() {
    let _g = serial();
    let at = |o: u64| (o.wrapping_mul(0x9e37_79b9) >> 13) as u8 | 1;
    let dir = tempdir();
    let path = dir.path().join("g");
    let side = Side::Engine { explicit: true };
    let p = cstr(&path);
    let w = side
        .open(
            &p,
            libc::O_WRONLY | libc::O_CREAT | libc::O_APPEND | libc::O_CLOEXEC,
            0o644,
        )
        .expect("open") as i32;
    let r = side
        .open(&p, libc::O_RDONLY | libc::O_CLOEXEC, 0)
        .expect("open") as i32;
    let total: u64 = 12 << 20;
    let done = std::sync::atomic::AtomicBool::new(false);
    let errors: Vec<String> = std::thread::scope(|s| {
        let readers: Vec<_> = (0..2u64)
            .map(|t| {
                let done = &done;
                s.spawn(move || -> Option<String> {
                    let mut x = t + 1;
                    let mut buf = vec![0u8; 70000];
                    while !done.load(std::sync::atomic::Ordering::Acquire) {
                        x = x
                            .wrapping_mul(6364136223846793005)
                            .wrapping_add(1442695040888963407);
                        let off = (x >> 20) % total;
                        let len = ((x >> 8) % 70000) as usize;
                        // SAFETY: our buffer.
                        match unsafe { side.pread(r, buf.as_mut_ptr(), len, off as i64) } {
                            Ok(n) => {
                                if let Some(i) =
                                    (0..n as usize).find(|&i| buf[i] != at(off + i as u64))
                                {
                                    return Some(format!("read at {off}: byte {i} wrong"));
                                }
                            }
                            Err(e) => return Some(format!("read at {off}: errno {e}")),
                        }
                    }
                    None
                })
            })
            .collect();
        let mut written = 0u64;
        let mut k = 0u64;
        while written < total {
            let len =
                [1u64, 100, 4096, 5000, 65536, 300_000][(k % 6) as usize].min(total - written);
            let data: Vec<u8> = (written..written + len).map(at).collect();
            // SAFETY: our buffer.
            let n = unsafe { side.write(w, data.as_ptr(), data.len()) };
            assert_eq!(n, Ok(len as i64), "append at {written}");
            written += len;
            k += 1;
        }
        done.store(true, std::sync::atomic::Ordering::Release);
        readers
            .into_iter()
            .filter_map(|h| h.join().expect("reader"))
            .collect()
    });
    side.close(w).expect("close");
    side.close(r).expect("close");
    let bytes = std::fs::read(&path).expect("read back");
    remove_dir(dir);
    assert!(errors.is_empty(), "{errors:?}");
    assert_eq!(bytes.len() as u64, total);
    assert!(
        bytes.iter().enumerate().all(|(i, &b)| b == at(i as u64)),
        "file bytes"
    );
}

/// One thread rewrites (with the same bytes) the last bytes appended so far, with writev,
/// while another appends and a third looks at the size (fstat, opens). A stale size adopted
/// from the watcher once made such a rewrite "extend" the file into trailer mode; the next
/// trim then cut off appended bytes.
#[test]
fn threads_stale_size_regression() {
    let _g = serial();
    let dir = tempdir();
    let path = dir.path().join("s");
    let side = Side::Engine { explicit: true };
    let p = cstr(&path);
    let rounds = 3000u64;
    let chunk = |i: u64| pattern(1000 + i, 1000 + (i as usize % 7) * 100);
    let mut want = pattern(7, 8192);
    std::fs::write(&path, &want).expect("write head");
    for i in 0..rounds {
        want.extend_from_slice(&chunk(i));
    }
    let fd = side
        .open(&p, libc::O_RDWR | libc::O_CLOEXEC, 0)
        .expect("open") as i32;
    let app = side
        .open(&p, libc::O_WRONLY | libc::O_APPEND | libc::O_CLOEXEC, 0)
        .expect("open") as i32;
    let done = &std::sync::atomic::AtomicBool::new(false);
    let end = &std::sync::atomic::AtomicU64::new(8192);
    let (p, w) = (&p, &want);
    std::thread::scope(|s| {
        s.spawn(move || {
            while !done.load(std::sync::atomic::Ordering::Acquire) {
                let _ = side.fstat_size(fd);
                if let Ok(f) = side.open(p, libc::O_RDONLY | libc::O_CLOEXEC, 0) {
                    side.close(f as i32).ok();
                }
            }
        });
        s.spawn(move || {
            while !done.load(std::sync::atomic::Ordering::Acquire) {
                let e = end.load(std::sync::atomic::Ordering::Acquire) as usize;
                let (a, b) = w[e - 100..e].split_at(50);
                let iov = [
                    libc::iovec {
                        iov_base: a.as_ptr() as *mut _,
                        iov_len: a.len(),
                    },
                    libc::iovec {
                        iov_base: b.as_ptr() as *mut _,
                        iov_len: b.len(),
                    },
                ];
                // SAFETY: two iovecs over `want`.
                let r = unsafe { side.pwritev(fd, iov.as_ptr(), 2, e as i64 - 100, None) };
                assert_eq!(r, Ok(100));
            }
        });
        let mut at = 8192u64;
        for i in 0..rounds {
            let c = chunk(i);
            // SAFETY: our buffer.
            let r = unsafe { side.write(app, c.as_ptr(), c.len()) };
            assert_eq!(r, Ok(c.len() as i64), "append {i}");
            at += c.len() as u64;
            end.store(at, std::sync::atomic::Ordering::Release);
        }
        done.store(true, std::sync::atomic::Ordering::Release);
    });
    side.close(app).expect("close");
    side.close(fd).expect("close");
    let got = std::fs::read(&path).expect("read");
    remove_dir(dir);
    assert_eq!(got.len(), want.len(), "size");
    assert!(
        got == want,
        "bytes differ at {:?}",
        (0..got.len()).find(|&i| got[i] != want[i])
    );
}
