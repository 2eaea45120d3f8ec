"""RedisStore against real redis-server processes (tests/redisservers.py)."""

from __future__ import annotations

import logging
import re
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import trio

from backends.cluster import ClusterBackend
from backends.redisstore import PUT_PAGES, RedisStore, redacted_url
from backends.resp import RespError, encode, parse
from backends.store import StoreUnavailable, versioned_key
from tests.redisservers import RedisServer, redis_cluster, redis_server
from tests.unithelpers import counts
from tools.stallingproxy import StallingProxy

UUID = bytes(range(16))
PASSWORD = "s3cret-Pa55-word-7f"
PAGE = 4096
DELAY = 0.2  # what the slow link of the tests below adds to every reply


def page(fill: int) -> memoryview:
    return memoryview(bytes([fill % 256]) * PAGE)


def buf() -> memoryview:
    return memoryview(bytearray(PAGE))


def vkey(file: bytes, uuid: bytes = UUID) -> str:
    return f"tmemfs:v:{{{uuid.hex()}:{file.hex()}}}"


def pkey(file: bytes, uuid: bytes = UUID) -> str:
    return f"tmemfs:p:{{{uuid.hex()}:{file.hex()}}}"


def store(url: str, **kwargs: object) -> RedisStore:
    options: dict[str, object] = {"node_timeout": 5.0, "retry_interval": 0.2, **kwargs}
    return RedisStore(uuid=options.pop("uuid", UUID), url=url, **options)  # type: ignore[arg-type]


def commands_run(srv: RedisServer, *names: str) -> int:
    """How many times the server ran these commands since its last CONFIG RESETSTAT: the
    round trips as the server saw them (INFO commandstats), whatever the client counted."""
    calls = {}
    for line in srv.cli("info", "commandstats").splitlines():
        if line.startswith("cmdstat_"):
            name, _, fields = line.removeprefix("cmdstat_").partition(":")
            calls[name] = int(fields.split(",")[0].removeprefix("calls="))
    return sum(calls.get(name, 0) for name in names)


@contextmanager
def slow_link(srv: RedisServer) -> Iterator[str]:
    """A URL of `srv` behind a link that delays every reply by DELAY (requests go at once)."""
    with StallingProxy(srv.port, delay=DELAY) as proxy:
        proxy.release()
        yield proxy.url


async def wait_up(s: RedisStore, seconds: float) -> float:
    """Seconds until `s` is up again (fails the test after `seconds`)."""
    start = trio.current_time()
    with trio.fail_after(seconds):
        while not s.up:
            await trio.sleep(0.02)
    return trio.current_time() - start


@pytest.fixture
def srv(tmp_path: Path) -> Iterator[RedisServer]:
    with redis_server(tmp_path) as server:
        yield server


@pytest.fixture(autouse=True)
def no_env_credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TMEMFS_REDIS_PASSWORD", raising=False)
    monkeypatch.delenv("TMEMFS_REDIS_USERNAME", raising=False)


def test_redacted_url() -> None:
    assert redacted_url("redis://u:p%40ss@h:6379/2") == "redis://***@h:6379/2"
    assert redacted_url("rediss://:pw@h/0") == "rediss://***@h/0"
    assert redacted_url("redis://h:1/0?password=pw&db=1") == "redis://h:1/0?password=***&db=1"
    assert redacted_url("unix:///run/redis.sock?db=3") == "unix:///run/redis.sock?db=3"
    assert "pw" not in str(RedisStore(UUID, "redis://:pw@h:1/0").stats()["url"])
    with pytest.raises(ValueError, match="redis URL"):
        RedisStore(UUID, "http://user:pw@h/")
    with pytest.raises(ValueError):
        RedisStore(b"short", "redis://h/0")


