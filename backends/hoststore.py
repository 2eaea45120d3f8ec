"""A host pool: one tmem shared by several tmemfs mounts ("clients") on one machine.

Every client (one process, any SRC) opens the same files and gets one memory
budget, one eviction order over all clients' pages, and private pools of its
own: a client never sees another's pages. What is shared is the memory, not
the data (except identical content under dedup, stored once). A donor takes
memory back at any time with `take_back`, which never waits on a client.

Why the same machinery as the cluster's one-host store (lmdbstore.py): every
call is a few microseconds of shared-memory work (measured on /dev/shm with
a full 1 GiB host: a get hit ~4 us, a miss ~2 us, a put ~16 us, ~24 us when
it evicts), so it runs inline on the trio loop, and nothing ever waits on
another process for longer than a bounded `lock_wait`. LMDB holds the index
and all bookkeeping (free frames, the eviction order, counters) with real
transactions; the pages live in a slab file of 4096-byte frames next to it,
mapped by every client. LMDB runs with writemap: a write transaction costs
3.3 us instead of 17.6 us (measured), as its pages are written in place in
the map rather than copied out at commit. The price: LMDB's file (and the
`frames` metadata) are written through mappings, so a tmpfs too full to
grow them kills the writing process with SIGBUS, as it would lmdbstore's.

Files, in `{directory}/tmemfs-host-{name}` (0700; every file 0600, opened
with O_NOFOLLOW; created under an `init.lock` flock so that two first
clients racing do not both create): data.mdb + lock.mdb (LMDB), `slab`,
`frames`, `clients`, `init.lock`, `write.lock`, `donor.lock`. The last client to leave
removes the directory (its memory is all returned by then anyway).

LMDB records (one main database, one-byte prefixes, keys big-endian so that
cursors walk them in numeric order):

    b"i" + client (2) + pool (4) + len(key) (2) + key + index (8)
            -> frame (4), slot (1), encoding (1), stored length (2), generation (8),
               xxh3-64 of the raw page (8), order seq (8; 0 = persistent), shared (1)
    b"o" + seq (8)               -> the b"i" key       the one eviction order, oldest first
    b"O" + client (2) + seq (8)  -> b""                each client's part of it (for its cap)
    b"d" + digest (8)            -> frame, slot, encoding, length, generation, references,
                                    persistent references    dedup content
    b"f" + frame (4)             -> b""                free whole frames (lowest first)
    b"h" + frame (4)             -> free slot (1)      buddy frames with one half free
    b"p" + frame (4)             -> slot mask (1)      frames holding persistent content
    b"c" + client (2)            -> stored pages, stored bytes, persistent pages, evictions
    b"m"                         -> host counters, budget, policy, SIEVE hand

Why zbud (historical zcache): a compressed page (lz4) of at most 2048 bytes
takes half a frame, slot 0 from the frame's start and slot 1 ending at its
end, so two fit one frame and nothing needs compaction; one that does not
fit half a frame is stored raw in a whole frame. The budget counts frames
(a half-used buddy frame counts whole): that is what the machine gives up.
Compressed puts prefer the lowest half-free buddy frame, then the lowest
free frame: a compact slab.

Why punching: every frame that becomes free is punched out of the slab
(fallocate PUNCH_HOLE|KEEP_SIZE) before the write lock is released. The
slab is a sparse file sized for the machine's whole memory, and tmpfs only
allocates what is written, so the slab's memory is exactly the frames in
use: a take-back really returns memory to the machine, at once. Slab writes
go through pwrite, never the mapping, so a tmpfs too full for a page refuses
the put (ENOSPC). A take-back never fails and never waits on a client for
longer than DONOR_WAIT: when the write lock stays held (a client stopped in
the microseconds of its transaction), it adds its frames to a word of the
clients file that every writer applies first, under donor.lock (taken by
donors only, never by a client); so the budget drops before anything else
is written, and the memory goes with the next write, the stopped client's
or, once it is killed, any other's. Otherwise it lowers the budget in one
write transaction (every put from then on fits under the new line), then evicts TAKE_BATCH
pages a transaction, releasing the lock in between so that clients' puts
and removals go on: about 5 us a page (64 MiB of a full 1 GiB host in ~90
ms, 512 MiB in ~670 ms, mostly LMDB bookkeeping). What persistent pages keep
over the line goes back into the budget at the end, and is not counted as
taken.

Why a seqlock per (frame, slot) and metadata apart from the slab: readers
never lock (an LMDB read transaction and a copy). A writer makes the slot's
generation odd, writes, makes it even, and records the even generation in
the index; freeing a slot gives it a new generation. Generations only grow,
so a reader that finds the slot still at the entry's generation after its
copy knows nobody wrote or freed the slot meanwhile; it then decompresses
and checks the xxh3-64 digest of the raw page: a torn, half-written, freed
or corrupt entry is a miss (and the entry is dropped), never wrong bytes.
A slot whose generation moved on is a race (`torn_reads`: another client's
write evicted or replaced the entry after this reader's snapshot); a copy
that held still and does not match its digest is damage (`verify_failures`).
The generations and referenced bytes live in their own `frames` file, so
punching a slab frame never zeroes them.

Why a write lock of our own (as lmdbstore.py): LMDB's writer mutex has no
timeout, so a client SIGSTOPped inside a write transaction would freeze
every other one. Writers take a non-blocking flock on `write.lock`, retried
for at most `lock_wait` seconds (then only tried, for LOCK_BACKOFF), and
only its holder begins a write transaction. The pages evicted together (a
fill's, a reclaim step's) are put in one transaction (put_many: 14 us a page
in batches of 32 against 31 us one by one, in process). Without the lock a
put is refused (`lock_timeouts`); an invalidation and the older version a
refused put (or one the store refused, full) would have replaced are kept in
this client's memory (its pages are private: only it could ask for them)
and applied first in its next write transaction; until then a get of those
pages misses, so what this client invalidated or replaced is never served
to it. The removal after an
exclusive get always waits that way (for REMOVE_BATCH of them at most): the
hit's page evicts another from the page cache, whose put is the next write,
so a hit costs a read transaction and no write of its own (a 4k read of a
page the host holds, in process: 56 -> 35 us; per-mount tmem 13 us). Past
PENDING_MAX of them, all its pages miss until that next write drops them
all. The frontend's ledger forgets such pages anyway; this makes the store
right on its own. A killed holder's flock goes with it, and LMDB recovers
its robust mutex. Waiting for the lock yields the CPU between tries rather
than sleeping: with more clients than CPUs, a sleep waits out a timer slice
while the holder needs microseconds (three clients putting and getting at
once on 2 CPUs: 18.7k -> 32.5k operations a second in all). Residual risk: a client stopped
inside a read transaction pins old LMDB pages (the map may fill up and
puts be refused until it resumes).

Why CLOCK and SIEVE keep no state a hit must write: a hit sets the slot's
referenced byte in `frames`, a plain store. `lru` is CLOCK: eviction walks
the order from the oldest entry and moves a referenced one to the young end
with its byte cleared. `sieve` keeps its hand in the meta record, never
reorders, and passes over (and clears) visited entries.

Why the weighted walk: a client's share is what the clients hold x its
weight / the sum of the joined clients' weights (budget x weight / sum when
the budget is full of whole frames; measured on what is held, half-empty
buddy frames never leave every client "under" its share). A put that needs
room walks from the policy's victim end and takes the first candidate whose
client is not under its share by a page or more; such a client's candidate
gets a second chance (moved to the young end under lru, passed by the hand
under sieve), whoever is putting: an under-share client putting takes from
the others, so it grows to its share. The page of slack means that with
every client exactly at its share the plain order decides: with equal
weights and no imbalance this is exactly the one global order. After WALK
candidates passed over, the policy's plain victim is taken, so a put costs
a bounded walk. A cap (bytes, per client) is enforced on the capped client
alone: its own oldest entries (its part of the order) make room, or the put
is refused (`cap_hits`). Stored bytes, shares and caps count the frame space
an entry takes: 4096 raw, 2048 for a buddy half; a deduplicated page counts
in full to every client holding it.

Why persistent entries (frontswap) stay out of the order: nothing but their
own invalidation removes them, not eviction, not a take-back. Frames holding
persistent content are counted (`b"p"`), so a put that could not fit even
with every ephemeral page gone is refused before anything is evicted.

Why reclaim: client slots are claimed with OFD locks (as nodetable.py), which
the kernel drops when a process dies. A slot whose lock is free but whose pid
is still recorded belongs to a client that died without leaving; every live
client calls `reclaim_dead()` periodically, which removes all its entries and
clears the slot, so a killed client's pages are gone within node_timeout.
A client joining a slot left that way purges it first.

The `clients` file (native uint64 words, one writer per word: the slot's
owner): a header page (magic, layout, slots; one lock byte per slot at
offset 2048) then MAX_CLIENTS slots of 512 bytes: pid, heartbeat,
weight, cap, puts, gets, hits, lock timeouts, node_timeout, label length,
label (the mount point). The `frames` file: a header page (magic, layout,
frames), then two uint64 generations per frame, then two referenced bytes
per frame.

Do not fork after join(): the child would share the slot and the handles.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import functools
import mmap
import operator
import os
import re
import shutil
import stat
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

import lmdb
import lz4.block
import xxhash

from backends.lmdbstore import LOCK_BACKOFF, _next_gen
from backends.lz4page import decompress_page
from backends.nodetable import _ofd_lock, any_slot_locked
from backends.page import PAGE_SIZE, PagePut

MAX_CLIENTS = 16
HALF = PAGE_SIZE // 2
WALK = 64  # candidates passed over before the policy's plain victim is taken
HARD_WALK = 1024  # candidates passed over before one is taken whatever its referenced byte
MAX_KEY = 255  # bytes of a file key
INIT_WAIT = 1.0  # seconds join/attach may wait for the init lock and the write lock
CLEAR_WAIT = 0.25  # seconds leave may wait for the write lock
PENDING_MAX = 65536  # invalidations kept while the lock is busy; beyond, every page of ours is suspect
REMOVE_BATCH = 32  # exclusive gets' removals deferred to the next write before one is forced
TAKE_BATCH = 4096  # evictions of a take-back per write transaction (some ms): clients' puts interleave
PURGE_BATCH = 4096
MAP_BASE = 64 * 2**20  # LMDB map: this plus MAP_PER_FRAME per slab frame (virtual: it grows as used)
MAP_PER_FRAME = 2048
POLICIES = ("lru", "sieve")
RAW, LZ4 = 0, 1

CLIENTS_MAGIC = 0x544D454D434C4E54  # "TMEMCLNT"
FRAMES_MAGIC = 0x544D454D46524D53  # "TMEMFRMS"
LAYOUT = 2
HEADER = 4096
LOCK_OFFSET = 2048  # one lock byte per client slot, inside the clients header
SLOT_BYTES = 512
_PID, _BEAT, _WEIGHT, _CAP, _PUTS, _GETS, _HITS, _LOCKT, _TIMEOUT, _LABEL_LEN = range(10)
TAKES_ASKED = 4  # clients-file header word: frames donors asked for while the write lock was held (only grows)
DONOR_WAIT = 0.05  # seconds a take-back waits for the write lock before it leaves its request for the next writer
LABEL_OFFSET = 10 * 8
LABEL_MAX = SLOT_BYTES - LABEL_OFFSET
CLIENTS_BYTES = HEADER + MAX_CLIENTS * SLOT_BYTES

_INDEX, _ORDER, _OWN, _CONTENT, _FREE, _HALF, _PIN, _COUNTS, _META_KEY = (
    b"i", b"o", b"O", b"d", b"f", b"h", b"p", b"c", b"m")
_ENTRY = struct.Struct(">IBBHQQQB")  # frame, slot, encoding, length, generation, digest, seq, shared
_CONTENT_VALUE = struct.Struct(">IBBHQQQ")  # frame, slot, encoding, length, generation, refs, persistent refs
_COUNTS_VALUE = struct.Struct(">4Q")  # stored pages, stored bytes, persistent pages, evictions
_NAME = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._-]{0,63}")
_FLOCK = struct.Struct("hhqqi4x")  # struct flock on Linux LP64
_hash = xxhash.xxh3_64_intdigest
_libc = ctypes.CDLL(None, use_errno=True)
_libc.fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64]
_PUNCH = 0x02 | 0x01  # FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE

T = TypeVar("T")


class HostError(Exception):
    """One line for the user (bad name, permission, cap > budget, full table, policy mismatch)."""


class NoSuchHost(HostError):
    """attach() of a host nobody made (or whose last client left)."""


@dataclass(frozen=True)
class ClientInfo:
    client: int
    pid: int
    label: str
    alive: bool
    weight: int
    cap: int | None
    stored_pages: int
    stored_bytes: int
    persistent_pages: int
    puts: int
    gets: int
    hits: int
    evictions: int


class _Meta:
    """The b"m" record: host-wide counters and settings, changed only in write transactions."""

    FIELDS = ("seq", "unused", "used", "budget", "taken", "stored", "persistent", "evictions", "dedup_pages",
              "buddy_frames", "take_backs", "taken_back_bytes", "give_backs", "reclaimed", "hand", "pinned",
              "policy", "takes_applied")
    __slots__ = FIELDS
    STRUCT = struct.Struct(f">{len(FIELDS)}Q")
    seq: int  # the next order seq (0 marks persistent entries)
    unused: int  # the lowest never-used frame
    used: int  # frames in use (the budget counts these)
    budget: int  # frames
    taken: int  # frames taken back and not given back
    stored: int  # slots holding a page (a deduplicated page once)
    persistent: int
    evictions: int
    dedup_pages: int
    buddy_frames: int
    take_backs: int
    taken_back_bytes: int
    give_backs: int
    reclaimed: int
    hand: int  # sieve: the seq the hand is at
    pinned: int  # frames holding persistent content
    policy: int  # an index in POLICIES
    takes_applied: int  # frames of the clients file's TAKES_ASKED word already taken (see take_back)

    def __init__(self, raw: bytes | None) -> None:
        (self.seq, self.unused, self.used, self.budget, self.taken, self.stored, self.persistent, self.evictions,
         self.dedup_pages, self.buddy_frames, self.take_backs, self.taken_back_bytes, self.give_backs,
         self.reclaimed, self.hand, self.pinned, self.policy, self.takes_applied) = (
            self.STRUCT.unpack(raw) if raw is not None else (1,) + (0,) * (len(self.FIELDS) - 1))

    def pack(self) -> bytes:
        return self.STRUCT.pack(*_meta_values(self))


_meta_values = operator.attrgetter(*_Meta.FIELDS)


def machine_frames() -> int:
    """This machine's physical memory in 4096-byte frames: the slab's (sparse) size."""
    return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") // PAGE_SIZE


def check_host_name(name: str) -> str:
    """`name` if it can name a host (a file name under any directory); ValueError (why) if not."""
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise ValueError("a host name is 1-64 of A-Z a-z 0-9 . _ - and does not start with '.'")
    return name


def host_directory(name: str, directory: str = "/dev/shm") -> str:
    """Where host `name` lives; HostError for a bad name."""
    try:
        check_host_name(name)
    except ValueError as exc:
        raise HostError(f"cc_host={name}: {exc}") from None
    return os.path.join(os.fspath(directory), f"tmemfs-host-{name}")


def _flock_wait(fd: int, wait: float) -> bool:
    """flock(LOCK_EX) without ever blocking longer than about `wait` seconds. Between tries the
    CPU goes to whoever holds it (sched_yield): a write holds the lock some microseconds, and on
    a machine with fewer CPUs than clients a sleep would wait out a whole timer slice instead."""
    deadline = 0.0
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            now = time.monotonic()
            if not deadline:
                deadline = now + wait
            elif now >= deadline:
                return False
        os.sched_yield()


def _punch(fd: int, freed: set[int] | list[int]) -> None:
    """Give the frames' memory back (runs of consecutive frames in one call each)."""
    frames = sorted(freed)
    i = 0
    while i < len(frames):
        j = i
        while j + 1 < len(frames) and frames[j + 1] == frames[j] + 1:
            j += 1
        if _libc.fallocate(fd, _PUNCH, frames[i] * PAGE_SIZE, (j - i + 1) * PAGE_SIZE) != 0:
            err = ctypes.get_errno()
            raise OSError(err, os.strerror(err))
        i = j + 1


