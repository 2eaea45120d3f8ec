"""Measure cluster nodes (cleancache=cluster, issue 4) and write BENCHMARKS.md's cluster section.

Run from the repository root with the project's venv (needs root, /dev/fuse, fio; redis-server for
the Redis rows):

    .venv/bin/python -m tools.bench_cluster [--quick] [--out BENCHMARKS.md] [--from-json RESULTS]

What it measures, every tmemfs mount with backing_io=direct (SRC is read with
O_DIRECT: a backing read is a real disk read, not a host page-cache hit):

1. Second node on data the first node already read: node A reads the whole
   file (larger than the page cache, smaller than cc_size) and drops its page
   cache into the pool; then a fresh node B runs fio 4k randread QD1 and 128k
   sequential read (psync, direct=1, fixed run time). B's IOPS, B's backing
   reads and B's pool hits, per store (lmdb on /dev/shm, Redis on a unix
   socket, Redis on TCP loopback) against two cleancache=none mounts.
2. The cost of coherency on writes: fio 4k randwrite QD1 on node A with 1, 2
   and 3 cluster nodes mounted (the others have read the file; in one row
   node B also reads it during the run), against one cleancache=none mount:
   fio's completion latency percentiles.
3. Hits per second: LmdbStore.get / RedisStore.get in-process on pages that
   are there, and the pool hit rate through the mount (B in 1).
4. tools/coherency.py with 3 nodes: ops, ops/s and violations (stale reads
   must be 0) for lmdb, and a shorter run for Redis.

Points 1 and 2 are measured in interleaved rounds (round 1 of every
configuration, then round 2, ...), every configuration mounted afresh and its
pool emptied before the next; ratios and differences are only taken between
numbers of the same round. Only the text between `<!-- cluster:begin -->`
and `<!-- cluster:end -->` is written (appended at the end if absent).
Every mount is unmounted, every redis-server stopped and every lmdb pool this
run made in /dev/shm removed in a finally, also on an error or Ctrl-C.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import os
import re
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import ExitStack, contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tools.corpus import make_file
from tools.fio import (
    WORKLOAD,
    FioResult,
    Job,
    Point,
    bytes_and_seconds,
    clat_percentiles_us,
    fio_command,
    run_fio_output,
)
from tools.machine import (
    BUSY,
    cpu_sample,
    load_average,
    machine_facts,
    note_digests,
    source_digest,
    start_redis,
    store_versions,
)
from tools.mounting import (
    Workspace,
    background,
    control,
    counter,
    end_process,
    is_mounted,
    mount_points,
    read_stats,
    read_through,
    signals_deferred,
    stop_daemon,
    unmount,
    wait_store_up,
)
from tools.report import (
    Progress,
    add_from_json,
    add_output_options,
    fmt_point,
    log,
    markers,
    measured_or_loaded,
    plain_ratio,
    publish,
    section_parser,
    spread_text,
    subsection,
    table,
)

if TYPE_CHECKING:
    from backends.store import PageStore

PAGE = 4096
MiB = 1 << 20
BEGIN, END = markers("cluster")
ROOT = Path("bench-results/cluster")  # results JSON, raw fio output, daemon logs (not committed)
READ_TARGET = 1.5  # lmdb second node / cleancache=none
WRITE_TARGET_US = 200.0  # added to the median 4k write by coherency, 2 nodes
READ_FILE = "read.dat"
WRITE_FILE = "write.dat"
XATTR = "user.tmemfs.pool_uuid"  # where a SRC keeps its pool uuid (fusefs/pooluuid.py)

NONE, LMDB, REDIS_UNIX, REDIS_TCP = "none", "lmdb", "redis-unix", "redis-tcp"
STORES: tuple[str, ...] = (NONE, LMDB, REDIS_UNIX, REDIS_TCP)
STORE_LABEL = {
    NONE: "cleancache=none (two mounts)",
    LMDB: "cluster, cc_store=lmdb (/dev/shm)",
    REDIS_UNIX: "cluster, Redis on a unix socket",
    REDIS_TCP: "cluster, Redis on TCP loopback",
}
READ_JOBS: tuple[Job, ...] = (Job(WORKLOAD["4k-randread"], "psync", 1, 1), Job(WORKLOAD["128k-read"], "psync", 1, 1))
WRITE_JOB = Job(WORKLOAD["4k-randwrite"], "psync", 1, 1)
READER_JOB = Job(WORKLOAD["4k-randread"], "psync", 1, 1)  # other nodes reading while A writes
PERCENTILES: tuple[float, ...] = (50.0, 90.0, 99.0)
CHECKER_NODES = 3
CHECKER_SLOW_JOIN_S = 2.0
NODE_LINE = re.compile(r"coherency: node\d+: (.+?) \(-o ")  # the checker's progress line for each mount


@dataclass(frozen=True)
class WriteConfig:
    """Node A writes while `nodes - 1` other nodes have read the file (and, with `reading`, read it during)."""

    key: str
    store: str
    nodes: int
    reading: bool = False

    @property
    def label(self) -> str:
        if self.store == NONE:
            return "cleancache=none, 1 mount"
        who = f"{self.nodes} node{'s' if self.nodes > 1 else ''}"
        return f"{self.store}, {who}" + (", the others reading during the run" if self.reading else "")


def write_configs(stores: Sequence[str]) -> tuple[WriteConfig, ...]:
    """none; then for each cluster store 1, 2, 3 nodes and 2 nodes with B reading."""
    out = [WriteConfig("none-1", NONE, 1)]
    for store in stores:
        if store == NONE:
            continue
        out += [WriteConfig(f"{store}-{n}", store, n) for n in (1, 2, 3)]
        out.append(WriteConfig(f"{store}-2+reading", store, 2, reading=True))
    return tuple(out)


WRITE_STORES: tuple[str, ...] = (LMDB, REDIS_TCP)  # Redis over TCP: what nodes on several hosts use
RATE_STORES: tuple[str, ...] = (LMDB, REDIS_UNIX, REDIS_TCP)
CHECK_STORES: tuple[str, ...] = (LMDB, REDIS_TCP)


@dataclass(frozen=True)
class Settings:
    """Sizes, run times and repeats; --quick shrinks everything to stay under 3 minutes."""

    quick: bool
    rounds: int
    read_runtime: float  # seconds per fio run on node B
    write_runtime: float  # seconds per fio randwrite run
    file_size: int  # the file A reads and B then reads
    write_size: int  # the file A writes
    cache_size: int  # every node's page cache
    cc_size: int  # the lmdb pool
    checker_ops: int  # tools.coherency on lmdb
    checker_ops_redis: int
    rate_pages: int  # pages put before the in-process get loop
    rate_seconds: float  # length of each in-process get loop

    @property
    def mode(self) -> str:
        return "quick" if self.quick else "normal"


def settings_for(quick: bool) -> Settings:
    if quick:
        return Settings(True, 1, 1.0, 1.0, 32 * MiB, 8 * MiB, 8 * MiB, 64 * MiB, 5_000, 1_000, 2_000, 0.3)
    return Settings(False, 3, 3.0, 3.0, 128 * MiB, 32 * MiB, 16 * MiB, 256 * MiB, 100_000, 10_000, 8_000, 1.0)


# -- results ---------------------------------------------------------------------------------


@dataclass
class ReadRun:
    """One fio run on node B after A read the file and dropped its page cache into the pool."""

    round: int
    iops: float = 0.0
    bw: float = 0.0  # bytes/s
    fio_bytes: int = 0  # what fio read
    seconds: float = 0.0  # fio's job run time
    backing_bytes: int = 0  # B's backing.read_bytes during the run
    backing_reads: int = 0
    pool_hits: int = 0  # B's store hits during the run
    hits_from_others: int = 0
    pagecache_hits: int = 0
    foreign_cpu: float | None = None
    error: str | None = None

    @property
    def pool_hits_per_s(self) -> float:
        return self.pool_hits / self.seconds if self.seconds > 0 else 0.0

    @property
    def backing_share(self) -> float:
        """B's backing bytes per byte fio read."""
        return self.backing_bytes / self.fio_bytes if self.fio_bytes else 0.0