async def test_put_get_round_trip_and_putter(srv: RedisServer) -> None:
    a, b = store(srv.url), store(srv.url)
    try:
        na, nb = await a.join("h1:1:/a"), await b.join("h2:2:/b")
        assert na >= 1 and nb >= 1 and na != nb
        assert a.up and a.stats()["state"] == "up"
        f = b"\x07file-handle"
        tag = await a.version(f)
        assert await a.put(f, tag, 5, page(5))
        out = buf()
        assert await a.get(f, tag, 5, out) == na
        assert bytes(out) == bytes(page(5))
        out2 = buf()
        assert await b.get(f, tag, 5, out2) == na  # b reads what a put
        assert bytes(out2) == bytes(page(5))
        assert await b.get(f, tag, 6, buf()) is None  # never put
        assert await b.get(f, tag + 1, 5, buf()) is None  # another version
        assert await b.get(b"other", tag, 5, buf()) is None
        assert a.stats()["hits"] == 1 and a.stats()["hits_from_others"] == 0
        assert b.stats()["hits"] == 1 and b.stats()["hits_from_others"] == 1
        assert a.stats()["puts"] == 1
        # a put over an existing page replaces it
        assert await b.put(f, tag, 5, page(9))
        assert await a.get(f, tag, 5, out) == nb and bytes(out) == bytes(page(9))
    finally:
        await a.leave()
        await b.leave()


async def test_a_page_read_against_another_src_stamp_never_matches(srv: RedisServer) -> None:
    """Same version, SRC written behind the cluster's back in between: a page stored under
    the old stamp is no page for a reader who saw the new one (the newest put holds the field)."""
    s = store(srv.url)
    try:
        await s.join("n")
        f = b"f-stamps"
        tag = await s.version(f)
        assert await s.put(f, tag, 0, page(1), stamp=111)
        out = buf()
        assert await s.get(f, tag, 0, out, stamp=111) is not None and bytes(out) == bytes(page(1))
        assert await s.get(f, tag, 0, buf(), stamp=222) is None
        assert await s.put(f, tag, 0, page(2), stamp=222)
        assert await s.get(f, tag, 0, buf(), stamp=111) is None
        assert await s.get(f, tag, 0, out, stamp=222) is not None and bytes(out) == bytes(page(2))
    finally:
        await s.leave()


async def test_stale_put_refused(srv: RedisServer) -> None:
    s = store(srv.url)
    await s.join("n")
    f = b"f1"
    old = await s.version(f)
    new = await s.bump(f)
    assert new == old + 1
    assert not await s.put(f, old, 0, page(1))
    assert s.stats()["stale_puts_refused"] == 1
    assert await s.get(f, old, 0, buf()) is None
    assert not await s.put(f, new + 1, 0, page(1))  # a version that does not exist yet
    assert s.stats()["stale_puts_refused"] == 2
    assert await s.put(f, new, 0, page(2))
    # a page of the old version present in the hash still never matches a get for the new one
    assert await s.get(f, new, 0, buf()) is not None
    await s.bump(f)
    assert await s.get(f, new, 0, buf()) is None
    assert srv.cli("exists", pkey(f)).strip() == "0"  # bump dropped the hash of the old version
    await s.leave()


async def test_versions_grow_and_are_shared(srv: RedisServer) -> None:
    a, b = store(srv.url), store(srv.url)
    await a.join("a")
    await b.join("b")
    f = b"shared-file"
    v0 = await a.version(f)
    assert v0 > 10**15  # created from the server clock in microseconds
    assert await b.version(f) == v0
    assert await a.version(f) == v0  # reading does not change it
    v1 = await b.bump(f)
    assert v1 > v0 and await a.version(f) == v1
    v2 = await a.bump(f)
    assert v2 > v1 and await b.version(f) == v2
    g0 = await b.bump(b"never-seen")  # bump of a missing version creates then advances it
    assert g0 > 10**15 and await a.version(b"never-seen") == g0
    await a.leave()
    await b.leave()


async def test_evicted_version_comes_back_larger(srv: RedisServer) -> None:
    s = store(srv.url)
    await s.join("n")
    f = b"evict-me"
    v = await s.version(f)
    for _ in range(5):
        v = await s.bump(f)
    assert await s.put(f, v, 1, page(1))
    assert srv.cli("del", vkey(f)).strip() == "1"  # what maxmemory eviction does
    again = await s.version(f)
    assert again > v and again > 10**15
    assert await s.get(f, v, 1, buf()) is None
    assert not await s.put(f, v, 1, page(1))
    assert srv.cli("exists", pkey(f)).strip() == "0"  # pages of the lost version went with it
    # the same through bump
    assert await s.put(f, again, 1, page(1))
    srv.cli("del", vkey(f))
    bumped = await s.bump(f)
    assert bumped > again + 1
    assert await s.get(f, again, 1, buf()) is None
    await s.leave()


