"""Mount points, seen and removed the same way by the tests, `make bench` and `make stress`."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from types import FrameType


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


def wait_live(mnt: Path, proc: subprocess.Popen[bytes], log: Path, timeout: float = 20.0) -> None:
    """Until a foreground tmemfs answers on `mnt`; RuntimeError with its log if it never does."""
    deadline = time.monotonic() + timeout
    while not (is_mounted(mnt) and (mnt / ".tmemfs" / "stats").exists()):
        if proc.poll() is not None:
            raise RuntimeError(f"tmemfs exited with {proc.returncode}: {log.read_text()}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"tmemfs did not come up: {log.read_text()}")
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
