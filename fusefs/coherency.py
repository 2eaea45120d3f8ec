"""Coherency: whether a file's cached pages are still valid, what a change does before and
after it lands in SRC, and under which key pages go to the pool.

The data path asks; the cleancache frontend hands out the rules for the backend in force
(Cleancache.coherency), and hands out new ones when a backend is registered or goes:

* LocalCoherency (a mount that is not a cluster node): a change flushes the file in the
  pool at its start and at its end, whether or not anything is cached here (the kernel's
  truncate_inode_pages); a write flushes the pages it covered; an open compares SRC's stamp
  (size, mtime, ctime) with the one this mount last saw and drops the file here and in the
  pool if SRC changed behind its back (close-to-open, as NFS). Pages go to the pool under
  the file key.
* VersionedCoherency (a cluster node): per-file versions shared by every node
  (docs/coherency.md). A read first checks the version and drops the file's pages if
  another node changed it; pages go to the pool under the version they were read at and a
  digest of SRC's stamp then; a change bumps the version before and after it lands in SRC,
  and flushes the file in the pool at start and end. An open that finds SRC changed at the
  version it last saw bumps the version for everyone (a change behind the cluster's back).
* UnjoinedNode (a cluster node without versions: its pool is not made yet, or the backend
  was unregistered): it caches nothing, since other nodes' changes would go unseen, and
  changes nothing until it has joined (fencing: the data path waits, then refuses).

Calls to the backend's versions go through the frontend (Cleancache.ask), with the timeout
and fault containment of every backend call: a fault means "cannot know", so nothing is
cached or trusted until the version can be read again.
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

import xxhash

from fusefs.pagecache import CachedFile, PageCache

if TYPE_CHECKING:
    from backends.base import FileVersions
    from fusefs.cleancache import Cleancache

_STAMP = struct.Struct("<qqq")
Stamp = tuple[int, int, int]  # (size, mtime_ns, ctime_ns) of a file in SRC


def stamp_of(st: os.stat_result) -> Stamp:
    return st.st_size, st.st_mtime_ns, st.st_ctime_ns


def stamp_digest(stamp: Stamp) -> int:
    """64 bits naming what SRC looked like (the same on every node, whatever its Python)."""
    return xxhash.xxh3_64_intdigest(_STAMP.pack(*stamp))


@dataclass
class CoherencyStats:
    """Counters that outlive a change of rules (they are the mount's, not the backend's)."""

    external_changes: int = 0  # SRC changed behind this mount's back (seen at an open or an append)
    remote_changes: int = 0  # another node changed a file this node cached
    cut_offs: int = 0  # this node was cut off from its pool and dropped everything

    def reset(self) -> None:
        self.external_changes = self.remote_changes = self.cut_offs = 0


@dataclass(frozen=True, slots=True)
class Landed:
    """What one write did in SRC: where its bytes landed, how many, and (if asked for) SRC's
    stamp just before and just after it."""

    landed: int
    done: int
    append: bool
    before: Stamp | None = None
    after: Stamp | None = None


class Coherency:
    """The rules of one mount's pool; this base caches freely and flushes nothing."""

    #: check_read must be awaited before every read
    checks_reads: ClassVar[bool] = False
    #: writes want SRC's stamp just before and just after (Landed.before/after)
    stamps_writes: ClassVar[bool] = False
    #: gets leave the page in the pool, so evicting a page got from it needs no put
    shared_pool: ClassVar[bool] = False
    #: pages may be cached at all
    caches: ClassVar[bool] = True

    def __init__(self, cc: Cleancache, pool: int, pc: PageCache, stats: CoherencyStats) -> None:
        self.cc = cc
        self.pool = pool
        self.pc = pc
        self.stats = stats

    def succeed(self, old: Coherency) -> bool:
        """Take over from the rules in force before a register or unregister; False if the
        pages cached under those cannot be trusted under these."""
        return type(old) is type(self)

    @property
    def admits_changes(self) -> bool:
        """Whether this mount may change a file now (see UnjoinedNode)."""
        return True

    async def check_read(self, cached: CachedFile, fd: int) -> bool:
        """Make the file's cached pages valid now; False if that cannot be known (the read
        is then served around the cache)."""
        return True

    async def opened(self, cached: CachedFile, stamp: Stamp) -> None:
        """The file is being opened and SRC's stamp is `stamp` (cached.stamp: as last seen)."""

    async def change_starts(self, key: bytes, cached: CachedFile | None) -> None:
        """A change of the whole file (truncate, delete, replace) is about to reach SRC: its
        pages go, after the puts of them in flight."""
        if cached is not None:
            self.pc.drop_file(cached)
            await cached.settle()

    async def change_ends(self, key: bytes, cached: CachedFile | None) -> None:
        """That change has landed in SRC (or failed)."""

    async def invalidate(self, key: bytes, cached: CachedFile | None) -> None:
        """A change with nothing to do in SRC itself: the file changed already."""
        await self.change_starts(key, cached)
        await self.change_ends(key, cached)

    async def write_starts(self, cached: CachedFile) -> object:
        """A write is about to reach SRC; what write_ends needs to know of the moment before."""
        return None

    async def write_ends(self, cached: CachedFile, before: object, landed: Landed | None,
                         covered: range) -> None:
        """The write landed (None: it failed); the cached pages of `covered` hold its bytes."""

    async def forget(self, key: bytes, flushed: bool) -> None:
        """This mount stops tracking an idle file; `flushed`: its pool pages went already."""


