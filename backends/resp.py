"""A lean Redis connection for the cluster store's page calls: RESP2, pipelined, on trio.

Why not coredis for these: a coredis command on trio costs 150-270 us of CPU here (anyio
layers, a pool lease under a timeout, a writer task, a cancel scope, retry and telemetry
wrappers per request), about six times a bare RESP exchange. A cluster node makes one or
two such calls per read, so it was CPU-bound with one request in flight (0.75 of a CPU at
QD1), and more requests in flight had no waiting to overlap. coredis still opens each
store, detects a Redis Cluster (and serves one: it routes by slot), and makes the
membership calls; backends/redisstore.py sends the page calls of a plain server here.

Pipelining: a caller queues its command and a reply slot. Alone on the connection it
sends at once (one request at a time pays no hop); with others in flight the writer task
sends at its next turn, with whatever other requests queued meanwhile, in one write. No
call waits for another's reply and no lock is held across a round trip. One reader task
parses the replies in order and hands each to its slot. A caller cut short by its timeout
leaves its slot behind: the reply is read and dropped, so replies stay paired with
requests. A send cut short, a protocol error or a closed socket fail the connection and
every call in flight on it. Identical read-only commands queued together (the version
checks of reads of one file) can share one command: call_shared.
"""

from __future__ import annotations

import ssl
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import trio

RECEIVE_BYTES = 1 << 18
_PENDING: Any = object()  # a slot's value before its reply arrives


class RespError(Exception):
    """An error reply (the server's message, e.g. "OOM command not allowed ...")."""

    @property
    def code(self) -> str:
        """The error's first word (OOM, NOSCRIPT, MOVED, WRONGPASS...)."""
        return str(self).partition(" ")[0]


@dataclass(slots=True)
class RespCounters:
    """What the connections of one owner did (kept across its reconnections)."""

    commands: int = 0  # commands sent: one round trip each, pipelined with the others in flight
    shared: int = 0  # calls answered by an identical command of another call (call_shared)

    def reset(self) -> None:
        self.commands = self.shared = 0


class ConnectionLost(ConnectionError):
    """The connection failed (closed, reset, a send cut short, a reply that does not parse)."""


def encode(args: tuple[bytes | str | int, ...]) -> bytes:
    """One command as a RESP array of bulk strings."""
    parts = [b"*%d\r\n" % len(args)]
    for arg in args:
        if isinstance(arg, int):
            arg = b"%d" % arg
        elif isinstance(arg, str):
            arg = arg.encode()
        parts += (b"$%d\r\n" % len(arg), arg, b"\r\n")
    return b"".join(parts)


def parse(buf: bytes | bytearray, pos: int) -> tuple[Any, int] | None:
    """The reply starting at `pos` and where the next one starts; None if `buf` ends first.

    Simple strings and bulk strings are bytes, a nil is None, an error is a RespError
    (returned, not raised: it is one caller's reply)."""
    end = buf.find(b"\r\n", pos)
    if end < 0:
        return None
    read = _READERS.get(buf[pos])
    if read is None:
        raise ConnectionLost(f"not a RESP2 reply (type byte {buf[pos]:#x})")
    return read(buf, pos, end)


def _bulk_string(buf: bytes | bytearray, pos: int, end: int) -> tuple[Any, int] | None:
    size = int(buf[pos + 1 : end])
    if size < 0:
        return None, end + 2
    stop = end + 2 + size
    if len(buf) < stop + 2:
        return None
    return buf[end + 2 : stop], stop + 2


def _array(buf: bytes | bytearray, pos: int, end: int) -> tuple[Any, int] | None:
    count = int(buf[pos + 1 : end])
    if count < 0:
        return None, end + 2
    items = []
    pos = end + 2
    for _ in range(count):
        item = parse(buf, pos)
        if item is None:
            return None
        items.append(item[0])
        pos = item[1]
    return items, pos


def _integer(buf: bytes | bytearray, pos: int, end: int) -> tuple[Any, int] | None:
    return int(buf[pos + 1 : end]), end + 2


