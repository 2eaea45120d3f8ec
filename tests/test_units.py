"""Unit tests that make the rules plain: page cache, tmem backend, cleancache frontend."""

from __future__ import annotations

import os
from collections import Counter
from pathlib import Path

import pytest
import trio

from backends.base import Backend, StatValue
from backends.chain import ChainBackend
from backends.dedup import DedupBackend
from backends.eviction import POLICIES
from backends.tmem import TmemBackend
from backends.zcache import ZcacheBackend
from fusefs import datapath
from fusefs.cleancache import Cleancache
from fusefs.datapath import DataPath
from fusefs.pagecache import CachedFile, Eviction, PageCache

PAGE = 4096
ENTRY = PAGE + TmemBackend.ENTRY_OVERHEAD  # what one stored page costs tmem


def page(byte: int) -> memoryview:
    return memoryview(bytes([byte]) * PAGE)


# -- page cache --------------------------------------------------------------------


def take_slot(pc: PageCache) -> tuple[int, Eviction | None]:
    """One slot, and the page evicted to free it if the cache was full."""
    slots, evicted = pc.take_slots(1)
    return slots[0], evicted[0] if evicted else None


def test_pagecache_is_bounded_and_evicts_least_recently_used() -> None:
    pc = PageCache(3 * PAGE)
    f = CachedFile(b"k")
    for index in range(3):
        slot, evicted = take_slot(pc)
        assert evicted is None
        pc.install(f, index, slot)
    assert pc.lookup(f, 0) is not None  # 0 is now the most recent
    slot, evicted = take_slot(pc)
    assert evicted is not None and evicted.index == 1 and evicted.file is f
    assert pc.pages == 2 and 1 not in f.pages
    pc.install(f, 3, slot)
    assert pc.pages == 3 == pc.capacity
    assert (pc.hits, pc.misses, pc.evictions) == (1, 0, 1)


@pytest.mark.parametrize("policy", sorted(POLICIES))
def test_pagecache_every_policy_keeps_the_bound(policy: str) -> None:
    pc = PageCache(8 * PAGE, policy)
    files = [CachedFile(b"a"), CachedFile(b"b")]
    for step in range(200):
        f, index = files[step % 2], (step * 7) % 13
        if pc.lookup(f, index) is None:
            slot, evicted = take_slot(pc)
            if evicted is not None:
                assert evicted.file.pages.get(evicted.index) is None
            pc.install(f, index, slot)
        assert pc.pages <= 8
    assert pc.pages == 8 and pc.hits + pc.misses == 200


def test_pagecache_drop_file_frees_slots() -> None:
    pc = PageCache(4 * PAGE)
    f = CachedFile(b"k")
    for index in range(4):
        pc.install(f, index, take_slot(pc)[0])
    assert pc.drop_file(f) == 4
    assert pc.pages == 0 and not f.pages
    assert pc.lookup(f, 0) is None


def test_pagecache_evict_all_returns_data_still_readable() -> None:
    pc = PageCache(2 * PAGE)
    f = CachedFile(b"k")
    for index in range(2):
        slot = take_slot(pc)[0]
        pc.slot_view(slot)[:] = page(index + 1)
        pc.install(f, index, slot)
    evicted = pc.evict(pc.pages)
    assert [e.index for e in evicted] == [0, 1]
    assert bytes(pc.slot_view(evicted[1].slot)) == bytes(page(2))
    for e in evicted:
        pc.release_slot(e.slot)
    assert pc.pages == 0


@pytest.mark.parametrize("policy", sorted(POLICIES))
def test_pagecache_install_run_is_install_page_by_page(policy: str) -> None:
    """A run installed in one call leaves the cache as installing each page would."""
    runs, singles = PageCache(8 * PAGE, policy), PageCache(8 * PAGE, policy)
    f, g = CachedFile(b"f"), CachedFile(b"g")
    slots, _ = runs.take_slots(5)
    runs.install_run(f, 10, slots)
    for index, slot in zip(range(10, 15), singles.take_slots(5)[0], strict=True):
        singles.install(g, index, slot)
    assert list(f.pages) == list(g.pages) == list(range(10, 15)) and runs.pages == singles.pages == 5
    assert [runs.slot_keys[s] for s in f.pages.values()] == [(f, n) for n in range(10, 15)]
    assert [e.index for e in runs.evict(5)] == [e.index for e in singles.evict(5)]


