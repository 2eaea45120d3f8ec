"""Page locks and the change seqlock: the kernel's rules with many requests in flight.

The data path is driven directly (no mount) over a real file, with a RAM
backend that awaits I/O and can be held at a gate, so each interleaving of
the issue is produced exactly: a second reader during a fill, a reader
during the put of an evicted page, a write during a fill, an unregister
during a get. Each test fails on the one-request-at-a-time data path.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import ClassVar

import trio
import trio.testing

from backends.tmem import TmemBackend
from fusefs.cleancache import Cleancache
from fusefs.datapath import DataPath
from fusefs.pagecache import CachedFile, PageCache

PAGE = 4096


class GatedTmem(TmemBackend):
    """tmem whose calls await I/O (like a Redis store) and can be held at a gate. The page
    a get returns is copied before the gate: the data is what the pool held when the get
    started, as it is for a store whose reply is on its way."""

    awaits_io: ClassVar[bool] = True

    def __init__(self, capacity: int) -> None:
        super().__init__(capacity)
        self.gets = self.puts_started = 0
        self.gate: trio.Event | None = None
        self.reached = trio.Event()  # a call is waiting at the gate
        self.events: list[str] = []

    async def _at_gate(self) -> None:
        if self.gate is not None:
            self.reached.set()
            await self.gate.wait()

    async def get_pages(self, pool: int, key: bytes, first: int, outs: list[memoryview]) -> list[bool]:
        self.gets += 1
        hits = await super().get_pages(pool, key, first, outs)
        await self._at_gate()
        self.events.append("get done")
        return hits

    async def get_page(self, pool: int, key: bytes, index: int, out: memoryview) -> bool:
        return (await self.get_pages(pool, key, index, [out]))[0]

    async def put_pages(self, pool: int, pages: list[tuple[bytes, int, memoryview]]) -> list[bool]:
        self.puts_started += 1
        await self._at_gate()
        return await super().put_pages(pool, pages)

    async def put_page(self, pool: int, key: bytes, index: int, page: memoryview) -> bool:
        return (await self.put_pages(pool, [(key, index, page)]))[0]

    async def destroy_pool(self, pool: int) -> None:
        self.events.append("destroy_pool")
        await super().destroy_pool(pool)


async def setup(tmp_path: Path, pages: int, cache_pages: int,
                data: bytes | None = None) -> tuple[DataPath, GatedTmem, CachedFile, int, bytes]:
    data = data if data is not None else os.urandom(pages * PAGE)
    (tmp_path / "f").write_bytes(data)
    fd = os.open(tmp_path / "f", os.O_RDWR)
    backend = GatedTmem(1 << 22)
    cc = Cleancache(backend, timeout=30)
    dp = DataPath(PageCache(cache_pages * PAGE), cc, await cc.init_fs())
    cached, _ = await dp.open_file(b"f", fd)
    return dp, backend, cached, fd, data


async def page_0_in_the_pool_and_gate_shut(dp: DataPath, backend: GatedTmem, cached: CachedFile,
                                           fd: int) -> trio.Event:
    """Read page 0 and evict it (drop_caches puts it), so that its next fill gets it from the
    pool; then shut the gate that the fill's get will stop at."""
    await dp.read(cached, fd, 0, PAGE)
    await dp.drop_caches()
    backend.gate = trio.Event()
    return backend.gate


async def read_into(got: list[bytes], dp: DataPath, cached: CachedFile, fd: int, index: int = 0) -> None:
    got.append(bytes(await dp.read(cached, fd, index * PAGE, PAGE)))


