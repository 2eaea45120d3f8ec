"""fio for the benchmarks: jobs (a workload at an engine and queue depth), their command lines, one run with the
CPU that other processes used meanwhile, what its JSON report says, and every run of a point by round."""

from __future__ import annotations

import json
import os
import shlex
import subprocess
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from tools.machine import BUSY, CpuSample, cpu_sample, foreign_and_steal

MiB = 1 << 20
TEST_FILE_SIZE = 64 * MiB  # the benchmarks' usual test file: fio's --size unless told otherwise
TIMEOUT_S = 60.0  # beyond a run's own time: a run that takes longer is a wedged mount


# -- jobs --------------------------------------------------------------------------------------------------------


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


def fio_runtime(seconds: float) -> str:
    """fio's --runtime value: whole seconds, or milliseconds (fio accepts the ms suffix)."""
    return str(int(seconds)) if seconds == int(seconds) else f"{round(seconds * 1000)}ms"


def fio_command(job: Job, filename: Path, runtime: float, invalidate: int = 0, size: int = TEST_FILE_SIZE,
                extra: Sequence[str] = ()) -> list[str]:
    """A time-based run of `job` on `filename`; `extra` options go just before the output format."""
    return ["fio", f"--name={job.name}", f"--filename={filename}", f"--size={size // MiB}M",
            *job.fio_args(), f"--runtime={fio_runtime(runtime)}", "--time_based", f"--invalidate={invalidate}",
            *extra, "--output-format=json"]


# -- what fio reports ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class FioResult:
    """One fio run: IOPS and bandwidth (bytes/s) of reads and writes together, or why it failed."""

    iops: float = 0.0
    bw: float = 0.0
    error: str | None = None
    foreign_cpu: float | None = None  # CPUs' worth used by processes other than fio and the daemon
    steal: float | None = None  # CPUs' worth the hypervisor gave to other guests
    write_iops: float = 0.0  # the writes' share of iops


def fio_report(stdout: str) -> dict[str, Any] | None:
    """fio's JSON report as a dict; fio prefixes error lines to it when a job fails, so find the object."""
    start = stdout.find("{")
    try:
        report = json.loads(stdout[start:]) if start >= 0 else None
    except json.JSONDecodeError:
        return None
    return report if isinstance(report, dict) else None


def first_job(stdout: str) -> dict[str, Any] | None:
    """The first job of fio's JSON report."""
    report = fio_report(stdout)
    jobs = report.get("jobs") if report else None
    return jobs[0] if jobs else None


def _direction(numbers: dict[str, Any]) -> tuple[float, float]:
    """(iops, bytes/s) of one direction; older fio has only bw in KiB/s."""
    bw = float(numbers["bw_bytes"]) if "bw_bytes" in numbers else float(numbers.get("bw", 0)) * 1024
    return float(numbers.get("iops", 0.0)), bw


def _first_error_line(text: str) -> str | None:
    for line in text.splitlines():
        if line.startswith("fio:") or "error" in line.lower():
            return line.strip()
    return None


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


def clat_percentiles_us(stdout: str, direction: str) -> dict[float, float]:
    """fio's completion latency percentiles (clat_ns) of one direction, in microseconds."""
    job = first_job(stdout)
    if job is None:
        return {}
    table = job.get(direction, {}).get("clat_ns", {}).get("percentile", {})
    return {float(k): float(v) / 1000.0 for k, v in table.items()}


def bytes_and_seconds(stdout: str, direction: str) -> tuple[int, float]:
    """(bytes moved, seconds the job ran) of one direction."""
    job = first_job(stdout)
    if job is None:
        return 0, 0.0
    numbers = job.get(direction, {})
    ms = job.get("job_runtime") or numbers.get("runtime") or 0
    return int(numbers.get("io_bytes", 0)), float(ms) / 1000.0


def job_span(stdout: str) -> tuple[float, float] | None:
    """(epoch seconds when fio's first job started, its runtime in seconds) from fio's JSON report."""
    report = fio_report(stdout)
    jobs = report.get("jobs") if report else None
    if not report or not jobs or not report.get("timestamp_ms") or not jobs[0].get("job_runtime"):
        return None
    runtime = float(jobs[0]["job_runtime"]) / 1000
    return float(report["timestamp_ms"]) / 1000 - runtime, runtime


# -- running fio -------------------------------------------------------------------------------------------------


def with_cpu(result: FioResult, before: CpuSample, after: CpuSample) -> FioResult:
    """The result with the CPU others used while it ran (the machine is shared)."""
    foreign, steal = foreign_and_steal(before, after)
    return replace(result, foreign_cpu=foreign, steal=steal)


def run_fio_output(cmd: list[str], raw_file: Path | None, runtime: float,
                   sample: Callable[[], CpuSample] = cpu_sample) -> tuple[FioResult, str]:
    """Run one fio, `sample` the CPU around it, keep its output in `raw_file`: (the result, fio's stdout).
    A hang (a wedged mount) is killed after a generous timeout."""
    before = sample()
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=runtime + TIMEOUT_S, check=False)
    except subprocess.TimeoutExpired:
        return FioResult(error=f"fio did not finish within {runtime + TIMEOUT_S:g} s"), ""
    after = sample()
    if raw_file is not None:
        raw_file.write_text(done.stdout + ("\n# stderr:\n" + done.stderr if done.stderr else ""))
    return with_cpu(parse_fio_json(done.stdout, done.stderr, done.returncode), before, after), done.stdout


def run_fio(cmd: list[str], raw_file: Path | None, runtime: float, daemon_pid: int | None = None) -> FioResult:
    """One fio run; the daemon under test's CPU counts as ours, not others'."""
    pids = () if daemon_pid is None else (daemon_pid,)
    return run_fio_output(cmd, raw_file, runtime, lambda: cpu_sample(pids))[0]


# -- the runs of a point -----------------------------------------------------------------------------------------


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


@dataclass
class Matrix:
    """All results of a set of configurations x jobs, the commands that produced them, and what crashed."""

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

    def runs(self) -> list[FioResult]:
        """Every successful run whose CPU was accounted."""
        return [r for p in self.points.values() for r in p.by_round.values() if r.foreign_cpu is not None]


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
