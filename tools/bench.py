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
import re
import shlex
import subprocess
import sys
import tarfile
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from fusefs.options import MountConfig
from tools.corpus import make_file, make_text_file
from tools.fio import (
    WORKLOAD,
    WORKLOADS,
    FioResult,
    Job,
    Matrix,
    Point,
    fio_command,
    matrix_from_json,
    matrix_to_json,
    run_fio,
)
from tools.machine import BUSY, machine_facts, note_digests, proc_status, source_digest, versions, wait_for_quiet
from tools.mounting import Config, Mount, Workspace, end_process, kill_leftovers, mount_argv, read_stats, read_through
from tools.report import (
    CHART_DIR,
    Progress,
    Ratio,
    cell,
    facts_table,
    fmt_iops,
    grouped_commands,
    log,
    markdown,
    measured_or_loaded,
    median_iops,
    noise_lines,
    plain_ratio,
    point_ratio,
    pyplot,
    run_json,
    save_figure,
    spread,
    table,
    write_head,
)
from tools.rounds import RUN_OVERHEAD_S, Part, Settings, retry_busy, run_part

MiB = 1 << 20
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


# -- what is measured ------------------------------------------------------------------------------

ENGINES: tuple[tuple[str, int], ...] = (("psync", 1), ("libaio", 16))
MATRIX_JOBS: tuple[Job, ...] = tuple(Job(w, engine, depth, 1) for w in WORKLOADS for engine, depth in ENGINES)
COMPARE_JOBS: tuple[Job, ...] = (Job(WORKLOAD["4k-randread"], "psync", 1, 0),
                                 Job(WORKLOAD["4k-randread"], "libaio", 16, 0),
                                 Job(WORKLOAD["128k-read"], "psync", 1, 0))
ALL_JOBS: dict[str, Job] = {j.name: j for j in (*MATRIX_JOBS, *COMPARE_JOBS)}


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


MATRIX = Part("matrix", "fio matrix (direct=1)", MATRIX_CONFIGS, MATRIX_JOBS, TEXT_NAME, RW_NAME)
COMPARE = Part("compare", "pass-through comparison (direct=0, the file fits every cache)", COMPARE_CONFIGS,
               COMPARE_JOBS, FILE_NAME)
PARTS: dict[str, Part] = {MATRIX.key: MATRIX, COMPARE.key: COMPARE}