def _ofd_free(fd: int, offset: int) -> bool:
    """Whether no other open file holds the OFD lock on this byte (our own never conflicts)."""
    probe = _FLOCK.pack(fcntl.F_WRLCK, os.SEEK_SET, offset, 1, 0)
    lock_type: int = _FLOCK.unpack(fcntl.fcntl(fd, fcntl.F_OFD_GETLK, probe))[0]
    return lock_type == fcntl.F_UNLCK


def _slots_in_use(path: str) -> bool:
    """True while any client holds a slot of the clients table at `path`."""
    return any_slot_locked(path, LOCK_OFFSET, MAX_CLIENTS)


def _pages(size: int) -> int:
    return (size + PAGE_SIZE - 1) // PAGE_SIZE * PAGE_SIZE


def _frames_bytes(frames: int) -> int:
    return HEADER + _pages(frames * 16) + _pages(frames * 2)


def _b2(n: int) -> bytes:
    return n.to_bytes(2, "big")


def _b4(n: int) -> bytes:
    return n.to_bytes(4, "big")


def _b8(n: int) -> bytes:
    return n.to_bytes(8, "big")


class _SharedEnv:
    """An LMDB environment and how many handles of this process use it (LMDB must not be
    opened twice in one process: its fcntl locks are per process)."""

    def __init__(self, env: lmdb.Environment) -> None:
        self.env = env
        self.users = 0


_ENVS: dict[tuple[int, int, int], _SharedEnv] = {}


