"""Mount points, seen and removed the same way by the tests, `make bench` and `make stress`; a foreground
tmemfs, started, waited for, stopped and judged the same way by the tests and `make stress`; and the
background mounts of the benchmarks: a daemonized tmemfs, or any configuration they compare (native, the
pyfuse3 example, the null file system, libfuse's passthrough_ll, tmemfs), restartable after a crash."""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any, Literal, TypeVar

from fusefs.logs import STACKS_SIGNAL

REPO = Path(__file__).resolve().parent.parent
TMEMFS = [sys.executable, "-m", "fusefs.cli"]  # the real command line, run by this interpreter
PLUGINS = REPO / "tests" / "plugins"  # fault-injecting test backends (entry points)
MiB = 1 << 20
Stats = dict[str, Any]  # stats.json: JSON numbers and strings
STACKS_WAIT_S = 2.0  # for a lingering daemon to write its stacks before it is killed
PEER_BINARY = "passthrough_ll"  # libfuse's C pass-through, built by tools/bench_inflight.py into the workspace


def _unescape(field: str) -> str:
    """mountinfo writes spaces and the like as octal escapes (\\040)."""
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), field)


def mount_points() -> list[str]:
    """Every mount point, from /proc/self/mountinfo."""
    with open("/proc/self/mountinfo") as f:
        return [_unescape(line.split()[4]) for line in f]


def is_mounted(path: Path) -> bool:
    """True if `path` is a mount point, dead or alive."""
    return str(path.resolve()) in mount_points()


def unmount(path: Path) -> None:
    """fusermount3 -u, then lazily (-z) if something still holds the mount."""
    for attempt in range(100):
        if not is_mounted(path):
            return
        flags = ["-u"] if attempt < 20 else ["-u", "-z"]
        subprocess.run(["fusermount3", *flags, str(path)], capture_output=True, check=False)
        time.sleep(0.05)
    raise RuntimeError(f"could not unmount {path}")


def pid_alive(pid: int) -> bool:
    """Alive and not a zombie (a daemonized tmemfs is reaped by someone else)."""
    try:
        with open(f"/proc/{pid}/status") as f:
            return not any(line.startswith("State:") and "Z" in line.split()[1] for line in f)
    except (FileNotFoundError, ProcessLookupError):
        return False


def stop_daemon(pid: int, grace: float = 10.0) -> None:
    """Wait for a daemon to leave after its unmount; TERM, then KILL, one that lingers."""
    for sig in (None, signal.SIGTERM, signal.SIGKILL):
        if sig is not None:
            with suppress(ProcessLookupError):
                os.kill(pid, sig)
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline:
            if not pid_alive(pid):
                return
            time.sleep(0.05)
        grace = 3.0


@contextmanager
def signals_deferred() -> Iterator[None]:
    """Ctrl-C during an unmount would leave a mount behind: hold it until the unmount is done."""
    pending: list[int] = []

    def hold(signum: int, frame: FrameType | None) -> None:
        pending.append(signum)

    old = signal.signal(signal.SIGINT, hold)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, old)
        if pending:
            raise KeyboardInterrupt


def wait_live(mnt: Path, proc: subprocess.Popen[bytes], log: Path, timeout: float = 20.0,
              error: type[Exception] = RuntimeError) -> None:
    """Until a foreground tmemfs answers on `mnt`; `error` with its log if it never does."""
    deadline = time.monotonic() + timeout
    while not (is_mounted(mnt) and (mnt / ".tmemfs" / "stats").exists()):
        if proc.poll() is not None:
            raise error(f"tmemfs exited with {proc.returncode}: {log.read_text()}")
        if time.monotonic() > deadline:
            raise error(f"tmemfs did not come up: {log.read_text()}")
        time.sleep(0.02)


