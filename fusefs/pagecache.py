"""The per-mount page cache: clean 4 KiB pages in one preallocated slab.

Pages live in fixed slots of an anonymous mmap, so the memory bound is
exact (cache_size, checked on every insert), installing a page allocates
nothing, and backing reads land in page-aligned buffers (O_DIRECT works).
Pages hang off CachedFile objects, which the data path keys by file key
(not by FUSE inode), so a kernel `forget` does not throw cached data away.

The cache itself never calls cleancache: `take_slot` hands back the
evicted page so the data path can `put` it before the slot is reused.

Page locks (the kernel's lock_page), for many requests in flight: a page
being filled (from the pool or SRC) or being put after eviction is in its
file's `locks`, not in `pages`: nobody evicts, puts or invalidates it, and
a reader of it waits for the lock instead of reading it again. A fill
installs its pages only if the file's `changes` did not move meanwhile (a
seqlock: every write, truncate or drop moves it at its start and its end,
and `changing` counts those in progress), so no page read before a change
completed is installed after it.

Resizing on a live mount (`grow`, `shrink`): the slab is mapped once at the
largest size it may grow to (`limit`: physical memory; anonymous memory
costs nothing until touched, and MAP_NORESERVE keeps it out of the
overcommit accounting), and capacity is a count of slots, so growing moves
nothing and no view of the slab is ever invalidated. Shrinking frees the
slots at and above the new capacity: an installed page there moves to a
free slot below (the data path evicts, with puts, until one is free); a slot
held by a fill or a put in flight stays `retiring` until it is given back
(the data path moves the seqlock of files with fills in flight when a shrink
ends, so none of those installs: each read is served around the cache).
Freed slots are handed back to the kernel (MADV_REMOVE: the slab is shared
anonymous memory), so the process really shrinks.
"""

from __future__ import annotations

import mmap
from collections import deque
from collections.abc import Iterable, ValuesView
from dataclasses import dataclass, field
from itertools import repeat

import trio

from backends.base import physical_memory
from backends.eviction import make_policy
from fusefs import PAGE_SIZE
from fusefs.tracing import Tracer

MAP_NORESERVE = 0x4000  # (Linux; the mmap module does not export it)


