"""tools/coherency.py: the history checker on hand-made and simulated histories, and the
whole tool on real mounts (two cleancache=tmem mounts of one SRC are not coherent; one
mount is coherent with itself)."""

from __future__ import annotations

import errno
import itertools
import json
import os
import random
import re
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from tools.coherency import (
    BLOCK,
    FRAGMENT,
    GARBAGE,
    History,
    Ns,
    Op,
    Open,
    Report,
    Run,
    check,
    decode,
    dominance_max,
    stamp_block,
    stamp_key,
)
from tools.mounting import is_mounted, pid_alive, unmount

if TYPE_CHECKING:
    from contextlib import AbstractContextManager

    from tests.conftest import Mount

    MountFactory = Callable[..., AbstractContextManager[Mount]]

ROOT = Path(__file__).resolve().parent.parent
TOOL = [sys.executable, "-m", "tools.coherency"]
# A workload aimed at stale data: names stay put, descriptors stay open, few truncates.
DATA_MIX = ["--mix", "recreate=0,rename=0,truncate=4,append=0,src_write=0", "--fresh", "0.1", "--files", "2",
            "--file-size", "16K"]


class HistoryBuilder:
    """Hand-made histories: times are plain integers, in any unit."""

    def __init__(self, names: Sequence[str] = ("f0",)) -> None:
        self.h = History(list(names), [], [], [])
        self._ids = itertools.count(1)
        self._seq: Counter[int] = Counter()
        self._ino = itertools.count(1000)
        self.binding: dict[int, int] = {}  # name -> inode number in SRC

    def _name(self, name: str) -> int:
        return self.h.names.index(name)

    def create(self, name: str, start: int, end: int, node: int = 0, worker: int = -1,
               ino: int | None = None) -> int:
        """A new file at `name` (setup create); returns the creator's descriptor."""
        return self._ns("create", name, None, start, end, node, worker, ino)

    def recreate(self, name: str, start: int, end: int, node: int = 0, worker: int = 0,
                 ino: int | None = None) -> int:
        return self._ns("recreate", name, None, start, end, node, worker, ino)

    def rename(self, src: str, dst: str, start: int, end: int, node: int = 0, worker: int = 0,
               ino: int | None = None) -> int:
        """src over dst, then a new file at src; returns the new file's descriptor."""
        return self._ns("rename", src, dst, start, end, node, worker, ino)

    def _ns(self, kind: str, src: str, dst: str | None, start: int, end: int, node: int, worker: int,
            ino: int | None) -> int:
        a = self._name(src)
        b = self._name(dst) if dst is not None else -1
        nid, oid = next(self._ids), next(self._ids)
        new = ino if ino is not None else next(self._ino)
        if b >= 0:
            self.binding[b] = self.binding[a]
        self.binding[a] = new
        truth = ((a, new),) if b < 0 else ((a, new), (b, self.binding[b]))
        self.h.opens.append(Open(oid, node, worker, a, start, end, new, nid))
        self.h.ns.append(Ns(nid, kind, node, worker, a, b, start, end, 0, oid, truth))
        return oid

    def open(self, name: str, start: int, end: int, node: int = 0, worker: int = 0, ino: int | None = None) -> int:
        """An open of `name` that got inode `ino` (default: the one bound now)."""
        oid = next(self._ids)
        got = ino if ino is not None else self.binding.get(self._name(name), -errno.ENOENT)
        self.h.opens.append(Open(oid, node, worker, self._name(name), start, end, got, -1))
        return oid

    def write(self, fd: int, block: int, start: int, end: int, node: int = 0, worker: int = 0) -> int:
        self._seq[worker] += 1
        key = stamp_key(worker, self._seq[worker])
        self.h.ops.append(Op("write", node, worker, fd, block, start, end, BLOCK, key, None))
        return key

    def read(self, fd: int, block: int, start: int, end: int, content: int | Sequence[Run] = 0,
             n: int = BLOCK, node: int = 1, worker: int = 1) -> None:
        """A read that returned `n` bytes: all of stamp `content` (0: zeros), or these runs."""
        runs = tuple(content) if not isinstance(content, int) else ((content, 0, n),) if n else ()
        self.h.ops.append(Op("read", node, worker, fd, block, start, end, n, 0, runs))

    def truncate(self, fd: int, size: int, start: int, end: int, node: int = 0, worker: int = 0) -> None:
        self.h.ops.append(Op("truncate", node, worker, fd, size, start, end, 0, 0, None))

    def append(self, fd: int, start: int, end: int, node: int = 0, worker: int = 0, n: int = BLOCK) -> int:
        """An O_APPEND write of a whole stamped block (where it landed: see log_holds)."""
        self._seq[worker] += 1
        key = stamp_key(worker, self._seq[worker])
        self.h.ops.append(Op("append", node, worker, fd, -1, start, end, n, key, None))
        return key

    def src_write(self, fd: int, block: int, start: int, end: int, worker: int = 0) -> int:
        """A write straight to SRC (`fd`: an open with node=-1)."""
        self._seq[worker] += 1
        key = stamp_key(worker, self._seq[worker])
        self.h.ops.append(Op("src_write", -1, worker, fd, block, start, end, BLOCK, key, None))
        return key

    def log_holds(self, name: str, *keys: int) -> None:
        """SRC's `name` after the run: these stamps, one a block (0: zeros, -1: no stamp)."""
        self.h.log_name = self._name(name)
        self.h.log_blocks = list(keys)

    def behind(self, name: str) -> None:
        """`name` is written only behind the mounts' back (src_write)."""
        self.h.behind_name = self._name(name)

    def fstat(self, fd: int, size: int, start: int, end: int, node: int = 1, worker: int = 1) -> None:
        self.h.ops.append(Op("fstat", node, worker, fd, 0, start, end, size, 0, None))

    def stat(self, name: str, size: int, start: int, end: int, node: int = 1, worker: int = 1,
             ino: int | None = None) -> None:
        fd = self.open(name, start, end, node, worker, ino)
        self.h.ops.append(Op("stat", node, worker, fd, 0, start, end, size, 0, None))

    def history(self) -> History:
        return self.h


