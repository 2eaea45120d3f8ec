"""Frontswap (fusefs/frontswap.py): swap files whose pages live in a persistent pool.

The rules on a small fake backend (faults, lost and changed pages, a store racing a
load), the file side through real mounts, and real swap: a loop device on the mount,
mkswap, swapon, a child process whose memory is pushed out and read back.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import trio
import trio.testing

from backends.base import Backend, StatValue
from fusefs.cleancache import Cleancache
from fusefs.frontswap import Frontswap, SwapArea
from fusefs.srcio import SrcIO
from tests.conftest import TMEMFS

PAGE = 4096
AREA = b"area"


class FakeBackend(Backend):
    """Persistent pages in a dict; a put may be parked on `gate`, refused, or fail; a get may lose or change."""

    name = "fake"
    persistent_pools = True
    awaits_io = False

    def __init__(self) -> None:
        super().__init__(1 << 20)
        self.pages: dict[tuple[int, bytes, int], bytes] = {}
        self.gate: trio.Event | None = None  # a put waits for it (then the backend awaits I/O)
        self.refuse = self.fail = False
        self.pools = 0

    async def create_pool(self, uuid: bytes | None) -> int:
        self.pools += 1
        return self.pools

    async def create_persistent_pool(self) -> int:
        return await self.create_pool(None)

    async def put_page(self, pool: int, key: bytes, index: int, page: memoryview) -> bool:
        self.pages.pop((pool, key, index), None)
        if self.gate is not None:
            await self.gate.wait()
        if self.fail:
            raise RuntimeError("injected store fault")
        if self.refuse:
            return False
        self.pages[(pool, key, index)] = bytes(page)
        return True

    async def get_page(self, pool: int, key: bytes, index: int, out: memoryview) -> bool:
        page = self.pages.get((pool, key, index))
        if page is None:
            return False
        out[:] = page
        return True

    async def invalidate_page(self, pool: int, key: bytes, index: int) -> None:
        self.pages.pop((pool, key, index), None)

    async def invalidate_inode(self, pool: int, key: bytes) -> None:
        for handle in [h for h in self.pages if h[:2] == (pool, key)]:
            del self.pages[handle]

    async def destroy_pool(self, pool: int) -> None:
        for handle in [h for h in self.pages if h[0] == pool]:
            del self.pages[handle]

    def stats(self) -> dict[str, StatValue]:
        return {"stored_pages": len(self.pages)}


def page(n: int) -> bytes:
    return bytes([n % 251 + 1]) * PAGE


def setup(tmp_path: Path, pages: int = 8) -> tuple[FakeBackend, Cleancache, Frontswap, SwapArea, Path]:
    backend = FakeBackend()
    cc = Cleancache(backend)
    fs = Frontswap(cc, SrcIO(threads=1), lambda n: None, lambda n: None)
    path = tmp_path / "swapfile"
    path.write_bytes(bytes(pages * PAGE))
    fd = os.open(path, os.O_RDONLY)
    try:
        area = fs.open(AREA, fd)
    finally:
        os.close(fd)
    return backend, cc, fs, area, path


async def test_store_load_and_put_put_get(tmp_path: Path) -> None:
    backend, _cc, fs, area, path = setup(tmp_path)
    assert await fs.write(area, 0, page(1) + page(2)) == 2 * PAGE
    assert await fs.write(area, 0, page(3)) == PAGE  # overwrite: only the latest is returned
    assert bytes(await fs.read(area, 0, 2 * PAGE)) == page(3) + page(2)
    assert path.read_bytes() == bytes(8 * PAGE)  # nothing reached SRC
    assert set(fs.stored(AREA)) == {0, 1}
    backend.refuse = True  # a refused store drops the old copy and goes to SRC
    await fs.write(area, PAGE, page(4))
    assert set(fs.stored(AREA)) == {0}
    assert path.read_bytes()[PAGE : 2 * PAGE] == page(4)
    assert bytes(await fs.read(area, PAGE, PAGE)) == page(4)
    stats = fs.stats()
    assert [stats[f"frontswap.{k}"] for k in ("succ_stores", "failed_stores", "stored_pages")] == [3, 1, 1]


async def test_store_fault_goes_to_src(tmp_path: Path) -> None:
    backend, cc, fs, area, path = setup(tmp_path)
    backend.fail = True
    await fs.write(area, 2 * PAGE, page(5))
    assert path.read_bytes()[2 * PAGE : 3 * PAGE] == page(5)
    assert not fs.stored(AREA) and cc.backend_errors == 1


@pytest.mark.parametrize("damage", ["lost", "changed"])
async def test_page_that_cannot_be_returned_is_eio_until_rewritten(tmp_path: Path, damage: str) -> None:
    backend, _cc, fs, area, _path = setup(tmp_path)
    await fs.write(area, 0, page(1))
    handle = next(iter(backend.pages))
    if damage == "lost":
        del backend.pages[handle]
    else:
        backend.pages[handle] = page(9)
    for _ in range(2):  # never SRC's zeroes, never other bytes: EIO, again and again
        with pytest.raises(OSError) as info:
            await fs.read(area, 0, PAGE)
        assert info.value.errno == 5
    with pytest.raises(OSError):  # a partial write cannot merge with a page it does not have
        await fs.write(area, 10, b"x")
    await fs.write(area, 0, page(2))  # a whole page rewrites it
    assert bytes(await fs.read(area, 0, PAGE)) == page(2)
    assert fs.stats()["frontswap.load_errors"] == 3


async def test_partial_write_writes_the_stored_page_back(tmp_path: Path) -> None:
    _backend, _cc, fs, area, path = setup(tmp_path)
    await fs.write(area, PAGE, page(1))
    await fs.write(area, PAGE + 100, b"hello")
    expected = bytearray(page(1))
    expected[100:105] = b"hello"
    assert path.read_bytes()[PAGE : 2 * PAGE] == expected
    assert not fs.stored(AREA)
    assert bytes(await fs.read(area, PAGE, PAGE)) == expected


async def test_load_racing_a_store_gets_a_whole_page(tmp_path: Path) -> None:
    """The store of B over A parks inside the backend; a load of that page meanwhile must
    wait for it (the page lock), not find the slot empty and read SRC's zeroes."""
    backend, _cc, fs, area, _path = setup(tmp_path)
    await fs.write(area, 0, page(1))
    backend.gate = trio.Event()
    got: list[bytes] = []
    async with trio.open_nursery() as nursery:
        nursery.start_soon(fs.write, area, 0, page(2))
        await trio.testing.wait_all_tasks_blocked()

        async def load() -> None:
            got.append(bytes(await fs.read(area, 0, PAGE)))

        nursery.start_soon(load)
        await trio.testing.wait_all_tasks_blocked()
        backend.gate.set()
    assert got == [page(2)]


