"""The members of a one-host pool, their counters, and per-file versions, in one shared mmap.

Why a hand-laid-out mmap and not LMDB: a bump must never wait for another
node (a SIGSTOPped node holding a lock would freeze everyone), and a version
read sits on every cache hit, so both are plain loads and stores to shared
memory with a single writer per word, and no lock at all.

Layout of the `nodes` file (native byte order, every field an aligned uint64):

    offset 0       header:  magic, layout version, base, max_nodes, buckets
    offset 4096    MAX_NODES member slots of 256 bytes each:
                     pid, heartbeat (time.time_ns()), puts, gets, hits_from_others,
                     name length, name (NAME_MAX bytes of utf-8)
    offset 8192    versions: BUCKETS x MAX_NODES uint64 counters, bucket-major
                   (the MAX_NODES counters of one bucket are contiguous)

version(file) = base + sum(counter[bucket(file)][n] for every slot n), where
bucket(file) = xxh3_64(file) % BUCKETS. A node only ever increments the
counter of its own slot, so each counter has a single writer. Counters are
read and written through `memoryview(mm).cast("Q")`, one aligned 8-byte load
or store each (never a byte-wise pack, whose torn value could equal an old
version).

Why that is enough: counters only grow, so if two reads of a bucket give
the same sum, every term was equal in both reads, hence no counter of that
bucket changed in between (a version read is a valid "nothing changed"
witness even though the 16 loads are not one atomic snapshot). `base` is
time.time_ns() when the table was created: the versions of a re-created
table start above any version the earlier table ever reached (a bucket
would need more bumps than nanoseconds went by), so a page stored under an
old tag can never match again.

Member slots are claimed with a non-blocking open-file-description lock
(F_OFD_SETLK) on one byte per slot of the `nodes` file: the kernel drops it
when the process dies, so a slot whose lock is free belongs to a departed or
dead node and may be reused. Its version counters are kept (the new owner
continues them, so sums stay monotonic); its pid, name and statistics are
replaced. OFD locks belong to the open file, not the process, so two tables
opened in one process exclude each other too. Do not fork after joining:
the child would share the slot (and its counter) with the parent.
"""

from __future__ import annotations

import errno
import fcntl
import mmap
import os
import struct
import time

import xxhash

from backends.store import Member, StoreUnavailable

MAGIC = 0x544D454D4E4F4445  # "TMEMNODE"
LAYOUT = 1
MAX_NODES = 16
BUCKETS = 65536
NAME_MAX = 200

HEADER_BYTES = 4096
SLOT_BYTES = 256
SLOTS_OFFSET = HEADER_BYTES
VERSIONS_OFFSET = SLOTS_OFFSET + 4096
TABLE_BYTES = VERSIONS_OFFSET + BUCKETS * MAX_NODES * 8

# header words
_H_MAGIC, _H_LAYOUT, _H_BASE, _H_MAX_NODES, _H_BUCKETS = range(5)
# slot words (relative to the slot's first word)
_S_PID, _S_HEARTBEAT, _S_PUTS, _S_GETS, _S_HITS_OTHERS, _S_NAME_LEN = range(6)
_S_NAME_OFFSET = 6 * 8  # bytes into the slot
_SLOT_WORDS = SLOT_BYTES // 8
_SLOTS_WORD = SLOTS_OFFSET // 8
_VERSIONS_WORD = VERSIONS_OFFSET // 8
# slot locks: one byte per slot, inside the header page (advisory, never written)
_LOCK_OFFSET = 2048

_FLOCK = struct.Struct("hhqqi4x")  # struct flock on Linux LP64 (l_type, l_whence, l_start, l_len, l_pid)
_hash = xxhash.xxh3_64_intdigest

assert NAME_MAX + _S_NAME_OFFSET <= SLOT_BYTES
assert BUCKETS & (BUCKETS - 1) == 0


def _ofd_lock(fd: int, offset: int, lock: bool) -> bool:
    """Take (non-blocking) or release an OFD write lock on one byte; False if held elsewhere."""
    kind = fcntl.F_WRLCK if lock else fcntl.F_UNLCK
    try:
        fcntl.fcntl(fd, fcntl.F_OFD_SETLK, _FLOCK.pack(kind, os.SEEK_SET, offset, 1, 0))
    except OSError as exc:
        if exc.errno in (errno.EAGAIN, errno.EACCES):
            return False
        raise
    return True


def table_in_use(path: str) -> bool:
    """True while any node holds a member slot of the table at `path` (dead nodes hold none)."""
    return any_slot_locked(path, _LOCK_OFFSET, MAX_NODES)


