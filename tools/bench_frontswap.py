"""Frontswap against the kernel's zram and zswap (issue 15, item 6); BENCHMARKS.md's section and its chart.

Run from the repository root with the project's venv, as root (loop devices, swapon, zram, zswap, debugfs):

    .venv/bin/python -m tools.bench_frontswap [--quick] [--size 256M] [--rounds 5] [--only KEY,...] [--force]
                                              [--out BENCHMARKS.md] [--from-json REPORT]

One workload, the same bytes everywhere: a child process fills SIZE of anonymous memory (60% text-like pages,
20% zero pages, 20% random pages, by page, from a fixed seed), then, ROUNDS times: stamps the round into every
non-zero page (so every round writes them out again), pushes all of it out with madvise(MADV_PAGEOUT), reads one
byte of every page back (each read timed: the swap-in latency of that page) and checks every byte (a CRC of the
whole area). vm.page-cluster is 0 during the run, so a fault reads one page and the latency is that page's. It
swaps to, one swap area at a time:

* disk: a swap file on SRC (ext4) through a plain loop device (direct I/O: the disk, not the page cache);
* fs-zcache / fs-tmem: that file served by tmemfs with frontswap (`-o frontswap=swapfile`), through a loop device;
* zram: a zram device added for the run (lz4, as zcache, else lzo-rle), removed after;
* zswap: zswap (lz4 if the kernel has it) in front of the disk configuration;
* loop-ram: the swap file on a tmpfs mounted for the run, through a plain loop device: what a swap-in costs
  through a loop device whose file answers from memory, the floor under (a), fs-zcache and fs-tmem alike.

Every kernel setting touched (zswap's parameters, vm.page-cluster, zram devices, loop devices, swap areas, a
debugfs mount, the tmpfs and tmemfs mounts) is undone in a finally, last first, also on Ctrl-C or an error. A
machine with swap already active is refused (--force runs beside it, untouched). Only the text between
`<!-- frontswap:begin -->` and `<!-- frontswap:end -->` is written; the chart goes to docs/bench/frontswap.png.
"""

from __future__ import annotations

import argparse
import ctypes
import datetime
import gzip
import json
import mmap
import os
import random
import re
import shlex
import statistics
import subprocess
import sys
import time
import zlib
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import IO, Any

from backends.base import size_in_bytes
from tools.corpus import text_corpus
from tools.machine import REPO, command_output, machine_facts, source_digest, versions
from tools.mounting import Config, Mount, Workspace, backend_value, read_stats, signals_deferred
from tools.report import (
    add_from_json,
    add_output_options,
    draw_chart,
    log,
    machine_lines,
    markdown,
    markers,
    measured_or_loaded,
    mmss,
    percentile,
    placeholders,
    publish,
    pyplot,
    run_json,
    save_figure,
    section_parser,
    subsection,
    table,
    verdict_line,
)

MiB = 1 << 20
PAGE = 4096
SECTOR = 512
MADV_PAGEOUT = 21  # not in Python's mmap module; the value is the kernel's
BEGIN, END = markers("frontswap")
TITLE = "## Frontswap against zram and zswap (python -m tools.bench_frontswap)"
CHART = "frontswap.png"
ROOT = Path("bench-results/frontswap")
DEFAULT_SIZE = 256 * MiB
QUICK_SIZE = 64 * MiB
MIX = (("text", 0.6), ("zero", 0.2), ("random", 0.2))  # page kinds of the workload, in these proportions
SEED = 15
SWAP_NAME = "swapfile"
PAGEOUT_TRIES = 200  # reclaims of the workload's cgroup at most per round (0.05 s apart)
MEMCG = Path("sys/fs/cgroup/memory")  # cgroup v1's memory controller
LIBC = ctypes.CDLL(None, use_errno=True)
FALLOC_PUNCH_HOLE = 0x01 | 0x02  # FALLOC_FL_KEEP_SIZE | FALLOC_FL_PUNCH_HOLE
SETTLE_S = 5.0  # how long counters may take to settle after MADV_PAGEOUT returns (the loop device is async)

DISK, FS_ZCACHE, FS_TMEM, ZRAM, ZSWAP, LOOP_RAM = "disk", "fs-zcache", "fs-tmem", "zram", "zswap", "loop-ram"
KEYS = (DISK, FS_ZCACHE, FS_TMEM, ZRAM, ZSWAP, LOOP_RAM)
LABELS = {
    DISK: "(a) swap file on SRC (ext4), plain loop device",
    FS_ZCACHE: "(b) tmemfs frontswap, cleancache=zcache",
    FS_TMEM: "(c) tmemfs frontswap, cleancache=tmem",
    ZRAM: "(d) the kernel's zram",
    ZSWAP: "(e) the kernel's zswap in front of (a)",
    LOOP_RAM: "(f) the swap file in memory (tmpfs), plain loop device: the floor of a loop device",
}
FRONTSWAP_KEYS = (FS_ZCACHE, FS_TMEM)

ZSWAP_PARAMS = Path("sys/module/zswap/parameters")
KERNEL_CONFIG = Path("proc/config.gz")
USER_BLOCK_DEVICES = ("CONFIG_BLK_DEV_UBLK", "CONFIG_BLK_DEV_NBD")  # what could serve swap without a loop device
ZRAM_CONTROL = Path("sys/class/zram-control")
PAGE_CLUSTER = Path("proc/sys/vm/page-cluster")
DEBUGFS = Path("sys/kernel/debug")

Runner = Callable[[list[str]], str]


def run_command(cmd: list[str]) -> str:
    """Run a command; its stdout, or RuntimeError with its last line of stderr."""
    done = subprocess.run(cmd, capture_output=True, text=True, check=False, timeout=120)
    if done.returncode != 0:
        last = (done.stderr.strip() or done.stdout.strip() or "no message").splitlines()[-1]
        raise RuntimeError(f"{shlex.join(cmd)} exited {done.returncode}: {last}")
    return done.stdout


# -- kernel settings, each undone --------------------------------------------------------------------------


def read_setting(path: Path) -> str:
    """A sysfs value; of a list like `[lzo-rle] lzo lz4` the selected one."""
    text = path.read_text().strip()
    m = re.search(r"\[([^\]]+)\]", text)
    return m.group(1) if m else text


def algorithms(path: Path) -> list[str]:
    """The choices a comp_algorithm file offers."""
    return path.read_text().replace("[", " ").replace("]", " ").split()


