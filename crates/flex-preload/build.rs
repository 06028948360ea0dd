// The re-entrancy guard is C for its initial-exec TLS model (csrc/guard.c).
// The exec(3) functions that take a variadic argument list (execl, execlp, execle) cannot
// be defined in stable Rust; a few lines of C gather their arguments and call execve/execvp,
// which libflex.so exports in Rust. The C functions are hidden; src/proc.rs exports the
// names as jumps to them (which is also what makes the linker keep the object).
//
// The unwinder (catch_unwind turns a panic into EIO) is linked in from libgcc_eh.a, so
// that libgcc_s.so is not loaded into every program: its load and its constructor (CPU
// feature probing with cpuid, a trap to the hypervisor in a VM) were a good part of what
// libflex added to every exec. No unwinding crosses into or out of libflex (its exported
// functions are extern "C", which abort on unwind), so a second unwinder in a program
// that loads libgcc_s itself never sees a foreign frame. Without libgcc_eh.a (another C
// compiler) the link falls back to libgcc_s.
fn main() {
    static_unwinder();
    println!("cargo:rerun-if-changed=csrc/variadic.c");
    println!("cargo:rerun-if-changed=csrc/guard.c");
    cc::Build::new()
        .file("csrc/variadic.c")
        .file("csrc/guard.c")
        .compile("flexvariadic");
}

fn static_unwinder() {
    let cc = cc::Build::new().get_compiler();
    let Ok(out) = cc.to_command().arg("-print-file-name=libgcc_eh.a").output() else {
        return;
    };
    let path = std::path::PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
    if !path.is_absolute() || !path.exists() {
        return;
    }
    if let Some(dir) = path.parent() {
        println!("cargo:rustc-link-search=native={}", dir.display());
        println!("cargo:rustc-link-lib=static:+whole-archive=gcc_eh");
    }
}
