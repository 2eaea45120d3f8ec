"""The one-host store of a shared pool: LMDB index + page slab + node table, all mmapped.

Why no method ever awaits: every operation is a few microseconds of memory
copies in shared mappings (LMDB on /dev/shm: a get ~2 us, a put ~10 us),
cheaper than any hand-off to a thread (~120 us), so it runs inline on the
trio loop; what could wait for another process (LMDB's writer mutex) is
never waited on (see "write lock" below).

Why LMDB holds only the index: a 4096-byte value does not fit one 4 KiB
LMDB page (an overflow value carries a 16-byte header), so each page would
cost two; the pages live in a fixed slab file instead, and LMDB maps handles
to slab frames and keeps the eviction order and the free frames. They share
LMDB's main database under one-byte prefixes rather than four named
databases: py-lmdb only keeps a named-database handle opened by a write
transaction, which join() would then have to take (and could wait for).

    b"i" + file_prefix(file) + tag (8, big-endian) + stamp (8) + index (8)
            -> frame (4), generation (8), putter node (2), order seq (8), xxh3-64 of the page (8)
    b"o" + seq (8)      -> the b"i" key     eviction order, oldest first (CLOCK, below)
    b"f" + frame (4)    -> b""              free frames
    b"m"                -> next seq, next never-used frame, stored pages, evicted pages

Why a seqlock per frame: readers never lock. A writer makes the frame's
generation odd, copies, makes it even, and records the even generation in
the index; a reader copies only if the generation matches before and after
(and the page's xxh3-64 digest matches: belt and braces for CPUs that
reorder loads), otherwise it is a miss. Freed frames get a new generation,
so a reader holding an old index value notices.

Why a referenced byte per frame (CLOCK): a hit must not write to LMDB (a
write transaction per hit would serialize every reader on the write lock).
A hit sets its frame's byte in the slab, a plain store any node may make;
eviction walks the order from the oldest entry and gives a referenced one a
second chance (byte cleared, moved to the young end) instead of evicting it.

Why a write lock of our own: LMDB's writer mutex has no timeout, so a node
SIGSTOPped inside a write transaction would freeze every other node. Writers
take a non-blocking flock on `write.lock` first, retried for at most
`lock_wait` seconds, and only the holder ever begins a write transaction, so
LMDB's mutex is never contended. If the flock cannot be had, a put is
refused and an invalidation skipped: safe, because coherency comes from
versions (a put under a stale tag can never be served), not from deletions.
After a timeout the lock is only tried, not waited for, for LOCK_BACKOFF
seconds, so a stopped holder costs one wait per LOCK_BACKOFF, not per put.
A killed holder's flock is released by the kernel, and LMDB recovers its
robust mutex. Residual risks: a node stopped inside a read transaction pins
old LMDB pages (the map fills up and puts get refused until it resumes),
and one stopped while registering an LMDB reader slot (its first read)
holds the reader-table mutex.

Pool directory `{directory}/tmemfs-{uuid.hex()}` (0700, files 0600):
data.mdb + lock.mdb (LMDB), `pages` (slab), `nodes` (NodeTable, versions and
members), `init.lock` (flock held while files are created and sized) and
`write.lock`. The first node to create the slab fixes its size; later nodes
adopt it whatever their own capacity. Do not fork after join().
"""

from __future__ import annotations

import fcntl
import mmap
import os
import shutil
import stat
import struct
import time

import lmdb
import trio
import xxhash

from backends.base import StatValue
from backends.nodetable import NodeTable, table_in_use
from backends.page import PAGE_SIZE
from backends.store import Member, PageStore, StoreUnavailable, file_prefix

MIN_FRAMES = 16
SLAB_MAGIC = 0x544D454D50414745  # "TMEMPAGE"
SLAB_LAYOUT = 2
# magic, layout, frames; then one uint64 generation per frame, one referenced byte per frame,
# then the frames (each part page-aligned)
SLAB_HEADER = 4096
MAPFULL_EVICT = 64  # minimum extra evictions when LMDB's map is full
INIT_WAIT = 1.0  # seconds join() may wait for another node creating the files
CLEAR_WAIT = 0.25  # seconds clear() may wait for the write lock
LOCK_BACKOFF = 0.05  # after a lock timeout, this long without waiting (one try per operation)
MAP_BASE = 64 * 2**20  # LMDB map size: this, plus MAP_PER_FRAME per slab frame (virtual; grows as used)
MAP_PER_FRAME = 1024