def end_process(proc: subprocess.Popen[Any], timeout: float = 10.0, ask: bool = True) -> None:
    """End a child we started: ask it to leave (SIGTERM; not when it is leaving by itself), wait, kill it if it
    lingers; reaped either way."""
    if ask and proc.poll() is None:
        with suppress(ProcessLookupError):
            proc.terminate()
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def stop_foreground(mnt: Path, proc: subprocess.Popen[bytes], timeout: float = 20.0) -> None:
    """Unmount, then reap the foreground daemon. One that lingers is asked where its threads are (SIGUSR1:
    their stacks go to its log, which a failed stress run keeps) before it is killed."""
    try:
        unmount(mnt)
    finally:
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            with suppress(ProcessLookupError):
                proc.send_signal(STACKS_SIGNAL)
            end_process(proc, STACKS_WAIT_S, ask=False)


@dataclass(eq=False)
class Foreground:
    """A tmemfs that `foreground()` runs as a child, and what its end may show without being an error."""

    src: Path
    mnt: Path
    proc: subprocess.Popen[bytes]
    log: Path
    killed: bool = False  # killed on purpose: its exit status is no error
    faults_expected: bool = False  # its backend fails on purpose: a Traceback in its log is no error

    def stats(self) -> Stats:
        return read_stats(self.mnt)

    def kill(self) -> None:
        self.killed = True
        self.proc.kill()
        self.proc.wait(timeout=10)

    def end_problem(self) -> str | None:
        """What its exit status and log say went wrong, once it has stopped (None: nothing)."""
        if self.proc.returncode not in (0, None) and not self.killed:
            return f"tmemfs exited with {self.proc.returncode}: {self.log.read_text()}"
        text = self.log.read_text()
        if "internal error" in text or ("Traceback" in text and not self.faults_expected):
            return f"tmemfs logged an error:\n{text}"
        return None


F = TypeVar("F", bound=Foreground)


def _daemon_env(plugins: bool, env: Mapping[str, str] | None) -> dict[str, str]:
    """Our environment plus `env`; with `plugins`, the test backends of tests/plugins on PYTHONPATH."""
    result = {**os.environ, **(env or {})}
    if plugins:
        result["PYTHONPATH"] = os.pathsep.join(filter(None, [str(PLUGINS), result.get("PYTHONPATH")]))
    return result


@contextmanager
def foreground(kind: type[F], src: Path, mnt: Path, log: Path, options: str = "", *,
               extra_args: Sequence[str] = (), plugins: bool = False, env: Mapping[str, str] | None = None,
               cwd: Path | None = None, error: type[Exception] = RuntimeError, stop_timeout: float = 20.0,
               check_end: bool = True) -> Iterator[F]:
    """`tmemfs SRC MNT -f` (`-o options` if any) with its output in `log`, handed out as a `kind` once it
    answers; unmounted and reaped in a finally, so no test or stress run leaves a mount behind.

    `error` is raised if it never comes up and, with `check_end`, after a clean exit if its exit status or
    log shows a failure (callers that judge the end themselves pass check_end=False)."""
    args = [*TMEMFS, str(src), str(mnt), "-f", *extra_args, *(["-o", options] if options else [])]
    with open(log, "wb") as out:
        proc = subprocess.Popen(args, cwd=cwd, stdout=out, stderr=subprocess.STDOUT, env=_daemon_env(plugins, env))
    daemon = kind(src, mnt, proc, log)
    try:
        wait_live(mnt, proc, log, error=error)
        yield daemon
    finally:
        stop_foreground(mnt, proc, timeout=stop_timeout)
    if check_end and (problem := daemon.end_problem()) is not None:
        raise error(problem)


# -- a mount's control files ---------------------------------------------------------------------------------------


def read_stats(mnt: Path) -> Stats:
    data: Stats = json.loads((mnt / ".tmemfs" / "stats.json").read_text())
    return data


def counter(stats: Mapping[str, object], key: str) -> float:
    """A counter of stats.json as a number (0 when absent)."""
    value = stats.get(key, 0)
    return float(value) if isinstance(value, int | float) else 0.0


def backend_value(stats: Mapping[str, Any], name: str) -> int | None:
    """backend.<any backend>.NAME: the first backend's (one backend in the mounts that ask)."""
    hits = [v for k, v in stats.items() if k.startswith("backend.") and k.endswith("." + name)]
    return int(hits[0]) if hits else None


def control(mnt: Path, command: str) -> None:
    (mnt / ".tmemfs" / "control").write_text(command + "\n")