async def test_a_second_reader_waits_for_the_fill_instead_of_reading_again(tmp_path: Path) -> None:
    dp, backend, cached, fd, data = await setup(tmp_path, 4, 8)
    try:
        gate = await page_0_in_the_pool_and_gate_shut(dp, backend, cached, fd)
        got: list[bytes] = []
        async with trio.open_nursery() as nursery:
            nursery.start_soon(read_into, got, dp, cached, fd)
            await backend.reached.wait()  # the first fill is at the pool
            nursery.start_soon(read_into, got, dp, cached, fd)
            await trio.testing.wait_all_tasks_blocked()
            gate.set()
        assert got == [data[:PAGE]] * 2
        assert dp.fill_waits == 1
        assert backend.gets == 1  # the fill's (the ledger knew the first read had nothing): not one for the waiter
        assert dp.backing_reads == 1  # only the very first read went to SRC
        assert dp.cc.succ_gets == 1
    finally:
        os.close(fd)


async def test_a_reader_of_a_page_being_put_waits_and_gets_it_from_the_pool(tmp_path: Path) -> None:
    """The page lock is held across the put of an evicted page: a reader waits for the put,
    then gets the page from the pool (put, then get); it does not read SRC while the old
    copy is on its way into the pool, which would leave a copy in both."""
    dp, backend, cached, fd, data = await setup(tmp_path, 4, 1)
    try:
        await dp.read(cached, fd, 0, PAGE)
        backend.gate = trio.Event()
        got: dict[int, bytes] = {}

        async def reader(index: int) -> None:
            got[index] = bytes(await dp.read(cached, fd, index * PAGE, PAGE))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(reader, 1)  # evicts page 0: its put waits at the gate
            await backend.reached.wait()
            assert 0 in cached.locks and 0 not in cached.pages
            nursery.start_soon(reader, 0)
            await trio.testing.wait_all_tasks_blocked()
            backend.gate.set()
        assert got == {0: data[:PAGE], 1: data[PAGE : 2 * PAGE]}
        assert dp.fill_waits == 1
        assert dp.backing_reads == 2  # pages 0 and 1 once each: the second 0 came from the pool
        assert dp.cc.succ_gets == 1
    finally:
        os.close(fd)


async def test_a_page_being_filled_is_never_evicted_or_put(tmp_path: Path) -> None:
    dp, backend, cached, fd, data = await setup(tmp_path, 8, 2)
    try:
        held = await page_0_in_the_pool_and_gate_shut(dp, backend, cached, fd)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(dp.read, cached, fd, 0, PAGE)
            await backend.reached.wait()  # page 0's fill holds its slot and lock
            backend.gate = None  # the other calls pass
            puts = dp.cc.puts
            for index in range(1, 8):  # churn the one other slot meanwhile
                assert await dp.read(cached, fd, index * PAGE, PAGE) == data[index * PAGE : (index + 1) * PAGE]
                assert 0 in cached.locks and 0 not in cached.pages
            assert dp.cc.puts - puts == 6  # pages 1..6 evicted and put, never page 0
            held.set()
        assert 0 in cached.pages and not cached.locks
        assert await dp.read(cached, fd, 0, PAGE) == data[:PAGE]
    finally:
        os.close(fd)


async def test_no_page_read_before_a_write_is_installed_after_it(tmp_path: Path) -> None:
    """The install-after-invalidate race: a read's fill got the old page from the pool; a
    write of that page completes before the fill ends. The fill must not install the old
    page (the next reads would serve it, stale); its read is served from SRC instead."""
    dp, backend, cached, fd, _data = await setup(tmp_path, 4, 8)
    try:
        await page_0_in_the_pool_and_gate_shut(dp, backend, cached, fd)  # the old page 0
        new = b"N" * PAGE
        async with trio.open_nursery() as nursery:
            nursery.start_soon(dp.read, cached, fd, 0, PAGE)
            await backend.reached.wait()  # the get has copied the old page
            gate, backend.gate = backend.gate, None
            assert gate is not None
            assert await dp.write(cached, fd, 0, new) == (0, PAGE)
            gate.set()
        assert dp.fill_conflicts == 1
        assert 0 not in cached.pages or bytes(dp.pc.slot_view(cached.pages[0])) == new
        assert await dp.read(cached, fd, 0, PAGE) == new
        assert os.pread(fd, PAGE, 0) == new
    finally:
        os.close(fd)


