"""The pyfuse3 Operations of tmemfs: metadata passes straight to SRC, data goes
through the data path (page cache + cleancache).

Many requests are served at once (max_requests=); every handler is
wrapped by `handler`, which counts it in flight (SrcIO runs blocking calls
on SRC off the loop only while others are) and maps errors: an OSError
becomes FUSEError(errno), anything else is logged with its traceback and
becomes EIO. No exception ever reaches pyfuse3, which would end the mount.
The one exception to the wrapping is `read`, which answers a page-cache
hit without awaiting anything (the hot path), maps that path's errors
itself by the same rule, and hands every other read to the wrapped `_read`.
"""

from __future__ import annotations

import errno
import functools
import inspect
import logging
import os
import stat
import time
from collections.abc import Callable, Coroutine, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import Any, ParamSpec, TypeVar

import pyfuse3
import trio
from pyfuse3 import FUSEError

from backends.base import StatValue
from fusefs import __version__
from fusefs.control import CONTROL_DIR_NAME, DIR_ID, Commands, ControlFiles, ControlHandle, is_control
from fusefs.datapath import DataPath
from fusefs.frontswap import SwapArea
from fusefs.fusectl import KERNEL_MAX_BACKGROUND
from fusefs.inodes import CHILD_OPEN_FLAGS, Inode, InodeTable, file_key
from fusefs.options import MountConfig
from fusefs.pagecache import CachedFile
from fusefs.polling import RequestPoller
from fusefs.pooluuid import XATTR
from fusefs.syscalls import creating_as, fchown_empty, link_empty, renameat2, utimens_empty

log = logging.getLogger("tmemfs")

T = TypeVar("T")
P = ParamSpec("P")
# Flags that must not reach the backing open: tmemfs creates and truncates
# itself, a caller's O_DIRECT would make preadv into the page cache fail (the
# stock pyfuse3 example dies on it), and O_NOFOLLOW (which the kernel already
# applied to the caller's path) would refuse the /proc/self/fd link that
# reopens an O_PATH descriptor (ELOOP). O_APPEND stays: an append must land at
# SRC's end as it is when it happens, not where this kernel's cached size says
# (another node, or a program writing to SRC directly, may have appended since).
_STRIP_OPEN = os.O_CREAT | os.O_EXCL | os.O_NOCTTY | os.O_TRUNC | os.O_DIRECT | os.O_NOFOLLOW


def _open_at(name: bytes, flags: int, dir_fd: int) -> int:
    return os.open(name, flags, dir_fd=dir_fd)


def handler(fn: Callable[P, Coroutine[Any, Any, T]]) -> Callable[P, Coroutine[Any, Any, T]]:
    """Map errors to FUSEError so that no exception ever ends the mount.

    The wrapper carries a request-logging twin (`.logged`, see `with_request_log`) instead
    of testing a debug flag, so that a mount that does not log requests pays nothing for it.
    """

    @functools.wraps(fn)
    async def wrapper(*args: P.args, **kwargs: P.kwargs) -> T:
        io = args[0].data.io  # type: ignore[attr-defined]
        io.in_flight += 1
        if io.in_flight > io.peak_in_flight:
            io.peak_in_flight = io.in_flight
        try:
            return await fn(*args, **kwargs)
        except FUSEError:
            raise
        except Exception as exc:
            raise _reply_for(exc, fn.__name__, args) from None
        finally:
            io.in_flight -= 1

    wrapper.logged = _logging_twin(fn.__name__, wrapper)  # type: ignore[attr-defined]
    return wrapper


def handles_own_errors(fn: Callable[P, Coroutine[Any, Any, T]]) -> Callable[P, Coroutine[Any, Any, T]]:
    """A handler that maps its errors itself (with `_reply_for`) and leaves anything that may
    wait to a `handler`-wrapped helper (counted in flight there), so that its fast path pays
    no wrapper coroutine. It gets the same request-logging twin as every `handler`."""
    fn.logged = _logging_twin(fn.__name__, fn)  # type: ignore[attr-defined]
    return fn


def _reply_for(exc: Exception, name: str, args: tuple[Any, ...]) -> FUSEError:
    """The error a handler replies for `exc`: its errno for an OSError; EIO, logged with its
    traceback and counted, for anything else (a bug: the mount goes on)."""
    if isinstance(exc, OSError):
        return FUSEError(exc.errno or errno.EIO)
    ops = args[0]
    assert isinstance(ops, TmemOperations)
    ops.internal_errors += 1
    log.error("internal error in %s%r; replied EIO", name, args[1:4], exc_info=exc)
    return FUSEError(errno.EIO)


