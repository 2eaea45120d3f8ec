"""One page as an lz4 block: what zcache and the host pool's zcache clients store."""

from __future__ import annotations

import lz4.block

from backends.page import PAGE_SIZE


def decompress_page(blob: bytes, out: memoryview) -> bool:
    """An lz4 block into `out` if it is exactly one page (False if corrupt: a miss, never garbage)."""
    try:
        data = lz4.block.decompress(blob, uncompressed_size=PAGE_SIZE)
    except lz4.block.LZ4BlockError:
        return False
    if len(data) != PAGE_SIZE:
        return False
    out[:] = data
    return True
