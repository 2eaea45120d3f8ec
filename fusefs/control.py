"""The hidden `.tmemfs` directory: stats, stats.json and the control file.

`stats` has one `name value` per line; `stats.json` the same keys as JSON.
Both are rendered when opened, so a reader sees one consistent snapshot.
`control` takes text commands, one per line; a bad command is EINVAL and
nothing in that write runs. A refusal is logged with its reason, and a read on
the handle that wrote returns the outcome of its last write (`ok` or
`EINVAL: reason`), so the writer learns why without the daemon's log.
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
from backends.host import parse_cap, parse_weight
from fusefs import PAGE_SHIFT
from fusefs.cleancache import BackendBusy
from fusefs.inodes import RESERVED_BASE
from fusefs.options import OptionError, parse_register, parse_size

if TYPE_CHECKING:
    from fusefs.datapath import DataPath

log = logging.getLogger("tmemfs.control")

CONTROL_DIR_NAME = b".tmemfs"
DIR_ID = RESERVED_BASE + 1
FILES = {
    b"stats": (RESERVED_BASE + 2, 0o444),
    b"stats.json": (RESERVED_BASE + 3, 0o444),
    b"control": (RESERVED_BASE + 4, 0o600),
}
CONTROL_ID = FILES[b"control"][0]
NAMES = {nodeid: name for name, (nodeid, _) in FILES.items()}
COMMANDS = {
    "drop_caches": "evict every page from the page cache (each is put into cleancache)",
    "flush": "invalidate the whole cleancache pool (frontswap's pages are written back to SRC first)",
    "reset_stats": "zero the event counters",
    "register": "register NAME[+NAME] [cc_size=SIZE] [opt=value ...]: make a backend live (EBUSY if one is)",
    "replace": "replace NAME[+NAME] [opts]: flush and close the live backend, register another",
    "unregister": "flush and close the live backend (frontswap's pages go back to SRC first); reads go on from SRC",
    "set": "set KEY=VALUE [KEY=VALUE]: change the live mount's cache_size or cc_size (SIZE), or a host client's "
           "cc_weight (1-1000) or cc_cap (SIZE, or none)",
    "take-back": "take-back SIZE: a host client (cc_host=): the host's budget shrinks by SIZE now, ephemeral pages go",
    "give-back": "give-back SIZE: a host client: return up to SIZE taken back to the host's budget",
}
TAKES_ARGS = {"register", "replace", "set", "take-back", "give-back"}
ALONE = {"register", "replace", "unregister", "set", "take-back", "give-back"}  # must be the only command of a write
SETTINGS = ("cache_size", "cc_size", "cc_weight", "cc_cap")  # what `set` changes
Setting = int | None  # bytes, a weight, or None: no cc_cap
MAX_WRITE = 4096  # a write this size is one FUSE request (max_write is never below a page): all or nothing
SHOWN = 200  # characters of a refused write quoted in the log
MAX_REASON = 1000  # characters of a reason (one quoting a long word of the write is cut)


class Refused(pyfuse3.FUSEError):
    """A control command refused: the errno of the write, and the reason its writer reads back."""

    def __new__(cls, reason: str, code: int = errno.EINVAL) -> Refused:
        return super().__new__(cls, code)  # pyfuse3's __cinit__ takes the errno alone

    def __init__(self, reason: str, code: int = errno.EINVAL) -> None:
        super().__init__(code)
        self.reason = reason


def printable(data: bytes, limit: int = SHOWN) -> str:
    """One log-safe line: control characters and non-ASCII bytes escaped, long text cut."""
    text = data[:limit].rstrip(b"\n").decode("latin-1")
    shown = "".join(c if " " <= c <= "~" else "\\n" if c == "\n" else f"\\x{ord(c):02x}" for c in text)
    return shown + ("..." if len(data) > limit else "")


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
    content: bytes = b""  # the snapshot, or (control) the outcome of this handle's last write
    start: int | None = 0  # the offset content starts at: the first read after a write sets it

    def read(self, offset: int, size: int) -> bytes:
        """Content from offset 0 (pread) or from the file position of the first read after a write
        (the position there depends on what this handle wrote and read before: `exec 3<>control`)."""
        if self.start is None:
            self.start = offset
        if offset >= self.start:
            offset -= self.start
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
        try:
            for command in parse_commands(data):
                await self._run(command)
        except Refused as exc:
            reason = printable(exc.reason.encode(), limit=MAX_REASON)
            log.warning('control: refused "%s": %s', printable(data), reason)
            handle.content = f"{errno.errorcode[exc.errno]}: {reason}\n".encode()
            raise
        except Exception as exc:
            handle.content = failure(exc)
            raise
        finally:
            handle.start = None
        handle.content = b"ok\n"
        return len(data)


def failure(exc: Exception) -> bytes:
    """The outcome of a write that failed otherwise than by a refusal (the request handler logs it)."""
    code = getattr(exc, "errno", None) or errno.EIO
    return f"{errno.errorcode.get(code, 'EIO')}: {os.strerror(code)} (see the tmemfs log)\n".encode()


def parse_commands(data: bytes) -> list[list[str]]:
    """Commands (as words) in a write to `control`; Refused (EINVAL), running none, if any is wrong."""
    if len(data) > MAX_WRITE:
        raise Refused(f"{len(data)} bytes: a write of commands takes at most {MAX_WRITE}")
    try:
        text = data.decode("ascii")
    except UnicodeDecodeError as exc:
        raise Refused(f"not ASCII text (byte 0x{data[exc.start]:02x} at offset {exc.start})") from None
    commands = [line.split() for line in text.splitlines() if line.strip()]
    if not commands:
        raise Refused(f"no command (commands: {', '.join(COMMANDS)})")
    for words in commands:
        check_command(words, len(commands))
    return commands


def check_command(words: list[str], count: int) -> None:
    """Refused if one command of a write of `count` is unknown, has wrong arguments or is not alone."""
    name = words[0]
    if name not in COMMANDS:
        raise Refused(f'unknown command "{name}" (commands: {", ".join(COMMANDS)})')
    if name in TAKES_ARGS and len(words) == 1:
        raise Refused(f"{name} needs arguments: {COMMANDS[name]}")
    if name not in TAKES_ARGS and len(words) > 1:
        raise Refused(f"{name} takes no arguments")
    if name in ALONE and count > 1:
        raise Refused(f"{name} must be alone in a write (this one has {count} commands)")
    if name == "set":
        parse_set(words[1:])
    if name in ("take-back", "give-back"):
        parse_amount(words)


def parse_amount(words: list[str]) -> int:
    """The SIZE of take-back and give-back."""
    if len(words) != 2:
        raise Refused(f"{words[0]} takes one SIZE")
    try:
        nbytes = parse_size("SIZE", words[1])
    except OptionError as exc:
        raise Refused(f"{words[0]}: {exc}") from None
    if nbytes == 0:
        raise Refused(f"{words[0]}: SIZE must be above 0")
    return nbytes


def parse_set(words: list[str]) -> dict[str, Setting]:
    """`set`'s KEY=VALUE words by key, values as the mount options take them (cc_cap=none: no cap)."""
    values: dict[str, Setting] = {}
    for word in words:
        key, sep, value = word.partition("=")
        if not sep or key not in SETTINGS:
            raise Refused(f'set: "{word}" is not KEY=VALUE with KEY one of {", ".join(SETTINGS)}')
        if key in values:
            raise Refused(f"set: {key} is given twice")
        values[key] = _setting(key, value)
    return values


