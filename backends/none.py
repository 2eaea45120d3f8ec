"""The `none` backend: stores nothing, so every get misses. The baseline."""

from __future__ import annotations

from backends.base import Backend, StatValue


class NoneBackend(Backend):
    name = "none"
    summary = "stores nothing; every get misses (the baseline)"

    async def create_pool(self, uuid: bytes | None) -> int:
        return 0

    async def put_page(self, pool: int, key: bytes, index: int, page: memoryview) -> bool:
        return False

    async def get_page(self, pool: int, key: bytes, index: int, out: memoryview) -> bool:
        return False

    async def invalidate_page(self, pool: int, key: bytes, index: int) -> None:
        pass

    async def invalidate_inode(self, pool: int, key: bytes) -> None:
        pass

    async def destroy_pool(self, pool: int) -> None:
        pass

    def stats(self) -> dict[str, StatValue]:
        return {}
