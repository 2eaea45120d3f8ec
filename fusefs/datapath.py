"""Reads and writes of file data: page cache, then cleancache, then SRC.

read:  page-cache hit -> copy out; else cleancache get into a fresh slot;
       else pread SRC (consecutive misses in one preadv) and install. A scan
       that the pool holds is served from it without installing, and the
       pages stay there (sequential bypass).
write: pwrite SRC first (write-through, so every cached page stays clean),
       then update the cached pages it covers; the coherency rules flush them
       in the pool.
Evicting a page to make room puts it into cleancache, as the kernel did.

Many requests are in flight at once (max_requests=): a page being filled or
put is locked (pagecache.PageLock); a fill installs only if no change of
the file started or ended meanwhile (CachedFile.changes), and a read that
lost that race is served from SRC around the cache; this mount's changes
of one file are serialised (CachedFile.change_lock), and wait for puts in
flight of the pages they invalidate. Blocking calls on SRC go through
SrcIO, off the loop when other requests are waiting.

Whether cached pages are still valid, what a change does around SRC and the
key pages go to the pool under are the coherency rules' (fusefs/coherency.py),
which the cleancache frontend hands out for the backend in force: local on a
single mount, versioned on a cluster node.
"""

from __future__ import annotations

import errno
import logging
import mmap
import os
import time
from collections import OrderedDict
from collections.abc import Callable

import trio

from fusefs import PAGE_MASK, PAGE_SHIFT, PAGE_SIZE
from fusefs.cleancache import Cleancache
from fusefs.coherency import Coherency, CoherencyStats, Landed, stamp_of
from fusefs.frontswap import Frontswap
from fusefs.pagecache import CachedFile, Eviction, PageCache, PageLock, run_end
from fusefs.srcio import SrcIO, pwrite_all

log = logging.getLogger("tmemfs")

MAX_BATCH = 32  # pages read from SRC in one preadv
RECLAIM_NS = 20_000  # what background reclaim may spend of one pause between requests
RECLAIM_STEP = 4  # pages reclaim evicts between two looks for a waiting request
JOIN_POLL_S = 0.02  # how often a fenced change looks whether its node has joined
MAX_PROBE_BACKOFF = 8  # runs of a cold scan read between two asks of the pool, at most


_Run = tuple[int, int, bool]  # pages of a fill, from..to (offsets in it), and whether the pool had them


class _Contended(Exception):
    """A fill lost the race with a change of its file: the read is served around the cache."""


class _Reply:
    """The bytes of one read, gathered from runs of the slab: pages in consecutive slots (a
    file read in order into free slots) are one view, without a copy; other runs are joined
    once."""

    __slots__ = ("_copied", "_end", "_parts", "_start", "_view")

    def __init__(self, view: memoryview) -> None:
        self._view = view
        self._parts: list[bytes | memoryview] = []
        self._copied = 0  # parts[:copied] are copies, safe from eviction
        self._start = self._end = -1  # the current run: a byte range of the slab

    def add(self, start: int, end: int) -> None:
        """Bytes start..end of the slab come next."""
        if start != self._end:
            self._close_run()
            self._start = start
        self._end = end

    def copy_out(self) -> None:
        """Copy what was gathered out of the slab (the pages there may be evicted next)."""
        self._close_run()
        self._start = self._end = -1
        parts = self._parts
        while self._copied < len(parts):
            parts[self._copied] = bytes(parts[self._copied])
            self._copied += 1

    def joined(self) -> bytes | memoryview:
        if self._start >= 0:
            if not self._parts:
                return self._view[self._start : self._end]
            self._close_run()
        return b"".join(self._parts)

    def _close_run(self) -> None:
        if self._start >= 0:
            self._parts.append(self._view[self._start : self._end])


