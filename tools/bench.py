"""Benchmark tmemfs against the stock pyfuse3 pass-through example with fio; write BENCHMARKS.md.

Run from the repository root with the project's venv:

    .venv/bin/python -m tools.bench [--quick] [--out BENCHMARKS.md]

Every point is measured in interleaved rounds (round 1 of every configuration,
then round 2, ...) so that the machine's drift hits all configurations alike,
and ratios are only ever taken between numbers from the same invocation.
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
import signal
import statistics
import subprocess
import sys
import tarfile
import time
from collections import Counter
from collections.abc import Callable, Sequence
from contextlib import suppress
from dataclasses import dataclass, field, replace
from importlib import metadata
from pathlib import Path
from types import FrameType
from typing import Literal

from tools.mounting import is_mounted, pid_alive, signals_deferred, stop_daemon, unmount

MiB = 1 << 20
FILE_SIZE = 64 * MiB
FILE_NAME = "bench-64M.dat"
CACHE_SIZE = "256M"
RSS_CACHE = 64 * MiB
RSS_FILE_SIZE = 256 * MiB
RSS_FILE_NAME = "rss-256M.dat"
TARGET = 0.9
BUSY = 0.25  # other processes using more than this share of one CPU during a run make it suspect
TMEMFS_TIMEOUT_S = 1
BASELINE = "example"
BASELINE_1S = "example-1s"
SUBJECT = "tmemfs-none"
EXAMPLE_MEMBER = "examples/passthroughfs.py"
TIMEOUT_PATCH = (("entry.entry_timeout = 0", f"entry.entry_timeout = {TMEMFS_TIMEOUT_S}"),
                 ("entry.attr_timeout = 0", f"entry.attr_timeout = {TMEMFS_TIMEOUT_S}"))

_started_pids: set[int] = set()  # every FUSE daemon this run started, for the last-resort cleanup


# -- what is measured -----------------------------------------------------------


@dataclass(frozen=True)
class Job:
    """One fio workload; `direct` is fio's --direct (O_DIRECT on the file under test)."""

    rw: str
    bs: str
    ioengine: str
    iodepth: int
    direct: int

    @property
    def label(self) -> str:
        kind = "randread" if self.rw == "randread" else "seq read"
        return f"{self.bs} {kind} {self.ioengine} QD{self.iodepth} direct={self.direct}"

    @property
    def name(self) -> str:
        return f"{self.bs}-{self.rw}-{self.ioengine}-qd{self.iodepth}-d{self.direct}"

    def fio_args(self) -> list[str]:
        args = [f"--rw={self.rw}", f"--bs={self.bs}", f"--ioengine={self.ioengine}"]
        if self.iodepth > 1:
            args.append(f"--iodepth={self.iodepth}")
        return [*args, f"--direct={self.direct}"]


JOBS: tuple[Job, ...] = tuple(
    Job(rw, bs, engine, depth, direct)
    for direct in (0, 1)
    for rw, bs, engine, depth in (("randread", "4k", "psync", 1), ("randread", "4k", "libaio", 16),
                                  ("read", "128k", "psync", 1))
)


@dataclass(frozen=True)
class Config:
    """A way of serving the test file: native, one of the example's variants, or tmemfs with options."""

    key: str
    label: str
    kind: Literal["native", "example", "tmemfs"]
    options: str = ""  # tmemfs -o string, or the example variant ("stock" / "timeouts1")
    extra: bool = False  # informational, not one of the required configurations


CONFIGS: tuple[Config, ...] = (
    Config("native", "native ext4 directory (SRC itself)", "native"),
    Config(BASELINE, "pyfuse3 example, as shipped (entry/attr timeout 0)", "example", "stock"),
    Config(BASELINE_1S, f"pyfuse3 example, entry/attr timeout {TMEMFS_TIMEOUT_S} s (patched)", "example",
           "timeouts1"),
    Config(SUBJECT, "tmemfs cleancache=none", "tmemfs", f"cleancache=none,cache_size={CACHE_SIZE}"),
    Config("tmemfs-tmem", "tmemfs cleancache=tmem", "tmemfs", f"cleancache=tmem,cache_size={CACHE_SIZE}"),
    Config("tmemfs-none-kc", "tmemfs cleancache=none + kernel_cache (extra)", "tmemfs",
           f"cleancache=none,cache_size={CACHE_SIZE},kernel_cache", extra=True),
)


@dataclass(frozen=True)
class Settings:
    """How long and how often: --quick trades precision for a run under 3 minutes."""

    runtime: int
    reps: int
    quick: bool
    profile: bool
    sensitivity: bool
    retry_budget_s: float = 0.0  # time allowed for re-running runs that shared the machine
    wait_quiet_s: float = 0.0  # how long to wait at the start for other processes to calm down


