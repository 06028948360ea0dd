// The exec(3) functions that take a variadic argument list (execl, execlp, execle) cannot
// be defined in stable Rust; a few lines of C gather their arguments and call execve/execvp,
// which libflex.so exports in Rust.
fn main() {
    println!("cargo:rerun-if-changed=csrc/variadic.c");
    cc::Build::new()
        .file("csrc/variadic.c")
        .flag_if_supported("-fvisibility=default")
        .compile("flexvariadic");
}
