"""The `dedup` backend: one stored copy per distinct page content, as Xen tmem did.

Copies are indexed by the hash of their xxh3_128 digest, but a copy is shared
only after comparing the bytes: a hash collision costs a second copy (counted
in `hash_collisions`), never another page's data. Copies are reference
counted and freed when their last handle is invalidated, replaced or
evicted. `dd_compress=lz4` also compresses the unique copies.

The layout is compact because the overhead per handle is what decides
whether dedup saves anything: with two handles per copy, 256 bytes per
handle in dicts, tuples and policy nodes would cost 12.5% of the content.
So a handle is a few array entries, not objects:

- a copy is a slot: its bytes object (raw, or an lz4 block when
  dd_compress=lz4) in `_data`, one entry in each per-slot array (handle
  count, hash, next in its hash bucket, first handle, eviction links,
  visited bit, generation) and one bucket head in `_table`, the index by hash;
- a handle is a position in a chunk of CHUNK consecutive pages of one file:
  its slot and the links to the other handles of the same copy, in the
  per-handle arrays; a file is a small record mapping chunk numbers to chunks.

A copy stays one bytes object rather than a frame of an mmap slab: handing
frames back to the kernel (madvise) and faulting them in again cost about 3
us per freed and reused page here, against 0.1 us for malloc, for about 50
bytes of header per copy.

Eviction is by copy (evicting a copy drops, and spills to the next member of
a chain, every ephemeral handle sharing it); a corrupt lz4 copy is dropped
with every handle. lru and sieve run over the copy arrays themselves (two
links and a visited byte a copy), not backends/eviction.py's policies, whose
node object per key (about 100 bytes) is the overhead this layout exists to
avoid; s3fifo and arc are those policies, their nodes charged.

Persistent pools (frontswap's) share copies with the ephemeral ones. A copy
is in the eviction order while an ephemeral handle uses it; evicting a copy
that a persistent handle also uses drops only its ephemeral handles and
keeps the bytes (`persistent_bytes` counts such copies: no eviction frees
them). A put is refused at once when its copy would not fit beside them.
`pool_total_size`, which `cc_size` bounds, counts what this really holds:
each bytes object as allocated, the arrays and lists at their allocated
size, the file records and their dicts as measured, the policy's nodes for
s3fifo and arc. When the last handle goes, every array is released
(pool_total_size reads 0 again).
"""

from __future__ import annotations

import sys
from array import array
from typing import ClassVar

import lz4.block
import xxhash

from backends.base import Backend, OptionSpec, StatValue, check_memory_size
from backends.eviction import Policy, make_policy
from backends.host import HOST_OPTIONS
from backends.page import PAGE_SIZE
from backends.ram import Spill, Spilled, memory_stats, parse_policy

SHIFT = 4
CHUNK = 1 << SHIFT  # pages of one file per handle chunk
MASK = CHUNK - 1
GROWTH = 8  # arrays grow by 1/GROWTH of their length at a time (at least 16 slots or one chunk)
NO = -1  # no handle / no chunk
BYTES_HEADER = sys.getsizeof(b"")
# An int object kept in a file's chunk dict (a chunk number, a chunk id).
INT_BYTES = sys.getsizeof(1 << 59)
EMPTY_DICT = sys.getsizeof({})
# s3fifo and arc keep OrderedDict nodes per key, resident or ghost: 155-215
# bytes measured with tracemalloc above 100 keys, plus a few KiB of tables.
POLICY_NODE = 224
POLICY_TABLES = 4096
NATIVE_POLICIES = ("lru", "sieve")


def parse_compress(text: str) -> str:
    if text not in ("none", "lz4"):
        raise ValueError("must be none or lz4")
    return text


def blob_cost(size: int) -> int:
    """What a bytes object of `size` bytes takes from malloc: header, data and size word, 16-aligned."""
    return (BYTES_HEADER + size + 8 + 15) & ~15


def unpack(blob: bytes) -> bytes | None:
    """A copy's page, or None if its lz4 block is corrupt (raw copies are exactly a page)."""
    if len(blob) == PAGE_SIZE:
        return blob
    try:
        data = lz4.block.decompress(blob, uncompressed_size=PAGE_SIZE)
    except lz4.block.LZ4BlockError:
        return None
    return data if len(data) == PAGE_SIZE else None


