//! The non-temporal kernels for persistent memory: `copy_nt_*` and `zero_nt_*` (SSE2,
//! AVX2, AVX-512), NT stores for the cache-line-aligned body, ordinary stores and a flush
//! for the partial head and tail lines.

use crate::persist::{FlushKind, NtKind};
use core::arch::global_asm;

/// Non-temporal kernel: head (ordinary stores + flush), 4-line and 1-line NT body loops,
/// tail (ordinary stores + flush). `$head` stores rcx bytes at rdi (advancing rdi, and rsi
/// for copies), `$body4`/`$body1` store 256/64 bytes at [rdi] (from [rsi] for copies)
/// without advancing; `$src_step` advances rsi (empty for zero kernels); `$init` prepares
/// registers (e.g. zeroes the vector source); `$leave` runs before `ret` (vzeroupper).
macro_rules! nt_kernel {
    ($name:literal, $init:expr, $head:expr, $body4:expr, $body1:expr, $src4:literal,
     $src1:literal, $leave:literal) => {
        concat!(
            func!($name),
            "    mov r8, rdx\n", // r8 = remaining
            $init,
            "    test r8, r8\n",
            "    jz 26f\n",
            "    mov rcx, rdi\n", // rcx = bytes up to the next line boundary
            "    neg rcx\n",
            "    and rcx, 63\n",
            "    jz 21f\n",
            "    cmp rcx, r8\n",
            "    cmova rcx, r8\n", // head = min(head, len)
            "    mov r10, rdi\n",
            "    mov r11, rcx\n",
            $head,
            flush_line!("r10"),
            "    sub r8, r11\n",
            "21:\n", // body: rdi is line-aligned (or r8 == 0)
            "    cmp r8, 256\n",
            "    jb 23f\n",
            "22:\n",
            $body4,
            $src4,
            "    add rdi, 256\n",
            "    sub r8, 256\n",
            "    cmp r8, 256\n",
            "    jae 22b\n",
            "23:\n",
            "    cmp r8, 64\n",
            "    jb 25f\n",
            "24:\n",
            $body1,
            $src1,
            "    add rdi, 64\n",
            "    sub r8, 64\n",
            "    cmp r8, 64\n",
            "    jae 24b\n",
            "25:\n", // tail: fewer than 64 bytes at a line boundary
            "    test r8, r8\n",
            "    jz 26f\n",
            "    mov rcx, r8\n",
            "    mov r10, rdi\n",
            $head,
            flush_line!("r10"),
            "    xor r8d, r8d\n",
            "26:\n",
            end_label!($name),
            "    mov rax, r8\n",
            $leave,
            "    ret\n",
            "    .size ",
            $name,
            ", . - ",
            $name,
            "\n",
        )
    };
}

macro_rules! copy_kernel {
    ($name:literal, $mov:literal, $ld4:expr, $st4:expr, $ld1:expr, $st1:expr, $leave:literal) => {
        nt_kernel!(
            $name,
            "    mov r9, rcx\n",
            concat!(small_copy!($mov), "    add rsi, rcx\n    add rdi, rcx\n"),
            concat!($ld4, $st4),
            concat!($ld1, $st1),
            "    add rsi, 256\n",
            "    add rsi, 64\n",
            $leave
        )
    };
}

macro_rules! zero_kernel {
    ($name:literal, $mov:literal, $zero:literal, $st4:expr, $st1:expr, $leave:literal) => {
        nt_kernel!(
            $name,
            concat!(
                "    mov r8, rsi\n    mov r9, rdx\n    xor eax, eax\n",
                $zero
            ),
            concat!(small_zero!($mov), "    add rdi, rcx\n"),
            $st4,
            $st1,
            "",
            "",
            $leave
        )
    };
}

