/* Helper of crates/flexio/tests/bad_pointers.rs: calls path, exec and descriptor functions
 * with pointers to unreadable memory, each in a forked child, and prints one line per call:
 * how the child ended ("exit E": E is the call's errno, 0 on success; "signal S").
 * Run in a directory holding "f" (4096 bytes) and "g"; run once without flex and once
 * under `flexio run --paths <dir>`: the two outputs must be the same.
 *
 * Rounds: "pre" before this process opened a managed file (the engine does not exist
 * yet), "post" after, plus descriptor calls on the managed descriptor. Strings that end
 * exactly at a page boundary before a PROT_NONE page (valid ones, 4095 and 4096 bytes long)
 * check that a correct path next to unreadable memory is still read whole.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <spawn.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/sendfile.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <sys/wait.h>
#include <unistd.h>

extern char **environ;

#define PAGE 4096
/* Three readable pages, then one PROT_NONE page. */
static char *g_base;
static char *g_none;

/* Copy `s` (with its NUL) so that the NUL is the last readable byte. */
static const char *at_end(const char *s) {
    size_t n = strlen(s) + 1;
    char *p = g_none - n;
    memcpy(p, s, n);
    return p;
}

/* `n` bytes of 'a' ending at the PROT_NONE page, no NUL. */
static const char *run_into_none(size_t n) {
    char *p = g_none - n;
    memset(p, 'a', n);
    return p;
}

struct ptr {
    const char *name;
    int kind; /* 0: fixed address; 1: PROT_NONE page; 2: runs into PROT_NONE; 3: string */
    uintptr_t addr;
    size_t len;
    const char *str;
};

static char g_long4095[4096];
static char g_long4096[4097];

static const struct ptr BAD[] = {
    {"NULL", 0, 0, 0, 0},
    {"one", 0, 1, 0, 0},
    {"page0", 0, 4095, 0, 0},
    {"kernel", 0, 0xffff888000000000ull, 0, 0},
    {"vsyscall", 0, 0xffffffffff600000ull, 0, 0},
    {"noncanonical", 0, 0x0000800000000000ull, 0, 0},
    {"prot_none", 1, 0, 0, 0},
    {"runs_into_none_1", 2, 0, 1, 0},
    {"runs_into_none_300", 2, 0, 300, 0},
    {"runs_into_none_4095", 2, 0, 4095, 0},
    {"runs_into_none_4096", 2, 0, 4096, 0},
    {"runs_into_none_9000", 2, 0, 9000, 0},
};

/* Valid strings at the page edge: only harmless calls are made with them. */
static const struct ptr EDGE[] = {
    {"edge_f", 3, 0, 0, "f"},
    {"edge_abs_f", 3, 0, 0, 0}, /* filled with the absolute path in main */
    {"edge_empty", 3, 0, 0, ""},
    {"edge_long4095", 3, 0, 0, g_long4095},
    {"edge_long4096", 3, 0, 0, g_long4096},
};
static char g_abs_f[PAGE];

static const char *resolve(const struct ptr *p) {
    switch (p->kind) {
    case 0: return (const char *)p->addr;
    case 1: return g_none;
    case 2: return run_into_none(p->len);
    default: return at_end(p->str ? p->str : g_abs_f);
    }
}

#define R(expr) ((expr) < 0 ? errno : 0)

static int g_mfd = -1;