@dataclass
class WriteRun:
    """One fio randwrite run on node A: completion latency percentiles in microseconds."""

    round: int
    iops: float = 0.0
    p50: float = 0.0
    p90: float = 0.0
    p99: float = 0.0
    foreign_cpu: float | None = None
    error: str | None = None


@dataclass
class StoreRate:
    """In-process gets on pages that are there (hits), one loop of `tasks` trio tasks."""

    store: str
    tasks: int
    gets: int
    hits: int
    seconds: float
    versions_per_s: float = 0.0  # version() calls per second, one task (every read pays one)

    @property
    def hits_per_s(self) -> float:
        return self.hits / self.seconds if self.seconds > 0 else 0.0

    @property
    def us_per_get(self) -> float:
        return self.seconds / self.gets * 1e6 * self.tasks if self.gets else 0.0


@dataclass
class CheckerRun:
    """tools.coherency --json, or why it did not give one."""

    store: str
    command: str
    asked_ops: int
    ops: int = 0
    ops_per_second: float = 0.0
    elapsed: float = 0.0
    lost_writes: int = 0
    stale_reads: int = 0
    stale_sizes: int = 0
    stale_names: int = 0
    corrupt: int = 0
    errors: int = 0
    violations: int = 0
    seed: int = 0
    ok: bool = False
    exit_code: int = 0
    error: str | None = None
    first_violations: list[str] = field(default_factory=list)


@dataclass
class Results:
    """Everything the report says; report() is a pure function of it (tests build it by hand)."""

    settings: Settings
    reads: dict[str, list[ReadRun]] = field(default_factory=dict)  # "store/job name" -> runs
    writes: dict[str, list[WriteRun]] = field(default_factory=dict)  # write config key -> runs
    rates: list[StoreRate] = field(default_factory=list)
    checks: list[CheckerRun] = field(default_factory=list)
    stores: list[str] = field(default_factory=lambda: list(STORES))  # stores measured (Redis may be missing)
    fio_commands: list[str] = field(default_factory=list)
    mount_commands: dict[str, str] = field(default_factory=dict)  # store -> tmemfs command line
    machine: dict[str, str] = field(default_factory=dict)
    versions: dict[str, str] = field(default_factory=dict)
    started: str = ""
    elapsed_s: float = 0.0
    notes: list[str] = field(default_factory=list)
    daemon_problems: list[str] = field(default_factory=list)  # ERROR/WARNING lines the node daemons logged

    def read_runs(self, store: str, job: Job) -> list[ReadRun]:
        return self.reads.get(f"{store}/{job.name}", [])

    def add_read(self, store: str, job: Job, run: ReadRun) -> None:
        self.reads.setdefault(f"{store}/{job.name}", []).append(run)

    def note_command(self, cmd: Sequence[str]) -> None:
        text = shlex.join(cmd)
        if text not in self.fio_commands:
            self.fio_commands.append(text)


def results_to_json(res: Results) -> dict[str, Any]:
    return dataclasses.asdict(res)


def results_from_json(data: dict[str, Any]) -> Results:
    res = Results(Settings(**data["settings"]))
    res.reads = {k: [ReadRun(**r) for r in v] for k, v in data["reads"].items()}
    res.writes = {k: [WriteRun(**r) for r in v] for k, v in data["writes"].items()}
    res.rates = [StoreRate(**r) for r in data["rates"]]
    res.checks = [CheckerRun(**c) for c in data["checks"]]
    for name in ("stores", "fio_commands", "mount_commands", "machine", "versions", "started", "elapsed_s", "notes",
                 "daemon_problems"):
        if name in data:
            setattr(res, name, data[name])
    return res


# -- parsing -----------------------------------------------------------------------------------


def write_run(round_: int, result: FioResult, stdout: str) -> WriteRun:
    """A randwrite run from fio's parsed result and its JSON (percentiles missing = an error)."""
    if result.error:
        return WriteRun(round_, error=result.error)
    pct = clat_percentiles_us(stdout, "write")
    missing = [p for p in PERCENTILES if p not in pct]
    if missing:
        return WriteRun(round_, result.iops, error=f"fio gave no clat percentile {missing[0]:g}")
    return WriteRun(round_, result.write_iops or result.iops, pct[50.0], pct[90.0], pct[99.0],
                    foreign_cpu=result.foreign_cpu)


def stats_delta(before: Mapping[str, object], after: Mapping[str, object], key: str) -> int:
    return int(counter(after, key) - counter(before, key))


