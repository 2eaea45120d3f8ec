"""SrcIO: blocking calls on SRC run inline when nothing else is in flight, and off the loop
(native AIO for O_DIRECT reads, batched per scheduler pass; threads for the rest) when
other requests wait. Whatever the route, the bytes and the errors are those of preadv."""

from __future__ import annotations

import errno
import mmap
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio

from fusefs.srcio import SrcIO, in_memory

PAGE = 4096


def aligned(pages: int) -> list[memoryview]:
    """Page-aligned buffers (O_DIRECT needs them), one page each."""
    view = memoryview(mmap.mmap(-1, pages * PAGE))
    return [view[n * PAGE : (n + 1) * PAGE] for n in range(pages)]


@pytest.fixture
def src(tmp_path: Path) -> tuple[Path, bytes]:
    data = os.urandom(64 * PAGE + 100)  # a short last page
    path = tmp_path / "f"
    path.write_bytes(data)
    return path, data


async def read_all_ways(io: SrcIO, fd: int, data: bytes) -> None:
    """One page, four pages in one call, 32 reads at once, the short end, and past it."""
    one = aligned(1)
    assert await io.preadv(fd, one, 5 * PAGE) == PAGE and bytes(one[0]) == data[5 * PAGE : 6 * PAGE]
    four = aligned(4)
    assert await io.preadv(fd, four, 8 * PAGE) == 4 * PAGE
    assert b"".join(map(bytes, four)) == data[8 * PAGE : 12 * PAGE]
    got: dict[int, bytes] = {}

    async def reader(index: int) -> None:
        buf = aligned(1)
        assert await io.preadv(fd, buf, index * PAGE) == PAGE
        got[index] = bytes(buf[0])

    async with trio.open_nursery() as nursery:
        for index in range(32):
            nursery.start_soon(reader, index)
    assert got == {n: data[n * PAGE : (n + 1) * PAGE] for n in range(32)}
    tail = aligned(2)
    assert await io.preadv(fd, tail, 64 * PAGE) == 100 and bytes(tail[0])[:100] == data[-100:]
    assert await io.preadv(fd, aligned(1), 80 * PAGE) == 0


async def reads_every_way(path: Path, data: bytes, threads: int, others_in_flight: bool, direct: bool = True,
                          in_memory: bool = False) -> dict[str, int]:
    """read_all_ways through a SrcIO of `threads` (AIO slots too), of a descriptor opened
    O_DIRECT or not; its counters."""
    fd = os.open(path, os.O_RDONLY | (os.O_DIRECT if direct else 0))
    io = SrcIO(threads=threads, in_memory=in_memory)
    try:
        async with trio.open_nursery() as nursery:
            io.start(nursery)
            if others_in_flight:
                io.in_flight = 2  # another request is in flight: nothing may block the loop
            await read_all_ways(io, fd, data)
            nursery.cancel_scope.cancel()
        return io.stats()
    finally:
        io.close()
        os.close(fd)


async def test_reads_under_load_go_out_as_batched_native_aio(src: tuple[Path, bytes]) -> None:
    stats = await reads_every_way(*src, threads=32, others_in_flight=True)  # an AIO slot for each reader
    assert stats["backing.aio_reads"] == 36 and stats["backing.inline_calls"] == 0
    assert stats["backing.aio_submits"] < 36  # the 32 readers of one pass share submits


async def test_reads_with_nothing_else_in_flight_stay_inline(src: tuple[Path, bytes]) -> None:
    stats = await reads_every_way(*src, threads=16, others_in_flight=False)
    assert stats["backing.aio_reads"] == 0 and stats["backing.inline_calls"] == 36


async def test_an_aio_read_fails_as_preadv_would(src: tuple[Path, bytes]) -> None:
    """A buffer O_DIRECT cannot take (not aligned) fails with preadv's errno, by any route."""
    path, _ = src
    fd = os.open(path, os.O_RDONLY | os.O_DIRECT)
    io = SrcIO(threads=4)
    unaligned = memoryview(bytearray(PAGE + 1))[1:]
    try:
        async with trio.open_nursery() as nursery:
            io.start(nursery)
            io.in_flight = 2
            with pytest.raises(OSError) as failed:
                await io.preadv(fd, [unaligned], 0)
            assert failed.value.errno == errno.EINVAL and io.stats()["backing.aio_reads"] == 0
            nursery.cancel_scope.cancel()
    finally:
        io.close()
        os.close(fd)


@pytest.fixture
def tmpfs_src() -> Iterator[tuple[Path, bytes]]:
    """The same file on tmpfs (/dev/shm): no RWF_NOWAIT there, and nothing to wait for."""
    data = os.urandom(64 * PAGE + 100)
    with tempfile.TemporaryDirectory(dir="/dev/shm") as top:
        path = Path(top) / "f"
        path.write_bytes(data)
        yield path, data


async def test_reads_of_a_memory_filesystem_stay_inline_under_load(tmpfs_src: tuple[Path, bytes]) -> None:
    """A read of tmpfs is a copy: a hop to a thread for each (tmpfs has no RWF_NOWAIT) made a
    4k QD16 miss cost 158 us of CPU instead of 22."""
    path, data = tmpfs_src
    assert in_memory(str(path)) and not in_memory("/proc")
    stats = await reads_every_way(path, data, threads=4, others_in_flight=True, direct=False, in_memory=True)
    assert stats["backing.inline_calls"] == 36 and stats["backing.thread_calls"] == 0


async def test_a_filesystem_that_refuses_rwf_nowait_is_not_asked_again(
        tmpfs_src: tuple[Path, bytes], monkeypatch: pytest.MonkeyPatch) -> None:
    """Under load a read of a cached descriptor tries RWF_NOWAIT first; where SRC refuses it
    (EOPNOTSUPP: tmpfs inside an SRC that is not), every later read goes to the threads at once,
    and the bytes are the same."""
    path, data = tmpfs_src
    tries: list[int] = []
    preadv = os.preadv

    def counting_preadv(fd: int, buffers: list[memoryview], offset: int, flags: int = 0) -> int:
        if flags & os.RWF_NOWAIT:
            tries.append(offset)
        return preadv(fd, buffers, offset, flags)

    monkeypatch.setattr(os, "preadv", counting_preadv)
    stats = await reads_every_way(path, data, threads=4, others_in_flight=True, direct=False)
    assert len(tries) == 1 and stats["backing.thread_calls"] == 36
