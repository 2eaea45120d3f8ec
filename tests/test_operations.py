"""Every pass-through operation, through a real tmemfs mount, compared with SRC.

Each test does something through MNT and checks the result on the SRC side
(or against the same thing done directly in a reference directory on the
same filesystem). Tests that need an unprivileged caller run a small
helper as uid/gid 1000 with setpriv; the helper gets the directory it works
in as an inherited descriptor, so pytest's private (0700) temp root need not
be opened up.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import json
import mmap
import os
import stat
import struct
import subprocess
import textwrap
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from fusefs.syscalls import creating_as

if TYPE_CHECKING:
    from contextlib import AbstractContextManager

    from tests.conftest import Mount

    MountFactory = Callable[..., AbstractContextManager[Mount]]

USER = 1000
GROUP = 1000
OTHER_GROUP = 2000
PAGE = 4096
AT_FDCWD = -100
RENAME_NOREPLACE = 1
RENAME_EXCHANGE = 2

_libc = ctypes.CDLL(None, use_errno=True)
_libc.renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]


# -- helpers -----------------------------------------------------------------------


def renameat2(old: Path | bytes, new: Path | bytes, flags: int) -> None:
    if _libc.renameat2(AT_FDCWD, os.fsencode(old), AT_FDCWD, os.fsencode(new), flags) != 0:
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


@pytest.fixture
def umask022() -> Iterator[None]:
    old = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(old)


@pytest.fixture
def umask0() -> Iterator[None]:
    old = os.umask(0)
    try:
        yield
    finally:
        os.umask(old)


@pytest.fixture
def ref(tmp_path: Path) -> Path:
    """A plain directory on the same filesystem as SRC, for doing things directly."""
    path = tmp_path / "ref"
    path.mkdir()
    return path


@pytest.fixture
def user_mnt(mount_factory: MountFactory) -> Iterator[Mount]:
    """A mount other users may use (allow_other), its root world-writable."""
    with mount_factory("cleancache=tmem,allow_other") as m:
        os.chmod(m.mnt, 0o777)
        yield m


# -- lookup and attributes ------------------------------------------------------------


def _make(kind: str, path: Path) -> None:
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


KINDS = ["file", "empty", "dir", "symlink", "fifo", "chardev"]


def test_getattr_matches_src(mnt: Mount) -> None:
    """lstat through the mount shows SRC's mode, links, owner, size, blocks, inode number
    and nanosecond times, for every kind of object."""
    for n, kind in enumerate(KINDS):
        _make(kind, mnt.src / kind)
        os.utime(mnt.src / kind, ns=(1_111_111_111_123_456_789 + n, 1_222_222_222_987_654_321 - n),
                 follow_symlinks=False)
    os.link(mnt.src / "file", mnt.src / "file-2")
    for kind in KINDS:
        expected = attrs(os.lstat(mnt.src / kind))
        assert attrs(os.lstat(mnt.mnt / kind)) == expected, kind
        assert attrs(os.lstat(mnt.src / kind)) == expected, kind  # looking it up changed nothing
    assert os.lstat(mnt.mnt / "file").st_nlink == 2


def test_getattr_root_and_missing(mnt: Mount) -> None:
    os.chmod(mnt.mnt, 0o751)
    assert stat.S_IMODE(os.stat(mnt.src).st_mode) == 0o751
    here, there = os.stat(mnt.mnt), os.stat(mnt.src)
    assert (here.st_mode, here.st_uid, here.st_gid, here.st_nlink) == \
        (there.st_mode, there.st_uid, there.st_gid, there.st_nlink)
    assert errno_of(os.lstat, mnt.mnt / "missing") == errno.ENOENT
    assert errno_of(os.lstat, mnt.mnt / "missing" / "deeper") == errno.ENOENT
    (mnt.src / "file").touch()
    assert errno_of(os.lstat, mnt.mnt / "file" / "x") == errno.ENOTDIR


def test_getattr_of_open_unlinked_file(mnt: Mount) -> None:
    """fstat and read keep working on an open file whose name is gone."""
    data = pattern(3 * PAGE + 1)
    (mnt.mnt / "f").write_bytes(data)
    fd = os.open(mnt.mnt / "f", os.O_RDWR)
    try:
        assert os.pread(fd, PAGE, 0) == data[:PAGE]  # partly cached by tmemfs
        os.unlink(mnt.mnt / "f")
        assert not (mnt.src / "f").exists()
        assert os.fstat(fd).st_nlink == 0
        assert os.fstat(fd).st_size == len(data)
        assert os.pread(fd, len(data) + 10, 0) == data
        os.pwrite(fd, b"late", 1)
        assert os.pread(fd, 6, 0) == data[:1] + b"late" + data[5:6]
    finally:
        os.close(fd)


# -- setattr -------------------------------------------------------------------------


def test_chmod(mnt: Mount) -> None:
    for kind in ("file", "dir", "fifo"):
        for mode in (0o600, 0o755, 0o4755, 0o2750, 0o1777, 0o000, 0o7777):
            path = f"{kind}-{mode:o}"
            _make(kind, mnt.src / path)
            os.chmod(mnt.mnt / path, mode)
            assert stat.S_IMODE(os.stat(mnt.src / path).st_mode) == mode, path
            assert stat.S_IMODE(os.stat(mnt.mnt / path).st_mode) == mode, path


def test_chown(mnt: Mount) -> None:
    (mnt.src / "target").touch()
    for kind in ("file", "dir", "symlink", "fifo"):
        _make(kind, mnt.src / kind)
        os.chown(mnt.src / kind, 0, 0, follow_symlinks=False)
        os.chown(mnt.mnt / kind, USER, GROUP, follow_symlinks=False)
        st = os.lstat(mnt.src / kind)
        assert (st.st_uid, st.st_gid) == (USER, GROUP), kind
        os.chown(mnt.mnt / kind, -1, OTHER_GROUP, follow_symlinks=False)
        st = os.lstat(mnt.src / kind)
        assert (st.st_uid, st.st_gid) == (USER, OTHER_GROUP), kind
        seen = os.lstat(mnt.mnt / kind)
        assert (seen.st_uid, seen.st_gid) == (USER, OTHER_GROUP), kind
    assert os.stat(mnt.src / "target").st_uid == 0


def test_chown_clears_setuid_like_src(mnt: Mount, ref: Path) -> None:
    for base in (mnt.mnt, ref):
        (base / "suid").touch()
        os.chmod(base / "suid", 0o6755)
        os.chown(base / "suid", USER, GROUP)
    assert os.stat(mnt.src / "suid").st_mode == os.stat(ref / "suid").st_mode


@pytest.mark.parametrize("how", ["truncate", "ftruncate"])
def test_truncate(mnt: Mount, how: str) -> None:
    """Grow and shrink; the mount's cached pages must not outlive the truncate."""
    data = pattern(9000)
    for size in (0, 100, 4096, 5000, 12345, 1 << 20):
        name = f"f{size}"
        (mnt.src / name).write_bytes(data)
        assert (mnt.mnt / name).read_bytes() == data  # fills tmemfs's page cache
        if how == "truncate":
            os.truncate(mnt.mnt / name, size)
        else:
            fd = os.open(mnt.mnt / name, os.O_RDWR)
            try:
                os.ftruncate(fd, size)
                assert os.fstat(fd).st_size == size
            finally:
                os.close(fd)
        expected = data[:size] + bytes(max(0, size - len(data)))
        assert os.stat(mnt.src / name).st_size == size
        assert (mnt.src / name).read_bytes() == expected, size
        assert (mnt.mnt / name).read_bytes() == expected, size
        assert os.stat(mnt.mnt / name).st_size == size


UTIMES = [
    (1_000_000_123, 2_000_000_456),
    (4_000_000_000_000_000_001, 3_999_999_999_999_999_999),  # after 2038
    (-123_456_789, -1_000_000_000_000_000_000),  # before 1970
    (0, 0),
]


