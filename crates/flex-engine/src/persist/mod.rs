//! Persistence primitives: CPU feature detection, cache-line flushes, fences, the mapping
//! granularity they serve and the [`Strategy`] table each mapping picks from it once.
//!
//! The flush instruction (`clwb` > `clflushopt` > `clflush`) and the non-temporal copy
//! kernel (`avx512` > `avx2` > `sse2`) are chosen once, at the first use, from CPUID and
//! cached in static atomics. Two environment variables override the choice (read once,
//! with [`std::env::var_os`]):
//!
//! - `FLEX_CPU=sse2|avx2|avx512` caps the NT copy kernel (it never goes above what the CPU
//!   and the OS support);
//! - `FLEX_FLUSH=clflush|clflushopt|clwb` picks the flush instruction (ignored when the CPU
//!   lacks it).

pub mod domain;
#[cfg(any(test, feature = "sim"))]
pub mod sim;
#[cfg(feature = "sim")]
pub mod sim_map;
mod strategy;

pub use strategy::Strategy;

use core::sync::atomic::{AtomicU8, Ordering};

/// How much a store must be flushed before it is durable.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Granularity {
    /// DAX mapping accepted with MAP_SYNC on a platform whose CPU caches are in the
    /// persistence domain (eADR): a fenced store is durable, no flush needed.
    Byte,
    /// DAX mapping accepted with MAP_SYNC: a flushed and fenced cache line is durable.
    CacheLine,
    /// Page cache: durable only after fdatasync/msync.
    Page,
}

impl Granularity {
    pub fn as_str(self) -> &'static str {
        match self {
            Granularity::Byte => "byte",
            Granularity::CacheLine => "cache-line",
            Granularity::Page => "page",
        }
    }
}

/// Size of a cache line on every x86_64 CPU we target.
pub const CACHE_LINE: usize = 64;

/// Vector width used by the non-temporal copy kernels of [`crate::fault`].
///
/// The discriminants are part of the contract with the assembly kernels: do not change them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[repr(u8)]
pub enum NtKind {
    /// 16-byte `movntdq` (every x86_64 CPU).
    Sse2 = 1,
    /// 32-byte `vmovntdq ymm`.
    Avx2 = 2,
    /// 64-byte `vmovntdq zmm` (AVX-512F).
    Avx512 = 3,
}

impl NtKind {
    /// Every kernel, narrowest first.
    pub const ALL: [NtKind; 3] = [NtKind::Sse2, NtKind::Avx2, NtKind::Avx512];

    pub fn as_str(self) -> &'static str {
        match self {
            NtKind::Sse2 => "sse2",
            NtKind::Avx2 => "avx2",
            NtKind::Avx512 => "avx512",
        }
    }

    /// Whether this CPU (and the OS, for the AVX register state) can run the kernel.
    pub fn is_supported(self) -> bool {
        let caps = caps();
        match self {
            NtKind::Sse2 => true,
            NtKind::Avx2 => caps & CAP_AVX2 != 0,
            NtKind::Avx512 => caps & CAP_AVX512 != 0,
        }
    }

    fn from_u8(v: u8) -> NtKind {
        match v {
            3 => NtKind::Avx512,
            2 => NtKind::Avx2,
            _ => NtKind::Sse2,
        }
    }

    fn parse(s: &[u8]) -> Option<NtKind> {
        NtKind::ALL
            .into_iter()
            .find(|k| k.as_str().as_bytes().eq_ignore_ascii_case(s))
    }
}

/// Cache-line write-back instruction.
///
/// The discriminants are part of the contract with the assembly kernels: do not change them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[repr(u8)]
pub enum FlushKind {
    /// `clflush`: serialised with other flushes, evicts the line.
    Clflush = 1,
    /// `clflushopt`: weakly ordered, evicts the line.
    Clflushopt = 2,
    /// `clwb`: weakly ordered, may keep the line in the cache.
    Clwb = 3,
}

impl FlushKind {
    /// Every instruction, slowest first.
    pub const ALL: [FlushKind; 3] = [FlushKind::Clflush, FlushKind::Clflushopt, FlushKind::Clwb];

