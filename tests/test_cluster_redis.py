"""Cluster nodes over a real Redis (started and stopped by the suite): sharing, coherency,
a store that is down or dies, credentials, Redis Cluster."""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable
from pathlib import Path

from tests.conftest import Mount, MountFactory
from tests.redisservers import RedisServer, redis_cluster, redis_server
from tests.test_cluster import PAGE, mount_nodes, pattern, read_all, run_checker
from tests.test_redisstore import commands_run

SECRET = "s3cret-pa55word"


def redis_options(url: str, extra: str = "") -> str:
    options = f"cleancache=cluster,cache_size=1M,cc_size=64M,cc_timeout=0.5,cc_store={url}"
    return f"{options},{extra}" if extra else options


def redis_nodes(mount_factory: MountFactory, url: str, count: int, extra: str = "",
                env: dict[str, str] | None = None) -> contextlib.AbstractContextManager[list[Mount]]:
    return mount_nodes(mount_factory, redis_options(url, extra), count, env)


def wait_for(check: Callable[[], bool], seconds: float = 10.0) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.2)
    return check()


def store_state(m: Mount) -> object:
    return m.stats()["backend.cluster.store.state"]


def test_second_node_reads_from_redis_and_sees_writes(mount_factory: MountFactory, tmp_path: Path, src: Path) -> None:
    data = pattern(21, 256)
    (src / "f").write_bytes(data)
    with redis_server(tmp_path) as server, redis_nodes(mount_factory, server.unix_url, 2) as (a, b):
        assert read_all(a.mnt / "f") == data
        a.control("drop_caches")
        assert read_all(b.mnt / "f") == data
        s = b.stats()
        assert s["backend.cluster.hits_from_others"] >= 256 - 8
        assert s["backing.read_bytes"] <= 8 * PAGE
        with open(b.mnt / "f", "rb") as held:
            for round_ in range(5):
                new = round_.to_bytes(4, "little") * (PAGE // 4)
                with open(a.mnt / "f", "r+b") as f:
                    os.pwrite(f.fileno(), new, 3 * PAGE)
                assert os.pread(held.fileno(), PAGE, 3 * PAGE) == new
        b.control("drop_caches")  # B's pages of older versions never come back
        expected = bytearray(data)
        expected[3 * PAGE : 4 * PAGE] = (4).to_bytes(4, "little") * (PAGE // 4)
        assert read_all(a.mnt / "f") == bytes(expected)


def test_a_node_asks_redis_once_per_run_of_pages(mount_factory: MountFactory, tmp_path: Path, src: Path) -> None:
    """A node fills a run of missing pages with one HMGET and puts what one eviction takes of a
    file back in one script: Redis sees a few commands per read of 128 KiB, not a get and a
    put per page."""
    pages = 512  # twice the page cache
    data = pattern(40, pages)
    (src / "f").write_bytes(data)
    with redis_server(tmp_path) as server, redis_nodes(mount_factory, server.url, 1) as (a,):
        server.cli("config", "resetstat")
        assert read_all(a.mnt / "f") == data  # cold: from SRC; what it evicts goes to the pool
        a.control("drop_caches")  # and the rest
        assert a.stats()["backend.cluster.puts"] >= pages - 16
        assert commands_run(server, "hget", "hmget", "evalsha", "eval") <= pages // 4
        a.control("drop_caches")
        assert read_all(a.mnt / "f") == data  # warm: from the pool


def test_store_down_at_mount_then_up(mount_factory: MountFactory, tmp_path: Path, src: Path) -> None:
    """Lazy init: the mount works on misses and joins when the store comes up."""
    data = pattern(22, 64)
    (src / "f").write_bytes(data)
    server = RedisServer(tmp_path / "redis")
    try:
        with redis_nodes(mount_factory, server.url, 2) as (a, b):
            assert store_state(a) == "down"
            assert read_all(a.mnt / "f") == data  # served from SRC, never an error
            assert a.stats()["backing.uncached_reads"] > 0
            server.start()
            assert wait_for(lambda: store_state(a) == "up" and store_state(b) == "up")
            read_all(a.mnt / "f")
            a.control("drop_caches")
            assert read_all(b.mnt / "f") == data
            assert b.stats()["backend.cluster.hits_from_others"] >= 64 - 8
    finally:
        server.stop()
        server.cleanup()


def test_store_dies_mid_run_and_recovers(mount_factory: MountFactory, tmp_path: Path, src: Path) -> None:
    data = pattern(23, 64)
    (src / "f").write_bytes(data)
    with redis_server(tmp_path) as server, redis_nodes(mount_factory, server.url, 2) as (a, b):
        read_all(b.mnt / "f")
        server.stop()
        new = pattern(24, 64)
        with open(a.mnt / "f", "r+b") as f:  # the write lands; the bump is owed to the store
            f.write(new)
        assert read_all(b.mnt / "f") == new
        assert read_all(a.mnt / "f") == new
        assert wait_for(lambda: store_state(b) == "down")
        server.start()
        assert wait_for(lambda: store_state(a) == "up" and store_state(b) == "up")
        assert read_all(b.mnt / "f") == new
        assert b.stats()["pagecache.cut_offs"] >= 1  # B dropped its caches before serving again
        read_all(b.mnt / "f")
        b.control("drop_caches")
        assert read_all(a.mnt / "f") == new


def test_password_from_a_file_never_shows(mount_factory: MountFactory, tmp_path: Path, src: Path) -> None:
    (src / "f").write_bytes(pattern(25, 16))
    secret_file = tmp_path / "redis.pw"
    secret_file.write_text(SECRET + "\n")
    secret_file.chmod(0o600)
    with redis_server(tmp_path, password=SECRET) as server, \
            redis_nodes(mount_factory, server.url, 1, f"cc_store_password_file={secret_file}") as (a,):
        assert store_state(a) == "up"
        read_all(a.mnt / "f")
        a.control("drop_caches")
        assert a.stats()["backend.cluster.store.puts"] >= 16
        assert SECRET not in (a.mnt / ".tmemfs" / "stats").read_text()
    assert SECRET not in a.log.read_text()


def test_password_in_the_url_is_not_in_ps(mount_factory: MountFactory, tmp_path: Path, src: Path) -> None:
    (src / "f").write_bytes(pattern(26, 16))
    with redis_server(tmp_path, password=SECRET) as server:
        url = server.url.replace("redis://", f"redis://:{SECRET}@")
        with redis_nodes(mount_factory, url, 1) as (a,):
            assert store_state(a) == "up"
            cmdline = Path(f"/proc/{a.proc.pid}/cmdline").read_bytes()
            assert b"cc_store=redis://" in cmdline and SECRET.encode() not in cmdline
            assert SECRET not in (a.mnt / ".tmemfs" / "stats").read_text()
        assert SECRET not in a.log.read_text()


def test_wrong_password_degrades_to_misses(mount_factory: MountFactory, tmp_path: Path, src: Path) -> None:
    data = pattern(27, 16)
    (src / "f").write_bytes(data)
    with redis_server(tmp_path, password=SECRET) as server, \
            redis_nodes(mount_factory, server.url, 1, env={"TMEMFS_REDIS_PASSWORD": "not-the-Pa55"}) as (a,):
        assert read_all(a.mnt / "f") == data
        assert store_state(a) == "down"
        assert "not-the-Pa55" not in (a.mnt / ".tmemfs" / "stats").read_text()


def test_redis_cluster_nodes_share(mount_factory: MountFactory, tmp_path: Path, src: Path) -> None:
    files = {f"f{n}": pattern(30 + n, 32) for n in range(6)}  # several files: several slots
    for name, data in files.items():
        (src / name).write_bytes(data)
    with redis_cluster(tmp_path) as cluster, redis_nodes(mount_factory, cluster.url, 2) as (a, b):
        assert a.stats()["backend.cluster.store.cluster"] == 1
        for name in files:
            read_all(a.mnt / name)
        a.control("drop_caches")
        for name, data in files.items():
            assert read_all(b.mnt / name) == data
        assert b.stats()["backend.cluster.hits_from_others"] >= 6 * 32 - 16
        with open(a.mnt / "f0", "r+b") as f:
            f.write(b"z" * PAGE)
        assert read_all(b.mnt / "f0")[:PAGE] == b"z" * PAGE



def test_randomized_checker_on_redis_nodes(tmp_path: Path, src: Path) -> None:
    with redis_server(tmp_path) as server:
        summary = run_checker(src, redis_options(server.unix_url), nodes=2, ops=800)
    assert summary["violations"] == 0 and summary["reads_checked"] > 100


def test_randomized_checker_on_redis_nodes_with_a_slow_join(tmp_path: Path, src: Path) -> None:
    """The second node reaches Redis through a proxy that answers nothing for a second."""
    with redis_server(tmp_path) as server:
        summary = run_checker(src, redis_options(server.url), 2, 800, "--slow-join", "1")
    assert summary["violations"] == 0 and summary["reads_checked"] > 100
