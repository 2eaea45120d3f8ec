"""Benchmark tmemfs with fio against native, the pyfuse3 example and a null file system; write BENCHMARKS.md.

Run from the repository root with the project's venv (needs root, /dev/fuse, fio):

    .venv/bin/python -m tools.bench [--quick] [--out BENCHMARKS.md]

Two parts, each measured in interleaved rounds (round 1 of every configuration,
then round 2, ...) so that the machine's drift hits all configurations alike;
ratios are only ever taken between numbers from the same invocation:

* the fio matrix: 4k randread, 4k randwrite, 4k randrw 70/30, 128k sequential
  read and zipf:1.1 randread, each at QD1 psync and libaio QD16, direct=1, on
  native SRC, the pyfuse3 pass-through example (as shipped, and patched to drop
  O_DIRECT on its backing open so that it can run), the null file system
  (tools/nullfs.py: the ceiling of one pyfuse3 process), and tmemfs with each
  backend (none, tmem, zcache, dedup) on a file four times its page cache;
* the pass-through comparison: 4k randread QD1/QD16 and 128k read with
  direct=0 on a file that fits every cache, tmemfs cleancache=none against the
  example as shipped and with tmemfs's attribute timeouts (target 0.9x).

Only the text above `<!-- backends:begin -->` is written; tools/bench_backends.py
owns the rest. `--from-json` redraws the report and charts from a saved run.
"""

from __future__ import annotations

import argparse
import datetime
import difflib
import hashlib
import json
import os
import platform
import re
import resource
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import tarfile
import time
from collections import Counter
from collections.abc import Callable, Sequence
from contextlib import suppress
from dataclasses import asdict, dataclass, field, replace
from importlib import metadata
from pathlib import Path
from types import FrameType
from typing import Any, Literal, TypeVar

from fusefs.options import MountConfig
from tools.bench_backends import BEGIN, END, fill, text_corpus
from tools.mounting import is_mounted, pid_alive, signals_deferred, stop_daemon, unmount

MiB = 1 << 20
REPO = Path(__file__).resolve().parent.parent
FILE_SIZE = 64 * MiB
FILE_NAME = "bench-64M.dat"  # random bytes: the pass-through comparison
TEXT_NAME = "text-64M.dat"  # text-like (compresses about 2x): the matrix's read jobs
RW_NAME = "rw-64M.dat"  # the matrix's write jobs; a fresh copy of TEXT_NAME before every mount
CACHE_SIZE = "256M"  # pass-through comparison: the file fits tmemfs's page cache
MATRIX_CACHE = "16M"  # matrix: a quarter of the file, so misses go to the backend or the disk
MATRIX_CC = "256M"  # every backend holds both files
RSS_CACHE = 64 * MiB
RSS_FILE_SIZE = 256 * MiB
RSS_FILE_NAME = "rss-256M.dat"
TARGET = 0.9
RUN_OVERHEAD_S = 0.4  # per fio run: fio's start-up, mounts, warm-up reads (measured on the 2-CPU VM)
BUSY = 0.25  # other processes using more than this share of one CPU during a run make it suspect
TMEMFS_TIMEOUT_S = 1
BASELINE = "example"
BASELINE_1S = "example-1s"
NODIRECT = "example-nodirect"
NULL = "null"
SUBJECT = "tmemfs"  # the pass-through comparison's tmemfs
SUBJECT_KC = "tmemfs-kernel_cache"  # the same with the example's caching: informative, next to example-1s
MATRIX_NONE = "tmemfs-none"
BACKENDS = ("none", "tmem", "zcache", "dedup")
EXAMPLE_MEMBER = "examples/passthroughfs.py"
TIMEOUT_PATCH = (("entry.entry_timeout = 0", f"entry.entry_timeout = {TMEMFS_TIMEOUT_S}"),
                 ("entry.attr_timeout = 0", f"entry.attr_timeout = {TMEMFS_TIMEOUT_S}"))
NODIRECT_PATCH = (("fd = os.open(self._inode_to_path(inode), flags)",
                   "fd = os.open(self._inode_to_path(inode), flags & ~os.O_DIRECT)"),
                  ("fd = os.open(path, flags | os.O_CREAT | os.O_TRUNC)",
                   "fd = os.open(path, (flags & ~os.O_DIRECT) | os.O_CREAT | os.O_TRUNC)"))
CHART_SUBDIR = Path("docs") / "bench"
PEER_BINARY = "passthrough_ll"  # libfuse's C pass-through, built by tools/bench_inflight.py into ws.cache

R = TypeVar("R")  # a tool's report
_started_pids: set[int] = set()  # every FUSE daemon this run started, for the last-resort cleanup


# -- what is measured -----------------------------------------------------------


@dataclass(frozen=True)
class Workload:
    """What fio does, independent of the engine: rw pattern, block size, distribution."""

    key: str
    label: str
    args: tuple[str, ...]
    writes: bool = False


WORKLOADS: tuple[Workload, ...] = (  # read-only ones first: they run before the writes on every mount
    Workload("4k-randread", "4k randread", ("--rw=randread", "--bs=4k")),
    Workload("128k-read", "128k seq read", ("--rw=read", "--bs=128k")),
    Workload("4k-zipf", "4k randread zipf:1.1", ("--rw=randread", "--bs=4k", "--random_distribution=zipf:1.1")),
    Workload("4k-randwrite", "4k randwrite", ("--rw=randwrite", "--bs=4k"), writes=True),
    Workload("4k-randrw", "4k randrw 70/30", ("--rw=randrw", "--rwmixread=70", "--bs=4k"), writes=True),
)
WORKLOAD = {w.key: w for w in WORKLOADS}
ENGINES: tuple[tuple[str, int], ...] = (("psync", 1), ("libaio", 16))


@dataclass(frozen=True)
class Job:
    """One fio workload at one engine/queue depth; `direct` is fio's --direct (O_DIRECT on the file)."""

    workload: Workload
    ioengine: str
    iodepth: int
    direct: int

    @property
    def label(self) -> str:
        return f"{self.workload.label} {self.ioengine} QD{self.iodepth} direct={self.direct}"

    @property
    def name(self) -> str:
        return f"{self.workload.key}-{self.ioengine}-qd{self.iodepth}-d{self.direct}"

    @property
    def engine(self) -> str:
        return f"{self.ioengine} QD{self.iodepth}"

    def fio_args(self) -> list[str]:
        args = [*self.workload.args, f"--ioengine={self.ioengine}"]
        if self.iodepth > 1:
            args.append(f"--iodepth={self.iodepth}")
        return [*args, f"--direct={self.direct}"]


MATRIX_JOBS: tuple[Job, ...] = tuple(Job(w, engine, depth, 1) for w in WORKLOADS for engine, depth in ENGINES)
COMPARE_JOBS: tuple[Job, ...] = (Job(WORKLOAD["4k-randread"], "psync", 1, 0),
                                 Job(WORKLOAD["4k-randread"], "libaio", 16, 0),
                                 Job(WORKLOAD["128k-read"], "psync", 1, 0))
ALL_JOBS: dict[str, Job] = {j.name: j for j in (*MATRIX_JOBS, *COMPARE_JOBS)}


@dataclass(frozen=True)
class Config:
    """A way of serving the test files: native, an example variant, the null fs, libfuse's passthrough_ll
    (peer), or tmemfs with options."""

    key: str
    label: str
    kind: Literal["native", "example", "null", "tmemfs", "peer"]
    options: str = ""  # tmemfs -o string, the example variant ("stock" / "timeouts1" / "nodirect"), peer's flags
    backing: str = ""  # where its reads of SRC come from, for the report
    warm: bool = True  # read each file through the mount once before its first job


def matrix_options(backend: str) -> str:
    return f"cleancache={backend},cache_size={MATRIX_CACHE},cc_size={MATRIX_CC},backing_io=direct"


MATRIX_CONFIGS: tuple[Config, ...] = (
    Config("native", "native ext4 directory (SRC itself)", "native", backing="disk (fio's O_DIRECT)"),
    Config(BASELINE, "pyfuse3 example, as shipped", "example", "stock",
           backing="- (its backing open gets the caller's O_DIRECT; the unaligned read fails)"),
    Config(NODIRECT, "pyfuse3 example, O_DIRECT dropped from its backing open (patched)", "example", "nodirect",
           backing="host page cache (buffered backing reads)"),
    Config(NULL, "null file system (tools/nullfs.py): zeros, writes discarded", "null", backing="none"),
    *(Config(f"tmemfs-{b}", f"tmemfs cleancache={b}", "tmemfs", matrix_options(b),
             backing="disk (backing_io=direct: O_DIRECT into aligned buffers)") for b in BACKENDS),
)

COMPARE_CONFIGS: tuple[Config, ...] = (
    Config("native", "native ext4 directory (SRC itself)", "native", backing="host page cache"),
    Config(BASELINE, "pyfuse3 example, as shipped (entry/attr timeout 0)", "example", "stock",
           backing="host page cache"),
    Config(BASELINE_1S, f"pyfuse3 example, entry/attr timeout {TMEMFS_TIMEOUT_S} s (patched)", "example",
           "timeouts1", backing="host page cache"),
    Config(SUBJECT, f"tmemfs cleancache=none, cache_size={CACHE_SIZE} (the file fits)", "tmemfs",
           f"cleancache=none,cache_size={CACHE_SIZE}", backing="host page cache, then tmemfs's page cache"),
    Config(SUBJECT_KC, "tmemfs as above with kernel_cache (no direct_io: the kernel caches file data, as the "
           "example does)", "tmemfs", f"cleancache=none,cache_size={CACHE_SIZE},kernel_cache",
           backing="host page cache, then tmemfs's page cache, under the kernel's page cache"),
)


@dataclass(frozen=True)
class Part:
    """A set of configurations x jobs measured together in interleaved rounds."""

    key: str
    title: str
    configs: tuple[Config, ...]
    jobs: tuple[Job, ...]
    read_file: str
    rw_file: str | None = None
    size: int = FILE_SIZE  # of every test file: fio's --size, and the null fs's files

    def config(self, key: str) -> Config:
        return next(c for c in self.configs if c.key == key)

    def file_for(self, job: Job) -> str:
        return self.rw_file if job.workload.writes and self.rw_file else self.read_file

    @property
    def files(self) -> tuple[str, ...]:
        return (self.read_file, self.rw_file) if self.rw_file else (self.read_file,)


MATRIX = Part("matrix", "fio matrix (direct=1)", MATRIX_CONFIGS, MATRIX_JOBS, TEXT_NAME, RW_NAME)
COMPARE = Part("compare", "pass-through comparison (direct=0, the file fits every cache)", COMPARE_CONFIGS,
               COMPARE_JOBS, FILE_NAME)
PARTS: dict[str, Part] = {MATRIX.key: MATRIX, COMPARE.key: COMPARE}


