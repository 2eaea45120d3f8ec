"""The dedup backend's compact layout: what it charges is what it allocates, copies are
evicted and freed as a whole, collisions never leak data, and every handle reads back its
own content or misses. Mostly on the backend directly; one chain through a real mount."""

from __future__ import annotations

import os
import random
import tracemalloc

import pytest

from backends.chain import ChainBackend
from backends.dedup import CHUNK, NO, SHIFT, DedupBackend, unpack
from backends.tmem import TmemBackend
from tests.unithelpers import counts

PAGE = 4096
SHARED = b"\x01" * 16
Handle = tuple[int, bytes, int]


class WeakDedup(DedupBackend):
    """Every page has the same digest: only the byte compare keeps copies apart."""

    @staticmethod
    def digest(page: memoryview) -> bytes:
        return bytes(16)


def text_page(n: int) -> bytes:
    """A distinct page that lz4 compresses well."""
    return (b"page %08d " % n + b"the quick brown fox jumps over the lazy dog; " * 100)[:PAGE]


def dup50(count: int, text: bool = False) -> list[bytes]:
    """Every other page is new, the others repeat an earlier one (tools/bench_backends.py's dup50)."""
    rng = random.Random(count)
    uniques: list[bytes] = []
    pages = []
    for n in range(count):
        if n % 2 == 0:
            uniques.append(text_page(n) if text else os.urandom(PAGE))
            pages.append(uniques[-1])
        else:
            pages.append(rng.choice(uniques))
    return pages


def handles(d: DedupBackend) -> dict[Handle, bytes | None]:
    """Every live handle with its content, read from the arrays (a get may be exclusive),
    checking the bookkeeping on the way: refcounts, handle lists, the index, capacity."""
    found: dict[Handle, bytes | None] = {}
    refs: dict[int, int] = {}
    for pool_id, pool in d._pools.items():
        for key, file in pool.files.items():
            assert file.key == key and file.pool == pool_id and file.chunks
            for number, chunk in file.chunks.items():
                live = 0
                for i in range(CHUNK):
                    slot = d._hslot[chunk << SHIFT | i]
                    if slot:
                        live += 1
                        refs[slot] = refs.get(slot, 0) + 1
                        found[(pool_id, key, number << SHIFT | i)] = unpack(d._data[slot])
                assert live == d._used[chunk] > 0
    assert sum(refs.values()) == d.stored_pages == len(found)
    assert len(refs) == d.unique_pages
    for slot, count in refs.items():
        assert d._refs[slot] == count
        listed, handle = 0, d._head[slot]
        while handle != NO:
            assert d._hslot[handle] == slot
            listed, handle = listed + 1, d._hnext[handle]
        assert listed == count
        content = unpack(d._data[slot])
        assert content is not None and d._lookup(d._hash[slot], content) == slot
    assert d.held <= d.capacity
    return found