def kinds(report: Report) -> dict[str, int]:
    return {k: v for k, v in report.counts.items() if v}


def only(report: Report, kind: str) -> str:
    assert kinds(report) == {kind: 1}, report.text()
    return report.violations[0].text


# -- decoding what a read returned ------------------------------------------------------


def test_decode_whole_blocks_zeros_and_short_reads() -> None:
    key = stamp_key(3, 17)
    assert decode(stamp_block(key)) == ((key, 0, BLOCK),)
    assert decode(bytes(BLOCK)) == ((0, 0, BLOCK),)
    assert decode(b"") == ()
    assert decode(stamp_block(key)[:1000]) == ((key, 0, 1000),)  # end of file inside a unit
    assert decode(stamp_block(key)[:100] + bytes(900)) == ((key, 0, 96), (FRAGMENT, 96, 112), (0, 112, 1000))


def test_decode_torn_and_garbage() -> None:
    a, b = stamp_key(0, 1), stamp_key(1, 1)
    torn = stamp_block(b)[:2008] + stamp_block(a)[2008:]  # the tear inside a unit: a fragment
    assert decode(torn) == ((b, 0, 2000), (FRAGMENT, 2000, 2016), (a, 2016, BLOCK))
    aligned = stamp_block(b)[:2048] + stamp_block(a)[2048:]
    assert decode(aligned) == ((b, 0, 2048), (a, 2048, BLOCK))
    block = bytearray(stamp_block(a))
    block[1000:1010] = b"x" * 10  # in the middle of a run: bytes no write made
    assert decode(bytes(block)) == ((a, 0, 992), (GARBAGE, 992, 1024), (a, 1024, BLOCK))
    block = bytearray(stamp_block(a)[:2000] + bytes(BLOCK - 2000))
    block[1990:2030] = b"x" * 40  # between a stamp and zeros, but three units: garbage
    assert decode(bytes(block)) == ((a, 0, 1984), (GARBAGE, 1984, 2032), (0, 2032, BLOCK))
    block[1990:2030] = stamp_block(b)[1990:2010] + bytes(20)  # two units (b, then a cut): a fragment
    assert decode(bytes(block)) == ((a, 0, 1984), (FRAGMENT, 1984, 2016), (0, 2016, BLOCK))
    assert decode(b"\x01" + bytes(BLOCK - 1)) == ((FRAGMENT, 0, 16), (0, 16, BLOCK))  # a cut first unit
    assert decode(os.urandom(BLOCK)) == ((GARBAGE, 0, BLOCK),)


def test_dominance_max_matches_brute_force() -> None:
    rng = random.Random(5)
    for _ in range(200):
        points = [(rng.randrange(50), rng.randrange(-20, 20), rng.randrange(100), i) for i in range(rng.randrange(30))]
        queries = [(rng.randrange(55), rng.randrange(-25, 25)) for _ in range(20)]
        got = dominance_max(points, queries)
        for (tq, vq), answer in zip(queries, got, strict=True):
            best = max((w for t, v, w, _ in points if t < tq and v < vq), default=None)
            assert (answer[0] if answer else None) == best


