"""The counter table, the Prometheus exposition and the scrape server (issue 14, item 3)."""

from __future__ import annotations

import errno
import os
import signal
import socket
import subprocess
import sys
import threading
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import trio
from prometheus_client.openmetrics.parser import text_string_to_metric_families as openmetrics_families
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from fusefs import __version__, counters
from fusefs.metrics import MetricsServer, exposition, parse_metrics_address
from tests.conftest import MountFactory

README = Path(__file__).parent.parent / "README.md"
OPENMETRICS = "application/openmetrics-text; version=1.0.0"
BACKENDS = ["none", "tmem", "zcache", "dedup", "zcache+tmem+tmem", "cluster", "zcache+cluster",
            "zcache,cc_host=tmemfs-test-metrics"]


def parse(text: bytes) -> list:  # type: ignore[type-arg]
    return list(text_string_to_metric_families(text.decode()))


def samples(text: bytes) -> list[Sample]:
    return [s for family in parse(text) for s in family.samples]


def check_exposition(text: bytes, mnt: str) -> None:
    """What every exposition must be: HELP and a type per family, unique names, counters
    in _total, the mount's labels on every sample, and no sample twice."""
    families = parse(text)
    names = [f.name for f in families]
    assert len(names) == len(set(names))
    for family in families:
        assert family.documentation, family.name
        assert family.type in ("counter", "gauge", "info"), family.name
        for sample in family.samples:
            assert sample.name.startswith("tmemfs_")
            assert sample.labels["mountpoint"] == mnt and sample.labels["src"]
            if family.type == "counter":
                assert sample.name.endswith("_total"), sample.name
    keys = [(s.name, tuple(sorted(s.labels.items()))) for s in samples(text)]
    assert len(keys) == len(set(keys))


def read_through(mount) -> None:  # type: ignore[no-untyped-def]
    """Some traffic, so that the stats come from a mount that did something."""
    (mount.src / "f").write_bytes(b"tmemfs " * 20000)
    assert (mount.mnt / "f").read_bytes() == b"tmemfs " * 20000
    mount.control("drop_caches")
    assert (mount.mnt / "f").read_bytes() == b"tmemfs " * 20000


def test_readme_counter_reference_is_the_table() -> None:
    text = README.read_text()
    assert counters.with_reference(text) == text, "regenerate it: python -m fusefs.counters README.md"


@pytest.mark.parametrize("backend", BACKENDS)
def test_every_stats_key_is_documented_and_exported(mount_factory: MountFactory, backend: str) -> None:
    with mount_factory(f"cleancache={backend}") as mount:
        read_through(mount)
        stats = mount.stats()
    undocumented = [key for key in stats if counters.describe(key) is None]
    assert undocumented == []
    assert stats["fs.mountpoint"] == str(mount.mnt)
    text = exposition(stats)
    check_exposition(text, str(mount.mnt))
    by_name = {s.name: s for s in samples(text)}
    assert by_name["tmemfs_pagecache_misses_total"].value == stats["pagecache.misses"]
    assert by_name["tmemfs_backing_read_bytes_total"].value == stats["backing.read_bytes"]
    if backend != "none":
        first = backend.split("+")[0].split(",")[0]
        counter = "client.puts" if "cc_host" in backend else "puts"  # a host client's share of the host
        name = f"tmemfs_backend_{counter.replace('.', '_')}_total"
        puts = [s for s in samples(text) if s.name == name and s.labels["backend"] == first]
        assert [s.value for s in puts] == [stats[f"backend.{first}.{counter}"]] and puts[0].value > 0
    if "cluster" in backend:
        assert {s.labels["node"] for s in samples(text)} == {str(stats["backend.cluster.node"])}
        info = [s for s in samples(text) if s.name == "tmemfs_backend_info"]
        assert [s.labels["pool_uuid"] for s in info] == [stats["backend.cluster.pool_uuid"]]


def test_two_mounts_of_one_src_never_collide(mount_factory: MountFactory) -> None:
    with mount_factory("cleancache=tmem") as a, mount_factory("cleancache=tmem") as b:
        read_through(a)
        both = exposition(a.stats()) + exposition(b.stats())
    keys = [(s.name, tuple(sorted(s.labels.items()))) for s in samples(both)]
    assert len(keys) == len(set(keys))
    assert {s.labels["mountpoint"] for s in samples(both)} == {str(a.mnt), str(b.mnt)}
    assert {s.labels["src"] for s in samples(both)} == {str(a.src)}


def test_info_metric_carries_version_and_backend(mount_factory: MountFactory) -> None:
    with mount_factory("cleancache=zcache+tmem") as mount:
        text = exposition(mount.stats())
    info = [s for s in samples(text) if s.name == "tmemfs_info"]
    assert len(info) == 1
    assert info[0].labels["version"] == __version__ and info[0].labels["backend"] == "zcache+tmem"
    assert info[0].value == 1