@dataclass(frozen=True)
class Settings:
    """How long and how often: --quick trades precision for a run under 3 minutes (both tools)."""

    runtime: float  # seconds per fio run
    reps: int
    quick: bool
    profile: bool
    sensitivity: bool
    retry_budget_s: float = 0.0  # time allowed for re-running runs that shared the machine
    wait_quiet_s: float = 0.0  # how long to wait at the start for other processes to calm down
    parts: tuple[str, ...] = ("matrix", "compare")


def fio_runtime(seconds: float) -> str:
    """fio's --runtime value: whole seconds, or milliseconds (fio accepts the ms suffix)."""
    return str(int(seconds)) if seconds == int(seconds) else f"{round(seconds * 1000)}ms"


def fmt_seconds(seconds: float) -> str:
    return f"{seconds:g} s"


# -- fio output -------------------------------------------------------------------


@dataclass(frozen=True)
class FioResult:
    """One fio run: IOPS and bandwidth (bytes/s) of reads and writes together, or why it failed."""

    iops: float = 0.0
    bw: float = 0.0
    error: str | None = None
    foreign_cpu: float | None = None  # CPUs' worth used by processes other than fio and the daemon
    steal: float | None = None  # CPUs' worth the hypervisor gave to other guests
    write_iops: float = 0.0  # the writes' share of iops


def _direction(numbers: dict[str, Any]) -> tuple[float, float]:
    """(iops, bytes/s) of one direction; older fio has only bw in KiB/s."""
    bw = float(numbers["bw_bytes"]) if "bw_bytes" in numbers else float(numbers.get("bw", 0)) * 1024
    return float(numbers.get("iops", 0.0)), bw


def fio_report(stdout: str) -> dict[str, Any] | None:
    """fio's JSON report as a dict; fio prefixes error lines to it when a job fails, so find the object."""
    start = stdout.find("{")
    try:
        report = json.loads(stdout[start:]) if start >= 0 else None
    except json.JSONDecodeError:
        return None
    return report if isinstance(report, dict) else None


def parse_fio_json(stdout: str, stderr: str = "", returncode: int = 0) -> FioResult:
    """IOPS and bandwidth of fio's first job, or the error fio reported."""
    report = fio_report(stdout)
    if not report or not report.get("jobs"):
        return FioResult(error=_first_error_line(stderr + stdout) or f"fio exited {returncode}, no JSON")
    job = report["jobs"][0]
    r_iops, r_bw = _direction(job.get("read", {}))
    w_iops, w_bw = _direction(job.get("write", {}))
    result = FioResult(r_iops + w_iops, r_bw + w_bw, write_iops=w_iops)
    if job.get("error"):
        errno_ = int(job["error"])
        detail = _first_error_line(stderr + stdout) or os.strerror(errno_)
        return replace(result, error=f"fio error {errno_}: {detail}")
    if returncode != 0:
        return replace(result, error=_first_error_line(stderr) or f"fio exited {returncode}")
    return result


def _first_error_line(text: str) -> str | None:
    for line in text.splitlines():
        if line.startswith("fio:") or "error" in line.lower():
            return line.strip()
    return None


@dataclass
class Point:
    """Every run of one job on one configuration, by round; failures are kept, not averaged."""

    by_round: dict[int, FioResult] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)

    def add(self, round_: int, result: FioResult) -> None:
        if result.error:
            self.failures.append(f"round {round_ + 1}: {result.error}")
        else:
            self.by_round[round_] = result

    @property
    def failed(self) -> bool:
        return bool(self.failures)

    @property
    def crashed(self) -> bool:
        return self.failed and "mount died" in self.failures[0]

    def iops(self) -> list[float]:
        return [r.iops for r in self.by_round.values()]

    def bw(self) -> list[float]:
        return [r.bw for r in self.by_round.values()]

    def busy(self) -> bool:
        """Some run of this point shared the machine with a noticeably busy neighbour."""
        return any((r.foreign_cpu or 0) > BUSY for r in self.by_round.values())


def spread(values: Sequence[float]) -> tuple[float, float, float] | None:
    """(median, min, max), or None without values."""
    if not values:
        return None
    return statistics.median(values), min(values), max(values)


@dataclass(frozen=True)
class Ratio:
    """subject/baseline IOPS: ratio of the medians, and the range of per-round ratios."""

    median: float
    lo: float
    hi: float

    @property
    def meets(self) -> bool:
        return self.median >= TARGET


def ratio(subject: Point, baseline: Point) -> Ratio | None:
    """None when either side has no successful run (e.g. the example crashed)."""
    if baseline.failed or not baseline.by_round or not subject.by_round:
        return None
    med = statistics.median(subject.iops()) / statistics.median(baseline.iops())
    pairs = [subject.by_round[r].iops / baseline.by_round[r].iops
             for r in subject.by_round if r in baseline.by_round and baseline.by_round[r].iops > 0]
    return Ratio(med, min(pairs, default=med), max(pairs, default=med))


# -- processes and mounts ------------------------------------------------------------


def log(message: str) -> None:
    """Progress goes to stderr so that stdout stays clean."""
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def stop_pid(pid: int, grace: float = 10.0) -> None:
    """Wait for a daemon to leave after its unmount, and forget it."""
    stop_daemon(pid, grace)
    _started_pids.discard(pid)


def wait_mounted(path: Path, alive: Callable[[], bool], timeout: float = 20.0) -> None:
    """Block until `path` is a mount point; fail fast if the daemon died."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if is_mounted(path):
            return
        if not alive():
            raise RuntimeError(f"the FUSE daemon for {path} exited before mounting")
        time.sleep(0.02)
    raise RuntimeError(f"{path} not mounted after {timeout:.0f} s")


@dataclass
class Workspace:
    """Paths of one run, all under the results directory."""

    root: Path
    venv_bin: Path

    @property
    def src(self) -> Path:
        return self.root / "run" / "src"

    @property
    def mnt(self) -> Path:
        return self.root / "run" / "mnt"

    @property
    def logs(self) -> Path:
        return self.root / "run" / "logs"

    @property
    def raw(self) -> Path:
        return self.root / "run" / "raw"

    @property
    def cache(self) -> Path:
        return self.root / "cache"

    @property
    def peer(self) -> Path:
        return self.cache / PEER_BINARY

    def example_script(self, variant: str) -> Path:
        return self.cache / f"passthroughfs-{variant}.py"

    def report_json(self, quick: bool) -> Path:
        """A quick run never overwrites the numbers of a full one."""
        return self.root / "run" / ("report-quick.json" if quick else "report.json")

    def prepare(self) -> None:
        for d in (self.src, self.mnt, self.logs, self.raw, self.cache):
            d.mkdir(parents=True, exist_ok=True)
        if is_mounted(self.mnt):  # left over from a killed run
            unmount(self.mnt)


def mount_argv(config: Config, ws: Workspace, files: Sequence[str], size: int = FILE_SIZE) -> list[str]:
    """The command that mounts a configuration on ws.mnt (empty for native)."""
    if config.kind == "example":
        return [sys.executable, str(ws.example_script(config.options)), str(ws.src), str(ws.mnt)]
    if config.kind == "peer":  # -f: a foreground child, as the example; cache=never is direct_io, as tmemfs
        return [str(ws.peer), "-f", *config.options.split(), "-o", f"source={ws.src},cache=never", str(ws.mnt)]
    if config.kind == "null":
        return [sys.executable, "-m", "tools.nullfs", str(ws.mnt), "--size", f"{size // MiB}M",
                *(arg for name in files for arg in ("--file", name))]
    if config.kind == "tmemfs":
        return [str(ws.venv_bin / "tmemfs"), str(ws.src), str(ws.mnt), "-o", config.options]
    return []


class Mount:
    """A configuration's file system at ws.mnt (or SRC itself for native), restartable after a crash."""

    def __init__(self, config: Config, ws: Workspace, files: Sequence[str] = (FILE_NAME,),
                 size: int = FILE_SIZE) -> None:
        self.config, self.ws, self.options, self.files, self.size = config, ws, config.options, tuple(files), size
        self.proc: subprocess.Popen[bytes] | None = None
        self.pid: int | None = None
        self.log = ws.logs / f"{config.key}.log"
        self.warmed: set[str] = set()  # files read through this mount since it (re)started

    @property
    def path(self) -> Path:
        return self.ws.src if self.config.kind == "native" else self.ws.mnt

    def start(self) -> None:
        self.warmed = set()
        if self.config.kind in ("example", "null", "peer"):
            self._start_foreground()
        elif self.config.kind == "tmemfs":
            self._start_tmemfs()

    def _start_foreground(self) -> None:
        """The example, the null fs and the peer stay in the foreground: a child in its own session."""
        with open(self.log, "ab") as logf:
            self.proc = subprocess.Popen(
                mount_argv(self.config, self.ws, self.files, self.size), cwd=REPO,
                stdin=subprocess.DEVNULL, stdout=logf, stderr=subprocess.STDOUT,
                start_new_session=True)  # Ctrl-C reaches us, and we unmount it cleanly
        self.pid = self.proc.pid
        _started_pids.add(self.pid)
        wait_mounted(self.ws.mnt, lambda: self.proc is not None and self.proc.poll() is None)

    def _start_tmemfs(self) -> None:
        cmd = mount_argv(self.config, self.ws, self.files)
        cmd[-1] = f"{cmd[-1]},log={self.log}"
        done = subprocess.run(cmd, capture_output=True, text=True, check=False, timeout=60)
        if done.returncode != 0:
            last = done.stderr.strip().splitlines()[-1] if done.stderr.strip() else "no message"
            raise RuntimeError(f"tmemfs exited {done.returncode}: {last}")
        self.pid = stat_int(read_stats(self.ws.mnt), "fs.pid")
        _started_pids.add(self.pid)

    def stop(self) -> None:
        """Unmount and make sure the daemon is gone."""
        if self.config.kind == "native":
            return
        with signals_deferred():
            try:
                unmount(self.ws.mnt)
            finally:
                self._reap()

    def _reap(self) -> None:
        """The daemon leaves by itself once unmounted; one that does not is killed."""
        if self.proc is not None:
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.pid is not None:
            stop_pid(self.pid)
        self.proc, self.pid = None, None

    def alive(self) -> bool:
        """The daemon runs and the test file answers (a crashed pyfuse3 leaves ENOTCONN behind)."""
        if self.config.kind == "native":
            return True
        if self.pid is None or not pid_alive(self.pid):
            return False
        try:
            os.stat(self.path / self.files[0])
        except OSError:
            return False
        return True

    def crash_evidence(self) -> str:
        """The exception line the daemon logged last, for the report."""
        try:
            lines = self.log.read_text(errors="replace").splitlines()
        except OSError:
            return "(no log)"
        hits = [ln.strip(" |+-") for ln in lines if re.match(r"[\w.]*(Error|Exception)\w*: ", ln.strip(" |+-"))]
        return hits[-1] if hits else (lines[-1].strip() if lines else "(empty log)")

    def __enter__(self) -> Mount:
        try:
            self.start()
        except BaseException:
            self.stop()  # a daemon that never mounted must not outlive us
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def read_stats(mnt: Path) -> dict[str, object]:
    data: dict[str, object] = json.loads((mnt / ".tmemfs" / "stats.json").read_text())
    return data


