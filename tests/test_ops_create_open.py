"""create and open through a real tmemfs mount, compared with SRC: modes, owners, flags, races with SRC.

How these tests work, and their helpers: tests/opshelpers.py."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import stat
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from fusefs.syscalls import creating_as
from tests.opshelpers import GROUP, OTHER_GROUP, PAGE, USER, USER_PRELUDE, answers, errno_of, pattern, run_as_user

if TYPE_CHECKING:
    from tests.conftest import Mount, MountFactory

pytestmark = pytest.mark.mount


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