def test_text_values_are_never_samples_and_unknown_keys_are_gauges() -> None:
    stats = {"fs.src": "/s", "fs.mountpoint": "/m", "fs.pid": 7, "puts": "oops", "backend.x.store.state": "up",
             "backend.x.weird_level": 3, "backend.tmem#2.stored_pages": 5, "backend.cluster.member.4.name": "h:1"}
    families = {f.name: f for f in parse(exposition(stats))}
    assert "tmemfs_puts" not in families and "tmemfs_fs_pid" not in families
    assert families["tmemfs_backend_weird_level"].type == "gauge"
    assert families["tmemfs_backend_weird_level"].documentation
    [stored] = families["tmemfs_backend_stored_pages"].samples
    assert stored.labels["backend"] == "tmem#2" and stored.value == 5
    [member] = families["tmemfs_backend_member_info"].samples
    assert member.labels["member"] == "4" and member.labels["name"] == "h:1"
    assert all("up" not in s.labels.values() for f in families.values() for s in f.samples)


def test_describe_knows_patterns_units_and_the_pool_counters() -> None:
    high = counters.describe("backend.zcache.pool_total_size_max")
    assert high is not None and (high.kind, high.unit) == ("gauge", "bytes")
    hit = counters.describe("backend.tmem#2.pool_limit_hit")
    assert hit is not None and hit.kind == "counter"
    capacity = counters.describe("backend.dedup.capacity_bytes")
    assert capacity is not None and (capacity.kind, capacity.unit) == ("gauge", "bytes")
    member = counters.describe("backend.cluster.member.12.heartbeat_age_s")
    assert member is not None and member.unit == "seconds" and member.help
    assert counters.describe("fs.version").kind == "info"  # type: ignore[union-attr]
    assert counters.describe("backend.tmem.no_such_counter") is None
    assert counters.describe("no_such_key") is None


def test_metric_names_follow_prometheus_conventions() -> None:
    from fusefs.metrics import metric_name

    names = {info.key: metric_name(info) for info in counters.TABLE if info.kind != "info"}
    assert names["backing.read_bytes"] == "tmemfs_backing_read_bytes"
    assert names["backend.NAME.pool_total_size"] == "tmemfs_backend_pool_total_size_bytes"
    assert names["backend.NAME.member.N.heartbeat_age_s"] == "tmemfs_backend_member_heartbeat_age_seconds"
    assert names["fs.uptime_seconds"] == "tmemfs_fs_uptime_seconds"
    assert len(set(names.values())) == len(names)


@pytest.mark.parametrize(("text", "expected"), [
    ("127.0.0.1:9567", ("127.0.0.1", 9567)), ("localhost:1", ("localhost", 1)), ("[::1]:9567", ("::1", 9567)),
    ("0.0.0.0:65535", ("0.0.0.0", 65535)),
])
def test_metrics_address(text: str, expected: tuple[str, int]) -> None:
    assert parse_metrics_address(text) == expected


@pytest.mark.parametrize(("text", "says"), [
    ("9567", "expected HOST:PORT"), (":9567", "expected HOST:PORT"), ("127.0.0.1:", "port must be"),
    ("127.0.0.1:http", "port must be"), ("127.0.0.1:0", "port must be"), ("127.0.0.1:70000", "port must be"),
    ("::1:9567", "in brackets"), ("[nothost]:9567", "not an IPv6 address"), ("a b:1", "not a host name"),
])
def test_bad_metrics_address_is_one_clear_line(text: str, says: str) -> None:
    with pytest.raises(ValueError, match=says) as caught:
        parse_metrics_address(text)
    assert "\n" not in str(caught.value) and text in str(caught.value)


def test_busy_port_is_an_oserror_at_bind() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        server = MetricsServer(("127.0.0.1", taken.getsockname()[1]))
        with pytest.raises(OSError) as caught:
            server.bind()
        assert caught.value.errno == errno.EADDRINUSE
        server.close()


def scrape(port: int, accept: str = "text/plain") -> tuple[int, bytes]:
    request = urllib.request.Request(f"http://127.0.0.1:{port}/metrics", headers={"Accept": accept})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


