"""statfs, xattrs and POSIX ACLs, fsync and access through a real tmemfs mount, compared with SRC.

How these tests work, and their helpers: tests/opshelpers.py."""

from __future__ import annotations

import errno
import os
import stat
import struct
import subprocess
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from tests.opshelpers import GROUP, OTHER_GROUP, USER, answers, errno_of, make_object, run_as_user

if TYPE_CHECKING:
    from tests.conftest import Mount

pytestmark = pytest.mark.mount


def test_statfs(mnt: Mount) -> None:
    here, there = os.statvfs(mnt.mnt), os.statvfs(mnt.src)
    for field in ("f_bsize", "f_frsize", "f_blocks", "f_files", "f_namemax"):
        assert getattr(here, field) == getattr(there, field), field
    assert abs(here.f_bfree - there.f_bfree) < there.f_blocks // 100 + 1000
    assert here.f_bavail <= here.f_bfree


@pytest.mark.parametrize("kind", ["file", "dir"])
def test_xattrs(mnt: Mount, ref: Path, kind: str) -> None:
    blob = bytes(range(256)) * 4
    for base in (mnt.mnt, ref):
        make_object(kind, base / "obj")
        os.setxattr(base / "obj", "user.one", b"1")
        os.setxattr(base / "obj", "user.blob", blob)
        os.setxattr(base / "obj", "user.empty", b"")
    assert os.getxattr(mnt.src / "obj", "user.blob") == blob
    assert os.getxattr(mnt.mnt / "obj", "user.blob") == blob
    assert os.getxattr(mnt.mnt / "obj", "user.empty") == b""
    assert sorted(os.listxattr(mnt.mnt / "obj")) == sorted(os.listxattr(mnt.src / "obj")) \
        == sorted(os.listxattr(ref / "obj"))
    assert errno_of(os.getxattr, mnt.mnt / "obj", "user.missing") == errno.ENODATA
    assert errno_of(os.setxattr, mnt.mnt / "obj", "user.one", b"2", os.XATTR_CREATE) == errno.EEXIST
    assert errno_of(os.setxattr, mnt.mnt / "obj", "user.none", b"2", os.XATTR_REPLACE) == errno.ENODATA
    os.setxattr(mnt.mnt / "obj", "user.one", b"22", os.XATTR_REPLACE)
    assert os.getxattr(mnt.src / "obj", "user.one") == b"22"
    os.removexattr(mnt.mnt / "obj", "user.one")
    assert "user.one" not in os.listxattr(mnt.src / "obj")
    assert errno_of(os.getxattr, mnt.mnt / "obj", "user.one") == errno.ENODATA
    assert errno_of(os.removexattr, mnt.mnt / "obj", "user.one") == errno.ENODATA
    # xattrs set in SRC directly are visible
    os.setxattr(mnt.src / "obj", "user.direct", b"d")
    assert os.getxattr(mnt.mnt / "obj", "user.direct") == b"d"


def _acl(*entries: tuple[int, int, int]) -> bytes:
    """A system.posix_acl_access value (version 2; tag, perm, id entries)."""
    return struct.pack("<I", 2) + b"".join(struct.pack("<HHI", *e) for e in entries)


ACL_USER_OBJ, ACL_USER, ACL_GROUP_OBJ, ACL_GROUP, ACL_MASK, ACL_OTHER = 1, 2, 4, 8, 0x10, 0x20
NO_ID = 0xFFFFFFFF
USER_ACL = """
print(json.dumps({name: [err(open, name, "rb"), err(open, name, "r+b")] for name in sorted(os.listdir("."))}))
"""