async def test_other_pages_are_not_held_up(tmp_path: Path) -> None:
    """Per-page locks: a load of another page goes on while a store is parked."""
    backend, _cc, fs, area, _path = setup(tmp_path)
    await fs.write(area, PAGE, page(7))
    backend.gate = trio.Event()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(fs.write, area, 0, page(2))
        await trio.testing.wait_all_tasks_blocked()
        assert bytes(await fs.read(area, PAGE, PAGE)) == page(7)
        backend.gate.set()


async def test_unregister_and_flush_write_back_first(tmp_path: Path) -> None:
    backend, cc, fs, area, path = setup(tmp_path)
    await fs.write(area, 0, page(1) + page(2))
    await fs.flush()
    assert path.read_bytes()[: 2 * PAGE] == page(1) + page(2) and not fs.stored(AREA)
    await fs.write(area, 2 * PAGE, page(3))
    assert path.read_bytes()[2 * PAGE : 3 * PAGE] == bytes(PAGE)
    await cc.unregister()
    assert path.read_bytes()[2 * PAGE : 3 * PAGE] == page(3)
    assert not backend.pages and not fs.stored(AREA)
    assert bytes(await fs.read(area, 0, 3 * PAGE)) == page(1) + page(2) + page(3)
    await fs.write(area, 0, page(4))  # no backend: to SRC
    assert path.read_bytes()[:PAGE] == page(4)


async def test_truncate_and_close_drop_pages(tmp_path: Path) -> None:
    backend, _cc, fs, area, path = setup(tmp_path)
    await fs.write(area, 0, page(1) + page(2) + page(3))
    await fs.truncate(area, PAGE + 10)  # page 1 is cut: its first 10 bytes go to SRC
    assert set(fs.stored(AREA)) == {0}
    assert path.read_bytes() == bytes(PAGE) + page(2)[:10]
    await fs.truncate(area, 3 * PAGE)
    assert bytes(await fs.read(area, PAGE, 2 * PAGE)) == page(2)[:10] + bytes(2 * PAGE - 10)
    await fs.close(area)
    assert not backend.pages and fs.stats()["frontswap.areas"] == 0


# -- through a mount ----------------------------------------------------------------------


def refused(src: Path, tmp_path: Path, options: str) -> str:
    mnt = tmp_path / "mnt-refused"
    mnt.mkdir(exist_ok=True)
    proc = subprocess.run([*TMEMFS, str(src), str(mnt), "-f", "-o", options], capture_output=True, text=True,
                          timeout=30)
    with open("/proc/self/mountinfo") as f:
        assert str(mnt) not in f.read()
    assert proc.returncode == 2, proc.stderr
    assert len(proc.stderr.splitlines()) == 1, proc.stderr
    return proc.stderr