async def test_server_scrapes_a_snapshot_taken_on_the_loop() -> None:
    loop_thread = threading.get_ident()
    ran_on: list[int] = []

    def collect() -> dict[str, object]:
        ran_on.append(threading.get_ident())
        return {"fs.src": "/s", "fs.mountpoint": "/m", "fs.version": __version__, "puts": len(ran_on),
                "pagecache.bytes": 8192}

    server = MetricsServer(("127.0.0.1", 0))
    server.start(trio.lowlevel.current_trio_token(), collect)
    try:
        status, first = await trio.to_thread.run_sync(scrape, server.port)
        _, second = await trio.to_thread.run_sync(scrape, server.port)
        _, openmetrics = await trio.to_thread.run_sync(scrape, server.port, OPENMETRICS)
    finally:
        server.close()
    assert status == 200
    assert ran_on == [loop_thread] * 3
    check_exposition(first, "/m")
    values = {s.name: s.value for s in samples(second)}
    assert values["tmemfs_puts_total"] == 2 and values["tmemfs_pagecache_bytes"] == 8192
    # (what Prometheus asks for first; prometheus_client's openmetrics parser has no annotations)
    families = {f.name: f for f in openmetrics_families(openmetrics.decode())}  # type: ignore[no-untyped-call]
    assert families["tmemfs"].type == "info" and families["tmemfs_puts"].samples[0].value == 3


async def test_scrape_of_a_stalled_loop_fails_instead_of_hanging() -> None:
    answered = threading.Event()

    def stalled() -> dict[str, object]:  # holds the loop until the scrape has its answer
        answered.wait(60)
        return {"fs.src": "/s", "fs.mountpoint": "/m"}

    def scrape_then_release(port: int) -> tuple[int, bytes]:
        try:
            return scrape(port)
        finally:
            answered.set()

    server = MetricsServer(("127.0.0.1", 0), timeout=0.2)
    server.start(trio.lowlevel.current_trio_token(), stalled)
    try:
        status, body = await trio.to_thread.run_sync(scrape_then_release, server.port)
    finally:
        server.close()
    assert status == 503 and b"did not answer" in body


def test_scrape_after_the_loop_ended_is_an_error() -> None:
    server = MetricsServer(("127.0.0.1", 0))

    async def mount_lifetime() -> None:
        server.start(trio.lowlevel.current_trio_token(), dict)

    try:
        trio.run(mount_lifetime)
        status, body = scrape(server.port)
    finally:
        server.close()
    assert status == 503 and body.startswith(b"tmemfs: no metrics")


def test_bound_before_the_fork_serves_from_the_daemon() -> None:
    """The cli's route: bind (and report a busy port) in the parent, serve from the forked daemon."""
    server = MetricsServer(("127.0.0.1", 0))
    server.bind()
    pid = os.fork()
    if pid == 0:
        try:
            async def daemon() -> None:
                stats = {"fs.src": "/s", "fs.mountpoint": "/m", "fs.inodes": os.getpid()}
                server.start(trio.lowlevel.current_trio_token(), lambda: stats)
                await trio.sleep(60)

            trio.run(daemon)
        finally:
            os._exit(0)
    try:
        status, body = scrape(server.port)
    finally:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        server.close()
    assert status == 200
    assert {s.name: s.value for s in samples(body)}["tmemfs_fs_inodes"] == pid


def test_tmemctl_can_import_them_without_trio_pyfuse3_or_prometheus_client() -> None:
    blocker = (
        "import sys\n"
        "class Block:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] in ('prometheus_client', 'trio', 'pyfuse3'):\n"
        "            raise ImportError(name)\n"
        "sys.meta_path.insert(0, Block())\n"
        "import fusefs.counters, fusefs.metrics\n"
        "print(fusefs.counters.describe('fs.uptime_seconds').unit)\n"
    )
    done = subprocess.run([sys.executable, "-c", blocker], capture_output=True, text=True,
                          cwd=Path(__file__).parent.parent)
    assert (done.returncode, done.stdout, done.stderr) == (0, "seconds\n", "")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_a_mount_with_metrics_serves_its_counters(mount_factory: MountFactory) -> None:
    """-o metrics=HOST:PORT: Prometheus scrapes the mount's own counters over HTTP."""
    port = free_port()
    with mount_factory(f"cleancache=tmem,metrics=127.0.0.1:{port}") as mount:
        read_through(mount)
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as reply:
            text = reply.read()
        hits = mount.stats()["pagecache.hits"]
    check_exposition(text, str(mount.mnt))
    scraped = {s.name: s.value for s in samples(text)}
    assert scraped["tmemfs_pagecache_hits_total"] == hits
    assert scraped["tmemfs_succ_gets_total"] > 0


def test_a_busy_metrics_port_is_refused_before_mounting(tmp_path: Path) -> None:
    (tmp_path / "s").mkdir()
    (tmp_path / "m").mkdir()
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = subprocess.run([sys.executable, "-m", "fusefs.cli", str(tmp_path / "s"), str(tmp_path / "m"),
                               "-o", f"cleancache=tmem,metrics=127.0.0.1:{port}"],
                              capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert done.stderr.count("\n") == 1 and f"metrics=127.0.0.1:{port}" in done.stderr, done.stderr
    assert "in use" in done.stderr
    assert not os.path.ismount(tmp_path / "m")
    assert not list(Path("/var/log/tmemfs").glob(f"*{tmp_path.name}*"))  # refused: no log file made