/* Calls that take a path (or a string the kernel or libc reads). */
static int path_op(const char *op, const char *p) {
    struct stat st;
    struct statx stx;
    char *args[] = {"true", NULL};
    if (!strcmp(op, "open")) return R(open(p, O_RDONLY));
    if (!strcmp(op, "open_rdwr")) return R(open(p, O_RDWR));
    if (!strcmp(op, "open_creat")) return R(open(p, O_RDWR | O_CREAT, 0644));
    if (!strcmp(op, "open64")) return R(open64(p, O_RDONLY));
    if (!strcmp(op, "openat")) return R(openat(AT_FDCWD, p, O_RDONLY));
    if (!strcmp(op, "creat")) return R(creat(p, 0644));
    if (!strcmp(op, "truncate")) return R(truncate(p, PAGE));
    if (!strcmp(op, "stat")) return R(stat(p, &st));
    if (!strcmp(op, "lstat")) return R(lstat(p, &st));
    if (!strcmp(op, "fstatat")) return R(fstatat(AT_FDCWD, p, &st, 0));
    if (!strcmp(op, "fstatat_empty")) return R(fstatat(AT_FDCWD, p, &st, AT_EMPTY_PATH));
    if (!strcmp(op, "statx")) return R(statx(AT_FDCWD, p, 0, STATX_SIZE, &stx));
    if (!strcmp(op, "statx_empty")) return R(statx(AT_FDCWD, p, AT_EMPTY_PATH, STATX_SIZE, &stx));
    if (!strcmp(op, "unlink")) return R(unlink(p));
    if (!strcmp(op, "unlinkat")) return R(unlinkat(AT_FDCWD, p, 0));
    if (!strcmp(op, "unlinkat_dir")) return R(unlinkat(AT_FDCWD, p, AT_REMOVEDIR));
    if (!strcmp(op, "remove")) return R(remove(p));
    if (!strcmp(op, "rename_old")) return R(rename(p, "nothing"));
    if (!strcmp(op, "rename_new")) return R(rename("g", p));
    if (!strcmp(op, "renameat_new")) return R(renameat(AT_FDCWD, "g", AT_FDCWD, p));
    if (!strcmp(op, "renameat2_new")) return R(renameat2(AT_FDCWD, "g", AT_FDCWD, p, 0));
    if (!strcmp(op, "chdir")) return R(chdir(p));
    if (!strcmp(op, "fopen")) {
        FILE *f = fopen(p, "r");
        return f ? 0 : errno;
    }
    if (!strcmp(op, "fopen_w")) {
        FILE *f = fopen(p, "r+");
        return f ? 0 : errno;
    }
    if (!strcmp(op, "fopen_mode")) {
        FILE *f = fopen("f", p);
        return f ? 0 : errno;
    }
    if (!strcmp(op, "fdopen_mode")) {
        int fd = g_mfd >= 0 ? dup(g_mfd) : open("f", O_RDONLY);
        FILE *f = fdopen(fd, p);
        return f ? 0 : errno;
    }
    if (!strcmp(op, "execve")) return R(execve(p, args, environ));
    if (!strcmp(op, "execv")) return R(execv(p, args));
    if (!strcmp(op, "execvp")) return R(execvp(p, args));
    if (!strcmp(op, "posix_spawn")) {
        pid_t pid;
        int r = posix_spawn(&pid, p, NULL, NULL, args, environ);
        if (r == 0) waitpid(pid, NULL, 0);
        return r;
    }
    if (!strcmp(op, "posix_spawnp")) {
        pid_t pid;
        int r = posix_spawnp(&pid, p, NULL, NULL, args, environ);
        if (r == 0) waitpid(pid, NULL, 0);
        return r;
    }
    fprintf(stderr, "unknown op %s\n", op);
    exit(99);
}

static const char *BAD_OPS[] = {
    "open", "open_rdwr", "open_creat", "open64", "openat", "creat", "truncate", "stat",
    "lstat", "fstatat", "fstatat_empty", "statx", "statx_empty", "unlink", "unlinkat",
    "unlinkat_dir", "remove", "rename_old", "rename_new", "renameat_new", "renameat2_new",
    "chdir", "fopen", "fopen_w", "fopen_mode", "fdopen_mode", "execve", "execv", "execvp",
    "posix_spawn", "posix_spawnp",
};
static const char *EDGE_OPS[] = {
    "open", "open_rdwr", "open64", "openat", "truncate", "stat", "lstat", "fstatat",
    "fstatat_empty", "statx", "statx_empty", "chdir", "fopen", "fopen_w",
};

/* Run `fn` in a child; print how it ended. */
static void in_child(const char *round, const char *op, const char *what, int (*fn)(const char *, const char *), const char *a, const struct ptr *p) {
    fflush(stdout);
    pid_t pid = fork();
    if (pid < 0) {
        perror("fork");
        exit(1);
    }
    if (pid == 0) {
        int r = fn(a, p ? resolve(p) : NULL);
        _exit(r & 0xff);
    }
    int status;
    if (waitpid(pid, &status, 0) < 0) {
        perror("waitpid");
        exit(1);
    }
    if (WIFEXITED(status))
        printf("%s %s %s: exit %d\n", round, op, what, WEXITSTATUS(status));
    else if (WIFSIGNALED(status))
        printf("%s %s %s: signal %d\n", round, op, what, WTERMSIG(status));
    else
        printf("%s %s %s: status %#x\n", round, op, what, status);
}

