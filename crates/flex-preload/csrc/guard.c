/* The re-entrancy guard of libflex.so: one flag per thread, set while the thread runs
 * engine code (a libc call the engine makes must not re-enter it).
 *
 * In C only for its TLS model. libflex.so is loaded at start-up (LD_PRELOAD), so its
 * thread-locals may use the initial-exec model: one %fs-relative access. Rust's
 * thread_local! in a shared object uses the general-dynamic model, a __tls_get_addr call
 * on each access (about 20 instructions, twice per intercepted call). */
#define HIDDEN __attribute__((visibility("hidden")))

static __thread int busy __attribute__((tls_model("initial-exec")));

/* Enter engine code: 1, or 0 when this thread is already inside it. */
HIDDEN int flex_guard_enter(void) {
    if (busy) return 0;
    busy = 1;
    return 1;
}

HIDDEN void flex_guard_leave(void) {
    busy = 0;
}
