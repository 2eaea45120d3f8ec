"""The command line: bad input exits 2 with one line and mounts nothing; daemon mode;
mount -t fuse.tmemfs; control-file rules; SIGKILL leaves acknowledged writes in SRC."""

from __future__ import annotations

import errno
import json
import os
import resource
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest

from backends.base import physical_memory
from fusefs.options import OptionError, parse_options, parse_size
from tests.conftest import TMEMFS, Mount, MountFactory, Stats, mounted
from tools.mounting import is_mounted, unmount

# option -> words its one line must say (besides the option's key)
BAD_OPTIONS = {
    "cleancache=nosuch": "unknown backend",
    "cleancache=": "needs a value",
    "cache_size=lots": "not a size",
    "cache_size=100": "at least one page",
    "cache_size=100T": "more than this machine's memory",
    "cache_size=99999999999999999999999": "too large",
    "cc_size=-1M": "not a size",
    "cc_size=0": "at least one page",
    "cc_size=4095": "at least one page",
    "attr_timeout=soon": "not a number",
    "kernel_cache=yes": "takes no value",
    "backing_io=sideways": "cached or direct",
    "pc_policy=random": "unknown policy",
    "frobnicate": "unknown option",
    "max_read=4096": "unknown option",
    "allow_other=1": "takes no value",
    "poll_us=-5": "whole number",
    "poll_us=fast": "whole number",
    "poll_us=20000": "from 0 to",  # over the 10 ms cap
    "cleancache=cluster,cc_dir=/nonexistent/pools": "cc_dir",
    "cleancache=tmem,zc_max=1024": "an option of cleancache=zcache, not of cleancache=tmem",
    "log=/nonexistent/x": "log=/nonexistent/x: No such file or directory",
    "trace=/nonexistent/x": "trace=/nonexistent/x: No such file or directory",
    "log_level=loud": "debug, info, warning, error",
}


def run_tmemfs(*args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*TMEMFS, *args], capture_output=True, text=True, timeout=timeout)


@pytest.mark.parametrize("option", BAD_OPTIONS)
def test_bad_option_exits_2_with_one_line(tmp_path: Path, option: str) -> None:
    (tmp_path / "src").mkdir()
    (tmp_path / "mnt").mkdir()
    result = run_tmemfs(str(tmp_path / "src"), str(tmp_path / "mnt"), "-o", option)
    assert result.returncode == 2, result
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("tmemfs: "), result.stderr
    assert option.split(",")[-1].split("=")[0] in lines[0]
    assert BAD_OPTIONS[option] in lines[0]
    assert not is_mounted(tmp_path / "mnt")


def test_sizes_are_rounded_down_to_pages_with_a_warning(tmp_path: Path) -> None:
    src, mnt = tmp_path / "src", tmp_path / "mnt"
    src.mkdir()
    mnt.mkdir()
    (src / "f").write_text("hello")
    result = run_tmemfs(str(src), str(mnt), "-o", f"cleancache=tmem,cache_size=10000,log={tmp_path / 'log'}")
    try:
        assert result.returncode == 0, result.stderr
        assert result.stderr.splitlines() == [
            "tmemfs: warning: cache_size=10000: rounded down to 8192 bytes (a whole number of 4096-byte pages)"]
        assert (mnt / "f").read_text() == "hello"
        assert _stats(mnt)["pagecache.capacity_pages"] == 2
        pid = _daemon_pid(mnt)
    finally:
        unmount(mnt)
    _wait_gone(pid)


def test_cache_size_the_kernel_will_not_map_exits_2(tmp_path: Path) -> None:
    """Within the machine's memory but beyond what mmap may have (here RLIMIT_AS): refused up front."""
    (tmp_path / "src").mkdir()
    (tmp_path / "mnt").mkdir()
    size = physical_memory() // 2 >> 30 << 30
    if size < 8 << 30:
        pytest.skip("needs 16G of memory to ask for more than a 4G address space yet less than the machine")

    def limit_address_space() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (4 << 30, 4 << 30))

    result = subprocess.run([*TMEMFS, str(tmp_path / "src"), str(tmp_path / "mnt"), "-o", f"cache_size={size}"],
                            capture_output=True, text=True, timeout=30, preexec_fn=limit_address_space)
    assert result.returncode == 2
    assert result.stderr.splitlines() == [f"tmemfs: cache_size={size}: cannot be allocated (Cannot allocate memory)"]
    assert not is_mounted(tmp_path / "mnt")


def test_cc_size_0_is_fine_without_a_backend(mount_factory: MountFactory) -> None:
    with mount_factory("cleancache=none,cc_size=0") as m:
        (m.src / "f").write_text("no backend")
        assert (m.mnt / "f").read_text() == "no backend"