def commandstats(srv: RedisServer) -> dict[str, int]:
    stats = {}
    for line in srv.cli("info", "commandstats").splitlines():
        m = re.match(r"cmdstat_([\w|]+):calls=(\d+)", line)
        if m:
            stats[m.group(1)] = int(m.group(2))
    return stats


async def test_invalidate_file(srv: RedisServer) -> None:
    s = store(srv.url)
    await s.join("n")
    f = b"big"
    v = await s.version(f)
    for i in range(300):
        assert await s.put(f, v, i, page(i))
    srv.cli("config", "resetstat")
    await s.invalidate_file(f, None)
    stats = commandstats(srv)
    stats.pop("config|resetstat", None)
    stats.pop("info", None)
    assert stats == {"unlink": 1}  # one command, no scan of the hash
    for i in (0, 150, 299):
        assert await s.get(f, v, i, buf()) is None
    # with a tag: an older tag leaves the current pages alone, the current tag drops them
    v = await s.bump(f)
    assert await s.put(f, v, 0, page(0))
    await s.invalidate_file(f, v - 1)
    assert await s.get(f, v, 0, buf()) is not None
    await s.invalidate_file(f, v)
    assert await s.get(f, v, 0, buf()) is None
    # one page
    assert await s.put(f, v, 1, page(1)) and await s.put(f, v, 2, page(2))
    await s.invalidate_page(f, v - 1, 1)  # older tag: nothing of it exists
    assert await s.get(f, v, 1, buf()) is not None
    await s.invalidate_page(f, v, 1)
    assert await s.get(f, v, 1, buf()) is None
    assert await s.get(f, v, 2, buf()) is not None
    await s.leave()


async def test_clear_drops_this_pool_only(srv: RedisServer) -> None:
    mine, other = store(srv.url), store(srv.url, uuid=b"\xff" * 16)
    await mine.join("m")
    await other.join("o")
    for s in (mine, other):
        for n in range(20):
            f = b"file%d" % n
            assert await s.put(f, await s.version(f), 0, page(n))
    v = await mine.version(b"file3")
    await mine.clear()
    keys = srv.cli("keys", "*").split()
    assert not [k for k in keys if UUID.hex() in k and k.startswith(("tmemfs:v:", "tmemfs:p:"))]
    assert f"tmemfs:m:{{{UUID.hex()}}}" in keys  # members stay
    assert await mine.get(b"file3", v, 0, buf()) is None
    assert await mine.version(b"file3") > v
    assert await other.get(b"file3", await other.version(b"file3"), 0, buf()) is not None
    await mine.leave()
    await other.leave()


async def test_members_heartbeat_leave(srv: RedisServer) -> None:
    a, b = store(srv.url, node_timeout=0.5), store(srv.url, node_timeout=0.5)
    na = await a.join("host-a:10:/mnt/a")
    nb = await b.join("host-b:20:/mnt/b")
    await a.heartbeat(3, 2, 1)
    members = {m.node: m for m in await b.members()}
    assert set(members) == {na, nb}
    assert members[na].name == "host-a:10:/mnt/a" and members[na].alive
    assert (members[na].puts, members[na].gets, members[na].hits_from_others) == (3, 2, 1)
    await trio.sleep(0.7)
    await b.heartbeat(0, 0, 0)
    members = {m.node: m for m in await b.members()}
    assert not members[na].alive and members[nb].alive
    await a.leave()
    assert [m.node for m in await b.members()] == [nb]
    assert a.node == -1 and not a.up
    await b.leave()
    # the last member gone, the pool's member keys are gone too
    assert srv.cli("keys", "tmemfs:[mn]:*").split() == []