global_asm!(
    "    .pushsection .text.flex_fault_kernels,\"ax\",@progbits",
    // ---- copy_nt ----
    copy_kernel!(
        "__flex_fault_v1_copy_nt_sse2",
        "movdqu",
        concat!(
            "    movdqu xmm0, xmmword ptr [rsi]\n",
            "    movdqu xmm1, xmmword ptr [rsi + 16]\n",
            "    movdqu xmm2, xmmword ptr [rsi + 32]\n",
            "    movdqu xmm3, xmmword ptr [rsi + 48]\n",
            "    movdqu xmm4, xmmword ptr [rsi + 64]\n",
            "    movdqu xmm5, xmmword ptr [rsi + 80]\n",
            "    movdqu xmm6, xmmword ptr [rsi + 96]\n",
            "    movdqu xmm7, xmmword ptr [rsi + 112]\n",
            "    movdqu xmm8, xmmword ptr [rsi + 128]\n",
            "    movdqu xmm9, xmmword ptr [rsi + 144]\n",
            "    movdqu xmm10, xmmword ptr [rsi + 160]\n",
            "    movdqu xmm11, xmmword ptr [rsi + 176]\n",
            "    movdqu xmm12, xmmword ptr [rsi + 192]\n",
            "    movdqu xmm13, xmmword ptr [rsi + 208]\n",
            "    movdqu xmm14, xmmword ptr [rsi + 224]\n",
            "    movdqu xmm15, xmmword ptr [rsi + 240]\n",
        ),
        concat!(
            "    movntdq xmmword ptr [rdi], xmm0\n",
            "    movntdq xmmword ptr [rdi + 16], xmm1\n",
            "    movntdq xmmword ptr [rdi + 32], xmm2\n",
            "    movntdq xmmword ptr [rdi + 48], xmm3\n",
            "    movntdq xmmword ptr [rdi + 64], xmm4\n",
            "    movntdq xmmword ptr [rdi + 80], xmm5\n",
            "    movntdq xmmword ptr [rdi + 96], xmm6\n",
            "    movntdq xmmword ptr [rdi + 112], xmm7\n",
            "    movntdq xmmword ptr [rdi + 128], xmm8\n",
            "    movntdq xmmword ptr [rdi + 144], xmm9\n",
            "    movntdq xmmword ptr [rdi + 160], xmm10\n",
            "    movntdq xmmword ptr [rdi + 176], xmm11\n",
            "    movntdq xmmword ptr [rdi + 192], xmm12\n",
            "    movntdq xmmword ptr [rdi + 208], xmm13\n",
            "    movntdq xmmword ptr [rdi + 224], xmm14\n",
            "    movntdq xmmword ptr [rdi + 240], xmm15\n",
        ),
        concat!(
            "    movdqu xmm0, xmmword ptr [rsi]\n",
            "    movdqu xmm1, xmmword ptr [rsi + 16]\n",
            "    movdqu xmm2, xmmword ptr [rsi + 32]\n",
            "    movdqu xmm3, xmmword ptr [rsi + 48]\n",
        ),
        concat!(
            "    movntdq xmmword ptr [rdi], xmm0\n",
            "    movntdq xmmword ptr [rdi + 16], xmm1\n",
            "    movntdq xmmword ptr [rdi + 32], xmm2\n",
            "    movntdq xmmword ptr [rdi + 48], xmm3\n",
        ),
        ""
    ),
    copy_kernel!(
        "__flex_fault_v1_copy_nt_avx2",
        "vmovdqu",
        concat!(
            "    vmovdqu ymm0, ymmword ptr [rsi]\n",
            "    vmovdqu ymm1, ymmword ptr [rsi + 32]\n",
            "    vmovdqu ymm2, ymmword ptr [rsi + 64]\n",
            "    vmovdqu ymm3, ymmword ptr [rsi + 96]\n",
            "    vmovdqu ymm4, ymmword ptr [rsi + 128]\n",
            "    vmovdqu ymm5, ymmword ptr [rsi + 160]\n",
            "    vmovdqu ymm6, ymmword ptr [rsi + 192]\n",
            "    vmovdqu ymm7, ymmword ptr [rsi + 224]\n",
        ),
        concat!(
            "    vmovntdq ymmword ptr [rdi], ymm0\n",
            "    vmovntdq ymmword ptr [rdi + 32], ymm1\n",
            "    vmovntdq ymmword ptr [rdi + 64], ymm2\n",
            "    vmovntdq ymmword ptr [rdi + 96], ymm3\n",
            "    vmovntdq ymmword ptr [rdi + 128], ymm4\n",
            "    vmovntdq ymmword ptr [rdi + 160], ymm5\n",
            "    vmovntdq ymmword ptr [rdi + 192], ymm6\n",
            "    vmovntdq ymmword ptr [rdi + 224], ymm7\n",
        ),
        concat!(
            "    vmovdqu ymm0, ymmword ptr [rsi]\n",
            "    vmovdqu ymm1, ymmword ptr [rsi + 32]\n",
        ),
        concat!(
            "    vmovntdq ymmword ptr [rdi], ymm0\n",
            "    vmovntdq ymmword ptr [rdi + 32], ymm1\n",
        ),
        "    vzeroupper\n"
    ),
    copy_kernel!(
        "__flex_fault_v1_copy_nt_avx512",
        "vmovdqu",
        concat!(
            "    vmovdqu64 zmm0, zmmword ptr [rsi]\n",
            "    vmovdqu64 zmm1, zmmword ptr [rsi + 64]\n",
            "    vmovdqu64 zmm2, zmmword ptr [rsi + 128]\n",
            "    vmovdqu64 zmm3, zmmword ptr [rsi + 192]\n",
        ),
        concat!(
            "    vmovntdq zmmword ptr [rdi], zmm0\n",
            "    vmovntdq zmmword ptr [rdi + 64], zmm1\n",
            "    vmovntdq zmmword ptr [rdi + 128], zmm2\n",
            "    vmovntdq zmmword ptr [rdi + 192], zmm3\n",
        ),
        "    vmovdqu64 zmm0, zmmword ptr [rsi]\n",
        "    vmovntdq zmmword ptr [rdi], zmm0\n",
        "    vzeroupper\n"
    ),
    // ---- zero_nt ----
    zero_kernel!(
        "__flex_fault_v1_zero_nt_sse2",
        "movdqu",
        "    pxor xmm0, xmm0\n",
        concat!(
            "    movntdq xmmword ptr [rdi], xmm0\n",
            "    movntdq xmmword ptr [rdi + 16], xmm0\n",
            "    movntdq xmmword ptr [rdi + 32], xmm0\n",
            "    movntdq xmmword ptr [rdi + 48], xmm0\n",
            "    movntdq xmmword ptr [rdi + 64], xmm0\n",
            "    movntdq xmmword ptr [rdi + 80], xmm0\n",
            "    movntdq xmmword ptr [rdi + 96], xmm0\n",
            "    movntdq xmmword ptr [rdi + 112], xmm0\n",
            "    movntdq xmmword ptr [rdi + 128], xmm0\n",
            "    movntdq xmmword ptr [rdi + 144], xmm0\n",
            "    movntdq xmmword ptr [rdi + 160], xmm0\n",
            "    movntdq xmmword ptr [rdi + 176], xmm0\n",
            "    movntdq xmmword ptr [rdi + 192], xmm0\n",
            "    movntdq xmmword ptr [rdi + 208], xmm0\n",
            "    movntdq xmmword ptr [rdi + 224], xmm0\n",
            "    movntdq xmmword ptr [rdi + 240], xmm0\n",
        ),
        concat!(
            "    movntdq xmmword ptr [rdi], xmm0\n",
            "    movntdq xmmword ptr [rdi + 16], xmm0\n",
            "    movntdq xmmword ptr [rdi + 32], xmm0\n",
            "    movntdq xmmword ptr [rdi + 48], xmm0\n",
        ),
        ""
    ),
    zero_kernel!(
        "__flex_fault_v1_zero_nt_avx2",
        "vmovdqu",
        "    vpxor xmm0, xmm0, xmm0\n",
        concat!(
            "    vmovntdq ymmword ptr [rdi], ymm0\n",
            "    vmovntdq ymmword ptr [rdi + 32], ymm0\n",
            "    vmovntdq ymmword ptr [rdi + 64], ymm0\n",
            "    vmovntdq ymmword ptr [rdi + 96], ymm0\n",
            "    vmovntdq ymmword ptr [rdi + 128], ymm0\n",
            "    vmovntdq ymmword ptr [rdi + 160], ymm0\n",
            "    vmovntdq ymmword ptr [rdi + 192], ymm0\n",
            "    vmovntdq ymmword ptr [rdi + 224], ymm0\n",
        ),
        concat!(
            "    vmovntdq ymmword ptr [rdi], ymm0\n",
            "    vmovntdq ymmword ptr [rdi + 32], ymm0\n",
        ),
        "    vzeroupper\n"
    ),
    zero_kernel!(
        "__flex_fault_v1_zero_nt_avx512",
        "vmovdqu",
        "    vpxord zmm0, zmm0, zmm0\n",
        concat!(
            "    vmovntdq zmmword ptr [rdi], zmm0\n",
            "    vmovntdq zmmword ptr [rdi + 64], zmm0\n",
            "    vmovntdq zmmword ptr [rdi + 128], zmm0\n",
            "    vmovntdq zmmword ptr [rdi + 192], zmm0\n",
        ),
        "    vmovntdq zmmword ptr [rdi], zmm0\n",
        "    vzeroupper\n"
    ),
    "    .popsection",
);

