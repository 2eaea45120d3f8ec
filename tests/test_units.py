"""Unit tests that make the rules plain: page cache, tmem backend, cleancache frontend."""

from __future__ import annotations

import pytest

from backends.base import Backend, StatValue
from backends.tmem import TmemBackend
from fusefs.cleancache import Cleancache
from fusefs.eviction import POLICIES
from fusefs.pagecache import CachedFile, PageCache

PAGE = 4096
ENTRY = PAGE + TmemBackend.ENTRY_OVERHEAD  # what one stored page costs tmem


def page(byte: int) -> memoryview:
    return memoryview(bytes([byte]) * PAGE)


# -- page cache --------------------------------------------------------------------


def test_pagecache_is_bounded_and_evicts_least_recently_used() -> None:
    pc = PageCache(3 * PAGE)
    f = CachedFile(b"k")
    for index in range(3):
        slot, evicted = pc.take_slot()
        assert evicted is None
        pc.install(f, index, slot)
    assert pc.lookup(f, 0) is not None  # 0 is now the most recent
    slot, evicted = pc.take_slot()
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
            slot, evicted = pc.take_slot()
            if evicted is not None:
                assert evicted.file.pages.get(evicted.index) is None
            pc.install(f, index, slot)
        assert pc.pages <= 8
    assert pc.pages == 8 and pc.hits + pc.misses == 200


def test_pagecache_drop_file_frees_slots() -> None:
    pc = PageCache(4 * PAGE)
    f = CachedFile(b"k")
    for index in range(4):
        pc.install(f, index, pc.take_slot()[0])
    assert pc.drop_file(f) == 4
    assert pc.pages == 0 and not f.pages
    assert pc.lookup(f, 0) is None


def test_pagecache_evict_all_returns_data_still_readable() -> None:
    pc = PageCache(2 * PAGE)
    f = CachedFile(b"k")
    for index in range(2):
        slot = pc.take_slot()[0]
        pc.slot_view(slot)[:] = page(index + 1)
        pc.install(f, index, slot)
    evicted = pc.evict_all()
    assert [e.index for e in evicted] == [0, 1]
    assert bytes(pc.slot_view(evicted[1].slot)) == bytes(page(2))
    for e in evicted:
        pc.release_slot(e.slot)
    assert pc.pages == 0


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
