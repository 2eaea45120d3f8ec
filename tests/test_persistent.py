"""Persistent pools (frontswap's) on the backend objects: tmem, zcache, dedup, chains.

Persistent and ephemeral pages share cc_size; a store may evict ephemeral pages,
nothing ever evicts a persistent one (an ephemeral put, a resize), loads leave the
page, and only invalidate_page / invalidate_inode / destroy_pool drop it. The
frontswap frontend and its mounts are tested elsewhere; these pin the backend half.
"""

from __future__ import annotations

import random
from collections.abc import Callable

import pytest

from backends.base import Backend
from backends.chain import ChainBackend
from backends.cluster import ClusterBackend
from backends.dedup import DedupBackend
from backends.ram import RamBackend
from backends.tmem import TmemBackend
from backends.zcache import ZcacheBackend
from fusefs import counters

PAGE = 4096
OVERHEAD = RamBackend.ENTRY_OVERHEAD
ROOM = 16 * (PAGE + OVERHEAD)  # 16 raw pages in tmem; dedup's arrays take a little of it

MAKERS: dict[str, Callable[[int], Backend]] = {
    "tmem": TmemBackend,
    "zcache": lambda capacity: ZcacheBackend(capacity, zc_poor="raw"),
    "dedup": DedupBackend,
}
KINDS = pytest.mark.parametrize("kind", list(MAKERS))


def noise(seed: int) -> memoryview:
    """An incompressible page, distinct for each seed."""
    return memoryview(random.Random(seed).randbytes(PAGE))


