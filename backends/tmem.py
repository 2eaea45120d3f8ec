"""The `tmem` backend: raw pages in process memory, bounded by cc_size, LRU.

Plain RAM, like Xen tmem without compression: the reference backend that
others are compared with.
"""

from __future__ import annotations

from backends.base import Backend, StatValue
from fusefs import PAGE_SIZE
from fusefs.eviction import LRU

Handle = tuple[int, bytes, int]


class TmemBackend(Backend):
    name = "tmem"
    summary = "raw pages in process memory, bounded by cc_size, LRU eviction"

    def __init__(self, capacity: int, **options: object) -> None:
        super().__init__(capacity, **options)
        self.max_pages = capacity // PAGE_SIZE
        self._pools: dict[int, dict[bytes, dict[int, bytes]]] = {}
        self._lru: LRU[Handle] = LRU()
        self._next_pool = 0
        self.stored_pages = 0
        self.reset_stats()

    def reset_stats(self) -> None:
        self.puts = self.succ_gets = self.failed_gets = self.invalidates = 0
        self.evicted_pages = self.dup_puts_replaced = self.rejected_puts = 0

    async def create_pool(self, uuid: bytes | None) -> int:
        pool = self._next_pool
        self._next_pool += 1
        self._pools[pool] = {}
        return pool

    async def put_page(self, pool: int, key: bytes, index: int, page: memoryview) -> bool:
        self.puts += 1
        files = self._pools.get(pool)
        if files is None or self.max_pages == 0:
            self.rejected_puts += 1
            return False
        old = files.get(key, {}).get(index)
        if old is not None:
            self.dup_puts_replaced += 1
            self._lru.touch((pool, key, index))
        else:
            while self.stored_pages >= self.max_pages:
                self._evict_one()  # may empty and remove this very file's dict
            self._lru.insert((pool, key, index))
            self.stored_pages += 1
        files.setdefault(key, {})[index] = bytes(page)
        return True

    async def get_page(self, pool: int, key: bytes, index: int, out: memoryview) -> bool:
        pages = self._pools.get(pool, {}).get(key)
        data = pages.pop(index, None) if pages is not None else None
        if pages is None or data is None:
            self.failed_gets += 1
            return False
        self._forget(pool, key, index, pages)  # exclusive get: the copy moves back
        out[:] = data
        self.succ_gets += 1
        return True

    async def invalidate_page(self, pool: int, key: bytes, index: int) -> None:
        pages = self._pools.get(pool, {}).get(key)
        if pages is not None and pages.pop(index, None) is not None:
            self.invalidates += 1
            self._forget(pool, key, index, pages)

    async def invalidate_inode(self, pool: int, key: bytes) -> None:
        pages = self._pools.get(pool, {}).pop(key, None)
        for index in pages or ():
            self._lru.remove((pool, key, index))
            self.stored_pages -= 1
            self.invalidates += 1

    async def destroy_pool(self, pool: int) -> None:
        for key in list(self._pools.get(pool, ())):
            await self.invalidate_inode(pool, key)
        self._pools.pop(pool, None)

    def _forget(self, pool: int, key: bytes, index: int, pages: dict[int, bytes]) -> None:
        self._lru.remove((pool, key, index))
        self.stored_pages -= 1
        if not pages:
            del self._pools[pool][key]

    def _evict_one(self) -> None:
        pool, key, index = self._lru.victim()
        pages = self._pools[pool][key]
        del pages[index]
        self.stored_pages -= 1
        self.evicted_pages += 1
        if not pages:
            del self._pools[pool][key]

    def stats(self) -> dict[str, StatValue]:
        return {
            "stored_pages": self.stored_pages,
            "pool_total_size": self.stored_pages * PAGE_SIZE,
            "max_pages": self.max_pages,
            "puts": self.puts,
            "succ_gets": self.succ_gets,
            "failed_gets": self.failed_gets,
            "invalidates": self.invalidates,
            "evicted_pages": self.evicted_pages,
            "dup_puts_replaced": self.dup_puts_replaced,
            "rejected_puts": self.rejected_puts,
        }
