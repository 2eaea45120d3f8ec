"""A shared cleancache pool kept in Redis, for nodes on several hosts.

One RedisStore is one node's view of one pool (a 16-byte uuid). Keys, with
U the 32 hex digits of the uuid and F the hex of the file key:

    tmemfs:v:{U:F}   the file's version (a string holding an integer)
    tmemfs:p:{U:F}   the file's pages: a hash, field = page index in decimal,
                     value = tag (8 bytes, big-endian) + SRC stamp (8 bytes) +
                     putter node (4 bytes, big-endian) + the page
    tmemfs:m:{U}     members: a hash, node id -> JSON {name, heartbeat, puts,
                     gets, hits_from_others}
    tmemfs:n:{U}     the node id counter

The `{...}` hash tags put a file's version and pages in one Redis Cluster
slot, so every operation on a file is one Lua script or one command in one
round trip, and dropping a whole file is one UNLINK.

Versions and pages (docs/coherency.md gives the protocol):

* A version key that does not exist (never made, evicted under maxmemory,
  deleted by clear(), lost in a restart) is created from the server clock
  (TIME in microseconds). Versions only grow by INCR, far slower than one per
  microsecond, so a re-created version is larger than any earlier value of
  that key and a page tagged with an old value can never match again. This
  assumes the server clock does not step back by more than the time since
  the key was first made (true for one server; after a cluster failover the
  replica's clock is used).
* Invariant: the page hash holds pages of the current version only. A put
  is stored only if its tag equals the current version (checked and written
  in one script); bump() and the re-creation of a version drop the page hash
  in the same script. So invalidate_file(file, tag) drops the hash when `tag`
  is the current version and does nothing otherwise (no page under an older
  tag can exist, and newer pages must stay), with no scan of the hash; the
  same holds for invalidate_page.

Capacity is the Redis server's `maxmemory`, with an eviction policy that
evicts any key (`allkeys-lru` or `allkeys-lfu`): evicted page hashes are
misses and evicted version keys come back larger (above). With `noeviction`
a full server refuses puts (counted `oom_refused`) and also bumps, which the
cluster backend must treat as the store being unreachable; `volatile-*`
policies evict nothing here (no key has a TTL).

Connections: coredis 6 (anyio, so it runs on trio) opens the store, detects
a Redis Cluster, serves one (it routes each key to its slot's node), and
makes the membership calls. A coredis client must be held open by an
`async with` for as long as it is used, but a PageStore has no lifetime
scope of its own, so each client is held by a trio system task (`_Conn`).
On a plain server (not a cluster) the page calls, the ones every read makes
(version, get, put, invalidations, bumps), go through a second, lean
connection instead (backends/resp.py): coredis spends 150-270 us of CPU on
a command here, six times a bare RESP exchange, which made a node CPU-bound
with one request in flight. Both pipeline: the calls of concurrent requests
share the connection and never wait for each other's replies. A call
cancelled by the caller's timeout leaves the connection consistent (its
reply is read and discarded); three cancelled calls in a row count as the
store hanging and reset the connection.

Round trips: every store call is one command: a version check (concurrent
checks of one file queued together share one, RespConnection.call_shared),
one HMGET for a whole run of pages, one put script for the pages evicted
together from one file at one version (up to PUT_PAGES). A 4 KiB read that
misses the page cache makes two: the version check and the get.

When Redis cannot be reached, calls raise StoreUnavailable at once (`up`
is False) while a background task tries to reconnect every
`retry_interval`; once back it re-joins (a new node id) and `up` is True.

Credentials (URL, arguments, or TMEMFS_REDIS_PASSWORD / TMEMFS_REDIS_USERNAME)
never appear in stats, logs or exception messages: everything shown goes
through `redacted_url` or `_scrub`.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar
from urllib.parse import parse_qsl, unquote, urlencode, urlsplit

import coredis
import trio
from coredis.commands.script import Script
from coredis.connection import TCPLocation
from coredis.exceptions import (
    AskError,
    AuthenticationError,
    ClusterDownError,
    ReadOnlyError,
    ResponseError,
    TryAgainError,
)
from coredis.retry import NoRetryPolicy

from backends.base import StatValue
from backends.resp import RespConnection, RespCounters, RespError
from backends.store import STAMP_BYTES, TAG_BYTES, Member, PageStore, StoreUnavailable

log = logging.getLogger(__name__)


class _FailedAttemptsOnce(logging.Filter):
    """coredis logs every failed connection attempt at ERROR with its traceback (a store that
    is hung or stalled: once a second). The store says so itself, in one line; the traceback
    only with tmemfs -d."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.getMessage().startswith("Connection attempt failed"):
            return logging.getLogger().isEnabledFor(logging.DEBUG)
        return True


