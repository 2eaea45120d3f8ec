"""The randomized model check through real mounts, cache sizes from one page up: one client,
then several clients on the same files at once (and the oracle of that mode on made-up histories)."""

from __future__ import annotations

import os
import random
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from tools import concurrentmodel
from tools.concurrentmodel import (
    APPEND,
    INF,
    OPEN_TRUNC,
    TRUNCATE,
    WRITE,
    Change,
    ConcurrentReport,
    FileModel,
    size_seen,
)
from tools.modelcheck import ModelCheck

if TYPE_CHECKING:
    from contextlib import AbstractContextManager

    from tests.conftest import Mount

    MountFactory = Callable[..., AbstractContextManager[Mount]]

OPS = 20000
CONFIGS = [
    "cleancache=tmem,cache_size=4K",
    "cleancache=tmem,cache_size=28K,cc_size=64K",
    "cleancache=none,cache_size=256K",
    "cleancache=tmem,cache_size=16M",
]


@pytest.mark.parametrize("options", CONFIGS)
def test_random_io_matches_model(mount_factory: MountFactory, options: str) -> None:
    seed = int(os.environ.get("TMEMFS_SEED", random.randrange(1 << 32)))
    with mount_factory(options) as m:
        try:
            ModelCheck(m.mnt, seed).run(OPS)
        except AssertionError as exc:
            raise AssertionError(f"{options}: {exc} (replay with TMEMFS_SEED={seed})") from None
        stats = m.stats()
    assert stats["cleancache.verify_failures"] == 0
    assert stats["fs.internal_errors"] == 0


# -- several clients on the same files at once (tools/concurrentmodel.py) ----------------

CLIENTS, CLIENT_OPS = 4, 800
CONCURRENT = [
    "cleancache=none,cache_size=8K",
    "cleancache=tmem,cache_size=16K,cc_size=128K",
    "cleancache=zcache,cache_size=64K,cc_size=256K,pc_policy=s3fifo",
    "cleancache=dedup,cache_size=4K,cc_size=128K",
    "cleancache=cluster,cache_size=32K,cc_size=1M,cc_dir={pools}",
]


def _seed() -> int:
    return int(os.environ.get("TMEMFS_SEED", random.randrange(1 << 32)))


def _concurrent_check(m: Mount, seed: int, ops: int = CLIENT_OPS) -> ConcurrentReport:
    (m.mnt / "conc").mkdir()
    return concurrentmodel.run(m.mnt / "conc", m.src / "conc", seed, CLIENTS, ops, checkpoint=200, timeout=120)


@pytest.mark.parametrize("options", CONCURRENT)
def test_concurrent_clients_match_the_oracle(mount_factory: MountFactory, tmp_path: Path, options: str) -> None:
    """Four processes write, append, truncate and read the same two files at once; every
    read and size fits what the changes that completed before it allow, and at each
    checkpoint the mount equals SRC."""
    seed = _seed()
    options = options.format(pools=tmp_path / "pools")
    (tmp_path / "pools").mkdir()
    with mount_factory(options) as m:
        report = _concurrent_check(m, seed)
        stats = m.stats()
    assert report.ok, f"{options}: {report.failure()} (replay with TMEMFS_SEED={seed})"
    assert report.total_ops == CLIENTS * CLIENT_OPS and report.checkpoints == CLIENT_OPS // 200
    assert report.reads > CLIENTS * CLIENT_OPS // 3
    assert stats["fs.internal_errors"] == 0 and stats["cleancache.verify_failures"] == 0


