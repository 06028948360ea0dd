//! The `syscall` instruction itself, inline: libflex.so's passthrough of calls flex does
//! not serve (no round trip through libc's `syscall()`, whose errno handling the caller
//! does its own way).

/// One system call with up to six arguments in the x86_64 system-call registers.
/// Returns the kernel's value: negative errno (-4095..-1) on failure. Integer arguments
/// narrower than a register are sign- or zero-extended by the caller's `as usize`; the
/// kernel reads only the width it declares.
///
/// # Safety
/// The arguments must be valid for system call `nr` (the application's own, passed on as
/// the libc wrapper would pass them: the kernel validates every pointer).
#[inline(always)]
pub unsafe fn syscall(nr: libc::c_long, args: &[usize]) -> isize {
    let mut a = [0usize; 6];
    a[..args.len()].copy_from_slice(args);
    let ret: isize;
    // SAFETY: the `syscall` instruction with the kernel's x86_64 convention: number in rax,
    // arguments in rdi, rsi, rdx, r10, r8, r9; it clobbers rcx and r11 and no stack.
    unsafe {
        core::arch::asm!(
            "syscall",
            inlateout("rax") nr as isize => ret,
            in("rdi") a[0],
            in("rsi") a[1],
            in("rdx") a[2],
            in("r10") a[3],
            in("r8") a[4],
            in("r9") a[5],
            lateout("rcx") _,
            lateout("r11") _,
            options(nostack),
        );
    }
    ret
}
