"""The coherency rules as a layer of their own (fusefs/coherency.py): which rules the
frontend hands out, what each does around a change, and that their calls to a backend's
versions get the frontend's timeout and fault containment."""

from __future__ import annotations

import ast
import errno
import os
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import trio

from backends.cluster import ClusterBackend
from backends.tmem import TmemBackend
from fusefs.cleancache import Cleancache
from fusefs.coherency import CoherencyStats, LocalCoherency, UnjoinedNode, VersionedCoherency
from fusefs.datapath import DataPath
from fusefs.pagecache import CachedFile, PageCache

PAGE = 4096
REPO = Path(__file__).resolve().parent.parent


def test_the_data_path_imports_nothing_from_backends() -> None:
    """How pool keys are built and versions kept is the coherency layer's and the backends'."""
    tree = ast.parse((REPO / "fusefs" / "datapath.py").read_text())
    imported = [node.module or "" for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)]
    imported += [alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names]
    assert imported and not [name for name in imported if name.split(".")[0] == "backends"]


async def node_over(tmp_path: Path, backend: ClusterBackend | None, timeout: float = 1.0,
                    join_wait: float = 5.0) -> DataPath:
    cc = Cleancache(backend, timeout=timeout)
    pool = await cc.init_shared_fs(uuid.UUID(int=7).bytes)
    return DataPath(PageCache(16 * PAGE), cc, pool, node=True, join_wait=join_wait)


@pytest.fixture
async def cluster(tmp_path: Path) -> AsyncIterator[ClusterBackend]:
    """A cluster backend on an lmdb store in the test's own directory."""
    store = tmp_path / "store"
    store.mkdir()
    backend = ClusterBackend(1 << 22, cc_dir=str(store))
    try:
        yield backend
    finally:
        await backend.close()


def src_file(tmp_path: Path, pages: int = 4) -> tuple[int, bytes]:
    data = os.urandom(pages * PAGE)
    (tmp_path / "f").write_bytes(data)
    return os.open(tmp_path / "f", os.O_RDWR), data


async def test_the_frontend_hands_out_the_rules_of_the_backend_in_force(tmp_path: Path,
                                                                        cluster: ClusterBackend) -> None:
    single = Cleancache(TmemBackend(1 << 20))
    rules = single.coherency(await single.init_fs(), PageCache(PAGE), CoherencyStats(), node=False)
    assert isinstance(rules, LocalCoherency)
    unjoined = Cleancache(None)
    rules = unjoined.coherency(await unjoined.init_fs(), PageCache(PAGE), CoherencyStats(), node=True)
    assert isinstance(rules, UnjoinedNode) and not rules.caches and not rules.admits_changes
    dp = await node_over(tmp_path, cluster)
    assert isinstance(dp.coherency, VersionedCoherency) and dp.coherency.admits_changes


async def test_a_local_change_flushes_the_pool_at_start_and_end_even_with_nothing_cached(tmp_path: Path) -> None:
    """truncate_inode_pages' rule: invalidate_inode before and after, cached pages or not
    (CVE-2018-16862 was a delete that skipped it because nothing was cached)."""
    cc = Cleancache(TmemBackend(1 << 20))
    dp = DataPath(PageCache(16 * PAGE), cc, await cc.init_fs())
    await dp.invalidate_file(b"never-opened")
    assert cc.inode_invalidates == 2
    fd, _ = src_file(tmp_path)
    try:
        cached, _ = await dp.open_file(b"f", fd)
        await dp.truncate(b"f", fd, PAGE)
        assert cc.inode_invalidates == 4 and cached.size == PAGE
    finally:
        os.close(fd)


async def pooled(tmp_path: Path) -> tuple[Cleancache, DataPath, CachedFile, int, bytes]:
    """A single mount's data path over a file of 4 pages, every page in the pool (tmem)."""
    cc = Cleancache(TmemBackend(1 << 20))
    dp = DataPath(PageCache(16 * PAGE), cc, await cc.init_fs())
    fd, data = src_file(tmp_path)
    cached, _ = await dp.open_file(b"f", fd)
    assert await dp.read(cached, fd, 0, 4 * PAGE) == data
    await dp.drop_caches()
    assert cc.stats()["cleancache.ledger_entries"] == 4
    return cc, dp, cached, fd, data


async def test_a_local_open_drops_what_src_changed_behind_the_mount_here_and_in_the_pool(tmp_path: Path) -> None:
    cc, dp, cached, fd, _ = await pooled(tmp_path)
    try:
        os.pwrite(fd, b"x" * 10, PAGE)  # behind the mount's back
        os.utime(fd, ns=(1, 1))
        dp.close_file(cached, None)
        cached, unchanged = await dp.open_file(b"f", fd)
        assert not unchanged and dp.coherence.external_changes == 1
        assert cc.stats()["cleancache.ledger_entries"] == 0 and not cached.pages
        assert await dp.read(cached, fd, PAGE, 10) == b"x" * 10
    finally:
        os.close(fd)


async def test_a_local_write_flushes_only_the_pages_it_covered(tmp_path: Path) -> None:
    cc, dp, cached, fd, data = await pooled(tmp_path)
    try:
        assert await dp.write(cached, fd, PAGE + 5, b"new") == (PAGE + 5, 3)
        assert cc.stats()["cleancache.ledger_entries"] == 3 and cc.inode_invalidates == 0
        assert cached.stamp is None  # unknown until the last close stamps it again
        expect = data[: PAGE + 5] + b"new" + data[PAGE + 8 :]
        assert await dp.read(cached, fd, 0, 4 * PAGE) == expect
        assert cc.succ_gets == 3  # the three pages the write did not touch came from the pool
    finally:
        os.close(fd)


