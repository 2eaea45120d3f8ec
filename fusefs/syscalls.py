"""The few Linux calls the os module lacks, through libc.

tmemfs works on O_PATH descriptors so that it never resolves a path string
and never follows a symlink of SRC. Python's os module cannot pass
AT_EMPTY_PATH or renameat2 flags, so these wrappers do.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import struct

AT_FDCWD = -100
AT_SYMLINK_NOFOLLOW = 0x100
AT_EMPTY_PATH = 0x1000
RENAME_NOREPLACE = 1
RENAME_EXCHANGE = 2
UTIME_NOW = (1 << 30) - 1
UTIME_OMIT = (1 << 30) - 2
MAX_HANDLE_SZ = 128

_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)


class _Timespec(ctypes.Structure):
    _fields_ = [("tv_sec", ctypes.c_long), ("tv_nsec", ctypes.c_long)]


def _check(result: int) -> int:
    if result < 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
    return result


_libc.renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
_libc.fchownat.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_int, ctypes.c_int]
_libc.utimensat.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.POINTER(_Timespec), ctypes.c_int]
_libc.linkat.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
_libc.name_to_handle_at.argtypes = [
    ctypes.c_int, ctypes.c_char_p, ctypes.c_void_p, ctypes.POINTER(ctypes.c_int), ctypes.c_int,
]


def renameat2(old_dir: int, old: bytes, new_dir: int, new: bytes, flags: int) -> None:
    """rename with RENAME_NOREPLACE / RENAME_EXCHANGE, relative to directory fds."""
    _check(_libc.renameat2(old_dir, old, new_dir, new, flags))


def fchown_empty(fd: int, uid: int, gid: int) -> None:
    """chown the object an O_PATH fd names, symlinks included (-1 leaves a field)."""
    _check(_libc.fchownat(fd, b"", uid, gid, AT_EMPTY_PATH | AT_SYMLINK_NOFOLLOW))


def utimens_empty(fd: int, atime_ns: int | None, mtime_ns: int | None) -> None:
    """Set times of an O_PATH fd's object; None means UTIME_OMIT."""
    times = (_Timespec * 2)()
    for slot, value in enumerate((atime_ns, mtime_ns)):
        if value is None:
            times[slot].tv_sec, times[slot].tv_nsec = 0, UTIME_OMIT
        else:
            times[slot].tv_sec, times[slot].tv_nsec = divmod(value, 1_000_000_000)
    _check(_libc.utimensat(fd, b"", times, AT_EMPTY_PATH | AT_SYMLINK_NOFOLLOW))


def link_empty(fd: int, new_dir: int, new_name: bytes) -> None:
    """Hard-link the object an O_PATH fd names (needs CAP_DAC_READ_SEARCH)."""
    _check(_libc.linkat(fd, b"", new_dir, new_name, AT_EMPTY_PATH))


def file_handle(dir_fd: int, name: bytes) -> bytes | None:
    """The exportfs handle (type + bytes: inode and generation) or None if unsupported.

    Stable across mounts and never reused for another file, which is what a
    cleancache file key must be. An empty name means dir_fd itself.
    """
    buf = ctypes.create_string_buffer(8 + MAX_HANDLE_SZ)
    struct.pack_into("I", buf, 0, MAX_HANDLE_SZ)
    mount_id = ctypes.c_int()
    flags = AT_EMPTY_PATH if not name else 0
    if _libc.name_to_handle_at(dir_fd, name, buf, ctypes.byref(mount_id), flags | 0) < 0:
        err = ctypes.get_errno()
        if err in (95, 38):  # EOPNOTSUPP, ENOSYS: the backing fs has no handles
            return None
        raise OSError(err, os.strerror(err))
    size, _kind = struct.unpack_from("Ii", buf, 0)
    return bytes(buf.raw[4 : 8 + size])
