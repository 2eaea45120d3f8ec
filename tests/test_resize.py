"""cache_size and cc_size changed on a live mount (issue 14, item 5): the page cache shrinks by
eviction in policy order with puts as reclaim does, grows at once, never moves a slot in use
and gives its memory back; every backend resizes (or refuses to, saying why); and the data
stays right while both sizes go up and down under load, in-process and on a real mount."""

from __future__ import annotations

import ctypes
import json
import os
import random
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
import trio

from backends.base import Backend, physical_memory
from backends.chain import ChainBackend
from backends.cluster import ClusterBackend
from backends.dedup import DedupBackend
from backends.eviction import ARC, POLICIES, S3FIFO, make_policy
from backends.tmem import TmemBackend
from backends.zcache import ZcacheBackend
from fusefs import PAGE_SIZE
from fusefs.cleancache import Cleancache
from fusefs.datapath import DataPath
from fusefs.pagecache import PageCache
from fusefs.srcio import SrcIO
from tools import concurrentmodel

if TYPE_CHECKING:
    from contextlib import AbstractContextManager

    from tests.conftest import Mount

    MountFactory = Callable[..., AbstractContextManager[Mount]]

P = PAGE_SIZE


def page_of(tag: int, index: int) -> bytes:
    return (f"{tag}:{index}:".encode() * P)[:P]


def write_src(path: Path, pages: int, tag: int = 0) -> None:
    path.write_bytes(b"".join(page_of(tag, i) for i in range(pages)))


class GatedIO(SrcIO):
    """SrcIO whose reads of SRC wait for `gate` while it is closed (a fill held in flight)."""

    def __init__(self) -> None:
        super().__init__(threads=1)
        self.gate: trio.Event | None = None
        self.waiting = trio.Event()

    async def preadv(self, fd: int, buffers: list[memoryview], offset: int, dev: int) -> int:
        if self.gate is not None:
            self.waiting.set()
            await self.gate.wait()
        return await super().preadv(fd, buffers, offset, dev)


class YieldingIO(SrcIO):
    """SrcIO whose every read of SRC lets the other tasks run first (requests interleave)."""

    def __init__(self) -> None:
        super().__init__(threads=1)

    async def preadv(self, fd: int, buffers: list[memoryview], offset: int, dev: int) -> int:
        await trio.lowlevel.checkpoint()
        return os.preadv(fd, buffers, offset)


class SlowTmem(TmemBackend):
    """tmem as a backend that awaits: puts and gets yield, so pages are locked while put."""

    awaits_io = True

    async def put_pages(self, pool: int, pages: list[tuple[bytes, int, memoryview]]) -> list[bool]:
        await trio.lowlevel.checkpoint()
        return await super().put_pages(pool, pages)

    async def put_page(self, pool: int, key: bytes, index: int, page: memoryview) -> bool:
        return (await self.put_pages(pool, [(key, index, page)]))[0]

    async def get_pages(self, pool: int, key: bytes, first: int, outs: list[memoryview]) -> list[bool]:
        await trio.lowlevel.checkpoint()
        return await super().get_pages(pool, key, first, outs)


async def datapath(pages: int, backend: Backend | None, policy: str = "lru",
                   io: SrcIO | None = None) -> DataPath:
    cc = Cleancache(backend)
    return DataPath(PageCache(pages * P, policy), cc, await cc.init_fs(), io=io or SrcIO(threads=1))


def slots_in_use(dp: DataPath) -> list[int]:
    return sorted(s for cached in dp.files.values() for s in cached.pages.values())


def mapped_bytes(pc: PageCache) -> int:
    """Bytes of the slab backed by memory now (Rss of its mapping in /proc/self/smaps)."""
    probe = ctypes.c_char.from_buffer(pc._mem)
    address = ctypes.addressof(probe)
    del probe
    inside = False
    with open("/proc/self/smaps") as f:
        for line in f:
            head = line.split()[0]
            if "-" in head and ":" not in head:
                lo, hi = (int(x, 16) for x in head.split("-"))
                inside = lo <= address < hi
            elif inside and head == "Rss:":
                return int(line.split()[1]) * 1024
    raise AssertionError("the slab's mapping is not in /proc/self/smaps")