def test_with_kernel_cache_a_read_never_outlives_a_write_in_flight(mount_factory: MountFactory, tmp_path: Path) -> None:
    """kernel_cache: the kernel keeps what a read returns. A page it dropped while a write of
    it was on its way (a revalidation) and read again must not come back older than that
    write: the read waits for the file's writes in flight. Writes and reads only: appends
    racing O_TRUNC opens are the documented kernel_cache limit (README)."""
    seed = _seed()
    mix = tuple((name, weight) for name, weight in concurrentmodel.MIX
                if name not in ("append", "reopen_trunc", "truncate", "direct_read", "reopen"))
    with mount_factory("cleancache=tmem,cache_size=256K,cc_size=1M,kernel_cache,max_requests=16") as m:
        (m.mnt / "conc").mkdir()
        report = concurrentmodel.run(m.mnt / "conc", m.src / "conc", seed, CLIENTS, 6 * CLIENT_OPS,
                                     checkpoint=1200, timeout=120, mix=mix)
    assert report.ok, f"{report.failure()} (replay with TMEMFS_SEED={seed})"
    assert report.reads > CLIENTS * CLIENT_OPS // 3


def test_concurrent_check_catches_pages_installed_after_a_change(mount_factory: MountFactory, tmp_path: Path) -> None:
    """A tmemfs whose fills install whatever changed while they read (the change seqlock
    patched out at start-up, no file edited): the check names stale reads."""
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "sitecustomize.py").write_text(
        "from fusefs.pagecache import CachedFile\n"
        "assert hasattr(CachedFile, 'stable_since')\n"
        "CachedFile.stable_since = lambda self, changes: True\n")
    seed = _seed()
    with mount_factory("cleancache=tmem,cache_size=16K,cc_size=256K", env={"PYTHONPATH": str(broken)}) as m:
        reports = []
        for round_ in range(6):  # a race: a few rounds make missing it unlikely beyond reason
            (m.mnt / "conc").mkdir()
            reports.append(concurrentmodel.run(m.mnt / "conc", m.src / "conc", seed + round_, CLIENTS, 1000,
                                               checkpoint=200, timeout=120))
            if not reports[-1].ok:
                break
            subprocess.run(["rm", "-rf", str(m.mnt / "conc")], check=True)
    found = reports[-1]
    assert not found.ok, f"no stale read in {len(reports)} rounds (seed {seed})"
    assert any("STALE" in message for message in found.messages), found.failure()


def test_concurrent_mode_command_line(mnt: Mount) -> None:
    """`python -m tools.modelcheck DIR --clients N` finds SRC by itself and prints its seed."""
    out = subprocess.run([sys.executable, "-m", "tools.modelcheck", str(mnt.mnt), "--clients", "2", "--ops", "200",
                          "--seed", "7", "--mix", "append=0"], capture_output=True, text=True, timeout=120,
                         cwd=Path(__file__).parent.parent)
    assert out.returncode == 0, out.stderr
    assert "seed 7" in out.stdout and "400 operations" in out.stdout and "0 mismatches" in out.stdout


# -- the oracle itself, on made-up histories -----------------------------------------------


def _write(lo: int, hi: int, start: int, end: int, index: int = 0) -> Change:
    return Change(WRITE, 0, index, lo, hi, start, end, data=random.Random(index).randbytes(hi - lo))


def _truncate(size: int, start: int, end: int, index: int = 0) -> Change:
    return Change(TRUNCATE, 1, index, size, INF, start, end)


def _model(*changes: Change) -> FileModel:
    model = FileModel(0)
    for change in changes:
        model.add(change)
    return model


def test_oracle_flags_bytes_a_completed_write_replaced() -> None:
    old, new = _write(0, 100, 10, 20, 1), _write(50, 150, 30, 40, 2)
    model = _model(old, new)
    model.settle(50)
    assert model.check_bytes(0, old.data[:50] + new.data[:100], 50, 60) == []
    [problem] = model.check_bytes(0, old.data, 50, 60)
    assert problem.startswith("STALE READ at offset 50") and "replaced by write [50, 150)" in problem


