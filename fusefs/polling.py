"""Poll for the next FUSE request before going to sleep (the `poll_us=` option).

Why: on a VM, waking a thread that sleeps in epoll_wait takes tens of
microseconds, more than tmemfs spends serving a cached page, and pyfuse3's
session loop passes every request through trio's scheduler (a lock, an
epoll registration, a scheduler round) even when the next request is
already queued. Measured here, that was over half of a cached 4 KiB read.

So after each request the loop first polls /dev/fuse without blocking, for
at most `poll_us` microseconds, giving the CPU away between polls (a client
on the same CPU runs at once), and only then sleeps in trio. An idle mount
costs nothing; a busy one spends up to one CPU polling, which is the price
(set poll_us=0 to turn it off). Every TRIO_EVERY-th wait goes through trio
anyway, so its other tasks (signals, heartbeats) run even when requests
never stop.

With many requests in flight (max_requests=) several of pyfuse3's tasks
wait here at once: one sleeps in trio on /dev/fuse at a time (the others
queue on a lock, as in pyfuse3's own wait), and a task returns only when a
request is there to read (the read that follows cannot block the loop).
While other requests are being served, a task does not spin: it lets trio
run first (their completions wait in its queue), then looks once. That pass
of trio's scheduler costs about 30,000 instructions, yet it pays: the tasks
it lets run read their next requests in the same pass, so their reads of SRC
go out in one io_submit (the virtio kick costs about 26 us). Measured without
it (4k QD16, backing_io=direct): 6.5 reads per submit instead of 11.8 and
more CPU per request, though callgrind counted 10% fewer instructions.

pyfuse3 offers no hook for this. Its session loop looks up the module
coroutine `_wait_fuse_readable` on every request; `install` replaces it
and `uninstall` puts it back. pyfuse3 does not expose its /dev/fuse
descriptor, so it is found in /proc/self/fd. If either is missing (another
pyfuse3 version), nothing is replaced and pyfuse3 waits its own way.
"""

from __future__ import annotations

import functools
import logging
import os
import select
import time
from collections.abc import Awaitable, Callable
from typing import Protocol

import pyfuse3
import trio

log = logging.getLogger("tmemfs.polling")

TRIO_EVERY = 64  # waits between two that go through trio's scheduler
MAX_POLL_US = 10_000


def fuse_device_fd() -> int | None:
    """This process's /dev/fuse descriptor, if it holds exactly one."""
    found = []
    for name in os.listdir("/proc/self/fd"):
        try:
            if os.readlink(f"/proc/self/fd/{name}") == "/dev/fuse":
                found.append(int(name))
        except OSError:
            continue  # the descriptor of the listing itself, gone already
    return found[0] if len(found) == 1 else None


class RequestCount(Protocol):
    in_flight: int


class RequestPoller:
    """pyfuse3's wait for the next request, polling first (see the module docstring)."""

    def __init__(self, poll_us: int) -> None:
        self.poll_us = poll_us
        self._budget_ns = poll_us * 1000
        self._poll = select.poll()
        self._request_waiting = functools.partial(self._poll.poll, 0)  # a non-empty list if one is
        self._fd = -1
        self._since_trio = 0
        self._original: Callable[[], Awaitable[bool]] | None = None
        self._sleep_lock = trio.Lock()  # one task sleeps on /dev/fuse at a time
        self._closing = False
        # What counts the requests being served (the handlers count themselves in and out of
        # SrcIO.in_flight); None: never any.
        self.requests: RequestCount | None = None
        # Work for the pause between requests; it gets a callable that tells whether one is waiting.
        self.idle: Callable[[Callable[[], object]], Awaitable[None]] | None = None
        self.reset_stats()

    def reset_stats(self) -> None:
        self.polled = 0  # requests found by polling
        self.slept = 0  # waits that went to trio (nothing came within the budget, or their turn)

    def install(self) -> bool:
        """Take over pyfuse3's wait (after pyfuse3.init); False if it cannot be done here."""
        original = getattr(pyfuse3, "_wait_fuse_readable", None)
        fd = fuse_device_fd()
        if self.poll_us <= 0 or original is None or fd is None:
            if self.poll_us > 0:
                log.warning("poll_us=%d: cannot hook this pyfuse3 (%s); requests are awaited without polling",
                            self.poll_us, "no /dev/fuse descriptor" if fd is None else "no _wait_fuse_readable")
            return False
        self._fd = fd
        self._poll.register(fd, select.POLLIN)
        self._original = original
        pyfuse3._wait_fuse_readable = self.wait  # type: ignore[attr-defined]
        return True

    def uninstall(self) -> None:
        if self._original is not None:
            pyfuse3._wait_fuse_readable = self._original  # type: ignore[attr-defined]
            self._original = None
            self._poll.unregister(self._fd)

    async def wait(self) -> bool:
        """True when /dev/fuse has a request (or an error to read), False when the loop must end."""
        poll = self._poll.poll
        if self.requests is not None and self.requests.in_flight:
            await trio.lowlevel.checkpoint()  # other requests' completions run first
            if poll(0):
                self.polled += 1
                return True
            return await self._sleep()
        self._since_trio += 1
        if self._since_trio < TRIO_EVERY:
            if poll(0):  # the common case under load: one look, no idle work
                self.polled += 1
                return True
            if self.idle is not None:  # nothing waiting: do the idle work first
                await self.idle(self._request_waiting)
            now = time.perf_counter_ns
            deadline = now() + self._budget_ns
            while True:
                if poll(0):
                    self.polled += 1
                    return True
                if now() >= deadline:
                    break
                os.sched_yield()
        self._since_trio = 0
        return await self._sleep()

    async def _sleep(self) -> bool:
        self.slept += 1
        async with self._sleep_lock:
            while not self._closing and not self._poll.poll(0):  # another task may have read the request
                try:
                    await trio.lowlevel.wait_readable(self._fd)
                except trio.ClosedResourceError:  # pyfuse3.terminate(): unmounting
                    self._closing = True
        return not self._closing

    def stats(self) -> dict[str, int]:
        return {"fuse.poll_us": self.poll_us if self._original is not None else 0,
                "fuse.polled": self.polled, "fuse.slept": self.slept}
