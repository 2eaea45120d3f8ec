"""`-o trace=FILE`: a record of page-level events that tools/trace.py replays.

One text line per event, `TIME_US OP FILE:INDEX`, where FILE is a small
number introduced once by a `# file N KEYHEX` line, so a line costs ~20
bytes. Ops: `hit` and `miss` (page cache lookups: what a policy replay
needs), `get+` / `get-` (cleancache get, hit or miss), `put`, `invalidate`
(a page) and `invalidate_inode` (index `*`). Lines are buffered; the file is
complete once the mount is unmounted. The file is created 0600: it shows
which pages of which files were read.
"""

from __future__ import annotations

import time
from typing import TextIO

from fusefs.logs import open_private


class Tracer:
    def __init__(self, path: str, src: str) -> None:
        self._out: TextIO = open_private(path, truncate=True, buffering=1 << 20)
        self._ids: dict[bytes, int] = {}
        self._start = time.monotonic_ns()
        self._out.write(f"# tmemfs trace v1 of {src}\n# TIME_US OP FILE:INDEX\n")

    def _file(self, key: bytes) -> int:
        number = self._ids.get(key)
        if number is None:
            number = self._ids[key] = len(self._ids)
            self._out.write(f"# file {number} {key.hex()}\n")
        return number

    def event(self, op: str, key: bytes, index: int | str) -> None:
        now = (time.monotonic_ns() - self._start) // 1000
        self._out.write(f"{now} {op} {self._file(key)}:{index}\n")

    def close(self) -> None:
        self._out.close()