async def test_password(tmp_path: Path, caplog: pytest.LogCaptureFixture,
                        monkeypatch: pytest.MonkeyPatch) -> None:
    caplog.set_level(logging.DEBUG)
    with redis_server(tmp_path, password=PASSWORD) as srv:
        no_pass = store(srv.url)
        with trio.fail_after(3):
            assert await no_pass.join("n") == -1
        assert not no_pass.up
        with pytest.raises(StoreUnavailable) as err:
            await no_pass.version(b"f")
        stats_without = no_pass.stats()
        assert stats_without["state"] == "down" and int(stats_without["store_errors"]) >= 1
        await no_pass.close()

        wrong = store(srv.url, password="not-it")
        assert await wrong.join("n") == -1
        await wrong.close()

        by_arg = store(srv.url, password=PASSWORD)
        assert await by_arg.join("a") >= 1 and by_arg.up
        f = b"f"
        assert await by_arg.put(f, await by_arg.version(f), 0, page(1))

        in_url = store(f"redis://:{PASSWORD}@127.0.0.1:{srv.port}/0")
        assert await in_url.join("b") >= 1
        assert await in_url.get(f, await in_url.version(f), 0, buf()) == by_arg.node
        assert in_url.stats()["url"] == f"redis://***@127.0.0.1:{srv.port}/0"

        monkeypatch.setenv("TMEMFS_REDIS_PASSWORD", PASSWORD)
        by_env = store(srv.url)
        assert await by_env.join("c") >= 1

        srv.stop()  # errors with credentials configured must not show them either
        with pytest.raises(StoreUnavailable) as err2:
            await in_url.version(f)
        for s in (by_arg, in_url, by_env):
            await s.close()
        texts = [str(err.value), str(err2.value), caplog.text]
        texts += [r.getMessage() for r in caplog.records]
        for s in (no_pass, wrong, by_arg, in_url, by_env):
            texts += [str(v) for v in s.stats().values()]
        assert any("down" in t for t in texts)
        assert not [t for t in texts if PASSWORD in t]


async def test_down_at_join_then_recovers(tmp_path: Path) -> None:
    with redis_server(tmp_path) as srv:
        srv.stop()
        s = store(srv.url, retry_interval=0.2)
        start = trio.current_time()
        assert await s.join("late") == -1
        assert trio.current_time() - start < 1.0
        assert not s.up and s.stats()["state"] == "down" and s.node == -1
        for _ in range(5):
            start = trio.current_time()
            with pytest.raises(StoreUnavailable):
                await s.get(b"f", 1, 0, buf())
            assert trio.current_time() - start < 0.05
        with pytest.raises(StoreUnavailable):
            await s.put(b"f", 1, 0, page(0))
        srv.start()
        took = await wait_up(s, 3.0)
        assert took < 1.0  # a few retry intervals
        assert s.node >= 1  # joined on reconnect
        assert s.stats()["reconnects"] == 1 and s.stats()["state"] == "up"
        f = b"f"
        v = await s.version(f)
        assert await s.put(f, v, 0, page(3)) and await s.get(f, v, 0, buf()) == s.node
        assert [m.name for m in await s.members()] == ["late"]
        await s.leave()


async def test_server_that_never_answers() -> None:
    """A port that accepts connections but never replies (a hung server): join gives up in time."""
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(16)
        s = store(f"redis://127.0.0.1:{silent.getsockname()[1]}/0", connect_timeout=0.3)
        start = trio.current_time()
        assert await s.join("n") == -1
        assert trio.current_time() - start < 1.5
        start = trio.current_time()
        with pytest.raises(StoreUnavailable):
            await s.version(b"f")
        assert trio.current_time() - start < 0.05
        await s.close()


async def test_server_stopped_mid_run_and_restarted(srv: RedisServer) -> None:
    s = store(srv.url, retry_interval=0.2)
    first = await s.join("n")
    f = b"f"
    v = await s.version(f)
    assert await s.put(f, v, 0, page(1))
    srv.stop()
    failures = 0
    for _ in range(3):
        start = trio.current_time()
        with pytest.raises(StoreUnavailable):
            await s.get(f, v, 0, buf())
        assert trio.current_time() - start < 0.7
        failures += 1
    assert not s.up and int(s.stats()["store_errors"]) >= 1
    srv.start()
    await wait_up(s, 3.0)
    assert s.node >= 1 and s.stats()["reconnects"] == 1
    assert await s.get(f, v, 0, buf()) is None  # a restarted server lost the pool (no persistence)
    v2 = await s.version(f)
    assert v2 > v  # the clock-based version is larger than the lost one
    assert await s.put(f, v2, 0, page(2)) and await s.get(f, v2, 0, buf()) == s.node
    assert [m.node for m in await s.members()] == [s.node]
    assert first >= 1
    await s.leave()


