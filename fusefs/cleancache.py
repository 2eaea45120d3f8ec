"""The cleancache frontend: the Linux hook names, the tmem rules, fault containment.

The page cache calls these hooks exactly where the kernel did
(mm/cleancache.c): init_fs / init_shared_fs at mount, get_page on a miss,
put_page when a clean page is evicted, invalidate_page / invalidate_inode /
invalidate_fs when data changes or the mount goes away.

For private pools the frontend keeps a ledger: the xxh3-64 digest of the
last page put under each handle. It lets the frontend enforce the rules
whatever the backend does:

* exclusive gets: a hit removes the handle from the ledger, so a second
  get misses even if the backend kept its copy (and it is told to drop it);
* put-put-get: the ledger holds only the latest digest, so an older copy
  never verifies;
* get-get: a handle not in the ledger is a miss without asking the backend;
* corruption: a page whose digest does not match is dropped and counted.

A backend exception is counted, logged and becomes a miss: cleancache is
ephemeral, so a fault may cost a disk read but never an I/O error.

The frontend also hands out the coherency rules of a pool for the backend
in force (`coherency`, fusefs/coherency.py), and their calls to a backend's
file versions go through `ask`: the same timeout and fault containment as
the page hooks, a fault meaning "cannot know".

Lazy init and registration (the Linux 3.10 fix, plus what Linux never had):
pools made while no backend is registered (cleancache=none, or a backend
that could not create its pool) are placeholders: every get misses. A
backend registered at run time gets a real pool for each placeholder, and
a live backend that could not make one (a store slow or busy when the
mount joined it) is asked again every POOL_RETRY_S until it can. Making a
pool gets JOIN_TIMEOUT_S, not cc_timeout: joining a shared pool takes
several round trips, more than any one page should wait.
`unregister` first lets frontswap write its stored pages back to SRC (they
exist nowhere else), then switches the frontend to no backend (one assignment,
before any await, so no later request can reach the old backend), then
waits for the hooks in flight on a backend that awaits I/O to end (each
call is bounded by cc_timeout; an in-memory backend's hook never yields,
so none of those can be in flight), then flushes and closes the old
backend's pools. A hook in flight keeps the ledger and pool it started
with: a put ending after an unregister records nothing in the new ledger.
Registering over a live backend is refused (EBUSY) unless it is an
explicit replace.
"""

from __future__ import annotations

import functools
import logging
import sys
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, TypeVar

import trio
import xxhash

from backends.base import Backend, BackendUnavailable, StatValue, check_memory_size
from backends.page import PagePut
from fusefs import PAGE_SIZE
from fusefs.coherency import Coherency, CoherencyStats, LocalCoherency, UnjoinedNode, VersionedCoherency
from fusefs.pagecache import PageCache
from fusefs.tracing import Tracer

log = logging.getLogger("tmemfs.cleancache")

PRIVATE_UUID = b"\xff" * 16  # Xen: an all-ones uuid asks for a private pool
POOL_RETRY_S = 1.0
JOIN_TIMEOUT_S = 10.0
DRAIN_CALLS = 4  # unregister waits at most this many cc_timeouts for hooks in flight
_digest = xxhash.xxh3_64_intdigest
T = TypeVar("T")


def _held_runs(held: dict[int, int], first: int, count: int) -> Iterator[tuple[int, int]]:
    """Each run of pages first..first+count-1 that a ledger holds, as (start, end) offsets;
    entries before the next run may be taken meanwhile."""
    n = 0
    while n < count:
        if first + n not in held:
            n += 1
            continue
        end = n + 1
        while end < count and first + end in held:
            end += 1
        yield n, end
        n = end