# -- the eviction policies ------------------------------------------------------------------


@pytest.mark.parametrize("name", list(POLICIES))
def test_every_policy_keeps_working_across_resizes(name: str) -> None:
    policy = make_policy(name, 64)
    for key in range(64):
        policy.insert(key)
    for key in range(0, 64, 3):
        policy.touch(key)
    policy.resize(16)
    evicted = {policy.victim() for _ in range(48)}
    assert len(policy) == 16 and len(evicted) == 48
    policy.resize(128)
    for key in range(100, 200):
        policy.insert(key)
    assert len(policy) == 116 and policy.ghosts() <= 2 * 128


def test_s3fifo_and_arc_sizing_follows_the_capacity() -> None:
    s3: S3FIFO[int] = S3FIFO(100)
    for key in range(300):  # 200 ghosts remembered, bounded by main's share (90)
        s3.insert(key)
        if len(s3) > 100:
            s3.victim()
    s3.resize(20)
    assert (s3._small_size, s3._ghost_size) == (2, 18) and s3.ghosts() <= 18
    s3.resize(1000)
    assert (s3._small_size, s3._ghost_size) == (100, 900)

    arc: ARC[int] = ARC(100)
    for key in range(100):
        arc.insert(key)
    for _ in range(50):  # 50 keys to B1, then half of them hit again: p grows
        arc.victim()
    for key in range(25):
        arc.victim()
        arc.insert(key)
    p = arc.p
    assert p > 0
    for _ in range(len(arc) - 10):
        arc.victim()
    arc.resize(10)
    assert arc.p == pytest.approx(min(p / 10, 10))
    assert len(arc._t1) + len(arc._b1) <= 10 and len(arc) + arc.ghosts() <= 20


# -- the page cache ------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(POLICIES))
async def test_shrink_evicts_in_policy_order_and_puts_each_page(tmp_path: Path, name: str) -> None:
    """The pages a shrink evicts are the policy's next victims, each is put (and comes back
    from the pool with its data), and every page left sits below the new capacity."""
    write_src(tmp_path / "f", 32)
    fd = os.open(tmp_path / "f", os.O_RDONLY)
    try:
        dp = await datapath(16, TmemBackend(1 << 20), name)
        cached, _ = await dp.open_file(b"f", fd)
        shadow = make_policy(name, 16)
        rng = random.Random(5)
        for index in [*range(16), *rng.choices(range(16), k=40)]:  # fills, then hits in a known order
            if index in cached.pages:
                shadow.touch((cached, index))
            else:
                shadow.insert((cached, index))
            assert bytes(await dp.read(cached, fd, index * P, P)) == page_of(0, index)
        puts = dp.cc.puts
        shadow.resize(5)
        expected = {shadow.victim()[1] for _ in range(11)}
        await dp.set_cache_size(5 * P + 100)  # (rounded down to whole pages)
        assert dp.pc.capacity == 5 and dp.stats()["pagecache.capacity_pages"] == 5
        assert set(range(16)) - set(cached.pages) == expected
        assert dp.cc.puts - puts == 11 and max(slots_in_use(dp)) < 5
        reads = dp.backing_reads
        for index in range(16):
            assert bytes(await dp.read(cached, fd, index * P, P)) == page_of(0, index)
        assert dp.backing_reads == reads and dp.cc.succ_gets >= 11  # the evicted came back from the pool
        assert dp.pc.pages == 5
    finally:
        os.close(fd)