async def test_cancelled_calls_leave_the_client_usable(srv: RedisServer) -> None:
    s = store(srv.url, retry_interval=0.2)
    await s.join("n")
    f = b"f"
    v = await s.version(f)
    for i in range(20):
        assert await s.put(f, v, i, page(i))
    for i in range(20):
        with trio.move_on_after(0.00002):  # cut short after the request went out, mostly
            await s.get(f, v, i, buf())
        out = buf()
        assert await s.get(f, v, (i + 7) % 20, out) == s.node  # replies still pair with requests
        assert bytes(out) == bytes(page((i + 7) % 20))
    assert s.up and int(s.stats()["timeouts"]) >= 1
    # calls that keep timing out: the store is treated as hanging, reset, and comes back
    for _ in range(3):
        with trio.CancelScope() as scope:
            scope.cancel()
            await s.get(f, v, 0, buf())
    assert not s.up and int(s.stats()["timeouts"]) >= 3
    putter = s.node
    await wait_up(s, 3.0)
    assert s.node != putter  # joined again with a new id
    assert await s.get(f, v, 3, buf()) == putter
    await s.leave()


async def test_tiny_maxmemory_evicts_without_errors(tmp_path: Path) -> None:
    with redis_server(tmp_path, maxmemory="3mb", policy="allkeys-lru") as srv:
        s = store(srv.url)
        await s.join("n")
        tags = {}
        stored = 0
        for n in range(100):  # 100 files x 20 pages = 8 MB of pages
            f = b"file%d" % n
            tags[f] = await s.version(f)
            for i in range(20):
                stored += await s.put(f, tags[f], i, page(i))
        assert stored > 0
        hits = 0
        for f, tag in tags.items():
            for i in range(20):
                out = buf()
                if await s.get(f, tag, i, out) is not None:
                    hits += 1
                    assert bytes(out) == bytes(page(i))
        assert hits < 100 * 20 * 0.7  # most was evicted
        assert s.stats()["store_errors"] == 0 and s.up
        await s.leave()


async def test_noeviction_refuses_puts(tmp_path: Path) -> None:
    with redis_server(tmp_path, maxmemory="2mb", policy="noeviction") as srv:
        s = store(srv.url)
        await s.join("n")
        f = b"f"
        v = await s.version(f)
        results = [await s.put(f, v, i, page(i)) for i in range(1000)]
        assert results[0] and not results[-1]
        assert int(s.stats()["oom_refused"]) > 0 and s.up and s.stats()["store_errors"] == 0
        await s.leave()


async def test_unix_socket(srv: RedisServer) -> None:
    s = store(srv.unix_url)
    assert await s.join("n") >= 1
    f = b"unix"
    v = await s.version(f)
    assert await s.put(f, v, 0, page(4))
    out = buf()
    assert await s.get(f, v, 0, out) == s.node and bytes(out) == bytes(page(4))
    tcp = store(srv.url)
    await tcp.join("t")
    assert await tcp.version(f) == v  # the same server and database
    await tcp.leave()
    await s.leave()


async def test_tls(tmp_path: Path) -> None:
    with redis_server(tmp_path, tls=True, password=PASSWORD) as srv:
        s = store(srv.tls_url, password=PASSWORD)
        assert await s.join("tls") >= 1
        f = b"tls"
        v = await s.version(f)
        assert await s.put(f, v, 0, page(6))
        out = buf()
        assert await s.get(f, v, 0, out) == s.node and bytes(out) == bytes(page(6))
        await s.leave()
        # a client that does not trust the server's CA never gets up
        untrusting = store(f"rediss://127.0.0.1:{srv.tls_port}/0?ssl_cert_reqs=required", password=PASSWORD)
        assert await untrusting.join("x") == -1 and not untrusting.up
        await untrusting.close()


