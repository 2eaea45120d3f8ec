"""Special files, symlinks, hard links, exec and unlink through a real tmemfs mount, compared with SRC.

How these tests work, and their helpers: tests/opshelpers.py."""

from __future__ import annotations

import errno
import os
import stat
import subprocess
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from tests.opshelpers import GROUP, PAGE, USER, answers, errno_of, pattern

if TYPE_CHECKING:
    from tests.conftest import Mount, MountFactory

pytestmark = pytest.mark.mount


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


def _make_links(m: Mount) -> None:
    """Links through the mount that climb out of MNT (and would climb elsewhere from SRC)."""
    os.symlink("../probe", m.mnt / "up")
    (m.mnt / "sub").mkdir()
    os.symlink("../../probe", m.mnt / "sub" / "upup")
    os.symlink("/etc/passwd", m.mnt / "passwd")
    os.symlink("../" * 40 + "etc/passwd", m.mnt / "sub" / "chain")
    os.symlink("../created-by-open", m.mnt / "dangling")
    os.symlink("../probe", m.mnt / "sub" / "again")
    for name in ("up", "sub/upup", "passwd", "sub/chain", "dangling"):
        assert stat.S_ISLNK(os.lstat(m.mnt / name).st_mode)
        assert stat.S_ISLNK(os.lstat(m.src / name).st_mode)
    assert os.readlink(m.mnt / "sub" / "upup") == "../../probe"


def _check_operations_stay_on_links(m: Mount) -> None:
    """chown, utime, link, xattrs, unlink and rename of a link act on the link, not its target."""
    src = m.src
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
        _make_links(m)
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
        _check_operations_stay_on_links(m)
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