async def test_a_write_waits_for_the_put_of_its_page_before_invalidating_it(tmp_path: Path) -> None:
    """put and invalidate of one handle are serialised: a write of a page whose old copy is
    being put must invalidate after the put lands, or the pool keeps the old copy."""
    dp, backend, cached, fd, _data = await setup(tmp_path, 4, 1)
    try:
        await dp.read(cached, fd, 0, PAGE)
        backend.gate = trio.Event()
        new = b"W" * PAGE
        async with trio.open_nursery() as nursery:
            nursery.start_soon(dp.read, cached, fd, PAGE, PAGE)  # evicts page 0: its put is held
            await backend.reached.wait()
            nursery.start_soon(dp.write, cached, fd, 0, new)
            await trio.testing.wait_all_tasks_blocked()
            backend.gate.set()
        backend.gate = None
        await dp.drop_caches()
        assert await dp.read(cached, fd, 0, PAGE) == new  # the pool did not keep the old page
    finally:
        os.close(fd)


async def test_unregister_waits_for_the_calls_in_flight(tmp_path: Path) -> None:
    dp, backend, cached, fd, data = await setup(tmp_path, 4, 8)
    try:
        gate = await page_0_in_the_pool_and_gate_shut(dp, backend, cached, fd)
        got: list[bytes] = []
        async with trio.open_nursery() as nursery:
            nursery.start_soon(read_into, got, dp, cached, fd)
            await backend.reached.wait()
            nursery.start_soon(dp.cc.unregister)
            await trio.testing.wait_all_tasks_blocked()
            assert "destroy_pool" not in backend.events  # the get is still in flight
            gate.set()
        assert backend.events[-2:] == ["get done", "destroy_pool"]
        assert got == [data[:PAGE]]
        assert dp.cc.backend is None and dp.cc.backend_errors == 0
        assert await dp.read(cached, fd, PAGE, PAGE) == data[PAGE : 2 * PAGE]  # no backend: still served
    finally:
        os.close(fd)


async def test_a_read_finding_every_slot_held_is_served_around_the_cache(tmp_path: Path) -> None:
    """A one-page cache whose only slot a held fill has: another read cannot take it (it is
    locked), so it reads SRC around the cache instead of failing."""
    dp, backend, cached, fd, data = await setup(tmp_path, 4, 1)
    try:
        held = await page_0_in_the_pool_and_gate_shut(dp, backend, cached, fd)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(dp.read, cached, fd, 0, PAGE)
            await backend.reached.wait()
            backend.gate = None
            assert await dp.read(cached, fd, PAGE, PAGE) == data[PAGE : 2 * PAGE]
            assert dp.uncached_reads == 1 and 1 not in cached.pages
            held.set()
        assert await dp.read(cached, fd, 0, PAGE) == data[:PAGE]
    finally:
        os.close(fd)


async def test_an_open_during_a_write_keeps_the_size_the_write_left(tmp_path: Path) -> None:
    """An open of a file while this mount's write of it is on its way to SRC: the open waits
    for the write and stats SRC after it. A stat taken before and applied after would set
    the old size back, and the next read would end the file before the bytes just written."""
    dp, _backend, cached, fd, data = await setup(tmp_path, 4, 8)
    try:
        dp.close_file(cached, os.fstat(fd))
        gate = trio.Event()
        pwrite = dp.io.pwrite

        async def held_pwrite(fd: int, view: memoryview, offset: int) -> int:
            await gate.wait()
            return await pwrite(fd, view, offset)

        dp.io.pwrite = held_pwrite  # type: ignore[method-assign]
        tail = b"T" * PAGE
        async with trio.open_nursery() as nursery:
            nursery.start_soon(dp.write, cached, fd, 4 * PAGE, tail)  # held before it reaches SRC
            await trio.testing.wait_all_tasks_blocked()
            nursery.start_soon(dp.open_file, b"f", fd)
            await trio.testing.wait_all_tasks_blocked()
            assert dp.change_waits == 1  # the open waits for the write
            gate.set()
        assert cached.size == 5 * PAGE and cached.open_count == 1
        assert await dp.read(cached, fd, 0, 5 * PAGE) == data + tail
    finally:
        os.close(fd)


