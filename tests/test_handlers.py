"""Unit tests of the handlers driven in process (no mount): no exception reaches pyfuse3, on
the read handler's fast path (a page-cache hit, answered without `handler`'s wrapper) as on
every other path."""

from __future__ import annotations

import errno
import logging
import os
import stat
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
from pyfuse3 import FUSEError

from fusefs.cleancache import Cleancache
from fusefs.datapath import DataPath
from fusefs.inodes import Inode
from fusefs.operations import OpenFile, TmemOperations
from fusefs.options import MountConfig
from fusefs.pagecache import PageCache
from tests.unithelpers import PAGE

FH = 7


@asynccontextmanager
async def operations(tmp_path: Path) -> AsyncIterator[tuple[TmemOperations, bytes]]:
    """TmemOperations over tmp_path with a 4-page file open as handle FH, its pages cached."""
    data = os.urandom(4 * PAGE)
    (tmp_path / "f").write_bytes(data)
    fd = os.open(tmp_path / "f", os.O_RDONLY)
    root = os.open(tmp_path, os.O_PATH)
    try:
        cc = Cleancache(None)
        dp = DataPath(PageCache(8 * PAGE), cc, await cc.init_fs())
        cached, _ = await dp.open_file(b"f", fd)
        ops = TmemOperations(root, MountConfig(), dp, str(tmp_path))
        st = os.fstat(fd)
        node = Inode(2, fd, st.st_dev, st.st_ino, stat.S_IFREG)
        ops.handles[FH] = OpenFile(inode=node, fd=fd, read_fd=fd, cached=cached)
        assert await ops.read(FH, 0, len(data)) == data  # the pages are cached from here on
        yield ops, data
    finally:
        os.close(fd)
        os.close(root)


async def test_a_bug_on_the_read_fast_path_replies_eio_and_the_handler_goes_on(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    async with operations(tmp_path) as (ops, data):
        assert ops.data.read_hit(ops.handles[FH].cached, 0, PAGE) is not None  # type: ignore[union-attr]

        def broken(*_args: object) -> None:
            raise KeyError("a bug")

        monkeypatch.setattr(ops.data, "read_hit", broken)
        with caplog.at_level(logging.ERROR, "tmemfs"), pytest.raises(FUSEError) as info:
            await ops.read(FH, 0, PAGE)
        assert info.value.errno == errno.EIO and ops.internal_errors == 1
        assert "internal error in read" in caplog.text and "KeyError: 'a bug'" in caplog.text
        monkeypatch.undo()
        assert await ops.read(FH, PAGE, PAGE) == data[PAGE : 2 * PAGE]


async def test_an_oserror_on_the_read_fast_path_replies_its_errno_uncounted(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    async with operations(tmp_path) as (ops, _data):
        def failing(*_args: object) -> None:
            raise OSError(errno.EOVERFLOW, "too far")

        monkeypatch.setattr(ops.data, "read_hit", failing)
        with pytest.raises(FUSEError) as info:
            await ops.read(FH, 0, PAGE)
        assert info.value.errno == errno.EOVERFLOW and ops.internal_errors == 0


async def test_a_read_the_page_cache_cannot_answer_goes_through_the_handler(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A miss (and an unknown handle) take the wrapped path: counted in flight while they wait,
    errors mapped there."""
    async with operations(tmp_path) as (ops, data):
        seen = []
        read = ops.data.read

        async def watched(*args: object) -> bytes | bytearray | memoryview:
            seen.append(ops.data.io.in_flight)
            return await read(*args)  # type: ignore[arg-type]

        monkeypatch.setattr(ops.data, "read_hit", lambda *_args: None)
        monkeypatch.setattr(ops.data, "read", watched)
        assert await ops.read(FH, 2 * PAGE, PAGE) == data[2 * PAGE : 3 * PAGE]
        assert seen == [1] and ops.data.io.in_flight == 0
        with pytest.raises(FUSEError) as info:
            await ops.read(FH + 1, 0, PAGE)
        assert info.value.errno == errno.EIO and ops.internal_errors == 1  # no such handle: a bug