def test_oracle_allows_old_new_and_torn_bytes_during_a_write() -> None:
    old, new = _write(0, 100, 10, 20, 1), _write(0, 100, 30, 40, 2)
    model = _model(old, new)
    model.settle(35)  # a read from 35 to 45: the second write is in flight
    for got in (old.data, new.data, old.data[:37] + new.data[37:], new.data[:10] + old.data[10:]):
        assert model.check_bytes(0, got, 35, 45) == []
    [problem] = model.check_bytes(0, bytes(100), 35, 45)  # what the file held before both
    assert problem.startswith("STALE READ at offset 0") and "from checkpoint content" in problem


def test_oracle_flags_bytes_past_a_truncate_and_old_bytes_once_regrown() -> None:
    write, cut, regrow = _write(0, 8192, 10, 20, 1), _truncate(100, 30, 40, 2), _truncate(8192, 50, 60, 3)
    model = _model(write, cut, regrow)
    model.settle(70)
    assert model.check_bytes(0, write.data[:100] + bytes(8092), 70, 80) == []
    [problem] = model.check_bytes(0, write.data, 70, 80)
    assert problem.startswith("STALE READ at offset 100") and "replaced by truncate to size 100" in problem
    assert model.check_size(*size_seen(0, 9000, 8192), 70, 80) is None
    assert "STALE SIZE: size 100" in str(model.check_size(*size_seen(0, 9000, 100), 70, 80))
    assert model.check_size(*size_seen(0, 9000, 100), 55, 80) is None  # the regrowth was in flight


def test_oracle_flags_sizes_a_completed_write_left_behind() -> None:
    model = _model(_write(0, 4096, 10, 20, 1), _write(8000, 9000, 30, 40, 2))
    model.settle(50)
    assert "left it at 9000" in str(model.check_size(4096, 4096, 50, 60))
    assert model.check_size(9000, 9000, 50, 60) is None
    assert model.check_size(*size_seen(8500, 100, 100), 50, 60) is None  # at least 8600: fine
    assert "STALE SIZE" in str(model.check_size(*size_seen(9000, 100, 50), 50, 60))  # 9050: nothing reached it


def test_oracle_names_bytes_of_a_write_found_at_another_offset() -> None:
    write = _write(4096, 8192, 10, 20, 1)
    model = _model(write)
    model.settle(30)
    [problem] = model.check_bytes(0, write.data, 30, 40)
    assert "GARBAGE at offset 0" in problem and "they belong at offset 4096" in problem


def test_oracle_takes_an_append_of_unknown_offset_whole_only_while_it_ran() -> None:
    """Its writer found no whole 16-byte chunk of it in SRC when it returned: after that, a
    read may find a remnant holding none (the run that once failed: the first 6 bytes of
    an append, the rest overwritten), never a whole chunk."""
    lost = Change(APPEND, 2, 5, 0, 0, 30, 40, data=random.Random(5).randbytes(40), floating=True)
    model = _model(_write(0, 100, 10, 20, 1), lost)
    model.settle(35)
    assert model.check_bytes(10, lost.data[3:20], 35, 45) == []
    assert model.check_bytes(60, lost.data + bytes(10), 35, 45) == []  # whole, then a hole
    model.settle(50)
    assert model.check_bytes(10, lost.data[:6], 50, 60) == []  # a remnant: after it ended too
    assert model.check_bytes(85, lost.data[1:16], 50, 60) == []  # 15 bytes, no whole chunk
    assert model.check_bytes(10, lost.data[17:32], 50, 60) == []
    for whole in (lost.data[:16], lost.data[3:35], lost.data[16:40]):
        [problem] = model.check_bytes(10, whole, 50, 60)
        assert problem.startswith("GARBAGE at offset") and "landed who knows where" in problem


def test_oracle_takes_a_remnant_split_by_an_interval_edge_as_one_run() -> None:
    """Two writes meet at offset 18: a read there of an append's first 16 bytes is a whole
    chunk, though each interval holds only 8 of them (each half alone explains nothing)."""
    lost = Change(APPEND, 2, 5, 0, 0, 30, 40, data=random.Random(5).randbytes(40), floating=True)
    model = _model(_write(0, 18, 10, 20, 1), _write(18, 100, 10, 20, 3), lost)
    model.settle(50)
    assert model.check_bytes(10, lost.data[:8], 50, 60) == []  # a remnant in one interval
    [problem] = model.check_bytes(10, lost.data[:16], 50, 60)
    assert problem.startswith("GARBAGE at offset 10") and "landed who knows where" in problem