class LocalCoherency(Coherency):
    """invalidate_inode at the start and end of every change, and close-to-open."""

    async def opened(self, cached: CachedFile, stamp: Stamp) -> None:
        if cached.stamp is None or cached.stamp == stamp:
            return
        self.stats.external_changes += 1
        cached.begin_change()
        try:
            await self.invalidate(cached.key, cached)
        finally:
            cached.end_change()

    async def change_starts(self, key: bytes, cached: CachedFile | None) -> None:
        await super().change_starts(key, cached)
        await self.cc.invalidate_inode(self.pool, key)

    async def change_ends(self, key: bytes, cached: CachedFile | None) -> None:
        await self.cc.invalidate_inode(self.pool, key)

    async def write_starts(self, cached: CachedFile) -> object:
        return cached.size  # an append landing elsewhere tells of a change behind our back

    async def write_ends(self, cached: CachedFile, before: object, landed: Landed | None,
                         covered: range) -> None:
        """The file's stamp is unknown from here until it is closed (DataPath.close_file stamps
        it again). Not stat'ed around each write: a stat shows ext4 (Linux 6.13+, multigrain
        timestamps) that somebody looks, so the next write takes a fine-grained time and
        dirties the inode; 4k randwrite QD1 went from 19 to 39 us here."""
        if landed is None or not landed.done:
            return
        if landed.append and landed.landed != before:  # SRC grew or shrank behind our back
            self.stats.external_changes += 1
            await self.invalidate(cached.key, cached)
            cached.size = landed.landed + landed.done
        else:
            await cached.settle(covered)  # a put in flight of an old copy lands before the invalidate
            await self.cc.invalidate_pages(self.pool, cached.key, covered)
        cached.stamp = None

    async def forget(self, key: bytes, flushed: bool) -> None:
        if not flushed:  # SRC may change while nobody here remembers its stamp
            await self.cc.invalidate_inode(self.pool, key)


@dataclass(slots=True)
class _Seen:
    """What a cluster node knows of one file's version."""

    tag: int | None = None  # the version the cached pages are valid at (None: check afresh)
    seen: tuple[int, int] | None = None  # (version, stamp digest) as last seen
    # An open found SRC otherwise than `seen` says at that version: a change made behind the
    # cluster's back, unless the version moved meanwhile (the next check tells).
    stamp_moved: bool = False


@dataclass(frozen=True, slots=True)
class _WriteStart:
    version: int | None  # the first bump's
    tag: int | None
    seen: tuple[int, int] | None
    size: int


