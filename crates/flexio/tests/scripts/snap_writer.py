"""A writer of recognisable generations, for the snapshot tests.

Writer W of N owns pages W, W+N, W+2N, ... of the file. Round g rewrites each of its pages,
in order, with (W, g) repeated; so at any instant its pages read g, ..., g, g-1, ..., g-1
(a prefix of the new round), and a page is never half of one round. `--fork` makes the
writer fork once the file is open: the child writes as writer W+1 through the inherited
descriptor. `--mode write` seeks and writes instead of pwrite. `--threads K` makes the
process K writers W..W+K-1, one thread each, writing at once through one descriptor
(pwrite releases the GIL). `--span` gives writer W the W-th of N equal runs of pages
instead, rewritten by one pwrite per round: a call in flight at a snapshot's instant
would show as a run of two rounds. Prints its last round.
"""
import os
import struct
import sys
import threading
import time


def main():
    path, wid, nw, pages, secs = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), float(sys.argv[5])
    mode = "pwrite"
    fork = "--fork" in sys.argv
    if "--mode" in sys.argv:
        mode = sys.argv[sys.argv.index("--mode") + 1]
    fd = os.open(path, os.O_RDWR)
    child = 0
    if fork:
        child = os.fork()
        if child == 0:
            wid += 1
    threads = 1
    if "--threads" in sys.argv:
        threads = int(sys.argv[sys.argv.index("--threads") + 1])
    end = time.time() + secs

    span = "--span" in sys.argv

    def run(w):
        mine = [p for p in range(pages) if p % nw == w]
        g = 0
        while time.time() < end:
            g += 1
            if span:
                run_pages = pages // nw
                buf = struct.pack("<II", w, g) * 512 * run_pages
                os.pwrite(fd, buf, w * run_pages * 4096)
                continue
            for p in mine:
                buf = struct.pack("<II", w, g) * 512
                if mode == "pwrite":
                    os.pwrite(fd, buf, p * 4096)
                else:
                    os.lseek(fd, p * 4096, os.SEEK_SET)
                    os.write(fd, buf)
        print(w, g, flush=True)

    ts = [threading.Thread(target=run, args=(wid + t,)) for t in range(threads)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    if fork and child:
        _, status = os.waitpid(child, 0)
        sys.exit(os.waitstatus_to_exitcode(status))


main()
