"""Measure the cleancache backends (none, tmem, zcache, dedup, zcache+tmem) and write BENCHMARKS.md.

Run from the repository root with the project's venv (needs root and /dev/fuse):

    .venv/bin/python -m tools.bench_backends [--quick] [--out BENCHMARKS.md]
    .venv/bin/python -m tools.bench_backends --src DIR|FILE [--backends a,b] [--sizes 16M/256M,64M/1G]
                                             [--job tools/fio/zipf.fio] [--out REPORT.md]

Only the text between `<!-- backends:begin -->` and `<!-- backends:end -->` is
replaced; tools/bench.py owns the rest of the file. Ratios are only taken
between numbers measured in the same invocation (the machine is shared).
With --src, --backends, --sizes or --job the run compares backends on the
user's data and set-up, and the report goes to bench-results/backends/custom/
(not BENCHMARKS.md) unless --out says otherwise.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import os
import platform
import random
import shlex
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn

import xxhash

from backends.base import size_in_bytes
from tools.corpus import elf_corpus, fill, text_corpus
from tools.fio import fio_report
from tools.machine import drop_host_cache, load_average, package_version
from tools.mounting import background, control, counter, is_mounted, read_stats, signals_deferred, unmount
from tools.report import (
    CHART_DIR,
    Progress,
    bar_groups,
    human,
    log,
    markers,
    pyplot,
    save_figure,
    spread_text,
    table,
    write_section,
)

PAGE = 4096
MiB = 1 << 20
BEGIN, END = markers("backends")
BACKENDS: tuple[str, ...] = ("none", "tmem", "zcache", "dedup", "zcache+tmem")
POLICIES: tuple[str, ...] = ("lru", "sieve", "s3fifo", "arc")
DATASETS: tuple[str, ...] = ("text", "binary", "random", "zero", "dup50")
ROOT = Path("bench-results/backends")
CONTROL_DIR = ".tmemfs"
ZCACHE_TARGET = 2.0
DEDUP_TOLERANCE = 0.05
BACKING_CUT = 0.90
IOPS_TARGET = 1.5


@dataclass(frozen=True)
class Settings:
    """Sizes and repeat counts; quick mode shrinks everything to stay under 3 minutes."""

    quick: bool
    cache_size: int
    cc_size: int
    data_size: int
    fio_size: int
    runtime: int
    repeats: int
    cpu_pages: int

    @property
    def mode(self) -> str:
        return "quick" if self.quick else "normal"


def settings_for(quick: bool) -> Settings:
    if quick:
        return Settings(True, 8 * MiB, 128 * MiB, 32 * MiB, 32 * MiB, 1, 1, 2000)
    return Settings(False, 16 * MiB, 256 * MiB, 96 * MiB, 64 * MiB, 4, 3, 8000)


# -- data sets ------------------------------------------------------------------------


def zero_heavy(text: bytes, size: int, rng: random.Random) -> bytes:
    """90% zero pages, 10% text pages, spread out."""
    out = bytearray(size)
    for i in range(size // PAGE):
        if rng.random() < 0.10:
            start = (i * PAGE) % max(1, len(text) - PAGE)
            out[i * PAGE:(i + 1) * PAGE] = text[start:start + PAGE].ljust(PAGE, b" ")
    return bytes(out)


def dup_heavy(text: bytes, size: int, rng: random.Random) -> bytes:
    """Half the pages are unique (text stamped with a page number), half copy an earlier unique page."""
    pages = size // PAGE
    uniques: list[bytes] = []
    out: list[bytes] = []
    for i in range(pages):
        if i % 2 == 0 or not uniques:
            start = (i * PAGE) % max(1, len(text) - PAGE)
            page = (f"unique page {i:012d}\n".encode() + text[start:start + PAGE]).ljust(PAGE, b" ")[:PAGE]
            uniques.append(page)
            out.append(page)
        else:
            out.append(rng.choice(uniques))
    return b"".join(out)


def split_files(data: bytes, nfiles: int) -> list[bytes]:
    """A tree, not one file: page-aligned pieces."""
    pages = len(data) // PAGE
    per = max(1, pages // nfiles)
    return [data[i * per * PAGE:(i + 1) * per * PAGE if i < nfiles - 1 else len(data)] for i in range(nfiles)]


def build_dataset(name: str, text: bytes, size: int, rng: random.Random) -> bytes:
    """The bytes of one data set (text is the shared plain-text corpus)."""
    if name == "text":
        return fill(text, size)
    if name == "binary":
        return fill(elf_corpus(size), size)
    if name == "random":
        return os.urandom(size)
    if name == "zero":
        return zero_heavy(text, size, rng)
    if name == "dup50":
        return dup_heavy(text, size, rng)
    raise ValueError(name)


def make_datasets(src: Path, size: int, seed: int = 1) -> dict[str, Path]:
    """Write each data set as a small tree under src/<name>/ (skipped if already there with the right size)."""
    rng = random.Random(seed)
    made: dict[str, Path] = {}
    text: bytes | None = None
    for name in DATASETS:
        d = src / name
        made[name] = d
        if d.is_dir() and tree_size(d) == size:
            continue
        log(f"preparing data set {name} ({size // MiB} MiB)")
        if text is None:
            text = text_corpus(min(size, 48 * MiB))
        data = build_dataset(name, text, size, rng)
        d.mkdir(parents=True, exist_ok=True)
        for old in d.iterdir():
            old.unlink()
        for i, part in enumerate(split_files(data, 4)):
            (d / f"part{i}.dat").write_bytes(part)
    return made


def tree_files(d: Path) -> list[Path]:
    """The files of a tree (a file alone is its own tree); a mount's .tmemfs is not data."""
    if d.is_file():
        return [d]
    return sorted(p for p in d.rglob("*") if p.is_file() and CONTROL_DIR not in p.relative_to(d).parts)


