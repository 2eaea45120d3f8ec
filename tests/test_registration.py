"""Run-time registration (lazy init): placeholders, register, unregister, replace."""

from __future__ import annotations

import errno
import os
import threading
import time
from pathlib import Path

import pytest

from tests.conftest import Mount, MountFactory

PAGE = 4096
N = 16


def command(m: Mount, text: str) -> None:
    fd = os.open(m.mnt / ".tmemfs" / "control", os.O_WRONLY)
    try:
        os.write(fd, text.encode() + b"\n")
    finally:
        os.close(fd)


def refused(m: Mount, text: str) -> int | None:
    with pytest.raises(OSError) as info:
        command(m, text)
    return info.value.errno


def test_placeholder_pool_then_register(src: Path, mount_factory: MountFactory) -> None:
    data = os.urandom(2 * N * PAGE)
    (src / "f").write_bytes(data)
    with mount_factory(f"cleancache=none,cache_size={N * PAGE}") as m:
        fd = os.open(m.mnt / "f", os.O_RDONLY)
        try:  # page by page: a scan of a file larger than the cache would go around it, unput
            assert b"".join(os.pread(fd, PAGE, n * PAGE) for n in range(2 * N)) == data
        finally:
            os.close(fd)
        s = m.stats()
        assert s["cleancache.backend"] == "none" and s["cleancache.placeholder_pools"] == 1
        assert s["puts"] > 0 and s["succ_gets"] == 0
        command(m, "register tmem cc_size=64M")
        s = m.stats()
        assert s["cleancache.backend"] == "tmem" and s["cleancache.placeholder_pools"] == 0
        m.control("reset_stats")
        assert (m.mnt / "f").read_bytes() == data  # evictions now land in tmem
        assert (m.mnt / "f").read_bytes() == data  # and come back from it
        s = m.stats()
        assert s["succ_gets"] > 0 and s["backend.tmem.capacity_bytes"] == 64 << 20


def test_register_over_live_backend_is_ebusy_replace_works(mount_factory: MountFactory) -> None:
    with mount_factory("cleancache=zcache") as m:
        (m.mnt / "f").write_bytes(bytes(N * PAGE))
        (m.mnt / "f").read_bytes()
        m.control("drop_caches")
        assert m.stats()["backend.zcache.stored_pages"] == N
        assert refused(m, "register tmem") == errno.EBUSY
        assert m.stats()["cleancache.backend"] == "zcache"
        command(m, "replace dedup dd_compress=lz4")
        s = m.stats()
        assert s["cleancache.backend"] == "dedup" and s["backend.dedup.stored_pages"] == 0
        assert (m.mnt / "f").read_bytes() == bytes(N * PAGE)  # the flushed pool cost a read, no error
        command(m, "unregister")
        s = m.stats()
        assert s["cleancache.backend"] == "none" and s["cleancache.placeholder_pools"] == 1
        assert "backend.dedup.puts" in s  # the retired backend's counters are kept
        assert refused(m, "unregister") == errno.EINVAL


@pytest.mark.parametrize("bad", ["register", "register nosuch", "register zcache zc_max=lots",
                                 "register zcache frob=1", "register none", "unregister now",
                                 "register tmem\nflush", "replace"])
def test_bad_register_commands_are_einval(mount_factory: MountFactory, bad: str) -> None:
    with mount_factory("cleancache=none") as m:
        assert refused(m, bad) == errno.EINVAL
        assert m.stats()["cleancache.backend"] == "none"


def test_two_mounts_use_different_backends(src: Path, mount_factory: MountFactory) -> None:
    (src / "f").write_bytes(bytes(4 * PAGE))
    with mount_factory("cleancache=zcache") as a, mount_factory("cleancache=dedup") as b:
        for m in (a, b):
            (m.mnt / "f").read_bytes()
            m.control("drop_caches")
        assert a.stats()["backend.zcache.stored_pages"] == 4
        assert b.stats()["backend.dedup.stored_pages"] == 4


def _read_static(path: Path, static: bytes, stop: threading.Event, errors: list[str]) -> None:
    """Random pages of a file nobody changes, each checked, until `stop`."""
    fd = os.open(path, os.O_RDONLY)
    try:
        while not stop.is_set():
            index = int.from_bytes(os.urandom(2)) % 64
            if os.pread(fd, PAGE, index * PAGE) != static[index * PAGE : (index + 1) * PAGE]:
                errors.append(f"reader: page {index} wrong")
    except OSError as exc:
        errors.append(f"reader: {exc}")
    finally:
        os.close(fd)


def _write_and_read_back(path: Path, stop: threading.Event, errors: list[str]) -> None:
    """Write a new generation of one page after another, each read back at once, until `stop`."""
    fd = os.open(path, os.O_RDWR)
    try:
        generation = 0
        while not stop.is_set():
            generation += 1
            index = generation % 64
            page = generation.to_bytes(8) * (PAGE // 8)
            os.pwrite(fd, page, index * PAGE)
            for probe in (index, (index + 32) % 64):
                got = os.pread(fd, PAGE, probe * PAGE)
                if probe == index and got != page:
                    errors.append(f"writer: page {index} reads back stale")
    except OSError as exc:
        errors.append(f"writer: {exc}")
    finally:
        os.close(fd)


def test_switching_backends_under_load_is_safe(src: Path, mount_factory: MountFactory) -> None:
    """A reader and a writer run while backends come and go: no error, no stale byte."""
    static = os.urandom(64 * PAGE)
    (src / "static").write_bytes(static)
    (src / "moving").write_bytes(bytes(64 * PAGE))
    errors: list[str] = []
    stop = threading.Event()
    with mount_factory(f"cleancache=tmem,cache_size={8 * PAGE}") as m:
        threads = [threading.Thread(target=_read_static, args=(m.mnt / "static", static, stop, errors)),
                   threading.Thread(target=_write_and_read_back, args=(m.mnt / "moving", stop, errors))]
        for t in threads:
            t.start()
        try:
            for _round in range(15):
                for text in ("unregister", "register zcache zc_poor=raw", "replace dedup",
                             "replace zcache+tmem", "unregister", "register tmem"):
                    command(m, text)
                    time.sleep(0.01)
                assert not errors, errors
        finally:
            stop.set()
            for t in threads:
                t.join()
        assert not errors, errors
        assert (m.mnt / "moving").read_bytes() == (src / "moving").read_bytes()
        s = m.stats()
    assert s["cleancache.registrations"] == 1 + 15 * 4
    assert s["succ_gets"] + s["failed_gets"] == s["pagecache.misses"]
    assert s["puts"] == s["pagecache.evictions"]
    assert s["cleancache.verify_failures"] == 0 and s["fs.internal_errors"] == 0
