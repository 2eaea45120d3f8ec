"""A TCP proxy that stalls connections until released: a slow join to a Redis store.

    with StallingProxy(6379) as proxy:   # proxy.url: redis://127.0.0.1:PORT/0
        ...                              # connections are accepted and left unanswered
        proxy.release()                  # from now on (and for those waiting) bytes flow

Used by the tests and by `python -m tools.coherency --slow-join`. Threads only (no
event loop), all of them ended by close().
"""

from __future__ import annotations

import selectors
import socket
import threading


class StallingProxy:
    """A TCP proxy that holds every connection unanswered until release(), then forwards it:
    a Redis store that one node reaches but cannot join for as long as a test or the
    coherency checker likes (a slow join), while other nodes use the server directly."""

    def __init__(self, target_port: int, target_host: str = "127.0.0.1") -> None:
        self.target = (target_host, target_port)
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
                while not self._closed.is_set():
                    for key, _ in sel.select(timeout=0.2):
                        try:
                            data = key.fileobj.recv(65536)  # type: ignore[union-attr]
                            if not data:
                                return
                            key.data.sendall(data)
                        except OSError:
                            return