# -- hand-made histories ----------------------------------------------------------------


def two_handles() -> tuple[HistoryBuilder, int, int]:
    """f0 created, then open on node 0 (writer) and on node 1 (reader)."""
    b = HistoryBuilder(["f0", "f1"])
    b.create("f0", 0, 1)
    b.create("f1", 0, 1)
    return b, b.open("f0", 2, 3, node=0, worker=0), b.open("f0", 2, 3, node=1, worker=1)


def test_stale_read_after_a_completed_overwrite() -> None:
    b, w, r = two_handles()
    w1 = b.write(w, 0, 10, 11)
    b.write(w, 0, 20, 21)
    b.read(r, 0, 30, 31, w1)
    text = only(check(b.history()), "stale read")
    assert "w0#1" in text and "w0#2" in text and "f0#1 block 0" in text


def test_overlapping_operations_are_legal() -> None:
    b, w, r = two_handles()
    w1 = b.write(w, 0, 10, 11)
    w2 = b.write(w, 0, 20, 35)  # still running when the reads begin
    b.read(r, 0, 30, 31, w1)
    b.read(r, 0, 32, 40, w2)
    w3 = b.write(w, 1, 50, 60)  # two writes overlapping each other: either order
    w4 = b.write(w, 1, 55, 58, worker=2)
    b.read(r, 1, 70, 71, w3)
    b.read(r, 1, 72, 73, w4)
    b.read(r, 2, 1, 80, n=0)  # past the end of file: no write of block 2 or beyond had begun
    b.read(r, 0, 33, 34, [(w1, 0, 2048), (w2, 2048, BLOCK)])  # torn between w1 and w2 (still running)
    b.read(r, 0, 5, 15, 0)  # zeros: w1 not finished when the read began
    report = check(b.history())
    assert report.ok, report.text()
    assert report.reads_checked == 7


def test_torn_read_with_a_superseded_part_is_stale() -> None:
    b, w, r = two_handles()
    w1 = b.write(w, 0, 10, 11)
    w2 = b.write(w, 0, 20, 21)
    b.read(r, 0, 30, 31, [(w2, 0, 2048), (w1, 2048, BLOCK)])
    assert "bytes 2048-4095 hold w0#1" in only(check(b.history()), "stale read")


def test_stale_zeros() -> None:
    b, w, r = two_handles()
    b.write(w, 1, 10, 11)
    b.read(r, 1, 20, 21, 0)  # the block was written before: zeros are the old bytes
    assert "read as zeros" in only(check(b.history()), "stale read")
    b, w, r = two_handles()
    b.write(w, 1, 10, 11)
    b.truncate(w, 0, 12, 13)
    b.write(w, 3, 14, 15)
    b.read(r, 1, 20, 21, 0)  # cut by the truncate, then a hole: zeros are right
    assert check(b.history()).ok


@pytest.mark.parametrize("case", ["never written", "another block", "another file", "from the future"])
def test_corrupt(case: str) -> None:
    b, w, r = two_handles()
    other = b.open("f1", 2, 3)
    b.write(w, 0, 10, 11)
    w2 = b.write(w, 1, 10, 11)
    w3 = b.write(other, 0, 10, 11)
    w4 = b.write(w, 0, 40, 41)
    got = {"never written": stamp_key(7, 99), "another block": w2, "another file": w3, "from the future": w4}[case]
    b.read(r, 0, 20, 21, got)
    text = only(check(b.history()), "corrupt")
    assert {"never written": "never happened", "another block": "which wrote block 1",
            "another file": "which wrote f1#1", "from the future": "began after"}[case] in text


def test_stale_sizes() -> None:
    b, w, r = two_handles()
    b.write(w, 3, 10, 11)  # size 16384
    b.fstat(r, 0, 20, 21)
    b.read(r, 3, 22, 23, 0, n=0)  # end of file at block 3: at most 12288
    b.stat("f0", 8192, 24, 25)
    report = check(b.history())
    assert kinds(report) == {"stale size": 3}, report.text()
    assert "saw size at most 12288" in report.text()

    b, w, r = two_handles()
    key = b.write(w, 3, 10, 11)
    b.truncate(w, 100, 12, 13)
    b.fstat(r, 16384, 20, 21)  # larger than the completed truncate left it
    b.read(r, 0, 22, 23, key, node=1)  # block 0 was never written... (and the truncate cut block 3)
    report = check(b.history())
    assert kinds(report) == {"stale size": 1, "corrupt": 1}, report.text()

    b, w, r = two_handles()
    b.write(w, 3, 10, 11)
    b.truncate(w, 100, 12, 30)  # overlaps the observations: both sizes are legal
    b.fstat(r, 16384, 20, 21)
    b.fstat(r, 100, 22, 23)
    b.write(w, 0, 40, 41)
    b.truncate(w, 5000, 42, 43)
    b.fstat(r, 5000, 50, 51)
    assert check(b.history()).ok