@dataclass
class Ledger:
    """Digests of the pages a private pool may hold, bounded in entries."""

    limit: int
    files: dict[bytes, dict[int, int]] = field(default_factory=dict)
    entries: int = 0

    def record(self, key: bytes, index: int, digest: int) -> None:
        pages = self.files.setdefault(key, {})
        if index not in pages:
            self.entries += 1
        pages[index] = digest

    def forget(self, key: bytes, index: int) -> bool:
        pages = self.files.get(key)
        if pages is None or pages.pop(index, None) is None:
            return False
        self.entries -= 1
        if not pages:
            del self.files[key]
        return True

    def take(self, key: bytes, first: int, end: int) -> list[int]:
        """Digests of pages first..end-1 (all recorded), forgotten: a get uses them up."""
        pages = self.files[key]
        digests = [pages.pop(index) for index in range(first, end)]
        self.entries -= len(digests)
        if not pages:
            del self.files[key]
        return digests

    def take_one(self, key: bytes, index: int) -> int:
        """take() of one page (a random read's), without building a list."""
        pages = self.files[key]
        digest = pages.pop(index)
        self.entries -= 1
        if not pages:
            del self.files[key]
        return digest

    def forget_file(self, key: bytes) -> bool:
        pages = self.files.pop(key, None)
        if pages is None:
            return False
        self.entries -= len(pages)
        return True

    def oldest_file(self) -> bytes | None:
        """The file recorded longest ago, to trim when over the limit."""
        return next(iter(self.files), None) if self.entries > self.limit else None


@dataclass
class Pool:
    """A frontend pool id and what backs it (None: placeholder, no backend pool yet)."""

    uuid: bytes | None
    backend_pool: int | None
    ledger: Ledger | None  # private pools only


def _holds_backend(hook: Callable[..., Awaitable[T]]) -> Callable[..., Awaitable[T]]:
    """Count a hook in flight on a backend that awaits I/O, so that unregister waits for it.
    A plain function, not a coroutine: a hook on an in-memory backend (which never yields,
    so none can be in flight) is its own coroutine, without a frame of ours around it."""

    @functools.wraps(hook)
    def call(self: Cleancache, *args: Any) -> Awaitable[T]:
        backend = self.backend
        if backend is None or not backend.awaits_io:
            return hook(self, *args)
        return self._held(hook(self, *args))

    return call