logging.getLogger("coredis").addFilter(_FailedAttemptsOnce())

T = TypeVar("T")

PASSWORD_ENV = "TMEMFS_REDIS_PASSWORD"
USERNAME_ENV = "TMEMFS_REDIS_USERNAME"
SCHEMES = ("redis", "rediss", "unix")
NODE_BYTES = 4
HEADER = TAG_BYTES + STAMP_BYTES + NODE_BYTES
CANCELS_BEFORE_RESET = 3  # calls in a row cut short by the caller's timeout: the store hangs
PUT_PAGES = 256  # pages a put script takes at most (Lua's unpack() stops at about 8000 values)
# Error replies on the lean connection that mean "this server cannot serve the pool now"
# (coredis raises them as AuthenticationError, ClusterDownError, TryAgainError, ReadOnlyError,
# AskError...): the store goes down and reconnects. MOVED and ASK also say it is a cluster node.
_DOWN_REPLIES = frozenset(("NOAUTH", "WRONGPASS", "CLUSTERDOWN", "TRYAGAIN", "READONLY", "LOADING",
                           "MASTERDOWN", "MOVED", "ASK"))
SCAN_COUNT = 1000
_SECRET_PARAMS = ("password", "username", "user", "pass")

# KEYS[1] version, KEYS[2] pages. A missing version is created from the server
# clock (microseconds, built as a string: Lua numbers are doubles and would be
# printed as 1.7e+15), and any pages left of an evicted version are dropped.
_INIT = """
local v = redis.call('GET', KEYS[1])
if not v then
  local t = redis.call('TIME')
  v = t[1] .. string.format('%06d', tonumber(t[2]))
  redis.call('SET', KEYS[1], v)
  redis.call('UNLINK', KEYS[2])
end
"""
VERSION_LUA = _INIT + "return v\n"
BUMP_LUA = _INIT + """
redis.call('UNLINK', KEYS[2])
return redis.call('INCR', KEYS[1])
"""
# ARGV: tag (decimal), then field, value for each page (one version check for all of them)
PUT_LUA = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
redis.call('HSET', KEYS[2], unpack(ARGV, 2))
return 1
"""
# ARGV: tag (decimal)
INVALIDATE_FILE_LUA = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('UNLINK', KEYS[2]) end
return 0
"""
# ARGV: tag (decimal), field
INVALIDATE_PAGE_LUA = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('HDEL', KEYS[2], ARGV[2]) end
return 0
"""
# KEYS[1] node counter, KEYS[2] members; ARGV: member JSON, previous node id or ''
JOIN_LUA = """
if ARGV[2] ~= '' then redis.call('HDEL', KEYS[2], ARGV[2]) end
local n = redis.call('INCR', KEYS[1])
redis.call('HSET', KEYS[2], n, ARGV[1])
return n
"""
# ARGV: node id. The counter goes with the last member (no live node holds an id).
LEAVE_LUA = """
redis.call('HDEL', KEYS[2], ARGV[1])
if redis.call('HLEN', KEYS[2]) == 0 then redis.call('DEL', KEYS[1]) end
return 1
"""


_NODE_AT = TAG_BYTES + STAMP_BYTES  # where a page value's putter node starts


def _tag_bytes(tag: int, stamp: int) -> bytes:
    """A page value's first bytes: the version and the SRC stamp it was read at."""
    return tag.to_bytes(TAG_BYTES, "big") + stamp.to_bytes(STAMP_BYTES, "big")


