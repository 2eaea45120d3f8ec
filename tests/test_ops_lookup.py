"""Lookup and getattr through a real tmemfs mount, compared with SRC.

How these tests work, and their helpers: tests/opshelpers.py."""

from __future__ import annotations

import errno
import os
import stat
from typing import TYPE_CHECKING

import pytest

from tests.opshelpers import PAGE, attrs, errno_of, make_object, pattern

if TYPE_CHECKING:
    from tests.conftest import Mount

pytestmark = pytest.mark.mount


KINDS = ["file", "empty", "dir", "symlink", "fifo", "chardev"]


def test_getattr_matches_src(mnt: Mount) -> None:
    """lstat through the mount shows SRC's mode, links, owner, size, blocks, inode number
    and nanosecond times, for every kind of object."""
    for n, kind in enumerate(KINDS):
        make_object(kind, mnt.src / kind)
        os.utime(mnt.src / kind, ns=(1_111_111_111_123_456_789 + n, 1_222_222_222_987_654_321 - n),
                 follow_symlinks=False)
    os.link(mnt.src / "file", mnt.src / "file-2")
    for kind in KINDS:
        expected = attrs(os.lstat(mnt.src / kind))
        assert attrs(os.lstat(mnt.mnt / kind)) == expected, kind
        assert attrs(os.lstat(mnt.src / kind)) == expected, kind  # looking it up changed nothing
    assert os.lstat(mnt.mnt / "file").st_nlink == 2


def test_getattr_root_and_missing(mnt: Mount) -> None:
    os.chmod(mnt.mnt, 0o751)
    assert stat.S_IMODE(os.stat(mnt.src).st_mode) == 0o751
    here, there = os.stat(mnt.mnt), os.stat(mnt.src)
    assert (here.st_mode, here.st_uid, here.st_gid, here.st_nlink) == \
        (there.st_mode, there.st_uid, there.st_gid, there.st_nlink)
    assert errno_of(os.lstat, mnt.mnt / "missing") == errno.ENOENT
    assert errno_of(os.lstat, mnt.mnt / "missing" / "deeper") == errno.ENOENT
    (mnt.src / "file").touch()
    assert errno_of(os.lstat, mnt.mnt / "file" / "x") == errno.ENOTDIR


def test_getattr_of_open_unlinked_file(mnt: Mount) -> None:
    """fstat and read keep working on an open file whose name is gone."""
    data = pattern(3 * PAGE + 1)
    (mnt.mnt / "f").write_bytes(data)
    fd = os.open(mnt.mnt / "f", os.O_RDWR)
    try:
        assert os.pread(fd, PAGE, 0) == data[:PAGE]  # partly cached by tmemfs
        os.unlink(mnt.mnt / "f")
        assert not (mnt.src / "f").exists()
        assert os.fstat(fd).st_nlink == 0
        assert os.fstat(fd).st_size == len(data)
        assert os.pread(fd, len(data) + 10, 0) == data
        os.pwrite(fd, b"late", 1)
        assert os.pread(fd, 6, 0) == data[:1] + b"late" + data[5:6]
    finally:
        os.close(fd)