def test_utime_explicit_ns(mnt: Mount, ref: Path) -> None:
    """os.utime(ns=) sets exactly those nanoseconds, on the link itself for a symlink."""
    for kind in ("file", "dir", "symlink"):
        for n, times in enumerate(UTIMES):
            name = f"{kind}{n}"
            _make(kind, mnt.src / name)
            _make(kind, ref / name)
            follow = kind != "symlink"
            os.utime(mnt.mnt / name, ns=times, follow_symlinks=follow)
            os.utime(ref / name, ns=times, follow_symlinks=follow)
            want = os.lstat(ref / name)
            got = os.lstat(mnt.src / name)
            assert (got.st_atime_ns, got.st_mtime_ns) == (want.st_atime_ns, want.st_mtime_ns), name
            assert got.st_mtime_ns == times[1], name
            seen = os.lstat(mnt.mnt / name)
            assert (seen.st_atime_ns, seen.st_mtime_ns) == (got.st_atime_ns, got.st_mtime_ns), name


OLD_A, OLD_M = 1_500_000_000_111_111_111, 1_600_000_000_222_222_222


def test_utime_now_and_omit(mnt: Mount) -> None:
    """UTIME_NOW sets the current time, UTIME_OMIT leaves the other time alone."""
    for how in ("touch -a", "touch -m", "utime None", "utime ns omit"):
        name = how.replace(" ", "_")
        (mnt.src / name).write_bytes(b"x")
        os.utime(mnt.src / name, ns=(OLD_A, OLD_M))
        before = time.time_ns() - 50_000_000  # coarse kernel clocks
        path = mnt.mnt / name
        if how.startswith("touch"):
            subprocess.run(["touch", how.split()[1], str(path)], check=True)
        elif how == "utime None":
            os.utime(path, times=None)
        else:  # utimensat with an explicit mtime and UTIME_OMIT for atime
            spec = (ctypes.c_long * 4)(0, (1 << 30) - 2, 1_700_000_000, 5)
            assert _libc.utimensat(AT_FDCWD, os.fsencode(path), spec, 0) == 0, os.strerror(ctypes.get_errno())
        after = time.time_ns() + 50_000_000
        st = os.stat(mnt.src / name)
        if how == "touch -a":
            assert before <= st.st_atime_ns <= after
            assert st.st_mtime_ns == OLD_M
        elif how == "touch -m":
            assert st.st_atime_ns == OLD_A
            assert before <= st.st_mtime_ns <= after
        elif how == "utime None":
            assert before <= st.st_atime_ns <= after
            assert before <= st.st_mtime_ns <= after
        else:
            assert st.st_atime_ns == OLD_A
            assert st.st_mtime_ns == 1_700_000_000_000_000_005
        seen = os.stat(path)
        assert (seen.st_atime_ns, seen.st_mtime_ns) == (st.st_atime_ns, st.st_mtime_ns), how


# -- directories ------------------------------------------------------------------------


def test_readdir_matches_src(mnt: Mount) -> None:
    """Names and types equal SRC's; SRC's own `.tmemfs` is shadowed and not listed."""
    for kind in ("file", "empty", "dir", "symlink", "fifo", "chardev"):
        _make(kind, mnt.src / kind)
    (mnt.src / ".hidden").touch()
    (mnt.src / ".tmemfs").mkdir()
    (mnt.src / ".tmemfs" / "src-file").touch()
    want = {e.name: (e.inode(), e.is_dir(follow_symlinks=False), e.is_symlink())
            for e in os.scandir(mnt.src) if e.name != ".tmemfs"}
    got = {e.name: (e.inode(), e.is_dir(follow_symlinks=False), e.is_symlink()) for e in os.scandir(mnt.mnt)}
    assert got == want
    assert len(got) == 7
    assert sorted(os.listdir(mnt.mnt / "dir")) == sorted(os.listdir(mnt.src / "dir")) == ["sub"]


def test_readdir_lists_dot_entries_like_src(mnt: Mount) -> None:
    """A C-level readdir (ls -a) shows `.` and `..` as SRC's does, with the mount's inode numbers."""
    (mnt.mnt / "dir" / "sub").mkdir(parents=True)
    (mnt.mnt / "dir" / "f").touch()

    def ls(path: Path) -> dict[str, int]:
        out = subprocess.run(["ls", "-a1if", str(path)], capture_output=True, text=True, check=True).stdout
        return {name: int(ino) for ino, name in (line.split(None, 1) for line in out.splitlines())}

    assert sorted(ls(mnt.mnt)) == sorted(set(ls(mnt.src)) - {".tmemfs"}) == [".", "..", "dir"]
    listed = ls(mnt.mnt / "dir")
    assert sorted(listed) == sorted(ls(mnt.src / "dir")) == [".", "..", "f", "sub"]
    assert listed["."] == os.stat(mnt.mnt / "dir").st_ino == os.stat(mnt.src / "dir").st_ino
    assert listed[".."] == os.stat(mnt.mnt).st_ino
    assert ls(mnt.mnt / "dir" / "sub")[".."] == os.stat(mnt.src / "dir").st_ino
    assert sorted(os.listdir(mnt.mnt / "dir")) == ["f", "sub"]


def test_readdir_2000_entries(mnt: Mount) -> None:
    (mnt.mnt / "big").mkdir()
    names = {f"entry-{n:05d}-{'x' * (n % 40)}" for n in range(2000)}
    for name in names:
        os.close(os.open(mnt.mnt / "big" / name, os.O_CREAT | os.O_WRONLY, 0o644))
    assert set(os.listdir(mnt.src / "big")) == names
    listed = {e.name: e.inode() for e in os.scandir(mnt.mnt / "big")}
    assert len(listed) == 2000
    assert listed == {e.name: e.inode() for e in os.scandir(mnt.src / "big")}
    # a second pass (inodes now known) and a partially-read directory give the same
    assert set(os.listdir(mnt.mnt / "big")) == names
    with os.scandir(mnt.mnt / "big") as it:
        first = [next(it).name for _ in range(10)]
    assert set(first) <= names


def test_control_dir_hidden_but_statable(mnt: Mount) -> None:
    assert ".tmemfs" not in os.listdir(mnt.mnt)
    st = os.stat(mnt.mnt / ".tmemfs")
    assert stat.S_ISDIR(st.st_mode)
    assert sorted(os.listdir(mnt.mnt / ".tmemfs")) == ["control", "stats", "stats.json"]
    assert "fs.version" in mnt.stats()
    assert os.stat(mnt.mnt / ".tmemfs" / "..").st_ino == os.stat(mnt.mnt).st_ino
    assert not (mnt.src / ".tmemfs").exists()


def test_mkdir_mode(mnt: Mount, ref: Path, umask022: None) -> None:
    """mkdir honours the mode and the caller's umask exactly as a local mkdir does."""
    for mode in (0o777, 0o755, 0o700, 0o1777, 0o2755, 0o000):
        name = f"d{mode:o}"
        os.mkdir(mnt.mnt / name, mode)
        os.mkdir(ref / name, mode)
        want = os.stat(ref / name).st_mode
        assert os.stat(mnt.src / name).st_mode == want, name
        assert os.stat(mnt.mnt / name).st_mode == want, name
        assert os.stat(mnt.src / name).st_uid == 0


def test_mkdir_existing_and_rmdir(mnt: Mount) -> None:
    os.mkdir(mnt.mnt / "d")
    assert errno_of(os.mkdir, mnt.mnt / "d") == errno.EEXIST
    (mnt.mnt / "d" / "f").write_bytes(b"x")
    assert errno_of(os.rmdir, mnt.mnt / "d") == errno.ENOTEMPTY
    assert (mnt.src / "d" / "f").read_bytes() == b"x"
    os.unlink(mnt.mnt / "d" / "f")
    os.rmdir(mnt.mnt / "d")
    assert not (mnt.src / "d").exists()
    assert not (mnt.mnt / "d").exists()
    assert errno_of(os.rmdir, mnt.mnt / "d") == errno.ENOENT
    (mnt.mnt / "f").touch()
    assert errno_of(os.rmdir, mnt.mnt / "f") == errno.ENOTDIR


# -- create and open ----------------------------------------------------------------------