class _Host:
    """The open files of one host in this process, and their mappings."""

    def __init__(self, path: str, who: str, create: bool, missing: HostError) -> None:
        self.path, self.who, self.missing = path, who, missing
        self._fds: list[int] = []
        self._maps: list[mmap.mmap] = []
        self._views: list[memoryview] = []
        self._env_key: tuple[int, int, int] | None = None
        try:
            self._open_clients(create)
            self._open_frames(create)
            self.wfd = self._open("write.lock", create)
            self.dfd = self._open("donor.lock", create)
            self._open_env(create)
        except PermissionError:
            self.close()
            raise self.denied() from None
        except BaseException:
            self.close()
            raise

    def denied(self) -> HostError:
        try:
            owner = f" is owned by uid {os.lstat(self.path).st_uid}"
        except OSError:
            owner = ""
        return HostError(f"{self.who}: permission denied: {self.path}{owner}")

    def _open(self, name: str, create: bool) -> int:
        flags = os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC | (os.O_CREAT if create else 0)
        try:
            fd = os.open(os.path.join(self.path, name), flags, 0o600)
        except FileNotFoundError:
            raise self.missing from None
        self._fds.append(fd)
        if os.fstat(fd).st_uid == os.geteuid():
            os.fchmod(fd, 0o600)
        return fd

    def _map(self, fd: int, size: int, writable: bool) -> memoryview:
        prot = mmap.PROT_READ | (mmap.PROT_WRITE if writable else 0)
        mm = mmap.mmap(fd, size, mmap.MAP_SHARED, prot)
        self._maps.append(mm)
        view = memoryview(mm)
        self._views.append(view)
        return view

    def _open_clients(self, create: bool) -> None:
        self.cfd = fd = self._open("clients", create)
        size = os.fstat(fd).st_size
        if size == 0 and create:
            os.ftruncate(fd, CLIENTS_BYTES)
        elif size != CLIENTS_BYTES:
            raise HostError(f"{self.who}: {self.path}/clients has {size} bytes, expected {CLIENTS_BYTES}")
        raw = self._map(fd, CLIENTS_BYTES, True)
        self.label_bytes = raw
        q = self.cq = raw.cast("Q")
        self._views.append(q)
        if q[0] == 0 and create:  # new, or its creator died before finishing: nobody used it
            q[1], q[2], q[3] = LAYOUT, MAX_CLIENTS, SLOT_BYTES
            q[0] = CLIENTS_MAGIC
        if (q[0], q[1], q[2], q[3]) != (CLIENTS_MAGIC, LAYOUT, MAX_CLIENTS, SLOT_BYTES):
            raise HostError(f"{self.who}: {self.path}/clients is not a client table of layout {LAYOUT}")

    def _open_frames(self, create: bool) -> None:
        fd = self._open("frames", create)
        self.sfd = sfd = self._open("slab", create)
        head = os.pread(fd, 24, 0)
        if len(head) == 24 and struct.unpack("QQQ", head)[0] == FRAMES_MAGIC:
            _magic, layout, frames = struct.unpack("QQQ", head)
            if layout != LAYOUT:
                raise HostError(f"{self.who}: {self.path}/frames has layout {layout}, expected {LAYOUT}")
        elif create:  # sized first, the magic last: a host without it was never used
            frames = machine_frames()
            for f, size in ((fd, _frames_bytes(frames)), (sfd, frames * PAGE_SIZE)):
                os.ftruncate(f, 0)
                os.ftruncate(f, size)
            try:
                _punch(sfd, [0])
            except OSError as exc:
                raise HostError(f"{self.who}: {self.path} cannot punch holes ({exc.strerror}): use tmpfs") from None
            os.pwrite(fd, struct.pack("QQ", LAYOUT, frames), 8)
            os.pwrite(fd, struct.pack("Q", FRAMES_MAGIC), 0)
        else:
            raise HostError(f"{self.who}: the host in {self.path} was never completed")
        for f, size in ((fd, _frames_bytes(frames)), (sfd, frames * PAGE_SIZE)):
            if os.fstat(f).st_size != size:
                raise HostError(f"{self.who}: {self.path}: a file of {os.fstat(f).st_size} bytes, expected {size}")
        self.frames: int = frames
        meta = self._map(fd, _frames_bytes(frames), True)
        self.gens = meta[HEADER : HEADER + frames * 16].cast("Q")  # [frame * 2 + slot]
        refs_start = HEADER + _pages(frames * 16)
        self.refs = meta[refs_start : refs_start + frames * 2]  # [frame * 2 + slot]
        self._views += [self.gens, self.refs]
        self.data = self._map(sfd, frames * PAGE_SIZE, False)  # written with pwrite only

    def _open_env(self, create: bool) -> None:
        for name in ("data.mdb", "lock.mdb"):
            self._make_lmdb_file(name, create)
        st, data = os.stat(self.path), os.stat(os.path.join(self.path, "data.mdb"))
        key = (st.st_dev, st.st_ino, data.st_ino)
        shared = _ENVS.get(key)
        if shared is None:
            env = lmdb.open(self.path, map_size=MAP_BASE + MAP_PER_FRAME * self.frames, max_dbs=0, subdir=True,
                            lock=True, metasync=False, sync=False, readahead=False, mode=0o600, max_spare_txns=1,
                            writemap=True)
            shared = _ENVS[key] = _SharedEnv(env)
        shared.users += 1
        self._env_key = key
        self.env = shared.env

    def _make_lmdb_file(self, name: str, create: bool) -> None:
        """Make LMDB's file with O_NOFOLLOW and 0600 if absent; never open an existing one: closing
        any descriptor of lock.mdb drops this process's POSIX locks on it, and a process opening
        the host next would then think itself alone and reset LMDB's reader table."""
        path = os.path.join(self.path, name)
        if create:
            try:
                os.close(os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600))
                os.chmod(path, 0o600)  # whatever the umask
                return
            except FileExistsError:
                pass
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            raise self.missing from None
        if not stat.S_ISREG(st.st_mode):
            raise HostError(f"{self.who}: {path} is not a regular file")
        if st.st_uid == os.geteuid() and stat.S_IMODE(st.st_mode) != 0o600:
            os.chmod(path, 0o600)

    def slot(self, client: int) -> int:
        """Index in `cq` of the client slot's first word."""
        return (HEADER + client * SLOT_BYTES) // 8

    def close(self) -> None:
        if self._env_key is not None:
            shared = _ENVS[self._env_key]
            shared.users -= 1
            if shared.users == 0:
                shared.env.close()
                del _ENVS[self._env_key]
            self._env_key = None
        for view in reversed(self._views):
            view.release()
        for mm in self._maps:
            mm.close()
        for fd in self._fds:
            os.close(fd)
        self._views, self._maps, self._fds = [], [], []