def _ledger_limit(backend: Backend) -> int:
    """Room for a digest of every page the backend could hold, at 4x compression."""
    return max(1024, 4 * backend.capacity // 4096)


class BackendTimeout(Exception):
    """A backend call did not finish in time: treated like any backend fault."""


class BackendBusy(Exception):
    """A backend is registered already (Linux: -EBUSY)."""


_Live = tuple[Backend, Pool, int]  # the backend in force, a pool it backs, and its backend pool


class Cleancache:
    """Pools, hooks and counters of one mount."""

    def __init__(self, backend: Backend | None, timeout: float = 1.0) -> None:
        self.backend: Backend | None = None
        self.timeout = timeout
        self.pools: dict[int, Pool] = {}
        self._next_pool = 0
        self._ledger_limit = 1024
        self.retired_stats: dict[str, StatValue] = {}
        self.registrations = 0
        self.generation = 0  # changes with every register or unregister
        self.tracer: Tracer | None = None
        self._nursery: trio.Nursery | None = None
        self._run_scope: trio.CancelScope | None = None
        self._hooks_in_flight = 0
        self._drained: trio.Event | None = None
        # Called with the backend in force before it goes away (unregister, replace), while it
        # still serves: frontswap writes its stored pages back to SRC there (fusefs/frontswap.py).
        self.retiring: list[Callable[[Backend], Awaitable[None]]] = []
        if backend is not None:
            self._attach(backend)
        self.reset_stats()

    async def _held(self, hook: Awaitable[T]) -> T:
        self._hooks_in_flight += 1
        try:
            return await hook
        finally:
            self._hooks_in_flight -= 1
            if not self._hooks_in_flight and self._drained is not None:
                self._drained.set()

    def _attach(self, backend: Backend) -> None:
        self.backend = backend
        self._ledger_limit = _ledger_limit(backend)
        self.registrations += 1
        self.generation += 1
        self._start_run()

    def start(self, nursery: trio.Nursery) -> None:
        """Run the backend's background work (heartbeats) in `nursery` while mounted."""
        self._nursery = nursery
        self._start_run()

    def _start_run(self) -> None:
        backend = self.backend
        if self._nursery is None or backend is None:
            return
        scope = self._run_scope = trio.CancelScope()

        async def run() -> None:
            try:
                await backend.run()
            except Exception:
                self._fault("run", backend)

        async def run_and_retry() -> None:
            with scope:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(run)
                    nursery.start_soon(self._retry_placeholders, backend)

        self._nursery.start_soon(run_and_retry)

    async def _retry_placeholders(self, backend: Backend) -> None:
        """Ask the live backend again for the pools it could not make (lazy init)."""
        while True:
            await trio.sleep(POOL_RETRY_S)
            for pool_id, pool in list(self.pools.items()):
                if pool.backend_pool is not None or self.backend is not backend:
                    continue
                try:
                    made = await self._make_pool(backend, pool.uuid)
                except Exception as exc:
                    self.pool_retries += 1
                    if self.pool_retries == 1 or self.pool_retries % 60 == 0:
                        log.warning("backend %s still cannot make pool %d (%s: %s; attempt %d), "
                                    "retrying every %.0f s", backend.name, pool_id, type(exc).__name__,
                                    exc, self.pool_retries, POOL_RETRY_S)
                    continue
                if self.backend is not backend or self.pools.get(pool_id) is not pool:
                    try:  # unregistered or unmounted meanwhile
                        await self._call(backend, backend.destroy_pool, made)
                    except Exception:
                        self._fault("destroy_pool", backend)
                    return
                pool.backend_pool = made
                self.generation += 1  # the data path re-reads versions()
                log.info("backend %s made pool %d after %d failed attempt(s)", backend.name, pool_id,
                         self.pool_retries)

    async def register(self, backend: Backend, replace: bool = False) -> None:
        """Make a backend live; placeholder pools get real pools on it."""
        if self.backend is not None:
            if not replace:
                raise BackendBusy(f"backend {self.backend.name} is registered (unregister or replace it)")
            await self.unregister()
        self._attach(backend)
        for pool in self.pools.values():
            if pool.ledger is not None:
                pool.ledger = Ledger(self._ledger_limit)
            pool.backend_pool = await self._backend_pool(pool.uuid)
        log.info("backend %s registered; %d pool(s) mapped", backend.name, len(self.pools))

    async def unregister(self) -> Backend | None:
        """Switch to no backend at once, then flush and close the old one; first, while it
        still serves, what holds pages that exist nowhere else (frontswap) writes them back."""
        if self.backend is not None:
            for retiring in self.retiring:
                await retiring(self.backend)
        old, self.backend = self.backend, None
        if old is None:
            return None
        self.generation += 1  # the data path re-reads versions()
        if self._run_scope is not None:
            self._run_scope.cancel()
            self._run_scope = None
        await self._drain_calls(old)
        await self._destroy_pools(old)
        self.retired_stats = self._backend_stats(old)
        try:
            await self._call(old, old.close)
        except Exception:
            self._fault("close", old)
        log.info("backend %s unregistered; pools are placeholders until one registers", old.name)
        return old

    async def _drain_calls(self, old: Backend) -> None:
        """Wait a while for the calls in flight into `old` to end before it is closed."""
        with trio.move_on_after(DRAIN_CALLS * self.timeout):
            while self._hooks_in_flight:
                self._drained = trio.Event()
                await self._drained.wait()
        self._drained = None
        if self._hooks_in_flight:
            log.warning("unregister: %d cleancache call(s) of %s still in flight after %.1f s; "
                        "closing it anyway (they end as misses)", self._hooks_in_flight, old.name,
                        DRAIN_CALLS * self.timeout)

    async def _destroy_pools(self, old: Backend) -> None:
        """Make every pool a placeholder (with an empty ledger), then destroy its pool in `old`."""
        live = [p.backend_pool for p in self.pools.values() if p.backend_pool is not None]
        for pool in self.pools.values():
            pool.backend_pool = None
            if pool.ledger is not None:
                pool.ledger = Ledger(self._ledger_limit)
        for backend_pool in live:
            try:
                await self._call(old, old.destroy_pool, backend_pool)
            except Exception:
                self._fault("destroy_pool", old)

    async def set_cc_size(self, nbytes: int) -> None:
        """Resize the live backend's pool (cc_size) without flushing it: the backend evicts at
        once by its own policy, or grows at once; the ledgers' bound follows (a digest left of
        a page evicted meanwhile only makes a get ask and miss). With no backend registered
        nothing changes here: the caller keeps nbytes for the next register. ValueError (one
        line) if refused: below a page, beyond this machine's memory, or as the backend says."""
        if nbytes < PAGE_SIZE:
            raise ValueError(f"cc_size must be at least one page ({PAGE_SIZE} bytes), not {nbytes}")
        backend = self.backend
        if backend is None:
            check_memory_size("cc_size", nbytes)
            return
        try:
            await backend.set_capacity(nbytes)
        except ValueError:
            raise
        except Exception as exc:
            self._fault("set_capacity", backend)
            raise ValueError(f"backend {backend.name} failed to resize ({type(exc).__name__}: {exc})") from None
        self._ledger_limit = _ledger_limit(backend)
        for pool_id in list(self.pools):
            live = self._live(pool_id)
            if live is None or live[0] is not backend or (ledger := live[1].ledger) is None:
                continue
            ledger.limit = self._ledger_limit
            await self._trim(backend, live[2], ledger)
        log.info("cc_size set to %d (backend %s)", nbytes, backend.name)

    def reset_stats(self) -> None:
        self.succ_gets = self.failed_gets = self.puts = self.invalidates = 0
        self.inode_invalidates = self.fs_invalidates = 0
        self.backend_errors = self.verify_failures = self.backend_timeouts = self.pool_retries = 0
        self.peek_races = 0

    # -- pools ---------------------------------------------------------------

    async def init_fs(self) -> int:
        """A private pool for one mount (mm/cleancache.c: cleancache_init_fs)."""
        return await self._new_pool(None)

    async def init_shared_fs(self, uuid: bytes) -> int:
        """The pool every caller with the same 16-byte uuid shares."""
        if len(uuid) != 16:
            raise ValueError("a shared pool uuid is exactly 16 bytes")
        return await self._new_pool(None if uuid == PRIVATE_UUID else uuid)

    async def _new_pool(self, uuid: bytes | None) -> int:
        pool_id = self._next_pool
        self._next_pool += 1
        ledger = Ledger(self._ledger_limit) if uuid is None else None
        self.pools[pool_id] = Pool(uuid, await self._backend_pool(uuid), ledger)
        return pool_id

    async def _backend_pool(self, uuid: bytes | None) -> int | None:
        if self.backend is None:
            return None
        try:
            return await self._make_pool(self.backend, uuid)
        except Exception:
            self._fault("create_pool")
            return None

    async def _make_pool(self, backend: Backend, uuid: bytes | None) -> int:
        if not backend.awaits_io:
            return await backend.create_pool(uuid)
        with trio.move_on_after(max(self.timeout, JOIN_TIMEOUT_S)):
            return await backend.create_pool(uuid)
        self.backend_timeouts += 1
        raise BackendTimeout(f"create_pool took longer than {max(self.timeout, JOIN_TIMEOUT_S)} s")

    def _live(self, pool_id: int) -> _Live | None:
        """The backend in force, the pool and its backend pool; None while the pool is a
        placeholder (no backend, or none could make it) or gone."""
        pool = self.pools.get(pool_id)
        backend = self.backend
        if backend is None or pool is None or pool.backend_pool is None:
            return None
        return backend, pool, pool.backend_pool

    def coherency(self, pool_id: int, pc: PageCache, stats: CoherencyStats, node: bool) -> Coherency:
        """The coherency rules of a pool under the backend in force (fusefs/coherency.py):
        versioned where the backend keeps file versions for it (a cluster pool), else local;
        a cluster node (`node`) whose pool has no versions caches and changes nothing."""
        live = self._live(pool_id)
        versions = live[0].versions(live[2]) if live is not None else None
        if versions is not None:
            return VersionedCoherency(self, pool_id, pc, stats, versions)
        return (UnjoinedNode if node else LocalCoherency)(self, pool_id, pc, stats)

    @_holds_backend
    async def ask(self, operation: str, method: Callable[..., Awaitable[T]], *args: object) -> T | None:
        """A call to the backend in force outside the page hooks (its file versions), with
        their timeout and fault containment: None if it failed or no backend is in force."""
        backend = self.backend
        if backend is None:
            return None
        try:
            return await self._call(backend, method, *args)
        except Exception:
            self._fault(operation, backend)
            return None

    def may_wait(self) -> bool:
        """Whether a hook can yield to other requests (the backend awaits I/O)."""
        backend = self.backend
        return backend is not None and backend.awaits_io

    def can_copy(self, pool_id: int) -> bool:
        """Whether copy_pages may serve this pool: its gets are non-destructive (shared)
        or its backend can peek."""
        live = self._live(pool_id)
        return live is not None and (live[1].ledger is None or live[0].peeks)

    def holds_nothing(self, pool_id: int) -> bool:
        """Whether the pool is a placeholder (no backend, or none could make it): every get misses."""
        return self._live(pool_id) is None

    async def invalidate_fs(self, pool_id: int) -> None:
        """Surrender the pool: every page in it is dropped."""
        self.fs_invalidates += 1
        live = self._live(pool_id)
        pool = self.pools.pop(pool_id, None)
        if pool is not None:
            await self._destroy(pool, live)

    async def flush(self, pool_id: int) -> None:
        """Empty a pool but keep its id (the `flush` control command)."""
        pool = self.pools[pool_id]
        await self._destroy(pool, self._live(pool_id))
        if pool.ledger is not None:
            pool.ledger = Ledger(self._ledger_limit)
        pool.backend_pool = await self._backend_pool(pool.uuid)

    async def _destroy(self, pool: Pool, live: _Live | None) -> None:
        """Make `pool` a placeholder; its backend pool (`live`: as _live found it) is destroyed."""
        pool.backend_pool = None
        if live is None:
            return
        backend, _pool, backend_pool = live
        try:
            await self._call(backend, backend.destroy_pool, backend_pool)
        except Exception:
            self._fault("destroy_pool")

    # -- pages ---------------------------------------------------------------

    async def get_page(self, pool_id: int, key: bytes, index: int, out: memoryview) -> bool:
        """Fill `out` from the pool and return True, or return False (a miss)."""
        return (await self.get_pages(pool_id, key, index, [out]))[0]

    @_holds_backend
    async def get_pages(self, pool_id: int, key: bytes, first: int, outs: list[memoryview]) -> list[bool]:
        """get_page for pages first, first+1, ...: one backend call where the pool is
        shared; a private pool asks only for the pages its ledger holds."""
        live = self._live(pool_id)
        if live is None:
            hits = [False] * len(outs)
        elif (ledger := live[1].ledger) is None:
            backend, _pool, backend_pool = live
            try:
                hits = await self._call(backend, backend.get_pages, backend_pool, key, first, outs)
            except Exception:
                self._fault("get_pages")
                hits = [False] * len(outs)
        else:
            held = ledger.files.get(key)
            if held is None:  # the common miss: nothing of this file was put
                hits = [False] * len(outs)
            elif len(outs) == 1:
                hits = [first in held and await self._get_private(live, ledger, key, first, outs[0])]
            else:
                hits = await self._get_private_run(live, ledger, key, first, outs, held)
        self._count_gets(key, first, hits)
        return hits

    @_holds_backend
    async def copy_pages(self, pool_id: int, key: bytes, first: int, outs: list[memoryview],
                         enough: int) -> list[bool] | None:
        """Pages first.. into `outs`, left in the pool, for a reader that keeps no copy (the
        sequential bypass; only where can_copy): which ones the pool had. None, with nothing
        counted, if it had fewer than `enough`: the reader then reads the usual way. A
        private pool is asked only for the runs its ledger holds, and each page is verified
        against the digest the ledger had when it was asked for (a get or invalidate of
        another request may take the entry while a backend that awaits I/O answers)."""
        live = self._live(pool_id)
        assert live is not None  # (can_copy)
        ledger = live[1].ledger
        hits: list[bool] | None
        if ledger is None:
            backend, _pool, backend_pool = live
            try:
                hits = await self._call(backend, backend.get_pages, backend_pool, key, first, outs)
            except Exception:
                self._fault("get_pages")
                return None
        else:
            held = ledger.files.get(key)
            if held is None or sum(map(held.__contains__, range(first, first + len(outs)))) < enough:
                return None
            hits = await self._peek_private(live, ledger, key, first, outs, held)
        if hits is None or hits.count(True) < enough:
            return None
        self._count_gets(key, first, hits)
        return hits

    async def _peek_private(self, live: _Live, ledger: Ledger, key: bytes, first: int, outs: list[memoryview],
                            held: dict[int, int]) -> list[bool] | None:
        """Peek each run of pages first.. that a private pool's ledger holds, verified against
        the digests it had when asked; None if the backend failed (the pool is as it was: the
        usual gets verify each page)."""
        backend, pool, backend_pool = live
        hits = [False] * len(outs)
        for n, end in _held_runs(held, first, len(outs)):
            digests = [held[index] for index in range(first + n, first + end)]
            try:
                got = await self._call(backend, backend.peek_pages, backend_pool, key, first + n, outs[n:end])
            except Exception:
                self._fault("peek_pages")
                return None
            for k, hit in enumerate(got, n):
                if hit and _digest(outs[k]) != digests[k - n]:
                    hit = False
                    if self._replaced_meanwhile(pool, ledger, key, first + k, digests[k - n]):
                        self.peek_races += 1  # the page's new owner keeps it
                    else:
                        self._verified(backend, outs[k], digests[k - n])  # counted, logged
                        ledger.forget(key, first + k)
                        await self._drop(backend, backend_pool, key, first + k)
                hits[k] = hit
        return hits

    @staticmethod
    def _replaced_meanwhile(pool: Pool, ledger: Ledger, key: bytes, index: int, digest: int) -> bool:
        """Whether the ledger's entry for a page changed while a peek of it waited: another
        request got it, invalidated it or put a newer copy, so the backend rightly answered
        with other bytes (a peek takes no page lock). Not the backend's fault: a miss, and the
        page stays for whoever put it."""
        return pool.ledger is not ledger or ledger.files.get(key, {}).get(index) != digest

    def _count_gets(self, key: bytes, first: int, hits: list[bool]) -> None:
        found = hits.count(True)
        self.succ_gets += found
        self.failed_gets += len(hits) - found
        if self.tracer is not None:
            for n, hit in enumerate(hits):
                self.tracer.event("get+" if hit else "get-", key, first + n)

    async def _get_private(self, live: _Live, ledger: Ledger, key: bytes, index: int, out: memoryview) -> bool:
        """A get from a private pool (its `ledger`) of a page the ledger holds: exclusive, verified."""
        backend, _pool, backend_pool = live
        digest = ledger.take_one(key, index)  # exclusive: used up, whatever happens
        try:
            hit = await self._call(backend, backend.get_page, backend_pool, key, index, out)
        except Exception:
            self._fault("get_page")
            await self._drop(backend, backend_pool, key, index)
            return False
        if not hit:
            return False
        good = self._verified(backend, out, digest)
        if not good or not backend.exclusive_gets:
            await self._drop(backend, backend_pool, key, index)  # it must not come back
        return good

    async def _get_private_run(self, live: _Live, ledger: Ledger, key: bytes, first: int,
                               outs: list[memoryview], held: dict[int, int]) -> list[bool]:
        """_get_private for a run of pages: each run of them the ledger holds in one backend call."""
        backend, _pool, backend_pool = live
        hits = [False] * len(outs)
        for n, end in _held_runs(held, first, len(outs)):
            digests = ledger.take(key, first + n, first + end)
            try:
                got = await self._call(backend, backend.get_pages, backend_pool, key, first + n, outs[n:end])
            except Exception:
                self._fault("get_pages")
                for index in range(first + n, first + end):
                    await self._drop(backend, backend_pool, key, index)
                got = [False] * (end - n)
            for k, hit in enumerate(got):
                if hit:
                    good = hits[n + k] = self._verified(backend, outs[n + k], digests[k])
                    if not good or not backend.exclusive_gets:
                        await self._drop(backend, backend_pool, key, first + n + k)
        return hits

    def _verified(self, backend: Backend, out: memoryview, digest: int) -> bool:
        """Whether a private pool's page is the one put (else it is counted and must be dropped)."""
        if _digest(out) == digest:
            return True
        self.verify_failures += 1
        log.warning("backend %s returned a page that does not match what was put; "
                    "dropped it (a miss, not an error)", backend.name)
        return False

    async def put_page(self, pool_id: int, key: bytes, index: int, page: memoryview) -> None:
        """Offer a clean page being evicted; the backend may keep it or not."""
        await self.put_pages(pool_id, [(key, index, page)])

    @_holds_backend
    async def put_pages(self, pool_id: int, pages: list[PagePut]) -> None:
        """put_page for several (key, index, page): one backend call."""
        self.puts += len(pages)
        if self.tracer is not None:
            for key, index, _page in pages:
                self.tracer.event("put", key, index)
        live = self._live(pool_id)
        if live is None:
            return
        backend, pool, backend_pool = live
        ledger = pool.ledger  # as it is when the put starts
        try:
            if len(pages) == 1:  # a single eviction (4k random reads): the backend's plain put
                stored = [await self._call(backend, backend.put_page, backend_pool, *pages[0])]
            else:
                stored = await self._call(backend, backend.put_pages, backend_pool, pages)
        except Exception:
            self._fault("put_pages")
            for key, index, _page in pages:  # some may be stored: none may be trusted
                await self._drop(backend, backend_pool, key, index)
            stored = [False] * len(pages)
        if ledger is not None:
            await self._record(backend, backend_pool, ledger, pages, stored)

    async def _record(self, backend: Backend, backend_pool: int, ledger: Ledger,
                      pages: list[PagePut], stored: list[bool]) -> None:
        """A private pool's ledger after puts: the digest of each page kept, none of the others."""
        for (key, index, page), kept in zip(pages, stored, strict=True):
            if kept:
                ledger.record(key, index, _digest(page))
            else:
                ledger.forget(key, index)
        if ledger.entries > ledger.limit:
            await self._trim(backend, backend_pool, ledger)

    @_holds_backend
    async def invalidate_page(self, pool_id: int, key: bytes, index: int) -> None:
        """The page changed or went away: the pool must not return it again."""
        await self.invalidate_pages(pool_id, key, range(index, index + 1))

    @_holds_backend
    async def invalidate_pages(self, pool_id: int, key: bytes, indexes: range) -> None:
        """invalidate_page for each page of `indexes` (what a write covered): one call however
        large the write, and a private pool's backend hears only of the pages its ledger holds."""
        self.invalidates += len(indexes)
        if self.tracer is not None:
            for index in indexes:
                self.tracer.event("invalidate", key, index)
        live = self._live(pool_id)
        if live is None:
            return
        backend, pool, backend_pool = live
        dropping: range | list[int] = indexes
        if pool.ledger is not None:  # never stored there: nothing to tell the backend
            held = pool.ledger.files.get(key)
            if held is None:
                return
            dropping = [i for i in held if i in indexes] if len(held) < len(indexes) else \
                [i for i in indexes if i in held]
            for index in dropping:
                pool.ledger.forget(key, index)
        for index in dropping:
            await self._drop(backend, backend_pool, key, index)

    @_holds_backend
    async def invalidate_inode(self, pool_id: int, key: bytes) -> None:
        """Every page of a file changed or went away (truncate, delete, replace)."""
        self.inode_invalidates += 1
        if self.tracer is not None:
            self.tracer.event("invalidate_inode", key, "*")
        live = self._live(pool_id)
        if live is None:
            return
        backend, pool, backend_pool = live
        if pool.ledger is not None and not pool.ledger.forget_file(key):
            return
        await self._drop_file(backend, backend_pool, key)

    # -- internals -----------------------------------------------------------

    def _call(self, backend: Backend, method: Callable[..., Awaitable[T]], *args: object) -> Awaitable[T]:
        """Call a backend method; one that may wait on I/O gets at most `timeout` seconds.
        An in-memory backend's call is awaited as it is: no frame of ours on the hot path."""
        if not backend.awaits_io:
            return method(*args)
        return self._bounded(method, *args)

    async def _bounded(self, method: Callable[..., Awaitable[T]], *args: object) -> T:
        with trio.move_on_after(self.timeout):
            return await method(*args)
        self.backend_timeouts += 1
        raise BackendTimeout(f"{method.__name__} took longer than {self.timeout} s")

    async def _trim(self, backend: Backend, backend_pool: int, ledger: Ledger) -> None:
        while (key := ledger.oldest_file()) is not None:
            ledger.forget_file(key)
            await self._drop_file(backend, backend_pool, key)

    async def _drop(self, backend: Backend, backend_pool: int, key: bytes, index: int) -> None:
        try:
            await self._call(backend, backend.invalidate_page, backend_pool, key, index)
        except Exception:
            self._fault("invalidate_page", backend)

    async def _drop_file(self, backend: Backend, backend_pool: int, key: bytes) -> None:
        try:
            await self._call(backend, backend.invalidate_inode, backend_pool, key)
        except Exception:
            self._fault("invalidate_inode", backend)

    def _fault(self, operation: str, backend: Backend | None = None) -> None:
        self.backend_errors += 1
        culprit = backend or self.backend
        name = culprit.name if culprit is not None else "?"
        if self.backend_errors <= 10 or self.backend_errors % 1000 == 0:
            exc = sys.exc_info()[1]
            if isinstance(exc, BackendUnavailable):  # expected while a store is down: no traceback
                log.warning("backend %s: %s in %s (fault %d); treated as a miss",
                            name, exc, operation, self.backend_errors)
            else:
                log.exception("backend %s failed in %s (fault %d); treated as a miss",
                              name, operation, self.backend_errors)

    def _backend_stats(self, backend: Backend) -> dict[str, StatValue]:
        try:
            return {f"backend.{k}": v for k, v in backend.named_stats().items()}
        except Exception:
            self._fault("stats", backend)
            return {}

    def stats(self) -> dict[str, StatValue]:
        ledger_entries = sum(p.ledger.entries for p in self.pools.values() if p.ledger)
        placeholders = sum(1 for p in self.pools.values() if p.backend_pool is None)
        backend_stats = self.retired_stats
        if self.backend is not None:
            backend_stats = self._backend_stats(self.backend)
        return {
            "succ_gets": self.succ_gets,
            "failed_gets": self.failed_gets,
            "puts": self.puts,
            "invalidates": self.invalidates,
            "cleancache.backend": self.backend.name if self.backend is not None else "none",
            "cleancache.registrations": self.registrations,
            "cleancache.pools": len(self.pools),
            "cleancache.placeholder_pools": placeholders,
            "cleancache.pool_retries": self.pool_retries,
            "cleancache.inode_invalidates": self.inode_invalidates,
            "cleancache.fs_invalidates": self.fs_invalidates,
            "cleancache.backend_errors": self.backend_errors,
            "cleancache.verify_failures": self.verify_failures,
            "cleancache.peek_races": self.peek_races,
            "cleancache.backend_timeouts": self.backend_timeouts,
            "cleancache.ledger_entries": ledger_entries,
            **backend_stats,
        }
