"""The host pool store (backends/hoststore.py), driven directly: one tmem shared by several
clients, with one budget and eviction order, weights, caps, zbud frames, dedup, persistent
pages, take-back, dead and stopped clients, damage and permissions. Rules about processes
use real ones (spawned, never forked: the store must not be inherited)."""

from __future__ import annotations

import errno
import fcntl
import multiprocessing
import os
import random
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import lmdb
import pytest

from backends import hoststore
from backends.hoststore import MAX_CLIENTS, HostError, HostStore, host_directory
from tests.test_lmdbstore import HOLD_LOCK, gather

PAGE = 4096
HOST = "lab"
SPAWN = multiprocessing.get_context("spawn")

Factory = Callable[..., HostStore]


def pattern(tag: bytes, index: int) -> memoryview:
    """An incompressible page, always the same for (tag, index) and different for any other."""
    return memoryview(random.Random(tag + b"/" + index.to_bytes(8, "big")).randbytes(PAGE))


def squeezable(tag: bytes, index: int) -> memoryview:
    """A page lz4 compresses well below half a page, distinct per (tag, index)."""
    return memoryview((tag.ljust(16, b".") + index.to_bytes(8, "big")).ljust(PAGE, b"\0"))


def read(store: HostStore, pool: int, key: bytes, index: int) -> bytes:
    """A non-destructive get: the page, or b"" on a miss."""
    out = memoryview(bytearray(PAGE))
    return bytes(out) if store.get(pool, key, index, out, keep=True) else b""


def present(store: HostStore, pool: int, key: bytes, indexes: range,
            make: Callable[..., memoryview] = pattern) -> list[int]:
    """Which of the indexes hit, each checked against its exact bytes (made from key and index)."""
    hits = []
    for i in indexes:
        got = read(store, pool, key, i)
        if got:
            assert got == bytes(make(key, i))
            hits.append(i)
    return hits


@pytest.fixture
def make(tmp_path: Path) -> Iterator[Factory]:
    """Join clients of host `lab` in tmp_path; every one still open leaves at the end."""
    stores: list[HostStore] = []

    def join(label: str = "/mnt/x", budget: int = 16 * PAGE, **kw: Any) -> HostStore:
        options = {k: kw.pop(k) for k in ("node_timeout", "lock_wait") if k in kw}
        store = HostStore(HOST, str(tmp_path), **options)
        stores.append(store)
        store.join(label, budget, **kw)
        return store

    yield join
    for store in stores:
        store.leave()


# -- children (spawned processes) ---------------------------------------------------------


def child_puts_then_waits(directory: str, pages: int, results: Any) -> None:
    """Join, put `pages` pages, report, and wait to be killed."""
    store = HostStore(HOST, directory)
    client = store.join("/mnt/doomed", 64 * PAGE)
    pool = store.new_pool()
    stored = sum(store.put(pool, b"dead", i, pattern(b"dead", i)) for i in range(pages))
    results.put((client, stored))
    time.sleep(600)


def child_busy_writer(directory: str, results: Any) -> None:
    """Put pages as fast as possible, forever (the test stops and kills it); report after 64."""
    store = HostStore(HOST, directory, lock_wait=0.5)
    store.join("/mnt/busy", 64 * PAGE)
    pool = store.new_pool()
    n = 0
    while True:
        store.put(pool, b"busy", n % 256, pattern(b"busy", n % 256))
        n += 1
        if n == 64:
            results.put(store.client)


def child_mixed_load(directory: str, me: int, ops: int, barrier: Any, results: Any) -> None:
    """Put, get (both kinds) and invalidate pages of our own under constant eviction by the
    other process: every hit must carry exactly the bytes of the page asked for."""
    store = HostStore(HOST, directory, lock_wait=0.5)
    store.join(f"/mnt/load{me}", 8 * PAGE)
    pool = store.new_pool()
    version = [0] * 64
    hits = wrong = puts = 0
    out = memoryview(bytearray(PAGE))
    barrier.wait()
    for n in range(ops):
        step = n // 2 if n % 4 != 3 else n // 2 - 6  # a get: the page just put, or one put 6 steps ago
        i = (step * 7 + me) % 64
        make = squeezable if n % 3 == 0 else pattern
        if n % 5 == 4:
            store.invalidate_page(pool, b"k", i)
            version[i] += 1
        elif n % 2 == 0:
            version[i] += 1
            puts += store.put(pool, b"k", i, make(b"%d:%d" % (me, version[i]), i), compress=n % 3 == 0,
                              dedup=n % 4 == 0)
        elif store.get(pool, b"k", i, out, keep=n % 3 == 1):
            hits += 1
            expected = {bytes(m(b"%d:%d" % (me, version[i]), i)) for m in (squeezable, pattern)}
            wrong += bytes(out) not in expected
    results.put((hits, wrong, puts, store.client_stats()))
    store.leave()


def lock_is_held(path: str) -> bool:
    fd = os.open(path, os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)  # (drops our flock if we got it)
    return False


def slab_blocks(store: HostStore) -> int:
    return os.stat(os.path.join(store.path, "slab")).st_blocks


# -- 1. pages ------------------------------------------------------------------------------


