"""The command line: bad input exits 2 with one line and mounts nothing; daemon mode;
mount -t fuse.tmemfs; control-file rules; SIGKILL leaves acknowledged writes in SRC."""

from __future__ import annotations

import errno
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest

from fusefs.options import OptionError, parse_options, parse_size
from tests.conftest import TMEMFS, mounted
from tools.mounting import is_mounted, unmount

BAD_OPTIONS = [
    "cleancache=nosuch",
    "cleancache=",
    "cache_size=lots",
    "cache_size=100",  # less than a page
    "cc_size=-1M",
    "attr_timeout=soon",
    "kernel_cache=yes",
    "backing_io=sideways",
    "pc_policy=random",
    "frobnicate",
    "max_read=4096",
    "allow_other=1",
    "poll_us=-5",
    "poll_us=fast",
    "poll_us=20000",  # over the 10 ms cap
    "cleancache=cluster,cc_dir=/nonexistent/pools",
]


def run_tmemfs(*args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*TMEMFS, *args], capture_output=True, text=True, timeout=timeout)


@pytest.mark.parametrize("option", BAD_OPTIONS)
def test_bad_option_exits_2_with_one_line(tmp_path: Path, option: str) -> None:
    (tmp_path / "src").mkdir()
    (tmp_path / "mnt").mkdir()
    result = run_tmemfs(str(tmp_path / "src"), str(tmp_path / "mnt"), "-o", option)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("tmemfs: ")
    assert option.split(",")[-1].split("=")[0] in lines[0]
    assert not is_mounted(tmp_path / "mnt")


def test_bad_paths_exit_2(tmp_path: Path) -> None:
    src, mnt = tmp_path / "src", tmp_path / "mnt"
    src.mkdir()
    mnt.mkdir()
    (tmp_path / "file").write_text("x")
    inside = src / "inner"
    inside.mkdir()
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "x").write_text("x")
    cases = {
        "no such directory": (str(tmp_path / "missing"), str(mnt)),
        "not a directory": (str(tmp_path / "file"), str(mnt)),
        "not empty": (str(src), str(busy)),
        "same directory": (str(src), str(src)),
        "inside SRC": (str(src), str(inside)),
    }
    for words, (a, b) in cases.items():
        result = run_tmemfs(a, b)
        assert result.returncode == 2, (words, result)
        assert words in result.stderr and len(result.stderr.strip().splitlines()) == 1
    result = run_tmemfs(str(src))
    assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1
    assert not is_mounted(mnt) and not is_mounted(inside)


def test_option_parser_maps_mount_options() -> None:
    config = parse_options(["rw,dev,suid,defaults,x-systemd.automount,nofail,_netdev",
                            "cache_size=1.5M,cc_size=2G,allow_other,fsname=x\\,y,noatime"])
    assert config.cache_size == 3 << 19 and config.cc_size == 2 << 30
    assert {"allow_other", "noatime", "fsname=x,y", "default_permissions"} <= config.fuse_options
    assert "rw" not in config.fuse_options and "defaults" not in config.fuse_options
    assert parse_size("s", "64k") == 65536 and parse_size("s", "1GiB") == 1 << 30
    with pytest.raises(OptionError):
        parse_size("s", "1X")


def test_help_and_version() -> None:
    result = run_tmemfs("--help")
    assert result.returncode == 0
    for section in ("NAME", "SYNOPSIS", "OPTIONS", "cache_size=", "cleancache=", "EXIT STATUS", "tmem"):
        assert section in result.stdout
    assert run_tmemfs("--version").stdout.startswith("tmemfs ")


def _daemon_pid(mnt: Path) -> int:
    import json

    return int(json.loads((mnt / ".tmemfs" / "stats.json").read_text())["fs.pid"])


def _wait_gone(pid: int) -> None:
    for _ in range(200):
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.05)
    raise AssertionError(f"tmemfs {pid} still running")


def test_daemon_mode_is_usable_when_the_command_returns(tmp_path: Path) -> None:
    src, mnt = tmp_path / "src", tmp_path / "mnt"
    src.mkdir()
    mnt.mkdir()
    (src / "f").write_text("hello")
    result = run_tmemfs(str(src), str(mnt), "-o", "cleancache=tmem")
    try:
        assert result.returncode == 0, result.stderr
        assert (mnt / "f").read_text() == "hello"  # no waiting: it is live already
        pid = _daemon_pid(mnt)
    finally:
        unmount(mnt)
    _wait_gone(pid)


