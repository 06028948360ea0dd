//! Assembly text shared by the kernels (each macro expands to a string literal): the
//! symbol prologue and end label, the small copies and zeroings of fewer than 64 bytes,
//! and the flush of one cache line.

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