class DataPath:
    """The page cache and cleancache of one mount, and the counters of SRC I/O."""

    def __init__(self, pagecache: PageCache, cleancache: Cleancache, pool: int,
                 max_idle_files: int = 65536, node: bool = False, join_wait: float = 5.0,
                 io: SrcIO | None = None) -> None:
        self.pc = pagecache
        self.io = io if io is not None else SrcIO(threads=4)  # (a mount passes its own; unit tests need not)
        self.cc = cleancache
        self.pool = pool
        # Files we know, oldest first; idle ones (no pages, not open) are
        # trimmed past max_idle_files (the coherency rules say what the pool keeps of them;
        # a mount takes the default, a test a few files to reach the trimming).
        self.files: OrderedDict[bytes, CachedFile] = OrderedDict()
        self.max_idle_files = max_idle_files
        # Slots holding a page got from a shared pool and unchanged since: the pool
        # still has it (gets there are non-destructive), so evicting it needs no put.
        # (As long as the page cache ever was: a slot retiring after a shrink may be in a put.)
        self._from_shared_pool = bytearray(self.pc.capacity)
        self._resizing = trio.Lock()
        # Sequential bypass (bcache's sequential_cutoff): once a read in order has gone
        # on for more than half the page cache it is a scan that would only evict
        # everything; runs the pool holds at least half of are then served through a
        # scratch buffer, not installed: from the pool, which keeps the pages (a shared
        # pool's gets are non-destructive; a private pool's backend peeks instead of its
        # exclusive get), and from SRC for the pages it lacks (a page zcache refused would
        # only be refused again). Without a pool that can hold anything (cleancache=none)
        # a scan of a file larger than the page cache comes from SRC that way. A scan
        # goes on through pages the cache holds (random reads before it left some): they
        # are read again with the rest, one read of SRC, where reading page by page
        # would split it at each one and install and evict the others (a 128 KiB scan
        # after 4k random reads had filled the cache with a quarter of the file made
        # 3.7k IOPS here instead of 5.7k). Scratch buffers are reused: each request takes
        # one, and gives it back as it returns (pyfuse3 replies from it before any other
        # task runs).
        self._stream: tuple[CachedFile, int] | None = None  # where a read in order would start
        self._stream_pages = 0
        # A scan whose run the pool did not hold is read the usual way (and fills the pool);
        # the pool is asked again only after 1, 2, 4... more runs: on a cold scan each probe
        # would otherwise ask for every page twice (a round trip each on Redis).
        self._probe_skip = 0
        self._probe_backoff = 1
        self._follow_capacity()
        self._scratches: list[memoryview] = []
        # A cluster node (`node`) changes files only while it is a member of its pool: a
        # change waits for that at most join_wait, then fails (fencing).
        self.node = node
        self.join_wait = join_wait
        self.coherence = CoherencyStats()
        self.coherency: Coherency = cleancache.coherency(pool, pagecache, self.coherence, node)
        self._generation = cleancache.generation
        # Swap files (frontswap=) bypass the page cache and cleancache: their pages go to a
        # persistent pool (fusefs/frontswap.py); their SRC I/O is counted here too.
        self.frontswap = Frontswap(cleancache, self.io, self._count_read, self._count_write)
        self.reset_stats()

    def _follow_capacity(self) -> None:
        """What is sized against the page cache, as at mount (and after each resize)."""
        capacity = self.pc.capacity
        self.batch = max(1, min(MAX_BATCH, capacity // 4))
        # Free slots that background reclaim keeps ready (none in tiny caches, whose
        # eviction order the tests count exactly).
        self.reserve = min(MAX_BATCH, capacity // 64)
        self._scan_pages = capacity // 2
        if len(self._from_shared_pool) < capacity:
            self._from_shared_pool.extend(bytes(capacity - len(self._from_shared_pool)))

    async def set_cache_size(self, nbytes: int) -> None:
        """Resize the page cache of the live mount to cache_size `nbytes` (whole pages,
        rounded down). Growing takes effect at once. Shrinking evicts at once, by the policy
        in force, the pages that no longer fit, putting each into cleancache as reclaim
        does; the pages that fit move below the new capacity, pages being filled or put are
        left to their lock holders (pagecache's module docstring), and the pool is not
        flushed. ValueError (one line) if refused: below a page, beyond what the slab can
        grow to."""
        pc = self.pc
        pages = pc.check_capacity(nbytes)
        async with self._resizing:  # (two resizes at once would both count on the free slots)
            if pages >= pc.capacity:
                pc.grow(pages)
                self._follow_capacity()
                return
            self._moved(pc.shrink(pages))
            self._follow_capacity()
            try:
                while (retiring := pc.retiring_pages()) > 0:
                    await self._evict_into_free(max(1, retiring - pc.free_slots))
                    self._moved(pc.move_retiring())
            finally:
                self._contend_fills()
                pc.shrunk()
        log.info("cache_size set to %d (%d pages)", pages * PAGE_SIZE, pages)

    def _contend_fills(self) -> None:
        """No fill in flight at the end of a shrink installs: it may hold a retired slot (its
        read is served around the cache). The seqlock moves, as drop_file moves it, so the
        fill path itself checks nothing more."""
        for cached in self.files.values():
            if cached.filling:
                cached.cancel_fills()

    def _moved(self, moves: list[tuple[int, int]]) -> None:
        """Pages a shrink moved to other slots keep their mark of the shared pool."""
        flags = self._from_shared_pool
        for old, new in moves:
            flags[new], flags[old] = flags[old], 0

    def reset_stats(self) -> None:
        self.backing_reads = self.backing_read_bytes = 0
        self.backing_writes = self.backing_write_bytes = 0
        self.uncached_reads = self.fenced_changes = 0
        self.puts_saved = self.reclaimed = self.bypassed = 0
        self.fill_waits = self.fill_conflicts = self.change_waits = 0
        self.coherence.reset()
        self.io.reset_stats()
        self.frontswap.reset_stats()

    # -- coherency ---------------------------------------------------------------

    def _rules(self) -> Coherency:
        """The coherency rules in force, asked for again after a register or unregister."""
        if self.cc.generation != self._generation:
            self._generation = self.cc.generation
            rules = self.cc.coherency(self.pool, self.pc, self.coherence, self.node)
            if not rules.succeed(self.coherency):
                self._drop_everything()  # pages were valid under the old rules only
            self.coherency = rules
        return self.coherency

    def _drop_everything(self) -> None:
        for cached in self.files.values():
            self.pc.drop_file(cached)
            cached.reset_key()

    async def admit_change(self) -> Coherency:
        """The coherency rules, once this mount may change a file: at once, except on a
        cluster node that is not a member of its pool (not joined yet, or its pool could
        not be made). That node's change would go unseen by the others, so it waits for
        the join, as a cluster filesystem's writes wait for its lock manager; after
        join_wait it fails with EIO, nothing of it done (fencing)."""
        rules = self._rules()
        if rules.admits_changes:
            return rules
        deadline = trio.current_time() + self.join_wait
        while trio.current_time() < deadline:
            await trio.sleep(JOIN_POLL_S)
            rules = self._rules()
            if rules.admits_changes:
                return rules
        self.fenced_changes += 1
        if self.fenced_changes == 1 or self.fenced_changes % 100 == 0:
            log.warning("refused a change (EIO, %d so far): this cluster node has not joined its pool "
                        "after %.1f s, and the other nodes would not see the change", self.fenced_changes,
                        self.join_wait)
        raise OSError(errno.EIO, "not a member of the cluster pool")

    # -- files -----------------------------------------------------------------

    async def open_file(self, key: bytes, fd: int) -> tuple[CachedFile, bool]:
        """The CachedFile for a file being opened on `fd`, checked against SRC (close-to-open),
        and whether SRC is as this mount last saw it (so any copy the kernel cached
        through this mount is still good).

        What a change behind our back does to the cached pages is the coherency rules'
        (an NFS-like drop on a single mount; a version bump on a cluster node). SRC is
        stat'ed under the file's change lock: a write of this mount landing between that
        stat and the size set from it would otherwise be undone (a read after it saw the
        old end of file).
        """
        cached = self.files.get(key)
        if cached is None:
            await self._trim_idle()  # (before the new entry: it is idle until opened)
            cached = self.files.get(key)
            if cached is None:
                cached = self.files[key] = CachedFile(key)
        else:
            self.files.move_to_end(key)
        cached.add_handle()  # not trimmed while waiting below
        try:
            await self._lock_changes(cached)
            try:
                st = os.fstat(fd)
                stamp = stamp_of(st)
                unchanged = cached.stamp == stamp
                await self._rules().opened(cached, stamp)
                cached.size, cached.stamp, cached.dev = stamp[0], stamp, st.st_dev
                return cached, unchanged
            finally:
                cached.unlock_changes()
        except BaseException:
            cached.drop_handle()
            raise

    def close_file(self, cached: CachedFile, st: os.stat_result | None) -> None:
        """A handle closed; `st` (fstat before close) stamps again a file this mount wrote."""
        cached.drop_handle(None if st is None else stamp_of(st))

    def restamp(self, key: bytes, before: os.stat_result, after: os.stat_result) -> None:
        """This mount changed a file's metadata (mode, owner, times: its ctime moved): still
        SRC as it last saw it, if it was just before."""
        cached = self.files.get(key)
        if cached is not None:
            cached.restamp(stamp_of(before), stamp_of(after))

    async def _trim_idle(self) -> None:
        if len(self.files) <= self.max_idle_files:
            return
        rules = self._rules()
        for key in [k for k, f in self.files.items() if f.idle][: len(self.files) // 4]:
            cached = self.files.get(key)
            if cached is None or not cached.idle:  # opened while an earlier one was forgotten
                continue
            del self.files[key]
            await rules.forget(key, flushed=False)

    async def invalidate_file(self, key: bytes) -> None:
        """Drop a file's pages here and in the pool (delete, replace).

        Like truncate_inode_pages: the coherency rules act at the start and at the
        end, whether or not anything was cached here.
        """
        cached = self.files.get(key)
        await self._begin_change(cached)
        try:
            await (await self.admit_change()).invalidate(key, cached)
        finally:
            self._end_change(cached)

    async def truncate(self, key: bytes, fd_or_path: int | str, size: int) -> None:
        """ftruncate SRC between the two pool invalidations (an open swap file: frontswap's)."""
        swap = self.frontswap.areas.get(key)
        if swap is not None:
            await self.frontswap.truncate(swap, size)
            return
        cached = self.files.get(key)
        await self._begin_change(cached)
        try:
            rules = await self.admit_change()
            await rules.change_starts(key, cached)
            try:
                await self.io.call(os.truncate, fd_or_path, size)
            finally:
                await rules.change_ends(key, cached)
            if cached is not None:  # nothing is cached: whatever SRC holds now is what it saw
                st = os.stat(fd_or_path)
                cached.size, cached.stamp = st.st_size, stamp_of(st)
        finally:
            self._end_change(cached)

    async def _begin_change(self, cached: CachedFile | None) -> None:
        """This mount starts changing a file: after its other changes (the inode lock), and no
        fill in flight installs a page read before it (the seqlock moves)."""
        if cached is None:
            return
        await self._lock_changes(cached)
        cached.begin_change()

    def _end_change(self, cached: CachedFile | None) -> None:
        if cached is None:
            return
        cached.end_change()
        cached.unlock_changes()

    async def _lock_changes(self, cached: CachedFile) -> None:
        """The file's change lock: no other change of this mount's runs meanwhile."""
        lock = cached.change_lock()
        try:
            lock.acquire_nowait()  # no checkpoint when nobody else changes the file
        except trio.WouldBlock:
            self.change_waits += 1
            await lock.acquire()

    async def forget_file(self, key: bytes) -> None:
        """The file no longer exists under this key (its last link is gone, its pool pages
        flushed)."""
        cached = self.files.get(key)
        if cached is not None and cached.idle:
            del self.files[key]
            await self._rules().forget(key, flushed=True)

    # -- data ------------------------------------------------------------------

    def read_hit(self, cached: CachedFile, offset: int, size: int) -> memoryview | bytes | None:
        """The bytes of a read that the page cache holds whole, without awaiting anything (the
        hot path: no coroutine); None if it needs `read` (a page missing, or rules in force that
        check every read, or rules to ask for again)."""
        if self.cc.generation != self._generation or self.coherency.checks_reads:
            return None
        end = min(offset + size, cached.size)
        if offset >= end:
            return None  # end of file: `read` says so (and rereads the size where the rules do)
        first, last = offset >> PAGE_SHIFT, (end - 1) >> PAGE_SHIFT
        if first == last:
            slot = self.pc.hit(cached, first)
            if slot is None:
                return None
            base = slot << PAGE_SHIFT
            return self.pc.view[base + (offset & PAGE_MASK) : base + ((end - 1) & PAGE_MASK) + 1]
        slots = self.pc.lookup_run(cached, first, last)
        return None if slots is None else self._assemble(slots, offset, end)

    async def read(self, cached: CachedFile, fd: int, offset: int, size: int) -> bytes | bytearray | memoryview:
        """Up to `size` bytes at `offset`, short only at end of file."""
        rules = self.coherency if self.cc.generation == self._generation else self._rules()
        if rules.checks_reads and not await rules.check_read(cached, fd):
            return await self._read_uncached(cached, fd, offset, size)
        try:
            return await self._read_cached(cached, fd, offset, size)
        except _Contended:
            self.fill_conflicts += 1
            return await self._read_uncached(cached, fd, offset, size)

    async def _read_cached(self, cached: CachedFile, fd: int, offset: int,
                           size: int) -> bytes | bytearray | memoryview:
        """Bytes offset..offset+size through the page cache (_Contended if a fill lost a race
        with a change of the file)."""
        end = min(offset + size, cached.size)
        if offset >= end:
            return b""
        first, last = offset >> PAGE_SHIFT, (end - 1) >> PAGE_SHIFT
        slots = self.pc.lookup_run(cached, first, last)
        if slots is not None:  # every page cached (hits counted)
            return self._assemble(slots, offset, end)
        if first == last:  # a page not cached: loaded, then one view of it
            slot, _ = await self._page(cached, fd, first, last)
            end = min(end, cached.size)  # a read from SRC may have found it shorter
            if slot < 0 or offset >= end:
                return b""
            base = slot << PAGE_SHIFT
            return self.pc.view[base + (offset & PAGE_MASK) : base + ((end - 1) & PAGE_MASK) + 1]
        loaded_through = -1  # pages installed by this very read: not hits
        if not cached.any_cached(first, last):
            served, loaded_through = await self._read_in_order(cached, fd, first, last, offset, end)
        else:  # some are cached: a scan still reads around them (see the sequential bypass)
            served = await self._bypass(cached, fd, first, last, offset, end)
        if served is not None:
            return served
        return await self._read_pages(cached, fd, first, last, offset, end, loaded_through)

    async def _read_in_order(self, cached: CachedFile, fd: int, first: int, last: int, offset: int,
                                 end: int) -> tuple[bytes | memoryview | None, int]:
        """Pages first..last, none of them cached (a read in order): served around the cache, or
        loaded in one go. (The bytes, or None if the load stopped short; the last page loaded.)"""
        served = await self._bypass(cached, fd, first, last, offset, end)
        if served is not None:
            return served, -1
        slot, loaded_through = await self._page(cached, fd, first, last)
        end = min(end, cached.size)  # a read from SRC may have found it shorter
        if slot < 0 or offset >= end:
            return b"", loaded_through
        if loaded_through >= last:
            return self._assemble(cached.slots_of(first, (end - 1) >> PAGE_SHIFT), offset, end), loaded_through
        return None, loaded_through

    async def _bypass(self, cached: CachedFile, fd: int, first: int, last: int, offset: int,
                      end: int) -> memoryview | None:
        """Bytes offset..end of a read in order served around the cache once it is a scan
        (the sequential bypass in __init__); None if it is not one or the pool did not hold
        it (then asked again only after a few runs)."""
        if not self._scanning(cached, first, last):
            return None
        served = await self._read_around_cache(cached, fd, first, last, offset, end)
        if served is not None:
            self._probe_backoff = 1
        else:
            self._probe_skip = self._probe_backoff
            self._probe_backoff = min(2 * self._probe_backoff, MAX_PROBE_BACKOFF)
        return served

    async def _read_pages(self, cached: CachedFile, fd: int, first: int, last: int, offset: int, end: int,
                          loaded_through: int) -> bytes | memoryview:
        """Bytes offset..end page by page: each cached page a hit (unless this read installed
        it, up to `loaded_through`), each missing one loaded with the misses after it."""
        pc = self.pc
        reply = _Reply(pc.view)
        hits: list[int] = []  # counted before a load (which may evict) and at the end
        index, lo = first, offset & PAGE_MASK
        while index <= last:
            slot = pc.peek(cached, index)
            if slot is None:
                pc.count_hits(hits)
                hits.clear()
                reply.copy_out()  # loading the page may evict those gathered so far
                slot, loaded_through = await self._page(cached, fd, index, last)
                if slot < 0:
                    break
            elif index > loaded_through:
                hits.append(slot)
            hi = min(end, cached.size) - (index << PAGE_SHIFT)
            if hi <= lo:
                break
            base = slot << PAGE_SHIFT
            reply.add(base + lo, base + min(hi, PAGE_SIZE))
            if hi < PAGE_SIZE:
                break  # end of file (or of the request)
            lo = 0
            index += 1
        pc.count_hits(hits)
        return reply.joined()

    def _scanning(self, cached: CachedFile, first: int, last: int) -> bool:
        """Count a read of pages first..last, not all of them cached, into the current read
        in order; True once it is a scan (see the sequential bypass in __init__) on a pool
        that can serve it, or, where the pool holds nothing, of a file larger than the page
        cache (one that fits is cached as it is read)."""
        if self._stream == (cached, first):
            self._stream_pages += last - first + 1
        else:
            self._stream_pages = last - first + 1
            self._probe_skip, self._probe_backoff = 0, 1
        self._stream = (cached, last + 1)
        if self._stream_pages <= self._scan_pages:
            return False
        if self.cc.can_copy(self.pool):
            if self._probe_skip:  # (a run the pool did not hold lately: see __init__)
                self._probe_skip -= 1
                return False
            return True
        return cached.size > self.pc.capacity << PAGE_SHIFT and self.cc.holds_nothing(self.pool)

    async def _read_around_cache(self, cached: CachedFile, fd: int, first: int, last: int,
                                 offset: int, end: int) -> memoryview | None:
        """Bytes offset..end through a scratch buffer, without installing: the pages the
        pool holds from it (left there), the others from SRC. None unless the pool holds
        at least half of them (the caller then reads the usual way, so that a scan the
        pool does not hold yet still fills it), or holds nothing at all (cleancache=none:
        then all from SRC, since installing them would only evict everything else)."""
        count = last - first + 1
        scratches = self._scratches
        scratch = scratches.pop() if scratches else memoryview(mmap.mmap(-1, MAX_BATCH * PAGE_SIZE))
        if len(scratch) < count << PAGE_SHIFT:
            scratch = memoryview(mmap.mmap(-1, count << PAGE_SHIFT))
        try:
            return await self._read_into_scratch(scratch, cached, fd, first, count, offset, end)
        finally:
            scratches.append(scratch)  # (the reply is sent from it before any other task runs)

    async def _read_into_scratch(self, scratch: memoryview, cached: CachedFile, fd: int, first: int,
                                 count: int, offset: int, end: int) -> memoryview | None:
        seq = cached.changes
        views = [scratch[n << PAGE_SHIFT : (n + 1) << PAGE_SHIFT] for n in range(count)]
        if self.cc.can_copy(self.pool):
            hits = await self.cc.copy_pages(self.pool, cached.key, first, views, (count + 1) // 2)
            if hits is None:
                return None
        else:  # it holds nothing (_scanning): every get misses, and is counted as on any miss
            hits = await self.cc.get_pages(self.pool, cached.key, first, views)
        n = 0
        while n < count:  # each run the pool did not have, in one preadv
            if hits[n]:
                n = run_end(hits, n, False)
                continue
            missing_end = run_end(hits, n, True)
            start = (first + n) << PAGE_SHIFT
            got = await self.io.preadv(fd, [scratch[n << PAGE_SHIFT : missing_end << PAGE_SHIFT]], start, cached.dev)
            self._count_read(got)
            if got < min(missing_end << PAGE_SHIFT, end - (first << PAGE_SHIFT)) - (n << PAGE_SHIFT):
                return None  # SRC shrank behind our back: the usual path finds out how much
            n = missing_end
        if not cached.stable_since(seq):
            raise _Contended  # the pool's copies may predate a change of this mount's
        self.pc.miss_run(cached, first, count)
        self.bypassed += count
        return scratch[offset & PAGE_MASK : (count - 1 << PAGE_SHIFT) + ((end - 1) & PAGE_MASK) + 1]

    def _assemble(self, slots: list[int], offset: int, end: int) -> memoryview | bytes:
        """Bytes offset..end of the cached pages in `slots`: one view of the slab when
        they sit in consecutive slots (a file read in order into free slots), else
        joined once."""
        view = self.pc.view
        lo = (slots[0] << PAGE_SHIFT) + (offset & PAGE_MASK)
        hi = (slots[-1] << PAGE_SHIFT) + ((end - 1) & PAGE_MASK) + 1
        if len(slots) == 1 or slots == list(range(slots[0], slots[-1] + 1)):
            return view[lo:hi]
        first_end = (slots[0] + 1) << PAGE_SHIFT
        return b"".join([view[lo:first_end],
                         *[view[s << PAGE_SHIFT : (s + 1) << PAGE_SHIFT] for s in slots[1:-1]],
                         view[slots[-1] << PAGE_SHIFT : hi]])

    async def _page(self, cached: CachedFile, fd: int, index: int, last: int) -> tuple[int, int]:
        """Slot holding page `index` (-1 past end of file), loading it and following
        misses up to `last`; and the last page index this call installed, which
        the caller must not count again as hits. A page another request is filling
        (or putting) is waited for, not read again."""
        if index << PAGE_SHIFT >= cached.size:  # past the end a change left while this read waited
            return -1, index - 1
        last = min(last, (cached.size - 1) >> PAGE_SHIFT)
        pc = self.pc
        slot = pc.lookup(cached, index)
        while slot is None:
            lock = cached.page_lock(index)
            if lock is None:
                return await self._fill(cached, fd, index, last)
            self.fill_waits += 1
            await lock.wait()
            slot = pc.peek(cached, index)
        return slot, index

    async def _fill(self, cached: CachedFile, fd: int, index: int, last: int) -> tuple[int, int]:
        """Load page `index` (a miss, counted) and the misses after it up to `last`, under one
        page lock: one cleancache call for all of them, then one read of SRC per run the pool
        did not have; installed together at the end unless the file changed meanwhile."""
        pc = self.pc
        limit = min(last - index + 1, self.batch)
        count = pc.room(cached.unheld_run(index, limit) if limit > 1 else 1)  # (a random read asks nothing)
        if count == 0:  # every slot is held by other fills and puts: served around the cache
            raise _Contended
        pc.miss_run(cached, index + 1, count - 1)
        lock = PageLock()
        locked = range(index, index + count)
        cached.lock_pages(locked, lock)
        try:
            return await self._fill_locked(cached, fd, index, count)
        finally:
            cached.unlock_pages(locked, lock)
            lock.release()

    async def _fill_locked(self, cached: CachedFile, fd: int, index: int, count: int) -> tuple[int, int]:
        """_fill with its pages locked: slots for them, one ask of the pool, SRC for the runs it
        did not have; the first page's slot (-1 past the end of file) and the last page installed."""
        seq, generation, key = cached.changes, self.cc.generation, cached.key
        slots = await self._take_slots(count)
        try:
            hits = await self.cc.get_pages(self.pool, key, index, self.pc.slot_views(slots))
            runs: list[_Run] = []
            size = known_size = cached.size
            n = 0
            while n < count:
                if hits[n]:  # a run of pages the pool had
                    end = run_end(hits, n, False)
                    runs.append((n, end, True))
                    n = end
                    continue
                end = run_end(hits, n, True)  # a run it did not have: from SRC
                start, run = (index + n) << PAGE_SHIFT, slots[n:end]
                got = await self.io.preadv(fd, self.pc.slot_views(run), start, cached.dev)
                used, size = self._src_read_done(start, got, run, size)
                runs.append((n, n + used, False))
                n += used
                if n < end:  # end of file: what follows is past it
                    break
        except BaseException:
            self._release_slots(slots)
            raise
        if not cached.stable_since(seq) or self.cc.generation != generation or cached.key != key:
            self._release_slots(slots)
            raise _Contended
        if size != known_size:
            cached.size = size
        self._install_runs(cached, index, slots, runs)
        if n < count:
            self._release_slots(slots[n:])
        return (slots[0] if n else -1), index + n - 1

    def _src_read_done(self, start: int, got: int, slots: list[int], size: int) -> tuple[int, int]:
        """A read of SRC at `start` into `slots` returned `got` bytes: counted, and the rest of
        its last page zeroed; how many pages hold data, and the file's size as SRC showed it
        (`size`: as known before)."""
        self._count_read(got)
        if (got or start < size) and (got < len(slots) * PAGE_SIZE or start + got > size):
            # SRC changed size behind our back: it knows best. (Nothing read at or past
            # the known end says only that SRC ends before it: that end stands.)
            size = start + got
        full, tail = divmod(got, PAGE_SIZE)
        if tail:
            self.pc.slot_view(slots[full])[tail:] = bytes(PAGE_SIZE - tail)
        return full + (1 if tail else 0), size

    def _install_runs(self, cached: CachedFile, index: int, slots: list[int], runs: list[_Run]) -> None:
        """Install the pages a fill read; those got from a shared pool are marked (it still has them)."""
        shared = self.coherency.shared_pool
        for a, b, from_pool in runs:
            self.pc.install_run(cached, index + a, slots[a:b])
            if from_pool and shared:
                for s in slots[a:b]:
                    self._from_shared_pool[s] = 1

    def _release_slots(self, slots: list[int]) -> None:
        for slot in slots:
            self.pc.release_slot(slot)

    async def _read_uncached(self, cached: CachedFile, fd: int, offset: int, size: int) -> bytes:
        """Read SRC around every cache (a cluster node that cannot check versions now, or a
        read that raced a change of its file)."""
        start = offset & ~PAGE_MASK
        length = ((offset + size + PAGE_MASK) & ~PAGE_MASK) - start
        with mmap.mmap(-1, length) as buf:  # page-aligned, so an O_DIRECT descriptor works
            view = memoryview(buf)
            try:
                got = await self.io.preadv(fd, [view], start, cached.dev)
                self._count_read(got)
                self.uncached_reads += 1
                return bytes(view[offset - start : max(offset - start, min(got, offset - start + size))])
            finally:
                view.release()

    async def reclaim(self, request_waiting: Callable[[], object]) -> None:
        """Background reclaim, as kswapd did: between requests, evict (and put) a few pages
        so that free slots are ready and a miss need not put on its critical path. It
        stops as soon as a request is waiting, so it never delays one by more than a step."""
        pc = self.pc
        deadline = time.perf_counter_ns() + RECLAIM_NS  # a put may be cheap (none needed) or not
        while (short := self.reserve - pc.free_slots) > 0 and time.perf_counter_ns() < deadline:
            self.reclaimed += await self._evict_into_free(min(short, RECLAIM_STEP))
            if request_waiting():
                break

    async def _evict_into_free(self, count: int) -> int:
        """Evict up to `count` pages, oldest first, put them, and free their slots."""
        evicted = self.pc.evict(count)
        await self._put_evicted(evicted)
        self._release_slots([page.slot for page in evicted])
        return len(evicted)

    async def _take_slots(self, count: int) -> list[int]:
        """Free slots for new pages, putting the pages evicted to make room."""
        slots, evicted = self.pc.take_slots(count)
        if evicted:
            await self._put_evicted(evicted)
        from_shared_pool = self._from_shared_pool
        for slot in slots:
            from_shared_pool[slot] = 0
        return slots

    async def _put_evicted(self, evicted: list[Eviction]) -> None:
        """Put pages taken out of the page cache (still in their slots); a page the
        shared pool still holds needs no put."""
        from_shared_pool, slot_view = self._from_shared_pool, self.pc.slot_view
        putting = [page for page in evicted if not from_shared_pool[page.slot]]
        self.puts_saved += len(evicted) - len(putting)
        if not putting:
            return
        puts = [(page.file.key, page.index, slot_view(page.slot)) for page in putting]
        if not self.cc.may_wait():  # the put ends before any other request runs
            await self.cc.put_pages(self.pool, puts)
            return
        lock = PageLock(putting=True)  # a reader of these pages waits for the put, then gets them
        for page in putting:
            page.file.lock_pages((page.index,), lock)
        try:
            await self.cc.put_pages(self.pool, puts)
        finally:
            for page in putting:
                page.file.unlock_pages((page.index,), lock)
            lock.release()

    async def write(self, cached: CachedFile, fd: int, offset: int, data: bytes | memoryview,
                    append: bool = False) -> tuple[int, int]:
        """Write through to SRC, then bring cached pages and the pool up to date; where the
        bytes landed and how many. An append (`fd` opened with O_APPEND) lands at SRC's
        end as it is when the write happens, whatever offset the kernel guessed from the
        size it had cached."""
        await self._begin_change(cached)
        try:
            rules = await self.admit_change()
            key = cached.key
            before = await rules.write_starts(cached)
            landed: Landed | None = None
            covered = range(0)
            try:
                if append or rules.stamps_writes:
                    write = self._write_src_stamped if rules.stamps_writes else self._write_src
                    landed = await self.io.call(write, fd, offset, data, append)
                else:  # (the common write: tried inline first, see SrcIO.pwrite)
                    landed = Landed(offset, await self.io.pwrite(fd, memoryview(data), offset), False)
                self._count_write(landed.done)
                if landed.done:
                    covered = self._update_pages(cached, landed.landed, data, landed.done)
            finally:
                await rules.write_ends(cached, before, landed, covered)
            if cached.key != key:  # retagged: the pool's copies under the old key are gone
                for slot in cached.slots():
                    self._from_shared_pool[slot] = 0
            assert landed is not None  # (else the write raised)
            return landed.landed, landed.done
        finally:
            self._end_change(cached)

    def _write_src_stamped(self, fd: int, offset: int, data: bytes | memoryview, append: bool) -> Landed:
        """_write_src between two fstats (a cluster node's check for writes behind its back)."""
        before = stamp_of(os.fstat(fd))
        landed = self._write_src(fd, offset, data, append)
        return Landed(landed.landed, landed.done, append, before, stamp_of(os.fstat(fd)))

    def _write_src(self, fd: int, offset: int, data: bytes | memoryview, append: bool) -> Landed:
        """Write to SRC: where it landed and the bytes written. Short only when SRC took part
        (ENOSPC, EFBIG...): then the cache must follow what landed. An append is one write(2)
        on the O_APPEND descriptor, so it lands at the end atomically, as appends from other
        processes (or nodes) on the same SRC do; the descriptor's offset says where."""
        view = memoryview(data)
        if append:
            done = os.write(fd, view)
            return Landed(os.lseek(fd, 0, os.SEEK_CUR) - done, done, append)
        return Landed(offset, pwrite_all(fd, view, offset), append)

    def _count_read(self, got: int) -> None:
        self.backing_reads += 1
        self.backing_read_bytes += got

    def _count_write(self, done: int) -> None:
        """(Counted on the loop: _write_src may run on a worker thread.)"""
        self.backing_writes += 1
        self.backing_write_bytes += done

    def _update_pages(self, cached: CachedFile, offset: int, data: bytes | memoryview, done: int) -> range:
        """Copy the first `done` bytes written at `offset` into the pages cached there (write-through
        keeps them clean); the page indexes the write covered."""
        view = memoryview(data)
        end = offset + done
        if end > cached.size:
            cached.size = end
        slab = self.pc.view
        covered = range(offset >> PAGE_SHIFT, ((end - 1) >> PAGE_SHIFT) + 1)
        for index, slot in cached.cached_in(covered):
            page_start = index << PAGE_SHIFT
            lo = max(offset, page_start)
            hi = min(end, page_start + PAGE_SIZE)
            base = slot << PAGE_SHIFT
            slab[base + lo - page_start : base + hi - page_start] = view[lo - offset : hi - offset]
        return covered

    # -- whole cache -------------------------------------------------------------

    async def drop_caches(self) -> int:
        """Evict every page, putting each into cleancache; returns the count."""
        return await self._evict_into_free(self.pc.pages)

    async def flush_pool(self) -> None:
        """The `flush` command: frontswap's pages are written back to SRC first (they exist
        nowhere else), then both pools are emptied."""
        await self.frontswap.flush()
        await self.cc.flush(self.pool)

    async def unmount(self) -> None:
        """Drop the page cache and surrender the pool (invalidate_fs)."""
        for cached in list(self.files.values()):
            self.pc.drop_file(cached)
        await self.frontswap.unmount()
        await self.cc.invalidate_fs(self.pool)

    def stats(self) -> dict[str, int]:
        return {
            **self.pc.stats(),
            "pagecache.files": len(self.files),
            "pagecache.external_changes": self.coherence.external_changes,
            "pagecache.remote_changes": self.coherence.remote_changes,
            "pagecache.cut_offs": self.coherence.cut_offs,
            "fs.fenced_changes": self.fenced_changes,
            "pagecache.puts_saved": self.puts_saved,
            "pagecache.reclaimed": self.reclaimed,
            "pagecache.bypassed": self.bypassed,
            "pagecache.fill_waits": self.fill_waits,
            "pagecache.fill_conflicts": self.fill_conflicts,
            "pagecache.change_waits": self.change_waits,
            **self.io.stats(),
            "backing.uncached_reads": self.uncached_reads,
            "backing.reads": self.backing_reads,
            "backing.read_bytes": self.backing_read_bytes,
            "backing.writes": self.backing_writes,
            "backing.write_bytes": self.backing_write_bytes,
            **self.frontswap.stats(),
        }