def read_run(round_: int, result: FioResult, stdout: str, before: Mapping[str, object],
             after: Mapping[str, object]) -> ReadRun:
    """A read run on B: fio's numbers plus B's counters over the run."""
    if result.error:
        return ReadRun(round_, error=result.error)
    fio_bytes, seconds = bytes_and_seconds(stdout, "read")
    return ReadRun(round_, result.iops, result.bw, fio_bytes, seconds,
                   backing_bytes=stats_delta(before, after, "backing.read_bytes"),
                   backing_reads=stats_delta(before, after, "backing.reads"),
                   pool_hits=stats_delta(before, after, "backend.cluster.store.hits"),
                   hits_from_others=stats_delta(before, after, "backend.cluster.store.hits_from_others"),
                   pagecache_hits=stats_delta(before, after, "pagecache.hits"),
                   foreign_cpu=result.foreign_cpu)


def parse_checker(store: str, command: str, asked_ops: int, stdout: str, returncode: int,
                  stderr: str = "") -> CheckerRun:
    """tools.coherency --json's summary; exit 1 with a summary means violations, without one a failed run."""
    run = CheckerRun(store, command, asked_ops, exit_code=returncode)
    start = stdout.find("{")
    try:
        data = json.loads(stdout[start:]) if start >= 0 else None
    except json.JSONDecodeError:
        data = None
    if not isinstance(data, dict) or "ops" not in data:
        tail = [ln for ln in (stderr or stdout).strip().splitlines() if ln.strip()]
        run.error = f"exit {returncode}: " + (tail[-1].strip() if tail else "no JSON summary")
        return run
    for name in ("ops", "lost_writes", "stale_reads", "stale_sizes", "stale_names", "corrupt", "errors",
                 "violations", "seed"):
        setattr(run, name, int(data.get(name) or 0))
    run.ops_per_second = float(data.get("ops_per_second") or 0.0)
    run.elapsed = float(data.get("elapsed_seconds") or 0.0)
    run.ok = bool(data.get("ok")) and returncode == 0
    run.first_violations = [str(v.get("text", v)) for v in data.get("first_violations", [])[:5]]
    return run


LOG_LINE = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d+ \S+\[\d+\] (ERROR|WARNING|CRITICAL) (.*)$")
ERROR_LINE = re.compile(r"[\w.]*(Error|Exception)\w*: ")


def log_problems(logs: dict[str, str], limit: int = 20) -> list[str]:
    """Distinct ERROR/WARNING messages and exception lines per log (numbers written N), with counts."""
    counts: dict[tuple[str, str], int] = {}
    for name, text in logs.items():
        for line in text.splitlines():
            m = LOG_LINE.match(line)
            if m:
                msg = f"{m.group(1)} {m.group(2)}"
            elif ERROR_LINE.match(line.strip()):
                msg = line.strip()
            else:
                continue
            msg = re.sub(r"0x[0-9a-f]+|\b\d+\b", "N", msg)[:200]
            counts[(name, msg)] = counts.get((name, msg), 0) + 1
    lines = [f"{name}: {n}x `{msg}`" for (name, msg), n in counts.items()]
    return lines[:limit] + ([f"... and {len(lines) - limit} more distinct lines"] if len(lines) > limit else [])


def short_violation(text: str) -> str:
    """A checker violation in one line: its first line, and the exception behind it if it quotes a log."""
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    if not lines:
        return ""
    cause = [ln for ln in lines[1:] if ERROR_LINE.match(ln)]
    return (lines[0] + (f" ... {cause[-1]}" if cause else ""))[:400]


# -- the report --------------------------------------------------------------------------------


def read_point(runs: Sequence[ReadRun]) -> Point:
    """bench.Point of the runs (IOPS and bandwidth by round), for bench's cells and ratios."""
    p = Point()
    for r in runs:
        p.add(r.round, FioResult(r.iops, r.bw, error=r.error, foreign_cpu=r.foreign_cpu))
    return p


def read_ratio_text(res: Results, store: str, job: Job) -> str:
    points = {(s, job.name): read_point(res.read_runs(s, job)) for s in (store, NONE)}
    return plain_ratio(points, store, NONE, job.name)


def read_ratio_median(res: Results, store: str, job: Job) -> float | None:
    subject, base = res.read_runs(store, job), res.read_runs(NONE, job)
    ok_s, ok_b = [r.iops for r in subject if not r.error], [r.iops for r in base if not r.error]
    if not ok_s or not ok_b or statistics.median(ok_b) <= 0:
        return None
    return statistics.median(ok_s) / statistics.median(ok_b)


def busy_mark(runs: Sequence[ReadRun] | Sequence[WriteRun]) -> str:
    return " †" if any((r.foreign_cpu or 0.0) > BUSY for r in runs) else ""


def ok_runs(runs: Sequence[ReadRun]) -> list[ReadRun]:
    return [r for r in runs if not r.error]


def failed_text(runs: Sequence[ReadRun] | Sequence[WriteRun]) -> str:
    errors = [r for r in runs if r.error]
    return f" ({len(errors)} failed)" if errors else ""


def read_table(res: Results, job: Job) -> list[str]:
    bw = job.workload.key == "128k-read"
    speed = "MiB/s" if bw else "IOPS"
    lines = [f"| store | B's {speed} | vs none (same rounds) | B's backing reads, MiB | of what fio read "
             "| B's pool hits/s | of them on pages other nodes put |", "|---|---|---|---|---|---|---|"]
    for store in res.stores:
        runs = res.read_runs(store, job)
        if not runs:
            continue
        good = ok_runs(runs)
        if not good:
            lines.append(f"| {STORE_LABEL[store]} | **failed**: {runs[0].error} | - | - | - | - | - |")
            continue
        values = [r.bw for r in good] if bw else [r.iops for r in good]
        cell = fmt_point(values, scale=MiB, iops=False) if bw else fmt_point(values)
        ratio_text = "1.00x (baseline)" if store == NONE else read_ratio_text(res, store, job)
        cluster = store != NONE
        others = [r.hits_from_others / r.pool_hits * 100 for r in good if r.pool_hits]
        lines.append(
            f"| {STORE_LABEL[store]} | {cell}{busy_mark(runs)}{failed_text(runs)} | {ratio_text} "
            f"| {spread_text([r.backing_bytes / MiB for r in good], '{:.1f}')} "
            f"| {spread_text([r.backing_share * 100 for r in good], '{:.1f}')} % "
            f"| {spread_text([r.pool_hits_per_s for r in good]) if cluster else '-'} "
            f"| {spread_text(others, '{:.0f}') + ' %' if cluster and others else '-'} |")
    return lines


def write_runs_ok(runs: Sequence[WriteRun]) -> list[WriteRun]:
    return [r for r in runs if not r.error]