async def datapath_over(tmp_path: Path, pages: int, cache_pages: int,
                        backend: Backend | None = None) -> tuple[DataPath, CachedFile, int, bytes]:
    """A DataPath (without cleancache unless given a backend) over a file of `pages` random pages."""
    data = os.urandom(pages * PAGE)
    (tmp_path / "f").write_bytes(data)
    fd = os.open(tmp_path / "f", os.O_RDONLY)
    cc = Cleancache(backend)
    dp = DataPath(PageCache(cache_pages * PAGE), cc, await cc.init_fs())
    cached, _ = await dp.open_file(b"f", fd)
    return dp, cached, fd, data


async def test_reading_in_order_with_reclaim_serves_each_run_as_one_view(tmp_path: Path) -> None:
    """Slots handed out for a run are in order, so a 128 KiB read is one view of the
    slab, not a copy, also once reclaim has freed slots in between (it frees them
    oldest first, and a free list hands the last freed out first). (A backend that cannot
    serve a scan: without one, a scan of a file larger than the cache is not installed.)"""
    dp, cached, fd, data = await datapath_over(tmp_path, 512, 256, NoPeekTmem(1 << 20))
    try:
        assert dp.reserve == 4
        for _ in range(2):
            for offset in range(0, len(data), 32 * PAGE):
                got = await dp.read(cached, fd, offset, 32 * PAGE)
                assert isinstance(got, memoryview) and got == data[offset : offset + 32 * PAGE]
                await dp.reclaim(lambda: False)
        assert dp.reclaimed > 0 and dp.pc.evictions > 256
    finally:
        os.close(fd)


