"""Unit tests of the cleancache frontend: the tmem rules hold whatever the backend does, runs of
pages are one backend call, and a peek racing other requests stays right."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import pytest
import trio

from backends.base import Backend, StatValue
from backends.tmem import TmemBackend
from fusefs.cleancache import Cleancache
from tests.unithelpers import ENTRY, PAGE, CountingTmem, page


class LyingBackend(TmemBackend):
    """Keeps pages after a get, returns stale or corrupt data, or raises: all at will."""

    exclusive_gets = True  # claims it, does not do it
    mode = "honest"

    async def get_page(self, pool: int, key: bytes, index: int, out: memoryview) -> bool:
        if self.mode == "raise":
            raise RuntimeError("injected fault")
        ram_pool = self._pools.get(pool)
        data = ram_pool.files.get(key, {}).get(index) if ram_pool is not None else None
        if data is None:
            return False
        assert isinstance(data, bytes)  # tmem keeps pages as they are
        out[:] = data if self.mode != "corrupt" else bytes(PAGE)
        return True  # never drops the copy

    async def put_page(self, pool: int, key: bytes, index: int, page: memoryview) -> bool:
        if self.mode == "raise":
            raise RuntimeError("injected fault")
        if self.mode == "ignore_dup" and index in self._pools[pool].files.get(key, {}):
            return True  # pretends to store the new version, keeps the old one
        return await super().put_page(pool, key, index, page)


async def frontend(mode: str) -> tuple[Cleancache, LyingBackend, int]:
    backend = LyingBackend(16 * ENTRY)
    cc = Cleancache(backend)
    pool = await cc.init_fs()
    backend.mode = mode
    return cc, backend, pool


async def test_frontend_makes_gets_exclusive_and_get_get_hold() -> None:
    cc, _, pool = await frontend("honest")
    out = memoryview(bytearray(PAGE))
    await cc.put_page(pool, b"f", 0, page(7))
    assert await cc.get_page(pool, b"f", 0, out) and bytes(out) == bytes(page(7))
    assert not await cc.get_page(pool, b"f", 0, out)  # the backend kept it; the frontend says miss
    assert (cc.succ_gets, cc.failed_gets) == (1, 1)


async def test_frontend_enforces_put_put_get() -> None:
    cc, _, pool = await frontend("ignore_dup")
    out = memoryview(bytearray(PAGE))
    await cc.put_page(pool, b"f", 0, page(1))
    await cc.put_page(pool, b"f", 0, page(2))
    assert not await cc.get_page(pool, b"f", 0, out)  # the old version is never returned
    assert cc.verify_failures == 1


async def test_frontend_rejects_corrupt_pages() -> None:
    cc, backend, pool = await frontend("honest")
    out = memoryview(bytearray(PAGE))
    await cc.put_page(pool, b"f", 0, page(5))
    backend.mode = "corrupt"
    assert not await cc.get_page(pool, b"f", 0, out)
    assert cc.verify_failures == 1 and cc.failed_gets == 1


async def test_frontend_contains_backend_exceptions() -> None:
    cc, backend, pool = await frontend("honest")
    out = memoryview(bytearray(PAGE))
    await cc.put_page(pool, b"f", 0, page(5))
    backend.mode = "raise"
    assert not await cc.get_page(pool, b"f", 0, out)
    await cc.put_page(pool, b"f", 1, page(6))
    assert cc.backend_errors == 2
    backend.mode = "honest"
    assert not await cc.get_page(pool, b"f", 1, out)  # the failed put stored nothing


async def test_frontend_invalidate_inode_reaches_backend() -> None:
    cc, backend, pool = await frontend("honest")
    out = memoryview(bytearray(PAGE))
    for index in range(4):
        await cc.put_page(pool, b"f", index, page(index))
    await cc.invalidate_inode(pool, b"f")
    assert backend.stats()["stored_pages"] == 0
    assert not await cc.get_page(pool, b"f", 2, out)
    await cc.invalidate_fs(pool)
    assert not await cc.get_page(pool, b"f", 2, out)


class BrokenPoolBackend(Backend):
    name = "broken"

    async def create_pool(self, uuid: bytes | None) -> int:
        raise ConnectionError("store unreachable")

    async def put_page(self, pool, key, index, page):  # type: ignore[no-untyped-def]
        raise AssertionError("never called for a placeholder pool")

    get_page = invalidate_page = invalidate_inode = destroy_pool = put_page  # type: ignore[assignment]

    def stats(self) -> dict[str, StatValue]:
        return {}


async def test_unreachable_backend_gives_a_placeholder_pool() -> None:
    cc = Cleancache(BrokenPoolBackend(PAGE))
    pool = await cc.init_fs()
    out = memoryview(bytearray(PAGE))
    await cc.put_page(pool, b"f", 0, page(1))
    assert not await cc.get_page(pool, b"f", 0, out)
    assert cc.stats()["cleancache.placeholder_pools"] == 1 and cc.backend_errors == 1


async def test_shared_pool_uuid_must_be_16_bytes() -> None:
    cc = Cleancache(TmemBackend(PAGE))
    with pytest.raises(ValueError):
        await cc.init_shared_fs(b"\x01" * 4)


# -- runs of pages: one backend call, the same rules -------------------------------------
async def test_a_run_of_pages_is_one_backend_call_and_gets_stay_exclusive() -> None:
    backend = CountingTmem(64 * ENTRY)
    cc = Cleancache(backend)
    pool = await cc.init_fs()
    await cc.put_pages(pool, [(b"f", n, page(n)) for n in range(8) if n != 5])
    assert backend.calls == {"put_pages": 1} and cc.puts == 7
    outs = [memoryview(bytearray(PAGE)) for _ in range(8)]
    hits = await cc.get_pages(pool, b"f", 0, outs)
    # Page 5 was never put: the frontend does not ask for it, so two runs, two calls.
    assert hits == [n != 5 for n in range(8)] and backend.calls["get_pages"] == 2
    assert all(bytes(outs[n]) == bytes(page(n)) for n in range(8) if n != 5)
    assert (cc.succ_gets, cc.failed_gets) == (7, 1)
    assert await cc.get_pages(pool, b"f", 0, outs) == [False] * 8  # used up: get-get
    assert backend.calls["get_pages"] == 2 and backend.stats()["stored_pages"] == 0


async def test_a_run_keeps_the_rules_on_a_backend_that_lies() -> None:
    """LyingBackend customises get_page and put_page: runs go through them page by page,
    and the frontend still refuses kept copies, old versions and corrupt pages."""
    assert LyingBackend.get_pages is Backend.get_pages and LyingBackend.put_pages is Backend.put_pages
    cc, backend, pool = await frontend("honest")
    outs = [memoryview(bytearray(PAGE)) for _ in range(4)]
    await cc.put_pages(pool, [(b"f", n, page(n + 1)) for n in range(4)])
    assert await cc.get_pages(pool, b"f", 0, outs) == [True] * 4
    assert await cc.get_pages(pool, b"f", 0, outs) == [False] * 4  # the backend kept them all
    await cc.put_pages(pool, [(b"f", n, page(n + 1)) for n in range(4)])
    backend.mode = "corrupt"
    assert await cc.get_pages(pool, b"f", 0, outs) == [False] * 4
    assert cc.verify_failures == 4
    backend.mode = "raise"
    await cc.put_pages(pool, [(b"f", n, page(10 + n)) for n in range(4)])
    backend.mode = "honest"
    assert await cc.get_pages(pool, b"f", 0, outs) == [False] * 4  # a failed run stored nothing


# -- a peek takes no page lock: other requests run while the backend answers ----------------


class PausedPeekTmem(TmemBackend):
    """tmem whose peeks wait until `answer` is set (a backend awaiting I/O): with the pages
    copied already (`copy_first`), or copying them only then, as a store's reply arrives after
    the requests that ran meanwhile."""

    awaits_io = True

    def __init__(self, capacity: int, copy_first: bool) -> None:
        super().__init__(capacity)
        self.copy_first = copy_first
        self.answer = trio.Event()
        self.peeked = trio.Event()

    async def peek_pages(self, pool: int, key: bytes, first: int, outs: list[memoryview]) -> list[bool]:
        hits = await super().peek_pages(pool, key, first, outs) if self.copy_first else []
        self.peeked.set()
        await self.answer.wait()
        return hits if self.copy_first else await super().peek_pages(pool, key, first, outs)


async def copy_while(backend: PausedPeekTmem, meanwhile: Callable[[Cleancache, int], Awaitable[None]],
                     ) -> tuple[Cleancache, int, list[memoryview], list[bool] | None]:
    """Pages 0..3 put into a private pool, then copied (the sequential bypass) while `meanwhile`
    runs with the peek waiting: the frontend, the pool, the copies and what copy_pages said."""
    cc = Cleancache(backend, timeout=30)
    pool = await cc.init_fs()
    await cc.put_pages(pool, [(b"f", n, page(n)) for n in range(4)])
    outs = [memoryview(bytearray(PAGE)) for _ in range(4)]
    got: list[list[bool] | None] = []

    async def copy() -> None:
        got.append(await cc.copy_pages(pool, b"f", 0, outs, 2))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(copy)
        await backend.peeked.wait()
        await meanwhile(cc, pool)
        backend.answer.set()
    return cc, pool, outs, got[0]


async def test_a_copy_survives_a_get_of_its_pages_while_the_backend_answers() -> None:
    """A peek of a backend that awaits I/O lets other requests run: one of them may take a
    page of the run (an exclusive get) before the peek answers. The copy is verified against
    the digest the ledger had when it asked, not looked up again (a KeyError, EIO, before)."""

    async def get_page_1(cc: Cleancache, pool: int) -> None:
        taken = memoryview(bytearray(PAGE))
        assert await cc.get_pages(pool, b"f", 1, [taken]) == [True]  # exclusive: out of the ledger

    cc, _pool, outs, got = await copy_while(PausedPeekTmem(64 * ENTRY, copy_first=True), get_page_1)
    assert got == [True] * 4 and [bytes(o) for o in outs] == [bytes(page(n)) for n in range(4)]
    assert cc.backend_errors == cc.verify_failures == 0


@pytest.mark.parametrize("meanwhile", ["put anew", "got and put anew", "invalidated"])
async def test_a_peek_that_sees_a_page_replaced_meanwhile_is_a_miss_not_a_fault(meanwhile: str) -> None:
    """A peek takes no page lock: while the backend answers, another request may get,
    invalidate or put anew a page of the run, and the backend then rightly answers with the
    newer bytes. That page is a miss for the peek, counted as a race (not as a backend that
    lied), and the newer copy stays in the pool for the next get."""

    async def change_page_1(cc: Cleancache, pool: int) -> None:
        if meanwhile == "got and put anew":
            assert await cc.get_page(pool, b"f", 1, memoryview(bytearray(PAGE)))
        if meanwhile == "invalidated":
            await cc.invalidate_page(pool, b"f", 1)
        else:
            await cc.put_page(pool, b"f", 1, page(99))

    cc, pool, outs, got = await copy_while(PausedPeekTmem(64 * ENTRY, copy_first=False), change_page_1)
    assert got == [True, False, True, True]
    assert [bytes(outs[n]) for n in (0, 2, 3)] == [bytes(page(n)) for n in (0, 2, 3)]
    assert cc.verify_failures == 0 and cc.peek_races == (meanwhile != "invalidated")
    out = memoryview(bytearray(PAGE))
    assert await cc.get_page(pool, b"f", 1, out) == (meanwhile != "invalidated")
    if meanwhile != "invalidated":
        assert bytes(out) == bytes(page(99))  # the newer copy was not dropped