class VersionedCoherency(Coherency):
    """Per-file versions shared by every node of a cluster pool (docs/coherency.md)."""

    checks_reads = True
    stamps_writes = True
    shared_pool = True

    def __init__(self, cc: Cleancache, pool: int, pc: PageCache, stats: CoherencyStats,
                 versions: FileVersions) -> None:
        super().__init__(cc, pool, pc, stats)
        self.versions = versions
        self._epoch = versions.epoch
        self._files: dict[bytes, _Seen] = {}

    def succeed(self, old: Coherency) -> bool:
        if not isinstance(old, VersionedCoherency) or old.versions is not self.versions:
            return False
        self._files, self._epoch = old._files, old._epoch
        return True

    @property
    def admits_changes(self) -> bool:
        return self.versions.joined

    async def check_read(self, cached: CachedFile, fd: int) -> bool:
        versions = self.versions
        version = await self.cc.ask("version", versions.version, cached.file)
        if versions.epoch != self._epoch:  # this node was cut off: trust nothing it cached
            self._epoch = versions.epoch
            self.stats.cut_offs += 1
            for known in self._files.values():  # each file's pages go at its next check
                known.tag = None
        known = self._known(cached.file)
        if version is None:
            self._uncache(cached, known)
            return False
        if version == known.tag:
            return True
        if self.pc.drop_file(cached) and known.tag is not None:
            self.stats.remote_changes += 1
        if known.stamp_moved and known.seen is not None and known.seen[0] == version:
            # SRC changed although no version moved since this node saw it: a change made
            # behind the cluster's back. Its bump, so that no node trusts the old pages.
            self.stats.external_changes += 1
            version = await self._bump(cached.file)
            if version is None:
                return False
        known.stamp_moved = False
        st = os.fstat(fd)  # after the version: pages read from here on are at least this new
        self._trust(cached, known, version, stamp_of(st))
        cached.size = st.st_size
        return True

    def _known(self, file: bytes) -> _Seen:
        known = self._files.get(file)
        if known is None:
            known = self._files[file] = _Seen()
        return known

    def _trust(self, cached: CachedFile, known: _Seen, version: int, stamp: Stamp) -> None:
        """The node's pages of the file are valid at `version`, with SRC as `stamp` says."""
        digest = stamp_digest(stamp)
        cached.cancel_fills()  # a fill in flight under the old key must not install
        known.tag = version
        known.seen = (version, digest)
        cached.key = self.versions.page_key(cached.file, version, digest)

    def _uncache(self, cached: CachedFile, known: _Seen) -> None:
        """Drop the node's pages of a file; its version is checked afresh before any is trusted."""
        self.pc.drop_file(cached)
        known.tag = None

    async def _bump(self, file: bytes) -> int | None:
        """One side of a change: a new version, and the file flushed from the pool."""
        version = await self.cc.ask("bump", self.versions.bump, file)
        if not self.versions.bump_flushes:
            await self.cc.invalidate_inode(self.pool, self.versions.file_key(file))
        return version

    async def opened(self, cached: CachedFile, stamp: Stamp) -> None:
        # Another node's change or one behind the cluster's back; the next version check
        # tells which (and bumps the version for the latter).
        known = self._files.get(cached.file)
        if known is not None and known.seen is not None and known.seen[1] != stamp_digest(stamp):
            known.stamp_moved = True
            self._uncache(cached, known)

    async def change_starts(self, key: bytes, cached: CachedFile | None) -> None:
        await super().change_starts(key, cached)
        await self._bump(key)

    async def change_ends(self, key: bytes, cached: CachedFile | None) -> None:
        await self._bump(key)
        known = self._files.get(key)
        if known is not None:
            known.tag = None  # nothing cached survived; the next read checks afresh

    async def write_starts(self, cached: CachedFile) -> object:
        # The version moves before and after the data lands, so no node trusts a page read
        # before this write once it returns.
        known = self._known(cached.file)
        return _WriteStart(await self._bump(cached.file), known.tag, known.seen, cached.size)

    async def write_ends(self, cached: CachedFile, before: object, landed: Landed | None,
                         covered: range) -> None:
        """The pages stay valid if nobody else changed the file since their version: no
        other bump, SRC as they knew it just before (nobody wrote to it directly meanwhile),
        and an append landing at the end they knew."""
        assert isinstance(before, _WriteStart)
        ended = await self._bump(cached.file)
        if landed is None:
            return
        assert landed.before is not None and landed.after is not None
        cached.stamp = landed.after
        known = self._known(cached.file)
        tag, seen = before.tag, before.seen
        if tag is not None and seen is not None and ended is not None \
                and before.version == tag + 1 and ended == tag + 2 \
                and stamp_digest(landed.before) == seen[1] \
                and (not landed.append or landed.landed == before.size):
            self._trust(cached, known, ended, landed.after)
        else:
            self._uncache(cached, known)

    async def forget(self, key: bytes, flushed: bool) -> None:
        self._files.pop(key, None)  # versions keep the pool right without us


class UnjoinedNode(Coherency):
    """A cluster node without versions: caches nothing, changes nothing (fencing)."""

    checks_reads = True
    caches = False

    @property
    def admits_changes(self) -> bool:
        return False

    async def check_read(self, cached: CachedFile, fd: int) -> bool:
        return False
