"""The 16-byte uuid naming the shared pool of every mount of one SRC.

ocfs2 keeps its volume uuid in the superblock, so every node of a cluster
derives the same pool uuid for the same volume. tmemfs keeps it with SRC in
the same spirit: an extended attribute on SRC's root, created once (with
XATTR_CREATE, so two nodes mounting at the same instant agree on the first
one written) and read by every later mount. `pool_uuid=` overrides it.

All 16 bytes are used. The 2011 ocfs2 hook passed a pointer to a 4-byte
local where the API reads 16 bytes, so 12 bytes of stack garbage entered the
uuid and every node got a private pool. `ocfs2_4byte_bug` reproduces that
for the regression test only, behind the environment variable named by
TEST_BUG_ENV, and is never reachable through a mount option.
"""

from __future__ import annotations

import errno
import os
import re
import uuid as uuidlib

XATTR = "user.tmemfs.pool_uuid"
TEST_BUG_ENV = "TMEMFS_TEST_ONLY_OCFS2_4BYTE_UUID_BUG"
_HEX = re.compile(r"^[0-9a-fA-F]{32}$")
_CANONICAL = re.compile(r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")


class PoolUuidError(ValueError):
    """SRC cannot keep a pool uuid, or a given one is malformed (one line)."""


def parse_pool_uuid(text: str) -> bytes:
    """32 hex digits, or the canonical 8-4-4-4-12 form; anything else is an error."""
    if _HEX.match(text) or _CANONICAL.match(text):
        return bytes.fromhex(text.replace("-", ""))
    raise PoolUuidError(f"pool_uuid={text}: must be 32 hex digits (16 bytes), "
                        "e.g. pool_uuid=0f1e2d3c4b5a69788796a5b4c3d2e1f0")


def src_pool_uuid(src_fd: int) -> bytes:
    """The pool uuid kept on SRC's root (given as an O_PATH or directory fd), created if absent."""
    path = f"/proc/self/fd/{src_fd}"
    try:
        return _read(path)
    except OSError as exc:
        if exc.errno not in (errno.ENODATA, errno.ENOENT):
            raise _unsupported(exc) from None
    fresh = uuidlib.uuid4().hex.encode()
    try:
        os.setxattr(path, XATTR, fresh, os.XATTR_CREATE)
    except FileExistsError:
        pass  # another node wrote it first: use theirs
    except OSError as exc:
        raise _unsupported(exc) from None
    try:
        return _read(path)
    except OSError as exc:
        raise _unsupported(exc) from None


def _read(path: str) -> bytes:
    raw = os.getxattr(path, XATTR).decode("ascii", "replace").strip()
    try:
        return parse_pool_uuid(raw)
    except PoolUuidError:
        raise PoolUuidError(f"SRC's {XATTR} attribute holds {raw!r}, not a uuid; "
                            f"remove it (setfattr -x {XATTR} SRC) or give pool_uuid=") from None


def _unsupported(exc: OSError) -> PoolUuidError:
    return PoolUuidError(f"cannot keep the pool uuid on SRC ({exc.strerror}); give pool_uuid=32HEXDIGITS "
                         "(the same on every node)")


def ocfs2_4byte_bug(uuid: bytes) -> bytes:
    """TEST ONLY: the 2011 bug's uuid, 4 meaningful bytes and 12 bytes that differ per node."""
    return uuid[:4] + os.urandom(12)


def effective_uuid(uuid: bytes) -> bytes:
    """The uuid a mount passes to init_shared_fs (the bug only when the test switch is set)."""
    return ocfs2_4byte_bug(uuid) if os.environ.get(TEST_BUG_ENV) == "1" else uuid
