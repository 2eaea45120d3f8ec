"""The hidden `.tmemfs` directory: stats, stats.json and the control file.

`stats` has one `name value` per line; `stats.json` the same keys as JSON.
Both are rendered when opened, so a reader sees one consistent snapshot.
`control` takes text commands, one per line; a bad command is EINVAL and
nothing in that write runs.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import stat
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import pyfuse3

from backends import registry
from backends.base import StatValue
from fusefs.cleancache import BackendBusy
from fusefs.inodes import RESERVED_BASE
from fusefs.options import OptionError, parse_register

if TYPE_CHECKING:
    from fusefs.datapath import DataPath

log = logging.getLogger("tmemfs.control")

CONTROL_DIR_NAME = b".tmemfs"
DIR_ID = RESERVED_BASE + 1
FILES = {
    b"stats": (RESERVED_BASE + 2, 0o444),
    b"stats.json": (RESERVED_BASE + 3, 0o444),
    b"control": (RESERVED_BASE + 4, 0o200),
}
CONTROL_ID = FILES[b"control"][0]
NAMES = {nodeid: name for name, (nodeid, _) in FILES.items()}
COMMANDS = {
    "drop_caches": "evict every page from the page cache (each is put into cleancache)",
    "flush": "invalidate the whole cleancache pool",
    "reset_stats": "zero the event counters",
    "register": "register NAME[+NAME] [cc_size=SIZE] [opt=value ...]: make a backend live (EBUSY if one is)",
    "replace": "replace NAME[+NAME] [opts]: flush and close the live backend, register another",
    "unregister": "flush and close the live backend; reads go on from SRC",
}
ALONE = {"register", "replace", "unregister"}  # must be the only command of a write


def is_control(nodeid: int) -> bool:
    return nodeid >= RESERVED_BASE


def render_text(stats: dict[str, StatValue]) -> bytes:
    lines = []
    for name, value in stats.items():
        if isinstance(value, float):
            value = f"{value:.6g}"
        lines.append(f"{name} {value}\n")
    return "".join(lines).encode()


def render_json(stats: dict[str, StatValue]) -> bytes:
    return (json.dumps(stats, indent=1) + "\n").encode()


@dataclass
class ControlHandle:
    """An open control file: a snapshot to read, or commands to run."""

    nodeid: int
    content: bytes = b""

    def read(self, offset: int, size: int) -> bytes:
        return self.content[offset : offset + size]


class ControlFiles:
    def __init__(self, collect: Callable[[], dict[str, StatValue]],
                 run: Callable[[list[str]], Awaitable[None]], owner_uid: int, attr_timeout: float) -> None:
        self._collect = collect
        self._run = run
        self.owner_uid = owner_uid
        self.owner_gid = os.getgid()
        self.attr_timeout = attr_timeout
        self.mounted_ns = time.time_ns()

    def lookup(self, parent: int, name: bytes) -> pyfuse3.EntryAttributes:
        if parent == pyfuse3.ROOT_INODE and name == CONTROL_DIR_NAME:
            return self.getattr(DIR_ID)
        if parent == DIR_ID and name in FILES:
            return self.getattr(FILES[name][0])
        if parent == DIR_ID and name == b"..":
            return self.getattr(DIR_ID)  # callers map this to the root
        raise pyfuse3.FUSEError(errno.ENOENT)

    def getattr(self, nodeid: int) -> pyfuse3.EntryAttributes:
        attr = pyfuse3.EntryAttributes()
        attr.st_ino = nodeid
        if nodeid == DIR_ID:
            attr.st_mode = stat.S_IFDIR | 0o555
            attr.st_nlink = 2
        elif nodeid in NAMES:
            attr.st_mode = stat.S_IFREG | FILES[NAMES[nodeid]][1]
            attr.st_nlink = 1
            attr.st_size = 0 if nodeid == CONTROL_ID else 4096
        else:
            raise pyfuse3.FUSEError(errno.ENOENT)
        attr.st_uid, attr.st_gid = self.owner_uid, self.owner_gid
        attr.st_atime_ns = attr.st_mtime_ns = attr.st_ctime_ns = self.mounted_ns
        attr.st_blksize = 4096
        attr.attr_timeout = attr.entry_timeout = self.attr_timeout
        return attr

    def entries(self) -> list[tuple[bytes, pyfuse3.EntryAttributes]]:
        return [(name, self.getattr(nodeid)) for name, (nodeid, _) in FILES.items()]

    def open(self, nodeid: int, flags: int, ctx: pyfuse3.RequestContext) -> ControlHandle:
        accmode = flags & os.O_ACCMODE
        if nodeid == CONTROL_ID:
            if accmode == os.O_RDONLY:
                raise pyfuse3.FUSEError(errno.EACCES)
            if ctx.uid not in (0, self.owner_uid):
                raise pyfuse3.FUSEError(errno.EACCES)
            return ControlHandle(nodeid)
        if nodeid not in NAMES:
            raise pyfuse3.FUSEError(errno.EISDIR)
        if accmode != os.O_RDONLY:
            raise pyfuse3.FUSEError(errno.EACCES)
        stats = self._collect()
        content = render_json(stats) if NAMES[nodeid] == b"stats.json" else render_text(stats)
        return ControlHandle(nodeid, content)

    async def write(self, handle: ControlHandle, data: bytes) -> int:
        if handle.nodeid != CONTROL_ID:
            raise pyfuse3.FUSEError(errno.EBADF)
        commands = parse_commands(data)
        for command in commands:
            await self._run(command)
        return len(data)


def parse_commands(data: bytes) -> list[list[str]]:
    """Commands (as words) in a write to `control`; EINVAL, running none, if any is wrong."""
    try:
        text = data.decode("ascii")
    except UnicodeDecodeError:
        raise pyfuse3.FUSEError(errno.EINVAL) from None
    commands = [line.split() for line in text.splitlines() if line.strip()]
    if not commands or any(words[0] not in COMMANDS for words in commands):
        raise pyfuse3.FUSEError(errno.EINVAL)
    for words in commands:
        takes_args = words[0] in ("register", "replace")
        if (len(words) > 1) != takes_args or (words[0] in ALONE and len(commands) > 1):
            raise pyfuse3.FUSEError(errno.EINVAL)
    return commands


class Commands:
    """What the control commands do to a mount's data path and cleancache."""

    def __init__(self, data: DataPath, cc_size: int, reset_fs_stats: Callable[[], None]) -> None:
        self.data = data
        self.cc_size = cc_size
        self.reset_fs_stats = reset_fs_stats

    async def run(self, words: list[str]) -> None:
        command = words[0]
        cc = self.data.cc
        if command == "drop_caches":
            await self.data.drop_caches()
        elif command == "flush":
            await self.data.flush_pool()
        elif command == "reset_stats":
            self.data.reset_stats()
            self.data.pc.reset_counters()
            cc.reset_stats()
            if cc.backend is not None:
                cc.backend.reset_stats()
            self.reset_fs_stats()
        elif command == "unregister":
            if await cc.unregister() is None:
                log.warning("control: unregister: no backend is registered")
                raise pyfuse3.FUSEError(errno.EINVAL)
        else:
            try:
                names, cc_size, options = parse_register(words[1:], self.cc_size, registry.load)
                backend = registry.build(names, cc_size, options)
            except (OptionError, TypeError, ValueError, ImportError) as exc:
                log.warning("control: %s: %s", " ".join(words), exc)
                raise pyfuse3.FUSEError(errno.EINVAL) from None
            assert backend is not None
            try:
                await cc.register(backend, replace=command == "replace")
            except BackendBusy as exc:
                log.warning("control: %s: %s", " ".join(words), exc)
                await backend.close()
                raise pyfuse3.FUSEError(errno.EBUSY) from None
        log.info("control: %s", " ".join(words))