def test_put_get_exclusive_and_keep(make: Factory) -> None:
    a = make()
    pool = a.new_pool()
    assert a.put(pool, b"f", 3, pattern(b"f", 3))
    out = memoryview(bytearray(PAGE))
    assert a.get(pool, b"f", 3, out, keep=True) and bytes(out) == bytes(pattern(b"f", 3))
    assert a.get(pool, b"f", 3, out) and bytes(out) == bytes(pattern(b"f", 3))  # exclusive: gone after
    assert not a.get(pool, b"f", 3, out)
    assert a.host_stats()["used_bytes"] == 0 and a.host_stats()["stored_pages"] == 0
    for i in (0, 1, 3):
        assert a.put(pool, b"f", i, pattern(b"f", i))
    outs = [memoryview(bytearray(PAGE)) for _ in range(5)]
    assert a.get_many(pool, b"f", 0, outs, keep=True) == [True, True, False, True, False]
    assert [bytes(outs[i]) for i in (0, 1, 3)] == [bytes(pattern(b"f", i)) for i in (0, 1, 3)]
    assert read(a, pool, b"g", 0) == b"" and read(a, pool, b"f" + b"\0", 0) == b""  # other keys
    assert a.put(pool, b"f", 0, pattern(b"new", 0))  # a second put replaces the first
    assert read(a, pool, b"f", 0) == bytes(pattern(b"new", 0))
    a.invalidate_page(pool, b"f", 1)
    assert read(a, pool, b"f", 1) == b""
    a.invalidate_inode(pool, b"f")
    assert present(a, pool, b"f", range(5)) == []
    assert a.host_stats()["used_bytes"] == 0
    stats = a.client_stats()
    assert (stats["puts"], stats["stored_pages"], stats["hits"]) == (5, 0, 6)
    with pytest.raises(ValueError, match="4096"):
        a.put(pool, b"f", 0, memoryview(bytes(100)))
    with pytest.raises(ValueError, match="no pool"):
        a.put(pool + 1, b"f", 0, pattern(b"f", 0))


def test_put_many_writes_a_batch_in_one_transaction(make: Factory, monkeypatch: pytest.MonkeyPatch) -> None:
    """One lock and one commit for the pages evicted together; a page stored as it is already
    needs no write at all; each put is counted as put() counts it."""
    a = make(budget=32 * PAGE)
    pool = a.new_pool()
    writes = []
    real_write = HostStore._write

    def counted(self: HostStore, wait: float | None, work: Callable[..., Any]) -> Any:
        writes.append(wait)
        return real_write(self, wait, work)

    monkeypatch.setattr(HostStore, "_write", counted)
    batch = [(b"f", i, pattern(b"f", i)) for i in range(8)]
    assert a.put_many(pool, batch) == [True] * 8 and len(writes) == 1
    assert present(a, pool, b"f", range(10)) == list(range(8))
    assert a.put_many(pool, batch) == [True] * 8 and len(writes) == 1  # unchanged: no write
    batch[3] = (b"f", 3, pattern(b"new", 3))
    assert a.put_many(pool, batch) == [True] * 8 and len(writes) == 2
    assert read(a, pool, b"f", 3) == bytes(pattern(b"new", 3))
    assert a.client_stats()["puts"] == 24 and a.host_stats()["stored_pages"] == 8
    with pytest.raises(ValueError, match="4096"):
        a.put_many(pool, [(b"f", 0, pattern(b"f", 0)), (b"f", 1, memoryview(bytes(100)))])


@pytest.mark.parametrize("refusal", ["full", "no space", "busy"])
def test_a_batch_that_does_not_land_stores_none_and_its_old_versions_are_never_served(
        make: Factory, monkeypatch: pytest.MonkeyPatch, refusal: str) -> None:
    """The store full, out of space or its lock busy while a batch is written: no page of it is
    stored, not even those written before the refusal (one transaction), and the versions they
    replace are gone too (a put-put-get never returns the first put); pages outside the batch stay."""
    a = make(budget=32 * PAGE)
    pool = a.new_pool()
    assert a.put_many(pool, [(b"f", i, pattern(b"f", i)) for i in range(4)]) == [True] * 4
    real_put = HostStore._put
    calls = []

    def refusing(self: HostStore, w: Any, *args: Any) -> bool:
        calls.append(args[0])
        if len(calls) == 2:
            if refusal == "full":
                raise lmdb.MapFullError("full")
            raise OSError(errno.ENOSPC, "no space")
        return real_put(self, w, *args)

    if refusal == "busy":
        monkeypatch.setattr(hoststore, "_flock_wait", lambda _fd, _wait: False)
    else:
        monkeypatch.setattr(HostStore, "_put", refusing)
    batch = [(b"f", i, pattern(b"new", i)) for i in (1, 2)] + [(b"g", 0, pattern(b"g", 0))]
    assert a.put_many(pool, batch) == [False] * 3
    assert present(a, pool, b"f", range(4)) == [0, 3] and present(a, pool, b"g", range(1)) == []
    monkeypatch.undo()
    assert a.put(pool, b"h", 0, pattern(b"h", 0))  # the next write drops the old versions
    assert a.host_stats()["stored_pages"] == 3
    assert present(a, pool, b"f", range(4)) == [0, 3]


