"""This process's mounts, from /proc/self/mountinfo: one parser for everything that asks.

Why read the file rather than stat: a stat of tmemfs's own mount point would ask the
daemon itself, which may not be serving yet.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass

MOUNTINFO = "/proc/self/mountinfo"


@dataclass(frozen=True, slots=True)
class Mount:
    point: str
    dev: int  # the kernel's dev_t of the mount (kernel_dev): fusectl names a connection by it
    fstype: str
    source: str


def kernel_dev(major: int, minor: int) -> int:
    """A device number as the kernel writes it in mountinfo and names fusectl's connections by."""
    return major << 20 | minor


def unescape(field: str) -> str:
    """mountinfo writes spaces and the like as octal escapes (\\040)."""
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), field)


def mounts(path: str = MOUNTINFO) -> Iterator[Mount]:
    """Every mount, in mountinfo's order (a later one on the same point is on top);
    OSError if it cannot be read, malformed lines skipped."""
    with open(path, encoding="utf-8", errors="replace") as f:
        for line in f:
            fields = line.split()
            try:
                major, minor = fields[2].split(":")
                after = fields[fields.index("-") + 1 :]
                yield Mount(unescape(fields[4]), kernel_dev(int(major), int(minor)), after[0], unescape(after[1]))
            except (ValueError, IndexError):
                continue