def stat_int(stats: dict[str, object], key: str) -> int:
    """A numeric counter from stats.json (typed as object there)."""
    return int(str(stats[key]))


def kill_leftovers(ws: Workspace) -> None:
    """Last resort in the outermost finally: nothing we started may survive us."""
    with signals_deferred():
        with suppress(Exception):
            if is_mounted(ws.mnt):
                unmount(ws.mnt)
        for pid in list(_started_pids):
            stop_pid(pid, grace=2.0)


# -- inputs: the example, the data files -----------------------------------------------


@dataclass(frozen=True)
class ExampleSource:
    """Where the baseline came from and what each patched copy changed (variant -> unified diff)."""

    sdist: str
    sha256: str
    downloaded: bool
    pip_command: str
    diffs: dict[str, str]


def fetch_example(ws: Workspace, version: str) -> ExampleSource:
    """The sdist's examples/passthroughfs.py, unmodified, plus the two patched copies."""
    sdist_dir = ws.cache / "sdist"
    sdist = sdist_dir / f"pyfuse3-{version}.tar.gz"
    cmd = [str(ws.venv_bin / "pip"), "download", "--no-deps", "--no-binary", ":all:",
           f"pyfuse3=={version}", "-d", str(sdist_dir)]
    downloaded = not sdist.exists()
    if downloaded:
        log(f"downloading the pyfuse3 {version} sdist: {shlex.join(cmd)}")
        subprocess.run(cmd, check=True, capture_output=True, timeout=300)
    with tarfile.open(sdist) as tar:
        member = tar.extractfile(f"pyfuse3-{version}/{EXAMPLE_MEMBER}")
        if member is None:
            raise RuntimeError(f"{sdist} has no {EXAMPLE_MEMBER}")
        stock = member.read().decode()
    ws.example_script("stock").write_text(stock)
    diffs = {}
    for variant, patch in (("timeouts1", patch_timeouts), ("nodirect", patch_nodirect)):
        patched = patch(stock)
        ws.example_script(variant).write_text(patched)
        diffs[variant] = "".join(difflib.unified_diff(stock.splitlines(True), patched.splitlines(True),
                                                      "passthroughfs.py", f"passthroughfs-{variant}.py", n=1))
    return ExampleSource(str(sdist), hashlib.sha256(sdist.read_bytes()).hexdigest(), downloaded,
                         shlex.join(cmd), diffs)


def _patch(source: str, pairs: Sequence[tuple[str, str]]) -> str:
    for old, new in pairs:
        if source.count(old) != 1:
            raise RuntimeError(f"cannot patch the example: {old!r} occurs {source.count(old)} times")
        source = source.replace(old, new)
    return source


def patch_timeouts(source: str) -> str:
    """The example has no timeout option: set the two assignments in _getattr to tmemfs's 1 s."""
    return _patch(source, TIMEOUT_PATCH)


def patch_nodirect(source: str) -> str:
    """Where the example cannot run: its open/create pass the caller's O_DIRECT to the backing open,
    and its unaligned os.read then fails with EINVAL and ends pyfuse3.main. Drop the flag there."""
    return _patch(source, NODIRECT_PATCH)