def test_mount_t_fuse_tmemfs(tmp_path: Path) -> None:
    """mount(8) runs mount.fuse3, which runs `tmemfs SRC MNT -o rw,...` with the system PATH."""
    if not shutil.which("mount.fuse3") or not Path("/usr/local/bin/tmemfs").exists():
        pytest.skip("needs `make install` (the /usr/local/bin/tmemfs link)")
    src, mnt = tmp_path / "src", tmp_path / "mnt"
    src.mkdir()
    mnt.mkdir()
    (src / "f").write_text("via mount")
    result = subprocess.run(["mount", "-t", "fuse.tmemfs", str(src), str(mnt), "-o",
                             "cleancache=tmem,cache_size=8M,nodev,nosuid,x-test=1"],
                            capture_output=True, text=True, timeout=30)
    try:
        assert result.returncode == 0, result.stderr
        assert (mnt / "f").read_text() == "via mount"
        pid = _daemon_pid(mnt)
    finally:
        unmount(mnt)
    _wait_gone(pid)


def test_control_rejects_bad_commands_and_changes_nothing(mnt) -> None:
    (mnt.mnt / "f").write_bytes(b"z" * 8192)
    (mnt.mnt / "f").read_bytes()
    before = mnt.stats()["pagecache.pages"]
    for bad in (b"drop_caches\nbogus\n", b"\xff\xfe", b"\n", b"drop_caches extra"):
        fd = os.open(mnt.mnt / ".tmemfs" / "control", os.O_WRONLY)
        try:
            with pytest.raises(OSError) as info:
                os.write(fd, bad)
            assert info.value.errno == errno.EINVAL
        finally:
            os.close(fd)
    assert mnt.stats()["pagecache.pages"] == before > 0


def test_control_dir_permissions(world_dir: Path) -> None:
    """stats are readable by all; control is writable only by root or the mount owner."""
    (world_dir / "src").mkdir()
    with mounted(world_dir / "src", world_dir / "mnt", "cleancache=tmem,allow_other") as m:
        as_user = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]
        ok = subprocess.run([*as_user, "cat", str(m.mnt / ".tmemfs" / "stats")], capture_output=True)
        assert ok.returncode == 0 and b"succ_gets" in ok.stdout
        denied = subprocess.run([*as_user, "sh", "-c", f"echo flush > {m.mnt}/.tmemfs/control"],
                                capture_output=True, text=True)
        assert denied.returncode != 0 and "Permission denied" in denied.stderr
        assert "ls: " not in subprocess.run(["ls", "-a", str(m.mnt)], capture_output=True, text=True).stderr
        assert ".tmemfs" not in os.listdir(m.mnt)
        assert os.stat(m.mnt / ".tmemfs").st_mode & 0o777 == 0o555


def test_sigkill_keeps_acknowledged_writes(tmp_path: Path, mount_factory) -> None:
    data = os.urandom(256 * 1024)
    with mount_factory("cleancache=tmem,cache_size=64K") as m:
        fd = os.open(m.mnt / "f", os.O_WRONLY | os.O_CREAT, 0o644)
        os.write(fd, data)  # returned: it is in SRC (write-through)
        m.kill()
        with pytest.raises(OSError):  # the mount is dead: ENOTCONN
            os.close(fd)
        assert (m.src / "f").read_bytes() == data
    # the dead mount was cleaned up by the fixture; a re-mount works
    with mount_factory("cleancache=tmem") as m2:
        assert (m2.mnt / "f").read_bytes() == data


def test_sigterm_unmounts_cleanly(tmp_path: Path) -> None:
    src, mnt = tmp_path / "src", tmp_path / "mnt"
    src.mkdir()
    mnt.mkdir()
    proc = subprocess.Popen([*TMEMFS, str(src), str(mnt), "-f"], stderr=subprocess.PIPE)
    try:
        for _ in range(200):
            if is_mounted(mnt):
                break
            time.sleep(0.02)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 0
        assert not is_mounted(mnt)
    finally:
        if proc.poll() is None:
            proc.kill()
        unmount(mnt)