async def test_redis_cluster(tmp_path: Path) -> None:
    with redis_cluster(tmp_path, nodes=3) as cluster:
        a, b = store(cluster.url), store(cluster.servers[2].url)
        assert await a.join("a") >= 1 and await b.join("b") >= 1
        assert a.stats()["cluster"] == 1 and b.stats()["cluster"] == 1
        files = [b"cluster-file-%d" % n for n in range(12)]
        owners = set()
        for f in files:
            slot = int(cluster.servers[0].cli("cluster", "keyslot", pkey(f)))
            assert slot == int(cluster.servers[0].cli("cluster", "keyslot", vkey(f)))  # hash tag
            owners.add(next(i for i, srv in enumerate(cluster.servers) if _owns(srv, slot)))
        assert len(owners) > 1  # the files really are spread over several nodes
        tags = {}
        for n, f in enumerate(files):
            tags[f] = await a.version(f)
            assert await b.version(f) == tags[f]
            assert await a.put(f, tags[f], n, page(n))
        for n, f in enumerate(files):
            out = buf()
            assert await b.get(f, tags[f], n, out) == a.node and bytes(out) == bytes(page(n))
        f = files[0]
        new = await b.bump(f)
        assert new > tags[f] and await a.version(f) == new
        assert not await a.put(f, tags[f], 0, page(0))
        await a.invalidate_file(files[1], None)
        assert await b.get(files[1], tags[files[1]], 1, buf()) is None
        await a.invalidate_file(files[2], tags[files[2]])
        assert await b.get(files[2], tags[files[2]], 2, buf()) is None
        await a.invalidate_page(files[3], tags[files[3]], 3)
        assert await b.get(files[3], tags[files[3]], 3, buf()) is None
        assert await b.get(files[4], tags[files[4]], 4, buf()) is not None
        assert {m.node for m in await b.members()} == {a.node, b.node}
        await a.clear()
        for srv in cluster.servers:
            assert not [k for k in srv.cli("keys", "tmemfs:[vp]:*").split() if k]
        await a.leave()
        await b.leave()


def _owns(srv: RedisServer, slot: int) -> bool:
    """Whether `srv` serves `slot` (its own line of CLUSTER NODES lists its slot ranges)."""
    me = next(n for n in srv.cli("cluster", "nodes").splitlines() if "myself" in n).split()
    for part in me[8:]:
        lo, _, hi = part.partition("-")
        if lo.isdigit() and int(lo) <= slot <= int(hi or lo):
            return True
    return False


async def test_redis_cluster_found_by_moved_reply(tmp_path: Path) -> None:
    """An ACL user that may not run INFO: cluster mode is found from the first MOVED reply."""
    with redis_cluster(tmp_path, nodes=3) as cluster:
        for srv in cluster.servers:
            srv.cli("acl", "setuser", "tm", "on", f">{PASSWORD}", "~*", "+@all", "-info")
        # connect to the node serving the members key: join works, file keys elsewhere get MOVED
        slot = int(cluster.servers[0].cli("cluster", "keyslot", f"tmemfs:m:{{{UUID.hex()}}}"))
        home = next(srv for srv in cluster.servers if _owns(srv, slot))
        s = store(f"redis://tm:{PASSWORD}@127.0.0.1:{home.port}/0", retry_interval=0.2)
        assert await s.join("n") >= 1
        assert s.stats()["cluster"] == 0
        files = [b"moved-%d" % n for n in range(8)]
        missed = 0
        with trio.fail_after(5):
            while True:  # a call that met the MOVED reply misses; the store reconnects as a cluster
                try:
                    for f in files:
                        assert await s.put(f, await s.version(f), 0, page(1))
                    break
                except StoreUnavailable as exc:
                    assert PASSWORD not in str(exc)
                    missed += 1
                    await trio.sleep(0.05)
        assert missed >= 1
        assert s.stats()["cluster"] == 1 and s.node >= 1
        for f in files:
            assert await s.get(f, await s.version(f), 0, buf()) == s.node
        await s.leave()


async def _put_and_get_back(s: RedisStore, f: bytes, served: list[int], unexpected: list[BaseException]) -> None:
    """A handler task: puts and gets of its own file `f`, through whatever the server does."""
    for i in range(400):
        try:
            v = await s.version(f)
            if await s.put(f, v, i % 8, page(i)):
                out = buf()
                if await s.get(f, v, i % 8, out) is not None:
                    assert bytes(out) == bytes(page(i))  # only this task writes this file
                    served[0] += 1
        except StoreUnavailable:
            await trio.sleep(0.01)
        except BaseException as exc:
            unexpected.append(exc)
            raise


