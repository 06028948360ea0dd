// The re-entrancy guard is C for its initial-exec TLS model (csrc/guard.c).
// The exec(3) functions that take a variadic argument list (execl, execlp, execle) cannot
// be defined in stable Rust; a few lines of C gather their arguments and call execve/execvp,
// which libflex.so exports in Rust. The C functions are hidden; src/proc.rs exports the
// names as jumps to them (which is also what makes the linker keep the object).
fn main() {
    println!("cargo:rerun-if-changed=csrc/variadic.c");
    println!("cargo:rerun-if-changed=csrc/guard.c");
    cc::Build::new()
        .file("csrc/variadic.c")
        .file("csrc/guard.c")
        .compile("flexvariadic");
}