def _simple_string(buf: bytes | bytearray, pos: int, end: int) -> tuple[Any, int] | None:
    return buf[pos + 1 : end], end + 2


def _error(buf: bytes | bytearray, pos: int, end: int) -> tuple[Any, int] | None:
    return RespError(buf[pos + 1 : end].decode(errors="replace")), end + 2


# A reply's first byte says its type: $ bulk string, * array, : integer, + simple string, - error.
_READERS: dict[int, Callable[[bytes | bytearray, int, int], tuple[Any, int] | None]] = {
    0x24: _bulk_string, 0x2A: _array, 0x3A: _integer, 0x2B: _simple_string, 0x2D: _error,
}


class _Slot:
    """Where one reply goes: the task waiting for it (None once it gave up), and the slots of
    calls that share the command (call_shared)."""

    __slots__ = ("followers", "task", "value")

    def __init__(self) -> None:
        self.task: trio.lowlevel.Task | None = None
        self.value: Any = _PENDING
        self.followers: list[_Slot] | None = None

    def abort(self, _raise_cancel: object) -> trio.lowlevel.Abort:
        self.task = None  # the reply will be read and dropped
        return trio.lowlevel.Abort.SUCCEEDED

    def deliver(self, value: Any) -> None:
        self.value = value
        if self.task is not None:
            trio.lowlevel.reschedule(self.task)
            self.task = None
        if self.followers is not None:
            for follower in self.followers:
                follower.deliver(value)