def make_file(path: Path, size: int) -> None:
    """Random (incompressible) contents; reused across runs when the size already fits."""
    if path.exists() and path.stat().st_size == size:
        return
    with open(path, "wb") as f:
        for _ in range(size // MiB):
            f.write(os.urandom(MiB))
        f.flush()
        os.fsync(f.fileno())


def make_text_file(path: Path, size: int) -> None:
    """Text-like contents (compresses about 2x with lz4), from the same corpus as tools/bench_backends."""
    if path.exists() and path.stat().st_size == size:
        return
    with open(path, "wb") as f:
        f.write(fill(text_corpus(min(size, 48 * MiB)), size))
        f.flush()
        os.fsync(f.fileno())


def restore_rw(ws: Workspace, part: Part) -> None:
    """The write jobs' file starts every mount as a fresh copy of the read file (written in SRC, unmounted)."""
    if part.rw_file is None:
        return
    target = ws.src / part.rw_file
    shutil.copyfile(ws.src / part.read_file, target)
    with open(target, "rb+") as f:
        os.fsync(f.fileno())


def read_through(path: Path) -> None:
    """Warm-up: read every byte once, through whatever is mounted there."""
    with open(path, "rb", buffering=0) as f:
        while f.read(MiB):
            pass


# -- running fio -----------------------------------------------------------------------


def fio_command(job: Job, filename: Path, runtime: float, invalidate: int = 0, size: int = FILE_SIZE) -> list[str]:
    return ["fio", f"--name={job.name}", f"--filename={filename}", f"--size={size // MiB}M",
            *job.fio_args(), f"--runtime={fio_runtime(runtime)}", "--time_based", f"--invalidate={invalidate}",
            "--output-format=json"]


@dataclass(frozen=True)
class CpuSample:
    """Seconds of CPU: the whole machine busy, stolen by the hypervisor, ours (fio + the daemon)."""

    wall: float
    busy: float
    steal: float
    ours: float


_TICK = os.sysconf("SC_CLK_TCK")


def cpu_sample(daemon_pid: int | None) -> CpuSample:
    """The machine is shared: account for the CPU that others used while fio ran."""
    with open("/proc/stat") as f:
        fields = [int(v) for v in f.readline().split()[1:]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = fields[:8]
    children = resource.getrusage(resource.RUSAGE_CHILDREN)  # fio and its job, once reaped
    ours = children.ru_utime + children.ru_stime
    if daemon_pid is not None:
        with suppress(OSError, IndexError, ValueError):
            with open(f"/proc/{daemon_pid}/stat") as f:
                after_comm = f.read().rpartition(")")[2].split()
            ours += (int(after_comm[11]) + int(after_comm[12])) / _TICK
    busy = (user + nice + system + irq + softirq) / _TICK
    return CpuSample(time.monotonic(), busy, steal / _TICK, ours)


def with_cpu(result: FioResult, before: CpuSample, after: CpuSample) -> FioResult:
    wall = max(after.wall - before.wall, 1e-9)
    foreign = max(0.0, (after.busy - before.busy) - (after.ours - before.ours)) / wall
    return replace(result, foreign_cpu=foreign, steal=(after.steal - before.steal) / wall)


def run_fio(cmd: list[str], raw_file: Path | None, runtime: float, daemon_pid: int | None = None) -> FioResult:
    """Run one fio; a hang (a wedged mount) is killed after a generous timeout."""
    before = cpu_sample(daemon_pid)
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=runtime + 60, check=False)
    except subprocess.TimeoutExpired:
        return FioResult(error=f"fio did not finish within {runtime + 60:g} s")
    after = cpu_sample(daemon_pid)
    if raw_file is not None:
        raw_file.write_text(done.stdout + ("\n# stderr:\n" + done.stderr if done.stderr else ""))
    return with_cpu(parse_fio_json(done.stdout, done.stderr, done.returncode), before, after)


@dataclass
class Matrix:
    """All results of one part, the commands that produced them, and what crashed."""

    points: dict[tuple[str, str], Point] = field(default_factory=dict)
    commands: dict[str, list[str]] = field(default_factory=dict)  # command line -> configurations
    crashes: dict[tuple[str, str], str] = field(default_factory=dict)
    retried: int = 0  # busy runs measured again
    replaced: int = 0  # ... and replaced by a quieter run

    def point(self, config: str, job: str) -> Point:
        return self.points.setdefault((config, job), Point())

    def note_command(self, cmd: list[str], config: str) -> None:
        users = self.commands.setdefault(shlex.join(cmd), [])
        if config not in users:
            users.append(config)


def mmss(seconds: float) -> str:
    seconds = max(0, round(seconds))
    return f"{seconds // 60}:{seconds % 60:02d}"


class Progress:
    """n of N on stderr, with elapsed time and an estimate of what is left."""

    def __init__(self, total: int, per_run_s: float) -> None:
        self.total, self.done, self.t0, self.per_run_s = total, 0, time.monotonic(), per_run_s
        self.measured = 0  # steps that ran fio (a skipped point costs nothing)

    def left_s(self) -> float:
        elapsed = time.monotonic() - self.t0
        per = elapsed / self.measured if self.measured else self.per_run_s
        return per * (self.total - self.done)

    def step(self, message: str, ran: bool = True) -> None:
        self.done += 1
        self.measured += ran
        elapsed = time.monotonic() - self.t0
        log(f"[{self.done}/{self.total} {self.done / max(1, self.total):.0%}, {mmss(elapsed)} elapsed, "
            f"~{mmss(self.left_s())} left] {message}")


def measure_job(mount: Mount, job: Job, part: Part, settings: Settings, matrix: Matrix, round_: int,
                tag: str = "") -> FioResult:
    """Warm up (once per file and mount), run fio once, and restart the mount if the run killed it."""
    if not mount.alive():
        try:
            mount.stop()
            mount.start()
        except RuntimeError as exc:
            return FioResult(error=f"restarting the mount failed: {exc}")
    target = mount.path / part.file_for(job)
    if mount.config.warm and target.name not in mount.warmed:
        try:
            read_through(target)
        except OSError as exc:
            return FioResult(error=f"warm-up read failed: {exc}")
        mount.warmed.add(target.name)
    cmd = fio_command(job, target, settings.runtime, size=part.size)
    matrix.note_command(cmd, mount.config.key)
    raw = mount.ws.raw / f"{part.key}.{mount.config.key}.{job.name}.r{round_ + 1}{tag}.json"
    result = run_fio(cmd, raw, settings.runtime, mount.pid)
    if not mount.alive():
        evidence = mount.crash_evidence()
        matrix.crashes[(mount.config.key, job.name)] = evidence
        result = replace(result, error=f"mount died ({result.error or 'fio: no error'}); daemon: {evidence}")
    return result


def run_part(ws: Workspace, part: Part, settings: Settings, progress: Progress) -> Matrix:
    """Rounds of every configuration and job; a job that failed once is not repeated."""
    matrix = Matrix()
    for round_ in range(settings.reps):
        run_round(ws, part, settings, progress, matrix, round_)
    return matrix


def run_round(ws: Workspace, part: Part, settings: Settings, progress: Progress, matrix: Matrix,
              round_: int, ready: Callable[[Mount], None] | None = None) -> None:
    """One round: every configuration mounted afresh, every job run on it once. `ready` waits for what a
    mount needs before its first read (e.g. a cluster node's store); its RuntimeError fails the round."""
    for config in part.configs:
        if config.kind != "null":
            restore_rw(ws, part)
        try:
            with Mount(config, ws, part.files, part.size) as mount:
                if ready is not None:
                    ready(mount)
                for job in part.jobs:
                    measure_point(mount, job, part, settings, matrix, round_, progress)
        except RuntimeError as exc:  # the mount itself failed: every job of this round fails with it
            for job in part.jobs:
                point = matrix.point(config.key, job.name)
                if round_ not in point.by_round and not point.failed:
                    point.add(round_, FioResult(error=f"mount failed: {exc}"))
                    progress.step(f"{part.key} round {round_ + 1}/{settings.reps} {config.key} {job.label}: "
                                  f"mount failed: {exc}", ran=False)


def busy_runs(matrix: Matrix, part: Part, config: str) -> list[tuple[Job, int]]:
    return [(job, rnd) for job in part.jobs
            for rnd, r in matrix.point(config, job.name).by_round.items() if (r.foreign_cpu or 0) > BUSY]


def retry_busy(ws: Workspace, part: Part, settings: Settings, matrix: Matrix, deadline: float) -> None:
    """Others' bursts are transient: measure busy runs again while the budget lasts, keep the quieter."""
    for config in part.configs:
        todo = busy_runs(matrix, part, config.key)
        if not todo or time.monotonic() + settings.runtime + 3 > deadline:
            continue
        if config.kind != "null":
            restore_rw(ws, part)
        with Mount(config, ws, part.files, part.size) as mount:
            for job, rnd in todo:
                if time.monotonic() + settings.runtime + 2 > deadline:
                    return
                old = matrix.point(config.key, job.name).by_round[rnd]
                new = measure_job(mount, job, part, settings, matrix, rnd, tag=".retry")
                matrix.retried += 1
                quieter = not new.error and (new.foreign_cpu or 0) < (old.foreign_cpu or 0)
                if quieter:
                    matrix.point(config.key, job.name).by_round[rnd] = new
                    matrix.replaced += 1
                log(f"retry {part.key} {config.key} {job.label} round {rnd + 1}: others "
                    f"{old.foreign_cpu or 0:.0%} -> {new.foreign_cpu or 0:.0%}, "
                    f"{'kept the new run' if quieter else 'kept the old run'}")


def measure_point(mount: Mount, job: Job, part: Part, settings: Settings, matrix: Matrix, round_: int,
                  progress: Progress) -> None:
    point = matrix.point(mount.config.key, job.name)
    where = f"{part.key} round {round_ + 1}/{settings.reps} {mount.config.key} {job.label}"
    if point.failed:
        progress.step(f"{where}: skipped (failed before)", ran=False)
        return
    result = measure_job(mount, job, part, settings, matrix, round_)
    point.add(round_, result)
    outcome = result.error or (f"{result.iops / 1000:.1f}k IOPS, {result.bw / MiB:.0f} MiB/s, "
                               f"others used {result.foreign_cpu or 0:.0%} of a CPU")
    progress.step(f"{where}: {outcome}")


# -- extras: fio's invalidate, a profile, resident memory -----------------------------------


@dataclass
class Sensitivity:
    """The same job with fio's default --invalidate=1 (page cache dropped at every pass)."""

    job: Job
    results: dict[str, FioResult] = field(default_factory=dict)
    commands: list[str] = field(default_factory=list)


def run_sensitivity(ws: Workspace, configs: Sequence[Config], settings: Settings) -> Sensitivity:
    sens = Sensitivity(COMPARE_JOBS[0])
    for config in configs:
        with Mount(config, ws) as mount:
            target = mount.path / FILE_NAME
            read_through(target)
            cmd = fio_command(sens.job, target, settings.runtime, invalidate=1)
            sens.commands.append(shlex.join(cmd))
            sens.results[config.key] = run_fio(cmd, ws.raw / f"invalidate1.{config.key}.json", settings.runtime,
                                               mount.pid)
            log(f"invalidate=1 {config.key}: {sens.results[config.key]}")
    return sens


@dataclass
class Profile:
    """Where tmemfs spent its samples during one run of a job it lost."""

    job: Job
    iops: float
    samples: int
    categories: list[tuple[str, float]]
    top: list[tuple[str, float]]
    command: str


def profile_categories(stack: list[str]) -> str:
    """Coarse bucket for a sampled stack, judged by its innermost frame."""
    leaf = stack[-1]
    if "get_events" in leaf or "_epoll_wait" in leaf:
        return "idle in epoll (waiting for the kernel's next request)"
    if "/fusefs/" in leaf or "fusefs/" in leaf.split("(")[-1] or "backends/" in leaf:
        return "tmemfs code (page cache, data path, handlers)"
    if "pyfuse3" in leaf:  # py-spy cannot see into Cython: its time lands on the calling Python frame
        return "pyfuse3's Cython loop (decode request, send reply incl. the write to /dev/fuse)"
    if "trio" in leaf:
        return "trio scheduler"
    return "other (stdlib, interpreter)"


def summarize_pyspy(raw: str) -> tuple[int, list[tuple[str, float]], list[tuple[str, float]]]:
    """py-spy --format raw (collapsed stacks) -> samples, category shares, top self-time functions."""
    cats: Counter[str] = Counter()
    funcs: Counter[str] = Counter()
    total = 0
    for line in raw.splitlines():
        stack_text, _, count = line.rpartition(" ")
        if not stack_text or not count.isdigit():
            continue
        n, stack = int(count), stack_text.split(";")
        total += n
        cats[profile_categories(stack)] += n
        funcs[re.sub(r":\d+\)$", ")", stack[-1])] += n
    if not total:
        return 0, [], []
    share = [(k, v / total) for k, v in cats.most_common()]
    top = [(k, v / total) for k, v in funcs.most_common(8)]
    return total, share, top


def run_profile(ws: Workspace, config: Config, job: Job, settings: Settings) -> Profile | str:
    """py-spy (if installed in the venv) attached to tmemfs while fio runs the job."""
    pyspy = ws.venv_bin / "py-spy"
    if not pyspy.exists():
        return f"py-spy is not installed ({ws.venv_bin / 'pip'} install py-spy to get a profile)"
    out = ws.raw / f"pyspy.{job.name}.txt"
    with Mount(config, ws) as mount:
        read_through(mount.path / FILE_NAME)
        assert mount.pid is not None
        spy_cmd = [str(pyspy), "record", "-p", str(mount.pid), "-d", str(int(settings.runtime) + 2), "-r", "250",
                   "-f", "raw", "--nonblocking", "-o", str(out)]
        spy = subprocess.Popen(spy_cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            time.sleep(0.5)
            result = run_fio(fio_command(job, mount.path / FILE_NAME, settings.runtime), None, settings.runtime)
        finally:
            try:
                spy.wait(timeout=settings.runtime + 30)
            except subprocess.TimeoutExpired:
                spy.kill()
                spy.wait()
    if not out.exists():
        return f"py-spy produced no output ({shlex.join(spy_cmd)})"
    samples, cats, top = summarize_pyspy(out.read_text())
    return Profile(job, result.iops, samples, cats, top, shlex.join(spy_cmd))


@dataclass(frozen=True)
class RssResult:
    """VmRSS of tmemfs with its page cache full, against the allowed 1.15 x cache_size + 64 MiB."""

    options: str
    rss_idle: int
    rss_full: int
    hwm: int
    cache_bytes: int
    cache_capacity: int

    @property
    def limit(self) -> int:
        return int(1.15 * RSS_CACHE) + 64 * MiB

    @property
    def ok(self) -> bool:
        return self.rss_full <= self.limit


def status_kib(pid: int, key: str) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    raise KeyError(key)


def measure_rss(ws: Workspace) -> RssResult:
    """Fill a 64M page cache by reading a 256 MiB file through tmemfs, then read /proc/PID/status."""
    make_file(ws.src / RSS_FILE_NAME, RSS_FILE_SIZE)
    options = f"cleancache=none,cache_size={RSS_CACHE // MiB}M"
    config = Config("rss", "tmemfs for the RSS check", "tmemfs", options)
    with Mount(config, ws) as mount:
        pid = stat_int(read_stats(mount.path), "fs.pid")
        idle = status_kib(pid, "VmRSS")
        read_through(mount.path / RSS_FILE_NAME)
        stats = read_stats(mount.path)
        full, hwm = status_kib(pid, "VmRSS"), status_kib(pid, "VmHWM")
    return RssResult(options, idle, full, hwm, stat_int(stats, "pagecache.bytes"),
                     stat_int(stats, "pagecache.capacity_pages") * 4096)


# -- facts about the machine -------------------------------------------------------------


def command_output(cmd: list[str]) -> str:
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=30, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"({exc})"
    return (done.stdout or done.stderr).strip().splitlines()[0] if (done.stdout or done.stderr).strip() else "?"


def machine_facts(ws: Workspace) -> dict[str, str]:
    meminfo = Path("/proc/meminfo").read_text()
    mem_kib = int(re.search(r"MemTotal:\s+(\d+)", meminfo).group(1))  # type: ignore[union-attr]
    cpu = re.search(r"model name\s*:\s*(.*)", Path("/proc/cpuinfo").read_text())
    return {
        "nproc": str(os.cpu_count()),
        "CPU": cpu.group(1) if cpu else platform.processor() or "?",
        "memory": f"{mem_kib / MiB:.1f} GiB",
        "kernel": platform.release(),
        "OS": _os_name(),
        "SRC file system": " ".join(command_output(["findmnt", "-n", "-o", "FSTYPE,SOURCE,OPTIONS", "-T",
                                                     str(ws.src)]).split()),
    }


def _os_name() -> str:
    with suppress(OSError):
        m = re.search(r'PRETTY_NAME="(.*)"', Path("/etc/os-release").read_text())
        if m:
            return m.group(1)
    return platform.system()


def versions() -> dict[str, str]:
    def pkg(name: str) -> str:
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            return "not installed"

    return {
        "python": platform.python_version(),
        "pyfuse3": pkg("pyfuse3"),
        "trio": pkg("trio"),
        "tmemfs": pkg("tmemfs"),
        "fio": command_output(["fio", "--version"]),
        "fusermount3 (libfuse)": command_output(["fusermount3", "--version"]),
        "tmemfs source": git_state(),
    }


def source_digest() -> str:
    """Hash of tmemfs's Python sources: others edit them, so check they did not change mid-run."""
    root = Path(__file__).resolve().parent.parent
    h = hashlib.sha256()
    for path in sorted([*root.glob("fusefs/**/*.py"), *root.glob("backends/**/*.py")]):
        h.update(str(path.relative_to(root)).encode() + b"\0" + path.read_bytes())
    return h.hexdigest()[:12]


def git_state() -> str:
    """Which tmemfs was measured: the commit, and whether the working tree differed from it."""
    head = command_output(["git", "rev-parse", "--short", "HEAD"])
    try:
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True,
                               text=True, timeout=30, check=False).stdout.splitlines()
    except (OSError, subprocess.TimeoutExpired):
        return head
    return f"git {head}" + (f" + uncommitted changes in {len(dirty)} files" if dirty else " (clean)")


# -- the report ---------------------------------------------------------------------------


@dataclass
class Report:
    """Everything BENCHMARKS.md says; render_report is a pure function of it."""

    settings: Settings
    machine: dict[str, str]
    versions: dict[str, str]
    started: str
    example: ExampleSource | None = None
    matrix: Matrix = field(default_factory=Matrix)  # the direct=1 matrix
    compare: Matrix = field(default_factory=Matrix)  # the pass-through comparison
    elapsed_s: float = 0.0
    rss: RssResult | None = None
    sensitivity: Sensitivity | None = None
    profiles: list[Profile | str] = field(default_factory=list)
    mount_commands: dict[str, str] = field(default_factory=dict)  # "part/config" -> command line
    digests: tuple[str, str] = ("", "")  # source_digest() at the start and at the end
    background: tuple[float, float] = (0.0, 0.0)  # others' CPU at the start, seconds waited for quiet
    charts: list[tuple[str, str]] = field(default_factory=list)  # (alt text, path relative to the report)

    def results(self, part: Part) -> Matrix:
        return self.matrix if part.key == MATRIX.key else self.compare

    def ran(self, part: Part) -> bool:
        return part.key in self.settings.parts and bool(self.results(part).points)


def fmt_iops(value: float) -> str:
    return f"{value / 1000:.1f}k" if value >= 1000 else f"{value:.0f}"


def fmt_point(values: Sequence[float], scale: float = 1.0, iops: bool = True) -> str:
    s = spread([v / scale for v in values])
    if s is None:
        return "-"
    f = fmt_iops if iops else (lambda v: f"{v:.0f}")
    return f"{f(s[0])} ({f(s[1])}..{f(s[2])})" if len(values) > 1 else f(s[0])


def median_iops(point: Point | None) -> float | None:
    return statistics.median(point.iops()) if point and point.iops() else None


def cell(point: Point | None, iops: bool = True) -> str:
    if point is None:
        return "-"
    if point.failed:
        return "**crashed**" if point.crashed else "**failed**"
    text = fmt_point(point.iops(), iops=True) if iops else fmt_point(point.bw(), scale=MiB, iops=False)
    return text + (" †" if point.busy() else "")


def results_table(report: Report, part: Part, iops: bool) -> list[str]:
    head = "| job | " + " | ".join(c.key for c in part.configs) + " |"
    lines = [head, "|" + "---|" * (len(part.configs) + 1)]
    points = report.results(part).points
    for job in part.jobs:
        cells = [cell(points.get((c.key, job.name)), iops) for c in part.configs]
        lines.append(f"| {job.label} | " + " | ".join(cells) + " |")
    return lines


# The comparisons the 0.9x target is judged on: tmemfs as mounted by default against the
# example as shipped, and, against the example with tmemfs's 1 s timeouts -- whose direct=0
# reads the kernel then serves from its page cache -- tmemfs with the same caching
# (kernel_cache). tmemfs's default direct_io sends every read to Python, which no FUSE
# daemon answers as fast as the kernel's page cache: shown, informative.
JUDGED: tuple[tuple[str, str], ...] = ((SUBJECT, BASELINE), (SUBJECT_KC, BASELINE_1S))
INFORMATIVE = (SUBJECT, BASELINE_1S)


def ratio_rows(points: dict[tuple[str, str], Point]) -> list[tuple[Job, str, str, Ratio | None]]:
    """(job, subject, baseline, ratio) of every judged comparison, in table order."""
    rows = []
    for job in COMPARE_JOBS:
        for subject, base in JUDGED:
            sp, bp = points.get((subject, job.name)), points.get((base, job.name))
            rows.append((job, subject, base, ratio(sp, bp) if sp and bp else None))
    return rows


def informative_ratios(points: dict[tuple[str, str], Point]) -> list[tuple[Job, Ratio | None]]:
    """(job, ratio) of the INFORMATIVE comparison for every comparison job, in table order."""
    subject, base = INFORMATIVE
    return [(job, ratio(sp, bp) if (sp := points.get((subject, job.name))) and (bp := points.get((base, job.name)))
             else None) for job in COMPARE_JOBS]


def ratio_table(report: Report) -> list[str]:
    """The judged comparisons, and (informative) default tmemfs against the kernel-cached example."""
    points = report.compare.points
    subject, base = INFORMATIVE
    lines = [f"| job | {SUBJECT} / {BASELINE} | {SUBJECT_KC} / {BASELINE_1S} (same caching) | "
             f"{subject} / {base} (informative: direct_io against the kernel's page cache) |", "|---|---|---|---|"]
    rows = ratio_rows(points)
    for i, (job, plain) in enumerate(informative_ratios(points)):
        judged = rows[i * len(JUDGED) : (i + 1) * len(JUDGED)]
        shown = f"{plain.median:.2f}x ({plain.lo:.2f}..{plain.hi:.2f})" if plain else "n/a"
        lines.append(f"| {job.label} | " + " | ".join(fmt_ratio(r) for *_, r in judged) + f" | {shown} |")
    return lines


def fmt_ratio(r: Ratio | None) -> str:
    if r is None:
        return "n/a (example crashed)"
    verdict = "ok" if r.meets else "**MISS**"
    if r.lo < TARGET <= r.hi:
        verdict += " (rounds straddle the target)"
    return f"{r.median:.2f}x ({r.lo:.2f}..{r.hi:.2f}) {verdict}"


MATRIX_RATIOS: tuple[tuple[str, str], ...] = (
    (MATRIX_NONE, NODIRECT), (MATRIX_NONE, NULL), ("tmemfs-tmem", MATRIX_NONE), ("tmemfs-zcache", MATRIX_NONE),
    ("tmemfs-dedup", MATRIX_NONE), ("tmemfs-tmem", NULL),
)


def plain_ratio(points: dict[tuple[str, str], Point], subject: str, base: str, job: Job) -> str:
    """'1.23x (1.10..1.30)', or why there is none."""
    sp, bp = points.get((subject, job.name)), points.get((base, job.name))
    for key, p in ((base, bp), (subject, sp)):
        if p is None or (not p.failed and not p.by_round):
            return "-"
        if p.failed:
            return f"n/a ({key} {'crashed' if p.crashed else 'failed'})"
    assert sp is not None and bp is not None
    r = ratio(sp, bp)
    if r is None:
        return "-"
    return f"{r.median:.2f}x ({r.lo:.2f}..{r.hi:.2f})" if r.lo != r.hi else f"{r.median:.2f}x"


def matrix_ratio_table(report: Report) -> list[str]:
    pts = report.matrix.points
    lines = ["| job | " + " | ".join(f"{s} / {b}" for s, b in MATRIX_RATIOS) + " |",
             "|" + "---|" * (len(MATRIX_RATIOS) + 1)]
    for job in MATRIX_JOBS:
        lines.append(f"| {job.label} | " + " | ".join(plain_ratio(pts, s, b, job) for s, b in MATRIX_RATIOS) + " |")
    return lines


def misses(points: dict[tuple[str, str], Point]) -> list[tuple[Job, str, str, Ratio]]:
    return [(j, s, b, r) for j, s, b, r in ratio_rows(points) if r is not None and not r.meets]


def failed_combinations(part: Part, matrix: Matrix) -> list[tuple[Config, list[Job], str]]:
    """(configuration, jobs, first message) for every configuration with a failed point."""
    out = []
    for config in part.configs:
        jobs = [j for j in part.jobs if (p := matrix.points.get((config.key, j.name))) and p.failed]
        if jobs:
            first = matrix.points[(config.key, jobs[0].name)]
            out.append((config, jobs, "crashed (the mount died)" if first.crashed else "failed"))
    return out


def job_list(part: Part, jobs: Sequence[Job]) -> str:
    return "every job" if len(jobs) == len(part.jobs) else ", ".join(j.label for j in jobs)


def matrix_summary(report: Report) -> list[str]:
    if not report.ran(MATRIX):
        return ["* The fio matrix was not run (--parts)."]
    pts = report.matrix.points
    total = len(MATRIX.configs) * len(MATRIX.jobs)
    measured = sum(1 for p in pts.values() if p.by_round and not p.failed)
    lines = [f"* fio matrix, direct=1: {len(WORKLOADS)} workloads x (QD1 psync, libaio QD16) = {len(MATRIX.jobs)} "
             f"jobs on {len(MATRIX.configs)} configurations: {measured} of {total} combinations measured."]
    for config, jobs, what in failed_combinations(MATRIX, report.matrix):
        evidence = report.matrix.crashes.get((config.key, jobs[0].name), "")
        lines.append(f"* **Cannot run: {config.key}** ({config.label}) {what} on {job_list(MATRIX, jobs)}"
                     + (f": `{evidence}`" if evidence else "") + "; shown as such in the tables.")
    for job in (j for j in MATRIX_JOBS if j.workload.key == "4k-randread"):
        vals = [(k, median_iops(pts.get((k, job.name)))) for k in (NULL, MATRIX_NONE, "tmemfs-tmem", NODIRECT)]
        known = [f"{k} {fmt_iops(v)}" for k, v in vals if v is not None]
        if known:
            lines.append(f"* {job.label}, IOPS (median): " + ", ".join(known) + ".")
    return lines


def compare_summary(report: Report) -> list[str]:
    if not report.ran(COMPARE):
        return ["* The pass-through comparison was not run (--parts)."]
    judged = [r for _, _, _, r in ratio_rows(report.compare.points) if r is not None]
    missed = misses(report.compare.points)
    lines = [f"* Pass-through comparison (direct=0): target tmemfs IOPS >= {TARGET}x the pyfuse3 example's in "
             f"every job the example survives: {SUBJECT} against {BASELINE} (as shipped), and with the same "
             f"caching, {SUBJECT_KC} against {BASELINE_1S} (the example with tmemfs's {TMEMFS_TIMEOUT_S} s "
             "timeouts, whose direct=0 reads the kernel serves from its page cache)."]
    if not judged:
        lines.append("* No job could be compared (the example failed everywhere).")
    elif missed:
        lines.append(f"* **Target MISSED in {len(missed)} of {len(judged)} comparisons:** "
                     + "; ".join(f"{j.label}, {s} vs {b} = {r.median:.2f}x" for j, s, b, r in missed) + ".")
    else:
        lines.append(f"* Target met in all {len(judged)} comparisons.")
    subject, base = INFORMATIVE
    plain = [(j, r) for j, r in informative_ratios(report.compare.points) if r is not None]
    if plain:
        lines.append(f"* Informative, {subject} (direct_io: every read(2) reaches tmemfs) against {base} (served by "
                     "the kernel's page cache): " + "; ".join(f"{j.label} {r.median:.2f}x" for j, r in plain)
                     + ". No FUSE daemon answers a read as fast as the kernel's page cache; direct_io, the default, "
                     "is what lets tmemfs see every read.")
    crashed = [j.label for j in COMPARE_JOBS if (p := report.compare.points.get((BASELINE, j.name))) and p.crashed]
    in_matrix = [j for j in MATRIX_JOBS if (p := report.matrix.points.get((BASELINE, j.name))) and p.crashed]
    if len(in_matrix) == len(MATRIX_JOBS):
        crashed.append("every job of the fio matrix (direct=1)")
    else:
        crashed += [j.label for j in in_matrix]
    if crashed:
        lines.append(f"* The pyfuse3 example as shipped crashes (mount dies) on: {', '.join(crashed)}.")
    others = [c.key for c, _, _ in failed_combinations(COMPARE, report.compare) if c.kind != "example"]
    if others:
        lines.append(f"* **Failed or crashed: {', '.join(others)}** (see \"Crashes and failures\").")
    return lines


def summary_lines(report: Report) -> list[str]:
    lines = [*matrix_summary(report), *compare_summary(report)]
    runs = all_runs(report.matrix) + all_runs(report.compare)
    busy = [r for r in runs if (r.foreign_cpu or 0) > BUSY]
    if busy:
        lines.append(f"* The machine was shared: in {len(busy)} of {len(runs)} runs other processes used more than "
                     f"{BUSY:.0%} of a CPU (up to {max(r.foreign_cpu or 0 for r in busy):.0%}); such points are "
                     "marked † and their ranges are wide.")
    if report.digests[0] != report.digests[1]:
        lines.append("* **tmemfs's sources changed while the benchmark ran** (digest "
                     f"{report.digests[0]} -> {report.digests[1]}): later rounds may have measured other code.")
    if report.rss is not None:
        r = report.rss
        lines.append(f"* RSS with a full {RSS_CACHE // MiB} MiB page cache: {r.rss_full / MiB:.1f} MiB, "
                     f"limit {r.limit / MiB:.1f} MiB: {'ok' if r.ok else '**OVER THE LIMIT**'}.")
    if report.settings.quick:
        lines.append("* **Quick mode**: one short run per point; the numbers show that everything runs, "
                     "not how fast.")
    return lines


def runs_line(s: Settings) -> str:
    return (f"* {s.reps} run(s) of {fmt_seconds(s.runtime)} per point ({'--quick' if s.quick else 'normal mode'}), "
            "taken in interleaved rounds: round 1 of every configuration, then round 2, and so on; "
            "each configuration is mounted afresh for each round. Cells show the median and (min..max).")


def matrix_method_lines(report: Report) -> list[str]:
    s = report.settings
    return [
        f"* Read jobs use `{TEXT_NAME}`, {FILE_SIZE // MiB} MiB of text-like data (the plain-text corpus of "
        f"tools/bench_backends.py, about 2x compressible); write jobs use `{RW_NAME}`, a fresh copy of it made "
        "in SRC before every mount (never while mounted), so every round and configuration writes over the same "
        "data. fio's own write buffers are random (incompressible).",
        runs_line(s),
        "* After each mount, each file is read once through it before its first job (warm-up: fills tmemfs's "
        "cleancache with what its page cache evicts); on a mount the jobs run in the order of the table, reads "
        "first, then the writes.",
        f"* tmemfs: `-o {matrix_options('<backend>')}`: the page cache holds a quarter of a file, so most reads "
        f"are page-cache misses that go to the backend, or (cleancache=none, or a backend miss) to the disk.",
        "* IOPS and bandwidth count reads and writes together (randrw: both directions).",
        "* Ratios (next table): median IOPS over median IOPS, with the min..max of the per-round ratios.",
        "* Where each configuration's reads of SRC come from (Backing reads):", "",
        "| configuration | backing reads |", "|---|---|",
        *[f"| {c.key} | {c.backing} |" for c in MATRIX.configs], "",
        f"* The null file system is mounted like tmemfs: `pyfuse3.main(max_tasks=1)` (its handlers never wait), "
        f"entry_timeout and attr_timeout {TMEMFS_TIMEOUT_S} s, files opened with `direct_io` (every read(2) "
        "reaches the daemon), the next request polled for before sleeping (tmemfs's poll_us=, default "
        f"{MountConfig.poll_us} us), fuse options default_permissions, fsname=nullfs, subtype=nullfs. Reads answer "
        "zeros from a preallocated buffer, writes are accepted and discarded: what is left is the FUSE round trip "
        "and pyfuse3's own work, the ceiling of one pyfuse3 process.",
    ]


def compare_method_lines(report: Report) -> list[str]:
    s = report.settings
    return [
        f"* Test file: `{FILE_NAME}`, {FILE_SIZE // MiB} MiB of random bytes in SRC (ext4); tmemfs "
        f"cache_size={CACHE_SIZE}, so the working set fits every cache involved (host page cache, tmemfs page "
        "cache).",
        runs_line(s),
        "* After each mount the file is read once through it (warm-up) before the first job.",
        "* fio runs with `--invalidate=0`. fio's default (1) calls posix_fadvise(DONTNEED) on the file "
        "at the start of every pass over it, which would discard the warm-up and make the native "
        "direct=0 jobs read the disk; see \"fio's --invalidate\" below for what the default changes.",
        "* Ratios: median IOPS over median IOPS; the range is the min..max of the per-round ratios. "
        f"`ok` means >= {TARGET}x. The direct=1 versions of these jobs are in the fio matrix.",
    ]


def method_lines(report: Report) -> list[str]:
    s = report.settings
    return [
        f"* Before the first run other processes used {report.background[0]:.0%} of a CPU "
        f"(after waiting {report.background[1]:.0f} s, at most {s.wait_quiet_s:.0f} s, for them to drop below "
        f"{BUSY:.0%}).",
        *noise_lines(report.matrix, "matrix"), *noise_lines(report.compare, "pass-through comparison"),
        "* A job whose run failed once (crash or fio error) is not repeated on that configuration.",
        f"* The example and the null file system are started as `{Path(sys.executable).name} SCRIPT ...` "
        "(foreground subprocess in its own session), considered up when MNT appears in /proc/self/mountinfo, "
        "stopped with `fusermount3 -u`, and restarted when a job killed them. tmemfs daemonizes once its mount "
        "is live. Every mount is undone in a `finally`, also on Ctrl-C.",
    ]


def all_runs(matrix: Matrix) -> list[FioResult]:
    return [r for p in matrix.points.values() for r in p.by_round.values() if r.foreign_cpu is not None]


def noise_lines(matrix: Matrix, what: str = "") -> list[str]:
    """How much of the machine others used while fio ran (from /proc/stat minus fio's and the daemon's CPU)."""
    runs = all_runs(matrix)
    if not runs:
        return []
    foreign = [r.foreign_cpu or 0.0 for r in runs]
    steal = [r.steal or 0.0 for r in runs]
    busy = sum(f > BUSY for f in foreign)
    where = f" ({what})" if what else ""
    return [f"* CPU used by other processes during each run{where} (machine busy time from /proc/stat minus the "
            f"CPU time of fio and of the daemon under test, in CPUs): median {statistics.median(foreign):.0%}, "
            f"max {max(foreign):.0%}; hypervisor steal: median {statistics.median(steal):.0%}, "
            f"max {max(steal):.0%}. † marks a point with a run where others used more than {BUSY:.0%} of a "
            f"CPU ({busy} of {len(runs)} runs, after {matrix.retried} busy runs were measured again at the end "
            f"and {matrix.replaced} of them replaced by the quieter re-run)."]


def config_table(report: Report, part: Part) -> list[str]:
    lines = ["| key | what | how it is mounted |", "|---|---|---|"]
    for c in part.configs:
        how = report.mount_commands.get(f"{part.key}/{c.key}", "")
        lines.append(f"| {c.key} | {c.label} | `{how}` |" if how else f"| {c.key} | {c.label} | - |")
    return lines


def crash_lines(report: Report) -> list[str]:
    crashes = [(part, key, job, ev) for part in PARTS.values()
               for (key, job), ev in sorted(report.results(part).crashes.items())]
    failed = [line for part in PARTS.values() for line in failure_lines(part, report.results(part))]
    if not crashes:
        return ["No mount died during a run.", "", *failed] if failed else ["Nothing crashed or failed."]
    lines = ["| part | configuration | job | what the daemon logged last |", "|---|---|---|---|"]
    for part, key, job, evidence in crashes:
        label = ALL_JOBS[job].label if job in ALL_JOBS else job
        lines.append(f"| {part.key} | {key} | {label} | `{evidence.replace('|', '/')}` |")
    return [*lines, "", "Every failed point, as fio and the bench saw it:", "", *failed]


def failure_lines(part: Part, matrix: Matrix) -> list[str]:
    """One line per configuration and distinct message (a failed mount fails all jobs alike)."""
    by_msg: dict[tuple[str, str], list[Job]] = {}
    for (cfg, job), p in matrix.points.items():
        if p.failed and job in ALL_JOBS:
            msg = re.sub(r"^round \d+: ", "", p.failures[0])
            by_msg.setdefault((cfg, msg), []).append(ALL_JOBS[job])
    return [f"* {part.key}, {cfg}, {job_list(part, jobs)}: {msg}" for (cfg, msg), jobs in by_msg.items()]


def sensitivity_lines(report: Report) -> list[str]:
    sens = report.sensitivity
    if sens is None:
        return ["Not measured in this run (skipped in --quick mode)."]
    lines = [f"Same job ({sens.job.label}), one run each, fio's default `--invalidate=1`:", "",
             "| configuration | IOPS with --invalidate=1 | others' CPU during it | main-table median "
             "(--invalidate=0) |", "|---|---|---|---|"]
    for key, res in sens.results.items():
        main_txt = fmt_iops(m) if (m := median_iops(report.compare.points.get((key, sens.job.name)))) else "-"
        lines.append(f"| {key} | {res.error or fmt_iops(res.iops)} | {res.foreign_cpu or 0:.0%} | {main_txt} |")
    lines += ["", "With `--invalidate=1` every pass over the file starts with the FUSE inode's page cache "
              "dropped, so the example's timeouts stop mattering much and all FUSE configurations measure "
              "round trips."]
    lines += ["", "Commands:", "", "```", *sens.commands, "```"]
    return lines


def profile_lines(report: Report) -> list[str]:
    if not report.profiles:
        return [f"Not run: {SUBJECT} met the target everywhere, or profiling was turned off (--no-profile, --quick)."]
    lines: list[str] = []
    for prof in report.profiles:
        if isinstance(prof, str):
            lines += [prof, ""]
            continue
        lines += [f"**{prof.job.label}** ({fmt_iops(prof.iops)} IOPS while sampled, {prof.samples} samples):", "",
                  "| where | share of samples |", "|---|---|"]
        lines += [f"| {name} | {share:.0%} |" for name, share in prof.categories]
        lines += ["", "Top functions by own time:", ""]
        lines += [f"* {share:.1%} `{name}`" for name, share in prof.top]
        lines += ["", f"(`{prof.command}`)", ""]
    return lines


def rss_lines(report: Report) -> list[str]:
    r = report.rss
    if r is None:
        return ["Not measured."]
    return [
        f"tmemfs `-o {r.options}`; a {RSS_FILE_SIZE // MiB} MiB file read once through it "
        f"(page cache then holds {r.cache_bytes / MiB:.0f} of {r.cache_capacity / MiB:.0f} MiB).",
        "",
        "| VmRSS after mount | VmRSS, cache full | VmHWM | limit 1.15 x cache_size + 64 MiB | verdict |",
        "|---|---|---|---|---|",
        f"| {r.rss_idle / MiB:.1f} MiB | {r.rss_full / MiB:.1f} MiB | {r.hwm / MiB:.1f} MiB | "
        f"{r.limit / MiB:.1f} MiB | {'ok' if r.ok else '**over**'} |",
    ]


def example_lines(report: Report) -> list[str]:
    ex = report.example
    if ex is None:
        return ["The example was not fetched."]
    how = "downloaded by this run" if ex.downloaded else "taken from the cache of an earlier download"
    lines = [
        f"Baseline: `{EXAMPLE_MEMBER}` from `{Path(ex.sdist).name}` (sha256 `{ex.sha256}`), {how} with:", "",
        f"    {ex.pip_command}", "",
        f"`{BASELINE}` runs it unmodified. Two copies are patched at run time, each where the stock example "
        "cannot do what is measured; nothing else differs:", "",
        f"* `{BASELINE_1S}` (pass-through comparison): it has no option for its timeouts (argparse: source, "
        "mountpoint, --debug, --debug-fuse, --enable-writeback-cache), so the two assignments in `_getattr` that "
        f"set entry_timeout and attr_timeout to 0 set them to {TMEMFS_TIMEOUT_S} (tmemfs's defaults).",
        f"* `{NODIRECT}` (matrix): it cannot run with direct=1: `open` and `create` pass the caller's flags, "
        "O_DIRECT included, to the backing `os.open`, and the `os.read` into an unaligned Python buffer then fails "
        "with EINVAL, which ends pyfuse3.main (the mount dies). The copy drops O_DIRECT there, so its backing "
        "reads and writes are buffered (host page cache).",
    ]
    for variant, diff in ex.diffs.items():
        lines += ["", f"`passthroughfs-{variant}.py`:", "", "```diff", diff.rstrip("\n"), "```"]
    return lines


def interpretation_lines(report: Report) -> list[str]:
    """Facts that explain the pass-through comparison, computed from the numbers rather than asserted."""
    pts = report.compare.points
    lines = []
    job = COMPARE_JOBS[0]
    nat, ex1 = median_iops(pts.get(("native", job.name))), median_iops(pts.get((BASELINE_1S, job.name)))
    sub, ex0 = median_iops(pts.get((SUBJECT, job.name))), median_iops(pts.get((BASELINE, job.name)))
    if ex1 and sub:
        lines.append(
            f"* With a {TMEMFS_TIMEOUT_S} s attr_timeout the example's direct=0 reads are kernel page-cache hits "
            f"that never reach Python ({fmt_iops(ex1)} IOPS for {job.label}"
            + (f", native: {fmt_iops(nat)}" if nat else "")
            + f"). tmemfs opens files with direct_io unless `kernel_cache` is given, so every read(2) is a "
            f"FUSE round trip into Python ({fmt_iops(sub)} IOPS).")
    if ex0:
        lines.append(f"* The stock example (timeouts 0) pays a GETATTR round trip before every read(2) even "
                     f"though the data comes from the kernel page cache: {fmt_iops(ex0)} IOPS for {job.label}.")
    seq = COMPARE_JOBS[2]
    ex_seq, sub_seq = median_iops(pts.get((BASELINE, seq.name))), median_iops(pts.get((SUBJECT, seq.name)))
    if ex_seq and sub_seq:
        lines.append(f"* {seq.label}: the stock example answers one GETATTR per read(2) and the kernel copies the "
                     f"data from its own page cache ({fmt_iops(ex_seq)} IOPS); tmemfs assembles 32 cached pages in "
                     f"Python and sends 128 KiB through /dev/fuse per request ({fmt_iops(sub_seq)} IOPS).")
    lines.append("* The machine is shared and noisy (10-20% run to run when quiet, far more when other jobs run: "
                 "see † and the CPU lines under Method): compare ratios, and mind the ranges.")
    return lines


def grouped_commands(title: str, matrix: Matrix) -> list[str]:
    """The command lines of one part in code blocks, one per set of configurations that ran them."""
    groups: dict[tuple[str, ...], list[str]] = {}
    for cmd, users in matrix.commands.items():
        groups.setdefault(tuple(users), []).append(cmd)
    lines: list[str] = []
    for keys, cmds in groups.items():
        lines += [f"{title}, on {', '.join(keys)}:", "", "```", *cmds, "```", ""]
    return lines


def command_lines(report: Report) -> list[str]:
    """Every fio line of both parts, grouped by the configurations that ran them."""
    lines: list[str] = []
    for part in PARTS.values():
        lines += grouped_commands(part.title, report.results(part))
    lines.append("The profiles ran the pass-through comparison's lines on tmemfs; the `--invalidate=1` lines are "
                 "listed in their own section.")
    return lines


def chart_lines(report: Report, part: Part) -> list[str]:
    return [f"![{alt}]({path})" for alt, path in report.charts if Path(path).name == chart_name(part)]


def render_report(report: Report) -> str:
    s = report.settings
    out = [
        "# tmemfs benchmarks", "",
        f"Generated by `python -m tools.bench{' --quick' if s.quick else ''}` on {report.started}; "
        f"the whole run took {report.elapsed_s / 60:.1f} min.", "",
        "## Summary", "", *summary_lines(report), "",
        "## fio matrix (direct=1): IOPS, median (min..max)", "", *results_table(report, MATRIX, True), "",
        *chart_lines(report, MATRIX), "",
        "## fio matrix: ratios (IOPS, same run)", "", *matrix_ratio_table(report), "",
        "## fio matrix: bandwidth, MiB/s, median (min..max)", "", *results_table(report, MATRIX, False), "",
        "## fio matrix: configurations and method", "", *config_table(report, MATRIX), "",
        *matrix_method_lines(report), "",
        "## Pass-through comparison (direct=0): ratios (IOPS, same run)", "", *ratio_table(report), "",
        "## Pass-through comparison: what the numbers mean", "", *interpretation_lines(report), "",
        "## Pass-through comparison: IOPS, median (min..max)", "", *results_table(report, COMPARE, True), "",
        *chart_lines(report, COMPARE), "",
        "## Pass-through comparison: bandwidth, MiB/s, median (min..max)", "",
        *results_table(report, COMPARE, False), "",
        "## Pass-through comparison: configurations and method", "", *config_table(report, COMPARE), "",
        *compare_method_lines(report), "",
        "## Method (both parts)", "", *method_lines(report), "",
        "## Crashes and failures", "", *crash_lines(report), "",
        "## Where tmemfs's time goes (profile of the comparison jobs it lost)", "", *profile_lines(report), "",
        "## fio's --invalidate", "", *sensitivity_lines(report), "",
        "## Resident memory", "", *rss_lines(report), "",
        "## The baseline and the patched examples", "", *example_lines(report), "",
        "## Machine", "", "| | |", "|---|---|", *[f"| {k} | {v} |" for k, v in report.machine.items()], "",
        "## Versions", "", "| | |", "|---|---|", *[f"| {k} | {v} |" for k, v in report.versions.items()], "",
        "## fio command lines, exactly as run", "", *command_lines(report), "",
        "Raw fio JSON of every run, the daemons' logs and the run's numbers (`report.json`, for `--from-json`) "
        "are kept under `bench-results/run/` (not committed).", "",
    ]
    text = "\n".join(out)
    return re.sub(r"\n{3,}", "\n\n", text)


def write_report(out: Path, text: str) -> None:
    """Replace everything before the backends markers; tools/bench_backends.py owns what is between them."""
    old = out.read_text() if out.exists() else ""
    if BEGIN in old and END in old:
        text = text.rstrip("\n") + "\n\n" + old[old.index(BEGIN):]
    out.write_text(text)


# -- charts ----------------------------------------------------------------------------------


def chart_name(part: Part) -> str:
    return f"{part.key}-iops.png"


def make_chart(report: Report, part: Part, path: Path) -> None:
    """IOPS per configuration and workload: one panel per engine/queue depth, one bar per configuration."""
    import textwrap

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D

    matrix, s = report.results(part), report.settings
    engines = list(dict.fromkeys(j.engine for j in part.jobs))
    widths = [len([j for j in part.jobs if j.engine == e]) for e in engines]
    rows = -(-(len(part.configs) + 1) // 2)  # legend rows, two entries each
    fig, axes = plt.subplots(1, len(engines), figsize=(13, 5.0 + 0.25 * rows), sharey=True, squeeze=False,
                             gridspec_kw={"width_ratios": widths})
    cmap = plt.get_cmap("tab10")
    keys = dict.fromkeys(c.key for p in PARTS.values() for c in p.configs)  # one colour per key in every chart
    colors = {key: cmap(i % 10) for i, key in enumerate(keys)}
    n = len(part.configs)
    width = 0.84 / n
    for ax, engine in zip(axes[0], engines, strict=True):
        jobs = [j for j in part.jobs if j.engine == engine]
        for i, config in enumerate(part.configs):
            for g, job in enumerate(jobs):
                x = g + (i - (n - 1) / 2) * width
                p = matrix.points.get((config.key, job.name))
                if p is not None and p.failed:
                    ax.plot([x], [0.03], marker="x", color="red", markersize=7, transform=ax.get_xaxis_transform())
                    ax.text(x, 0.07, "crashed" if p.crashed else "failed", rotation=90, fontsize=7, color="red",
                            ha="center", va="bottom", transform=ax.get_xaxis_transform())
                elif p is not None and p.iops():
                    med, lo, hi = spread(p.iops())  # type: ignore[misc]
                    ax.bar([x], [med], width, color=colors[config.key], yerr=[[med - lo], [hi - med]],
                           error_kw={"elinewidth": 0.8, "capsize": 1.5})
        ax.set_xticks(range(len(jobs)), [textwrap.fill(j.workload.label, 12) for j in jobs], fontsize=9)
        ax.set_xlim(-0.5, len(jobs) - 0.5)
        ax.set_yscale("log")
        ax.grid(axis="y", which="major", alpha=0.3)
        ax.set_title(f"{engine}, direct={jobs[0].direct}", fontsize=10)
        ax.set_xlabel("fio workload")
    axes[0][0].set_ylabel("IOPS, reads + writes (median; whiskers min..max; log scale)")
    handles: list[Any] = [plt.Rectangle((0, 0), 1, 1, color=colors[c.key]) for c in part.configs]
    labels = [f"{c.key}: {c.label}" for c in part.configs]
    handles.append(Line2D([], [], marker="x", color="red", linestyle=""))
    labels.append("cannot run (crashed / failed)")
    fig.legend(handles, labels, loc="lower center", ncol=2, fontsize=8, frameon=False)
    mode = "quick mode, " if s.quick else ""
    fig.suptitle(f"{part.title}: fio IOPS per configuration and workload\n"
                 f"{mode}{s.reps} run(s) of {fmt_seconds(s.runtime)} per bar, {FILE_SIZE // MiB} MiB file, "
                 f"{report.started}", fontsize=10)
    fig.tight_layout(rect=(0, 0.01 + 0.032 * rows, 1, 1))
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=80)
    plt.close(fig)


def make_charts(report: Report, out: Path) -> list[tuple[str, str]]:
    """The charts of every part that ran, in docs/bench/ next to the report; (alt, relative path)."""
    made: list[tuple[str, str]] = []
    for part in PARTS.values():
        if not report.ran(part):
            continue
        rel = CHART_SUBDIR / chart_name(part)
        try:
            make_chart(report, part, out.parent / rel)
        except ImportError as exc:
            log(f"no chart ({exc}): pip install matplotlib")
            return made
        made.append((f"{part.title}: IOPS per configuration and workload", rel.as_posix()))
    return made


# -- saved numbers (--from-json) ---------------------------------------------------------------


def matrix_to_json(m: Matrix) -> dict[str, Any]:
    return {
        "points": [{"config": c, "job": j, "runs": {str(r): asdict(res) for r, res in p.by_round.items()},
                    "failures": p.failures} for (c, j), p in m.points.items()],
        "commands": m.commands, "crashes": [[c, j, e] for (c, j), e in m.crashes.items()],
        "retried": m.retried, "replaced": m.replaced,
    }


def matrix_from_json(data: dict[str, Any]) -> Matrix:
    m = Matrix(commands={k: list(v) for k, v in data["commands"].items()}, retried=data["retried"],
               replaced=data["replaced"])
    for p in data["points"]:
        point = m.point(p["config"], p["job"])
        point.by_round = {int(r): FioResult(**v) for r, v in p["runs"].items()}
        point.failures = list(p["failures"])
    m.crashes = {(c, j): e for c, j, e in data["crashes"]}
    return m


def report_to_json(r: Report) -> dict[str, Any]:
    return {
        "format": 2, "settings": asdict(r.settings), "machine": r.machine, "versions": r.versions,
        "started": r.started, "example": asdict(r.example) if r.example else None,
        "matrix": matrix_to_json(r.matrix), "compare": matrix_to_json(r.compare), "elapsed_s": r.elapsed_s,
        "rss": asdict(r.rss) if r.rss else None,
        "sensitivity": {"job": r.sensitivity.job.name, "commands": r.sensitivity.commands,
                        "results": {k: asdict(v) for k, v in r.sensitivity.results.items()}}
        if r.sensitivity else None,
        "profiles": [p if isinstance(p, str) else
                     {"job": p.job.name, "iops": p.iops, "samples": p.samples, "categories": p.categories,
                      "top": p.top, "command": p.command} for p in r.profiles],
        "mount_commands": r.mount_commands, "digests": list(r.digests), "background": list(r.background),
    }


def report_from_json(d: dict[str, Any]) -> Report:
    settings = Settings(**{**d["settings"], "parts": tuple(d["settings"]["parts"])})
    r = Report(settings, d["machine"], d["versions"], d["started"],
               ExampleSource(**d["example"]) if d["example"] else None,
               matrix_from_json(d["matrix"]), matrix_from_json(d["compare"]), d["elapsed_s"],
               RssResult(**d["rss"]) if d["rss"] else None)
    if d["sensitivity"]:
        sens = d["sensitivity"]
        r.sensitivity = Sensitivity(ALL_JOBS[sens["job"]], {k: FioResult(**v) for k, v in sens["results"].items()},
                                    list(sens["commands"]))
    r.profiles = [p if isinstance(p, str) else
                  Profile(ALL_JOBS[p["job"]], p["iops"], p["samples"], [(a, b) for a, b in p["categories"]],
                          [(a, b) for a, b in p["top"]], p["command"]) for p in d["profiles"]]
    r.mount_commands = d["mount_commands"]
    r.digests = (d["digests"][0], d["digests"][1])
    r.background = (d["background"][0], d["background"][1])
    return r


# -- main ----------------------------------------------------------------------------------


def jobs_to_profile(compare: Matrix) -> list[Job]:
    """The comparison jobs where tmemfs missed the target against either example configuration."""
    seen: list[Job] = []
    for job, _subject, _base, _r in misses(compare.points):
        if job not in seen:
            seen.append(job)
    return seen


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m tools.bench", description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--quick", action="store_true",
                        help="1 run of 0.5 s per point, no profile or --invalidate run (with bench_backends "
                             "--quick, `make bench QUICK=1`, under 3 minutes)")
    parser.add_argument("--out", default="BENCHMARKS.md",
                        help="report file (default BENCHMARKS.md); charts go to docs/bench/ beside it")
    parser.add_argument("--results-dir", default="bench-results", help="scratch, cache, raw output")
    parser.add_argument("--runtime", type=float, help="seconds per fio run (default 2, quick 0.5)")
    parser.add_argument("--reps", type=int, help="runs per point (default 3, quick 1)")
    parser.add_argument("--parts", default="matrix,compare",
                        help="which parts to run, comma-separated: matrix, compare (default both)")
    parser.add_argument("--no-profile", action="store_true", help="skip py-spy on the jobs tmemfs lost")
    parser.add_argument("--wait-quiet", type=float, metavar="SECONDS",
                        help="wait up to this long for other processes to go quiet first (default 60, quick 0)")
    parser.add_argument("--from-json", type=Path, metavar="REPORT_JSON",
                        help="measure nothing: redraw the report and charts from a saved report.json")
    args = parser.parse_args(argv)
    unknown = set(args.parts.split(",")) - set(PARTS)
    if unknown:
        parser.error(f"--parts: unknown {', '.join(sorted(unknown))} (known: {', '.join(PARTS)})")
    return args