async def test_concurrent_callers_through_a_restart(srv: RedisServer) -> None:
    """Handler tasks and a heartbeat task share one store while the server goes away and back."""
    s = store(srv.url, retry_interval=0.1)
    await s.join("n")
    unexpected: list[BaseException] = []
    served = [0]

    async def heartbeats() -> None:
        for _ in range(40):
            try:
                await s.heartbeat(1, 1, 0)
            except StoreUnavailable:
                pass
            await trio.sleep(0.02)

    async with trio.open_nursery() as nursery:
        for n in range(8):
            nursery.start_soon(_put_and_get_back, s, b"worker%d" % n, served, unexpected)
        nursery.start_soon(heartbeats)
        await trio.sleep(0.2)
        srv.stop()
        await trio.sleep(0.3)
        srv.start()
    assert not unexpected
    await wait_up(s, 3.0)
    assert served[0] > 0 and int(s.stats()["reconnects"]) >= 1
    assert [m.node for m in await s.members()] == [s.node]  # no second registration, no ghost
    await s.leave()


def test_resp_replies_parse_whole_or_not_at_all() -> None:
    """Replies split anywhere wait for the rest (None); nils, integers, errors and nested arrays."""
    replies = b"$5\r\nhello\r\n$-1\r\n:42\r\n-OOM no room\r\n*2\r\n*1\r\n$1\r\na\r\n:7\r\n+OK\r\n"
    for cut in range(len(replies)):
        got, pos = [], 0
        while (reply := parse(replies[:cut], pos)) is not None:
            got.append(reply[0])
            pos = reply[1]
        assert len(got) <= 6 and pos <= cut
    got, pos = [], 0
    while (reply := parse(replies, pos)) is not None:
        got.append(reply[0])
        pos = reply[1]
    assert pos == len(replies)
    assert got[:3] == [b"hello", None, 42] and got[4:] == [[[b"a"], 7], b"OK"]
    assert isinstance(got[3], RespError) and got[3].code == "OOM"
    assert encode((b"HGET", "k", 12)) == b"*3\r\n$4\r\nHGET\r\n$1\r\nk\r\n$2\r\n12\r\n"


async def test_a_run_of_pages_is_one_command(srv: RedisServer) -> None:
    """A fill of N missing pages asks Redis once (HMGET), and N pages of one file at one version
    go back in one script: not a round trip per page."""
    s = store(srv.url)
    try:
        await s.join("n")
        f = b"run"
        v = await s.version(f)
        srv.cli("config", "resetstat")
        assert await s.put_many(f, v, [(i, page(i)) for i in range(16)]) == [True] * 16
        outs = [buf() for _ in range(20)]
        assert await s.get_many(f, v, 0, outs) == [s.node] * 16 + [None] * 4
        assert [bytes(o) for o in outs[:16]] == [bytes(page(i)) for i in range(16)]
        assert commands_run(srv, "hget", "hmget", "evalsha", "eval") == 2
        await s.bump(f)  # a stale run is refused whole, still in one command
        assert await s.put_many(f, v, [(i, page(i)) for i in range(8)]) == [False] * 8
        assert commands_run(srv, "hget", "hmget", "evalsha", "eval") == 4  # (+ the bump)
        assert s.stats()["stale_puts_refused"] == 8 and s.stats()["puts"] == 16
        v = await s.version(f)  # a whole page cache dropped at once: a script per PUT_PAGES pages
        assert await s.put_many(f, v, [(i, page(i)) for i in range(2 * PUT_PAGES + 1)]) == [True] * (2 * PUT_PAGES + 1)
        assert commands_run(srv, "hget", "hmget", "evalsha", "eval") == 5 + 3
        assert await s.get(f, v, 2 * PUT_PAGES, buf()) == s.node
    finally:
        await s.leave()


async def test_cluster_backend_puts_an_eviction_in_one_command_per_file(srv: RedisServer) -> None:
    """put_pages: the evicted pages of each file (one key) in one script; get_pages: one HMGET."""
    backend = ClusterBackend(1 << 24, cc_store=srv.url)
    pool = await backend.create_pool(UUID)
    try:
        versions = backend.versions(pool)
        assert versions is not None
        keys = {}
        for f in (b"one", b"two"):
            version = await versions.version(f)
            assert version is not None
            keys[f] = versioned_key(f, version, 7)
        srv.cli("config", "resetstat")
        evicted = [(keys[b"one"], i, page(i)) for i in range(12)] + [(keys[b"two"], i, page(i)) for i in range(4)]
        assert await backend.put_pages(pool, evicted) == [True] * 16
        assert commands_run(srv, "evalsha", "eval") == 2
        outs = [buf() for _ in range(12)]
        assert await backend.get_pages(pool, keys[b"one"], 0, outs) == [True] * 12
        assert commands_run(srv, "hget", "hmget") == 1
        assert backend.stats()["puts"] == 16 and backend.stats()["succ_gets"] == 12
    finally:
        await backend.close()


