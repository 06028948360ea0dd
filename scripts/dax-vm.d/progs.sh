#!/bin/sh
# Real programs under LD_PRELOAD=libflex.so in the DAX guest.
#
#   progs.sh --stage ROOT REPO TARGET_DIR   (host) builds libflex.so, copies it, the
#                                           programs and a reference file into ROOT
#   progs.sh DIR TAG                        (guest) round trip through flex on DIR
#   progs.sh --nfs DIR1 DIR2                (guest) the same directory through two NFS
#                                           mounts: what one client writes, the other reads
#
# Guest side: coreutils dd writes a reference file into a FLEX-managed directory (whole
# and odd block sizes, appends), cat and dd read it back, sha256sum compares with the
# reference's digest computed on the host; FLEX_STATS must show the expected granularity.
# On NFS every write goes through one mount and is read back through the other (each
# program is a new open: close-to-open), and FLEX_STATS must show that flex left the
# files to the kernel and why.
set -eu

if [ "${1:-}" = --stage ]; then
    root=$2 repo=$3 target=$4
    (cd "$repo" && CARGO_TARGET_DIR=$target cargo build -q --release -p flex-preload)
    install -D -m644 "$target/release/libflex.so" "$root/fx/lib/libflex.so"
    for p in dd cat sha256sum cmp; do
        b=$(command -v "$p")
        install -D -m755 "$b" "$root/fx/bin/$p"
        for f in $(ldd "$b" | grep -o '/[^ ]*'); do cp -L --parents "$f" "$root"; done
    done
    for f in $(ldd "$root/fx/lib/libflex.so" | grep -o '/[^ ]*'); do cp -L --parents "$f" "$root"; done
    # 3 MiB + 777 bytes: not a multiple of any block size used below.
    head -c $((3 * 1048576 + 777)) /dev/urandom >"$root/fx/ref.bin"
    sha256sum <"$root/fx/ref.bin" | cut -d' ' -f1 >"$root/fx/ref.sha256"
    cat "$root/fx/ref.bin" "$root/fx/ref.bin" | sha256sum | cut -d' ' -f1 >"$root/fx/ref2.sha256"
    install -m755 "$0" "$root/fx/progs.sh"
    exit 0
fi

B=/fx/bin
ok=1
if [ "$1" = --nfs ]; then
    tag=nfs dir=$2/progs dir2=$3/progs
else
    tag=$2 dir=$1/progs dir2=
fi
rm -rf "$dir"
mkdir -p "$dir"
stats=/tmp/stats-$tag.json
rm -f "$stats"
flex() { LD_PRELOAD=/fx/lib/libflex.so FLEX_PATHS=$dir${dir2:+:$dir2} FLEX_STATS=$stats "$@"; }
check() { # check FILE WANT-DIGEST WHAT
    got=$(flex $B/sha256sum <"$1" | cut -d' ' -f1)
    if [ "$got" = "$2" ] && [ "$(flex $B/sha256sum "$1" | cut -d' ' -f1)" = "$2" ]; then
        echo "FX ok progs $tag: $3"
    else
        echo "FX FAIL progs $tag: $3 (sha256 $got)"
        ok=0
    fi
}
run() { # run WHAT CMD...: a failing program is a failed check, not an aborted script
    what=$1
    shift
    flex "$@" 2>/tmp/progs.err || {
        echo "FX FAIL progs $tag: $what: $(tr '\n' ' ' </tmp/progs.err)"
        ok=0
    }
}
digest() { $B/sha256sum "$1" | cut -d' ' -f1; } # without flex

if [ "$tag" = nfs ]; then
    # The expected contents are built beside, in /tmp, by the same programs without flex.
    e=/tmp/progs-expect
    a=$dir/a a2=$dir2/a
    run "dd write 64k via 1" $B/dd if=/fx/ref.bin of="$a" bs=64k status=none
    check "$a2" "$(cat /fx/ref.sha256)" "dd bs=64k write via mount 1, read via mount 2"
    run "cat via 2" $B/cat "$a2" >/tmp/progs.out
    check /tmp/progs.out "$(cat /fx/ref.sha256)" "cat via mount 2"
    cp /fx/ref.bin $e
    $B/dd if=/fx/ref.bin of=$e bs=4000 count=100 seek=37 conv=notrunc status=none
    run "dd overwrite via 2" $B/dd if=/fx/ref.bin of="$a2" bs=4000 count=100 seek=37 conv=notrunc status=none
    check "$a" "$(digest $e)" "dd conv=notrunc overwrite via mount 2, read via mount 1"
    $B/dd if=/fx/ref.bin of=$e bs=1000 oflag=append conv=notrunc status=none
    run "dd append via 1" $B/dd if=/fx/ref.bin of="$a" bs=1000 oflag=append conv=notrunc status=none
    check "$a2" "$(digest $e)" "dd oflag=append via mount 1, read via mount 2"
    $B/dd if=/fx/ref.bin of=$e bs=1000 count=50 status=none
    run "dd truncating write via 2" $B/dd if=/fx/ref.bin of="$a2" bs=1000 count=50 status=none
    check "$a" "$(digest $e)" "dd shrinking rewrite via mount 2, read via mount 1"
    run "cmp via 1 and 2" $B/cmp "$a" "$a2"
    rm -f $e /tmp/progs.out
    why="network file system: close-to-open coherence"
    if ! grep -q "\"$why\"" "$stats" 2>/dev/null; then
        echo "FX FAIL progs $tag: FLEX_STATS does not give the fallback \"$why\": $(head -c 400 "$stats" 2>/dev/null)"
        ok=0
    elif grep -q '"granularity"' "$stats"; then
        echo "FX FAIL progs $tag: FLEX_STATS lists files flex mapped: $(grep -o '"files":{[^}]*}' "$stats" | head -3)"
        ok=0
    else
        echo "FX ok progs $tag: FLEX_STATS: every file left to the kernel ($why)"
    fi
    rm -rf "$dir"
    [ $ok = 1 ] && echo "FX PASS progs $tag"
    exit 0
fi

want=cache-line
[ "$tag" = tmpfs ] && want=page
run "dd write 64k" $B/dd if=/fx/ref.bin of="$dir/a" bs=64k status=none
check "$dir/a" "$(cat /fx/ref.sha256)" "dd bs=64k write"
run "dd copy 4000" $B/dd if="$dir/a" of="$dir/b" bs=4000 status=none
check "$dir/b" "$(cat /fx/ref.sha256)" "dd bs=4000 flex-to-flex copy"
run "cat" $B/cat "$dir/b" >/tmp/progs.out
check /tmp/progs.out "$(cat /fx/ref.sha256)" "cat of a flex file"
run "dd append" $B/dd if="$dir/a" of="$dir/b" bs=1000 oflag=append conv=notrunc status=none
check "$dir/b" "$(cat /fx/ref2.sha256)" "dd oflag=append"
run "cmp" $B/cmp "$dir/a" /fx/ref.bin
size=$(stat -c %s "$dir/a")
if [ "$size" != "$(stat -c %s /fx/ref.bin)" ]; then
    echo "FX FAIL progs $tag: size of dd output is $size after exit (over-allocated?)"
    ok=0
fi
if ! grep -q "granularity\"[ ]*:[ ]*\"$want\"" "$stats" 2>/dev/null; then
    echo "FX FAIL progs $tag: FLEX_STATS does not report granularity $want: $(head -c 400 "$stats" 2>/dev/null)"
    ok=0
fi
rm -rf "$dir"
[ $ok = 1 ] && echo "FX PASS progs $tag"
exit 0
