"""The cleancache hooks, counted exactly through a real mount."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.conftest import MountFactory, Stats

PAGE = 4096
N = 16  # page cache size in pages for these tests


def read_pages(path: Path, pages: int) -> bytes:
    fd = os.open(path, os.O_RDONLY)
    try:
        return b"".join(os.pread(fd, PAGE, i * PAGE) for i in range(pages))
    finally:
        os.close(fd)


def delta(before: Stats, after: Stats) -> Stats:
    return {k: after[k] - before[k] for k in before}


KEYS = ("puts", "succ_gets", "failed_gets", "backing.reads", "pagecache.hits", "pagecache.misses",
        "invalidates", "cleancache.inode_invalidates")


def test_read_twice_through_small_cache(src: Path, mount_factory: MountFactory) -> None:
    """2N pages through an N-page cache, twice: the second pass is served by cleancache."""
    data = os.urandom(2 * N * PAGE)
    (src / "f").write_bytes(data)
    with mount_factory(f"cleancache=tmem,cache_size={N * PAGE}") as m:
        first = read_pages(m.mnt / "f", 2 * N)
        after_first = m.counters(*KEYS)
        second = read_pages(m.mnt / "f", 2 * N)
        after_second = m.counters(*KEYS)
    assert first == data and second == data
    assert after_first["failed_gets"] == 2 * N and after_first["succ_gets"] == 0
    assert after_first["backing.reads"] == 2 * N
    assert after_first["puts"] == N  # pages 0..N-1 evicted by N..2N-1
    d = delta(after_first, after_second)
    assert d == {"puts": 2 * N, "succ_gets": 2 * N, "failed_gets": 0, "backing.reads": 0,
                 "pagecache.hits": 0, "pagecache.misses": 2 * N, "invalidates": 0,
                 "cleancache.inode_invalidates": 0}


def test_none_backend_reads_everything_from_src(src: Path, mount_factory: MountFactory) -> None:
    (src / "f").write_bytes(os.urandom(2 * N * PAGE))
    with mount_factory(f"cleancache=none,cache_size={N * PAGE}") as m:
        read_pages(m.mnt / "f", 2 * N)
        read_pages(m.mnt / "f", 2 * N)
        c = m.counters(*KEYS)
    assert c["succ_gets"] == 0 and c["backing.reads"] == 4 * N and c["puts"] == 3 * N


def test_write_invalidates_exactly_the_pages_it_covers(src: Path, mount_factory: MountFactory) -> None:
    (src / "f").write_bytes(bytes(8 * PAGE))
    with mount_factory("cleancache=tmem") as m:
        before = m.counters(*KEYS)
        fd = os.open(m.mnt / "f", os.O_WRONLY)
        try:
            os.pwrite(fd, b"a" * 10, PAGE - 5)  # straddles pages 0 and 1
            os.pwrite(fd, b"b" * (3 * PAGE), 4 * PAGE)  # pages 4, 5, 6
        finally:
            os.close(fd)
        after = m.counters(*KEYS)
    assert delta(before, after)["invalidates"] == 5


def test_write_updates_cached_and_pooled_pages(src: Path, mount_factory: MountFactory) -> None:
    """A page in the page cache is updated in place; one in the pool is invalidated there."""
    (src / "f").write_bytes(bytes(4 * N * PAGE))
    with mount_factory(f"cleancache=tmem,cache_size={N * PAGE}") as m:
        read_pages(m.mnt / "f", 4 * N)  # page 0 is now in the pool, the last N pages cached
        with open(m.mnt / "f", "r+b", buffering=0) as f:
            f.seek(10)
            f.write(b"pooled")
            f.seek((4 * N - 1) * PAGE + 10)
            f.write(b"cached")
        got = read_pages(m.mnt / "f", 4 * N)
        stats = m.stats()
    assert got[10:16] == b"pooled"
    assert got[(4 * N - 1) * PAGE + 10 : (4 * N - 1) * PAGE + 16] == b"cached"
    assert got == (src / "f").read_bytes()
    assert stats["cleancache.verify_failures"] == 0


@pytest.mark.parametrize("how", ["truncate", "o_trunc", "unlink", "rename_over"])
def test_inode_invalidated_even_with_nothing_cached(src: Path, mount_factory: MountFactory, how: str) -> None:
    """invalidate_inode at start and end, whether or not a page is cached (CVE-2018-16862)."""
    (src / "victim").write_bytes(b"v" * 3 * PAGE)
    (src / "other").write_bytes(b"o" * PAGE)
    with mount_factory("cleancache=tmem") as m:
        before = m.counters(*KEYS)
        target = m.mnt / "victim"
        if how == "truncate":
            os.truncate(target, 100)
        elif how == "o_trunc":
            os.close(os.open(target, os.O_WRONLY | os.O_TRUNC))
        elif how == "unlink":
            os.unlink(target)
        else:
            os.rename(m.mnt / "other", target)
        after = m.counters(*KEYS)
    assert delta(before, after)["cleancache.inode_invalidates"] == 2
    assert delta(before, after)["pagecache.misses"] == 0  # nothing was read


def test_unlink_of_one_of_two_links_keeps_the_pool(src: Path, mount_factory: MountFactory) -> None:
    (src / "a").write_bytes(b"x" * PAGE)
    os.link(src / "a", src / "b")
    with mount_factory("cleancache=tmem") as m:
        before = m.counters(*KEYS)
        os.unlink(m.mnt / "b")
        after = m.counters(*KEYS)
        assert (m.mnt / "a").read_bytes() == b"x" * PAGE
    assert delta(before, after)["cleancache.inode_invalidates"] == 0


def test_recreated_file_never_reads_old_bytes(src: Path, mount_factory: MountFactory) -> None:
    """Delete a file whose pages are in the pool, create another (often reusing the
    inode number): not one old byte may come back."""
    with mount_factory(f"cleancache=tmem,cache_size={2 * PAGE}") as m:
        for round_ in range(30):
            old = bytes([round_ % 250 + 1]) * (8 * PAGE)
            (m.mnt / "f").write_bytes(old)
            assert read_pages(m.mnt / "f", 8) == old  # pages go through the pool
            ino = os.stat(m.mnt / "f").st_ino
            os.unlink(m.mnt / "f")
            fd = os.open(m.mnt / "f", os.O_RDWR | os.O_CREAT, 0o644)
            try:
                os.ftruncate(fd, 8 * PAGE)  # a hole: must read as zeros
                assert os.pread(fd, 8 * PAGE, 0) == bytes(8 * PAGE), f"round {round_}, old ino {ino}"
            finally:
                os.close(fd)
            os.unlink(m.mnt / "f")
        assert m.stats()["cleancache.verify_failures"] == 0


def test_drop_caches_puts_every_page_and_flush_empties_the_pool(src: Path, mount_factory: MountFactory) -> None:
    data = os.urandom(10 * PAGE)
    (src / "f").write_bytes(data)
    with mount_factory("cleancache=tmem") as m:
        read_pages(m.mnt / "f", 10)
        m.control("drop_caches")
        s = m.stats()
        assert s["pagecache.pages"] == 0 and s["puts"] == 10
        assert s["backend.tmem.stored_pages"] == 10
        assert read_pages(m.mnt / "f", 10) == data
        s = m.stats()
        assert s["succ_gets"] == 10 and s["backing.reads"] == 10
        m.control("drop_caches")
        m.control("flush")
        s = m.stats()
        assert s["backend.tmem.stored_pages"] == 0
        assert read_pages(m.mnt / "f", 10) == data
        assert m.stats()["backing.reads"] == 20
        m.control("reset_stats")
        s = m.stats()
        assert s["puts"] == 0 and s["backing.reads"] == 0 and s["pagecache.pages"] == 10


def test_external_change_is_seen_at_next_open(src: Path, mount_factory: MountFactory) -> None:
    """Close-to-open: a file changed in SRC behind tmemfs's back is re-read at open."""
    (src / "f").write_bytes(b"1" * PAGE)
    with mount_factory("cleancache=tmem") as m:
        assert (m.mnt / "f").read_bytes() == b"1" * PAGE
        (src / "f").write_bytes(b"2" * 2 * PAGE)
        assert (m.mnt / "f").read_bytes() == b"2" * 2 * PAGE
        assert m.stats()["pagecache.external_changes"] == 1


