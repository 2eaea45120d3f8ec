"""The control directory (.tmemfs) through a real tmemfs mount: it can be neither removed nor replaced.

How these tests work, and their helpers: tests/opshelpers.py."""

from __future__ import annotations

import errno
import os
from typing import TYPE_CHECKING

import pytest

from tests.opshelpers import RENAME_EXCHANGE, answers, errno_of, renameat2

if TYPE_CHECKING:
    from tests.conftest import Mount

pytestmark = pytest.mark.mount


def test_control_dir_cannot_be_removed_or_replaced(mnt: Mount) -> None:
    (mnt.src / ".tmemfs").mkdir()  # shadowed by the control directory
    (mnt.mnt / "dir").mkdir()
    (mnt.mnt / "file").touch()
    ctl = mnt.mnt / ".tmemfs"
    assert errno_of(os.rmdir, ctl) == errno.EPERM
    assert errno_of(os.unlink, ctl) == errno.EISDIR  # the kernel refuses before asking
    assert errno_of(os.rename, ctl, mnt.mnt / "elsewhere") == errno.EPERM
    assert errno_of(os.rename, mnt.mnt / "dir", ctl) == errno.EPERM
    assert errno_of(renameat2, mnt.mnt / "dir", ctl, RENAME_EXCHANGE) == errno.EPERM
    assert errno_of(os.mkdir, ctl) == errno.EEXIST
    os.mkdir(mnt.mnt / "dir" / ".tmemfs")  # only the root's name is taken
    (mnt.mnt / "dir" / ".tmemfs" / "x").write_bytes(b"ordinary")
    assert os.listdir(mnt.mnt / "dir") == [".tmemfs"]
    assert (mnt.src / "dir" / ".tmemfs" / "x").read_bytes() == b"ordinary"
    assert errno_of(os.symlink, "x", ctl) == errno.EEXIST
    for name in ("stats", "stats.json", "control"):
        assert errno_of(os.unlink, ctl / name) == errno.EPERM
        assert errno_of(os.rename, ctl / name, mnt.mnt / "stolen") == errno.EPERM
        assert errno_of(os.rename, mnt.mnt / "file", ctl / name) == errno.EPERM
    assert errno_of(os.open, ctl / "new", os.O_CREAT | os.O_WRONLY, 0o644) == errno.EPERM
    assert errno_of(os.mkdir, ctl / "new") == errno.EPERM
    assert errno_of(os.link, mnt.mnt / "file", ctl / "new") == errno.EPERM
    assert errno_of(os.link, ctl / "stats", mnt.mnt / "new") == errno.EPERM
    assert errno_of(os.chmod, ctl / "stats", 0o666) == errno.EPERM
    assert sorted(os.listdir(ctl)) == ["control", "stats", "stats.json"]
    assert (mnt.src / ".tmemfs").is_dir()
    assert sorted(os.listdir(mnt.src)) == [".tmemfs", "dir", "file"]
    answers(mnt)
