"""Prometheus metrics: a stats snapshot in the text exposition format, and the daemon's scrape server.

Names, types and help come from the counter table (fusefs/counters.py):
`tmemfs_<key>`, counters typed counter with `_total`, bytes in `_bytes`,
seconds in `_seconds`. Every sample carries `mountpoint` and `src` (two
mounts of one SRC never collide), `node` on a cluster node, and `backend`
on a backend's counters (one family per counter across backends and chain
members). Text keys go to `tmemfs_info` (version, backend) and the
`tmemfs_backend_info` / `tmemfs_backend_member_info` metrics, or are left
out; never as samples.

Standard library only at import: tmemctl imports this without trio or
prometheus_client (imported where used).
"""

from __future__ import annotations

import concurrent.futures
import ipaddress
import logging
import re
import socket
import threading
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer

from fusefs.counters import B, CounterInfo, describe, pattern_of

if TYPE_CHECKING:
    import trio
    from prometheus_client.metrics_core import Metric

log = logging.getLogger("tmemfs.metrics")

Stats = Mapping[str, object]  # a stats snapshot (read only)
PREFIX = "tmemfs_"
SCRAPE_TIMEOUT_S = 5.0  # a scrape waits this long for the daemon's loop, then fails (503)
# Text keys exported as labels of an info metric: table key -> (metric name, label).
INFO_LABELS = {
    "fs.version": ("tmemfs", "version"),
    "cleancache.backend": ("tmemfs", "backend"),
    B + "pool_uuid": ("tmemfs_backend", "pool_uuid"),
    B + "store.store": ("tmemfs_backend", "store"),
    B + "store.directory": ("tmemfs_backend", "store_directory"),
    B + "store.url": ("tmemfs_backend", "store_url"),
    B + "member.N.name": ("tmemfs_backend_member", "name"),
}
INFO_HELP = {
    "tmemfs": "tmemfs's version and the live backend",
    "tmemfs_backend": "a backend's shared pool and store",
    "tmemfs_backend_member": "a cluster member's name",
}


def metric_name(info: CounterInfo) -> str:
    """The family name of a table entry: NAME and N parts become labels, units become suffixes."""
    parts = [p for p in info.key.split(".") if p not in ("NAME", "N")]
    name = PREFIX + re.sub(r"[^a-zA-Z0-9_]", "_", "_".join(parts))
    if info.unit == "bytes" and not name.endswith("_bytes"):
        name += "_bytes"
    if info.unit == "seconds":
        name = name.removesuffix("_s")
        if not name.endswith("_seconds"):
            name += "_seconds"
    return name


def _key_labels(key: str, pattern: str) -> dict[str, str]:
    """`backend` for backend.NAME.* keys, and `member` (the word before it) for each N part."""
    labels = {}
    for part, slot, before in zip(key.split("."), pattern.split("."), ["", *pattern.split(".")], strict=False):
        if slot == "NAME":
            labels["backend"] = part
        elif slot == "N":
            labels[before] = part
    return labels


def _common_labels(stats: Stats) -> dict[str, str]:
    labels = {"mountpoint": str(stats.get("fs.mountpoint", "")), "src": str(stats.get("fs.src", ""))}
    node = next((v for k, v in stats.items() if pattern_of(k) == B + "node"), None)
    if node is not None:
        labels["node"] = str(node)
    return labels


def _undocumented(key: str) -> CounterInfo:
    """A key the table lacks (a third-party backend's): exported as a plain gauge."""
    return CounterInfo(pattern_of(key), "gauge", "none", f"{key} (not in tmemfs's counter table)")


def families(stats: Stats) -> list[Metric]:
    """The metric families of one stats snapshot."""
    from prometheus_client.metrics_core import Metric

    common = _common_labels(stats)
    out: dict[str, Metric] = {}
    infos: dict[tuple[str, tuple[tuple[str, str], ...]], dict[str, str]] = {}
    for key, value in stats.items():
        pattern = pattern_of(key)
        labels = {**common, **_key_labels(key, pattern)}
        if pattern in INFO_LABELS:
            name, label = INFO_LABELS[pattern]
            infos.setdefault((name, tuple(sorted(labels.items()))), {})[label] = str(value)
            continue
        info = describe(key) or _undocumented(key)
        if info.kind == "info" or not isinstance(value, (int, float)):  # text is never a sample
            continue
        name = metric_name(info)
        if name not in out:
            out[name] = Metric(name, info.help, info.kind)
        family = out[name]
        if family.type != info.kind:  # an undocumented key whose name a documented one has
            continue
        family.add_sample(name + ("_total" if info.kind == "counter" else ""), labels, float(value))
    for (name, labels_items), values in infos.items():
        if name not in out:
            out[name] = Metric(name, INFO_HELP[name], "info")
        out[name].add_sample(name + "_info", {**dict(labels_items), **values}, 1.0)
    return list(out.values())


class SnapshotCollector:
    """A prometheus_client collector over whatever `snapshot()` returns at each collect."""

    def __init__(self, snapshot: Callable[[], Stats]) -> None:
        self.snapshot = snapshot

    def collect(self) -> Iterable[Metric]:
        return families(self.snapshot())


