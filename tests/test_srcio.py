"""SrcIO: blocking calls on SRC run inline when nothing else is in flight, and off the loop
(native AIO for O_DIRECT reads, batched per scheduler pass; threads for the rest) when
other requests wait. Whatever the route, the bytes and the errors are those of preadv."""

from __future__ import annotations

import errno
import mmap
import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import trio

from fusefs.srcio import SrcIO, filesystem_type

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
    dev = os.fstat(fd).st_dev
    one = aligned(1)
    assert await io.preadv(fd, one, 5 * PAGE, dev) == PAGE and bytes(one[0]) == data[5 * PAGE : 6 * PAGE]
    four = aligned(4)
    assert await io.preadv(fd, four, 8 * PAGE, dev) == 4 * PAGE
    assert b"".join(map(bytes, four)) == data[8 * PAGE : 12 * PAGE]
    got: dict[int, bytes] = {}

    async def reader(index: int) -> None:
        buf = aligned(1)
        assert await io.preadv(fd, buf, index * PAGE, dev) == PAGE
        got[index] = bytes(buf[0])

    async with trio.open_nursery() as nursery:
        for index in range(32):
            nursery.start_soon(reader, index)
    assert got == {n: data[n * PAGE : (n + 1) * PAGE] for n in range(32)}
    tail = aligned(2)
    assert await io.preadv(fd, tail, 64 * PAGE, dev) == 100 and bytes(tail[0])[:100] == data[-100:]
    assert await io.preadv(fd, aligned(1), 80 * PAGE, dev) == 0


async def reads_every_way(path: Path, data: bytes, threads: int, others_in_flight: bool, direct: bool = True,
                          io: SrcIO | None = None) -> dict[str, int]:
    """read_all_ways through `io` (by default a SrcIO of `threads`, AIO slots too), of a
    descriptor opened O_DIRECT or not; its counters."""
    fd = os.open(path, os.O_RDONLY | (os.O_DIRECT if direct else 0))
    io = io or SrcIO(threads=threads)
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
                await io.preadv(fd, [unaligned], 0, os.fstat(fd).st_dev)
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


def typed(types: dict[Path, str]) -> Callable[[int], str]:
    """A device_type for SrcIO that gives each listed file's filesystem the type listed."""
    by_dev = {os.stat(path).st_dev: kind for path, kind in types.items()}
    return lambda dev: by_dev.get(dev, "")


def test_filesystem_types_come_from_mountinfo(tmpfs_src: tuple[Path, bytes]) -> None:
    assert filesystem_type(os.stat(tmpfs_src[0]).st_dev) == "tmpfs"
    assert filesystem_type(os.stat("/proc").st_dev) == "proc"


async def test_reads_of_a_memory_filesystem_stay_inline_under_load(tmpfs_src: tuple[Path, bytes]) -> None:
    """A read of tmpfs is a copy: a hop to a thread for each (tmpfs has no RWF_NOWAIT) made a
    4k QD16 miss cost 158 us of CPU instead of 22."""
    stats = await reads_every_way(*tmpfs_src, threads=4, others_in_flight=True, direct=False)
    assert stats["backing.inline_calls"] == 36 and stats["backing.thread_calls"] == 0


async def test_each_filesystem_of_src_is_read_its_own_way(
        src: tuple[Path, bytes], tmpfs_src: tuple[Path, bytes]) -> None:
    """SRC may hold another filesystem: under load a file on a memory filesystem is read
    inline, and a file beside it on a disk filesystem is not (it could block the loop)."""
    io = SrcIO(threads=4, device_type=typed({src[0]: "ext4", tmpfs_src[0]: "tmpfs"}))
    on_memory = await reads_every_way(*tmpfs_src, threads=4, others_in_flight=True, direct=False, io=io)
    assert on_memory["backing.inline_calls"] == 36
    io.reset_stats()
    on_disk = await reads_every_way(*src, threads=4, others_in_flight=True, direct=False, io=io)
    assert on_disk["backing.inline_calls"] == 0
    assert on_disk["backing.nowait_reads"] + on_disk["backing.thread_calls"] == 36


async def test_a_filesystem_that_refuses_rwf_nowait_is_not_asked_again(
        src: tuple[Path, bytes], tmpfs_src: tuple[Path, bytes], monkeypatch: pytest.MonkeyPatch) -> None:
    """Under load a read of a cached descriptor tries RWF_NOWAIT first; a filesystem that
    refuses it (EOPNOTSUPP: tmpfs, here not known as one) is not asked again, and its reads
    go to the threads at once with the same bytes. Another filesystem of SRC keeps its
    RWF_NOWAIT (here every try of it is made to succeed, as from the host page cache)."""
    refused_dev = os.stat(tmpfs_src[0]).st_dev
    tries: dict[int, int] = {}
    preadv = os.preadv

    def counting_preadv(fd: int, buffers: list[memoryview], offset: int, flags: int = 0) -> int:
        if flags & os.RWF_NOWAIT:
            dev = os.fstat(fd).st_dev
            tries[dev] = tries.get(dev, 0) + 1
            return preadv(fd, buffers, offset, flags if dev == refused_dev else 0)
        return preadv(fd, buffers, offset, flags)

    monkeypatch.setattr(os, "preadv", counting_preadv)
    io = SrcIO(threads=4, device_type=typed({src[0]: "ext4", tmpfs_src[0]: "notmpfs"}))
    refusing = await reads_every_way(*tmpfs_src, threads=4, others_in_flight=True, direct=False, io=io)
    assert tries == {refused_dev: 1} and refusing["backing.thread_calls"] == 36
    io.reset_stats()
    other = await reads_every_way(*src, threads=4, others_in_flight=True, direct=False, io=io)
    assert tries[os.stat(src[0]).st_dev] == 36  # every read tried it
    assert other["backing.nowait_reads"] == 34  # the short last page and past the end: threads make sure


async def test_lookups_on_a_network_filesystem_of_src_leave_the_loop_under_load(
        src: tuple[Path, bytes], tmpfs_src: tuple[Path, bytes]) -> None:
    """A lookup, open or listing waits on the network there; on a local filesystem it is a
    dentry-cache hit and stays inline."""
    io = SrcIO(threads=4, device_type=typed({src[0]: "nfs4", tmpfs_src[0]: "tmpfs"}))
    try:
        io.in_flight = 2
        for path in (src[0], tmpfs_src[0]):
            assert await io.call_meta(os.stat(path).st_dev, os.listdir, str(path.parent)) == ["f"]
        assert io.stats()["backing.thread_calls"] == 1  # the one on "nfs4"
    finally:
        io.close()
