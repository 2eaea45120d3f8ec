"""What the unit tests of the page cache, the cleancache frontend and the data path share."""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping

from backends.base import StatValue
from backends.tmem import TmemBackend
from fusefs.pagecache import Eviction, PageCache

PAGE = 4096
ENTRY = PAGE + TmemBackend.ENTRY_OVERHEAD  # what one stored page costs tmem


def counts(stats: Mapping[str, StatValue]) -> dict[str, int | float]:
    """The numeric counters of a backend's (or store's) stats(), for tests to compare (the others are names)."""
    return {k: v for k, v in stats.items() if not isinstance(v, str)}


def page(byte: int) -> memoryview:
    return memoryview(bytes([byte]) * PAGE)


def take_slot(pc: PageCache) -> tuple[int, Eviction | None]:
    """One slot, and the page evicted to free it if the cache was full."""
    slots, evicted = pc.take_slots(1)
    return slots[0], evicted[0] if evicted else None


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
