//! Persistence primitives: CPU feature detection, cache-line flushes, fences and the
//! mapping granularity they serve. (Placeholder implementation; the real one replaces it.)

/// How much a store must be flushed before it is durable.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Granularity {
    /// DAX mapping accepted with MAP_SYNC: a flushed and fenced cache line is durable.
    CacheLine,
    /// Page cache: durable only after fdatasync/msync.
    Page,
}

impl Granularity {
    pub fn as_str(self) -> &'static str {
        match self {
            Granularity::CacheLine => "cache-line",
            Granularity::Page => "page",
        }
    }
}

/// Store fence: orders earlier non-temporal stores and flushes before later stores.
#[inline]
pub fn fence() {
    // SAFETY: sfence has no memory operands and is available on every x86_64 CPU.
    unsafe { core::arch::x86_64::_mm_sfence() }
}

/// Write back every cache line of `[addr, addr+len)` (no fence).
///
/// # Safety
/// The range must be mapped.
pub unsafe fn flush(addr: *const u8, len: usize) {
    let mut p = (addr as usize) & !63;
    let end = addr as usize + len;
    while p < end {
        // SAFETY: the caller guarantees the range is mapped; clflush only needs a mapped address.
        unsafe { core::arch::x86_64::_mm_clflush(p as *const u8) };
        p += 64;
    }
}