async def test_concurrent_calls_overlap_on_a_slow_link(srv: RedisServer) -> None:
    """16 requests in flight over a link that delays every reply: each one's store call is on
    its way before any reply is back, so they take about one delay, not sixteen."""
    with slow_link(srv) as url:
        s = store(url, connect_timeout=30 * DELAY)  # a join is several round trips
        try:
            assert await s.join("slow") >= 1
            f = b"slow"
            v = await s.version(f)
            assert await s.put_many(f, v, [(i, page(i)) for i in range(16)]) == [True] * 16
            events: list[str] = []

            async def read(i: int) -> None:
                events.append("asked")
                out = buf()
                assert await s.get(f, v, i, out) == s.node and bytes(out) == bytes(page(i))
                events.append("answered")

            start = trio.current_time()
            async with trio.open_nursery() as nursery:
                for i in range(16):
                    nursery.start_soon(read, i)
            assert events == ["asked"] * 16 + ["answered"] * 16
            assert trio.current_time() - start < 16 * DELAY / 2  # (one at a time: 16 delays)
            start = trio.current_time()
            assert await s.get_many(f, v, 0, [buf() for _ in range(16)]) == [s.node] * 16
            assert trio.current_time() - start < 16 * DELAY / 2  # (a round trip per page: 16 delays)
        finally:
            await s.leave()


async def test_concurrent_version_checks_share_one_command(srv: RedisServer) -> None:
    """Reads in flight on one file all check its version: those whose checks are queued
    together share one command (it reaches Redis after each of them started)."""
    s = store(srv.url)
    try:
        await s.join("n")
        f = b"hot"
        v = await s.version(f)
        srv.cli("config", "resetstat")
        seen: list[int] = []

        async def check() -> None:
            seen.append(await s.version(f))

        with trio.fail_after(10):
            async with trio.open_nursery() as nursery:
                for _ in range(16):
                    nursery.start_soon(check)
        assert seen == [v] * 16
        assert commands_run(srv, "evalsha", "eval") <= 4
        assert counts(s.stats())["shared_calls"] >= 12
    finally:
        await s.leave()


async def test_a_version_check_never_takes_a_reply_to_one_sent_before_it(srv: RedisServer) -> None:
    """The coherency guarantee under sharing: a check that starts after a change completed
    reads the new version, even while an older check of the file is still on its way."""
    with slow_link(srv) as url:
        slow, other = store(url, connect_timeout=30 * DELAY), store(srv.url)
        try:
            await slow.join("slow")
            await other.join("other")
            f = b"changing"
            v = await other.version(f)
            srv.cli("config", "resetstat")
            first: list[int] = []

            async def early_check() -> None:
                first.append(await slow.version(f))

            async with trio.open_nursery() as nursery:
                nursery.start_soon(early_check)
                with trio.fail_after(10):
                    while commands_run(srv, "evalsha") < 1:  # it ran in Redis; its reply is on its way
                        await trio.sleep(0.01)
                bumped = await other.bump(f)  # a change completes
                with trio.fail_after(10):
                    assert await slow.version(f) == bumped  # a read that starts afterwards
            assert first == [v] and bumped > v
            assert slow.stats()["shared_calls"] == 0
        finally:
            await slow.leave()
            await other.leave()


async def test_an_idle_node_keeps_its_connections_where_the_server_closes_idle_clients(srv: RedisServer) -> None:
    """A server may close clients idle for `timeout` seconds; a node that only heartbeats (what
    ClusterBackend.run does each second) keeps both of its connections, and is never cut off."""
    srv.cli("config", "set", "timeout", "1")
    s = store(srv.url)
    try:
        await s.join("idle")
        f = b"idle"
        v = await s.version(f)
        for _ in range(8):
            await s.heartbeat(0, 0, 0)
            await s.members()
            await trio.sleep(0.5)
        assert await s.version(f) == v
        assert s.up and s.stats()["reconnects"] == 0 and s.stats()["store_errors"] == 0
    finally:
        await s.leave()