# -- fio output -------------------------------------------------------------------


@dataclass(frozen=True)
class FioResult:
    """One fio run: read IOPS and bandwidth (bytes/s), or why it failed."""

    iops: float = 0.0
    bw: float = 0.0
    error: str | None = None
    foreign_cpu: float | None = None  # CPUs' worth used by processes other than fio and the daemon
    steal: float | None = None  # CPUs' worth the hypervisor gave to other guests


def parse_fio_json(stdout: str, stderr: str = "", returncode: int = 0) -> FioResult:
    """fio's JSON report; fio prefixes error lines to it when a job fails, so find the object."""
    start = stdout.find("{")
    try:
        report = json.loads(stdout[start:]) if start >= 0 else None
    except json.JSONDecodeError:
        report = None
    if not report or not report.get("jobs"):
        return FioResult(error=_first_error_line(stderr + stdout) or f"fio exited {returncode}, no JSON")
    job = report["jobs"][0]
    read = job["read"]
    bw = float(read["bw_bytes"]) if "bw_bytes" in read else float(read["bw"]) * 1024
    result = FioResult(float(read["iops"]), bw)
    if job.get("error"):
        errno_ = int(job["error"])
        detail = _first_error_line(stderr + stdout) or os.strerror(errno_)
        return FioResult(result.iops, result.bw, f"fio error {errno_}: {detail}")
    if returncode != 0:
        return FioResult(result.iops, result.bw, _first_error_line(stderr) or f"fio exited {returncode}")
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

    def example_script(self, variant: str) -> Path:
        return self.cache / f"passthroughfs-{variant}.py"

    def prepare(self) -> None:
        for d in (self.src, self.mnt, self.logs, self.raw, self.cache):
            d.mkdir(parents=True, exist_ok=True)
        if is_mounted(self.mnt):  # left over from a killed run
            unmount(self.mnt)


class Mount:
    """A configuration's file system at ws.mnt (or SRC itself for native), restartable after a crash."""

    def __init__(self, config: Config, ws: Workspace) -> None:
        self.config, self.ws, self.options = config, ws, config.options
        self.proc: subprocess.Popen[bytes] | None = None
        self.pid: int | None = None
        self.log = ws.logs / f"{config.key}.log"

    @property
    def path(self) -> Path:
        return self.ws.src if self.config.kind == "native" else self.ws.mnt

    def start(self) -> None:
        if self.config.kind == "example":
            self._start_example()
        elif self.config.kind == "tmemfs":
            self._start_tmemfs()

    def _start_example(self) -> None:
        script = self.ws.example_script(self.options)
        with open(self.log, "ab") as logf:
            self.proc = subprocess.Popen(
                [sys.executable, str(script), str(self.ws.src), str(self.ws.mnt)],
                stdin=subprocess.DEVNULL, stdout=logf, stderr=subprocess.STDOUT,
                start_new_session=True)  # Ctrl-C reaches us, and we unmount it cleanly
        self.pid = self.proc.pid
        _started_pids.add(self.pid)
        wait_mounted(self.ws.mnt, lambda: self.proc is not None and self.proc.poll() is None)

    def _start_tmemfs(self) -> None:
        cmd = [str(self.ws.venv_bin / "tmemfs"), str(self.ws.src), str(self.ws.mnt),
               "-o", f"{self.options},log={self.log}"]
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
            os.stat(self.path / FILE_NAME)
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
    """Where the baseline came from and what the patched copy changed."""

    sdist: Path
    sha256: str
    downloaded: bool
    pip_command: str
    diff: str


def fetch_example(ws: Workspace, version: str) -> ExampleSource:
    """The sdist's examples/passthroughfs.py, unmodified, plus a copy with tmemfs's timeouts."""
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
    patched = patch_timeouts(stock)
    ws.example_script("stock").write_text(stock)
    ws.example_script("timeouts1").write_text(patched)
    diff = "".join(difflib.unified_diff(stock.splitlines(True), patched.splitlines(True),
                                        "passthroughfs.py", "passthroughfs-timeouts1.py", n=1))
    return ExampleSource(sdist, hashlib.sha256(sdist.read_bytes()).hexdigest(), downloaded,
                         shlex.join(cmd), diff)


def patch_timeouts(source: str) -> str:
    """The example has no timeout option: set the two assignments in _getattr to tmemfs's 1 s."""
    for old, new in TIMEOUT_PATCH:
        if source.count(old) != 1:
            raise RuntimeError(f"cannot patch the example: {old!r} occurs {source.count(old)} times")
        source = source.replace(old, new)
    return source


