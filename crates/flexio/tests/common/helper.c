/* Test helper run under `flexio run` by crates/flexio/tests/process.rs.
 * Compiled at test time with `cc -pthread`. Every mode exits 0 on success, prints what
 * it observed on stdout, and reports failures on stderr with exit code 1.
 *
 *   append PATH THREADS RECORDS    threads write records to one O_APPEND description
 *   writer PATH                    appends deterministic records forever, reporting each end
 *   enospc PATH                    write until ENOSPC, then check and keep going
 *   hole PATH FILLER               fill the fs behind flex's back, then write into a hole
 *   reader PATH                    pread commands from stdin ("OFF LEN"), answers on stdout
 *   race PATH ITERS                pread loop while another process truncates the file
 *   stdio PATH                     the file on fd 1, written by write() and by stdio
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

static void die(const char *what) {
    fprintf(stderr, "helper: %s: %s\n", what, strerror(errno));
    exit(1);
}

/* The content every mode writes: a function of the byte's file offset. */
static unsigned char pat(uint64_t o) {
    return (unsigned char)(((o ^ (o >> 8) ^ (o >> 16)) * 0x9d + 7) & 0xff);
}

/* Length of record i of the `writer` mode (the test computes the same sequence). */
static size_t rec_len(uint64_t i) { return 1 + (size_t)((i * 7919) % 5000); }

/* ---- append ---- */
static int g_fd;
static int g_records;

static void *append_thread(void *arg) {
    int t = (int)(intptr_t)arg;
    char rec[512];
    for (int r = 0; r < g_records; r++) {
        int len = 24 + (r * 7 + t * 13) % 200;
        int h = snprintf(rec, sizeof rec, "t=%02d r=%06d ", t, r);
        memset(rec + h, 'a' + t, (size_t)(len - h - 1));
        rec[len - 1] = '\n';
        ssize_t n = write(g_fd, rec, (size_t)len);
        if (n != len) {
            fprintf(stderr, "helper: append t=%d r=%d wrote %zd of %d: %s\n", t, r, n, len,
                    strerror(errno));
            exit(1);
        }
    }
    return NULL;
}

static int mode_append(const char *path, int threads, int records) {
    g_fd = open(path, O_WRONLY | O_CREAT | O_APPEND | O_TRUNC, 0644);
    if (g_fd < 0) die("open");
    g_records = records;
    pthread_t th[64];
    for (int t = 0; t < threads; t++)
        if (pthread_create(&th[t], NULL, append_thread, (void *)(intptr_t)t)) die("thread");
    for (int t = 0; t < threads; t++) pthread_join(th[t], NULL);
    struct stat st;
    if (fstat(g_fd, &st)) die("fstat");
    off_t end = lseek(g_fd, 0, SEEK_CUR);
    printf("size %lld pos %lld\n", (long long)st.st_size, (long long)end);
    /* Read it back through another description (served from the mapping). */
    int rfd = open(path, O_RDONLY);
    if (rfd < 0) die("open for reading");
    static char rb[65536];
    long long total = 0;
    for (int pass = 0; pass < 2; pass++) {
        total = 0;
        for (;;) {
            ssize_t n = pread(rfd, rb, sizeof rb, total);
            if (n < 0) die("pread");
            if (n == 0) break;
            total += n;
        }
    }
    printf("readback %lld\n", total);
    return 0;
}

/* ---- writer (killed by the test) ---- */
static int mode_writer(const char *path) {
    int fd = open(path, O_WRONLY | O_CREAT | O_APPEND | O_TRUNC, 0644);
    if (fd < 0) die("open");
    static unsigned char buf[8192];
    uint64_t end = 0;
    setvbuf(stdout, NULL, _IONBF, 0);
    for (uint64_t i = 0;; i++) {
        size_t len = rec_len(i);
        for (size_t j = 0; j < len; j++) buf[j] = pat(end + j);
        ssize_t n = write(fd, buf, len);
        if (n != (ssize_t)len) die("write");
        end += len;
        char line[64];
        int l = snprintf(line, sizeof line, "%llu %llu\n", (unsigned long long)i,
                         (unsigned long long)end);
        if (write(1, line, (size_t)l) != l) die("report");
        if (end > (64u << 20)) pause();
    }
}