static void path_round(const char *round) {
    for (size_t i = 0; i < sizeof BAD / sizeof BAD[0]; i++)
        for (size_t j = 0; j < sizeof BAD_OPS / sizeof BAD_OPS[0]; j++)
            in_child(round, BAD_OPS[j], BAD[i].name, path_op, BAD_OPS[j], &BAD[i]);
    for (size_t i = 0; i < sizeof EDGE / sizeof EDGE[0]; i++)
        for (size_t j = 0; j < sizeof EDGE_OPS / sizeof EDGE_OPS[0]; j++)
            in_child(round, EDGE_OPS[j], EDGE[i].name, path_op, EDGE_OPS[j], &EDGE[i]);
    /* A valid mode string at the page edge. */
    for (size_t j = 0; j < 2; j++) {
        static const struct ptr modes[] = {{"edge_mode_r", 3, 0, 0, "r"}, {"edge_mode_rplus", 3, 0, 0, "r+"}};
        in_child(round, "fopen_mode", modes[j].name, path_op, "fopen_mode", &modes[j]);
        in_child(round, "fdopen_mode", modes[j].name, path_op, "fdopen_mode", &modes[j]);
    }
}

/* Descriptor calls with bad buffers, iovecs, offsets and structs on the managed descriptor. */
static int fd_op(const char *op, const char *p) {
    int fd = g_mfd;
    void *bad = (void *)p;
    struct iovec iov = {bad, 16};
    if (!strcmp(op, "read")) return R(read(fd, bad, 16));
    if (!strcmp(op, "write")) return R(write(fd, bad, 16));
    if (!strcmp(op, "pread")) return R(pread(fd, bad, 16, 0));
    if (!strcmp(op, "pwrite")) return R(pwrite(fd, bad, 16, 0));
    if (!strcmp(op, "readv_base")) return R(readv(fd, &iov, 1));
    if (!strcmp(op, "writev_base")) return R(writev(fd, &iov, 1));
    if (!strcmp(op, "readv_array")) return R(readv(fd, (struct iovec *)bad, 1));
    if (!strcmp(op, "writev_array")) return R(writev(fd, (struct iovec *)bad, 1));
    if (!strcmp(op, "preadv2_array")) return R(preadv2(fd, (struct iovec *)bad, 2, 0, 0));
    if (!strcmp(op, "pwritev2_array")) return R(pwritev2(fd, (struct iovec *)bad, 2, -1, 0));
    if (!strcmp(op, "fstat")) return R(fstat(fd, (struct stat *)bad));
    if (!strcmp(op, "stat_buf")) return R(stat("f", (struct stat *)bad));
    if (!strcmp(op, "fstatat_empty_buf")) return R(fstatat(fd, "", (struct stat *)bad, AT_EMPTY_PATH));
    if (!strcmp(op, "statx_buf")) return R(statx(AT_FDCWD, "f", 0, STATX_SIZE, (struct statx *)bad));
    if (!strcmp(op, "fcntl_setlk")) return R(fcntl(fd, F_SETLK, bad));
    if (!strcmp(op, "fcntl_getlk")) return R(fcntl(fd, F_GETLK, bad));
    if (!strcmp(op, "fcntl_ofd_setlk")) return R(fcntl(fd, F_OFD_SETLK, bad));
    if (!strcmp(op, "sendfile_off")) {
        int out = open("g", O_WRONLY);
        return R(sendfile(out, fd, (off_t *)bad, 16));
    }
    if (!strcmp(op, "copy_file_range_off")) {
        int out = open("g", O_WRONLY);
        return R(copy_file_range(fd, (off_t *)bad, out, NULL, 16, 0));
    }
    if (!strcmp(op, "splice_off")) {
        int pp[2];
        if (pipe(pp) < 0) return 255;
        return R(splice(fd, (loff_t *)bad, pp[1], NULL, 16, 0));
    }
    if (!strcmp(op, "sigaction_act")) return R(sigaction(SIGSEGV, (struct sigaction *)bad, NULL));
    if (!strcmp(op, "sigaction_old")) return R(sigaction(SIGBUS, NULL, (struct sigaction *)bad));
    if (!strcmp(op, "execve_argv")) return R(execve("/bin/true", (char **)bad, environ));
    if (!strcmp(op, "execve_argv_elem")) {
        char *args[] = {(char *)bad, NULL};
        return R(execve("/bin/true", args, environ));
    }
    if (!strcmp(op, "execve_envp")) {
        char *args[] = {"true", NULL};
        return R(execve("/bin/true", args, (char **)bad));
    }
    fprintf(stderr, "unknown op %s\n", op);
    exit(99);
}