def added_us(res: Results, key: str, base: str) -> list[float]:
    """Per round: p50 of `key` minus p50 of `base` (both measured in that round)."""
    base_by_round = {r.round: r.p50 for r in write_runs_ok(res.writes.get(base, []))}
    return [r.p50 - base_by_round[r.round] for r in write_runs_ok(res.writes.get(key, [])) if r.round in base_by_round]


def signed_spread_text(values: Sequence[float]) -> str:
    if not values:
        return "-"
    med = statistics.median(values)
    if len(values) == 1 or min(values) == max(values):
        return f"{med:+.0f}"
    return f"{med:+.0f} ({min(values):+.0f}..{max(values):+.0f})"


def write_table(res: Results) -> list[str]:
    lines = ["| node A's mount | IOPS | p50 us | p90 us | p99 us | p50 added vs none (same round), us "
             "| p50 added vs 1 node of the store, us |", "|---|---|---|---|---|---|---|"]
    for cfg in write_configs(res.stores):
        runs = res.writes.get(cfg.key, [])
        if not runs:
            continue
        good = write_runs_ok(runs)
        if not good:
            lines.append(f"| {cfg.label} | **failed**: {runs[0].error} | - | - | - | - | - |")
            continue
        vs_none = "-" if cfg.store == NONE else signed_spread_text(added_us(res, cfg.key, "none-1"))
        one = f"{cfg.store}-1"
        vs_one = "-" if cfg.store == NONE or cfg.key == one else signed_spread_text(added_us(res, cfg.key, one))
        lines.append(f"| {cfg.label} | {fmt_point([r.iops for r in good])}{busy_mark(runs)}{failed_text(runs)} "
                     f"| {spread_text([r.p50 for r in good])} | {spread_text([r.p90 for r in good])} "
                     f"| {spread_text([r.p99 for r in good])} | {vs_none} | {vs_one} |")
    return lines


def rate_table(res: Results) -> list[str]:
    lines = ["| store | in-process hits/s, 1 task | in-process hits/s, 4 tasks | us per get (1 task) "
             "| version() calls/s | through the mount: B's pool hits/s, 4k randread | ..., 128k read |",
             "|---|---|---|---|---|---|---|"]
    for store in RATE_STORES:
        rates = {r.tasks: r for r in res.rates if r.store == store}
        if store not in res.stores or not rates:
            continue
        one, four = rates.get(1), rates.get(4)
        mount = [spread_text([r.pool_hits_per_s for r in ok_runs(res.read_runs(store, job))]) for job in READ_JOBS]
        lines.append(f"| {STORE_LABEL[store]} | {f'{one.hits_per_s:,.0f}' if one else '-'} "
                     f"| {f'{four.hits_per_s:,.0f}' if four else 'n/a (gets never wait)'} "
                     f"| {f'{one.us_per_get:.1f}' if one else '-'} "
                     f"| {f'{one.versions_per_s:,.0f}' if one and one.versions_per_s else '-'} "
                     f"| {mount[0]} | {mount[1]} |")
    return lines


