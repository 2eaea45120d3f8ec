"""cluster: one pool shared by every mount of the same SRC, as ocfs2 nodes shared one.

Each tmemfs process mounting SRC with cleancache=cluster is a node. The
pool is named by SRC's 16-byte pool uuid (fusefs/pooluuid.py) and kept in a
store: `lmdb` on this host (the default: nothing else to run) or Redis for
nodes on several hosts (backends/store.py describes both). Gets are
non-destructive: any node's put serves every node.

Coherency comes from per-file versions kept in the store (versions()):
pages are stored under the version they were read at, so a page can only
ever be served to a reader that checked the file has not changed since.
The data path bumps versions around every change; docs/coherency.md has
the protocol and the argument for it.

A node that stalls (SIGSTOP, a blocked loop) or loses its store is cut off:
its epoch changes and the data path drops every page it caches before
serving again. No node ever waits for another: versions are bumped without
locks and store writes that would wait longer than a few milliseconds are
skipped (a skipped put is a miss; a skipped invalidation is reclaimed
later, as the version already hides the pages).
"""

from __future__ import annotations

import logging
import os
import socket
import time
import uuid as uuidlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import ClassVar

import trio

from backends.base import Backend, FileVersions, OptionSpec, StatValue, existing_directory, parse_positive_seconds
from backends.page import PagePut
from backends.store import Member, PageStore, StoreUnavailable, file_prefix, split_key, versioned_key

log = logging.getLogger("tmemfs.cluster")

HEARTBEAT_S = 1.0
LOCK_WAIT_S = 0.002
NODE_TIMEOUT_S = 5.0
ABANDON_WAIT_S = 1.0  # what undoing a failed join may take (it must not hold the mount up)
PASSWORD_ENV = "TMEMFS_REDIS_PASSWORD"
USERNAME_ENV = "TMEMFS_REDIS_USERNAME"
REDIS_SCHEMES = ("redis://", "rediss://", "unix://")


def parse_store(text: str) -> str:
    if text == "lmdb" or text.startswith(REDIS_SCHEMES):
        return text
    raise ValueError("must be lmdb or a redis://, rediss:// or unix:// URL")


def read_secret(path: str) -> str:
    """The first line of a credentials file."""
    with open(path, encoding="utf-8") as f:
        return f.readline().strip()


def readable_file(path: str) -> str:
    read_secret(path)  # fail at mount time, with the reason, not at the first connection
    return path


class StoreVersions(FileVersions):
    """File versions of one pool's store, with the node's cut-off detection.

    The frontend bounds each call with cc_timeout and contains its faults; a call that
    fails or is cut short marks the store unreachable here, and a bump that did not
    complete stays owed until the store is back."""

    def __init__(self, store: PageStore, node_timeout: float) -> None:
        self.store = store
        self.node_timeout = node_timeout
        self.epoch = 0
        self.bump_flushes = store.bump_flushes
        self.cut_offs = 0
        self.unknown = 0  # version checks that could not be answered
        self.pending: set[bytes] = set()  # bumps owed to the store since it went away
        self.last_tick = time.monotonic()
        self._was_up = store.up

    @property
    def joined(self) -> bool:
        return self.store.node >= 0

    def tick(self) -> None:
        """Called about once a second; a long gap means this process was stopped."""
        now = time.monotonic()
        if now - self.last_tick > self.node_timeout:
            self.cut_off(f"this node did not run for {now - self.last_tick:.1f} s")
        self.last_tick = now

    def cut_off(self, why: str) -> None:
        self.epoch += 1
        self.cut_offs += 1
        log.warning("cut off from the pool (%s): dropping every cached page before serving again", why)

    async def _call(self, method: Callable[[bytes], Awaitable[int]], file: bytes) -> int:
        self.tick()  # a read or a bump after a long silence also means this process was stopped
        try:
            if not self._was_up:
                await self._rejoin_catch_up()
            return await method(file)
        except BaseException as exc:  # (a timeout of the frontend's too: trio.Cancelled)
            if self._was_up:
                self._was_up = False
                log.warning("pool store unreachable (%s): caching nothing until it is back",
                            exc if isinstance(exc, Exception) else "no answer in time")
            raise

    async def _rejoin_catch_up(self) -> None:
        """The store is back: pay the bumps we owe, then start a new epoch."""
        for file in list(self.pending):
            await self.store.bump(file)
            self.pending.discard(file)
        self._was_up = True
        self.cut_off("the store was unreachable")

    async def version(self, file: bytes) -> int:
        try:
            return await self._call(self.store.version, file)
        except BaseException:
            self.unknown += 1
            raise

    async def bump(self, file: bytes) -> int:
        try:
            return await self._call(self.store.bump, file)
        except BaseException:
            self.pending.add(file)  # owed until the store is back
            raise

    def page_key(self, file: bytes, version: int, stamp: int) -> bytes:
        return versioned_key(file, version, stamp)

    def file_key(self, file: bytes) -> bytes:
        return file_prefix(file)


