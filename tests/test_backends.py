"""zcache, dedup and chains: every counter checked on scripted sequences through real
mounts. Duplicate puts and corrupt entries cannot be made through a mount (the frontend
never puts a page its pool holds, and nothing outside writes to the pool), so those
rules are checked on the backends directly."""

from __future__ import annotations

import gc
import os
import random
from pathlib import Path

import lz4.block
import pytest

from backends.chain import ChainBackend
from backends.dedup import DedupBackend
from backends.tmem import TmemBackend
from backends.zcache import ZcacheBackend
from tests.conftest import Mount, MountFactory, Stats
from tools.modelcheck import ModelCheck

PAGE = 4096
N = 32
OVERHEAD = ZcacheBackend.ENTRY_OVERHEAD
WORDS = ("self cached index page pool key backend return await async def if else for in not None True False "
         "stats count offset size data view slot file frame store ledger digest put get invalidate evict "
         "policy capacity bytes int list dict str raise ValueError assert with try except finally import "
         "from class lambda yield while break continue and or is len range min max sum sorted").split()


def text_pages(n: int) -> bytes:
    """Source-like text (lz4 keeps about 54% of a page, never more than 56%), the same on every
    run: a test that counts compressed bytes must not change when the project's sources do."""
    rng = random.Random(20261206)
    out = bytearray()
    while len(out) < n * PAGE:
        words = " ".join(rng.choice(WORDS) for _ in range(rng.randrange(3, 12)))
        out += b"    " * rng.randrange(4) + words.encode() + b"\n"
    return bytes(out[: n * PAGE])


def put_all_pages(m: Mount, name: str, data: bytes) -> Stats:
    """Write `data` to SRC, read it through the mount, then evict it all (N puts)."""
    (m.src / name).write_bytes(data)
    assert (m.mnt / name).read_bytes() == data
    m.control("drop_caches")
    return m.stats()


def test_zcache_same_filled_pages_cost_no_payload(mount_factory: MountFactory) -> None:
    with mount_factory("cleancache=zcache") as m:
        s = put_all_pages(m, "zeros", bytes(N * PAGE) + b"\xab" * (N * PAGE))
        z = {k.removeprefix("backend.zcache."): v for k, v in s.items() if k.startswith("backend.zcache.")}
        assert z["stored_pages"] == 2 * N and z["same_filled_pages"] == 2 * N
        assert z["compr_data_size"] == 0 and z["pool_total_size"] == 2 * N * OVERHEAD
        assert z["orig_data_size"] == 2 * N * PAGE and z["puts"] == 2 * N
        reads = s["backing.reads"]
        assert (m.mnt / "zeros").read_bytes() == bytes(N * PAGE) + b"\xab" * (N * PAGE)
        s = m.stats()
        assert s["backend.zcache.succ_gets"] == 2 * N and s["backend.zcache.stored_pages"] == 0
        assert s["backing.reads"] == reads  # all served by zcache


def zcache_stats(m: Mount) -> Stats:
    return {k.removeprefix("backend.zcache."): v for k, v in m.stats().items() if k.startswith("backend.zcache.")}