def wait_store_up(mnt: Path, timeout: float = 10.0) -> None:
    """A cluster node that has not joined its pool reads SRC uncached: measure it only once its store is up."""
    deadline = time.monotonic() + timeout
    while read_stats(mnt).get("backend.cluster.store.state") != "up":
        if time.monotonic() > deadline:
            raise RuntimeError(f"{mnt}: the Redis store is not up after {timeout:g} s")
        time.sleep(0.05)


def read_through(path: Path) -> None:
    """Warm-up: read every byte once, through whatever is mounted there."""
    with open(path, "rb", buffering=0) as f:
        while f.read(MiB):
            pass


# -- a daemonized tmemfs -------------------------------------------------------------------------------------------


class MountError(RuntimeError):
    """tmemfs did not mount: its command line, exit status and what it said."""

    def __init__(self, cmd: Sequence[str], returncode: int, stderr: str) -> None:
        super().__init__(f"{shlex.join(cmd)} exited {returncode}: {stderr.strip()[-300:]}")
        self.returncode = returncode
        self.last_line = stderr.strip().splitlines()[-1] if stderr.strip() else "no message"


def tmemfs_argv(src: Path, mnt: Path, options: str, bin_dir: Path = Path(sys.executable).parent) -> list[str]:
    """`tmemfs SRC MNT -o OPTIONS`, the command users run (installed beside this interpreter)."""
    return [str(bin_dir / "tmemfs"), str(src), str(mnt), "-o", options]


def start_daemon(argv: Sequence[str], log: Path) -> int:
    """Run tmemfs_argv() with `log=LOG` added; tmemfs daemonizes once its mount is live: the daemon's pid."""
    cmd = [*argv[:-1], f"{argv[-1]},log={log}"]
    done = subprocess.run(cmd, capture_output=True, text=True, check=False, timeout=60)
    if done.returncode != 0:
        raise MountError(cmd, done.returncode, done.stderr)
    return int(str(read_stats(Path(argv[2]))["fs.pid"]))


@contextmanager
def background(src: Path, mnt: Path, options: str, log: Path) -> Iterator[int]:
    """tmemfs SRC MNT -o options, daemonized, handing out its pid; always unmounted (and the daemon gone) on the
    way out, even on Ctrl-C."""
    mnt.mkdir(parents=True, exist_ok=True)
    if is_mounted(mnt):
        unmount(mnt)
    pid: int | None = None
    try:
        pid = start_daemon(tmemfs_argv(src, mnt, options), log)
        yield pid
    finally:
        with signals_deferred():
            unmount(mnt)
            if pid is not None:
                stop_daemon(pid)


# -- the configurations a benchmark compares ---------------------------------------------------------------------------

_started_pids: set[int] = set()  # every FUSE daemon a Mount started, for the last-resort cleanup


@dataclass
class Workspace:
    """Paths of one benchmark run, all under its results directory: run/ is this run's, cache/ is kept across
    runs."""

    root: Path
    venv_bin: Path
    src: Path = field(init=False)
    mnt: Path = field(init=False)
    logs: Path = field(init=False)  # the daemons'
    raw: Path = field(init=False)  # fio's output
    cache: Path = field(init=False)

    def __post_init__(self) -> None:
        self.src, self.mnt, self.logs, self.raw = (self.root / "run" / d for d in ("src", "mnt", "logs", "raw"))
        self.cache = self.root / "cache"

    @property
    def peer(self) -> Path:
        return self.cache / PEER_BINARY

    def example_script(self, variant: str) -> Path:
        return self.cache / f"passthroughfs-{variant}.py"

    def prepare(self) -> None:
        for d in (self.src, self.mnt, self.logs, self.raw, self.cache):
            d.mkdir(parents=True, exist_ok=True)
        if is_mounted(self.mnt):  # left over from a killed run
            unmount(self.mnt)