def test_truncate_cuts_a_block() -> None:
    b, w, r = two_handles()
    key = b.write(w, 0, 10, 11)
    b.truncate(w, 100, 12, 13)
    b.read(r, 0, 20, 21, [(key, 0, 96), (FRAGMENT, 96, 100)], n=100)  # what is left of it: legal
    b.read(r, 0, 22, 23, key)  # all of it: the truncate completed before
    report = check(b.history())
    assert kinds(report) == {"stale read": 1}, report.text()
    assert "cut them" in report.text()


def test_names_replaced() -> None:
    b, w, _ = two_handles()
    key = b.write(w, 0, 10, 11)
    kept = b.open("f0", 12, 13, node=1)
    b.recreate("f0", 20, 25)  # f0 is a new, empty file now
    b.read(kept, 0, 30, 31, key)  # the old file, through a descriptor opened before: legal
    b.open("f0", 22, 24, node=1, ino=-errno.ENOENT)  # during the recreate: legal
    b.fstat(kept, BLOCK, 32, 33)
    assert check(b.history()).ok
    old_ino = b.h.opens[0].ino
    stale = b.open("f0", 40, 41, node=1, ino=old_ino)  # the old file through the name, after
    b.read(stale, 0, 42, 43, key)
    b.open("f0", 44, 45, node=1, ino=-errno.ENOENT)  # the name exists
    report = check(b.history())
    assert kinds(report) == {"stale name": 2}, report.text()
    assert report.stale_name_reads == 1
    assert "got f0#1" in report.text() and "f0 was f0#2 throughout" in report.text()


def test_rename_moves_the_file() -> None:
    b, w, _ = two_handles()
    key = b.write(w, 0, 10, 11)
    b.rename("f0", "f1", 20, 25)  # f0's file is f1 now; f0 is new
    moved = b.open("f1", 30, 31, node=1)
    b.read(moved, 0, 32, 33, key)
    fresh = b.open("f0", 30, 31, node=1)
    b.read(fresh, 0, 32, 33, 0, n=0)
    b.stat("f1", BLOCK, 34, 35)
    assert check(b.history()).ok
    b.read(fresh, 0, 36, 37, key)  # the moved file's data through the new name
    assert "which wrote f0#1" in only(check(b.history()), "corrupt")


def test_inode_reuse_is_ambiguous_not_a_violation() -> None:
    """ext4 hands a freed inode number out again at once: an open during the recreate that
    sees the number may have either file; its reads are not judged."""
    b, w, _ = two_handles()
    ino = b.h.opens[0].ino
    key = b.write(w, 0, 10, 11)
    b.recreate("f0", 20, 25, ino=ino)
    either = b.open("f0", 19, 22, node=1, ino=ino)
    b.read(either, 0, 30, 31, key)
    report = check(b.history())
    assert report.ok and report.unchecked == 1, report.text()


# -- appends and writes behind the mounts' back ------------------------------------------------


def appending() -> tuple[HistoryBuilder, int, int]:
    """An empty log, open with O_APPEND on node 0 and for reading on node 1."""
    b = HistoryBuilder(["log"])
    b.create("log", 0, 1)
    return b, b.open("log", 2, 3, node=0, worker=0), b.open("log", 2, 3, node=1, worker=1)


def test_appends_count_as_writes_of_the_block_they_landed_in() -> None:
    b, w, r = appending()
    first = b.append(w, 10, 11)
    second = b.append(w, 12, 13, node=1, worker=2)
    b.log_holds("log", first, second)
    b.read(r, 1, 20, 21, second)
    b.fstat(r, 2 * BLOCK, 22, 23)
    assert check(b.history()).ok
    b.read(r, 1, 30, 31, 0, n=0)  # the second append had completed: block 1 exists
    text = only(check(b.history()), "stale size")
    assert "append w2#1 of block 1" in text


def test_an_append_nowhere_in_src_is_a_lost_write() -> None:
    """The 2026 hole: the second node's kernel guessed the old end, its append went over the
    first one's record."""
    b, w, _ = appending()
    b.append(w, 10, 11)
    second = b.append(w, 12, 13, node=1, worker=2)
    b.log_holds("log", second)
    text = only(check(b.history()), "lost write")
    assert "append w0#1" in text and "nowhere in log" in text