def test_posix_acls_are_enforced(user_mnt: Mount, ref: Path) -> None:
    """An ACL in SRC grants or denies through the mount exactly as it does locally.

    The group bits of an ACL'd file's mode are the ACL mask, so a kernel that only
    looked at the mode would let the owning group in when group:: says no."""
    os.chmod(ref, 0o777)
    acls = {
        "group-denied": _acl((ACL_USER_OBJ, 6, NO_ID), (ACL_USER, 6, OTHER_GROUP), (ACL_GROUP_OBJ, 0, NO_ID),
                             (ACL_MASK, 6, NO_ID), (ACL_OTHER, 0, NO_ID)),
        "user-granted": _acl((ACL_USER_OBJ, 6, NO_ID), (ACL_USER, 6, USER), (ACL_GROUP_OBJ, 0, NO_ID),
                             (ACL_MASK, 6, NO_ID), (ACL_OTHER, 0, NO_ID)),
        "user-denied": _acl((ACL_USER_OBJ, 6, NO_ID), (ACL_USER, 0, USER), (ACL_GROUP_OBJ, 4, NO_ID),
                            (ACL_MASK, 4, NO_ID), (ACL_OTHER, 4, NO_ID)),
        "group-read": _acl((ACL_USER_OBJ, 6, NO_ID), (ACL_GROUP_OBJ, 0, NO_ID), (ACL_GROUP, 4, GROUP),
                           (ACL_MASK, 4, NO_ID), (ACL_OTHER, 0, NO_ID)),
    }
    acls["set-through-mount"] = acls["user-granted"]
    for base in (user_mnt.src, ref):
        for name, acl in acls.items():
            (base / name).write_bytes(name.encode())
            os.chown(base / name, 0, GROUP if name == "group-denied" else 0)
            if name == "set-through-mount" and base == user_mnt.src:
                os.setxattr(user_mnt.mnt / name, "system.posix_acl_access", acl)
            else:
                os.setxattr(base / name, "system.posix_acl_access", acl)
    got = run_as_user(USER_ACL, user_mnt.mnt)
    assert got == run_as_user(USER_ACL, ref)
    assert got == {"group-denied": ["EACCES", "EACCES"], "user-granted": ["ok", "ok"],
                   "user-denied": ["EACCES", "EACCES"], "group-read": ["ok", "EACCES"],
                   "set-through-mount": ["ok", "ok"]}
    assert stat.S_IMODE(os.stat(user_mnt.mnt / "group-denied").st_mode) == 0o660
    assert os.getxattr(user_mnt.src / "set-through-mount", "system.posix_acl_access") == acls["user-granted"]
    assert os.getxattr(user_mnt.mnt / "group-read", "system.posix_acl_access") == acls["group-read"]


def test_fsync_fdatasync_fsyncdir(mnt: Mount) -> None:
    (mnt.mnt / "d").mkdir()
    fd = os.open(mnt.mnt / "d" / "f", os.O_CREAT | os.O_RDWR, 0o644)
    try:
        os.write(fd, b"durable")
        os.fsync(fd)
        os.fdatasync(fd)
    finally:
        os.close(fd)
    dfd = os.open(mnt.mnt / "d", os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dfd)
        os.fdatasync(dfd)
    finally:
        os.close(dfd)
    rfd = os.open(mnt.mnt / "d" / "f", os.O_RDONLY)
    try:
        os.fsync(rfd)
    finally:
        os.close(rfd)
    assert (mnt.src / "d" / "f").read_bytes() == b"durable"
    assert subprocess.run(["sync", "-f", str(mnt.mnt / "d" / "f")]).returncode == 0
    answers(mnt)


USER_ACCESS = """
out = {}
for name in sorted(os.listdir(".")):
    out[name] = [os.access(name, m) for m in (os.F_OK, os.R_OK, os.W_OK, os.X_OK, os.R_OK | os.W_OK)]
print(json.dumps(out))
"""


def test_access(user_mnt: Mount, ref: Path) -> None:
    """os.access as root and as another user matches a local directory."""
    os.chmod(ref, 0o777)
    for base in (user_mnt.mnt, ref):
        for mode in (0o644, 0o755, 0o600, 0o000, 0o006, 0o070, 0o707):
            for owner in (0, USER):
                path = base / f"f{mode:03o}-{owner}"
                path.touch()
                os.chmod(path, mode)
                os.chown(path, owner, GROUP if owner else 0)
        (base / "dir").mkdir(mode=0o750)
    root = {p.name: [os.access(p, m) for m in (os.F_OK, os.R_OK, os.W_OK, os.X_OK)] for p in user_mnt.mnt.iterdir()}
    assert root == {p.name: [os.access(p, m) for m in (os.F_OK, os.R_OK, os.W_OK, os.X_OK)] for p in ref.iterdir()}
    assert root["f000-0"] == [True, True, True, False]
    got = run_as_user(USER_ACCESS, user_mnt.mnt)
    assert got == run_as_user(USER_ACCESS, ref)
    assert got["f600-0"] == [True, False, False, False, False]
    assert got["f707-1000"] == [True, True, True, True, True]
