"""What the test_ops_* files share: every pass-through operation, through a real tmemfs mount,
compared with SRC.

Each test does something through MNT and checks the result on the SRC side
(or against the same thing done directly in a reference directory on the
same filesystem: the `ref` fixture). Tests that need an unprivileged caller
run a small helper as uid/gid 1000 with setpriv; the helper gets the
directory it works in as an inherited descriptor, so pytest's private (0700)
temp root need not be opened up. The fixtures (ref, user_mnt, umask0,
umask022) are in conftest.py.
"""

from __future__ import annotations

import ctypes
import json
import os
import stat
import subprocess
import textwrap
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from tests.conftest import Mount

USER = 1000
GROUP = 1000
OTHER_GROUP = 2000
PAGE = 4096
AT_FDCWD = -100
RENAME_NOREPLACE = 1
RENAME_EXCHANGE = 2

libc = ctypes.CDLL(None, use_errno=True)
libc.renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]


def renameat2(old: Path | bytes, new: Path | bytes, flags: int) -> None:
    if libc.renameat2(AT_FDCWD, os.fsencode(old), AT_FDCWD, os.fsencode(new), flags) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err), os.fsdecode(new))


def pattern(size: int, seed: int = 0) -> bytes:
    """Non-repeating-per-page bytes, so a misplaced page is visible."""
    return bytes((i * 7 + i // PAGE + seed) & 0xFF for i in range(size))


def attrs(st: os.stat_result) -> dict[str, int]:
    return {
        "mode": st.st_mode, "nlink": st.st_nlink, "uid": st.st_uid, "gid": st.st_gid,
        "size": st.st_size, "ino": st.st_ino, "rdev": st.st_rdev, "blocks": st.st_blocks,
        "atime": st.st_atime_ns, "mtime": st.st_mtime_ns, "ctime": st.st_ctime_ns,
    }


def make_object(kind: str, path: Path) -> None:
    """One object of `kind` (file, empty, dir, symlink, fifo, chardev) at `path`, owned USER:OTHER_GROUP."""
    if kind == "file":
        path.write_bytes(pattern(10000))
    elif kind == "empty":
        path.touch()
    elif kind == "dir":
        path.mkdir()
        (path / "sub").mkdir()
    elif kind == "symlink":
        os.symlink("no/such/target", path)
    elif kind == "fifo":
        os.mkfifo(path, 0o640)
    elif kind == "chardev":
        os.mknod(path, stat.S_IFCHR | 0o600, os.makedev(1, 3))
    os.chown(path, USER, OTHER_GROUP, follow_symlinks=False)


def errno_of(fn: Callable[..., object], *args: Any, **kwargs: Any) -> int:
    """The errno `fn` fails with (the test fails if it succeeds)."""
    try:
        fn(*args, **kwargs)
    except OSError as exc:
        return exc.errno or 0
    pytest.fail(f"{getattr(fn, '__name__', fn)}{args} unexpectedly succeeded")


def answers(m: Mount) -> None:
    """The daemon is alive and serves requests, with no internal error so far."""
    assert m.proc.poll() is None, m.log.read_text()
    probe = m.mnt / f"probe-{time.monotonic_ns()}"
    probe.write_bytes(b"alive")
    assert (m.src / probe.name).read_bytes() == b"alive"
    probe.unlink()
    assert m.stats()["fs.internal_errors"] == 0


USER_PRELUDE = """
import errno, json, os, stat, sys
os.umask(0o022)
os.chdir(int(sys.argv[1]))
def err(fn, *args, **kw):
    try:
        fn(*args, **kw)
    except OSError as exc:
        return errno.errorcode[exc.errno]
    return "ok"
"""


def run_as_user(code: str, directory: Path, uid: int = USER, gid: int = GROUP) -> Any:
    """Run python `code` as uid:gid (no supplementary groups) in `directory`; its last
    printed line is JSON and is returned."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        proc = subprocess.run(
            ["setpriv", f"--reuid={uid}", f"--regid={gid}", "--clear-groups",
             "/usr/bin/python3", "-c", USER_PRELUDE + textwrap.dedent(code), str(fd)],
            pass_fds=(fd,), capture_output=True, text=True, timeout=30)
    finally:
        os.close(fd)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])
