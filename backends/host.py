"""cleancache=tmem|zcache|dedup with cc_host=NAME: the mount is one client of a host pool.

A host pool (backends/hoststore.py) is the other side of the seed thread's debate: one tmem
for every mount on the machine that names it, whatever their SRC, with one budget (the first
client's cc_size), one eviction order over all clients' pages, and accounting per client,
as Xen tmem kept it for its guests. Each mount keeps its own private pools (the frontend's
ledger checks every page it gets back, exactly as for a per-mount backend), so a client
never sees another's pages; with dedup, a page two clients hold is stored once.

The mount's backend name stays that of its encoding (tmem, zcache, dedup), so the frontend,
the stats and the tools treat it as that backend; `backend.NAME.host_name` tells a host
client from a per-mount one. Every store call is microseconds of shared-memory work, so it
runs inline on the loop (awaits_io False), as the cluster's lmdb store does; a stalled
client holds others up for at most the store's bounded lock wait.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import ClassVar

import trio

from backends.base import (
    Backend,
    OptionSpec,
    StatValue,
    check_memory_size,
    existing_directory,
    parse_positive_seconds,
    size_in_bytes,
)
from backends.hoststore import HostError, HostStore, NoSuchHost, check_host_name
from backends.page import PAGE_SIZE, PagePut

log = logging.getLogger("tmemfs.backends.host")

NODE_TIMEOUT_S = 5.0
POLICIES = ("lru", "sieve")  # what a store shared by processes can keep (see hoststore.py)


def parse_weight(text: str) -> int:
    weight = int(text)
    if not 1 <= weight <= 1000:
        raise ValueError("must be a whole number from 1 to 1000")
    return weight


def parse_cap(text: str) -> int:
    cap = size_in_bytes(text)
    check_memory_size("cc_cap", cap)
    if cap < PAGE_SIZE:
        raise ValueError(f"must be at least one page ({PAGE_SIZE} bytes)")
    return cap


#: the options every backend that can be a host client declares (tmem, zcache, dedup)
HOST_OPTIONS: dict[str, OptionSpec] = {
    "cc_host": OptionSpec(check_host_name, "NAME: be a client of host pool NAME on this machine (made by its first "
                                      "client with its cc_size; one budget and eviction order for all)"),
    "cc_weight": OptionSpec(parse_weight, "a host client's share of the budget under contention, "
                                          "relative to the others'; default 1"),
    "cc_cap": OptionSpec(parse_cap, "SIZE: the most a host client may hold; default no cap"),
    "cc_dir": OptionSpec(existing_directory, "directory of host pools, best a tmpfs; default /dev/shm"),
    "node_timeout": OptionSpec(parse_positive_seconds,
                               "a killed host client's pages are reclaimed within this; default 5"),
}


@contextmanager
def _refusal() -> Iterator[None]:
    """The store's HostError as the one-line ValueError the control file refuses a command with."""
    try:
        yield
    except HostError as exc:
        raise ValueError(str(exc)) from None


