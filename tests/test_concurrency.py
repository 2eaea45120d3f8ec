"""Many requests in flight through a real mount: several readers and a writer of one file,
readers of a file while another is written and fsync'ed, and max_requests=."""

from __future__ import annotations

import os
import random
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from tests.conftest import MountFactory, on_memory_filesystem

PAGE = 4096
PAGES = 1024  # a 4 MiB file; the page cache below holds a quarter of it


def pattern(generation: int, index: int) -> bytes:
    return (b"%06d:%08d|" % (generation, index)) * (PAGE // 16)


def run_threads(targets: list[threading.Thread]) -> None:
    for t in targets:
        t.start()
    for t in targets:
        t.join(timeout=120)
        assert not t.is_alive()


@pytest.mark.parametrize("options", ["cleancache=tmem,backing_io=direct", "cleancache=zcache",
                                     "cleancache=none,backing_io=direct"])
def test_readers_racing_a_writer_of_one_file_never_see_a_page_that_was_not_written(
        mount_factory: MountFactory, options: str) -> None:
    """Eight readers read random pages while a writer rewrites every page in turn, at least
    twice and until the readers have read 1000 pages (so they raced it however slow the
    machine). Each page read is one of the generations written to it (never a mix, never
    an older generation once a reader has seen a newer one of that page), and at the end
    every page is the last generation, through the mount and in SRC."""
    with mount_factory(f"{options},cache_size=1M,cc_size=64M,max_requests=16") as m:
        path = m.mnt / "f"
        path.write_bytes(b"".join(pattern(0, n) for n in range(PAGES)))
        stop = threading.Event()
        errors: list[str] = []
        reads = [0]
        last = [0]

        def reader(seed: int) -> None:
            rng = random.Random(seed)
            seen = [0] * PAGES
            fd = os.open(path, os.O_RDONLY)
            try:
                while not stop.is_set():
                    index = rng.randrange(PAGES)
                    got = os.pread(fd, PAGE, index * PAGE)
                    generation = int(got[:6]) if got[6:7] == b":" else -1
                    if generation < 0 or got != pattern(generation, index):
                        errors.append(f"page {index}: not any generation written: {got[:32]!r}")
                        return
                    if generation < seen[index]:
                        errors.append(f"page {index}: generation {generation} after {seen[index]}")
                        return
                    seen[index] = generation
                    reads[0] += 1
            finally:
                os.close(fd)

        def writer() -> None:
            fd = os.open(path, os.O_WRONLY)
            try:
                generation = 0
                while generation < 2 or (reads[0] <= 1000 and generation < 500):
                    generation += 1
                    for index in range(PAGES):
                        os.pwrite(fd, pattern(generation, index), index * PAGE)
                last[0] = generation
            finally:
                os.close(fd)
                stop.set()

        run_threads([threading.Thread(target=reader, args=(n,)) for n in range(8)] + [threading.Thread(target=writer)])
        assert not errors, errors[:5]
        assert reads[0] > 1000
        final = b"".join(pattern(last[0], n) for n in range(PAGES))
        assert path.read_bytes() == final
        assert (m.src / "f").read_bytes() == final
        stats = m.stats()
        assert stats["fuse.max_requests"] == 16
        assert stats["fs.internal_errors"] == 0
        # Requests were served side by side: some SRC reads took the routes for a busy loop
        # (off it, or RWF_NOWAIT inline; 4 KiB writes run inline whatever is in flight; on
        # tmpfs every read of SRC runs inline).
        routed = ("backing.thread_calls", "backing.aio_reads", "backing.nowait_reads")
        assert on_memory_filesystem(m.src) or sum(int(stats[key]) for key in routed) > 0


def test_readers_go_on_while_another_file_is_written_and_fsynced(mount_factory: MountFactory) -> None:
    """A large write with fsync runs off the loop: reads of another file are answered
    meanwhile (counted: reads completed while the fsync was in flight), and are right."""
    with mount_factory("cleancache=tmem,backing_io=direct,cache_size=4M,max_requests=16") as m:
        data = os.urandom(PAGES * PAGE)
        (m.mnt / "r").write_bytes(data)
        during = [0]
        in_fsync = threading.Event()
        done = threading.Event()
        errors: list[str] = []

        def reader() -> None:
            rng = random.Random(1)
            fd = os.open(m.mnt / "r", os.O_RDONLY)
            try:
                while not done.is_set():
                    index = rng.randrange(PAGES)
                    if os.pread(fd, PAGE, index * PAGE) != data[index * PAGE : (index + 1) * PAGE]:
                        errors.append(f"page {index} wrong")
                        return
                    if in_fsync.is_set():
                        during[0] += 1
            finally:
                os.close(fd)

        def writer() -> None:
            fd = os.open(m.mnt / "w", os.O_WRONLY | os.O_CREAT, 0o644)
            try:
                chunk = os.urandom(1 << 20)
                for n in range(64):
                    os.pwrite(fd, chunk, n << 20)
                in_fsync.set()
                os.fsync(fd)
                in_fsync.clear()
            finally:
                os.close(fd)
                done.set()

        run_threads([threading.Thread(target=reader), threading.Thread(target=writer)])
        assert not errors
        assert during[0] > 0  # answered while the fsync was in flight
        assert m.stats()["backing.thread_calls"] > 0


def read_pages_in_threads(path: Path, data: bytes, threads: int = 8, reads: int = 400) -> None:
    """`threads` readers of random pages of `path` at once, each page checked against `data`."""
    errors: list[str] = []

    def reader(seed: int) -> None:
        rng = random.Random(seed)
        fd = os.open(path, os.O_RDONLY)
        try:
            for _ in range(reads):
                index = rng.randrange(len(data) // PAGE)
                if os.pread(fd, PAGE, index * PAGE) != data[index * PAGE : (index + 1) * PAGE]:
                    errors.append(f"page {index} wrong")
                    return
        finally:
            os.close(fd)

    run_threads([threading.Thread(target=reader, args=(n,)) for n in range(threads)])
    assert not errors, errors[:5]


def test_reads_of_srcs_on_tmpfs_stay_on_the_loop_under_load(mount_factory: MountFactory) -> None:
    """SRC on tmpfs: a read of it is a copy from memory, so it runs inline however many
    requests are in flight (a hop to a thread for each made a 4k QD16 miss cost 7x the CPU)."""
    with tempfile.TemporaryDirectory(dir="/dev/shm") as top:
        data = os.urandom(PAGES * PAGE)
        (Path(top) / "f").write_bytes(data)
        with mount_factory("cleancache=none,cache_size=1M,max_requests=16", src=Path(top)) as m:
            read_pages_in_threads(m.mnt / "f", data)
            stats = m.stats()
            assert stats["backing.inline_calls"] > 1000
            assert stats["backing.thread_calls"] == 0 and stats["backing.nowait_reads"] == 0


@contextmanager
def tmpfs_at(path: Path) -> Iterator[Path]:
    """A small tmpfs mounted on `path` (made here), unmounted in a finally."""
    path.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16m", "tmemfs-test", str(path)], check=True, timeout=30)
    try:
        yield path
    finally:
        subprocess.run(["umount", str(path)], check=True, timeout=30)


def test_a_tmpfs_inside_src_is_read_on_the_loop_and_costs_the_disk_beside_it_nothing(
        mount_factory: MountFactory, tmp_path: Path) -> None:
    """SRC on disk with a tmpfs mounted inside it: under load, reads of a file on the tmpfs
    run inline, as on a tmpfs SRC, and reads of the same file on the disk beside it still
    try RWF_NOWAIT first. (When the mount's filesystem decided for all of SRC, the tmpfs
    reads went to threads, and tmpfs's refusal of RWF_NOWAIT cost the disk its own.)"""
    src = tmp_path / "src"
    src.mkdir()
    if on_memory_filesystem(src):
        pytest.skip("the test's SRC is on tmpfs here: there is no disk beside the tmpfs")
    data = os.urandom(PAGES * PAGE)
    with tmpfs_at(src / "mem") as mem:
        (mem / "f").write_bytes(data)
        (src / "f").write_bytes(data)  # in the host page cache: RWF_NOWAIT reads of it succeed
        with mount_factory("cleancache=none,cache_size=1M,max_requests=16") as m:
            m.control("reset_stats")
            read_pages_in_threads(m.mnt / "mem" / "f", data)
            on_memory = m.stats()
            m.control("reset_stats")
            read_pages_in_threads(m.mnt / "f", data)
            on_disk = m.stats()
    assert on_memory["backing.inline_calls"] > 1000
    assert on_memory["backing.thread_calls"] == 0 and on_memory["backing.nowait_reads"] == 0
    assert on_disk["backing.nowait_reads"] > 0


def test_max_requests_is_an_option(mount_factory: MountFactory) -> None:
    with mount_factory("cleancache=tmem,max_requests=1") as m:
        (m.mnt / "f").write_bytes(b"x" * 10000)
        assert (m.mnt / "f").read_bytes() == b"x" * 10000
        assert m.stats()["fuse.max_requests"] == 1


def test_max_requests_out_of_range_is_refused_before_mounting(tmp_path: Path) -> None:
    (tmp_path / "s").mkdir()
    (tmp_path / "m").mkdir()
    for bad in ("0", "x", "257"):
        done = subprocess.run([sys.executable, "-m", "fusefs.cli", str(tmp_path / "s"), str(tmp_path / "m"),
                               "-f", "-o", f"max_requests={bad}"], capture_output=True, text=True, timeout=30)
        assert done.returncode == 2
        assert f"max_requests={bad}" in done.stderr and done.stderr.count("\n") == 1

