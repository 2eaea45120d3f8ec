"""tools/nullfs.py through a real mount: zeros on read, writes swallowed, always unmounted."""

from __future__ import annotations

import mmap
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import pytest

from tools import bench, nullfs
from tools.fio import fio_command, run_fio
from tools.mounting import Mount, Workspace, is_mounted, pid_alive, stop_foreground, wait_mounted

pytestmark = pytest.mark.skipif(not os.path.exists("/dev/fuse"), reason="needs /dev/fuse")

SIZE = 1 << 20


@contextmanager
def null_mount(mnt: Path, *args: str) -> Iterator[subprocess.Popen[bytes]]:
    """python -m tools.nullfs MNT ARGS in the foreground; unmounted and reaped in a finally."""
    mnt.mkdir(parents=True, exist_ok=True)
    log = mnt.parent / "nullfs.log"
    with open(log, "wb") as logf:
        proc = subprocess.Popen([sys.executable, "-m", "tools.nullfs", str(mnt), *args], stdout=logf,
                                stderr=subprocess.STDOUT, cwd=Path(__file__).resolve().parent.parent)
    try:
        wait_mounted(mnt, lambda: proc.poll() is None)
        yield proc
    finally:
        stop_foreground(mnt, proc)
    assert not is_mounted(mnt)
    assert proc.returncode == 0, log.read_text()


def test_reads_zeros_and_swallows_writes(tmp_path: Path) -> None:
    mnt = tmp_path / "mnt"
    with null_mount(mnt, "--size", "1M", "--file", "a.dat", "--file", "b.dat"):
        assert sorted(os.listdir(mnt)) == ["a.dat", "b.dat"]
        st = os.stat(mnt / "a.dat")
        assert st.st_size == SIZE and st.st_mode & 0o777 == 0o644
        data = (mnt / "a.dat").read_bytes()
        assert len(data) == SIZE and data == bytes(SIZE)
        with open(mnt / "b.dat", "r+b", buffering=0) as f:
            assert f.write(b"x" * 10000) == 10000
            f.seek(SIZE - 100)
            assert f.read(4096) == bytes(100)  # short read at the end of the file
            assert f.read(4096) == b""
        assert (mnt / "b.dat").read_bytes() == bytes(SIZE)  # the write was discarded
        with pytest.raises(FileNotFoundError):
            os.stat(mnt / "nope")


def test_o_direct_reads_and_writes(tmp_path: Path) -> None:
    mnt = tmp_path / "mnt"
    with null_mount(mnt, "--size", "1M"):
        fd = os.open(mnt / nullfs.DEFAULT_FILE, os.O_RDWR | os.O_DIRECT)
        try:
            buf = mmap.mmap(-1, 4096)  # page-aligned, as O_DIRECT wants
            buf.write(b"\xff" * 4096)
            assert os.preadv(fd, [buf], 8192) == 4096
            assert bytes(buf) == bytes(4096)
            assert os.pwritev(fd, [buf], 0) == 4096
        finally:
            os.close(fd)


def test_backing_serves_src_files_as_tmemfs_serves_a_miss(tmp_path: Path) -> None:
    """--backing: the files are SRC's, read O_DIRECT (buffered and O_DIRECT callers, unaligned,
    short at the end) with many requests in flight, never cached."""
    src = tmp_path / "src"
    src.mkdir()
    data = os.urandom(SIZE + 1000)
    (src / "f").write_bytes(data)
    mnt = tmp_path / "mnt"
    with null_mount(mnt, "--file", "f", "--backing", str(src)):
        assert os.stat(mnt / "f").st_size == len(data)
        assert (mnt / "f").read_bytes() == data
        fd = os.open(mnt / "f", os.O_RDONLY)
        try:
            assert os.pread(fd, 5000, 12345) == data[12345:17345]
            assert os.pread(fd, 4096, SIZE) == data[SIZE:]
            with ThreadPoolExecutor(8) as pool:  # eight at once: SrcIO's routes for a busy loop
                pages = list(pool.map(lambda n: os.pread(fd, 4096, n * 4096), range(256)))
            assert b"".join(pages) == data[:SIZE]
        finally:
            os.close(fd)
        fd = os.open(mnt / "f", os.O_RDONLY | os.O_DIRECT)
        try:
            buf = mmap.mmap(-1, 8192)
            assert os.preadv(fd, [buf], 4096) == 8192 and bytes(buf) == data[4096:12288]
        finally:
            os.close(fd)
        (src / "f").write_bytes(bytes(len(data)))  # nothing was cached: the next read sees it
        assert (mnt / "f").read_bytes() == bytes(len(data))


def test_backing_that_lacks_a_file_is_refused_in_one_line(tmp_path: Path) -> None:
    (tmp_path / "mnt").mkdir()
    done = subprocess.run([sys.executable, "-m", "tools.nullfs", str(tmp_path / "mnt"), "--file", "nope",
                           "--backing", str(tmp_path)], capture_output=True, text=True, timeout=60,
                          cwd=Path(__file__).resolve().parent.parent)
    assert done.returncode == 2 and "--backing" in done.stderr and "No such file" in done.stderr
    assert not is_mounted(tmp_path / "mnt")


@pytest.mark.skipif(shutil.which("fio") is None, reason="needs fio")
def test_bench_mounts_it_and_fio_counts_both_directions(tmp_path: Path) -> None:
    """The bench's own Mount for the null configuration, and a short 70/30 randrw through it."""
    ws = Workspace(tmp_path / "results", Path(sys.executable).parent)
    ws.prepare()
    config = bench.MATRIX.config(bench.NULL)
    with Mount(config, ws, bench.MATRIX.files) as mount:
        assert mount.alive()
        pid = mount.pid
        assert pid is not None
        job = bench.ALL_JOBS["4k-randrw-libaio-qd16-d1"]
        result = run_fio(fio_command(job, mount.path / bench.RW_NAME, 0.3), None, 0.3, pid)
        assert result.error is None
        assert result.iops > result.write_iops > 0
        assert sorted(os.listdir(mount.path)) == sorted(bench.MATRIX.files)
    assert not is_mounted(ws.mnt)
    assert not pid_alive(pid)