@dataclass(frozen=True)
class Config:
    """A way of serving the test files: native, an example variant, the null fs, libfuse's passthrough_ll
    (peer), or tmemfs with options."""

    key: str
    label: str
    kind: Literal["native", "example", "null", "tmemfs", "peer"]
    options: str = ""  # tmemfs -o string, the example variant ("stock" / "timeouts1" / "nodirect"), peer's flags,
    # "backing" for the null fs reading SRC
    backing: str = ""  # where its reads of SRC come from, for the report
    warm: bool = True  # read each file through the mount once before its first job


def mount_argv(config: Config, ws: Workspace, files: Sequence[str], size: int = 64 * MiB) -> list[str]:
    """The command that mounts a configuration on ws.mnt (empty for native)."""
    if config.kind == "example":
        return [sys.executable, str(ws.example_script(config.options)), str(ws.src), str(ws.mnt)]
    if config.kind == "peer":  # -f: a foreground child, as the example; cache=never is direct_io, as tmemfs
        return [str(ws.peer), "-f", *config.options.split(), "-o", f"source={ws.src},cache=never", str(ws.mnt)]
    if config.kind == "null":  # options "backing": its files are SRC's (nullfs --backing)
        backing = ["--backing", str(ws.src)] if config.options == "backing" else []
        return [sys.executable, "-m", "tools.nullfs", str(ws.mnt), "--size", f"{size // MiB}M",
                *(arg for name in files for arg in ("--file", name)), *backing]
    if config.kind == "tmemfs":
        return tmemfs_argv(ws.src, ws.mnt, config.options, ws.venv_bin)
    return []


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


class Mount:
    """A configuration's file system at ws.mnt (or SRC itself for native), restartable after a crash."""

    def __init__(self, config: Config, ws: Workspace, files: Sequence[str], size: int = 64 * MiB) -> None:
        self.config, self.ws, self.options, self.files, self.size = config, ws, config.options, tuple(files), size
        self.proc: subprocess.Popen[bytes] | None = None
        self.pid: int | None = None
        self.log = ws.logs / f"{config.key}.log"
        self.warmed: set[str] = set()  # files read through this mount since it (re)started

    @property
    def path(self) -> Path:
        return self.ws.src if self.config.kind == "native" else self.ws.mnt

    def start(self) -> None:
        self.warmed = set()
        if self.config.kind in ("example", "null", "peer"):
            self._start_foreground()
        elif self.config.kind == "tmemfs":
            self._start_tmemfs()

    def _start_foreground(self) -> None:
        """The example, the null fs and the peer stay in the foreground: a child in its own session."""
        with open(self.log, "ab") as logf:
            self.proc = subprocess.Popen(
                mount_argv(self.config, self.ws, self.files, self.size), cwd=REPO,
                stdin=subprocess.DEVNULL, stdout=logf, stderr=subprocess.STDOUT,
                start_new_session=True)  # Ctrl-C reaches us, and we unmount it cleanly
        self.pid = self.proc.pid
        _started_pids.add(self.pid)
        wait_mounted(self.ws.mnt, lambda: self.proc is not None and self.proc.poll() is None)

    def _start_tmemfs(self) -> None:
        try:
            self.pid = start_daemon(mount_argv(self.config, self.ws, self.files), self.log)
        except MountError as exc:
            raise RuntimeError(f"tmemfs exited {exc.returncode}: {exc.last_line}") from None
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
            end_process(self.proc, ask=False)
        if self.pid is not None:
            _stop_started(self.pid)
        self.proc, self.pid = None, None

    def alive(self) -> bool:
        """The daemon runs and the test file answers (a crashed pyfuse3 leaves ENOTCONN behind)."""
        if self.config.kind == "native":
            return True
        if self.pid is None or not pid_alive(self.pid):
            return False
        try:
            os.stat(self.path / self.files[0])
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


def _stop_started(pid: int, grace: float = 10.0) -> None:
    """Wait for a daemon to leave after its unmount, and forget it."""
    stop_daemon(pid, grace)
    _started_pids.discard(pid)


def kill_leftovers(ws: Workspace) -> None:
    """Last resort in the outermost finally: nothing a Mount started may survive us."""
    with signals_deferred():
        with suppress(Exception):
            if is_mounted(ws.mnt):
                unmount(ws.mnt)
        for pid in list(_started_pids):
            _stop_started(pid, grace=2.0)