def test_a_log_block_no_append_made_is_corrupt() -> None:
    b, w, _ = appending()
    key = b.append(w, 10, 11)
    b.log_holds("log", 0, key)  # a hole before it: the append landed past the end
    assert "block 0 of log in SRC holds zeros" in only(check(b.history()), "corrupt")
    b.log_holds("log", key, key)
    assert "landed twice" in only(check(b.history()), "corrupt")


def behind_file() -> HistoryBuilder:
    b = HistoryBuilder(["behind"])
    b.create("behind", 0, 1)
    b.behind("behind")
    return b


def test_a_write_behind_the_mounts_back_is_seen_by_the_next_open() -> None:
    b = behind_file()
    early = b.open("behind", 2, 3, node=1, worker=1)  # opened before the write: either content
    key = b.src_write(b.open("behind", 10, 11, node=-1), 0, 12, 13)
    b.read(early, 0, 20, 21, 0)
    late = b.open("behind", 30, 31, node=1, worker=1)
    b.read(late, 0, 40, 41, key)
    b.fstat(late, 0, 42, 43)  # its size never changes
    assert check(b.history()).ok
    b.read(late, 0, 50, 51, 0)
    text = only(check(b.history()), "stale read")
    assert "src write w0#1" in text and "before the descriptor was opened" in text


def test_reads_of_the_behind_file_are_checked_for_size_and_origin() -> None:
    b = behind_file()
    r = b.open("behind", 2, 3, node=1, worker=1)
    b.read(r, 0, 20, 21, stamp_key(7, 1))
    assert "no write of this block made" in only(check(b.history()), "corrupt")
    b = behind_file()
    r = b.open("behind", 2, 3, node=1, worker=1)
    b.read(r, 0, 20, 21, 0, n=100)
    assert "always exists" in only(check(b.history()), "stale size")


# -- simulated coherent histories --------------------------------------------------------


