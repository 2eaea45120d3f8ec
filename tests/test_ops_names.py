"""Names (NAME_MAX, every byte) and trees deeper than PATH_MAX through a real tmemfs mount, compared with SRC.

How these tests work, and their helpers: tests/opshelpers.py."""

from __future__ import annotations

import errno
import os
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from tests.opshelpers import answers, errno_of

if TYPE_CHECKING:
    from tests.conftest import Mount

pytestmark = pytest.mark.mount


def test_name_max(mnt: Mount) -> None:
    longest, too_long = "n" * 255, "n" * 256
    (mnt.mnt / longest).write_bytes(b"255")
    assert (mnt.src / longest).read_bytes() == b"255"
    assert longest in os.listdir(mnt.mnt)
    os.mkdir(mnt.mnt / ("d" * 255))
    os.symlink(longest, mnt.mnt / ("s" * 255))
    assert os.readlink(mnt.mnt / ("s" * 255)) == longest
    os.rename(mnt.mnt / longest, mnt.mnt / ("r" * 255))
    assert (mnt.src / ("r" * 255)).exists()
    assert errno_of(os.open, mnt.mnt / too_long, os.O_CREAT | os.O_WRONLY, 0o644) == errno.ENAMETOOLONG
    assert errno_of(os.mkdir, mnt.mnt / too_long) == errno.ENAMETOOLONG
    assert errno_of(os.stat, mnt.mnt / too_long) == errno.ENAMETOOLONG
    assert errno_of(os.symlink, "x", mnt.mnt / too_long) == errno.ENAMETOOLONG
    assert errno_of(os.rename, mnt.mnt / ("r" * 255), mnt.mnt / too_long) == errno.ENAMETOOLONG
    assert len(os.listdir(mnt.src)) == 3


def test_every_byte_in_names(mnt: Mount) -> None:
    """Names are bytes: every value 1..255 except '/' passes through unchanged."""
    everything = bytes(b for b in range(1, 256) if b != ord("/"))
    names = {everything, b"\xff\xfe not utf-8", b"-" + everything[:200]}
    names |= {bytes([b]) for b in everything if b != ord(".")}
    names |= {b"." + bytes([b]) + b"." for b in everything}
    mnt_b, src_b = os.fsencode(mnt.mnt), os.fsencode(mnt.src)
    for name in names:
        fd = os.open(mnt_b + b"/" + name, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        os.write(fd, name)
        os.close(fd)
    assert set(os.listdir(src_b)) == names
    assert set(os.listdir(mnt_b)) == names
    for name in names:
        with open(src_b + b"/" + name, "rb") as f:
            assert f.read() == name
        assert os.stat(mnt_b + b"/" + name).st_ino == os.stat(src_b + b"/" + name).st_ino
    os.mkdir(mnt_b + b"/" + everything[:100])
    os.rename(mnt_b + b"/" + everything, mnt_b + b"/" + everything[:100] + b"/" + everything[::-1])
    with open(src_b + b"/" + everything[:100] + b"/" + everything[::-1], "rb") as f:
        assert f.read() == everything


def _walk_fds(top: Path, names: list[str]) -> int:
    """Open the directory top/names[0]/names[1]/... one level at a time; returns its fd."""
    fd = os.open(top, os.O_RDONLY | os.O_DIRECTORY)
    for name in names:
        try:
            nxt = os.open(name, os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
        finally:
            os.close(fd)
        fd = nxt
    return fd


def test_tree_deeper_than_path_max(mnt: Mount) -> None:
    """300 levels of 20-character names (6300 bytes of path) through the mount."""
    names = [f"level-{n:03d}-abcdefghij" for n in range(300)]
    assert all(len(n) == 20 for n in names)
    assert len("/".join(names)) > 4096
    cwd = os.getcwd()
    try:
        os.chdir(mnt.mnt)
        for name in names:
            os.mkdir(name)
            os.chdir(name)
        Path("bottom.txt").write_bytes(b"deep down")
        assert os.stat(".").st_ino != 0
        assert os.listdir(".") == ["bottom.txt"]
        os.chdir("..")
        assert Path(names[-1], "bottom.txt").read_bytes() == b"deep down"
    finally:
        os.chdir(cwd)
    fd = _walk_fds(mnt.src, names)
    try:
        rfd = os.open("bottom.txt", os.O_RDONLY, dir_fd=fd)
        try:
            assert os.read(rfd, 100) == b"deep down"
        finally:
            os.close(rfd)
        src_ino = os.stat("bottom.txt", dir_fd=fd).st_ino
    finally:
        os.close(fd)
    fd = _walk_fds(mnt.mnt, names)
    try:
        assert os.stat("bottom.txt", dir_fd=fd).st_ino == src_ino
        wfd = os.open("second.txt", os.O_CREAT | os.O_WRONLY, 0o600, dir_fd=fd)
        os.write(wfd, b"via dir fd")
        os.close(wfd)
        os.rename("second.txt", "third.txt", src_dir_fd=fd, dst_dir_fd=fd)
    finally:
        os.close(fd)
    fd = _walk_fds(mnt.src, names)
    try:
        assert sorted(os.listdir(fd)) == ["bottom.txt", "third.txt"]
    finally:
        os.close(fd)
    answers(mnt)