def text(seed: int) -> memoryview:
    """A compressible page, distinct for each seed."""
    line = f"page {seed}: swap through transcendent memory\n".encode()
    return memoryview((line * (PAGE // len(line) + 1))[:PAGE])


async def load(backend: Backend, pool: int, key: bytes, index: int) -> bytes | None:
    out = bytearray(PAGE)
    return bytes(out) if await backend.get_page(pool, key, index, memoryview(out)) else None


def stats(backend: Backend) -> dict:  # type: ignore[type-arg]
    return backend.stats()


async def fill_persistent(backend: Backend, pool: int, make: Callable[[int], memoryview] = noise) -> int:
    """Store persistent pages 0, 1, ... until one is refused; how many were stored."""
    n = 0
    while await backend.put_page(pool, b"swap", n, make(n)):
        n += 1
        assert n < 10_000
    return n


async def check_persistent(backend: Backend, pool: int, n: int, make: Callable[[int], memoryview] = noise) -> None:
    for i in range(n):
        assert await load(backend, pool, b"swap", i) == bytes(make(i)), i


@KINDS
async def test_store_load_overwrite_and_non_exclusive_loads(kind: str) -> None:
    backend = MAKERS[kind](ROOM)
    assert backend.persistent_pools
    pool = await backend.create_persistent_pool()
    assert await backend.put_page(pool, b"swap", 3, noise(1))
    for _ in range(3):  # a swap slot may be read again until it is invalidated
        assert await load(backend, pool, b"swap", 3) == bytes(noise(1))
    outs = [memoryview(bytearray(PAGE)) for _ in range(2)]
    assert await backend.get_pages(pool, b"swap", 3, outs) == [True, False]
    assert await backend.peek_pages(pool, b"swap", 3, outs[:1]) == [True]
    assert await backend.put_page(pool, b"swap", 3, noise(2))  # put-put-get: the second copy wins
    assert await load(backend, pool, b"swap", 3) == bytes(noise(2))
    s = stats(backend)
    assert s["persistent_pages"] == s["stored_pages"] == 1 and s["ephemeral_pages"] == 0
    assert s["dup_puts_replaced"] == 1


@KINDS
async def test_ephemeral_private_gets_stay_exclusive(kind: str) -> None:
    backend = MAKERS[kind](ROOM)
    await backend.create_persistent_pool()
    pool = await backend.create_pool(None)
    assert await backend.put_page(pool, b"file", 0, noise(1))
    assert await load(backend, pool, b"file", 0) == bytes(noise(1))
    assert await load(backend, pool, b"file", 0) is None


@KINDS
async def test_a_store_evicts_ephemeral_pages_never_persistent_ones(kind: str) -> None:
    backend = MAKERS[kind](ROOM)
    swap = await backend.create_persistent_pool()
    cache = await backend.create_pool(None)
    for i in range(40):  # more than fit: the pool is full of ephemeral pages
        await backend.put_page(cache, b"file", i, noise(100 + i))
    assert stats(backend)["ephemeral_pages"] > 0
    n = await fill_persistent(backend, swap)  # each store evicts what it needs, then the pool is full
    s = stats(backend)
    assert n >= 12 and s["persistent_pages"] == n and s["ephemeral_pages"] == 0
    assert s["evicted_pages"] >= 40 - 16 + n - 2 and s["pool_limit_hit"] > 0
    assert s["pool_total_size"] <= ROOM and s["rejected_puts"] == 1
    await check_persistent(backend, swap, n)


@KINDS
async def test_an_ephemeral_put_never_evicts_a_persistent_page(kind: str) -> None:
    backend = MAKERS[kind](ROOM)
    swap = await backend.create_persistent_pool()
    cache = await backend.create_pool(None)
    n = await fill_persistent(backend, swap)
    await backend.invalidate_page(swap, b"swap", n - 1)  # room for one ephemeral page
    for i in range(20):  # each takes the room the one before it had, or is refused
        await backend.put_page(cache, b"file", i, noise(100 + i))
    s = stats(backend)
    assert s["persistent_pages"] == n - 1 and s["ephemeral_pages"] <= 1 and s["pool_total_size"] <= ROOM
    await check_persistent(backend, swap, n - 1)
    assert await backend.put_page(swap, b"swap", n - 1, noise(n - 1))  # evicts the ephemeral page back
    s = stats(backend)
    assert s["persistent_pages"] == n and s["ephemeral_pages"] == 0
    assert not await backend.put_page(cache, b"file", 99, noise(99))
    await check_persistent(backend, swap, n)


@KINDS
async def test_set_capacity_below_the_persistent_pages_keeps_them_all(kind: str) -> None:
    backend = MAKERS[kind](2 * ROOM)
    swap = await backend.create_persistent_pool()
    cache = await backend.create_pool(None)
    for i in range(8):
        assert await backend.put_page(swap, b"swap", i, noise(i))
        assert await backend.put_page(cache, b"file", i, noise(100 + i))
    await backend.set_capacity(2 * PAGE)
    s = stats(backend)
    assert s["persistent_pages"] == 8 and s["ephemeral_pages"] == 0 and s["evicted_pages"] == 8
    assert s["pool_total_size"] > 2 * PAGE and s["pool_total_size_max"] >= s["pool_total_size"]
    await check_persistent(backend, swap, 8)
    assert not await backend.put_page(cache, b"file", 0, noise(100))  # no room until the pages go
    assert not await backend.put_page(swap, b"swap", 8, noise(8))
    assert not await backend.put_page(swap, b"swap", 0, noise(50))  # a refused overwrite: no old copy left
    assert await load(backend, swap, b"swap", 0) is None
    assert stats(backend)["persistent_pages"] == 7
    await backend.set_capacity(2 * ROOM)
    assert await backend.put_page(swap, b"swap", 0, noise(0))
    await check_persistent(backend, swap, 8)


@KINDS
async def test_invalidate_page_inode_and_destroy_pool_drop_persistent_pages(kind: str) -> None:
    backend = MAKERS[kind](ROOM)
    swap = await backend.create_persistent_pool()
    other = await backend.create_persistent_pool()
    for i in range(4):
        assert await backend.put_page(swap, b"swap", i, noise(i))
        assert await backend.put_page(swap, b"area2", i, noise(10 + i))
        assert await backend.put_page(other, b"swap", i, noise(20 + i))
    await backend.invalidate_page(swap, b"swap", 1)
    assert await load(backend, swap, b"swap", 1) is None
    assert await load(backend, swap, b"swap", 2) == bytes(noise(2))
    await backend.invalidate_inode(swap, b"area2")
    assert all([await load(backend, swap, b"area2", i) is None for i in range(4)])
    s = stats(backend)
    assert s["persistent_pages"] == 7 and s["invalidates"] == 5
    await backend.destroy_pool(swap)
    s = stats(backend)
    assert s["persistent_pages"] == s["stored_pages"] == 4
    await backend.destroy_pool(other)
    s = stats(backend)
    assert s["persistent_pages"] == s["stored_pages"] == s["persistent_bytes"] == s["pool_total_size"] == 0


async def test_zcache_compresses_persistent_pages() -> None:
    backend = ZcacheBackend(ROOM)
    swap = await backend.create_persistent_pool()
    for i in range(4):
        assert await backend.put_page(swap, b"swap", i, text(i))
    assert await backend.put_page(swap, b"swap", 4, memoryview(bytes(PAGE)))
    s = stats(backend)
    assert s["persistent_pages"] == 5 and s["same_filled_pages"] == 1 and s["raw_pages"] == 0
    assert s["persistent_bytes"] == s["pool_total_size"] == s["compr_data_size"] + 5 * OVERHEAD
    assert s["compr_data_size"] < 4 * PAGE // 4
    await check_persistent(backend, swap, 4, text)
    assert await load(backend, swap, b"swap", 4) == bytes(PAGE)


async def test_zcache_poor_pages_are_refused_or_kept_raw() -> None:
    reject = ZcacheBackend(ROOM, zc_poor="reject")
    swap = await reject.create_persistent_pool()
    assert await reject.put_page(swap, b"swap", 0, text(0))
    assert not await reject.put_page(swap, b"swap", 0, noise(0))  # refused, and the old copy is gone
    assert await load(reject, swap, b"swap", 0) is None
    s = stats(reject)
    assert s["reject_compress_poor"] == 1 and s["persistent_pages"] == 0 and s["dup_puts_flushed"] == 1
    raw = ZcacheBackend(ROOM, zc_poor="raw")
    swap = await raw.create_persistent_pool()
    assert await raw.put_page(swap, b"swap", 0, noise(0))
    s = stats(raw)
    assert s["raw_pages"] == 1 and s["persistent_bytes"] == PAGE + OVERHEAD
    assert await load(raw, swap, b"swap", 0) == bytes(noise(0))


async def test_dedup_shares_a_copy_and_evicting_the_ephemeral_handle_keeps_it() -> None:
    backend = DedupBackend(ROOM)
    cache = await backend.create_pool(None)
    swap = await backend.create_persistent_pool()
    assert await backend.put_page(cache, b"file", 0, noise(1))  # the oldest: the first victim (lru)
    assert await backend.put_page(swap, b"swap", 0, noise(1))
    s = stats(backend)
    assert s["unique_pages"] == 1 and s["stored_pages"] == 2 and s["duplicate_entry"] == 1
    assert s["persistent_pages"] == 1 and s["ephemeral_pages"] == 1 and s["persistent_bytes"] > PAGE
    pinned = s["persistent_bytes"]
    i = 1
    while stats(backend)["evicted_pages"] == 0:
        assert await backend.put_page(cache, b"file", i, noise(100 + i))
        i += 1
    assert await load(backend, cache, b"file", 0) is None  # the ephemeral handle went
    assert await load(backend, swap, b"swap", 0) == bytes(noise(1))  # its bytes stayed
    s = stats(backend)
    assert s["persistent_pages"] == 1 and s["persistent_bytes"] == pinned
    assert s["unique_pages"] == s["ephemeral_pages"] + 1  # the copy only the persistent page uses now
    await backend.invalidate_page(swap, b"swap", 0)
    assert stats(backend)["persistent_bytes"] == 0 and stats(backend)["persistent_pages"] == 0


async def test_dedup_copy_of_a_persistent_page_shared_by_an_ephemeral_put() -> None:
    backend = DedupBackend(ROOM)
    swap = await backend.create_persistent_pool()
    cache = await backend.create_pool(None)
    n = await fill_persistent(backend, swap)
    assert await backend.put_page(cache, b"file", 0, noise(0))  # shares a pinned copy: costs no payload
    assert await backend.put_page(cache, b"file", 1, noise(n + 5)) is False  # a new copy: no room
    await backend.set_capacity(PAGE)  # the shared ephemeral handle is evicted, the copy stays
    s = stats(backend)
    assert s["ephemeral_pages"] == 0 and s["persistent_pages"] == n and s["unique_pages"] == n
    await check_persistent(backend, swap, n)
    await backend.destroy_pool(swap)
    assert stats(backend)["pool_total_size"] == 0


async def test_dedup_corrupt_copy_drops_persistent_handles_too() -> None:
    backend = DedupBackend(ROOM, dd_compress="lz4")
    swap = await backend.create_persistent_pool()
    assert await backend.put_page(swap, b"swap", 0, text(0))
    backend._data[1] = b"\xff" * 40  # the one copy: a broken lz4 block
    assert await load(backend, swap, b"swap", 0) is None
    s = stats(backend)
    assert s["corrupt_pages"] == 1 and s["persistent_pages"] == 0 and s["pool_total_size"] == 0


async def test_chain_store_goes_to_the_first_member_that_takes_it() -> None:
    first, second = ZcacheBackend(ROOM, zc_poor="reject"), TmemBackend(ROOM)
    chain = ChainBackend([first, second])
    assert chain.persistent_pools
    swap = await chain.create_persistent_pool()
    assert await chain.put_page(swap, b"swap", 0, noise(0))  # zcache refuses it: tmem takes it
    assert stats(second)["persistent_pages"] == 1 and stats(first)["persistent_pages"] == 0
    assert await chain.put_page(swap, b"swap", 0, text(0))  # zcache takes it: tmem's copy goes
    assert stats(second)["persistent_pages"] == 0 and stats(first)["persistent_pages"] == 1
    assert await load(chain, swap, b"swap", 0) == bytes(text(0))
    assert await load(chain, swap, b"swap", 0) == bytes(text(0))  # loads leave it
    await second.set_capacity(PAGE)  # now nobody takes a poor page
    assert not await chain.put_page(swap, b"swap", 0, noise(0))  # refused: invalidated in every member
    assert await load(chain, swap, b"swap", 0) is None
    assert stats(first)["stored_pages"] == stats(second)["stored_pages"] == 0


async def test_chain_a_store_spills_ephemeral_pages_and_keeps_persistent_ones() -> None:
    first, second = TmemBackend(4 * (PAGE + OVERHEAD)), TmemBackend(ROOM)
    chain = ChainBackend([first, second])
    cache = await chain.create_pool(None)
    swap = await chain.create_persistent_pool()
    for i in range(4):
        assert await chain.put_page(cache, b"file", i, noise(100 + i))
    for i in range(6):  # four fill the first member, evicting its pages down the chain; two go on
        assert await chain.put_page(swap, b"swap", i, noise(i))
    assert stats(first)["persistent_pages"] == 4 and stats(first)["ephemeral_pages"] == 0
    assert stats(second)["persistent_pages"] == 2 and stats(second)["ephemeral_pages"] == 4
    await check_persistent(chain, swap, 6)
    for i in range(4):  # the spilled pages are still there, in the second member
        assert await load(chain, cache, b"file", i) == bytes(noise(100 + i))
    await chain.invalidate_inode(swap, b"swap")
    assert stats(first)["stored_pages"] == stats(second)["stored_pages"] == 0


async def test_cluster_and_chains_with_it_have_no_persistent_pools() -> None:
    cluster = ClusterBackend(1 << 20)
    assert not cluster.persistent_pools
    with pytest.raises(NotImplementedError):
        await cluster.create_persistent_pool()
    chain = ChainBackend([TmemBackend(ROOM), ClusterBackend(1 << 20)])
    assert not chain.persistent_pools
    with pytest.raises(NotImplementedError):
        await chain.create_persistent_pool()


@KINDS
async def test_stats_show_persistent_and_ephemeral_pages_apart(kind: str) -> None:
    backend = MAKERS[kind](ROOM)
    swap = await backend.create_persistent_pool()
    cache = await backend.create_pool(None)
    for i in range(3):
        assert await backend.put_page(swap, b"swap", i, noise(i))
    for i in range(5):
        assert await backend.put_page(cache, b"file", i, noise(100 + i))
    s = stats(backend)
    assert (s["stored_pages"], s["persistent_pages"], s["ephemeral_pages"]) == (8, 3, 5)
    assert 3 * PAGE < s["persistent_bytes"] < s["pool_total_size"] <= s["pool_total_size_max"]
    if kind != "dedup":
        assert s["persistent_bytes"] == 3 * (PAGE + OVERHEAD) and s["pool_total_size"] == 8 * (PAGE + OVERHEAD)
    high = s["pool_total_size_max"]
    await backend.invalidate_inode(cache, b"file")
    backend.reset_stats()
    s = stats(backend)
    assert s["pool_total_size_max"] == s["pool_total_size"] < high and s["persistent_pages"] == 3
    for key in ("persistent_pages", "persistent_bytes", "ephemeral_pages"):
        info = counters.describe(f"backend.{kind}.{key}")
        assert info is not None and info.kind == "gauge"