class CoherentSim:
    """A coherent file system, simulated: every operation takes effect at one instant inside
    its interval; namespace operations are serialized (the tool's lock) and inode numbers
    are handed out again as soon as they are free (as ext4 does). The checker must accept
    every such history. With `stale`, reads sometimes return an older value of the block."""

    def __init__(self, seed: int, procs: int = 4, steps: int = 70, names: int = 2, blocks: int = 3,
                 stale: float = 0.0) -> None:
        self.rng = random.Random(seed)
        self.blocks, self.stale = blocks, stale
        self.names = [f"f{i}" for i in range(names)]
        self.events: list[tuple[int, int, Callable[[], None]]] = []
        self.order = itertools.count()
        self.ids = itertools.count(1)
        self.opens: list[dict[str, Any]] = []
        self.ops: list[dict[str, Any]] = []
        self.ns: list[dict[str, Any]] = []
        self.files: list[dict[str, Any]] = []
        self.bind: dict[int, int | None] = {}
        self.lock_free = 0
        self.writes = {w: itertools.count(1) for w in range(procs)}
        for n in range(names):  # setup: every name gets a file
            inc = self.new_file()
            self.bind[n] = inc
            nid, oid = next(self.ids), next(self.ids)
            self.opens.append(dict(id=oid, node=0, worker=-1, name=n, start=2 * n, end=2 * n + 1,
                                   ino=self.files[inc]["ino"], created=nid))
            self.ns.append(dict(id=nid, kind="create", node=0, worker=-1, src=n, dst=-1, start=2 * n,
                                end=2 * n + 1, step=0, created=oid, truth=((n, self.files[inc]["ino"]),)))
        clocks = dict.fromkeys(range(procs), 100)
        kept: dict[int, dict[int, tuple[dict[str, Any], int]]] = {w: {} for w in range(procs)}
        for _ in range(procs * steps):
            w = min(clocks, key=lambda p: clocks[p])
            clocks[w] = self.step(w, clocks[w], kept[w])
        for _, _, effect in sorted(self.events, key=lambda e: (e[0], e[1])):
            effect()

    def at(self, when: int, effect: Callable[[], None]) -> None:
        self.events.append((when, next(self.order), effect))

    def span(self, t: int, longest: int = 40) -> tuple[int, int, int]:
        start = t + self.rng.randrange(10)
        end = start + 1 + self.rng.randrange(longest)
        return start, end, self.rng.randint(start, end)

    def new_file(self) -> int:
        live = {f["ino"] for i, f in enumerate(self.files) if f["fds"] > 0 or i in self.bind.values()}
        ino = next(i for i in itertools.count(1000) if i not in live)
        self.files.append(dict(ino=ino, size=0, blocks=[(0, 0)] * self.blocks, fds=0,
                               past=[[] for _ in range(self.blocks)]))
        return len(self.files) - 1

    def open(self, w: int, name: int, t: int) -> tuple[dict[str, Any], int, int]:
        start, end, when = self.span(t)
        rec: dict[str, Any] = dict(id=next(self.ids), node=w % 2, worker=w, name=name, start=start, end=end, ino=None,
                                   created=-1)
        slot: dict[str, Any] = {"inc": None}

        def effect() -> None:
            inc = self.bind.get(name)
            rec["ino"] = -errno.ENOENT if inc is None else self.files[inc]["ino"]
            slot["inc"] = inc
            if inc is not None:
                self.files[inc]["fds"] += 1

        self.at(when, effect)
        self.opens.append(rec)
        return slot, rec["id"], end

    def close(self, slot: dict[str, Any], when: int) -> None:
        def effect() -> None:
            if slot["inc"] is not None:
                self.files[slot["inc"]]["fds"] -= 1

        self.at(when, effect)

    def step(self, w: int, t: int, kept: dict[int, tuple[dict[str, Any], int]]) -> int:
        rng = self.rng
        kind = rng.choice(["write"] * 5 + ["read"] * 5 + ["truncate", "fstat", "stat", "recreate", "rename"])
        name = rng.randrange(len(self.names))
        if kind in ("recreate", "rename"):
            return self.namespace(w, kind, name, t, kept)
        if kind == "stat":
            return self.path_stat(w, name, t)
        fresh = kind != "fstat" and rng.random() < 0.4
        if fresh or name not in kept or rng.random() < 0.1:
            if not fresh and name in kept:
                self.close(kept.pop(name)[0], t)
            slot, fd, t = self.open(w, name, t)
            if not fresh:
                kept[name] = (slot, fd)
        else:
            slot, fd = kept[name]
        t = self.data(w, kind, slot, fd, t)
        if fresh:
            self.close(slot, t)
        return t

    def data(self, w: int, kind: str, slot: dict[str, Any], fd: int, t: int) -> int:
        rng = self.rng
        start, end, when = self.span(t)
        block = rng.randrange(self.blocks)
        size = rng.choice([rng.randrange(self.blocks + 1) * BLOCK, rng.randrange(self.blocks * BLOCK + 1)])
        rec = dict(kind=kind, node=w % 2, worker=w, fd=fd, arg=size if kind == "truncate" else block,
                   start=start, end=end, res=None, stamp=0, runs=None)
        if kind == "write":
            rec["stamp"] = stamp_key(w, next(self.writes[w]))
        self.ops.append(rec)

        def effect() -> None:
            if slot["inc"] is None:
                rec["res"] = -errno.ENOENT
                rec["arg"] = rec["stamp"] = 0
                return
            f = self.files[slot["inc"]]
            if kind == "write":
                f["past"][block].append(f["blocks"][block])
                f["blocks"][block] = (rec["stamp"], BLOCK)
                f["size"] = max(f["size"], (block + 1) * BLOCK)
                rec["res"] = BLOCK
            elif kind == "truncate":
                for b, (key, k) in enumerate(f["blocks"]):
                    if size <= b * BLOCK or (key and size < b * BLOCK + k):
                        f["past"][b].append((key, k))
                        f["blocks"][b] = (0, 0) if size <= b * BLOCK else (key, size - b * BLOCK)
                f["size"] = size
                rec["res"] = 0
            elif kind == "fstat":
                rec["res"] = f["size"]
            else:
                n = max(0, min(BLOCK, f["size"] - block * BLOCK))
                key, k = f["blocks"][block]
                if self.stale and f["past"][block] and rng.random() < self.stale:
                    key, k = f["past"][block][0]  # the oldest value it had: stale
                data = stamp_block(key)[: min(k, n)] if key else b""
                rec["res"], rec["runs"] = n, decode(data + bytes(n - len(data)))

        self.at(when, effect)
        return end

    def path_stat(self, w: int, name: int, t: int) -> int:
        start, end, when = self.span(t)
        orec = dict(id=next(self.ids), node=w % 2, worker=w, name=name, start=start, end=end, ino=None, created=-1)
        rec = dict(kind="stat", node=w % 2, worker=w, fd=orec["id"], arg=0, start=start, end=end, res=None,
                   stamp=0, runs=None)

        def effect() -> None:
            inc = self.bind.get(name)
            orec["ino"] = rec["res"] = -errno.ENOENT if inc is None else self.files[inc]["ino"]
            if inc is not None:
                rec["res"] = self.files[inc]["size"]

        self.at(when, effect)
        self.opens.append(orec)
        self.ops.append(rec)
        return end

    def namespace(self, w: int, kind: str, a: int, t: int, kept: dict[int, tuple[dict[str, Any], int]]) -> int:
        rng = self.rng
        b = -1 if kind == "recreate" else (a + 1) % len(self.names)
        start = max(t, self.lock_free) + rng.randrange(5)
        end = start + 2 + rng.randrange(40)
        self.lock_free = end + 1
        first = rng.randint(start, end - 1)
        second = rng.randint(first + 1, end)
        nid, oid = next(self.ids), next(self.ids)
        rec = dict(id=nid, kind=kind, node=w % 2, worker=w, src=a, dst=b, start=start, end=end, step=0,
                   created=oid, truth=())
        orec = dict(id=oid, node=w % 2, worker=w, name=a, start=start, end=end, ino=None, created=nid)
        slot: dict[str, Any] = {"inc": None}

        def unlink() -> None:
            if b >= 0:
                self.bind[b] = self.bind[a]
            self.bind[a] = None

        def create() -> None:
            inc = self.new_file()
            self.bind[a] = inc
            self.files[inc]["fds"] += 1
            slot["inc"] = inc
            orec["ino"] = self.files[inc]["ino"]
            rec["truth"] = tuple((n, self.files[i]["ino"] if (i := self.bind[n]) is not None else -1)
                                 for n in ((a,) if b < 0 else (a, b)))

        self.at(first, unlink)
        self.at(second, create)
        self.ns.append(rec)
        self.opens.append(orec)
        t = end
        for _ in range(rng.randrange(3)):
            t = self.data(w, "write", slot, oid, t)
        if rng.random() < 0.5:
            if a in kept:
                self.close(kept.pop(a)[0], t)
            kept[a] = (slot, oid)
        else:
            self.close(slot, t)
        return t

    def history(self) -> History:
        return History(self.names, [Open(**o) for o in self.opens], [Op(**o) for o in self.ops],
                       [Ns(**n) for n in self.ns], nodes=2, workers=4, file_size=self.blocks * BLOCK)


