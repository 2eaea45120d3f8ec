"""Unit tests of the page cache: bounded, evicting by policy, and counting its hits and misses."""

from __future__ import annotations

import pytest

from backends.eviction import POLICIES
from fusefs.pagecache import CachedFile, PageCache, PageLock, run_end
from tests.unithelpers import PAGE, page, take_slot


def test_pagecache_is_bounded_and_evicts_least_recently_used() -> None:
    pc = PageCache(3 * PAGE)
    f = CachedFile(b"k")
    for index in range(3):
        slot, evicted = take_slot(pc)
        assert evicted is None
        pc.install(f, index, slot)
    assert pc.lookup(f, 0) is not None  # 0 is now the most recent
    slot, evicted = take_slot(pc)
    assert evicted is not None and evicted.index == 1 and evicted.file is f
    assert pc.pages == 2 and 1 not in f.pages
    pc.install(f, 3, slot)
    assert pc.pages == 3 == pc.capacity
    assert (pc.hits, pc.misses, pc.evictions) == (1, 0, 1)


@pytest.mark.parametrize("policy", sorted(POLICIES))
def test_pagecache_every_policy_keeps_the_bound(policy: str) -> None:
    pc = PageCache(8 * PAGE, policy)
    files = [CachedFile(b"a"), CachedFile(b"b")]
    for step in range(200):
        f, index = files[step % 2], (step * 7) % 13
        if pc.lookup(f, index) is None:
            slot, evicted = take_slot(pc)
            if evicted is not None:
                assert evicted.file.pages.get(evicted.index) is None
            pc.install(f, index, slot)
        assert pc.pages <= 8
    assert pc.pages == 8 and pc.hits + pc.misses == 200


def test_pagecache_drop_file_frees_slots() -> None:
    pc = PageCache(4 * PAGE)
    f = CachedFile(b"k")
    for index in range(4):
        pc.install(f, index, take_slot(pc)[0])
    assert pc.drop_file(f) == 4
    assert pc.pages == 0 and not f.pages
    assert pc.lookup(f, 0) is None


def test_pagecache_evict_all_returns_data_still_readable() -> None:
    pc = PageCache(2 * PAGE)
    f = CachedFile(b"k")
    for index in range(2):
        slot = take_slot(pc)[0]
        pc.slot_view(slot)[:] = page(index + 1)
        pc.install(f, index, slot)
    evicted = pc.evict(pc.pages)
    assert [e.index for e in evicted] == [0, 1]
    assert bytes(pc.slot_view(evicted[1].slot)) == bytes(page(2))
    for e in evicted:
        pc.release_slot(e.slot)
    assert pc.pages == 0


@pytest.mark.parametrize("policy", sorted(POLICIES))
def test_pagecache_install_run_is_install_page_by_page(policy: str) -> None:
    """A run installed in one call leaves the cache as installing each page would."""
    runs, singles = PageCache(8 * PAGE, policy), PageCache(8 * PAGE, policy)
    f, g = CachedFile(b"f"), CachedFile(b"g")
    slots, _ = runs.take_slots(5)
    runs.install_run(f, 10, slots)
    for index, slot in zip(range(10, 15), singles.take_slots(5)[0], strict=True):
        singles.install(g, index, slot)
    assert list(f.pages) == list(g.pages) == list(range(10, 15)) and runs.pages == singles.pages == 5
    assert [runs._slot_keys[s] for s in f.pages.values()] == [(f, n) for n in range(10, 15)]
    assert [e.index for e in runs.evict(5)] == [e.index for e in singles.evict(5)]


def test_a_run_is_a_hit_only_when_every_page_of_it_is_cached() -> None:
    """lookup_run counts and refreshes the hits of a run every page of which is cached; a run
    with a gap counts nothing (the reader then goes page by page)."""
    pc = PageCache(4 * PAGE)
    f = CachedFile(b"k")
    slots, _ = pc.take_slots(3)
    pc.install_run(f, 0, slots)
    assert pc.lookup_run(f, 1, 3) is None and (pc.hits, pc.misses) == (0, 0)
    assert pc.lookup_run(f, 0, 1) == slots[:2] and pc.hits == 2
    assert [e.index for e in pc.evict(1)] == [2]  # 0 and 1 were refreshed


def test_a_hit_counts_and_refreshes_a_cached_page_and_a_miss_counts_nothing() -> None:
    """hit is the one-page read's fast path: a page not cached is left for the slow path
    to count as a miss (counted once, not twice)."""
    pc = PageCache(2 * PAGE)
    f = CachedFile(b"k")
    slots, _ = pc.take_slots(2)
    pc.install_run(f, 0, slots)
    assert pc.hit(f, 5) is None and (pc.hits, pc.misses) == (0, 0)
    assert pc.hit(f, 0) == slots[0] and (pc.hits, pc.misses) == (1, 0)
    assert [e.index for e in pc.evict(1)] == [1]  # 0 was refreshed


@pytest.mark.parametrize(("flags", "start", "other", "end"), [
    ([True], 0, False, 1), ([True, True, False], 0, False, 2), ([False, False, True, False], 1, True, 2),
    ([False, True], 1, False, 2)])
def test_run_end_is_the_first_other_flag_after_the_start(flags: list[bool], start: int, other: bool,
                                                         end: int) -> None:
    assert run_end(flags, start, other) == end


def test_a_fill_takes_the_pages_nobody_caches_or_holds() -> None:
    pc = PageCache(8 * PAGE)
    f = CachedFile(b"k")
    pc.install(f, 5, take_slot(pc)[0])
    f.lock_pages(range(3, 4), PageLock())
    assert f.unheld_run(0, 8) == 3 and f.unheld_run(4, 8) == 1 and f.unheld_run(6, 2) == 2
    assert f.any_cached(4, 6) and not f.any_cached(6, 9) and f.filling
    assert f.cached_in(range(100)) == [(5, f.pages[5])] == f.cached_in(range(5, 6))


def test_a_close_stamps_again_only_a_file_this_mount_wrote() -> None:
    f = CachedFile(b"k")
    f.add_handle()
    f.add_handle()
    f.stamp = (1, 2, 3)
    f.drop_handle((9, 9, 9))
    assert f.stamp == (1, 2, 3) and f.open_count == 1  # as last seen: kept
    f.stamp = None  # this mount wrote it
    f.drop_handle((4, 5, 6))
    assert f.stamp == (4, 5, 6) and f.open_count == 0 and f.idle
    f.restamp((0, 0, 0), (7, 7, 7))
    assert f.stamp == (4, 5, 6)  # not as last seen before that change: left alone
    f.restamp((4, 5, 6), (7, 7, 7))
    assert f.stamp == (7, 7, 7)


def test_the_change_seqlock_tells_a_fill_that_a_change_came_between() -> None:
    f = CachedFile(b"k")
    seq = f.changes
    assert f.stable_since(seq)
    f.begin_change()
    assert not f.stable_since(seq) and not f.stable_since(f.changes) and not f.idle
    f.end_change()
    assert not f.stable_since(seq) and f.stable_since(f.changes)
    seq = f.changes
    f.cancel_fills()
    assert not f.stable_since(seq)