/* ---- enospc ---- */
static int mode_enospc(const char *path) {
    int fd = open(path, O_RDWR | O_CREAT | O_TRUNC, 0644);
    if (fd < 0) die("open");
    static unsigned char buf[4096];
    uint64_t n_ok = 0;
    int err = 0;
    for (;;) {
        for (size_t j = 0; j < sizeof buf; j++) buf[j] = pat(n_ok + j);
        ssize_t n = write(fd, buf, sizeof buf);
        if (n < 0) {
            err = errno;
            break;
        }
        n_ok += (uint64_t)n;
        if (n < (ssize_t)sizeof buf) { /* short: the next one fails */
            continue;
        }
        if (n_ok > (64u << 20)) {
            fprintf(stderr, "helper: no ENOSPC after 64 MiB\n");
            return 1;
        }
    }
    printf("wrote %llu errno %s\n", (unsigned long long)n_ok, err == ENOSPC ? "ENOSPC" : strerror(err));
    /* The program continues: position, size and every byte written are intact. */
    off_t pos = lseek(fd, 0, SEEK_CUR);
    struct stat st;
    if (fstat(fd, &st)) die("fstat");
    printf("pos %lld size %lld\n", (long long)pos, (long long)st.st_size);
    static unsigned char rd[65536];
    uint64_t at = 0, bad = 0;
    while (at < n_ok) {
        ssize_t n = pread(fd, rd, sizeof rd, (off_t)at);
        if (n <= 0) die("pread back");
        for (ssize_t j = 0; j < n; j++)
            if (rd[j] != pat(at + (uint64_t)j)) bad++;
        at += (uint64_t)n;
    }
    printf("verified %llu bad %llu\n", (unsigned long long)at, (unsigned long long)bad);
    /* Another write still fails cleanly; then free space and write again. */
    ssize_t again = write(fd, buf, sizeof buf);
    printf("again %s\n", again < 0 && errno == ENOSPC ? "ENOSPC" : again < 0 ? strerror(errno) : "ok");
    if (ftruncate(fd, (off_t)(n_ok / 2))) die("ftruncate");
    if (lseek(fd, 0, SEEK_END) != (off_t)(n_ok / 2)) die("lseek end");
    for (size_t j = 0; j < sizeof buf; j++) buf[j] = pat(n_ok / 2 + j);
    ssize_t after = write(fd, buf, sizeof buf);
    printf("after-truncate %zd\n", after);
    if (close(fd)) die("close");
    return 0;
}