def test_zcache_counters_exact_on_a_scripted_sequence(mount_factory: MountFactory) -> None:
    """Every zcache counter after each step of: fill four files' pages into the pool, overwrite
    a whole page, write one byte, delete a file, read a file back."""
    text, noise = text_pages(N), os.urandom(N * PAGE)
    packed = [len(lz4.block.compress(text[i * PAGE : (i + 1) * PAGE], store_size=False)) for i in range(N)]
    assert max(packed) <= 3 * PAGE // 4  # all text pages are kept (zc_max default)
    with mount_factory("cleancache=zcache") as m:
        for name, data in (("zero", bytes(N * PAGE)), ("fill", b"\xab" * (N * PAGE)), ("text", text),
                           ("random", noise)):
            (m.src / name).write_bytes(data)
            assert (m.mnt / name).read_bytes() == data
        m.control("drop_caches")  # 4N puts: 2N same-filled, N compressed, N rejected
        expected = {"puts": 4 * N, "stored_pages": 3 * N, "same_filled_pages": 2 * N, "raw_pages": 0,
                    "compr_data_size": sum(packed), "reject_compress_poor": N, "succ_gets": 0,
                    "failed_gets": 0,  # the frontend knew the pool was empty and asked nothing
                    "invalidates": 0, "evicted_pages": 0, "dup_puts_replaced": 0, "dup_puts_flushed": 0,
                    "rejected_puts": 0, "corrupt_pages": 0}

        def check() -> None:
            z = zcache_stats(m)
            stored = expected["stored_pages"]
            expected.update(orig_data_size=stored * PAGE,
                            pool_total_size=expected["compr_data_size"] + stored * OVERHEAD)
            assert {k: z[k] for k in expected} == expected
            assert z["compr_ratio"] == round(z["stored_pages"] * PAGE / z["pool_total_size"], 3)

        check()
        with open(m.mnt / "text", "r+b", buffering=0) as f:
            f.write(b"x" * PAGE)  # page 0: its pool copy is invalidated
            f.seek(PAGE + 5)
            f.write(b"y")  # page 1 too
        expected.update(invalidates=2, stored_pages=3 * N - 2, compr_data_size=sum(packed[2:]))
        check()
        os.unlink(m.mnt / "zero")  # invalidate_inode: N more
        expected.update(invalidates=2 + N, stored_pages=2 * N - 2, same_filled_pages=N)
        check()
        assert (m.mnt / "fill").read_bytes() == b"\xab" * (N * PAGE)  # N exclusive gets
        expected.update(succ_gets=N, stored_pages=N - 2, same_filled_pages=0)
        check()
        assert (m.mnt / "random").read_bytes() == noise  # never stored: the frontend asks nothing
        check()


def test_zcache_evicts_exactly_what_cc_size_needs(mount_factory: MountFactory) -> None:
    """Same-filled pages cost ENTRY_OVERHEAD each: a one-page cc_size holds PAGE // OVERHEAD
    of them, and keeps the last ones."""
    fits = PAGE // OVERHEAD
    with mount_factory(f"cleancache=zcache,cc_size={PAGE}") as m:
        data = b"".join(bytes([n]) * PAGE for n in range(fits + 6))
        (m.src / "f").write_bytes(data)
        assert (m.mnt / "f").read_bytes() == data
        m.control("drop_caches")
        z = zcache_stats(m)
        assert z["puts"] == fits + 6 and z["evicted_pages"] == 6 and z["stored_pages"] == fits
        assert z["pool_total_size"] == z["capacity_bytes"] == fits * OVERHEAD
        assert (m.mnt / "f").read_bytes() == data
        z = zcache_stats(m)
        assert z["succ_gets"] == fits and z["stored_pages"] == 0 and z["pool_total_size"] == 0


@pytest.mark.parametrize("policy", ["reject", "raw"])
def test_zcache_poorly_compressing_pages(mount_factory: MountFactory, policy: str) -> None:
    data = os.urandom(N * PAGE)
    with mount_factory(f"cleancache=zcache,zc_poor={policy}") as m:
        s = put_all_pages(m, "random", data)
        if policy == "reject":
            assert s["backend.zcache.reject_compress_poor"] == N
            assert s["backend.zcache.stored_pages"] == 0 and s["backend.zcache.pool_total_size"] == 0
        else:
            assert s["backend.zcache.raw_pages"] == N and s["backend.zcache.reject_compress_poor"] == 0
            assert s["backend.zcache.compr_data_size"] == N * PAGE
            assert s["backend.zcache.pool_total_size"] == N * (PAGE + OVERHEAD)
        assert (m.mnt / "random").read_bytes() == data
        assert m.stats()["succ_gets"] == (0 if policy == "reject" else N)


