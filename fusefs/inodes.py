"""FUSE inode numbers mapped to O_PATH descriptors of SRC objects.

Every object the kernel knows is held open with O_PATH|O_NOFOLLOW, so all
operations are relative to descriptors (openat family): names up to 255
bytes and trees deeper than PATH_MAX work, and no symlink of SRC is ever
followed by tmemfs. Holding the descriptor also pins the backing inode, so
its number cannot be reused while the kernel may still use it.

The FUSE inode number is the backing st_ino when that is unambiguous (same
device as SRC's root), so `stat` through the mount shows SRC's numbers;
other objects get numbers from a private range.
"""

from __future__ import annotations

import errno
import os
import stat
import struct
from dataclasses import dataclass

import pyfuse3

from fusefs.syscalls import file_handle

CHILD_OPEN_FLAGS = os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC  # a lookup: the object itself, never a link's target

SYNTHETIC_BASE = 1 << 62  # numbers handed out for objects on other devices
RESERVED_BASE = 1 << 63  # the .tmemfs control files


@dataclass(eq=False, slots=True)
class Inode:
    nodeid: int
    fd: int  # O_PATH | O_NOFOLLOW
    dev: int
    ino: int
    kind: int  # S_IFMT bits
    nlookup: int = 0
    nopen: int = 0
    key: bytes | None = None  # cleancache file key, computed on first need


class InodeTable:
    def __init__(self, root_fd: int) -> None:
        st = os.fstat(root_fd)
        self.root = Inode(pyfuse3.ROOT_INODE, root_fd, st.st_dev, st.st_ino, stat.S_IFDIR, nlookup=1)
        self.root_dev = st.st_dev
        self.by_id: dict[int, Inode] = {self.root.nodeid: self.root}
        self.by_devino: dict[tuple[int, int], Inode] = {(st.st_dev, st.st_ino): self.root}
        self._next_synthetic = SYNTHETIC_BASE

    def __len__(self) -> int:
        return len(self.by_id)

    def get(self, nodeid: int) -> Inode:
        try:
            return self.by_id[nodeid]
        except KeyError:
            raise pyfuse3.FUSEError(errno.ESTALE) from None

    def adopt(self, fd: int, st: os.stat_result) -> Inode:
        """The Inode for an O_PATH fd just opened (taking ownership of fd), lookup count unchanged."""
        known = self.by_devino.get((st.st_dev, st.st_ino))
        if known is not None:
            os.close(fd)
            return known
        if st.st_dev == self.root_dev and 1 < st.st_ino < SYNTHETIC_BASE:
            nodeid = st.st_ino
        else:
            nodeid = self._next_synthetic
            self._next_synthetic += 1
        inode = Inode(nodeid, fd, st.st_dev, st.st_ino, stat.S_IFMT(st.st_mode))
        self.by_id[nodeid] = inode
        self.by_devino[(st.st_dev, st.st_ino)] = inode
        return inode

    def open_child(self, parent: Inode, name: bytes) -> tuple[Inode, os.stat_result]:
        """Look up `name` in `parent` without following a symlink; lookup count unchanged."""
        return self.adopt_opened(os.open(name, CHILD_OPEN_FLAGS, dir_fd=parent.fd))

    def open_made(self, fd: int) -> tuple[Inode, os.stat_result]:
        """The object an open descriptor refers to, whatever its name names by now: a file
        tmemfs just created, not one SRC put under that name since."""
        return self.adopt_opened(os.open(f"/proc/self/fd/{fd}", os.O_PATH | os.O_CLOEXEC))

    def adopt_opened(self, fd: int) -> tuple[Inode, os.stat_result]:
        try:
            st = os.fstat(fd)
        except BaseException:
            os.close(fd)
            raise
        return self.adopt(fd, st), st

    def key(self, inode: Inode) -> bytes:
        """Cleancache file key: the exportfs handle (inode + generation) of the object."""
        if inode.key is None:
            inode.key = file_key(inode.fd, b"", inode.dev, inode.ino, self.root_dev)
        return inode.key

    def forget(self, nodeid: int, count: int) -> None:
        inode = self.by_id.get(nodeid)
        if inode is None or inode is self.root:
            return
        inode.nlookup -= count
        self.drop_if_unused(inode)

    def drop_if_unused(self, inode: Inode) -> None:
        if inode.nlookup <= 0 and inode.nopen <= 0 and inode is not self.root:
            del self.by_id[inode.nodeid]
            del self.by_devino[(inode.dev, inode.ino)]
            os.close(inode.fd)

    def close_all(self) -> None:
        for inode in list(self.by_id.values()):
            if inode is not self.root:
                os.close(inode.fd)
        self.by_id = {self.root.nodeid: self.root}


def file_key(dir_fd: int, name: bytes, dev: int, ino: int, root_dev: int) -> bytes:
    """Stable key for a file: never reused for another file, the same on every mount of SRC.

    The exportfs handle carries the inode number and its generation. On a
    backing filesystem without handles, the inode number alone is used (an
    inode reused after delete is then covered by the delete invalidation).
    """
    handle = file_handle(dir_fd, name)
    key = handle if handle is not None else b"ino:" + struct.pack("<Q", ino)
    if dev != root_dev:  # a filesystem mounted inside SRC: handles may collide
        key = struct.pack("<Q", dev) + key
    return key