def test_clients_never_see_each_others_pages(make: Factory) -> None:
    a, b = make("/mnt/a"), make("/mnt/b")
    pa, pb = a.new_pool(), b.new_pool()
    assert pa == pb and a.client != b.client  # same pool id, key and index: different pages
    assert a.put(pa, b"f", 0, pattern(b"a", 0))
    assert read(b, pb, b"f", 0) == b""
    assert b.put(pb, b"f", 0, pattern(b"b", 0))
    assert read(a, pa, b"f", 0) == bytes(pattern(b"a", 0))
    assert read(b, pb, b"f", 0) == bytes(pattern(b"b", 0))
    b.invalidate_inode(pb, b"f")
    b.destroy_pool(pb)
    assert read(a, pa, b"f", 0) == bytes(pattern(b"a", 0))
    a.destroy_pool(pa)
    assert a.host_stats()["stored_pages"] == 0
    with pytest.raises(ValueError):
        read(a, pa, b"f", 0)


# -- 2. one budget, one eviction order, weights and caps -------------------------------------


def test_one_eviction_order_then_fair_shares(make: Factory) -> None:
    """Equal weights, both clients at their share: the globally oldest page goes, even another
    client's. A client under its share by a page or more is spared: the putter pays."""
    a, b = make("/mnt/a", budget=12 * PAGE), make("/mnt/b")
    pa, pb = a.new_pool(), b.new_pool()
    for i in range(6):
        assert a.put(pa, b"a", i, pattern(b"a", i))
    for i in range(6):
        assert b.put(pb, b"b", i, pattern(b"b", i))
    assert b.put(pb, b"b", 6, pattern(b"b", 6))
    assert present(a, pa, b"a", range(6)) == list(range(1, 6))  # A's oldest went before B's newer pages
    assert present(b, pb, b"b", range(7)) == list(range(7))
    for i in range(7, 10):  # now A is a page under its share: B's own oldest pages go
        assert b.put(pb, b"b", i, pattern(b"b", i))
    assert present(a, pa, b"a", range(6)) == list(range(1, 6))
    assert present(b, pb, b"b", range(10)) == list(range(3, 10))
    assert a.client_stats()["evictions"] == 1 and b.client_stats()["evictions"] == 3
    assert a.host_stats()["evictions"] == 4 and a.host_stats()["used_bytes"] == 12 * PAGE


def test_weights_share_the_budget(make: Factory) -> None:
    a = make("/mnt/a", budget=48 * PAGE, weight=1)
    b = make("/mnt/b", weight=2)
    pa, pb = a.new_pool(), b.new_pool()
    for i in range(300):  # the same put stream from both
        assert a.put(pa, b"a", i, pattern(b"a", i))
        assert b.put(pb, b"b", i, pattern(b"b", i))
    pages_a, pages_b = a.client_stats()["stored_pages"], b.client_stats()["stored_pages"]
    assert pages_a + pages_b == 48
    assert 12 <= pages_a <= 20 and 28 <= pages_b <= 36  # shares 16 and 32
    a.set_weight(2)  # equal now
    for i in range(300, 600):
        assert a.put(pa, b"a", i, pattern(b"a", i))
        assert b.put(pb, b"b", i, pattern(b"b", i))
    assert 20 <= a.client_stats()["stored_pages"] <= 28
    assert [c.weight for c in a.clients()] == [2, 2]
    with pytest.raises(HostError, match="cc_weight=0"):
        a.set_weight(0)


def test_cap_enforced_from_own_pages(make: Factory) -> None:
    a = make("/mnt/a", budget=32 * PAGE, cap=4 * PAGE)
    b = make("/mnt/b")
    pa, pb = a.new_pool(), b.new_pool()
    for i in range(4):
        assert b.put(pb, b"b", i, pattern(b"b", i))
    for i in range(10):
        assert a.put(pa, b"a", i, pattern(b"a", i))
        assert a.client_stats()["stored_bytes"] <= 4 * PAGE
    assert present(a, pa, b"a", range(10)) == [6, 7, 8, 9]  # its own oldest went
    assert present(b, pb, b"b", range(4)) == [0, 1, 2, 3]  # nobody else's
    assert a.client_stats()["evictions"] == 6 and a.client_stats()["cap_hits"] == 0
    for i in range(10, 18):  # compressed pages take half a frame each: 8 fit the same cap
        assert a.put(pa, b"z", i, squeezable(b"z", i), compress=True)
    assert present(a, pa, b"z", range(10, 18), squeezable) == list(range(10, 18))
    persistent = a.new_pool(persistent=True)
    a.set_cap(2 * PAGE)
    assert a.put(persistent, b"p", 0, pattern(b"p", 0))
    assert a.put(persistent, b"p", 1, pattern(b"p", 1))
    assert not a.put(persistent, b"p", 2, pattern(b"p", 2))  # nothing of its own left to evict
    assert not a.put(pa, b"a", 99, pattern(b"a", 99))
    assert a.client_stats()["cap_hits"] == 2 and a.client_stats()["cap"] == 2 * PAGE
    a.set_cap(None)
    assert a.put(pa, b"a", 99, pattern(b"a", 99))
    with pytest.raises(HostError, match="larger than the host's budget"):
        a.set_cap(33 * PAGE)
    with pytest.raises(HostError, match="larger than the host's budget"):
        make("/mnt/c", cap=33 * PAGE)