def test_oracle_takes_an_append_of_unknown_offset_whole_while_a_change_that_hid_it_runs() -> None:
    """A write in flight when the append's writer looked may have hidden the append's bytes
    from it (SRC had the write's) while a read may still get the old bytes, the append's:
    whole until that write ends, remnants only after it."""
    lost = Change(APPEND, 2, 5, 0, 0, 30, 40, data=random.Random(5).randbytes(40), floating=True)
    model = _model(_write(0, 100, 10, 20, 1), lost, _write(0, 100, 35, 55, 2))
    model.settle(50)
    assert model.check_bytes(10, lost.data, 50, 60) == []
    model.settle(60)
    [problem] = model.check_bytes(10, lost.data, 60, 70)
    assert problem.startswith("GARBAGE at offset 10") and "landed who knows where" in problem


def test_oracle_lets_an_append_of_unknown_offset_explain_a_size_past_a_truncate() -> None:
    """An append whose bytes were gone before its writer looked may have landed at the end a
    truncate left and grown the file past it: a read after both may see that size."""
    write, cut = _write(0, 44000, 10, 20, 1), _truncate(43563, 30, 40, 2)
    lost = Change(APPEND, 2, 5, 0, 0, 35, 45, data=b"z" * 300, floating=True)
    seen = size_seen(32768, 11011, 11011)  # a whole read ending at 43779
    assert "STALE SIZE" in str(_model(write, cut).check_size(*seen, 50, 60))
    assert _model(write, cut, lost).check_size(*seen, 50, 60) is None


def test_a_stale_size_names_the_o_trunc_open_before_it_and_what_raced_it() -> None:
    """The kernel_cache window (README): an append racing an O_TRUNC open can leave the kernel a size from
    before for a moment; the report shows the open and the race, so that the times say whether it explains it."""
    ms = 1_000_000
    trunc = Change(OPEN_TRUNC, 3, 7, 0, INF, 10 * ms, 12 * ms)
    racing = Change(APPEND, 2, 5, 0, 5000, 11 * ms, 13 * ms, data=bytes(5000))
    later = Change(APPEND, 2, 6, 5000, 21782, 14 * ms, 15 * ms, data=bytes(16782))
    model = _model(trunc, racing, later)
    model.settle(16 * ms)
    problem = str(model.check_size(*size_seen(10884, 9596, 0), int(16.5 * ms), 17 * ms))
    assert problem.startswith("STALE SIZE: size in 0..10884, but append [5000, 21782) by client 2 (its change #6)")
    assert problem.endswith("; the last O_TRUNC open before it ended: O_TRUNC open to size 0 by client 3 "
                            "(its change #7), 10.000 ms..12.000 ms, 4.5 ms before the read began, raced by append "
                            "[0, 5000) by client 2 (its change #5), 11.000 ms..13.000 ms")
    during = _model(_write(0, 9000, 10, 20, 1), Change(OPEN_TRUNC, 3, 8, 0, INF, 42, 48), _write(0, 9000, 44, 46, 2))
    during.settle(30)
    assert "; the last O_TRUNC open before it ended: O_TRUNC open to size 0 by client 3 (its change #8), 0.000 ms.." \
           "0.000 ms, begun during the read, raced by write [0, 9000) by client 0 (its change #2)" in \
           str(during.check_size(*size_seen(8900, 200, 200), 30, 50))  # 100 bytes past any end the file had
    alone = _model(_write(0, 9000, 10, 20, 1))
    alone.settle(30)
    assert str(alone.check_size(4096, 4096, 30, 40)).endswith("; no O_TRUNC open of the file came before the read")
