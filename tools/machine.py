"""The machine a benchmark runs on: what it is, which versions it runs, which tmemfs it measures, and the CPU that
other processes use meanwhile (the machine is shared: a run that others slowed down must say so)."""

from __future__ import annotations

import hashlib
import os
import platform
import re
import resource
import subprocess
import time
from collections.abc import Callable, Iterable
from contextlib import ExitStack, suppress
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
KIB_PER_GIB = 1 << 20
REDIS_SERVER = "/usr/bin/redis-server"
BUSY = 0.25  # other processes using more than this share of one CPU during a run make it suspect
_TICK = os.sysconf("SC_CLK_TCK")


# -- facts -------------------------------------------------------------------------------------------------------


def command_output(cmd: list[str]) -> str:
    """The first line a command prints (stdout, else stderr), or why it did not run."""
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=30, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"({exc})"
    return (done.stdout or done.stderr).strip().splitlines()[0] if (done.stdout or done.stderr).strip() else "?"


def package_version(name: str, missing: str = "not installed") -> str:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return missing


def load_average() -> str:
    """1, 5 and 15 minutes, as /proc/loadavg says them."""
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def os_name() -> str:
    with suppress(OSError):
        m = re.search(r'PRETTY_NAME="(.*)"', Path("/etc/os-release").read_text())
        if m:
            return m.group(1)
    return platform.system()


def machine_facts(src: Path) -> dict[str, str]:
    """CPUs, memory, kernel, OS, and the file system `src` is on."""
    meminfo = Path("/proc/meminfo").read_text()
    mem_kib = int(re.search(r"MemTotal:\s+(\d+)", meminfo).group(1))  # type: ignore[union-attr]
    cpu = re.search(r"model name\s*:\s*(.*)", Path("/proc/cpuinfo").read_text())
    return {
        "nproc": str(os.cpu_count()),
        "CPU": cpu.group(1) if cpu else platform.processor() or "?",
        "memory": f"{mem_kib / KIB_PER_GIB:.1f} GiB",
        "kernel": platform.release(),
        "OS": os_name(),
        "SRC file system": " ".join(command_output(["findmnt", "-n", "-o", "FSTYPE,SOURCE,OPTIONS", "-T",
                                                     str(src)]).split()),
    }


def versions() -> dict[str, str]:
    """Python, the packages tmemfs runs on, fio, libfuse and tmemfs's source."""
    return {"python": platform.python_version(),
            **{name: package_version(name) for name in ("pyfuse3", "trio", "tmemfs")},
            "fio": command_output(["fio", "--version"]),
            "fusermount3 (libfuse)": command_output(["fusermount3", "--version"]),
            "tmemfs source": git_state()}


def store_versions() -> dict[str, str]:
    """versions(), and those of the cluster stores: lmdb, coredis, redis-server."""
    return {**versions(), "lmdb": package_version("lmdb"), "coredis": package_version("coredis"),
            "redis-server": command_output([REDIS_SERVER, "--version"]).split(" sha=")[0]}


def start_redis(stack: ExitStack, root: Path) -> tuple[Any, str | None]:
    """A tests.redisservers.RedisServer under `root`, stopped when `stack` closes; (None, why) if it cannot run."""
    if not os.access(REDIS_SERVER, os.X_OK):
        return None, f"{REDIS_SERVER} is not installed"
    try:
        from tests.redisservers import redis_server

        return stack.enter_context(redis_server(root, name="redis")), None
    except (ImportError, OSError, RuntimeError) as exc:
        return None, f"redis-server did not start ({exc})"


def source_digest() -> str:
    """Hash of tmemfs's Python sources: others edit them, so check they did not change mid-run."""
    h = hashlib.sha256()
    for path in sorted([*REPO.glob("fusefs/**/*.py"), *REPO.glob("backends/**/*.py")]):
        h.update(str(path.relative_to(REPO)).encode() + b"\0" + path.read_bytes())
    return h.hexdigest()[:12]


