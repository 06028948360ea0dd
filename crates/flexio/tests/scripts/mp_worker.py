"""One worker of the multi-process suite (crates/flexio/tests/multiprocess.rs).

Runs a random sequence of operations on files shared with the other workers and
writes what it did to OUT (one JSON object) so the test can check the kernel's
invariants across all workers: appended records whole and present exactly once,
bytes written under a lock read back exactly, sizes under a lock as set.

usage: worker.py DIR TAG SEED STEPS OUT fork|nofork SLOT
  fork: the worker forks once half way; the child continues as TAG+"c" and
        writes OUT+".c" (descriptors opened before the fork are shared).
"""
import fcntl, json, os, random, struct, sys

d, tag, seed, steps, out = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
do_fork = len(sys.argv) > 6 and sys.argv[6] == "fork"
rng = random.Random(seed)
SLOT = 1 << 16          # each worker's private range of `data`
NSLOTS = 16
COUNTER = NSLOTS * SLOT  # an 8-byte counter every worker increments under a lock

def lock(fd, start, length, kind=fcntl.F_WRLCK):
    fcntl.fcntl(fd, fcntl.F_SETLKW, struct.pack("hhqqi", kind, os.SEEK_SET, start, length, 0))

def unlock(fd, start, length):
    fcntl.fcntl(fd, fcntl.F_SETLK, struct.pack("hhqqi", fcntl.F_UNLCK, os.SEEK_SET, start, length, 0))

def record(tag, seq, n):
    head = ("<%s:%d:%d:" % (tag, seq, n)).encode()
    body = bytes([0x61 + (seq + i) % 26 for i in range(n)])
    return head + body + b">\n"

def run(tag, slot, log, data, trunc, model, seq, nsteps):
    """nsteps random operations; `model` is what this worker's slot of `data` must hold."""
    recs, incs, errors = [], 0, []
    for _ in range(nsteps):
        op = rng.random()
        if op < 0.35:                        # append a record, three ways
            n = rng.choice([1, 7, 100, 1000, 4000, 4096, 10000, rng.randrange(1, 20000)])
            r = record(tag, seq, n)
            how = rng.random()
            if how < 0.6:
                w = os.write(log, r)
            elif how < 0.8:
                w = os.pwrite(log, r, rng.randrange(0, 1 << 20))   # O_APPEND: appends
            else:
                k = rng.randrange(1, len(r))
                w = os.writev(log, [r[:k], r[k:]])
            if w != len(r):
                errors.append("short append %d of %d" % (w, len(r)))
            recs.append([seq, n])
            seq += 1
        elif op < 0.6:                       # own slot: write, read back
            off = rng.randrange(0, SLOT - 1)
            n = rng.randrange(1, min(SLOT - off, 9000) + 1)
            b = bytes(rng.getrandbits(8) for _ in range(min(n, 64))) * (n // 64 + 1)
            b = b[:n]
            os.pwrite(data, b, slot * SLOT + off)
            model[off:off + n] = b
            got = os.pread(data, n, slot * SLOT + off)
            if got != b:
                errors.append("slot read-back differs at %d+%d" % (off, n))
        elif op < 0.75:                      # shared counter under a lock
            lock(data, COUNTER, 8)
            v = struct.unpack("<Q", os.pread(data, 8, COUNTER).ljust(8, b"\0"))[0]
            os.pwrite(data, struct.pack("<Q", v + 1), COUNTER)
            unlock(data, COUNTER, 8)
            incs += 1
        elif op < 0.87:                      # truncate under a lock, check the size
            lock(trunc, 0, 0)
            n = rng.randrange(0, 300000)
            os.ftruncate(trunc, n)
            if os.fstat(trunc).st_size != n:
                errors.append("ftruncate %d: fstat %d" % (n, os.fstat(trunc).st_size))
            if os.lseek(trunc, 0, os.SEEK_END) != n:
                errors.append("ftruncate %d: SEEK_END differs" % n)
            m = b"T" * rng.randrange(1, 5000)
            os.pwrite(trunc, m, n)
            if os.pread(trunc, len(m) + 10, n) != m:
                errors.append("write at the end of a truncated file reads back wrong")
            if os.fstat(trunc).st_size != n + len(m):
                errors.append("size after extending write")
            unlock(trunc, 0, 0)
        elif op < 0.95:
            os.fsync(rng.choice([log, data, trunc]))
        else:                                # whole-log read: never a torn record
            lock(log, 0, 0, fcntl.F_RDLCK)
            unlock(log, 0, 0)
    return recs, incs, errors, seq

log = os.open(os.path.join(d, "log"), os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o644)
data = os.open(os.path.join(d, "data"), os.O_RDWR | os.O_CREAT, 0o644)
trunc = os.open(os.path.join(d, "trunc"), os.O_RDWR | os.O_CREAT, 0o644)
slot = int(sys.argv[7])

def report(path, tag, recs, incs, errors, model, slot):
    with open(path + ".tmp", "w") as f:
        json.dump({"tag": tag, "recs": recs, "incs": incs, "errors": errors,
                   "slot": slot, "model": model.hex()}, f)
    os.rename(path + ".tmp", path)

model = bytearray(SLOT)
if do_fork:
    half = steps // 2
    recs, incs, errors, seq = run(tag, slot, log, data, trunc, model, 0, half)
    pid = os.fork()
    if pid == 0:
        # The child shares the log/data/trunc descriptions with the parent (offsets, locks
        # are per process for F_SETLKW); it writes a slot of its own.
        ctag, cslot = tag + "c", (slot + 8) % NSLOTS
        rng.seed(seed + 1)
        cmodel = bytearray(SLOT)
        r2, i2, e2, _ = run(ctag, cslot, log, data, trunc, cmodel, 0, steps - half)
        report(out + ".c", ctag, r2, i2, e2, cmodel, cslot)
        os._exit(0)
    r2, i2, e2, _ = run(tag, slot, log, data, trunc, model, seq, steps - half)
    _, status = os.waitpid(pid, 0)
    if status != 0:
        e2.append("forked child exited with status %d" % status)
    report(out, tag, recs + r2, incs + i2, errors + e2, model, slot)
else:
    recs, incs, errors, _ = run(tag, slot, log, data, trunc, model, 0, steps)
    report(out, tag, recs, incs, errors, model, slot)
