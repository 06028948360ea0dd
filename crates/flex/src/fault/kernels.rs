//! The guarded copy kernels, in assembly, and the table of their guarded ranges.
//!
//! Every kernel is a leaf function that touches no stack and only caller-saved registers
//! (System V: rax, rcx, rdx, rsi, rdi, r8-r11, all vector registers), so a fault can be
//! recovered by moving RIP to the kernel's `_end` label, which is at the same time the
//! normal epilogue: it returns the count of bytes not (known to be) done, kept in a
//! register that each kernel updates only after a piece is complete:
//!
//! - `copy`/`zero`: rcx; below [`REP_THRESHOLD`] bytes SSE2 moves decrement it per 64-byte
//!   chunk (short ranges use overlapping moves and count only when all is done), from it
//!   on `rep movsb`/`rep stosb`, which the CPU keeps exact on a fault;
//! - `copy_nt_*`/`zero_nt_*`: r8, decremented after each stored (and, for partial lines,
//!   flushed) piece;
//! - `flush`: computed from the line pointer rdi and the end r8.
//!
//! A fault anywhere in `[start, end)` of a kernel is recovered by `RIP := end`: see
//! [`fixup_for`]. The symbols are global (so Rust can name them) but hidden (not exported
//! from libflex.so).
//!
//! Kernel arguments (System V): rdi = dst, rsi = src (copies) or len (zero), rdx = len
//! (copies) or flush kind (zero_nt), rcx = flush kind (copy_nt). The flush kind is a
//! [`crate::persist::FlushKind`] discriminant: 3 = clwb, 2 = clflushopt, else clflush.

use core::arch::global_asm;

/// From this length on, `copy`/`zero` use `rep movsb`/`rep stosb` (fast for large sizes
/// with ERMS/FSRM, but with a start-up cost that SSE2 moves beat below it).
pub(super) const REP_THRESHOLD: usize = 768;

/// With AVX2, vector moves are used from 256 bytes up to this length, `rep movsb` beyond.
pub(super) const AVX_REP_THRESHOLD: usize = 32 << 10;

/// Flush the cache line at `[$reg]` with the instruction selected by r9d.
/// Uses local labels 27/28/29 (each use is self-contained: only forward references).
macro_rules! flush_line {
    ($reg:literal) => {
        concat!(
            "    cmp r9d, 3\n",
            "    je 27f\n",
            "    cmp r9d, 2\n",
            "    je 28f\n",
            "    clflush byte ptr [",
            $reg,
            "]\n",
            "    jmp 29f\n",
            "27:\n",
            "    clwb byte ptr [",
            $reg,
            "]\n",
            "    jmp 29f\n",
            "28:\n",
            "    clflushopt byte ptr [",
            $reg,
            "]\n",
            "29:\n",
        )
    };
}

