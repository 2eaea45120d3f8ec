"""The interface every cleancache backend implements.

A backend stores whole 4 KiB pages under a handle (pool, file key, page
index). It may drop any page of an ordinary pool at any time (those pools
are ephemeral) and may refuse any put. A backend with `persistent_pools`
also keeps frontswap's pools, whose pages it may refuse but never drops.
The frontend (fusefs/cleancache.py) enforces the tmem rules on top,
contains exceptions, and never trusts a page it cannot verify, so a
backend can stay small.

Methods are coroutines so that a backend on a remote store can await its
I/O; in-memory backends simply never suspend.
"""

from __future__ import annotations

import abc
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar

from backends.page import PagePut

StatValue = int | float | str


@dataclass(frozen=True)
class OptionSpec:
    """A backend-specific mount option: its parser and one line of help."""

    parse: Callable[[str], object]
    help: str


_SIZE = re.compile(r"^(\d+(?:\.\d+)?)([kmgt]?)(?:i?b)?$", re.IGNORECASE)
_SCALE = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}
MAX_SIZE = 1 << 60  # far beyond any memory or pool, and still a C long everywhere it goes


def size_in_bytes(text: str) -> int:
    """A size as mount options take it (`512`, `64K`, `1.5G`...), exact: ValueError (why) if it is not one."""
    m = _SIZE.match(text.strip())
    if not m:
        raise ValueError("not a size (use a number with an optional K, M, G or T suffix)")
    number, scale = m.group(1), _SCALE[m.group(2).lower()]
    if "." in number:
        whole, _, fraction = number.partition(".")
        value: int = (int(whole + fraction) * scale) // 10 ** len(fraction)  # exact: no float rounding
    else:
        value = int(number) * scale
    if value > MAX_SIZE:
        raise ValueError(f"too large (at most {MAX_SIZE >> 40}T)")
    return value


def parse_positive_seconds(text: str) -> float:
    value = float(text)
    if not 0 < value <= 3600:
        raise ValueError("must be between 0 and 3600 seconds")
    return value


def existing_directory(path: str) -> str:
    """cc_dir: a typo fails the mount with a reason instead of leaving the mount uncached."""
    if not os.path.isdir(path):
        raise ValueError("not an existing directory")
    return path


def physical_memory() -> int:
    """Bytes of RAM on this machine: no in-memory size may be set beyond it."""
    return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def check_memory_size(what: str, nbytes: int) -> None:
    """ValueError unless this machine's memory could hold `nbytes` of `what`."""
    if nbytes > physical_memory():
        raise ValueError(f"{what} {nbytes} is more than this machine's memory ({physical_memory()} bytes)")


class BackendUnavailable(Exception):
    """The backend's store cannot be reached now: an expected miss, not a fault to trace."""