def test_lru_and_sieve_give_a_hit_page_a_second_chance(tmp_path: Path) -> None:
    survivors = {}
    for policy in ("lru", "sieve"):
        a = HostStore(f"{policy}-host", str(tmp_path))
        a.join("/mnt/a", 4 * PAGE, policy=policy)
        try:
            pool = a.new_pool()
            for i in range(4):
                assert a.put(pool, b"f", i, pattern(b"f", i))
            assert read(a, pool, b"f", 0)  # referenced: passed over once
            for i in range(4, 7):
                assert a.put(pool, b"f", i, pattern(b"f", i))
            assert present(a, pool, b"f", range(7)) == [0, 4, 5, 6]
            assert a.put(pool, b"f", 7, pattern(b"f", 7))  # CLOCK's second chance is spent; SIEVE's hand moved on
            survivors[policy] = present(a, pool, b"f", range(8))
        finally:
            a.leave()
    assert survivors == {"lru": [4, 5, 6, 7], "sieve": [0, 5, 6, 7]}


def test_the_first_client_fixes_policy_and_budget(make: Factory) -> None:
    a = make("/mnt/a", budget=16 * PAGE)
    b = make("/mnt/b", budget=1000 * PAGE)
    assert a.host_stats()["budget_bytes"] == b.host_stats()["budget_bytes"] == 16 * PAGE
    with pytest.raises(HostError, match=r"^cc_host=lab: the host evicts by lru; this mount asks for sieve$"):
        make("/mnt/c", policy="sieve")
    with pytest.raises(HostError, match="unknown policy"):
        make("/mnt/c", policy="arc")
    with pytest.raises(HostError, match="cc_weight=0"):
        make("/mnt/c", weight=0)
    with pytest.raises(HostError, match="exceeds this machine's memory"):
        HostStore("huge", a.directory).join("/mnt/h", (hoststore.machine_frames() + 1) * PAGE)
    assert {c.label for c in a.clients()} == {"/mnt/a", "/mnt/b"}


def test_full_table(make: Factory) -> None:
    stores = [make(f"/mnt/{i}") for i in range(MAX_CLIENTS)]
    assert sorted(s.client for s in stores) == list(range(MAX_CLIENTS))
    with pytest.raises(HostError, match=f"all {MAX_CLIENTS} client slots"):
        make("/mnt/late")
    stores[3].leave()
    assert make("/mnt/late").client == 3


# -- 3. zbud, dedup, persistent pages ---------------------------------------------------------


def test_zbud_compressed_pages_share_frames(make: Factory) -> None:
    a = make(budget=16 * PAGE)
    pool = a.new_pool()
    for i in range(10):
        assert a.put(pool, b"z", i, squeezable(b"z", i), compress=True)
    stats = a.host_stats()
    assert (stats["used_bytes"], stats["buddy_frames"], stats["stored_pages"]) == (5 * PAGE, 5, 10)
    assert a.client_stats()["stored_bytes"] == 10 * PAGE // 2
    assert present(a, pool, b"z", range(10), squeezable) == list(range(10))
    assert a.put(pool, b"r", 0, pattern(b"r", 0), compress=True)  # does not fit half a frame: raw
    assert a.host_stats()["used_bytes"] == 6 * PAGE
    a.invalidate_page(pool, b"z", 0)  # its buddy (page 1) still holds the frame
    assert a.host_stats()["used_bytes"] == 6 * PAGE
    a.invalidate_page(pool, b"z", 1)
    assert a.host_stats()["used_bytes"] == 5 * PAGE and a.host_stats()["buddy_frames"] == 4
    for i in range(10, 34):  # the budget fills with buddies, then eviction makes room
        assert a.put(pool, b"z", i, squeezable(b"z", i), compress=True)
    assert a.host_stats()["used_bytes"] == 16 * PAGE
    assert read(a, pool, b"r", 0) == b""  # the one page not hit since: its frame now holds two
    assert present(a, pool, b"z", range(34), squeezable) == list(range(2, 34))
    assert a.host_stats()["stored_pages"] == 32 and a.host_stats()["buddy_frames"] == 16


def test_dedup_across_clients_stored_once_counted_to_both(make: Factory, monkeypatch: pytest.MonkeyPatch) -> None:
    a, b = make("/mnt/a"), make("/mnt/b")
    pa, pb = a.new_pool(), b.new_pool()
    page = pattern(b"shared", 0)
    assert a.put(pa, b"fa", 0, page, dedup=True)
    assert b.put(pb, b"fb", 7, page, dedup=True)
    stats = a.host_stats()
    assert (stats["stored_pages"], stats["used_bytes"], stats["dedup_pages"]) == (1, PAGE, 1)
    for store in (a, b):
        assert (store.client_stats()["stored_pages"], store.client_stats()["stored_bytes"]) == (1, PAGE)
    out = memoryview(bytearray(PAGE))
    assert a.get(pa, b"fa", 0, out) and bytes(out) == bytes(page)  # exclusive: A's reference goes
    assert read(b, pb, b"fb", 7) == bytes(page)  # B's stays
    assert a.host_stats()["used_bytes"] == PAGE
    b.invalidate_page(pb, b"fb", 7)
    assert a.host_stats()["used_bytes"] == 0 and a.host_stats()["stored_pages"] == 0
    # the same digest with other bytes: stored apart, both served right
    monkeypatch.setattr(hoststore, "_hash", lambda data: 42)
    assert a.put(pa, b"x", 0, pattern(b"one", 0), dedup=True)
    assert b.put(pb, b"x", 0, pattern(b"two", 0), dedup=True)
    assert a.host_stats()["stored_pages"] == 2 and a.host_stats()["dedup_pages"] == 1
    assert read(a, pa, b"x", 0) == bytes(pattern(b"one", 0))
    assert read(b, pb, b"x", 0) == bytes(pattern(b"two", 0))
    assert b.put(pb, b"y", 0, pattern(b"one", 0), dedup=True)  # the indexed copy is still shared
    assert a.host_stats()["stored_pages"] == 2 and a.host_stats()["dedup_pages"] == 2