def tree_size(d: Path) -> int:
    return sum(p.stat().st_size for p in tree_files(d))


def page_digests(chunks: Iterable[bytes]) -> Iterator[bytes]:
    """xxh3_128 of every 4 KiB page; a short tail page is zero-padded like a cache page."""
    for data in chunks:
        for off in range(0, len(data), PAGE):
            page = data[off:off + PAGE]
            yield xxhash.xxh3_128_digest(page.ljust(PAGE, b"\0"))


def unique_pages(chunks: Iterable[bytes]) -> tuple[int, int]:
    """(total pages, distinct pages), counted independently of tmemfs."""
    total = 0
    seen: set[bytes] = set()
    for digest in page_digests(chunks):
        total += 1
        seen.add(digest)
    return total, len(seen)


def tree_chunks(d: Path) -> Iterator[bytes]:
    for p in tree_files(d):
        yield p.read_bytes()


def read_tree(d: Path) -> int:
    """Read every file through the mount in 128 KiB requests; returns bytes read."""
    total = 0
    buf = bytearray(128 * 1024)
    for p in tree_files(d):
        with open(p, "rb", buffering=0) as f:
            while n := f.readinto(buf):
                total += n
    return total


def cc_options(backend: str, s: Settings, extra: str = "") -> str:
    opts = f"cleancache={backend},cache_size={human(s.cache_size)},cc_size={human(s.cc_size)},backing_io=direct"
    return f"{opts},{extra}" if extra else opts


# -- pass-through measurements --------------------------------------------------------


@dataclass
class ReadResult:
    """One mount / read / drop_caches / read cycle."""

    hit_ratio: float
    backing_bytes: int
    pool_bytes: int
    orig_bytes: int
    unique_data: int
    unique_pages: int
    rejected: int = 0  # puts refused as poorly compressible (zcache zc_poor=reject)


def hit_ratio(stats: dict[str, object]) -> float:
    succ, failed = counter(stats, "succ_gets"), counter(stats, "failed_gets")
    return succ / (succ + failed) if succ + failed else 0.0


def backend_sum(stats: dict[str, object], field_name: str) -> int:
    """Sum a backend counter over every chain member (backend.<name>.<field>)."""
    return int(sum(counter(stats, k) for k in stats if k.startswith("backend.") and k.endswith("." + field_name)))


def read_cycle(src: Path, mnt: Path, dataset: str, backend: str, s: Settings, logfile: Path) -> ReadResult:
    """Read the set, drop_caches (everything is now in the backend), reset counters, read again."""
    drop_host_cache()
    with background(src, mnt, cc_options(backend, s), logfile):
        read_tree(mnt / dataset)
        control(mnt, "drop_caches")
        after_fill = read_stats(mnt)
        control(mnt, "reset_stats")
        read_tree(mnt / dataset)
        second = read_stats(mnt)
    return ReadResult(hit_ratio(second), int(counter(second, "backing.read_bytes")),
                      backend_sum(after_fill, "pool_total_size"), backend_sum(after_fill, "orig_data_size"),
                      backend_sum(after_fill, "unique_data_size"), backend_sum(after_fill, "unique_pages"),
                      backend_sum(after_fill, "reject_compress_poor"))


# -- fio ------------------------------------------------------------------------------


def fio_command(path: Path, size: int, runtime: int, zipf: bool = False) -> list[str]:
    cmd = ["fio", "--name=r", f"--filename={path}", "--bs=4k", "--rw=randread", "--ioengine=psync", "--direct=1",
           f"--runtime={runtime}", "--time_based", f"--size={size}"]
    if zipf:
        cmd.append("--random_distribution=zipf:1.1")
    return [*cmd, "--output-format=json"]


def run_fio(cmd: list[str], env: dict[str, str] | None = None, what: str = "fio") -> list[dict[str, Any]]:
    """The jobs of one fio run's report; a failed run raises with fio's message."""
    done = subprocess.run(cmd, capture_output=True, text=True, check=False, env=env)
    if done.returncode != 0:
        raise RuntimeError(f"{what} failed: {(done.stderr or done.stdout).strip()[-300:]}")
    jobs: list[dict[str, Any]] = (fio_report(done.stdout) or {})["jobs"]
    return jobs


def read_iops(cmd: list[str]) -> float:
    """IOPS of one fio run of one read job."""
    return float(run_fio(cmd)[0]["read"]["iops"])


def fio_backend(src: Path, mnt: Path, backend: str, s: Settings, logfile: Path, commands: list[str],
                fio_file: str = "fio/text.dat") -> float:
    """Warm-up pass (cat), then 4k randread QD1 on `fio_file` (relative to the mount)."""
    drop_host_cache()
    with background(src, mnt, cc_options(backend, s), logfile):
        path = mnt / fio_file
        with open(path, "rb", buffering=0) as f:
            while f.read(128 * 1024):
                pass
        cmd = fio_command(path, s.fio_size, s.runtime)
        commands.append(shlex.join(cmd))
        return read_iops(cmd)


def fio_job(src: Path, mnt: Path, backend: str, s: Settings, logfile: Path, commands: list[str],
            job: Path, fio_file: str) -> float:
    """A user's fio job file on a fresh mount, with MNT, FILE and SIZE set as tools/fio/*.fio expect.

    Returns the IOPS of all its jobs together (reads and writes).
    """
    drop_host_cache()
    env = {"MNT": str(mnt), "FILE": fio_file, "SIZE": str(s.fio_size)}
    cmd = ["fio", str(job.resolve()), "--output-format=json"]
    commands.append(shlex.join([*(f"{k}={v}" for k, v in env.items()), *cmd]))
    with background(src, mnt, cc_options(backend, s), logfile):
        jobs = run_fio(cmd, {**os.environ, **env}, f"fio {job}")
    return float(sum(j[kind]["iops"] for j in jobs for kind in ("read", "write", "trim")))