def _setting(key: str, value: str) -> Setting:
    if key == "cc_cap" and value == "none":
        return None
    parse = {"cc_weight": parse_weight, "cc_cap": parse_cap}.get(key)
    try:
        return parse(value) if parse is not None else parse_size(key, value)
    except OptionError as exc:
        raise Refused(f"set: {exc}") from None
    except ValueError as exc:
        raise Refused(f"set: {key}={value}: {exc}") from None


class Commands:
    """What the control commands do to a mount's data path and cleancache."""

    def __init__(self, data: DataPath, cc_size: int, reset_fs_stats: Callable[[], None],
                 locked: bool = False) -> None:
        self.data = data
        self.locked = locked  # mlock: the page cache's memory cannot be given back
        self.cc_size = cc_size  # for a register without cc_size=: the mount's, or the last `set`
        self.reset_fs_stats = reset_fs_stats
        # What each setting is now, to put back when a later key of the same `set` is refused.
        self.sizes = {"cache_size": data.pc.capacity << PAGE_SHIFT, "cc_size": cc_size}

    async def run(self, words: list[str]) -> None:
        command = words[0]
        if command == "drop_caches":
            await self.data.drop_caches()
        elif command == "flush":
            await self.data.flush_pool()
        elif command == "reset_stats":
            self.reset_stats()
        elif command == "unregister":
            if await self.data.cc.unregister() is None:
                raise Refused("no backend is registered")
        elif command == "set":
            await self.set(parse_set(words[1:]))
        elif command in ("take-back", "give-back"):
            self.move_budget(command, parse_amount(words))
        else:
            await self.register(words[1:], replace=command == "replace")
        log.info("control: %s", " ".join(words))

    def move_budget(self, command: str, nbytes: int) -> None:
        backend = self.data.cc.backend
        if backend is None:
            raise Refused(f"{command}: no backend is registered")
        try:
            moved = backend.take_back(nbytes) if command == "take-back" else backend.give_back(nbytes)
        except ValueError as exc:
            raise Refused(str(exc)) from None
        log.info("control: %s %d: %d bytes", command, nbytes, moved)

    def reset_stats(self) -> None:
        cc = self.data.cc
        self.data.reset_stats()
        self.data.pc.reset_counters()
        cc.reset_stats()
        if cc.backend is not None:
            cc.backend.reset_stats()
        self.reset_fs_stats()

    async def register(self, words: list[str], replace: bool) -> None:
        try:
            names, cc_size, options = parse_register(words, self.cc_size, registry.load)
            backend = registry.build(names, cc_size, options)
        except (OptionError, TypeError, ValueError, ImportError) as exc:
            raise Refused(str(exc) or type(exc).__name__) from None
        assert backend is not None
        try:
            await self.data.cc.register(backend, replace=replace)
        except BackendBusy as exc:
            await backend.close()
            raise Refused(str(exc), errno.EBUSY) from None
        self.sizes["cc_size"] = cc_size

    async def set(self, values: dict[str, Setting]) -> None:
        """Change each setting in turn; when one is refused, those already changed go back."""
        done: list[tuple[str, Setting]] = []
        for key, value in values.items():
            try:
                before = await self.change(key, value)
            except ValueError as exc:
                undone = await self.undo(done)
                reason = str(exc) if str(exc).startswith(key) else f"{key}: {exc}"
                raise Refused(reason + undone) from None
            done.append((key, before))
        cc_size = values.get("cc_size")
        if cc_size is not None:
            self.cc_size = cc_size

    async def change(self, key: str, value: Setting) -> Setting:
        """One setting changed; what it was (ValueError, one line, if refused)."""
        if key in ("cc_weight", "cc_cap"):
            backend = self.data.cc.backend
            if backend is None:
                raise ValueError("no backend is registered")
            if key == "cc_cap":
                return backend.set_cap(value)
            assert value is not None  # only cc_cap may be none (parse_set)
            return backend.set_weight(value)
        assert value is not None
        if key == "cache_size":
            if self.locked and value < self.sizes["cache_size"]:
                raise ValueError("cache_size cannot shrink on a mount with mlock (its memory is locked); remount")
            await self.data.set_cache_size(value)
        else:
            await self.data.cc.set_cc_size(value)
        before, self.sizes[key] = self.sizes[key], value
        return before

    async def undo(self, done: list[tuple[str, Setting]]) -> str:
        """Put back what a refused `set` changed; what could not be put back, for the reason."""
        for key, value in reversed(done):
            try:
                await self.change(key, value)
            except ValueError as exc:
                return f" (and {key} stays changed: putting it back was refused: {exc})"
        return ""
