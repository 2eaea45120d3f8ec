"""Many requests in flight (issue 13): tmemfs against libfuse's C pass-through, disk-bound; BENCHMARKS.md's section.

Run from the repository root with the project's venv (needs root, /dev/fuse, fio, gcc and libfuse3-dev for the
C peer, redis-server for the cluster row):

    .venv/bin/python -m tools.bench_inflight [--quick] [--out BENCHMARKS.md] [--size 256M] [--from-json REPORT]

Everything is measured in interleaved rounds (round 1 of every configuration, then round 2, ...), every
configuration mounted afresh in each round, and judged by ratios of numbers from the same run, because the
virtual disk's speed moves by more than the differences measured:

* reads: fio --direct=1 4k randread psync QD1, 4k randread libaio QD16 and 128k sequential read psync QD1 on
  a file of text in SRC (ext4), served by native SRC, libfuse's passthrough_ll (threads and -s, built from
  Debian's libfuse3-dev example into the bench workspace), the null file system, the floor (the null file
  system reading SRC as tmemfs reads it on a miss, with no page cache and no cleancache: what pyfuse3, trio
  and the event loop cost, apart from tmemfs's data path), and tmemfs: cleancache=none with the default
  max_requests and with max_requests=1, the file held by cleancache=tmem, page-cache hits;
* a writer: 4k randread libaio QD16 of one file, alone and while dd writes 512 MiB to another file of the
  same mount (tmemfs cleancache=none; native SRC beside it, to show what the disk itself loses);
* a cluster node on Redis (cleancache=cluster): 4k randread libaio QD16 against QD1.

Issue 13's targets are printed MET or MISSED. Only the text between `<!-- inflight:begin -->` and
`<!-- inflight:end -->` is written. Every mount, FUSE daemon, redis-server, dd and fio is stopped in a
finally, also on an error or Ctrl-C.
"""

from __future__ import annotations

import argparse
import datetime
import shlex
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from contextlib import ExitStack, suppress
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from backends.base import size_in_bytes
from tools.corpus import make_text_file
from tools.fio import (
    WORKLOAD,
    FioResult,
    Job,
    Matrix,
    Point,
    fio_command,
    job_span,
    matrix_from_json,
    matrix_to_json,
    parse_fio_json,
    with_cpu,
)
from tools.machine import (
    command_output,
    cpu_sample,
    machine_facts,
    note_digests,
    source_digest,
    start_redis,
    store_versions,
    wait_for_quiet,
)
from tools.mounting import Config, Mount, Workspace, end_process, kill_leftovers, mount_argv, wait_store_up
from tools.report import (
    Progress,
    Ratio,
    add_from_json,
    add_output_options,
    cell,
    fmt_iops,
    grouped_commands,
    log,
    machine_lines,
    markdown,
    markers,
    measured_or_loaded,
    mmss,
    noise_lines,
    placeholders,
    plain_ratio,
    point_ratio,
    publish,
    run_json,
    section_parser,
    subsection,
    table,
    verdict_line,
)
from tools.rounds import RUN_OVERHEAD_S, Part, Settings, measure_job, run_round

MiB = 1 << 20
BEGIN, END = markers("inflight")
ROOT = Path("bench-results/inflight")  # workspace: SRC, mount point, the built peer, raw output (not committed)
DEFAULT_SIZE = 256 * MiB
CLUSTER_SIZE = 32 * MiB  # a cluster node fills Redis at ~0.8 ms a page: 256 MiB would take a minute a round
CLUSTER_NAME = f"cluster-{CLUSTER_SIZE // MiB}M.dat"
OTHER_NAME = "dd-other.dat"  # what dd writes, beside the file fio reads
DD_MIB = 512
WRITER_RUNTIME_S = 3.0  # at least: dd (about 2 s through tmemfs here, its fsync included) ends within fio's run
FIO_START_S = 10.0  # how long dd waits for fio's job to open its file before it starts anyway
DD_TIMEOUT_S = 300.0
LOG_MS = 100  # fio's IOPS log granularity: the "during dd" windows
DISK_MOVED = 1.25  # native's max/min over rounds above this: the disk's speed changed during the run
PEER_SOURCE = Path("/usr/share/doc/libfuse3-dev/examples/passthrough_ll.c")
NONE_OPTIONS = "cleancache=none,backing_io=direct,cache_size=64M"

QD1 = Job(WORKLOAD["4k-randread"], "psync", 1, 1)
QD16 = Job(WORKLOAD["4k-randread"], "libaio", 16, 1)
SEQ = Job(WORKLOAD["128k-read"], "psync", 1, 1)
READ_JOBS: tuple[Job, ...] = (QD1, QD16, SEQ)
WRITER_JOB = QD16  # the reader beside dd: with 16 in flight a daemon serving one request at a time shows

NATIVE, PEER, PEER_S, NULL, FLOOR = "native", "passthrough_ll", "passthrough_ll-s", "null", "floor"
NONE, NONE_MR1, HELD, HITS = "none", "none-mr1", "tmem-held", "pagecache-hits"
WRITER_NATIVE, WRITER_TMEMFS, CLUSTER = "writer-native", "writer-tmemfs", "cluster-redis"
ALONE, DURING_DD = "alone", "during-dd"  # the writer part's two points per configuration


def text_name(size: int) -> str:
    return f"text-{size // MiB}M.dat"