class YieldingInvalidateTmem(TmemBackend):
    """tmem whose invalidate_inode lets other requests run, as a remote store's does."""

    awaits_io: ClassVar[bool] = True

    async def invalidate_inode(self, pool: int, key: bytes) -> None:
        await trio.sleep(0.01)
        await super().invalidate_inode(pool, key)


async def test_trimming_idle_files_never_drops_one_opened_meanwhile(tmp_path: Path) -> None:
    """The trim of idle files awaits the pool for each; a file opened during that wait is no
    longer idle and must stay known, or its handle would hold a CachedFile nobody updates
    (a truncate through another handle would leave it a stale size)."""
    cc = Cleancache(YieldingInvalidateTmem(1 << 20))
    dp = DataPath(PageCache(64 << 10), cc, await cc.init_fs(), max_idle_files=4)
    fds = {}
    for n in range(10):
        (tmp_path / f"f{n}").write_bytes(b"x" * 100)
        fds[n] = os.open(tmp_path / f"f{n}", os.O_RDWR)
    try:
        for n in range(9):  # nine files known, none open: idle (a trim takes a quarter: two)
            cached, _ = await dp.open_file(f"f{n}".encode(), fds[n])
            assert await dp.read(cached, fds[n], 0, 100) == b"x" * 100
            dp.close_file(cached, None)
        await dp.drop_caches()  # their pages go to the pool: forgetting a file now waits on it
        reopened: list[CachedFile] = []

        async def reopen_during_the_trim() -> None:
            await trio.sleep(0.005)  # the trim is waiting on the pool for its first file
            for n in range(9):
                if f"f{n}".encode() in dp.files:
                    reopened.append((await dp.open_file(f"f{n}".encode(), fds[n]))[0])
                    return

        async with trio.open_nursery() as nursery:
            nursery.start_soon(reopen_during_the_trim)
            await dp.open_file(b"f9", fds[9])  # one file too many: trims idle ones
        assert reopened
        assert dp.files.get(reopened[0].key) is reopened[0]  # still the file's one CachedFile
    finally:
        for fd in fds.values():
            os.close(fd)


async def test_a_read_that_waited_past_a_truncate_never_moves_the_end_of_file(tmp_path: Path) -> None:
    """A read plans its pages from the size it saw; a truncate that lands while it waits
    between two of them leaves later pages past the end. Loading one of those must not
    take the empty read of SRC there for the end of the file (it was: the file seemed to
    end at that page, and reads after the truncate returned bytes past the real end: the
    full stress's STALE SIZE)."""
    cc = Cleancache(TmemBackend(1 << 20))
    dp = DataPath(PageCache(64 << 10), cc, await cc.init_fs())
    (tmp_path / "f").write_bytes(b"y" * (8 << 12))
    fd = os.open(tmp_path / "f", os.O_RDWR)
    try:
        cached, _ = await dp.open_file(b"f", fd)
        await dp.truncate(b"f", fd, 4096 + 100)
        assert cached.size == 4096 + 100
        assert await dp._page(cached, fd, 5, 7) == (-1, 4)  # planned before the truncate
        assert await dp._fill(cached, fd, 5, 7) == (-1, 4)  # and the fill itself, were it asked
        assert cached.size == 4096 + 100
        assert bytes(await dp.read(cached, fd, 0, 8 << 12)) == b"y" * (4096 + 100)
    finally:
        os.close(fd)
