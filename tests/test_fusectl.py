"""The kernel's limit on asynchronous requests (max_background) raised to max_requests through
fusectl: found from mountinfo without touching the mount, set on a real mount, and used."""

from __future__ import annotations

import os
import subprocess
import tempfile
from pathlib import Path

import pytest

from fusefs.fusectl import CONNECTIONS, KERNEL_MAX_BACKGROUND, connection_id, raise_max_background
from tests.conftest import MountFactory, on_memory_filesystem

MOUNTINFO = """\
22 1 254:0 / / rw,relatime shared:1 - ext4 /dev/vda rw
40 22 0:40 / /tmp/a\\040b rw,nosuid,nodev shared:20 - fuse.tmemfs /src rw,user_id=0,group_id=0
41 40 0:44 / /tmp/a\\040b rw,nosuid,nodev shared:21 - fuse.tmemfs /src2 rw,user_id=0,group_id=0
42 22 259:3 / /data rw - xfs /dev/nvme0n1p3 rw
"""


def test_connection_id_is_the_kernels_dev_t_of_the_mount_on_top(tmp_path: Path) -> None:
    info = tmp_path / "mountinfo"
    info.write_text(MOUNTINFO)
    assert connection_id("/tmp/a b", str(info)) == 44  # the later mount is on top; major 0
    assert connection_id("/data", str(info)) == 259 << 20 | 3
    assert connection_id("/nowhere", str(info)) is None
    assert connection_id("/data", str(tmp_path / "missing")) is None


def _kernel_value(mnt: Path, name: str) -> int:
    """The connection's value in fusectl, mounted or not (then in a mount namespace of the test's own)."""
    path = Path(CONNECTIONS) / str(os.stat(mnt).st_dev) / name
    if os.path.ismount(CONNECTIONS):
        return int(path.read_text())
    script = f"mount -t fusectl fusectl {CONNECTIONS} && cat {path}"
    return int(subprocess.run(["unshare", "--mount", "sh", "-c", script], check=True, capture_output=True,
                              text=True).stdout)


@pytest.mark.parametrize(("options", "expected"), [("", 16), (",max_requests=32", 32), (",max_requests=1", 12)])
def test_max_background_follows_max_requests(mount_factory: MountFactory, options: str, expected: int) -> None:
    """Never below the kernel's own 12; congestion_threshold at the kernel's 3/4."""
    with mount_factory("cleancache=none" + options) as m:
        assert m.stats()["fuse.max_background"] == expected
        assert _kernel_value(m.mnt, "max_background") == expected
        assert _kernel_value(m.mnt, "congestion_threshold") == expected * 3 // 4


def test_a_libaio_qd16_reader_has_16_requests_in_tmemfs_at_once(mount_factory: MountFactory) -> None:
    """With the kernel's 12, a QD16 reader of an O_DIRECT file never had more than 12 of its
    reads in tmemfs, whatever max_requests said."""
    with tempfile.TemporaryDirectory(dir="/var/tmp") as src:  # on disk: reads of tmpfs never wait
        if on_memory_filesystem(src):
            pytest.skip("/var/tmp is in memory here: no read of SRC would wait")
        (Path(src) / "f").write_bytes(os.urandom(16 << 20))
        with mount_factory("cleancache=none,backing_io=direct,cache_size=1M", src=Path(src)) as m:
            m.control("reset_stats")
            subprocess.run(["fio", "--name=qd16", f"--filename={m.mnt / 'f'}", "--rw=randread", "--bs=4k",
                            "--ioengine=libaio", "--iodepth=16", "--direct=1", "--number_ios=4000",
                            "--output-format=terse"], check=True, capture_output=True, timeout=120)
            stats = m.stats()
        assert stats["fuse.peak_in_flight"] > KERNEL_MAX_BACKGROUND
        assert stats["fuse.peak_in_flight"] <= 16  # max_requests


def test_the_limit_is_written_and_read_back_and_a_refusal_keeps_the_kernels(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """(A stand-in for fusectl: "/" is in every mountinfo.) A connection fusectl does not show,
    or files it will not let us write (not root), leave the kernel's 12, and nothing raises."""
    conn = connection_id("/")
    assert conn is not None
    monkeypatch.setattr("fusefs.fusectl.CONNECTIONS", str(tmp_path))
    monkeypatch.setattr("os.path.ismount", lambda path: path == str(tmp_path))  # (a stand-in, mounted)
    assert raise_max_background("/", 16) == KERNEL_MAX_BACKGROUND  # no such connection
    directory = tmp_path / str(conn)
    directory.mkdir()
    (directory / "max_background").write_text("12\n")
    (directory / "congestion_threshold").write_text("9\n")
    assert raise_max_background("/", 40) == 40
    assert (directory / "congestion_threshold").read_text() == "30\n"
    assert raise_max_background("/", 4) == KERNEL_MAX_BACKGROUND  # never lowered below the kernel's
    (directory / "max_background").write_text("12\n")  # a fresh mount, for a user who is not root:

    def refused(path: str, value: int) -> None:
        raise PermissionError(13, "Permission denied", path)

    monkeypatch.setattr("fusefs.fusectl._write", refused)
    assert raise_max_background("/", 64) == KERNEL_MAX_BACKGROUND


def test_where_nobody_mounted_fusectl_the_limit_is_raised_and_no_mount_is_left(
        mount_factory: MountFactory) -> None:
    """systemd mounts fusectl at boot; where nobody has, tmemfs sets the limit from a mount
    namespace of its own, and the machine's mounts stay as they were."""
    was_mounted = os.path.ismount(CONNECTIONS)
    if was_mounted:
        subprocess.run(["umount", CONNECTIONS], check=True)
    try:
        with mount_factory("cleancache=none,max_requests=24") as m:
            assert not os.path.ismount(CONNECTIONS)
            assert m.stats()["fuse.max_background"] == 24
            assert _kernel_value(m.mnt, "max_background") == 24
            assert _kernel_value(m.mnt, "congestion_threshold") == 18
    finally:  # as it was before the test
        if was_mounted and not os.path.ismount(CONNECTIONS):
            subprocess.run(["mount", "-t", "fusectl", "fusectl", CONNECTIONS], check=False)
        elif not was_mounted and os.path.ismount(CONNECTIONS):
            subprocess.run(["umount", CONNECTIONS], check=False)
