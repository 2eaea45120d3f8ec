"""Frontswap: swap files of SRC whose pages live in a persistent pool of the backend.

`-o frontswap=RELPATH` names files of SRC that are swap areas (the kernel swaps
to them through a loop device). They bypass tmemfs's page cache and cleancache:
a page-aligned write of whole pages is a store per page (taken: nothing reaches
SRC; refused: that page is written to SRC), a read is a load per page, then SRC
for the pages not stored. Unlike cleancache pages, a stored page exists nowhere
else, so:

* every stored page has its xxh3-64 digest in a ledger; a load that cannot
  return exactly that page (a miss, other bytes) fails with EIO, never with
  other bytes or zeroes, and so do later loads of it until it is written again;
* a backend fault on a store is a refused store (the caller writes SRC);
* before the backend in force goes away (unregister, replace) and at `flush`,
  every stored page is written back to SRC first, then invalidated.

Requests on one page are serialised by a per-page lock (as the kernel's page
lock serialises swap I/O of a page), never the whole file: a load racing a
store of the same page returns one whole page or the other.

An area is the file's open life: it starts at the first open and ends at the
last close (or unmount), which drops its pages, as swapoff does
(frontswap_invalidate_area). A file is a swap area by its identity (device and
inode) taken at mount: a rename keeps it one; a file made later under its name
is not one; once its last link is gone and it is closed, it is forgotten.
"""

from __future__ import annotations

import errno
import logging
import os
from collections.abc import AsyncIterator, Callable, Iterable, KeysView
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import trio
import xxhash

from backends.base import Backend
from fusefs import PAGE_MASK, PAGE_SHIFT, PAGE_SIZE
from fusefs.cleancache import POOL_RETRY_S, Cleancache
from fusefs.pagecache import run_end
from fusefs.srcio import SrcIO

log = logging.getLogger("tmemfs.frontswap")

_digest = xxhash.xxh3_64_intdigest


class PageLocks:
    """One lock per page index, made on demand and dropped when nobody holds or waits for it."""

    def __init__(self) -> None:
        self._locks: dict[int, trio.Lock] = {}

    @asynccontextmanager
    async def hold(self, indexes: Iterable[int]) -> AsyncIterator[None]:
        """Hold the locks of `indexes` (ascending, so that two holders never deadlock)."""
        held: list[tuple[int, trio.Lock]] = []
        try:
            for index in indexes:
                lock = self._locks.get(index)
                if lock is None:
                    lock = self._locks[index] = trio.Lock()
                await lock.acquire()
                held.append((index, lock))
            yield
        finally:
            for index, lock in held:
                lock.release()
                if not lock.locked() and self._locks.get(index) is lock:
                    del self._locks[index]

    def __len__(self) -> int:
        return len(self._locks)


@dataclass(eq=False)
class SwapArea:
    """An open swap file: its own descriptor of SRC, size, stored pages and page locks."""

    key: bytes
    fd: int
    writable: bool
    size: int
    dev: int  # SRC's st_dev of it: how its reads run (SrcIO.device)
    opens: int = 1
    digests: dict[int, int] = field(default_factory=dict)  # the ledger: index -> digest of the stored page
    lost: set[int] = field(default_factory=set)  # stored pages that cannot be returned: EIO until rewritten
    locks: PageLocks = field(default_factory=PageLocks)