def test_a_change_behind_the_back_is_seen_at_next_open_while_the_file_is_held_open(src: Path,
                                                                                 mount_factory: MountFactory) -> None:
    """Every open checks, as on NFS, also while another descriptor holds the file; the
    mount's own metadata changes (ctime moves) are not taken for external ones."""
    (src / "f").write_bytes(b"1" * 4 * PAGE)
    with mount_factory("cleancache=tmem") as m:
        with open(m.mnt / "f", "rb") as held:
            assert held.read() == b"1" * 4 * PAGE
            with open(src / "f", "r+b") as direct:
                direct.write(b"2" * PAGE)
            expected = b"2" * PAGE + b"1" * 3 * PAGE
            assert (m.mnt / "f").read_bytes() == expected
        m.control("drop_caches")
        assert (m.mnt / "f").read_bytes() == expected
        assert m.stats()["pagecache.external_changes"] == 1
        os.chmod(m.mnt / "f", 0o600)
        os.utime(m.mnt / "f", ns=(1, 2))
        assert (m.mnt / "f").read_bytes() == expected
        assert m.stats()["pagecache.external_changes"] == 1


def test_kernel_cache_keeps_the_kernels_copy_only_while_src_is_unchanged(src: Path,
                                                                         mount_factory: MountFactory) -> None:
    """kernel_cache, close-to-open for the kernel's copy: reopening an unchanged file is
    served by the kernel (no read reaches tmemfs); once SRC changed behind the mount's
    back, even at the same size, the open drops the kernel's copy and the new bytes show."""
    (src / "f").write_bytes(b"1" * 4 * PAGE)
    with mount_factory("cleancache=tmem,kernel_cache") as m:

        def reads_seen() -> int:
            return sum(m.counters("pagecache.hits", "pagecache.misses").values())

        assert (m.mnt / "f").read_bytes() == b"1" * 4 * PAGE
        seen = reads_seen()
        assert seen > 0
        assert (m.mnt / "f").read_bytes() == b"1" * 4 * PAGE
        assert reads_seen() == seen  # the kernel served the reopened file
        (src / "f").write_bytes(b"2" * 4 * PAGE)
        st = os.stat(src / "f")
        os.utime(src / "f", ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))  # a new mtime whatever the clock
        assert (m.mnt / "f").read_bytes() == b"2" * 4 * PAGE
        assert reads_seen() > seen and m.stats()["pagecache.external_changes"] == 1


