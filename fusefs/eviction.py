"""Eviction policies shared by the page cache and the RAM backends.

A policy orders keys it was told about and names the next victim. It never
stores data: the owner keeps the pages and asks `victim()` when full.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Hashable
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)


class LRU(Generic[K]):
    """Least recently used: a hit moves the key to the young end."""

    name = "lru"

    def __init__(self) -> None:
        self._order: OrderedDict[K, None] = OrderedDict()

    def __len__(self) -> int:
        return len(self._order)

    def insert(self, key: K) -> None:
        self._order[key] = None

    def touch(self, key: K) -> None:
        self._order.move_to_end(key)

    def remove(self, key: K) -> None:
        del self._order[key]

    def victim(self) -> K:
        """Remove and return the key to evict next (KeyError when empty)."""
        return self._order.popitem(last=False)[0]


POLICIES = {"lru": LRU}


def make_policy(name: str) -> LRU:  # type: ignore[type-arg]
    try:
        return POLICIES[name]()
    except KeyError:
        raise ValueError(f"unknown eviction policy {name!r} (known: {', '.join(POLICIES)})") from None