static const char *FD_OPS[] = {
    "read", "write", "pread", "pwrite", "readv_base", "writev_base", "readv_array",
    "writev_array", "preadv2_array", "pwritev2_array", "fstat", "stat_buf",
    "fstatat_empty_buf", "statx_buf", "fcntl_setlk", "fcntl_getlk", "fcntl_ofd_setlk",
    "sendfile_off", "copy_file_range_off", "splice_off", "sigaction_act", "sigaction_old",
    "execve_argv", "execve_argv_elem", "execve_envp",
};

/* Mode "edge": only the valid page-edge strings, opened by this one process (the test
 * checks in its statistics that flex served all three). */
static int edge_only(void) {
    int e1 = open(at_end("f"), O_RDONLY);
    int e2 = open(at_end(g_long4095), O_RDONLY);
    char path[8];
    strcpy(path, "f");
    FILE *f = fopen(path, at_end("r"));
    printf("edge opens: %d %d %d\n", e1 >= 0, e2 >= 0, f != NULL);
    return e1 >= 0 && e2 >= 0 && f ? 0 : 1;
}

int main(int argc, char **argv) {
    g_base = mmap(NULL, 4 * PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (g_base == MAP_FAILED || mprotect(g_base + 3 * PAGE, PAGE, PROT_NONE) < 0) {
        perror("mmap");
        return 1;
    }
    g_none = g_base + 3 * PAGE;
    /* "././.../f": 4095 bytes; "././...//f": 4096 bytes. */
    for (int i = 0; i < 2047; i++) memcpy(g_long4095 + 2 * i, "./", 2);
    g_long4095[4094] = 'f';
    memcpy(g_long4096, g_long4095, 4094);
    memcpy(g_long4096 + 4094, "/f", 3);
    if (!getcwd(g_abs_f, sizeof g_abs_f - 3)) {
        perror("getcwd");
        return 1;
    }
    strcat(g_abs_f, "/f");

    if (argc > 1 && !strcmp(argv[1], "edge")) return edge_only();

    path_round("pre");

    g_mfd = open("f", O_RDWR);
    if (g_mfd < 0) {
        perror("open f");
        return 1;
    }
    /* Reads through the engine (past the adoption threshold: the file gets mapped). */
    char b[16];
    for (int i = 0; i < 4; i++)
        if (pread(g_mfd, b, sizeof b, 0) != sizeof b) {
            perror("pread");
            return 1;
        }
    /* The page-edge and 4095-byte paths, opened by this process: counted as served. */
    int e1 = open(at_end("f"), O_RDONLY);
    int e2 = open(at_end(g_long4095), O_RDONLY);
    printf("edge opens: %d %d\n", e1 >= 0, e2 >= 0);

    path_round("post");

    const struct ptr FD_BAD[] = {
        {"NULL", 0, 0, 0, 0},
        {"one", 0, 1, 0, 0},
        {"kernel", 0, 0xffff888000000000ull, 0, 0},
        {"prot_none", 1, 0, 0, 0},
    };
    for (size_t i = 0; i < sizeof FD_BAD / sizeof FD_BAD[0]; i++)
        for (size_t j = 0; j < sizeof FD_OPS / sizeof FD_OPS[0]; j++)
            in_child("fd", FD_OPS[j], FD_BAD[i].name, fd_op, FD_OPS[j], &FD_BAD[i]);
    return 0;
}
