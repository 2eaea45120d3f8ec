"""Long stress of tmemfs: the data model check and the metadata stress on every backend.

Each run mounts a fresh SRC with the real command line (`python -m
fusefs.cli SRC MNT -f -o ...`), runs the randomized data model check
(tools.modelcheck), the same check with 4 client processes on the same
files at once (tools.concurrentmodel) and the concurrent metadata stress
(tools.metastress) at the same time on that mount, optionally under a
concurrent fio load or with an injected backend fault, and then checks that
nothing leaked:

* `drop_caches` + `flush` bring the counters back to idle: fs.open_files,
  fs.open_dirs, pagecache.pages, backend.*.stored_pages and
  cleancache.ledger_entries all 0; fs.internal_errors 0.
* The daemon's descriptors are back to what it held after mounting plus one
  O_PATH descriptor per inode the kernel still knows; with host cache
  dropping (root, the default; `echo 2 > /proc/sys/vm/drop_caches`, which
  drops the whole host's dentry and inode caches) the kernel forgets them
  all, so exactly the count after mounting.
* Peak resident memory (VmHWM) is reported against cache_size + cc_size.

    .venv/bin/python -m tools.stress [--quick] [--seed S] [--only TEXT] [--markdown FILE]

Full mode runs 4.1 million data operations, 1.5 million concurrent data
operations and 1.6 million metadata operations (about 40 minutes); --quick
runs the same matrix with 40-60 times fewer (about a minute and a half). Every run
prints its seeds; `--seed S --only NAME` replays one run (the concurrent
check replays its clients' operation sequences, not their interleaving).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path

from backends.base import size_in_bytes
from tools import concurrentmodel, metastress
from tools.machine import proc_status
from tools.modelcheck import Mismatch, ModelCheck
from tools.mounting import Foreground, foreground, is_mounted

ROOT = Path(__file__).resolve().parent.parent
MiB = 1 << 20
BACKENDS = ["none", "tmem", "zcache", "dedup", "zcache+tmem"]
# (cache_size, cc_size): one page, smaller than the data, larger than the data
# (the model check's files grow to 4 x 256 KiB).
SIZES = [("4K", "128K"), ("256K", "1M"), ("8M", "64M")]
POLICIES = ["lru", "sieve", "s3fifo", "arc"]
PROCS = 4
CLIENTS = 4  # the concurrent model check's processes, on the same files
IDLE_ZERO = ("fs.open_files", "fs.open_dirs", "pagecache.pages", "cleancache.ledger_entries",
             "fs.internal_errors")
FAULT_COUNTERS = ("cleancache.backend_errors", "cleancache.verify_failures", "cleancache.backend_timeouts")


class StressError(AssertionError):
    pass


@dataclass
class Run:
    name: str
    options: str
    data_ops: int
    meta_ops: int  # per process
    client_ops: int  # per client of the concurrent model check
    fio: str | None = None  # fio's file size: a randrw load on its own file of the mount
    fault: str | None = None  # a FaultyBackend fault: the run uses tests/plugins

    @property
    def faults_expected(self) -> bool:
        """`yield` injects no fault: the backend only lets other requests run in its calls."""
        return self.fault not in (None, "yield")

    @property
    def limit(self) -> int:
        """cache_size + cc_size for each backend member: what the caches may hold."""
        opts = dict(o.partition("=")[::2] for o in self.options.split(","))
        members = 0 if opts.get("cleancache", "zcache") == "none" else len(opts["cleancache"].split("+"))
        return size_in_bytes(opts["cache_size"]) + members * size_in_bytes(opts["cc_size"])


@dataclass
class Result:
    run: Run
    seed: int
    seconds: float = 0.0
    data_seconds: float = 0.0
    meta_seconds: float = 0.0
    conc_seconds: float = 0.0
    data_ops: int = 0
    conc_ops: int = 0  # the concurrent model check's, all clients
    conc_reads: int = 0  # reads and sizes it checked
    meta_ops: int = 0
    meta_ok: int = 0
    meta_expected: int = 0
    objects: int = 0
    faults: int = 0  # backend faults the frontend contained
    fio_ios: int = 0
    rss_mounted: int = 0
    hwm: int = 0
    fds_mounted: int = 0
    fds_after: int = 0
    inodes_after: int = 0
    ok: bool = False
    errors: list[str] = field(default_factory=list)


def plan(quick: bool) -> list[Run]:
    """Every backend at every cache size, two cluster nodes (lmdb), kernel_cache, zero
    timeouts, two runs under fio load (one filling the caches to their limits), three
    with backend faults and one whose backend lets other requests run inside its calls.

    Full: 18 x 200,000 + 100,000 + 6 x 60,000 = 4,060,000 data operations,
    (18 x 20,000 + 10,000 + 6 x 3,000) x 4 = 1,552,000 metadata operations and
    25 x 4 x 15,000 - 30,000 = 1,470,000 concurrent data operations (about 40 min);
    quick: 5,000 data, 4 x 300 metadata and 4 x 400 concurrent operations a run (about
    a minute and a half).
    """
    data, meta, conc = (5000, 300, 400) if quick else (200_000, 20_000, 15_000)
    few_data, few_meta = (data, meta) if quick else (60_000, 3_000)  # slow runs: the concurrent check is the point
    runs = []
    n = 0
    for backend in BACKENDS:
        for cache, cc in SIZES:
            opts = f"cleancache={backend},cache_size={cache},cc_size={cc},pc_policy={POLICIES[n % 4]}"
            if backend != "none":
                opts += f",cc_policy={POLICIES[(n + 1) % 4]}"
            if backend == "dedup" and cache == "256K":
                opts += ",backing_io=direct"
            runs.append(Run(f"{backend}/{cache}", opts, data, meta, conc))
            n += 1
    for cache, cc in SIZES[:2]:  # a cluster node alone: versioned pool keys, a shared pool
        runs.append(Run(f"cluster/{cache}", f"cleancache=cluster,cache_size={cache},cc_size={cc},cc_dir={{work}}/pools",
                        few_data, few_meta, conc))
    for backend, (cache, cc), policy in (("zcache", SIZES[0], "lru"), ("dedup", SIZES[1], "sieve")):
        # a host pool's client: the shared store's index, zbud frames, seqlocks and punching
        runs.append(Run(f"host/{backend}/{cache}", f"cleancache={backend},cc_host=stress,cc_dir={{work}}/hosts,"
                        f"cache_size={cache},cc_size={cc},cc_policy={policy}", few_data, few_meta, conc))
    runs.append(Run("kernel_cache/tmem/256K", "cleancache=tmem,cache_size=256K,cc_size=1M,kernel_cache",
                    data, meta, conc))
    runs.append(Run("timeouts=0/zcache/4K", "cleancache=zcache,cache_size=4K,cc_size=128K,attr_timeout=0,"
                    "entry_timeout=0", data, meta, conc))
    runs.append(Run("fio-load/zcache/256K", "cleancache=zcache,cache_size=256K,cc_size=1M", data, meta, conc,
                    fio="8M"))
    # caches filled to their limits by incompressible data: what peak RSS really costs
    runs.append(Run("fio-fill/zcache+tmem/16M", "cleancache=zcache+tmem,cache_size=16M,cc_size=32M",
                    data // 2, meta // 2, conc // 2, fio="256M" if not quick else "32M"))
    for fault in ("flaky",) if quick else ("flaky", "corrupt", "stale"):
        runs.append(Run(f"fault={fault}/16K", f"cleancache=faulty,fault={fault},cache_size=16K,cc_size=1M,"
                        "cc_timeout=0.05", few_data, few_meta, conc, fault=fault))
    # a private pool whose puts, gets and peeks yield to other requests, as a remote store's do
    runs.append(Run("yield/16K", "cleancache=faulty,fault=yield,cache_size=16K,cc_size=1M", few_data, few_meta,
                    conc, fault="yield"))
    return runs


# -- a mount --------------------------------------------------------------------------


class Daemon(Foreground):
    """The foreground tmemfs of a run, with what the run measures of it."""

    def control(self, text: str) -> None:
        (self.mnt / ".tmemfs" / "control").write_text(text)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def fds(self) -> int:
        return len(os.listdir(f"/proc/{self.pid}/fd"))

    def status(self, key: str) -> int:
        return proc_status(self.pid, key)


@contextmanager
def mounted(work: Path, options: str, plugins: bool) -> Iterator[Daemon]:
    """tmemfs on work/mnt over work/src in the foreground; unmounted in a finally (execute judges its end)."""
    src, mnt = work / "src", work / "mnt"
    src.mkdir()
    mnt.mkdir()
    options = options.replace("{work}", str(work))  # a cluster node's store lives with the run
    for option in options.split(","):
        if option.startswith("cc_dir="):
            Path(option.removeprefix("cc_dir=")).mkdir(parents=True, exist_ok=True)
    with foreground(Daemon, src, mnt, work / "tmemfs.log", options, plugins=plugins, cwd=ROOT,
                    error=StressError, stop_timeout=30, check_end=False) as daemon:
        if daemon.stats()["fs.pid"] != daemon.pid:
            raise StressError("stats.json fs.pid is not the daemon's pid")
        yield daemon


# -- one run --------------------------------------------------------------------------


def _model(root: str, seed: int, ops: int) -> tuple[str | None, float]:
    """The data model check in a child process: (None or the mismatch, seconds taken)."""
    started = time.monotonic()
    try:
        ModelCheck(Path(root), seed).run(ops)
    except Mismatch as exc:
        return str(exc), time.monotonic() - started
    return None, time.monotonic() - started


def _concurrent(root: str, src: str, seed: int, ops: int) -> concurrentmodel.ConcurrentReport:
    """The concurrent model check (its clients are this child's children)."""
    return concurrentmodel.run(Path(root), Path(src), seed, CLIENTS, ops)


def start_fio(mnt: Path, out: Path, size: str = "8M") -> subprocess.Popen[bytes]:
    """fio randrw on its own file of the mount, until stopped with SIGINT."""
    args = ["fio", "--name=load", f"--filename={mnt / 'fio.dat'}", "--rw=randrw", "--bs=4k", f"--size={size}",
            "--ioengine=psync", "--fallocate=none", "--time_based", "--runtime=86400",
            "--output-format=json", f"--output={out}"]
    return subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def stop_fio(proc: subprocess.Popen[bytes], out: Path) -> int:
    """Stop fio, check it saw no error, and return the I/Os it did."""
    proc.send_signal(signal.SIGINT)
    try:
        _, err = proc.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        raise StressError("fio did not stop") from None
    if proc.returncode not in (0, 128):  # 128: stopped by the signal, as asked
        raise StressError(f"fio exited with {proc.returncode}: {err.decode(errors='replace')[-2000:]}")
    text = out.read_text()
    report = json.loads(text[text.index("{"):])  # fio may print notes before the JSON
    job = report["jobs"][0]
    if job["error"] != 0:
        raise StressError(f"fio job error {job['error']}")
    ios = int(job["read"]["total_ios"]) + int(job["write"]["total_ios"])
    if ios == 0:
        raise StressError("fio did no I/O")
    return ios


def wait_idle(daemon: Daemon, run: Run, drop_host: bool) -> dict[str, object]:
    """drop_caches + flush; then the counters must come back to idle."""
    daemon.control("drop_caches\nflush\n")
    if drop_host:
        Path("/proc/sys/vm/drop_caches").write_text("2\n")  # host-wide: dentries and inodes
    deadline = time.monotonic() + 10
    while True:
        stats = daemon.stats()
        busy = {k: stats[k] for k in IDLE_ZERO if stats[k] != 0}
        busy |= {k: v for k, v in stats.items() if k.startswith("backend.") and k.endswith(".stored_pages") and v}
        if drop_host and stats["fs.inodes"] != 1:
            busy["fs.inodes"] = stats["fs.inodes"]
        if not busy:
            return stats
        if time.monotonic() > deadline:
            raise StressError(f"not idle after drop_caches + flush: {busy}")
        time.sleep(0.2)
        daemon.control("drop_caches\nflush\n")
        if drop_host:
            Path("/proc/sys/vm/drop_caches").write_text("2\n")


def execute(run: Run, seed: int, base: Path, drop_host: bool) -> Result:
    """One run on a fresh mount: the checks at once (and fio), then nothing may be left; any failure is kept in
    the result with the daemon's log."""
    result = Result(run, seed)
    started = time.monotonic()
    work = Path(tempfile.mkdtemp(prefix="tmemfs-stress-", dir=base))
    try:
        with mounted(work, run.options, plugins=run.fault is not None) as daemon:
            result.fds_mounted = daemon.fds()
            result.rss_mounted = daemon.status("VmRSS")
            inodes_mounted = int(daemon.stats()["fs.inodes"])
            for name in ("data", "conc", "meta"):
                (daemon.mnt / name).mkdir()
            fio = start_fio(daemon.mnt, work / "fio.json", run.fio) if run.fio else None
            try:
                report, concurrent = run_checks(daemon, run, seed, result)
            finally:
                if fio is not None:
                    result.fio_ios = stop_fio(fio, work / "fio.json")
            note_checks(result, report, concurrent)
            check_idle(daemon, run, drop_host, result, inodes_mounted)
            result.hwm = daemon.status("VmHWM")
        check_end(daemon, run)
        result.ok = True
    except Exception as exc:
        result.errors.append(f"{type(exc).__name__}: {exc}")
        kept = base / f"failed-{run.name.replace('/', '_')}-{seed}.log"
        with suppress(OSError):
            shutil.copyfile(work / "tmemfs.log", kept)
            result.errors.append(f"the daemon's log: {kept}")
    finally:
        result.seconds = time.monotonic() - started
        if not is_mounted(work / "mnt"):
            shutil.rmtree(work, ignore_errors=True)
    return result


def run_checks(daemon: Daemon, run: Run, seed: int,
               result: Result) -> tuple[metastress.StressReport, concurrentmodel.ConcurrentReport]:
    """The data model check and the concurrent one in child processes, the metadata stress here, all at once;
    StressError on the first that fails."""
    pool = ProcessPoolExecutor(2, mp_context=multiprocessing.get_context("fork"))
    try:
        model = pool.submit(_model, str(daemon.mnt / "data"), seed, run.data_ops)
        conc = pool.submit(_concurrent, str(daemon.mnt / "conc"), str(daemon.src / "conc"), seed, run.client_ops)
        try:
            report = metastress.run(daemon.mnt / "meta", daemon.src / "meta", PROCS, run.meta_ops, seed,
                                    timeout=1800)
        except metastress.StressFailure as exc:
            raise StressError(f"metadata stress: {exc}") from None
        mismatch, result.data_seconds = model.result(timeout=3600)
        if mismatch is not None:
            raise StressError(f"model check: {mismatch}")
        concurrent = conc.result(timeout=3600)
        if not concurrent.ok:
            raise StressError(f"concurrent model check: {concurrent.failure()}")
        return report, concurrent
    finally:
        if not (model.done() and conc.done()):  # a failure or a hang: do not wait, so the mount can go
            for proc in list(getattr(pool, "_processes", {}).values()):
                proc.kill()
        pool.shutdown(wait=False, cancel_futures=True)


def note_checks(result: Result, report: metastress.StressReport, concurrent: concurrentmodel.ConcurrentReport) -> None:
    """What the checks did, into the result."""
    result.data_ops = result.run.data_ops
    result.conc_ops, result.conc_reads = concurrent.total_ops, concurrent.reads
    result.conc_seconds = concurrent.seconds
    result.meta_ops = report.ops
    result.meta_seconds = report.seconds
    result.meta_ok = sum(report.succeeded.values())
    result.meta_expected = sum(report.expected_errors.values())
    result.objects = report.objects


def check_idle(daemon: Daemon, run: Run, drop_host: bool, result: Result, inodes_mounted: int) -> None:
    """Back to idle: no descriptor beyond one per inode the kernel still knows, and backend faults counted
    exactly when they were injected."""
    stats = wait_idle(daemon, run, drop_host)
    result.inodes_after = int(stats["fs.inodes"])  # type: ignore[call-overload]
    result.fds_after = daemon.fds()
    leaked = result.fds_after - result.fds_mounted - (result.inodes_after - inodes_mounted)
    if leaked > 0:
        raise StressError(f"{leaked} descriptors more than after mounting "
                          f"({result.fds_mounted} -> {result.fds_after}, fs.inodes {result.inodes_after})")
    result.faults = sum(int(stats.get(k, 0)) for k in FAULT_COUNTERS)  # type: ignore[call-overload]
    if not run.faults_expected and result.faults:
        raise StressError(f"backend faults without injection: {[(k, stats.get(k)) for k in FAULT_COUNTERS]}")
    if run.faults_expected and not result.faults:
        raise StressError(f"fault={run.fault} was injected but no fault was counted")


def check_end(daemon: Daemon, run: Run) -> None:
    """The daemon exited cleanly and logged no error (a Traceback is expected only with injected faults)."""
    if daemon.proc.returncode != 0:
        raise StressError(f"tmemfs exited with {daemon.proc.returncode}")
    log = daemon.log.read_text()
    if "internal error" in log or ("Traceback" in log and not run.faults_expected):
        raise StressError(f"tmemfs logged an error:\n{log[-3000:]}")


# -- the whole stress -----------------------------------------------------------------


def mib(n: int) -> str:
    return f"{n / MiB:.1f}"


def line(r: Result) -> str:
    status = "ok" if r.ok else "FAILED"
    return (f"{r.run.name:<22} {status:<6} {r.seconds:6.1f}s data {r.data_ops:>6} ({r.data_seconds:.0f}s) "
            f"concurrent {r.conc_ops:>6} ({r.conc_seconds:.0f}s) meta {r.meta_ops:>6} ({r.meta_seconds:.0f}s) "
            f"faults {r.faults:>5} fio {r.fio_ios:>6}  RSS {mib(r.rss_mounted)} -> peak {mib(r.hwm)} MiB "
            f"(caches may hold {mib(r.run.limit)})  fds {r.fds_mounted}->{r.fds_after}")


def markdown(results: list[Result], command: str, seconds: float, base_seed: int) -> str:
    rows = ["| run | options | seed | data ops | concurrent data ops (reads checked) | "
            "metadata ops (ok / expected errors) | objects compared | "
            "faults contained | fio I/Os | RSS after mount | peak RSS (VmHWM) | growth | cache_size + cc_size | "
            "fds after mount -> after | time | result |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        rows.append(f"| {r.run.name} | `{r.run.options}` | {r.seed} | {r.data_ops:,} | "
                    f"{r.conc_ops:,} ({r.conc_reads:,}) | {r.meta_ops:,} "
                    f"({r.meta_ok:,} / {r.meta_expected:,}) | {r.objects:,} | {r.faults:,} | {r.fio_ios:,} | "
                    f"{mib(r.rss_mounted)} MiB | {mib(r.hwm)} MiB | {mib(r.hwm - r.rss_mounted)} MiB | "
                    f"{mib(r.run.limit)} MiB | "
                    f"{r.fds_mounted} -> {r.fds_after} | {r.seconds:.0f} s | {'ok' if r.ok else 'FAILED'} |")
    total_data = sum(r.data_ops for r in results)
    total_meta = sum(r.meta_ops for r in results)
    failed = [r for r in results if not r.ok]
    head = [f"Command: `{command}` (base seed {base_seed})", "",
            f"{len(results)} runs, {total_data:,} data operations, "
            f"{sum(r.conc_ops for r in results):,} concurrent data operations ({CLIENTS} clients a file), "
            f"{total_meta:,} metadata operations, "
            f"{sum(r.faults for r in results):,} backend faults injected and contained, "
            f"{sum(r.fio_ios for r in results):,} fio I/Os, {len(failed)} failed runs, "
            f"{seconds / 60:.1f} minutes.", ""]
    tail = [""] + [f"* {r.run.name} (seed {r.seed}): {e}" for r in failed for e in r.errors]
    return "\n".join(head + rows + tail) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="about a minute and a half instead of 40 minutes")
    parser.add_argument("--seed", type=int, default=None, help="base seed; run N uses seed + N")
    parser.add_argument("--only", default=None, help="only the runs whose name contains this text")
    parser.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()),
                        help="where SRC and MNT of each run are made (default: the temp directory)")
    parser.add_argument("--no-host-drop", action="store_true",
                        help="do not write 2 to /proc/sys/vm/drop_caches (it drops the host's dentry and "
                             "inode caches) to make the kernel forget the mount's inodes after each run")
    parser.add_argument("--markdown", type=Path, default=None, help="also write the results table here")
    args = parser.parse_args(argv)
    base_seed = args.seed if args.seed is not None else int.from_bytes(os.urandom(3), "little")
    drop_host = not args.no_host_drop and os.geteuid() == 0
    runs = plan(args.quick)
    if args.only:
        runs = [r for r in runs if args.only in r.name]
    command = "python -m tools.stress" + (" --quick" if args.quick else "") + f" --seed {base_seed}"
    print(f"stress: {len(runs)} runs, base seed {base_seed} (replay one: {command} --only NAME)", flush=True)
    started = time.monotonic()
    results = []
    all_runs = plan(args.quick)
    for run in runs:
        seed = base_seed + all_runs.index(run)
        print(f"  {run.name}: seed {seed}, -o {run.options} ...", flush=True)
        result = execute(run, seed, args.workdir, drop_host)
        results.append(result)
        print("  " + line(result), flush=True)
        for error in result.errors:
            print(f"    {error}", flush=True)
    seconds = time.monotonic() - started
    failed = [r for r in results if not r.ok]
    print(f"stress: {len(results)} runs, {sum(r.data_ops for r in results):,} data, "
          f"{sum(r.conc_ops for r in results):,} concurrent data and "
          f"{sum(r.meta_ops for r in results):,} metadata operations, "
          f"{sum(r.faults for r in results):,} backend faults contained, {len(failed)} failed, "
          f"{seconds / 60:.1f} min")
    if args.markdown:
        args.markdown.write_text(markdown(results, command, seconds, base_seed))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
