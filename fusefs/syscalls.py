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
from collections.abc import Iterator
from contextlib import contextmanager

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
_libc.setfsuid.argtypes = [ctypes.c_uint]
_libc.setfsgid.argtypes = [ctypes.c_uint]
_NO_ID = 0xFFFFFFFF  # (uid_t)-1: setfsuid/setfsgid only report the current id
_CAPABILITY_VERSION_3 = 0x20080522


class _CapHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _CapData(ctypes.Structure):
    _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32), ("inheritable", ctypes.c_uint32)]


_libc.name_to_handle_at.argtypes = [
    ctypes.c_int, ctypes.c_char_p, ctypes.c_void_p, ctypes.POINTER(ctypes.c_int), ctypes.c_int,
]


def renameat2(old_dir: int, old: bytes, new_dir: int, new: bytes, flags: int) -> None:
    """rename with RENAME_NOREPLACE / RENAME_EXCHANGE, relative to directory fds."""
    _check(_libc.renameat2(old_dir, old, new_dir, new, flags))


def fchown_empty(fd: int, uid: int, gid: int) -> None:
    """chown the object an O_PATH fd names, symlinks included (-1 leaves a field)."""
    _check(_libc.fchownat(fd, b"", uid, gid, AT_EMPTY_PATH | AT_SYMLINK_NOFOLLOW))


@contextmanager
def creating_as(uid: int, gid: int) -> Iterator[None]:
    """Objects made inside are born owned by uid:gid, as the kernel makes them for that
    caller (a setgid parent's group wins), so no chown afterwards can hit an object that
    SRC swapped in under the name meanwhile.

    This thread's filesystem ids are switched (setfsuid/setfsgid: per thread, so nothing
    else in the process is affected) and the capabilities the switch drops from the
    effective set are raised again, so permission checks in SRC stay the daemon's: the
    kernel checked the caller already (default_permissions). Switching back to 0 gives
    the capabilities back by itself."""
    old_gid = _libc.setfsgid(gid)
    old_uid = _libc.setfsuid(uid)
    try:
        if _libc.setfsuid(_NO_ID) != uid or _libc.setfsgid(_NO_ID) != gid:
            raise PermissionError(1, "cannot switch filesystem ids (not root?)")
        header, data = _CapHeader(_CAPABILITY_VERSION_3, 0), (_CapData * 2)()
        _check(_libc.capget(ctypes.byref(header), data))
        for word in data:
            word.effective = word.permitted
        _check(_libc.capset(ctypes.byref(header), data))
        yield
    finally:
        _libc.setfsuid(old_uid)
        _libc.setfsgid(old_gid)


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