def test_trace_records_every_hook_and_replays(src: Path, mount_factory: MountFactory, tmp_path: Path) -> None:
    """-o trace=FILE: one line per event, matching the counters; tools/trace.py replays it."""
    from tools.trace import compare, load_trace

    (src / "f").write_bytes(os.urandom(2 * N * PAGE))
    trace = tmp_path / "events.trace"
    with mount_factory(f"cleancache=tmem,cache_size={N * PAGE},trace={trace}") as m:
        read_pages(m.mnt / "f", 2 * N)
        read_pages(m.mnt / "f", 2 * N)
        os.truncate(m.mnt / "f", PAGE)
        stats = m.stats()
    lines = [line.split() for line in trace.read_text().splitlines() if not line.startswith("#")]
    ops = [fields[1] for fields in lines]
    assert ops.count("miss") == stats["pagecache.misses"] and ops.count("hit") == stats["pagecache.hits"]
    assert ops.count("put") == stats["puts"] and ops.count("get+") == stats["succ_gets"]
    assert ops.count("get-") == stats["failed_gets"]
    assert ops.count("invalidate_inode") == stats["cleancache.inode_invalidates"] == 2
    times = [int(fields[0]) for fields in lines]
    assert times == sorted(times)
    replayed = load_trace(str(trace))
    assert replayed.accesses == 4 * N
    results = compare(replayed, ["lru"], capacity=N)
    assert results[0].miss_ratio == 1.0  # 2N pages cycling through N: LRU misses every time


def test_a_trace_of_many_requests_in_flight_matches_the_counters(src: Path, mount_factory: MountFactory,
                                                                 tmp_path: Path) -> None:
    """Eight readers at once (scans the pool serves around the page cache, and random
    pages) with trace= on: every byte right, the bypass taken as without a trace, and
    one trace line per page cache lookup and cleancache get that the counters count."""
    import random
    import threading

    data = os.urandom(256 * PAGE)
    (src / "f").write_bytes(data)
    trace = tmp_path / "events.trace"
    errors: list[str] = []
    with mount_factory(f"cleancache=tmem,cache_size={N * PAGE},max_requests=16,trace={trace}") as m:
        path = m.mnt / "f"

        def reader(seed: int) -> None:
            rng = random.Random(seed)
            fd = os.open(path, os.O_RDONLY)
            try:
                for _ in range(3):
                    for offset in range(0, len(data), 32 * PAGE):  # a scan
                        if os.pread(fd, 32 * PAGE, offset) != data[offset : offset + 32 * PAGE]:
                            errors.append(f"reader {seed}: wrong bytes at {offset}")
                    for index in rng.sample(range(256), 32):
                        if os.pread(fd, PAGE, index * PAGE) != data[index * PAGE : (index + 1) * PAGE]:
                            errors.append(f"reader {seed}: wrong page {index}")
            finally:
                os.close(fd)

        threads = [threading.Thread(target=reader, args=(seed,)) for seed in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=120)
        stats = m.stats()
    assert not errors and not any(t.is_alive() for t in threads)
    assert stats["pagecache.bypassed"] > 0
    ops = [line.split()[1] for line in trace.read_text().splitlines() if not line.startswith("#")]
    assert ops.count("miss") == stats["pagecache.misses"] and ops.count("hit") == stats["pagecache.hits"]
    assert ops.count("get+") == stats["succ_gets"] and ops.count("get-") == stats["failed_gets"]
    assert ops.count("put") == stats["puts"]


def test_large_reads_count_each_page_once(src: Path, mount_factory: MountFactory) -> None:
    """A 128 KiB read of uncached pages: 32 misses, one cleancache get each, no hits."""
    (src / "f").write_bytes(os.urandom(64 * PAGE))
    with mount_factory("cleancache=tmem") as m:
        fd = os.open(m.mnt / "f", os.O_RDONLY)
        try:
            os.pread(fd, 32 * PAGE, 0)
            first = m.counters(*KEYS)
            os.pread(fd, 32 * PAGE, 0)
            second = m.counters(*KEYS)
        finally:
            os.close(fd)
    assert first["pagecache.misses"] == 32 and first["pagecache.hits"] == 0
    assert first["failed_gets"] == 32 and first["backing.reads"] == 1
    assert delta(first, second)["pagecache.hits"] == 32 and delta(first, second)["pagecache.misses"] == 0
