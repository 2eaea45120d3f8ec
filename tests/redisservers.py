"""Real Redis servers for tests: started from Debian's redis-server, always stopped.

    with redis_server(tmp_path) as srv:          # srv.url, srv.unix_url, srv.port
    with redis_server(tmp_path, tls=True) as s:  # also s.tls_url (rediss://, verified)
        srv.stop(); srv.start()                  # the same port (and socket) again
    with redis_cluster(tmp_path) as cluster:     # cluster.url: one node of three
        ...

Each server runs in the foreground (`--daemonize no`) as a child process with
no persistence (`save ''`, `appendonly no`) in its own directory, bound to
127.0.0.1 on a free port, and is killed in a finally: no daemon outlives its
test. Without /usr/bin/redis-server the test is skipped.

Fixtures (plain functions; a test module or tests/conftest.py imports them):
`redis_srv` (a RedisServer), `redis_url`, `redis_cluster_srv` (a RedisCluster).
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

import pytest

REDIS_SERVER = "/usr/bin/redis-server"
REDIS_CLI = "/usr/bin/redis-cli"
START_TIMEOUT = 10.0


def require_redis() -> None:
    """Skip the calling test when Debian's redis-server is not installed."""
    if not os.access(REDIS_SERVER, os.X_OK):
        pytest.skip(f"{REDIS_SERVER} is not installed (apt-get install redis-server)")


def free_port() -> int:
    """A TCP port nobody listens on now (bound to port 0, then released)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _answers(port: int, timeout: float = 0.5) -> bool:
    """True once a server on `port` answers a PING (an auth error is an answer too)."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
            s.sendall(b"PING\r\n")
            return bool(s.recv(64))
    except OSError:
        return False


class RedisServer:
    """One redis-server child process; stop() and start() keep the port and socket path."""

    def __init__(self, workdir: Path, password: str | None = None, maxmemory: int | str | None = None,
                 policy: str = "allkeys-lru", cluster: bool = False, tls: bool = False,
                 extra: dict[str, str] | None = None) -> None:
        self.workdir = workdir
        workdir.mkdir(parents=True, exist_ok=True)
        self.password = password
        self.port = free_port()
        self.cluster_port = free_port() if cluster else None
        self.tls_port = free_port() if tls else None
        self.ca_file = workdir / "ca.crt"
        # AF_UNIX paths are limited to 107 bytes and pytest's tmp_path can be long
        self._sockdir = tempfile.mkdtemp(prefix="tmr", dir="/tmp")
        self.unix_path = os.path.join(self._sockdir, "redis.sock")
        self.log = workdir / "redis.log"
        self.proc: subprocess.Popen[bytes] | None = None
        lines = {
            "bind": "127.0.0.1",
            "port": str(self.port),
            "unixsocket": self.unix_path,
            "unixsocketperm": "700",
            "daemonize": "no",
            "save": '""',
            "appendonly": "no",
            "dir": str(workdir),
            "logfile": str(self.log),
            "protected-mode": "yes",
        }
        if password is not None:
            lines["requirepass"] = password
            lines["masterauth"] = password
        if maxmemory is not None:
            lines["maxmemory"] = str(maxmemory)
            lines["maxmemory-policy"] = policy
        if cluster:
            lines.update({"cluster-enabled": "yes", "cluster-config-file": str(workdir / "nodes.conf"),
                          "cluster-node-timeout": "5000", "cluster-port": str(self.cluster_port)})
        if tls:
            make_certificates(workdir)
            lines.update({"tls-port": str(self.tls_port), "tls-cert-file": str(workdir / "server.crt"),
                          "tls-key-file": str(workdir / "server.key"), "tls-ca-cert-file": str(self.ca_file),
                          "tls-auth-clients": "no"})
        lines.update(extra or {})
        self.config = workdir / "redis.conf"
        self.config.write_text("".join(f"{k} {v}\n" for k, v in lines.items()))
        self.config.chmod(0o600)

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def unix_url(self) -> str:
        return f"unix://{self.unix_path}?db=0"

    @property
    def tls_url(self) -> str:
        """rediss:// URL that verifies the server against the test CA."""
        return f"rediss://127.0.0.1:{self.tls_port}/0?ssl_cert_reqs=required&ssl_ca_certs={self.ca_file}"

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def start(self) -> None:
        """Start (again) and wait until it answers; RuntimeError with the log tail if it dies."""
        if self.running:
            return
        self.proc = subprocess.Popen([REDIS_SERVER, str(self.config)], cwd=self.workdir,
                                     stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.STDOUT)
        deadline = time.monotonic() + START_TIMEOUT
        while not _answers(self.port):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                tail = self.log.read_text(errors="replace")[-2000:] if self.log.exists() else ""
                raise RuntimeError(f"redis-server on port {self.port} did not start:\n{tail}")
            time.sleep(0.02)

    def stop(self) -> None:
        """Stop at once (SIGKILL: nothing to save) and wait for the process."""
        proc, self.proc = self.proc, None
        if proc is None:
            return
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=10)

    def cli(self, *args: str) -> str:
        """Run redis-cli against this server; its output."""
        env = dict(os.environ)
        if self.password is not None:
            env["REDISCLI_AUTH"] = self.password
        done = subprocess.run([REDIS_CLI, "-p", str(self.port), *args], env=env, capture_output=True,
                              text=True, timeout=30, check=True)
        return done.stdout

    def cleanup(self) -> None:
        self.stop()
        shutil.rmtree(self._sockdir, ignore_errors=True)


