//! The copy and zero kernels with ordinary stores: `copy` (SSE2 moves, `rep movsb` from
//! [`REP_THRESHOLD`] on), `copy_avx2` (32-byte vector moves for mid sizes) and `zero`.

use core::arch::global_asm;

/// From this length on, `copy`/`zero` use `rep movsb`/`rep stosb` (fast for large sizes
/// with ERMS/FSRM, but with a start-up cost that SSE2 moves beat below it).
pub(super) const REP_THRESHOLD: usize = 768;

/// With AVX2, vector moves are used from 256 bytes up to this length, `rep movsb` beyond.
const AVX_REP_THRESHOLD: usize = 32 << 10;

global_asm!(
    "    .pushsection .text.flex_fault_kernels,\"ax\",@progbits",
    // copy(dst, src, len) -> not copied. rcx = remaining throughout.
    func!("__flex_fault_v1_copy"),
    "    mov rcx, rdx",
    "    cmp rdx, 64",
    "    jb 40f",
    "    cmp rdx, {rep}",
    "    jae 45f",
    "41:",
    "    movdqu xmm0, xmmword ptr [rsi]",
    "    movdqu xmm1, xmmword ptr [rsi + 16]",
    "    movdqu xmm2, xmmword ptr [rsi + 32]",
    "    movdqu xmm3, xmmword ptr [rsi + 48]",
    "    movdqu xmmword ptr [rdi], xmm0",
    "    movdqu xmmword ptr [rdi + 16], xmm1",
    "    movdqu xmmword ptr [rdi + 32], xmm2",
    "    movdqu xmmword ptr [rdi + 48], xmm3",
    "    add rsi, 64",
    "    add rdi, 64",
    "    sub rcx, 64",
    "    cmp rcx, 64",
    "    jae 41b",
    "    test rcx, rcx",
    "    jz 46f",
    // The last 64 bytes of the range, overlapping what is already copied.
    "    lea rsi, [rsi + rcx - 64]",
    "    lea rdi, [rdi + rcx - 64]",
    "    mov ecx, 64",
    "    jmp 41b",
    "40:",
    "    test rcx, rcx",
    "    jz 46f",
    small_copy!("movdqu"),
    "    xor ecx, ecx",
    "    jmp 46f",
    "45:",
    "    rep movsb",
    "46:",
    end_label!("__flex_fault_v1_copy"),
    "    mov rax, rcx",
    "    ret",
    "    .size __flex_fault_v1_copy, . - __flex_fault_v1_copy",
    // copy_avx2(dst, src, len) -> not copied: 256-byte chunks of 32-byte vector moves for
    // mid sizes (where glibc's vector loop beats `rep movsb`'s start-up); other sizes go to
    // the plain kernel before touching memory. rcx = remaining, decremented per chunk.
    func!("__flex_fault_v1_copy_avx2"),
    "    cmp rdx, 256",
    "    jb __flex_fault_v1_copy",
    "    cmp rdx, {avxrep}",
    "    jae __flex_fault_v1_copy",
    "    mov rcx, rdx",
    "51:",
    "    vmovdqu ymm0, ymmword ptr [rsi]",
    "    vmovdqu ymm1, ymmword ptr [rsi + 32]",
    "    vmovdqu ymm2, ymmword ptr [rsi + 64]",
    "    vmovdqu ymm3, ymmword ptr [rsi + 96]",
    "    vmovdqu ymm4, ymmword ptr [rsi + 128]",
    "    vmovdqu ymm5, ymmword ptr [rsi + 160]",
    "    vmovdqu ymm6, ymmword ptr [rsi + 192]",
    "    vmovdqu ymm7, ymmword ptr [rsi + 224]",
    "    vmovdqu ymmword ptr [rdi], ymm0",
    "    vmovdqu ymmword ptr [rdi + 32], ymm1",
    "    vmovdqu ymmword ptr [rdi + 64], ymm2",
    "    vmovdqu ymmword ptr [rdi + 96], ymm3",
    "    vmovdqu ymmword ptr [rdi + 128], ymm4",
    "    vmovdqu ymmword ptr [rdi + 160], ymm5",
    "    vmovdqu ymmword ptr [rdi + 192], ymm6",
    "    vmovdqu ymmword ptr [rdi + 224], ymm7",
    "    add rsi, 256",
    "    add rdi, 256",
    "    sub rcx, 256",
    "    cmp rcx, 256",
    "    jae 51b",
    "    test rcx, rcx",
    "    jz 56f",
    // The last 256 bytes, overlapping what is already copied.
    "    lea rsi, [rsi + rcx - 256]",
    "    lea rdi, [rdi + rcx - 256]",
    "    mov ecx, 256",
    "    jmp 51b",
    "56:",
    end_label!("__flex_fault_v1_copy_avx2"),
    "    vzeroupper",
    "    mov rax, rcx",
    "    ret",
    "    .size __flex_fault_v1_copy_avx2, . - __flex_fault_v1_copy_avx2",
    // zero(dst, len) -> not zeroed. rcx = remaining throughout.
    func!("__flex_fault_v1_zero"),
    "    mov rcx, rsi",
    "    xor eax, eax",
    "    pxor xmm0, xmm0",
    "    cmp rsi, 64",
    "    jb 40f",
    "    cmp rsi, {rep}",
    "    jae 45f",
    "41:",
    "    movdqu xmmword ptr [rdi], xmm0",
    "    movdqu xmmword ptr [rdi + 16], xmm0",
    "    movdqu xmmword ptr [rdi + 32], xmm0",
    "    movdqu xmmword ptr [rdi + 48], xmm0",
    "    add rdi, 64",
    "    sub rcx, 64",
    "    cmp rcx, 64",
    "    jae 41b",
    "    test rcx, rcx",
    "    jz 46f",
    "    lea rdi, [rdi + rcx - 64]",
    "    mov ecx, 64",
    "    jmp 41b",
    "40:",
    "    test rcx, rcx",
    "    jz 46f",
    small_zero!("movdqu"),
    "    xor ecx, ecx",
    "    jmp 46f",
    "45:",
    "    rep stosb",
    "46:",
    end_label!("__flex_fault_v1_zero"),
    "    mov rax, rcx",
    "    ret",
    "    .size __flex_fault_v1_zero, . - __flex_fault_v1_zero",
    "    .popsection",
    rep = const REP_THRESHOLD,
    avxrep = const AVX_REP_THRESHOLD,
);

