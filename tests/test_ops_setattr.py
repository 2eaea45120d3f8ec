"""setattr (chmod, chown, truncate, utimes) through a real tmemfs mount, compared with SRC.

How these tests work, and their helpers: tests/opshelpers.py."""

from __future__ import annotations

import ctypes
import os
import stat
import subprocess
import time
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from tests.opshelpers import AT_FDCWD, GROUP, OTHER_GROUP, USER, libc, make_object, pattern

if TYPE_CHECKING:
    from tests.conftest import Mount

pytestmark = pytest.mark.mount


def test_chmod(mnt: Mount) -> None:
    for kind in ("file", "dir", "fifo"):
        for mode in (0o600, 0o755, 0o4755, 0o2750, 0o1777, 0o000, 0o7777):
            path = f"{kind}-{mode:o}"
            make_object(kind, mnt.src / path)
            os.chmod(mnt.mnt / path, mode)
            assert stat.S_IMODE(os.stat(mnt.src / path).st_mode) == mode, path
            assert stat.S_IMODE(os.stat(mnt.mnt / path).st_mode) == mode, path


def test_chown(mnt: Mount) -> None:
    (mnt.src / "target").touch()
    for kind in ("file", "dir", "symlink", "fifo"):
        make_object(kind, mnt.src / kind)
        os.chown(mnt.src / kind, 0, 0, follow_symlinks=False)
        os.chown(mnt.mnt / kind, USER, GROUP, follow_symlinks=False)
        st = os.lstat(mnt.src / kind)
        assert (st.st_uid, st.st_gid) == (USER, GROUP), kind
        os.chown(mnt.mnt / kind, -1, OTHER_GROUP, follow_symlinks=False)
        st = os.lstat(mnt.src / kind)
        assert (st.st_uid, st.st_gid) == (USER, OTHER_GROUP), kind
        seen = os.lstat(mnt.mnt / kind)
        assert (seen.st_uid, seen.st_gid) == (USER, OTHER_GROUP), kind
    assert os.stat(mnt.src / "target").st_uid == 0


def test_chown_clears_setuid_like_src(mnt: Mount, ref: Path) -> None:
    for base in (mnt.mnt, ref):
        (base / "suid").touch()
        os.chmod(base / "suid", 0o6755)
        os.chown(base / "suid", USER, GROUP)
    assert os.stat(mnt.src / "suid").st_mode == os.stat(ref / "suid").st_mode


@pytest.mark.parametrize("how", ["truncate", "ftruncate"])
def test_truncate(mnt: Mount, how: str) -> None:
    """Grow and shrink; the mount's cached pages must not outlive the truncate."""
    data = pattern(9000)
    for size in (0, 100, 4096, 5000, 12345, 1 << 20):
        name = f"f{size}"
        (mnt.src / name).write_bytes(data)
        assert (mnt.mnt / name).read_bytes() == data  # fills tmemfs's page cache
        if how == "truncate":
            os.truncate(mnt.mnt / name, size)
        else:
            fd = os.open(mnt.mnt / name, os.O_RDWR)
            try:
                os.ftruncate(fd, size)
                assert os.fstat(fd).st_size == size
            finally:
                os.close(fd)
        expected = data[:size] + bytes(max(0, size - len(data)))
        assert os.stat(mnt.src / name).st_size == size
        assert (mnt.src / name).read_bytes() == expected, size
        assert (mnt.mnt / name).read_bytes() == expected, size
        assert os.stat(mnt.mnt / name).st_size == size


UTIMES = [
    (1_000_000_123, 2_000_000_456),
    (4_000_000_000_000_000_001, 3_999_999_999_999_999_999),  # after 2038
    (-123_456_789, -1_000_000_000_000_000_000),  # before 1970
    (0, 0),
]


def test_utime_explicit_ns(mnt: Mount, ref: Path) -> None:
    """os.utime(ns=) sets exactly those nanoseconds, on the link itself for a symlink."""
    for kind in ("file", "dir", "symlink"):
        for n, times in enumerate(UTIMES):
            name = f"{kind}{n}"
            make_object(kind, mnt.src / name)
            make_object(kind, ref / name)
            follow = kind != "symlink"
            os.utime(mnt.mnt / name, ns=times, follow_symlinks=follow)
            os.utime(ref / name, ns=times, follow_symlinks=follow)
            want = os.lstat(ref / name)
            got = os.lstat(mnt.src / name)
            assert (got.st_atime_ns, got.st_mtime_ns) == (want.st_atime_ns, want.st_mtime_ns), name
            assert got.st_mtime_ns == times[1], name
            seen = os.lstat(mnt.mnt / name)
            assert (seen.st_atime_ns, seen.st_mtime_ns) == (got.st_atime_ns, got.st_mtime_ns), name


OLD_A, OLD_M = 1_500_000_000_111_111_111, 1_600_000_000_222_222_222


def test_utime_now_and_omit(mnt: Mount) -> None:
    """UTIME_NOW sets the current time, UTIME_OMIT leaves the other time alone."""
    for how in ("touch -a", "touch -m", "utime None", "utime ns omit"):
        name = how.replace(" ", "_")
        (mnt.src / name).write_bytes(b"x")
        os.utime(mnt.src / name, ns=(OLD_A, OLD_M))
        before = time.time_ns() - 50_000_000  # coarse kernel clocks
        path = mnt.mnt / name
        if how.startswith("touch"):
            subprocess.run(["touch", how.split()[1], str(path)], check=True)
        elif how == "utime None":
            os.utime(path, times=None)
        else:  # utimensat with an explicit mtime and UTIME_OMIT for atime
            spec = (ctypes.c_long * 4)(0, (1 << 30) - 2, 1_700_000_000, 5)
            assert libc.utimensat(AT_FDCWD, os.fsencode(path), spec, 0) == 0, os.strerror(ctypes.get_errno())
        after = time.time_ns() + 50_000_000
        st = os.stat(mnt.src / name)
        if how == "touch -a":
            assert before <= st.st_atime_ns <= after
            assert st.st_mtime_ns == OLD_M
        elif how == "touch -m":
            assert st.st_atime_ns == OLD_A
            assert before <= st.st_mtime_ns <= after
        elif how == "utime None":
            assert before <= st.st_atime_ns <= after
            assert before <= st.st_mtime_ns <= after
        else:
            assert st.st_atime_ns == OLD_A
            assert st.st_mtime_ns == 1_700_000_000_000_000_005
        seen = os.stat(path)
        assert (seen.st_atime_ns, seen.st_mtime_ns) == (st.st_atime_ns, st.st_mtime_ns), how