def read_configs(size: int) -> tuple[Config, ...]:
    """The read matrix; only the configurations that test a cache read the file through them first."""
    mib = size // MiB
    return (
        Config(NATIVE, "native ext4: the file in SRC itself", "native", backing="disk (fio's O_DIRECT)",
               warm=False),
        Config(PEER, "libfuse passthrough_ll, threaded", "peer", "",
               backing="disk (the caller's O_DIRECT reaches its backing open)", warm=False),
        Config(PEER_S, "libfuse passthrough_ll -s (one thread)", "peer", "-s", backing="disk, as above",
               warm=False),
        Config(NULL, "null file system (tools/nullfs.py): zeros, one pyfuse3 process", "null", backing="none",
               warm=False),
        Config(FLOOR, "the floor: tools/nullfs.py --backing SRC, a miss as tmemfs serves it (max_requests, "
               "poll_us, SrcIO) without page cache or cleancache", "null", "backing",
               backing="disk (O_DIRECT, as backing_io=direct)", warm=False),
        Config(NONE, "tmemfs cleancache=none, default max_requests", "tmemfs", NONE_OPTIONS,
               backing="disk (backing_io=direct), beside a 64 MiB page cache", warm=False),
        Config(NONE_MR1, "tmemfs cleancache=none, max_requests=1 (one request at a time)", "tmemfs",
               f"{NONE_OPTIONS},max_requests=1", backing="as none", warm=False),
        Config(HELD, "tmemfs, the file held by cleancache=tmem (read through once first)", "tmemfs",
               f"cleancache=tmem,backing_io=direct,cache_size=16M,cc_size={2 * mib}M",
               backing="the tmem pool (process memory)"),
        Config(HITS, "tmemfs page-cache hits (cache larger than the file, read through once first)", "tmemfs",
               f"cleancache=none,backing_io=direct,cache_size={mib + 64}M", backing="tmemfs's page cache"),
    )


def writer_configs() -> tuple[Config, ...]:
    return (Config(WRITER_NATIVE, "native ext4 (dd writes into SRC)", "native", backing="disk", warm=False),
            Config(WRITER_TMEMFS, "tmemfs cleancache=none, default max_requests", "tmemfs", NONE_OPTIONS,
                   backing="disk (backing_io=direct)", warm=False))


def cluster_config(store_url: str) -> Config:
    return Config(CLUSTER, "tmemfs cluster node, Redis on TCP loopback (file read through once first)", "tmemfs",
                  f"cleancache=cluster,cc_store={store_url},backing_io=direct,cache_size=4M,cc_size=64M",
                  backing="the Redis pool")


def read_part(size: int, with_peer: bool = True) -> Part:
    configs = tuple(c for c in read_configs(size) if with_peer or c.kind != "peer")
    return Part("reads", "reads", configs, READ_JOBS, text_name(size), size=size)


def writer_part(size: int) -> Part:
    return Part("writer", "a reader beside dd", writer_configs(), (WRITER_JOB,), text_name(size), size=size)


def cluster_part(store_url: str) -> Part:
    return Part("cluster", "a cluster node on Redis", (cluster_config(store_url),), (QD1, QD16), CLUSTER_NAME,
                size=CLUSTER_SIZE)


# -- targets ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Target:
    """One of issue 13's targets: subject IOPS / base IOPS (each a (configuration, job name) point) >= threshold."""

    label: str
    subject: tuple[str, str]
    base: tuple[str, str]
    threshold: float


TARGETS: tuple[Target, ...] = (
    Target("none >= 0.9x passthrough_ll (threads), 4k randread QD1", (NONE, QD1.name), (PEER, QD1.name), 0.9),
    Target("none >= 0.9x passthrough_ll (threads), 128k read QD1", (NONE, SEQ.name), (PEER, SEQ.name), 0.9),
    Target("none >= 0.75x passthrough_ll (threads), 4k randread libaio QD16", (NONE, QD16.name),
           (PEER, QD16.name), 0.75),
    *(Target(f"tmem-held >= 1.0x passthrough_ll (threads), {job.workload.label} {job.engine}", (HELD, job.name),
             (PEER, job.name), 1.0) for job in READ_JOBS),
    Target("page-cache hits >= 0.6x the null fs, 4k randread libaio QD16", (HITS, QD16.name), (NULL, QD16.name),
           0.6),
    Target("none, 4k randread QD1: default max_requests >= 0.95x max_requests=1", (NONE, QD1.name),
           (NONE_MR1, QD1.name), 0.95),
    Target(f"a 4k randread libaio QD16 reader keeps >= 0.8x of its IOPS while dd writes {DD_MIB} MiB to another "
           "file of the mount (tmemfs none)", (WRITER_TMEMFS, DURING_DD), (WRITER_TMEMFS, ALONE), 0.8),
    Target("cluster node on Redis: 4k randread libaio QD16 >= 4x its QD1 IOPS", (CLUSTER, QD16.name),
           (CLUSTER, QD1.name), 4.0),
)


@dataclass(frozen=True)
class Verdict:
    """A target's ratio (None without numbers on both sides), MET / MISSED / n/a, and why when not measured."""

    target: Target
    ratio: Ratio | None
    result: str
    why: str = ""

    @property
    def measured(self) -> str:
        r = self.ratio
        straddle = r is not None and r.lo < self.target.threshold <= r.hi
        return ratio_text(r) + (" (rounds straddle the target)" if straddle else "")