def redacted_url(url: str) -> str:
    """`url` with any user name and password (in the authority or the query) replaced by ***."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<unparsable url>"
    netloc = parts.netloc
    if "@" in netloc:
        netloc = "***@" + netloc.rpartition("@")[2]
    query = parts.query
    if query:
        pairs = parse_qsl(query, keep_blank_values=True)
        query = urlencode([(k, "***" if k.lower() in _SECRET_PARAMS else v) for k, v in pairs], safe="/*")
    return _unsplit(parts.scheme, netloc, parts.path, query, parts.fragment)


def _unsplit(scheme: str, netloc: str, path: str, query: str, fragment: str) -> str:
    """urlunsplit that keeps `unix:///path` (urlunsplit drops the empty authority)."""
    return f"{scheme}://{netloc}{path}" + (f"?{query}" if query else "") + (f"#{fragment}" if fragment else "")


def _split_url(url: str) -> tuple[str, str | None, str | None]:
    """(url without credentials, username, password) from a redis URL."""
    parts = urlsplit(url)
    if parts.scheme not in SCHEMES:
        raise ValueError(f"not a redis URL (redis://, rediss://, unix://): {redacted_url(url)}")
    username = unquote(parts.username) if parts.username else None
    password = unquote(parts.password) if parts.password else None
    netloc = parts.netloc.rpartition("@")[2]
    kept = []
    for key, value in parse_qsl(parts.query, keep_blank_values=True):
        if key == "password":
            password = password or value or None
        elif key == "username":
            username = username or value or None
        else:
            kept.append((key, value))
    clean = _unsplit(parts.scheme, netloc, parts.path, urlencode(kept), parts.fragment)
    if parts.scheme != "unix" and not parts.hostname:
        raise ValueError(f"no host in redis URL {redacted_url(url)}")
    if parts.scheme == "unix" and not parts.path:
        raise ValueError(f"no socket path in redis URL {redacted_url(url)}")
    return clean, username, password


class RedisCommandError(StoreUnavailable):
    """Redis answered a command with an error (the store stays up)."""


class RedisOutOfMemory(RedisCommandError):
    """Redis refused a write: maxmemory reached and the policy is noeviction."""


class _Conn:
    """A coredis client held open by a trio system task until close().

    coredis 6 clients run their connections in a task group that lives inside
    `async with client`; the system task is that scope, so the client can be
    used from any task between start() and close().
    """

    def __init__(self, client: Any, cluster: bool) -> None:
        self.client = client
        self.cluster = cluster
        self.fast: RespConnection | None = None  # the page calls' connection (a plain server only)
        self.ready = trio.Event()
        self.done = trio.Event()
        self._scope = trio.CancelScope()
        self.error: BaseException | None = None

    async def start(self, timeout: float) -> None:
        trio.lowlevel.spawn_system_task(self._hold, name="tmemfs redis client")
        with trio.move_on_after(timeout):
            await self.ready.wait()
        if self.done.is_set() or not self.ready.is_set():
            self.close()
            raise self.error or TimeoutError(f"redis client did not start within {timeout} s")

    async def _hold(self) -> None:
        try:
            with self._scope:
                async with self.client:
                    self.ready.set()
                    await trio.sleep_forever()
        except BaseException as exc:  # a system task must never raise (trio would crash)
            if not isinstance(exc, trio.Cancelled):
                self.error = exc
        finally:
            self.done.set()

    @property
    def dead(self) -> bool:
        return self.done.is_set() or (self.fast is not None and self.fast.dead)

    @property
    def failure(self) -> BaseException:
        """Why it died."""
        if self.fast is not None and self.fast.error is not None:
            return self.fast.error
        return self.error or RuntimeError("the redis client task ended")

    def close(self) -> None:
        """Close the client and its connections (requests in flight fail)."""
        self._scope.cancel()
        if self.fast is not None:
            self.fast.close()


class RedisStore(PageStore):
    """A pool in Redis (one server, or Redis Cluster detected at connect time)."""

    bump_flushes = True  # the bump script deletes the file's page hash in the same round trip

    def __init__(self, uuid: bytes, url: str, password: str | None = None, username: str | None = None,
                 node_timeout: float = 5.0, retry_interval: float = 1.0, connect_timeout: float = 0.5,
                 op_timeout: float = 2.0) -> None:
        if len(uuid) != 16:
            raise ValueError("a pool uuid is 16 bytes")
        clean, url_user, url_password = _split_url(url)
        self._url = clean
        self.url = redacted_url(url)
        self._password = password or url_password or os.environ.get(PASSWORD_ENV) or None
        self._username = username or url_user or os.environ.get(USERNAME_ENV) or None
        self.uuid = uuid
        self.node_timeout = node_timeout
        self.retry_interval = retry_interval
        # (A mount takes the default timeouts; the tests shorten or lengthen them around stalled servers.)
        self.connect_timeout = connect_timeout
        self.op_timeout = op_timeout
        u = uuid.hex().encode()
        self._vprefix = b"tmemfs:v:{" + u + b":"
        self._pprefix = b"tmemfs:p:{" + u + b":"
        self._members_key = b"tmemfs:m:{" + u + b"}"
        self._counter_key = b"tmemfs:n:{" + u + b"}"
        self._scan_pattern = b"tmemfs:[vp]:{" + u + b":*"
        self._scripts: dict[str, Script[bytes]] = {name: Script(None, src) for name, src in (
            ("version", VERSION_LUA), ("bump", BUMP_LUA), ("put", PUT_LUA), ("inv_file", INVALIDATE_FILE_LUA),
            ("inv_page", INVALIDATE_PAGE_LUA), ("join", JOIN_LUA), ("leave", LEAVE_LUA))}
        self.node = -1
        self._name: str | None = None
        self._conn: _Conn | None = None
        self._cluster = False
        self._cluster_hint = False  # a MOVED reply seen on a plain connection
        self._closed = False
        self._connecting = False
        self._next_attempt = -math.inf
        self._cancel_streak = 0
        self._failed_attempts = 0
        self._resp = RespCounters()  # the page calls' connections
        self.reset_stats()

    # -- public API ------------------------------------------------------------

    def reset_stats(self) -> None:
        self.store_errors = self.reconnects = self.stale_puts_refused = self.oom_refused = 0
        self.puts = self.gets = self.hits = self.hits_from_others = 0
        self.timeouts = self.unavailable = self.calls = 0
        self._resp.reset()

    @property
    def up(self) -> bool:
        return self._conn is not None and not self._conn.dead

    async def join(self, name: str) -> int:
        """Register as a member; -1 (and `up` False) when Redis cannot be reached now.

        The node joins by itself once the store is back. Bounded by a few
        connect timeouts; never raises for an unreachable store.
        """
        self._name = name
        self._closed = False
        if self._conn is None or self._conn.dead:
            if self._connecting:  # a reconnect is under way: it joins with this name
                return self.node
            self._connecting = True  # one connect at a time (other tasks may call meanwhile)
            try:
                conn, node = await self._connect()
            except BaseException as exc:
                self._connecting = False
                if not isinstance(exc, trio.Cancelled):
                    self._attempt_failed(exc, "join")
                self._ensure_reconnector()
                if isinstance(exc, Exception):
                    return -1
                raise
            self._connecting = False
            self._publish(conn, node)
            return self.node
        conn = self._conn
        try:
            self.node = await self._call(conn, self._register(conn.client, name))
        except StoreUnavailable:
            return -1
        return self.node

    async def heartbeat(self, puts: int, gets: int, hits_from_others: int) -> None:
        conn = self._live()
        if self._name is None:
            return
        if self.node < 0:  # joined while the store was down, or a failed re-join
            self.node = await self._call(conn, self._register(conn.client, self._name))
            return
        # (on the page calls' connection where there is one: no server `timeout` closes it idle)
        node, member = str(self.node), self._member_json(self._name, puts, gets, hits_from_others)
        await self._call(conn, self._command(conn, (b"HSET", self._members_key, node, member),
                                             lambda client: client.hset(self._members_key, {node: member})))

    async def members(self) -> list[Member]:
        conn = self._live()
        entries = await self._call(conn, conn.client.hgetall(self._members_key))
        now = time.time()
        out = []
        for node, raw in entries.items():
            try:
                info = json.loads(raw)
                beat = float(info["heartbeat"])
                out.append(Member(node=int(node), name=str(info["name"]), heartbeat=beat,
                                  alive=now - beat <= self.node_timeout, puts=int(info.get("puts", 0)),
                                  gets=int(info.get("gets", 0)),
                                  hits_from_others=int(info.get("hits_from_others", 0))))
            except (ValueError, KeyError, TypeError):
                continue  # not ours, or damaged: skip it
        return sorted(out, key=lambda m: m.node)

    async def version(self, file: bytes) -> int:
        conn = self._live()
        value = await self._call(conn, self._script(conn, "version", self._file_keys(file), ()))
        return int(value)

    async def bump(self, file: bytes) -> int:
        conn = self._live()
        value = await self._call(conn, self._script(conn, "bump", self._file_keys(file), ()))
        return int(value)

    async def get(self, file: bytes, tag: int, index: int, out: memoryview, stamp: int = 0) -> int | None:
        self.gets += 1
        conn = self._live()
        key = self._pprefix + file.hex().encode() + b"}"
        field = b"%d" % index
        value = await self._call(conn, self._command(conn, (b"HGET", key, field),
                                                     lambda client: client.hget(key, field)))
        return self._page_out(value, out, _tag_bytes(tag, stamp))

    async def get_many(self, file: bytes, tag: int, first: int, outs: list[memoryview],
                       stamp: int = 0) -> list[int | None]:
        """The run in one round trip (HMGET), not one per page."""
        if len(outs) == 1:
            return [await self.get(file, tag, first, outs[0], stamp)]
        self.gets += len(outs)
        conn = self._live()
        key = self._pprefix + file.hex().encode() + b"}"
        fields = [b"%d" % (first + n) for n in range(len(outs))]
        values = await self._call(conn, self._command(conn, (b"HMGET", key, *fields),
                                                      lambda client: client.hmget(key, fields)))
        header = _tag_bytes(tag, stamp)
        return [self._page_out(value, out, header) for value, out in zip(values, outs, strict=True)]

    def _page_out(self, value: bytes | None, out: memoryview, header: bytes) -> int | None:
        """A stored page value into `out` if it is the one asked for (`header`: its version and
        stamp); the node that put it, or None."""
        if value is None or len(value) != HEADER + len(out) or value[:_NODE_AT] != header:
            return None
        out[:] = memoryview(value)[HEADER:]
        putter = int.from_bytes(value[_NODE_AT:HEADER], "big")
        self.hits += 1
        if putter != self.node:
            self.hits_from_others += 1
        return putter

    async def put(self, file: bytes, tag: int, index: int, page: memoryview, stamp: int = 0) -> bool:
        return (await self.put_many(file, tag, [(index, page)], stamp))[0]

    async def put_many(self, file: bytes, tag: int, pages: list[tuple[int, memoryview]],
                       stamp: int = 0) -> list[bool]:
        """Up to PUT_PAGES pages in one script (one round trip), each script's all stored or
        all refused (the version moved, or the server is full under noeviction)."""
        stored: list[bool] = []
        for at in range(0, len(pages), PUT_PAGES):
            some = pages[at : at + PUT_PAGES]
            stored += [await self._put_script(file, tag, some, stamp)] * len(some)
        return stored

    async def _put_script(self, file: bytes, tag: int, pages: list[tuple[int, memoryview]], stamp: int) -> bool:
        conn = self._live()
        header = _tag_bytes(tag, stamp) + max(self.node, 0).to_bytes(NODE_BYTES, "big")
        args = [b"%d" % tag]
        for index, page in pages:
            args += (b"%d" % index, b"".join((header, page)))
        try:
            stored = await self._call(conn, self._script(conn, "put", self._file_keys(file), tuple(args)))
        except RedisOutOfMemory:
            return False
        if stored:
            self.puts += len(pages)
            return True
        self.stale_puts_refused += len(pages)
        return False

    async def invalidate_page(self, file: bytes, tag: int, index: int, stamp: int = 0) -> None:
        conn = self._live()
        await self._call(conn, self._script(conn, "inv_page", self._file_keys(file), (b"%d" % tag, b"%d" % index)))

    async def invalidate_file(self, file: bytes, tag: int | None) -> None:
        """Drop the file's pages: all of them (tag None, one UNLINK), or those under `tag`.

        Pages exist only under the current version (see the module docstring),
        so for a tag this drops the page hash if `tag` is the current version
        and leaves it alone otherwise: nothing of an older tag can be there, and
        pages of a newer version must stay.
        """
        conn = self._live()
        keys = self._file_keys(file)
        if tag is None:
            await self._call(conn, self._command(conn, (b"UNLINK", keys[1]), lambda client: client.unlink([keys[1]])))
        else:
            await self._call(conn, self._script(conn, "inv_file", keys, (b"%d" % tag,)))

    async def clear(self) -> None:
        """Drop every page and version of the pool (SCAN on every primary, then UNLINK).

        Members and the node counter stay: live nodes keep unique ids. Dropped
        versions come back larger than before, so no page tag matches again.
        """
        conn = self._live()
        await self._call(conn, self._clear(conn))

    async def leave(self) -> None:
        """Deregister (best effort) and close the connection; join() opens it again."""
        self._closed = True
        conn, node = self._conn, self.node
        self._name = None
        self.node = -1
        try:
            if conn is not None and not conn.dead and node >= 0:
                with trio.move_on_after(self.op_timeout):
                    await self._call(conn, self._script(conn, "leave", (self._counter_key, self._members_key),
                                                        (b"%d" % node,)))
        except StoreUnavailable as exc:
            log.debug("leaving pool on %s failed: %s", self.url, exc)
        finally:
            await self.close()

    async def close(self) -> None:
        """Stop reconnecting and release the connection (no deregistration)."""
        self._closed = True
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()
            with trio.move_on_after(1.0):
                await conn.done.wait()

    def stats(self) -> dict[str, StatValue]:
        return {
            "store": "redis",
            "url": self.url,
            "state": "up" if self.up else "down",
            "cluster": int(self._cluster),
            "node": self.node,
            "store_errors": self.store_errors,
            "reconnects": self.reconnects,
            "timeouts": self.timeouts,
            "unavailable": self.unavailable,
            "stale_puts_refused": self.stale_puts_refused,
            "oom_refused": self.oom_refused,
            "calls": self.calls,
            "shared_calls": self._resp.shared,
            "puts": self.puts,
            "gets": self.gets,
            "hits": self.hits,
            "hits_from_others": self.hits_from_others,
        }

    # -- keys and commands -------------------------------------------------------

    def _file_keys(self, file: bytes) -> tuple[bytes, bytes]:
        f = file.hex().encode() + b"}"
        return self._vprefix + f, self._pprefix + f

    @staticmethod
    def _command(conn: _Conn, command: tuple[bytes | str, ...], coredis_call: Callable[[Any], Awaitable[Any]]
                 ) -> Awaitable[Any]:
        """`command` on the page calls' connection if `conn` has one, else the same through coredis."""
        if conn.fast is not None:
            return conn.fast.call(*command)
        return coredis_call(conn.client)

    def _script(self, conn: _Conn, name: str, keys: tuple[bytes, ...], args: tuple[bytes, ...]) -> Awaitable[Any]:
        if conn.fast is not None:
            return self._evalsha(conn.fast, self._scripts[name], keys, args, name == "version")
        return self._scripts[name](keys=keys, args=args, client=conn.client)

    @staticmethod
    async def _evalsha(fast: RespConnection, script: Script[bytes], keys: tuple[bytes, ...],
                       args: tuple[bytes, ...], shared: bool = False) -> Any:
        """A script by its digest (loaded at connect), by its text if the server lost it.

        `shared`: concurrent version checks of one file share one command not sent yet
        (RespConnection.call_shared): it runs after each of them started, so each reads
        the version as it is after its read began, as the protocol asks."""
        call = fast.call_shared if shared else fast.call
        try:
            return await call(b"EVALSHA", script.sha, len(keys), *keys, *args)
        except RespError as exc:
            if exc.code != "NOSCRIPT":  # (SCRIPT FLUSH, or a failover to a replica)
                raise
        return await call(b"EVAL", script.script, len(keys), *keys, *args)

    def _member_json(self, name: str, puts: int = 0, gets: int = 0, hits_from_others: int = 0) -> str:
        return json.dumps({"name": name, "heartbeat": time.time(), "puts": puts, "gets": gets,
                           "hits_from_others": hits_from_others})

    async def _register(self, client: Any, name: str) -> int:
        previous = str(self.node) if self.node >= 0 else ""
        node: Any = await self._scripts["join"](keys=(self._counter_key, self._members_key),
                                           args=(self._member_json(name), previous), client=client)
        return int(node)

    async def _clear(self, conn: _Conn) -> None:
        client = conn.client
        if not conn.cluster:
            batch: list[bytes] = []
            async for key in client.scan_iter(match=self._scan_pattern, count=SCAN_COUNT):
                batch.append(key)
                if len(batch) >= SCAN_COUNT:
                    await client.unlink(batch)
                    batch = []
            if batch:
                await client.unlink(batch)
            return
        for node in client.primaries:  # SCAN is per node; UNLINK through the cluster client (per slot)
            async with node:
                cursor: int | None = None
                while cursor != 0:
                    cursor, keys = await node.scan(cursor or 0, self._scan_pattern, SCAN_COUNT)
                    for key in keys:
                        await client.unlink([key])

    # -- connection state ----------------------------------------------------------

    def _live(self) -> _Conn:
        """The open connection, or StoreUnavailable at once (and a reconnect in the background)."""
        conn = self._conn
        if conn is not None and not conn.dead:
            return conn
        if conn is not None:
            self._down(conn, conn.failure)
        self.unavailable += 1
        self._ensure_reconnector()
        raise StoreUnavailable(f"redis store {self.url} is down")

    async def _call(self, conn: _Conn, request: Awaitable[T]) -> T:
        """Await one request on `conn`; failures become StoreUnavailable (the store goes down)
        or RedisCommandError (Redis refused the command; the store stays up)."""
        self.calls += 1
        try:
            result = await request
        except trio.Cancelled:
            self.timeouts += 1
            self._cancel_streak += 1
            if self._cancel_streak >= CANCELS_BEFORE_RESET:
                self._cancel_streak = 0
                self._down(conn, TimeoutError(f"{CANCELS_BEFORE_RESET} calls in a row timed out"))
            raise
        except Exception as exc:
            self._cancel_streak = 0
            moved = self._moved(exc) and not conn.cluster
            if moved:
                self._cluster_hint = True  # MOVED on a plain connection: the server is a cluster node
                log.info("redis store %s is a cluster node (MOVED): connecting as a cluster client", self.url)
            elif self._refused(exc):
                message = f"redis {self.url}: {self._scrub(str(exc))}"
                if str(exc).startswith("OOM"):  # maxmemory reached under noeviction
                    self.oom_refused += 1
                    raise RedisOutOfMemory(message) from None
                self.store_errors += 1
                raise RedisCommandError(message) from None
            self.store_errors += 1
            self._down(conn, exc, retry_now=moved)
            raise StoreUnavailable(f"redis store {self.url} unreachable: {self._describe(exc)}") from None
        self._cancel_streak = 0
        return result

    @staticmethod
    def _moved(exc: Exception) -> bool:
        """A MOVED or ASK reply: the key lives on another node of a Redis Cluster."""
        return isinstance(exc, AskError) or (isinstance(exc, RespError) and exc.code in ("MOVED", "ASK"))

    @staticmethod
    def _refused(exc: Exception) -> bool:
        """Redis answered, and refused this command only (the store stays up)."""
        if isinstance(exc, RespError):
            return exc.code not in _DOWN_REPLIES
        return isinstance(exc, ResponseError) and not isinstance(
            exc, (AuthenticationError, ClusterDownError, TryAgainError, ReadOnlyError, AskError))

    def _down(self, conn: _Conn, exc: BaseException, retry_now: bool = False) -> None:
        """`conn` failed: close it and reconnect after retry_interval (at once after a MOVED)."""
        conn.close()
        if self._conn is not conn:
            return
        self._conn = None
        self._next_attempt = trio.current_time() + (0.0 if retry_now else self.retry_interval)
        log.warning("redis store %s unreachable (%s): every call misses until it is back",
                    self.url, self._describe(exc))
        self._ensure_reconnector()

    def _attempt_failed(self, exc: BaseException, what: str) -> None:
        self.store_errors += 1
        self._failed_attempts += 1
        self._next_attempt = trio.current_time() + self.retry_interval
        if self._failed_attempts == 1 or self._failed_attempts % 60 == 0:
            log.warning("cannot connect to redis store %s for %s (%s; attempt %d), retrying every %.1f s",
                        self.url, what, self._describe(exc), self._failed_attempts, self.retry_interval)

    def _ensure_reconnector(self) -> None:
        if self._connecting or self._closed:
            return
        self._connecting = True
        try:
            trio.lowlevel.spawn_system_task(self._reconnect_loop, name="tmemfs redis reconnect")
        except RuntimeError:  # not in trio.run (a store used after its run ended)
            self._connecting = False

    async def _reconnect_loop(self) -> None:
        try:
            while not self._closed and (self._conn is None or self._conn.dead):
                delay = self._next_attempt - trio.current_time()
                if delay > 0:
                    await trio.sleep(delay)
                if self._closed:
                    return
                try:
                    conn, node = await self._connect()
                except Exception as exc:
                    self._attempt_failed(exc, "reconnect")
                    continue
                if self._closed:  # closed (or left) while connecting: undo the join
                    if node >= 0:
                        with trio.move_on_after(self.op_timeout):
                            try:
                                await self._script(conn, "leave", (self._counter_key, self._members_key),
                                                   (b"%d" % node,))
                            except Exception as exc:
                                log.debug("leaving after a late reconnect failed: %s", self._describe(exc))
                    conn.close()
                    return
                self._publish(conn, node)
                self.reconnects += 1
                log.warning("redis store %s is back (node %d)", self.url, self.node)
        except BaseException as exc:  # a system task must never raise
            if not isinstance(exc, trio.Cancelled):
                log.error("redis reconnect task failed: %s", self._describe(exc))
        finally:
            self._connecting = False

    def _publish(self, conn: _Conn, node: int) -> None:
        self._conn = conn
        self._cluster = conn.cluster
        self._cancel_streak = 0
        self._failed_attempts = 0
        if node >= 0:
            self.node = node

    async def _connect(self) -> tuple[_Conn, int]:
        """Open a client (plain or cluster), check it, and join if a name is set.

        Each step is bounded by connect_timeout; a failure closes what was opened.
        """
        cluster = self._cluster_hint and not self._url.startswith("unix:")
        conn = await self._open(cluster)
        try:
            if not cluster:
                with trio.fail_after(self.connect_timeout):
                    try:
                        info = await conn.client.info("cluster")
                    except ResponseError:  # INFO not allowed (ACL): a MOVED reply will tell
                        info = {}
                if int(info.get("cluster_enabled", 0) or 0) and not self._url.startswith("unix:"):
                    conn.close()
                    conn = await self._open(True)
            else:
                with trio.fail_after(self.connect_timeout):
                    await conn.client.ping()
            with trio.fail_after(self.connect_timeout):
                for script in self._scripts.values():  # spares each script a NOSCRIPT round trip later
                    await conn.client.script_load(script.script)
            if not conn.cluster:
                conn.fast = await self._open_fast(conn.client.connection_pool)
            node = -1
            if self._name is not None:
                with trio.fail_after(self.connect_timeout):
                    node = await self._register(conn.client, self._name)
        except AskError:
            conn.close()
            if cluster or self._url.startswith("unix:"):
                raise
            self._cluster_hint = True  # MOVED on a plain connection (INFO was not allowed)
            log.info("redis store %s is a cluster node (MOVED): connecting as a cluster client", self.url)
            return await self._connect()
        except BaseException:
            conn.close()
            raise
        return conn, node

    async def _open_fast(self, pool: Any) -> RespConnection:
        """The page calls' connection, to exactly where coredis connected (its parse of the
        URL: host and port or socket path, database, TLS context, credentials)."""
        kwargs = pool.connection_kwargs
        location = pool.location
        path = getattr(location, "path", None)
        return await RespConnection.connect(
            None if path is not None else location.host, getattr(location, "port", 0), path,
            kwargs.get("ssl_context"), kwargs.get("username"), kwargs.get("password"), kwargs.get("db"),
            self.connect_timeout, self._resp)

    async def _open(self, cluster: bool) -> _Conn:
        kwargs: dict[str, Any] = {
            "password": self._password, "username": self._username,
            "connect_timeout": self.connect_timeout, "stream_timeout": self.op_timeout,
            "pool_timeout": self.connect_timeout, "retry_policy": NoRetryPolicy(),
            "verify_version": False,
        }
        client: Any
        if cluster:
            parts = urlsplit(self._url)
            client = coredis.RedisCluster.from_url(self._url, startup_nodes=[
                TCPLocation(parts.hostname or "localhost", parts.port or 6379)], **kwargs)
        else:
            client = coredis.Redis.from_url(self._url, **kwargs)
        conn = _Conn(client, cluster)
        await conn.start(self.connect_timeout * (4 if cluster else 1))
        return conn

    # -- never show a credential -------------------------------------------------

    def _scrub(self, text: str) -> str:
        for secret in (self._password, self._username):
            if secret:
                text = text.replace(secret, "***")
        return text

    def _describe(self, exc: BaseException) -> str:
        text = str(exc)
        return type(exc).__name__ + (f": {self._scrub(text)}" if text else "")

