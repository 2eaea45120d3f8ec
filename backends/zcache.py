"""The `zcache` backend: each put page lz4-compressed in process memory.

After staging zcache and its successors zswap/zram: a same-filled page
(all bytes equal; zero pages above all) is kept as its fill byte and costs
no payload; a page whose compressed size exceeds `zc_max` is rejected
(`zc_poor=reject`, staging zcache's compress_poor) or kept raw
(`zc_poor=raw`, as Xen did); a block as long as a page saves nothing and
counts as poor even with zc_max=4096, so an entry shorter than a page is a
block and one of exactly a page is raw. Capacity counts compressed bytes
plus the measured per-entry overhead. Every get checks the entry: a decompression
error or a wrong size drops it and is a miss, never bad data.

Gets on a private pool are exclusive, so a page read back from zcache is
compressed again when the page cache evicts it. zcache remembers the
compressed block of pages it handed out (bounded to 1/8 of cc_size, not
counted as pool memory) with the xxh3-128 digest of their content; a put
whose content has that digest reuses the block instead of compressing
(`reused_compressions`). A changed page never matches, so the rule costs no
correctness.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import ClassVar, TypeGuard

import lz4.block
import xxhash

from backends.base import OptionSpec, StatValue
from backends.lz4page import decompress_page
from backends.page import PAGE_SIZE
from backends.ram import RamBackend, Spilled

_FILLS = [bytes([b]) * PAGE_SIZE for b in range(256)]


def parse_max(text: str) -> int:
    value = int(text)
    if not 0 < value <= PAGE_SIZE:
        raise ValueError(f"must be between 1 and {PAGE_SIZE} bytes")
    return value


def parse_poor(text: str) -> str:
    if text not in ("reject", "raw"):
        raise ValueError("must be reject or raw")
    return text


def fill_byte(page: memoryview) -> int | None:
    """The byte a same-filled page is made of, else None (cheap early outs first)."""
    first = page[0]
    if page[PAGE_SIZE - 1] != first or page[PAGE_SIZE // 2] != first:
        return None
    return first if page == _FILLS[first] else None


def is_block(entry: object) -> TypeGuard[bytes]:
    """Whether an entry is an lz4 block: shorter than a page (a raw page is exactly one, a
    same-filled page an int). Entries stay plain bytes, which the garbage collector never
    tracks: a bytes subclass would be, and a full collection then walked every entry
    (60 ms at 66k entries)."""
    return isinstance(entry, bytes) and len(entry) < PAGE_SIZE


class ZcacheBackend(RamBackend):
    name = "zcache"
    summary = "lz4-compressed pages in memory; same-filled pages cost nothing"
    options: ClassVar[dict[str, OptionSpec]] = {
        **RamBackend.options,
        "zc_max": OptionSpec(parse_max, "largest compressed size kept, in bytes; default 3072 (3/4 page)"),
        "zc_poor": OptionSpec(parse_poor, "a page that compresses worse: reject (default) or raw"),
    }
    expected_entry_bytes = PAGE_SIZE // 2

    def __init__(self, capacity: int, zc_max: int = PAGE_SIZE * 3 // 4, zc_poor: str = "reject",
                 cc_policy: str = "lru") -> None:
        self.zc_max = zc_max
        self.zc_poor = zc_poor
        self.same_filled_pages = self.raw_pages = self.compr_data_size = 0
        # Compressed blocks of pages handed out by gets: handle -> (digest, block).
        self._handed_out: OrderedDict[tuple[int, bytes, int], tuple[bytes, bytes]] = OrderedDict()
        self._handed_out_bytes = 0
        self._handed_out_limit = max(1 << 20, capacity // 8)
        self._reuse: bytes | None = None
        super().__init__(capacity, cc_policy)

    def reset_stats(self) -> None:
        super().reset_stats()
        self.reject_compress_poor = self.reused_compressions = 0

    def moved_out(self, pool: int, key: bytes, index: int, entry: object, page: memoryview) -> None:
        if is_block(entry):
            self._hand_out((pool, key, index), xxhash.xxh3_128_digest(page), entry)

    def _put(self, pool: int, key: bytes, index: int, page: memoryview, spilled: list[Spilled]) -> bool:
        given = self._handed_out.pop((pool, key, index), None)
        if given is not None:
            self._handed_out_bytes -= len(given[1])
            if xxhash.xxh3_128_digest(page) == given[0]:
                self._reuse = given[1]
        try:
            return super()._put(pool, key, index, page, spilled)
        finally:
            self._reuse = None

    def _hand_out(self, handle: tuple[int, bytes, int], digest: bytes, block: bytes) -> None:
        old = self._handed_out.pop(handle, None)
        if old is not None:
            self._handed_out_bytes -= len(old[1])
        self._handed_out[handle] = (digest, block)
        self._handed_out_bytes += len(block)
        self._trim_handed_out()

    async def set_capacity(self, nbytes: int) -> None:
        """The pool as every RAM backend does it; the blocks remembered for reuse stay 1/8 of it."""
        await super().set_capacity(nbytes)
        self._handed_out_limit = max(1 << 20, nbytes // 8)
        self._trim_handed_out()

    def _trim_handed_out(self) -> None:
        while self._handed_out_bytes > self._handed_out_limit:
            _, (_, dropped) = self._handed_out.popitem(last=False)
            self._handed_out_bytes -= len(dropped)

    def encode(self, page: memoryview) -> object | None:
        if self._reuse is not None:
            self.reused_compressions += 1
            return self._reuse
        fill = fill_byte(page)
        if fill is not None:
            return fill
        packed: bytes = lz4.block.compress(page, store_size=False)
        if len(packed) <= self.zc_max and len(packed) < PAGE_SIZE:  # (a block of a page saves nothing)
            return packed
        if self.zc_poor == "raw":
            return bytes(page)
        self.reject_compress_poor += 1
        return None

    def decode(self, entry: object, out: memoryview) -> bool:
        if isinstance(entry, int):
            out[:] = _FILLS[entry]
            return True
        assert isinstance(entry, bytes)
        if len(entry) == PAGE_SIZE:
            out[:] = entry
            return True
        return decompress_page(entry, out)

    def charge(self, entry: object) -> int:
        if isinstance(entry, int):
            self.same_filled_pages += 1
            return 0
        assert isinstance(entry, bytes)
        if len(entry) == PAGE_SIZE:
            self.raw_pages += 1
        self.compr_data_size += len(entry)
        return len(entry)

    def release(self, entry: object) -> int:
        if isinstance(entry, int):
            self.same_filled_pages -= 1
            return 0
        assert isinstance(entry, bytes)
        if len(entry) == PAGE_SIZE:
            self.raw_pages -= 1
        self.compr_data_size -= len(entry)
        return len(entry)

    def stats(self) -> dict[str, StatValue]:
        stats = super().stats()
        stats.update({
            "same_filled_pages": self.same_filled_pages,
            "raw_pages": self.raw_pages,
            "compr_data_size": self.compr_data_size,
            "reject_compress_poor": self.reject_compress_poor,
            "reused_compressions": self.reused_compressions,
            "compr_ratio": round(self.stored_pages * PAGE_SIZE / self.held, 3) if self.held else 0.0,
        })
        return stats
