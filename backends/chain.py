"""Chaining (`cleancache=A+B[+C]`), the idea from the 2011 thread Linux never merged.

A put goes to the first member that accepts it; a page a member evicts
spills to the members after it; a get tries the members in order; every
invalidate reaches all of them. The chain owns the one pool-id namespace
the frontend sees and maps each of its pools to one pool per member, so
member ids can never collide (the reason Linux 4.1 forbade a second
backend).

Coherency: a page lives in at most one member. A put that lands in one
member also invalidates the handle in all the others, within the same
request, so no get ever sees two members with different contents for one
handle; with private pools a get that hits member B removes the page from
B (its gets are exclusive).
With a shared member (zcache+cluster, RAMster-like) every key carries the
file's version, so a private member can never serve a page another node
has changed either.

Persistent pools (frontswap's) exist when every member has them, and follow
the same rules: a store goes to the first member that takes it (and is
invalidated in the others; a refused one in all), a load asks each member
(which leaves the page), and no member ever evicts or spills a persistent
page, so it stays in the member that took it until invalidated.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import trio

from backends.base import Backend, FileVersions, StatValue

if TYPE_CHECKING:
    from backends.ram import Spill


class ChainBackend(Backend):
    name = "chain"
    summary = "members tried in order (built by cleancache=A+B)"

    def __init__(self, members: list[Backend]) -> None:
        super().__init__(sum(m.capacity for m in members))
        self.members = members
        self.name = "+".join(m.name for m in members)  # type: ignore[misc]
        self.exclusive_gets = all(m.exclusive_gets for m in members)  # type: ignore[misc]
        self.awaits_io = any(m.awaits_io for m in members)  # type: ignore[misc]
        self.shared = any(m.shared for m in members)  # type: ignore[misc]
        self.peeks = all(m.peeks for m in members)  # type: ignore[misc]
        self.persistent_pools = all(m.persistent_pools for m in members)  # type: ignore[misc]
        self._pools: dict[int, list[int]] = {}
        self._owner: list[dict[int, int]] = [{} for _ in members]  # member pool -> chain pool
        self._next_pool = 0
        for position, member in enumerate(members[:-1]):
            if hasattr(member, "spill"):
                member.spill = self._spiller(position)

    def _spiller(self, position: int) -> Spill:
        async def spill(member_pool: int, key: bytes, index: int, data: bytes) -> None:
            pool = self._owner[position].get(member_pool)
            if pool is None:
                return
            ids = self._pools[pool]
            for later in range(position + 1, len(self.members)):
                if await self.members[later].put_page(ids[later], key, index, memoryview(data)):
                    return

        return spill

    async def create_pool(self, uuid: bytes | None) -> int:
        return self._add_pool([await m.create_pool(uuid) for m in self.members])

    async def create_persistent_pool(self) -> int:
        if not self.persistent_pools:
            raise NotImplementedError(f"{self.name} has no persistent pools (a member lacks them)")
        return self._add_pool([await m.create_persistent_pool() for m in self.members])

    def _add_pool(self, ids: list[int]) -> int:
        """The chain's pool id for one pool in each member."""
        pool = self._next_pool
        self._next_pool += 1
        self._pools[pool] = ids
        for position, member_pool in enumerate(ids):
            self._owner[position][member_pool] = pool
        return pool

    async def put_page(self, pool: int, key: bytes, index: int, page: memoryview) -> bool:
        ids = self._pools[pool]
        stored_in = None
        for position, member in enumerate(self.members):
            if await member.put_page(ids[position], key, index, page):
                stored_in = position
                break
        for position, member in enumerate(self.members):
            if position != stored_in:
                await member.invalidate_page(ids[position], key, index)
        return stored_in is not None

    async def get_page(self, pool: int, key: bytes, index: int, out: memoryview) -> bool:
        ids = self._pools[pool]
        for position, member in enumerate(self.members):
            if await member.get_page(ids[position], key, index, out):
                return True
        return False

    async def peek_pages(self, pool: int, key: bytes, first: int, outs: list[memoryview]) -> list[bool]:
        """Each member in turn for the pages the ones before it did not have."""
        ids = self._pools[pool]
        hits = await self.members[0].peek_pages(ids[0], key, first, outs)
        for position in range(1, len(self.members)):
            for n, hit in enumerate(hits):
                if not hit:
                    hits[n] = (await self.members[position].peek_pages(ids[position], key, first + n, [outs[n]]))[0]
        return hits

    async def invalidate_page(self, pool: int, key: bytes, index: int) -> None:
        for member_pool, member in zip(self._pools[pool], self.members, strict=True):
            await member.invalidate_page(member_pool, key, index)

    async def invalidate_inode(self, pool: int, key: bytes) -> None:
        for member_pool, member in zip(self._pools[pool], self.members, strict=True):
            await member.invalidate_inode(member_pool, key)

    async def destroy_pool(self, pool: int) -> None:
        ids = self._pools.pop(pool)
        for position, (member_pool, member) in enumerate(zip(ids, self.members, strict=True)):
            self._owner[position].pop(member_pool, None)
            await member.destroy_pool(member_pool)

    def versions(self, pool: int) -> FileVersions | None:
        """A shared member's versions cover the whole chain: every member's keys carry them."""
        for member_pool, member in zip(self._pools[pool], self.members, strict=True):
            found = member.versions(member_pool)
            if found is not None:
                return found
        return None

    def check_capacity(self, nbytes: int) -> None:
        """cc_size is per member, as at mount: every member must take the new one."""
        for member in self.members:
            member.check_capacity(nbytes)

    async def set_capacity(self, nbytes: int) -> None:
        """Each member in order: what the first evicts spills to the next, which then makes
        room by its own policy, as on any eviction."""
        self.check_capacity(nbytes)
        for member in self.members:
            await member.set_capacity(nbytes)
        self.capacity = sum(m.capacity for m in self.members)

    async def run(self) -> None:
        async with trio.open_nursery() as nursery:
            for member in self.members:
                nursery.start_soon(member.run)

    def stats(self) -> dict[str, StatValue]:
        return {}

    def named_stats(self) -> dict[str, StatValue]:
        out: dict[str, StatValue] = {}
        seen: dict[str, int] = {}
        for member in self.members:
            seen[member.name] = seen.get(member.name, 0) + 1
            label = member.name if seen[member.name] == 1 else f"{member.name}#{seen[member.name]}"
            out.update({f"{label}.{k}": v for k, v in member.stats().items()})
        return out

    def reset_stats(self) -> None:
        for member in self.members:
            member.reset_stats()

    async def close(self) -> None:
        for member in self.members:
            await member.close()