async def put_all(d: DedupBackend, pool: int, pages: list[bytes], files: int) -> None:
    per = len(pages) // files
    for n, data in enumerate(pages):
        assert await d.put_page(pool, b"file-%d" % (n // per), n % per, memoryview(data))


# -- what pool_total_size counts -------------------------------------------------------


async def traced_fill(d: DedupBackend, views: list[memoryview], per_file: int) -> int:
    """Put every page into a new private pool, per_file pages a file; the bytes allocated meanwhile."""
    pool = await d.create_pool(None)
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    for n, view in enumerate(views):
        await d.put_page(pool, b"file-%d" % (n // per_file), n % per_file, view)
    used = tracemalloc.get_traced_memory()[0] - before
    tracemalloc.stop()
    return used


@pytest.mark.parametrize("policy", ["lru", "sieve"])
async def test_pool_total_size_is_the_memory_allocated_and_near_the_unique_content(policy: str) -> None:
    """A 50%-duplicate fill over several files: the charge covers what tracemalloc sees, by
    less than 1%, and is within 5% of the unique content (the benchmark's dup50 target)."""
    pages = dup50(6000)
    views = [memoryview(p) for p in pages]
    d = DedupBackend(1 << 34, cc_policy=policy)
    used = await traced_fill(d, views, 1000)
    s = counts(d.stats())
    unique = s["unique_pages"] * PAGE
    assert s["stored_pages"] == 6000 and s["unique_pages"] == 3000 and s["unique_data_size"] == unique
    assert used <= s["pool_total_size"] < used + 0.01 * unique
    assert s["pool_total_size"] <= 1.05 * unique


@pytest.mark.parametrize(("policy", "compress"), [("lru", "lz4"), ("s3fifo", "none"), ("arc", "none")])
async def test_every_configuration_charges_at_least_what_it_allocates(policy: str, compress: str) -> None:
    pages = dup50(3000, text=compress == "lz4")
    views = [memoryview(p) for p in pages]
    d = DedupBackend(1 << 34, cc_policy=policy, dd_compress=compress)
    used = await traced_fill(d, views, 500)
    s = counts(d.stats())
    assert used <= s["pool_total_size"] < 1.1 * used
    if compress == "lz4":
        assert s["unique_data_size"] < s["unique_pages"] * PAGE / 4


async def test_pool_total_size_returns_to_zero() -> None:
    d = DedupBackend(1 << 24)
    pool = await d.create_pool(None)
    await put_all(d, pool, dup50(200), 3)
    assert counts(d.stats())["pool_total_size"] > 100 * PAGE
    await d.invalidate_inode(pool, b"file-0")
    await d.destroy_pool(pool)
    s = counts(d.stats())
    assert s["stored_pages"] == s["unique_pages"] == s["pool_total_size"] == 0


# -- reference counts ------------------------------------------------------------------


async def test_a_copy_is_freed_with_its_last_handle() -> None:
    d = DedupBackend(1 << 20)
    pool = await d.create_pool(SHARED)
    a, b = memoryview(os.urandom(PAGE)), memoryview(os.urandom(PAGE))
    out = memoryview(bytearray(PAGE))
    for index in range(3):
        await d.put_page(pool, b"f", index, a)
    assert counts(d.stats())["unique_pages"] == 1 and counts(d.stats())["stored_pages"] == 3
    await d.put_page(pool, b"f", 0, a)  # the same content again: nothing changes
    assert counts(d.stats())["unique_pages"] == 1 and counts(d.stats())["dup_puts_replaced"] == 1
    await d.put_page(pool, b"f", 0, b)  # replaced: a keeps two handles
    await d.invalidate_page(pool, b"f", 1)
    s = counts(d.stats())
    assert s["unique_pages"] == 2 and s["stored_pages"] == 2 and s["dup_puts_replaced"] == 2
    assert await d.get_page(pool, b"f", 0, out) and bytes(out) == bytes(b)  # put-put-get
    assert not await d.get_page(pool, b"f", 1, out)
    await d.put_page(pool, b"f", 2, b)  # a's last handle replaced: a is freed
    s = counts(d.stats())
    assert s["unique_pages"] == 1 and s["unique_data_size"] == PAGE and s["saved_bytes"] == PAGE
    assert set(handles(d).values()) == {bytes(b)}
    await d.invalidate_inode(pool, b"f")
    assert counts(d.stats())["pool_total_size"] == 0


async def test_exclusive_gets_on_private_pools_only() -> None:
    d = DedupBackend(1 << 20)
    private, shared = await d.create_pool(None), await d.create_pool(SHARED)
    page = memoryview(text_page(1))
    out = memoryview(bytearray(PAGE))
    for pool in (private, shared):
        await d.put_page(pool, b"f", 0, page)
        await d.put_page(pool, b"f", 1, page)
    assert counts(d.stats())["unique_pages"] == 1 and counts(d.stats())["stored_pages"] == 4
    assert await d.get_page(private, b"f", 0, out) and bytes(out) == bytes(page)
    assert not await d.get_page(private, b"f", 0, out)  # moved back to the page cache
    for _ in range(2):
        assert await d.get_page(shared, b"f", 0, out) and bytes(out) == bytes(page)
    assert counts(d.stats())["stored_pages"] == 3 and counts(d.stats())["unique_pages"] == 1
    assert await d.get_page(private, b"f", 1, out)
    await d.destroy_pool(shared)
    s = counts(d.stats())
    assert s["stored_pages"] == s["unique_pages"] == s["pool_total_size"] == 0 and s["succ_gets"] == 4


async def test_a_page_larger_than_the_capacity_is_refused_and_the_old_one_goes() -> None:
    d = DedupBackend(2 * PAGE // 3, dd_compress="lz4")  # room for a compressed page, not a raw one
    pool = await d.create_pool(None)
    out = memoryview(bytearray(PAGE))
    assert await d.put_page(pool, b"f", 0, memoryview(text_page(1)))
    assert not await d.put_page(pool, b"f", 0, memoryview(os.urandom(PAGE)))
    s = counts(d.stats())
    assert s["rejected_puts"] == 1 and s["dup_puts_flushed"] == 1 and s["stored_pages"] == 0
    assert not await d.get_page(pool, b"f", 0, out)


async def test_reset_stats_keeps_levels() -> None:
    d = DedupBackend(1 << 20)
    pool = await d.create_pool(None)
    await put_all(d, pool, dup50(40), 2)
    levels = {k: counts(d.stats())[k] for k in ("stored_pages", "unique_pages", "pool_total_size", "unique_data_size")}
    d.reset_stats()
    s = counts(d.stats())
    assert s["puts"] == s["duplicate_entry"] == 0 and {k: s[k] for k in levels} == levels


# -- eviction ----------------------------------------------------------------------------


@pytest.mark.parametrize("policy", ["lru", "sieve", "s3fifo", "arc"])
async def test_evicting_a_copy_drops_every_handle_that_shares_it(policy: str) -> None:
    """Three handles per content; whatever the policy evicts, a content's handles all hit with
    its bytes or all miss, and pool_total_size never exceeds the capacity."""
    d = DedupBackend(10 * PAGE, cc_policy=policy)
    pool = await d.create_pool(SHARED)
    contents = [os.urandom(PAGE) for _ in range(30)]
    for n, data in enumerate(contents):
        for copy in range(3):
            assert await d.put_page(pool, b"f%d" % copy, n, memoryview(data))
        assert counts(d.stats())["pool_total_size"] <= 10 * PAGE
    s = counts(d.stats())
    assert s["evicted_pages"] > 0 and s["evicted_pages"] % 3 == 0
    assert s["stored_pages"] + s["evicted_pages"] == 90
    live = handles(d)
    out = memoryview(bytearray(PAGE))
    for n, data in enumerate(contents):
        hits = [await d.get_page(pool, b"f%d" % copy, n, out) and bytes(out) == data for copy in range(3)]
        assert hits in ([True] * 3, [False] * 3)
        assert hits[0] == ((pool, b"f0", n) in live)


@pytest.mark.parametrize("policy", ["lru", "sieve"])
async def test_a_used_copy_outlives_an_unused_older_one(policy: str) -> None:
    d = DedupBackend(8 * PAGE, cc_policy=policy)
    pool = await d.create_pool(SHARED)
    out = memoryview(bytearray(PAGE))
    await d.put_page(pool, b"f", 0, memoryview(text_page(0)))
    await d.put_page(pool, b"f", 1, memoryview(text_page(1)))
    assert await d.get_page(pool, b"f", 0, out)  # a use: lru moves it up, sieve marks it
    n = 2
    while not counts(d.stats())["evicted_pages"]:
        await d.put_page(pool, b"f", n, memoryview(text_page(n)))
        n += 1
    assert await d.get_page(pool, b"f", 0, out) and bytes(out) == text_page(0)
    assert not await d.get_page(pool, b"f", 1, out)


# -- collisions and corruption -----------------------------------------------------------


async def test_colliding_copies_stay_apart() -> None:
    d = WeakDedup(1 << 22)
    pool = await d.create_pool(SHARED)
    contents = [os.urandom(PAGE) for _ in range(20)]
    for n, data in enumerate(contents):
        await d.put_page(pool, b"a", n, memoryview(data))
        await d.put_page(pool, b"b", n, memoryview(data))  # a duplicate still finds its copy
    s = counts(d.stats())
    assert s["hash_collisions"] == 19 and s["unique_pages"] == 20 and s["duplicate_entry"] == 20
    for n in (0, 7, 19):  # out of the middle and both ends of the one bucket
        await d.invalidate_page(pool, b"a", n)
        await d.invalidate_page(pool, b"b", n)
    out = memoryview(bytearray(PAGE))
    for n, data in enumerate(contents):
        hit = await d.get_page(pool, b"b", n, out)
        assert hit == (n not in (0, 7, 19)) and (not hit or bytes(out) == data)
    assert counts(d.stats())["unique_pages"] == 17
    handles(d)


async def test_a_corrupt_copy_is_dropped_with_all_its_handles() -> None:
    d = DedupBackend(1 << 20, dd_compress="lz4")
    pool = await d.create_pool(None)
    text, noise = memoryview(text_page(1)), memoryview(os.urandom(PAGE))
    for index in range(2):
        await d.put_page(pool, b"f", index, text)
    await d.put_page(pool, b"f", 2, noise)  # incompressible: kept raw
    s = counts(d.stats())
    assert s["unique_pages"] == 2 and s["unique_data_size"] < PAGE + PAGE // 4
    slot = d._hslot[d._handle(d._pools[pool], b"f", 0)]
    d._data[slot] = b"\xff" * len(d._data[slot])  # same length, so the accounting stays whole
    out = memoryview(bytearray(PAGE))
    assert not await d.get_page(pool, b"f", 1, out)
    s = counts(d.stats())
    assert s["corrupt_pages"] == 1 and s["failed_gets"] == 1 and s["stored_pages"] == 1
    assert await d.get_page(pool, b"f", 2, out) and bytes(out) == bytes(noise)
    assert counts(d.stats())["pool_total_size"] == 0


# -- everything at once, against a model -------------------------------------------------


@pytest.mark.parametrize(("cls", "policy", "compress"), [
    (DedupBackend, "lru", "none"), (DedupBackend, "sieve", "lz4"), (DedupBackend, "s3fifo", "none"),
    (DedupBackend, "arc", "lz4"), (WeakDedup, "lru", "lz4"), (WeakDedup, "sieve", "none"),
])
async def test_random_operations_never_return_another_page(cls: type[DedupBackend], policy: str,
                                                           compress: str) -> None:
    rng = random.Random(f"{cls.__name__}-{policy}-{compress}")
    d = cls(6 * PAGE, cc_policy=policy, dd_compress=compress)
    pools = [await d.create_pool(None), await d.create_pool(SHARED)]
    contents = [text_page(n) if n % 2 else os.urandom(PAGE) for n in range(20)]
    model: dict[Handle, bytes] = {}  # what each handle was last given; the backend holds a subset
    out = memoryview(bytearray(PAGE))
    for _ in range(1500):
        live = handles(d)
        assert all(model[h] == data for h, data in live.items())
        slot = rng.randrange(len(pools))
        pool, key, index = pools[slot], b"f%d" % rng.randrange(3), rng.randrange(40)
        op = rng.random()
        if op < 0.55:
            data = rng.choice(contents)
            model.pop((pool, key, index), None)
            if await d.put_page(pool, key, index, memoryview(data)):
                model[(pool, key, index)] = data
        elif op < 0.8:
            hit = await d.get_page(pool, key, index, out)
            assert hit == ((pool, key, index) in live)
            assert not hit or bytes(out) == model[(pool, key, index)]
            if not hit or slot == 0:
                model.pop((pool, key, index), None)
        elif op < 0.92:
            await d.invalidate_page(pool, key, index)
            model.pop((pool, key, index), None)
        elif op < 0.99:
            await d.invalidate_inode(pool, key)
            model = {h: v for h, v in model.items() if h[:2] != (pool, key)}
        else:
            await d.destroy_pool(pool)
            model = {h: v for h, v in model.items() if h[0] != pool}
            pools[slot] = await d.create_pool(SHARED if slot else None)
    assert counts(d.stats())["evicted_pages"] > 0


# -- chains --------------------------------------------------------------------------------


async def test_every_handle_of_an_evicted_copy_spills_to_the_next_member() -> None:
    a, b = DedupBackend(6 * PAGE), TmemBackend(1 << 24)
    chain = ChainBackend([a, b])
    pool = await chain.create_pool(SHARED)
    contents = [os.urandom(PAGE) for _ in range(12)]
    for n, data in enumerate(contents):
        for copy in range(3):
            assert await chain.put_page(pool, b"f%d" % copy, n, memoryview(data))
    evicted = counts(a.stats())["evicted_pages"]
    assert evicted > 0 and evicted % 3 == 0 and counts(b.stats())["stored_pages"] == evicted
    out = memoryview(bytearray(PAGE))
    for n, data in enumerate(contents):
        for copy in range(3):
            assert await chain.get_page(pool, b"f%d" % copy, n, out) and bytes(out) == data


def test_dedup_then_tmem_through_a_mount(mount_factory) -> None:  # type: ignore[no-untyped-def]
    unique = os.urandom(64 * PAGE)
    data = unique + unique
    with mount_factory(f"cleancache=dedup+tmem,cc_size={16 * PAGE}") as m:
        (m.src / "f").write_bytes(data)
        assert (m.mnt / "f").read_bytes() == data
        m.control("drop_caches")
        s = m.stats()
        assert s["backend.dedup.evicted_pages"] > 0
        assert s["backend.tmem.puts"] == s["backend.dedup.evicted_pages"]  # every evicted handle spilled
        assert s["backend.dedup.pool_total_size"] <= 16 * PAGE
        assert (m.mnt / "f").read_bytes() == data
        assert m.stats()["cleancache.verify_failures"] == 0