async def test_grow_takes_effect_at_once_and_moves_nothing(tmp_path: Path) -> None:
    write_src(tmp_path / "f", 64)
    fd = os.open(tmp_path / "f", os.O_RDONLY)
    try:
        dp = await datapath(8, None)
        cached, _ = await dp.open_file(b"f", fd)
        for index in range(8):
            await dp.read(cached, fd, index * P, P)
        before = dict(cached.pages)
        await dp.set_cache_size(64 * P)
        assert cached.pages == before and dp.pc.free_slots == 56
        for index in range(64):
            assert bytes(await dp.read(cached, fd, index * P, P)) == page_of(0, index)
        assert dp.pc.evictions == 0 and dp.pc.pages == 64 and dp.reserve == 1 and dp.batch == 16
    finally:
        os.close(fd)


async def test_a_fill_in_flight_keeps_its_slot_and_its_read_stays_right(tmp_path: Path) -> None:
    """A page being filled into a slot the shrink retires is locked: the shrink neither
    evicts nor waits for it; the read still returns the right bytes (around the cache), and
    the slot goes back to the kernel when the fill lets go of it."""
    write_src(tmp_path / "f", 16)
    fd = os.open(tmp_path / "f", os.O_RDONLY)
    io = GatedIO()
    try:
        dp = await datapath(16, TmemBackend(1 << 20), io=io)
        cached, _ = await dp.open_file(b"f", fd)
        for index in range(8):  # slots 0..7
            await dp.read(cached, fd, index * P, P)
        got: list[bytes] = []
        io.gate = trio.Event()
        async with trio.open_nursery() as nursery:

            async def reader() -> None:
                got.append(bytes(await dp.read(cached, fd, 12 * P, P)))

            nursery.start_soon(reader)
            await io.waiting.wait()
            assert 12 in cached.locks
            held = 8  # the next free slot
            await dp.set_cache_size(4 * P)
            assert 12 in cached.locks and held in dp.pc._retiring and max(slots_in_use(dp)) < 4
            io.gate.set()
        assert got == [page_of(0, 12)] and dp.fill_conflicts == 1
        assert not dp.pc._retiring and 12 not in cached.pages and max(slots_in_use(dp)) < 4
        assert bytes(await dp.read(cached, fd, 12 * P, P)) == page_of(0, 12)
    finally:
        os.close(fd)


