"""One host pool against per-mount backends (issue 16, item 5), and the donor's take-back latency (item 3).

    .venv/bin/python -m tools.bench_host [--quick] [--out BENCHMARKS.md] [--from-json REPORT]   (as root)

Three mounts of three SRCs on local disk with skewed working sets (`hot`: small, uniform 4k reads; `zipf`: large,
zipf:1.1 4k reads; `scan`: 128k reads in order, over and over) get the same total cleancache memory M as three
per-mount backends of M/3 (Whitehouse's side of the 2011 debate) or as one host pool of M they join with equal
weights (Magenheimer's), for each backend and policy: a warm-up read, then the three fio jobs at once, and each
mount's counter deltas. Then a donor takes part of a full host's budget back, timed. Only the text between
`<!-- host:begin -->` and `<!-- host:end -->` is written; the chart goes to docs/bench/host.png.
"""

from __future__ import annotations

import argparse
import datetime
import os
import shlex
import shutil
import statistics
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from backends.hoststore import HostStore
from tools.corpus import text_corpus
from tools.fio import WORKLOAD, FioResult, Job, Workload, fio_command, fio_report, run_fio
from tools.machine import background_cpu, machine_facts, source_digest, versions
from tools.mounting import Workspace, backend_value, background, counter, read_stats, read_through
from tools.report import (
    add_from_json,
    add_output_options,
    bar_groups,
    draw_chart,
    human,
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
)

MiB = 1 << 20
PAGE = 4096
BEGIN, END = markers("host")
TITLE = "## One host pool or per-mount backends (issue 16; python -m tools.bench_host)"
CHART = "host.png"
ROOT = Path("bench-results/host")
HOST_DIR = Path("/dev/shm")  # where cc_host= keeps its pools when cc_dir= is not given
BACKENDS = ("tmem", "zcache", "dedup")
POLICIES = ("lru", "sieve")  # what a host pool can keep (per-mount backends also have s3fifo and arc)
PER_MOUNT, HOST = "per-mount", "host"
TIE = 0.01  # hit ratios or fairness indices closer than this are a tie in the verdict
KEY_PAGES = 1024  # the take-back filler's pages per key (a 4 MiB file each)

HOT = Workload("hot", "4k randread, uniform", ("--rw=randread", "--bs=4k"))
SCAN = Workload("scan", "128k sequential read, looping", ("--rw=read", "--bs=128k"))
CLIENTS: dict[str, Workload] = {"hot": HOT, "zipf": WORKLOAD["4k-zipf"], "scan": SCAN}


@dataclass(frozen=True)
class Settings:
    """Sizes in bytes; `memory` is the total cleancache memory M of either set-up."""

    quick: bool
    sizes: dict[str, int]  # client -> its file
    memory: int
    cache_size: int  # each mount's page cache
    work: dict[str, int]  # client -> bytes it reads in the measured run: the same work on both sides
    backends: tuple[str, ...]
    policies: tuple[str, ...]
    takeback_budget: int
    takeback_sizes: tuple[int, ...]
    reps: int  # take-backs of each size


FULL = Settings(False, {"hot": 24 * MiB, "zipf": 256 * MiB, "scan": 192 * MiB}, 192 * MiB, 8 * MiB,
                {"hot": 256 * MiB, "zipf": 256 * MiB, "scan": 384 * MiB}, BACKENDS, POLICIES, 1024 * MiB,
                (64 * MiB, 512 * MiB), 20)
QUICK = Settings(True, {"hot": 6 * MiB, "zipf": 48 * MiB, "scan": 36 * MiB}, 36 * MiB, 2 * MiB,
                 {"hot": 24 * MiB, "zipf": 24 * MiB, "scan": 72 * MiB}, BACKENDS, POLICIES, 256 * MiB,
                 (64 * MiB, 128 * MiB), 5)
FIO_TIMEOUT_S = 900.0  # a run that takes longer is a wedged mount


# -- the files ----------------------------------------------------------------------------------------------


def text_page(corpus: bytes, stamp: str, n: int) -> bytes:
    """A page of text (lz4 halves it), made distinct by its stamp; `n` picks an unaligned corpus slice."""
    at = (n * 4093) % (len(corpus) - PAGE)
    return (f"{stamp}\n".encode() + corpus[at:at + PAGE]).ljust(PAGE, b" ")[:PAGE]


