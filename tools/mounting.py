"""Mount points, seen and removed the same way by the tests, `make bench` and `make stress`; a foreground
tmemfs, started, waited for, stopped and judged the same way by the tests and `make stress`."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import TypeVar

TMEMFS = [sys.executable, "-m", "fusefs.cli"]  # the real command line, run by this interpreter
PLUGINS = Path(__file__).resolve().parent.parent / "tests" / "plugins"  # fault-injecting test backends (entry points)


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


def stop_foreground(mnt: Path, proc: subprocess.Popen[bytes], timeout: float = 20.0) -> None:
    """Unmount, then reap the foreground daemon (killed if it lingers)."""
    try:
        unmount(mnt)
    finally:
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@dataclass(eq=False)
class Foreground:
    """A tmemfs that `foreground()` runs as a child, and what its end may show without being an error."""

    src: Path
    mnt: Path
    proc: subprocess.Popen[bytes]
    log: Path
    killed: bool = False  # killed on purpose: its exit status is no error
    faults_expected: bool = False  # its backend fails on purpose: a Traceback in its log is no error

    def stats(self) -> dict[str, object]:
        result: dict[str, object] = json.loads((self.mnt / ".tmemfs" / "stats.json").read_text())
        return result

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