def test_persistent_pages_survive_eviction_and_take_back(make: Factory) -> None:
    a, b = make("/mnt/a"), make("/mnt/b")
    swap, pb = a.new_pool(persistent=True), b.new_pool()
    for i in range(4):
        assert a.put(swap, b"swap", i, pattern(b"swap", i))
    for i in range(40):
        assert b.put(pb, b"b", i, pattern(b"b", i))
    assert present(a, swap, b"swap", range(4)) == [0, 1, 2, 3]
    assert a.host_stats()["persistent_pages"] == a.client_stats()["persistent_pages"] == 4
    admin = HostStore.attach(HOST, a.directory)
    try:
        assert admin.take_back(16 * PAGE) == 12 * PAGE  # all it can: 4 frames hold persistent pages
    finally:
        admin.close()
    stats = a.host_stats()
    assert (stats["budget_bytes"], stats["used_bytes"], stats["taken_back_bytes"]) == (4 * PAGE, 4 * PAGE, 12 * PAGE)
    assert present(a, swap, b"swap", range(4)) == [0, 1, 2, 3]
    evictions = stats["evictions"]
    assert not b.put(pb, b"b", 99, pattern(b"b", 99))  # cannot fit even with every ephemeral page gone
    assert not a.put(swap, b"swap", 4, pattern(b"swap", 4))
    assert a.host_stats()["evictions"] == evictions  # refused without evicting anything
    a.invalidate_page(swap, b"swap", 0)  # only their own invalidation removes them
    assert a.host_stats()["persistent_pages"] == 3
    assert b.put(pb, b"b", 99, pattern(b"b", 99))


# -- 4. taking memory back ------------------------------------------------------------------


