"""Backends that misbehave on purpose, registered through the entry-point group.

The suite puts tests/plugins on PYTHONPATH of the tmemfs it starts, so
these load exactly as a third-party plugin would.
"""

from __future__ import annotations

import time
from typing import ClassVar

import trio

from backends.base import OptionSpec
from backends.dedup import DedupBackend
from backends.tmem import TmemBackend

FAULTS = ("raise", "corrupt", "stall", "block", "flaky", "stale", "yield")


def parse_fault(text: str) -> str:
    if text not in FAULTS:
        raise ValueError(f"one of {', '.join(FAULTS)}")
    return text


class FaultyBackend(TmemBackend):
    """tmem that raises, corrupts, stalls, blocks or returns stale pages (`fault=`), on
    gets and peeks alike; or (`yield`) that lets other requests run in the middle of every
    put and get, as a remote store does, with no fault: a private pool on which puts,
    gets and invalidates of other requests interleave."""

    name = "faulty"
    summary = "test only: tmem with injected faults"
    options: ClassVar[dict[str, OptionSpec]] = {
        **TmemBackend.options, "fault": OptionSpec(parse_fault, "|".join(FAULTS)),
    }
    awaits_io = True  # pretend to be a remote store, so the frontend bounds its calls
    exclusive_gets = False  # and keep pages after a get, which the frontend must handle

    def __init__(self, capacity: int, fault: str = "raise", cc_policy: str = "lru") -> None:
        super().__init__(capacity, cc_policy)
        self.fault = fault
        self.calls = 0
        self.first: dict[tuple[int, bytes, int], bytes] = {}

    async def put_page(self, pool: int, key: bytes, index: int, page: memoryview) -> bool:
        self.calls += 1
        if self.fault == "raise" or (self.fault == "flaky" and self.calls % 3 == 0):
            raise RuntimeError("injected put fault")
        if self.fault == "stale":  # keeps the first version ever put under a handle
            self.first.setdefault((pool, key, index), bytes(page))
        if self.fault == "yield":
            await trio.sleep(0)
        return await super().put_page(pool, key, index, page)

    async def get_page(self, pool: int, key: bytes, index: int, out: memoryview) -> bool:
        return await self._get_with_faults(pool, key, index, out, False)

    async def peek_pages(self, pool: int, key: bytes, first: int, outs: list[memoryview]) -> list[bool]:
        """Peeks (the sequential bypass) fail the same ways as gets."""
        return [await self._get_with_faults(pool, key, first + n, out, True) for n, out in enumerate(outs)]

    async def _get_with_faults(self, pool: int, key: bytes, index: int, out: memoryview, peek: bool) -> bool:
        self.calls += 1
        if self.fault == "raise" or (self.fault == "flaky" and self.calls % 3 == 0):
            raise RuntimeError("injected get fault")
        if self.fault == "stall":
            await trio.sleep(30)  # a hung store: the frontend's timeout must cut it
        if self.fault == "block":
            time.sleep(0.002)  # a slow but working store
        if self.fault == "yield":
            await trio.sleep(0)
        old = self.first.get((pool, key, index))
        if peek:
            hit = (await super().peek_pages(pool, key, index, [out]))[0]
        else:
            hit = await super().get_page(pool, key, index, out)
        if hit and self.fault == "corrupt":
            out[:16] = b"\xde\xad\xbe\xef" * 4
        if self.fault == "stale" and old is not None:
            out[:] = old
            return True
        return hit


class WeakHashDedup(DedupBackend):
    """dedup whose index hash collides for every page: only the byte compare stands
    between a get and another page's data."""

    name = "weakdedup"
    summary = "test only: dedup with a constant hash"

    @staticmethod
    def digest(page: memoryview) -> bytes:
        return bytes(16)
