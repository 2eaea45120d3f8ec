#!/bin/bash
# Many requests in flight (issue 13): interleaved rounds of native ext4, libfuse's passthrough_ll
# (threads and -s, built from Debian's libfuse3-dev example) and tmemfs with max_requests=1 and 16.
# Not yet part of `make bench`; run as root from the repository:  tools/bench_concurrency.sh [WORKDIR] [ROUNDS]
# Prints one line per run: round job configuration IOPS. Unmounts everything on exit.
set -u
work=${1:-/var/tmp/tmemfs-bench-concurrency}
rounds=${2:-2}
repo=$(cd "$(dirname "$0")/.." && pwd)
py="$repo/.venv/bin/python"
mkdir -p "$work/src" "$work/m" "$work/pm"
cleanup() { fusermount3 -u "$work/m" 2>/dev/null; fusermount3 -u "$work/pm" 2>/dev/null; }
trap cleanup EXIT
[ -x "$work/passthrough_ll" ] || gcc -O2 -o "$work/passthrough_ll" /usr/share/doc/libfuse3-dev/examples/passthrough_ll.c \
    $(pkg-config fuse3 --cflags --libs)
if [ ! -f "$work/src/f" ]; then  # 256 MiB of text
    "$py" -c "
import sys
line = b'the quick brown fox jumps over the lazy dog 0123456789\n'
block = (line * (1 << 20 // len(line) + 1))[: 1 << 20]
with open(sys.argv[1], 'wb') as f:
    for _ in range(256):
        f.write(block)" "$work/src/f"
fi

fio_job() {  # fio_job JOB FILE -> IOPS
    local a
    case $1 in
        qd1) a="--bs=4k --rw=randread --ioengine=psync --iodepth=1" ;;
        qd16) a="--bs=4k --rw=randread --ioengine=libaio --iodepth=16" ;;
        seq) a="--bs=128k --rw=read --ioengine=psync --iodepth=1" ;;
    esac
    fio --name=r --filename="$2" $a --direct=1 --runtime=5 --time_based --size=256M --output-format=json 2>/dev/null |
        "$py" -c "import json, sys; print(int(json.load(sys.stdin)['jobs'][0]['read']['iops']))"
}

tmemfs_job() {  # tmemfs_job OPTIONS JOB WARM -> IOPS
    "$py" -m fusefs.cli "$work/src" "$work/m" -o "$1" >/dev/null 2>&1
    for _ in $(seq 50); do mountpoint -q "$work/m" && break; sleep 0.1; done
    [ "$3" = warm ] && fio --name=w --filename="$work/m/f" --bs=128k --rw=read --direct=1 --size=256M >/dev/null
    fio_job "$2" "$work/m/f"
    fusermount3 -u "$work/m"
}

for round in $(seq "$rounds"); do
    for job in qd1 qd16 seq; do
        echo "$round $job native $(fio_job $job "$work/src/f")"
        for variant in threads -s; do
            flag=; [ $variant = -s ] && flag=-s
            "$work/passthrough_ll" $flag -o source="$work/src",cache=never "$work/pm"; sleep 0.3
            echo "$round $job passthrough_ll$flag $(fio_job $job "$work/pm/f")"
            fusermount3 -u "$work/pm"
        done
        for mr in 1 16; do
            echo "$round $job none,max_requests=$mr $(tmemfs_job cleancache=none,backing_io=direct,cache_size=64M,max_requests=$mr $job cold)"
            echo "$round $job tmem-held,max_requests=$mr $(tmemfs_job cleancache=tmem,backing_io=direct,cache_size=16M,cc_size=512M,max_requests=$mr $job warm)"
        done
    done
done
