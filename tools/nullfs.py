"""A null FUSE file system: the ceiling of one pyfuse3 process, for `make bench`.

    python -m tools.nullfs MNT [--size 64M] [--file NAME ...] [--backing DIR] [-o FUSE_OPTIONS]

The root directory holds the named files (default one, bench-64M.dat), each of
`--size` bytes. Reads answer zeros, writes are accepted and discarded, so every
request costs only the FUSE round trip and pyfuse3's own work: no backing file,
no cache. It is mounted the way tmemfs mounts, but served by one pyfuse3
task (pyfuse3.main(max_tasks=1): its handlers never wait, so more tasks
would only add scheduling): entry and attribute timeouts of 1 s, files
opened with direct_io (every read(2) reaches the daemon, the kernel's page
cache is never used), the next request polled for before sleeping
(`--poll-us`, tmemfs's poll_us=, default 50), fuse options
default_permissions, fsname=nullfs, subtype=nullfs. It stays in the
foreground and unmounts on SIGINT, SIGTERM and SIGHUP, or when unmounted
with fusermount3 -u.

With `--backing DIR` its files are DIR's files of those names (their sizes),
and a read is a read of DIR's file (opened O_DIRECT), served as tmemfs
serves a miss of its page cache with cleancache=none,backing_io=direct:
up to max_requests requests at once, the kernel's max_background raised to
match, tmemfs's SrcIO (inline alone, native AIO under load), and nothing
else: no page cache, no cleancache, no locks. It is the floor of tmemfs's
design for a miss, so `make bench` can show what pyfuse3, trio and the
event loop cost against libfuse's C pass-through, and what tmemfs's data
path adds to them. Writes are still swallowed.
"""

from __future__ import annotations

import argparse
import errno
import mmap
import os
import signal
import stat
import sys
import time
from collections.abc import AsyncIterator, Sequence

import pyfuse3
import trio

from backends.base import size_in_bytes
from fusefs.fusectl import raise_max_background
from fusefs.options import MountConfig
from fusefs.polling import RequestPoller, fuse_device_fd
from fusefs.srcio import SrcIO

ROOT = pyfuse3.ROOT_INODE
TIMEOUT_S = 1.0  # tmemfs's default entry_timeout and attr_timeout
MAX_TASKS = 1  # handlers never wait, so one task serves every request
FUSE_OPTIONS = ("default_permissions", "fsname=nullfs", "subtype=nullfs")
DEFAULT_FILE = "bench-64M.dat"
PAGE = 4096
MAX_READ = 1 << 20  # more than FUSE asks for at once