class Backend(abc.ABC):
    """One backend instance serves one mount; pools are created on it by the frontend."""

    name: ClassVar[str]
    summary: ClassVar[str] = ""
    options: ClassVar[dict[str, OptionSpec]] = {}
    # True when get_page on a private pool drops the page (tmem's exclusive
    # gets). The frontend invalidates after a hit on backends that do not.
    exclusive_gets: ClassVar[bool] = True
    # True when calls may wait on I/O (a store, a network): the frontend then
    # bounds each call with a timeout. In-memory backends never wait.
    awaits_io: ClassVar[bool] = True
    # True when peek_pages works: a private pool's page copied out and left in place,
    # for a reader that keeps no copy (the sequential bypass, fusefs/datapath.py).
    peeks: ClassVar[bool] = False
    # True when pools with a uuid are shared by every mount of the same SRC
    # (the cluster backend): such mounts are nodes and keep files coherent
    # through versions() (docs/coherency.md).
    shared: ClassVar[bool] = False
    # True when create_persistent_pool works: frontswap's pools (see create_persistent_pool).
    persistent_pools: ClassVar[bool] = False

    def __init__(self, capacity: int, **options: object) -> None:
        self.capacity = capacity
        self.label = ""  # where it serves (the mount point), for listings such as `tmemctl host`

    @abc.abstractmethod
    async def create_pool(self, uuid: bytes | None) -> int:
        """A new private pool (uuid None) or the shared pool for a 16-byte uuid."""

    async def create_persistent_pool(self) -> int:
        """A new persistent pool (frontswap's), only if `persistent_pools`.

        The ordinary calls serve it with these rules: put_page stores a copy or refuses
        (False), and no earlier copy of the handle survives either way; a store may evict
        ephemeral pages of any pool (cc_size is shared), but a persistent page is dropped
        only by invalidate_page, invalidate_inode or destroy_pool: never by eviction, an
        ephemeral put or set_capacity. Gets copy the page and leave it (non-exclusive).
        """
        raise NotImplementedError(f"{self.name} has no persistent pools")

    @abc.abstractmethod
    async def put_page(self, pool: int, key: bytes, index: int, page: memoryview) -> bool:
        """Store a copy of `page`; False if refused. A previous copy must not survive."""

    @abc.abstractmethod
    async def get_page(self, pool: int, key: bytes, index: int, out: memoryview) -> bool:
        """Copy the page into `out` and return True, or return False on a miss."""

    async def get_pages(self, pool: int, key: bytes, first: int, outs: list[memoryview]) -> list[bool]:
        """get_page for pages first, first+1, ... (a store may answer them in one go)."""
        return [await self.get_page(pool, key, first + n, out) for n, out in enumerate(outs)]

    async def peek_pages(self, pool: int, key: bytes, first: int, outs: list[memoryview]) -> list[bool]:
        """get_pages that leaves each page in the pool, even a private one (only if `peeks`)."""
        raise NotImplementedError(f"{self.name} cannot peek")

    async def put_pages(self, pool: int, pages: list[PagePut]) -> list[bool]:
        """put_page for several (key, index, page) (a backend may store them in one go)."""
        return [await self.put_page(pool, key, index, page) for key, index, page in pages]

    @abc.abstractmethod
    async def invalidate_page(self, pool: int, key: bytes, index: int) -> None: ...

    @abc.abstractmethod
    async def invalidate_inode(self, pool: int, key: bytes) -> None: ...

    @abc.abstractmethod
    async def destroy_pool(self, pool: int) -> None:
        """Drop every page of the pool and forget it (invalidate_fs)."""

    @abc.abstractmethod
    def stats(self) -> dict[str, StatValue]:
        """Counters in the tmem/zswap tradition, shown as backend.NAME.COUNTER."""

    def named_stats(self) -> dict[str, StatValue]:
        """stats() keyed NAME.COUNTER (a chain lists each member)."""
        return {f"{self.name}.{k}": v for k, v in self.stats().items()}

    def reset_stats(self) -> None:
        """Zero the event counters (levels such as stored_pages stay)."""

    def versions(self, pool: int) -> FileVersions | None:
        """The per-file versions of a shared pool, or None (private pools need none)."""
        return None

    def check_capacity(self, nbytes: int) -> None:
        """ValueError (one line: why) unless set_capacity(nbytes) would change the capacity."""
        raise ValueError(f"backend {self.name} cannot change its capacity on a live mount")

    async def set_capacity(self, nbytes: int) -> None:
        """cc_size changed on a live mount (at least a page): evict at once, by the backend's
        own policy, down to it, or grow at once; never flush. Refused as check_capacity says."""
        self.check_capacity(nbytes)

    def take_back(self, nbytes: int) -> int:
        """The donor takes `nbytes` of a host pool's budget back now; the bytes taken (a host
        client's only: ValueError, one line, elsewhere)."""
        raise ValueError(f"backend {self.name} is not a host pool client (cc_host=): nothing to take back")

    def give_back(self, nbytes: int) -> int:
        """Return at most what was taken back to a host pool's budget; the bytes given."""
        raise ValueError(f"backend {self.name} is not a host pool client (cc_host=): nothing to give back")

    def set_weight(self, weight: int) -> int:
        """A host client's share of the budget under contention, changed live (as Xen's
        `xm tmem-set -w`); the weight before. ValueError (one line) for other backends."""
        raise ValueError(f"backend {self.name} is not a host pool client (cc_host=): it has no cc_weight")

    def set_cap(self, cap: int | None) -> int | None:
        """The most a host client may hold (None: no cap), changed live (as `xm tmem-set -c`);
        the cap before. ValueError (one line) for other backends."""
        raise ValueError(f"backend {self.name} is not a host pool client (cc_host=): it has no cc_cap")

    async def run(self) -> None:
        """Background work while mounted (heartbeats); cancelled at unmount."""

    async def close(self) -> None:
        """Release resources at unmount."""


class FileVersions(abc.ABC):
    """Per-file versions of a shared pool: what a cluster node's coherency checks
    (fusefs/coherency.py, docs/coherency.md).

    Equal versions read at two moments mean the file did not change in
    between, on any node. Keys given to the pool carry the version the page
    was read at, in the encoding of the backend that keeps the versions
    (page_key). The frontend bounds every call with its timeout and turns a
    fault into "cannot know".
    """

    #: changes whenever this node was cut off (stalled, or lost its store):
    #: every page it caches must be dropped before it serves again
    epoch: int = 0
    #: True when a bump also drops the file's pages from the pool
    bump_flushes: bool = False

    @property
    def joined(self) -> bool:
        """Whether this node is a member of the pool (it may change files only then)."""
        return True

    @abc.abstractmethod
    async def version(self, file: bytes) -> int | None:
        """The file's version now; None when it cannot be known (cache nothing then)."""

    @abc.abstractmethod
    async def bump(self, file: bytes) -> int | None:
        """A change to the file starts or has landed: advance its version (None if unknown)."""

    @abc.abstractmethod
    def page_key(self, file: bytes, version: int, stamp: int) -> bytes:
        """The pool key of the file's pages read at `version` while SRC's stamp digest was `stamp`."""

    @abc.abstractmethod
    def file_key(self, file: bytes) -> bytes:
        """The pool key whose invalidate_inode flushes every version of the file."""
