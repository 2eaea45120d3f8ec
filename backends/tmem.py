"""The `tmem` backend: raw pages in process memory, bounded by cc_size.

Plain RAM, like Xen tmem without compression: the reference the other
backends are compared with.
"""

from __future__ import annotations

from backends.page import PAGE_SIZE
from backends.ram import RamBackend


class TmemBackend(RamBackend):
    name = "tmem"
    summary = "raw pages in process memory, bounded by cc_size"

    def encode(self, page: memoryview) -> object | None:
        return bytes(page)

    def decode(self, entry: object, out: memoryview) -> bool:
        assert isinstance(entry, bytes)
        if len(entry) != PAGE_SIZE:
            return False
        out[:] = entry
        return True

    def charge(self, entry: object) -> int:
        return PAGE_SIZE

    def release(self, entry: object) -> int:
        return PAGE_SIZE
