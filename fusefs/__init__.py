"""tmemfs: a pass-through FUSE filesystem with its own page cache and cleancache hooks."""

from backends.page import PAGE_MASK, PAGE_SHIFT, PAGE_SIZE

__all__ = ["PAGE_MASK", "PAGE_SHIFT", "PAGE_SIZE", "__version__"]
__version__ = "0.1.0"
