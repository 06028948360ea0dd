//! Where the signal handler resumes: the fixup of a kernel a fault interrupted (its
//! `_end` label), and the `rt_sigreturn` trampoline of the raw `rt_sigaction` fallback.

use super::copy::{
    __flex_fault_v1_copy, __flex_fault_v1_copy_avx2, __flex_fault_v1_copy_avx2_end,
    __flex_fault_v1_copy_end, __flex_fault_v1_zero, __flex_fault_v1_zero_end,
};
use super::flush::{__flex_fault_v1_flush, __flex_fault_v1_flush_end};
use super::nt::{
    __flex_fault_v1_copy_nt_avx2, __flex_fault_v1_copy_nt_avx2_end, __flex_fault_v1_copy_nt_avx512,
    __flex_fault_v1_copy_nt_avx512_end, __flex_fault_v1_copy_nt_sse2,
    __flex_fault_v1_copy_nt_sse2_end, __flex_fault_v1_zero_nt_avx2,
    __flex_fault_v1_zero_nt_avx2_end, __flex_fault_v1_zero_nt_avx512,
    __flex_fault_v1_zero_nt_avx512_end, __flex_fault_v1_zero_nt_sse2,
    __flex_fault_v1_zero_nt_sse2_end,
};
use core::arch::global_asm;

global_asm!(
    "    .pushsection .text.flex_fault_kernels,\"ax\",@progbits",
    // rt_sigreturn trampoline for the raw rt_sigaction fallback (SA_RESTORER).
    func!("__flex_fault_v1_restore_rt"),
    "    mov eax, 15",
    "    syscall",
    "    ud2",
    "    .size __flex_fault_v1_restore_rt, . - __flex_fault_v1_restore_rt",
    "    .popsection",
);

extern "C" {
    fn __flex_fault_v1_restore_rt();
}

/// If `rip` lies inside a kernel, the address execution must resume at (the kernel's
/// `_end` label, which returns the count of bytes not done). Async-signal-safe: it only
/// compares addresses.
pub(in crate::fault) fn fixup_for(rip: usize) -> Option<usize> {
    let table: [(usize, usize); 10] = [
        (
            __flex_fault_v1_copy as *const () as usize,
            __flex_fault_v1_copy_end as *const () as usize,
        ),
        (
            __flex_fault_v1_copy_avx2 as *const () as usize,
            __flex_fault_v1_copy_avx2_end as *const () as usize,
        ),
        (
            __flex_fault_v1_zero as *const () as usize,
            __flex_fault_v1_zero_end as *const () as usize,
        ),
        (
            __flex_fault_v1_flush as *const () as usize,
            __flex_fault_v1_flush_end as *const () as usize,
        ),
        (
            __flex_fault_v1_copy_nt_sse2 as *const () as usize,
            __flex_fault_v1_copy_nt_sse2_end as *const () as usize,
        ),
        (
            __flex_fault_v1_copy_nt_avx2 as *const () as usize,
            __flex_fault_v1_copy_nt_avx2_end as *const () as usize,
        ),
        (
            __flex_fault_v1_copy_nt_avx512 as *const () as usize,
            __flex_fault_v1_copy_nt_avx512_end as *const () as usize,
        ),
        (
            __flex_fault_v1_zero_nt_sse2 as *const () as usize,
            __flex_fault_v1_zero_nt_sse2_end as *const () as usize,
        ),
        (
            __flex_fault_v1_zero_nt_avx2 as *const () as usize,
            __flex_fault_v1_zero_nt_avx2_end as *const () as usize,
        ),
        (
            __flex_fault_v1_zero_nt_avx512 as *const () as usize,
            __flex_fault_v1_zero_nt_avx512_end as *const () as usize,
        ),
    ];
    table
        .iter()
        .find(|&&(start, end)| rip >= start && rip < end)
        .map(|&(_, end)| end)
}

/// Address of the `rt_sigreturn` trampoline (for SA_RESTORER).
pub(in crate::fault) fn restorer() -> usize {
    __flex_fault_v1_restore_rt as *const () as usize
}