def checker_table(res: Results) -> list[str]:
    lines = ["| store | nodes | ops asked / done | ops/s | lost writes | stale reads | stale sizes | stale names "
             "| corrupt | errors | seed | result |", "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for c in res.checks:
        if c.error:
            lines.append(f"| {c.store} | {CHECKER_NODES} | {c.asked_ops:,} / - | - | - | - | - | - | - | - | - "
                         f"| **run failed**: {c.error} |")
            continue
        lines.append(f"| {c.store} | {CHECKER_NODES} | {c.asked_ops:,} / {c.ops:,} | {c.ops_per_second:,.0f} "
                     f"| {c.lost_writes} | {c.stale_reads} | {c.stale_sizes} | {c.stale_names} | {c.corrupt} "
                     f"| {c.errors} | {c.seed} "
                     f"| {'ok' if c.ok else '**FAILED**'} |")
    return lines


def targets(res: Results) -> list[tuple[str, str, bool | None]]:
    """(target, measured, met) rows; None = cannot tell (not measured, or a run failed)."""
    rows: list[tuple[str, str, bool | None]] = []
    for job in READ_JOBS:
        r = read_ratio_median(res, LMDB, job)
        measured = read_ratio_text(res, LMDB, job) if r is not None else "not measured"
        good = ok_runs(res.read_runs(LMDB, job))
        if good and statistics.median(run.pool_hits for run in good) == 0:
            measured += " (node B got no pool hits: see Notes)"
        rows.append((f"second node, {job.label}: lmdb >= {READ_TARGET:g}x cleancache=none", measured,
                     None if r is None else r >= READ_TARGET))
    for store, kind in ((LMDB, "the target"), (REDIS_TCP, "informative, the target names lmdb")):
        added = added_us(res, f"{store}-2", "none-1")
        med = statistics.median(added) if added else None
        rows.append((f"coherency adds < {WRITE_TARGET_US:.0f} us to the median 4k write, 2 nodes, {store} ({kind})",
                     f"{signed_spread_text(added)} us" if added else "not measured",
                     None if med is None else med < WRITE_TARGET_US))
    for c in res.checks:
        full = c.asked_ops >= 100_000
        rows.append((f"coherency checker, {c.store}, {CHECKER_NODES} nodes: 0 stale reads"
                     + ("" if c.store != LMDB or full else " (the issue asks for >= 100,000 ops: a quick run)"),
                     c.error or f"{c.stale_reads} stale reads, {c.violations} violations in {c.ops:,} ops",
                     None if c.error else (c.stale_reads == 0 and c.violations == 0)))
    return rows


def sanity_notes(res: Results) -> list[str]:
    """What makes numbers meaningless: a cluster node B that got no pool hits, nodes cut off."""
    notes = []
    for store in res.stores:
        if store == NONE:
            continue
        for job in READ_JOBS:
            good = ok_runs(res.read_runs(store, job))
            if good and statistics.median(r.pool_hits for r in good) == 0:
                notes.append(f"{store}: node B got no pool hits in {job.label} (its pool did not work: see what "
                             "the daemons logged below); its row measures a node without a shared pool")
    return notes


def mark(ok: bool | None) -> str:
    return "n/a" if ok is None else "ok" if ok else "**MISSED**"


def noise_line(res: Results) -> list[str]:
    foreign = [r.foreign_cpu for rs in res.reads.values() for r in rs if r.foreign_cpu is not None]
    foreign += [w.foreign_cpu for ws in res.writes.values() for w in ws if w.foreign_cpu is not None]
    if not foreign:
        return []
    busy = sum(f > BUSY for f in foreign)
    return [f"- CPU used by other processes during each fio run (machine busy time minus fio's, the daemons' and "
            f"redis-server's, in CPUs): median {statistics.median(foreign):.0%}, max {max(foreign):.0%}; "
            f"† marks a cell with a run where others used more than {BUSY:.0%} of a CPU ({busy} of {len(foreign)} "
            "runs). The machine is shared: compare numbers of the same round, and mind the ranges."]


def options_text(s: Settings) -> str:
    return (f"`cache_size={s.cache_size // MiB}M,backing_io=direct` on every mount, plus "
            f"`cleancache=cluster,cc_size={s.cc_size // MiB}M` (and `cc_store=`) on cluster nodes")


def report(res: Results) -> str:
    """The markdown between the markers."""
    s = res.settings
    rounds = f"{s.rounds} round{'s' if s.rounds > 1 else ''}"
    lines = [f"## Cluster nodes ({s.mode} mode, `python -m tools.bench_cluster{' --quick' if s.quick else ''}`)", ""]
    lines += [f"- date: {res.started}; run time {res.elapsed_s / 60:.1f} min"]
    lines += [f"- machine: {res.machine.get('nproc', '?')} CPU ({res.machine.get('CPU', '?')}), "
              f"{res.machine.get('memory', '?')}, kernel {res.machine.get('kernel', '?')}; "
              f"SRC on {res.machine.get('SRC file system', '?')}; load average at start "
              f"{res.machine.get('load average', '?')}"]
    lines += ["- versions: " + ", ".join(f"{k} {v}" for k, v in res.versions.items())]
    lines += [f"- mount options: {options_text(s)}. backing_io=direct on every tmemfs mount: node B's backing "
              "reads are O_DIRECT reads of SRC (ext4), i.e. real disk reads, never host page-cache hits",
              f"- {rounds} of every point, interleaved (round 1 of every configuration, then round 2, ...); cells "
              "show the median (min..max) over rounds, ratios are ratios of medians with the range of the "
              "per-round ratios, differences are taken per round",
              *noise_line(res), ""]
    lines += ["### Targets", "", *table(["target", "measured", "result"],
                                        [[t, m, mark(ok)] for t, m, ok in targets(res)]), ""]
    lines += ["### Second node on data the first node already read", "",
              f"Node A reads the whole {s.file_size // MiB} MiB file of random bytes (its page cache holds "
              f"{s.cache_size // MiB} MiB, the rest goes to the pool as it is evicted), then `drop_caches` on A "
              "puts the rest. Node A is set up once per store and stays mounted; every run mounts a fresh node "
              f"B (empty page cache) that runs fio for {s.read_runtime:g} s and is unmounted after it (the pool "
              "then holds the same pages at the same version for every round). The two Redis rows use one "
              "redis-server, database 0 over the unix socket and 1 over TCP, so their pools are apart. With "
              "cleancache=none both mounts only have their own page cache, so B reads the disk. B's backing "
              "reads are B's `backing.read_bytes` over the fio run; pool hits are B's "
              "`backend.cluster.store.hits`.", ""]
    for job in READ_JOBS:
        lines += [f"#### {job.label} on node B", "", *read_table(res, job), ""]
    lines += ["### Cost of coherency on writes", "",
              f"fio {WRITE_JOB.label} on node A for {s.write_runtime:g} s, on a {s.write_size // MiB} MiB file the "
              "other nodes read whole just before (so their page caches hold it). Every configuration is "
              "mounted afresh, and its pool emptied (lmdb pool directory removed, Redis FLUSHALL) before the "
              "next. In the "
              "`reading` rows the other nodes also run fio "
              f"{READER_JOB.label} on the file during the run (started 0.3 s before the writer, stopped with "
              "SIGTERM when it ends). Latencies are fio's completion latency "
              "(clat) percentiles. \"Added vs none\" is, per round, the p50 minus the p50 of the "
              "cleancache=none mount: it includes what any cleancache costs a write (pool puts of evicted "
              "pages) as well as the version protocol; \"vs 1 node\" isolates what the other nodes add. "
              "Redis rows use TCP loopback (what nodes on several hosts use).", "",
              *write_table(res), ""]
    lines += ["### Hits per second each store sustains", "",
              f"In-process: {s.rate_pages:,} pages put, then `get` on them (every one a hit) in a loop of "
              f"{s.rate_seconds:g} s under trio.run, by 1 and by 4 concurrent trio tasks (LmdbStore.get never "
              "awaits, so tasks cannot overlap there); `version()` is the check every read on a cluster node "
              "pays first. Through the mount: node B's pool hits per second during the fio runs above, which "
              "are bounded by fio's QD1 request rate, not by the store.", "",
              *rate_table(res), ""]
    lines += ["### Randomized coherency checker", "",
              f"`tools/coherency.py` mounts SRC {CHECKER_NODES} times (its own SRC per store), runs writers "
              "and readers on every node and checks every read against the history of completed writes "
              "(appends from every node and writes made straight to SRC among them); the last node cannot "
              f"join its pool for the first {CHECKER_SLOW_JOIN_S:g} s.", "",
              *checker_table(res), ""]
    bad = [c for c in res.checks if c.first_violations]
    for c in bad:
        lines += [f"First violations ({c.store}):", "", *[f"* {short_violation(v)}" for v in c.first_violations], ""]
    lines += subsection("### Notes", [f"- {n}" for n in res.notes])
    if res.daemon_problems:
        lines += ["### What the node daemons logged", "",
                  "ERROR and WARNING lines and exception lines in the logs of the mounts above (by store and "
                  "node; numbers written N), counted:", "", *[f"- {p}" for p in res.daemon_problems], ""]
    lines += ["### Command lines, exactly as run", "", "Mounts (each node its own mount point; the daemon "
              "also gets `log=FILE`):", "", "```", *res.mount_commands.values(), "```", "",
              "fio (NODE is the node's mount point):", "", "```", *res.fio_commands, "```", "",
              "Coherency checker:", "", "```", *[c.command for c in res.checks], "```", "",
              "Raw fio JSON, the daemons' logs and the run's numbers (`results.json`, for `--from-json`) are kept "
              "under `bench-results/cluster/` (not committed).", ""]
    return "\n".join(lines).rstrip() + "\n"


# -- measuring ------------------------------------------------------------------------------------


def fio_args(job: Job, filename: Path, size: int, runtime: float) -> list[str]:
    """A job's fio command; writes report the latency percentiles the write table shows."""
    percentiles = ["--percentile_list=" + ":".join(f"{p:g}" for p in PERCENTILES)] if job.workload.writes else []
    return fio_command(job, filename, runtime, size=size, extra=percentiles)


def daemon_error(logs: Sequence[Path]) -> str | None:
    """The last exception line in the daemons' logs (what a node that died or failed said)."""
    found = None
    for path in logs:
        with suppress(OSError):
            for line in path.read_text(errors="replace").splitlines():
                if ERROR_LINE.match(line.strip()):
                    found = line.strip()
    return found


def shown(cmd: Sequence[str], mnt: Path) -> list[str]:
    """The command with the node's mount point written NODE (the report shows one line per job)."""
    return [a.replace(str(mnt), "NODE") for a in cmd]


async def put_pages(st: PageStore, store: str, file: bytes, tag: Any, pages: int) -> None:
    """Distinct pages 0..pages-1 of `file`, each put once."""
    page = bytearray(os.urandom(PAGE))
    for i in range(pages):
        page[:8] = i.to_bytes(8, "big")
        if not await st.put(file, tag, i, memoryview(page)):
            raise RuntimeError(f"{store}: put {i} refused")


async def get_rate(st: PageStore, store: str, file: bytes, tag: Any, tasks: int, s: Settings) -> StoreRate:
    """Gets of the pages put, by `tasks` trio tasks for rate_seconds."""
    import trio

    counts = [0, 0]  # gets, hits

    async def worker(k: int, deadline: float) -> None:
        buf = memoryview(bytearray(PAGE))
        i = k
        while time.perf_counter() < deadline:
            putter = await st.get(file, tag, i % s.rate_pages, buf)
            counts[0] += 1
            counts[1] += putter is not None
            i += tasks

    t0 = time.perf_counter()
    async with trio.open_nursery() as nursery:
        for k in range(tasks):
            nursery.start_soon(worker, k, t0 + s.rate_seconds)
    return StoreRate(store, tasks, counts[0], counts[1], time.perf_counter() - t0)


async def version_rate(st: PageStore, file: bytes, seconds: float) -> float:
    """version() calls per second, one task (every read on a cluster node pays one)."""
    calls, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        await st.version(file)
        calls += 1
    return calls / (time.perf_counter() - t0)


class Bench:
    """One run: workspace, redis-server, mounts and pools, all undone by close()."""

    def __init__(self, s: Settings, results_dir: Path) -> None:
        self.s = s
        self.out_dir = results_dir.resolve()
        self.logs, self.raw = self.out_dir / "logs", self.out_dir / "raw"
        for d in (self.logs, self.raw):
            d.mkdir(parents=True, exist_ok=True)
            for old in (*d.glob("*.log"), *d.glob("*.json")):  # this run's evidence only
                old.unlink()
        self.root = Path(tempfile.mkdtemp(prefix="tmemfs-bench-cluster-", dir="/tmp"))
        self.ws = Workspace(self.root, Path(sys.executable).parent)
        self.ws.src.mkdir(parents=True)
        self.pools: set[str] = set()  # lmdb pool uuids (hex) this run made in /dev/shm
        self.daemons: dict[Path, int] = {}  # live node daemons by mount point
        self.redis: Any = None  # tests.redisservers.RedisServer
        self.stack = ExitStack()
        self.res = Results(s)
        self.res.started = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")

    # -- stores and mounts --

    def start_redis(self) -> None:
        """One redis-server on a unix socket and TCP loopback (tests/redisservers.py), stopped in close()."""
        self.redis, why = start_redis(self.stack, self.root)
        if why:
            self.res.notes.append(f"{why}: no Redis rows")

    @property
    def stores(self) -> list[str]:
        return [s for s in STORES if self.redis is not None or not s.startswith("redis")]

    def redis_pids(self) -> list[int]:
        proc = getattr(self.redis, "proc", None)
        return [proc.pid] if proc is not None else []

    def options(self, store: str) -> str:
        s = self.s
        base = f"cache_size={s.cache_size // MiB}M,backing_io=direct"
        if store == NONE:
            return f"cleancache=none,{base}"
        opts = f"cleancache=cluster,{base},cc_size={s.cc_size // MiB}M"
        if store.startswith("redis"):
            opts += f",cc_store={self.redis_url(store)}"
        return opts

    def redis_url(self, store: str) -> str:
        """Each Redis row its own database (0: unix socket, 1: TCP), so their pools stay apart."""
        if store == REDIS_UNIX:
            return f"unix://{self.redis.unix_path}?db=0"
        return f"redis://127.0.0.1:{self.redis.port}/1"

    @contextmanager
    def node(self, store: str, name: str) -> Iterator[Path]:
        """A node of `store` mounted on run/NAME; unmounted (and its daemon gone) on the way out."""
        mnt = self.root / "run" / name
        opts = self.options(store)
        self.res.mount_commands.setdefault(store, shlex.join(["tmemfs", str(self.ws.src), "NODE", "-o", opts]))
        with background(self.ws.src, mnt, opts, self.logs / f"{store}-{name}.log") as pid:
            stats = read_stats(mnt)
            self.daemons[mnt] = pid
            try:
                uuid = stats.get("backend.cluster.pool_uuid")
                if store == LMDB and isinstance(uuid, str):
                    self.pools.add(uuid)
                if store.startswith("redis"):
                    wait_store_up(mnt)
                yield mnt
            finally:
                self.daemons.pop(mnt, None)

    def clear_pool(self, store: str) -> None:
        """Empty the store's pool (no node of it mounted): the next configuration starts from nothing."""
        if store == LMDB:
            from backends.lmdbstore import remove_pool

            for uuid in self.pools:
                remove_pool(bytes.fromhex(uuid))
        elif store.startswith("redis") and self.redis is not None and self.redis.running:
            self.redis.cli("FLUSHALL")

    @contextmanager
    def fresh_pool(self, store: str) -> Iterator[None]:
        try:
            yield
        finally:
            self.clear_pool(store)

    def our_pids(self) -> list[int]:
        return [*self.daemons.values(), *self.redis_pids()]

    def fio(self, cmd: list[str], raw_name: str, runtime: float) -> tuple[FioResult, str]:
        """Run fio once; the daemons' and redis-server's CPU counts as ours, not others'."""
        return run_fio_output(cmd, self.raw / raw_name, runtime, lambda: cpu_sample(self.our_pids()))

    # -- 1. second node --

    def failure(self, exc: BaseException, store: str) -> str:
        """The exception, plus the last error a node daemon of `store` logged (a daemon that died says why)."""
        text = f"{type(exc).__name__}: {exc}".splitlines()[0]
        evidence = daemon_error(sorted(self.logs.glob(f"{store}-*.log")))
        return text + (f"; daemon: {evidence}" if evidence else "")

    def read_phase(self, steps: Progress) -> None:
        """A per store, set up once and kept mounted; then rounds of a fresh B per store and job."""
        s = self.s
        ready: list[str] = []
        with ExitStack() as a_nodes:
            for store in self.res.stores:
                steps.begin(f"{store}: node A reads the {s.file_size // MiB} MiB file, then drop_caches")
                try:
                    a = a_nodes.enter_context(self.node(store, f"a-{store}"))
                    read_through(a / READ_FILE)
                    control(a, "drop_caches")
                    ready.append(store)
                except (OSError, RuntimeError) as exc:
                    why = self.failure(exc, store)
                    log(f"  failed: {why}")
                    for round_ in range(s.rounds):
                        for job in READ_JOBS:
                            self.res.add_read(store, job, ReadRun(round_, error=f"node A: {why}"))
            for round_ in range(s.rounds):
                for store in self.res.stores:
                    for job in READ_JOBS:
                        steps.begin(f"round {round_ + 1}: {store}, node B {job.label}")
                        if store in ready:
                            self.res.add_read(store, job, self.measure_b(store, job, round_))
        for store in self.res.stores:
            self.clear_pool(store)

    def measure_b(self, store: str, job: Job, round_: int) -> ReadRun:
        s = self.s
        try:
            with self.node(store, "b") as b:
                cmd = fio_args(job, b / READ_FILE, s.file_size, s.read_runtime)
                self.res.note_command(shown(cmd, b))
                before = read_stats(b)
                result, stdout = self.fio(cmd, f"read-{store}-{job.name}-r{round_ + 1}.json", s.read_runtime)
                after = read_stats(b) if not result.error else before
                run = read_run(round_, result, stdout, before, after)
        except (OSError, RuntimeError) as exc:
            run = ReadRun(round_, error=f"node B: {self.failure(exc, store)}")
        if run.error:
            log(f"  failed: {run.error}")
        return run

    # -- 2. writes --

    def measure_write(self, cfg: WriteConfig, round_: int) -> None:
        try:
            run = self.write_once(cfg, round_)
        except (OSError, RuntimeError) as exc:
            run = WriteRun(round_, error=self.failure(exc, cfg.store))
        self.res.writes.setdefault(cfg.key, []).append(run)
        if run.error:
            log(f"  failed: {run.error}")

    def write_once(self, cfg: WriteConfig, round_: int) -> WriteRun:
        s = self.s
        with self.fresh_pool(cfg.store), ExitStack() as nodes:
            mnts = [nodes.enter_context(self.node(cfg.store, f"node{i}")) for i in range(cfg.nodes)]
            for other in mnts[1:]:
                read_through(other / WRITE_FILE)
            readers: list[subprocess.Popen[bytes]] = []
            try:
                for i, other in enumerate(mnts[1:] if cfg.reading else []):
                    rcmd = fio_args(READER_JOB, other / WRITE_FILE, s.write_size, s.write_runtime + 30)
                    rcmd[1] = f"--name=reader{i + 1}"
                    self.res.note_command(shown(rcmd, other))
                    with open(self.raw / f"reader-{cfg.key}-{i + 1}-r{round_ + 1}.json", "wb") as out:
                        readers.append(subprocess.Popen(rcmd, stdout=out, stderr=subprocess.STDOUT))
                if readers:
                    time.sleep(0.3)  # the readers are reading when the writer starts
                cmd = fio_args(WRITE_JOB, mnts[0] / WRITE_FILE, s.write_size, s.write_runtime)
                self.res.note_command(shown(cmd, mnts[0]))
                result, stdout = self.fio(cmd, f"write-{cfg.key}-r{round_ + 1}.json", s.write_runtime)
            finally:
                for proc in readers:  # fio ends its job cleanly on SIGTERM
                    with suppress(ProcessLookupError):
                        proc.terminate()
                for proc in readers:
                    end_process(proc, 20, ask=False)
        return write_run(round_, result, stdout)

    # -- 3. in-process store rates --

    def measure_rates(self, store: str) -> None:
        import trio

        from backends.lmdbstore import remove_pool

        uuid = os.urandom(16)
        try:
            self.res.rates += trio.run(self.store_rates, store, uuid)
        finally:
            if store == LMDB:
                remove_pool(uuid)
            else:
                self.clear_pool(store)

    async def store_rates(self, store: str, uuid: bytes) -> list[StoreRate]:
        """Join the store's pool, put rate_pages pages, then time gets by 1 (and 4) tasks and version()."""
        from backends.lmdbstore import LmdbStore
        from backends.redisstore import RedisStore

        s = self.s
        st: PageStore
        if store == LMDB:
            st = LmdbStore(uuid, capacity=2 * s.rate_pages * PAGE + 64 * PAGE)  # /dev/shm, as users get
        else:
            st = RedisStore(uuid, self.redis_url(store))
        try:
            if await st.join("bench_cluster") < 0:
                raise RuntimeError(f"{store}: could not join the pool")
            file = b"bench-cluster-file"
            tag = await st.version(file)
            await put_pages(st, store, file, tag, s.rate_pages)
            out = [await get_rate(st, store, file, tag, n, s) for n in ((1,) if store == LMDB else (1, 4))]
            out[0].versions_per_s = await version_rate(st, file, s.rate_seconds / 2)
            return out
        finally:
            await st.leave()

    # -- 4. the checker --

    def run_checker(self, store: str, ops: int) -> CheckerRun:
        src = self.root / "run" / f"coherency-{store}"
        src.mkdir(parents=True, exist_ok=True)
        cmd = [sys.executable, "-m", "tools.coherency", "--mount", str(src), "--nodes", str(CHECKER_NODES),
               "--options", self.options(store), "--ops", str(ops), "--timeout", "900", "--json",
               "--slow-join", str(CHECKER_SLOW_JOIN_S)]
        shown_cmd = "python " + shlex.join(cmd[1:])
        out_file = self.raw / f"coherency-{store}.json"
        mounts: list[str] = []
        proc: subprocess.Popen[str] | None = None
        stderr_lines: list[str] = []
        try:
            with open(out_file, "w") as out:
                proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.PIPE, text=True,
                                        cwd=Path(__file__).resolve().parent.parent)
                assert proc.stderr is not None
                for line in proc.stderr:
                    line = line.rstrip()
                    stderr_lines.append(line)
                    log(f"  {line}")
                    match = NODE_LINE.match(line)
                    if match:
                        mounts.append(match.group(1))
                proc.wait(timeout=960)
        finally:
            if proc is not None:
                end_process(proc, 60)  # the checker unmounts its nodes on SIGTERM
            with signals_deferred():
                for m in mounts:  # what the checker left behind, if it was killed
                    with suppress(Exception):
                        if is_mounted(Path(m)):
                            unmount(Path(m))
            self.forget_src_pool(src, store)
        return parse_checker(store, shown_cmd, ops, out_file.read_text(), proc.returncode if proc else -1,
                             "\n".join(stderr_lines))

    def forget_src_pool(self, src: Path, store: str) -> None:
        """Remove the lmdb pool of a SRC the checker mounted (its uuid is kept on SRC)."""
        try:
            uuid = os.getxattr(src, XATTR).decode().strip()
        except OSError:
            uuid = ""
        if store == LMDB and len(uuid) == 32:
            from backends.lmdbstore import remove_pool

            remove_pool(bytes.fromhex(uuid))
        elif store != LMDB:
            self.clear_pool(store)

    # -- the whole run --

    def close(self) -> None:
        """Last resort: nothing mounted, no server, no pool of ours left; then the workspace goes."""
        with signals_deferred():
            for m in mount_points():
                if m.startswith(f"{self.root}/"):
                    with suppress(Exception):
                        unmount(Path(m))
            for pid in list(self.daemons.values()):
                stop_daemon(pid, grace=2.0)
            with suppress(Exception):
                self.stack.close()  # redis-server
            from backends.lmdbstore import remove_pool

            for uuid in self.pools:
                remove_pool(bytes.fromhex(uuid))
            for src in self.root.glob("run/coherency-*"):
                with suppress(OSError, ValueError):
                    remove_pool(bytes.fromhex(os.getxattr(src, XATTR).decode().strip()))
            if not any(m.startswith(str(self.root)) for m in mount_points()):
                shutil.rmtree(self.root, ignore_errors=True)


