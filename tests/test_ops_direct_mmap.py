"""O_DIRECT, mmap, and everyday tools (cp, tar, rm) through a real tmemfs mount, compared with SRC.

How these tests work, and their helpers: tests/opshelpers.py."""

from __future__ import annotations

import errno
import mmap
import os
import stat
import subprocess
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from tests.opshelpers import OTHER_GROUP, PAGE, USER, answers, errno_of, pattern

if TYPE_CHECKING:
    from tests.conftest import Mount, MountFactory

pytestmark = pytest.mark.mount


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