/// Copy rcx bytes, 1 <= rcx <= 63, from [rsi] to [rdi] with (possibly overlapping) 32/16/8/
/// 4/1-byte moves; registers are not advanced. Clobbers rax, rdx, xmm0-xmm3 (`$mov` is
/// `movdqu` or, in AVX kernels, `vmovdqu`). Labels 31-35.
macro_rules! small_copy {
    ($mov:literal) => {
        concat!(
            "    cmp rcx, 32\n",
            "    jb 31f\n",
            "    ",
            $mov,
            " xmm0, xmmword ptr [rsi]\n",
            "    ",
            $mov,
            " xmm1, xmmword ptr [rsi + 16]\n",
            "    ",
            $mov,
            " xmm2, xmmword ptr [rsi + rcx - 32]\n",
            "    ",
            $mov,
            " xmm3, xmmword ptr [rsi + rcx - 16]\n",
            "    ",
            $mov,
            " xmmword ptr [rdi], xmm0\n",
            "    ",
            $mov,
            " xmmword ptr [rdi + 16], xmm1\n",
            "    ",
            $mov,
            " xmmword ptr [rdi + rcx - 32], xmm2\n",
            "    ",
            $mov,
            " xmmword ptr [rdi + rcx - 16], xmm3\n",
            "    jmp 35f\n",
            "31:\n",
            "    cmp rcx, 16\n",
            "    jb 32f\n",
            "    ",
            $mov,
            " xmm0, xmmword ptr [rsi]\n",
            "    ",
            $mov,
            " xmm1, xmmword ptr [rsi + rcx - 16]\n",
            "    ",
            $mov,
            " xmmword ptr [rdi], xmm0\n",
            "    ",
            $mov,
            " xmmword ptr [rdi + rcx - 16], xmm1\n",
            "    jmp 35f\n",
            "32:\n",
            "    cmp rcx, 8\n",
            "    jb 33f\n",
            "    mov rax, qword ptr [rsi]\n",
            "    mov rdx, qword ptr [rsi + rcx - 8]\n",
            "    mov qword ptr [rdi], rax\n",
            "    mov qword ptr [rdi + rcx - 8], rdx\n",
            "    jmp 35f\n",
            "33:\n",
            "    cmp rcx, 4\n",
            "    jb 34f\n",
            "    mov eax, dword ptr [rsi]\n",
            "    mov edx, dword ptr [rsi + rcx - 4]\n",
            "    mov dword ptr [rdi], eax\n",
            "    mov dword ptr [rdi + rcx - 4], edx\n",
            "    jmp 35f\n",
            "34:\n",
            "    movzx eax, byte ptr [rsi]\n",
            "    movzx edx, byte ptr [rsi + rcx - 1]\n",
            "    mov byte ptr [rdi], al\n",
            "    mov byte ptr [rdi + rcx - 1], dl\n",
            "    cmp rcx, 2\n",
            "    jbe 35f\n",
            "    movzx eax, byte ptr [rsi + 1]\n",
            "    mov byte ptr [rdi + 1], al\n",
            "35:\n",
        )
    };
}

/// Zero rcx bytes, 1 <= rcx <= 63, at [rdi]; needs rax = 0 and xmm0 = 0; rdi is not
/// advanced. Labels 31-35.
macro_rules! small_zero {
    ($mov:literal) => {
        concat!(
            "    cmp rcx, 32\n",
            "    jb 31f\n",
            "    ",
            $mov,
            " xmmword ptr [rdi], xmm0\n",
            "    ",
            $mov,
            " xmmword ptr [rdi + 16], xmm0\n",
            "    ",
            $mov,
            " xmmword ptr [rdi + rcx - 32], xmm0\n",
            "    ",
            $mov,
            " xmmword ptr [rdi + rcx - 16], xmm0\n",
            "    jmp 35f\n",
            "31:\n",
            "    cmp rcx, 16\n",
            "    jb 32f\n",
            "    ",
            $mov,
            " xmmword ptr [rdi], xmm0\n",
            "    ",
            $mov,
            " xmmword ptr [rdi + rcx - 16], xmm0\n",
            "    jmp 35f\n",
            "32:\n",
            "    cmp rcx, 8\n",
            "    jb 33f\n",
            "    mov qword ptr [rdi], rax\n",
            "    mov qword ptr [rdi + rcx - 8], rax\n",
            "    jmp 35f\n",
            "33:\n",
            "    cmp rcx, 4\n",
            "    jb 34f\n",
            "    mov dword ptr [rdi], eax\n",
            "    mov dword ptr [rdi + rcx - 4], eax\n",
            "    jmp 35f\n",
            "34:\n",
            "    mov byte ptr [rdi], al\n",
            "    mov byte ptr [rdi + rcx - 1], al\n",
            "    cmp rcx, 2\n",
            "    jbe 35f\n",
            "    mov byte ptr [rdi + 1], al\n",
            "35:\n",
        )
    };
}

/// Symbol prologue: global, hidden, function type, 32-byte aligned.
macro_rules! func {
    ($name:literal) => {
        concat!(
            "    .p2align 5\n",
            "    .globl ",
            $name,
            "\n",
            "    .hidden ",
            $name,
            "\n",
            "    .type ",
            $name,
            ",@function\n",
            $name,
            ":\n",
        )
    };
}

/// End label (guarded range end and fixup) of a kernel.
macro_rules! end_label {
    ($name:literal) => {
        concat!(
            "    .globl ",
            $name,
            "_end\n",
            "    .hidden ",
            $name,
            "_end\n",
            $name,
            "_end:\n",
        )
    };
}

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
    // rt_sigreturn trampoline for the raw rt_sigaction fallback (SA_RESTORER).
    func!("__flex_fault_v1_restore_rt"),
    "    mov eax, 15",
    "    syscall",
    "    ud2",
    "    .size __flex_fault_v1_restore_rt, . - __flex_fault_v1_restore_rt",
    "    .popsection",
    rep = const REP_THRESHOLD,
    avxrep = const AVX_REP_THRESHOLD,
);

