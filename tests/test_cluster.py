"""Several mounts of one SRC as cluster nodes (lmdb store): sharing, coherency, the historical bugs.

Each scenario names the hazard it closes (docs/coherency.md). Nodes are
real tmemfs processes over one SRC; their pools live in a per-test
directory (cc_dir=) so nothing is left in /dev/shm.
"""

from __future__ import annotations

import contextlib
import errno
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import pytest

from fusefs.pooluuid import TEST_BUG_ENV, XATTR
from tests.conftest import Mount, MountFactory, Stats

MiB = 1 << 20
PAGE = 4096
FILE_PAGES = 1024  # 4 MiB, four times the page cache below


def node_options(tmp_path: Path, extra: str = "") -> str:
    store = tmp_path / "pools"
    store.mkdir(exist_ok=True)
    options = f"cleancache=cluster,cache_size=1M,cc_size=64M,cc_dir={store}"
    return f"{options},{extra}" if extra else options


@contextmanager
def mount_nodes(mount_factory: MountFactory, options: str, count: int,
                env: dict[str, str] | None = None) -> Iterator[list[Mount]]:
    """`count` mounts of the test's SRC with the same options, all unmounted at the end."""
    with ExitStack() as stack:
        yield [stack.enter_context(mount_factory(options, env=env))
               for _ in range(count)]


def nodes(mount_factory: MountFactory, tmp_path: Path, count: int, extra: str = "",
          env: dict[str, str] | None = None) -> contextlib.AbstractContextManager[list[Mount]]:
    return mount_nodes(mount_factory, node_options(tmp_path, extra), count, env)


def backend(m: Mount, name: str) -> Any:
    return m.stats()[f"backend.cluster.{name}"]