_INDEX, _ORDER, _FREE, _META_KEY = b"i", b"o", b"f", b"m"
_VALUE = struct.Struct(">IQHQQ")  # frame, generation, putter node, order seq, xxh3-64 of the page
_META = struct.Struct(">QQQQ")  # next seq, next never-used frame, stored pages, evicted pages
_hash = xxhash.xxh3_64_intdigest


def pool_directory(uuid: bytes, directory: str = "/dev/shm") -> str:
    """Where the pool with this 16-byte uuid lives (the whole uuid names it)."""
    if len(uuid) != 16:
        raise ValueError("pool uuids are 16 bytes")
    return os.path.join(os.fspath(directory), f"tmemfs-{uuid.hex()}")


def remove_pool(uuid: bytes, directory: str = "/dev/shm") -> None:
    """Delete the pool's files (only once no node uses it: live nodes would keep the old files)."""
    shutil.rmtree(pool_directory(uuid, directory), ignore_errors=True)


def _open_file(path: str) -> int:
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    os.fchmod(fd, 0o600)
    return fd


def _make_pool_dir(path: str) -> None:
    try:
        os.mkdir(path, 0o700)
    except FileExistsError:
        pass
    st = os.lstat(path)
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.geteuid():
        raise StoreUnavailable(f"{path} is not a directory owned by uid {os.geteuid()}")
    if stat.S_IMODE(st.st_mode) != 0o700:
        os.chmod(path, 0o700)


def _flock_wait(fd: int, wait: float) -> bool:
    """flock(LOCK_EX) without ever blocking longer than about `wait` seconds."""
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        pass
    deadline = time.monotonic() + wait
    while time.monotonic() < deadline:
        time.sleep(50e-6)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            pass
    return False


async def _flock_wait_async(fd: int, wait: float) -> bool:
    """_flock_wait that lets the other tasks run meanwhile (a join may wait for another
    node creating the pool, and is retried in the background until it succeeds)."""
    deadline = time.monotonic() + wait
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            if time.monotonic() >= deadline:
                return False
        await trio.sleep(0.001)


def _pages(size: int) -> int:
    """`size` rounded up to whole pages."""
    return (size + PAGE_SIZE - 1) // PAGE_SIZE * PAGE_SIZE


def _next_gen(gen: int) -> int:
    """The next even generation (also after a writer died with the frame odd)."""
    return gen + (2 if gen % 2 == 0 else 1)


def _page_prefix(file: bytes, tag: int, stamp: int) -> bytes:
    """The index keys of a file's pages at one version and SRC stamp (the page number follows)."""
    return _INDEX + file_prefix(file) + tag.to_bytes(8, "big") + stamp.to_bytes(8, "big")


def _read_meta(txn: lmdb.Transaction[bytes]) -> tuple[int, int, int, int]:
    raw = txn.get(_META_KEY)
    return (0, 0, 0, 0) if raw is None else _META.unpack(raw)


class _Env:
    """An LMDB environment shared by every LmdbStore of one pool in this process
    (LMDB must not be opened twice in one process: its fcntl locks are per process)."""

    def __init__(self, env: lmdb.Environment) -> None:
        self.env = env
        self.users = 0


class _NoFrame(Exception):
    """Every frame is in use and nothing can be evicted (a damaged index)."""


_ENVS: dict[tuple[int, int, int], _Env] = {}