    pub fn as_str(self) -> &'static str {
        match self {
            FlushKind::Clflush => "clflush",
            FlushKind::Clflushopt => "clflushopt",
            FlushKind::Clwb => "clwb",
        }
    }

    /// Whether this CPU implements the instruction (`clflush` is part of x86_64's SSE2).
    pub fn is_supported(self) -> bool {
        let caps = caps();
        match self {
            FlushKind::Clflush => true,
            FlushKind::Clflushopt => caps & CAP_CLFLUSHOPT != 0,
            FlushKind::Clwb => caps & CAP_CLWB != 0,
        }
    }

    fn from_u8(v: u8) -> FlushKind {
        match v {
            3 => FlushKind::Clwb,
            2 => FlushKind::Clflushopt,
            _ => FlushKind::Clflush,
        }
    }

    fn parse(s: &[u8]) -> Option<FlushKind> {
        FlushKind::ALL
            .into_iter()
            .find(|k| k.as_str().as_bytes().eq_ignore_ascii_case(s))
    }
}

const CAP_KNOWN: u8 = 1;
const CAP_AVX2: u8 = 2;
const CAP_AVX512: u8 = 4;
const CAP_CLFLUSHOPT: u8 = 8;
const CAP_CLWB: u8 = 16;

/// Hardware capabilities (CAP_* bits; 0 = not detected yet).
static CAPS: AtomicU8 = AtomicU8::new(0);
/// Chosen NT kernel (NtKind discriminant; 0 = not chosen yet).
static NT: AtomicU8 = AtomicU8::new(0);
/// Chosen flush instruction (FlushKind discriminant; 0 = not chosen yet).
static FLUSH: AtomicU8 = AtomicU8::new(0);

fn caps() -> u8 {
    let c = CAPS.load(Ordering::Relaxed);
    if c != 0 {
        return c;
    }
    let c = detect_caps();
    CAPS.store(c, Ordering::Relaxed);
    c
}

fn detect_caps() -> u8 {
    let mut c = CAP_KNOWN;
    // The std macros also check XCR0, i.e. that the OS saves the vector registers.
    if std::is_x86_feature_detected!("avx2") {
        c |= CAP_AVX2;
    }
    if std::is_x86_feature_detected!("avx512f") {
        c |= CAP_AVX512;
    }
    #[allow(unused_unsafe)]
    // SAFETY: `cpuid` exists on every x86_64 CPU; leaf 0 reports the highest basic leaf,
    // and leaf 7 is only queried when it exists.
    let (max_leaf, leaf7_ebx) = unsafe {
        let max = core::arch::x86_64::__cpuid(0).eax;
        let ebx = if max >= 7 {
            core::arch::x86_64::__cpuid_count(7, 0).ebx
        } else {
            0
        };
        (max, ebx)
    };
    let _ = max_leaf;
    if leaf7_ebx & (1 << 23) != 0 {
        c |= CAP_CLFLUSHOPT;
    }
    if leaf7_ebx & (1 << 24) != 0 {
        c |= CAP_CLWB;
    }
    c
}

/// The NT copy kernel in use (detected once; `FLEX_CPU` caps it).
pub fn nt_kind() -> NtKind {
    let v = NT.load(Ordering::Relaxed);
    if v != 0 {
        return NtKind::from_u8(v);
    }
    let best = NtKind::ALL
        .into_iter()
        .rev()
        .find(|k| k.is_supported())
        .unwrap_or(NtKind::Sse2);
    let chosen =
        match std::env::var_os("FLEX_CPU").and_then(|v| NtKind::parse(v.as_encoded_bytes())) {
            Some(cap) => cap.min(best),
            None => best,
        };
    NT.store(chosen as u8, Ordering::Relaxed);
    chosen
}

/// The flush instruction in use (detected once; `FLEX_FLUSH` picks a supported one).
pub fn flush_kind() -> FlushKind {
    let v = FLUSH.load(Ordering::Relaxed);
    if v != 0 {
        return FlushKind::from_u8(v);
    }
    let best = FlushKind::ALL
        .into_iter()
        .rev()
        .find(|k| k.is_supported())
        .unwrap_or(FlushKind::Clflush);
    let chosen =
        match std::env::var_os("FLEX_FLUSH").and_then(|v| FlushKind::parse(v.as_encoded_bytes())) {
            Some(k) if k.is_supported() => k,
            _ => best,
        };
    FLUSH.store(chosen as u8, Ordering::Relaxed);
    chosen
}