def test_create_modes_as_root(mnt: Mount, umask0: None) -> None:
    for mode in (0o600, 0o755, 0o4755, 0o2755, 0o6711, 0o444):
        name = f"f{mode:o}"
        fd = os.open(mnt.mnt / name, os.O_CREAT | os.O_EXCL | os.O_RDWR, mode)
        try:
            assert os.write(fd, b"data") == 4
        finally:
            os.close(fd)
        st = os.stat(mnt.src / name)
        assert stat.S_IMODE(st.st_mode) == mode, name
        assert (st.st_uid, st.st_gid) == (0, 0)
        assert os.stat(mnt.mnt / name).st_mode == st.st_mode
        assert (mnt.src / name).read_bytes() == b"data"


USER_CREATE = """
out = {}
for name, mode in (("f600", 0o600), ("f755", 0o755), ("f4755", 0o4755), ("f2755", 0o2755)):
    fd = os.open(name, os.O_CREAT | os.O_EXCL | os.O_WRONLY, mode)
    os.close(fd)
with open("f600", "wb") as f:
    f.write(b"by user")
os.mkdir("d", 0o775)
os.mkfifo("fifo", 0o666)
os.symlink("f600", "link")
os.mkdir("sg")
os.chmod("sg", 0o2777)
out["chown_sg"] = err(os.chown, "sg", -1, 2000)  # not in group 2000: EPERM
print(json.dumps(out))
"""


def _owners(base: Path) -> dict[str, tuple[int, int, int]]:
    return {e.name: (e.stat(follow_symlinks=False).st_uid, e.stat(follow_symlinks=False).st_gid,
                     e.stat(follow_symlinks=False).st_mode) for e in os.scandir(base)}


def test_create_as_user(user_mnt: Mount, ref: Path) -> None:
    """An unprivileged caller's new objects belong to it in SRC (root creates, then chowns),
    with the same modes a local create gives, setuid included."""
    os.chmod(ref, 0o777)
    got = run_as_user(USER_CREATE, user_mnt.mnt)
    assert got == run_as_user(USER_CREATE, ref) == {"chown_sg": "EPERM"}
    src = _owners(user_mnt.src)
    assert src == _owners(ref)
    assert src.keys() == {"f600", "f755", "f4755", "f2755", "d", "fifo", "link", "sg"}
    assert all(uid == USER and gid == GROUP for uid, gid, _ in src.values())
    assert stat.S_IMODE(src["f4755"][2]) == 0o4755
    assert (user_mnt.src / "f600").read_bytes() == b"by user"


USER_KILL_PRIV = """
out = {}
for name in sorted(os.listdir(".")):
    how = name.split("-")[0]
    if how == "write":
        with open(name, "r+b") as f:
            f.write(b"W")
    elif how == "pwrite":
        fd = os.open(name, os.O_WRONLY)
        os.pwrite(fd, b"P", 100)
        os.close(fd)
    elif how == "append":
        with open(name, "ab") as f:
            f.write(b"A")
    elif how == "otrunc":
        os.close(os.open(name, os.O_WRONLY | os.O_TRUNC))
    elif how == "truncate":
        os.truncate(name, 3)
    elif how == "read":
        with open(name, "rb") as f:
            f.read()
    out[name] = oct(os.stat(name).st_mode)
print(json.dumps(out))
"""


@pytest.mark.parametrize("kernel_cache", [False, True])
def test_write_by_user_clears_setuid(mount_factory: MountFactory, ref: Path, kernel_cache: bool) -> None:
    """A write or truncate by a caller without CAP_FSETID clears setuid, and setgid if
    group-executable, as a local write does; a read or a root write does not."""
    with mount_factory("cleancache=tmem,allow_other" + (",kernel_cache" if kernel_cache else "")) as m:
        modes = (0o4755, 0o2755, 0o6775, 0o2745, 0o4700)
        for base in (m.mnt, ref):
            for how in ("write", "pwrite", "append", "otrunc", "truncate", "read", "root"):
                for mode in modes:
                    path = base / f"{how}-{mode:o}"
                    path.write_bytes(pattern(200))
                    os.chown(path, USER, GROUP)
                    os.chmod(path, mode)
                    if how == "root":
                        with open(path, "r+b") as f:
                            f.write(b"R")
        got = run_as_user(USER_KILL_PRIV, m.mnt)
        want = run_as_user(USER_KILL_PRIV, ref)
        assert got == want
        assert got["write-4755"] == oct(stat.S_IFREG | 0o755)
        assert got["write-2745"] == oct(stat.S_IFREG | 0o2745)
        assert got["root-6775"] == oct(stat.S_IFREG | 0o6775)
        assert {p.name: oct(p.stat().st_mode) for p in m.src.iterdir()} == got
        answers(m)


USER_SETGID = """
fd = os.open("f", os.O_CREAT | os.O_WRONLY, 0o2755)
os.close(fd)
os.mkdir("d", 0o755)
os.mknod("fifo", stat.S_IFIFO | 0o644)
os.symlink("f", "link")
print(json.dumps("done"))
"""


def test_create_as_user_in_setgid_dir(user_mnt: Mount, ref: Path) -> None:
    """The gid of a setgid parent wins over the caller's; new dirs inherit the bit."""
    for base in (user_mnt.mnt / "sg", ref / "sg"):
        base.mkdir()
        os.chown(base, 0, OTHER_GROUP)
        os.chmod(base, 0o2777)
    run_as_user(USER_SETGID, user_mnt.mnt / "sg")
    run_as_user(USER_SETGID, ref / "sg")
    src = _owners(user_mnt.src / "sg")
    assert src == _owners(ref / "sg")
    assert all(uid == USER and gid == OTHER_GROUP for uid, gid, _ in src.values())
    assert src["d"][2] & stat.S_ISGID


USER_DENIED = """
out = {
    "read": err(open, "secret", "rb"),
    "write": err(open, "secret", "r+b"),
    "access": [os.access("secret", m) for m in (os.R_OK, os.W_OK, os.X_OK, os.F_OK)],
    "create": err(os.open, "closed/new", os.O_CREAT | os.O_WRONLY, 0o644),
    "mkdir": err(os.mkdir, "closed/d"),
    "unlink": err(os.unlink, "closed/file"),
    "listdir": err(os.listdir, "private"),
    "chmod": err(os.chmod, "secret", 0o644),
    "chown": err(os.chown, "mine", 0, 0),
    "truncate": err(os.truncate, "secret", 0),
    "utime": err(os.utime, "secret", (1, 1)),
    "setxattr": err(os.setxattr, "secret", "user.x", b"1"),
}
print(json.dumps(out))
"""


def test_permission_denied_as_user(user_mnt: Mount, ref: Path) -> None:
    """default_permissions: the kernel refuses a caller what the mode bits refuse."""
    os.chmod(ref, 0o777)
    for base in (user_mnt.mnt, ref):
        (base / "secret").write_bytes(b"root only")
        os.chmod(base / "secret", 0o600)
        (base / "closed").mkdir(mode=0o755)
        (base / "closed" / "file").touch()
        (base / "private").mkdir(mode=0o700)
        (base / "mine").touch()
        os.chown(base / "mine", USER, GROUP)
    got = run_as_user(USER_DENIED, user_mnt.mnt)
    assert got == run_as_user(USER_DENIED, ref)
    assert got["read"] == got["write"] == got["create"] == got["listdir"] == "EACCES"
    assert got["access"] == [False, False, False, True]
    assert (user_mnt.src / "secret").read_bytes() == b"root only"
    assert (user_mnt.src / "closed" / "file").exists()


@pytest.mark.parametrize("kernel_cache", [False, True])
def test_o_append(mount_factory: MountFactory, ref: Path, kernel_cache: bool) -> None:
    """O_APPEND writes land at the current end, even after another fd grew the file."""
    with mount_factory("cleancache=tmem" + (",kernel_cache" if kernel_cache else "")) as m:
        results = []
        for base in (m.mnt, ref):
            (base / "f").write_bytes(b"start\n")
            app = os.open(base / "f", os.O_WRONLY | os.O_APPEND)
            other = os.open(base / "f", os.O_WRONLY)
            try:
                os.write(app, b"one\n")
                os.pwrite(other, b"0123456789" * 500, 3000)
                os.write(app, b"two\n")
                os.pwrite(app, b"three\n", 0)  # Linux: O_APPEND wins over the offset
                results.append((base / "f").read_bytes())
            finally:
                os.close(app)
                os.close(other)
        assert results[0] == results[1]
        assert results[0].endswith(b"two\nthree\n")
        assert (m.src / "f").read_bytes() == results[1]


