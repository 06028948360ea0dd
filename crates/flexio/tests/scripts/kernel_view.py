"""What the kernel sees of a managed descriptor: its access mode, O_APPEND, its offset.

Prints one line per check; the test (crates/flexio/tests/kernel_view.rs) compares the
output under libflex.so with the output without it. usage: kernel_view.py DIR
"""
import os, mmap, fcntl, struct, errno, sys
d = sys.argv[1]
p = d + "/f"
def tryit(name, f):
    try:
        r = f(); print(name, "ok", r)
    except OSError as e:
        print(name, "err", errno.errorcode[e.errno])
with open(p, "wb") as f: f.write(b"a" * 10000)
fd = os.open(p, os.O_WRONLY)
for i in range(4): os.pwrite(fd, b"b" * 100, i * 100)
tryit("mmap wronly", lambda: mmap.mmap(fd, 4096, mmap.MAP_SHARED, mmap.PROT_WRITE))
r, w = os.pipe()
tryit("sendfile from wronly", lambda: os.sendfile(w, fd, 0, 10))
tryit("splice from wronly", lambda: os.splice(fd, w, 10))
o = os.open(d + "/g", os.O_RDWR | os.O_CREAT)
tryit("copy_file_range from wronly", lambda: os.copy_file_range(fd, o, 10))
print("fdinfo wronly", [l for l in open("/proc/self/fdinfo/%d" % fd).read().split("\n") if l.startswith("flags")])
a = os.open(p, os.O_RDWR | os.O_APPEND)
for i in range(4): os.write(a, b"c" * 100)
os.write(w, b"zzzz")
tryit("splice into append", lambda: os.splice(r, a, 4))
tryit("copy_file_range into append", lambda: os.copy_file_range(o, a, 10))
print("fdinfo append", [l for l in open("/proc/self/fdinfo/%d" % a).read().split("\n") if l.startswith("flags")])
print("getfl append", oct(fcntl.fcntl(a, fcntl.F_GETFL)))
# SEEK_CUR lock
b = os.open(p, os.O_RDWR)
for i in range(4): os.read(b, 10)
os.lseek(b, 10, os.SEEK_SET)
tryit("lock SEEK_CUR-5", lambda: fcntl.fcntl(b, fcntl.F_SETLK, struct.pack("hhqqi", fcntl.F_WRLCK, os.SEEK_CUR, -5, 1, 0)))
F_OFD_GETLK=36
res = fcntl.fcntl(b, fcntl.F_GETLK, struct.pack("hhqqi", fcntl.F_WRLCK, os.SEEK_CUR, 0, 1, 0))
print("getlk", struct.unpack("hhqqi", res)[:4])
tryit("lockf", lambda: fcntl.lockf(b, fcntl.LOCK_EX | fcntl.LOCK_NB, 1, 0, os.SEEK_CUR))
# F_GETLK with SEEK_CUR sees this descriptor's offset (a lock of another process there)
# and record locks after reads, lseek(SEEK_CUR), dup.
c = os.dup(b)
os.read(c, 3)
res = fcntl.fcntl(c, fcntl.F_GETLK, struct.pack("hhqqi", fcntl.F_RDLCK, os.SEEK_CUR, 0, 0, 0))
print("getlk after dup+read", struct.unpack("hhqqi", res)[:4])
tryit("OFD lock SEEK_CUR", lambda: fcntl.fcntl(c, 37, struct.pack("hhqqi", fcntl.F_WRLCK, os.SEEK_CUR, -13, 1, 0)))
# O_WRONLY reads fail as the kernel's; F_GETFL is the kernel's.
tryit("read wronly", lambda: os.read(fd, 1))
print("getfl wronly", oct(fcntl.fcntl(fd, fcntl.F_GETFL)))
fcntl.fcntl(a, fcntl.F_SETFL, 0)
print("getfl after clearing append", oct(fcntl.fcntl(a, fcntl.F_GETFL)))
os.write(a, b"d")
print("offset after non-append write", os.lseek(a, 0, os.SEEK_CUR))
fcntl.fcntl(a, fcntl.F_SETFL, os.O_APPEND)
os.write(a, b"e")
print("offset after append write", os.lseek(a, 0, os.SEEK_CUR))
print("size", os.fstat(a).st_size)
print("bytes", open(p, "rb").read().count(b"c"), open(p, "rb").read()[-3:])
