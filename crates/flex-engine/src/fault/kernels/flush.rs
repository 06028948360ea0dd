//! The flush kernel: write back every cache line of a range (clwb, clflushopt or
//! clflush), surviving a fault.

use crate::persist::FlushKind;
use core::arch::global_asm;

global_asm!(
    "    .pushsection .text.flex_fault_kernels,\"ax\",@progbits",
    // flush(addr, len, kind) -> 0 when every line was flushed
    func!("__flex_fault_v1_flush"),
    "    mov r9, rdx",
    "    lea r8, [rdi + rsi]",
    "    and rdi, -64",
    "    test rsi, rsi",
    "    jnz 22f",
    "    mov rdi, r8",
    "    jmp 26f",
    "22:",
    flush_line!("rdi"),
    "    add rdi, 64",
    "    cmp rdi, r8",
    "    jb 22b",
    "26:",
    end_label!("__flex_fault_v1_flush"),
    "    xor eax, eax",
    "    cmp rdi, r8",
    "    jae 21f",
    "    mov rax, r8",
    "    sub rax, rdi",
    "21:",
    "    ret",
    "    .size __flex_fault_v1_flush, . - __flex_fault_v1_flush",
    "    .popsection",
);

extern "C" {
    pub(super) fn __flex_fault_v1_flush(addr: *const u8, len: usize, kind: u64) -> usize;

    pub(super) fn __flex_fault_v1_flush_end();
}

/// # Safety
/// As [`copy`](super::copy::copy); `flush` must be supported by the CPU.
#[inline]
pub(in crate::fault) unsafe fn flush(addr: *const u8, len: usize, flush: FlushKind) -> usize {
    // SAFETY: forwarded caller contract (see copy).
    unsafe { __flex_fault_v1_flush(addr, len, flush as u64) }
}