def ratio_text(r: Ratio | None) -> str:
    return "-" if r is None else str(r)


def judge(target: Target, points: dict[tuple[str, str], Point]) -> Verdict:
    """MET when the ratio of the medians reaches the threshold. tmemfs (the subject) failing misses the
    target; a baseline that failed, or a side not measured, leaves it n/a. Either way the reason is said."""
    for key, failed in ((target.subject, "MISSED"), (target.base, "n/a")):
        point = points.get(key)
        if point is None or (not point.failed and not point.by_round):
            return Verdict(target, None, "n/a", f"{key[0]} not measured")
        if point.failed:
            return Verdict(target, None, failed, f"{key[0]} failed: {point.failures[0]}")
    r = point_ratio(points, target.subject, target.base)
    if r is None:
        return Verdict(target, None, "n/a", "no run of a side")
    return Verdict(target, r, "MET" if r.median >= target.threshold else "MISSED")


# -- the writer: fio beside dd --------------------------------------------------------------------------------


@dataclass(frozen=True)
class DdRun:
    """One dd beside a fio reader. Times are seconds from the start of fio's job (fio's report is stamped at
    its end, after job_runtime), so fio's own start-up is not mistaken for reading beside dd."""

    config: str
    round: int
    dd_s: float = 0.0  # dd's wall time, start to exit (its fsync included)
    fio_s: float = 0.0  # fio's job runtime
    dd_start: float = 0.0  # usually < 0: dd started first
    dd_end: float = 0.0
    whole_iops: float = 0.0  # fio's IOPS over its whole run
    during_iops: float = 0.0  # ... over the windows of its IOPS log that lie within dd's run
    window_s: float = 0.0  # the part of fio's run counted as during dd
    error: str | None = None

    @property
    def ended_first(self) -> bool:
        """dd was done before fio: the rest of fio's run is not counted."""
        return self.dd_end < self.fio_s


def iops_log(text: str) -> list[tuple[float, float]]:
    """(end of window in ms, IOPS) from fio's --write_iops_log with --log_avg_msec."""
    rows = []
    for line in text.splitlines():
        fields = [f.strip() for f in line.split(",")]
        with suppress(ValueError, IndexError):
            rows.append((float(fields[0]), float(fields[1])))
    return rows


def window_iops(rows: Sequence[tuple[float, float]], start_ms: float, end_ms: float) -> tuple[float, float] | None:
    """Mean IOPS over the log windows that lie within [start_ms, end_ms], and the seconds they cover;
    None when no whole window does."""
    if not rows:
        return None
    begins = [0.0, *(end for end, _ in rows[:-1])]
    kept = [(end - begin, iops) for begin, (end, iops) in zip(begins, rows, strict=True)
            if begin >= start_ms and end <= end_ms and end > begin]
    covered = sum(span for span, _ in kept)
    if not kept or covered <= 0:
        return None
    return sum(span * iops for span, iops in kept) / covered, covered / 1000


def dd_command(target: Path) -> list[str]:
    return ["dd", "if=/dev/zero", f"of={target}", "bs=1M", f"count={DD_MIB}", "oflag=direct", "conv=fsync"]


@dataclass(frozen=True)
class Beside:
    """What run_beside_dd saw: fio's outcome and dd's (wall-clock epoch times, so they compare with fio's)."""

    result: FioResult
    stdout: str = ""
    dd_start: float = 0.0
    dd_end: float = 0.0
    dd_error: str | None = None


def run_beside_dd(fio_cmd: list[str], dd_cmd: list[str], target: Path, raw: Path, runtime: float,
                  daemon_pid: int | None) -> Beside:
    """fio for its fixed runtime, dd started as soon as fio's job has `target` open; wait for both (each stopped
    in a finally). fio's start-up (0.2-0.5 s here) is longer than dd takes on native SRC: dd first could end
    before fio's job began."""
    pids = () if daemon_pid is None else (daemon_pid,)
    before = cpu_sample(pids)
    dd_out, err = raw.with_suffix(".dd.txt"), raw.with_suffix(".err")
    procs: list[subprocess.Popen[bytes]] = []
    with open(raw, "w") as out, open(err, "w") as errf, open(dd_out, "w") as ddf:
        try:
            fio = subprocess.Popen(fio_cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=errf)
            procs.append(fio)
            wait_open(fio, target)
            dd_start = time.time()
            dd = subprocess.Popen(dd_cmd, stdin=subprocess.DEVNULL, stdout=ddf, stderr=subprocess.STDOUT)
            procs.append(dd)
            dd_end = wait_both(fio, dd, runtime)
        except subprocess.TimeoutExpired as exc:
            return Beside(FioResult(error=f"{exc.cmd[0]} did not finish within {exc.timeout:g} s"))
        finally:
            for proc in procs:  # fio ends its job cleanly on SIGTERM
                end_process(proc)
    stdout = raw.read_text()
    result = with_cpu(parse_fio_json(stdout, err.read_text(), fio.returncode), before, cpu_sample(pids))
    dd_error = None if dd.returncode == 0 else f"dd exited {dd.returncode}: {last_line(dd_out)}"
    return Beside(result, stdout, dd_start, dd_end, dd_error)


