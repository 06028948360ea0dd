/* Variadic exec(3) entry points of libflex.so: gather the argument list and call the
 * execve/execvp that libflex.so exports (which hand managed descriptors to the kernel). */
#include <stdarg.h>
#include <stddef.h>
#include <unistd.h>
#include <errno.h>

#define FLEX_MAX_ARGS 4096

static int gather(const char *arg0, va_list ap, char **argv) {
    int n = 0;
    argv[n++] = (char *)arg0;
    while (arg0 != NULL) {
        if (n >= FLEX_MAX_ARGS) { errno = E2BIG; return -1; }
        arg0 = va_arg(ap, const char *);
        argv[n++] = (char *)arg0;
    }
    return n;
}

int execl(const char *path, const char *arg, ...) {
    char *argv[FLEX_MAX_ARGS + 1];
    va_list ap;
    va_start(ap, arg);
    int n = gather(arg, ap, argv);
    va_end(ap);
    if (n < 0) return -1;
    extern char **environ;
    return execve(path, argv, environ);
}

int execlp(const char *file, const char *arg, ...) {
    char *argv[FLEX_MAX_ARGS + 1];
    va_list ap;
    va_start(ap, arg);
    int n = gather(arg, ap, argv);
    va_end(ap);
    if (n < 0) return -1;
    return execvp(file, argv);
}

int execle(const char *path, const char *arg, ...) {
    char *argv[FLEX_MAX_ARGS + 1];
    va_list ap;
    va_start(ap, arg);
    int n = gather(arg, ap, argv);
    char **envp = n < 0 ? NULL : va_arg(ap, char **);
    va_end(ap);
    if (n < 0) return -1;
    return execve(path, argv, envp);
}
