"""Changes the version protocol must not miss, on both stores (lmdb and a real Redis):
appends from several nodes, writes made to SRC behind the cluster's back, and a node
that has not joined its pool yet (fencing). docs/coherency.md has the argument for each.

Single-mount appends (SRC appended to behind one mount's back) are here too: the same
O_APPEND rule serves both.
"""

from __future__ import annotations

import errno
import fcntl
import functools
import os
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import Mount, MountFactory
from tests.redisservers import RedisServer, redis_server
from tests.test_cluster import PAGE, node_options, pattern, read_all
from tests.test_cluster_redis import redis_options, wait_for
from tools.stallingproxy import StallingProxy


@dataclass
class Store:
    """How the nodes of one test reach their pool."""

    kind: str  # lmdb or redis
    options: Callable[[str], str]  # node options, with extras
    server: RedisServer | None = None


@pytest.fixture(params=["lmdb", "redis"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    if request.param == "lmdb":
        yield Store("lmdb", functools.partial(node_options, tmp_path))
        return
    with redis_server(tmp_path) as server:
        yield Store("redis", functools.partial(redis_options, server.url), server)


@contextmanager
def mounted_nodes(mount_factory: MountFactory, options: list[str]) -> Iterator[list[Mount]]:
    with ExitStack() as stack:
        yield [stack.enter_context(mount_factory(o)) for o in options]


def record(node: int, n: int, size: int) -> bytes:
    """An append that names its node and sequence number in every byte."""
    return bytes([65 + node * 16 + n % 16]) * size


# -- 1. O_APPEND lands at SRC's end ---------------------------------------------------


def test_appends_from_two_nodes_land_in_order(store: Store, mount_factory: MountFactory, src: Path) -> None:
    """Each node's kernel guesses the offset from the size it has cached; the append must
    land at SRC's end instead, and both nodes then read exactly what SRC holds."""
    (src / "log").write_bytes(b"head\n")
    with mounted_nodes(mount_factory, [store.options(""), store.options("")]) as (a, b):
        fds = [os.open(m.mnt / "log", os.O_RDWR | os.O_APPEND) for m in (a, b)]
        try:
            expected = bytearray(b"head\n")
            for n in range(40):  # nothing asks either kernel for the size in between
                node = n % 2
                data = record(node, n, 70 if node == 0 else 125 + n)  # sizes that straddle pages
                assert os.write(fds[node], data) == len(data)
                expected += data
                assert (src / "log").read_bytes() == bytes(expected), f"append {n} landed elsewhere"
            for fd in fds:  # the writer's size and bytes, and the other node's, are SRC's
                assert os.fstat(fd).st_size == len(expected)
                assert os.pread(fd, len(expected) + 10, 0) == bytes(expected)
            for n in range(40, 60):  # and with reads in between (pages cached on both nodes)
                node = n % 2
                data = record(node, n, 300)
                assert os.write(fds[node], data) == len(data)
                expected += data
                assert os.pread(fds[1 - node], len(expected) + 10, 0) == bytes(expected)
            assert (src / "log").read_bytes() == bytes(expected)
            assert read_all(a.mnt / "log") == read_all(b.mnt / "log") == bytes(expected)
        finally:
            for fd in fds:
                os.close(fd)


def page_lookups(m: Mount) -> int:
    stats = m.stats()
    return int(stats["pagecache.hits"] + stats["pagecache.misses"])


@pytest.mark.parametrize("kernel_cache", [False, True])
def test_an_append_lands_after_what_was_appended_behind_the_mounts_back(
        mount_factory: MountFactory, src: Path, kernel_cache: bool) -> None:
    """One mount, SRC appended to directly while the file is open there: the page cache holds
    the old tail page, the kernel the old size; the append goes after SRC's real end, and the
    mount then shows what SRC holds (page cache and pool, and the kernel's copy too). With
    kernel_cache the appending descriptor reads around the kernel's copy: the kernel wrote the
    append into it at the offset it guessed, and would serve that to the next read."""
    (src / "log").write_bytes(b"x" * 5000)
    options = "cleancache=tmem,cache_size=1M,max_requests=16" + (",kernel_cache" if kernel_cache else "")
    with mount_factory(options) as m:
        fd = os.open(m.mnt / "log", os.O_RDWR | os.O_APPEND)
        try:
            expected = bytearray(b"x" * 5000)
            for n in range(40):
                assert os.pread(fd, 100_000, 0) == bytes(expected)  # the tail page is cached now
                behind = record(1, n, 300)
                with open(src / "log", "ab") as direct:
                    direct.write(behind)
                mine = record(0, n, 200)
                assert os.write(fd, mine) == len(mine)
                expected += behind + mine
                assert (src / "log").read_bytes() == bytes(expected)
                assert os.fstat(fd).st_size == len(expected)
                assert os.pread(fd, 100_000, 0) == bytes(expected)
            served = page_lookups(m)
            for _ in range(2):
                assert os.pread(fd, 100, 0) == bytes(expected[:100])
            assert page_lookups(m) == served + 2  # the descriptor reads around the kernel's copy
            m.control("drop_caches")  # the pages went to the pool: they must be SRC's bytes too
            assert read_all(m.mnt / "log") == bytes(expected)
            assert m.stats()["pagecache.external_changes"] >= 6
        finally:
            os.close(fd)


# -- 2. writes to SRC behind the cluster's back ----------------------------------------


def test_a_direct_write_to_src_is_served_to_no_node_from_the_pool(
        store: Store, mount_factory: MountFactory, src: Path) -> None:
    """The pool holds every page of f. SRC is written directly while no node has f open.
    A node that never saw f opens it and reads the new bytes (its pool keys carry SRC's
    stamp); a node that saw f notices the change at open and bumps its version, so a
    third node that held f open all along drops its pages at its next read."""
    old = pattern(40, 64)
    (src / "f").write_bytes(old)
    with mounted_nodes(mount_factory, [store.options("")] * 3) as (a, b, c):
        assert read_all(a.mnt / "f") == old
        a.control("drop_caches")  # every page is in the pool now
        held = os.open(b.mnt / "f", os.O_RDONLY)
        try:
            assert os.pread(held, 64 * PAGE, 0) == old  # B caches f, from the pool
            new = b"direct!!" * (PAGE // 8)
            with open(src / "f", "r+b") as direct:
                direct.seek(5 * PAGE + 100)
                direct.write(new[:3000])
            expected = bytearray(old)
            expected[5 * PAGE + 100 : 5 * PAGE + 3100] = new[:3000]
            assert read_all(c.mnt / "f") == bytes(expected)  # C never saw f
            assert read_all(a.mnt / "f") == bytes(expected)  # A saw f: it notices and tells everyone
            assert a.stats()["pagecache.external_changes"] == 1
            assert os.pread(held, 64 * PAGE, 0) == bytes(expected)  # B held f open all along
            for m in (a, b, c):
                m.control("drop_caches")
            for m in (c, b, a):  # nothing of the old file comes back from the pool, in any order
                assert read_all(m.mnt / "f") == bytes(expected)
        finally:
            os.close(held)


def test_a_direct_truncate_and_regrow_is_noticed(store: Store, mount_factory: MountFactory, src: Path) -> None:
    """Same size as before, other bytes: the stamp still differs (mtime and ctime)."""
    old = pattern(41, 16)
    (src / "f").write_bytes(old)
    with mounted_nodes(mount_factory, [store.options("")] * 2) as (a, b):
        assert read_all(a.mnt / "f") == old
        a.control("drop_caches")
        new = pattern(42, 16)
        (src / "f").write_bytes(new)  # O_TRUNC, then the same number of bytes
        assert read_all(b.mnt / "f") == new
        assert read_all(a.mnt / "f") == new


# -- 3. a node that has not joined its pool makes no change -------------------------------


class SlowJoin:
    """Nodes mounted with `ready` join at once; a node mounted with `late` after hold() cannot
    join until release(): on lmdb the pool's init lock is held, as by a node busy creating the
    pool; on Redis its connection goes through a proxy that answers nothing."""

    def __init__(self, store: Store, tmp_path: Path, stack: ExitStack, extra: str = "") -> None:
        pool = uuid.uuid4().hex
        given = f"pool_uuid={pool}"
        late = f"{given},{extra}".rstrip(",")
        self.ready = store.options(given)
        self._lock_path: Path | None = None
        self._fd = -1
        if store.kind == "lmdb":
            self.late = store.options(late)
            self._lock_path = tmp_path / "pools" / f"tmemfs-{pool}" / "init.lock"
        else:
            assert store.server is not None
            self._proxy = stack.enter_context(StallingProxy(store.server.port))
            self.late = redis_options(self._proxy.url, late)
        stack.callback(self.release)

    def hold(self) -> None:
        if self._lock_path is not None:  # (the first node made the pool's directory)
            self._fd = os.open(self._lock_path, os.O_RDWR)
            fcntl.flock(self._fd, fcntl.LOCK_EX)

    def release(self) -> None:
        if self._lock_path is None:
            self._proxy.release()
        elif self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


def write_in_background(path: Path, data: bytes, offset: int) -> tuple[threading.Thread, dict[str, object]]:
    outcome: dict[str, object] = {}

    def run() -> None:
        try:
            with open(path, "r+b") as f:
                os.pwrite(f.fileno(), data, offset)
            outcome["done"] = time.monotonic()
        except OSError as exc:
            outcome["error"] = exc.errno

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, outcome


def test_a_node_that_has_not_joined_holds_its_changes_until_it_has(
        store: Store, mount_factory: MountFactory, src: Path, tmp_path: Path) -> None:
    """While B cannot join, it reads SRC uncached and its write waits (another node caching
    f would never hear of it); once B has joined, the write lands with its bumps."""
    old = pattern(43, 16)
    (src / "f").write_bytes(old)
    with ExitStack() as stack:
        join = SlowJoin(store, tmp_path, stack)
        a = stack.enter_context(mount_factory(join.ready))
        join.hold()
        b = stack.enter_context(mount_factory(join.late))
        assert read_all(a.mnt / "f") == old  # A caches every page of f
        assert read_all(b.mnt / "f") == old  # from SRC
        assert b.stats()["backing.uncached_reads"] >= 1
        thread, outcome = write_in_background(b.mnt / "f", b"n" * PAGE, 2 * PAGE)
        time.sleep(1.5)
        assert thread.is_alive() and not outcome, "B changed f before it had joined"
        assert (src / "f").read_bytes() == old
        join.release()
        thread.join(timeout=20)
        assert "done" in outcome, outcome
        expected = old[: 2 * PAGE] + b"n" * PAGE + old[3 * PAGE :]
        assert read_all(a.mnt / "f") == expected  # A dropped its pages: B's bumps reached it
        assert read_all(b.mnt / "f") == expected
        s = b.stats()
        assert s["cleancache.placeholder_pools"] == 0 and s["fs.fenced_changes"] == 0
        assert s["backend.cluster.node"] >= 0
        b.control("drop_caches")  # B caches and shares like any node now
        a.control("drop_caches")
        assert read_all(a.mnt / "f") == expected


def test_a_change_on_a_node_that_cannot_join_fails_and_leaves_src_alone(
        store: Store, mount_factory: MountFactory, src: Path, tmp_path: Path) -> None:
    """After node_timeout without a join, writes, truncates, unlinks and renames over a file
    fail with EIO, and SRC is as it was; names and reads still work."""
    old = pattern(44, 4)
    (src / "f").write_bytes(old)
    (src / "g").write_bytes(b"g")
    with ExitStack() as stack:
        join = SlowJoin(store, tmp_path, stack, "node_timeout=1")
        a = stack.enter_context(mount_factory(join.ready))
        join.hold()
        b = stack.enter_context(mount_factory(join.late))
        assert read_all(a.mnt / "f") == old
        started = time.monotonic()
        with pytest.raises(OSError) as caught, open(b.mnt / "f", "r+b") as f:
            os.pwrite(f.fileno(), b"n" * 10, 0)
        assert caught.value.errno == errno.EIO
        assert time.monotonic() - started >= 0.9  # it waited for the join first
        changes: list[Callable[[], None]] = [lambda: os.truncate(b.mnt / "f", 1), lambda: os.unlink(b.mnt / "f"),
                                             lambda: os.rename(b.mnt / "g", b.mnt / "f"),
                                             lambda: open(b.mnt / "f", "wb").close()]
        for change in changes:
            with pytest.raises(OSError) as caught:
                change()
            assert caught.value.errno == errno.EIO
        assert (src / "f").read_bytes() == old and (src / "g").read_bytes() == b"g"
        assert read_all(b.mnt / "f") == old and read_all(a.mnt / "f") == old
        (b.mnt / "new").write_bytes(b"")  # a new, empty file cannot leave anything stale
        s = b.stats()
        assert s["fs.fenced_changes"] == 5
        if store.kind == "lmdb":  # the pool is asked again every second
            assert s["cleancache.pool_retries"] >= 2 and s["cleancache.placeholder_pools"] == 1
        else:  # the store reconnects every second
            assert s["backend.cluster.store.state"] == "down" and s["backend.cluster.node"] == -1
        join.release()
        assert wait_for(lambda: b.stats()["cleancache.placeholder_pools"] == 0
                        and int(b.stats().get("backend.cluster.node", -1)) >= 0)
        with open(b.mnt / "f", "r+b") as f:
            os.pwrite(f.fileno(), b"n" * 10, 0)
        assert read_all(a.mnt / "f") == b"n" * 10 + old[10:]


def test_a_short_cc_timeout_does_not_keep_a_redis_node_out(
        mount_factory: MountFactory, src: Path, tmp_path: Path) -> None:
    """Joining takes several round trips: more than a 50 ms cc_timeout on a loaded machine.
    The node joins anyway, and no half-made member of it stays listed as dead."""
    old = pattern(45, 16)
    (src / "f").write_bytes(old)
    with redis_server(tmp_path) as server:
        options = redis_options(server.url).replace("cc_timeout=0.5", "cc_timeout=0.05")
        with mounted_nodes(mount_factory, [options, options]) as (a, b):
            for m in (a, b):
                assert m.stats()["backend.cluster.node"] >= 0
                assert m.stats()["cleancache.placeholder_pools"] == 0
            assert read_all(a.mnt / "f") == old
            with open(b.mnt / "f", "r+b") as f:
                os.pwrite(f.fileno(), b"n" * PAGE, 0)
            assert read_all(a.mnt / "f") == b"n" * PAGE + old[PAGE:]

            def members(m: Mount) -> list[object]:
                return [v for k, v in m.stats().items() if k.startswith("backend.cluster.member.")
                        and k.endswith(".alive")]

            assert wait_for(lambda: members(a) == [1, 1])
