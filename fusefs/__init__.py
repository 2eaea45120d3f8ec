"""tmemfs: a pass-through FUSE filesystem with its own page cache and cleancache hooks."""

__version__ = "0.1.0"
PAGE_SIZE = 4096
PAGE_SHIFT = 12
PAGE_MASK = PAGE_SIZE - 1