extern "C" {
    fn __flex_fault_v1_copy(dst: *mut u8, src: *const u8, len: usize) -> usize;
    fn __flex_fault_v1_copy_avx2(dst: *mut u8, src: *const u8, len: usize) -> usize;
    fn __flex_fault_v1_zero(dst: *mut u8, len: usize) -> usize;
    fn __flex_fault_v1_flush(addr: *const u8, len: usize, kind: u64) -> usize;
    fn __flex_fault_v1_copy_nt_sse2(dst: *mut u8, src: *const u8, len: usize, kind: u64) -> usize;
    fn __flex_fault_v1_copy_nt_avx2(dst: *mut u8, src: *const u8, len: usize, kind: u64) -> usize;
    fn __flex_fault_v1_copy_nt_avx512(dst: *mut u8, src: *const u8, len: usize, kind: u64)
        -> usize;
    fn __flex_fault_v1_zero_nt_sse2(dst: *mut u8, len: usize, kind: u64) -> usize;
    fn __flex_fault_v1_zero_nt_avx2(dst: *mut u8, len: usize, kind: u64) -> usize;
    fn __flex_fault_v1_zero_nt_avx512(dst: *mut u8, len: usize, kind: u64) -> usize;
    fn __flex_fault_v1_restore_rt();

    fn __flex_fault_v1_copy_end();
    fn __flex_fault_v1_copy_avx2_end();
    fn __flex_fault_v1_zero_end();
    fn __flex_fault_v1_flush_end();
    fn __flex_fault_v1_copy_nt_sse2_end();
    fn __flex_fault_v1_copy_nt_avx2_end();
    fn __flex_fault_v1_copy_nt_avx512_end();
    fn __flex_fault_v1_zero_nt_sse2_end();
    fn __flex_fault_v1_zero_nt_avx2_end();
    fn __flex_fault_v1_zero_nt_avx512_end();
}

use crate::persist::{FlushKind, NtKind};

/// If `rip` lies inside a kernel, the address execution must resume at (the kernel's
/// `_end` label, which returns the count of bytes not done). Async-signal-safe: it only
/// compares addresses.
pub(super) fn fixup_for(rip: usize) -> Option<usize> {
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
pub(super) fn restorer() -> usize {
    __flex_fault_v1_restore_rt as *const () as usize
}

/// # Safety
/// Both ranges valid, or faults recoverable by the installed handler; no overlap.
#[inline]
pub(super) unsafe fn copy(dst: *mut u8, src: *const u8, len: usize) -> usize {
    // SAFETY: forwarded caller contract; the kernel is a leaf using only caller-saved
    // registers, as declared by the extern "C" signature.
    unsafe { __flex_fault_v1_copy(dst, src, len) }
}

/// # Safety
/// As [`copy`]; the CPU must have AVX2.
#[inline]
pub(super) unsafe fn copy_avx2(dst: *mut u8, src: *const u8, len: usize) -> usize {
    // SAFETY: forwarded caller contract (see copy); the caller checked AVX2.
    unsafe { __flex_fault_v1_copy_avx2(dst, src, len) }
}

/// # Safety
/// As [`copy`].
#[inline]
pub(super) unsafe fn zero(dst: *mut u8, len: usize) -> usize {
    // SAFETY: forwarded caller contract (see copy).
    unsafe { __flex_fault_v1_zero(dst, len) }
}

/// # Safety
/// As [`copy`]; `flush` must be supported by the CPU.
#[inline]
pub(super) unsafe fn flush(addr: *const u8, len: usize, flush: FlushKind) -> usize {
    // SAFETY: forwarded caller contract (see copy).
    unsafe { __flex_fault_v1_flush(addr, len, flush as u64) }
}

/// # Safety
/// As [`copy`]; `kind` and `flush` must be supported by the CPU.
#[inline]
pub(super) unsafe fn copy_nt(
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
/// As [`copy`]; `kind` and `flush` must be supported by the CPU.
#[inline]
pub(super) unsafe fn zero_nt(kind: NtKind, flush: FlushKind, dst: *mut u8, len: usize) -> usize {
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