async def test_reclaim_stops_once_a_request_waits(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(datapath, "RECLAIM_NS", 10**9)  # only the waiting request stops it
    dp, cached, fd, data = await datapath_over(tmp_path, 4096, 2048, NoPeekTmem(1 << 20))
    try:
        for offset in range(0, len(data), 32 * PAGE):
            await dp.read(cached, fd, offset, 32 * PAGE)
        assert dp.pc.free_slots == 0 and dp.reserve == 32
        await dp.reclaim(lambda: True)
        assert dp.reclaimed == dp.pc.free_slots == datapath.RECLAIM_STEP < dp.reserve
        await dp.reclaim(lambda: False)
        assert dp.pc.free_slots == dp.reserve
    finally:
        os.close(fd)


class NoPeekTmem(TmemBackend):
    """tmem whose get_page is its own (a plugin's): it cannot peek, so no bypass."""

    async def get_page(self, pool: int, key: bytes, index: int, out: memoryview) -> bool:
        return await super().get_page(pool, key, index, out)


class LyingPeekTmem(TmemBackend):
    """tmem whose peeks return a wrong page: the frontend must catch it."""

    async def peek_pages(self, pool: int, key: bytes, first: int, outs: list[memoryview]) -> list[bool]:
        hits = await super().peek_pages(pool, key, first, outs)
        outs[0][:8] = b"WRONG!!!"
        return hits


def scan_backend(kind: str) -> Backend:
    capacity = 1024 * ENTRY
    if kind == "zcache+tmem":  # random pages: zcache refuses them, tmem keeps them
        return ChainBackend([ZcacheBackend(capacity), TmemBackend(capacity)])
    classes = {"zcache": ZcacheBackend, "zcache refusing": ZcacheBackend, "dedup": DedupBackend,
               "nopeek": NoPeekTmem, "lying": LyingPeekTmem}
    return classes.get(kind, TmemBackend)(capacity)


@pytest.mark.parametrize("kind", ["tmem", "shared tmem", "zcache", "dedup", "zcache+tmem", "nopeek", "lying",
                                  "zcache refusing"])
async def test_a_scan_is_served_around_the_page_cache_and_the_pool_keeps_its_pages(tmp_path: Path,
                                                                                    kind: str) -> None:
    """Sequential bypass: a scan the pool holds is served from it without installing; the
    pages stay in the pool, so every pass after the first reads nothing from SRC. A private
    pool is served by peeking (an exclusive get would lose the pages); a backend that cannot
    peek is read the usual way; a peeked page that is not what was put is read from SRC;
    pages zcache refused come from SRC without churning the page cache."""
    if kind == "zcache":  # distinct pages that all compress (zcache refuses none)
        data = b"".join(((b"page %08d " % n) * 300)[:PAGE] for n in range(512))
    elif kind == "zcache refusing":  # one page in 8 does not compress
        data = b"".join(os.urandom(PAGE) if n % 8 == 0 else ((b"page %08d " % n) * 300)[:PAGE] for n in range(512))
    else:
        data = os.urandom(512 * PAGE)
    (tmp_path / "f").write_bytes(data)
    fd = os.open(tmp_path / "f", os.O_RDONLY)
    try:
        cc = Cleancache(scan_backend(kind))
        pool = await (cc.init_shared_fs(bytes(range(16))) if kind == "shared tmem" else cc.init_fs())
        dp = DataPath(PageCache(64 * PAGE), cc, pool)
        cached, _ = await dp.open_file(b"f", fd)
        for scan in range(3):  # first from SRC (evictions fill the pool), then from the pool
            if scan == 1:
                puts, backing = cc.puts, dp.backing_read_bytes
            for offset in range(0, len(data), 32 * PAGE):
                assert await dp.read(cached, fd, offset, 32 * PAGE) == data[offset : offset + 32 * PAGE]
        assert cc.succ_gets > 0 and dp.pc.pages <= 64
        assert (dp.bypassed > 0) == (kind != "nopeek")
        if kind != "nopeek":  # in each later pass only the stream's first 32 pages are installed
            assert cc.puts - puts == 2 * 32
        if kind in ("lying", "zcache refusing"):
            assert (cc.verify_failures > 0) == (kind == "lying")
            assert dp.backing_read_bytes > backing  # the lies, the refused pages: from SRC
        else:
            assert dp.backing_reads == 32  # the first pass only (16 pages a read): the pool kept every page
            assert cc.verify_failures == 0
    finally:
        os.close(fd)


async def test_a_cold_scan_asks_a_shared_pool_for_each_page_about_once(tmp_path: Path) -> None:
    """A scan the pool does not hold is read the usual way after the pool said so, and the
    pool is asked again only after 1, 2, 4... runs: not each page twice (probe, then fill),
    which costs a round trip each on Redis. A scan it holds is still served around the cache."""
    backend = CountingTmem(2048 * ENTRY)
    cc = Cleancache(backend)
    data = os.urandom(1024 * PAGE)
    (tmp_path / "f").write_bytes(data)
    fd = os.open(tmp_path / "f", os.O_RDONLY)
    try:
        dp = DataPath(PageCache(64 * PAGE), cc, await cc.init_shared_fs(bytes(range(16))))
        cached, _ = await dp.open_file(b"f", fd)
        for offset in range(0, len(data), 32 * PAGE):
            assert await dp.read(cached, fd, offset, 32 * PAGE) == data[offset : offset + 32 * PAGE]
        assert dp.bypassed == 0 and backend.calls["pages asked"] < 1.25 * 1024
        await dp.drop_caches()  # now the pool holds the whole file
        for offset in range(0, len(data), 32 * PAGE):
            assert await dp.read(cached, fd, offset, 32 * PAGE) == data[offset : offset + 32 * PAGE]
        assert dp.bypassed == 1024 - 32  # all but the first read (half the cache)
    finally:
        os.close(fd)


async def test_without_a_pool_a_scan_goes_around_the_page_cache_and_keeps_its_hot_pages(tmp_path: Path) -> None:
    """cleancache=none: a read in order longer than half the page cache comes from SRC
    without being installed (installing it would only evict everything, for nobody to put
    anywhere), so the pages of another file read before it are still cached after it; its
    gets are counted as misses, as on any miss."""
    dp, cached, fd, data = await datapath_over(tmp_path, 512, 64)
    hot_data = os.urandom(8 * PAGE)
    (tmp_path / "hot").write_bytes(hot_data)
    hot_fd = os.open(tmp_path / "hot", os.O_RDONLY)
    try:
        hot, _ = await dp.open_file(b"hot", hot_fd)
        assert await dp.read(hot, hot_fd, 0, 8 * PAGE) == hot_data
        for offset in range(0, len(data), 32 * PAGE):
            assert await dp.read(cached, fd, offset, 32 * PAGE) == data[offset : offset + 32 * PAGE]
        assert dp.bypassed == 512 - 32  # all but the first read: half the cache is a scan's start
        assert sorted(hot.pages) == list(range(8)) and len(cached.pages) == 32
        assert dp.cc.failed_gets == dp.pc.misses == 8 + 512 and dp.cc.succ_gets == 0
    finally:
        os.close(fd)
        os.close(hot_fd)


async def test_without_a_pool_a_file_the_page_cache_can_hold_is_cached_as_it_is_read(tmp_path: Path) -> None:
    dp, cached, fd, data = await datapath_over(tmp_path, 48, 64)
    try:
        for offset in range(0, len(data), 16 * PAGE):  # in order, past half the cache
            assert await dp.read(cached, fd, offset, 16 * PAGE) == data[offset : offset + 16 * PAGE]
        assert dp.bypassed == 0 and len(cached.pages) == 48
    finally:
        os.close(fd)


class SlowPeekTmem(TmemBackend):
    """tmem that answers a peek only once `answer` is set (a backend awaiting I/O)."""

    awaits_io = True  # type: ignore[misc]

    def __init__(self, capacity: int) -> None:
        super().__init__(capacity)
        self.answer = trio.Event()
        self.peeked = trio.Event()

    async def peek_pages(self, pool: int, key: bytes, first: int, outs: list[memoryview]) -> list[bool]:
        hits = await super().peek_pages(pool, key, first, outs)
        self.peeked.set()
        await self.answer.wait()
        return hits


async def test_a_copy_survives_a_get_of_its_pages_while_the_backend_answers() -> None:
    """A peek of a backend that awaits I/O lets other requests run: one of them may take a
    page of the run (an exclusive get) before the peek answers. The copy is verified against
    the digest the ledger had when it asked, not looked up again (a KeyError, EIO, before)."""
    backend = SlowPeekTmem(64 * ENTRY)
    cc = Cleancache(backend, timeout=30)
    pool = await cc.init_fs()
    await cc.put_pages(pool, [(b"f", n, page(n)) for n in range(4)])
    outs = [memoryview(bytearray(PAGE)) for _ in range(4)]
    got: list[list[bool] | None] = []

    async def copy() -> None:
        got.append(await cc.copy_pages(pool, b"f", 0, outs, 2))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(copy)
        await backend.peeked.wait()
        taken = memoryview(bytearray(PAGE))
        assert await cc.get_pages(pool, b"f", 1, [taken]) == [True]  # exclusive: out of the ledger
        backend.answer.set()
    assert got == [[True] * 4] and [bytes(o) for o in outs] == [bytes(page(n)) for n in range(4)]
    assert cc.backend_errors == cc.verify_failures == 0


class LatePeekTmem(TmemBackend):
    """tmem that copies a peeked page only once `answer` is set, as a store's reply arrives
    after the requests that ran meanwhile."""

    awaits_io = True  # type: ignore[misc]

    def __init__(self, capacity: int) -> None:
        super().__init__(capacity)
        self.answer = trio.Event()
        self.peeked = trio.Event()

    async def peek_pages(self, pool: int, key: bytes, first: int, outs: list[memoryview]) -> list[bool]:
        self.peeked.set()
        await self.answer.wait()
        return await super().peek_pages(pool, key, first, outs)


@pytest.mark.parametrize("meanwhile", ["put anew", "got and put anew", "invalidated"])
async def test_a_peek_that_sees_a_page_replaced_meanwhile_is_a_miss_not_a_fault(meanwhile: str) -> None:
    """A peek takes no page lock: while the backend answers, another request may get,
    invalidate or put anew a page of the run, and the backend then rightly answers with the
    newer bytes. That page is a miss for the peek, counted as a race (not as a backend that
    lied), and the newer copy stays in the pool for the next get."""
    backend = LatePeekTmem(64 * ENTRY)
    cc = Cleancache(backend, timeout=30)
    pool = await cc.init_fs()
    await cc.put_pages(pool, [(b"f", n, page(n)) for n in range(4)])
    outs = [memoryview(bytearray(PAGE)) for _ in range(4)]
    got: list[list[bool] | None] = []

    async def copy() -> None:
        got.append(await cc.copy_pages(pool, b"f", 0, outs, 2))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(copy)
        await backend.peeked.wait()
        if meanwhile == "got and put anew":
            assert await cc.get_page(pool, b"f", 1, memoryview(bytearray(PAGE)))
        if meanwhile == "invalidated":
            await cc.invalidate_page(pool, b"f", 1)
        else:
            await cc.put_page(pool, b"f", 1, page(99))
        backend.answer.set()
    assert got == [[True, False, True, True]]
    assert [bytes(outs[n]) for n in (0, 2, 3)] == [bytes(page(n)) for n in (0, 2, 3)]
    assert cc.verify_failures == 0 and cc.peek_races == (meanwhile != "invalidated")
    out = memoryview(bytearray(PAGE))
    assert await cc.get_page(pool, b"f", 1, out) == (meanwhile != "invalidated")
    if meanwhile != "invalidated":
        assert bytes(out) == bytes(page(99))  # the newer copy was not dropped


# -- tmem backend ------------------------------------------------------------------


async def test_tmem_exclusive_get_and_lru_capacity() -> None:
    b = TmemBackend(2 * ENTRY)
    pool = await b.create_pool(None)
    out = memoryview(bytearray(PAGE))
    assert await b.put_page(pool, b"f", 0, page(1))
    assert await b.put_page(pool, b"f", 1, page(2))
    assert await b.put_page(pool, b"f", 2, page(3))  # evicts page 0
    assert not await b.get_page(pool, b"f", 0, out)
    assert await b.get_page(pool, b"f", 1, out) and bytes(out) == bytes(page(2))
    assert not await b.get_page(pool, b"f", 1, out)  # exclusive: gone after the hit
    s = b.stats()
    assert s["stored_pages"] == 1 and s["evicted_pages"] == 1 and s["succ_gets"] == 1


async def test_tmem_put_put_get_returns_the_second() -> None:
    b = TmemBackend(4 * ENTRY)
    pool = await b.create_pool(None)
    out = memoryview(bytearray(PAGE))
    await b.put_page(pool, b"f", 0, page(1))
    await b.put_page(pool, b"f", 0, page(2))
    assert await b.get_page(pool, b"f", 0, out) and bytes(out) == bytes(page(2))
    assert b.stats()["dup_puts_replaced"] == 1


async def test_tmem_invalidate_inode_and_pool() -> None:
    b = TmemBackend(8 * ENTRY)
    pool = await b.create_pool(None)
    for index in range(3):
        await b.put_page(pool, b"f", index, page(index))
    await b.put_page(pool, b"g", 0, page(9))
    await b.invalidate_inode(pool, b"f")
    assert b.stats()["stored_pages"] == 1
    await b.destroy_pool(pool)
    assert b.stats()["stored_pages"] == 0


# -- cleancache frontend: the rules hold whatever the backend does -----------------


class LyingBackend(TmemBackend):
    """Keeps pages after a get, returns stale or corrupt data, or raises: all at will."""

    exclusive_gets = True  # claims it, does not do it
    mode = "honest"

    async def get_page(self, pool: int, key: bytes, index: int, out: memoryview) -> bool:
        if self.mode == "raise":
            raise RuntimeError("injected fault")
        ram_pool = self._pools.get(pool)
        data = ram_pool.files.get(key, {}).get(index) if ram_pool is not None else None
        if data is None:
            return False
        out[:] = data if self.mode != "corrupt" else bytes(PAGE)
        return True  # never drops the copy

    async def put_page(self, pool: int, key: bytes, index: int, page: memoryview) -> bool:
        if self.mode == "raise":
            raise RuntimeError("injected fault")
        if self.mode == "ignore_dup" and index in self._pools[pool].files.get(key, {}):
            return True  # pretends to store the new version, keeps the old one
        return await super().put_page(pool, key, index, page)


async def frontend(mode: str) -> tuple[Cleancache, LyingBackend, int]:
    backend = LyingBackend(16 * ENTRY)
    cc = Cleancache(backend)
    pool = await cc.init_fs()
    backend.mode = mode
    return cc, backend, pool


async def test_frontend_makes_gets_exclusive_and_get_get_hold() -> None:
    cc, _, pool = await frontend("honest")
    out = memoryview(bytearray(PAGE))
    await cc.put_page(pool, b"f", 0, page(7))
    assert await cc.get_page(pool, b"f", 0, out) and bytes(out) == bytes(page(7))
    assert not await cc.get_page(pool, b"f", 0, out)  # the backend kept it; the frontend says miss
    assert (cc.succ_gets, cc.failed_gets) == (1, 1)


async def test_frontend_enforces_put_put_get() -> None:
    cc, _, pool = await frontend("ignore_dup")
    out = memoryview(bytearray(PAGE))
    await cc.put_page(pool, b"f", 0, page(1))
    await cc.put_page(pool, b"f", 0, page(2))
    assert not await cc.get_page(pool, b"f", 0, out)  # the old version is never returned
    assert cc.verify_failures == 1


async def test_frontend_rejects_corrupt_pages() -> None:
    cc, _, pool = await frontend("honest")
    out = memoryview(bytearray(PAGE))
    await cc.put_page(pool, b"f", 0, page(5))
    cc.backend.mode = "corrupt"  # type: ignore[attr-defined]
    assert not await cc.get_page(pool, b"f", 0, out)
    assert cc.verify_failures == 1 and cc.failed_gets == 1


async def test_frontend_contains_backend_exceptions() -> None:
    cc, backend, pool = await frontend("honest")
    out = memoryview(bytearray(PAGE))
    await cc.put_page(pool, b"f", 0, page(5))
    backend.mode = "raise"
    assert not await cc.get_page(pool, b"f", 0, out)
    await cc.put_page(pool, b"f", 1, page(6))
    assert cc.backend_errors == 2
    backend.mode = "honest"
    assert not await cc.get_page(pool, b"f", 1, out)  # the failed put stored nothing


async def test_frontend_invalidate_inode_reaches_backend() -> None:
    cc, backend, pool = await frontend("honest")
    out = memoryview(bytearray(PAGE))
    for index in range(4):
        await cc.put_page(pool, b"f", index, page(index))
    await cc.invalidate_inode(pool, b"f")
    assert backend.stats()["stored_pages"] == 0
    assert not await cc.get_page(pool, b"f", 2, out)
    await cc.invalidate_fs(pool)
    assert not await cc.get_page(pool, b"f", 2, out)


class BrokenPoolBackend(Backend):
    name = "broken"

    async def create_pool(self, uuid: bytes | None) -> int:
        raise ConnectionError("store unreachable")

    async def put_page(self, pool, key, index, page):  # type: ignore[no-untyped-def]
        raise AssertionError("never called for a placeholder pool")

    get_page = invalidate_page = invalidate_inode = destroy_pool = put_page  # type: ignore[assignment]

    def stats(self) -> dict[str, StatValue]:
        return {}


async def test_unreachable_backend_gives_a_placeholder_pool() -> None:
    cc = Cleancache(BrokenPoolBackend(PAGE))
    pool = await cc.init_fs()
    out = memoryview(bytearray(PAGE))
    await cc.put_page(pool, b"f", 0, page(1))
    assert not await cc.get_page(pool, b"f", 0, out)
    assert cc.stats()["cleancache.placeholder_pools"] == 1 and cc.backend_errors == 1


async def test_shared_pool_uuid_must_be_16_bytes() -> None:
    cc = Cleancache(TmemBackend(PAGE))
    with pytest.raises(ValueError):
        await cc.init_shared_fs(b"\x01" * 4)


# -- runs of pages: one backend call, the same rules -------------------------------------


class CountingTmem(TmemBackend):
    """tmem that counts its calls (it keeps tmem's own run methods)."""

    def __init__(self, capacity: int) -> None:
        super().__init__(capacity)
        self.calls: Counter[str] = Counter()

    async def get_pages(self, pool: int, key: bytes, first: int, outs: list[memoryview]) -> list[bool]:
        self.calls["get_pages"] += 1
        self.calls["pages asked"] += len(outs)
        return await super().get_pages(pool, key, first, outs)

    async def put_pages(self, pool: int, pages: list[tuple[bytes, int, memoryview]]) -> list[bool]:
        self.calls["put_pages"] += 1
        return await super().put_pages(pool, pages)


async def test_a_run_of_pages_is_one_backend_call_and_gets_stay_exclusive() -> None:
    backend = CountingTmem(64 * ENTRY)
    cc = Cleancache(backend)
    pool = await cc.init_fs()
    await cc.put_pages(pool, [(b"f", n, page(n)) for n in range(8) if n != 5])
    assert backend.calls == {"put_pages": 1} and cc.puts == 7
    outs = [memoryview(bytearray(PAGE)) for _ in range(8)]
    hits = await cc.get_pages(pool, b"f", 0, outs)
    # Page 5 was never put: the frontend does not ask for it, so two runs, two calls.
    assert hits == [n != 5 for n in range(8)] and backend.calls["get_pages"] == 2
    assert all(bytes(outs[n]) == bytes(page(n)) for n in range(8) if n != 5)
    assert (cc.succ_gets, cc.failed_gets) == (7, 1)
    assert await cc.get_pages(pool, b"f", 0, outs) == [False] * 8  # used up: get-get
    assert backend.calls["get_pages"] == 2 and backend.stats()["stored_pages"] == 0


async def test_a_run_keeps_the_rules_on_a_backend_that_lies() -> None:
    """LyingBackend customises get_page and put_page: runs go through them page by page,
    and the frontend still refuses kept copies, old versions and corrupt pages."""
    assert LyingBackend.get_pages is Backend.get_pages and LyingBackend.put_pages is Backend.put_pages
    cc, backend, pool = await frontend("honest")
    outs = [memoryview(bytearray(PAGE)) for _ in range(4)]
    await cc.put_pages(pool, [(b"f", n, page(n + 1)) for n in range(4)])
    assert await cc.get_pages(pool, b"f", 0, outs) == [True] * 4
    assert await cc.get_pages(pool, b"f", 0, outs) == [False] * 4  # the backend kept them all
    await cc.put_pages(pool, [(b"f", n, page(n + 1)) for n in range(4)])
    backend.mode = "corrupt"
    assert await cc.get_pages(pool, b"f", 0, outs) == [False] * 4
    assert cc.verify_failures == 4
    backend.mode = "raise"
    await cc.put_pages(pool, [(b"f", n, page(10 + n)) for n in range(4)])
    backend.mode = "honest"
    assert await cc.get_pages(pool, b"f", 0, outs) == [False] * 4  # a failed run stored nothing


async def test_tracing_observes_and_never_changes_a_requests_path(tmp_path: Path) -> None:
    """The same reads with and without -o trace: every counter equal (the sequential bypass
    included), and the trace names each page cache miss and cleancache get that happened."""
    from fusefs.tracing import Tracer

    data = os.urandom(512 * PAGE)
    (tmp_path / "f").write_bytes(data)
    runs = []
    for traced in (False, True):
        fd = os.open(tmp_path / "f", os.O_RDONLY)
        try:
            cc = Cleancache(TmemBackend(1024 * ENTRY))
            dp = DataPath(PageCache(64 * PAGE), cc, await cc.init_fs())
            trace = tmp_path / "trace"
            if traced:
                cc.tracer = dp.pc.tracer = Tracer(str(trace), str(tmp_path))
            cached, _ = await dp.open_file(b"f", fd)
            for _scan in range(3):
                for offset in range(0, len(data), 32 * PAGE):
                    assert await dp.read(cached, fd, offset, 32 * PAGE) == data[offset : offset + 32 * PAGE]
            for index in (3, 3, 400, 7):
                assert await dp.read(cached, fd, index * PAGE, PAGE) == data[index * PAGE : (index + 1) * PAGE]
            runs.append({**dp.stats(), **cc.stats()})
            if cc.tracer is not None:
                cc.tracer.close()
        finally:
            os.close(fd)
    untraced, traced_stats = runs
    assert untraced["pagecache.bypassed"] > 0 and traced_stats == untraced
    ops = [line.split()[1] for line in (tmp_path / "trace").read_text().splitlines() if not line.startswith("#")]
    assert ops.count("miss") == untraced["pagecache.misses"] and ops.count("hit") == untraced["pagecache.hits"]
    assert ops.count("get+") == untraced["succ_gets"] and ops.count("get-") == untraced["failed_gets"]