class HostBackend(Backend):
    """One mount's view of a host pool; subclasses say how its pages are stored."""

    options: ClassVar[dict[str, OptionSpec]] = {}
    compress: bool = False  # lz4 (zcache; dedup with dd_compress=lz4)
    dedup: ClassVar[bool] = False
    awaits_io: ClassVar[bool] = False
    peeks: ClassVar[bool] = True
    persistent_pools: ClassVar[bool] = True

    def __init__(self, capacity: int, cc_host: str, cc_policy: str = "lru", cc_weight: int = 1,
                 cc_cap: int | None = None, cc_dir: str = "/dev/shm", node_timeout: float = NODE_TIMEOUT_S,
                 dd_compress: str = "none") -> None:
        super().__init__(capacity)
        if cc_policy not in POLICIES:
            raise ValueError(f"cc_policy={cc_policy}: a host pool evicts by {' or '.join(POLICIES)}")
        if cc_cap is not None and cc_cap > capacity:
            raise ValueError(f"cc_cap={cc_cap} is more than cc_size={capacity}")
        self.host, self.policy, self.weight, self.cap = cc_host, cc_policy, cc_weight, cc_cap
        self.directory, self.node_timeout = cc_dir, node_timeout
        self.compress = type(self).compress or dd_compress == "lz4"
        self.store: HostStore | None = None
        self._preflight()

    def _preflight(self) -> None:
        """What can be known before mounting (and before the daemon forks: the store is joined
        only at the first pool): an existing host this mount could not join is one line now."""
        try:
            admin = HostStore.attach(self.host, self.directory)
        except NoSuchHost:
            return  # this mount will make it
        except HostError as exc:
            raise ValueError(str(exc)) from None
        try:
            budget, policy = admin.host_stats()["budget_bytes"], admin.policy()
        finally:
            admin.close()
        if self.cap is not None and self.cap > budget:
            raise ValueError(f"cc_cap={self.cap} is more than host {self.host}'s budget ({budget} bytes)")
        if policy != self.policy:
            raise ValueError(f"cc_policy={self.policy}: host {self.host} evicts by {policy} (its first client's)")
        self.capacity = budget

    def _joined(self) -> HostStore:
        if self.store is None:
            store = HostStore(self.host, self.directory, node_timeout=self.node_timeout)
            try:
                store.join(self.label or f"pid {os.getpid()}", self.capacity, policy=self.policy,
                           weight=self.weight, cap=self.cap)
            except BaseException:
                store.leave()
                raise
            self.store = store
            self.capacity = store.host_stats()["budget_bytes"]
            log.info("joined host pool %s in %s (budget %d bytes, weight %d)", self.host, self.directory,
                     self.capacity, self.weight)
        return self.store

    async def create_pool(self, uuid: bytes | None) -> int:
        return self._joined().new_pool()

    async def create_persistent_pool(self) -> int:
        return self._joined().new_pool(persistent=True)

    async def put_page(self, pool: int, key: bytes, index: int, page: memoryview) -> bool:
        assert self.store is not None
        return self.store.put(pool, key, index, page, compress=self.compress, dedup=self.dedup)

    async def put_pages(self, pool: int, pages: list[PagePut]) -> list[bool]:
        assert self.store is not None
        return self.store.put_many(pool, pages, compress=self.compress, dedup=self.dedup)

    async def get_page(self, pool: int, key: bytes, index: int, out: memoryview) -> bool:
        assert self.store is not None
        return self.store.get(pool, key, index, out)

    async def get_pages(self, pool: int, key: bytes, first: int, outs: list[memoryview]) -> list[bool]:
        assert self.store is not None
        return self.store.get_many(pool, key, first, outs)

    async def peek_pages(self, pool: int, key: bytes, first: int, outs: list[memoryview]) -> list[bool]:
        assert self.store is not None
        return self.store.get_many(pool, key, first, outs, keep=True)

    async def invalidate_page(self, pool: int, key: bytes, index: int) -> None:
        assert self.store is not None
        self.store.invalidate_page(pool, key, index)

    async def invalidate_inode(self, pool: int, key: bytes) -> None:
        assert self.store is not None
        self.store.invalidate_inode(pool, key)

    async def destroy_pool(self, pool: int) -> None:
        assert self.store is not None
        self.store.destroy_pool(pool)

    def check_capacity(self, nbytes: int) -> None:
        check_memory_size("cc_size", nbytes)
        if self.cap is not None and nbytes < self.cap:
            raise ValueError(f"cc_size={nbytes} is less than this client's cc_cap ({self.cap} bytes)")

    async def set_capacity(self, nbytes: int) -> None:
        """The host's budget (every client's), as tmemctl set cc_size asks of this client."""
        self.check_capacity(nbytes)
        with _refusal():
            self._joined().set_budget(nbytes)
        self.capacity = nbytes

    def take_back(self, nbytes: int) -> int:
        """The donor takes `nbytes` of the host's budget back now (the control file's take-back)."""
        with _refusal():
            store = self._joined()
            taken = store.take_back(nbytes)
        self.capacity = store.host_stats()["budget_bytes"]
        return taken

    def give_back(self, nbytes: int) -> int:
        with _refusal():
            store = self._joined()
            given = store.give_back(nbytes)
        self.capacity = store.host_stats()["budget_bytes"]
        return given

    def set_weight(self, weight: int) -> int:
        with _refusal():
            self._joined().set_weight(weight)
        before, self.weight = self.weight, weight
        return before

    def set_cap(self, cap: int | None) -> int | None:
        with _refusal():
            self._joined().set_cap(cap)
        before, self.cap = self.cap, cap
        return before

    def stats(self) -> dict[str, StatValue]:
        out: dict[str, StatValue] = {"host_name": self.host}
        if self.store is None:
            return out
        out.update({f"client.{k}": v for k, v in self.store.client_stats().items()})
        out.update({f"host.{k}": v for k, v in self.store.host_stats().items()})
        return out

    async def run(self) -> None:
        """Reclaim the pages of clients that died (SIGKILL) within the timeout."""
        while True:
            await trio.sleep(self.node_timeout / 2)
            if self.store is not None:
                self.store.flush_pending()  # exclusive gets' removals, if no put came since
                reclaimed = self.store.reclaim_dead()
                if reclaimed:
                    log.info("host %s: reclaimed %d pages of dead clients", self.host, reclaimed)

    async def close(self) -> None:
        if self.store is not None:
            self.store.leave()
            self.store = None


class HostTmem(HostBackend):
    name = "tmem"
    summary = "tmem in a host pool (cc_host=)"


class HostZcache(HostBackend):
    name = "zcache"
    summary = "zcache in a host pool (cc_host=): lz4, two compressed pages a frame (zbud)"
    compress = True


class HostDedup(HostBackend):
    name = "dedup"
    summary = "dedup in a host pool (cc_host=): one copy per content across clients"
    dedup = True


HOST_BACKENDS: dict[str, type[HostBackend]] = {cls.name: cls for cls in (HostTmem, HostZcache, HostDedup)}


def build_host_client(names: list[str], capacity: int, options: dict[str, object]) -> HostBackend:
    """The backend of `cleancache=NAME,cc_host=...`: ValueError (one line) if NAME cannot be a
    host client or an option does not apply to one."""
    if len(names) > 1:
        raise ValueError(f"cc_host: a host pool serves one backend, not a chain ({'+'.join(names)})")
    cls = HOST_BACKENDS.get(names[0])
    if cls is None:
        raise ValueError(f"cc_host: cleancache={names[0]} cannot be a host client (tmem, zcache or dedup can)")
    allowed = {"cc_policy", *HOST_OPTIONS, *(("dd_compress",) if cls.dedup else ())}
    other = sorted(set(options) - allowed)
    if other:
        raise ValueError(f"{other[0]}: not an option of a host client (its host stores pages its own way)")
    return cls(capacity, **options)  # type: ignore[arg-type]