def test_zcache_text_compresses_and_changed_content_is_never_stale(mount_factory: MountFactory) -> None:
    data = text_pages(N)
    with mount_factory("cleancache=zcache,zc_max=4096") as m:
        s = put_all_pages(m, "text", data)
        assert s["backend.zcache.stored_pages"] == N
        assert s["backend.zcache.compr_ratio"] > 1.5
        assert s["backend.zcache.compr_data_size"] < N * PAGE / 1.5
        with open(m.mnt / "text", "r+b", buffering=0) as f:  # page 3 is in the pool
            f.seek(3 * PAGE + 100)
            f.write(b"NEW CONTENT")
        expected = bytearray(data)
        expected[3 * PAGE + 100 : 3 * PAGE + 111] = b"NEW CONTENT"
        assert (m.mnt / "text").read_bytes() == expected
        m.control("drop_caches")  # the changed page is put again
        assert (m.mnt / "text").read_bytes() == expected
        s = m.stats()
        assert s["invalidates"] == 1 and s["cleancache.verify_failures"] == 0


def test_zcache_capacity_is_enforced_in_bytes(mount_factory: MountFactory) -> None:
    data = text_pages(4 * N)
    with mount_factory(f"cleancache=zcache,cc_size={8 * PAGE}") as m:
        s = put_all_pages(m, "text", data)
        assert s["backend.zcache.pool_total_size"] <= 8 * PAGE
        assert s["backend.zcache.evicted_pages"] > 0
        placed = s["backend.zcache.stored_pages"] + s["backend.zcache.evicted_pages"]
        assert placed + s["backend.zcache.reject_compress_poor"] == 4 * N
        assert (m.mnt / "text").read_bytes() == data