@pytest.mark.parametrize(("options", "says"), [
    ("frontswap=missing", "no such file"),
    ("frontswap=dir", "a directory"),
    ("frontswap=../outside", "no .."),
    ("frontswap=/etc/passwd", "no leading /"),
    ("frontswap=link", "leads outside SRC"),
    ("frontswap=odd", "not a whole"),
    ("frontswap=swap:odd", "frontswap=odd"),
    ("frontswap=", "needs a value"),
    ("frontswap=swap,cleancache=none", "cleancache=none"),
    ("frontswap=swap,cleancache=cluster", "cluster cannot hold swap pages"),
    ("frontswap=swap,cleancache=zcache+cluster", "cluster cannot hold swap pages"),
])
def test_bad_input(src: Path, tmp_path: Path, options: str, says: str) -> None:
    (src / "dir").mkdir()
    (tmp_path / "outside").write_bytes(bytes(PAGE))
    (src / "link").symlink_to(tmp_path / "outside")
    (src / "odd").write_bytes(bytes(PAGE + 1))
    (src / "swap").write_bytes(bytes(PAGE))
    assert says in refused(src, tmp_path, options)


def test_swap_file_through_a_mount(mount_factory, src: Path) -> None:  # type: ignore[no-untyped-def]
    """Stores never reach SRC, reads come back, a rename keeps the swap file, a new file under
    its old name is an ordinary file; flush writes back; the last close ends the area."""
    (src / "swapfile").write_bytes(bytes(16 * PAGE))
    data = b"".join(page(n) for n in range(4))
    with mount_factory("cleancache=tmem,frontswap=swapfile") as m:
        os.rename(m.mnt / "swapfile", m.mnt / "renamed")
        (m.mnt / "swapfile").write_bytes(data)  # a new file: not a swap area
        assert (src / "swapfile").read_bytes() == data
        fd = os.open(m.mnt / "renamed", os.O_RDWR)
        try:
            os.pwrite(fd, data, 4 * PAGE)
            assert os.pread(fd, len(data), 4 * PAGE) == data
            assert (src / "renamed").read_bytes() == bytes(16 * PAGE)
            stats = m.stats()
            assert stats["frontswap.succ_stores"] == 4 and stats["frontswap.stored_pages"] == 4
            assert stats["backend.tmem.persistent_pages"] == 4
            m.control("flush")
            assert (src / "renamed").read_bytes()[4 * PAGE : 8 * PAGE] == data
            assert m.stats()["frontswap.stored_pages"] == 0
            os.pwrite(fd, page(9), 0)
            assert (src / "renamed").read_bytes()[:PAGE] == bytes(PAGE)
        finally:
            os.close(fd)
        stats = m.stats()
        assert stats["frontswap.stored_pages"] == 0 and stats["frontswap.areas"] == 0
        assert stats["frontswap.loads"] >= 4


def test_unregister_writes_swap_pages_back(mount_factory, src: Path) -> None:  # type: ignore[no-untyped-def]
    (src / "swapfile").write_bytes(bytes(4 * PAGE))
    with mount_factory("cleancache=zcache,frontswap=swapfile") as m:
        fd = os.open(m.mnt / "swapfile", os.O_RDWR)
        try:
            os.pwrite(fd, page(1) + page(2), 0)
            assert (src / "swapfile").read_bytes() == bytes(4 * PAGE)
            m.control("replace tmem")
            assert (src / "swapfile").read_bytes()[: 2 * PAGE] == page(1) + page(2)
            assert os.pread(fd, 2 * PAGE, 0) == page(1) + page(2)
            os.pwrite(fd, page(3), 2 * PAGE)  # the new backend takes stores
            assert m.stats()["backend.tmem.persistent_pages"] == 1
            m.control("unregister")
            assert os.pread(fd, 3 * PAGE, 0) == page(1) + page(2) + page(3)
        finally:
            os.close(fd)


# -- real swap ----------------------------------------------------------------------------