def make_file(path: Path, size: int) -> None:
    """Random (incompressible) contents; reused across runs when the size already fits."""
    if path.exists() and path.stat().st_size == size:
        return
    with open(path, "wb") as f:
        for _ in range(size // MiB):
            f.write(os.urandom(MiB))
        f.flush()
        os.fsync(f.fileno())


def read_through(path: Path) -> None:
    """Warm-up: read every byte once, through whatever is mounted there."""
    with open(path, "rb", buffering=0) as f:
        while f.read(MiB):
            pass


# -- running fio -----------------------------------------------------------------------


def fio_command(job: Job, filename: Path, runtime: int, invalidate: int = 0) -> list[str]:
    return ["fio", f"--name={job.name}", f"--filename={filename}", f"--size={FILE_SIZE // MiB}M",
            *job.fio_args(), f"--runtime={runtime}", "--time_based", f"--invalidate={invalidate}",
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


def run_fio(cmd: list[str], raw_file: Path | None, runtime: int, daemon_pid: int | None = None) -> FioResult:
    """Run one fio; a hang (a wedged mount) is killed after a generous timeout."""
    before = cpu_sample(daemon_pid)
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=runtime + 60, check=False)
    except subprocess.TimeoutExpired:
        return FioResult(error=f"fio did not finish within {runtime + 60} s")
    after = cpu_sample(daemon_pid)
    if raw_file is not None:
        raw_file.write_text(done.stdout + ("\n# stderr:\n" + done.stderr if done.stderr else ""))
    return with_cpu(parse_fio_json(done.stdout, done.stderr, done.returncode), before, after)


@dataclass
class Matrix:
    """All results of the main matrix, the commands that produced them, and what crashed."""

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


class Progress:
    """n of N on stderr, with elapsed time."""

    def __init__(self, total: int) -> None:
        self.total, self.done, self.t0 = total, 0, time.monotonic()

    def step(self, message: str) -> None:
        self.done += 1
        log(f"[{self.done}/{self.total}, {time.monotonic() - self.t0:.0f} s] {message}")


def measure_job(mount: Mount, job: Job, settings: Settings, matrix: Matrix, round_: int,
                tag: str = "") -> FioResult:
    """Warm up, run fio once, and restart the mount if the run killed it."""
    if not mount.alive():
        try:
            mount.stop()
            mount.start()
        except RuntimeError as exc:
            return FioResult(error=f"restarting the mount failed: {exc}")
    target = mount.path / FILE_NAME
    try:
        read_through(target)
    except OSError as exc:
        return FioResult(error=f"warm-up read failed: {exc}")
    cmd = fio_command(job, target, settings.runtime)
    matrix.note_command(cmd, mount.config.key)
    raw = mount.ws.raw / f"{mount.config.key}.{job.name}.r{round_ + 1}{tag}.json"
    result = run_fio(cmd, raw, settings.runtime, mount.pid)
    if not mount.alive():
        evidence = mount.crash_evidence()
        matrix.crashes[(mount.config.key, job.name)] = evidence
        result = FioResult(result.iops, result.bw, f"mount died ({result.error or 'fio: no error'}); "
                                                  f"daemon: {evidence}")
    return result


def run_matrix(ws: Workspace, configs: Sequence[Config], settings: Settings) -> Matrix:
    """Rounds of every configuration and job; a job that failed once is not repeated."""
    matrix = Matrix()
    progress = Progress(settings.reps * len(configs) * len(JOBS))
    for round_ in range(settings.reps):
        for config in configs:
            try:
                with Mount(config, ws) as mount:
                    for job in JOBS:
                        measure_point(mount, job, settings, matrix, round_, progress)
            except RuntimeError as exc:  # the mount itself failed: every job of this round fails with it
                for job in JOBS:
                    point = matrix.point(config.key, job.name)
                    if round_ not in point.by_round and not point.failed:
                        point.add(round_, FioResult(error=f"mount failed: {exc}"))
                        progress.step(f"round {round_ + 1}/{settings.reps} {config.key} {job.label}: "
                                      f"mount failed: {exc}")
    return matrix


def busy_runs(matrix: Matrix, config: str) -> list[tuple[Job, int]]:
    return [(job, rnd) for job in JOBS
            for rnd, r in matrix.point(config, job.name).by_round.items() if (r.foreign_cpu or 0) > BUSY]


def retry_busy(ws: Workspace, configs: Sequence[Config], settings: Settings, matrix: Matrix) -> None:
    """Others' bursts are transient: measure busy runs again while the budget lasts, keep the quieter."""
    deadline = time.monotonic() + settings.retry_budget_s
    for config in configs:
        todo = busy_runs(matrix, config.key)
        if not todo or time.monotonic() + settings.runtime + 3 > deadline:
            continue
        with Mount(config, ws) as mount:
            for job, rnd in todo:
                if time.monotonic() + settings.runtime + 2 > deadline:
                    return
                old = matrix.point(config.key, job.name).by_round[rnd]
                new = measure_job(mount, job, settings, matrix, rnd, tag=".retry")
                matrix.retried += 1
                quieter = not new.error and (new.foreign_cpu or 0) < (old.foreign_cpu or 0)
                if quieter:
                    matrix.point(config.key, job.name).by_round[rnd] = new
                    matrix.replaced += 1
                log(f"retry {config.key} {job.label} round {rnd + 1}: others {old.foreign_cpu or 0:.0%} -> "
                    f"{new.foreign_cpu or 0:.0%}, {'kept the new run' if quieter else 'kept the old run'}")


def measure_point(mount: Mount, job: Job, settings: Settings, matrix: Matrix, round_: int,
                  progress: Progress) -> None:
    point = matrix.point(mount.config.key, job.name)
    where = f"round {round_ + 1}/{settings.reps} {mount.config.key} {job.label}"
    if point.failed:
        progress.step(f"{where}: skipped (failed before)")
        return
    result = measure_job(mount, job, settings, matrix, round_)
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
    sens = Sensitivity(JOBS[0])
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
        spy_cmd = [str(pyspy), "record", "-p", str(mount.pid), "-d", str(settings.runtime + 1), "-r", "250",
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
    configs: list[Config]
    matrix: Matrix
    machine: dict[str, str]
    versions: dict[str, str]
    example: ExampleSource | None
    started: str
    elapsed_s: float = 0.0
    rss: RssResult | None = None
    sensitivity: Sensitivity | None = None
    profiles: list[Profile | str] = field(default_factory=list)
    mount_commands: dict[str, str] = field(default_factory=dict)
    digests: tuple[str, str] = ("", "")  # source_digest() at the start and at the end
    background: tuple[float, float] = (0.0, 0.0)  # others' CPU at the start, seconds waited for quiet


def fmt_iops(value: float) -> str:
    return f"{value / 1000:.1f}k" if value >= 1000 else f"{value:.0f}"


def fmt_point(values: Sequence[float], scale: float = 1.0, iops: bool = True) -> str:
    s = spread([v / scale for v in values])
    if s is None:
        return "-"
    f = fmt_iops if iops else (lambda v: f"{v:.0f}")
    return f"{f(s[0])} ({f(s[1])}..{f(s[2])})" if len(values) > 1 else f(s[0])


def cell(point: Point | None, iops: bool = True) -> str:
    if point is None:
        return "-"
    if point.failed:
        return "**crashed**" if "mount died" in point.failures[0] else "**failed**"
    text = fmt_point(point.iops(), iops=True) if iops else fmt_point(point.bw(), scale=MiB, iops=False)
    return text + (" †" if point.busy() else "")


def results_table(report: Report, iops: bool) -> list[str]:
    head = "| job | " + " | ".join(c.key for c in report.configs) + " |"
    lines = [head, "|" + "---|" * (len(report.configs) + 1)]
    for job in JOBS:
        cells = [cell(report.matrix.points.get((c.key, job.name)), iops) for c in report.configs]
        lines.append(f"| {job.label} | " + " | ".join(cells) + " |")
    return lines


def ratio_rows(points: dict[tuple[str, str], Point], subject: str) -> list[tuple[Job, str, Ratio | None]]:
    """(job, baseline, ratio) for every job and both example configurations, in table order."""
    rows = []
    for job in JOBS:
        for base in (BASELINE, BASELINE_1S):
            sp, bp = points.get((subject, job.name)), points.get((base, job.name))
            rows.append((job, base, ratio(sp, bp) if sp and bp else None))
    return rows


def ratio_table(report: Report, subject: str) -> list[str]:
    lines = [f"| job | {subject} / {BASELINE} | {subject} / {BASELINE_1S} |", "|---|---|---|"]
    rows = ratio_rows(report.matrix.points, subject)
    for i in range(0, len(rows), 2):
        job = rows[i][0]
        lines.append(f"| {job.label} | {fmt_ratio(rows[i][2])} | {fmt_ratio(rows[i + 1][2])} |")
    return lines


def fmt_ratio(r: Ratio | None) -> str:
    if r is None:
        return "n/a (example crashed)"
    verdict = "ok" if r.meets else "**MISS**"
    if r.lo < TARGET <= r.hi:
        verdict += " (rounds straddle the target)"
    return f"{r.median:.2f}x ({r.lo:.2f}..{r.hi:.2f}) {verdict}"


def misses(points: dict[tuple[str, str], Point]) -> list[tuple[Job, str, Ratio]]:
    return [(j, b, r) for j, b, r in ratio_rows(points, SUBJECT) if r is not None and not r.meets]


def summary_lines(report: Report) -> list[str]:
    judged = [r for _, _, r in ratio_rows(report.matrix.points, SUBJECT) if r is not None]
    missed = misses(report.matrix.points)
    lines = [f"* Target: {SUBJECT} IOPS >= {TARGET}x the pyfuse3 example's in every job the example survives."]
    if not judged:
        lines.append("* No job could be compared (the example failed everywhere).")
    elif missed:
        lines.append(f"* **Target MISSED in {len(missed)} of {len(judged)} comparisons:** "
                     + "; ".join(f"{j.label} vs {b} = {r.median:.2f}x" for j, b, r in missed) + ".")
    else:
        lines.append(f"* Target met in all {len(judged)} comparisons.")
    crashed = sorted({job for (cfg, job) in report.matrix.crashes if cfg in (BASELINE, BASELINE_1S)})
    if crashed:
        labels = [j.label for j in JOBS if j.name in crashed]
        lines.append(f"* The pyfuse3 example crashes (mount dies) on: {', '.join(labels)}.")
    others = sorted({cfg for (cfg, _job), p in report.matrix.points.items()
                     if p.failed and cfg not in (BASELINE, BASELINE_1S)})
    if others:
        lines.append(f"* **Failed or crashed: {', '.join(others)}** (see \"Crashes and failures\").")
    runs = all_runs(report.matrix)
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
    return lines


def method_lines(report: Report) -> list[str]:
    s = report.settings
    return [
        f"* Test file: {FILE_SIZE // MiB} MiB of random bytes in SRC (ext4); tmemfs cache_size={CACHE_SIZE}, "
        "so the working set fits every cache involved (host page cache, tmemfs page cache).",
        f"* {s.reps} run(s) of {s.runtime} s per point ({'--quick' if s.quick else 'normal mode'}), "
        "taken in interleaved rounds: round 1 of every configuration, then round 2, and so on; "
        "each configuration is mounted afresh for each round. Cells show the median and (min..max).",
        "* Before every fio run the whole file is read once through the mount under test (warm-up).",
        "* fio runs with `--invalidate=0`. fio's default (1) calls posix_fadvise(DONTNEED) on the file "
        "at the start of every pass over it, which would discard the warm-up and make the native "
        "direct=0 jobs read the disk; see \"fio's --invalidate\" below for what the default changes.",
        f"* Before the first run other processes used {report.background[0]:.0%} of a CPU "
        f"(after waiting {report.background[1]:.0f} s, at most {s.wait_quiet_s:.0f} s, for them to drop below "
        f"{BUSY:.0%}).",
        *noise_lines(report.matrix),
        "* Ratios: median IOPS over median IOPS; the range is the min..max of the per-round ratios. "
        f"`ok` means >= {TARGET}x. A job whose run failed once (crash or fio error) is not repeated "
        "on that configuration.",
        f"* The example is started as `{Path(sys.executable).name} passthroughfs.py SRC MNT` (foreground "
        "subprocess in its own session), considered up when MNT appears in /proc/self/mountinfo, stopped "
        "with `fusermount3 -u`, and restarted when a job killed it.",
    ]


def all_runs(matrix: Matrix) -> list[FioResult]:
    return [r for p in matrix.points.values() for r in p.by_round.values() if r.foreign_cpu is not None]


def noise_lines(matrix: Matrix) -> list[str]:
    """How much of the machine others used while fio ran (from /proc/stat minus fio's and the daemon's CPU)."""
    runs = all_runs(matrix)
    if not runs:
        return []
    foreign = [r.foreign_cpu or 0.0 for r in runs]
    steal = [r.steal or 0.0 for r in runs]
    busy = sum(f > BUSY for f in foreign)
    return [f"* CPU used by other processes during each run (machine busy time from /proc/stat minus the CPU "
            f"time of fio and of the daemon under test, in CPUs): median {statistics.median(foreign):.0%}, "
            f"max {max(foreign):.0%}; hypervisor steal: median {statistics.median(steal):.0%}, "
            f"max {max(steal):.0%}. † marks a point with a run where others used more than {BUSY:.0%} of a "
            f"CPU ({busy} of {len(runs)} runs, after {matrix.retried} busy runs were measured again at the end "
            f"and {matrix.replaced} of them replaced by the quieter re-run)."]


def config_table(report: Report) -> list[str]:
    lines = ["| key | what | how it is mounted |", "|---|---|---|"]
    for c in report.configs:
        how = report.mount_commands.get(c.key, "")
        lines.append(f"| {c.key} | {c.label} | `{how}` |" if how else f"| {c.key} | {c.label} | - |")
    return lines


def crash_lines(report: Report) -> list[str]:
    if not report.matrix.crashes:
        failed = failure_lines(report.matrix)
        return ["No mount died during a run.", "", *failed] if failed else ["Nothing crashed or failed."]
    lines = ["| configuration | job | what the daemon logged last |", "|---|---|---|"]
    by_name = {j.name: j for j in JOBS}
    for (cfg, job), evidence in sorted(report.matrix.crashes.items()):
        label = by_name[job].label if job in by_name else job
        lines.append(f"| {cfg} | {label} | `{evidence.replace('|', '/')}` |")
    return [*lines, "", "Every failed point, as fio and the bench saw it:", "", *failure_lines(report.matrix)]


def failure_lines(matrix: Matrix) -> list[str]:
    """One line per configuration and distinct message (a failed mount fails all six jobs alike)."""
    by_msg: dict[tuple[str, str], list[str]] = {}
    by_name = {j.name: j.label for j in JOBS}
    for (cfg, job), p in matrix.points.items():
        if p.failed:
            msg = re.sub(r"^round \d+: ", "", p.failures[0])
            by_msg.setdefault((cfg, msg), []).append(by_name.get(job, job))
    return [f"* {cfg}, {', '.join(jobs) if len(jobs) < len(JOBS) else 'every job'}: {msg}"
            for (cfg, msg), jobs in by_msg.items()]


def sensitivity_lines(report: Report) -> list[str]:
    sens = report.sensitivity
    if sens is None:
        return ["Not measured in this run (skipped in --quick mode)."]
    lines = [f"Same job ({sens.job.label}), one run each, fio's default `--invalidate=1`:", "",
             "| configuration | IOPS with --invalidate=1 | others' CPU during it | main-matrix median "
             "(--invalidate=0) |", "|---|---|---|---|"]
    for key, res in sens.results.items():
        main = report.matrix.points.get((key, sens.job.name))
        main_txt = fmt_iops(statistics.median(main.iops())) if main and main.iops() else "-"
        lines.append(f"| {key} | {res.error or fmt_iops(res.iops)} | {res.foreign_cpu or 0:.0%} | {main_txt} |")
    lines += ["", "With `--invalidate=1` every pass over the file starts with the FUSE inode's page cache "
              "dropped, so the example's timeouts stop mattering much and all FUSE configurations measure "
              "round trips."]
    lines += ["", "Commands:", "", "```", *sens.commands, "```"]
    return lines


def profile_lines(report: Report) -> list[str]:
    if not report.profiles:
        return [f"Not run: {SUBJECT} met the target everywhere, or profiling was turned off."]
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
    return [
        f"Baseline: `{EXAMPLE_MEMBER}` from `{ex.sdist.name}` (sha256 `{ex.sha256}`), {how} with:", "",
        f"    {ex.pip_command}", "",
        f"`{BASELINE}` runs it unmodified. It has no option for its timeouts (argparse: source, mountpoint, "
        f"--debug, --debug-fuse, --enable-writeback-cache), so `{BASELINE_1S}` runs a copy patched at run "
        f"time: the two assignments in `_getattr` that set entry_timeout and attr_timeout to 0 now set "
        f"them to {TMEMFS_TIMEOUT_S} (tmemfs's defaults). Nothing else differs:", "",
        "```diff", ex.diff.rstrip("\n"), "```",
    ]


def interpretation_lines(report: Report) -> list[str]:
    """Facts that explain the numbers, computed from them rather than asserted."""
    pts = report.matrix.points
    lines = []
    job = JOBS[0]
    nat, ex1 = pts.get(("native", job.name)), pts.get((BASELINE_1S, job.name))
    sub, kc = pts.get((SUBJECT, job.name)), pts.get(("tmemfs-none-kc", job.name))
    if ex1 and ex1.iops() and sub and sub.iops():
        lines.append(
            f"* With a {TMEMFS_TIMEOUT_S} s attr_timeout the example's direct=0 reads are kernel page-cache hits "
            f"that never reach Python ({fmt_iops(statistics.median(ex1.iops()))} IOPS for {job.label}"
            + (f", native: {fmt_iops(statistics.median(nat.iops()))}" if nat and nat.iops() else "")
            + f"). tmemfs opens files with direct_io unless `kernel_cache` is given, so every read(2) is a "
            f"FUSE round trip into Python ({fmt_iops(statistics.median(sub.iops()))} IOPS).")
    if kc and kc.iops():
        lines.append(f"* `tmemfs-none-kc` (extra row, `kernel_cache`) shows what tmemfs reaches with the kernel "
                     f"page cache on: {fmt_iops(statistics.median(kc.iops()))} IOPS for {job.label}.")
    ex0 = pts.get((BASELINE, job.name))
    if ex0 and ex0.iops():
        lines.append(f"* The stock example (timeouts 0) pays a GETATTR round trip before every read(2) even "
                     f"though the data comes from the kernel page cache: "
                     f"{fmt_iops(statistics.median(ex0.iops()))} IOPS for {job.label}.")
    seq = JOBS[2]
    ex_seq, sub_seq = pts.get((BASELINE, seq.name)), pts.get((SUBJECT, seq.name))
    if ex_seq and ex_seq.iops() and sub_seq and sub_seq.iops():
        lines.append(f"* {seq.label}: the stock example answers one GETATTR per read(2) and the kernel copies the "
                     f"data from its own page cache ({fmt_iops(statistics.median(ex_seq.iops()))} IOPS); tmemfs "
                     f"assembles 32 cached pages in Python and sends 128 KiB through /dev/fuse per request "
                     f"({fmt_iops(statistics.median(sub_seq.iops()))} IOPS).")
    lines.append("* The machine is shared and noisy (10-20% run to run when quiet, far more when other jobs run: "
                 "see † and the CPU line under Method): compare ratios, and mind the ranges.")
    return lines


def command_lines(matrix: Matrix) -> list[str]:
    """The main matrix's fio lines, grouped by the configurations that ran them."""
    groups: dict[tuple[str, ...], list[str]] = {}
    for cmd, users in matrix.commands.items():
        groups.setdefault(tuple(users), []).append(cmd)
    lines = []
    for keys, cmds in groups.items():
        lines += [f"On {', '.join(keys)}:", "", "```", *cmds, "```", ""]
    lines.append("The profiles below ran the same lines on tmemfs-none; the `--invalidate=1` lines are listed in "
                 "their own section.")
    return lines


def render_report(report: Report) -> str:
    s = report.settings
    out = [
        "# tmemfs benchmarks", "",
        f"Generated by `python -m tools.bench{' --quick' if s.quick else ''}` on {report.started}; "
        f"the whole run took {report.elapsed_s / 60:.1f} min.", "",
        "## Summary", "", *summary_lines(report), "",
        "## Ratios (IOPS, same run)", "", *ratio_table(report, SUBJECT), "",
    ]
    if any(c.key == "tmemfs-none-kc" for c in report.configs):
        out += ["Extra, informational: the same ratios for tmemfs with `kernel_cache`:", "",
                *ratio_table(report, "tmemfs-none-kc"), ""]
    out += [
        "## What the numbers mean", "", *interpretation_lines(report), "",
        "## IOPS: median (min..max)", "", *results_table(report, iops=True), "",
        "## Bandwidth, MiB/s: median (min..max)", "", *results_table(report, iops=False), "",
        "## Configurations", "", *config_table(report), "",
        "## Method", "", *method_lines(report), "",
        "## Crashes and failures", "", *crash_lines(report), "",
        "## Where tmemfs's time goes (profile of the jobs it lost)", "", *profile_lines(report), "",
        "## fio's --invalidate", "", *sensitivity_lines(report), "",
        "## Resident memory", "", *rss_lines(report), "",
        "## The baseline and the patched example", "", *example_lines(report), "",
        "## Machine", "", "| | |", "|---|---|", *[f"| {k} | {v} |" for k, v in report.machine.items()], "",
        "## Versions", "", "| | |", "|---|---|", *[f"| {k} | {v} |" for k, v in report.versions.items()], "",
        "## fio command lines, exactly as run", "", *command_lines(report.matrix), "",
        "Raw fio JSON of every run and the daemons' logs are kept under `bench-results/run/` "
        "(not committed).", "",
    ]
    return "\n".join(out)


# -- main ----------------------------------------------------------------------------------


def mount_command(config: Config, ws: Workspace) -> str:
    if config.kind == "native":
        return ""
    if config.kind == "example":
        return shlex.join([sys.executable, str(ws.example_script(config.options)), str(ws.src), str(ws.mnt)])
    return shlex.join([str(ws.venv_bin / "tmemfs"), str(ws.src), str(ws.mnt), "-o", config.options])


def jobs_to_profile(matrix: Matrix) -> list[Job]:
    """The jobs where tmemfs missed the target against either example configuration."""
    seen: list[Job] = []
    for job, _base, _r in misses(matrix.points):
        if job not in seen:
            seen.append(job)
    return seen


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m tools.bench", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="1 run of 3 s per point (under 3 minutes)")
    parser.add_argument("--out", default="BENCHMARKS.md", help="report file (default BENCHMARKS.md)")
    parser.add_argument("--results-dir", default="bench-results", help="scratch, cache, raw output")
    parser.add_argument("--runtime", type=int, help="seconds per fio run (default 8, quick 3)")
    parser.add_argument("--reps", type=int, help="runs per point (default 3, quick 1)")
    parser.add_argument("--no-profile", action="store_true", help="skip py-spy on the jobs tmemfs lost")
    parser.add_argument("--no-extra", action="store_true", help="skip the informational kernel_cache row")
    parser.add_argument("--wait-quiet", type=float, metavar="SECONDS",
                        help="wait up to this long for other processes to go quiet first (default 60, quick 0)")
    return parser.parse_args(argv)


def settings_from(args: argparse.Namespace) -> Settings:
    runtime = args.runtime or (3 if args.quick else 8)
    reps = args.reps or (1 if args.quick else 3)
    wait = args.wait_quiet if args.wait_quiet is not None else (0.0 if args.quick else 60.0)
    return Settings(runtime, reps, args.quick, not args.no_profile, not args.quick,
                    15.0 if args.quick else 120.0, wait)


def _raise_interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def background_cpu(seconds: float = 2.0) -> float:
    """CPUs' worth used by others while we do nothing."""
    before = cpu_sample(None)
    time.sleep(seconds)
    return with_cpu(FioResult(), before, cpu_sample(None)).foreign_cpu or 0.0


def wait_for_quiet(max_wait: float) -> tuple[float, float]:
    """(background CPU when we started measuring, seconds waited for it to drop below BUSY)."""
    t0 = time.monotonic()
    load = background_cpu()
    while load > BUSY and time.monotonic() - t0 < max_wait:
        log(f"other processes use {load:.0%} of a CPU: waiting for quiet "
            f"({max_wait - (time.monotonic() - t0):.0f} s left)")
        load = background_cpu(5.0)
    return load, time.monotonic() - t0


def run(args: argparse.Namespace) -> Report:
    """The whole benchmark; every mount is undone by the Mount context managers or kill_leftovers."""
    t0 = time.monotonic()
    settings = settings_from(args)
    ws = Workspace(Path(args.results_dir).resolve(), Path(sys.executable).parent)
    configs = [c for c in CONFIGS if not (c.extra and args.no_extra)]
    ws.prepare()
    report = Report(settings, configs, Matrix(), machine_facts(ws), versions(), None,
                    datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z"))
    start_digest = source_digest()
    try:
        report.example = fetch_example(ws, report.versions["pyfuse3"])
        make_file(ws.src / FILE_NAME, FILE_SIZE)
        report.mount_commands = {c.key: mount_command(c, ws) for c in configs}
        report.background = wait_for_quiet(settings.wait_quiet_s)
        report.matrix = run_matrix(ws, configs, settings)
        retry_busy(ws, configs, settings, report.matrix)
        if settings.profile:
            subject = next(c for c in configs if c.key == SUBJECT)
            report.profiles = [run_profile(ws, subject, job, settings) for job in jobs_to_profile(report.matrix)]
        if settings.sensitivity:
            keys = (BASELINE, BASELINE_1S, SUBJECT)
            report.sensitivity = run_sensitivity(ws, [c for c in configs if c.key in keys], settings)
        log("resident memory check")
        report.rss = measure_rss(ws)
    finally:
        kill_leftovers(ws)
    report.digests = (start_digest, source_digest())
    report.versions["tmemfs sources (sha256 of fusefs/ and backends/ *.py)"] = " -> ".join(
        dict.fromkeys(report.digests))
    report.elapsed_s = time.monotonic() - t0
    return report


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, _raise_interrupt)
    try:
        report = run(args)
    except KeyboardInterrupt:
        log("interrupted: everything is unmounted, no report written")
        return 130
    Path(args.out).write_text(render_report(report))
    log(f"wrote {args.out} in {report.elapsed_s / 60:.1f} min")
    for line in summary_lines(report):
        print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