request_log = logging.getLogger("tmemfs.requests")
# Arguments a request line shows (libfuse -d's nodeid, offset, size), by parameter name.
_SHOWN_ARGS = {"inode", "parent_inode", "parent_inode_old", "parent_inode_new", "new_parent_inode",
               "fh", "off", "size", "buf", "start_id"}


def _logging_twin(name: str, wrapper: Callable[P, Coroutine[Any, Any, T]]) -> Callable[P, Coroutine[Any, Any, T]]:
    """`wrapper`, logging one line per request: opcode, arguments, result (see _outcome, or the errno name),
    microseconds."""
    params = list(inspect.signature(wrapper).parameters)[1:]  # after self
    shown = [(i, p) for i, p in enumerate(params, 1) if p in _SHOWN_ARGS]

    @functools.wraps(wrapper)
    async def logged(*args: P.args, **kwargs: P.kwargs) -> T:
        start = time.perf_counter_ns()
        described = _describe(args, shown)  # before the call: release forgets the handle
        result = "ok"
        try:
            value = await wrapper(*args, **kwargs)
            result = _outcome(value)
            return value
        except FUSEError as exc:
            result = errno.errorcode.get(exc.errno, str(exc.errno))
            raise
        except BaseException as exc:  # trio.Cancelled at unmount
            result = type(exc).__name__
            raise
        finally:
            request_log.debug("%s%s: %s %dus", name, described, result, (time.perf_counter_ns() - start) // 1000)

    return logged


def _outcome(value: object) -> str:
    """What a request returned, as libfuse -d shows it: the bytes read or written, the size and handle the
    kernel was given (and whether it may keep its cached copy), so that a log explains what the kernel saw."""
    if isinstance(value, bytes | bytearray | memoryview):
        return f"ok {len(value)} bytes"
    if isinstance(value, int):
        return f"ok {value}"
    parts = value if isinstance(value, tuple) else (value,)
    words = ["ok"]
    for part in parts:
        if isinstance(part, pyfuse3.FileInfo):
            words.append(f"fh={part.fh}" + (" keep_cache" if part.keep_cache else "")
                         + (" direct_io" if part.direct_io else ""))
        elif isinstance(part, pyfuse3.EntryAttributes):
            words.append(f"ino={part.st_ino} size={part.st_size}")
    return " ".join(words)


def _describe(args: tuple[Any, ...], shown: list[tuple[int, str]]) -> str:
    """` inode=5 fh=3 off=0 size=4096` of a request (a file handle also names its inode)."""
    words = []
    for i, param in shown:
        if i >= len(args):
            continue
        value = args[i]
        if param == "buf":
            words.append(f" size={len(value)}")
            continue
        words.append(f" {param}={value}")
        if param == "fh":
            ops = args[0]
            node = getattr(ops.handles.get(value) or ops.dirs.get(value), "inode", None)
            if node is not None:
                words.append(f" inode={node.nodeid}")
    return "".join(words)


def with_request_log(cls: type[TmemOperations]) -> type[TmemOperations]:
    """A subclass of `cls` whose handlers log every request at debug level (-d, log_level=debug):
    the requests pyfuse3 calls, once each (not the helpers a request goes on to, as _read)."""
    twins = {name: attr.logged for name, attr in vars(cls).items()
             if hasattr(attr, "logged") and hasattr(pyfuse3.Operations, name)}
    return type(cls.__name__, (cls,), twins)


@dataclass(eq=False, slots=True)
class OpenFile:
    inode: Inode
    fd: int
    read_fd: int  # fd, or an O_DIRECT twin with backing_io=direct
    cached: CachedFile
    kill_priv: bool = False  # opened by a caller without CAP_FSETID (not root)
    append: bool = False  # O_APPEND: every write lands at SRC's end (fd is O_APPEND too)
    # Served through the kernel's page cache (kernel_cache): the kernel keeps what a read
    # returns, so a read must not return bytes older than a write already in flight.
    kernel_cached: bool = False

    def close(self) -> None:
        if self.read_fd != self.fd:
            os.close(self.read_fd)
        os.close(self.fd)


@dataclass(eq=False, slots=True)
class SwapHandle:
    """An open swap file (frontswap=): its I/O goes to the area, around the page cache."""

    inode: Inode
    area: SwapArea


def _direct_twin(fd: int) -> int:
    """A read-only O_DIRECT descriptor of the file open on `fd`; `fd` itself where SRC has
    no O_DIRECT (tmpfs)."""
    try:
        return os.open(f"/proc/self/fd/{fd}", os.O_RDONLY | os.O_DIRECT | os.O_CLOEXEC)
    except OSError:
        return fd


@dataclass(eq=False, slots=True)
class OpenDir:
    inode: Inode
    fd: int
    names: list[bytes]


POOL_UUID_XATTR = XATTR.encode()


class TmemOperations(pyfuse3.Operations):
    supports_dot_lookup = True
    enable_writeback_cache = False
    # POSIX ACLs of SRC are enforced: without this the kernel checks the mode bits
    # only, whose group class is the ACL mask, so a restrictive group:: entry (or a
    # named deny) would be bypassed through the mount.
    enable_acl = True

    def __init__(self, root_fd: int, config: MountConfig, data: DataPath, src: str) -> None:
        super().__init__()
        self.config = config
        self.inodes = InodeTable(root_fd)
        self.data = data
        self.src = src
        self.mountpoint = ""  # MNT, set by the command line once mounted (names the mount in metrics)
        self.uid = os.geteuid()
        self.handles: dict[int, OpenFile | SwapHandle | ControlHandle] = {}
        self.dirs: dict[int, OpenDir | None] = {}
        self._next_fh = 1
        self.internal_errors = 0
        self.started = time.monotonic()
        commands = Commands(data, config.cc_size, self.reset_stats, config.mlock)
        self.control = ControlFiles(self.collect_stats, commands.run, self.uid, config.attr_timeout)
        self.ready: Callable[[], None] | None = None
        self.poller: RequestPoller | None = None  # set when poll_us= took over pyfuse3's wait
        self.max_background = KERNEL_MAX_BACKGROUND  # the kernel's limit in force (fusefs/fusectl.py)
        self.nursery: trio.Nursery | None = None  # for work after a reply (set while mounted)

    def init(self) -> None:
        """FUSE INIT done: the mount answers requests (the daemon's parent may exit)."""
        if self.ready is not None:
            self.ready()

    # -- helpers ---------------------------------------------------------------

    def _entry(self, inode: Inode, st: os.stat_result) -> pyfuse3.EntryAttributes:
        attr = pyfuse3.EntryAttributes()
        attr.st_ino = inode.nodeid
        attr.generation = 0
        attr.entry_timeout = self.config.entry_timeout
        attr.attr_timeout = self.config.attr_timeout
        attr.st_mode = st.st_mode
        attr.st_nlink = st.st_nlink
        attr.st_uid = st.st_uid
        attr.st_gid = st.st_gid
        attr.st_rdev = st.st_rdev
        attr.st_size = st.st_size
        attr.st_blksize = st.st_blksize
        attr.st_blocks = st.st_blocks
        attr.st_atime_ns = st.st_atime_ns
        attr.st_mtime_ns = st.st_mtime_ns
        attr.st_ctime_ns = st.st_ctime_ns
        return attr

    def _fh(self, value: object) -> int:
        fh = self._next_fh
        self._next_fh += 1
        if isinstance(value, OpenDir) or value is None:
            self.dirs[fh] = value
        else:
            self.handles[fh] = value  # type: ignore[assignment]
        return fh

    def _check_name(self, parent: int, name: bytes) -> None:
        """The control directory shadows SRC's `.tmemfs`: it cannot be made or removed."""
        if parent == pyfuse3.ROOT_INODE and name == CONTROL_DIR_NAME:
            raise FUSEError(errno.EPERM)
        if is_control(parent):
            raise FUSEError(errno.EPERM)

    def _as_caller(self, ctx: pyfuse3.RequestContext) -> AbstractContextManager[None]:
        """Make objects owned by the caller, born so (no chown); an unprivileged daemon
        cannot, and makes them as itself, like any user."""
        return creating_as(ctx.uid, ctx.gid) if self.uid == 0 else nullcontext()

    def _new_entry(self, parent: Inode, name: bytes, made_fd: int | None = None) -> pyfuse3.EntryAttributes:
        """The entry of an object just made; `made_fd`, an open descriptor of it, names the
        very object even if SRC swapped another in under the name meanwhile."""
        if made_fd is None:
            inode, st = self.inodes.open_child(parent, name)
        else:
            inode, st = self.inodes.open_made(made_fd)
        inode.nlookup += 1
        return self._entry(inode, st)

    async def _invalidate_replaced(self, parent: Inode, name: bytes) -> bytes | None:
        """Key of the file `name` if removing that name removes the file's last link."""
        try:
            st = os.stat(name, dir_fd=parent.fd, follow_symlinks=False)
        except FileNotFoundError:
            return None
        if not stat.S_ISREG(st.st_mode) or st.st_nlink != 1:
            return None
        known = self.inodes.by_devino.get((st.st_dev, st.st_ino))
        if known is not None:
            return self.inodes.key(known)
        return file_key(parent.fd, name, st.st_dev, st.st_ino, self.inodes.root_dev)

    async def _deleted(self, key: bytes | None) -> None:
        """The last link of a file went: flush it from the pool even if nothing is cached
        here (the CVE-2018-16862 fix)."""
        if key is not None:
            await self.data.invalidate_file(key)
            await self.data.forget_file(key)

    # -- lookups and attributes ----------------------------------------------------

    @handler
    async def lookup(self, parent_inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        if is_control(parent_inode) or (parent_inode == pyfuse3.ROOT_INODE and name == CONTROL_DIR_NAME):
            if parent_inode == DIR_ID and name == b"..":
                return await self.getattr(pyfuse3.ROOT_INODE, ctx)
            return self.control.lookup(parent_inode, name)
        parent = self.inodes.get(parent_inode)
        if name == b"." or (name == b".." and parent is self.inodes.root):
            inode, st = parent, os.fstat(parent.fd)
        else:
            fd = await self.data.io.call_meta(parent.dev, _open_at, name, CHILD_OPEN_FLAGS, parent.fd)
            inode, st = self.inodes.adopt_opened(fd)
        inode.nlookup += 1
        return self._entry(inode, st)

    @handler
    async def forget(self, inode_list: Sequence[tuple[int, int]]) -> None:
        for nodeid, count in inode_list:
            if not is_control(nodeid):
                self.inodes.forget(nodeid, count)

    @handler
    async def getattr(self, inode: int, ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        if is_control(inode):
            return self.control.getattr(inode)
        node = self.inodes.get(inode)
        return self._entry(node, os.fstat(node.fd))

    @handler
    async def setattr(self, inode: int, attr: pyfuse3.EntryAttributes, fields: pyfuse3.SetattrFields,
                      fh: int | None, ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        if is_control(inode):
            if fields.update_mode or fields.update_uid or fields.update_gid:
                raise FUSEError(errno.EPERM)
            return self.control.getattr(inode)  # `echo cmd > control` truncates first: fine
        node = self.inodes.get(inode)
        proc_path = f"/proc/self/fd/{node.fd}"
        is_link = node.kind == stat.S_IFLNK
        before = os.fstat(node.fd)
        if fields.update_uid or fields.update_gid:
            fchown_empty(node.fd, attr.st_uid if fields.update_uid else -1,
                         attr.st_gid if fields.update_gid else -1)
        if fields.update_mode:
            if is_link:
                raise FUSEError(errno.EOPNOTSUPP)
            os.chmod(proc_path, stat.S_IMODE(attr.st_mode))
        if fields.update_size:
            handle = self.handles.get(fh) if fh is not None else None
            target: int | str = handle.fd if isinstance(handle, OpenFile) else proc_path
            await self.data.truncate(self.inodes.key(node), target, attr.st_size)
            before = os.fstat(node.fd)  # what the truncate stamped
        if fields.update_atime or fields.update_mtime:
            utimens_empty(node.fd, attr.st_atime_ns if fields.update_atime else None,
                          attr.st_mtime_ns if fields.update_mtime else None)
        after = os.fstat(node.fd)
        if node.kind == stat.S_IFREG:  # our own change, not one behind our back
            self.data.restamp(self.inodes.key(node), before, after)
        return self._entry(node, after)

    @handler
    async def readlink(self, inode: int, ctx: pyfuse3.RequestContext) -> bytes:
        return os.readlink(b"", dir_fd=self.inodes.get(inode).fd)

    @handler
    async def access(self, inode: int, mode: int, ctx: pyfuse3.RequestContext) -> bool:
        """Only called without default_permissions: check mode bits like the kernel."""
        if is_control(inode):
            return True
        st = os.fstat(self.inodes.get(inode).fd)
        if ctx.uid == 0:
            return not (mode & os.X_OK) or stat.S_ISDIR(st.st_mode) or bool(st.st_mode & 0o111)
        if ctx.uid == st.st_uid:
            bits = (st.st_mode >> 6) & 7
        elif st.st_gid == ctx.gid or st.st_gid in pyfuse3.get_sup_groups(ctx.pid):
            bits = (st.st_mode >> 3) & 7
        else:
            bits = st.st_mode & 7
        return mode & bits == mode

    # -- namespace -------------------------------------------------------------------

    @handler
    async def mknod(self, parent_inode: int, name: bytes, mode: int, rdev: int,
                    ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        self._check_name(parent_inode, name)
        parent = self.inodes.get(parent_inode)
        with self._as_caller(ctx):
            os.mknod(name, mode, rdev, dir_fd=parent.fd)
        return self._new_entry(parent, name)

    @handler
    async def mkdir(self, parent_inode: int, name: bytes, mode: int,
                    ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        self._check_name(parent_inode, name)
        parent = self.inodes.get(parent_inode)
        with self._as_caller(ctx):
            os.mkdir(name, mode, dir_fd=parent.fd)
        return self._new_entry(parent, name)

    @handler
    async def symlink(self, parent_inode: int, name: bytes, target: bytes,
                      ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        self._check_name(parent_inode, name)
        parent = self.inodes.get(parent_inode)
        with self._as_caller(ctx):
            os.symlink(target, name, dir_fd=parent.fd)
        return self._new_entry(parent, name)

    @handler
    async def link(self, inode: int, new_parent_inode: int, new_name: bytes,
                   ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        self._check_name(new_parent_inode, new_name)
        if is_control(inode):
            raise FUSEError(errno.EPERM)
        node = self.inodes.get(inode)
        link_empty(node.fd, self.inodes.get(new_parent_inode).fd, new_name)
        node.nlookup += 1
        return self._entry(node, os.fstat(node.fd))

    @handler
    async def unlink(self, parent_inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> None:
        self._check_name(parent_inode, name)
        parent = self.inodes.get(parent_inode)
        key = await self._invalidate_replaced(parent, name)
        if key is not None:
            await self.data.admit_change()
        os.unlink(name, dir_fd=parent.fd)
        await self._deleted(key)

    @handler
    async def rmdir(self, parent_inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> None:
        self._check_name(parent_inode, name)
        os.rmdir(name, dir_fd=self.inodes.get(parent_inode).fd)

    @handler
    async def rename(self, parent_inode_old: int, name_old: bytes, parent_inode_new: int,
                     name_new: bytes, flags: int, ctx: pyfuse3.RequestContext) -> None:
        self._check_name(parent_inode_old, name_old)
        self._check_name(parent_inode_new, name_new)
        old_parent = self.inodes.get(parent_inode_old)
        new_parent = self.inodes.get(parent_inode_new)
        replaced = None
        if not flags & pyfuse3.RENAME_EXCHANGE:
            replaced = await self._invalidate_replaced(new_parent, name_new)
            if replaced is not None:
                source = os.stat(name_old, dir_fd=old_parent.fd, follow_symlinks=False)
                target = os.stat(name_new, dir_fd=new_parent.fd, follow_symlinks=False)
                if (source.st_dev, source.st_ino) == (target.st_dev, target.st_ino):
                    replaced = None  # rename onto a hard link of itself: nothing goes
        if replaced is not None:
            await self.data.admit_change()
        renameat2(old_parent.fd, name_old, new_parent.fd, name_new, int(flags))
        await self._deleted(replaced)

    # -- files -------------------------------------------------------------------------

    @handler
    async def open(self, inode: int, flags: int, ctx: pyfuse3.RequestContext) -> pyfuse3.FileInfo:
        if is_control(inode):
            return pyfuse3.FileInfo(fh=self._fh(self.control.open(inode, flags, ctx)), direct_io=True)
        node = self.inodes.get(inode)
        fd = await self.data.io.call_meta(node.dev, os.open, f"/proc/self/fd/{node.fd}",
                                         (flags & ~_STRIP_OPEN) | os.O_CLOEXEC)
        return await self._opened(node, fd, flags, ctx)

    async def _opened(self, node: Inode, fd: int, flags: int, ctx: pyfuse3.RequestContext) -> pyfuse3.FileInfo:
        truncating = flags & os.O_TRUNC and flags & os.O_ACCMODE != os.O_RDONLY
        if self.data.frontswap.is_swap(node.dev, node.ino):
            return await self._opened_swap(node, fd, bool(truncating))
        read_fd = fd
        cached = None
        try:
            key = self.inodes.key(node)
            cached, unchanged = await self.data.open_file(key, fd)
            if self.config.backing_direct and flags & os.O_ACCMODE != os.O_WRONLY:
                read_fd = _direct_twin(fd)
            if truncating:
                await self.data.truncate(key, fd, 0)
                if ctx.uid != 0:
                    self._kill_priv(node, fd)
        except BaseException:
            if read_fd != fd:
                os.close(read_fd)
            os.close(fd)
            if cached is not None:
                self.data.close_file(cached, None)
            raise
        node.nopen += 1
        kernel_cached = self.config.kernel_cache and not flags & os.O_APPEND
        fh = self._fh(OpenFile(node, fd, read_fd, cached, kill_priv=ctx.uid != 0,
                               append=bool(flags & os.O_APPEND), kernel_cached=kernel_cached))
        if truncating and self.config.kernel_cache:
            # The kernel truncates its copy at an O_TRUNC open without its inode lock: an append
            # racing the open leaves it a size guessed from before. Set right after the reply.
            self._after_reply(self._forget_kernel_copy, node.nodeid)
        if not kernel_cached:
            # An append lands where SRC ends, which the kernel may not know (a writer behind
            # our back): through the kernel's cache, its copy at the guessed offset would be
            # served to this descriptor's next read before anything could drop it.
            return pyfuse3.FileInfo(fh=fh, direct_io=True, keep_cache=False)
        # Close-to-open for the kernel's copy too: kept only while SRC is as we last saw it.
        return pyfuse3.FileInfo(fh=fh, keep_cache=unchanged and not truncating)

    async def _opened_swap(self, node: Inode, fd: int, truncating: bool) -> pyfuse3.FileInfo:
        """A swap file opened: its area (the open checked the caller's access; the area has a
        descriptor of its own), never through the kernel's page cache."""
        frontswap = self.data.frontswap
        try:
            area = frontswap.open(self.inodes.key(node), node.fd)
        finally:
            os.close(fd)
        try:
            if truncating:
                await frontswap.truncate(area, 0)
        except BaseException:
            await frontswap.close(area)
            raise
        node.nopen += 1
        return pyfuse3.FileInfo(fh=self._fh(SwapHandle(node, area)), direct_io=True, keep_cache=False)

    @handler
    async def create(self, parent_inode: int, name: bytes, mode: int, flags: int,
                     ctx: pyfuse3.RequestContext) -> tuple[pyfuse3.FileInfo, pyfuse3.EntryAttributes]:
        self._check_name(parent_inode, name)
        parent = self.inodes.get(parent_inode)
        open_flags = (flags & ~_STRIP_OPEN) | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        try:
            with self._as_caller(ctx):
                fd = os.open(name, open_flags, stat.S_IMODE(mode), dir_fd=parent.fd)
        except FileExistsError:
            # The kernel saw no such name but SRC has one now: never open it for the
            # caller with the daemon's access, skipping the permission check. ESTALE makes the VFS redo
            # the lookup (LOOKUP_REVAL) and open the file like any existing one.
            raise FUSEError(errno.EEXIST if flags & os.O_EXCL else errno.ESTALE) from None
        try:
            attr = self._new_entry(parent, name, made_fd=fd)
        except BaseException:
            os.close(fd)
            raise
        node = self.inodes.get(attr.st_ino)
        try:  # (the file is new, so O_TRUNC has nothing to do)
            info = await self._opened(node, fd, flags & ~os.O_TRUNC, ctx)
        except BaseException:
            self.inodes.forget(node.nodeid, 1)
            raise
        return info, self._entry(node, os.fstat(node.fd))

    @handles_own_errors
    async def read(  # type: ignore[override]  # pyfuse3 replies from any buffer, not only bytes
        self, fh: int, off: int, size: int
    ) -> bytes | bytearray | memoryview:
        """A page-cache hit is answered here, without awaiting anything, so it needs no
        `handler` around it (that coroutine was a seventh of a hit's cost); the rest goes
        to `_read`."""
        handle = self.handles.get(fh)
        if type(handle) is OpenFile and not (handle.kernel_cached and handle.cached.changing):
            try:
                hit = self.data.read_hit(handle.cached, off, size)
            except Exception as exc:
                raise _reply_for(exc, "read", (self, fh, off, size)) from None
            if hit is not None:
                return hit
        return await self._read(fh, off, size)

    @handler
    async def _read(self, fh: int, off: int, size: int) -> bytes | bytearray | memoryview:
        handle = self.handles[fh]
        if handle.__class__ is OpenFile:
            if handle.kernel_cached and handle.cached.changing:
                # The write's page may have been dropped by the kernel (a revalidation) and read
                # again while the write is on its way: our reply would outlive the write there.
                await handle.cached.changes_landed()
            return await self.data.read(handle.cached, handle.read_fd, off, size)
        if handle.__class__ is SwapHandle:
            return await self.data.frontswap.read(handle.area, off, size)
        return handle.read(off, size)  # type: ignore[union-attr]

    @handler
    async def write(self, fh: int, off: int, buf: bytes) -> int:
        handle = self.handles[fh]
        if isinstance(handle, OpenFile):
            if handle.kill_priv:
                self._kill_priv(handle.inode, handle.fd)
            landed, done = await self.data.write(handle.cached, handle.fd, off, buf, handle.append)
            if landed != off:
                request_log.debug("write fh=%d inode=%d: appended at %d, not at the kernel's %d", fh,
                                  handle.inode.nodeid, landed, off)
                if self.config.kernel_cache:
                    self._after_reply(self._forget_kernel_copy, handle.inode.nodeid)
            return done
        if isinstance(handle, SwapHandle):
            return await self.data.frontswap.write(handle.area, off, buf)
        return await self.control.write(handle, buf)

    def _after_reply(self, fn: Callable[[int], Coroutine[Any, Any, None]], nodeid: int) -> None:
        if self.nursery is not None:
            self.nursery.start_soon(fn, nodeid)

    async def _forget_kernel_copy(self, nodeid: int) -> None:
        """An append landed elsewhere than the kernel guessed, and the kernel copied it into its
        page cache at the guess (kernel_cache): drop that copy. From a thread, after the reply:
        the kernel holds those pages locked until the write is answered."""
        try:
            await trio.to_thread.run_sync(pyfuse3.invalidate_inode, nodeid, False)
        except OSError:
            pass  # the kernel no longer knows the inode
        except Exception:  # a task of the mount's nursery must not raise: it would end the mount
            self.internal_errors += 1
            log.exception("could not drop the kernel's copy of inode %d", nodeid)

    def _kill_priv(self, node: Inode, fd: int) -> None:
        """Clear setuid, and setgid if group-executable, as a write by a caller without
        CAP_FSETID must. The kernel does it only for cached writes and plain truncates,
        not for direct_io writes nor an atomic O_TRUNC open; our root writes never do."""
        mode = os.fstat(fd).st_mode
        kill = mode & stat.S_ISUID | (mode & stat.S_ISGID if mode & stat.S_IXGRP else 0)
        if kill:
            os.fchmod(fd, stat.S_IMODE(mode) & ~kill)
            try:
                pyfuse3.invalidate_inode(node.nodeid, attr_only=True)  # no writeback cache: cannot block
            except OSError:
                pass  # the kernel no longer knows the inode

    @handler
    async def flush(self, fh: int) -> None:
        """Nothing to do: every write already reached SRC (write-through)."""

    @handler
    async def release(self, fh: int) -> None:
        handle = self.handles.pop(fh)
        if isinstance(handle, SwapHandle):
            try:
                await self.data.frontswap.close(handle.area)
            finally:
                handle.inode.nopen -= 1
                self.inodes.drop_if_unused(handle.inode)
            return
        if not isinstance(handle, OpenFile):
            return
        try:  # stamp a file this mount wrote again, for the close-to-open check
            st = os.fstat(handle.fd) if handle.cached.stamp is None else None
        except OSError:
            st = None
        handle.close()
        self.data.close_file(handle.cached, st)
        handle.inode.nopen -= 1
        self.inodes.drop_if_unused(handle.inode)

    @handler
    async def fsync(self, fh: int, datasync: bool) -> None:
        handle = self.handles[fh]
        if isinstance(handle, OpenFile | SwapHandle):
            fd = handle.fd if isinstance(handle, OpenFile) else handle.area.fd
            await self.data.io.call(os.fdatasync if datasync else os.fsync, fd)

    # -- directories ---------------------------------------------------------------------

    @handler
    async def opendir(self, inode: int, ctx: pyfuse3.RequestContext) -> int:
        if inode == DIR_ID:
            return self._fh(None)
        if is_control(inode):
            raise FUSEError(errno.ENOTDIR)
        node = self.inodes.get(inode)
        fd = os.open(".", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC, dir_fd=node.fd)
        try:
            names = [os.fsencode(n) for n in await self.data.io.call_meta(node.dev, os.listdir, fd)]
        except BaseException:
            os.close(fd)
            raise
        if node is self.inodes.root:
            names = [n for n in names if n != CONTROL_DIR_NAME]
        return self._fh(OpenDir(node, fd, [b".", b"..", *names]))  # SRC lists the dots too

    @handler
    async def readdir(self, fh: int, start_id: int, token: pyfuse3.ReaddirToken) -> None:
        handle = self.dirs[fh]
        if handle is None:  # the control directory
            entries = self.control.entries()
            for n in range(start_id, len(entries)):
                if not pyfuse3.readdir_reply(token, entries[n][0], entries[n][1], n + 1):
                    break
            return
        for n in range(start_id, len(handle.names)):
            name = handle.names[n]
            if name in (b".", b".."):
                if not pyfuse3.readdir_reply(token, name, self._dot_entry(handle.inode, name), n + 1):
                    break
                continue
            try:
                inode, st = self.inodes.open_child(handle.inode, name)
            except FileNotFoundError:
                continue  # removed since opendir
            if not pyfuse3.readdir_reply(token, name, self._entry(inode, st), n + 1):
                self.inodes.drop_if_unused(inode)
                break
            inode.nlookup += 1

    def _dot_entry(self, node: Inode, name: bytes) -> pyfuse3.EntryAttributes:
        """`.` or `..` of a listed directory. The kernel takes no lookup reference for
        them, so no Inode is made; `..` of the root is the root."""
        if name == b"." or node is self.inodes.root:
            return self._entry(node, os.fstat(node.fd))
        st = os.stat(b"..", dir_fd=node.fd)
        attr = self._entry(node, st)
        parent = self.inodes.by_devino.get((st.st_dev, st.st_ino))
        attr.st_ino = parent.nodeid if parent is not None else st.st_ino
        return attr

    @handler
    async def releasedir(self, fh: int) -> None:
        handle = self.dirs.pop(fh)
        if handle is not None:
            os.close(handle.fd)

    @handler
    async def fsyncdir(self, fh: int, datasync: bool) -> None:
        handle = self.dirs[fh]
        if handle is not None:
            os.fsync(handle.fd)

    @handler
    async def statfs(self, ctx: pyfuse3.RequestContext) -> pyfuse3.StatvfsData:
        st = os.fstatvfs(self.inodes.root.fd)
        out = pyfuse3.StatvfsData()
        for name in ("f_bsize", "f_frsize", "f_blocks", "f_bfree", "f_bavail",
                     "f_files", "f_ffree", "f_favail", "f_namemax"):
            setattr(out, name, getattr(st, name))
        return out

    # -- extended attributes ----------------------------------------------------------------

    def _xattr_path(self, inode: int) -> str:
        if is_control(inode):
            raise FUSEError(errno.ENOTSUP)
        node = self.inodes.get(inode)
        if node.kind == stat.S_IFLNK:
            raise FUSEError(errno.ENOTSUP)  # reaching a symlink through /proc would follow it
        return f"/proc/self/fd/{node.fd}"

    def _own_xattr(self, inode: int, name: bytes) -> bool:
        """The pool uuid kept on SRC's root: tmemfs's, not the user's, so hidden."""
        return inode == pyfuse3.ROOT_INODE and name == POOL_UUID_XATTR

    @handler
    async def setxattr(self, inode: int, name: bytes, value: bytes, ctx: pyfuse3.RequestContext) -> None:
        if self._own_xattr(inode, name):
            raise FUSEError(errno.EPERM)
        os.setxattr(self._xattr_path(inode), name, value)

    @handler
    async def getxattr(self, inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> bytes:
        if self._own_xattr(inode, name):
            raise FUSEError(pyfuse3.ENOATTR)
        try:
            return os.getxattr(self._xattr_path(inode), name)
        except FUSEError as exc:
            if exc.errno == errno.ENOTSUP:
                raise FUSEError(pyfuse3.ENOATTR) from None
            raise

    @handler
    async def listxattr(self, inode: int, ctx: pyfuse3.RequestContext) -> list[bytes]:
        try:
            names = [os.fsencode(n) for n in os.listxattr(self._xattr_path(inode))]
            return [n for n in names if not self._own_xattr(inode, n)]
        except FUSEError as exc:
            if exc.errno == errno.ENOTSUP:
                return []
            raise

    @handler
    async def removexattr(self, inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> None:
        if self._own_xattr(inode, name):
            raise FUSEError(errno.EPERM)
        os.removexattr(self._xattr_path(inode), name)

    # -- stats and control -----------------------------------------------------------------

    def reset_stats(self) -> None:
        self.internal_errors = 0
        if self.poller is not None:
            self.poller.reset_stats()

    def collect_stats(self) -> dict[str, StatValue]:
        stats: dict[str, StatValue] = {}
        stats.update(self.data.cc.stats())
        stats.update(self.data.stats())
        stats.update(self.poller.stats() if self.poller is not None else {"fuse.poll_us": 0})
        stats.update({
            "fuse.max_requests": self.config.max_requests,
            "fuse.max_background": self.max_background,
            "fuse.peak_in_flight": self.data.io.peak_in_flight,
            "fs.inodes": len(self.inodes),
            "fs.open_files": sum(1 for h in self.handles.values() if isinstance(h, OpenFile | SwapHandle)),
            "fs.open_dirs": len(self.dirs),
            "fs.internal_errors": self.internal_errors,
            "fs.uptime_seconds": round(time.monotonic() - self.started, 3),
            "fs.version": __version__,
            "fs.pid": os.getpid(),
            "fs.src": self.src,
            "fs.mountpoint": self.mountpoint,
        })
        return stats

    async def shutdown(self) -> None:
        """Unmount: close what is open and surrender the pool (invalidate_fs)."""
        for handle in self.handles.values():
            if isinstance(handle, OpenFile):
                handle.close()
        for dhandle in self.dirs.values():
            if dhandle is not None:
                os.close(dhandle.fd)
        self.handles.clear()
        self.dirs.clear()
        await self.data.unmount()
        self.inodes.close_all()