@dataclass
class SharedPool:
    uuid: bytes
    store: PageStore
    versions: StoreVersions
    private: bool
    members: list[Member] = field(default_factory=list)


class ClusterBackend(Backend):
    name = "cluster"
    summary = "a pool shared by every mount of one SRC (ocfs2-style nodes), coherent across nodes"
    options: ClassVar[dict[str, OptionSpec]] = {
        "cc_store": OptionSpec(parse_store, "lmdb (this host, default) or redis://[user:pass@]host:port/db, "
                                            "rediss://..., unix:///path (nodes on several hosts)"),
        "cc_store_password_file": OptionSpec(readable_file, f"file whose first line is the Redis password "
                                                  f"(or set {PASSWORD_ENV}; {USERNAME_ENV} for an ACL user)"),
        "cc_dir": OptionSpec(existing_directory, "directory of the lmdb store, best a tmpfs; default /dev/shm"),
        "node_timeout": OptionSpec(parse_positive_seconds, "a node silent this long is dead; a node "
                                                           "stalled this long drops its caches; a change "
                                                           "waits this long for its node to join the pool, "
                                                           "then fails with EIO; default 5"),
    }
    exclusive_gets = False
    shared = True
    # Its store evicts by its own clock and other nodes share it: no page could be kept for sure.
    persistent_pools = False

    def __init__(self, capacity: int, cc_store: str = "lmdb", cc_store_password_file: str | None = None,
                 node_timeout: float = NODE_TIMEOUT_S, cc_dir: str = "/dev/shm", timeout: float = 1.0) -> None:
        super().__init__(capacity)
        self.store_spec = cc_store
        self.password_file = cc_store_password_file
        self.node_timeout = node_timeout
        self.directory = cc_dir
        self.timeout = timeout
        self.awaits_io = cc_store != "lmdb"  # type: ignore[misc]
        self.pools: dict[int, SharedPool] = {}
        self._next_pool = 0
        self.reset_stats()

    def reset_stats(self) -> None:
        self.puts = self.refused_puts = self.succ_gets = self.failed_gets = 0
        self.hits_from_others = self.store_faults = 0

    def _make_store(self, uuid: bytes) -> PageStore:
        if self.store_spec == "lmdb":
            from backends.lmdbstore import LmdbStore

            return LmdbStore(uuid=uuid, capacity=self.capacity, directory=self.directory,
                             node_timeout=self.node_timeout, lock_wait=LOCK_WAIT_S)
        from backends.redisstore import RedisStore

        # The store itself falls back to the URL's password, then to the environment.
        password = read_secret(self.password_file) if self.password_file is not None else None
        return RedisStore(uuid=uuid, url=self.store_spec, password=password,
                          node_timeout=self.node_timeout, retry_interval=HEARTBEAT_S)

    async def create_pool(self, uuid: bytes | None) -> int:
        private = uuid is None
        real_uuid = uuidlib.uuid4().bytes if uuid is None else uuid
        store = self._make_store(real_uuid)
        name = f"{socket.gethostname()}:{os.getpid()}"
        try:
            await store.join(name)
        except BaseException as exc:
            with trio.CancelScope(shield=True), trio.move_on_after(ABANDON_WAIT_S):
                await store.abandon()  # a join cut short must not stay listed as a dead member
            if isinstance(exc, StoreUnavailable):  # lmdb: the pool is full, or being made too long
                raise StoreUnavailable(f"cannot join pool {real_uuid.hex()}: {exc}") from exc
            raise
        versions = StoreVersions(store, self.node_timeout)
        pool = self._next_pool
        self._next_pool += 1
        self.pools[pool] = SharedPool(real_uuid, store, versions, private)
        log.info("joined %s pool %s as node %d (store %s)", "private" if private else "shared",
                 real_uuid.hex(), store.node, store.stats().get("store", "?"))
        return pool

    def versions(self, pool: int) -> FileVersions | None:
        return self.pools[pool].versions

    async def put_page(self, pool: int, key: bytes, index: int, page: memoryview) -> bool:
        return (await self.put_pages(pool, [(key, index, page)]))[0]

    async def put_pages(self, pool: int, pages: list[PagePut]) -> list[bool]:
        """The pages of each key (a file at one version and stamp: what one eviction mostly
        holds) in one store call, not one round trip per page."""
        runs: dict[bytes, list[int]] = {}
        for n, (key, _index, _page) in enumerate(pages):
            runs.setdefault(key, []).append(n)
        stored = [False] * len(pages)
        store = self.pools[pool].store
        for key, positions in runs.items():
            file, tag, stamp = split_key(key)
            if tag is None:  # a key without a version is never stored
                continue
            kept = await store.put_many(file, tag, [(pages[n][1], pages[n][2]) for n in positions], stamp)
            for n, ok in zip(positions, kept, strict=True):
                stored[n] = ok
            done = sum(kept)
            self.puts += done
            self.refused_puts += len(kept) - done
        return stored

    async def get_page(self, pool: int, key: bytes, index: int, out: memoryview) -> bool:
        return (await self.get_pages(pool, key, index, [out]))[0]

    async def get_pages(self, pool: int, key: bytes, first: int, outs: list[memoryview]) -> list[bool]:
        file, tag, stamp = split_key(key)
        shared = self.pools[pool]
        if tag is None:
            putters: list[int | None] = [None] * len(outs)
        else:
            putters = await shared.store.get_many(file, tag, first, outs, stamp)
        hits = [p is not None for p in putters]
        found = sum(hits)
        self.succ_gets += found
        self.failed_gets += len(outs) - found
        self.hits_from_others += found - putters.count(shared.store.node)
        return hits

    async def invalidate_page(self, pool: int, key: bytes, index: int) -> None:
        file, tag, stamp = split_key(key)
        if tag is not None:
            await self.pools[pool].store.invalidate_page(file, tag, index, stamp)

    async def invalidate_inode(self, pool: int, key: bytes) -> None:
        file, tag, _stamp = split_key(key)
        await self.pools[pool].store.invalidate_file(file, tag)

    async def destroy_pool(self, pool: int) -> None:
        shared = self.pools.pop(pool)
        if shared.private:
            await shared.store.clear()
        await shared.store.leave()

    def check_capacity(self, nbytes: int) -> None:
        """Refused: the pool is the nodes' together, sized in the store, not by one node."""
        if self.store_spec == "lmdb":
            frames = [shared.store.stats().get("capacity_pages") for shared in self.pools.values()]
            sized = f" ({frames[0]} pages)" if frames else ""
            raise ValueError(f"the cluster pool's page slab is shared by every node and was sized by the first "
                             f"node to join{sized}: it cannot change on a live mount")
        raise ValueError("the cluster pool lives in Redis and is bounded by the server's maxmemory "
                         "(CONFIG SET maxmemory there), not by cc_size")

    async def run(self) -> None:
        """Heartbeats: publish this node's counters, refresh the member list, spot stalls."""
        while True:
            for shared in list(self.pools.values()):
                shared.versions.tick()
                with trio.move_on_after(self.timeout):
                    try:
                        await shared.store.heartbeat(self.puts, self.succ_gets, self.hits_from_others)
                        shared.members = await shared.store.members()
                    except Exception as exc:
                        self.store_faults += 1
                        log.debug("heartbeat failed: %s", exc)
            await trio.sleep(HEARTBEAT_S)

    def stats(self) -> dict[str, StatValue]:
        out: dict[str, StatValue] = {
            "puts": self.puts,
            "refused_puts": self.refused_puts,
            "succ_gets": self.succ_gets,
            "failed_gets": self.failed_gets,
            "hits_from_others": self.hits_from_others,
            "heartbeat_faults": self.store_faults,
        }
        for shared in self.pools.values():  # one pool per mount; several only in tests
            out["pool_uuid"] = shared.uuid.hex()
            out["private"] = int(shared.private)
            out["node"] = shared.store.node
            out["cut_offs"] = shared.versions.cut_offs
            out["versions_unknown"] = shared.versions.unknown
            out["pending_bumps"] = len(shared.versions.pending)
            out["members_alive"] = sum(1 for m in shared.members if m.alive)
            out.update({f"store.{k}": v for k, v in shared.store.stats().items()})
            now = time.time()
            for m in shared.members:
                prefix = f"member.{m.node}"
                out[f"{prefix}.name"] = m.name
                out[f"{prefix}.alive"] = int(m.alive)
                out[f"{prefix}.heartbeat_age_s"] = round(max(0.0, now - m.heartbeat), 1)
                out[f"{prefix}.puts"] = m.puts
                out[f"{prefix}.gets"] = m.gets
                out[f"{prefix}.hits_from_others"] = m.hits_from_others
        return out

    async def close(self) -> None:
        for pool in list(self.pools):
            await self.destroy_pool(pool)