def exposition(stats: Stats) -> bytes:
    """A stats snapshot in the Prometheus text format (what `tmemctl stats --prometheus` prints)."""
    from prometheus_client import CollectorRegistry
    from prometheus_client.exposition import generate_latest

    registry = CollectorRegistry()
    registry.register(SnapshotCollector(lambda: stats))
    return generate_latest(registry)


_HOSTNAME = re.compile(r"[A-Za-z0-9]([A-Za-z0-9.-]*[A-Za-z0-9])?")


def parse_metrics_address(text: str) -> tuple[str, int]:
    """HOST:PORT (an IPv6 host in brackets: [::1]:9567) -> (host, port); ValueError says what is wrong."""
    example = "e.g. 127.0.0.1:9567, or 0.0.0.0:9567 for every interface"
    host, colon, port = text.rpartition(":")
    if not colon or not host:
        raise ValueError(f"metrics={text}: expected HOST:PORT, {example}")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise ValueError(f"metrics={text}: {host!r} in brackets is not an IPv6 address") from None
    elif not _HOSTNAME.fullmatch(host):
        raise ValueError(f"metrics={text}: {host!r} is not a host name or address"
                         + (" (put an IPv6 address in brackets: [::1]:9567)" if ":" in host else ""))
    if not port.isdigit() or not 1 <= int(port) <= 65535:
        raise ValueError(f"metrics={text}: the port must be a number from 1 to 65535, {example}")
    return host, int(port)


class MetricsServer:
    """The daemon's scrape endpoint: prometheus_client's WSGI app and threading server, in a thread.

    `bind()` claims the address (OSError if it is taken or cannot be resolved) and may run
    before the daemon forks: the socket survives a fork, a thread would not. `start()`
    serves from a thread; the snapshot itself is taken on the trio loop (the daemon's data
    is not thread-safe), through the loop's token, and a scrape that the loop does not
    answer within `timeout` seconds (a mount being torn down, a stalled loop) gets a 503
    instead of hanging. `close()` stops serving and releases the port.
    """

    def __init__(self, address: tuple[str, int], timeout: float = SCRAPE_TIMEOUT_S) -> None:
        self.address = address
        self.timeout = timeout
        self._httpd: WSGIServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        """The port bound (the one the system picked for port 0)."""
        if self._httpd is None:
            raise RuntimeError("MetricsServer is not bound")
        return self._httpd.server_port

    def bind(self) -> None:
        from prometheus_client.exposition import ThreadingWSGIServer

        host, port = self.address
        family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0][0]

        class Server(ThreadingWSGIServer):
            address_family = family

        self._httpd = Server((host, port), _QuietHandler)  # its app comes with start()

    def start(self, trio_token: trio.lowlevel.TrioToken, collect: Callable[[], Stats]) -> None:
        """Serve `collect()`'s snapshots, taken on the loop of `trio_token` (binding first if needed)."""
        from prometheus_client import CollectorRegistry
        from prometheus_client.exposition import make_wsgi_app

        if self._httpd is None:
            self.bind()
        assert self._httpd is not None
        registry = CollectorRegistry()
        registry.register(SnapshotCollector(lambda: self._on_loop(trio_token, collect)))
        self._httpd.set_app(_answering_errors(make_wsgi_app(registry)))
        self._thread = threading.Thread(target=self._httpd.serve_forever, name="tmemfs-metrics", daemon=True)
        self._thread.start()

    def close(self) -> None:
        """Stop serving (within serve_forever's half-second poll) and release the port."""
        if self._httpd is None:
            return
        if self._thread is not None:
            self._httpd.shutdown()
            self._thread.join()
            self._thread = None
        self._httpd.server_close()
        self._httpd = None

    def _on_loop(self, token: trio.lowlevel.TrioToken, collect: Callable[[], Stats]) -> Stats:
        """`collect()` run on the trio loop, as trio.from_thread.run_sync would, but given up after
        `timeout`: run_sync_soon and a future, since from_thread.run_sync waits forever."""
        done: concurrent.futures.Future[Stats] = concurrent.futures.Future()

        def run() -> None:
            if not done.set_running_or_notify_cancel():
                return  # the scrape gave up: no snapshot nobody waits for
            try:
                done.set_result(collect())
            except Exception as exc:  # handed to the scrape, never to the loop
                done.set_exception(exc)

        token.run_sync_soon(run)  # trio.RunFinishedError once the mount is gone
        try:
            return done.result(self.timeout)
        except TimeoutError:
            done.cancel()
            raise TimeoutError(f"the mount did not answer within {self.timeout:g} s") from None


def _answering_errors(app: Callable[..., Iterable[bytes]]) -> Callable[..., Iterable[bytes]]:
    """`app`, with a failed snapshot answered 503 in one line (and logged), not a traceback."""

    def guarded(environ: dict[str, Any], start_response: Callable[..., object]) -> Iterable[bytes]:
        try:
            return app(environ, start_response)
        except Exception as exc:
            reason = str(exc) or type(exc).__name__
            log.warning("metrics scrape failed: %s", reason)
            start_response("503 Service Unavailable", [("Content-Type", "text/plain; charset=utf-8")])
            return [f"tmemfs: no metrics: {reason}\n".encode()]

    return guarded


class _QuietHandler(WSGIRequestHandler):
    """Logs nothing per request, as prometheus_client's own server."""

    def log_message(self, format: str, *args: object) -> None:
        pass