def test_coherent_histories_are_never_flagged() -> None:
    checked = reads = unchecked = 0
    for seed in range(300):
        report = check(CoherentSim(seed).history())
        assert report.ok, f"seed {seed}:\n{report.text()}"
        checked += report.sizes_checked
        reads += report.reads_checked
        unchecked += report.unchecked
    assert reads > 10_000 and checked > 20_000
    assert unchecked < reads / 20  # inode reuse leaves few reads unjudged


def test_injected_stale_reads_are_found() -> None:
    found: dict[str, int] = {}
    for seed in range(100):
        report = check(CoherentSim(seed, stale=0.3).history())
        for kind, count in kinds(report).items():
            found[kind] = found.get(kind, 0) + count
    assert set(found) == {"stale read"} and found["stale read"] > 200, found


# -- the tool on real mounts -------------------------------------------------------------


def tool(*args: str, timeout: float = 120) -> tuple[int, dict[str, Any], str]:
    out = subprocess.run([*TOOL, *args, "--json"], capture_output=True, text=True, timeout=timeout, cwd=ROOT)
    try:
        summary = json.loads(out.stdout) if out.stdout else {}
    except ValueError:
        raise AssertionError(f"no JSON: {out.stdout}\n{out.stderr}") from None
    return out.returncode, summary, out.stderr


def test_tmem_mounts_of_one_src_serve_stale_reads(mount_factory: MountFactory) -> None:
    """Each cleancache=tmem mount keeps a private page cache: a page node B cached stays
    stale after node A writes it."""
    with mount_factory("cleancache=tmem") as a, mount_factory("cleancache=tmem") as b:
        status, summary, err = tool(str(a.mnt), str(b.mnt), "--ops", "3000", "--seed", "1", *DATA_MIX)
        assert a.stats()["fs.internal_errors"] == b.stats()["fs.internal_errors"] == 0
    assert status == 1, err
    assert summary["stale_reads"] > 20, summary
    assert summary["corrupt"] == summary["errors"] == 0, summary
    assert summary["reads_checked"] > 1000
    assert any(v["kind"] == "stale read" and "came after it and completed before the read began" in v["text"]
               for v in summary["first_violations"])