class RespConnection:
    """One connection to one Redis server (not a Redis Cluster); any task may call."""

    def __init__(self, stream: trio.abc.Stream, counters: RespCounters | None = None) -> None:
        self._stream = stream
        self.counters = counters if counters is not None else RespCounters()
        self._out: list[bytes] = []  # commands not sent yet
        self._unsent: dict[bytes, _Slot] = {}  # of those, the ones calls may share, by their bytes
        self._slots: deque[_Slot] = deque()  # one per command sent or queued, in order
        self._sending = False  # a task is sending, or the writer was woken to
        self._wake = trio.Event()  # set: the writer has something to send
        self._reader_scope = trio.CancelScope()
        self._writer_scope = trio.CancelScope()
        self.error: BaseException | None = None
        self.done = trio.Event()  # the reader ended (the socket is closed)

    @classmethod
    async def connect(cls, host: str | None, port: int, path: str | None, ssl_context: ssl.SSLContext | None,
                      username: str | None, password: str | None, db: int | None,
                      timeout: float, counters: RespCounters | None = None) -> RespConnection:
        """Open, authenticate and select `db` (TCP to host:port, or the unix socket `path`),
        all within `timeout`; the reader and the writer run as system tasks until close()."""
        with trio.fail_after(timeout):
            stream: trio.abc.Stream
            if path is not None:
                stream = await trio.open_unix_socket(path)
            else:
                assert host is not None
                stream = await trio.open_tcp_stream(host, port)  # (TCP_NODELAY set)
                if ssl_context is not None:
                    stream = trio.SSLStream(stream, ssl_context, server_hostname=host, https_compatible=True)
            conn = cls(stream, counters)
            trio.lowlevel.spawn_system_task(conn._read, name="tmemfs redis reader")
            trio.lowlevel.spawn_system_task(conn._write, name="tmemfs redis writer")
            try:
                if password:
                    await conn.call(b"AUTH", *((username,) if username else ()), password)
                if db:
                    await conn.call(b"SELECT", db)
            except BaseException:
                conn.close()
                raise
        return conn

    @property
    def dead(self) -> bool:
        return self.error is not None

    def close(self) -> None:
        """Close the socket; calls in flight fail with ConnectionLost."""
        self._fail(ConnectionLost("closed"))

    def call(self, *args: bytes | str | int) -> Awaitable[Any]:
        """Send one command; its reply (an error reply raises RespError)."""
        return self._request(encode(args), None)

    def call_shared(self, *args: bytes | str | int) -> Awaitable[Any]:
        """call() for a command whose reply any caller may take (it only reads, or does the
        same whoever runs it): an identical command queued and not sent yet answers this call
        too. That command reaches the server after this call started, so its reply is as new
        as one sent for this call alone would be."""
        data = encode(args)
        return self._request(data, data)

    async def _request(self, data: bytes, share: bytes | None) -> Any:
        """Queue one encoded command (or join the identical one `share` names), await its reply."""
        if self.error is not None:
            raise ConnectionLost(f"connection failed: {self.error}")
        # A caller cancelled already leaves before queueing anything. It does not yield when not
        # cancelled, so no cancellation can then stop the first attempt to send (trio's send_all
        # checks first as well): a send is only cut short with part of it on the wire when the
        # socket is full, and that fails the connection.
        await trio.lowlevel.checkpoint_if_cancelled()
        slot = _Slot()
        leader = self._unsent.get(share) if share is not None else None
        if leader is not None:
            if leader.followers is None:
                leader.followers = []
            leader.followers.append(slot)
            self.counters.shared += 1
        else:
            self._slots.append(slot)
            self._out.append(data)
            self.counters.commands += 1
            if share is not None:
                self._unsent[share] = slot
            if not self._sending:
                if len(self._slots) > 1:  # others in flight: the writer sends with what they queue
                    self._sending = True
                    self._wake.set()
                else:  # the only one: no hop to the writer
                    await self._send()
        if slot.value is _PENDING:
            slot.task = trio.lowlevel.current_task()
            await trio.lowlevel.wait_task_rescheduled(slot.abort)
        value = slot.value
        if isinstance(value, BaseException):
            raise type(value)(*value.args)  # a fresh exception: the slot's may be raised elsewhere too
        return value

    async def _write(self) -> None:
        """The writer (a system task): sends what callers queued while others were in flight,
        at its next turn, so that the commands of concurrent requests leave in one write."""
        try:
            with self._writer_scope:
                while True:
                    await self._wake.wait()
                    self._wake = trio.Event()
                    await self._send()
        except BaseException as exc:
            self._fail(exc if isinstance(exc, Exception) else ConnectionLost("closed"))

    async def _send(self) -> None:
        """Send what is queued, and what other tasks queue meanwhile."""
        self._sending = True
        try:
            while self._out:
                data = b"".join(self._out) if len(self._out) > 1 else self._out[0]
                self._out.clear()
                self._unsent.clear()  # on its way: too old for calls that start from now on
                await self._stream.send_all(data)
        except BaseException as exc:  # (cancelled too) part of a command may be on the wire
            self._fail(exc if isinstance(exc, Exception) else ConnectionLost("a send was cut short"))
            raise
        finally:
            self._sending = False

    async def _read(self) -> None:
        """The reader (a system task: it must never raise): replies, in order, to their slots."""
        try:
            with self._reader_scope:
                buf: bytes | bytearray = b""
                while True:
                    data = await self._stream.receive_some(RECEIVE_BYTES)
                    if not data:
                        raise ConnectionLost("closed by the server")
                    buf = buf + data if buf else data
                    pos = 0
                    slots = self._slots
                    while (reply := parse(buf, pos)) is not None:
                        value, pos = reply
                        if not slots:
                            raise ConnectionLost("a reply nobody asked for")
                        slots.popleft().deliver(value)
                    buf = buf[pos:] if pos < len(buf) else b""
        except BaseException as exc:
            self._fail(exc if isinstance(exc, Exception) else ConnectionLost("closed"))
        finally:
            with trio.CancelScope(shield=True):
                await trio.aclose_forcefully(self._stream)
            self.done.set()

    def _fail(self, exc: BaseException) -> None:
        """The connection is unusable: every call waiting on it fails, reader and writer stop."""
        if self.error is None:
            self.error = exc
        self._reader_scope.cancel()
        self._writer_scope.cancel()
        lost = ConnectionLost(f"connection failed: {self.error}")
        while self._slots:
            self._slots.popleft().deliver(lost)
        self._out.clear()
        self._unsent.clear()
