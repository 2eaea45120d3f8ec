"""Configurations x fio jobs measured in interleaved rounds (round 1 of every configuration, then round 2, ...), so
that the machine's drift hits all configurations alike; every configuration is mounted afresh for each round, a
mount a job killed is restarted, and runs that shared the machine with a busy neighbour are measured again."""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, replace

from tools.fio import TEST_FILE_SIZE, FioResult, Job, Matrix, fio_command, run_fio
from tools.machine import BUSY
from tools.mounting import Config, Mount, Workspace, read_through
from tools.report import Progress, log

MiB = 1 << 20
RUN_OVERHEAD_S = 0.4  # per fio run: fio's start-up, mounts, warm-up reads (measured on the 2-CPU VM)


@dataclass(frozen=True)
class Part:
    """A set of configurations x jobs measured together in interleaved rounds."""

    key: str
    title: str
    configs: tuple[Config, ...]
    jobs: tuple[Job, ...]
    read_file: str
    rw_file: str | None = None
    size: int = TEST_FILE_SIZE  # of every test file: fio's --size, and the null fs's files

    def config(self, key: str) -> Config:
        return next(c for c in self.configs if c.key == key)

    def file_for(self, job: Job) -> str:
        return self.rw_file if job.workload.writes and self.rw_file else self.read_file

    @property
    def files(self) -> tuple[str, ...]:
        return (self.read_file, self.rw_file) if self.rw_file else (self.read_file,)


@dataclass(frozen=True)
class Settings:
    """How long and how often: --quick trades precision for a short run."""

    runtime: float  # seconds per fio run
    reps: int
    quick: bool
    profile: bool
    sensitivity: bool
    retry_budget_s: float = 0.0  # time allowed for re-running runs that shared the machine
    wait_quiet_s: float = 0.0  # how long to wait at the start for other processes to calm down
    parts: tuple[str, ...] = ("matrix", "compare")


def restore_rw(ws: Workspace, part: Part) -> None:
    """The write jobs' file starts every mount as a fresh copy of the read file (written in SRC, unmounted)."""
    if part.rw_file is None:
        return
    target = ws.src / part.rw_file
    shutil.copyfile(ws.src / part.read_file, target)
    with open(target, "rb+") as f:
        os.fsync(f.fileno())


def _revive(mount: Mount) -> str | None:
    """Restart a mount that a run killed; why it failed, if it did."""
    if mount.alive():
        return None
    try:
        mount.stop()
        mount.start()
    except RuntimeError as exc:
        return f"restarting the mount failed: {exc}"
    return None


def _warm(mount: Mount, name: str) -> str | None:
    """Read a file through the mount once (if its configuration wants it); why that failed, if it did."""
    if not mount.config.warm or name in mount.warmed:
        return None
    try:
        read_through(mount.path / name)
    except OSError as exc:
        return f"warm-up read failed: {exc}"
    mount.warmed.add(name)
    return None


def measure_job(mount: Mount, job: Job, part: Part, settings: Settings, matrix: Matrix, round_: int,
                tag: str = "") -> FioResult:
    """Warm up (once per file and mount), run fio once, and restart the mount if the run killed it."""
    target = mount.path / part.file_for(job)
    failed = _revive(mount) or _warm(mount, target.name)
    if failed:
        return FioResult(error=failed)
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
            fail_round(config, part, settings, progress, matrix, round_, f"mount failed: {exc}")


def fail_round(config: Config, part: Part, settings: Settings, progress: Progress, matrix: Matrix, round_: int,
               error: str) -> None:
    """Every job of a configuration that this round did not measure fails with `error`."""
    for job in part.jobs:
        point = matrix.point(config.key, job.name)
        if round_ not in point.by_round and not point.failed:
            point.add(round_, FioResult(error=error))
            progress.step(f"{part.key} round {round_ + 1}/{settings.reps} {config.key} {job.label}: {error}",
                          ran=False)


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


# -- runs that shared the machine --------------------------------------------------------------------------------


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
                retry_run(mount, job, rnd, part, settings, matrix)


def retry_run(mount: Mount, job: Job, rnd: int, part: Part, settings: Settings, matrix: Matrix) -> None:
    """Measure a busy run again; the quieter of the two stays."""
    point = matrix.point(mount.config.key, job.name)
    old = point.by_round[rnd]
    new = measure_job(mount, job, part, settings, matrix, rnd, tag=".retry")
    matrix.retried += 1
    quieter = not new.error and (new.foreign_cpu or 0) < (old.foreign_cpu or 0)
    if quieter:
        point.by_round[rnd] = new
        matrix.replaced += 1
    log(f"retry {part.key} {mount.config.key} {job.label} round {rnd + 1}: others "
        f"{old.foreign_cpu or 0:.0%} -> {new.foreign_cpu or 0:.0%}, "
        f"{'kept the new run' if quieter else 'kept the old run'}")
