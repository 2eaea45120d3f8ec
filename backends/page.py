"""The page: the unit every layer moves (defined here, below both, so a backend needs nothing from fusefs)."""

PAGE_SIZE = 4096
PAGE_SHIFT = 12
PAGE_MASK = PAGE_SIZE - 1

#: a page being put: (file key, page index, its bytes)
PagePut = tuple[bytes, int, memoryview]