def any_slot_locked(path: str, offset: int, count: int) -> bool:
    """True while any process holds the OFD lock of one of `count` slot bytes from `offset` of
    the file at `path` (a slot table's liveness: the kernel drops a dead holder's lock)."""
    try:
        fd = os.open(path, os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError:
        return False
    try:
        whole = _FLOCK.pack(fcntl.F_WRLCK, os.SEEK_SET, offset, count, 0)
        try:
            fcntl.fcntl(fd, fcntl.F_OFD_SETLK, whole)
        except OSError as exc:
            if exc.errno in (errno.EAGAIN, errno.EACCES):
                return True
            raise
        return False  # closing the descriptor drops the probe's lock
    finally:
        os.close(fd)


class NodeTable:
    """One process's view of the shared `nodes` file of a pool (see the module docstring).

    Open it with `NodeTable(path)` while holding the pool's init lock (the file
    is created and sized here), then `join(name)` to claim a member slot.
    """

    def __init__(self, path: str, node_timeout: float = 5.0) -> None:
        self.path = path
        self.node_timeout = node_timeout
        self.node = -1
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        try:
            os.fchmod(fd, 0o600)
            size = os.fstat(fd).st_size
            if size not in (0, TABLE_BYTES):
                raise StoreUnavailable(f"{path}: {size} bytes, expected {TABLE_BYTES} (another layout?)")
            if size == 0:
                os.ftruncate(fd, TABLE_BYTES)  # zero-filled (sparse on tmpfs)
            self._mm = mmap.mmap(fd, TABLE_BYTES, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd
        self._mv = memoryview(self._mm)
        self._q = self._mv.cast("Q")
        q = self._q
        if q[_H_MAGIC] == 0:  # new, or its creator died before finishing: nobody used it yet
            q[_H_LAYOUT] = LAYOUT
            q[_H_BASE] = time.time_ns()
            q[_H_MAX_NODES] = MAX_NODES
            q[_H_BUCKETS] = BUCKETS
            q[_H_MAGIC] = MAGIC  # last: a table without magic was never used
        if (q[_H_MAGIC], q[_H_LAYOUT], q[_H_MAX_NODES], q[_H_BUCKETS]) != (MAGIC, LAYOUT, MAX_NODES, BUCKETS):
            self.close()
            raise StoreUnavailable(f"{path}: not a tmemfs node table of layout {LAYOUT}")
        self.base: int = q[_H_BASE]
        self._own = -1  # word index of this node's counter in bucket 0

    # -- versions ---------------------------------------------------------

    def version(self, file: bytes) -> int:
        """base + the sum of every node's counter for the file's bucket."""
        i = _VERSIONS_WORD + (_hash(file) & (BUCKETS - 1)) * MAX_NODES
        return self.base + sum(self._q[i : i + MAX_NODES])

    def bump(self, file: bytes) -> int:
        """Increment this node's counter for the file's bucket; the new version."""
        if self._own < 0:
            raise StoreUnavailable("not a member of the pool")
        q = self._q
        b = (_hash(file) & (BUCKETS - 1)) * MAX_NODES
        q[self._own + b] += 1  # one 8-byte load and one 8-byte store: a single writer per counter
        i = _VERSIONS_WORD + b
        return self.base + sum(q[i : i + MAX_NODES])

    # -- members ----------------------------------------------------------

    def join(self, name: str) -> int:
        """Claim the first member slot whose lock is free; the node id (slot number)."""
        if self.node >= 0:
            return self.node
        for slot in range(MAX_NODES):
            if _ofd_lock(self._fd, _LOCK_OFFSET + slot, True):
                break
        else:
            raise StoreUnavailable(f"all {MAX_NODES} member slots of {self.path} are held by live nodes")
        q, s = self._q, _SLOTS_WORD + slot * _SLOT_WORDS
        q[s + _S_PID] = 0  # hide the slot while it is rewritten
        raw = name.encode("utf-8")[:NAME_MAX].decode("utf-8", "ignore").encode("utf-8")
        off = SLOTS_OFFSET + slot * SLOT_BYTES + _S_NAME_OFFSET
        self._mm[off : off + NAME_MAX] = raw.ljust(NAME_MAX, b"\0")
        q[s + _S_NAME_LEN] = len(raw)
        q[s + _S_PUTS] = q[s + _S_GETS] = q[s + _S_HITS_OTHERS] = 0
        q[s + _S_HEARTBEAT] = time.time_ns()
        q[s + _S_PID] = os.getpid()
        self.node = slot
        self._own = _VERSIONS_WORD + slot
        return slot

    def heartbeat(self, puts: int, gets: int, hits_from_others: int) -> None:
        if self.node < 0:
            raise StoreUnavailable("not a member of the pool")
        q, s = self._q, _SLOTS_WORD + self.node * _SLOT_WORDS
        q[s + _S_PUTS] = puts
        q[s + _S_GETS] = gets
        q[s + _S_HITS_OTHERS] = hits_from_others
        q[s + _S_HEARTBEAT] = time.time_ns()

    def members(self) -> list[Member]:
        """Every slot with a pid (alive: heartbeat within node_timeout)."""
        out = []
        now = time.time()
        q = self._q
        for slot in range(MAX_NODES):
            s = _SLOTS_WORD + slot * _SLOT_WORDS
            if q[s + _S_PID] == 0:
                continue
            off = SLOTS_OFFSET + slot * SLOT_BYTES + _S_NAME_OFFSET
            n = min(q[s + _S_NAME_LEN], NAME_MAX)
            name = bytes(self._mm[off : off + n]).decode("utf-8", "replace")
            beat = q[s + _S_HEARTBEAT] / 1e9
            out.append(Member(node=slot, name=name, heartbeat=beat, alive=now - beat <= self.node_timeout,
                              puts=q[s + _S_PUTS], gets=q[s + _S_GETS], hits_from_others=q[s + _S_HITS_OTHERS]))
        return out

    def leave(self) -> None:
        """Give the slot back (its version counters stay for the next owner)."""
        if self.node < 0:
            return
        self._q[_SLOTS_WORD + self.node * _SLOT_WORDS + _S_PID] = 0
        _ofd_lock(self._fd, _LOCK_OFFSET + self.node, False)
        self.node = -1
        self._own = -1

    def close(self) -> None:
        """Leave, then unmap and close (the object is unusable afterwards)."""
        if self._fd < 0:
            return
        if self.node >= 0:
            self.leave()
        self._q.release()
        self._mv.release()
        self._mm.close()
        os.close(self._fd)  # drops the OFD locks of this open file
        self._fd = -1