def test_one_mount_is_coherent_with_itself(mount_factory: MountFactory) -> None:
    """All workers on one mount (given twice: two "nodes" of one mount), the default mix
    with renames and recreates, a cache small enough to go through the tmem backend."""
    with mount_factory("cleancache=tmem,cache_size=32K,cc_size=256K") as m:
        status, summary, err = tool(str(m.mnt), str(m.mnt), "--ops", "6000", "--seed", "2")
        assert m.stats()["fs.internal_errors"] == 0
        assert [p for p in os.listdir(m.src) if p.startswith(".coherency")] == []  # cleaned up
    assert status == 0, f"{summary}\n{err}"
    assert summary["violations"] == 0 and summary["reads_checked"] > 2000
    assert summary["ops_by_kind"]["rename"] > 20 and summary["ops_by_kind"]["recreate"] > 20


def test_mount_mode_mounts_checks_and_unmounts(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    status, summary, err = tool("--mount", str(src), "--nodes", "2", "--options", "cleancache=tmem",
                                "--ops", "2000", "--seed", "3", *DATA_MIX)
    assert status == 1 and summary["stale_reads"] > 0, (summary, err)
    assert summary["nodes"] == 2 and summary["workers"] == 4
    assert_all_gone(err)
    assert os.listdir(src) == []


def assert_all_gone(stderr: str) -> None:
    """Every node the tool reported mounting is unmounted, its daemon gone."""
    nodes = re.findall(r"node\d+: (\S+) \(-o .*, pid (\d+)\)", stderr)
    assert nodes, stderr
    for mnt, pid in nodes:
        assert not is_mounted(Path(mnt)), mnt
        assert not pid_alive(int(pid)), pid
        assert not Path(mnt).exists()  # the temporary directory went too


def unmount_nodes_of(src: Path) -> None:
    """Unmount every mount of `src` (the nodes of a checker that was killed before its cleanup)."""
    with open("/proc/self/mountinfo") as f:
        nodes = [line.split()[4] for line in f if "fuse.tmemfs" in line and str(src) in line.split(" - ")[1]]
    for node in nodes:
        unmount(Path(node))


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_interrupt_unmounts_everything(tmp_path: Path, sig: signal.Signals) -> None:
    """Ctrl-C (SIGINT to the whole process group) or SIGTERM in the middle of a run."""
    src = tmp_path / "src"
    src.mkdir()
    log = tmp_path / "stderr"
    with open(log, "w") as err:  # its own process group, as a shell job: Ctrl-C goes to all of it
        proc = subprocess.Popen([*TOOL, "--mount", str(src), "--nodes", "2", "--options", "cleancache=tmem",
                                 "--ops", "10000000"], stdout=subprocess.PIPE, stderr=err, cwd=ROOT,
                                start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        while "workers on 2 nodes running" not in log.read_text():
            assert proc.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.05)
        time.sleep(0.5)
        os.killpg(proc.pid, sig)
        assert proc.wait(timeout=60) == 130, log.read_text()
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            unmount_nodes_of(src)  # killed, it could not: its foreground nodes end with their mounts
    assert_all_gone(log.read_text())
    assert os.listdir(src) == []


@pytest.mark.parametrize("args", [
    [],  # no mount point
    ["/nonexistent-coherency-dir"],
    ["{a}", "--ops", "0"],
    ["{a}", "--workers-per-node", "1"],
    ["{a}", "--file-size", "5000"],
    ["{a}", "--mix", "write=x"],
    ["{a}", "--mount", "{a}"],
    ["{a}", "{b}"],  # two directories that are not mounts of one SRC
])
def test_bad_arguments_exit_2(tmp_path: Path, args: list[str]) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    argv = [a.format(a=tmp_path / "a", b=tmp_path / "b") for a in args]
    out = subprocess.run([*TOOL, *argv, "--ops", "10"] if "--ops" not in argv else [*TOOL, *argv],
                         capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert out.returncode == 2, out
    assert os.listdir(tmp_path / "a") == []


def test_plain_directory_text_output(tmp_path: Path) -> None:
    """A plain directory is its own SRC and is coherent; the text summary."""
    out = subprocess.run([*TOOL, str(tmp_path), str(tmp_path), "--ops", "3000", "--seed", "4"],
                         capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "violations: 0 lost writes, 0 stale reads, 0 stale sizes, 0 stale names, 0 corrupt, 0 errors" \
        in out.stdout
    assert re.search(r"ops: [\d,]+ in [\d.]+ s \([\d,]+ ops/s\)", out.stdout)
    assert out.stdout.rstrip().endswith("result: ok")
    assert "seed 4" in out.stderr
