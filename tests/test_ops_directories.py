"""Directories (readdir, mkdir, rmdir) through a real tmemfs mount, compared with SRC.

How these tests work, and their helpers: tests/opshelpers.py."""

from __future__ import annotations

import errno
import os
import stat
import subprocess
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from tests.opshelpers import errno_of, make_object

if TYPE_CHECKING:
    from tests.conftest import Mount

pytestmark = pytest.mark.mount


def test_readdir_matches_src(mnt: Mount) -> None:
    """Names and types equal SRC's; SRC's own `.tmemfs` is shadowed and not listed."""
    for kind in ("file", "empty", "dir", "symlink", "fifo", "chardev"):
        make_object(kind, mnt.src / kind)
    (mnt.src / ".hidden").touch()
    (mnt.src / ".tmemfs").mkdir()
    (mnt.src / ".tmemfs" / "src-file").touch()
    want = {e.name: (e.inode(), e.is_dir(follow_symlinks=False), e.is_symlink())
            for e in os.scandir(mnt.src) if e.name != ".tmemfs"}
    got = {e.name: (e.inode(), e.is_dir(follow_symlinks=False), e.is_symlink()) for e in os.scandir(mnt.mnt)}
    assert got == want
    assert len(got) == 7
    assert sorted(os.listdir(mnt.mnt / "dir")) == sorted(os.listdir(mnt.src / "dir")) == ["sub"]


def test_readdir_lists_dot_entries_like_src(mnt: Mount) -> None:
    """A C-level readdir (ls -a) shows `.` and `..` as SRC's does, with the mount's inode numbers."""
    (mnt.mnt / "dir" / "sub").mkdir(parents=True)
    (mnt.mnt / "dir" / "f").touch()

    def ls(path: Path) -> dict[str, int]:
        out = subprocess.run(["ls", "-a1if", str(path)], capture_output=True, text=True, check=True).stdout
        return {name: int(ino) for ino, name in (line.split(None, 1) for line in out.splitlines())}

    assert sorted(ls(mnt.mnt)) == sorted(set(ls(mnt.src)) - {".tmemfs"}) == [".", "..", "dir"]
    listed = ls(mnt.mnt / "dir")
    assert sorted(listed) == sorted(ls(mnt.src / "dir")) == [".", "..", "f", "sub"]
    assert listed["."] == os.stat(mnt.mnt / "dir").st_ino == os.stat(mnt.src / "dir").st_ino
    assert listed[".."] == os.stat(mnt.mnt).st_ino
    assert ls(mnt.mnt / "dir" / "sub")[".."] == os.stat(mnt.src / "dir").st_ino
    assert sorted(os.listdir(mnt.mnt / "dir")) == ["f", "sub"]


def test_readdir_2000_entries(mnt: Mount) -> None:
    (mnt.mnt / "big").mkdir()
    names = {f"entry-{n:05d}-{'x' * (n % 40)}" for n in range(2000)}
    for name in names:
        os.close(os.open(mnt.mnt / "big" / name, os.O_CREAT | os.O_WRONLY, 0o644))
    assert set(os.listdir(mnt.src / "big")) == names
    listed = {e.name: e.inode() for e in os.scandir(mnt.mnt / "big")}
    assert len(listed) == 2000
    assert listed == {e.name: e.inode() for e in os.scandir(mnt.src / "big")}
    # a second pass (inodes now known) and a partially-read directory give the same
    assert set(os.listdir(mnt.mnt / "big")) == names
    with os.scandir(mnt.mnt / "big") as it:
        first = [next(it).name for _ in range(10)]
    assert set(first) <= names


def test_control_dir_hidden_but_statable(mnt: Mount) -> None:
    assert ".tmemfs" not in os.listdir(mnt.mnt)
    st = os.stat(mnt.mnt / ".tmemfs")
    assert stat.S_ISDIR(st.st_mode)
    assert sorted(os.listdir(mnt.mnt / ".tmemfs")) == ["control", "stats", "stats.json"]
    assert "fs.version" in mnt.stats()
    assert os.stat(mnt.mnt / ".tmemfs" / "..").st_ino == os.stat(mnt.mnt).st_ino
    assert not (mnt.src / ".tmemfs").exists()


def test_mkdir_mode(mnt: Mount, ref: Path, umask022: None) -> None:
    """mkdir honours the mode and the caller's umask exactly as a local mkdir does."""
    for mode in (0o777, 0o755, 0o700, 0o1777, 0o2755, 0o000):
        name = f"d{mode:o}"
        os.mkdir(mnt.mnt / name, mode)
        os.mkdir(ref / name, mode)
        want = os.stat(ref / name).st_mode
        assert os.stat(mnt.src / name).st_mode == want, name
        assert os.stat(mnt.mnt / name).st_mode == want, name
        assert os.stat(mnt.src / name).st_uid == 0


def test_mkdir_existing_and_rmdir(mnt: Mount) -> None:
    os.mkdir(mnt.mnt / "d")
    assert errno_of(os.mkdir, mnt.mnt / "d") == errno.EEXIST
    (mnt.mnt / "d" / "f").write_bytes(b"x")
    assert errno_of(os.rmdir, mnt.mnt / "d") == errno.ENOTEMPTY
    assert (mnt.src / "d" / "f").read_bytes() == b"x"
    os.unlink(mnt.mnt / "d" / "f")
    os.rmdir(mnt.mnt / "d")
    assert not (mnt.src / "d").exists()
    assert not (mnt.mnt / "d").exists()
    assert errno_of(os.rmdir, mnt.mnt / "d") == errno.ENOENT
    (mnt.mnt / "f").touch()
    assert errno_of(os.rmdir, mnt.mnt / "f") == errno.ENOTDIR
