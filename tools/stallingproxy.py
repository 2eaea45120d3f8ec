"""A TCP proxy that stalls connections until released: a slow join to a Redis store.

    with StallingProxy(6379) as proxy:   # proxy.url: redis://127.0.0.1:PORT/0
        ...                              # connections are accepted and left unanswered
        proxy.release()                  # from now on (and for those waiting) bytes flow

    StallingProxy(6379, delay=0.2)       # a slow link: every reply arrives 0.2 s late, replies
                                         # to requests sent together together (a delay line)

Used by the tests and by `python -m tools.coherency --slow-join`. Threads only (no
event loop), all of them ended by close().
"""

from __future__ import annotations

import selectors
import socket
import threading
import time
from collections import deque


class StallingProxy:
    """A TCP proxy that holds every connection unanswered until release(), then forwards it:
    a Redis store that one node reaches but cannot join for as long as a test or the
    coherency checker likes (a slow join), while other nodes use the server directly."""

    def __init__(self, target_port: int, target_host: str = "127.0.0.1", delay: float = 0.0) -> None:
        self.target = (target_host, target_port)
        self.delay = delay  # what the server's bytes wait before they go on (each chunk from its arrival)
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = int(self._listener.getsockname()[1])
        self._released = threading.Event()
        self._closed = threading.Event()
        self._threads: list[threading.Thread] = []
        self._spawn(self._accept)

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def release(self) -> None:
        self._released.set()

    def __enter__(self) -> StallingProxy:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._closed.set()
        self._released.set()
        self._listener.close()
        for thread in self._threads:
            thread.join(timeout=5)

    def _spawn(self, target: object, *args: object) -> None:
        thread = threading.Thread(target=target, args=args, daemon=True)  # type: ignore[arg-type]
        self._threads.append(thread)
        thread.start()

    def _accept(self) -> None:
        while not self._closed.is_set():
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            self._spawn(self._pump, client)

    def _pump(self, client: socket.socket) -> None:
        with client:
            self._released.wait()
            if self._closed.is_set():
                return
            try:
                upstream = socket.create_connection(self.target, timeout=5)
            except OSError:
                return
            with upstream, selectors.DefaultSelector() as sel:
                sel.register(client, selectors.EVENT_READ, upstream)
                sel.register(upstream, selectors.EVENT_READ, client)
                late: deque[tuple[float, bytes]] = deque()  # the server's bytes on their way, when due
                while not self._closed.is_set():
                    wait = 0.2 if not late else min(0.2, max(0.0, late[0][0] - time.monotonic()))
                    try:
                        for key, _ in sel.select(timeout=wait):
                            data = key.fileobj.recv(65536)  # type: ignore[union-attr]
                            if not data:
                                return
                            if key.fileobj is upstream and self.delay > 0:
                                late.append((time.monotonic() + self.delay, data))
                            else:
                                key.data.sendall(data)
                        while late and late[0][0] <= time.monotonic():
                            client.sendall(late.popleft()[1])
                    except OSError:
                        return