extern "C" {
    pub(super) fn __flex_fault_v1_copy(dst: *mut u8, src: *const u8, len: usize) -> usize;
    pub(super) fn __flex_fault_v1_copy_avx2(dst: *mut u8, src: *const u8, len: usize) -> usize;
    pub(super) fn __flex_fault_v1_zero(dst: *mut u8, len: usize) -> usize;

    pub(super) fn __flex_fault_v1_copy_end();
    pub(super) fn __flex_fault_v1_copy_avx2_end();
    pub(super) fn __flex_fault_v1_zero_end();
}

/// # Safety
/// Both ranges valid, or faults recoverable by the installed handler; no overlap.
#[inline]
pub(in crate::fault) unsafe fn copy(dst: *mut u8, src: *const u8, len: usize) -> usize {
    // SAFETY: forwarded caller contract; the kernel is a leaf using only caller-saved
    // registers, as declared by the extern "C" signature.
    unsafe { __flex_fault_v1_copy(dst, src, len) }
}

/// # Safety
/// As [`copy`]; the CPU must have AVX2.
#[inline]
pub(in crate::fault) unsafe fn copy_avx2(dst: *mut u8, src: *const u8, len: usize) -> usize {
    // SAFETY: forwarded caller contract (see copy); the caller checked AVX2.
    unsafe { __flex_fault_v1_copy_avx2(dst, src, len) }
}

/// # Safety
/// As [`copy`].
#[inline]
pub(in crate::fault) unsafe fn zero(dst: *mut u8, len: usize) -> usize {
    // SAFETY: forwarded caller contract (see copy).
    unsafe { __flex_fault_v1_zero(dst, len) }
}