def pattern(seed: int, pages: int = FILE_PAGES) -> bytes:
    """Pages that identify themselves: seed and page number in every 8 bytes."""
    return b"".join(((seed << 32) | n).to_bytes(8, "little") * (PAGE // 8) for n in range(pages))


def read_all(path: Path) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def test_second_node_reads_from_the_pool(mount_factory: MountFactory, tmp_path: Path, src: Path) -> None:
    data = pattern(1)
    (src / "f").write_bytes(data)
    with nodes(mount_factory, tmp_path, 2) as (a, b):
        assert read_all(a.mnt / "f") == data
        a.control("drop_caches")  # every page A cached is now put into the pool
        before = b.stats()["backing.read_bytes"]
        assert read_all(b.mnt / "f") == data
        s = b.stats()
        assert s["backing.read_bytes"] - before <= 8 * PAGE  # near zero: the pool served B
        assert s["backend.cluster.hits_from_others"] >= FILE_PAGES - 8
        assert s["backend.cluster.pool_uuid"] == backend(a, "pool_uuid")
        assert a.stats()["backend.cluster.succ_gets"] == 0  # A's own reads came from SRC


def test_a_scan_is_served_around_the_page_cache_and_stays_coherent(mount_factory: MountFactory, tmp_path: Path,
                                                                   src: Path) -> None:
    """Sequential bypass: once a read in order has gone past half the page cache, runs
    the pool holds are served from it without being installed (the page cache keeps
    what it had, the pool keeps the pages), and another node's write is still seen by
    the next read."""
    data = pattern(2)
    (src / "f").write_bytes(data)
    with nodes(mount_factory, tmp_path, 2) as (a, b):
        assert read_all(a.mnt / "f") == data
        a.control("drop_caches")
        assert read_all(b.mnt / "f") == data
        s = b.stats()
        assert s["pagecache.bypassed"] >= FILE_PAGES // 2, s  # the cache holds 256 pages
        assert s["pagecache.pages"] <= 256 and s["backing.read_bytes"] <= 8 * PAGE
        assert read_all(b.mnt / "f") == data  # the pool still has every page
        assert b.stats()["backing.read_bytes"] <= 8 * PAGE
        with open(a.mnt / "f", "r+b") as f:
            f.seek(900 * PAGE)
            f.write(b"X" * PAGE)
        assert read_all(b.mnt / "f") == data[: 900 * PAGE] + b"X" * PAGE + data[901 * PAGE :]


def test_three_nodes_share_and_list_members(mount_factory: MountFactory, tmp_path: Path, src: Path) -> None:
    data = pattern(2)
    (src / "f").write_bytes(data)
    with nodes(mount_factory, tmp_path, 3) as (a, b, c):
        read_all(a.mnt / "f")
        a.control("drop_caches")
        assert read_all(b.mnt / "f") == data
        assert read_all(c.mnt / "f") == data
        assert backend(c, "hits_from_others") >= FILE_PAGES - 8

        def member_puts(s: Stats) -> int:
            return sum(int(v) for k, v in s.items()
                       if k.startswith("backend.cluster.member.") and k.endswith(".puts"))

        deadline = time.monotonic() + 6
        s = c.stats()
        while (s["backend.cluster.members_alive"] != 3 or member_puts(s) < FILE_PAGES - 8) \
                and time.monotonic() < deadline:
            time.sleep(0.2)  # members and their counters travel with each node's heartbeat
            s = c.stats()
        assert s["backend.cluster.members_alive"] == 3
        names = [v for k, v in s.items() if k.startswith("backend.cluster.member.") and k.endswith(".name")]
        assert len(names) == 3
        assert member_puts(s) >= FILE_PAGES - 8


def test_write_on_one_node_is_seen_by_the_next_read_on_another(mount_factory: MountFactory, tmp_path: Path,
                                                               src: Path) -> None:
    """Hazard: B's page cache keeps the page A just overwrote."""
    (src / "f").write_bytes(pattern(3, 16))
    with nodes(mount_factory, tmp_path, 2) as (a, b):
        assert read_all(b.mnt / "f") == pattern(3, 16)  # B caches every page
        with open(b.mnt / "f", "rb") as held:  # and keeps the file open, as a reader would
            for round_ in range(20):
                new = round_.to_bytes(4, "little") * (PAGE // 4)
                with open(a.mnt / "f", "r+b") as f:
                    os.pwrite(f.fileno(), new, 5 * PAGE)
                assert os.pread(held.fileno(), PAGE, 5 * PAGE) == new
        assert b.stats()["pagecache.remote_changes"] >= 19


def test_stale_put_after_invalidate_is_never_served(mount_factory: MountFactory, tmp_path: Path, src: Path) -> None:
    """Hazard: a node puts a page it read before another node's write."""
    old = pattern(4, 64)
    (src / "f").write_bytes(old)
    with nodes(mount_factory, tmp_path, 3) as (a, b, c):
        assert read_all(b.mnt / "f") == old  # B holds version-1 pages
        new = pattern(5, 64)
        with open(a.mnt / "f", "r+b") as f:
            f.write(new)
        b.control("drop_caches")  # B now puts its stale pages into the pool
        assert read_all(c.mnt / "f") == new  # C never gets them
        assert read_all(b.mnt / "f") == new


def test_size_changes_are_seen_at_once(mount_factory: MountFactory, tmp_path: Path, src: Path) -> None:
    """Hazard: the other kernel's attribute cache (cluster nodes default to 0 s timeouts)."""
    (src / "f").write_bytes(pattern(6, 4))
    with nodes(mount_factory, tmp_path, 2) as (a, b):
        assert (b.mnt / "f").stat().st_size == 4 * PAGE
        read_all(b.mnt / "f")
        with open(a.mnt / "f", "ab") as f:
            f.write(b"x" * 100)
        assert (b.mnt / "f").stat().st_size == 4 * PAGE + 100
        assert read_all(b.mnt / "f")[-100:] == b"x" * 100
        os.truncate(a.mnt / "f", PAGE + 7)
        assert (b.mnt / "f").stat().st_size == PAGE + 7
        assert read_all(b.mnt / "f") == pattern(6, 2)[: PAGE + 7]


def test_replace_by_rename_and_by_recreate(mount_factory: MountFactory, tmp_path: Path, src: Path) -> None:
    (src / "f").write_bytes(pattern(7, 8))
    with nodes(mount_factory, tmp_path, 2) as (a, b):
        assert read_all(b.mnt / "f") == pattern(7, 8)
        (a.mnt / "g").write_bytes(pattern(8, 8))
        os.rename(a.mnt / "g", a.mnt / "f")
        assert read_all(b.mnt / "f") == pattern(8, 8)
        os.unlink(a.mnt / "f")
        (a.mnt / "f").write_bytes(pattern(9, 3))
        assert read_all(b.mnt / "f") == pattern(9, 3)
        os.unlink(a.mnt / "f")
        with pytest.raises(FileNotFoundError):
            (b.mnt / "f").stat()


def test_delete_from_a_node_that_cached_nothing_flushes_the_pool(mount_factory: MountFactory, tmp_path: Path,
                                                                 src: Path) -> None:
    """CVE-2018-16862: deleting must flush the file in the pool even where nothing is cached,
    so a new file reusing the inode number never reads the old pages."""
    old = pattern(10, 64)
    (src / "f").write_bytes(old)
    with nodes(mount_factory, tmp_path, 2) as (a, b):
        read_all(b.mnt / "f")
        b.control("drop_caches")
        stored = b.stats()["backend.cluster.store.stored_pages"]
        assert stored >= 64
        os.unlink(a.mnt / "f")  # A never opened f
        assert a.stats()["backend.cluster.store.stored_pages"] <= stored - 64
        # A new file under the old name (ext4 often gives it the old inode number; the
        # file key tmemfs uses also carries the inode generation, the pool flush is what
        # this test is about): B must read the new bytes, never a page of the old file.
        new = pattern(11, 64)
        (a.mnt / "f").write_bytes(new)
        assert read_all(b.mnt / "f") == new
        assert b.stats()["backend.cluster.hits_from_others"] == 0


def test_pool_uuid_is_kept_on_src_and_hidden_from_the_mount(mount_factory: MountFactory, tmp_path: Path,
                                                            src: Path) -> None:
    with nodes(mount_factory, tmp_path, 1) as (a,):
        kept = os.getxattr(src, XATTR).decode()
        assert len(kept) == 32 and backend(a, "pool_uuid") == kept
        assert XATTR not in os.listxattr(a.mnt)
        with pytest.raises(OSError) as exc:
            os.removexattr(a.mnt, XATTR)
        assert exc.value.errno == errno.EPERM
    with nodes(mount_factory, tmp_path, 1) as (a,):
        assert backend(a, "pool_uuid") == kept  # the next mount finds the same pool


def test_given_pool_uuid_and_the_private_uuid(mount_factory: MountFactory, tmp_path: Path, src: Path) -> None:
    (src / "f").write_bytes(pattern(12, 64))
    given = "0f1e2d3c4b5a69788796a5b4c3d2e1f0"
    with nodes(mount_factory, tmp_path, 1, f"pool_uuid={given}") as (a,):
        assert backend(a, "pool_uuid") == given
    with nodes(mount_factory, tmp_path, 2, "pool_uuid=" + "f" * 32) as (a, b):
        assert backend(a, "private") == 1 and backend(a, "pool_uuid") != backend(b, "pool_uuid")
        read_all(a.mnt / "f")
        a.control("drop_caches")
        read_all(b.mnt / "f")
        assert backend(b, "hits_from_others") == 0


def test_ocfs2_4byte_uuid_bug_splits_the_pool(mount_factory: MountFactory, tmp_path: Path, src: Path) -> None:
    """The 2011 ocfs2 hook bug: 12 bytes of garbage in the uuid give each node its own pool.
    The real path (test_second_node_reads_from_the_pool) shares."""
    data = pattern(13, 256)
    (src / "f").write_bytes(data)
    with nodes(mount_factory, tmp_path, 2, env={TEST_BUG_ENV: "1"}) as (a, b):
        assert backend(a, "pool_uuid")[:8] == backend(b, "pool_uuid")[:8]
        assert backend(a, "pool_uuid") != backend(b, "pool_uuid")
        read_all(a.mnt / "f")
        a.control("drop_caches")
        assert read_all(b.mnt / "f") == data
        assert backend(b, "hits_from_others") == 0
        assert b.stats()["backing.read_bytes"] >= len(data)


def test_cluster_refuses_kernel_cache(tmp_path: Path, src: Path) -> None:
    mnt = tmp_path / "m"
    mnt.mkdir()
    done = subprocess.run([sys.executable, "-m", "fusefs.cli", str(src), str(mnt), "-o",
                           "cleancache=cluster,kernel_cache"], capture_output=True, text=True)
    assert done.returncode == 2
    assert "kernel_cache" in done.stderr and len(done.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize("bad", ["abc", "0" * 31, "0" * 33, "g" * 32])
def test_malformed_pool_uuid_is_refused(tmp_path: Path, src: Path, bad: str) -> None:
    mnt = tmp_path / "m"
    mnt.mkdir()
    done = subprocess.run([sys.executable, "-m", "fusefs.cli", str(src), str(mnt), "-o",
                           f"cleancache=cluster,pool_uuid={bad}"], capture_output=True, text=True)
    assert done.returncode == 2
    assert "pool_uuid" in done.stderr


def test_chain_with_a_local_tier_stays_coherent(mount_factory: MountFactory, tmp_path: Path, src: Path) -> None:
    """zcache+cluster (RAMster-like): B's private zcache tier must not serve what A changed."""
    (src / "f").write_bytes(pattern(14, 64))
    with ExitStack() as stack:
        a, b = (stack.enter_context(mount_factory(
            node_options(tmp_path).replace("cleancache=cluster", "cleancache=zcache+cluster")))
            for _ in range(2))
        read_all(b.mnt / "f")
        b.control("drop_caches")  # into B's zcache tier
        new = pattern(15, 64)
        with open(a.mnt / "f", "r+b") as f:
            f.write(new)
        assert read_all(b.mnt / "f") == new


def write_loop(path: Path, seconds: float) -> int:
    """4 KiB writes for `seconds`; returns how many completed."""
    done = 0
    deadline = time.monotonic() + seconds
    with open(path, "r+b") as f:
        while time.monotonic() < deadline:
            os.pwrite(f.fileno(), done.to_bytes(8, "little") * (PAGE // 8), (done % 64) * PAGE)
            done += 1
    return done


def test_a_stopped_node_blocks_nobody_and_drops_its_cache(mount_factory: MountFactory, tmp_path: Path,
                                                          src: Path) -> None:
    (src / "f").write_bytes(pattern(16, 64))
    with nodes(mount_factory, tmp_path, 2, "node_timeout=1") as (a, b):
        read_all(b.mnt / "f")
        b.control("drop_caches")
        read_all(b.mnt / "f")
        os.kill(b.proc.pid, signal.SIGSTOP)
        try:
            writes = write_loop(a.mnt / "f", 2.0)  # would hang if A waited for B
            assert writes > 50
            assert read_all(a.mnt / "f") == read_all(src / "f")
        finally:
            os.kill(b.proc.pid, signal.SIGCONT)
        assert read_all(b.mnt / "f") == read_all(src / "f")
        s = b.stats()
        assert s["pagecache.cut_offs"] >= 1 and s["backend.cluster.cut_offs"] >= 1


def test_a_killed_node_blocks_nobody(mount_factory: MountFactory, tmp_path: Path, src: Path) -> None:
    (src / "f").write_bytes(pattern(17, 64))
    with nodes(mount_factory, tmp_path, 2, "node_timeout=1") as (a, b):
        read_all(b.mnt / "f")
        b.kill()
        writes = write_loop(a.mnt / "f", 1.0)
        assert writes > 50
        assert read_all(a.mnt / "f") == read_all(src / "f")
        with nodes(mount_factory, tmp_path, 1) as (c,):  # a new node joins over the dead one's slot
            assert read_all(c.mnt / "f") == read_all(src / "f")
            deadline = time.monotonic() + 5
            while time.monotonic() < deadline and backend(c, "members_alive") != 2:
                time.sleep(0.2)
            assert backend(c, "members_alive") == 2


def test_a_node_without_its_pool_caches_nothing(mount_factory: MountFactory, tmp_path: Path, src: Path) -> None:
    """A cluster node whose pool cannot be made must not fall back to a private cache:
    it would never hear of the other nodes' writes."""
    (src / "f").write_bytes(pattern(18, 16))
    with ExitStack() as stack:
        # /proc: a directory no pool can be made in
        lost = stack.enter_context(mount_factory(
            node_options(tmp_path).replace(f"cc_dir={tmp_path / 'pools'}", "cc_dir=/proc")))
        lost.faults_expected = True  # the failed pool is logged with its traceback
        (other,) = (stack.enter_context(mount_factory(node_options(tmp_path))),)
        assert lost.stats()["cleancache.placeholder_pools"] == 1
        assert read_all(lost.mnt / "f") == pattern(18, 16)
        with open(lost.mnt / "f", "rb") as held:
            os.pread(held.fileno(), PAGE, 0)
            with open(other.mnt / "f", "r+b") as f:
                f.write(b"n" * PAGE)
            assert os.pread(held.fileno(), PAGE, 0) == b"n" * PAGE
        s = lost.stats()
        assert s["backing.uncached_reads"] >= 3 and s["pagecache.pages"] == 0


def run_checker(src: Path, options: str, nodes: int, ops: int, *extra: str) -> dict[str, Any]:
    """tools/coherency.py against `nodes` fresh mounts of `src` (it mounts and unmounts them)."""
    import json

    done = subprocess.run([sys.executable, "-m", "tools.coherency", "--mount", str(src), "--nodes", str(nodes),
                           "--options", options, "--ops", str(ops), "--json", "--timeout", "240", *extra],
                          capture_output=True, text=True, timeout=300)
    summary: dict[str, Any] = json.loads(done.stdout)  # the checker's --json summary
    assert done.returncode == 0, (summary, done.stderr[-2000:])
    return summary


def test_randomized_checker_finds_no_stale_read_across_three_nodes(tmp_path: Path, src: Path) -> None:
    """The default mix (appends from every node and writes behind the mounts' back among
    them), the third node kept out of the pool for its first second."""
    summary = run_checker(src, node_options(tmp_path), 3, 4000, "--slow-join", "1")
    assert summary["violations"] == 0 and summary["reads_checked"] > 1000
    assert summary["ops"] >= 4000
    kinds = summary["ops_by_kind"]
    assert kinds["append"] > 20 and kinds["src_write"] > 20


def test_tmemctl_shows_the_pool_and_its_members(mount_factory: MountFactory, tmp_path: Path, src: Path) -> None:
    (src / "f").write_bytes(pattern(19, 64))
    with nodes(mount_factory, tmp_path, 2) as (a, b):
        read_all(a.mnt / "f")
        a.control("drop_caches")
        read_all(b.mnt / "f")
        uuid = backend(b, "pool_uuid")
        deadline = time.monotonic() + 5
        while backend(b, "members_alive") != 2 and time.monotonic() < deadline:
            time.sleep(0.2)
        shown = subprocess.run([sys.executable, "-m", "fusefs.tmemctl", "stats", str(b.mnt)],
                               capture_output=True, text=True, check=True).stdout
        assert f"cluster pool           {uuid} (shared)" in shown
        assert "hits from other nodes  64 of 64 pool gets; 2 member(s) alive" in shown
        member_rows = [line for line in shown.splitlines() if line.strip().endswith(("0", "64")) and " yes " in line]
        assert len(member_rows) == 2


def test_a_writers_pages_go_back_to_the_pool_under_the_new_version(mount_factory: MountFactory, tmp_path: Path,
                                                                   src: Path) -> None:
    """The writer's cached pages survive its write (retagged); the pool's copies of the old
    version went with the flush, so evicting them must put them again."""
    (src / "f").write_bytes(pattern(20, 64))
    with nodes(mount_factory, tmp_path, 3) as (a, b, c):
        read_all(b.mnt / "f")
        b.control("drop_caches")
        assert read_all(a.mnt / "f") == pattern(20, 64)  # A's pages all came from the pool
        with open(a.mnt / "f", "r+b") as f:
            os.pwrite(f.fileno(), b"w" * PAGE, 0)
        a.control("drop_caches")
        expected = b"w" * PAGE + pattern(20, 64)[PAGE:]
        assert read_all(c.mnt / "f") == expected
        assert backend(c, "hits_from_others") >= 63
