"""Fixtures that mount tmemfs for real and always unmount, pass or fail."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from tools.mounting import stop_foreground, wait_live

TMEMFS = [sys.executable, "-m", "fusefs.cli"]
PLUGINS = Path(__file__).parent / "plugins"  # fault-injecting test backends (entry points)


class Mount:
    """A running tmemfs (foreground child process) on `mnt` over `src`."""

    def __init__(self, src: Path, mnt: Path, proc: subprocess.Popen[bytes], log: Path) -> None:
        self.src, self.mnt, self.proc, self.log = src, mnt, proc, log
        self.killed = False  # set by tests that kill the daemon on purpose
        self.faults_expected = False  # set by tests whose backend fails on purpose

    def kill(self) -> None:
        self.killed = True
        self.proc.kill()
        self.proc.wait(timeout=10)

    def stats(self) -> dict[str, object]:
        return json.loads((self.mnt / ".tmemfs" / "stats.json").read_text())

    def control(self, command: str) -> None:
        (self.mnt / ".tmemfs" / "control").write_text(command + "\n")

    def counters(self, *names: str) -> dict[str, object]:
        stats = self.stats()
        return {n: stats[n] for n in names}


@contextmanager
def mounted(src: Path, mnt: Path, options: str = "", extra_args: tuple[str, ...] = (),
            plugins: bool = False, env: dict[str, str] | None = None) -> Iterator[Mount]:
    """Mount in the foreground, wait until it answers, and unmount in a finally.

    With `plugins`, the test backends in tests/plugins are installed (on PYTHONPATH);
    `env` adds environment variables for the daemon.
    """
    mnt.mkdir(parents=True, exist_ok=True)
    log = mnt.parent / f"{mnt.name}.log"
    args = [*TMEMFS, str(src), str(mnt), "-f", *extra_args]
    if options:
        args += ["-o", options]
    with open(log, "wb") as log_file:
        daemon_env = {**os.environ, **(env or {})}
        if plugins:
            daemon_env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(PLUGINS), daemon_env.get("PYTHONPATH")]))
        proc = subprocess.Popen(args, stdout=log_file, stderr=subprocess.STDOUT, env=daemon_env)
    try:
        wait_live(mnt, proc, log)
        mount = Mount(src, mnt, proc, log)
        yield mount
    finally:
        stop_foreground(mnt, proc)
    if proc.returncode not in (0, None) and not mount.killed:
        raise RuntimeError(f"tmemfs exited with {proc.returncode}: {log.read_text()}")
    text = log.read_text()
    if "internal error" in text or ("Traceback" in text and not mount.faults_expected):
        raise RuntimeError(f"tmemfs logged an error:\n{text}")


@pytest.fixture
def src(tmp_path: Path) -> Path:
    path = tmp_path / "src"
    path.mkdir()
    return path


@pytest.fixture
def mount_factory(tmp_path: Path) -> Iterator[object]:
    """mount_factory(options="...") -> context manager yielding a Mount of tmp_path/src."""
    counter = iter(range(1000))

    def factory(options: str = "", src: Path | None = None, extra_args: tuple[str, ...] = (),  # type: ignore[no-untyped-def]
                plugins: bool = False, env: dict[str, str] | None = None):
        source = src or tmp_path / "src"
        source.mkdir(exist_ok=True)
        return mounted(source, tmp_path / f"mnt{next(counter)}", options, extra_args, plugins, env)

    yield factory


@pytest.fixture
def world_dir() -> Iterator[Path]:
    """A 0755 directory under /tmp: other users can reach mounts made in it
    (pytest's own tmp_path lives under a 0700 directory)."""
    path = Path(tempfile.mkdtemp(prefix="tmemfs-test-", dir="/tmp"))
    path.chmod(0o755)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def mnt(src: Path, tmp_path: Path) -> Iterator[Mount]:
    """A default tmemfs mount (cleancache=tmem) of `src`."""
    with mounted(src, tmp_path / "mnt", "cleancache=tmem") as m:
        yield m


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Belt and braces: nothing this session mounted may stay mounted after it."""
    roots = [str(session.config._tmp_path_factory.getbasetemp()), "/tmp/tmemfs-test-"]  # type: ignore[attr-defined]
    with open("/proc/self/mountinfo") as f:
        leftovers = [line.split()[4] for line in f
                     if "fuse.tmemfs" in line and any(line.split()[4].startswith(r) for r in roots)]
    for path in leftovers:
        subprocess.run(["fusermount3", "-u", "-z", path], capture_output=True)
    if leftovers:
        print(f"\nWARNING: unmounted leftover tmemfs mounts: {leftovers}", file=sys.stderr)