def fmt_seconds(seconds: float) -> str:
    return f"{seconds:g} s"


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
        with Mount(config, ws, (FILE_NAME,)) as mount:
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
    with Mount(config, ws, (FILE_NAME,)) as mount:
        read_through(mount.path / FILE_NAME)
        assert mount.pid is not None
        spy_cmd = [str(pyspy), "record", "-p", str(mount.pid), "-d", str(int(settings.runtime) + 2), "-r", "250",
                   "-f", "raw", "--nonblocking", "-o", str(out)]
        spy = subprocess.Popen(spy_cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            time.sleep(0.5)
            result = run_fio(fio_command(job, mount.path / FILE_NAME, settings.runtime), None, settings.runtime)
        finally:
            end_process(spy, settings.runtime + 30, ask=False)
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


def measure_rss(ws: Workspace) -> RssResult:
    """Fill a 64M page cache by reading a 256 MiB file through tmemfs, then read /proc/PID/status."""
    make_file(ws.src / RSS_FILE_NAME, RSS_FILE_SIZE)
    options = f"cleancache=none,cache_size={RSS_CACHE // MiB}M"
    config = Config("rss", "tmemfs for the RSS check", "tmemfs", options)
    with Mount(config, ws, (FILE_NAME,)) as mount:
        pid = stat_int(read_stats(mount.path), "fs.pid")
        idle = proc_status(pid, "VmRSS")
        read_through(mount.path / RSS_FILE_NAME)
        stats = read_stats(mount.path)
        full, hwm = proc_status(pid, "VmRSS"), proc_status(pid, "VmHWM")
    return RssResult(options, idle, full, hwm, stat_int(stats, "pagecache.bytes"),
                     stat_int(stats, "pagecache.capacity_pages") * 4096)


def stat_int(stats: dict[str, object], key: str) -> int:
    """A numeric counter from stats.json (typed as object there)."""
    return int(str(stats[key]))


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


def results_table(report: Report, part: Part, iops: bool) -> list[str]:
    points = report.results(part).points
    return table(["job", *(c.key for c in part.configs)],
                 [[job.label, *(cell(points.get((c.key, job.name)), iops) for c in part.configs)]
                  for job in part.jobs])


# The comparisons the 0.9x target is judged on: tmemfs as mounted by default against the
# example as shipped, and, against the example with tmemfs's 1 s timeouts -- whose direct=0
# reads the kernel then serves from its page cache -- tmemfs with the same caching
# (kernel_cache). tmemfs's default direct_io sends every read to Python, which no FUSE
# daemon answers as fast as the kernel's page cache: shown, informative.
JUDGED: tuple[tuple[str, str], ...] = ((SUBJECT, BASELINE), (SUBJECT_KC, BASELINE_1S))
INFORMATIVE = (SUBJECT, BASELINE_1S)


def ratio_rows(points: dict[tuple[str, str], Point]) -> list[tuple[Job, str, str, Ratio | None]]:
    """(job, subject, baseline, ratio) of every judged comparison, in table order."""
    return [(job, subject, base, point_ratio(points, (subject, job.name), (base, job.name)))
            for job in COMPARE_JOBS for subject, base in JUDGED]


def informative_ratios(points: dict[tuple[str, str], Point]) -> list[tuple[Job, Ratio | None]]:
    """(job, ratio) of the INFORMATIVE comparison for every comparison job, in table order."""
    subject, base = INFORMATIVE
    return [(job, point_ratio(points, (subject, job.name), (base, job.name))) for job in COMPARE_JOBS]


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
    verdict = "ok" if r.meets(TARGET) else "**MISS**"
    if r.lo < TARGET <= r.hi:
        verdict += " (rounds straddle the target)"
    return f"{r.median:.2f}x ({r.lo:.2f}..{r.hi:.2f}) {verdict}"


MATRIX_RATIOS: tuple[tuple[str, str], ...] = (
    (MATRIX_NONE, NODIRECT), (MATRIX_NONE, NULL), ("tmemfs-tmem", MATRIX_NONE), ("tmemfs-zcache", MATRIX_NONE),
    ("tmemfs-dedup", MATRIX_NONE), ("tmemfs-tmem", NULL),
)


def matrix_ratio_table(report: Report) -> list[str]:
    pts = report.matrix.points
    return table(["job", *(f"{s} / {b}" for s, b in MATRIX_RATIOS)],
                 [[job.label, *(plain_ratio(pts, s, b, job.name) for s, b in MATRIX_RATIOS)] for job in MATRIX_JOBS])


def misses(points: dict[tuple[str, str], Point]) -> list[tuple[Job, str, str, Ratio]]:
    return [(j, s, b, r) for j, s, b, r in ratio_rows(points) if r is not None and not r.meets(TARGET)]


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
    runs = report.matrix.runs() + report.compare.runs()
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
        f"tools/corpus.py, about 2x compressible); write jobs use `{RW_NAME}`, a fresh copy of it made "
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
        "* The null file system is mounted like tmemfs but served by one pyfuse3 task, "
        "`pyfuse3.main(max_tasks=1)` (its handlers never wait), "
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
        "## Machine", "", *facts_table(report.machine), "",
        "## Versions", "", *facts_table(report.versions), "",
        "## fio command lines, exactly as run", "", *command_lines(report), "",
        "Raw fio JSON of every run, the daemons' logs and the run's numbers (`report.json`, for `--from-json`) "
        "are kept under `bench-results/run/` (not committed).", "",
    ]
    return markdown(out)


# -- charts ----------------------------------------------------------------------------------


def chart_name(part: Part) -> str:
    return f"{part.key}-iops.png"