async def test_a_version_check_gets_cc_timeout_and_a_stall_is_a_read_of_src(tmp_path: Path,
                                                                           cluster: ClusterBackend) -> None:
    """The version table is called through the frontend: a store that does not answer in
    cc_timeout costs a read of SRC around the cache, counted as a timeout, never an error
    or a stale page; once it answers again, pages are cached again."""
    dp = await node_over(tmp_path, cluster, timeout=0.05)
    fd, data = src_file(tmp_path)
    assert isinstance(dp.coherency, VersionedCoherency)
    store = cluster.pools[0].store
    real_version = store.version
    stalled = trio.Event()

    async def stalled_version(file: bytes) -> int:
        await stalled.wait()
        return await real_version(file)

    try:
        cached, _ = await dp.open_file(b"f", fd)
        store.version = stalled_version  # type: ignore[method-assign]
        cluster.awaits_io = True  # type: ignore[misc]  # as a Redis store: calls are bounded
        with trio.fail_after(5):
            assert await dp.read(cached, fd, 0, PAGE) == data[:PAGE]
        assert dp.cc.backend_timeouts == 1 and dp.uncached_reads == 1 and not cached.pages
        assert cluster.pools[0].versions.unknown == 1
        store.version = real_version  # type: ignore[method-assign]
        assert await dp.read(cached, fd, 0, PAGE) == data[:PAGE]
        assert cached.pages and dp.uncached_reads == 1
    finally:
        os.close(fd)


async def test_a_failing_version_table_is_contained_and_counted(tmp_path: Path, cluster: ClusterBackend) -> None:
    dp = await node_over(tmp_path, cluster)
    fd, data = src_file(tmp_path)
    store = cluster.pools[0].store

    async def broken(file: bytes) -> int:
        raise RuntimeError("the version table is corrupt")

    try:
        cached, _ = await dp.open_file(b"f", fd)
        store.version = broken  # type: ignore[method-assign]
        assert await dp.read(cached, fd, PAGE, PAGE) == data[PAGE : 2 * PAGE]
        assert dp.cc.backend_errors == 1 and dp.uncached_reads == 1 and not cached.pages
    finally:
        os.close(fd)


async def test_a_node_without_versions_caches_nothing_and_is_fenced(tmp_path: Path) -> None:
    dp = await node_over(tmp_path, None, join_wait=0.05)
    fd, data = src_file(tmp_path)
    try:
        cached, _ = await dp.open_file(b"f", fd)
        assert await dp.read(cached, fd, 0, PAGE) == data[:PAGE]
        assert not cached.pages and dp.uncached_reads == 1
        with pytest.raises(OSError) as refused:
            await dp.write(cached, fd, 0, b"lost")
        assert refused.value.errno == errno.EIO and dp.fenced_changes == 1
        assert (tmp_path / "f").read_bytes() == data  # nothing of the change reached SRC
    finally:
        os.close(fd)


async def test_new_rules_drop_pages_cached_under_the_old_ones(tmp_path: Path, cluster: ClusterBackend) -> None:
    """A node that registers its cluster backend late drops whatever it might have cached
    before (nothing, unjoined) and after an unregister caches nothing again."""
    cc = Cleancache(TmemBackend(1 << 20))
    dp = DataPath(PageCache(16 * PAGE), cc, await cc.init_shared_fs(uuid.UUID(int=7).bytes), node=True)
    fd, data = src_file(tmp_path)
    try:
        cached, _ = await dp.open_file(b"f", fd)
        assert isinstance(dp.coherency, UnjoinedNode)  # tmem keeps no versions
        await cc.register(cluster, replace=True)
        assert await dp.read(cached, fd, 0, 2 * PAGE) == data[: 2 * PAGE]
        assert isinstance(dp.coherency, VersionedCoherency) and len(cached.pages) == 2
        await cc.unregister()
        assert await dp.read(cached, fd, 0, PAGE) == data[:PAGE]
        assert isinstance(dp.coherency, UnjoinedNode) and not cached.pages
    finally:
        os.close(fd)


async def test_two_nodes_see_each_others_writes_through_the_versions(tmp_path: Path,
                                                                     cluster: ClusterBackend) -> None:
    """The versioned rules without a mount: B's write bumps the version, so A drops its
    pages at its next read (a remote change) and never serves the old bytes."""
    store = tmp_path / "store"
    other = ClusterBackend(1 << 22, cc_dir=str(store))
    try:
        a, b = await node_over(tmp_path, cluster), await node_over(tmp_path, other)
        fd, data = src_file(tmp_path)
        try:
            at_a, _ = await a.open_file(b"f", fd)
            at_b, _ = await b.open_file(b"f", fd)
            assert await a.read(at_a, fd, 0, PAGE) == data[:PAGE] and at_a.pages
            await b.write(at_b, fd, 100, b"from b")
            assert bytes(await a.read(at_a, fd, 100, 6)) == b"from b"
            assert a.coherence.remote_changes == 1
        finally:
            os.close(fd)
    finally:
        await other.close()
