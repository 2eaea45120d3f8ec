"""The one-host shared store (backends/lmdbstore.py, backends/nodetable.py), driven directly:
pages, versions, eviction, invalidation, the never-blocking write lock, members,
permissions, and real second processes (spawned, never forked: LMDB and the
member slots must not be inherited)."""

from __future__ import annotations

import multiprocessing
import os
import queue
import random
import signal
import stat
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Coroutine
from pathlib import Path
from typing import Any, cast

import pytest
import trio

from backends import lmdbstore
from backends.lmdbstore import LmdbStore, pool_directory, remove_pool
from backends.nodetable import MAX_NODES
from backends.store import StoreUnavailable

PAGE = 4096
UUID = bytes(range(16))
SPAWN = multiprocessing.get_context("spawn")

Factory = Callable[..., Coroutine[Any, Any, LmdbStore]]


def pattern(file: bytes, tag: int, index: int) -> memoryview:
    """A page whose bytes say which (file, tag, index) it belongs to."""
    head = file.ljust(24, b".") + tag.to_bytes(8, "big") + index.to_bytes(8, "big")
    return memoryview((head * (PAGE // len(head) + 1))[:PAGE])


def page_of(store: LmdbStore, file: bytes, tag: int, index: int) -> bytes:
    """A get through a fresh buffer (b'' on a miss), run synchronously: the store never awaits."""
    out = memoryview(bytearray(PAGE))
    coro = store.get(file, tag, index, out)
    try:
        coro.send(None)
    except StopIteration as stop:
        return b"" if stop.value is None else bytes(out)
    raise AssertionError("LmdbStore.get awaited")


@pytest.fixture
async def make_store(tmp_path: Path) -> AsyncIterator[Factory]:
    """Join stores on a pool in tmp_path; every one still joined leaves at the end."""
    stores: list[LmdbStore] = []

    async def make(name: str = "node", capacity: int = 64 * PAGE, uuid: bytes = UUID, **kw: Any) -> LmdbStore:
        store = LmdbStore(uuid=uuid, capacity=capacity, directory=str(tmp_path), **kw)
        await store.join(name)
        stores.append(store)
        return store

    yield make
    for store in stores:
        await store.leave()


# -- children (spawned processes) ------------------------------------------------------


def child_versions(directory: str, file: bytes, bumps: int, results: Any) -> None:
    async def main() -> None:
        store = LmdbStore(uuid=UUID, capacity=16 * PAGE, directory=directory)
        await store.join(f"child:{os.getpid()}")
        before = await store.version(file)
        for _ in range(bumps):
            await store.bump(file)
        results.put((store.node, before, await store.version(file)))
        await store.leave()

    trio.run(main)


def child_dies_joined(directory: str, results: Any) -> None:
    async def main() -> None:
        store = LmdbStore(uuid=UUID, capacity=16 * PAGE, directory=directory)
        results.put(await store.join("doomed"))
        results.close()
        results.join_thread()  # the value is out before the process dies
        os._exit(0)  # no leave(): the kernel drops the slot lock

    trio.run(main)


def child_mixed_load(directory: str, me: int, ops: int, latest: Any, barrier: Any, results: Any) -> None:
    """Put a new page of our file (each evicts the pool's oldest, so frames are rewritten
    all the time), then get the other process's oldest pages still in the pool (the ones
    being evicted now); now and then bump our file. Every hit must carry the pattern of
    exactly the (file, tag, index) asked for."""

    async def main() -> None:
        store = LmdbStore(uuid=UUID, capacity=16 * PAGE, directory=directory)
        await store.join(f"load{me}")
        mine, theirs = b"file%d" % me, b"file%d" % (1 - me)
        out = memoryview(bytearray(PAGE))
        hits = wrong = puts = 0
        barrier.wait()
        for n in range(ops):
            if n % 200 == 199:
                await store.bump(mine)
            tag = await store.version(mine)
            puts += await store.put(mine, tag, n, pattern(mine, tag, n))
            latest[me] = n
            top = latest[1 - me]
            tag = await store.version(theirs)
            for index in range(max(0, top - 9), max(0, top - 4)):
                if await store.get(theirs, tag, index, out) is not None:
                    hits += 1
                    wrong += bytes(out) != bytes(pattern(theirs, tag, index))
        results.put((hits, wrong, puts, store.stats()))
        await store.leave()

    trio.run(main)


def child_busy_writer(directory: str, results: Any) -> None:
    """Put pages as fast as possible, forever (the test stops and kills it)."""

    async def main() -> None:
        store = LmdbStore(uuid=UUID, capacity=16 * PAGE, directory=directory)
        await store.join("busy")
        results.put(store.node)
        n = 0
        while True:
            tag = await store.version(b"busy")
            await store.put(b"busy", tag, n % 64, pattern(b"busy", tag, n % 64))
            await store.invalidate_page(b"busy", tag, (n + 7) % 64)
            n += 1

    trio.run(main)


def gather(results: Any, children: list[Any], count: int, timeout: float = 240) -> list[Any]:
    """`count` results from the children, failing at once if one of them dies first."""
    out: list[Any] = []
    deadline = time.monotonic() + timeout
    while len(out) < count:
        try:
            out.append(results.get(timeout=0.2))
        except queue.Empty:
            dead = [c.exitcode for c in children if c.exitcode not in (None, 0)]
            assert not dead, f"a child process failed: exit codes {dead}"
            assert time.monotonic() < deadline, "children too slow"
    return out


HOLD_LOCK = """
import fcntl, os, sys, time
fd = os.open(sys.argv[1], os.O_RDWR)
fcntl.flock(fd, fcntl.LOCK_EX)
print("locked", flush=True)
time.sleep(60)
"""


# -- 1. pages ------------------------------------------------------------------------


async def test_put_then_get_identical_and_exact_address(make_store: Factory) -> None:
    a = await make_store("a")
    b = await make_store("b")
    tag = await a.version(b"f")
    page = pattern(b"f", tag, 3)
    assert await a.put(b"f", tag, 3, page)
    out = memoryview(bytearray(PAGE))
    assert await a.get(b"f", tag, 3, out) == a.node
    assert bytes(out) == bytes(page)
    assert await b.get(b"f", tag, 3, out) == a.node != b.node  # another node sees it, putter reported
    assert b.stats()["hits_from_others"] == 1
    assert page_of(a, b"f", tag + 1, 3) == b""  # another tag
    assert page_of(a, b"f", tag, 4) == b""  # another index
    assert page_of(a, b"g", tag, 3) == b""  # another file
    assert page_of(a, b"f" + bytes(8), tag, 3) == b""  # a file whose key extends this one
    assert a.stats()["stored_pages"] == b.stats()["stored_pages"] == 1


async def test_a_page_read_against_another_src_stamp_never_matches(make_store: Factory) -> None:
    """Same version, SRC written behind the cluster's back in between: the page read before
    is stored under the old stamp and never served to a reader who saw the new one."""
    a = await make_store("a")
    tag = await a.version(b"f")
    old, new = pattern(b"f", tag, 0), pattern(b"g", tag, 0)
    assert await a.put(b"f", tag, 0, old, stamp=111)
    assert await a.put(b"f", tag, 0, new, stamp=222)
    out = memoryview(bytearray(PAGE))
    assert await a.get(b"f", tag, 0, out, stamp=222) == a.node and bytes(out) == bytes(new)
    assert await a.get(b"f", tag, 0, out, stamp=111) == a.node and bytes(out) == bytes(old)
    assert await a.get(b"f", tag, 0, out, stamp=333) is None
    await a.invalidate_page(b"f", tag, 0, stamp=111)
    assert await a.get(b"f", tag, 0, out, stamp=111) is None
    await a.invalidate_file(b"f", tag)  # every stamp of the version
    assert await a.get(b"f", tag, 0, out, stamp=222) is None


async def test_damaged_frames_are_misses_never_wrong_data(make_store: Factory) -> None:
    a = await make_store()
    tag = await a.version(b"f")
    assert await a.put(b"f", tag, 0, pattern(b"f", tag, 0))
    assert await a.put(b"f", tag, 1, pattern(b"f", tag, 1))
    gens, data = a._gens, a._data
    assert gens is not None and data is not None
    gens[0] += 1  # frame 0 "being written" (odd generation)
    assert page_of(a, b"f", tag, 0) == b""
    assert a.stats()["torn_reads"] == 1
    data[PAGE + 5] ^= 0xFF  # frame 1's bytes damaged behind the index's back
    assert page_of(a, b"f", tag, 1) == b""
    assert a.stats()["verify_failures"] == 1


async def test_frame_rewritten_during_the_copy_is_a_miss(make_store: Factory) -> None:
    """A writer that reuses the frame while a reader copies it (simulated, deterministically):
    the reader's copy must not be returned."""
    a = await make_store()
    tag = await a.version(b"f")
    assert await a.put(b"f", tag, 0, pattern(b"f", tag, 0))
    gens, data = cast(memoryview, a._gens), cast(memoryview, a._data)
    other = pattern(b"other", tag, 9)

    class RacingBuffer(bytearray):
        def __setitem__(self, where: Any, value: Any) -> None:
            super().__setitem__(where, value)  # the reader's copy is done, then the writer strikes:
            gens[0] += 1
            data[:PAGE] = other
            gens[0] += 1

    out = RacingBuffer(PAGE)
    assert await a.get(b"f", tag, 0, out) is None  # type: ignore[arg-type]
    assert a.stats()["torn_reads"] == 1


# -- 2. stale puts --------------------------------------------------------------------


async def test_stale_put_refused(make_store: Factory) -> None:
    a = await make_store()
    old = await a.version(b"f")
    new = await a.bump(b"f")
    assert new > old
    assert not await a.put(b"f", old, 0, pattern(b"f", old, 0))
    assert not await a.put(b"f", new + 1, 0, pattern(b"f", new + 1, 0))
    assert page_of(a, b"f", new, 0) == b""
    assert page_of(a, b"f", old, 0) == b""
    stats = a.stats()
    assert stats["stale_puts_refused"] == 2
    assert stats["stored_pages"] == 0


# -- 3. versions -------------------------------------------------------------------------


async def test_versions_shared_monotonic_and_survive_leaving(make_store: Factory, tmp_path: Path) -> None:
    a = await make_store("a")
    b = await make_store("b")
    v0 = await a.version(b"f")
    assert await b.version(b"f") == v0
    v1 = await a.bump(b"f")
    assert v1 > v0 and await b.version(b"f") == v1 == await a.version(b"f")
    v2 = await b.bump(b"f")
    assert v2 > v1 and await a.version(b"f") == v2
    # a real second process sees our bumps, and we see its bumps
    results = SPAWN.Queue()
    child = SPAWN.Process(target=child_versions, args=(str(tmp_path), b"f", 3, results))
    child.start()
    ((node, before, after),) = gather(results, [child], 1)
    child.join(60)
    assert child.exitcode == 0
    assert node not in (a.node, b.node)
    assert before == v2 and after > v2
    assert await a.version(b"f") == after
    # the child left; a leaves too: nothing goes back
    await a.leave()
    assert await b.version(b"f") == after
    c = await make_store("c")  # takes a freed slot and continues its counters
    assert c.node in (a.node, node)
    assert await c.version(b"f") == after
    assert await c.bump(b"f") > after
    with pytest.raises(StoreUnavailable):
        await a.bump(b"f")  # unusable after leave
    # a re-created pool starts above everything the old one handed out
    last = await c.version(b"f")
    for store in (b, c):
        await store.leave()
    remove_pool(UUID, str(tmp_path))
    d = await make_store("d")
    assert await d.version(b"f") > last


async def test_full_uuid_names_the_pool(make_store: Factory, tmp_path: Path) -> None:
    other = UUID[:15] + b"\xff"  # same first 15 bytes
    a = await make_store("a")
    b = await make_store("b", uuid=other)
    assert pool_directory(UUID, str(tmp_path)) != pool_directory(other, str(tmp_path))
    assert pool_directory(UUID, str(tmp_path)).endswith(UUID.hex())
    tag = await a.version(b"f")
    assert await a.put(b"f", tag, 0, pattern(b"f", tag, 0))
    assert page_of(b, b"f", await b.version(b"f"), 0) == b""
    with pytest.raises(ValueError):
        pool_directory(UUID[:8])


# -- 4. capacity and eviction ------------------------------------------------------------------


async def test_capacity_bound_and_oldest_evicted(make_store: Factory) -> None:
    a = await make_store(capacity=16 * PAGE)
    tag = await a.version(b"f")
    for i in range(40):
        assert await a.put(b"f", tag, i, pattern(b"f", tag, i))
        assert a.stats()["stored_pages"] == min(i + 1, 16)
    stats = a.stats()
    assert stats["capacity_pages"] == 16
    assert stats["pool_total_size"] == 16 * PAGE
    assert stats["evicted_pages"] == 24
    for i in range(40):
        assert page_of(a, b"f", tag, i) == (bytes(pattern(b"f", tag, i)) if i >= 24 else b"")


async def test_a_hit_gives_a_second_chance_at_eviction(make_store: Factory) -> None:
    a = await make_store(capacity=16 * PAGE)
    b = await make_store(capacity=16 * PAGE)
    tag = await a.version(b"f")
    for i in range(16):
        assert await a.put(b"f", tag, i, pattern(b"f", tag, i))
    assert page_of(b, b"f", tag, 0)  # the oldest page, hit once (by another node): no write
    for i in range(16, 24):  # 8 new pages evict the 8 oldest not hit since
        assert await b.put(b"f", tag, i, pattern(b"f", tag, i))
    assert page_of(a, b"f", tag, 0)  # survived: passed over once, its byte cleared
    assert all(page_of(a, b"f", tag, i) == b"" for i in range(1, 9))  # never hit: evicted
    assert sum(bool(page_of(a, b"f", tag, i)) for i in range(24)) == 16


async def test_long_keys_fill_the_index_not_the_map(make_store: Factory, monkeypatch: pytest.MonkeyPatch) -> None:
    """With 255-byte file keys the LMDB index, not the slab, runs out first: puts evict to
    keep the index under half the map, so LMDB never reports its map full."""
    monkeypatch.setattr(lmdbstore, "MAP_BASE", 2**20)
    monkeypatch.setattr(lmdbstore, "MAP_PER_FRAME", 64)
    a = await make_store(capacity=4096 * PAGE)
    for i in range(6000):
        file = (b"%03d" % (i % 50)).ljust(255, b"k")
        tag = await a.version(file)
        assert await a.put(file, tag, i, pattern(file[:24], tag, i))
        if i % 500 == 0:
            assert page_of(a, file, tag, i) == bytes(pattern(file[:24], tag, i))
    stats = a.stats()
    assert stats["map_full"] == 0
    assert 100 < int(stats["stored_pages"]) < 4096
    assert stats["evicted_pages"] == 6000 - int(stats["stored_pages"])


async def test_capacity_fixed_by_first_node(make_store: Factory) -> None:
    a = await make_store(capacity=16 * PAGE)
    b = await make_store(capacity=1000 * PAGE)
    assert a.stats()["capacity_pages"] == b.stats()["capacity_pages"] == 16
    tiny = await make_store(uuid=b"x" * 16, capacity=0)
    assert tiny.stats()["capacity_pages"] == 16  # at least 16 frames


# -- 5. invalidation ------------------------------------------------------------------


async def test_invalidate_file_by_tag_all_versions_and_page(make_store: Factory) -> None:
    a = await make_store(capacity=16 * PAGE)
    f, g = b"file", b"file" + b"\0"  # g's key starts with f's bytes
    t1 = await a.version(f)
    tg = await a.version(g)
    for i in range(4):
        assert await a.put(f, t1, i, pattern(f, t1, i))
        assert await a.put(g, tg, i, pattern(g, tg, i))
    t2 = await a.bump(f)
    for i in range(4):
        assert await a.put(f, t2, i, pattern(f, t2, i))
    assert a.stats()["stored_pages"] == 12

    await a.invalidate_file(f, t1)
    assert all(page_of(a, f, t1, i) == b"" for i in range(4))
    assert all(page_of(a, f, t2, i) for i in range(4))
    assert all(page_of(a, g, tg, i) for i in range(4))
    assert a.stats()["stored_pages"] == 8

    await a.invalidate_file(f, None)
    assert all(page_of(a, f, t2, i) == b"" for i in range(4))
    assert all(page_of(a, g, tg, i) for i in range(4))
    assert a.stats()["stored_pages"] == 4

    await a.invalidate_page(g, tg, 2)
    await a.invalidate_page(g, tg + 1, 3)  # another version: not this page
    assert [bool(page_of(a, g, tg, i)) for i in range(4)] == [True, True, False, True]
    assert a.stats()["stored_pages"] == 3

    # the 9 freed frames are reused: 13 new pages fill the 16 frames without evicting anything
    t3 = await a.version(f)
    for i in range(13):
        assert await a.put(f, t3, i, pattern(f, t3, i))
    assert a.stats()["evicted_pages"] == 0
    assert all(page_of(a, g, tg, i) for i in (0, 1, 3))

    await a.clear()
    assert a.stats()["stored_pages"] == 0
    assert a._env is not None and a._env.stat()["entries"] == 1  # only the meta record is left
    assert page_of(a, g, tg, 0) == b"" and page_of(a, f, t3, 0) == b""
    assert await a.put(f, t3, 0, pattern(f, t3, 0))
    assert page_of(a, f, t3, 0) == bytes(pattern(f, t3, 0))


# -- 6. the write lock never blocks ---------------------------------------------------------


async def test_held_write_lock_refuses_put_quickly_and_gets_still_hit(make_store: Factory) -> None:
    a = await make_store(lock_wait=0.002)
    tag = await a.version(b"f")
    assert await a.put(b"f", tag, 0, pattern(b"f", tag, 0))
    lock_path = os.path.join(a.path, "write.lock")
    holder = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, lock_path], stdout=subprocess.PIPE)
    try:
        assert holder.stdout is not None
        assert holder.stdout.readline() == b"locked\n"
        started = time.monotonic()
        refused = await a.put(b"f", tag, 1, pattern(b"f", tag, 1))
        await a.invalidate_page(b"f", tag, 0)  # skipped, not waited for
        await a.invalidate_file(b"f", None)
        elapsed = time.monotonic() - started
        assert not refused
        assert elapsed < 1.0
        assert a.stats()["lock_timeouts"] == 3
        assert a.stats()["invalidates_skipped"] == 2
        assert page_of(a, b"f", tag, 0) == bytes(pattern(b"f", tag, 0))  # reads never need the lock
        assert await a.version(b"f") < await a.bump(b"f")  # nor do versions
    finally:
        holder.kill()
        holder.wait()
    tag = await a.version(b"f")
    assert await a.put(b"f", tag, 1, pattern(b"f", tag, 1))  # the kernel released the dead holder's lock


async def test_a_stopped_then_killed_writer_never_blocks_anyone(make_store: Factory, tmp_path: Path) -> None:
    """SIGSTOP a node in the middle of its writes (often inside the write lock and LMDB's
    write transaction): our puts, gets, bumps and invalidations all return at once; after
    it is killed, puts succeed again (flock released by the kernel, LMDB's mutex recovered)."""
    a = await make_store(lock_wait=0.002)
    tag = await a.version(b"f")
    assert await a.put(b"f", tag, 0, pattern(b"f", tag, 0))
    for _ in range(3):
        results = SPAWN.Queue()
        child = SPAWN.Process(target=child_busy_writer, args=(str(tmp_path), results))
        child.start()
        try:
            gather(results, [child], 1)
            time.sleep(random.uniform(0.02, 0.1))
            assert child.pid is not None
            os.kill(child.pid, signal.SIGSTOP)
            started = time.monotonic()
            tag = await a.version(b"f")
            for i in range(50):
                await a.put(b"f", tag, i, pattern(b"f", tag, i))
                assert page_of(a, b"f", tag, 0) == bytes(pattern(b"f", tag, 0))
                await a.invalidate_page(b"f", tag, 1000 + i)
                assert await a.bump(b"other") > 0
            assert time.monotonic() - started < 5.0
        finally:
            child.kill()
            child.join(60)
        tag = await a.version(b"f")
        assert await a.put(b"f", tag, 1, pattern(b"f", tag, 1))
        assert await a.put(b"f", tag, 0, pattern(b"f", tag, 0))
        assert page_of(a, b"f", tag, 1) == bytes(pattern(b"f", tag, 1))


# -- 7. two processes at once ---------------------------------------------------------------


async def test_two_processes_never_read_a_wrong_page(tmp_path: Path) -> None:
    results = SPAWN.Queue()
    barrier = SPAWN.Barrier(2)
    latest = SPAWN.Array("q", 2, lock=False)  # each process's newest page index
    children = [SPAWN.Process(target=child_mixed_load, args=(str(tmp_path), me, 20000, latest, barrier, results))
                for me in (0, 1)]
    for child in children:
        child.start()
    outcomes = gather(results, children, len(children))
    for child in children:
        child.join(60)
        assert child.exitcode == 0
    for hits, wrong, puts, stats in outcomes:
        assert wrong == 0
        assert hits > 100 and puts > 1000
        assert stats["stored_pages"] <= 16
        assert stats["hits_from_others"] == hits


# -- 8. members -------------------------------------------------------------------------------


async def test_members_join_leave_and_full_pool(make_store: Factory) -> None:
    a = await make_store("host:1:/mnt/a")
    b = await make_store("host:2:/mnt/b")
    await b.heartbeat(7, 5, 2)
    members = {m.node: m for m in await a.members()}
    assert {m.name for m in members.values()} == {"host:1:/mnt/a", "host:2:/mnt/b"}
    assert all(m.alive for m in members.values())
    assert (members[b.node].puts, members[b.node].gets, members[b.node].hits_from_others) == (7, 5, 2)
    assert a.stats()["members_alive"] == 2
    await a.leave()
    assert [m.name for m in await b.members()] == ["host:2:/mnt/b"]
    others = [await make_store(f"n{i}") for i in range(MAX_NODES - 1)]
    assert len(await b.members()) == MAX_NODES
    with pytest.raises(StoreUnavailable, match="member slots"):
        await make_store("one too many")
    await others[0].leave()
    assert (await make_store("late")).node == others[0].node


async def test_dead_node_slot_is_reused_and_goes_stale(make_store: Factory, tmp_path: Path) -> None:
    results = SPAWN.Queue()
    child = SPAWN.Process(target=child_dies_joined, args=(str(tmp_path), results))
    child.start()
    (dead,) = gather(results, [child], 1)
    child.join(60)
    a = await make_store("a", node_timeout=0.05)
    assert a.node == dead  # its lock died with it
    assert [m.name for m in await a.members()] == ["a"]
    await trio.sleep(0.1)
    assert [m.alive for m in await a.members()] == [False]  # no heartbeat for node_timeout
    await a.heartbeat(0, 0, 0)
    assert [m.alive for m in await a.members()] == [True]


# -- 9. permissions ---------------------------------------------------------------------------


async def test_permissions(make_store: Factory, tmp_path: Path) -> None:
    old = os.umask(0)  # even with a permissive umask
    try:
        a = await make_store()
    finally:
        os.umask(old)
    tag = await a.version(b"f")
    assert await a.put(b"f", tag, 0, pattern(b"f", tag, 0))
    path = Path(pool_directory(UUID, str(tmp_path)))
    assert stat.S_IMODE(path.stat().st_mode) == 0o700
    names = sorted(p.name for p in path.iterdir())
    assert {"data.mdb", "lock.mdb", "pages", "nodes", "init.lock", "write.lock"} <= set(names)
    for p in path.iterdir():
        assert stat.S_IMODE(p.lstat().st_mode) == 0o600, p.name


async def test_refuses_a_directory_it_does_not_own(tmp_path: Path) -> None:
    os.symlink(tmp_path / "elsewhere", pool_directory(UUID, str(tmp_path)))
    (tmp_path / "elsewhere").mkdir(mode=0o700)
    store = LmdbStore(uuid=UUID, capacity=16 * PAGE, directory=str(tmp_path))
    with pytest.raises(StoreUnavailable):
        await store.join("x")
    assert not any((tmp_path / "elsewhere").iterdir())


async def test_last_node_out_removes_the_pool(make_store: Factory, tmp_path: Path) -> None:
    """An ephemeral pool outlives its nodes by nothing: the last leave frees its memory."""
    first, second = await make_store("a"), await make_store("b")
    assert await first.put(b"f", await first.version(b"f"), 0, pattern(b"f", 0, 0))
    path = pool_directory(UUID, str(tmp_path))
    await first.leave()
    assert os.path.isdir(path)  # b is still a member
    await second.leave()
    assert not os.path.exists(path)
    third = await make_store("c")  # joining again makes a fresh pool, versions still larger
    assert os.path.isdir(path) and page_of(third, b"f", await third.version(b"f"), 0) == b""


async def test_get_many_answers_a_run_in_one_transaction(make_store: Factory) -> None:
    a, b = await make_store("a"), await make_store("b")
    tag = await a.version(b"f")
    for i in (0, 1, 3):
        assert await a.put(b"f", tag, i, pattern(b"f", tag, i))
    outs = [memoryview(bytearray(PAGE)) for _ in range(5)]
    assert await b.get_many(b"f", tag, 0, outs) == [a.node, a.node, None, a.node, None]
    assert [bytes(outs[i]) for i in (0, 1, 3)] == [bytes(pattern(b"f", tag, i)) for i in (0, 1, 3)]
    assert await b.get_many(b"f", tag + 1, 0, outs[:2]) == [None, None]  # another version: nothing