def wait_open(fio: subprocess.Popen[bytes], target: Path) -> None:
    """Until fio or a job process it forked has `target` open (its job is starting), fio ended, or FIO_START_S."""
    deadline = time.monotonic() + FIO_START_S
    while fio.poll() is None and time.monotonic() < deadline and not has_open([fio.pid, *children(fio.pid)], target):
        time.sleep(0.002)


def children(pid: int) -> list[int]:
    try:
        return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


def has_open(pids: Sequence[int], target: Path) -> bool:
    for pid in pids:
        with suppress(OSError):
            for fd in Path(f"/proc/{pid}/fd").iterdir():
                with suppress(OSError):
                    if fd.readlink() == target:
                        return True
    return False


def wait_both(fio: subprocess.Popen[bytes], dd: subprocess.Popen[bytes], runtime: float) -> float:
    """Poll both until each has exited; when dd did (epoch seconds). TimeoutExpired if one hangs."""
    dd_end: float | None = None
    deadline = time.monotonic() + runtime + 60
    while fio.poll() is None:
        if dd_end is None and dd.poll() is not None:
            dd_end = time.time()
        if time.monotonic() > deadline:
            raise subprocess.TimeoutExpired(fio.args, runtime + 60)
        time.sleep(0.005)
    if dd_end is None:
        dd.wait(timeout=DD_TIMEOUT_S)
        dd_end = time.time()
    return dd_end


def last_line(path: Path) -> str:
    lines = path.read_text(errors="replace").strip().splitlines()
    return lines[-1] if lines else "(no output)"


def measure_beside_dd(mount: Mount, part: Part, settings: Settings, matrix: Matrix, round_: int) -> DdRun:
    """The reader while dd writes DD_MIB MiB into another file of the same mount; counted while dd ran."""
    key, ws = mount.config.key, mount.ws
    other = mount.path / OTHER_NAME
    log_prefix = ws.raw / f"{part.key}.{key}.r{round_ + 1}"
    cmd = [*fio_command(WRITER_JOB, mount.path / part.read_file, settings.runtime, size=part.size),
           f"--write_iops_log={log_prefix}", f"--log_avg_msec={LOG_MS}"]
    dd_cmd = dd_command(other)
    matrix.note_command(dd_cmd, key)
    matrix.note_command(cmd, key)
    try:
        seen = run_beside_dd(cmd, dd_cmd, mount.path / part.read_file,
                             ws.raw / f"{part.key}.{key}.dd.r{round_ + 1}.json", settings.runtime, mount.pid)
    finally:
        with suppress(OSError):
            other.unlink()
    run = dd_run(key, round_, seen, Path(f"{log_prefix}_iops.1.log"))
    matrix.point(key, DURING_DD).add(round_, replace(seen.result, iops=run.during_iops, bw=run.during_iops * 4096,
                                                     error=run.error))
    return run


def dd_run(key: str, round_: int, seen: Beside, log_file: Path) -> DdRun:
    """dd's times against fio's job, and the error that makes "during dd" meaningless, if any."""
    span = job_span(seen.stdout)
    error = seen.result.error or seen.dd_error or (None if span else "fio's report has no job times")
    if error or span is None:
        return DdRun(key, round_, whole_iops=seen.result.iops, error=error)
    start, runtime = span
    run = DdRun(key, round_, seen.dd_end - seen.dd_start, runtime, seen.dd_start - start, seen.dd_end - start,
                seen.result.iops)
    rows = iops_log(log_file.read_text()) if log_file.exists() else []
    window = window_iops(rows, max(0.0, run.dd_start) * 1000, run.dd_end * 1000)
    if window is None:
        why = "fio wrote no IOPS log" if not rows else (
            f"dd and fio's job overlapped for less than one {LOG_MS} ms window (dd ended {run.dd_end:.2f} s "
            "after fio's job started)")
        return replace(run, error=why)
    return replace(run, during_iops=window[0], window_s=window[1])


def writer_round(ws: Workspace, part: Part, settings: Settings, report: Report, round_: int,
                 progress: Progress) -> None:
    """Per configuration, a fresh mount: the reader alone, then beside dd."""
    for config in part.configs:
        where = f"writer round {round_ + 1}/{settings.reps} {config.key}"
        with suppress(OSError):
            (ws.src / OTHER_NAME).unlink()  # left over from a killed run
        run: DdRun | None = None
        try:
            with Mount(config, ws, part.files, part.size) as mount:
                alone = measure_job(mount, WRITER_JOB, part, settings, report.matrix, round_)
                report.matrix.point(config.key, ALONE).add(round_, alone)
                progress.step(f"{where} alone: {alone.error or fmt_iops(alone.iops) + ' IOPS'}")
                run = measure_beside_dd(mount, part, settings, report.matrix, round_)
        except RuntimeError as exc:  # the mount (or its unmount) failed: what it did not measure fails with it
            if run is None:
                run = DdRun(config.key, round_, error=f"mount failed: {exc}")
                report.matrix.point(config.key, DURING_DD).add(round_, FioResult(error=run.error))
            if round_ not in report.matrix.point(config.key, ALONE).by_round:
                report.matrix.point(config.key, ALONE).add(round_, FioResult(error=run.error))
                progress.step(f"{where} alone: {run.error}", ran=False)
        report.dd_runs.append(run)
        progress.step(f"{where} beside dd: " + (run.error or f"dd {run.dd_s:.1f} s, fio {run.fio_s:.1f} s"))


