"""What the in-memory backends share: pools, handles, byte-bounded capacity, eviction.

tmem, zcache and dedup differ only in how a page is stored (`encode`,
`decode`, `release`); this base keeps the rest identical: private pools
have exclusive gets, shared pools keep the page and refresh it, a duplicate
put replaces or flushes the old copy, capacity (`cc_size`) is enforced in
bytes actually held on every put by evicting with the `cc_policy` policy,
and an evicted page can spill to the next backend of a chain.

Persistent pools (frontswap's) share cc_size with the ephemeral ones, but
their entries never enter the eviction policy: eviction, whoever asks for
it, only ever finds ephemeral pages. A put of either kind is refused at
once when it would not fit even with every ephemeral page gone.
"""

from __future__ import annotations

import abc
from collections.abc import Awaitable, Callable
from typing import ClassVar

from backends.base import Backend, OptionSpec, StatValue, check_memory_size
from backends.eviction import POLICIES, make_policy
from backends.host import HOST_OPTIONS
from backends.page import PAGE_SIZE, PagePut

Spill = Callable[[int, bytes, int, bytes], Awaitable[None]]
Spilled = tuple[int, bytes, int, bytes]  # an evicted page for the next member of a chain


def parse_policy(text: str) -> str:
    if text not in POLICIES:
        raise ValueError(f"unknown policy (known: {', '.join(POLICIES)})")
    return text


class RamPool:
    __slots__ = ("files", "keeps", "persistent", "shared")

    def __init__(self, shared: bool, persistent: bool = False) -> None:
        self.shared = shared
        self.persistent = persistent  # its entries are not in the eviction policy
        self.keeps = shared or persistent  # gets leave the page (one test on the get path)
        self.files: dict[bytes, dict[int, object]] = {}