def fio_policy(src: Path, mnt: Path, policy: str, s: Settings, logfile: Path,
               commands: list[str], fio_file: str = "fio/text.dat") -> tuple[float, float]:
    """zipf:1.1 randread with cleancache=none and pc_policy=policy: (IOPS, page-cache hit ratio)."""
    drop_host_cache()
    with background(src, mnt, cc_options("none", s, f"pc_policy={policy}"), logfile):
        path = mnt / fio_file
        control(mnt, "reset_stats")
        cmd = fio_command(path, s.fio_size, s.runtime, zipf=True)
        commands.append(shlex.join(cmd))
        iops = read_iops(cmd)
        st = read_stats(mnt)
    hits, misses = counter(st, "pagecache.hits"), counter(st, "pagecache.misses")
    return iops, hits / (hits + misses) if hits + misses else 0.0


# -- CPU cost on the backend objects -------------------------------------------------


# What the CPU table measures: a label, the backends of cleancache=, their options.
CPU_CONFIGS: dict[str, tuple[list[str], dict[str, object]]] = {
    "tmem": (["tmem"], {}),
    "zcache": (["zcache"], {}),
    "dedup": (["dedup"], {}),
    "dedup dd_compress=lz4": (["dedup"], {"dd_compress": "lz4"}),
    "zcache+tmem": (["zcache", "tmem"], {}),
}


def cpu_cost(config: str, pages: Sequence[bytes]) -> tuple[float, float]:
    """Microseconds per put and per get, measured in-process on a fresh backend."""
    import trio

    from backends import registry

    names, options = CPU_CONFIGS[config]
    backend = registry.build(names, len(pages) * 2 * PAGE + 64 * MiB, options)
    assert backend is not None
    out = memoryview(bytearray(PAGE))
    views = [memoryview(p) for p in pages]

    async def run() -> tuple[float, float]:
        pool = await backend.create_pool(None)
        key = b"bench-key"
        t0 = time.perf_counter()
        for i, v in enumerate(views):
            await backend.put_page(pool, key, i, v)
        t1 = time.perf_counter()
        for i in range(len(views)):
            await backend.get_page(pool, key, i, out)
        t2 = time.perf_counter()
        await backend.close()
        return (t1 - t0) / len(views) * 1e6, (t2 - t1) / len(views) * 1e6

    return trio.run(run)


