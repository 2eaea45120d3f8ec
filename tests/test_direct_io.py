"""A caller's O_DIRECT reaches SRC: its aligned writes go around the host page cache, as
they would on SRC itself, so a large direct writer does not leave SRC's page cache full of
dirty pages that its fsync then flushes while every reader of the disk waits."""

from __future__ import annotations

import mmap
import os
import subprocess
from pathlib import Path

import pytest

PAGE = 4096


def resident_bytes(path: Path) -> int:
    """How much of `path` the host page cache holds (util-linux fincore)."""
    out = subprocess.run(["fincore", "--bytes", "--noheadings", "--output", "RES", str(path)],
                         check=True, capture_output=True, text=True).stdout
    return int(out.strip())


def drop_host_cache(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def direct_write(path: Path, data: bytes, offset: int = 0, flags: int = os.O_WRONLY) -> None:
    buf = mmap.mmap(-1, len(data))
    buf[:] = data
    fd = os.open(path, flags | os.O_DIRECT)
    try:
        assert os.pwrite(fd, buf, offset) == len(data)
    finally:
        os.close(fd)


@pytest.fixture(params=["cleancache=none", "cleancache=zcache,backing_io=direct"])
def options(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def test_aligned_direct_writes_go_around_the_host_page_cache(src: Path, mount_factory, options: str) -> None:  # type: ignore[no-untyped-def]
    old = os.urandom(64 * PAGE)
    (src / "f").write_bytes(old)
    new = os.urandom(16 * PAGE)
    with mount_factory(options) as m:
        assert (m.mnt / "f").read_bytes() == old  # cached in tmemfs, and the write must update it
        drop_host_cache(src / "f")
        direct_write(m.mnt / "f", new, 8 * PAGE)
        assert resident_bytes(src / "f") == 0
        expect = old[: 8 * PAGE] + new + old[24 * PAGE :]
        assert (m.mnt / "f").read_bytes() == expect
    assert (src / "f").read_bytes() == expect


def test_a_buffered_writer_still_goes_through_the_host_page_cache(src: Path, mount_factory) -> None:  # type: ignore[no-untyped-def]
    """What decides is the caller's O_DIRECT, not the mount."""
    with mount_factory("cleancache=none") as m:
        (m.mnt / "f").write_bytes(os.urandom(16 * PAGE))
        assert resident_bytes(src / "f") == 16 * PAGE


def test_unaligned_writes_on_a_direct_descriptor_land_right(src: Path, mount_factory) -> None:  # type: ignore[no-untyped-def]
    """FUSE's direct_io takes any offset and length; SRC's O_DIRECT does not: those writes are
    buffered, and every byte lands where it was written, mixed with aligned ones."""
    (src / "f").write_bytes(b"." * 8 * PAGE)
    with mount_factory("cleancache=tmem") as m:
        fd = os.open(m.mnt / "f", os.O_RDWR | os.O_DIRECT)
        try:
            assert os.pwrite(fd, b"odd", 4097) == 3
            aligned = mmap.mmap(-1, PAGE)
            aligned[:] = b"A" * PAGE
            assert os.pwrite(fd, aligned, 2 * PAGE) == PAGE
            assert os.pwrite(fd, b"tail-xyz", 8 * PAGE - 3) == 8
        finally:
            os.close(fd)
        expect = bytearray(b"." * 8 * PAGE)
        expect[4097:4100] = b"odd"
        expect[2 * PAGE : 3 * PAGE] = b"A" * PAGE
        expect[8 * PAGE - 3 :] = b"tail-xyz"
        assert (m.mnt / "f").read_bytes() == bytes(expect)
    assert (src / "f").read_bytes() == bytes(expect)