def test_a_take_back_evicts_in_batches_and_lets_clients_write_in_between(
        make: Factory, monkeypatch: pytest.MonkeyPatch) -> None:
    """The budget drops in the first write transaction; the evictions follow TAKE_BATCH at a
    time, each its own transaction, so the lock is free between them."""
    monkeypatch.setattr(hoststore, "TAKE_BATCH", 8)
    a = make(budget=64 * PAGE)
    pool = a.new_pool()
    for i in range(64):
        assert a.put(pool, b"f", i, pattern(b"f", i))
    admin = HostStore.attach(HOST, a.directory)
    writes: list[int] = []
    real_write = admin._write

    def counted(wait, work):  # type: ignore[no-untyped-def]
        writes.append(a.host_stats()["used_bytes"] // PAGE)  # what a client sees between them
        return real_write(wait, work)

    monkeypatch.setattr(admin, "_write", counted)
    try:
        assert admin.take_back(40 * PAGE) == 40 * PAGE
    finally:
        admin.close()
    # lower the budget, 5 batches of 8 (the 5th reaches the line), settle
    assert writes == [64, 64, 56, 48, 40, 32, 24]
    assert a.host_stats()["budget_bytes"] == a.host_stats()["used_bytes"] == 24 * PAGE


def test_an_exclusive_get_writes_nothing_until_the_next_put(make: Factory, monkeypatch: pytest.MonkeyPatch) -> None:
    """A hit's removal waits for this client's next write (the put of the page it evicts from
    the page cache), at most REMOVE_BATCH of them; the page is never served again meanwhile."""
    a = make(budget=64 * PAGE)
    pool = a.new_pool()
    for i in range(40):
        assert a.put(pool, b"f", i, pattern(b"f", i))
    writes: list[str] = []
    real_write = a._write

    def counted_write(wait: float | None, work: Callable[[Any], object]) -> tuple[bool, object]:
        writes.append("w")
        return real_write(wait, work)

    monkeypatch.setattr(a, "_write", counted_write)
    out = memoryview(bytearray(PAGE))
    assert a.get(pool, b"f", 0, out) and bytes(out) == bytes(pattern(b"f", 0))
    assert read(a, pool, b"f", 0) == b"" and writes == []  # gone for this client, nothing written
    assert a.put(pool, b"g", 0, pattern(b"g", 0)) and writes == ["w"]  # the removal rode along
    for i in range(1, 1 + hoststore.REMOVE_BATCH):
        assert a.get(pool, b"f", i, out) and bytes(out) == bytes(pattern(b"f", i))
    assert writes == ["w", "w"]  # the batch is full: one write for all of them
    monkeypatch.setattr(a, "_write", real_write)
    assert a.host_stats()["stored_pages"] == 40 - 1 - hoststore.REMOVE_BATCH + 1


def test_take_back_returns_memory_and_give_back(make: Factory) -> None:
    a = make(budget=64 * PAGE)
    pool = a.new_pool()
    for i in range(64):
        assert a.put(pool, b"f", i, pattern(b"f", i))
    blocks = slab_blocks(a)
    assert blocks >= 64 * PAGE // 512
    admin = HostStore.attach(HOST, a.directory)
    try:
        assert admin.take_back(32 * PAGE - 100) == 32 * PAGE  # whole frames
        stats = a.host_stats()
        assert (stats["budget_bytes"], stats["used_bytes"], stats["take_backs"]) == (32 * PAGE, 32 * PAGE, 1)
        assert slab_blocks(a) == blocks - 32 * PAGE // 512  # punched: really returned
        assert present(a, pool, b"f", range(64)) == list(range(32, 64))  # the oldest went
        assert admin.take_back(10**12) == 32 * PAGE  # more than there is: all of it
        assert a.host_stats()["used_bytes"] == 0 and slab_blocks(a) == blocks - 64 * PAGE // 512
        assert not a.put(pool, b"f", 0, pattern(b"f", 0))
        assert admin.give_back(8 * PAGE) == 8 * PAGE
        assert a.put(pool, b"f", 0, pattern(b"f", 0))
        assert admin.give_back(10**12) == 56 * PAGE  # at most what was taken
        assert admin.give_back(PAGE) == 0
        stats = admin.host_stats()
        assert (stats["budget_bytes"], stats["take_backs"], stats["give_backs"]) == (64 * PAGE, 2, 3)
        assert stats["taken_back_bytes"] == 64 * PAGE
        admin.set_budget(4 * PAGE + 1)
        assert admin.host_stats()["budget_bytes"] == 4 * PAGE
        with pytest.raises(HostError, match="a budget is between"):
            admin.set_budget(100)
        with pytest.raises(ValueError):
            admin.take_back(-1)
    finally:
        admin.close()


def test_attach_and_names(tmp_path: Path) -> None:
    with pytest.raises(HostError, match=f"^no host pool named nothere in {tmp_path}$"):
        HostStore.attach("nothere", str(tmp_path))
    for bad in ("", ".hidden", "a/b", "x" * 65, "sp ace", "..", "é"):
        with pytest.raises(HostError, match="host name"):
            HostStore(bad, str(tmp_path))
    for good in ("a", "lab.2_x-y", "x" * 64, "-"):
        assert host_directory(good, str(tmp_path)).endswith(f"tmemfs-host-{good}")


def test_last_client_out_removes_the_host(make: Factory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(hoststore, "PURGE_BATCH", 2)
    a, b = make("/mnt/a"), make("/mnt/b")
    pool = a.new_pool()
    for i in range(5):
        assert a.put(pool, b"f", i, pattern(b"f", i))
    a.leave()
    a.leave()  # idempotent
    assert os.path.isdir(host_directory(HOST, str(tmp_path)))
    assert b.host_stats()["used_bytes"] == 0  # its pages went with it
    b.leave()
    assert not os.path.exists(host_directory(HOST, str(tmp_path)))
    with pytest.raises(HostError, match="not open"):
        b.host_stats()


# -- 5. faults ----------------------------------------------------------------------------


def test_a_killed_clients_pages_are_reclaimed(make: Factory, tmp_path: Path) -> None:
    a = make("/mnt/a", budget=64 * PAGE)
    results = SPAWN.Queue()
    child = SPAWN.Process(target=child_puts_then_waits, args=(str(tmp_path), 20, results))
    child.start()
    try:
        ((dead, stored),) = gather(results, [child], 1)
    finally:
        child.kill()
        child.join(60)
    assert stored == 20 and a.host_stats()["stored_pages"] == 20
    assert [(c.client, c.alive) for c in a.clients()] == [(a.client, True), (dead, False)]
    blocks = slab_blocks(a)
    assert a.reclaim_dead() == 20
    stats = a.host_stats()
    assert (stats["stored_pages"], stats["used_bytes"], stats["reclaimed_pages"]) == (0, 0, 20)
    assert slab_blocks(a) == blocks - 20 * PAGE // 512
    assert [c.client for c in a.clients()] == [a.client]
    assert a.reclaim_dead() == 0
    b = make("/mnt/b")  # takes the dead client's slot, and none of its pages
    assert b.client == dead and b.client_stats()["stored_pages"] == 0


def test_a_stopped_lock_holder_holds_nobody_up(make: Factory, tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """SIGSTOP a client while it holds the write lock: another client's gets still hit, its
    put is refused (not waited for), an admin's take-back gives up; after SIGKILL, all works
    again (flock released by the kernel, LMDB's mutex recovered) and its pages are reclaimed."""
    a = make("/mnt/a", budget=64 * PAGE, lock_wait=0.01)
    pool = a.new_pool()
    assert a.put(pool, b"f", 0, pattern(b"f", 0))
    lock = os.path.join(a.path, "write.lock")
    waits: list[float] = []  # how long each write asked to wait for the lock

    def flock_wait(fd: int, wait: float) -> bool:
        waits.append(wait)
        return real_flock_wait(fd, wait)

    real_flock_wait = hoststore._flock_wait
    monkeypatch.setattr(hoststore, "_flock_wait", flock_wait)
    results = SPAWN.Queue()
    child = SPAWN.Process(target=child_busy_writer, args=(str(tmp_path), results))
    child.start()
    admin = HostStore.attach(HOST, str(tmp_path), lock_wait=0.01)
    try:
        gather(results, [child], 1)
        assert child.pid is not None
        for _attempt in range(1000):  # stop it until it is stopped holding the lock
            os.kill(child.pid, signal.SIGSTOP)
            time.sleep(0.001)
            if lock_is_held(lock):
                break
            os.kill(child.pid, signal.SIGCONT)
        else:
            pytest.fail("never caught the child holding the write lock")
        waits.clear()
        assert read(a, pool, b"f", 0) == bytes(pattern(b"f", 0))  # reads never lock
        assert not a.put(pool, b"f", 1, pattern(b"f", 1))  # waited lock_wait, then gave up
        assert not a.put(pool, b"f", 2, pattern(b"f", 2))  # backing off: not even waited for
        assert waits == [0.01, 0.0]
        assert a.client_stats()["lock_timeouts"] == 2
        budget = admin.host_stats()["budget_bytes"]
        assert admin.take_back(2 * PAGE) == 2 * PAGE  # asked: the next writer applies it first
        assert admin.host_stats()["lock_timeouts"] >= 3
        assert admin.host_stats()["budget_bytes"] == budget  # (nobody could write yet)
    finally:
        child.kill()
        child.join(60)
    try:
        assert a.put(pool, b"f", 1, pattern(b"f", 1))  # the first write: the take-back lands
        stats = admin.host_stats()
        assert stats["budget_bytes"] == budget - 2 * PAGE and stats["taken_back_bytes"] == 2 * PAGE
        assert stats["used_bytes"] <= stats["budget_bytes"]
    finally:
        admin.close()
    assert a.reclaim_dead() > 0
    assert present(a, pool, b"f", range(3)) == [0, 1]


def test_invalidations_the_busy_lock_keeps_out_are_never_served(make: Factory) -> None:
    """With the write lock held elsewhere, invalidations, the removal after an exclusive get,
    and the old version a refused put replaces are kept aside: never served, applied first
    in the next write."""
    a = make(lock_wait=0.002)
    pool = a.new_pool()
    for i in range(6):
        assert a.put(pool, b"f", i, pattern(b"f", i))
        assert a.put(pool, b"g", i, pattern(b"g", i))
    holder = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, os.path.join(a.path, "write.lock")],
                              stdout=subprocess.PIPE)
    try:
        assert holder.stdout is not None and holder.stdout.readline() == b"locked\n"
        a.invalidate_page(pool, b"f", 1)
        out = memoryview(bytearray(PAGE))
        assert a.get(pool, b"f", 2, out)  # exclusive: its removal waits
        assert not a.put(pool, b"f", 3, pattern(b"new", 3))  # refused: the old version goes too
        assert present(a, pool, b"f", range(6)) == [0, 4, 5]
        a.invalidate_inode(pool, b"g")
        assert a.get_many(pool, b"g", 0, [out, out]) == [False, False]
        assert a.host_stats()["stored_pages"] == 12  # all still stored, never served
    finally:
        holder.kill()
        holder.wait()
    assert a.put(pool, b"h", 0, pattern(b"h", 0))  # the next write applies them first
    assert a.host_stats()["stored_pages"] == 4
    assert present(a, pool, b"f", range(6)) == [0, 4, 5] and present(a, pool, b"g", range(6)) == []


def test_past_pending_max_every_page_misses_until_the_next_write(make: Factory,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(hoststore, "PENDING_MAX", 2)
    a = make(lock_wait=0.001)
    pool = a.new_pool()
    for i in range(5):
        assert a.put(pool, b"f", i, pattern(b"f", i))
    fd = os.open(os.path.join(a.path, "write.lock"), os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # another open file: the store's own flock fails
        for i in range(2):
            a.invalidate_page(pool, b"f", i)
        assert present(a, pool, b"f", range(5)) == [2, 3, 4]
        a.invalidate_page(pool, b"f", 2)  # one too many: every page is suspect
        assert present(a, pool, b"f", range(5)) == []
    finally:
        os.close(fd)
    assert a.put(pool, b"g", 0, pattern(b"g", 0))
    assert a.host_stats()["stored_pages"] == 1 and present(a, pool, b"g", range(1)) == [0]


def test_a_walk_past_hard_walk_referenced_pages_takes_the_next(make: Factory) -> None:
    """CLOCK passes over referenced pages, but a put never walks past HARD_WALK of them."""
    n = hoststore.HARD_WALK + 8
    a = make(budget=n * PAGE)
    pool = a.new_pool()
    for i in range(n):
        assert a.put(pool, b"f", i, pattern(b"f", i))
    assert len(present(a, pool, b"f", range(n))) == n  # every page referenced
    assert a.put(pool, b"f", n, pattern(b"f", n))
    assert read(a, pool, b"f", hoststore.HARD_WALK) == b""
    assert read(a, pool, b"f", 0) and read(a, pool, b"f", n - 1)


def test_damaged_entries_are_misses_never_wrong_bytes(make: Factory) -> None:
    a = make()
    pool = a.new_pool()
    assert a.put(pool, b"f", 0, pattern(b"f", 0))  # frame 0
    assert a.put(pool, b"z", 0, squeezable(b"z", 0), compress=True)  # frame 1, slot 0
    assert a.put(pool, b"z", 1, squeezable(b"z", 1), compress=True)  # frame 1, slot 1
    assert a.put(pool, b"f", 1, pattern(b"f", 1))  # frame 2
    fd = os.open(os.path.join(a.path, "slab"), os.O_RDWR)
    try:
        os.pwrite(fd, b"garbage!" * 8, 100)
        os.pwrite(fd, b"\xff" * 16, 2 * PAGE - 40)  # the end of slot 1's block
    finally:
        os.close(fd)
    assert read(a, pool, b"f", 0) == b""
    assert read(a, pool, b"z", 1) == b""
    assert read(a, pool, b"z", 0) == bytes(squeezable(b"z", 0))  # its buddy is intact
    assert a.client_stats()["verify_failures"] == 2
    assert a.host_stats()["stored_pages"] == 2  # damaged entries are dropped
    assert a._host is not None
    a._host.gens[2 * 2] += 1  # frame 2 "being written" (odd generation): a race, not damage
    assert read(a, pool, b"f", 1) == b""
    assert a.client_stats()["verify_failures"] == 2 and a.client_stats()["torn_reads"] == 1
    assert a.put(pool, b"f", 1, pattern(b"f", 1))  # the frame is written again, readable
    assert read(a, pool, b"f", 1) == bytes(pattern(b"f", 1))


def test_a_frame_rewritten_during_the_copy_is_a_miss(make: Factory) -> None:
    """A writer that frees and reuses the frame while a reader copies it (simulated,
    deterministically: half the copy before, half after): the torn copy is never returned."""
    a = make()
    pool = a.new_pool()
    assert a.put(pool, b"f", 0, pattern(b"f", 0))  # frame 0
    assert a._host is not None
    gens, data = a._host.gens, a._host.data
    slab = os.open(os.path.join(a.path, "slab"), os.O_RDWR)

    class TornBuffer(bytearray):
        def __setitem__(self, where: Any, value: Any) -> None:
            super().__setitem__(slice(0, PAGE // 2), value[: PAGE // 2])
            gens[0] += 2  # freed, then written again by another client
            os.pwrite(slab, bytes(pattern(b"other", 9)), 0)
            super().__setitem__(slice(PAGE // 2, PAGE), data[PAGE // 2 : PAGE])

    try:
        assert not a.get(pool, b"f", 0, TornBuffer(PAGE))  # type: ignore[arg-type]
    finally:
        os.close(slab)
    assert a.client_stats()["torn_reads"] == 1 and a.client_stats()["verify_failures"] == 0


def test_two_processes_never_read_a_wrong_page(tmp_path: Path) -> None:
    results = SPAWN.Queue()
    barrier = SPAWN.Barrier(2)
    children = [SPAWN.Process(target=child_mixed_load, args=(str(tmp_path), me, 6000, barrier, results))
                for me in (0, 1)]
    for child in children:
        child.start()
    try:
        outcomes = gather(results, children, 2)
    finally:
        for child in children:
            child.kill()
            child.join(60)
    for hits, wrong, puts, stats in outcomes:
        assert wrong == 0
        assert hits > 100 and puts > 500
        assert stats["verify_failures"] == 0, stats  # nothing is damaged: a read the other writer overtook is torn
    assert sum(stats["evictions"] for *_, stats in outcomes) > 100  # frames rewritten under the readers


# -- 6. permissions ------------------------------------------------------------------------


def test_permissions(make: Factory, tmp_path: Path) -> None:
    path = Path(host_directory(HOST, str(tmp_path)))
    path.mkdir(mode=0o755)  # left loose by someone: tightened
    (path / "clients").touch(mode=0o644)
    old = os.umask(0)  # even with a permissive umask
    try:
        a = make()
    finally:
        os.umask(old)
    assert a.put(a.new_pool(), b"f", 0, pattern(b"f", 0))
    assert stat.S_IMODE(path.stat().st_mode) == 0o700
    names = {p.name for p in path.iterdir()}
    assert names == {"data.mdb", "lock.mdb", "slab", "frames", "clients", "init.lock", "write.lock", "donor.lock"}
    for p in path.iterdir():
        assert stat.S_IMODE(p.lstat().st_mode) == 0o600, p.name


JOIN_AS_OTHER = """
import sys
from backends.hoststore import HostError, HostStore
try:
    HostStore("lab", sys.argv[1]).join("/mnt/other", 16 * 4096)
except HostError as exc:
    print(exc)
"""


def test_another_uid_without_access_cannot_join() -> None:
    directory = tempfile.mkdtemp(dir="/tmp")  # traversable by uid 65534 (tmp_path's parents are not)
    try:
        os.chmod(directory, 0o711)
        a = HostStore(HOST, directory)
        a.join("/mnt/a", 16 * PAGE)
        try:
            done = subprocess.run([sys.executable, "-c", JOIN_AS_OTHER, directory], capture_output=True,
                                  preexec_fn=lambda: os.setresuid(65534, 65534, 65534), cwd=os.getcwd(),
                                  timeout=60, check=True)
            path = host_directory(HOST, directory)
            assert done.stdout.decode() == f"cc_host=lab: permission denied: {path} is owned by uid 0\n"
            assert [c.label for c in a.clients()] == ["/mnt/a"]
        finally:
            a.leave()
    finally:
        shutil.rmtree(directory)
