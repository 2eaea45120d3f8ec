"""Short versions of the stress (tools/stress.py, tools/metastress.py) through real mounts:
concurrent metadata operations compared with SRC, the data model check under a
concurrent fio load, and resources back to idle afterwards."""

from __future__ import annotations

import os
import random
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from tools import metastress
from tools.modelcheck import ModelCheck
from tools.stress import start_fio, stop_fio

if TYPE_CHECKING:
    from contextlib import AbstractContextManager

    from tests.conftest import Mount

    MountFactory = Callable[..., AbstractContextManager[Mount]]

IDLE = {"fs.open_files": 0, "fs.open_dirs": 0, "pagecache.pages": 0, "cleancache.ledger_entries": 0,
        "fs.internal_errors": 0}


def _seed() -> int:
    return int(os.environ.get("TMEMFS_SEED", random.randrange(1 << 32)))


def _fds(m: Mount) -> int:
    return len(os.listdir(f"/proc/{m.proc.pid}/fd"))


def _count(stats: dict[str, object], key: str) -> int:
    """A counter of stats.json, which must be a whole number."""
    value = stats[key]
    assert isinstance(value, int), (key, value)
    return value


def _wait(predicate: Callable[[], bool], timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


@pytest.mark.parametrize("options", ["cleancache=tmem,cache_size=16K,cc_size=256K",
                                     "cleancache=zcache,cache_size=4K,cc_size=64K,pc_policy=s3fifo"])
def test_metadata_stress_matches_src(mount_factory: MountFactory, options: str) -> None:
    seed = _seed()
    with mount_factory(options) as m:
        try:
            report = metastress.run(m.mnt, m.src, procs=4, ops=500, seed=seed, timeout=60)
        except metastress.StressFailure as exc:
            raise AssertionError(f"{options}: {exc} (replay with TMEMFS_SEED={seed})") from None
        assert report.ops == 2000 and sum(report.succeeded.values()) > 400
        assert os.listdir(m.mnt) == os.listdir(m.src) == []  # rm -rf took everything
        assert m.stats()["fs.internal_errors"] == 0


def test_metastress_command_line(mnt: Mount) -> None:
    """`python -m tools.metastress DIR` finds SRC by itself and prints its seed."""
    out = subprocess.run([sys.executable, "-m", "tools.metastress", str(mnt.mnt), "--procs", "2",
                          "--ops", "100", "--seed", "7"], capture_output=True, text=True, timeout=60,
                         cwd=Path(__file__).parent.parent)
    assert out.returncode == 0, out.stderr
    assert "seed 7" in out.stdout and "0 mismatches" in out.stdout


def test_model_check_under_fio_load(mount_factory: MountFactory, tmp_path: Path) -> None:
    seed = _seed()
    with mount_factory("cleancache=zcache+tmem,cache_size=64K,cc_size=256K") as m:
        fio = start_fio(m.mnt, tmp_path / "fio.json")
        try:
            time.sleep(0.3)
            assert fio.poll() is None, fio.stderr.read() if fio.stderr else ""
            ModelCheck(m.mnt, seed).run(6000)
        except AssertionError as exc:
            raise AssertionError(f"{exc} (replay with TMEMFS_SEED={seed})") from None
        finally:
            ios = stop_fio(fio, tmp_path / "fio.json")
        assert ios > 100
        stats = m.stats()
        assert stats["fs.internal_errors"] == 0 and stats["cleancache.verify_failures"] == 0


def test_resources_back_to_idle(mount_factory: MountFactory) -> None:
    """After work, drop_caches + flush empty every cache; once the files are gone and
    the kernel has forgotten them, the daemon holds exactly the descriptors it held
    after mounting."""
    seed = _seed()
    with mount_factory("cleancache=zcache+tmem,cache_size=32K,cc_size=128K") as m:
        fds_mounted = _fds(m)
        assert m.stats()["fs.inodes"] == 1
        (m.mnt / "data").mkdir()
        metastress.run(m.mnt, m.src, procs=2, ops=200, seed=seed, timeout=60)
        ModelCheck(m.mnt / "data", seed).run(2000)
        before = m.stats()
        assert _count(before, "pagecache.pages") > 0 and _count(before, "cleancache.ledger_entries") > 0
        m.control("drop_caches\nflush")
        stats = m.stats()
        assert {k: stats[k] for k in IDLE} == IDLE
        stored = {k: v for k, v in stats.items() if k.endswith(".stored_pages")}
        assert set(stored) == {"backend.zcache.stored_pages", "backend.tmem.stored_pages", "frontswap.stored_pages"}
        assert set(stored.values()) == {0}
        # an O_PATH descriptor per inode the kernel knows, nothing else
        assert _fds(m) - fds_mounted == _count(stats, "fs.inodes") - 1
        subprocess.run(["rm", "-rf", str(m.mnt / "data")], check=True)
        assert _wait(lambda: m.stats()["fs.inodes"] == 1), m.stats()["fs.inodes"]
        assert _fds(m) == fds_mounted
        assert m.stats()["fs.internal_errors"] == 0