def test_dedup_keeps_one_copy_per_content(mount_factory: MountFactory) -> None:
    unique = os.urandom(N // 2 * PAGE)
    data = unique + unique  # half of the pages are duplicates
    with mount_factory("cleancache=dedup") as m:
        s = put_all_pages(m, "dup", data)
        d = {k.removeprefix("backend.dedup."): v for k, v in s.items() if k.startswith("backend.dedup.")}
        assert d["stored_pages"] == N and d["unique_pages"] == N // 2 and d["orig_data_size"] == N * PAGE
        assert d["duplicate_entry"] == N // 2 and d["hash_collisions"] == 0
        assert d["saved_bytes"] == N // 2 * PAGE and d["unique_data_size"] == N // 2 * PAGE
        assert d["puts"] == N and d["failed_gets"] == d["succ_gets"] == d["invalidates"] == 0
        assert d["evicted_pages"] == d["dup_puts_replaced"] == d["dup_puts_flushed"] == d["rejected_puts"] == 0
        # the copies plus their measured bookkeeping (tests/test_dedup.py checks it against tracemalloc)
        assert N // 2 * PAGE < d["pool_total_size"] < 1.05 * (N // 2 * PAGE)
        with open(m.mnt / "dup", "r+b", buffering=0) as f:
            f.write(b"x" * PAGE)  # page 0's handle goes; its copy stays for page N/2
        s = m.stats()
        assert s["backend.dedup.invalidates"] == 1 and s["backend.dedup.stored_pages"] == N - 1
        assert s["backend.dedup.unique_pages"] == N // 2 and s["backend.dedup.saved_bytes"] == (N // 2 - 1) * PAGE
        assert (m.mnt / "dup").read_bytes() == b"x" * PAGE + data[PAGE:]
        s = m.stats()
        assert s["backend.dedup.succ_gets"] == N - 1 and s["backend.dedup.failed_gets"] == 0
        assert s["backend.dedup.unique_pages"] == 0 and s["backend.dedup.pool_total_size"] == 0  # refcounts reached 0


def test_dedup_forced_collisions_never_return_another_page(mount_factory: MountFactory) -> None:
    """Every page hashes the same in `weakdedup`: the byte compare keeps them apart."""
    data = os.urandom(N * PAGE)
    with mount_factory("cleancache=weakdedup", plugins=True) as m:
        s = put_all_pages(m, "f", data)
        assert s["backend.weakdedup.hash_collisions"] == N - 1
        assert s["backend.weakdedup.unique_pages"] == N
        assert (m.mnt / "f").read_bytes() == data
        assert m.stats()["cleancache.verify_failures"] == 0


def test_chain_overflow_goes_to_the_next_member(mount_factory: MountFactory) -> None:
    """Incompressible pages are refused by zcache and land in tmem; a get finds them there."""
    data = os.urandom(N * PAGE)
    with mount_factory("cleancache=zcache+tmem") as m:
        s = put_all_pages(m, "f", data)
        assert s["backend.zcache.reject_compress_poor"] == N and s["backend.tmem.stored_pages"] == N
        assert (m.mnt / "f").read_bytes() == data
        s = m.stats()
        assert s["backend.tmem.stored_pages"] == 0 and s["succ_gets"] == N  # exclusive in B too


def test_chain_evictions_spill_to_the_next_member(mount_factory: MountFactory) -> None:
    data = text_pages(4 * N)
    with mount_factory(f"cleancache=zcache+tmem,cc_size={16 * PAGE}") as m:
        s = put_all_pages(m, "f", data)
        assert s["backend.zcache.evicted_pages"] > 0
        assert s["backend.tmem.stored_pages"] > 0
        assert (m.mnt / "f").read_bytes() == data


@pytest.mark.parametrize("backend", ["tmem", "zcache,zc_poor=raw", "dedup", "zcache+tmem"])
def test_a_scan_of_a_private_pool_is_served_around_the_page_cache(mount_factory: MountFactory, backend: str) -> None:
    """Sequential bypass on a private pool: past half the page cache a read in order is
    served by peeking into the pool, so the pool keeps the pages and the page cache keeps
    what it had; a page written meanwhile is read back new."""
    data = bytearray(os.urandom(1024 * PAGE))
    with mount_factory(f"cleancache={backend},cache_size=1M") as m:
        (m.src / "f").write_bytes(data)
        assert (m.mnt / "f").read_bytes() == data  # from SRC; evictions fill the pool
        read = m.stats()["backing.read_bytes"]
        assert (m.mnt / "f").read_bytes() == data
        s = m.stats()
        assert s["backing.read_bytes"] == read and s["pagecache.bypassed"] >= 512
        assert s["pagecache.pages"] <= 256 and s["cleancache.verify_failures"] == 0
        with open(m.mnt / "f", "r+b", buffering=0) as f:
            f.seek(900 * PAGE)
            f.write(b"N" * PAGE)
        data[900 * PAGE : 901 * PAGE] = b"N" * PAGE
        assert (m.mnt / "f").read_bytes() == data


@pytest.mark.parametrize("fault", ["raise", "corrupt", "stall", "stale", "flaky", "block"])
def test_misbehaving_backend_never_breaks_reads_or_writes(mount_factory: MountFactory, fault: str) -> None:
    seed = random.randrange(1 << 32)
    options = f"cleancache=faulty,fault={fault},cache_size={4 * PAGE},cc_timeout=0.02"
    with mount_factory(options, plugins=True) as m:
        m.faults_expected = True
        ModelCheck(m.mnt, seed, files=2, max_size=16 * PAGE).run(1500 if fault != "stall" else 300)
        s = m.stats()
    assert s["fs.internal_errors"] == 0
    if fault == "block":  # the faulty backend peeks too: scans went through its peek_pages
        assert s["pagecache.bypassed"] > 0
    if fault in ("raise", "flaky"):
        assert s["cleancache.backend_errors"] > 0
    if fault in ("corrupt", "stale"):
        assert s["cleancache.verify_failures"] > 0
    if fault == "stall":
        assert s["cleancache.backend_timeouts"] > 0


@pytest.mark.parametrize("options", ["cleancache=zcache,cache_size=12K,cc_size=40K",
                                     "cleancache=dedup,cache_size=8K,cc_size=64K",
                                     "cleancache=dedup,cache_size=8K,cc_size=64K,dd_compress=lz4",
                                     "cleancache=zcache+tmem,cache_size=8K,cc_size=24K",
                                     "cleancache=zcache,zc_poor=raw,cache_size=4K",
                                     "cleancache=cluster,cache_size=8K,cc_size=64K",
                                     "cleancache=zcache+cluster,cache_size=8K,cc_size=24K"])
def test_model_check_with_every_backend(mount_factory: MountFactory, tmp_path: Path, options: str) -> None:
    """tmem's runs are in tests/test_modelcheck.py; a cluster node here is a single node."""
    seed = int(os.environ.get("TMEMFS_SEED", random.randrange(1 << 32)))
    if "cluster" in options:
        (tmp_path / "store").mkdir()
        options += f",cc_dir={tmp_path / 'store'}"
    with mount_factory(options) as m:
        try:
            ModelCheck(m.mnt, seed).run(20000)
        except AssertionError as exc:
            raise AssertionError(f"{options}: {exc} (replay with TMEMFS_SEED={seed})") from None
        assert m.stats()["cleancache.verify_failures"] == 0


# -- directly on the backends ----------------------------------------------------------


def page(fill: int) -> memoryview:
    return memoryview(bytes([fill]) * PAGE)


async def test_duplicate_puts_replace_or_flush() -> None:
    z = ZcacheBackend(1 << 20)
    pool = await z.create_pool(None)
    out = memoryview(bytearray(PAGE))
    text = memoryview(text_pages(1))
    await z.put_page(pool, b"f", 0, page(1))
    await z.put_page(pool, b"f", 0, text)  # replaced
    assert z.stats()["dup_puts_replaced"] == 1
    await z.put_page(pool, b"f", 0, memoryview(os.urandom(PAGE)))  # refused: the old copy goes
    s = z.stats()
    assert s["dup_puts_flushed"] == 1 and s["stored_pages"] == 0
    assert not await z.get_page(pool, b"f", 0, out)


async def test_zcache_corrupt_entry_is_a_counted_miss() -> None:
    z = ZcacheBackend(1 << 20)
    pool = await z.create_pool(None)
    await z.put_page(pool, b"f", 0, memoryview(text_pages(1)))
    entries = z._pools[pool].files[b"f"]
    assert isinstance(entries[0], bytes)  # an lz4 block
    entries[0] = b"\x00garbage" * 10
    out = memoryview(bytearray(PAGE))
    assert not await z.get_page(pool, b"f", 0, out)
    s = z.stats()
    assert s["corrupt_pages"] == 1 and s["stored_pages"] == 0 and s["failed_gets"] == 1


async def test_shared_pool_gets_are_not_destructive() -> None:
    for backend in (TmemBackend(1 << 20), ZcacheBackend(1 << 20), DedupBackend(1 << 20)):
        pool = await backend.create_pool(b"\x01" * 16)
        out = memoryview(bytearray(PAGE))
        await backend.put_page(pool, b"f", 0, memoryview(text_pages(1)))
        assert await backend.get_page(pool, b"f", 0, out)
        assert await backend.get_page(pool, b"f", 0, out) and bytes(out) == text_pages(1)


async def test_dedup_refcounts_free_copies_on_last_handle() -> None:
    d = DedupBackend(1 << 20, dd_compress="lz4")
    pool = await d.create_pool(None)
    text = memoryview(text_pages(1))
    for index in range(3):
        await d.put_page(pool, b"f", index, text)
    assert d.stats()["unique_pages"] == 1
    await d.invalidate_page(pool, b"f", 0)
    await d.invalidate_page(pool, b"f", 1)
    assert d.stats()["unique_pages"] == 1
    await d.invalidate_inode(pool, b"f")
    s = d.stats()
    assert s["unique_pages"] == 0 and s["pool_total_size"] == 0 and s["stored_pages"] == 0


async def test_chain_keeps_one_version_per_handle() -> None:
    """A put that lands in A removes an older copy from B: never two contents."""
    a, b = ZcacheBackend(1 << 20), TmemBackend(1 << 20)
    chain = ChainBackend([a, b])
    pool = await chain.create_pool(None)
    out = memoryview(bytearray(PAGE))
    await chain.put_page(pool, b"f", 0, memoryview(os.urandom(PAGE)))  # refused by A: in B
    assert b.stats()["stored_pages"] == 1
    await chain.put_page(pool, b"f", 0, page(7))  # same-filled: A takes it, B drops its copy
    assert b.stats()["stored_pages"] == 0 and a.stats()["stored_pages"] == 1
    assert await chain.get_page(pool, b"f", 0, out) and bytes(out) == bytes(page(7))
    await chain.destroy_pool(pool)
    assert chain.named_stats()["zcache.stored_pages"] == 0


@pytest.mark.parametrize("cls", [TmemBackend, ZcacheBackend, DedupBackend])
async def test_stored_pages_cost_the_garbage_collector_nothing(cls: type) -> None:
    """A full collection walks every object the collector tracks, so pool entries must not
    be tracked: zcache's blocks once were (a bytes subclass), and a full collection then
    paused the daemon for 25 ms at 16k entries, 60 ms at 66k."""
    backend = cls(1 << 26)
    pool = await backend.create_pool(None)
    pages = [memoryview(((b"page %08d " % n) * 300)[:PAGE]) for n in range(2000)]  # distinct, compressible
    gc.collect()
    before = len(gc.get_objects())
    for n, page in enumerate(pages):
        assert await backend.put_page(pool, b"f%d" % (n // 64), n % 64, page)
    gc.collect()
    assert backend.stats()["stored_pages"] == 2000
    assert len(gc.get_objects()) - before < 100


def test_entry_overhead_is_measured() -> None:
    """ENTRY_OVERHEAD (what cc_size charges per entry besides payload) matches memory use."""
    import tracemalloc

    import trio

    async def fill() -> int:
        backend = TmemBackend(1 << 34)
        pool = await backend.create_pool(None)
        pages = [memoryview(os.urandom(PAGE)) for _ in range(5000)]
        tracemalloc.start()
        before = tracemalloc.get_traced_memory()[0]
        for n, p in enumerate(pages):
            await backend.put_page(pool, b"file%d" % (n // 64), n % 64, p)
        used = tracemalloc.get_traced_memory()[0] - before
        tracemalloc.stop()
        return used // 5000 - PAGE

    measured = trio.run(fill)
    assert 0.5 * OVERHEAD <= measured <= 1.5 * OVERHEAD, measured


async def test_zcache_reuses_the_block_of_an_unchanged_page_only() -> None:
    z = ZcacheBackend(1 << 20)
    pool = await z.create_pool(None)
    out = memoryview(bytearray(PAGE))
    text = text_pages(2)
    first, second = memoryview(text[:PAGE]), memoryview(text[PAGE:])
    await z.put_page(pool, b"f", 0, first)
    assert await z.get_page(pool, b"f", 0, out)  # handed out: zcache remembers the block
    await z.put_page(pool, b"f", 0, first)  # evicted again, unchanged
    assert z.stats()["reused_compressions"] == 1
    assert await z.get_page(pool, b"f", 0, out) and bytes(out) == bytes(first)
    await z.put_page(pool, b"f", 0, second)  # the page changed while in the page cache
    assert z.stats()["reused_compressions"] == 1
    assert await z.get_page(pool, b"f", 0, out) and bytes(out) == bytes(second)