# -- the peer ------------------------------------------------------------------------------------------------


def build_peer(ws: Workspace) -> str:
    """Compile libfuse's passthrough_ll into the workspace (never the repository) when missing or stale;
    the command, as the report shows it."""
    flags = command_output(["pkg-config", "fuse3", "--cflags", "--libs"]).split()
    cmd = ["gcc", "-O2", "-o", str(ws.peer), str(PEER_SOURCE), *flags]
    if not PEER_SOURCE.exists():
        raise RuntimeError(f"{PEER_SOURCE} is missing (apt-get install libfuse3-dev)")
    if not ws.peer.exists() or ws.peer.stat().st_mtime < PEER_SOURCE.stat().st_mtime:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=300, check=False)
        if done.returncode != 0:
            raise RuntimeError(f"{shlex.join(cmd)} exited {done.returncode}: {done.stderr.strip()[-300:]}")
    return shlex.join(cmd)


# -- the run ---------------------------------------------------------------------------------------------------


@dataclass
class Report:
    """Everything the section says; render() is a pure function of it."""

    settings: Settings
    size: int
    machine: dict[str, str]
    versions: dict[str, str]
    started: str
    matrix: Matrix = field(default_factory=Matrix)
    dd_runs: list[DdRun] = field(default_factory=list)
    mount_commands: dict[str, str] = field(default_factory=dict)  # configuration -> command line
    peer_build: str = ""
    paths: dict[str, str] = field(default_factory=dict)  # placeholder -> path, as command lines are shown
    notes: list[str] = field(default_factory=list)
    background: tuple[float, float] = (0.0, 0.0)  # others' CPU at the start, seconds waited for quiet
    elapsed_s: float = 0.0


def settings_from(args: argparse.Namespace) -> Settings:
    """--quick: 1 round of 1 s runs (about a minute); otherwise 3 rounds of 4 s (about 9 minutes)."""
    runtime = args.runtime or (1.0 if args.quick else 4.0)
    reps = args.rounds or (1 if args.quick else 3)
    wait = args.wait_quiet if args.wait_quiet is not None else (0.0 if args.quick else 30.0)
    return Settings(runtime, reps, args.quick, profile=False, sensitivity=False, wait_quiet_s=wait,
                    parts=("inflight",))


def writer_settings(settings: Settings) -> Settings:
    return replace(settings, runtime=max(settings.runtime, WRITER_RUNTIME_S))


def steps_per_round(parts: Sequence[Part]) -> int:
    """Progress steps of one round: a fio run each, and two per writer configuration."""
    return sum(len(p.configs) * (2 if p.key == "writer" else len(p.jobs)) for p in parts)