def active_swaps(root: Path = Path("/")) -> list[str]:
    """The swap areas in use, from /proc/swaps."""
    with suppress(OSError):
        return [line.split()[0] for line in (root / "proc/swaps").read_text().splitlines()[1:] if line.strip()]
    return []


class Kernel:
    """What a run changed in the kernel, undone by close() last first: every step is tried even when one
    fails, and Ctrl-C waits until all are done. Paths are under `root` (a fake sysfs in the tests). Every
    command and write, setup and undo, is kept in `commands`, as a shell would say it."""

    def __init__(self, root: Path = Path("/"), run: Runner = run_command) -> None:
        self.root, self.runner = root, run
        self.undo: list[tuple[str, Callable[[], object]]] = []
        self.changed: list[str] = []  # settings changed, for the report
        self.commands: list[str] = []

    def run(self, cmd: list[str]) -> str:
        self.commands.append(shlex.join(cmd))
        return self.runner(cmd)

    def write(self, path: Path, value: str) -> None:
        self.commands.append(f"echo {value} > /{path.relative_to(self.root)}")
        try:
            path.write_text(value)
        except OSError as exc:
            self.commands[-1] += f"  # refused: {exc.strerror}"
            raise

    def note(self, command: str) -> None:
        """A step done by Python itself, said as the command that does the same."""
        self.commands.append(command)

    def callback(self, label: str, fn: Callable[[], object]) -> None:
        self.undo.append((label, fn))

    def set(self, rel: Path, value: str) -> None:
        """Write a setting, remembering the old value (nothing to undo when it already had it)."""
        path = self.root / rel
        old = read_setting(path)
        if old == value:
            return
        self.write(path, value)
        self.changed.append(f"/{rel} = {value} (was {old})")
        self.callback(f"/{rel} back to {old}", lambda: self.write(path, old))

    def loop(self, file: Path, direct_io: bool) -> str:
        dev = self.run(["losetup", "--find", "--show", f"--direct-io={'on' if direct_io else 'off'}",
                        str(file)]).strip()
        self.callback(f"losetup -d {dev}", lambda: self.run(["losetup", "-d", dev]))
        return dev

    def tmpfs(self, path: Path, size: int) -> None:
        """A tmpfs of `size` bytes mounted on `path`, unmounted on close."""
        self.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)])
        self.callback(f"umount {path}", lambda: self.run(["umount", str(path)]))

    def swapon(self, dev: str, discard: bool) -> None:
        self.run(["mkswap", "-f", dev])
        self.run(["swapon", *(["--discard"] if discard else []), dev])
        self.callback(f"swapoff {dev}", lambda: self.run(["swapoff", dev]))

    def zram(self, disksize: int, wanted: Sequence[str]) -> tuple[str, str]:
        """Add a zram device (hot_add), choose the first algorithm of `wanted` it offers; removed on close."""
        num = (self.root / ZRAM_CONTROL / "hot_add").read_text().strip()
        self.note(f"N=$(cat /{ZRAM_CONTROL}/hot_add)  # {num}")
        block = self.root / "sys/block" / f"zram{num}"
        self.callback(f"hot_remove zram{num}", lambda: self._zram_remove(num, block))
        offered = algorithms(block / "comp_algorithm")
        algo = next((a for a in wanted if a in offered), read_setting(block / "comp_algorithm"))
        self.write(block / "comp_algorithm", algo)
        self.write(block / "disksize", str(disksize))
        return f"/dev/zram{num}", algo

    def _zram_remove(self, num: str, block: Path) -> None:
        self.write(block / "reset", "1")
        self.write(self.root / ZRAM_CONTROL / "hot_remove", num)

    def memcg(self, name: str) -> Path:
        """A memory cgroup (v1) for the workload, removed on close (after the workload is stopped)."""
        path = self.root / MEMCG / name
        self.note(f"mkdir /{path.relative_to(self.root)}")
        path.mkdir()
        self.callback(f"rmdir {path}", lambda: self._rmdir(path))
        return path

    def _rmdir(self, path: Path) -> None:
        self.note(f"rmdir /{path.relative_to(self.root)}")
        path.rmdir()

    def debugfs(self) -> Path:
        """debugfs mounted (zswap's counters live there), unmounted on close if we mounted it."""
        path = self.root / DEBUGFS
        if not any(line.split()[4] == str(path) for line in self._mountinfo()):
            self.run(["mount", "-t", "debugfs", "debugfs", str(path)])
            self.callback(f"umount {path}", lambda: self.run(["umount", str(path)]))
        return path

    def _mountinfo(self) -> list[str]:
        with suppress(OSError):
            return (self.root / "proc/self/mountinfo").read_text().splitlines()
        return []

    def close(self) -> list[str]:
        """Undo everything, last first; the steps that failed, each as one line."""
        errors: list[str] = []
        with signals_deferred():
            while self.undo:
                label, fn = self.undo.pop()
                try:
                    fn()
                except Exception as exc:  # every other step must still run
                    errors.append(f"{label}: {exc}")
        return errors


@contextmanager
def kernel(root: Path = Path("/"), run: Runner = run_command) -> Iterator[Kernel]:
    k = Kernel(root, run)
    try:
        yield k
    finally:
        for error in k.close():
            log(f"could not undo {error}")


# -- the workload --------------------------------------------------------------------------------------------


def page_kinds(pages: int, seed: int = SEED) -> list[str]:
    """Which kind each page is: MIX's proportions, exactly, in a seeded shuffle."""
    kinds = [kind for kind, share in MIX for _ in range(round(pages * share))][:pages]
    kinds += ["text"] * (pages - len(kinds))
    random.Random(seed).shuffle(kinds)
    return kinds


