/* The variadic exec(3) calls of libflex.so: gather the argument list and call the execve
 * and execvp that libflex.so exports (which hand managed descriptors to the kernel).
 *
 * These functions are hidden: the exported execl, execlp and execle are one-jump
 * trampolines in src/proc.rs (a cdylib exports only Rust's symbols, and the linker drops
 * an archive member nothing references). The jump leaves every register and the stack as
 * the caller set them, so the va_list here sees the caller's arguments. */
#include <errno.h>
#include <limits.h>
#include <stdarg.h>
#include <stddef.h>
#include <unistd.h>

extern char **environ;

#define HIDDEN __attribute__((visibility("hidden")))

/* Arguments after `arg0` up to and including the terminating NULL (as glibc counts). */
static long count(const char *arg0, va_list ap) {
    long n = 1;
    if (arg0 == NULL) return n;
    while (va_arg(ap, const char *) != NULL) {
        if (++n >= INT_MAX) return -1;
    }
    return n + 1;
}

/* Fill argv (n slots, from count) from arg0 and the list; with `envp`, also read the
 * environment that follows the terminating NULL (execle). */
static void gather(const char *arg0, va_list ap, char **argv, long n, char ***envp) {
    argv[0] = (char *)arg0;
    for (long i = 1; i < n; i++) argv[i] = va_arg(ap, char *);
    if (envp != NULL) *envp = va_arg(ap, char **);
}

HIDDEN int flex_execl(const char *path, const char *arg0, ...) {
    va_list ap;
    va_start(ap, arg0);
    long n = count(arg0, ap);
    va_end(ap);
    if (n < 0) { errno = E2BIG; return -1; }
    char *argv[n];
    va_start(ap, arg0);
    gather(arg0, ap, argv, n, NULL);
    va_end(ap);
    return execve(path, argv, environ);
}

HIDDEN int flex_execlp(const char *file, const char *arg0, ...) {
    va_list ap;
    va_start(ap, arg0);
    long n = count(arg0, ap);
    va_end(ap);
    if (n < 0) { errno = E2BIG; return -1; }
    char *argv[n];
    va_start(ap, arg0);
    gather(arg0, ap, argv, n, NULL);
    va_end(ap);
    return execvp(file, argv);
}

HIDDEN int flex_execle(const char *path, const char *arg0, ...) {
    va_list ap;
    va_start(ap, arg0);
    long n = count(arg0, ap);
    va_end(ap);
    if (n < 0) { errno = E2BIG; return -1; }
    char *argv[n];
    va_start(ap, arg0);
    char **envp;
    gather(arg0, ap, argv, n, &envp);
    va_end(ap);
    return execve(path, argv, envp);
}
