"""Logs are never lost: the file fallback without syslog, 0600 files, SIGHUP reopens the log,
-d / log_level=debug log one line per request, and SIGUSR1 writes the threads' stacks there."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from fusefs.logs import TEST_SYSLOG_ENV, default_log_file, mount_name
from tests.conftest import TMEMFS, MountFactory
from tools.mounting import stop_daemon, unmount

# A read as -d logs it: opcode, handle and its inode, offset, size, result, microseconds.
READ_LINE = re.compile(r"tmemfs\.requests: read fh=\d+ inode=\d+ off=4096 size=\d+: ok 4096 bytes \d+us$",
                       re.MULTILINE)


@contextmanager
def background(tmp_path: Path, options: str, env: dict[str, str] | None = None) -> Iterator[tuple[Path, str]]:
    """A daemonized tmemfs of tmp_path/src on tmp_path/mnt (the mount's stderr), unmounted in a finally."""
    src, mnt = tmp_path / "src", tmp_path / "mnt"
    src.mkdir(exist_ok=True)
    mnt.mkdir(exist_ok=True)
    result = subprocess.run([*TMEMFS, str(src), str(mnt), "-o", options], capture_output=True, text=True,
                            timeout=30, env={**os.environ, **(env or {})})
    try:
        assert result.returncode == 0, result.stderr
        pid = int(json.loads((mnt / ".tmemfs" / "stats.json").read_text())["fs.pid"])
        yield mnt, result.stderr
    finally:
        unmount(mnt)
    stop_daemon(pid)


def wait_for(path: Path, text: str, times: int = 1) -> str:
    """The contents of `path` once they hold `text` `times` times (the daemon writes asynchronously)."""
    deadline = time.monotonic() + 20
    while True:
        content = path.read_text() if path.exists() else ""
        if content.count(text) >= times or time.monotonic() > deadline:
            return content
        time.sleep(0.02)


def test_without_syslog_the_log_goes_to_a_file_named_after_mnt(tmp_path: Path) -> None:
    mnt = tmp_path / "mnt"
    expected = Path(default_log_file(str(mnt)))
    assert expected.parent == Path("/var/log/tmemfs")  # the tests run as root
    try:
        with background(tmp_path, "cleancache=tmem", env={TEST_SYSLOG_ENV: "/nonexistent"}) as (_, stderr):
            assert stderr.splitlines() == [f"tmemfs: logging to {expected}"]
            assert "INFO tmemfs: mounted " in expected.read_text()
            assert os.stat(expected).st_mode & 0o777 == 0o600
            assert os.stat(expected.parent).st_mode & 0o777 == 0o700
        assert "unmounted" in wait_for(expected, "unmounted")
    finally:
        expected.unlink(missing_ok=True)


def test_log_file_names_per_user_and_mount_point() -> None:
    env = {"HOME": "/home/u"}
    assert default_log_file("/mnt/data", euid=0, env=env) == "/var/log/tmemfs/mnt-data.log"
    assert default_log_file("/mnt/data", euid=1000, env=env) == "/home/u/.local/state/tmemfs/mnt-data.log"
    assert default_log_file("/mnt/data", euid=1000, env={**env, "XDG_STATE_HOME": "/s"}) == "/s/tmemfs/mnt-data.log"
    names = {mount_name(p) for p in ("/mnt/a-b", "/mnt/a/b", "/mnt/a b", "/mnt/a\\x20b", "/")}
    assert len(names) == 5 and "mnt-a-b" in names and all("/" not in n for n in names)


def test_log_and_trace_files_are_0600(tmp_path: Path) -> None:
    log, trace = tmp_path / "log", tmp_path / "trace"
    with background(tmp_path, f"cleancache=tmem,log={log},trace={trace}") as (mnt, stderr):
        assert stderr == ""  # log= was asked for: nothing to say
        (mnt.parent / "src" / "f").write_bytes(b"x" * 8192)
        assert (mnt / "f").read_bytes() == b"x" * 8192
    for path in (log, trace):
        assert os.stat(path).st_mode & 0o777 == 0o600, path
    assert "miss" in trace.read_text()


def test_sighup_reopens_the_log(tmp_path: Path) -> None:
    log = tmp_path / "log"
    with background(tmp_path, f"cleancache=tmem,log={log}") as (mnt, _):
        (mnt.parent / "src" / "f").write_text("still here")
        pid = int(json.loads((mnt / ".tmemfs" / "stats.json").read_text())["fs.pid"])
        log.rename(tmp_path / "log.1")  # as logrotate does
        os.kill(pid, signal.SIGHUP)
        assert "log file reopened" in wait_for(log, "log file reopened")
        assert os.stat(log).st_mode & 0o777 == 0o600
        assert (mnt / "f").read_text() == "still here"  # SIGHUP did not unmount
    assert "unmounted" in wait_for(log, "unmounted")
    assert "mounted" in (tmp_path / "log.1").read_text() and "unmounted" not in (tmp_path / "log.1").read_text()


STACK_HEADER = "thread 0x"  # faulthandler's header of each thread's stack: "Current thread 0x..." or "Thread 0x..."


def test_sigusr1_writes_every_threads_stack_to_the_log_and_follows_a_reopen(tmp_path: Path) -> None:
    log, rotated = tmp_path / "log", tmp_path / "log.1"
    with background(tmp_path, f"cleancache=tmem,log={log}") as (mnt, _):
        (mnt.parent / "src" / "f").write_text("still here")
        pid = int(json.loads((mnt / ".tmemfs" / "stats.json").read_text())["fs.pid"])
        os.kill(pid, signal.SIGUSR1)
        dump = wait_for(log, "most recent call first").lower()
        assert STACK_HEADER in dump and "trio" in dump  # the loop's thread, where it waits
        assert (mnt / "f").read_text() == "still here"  # the signal did not end the daemon
        log.rename(rotated)
        os.kill(pid, signal.SIGHUP)
        wait_for(log, "log file reopened")
        before = rotated.read_text()
        os.kill(pid, signal.SIGUSR1)
        assert STACK_HEADER in wait_for(log, "most recent call first").lower()  # the new file, not the old fd
        assert rotated.read_text() == before
        assert (mnt / "f").read_text() == "still here"


def test_sigusr1_in_the_foreground_writes_the_stacks_to_stderr(mount_factory: MountFactory) -> None:
    with mount_factory("cleancache=none") as m:
        os.kill(m.proc.pid, signal.SIGUSR1)
        assert STACK_HEADER in wait_for(m.log, "most recent call first").lower()
        assert m.stats()["fs.pid"] == m.proc.pid


def test_sigusr1_is_ignored_when_the_log_is_syslog(tmp_path: Path) -> None:
    syslog = tmp_path / "syslog.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as server:
        server.bind(str(syslog))
        with background(tmp_path, "cleancache=none", env={TEST_SYSLOG_ENV: str(syslog)}) as (mnt, _):
            pid = int(json.loads((mnt / ".tmemfs" / "stats.json").read_text())["fs.pid"])
            os.kill(pid, signal.SIGUSR1)
            time.sleep(0.2)
            assert json.loads((mnt / ".tmemfs" / "stats.json").read_text())["fs.pid"] == pid  # still serving


def _read_page_two(mnt: Path) -> None:
    (mnt.parent / "src" / "f").write_bytes(bytes(range(256)) * 64)
    with open(mnt / "f", "rb") as f:
        f.seek(4096)
        assert f.read(4096) == bytes(range(256)) * 16
    assert not (mnt / "missing").exists()


def test_log_level_debug_logs_requests_in_the_background(tmp_path: Path) -> None:
    log = tmp_path / "log"
    with background(tmp_path, f"cleancache=tmem,log={log},log_level=debug") as (mnt, _):
        _read_page_two(mnt)
        text = wait_for(log, "off=4096")
    assert READ_LINE.search(text), text
    assert re.search(r"lookup parent_inode=1: ENOENT \d+us$", text, re.MULTILINE), text


def test_the_request_log_shows_what_the_kernel_was_told(tmp_path: Path) -> None:
    """Sizes in attributes, handles, bytes read and written, and an append that landed elsewhere than the
    kernel's offset: what explains a stale size seen through the mount."""
    log = tmp_path / "log"
    src = tmp_path / "src"
    with background(tmp_path, f"cleancache=tmem,log={log},log_level=debug") as (mnt, _):
        (src / "f").write_bytes(b"a" * 16384)
        assert (mnt / "f").stat().st_size == 16384  # the kernel keeps that size for attr_timeout
        with open(src / "f", "ab") as f:
            f.write(b"b" * 100)  # behind the mount's back
        with open(mnt / "f", "ab") as f:
            assert f.write(b"c" * 10) == 10
        text = wait_for(log, "not at the kernel's")
    assert re.search(r"lookup parent_inode=1: ok ino=\d+ size=16384 \d+us$", text, re.MULTILINE), text
    assert re.search(r"open inode=\d+: ok fh=\d+ direct_io \d+us$", text, re.MULTILINE), text
    assert re.search(r"write fh=\d+ inode=\d+ off=16384 size=10: ok 10 \d+us$", text, re.MULTILINE), text
    assert re.search(r"write fh=\d+ inode=\d+: appended at 16484, not at the kernel's 16384$", text, re.MULTILINE), text
    assert (src / "f").read_bytes() == b"a" * 16384 + b"b" * 100 + b"c" * 10


def test_debug_flag_logs_requests(mount_factory: MountFactory) -> None:
    """Page-cache hits too: the read handler answers them without the wrapper the others have."""
    with mount_factory("cleancache=tmem", extra_args=("-d",)) as m:
        _read_page_two(m.mnt)
        with open(m.mnt / "f", "rb") as f:
            assert os.pread(f.fileno(), 4096, 4096) == bytes(range(256)) * 16
        assert m.stats()["pagecache.hits"] == 1
        text = wait_for(m.log, "off=4096", times=2)
    assert len(READ_LINE.findall(text)) == 2 == text.count(" off=4096 "), text  # one line per read


def test_log_level_warning_leaves_out_info_and_requests(tmp_path: Path) -> None:
    log = tmp_path / "log"
    with background(tmp_path, f"cleancache=tmem,log={log},log_level=warning") as (mnt, _):
        _read_page_two(mnt)
    assert log.read_text() == ""