class DedupFile:
    """A file of one pool: which chunk holds each run of CHUNK pages."""

    __slots__ = ("chunks", "key", "pool")

    def __init__(self, pool: int, key: bytes) -> None:
        self.pool = pool
        self.key = key
        self.chunks: dict[int, int] = {}  # chunk number (index >> SHIFT) -> chunk id


class DedupPool:
    __slots__ = ("files", "keeps", "persistent", "shared")

    def __init__(self, shared: bool, persistent: bool = False) -> None:
        self.shared = shared
        self.persistent = persistent
        self.keeps = shared or persistent  # gets leave the page (one test on the get path)
        self.files: dict[bytes, DedupFile] = {}


class DedupBackend(Backend):
    name = "dedup"
    summary = "one copy per distinct page (xxh3_128 index, byte-verified), reference counted"
    options: ClassVar[dict[str, OptionSpec]] = {
        "cc_policy": OptionSpec(parse_policy, "which copy to evict: lru (default) or sieve, a few bytes per copy; "
                                "s3fifo or arc, a node per copy (charged, ~200 bytes)"),
        "dd_compress": OptionSpec(parse_compress, "compress unique copies: none (default) or lz4"),
        **HOST_OPTIONS,
    }
    awaits_io: ClassVar[bool] = False
    peeks: ClassVar[bool] = True
    persistent_pools: ClassVar[bool] = True

    @staticmethod
    def digest(page: memoryview) -> bytes:
        """The index hash (tests override it with a weak one to force collisions)."""
        return xxhash.xxh3_128_digest(page)

    def __init__(self, capacity: int, dd_compress: str = "none", cc_policy: str = "lru") -> None:
        super().__init__(capacity)
        self.compress = dd_compress == "lz4"
        self.cc_policy = cc_policy
        self.spill: Spill | None = None  # set by a chain: where evicted pages go
        self._pools: dict[int, DedupPool] = {}
        self._next_pool = 0
        self.stored_pages = self.unique_pages = self.unique_bytes = 0
        self.persistent_pages = 0
        self._reset()
        self.reset_stats()

    def reset_stats(self) -> None:
        self.puts = self.succ_gets = self.failed_gets = self.invalidates = 0
        self.evicted_pages = self.dup_puts_replaced = self.dup_puts_flushed = 0
        self.rejected_puts = self.corrupt_pages = self.duplicate_entry = self.hash_collisions = 0
        self.pool_limit_hit = 0
        self.held_max = self.held

    def _reset(self) -> None:
        """Empty arrays and a fresh policy: at start, and whenever the last handle goes."""
        # Per slot. Slot 0 is the eviction list's sentinel and means "no copy".
        self._data: list[bytes] = [b""]
        self._refs = array("i", [0])  # handles sharing the copy; 0: free slot
        self._hash = array("q", [0])
        self._chain = array("i", [0])  # the next slot in the same bucket of _table
        self._head = array("i", [NO])  # first handle of the copy
        self._prev = array("i", [0])  # lru/sieve order: a circular list through slot 0, newest first
        self._next = array("i", [0])  # ... and, for free slots, the free list
        self._visited = bytearray(1)  # sieve
        self._gen = array("I", [0])  # s3fifo/arc key: a slot reused is a new key
        self._pins = array("i", [0])  # persistent handles sharing the copy
        self._free_slot = 0
        self._hand = 0  # sieve: the next slot to judge (0: the oldest)
        self._table = array("i")  # the first slot of each hash bucket, at least one bucket per copy
        # Per handle: handle h is page h & MASK of chunk h >> SHIFT.
        self._hslot = array("i")  # its copy (0: none)
        self._hprev = array("i")  # the other handles of the same copy
        self._hnext = array("i")
        # Per chunk.
        self._owner: list[DedupFile | None] = []
        self._chunk_no = array("q")
        self._used = array("B")  # live handles
        self._persist = bytearray()  # 1: the chunk's file is in a persistent pool
        self._free_chunk = NO  # free chunks are linked through their first _hnext
        self._policy: Policy[int] | None = None
        if self.cc_policy not in NATIVE_POLICIES:
            self._policy = make_policy(self.cc_policy, max(1, self.capacity // PAGE_SIZE))
        self._sieve = self.cc_policy == "sieve"
        for pool in self._pools.values():
            pool.files = {}
        self._payload = 0  # the copies' bytes objects
        self.persistent_bytes = 0  # ... of them, those a persistent handle uses
        self._meta = 0  # file records, chunk dicts and their ints
        self._base = 0
        self._base = self._measured()
        self._arrays = 0  # growth of the arrays above since the reset

    def _measured(self) -> int:
        """Bytes the arrays and lists hold now (their allocated size), less what they held empty."""
        return sum(map(sys.getsizeof, (
            self._data, self._refs, self._hash, self._chain, self._head, self._prev, self._next, self._visited,
            self._gen, self._pins, self._table, self._hslot, self._hprev, self._hnext, self._owner, self._chunk_no,
            self._used, self._persist,
        ))) - self._base

    @property
    def held(self) -> int:
        """What cc_size bounds: everything listed in the module docstring."""
        return self._payload + self._meta + self._arrays + self._policy_bytes(0)

    def _policy_bytes(self, more: int) -> int:
        """What an s3fifo or arc policy holds with `more` keys added."""
        policy = self._policy
        if policy is None:
            return 0
        nodes = len(policy) + policy.ghosts() + more
        return nodes * POLICY_NODE + POLICY_TABLES if nodes else 0

    # -- the Backend interface --------------------------------------------------------

    async def create_pool(self, uuid: bytes | None) -> int:
        pool = self._next_pool
        self._next_pool += 1
        self._pools[pool] = DedupPool(uuid is not None)
        return pool

    async def create_persistent_pool(self) -> int:
        pool = self._next_pool
        self._next_pool += 1
        self._pools[pool] = DedupPool(False, persistent=True)
        return pool

    async def put_page(self, pool: int, key: bytes, index: int, page: memoryview) -> bool:
        self.puts += 1
        dpool = self._pools.get(pool)
        if dpool is None:
            self.rejected_puts += 1
            return False
        raw = bytes(page)
        hashed = hash(self.digest(page))
        slot = self._lookup(hashed, raw)
        old = self._handle(dpool, key, index)
        if old != NO:
            if self._hslot[old] == slot:  # the same content again: the handle stays as it is
                self._put_again(dpool, slot)
                return True
            self._drop(old)  # put-put-get: the old content never returns
        blob = b"" if slot else self._pack(raw, page)
        fits = blob_cost(len(blob)) + self.persistent_bytes <= self.capacity  # with every evictable copy gone
        handle = self._new_handle(pool, dpool, key, index) if fits else NO
        spilled: list[Spilled] = []
        if handle != NO:
            handle, slot, blob = self._make_room(handle, slot, blob, raw, page, spilled)
        if handle == NO:
            self._refuse_put(old)
        else:
            self._accept_put(dpool, handle, slot, blob, hashed, old)
        for item in spilled:
            if self.spill is not None:
                await self.spill(*item)
        return handle != NO

    def _put_again(self, dpool: DedupPool, slot: int) -> None:
        """A put of the content the handle has already: counted, and refreshed if evictable."""
        self.duplicate_entry += 1
        self.dup_puts_replaced += 1
        if not dpool.persistent:
            self._touch(slot)

    def _make_room(self, handle: int, slot: int, blob: bytes, raw: bytes, page: memoryview,
                   spilled: list[Spilled]) -> tuple[int, int, bytes]:
        """Evict until the new handle (and its copy, unless it shares `slot`) fits: (the handle, or
        NO if it is too big even alone; the slot it shares, 0 if that copy was evicted meanwhile;
        the blob to store then).

        Room is made before the copy enters (so that no policy can pick it) and after the
        arrays it needs have grown (so that what they cost is counted)."""
        chunk = handle >> SHIFT
        self._used[chunk] += 1  # pins the chunk: evictions must not free it
        cost = 0 if slot else self._room_for(blob)
        if self.held + cost > self.capacity:  # the pool is full (see memory_stats)
            self.pool_limit_hit += 1
        while self.held + cost > self.capacity and self.stored_pages > self.persistent_pages:
            self.evicted_pages += self._drop_copy(self._victim(), spilled if self.spill is not None else None)
            if slot and not self._refs[slot]:  # the copy found was evicted: store the page anew
                slot, blob = 0, self._pack(raw, page)
                cost = self._room_for(blob)
        self._used[chunk] -= 1
        if self.held + cost > self.capacity:  # too big even alone
            if not self._used[chunk]:
                self._free_chunk_of(chunk)
            handle = NO
        return handle, slot, blob

    def _refuse_put(self, old: int) -> None:
        """A put that does not fit: refused (the older content it replaced is gone too)."""
        self.rejected_puts += 1
        if old != NO:
            self.dup_puts_flushed += 1
        self._tidy()

    def _accept_put(self, dpool: DedupPool, handle: int, slot: int, blob: bytes, hashed: int, old: int) -> None:
        """Link the new handle to the copy it shares (`slot`), or to a new copy of `blob`."""
        if old != NO:
            self.dup_puts_replaced += 1
        if slot:
            self.duplicate_entry += 1
        else:
            slot = self._store(hashed, blob)
        self._link(handle, slot)
        if not dpool.persistent:
            if self._refs[slot] - self._pins[slot] == 1:  # its first ephemeral handle: it becomes evictable
                self._order_insert(slot)
            else:
                self._touch(slot)
        self.held_max = max(self.held_max, self.held)

    async def get_page(self, pool: int, key: bytes, index: int, out: memoryview) -> bool:
        return self._get(pool, key, index, out, False)

    async def peek_pages(self, pool: int, key: bytes, first: int, outs: list[memoryview]) -> list[bool]:
        get = self._get
        return [get(pool, key, index, out, True) for index, out in enumerate(outs, first)]

    def _get(self, pool: int, key: bytes, index: int, out: memoryview, keep: bool) -> bool:
        """A get; exclusive on a private pool unless `keep` (a peek)."""
        dpool = self._pools.get(pool)
        handle = self._handle(dpool, key, index) if dpool is not None else NO
        if dpool is None or handle == NO:
            self.failed_gets += 1
            return False
        slot = self._hslot[handle]
        blob = self._data[slot]
        data = blob if len(blob) == PAGE_SIZE else unpack(blob)
        if data is None:  # corrupt: no handle of this copy may be served, persistent ones neither
            self.corrupt_pages += 1
            self.failed_gets += 1
            if self._refs[slot] > self._pins[slot]:
                self._order_remove(slot)
            self._drop_copy(slot, None, True)
            self._tidy()
            return False
        out[:] = data
        if not (dpool.keeps or keep):
            self._drop(handle)  # exclusive: the page moves back
            if self._refs[slot] > self._pins[slot]:
                self._touch(slot)
            self._tidy()
        elif not dpool.persistent:
            self._touch(slot)
        self.succ_gets += 1
        return True

    async def invalidate_page(self, pool: int, key: bytes, index: int) -> None:
        dpool = self._pools.get(pool)
        handle = self._handle(dpool, key, index) if dpool is not None else NO
        if handle != NO:
            self.invalidates += 1
            self._drop(handle)
            self._tidy()

    async def invalidate_inode(self, pool: int, key: bytes) -> None:
        dpool = self._pools.get(pool)
        file = dpool.files.get(key) if dpool is not None else None
        if file is not None:
            self.invalidates += self._drop_file(file)
            self._tidy()

    async def destroy_pool(self, pool: int) -> None:
        dpool = self._pools.get(pool)
        if dpool is None:
            return
        for file in list(dpool.files.values()):
            self._drop_file(file)
        del self._pools[pool]
        self._meta -= sys.getsizeof(dpool.files) - EMPTY_DICT
        self._tidy()

    def stats(self) -> dict[str, StatValue]:
        return {
            **memory_stats(self, self.stored_pages, self.held, self.held_max, self.persistent_pages,
                           self.persistent_bytes),
            "unique_pages": self.unique_pages,
            "unique_data_size": self.unique_bytes,
            "duplicate_entry": self.duplicate_entry,
            "hash_collisions": self.hash_collisions,
            "saved_bytes": self.stored_pages * PAGE_SIZE - self.unique_bytes,
        }

    def check_capacity(self, nbytes: int) -> None:
        check_memory_size("cc_size", nbytes)

    async def set_capacity(self, nbytes: int) -> None:
        """Evict copies by the policy (each with every ephemeral handle sharing it, spilled down
        a chain) until what is held fits or no ephemeral handle is left (persistent pages stay,
        and puts are refused until there is room); an s3fifo or arc policy's size follows."""
        self.check_capacity(nbytes)
        self.capacity = nbytes
        if self._policy is not None:
            self._policy.resize(max(1, nbytes // PAGE_SIZE))
        spilled: list[Spilled] = []
        while self.held > nbytes and self.stored_pages > self.persistent_pages:
            self.evicted_pages += self._drop_copy(self._victim(), spilled if self.spill is not None else None)
        self._tidy()
        for item in spilled:
            if self.spill is not None:
                await self.spill(*item)

    # -- copies ------------------------------------------------------------------------

    def _lookup(self, hashed: int, raw: bytes) -> int:
        """The slot holding exactly `raw`, or 0; a stored copy with the same hash only is a collision."""
        table = self._table
        if not table:
            return 0
        hashes, chain = self._hash, self._chain
        slot = table[hashed & (len(table) - 1)]
        collided = False
        while slot:
            if hashes[slot] == hashed:
                if unpack(self._data[slot]) == raw:
                    return slot
                collided = True
            slot = chain[slot]
        if collided:
            self.hash_collisions += 1
        return 0

    def _pack(self, raw: bytes, page: memoryview) -> bytes:
        """What a new copy keeps: the page, or its lz4 block with dd_compress=lz4 if smaller."""
        if self.compress:
            packed: bytes = lz4.block.compress(page, store_size=False)
            if len(packed) < PAGE_SIZE:
                return packed
        return raw

    def _room_for(self, blob: bytes) -> int:
        """Grow the slot arrays and the index, if needed, for one more copy; the bytes it will add."""
        if not self._free_slot:
            self._grow_slots()
        if self.unique_pages >= len(self._table):
            self._rehash(max(8, 2 * len(self._table)))
        return blob_cost(len(blob)) + (self._policy_bytes(1) - self._policy_bytes(0) if self._policy is not None else 0)

    def _store(self, hashed: int, blob: bytes) -> int:
        """A new copy in a reserved slot, indexed (it enters the eviction order with its first
        ephemeral handle)."""
        slot = self._free_slot
        self._free_slot = self._next[slot]
        self._data[slot] = blob
        self._hash[slot] = hashed
        self._index(slot)
        self.unique_pages += 1
        self.unique_bytes += len(blob)
        self._payload += blob_cost(len(blob))
        return slot

    def _free_copy(self, slot: int) -> None:
        """Forget a copy whose handles are all gone (it is out of the eviction order)."""
        self._unindex(slot)
        blob = self._data[slot]
        self._data[slot] = b""
        self.unique_pages -= 1
        self.unique_bytes -= len(blob)
        self._payload -= blob_cost(len(blob))
        self._gen[slot] = (self._gen[slot] + 1) & 0xFFFFFFFF
        self._next[slot] = self._free_slot
        self._free_slot = slot

    def _grow_slots(self) -> None:
        """Add free slots (the free list is empty)."""
        first = len(self._refs)
        count = max(16, first // GROWTH)
        self._data.extend([b""] * count)
        for column in (self._refs, self._hash, self._chain, self._prev, self._gen, self._pins):
            column.frombytes(bytes(count * column.itemsize))
        self._head.extend([NO] * count)
        self._next.extend(range(first + 1, first + count))
        self._next.append(0)
        self._visited.extend(bytes(count))
        self._free_slot = first
        self._arrays = self._measured()

    def _index(self, slot: int) -> None:
        bucket = self._hash[slot] & (len(self._table) - 1)
        self._chain[slot] = self._table[bucket]
        self._table[bucket] = slot

    def _unindex(self, slot: int) -> None:
        table, chain = self._table, self._chain
        bucket = self._hash[slot] & (len(table) - 1)
        if table[bucket] == slot:
            table[bucket] = chain[slot]
            return
        before = table[bucket]
        while chain[before] != slot:
            before = chain[before]
        chain[before] = chain[slot]

    def _rehash(self, size: int) -> None:
        old = self._table
        self._table = array("i", bytes(4 * size))
        chain = self._chain
        for first in old:
            slot = first
            while slot:
                after = chain[slot]
                self._index(slot)
                slot = after
        self._arrays = self._measured()

    # -- handles -----------------------------------------------------------------------

    def _handle(self, dpool: DedupPool, key: bytes, index: int) -> int:
        """The live handle of (key, index), or NO."""
        file = dpool.files.get(key)
        if file is None:
            return NO
        chunk = file.chunks.get(index >> SHIFT)
        if chunk is None:
            return NO
        handle = chunk << SHIFT | index & MASK
        return handle if self._hslot[handle] else NO

    def _new_handle(self, pool: int, dpool: DedupPool, key: bytes, index: int) -> int:
        """The handle position of (key, index), making its file record and chunk if needed."""
        file = dpool.files.get(key)
        if file is None:
            before = sys.getsizeof(dpool.files)
            file = dpool.files[key] = DedupFile(pool, key)
            self._meta += (sys.getsizeof(dpool.files) - before + sys.getsizeof(file) + sys.getsizeof(key)
                           + sys.getsizeof(file.chunks))
        number = index >> SHIFT
        chunk = file.chunks.get(number)
        if chunk is None:
            if self._free_chunk == NO:
                self._grow_chunks()
            chunk = self._free_chunk
            self._free_chunk = self._hnext[chunk << SHIFT]
            self._owner[chunk] = file
            self._chunk_no[chunk] = number
            self._persist[chunk] = dpool.persistent
            before = sys.getsizeof(file.chunks)
            file.chunks[number] = chunk
            self._meta += sys.getsizeof(file.chunks) - before + 2 * INT_BYTES
        return chunk << SHIFT | index & MASK

    def _grow_chunks(self) -> None:
        """Add free chunks (the free list is empty)."""
        first = len(self._used)
        count = max(1, first // GROWTH)
        self._used.frombytes(bytes(count))
        self._persist.extend(bytes(count))
        self._owner.extend([None] * count)
        self._chunk_no.frombytes(bytes(8 * count))
        for column in (self._hslot, self._hprev, self._hnext):
            column.frombytes(bytes(4 * CHUNK * count))
        for chunk in range(first, first + count):
            self._hnext[chunk << SHIFT] = chunk + 1 if chunk + 1 < first + count else NO
        self._free_chunk = first
        self._arrays = self._measured()

    def _link(self, handle: int, slot: int) -> None:
        first = self._head[slot]
        self._hnext[handle] = first
        self._hprev[handle] = NO
        if first != NO:
            self._hprev[first] = handle
        self._head[slot] = handle
        self._hslot[handle] = slot
        self._refs[slot] += 1
        self._used[handle >> SHIFT] += 1
        self.stored_pages += 1
        if self._persist[handle >> SHIFT]:
            self._pin(slot, 1)

    def _unlink(self, handle: int) -> int:
        """Detach a handle from its copy (which may be left with none) and free its chunk if empty."""
        slot = self._hslot[handle]
        prev, after = self._hprev[handle], self._hnext[handle]
        if prev == NO:
            self._head[slot] = after
        else:
            self._hnext[prev] = after
        if after != NO:
            self._hprev[after] = prev
        self._hslot[handle] = 0
        self._refs[slot] -= 1
        self.stored_pages -= 1
        chunk = handle >> SHIFT
        if self._persist[chunk]:
            self._pin(slot, -1)
        self._used[chunk] -= 1
        if not self._used[chunk]:
            self._free_chunk_of(chunk)
        return slot

    def _free_chunk_of(self, chunk: int) -> None:
        file = self._owner[chunk]
        assert file is not None
        self._owner[chunk] = None
        del file.chunks[self._chunk_no[chunk]]
        self._meta -= 2 * INT_BYTES
        if not file.chunks:
            del self._pools[file.pool].files[file.key]
            self._meta -= sys.getsizeof(file) + sys.getsizeof(file.key) + sys.getsizeof(file.chunks)
        self._hnext[chunk << SHIFT] = self._free_chunk
        self._free_chunk = chunk

    def _pin(self, slot: int, by: int) -> None:
        """A persistent handle of the copy came (1) or went (-1): the first pins its bytes, the last frees them."""
        before = self._pins[slot]
        self._pins[slot] = before + by
        self.persistent_pages += by
        if not before or not before + by:
            self.persistent_bytes += by * blob_cost(len(self._data[slot]))

    def _drop(self, handle: int) -> None:
        """Forget one handle, and its copy with it if it was the last."""
        persistent = self._persist[handle >> SHIFT]
        slot = self._unlink(handle)
        if self._refs[slot] == self._pins[slot]:  # no ephemeral handle left
            if not persistent:  # the last one went: the copy leaves the eviction order
                self._order_remove(slot)
            if not self._refs[slot]:
                self._free_copy(slot)

    def _drop_copy(self, slot: int, spilled: list[Spilled] | None, everything: bool = False) -> int:
        """Forget a copy's ephemeral handles (the copy is out of the eviction order), and the copy
        unless a persistent handle still uses it; with `everything`, every handle and the copy.
        The number of handles dropped. With `spilled`, each handle's page is added there for the
        next member of a chain."""
        data = unpack(self._data[slot]) if spilled is not None else None
        dropped = 0
        handle = self._head[slot]
        while handle != NO:
            after = self._hnext[handle]
            if self._persist[handle >> SHIFT] and not everything:
                handle = after
                continue
            if spilled is not None and data is not None:
                chunk = handle >> SHIFT
                file = self._owner[chunk]
                assert file is not None
                spilled.append((file.pool, file.key, self._chunk_no[chunk] << SHIFT | handle & MASK, data))
            self._unlink(handle)
            dropped += 1
            handle = after
        if not self._refs[slot]:
            self._free_copy(slot)
        return dropped

    def _drop_file(self, file: DedupFile) -> int:
        """Forget every handle of a file; how many there were."""
        dropped = 0
        for chunk in list(file.chunks.values()):
            for handle in range(chunk << SHIFT, (chunk + 1) << SHIFT):
                if self._hslot[handle]:
                    self._drop(handle)
                    dropped += 1
        return dropped

    def _tidy(self) -> None:
        """Once the last handle is gone, release the grown arrays too."""
        if not self.stored_pages and self.held:
            self._reset()

    # -- eviction order ------------------------------------------------------------------

    def _key(self, slot: int) -> int:
        return self._gen[slot] << 32 | slot

    def _order_insert(self, slot: int) -> None:
        if self._policy is not None:
            self._policy.insert(self._key(slot))
            return
        self._visited[slot] = 0
        newest = self._next[0]
        self._prev[slot] = 0
        self._next[slot] = newest
        self._prev[newest] = slot
        self._next[0] = slot

    def _touch(self, slot: int) -> None:
        if self._policy is not None:
            self._policy.touch(self._key(slot))
        elif self._sieve:
            self._visited[slot] = 1
        elif self._next[0] != slot:  # lru: make it the newest (inline: gets and duplicate puts come here)
            prev, after = self._prev, self._next
            newest = after[0]
            after[prev[slot]] = after[slot]
            prev[after[slot]] = prev[slot]
            prev[slot] = 0
            after[slot] = newest
            prev[newest] = slot
            after[0] = slot

    def _order_remove(self, slot: int) -> None:
        if self._policy is not None:
            self._policy.remove(self._key(slot))
            return
        if slot == self._hand:
            self._hand = self._prev[slot]
        self._unlink_order(slot)

    def _victim(self) -> int:
        """Take the copy to evict next out of the order."""
        if self._policy is not None:
            return self._policy.victim() & 0xFFFFFFFF
        prev = self._prev
        if self._sieve:  # from the hand towards the newest, sparing (once) the visited
            visited = self._visited
            slot = self._hand or prev[0]
            while visited[slot]:
                visited[slot] = 0
                slot = prev[slot] or prev[0]
            self._hand = prev[slot]
        else:
            slot = prev[0]
        self._unlink_order(slot)
        return slot

    def _unlink_order(self, slot: int) -> None:
        prev, after = self._prev[slot], self._next[slot]
        self._next[prev] = after
        self._prev[after] = prev
