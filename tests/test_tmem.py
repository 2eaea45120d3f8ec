"""Unit tests of the tmem backend: exclusive gets, LRU within its capacity, put-put-get, invalidation."""

from __future__ import annotations

from backends.tmem import TmemBackend
from tests.unithelpers import ENTRY, PAGE, page


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