async def test_shrinking_a_filled_cache_gives_its_memory_back(tmp_path: Path) -> None:
    write_src(tmp_path / "f", 4096)  # 16 MiB
    fd = os.open(tmp_path / "f", os.O_RDONLY)
    try:
        dp = await datapath(4096, None)
        cached, _ = await dp.open_file(b"f", fd)
        for offset in range(0, 4096 * P, 32 * P):
            await dp.read(cached, fd, offset, 32 * P)
        assert dp.pc.pages == 4096 and mapped_bytes(dp.pc) >= 16 << 20
        await dp.set_cache_size(1 << 20)
        assert dp.pc.pages == 256 and mapped_bytes(dp.pc) <= (1 << 20) + 64 * P
        await dp.set_cache_size(8 << 20)  # and grows again into fresh memory
        for offset in range(0, 2048 * P, 32 * P):
            assert bytes(await dp.read(cached, fd, offset, P)) == page_of(0, offset // P)
    finally:
        os.close(fd)


async def test_sizes_refused_with_one_line() -> None:
    dp = await datapath(4, TmemBackend(1 << 20))
    for call in (dp.set_cache_size, dp.cc.set_cc_size):
        with pytest.raises(ValueError, match="at least one page"):
            await call(P - 1)
        with pytest.raises(ValueError, match="memory"):
            await call(2 * physical_memory())
    assert dp.pc.capacity == 4 and dp.cc.backend is not None and dp.cc.backend.capacity == 1 << 20
    small = PageCache(4 * P, limit_bytes=8 * P)
    with pytest.raises(ValueError, match="the limit it was made with"):
        small.check_capacity(9 * P)


# -- the backends ------------------------------------------------------------------------


async def put_all(backend: Backend, pool: int, first: int, count: int) -> None:
    for i in range(first, first + count):
        assert await backend.put_page(pool, b"k", i, memoryview(page_of(7, i)))


async def present(backend: Backend, pool: int, count: int) -> list[int]:
    """Indexes the pool still holds (peeked, so nothing moves), data checked."""
    out = bytearray(P)
    held = []
    for i in range(count):
        if (await backend.peek_pages(pool, b"k", i, [memoryview(out)]))[0]:
            assert bytes(out) == page_of(7, i)
            held.append(i)
    return held


@pytest.mark.parametrize("make", [
    lambda cap: TmemBackend(cap),
    lambda cap: ZcacheBackend(cap, zc_poor="raw"),
    lambda cap: DedupBackend(cap),
    lambda cap: TmemBackend(cap, cc_policy="arc"),
], ids=["tmem", "zcache", "dedup", "tmem-arc"])
async def test_ram_backends_shrink_by_eviction_and_grow_at_once(make: Callable[[int], Any]) -> None:
    backend = make(1 << 20)
    pool = await backend.create_pool(None)
    await put_all(backend, pool, 0, 40)
    stats = backend.stats()
    size = stats["pool_total_size"]
    assert stats["capacity_bytes"] == 1 << 20 and stats["pool_limit_hit"] == 0
    await backend.set_capacity(size // 2)
    stats = backend.stats()
    assert stats["capacity_bytes"] == size // 2 and stats["pool_total_size"] <= size // 2
    left = await present(backend, pool, 40)
    assert stats["evicted_pages"] == 40 - len(left) > 0 and left == list(range(40 - len(left), 40))  # oldest went
    assert stats["pool_total_size_max"] == size
    await backend.set_capacity(1 << 20)
    await put_all(backend, pool, 100, 20)
    assert backend.stats()["evicted_pages"] == 40 - len(left)  # room at once
    out = bytearray(P)
    assert not await backend.get_page(pool, b"k", 0, memoryview(out))  # evicted by the shrink: gone


async def test_counters_high_water_and_limit_hits() -> None:
    backend = TmemBackend(4 * (P + TmemBackend.ENTRY_OVERHEAD))
    pool = await backend.create_pool(None)
    await put_all(backend, pool, 0, 4)
    full = backend.stats()["pool_total_size"]
    assert backend.stats()["pool_limit_hit"] == 0
    await put_all(backend, pool, 4, 3)  # each of these found the pool full and evicted
    out = bytearray(P)
    for i in range(3, 7):
        assert await backend.get_page(pool, b"k", i, memoryview(out))  # exclusive: the pool empties
    stats = backend.stats()
    assert stats["pool_limit_hit"] == 3 and stats["pool_total_size"] == 0 and stats["pool_total_size_max"] == full
    await put_all(backend, pool, 0, 1)
    backend.reset_stats()  # zram: the high-water mark restarts from the size now
    assert backend.stats()["pool_total_size_max"] == P + TmemBackend.ENTRY_OVERHEAD
    tiny = TmemBackend(100)
    tiny_pool = await tiny.create_pool(None)
    assert not await tiny.put_page(tiny_pool, b"k", 0, memoryview(page_of(0, 0)))
    assert tiny.stats()["pool_limit_hit"] == 1 and tiny.stats()["rejected_puts"] == 1


async def test_chain_resizes_every_member_and_spills_what_the_first_evicts() -> None:
    first, second = TmemBackend(1 << 20), TmemBackend(1 << 20)
    chain = ChainBackend([first, second])
    pool = await chain.create_pool(None)
    await put_all(chain, pool, 0, 40)
    assert first.stored_pages == 40 and second.stored_pages == 0
    entry = P + TmemBackend.ENTRY_OVERHEAD
    await chain.set_capacity(30 * entry)
    assert chain.capacity == 60 * entry and first.stored_pages == 30 and second.stored_pages == 10
    assert await present(chain, pool, 40) == list(range(40))
    await chain.set_capacity(5 * entry)
    assert first.stored_pages == 5 and second.stored_pages == 5


async def test_cluster_and_plugin_backends_refuse_saying_why(tmp_path: Path) -> None:
    lmdb = ClusterBackend(1 << 20, cc_dir=str(tmp_path))
    with pytest.raises(ValueError, match="sized by the first node"):
        await lmdb.set_capacity(2 << 20)
    redis = ClusterBackend(1 << 20, cc_store="redis://127.0.0.1:1")
    with pytest.raises(ValueError, match="maxmemory"):
        await redis.set_capacity(2 << 20)
    chain = ChainBackend([TmemBackend(1 << 20), ClusterBackend(1 << 20, cc_dir=str(tmp_path))])
    with pytest.raises(ValueError, match="sized by the first node"):
        await chain.set_capacity(2 << 20)
    assert chain.members[0].capacity == 1 << 20  # nothing changed


async def test_set_cc_size_keeps_the_tmem_rules_and_the_ledger_bound() -> None:
    cc = Cleancache(TmemBackend(1 << 20))
    pool = await cc.init_fs()
    await cc.put_pages(pool, [(b"k", i, memoryview(page_of(7, i))) for i in range(40)])
    await cc.set_cc_size(10 * (P + TmemBackend.ENTRY_OVERHEAD))
    out = bytearray(P)
    hits = [await cc.get_page(pool, b"k", i, memoryview(out)) for i in range(40)]
    assert hits == [False] * 30 + [True] * 10 and cc.verify_failures == 0 and cc.backend_errors == 0
    assert not await cc.get_page(pool, b"k", 39, memoryview(out))  # get-get: still exclusive
    assert cc.stats()["backend.tmem.capacity_bytes"] == 10 * (P + TmemBackend.ENTRY_OVERHEAD)
    big = 4096 * 4096
    await cc.set_cc_size(big)
    ledger = cc.pools[pool].ledger
    assert ledger is not None and ledger.limit == 4 * big // 4096
    none = Cleancache(None)
    await none.set_cc_size(8 << 20)  # nothing to resize: the caller keeps it for a register


# -- under load ---------------------------------------------------------------------------


async def test_data_stays_right_while_both_sizes_change_under_load(tmp_path: Path) -> None:
    """Readers of fixed files and a writer that reads back its own writes, many requests at
    once, while cache_size and cc_size go up and down: every read is right, every page
    left sits below the capacity, and nothing leaks."""
    for n in range(3):
        write_src(tmp_path / f"r{n}", 64, n)
    write_src(tmp_path / "w", 64, 9)
    fds = {name: os.open(tmp_path / name, os.O_RDWR) for name in ("r0", "r1", "r2", "w")}
    io = YieldingIO()
    try:
        dp = await datapath(32, SlowTmem(256 << 10), "s3fifo", io=io)
        files = {name: (await dp.open_file(name.encode(), fd))[0] for name, fd in fds.items()}
        model = bytearray((tmp_path / "w").read_bytes())
        rng = random.Random(11)
        done = trio.Event()
        resizes = 0

        async def reader(seed: int) -> None:
            r = random.Random(seed)
            for _ in range(300):
                name = f"r{r.randrange(3)}"
                first, count = r.randrange(64), r.choice((1, 1, 3, 8))
                got = bytes(await dp.read(files[name], fds[name], first * P, count * P))
                want = b"".join(page_of(int(name[1]), i) for i in range(first, min(64, first + count)))
                assert got == want, f"{name} pages {first}+{count}"

        async def writer() -> None:
            for step in range(200):
                offset = rng.randrange(64 * P - 100)
                data = bytes([step % 251]) * rng.randrange(1, 3 * P)
                data = data[: 64 * P - offset]
                await dp.write(files["w"], fds["w"], offset, data)
                model[offset : offset + len(data)] = data
                check = rng.randrange(64 * P - 2 * P)
                assert bytes(await dp.read(files["w"], fds["w"], check, 2 * P)) == model[check : check + 2 * P]

        async def resizer() -> None:
            nonlocal resizes
            sizes = [1, 2, 5, 16, 64, 3, 40, 8]
            while not done.is_set():
                await dp.set_cache_size(sizes[resizes % len(sizes)] * P)
                await dp.cc.set_cc_size(sizes[(resizes + 3) % len(sizes)] * 8 * P)
                resizes += 1
                await trio.sleep(0)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(resizer)
            async with trio.open_nursery() as load:
                for seed in range(4):
                    load.start_soon(reader, seed)
                load.start_soon(writer)
            done.set()
        assert resizes > 50
        assert dp.pc.pages <= dp.pc.capacity and max(slots_in_use(dp), default=0) < dp.pc.capacity
        assert not dp.pc._retiring and not any(f.locks for f in files.values())
        assert dp.cc.verify_failures == 0 and dp.cc.backend_errors == 0
    finally:
        for fd in fds.values():
            os.close(fd)
        io.close()


def test_a_mount_stays_right_while_its_sizes_change(mount_factory: MountFactory) -> None:
    """The concurrent model check (four clients on the same files) stays clean on a real mount
    under fio load (4k random reads at QD16 of another file) while another thread sets
    cache_size and cc_size through the control file, many times."""
    seed = random.randrange(1 << 32)
    with mount_factory("cleancache=tmem,cache_size=64K,cc_size=256K,max_requests=16") as m:
        (m.mnt / "conc").mkdir()
        data = random.Random(seed).randbytes(4 << 20)
        (m.src / "load").write_bytes(data)
        fio = subprocess.Popen(["fio", "--name=load", f"--filename={m.mnt / 'load'}", "--rw=randread", "--bs=4k",
                                "--ioengine=libaio", "--iodepth=16", "--direct=1", "--time_based", "--runtime=600",
                                "--size=4M", "--output-format=json"], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        stop = threading.Event()
        sets: list[str] = []
        failures: list[BaseException] = []

        def resize() -> None:
            sizes = ["4K", "16K", "256K", "8K", "1M", "40K"]
            try:
                while not stop.is_set() or len(sets) < 20:
                    n = len(sets)
                    command = f"set cache_size={sizes[n % 6]} cc_size={sizes[(n + 2) % 6]}"
                    m.control(command)
                    sets.append(command)
            except BaseException as exc:  # reported below
                failures.append(exc)

        for _ in range(600):  # fio has started reading (its start-up takes a few tenths of a second)
            if int(str(m.stats()["pagecache.misses"])) > 0:
                break
            time.sleep(0.05)
        thread = threading.Thread(target=resize)
        thread.start()
        try:
            report = concurrentmodel.run(m.mnt / "conc", m.src / "conc", seed, 4, 600, checkpoint=200, timeout=120)
        finally:
            stop.set()
            thread.join()
            fio.send_signal(signal.SIGINT)  # fio stops, reporting what it did so far
            out, err = fio.communicate(timeout=60)
        assert (m.mnt / "load").read_bytes() == data
        stats = m.stats()
    assert fio.returncode in (0, 128), err  # 128: stopped by the SIGINT, its report printed
    report_json = json.loads(out[out.index(b"{"):])
    assert report_json["jobs"][0]["error"] == 0 and report_json["jobs"][0]["read"]["total_ios"] > 0
    assert not failures, failures
    assert report.ok, f"{report.failure()} (seed {seed})"
    assert len(sets) > 20
    kib = {"4K": 4, "16K": 16, "256K": 256, "8K": 8, "1M": 1024, "40K": 40}
    last = [word.split("=")[1] for word in sets[-1].split()[1:]]
    assert stats["pagecache.capacity_pages"] == kib[last[0]] * 1024 // P
    assert stats["backend.tmem.capacity_bytes"] == kib[last[1]] * 1024
    assert stats["fs.internal_errors"] == 0 and stats["cleancache.verify_failures"] == 0
    assert int(str(stats["pagecache.pages"])) <= int(str(stats["pagecache.capacity_pages"]))