extern "C" {
    pub(super) fn __flex_fault_v1_copy_nt_sse2(
        dst: *mut u8,
        src: *const u8,
        len: usize,
        kind: u64,
    ) -> usize;
    pub(super) fn __flex_fault_v1_copy_nt_avx2(
        dst: *mut u8,
        src: *const u8,
        len: usize,
        kind: u64,
    ) -> usize;
    pub(super) fn __flex_fault_v1_copy_nt_avx512(
        dst: *mut u8,
        src: *const u8,
        len: usize,
        kind: u64,
    ) -> usize;
    pub(super) fn __flex_fault_v1_zero_nt_sse2(dst: *mut u8, len: usize, kind: u64) -> usize;
    pub(super) fn __flex_fault_v1_zero_nt_avx2(dst: *mut u8, len: usize, kind: u64) -> usize;
    pub(super) fn __flex_fault_v1_zero_nt_avx512(dst: *mut u8, len: usize, kind: u64) -> usize;

    pub(super) fn __flex_fault_v1_copy_nt_sse2_end();
    pub(super) fn __flex_fault_v1_copy_nt_avx2_end();
    pub(super) fn __flex_fault_v1_copy_nt_avx512_end();
    pub(super) fn __flex_fault_v1_zero_nt_sse2_end();
    pub(super) fn __flex_fault_v1_zero_nt_avx2_end();
    pub(super) fn __flex_fault_v1_zero_nt_avx512_end();
}

