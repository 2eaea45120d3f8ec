"""Eviction policies shared by the page cache and the RAM backends.

A policy orders keys it was told about and names the next victim. It never
stores data: the owner keeps the pages and asks `victim()` when full.

The contract, the same for every policy:

- `insert(key)`: a key that is not resident enters the cache;
- `touch(key)`: a hit on a resident key;
- `remove(key)`: the owner dropped a resident key for its own reasons
  (invalidation, an exclusive get); no ghost is kept, the data is gone;
- `victim()`: remove and return the resident key to evict next (KeyError
  when none); owners call it only when they need room, so it may be called
  with fewer than `capacity` keys resident, and repeatedly to drain;
- `len()`: keys resident;
- `resize(capacity)`: the owner's size changed; sizing parameters follow
  and ghosts are trimmed to the new bounds. Owners shrink by calling
  `victim()` until they fit, before or after: resize never evicts.

Every operation is O(1); for the FIFO-with-reinsertion policies the eviction
loop is amortized O(1) (each key it passes over pays back an earlier hit).
Ghosts (keys remembered after eviction) are bounded by a small multiple of
`capacity`, the cache size in keys that every constructor takes.

`lru` is the classic and is not scan-resistant: one pass over more keys than
fit flushes everything. `sieve`, `s3fifo` and `arc` are: keys used once (a
scan) leave quickly and keys used again stay.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import Any, ClassVar, Generic, TypeVar

K = TypeVar("K", bound=Hashable)

_ABSENT: Any = object()  # default for dict.pop, where None is a stored value


class Policy(ABC, Generic[K]):
    """What an owner needs from an eviction policy (see the module docstring)."""

    __slots__ = ("capacity",)
    name: ClassVar[str]

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity

    @abstractmethod
    def __len__(self) -> int: ...

    @abstractmethod
    def insert(self, key: K) -> None: ...

    def insert_run(self, keys: list[K]) -> None:
        """insert() each key in order (a policy may do it in one step)."""
        for key in keys:
            self.insert(key)

    def toucher(self) -> Callable[[K], None]:
        """The fastest callable equivalent to touch (a policy may return a builtin)."""
        return self.touch

    @abstractmethod
    def touch(self, key: K) -> None: ...

    @abstractmethod
    def remove(self, key: K) -> None: ...

    @abstractmethod
    def victim(self) -> K:
        """Remove and return the key to evict next (KeyError when empty)."""

    def ghosts(self) -> int:
        """Evicted keys still remembered (0 for policies without history)."""
        return 0

    def resize(self, capacity: int) -> None:
        """The owner now holds up to `capacity` keys (policies with sizing parameters follow)."""
        _need_capacity(capacity, self.name)
        self.capacity = capacity


def _need_capacity(capacity: int, name: str) -> None:
    if capacity < 1:
        raise ValueError(f"{name}: capacity must be at least one key, not {capacity}")


class LRU(Policy[K]):
    """Least recently used: a hit moves the key to the young end.

    Not scan-resistant, but the baseline everything else is compared with.
    The capacity is ignored (LRU needs no sizing), hence its default.
    """

    __slots__ = ("_order",)
    name = "lru"

    def __init__(self, capacity: int = 0) -> None:
        super().__init__(capacity)
        self._order: OrderedDict[K, None] = OrderedDict()

    def __len__(self) -> int:
        return len(self._order)

    def insert(self, key: K) -> None:
        self._order[key] = None

    def insert_run(self, keys: list[K]) -> None:
        self._order.update(dict.fromkeys(keys))

    def touch(self, key: K) -> None:
        self._order.move_to_end(key)

    def toucher(self) -> Callable[[K], None]:
        """move_to_end itself: a hit costs no Python frame on the read fast path."""
        return self._order.move_to_end

    def remove(self, key: K) -> None:
        del self._order[key]

    def victim(self) -> K:
        """Remove and return the key to evict next (KeyError when empty)."""
        return self._order.popitem(last=False)[0]


class SIEVE(Policy[K]):
    """SIEVE (Zhang et al., "SIEVE is Simpler than LRU", NSDI'24).

    One FIFO queue, a visited bit per key and a hand that walks from the
    oldest key towards the newest, clearing bits and evicting the first key
    whose bit is clear. Unlike CLOCK, survivors stay in place, so new keys
    sit just ahead of the hand and are judged soon: keys used once go
    quickly, keys used again stay. A hit only sets a bit.

    The queue is kept as two insertion-ordered dicts cut at the hand:
    `_ahead` runs from the hand to the newest key (inserts append here) and
    `_passed` from the oldest key to the hand (this sweep's survivors). When
    the hand passes the newest key it wraps to the oldest: the two swap.
    `_ahead` is empty only when the queue is, so the hand is `_ahead`'s first.
    """

    __slots__ = ("_ahead", "_passed", "_visited")
    name = "sieve"

    def __init__(self, capacity: int) -> None:
        super().__init__(capacity)
        self._ahead: OrderedDict[K, None] = OrderedDict()
        self._passed: OrderedDict[K, None] = OrderedDict()
        self._visited: set[K] = set()

    def __len__(self) -> int:
        return len(self._ahead) + len(self._passed)

    def insert(self, key: K) -> None:
        self._ahead[key] = None

    def touch(self, key: K) -> None:
        self._visited.add(key)

    def remove(self, key: K) -> None:
        self._visited.discard(key)
        if self._ahead.pop(key, _ABSENT) is _ABSENT:
            del self._passed[key]
        elif not self._ahead:
            self._wrap()

    def victim(self) -> K:
        """Remove and return the key to evict next (KeyError when empty)."""
        visited = self._visited
        while True:
            ahead = self._ahead
            key = ahead.popitem(last=False)[0]
            if key not in visited:
                if not ahead:
                    self._wrap()
                return key
            visited.remove(key)
            self._passed[key] = None
            if not ahead:
                self._wrap()

    def _wrap(self) -> None:
        self._ahead, self._passed = self._passed, self._ahead


class S3FIFO(Policy[K]):
    """S3-FIFO (Yang et al., "FIFO queues are all you need for cache eviction", SOSP'23).

    New keys enter a small FIFO (10% of capacity). At its tail a key hit at
    least twice there (Algorithm 1's `freq > 1`) moves to the main FIFO;
    any other leaves the cache and is remembered in a ghost FIFO as long as
    main. A key inserted while remembered goes straight to main. Main is
    FIFO with reinsertion: a key with hits left (counter capped at 3) goes
    round again with one fewer. Most keys used once (scans) leave after a
    short stay in the small queue and never disturb main.

    Between a `victim()` and the following `insert()` the ghost may hold one
    entry over its bound: the paper looks the missing key up in the ghost
    before evicting, so the entry that eviction would push out must still
    count for the key being inserted.
    """

    __slots__ = ("_ghost", "_ghost_size", "_main", "_small", "_small_size")
    name = "s3fifo"
    MAX_FREQ: ClassVar[int] = 3
    PROMOTE: ClassVar[int] = 2

    def __init__(self, capacity: int) -> None:
        _need_capacity(capacity, self.name)
        super().__init__(capacity)
        self._small_size = self._ghost_size = 0
        self._size_queues()
        # resident key -> hits, capped at MAX_FREQ; dict order is FIFO order
        self._small: OrderedDict[K, int] = OrderedDict()
        self._main: OrderedDict[K, int] = OrderedDict()
        self._ghost: OrderedDict[K, None] = OrderedDict()

    def __len__(self) -> int:
        return len(self._small) + len(self._main)

    def insert(self, key: K) -> None:
        ghost = self._ghost
        if ghost.pop(key, _ABSENT) is _ABSENT:
            self._small[key] = 0
            if len(ghost) > self._ghost_size:
                ghost.popitem(last=False)
        else:
            self._main[key] = 0

    def touch(self, key: K) -> None:
        small = self._small
        f = small.get(key)
        if f is None:
            main = self._main
            f = main[key]
            if f < self.MAX_FREQ:
                main[key] = f + 1
        elif f < self.MAX_FREQ:
            small[key] = f + 1

    def remove(self, key: K) -> None:
        if self._small.pop(key, _ABSENT) is _ABSENT:
            del self._main[key]

    def victim(self) -> K:
        """Remove and return the key to evict next (KeyError when empty)."""
        small, main = self._small, self._main
        if len(small) >= self._small_size or not main:
            while small:
                key, f = small.popitem(last=False)
                if f >= self.PROMOTE:
                    main[key] = 0  # main may run over its share until the next victim
                    continue
                ghost = self._ghost
                ghost[key] = None
                if len(ghost) > self._ghost_size + 1:
                    ghost.popitem(last=False)
                return key
        while True:
            key, f = main.popitem(last=False)
            if not f:
                return key
            main[key] = f - 1

    def ghosts(self) -> int:
        return len(self._ghost)

    def resize(self, capacity: int) -> None:
        """The small queue stays 10% and the ghost as long as main; keys resident in either
        stay where they are (victim() takes from small while it is over its share)."""
        super().resize(capacity)
        self._size_queues()
        ghost = self._ghost
        while len(ghost) > self._ghost_size:
            ghost.popitem(last=False)

    def _size_queues(self) -> None:
        self._small_size = max(1, self.capacity // 10)
        self._ghost_size = max(1, self.capacity - self._small_size)


class ARC(Policy[K]):
    """ARC (Megiddo & Modha, "ARC: A Self-Tuning, Low Overhead Replacement Cache", FAST'03).

    T1 holds keys seen once recently, T2 keys seen at least twice; B1 and B2
    remember keys evicted from each (together at most 2c keys, B1 with T1 at
    most c). A ghost hit in B1 says T1 was too small and grows the target p
    for T1; a hit in B2 shrinks it. Scans only churn T1 while T2 keeps the
    reused keys.

    This interface asks for the victim before naming the missing key, so
    REPLACE cannot see it: the tie-break "x in B2 and |T1| == p" is
    dropped, and a ghost hit adapts p at `insert()`, i.e. from the next
    eviction on. The directory trimming of the paper's case IV happens at
    `insert()` too and leaves the same lists.
    """

    __slots__ = ("_b1", "_b2", "_p", "_t1", "_t2")
    name = "arc"

    def __init__(self, capacity: int) -> None:
        _need_capacity(capacity, self.name)
        super().__init__(capacity)
        self._p = 0.0
        self._t1: OrderedDict[K, None] = OrderedDict()
        self._t2: OrderedDict[K, None] = OrderedDict()
        self._b1: OrderedDict[K, None] = OrderedDict()
        self._b2: OrderedDict[K, None] = OrderedDict()

    @property
    def p(self) -> float:
        """The adaptive target size of T1."""
        return self._p

    def __len__(self) -> int:
        return len(self._t1) + len(self._t2)

    def insert(self, key: K) -> None:
        b1, b2 = self._b1, self._b2
        if b1 and key in b1:  # case II: T1 was too small
            self._p = min(self._p + max(len(b2) / len(b1), 1.0), self.capacity)
            del b1[key]
            self._t2[key] = None
            return
        if b2 and key in b2:  # case III: T2 was too small
            self._p = max(self._p - max(len(b1) / len(b2), 1.0), 0.0)
            del b2[key]
            self._t2[key] = None
            return
        t1 = self._t1  # case IV
        t1[key] = None
        c = self.capacity
        while b1 and len(t1) + len(b1) > c:
            b1.popitem(last=False)
        while len(t1) + len(self._t2) + len(b1) + len(b2) > 2 * c and (b1 or b2):
            (b2 or b1).popitem(last=False)

    def touch(self, key: K) -> None:
        t1 = self._t1
        if key in t1:
            del t1[key]
            self._t2[key] = None
        else:
            self._t2.move_to_end(key)

    def remove(self, key: K) -> None:
        if self._t1.pop(key, _ABSENT) is _ABSENT:
            del self._t2[key]

    def victim(self) -> K:
        """REPLACE: evict from T1 while it exceeds its target p, else from T2."""
        t1 = self._t1
        if t1 and (len(t1) > self._p or not self._t2):
            key = t1.popitem(last=False)[0]
            self._b1[key] = None
        else:
            key = self._t2.popitem(last=False)[0]
            self._b2[key] = None
        return key

    def ghosts(self) -> int:
        return len(self._b1) + len(self._b2)

    def resize(self, capacity: int) -> None:
        """The target p keeps its share of the cache; the ghosts are trimmed, oldest first, to
        the directory's bounds (|T1| + |B1| <= c, all four lists <= 2c) as far as ghosts can be."""
        old = self.capacity
        super().resize(capacity)
        self._p = min(self._p * capacity / old, float(capacity))
        b1, b2 = self._b1, self._b2
        while b1 and len(self._t1) + len(b1) > capacity:
            b1.popitem(last=False)
        while len(self) + len(b1) + len(b2) > 2 * capacity and (b1 or b2):
            (b2 or b1).popitem(last=False)


POLICIES: dict[str, type[Policy[Any]]] = {cls.name: cls for cls in (LRU, SIEVE, S3FIFO, ARC)}


def make_policy(name: str, capacity: int) -> Policy[Any]:
    """A fresh policy for a cache of `capacity` keys (ValueError for an unknown name)."""
    try:
        cls = POLICIES[name]
    except KeyError:
        raise ValueError(f"unknown eviction policy {name!r} (known: {', '.join(POLICIES)})") from None
    return cls(capacity)
