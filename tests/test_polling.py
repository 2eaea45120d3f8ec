"""poll_us=: pyfuse3's wait for the next request polls /dev/fuse before sleeping."""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

import pyfuse3
import pytest

from fusefs.polling import RequestPoller, fuse_device_fd
from tests.conftest import TMEMFS, MountFactory
from tests.test_hooks import PAGE, read_pages  # one read(2) per page, back to back
from tools.mounting import is_mounted, wait_live


def test_polling_finds_requests_and_serves_the_same_bytes(src: Path, mount_factory: MountFactory) -> None:
    data = os.urandom(256 * PAGE)
    (src / "f").write_bytes(data)
    with mount_factory("cleancache=tmem,poll_us=5000") as m:
        assert read_pages(m.mnt / "f", 256) == data
        s = m.stats()
        assert s["fuse.poll_us"] == 5000
        # Nearly every read(2) arrives while the daemon still polls after the last reply.
        assert s["fuse.polled"] >= 128, s
        m.control("reset_stats")
        assert m.stats()["fuse.polled"] <= 10  # only the requests of the control write and stats read


def test_poll_us_0_leaves_pyfuse3_waiting_its_own_way(src: Path, mount_factory: MountFactory) -> None:
    data = os.urandom(64 * PAGE)
    (src / "f").write_bytes(data)
    with mount_factory("cleancache=none,poll_us=0") as m:
        assert read_pages(m.mnt / "f", 64) == data
        s = m.stats()
        assert s["fuse.poll_us"] == 0 and "fuse.polled" not in s


def test_polling_mount_stops_on_sigterm_and_unmount(tmp_path: Path, src: Path) -> None:
    """The replaced wait must still end the loop: a signal (pyfuse3.terminate) and fusermount3 -u."""
    for how in ("sigterm", "fusermount"):
        mnt = tmp_path / f"mnt-{how}"
        mnt.mkdir()
        log = tmp_path / f"{how}.log"
        with open(log, "wb") as out:
            proc = subprocess.Popen([*TMEMFS, str(src), str(mnt), "-f", "-o", "poll_us=10000"],
                                    stdout=out, stderr=subprocess.STDOUT)
        try:
            wait_live(mnt, proc, log)
            if how == "sigterm":
                proc.send_signal(signal.SIGTERM)
            else:
                subprocess.run(["fusermount3", "-u", str(mnt)], check=True)
            assert proc.wait(timeout=20) == 0, log.read_text()
            assert not is_mounted(mnt)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            if is_mounted(mnt):
                subprocess.run(["fusermount3", "-u", "-z", str(mnt)], check=False)


def test_without_a_fuse_descriptor_nothing_is_replaced() -> None:
    original = pyfuse3._wait_fuse_readable  # type: ignore[attr-defined]
    assert fuse_device_fd() is None  # this test process mounted nothing
    poller = RequestPoller(50)
    assert not poller.install()
    assert pyfuse3._wait_fuse_readable is original  # type: ignore[attr-defined]
    assert poller.stats()["fuse.poll_us"] == 0


def test_install_and_uninstall_swap_pyfuse3s_wait(monkeypatch: pytest.MonkeyPatch) -> None:
    original = pyfuse3._wait_fuse_readable  # type: ignore[attr-defined]
    read_end, write_end = os.pipe()
    try:
        monkeypatch.setattr("fusefs.polling.fuse_device_fd", lambda: read_end)
        poller = RequestPoller(50)
        assert poller.install()
        assert pyfuse3._wait_fuse_readable == poller.wait  # type: ignore[attr-defined]
        assert poller.stats()["fuse.poll_us"] == 50
        poller.uninstall()
        assert pyfuse3._wait_fuse_readable is original  # type: ignore[attr-defined]
    finally:
        os.close(read_end)
        os.close(write_end)
        pyfuse3._wait_fuse_readable = original  # type: ignore[attr-defined]


def test_wait_polls_a_ready_descriptor_and_sleeps_in_trio_on_its_turn(monkeypatch: pytest.MonkeyPatch) -> None:
    import trio

    read_end, write_end = os.pipe()
    original = pyfuse3._wait_fuse_readable  # type: ignore[attr-defined]
    try:
        monkeypatch.setattr("fusefs.polling.fuse_device_fd", lambda: read_end)
        poller = RequestPoller(100)
        assert poller.install()
        os.write(write_end, b"x")  # a "request" is waiting

        async def waits(n: int) -> list[bool]:
            return [await poller.wait() for _ in range(n)]

        assert all(trio.run(waits, 128))
        assert poller.slept == 2 and poller.polled == 126  # every 64th wait goes through trio
        os.read(read_end, 1)

        async def empty_then_closed() -> bool:
            async with trio.open_nursery() as nursery:
                async def close_soon() -> None:
                    await trio.sleep(0.05)
                    trio.lowlevel.notify_closing(read_end)
                nursery.start_soon(close_soon)
                return await poller.wait()  # nothing to poll: sleeps, then the "unmount" ends it

        assert trio.run(empty_then_closed) is False
    finally:
        poller.uninstall()
        pyfuse3._wait_fuse_readable = original  # type: ignore[attr-defined]
        os.close(read_end)
        os.close(write_end)


def test_pauses_between_requests_reclaim_pages_ahead_of_misses(src: Path, mount_factory: MountFactory) -> None:
    """kswapd's job: between requests a few pages are evicted (and put) so a miss finds a free
    slot; what they put is served back from the pool, byte for byte."""
    data = os.urandom(4096 * PAGE)  # 16 MiB through an 8 MiB page cache (2048 pages: 32 kept free)
    (src / "f").write_bytes(data)
    with mount_factory("cleancache=tmem,cache_size=8M,cc_size=64M,poll_us=5000") as m:
        assert read_pages(m.mnt / "f", 4096) == data
        assert read_pages(m.mnt / "f", 4096) == data  # the first half comes back from tmem
        s = m.stats()
        assert s["pagecache.reclaimed"] > 0, s
        assert s["pagecache.pages"] <= s["pagecache.capacity_pages"] - 1  # slots kept free
        assert s["succ_gets"] > 0 and s["cleancache.verify_failures"] == 0
    with mount_factory("cleancache=tmem,cache_size=8M,cc_size=64M,poll_us=0") as m:
        assert read_pages(m.mnt / "f", 4096) == data
        assert m.stats()["pagecache.reclaimed"] == 0  # the pauses are only seen while polling