class RamBackend(Backend):
    options: ClassVar[dict[str, OptionSpec]] = {
        "cc_policy": OptionSpec(parse_policy, f"pool eviction policy: {', '.join(POLICIES)}; default lru"),
        **HOST_OPTIONS,
    }
    # Bytes each stored entry costs besides its payload: the handle tuple,
    # the dict slots and the policy's node (tests/test_backends.py
    # measures it with tracemalloc).
    ENTRY_OVERHEAD: ClassVar[int] = 256
    awaits_io: ClassVar[bool] = False
    peeks: ClassVar[bool] = True
    persistent_pools: ClassVar[bool] = True
    # For policies that size themselves in keys.
    expected_entry_bytes: ClassVar[int] = PAGE_SIZE

    def __init__(self, capacity: int, cc_policy: str = "lru", **options: object) -> None:
        super().__init__(capacity, **options)
        self._pools: dict[int, RamPool] = {}
        self._next_pool = 0
        self._policy = make_policy(cc_policy, self._policy_keys(capacity))
        self.spill: Spill | None = None  # set by a chain: where evicted pages go
        self.stored_pages = 0
        self.persistent_pages = 0
        self.persistent_held = 0  # the part of `held` that persistent entries take: eviction cannot free it
        self.held = 0  # payload bytes + ENTRY_OVERHEAD per entry: what cc_size bounds
        self.held_max = 0  # its high-water mark since the last reset_stats (zram's mem_used_max)
        self.reset_stats()

    def _policy_keys(self, capacity: int) -> int:
        """The policy's size in keys for `capacity` bytes (entries of the expected size)."""
        return max(1, capacity // (self.expected_entry_bytes + self.ENTRY_OVERHEAD))

    def __init_subclass__(cls, **kwargs: object) -> None:
        """A subclass that customises get_page or put_page (a plugin, a fault injector) gets
        the plain loops for runs of pages too, so that every page goes through its method."""
        super().__init_subclass__(**kwargs)
        if "get_page" in cls.__dict__ and "get_pages" not in cls.__dict__:
            cls.get_pages = Backend.get_pages  # type: ignore[method-assign]
            if "peek_pages" not in cls.__dict__:
                cls.peeks = False  # a peek would go around its get_page
        if "put_page" in cls.__dict__ and "put_pages" not in cls.__dict__:
            cls.put_pages = Backend.put_pages  # type: ignore[method-assign]

    def reset_stats(self) -> None:
        self.puts = self.succ_gets = self.failed_gets = self.invalidates = 0
        self.evicted_pages = self.dup_puts_replaced = self.dup_puts_flushed = 0
        self.rejected_puts = self.corrupt_pages = self.pool_limit_hit = 0
        self.held_max = self.held

    # -- what a subclass decides ---------------------------------------------------

    @abc.abstractmethod
    def encode(self, page: memoryview) -> object | None:
        """The entry to store for a page, or None to refuse it."""

    @abc.abstractmethod
    def decode(self, entry: object, out: memoryview) -> bool:
        """Fill `out` from an entry; False if the entry turns out to be corrupt."""

    @abc.abstractmethod
    def charge(self, entry: object) -> int:
        """Payload bytes newly held by storing this entry."""

    @abc.abstractmethod
    def release(self, entry: object) -> int:
        """Forget an entry; payload bytes freed by doing so."""

    def moved_out(self, pool: int, key: bytes, index: int, entry: object, page: memoryview) -> None:
        """An exclusive get moved this entry's page back to the page cache (zcache keeps its block)."""

    # -- the Backend interface --------------------------------------------------------

    async def create_pool(self, uuid: bytes | None) -> int:
        pool = self._next_pool
        self._next_pool += 1
        self._pools[pool] = RamPool(uuid is not None)
        return pool

    async def create_persistent_pool(self) -> int:
        pool = self._next_pool
        self._next_pool += 1
        self._pools[pool] = RamPool(False, persistent=True)
        return pool

    async def put_page(self, pool: int, key: bytes, index: int, page: memoryview) -> bool:
        spilled: list[Spilled] = []
        stored = self._put(pool, key, index, page, spilled)
        if spilled:
            await self._spill(spilled)
        return stored

    async def put_pages(self, pool: int, pages: list[PagePut]) -> list[bool]:
        spilled: list[Spilled] = []
        put = self._put
        stored = [put(pool, key, index, page, spilled) for key, index, page in pages]
        if spilled:
            await self._spill(spilled)
        return stored

    async def get_page(self, pool: int, key: bytes, index: int, out: memoryview) -> bool:
        return self._get(pool, key, index, out)

    async def get_pages(self, pool: int, key: bytes, first: int, outs: list[memoryview]) -> list[bool]:
        get = self._get
        return [get(pool, key, index, out) for index, out in enumerate(outs, first)]

    async def peek_pages(self, pool: int, key: bytes, first: int, outs: list[memoryview]) -> list[bool]:
        get = self._get
        return [get(pool, key, index, out, True) for index, out in enumerate(outs, first)]

    async def invalidate_page(self, pool: int, key: bytes, index: int) -> None:
        ram_pool = self._pools.get(pool)
        if ram_pool is not None and index in ram_pool.files.get(key, ()):
            self.invalidates += 1
            self._drop(pool, ram_pool, key, index)

    async def invalidate_inode(self, pool: int, key: bytes) -> None:
        ram_pool = self._pools.get(pool)
        if ram_pool is None:
            return
        for index in list(ram_pool.files.get(key, ())):
            self.invalidates += 1
            self._drop(pool, ram_pool, key, index)

    async def destroy_pool(self, pool: int) -> None:
        ram_pool = self._pools.pop(pool, None)
        if ram_pool is None:
            return
        for key, pages in list(ram_pool.files.items()):
            for index in list(pages):
                self._drop(pool, ram_pool, key, index)

    # -- internals ---------------------------------------------------------------------
    # put and get run without awaiting, so a run of pages costs one backend call;
    # evicted pages bound for the next member of a chain are collected in `spilled`.

    def _put(self, pool: int, key: bytes, index: int, page: memoryview, spilled: list[Spilled]) -> bool:
        self.puts += 1
        ram_pool = self._pools.get(pool)
        if ram_pool is None:
            self.rejected_puts += 1
            return False
        entry = self.encode(page)
        cost = self.charge(entry) + self.ENTRY_OVERHEAD if entry is not None else 0
        pages = ram_pool.files.get(key)
        if pages is not None and index in pages:
            self._drop(pool, ram_pool, key, index)  # put-put-get: the old copy never survives
            if entry is None:
                self.dup_puts_flushed += 1
            else:
                self.dup_puts_replaced += 1
        if entry is None:
            return False
        if self.held + cost > self.capacity:  # the pool is full (see pool_limit_hit in memory_stats)
            self.pool_limit_hit += 1
            if cost > self.capacity - self.persistent_held:  # would not fit with every ephemeral page gone
                self.release(entry)
                self.rejected_puts += 1
                return False
            while self.held + cost > self.capacity:
                self._evict_one(spilled)
        ram_pool.files.setdefault(key, {})[index] = entry
        if ram_pool.persistent:
            self.persistent_pages += 1
            self.persistent_held += cost
        else:
            self._policy.insert((pool, key, index))
        held = self.held = self.held + cost
        if held > self.held_max:
            self.held_max = held
        self.stored_pages += 1
        return True

    def _get(self, pool: int, key: bytes, index: int, out: memoryview, keep: bool = False) -> bool:
        """A get; exclusive on a private pool unless `keep` (a peek)."""
        ram_pool = self._pools.get(pool)
        pages = ram_pool.files.get(key) if ram_pool is not None else None
        entry = pages.get(index) if pages is not None else None
        if ram_pool is None or entry is None:
            self.failed_gets += 1
            return False
        if not self.decode(entry, out):
            self.corrupt_pages += 1
            self.failed_gets += 1
            self._drop(pool, ram_pool, key, index)
            return False
        if not (ram_pool.keeps or keep):
            self._policy.remove((pool, key, index))  # exclusive: the page moves back
            self._forget(ram_pool, key, index)
            self.moved_out(pool, key, index, entry, out)
        elif not ram_pool.persistent:
            self._policy.touch((pool, key, index))
        self.succ_gets += 1
        return True

    def _forget(self, ram_pool: RamPool, key: bytes, index: int) -> object:
        pages = ram_pool.files[key]
        entry = pages.pop(index)
        if not pages:
            del ram_pool.files[key]
        self.held -= self.release(entry) + self.ENTRY_OVERHEAD
        self.stored_pages -= 1
        return entry

    def _drop(self, pool: int, ram_pool: RamPool, key: bytes, index: int) -> None:
        if ram_pool.persistent:
            held = self.held
            self._forget(ram_pool, key, index)
            self.persistent_held -= held - self.held
            self.persistent_pages -= 1
        else:
            self._policy.remove((pool, key, index))
            self._forget(ram_pool, key, index)

    def _evict_one(self, spilled: list[Spilled]) -> None:
        pool, key, index = self._policy.victim()
        ram_pool = self._pools[pool]
        entry = ram_pool.files[key][index]
        if self.spill is not None:
            buf = bytearray(PAGE_SIZE)
            if self.decode(entry, memoryview(buf)):
                spilled.append((pool, key, index, bytes(buf)))
        self._forget(ram_pool, key, index)
        self.evicted_pages += 1

    def check_capacity(self, nbytes: int) -> None:
        check_memory_size("cc_size", nbytes)

    async def set_capacity(self, nbytes: int) -> None:
        """Evict the policy's victims (spilled down a chain, as any eviction is) until what is
        held fits or only persistent pages are left (they stay, and puts are refused until
        there is room); the policy's size follows."""
        self.check_capacity(nbytes)
        self.capacity = nbytes
        self._policy.resize(self._policy_keys(nbytes))
        spilled: list[Spilled] = []
        while self.held > nbytes and self.stored_pages > self.persistent_pages:
            self._evict_one(spilled)
        if spilled:
            await self._spill(spilled)

    async def _spill(self, spilled: list[Spilled]) -> None:
        """Hand evicted pages to the next member of a chain, once the put is done."""
        assert self.spill is not None  # nothing is collected otherwise
        for item in spilled:
            await self.spill(*item)

    def stats(self) -> dict[str, StatValue]:
        return memory_stats(self, self.stored_pages, self.held, self.held_max, self.persistent_pages,
                            self.persistent_held)


# Event counters every in-memory backend keeps under these attribute names.
EVENT_COUNTERS = ("puts", "succ_gets", "failed_gets", "invalidates", "evicted_pages", "dup_puts_replaced",
                  "dup_puts_flushed", "rejected_puts", "corrupt_pages", "pool_limit_hit")


def memory_stats(backend: Backend, stored_pages: int, held: int, held_max: int, persistent_pages: int,
                 persistent_bytes: int) -> dict[str, StatValue]:
    """What every in-memory backend shows, in the names of zcache, zswap, zram and Xen tmem.

    `pool_total_size_max` is the high-water mark of pool_total_size since the last
    reset_stats, which sets it to the size then (zram's mem_used_max). `pool_limit_hit`
    counts puts that found the pool full, as zswap counts stores that hit max_pool_percent:
    a put whose entry did not fit in what was left of cc_size. zswap refuses such a store
    and writes back in the background; these backends evict at once instead (the put is
    then stored), or refuse the entry if it is larger than what persistent pages leave of
    the pool (rejected_puts). Persistent pages count in every size, the high-water mark too.
    """
    return {
        "stored_pages": stored_pages,
        "persistent_pages": persistent_pages,
        "persistent_bytes": persistent_bytes,
        "ephemeral_pages": stored_pages - persistent_pages,
        "pool_total_size": held,
        "pool_total_size_max": held_max,
        "orig_data_size": stored_pages * PAGE_SIZE,
        "capacity_bytes": backend.capacity,
        **{name: getattr(backend, name) for name in EVENT_COUNTERS},
    }