def run(args: argparse.Namespace) -> Report:
    """The whole benchmark; every mount, daemon and server is undone in the finally (kill_leftovers, the stack)."""
    t0 = time.monotonic()
    settings, size = settings_from(args), size_in_bytes(args.size)
    ws = Workspace(Path(args.results_dir).resolve(), Path(sys.executable).parent)
    ws.prepare()
    report = Report(settings, size, machine_facts(ws.src), store_versions(),
                    datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"))
    report.paths = {"SRC": str(ws.src), "MNT": str(ws.mnt), "WS": str(ws.root), ".venv/bin": str(ws.venv_bin)}
    start_digest = source_digest()
    with ExitStack() as stack:
        try:
            parts, redis = prepare(ws, report, stack)
            report.background = wait_for_quiet(settings.wait_quiet_s, log)
            per_round = steps_per_round(parts)
            log(f"plan: {settings.reps} round(s) of {per_round} steps, fio runs of {settings.runtime:g} s, about "
                f"{mmss(settings.reps * per_round * (settings.runtime + RUN_OVERHEAD_S + 0.4))}")
            progress = Progress(settings.reps * per_round, settings.runtime + RUN_OVERHEAD_S)
            for round_ in range(settings.reps):
                measure_round(ws, parts, settings, report, round_, progress, redis)
        finally:
            kill_leftovers(ws)
    digests = note_digests(start_digest, report.versions)
    if digests[0] != digests[1]:
        report.notes.append("**tmemfs's sources changed while the benchmark ran**: later rounds may have measured "
                            "other code.")
    report.elapsed_s = time.monotonic() - t0
    return report


def prepare(ws: Workspace, report: Report, stack: ExitStack) -> tuple[list[Part], Any]:
    """The peer, the files, redis-server (stopped when `stack` closes): the parts that can run, and the
    server (a tests.redisservers.RedisServer, or None)."""
    with_peer = True
    try:
        report.peer_build = build_peer(ws)
    except (OSError, RuntimeError) as exc:
        with_peer = False
        report.notes.append(f"passthrough_ll could not be built ({exc}): no passthrough_ll columns")
    log(f"workspace {ws.root}; the {report.size // MiB} MiB file of text in SRC")
    make_text_file(ws.src / text_name(report.size), report.size)
    make_text_file(ws.src / CLUSTER_NAME, CLUSTER_SIZE)
    parts = [read_part(report.size, with_peer), writer_part(report.size)]
    redis, why = start_redis(stack, ws.root / "run")
    if redis is None:
        report.notes.append(f"{why}: no cluster row")
    else:
        parts.append(cluster_part(redis.url))
    report.mount_commands = {c.key: shlex.join(mount_argv(c, ws, p.files, p.size))
                             for p in parts for c in p.configs if c.kind != "native"}
    return parts, redis


def measure_round(ws: Workspace, parts: Sequence[Part], settings: Settings, report: Report, round_: int,
                  progress: Progress, redis: Any) -> None:
    """One round of every part, in the same order every round."""
    for part in parts:
        log(f"round {round_ + 1}/{settings.reps}: {part.title}")
        if part.key == "writer":
            writer_round(ws, part, writer_settings(settings), report, round_, progress)
        elif part.key == "cluster":
            run_round(ws, part, settings, progress, report.matrix, round_, ready=lambda m: wait_store_up(m.path))
            with suppress(OSError, subprocess.SubprocessError):
                redis.cli("FLUSHALL")  # every round's node fills an empty pool
        else:
            run_round(ws, part, settings, progress, report.matrix, round_)


# -- the report ------------------------------------------------------------------------------------------------


def verdicts(report: Report) -> list[Verdict]:
    return [judge(t, report.matrix.points) for t in TARGETS]


def mark(result: str) -> str:
    return f"**{result}**" if result == "MISSED" else result


def target_table(report: Report) -> list[str]:
    return table(["target", "measured: ratio of medians (per-round range)", "result"],
                 [[v.target.label, v.measured, mark(v.result) + (f" ({v.why})" if v.why else "")]
                  for v in verdicts(report)])


def config_keys(report: Report, part_key: str) -> list[str]:
    """The configurations of a part that have points in this run, in the part's order."""
    measured = {c for c, _ in report.matrix.points}
    return [c.key for c in all_configs(report.size) if c.key in measured and part_of(c.key) == part_key]


def all_configs(size: int) -> tuple[Config, ...]:
    return (*read_configs(size), *writer_configs(), cluster_config("redis://127.0.0.1:PORT/0"))


def part_of(key: str) -> str:
    return "writer" if key.startswith("writer") else "cluster" if key == CLUSTER else "reads"


def read_table(report: Report) -> list[str]:
    keys = config_keys(report, "reads")
    pts = report.matrix.points
    lines = ["| job | " + " | ".join(keys) + " |", "|" + "---|" * (len(keys) + 1)]
    for job in READ_JOBS:
        lines.append(f"| {job.workload.label} {job.engine} | "
                     + " | ".join(cell(pts.get((k, job.name))) for k in keys) + " |")
    return lines


def peer_ratio_table(report: Report) -> list[str]:
    """Every configuration against passthrough_ll (threads), informative beside the targets."""
    keys = [k for k in config_keys(report, "reads") if k != PEER]
    lines = ["| job | " + " | ".join(f"{k} / {PEER}" for k in keys) + " |", "|" + "---|" * (len(keys) + 1)]
    for job in READ_JOBS:
        lines.append(f"| {job.workload.label} {job.engine} | "
                     + " | ".join(plain_ratio(report.matrix.points, k, PEER, job.name) for k in keys) + " |")
    return lines


def floor_table(report: Report) -> list[str]:
    """What the design's floor reaches against the C peer, and what tmemfs's data path (page cache, cleancache
    frontend, page locks) costs on a miss on top of it."""
    pts = report.matrix.points
    lines = [f"| job | {FLOOR} / {PEER} | {NONE} / {FLOOR} | {NONE} / {PEER} |", "|---|---|---|---|"]
    for job in READ_JOBS:
        lines.append(f"| {job.workload.label} {job.engine} | {plain_ratio(pts, FLOOR, PEER, job.name)} | "
                     f"{plain_ratio(pts, NONE, FLOOR, job.name)} | {plain_ratio(pts, NONE, PEER, job.name)} |")
    return lines


def native_lines(report: Report) -> list[str]:
    """Native's IOPS round by round: a disk that slowed down (throttling) shows here, not in the ratios."""
    lines = []
    for job in READ_JOBS:
        point = report.matrix.points.get((NATIVE, job.name))
        if point is None or not point.by_round:
            continue
        rounds = ", ".join(f"r{r + 1} {fmt_iops(res.iops)}" for r, res in sorted(point.by_round.items()))
        iops = point.iops()
        moved = max(iops) / min(iops) if min(iops) > 0 else float("inf")
        warn = (f" **the disk's speed moved {moved:.2f}x between rounds** (throttled?): compare within a round"
                if moved > DISK_MOVED else "")
        lines.append(f"* native, {job.workload.label} {job.engine}: {rounds}.{warn}")
    return lines


def writer_table(report: Report) -> list[str]:
    pts = report.matrix.points
    lines = ["| configuration | alone | during dd | during / alone | seconds of fio's run during dd | "
             "fio's whole run beside dd | dd (median) | dd ended before fio |", "|---|---|---|---|---|---|---|---|"]
    for key in config_keys(report, "writer"):
        runs = [r for r in report.dd_runs if r.config == key and not r.error]
        lines.append(f"| {key} | {cell(pts.get((key, ALONE)))} | {cell(pts.get((key, DURING_DD)))} | "
                     f"{ratio_text(point_ratio(pts, (key, DURING_DD), (key, ALONE)))} | {dd_cells(runs)} |")
    return lines


def dd_cells(runs: Sequence[DdRun]) -> str:
    """The seconds counted as during dd, fio's whole-run IOPS, dd's time and rate, and per round whether dd
    ended before fio (four cells)."""
    if not runs:
        return "- | - | - | -"
    dd_s = statistics.median(r.dd_s for r in runs)
    early = ", ".join(f"r{r.round + 1} " + (f"yes, {r.fio_s - r.dd_end:.1f} s before fio's end" if r.ended_first
                                             else f"no ({r.dd_end - r.fio_s:.1f} s after)") for r in runs)
    return (f"{statistics.median(r.window_s for r in runs):.1f} of {statistics.median(r.fio_s for r in runs):.1f} | "
            f"{fmt_iops(statistics.median(r.whole_iops for r in runs))} | {dd_s:.1f} s ({DD_MIB / dd_s:.0f} MiB/s) | "
            f"{early}")


def cluster_table(report: Report) -> list[str]:
    pts = report.matrix.points
    if not any(k == CLUSTER for k, _ in pts):
        return ["Not measured (no redis-server: see the notes)."]
    return ["| 4k randread QD1 (psync) | 4k randread libaio QD16 | QD16 / QD1 |", "|---|---|---|",
            f"| {cell(pts.get((CLUSTER, QD1.name)))} | {cell(pts.get((CLUSTER, QD16.name)))} | "
            f"{ratio_text(point_ratio(pts, (CLUSTER, QD16.name), (CLUSTER, QD1.name)))} |"]


def config_table(report: Report) -> list[str]:
    lines = ["| key | what | reads come from | mount command |", "|---|---|---|---|"]
    for c in all_configs(report.size):
        if any(k == c.key for k, _ in report.matrix.points):
            how = placeholders(report.mount_commands.get(c.key, ""), report.paths)
            lines.append(f"| {c.key} | {c.label} | {c.backing} | " + (f"`{how}`" if how else "- (SRC itself)") + " |")
    return lines


def shown_commands(report: Report) -> Matrix:
    """The run's command lines as shown: placeholders for paths, regrouped by the configurations using them."""
    out = Matrix()
    for cmd, users in report.matrix.commands.items():
        for user in users:
            out.note_command(shlex.split(placeholders(cmd, report.paths)), user)
    return out


def failure_lines(report: Report) -> list[str]:
    """Every failed point with its first message: a failure is reported, never averaged away."""
    return [f"* **{cfg}, {job}**: {p.failures[0]}" + (f" (daemon: `{report.matrix.crashes[(cfg, job)]}`)"
                                                     if (cfg, job) in report.matrix.crashes else "")
            for (cfg, job), p in report.matrix.points.items() if p.failed]


def method_lines(report: Report) -> list[str]:
    s, mib = report.settings, report.size // MiB
    return [
        f"* {s.reps} round(s), interleaved: in each round every configuration is mounted afresh and runs its "
        f"jobs once (reads, then the writer, then the cluster node); fio runs of {s.runtime:g} s. Cells: median "
        "(min..max) over rounds; ratios: median over median, with the range of the per-round ratios. "
        "† marks a point with a run where other processes used more than a quarter of a CPU.",
        f"* The file: `{text_name(report.size)}`, {mib} MiB of text (tools/corpus.py) in SRC. "
        f"The issue measured 1 GiB; {mib} MiB is the default here because the virtual disk is rate-limited: "
        "after a few GB of heavy I/O its 4k QD1 speed fell 10x for minutes (docs/anchors), and every round "
        "reads the file through the mounts that hold it. `--size 1G` measures the issue's size. With "
        f"{mib} MiB, up to {min(1.0, 64 / mib):.0%} of none's 4k reads can be hits of its 64 MiB page cache "
        "(6% at 1 GiB).",
        "* Warm-up: tmem-held, pagecache-hits and the cluster node read the whole file through their mount once "
        "before their first job; the others read nothing first (every direct=1 read goes to the disk).",
        "* passthrough_ll: libfuse 3's example from Debian's libfuse3-dev, built into the bench workspace "
        "(never the repository) with `gcc -O2 -o passthrough_ll /usr/share/doc/libfuse3-dev/examples/"
        "passthrough_ll.c $(pkg-config fuse3 --cflags --libs)`"
        + (f", here `{placeholders(report.peer_build, report.paths)}`" if report.peer_build else "")
        + ", and mounted `passthrough_ll [-s] -o source=SRC,cache=never MNT` in the foreground (`-f`): "
        "cache=never is direct_io, as tmemfs.",
        f"* The writer: on one mount, fio's {WRITER_JOB.workload.label} {WRITER_JOB.engine} of the file alone "
        f"for {writer_settings(s).runtime:g} s (at least {WRITER_RUNTIME_S:g} s, so that dd ends within it), "
        f"then the same fio for the same fixed run time with `dd` of {DD_MIB} MiB into another file of the same "
        "mount, dd started as soon as fio's job has its file open (fio's start-up, 0.2-0.5 s here, is longer "
        "than dd takes on native SRC). \"during dd\" counts only fio's "
        f"{LOG_MS} ms IOPS-log windows (`--write_iops_log --log_avg_msec`) that lie within dd's run (its fsync "
        "included), placed by fio's own job start (its report's timestamp minus job_runtime); when dd ended "
        "first the table says so and by how much. native runs the same against SRC: what the disk itself loses.",
        f"* The cluster node: one redis-server (tests/redisservers.py) on TCP loopback, a {CLUSTER_SIZE // MiB} "
        "MiB text file read through once (4 MiB page cache: its pages go to Redis), then QD1 and QD16 on that "
        "mount; the pool is emptied (FLUSHALL) after each round. A smaller file than the rest: filling Redis "
        "costs about 0.8 ms a page.",
        f"* Before the first run other processes used {report.background[0]:.0%} of a CPU (after waiting "
        f"{report.background[1]:.0f} s of at most {s.wait_quiet_s:.0f} s for quiet).",
        *noise_lines(report.matrix),
    ]


def render(report: Report) -> str:
    s = report.settings
    mode = "quick mode, " if s.quick else ""
    lines = [
        f"## Many requests in flight (issue 13; {mode}`python -m tools.bench_inflight"
        f"{' --quick' if s.quick else ''}`)", "",
        f"- date: {report.started}; run time {mmss(report.elapsed_s)}; tmemfs source: "
        f"{report.versions.get('tmemfs source', '?')}",
        f"- {s.reps} interleaved round(s) of {s.runtime:g} s fio runs (the writer's: "
        f"{writer_settings(s).runtime:g} s); a {report.size // MiB} MiB file of text in SRC; fio `--direct=1`", "",
        *(["**Quick mode**: one short round; the numbers show that everything runs, not how fast.", ""]
          if s.quick else []),
        "### Targets (issue 13)", "", *target_table(report), "",
        *subsection("Notes:", [f"* {n}" for n in report.notes]),
        "### Reads: IOPS, median (min..max)", "", *read_table(report), "", *native_lines(report), "",
        "### Reads: against passthrough_ll (threads), ratio of medians (per-round range)", "",
        *peer_ratio_table(report), "",
        "### Where a miss's time goes: the floor (pyfuse3, trio, the loop, SrcIO) and tmemfs's data path", "",
        *(floor_table(report) if FLOOR in config_keys(report, "reads") else ["Not measured."]), "",
        f"The floor is the null file system reading SRC as tmemfs reads it on a miss with `{NONE_OPTIONS}` "
        "(the same max_requests, poll_us, raised max_background and SrcIO: inline alone, native AIO under load) "
        "and nothing else. What it lacks against passthrough_ll is the cost of one Python process; what none "
        "lacks against it is the cost of tmemfs's page cache, cleancache frontend and page locks on a miss.", "",
        f"### A reader while dd writes {DD_MIB} MiB to another file of the mount: IOPS", "",
        *writer_table(report), "",
        "### A cluster node on Redis: IOPS", "", *cluster_table(report), "",
        "### Configurations", "", *config_table(report), "",
        "### Method", "", *method_lines(report), "",
        *subsection("### Failures", failure_lines(report)),
        *machine_lines(report.machine, report.versions),
        "### Command lines, exactly as run", "",
        "Paths: " + ", ".join(f"{k} = `{v}`" for k, v in report.paths.items()) + ".", "",
        *grouped_commands("fio and dd", shown_commands(report)),
        "Raw fio JSON and IOPS logs, dd's output, the daemons' logs and the numbers (`report.json`, for "
        "`--from-json`) are kept under `bench-results/inflight/run/` (not committed).", "",
    ]
    return markdown(lines)


def target_lines(report: Report) -> list[str]:
    """What the run prints on stdout: one line per target."""
    return [verdict_line(v.result, v.target.label, v.measured, v.why) for v in verdicts(report)]


# -- saved numbers (--from-json) -----------------------------------------------------------------------------


def report_to_json(r: Report) -> dict[str, Any]:
    return {"settings": asdict(r.settings), "size": r.size, "machine": r.machine, "versions": r.versions,
            "started": r.started, "matrix": matrix_to_json(r.matrix), "dd_runs": [asdict(d) for d in r.dd_runs],
            "mount_commands": r.mount_commands, "peer_build": r.peer_build, "paths": r.paths, "notes": r.notes,
            "background": list(r.background), "elapsed_s": r.elapsed_s}


def report_from_json(d: dict[str, Any]) -> Report:
    settings = Settings(**{**d["settings"], "parts": tuple(d["settings"]["parts"])})
    return Report(settings, d["size"], d["machine"], d["versions"], d["started"], matrix_from_json(d["matrix"]),
                  [DdRun(**x) for x in d["dd_runs"]], d["mount_commands"], d["peer_build"], d["paths"], d["notes"],
                  (d["background"][0], d["background"][1]), d["elapsed_s"])


# -- main ------------------------------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = section_parser("bench_inflight", __doc__, "1 round of 1 s fio runs: under 3 minutes")
    add_output_options(parser, "inflight", ROOT, "workspace: SRC, the peer, raw output")
    parser.add_argument("--size", default=f"{DEFAULT_SIZE // MiB}M",
                        help="the read file's size (default 256M; the issue used 1G, which loads the disk 4x more)")
    parser.add_argument("--runtime", type=float, help="seconds per fio run (default 4, quick 1)")
    parser.add_argument("--rounds", type=int, help="interleaved rounds (default 3, quick 1)")
    parser.add_argument("--wait-quiet", type=float, metavar="SECONDS",
                        help="wait up to this long for other processes to go quiet first (default 30, quick 0)")
    add_from_json(parser)
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    report = measured_or_loaded(args, run, report_to_json, report_from_json, run_json(args.results_dir, args.quick))
    if report is None:
        return 130
    return publish(args.out, "inflight", render(report), report.elapsed_s, target_lines(report))


if __name__ == "__main__":
    sys.exit(main())