def make_pattern(path: Path, size: int, corpus: bytes, seed: int = SEED) -> None:
    """The workload's bytes, once per size: text pages are corpus slices at unaligned offsets, random pages
    from a seeded generator, zero pages zero."""
    if path.exists() and path.stat().st_size == size:
        return
    rng = random.Random(seed)
    if len(corpus) < 2 * PAGE:
        raise RuntimeError("text corpus too small")
    with open(path.with_suffix(".tmp"), "wb") as f:
        for kind in page_kinds(size // PAGE, seed):
            if kind == "text":
                at = rng.randrange(len(corpus) - PAGE)
                f.write(corpus[at:at + PAGE])
            elif kind == "random":
                f.write(rng.randbytes(PAGE))
            else:
                f.write(bytes(PAGE))
    path.with_suffix(".tmp").rename(path)


def resident_pages(mem: mmap.mmap) -> int:
    """Pages of `mem` in memory, the swap cache included (mincore)."""
    pages = len(mem) // PAGE
    vec = (ctypes.c_ubyte * pages)()
    anchor = ctypes.c_char.from_buffer(mem)
    try:
        if LIBC.mincore(ctypes.c_void_p(ctypes.addressof(anchor)), ctypes.c_size_t(len(mem)), vec) != 0:
            raise OSError(ctypes.get_errno(), "mincore")
    finally:
        del anchor
    return sum(b & 1 for b in vec)


def page_out(mem: mmap.mmap, memcg: Path | None) -> tuple[int, int]:
    """MADV_PAGEOUT, then empty our memory cgroup until no page of `mem` is left in memory: on a loop device
    MADV_PAGEOUT only starts the writes, and the written pages wait in the swap cache (a touch would find them
    there, no swap-in at all); they are no longer mapped, so only reclaim of the cgroup frees them.
    (tries made, pages still in memory after the last)"""
    mem.madvise(MADV_PAGEOUT)
    for tries in range(1, PAGEOUT_TRIES + 1):
        cached = resident_pages(mem)
        if cached == 0 or memcg is None or tries == PAGEOUT_TRIES:
            return tries, cached
        with suppress(OSError):  # EBUSY while writes are still in flight: try again
            (memcg / "memory.force_empty").write_text("0")
        time.sleep(0.05)
    raise AssertionError("unreachable")


def smaps_swap_kib() -> int:
    m = re.search(r"^Swap:\s+(\d+)", Path("/proc/self/smaps_rollup").read_text(), re.M)
    return int(m.group(1)) if m else 0


def major_faults() -> int:
    return int(Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()[9])


def emit(out: IO[str], **event: object) -> None:
    out.write(json.dumps(event) + "\n")
    out.flush()


def workload_child(argv: Sequence[str]) -> int:
    """The measured process: argv is PATTERN ROUNDS. Talks JSON lines on stdout; after each `paged` event it
    waits for a line on stdin (the parent reads the swap counters at their peak meanwhile)."""
    pattern, rounds = Path(argv[0]), int(argv[1])
    memcg = Path(argv[2]) if len(argv) > 2 else None
    if memcg is not None:
        (memcg / "cgroup.procs").write_text(str(os.getpid()))
    size = pattern.stat().st_size
    mem = mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    with open(pattern, "rb") as f:
        f.readinto(mem)
    pages = size // PAGE
    zero = bytes(PAGE)
    nonzero = [i for i in range(pages) if mem[i * PAGE:(i + 1) * PAGE] != zero]
    latencies: list[int] = []
    for round_ in range(rounds):
        for i in nonzero:
            mem[i * PAGE:i * PAGE + 8] = round_.to_bytes(8, "little")
        crc = zlib.crc32(mem)
        started = time.perf_counter()
        passes, cached = page_out(mem, memcg)
        emit(sys.stdout, event="paged", round=round_, pageout_s=time.perf_counter() - started, passes=passes,
             still_cached=cached, swap_kib=smaps_swap_kib())
        sys.stdin.readline()
        faults, started, lat = major_faults(), time.perf_counter(), [0] * pages
        clock = time.perf_counter_ns
        for i in range(pages):
            t = clock()
            _ = mem[i * PAGE]
            lat[i] = clock() - t
        touch_s = time.perf_counter() - started
        latencies += lat
        emit(sys.stdout, event="touched", round=round_, touch_s=touch_s, major_faults=major_faults() - faults,
             intact=zlib.crc32(mem) == crc, p50_us=percentile(sorted(lat), 0.5) / 1000)
    latencies.sort()
    emit(sys.stdout, event="done", p50_us=percentile(latencies, 0.5) / 1000, p90_us=percentile(latencies, 0.9) / 1000,
         p99_us=percentile(latencies, 0.99) / 1000, mean_us=statistics.fmean(latencies) / 1000)
    return 0


# -- one configuration ---------------------------------------------------------------------------------------


@dataclass
class Run:
    """What one configuration did. Peak counters are read right after the last round's MADV_PAGEOUT."""

    key: str
    elapsed_s: float = 0.0
    pageout_s: list[float] = field(default_factory=list)
    touch_s: list[float] = field(default_factory=list)
    round_p50_us: list[float] = field(default_factory=list)
    swapped_kib: list[int] = field(default_factory=list)  # the child's Swap: after each MADV_PAGEOUT
    major_faults: list[int] = field(default_factory=list)
    passes: list[int] = field(default_factory=list)  # reclaims of the cgroup until nothing was left in memory
    still_cached: list[int] = field(default_factory=list)  # pages left in memory after the last pass
    intact: bool = True
    p50_us: float = 0.0
    p90_us: float = 0.0
    p99_us: float = 0.0
    mean_us: float = 0.0
    stored_pages: int | None = None  # in the compressed store (zram, zswap, the tmemfs backend)
    orig_bytes: int | None = None  # what those pages are uncompressed
    pool_bytes: int | None = None  # what they take, overheads included
    disk_bytes: int | None = None  # written to the disk under SRC during the run
    backing_write_bytes: int | None = None  # tmemfs's backing.write_bytes
    counters: dict[str, Any] = field(default_factory=dict)  # the raw peak counters
    algorithm: str = ""
    commands: list[str] = field(default_factory=list)
    changed: list[str] = field(default_factory=list)
    undo_errors: list[str] = field(default_factory=list)
    error: str | None = None

    @property
    def ratio(self) -> float | None:
        """Compression ratio: uncompressed bytes / bytes held (overheads included), as zram's and zswap's."""
        if not self.orig_bytes or not self.pool_bytes:
            return None
        return self.orig_bytes / self.pool_bytes


@dataclass
class Env:
    """What every configuration shares: paths, the disk under SRC, the kernel root."""

    ws: Workspace
    size: int
    rounds: int
    pattern: Path
    disk_stat: Path | None
    root: Path = Path("/")

    @property
    def swapfile(self) -> Path:
        return self.ws.src / SWAP_NAME

    @property
    def ram(self) -> Path:
        """Where loop-ram mounts its tmpfs (a directory of its own: a leftover mount never hides SRC or MNT)."""
        return self.ws.root / "run" / "ram"

    @property
    def swap_size(self) -> int:
        return 2 * self.size  # room for every page twice over: the kernel frees slots lazily


def sectors_written(stat: Path | None) -> int | None:
    """Sectors written, field 7 of /sys/class/block/DEV/stat."""
    if stat is None:
        return None
    return int(stat.read_text().split()[6])


def disk_stat_of(path: Path) -> Path | None:
    """/sys/class/block/DEV/stat of the block device under `path`, if it is one."""
    source = command_output(["findmnt", "-n", "-o", "SOURCE", "-T", str(path)])
    stat = Path("/sys/class/block") / Path(source).name / "stat"
    return stat if source.startswith("/dev/") and stat.exists() else None


def settled(read: Callable[[], dict[str, Any]], timeout: float = SETTLE_S) -> dict[str, Any]:
    """Counters once two reads 0.1 s apart agree: the loop device finishes writes after MADV_PAGEOUT returns."""
    last, deadline = read(), time.monotonic() + timeout
    while time.monotonic() < deadline:
        time.sleep(0.1)
        now = read()
        if now == last:
            break
        last = now
    return last


def zram_counters(dev: str, root: Path = Path("/")) -> dict[str, Any]:
    """mm_stat: orig_data_size compr_data_size mem_used_total mem_limit mem_used_max same_pages ..."""
    fields = (root / "sys/block" / Path(dev).name / "mm_stat").read_text().split()
    names = ("orig_data_size", "compr_data_size", "mem_used_total", "mem_limit", "mem_used_max", "same_pages",
             "pages_compacted", "huge_pages")
    return {name: int(value) for name, value in zip(names, fields, strict=False)}


def zswap_counters(debugfs: Path) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for path in sorted((debugfs / "zswap").glob("*")):
        with suppress(OSError, ValueError):
            out[path.name] = int(path.read_text().split()[0])
    return out


def tmemfs_counters(mnt: Path) -> dict[str, Any]:
    return {k: v for k, v in read_stats(mnt).items()
            if k.startswith(("frontswap.", "backend.", "backing.write")) and isinstance(v, int | float)}


def apply_counters(run: Run, counters: dict[str, Any]) -> None:
    """Pages stored, uncompressed and held bytes from each kind's counters."""
    run.counters = counters
    if run.key == ZRAM:
        run.orig_bytes, run.pool_bytes = counters.get("orig_data_size"), counters.get("mem_used_total")
        run.stored_pages = (run.orig_bytes or 0) // PAGE
    elif run.key == ZSWAP:
        run.stored_pages = counters.get("stored_pages")
        run.orig_bytes = (run.stored_pages or 0) * PAGE
        run.pool_bytes = counters.get("pool_total_size")
    elif run.key in FRONTSWAP_KEYS:
        run.stored_pages = counters.get("frontswap.stored_pages")
        run.orig_bytes = backend_value(counters, "orig_data_size")
        run.pool_bytes = backend_value(counters, "pool_total_size")


def tmemfs_options(key: str, size: int) -> str:
    """cc_size holds every page twice over (the kernel frees slots lazily). zcache keeps poorly compressible
    pages raw, as zram does (its default, reject, would send the 20% random pages to SRC)."""
    backend = "zcache,zc_poor=raw" if key == FS_ZCACHE else "tmem"
    return f"cleancache={backend},cc_size={2 * size // MiB}M,cache_size=16M,backing_io=direct,frontswap={SWAP_NAME}"


def new_swapfile(path: Path, size: int, sparse: bool) -> None:
    """A fresh swap file: allocated (the disk's, as swapfiles are) or sparse (frontswap's, as in the issue)."""
    path.unlink(missing_ok=True)
    with open(path, "wb") as f:
        f.truncate(size)
        if not sparse:
            os.posix_fallocate(f.fileno(), 0, size)
        os.fsync(f.fileno())


def setup(key: str, k: Kernel, env: Env, run: Run) -> tuple[str, Callable[[], dict[str, Any]]]:
    """Make the swap device of a configuration; the device and how to read its counters."""
    if key == ZRAM:
        dev, run.algorithm = k.zram(env.swap_size, ("lz4", "lzo-rle"))
        return dev, lambda: zram_counters(dev, env.root)
    if key in FRONTSWAP_KEYS:
        return setup_frontswap(key, k, env, run)
    if key == LOOP_RAM:
        env.ram.mkdir(exist_ok=True)
        k.tmpfs(env.ram, env.swap_size + MiB)  # (a MiB for tmpfs's own blocks)
        swapfile = env.ram / SWAP_NAME
        k.note(f"fallocate -l {env.swap_size // MiB}M {swapfile}")
        new_swapfile(swapfile, env.swap_size, sparse=False)
        return loop_device(k, swapfile, run), lambda: {}
    k.callback(f"rm {env.swapfile}", lambda: env.swapfile.unlink(missing_ok=True))
    k.note(f"fallocate -l {env.swap_size // MiB}M SRC/{SWAP_NAME}")
    new_swapfile(env.swapfile, env.swap_size, sparse=False)
    if key == ZSWAP:
        debugfs = k.debugfs()
        params = env.root / ZSWAP_PARAMS
        with suppress(OSError):  # the kernel says EINVAL or ENOENT when it has no lz4
            k.set(ZSWAP_PARAMS / "compressor", "lz4")
        run.algorithm = read_setting(params / "compressor")
        k.set(ZSWAP_PARAMS / "enabled", "Y")
        return loop_device(k, env.swapfile, run), lambda: zswap_counters(debugfs)
    return loop_device(k, env.swapfile, run), lambda: {}


def setup_frontswap(key: str, k: Kernel, env: Env, run: Run) -> tuple[str, Callable[[], dict[str, Any]]]:
    """tmemfs over SRC with the swap file as its frontswap area, and a loop device on the mounted file."""
    k.callback(f"rm {env.swapfile}", lambda: env.swapfile.unlink(missing_ok=True))
    k.note(f"truncate -s {env.swap_size // MiB}M SRC/{SWAP_NAME}")
    new_swapfile(env.swapfile, env.swap_size, sparse=True)
    run.algorithm = "lz4" if key == FS_ZCACHE else "none"
    mount = Mount(Config(key, LABELS[key], "tmemfs", tmemfs_options(key, env.size)), env.ws, (SWAP_NAME,))
    k.note(f"tmemfs SRC MNT -o {mount.options},log=...")
    k.callback("unmount tmemfs", mount.stop)
    mount.start()
    if not punch_hole(env.ws.mnt / SWAP_NAME):
        run.changed.append("this tmemfs refused fallocate(PUNCH_HOLE) on the swap file, so the loop device's "
                           "discards cannot invalidate frontswap pages")
    return loop_device(k, env.ws.mnt / SWAP_NAME, run), lambda: tmemfs_counters(env.ws.mnt)


def punch_hole(path: Path) -> bool:
    """Whether the file takes fallocate(PUNCH_HOLE | KEEP_SIZE) of its first page: how the loop driver passes on
    a discard (swapon --discard). Tried before mkswap, on a fresh sparse file."""
    fd = os.open(path, os.O_WRONLY)
    try:
        result: int = LIBC.fallocate(fd, FALLOC_PUNCH_HOLE, ctypes.c_long(0), ctypes.c_long(PAGE))
        return result == 0
    finally:
        os.close(fd)


def loop_device(k: Kernel, file: Path, run: Run) -> str:
    """A loop device with direct I/O (swap then reaches the file, not the host's page cache), else buffered."""
    try:
        return k.loop(file, direct_io=True)
    except RuntimeError:
        run.changed.append(f"the loop device on {file.name} refused direct I/O: buffered")
        return k.loop(file, direct_io=False)


def child_command(env: Env, memcg: Path | None) -> list[str]:
    return [sys.executable, "-c", "import sys; from tools.bench_frontswap import workload_child; "
            "sys.exit(workload_child(sys.argv[1:]))", str(env.pattern), str(env.rounds),
            *([str(memcg)] if memcg else [])]


def stop_child(proc: subprocess.Popen[str]) -> None:
    if proc.poll() is None:
        proc.kill()
    proc.wait()


def drive(proc: subprocess.Popen[str], run: Run, counters: Callable[[], dict[str, Any]], rounds: int) -> None:
    """Follow the child's events; after each pageout read the counters (the last round's are kept)."""
    assert proc.stdout is not None and proc.stdin is not None
    for line in proc.stdout:
        event = json.loads(line)
        if event["event"] == "paged":
            run.pageout_s.append(event["pageout_s"])
            peak = settled(counters)
            run.swapped_kib.append(event["swap_kib"])
            run.passes.append(event["passes"])
            run.still_cached.append(event["still_cached"])
            apply_counters(run, peak)
            proc.stdin.write("\n")
            proc.stdin.flush()
        elif event["event"] == "touched":
            run.touch_s.append(event["touch_s"])
            run.major_faults.append(event["major_faults"])
            run.round_p50_us.append(event["p50_us"])
            run.intact = run.intact and event["intact"]
        elif event["event"] == "done":
            run.p50_us, run.p90_us, run.p99_us, run.mean_us = (event[k] for k in ("p50_us", "p90_us", "p99_us",
                                                                                    "mean_us"))
    if proc.wait() != 0:
        raise RuntimeError(f"the workload exited {proc.returncode}")
    if len(run.touch_s) != rounds:
        raise RuntimeError("the workload ended early")


def measure(key: str, env: Env, run_cmd: Runner = run_command) -> Run:
    """One configuration from setup to teardown; everything it changed is undone before it returns."""
    run = Run(key)
    with kernel(env.root, run_cmd) as k:
        try:
            dev, counters = setup(key, k, env, run)
            k.swapon(dev, discard=key != ZRAM)
            workload(env, run, counters, k)
        except Exception as exc:
            run.error = str(exc) or type(exc).__name__
        finally:
            run.undo_errors = k.close()
            run.changed += k.changed
            run.commands = k.commands
    return run


def workload(env: Env, run: Run, counters: Callable[[], dict[str, Any]], k: Kernel) -> None:
    """The child's run, with the disk's writes around it (SRC synced before the second reading)."""
    before, started = sectors_written(env.disk_stat), time.monotonic()
    backing0 = counters().get("backing.write_bytes")
    memcg = None
    if (env.root / MEMCG / "memory.force_empty").exists():
        memcg = k.memcg(f"tmemfs-bench-frontswap-{os.getpid()}")
    else:
        run.changed.append("no cgroup v1 memory controller: pages left in the swap cache stay there")
    proc = subprocess.Popen(child_command(env, memcg), cwd=REPO, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            text=True)
    k.callback("stop the workload", lambda: stop_child(proc))
    k.note(f"# the workload ({env.size // MiB} MiB, {env.rounds} rounds){', in that cgroup' if memcg else ''}")
    drive(proc, run, counters, env.rounds)
    run.elapsed_s = time.monotonic() - started
    os.sync()  # what tmemfs wrote to SRC through the host's page cache reaches the disk
    after = sectors_written(env.disk_stat)
    if before is not None and after is not None:
        run.disk_bytes = (after - before) * SECTOR
    backing1 = counters().get("backing.write_bytes")
    if backing0 is not None and backing1 is not None:
        run.backing_write_bytes = int(backing1) - int(backing0)


# -- the run -------------------------------------------------------------------------------------------------


@dataclass
class Settings:
    quick: bool
    size: int
    rounds: int
    keys: tuple[str, ...]
    force: bool


@dataclass
class Report:
    settings: Settings
    machine: dict[str, str]
    versions: dict[str, str]
    started: str
    runs: dict[str, Run] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    paths: dict[str, str] = field(default_factory=dict)
    elapsed_s: float = 0.0
    kernel_config: dict[str, str] = field(default_factory=dict)  # USER_BLOCK_DEVICES in the running kernel


def settings_from(args: argparse.Namespace) -> Settings:
    size = size_in_bytes(args.size) if args.size else (QUICK_SIZE if args.quick else DEFAULT_SIZE)
    rounds = args.rounds or (2 if args.quick else 5)
    keys = tuple(args.only.split(",")) if args.only else KEYS
    return Settings(args.quick, size, rounds, keys, args.force)


def run_all(args: argparse.Namespace) -> Report:
    """Every configuration in turn, one swap area active at a time, with vm.page-cluster=0 around them all."""
    s = settings_from(args)
    ws = Workspace(Path(args.results_dir).resolve(), Path(sys.executable).parent)
    ws.prepare()
    report = Report(s, machine_facts(ws.src), versions(), datetime.datetime.now(datetime.UTC).strftime(
        "%Y-%m-%d %H:%M UTC"))
    report.kernel_config = kernel_options(USER_BLOCK_DEVICES)
    pattern = ws.cache / f"pattern-{s.size // MiB}M.bin"
    make_pattern(pattern, s.size, text_corpus(8 * MiB))
    env = Env(ws, s.size, s.rounds, pattern, disk_stat_of(ws.src))
    report.paths = {"SRC": str(ws.src), "MNT": str(ws.mnt), "RAM": str(env.ram)}
    if active_swaps():
        report.notes.append(f"run with --force beside swap areas already active ({', '.join(active_swaps())}): "
                            "the kernel may have swapped to them too")
    if env.disk_stat is None:
        report.notes.append("SRC is not on a block device this run can read: no bytes written to disk")
    digest, started = source_digest(), time.monotonic()
    with kernel() as k:
        k.set(PAGE_CLUSTER, "0")
        report.notes += k.changed
        for key in s.keys:
            log(f"{key}: {LABELS[key]}")
            report.runs[key] = measure(key, env)
            log(f"{key}: " + (report.runs[key].error or f"done in {report.runs[key].elapsed_s:.1f} s"))
    if source_digest() != digest:
        report.notes.append("tmemfs's sources changed during the run: the numbers mix two versions")
    report.elapsed_s = time.monotonic() - started
    return report


# -- targets -------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Verdict:
    label: str
    measured: str
    result: str
    why: str = ""


def missing(report: Report, *keys: str) -> str | None:
    """Why a target cannot be judged: a configuration not run, or failed."""
    for key in keys:
        r = report.runs.get(key)
        if r is None:
            return f"{key} not measured"
        if r.error:
            return f"{key} failed: {r.error}"
    return None


def disk_target(report: Report) -> Verdict:
    label = "(b) writes >= 90% fewer bytes to disk than (a)"
    why = missing(report, FS_ZCACHE, DISK)
    if why:
        return Verdict(label, "-", "MISSED" if why.startswith(FS_ZCACHE) else "n/a", why)
    b, a = report.runs[FS_ZCACHE].disk_bytes, report.runs[DISK].disk_bytes
    if b is None or not a:
        return Verdict(label, "-", "n/a", "no disk counters (SRC not on a readable block device)")
    fewer = 1 - b / a
    return Verdict(label, f"{fewer:.1%} fewer ({mib(b)} vs {mib(a)} MiB)", "MET" if fewer >= 0.9 else "MISSED")


def ratio_target(report: Report) -> Verdict:
    label = "(b)'s compression ratio within 10% of zram's, same algorithm"
    why = missing(report, FS_ZCACHE, ZRAM)
    if why:
        return Verdict(label, "-", "MISSED" if why.startswith(FS_ZCACHE) else "n/a", why)
    b, z = report.runs[FS_ZCACHE], report.runs[ZRAM]
    if b.ratio is None or z.ratio is None:
        return Verdict(label, "-", "MISSED" if b.ratio is None else "n/a", "no pages stored")
    rel = b.ratio / z.ratio
    measured = f"{b.ratio:.2f} vs {z.ratio:.2f} ({rel:.2f}x)"
    if z.algorithm != b.algorithm:
        return Verdict(label, measured, "n/a", f"zram used {z.algorithm}, zcache {b.algorithm}")
    return Verdict(label, measured, "MET" if abs(rel - 1) <= 0.10 else "MISSED")


def load_target(report: Report, key: str) -> Verdict:
    label = f"{LABELS[key][:3]} loads >= 2x faster than (a)'s swap-ins (p50 per page)"
    why = missing(report, key, DISK)
    if why:
        return Verdict(label, "-", "MISSED" if why.startswith(key) else "n/a", why)
    a, b = report.runs[DISK].p50_us, report.runs[key].p50_us
    if not b:
        return Verdict(label, "-", "MISSED", "no latency")
    speedup = a / b
    return Verdict(label, f"{speedup:.2f}x ({b:.0f} vs {a:.0f} us)", "MET" if speedup >= 2 else "MISSED")


def verdicts(report: Report) -> list[Verdict]:
    return [disk_target(report), ratio_target(report), load_target(report, FS_ZCACHE), load_target(report, FS_TMEM)]


def target_lines(report: Report) -> list[str]:
    return [verdict_line(v.result, v.label, v.measured, v.why) for v in verdicts(report)]


# -- the section ---------------------------------------------------------------------------------------------


def mib(n: int | None) -> str:
    return "-" if n is None else f"{n / MiB:.1f}"


def against(value: float | None, base: float | None, floor: float = 0.0) -> str:
    """value / base; '-' when either is missing or the base is at most `floor` (noise, not a measure)."""
    if value is None or base is None or base <= floor:
        return "-"
    return f"{value / base:.2f}x"


def ok_runs(report: Report) -> list[Run]:
    return [r for r in report.runs.values() if not r.error]


def results_table(report: Report) -> list[str]:
    """One row per configuration: the numbers, then the ratios against (a) and zram."""
    a, z = report.runs.get(DISK), report.runs.get(ZRAM)
    rows = ["| configuration | run time s | swap-in p50 / p99 us | pages stored | compression ratio | disk MiB written "
            "| tmemfs backing MiB | time vs (a) / zram | p50 vs (a) / zram | disk bytes vs (a) / zram |",
            "|---|---|---|---|---|---|---|---|---|---|"]
    for r in ok_runs(report):
        ratio = f"{r.ratio:.2f}" if r.ratio else "-"
        rows.append(
            f"| {LABELS[r.key]} | {r.elapsed_s:.1f} | {r.p50_us:.1f} / {r.p99_us:.1f} | "
            f"{'-' if r.stored_pages is None else r.stored_pages} | {ratio} | {mib(r.disk_bytes)} | "
            f"{mib(r.backing_write_bytes)} | "
            + " | ".join(f"{against(v(r), v(a) if a and not a.error else None, floor)} / "
                         f"{against(v(r), v(z) if z and not z.error else None, floor)}"
                         for v, floor in ((lambda x: x.elapsed_s, 0.0), (lambda x: x.p50_us, 0.0),
                                          (lambda x: None if x.disk_bytes is None else float(x.disk_bytes), MiB)))
            + " |")
    return rows


def cause_lines(report: Report) -> list[str]:
    """The causes the numbers themselves show, for the targets missed and the differences that stand out."""
    runs = {r.key: r for r in ok_runs(report)}
    lines = []
    slow = [v for v in verdicts(report)[2:] if v.result == "MISSED" and v.measured != "-"]
    if slow and DISK in runs:
        kernel = ", ".join(f"{k} {runs[k].p50_us:.1f} us" for k in (ZRAM, ZSWAP) if k in runs)
        lines.append(f"* Loads: a frontswap load is a round trip from the loop device through /dev/fuse to tmemfs's "
                     f"Python daemon and back, and costs about what a direct read of this disk does ((a): "
                     f"{runs[DISK].p50_us:.1f} us p50)" + (f"; the kernel's own stores answer in-kernel ({kernel})"
                                                            if kernel else "") + ".")
    if slow and DISK in runs:
        lines += floor_lines(runs, runs[DISK].p50_us / 2, report.kernel_config)
    for key in FRONTSWAP_KEYS:
        r, z = runs.get(key), runs.get(ZRAM)
        if r is None or z is None or not r.stored_pages or not z.stored_pages or r.stored_pages < 1.02 * z.stored_pages:
            continue
        lines.append(f"* {key} held {r.stored_pages} pages at the peak, zram {z.stored_pages}: with "
                     f"frontswap.invalidates = {r.counters.get('frontswap.invalidates', '?')}, the slots the kernel "
                     "freed (a page written after its swap-in gets a new slot at the next pageout) stay stored until "
                     "stored over or discarded, and zram and zswap hear of every freed slot directly.")
    if FS_TMEM in runs and (runs[FS_TMEM].ratio or 0) < 1:
        lines.append("* tmem keeps pages uncompressed: with its per-entry overhead its ratio is below 1.")
    return lines


def floor_lines(runs: dict[str, Run], goal_us: float, kernel_config: dict[str, str]) -> list[str]:
    """Why a load target is missed when the loop device alone costs more than the target allows."""
    lines = []
    floor = runs.get(LOOP_RAM)
    if floor is not None:
        side = "below" if floor.p50_us > goal_us else "above"
        line = (f"* The floor: (f), the same loop device with its file in memory, answers a swap-in in "
                f"{floor.p50_us:.1f} us p50. A load 2x faster than (a) is {goal_us:.1f} us, {side} what the loop "
                "device alone costs here")
        over = ", ".join(f"{key} {runs[key].p50_us - floor.p50_us:.1f} us" for key in FRONTSWAP_KEYS if key in runs)
        if over:
            line += f"; tmemfs adds {over} to it (the /dev/fuse round trip and the daemon)"
        lines.append(line + ".")
    present = [name for name, value in kernel_config.items() if value in ("y", "m")]
    if present:
        lines.append(f"* This kernel has {', '.join(present)}: a user-space block device could serve swap without "
                     "a loop device.")
    elif kernel_config:
        lines.append("* This kernel has no user-space block device that could serve swap without a loop device "
                     f"({' and '.join(kernel_config)} not set).")
    return lines


def kernel_options(names: Sequence[str], root: Path = Path("/")) -> dict[str, str]:
    """Each option's value in the running kernel's config ("not set" when absent); empty when it does not say."""
    try:
        text = gzip.decompress((root / KERNEL_CONFIG).read_bytes()).decode()
    except OSError:
        return {}
    found = dict(re.findall(r"^(CONFIG_\w+)=(\S+)$", text, re.MULTILINE))
    return {name: found.get(name, "not set") for name in names}


def fmt(xs: Sequence[float]) -> str:
    return ", ".join(f"{x:.2f}" if isinstance(x, float) else str(x) for x in xs)


def rounds_table(report: Report) -> list[str]:
    rows = ["| configuration | pageout s per round | cgroup reclaims | swapped KiB per round | touch s per round "
            "| major faults per round | p50 us per round | every byte intact |", "|---|---|---|---|---|---|---|---|"]
    for r in ok_runs(report):
        passes = ", ".join(f"{p}" + (f" ({c} left)" if c else "") for p, c in zip(r.passes, r.still_cached,
                                                                                   strict=False))
        rows.append(f"| {r.key} | {fmt(r.pageout_s)} | {passes} | {fmt(r.swapped_kib)} | {fmt(r.touch_s)} | "
                    f"{fmt(r.major_faults)} | {fmt(r.round_p50_us)} | {'yes' if r.intact else '**NO**'} |")
    return rows


def counter_lines(report: Report) -> list[str]:
    return [f"* {r.key} ({r.algorithm or '-'}): " + ", ".join(f"{k} {v}" for k, v in sorted(r.counters.items()))
            for r in ok_runs(report) if r.counters]


def failure_lines(report: Report) -> list[str]:
    lines = [f"* **{r.key}**: {r.error}" for r in report.runs.values() if r.error]
    lines += [f"* **{r.key}**: could not undo {e}" for r in report.runs.values() for e in r.undo_errors]
    lines += [f"* **{r.key}**: a page came back with other bytes" for r in ok_runs(report) if not r.intact]
    return lines


def method_lines(report: Report) -> list[str]:
    s = report.settings
    mix = ", ".join(f"{share:.0%} {kind}" for kind, share in MIX)
    return [
        f"* Workload: one child process, {s.size // MiB} MiB of anonymous memory ({mix} pages, by page, seed "
        f"{SEED}; text pages are slices of the text corpus of tools/corpus.py), {s.rounds} rounds of: stamp the "
        "round into every non-zero page, `madvise(MADV_PAGEOUT)` (21) on the whole area, then `memory.force_empty` "
        "of the child's own memory cgroup (v1, no limit set) until mincore shows no page of the area in memory "
        "(on a loop device MADV_PAGEOUT only starts the writes, and the written pages wait in the swap cache, "
        "unmapped, where a touch would find them without any swap-in; the reclaim also pushes out a few hundred "
        "pages of the interpreter, in every configuration alike), read one byte of every "
        "page (timed one by one: the swap-in latency), CRC of the whole area against the one taken before the "
        "pageout. No memory limit: MADV_PAGEOUT and the reclaim push everything out without memory pressure on "
        "the machine, the same way every time.",
        "* `vm.page-cluster` = 0 for the run (restored after): a fault reads one page, so the latency is one "
        "page's, with no readahead hits mixed in.",
        "* Zero pages never reach any swap device on this kernel (the swap layer keeps a zero map since 6.12): "
        "they count in Swap: but in no store's pages.",
        "* Run time: the child's whole run (fill, rounds, checks). Pages stored, compression ratio: the store's "
        "counters right after the last round's pageout, once they settle (zram's mm_stat: orig_data_size / "
        "mem_used_total; zswap's debugfs: stored_pages x 4096 / pool_total_size; tmemfs: frontswap.stored_pages "
        "and the backend's orig_data_size / pool_total_size): bytes held with their overheads, for each.",
        "* Disk bytes: sectors written (field 7 of `/sys/class/block/DEV/stat`) of the disk under SRC, from the "
        "child's start to its end plus a sync; anything else writing to that disk counts too.",
        "* One swap area at a time (`swapon --discard` for loop devices; zram frees slots itself); each is "
        "swapped off, its loop device detached, its mount unmounted, its zram device removed and zswap's "
        "parameters restored before the next.",
        *(["* **Quick mode** (`--quick`): a smaller area and fewer rounds; the numbers are rougher."]
          if s.quick else []),
    ]


def config_lines(report: Report) -> list[str]:
    """Each configuration's commands, setup and teardown, in the order run (the workload between them)."""
    lines = []
    for r in report.runs.values():
        lines += [f"* {LABELS[r.key]}" + (f", compressor {r.algorithm}" if r.algorithm else "")
                  + "".join(f"; {c}" for c in r.changed) + ":", "", "  ```",
                  *(f"  {placeholders(c, report.paths)}" for c in r.commands), "  ```", ""]
    return lines


def command_line(s: Settings) -> str:
    parts = ["python -m tools.bench_frontswap"] + (["--quick"] if s.quick else [])
    default_size = QUICK_SIZE if s.quick else DEFAULT_SIZE
    if s.size != default_size:
        parts.append(f"--size {s.size // MiB}M")
    if s.rounds != (2 if s.quick else 5):
        parts.append(f"--rounds {s.rounds}")
    if s.keys != KEYS:
        parts.append(f"--only {','.join(s.keys)}")
    return " ".join(parts)


def render(report: Report, chart: str | None = None) -> str:
    s = report.settings
    lines = [
        TITLE, "",
        f"Run {report.started}, `{command_line(s)}`, {s.size // MiB} MiB, {s.rounds} rounds "
        f"({mmss(report.elapsed_s)}).", "",
        "### Targets (issue 15)", "",
        *table(["target", "measured", "result"],
               [[v.label, v.measured, (v.result if v.result == "MET" else f"**{v.result}**")
                 + (f" ({v.why})" if v.why else "")] for v in verdicts(report)]), "",
        "### Results", "", *results_table(report), "",
        "Ratios are this row's number over (a)'s and over zram's; a disk ratio is `-` where the base wrote under "
        "1 MiB (what else the machine wrote then, not swap).", "",
        *([f"![swap-in latency, disk writes, compression ratio and run time per configuration]({chart})", ""]
          if chart else []),
        *subsection("### What the numbers say", cause_lines(report)),
        "### Rounds", "", *rounds_table(report), "",
        "### Counters at the peak (after the last pageout)", "", *counter_lines(report), "",
        "### Configurations", "", *config_lines(report), "",
        "### Method", "", *method_lines(report), "",
        *subsection("### Notes", [f"* {n}" for n in report.notes]),
        *subsection("### Failures", failure_lines(report)),
        *machine_lines(report.machine, report.versions),
        "Raw numbers (`report.json`, for `--from-json`) are kept under `bench-results/frontswap/run/` "
        "(not committed).", "",
    ]
    return markdown(lines)


def make_chart(report: Report, path: Path) -> bool:
    """One PNG, four panels; False when nothing ran."""
    runs = ok_runs(report)
    if not runs:
        return False
    plt = pyplot()
    names = [r.key for r in runs]
    fig, axes = plt.subplots(2, 2, figsize=(11, 7))
    (a1, a2), (a3, a4) = axes
    xs = range(len(runs))
    a1.bar([x - 0.2 for x in xs], [r.p50_us for r in runs], 0.4, label="p50")
    a1.bar([x + 0.2 for x in xs], [r.p99_us for r in runs], 0.4, label="p99")
    a1.set(title="Swap-in latency per page", ylabel="us (log)", yscale="log")
    a1.legend(fontsize=8)
    a2.bar(xs, [(r.disk_bytes or 0) / MiB for r in runs])
    a2.set(title="Written to the disk under SRC", ylabel="MiB")
    a3.bar(xs, [r.ratio or 0 for r in runs])
    a3.set(title="Compression ratio (bytes held, overheads included)", ylabel="x")
    a4.bar(xs, [r.elapsed_s for r in runs])
    a4.set(title="Run time", ylabel="s")
    for ax in (a1, a2, a3, a4):
        ax.set_xticks(list(xs), names)
    fig.suptitle(f"{report.settings.size // MiB} MiB anonymous memory, {report.settings.rounds} MADV_PAGEOUT "
                 f"rounds ({'quick' if report.settings.quick else 'normal'} run)", fontsize=10)
    save_figure(fig, path)
    return True


# -- saved numbers and main ----------------------------------------------------------------------------------


def report_to_json(r: Report) -> dict[str, Any]:
    return asdict(r)


def report_from_json(d: dict[str, Any]) -> Report:
    settings = Settings(**{**d["settings"], "keys": tuple(d["settings"]["keys"])})
    runs = {k: Run(**v) for k, v in d["runs"].items()}
    return Report(settings, d["machine"], d["versions"], d["started"], runs, d["notes"], d["paths"], d["elapsed_s"],
                  d.get("kernel_config", {}))


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = section_parser("bench_frontswap", __doc__, "64 MiB, 2 rounds: about a minute")
    parser.add_argument("--size", help="anonymous memory the workload touches (default 256M, quick 64M)")
    parser.add_argument("--rounds", type=int, help="MADV_PAGEOUT rounds (default 5, quick 2)")
    parser.add_argument("--only", help=f"comma-separated configurations, of {','.join(KEYS)}")
    parser.add_argument("--force", action="store_true", help="run although the machine has swap active already")
    add_output_options(parser, "frontswap", ROOT, "workspace: SRC, mount point, raw numbers")
    add_from_json(parser)
    return parser.parse_args(argv)


def check_args(args: argparse.Namespace) -> str | None:
    """One line on what is wrong with the command line, or None."""
    if args.only and not set(args.only.split(",")) <= set(KEYS):
        return f"--only takes some of {','.join(KEYS)}, not {args.only}"
    if args.rounds is not None and args.rounds < 1:
        return "--rounds must be at least 1"
    if args.size:
        try:
            size = size_in_bytes(args.size)
        except (ValueError, argparse.ArgumentTypeError) as exc:
            return f"--size: {exc}"
        if size < MiB or size % PAGE:
            return "--size must be at least 1M and a multiple of 4 KiB"
    if args.from_json is None and not args.force and active_swaps():
        return (f"swap is already active ({', '.join(active_swaps())}): the benchmark needs its own swap area "
                "alone (swapoff those, or --force to run beside them, untouched)")
    return None


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    problem = check_args(args)
    if problem:
        print(f"bench_frontswap: {problem}", file=sys.stderr)
        return 2
    report = measured_or_loaded(args, run_all, report_to_json, report_from_json,
                                run_json(args.results_dir, args.quick))
    if report is None:
        return 130
    chart, link = draw_chart(args.out, CHART, lambda path: make_chart(report, path))
    return publish(args.out, "frontswap", render(report, link), report.elapsed_s, target_lines(report), chart)


if __name__ == "__main__":
    sys.exit(main())