def make_chart(report: Report, part: Part, path: Path) -> None:
    """IOPS per configuration and workload: one panel per engine/queue depth, one bar per configuration."""
    import textwrap

    plt = pyplot()
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
    save_figure(fig, path, rect=(0, 0.01 + 0.032 * rows, 1, 1))


def make_charts(report: Report, out: Path) -> list[tuple[str, str]]:
    """The charts of every part that ran, in docs/bench/ next to the report; (alt, relative path)."""
    made: list[tuple[str, str]] = []
    for part in PARTS.values():
        if not report.ran(part):
            continue
        rel = CHART_DIR / chart_name(part)
        try:
            make_chart(report, part, out.parent / rel)
        except ImportError as exc:
            log(f"no chart ({exc}): pip install matplotlib")
            return made
        made.append((f"{part.title}: IOPS per configuration and workload", rel.as_posix()))
    return made


# -- saved numbers (--from-json) -------------------------------------------------------------------


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


def plan(settings: Settings) -> tuple[int, float]:
    """(fio runs, rough seconds) of the main parts."""
    runs = sum(settings.reps * len(PARTS[k].configs) * len(PARTS[k].jobs) for k in settings.parts)
    return runs, runs * (settings.runtime + RUN_OVERHEAD_S)


def prepare(ws: Workspace, report: Report) -> None:
    """The example and its patched copies, the test files, and how each configuration is mounted."""
    report.example = fetch_example(ws, report.versions["pyfuse3"])
    make_file(ws.src / FILE_NAME, FILE_SIZE)
    make_text_file(ws.src / TEXT_NAME, FILE_SIZE)
    report.mount_commands = {f"{p.key}/{c.key}": shlex.join(mount_argv(c, ws, p.files))
                             for p in PARTS.values() for c in p.configs if c.kind != "native"}


def measure_parts(ws: Workspace, report: Report) -> None:
    """The parts asked for, in interleaved rounds; then their busy runs again while the retry budget lasts."""
    settings = report.settings
    parts = [PARTS[k] for k in settings.parts]
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


def measure_extras(ws: Workspace, report: Report) -> None:
    """Profiles of the comparison jobs tmemfs lost, fio's --invalidate=1, and resident memory."""
    settings = report.settings
    compared = COMPARE.key in settings.parts
    if settings.profile and compared:
        subject = COMPARE.config(SUBJECT)
        report.profiles = [run_profile(ws, subject, job, settings) for job in jobs_to_profile(report.compare)]
    if settings.sensitivity and compared:
        log("fio's --invalidate=1 on the pass-through comparison's first job")
        keys = (BASELINE, BASELINE_1S, SUBJECT)
        report.sensitivity = run_sensitivity(ws, [c for c in COMPARE.configs if c.key in keys], settings)
    log("resident memory check")
    report.rss = measure_rss(ws)


def run(args: argparse.Namespace) -> Report:
    """The whole benchmark; every mount is undone by the Mount context managers or kill_leftovers."""
    t0 = time.monotonic()
    settings = settings_from(args)
    ws = Workspace(Path(args.results_dir).resolve(), Path(sys.executable).parent)
    ws.prepare()
    report = Report(settings, machine_facts(ws.src), versions(),
                    datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z"))
    start_digest = source_digest()
    try:
        prepare(ws, report)
        report.background = wait_for_quiet(settings.wait_quiet_s, log)
        measure_parts(ws, report)
        measure_extras(ws, report)
    finally:
        kill_leftovers(ws)
    report.digests = note_digests(start_digest, report.versions)
    report.elapsed_s = time.monotonic() - t0
    return report


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    out = Path(args.out)
    report = measured_or_loaded(args, run, report_to_json, report_from_json,
                                run_json(Path(args.results_dir), args.quick))
    if report is None:
        return 130
    report.charts = make_charts(report, out)
    write_head(out, render_report(report), "backends")
    log(f"wrote {out} and {len(report.charts)} chart(s) in {CHART_DIR}/ (run took "
        f"{report.elapsed_s / 60:.1f} min)")
    for line in summary_lines(report):
        print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())

