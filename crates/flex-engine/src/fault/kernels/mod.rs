//! The guarded copy kernels, in assembly, and the table of their guarded ranges.
//!
//! Every kernel is a leaf function that touches no stack and only caller-saved registers
//! (System V: rax, rcx, rdx, rsi, rdi, r8-r11, all vector registers), so a fault can be
//! recovered by moving RIP to the kernel's `_end` label, which is at the same time the
//! normal epilogue: it returns the count of bytes not (known to be) done, kept in a
//! register that each kernel updates only after a piece is complete:
//!
//! - `copy`/`zero`: rcx; below [`REP_THRESHOLD`](copy::REP_THRESHOLD) bytes SSE2 moves
//!   decrement it per 64-byte chunk (short ranges use overlapping moves and count only
//!   when all is done), from it on `rep movsb`/`rep stosb`, which the CPU keeps exact on a
//!   fault;
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
//!
//! The files: `macros` (assembly text shared by the kernels: symbol prologue, end label,
//! small copies and zeroings, the line flush), `copy` (`copy`, `copy_avx2` and `zero`,
//! ordinary stores), `nt` (`copy_nt_*` and `zero_nt_*`, non-temporal stores),
//! `flush` (write back a range's cache lines), and `resume` (where the signal handler
//! resumes: each kernel's fixup, and the `rt_sigreturn` trampoline).

#[macro_use]
mod macros;

mod copy;
mod flush;
mod nt;
mod resume;

pub(super) use copy::{copy, copy_avx2, zero};
pub(super) use flush::flush;
pub(super) use nt::{copy_nt, zero_nt};
pub(super) use resume::{fixup_for, restorer};
