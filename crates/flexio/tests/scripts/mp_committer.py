"""A worker of the multi-process kill test (crates/flexio/tests/multiprocess.rs): in
failure-atomic mode, transactions of a few writes into its own range of a shared file,
each write announced as "W k off len byte" before it is made, each transaction committed
with fsync and reported as "C k" once fsync returned.

usage: mp_committer.py FILE SLOT SEED TXNS
"""
import os, random, sys, time

path, slot, seed, txns = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
SLOT = 1 << 15
rng = random.Random(seed)
fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
for k in range(1, txns + 1):
    for j in range(1 + rng.randrange(4)):
        off = rng.randrange(0, SLOT - 4096)
        n = 1 + rng.randrange(4095)
        v = 1 + (k * 7 + j) % 255
        print("W", k, slot * SLOT + off, n, v, flush=True)
        os.pwrite(fd, bytes([v]) * n, slot * SLOT + off)
        time.sleep(0.0005)
    os.fsync(fd)
    print("C", k, flush=True)
os.close(fd)