def shared_counts(pages: dict[str, int]) -> dict[str, int]:
    """How many distinct shared pages each file holds: half its pages, but no more than the largest other
    file's half, so that every shared page of a file is also in another (the largest file repeats some)."""
    halves = {name: n // 2 for name, n in pages.items()}
    return {name: min(h, max((o for other, o in halves.items() if other != name), default=h))
            for name, h in halves.items()}


def data_file(ws: Workspace, name: str, size: int) -> Path:
    return ws.src / name / f"{name}-{human(size)}.dat"


def make_files(ws: Workspace, sizes: dict[str, int], corpus: bytes) -> None:
    """Each client's SRC holds one file; one already there with the right size is kept."""
    pages = {name: size // PAGE for name, size in sizes.items()}
    shared = shared_counts(pages)
    for name, size in sizes.items():
        path = data_file(ws, name, size)
        if path.exists() and path.stat().st_size == size:
            continue
        log(f"making {path.name} (half of its pages shared)")
        shutil.rmtree(path.parent, ignore_errors=True)
        path.parent.mkdir(parents=True)
        tmp = path.with_suffix(".tmp")
        with open(tmp, "wb") as f:  # even pages shared (the n-th the same in every file), odd ones its own
            for i in range(pages[name]):
                stamp, n = ("shared", (i // 2) % max(1, shared[name])) if i % 2 == 0 else (name, i)
                f.write(text_page(corpus, f"{stamp} page {n:012d}", n))
        tmp.rename(path)


# -- one configuration ----------------------------------------------------------------------------------------


@dataclass
class Client:
    """One mount's numbers over the fio run (counter deltas; used bytes at its end)."""

    name: str
    succ_gets: int = 0
    failed_gets: int = 0
    src_bytes: int = 0
    read_bytes: int = 0  # what fio read
    iops: float = 0.0
    used_bytes: int | None = None  # its pages in its backend (per-mount) or in the host (client.stored_bytes)
    evictions: int | None = None  # of its pages, during the run

    @property
    def hit_ratio(self) -> float:
        gets = self.succ_gets + self.failed_gets
        return self.succ_gets / gets if gets else 0.0

    @property
    def src_share(self) -> float:
        """Bytes read from SRC per byte fio read: comparable across set-ups that ran at different speeds."""
        return self.src_bytes / self.read_bytes if self.read_bytes else 0.0


@dataclass
class Cell:
    """One set-up with one backend and policy."""

    backend: str
    policy: str
    setup: str
    clients: list[Client] = field(default_factory=list)
    host: dict[str, int] = field(default_factory=dict)  # the host's counters at the end (evictions: a delta)
    error: str | None = None

    @property
    def label(self) -> str:
        return f"{self.backend}/{self.policy}"

    @property
    def hit_ratio(self) -> float:
        gets = sum(c.succ_gets + c.failed_gets for c in self.clients)
        return sum(c.succ_gets for c in self.clients) / gets if gets else 0.0

    @property
    def fairness(self) -> float:
        return jain([c.hit_ratio for c in self.clients])

    @property
    def src_bytes(self) -> int:
        return sum(c.src_bytes for c in self.clients)

    @property
    def src_share(self) -> float:
        read = sum(c.read_bytes for c in self.clients)
        return self.src_bytes / read if read else 0.0

    @property
    def iops(self) -> float:
        return sum(c.iops for c in self.clients)


def jain(xs: Sequence[float]) -> float:
    """Jain's fairness index, (sum x)^2 / (n sum x^2): 1 when all are equal (all zero too), 1/n when one has
    everything."""
    if not xs:
        raise ValueError("Jain's index of no values")
    squares = sum(x * x for x in xs)
    return 1.0 if squares == 0 else sum(xs) ** 2 / (len(xs) * squares)


def mount_options(s: Settings, backend: str, policy: str, host: str | None) -> str:
    """Per-mount: M/3 each; host: every client names M, and the first one's makes the host's budget."""
    cc = f"cc_host={host},cc_size={human(s.memory)}" if host else f"cc_size={human(s.memory // len(CLIENTS))}"
    return f"cleancache={backend},cache_size={human(s.cache_size)},{cc},cc_policy={policy},backing_io=direct"


def fio_job(ws: Workspace, s: Settings, name: str) -> list[str]:
    """The client's fio job: a fixed amount of reading, not a time (a slower set-up must not simply ask
    for fewer pages: hit ratios compare only for the same requests)."""
    path = ws.mnt / name / data_file(ws, name, s.sizes[name]).name
    cmd = fio_command(Job(CLIENTS[name], "psync", 1, 1), path, FIO_TIMEOUT_S, size=s.sizes[name])
    return [arg for arg in cmd if arg != "--time_based"] + [f"--io_size={s.work[name]}"]


def suffix_delta(before: dict[str, Any], after: dict[str, Any], name: str) -> int | None:
    """The change of backend.<mode>.NAME, None when the backend has no such counter."""
    end, start = backend_value(after, name), backend_value(before, name)
    return None if end is None else end - (start or 0)


def client_numbers(name: str, setup: str, before: dict[str, Any], after: dict[str, Any],
                   fio: FioResult, raw: Path) -> Client:
    def d(key: str) -> int:
        return int(counter(after, key) - counter(before, key))

    report, host = fio_report(raw.read_text()), setup == HOST
    read = int(report["jobs"][0]["read"]["io_bytes"]) if report else 0
    return Client(name, d("succ_gets"), d("failed_gets"), d("backing.read_bytes"), read, fio.iops,
                  backend_value(after, "client.stored_bytes" if host else "pool_total_size"),
                  suffix_delta(before, after, "client.evictions" if host else "evicted_pages"))


def host_numbers(before: dict[str, Any], after: dict[str, Any]) -> dict[str, int]:
    """The host's state at the end, and its evictions, lock timeouts and dedup hits (puts served by a copy
    already held) during the run."""
    out = {k: v for k in ("budget_bytes", "used_bytes", "stored_pages", "clients")
           if (v := backend_value(after, f"host.{k}")) is not None}
    return {**out, **{k: v for k in ("evictions", "lock_timeouts", "dedup_pages")
                      if (v := suffix_delta(before, after, f"host.{k}")) is not None}}


@contextmanager
def host_removed(name: str | None) -> Iterator[None]:
    """A host pool outlives its last client: its directory goes when the configuration is done."""
    try:
        yield
    finally:
        if name:
            shutil.rmtree(HOST_DIR / f"tmemfs-host-{name}", ignore_errors=True)


def measure(ws: Workspace, s: Settings, cell: Cell, tag: str, commands: list[str]) -> None:
    """Mount the three clients, warm up, run the three fio jobs at once and keep the counter deltas; every
    mount is gone (and the host's directory) when it returns."""
    host = f"bench-{tag}-{cell.backend}-{cell.policy}" if cell.setup == HOST else None
    options = mount_options(s, cell.backend, cell.policy, host)
    stem = f"{cell.setup}-{cell.backend}-{cell.policy}"
    jobs = {name: fio_job(ws, s, name) for name in CLIENTS}

    def fio(name: str) -> FioResult:
        return run_fio(jobs[name], ws.raw / f"{stem}-{name}.json", FIO_TIMEOUT_S)  # fio's output kept there

    with host_removed(host), ExitStack() as stack, ThreadPoolExecutor(len(CLIENTS)) as pool:
        for name in CLIENTS:
            commands.append(f"tmemfs {ws.src / name} {ws.mnt / name} -o {options}")
            stack.enter_context(background(ws.src / name, ws.mnt / name, options, ws.logs / f"{stem}-{name}.log"))
        # the warm-up: every file read once through its mount, all at once (nobody starts with the pool alone)
        list(pool.map(read_through, [ws.mnt / n / data_file(ws, n, s.sizes[n]).name for n in CLIENTS]))
        commands.extend(shlex.join(cmd) for cmd in jobs.values())
        before = {name: read_stats(ws.mnt / name) for name in CLIENTS}
        results = dict(zip(jobs, pool.map(fio, jobs), strict=True))
        after = {name: read_stats(ws.mnt / name) for name in CLIENTS}
    failed = [f"{name}: {r.error}" for name, r in results.items() if r.error]
    if failed:
        raise RuntimeError("; ".join(failed))
    cell.clients = [client_numbers(n, cell.setup, before[n], after[n], results[n], ws.raw / f"{stem}-{n}.json")
                    for n in CLIENTS]
    if host:
        first = next(iter(CLIENTS))
        cell.host = host_numbers(before[first], after[first])


# -- take-back ----------------------------------------------------------------------------------------------


@dataclass
class TakeBack:
    size: int
    latencies_ns: list[int] = field(default_factory=list)
    returned: list[int] = field(default_factory=list)
    used_before: list[int] = field(default_factory=list)  # the host's used bytes before each take-back

    def ms(self, q: float) -> float:
        return percentile(sorted(self.latencies_ns), q) / 1e6


def fill(store: HostStore, pool: int, first: int, count: int, corpus: bytes) -> int:
    """Put `count` distinct pages (numbered from `first`) as one client would; the next number."""
    for n in range(first, first + count):
        page = memoryview(text_page(corpus, f"filler page {n:012d}", n))
        store.put(pool, (n // KEY_PAGES).to_bytes(8, "little"), n % KEY_PAGES, page, compress=False, dedup=False)
    return first + count


def measure_takeback(s: Settings, corpus: bytes, tag: str) -> list[TakeBack]:
    """A host of takeback_budget filled by an in-process client; the donor takes each size back `reps` times
    (timed with perf_counter_ns), gives it back, and the client fills it again."""
    name = f"bench-{tag}-takeback"
    results = [TakeBack(size) for size in s.takeback_sizes]
    with host_removed(name), ExitStack() as stack:
        store = HostStore(name, str(HOST_DIR))
        stack.callback(store.leave)
        store.join("filler", s.takeback_budget, policy="lru")
        pool = store.new_pool()
        donor = HostStore.attach(name, str(HOST_DIR))
        stack.callback(donor.close)
        n = fill(store, pool, 0, s.takeback_budget // PAGE, corpus)
        for tb in results:
            for _ in range(s.reps):
                tb.used_before.append(int(donor.host_stats()["used_bytes"]))
                t0 = time.perf_counter_ns()
                taken = donor.take_back(tb.size)
                tb.latencies_ns.append(time.perf_counter_ns() - t0)
                tb.returned.append(int(taken))
                donor.give_back(tb.size)
                n = fill(store, pool, n, tb.size // PAGE, corpus)
    return results


# -- the run --------------------------------------------------------------------------------------------------


@dataclass
class Report:
    settings: Settings
    machine: dict[str, str]
    versions: dict[str, str]
    started: str
    command: str
    cells: list[Cell] = field(default_factory=list)
    takeback: list[TakeBack] = field(default_factory=list)
    takeback_error: str | None = None
    commands: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    paths: dict[str, str] = field(default_factory=dict)
    elapsed_s: float = 0.0


def run_all(s: Settings, results_dir: Path, command: str) -> Report:
    """Every backend x policy, per-mount then host, then the take-backs; one failure is reported, not fatal."""
    ws = Workspace(results_dir.resolve(), Path(sys.executable).parent)
    ws.prepare()
    report = Report(s, machine_facts(ws.src), versions(),
                    datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"), command)
    report.machine["other processes at the start"] = f"{background_cpu():.2f} CPUs busy"
    report.paths = {"SRC": str(ws.src), "MNT": str(ws.mnt)}
    corpus = text_corpus(8 * MiB)
    make_files(ws, s.sizes, corpus)
    digest, started, tag = source_digest(), time.monotonic(), f"{os.getpid()}-{int(time.time())}"
    commands: list[str] = []
    for backend in s.backends:
        for policy in s.policies:
            for setup in (PER_MOUNT, HOST):
                cell = Cell(backend, policy, setup)
                log(f"{setup} {cell.label}")
                try:
                    measure(ws, s, cell, tag, commands)
                except Exception as exc:  # the other configurations still run
                    cell.error = str(exc) or type(exc).__name__
                    log(f"{setup} {cell.label} failed: {cell.error}")
                report.cells.append(cell)
    log(f"take-back: {human(s.takeback_budget)} host, {s.reps} x {', '.join(human(x) for x in s.takeback_sizes)}")
    try:
        report.takeback = measure_takeback(s, corpus, tag)
    except Exception as exc:
        report.takeback_error = str(exc) or type(exc).__name__
    report.commands = list(dict.fromkeys(commands))
    if source_digest() != digest:
        report.notes.append("tmemfs's sources changed during the run: the numbers mix two versions")
    report.elapsed_s = time.monotonic() - started
    return report


# -- the section ----------------------------------------------------------------------------------------------


def pairs(report: Report) -> list[tuple[Cell, Cell]]:
    """(per-mount, host) of each backend/policy measured on both sides."""
    done = {(c.label, c.setup): c for c in report.cells if not c.error}
    return [(done[(c.label, PER_MOUNT)], c) for c in report.cells
            if c.setup == HOST and not c.error and (c.label, PER_MOUNT) in done]


def tally(diffs: Sequence[float]) -> tuple[int, int, int, str]:
    """(host higher, per-mount higher, ties, the side favoured) of host - per-mount differences."""
    host, per = sum(d > TIE for d in diffs), sum(d < -TIE for d in diffs)
    side = "neither side" if host == per else ("Magenheimer's side (one host pool)" if host > per
                                               else "Whitehouse's side (per-mount backends)")
    return host, per, len(diffs) - host - per, side


def verdict_lines(report: Report) -> list[str]:
    """The paragraph the numbers write: who had the higher total hit ratio, who was fairer, per client."""
    both = pairs(report)
    if not both:
        return ["No backend and policy was measured on both sides: no verdict."]
    hit = [h.hit_ratio - p.hit_ratio for p, h in both]
    fair = [h.fairness - p.fairness for p, h in both]
    (hh, hp, ht, hit_side), (fh, fp, ft, fair_side) = tally(hit), tally(fair)
    speed = [h.iops / p.iops if p.iops else 0.0 for p, h in both]
    per_client = ", ".join(
        f"{name} {statistics.mean(p.clients[i].hit_ratio for p, _ in both):.2f} -> "
        f"{statistics.mean(h.clients[i].hit_ratio for _, h in both):.2f}" for i, name in enumerate(CLIENTS))
    lines = [
        f"By total cleancache hit ratio the host pool was higher in {hh} of {len(both)} backend/policy pairs, the "
        f"per-mount backends in {hp} ({ht} within {TIE}; mean host - per-mount {statistics.mean(hit):+.3f}). By "
        f"fairness (Jain's index of the three clients' hit ratios) the host pool was higher in {fh}, the per-mount "
        f"backends in {fp} ({ft} within {TIE}; mean {statistics.mean(fair):+.3f}). Each client's hit ratio, "
        f"per-mount -> host, mean over the pairs: {per_client}. Total IOPS, host / per-mount: "
        f"{min(speed):.2f}x to {max(speed):.2f}x (the same requests on both sides: the host's price in time).",
        "",
        f"On this workload the numbers favour {hit_side} of the 2011 debate by total hit ratio, and "
        f"{fair_side} by fairness." if hit_side != fair_side else
        f"On this workload the numbers favour {hit_side} of the 2011 debate, by total hit ratio and by fairness "
        "alike.",
    ]
    dedup = [(p, h) for p, h in both if h.backend == "dedup"]
    if dedup:
        lines += ["", "With dedup: " + "; ".join(
            f"{h.policy}: host {h.hit_ratio:.2f} vs per-mount {p.hit_ratio:.2f}, read from SRC {h.src_share:.0%} "
            f"vs {p.src_share:.0%} of the bytes read, {h.host.get('dedup_pages', '?')} puts served by a copy the "
            "host already held"
            for p, h in dedup) + "."]
    return lines


def mib(n: int | None) -> str:
    return "-" if n is None else f"{n / MiB:.1f}"


def summary_table(report: Report) -> list[str]:
    return table(["backend/policy", "hit ratio per-mount / host", "Jain's index per-mount / host",
                  "read from SRC per byte read, per-mount / host", "IOPS per-mount / host", "host used MiB / budget",
                  "host evictions / lock timeouts", "puts served by a copy held (dedup)"],
                 [[h.label, f"{p.hit_ratio:.3f} / {h.hit_ratio:.3f}", f"{p.fairness:.3f} / {h.fairness:.3f}",
                   f"{p.src_share:.1%} / {h.src_share:.1%}", f"{p.iops:.0f} / {h.iops:.0f}",
                   f"{mib(h.host.get('used_bytes'))} / {mib(h.host.get('budget_bytes'))}",
                   f"{h.host.get('evictions', '-')} / {h.host.get('lock_timeouts', '-')}",
                   str(h.host.get("dedup_pages", "-"))] for p, h in pairs(report)])


def client_table(report: Report) -> list[str]:
    rows = []
    for cell in (c for c in report.cells if not c.error):
        rows += [[cell.label, cell.setup, c.name, f"{c.hit_ratio:.3f}", str(c.succ_gets + c.failed_gets),
                  f"{mib(c.src_bytes)} ({c.src_share:.1%})", f"{c.iops:.0f}", mib(c.used_bytes),
                  str(c.evictions).replace("None", "-")]
                 for c in cell.clients]
        rows.append([cell.label, cell.setup, "**total**", f"{cell.hit_ratio:.3f}",
                     str(sum(c.succ_gets + c.failed_gets for c in cell.clients)),
                     f"{mib(cell.src_bytes)} ({cell.src_share:.1%})",
                     f"{cell.iops:.0f}", f"Jain {cell.fairness:.3f}", ""])
    return table(["backend/policy", "set-up", "client", "hit ratio", "gets", "MiB read from SRC (per byte read)",
                  "IOPS", "its pages, MiB", "its evictions"], rows)


def takeback_lines(report: Report) -> list[str]:
    if report.takeback_error:
        return [f"Not measured: {report.takeback_error}"]
    s = report.settings
    head = [f"A host of {human(s.takeback_budget)} filled with distinct pages by an in-process client "
            f"(`HostStore.join` + `put`), {s.reps} take-backs of each size by a donor (`HostStore.attach` + "
            "`take_back`, timed with `time.perf_counter_ns`), each followed by `give_back` and a refill.", "",
            ""]
    rows = []
    for tb in report.takeback:
        returned = sorted(set(tb.returned))
        rows.append([human(tb.size), f"{tb.ms(0.5):.2f}", f"{tb.ms(0.99):.2f}",
                     str(returned[0]) if len(returned) == 1 else f"{returned[0]}..{returned[-1]}",
                     f"{mib(min(tb.used_before, default=None))}..{mib(max(tb.used_before, default=None))}"])
    return head + table(["take-back", "p50 ms", "p99 ms", "returned (bytes)", "host used before, MiB"], rows)


def method_lines(report: Report) -> list[str]:
    s = report.settings
    files = ", ".join(f"{name} {human(s.sizes[name])} ({w.label})" for name, w in CLIENTS.items())
    work = ", ".join(f"{name} {human(s.work[name])}" for name in CLIENTS)
    return [
        f"* One file per SRC (on the workspace's disk): {files}. fio psync QD1 direct=1, the three started at "
        f"once, each reading a fixed amount ({work}: the same requests on both sides, whatever their speed), "
        "after each file was read once through its mount (the three at once). Numbers are deltas of each "
        "mount's stats.json over the fio run.",
        f"* Every mount `cache_size={human(s.cache_size)}`, `backing_io=direct`; per-mount "
        f"`cc_size={human(s.memory // len(CLIENTS))}` each, or `cc_host=` with `cc_size={human(s.memory)}` (the "
        "first client's makes the host's budget; equal weights); the same `cc_policy` on both sides.",
        "* The files are text (lz4 about halves a page); every even page is a shared page, the same in every file, "
        "every odd page the file's own: half of each file's pages are also in another file (the largest file's "
        "shared half outgrows the others', so it repeats some shared pages).",
        "* Hit ratio: succ_gets / (succ_gets + failed_gets) (page-cache hits are not counted); Jain's index: "
        "(sum x)^2 / (n sum x^2) of the clients' hit ratios. Its pages and evictions: the per-mount backend's "
        "pool_total_size and evicted_pages, or the host client's stored_bytes and evictions.",
        *(["* **Quick mode** (`--quick`): smaller files, memory and runs: rougher numbers."] if s.quick else []),
    ]


def render(report: Report, chart: str | None = None) -> str:
    lines = [
        TITLE, "",
        f"Run {report.started}, `{report.command}` ({mmss(report.elapsed_s)}).", "",
        "### What the numbers say", "", *verdict_lines(report), "",
        "### Totals", "", *summary_table(report), "",
        *([f"![hit ratio, fairness, SRC reads per set-up; take-back latency]({chart})", ""] if chart else []),
        "### Per client", "", *client_table(report), "",
        "### Take-back latency", "", *takeback_lines(report), "",
        "### Method", "", *method_lines(report), "",
        "### Commands", "", "```", *(placeholders(c, report.paths) for c in report.commands), "```", "",
        *subsection("### Notes", [f"* {n}" for n in report.notes]),
        *subsection("### Failures", [f"* **{c.setup} {c.label}**: {c.error}" for c in report.cells if c.error]),
        *machine_lines(report.machine, report.versions),
        "Raw numbers (`report.json`, for `--from-json`) are kept under `bench-results/host/run/` (not committed).",
        "",
    ]
    return markdown(lines)


def make_chart(report: Report, path: Path) -> bool:
    """One PNG of six panels; False when no pair was measured."""
    both = pairs(report)
    if not both:
        return False
    plt = pyplot()
    labels = [h.label for _, h in both]
    fig, axes = plt.subplots(2, 3, figsize=(14, 7))
    panels: list[tuple[str, str, Callable[[Cell], float]]] = [
        ("Total cleancache hit ratio", "hit ratio", lambda c: c.hit_ratio),
        ("Fairness (Jain's index of clients' hit ratios)", "index", lambda c: c.fairness),
        ("Read from SRC per byte read", "share", lambda c: c.src_share)]
    for ax, (title, unit, value) in zip(axes[0], panels, strict=True):
        bar_groups(ax, labels, {PER_MOUNT: [value(p) for p, _ in both], HOST: [value(h) for _, h in both]})
        ax.set(title=title, ylabel=unit, ylim=(0, 1.3 * max(value(c) for pair in both for c in pair) or 1))
        ax.legend(fontsize=8, ncol=2, loc="upper center")
    for ax, setup in zip(axes[1][:2], (0, 1), strict=True):
        bar_groups(ax, labels, {name: [pair[setup].clients[i].hit_ratio for pair in both]
                                   for i, name in enumerate(CLIENTS)})
        ax.set(title=f"Each client's hit ratio, {(PER_MOUNT, HOST)[setup]}", ylabel="hit ratio", ylim=(0, 1.25))
        ax.legend(fontsize=8, ncol=3, loc="upper center")
    sizes = [human(tb.size) for tb in report.takeback]
    bar_groups(axes[1][2], sizes, {"p50": [tb.ms(0.5) for tb in report.takeback],
                                      "p99": [tb.ms(0.99) for tb in report.takeback]})
    axes[1][2].set(title="Take-back latency", ylabel="ms")
    axes[1][2].legend(fontsize=8)
    for ax in axes.flat:
        ax.tick_params(axis="x", labelsize=7)
    fig.suptitle(f"hot, zipf and scan clients, {human(report.settings.memory)} of cleancache in total "
                 f"({'quick' if report.settings.quick else 'normal'} run)", fontsize=10)
    save_figure(fig, path)
    return True


# -- saved numbers and main -----------------------------------------------------------------------------------


def report_from_json(d: dict[str, Any]) -> Report:
    raw = d["settings"]
    s = Settings(**{**raw, **{k: tuple(raw[k]) for k in ("backends", "policies", "takeback_sizes")}})
    cells = [Cell(**{**c, "clients": [Client(**x) for x in c["clients"]]}) for c in d["cells"]]
    return Report(**{**d, "settings": s, "cells": cells, "takeback": [TakeBack(**t) for t in d["takeback"]]})


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = section_parser("bench_host", __doc__, "smaller files and memory, 3 s runs: about a minute")
    add_output_options(parser, "host", ROOT, "workspace: SRCs, mount points, raw numbers")
    add_from_json(parser)
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    settings = QUICK if args.quick else FULL
    command = shlex.join(["python", "-m", "tools.bench_host", *(sys.argv[1:] if argv is None else argv)])
    try:
        report = measured_or_loaded(args, lambda a: run_all(settings, Path(a.results_dir), command),
                                    asdict, report_from_json, run_json(args.results_dir, args.quick))
    except (OSError, ValueError, KeyError, TypeError) as exc:
        if not args.from_json:
            raise
        print(f"bench_host: --from-json {args.from_json}: no report there ({type(exc).__name__}: {exc})",
              file=sys.stderr)
        return 2
    if report is None:
        return 130
    chart, link = draw_chart(args.out, CHART, lambda path: make_chart(report, path))
    return publish(args.out, "host", render(report, link), report.elapsed_s, filter(None, verdict_lines(report)),
                   chart)


if __name__ == "__main__":
    sys.exit(main())