def settings_from(args: argparse.Namespace) -> Settings:
    runtime = args.runtime or (0.5 if args.quick else 2.0)
    reps = args.reps or (1 if args.quick else 3)
    wait = args.wait_quiet if args.wait_quiet is not None else (0.0 if args.quick else 60.0)
    parts = tuple(k for k in PARTS if k in args.parts.split(","))
    return Settings(runtime, reps, args.quick, not (args.no_profile or args.quick), not args.quick,
                    0.0 if args.quick else 60.0, wait, parts)


def raise_interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def background_cpu(seconds: float = 2.0) -> float:
    """CPUs' worth used by others while we do nothing."""
    before = cpu_sample(None)
    time.sleep(seconds)
    return with_cpu(FioResult(), before, cpu_sample(None)).foreign_cpu or 0.0


def wait_for_quiet(max_wait: float) -> tuple[float, float]:
    """(background CPU when we started measuring, seconds waited for it to drop below BUSY)."""
    t0 = time.monotonic()
    load = background_cpu(2.0 if max_wait > 0 else 0.5)
    while load > BUSY and time.monotonic() - t0 < max_wait:
        log(f"other processes use {load:.0%} of a CPU: waiting for quiet "
            f"({max_wait - (time.monotonic() - t0):.0f} s left)")
        load = background_cpu(5.0)
    return load, time.monotonic() - t0


