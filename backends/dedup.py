"""The `dedup` backend: one stored copy per distinct page content, as Xen tmem did.

Copies are indexed by xxh3_128 of the content, but a copy is shared only
after comparing the bytes: a hash collision costs a second copy (counted in
`hash_collisions`), never another page's data. Copies are reference
counted and freed when their last handle is invalidated, replaced or
evicted. `dd_compress=lz4` also compresses the unique copies.
"""

from __future__ import annotations

from typing import ClassVar

import lz4.block
import xxhash

from backends.base import OptionSpec, StatValue
from backends.ram import RamBackend
from fusefs import PAGE_SIZE


def parse_compress(text: str) -> str:
    if text not in ("none", "lz4"):
        raise ValueError("must be none or lz4")
    return text


class Copy:
    """One distinct page content and how many handles share it."""

    __slots__ = ("compressed", "data", "digest", "refs")

    def __init__(self, digest: bytes, data: bytes, compressed: bool) -> None:
        self.digest = digest
        self.data = data
        self.compressed = compressed
        self.refs = 0

    def content(self) -> bytes:
        if self.compressed:
            return lz4.block.decompress(self.data, uncompressed_size=PAGE_SIZE)
        return self.data


class DedupBackend(RamBackend):
    name = "dedup"
    summary = "one copy per distinct page (xxh3_128 index, byte-verified), reference counted"
    options: ClassVar[dict[str, OptionSpec]] = {
        **RamBackend.options,
        "dd_compress": OptionSpec(parse_compress, "compress unique copies: none (default) or lz4"),
    }
    @staticmethod
    def digest(page: memoryview) -> bytes:
        """The index hash (tests override it with a weak one to force collisions)."""
        return xxhash.xxh3_128_digest(page)

    def __init__(self, capacity: int, dd_compress: str = "none", cc_policy: str = "lru") -> None:
        self.compress = dd_compress == "lz4"
        self._index: dict[bytes, list[Copy]] = {}
        self.unique_pages = self.unique_bytes = 0
        super().__init__(capacity, cc_policy)

    def reset_stats(self) -> None:
        super().reset_stats()
        self.duplicate_entry = self.hash_collisions = 0

    def encode(self, page: memoryview) -> object | None:
        digest = self.digest(page)
        bucket = self._index.setdefault(digest, [])
        for copy in bucket:
            try:
                same = copy.content() == page
            except lz4.block.LZ4BlockError:
                same = False
            if same:
                self.duplicate_entry += 1
                copy.refs += 1
                return copy
        if bucket:
            self.hash_collisions += 1
        data = bytes(page)
        compressed = False
        if self.compress:
            packed = lz4.block.compress(page, store_size=False)
            if len(packed) < PAGE_SIZE:
                data, compressed = packed, True
        copy = Copy(digest, data, compressed)
        copy.refs = 1
        bucket.append(copy)
        return copy

    def decode(self, entry: object, out: memoryview) -> bool:
        assert isinstance(entry, Copy)
        try:
            data = entry.content()
        except lz4.block.LZ4BlockError:
            return False
        if len(data) != PAGE_SIZE:
            return False
        out[:] = data
        return True

    def charge(self, entry: object) -> int:
        assert isinstance(entry, Copy)
        if entry.refs > 1:
            return 0  # shared: only the handle's overhead is new
        self.unique_pages += 1
        self.unique_bytes += len(entry.data)
        return len(entry.data)

    def release(self, entry: object) -> int:
        assert isinstance(entry, Copy)
        entry.refs -= 1
        if entry.refs > 0:
            return 0
        bucket = self._index[entry.digest]
        bucket.remove(entry)
        if not bucket:
            del self._index[entry.digest]
        self.unique_pages -= 1
        self.unique_bytes -= len(entry.data)
        return len(entry.data)

    def stats(self) -> dict[str, StatValue]:
        stats = super().stats()
        stats.update({
            "unique_pages": self.unique_pages,
            "unique_data_size": self.unique_bytes,
            "duplicate_entry": self.duplicate_entry,
            "hash_collisions": self.hash_collisions,
            "saved_bytes": self.stored_pages * PAGE_SIZE - self.unique_bytes,
        })
        return stats