CHILD = textwrap.dedent("""
    import mmap, os, random, sys
    size, cgroup = int(sys.argv[1]), sys.argv[2]
    pages = size // 4096
    def content(i, rnd):
        if i % 4 == 3:
            return rnd.randbytes(4096)  # incompressible: zcache refuses it, so SRC gets it
        return ((b"swap-page %08d " % i) * 216)[:4096]
    def vmswap():
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) for line in f if line.startswith("VmSwap"))
    memory = mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    rnd = random.Random(15)
    for i in range(pages):
        memory[i * 4096 : (i + 1) * 4096] = content(i, rnd)
    before = vmswap()
    memory.madvise(getattr(mmap, "MADV_PAGEOUT", 21))
    if cgroup:  # drop the swap cache too, so that touching the pages reads them back
        with open(os.path.join(cgroup, "memory.force_empty"), "w") as f:
            f.write("0")
    swapped = vmswap() - before
    rnd = random.Random(15)
    bad = sum(memory[i * 4096 : (i + 1) * 4096] != content(i, rnd) for i in range(pages))
    print(swapped, bad)
""")


def swapping(device: str) -> bool:
    """Whether `device` is a swap area now (/proc/swaps)."""
    with open("/proc/swaps") as f:
        return any(line.split()[0] == device for line in f.readlines()[1:])


def need_real_swap() -> None:
    if os.geteuid() != 0:
        pytest.skip("real swap needs root (losetup, swapon)")
    for tool in ("losetup", "mkswap", "swapon", "swapoff"):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} is not installed")
    if not os.path.exists("/dev/loop-control"):
        pytest.skip("no loop devices here (/dev/loop-control is missing)")
    if not os.path.exists("/proc/swaps"):
        pytest.skip("this kernel has no swap (/proc/swaps is missing)")


def memory_cgroup(tmp_path: Path) -> Path | None:
    """A cgroup (v1) of the child: emptying it drops the swap cache, so that loads happen."""
    root = Path("/sys/fs/cgroup/memory")
    if not (root / "memory.force_empty").exists():
        return None
    path = root / f"tmemfs-test-frontswap-{os.getpid()}"
    path.mkdir()
    return path


@pytest.mark.parametrize("backend", ["zcache", "tmem"])
def test_real_swap(mount_factory, src: Path, tmp_path: Path, backend: str) -> None:  # type: ignore[no-untyped-def]
    need_real_swap()
    size = 32 << 20
    with open(src / "swapfile", "wb") as f:
        f.truncate(size + (4 << 20))
    with mount_factory(f"cleancache={backend},cc_size=128M,frontswap=swapfile") as m:
        loop = ""
        cgroup = memory_cgroup(tmp_path)
        try:
            attach = subprocess.run(["losetup", "--find", "--show", str(m.mnt / "swapfile")],
                                    capture_output=True, text=True)
            if attach.returncode != 0:
                pytest.skip(f"losetup failed: {attach.stderr.strip()}")
            loop = attach.stdout.strip()
            subprocess.run(["mkswap", loop], check=True, capture_output=True)
            on = subprocess.run(["swapon", "-p", "32767", loop], capture_output=True, text=True)
            if on.returncode != 0:
                pytest.skip(f"swapon failed: {on.stderr.strip()}")
            task = f"echo $$ > {cgroup}/tasks && " if cgroup is not None else ""
            child = subprocess.run(["sh", "-c", f'{task}exec "$0" -c "$1" "$2" "$3"', sys.executable, CHILD,
                                    str(size), str(cgroup or "")], capture_output=True, text=True, timeout=120)
            assert child.returncode == 0, child.stderr
            swapped, bad = map(int, child.stdout.split())
            assert swapped > 0 and bad == 0
            stats = m.stats()
            assert stats["frontswap.succ_stores"] > 0 and stats["frontswap.loads"] > 0
            assert stats["frontswap.load_errors"] == 0
            assert stats["backing.write_bytes"] <= stats["frontswap.failed_stores"] * PAGE
            if cgroup is not None:
                assert stats["frontswap.loads"] >= stats["frontswap.succ_stores"] // 2
            if backend == "tmem":
                assert stats["frontswap.failed_stores"] == 0
        finally:
            if loop and swapping(loop):
                subprocess.run(["swapoff", loop], check=False)
            if loop:
                subprocess.run(["losetup", "-d", loop], check=False)
            if cgroup is not None:
                cgroup.rmdir()
        assert not loop or not swapping(loop)
    with open(src / "swapfile", "rb") as f:  # no compressible page ever reached SRC
        assert b"swap-page" not in f.read()


def test_mlock_locks_the_daemon(mount_factory) -> None:  # type: ignore[no-untyped-def]
    with mount_factory("cleancache=tmem,mlock") as m:
        status = Path(f"/proc/{m.stats()['fs.pid']}/status").read_text()
        locked = next(int(line.split()[1]) for line in status.splitlines() if line.startswith("VmLck"))
        assert locked > 0
        m.control("set cache_size=128M")  # growing is fine
        with pytest.raises(OSError):  # shrinking would give locked memory back: refused
            m.control("set cache_size=4M")
