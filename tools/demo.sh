#!/bin/bash
# `make demo`: mount a sample tree with cleancache, run a short fio job, print the stats.
set -euo pipefail
cd "$(dirname "$0")/.."
BACKEND=${BACKEND:-zcache}
WORK=$(mktemp -d /tmp/tmemfs-demo.XXXXXX)
SRC=$WORK/src MNT=$WORK/mnt
mkdir -p "$SRC" "$MNT"

cleanup() {
  fusermount3 -u "$MNT" 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT

echo "== sample tree in $SRC: 64 MiB of text-like data (copies of /usr/share/common-licenses)"
cp -r /usr/share/common-licenses "$SRC/licenses" 2>/dev/null || true
while [ "$(stat -c %s "$SRC/data.bin" 2>/dev/null || echo 0)" -lt $((64 << 20)) ]; do
  cat /usr/share/common-licenses/* >> "$SRC/data.bin"
done
truncate -s 64M "$SRC/data.bin"

# The log goes with the demo's files (without log= it would be a new file under /var/log/tmemfs each run).
echo "== tmemfs $SRC $MNT -o cleancache=$BACKEND,cache_size=16M,cc_size=128M,log=$WORK/tmemfs.log"
.venv/bin/tmemfs "$SRC" "$MNT" -o "cleancache=$BACKEND,cache_size=16M,cc_size=128M,log=$WORK/tmemfs.log"

echo "== fio: 4k random reads over a 64 MiB file, page cache 16 MiB, for 5 s"
fio --name=demo --filename="$MNT/data.bin" --size=64M --bs=4k --rw=randread \
    --ioengine=psync --direct=1 --runtime=5 --time_based --group_reporting \
    | grep -E 'read:|lat \(usec\): min|READ:'
cat "$MNT"/licenses/* > /dev/null

echo "== tmemctl stats $MNT"
.venv/bin/tmemctl stats "$MNT"
echo "== the daemon's log"
cat "$WORK/tmemfs.log"