def _reserve(capacity: int, limit_bytes: int | None) -> tuple[mmap.mmap, int, str]:
    """The slab, mapped for as many slots as it may grow to (physical memory unless
    `limit_bytes` says otherwise, and never fewer than `capacity`), that number, and what
    bounds it. Where the kernel refuses to reserve that much address space (strict
    overcommit, RLIMIT_AS), just `capacity`: it cannot grow then."""
    limit = max(capacity, (physical_memory() if limit_bytes is None else limit_bytes) // PAGE_SIZE)
    reason = "this machine's memory" if limit_bytes is None else "the limit it was made with"
    if limit > capacity:
        try:
            return mmap.mmap(-1, limit * PAGE_SIZE, flags=mmap.MAP_SHARED | MAP_NORESERVE), limit, reason
        except OSError:
            reason = "the kernel would not reserve more address space for it"
    return mmap.mmap(-1, capacity * PAGE_SIZE), capacity, reason


class PageLock:
    """Held on the pages of one fill or one batch of puts; waiters park until it is released.
    One per operation, not per page, and the parking lot only once somebody waits."""

    __slots__ = ("_lot", "putting", "released")

    def __init__(self, putting: bool = False) -> None:
        self._lot: trio.lowlevel.ParkingLot | None = None
        self.putting = putting  # held over puts (else over a fill)
        self.released = False

    async def wait(self) -> None:
        if self.released:
            return
        if self._lot is None:
            self._lot = trio.lowlevel.ParkingLot()
        await self._lot.park()

    def release(self) -> None:
        self.released = True
        if self._lot is not None:
            self._lot.unpark_all()


def run_end(flags: list[bool], start: int, other: bool) -> int:
    """Where the run of equal flags from `start` ends: the first `other` after it, or the end
    (runs of pages a pool had or not, a frontswap area stored or not, a store refused)."""
    if start + 1 < len(flags):  # (a run of one, the random read, skips the search)
        try:
            return flags.index(other, start + 1)
        except ValueError:
            pass
    return len(flags)


@dataclass(eq=False, kw_only=True)
class FilePages:
    """A file's pages in the page cache (index -> slot), and those locked while filled or put
    (index -> lock): a locked page is not in `pages`; nobody evicts, puts or invalidates it."""

    pages: dict[int, int] = field(default_factory=dict)
    locks: dict[int, PageLock] = field(default_factory=dict)

    def slots(self) -> ValuesView[int]:
        """The slots of the cached pages."""
        return self.pages.values()

    def slots_of(self, first: int, last: int) -> list[int]:
        """The slots of pages first..last, every one of them cached."""
        return list(map(self.pages.__getitem__, range(first, last + 1)))

    def any_cached(self, first: int, last: int) -> bool:
        return not self.pages.keys().isdisjoint(range(first, last + 1))

    def cached_in(self, indexes: range) -> list[tuple[int, int]]:
        """(index, slot) of the cached pages among `indexes` (a large range over a file barely
        cached looks only at what is)."""
        pages = self.pages
        if len(indexes) <= len(pages):
            return [(index, pages[index]) for index in indexes if index in pages]
        return [(index, slot) for index, slot in pages.items() if index in indexes]

    def unheld_run(self, index: int, limit: int) -> int:
        """How many pages from `index` (neither cached nor locked) on, at most `limit`, are
        neither cached nor locked: one fill may take them all."""
        pages, locks = self.pages, self.locks
        count = 1
        while count < limit and index + count not in pages and index + count not in locks:
            count += 1
        return count

    def page_lock(self, index: int) -> PageLock | None:
        """The lock of a page being filled or put, else None."""
        return self.locks.get(index)

    @property
    def filling(self) -> bool:
        """Whether a fill holds some of the file's pages."""
        return any(not lock.putting for lock in self.locks.values())

    def lock_pages(self, indexes: Iterable[int], lock: PageLock) -> None:
        locks = self.locks
        for index in indexes:
            locks[index] = lock

    def unlock_pages(self, indexes: Iterable[int], lock: PageLock) -> None:
        locks = self.locks
        for index in indexes:
            if locks.get(index) is lock:
                del locks[index]

    async def settle(self, indexes: range | None = None) -> int:
        """Wait for the puts in flight of pages of `indexes` (None: of the whole file) to
        land, so that an invalidate comes after them; those starting meanwhile are not
        waited for, nor are fills (a change makes them install nothing). How many it
        waited for."""
        locks = self.locks
        if not locks:
            return 0
        if indexes is None:
            held = {lock for lock in locks.values() if lock.putting}
        else:
            held = {locks[i] for i in indexes if i in locks and locks[i].putting}
        for lock in held:
            await lock.wait()
        return len(held)


@dataclass(eq=False, kw_only=True)
class CloseToOpen:
    """Close-to-open, as NFS: SRC's (size, mtime_ns, ctime_ns) when this mount last saw the
    file (None after this mount's own writes, until a close stamps it again), and the
    handles open on it."""

    stamp: tuple[int, int, int] | None = None
    open_count: int = 0

    def add_handle(self) -> None:
        self.open_count += 1

    def drop_handle(self, stamp: tuple[int, int, int] | None = None) -> None:
        """A handle closed; `stamp` (SRC's, just before) is the one last seen if none was known
        (this mount wrote the file)."""
        self.open_count -= 1
        if stamp is not None and self.stamp is None:
            self.stamp = stamp

    def restamp(self, before: tuple[int, int, int], after: tuple[int, int, int]) -> None:
        """This mount moved SRC from `before` to `after`: still as last seen, if it was before."""
        if self.stamp == before:
            self.stamp = after


@dataclass(eq=False, kw_only=True)
class FileChanges:
    """What keeps a file's cached pages coherent with its changes while many requests are in
    flight: the change seqlock (`changes` moves at the start and the end of every change,
    `changing` counts those in progress), and the lock that serialises this mount's changes
    of the file (as the inode lock does)."""

    changes: int = 0
    changing: int = 0
    # Made when first needed, but set in __init__ as every attribute: a CachedFile that gains
    # one later loses its shared dict keys, and every read of its attributes costs more.
    _change_lock: trio.Lock | None = field(default=None, repr=False)
    _quiet: trio.Event | None = field(default=None, repr=False)  # set when no change is in progress

    def stable_since(self, changes: int) -> bool:
        """Whether no change of the file started or ended since `changes` was read (the seqlock)."""
        return self.changes == changes and not self.changing

    def begin_change(self) -> None:
        """A change of the file starts: no fill in flight installs a page read before it."""
        self.changes += 1
        self.changing += 1

    def end_change(self) -> None:
        self.changing -= 1
        self.changes += 1
        if not self.changing and self._quiet is not None:
            self._quiet.set()
            self._quiet = None

    def cancel_fills(self) -> None:
        """No fill in flight installs what it read (the seqlock moves, as a change moves it)."""
        self.changes += 1

    async def changes_landed(self) -> None:
        """Wait until the changes in progress now have ended (not those starting later)."""
        if not self.changing:
            return
        if self._quiet is None:
            self._quiet = trio.Event()
        await self._quiet.wait()

    def change_lock(self) -> trio.Lock:
        """The lock that serialises this mount's changes of the file (made when first needed)."""
        if self._change_lock is None:
            self._change_lock = trio.Lock()
        return self._change_lock

    def unlock_changes(self) -> None:
        assert self._change_lock is not None
        self._change_lock.release()


@dataclass(eq=False)
class CachedFile(FilePages, CloseToOpen, FileChanges):
    """What the page cache knows of one backing file: its pages (FilePages), what it looked
    like when last seen (CloseToOpen), and its changes in progress (FileChanges)."""

    # What the pool knows its pages by (the coherency rules set it): the file key, or on a
    # cluster node the key of the version the pages were read at.
    key: bytes
    size: int = 0
    file: bytes = b""  # the file key (name_to_handle_at handle); defaults to `key`
    dev: int = 0  # SRC's st_dev of it: how its reads run (SrcIO.device)

    def __post_init__(self) -> None:
        if not self.file:
            self.file = self.key

    @property
    def idle(self) -> bool:
        return not self.pages and self.open_count == 0 and not self.locks and not self.changing

    def reset_key(self) -> None:
        """Pages go to the pool under the file key again (the rules that set another are gone)."""
        self.key = self.file


@dataclass(slots=True)
class Eviction:
    """A page taken out of the cache to make room; its data is still in `slot`."""

    file: CachedFile
    index: int
    slot: int


class PageCache:
    """Bounded set of clean pages with hit/miss/eviction counters."""

    def __init__(self, capacity_bytes: int, policy: str = "lru", limit_bytes: int | None = None) -> None:
        # limit_bytes: how large it may grow. A mount leaves it to this machine's memory; the tests
        # give a small one to reach the limit.
        self.capacity = max(1, capacity_bytes // PAGE_SIZE)
        self._mem, self.limit, self._limit_reason = _reserve(self.capacity, limit_bytes)
        self.view = memoryview(self._mem)
        self._free = list(range(self.capacity - 1, -1, -1))
        # Slots at or above capacity still held by a fill or a put since the last shrink,
        # and the end of the slots in use (above capacity only while some are retiring).
        self._retiring: set[int] = set()
        self._top = self.capacity
        self._shrinking = False
        # The policy orders pages by (file, index), a key that survives eviction,
        # so policies with ghost lists (S3-FIFO, ARC) recognise a returning page.
        self._slot_keys: list[tuple[CachedFile, int] | None] = [None] * self.capacity
        self._policy = make_policy(policy, self.capacity)
        self._touch = self._policy.toucher()
        self.tracer: Tracer | None = None
        self.hits = self.misses = self.evictions = 0

    @property
    def pages(self) -> int:
        """Pages installed (slots taken but not yet installed do not count)."""
        return len(self._policy)

    def slot_view(self, slot: int) -> memoryview:
        start = slot * PAGE_SIZE
        return self.view[start : start + PAGE_SIZE]

    def slot_views(self, slots: list[int]) -> list[memoryview]:
        """slot_view of each slot (a read of one page, the common case, without a loop)."""
        view = self.view
        if len(slots) == 1:
            start = slots[0] * PAGE_SIZE
            return [view[start : start + PAGE_SIZE]]
        return [view[s * PAGE_SIZE : (s + 1) * PAGE_SIZE] for s in slots]

    def room(self, count: int) -> int:
        """How many of `count` new pages can have a slot now: slots held by fills and puts
        in flight are not to be had (a tiny cache may have fewer left, or none)."""
        free = len(self._free)
        return count if count <= free else min(count, free + len(self._policy))

    def lookup(self, cached: CachedFile, index: int) -> int | None:
        """Slot of a cached page (counts a hit and refreshes it), else None."""
        slot = cached.pages.get(index)
        if self.tracer is not None:
            self.tracer.event("miss" if slot is None else "hit", cached.key, index)
        if slot is None:
            self.misses += 1
            return None
        self.hits += 1
        self._touch(self._slot_keys[slot])
        return slot

    def hit(self, cached: CachedFile, index: int) -> int | None:
        """Slot of a cached page, counted as a hit and refreshed; None (nothing counted) if it
        is not cached. The one-page read's fast path."""
        slot = cached.pages.get(index)
        if slot is not None:
            if self.tracer is not None:
                self.tracer.event("hit", cached.key, index)
            self.hits += 1
            self._touch(self._slot_keys[slot])
        return slot

    def lookup_run(self, cached: CachedFile, first: int, last: int) -> list[int] | None:
        """Slots of pages first..last if every one is cached, counted as hits and refreshed
        (the read fast path); else None, with nothing counted (the caller goes page by page)."""
        pages = cached.pages
        if first == last:
            slot = pages.get(first)
            if slot is None:
                return None
            slots = [slot]
        else:
            found = list(map(pages.get, range(first, last + 1)))
            if None in found:
                return None
            slots = found  # type: ignore[assignment]  # (no None in it)
        self.count_hits(slots)
        return slots

    def count_hits(self, slots: list[int]) -> None:
        """Count hits on cached pages the caller found (see peek) and refresh them, without a
        Python frame per page."""
        if self.tracer is None:
            self.hits += len(slots)
            deque(map(self._touch, map(self._slot_keys.__getitem__, slots)), 0)
            return
        for slot in slots:
            key = self._slot_keys[slot]
            assert key is not None
            self.hits += 1
            self._touch(key)
            self.tracer.event("hit", key[0].key, key[1])

    def miss(self, cached: CachedFile, index: int) -> None:
        """Count a miss the caller found itself (pages read ahead in one batch)."""
        self.misses += 1
        if self.tracer is not None:
            self.tracer.event("miss", cached.key, index)

    def miss_run(self, cached: CachedFile, first: int, count: int) -> None:
        """Count misses of pages first.. that the caller found itself (read ahead in one fill,
        or served around the cache)."""
        if self.tracer is None:
            self.misses += count
            return
        for index in range(first, first + count):
            self.miss(cached, index)

    def peek(self, cached: CachedFile, index: int) -> int | None:
        """Slot of a cached page without counting or reordering."""
        return cached.pages.get(index)

    def take_slots(self, count: int) -> tuple[list[int], list[Eviction]]:
        """Slots for `count` new pages: free ones first, then evicted ones, whose pages
        (still in their slots) the caller must put before filling them."""
        free = self._free
        if count == 1 and free:  # a random read with a free slot (reclaim keeps some)
            return [free.pop()], []
        slots = [free.pop() for _ in range(min(count, len(free)))]
        evicted = self.evict(count - len(slots)) if len(slots) < count else []
        slots += [page.slot for page in evicted]
        assert len(slots) == count, "fewer pages cached than slots asked for"
        slots.sort()  # consecutive slots make a run of pages one view of the slab (no copy to reply)
        return slots, evicted

    def install(self, cached: CachedFile, index: int, slot: int) -> None:
        """Make `slot` (already filled) the page `index` of `cached`."""
        assert index not in cached.pages
        cached.pages[index] = slot
        key = self._slot_keys[slot] = (cached, index)
        self._policy.insert(key)

    def install_run(self, cached: CachedFile, first: int, slots: list[int]) -> None:
        """install() pages first, first+1, ... into `slots`, without a Python loop per page."""
        if len(slots) == 1:
            self.install(cached, first, slots[0])
            return
        indexes = range(first, first + len(slots))
        assert cached.pages.keys().isdisjoint(indexes)
        cached.pages.update(zip(indexes, slots, strict=True))
        keys = list(zip(repeat(cached), indexes))
        deque(map(self._slot_keys.__setitem__, slots, keys), 0)
        self._policy.insert_run(keys)

    def release_slot(self, slot: int) -> None:
        """Give back a slot from take_slot that was not installed (a retiring one goes back
        to the kernel)."""
        if slot < self.capacity:
            self._free.append(slot)
        else:
            self._retire(slot)

    def drop(self, cached: CachedFile, index: int) -> bool:
        """Remove one page without putting it anywhere (it is not clean any more)."""
        slot = cached.pages.pop(index, None)
        if slot is None:
            return False
        self._unlink(slot)
        return True

    def drop_file(self, cached: CachedFile) -> int:
        """Remove every page of a file (and no fill in flight installs an older one); returns
        how many there were."""
        cached.cancel_fills()
        slots = list(cached.pages.values())
        cached.pages.clear()
        for slot in slots:
            self._unlink(slot)
        return len(slots)

    def evict(self, count: int) -> list[Eviction]:
        """Take up to `count` pages out, oldest first, for the caller to put.

        The slots stay reserved until the caller gives them back with
        release_slot, so their data can be read meanwhile.
        """
        out = []
        victim, slot_keys = self._policy.victim, self._slot_keys
        for _ in range(min(count, len(self._policy))):
            owner, index = victim()
            slot = owner.pages.pop(index)
            slot_keys[slot] = None
            out.append(Eviction(owner, index, slot))
        self.evictions += len(out)
        return out

    @property
    def free_slots(self) -> int:
        return len(self._free)

    def _unlink(self, slot: int) -> None:
        self._policy.remove(self._slot_keys[slot])
        self._slot_keys[slot] = None
        self._free.append(slot)

    def reset_counters(self) -> None:
        self.hits = self.misses = self.evictions = 0

    def stats(self) -> dict[str, int]:
        """The counters and the size of the page cache, by their names in the mount's stats."""
        pages = self.pages
        return {
            "pagecache.hits": self.hits,
            "pagecache.misses": self.misses,
            "pagecache.evictions": self.evictions,
            "pagecache.pages": pages,
            "pagecache.bytes": pages * PAGE_SIZE,
            "pagecache.capacity_pages": self.capacity,
        }

    # -- resizing (see the module docstring) --------------------------------------------

    def check_capacity(self, nbytes: int) -> int:
        """The capacity in slots that cache_size `nbytes` means (whole pages, rounded down);
        ValueError if it is refused."""
        if nbytes < PAGE_SIZE:
            raise ValueError(f"cache_size must be at least one page ({PAGE_SIZE} bytes), not {nbytes}")
        pages = nbytes // PAGE_SIZE
        if pages > self.limit:
            raise ValueError(f"cache_size {nbytes} is more than this page cache can grow to "
                             f"({self.limit * PAGE_SIZE} bytes: {self._limit_reason})")
        return pages

    def grow(self, pages: int) -> None:
        """Make `pages` (at least the capacity) the capacity, at once: the new slots are free,
        except retiring ones still held, which are ordinary held slots again."""
        old = self.capacity
        self.capacity = pages
        retiring = self._retiring
        revived = {s for s in retiring if s < pages}
        retiring -= revived
        self._free[:0] = [s for s in range(pages - 1, old - 1, -1) if s not in revived]  # used last
        if len(self._slot_keys) < pages:
            self._slot_keys.extend([None] * (pages - len(self._slot_keys)))
        self._top = max(self._top, pages) if retiring else pages
        self._policy.resize(pages)

    def shrink(self, pages: int) -> list[tuple[int, int]]:
        """Make `pages` (at most the capacity) the capacity: no slot at or above it is handed
        out again, and the pages installed there move below while free slots last; the
        moves made, as (from, to). The caller evicts until `retiring_pages` is 0, then
        calls `shrunk`."""
        old = self.capacity
        self.capacity = pages
        self._shrinking = True
        self._policy.resize(pages)
        free = self._free
        unused = {s for s in free if s >= pages}
        free[:] = [s for s in free if s < pages]
        self._retiring |= {s for s in range(pages, old) if s not in unused}  # (above old: retiring already)
        return self.move_retiring()

    def retiring_pages(self) -> int:
        """Pages still installed at or above the capacity (a shrink evicts until none is)."""
        slot_keys = self._slot_keys
        return sum(1 for s in self._retiring if slot_keys[s] is not None)

    def move_retiring(self) -> list[tuple[int, int]]:
        """Move pages installed at or above the capacity into free slots below, while there
        are any; the moves, as (from, to)."""
        slot_keys, free, view = self._slot_keys, self._free, self.view
        moves = []
        for slot in sorted(self._retiring):
            if not free:
                break
            key = slot_keys[slot]
            if key is None:
                continue
            to = free.pop()
            view[to * PAGE_SIZE : (to + 1) * PAGE_SIZE] = view[slot * PAGE_SIZE : (slot + 1) * PAGE_SIZE]
            key[0].pages[key[1]] = to
            slot_keys[to], slot_keys[slot] = key, None
            self._retiring.discard(slot)
            moves.append((slot, to))
        return moves

    def shrunk(self) -> None:
        """The shrink is over: the memory of every slot at or above the capacity that no fill
        or put holds goes back to the kernel (those held go back when they are released)."""
        self._shrinking = False
        self._policy.resize(self.capacity)
        start = self.capacity
        for slot in [*sorted(self._retiring), self._top]:
            self._give_back(start, slot)
            start = slot + 1
        if not self._retiring:
            self._top = self.capacity
        del self._slot_keys[self._top :]  # (it covers every slot that may be in use)

    def _retire(self, slot: int) -> None:
        """A retiring slot was given back by the fill or put that held it."""
        self._retiring.discard(slot)
        if self._shrinking:
            return  # (shrunk() gives it back with the others)
        self._give_back(slot, slot + 1)
        if not self._retiring:
            self._top = self.capacity

    def _give_back(self, start: int, end: int) -> None:
        if start < end:
            self._mem.madvise(mmap.MADV_REMOVE, start * PAGE_SIZE, (end - start) * PAGE_SIZE)