class _Write:
    """One write transaction: the meta record and client counters it changes, and the frames it
    frees (punched once it commits, before the write lock goes)."""

    def __init__(self, host: _Host, txn: lmdb.Transaction[bytes]) -> None:
        self.host, self.txn = host, txn
        self.meta = _Meta(txn.get(_META_KEY))
        self.counts: dict[int, list[int]] = {}
        self.freed: set[int] = set()  # frames freed here and not taken again: punched after the commit
        self._shares: dict[int, float] | None = None

    def finish(self) -> None:
        self.txn.put(_META_KEY, self.meta.pack())
        for client, values in self.counts.items():
            self.txn.put(_COUNTS + _b2(client), _COUNTS_VALUE.pack(*values))

    def count(self, client: int) -> list[int]:
        """[stored pages, stored bytes, persistent pages, evictions] of a client, changed in place."""
        values = self.counts.get(client)
        if values is None:
            raw = self.txn.get(_COUNTS + _b2(client))
            values = self.counts[client] = list(_COUNTS_VALUE.unpack(raw)) if raw else [0, 0, 0, 0]
        return values

    # -- frames ------------------------------------------------------------------------

    def take_whole(self) -> int | None:
        """A free frame, if the budget allows one more: one this transaction freed (still
        resident: no punch, no fault and zeroing to take it again), else the lowest."""
        meta = self.meta
        if meta.used >= meta.budget:
            return None
        if self.freed:
            frame = self.freed.pop()
            self.txn.delete(_FREE + _b4(frame))
        elif (cursor := self.txn.cursor()).set_range(_FREE) and cursor.key()[:1] == _FREE:
            frame = int.from_bytes(cursor.key()[1:], "big")
            cursor.delete()
        elif meta.unused < self.host.frames:
            frame = meta.unused
            meta.unused += 1
        else:
            return None
        meta.used += 1
        return frame

    def take_half(self) -> tuple[int, int] | None:
        """A half frame: the lowest buddy frame with a free half, else a new buddy frame."""
        cursor = self.txn.cursor()
        if cursor.set_range(_HALF) and cursor.key()[:1] == _HALF:
            half = int.from_bytes(cursor.key()[1:], "big"), cursor.value()[0]
            cursor.delete()
            return half
        frame = self.take_whole()
        if frame is None:
            return None
        self.txn.put(_HALF + _b4(frame), b"\x01")
        self.meta.buddy_frames += 1
        return frame, 0

    def free_slot(self, frame: int, slot: int, enc: int) -> None:
        gens = self.host.gens
        gens[frame * 2 + slot] = _next_gen(gens[frame * 2 + slot])  # readers holding the old one miss
        self.meta.stored -= 1
        if enc == LZ4:
            key = _HALF + _b4(frame)
            if self.txn.get(key) is None:  # the buddy is in use: this half is free now
                self.txn.put(key, bytes((slot,)))
                return
            self.txn.delete(key)
            self.meta.buddy_frames -= 1
        self.txn.put(_FREE + _b4(frame), b"")
        self.meta.used -= 1
        self.freed.add(frame)

    def write_slot(self, frame: int, slot: int, blob: bytes | memoryview) -> int:
        """Store `blob` in the slot under the seqlock; its new (even) generation."""
        host, i = self.host, frame * 2 + slot
        gen = host.gens[i]
        gen += 1 if gen % 2 == 0 else 2  # odd: being written
        host.gens[i] = gen
        offset = frame * PAGE_SIZE + (0 if slot == 0 else PAGE_SIZE - len(blob))
        if os.pwrite(host.sfd, blob, offset) != len(blob):
            raise OSError(errno.ENOSPC, "short write to the slab")
        host.gens[i] = gen + 1
        host.refs[i] = 0  # a new page earns its second chance by being hit
        return gen + 1

    def pin(self, frame: int, slot: int, on: bool) -> None:
        """Mark a slot as holding persistent content (or not); counts frames with any."""
        key = _PIN + _b4(frame)
        raw = self.txn.get(key)
        old = raw[0] if raw else 0
        new = old | (1 << slot) if on else old & ~(1 << slot)
        if new:
            self.txn.put(key, bytes((new,)))
        elif raw is not None:
            self.txn.delete(key)
        self.meta.pinned += (new != 0) - (old != 0)

    # -- entries -----------------------------------------------------------------------

    def drop(self, key: bytes, value: bytes, evicted: bool) -> None:
        """Remove an entry, its place in the order, and its reference to its content."""
        frame, slot, enc, _length, gen, digest, seq, shared = _ENTRY.unpack(value)
        txn, client, persistent = self.txn, int.from_bytes(key[1:3], "big"), seq == 0
        txn.delete(key)
        if not persistent:
            txn.delete(_ORDER + _b8(seq))
            txn.delete(_OWN + key[1:3] + _b8(seq))
        counts = self.count(client)
        counts[0] -= 1
        counts[1] -= PAGE_SIZE if enc == RAW else HALF
        counts[2] -= persistent
        counts[3] += evicted
        self.meta.persistent -= persistent
        self.meta.evictions += evicted
        if frame >= self.host.frames:
            return  # damaged: nothing to free
        if not shared:
            if persistent:
                self.pin(frame, slot, False)
            self.free_slot(frame, slot, enc)
            return
        ckey = _CONTENT + _b8(digest)
        raw = txn.get(ckey)
        if raw is None:
            return
        c_frame, c_slot, c_enc, c_length, c_gen, refs, prefs = _CONTENT_VALUE.unpack(raw)
        if (c_frame, c_slot, c_gen) != (frame, slot, gen):
            return
        refs, prefs = refs - 1, prefs - persistent
        if persistent and prefs == 0:
            self.pin(frame, slot, False)
        if refs == 0:
            txn.delete(ckey)
            self.free_slot(frame, slot, enc)
        else:
            txn.put(ckey, _CONTENT_VALUE.pack(c_frame, c_slot, c_enc, c_length, c_gen, refs, prefs))

    def purge(self, prefix: bytes) -> int:
        """Drop every entry whose key starts with `prefix`; how many."""
        dropped = 0
        cursor = self.txn.cursor()
        while True:
            batch: list[tuple[bytes, bytes]] = []
            if cursor.set_range(prefix):
                for key, value in cursor:
                    if not key.startswith(prefix) or len(batch) >= PURGE_BATCH:
                        break
                    batch.append((key, value))
            if not batch:
                return dropped
            for key, value in batch:
                self.drop(key, value, evicted=False)
            dropped += len(batch)

    # -- eviction ----------------------------------------------------------------------

    def _move_young(self, key: bytes, value: bytes) -> None:
        """CLOCK's second chance: the entry goes to the young end of both orders."""
        fields = list(_ENTRY.unpack(value))
        old, new = fields[6], self.meta.seq
        self.meta.seq += 1
        fields[6] = new
        txn = self.txn
        txn.delete(_ORDER + _b8(old))
        txn.delete(_OWN + key[1:3] + _b8(old))
        txn.put(_ORDER + _b8(new), key)
        txn.put(_OWN + key[1:3] + _b8(new), b"")
        txn.put(key, _ENTRY.pack(*fields))

    def shares(self) -> dict[int, float]:
        """Each joined client's share, by weight, of the bytes the clients hold (the budget, when
        it is full of whole frames; never more than is held, so someone is always at or over)."""
        if self._shares is None:
            q, weights = self.host.cq, {}
            for client in range(MAX_CLIENTS):
                s = self.host.slot(client)
                if q[s + _PID]:
                    weights[client] = max(1, q[s + _WEIGHT])
            held = sum(self.count(c)[1] for c in weights)
            total = sum(weights.values()) or 1
            self._shares = {c: held * w / total for c, w in weights.items()}
        return self._shares

    def _protected(self, client: int) -> bool:
        """Under its share by at least a page: a second chance (whoever is putting)."""
        share = self.shares().get(client)
        return share is not None and self.count(client)[1] + PAGE_SIZE <= share

    def evict_one(self, weighted: bool = True) -> bool:
        """Evict the policy's next victim (see the module docstring); False if nothing is evictable."""
        found = self._victim_lru(weighted) if self.meta.policy == 0 else self._victim_sieve(weighted)
        if found is None:
            return False
        key, value = found
        if self.meta.policy == 1:
            self.meta.hand = _ENTRY.unpack(value)[6] + 1
        self.drop(key, value, evicted=True)
        return True

    def _entry_at(self, cursor: lmdb.Cursor[bytes]) -> tuple[bytes, bytes] | None:
        """The entry an order key points to (a dangling order key is deleted: never happens unless damaged)."""
        key = cursor.value()
        value = self.txn.get(key)
        if value is None or _ENTRY.unpack(value)[6] != int.from_bytes(cursor.key()[1:], "big"):
            cursor.delete()
            return None
        return key, value

    def _passes(self, key: bytes, value: bytes, weighted: bool, walked: int) -> bool:
        """Whether the walk passes over this candidate: referenced (its byte is cleared), or its
        client is under its share, while the walk is short enough."""
        if walked >= HARD_WALK:
            return False
        frame, slot = _ENTRY.unpack(value)[:2]
        refs, r = self.host.refs, frame * 2 + slot
        if frame < self.host.frames and refs[r]:
            refs[r] = 0
            return True
        return weighted and walked < WALK and self._protected(int.from_bytes(key[1:3], "big"))

    def _victim_lru(self, weighted: bool) -> tuple[bytes, bytes] | None:
        cursor, walked = self.txn.cursor(), 0
        while cursor.set_range(_ORDER) and cursor.key()[:1] == _ORDER:
            found = self._entry_at(cursor)
            if found is None:
                continue
            if not self._passes(*found, weighted, walked):
                return found
            walked += 1
            self._move_young(*found)
        return None

    def _victim_sieve(self, weighted: bool) -> tuple[bytes, bytes] | None:
        cursor, walked = self.txn.cursor(), 0
        at = cursor.set_range(_ORDER + _b8(self.meta.hand))
        while True:
            if not (at and cursor.key()[:1] == _ORDER):  # the hand wraps around to the oldest entry
                if not (cursor.set_range(_ORDER) and cursor.key()[:1] == _ORDER):
                    return None
            found = self._entry_at(cursor)
            if found is None:
                at = bool(cursor.key())
                continue
            if not self._passes(*found, weighted, walked):
                return found
            walked += 1
            at = cursor.next()

    def evict_own(self, client: int) -> bool:
        """Evict the client's own oldest ephemeral entry, referenced ones passed over (a bounded
        walk: moved to the young end under lru, passed under sieve); False if it has none."""
        prefix, walked = _OWN + _b2(client), 0
        cursor = self.txn.cursor()
        at = cursor.set_range(prefix)
        while True:
            if not (at and cursor.key().startswith(prefix)):
                if not (cursor.set_range(prefix) and cursor.key().startswith(prefix)):
                    return False
            seq = cursor.key()[3:]
            key = self.txn.get(_ORDER + seq)
            value = self.txn.get(key) if key is not None else None
            if key is None or value is None:
                at = cursor.delete() and bool(cursor.key())
                continue
            if walked < WALK and self._passes(key, value, False, walked):
                walked += 1
                if self.meta.policy == 0:
                    self._move_young(key, value)
                    at = cursor.set_range(prefix)
                else:
                    at = cursor.next()
                continue
            self.drop(key, value, evicted=True)
            return True


HIT, TORN, DAMAGED = 0, 1, 2  # what reading an entry found (see _copy_out)


def _copy_out(host: _Host, frame: int, slot: int, enc: int, length: int, gen: int, out: memoryview) -> int:
    """Copy a slot's page into `out` under its seqlock (decompressing). `gen` is even and was read
    with the entry: the generations only grow, so if the slot still has it after the copy, nobody
    wrote or freed the slot meanwhile (HIT); if not, a writer (another client evicting or replacing
    the entry since this reader's snapshot) got there first (TORN, a race, not damage); DAMAGED if
    the entry or its bytes cannot be right."""
    if frame >= host.frames or slot > 1:
        return DAMAGED
    gens, i = host.gens, frame * 2 + slot
    if enc == RAW:
        if slot or length != PAGE_SIZE:
            return DAMAGED
        offset = frame * PAGE_SIZE
        out[:] = host.data[offset : offset + PAGE_SIZE]
        return HIT if gens[i] == gen else TORN
    if enc != LZ4 or not 0 < length <= HALF:
        return DAMAGED
    offset = frame * PAGE_SIZE + (0 if slot == 0 else PAGE_SIZE - length)
    blob = bytes(host.data[offset : offset + length])
    if gens[i] != gen:
        return TORN
    return HIT if decompress_page(blob, out) else DAMAGED