def test_bad_paths_exit_2(tmp_path: Path) -> None:
    src, mnt = tmp_path / "src", tmp_path / "mnt"
    src.mkdir()
    mnt.mkdir()
    (tmp_path / "file").write_text("x")
    inside = src / "inner"
    inside.mkdir()
    cases = {
        "no such directory": (str(tmp_path / "missing"), str(mnt)),
        "not a directory": (str(tmp_path / "file"), str(mnt)),
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


def test_non_empty_mnt_mounts_with_a_warning(tmp_path: Path) -> None:
    """As libfuse 3: MNT's own files are hidden while mounted, and back afterwards."""
    src, mnt = tmp_path / "src", tmp_path / "mnt"
    src.mkdir()
    mnt.mkdir()
    (src / "f").write_text("from SRC")
    (mnt / "hidden").write_text("under the mount")
    result = run_tmemfs(str(src), str(mnt), "-o", f"cleancache=tmem,log={tmp_path / 'log'}")
    try:
        assert result.returncode == 0, result.stderr
        lines = result.stderr.splitlines()
        assert len(lines) == 1 and lines[0].startswith("tmemfs: warning: MNT ") and "not empty" in lines[0]
        assert sorted(os.listdir(mnt)) == ["f"]
        pid = _daemon_pid(mnt)
    finally:
        unmount(mnt)
    _wait_gone(pid)
    assert (mnt / "hidden").read_text() == "under the mount"


def test_already_mounted_mnt_has_its_own_message(mount_factory: MountFactory) -> None:
    with mount_factory("cleancache=tmem") as m:
        result = run_tmemfs(str(m.src), str(m.mnt), "-o", "cleancache=tmem")
        assert result.returncode == 2
        lines = result.stderr.splitlines()
        assert len(lines) == 1 and "already mounted (fuse.tmemfs " in lines[0] and str(m.mnt) in lines[0]
        assert (m.mnt / ".tmemfs" / "stats").exists()  # the first mount is untouched


def test_dead_mount_has_its_own_message(mount_factory: MountFactory) -> None:
    with mount_factory("cleancache=tmem") as m:
        m.kill()  # ENOTCONN from now on; the fixture's finally runs fusermount3 -u
        for args in ((str(m.src), str(m.mnt)), (str(m.mnt), str(m.src.parent / "other"))):
            result = run_tmemfs(*args)
            assert result.returncode == 2
            lines = result.stderr.splitlines()
            assert len(lines) == 1 and "a dead FUSE mount" in lines[0] and f"fusermount3 -u {m.mnt}" in lines[0]


def test_failed_mount_prints_libfuses_reason(tmp_path: Path) -> None:
    """Without CAP_SYS_ADMIN libfuse falls back to fusermount3, which cannot mount either and says
    why on the daemon's stderr: that line reaches the terminal."""
    if not shutil.which("setpriv"):
        pytest.skip("needs setpriv")
    src, mnt = tmp_path / "src", tmp_path / "mnt"
    src.mkdir()
    mnt.mkdir()
    no_admin = ["setpriv", "--bounding-set", "-sys_admin", "--inh-caps", "-sys_admin"]
    result = subprocess.run([*no_admin, *TMEMFS, str(src), str(mnt), "-o", f"cleancache=tmem,log={tmp_path / 'log'}"],
                            capture_output=True, text=True, timeout=30)
    try:
        assert result.returncode == 1
        assert result.stderr.splitlines() == [
            f"tmemfs: mounting {mnt} failed: fusermount3: mount failed: Operation not permitted"]
        assert "fusermount3: mount failed" in (tmp_path / "log").read_text()
    finally:
        unmount(mnt)


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
    for section in ("NAME", "SYNOPSIS", "OPTIONS", "cache_size=", "cleancache=", "log_level=", "SIGNALS",
                    "SIGHUP", "/var/log/tmemfs/", "FILES", "EXIT STATUS", "EXAMPLES", "tmem"):
        assert section in result.stdout
    assert run_tmemfs("--version").stdout.startswith("tmemfs ")


def _stats(mnt: Path) -> Stats:
    stats: Stats = json.loads((mnt / ".tmemfs" / "stats.json").read_text())
    return stats


def _daemon_pid(mnt: Path) -> int:
    return int(_stats(mnt)["fs.pid"])


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
    result = run_tmemfs(str(src), str(mnt), "-o", f"cleancache=tmem,log={tmp_path / 'log'}")
    try:
        assert result.returncode == 0, result.stderr
        assert result.stderr == ""  # mount(8) style: silent on success
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
                             f"cleancache=tmem,cache_size=8M,nodev,nosuid,x-test=1,log={tmp_path / 'log'}"],
                            capture_output=True, text=True, timeout=30)
    try:
        assert result.returncode == 0, result.stderr
        assert (mnt / "f").read_text() == "via mount"
        pid = _daemon_pid(mnt)
    finally:
        unmount(mnt)
    _wait_gone(pid)


def test_control_rejects_bad_commands_and_changes_nothing(mnt: Mount) -> None:
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


def test_sigkill_keeps_acknowledged_writes(tmp_path: Path, mount_factory: MountFactory) -> None:
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
