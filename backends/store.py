"""Where a shared (cluster) pool lives: pages, per-file versions and members.

The cluster backend (backends/cluster.py) speaks to one PageStore per pool;
lmdbstore.py keeps a pool on this host (LMDB in /dev/shm plus a shared
version table), redisstore.py keeps it in Redis for nodes on several hosts.

Coherency rests on per-file versions (docs/coherency.md): every change to a
file's data or size bumps its version before and after it lands in SRC,
and every page in the pool is stored under the version it was read at. A
page is only ever returned to a reader asking for exactly that version, so
a stale put, a put racing an invalidation, or a page read before another
node's write can exist in the store but can never be served.

Addresses: `file` is the file key (a name_to_handle_at handle, the same on
every node); `tag` is the file's version when the page was read; `stamp` is
a digest of what SRC looked like then (size, mtime, ctime: see
fusefs/datapath.py), so a page read before somebody wrote to SRC directly,
behind every node's back, never matches a reader who opened the file after;
`index` is the page number. The frontend sees one opaque key per (file,
tag, stamp), made by `versioned_key`; `split_key` takes it apart again.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass

from backends.base import BackendUnavailable, StatValue

TAG_BYTES = 8
STAMP_BYTES = 8


def file_prefix(file: bytes) -> bytes:
    """The key every version of `file` starts with (length-prefixed, so no file's
    prefix is a prefix of another file's)."""
    if len(file) > 255:
        raise ValueError("file keys are at most 255 bytes")
    return bytes((len(file),)) + file


def versioned_key(file: bytes, tag: int, stamp: int) -> bytes:
    """The cleancache key of `file` at version `tag`, read while SRC's stamp digest was `stamp`."""
    return file_prefix(file) + tag.to_bytes(TAG_BYTES, "big") + stamp.to_bytes(STAMP_BYTES, "big")


def split_key(key: bytes) -> tuple[bytes, int | None, int]:
    """(file, tag, stamp) from versioned_key, or (file, None, 0) from file_prefix.

    Raises ValueError for anything else (a key made without versions).
    """
    if not key:
        raise ValueError("empty key")
    n = key[0]
    rest = len(key) - 1 - n
    if rest == 0:
        return key[1:], None, 0
    if rest == TAG_BYTES + STAMP_BYTES:
        end = 1 + n + TAG_BYTES
        return key[1 : 1 + n], int.from_bytes(key[1 + n : end], "big"), int.from_bytes(key[end:], "big")
    raise ValueError("not a cluster key")


class StoreUnavailable(BackendUnavailable):
    """The store cannot be reached now; the caller treats it as a miss."""


@dataclass(frozen=True)
class Member:
    """One node of a pool as the store sees it (Xen's tmem-list, per client)."""

    node: int
    name: str  # host:pid:mountpoint
    heartbeat: float  # time.time() of its last heartbeat
    alive: bool  # heartbeat recent (within the store's node timeout)
    puts: int
    gets: int  # gets it served from the pool (hits)
    hits_from_others: int  # of those, pages another node had put


class PageStore(abc.ABC):
    """One shared pool in one store. Every method is safe to call from one trio task.

    Methods that may wait (a network store) are bounded by the caller's
    timeout; any exception is a fault the caller turns into a miss.
    """

    #: this node's id within the pool, set by join()
    node: int = -1
    #: True when bump() also drops every stored page of the file (then the
    #: data path need not flush the file in the pool around a change)
    bump_flushes: bool = False

    @abc.abstractmethod
    async def join(self, name: str) -> int:
        """Become a member of the pool (a node id, unique among live members)."""

    @abc.abstractmethod
    async def heartbeat(self, puts: int, gets: int, hits_from_others: int) -> None:
        """Say this node is alive and publish its counters (called about once a second)."""

    @abc.abstractmethod
    async def members(self) -> list[Member]:
        """Every node that joined and has not left, alive or not."""

    @abc.abstractmethod
    async def version(self, file: bytes) -> int:
        """The file's current version: equal versions mean no change in between."""

    @abc.abstractmethod
    async def bump(self, file: bytes) -> int:
        """Advance the file's version (a change is starting or has landed); the new value.

        Versions only grow, and a bump must never wait for another node.
        """

    @abc.abstractmethod
    async def get(self, file: bytes, tag: int, index: int, out: memoryview, stamp: int = 0) -> int | None:
        """Copy the page stored for (file, tag, stamp, index) into `out`; the node that put it,
        or None on a miss. Non-destructive."""

    async def get_many(self, file: bytes, tag: int, first: int, outs: list[memoryview],
                       stamp: int = 0) -> list[int | None]:
        """get() for pages first, first+1, ... (one transaction or round trip where the store can)."""
        return [await self.get(file, tag, first + n, out, stamp) for n, out in enumerate(outs)]

    @abc.abstractmethod
    async def put(self, file: bytes, tag: int, index: int, page: memoryview, stamp: int = 0) -> bool:
        """Store a copy under (file, tag, stamp, index), evicting to make room; False if refused.

        A store may refuse a put whose tag is not the file's current version.
        """

    async def put_many(self, file: bytes, tag: int, pages: list[tuple[int, memoryview]],
                       stamp: int = 0) -> list[bool]:
        """put() for several (index, page) of one file at one version and stamp (one round trip
        where the store can)."""
        return [await self.put(file, tag, index, page, stamp) for index, page in pages]

    @abc.abstractmethod
    async def invalidate_page(self, file: bytes, tag: int, index: int, stamp: int = 0) -> None: ...

    @abc.abstractmethod
    async def invalidate_file(self, file: bytes, tag: int | None) -> None:
        """Drop the file's pages stored under `tag` (any stamp), or under every version (None)."""

    @abc.abstractmethod
    async def clear(self) -> None:
        """Drop every page of the pool (a private pool going away, or `flush`)."""

    @abc.abstractmethod
    async def leave(self) -> None:
        """Stop being a member; pages stay for the other nodes."""

    async def abandon(self) -> None:
        """Undo a join that failed or was cut short: no member of ours may stay listed."""
        await self.leave()

    @abc.abstractmethod
    def stats(self) -> dict[str, StatValue]:
        """Store-level counters and state (no credentials ever)."""

    @property
    @abc.abstractmethod
    def up(self) -> bool:
        """False while the store cannot be reached (everything misses meanwhile)."""
