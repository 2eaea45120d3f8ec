"""Unit tests of the data path driven directly (no mount): reads in order served as one view,
background reclaim, the sequential bypass, and tracing that only observes."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from backends.base import Backend
from backends.chain import ChainBackend
from backends.dedup import DedupBackend
from backends.tmem import TmemBackend
from backends.zcache import ZcacheBackend
from fusefs import datapath
from fusefs.cleancache import Cleancache
from fusefs.datapath import DataPath
from fusefs.pagecache import CachedFile, PageCache
from fusefs.tracing import Tracer
from tests.unithelpers import ENTRY, PAGE, CountingTmem


async def datapath_over(tmp_path: Path, pages: int, cache_pages: int,
                        backend: Backend | None = None) -> tuple[DataPath, CachedFile, int, bytes]:
    """A DataPath (without cleancache unless given a backend) over a file of `pages` random pages."""
    data = os.urandom(pages * PAGE)
    (tmp_path / "f").write_bytes(data)
    fd = os.open(tmp_path / "f", os.O_RDONLY)
    cc = Cleancache(backend)
    dp = DataPath(PageCache(cache_pages * PAGE), cc, await cc.init_fs())
    cached, _ = await dp.open_file(b"f", fd)
    return dp, cached, fd, data


async def test_reading_in_order_with_reclaim_serves_each_run_as_one_view(tmp_path: Path) -> None:
    """Slots handed out for a run are in order, so a 128 KiB read is one view of the
    slab, not a copy, also once reclaim has freed slots in between (it frees them
    oldest first, and a free list hands the last freed out first). (A backend that cannot
    serve a scan: without one, a scan of a file larger than the cache is not installed.)"""
    dp, cached, fd, data = await datapath_over(tmp_path, 512, 256, NoPeekTmem(1 << 20))
    try:
        assert dp.reserve == 4
        for _ in range(2):
            for offset in range(0, len(data), 32 * PAGE):
                got = await dp.read(cached, fd, offset, 32 * PAGE)
                assert isinstance(got, memoryview) and got == data[offset : offset + 32 * PAGE]
                await dp.reclaim(lambda: False)
        assert dp.reclaimed > 0 and dp.pc.evictions > 256
    finally:
        os.close(fd)


async def test_reclaim_stops_once_a_request_waits(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(datapath, "RECLAIM_NS", 10**9)  # only the waiting request stops it
    dp, cached, fd, data = await datapath_over(tmp_path, 4096, 2048, NoPeekTmem(1 << 20))
    try:
        for offset in range(0, len(data), 32 * PAGE):
            await dp.read(cached, fd, offset, 32 * PAGE)
        assert dp.pc.free_slots == 0 and dp.reserve == 32
        await dp.reclaim(lambda: True)
        assert dp.reclaimed == dp.pc.free_slots == datapath.RECLAIM_STEP < dp.reserve
        await dp.reclaim(lambda: False)
        assert dp.pc.free_slots == dp.reserve
    finally:
        os.close(fd)


class NoPeekTmem(TmemBackend):
    """tmem whose get_page is its own (a plugin's): it cannot peek, so no bypass."""

    async def get_page(self, pool: int, key: bytes, index: int, out: memoryview) -> bool:
        return await super().get_page(pool, key, index, out)


class LyingPeekTmem(TmemBackend):
    """tmem whose peeks return a wrong page: the frontend must catch it."""

    async def peek_pages(self, pool: int, key: bytes, first: int, outs: list[memoryview]) -> list[bool]:
        hits = await super().peek_pages(pool, key, first, outs)
        outs[0][:8] = b"WRONG!!!"
        return hits


def scan_backend(kind: str) -> Backend:
    capacity = 1024 * ENTRY
    if kind == "zcache+tmem":  # random pages: zcache refuses them, tmem keeps them
        return ChainBackend([ZcacheBackend(capacity), TmemBackend(capacity)])
    classes: dict[str, type[Backend]] = {"zcache": ZcacheBackend, "zcache refusing": ZcacheBackend,
                                         "dedup": DedupBackend, "nopeek": NoPeekTmem, "lying": LyingPeekTmem}
    return classes.get(kind, TmemBackend)(capacity)


@pytest.mark.parametrize("kind", ["tmem", "shared tmem", "zcache", "dedup", "zcache+tmem", "nopeek", "lying",
                                  "zcache refusing"])
async def test_a_scan_is_served_around_the_page_cache_and_the_pool_keeps_its_pages(tmp_path: Path,
                                                                                    kind: str) -> None:
    """Sequential bypass: a scan the pool holds is served from it without installing; the
    pages stay in the pool, so every pass after the first reads nothing from SRC. A private
    pool is served by peeking (an exclusive get would lose the pages); a backend that cannot
    peek is read the usual way; a peeked page that is not what was put is read from SRC;
    pages zcache refused come from SRC without churning the page cache."""
    if kind == "zcache":  # distinct pages that all compress (zcache refuses none)
        data = b"".join(((b"page %08d " % n) * 300)[:PAGE] for n in range(512))
    elif kind == "zcache refusing":  # one page in 8 does not compress
        data = b"".join(os.urandom(PAGE) if n % 8 == 0 else ((b"page %08d " % n) * 300)[:PAGE] for n in range(512))
    else:
        data = os.urandom(512 * PAGE)
    (tmp_path / "f").write_bytes(data)
    fd = os.open(tmp_path / "f", os.O_RDONLY)
    try:
        cc = Cleancache(scan_backend(kind))
        pool = await (cc.init_shared_fs(bytes(range(16))) if kind == "shared tmem" else cc.init_fs())
        dp = DataPath(PageCache(64 * PAGE), cc, pool)
        cached, _ = await dp.open_file(b"f", fd)
        for scan in range(3):  # first from SRC (evictions fill the pool), then from the pool
            if scan == 1:
                puts, backing = cc.puts, dp.backing_read_bytes
            for offset in range(0, len(data), 32 * PAGE):
                assert await dp.read(cached, fd, offset, 32 * PAGE) == data[offset : offset + 32 * PAGE]
        assert cc.succ_gets > 0 and dp.pc.pages <= 64
        assert (dp.bypassed > 0) == (kind != "nopeek")
        if kind != "nopeek":  # in each later pass only the stream's first 32 pages are installed
            assert cc.puts - puts == 2 * 32
        if kind in ("lying", "zcache refusing"):
            assert (cc.verify_failures > 0) == (kind == "lying")
            assert dp.backing_read_bytes > backing  # the lies, the refused pages: from SRC
        else:
            assert dp.backing_reads == 32  # the first pass only (16 pages a read): the pool kept every page
            assert cc.verify_failures == 0
    finally:
        os.close(fd)


async def test_a_cold_scan_asks_a_shared_pool_for_each_page_about_once(tmp_path: Path) -> None:
    """A scan the pool does not hold is read the usual way after the pool said so, and the
    pool is asked again only after 1, 2, 4... runs: not each page twice (probe, then fill),
    which costs a round trip each on Redis. A scan it holds is still served around the cache."""
    backend = CountingTmem(2048 * ENTRY)
    cc = Cleancache(backend)
    data = os.urandom(1024 * PAGE)
    (tmp_path / "f").write_bytes(data)
    fd = os.open(tmp_path / "f", os.O_RDONLY)
    try:
        dp = DataPath(PageCache(64 * PAGE), cc, await cc.init_shared_fs(bytes(range(16))))
        cached, _ = await dp.open_file(b"f", fd)
        for offset in range(0, len(data), 32 * PAGE):
            assert await dp.read(cached, fd, offset, 32 * PAGE) == data[offset : offset + 32 * PAGE]
        assert dp.bypassed == 0 and backend.calls["pages asked"] < 1.25 * 1024
        await dp.drop_caches()  # now the pool holds the whole file
        for offset in range(0, len(data), 32 * PAGE):
            assert await dp.read(cached, fd, offset, 32 * PAGE) == data[offset : offset + 32 * PAGE]
        assert dp.bypassed == 1024 - 32  # all but the first read (half the cache)
    finally:
        os.close(fd)


async def test_without_a_pool_a_scan_goes_around_the_page_cache_and_keeps_its_hot_pages(tmp_path: Path) -> None:
    """cleancache=none: a read in order longer than half the page cache comes from SRC
    without being installed (installing it would only evict everything, for nobody to put
    anywhere), so the pages of another file read before it are still cached after it; its
    gets are counted as misses, as on any miss."""
    dp, cached, fd, data = await datapath_over(tmp_path, 512, 64)
    hot_data = os.urandom(8 * PAGE)
    (tmp_path / "hot").write_bytes(hot_data)
    hot_fd = os.open(tmp_path / "hot", os.O_RDONLY)
    try:
        hot, _ = await dp.open_file(b"hot", hot_fd)
        assert await dp.read(hot, hot_fd, 0, 8 * PAGE) == hot_data
        for offset in range(0, len(data), 32 * PAGE):
            assert await dp.read(cached, fd, offset, 32 * PAGE) == data[offset : offset + 32 * PAGE]
        assert dp.bypassed == 512 - 32  # all but the first read: half the cache is a scan's start
        assert sorted(hot.pages) == list(range(8)) and len(cached.pages) == 32
        assert dp.cc.failed_gets == dp.pc.misses == 8 + 512 and dp.cc.succ_gets == 0
    finally:
        os.close(fd)
        os.close(hot_fd)


async def test_a_scan_reads_around_pages_the_cache_holds_in_one_read_of_src(tmp_path: Path) -> None:
    """Random reads left pages of the file cached; a scan then reads each of its runs from
    SRC in one go, those pages with the rest, instead of page by page (split at every
    cached page, installing and evicting). The cached pages stay cached."""
    dp, cached, fd, data = await datapath_over(tmp_path, 512, 64)
    try:
        held = [70, 75, 100, 101, 230, 300, 399, 480]
        for index in held:
            assert await dp.read(cached, fd, index * PAGE, PAGE) == data[index * PAGE : (index + 1) * PAGE]
        assert await dp.read(cached, fd, 0, 32 * PAGE) == data[: 32 * PAGE]  # half the cache: a scan's start
        reads = dp.stats()["backing.reads"]
        for offset in range(32 * PAGE, len(data), 32 * PAGE):
            assert await dp.read(cached, fd, offset, 32 * PAGE) == data[offset : offset + 32 * PAGE]
        assert dp.stats()["backing.reads"] - reads == 15  # one a request
        assert dp.bypassed == 512 - 32
        assert set(held) <= set(cached.pages)
    finally:
        os.close(fd)


async def test_without_a_pool_a_file_the_page_cache_can_hold_is_cached_as_it_is_read(tmp_path: Path) -> None:
    dp, cached, fd, data = await datapath_over(tmp_path, 48, 64)
    try:
        for offset in range(0, len(data), 16 * PAGE):  # in order, past half the cache
            assert await dp.read(cached, fd, offset, 16 * PAGE) == data[offset : offset + 16 * PAGE]
        assert dp.bypassed == 0 and len(cached.pages) == 48
    finally:
        os.close(fd)


async def served(dp: DataPath, cached: CachedFile, fd: int, offset: int, size: int) -> bytes | bytearray | memoryview:
    """A read as the read handler serves it: the page cache's answer if it holds it all, else `read`."""
    hit = dp.read_hit(cached, offset, size)
    return hit if hit is not None else await dp.read(cached, fd, offset, size)


async def test_read_hit_answers_only_a_read_the_page_cache_holds_whole(tmp_path: Path) -> None:
    """The read handler's fast path: each page counted once as a hit, never a miss (a read it
    cannot answer is counted by `read`), and nothing at or past the end of the file (`read` answers
    those, after the rules had their say)."""
    dp, cached, fd, data = await datapath_over(tmp_path, 8, 8)
    try:
        assert dp.read_hit(cached, 0, PAGE) is None and (dp.pc.hits, dp.pc.misses) == (0, 0)
        assert await dp.read(cached, fd, 2 * PAGE, 3 * PAGE) == data[2 * PAGE : 5 * PAGE]
        misses = dp.pc.misses
        assert dp.read_hit(cached, 2 * PAGE + 100, 50) == data[2 * PAGE + 100 : 2 * PAGE + 150]
        assert dp.read_hit(cached, 3 * PAGE - 1, PAGE + 2) == data[3 * PAGE - 1 : 4 * PAGE + 1]  # pages 2..4
        assert dp.pc.hits == 4
        assert dp.read_hit(cached, 4 * PAGE, 2 * PAGE) is None  # page 5 is not cached
        assert (dp.pc.hits, dp.pc.misses) == (4, misses)
        await dp.read(cached, fd, 0, len(data))
        assert dp.read_hit(cached, len(data) - 10, PAGE) == data[-10:]
        assert dp.read_hit(cached, len(data), PAGE) is None
    finally:
        os.close(fd)


async def test_read_hit_leaves_reads_to_read_once_the_backend_changed(tmp_path: Path) -> None:
    """After a register the rules in force are asked for again (they may drop every page), which
    only `read` does: until then the fast path answers nothing."""
    dp, cached, fd, data = await datapath_over(tmp_path, 4, 4)
    try:
        await dp.read(cached, fd, 0, len(data))
        assert dp.read_hit(cached, 0, PAGE) == data[:PAGE]
        await dp.cc.register(TmemBackend(16 * ENTRY))
        assert dp.read_hit(cached, 0, PAGE) is None
        assert await served(dp, cached, fd, 0, PAGE) == data[:PAGE]
        assert dp.read_hit(cached, 0, PAGE) == data[:PAGE]
    finally:
        os.close(fd)


async def test_tracing_observes_and_never_changes_a_requests_path(tmp_path: Path) -> None:
    """The same reads with and without -o trace: every counter equal (the sequential bypass
    included), and the trace names each page cache miss and cleancache get that happened."""
    data = os.urandom(512 * PAGE)
    (tmp_path / "f").write_bytes(data)
    runs = []
    for traced in (False, True):
        fd = os.open(tmp_path / "f", os.O_RDONLY)
        try:
            cc = Cleancache(TmemBackend(1024 * ENTRY))
            dp = DataPath(PageCache(64 * PAGE), cc, await cc.init_fs())
            trace = tmp_path / "trace"
            if traced:
                cc.tracer = dp.pc.tracer = Tracer(str(trace), str(tmp_path))
            cached, _ = await dp.open_file(b"f", fd)
            for _scan in range(3):
                for offset in range(0, len(data), 32 * PAGE):
                    assert await dp.read(cached, fd, offset, 32 * PAGE) == data[offset : offset + 32 * PAGE]
            for index in (3, 3, 400, 7, 7):
                assert await served(dp, cached, fd, index * PAGE, PAGE) == data[index * PAGE : (index + 1) * PAGE]
            runs.append({**dp.stats(), **cc.stats()})
            if cc.tracer is not None:
                cc.tracer.close()
        finally:
            os.close(fd)
    untraced, traced_stats = runs
    bypassed = untraced["pagecache.bypassed"]
    assert isinstance(bypassed, int) and bypassed > 0 and traced_stats == untraced
    ops = [line.split()[1] for line in (tmp_path / "trace").read_text().splitlines() if not line.startswith("#")]
    assert ops.count("miss") == untraced["pagecache.misses"] and ops.count("hit") == untraced["pagecache.hits"]
    assert ops.count("get+") == untraced["succ_gets"] and ops.count("get-") == untraced["failed_gets"]
