"""rename, RENAME_NOREPLACE and RENAME_EXCHANGE through a real tmemfs mount, compared with SRC.

How these tests work, and their helpers: tests/opshelpers.py."""

from __future__ import annotations

import errno
import os
from typing import TYPE_CHECKING

import pytest

from tests.opshelpers import PAGE, RENAME_EXCHANGE, RENAME_NOREPLACE, errno_of, pattern, renameat2

if TYPE_CHECKING:
    from tests.conftest import Mount

pytestmark = pytest.mark.mount


def test_rename_plain(mnt: Mount) -> None:
    (mnt.mnt / "a").write_bytes(b"A" * 5000)
    ino = os.stat(mnt.src / "a").st_ino
    (mnt.mnt / "d").mkdir()
    os.rename(mnt.mnt / "a", mnt.mnt / "d" / "b")
    assert not (mnt.src / "a").exists()
    assert (mnt.src / "d" / "b").read_bytes() == b"A" * 5000
    assert os.stat(mnt.mnt / "d" / "b").st_ino == ino
    os.rename(mnt.mnt / "d", mnt.mnt / "e")
    assert (mnt.mnt / "e" / "b").read_bytes() == b"A" * 5000
    assert sorted(os.listdir(mnt.src)) == ["e"]


def test_rename_over_existing(mnt: Mount) -> None:
    (mnt.mnt / "a").write_bytes(b"new contents")
    (mnt.mnt / "b").write_bytes(pattern(2 * PAGE))
    assert (mnt.mnt / "b").read_bytes() == pattern(2 * PAGE)  # cached by tmemfs
    old = os.open(mnt.mnt / "b", os.O_RDONLY)
    try:
        os.rename(mnt.mnt / "a", mnt.mnt / "b")
        assert (mnt.src / "b").read_bytes() == b"new contents"
        assert (mnt.mnt / "b").read_bytes() == b"new contents"
        assert os.pread(old, 3 * PAGE, 0) == pattern(2 * PAGE)  # the replaced file, still open
    finally:
        os.close(old)
    assert not (mnt.mnt / "a").exists()
    (mnt.mnt / "full").mkdir()
    (mnt.mnt / "full" / "x").touch()
    (mnt.mnt / "empty").mkdir()
    assert errno_of(os.rename, mnt.mnt / "empty", mnt.mnt / "full") == errno.ENOTEMPTY
    assert errno_of(os.rename, mnt.mnt / "b", mnt.mnt / "empty") == errno.EISDIR
    os.rename(mnt.mnt / "full", mnt.mnt / "empty")
    assert os.listdir(mnt.src / "empty") == ["x"]
    # rename onto another hard link of the same file is a no-op
    os.link(mnt.mnt / "b", mnt.mnt / "b2")
    os.rename(mnt.mnt / "b", mnt.mnt / "b2")
    assert (mnt.mnt / "b2").read_bytes() == b"new contents"


def test_rename_noreplace(mnt: Mount) -> None:
    (mnt.mnt / "a").write_bytes(b"a")
    (mnt.mnt / "b").write_bytes(b"b")
    assert errno_of(renameat2, mnt.mnt / "a", mnt.mnt / "b", RENAME_NOREPLACE) == errno.EEXIST
    assert (mnt.src / "a").read_bytes() == b"a"
    assert (mnt.src / "b").read_bytes() == b"b"
    renameat2(mnt.mnt / "a", mnt.mnt / "c", RENAME_NOREPLACE)
    assert (mnt.src / "c").read_bytes() == b"a"
    assert not (mnt.src / "a").exists()


def test_rename_exchange(mnt: Mount) -> None:
    one, two = pattern(PAGE + 10, 1), pattern(3 * PAGE, 2)
    (mnt.mnt / "a").write_bytes(one)
    (mnt.mnt / "d").mkdir()
    (mnt.mnt / "d" / "b").write_bytes(two)
    assert (mnt.mnt / "a").read_bytes() == one and (mnt.mnt / "d" / "b").read_bytes() == two
    renameat2(mnt.mnt / "a", mnt.mnt / "d" / "b", RENAME_EXCHANGE)
    assert (mnt.src / "a").read_bytes() == two
    assert (mnt.src / "d" / "b").read_bytes() == one
    assert (mnt.mnt / "a").read_bytes() == two
    assert (mnt.mnt / "d" / "b").read_bytes() == one
    # a file and a directory swap too
    renameat2(mnt.mnt / "a", mnt.mnt / "d", RENAME_EXCHANGE)
    assert (mnt.src / "a" / "b").read_bytes() == one
    assert (mnt.src / "d").read_bytes() == two
    assert errno_of(renameat2, mnt.mnt / "d", mnt.mnt / "missing", RENAME_EXCHANGE) == errno.ENOENT