def note_digests(start: str, versions: dict[str, str]) -> tuple[str, str]:
    """source_digest() at the start and now, said in `versions` (one value when they agree)."""
    digests = (start, source_digest())
    versions["tmemfs sources (sha256 of fusefs/ and backends/ *.py)"] = " -> ".join(dict.fromkeys(digests))
    return digests


BENCH_OUTPUTS = ("BENCHMARKS.md", "docs/bench")  # what one bench writes before the next runs: not a change


def git_state() -> str:
    """Which tmemfs was measured: the commit, and whether the working tree differed from it
    (the benches' own outputs aside)."""
    head = command_output(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"])
    try:
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--", ".",
                                *[f":!{path}" for path in BENCH_OUTPUTS]], cwd=REPO, capture_output=True,
                               text=True, timeout=30, check=False).stdout.splitlines()
    except (OSError, subprocess.TimeoutExpired):
        return head
    return f"git {head}" + (f" + uncommitted changes in {len(dirty)} files" if dirty else " (clean)")


def proc_status(pid: int, key: str) -> int:
    """A memory line of /proc/PID/status (VmRSS, VmHWM), in bytes."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    raise KeyError(key)


def drop_host_cache() -> None:
    """sync; echo 3 > /proc/sys/vm/drop_caches, so SRC reads hit the disk."""
    os.sync()
    with suppress(OSError):
        Path("/proc/sys/vm/drop_caches").write_text("3\n")


# -- the CPU others use ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CpuSample:
    """Seconds of CPU: the whole machine busy, stolen by the hypervisor, ours (fio + the daemons)."""

    wall: float
    busy: float
    steal: float
    ours: float


def proc_cpu_seconds(pids: Iterable[int]) -> float:
    """utime + stime of processes that are not our reaped children (daemons, redis-server)."""
    total = 0.0
    for pid in pids:
        with suppress(OSError, IndexError, ValueError):
            with open(f"/proc/{pid}/stat") as f:
                after_comm = f.read().rpartition(")")[2].split()
            total += (int(after_comm[11]) + int(after_comm[12])) / _TICK
    return total


def cpu_sample(pids: Iterable[int] = ()) -> CpuSample:
    """The machine's CPU so far; ours is our reaped children's (fio and its job) and the processes `pids`."""
    with open("/proc/stat") as f:
        fields = [int(v) for v in f.readline().split()[1:]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = fields[:8]
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    ours = children.ru_utime + children.ru_stime + proc_cpu_seconds(pids)
    busy = (user + nice + system + irq + softirq) / _TICK
    return CpuSample(time.monotonic(), busy, steal / _TICK, ours)


def foreign_and_steal(before: CpuSample, after: CpuSample) -> tuple[float, float]:
    """CPUs' worth that others used, and that the hypervisor stole, between two samples."""
    wall = max(after.wall - before.wall, 1e-9)
    foreign = max(0.0, (after.busy - before.busy) - (after.ours - before.ours)) / wall
    return foreign, (after.steal - before.steal) / wall


def background_cpu(seconds: float = 2.0) -> float:
    """CPUs' worth used by others while we do nothing."""
    before = cpu_sample()
    time.sleep(seconds)
    return foreign_and_steal(before, cpu_sample())[0]


def wait_for_quiet(max_wait: float, log: Callable[[str], None]) -> tuple[float, float]:
    """(background CPU when we started measuring, seconds waited for it to drop below BUSY)."""
    t0 = time.monotonic()
    load = background_cpu(2.0 if max_wait > 0 else 0.5)
    while load > BUSY and time.monotonic() - t0 < max_wait:
        log(f"other processes use {load:.0%} of a CPU: waiting for quiet "
            f"({max_wait - (time.monotonic() - t0):.0f} s left)")
        load = background_cpu(5.0)
    return load, time.monotonic() - t0