/* ---- hole: the mapping covers a hole the file system can no longer fill ---- */
static int mode_hole(const char *path, const char *filler) {
    int fd = open(path, O_RDWR | O_CREAT | O_TRUNC, 0644);
    if (fd < 0) die("open");
    static unsigned char buf[4096];
    /* 64 KiB of data, then a 256 KiB hole (ftruncate). */
    for (uint64_t at = 0; at < 65536; at += sizeof buf) {
        for (size_t j = 0; j < sizeof buf; j++) buf[j] = pat(at + j);
        if (write(fd, buf, sizeof buf) != (ssize_t)sizeof buf) die("write data");
    }
    if (ftruncate(fd, 65536 + 262144)) die("ftruncate");
    /* A few reads so flex maps the file. */
    for (int i = 0; i < 4; i++)
        if (pread(fd, buf, sizeof buf, 4096 * i) != (ssize_t)sizeof buf) die("pread");
    /* Fill the file system with raw system calls (flex does not see them). */
    int ff = (int)syscall(SYS_openat, AT_FDCWD, filler, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    if (ff < 0) die("open filler");
    memset(buf, 0x5a, sizeof buf);
    for (;;) {
        long n = syscall(SYS_write, ff, buf, sizeof buf);
        if (n <= 0) break;
    }
    syscall(SYS_close, ff);
    /* Overwrites inside the file's size, into pages that do not exist yet. */
    int enospc = 0, ok = 0, other = 0;
    for (uint64_t at = 65536; at < 65536 + 262144; at += 16384) {
        ssize_t n = pwrite(fd, buf, sizeof buf, (off_t)at);
        if (n < 0 && errno == ENOSPC)
            enospc++;
        else if (n == (ssize_t)sizeof buf)
            ok++;
        else
            other++;
    }
    printf("hole-writes enospc %d ok %d other %d\n", enospc, ok, other);
    uint64_t bad = 0;
    for (uint64_t at = 0; at < 65536; at += sizeof buf) {
        if (pread(fd, buf, sizeof buf, (off_t)at) != (ssize_t)sizeof buf) die("pread back");
        for (size_t j = 0; j < sizeof buf; j++)
            if (buf[j] != pat(at + j)) bad++;
    }
    struct stat st;
    if (fstat(fd, &st)) die("fstat");
    printf("data-bad %llu size %lld\n", (unsigned long long)bad, (long long)st.st_size);
    if (close(fd)) die("close");
    return 0;
}

/* ---- reader: answers pread commands (synchronised truncation test) ---- */
static int mode_reader(const char *path) {
    int fd = open(path, O_RDONLY);
    if (fd < 0) die("open");
    static unsigned char buf[1 << 20];
    setvbuf(stdout, NULL, _IONBF, 0);
    char line[256];
    while (fgets(line, sizeof line, stdin)) {
        char cmd[16];
        unsigned long long off = 0, len = 0;
        if (sscanf(line, "%15s %llu %llu", cmd, &off, &len) < 1) continue;
        if (!strcmp(cmd, "quit")) break;
        if (!strcmp(cmd, "pread")) {
            if (len > sizeof buf) len = sizeof buf;
            ssize_t n = pread(fd, buf, (size_t)len, (off_t)off);
            uint64_t bad = 0;
            for (ssize_t j = 0; j < n; j++)
                if (buf[j] != pat(off + (uint64_t)j)) bad++;
            printf("n %zd bad %llu\n", n, (unsigned long long)bad);
        } else if (!strcmp(cmd, "read")) { /* sequential read from `off` to EOF */
            if (lseek(fd, (off_t)off, SEEK_SET) < 0) die("lseek");
            uint64_t total = 0, bad = 0;
            for (;;) {
                ssize_t n = read(fd, buf, 65536);
                if (n < 0) die("read");
                if (n == 0) break;
                for (ssize_t j = 0; j < n; j++)
                    if (buf[j] != pat(off + total + (uint64_t)j)) bad++;
                total += (uint64_t)n;
            }
            printf("total %llu bad %llu\n", (unsigned long long)total, (unsigned long long)bad);
        } else if (!strcmp(cmd, "fstat")) {
            struct stat st;
            if (fstat(fd, &st)) die("fstat");
            printf("size %lld\n", (long long)st.st_size);
        } else if (!strcmp(cmd, "end")) {
            printf("end %lld\n", (long long)lseek(fd, 0, SEEK_END));
        }
    }
    return 0;
}

/* ---- race: read in a loop while the file shrinks and grows under us ---- */
static int mode_race(const char *path, long iters) {
    int fd = open(path, O_RDONLY);
    if (fd < 0) die("open");
    static unsigned char buf[262144];
    uint64_t reads = 0, shortr = 0, bad = 0;
    for (long i = 0; i < iters; i++) {
        uint64_t off = ((uint64_t)i * 40961) % (4u << 20);
        size_t len = 4096 + (size_t)((i * 977) % (sizeof buf - 4096));
        ssize_t n = pread(fd, buf, len, (off_t)off);
        if (n < 0) die("pread");
        reads++;
        if ((size_t)n < len) shortr++;
        /* Bytes are the original content, or zeros where the file was re-extended. */
        for (ssize_t j = 0; j < n; j++)
            if (buf[j] != pat(off + (uint64_t)j) && buf[j] != 0) bad++;
        if (i % 16 == 0) { /* and the sequential path */
            if (lseek(fd, (off_t)off, SEEK_SET) < 0) die("lseek");
            n = read(fd, buf, len);
            if (n < 0) die("read");
            for (ssize_t j = 0; j < n; j++)
                if (buf[j] != pat(off + (uint64_t)j) && buf[j] != 0) bad++;
        }
    }
    printf("reads %llu short %llu bad %llu\n", (unsigned long long)reads,
           (unsigned long long)shortr, (unsigned long long)bad);
    return bad ? 1 : 0;
}

/* ---- stdio: a managed file on fd 1, written by write() and by stdio (kernel) ---- */
static int mode_stdio(const char *path) {
    int fd = open(path, O_RDWR | O_CREAT | O_TRUNC, 0644);
    if (fd < 0) die("open");
    char buf[4096];
    memset(buf, 'A', sizeof buf);
    for (int i = 0; i < 10; i++)
        if (write(fd, buf, 1000) != 1000) die("write A");
    for (int i = 0; i < 4; i++) /* reads: flex maps the file */
        if (pread(fd, buf, 100, 100 * i) != 100) die("pread");
    if (dup2(fd, 1) != 1) die("dup2");
    close(fd);
    memset(buf, 'B', sizeof buf);
    printf("%.3000s", buf); /* stdio: the kernel writes at its offset */
    fflush(stdout);
    if (lseek(1, 5000, SEEK_SET) != 5000) die("lseek");
    memset(buf, 'C', sizeof buf);
    if (write(1, buf, 100) != 100) die("write C");
    struct stat st;
    if (fstat(1, &st)) die("fstat");
    fprintf(stderr, "size after overwrite %lld\n", (long long)st.st_size);
    if (st.st_size != 13000) { fprintf(stderr, "helper: size %lld, want 13000\n", (long long)st.st_size); return 1; }
    if (lseek(1, 0, SEEK_END) != 13000) die("lseek end");
    memset(buf, 'D', sizeof buf);
    if (write(1, buf, 10) != 10) die("write D");
    printf("EEEEE");
    fflush(stdout);
    if (pread(1, buf, 16, 12999) != 16) die("pread tail");
    if (memcmp(buf, "BDDDDDDDDDDEEEEE", 16)) { fprintf(stderr, "helper: tail %.16s\n", buf); return 1; }
    return 0;
}

int main(int argc, char **argv) {
    if (argc < 3) {
        fprintf(stderr, "usage: helper MODE PATH ...\n");
        return 2;
    }
    const char *m = argv[1];
    if (!strcmp(m, "append") && argc == 5) return mode_append(argv[2], atoi(argv[3]), atoi(argv[4]));
    if (!strcmp(m, "writer")) return mode_writer(argv[2]);
    if (!strcmp(m, "enospc")) return mode_enospc(argv[2]);
    if (!strcmp(m, "hole") && argc == 4) return mode_hole(argv[2], argv[3]);
    if (!strcmp(m, "reader")) return mode_reader(argv[2]);
    if (!strcmp(m, "stdio")) return mode_stdio(argv[2]);
    if (!strcmp(m, "race") && argc == 4) return mode_race(argv[2], atol(argv[3]));
    fprintf(stderr, "helper: bad mode %s\n", m);
    return 2;
}