def _read_entry(host: _Host, value: bytes, out: memoryview) -> int:
    """An entry's page into `out`, verified against its digest (a copy that held still but does
    not match is DAMAGED); a hit marks it referenced."""
    frame, slot, enc, length, gen, digest = _ENTRY.unpack(value)[:6]
    found = _copy_out(host, frame, slot, enc, length, gen, out)
    if found == HIT:
        if _hash(out) != digest:
            return DAMAGED
        host.refs[frame * 2 + slot] = 1
    return found


@dataclass(slots=True)
class _PutWrite:
    """A put that needs a write: its position in the batch, index key, page, lz4 blob (None:
    stored raw) and digest."""

    position: int
    ikey: bytes
    page: memoryview
    blob: bytes | None
    digest: int


class HostStore:
    """One client (a mount) of a host pool after join(), or an admin handle from attach().

    Every method is synchronous and short; none waits on another process for longer than
    a bounded lock wait. Do not fork after join().
    """

    def __init__(self, name: str, directory: str = "/dev/shm", node_timeout: float = 5.0,
                 lock_wait: float = 0.05) -> None:
        # (A mount takes the default lock_wait; the tests lengthen or shorten it to stage contention.)
        self.name = name
        self.directory = os.fspath(directory)
        self.path = host_directory(name, self.directory)
        self.who = f"cc_host={name}"
        self.node_timeout = node_timeout
        self.lock_wait = lock_wait
        self.client = -1
        self._host: _Host | None = None
        self._pools: dict[int, bool] = {}  # pool id -> persistent
        self._next_pool = 1
        self._backoff_until = 0.0
        self._scratch = memoryview(bytearray(PAGE_SIZE))
        self.cap_hits = self.torn_reads = self.verify_failures = self.lock_timeouts = 0
        # Invalidations (and exclusive removals) the busy write lock kept from landing: applied
        # first in this client's next write transaction, and never served meanwhile.
        self._pending_pages: dict[bytes, bytes | None] = {}  # index key -> the value to remove (None: any)
        self._pending_prefixes: set[bytes] = set()  # files and pools
        self._pending_all = False

    # -- joining and leaving ---------------------------------------------------------------

    def join(self, label: str, budget: int, policy: str = "lru", weight: int = 1, cap: int | None = None) -> int:
        """Become a client (creating the host with `budget` bytes if it is new; else its budget
        stands); the client id."""
        if self.client >= 0:
            return self.client
        if policy not in POLICIES:
            raise HostError(f"{self.who}: unknown policy {policy!r} (lru or sieve)")
        self._check_weight(weight)
        if budget < PAGE_SIZE:
            raise HostError(f"{self.who}: a host needs a budget of at least {PAGE_SIZE} bytes, not {budget}")
        if cap is not None and cap < PAGE_SIZE:
            raise HostError(f"{self.who}: cc_cap={cap} is below one page ({PAGE_SIZE} bytes)")
        init_fd = self._enter(create=True)
        try:
            client = self._join(label, budget, policy, weight, cap)
        except BaseException:
            os.close(init_fd)
            self._remove_if_unused()  # a host this failed join made is not left behind
            raise
        os.close(init_fd)
        self.client = client
        return client

    def _join(self, label: str, budget: int, policy: str, weight: int, cap: int | None) -> int:
        """join() with the init lock held: open the files, claim a slot, check and purge it."""
        host = self._host = _Host(self.path, self.who, create=True, missing=self._no_host())
        try:
            client = self._claim(host)
            try:
                done, _ = self._write(INIT_WAIT, lambda w: self._setup(w, client, budget, policy, cap))
                if not done:
                    raise HostError(f"{self.who}: the host's write lock stayed busy for {INIT_WAIT} s "
                                    "(a stopped client?); try again")
            except BaseException:
                _ofd_lock(host.cfd, LOCK_OFFSET + client, False)
                raise
            self._fill_slot(host, client, label, weight, cap)
        except BaseException:
            self._host = None
            host.close()
            raise
        return client

    @classmethod
    def attach(cls, name: str, directory: str = "/dev/shm", lock_wait: float = 1.0) -> HostStore:
        """An admin handle on an existing host (tmemctl, the donor): no client slot."""
        store = cls(name, directory, lock_wait=lock_wait)
        init_fd = store._enter(create=False)
        try:
            host = _Host(store.path, store.who, create=False, missing=store._no_host())
            with host.env.begin() as txn:
                complete = txn.get(_META_KEY) is not None
            if not complete:
                host.close()
                raise store._no_host()
            store._host = host
        finally:
            os.close(init_fd)
        return store

    def leave(self) -> None:
        """Drop all this client's entries, free its slot, close the files (idempotent). If the
        write lock stays busy, the entries are left for reclaim_dead() in another client."""
        host = self._host
        if host is None:
            return
        if self.client >= 0:
            client = self.client
            done, _ = self._write(max(self.lock_wait, CLEAR_WAIT), lambda w: self._purge_client(w, client))
            if done:
                host.cq[host.slot(client) + _PID] = 0
            _ofd_lock(host.cfd, LOCK_OFFSET + client, False)
            self.client = -1
        self._host = None
        host.close()
        self._pools.clear()
        self._clear_pending()
        self._remove_if_unused()

    def close(self) -> None:
        """Close an admin handle (a client leaves)."""
        self.leave()

    def _no_host(self) -> HostError:
        return NoSuchHost(f"no host pool named {self.name} in {self.directory}")

    def _enter(self, create: bool) -> int:
        """The host directory checked (made if `create`), and its init lock held: the descriptor."""
        for _attempt in range(3):
            if create:
                self._make_directory()
            fd = self._lock_init(self._checked_directory(), create)
            if os.fstat(fd).st_nlink:
                return fd
            os.close(fd)  # the last client out removed the host meanwhile: make it afresh
        raise HostError(f"{self.who}: the host keeps being removed while joining")

    def _make_directory(self) -> None:
        try:
            os.mkdir(self.path, 0o700)
        except FileExistsError:
            pass
        except PermissionError:
            raise HostError(f"{self.who}: permission denied: cannot create {self.path}") from None

    def _checked_directory(self) -> os.stat_result:
        """The host directory's status, once it is known to be a directory (made 0700 if ours)."""
        try:
            st = os.lstat(self.path)
        except FileNotFoundError:
            raise self._no_host() from None
        except PermissionError:
            raise HostError(f"{self.who}: permission denied: {self.path}") from None
        if not stat.S_ISDIR(st.st_mode):
            raise HostError(f"{self.who}: {self.path} is not a directory")
        if st.st_uid == os.geteuid() and stat.S_IMODE(st.st_mode) != 0o700:
            os.chmod(self.path, 0o700)
        return st

    def _lock_init(self, st: os.stat_result, create: bool) -> int:
        """The init lock of the directory `st` describes, opened (made if `create`) and held."""
        flags = os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC | (os.O_CREAT if create else 0)
        try:
            fd = os.open(os.path.join(self.path, "init.lock"), flags, 0o600)
        except PermissionError:
            raise HostError(f"{self.who}: permission denied: {self.path} is owned by uid {st.st_uid}") from None
        except FileNotFoundError:
            raise self._no_host() from None
        if not _flock_wait(fd, INIT_WAIT):
            os.close(fd)
            raise HostError(f"{self.who}: another client has been creating the host for {INIT_WAIT} s")
        return fd

    def _claim(self, host: _Host) -> int:
        for client in range(MAX_CLIENTS):
            if _ofd_lock(host.cfd, LOCK_OFFSET + client, True):
                return client
        raise HostError(f"{self.who}: all {MAX_CLIENTS} client slots are taken by live clients")

    def _setup(self, w: _Write, client: int, budget: int, policy: str, cap: int | None) -> None:
        """The join transaction: make the host if new, check this client against it, and purge
        what a dead client left in the slot."""
        meta, frames = w.meta, w.host.frames
        if w.txn.get(_META_KEY) is None:
            if budget > frames * PAGE_SIZE:
                raise HostError(f"{self.who}: a budget of {budget} bytes exceeds this machine's memory "
                                f"({frames * PAGE_SIZE} bytes)")
            meta.budget, meta.policy = budget // PAGE_SIZE, POLICIES.index(policy)
        elif POLICIES[meta.policy] != policy:
            raise HostError(f"{self.who}: the host evicts by {POLICIES[meta.policy]}; this mount asks for {policy}")
        self._check_cap(cap, meta.budget)
        meta.reclaimed += self._purge_client(w, client)

    def _fill_slot(self, host: _Host, client: int, label: str, weight: int, cap: int | None) -> None:
        q, s = host.cq, host.slot(client)
        q[s + _PID] = 0  # hidden while it is rewritten
        raw = label.encode("utf-8")[:LABEL_MAX].decode("utf-8", "ignore").encode("utf-8")
        offset = HEADER + client * SLOT_BYTES + LABEL_OFFSET
        host.label_bytes[offset : offset + LABEL_MAX] = raw.ljust(LABEL_MAX, b"\0")
        q[s + _LABEL_LEN] = len(raw)
        q[s + _WEIGHT], q[s + _CAP] = weight, cap or 0
        q[s + _PUTS] = q[s + _GETS] = q[s + _HITS] = q[s + _LOCKT] = 0
        q[s + _TIMEOUT] = int(self.node_timeout * 1e9)
        q[s + _BEAT] = time.time_ns()
        q[s + _PID] = os.getpid()

    def _remove_if_unused(self) -> None:
        """The last client out removes the host (under the init lock, so a joiner waits, then makes it afresh)."""
        try:
            fd = os.open(os.path.join(self.path, "init.lock"), os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC)
        except (FileNotFoundError, PermissionError):
            return
        try:
            if _flock_wait(fd, INIT_WAIT) and not _slots_in_use(os.path.join(self.path, "clients")):
                shutil.rmtree(self.path, ignore_errors=True)
        finally:
            os.close(fd)

    # -- the write lock ----------------------------------------------------------------------

    def _lock(self, host: _Host, wait: float | None) -> bool:
        """The write lock within `wait` s (not waited for at all shortly after a timeout: a
        stopped holder would otherwise cost every operation the full wait); `wait` None: one
        try, and a busy lock is neither counted nor backed off from (a stats read's flush)."""
        if wait is None:
            try:
                fcntl.flock(host.wfd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return True
            except BlockingIOError:
                return False
        if time.monotonic() < self._backoff_until:
            wait = 0.0
        if _flock_wait(host.wfd, wait):
            return True
        self._backoff_until = time.monotonic() + LOCK_BACKOFF
        self.lock_timeouts += 1
        if self.client >= 0:
            host.cq[host.slot(self.client) + _LOCKT] += 1
        return False

    def _write(self, wait: float | None, work: Callable[[_Write], T]) -> tuple[bool, T | None]:
        """Run `work` in a write transaction under the write lock, after this client's pending
        invalidations; frames it freed are punched before the lock goes. (False, None) if the
        lock stayed busy."""
        host = self._opened()
        if not self._lock(host, wait):
            return False, None
        try:
            with host.env.begin(write=True) as txn:
                w = _Write(host, txn)
                self._apply_asked_takes(w)
                self._apply_pending(w)
                result = work(w)
                w.finish()
            self._clear_pending()
            _punch(host.sfd, w.freed)
            return True, result
        finally:
            fcntl.flock(host.wfd, fcntl.LOCK_UN)

    def _apply_asked_takes(self, w: _Write) -> None:
        """Take-backs a donor could only ask for (the write lock was held: see take_back), first
        in whatever this writer does: the budget drops, the memory over it goes."""
        asked = w.host.cq[TAKES_ASKED] - w.meta.takes_applied
        if asked > 0:
            w.meta.takes_applied += asked
            target, lowered = self._lower_budget(w, asked)
            while self._evict_down(w, target):
                pass
            self._settle_take_back(w, target, lowered)

    def _apply_pending(self, w: _Write) -> None:
        if self._pending_all:
            w.purge(_INDEX + _b2(self.client))
            return
        for prefix in self._pending_prefixes:
            w.purge(prefix)
        for key, expected in self._pending_pages.items():
            value = w.txn.get(key)
            if value is not None and expected in (None, value):
                w.drop(key, value, evicted=False)

    def _clear_pending(self) -> None:
        self._pending_pages.clear()
        self._pending_prefixes.clear()
        self._pending_all = False

    def _pending(self) -> bool:
        return self._pending_all or bool(self._pending_pages) or bool(self._pending_prefixes)

    def _defer(self, key: bytes, expected: bytes | None) -> None:
        """Remember a removal the lock kept from landing (too many: every page of ours is suspect)."""
        self._pending_pages[key] = expected
        if len(self._pending_pages) > PENDING_MAX:
            self._pending_pages.clear()
            self._pending_prefixes.clear()
            self._pending_all = True

    # -- pools and pages -------------------------------------------------------------------------

    def new_pool(self, persistent: bool = False) -> int:
        """A private pool of this client (ids are never reused by this client)."""
        self._joined()
        pool = self._next_pool
        self._next_pool += 1
        self._pools[pool] = persistent
        return pool

    def destroy_pool(self, pool: int) -> None:
        self._pool(pool)
        prefix = _INDEX + _b2(self.client) + _b4(pool)
        del self._pools[pool]
        done, _ = self._write(self.lock_wait, lambda w: w.purge(prefix))
        if not done:
            self._pending_prefixes.add(prefix)

    def put(self, pool: int, key: bytes, index: int, page: memoryview, compress: bool = False,
            dedup: bool = False) -> bool:
        """Store a page (lz4 into half a frame if `compress` and it fits; shared with an identical
        page if `dedup`); False if refused (no room, cap, busy lock)."""
        return self.put_many(pool, [(key, index, page)], compress, dedup)[0]

    def put_many(self, pool: int, pages: list[PagePut], compress: bool = False,
                 dedup: bool = False) -> list[bool]:
        """put() for several pages of one pool in one write transaction: one lock and one commit
        for the pages a fill or a reclaim step evicts together, not one each. Whether each was
        stored; a transaction the store refuses (full, no space) stores none of them."""
        host = self._joined()
        persistent = self._pool(pool)
        stored = [False] * len(pages)
        s = host.slot(self.client)
        host.cq[s + _BEAT] = time.time_ns()
        writes = self._puts_to_write(host, pool, pages, compress, stored)
        if writes:
            self._write_puts(writes, persistent, dedup, stored)
        host.cq[s + _PUTS] += sum(stored)
        return stored

    def _puts_to_write(self, host: _Host, pool: int, pages: list[PagePut], compress: bool,
                       stored: list[bool]) -> list[_PutWrite]:
        """What each put must write; a page stored as it is already needs no write (marked stored).
        One read transaction looks at them all."""
        writes = []
        with host.env.begin() as txn:
            pending = self._pending()
            for n, (key, index, page) in enumerate(pages):
                if len(page) != PAGE_SIZE:
                    raise ValueError(f"pages are {PAGE_SIZE} bytes, not {len(page)}")
                ikey = self._key(pool, key, index)
                digest = _hash(page)
                if not pending and self._unchanged(host, txn.get(ikey), digest):
                    stored[n] = True
                    continue
                blob = None
                if compress:
                    packed = lz4.block.compress(page, store_size=False)
                    blob = packed if len(packed) <= HALF else None
                writes.append(_PutWrite(n, ikey, page, blob, digest))
        return writes

    def _write_puts(self, writes: list[_PutWrite], persistent: bool, dedup: bool, stored: list[bool]) -> None:
        """`writes` in one write transaction, those stored marked in `stored`. If it does not
        land (the lock busy, the store full, no space) none is stored, and the older versions
        they replace are never served again (dropped first in the next write)."""
        kept = None
        try:
            _done, kept = self._write(self.lock_wait, lambda w: [
                self._put(w, p.ikey, p.page, p.blob, p.digest, persistent, dedup) for p in writes])
        except lmdb.MapFullError:
            pass
        except OSError as exc:
            if exc.errno != errno.ENOSPC:
                raise
        if kept is None:
            for p in writes:
                self._defer(p.ikey, None)
            return
        for p, ok in zip(writes, kept, strict=True):
            stored[p.position] = ok

    def _unchanged(self, host: _Host, value: bytes | None, digest: int) -> bool:
        """The same page is stored under this key (its entry `value`) already (a page that came
        from the pool often goes back): marked referenced, no write transaction."""
        return value is not None and _ENTRY.unpack(value)[5] == digest and \
            _read_entry(host, value, self._scratch) == HIT

    def _put(self, w: _Write, ikey: bytes, page: memoryview, blob: bytes | None, digest: int,
             persistent: bool, dedup: bool) -> bool:
        txn, meta, client = w.txn, w.meta, self.client
        old = txn.get(ikey)
        if old is not None:
            w.drop(ikey, old, evicted=False)  # a put that fails leaves no older version either
        ckey = _CONTENT + _b8(digest)
        room = self._room_for_put(w, ckey, page, blob, dedup)
        if room is None:
            return False
        copy, index_it, enc, charge = room
        if copy is not None:
            where = self._share_copy(w, ckey, copy, persistent)
        else:
            stored = self._store_copy(w, ckey, page, blob, enc, persistent, index_it)
            if stored is None:
                return False
            where = stored
        seq = 0
        if not persistent:
            seq = meta.seq
            meta.seq += 1
            txn.put(_ORDER + _b8(seq), ikey)
            txn.put(_OWN + _b2(client) + _b8(seq), b"")
        shared = copy is not None or index_it
        txn.put(ikey, _ENTRY.pack(*where, digest, seq, shared))
        counts = w.count(client)
        counts[0] += 1
        counts[1] += charge
        counts[2] += persistent
        meta.persistent += persistent
        return True

    def _room_for_put(self, w: _Write, ckey: bytes, page: memoryview, blob: bytes | None,
                      dedup: bool) -> tuple[tuple[int, ...] | None, bool, int, int] | None:
        """Room made within the client's cap for a put: (the stored copy it shares or None,
        whether a new copy is to be indexed, its encoding, what it is charged); None if refused."""
        while True:
            copy, index_it = self._copy_of(w, ckey, page) if dedup else (None, False)
            enc = (LZ4 if blob is not None else RAW) if copy is None else copy[2]
            charge = PAGE_SIZE if enc == RAW else HALF
            if copy is None and not self._room_possible(w, enc):
                return None
            evictions = w.meta.evictions
            if not self._within_cap(w, charge):
                self.cap_hits += 1
                return None
            if copy is None or w.meta.evictions == evictions:
                return copy, index_it, enc, charge
            # else the cap's evictions may have dropped that very copy: look again

    @staticmethod
    def _share_copy(w: _Write, ckey: bytes, copy: tuple[int, ...], persistent: bool) -> tuple[int, ...]:
        """One more reference to a stored copy (pinned if it is the first persistent one): where it is."""
        frame, slot, enc, length, gen, refs, prefs = copy
        if persistent and prefs == 0:
            w.pin(frame, slot, True)
        w.txn.put(ckey, _CONTENT_VALUE.pack(frame, slot, enc, length, gen, refs + 1, prefs + persistent))
        w.meta.dedup_pages += 1
        return frame, slot, enc, length, gen

    def _store_copy(self, w: _Write, ckey: bytes, page: memoryview, blob: bytes | None, enc: int,
                    persistent: bool, index_it: bool) -> tuple[int, ...] | None:
        """A new copy of the page (`blob` if compressed) written to a free slot: where it is, or
        None if no slot can be had."""
        place = self._place(w, enc)
        if place is None:
            return None
        frame, slot = place
        data = blob if blob is not None else page
        gen, length = w.write_slot(frame, slot, data), len(data)
        w.meta.stored += 1
        if persistent:
            w.pin(frame, slot, True)
        if index_it:
            w.txn.put(ckey, _CONTENT_VALUE.pack(frame, slot, enc, length, gen, 1, int(persistent)))
        return frame, slot, enc, length, gen

    def _copy_of(self, w: _Write, ckey: bytes, page: memoryview) -> tuple[tuple[int, ...] | None, bool]:
        """(the stored copy of exactly this page, or None; whether a new copy is to be indexed).
        Same digest, other bytes: a collision, stored apart and not indexed."""
        raw = w.txn.get(ckey)
        if raw is None:
            return None, True
        copy = _CONTENT_VALUE.unpack(raw)
        frame, slot, enc, length, gen = copy[:5]
        if _copy_out(w.host, frame, slot, enc, length, gen, self._scratch) == HIT and self._scratch == page:
            return copy, False
        return None, False

    @staticmethod
    def _room_possible(w: _Write, enc: int) -> bool:
        """Whether the page can fit at all: a frame free, a half free for a compressed page, or a
        frame without persistent content to evict."""
        meta = w.meta
        if meta.used < meta.budget or meta.pinned < meta.budget:
            return True
        cursor = w.txn.cursor()
        return enc == LZ4 and cursor.set_range(_HALF) and cursor.key()[:1] == _HALF

    def _within_cap(self, w: _Write, charge: int) -> bool:
        """Make room under this client's cap from its own oldest ephemeral entries."""
        cap = w.host.cq[w.host.slot(self.client) + _CAP]
        counts = w.count(self.client)
        while cap and counts[1] + charge > cap:
            if not w.evict_own(self.client):
                return False
        return True

    def _place(self, w: _Write, enc: int) -> tuple[int, int] | None:
        """A slot for a new copy, evicting (weighted walk) until there is one."""
        while True:
            if enc == LZ4:
                place = w.take_half()
            else:
                frame = w.take_whole()
                place = None if frame is None else (frame, 0)
            if place is not None:
                return place
            if not w.evict_one():
                return None

    def get(self, pool: int, key: bytes, index: int, out: memoryview, keep: bool = False) -> bool:
        """One page (see get_many: exclusive unless `keep`, and what a busy write lock does)."""
        return self.get_many(pool, key, index, [out], keep)[0]

    def get_many(self, pool: int, key: bytes, first: int, outs: list[memoryview], keep: bool = False) -> list[bool]:
        """Pages first, first+1, ... in one read transaction, never locking. Without `keep` a hit
        is removed (exclusive get): the removal is deferred to this client's next write (the put
        of the page the hit evicts from the page cache, mostly), at most REMOVE_BATCH of them, and
        the page is not served again meanwhile: a hit costs no write transaction of its own."""
        host = self._joined()
        self._pool(pool)
        prefix = self._prefix(pool, key)
        found = [False] * len(outs)
        remove: list[tuple[bytes, bytes]] = []  # hits of an exclusive get, and damaged entries
        pending = self._pending()
        if not (pending and (self._pending_all or prefix in self._pending_prefixes)):
            with host.env.begin() as txn:
                for i, out in enumerate(outs):
                    ikey = prefix + _b8(first + i)
                    value = txn.get(ikey)
                    if value is None or (pending and ikey in self._pending_pages):
                        continue
                    got = _read_entry(host, value, out)
                    if got == HIT:
                        found[i] = True
                        if not keep:
                            remove.append((ikey, value))
                        continue
                    if got == TORN:
                        self.torn_reads += 1
                    else:
                        self.verify_failures += 1
                    remove.append((ikey, value))
        s = host.slot(self.client)
        host.cq[s + _GETS] += len(outs)
        host.cq[s + _HITS] += sum(found)
        for ikey, value in remove:
            self._defer(ikey, value)
        if len(self._pending_pages) >= REMOVE_BATCH:
            self.flush_pending()
        return found

    def flush_pending(self, quiet: bool = False) -> None:
        """Apply the removals this client deferred (see get_many) in one write transaction
        (`quiet`: only if the lock is free now)."""
        if self._pending():
            self._write(None if quiet else self.lock_wait, lambda w: None)

    def invalidate_page(self, pool: int, key: bytes, index: int) -> None:
        self._pool(pool)
        ikey = self._key(pool, key, index)

        def work(w: _Write) -> None:
            value = w.txn.get(ikey)
            if value is not None:
                w.drop(ikey, value, evicted=False)

        if not self._write(self.lock_wait, work)[0]:
            self._defer(ikey, None)

    def invalidate_inode(self, pool: int, key: bytes) -> None:
        self._pool(pool)
        prefix = self._prefix(pool, key)
        if not self._write(self.lock_wait, lambda w: w.purge(prefix))[0]:
            self._pending_prefixes.add(prefix)

    def _key(self, pool: int, key: bytes, index: int) -> bytes:
        return self._prefix(pool, key) + _b8(index)

    def _prefix(self, pool: int, key: bytes) -> bytes:
        if len(key) > MAX_KEY:
            raise ValueError(f"file keys are at most {MAX_KEY} bytes")
        return _INDEX + _b2(self.client) + _b4(pool) + _b2(len(key)) + key

    def _purge_client(self, w: _Write, client: int) -> int:
        dropped = w.purge(_INDEX + _b2(client))
        w.counts[client] = [0, 0, 0, 0]
        return dropped

    # -- weights, caps, dead clients -----------------------------------------------------------

    # set_weight and set_cap change a live client's share (the control file's `set cc_weight=`, `set cc_cap=`):
    # the shares and caps follow at once, without a rejoin that would drop the client's pages.
    def set_weight(self, weight: int) -> None:
        """A new weight; the shares follow from the next eviction on."""
        host = self._joined()
        self._check_weight(weight)
        host.cq[host.slot(self.client) + _WEIGHT] = weight

    def set_cap(self, cap: int | None) -> None:
        """A new cap (None: none); it is enforced from this client's next put on."""
        host = self._joined()
        if cap is not None and cap < PAGE_SIZE:
            raise HostError(f"{self.who}: cc_cap={cap} is below one page ({PAGE_SIZE} bytes)")
        with host.env.begin() as txn:
            self._check_cap(cap, _Meta(txn.get(_META_KEY)).budget)
        host.cq[host.slot(self.client) + _CAP] = cap or 0

    def _check_weight(self, weight: int) -> None:
        if not isinstance(weight, int) or weight < 1:
            raise HostError(f"{self.who}: cc_weight={weight}: a weight is a whole number of at least 1")

    def _check_cap(self, cap: int | None, budget_frames: int) -> None:
        if cap is not None and cap > budget_frames * PAGE_SIZE:
            raise HostError(f"{self.who}: cc_cap={cap} is larger than the host's budget of "
                            f"{budget_frames * PAGE_SIZE} bytes")

    def reclaim_dead(self) -> int:
        """Remove the entries of clients that died without leaving (slot lock free, pid still
        recorded) and clear their slots; pages reclaimed. Also this client's heartbeat."""
        host = self._opened()
        q = host.cq
        if self.client >= 0:
            q[host.slot(self.client) + _BEAT] = time.time_ns()
        host.env.reader_check()  # frees LMDB reader slots of dead processes
        total = 0
        for client in range(MAX_CLIENTS):
            s = host.slot(client)
            if client == self.client or not q[s + _PID] or not _ofd_lock(host.cfd, LOCK_OFFSET + client, True):
                continue
            try:  # the slot is ours for now: nobody can join it meanwhile
                if not q[s + _PID]:
                    continue
                done, dropped = self._write(self.lock_wait, functools.partial(self._reclaim, client=client))
                if not done:
                    break
                q[s + _PID] = 0
                total += dropped or 0
            finally:
                _ofd_lock(host.cfd, LOCK_OFFSET + client, False)
        return total

    def _reclaim(self, w: _Write, client: int) -> int:
        dropped = self._purge_client(w, client)
        w.meta.reclaimed += dropped
        return dropped

    # -- the donor and the admin ------------------------------------------------------------

    def take_back(self, nbytes: int) -> int:
        """Lower the budget by `nbytes` (whole frames) now, evicting ephemeral entries (the
        policy's plain order) until the frames in use fit, and punching them; bytes actually
        taken (persistent pages are never dropped, so it takes what it can). Never waits on a
        client for longer than DONOR_WAIT: if the write lock stays held, the request is left for
        the next writer (_ask_take_back) and the bytes asked are returned."""
        frames = self._frames_of(nbytes)
        done, lowered = self._write(min(self.lock_wait, DONOR_WAIT), lambda w: self._lower_budget(w, frames))
        if not done or lowered is None:
            return self._ask_take_back(frames)
        target, asked = lowered
        while True:  # TAKE_BATCH evictions a transaction: clients' puts get the lock in between
            done, over = self._write(self.lock_wait, lambda w: self._evict_down(w, target))
            if not done or not over:
                break
        done, taken = self._write(self.lock_wait, lambda w: self._settle_take_back(w, target, asked))
        return (taken if done and taken is not None else asked) * PAGE_SIZE

    def _ask_take_back(self, frames: int) -> int:
        """The write lock stays held (a writer stopped inside its transaction): leave the request
        where every writer looks first, so the budget drops before anything else is written, and
        the memory goes with the next write (the stopped one's, or any other once it dies). The
        bytes asked; 0 only if another donor holds the donors' lock as long."""
        host = self._opened()
        if not _flock_wait(host.dfd, INIT_WAIT):
            return 0
        try:
            host.cq[TAKES_ASKED] += frames
        finally:
            fcntl.flock(host.dfd, fcntl.LOCK_UN)
        return frames * PAGE_SIZE

    @staticmethod
    def _lower_budget(w: _Write, frames: int) -> tuple[int, int]:
        """The budget at its new line at once (puts from now on fit under it): (the line, the
        frames it took)."""
        meta = w.meta
        target = max(0, meta.budget - frames)
        asked = meta.budget - target
        meta.budget, meta.taken = target, meta.taken + asked
        return target, asked

    @staticmethod
    def _evict_down(w: _Write, target: int) -> bool:
        """Up to TAKE_BATCH evictions towards `target` frames in use; whether more are needed
        and possible (False once there, or when only persistent pages are left)."""
        meta = w.meta
        for _ in range(TAKE_BATCH):
            if meta.used <= target or not w.evict_one(weighted=False):
                return False
        return meta.used > target

    @staticmethod
    def _settle_take_back(w: _Write, target: int, asked: int) -> int:
        """What persistent pages keep over the line goes back into the budget at once; the
        frames really taken, counted."""
        meta = w.meta
        kept = min(asked, max(0, meta.used - target))
        meta.budget += kept
        meta.taken -= kept
        meta.take_backs += 1
        meta.taken_back_bytes += (asked - kept) * PAGE_SIZE
        return asked - kept

    def give_back(self, nbytes: int) -> int:
        """Raise the budget by at most what was taken back; bytes given."""
        frames = self._frames_of(nbytes)

        def work(w: _Write) -> int:
            meta = w.meta
            given = min(frames, meta.taken, w.host.frames - meta.budget)
            meta.budget += given
            meta.taken -= given
            meta.give_backs += 1
            return given * PAGE_SIZE

        done, given = self._write(self.lock_wait, work)
        if not done:
            raise HostError(f"{self.who}: the host's write lock stayed busy; nothing given back")
        return given or 0

    def set_budget(self, nbytes: int) -> None:
        """tmemctl's "set": the new budget (whole frames); evicts down at once if lower
        (persistent pages stay, even above it)."""
        host = self._opened()
        frames = nbytes // PAGE_SIZE
        if not 1 <= frames <= host.frames:
            raise HostError(f"{self.who}: a budget is between {PAGE_SIZE} and {host.frames * PAGE_SIZE} "
                            f"bytes, not {nbytes}")

        def work(w: _Write) -> None:
            w.meta.budget = frames
            while w.meta.used > frames and w.evict_one(weighted=False):
                pass

        if not self._write(self.lock_wait, work)[0]:
            raise HostError(f"{self.who}: the host's write lock stayed busy; the budget is unchanged")

    @staticmethod
    def _frames_of(nbytes: int) -> int:
        if nbytes < 0:
            raise ValueError(f"a size is not negative: {nbytes}")
        return -(-nbytes // PAGE_SIZE)

    # -- state ---------------------------------------------------------------------------------

    def clients(self) -> list[ClientInfo]:
        host = self._opened()
        q, out = host.cq, []
        with host.env.begin() as txn:
            for client in range(MAX_CLIENTS):
                s = host.slot(client)
                pid = q[s + _PID]
                if not pid:
                    continue
                raw = txn.get(_COUNTS + _b2(client))
                pages, nbytes, persistent, evictions = _COUNTS_VALUE.unpack(raw) if raw else (0, 0, 0, 0)
                offset = HEADER + client * SLOT_BYTES + LABEL_OFFSET
                label = bytes(host.label_bytes[offset : offset + min(q[s + _LABEL_LEN], LABEL_MAX)])
                out.append(ClientInfo(
                    client=client, pid=pid, label=label.decode("utf-8", "replace"), alive=self._alive(host, client),
                    weight=q[s + _WEIGHT], cap=q[s + _CAP] or None, stored_pages=pages, stored_bytes=nbytes,
                    persistent_pages=persistent, puts=q[s + _PUTS], gets=q[s + _GETS], hits=q[s + _HITS],
                    evictions=evictions))
        return out

    def _alive(self, host: _Host, client: int) -> bool:
        """Its process holds the slot and has beaten within its node_timeout."""
        if client == self.client:
            return True
        s = host.slot(client)
        fresh = time.time_ns() - host.cq[s + _BEAT] <= host.cq[s + _TIMEOUT]
        return fresh and not _ofd_free(host.cfd, LOCK_OFFSET + client)

    def client_stats(self) -> dict[str, int]:
        host = self._joined()
        self.flush_pending(quiet=True)  # counters as if every exclusive get's removal had landed
        q, s = host.cq, host.slot(self.client)
        with host.env.begin() as txn:
            raw = txn.get(_COUNTS + _b2(self.client))
        pages, nbytes, persistent, evictions = _COUNTS_VALUE.unpack(raw) if raw else (0, 0, 0, 0)
        return {
            "stored_pages": pages, "stored_bytes": nbytes, "persistent_pages": persistent,
            "puts": q[s + _PUTS], "gets": q[s + _GETS], "hits": q[s + _HITS], "evictions": evictions,
            "cap_hits": self.cap_hits, "torn_reads": self.torn_reads, "verify_failures": self.verify_failures,
            "lock_timeouts": self.lock_timeouts, "weight": q[s + _WEIGHT], "cap": q[s + _CAP],
        }

    def policy(self) -> str:
        """The host's eviction policy (its first client's)."""
        with self._opened().env.begin() as txn:
            return POLICIES[_Meta(txn.get(_META_KEY)).policy]

    def host_stats(self) -> dict[str, int]:
        host = self._opened()
        if self.client >= 0:
            self.flush_pending(quiet=True)
        with host.env.begin() as txn:
            meta = _Meta(txn.get(_META_KEY))
        q, joined = host.cq, [c for c in range(MAX_CLIENTS) if host.cq[host.slot(c) + _PID]]
        lock_timeouts = sum(q[host.slot(c) + _LOCKT] for c in joined) + (self.lock_timeouts if self.client < 0 else 0)
        return {
            "budget_bytes": meta.budget * PAGE_SIZE, "used_bytes": meta.used * PAGE_SIZE,
            "stored_pages": meta.stored, "persistent_pages": meta.persistent,
            "clients": sum(self._alive(host, c) for c in joined), "evictions": meta.evictions,
            "dedup_pages": meta.dedup_pages, "buddy_frames": meta.buddy_frames, "take_backs": meta.take_backs,
            "taken_back_bytes": meta.taken_back_bytes, "give_backs": meta.give_backs,
            "reclaimed_pages": meta.reclaimed, "lock_timeouts": lock_timeouts,
        }

    # -- checks ------------------------------------------------------------------------------------

    def _opened(self) -> _Host:
        if self._host is None:
            raise HostError(f"{self.who}: not open (join or attach first; unusable after leave or close)")
        return self._host

    def _joined(self) -> _Host:
        host = self._opened()
        if self.client < 0:
            raise HostError(f"{self.who}: an admin handle has no pages (join first)")
        return host

    def _pool(self, pool: int) -> bool:
        """Whether this client's pool is persistent; ValueError if it has no such pool."""
        self._joined()
        try:
            return self._pools[pool]
        except KeyError:
            raise ValueError(f"no pool {pool} in this client") from None