def run(s: Settings, results_dir: Path) -> Results:
    t0 = time.monotonic()
    bench = Bench(s, results_dir)
    res = bench.res
    start_digest = source_digest()
    try:
        res.machine = machine_facts(bench.ws.src)
        res.machine["load average"] = load_average()
        res.versions = store_versions()
        log(f"workspace {bench.root}; writing the {s.file_size // MiB} MiB and {s.write_size // MiB} MiB files")
        make_file(bench.ws.src / READ_FILE, s.file_size)
        make_file(bench.ws.src / WRITE_FILE, s.write_size)
        bench.start_redis()
        res.stores = bench.stores
        measure(bench)
    finally:
        bench.close()
    res.daemon_problems = log_problems({p.stem: p.read_text(errors="replace")
                                        for p in sorted(bench.logs.glob("*.log"))})
    res.notes += sanity_notes(res)
    digests = note_digests(start_digest, res.versions)
    if digests[0] != digests[1]:
        res.notes.append("tmemfs's sources changed during the run (someone edited them): numbers may mix versions")
    res.elapsed_s = time.monotonic() - t0
    return res


def measure(bench: Bench) -> None:
    """Reads on a second node, writes, in-process get rates and the checker, for the stores that can run."""
    s, res = bench.s, bench.res
    wcfgs = write_configs([st for st in res.stores if st in WRITE_STORES])
    rate_stores = [st for st in RATE_STORES if st in res.stores]
    check_stores = [st for st in CHECK_STORES if st in res.stores]
    total = (len(res.stores) + s.rounds * (len(res.stores) * len(READ_JOBS) + len(wcfgs)) + len(rate_stores)
             + len(check_stores))
    log(f"plan ({s.mode}): {s.rounds} round(s) of {len(res.stores)} stores x {len(READ_JOBS)} read jobs "
        f"({s.read_runtime:g} s) and {len(wcfgs)} write configurations ({s.write_runtime:g} s), then "
        f"in-process get rates ({', '.join(rate_stores)}) and the coherency checker "
        f"({', '.join(check_stores)}): {total} steps")
    steps = Progress(total)
    bench.read_phase(steps)
    for round_ in range(s.rounds):
        for cfg in wcfgs:
            steps.begin(f"round {round_ + 1}: 4k randwrite on node A, {cfg.label}")
            bench.measure_write(cfg, round_)
    for store in rate_stores:
        steps.begin(f"in-process gets, {store}")
        try:
            bench.measure_rates(store)
        except (OSError, RuntimeError) as exc:
            res.notes.append(f"in-process gets on {store} failed: {type(exc).__name__}: {exc}")
            log(f"  failed: {res.notes[-1]}")
    for store in check_stores:
        ops = s.checker_ops if store == LMDB else s.checker_ops_redis
        steps.begin(f"coherency checker, {store}, {CHECKER_NODES} nodes, {ops:,} ops")
        res.checks.append(bench.run_checker(store, ops))


def results_path(results_dir: Path, quick: bool) -> Path:
    """A quick run never overwrites the numbers of a full one."""
    return results_dir / ("results-quick.json" if quick else "results.json")


def main(argv: Sequence[str] | None = None) -> int:
    parser = section_parser("bench_cluster", __doc__,
                            "1 round, 1.5 s fio runs, a 64 MiB file, 10,000 checker ops: under 3 minutes")
    add_output_options(parser, "cluster", ROOT, "raw output, logs, results JSON")
    add_from_json(parser, "write the report from a saved results JSON", "RESULTS")
    args = parser.parse_args(argv)
    res = measured_or_loaded(args, lambda a: run(settings_for(a.quick), a.results_dir), results_to_json,
                             results_from_json, results_path(args.results_dir, args.quick))
    if res is None:
        return 130
    return publish(args.out, "cluster", report(res), res.elapsed_s,
                   (f"{mark(ok).strip('*'):7} {t}: {m}" for t, m, ok in targets(res)))


if __name__ == "__main__":
    sys.exit(main())