OPEN_FLAGS = {
    "rdonly-nofollow": os.O_RDONLY | os.O_NOFOLLOW, "rdwr-nofollow": os.O_RDWR | os.O_NOFOLLOW,
    "noatime": os.O_RDONLY | os.O_NOATIME, "sync": os.O_RDWR | os.O_SYNC, "dsync": os.O_WRONLY | os.O_DSYNC,
    "nonblock": os.O_RDONLY | os.O_NONBLOCK, "async": os.O_RDONLY | os.O_ASYNC,
    "cloexec-noctty": os.O_RDWR | os.O_CLOEXEC | os.O_NOCTTY, "directory": os.O_RDONLY | os.O_DIRECTORY,
}


def test_open_flags(mnt: Mount, ref: Path) -> None:
    """Opening a regular file with any of these flags does what it does locally."""
    for label, flags in OPEN_FLAGS.items():
        results: list[tuple[str, bytes | str]] = []
        for base in (mnt.mnt, ref):
            (base / label).mkdir()
            (base / label / "f").write_bytes(b"contents")
            os.symlink("f", base / label / "link")
            for name in ("f", "link"):
                try:
                    fd = os.open(base / label / name, flags)
                except OSError as exc:
                    results.append((name, errno.errorcode[exc.errno or 0]))
                    continue
                try:
                    if flags & os.O_ACCMODE != os.O_RDONLY:
                        os.pwrite(fd, b"C", 0)
                    data = os.pread(fd, 100, 0) if flags & os.O_ACCMODE != os.O_WRONLY else b""
                    results.append((name, data))
                finally:
                    os.close(fd)
        assert results[:2] == results[2:], label
        assert results[0][1] in (b"contents", b"Contents", b"", "ENOTDIR"), label
        if flags & os.O_NOFOLLOW:
            assert results[:2] == [("f", results[0][1]), ("link", "ELOOP")], label
        assert (mnt.src / label / "f").read_bytes() == (ref / label / "f").read_bytes(), label


def test_o_trunc(mnt: Mount) -> None:
    data = pattern(3 * PAGE + 5)
    (mnt.src / "f").write_bytes(data)
    assert (mnt.mnt / "f").read_bytes() == data  # cached by tmemfs
    fd = os.open(mnt.mnt / "f", os.O_WRONLY | os.O_TRUNC)
    os.close(fd)
    assert os.stat(mnt.src / "f").st_size == 0
    assert (mnt.mnt / "f").read_bytes() == b""
    fd = os.open(mnt.mnt / "f", os.O_RDWR)
    os.write(fd, b"abc")
    os.close(fd)
    fd = os.open(mnt.mnt / "f", os.O_RDWR | os.O_TRUNC)
    try:
        assert os.fstat(fd).st_size == 0
        os.write(fd, b"xy")
        assert os.pread(fd, 10, 0) == b"xy"
    finally:
        os.close(fd)
    assert (mnt.src / "f").read_bytes() == b"xy"


def test_o_excl(mnt: Mount) -> None:
    (mnt.src / "f").write_bytes(b"keep")
    os.symlink("dangling-target", mnt.src / "link")
    flags = os.O_CREAT | os.O_EXCL | os.O_WRONLY
    assert errno_of(os.open, mnt.mnt / "f", flags, 0o644) == errno.EEXIST
    assert errno_of(os.open, mnt.mnt / "link", flags, 0o644) == errno.EEXIST
    (mnt.mnt / "d").mkdir()
    assert errno_of(os.open, mnt.mnt / "d", flags, 0o644) == errno.EEXIST
    assert (mnt.src / "f").read_bytes() == b"keep"
    assert not (mnt.src / "dangling-target").exists()
    os.close(os.open(mnt.mnt / "new", flags, 0o644))
    assert (mnt.src / "new").exists()


RACE_USER = """
import time
out = {"attempts": 0, "opened": 0, "leaks": 0, "errors": {}}
deadline = time.monotonic() + float(sys.argv[2])
while time.monotonic() < deadline:
    out["attempts"] += 1
    try:
        fd = os.open("v", os.O_CREAT | os.O_RDWR, 0o644)
    except OSError as exc:
        name = errno.errorcode[exc.errno]
        out["errors"][name] = out["errors"].get(name, 0) + 1
        continue
    out["opened"] += 1
    if os.pread(fd, 100, 0) == b"root secret":
        out["leaks"] += 1
    os.close(fd)
    try:
        os.unlink("v")
    except OSError:
        pass
print(json.dumps(out))
"""

FLOOD = """
import os, sys, time
deadline = time.monotonic() + float(sys.argv[2])
while time.monotonic() < deadline:
    os.stat(sys.argv[1])
"""


RACE_MKDIR_USER = """
import time
out = {"made": 0, "errors": {}}
deadline = time.monotonic() + float(sys.argv[2])
while time.monotonic() < deadline:
    got = err(os.mkdir, "v", 0o755)
    if got == "ok":
        out["made"] += 1
    else:
        out["errors"][got] = out["errors"].get(got, 0) + 1
    err(os.rmdir, "v")
print(json.dumps(out))
"""