/// # Safety
/// As [`copy`](super::copy::copy); `kind` and `flush` must be supported by the CPU.
#[inline]
pub(in crate::fault) unsafe fn copy_nt(
    kind: NtKind,
    flush: FlushKind,
    dst: *mut u8,
    src: *const u8,
    len: usize,
) -> usize {
    let f = flush as u64;
    // SAFETY: forwarded caller contract (see copy); the caller checked CPU support.
    unsafe {
        match kind {
            NtKind::Avx512 => __flex_fault_v1_copy_nt_avx512(dst, src, len, f),
            NtKind::Avx2 => __flex_fault_v1_copy_nt_avx2(dst, src, len, f),
            NtKind::Sse2 => __flex_fault_v1_copy_nt_sse2(dst, src, len, f),
        }
    }
}

/// # Safety
/// As [`copy`](super::copy::copy); `kind` and `flush` must be supported by the CPU.
#[inline]
pub(in crate::fault) unsafe fn zero_nt(
    kind: NtKind,
    flush: FlushKind,
    dst: *mut u8,
    len: usize,
) -> usize {
    let f = flush as u64;
    // SAFETY: forwarded caller contract (see copy); the caller checked CPU support.
    unsafe {
        match kind {
            NtKind::Avx512 => __flex_fault_v1_zero_nt_avx512(dst, len, f),
            NtKind::Avx2 => __flex_fault_v1_zero_nt_avx2(dst, len, f),
            NtKind::Sse2 => __flex_fault_v1_zero_nt_sse2(dst, len, f),
        }
    }
}
