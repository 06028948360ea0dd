#!/bin/sh
# NFS on loopback in the DAX guest (the init's nfs step), under busybox sh:
#   nfs.sh up EXPORT MNT1 MNT2   an NFSv4-only server (nfsd, rpc.mountd; no rpcbind, which
#                                only v2/v3 need) exports EXPORT over loopback; mounted
#                                twice, by two NFS clients (see below)
#   nfs.sh down EXPORT MNT1 MNT2 unmounts what is mounted, stops the server, removes EXPORT
# "up" exits 0 with both mounted; 1 after "FX FAIL ..." (the server did not start); 2
# after "FX SKIP nfs: ..." where the kernel refused the mount (the host decides).
set -u
say() { echo "FX $*"; }
fail() {
    say "FAIL nfs: $*"
    dmesg | tail -8 | sed 's/^/FX nfs-dmesg: /'
    exit 1
}
PIDF=/tmp/nfs-mountd.pid
cmd=$1 exp=$2 m1=$3 m2=$4

if [ "$cmd" = down ]; then
    for m in "$m1" "$m2"; do
        if grep -q " $m " /proc/mounts; then umount "$m" || fail "umount $m"; fi
    done
    # Stopping the threads also flushes the export cache, which pins EXPORT's mount.
    rpc.nfsd 0 || fail "rpc.nfsd 0"
    exportfs -ua || fail "exportfs -ua"
    [ -f $PIDF ] && kill "$(cat $PIDF)"
    umount /proc/fs/nfsd || fail "umount /proc/fs/nfsd"
    rm -rf "$exp" $PIDF
    exit 0
fi

for m in nfsd nfsv4; do
    modprobe $m || fail "modprobe $m"
done
ip link set lo up || fail "ip link set lo up" # 127.0.0.1 comes with it
mount -t nfsd nfsd /proc/fs/nfsd || fail "mount -t nfsd"
mkdir -p /var/lib/nfs/v4recovery "$exp" "$m1" "$m2"
: >/var/lib/nfs/etab
: >/var/lib/nfs/rmtab
o=rw,sync,no_subtree_check,no_root_squash,fsid=0
echo "$exp 127.0.0.1($o) 127.0.0.2($o)" >/etc/exports
# Shortest lease and grace (10 s) before nfsd starts (it refuses them later); the grace
# period is ended right after the start anyway: no client has state to reclaim.
echo 10 >/proc/fs/nfsd/nfsv4leasetime || fail "nfsv4leasetime"
echo 10 >/proc/fs/nfsd/nfsv4gracetime || fail "nfsv4gracetime"
exportfs -ra || fail "exportfs -ra"
# In the foreground of a background job: its pid is known, for "down".
rpc.mountd -F -N 2 -N 3 >/tmp/nfs-mountd.log 2>&1 &
echo $! >$PIDF
# The port by number: the guest has no /etc/services.
rpc.nfsd -N 3 -p 2049 2 2>/tmp/nfsd.err \
    || fail "rpc.nfsd: $(tr '\n' ' ' </tmp/nfsd.err); rpc.mountd: $(tr '\n' ' ' </tmp/nfs-mountd.log)"
echo Y >/proc/fs/nfsd/v4_end_grace || fail "v4_end_grace"
say "nfs server: versions $(cat /proc/fs/nfsd/versions), threads $(cat /proc/fs/nfsd/threads)"

# Two clients, as two machines would be: mounts of one server from one client share its
# client id, the server then sees one client and recalls no read delegation when the
# other mount writes (even a plain cat reads stale data). So each mount gets its own
# server address (a client per address) and its own hostname (UTS namespace), which
# names the client to the server. Busybox mount adds addr= itself.
n=0
for m in "$m1" "$m2"; do
    n=$((n + 1))
    o=vers=4.2,sec=sys,clientaddr=127.0.0.$n,nosharecache
    if ! err=$(unshare -u sh -c "hostname fx-nfs-client$n && mount -t nfs4 -o $o 127.0.0.$n:/ $m" 2>&1); then
        say "SKIP nfs: the kernel refused mount -t nfs4 -o $o 127.0.0.$n:/ $m: $err"
        dmesg | tail -8 | sed 's/^/FX nfs-dmesg: /'
        exit 2
    fi
done
grep " $m1 \| $m2 " /proc/mounts | sed 's/^/FX mount /'
exit 0