def sample_pages(d: Path, n: int) -> list[bytes]:
    data = b"".join(tree_chunks(d))
    step = max(1, (len(data) // PAGE) // n)
    return [data[i * step * PAGE:(i * step + 1) * PAGE] for i in range(n) if (i * step + 1) * PAGE <= len(data)]


# -- results and the report ----------------------------------------------------------


@dataclass
class Results:
    """Everything the report needs; plain numbers so tests can build it by hand."""

    settings: Settings
    data_size: dict[str, int] = field(default_factory=dict)
    pages: dict[str, tuple[int, int]] = field(default_factory=dict)  # set -> (total, unique) pages
    reads: dict[tuple[str, str], list[ReadResult]] = field(default_factory=dict)
    iops: dict[str, list[float]] = field(default_factory=dict)
    zipf: dict[str, list[tuple[float, float]]] = field(default_factory=dict)
    cpu: dict[tuple[str, str], tuple[float, float]] = field(default_factory=dict)  # (backend, kind) -> us
    commands: list[str] = field(default_factory=list)
    machine: dict[str, str] = field(default_factory=dict)
    runtime_s: float = 0.0
    charts: list[tuple[str, str]] = field(default_factory=list)  # (alt text, relative path)
    backends: list[str] = field(default_factory=lambda: list(BACKENDS))
    datasets: list[str] = field(default_factory=lambda: list(DATASETS))
    job: str = ""  # the fio job file run per backend instead of the built-in fio runs


def med(values: Sequence[float]) -> float:
    return statistics.median(values) if values else 0.0


def capacity_ratio(r: ReadResult) -> float:
    """orig_data_size / pool_total_size, per-entry overhead included."""
    return r.orig_bytes / r.pool_bytes if r.pool_bytes else 0.0


def mark(ok: bool | None) -> str:
    return "n/a" if ok is None else "ok" if ok else "MISSED"


def fits(res: Results, backend: str, dataset: str) -> bool:
    """Does the data set fit cache_size + the backend's measured effective capacity?"""
    runs = res.reads.get((backend, dataset), [])
    if backend == "none" or not runs:
        return False
    eff = med([capacity_ratio(r) for r in runs])
    return res.data_size.get(dataset, 0) <= res.settings.cache_size + res.settings.cc_size * eff


def backing_cut(res: Results, backend: str, dataset: str) -> float | None:
    """Fraction of second-pass backing bytes saved versus cleancache=none."""
    none = med([r.backing_bytes for r in res.reads.get(("none", dataset), [])])
    mine = res.reads.get((backend, dataset), [])
    if not none or not mine:
        return None
    return 1 - med([r.backing_bytes for r in mine]) / none


def targets(res: Results) -> list[tuple[str, str, bool | None]]:
    """(target, measured, met) for each issue target that has data; met is None where it does not apply."""
    out: list[tuple[str, str, bool | None]] = []
    z = res.reads.get(("zcache", "text"))
    if z:
        eff = med([capacity_ratio(r) for r in z])
        out.append((f"zcache effective capacity >= {ZCACHE_TARGET:.1f}x on plain text", f"{eff:.2f}x",
                    eff >= ZCACHE_TARGET))
    d = res.reads.get(("dedup", "dup50"))
    if d and "dup50" in res.pages:
        unique = res.pages["dup50"][1] * PAGE
        pool = med([r.pool_bytes for r in d])
        off = pool / unique - 1
        out.append((f"dedup pool_total_size within {DEDUP_TOLERANCE:.0%} of unique content (50%-dup set)",
                    f"{pool / MiB:.1f} MiB vs {unique / MiB:.1f} MiB unique ({off:+.1%})", abs(off) <= DEDUP_TOLERANCE))
        data = med([r.unique_data for r in d])
        off = data / unique - 1
        out.append((f"(informative) dedup unique_data_size within {DEDUP_TOLERANCE:.0%} of unique content",
                    f"{data / MiB:.1f} MiB vs {unique / MiB:.1f} MiB ({off:+.1%})", abs(off) <= DEDUP_TOLERANCE))
    for backend in [b for b in res.backends if b != "none"]:
        for dataset in res.datasets:
            cut = backing_cut(res, backend, dataset)
            if cut is None or not fits(res, backend, dataset):
                continue
            rejected = med([r.rejected for r in res.reads[(backend, dataset)]])
            share = rejected * PAGE / res.data_size[dataset] if res.data_size.get(dataset) else 0.0
            name = f"backing bytes -{BACKING_CUT:.0%} vs none: {backend} on {dataset}"
            if cut < BACKING_CUT and share > 1 - BACKING_CUT and "+" not in backend:
                out.append((name, f"-{cut:.1%}; {rejected:.0f} pages ({share:.0%}) refused as poorly compressible "
                            "(zc_poor=reject) never enter the pool, so the set does not fit", None))
            else:
                out.append((name, f"-{cut:.1%}", cut >= BACKING_CUT))
    if res.iops.get("zcache") and res.iops.get("none"):
        r = med(res.iops["zcache"]) / med(res.iops["none"])
        out.append((f"fio 4k randread QD1 zcache/none >= {IOPS_TARGET:.1f}x", f"{r:.2f}x", r >= IOPS_TARGET))
    return out


def read_tables(res: Results) -> list[str]:
    rows_hit, rows_bytes = [], []
    for backend in res.backends:
        runs = {ds: res.reads.get((backend, ds), []) for ds in res.datasets}
        rows_hit.append([backend, *(spread_text([r.hit_ratio * 100 for r in runs[ds]], "{:.1f}") + " %"
                                    if runs[ds] else "-" for ds in res.datasets)])
        rows_bytes.append([backend, *(spread_text([r.backing_bytes / MiB for r in runs[ds]], "{:.1f}")
                                      if runs[ds] else "-" for ds in res.datasets)])
    return ["### Second pass after drop_caches: cleancache hit ratio (succ_gets / (succ_gets + failed_gets))", "",
            *table(["backend", *res.datasets], rows_hit), "",
            "### Second pass: bytes read from SRC (backing.read_bytes, MiB; O_DIRECT)", "",
            *table(["backend", *res.datasets], rows_bytes), ""]


def ratio_table(res: Results) -> list[str]:
    rows = []
    for ds in res.datasets:
        total, uniq = res.pages.get(ds, (0, 0))
        cells = [ds, f"{res.data_size.get(ds, 0) / MiB:.0f}", f"{total} / {uniq}"]
        for backend in ("zcache", "dedup", "zcache+tmem"):
            runs = res.reads.get((backend, ds), [])
            cells.append(spread_text([capacity_ratio(r) for r in runs], "{:.2f}") + "x" if runs else "-")
        dd = res.reads.get(("dedup", ds), [])
        cells.append(spread_text([r.pool_bytes / MiB for r in dd], "{:.1f}") if dd else "-")
        cells.append(spread_text([r.unique_data / MiB for r in dd], "{:.1f}") if dd else "-")
        cells.append(spread_text([r.unique_pages for r in dd]) if dd else "-")
        cells.append(f"{uniq * PAGE / MiB:.1f}")
        rows.append(cells)
    header = ["data set", "MiB", "pages total / unique (hashed here)", "zcache orig/pool", "dedup orig/pool",
              "zcache+tmem orig/pool", "dedup pool_total_size MiB", "dedup unique_data_size MiB",
              "dedup unique_pages",
              "unique pages x 4 KiB MiB"]
    return ["### Effective capacity after drop_caches (orig_data_size / pool_total_size, per-entry overheads "
            "included)", "", *table(header, rows), "", *dedup_overhead_note(res)]


def dedup_overhead_note(res: Results) -> list[str]:
    """Explain dedup's pool_total_size: unique payload plus its bookkeeping, from the measured numbers."""
    runs = res.reads.get(("dedup", "dup50"), [])
    if not runs:
        return []
    r = runs[0]
    handles = r.orig_bytes // PAGE
    extra = r.pool_bytes - r.unique_data
    per = extra / handles if handles else 0.0
    share = extra / r.unique_data if r.unique_data else 0.0
    return [f"On dup50, dedup pool_total_size - unique_data_size = {extra / MiB:.2f} MiB over {handles} stored "
            f"handles = {per:.0f} B per handle, counting each handle's share of its copy's bookkeeping (bytes "
            f"object header and malloc rounding, array slots, index): {share:.1%} above the unique content.", ""]


def fio_tables(res: Results) -> list[str]:
    base = med(res.iops.get("none", []))
    rows = [[b, spread_text(res.iops[b]), f"{med(res.iops[b]) / base:.2f}x" if base else "-"]
            for b in res.backends if res.iops.get(b)]
    zrows = [[p, spread_text([v[0] for v in res.zipf[p]]),
              spread_text([v[1] * 100 for v in res.zipf[p]], "{:.1f}") + " %"] for p in POLICIES if res.zipf.get(p)]
    title = (f"### fio job `{res.job}` on a fresh mount per backend (IOPS of all its jobs, reads and writes)"
             if res.job else "### fio 4k randread QD1 psync direct=1 on the text file, after one warm-up pass")
    zipf = ["### fio zipf:1.1 randread, cleancache=none, per page-cache policy", "",
            *table(["pc_policy", "IOPS", "page-cache hit ratio"], zrows), ""] if zrows else []
    return [title, "", *table(["backend", "IOPS", "vs none"], rows), "", *zipf]


def cpu_table(res: Results) -> list[str]:
    rows = []
    kinds = list(dict.fromkeys(kind for _, kind in res.cpu)) or ["text", "random"]
    for backend in CPU_CONFIGS:
        cells = [backend]
        for kind in kinds:
            put, get = res.cpu.get((backend, kind), (0.0, 0.0))
            cells += [f"{put:.1f}", f"{get:.1f}"]
        rows.append(cells)
    return ["### CPU per call on the backend objects (us, in-process, trio.run, no FUSE)", "",
            *table(["backend", *(f"{op} {kind}" for kind in kinds for op in ("put", "get"))], rows), "",
            "zcache rejects random pages (they do not compress below zc_max), so its random gets are misses; "
            "in zcache+tmem they go to tmem. What a cluster store costs per call is in the cluster section "
            "(hits per second each store sustains).", ""]


def report(res: Results) -> str:
    """The markdown that goes between the markers."""
    s = res.settings
    lines = [f"## Cleancache backends ({s.mode} mode, `python -m tools.bench_backends"
             f"{' --quick' if s.quick else ''}`)", ""]
    lines += [f"- {k}: {v}" for k, v in res.machine.items()]
    sets = f"data sets of {s.data_size // MiB} MiB (4 files each)" if res.datasets == list(DATASETS) else \
        f"data: {', '.join(res.datasets)} ({s.data_size / MiB:.1f} MiB)"
    lines += [f"- mount options: `{cc_options('<backend>', s)}`; {sets}; repeats: {s.repeats}; "
              f"run time {res.runtime_s / 60:.1f} min",
              "- host page cache dropped (`sync; echo 3 > /proc/sys/vm/drop_caches`) before every mount; "
              "tables show median (min..max) when repeated", "",
              "### Targets", "", *table(["target", "measured", "result"],
                                        [[t, m, mark(ok)] for t, m, ok in targets(res)]), ""]
    lines += read_tables(res) + ratio_table(res) + fio_tables(res) + cpu_table(res)
    lines += ["### fio command lines, exactly as run", "", "```", *dict.fromkeys(res.commands), "```", ""]
    lines += [f"![{alt}]({path})" for alt, path in res.charts]
    return "\n".join(lines).rstrip() + "\n"


# -- charts ---------------------------------------------------------------------------


def reads_chart(plt: Any, res: Results, tag: str, path: Path) -> None:
    """Hit ratio and backing bytes of the second pass, per backend and data set."""
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(12, 4.5))
    hit = {b: [med([r.hit_ratio * 100 for r in res.reads.get((b, d), [])]) for d in res.datasets]
           for b in res.backends}
    byt = {b: [med([r.backing_bytes / MiB for r in res.reads.get((b, d), [])]) for d in res.datasets]
           for b in res.backends}
    bar_groups(a1, res.datasets, hit)
    a1.set(title="Cleancache hit ratio, 2nd pass", xlabel="data set", ylabel="hit ratio (%)", ylim=(0, 105))
    bar_groups(a2, res.datasets, byt)
    a2.set(title="Bytes read from SRC, 2nd pass", xlabel="data set", ylabel="MiB read (O_DIRECT)")
    a2.legend(title="cleancache", fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.suptitle("Read, drop_caches, read again" + tag, fontsize=10)
    save_figure(fig, path)


def capacity_chart(plt: Any, res: Results, tag: str, path: Path) -> None:
    """Effective capacity per data set of the backends that compress or dedup."""
    from matplotlib.container import BarContainer

    fig, ax = plt.subplots(figsize=(8, 4.5))
    cap = {b: [med([capacity_ratio(r) for r in res.reads.get((b, d), [])]) for d in res.datasets]
           for b in ("zcache", "dedup", "zcache+tmem")}
    bar_groups(ax, res.datasets, cap)
    ax.axhline(ZCACHE_TARGET, color="grey", linestyle="--", linewidth=1, label=f"{ZCACHE_TARGET:.0f}x target (text)")
    ax.set(title="Effective capacity: orig_data_size / pool_total_size" + tag, xlabel="data set",
           ylabel="ratio (x, overheads included)")
    ax.set_yscale("log")
    ax.set_ylim(0.5, None)
    ax.title.set_fontsize(9)
    bar_sets = [c for c in ax.containers if isinstance(c, BarContainer)]
    for c, values in zip(bar_sets, cap.values(), strict=False):
        ax.bar_label(c, labels=[f"{v:.2f}" if v else "refused" for v in values], fontsize=7)
    ax.legend(fontsize=8)
    save_figure(fig, path)


def iops_chart(plt: Any, res: Results, tag: str, path: Path) -> None:
    """fio's IOPS per backend."""
    fig, ax = plt.subplots(figsize=(7, 4))
    names = [b for b in res.backends if res.iops.get(b)]
    bars = ax.bar(names, [med(res.iops[b]) for b in names], color="tab:blue")
    ax.bar_label(bars, fmt="%.0f", fontsize=8)
    sizes = f"{res.settings.fio_size // MiB} MiB file,\ncache_size {res.settings.cache_size // MiB} MiB"
    ax.set(title=f"fio job {res.job}, {sizes}" if res.job else
           f"fio 4k randread QD1 psync direct=1, {sizes.replace(' file', ' text file')}, after one warm-up read",
           xlabel="cleancache backend", ylabel="IOPS (median)")
    save_figure(fig, path)


def zipf_chart(plt: Any, res: Results, tag: str, path: Path) -> None:
    """zipf IOPS (bars) and page-cache hit ratio (line) per page-cache policy."""
    fig, a1 = plt.subplots(figsize=(7, 4))
    pols = [p for p in POLICIES if res.zipf.get(p)]
    bars = a1.bar(pols, [med([v[0] for v in res.zipf[p]]) for p in pols], color="tab:green", label="IOPS")
    a1.bar_label(bars, fmt="%.0f IOPS", fontsize=8, label_type="center", color="white", rotation=90)
    a1.title.set_fontsize(9)
    a1.set(title=f"fio zipf:1.1 randread, cleancache=none, {res.settings.fio_size // MiB} MiB file, "
                 f"cache_size {res.settings.cache_size // MiB} MiB", xlabel="page-cache policy",
           ylabel="IOPS (median, bars)")
    a2 = a1.twinx()
    hits = [med([v[1] * 100 for v in res.zipf[p]]) for p in pols]
    a2.plot(pols, hits, "o-", color="tab:red")
    a1.set_xticks(range(len(pols)), [f"{p}\n{h:.1f} % hits" for p, h in zip(pols, hits, strict=True)])
    a2.set_ylabel("page-cache hit ratio (%, line; axis not from 0)")
    save_figure(fig, path)


CHARTS: tuple[tuple[Callable[[Any, Results, str, Path], None], str, str], ...] = (
    (reads_chart, "backends-reads.png", "hit ratio and backing bytes per backend and data set"),
    (capacity_chart, "backends-capacity.png", "compression / dedup ratio per data set"),
    (iops_chart, "backends-iops.png", "fio IOPS per backend"),
    (zipf_chart, "backends-zipf.png", "zipf IOPS and page-cache hit ratio per policy"),
)


def make_charts(res: Results, chart_dir: Path, rel: str) -> list[tuple[str, str]]:
    """Four PNGs (the zipf one only when the policies ran); (alt text, path relative to the report)."""
    plt = pyplot()
    tag = f" ({res.settings.mode} run, {res.settings.data_size // MiB} MiB sets, cache_size "\
          f"{res.settings.cache_size // MiB} MiB)"
    made: list[tuple[str, str]] = []
    for draw, name, alt in CHARTS if res.zipf else CHARTS[:-1]:
        draw(plt, res, tag, chart_dir / name)
        made.append((alt, f"{rel}/{name}"))
    return made


# -- driver ---------------------------------------------------------------------------


def machine_info() -> dict[str, str]:
    def version(pkg: str) -> str:
        return package_version(pkg, "?")

    fio = subprocess.run(["fio", "--version"], capture_output=True, text=True, check=False).stdout.strip()
    load = load_average()
    return {
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": f"{platform.node()}, {os.cpu_count()} CPU, kernel {platform.release()}",
        "versions": f"Python {platform.python_version()}, tmemfs {version('tmemfs')}, pyfuse3 {version('pyfuse3')}, "
                    f"trio {version('trio')}, lz4 {version('lz4')}, xxhash {version('xxhash')}, {fio}",
        "load average at start (1/5/15 min)": load,
    }


@dataclass(frozen=True)
class Plan:
    """What a run compares: the defaults are `make bench`'s; --src, --backends, --sizes and --job change them."""

    backends: tuple[str, ...] = BACKENDS
    sizes: tuple[tuple[int, int], ...] = ()  # (cache_size, cc_size) pairs; () = the settings' own
    src: Path | None = None
    job: Path | None = None

    @property
    def custom(self) -> bool:
        return self != Plan()


@dataclass(frozen=True)
class Data:
    """The data a run reads: the mounted directory, and per data set what to read in it."""

    mount_src: Path
    sets: dict[str, str]  # data set -> path relative to the mount ("" = the whole mount)
    fio_file: str  # relative to the mount
    fio_size: int


def user_data(src: Path) -> Data:
    """--src: a file (its directory is mounted) or a directory (all its files; fio reads the largest)."""
    src = src.resolve()
    if src.is_file():
        mount_src, rel, fio = src.parent, src.name, src
    else:
        files = tree_files(src)
        if not files:
            raise ValueError(f"--src {src}: no files to read")
        mount_src, rel = src, ""
        fio = max(files, key=lambda f: f.stat().st_size)
    size = fio.stat().st_size // PAGE * PAGE
    if size == 0:
        raise ValueError(f"--src: {fio} is shorter than a page ({PAGE} bytes); fio needs at least one")
    return Data(mount_src, {src.name: rel}, str(fio.relative_to(mount_src)), size)


def builtin_data(src: Path, s: Settings) -> Data:
    """make bench's synthetic data sets (made once, kept under bench-results/) and fio's text file."""
    make_datasets(src, s.data_size)
    fio_dir = src / "fio"
    fio_dir.mkdir(exist_ok=True)
    if not (fio_dir / "text.dat").exists() or (fio_dir / "text.dat").stat().st_size != s.fio_size:
        (fio_dir / "text.dat").write_bytes(fill(text_corpus(s.fio_size), s.fio_size))
    return Data(src.resolve(), {name: name for name in DATASETS}, "fio/text.dat", s.fio_size)


def step_all(res: Results, data: Data, mnt: Path, logs: Path, steps: Callable[[str], None],
             job: Path | None = None) -> None:
    s, src = res.settings, data.mount_src
    for rep in range(s.repeats):
        for ds in res.datasets:
            for backend in res.backends:
                steps(f"read cycle {ds} / {backend} (repeat {rep + 1})")
                r = read_cycle(src, mnt, data.sets[ds], backend, s, logs / f"{backend}.log")
                res.reads.setdefault((backend, ds), []).append(r)
        for backend in res.backends:
            steps(f"fio {job.name if job else 'randread'} / {backend} (repeat {rep + 1})")
            log_file = logs / f"fio-{backend}.log"
            res.iops.setdefault(backend, []).append(
                fio_job(src, mnt, backend, s, log_file, res.commands, job, data.fio_file) if job else
                fio_backend(src, mnt, backend, s, log_file, res.commands, data.fio_file))
        for policy in () if job else POLICIES:
            steps(f"fio zipf / pc_policy={policy} (repeat {rep + 1})")
            res.zipf.setdefault(policy, []).append(
                fio_policy(src, mnt, policy, s, logs / f"zipf-{policy}.log", res.commands, data.fio_file))


def cpu_samples(data: Data, s: Settings) -> dict[str, list[bytes]]:
    """Pages for the CPU table: text and random from the built-in sets, or the start of the user's data."""
    if data.sets.keys() == set(DATASETS):
        return {kind: sample_pages(data.mount_src / kind, s.cpu_pages) for kind in ("text", "random")}
    out: dict[str, list[bytes]] = {}
    for name, rel in data.sets.items():
        pages: list[bytes] = []
        for path in tree_files(data.mount_src / rel):
            with open(path, "rb") as f:
                while len(pages) < s.cpu_pages and len(page := f.read(PAGE)) == PAGE:
                    pages.append(page)
        out[name] = pages
    return out


def run(s: Settings, out: Path, plan: Plan = Plan()) -> list[Results]:
    """One Results per (cache_size, cc_size) pair of the plan (one for make bench)."""
    mnt, logs = (ROOT / "mnt").resolve(), ROOT / "logs"
    for d in (mnt, logs):
        d.mkdir(parents=True, exist_ok=True)
    data = user_data(plan.src) if plan.src else builtin_data(ROOT / "src", s)
    if plan.src:
        s = dataclasses.replace(s, data_size=sum(tree_size(data.mount_src / r) for r in data.sets.values()),
                                fio_size=data.fio_size)
    runs = [dataclasses.replace(s, cache_size=c, cc_size=cc) for c, cc in plan.sizes] or [s]
    machine = machine_info()
    start = time.monotonic()
    if plan.src:
        machine["data"] = f"{plan.src.resolve()} ({s.data_size / MiB:.1f} MiB; fio reads {data.fio_file})"
    samples = cpu_samples(data, s)
    results = []
    for run_s in runs:
        res = Results(run_s, machine=dict(machine), backends=list(plan.backends), datasets=list(data.sets),
                      job=str(plan.job or ""))
        for name, rel in data.sets.items():
            res.data_size[name] = tree_size(data.mount_src / rel)
            res.pages[name] = unique_pages(tree_chunks(data.mount_src / rel))
        step_all(res, data, mnt, logs.resolve(), progress(res, plan.job is not None), plan.job)
        log("CPU cost per put/get on the backend objects")
        for config in CPU_CONFIGS:  # warm-up: imports, allocator, branch caches
            cpu_cost(config, next(iter(samples.values()))[:200])
        for kind, pages in samples.items():
            for config in CPU_CONFIGS:
                res.cpu[(config, kind)] = cpu_cost(config, pages)
        res.runtime_s = time.monotonic() - start
        label = size_label(run_s) if plan.sizes else ""
        save_results(res, results_path(run_s, plan.custom, label))
        chart_dir = CHART_DIR / label if label else CHART_DIR
        res.charts = make_charts(res, out.resolve().parent / chart_dir, chart_dir.as_posix())
        results.append(res)
        start = time.monotonic()
    return results


def progress(res: Results, job: bool) -> Callable[[str], None]:
    """A step logger with a count and the time left, from the plan's size."""
    s = res.settings
    cycles = len(res.datasets) * len(res.backends)
    fio_runs = len(res.backends) + (0 if job else len(POLICIES))
    total = s.repeats * (cycles + fio_runs)
    log(f"plan: {total} steps ({s.repeats} repeat(s) of {cycles} read cycles, "
        f"{fio_runs} fio runs{'' if job else f' of {s.runtime} s'}), then the CPU cost per call")
    return Progress(total).begin


def size_label(s: Settings) -> str:
    return f"{human(s.cache_size)}-{human(s.cc_size)}"


def results_path(s: Settings, custom: bool = False, label: str = "") -> Path:
    """A quick run never overwrites the numbers of a full one, nor a run on the user's data make bench's."""
    name = "-".join(["results", *(["quick"] if s.quick else []), *([label] if label else [])]) + ".json"
    return ROOT / "custom" / name if custom else ROOT / name


def save_results(res: Results, path: Path) -> None:
    """Raw numbers of the run, kept under bench-results/ for later inspection."""
    data = {
        "settings": dataclasses.asdict(res.settings), "data_size": res.data_size, "pages": res.pages,
        "reads": {f"{b}/{d}": [dataclasses.asdict(r) for r in runs] for (b, d), runs in res.reads.items()},
        "iops": res.iops, "zipf": res.zipf, "cpu": {f"{b}/{k}": v for (b, k), v in res.cpu.items()},
        "commands": res.commands, "machine": res.machine, "runtime_s": res.runtime_s,
        "backends": res.backends, "datasets": res.datasets, "job": res.job,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=1))


def load_results(path: Path) -> Results:
    """The inverse of save_results, to redraw charts and the report without measuring again."""
    data = json.loads(path.read_text())
    res = Results(Settings(**data["settings"]), data_size=data["data_size"],
                  pages={k: (v[0], v[1]) for k, v in data["pages"].items()},
                  iops=data["iops"], zipf={k: [(a, b) for a, b in v] for k, v in data["zipf"].items()},
                  commands=data["commands"], machine=data["machine"], runtime_s=data["runtime_s"],
                  backends=data.get("backends", list(BACKENDS)), datasets=data.get("datasets", list(DATASETS)),
                  job=data.get("job", ""))
    for key, runs in data["reads"].items():
        backend, dataset = key.rsplit("/", 1)
        res.reads[(backend, dataset)] = [ReadResult(**r) for r in runs]
    for key, (put, get) in data["cpu"].items():
        backend, kind = key.rsplit("/", 1)
        res.cpu[(backend, kind)] = (put, get)
    return res


def parse_size(text: str) -> int:
    """16M -> 16777216 (as in mount options); a whole number of pages."""
    try:
        size = size_in_bytes(text)
    except ValueError:
        raise ValueError(f"{text!r} is not a size (a number with K, M or G)") from None
    if size < PAGE or size % PAGE:
        raise ValueError(f"{text!r} is not a whole number of {PAGE}-byte pages")
    return size


def parse_sizes(text: str, default_cache: int) -> tuple[tuple[int, int], ...]:
    """`16M/256M,64M/1G` (cache_size/cc_size pairs) or `128M,512M` (cc_sizes, the default cache_size)."""
    pairs = []
    for item in text.split(","):
        cache, _, cc = item.rpartition("/")
        pairs.append((parse_size(cache) if cache else default_cache, parse_size(cc)))
    return tuple(pairs)


def parse_backends(text: str) -> tuple[str, ...]:
    """`none,zcache,zcache+tmem`: each a cleancache= value whose members are installed backends."""
    from backends import registry

    known = registry.available()
    names = tuple(n.strip() for n in text.split(","))
    for name in names:
        unknown = [m for m in name.split("+") if m not in known]
        if unknown or not name:
            raise ValueError(f"unknown backend {(unknown or [name])[0]!r} (installed: {', '.join(known)})")
    return names


class Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        """One line and status 2, as every tmemfs command."""
        self.exit(2, f"bench_backends: {message}\n")


def parse_args(argv: Sequence[str] | None) -> tuple[argparse.Namespace, Plan]:
    parser = Parser(prog="python -m tools.bench_backends", description=__doc__.splitlines()[0] if __doc__ else None,
                    formatter_class=argparse.RawDescriptionHelpFormatter, epilog=EPILOG)
    parser.add_argument("--quick", action="store_true",
                        help="smaller sets, 1 s fio runs, one repeat (with tools.bench --quick: under 3 min)")
    parser.add_argument("--out", type=Path, help="report file (default BENCHMARKS.md, or bench-results/backends/"
                        "custom/report.md with --src, --backends, --sizes or --job); charts go to docs/bench/ "
                        "beside it")
    parser.add_argument("--from-json", type=Path, help="redraw charts and the report from a saved results.json")
    parser.add_argument("--src", type=Path, help="your data: a directory (every file in it) or one file, "
                        "instead of the built-in data sets")
    parser.add_argument("--backends", default=",".join(BACKENDS),
                        help=f"cleancache= values to compare, comma-separated (default {','.join(BACKENDS)})")
    parser.add_argument("--sizes", help="CACHE/CC[,CACHE/CC...]: cache_size/cc_size pairs, e.g. 16M/256M,64M/1G; "
                        "or CC[,CC...]: cc_sizes with the default cache_size, e.g. 128M,512M; the whole "
                        "comparison runs once per pair")
    parser.add_argument("--job", type=Path, help="a fio job file run on a fresh mount per backend instead of the "
                        "built-in fio runs (MNT, FILE and SIZE are set, as tools/fio/*.fio expect)")
    args = parser.parse_args(argv)
    try:
        s = settings_for(args.quick)
        plan = Plan(parse_backends(args.backends), parse_sizes(args.sizes, s.cache_size) if args.sizes else (),
                    args.src, args.job)
        for path, what in ((args.src, "--src"), (args.job, "--job")):
            if path is not None and not path.exists():
                raise ValueError(f"{what} {path}: no such file or directory")
        if args.src is not None:
            user_data(args.src)
    except (ValueError, OSError) as exc:
        parser.error(str(exc))
    if args.out is None:
        args.out = ROOT / "custom" / "report.md" if plan.custom else Path("BENCHMARKS.md")
    return args, plan


EPILOG = """examples:
  python -m tools.bench_backends                       # make bench's part: built-in data sets, BENCHMARKS.md
  python -m tools.bench_backends --src /srv/data --backends none,zcache,dedup --sizes 64M/256M,64M/1G
  python -m tools.bench_backends --src /srv/data/big.db --job tools/fio/zipf.fio --quick
"""


def main(argv: Sequence[str] | None = None) -> int:
    args, plan = parse_args(argv)
    if args.from_json:
        res = load_results(args.from_json)
        res.charts = make_charts(res, args.out.resolve().parent / CHART_DIR, CHART_DIR.as_posix())
        write_section(args.out, report(res), BEGIN, END)
        return 0
    s = settings_for(args.quick)
    mnt = (ROOT / "mnt").resolve()
    try:
        results = run(s, args.out, plan)
    finally:
        with suppress(Exception), signals_deferred():
            if is_mounted(mnt):
                unmount(mnt)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    write_section(args.out, "\n".join(report(res) for res in results), BEGIN, END)
    charts = sum(len(res.charts) for res in results)
    log(f"wrote {args.out} and {charts} charts in {sum(res.runtime_s for res in results) / 60:.1f} min")
    return 0


if __name__ == "__main__":
    sys.exit(main())