class NullOperations(pyfuse3.Operations):
    """A flat directory of files that read as zeros and swallow writes."""

    max_tasks = MAX_TASKS

    def __init__(self, names: Sequence[str], size: int) -> None:
        super().__init__()
        self.size = size
        self.inodes = {name.encode(): ROOT + 1 + i for i, name in enumerate(names)}
        self.names = {ino: name for name, ino in self.inodes.items()}
        self.sizes = dict.fromkeys(self.names, size)
        self.uid, self.gid, self.now_ns = os.getuid(), os.getgid(), time.time_ns()
        self.zeros: dict[int, memoryview] = {}  # request size -> a zero buffer of that size

    def _attr(self, inode: int) -> pyfuse3.EntryAttributes:
        attr = pyfuse3.EntryAttributes()
        if inode == ROOT:
            attr.st_mode, attr.st_nlink, attr.st_size = stat.S_IFDIR | 0o755, 2, 0
        elif inode in self.names:
            attr.st_mode, attr.st_nlink, attr.st_size = stat.S_IFREG | 0o644, 1, self.sizes[inode]
        else:
            raise pyfuse3.FUSEError(errno.ENOENT)
        attr.st_ino = inode
        attr.st_uid, attr.st_gid = self.uid, self.gid
        attr.st_atime_ns = attr.st_mtime_ns = attr.st_ctime_ns = self.now_ns
        attr.st_blksize = 4096
        attr.st_blocks = (attr.st_size + 511) // 512
        attr.entry_timeout = attr.attr_timeout = TIMEOUT_S
        return attr

    async def lookup(self, parent_inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        if parent_inode != ROOT:
            raise pyfuse3.FUSEError(errno.ENOTDIR)
        if name in (b".", b".."):
            return self._attr(ROOT)
        if name not in self.inodes:
            raise pyfuse3.FUSEError(errno.ENOENT)
        return self._attr(self.inodes[name])

    async def getattr(self, inode: int, ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        return self._attr(inode)

    async def setattr(self, inode: int, attr: pyfuse3.EntryAttributes, fields: pyfuse3.SetattrFields,
                      fh: int | None, ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        """Only a size change is remembered (fio may truncate or extend); everything else is ignored."""
        if inode in self.sizes and fields.update_size:
            self.sizes[inode] = attr.st_size
        return self._attr(inode)

    async def opendir(self, inode: int, ctx: pyfuse3.RequestContext) -> int:
        if inode != ROOT:
            raise pyfuse3.FUSEError(errno.ENOTDIR)
        return ROOT

    async def readdir(self, fh: int, start_id: int, token: pyfuse3.ReaddirToken) -> None:
        entries = sorted(self.inodes.items(), key=lambda item: item[1])
        for n in range(start_id, len(entries)):
            name, inode = entries[n]
            if not pyfuse3.readdir_reply(token, name, self._attr(inode), n + 1):
                break

    async def releasedir(self, fh: int) -> None:
        pass

    async def open(self, inode: int, flags: int, ctx: pyfuse3.RequestContext) -> pyfuse3.FileInfo:
        if inode not in self.names:
            raise pyfuse3.FUSEError(errno.EISDIR if inode == ROOT else errno.ENOENT)
        if flags & os.O_TRUNC:
            self.sizes[inode] = 0
        return pyfuse3.FileInfo(fh=inode, direct_io=True, keep_cache=False)

    async def read(self, fh: int, off: int, size: int) -> memoryview:  # type: ignore[override]
        size = max(0, min(size, self.sizes[fh] - off))
        buf = self.zeros.get(size)
        if buf is None:
            buf = self.zeros[size] = memoryview(bytes(size))
        return buf

    async def write(self, fh: int, off: int, buf: bytes) -> int:
        return len(buf)

    def start(self, nursery: trio.Nursery) -> None:
        """Start what serving needs (nothing here)."""

    def close(self) -> None:
        """Let go of what serving held (nothing here)."""

    async def flush(self, fh: int) -> None:
        pass

    async def fsync(self, fh: int, datasync: bool) -> None:
        pass

    async def release(self, fh: int) -> None:
        pass

    async def statfs(self, ctx: pyfuse3.RequestContext) -> pyfuse3.StatvfsData:
        st = pyfuse3.StatvfsData()
        st.f_bsize = st.f_frsize = 4096
        st.f_blocks = sum(self.sizes.values()) // 4096
        st.f_files = len(self.names) + 1
        st.f_namemax = 255
        return st


class BackedOperations(NullOperations):
    """--backing DIR: reads of DIR's files, as tmemfs reads SRC on a miss (see the module docstring)."""

    def __init__(self, names: Sequence[str], backing: str, max_tasks: int) -> None:
        super().__init__(names, 0)
        self.max_tasks = max_tasks
        self.fds = {ino: os.open(os.path.join(backing, os.fsdecode(name)), os.O_RDONLY | os.O_DIRECT | os.O_CLOEXEC)
                    for ino, name in self.names.items()}
        stats = {ino: os.fstat(fd) for ino, fd in self.fds.items()}
        self.sizes = {ino: st.st_size for ino, st in stats.items()}
        self.devs = {ino: st.st_dev for ino, st in stats.items()}
        self.io = SrcIO(threads=max_tasks)
        arena = memoryview(mmap.mmap(-1, max_tasks * MAX_READ))  # page-aligned, as O_DIRECT wants
        self.free = [arena[n * MAX_READ : (n + 1) * MAX_READ] for n in range(max_tasks)]

    async def read(self, fh: int, off: int, size: int) -> memoryview:  # type: ignore[override]
        size = max(0, min(size, self.sizes[fh] - off))
        start = off & ~(PAGE - 1)
        buf = self.free.pop()
        io = self.io
        io.in_flight += 1
        try:
            got = await io.preadv(self.fds[fh], [buf[: -(-(off + size - start) // PAGE) * PAGE]], start, self.devs[fh])
        except OSError as exc:
            raise pyfuse3.FUSEError(exc.errno or errno.EIO) from None
        finally:
            io.in_flight -= 1
            self.free.append(buf)  # (pyfuse3 sends the reply before any other request runs)
        return buf[off - start : max(off - start, min(got, off - start + size))]

    def start(self, nursery: trio.Nursery) -> None:
        self.io.watch_requests(fuse_device_fd())
        self.io.start(nursery)

    def close(self) -> None:
        self.io.close()
        for fd in self.fds.values():
            os.close(fd)


async def _stop_on_signal(signals: AsyncIterator[int]) -> None:
    async for _signum in signals:
        pyfuse3.terminate()
        return


async def serve(ops: NullOperations, mnt: str, options: set[str], poll_us: int) -> None:
    max_tasks = ops.max_tasks
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGHUP) as signals:
        pyfuse3.init(ops, mnt, options)
        if max_tasks > MAX_TASKS:  # as tmemfs does: otherwise the kernel lets 12 in at most
            raise_max_background(mnt, max_tasks)
        poller = RequestPoller(poll_us)
        if poller.install() and isinstance(ops, BackedOperations):
            poller.requests = ops.io
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(_stop_on_signal, signals)
                ops.start(nursery)
                await pyfuse3.main(max_tasks=max_tasks)
                nursery.cancel_scope.cancel()
        finally:
            poller.uninstall()
            ops.close()
            pyfuse3.close(unmount=True)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.nullfs", description=(__doc__ or "").splitlines()[0])
    parser.add_argument("mnt", help="mount point (an empty directory)")
    parser.add_argument("--size", default="64M", help="size of every file (K/M/G suffixes; default 64M)")
    parser.add_argument("--file", action="append", dest="files", metavar="NAME",
                        help=f"a file in the root directory; repeatable (default {DEFAULT_FILE})")
    parser.add_argument("--poll-us", type=int, default=MountConfig.poll_us, metavar="N",
                        help="poll for the next request for up to N microseconds before sleeping, "
                             f"as tmemfs's poll_us= (default {MountConfig.poll_us}; 0 = off)")
    parser.add_argument("--backing", metavar="DIR",
                        help="serve reads from DIR's files of the same names, as tmemfs serves a miss with "
                             "cleancache=none,backing_io=direct and no page cache (--size is then theirs)")
    parser.add_argument("-o", dest="options", default="", help="extra FUSE options, comma-separated")
    args = parser.parse_args(argv)
    names = args.files or [DEFAULT_FILE]
    if any("/" in n or n in ("", ".", "..") for n in names):
        parser.error("file names must be plain names")
    try:
        size = size_in_bytes(args.size)
    except ValueError:
        parser.error(f"--size {args.size}: not a size")
    options = {*FUSE_OPTIONS, *(o for o in args.options.split(",") if o)}
    try:
        ops = BackedOperations(names, args.backing, MountConfig.max_requests) if args.backing else \
            NullOperations(names, size)
    except OSError as exc:
        parser.error(f"--backing {args.backing}: {exc.strerror}: {exc.filename}")
    try:
        trio.run(serve, ops, args.mnt, options, args.poll_us)
    except RuntimeError as exc:  # pyfuse3.init could not mount
        print(f"nullfs: mounting {args.mnt} failed: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