def plan(settings: Settings) -> tuple[int, float]:
    """(fio runs, rough seconds) of the main parts."""
    runs = sum(settings.reps * len(PARTS[k].configs) * len(PARTS[k].jobs) for k in settings.parts)
    return runs, runs * (settings.runtime + RUN_OVERHEAD_S)


def run(args: argparse.Namespace) -> Report:
    """The whole benchmark; every mount is undone by the Mount context managers or kill_leftovers."""
    t0 = time.monotonic()
    settings = settings_from(args)
    ws = Workspace(Path(args.results_dir).resolve(), Path(sys.executable).parent)
    ws.prepare()
    report = Report(settings, machine_facts(ws), versions(),
                    datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z"))
    start_digest = source_digest()
    parts = [PARTS[k] for k in settings.parts]
    try:
        report.example = fetch_example(ws, report.versions["pyfuse3"])
        make_file(ws.src / FILE_NAME, FILE_SIZE)
        make_text_file(ws.src / TEXT_NAME, FILE_SIZE)
        report.mount_commands = {f"{p.key}/{c.key}": shlex.join(mount_argv(c, ws, p.files))
                                 for p in PARTS.values() for c in p.configs if c.kind != "native"}
        report.background = wait_for_quiet(settings.wait_quiet_s)
        runs, estimate = plan(settings)
        log(f"plan: {runs} fio runs of {fmt_seconds(settings.runtime)} ({', '.join(settings.parts)}; "
            f"{settings.reps} round(s)), about {estimate / 60:.1f} min, then "
            + ("the extras (retries of busy runs, profile, --invalidate, RSS)" if not settings.quick
               else "the RSS check"))
        progress = Progress(runs, settings.runtime + RUN_OVERHEAD_S)
        for part in parts:
            log(f"{part.title}: {len(part.configs)} configurations x {len(part.jobs)} jobs x {settings.reps} "
                "round(s)")
            result = run_part(ws, part, settings, progress)
            if part is MATRIX:
                report.matrix = result
            else:
                report.compare = result
        deadline = time.monotonic() + settings.retry_budget_s
        for part in parts:
            retry_busy(ws, part, settings, report.results(part), deadline)
        if settings.profile and COMPARE in parts:
            subject = COMPARE.config(SUBJECT)
            report.profiles = [run_profile(ws, subject, job, settings) for job in jobs_to_profile(report.compare)]
        if settings.sensitivity and COMPARE in parts:
            log("fio's --invalidate=1 on the pass-through comparison's first job")
            keys = (BASELINE, BASELINE_1S, SUBJECT)
            report.sensitivity = run_sensitivity(ws, [c for c in COMPARE.configs if c.key in keys], settings)
        log("resident memory check")
        report.rss = measure_rss(ws)
    finally:
        kill_leftovers(ws)
    report.digests = (start_digest, source_digest())
    report.versions["tmemfs sources (sha256 of fusefs/ and backends/ *.py)"] = " -> ".join(
        dict.fromkeys(report.digests))
    report.elapsed_s = time.monotonic() - t0
    return report


def measured_or_loaded(args: argparse.Namespace, measure: Callable[[argparse.Namespace], R],
                       dump: Callable[[R], dict[str, Any]], load: Callable[[dict[str, Any]], R]) -> R | None:
    """The report of --from-json, or of a run whose numbers are then saved beside its raw output (a quick run
    never overwrites a full one); None when interrupted (SIGTERM too: everything is undone first)."""
    if args.from_json:
        return load(json.loads(args.from_json.read_text()))
    signal.signal(signal.SIGTERM, raise_interrupt)
    try:
        report = measure(args)
    except KeyboardInterrupt:
        log("interrupted: everything is unmounted and stopped, no report written")
        return None
    saved = Workspace(Path(args.results_dir).resolve(), Path(sys.executable).parent).report_json(args.quick)
    saved.write_text(json.dumps(dump(report), indent=1))
    log(f"numbers saved in {saved} (--from-json {saved} redraws the report)")
    return report


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    out = Path(args.out)
    report = measured_or_loaded(args, run, report_to_json, report_from_json)
    if report is None:
        return 130
    report.charts = make_charts(report, out)
    write_report(out, render_report(report))
    log(f"wrote {out} and {len(report.charts)} chart(s) in {CHART_SUBDIR}/ (run took "
        f"{report.elapsed_s / 60:.1f} min)")
    for line in summary_lines(report):
        print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