/// Name of the flush instruction in use: "clwb", "clflushopt" or "clflush".
pub fn flush_instruction() -> &'static str {
    flush_kind().as_str()
}

/// Name of the NT copy kernel in use: "avx512", "avx2" or "sse2".
pub fn nt_copy_kind() -> &'static str {
    nt_kind().as_str()
}

/// Store fence: orders earlier non-temporal stores and flushes before later stores.
#[inline]
pub fn fence() {
    // SAFETY: sfence has no memory operands and is available on every x86_64 CPU.
    unsafe { core::arch::x86_64::_mm_sfence() }
}

/// Write back every cache line of `[addr, addr+len)` (no fence), with the instruction of
/// [`flush_kind`].
///
/// A fault (unmapped range, truncated file) is not recovered here: use
/// [`crate::fault::flush`] for ranges that another process may truncate.
///
/// # Safety
/// The range must be mapped.
#[inline]
pub unsafe fn flush(addr: *const u8, len: usize) {
    if len == 0 {
        return;
    }
    // SAFETY: forwarded caller contract; the kind comes from flush_kind(), so it is supported.
    unsafe { flush_with(flush_kind(), addr, len) }
}

/// [`flush`] with an explicit instruction.
///
/// # Safety
/// The range must be mapped and `kind.is_supported()` must hold (else SIGILL).
pub unsafe fn flush_with(kind: FlushKind, addr: *const u8, len: usize) {
    if len == 0 {
        return;
    }
    let mut p = (addr as usize) & !(CACHE_LINE - 1);
    let end = addr as usize + len;
    // The asm blocks are not `nomem`: the compiler must complete earlier stores to the range
    // before the flush and may not move later accesses above it.
    match kind {
        FlushKind::Clwb => {
            while p < end {
                // SAFETY: the caller guarantees the line is mapped and that clwb exists.
                unsafe {
                    core::arch::asm!("clwb byte ptr [{0}]", in(reg) p, options(nostack, preserves_flags))
                };
                p += CACHE_LINE;
            }
        }
        FlushKind::Clflushopt => {
            while p < end {
                // SAFETY: the caller guarantees the line is mapped and that clflushopt exists.
                unsafe {
                    core::arch::asm!("clflushopt byte ptr [{0}]", in(reg) p, options(nostack, preserves_flags))
                };
                p += CACHE_LINE;
            }
        }
        FlushKind::Clflush => {
            while p < end {
                // SAFETY: the caller guarantees the line is mapped; clflush is baseline x86_64.
                unsafe {
                    core::arch::asm!("clflush byte ptr [{0}]", in(reg) p, options(nostack, preserves_flags))
                };
                p += CACHE_LINE;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_names() {
        assert_eq!(NtKind::parse(b"AVX2"), Some(NtKind::Avx2));
        assert_eq!(NtKind::parse(b"sse2"), Some(NtKind::Sse2));
        assert_eq!(NtKind::parse(b"avx512"), Some(NtKind::Avx512));
        assert_eq!(NtKind::parse(b"neon"), None);
        assert_eq!(FlushKind::parse(b"clwb"), Some(FlushKind::Clwb));
        assert_eq!(FlushKind::parse(b"CLFLUSHOPT"), Some(FlushKind::Clflushopt));
        assert_eq!(FlushKind::parse(b"clflush"), Some(FlushKind::Clflush));
        assert_eq!(FlushKind::parse(b""), None);
    }

    #[test]
    fn chosen_is_supported() {
        assert!(nt_kind().is_supported());
        assert!(flush_kind().is_supported());
        assert!(["sse2", "avx2", "avx512"].contains(&nt_copy_kind()));
        assert!(["clflush", "clflushopt", "clwb"].contains(&flush_instruction()));
    }

    #[test]
    fn flush_every_kind() {
        let mut buf = vec![7u8; 300];
        for k in FlushKind::ALL {
            if !k.is_supported() {
                eprintln!("skipping {}: not supported by this CPU", k.as_str());
                continue;
            }
            for off in [0usize, 1, 63, 64, 100] {
                for len in [0usize, 1, 64, 65, 199] {
                    buf[off] = off as u8;
                    // SAFETY: off + len <= 300, inside the live buffer; kind is supported.
                    unsafe { flush_with(k, buf.as_ptr().add(off), len) };
                }
            }
        }
        fence();
        assert_eq!(buf[100], 100);
    }
}