def race_in_src(m: Mount, user_code: str, make: Callable[[Path], int],
                remove: Callable[[Path], None], seconds: float = 1.5) -> tuple[dict[str, Any], int, int]:
    """Run `user_code` as USER in MNT/race while root makes `v` in SRC/race directly with
    make(path) (an open descriptor of what it made, or -1) and removes it. Two stat floods
    keep the single-task daemon busy so that the window between the kernel's lookup and
    tmemfs's creating call is wide. Returns the user's JSON, how many objects root made,
    and how many of those were found owned by someone else one round later (tmemfs may
    chown late)."""
    (m.mnt / "race").mkdir()
    os.chmod(m.mnt / "race", 0o777)
    (m.mnt / "other").touch()
    dfd = os.open(m.mnt / "race", os.O_RDONLY | os.O_DIRECTORY)
    try:
        user = subprocess.Popen(
            ["setpriv", f"--reuid={USER}", f"--regid={GROUP}", "--clear-groups", "/usr/bin/python3",
             "-c", USER_PRELUDE + user_code, str(dfd), str(seconds)],
            pass_fds=(dfd,), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    finally:
        os.close(dfd)
    floods = [subprocess.Popen(["/usr/bin/python3", "-c", FLOOD, str(m.mnt / "other"), str(seconds)])
              for _ in range(2)]
    path = m.src / "race" / "v"
    made = stolen = 0
    previous = -1
    try:
        while user.poll() is None:
            fd = make(path)
            made += fd >= 0
            if previous >= 0:
                stolen += os.fstat(previous).st_uid != 0
                os.close(previous)
            previous = fd
            with contextlib.suppress(FileNotFoundError):
                remove(path)
    finally:
        if previous >= 0:
            os.close(previous)
        out, errs = user.communicate(timeout=30)
        for flood in floods:
            flood.wait(timeout=30)
    assert user.returncode == 0, errs
    return json.loads(out), made, stolen


def root_file(path: Path) -> int:
    try:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
    except FileExistsError:
        return -1
    os.write(fd, b"root secret")
    return fd


def root_directory(path: Path) -> int:
    """Root's 0700 directory, opened; -1 if the name held the user's (0755) by then."""
    try:
        os.mkdir(path, 0o700)
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    except (FileExistsError, FileNotFoundError, NotADirectoryError):
        return -1
    if stat.S_IMODE(os.fstat(fd).st_mode) != 0o700:  # the user removed ours and made theirs meanwhile
        os.close(fd)
        return -1
    return fd


def test_create_never_takes_over_a_file_that_appeared(mount_factory: MountFactory) -> None:
    """The kernel sends CREATE after a lookup found nothing; if SRC got the name in
    between, tmemfs must not open that file for the caller -- which skips the permission
    check -- nor give it to the caller. Root makes and removes a 0600 file directly in
    SRC while a user opens the name with O_CREAT through the mount. Before the fix the
    user read the root file hundreds of times a second."""
    with mount_factory("cleancache=tmem,allow_other,attr_timeout=0,entry_timeout=0") as m:
        got, made, stolen = race_in_src(m, RACE_USER, root_file, os.unlink)
        assert made > 100 and got["opened"] > 10, got  # both sides really ran
        assert got["errors"].keys() <= {"EACCES", "ESTALE", "ENOENT"}, got
        assert got["leaks"] == 0, got
        assert stolen == 0
        answers(m)


def test_mkdir_never_gives_away_a_directory_that_appeared(mount_factory: MountFactory) -> None:
    """A directory is born owned by its caller (tmemfs makes it with the caller's
    filesystem ids), so there is no chown that could hit a root directory SRC swapped in
    under the name between tmemfs's mkdir and its lookup of the result."""
    with mount_factory("cleancache=tmem,allow_other,attr_timeout=0,entry_timeout=0") as m:
        got, made, stolen = race_in_src(m, RACE_MKDIR_USER, root_directory, os.rmdir)
        assert made > 100 and got["made"] > 10, got
        assert got["errors"].keys() <= {"EEXIST", "ENOENT", "ESTALE", "ENOTEMPTY", "EACCES", "EPERM"}, got
        assert stolen == 0
        answers(m)


def test_creating_as_gives_the_owner_and_keeps_the_daemons_access(tmp_path: Path) -> None:
    """syscalls.creating_as: objects are born uid:gid while the daemon's permission checks
    still apply (a root-only directory is writable inside), and the thread is root again
    afterwards."""
    private = tmp_path / "private"
    private.mkdir(mode=0o700)
    with creating_as(USER, GROUP):
        os.mkdir(private / "d")
        os.close(os.open(private / "f", os.O_CREAT | os.O_WRONLY, 0o640))
        os.symlink("x", private / "l")
        os.mknod(private / "c", stat.S_IFCHR | 0o600, os.makedev(1, 3))
    for name in "dflc":
        st = os.lstat(private / name)
        assert (st.st_uid, st.st_gid) == (USER, GROUP), name
    os.mkdir(private / "after")
    assert os.stat(private / "after").st_uid == 0 and os.getresuid() == (0, 0, 0)


# -- special files and links ----------------------------------------------------------------


MKNOD_KINDS = {
    "fifo": (stat.S_IFIFO | 0o640, 0), "chr": (stat.S_IFCHR | 0o620, os.makedev(1, 3)),
    "blk": (stat.S_IFBLK | 0o600, os.makedev(7, 200)), "sock": (stat.S_IFSOCK | 0o777, 0),
    "reg": (stat.S_IFREG | 0o4755, 0),
}


def test_mknod_kinds(mnt: Mount, ref: Path, umask0: None) -> None:
    for kind, (mode, dev) in MKNOD_KINDS.items():
        os.mknod(mnt.mnt / kind, mode, dev)
        os.mknod(ref / kind, mode, dev)
        st, want = os.lstat(mnt.src / kind), os.lstat(ref / kind)
        assert (st.st_mode, st.st_rdev, st.st_uid) == (want.st_mode, want.st_rdev, want.st_uid) == (mode, dev, 0)
        seen = os.lstat(mnt.mnt / kind)
        assert (seen.st_mode, seen.st_rdev, seen.st_ino) == (mode, dev, st.st_ino), kind


def test_mkfifo(mnt: Mount, ref: Path, umask022: None) -> None:
    os.mkfifo(mnt.mnt / "fifo", 0o666)
    os.mkfifo(ref / "fifo", 0o666)
    st = os.stat(mnt.src / "fifo")
    assert stat.S_ISFIFO(st.st_mode)
    assert st.st_mode == os.stat(ref / "fifo").st_mode == stat.S_IFIFO | 0o644
    assert os.stat(mnt.mnt / "fifo").st_mode == st.st_mode
    assert errno_of(os.mkfifo, mnt.mnt / "fifo") == errno.EEXIST


def test_mknod_char_device(mnt: Mount, umask0: None) -> None:
    dev = os.makedev(1, 3)
    os.mknod(mnt.mnt / "null", stat.S_IFCHR | 0o620, dev)
    st = os.stat(mnt.src / "null")
    assert stat.S_ISCHR(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o620
    assert st.st_rdev == dev
    seen = os.stat(mnt.mnt / "null")
    assert (seen.st_mode, seen.st_rdev, seen.st_ino) == (st.st_mode, dev, st.st_ino)
    os.mknod(mnt.mnt / "reg", stat.S_IFREG | 0o640)
    assert stat.S_ISREG(os.stat(mnt.src / "reg").st_mode)


def test_symlink_readlink(mnt: Mount) -> None:
    targets = ["plain", "a/b/../c", "/etc/passwd", "../../../../../..", "x" * 4000, "\x01\xff", " "]
    for n, target in enumerate(targets):
        link = f"link{n}"
        os.symlink(target, mnt.mnt / link)
        assert os.readlink(mnt.src / link) == target
        assert os.readlink(mnt.mnt / link) == target
        st = os.lstat(mnt.mnt / link)
        assert stat.S_ISLNK(st.st_mode)
        assert st.st_size == len(os.fsencode(target))
        assert st.st_ino == os.lstat(mnt.src / link).st_ino
        assert errno_of(os.symlink, "other", mnt.mnt / link) == errno.EEXIST
    assert errno_of(os.readlink, mnt.mnt / "missing") == errno.ENOENT
    (mnt.mnt / "file").touch()
    assert errno_of(os.readlink, mnt.mnt / "file") == errno.EINVAL


def _snapshot(top: Path, skip: Path) -> dict[str, tuple[int, int, int, int]]:
    out = {}
    for dirpath, dirnames, filenames in os.walk(top):
        if Path(dirpath) == skip.parent:
            dirnames[:] = [d for d in dirnames if Path(dirpath, d) != skip]
        for name in dirnames + filenames:
            st = os.lstat(Path(dirpath, name))
            out[str(Path(dirpath, name))] = (st.st_mode, st.st_uid, st.st_mtime_ns, st.st_ctime_ns)
    return out


def test_symlinks_are_followed_by_the_kernel_not_tmemfs(mount_factory: MountFactory, tmp_path: Path) -> None:
    """SRC sits deeper than MNT, so `..` chains resolve to different places from each.

    Through the mount, the kernel resolves every link relative to MNT; tmemfs
    itself never follows one, so nothing near SRC (outside it) is touched.
    """
    src = tmp_path / "deep" / "er" / "src"
    src.mkdir(parents=True)
    near_src = tmp_path / "deep" / "er" / "probe"  # where `../probe` points from SRC
    near_src.write_bytes(b"next to SRC")
    near_mnt = tmp_path / "probe"  # where `../probe` points from MNT (tmp_path/mnt0)
    near_mnt.write_bytes(b"next to MNT")
    passwd = Path("/etc/passwd")
    passwd_before = os.stat(passwd)
    before = _snapshot(tmp_path / "deep", src)
    with mount_factory("cleancache=tmem", src=src) as m:
        assert m.mnt.parent == tmp_path
        os.symlink("../probe", m.mnt / "up")
        (m.mnt / "sub").mkdir()
        os.symlink("../../probe", m.mnt / "sub" / "upup")
        os.symlink("/etc/passwd", m.mnt / "passwd")
        os.symlink("../" * 40 + "etc/passwd", m.mnt / "sub" / "chain")
        os.symlink("../created-by-open", m.mnt / "dangling")
        os.symlink("../probe", m.mnt / "sub" / "again")
        for name in ("up", "sub/upup", "passwd", "sub/chain", "dangling"):
            assert stat.S_ISLNK(os.lstat(m.mnt / name).st_mode)
            assert stat.S_ISLNK(os.lstat(src / name).st_mode)
        assert os.readlink(m.mnt / "sub" / "upup") == "../../probe"
        # reads follow the links relative to MNT, in the kernel
        assert (m.mnt / "up").read_bytes() == b"next to MNT"
        assert (m.mnt / "sub" / "upup").read_bytes() == b"next to MNT"
        assert (m.mnt / "passwd").read_bytes() == passwd.read_bytes()
        assert (m.mnt / "sub" / "chain").read_bytes() == passwd.read_bytes()
        assert os.stat(m.mnt / "passwd").st_ino == passwd_before.st_ino
        # writes and creates too
        with open(m.mnt / "up", "ab") as f:
            f.write(b" +appended")
        assert near_mnt.read_bytes() == b"next to MNT +appended"
        os.close(os.open(m.mnt / "dangling", os.O_CREAT | os.O_WRONLY, 0o644))
        assert (tmp_path / "created-by-open").exists()
        assert not (tmp_path / "deep" / "er" / "created-by-open").exists()
        # operations on the links themselves stay on the links
        os.chown(m.mnt / "up", USER, GROUP, follow_symlinks=False)
        os.utime(m.mnt / "sub" / "again", ns=(5, 7), follow_symlinks=False)
        os.chown(m.mnt / "passwd", USER, GROUP, follow_symlinks=False)
        os.link(m.mnt / "up", m.mnt / "up-hardlink", follow_symlinks=False)
        assert errno_of(os.setxattr, m.mnt / "passwd", "user.x", b"1", follow_symlinks=False) in (
            errno.EPERM, errno.ENOTSUP)
        assert os.listxattr(m.mnt / "passwd", follow_symlinks=False) == []
        assert os.lstat(src / "up").st_uid == USER
        assert os.lstat(src / "passwd").st_uid == USER
        assert os.lstat(src / "sub" / "again").st_mtime_ns == 7
        assert os.lstat(src / "up-hardlink").st_nlink == 2
        assert os.readlink(src / "up-hardlink") == "../probe"
        os.unlink(m.mnt / "up")
        os.rename(m.mnt / "sub" / "upup", m.mnt / "moved")
        assert os.readlink(src / "moved") == "../../probe"
        answers(m)
    assert near_src.read_bytes() == b"next to SRC"
    assert _snapshot(tmp_path / "deep", src) == before
    passwd_after = os.stat(passwd)
    assert (passwd_after.st_mode, passwd_after.st_uid, passwd_after.st_mtime_ns, passwd_after.st_ctime_ns) == \
        (passwd_before.st_mode, passwd_before.st_uid, passwd_before.st_mtime_ns, passwd_before.st_ctime_ns)


def test_exec_through_mount(mnt: Mount) -> None:
    """exec maps the binary MAP_PRIVATE (works with direct_io); scripts run too."""
    true = Path("/bin/true").resolve()
    (mnt.src / "true").write_bytes(true.read_bytes())
    os.chmod(mnt.src / "true", 0o755)
    (mnt.mnt / "script").write_text("#!/bin/sh\necho \"$0 ran\"\n")
    os.chmod(mnt.mnt / "script", 0o755)
    assert subprocess.run([str(mnt.mnt / "true")]).returncode == 0
    out = subprocess.run([str(mnt.mnt / "script")], capture_output=True, text=True, check=True)
    assert out.stdout == f"{mnt.mnt / 'script'} ran\n"
    os.chmod(mnt.mnt / "script", 0o644)
    assert errno_of(subprocess.run, [str(mnt.mnt / "script")]) == errno.EACCES


def test_hard_link(mnt: Mount) -> None:
    (mnt.mnt / "a").write_bytes(b"shared")
    os.link(mnt.mnt / "a", mnt.mnt / "b")
    for base in (mnt.mnt, mnt.src):
        sa, sb = os.stat(base / "a"), os.stat(base / "b")
        assert sa.st_nlink == sb.st_nlink == 2
        assert sa.st_ino == sb.st_ino
    assert os.stat(mnt.mnt / "a").st_ino == os.stat(mnt.src / "a").st_ino
    with open(mnt.mnt / "b", "r+b") as f:
        f.write(b"SH")
    assert (mnt.mnt / "a").read_bytes() == (mnt.src / "a").read_bytes() == b"SHared"
    (mnt.mnt / "d").mkdir()
    os.link(mnt.mnt / "a", mnt.mnt / "d" / "c")
    assert os.stat(mnt.src / "d" / "c").st_nlink == 3
    assert os.stat(mnt.mnt / "b").st_nlink == 3
    os.unlink(mnt.mnt / "a")
    assert os.stat(mnt.mnt / "b").st_nlink == os.stat(mnt.src / "b").st_nlink == 2
    assert errno_of(os.link, mnt.mnt / "b", mnt.mnt / "d" / "c") == errno.EEXIST
    assert errno_of(os.link, mnt.mnt / "d", mnt.mnt / "d2") == errno.EPERM  # no links to dirs
    assert errno_of(os.link, mnt.mnt / "missing", mnt.mnt / "x") == errno.ENOENT


def test_unlink(mnt: Mount) -> None:
    data = pattern(3 * PAGE)
    (mnt.mnt / "f").write_bytes(data)
    assert (mnt.mnt / "f").read_bytes() == data
    os.unlink(mnt.mnt / "f")
    assert not (mnt.src / "f").exists()
    assert not (mnt.mnt / "f").exists()
    assert errno_of(os.unlink, mnt.mnt / "f") == errno.ENOENT
    (mnt.mnt / "d").mkdir()
    assert errno_of(os.unlink, mnt.mnt / "d") == errno.EISDIR
    # a new file under the old name never shows the old data
    (mnt.src / "f").write_bytes(b"new")
    assert (mnt.mnt / "f").read_bytes() == b"new"


# -- rename ---------------------------------------------------------------------------------


def test_rename_plain(mnt: Mount) -> None:
    (mnt.mnt / "a").write_bytes(b"A" * 5000)
    ino = os.stat(mnt.src / "a").st_ino
    (mnt.mnt / "d").mkdir()
    os.rename(mnt.mnt / "a", mnt.mnt / "d" / "b")
    assert not (mnt.src / "a").exists()
    assert (mnt.src / "d" / "b").read_bytes() == b"A" * 5000
    assert os.stat(mnt.mnt / "d" / "b").st_ino == ino
    os.rename(mnt.mnt / "d", mnt.mnt / "e")
    assert (mnt.mnt / "e" / "b").read_bytes() == b"A" * 5000
    assert sorted(os.listdir(mnt.src)) == ["e"]


def test_rename_over_existing(mnt: Mount) -> None:
    (mnt.mnt / "a").write_bytes(b"new contents")
    (mnt.mnt / "b").write_bytes(pattern(2 * PAGE))
    assert (mnt.mnt / "b").read_bytes() == pattern(2 * PAGE)  # cached by tmemfs
    old = os.open(mnt.mnt / "b", os.O_RDONLY)
    try:
        os.rename(mnt.mnt / "a", mnt.mnt / "b")
        assert (mnt.src / "b").read_bytes() == b"new contents"
        assert (mnt.mnt / "b").read_bytes() == b"new contents"
        assert os.pread(old, 3 * PAGE, 0) == pattern(2 * PAGE)  # the replaced file, still open
    finally:
        os.close(old)
    assert not (mnt.mnt / "a").exists()
    (mnt.mnt / "full").mkdir()
    (mnt.mnt / "full" / "x").touch()
    (mnt.mnt / "empty").mkdir()
    assert errno_of(os.rename, mnt.mnt / "empty", mnt.mnt / "full") == errno.ENOTEMPTY
    assert errno_of(os.rename, mnt.mnt / "b", mnt.mnt / "empty") == errno.EISDIR
    os.rename(mnt.mnt / "full", mnt.mnt / "empty")
    assert os.listdir(mnt.src / "empty") == ["x"]
    # rename onto another hard link of the same file is a no-op
    os.link(mnt.mnt / "b", mnt.mnt / "b2")
    os.rename(mnt.mnt / "b", mnt.mnt / "b2")
    assert (mnt.mnt / "b2").read_bytes() == b"new contents"


def test_rename_noreplace(mnt: Mount) -> None:
    (mnt.mnt / "a").write_bytes(b"a")
    (mnt.mnt / "b").write_bytes(b"b")
    assert errno_of(renameat2, mnt.mnt / "a", mnt.mnt / "b", RENAME_NOREPLACE) == errno.EEXIST
    assert (mnt.src / "a").read_bytes() == b"a"
    assert (mnt.src / "b").read_bytes() == b"b"
    renameat2(mnt.mnt / "a", mnt.mnt / "c", RENAME_NOREPLACE)
    assert (mnt.src / "c").read_bytes() == b"a"
    assert not (mnt.src / "a").exists()


def test_rename_exchange(mnt: Mount) -> None:
    one, two = pattern(PAGE + 10, 1), pattern(3 * PAGE, 2)
    (mnt.mnt / "a").write_bytes(one)
    (mnt.mnt / "d").mkdir()
    (mnt.mnt / "d" / "b").write_bytes(two)
    assert (mnt.mnt / "a").read_bytes() == one and (mnt.mnt / "d" / "b").read_bytes() == two
    renameat2(mnt.mnt / "a", mnt.mnt / "d" / "b", RENAME_EXCHANGE)
    assert (mnt.src / "a").read_bytes() == two
    assert (mnt.src / "d" / "b").read_bytes() == one
    assert (mnt.mnt / "a").read_bytes() == two
    assert (mnt.mnt / "d" / "b").read_bytes() == one
    # a file and a directory swap too
    renameat2(mnt.mnt / "a", mnt.mnt / "d", RENAME_EXCHANGE)
    assert (mnt.src / "a" / "b").read_bytes() == one
    assert (mnt.src / "d").read_bytes() == two
    assert errno_of(renameat2, mnt.mnt / "d", mnt.mnt / "missing", RENAME_EXCHANGE) == errno.ENOENT


# -- statfs, xattrs, sync, access --------------------------------------------------------------


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
        _make(kind, base / "obj")
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


# -- names and depth --------------------------------------------------------------------------


def test_name_max(mnt: Mount) -> None:
    longest, too_long = "n" * 255, "n" * 256
    (mnt.mnt / longest).write_bytes(b"255")
    assert (mnt.src / longest).read_bytes() == b"255"
    assert longest in os.listdir(mnt.mnt)
    os.mkdir(mnt.mnt / ("d" * 255))
    os.symlink(longest, mnt.mnt / ("s" * 255))
    assert os.readlink(mnt.mnt / ("s" * 255)) == longest
    os.rename(mnt.mnt / longest, mnt.mnt / ("r" * 255))
    assert (mnt.src / ("r" * 255)).exists()
    assert errno_of(os.open, mnt.mnt / too_long, os.O_CREAT | os.O_WRONLY, 0o644) == errno.ENAMETOOLONG
    assert errno_of(os.mkdir, mnt.mnt / too_long) == errno.ENAMETOOLONG
    assert errno_of(os.stat, mnt.mnt / too_long) == errno.ENAMETOOLONG
    assert errno_of(os.symlink, "x", mnt.mnt / too_long) == errno.ENAMETOOLONG
    assert errno_of(os.rename, mnt.mnt / ("r" * 255), mnt.mnt / too_long) == errno.ENAMETOOLONG
    assert len(os.listdir(mnt.src)) == 3


def test_every_byte_in_names(mnt: Mount) -> None:
    """Names are bytes: every value 1..255 except '/' passes through unchanged."""
    everything = bytes(b for b in range(1, 256) if b != ord("/"))
    names = {everything, b"\xff\xfe not utf-8", b"-" + everything[:200]}
    names |= {bytes([b]) for b in everything if b != ord(".")}
    names |= {b"." + bytes([b]) + b"." for b in everything}
    mnt_b, src_b = os.fsencode(mnt.mnt), os.fsencode(mnt.src)
    for name in names:
        fd = os.open(mnt_b + b"/" + name, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        os.write(fd, name)
        os.close(fd)
    assert set(os.listdir(src_b)) == names
    assert set(os.listdir(mnt_b)) == names
    for name in names:
        with open(src_b + b"/" + name, "rb") as f:
            assert f.read() == name
        assert os.stat(mnt_b + b"/" + name).st_ino == os.stat(src_b + b"/" + name).st_ino
    os.mkdir(mnt_b + b"/" + everything[:100])
    os.rename(mnt_b + b"/" + everything, mnt_b + b"/" + everything[:100] + b"/" + everything[::-1])
    with open(src_b + b"/" + everything[:100] + b"/" + everything[::-1], "rb") as f:
        assert f.read() == everything


def _walk_fds(top: Path, names: list[str]) -> int:
    """Open the directory top/names[0]/names[1]/... one level at a time; returns its fd."""
    fd = os.open(top, os.O_RDONLY | os.O_DIRECTORY)
    for name in names:
        try:
            nxt = os.open(name, os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
        finally:
            os.close(fd)
        fd = nxt
    return fd


def test_tree_deeper_than_path_max(mnt: Mount) -> None:
    """300 levels of 20-character names (6300 bytes of path) through the mount."""
    names = [f"level-{n:03d}-abcdefghij" for n in range(300)]
    assert all(len(n) == 20 for n in names)
    assert len("/".join(names)) > 4096
    cwd = os.getcwd()
    try:
        os.chdir(mnt.mnt)
        for name in names:
            os.mkdir(name)
            os.chdir(name)
        Path("bottom.txt").write_bytes(b"deep down")
        assert os.stat(".").st_ino != 0
        assert os.listdir(".") == ["bottom.txt"]
        os.chdir("..")
        assert Path(names[-1], "bottom.txt").read_bytes() == b"deep down"
    finally:
        os.chdir(cwd)
    fd = _walk_fds(mnt.src, names)
    try:
        rfd = os.open("bottom.txt", os.O_RDONLY, dir_fd=fd)
        try:
            assert os.read(rfd, 100) == b"deep down"
        finally:
            os.close(rfd)
        src_ino = os.stat("bottom.txt", dir_fd=fd).st_ino
    finally:
        os.close(fd)
    fd = _walk_fds(mnt.mnt, names)
    try:
        assert os.stat("bottom.txt", dir_fd=fd).st_ino == src_ino
        wfd = os.open("second.txt", os.O_CREAT | os.O_WRONLY, 0o600, dir_fd=fd)
        os.write(wfd, b"via dir fd")
        os.close(wfd)
        os.rename("second.txt", "third.txt", src_dir_fd=fd, dst_dir_fd=fd)
    finally:
        os.close(fd)
    fd = _walk_fds(mnt.src, names)
    try:
        assert sorted(os.listdir(fd)) == ["bottom.txt", "third.txt"]
    finally:
        os.close(fd)
    answers(mnt)


# -- O_DIRECT and mmap ----------------------------------------------------------------------


@pytest.mark.parametrize("options", ["", ",backing_io=direct", ",kernel_cache"])
def test_o_direct(mount_factory: MountFactory, options: str) -> None:
    """Aligned O_DIRECT I/O works; an unaligned read on an O_DIRECT fd does not hurt the mount."""
    with mount_factory("cleancache=tmem" + options) as m:
        data = pattern(5 * PAGE + 123)
        (m.src / "f").write_bytes(data)
        fd = os.open(m.mnt / "f", os.O_RDWR | os.O_DIRECT)
        try:
            buf = mmap.mmap(-1, 2 * PAGE)
            assert os.preadv(fd, [buf], PAGE) == 2 * PAGE
            assert bytes(buf) == data[PAGE : 3 * PAGE]
            buf[:] = b"\xaa" * (2 * PAGE)
            assert os.pwritev(fd, [buf], 2 * PAGE) == 2 * PAGE
            expected = data[: 2 * PAGE] + b"\xaa" * (2 * PAGE) + data[4 * PAGE :]
            assert (m.src / "f").read_bytes() == expected
            buf[:] = bytes(2 * PAGE)
            assert os.preadv(fd, [buf], 4 * PAGE) == PAGE + 123  # short at end of file
            assert bytes(buf[: PAGE + 123]) == data[4 * PAGE :]
            # FUSE itself does not require O_DIRECT alignment (the kernel passes the
            # request on as is), so an EINVAL here could only come from tmemfs, e.g.
            # from handing the caller's O_DIRECT to its backing file: it must succeed.
            os.lseek(fd, 1, os.SEEK_SET)
            assert os.read(fd, 1000) == expected[1:1001]
            assert os.pread(fd, 5000, 4095) == expected[4095:9095]
            assert os.pwrite(fd, b"odd", 5) == 3
            expected = expected[:5] + b"odd" + expected[8:]
            buf.close()
        finally:
            os.close(fd)
        assert (m.src / "f").read_bytes() == expected
        assert (m.mnt / "f").read_bytes() == expected
        # a file created with O_DIRECT
        fd = os.open(m.mnt / "new", os.O_CREAT | os.O_EXCL | os.O_RDWR | os.O_DIRECT, 0o644)
        try:
            with mmap.mmap(-1, PAGE) as page:
                page[:] = pattern(PAGE, 3)
                assert os.pwritev(fd, [page], 0) == PAGE
        finally:
            os.close(fd)
        assert (m.src / "new").read_bytes() == pattern(PAGE, 3)
        answers(m)


def test_mmap_private_read(mnt: Mount) -> None:
    data = pattern(3 * PAGE + 77)
    (mnt.src / "f").write_bytes(data)
    fd = os.open(mnt.mnt / "f", os.O_RDONLY)
    try:
        with mmap.mmap(fd, 0, flags=mmap.MAP_PRIVATE, prot=mmap.PROT_READ) as mm:
            assert len(mm) == len(data)
            assert mm[:] == data
            assert mm[2 * PAGE + 5 : 2 * PAGE + 10] == data[2 * PAGE + 5 : 2 * PAGE + 10]
    finally:
        os.close(fd)
    answers(mnt)


def test_mmap_shared_refused_with_direct_io(mnt: Mount) -> None:
    """By default tmemfs opens files with direct_io (its own page cache sees every read).
    The kernel cannot keep a MAP_SHARED mapping coherent with direct_io, so the mmap
    fails with ENODEV (unless the kernel and libfuse negotiate
    FUSE_DIRECT_IO_ALLOW_MMAP, which libfuse 3.14 cannot); `kernel_cache` lifts it."""
    (mnt.src / "f").write_bytes(pattern(2 * PAGE))
    fd = os.open(mnt.mnt / "f", os.O_RDWR)
    try:
        assert errno_of(mmap.mmap, fd, 0) == errno.ENODEV
        assert errno_of(mmap.mmap, fd, 0, flags=mmap.MAP_SHARED, prot=mmap.PROT_READ) == errno.ENODEV
    finally:
        os.close(fd)
    assert (mnt.src / "f").read_bytes() == pattern(2 * PAGE)
    answers(mnt)


def test_mmap_shared_write_with_kernel_cache(mount_factory: MountFactory) -> None:
    with mount_factory("cleancache=tmem,kernel_cache") as m:
        data = pattern(3 * PAGE + 10)
        (m.src / "f").write_bytes(data)
        fd = os.open(m.mnt / "f", os.O_RDWR)
        try:
            with mmap.mmap(fd, 0) as mm:
                assert mm[:] == data
                mm[PAGE + 1 : PAGE + 6] = b"HELLO"
                mm[-3:] = b"END"
                mm.flush()
        finally:
            os.close(fd)
        expected = bytearray(data)
        expected[PAGE + 1 : PAGE + 6] = b"HELLO"
        expected[-3:] = b"END"
        assert (m.src / "f").read_bytes() == bytes(expected)
        assert (m.mnt / "f").read_bytes() == bytes(expected)
        answers(m)


def _tree_state(top: Path) -> dict[str, tuple[object, ...]]:
    out: dict[str, tuple[object, ...]] = {}
    for dirpath, dirnames, filenames in os.walk(top):
        for name in sorted(dirnames + filenames):
            path = Path(dirpath, name)
            st = os.lstat(path)
            if stat.S_ISREG(st.st_mode):
                extra: object = path.read_bytes()
            elif stat.S_ISLNK(st.st_mode):
                extra = os.readlink(path)
            else:
                extra = None
            xattrs = {} if stat.S_ISLNK(st.st_mode) else {
                k: os.getxattr(path, k) for k in os.listxattr(path) if k.startswith("user.")}
            out[str(path.relative_to(top))] = (st.st_mode, st.st_uid, st.st_gid, st.st_size, st.st_nlink,
                                               st.st_mtime_ns, extra, xattrs)
    return out


def test_cp_tar_rm_of_a_tree(mnt: Mount, ref: Path) -> None:
    """Everyday tools over a mixed tree: cp -a in, tar out, rm -rf; SRC matches the original."""
    tree = ref / "tree"
    (tree / "a" / "b").mkdir(parents=True)
    (tree / "file").write_bytes(pattern(50_000))
    (tree / "a" / "small").write_bytes(b"small")
    os.link(tree / "a" / "small", tree / "a" / "b" / "hard")
    os.symlink("../file", tree / "a" / "link")
    os.mkfifo(tree / "a" / "fifo")
    os.chmod(tree / "a" / "small", 0o4751)
    os.chown(tree / "file", USER, OTHER_GROUP)
    os.setxattr(tree / "file", "user.note", b"kept")
    os.utime(tree / "a" / "b", ns=(10**18, 10**18 + 7))
    subprocess.run(["cp", "-a", str(tree), str(mnt.mnt / "tree")], check=True)
    want = _tree_state(tree)
    assert _tree_state(mnt.src / "tree") == want
    assert _tree_state(mnt.mnt / "tree") == want
    archive = ref / "tree.tar"
    subprocess.run(["tar", "-C", str(mnt.mnt), "--xattrs", "-cf", str(archive), "tree"], check=True)
    (ref / "untar").mkdir()
    subprocess.run(["tar", "-C", str(ref / "untar"), "--xattrs", "-xpf", str(archive)], check=True)
    assert _tree_state(ref / "untar" / "tree") == want
    subprocess.run(["diff", "-r", "--no-dereference", "-x", "fifo", str(tree), str(mnt.mnt / "tree")], check=True)
    subprocess.run(["rm", "-rf", str(mnt.mnt / "tree")], check=True)
    assert os.listdir(mnt.src) == []
    answers(mnt)


# -- the control directory ------------------------------------------------------------------


def test_control_dir_cannot_be_removed_or_replaced(mnt: Mount) -> None:
    (mnt.src / ".tmemfs").mkdir()  # shadowed by the control directory
    (mnt.mnt / "dir").mkdir()
    (mnt.mnt / "file").touch()
    ctl = mnt.mnt / ".tmemfs"
    assert errno_of(os.rmdir, ctl) == errno.EPERM
    assert errno_of(os.unlink, ctl) == errno.EISDIR  # the kernel refuses before asking
    assert errno_of(os.rename, ctl, mnt.mnt / "elsewhere") == errno.EPERM
    assert errno_of(os.rename, mnt.mnt / "dir", ctl) == errno.EPERM
    assert errno_of(renameat2, mnt.mnt / "dir", ctl, RENAME_EXCHANGE) == errno.EPERM
    assert errno_of(os.mkdir, ctl) == errno.EEXIST
    os.mkdir(mnt.mnt / "dir" / ".tmemfs")  # only the root's name is taken
    (mnt.mnt / "dir" / ".tmemfs" / "x").write_bytes(b"ordinary")
    assert os.listdir(mnt.mnt / "dir") == [".tmemfs"]
    assert (mnt.src / "dir" / ".tmemfs" / "x").read_bytes() == b"ordinary"
    assert errno_of(os.symlink, "x", ctl) == errno.EEXIST
    for name in ("stats", "stats.json", "control"):
        assert errno_of(os.unlink, ctl / name) == errno.EPERM
        assert errno_of(os.rename, ctl / name, mnt.mnt / "stolen") == errno.EPERM
        assert errno_of(os.rename, mnt.mnt / "file", ctl / name) == errno.EPERM
    assert errno_of(os.open, ctl / "new", os.O_CREAT | os.O_WRONLY, 0o644) == errno.EPERM
    assert errno_of(os.mkdir, ctl / "new") == errno.EPERM
    assert errno_of(os.link, mnt.mnt / "file", ctl / "new") == errno.EPERM
    assert errno_of(os.link, ctl / "stats", mnt.mnt / "new") == errno.EPERM
    assert errno_of(os.chmod, ctl / "stats", 0o666) == errno.EPERM
    assert sorted(os.listdir(ctl)) == ["control", "stats", "stats.json"]
    assert (mnt.src / ".tmemfs").is_dir()
    assert sorted(os.listdir(mnt.src)) == [".tmemfs", "dir", "file"]
    answers(mnt)