class LmdbStore(PageStore):
    """A shared pool on this host (see the module docstring). Nothing here ever awaits."""

    def __init__(self, uuid: bytes, capacity: int, directory: str = "/dev/shm",
                 node_timeout: float = 5.0, lock_wait: float = 0.002) -> None:
        self.uuid = uuid
        self.path = pool_directory(uuid, directory)
        self.capacity = capacity
        self.node_timeout = node_timeout
        self.lock_wait = lock_wait
        self.frames = max(MIN_FRAMES, capacity // PAGE_SIZE)  # the slab's real size after join()
        self._env: lmdb.Environment | None = None
        self._shared: _Env | None = None
        self._env_key: tuple[int, int, int] | None = None
        self._nodes: NodeTable | None = None
        self._wfd = -1
        self._sfd = -1
        self._slab: mmap.mmap | None = None
        self._slab_mv: memoryview | None = None
        self._gens: memoryview | None = None  # cast("Q"): one generation per frame
        self._refs: memoryview | None = None  # one referenced byte per frame (CLOCK)
        self._data: memoryview | None = None  # the frames
        self._tree_limit = 0  # bytes of LMDB records above which puts evict before inserting
        self._backoff_until = 0.0  # monotonic time until which the write lock is tried, not waited for
        self.puts = self.puts_refused = self.stale_puts_refused = self.lock_timeouts = self.puts_unchanged = 0
        self.gets = self.hits = self.hits_from_others = self.torn_reads = self.verify_failures = 0
        self.evicted_pages = self.invalidated_pages = self.invalidates_skipped = self.map_full = 0

    # -- joining and leaving --------------------------------------------------

    async def join(self, name: str) -> int:
        if self._nodes is not None:
            return self.node
        for _attempt in range(3):
            _make_pool_dir(self.path)
            init_fd = _open_file(os.path.join(self.path, "init.lock"))
            if not await _flock_wait_async(init_fd, INIT_WAIT):
                os.close(init_fd)
                raise StoreUnavailable(f"{self.path}: another node has been creating the pool for {INIT_WAIT} s")
            if os.fstat(init_fd).st_nlink:
                break
            os.close(init_fd)  # the last node out removed the pool meanwhile: make it afresh
        else:
            raise StoreUnavailable(f"{self.path}: the pool keeps being removed while joining")
        try:
            try:
                self._nodes = NodeTable(os.path.join(self.path, "nodes"), self.node_timeout)
                self._open_slab()
                self._wfd = _open_file(os.path.join(self.path, "write.lock"))
                self._open_env()
                # The slot too under the init lock: else the last node leaving in between
                # would find no member and remove the files this node has just opened.
                self.node = self._nodes.join(name)
            except BaseException:
                self._close()
                raise
        finally:
            os.close(init_fd)  # releases the flock
        assert self._env is not None
        self._env.reader_check()
        return self.node

    def _open_slab(self) -> None:
        fd = self._sfd = _open_file(os.path.join(self.path, "pages"))
        head = os.pread(fd, 24, 0)
        if len(head) == 24 and struct.unpack("QQQ", head)[0] == SLAB_MAGIC:
            _magic, layout, frames = struct.unpack("QQQ", head)
            if layout != SLAB_LAYOUT:
                raise StoreUnavailable(f"{self.path}/pages: slab layout {layout}, expected {SLAB_LAYOUT}")
        else:  # new, or its creator died before finishing (the magic is written last): nobody used it
            frames = self.frames
            os.ftruncate(fd, 0)
            os.ftruncate(fd, self._slab_bytes(frames))
            os.pwrite(fd, struct.pack("QQ", SLAB_LAYOUT, frames), 8)
            os.pwrite(fd, struct.pack("Q", SLAB_MAGIC), 0)
        size = self._slab_bytes(frames)
        if os.fstat(fd).st_size != size:
            raise StoreUnavailable(f"{self.path}/pages: {os.fstat(fd).st_size} bytes, expected {size}")
        self.frames = frames
        self._slab = mmap.mmap(fd, size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        self._slab_mv = memoryview(self._slab)
        self._gens = self._slab_mv[SLAB_HEADER : SLAB_HEADER + frames * 8].cast("Q")
        refs_start = SLAB_HEADER + _pages(frames * 8)
        self._refs = self._slab_mv[refs_start : refs_start + frames]
        data_start = self._data_start(frames)
        self._data = self._slab_mv[data_start : data_start + frames * PAGE_SIZE]

    @staticmethod
    def _data_start(frames: int) -> int:
        return SLAB_HEADER + _pages(frames * 8) + _pages(frames)

    @classmethod
    def _slab_bytes(cls, frames: int) -> int:
        return cls._data_start(frames) + frames * PAGE_SIZE

    def _open_env(self) -> None:
        st = os.stat(self.path)
        try:  # inode numbers get reused: a re-created pool must not find the old environment
            data_ino = os.stat(os.path.join(self.path, "data.mdb")).st_ino
        except FileNotFoundError:
            data_ino = 0
        key = (st.st_dev, st.st_ino, data_ino)
        shared = _ENVS.get(key)
        if shared is None:
            # the same size on every node: it follows the slab, which the first node sized
            map_size = MAP_BASE + MAP_PER_FRAME * self.frames
            env = lmdb.open(self.path, map_size=map_size, max_dbs=0, subdir=True, lock=True, metasync=False,
                            sync=False, readahead=False, mode=0o600, max_spare_txns=1)
            for f in ("data.mdb", "lock.mdb"):
                os.chmod(os.path.join(self.path, f), 0o600)
            key = (*key[:2], os.stat(os.path.join(self.path, "data.mdb")).st_ino)
            shared = _ENVS[key] = _Env(env)
        shared.users += 1
        self._shared, self._env_key, self._env = shared, key, shared.env
        self._main = shared.env.open_db()  # the main (unnamed) database: every record
        # the other half of the map: copy-on-write churn and old pages that readers may still see
        self._tree_limit = (MAP_BASE + MAP_PER_FRAME * self.frames) // 2

    async def abandon(self) -> None:
        """A failed join undid itself (join closes what it opened); a pool is only removed by leave."""
        self._close()

    async def leave(self) -> None:
        """Leave the pool; the last node out removes it (nobody can ask for its pages any more)."""
        self._close()
        try:
            init_fd = os.open(os.path.join(self.path, "init.lock"), os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC)
        except FileNotFoundError:
            return
        try:  # under the init lock, so a node joining now waits and then makes the pool afresh
            if _flock_wait(init_fd, INIT_WAIT) and not table_in_use(os.path.join(self.path, "nodes")):
                shutil.rmtree(self.path, ignore_errors=True)
        finally:
            os.close(init_fd)

    def _close(self) -> None:
        if self._nodes is not None:
            self._nodes.close()
            self._nodes = None
        if self._shared is not None:
            self._shared.users -= 1
            if self._shared.users == 0:
                self._shared.env.close()
                _ENVS.pop(self._env_key, None)  # type: ignore[arg-type]
            self._shared = None
        self._env = None
        for view in (self._gens, self._refs, self._data, self._slab_mv):
            if view is not None:
                view.release()
        self._gens = self._refs = self._data = self._slab_mv = None
        if self._slab is not None:
            self._slab.close()
            self._slab = None
        for fd in (self._sfd, self._wfd):
            if fd >= 0:
                os.close(fd)
        self._sfd = self._wfd = -1

    def _lock(self, wait: float) -> bool:
        """The write lock, waiting at most `wait` s (not at all shortly after a timeout: a stopped
        holder would otherwise cost every operation the full wait)."""
        if time.monotonic() < self._backoff_until:
            wait = 0.0
        if _flock_wait(self._wfd, wait):
            return True
        self._backoff_until = time.monotonic() + LOCK_BACKOFF
        return False

    def _table(self) -> NodeTable:
        if self._nodes is None:
            raise StoreUnavailable("not a member of the pool (join first; unusable after leave)")
        return self._nodes

    # -- members and versions ---------------------------------------------------

    async def heartbeat(self, puts: int, gets: int, hits_from_others: int) -> None:
        self._table().heartbeat(puts, gets, hits_from_others)
        assert self._env is not None
        self._env.reader_check()  # frees reader slots of dead processes

    async def members(self) -> list[Member]:
        return self._table().members()

    async def version(self, file: bytes) -> int:
        return self._table().version(file)

    async def bump(self, file: bytes) -> int:
        return self._table().bump(file)

    # -- pages --------------------------------------------------------------------

    async def get(self, file: bytes, tag: int, index: int, out: memoryview, stamp: int = 0) -> int | None:
        return (await self.get_many(file, tag, index, [out], stamp))[0]

    async def get_many(self, file: bytes, tag: int, first: int, outs: list[memoryview],
                       stamp: int = 0) -> list[int | None]:
        """Pages first, first+1, ... in one read transaction."""
        env, gens, refs, data = self._env, self._gens, self._refs, self._data
        if env is None or gens is None or refs is None or data is None:
            raise StoreUnavailable("not a member of the pool")
        prefix = _page_prefix(file, tag, stamp)
        keys = [prefix + index.to_bytes(8, "big") for index in range(first, first + len(outs))]
        found: list[int | None] = []
        hits = 0
        frames, unpack = self.frames, _VALUE.unpack
        with env.begin(buffers=True) as txn:
            # Inline, as this loop is the cost of a shared-pool hit: a page is copied out only if
            # its frame's generation is even and unchanged across the copy (seqlock), and verified.
            for value, out in zip(map(txn.get, keys), outs, strict=True):
                putter = None
                if value is not None:
                    frame, gen, putter, _seq, digest = unpack(value)
                    if frame >= frames or gen & 1 or gens[frame] != gen:
                        self.torn_reads += 1
                        putter = None
                    else:
                        offset = frame * PAGE_SIZE
                        out[:] = data[offset : offset + PAGE_SIZE]
                        if gens[frame] != gen:
                            self.torn_reads += 1
                            putter = None
                        elif _hash(out) != digest:
                            self.verify_failures += 1
                            putter = None
                        else:
                            refs[frame] = 1  # a second chance at eviction (CLOCK)
                            hits += 1
                found.append(putter)
        self.gets += len(outs)
        self.hits += hits
        self.hits_from_others += hits - found.count(self.node)
        return found

    async def put(self, file: bytes, tag: int, index: int, page: memoryview, stamp: int = 0) -> bool:
        nodes = self._table()
        if len(page) != PAGE_SIZE:
            raise ValueError(f"pages are {PAGE_SIZE} bytes")
        if tag != nodes.version(file):
            self.stale_puts_refused += 1
            return False
        key = _page_prefix(file, tag, stamp) + index.to_bytes(8, "big")
        digest = _hash(page)
        env = self._env
        assert env is not None
        with env.begin(buffers=True) as txn:  # a page that came from the pool goes back often:
            old = txn.get(key)  # then it only needs marking as used, not a write transaction
            if old is not None:
                frame, _gen, _putter, _seq, old_digest = _VALUE.unpack(old)
                if old_digest == digest:
                    if frame < self.frames:
                        self._refs[frame] = 1  # type: ignore[index]
                    self.puts_unchanged += 1
                    return True
        if not self._lock(self.lock_wait):
            self.lock_timeouts += 1
            return False
        try:
            try:
                self.evicted_pages += self._put_txn(key, page, digest)
            except lmdb.MapFullError:
                self.map_full += 1
                self.evicted_pages += self._evict_txn()
                self.evicted_pages += self._put_txn(key, page, digest)
        except (lmdb.MapFullError, _NoFrame):
            self.puts_refused += 1
            return False
        finally:
            fcntl.flock(self._wfd, fcntl.LOCK_UN)
        self.puts += 1
        return True

    def _put_txn(self, key: bytes, page: memoryview, digest: int) -> int:
        """Store the page in one write transaction; how many entries it evicted."""
        env, gens, refs, data = self._env, self._gens, self._refs, self._data
        assert env is not None and gens is not None and refs is not None and data is not None
        with env.begin(write=True) as txn:
            seq, unused, stored, evicted = _read_meta(txn)
            freed = 0
            old = txn.get(key)
            frame = -1
            if old is not None:
                frame, _gen, _putter, old_seq, _digest = _VALUE.unpack(old)
                txn.delete(_ORDER + old_seq.to_bytes(8, "big"))
                if frame >= self.frames:  # damaged: give the handle a real frame
                    stored -= 1
                    frame = -1
            if frame < 0:
                if self._tree_bytes(txn) > self._tree_limit:  # long keys: the index, not the slab, is full
                    freed = self._evict_oldest(txn, 2)
                frame, unused, taken, seq = self._take_frame(txn, unused, seq)
                freed += taken
                stored += 1 - freed
                evicted += freed
            refs[frame] = 0  # a new page earns its second chance by being hit
            g = gens[frame]
            g += 1 if g % 2 == 0 else 2  # odd: being written
            gens[frame] = g
            offset = frame * PAGE_SIZE
            data[offset : offset + PAGE_SIZE] = page
            gens[frame] = g + 1  # even: complete
            txn.put(key, _VALUE.pack(frame, g + 1, self.node, seq, digest))
            txn.put(_ORDER + seq.to_bytes(8, "big"), key)
            txn.put(_META_KEY, _META.pack(seq + 1, unused, stored, evicted))
        return freed

    def _take_frame(self, txn: lmdb.Transaction[bytes], unused: int, seq: int) -> tuple[int, int, int, int]:
        """A frame for a new entry: (frame, next never-used frame, entries evicted to get it,
        next seq). The oldest entry is evicted unless it was hit since it was last passed
        over: then it moves to the young end with its byte cleared (CLOCK's second chance)."""
        cursor = txn.cursor()
        while cursor.set_range(_FREE) and cursor.key()[:1] == _FREE:
            frame = int.from_bytes(cursor.key()[1:], "big")
            cursor.delete()
            if frame < self.frames:
                return frame, unused, 0, seq
        if unused < self.frames:
            return unused, unused + 1, 0, seq
        refs = self._refs
        assert refs is not None
        evicted = 0
        while cursor.set_range(_ORDER) and cursor.key()[:1] == _ORDER:
            order_key, key = cursor.item()
            cursor.delete()
            value = txn.get(key)
            if value is None:
                continue
            frame, gen, putter, old_seq, digest = _VALUE.unpack(value)
            if old_seq != int.from_bytes(order_key[1:], "big"):
                continue  # not this entry's current place (never happens unless damaged)
            if frame < self.frames and refs[frame]:
                refs[frame] = 0
                txn.put(_ORDER + seq.to_bytes(8, "big"), key)
                txn.put(key, _VALUE.pack(frame, gen, putter, seq, digest))
                seq += 1
                continue
            txn.delete(key)
            evicted += 1
            if frame < self.frames:
                return frame, unused, evicted, seq
        raise _NoFrame

    def _evict_txn(self) -> int:
        """After MapFullError: evict the oldest entries to free LMDB pages (frames go to the free list)."""
        env = self._env
        assert env is not None
        with env.begin(write=True) as txn:
            seq, unused, stored, evicted = _read_meta(txn)
            freed = self._evict_oldest(txn, max(MAPFULL_EVICT, stored // 16))
            txn.put(_META_KEY, _META.pack(seq, unused, stored - freed, evicted + freed))
        return freed

    def _evict_oldest(self, txn: lmdb.Transaction[bytes], count: int) -> int:
        """Evict up to `count` of the oldest entries, their frames to the free list; how many."""
        cursor = txn.cursor()
        keys: list[bytes] = []
        while len(keys) < count and cursor.set_range(_ORDER) and cursor.key()[:1] == _ORDER:
            keys.append(cursor.value())
            cursor.delete()
        freed = 0
        for key in keys:
            value = txn.get(key)
            if value is None:
                continue
            txn.delete(key)
            self._free_frame(txn, _VALUE.unpack(value)[0])
            freed += 1
        return freed

    def _tree_bytes(self, txn: lmdb.Transaction[bytes]) -> int:
        """Bytes of LMDB pages the records use now (not counting free or superseded pages)."""
        st = txn.stat(self._main)
        return (st["branch_pages"] + st["leaf_pages"] + st["overflow_pages"]) * st["psize"]

    def _free_frame(self, txn: lmdb.Transaction[bytes], frame: int) -> None:
        gens = self._gens
        assert gens is not None
        if frame < self.frames:
            gens[frame] = _next_gen(gens[frame])  # readers holding the old generation miss
            txn.put(_FREE + frame.to_bytes(4, "big"), b"")

    # -- invalidation --------------------------------------------------------------

    async def invalidate_page(self, file: bytes, tag: int, index: int, stamp: int = 0) -> None:
        self._invalidate(_page_prefix(file, tag, stamp) + index.to_bytes(8, "big"), exact=True)

    async def invalidate_file(self, file: bytes, tag: int | None) -> None:
        prefix = _INDEX + file_prefix(file)
        if tag is not None:
            prefix += tag.to_bytes(8, "big")
        self._invalidate(prefix, exact=False)

    def _invalidate(self, prefix: bytes, exact: bool) -> None:
        self._table()
        if not self._lock(self.lock_wait):
            self.lock_timeouts += 1
            self.invalidates_skipped += 1
            return
        env = self._env
        assert env is not None
        try:
            with env.begin(write=True) as txn:
                dropped = []
                if exact:
                    value = txn.get(prefix)
                    if value is not None:
                        txn.delete(prefix)
                        dropped.append(value)
                else:
                    cursor = txn.cursor()
                    if cursor.set_range(prefix):
                        while cursor.key().startswith(prefix):
                            dropped.append(cursor.value())
                            if not cursor.delete():
                                break
                if not dropped:
                    return
                for value in dropped:
                    frame, _gen, _putter, seq, _digest = _VALUE.unpack(value)
                    txn.delete(_ORDER + seq.to_bytes(8, "big"))
                    self._free_frame(txn, frame)
                seq, unused, stored, evicted = _read_meta(txn)
                txn.put(_META_KEY, _META.pack(seq, unused, stored - len(dropped), evicted))
                self.invalidated_pages += len(dropped)
        finally:
            fcntl.flock(self._wfd, fcntl.LOCK_UN)

    async def clear(self) -> None:
        """Drop every page; skipped (and counted) if the write lock stays busy for CLEAR_WAIT."""
        self._table()
        if not self._lock(max(self.lock_wait, CLEAR_WAIT)):
            self.lock_timeouts += 1
            self.invalidates_skipped += 1
            return
        env, gens = self._env, self._gens
        assert env is not None and gens is not None
        try:
            with env.begin(write=True) as txn:
                seq, unused, stored, evicted = _read_meta(txn)
                for frame in range(min(unused, self.frames)):  # readers holding an old index value miss
                    gens[frame] = _next_gen(gens[frame])
                txn.drop(self._main, delete=False)
                txn.put(_META_KEY, _META.pack(seq, 0, 0, evicted))
                self.invalidated_pages += stored
        finally:
            fcntl.flock(self._wfd, fcntl.LOCK_UN)

    # -- state ----------------------------------------------------------------------

    def stats(self) -> dict[str, StatValue]:
        out: dict[str, StatValue] = {
            "store": "lmdb",
            "directory": self.path,
            "node": self.node,
            "capacity_pages": self.frames,
            "puts": self.puts,
            "puts_refused": self.puts_refused,
            "puts_unchanged": self.puts_unchanged,
            "stale_puts_refused": self.stale_puts_refused,
            "lock_timeouts": self.lock_timeouts,
            "gets": self.gets,
            "hits": self.hits,
            "hits_from_others": self.hits_from_others,
            "torn_reads": self.torn_reads,
            "verify_failures": self.verify_failures,
            "evicted_pages": self.evicted_pages,
            "invalidated_pages": self.invalidated_pages,
            "invalidates_skipped": self.invalidates_skipped,
            "map_full": self.map_full,
        }
        env, nodes = self._env, self._nodes
        if env is not None and nodes is not None:
            with env.begin() as txn:
                _seq, _unused, stored, evicted = _read_meta(txn)
            out["stored_pages"] = stored
            out["pool_total_size"] = stored * PAGE_SIZE
            out["pool_evicted_pages"] = evicted
            out["members_alive"] = sum(m.alive for m in nodes.members())
        return out

    @property
    def up(self) -> bool:
        return True