class Frontswap:
    """The frontswap frontend of one mount: areas, the persistent pool, counters."""

    def __init__(self, cc: Cleancache, io: SrcIO, count_read: Callable[[int], None],
                 count_write: Callable[[int], None]) -> None:
        self.cc = cc
        self.io = io
        self._count_read = count_read
        self._count_write = count_write
        self.files: set[tuple[int, int]] = set()  # (st_dev, st_ino) of the swap files, taken at mount
        self.areas: dict[bytes, SwapArea] = {}
        self._backend: Backend | None = None  # the backend holding the persistent pool
        self._pool = 0
        self._closing: Backend | None = None  # going away: stores refused while pages are written back
        self._making = trio.Lock()
        self._retry_at = 0.0
        self._storing = 0
        self._stored_all: trio.Event | None = None
        cc.retiring.append(self.retire)
        self.reset_stats()

    def reset_stats(self) -> None:
        self.loads = self.succ_stores = self.failed_stores = self.invalidates = self.load_errors = 0

    def stats(self) -> dict[str, int]:
        stored = sum(len(a.digests) for a in self.areas.values())
        return {
            "frontswap.loads": self.loads,
            "frontswap.succ_stores": self.succ_stores,
            "frontswap.failed_stores": self.failed_stores,
            "frontswap.invalidates": self.invalidates,
            "frontswap.stored_pages": stored,
            "frontswap.stored_bytes": stored * PAGE_SIZE,
            "frontswap.areas": len(self.areas),
            "frontswap.load_errors": self.load_errors,
        }

    # -- the pool --------------------------------------------------------------

    async def _live_pool(self) -> tuple[Backend, int] | None:
        """The persistent pool on the backend in force, made on first use; None if there is
        none to be had (no backend, one without persistent pools, one going away)."""
        backend = self.cc.backend
        if backend is None or backend is self._closing or not backend.persistent_pools:
            return None
        if self._backend is backend:
            return backend, self._pool
        async with self._making:
            if self._backend is not backend:
                if trio.current_time() < self._retry_at or not await self._make_pool(backend):
                    return None
        return (backend, self._pool) if self.cc.backend is backend else None

    async def _make_pool(self, backend: Backend) -> bool:
        pool = await self.cc.ask("create_persistent_pool", backend.create_persistent_pool)
        if pool is None or self.cc.backend is not backend:
            self._retry_at = trio.current_time() + POOL_RETRY_S  # a store meanwhile is refused: SRC
            return False
        assert not any(a.digests for a in self.areas.values())  # (retire emptied them)
        self._backend, self._pool, self._closing = backend, pool, None
        log.info("frontswap: persistent pool %d on backend %s", pool, backend.name)
        return True

    # -- pages -----------------------------------------------------------------

    async def store(self, area: bytes, index: int, page: memoryview) -> bool:
        """frontswap_store: True if the pool took the page (SRC need not have it), False if it
        was refused (the caller writes it to SRC). No older copy survives either way."""
        swap = self.areas.get(area)
        if swap is None:
            return False
        self._storing += 1
        try:
            stored = await self._store(swap, index, page)
        finally:
            self._storing -= 1
            if not self._storing and self._stored_all is not None:
                self._stored_all.set()
        if stored:
            self.succ_stores += 1
        else:
            self.failed_stores += 1
        return stored

    async def _store(self, swap: SwapArea, index: int, page: memoryview) -> bool:
        old = swap.digests.pop(index, None)  # put-put-get: the older copy never survives
        swap.lost.discard(index)
        live = await self._live_pool()
        if live is None or not swap.writable or (index + 1) << PAGE_SHIFT > swap.size:
            if old is not None and self._backend is not None:
                await self._drop(self._backend, self._pool, swap.key, index)
            return False
        backend, pool = live
        digest = _digest(page)
        taken = await self.cc.ask("frontswap_store", backend.put_page, pool, swap.key, index, page)
        if taken and (index + 1) << PAGE_SHIFT <= swap.size and self._backend is backend:
            swap.digests[index] = digest  # (no await between the checks and this)
            return True
        if taken or taken is None:  # kept past a truncate, or a fault left who knows what
            await self._drop(backend, pool, swap.key, index)
        return False

    async def load(self, area: bytes, index: int, out: memoryview) -> bool:
        """frontswap_load: True with the stored page in `out`; False if not stored (read SRC);
        OSError(EIO) if it is stored but cannot be returned intact."""
        swap = self.areas.get(area)
        if swap is None:
            return False
        found = await self._fetch(swap, index, out)
        if found:
            self.loads += 1
        return found

    async def _fetch(self, swap: SwapArea, index: int, out: memoryview) -> bool:
        if index in swap.lost:
            self.load_errors += 1
            raise OSError(errno.EIO, f"swap page {index} was lost")
        digest = swap.digests.get(index)
        if digest is None:
            return False
        backend, pool = self._backend, self._pool
        got = None if backend is None else await self.cc.ask("frontswap_load", backend.get_page, pool,
                                                             swap.key, index, out)
        if got is None:  # a fault: the page may still be there, so a later load may find it
            self.load_errors += 1
            raise OSError(errno.EIO, f"swap page {index}: backend fault")
        if got and _digest(out) == digest:
            return True
        await self._lose(swap, index, "missing" if not got else "other bytes")
        raise OSError(errno.EIO, f"swap page {index} was lost")

    async def _lose(self, swap: SwapArea, index: int, why: str) -> None:
        """A stored page that cannot be returned: every load of it is EIO until it is rewritten."""
        self.load_errors += 1
        swap.lost.add(index)
        del swap.digests[index]
        backend = self._backend
        log.error("frontswap: page %d of a swap area cannot be returned (%s, backend %s): its reads fail "
                  "with EIO until it is written again", index, why, backend.name if backend else "none")
        if backend is not None:
            await self._drop(backend, self._pool, swap.key, index)

    async def invalidate_page(self, area: bytes, index: int) -> None:
        """frontswap_invalidate_page: the slot is free (or rewritten): drop its page."""
        swap = self.areas.get(area)
        if swap is None:
            return
        swap.lost.discard(index)
        if swap.digests.pop(index, None) is None:
            return
        self.invalidates += 1
        if self._backend is not None:
            await self._drop(self._backend, self._pool, area, index)

    async def invalidate_area(self, area: bytes) -> None:
        """frontswap_invalidate_area (swapoff): every page of the area is dropped."""
        swap = self.areas.get(area)
        if swap is None:
            return
        swap.lost.clear()
        self.invalidates += len(swap.digests)
        had = bool(swap.digests)
        swap.digests.clear()
        backend = self._backend
        if had and backend is not None:
            await self.cc.ask("frontswap_invalidate_area", backend.invalidate_inode, self._pool, area)

    def stored(self, area: bytes) -> KeysView[int]:
        """Indexes of the area's stored pages."""
        swap = self.areas.get(area)
        return (swap.digests if swap is not None else {}).keys()

    async def _drop(self, backend: Backend, pool: int, area: bytes, index: int) -> None:
        await self.cc.ask("frontswap_invalidate", backend.invalidate_page, pool, area, index)

    # -- writing back to SRC -----------------------------------------------------

    async def _write_back(self, swap: SwapArea, index: int) -> None:
        """Write a stored page to SRC (caller holds its lock); OSError(EIO) if it cannot be had."""
        page = memoryview(bytearray(PAGE_SIZE))
        if not await self._fetch(swap, index, page):
            return
        length = min(PAGE_SIZE, swap.size - (index << PAGE_SHIFT))
        if length > 0:
            done = await self.io.pwrite(swap.fd, page[:length], index << PAGE_SHIFT)
            self._count_write(done)
            if done < length:
                raise OSError(errno.ENOSPC, f"swap page {index}: short write to SRC")

    async def _write_back_all(self, losing: bool) -> int:
        """Write every stored page back to SRC and invalidate it; what could not be written
        stays stored, or (`losing`: the backend goes away) is lost: EIO on read."""
        failed = 0
        for swap in list(self.areas.values()):
            for index in sorted(swap.digests):
                async with swap.locks.hold((index,)):
                    if index not in swap.digests:
                        continue
                    try:
                        await self._write_back(swap, index)
                    except OSError as exc:
                        failed += 1
                        log.error("frontswap: could not write page %d of a swap area back to SRC (%s)%s",
                                  index, exc, "; it is lost" if losing else "; it stays stored")
                        if losing and index in swap.digests:
                            await self._lose(swap, index, "backend going away")
                        continue
                    await self.invalidate_page(swap.key, index)
        return failed

    async def flush(self) -> None:
        """`tmemctl flush`: stored pages go back to SRC, then out of the pool (a live swap area
        must not lose pages the kernel will read again)."""
        if self._backend is not None:
            await self._write_back_all(losing=False)

    async def retire(self, backend: Backend) -> None:
        """The backend in force is about to go (unregister, replace): new stores are refused,
        stores in flight end, every stored page goes back to SRC, the pool is destroyed."""
        if self._backend is not backend:
            return
        self._closing = backend
        while self._storing:
            self._stored_all = trio.Event()
            await self._stored_all.wait()
        self._stored_all = None
        failed = await self._write_back_all(losing=True)
        log.info("frontswap: backend %s going away: stored pages written back to SRC%s", backend.name,
                 f" ({failed} could not be)" if failed else "")
        await self._destroy_pool(backend)

    async def _destroy_pool(self, backend: Backend) -> None:
        pool, self._backend = self._pool, None
        await self.cc.ask("destroy_pool", backend.destroy_pool, pool)

    # -- files -----------------------------------------------------------------

    def is_swap(self, dev: int, ino: int) -> bool:
        return (dev, ino) in self.files

    def open(self, key: bytes, path_fd: int) -> SwapArea:
        """The area of a swap file being opened (its first open starts it), with a descriptor
        of its own that reads and writes SRC (read-only where SRC is: nothing is stored then)."""
        swap = self.areas.get(key)
        if swap is not None:
            swap.opens += 1
            return swap
        path = f"/proc/self/fd/{path_fd}"
        try:
            fd, writable = os.open(path, os.O_RDWR | os.O_CLOEXEC), True
        except OSError:
            fd, writable = os.open(path, os.O_RDONLY | os.O_CLOEXEC), False
        st = os.fstat(fd)
        swap = self.areas[key] = SwapArea(key, fd, writable, st.st_size, st.st_dev)
        return swap

    async def close(self, swap: SwapArea) -> None:
        """A handle closed; the last one ends the area (swapoff: its pages are dropped). A file
        whose last link is gone stops being a swap file (its inode number may come back)."""
        swap.opens -= 1
        if swap.opens > 0:
            return
        try:
            await self.invalidate_area(swap.key)
        finally:
            self.areas.pop(swap.key, None)
            st = os.fstat(swap.fd)
            os.close(swap.fd)
            if st.st_nlink == 0:
                self.files.discard((st.st_dev, st.st_ino))

    async def unmount(self) -> None:
        """Every area ends and the pool goes."""
        for swap in list(self.areas.values()):
            swap.opens = 1
            await self.close(swap)
        if self._backend is not None:
            await self._destroy_pool(self._backend)

    async def read(self, swap: SwapArea, offset: int, size: int) -> memoryview:
        """Bytes offset..offset+size of a swap file: each stored page from the pool, the rest from SRC."""
        end = min(offset + size, swap.size)
        if end <= offset:
            return memoryview(b"")
        first, last = offset >> PAGE_SHIFT, (end - 1) >> PAGE_SHIFT
        count = last - first + 1
        view = memoryview(bytearray(count << PAGE_SHIFT))  # zeroes where SRC is shorter than it was
        async with swap.locks.hold(range(first, last + 1)):  # (nobody stores or drops these meanwhile)
            stored = [index in swap.digests or index in swap.lost for index in range(first, last + 1)]
            n = 0
            while n < count:
                if stored[n]:
                    await self.load(swap.key, first + n, view[n << PAGE_SHIFT : (n + 1) << PAGE_SHIFT])
                    n += 1
                    continue
                run = run_end(stored, n, True)
                got = await self.io.preadv(swap.fd, [view[n << PAGE_SHIFT : run << PAGE_SHIFT]],
                                           (first + n) << PAGE_SHIFT, swap.dev)
                self._count_read(got)
                n = run
        base = first << PAGE_SHIFT
        return view[offset - base : end - base]

    async def write(self, swap: SwapArea, offset: int, data: bytes | memoryview) -> int:
        """A write to a swap file: whole pages within the file are stored (what is refused goes
        to SRC); anything else goes to SRC after the stored pages it touches are written back
        (partly covered) or dropped (wholly covered)."""
        view = memoryview(data)
        if not view:
            return 0
        end = offset + len(view)
        first, last = offset >> PAGE_SHIFT, (end - 1) >> PAGE_SHIFT
        async with swap.locks.hold(range(first, last + 1)):
            if not (offset | len(view)) & PAGE_MASK and end <= swap.size:
                return await self._store_pages(swap, first, view)
            for index in range(first, last + 1):
                if index in swap.digests or index in swap.lost:
                    start = index << PAGE_SHIFT
                    if offset > start or end < start + PAGE_SIZE:
                        await self._write_back(swap, index)
                    await self.invalidate_page(swap.key, index)
            done = await self.io.pwrite(swap.fd, view, offset)
            self._count_write(done)
            swap.size = max(swap.size, offset + done)
            return done

    async def _store_pages(self, swap: SwapArea, first: int, view: memoryview) -> int:
        """Store each page; write each run of refused pages to SRC."""
        count = len(view) >> PAGE_SHIFT
        refused = [not await self.store(swap.key, first + n, view[n << PAGE_SHIFT : (n + 1) << PAGE_SHIFT])
                   for n in range(count)]
        n = 0
        while n < count:
            if not refused[n]:
                n += 1
                continue
            run = run_end(refused, n, False)
            want = (run - n) << PAGE_SHIFT
            done = await self.io.pwrite(swap.fd, view[n << PAGE_SHIFT : run << PAGE_SHIFT], (first + n) << PAGE_SHIFT)
            self._count_write(done)
            if done < want:  # SRC is full: as much as landed in order
                return (n << PAGE_SHIFT) + done
            n = run
        return len(view)

    async def truncate(self, swap: SwapArea, size: int) -> None:
        """Truncate a swap file: pages past the new end are dropped (the one it cuts is written
        back first, up to the end); then SRC is truncated."""
        cut, tail = size >> PAGE_SHIFT, size & PAGE_MASK
        beyond = sorted(i for i in (*swap.digests, *swap.lost) if i >= cut)
        async with swap.locks.hold(beyond):
            if tail and cut in swap.digests:
                await self._write_back(swap, cut)
            swap.size = size  # stores from now on, or ending from now on, keep nothing past it
            for index in beyond:
                await self.invalidate_page(swap.key, index)
        await self.io.call(os.ftruncate, swap.fd, size)
        for index in sorted(i for i in swap.digests if i >= cut):  # a store that ended meanwhile
            async with swap.locks.hold((index,)):
                await self.invalidate_page(swap.key, index)