def make_certificates(directory: Path) -> None:
    """A throw-away CA (ca.crt) and a server certificate for 127.0.0.1 (server.crt, server.key)."""
    if not shutil.which("openssl"):
        pytest.skip("openssl is not installed (needed for the TLS test certificates)")
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]

    def openssl(*args: str) -> None:
        subprocess.run(["openssl", *args], cwd=directory, check=True, capture_output=True, timeout=60)

    openssl("req", "-x509", *ec, "-keyout", "ca.key", "-out", "ca.crt", "-days", "2", "-subj", "/CN=tmemfs test CA")
    openssl("req", *ec, "-keyout", "server.key", "-out", "server.csr", "-subj", "/CN=127.0.0.1")
    (directory / "san.ext").write_text("subjectAltName=IP:127.0.0.1\n")
    openssl("x509", "-req", "-in", "server.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
            "-out", "server.crt", "-days", "2", "-extfile", "san.ext")


@contextmanager
def redis_server(tmp_path: Path, password: str | None = None, maxmemory: int | str | None = None,
                 policy: str = "allkeys-lru", tls: bool = False, name: str = "redis") -> Iterator[RedisServer]:
    """A running redis-server (stopped in a finally); with `tls` also a TLS port (`tls_url`)."""
    require_redis()
    server = RedisServer(tmp_path / name, password=password, maxmemory=maxmemory, policy=policy, tls=tls)
    try:
        server.start()
        yield server
    finally:
        server.cleanup()


class RedisCluster:
    """Several cluster-enabled redis-servers joined into one cluster (no replicas)."""

    def __init__(self, servers: list[RedisServer]) -> None:
        self.servers = servers

    @property
    def url(self) -> str:
        return self.servers[0].url

    @property
    def urls(self) -> list[str]:
        return [s.url for s in self.servers]


@contextmanager
def redis_cluster(tmp_path: Path, nodes: int = 3, password: str | None = None) -> Iterator[RedisCluster]:
    """A Redis Cluster of `nodes` primaries on loopback, state ok (all stopped in a finally)."""
    require_redis()
    with ExitStack() as stack:
        servers = []
        for i in range(nodes):
            server = RedisServer(tmp_path / f"cluster{i}", password=password, cluster=True)
            stack.callback(server.cleanup)
            server.start()
            servers.append(server)
        servers[0].cli("--cluster", "create", *(f"127.0.0.1:{s.port}" for s in servers),
                       "--cluster-replicas", "0", "--cluster-yes")
        deadline = time.monotonic() + 30
        while not all("cluster_state:ok" in s.cli("cluster", "info") for s in servers):
            if time.monotonic() > deadline:
                raise RuntimeError("the redis cluster did not reach cluster_state:ok in 30 s")
            time.sleep(0.1)
        yield RedisCluster(servers)


# -- fixtures ----------------------------------------------------------------------


@pytest.fixture
def redis_srv(tmp_path: Path) -> Iterator[RedisServer]:
    with redis_server(tmp_path) as server:
        yield server


@pytest.fixture
def redis_url(redis_srv: RedisServer) -> str:
    return redis_srv.url


@pytest.fixture
def redis_cluster_srv(tmp_path: Path) -> Iterator[RedisCluster]:
    with redis_cluster(tmp_path) as cluster:
        yield cluster
