"""Randomized coherency checker for several tmemfs mounts ("nodes") of one SRC.

    python -m tools.coherency MNT1 MNT2 [MNT3...] --ops N [--files F] [--file-size BYTES]
                              [--workers-per-node K] [--seed S] [--json]
                              [--mix KIND=WEIGHT,...] [--fresh P] [--direct P] [--timeout S]
    python -m tools.coherency --mount SRC --nodes 3 --options cleancache=cluster --ops N ...
                              [--slow-join SECONDS]

The first form runs against mount points that already exist and mount the
same SRC (found in MNT/.tmemfs/stats.json; a plain directory is its own
SRC; a mount point may be given twice, to run two "nodes" on one mount).
The second mounts SRC N times itself (`python -m fusefs.cli SRC MNT -f -o
OPTIONS`, each daemon in its own session) in a temporary directory, and
unmounts every one of them in a finally, also on a failure, Ctrl-C or
SIGTERM.

Worker processes (K per node, half writers and half readers, at least one
of each) do random operations on a few files of a fresh directory
(.coherency-PID-SEED, removed afterwards): 4 KiB writes at block-aligned
offsets, each block filled with a stamp that names exactly which write made
it (worker + sequence number, 16-byte units repeated); reads of one block;
ftruncate to random sizes; stat() and fstat() of the size; unlink +
recreate of a file (new content) and rename of one file over another (the
old name is recreated at once); appends of whole stamped blocks, with
O_APPEND from every node, to a file `log` nothing else writes; and writes
of stamped blocks made straight to SRC, behind every mount's back, to a
file `behind` that the nodes only read. Files are opened afresh for some
operations and kept open across operations for others; a fraction of the
opens use O_DIRECT. --mix changes the writers' weights (`--mix
recreate=0,rename=0` checks data alone, names staying put). Every operation is logged with time.monotonic_ns()
before and after it (CLOCK_MONOTONIC is one clock for every process of the
host), and the logs come back to the parent, which checks them offline.

Namespace operations (recreate, rename) take one lock shared by all
workers, so they happen one at a time in a known order; right after each
(still holding the lock) the worker reads the truth from SRC: the inode
number now behind each name it touched. Data operations run concurrently
with each other and with the namespace operations.

The rules (a "file" is one incarnation: an inode, from its creation on,
whatever names it has; an operation's interval is [start, end]; "X
completed before Y began" is X.end < Y.start, intervals that touch count
as overlapping):

* Which file an open (or a path stat) got: the incarnation bound to the
  name in SRC at some moment of the open, matched by the inode number the
  open's fstat reports. If the inode is none of those bound to the name
  during the open, the open is a STALE NAME (e.g. a dentry still pointing
  at a file unlinked or renamed away before the open began); so is ENOENT
  for a name that was bound throughout the open, and an unlink or rename
  that succeeded while the name stayed (the recreate after it finds it:
  EEXIST). The mounts must show SRC's inode numbers (checked at setup).
  Reads and writes through
  a descriptor concern its file, not its name: reading a file that was
  unlinked or replaced while held open is legal (reads through a stale
  name's descriptor are checked against the file it got).
* A read of block b returning, in some byte range, the stamp of write W:
  CORRUPT if W never happened, wrote another block or another file, or
  began after the read ended; bytes that are no stamp and no zeros (more
  than two 16-byte units in a row, or between two runs of one stamp) are
  CORRUPT too. STALE READ if some write W' of that block of
  that file, or some truncate of it below the end of the range, began after
  W ended and completed before the read began.
* A read returning zeros in a byte range [lo, hi): STALE READ if some
  write W' of the block completed before the read began, and every event
  that could have zeroed the range later (the file's creation, a truncate
  below hi, begun before the read ended) ended before W' began.
* Sizes. A read of n bytes of block b saw size b*4096+n if n < 4096 (at
  most b*4096 if n == 0), at least (b+1)*4096 if n == 4096; stat and
  fstat see the size. STALE SIZE if it is smaller than the size left by a
  write (end offset) or truncate X completed before the observation began,
  and no truncate to at most the seen size could have come after X (one
  not ended before X began, begun before the observation ended); or
  larger than the size left by a truncate T (or the creation) completed
  before the observation began, with no write or truncate reaching the
  seen size that could have come after T.
* Anything not decided (a descriptor whose file is ambiguous because an
  inode number was reused during its open, a write that failed, torn units
  at a boundary between two values) is allowed, never flagged: the check is
  sound, it only misses cases. Torn reads (part of a block from one write,
  part from another) are legal if every part is.
* Appends. Once the workers are done, SRC's `log` must hold every append
  that returned a whole block, each exactly once and in a block of its own:
  LOST WRITE for one that is missing (its bytes went over another's), CORRUPT
  for a block of the log that no append made. Each append then counts as a
  write of the block it landed in, and reads and sizes of `log` are checked
  as above.
* Writes behind the mounts' back (close-to-open, as on NFS): a read of
  `behind` through a descriptor opened after such a write of that block
  completed returns it or a later one: STALE READ otherwise. A read
  through a descriptor opened earlier may return either.
* ERROR: an operation failed other than with ENOENT on a name.

Each kind of query is a 2-D dominance maximum (over time and offset/size),
answered offline per file with a sweep and a Fenwick tree: the check is
O(n log n). Exit status: 0 no violation, 1 violations (or a failed run),
2 bad arguments or mounts that do not share SRC, 130 interrupted.

--slow-join S (with --mount and a cluster backend): the last node cannot
join its pool for the first S seconds (lmdb: the pool's init lock is held;
Redis: its connection goes through a proxy that answers nothing), so its
changes must wait for the join; anything it lets go unseen is a stale read
or size on the other nodes.
"""

from __future__ import annotations

import argparse
import bisect
import errno
import fcntl
import itertools
import json
import mmap
import multiprocessing
import os
import pickle
import random
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager, suppress
from dataclasses import dataclass, field
from multiprocessing.connection import wait as wait_sentinels
from pathlib import Path
from types import FrameType
from typing import Any, NamedTuple, NoReturn
from urllib.parse import urlsplit, urlunsplit

from tools.mounting import is_mounted, signals_deferred, stop_foreground, wait_live
from tools.stallingproxy import StallingProxy

ROOT = Path(__file__).resolve().parent.parent
TMEMFS = [sys.executable, "-m", "fusefs.cli"]
BLOCK = 4096
UNIT = 16  # a stamp: (key, key ^ MIX), little-endian 64-bit each
UNITS = BLOCK // UNIT
MIX = 0x9E3779B97F4A7C15
_QQ = struct.Struct("<QQ")
ZERO_UNIT = bytes(UNIT)
INF = 1 << 62
FRAGMENT, GARBAGE = -1, -2  # run keys: a torn or cut unit at an edge (ignored); bytes no write made
LOCK_TIMEOUT = 120.0
BARRIER_TIMEOUT = 120.0
SHOWN = 10  # violations explained in the text output (the JSON has up to 50)
KINDS = ("lost write", "stale read", "stale size", "stale name", "corrupt", "error")
LOG, BEHIND = "log", "behind"  # the append-only file; the file written only behind the mounts' back
CHANGES = ("write", "append", "truncate")  # the data operations that change a file through a mount

# Operation mixes (weights). Writers also read and stat; readers never modify.
WRITER_MIX = (("write", 46), ("read", 20), ("stat", 6), ("fstat", 4), ("truncate", 13),
              ("recreate", 3), ("rename", 3), ("append", 4), ("src_write", 3))
READER_MIX = (("read", 74), ("stat", 13), ("fstat", 13))

Run = tuple[int, int, int]  # (stamp key, 0 for zeros, FRAGMENT or GARBAGE; first byte; byte after)


def now() -> int:
    return time.monotonic_ns()


# -- stamps ---------------------------------------------------------------------------


def stamp_key(worker: int, seq: int) -> int:
    """The key of write number `seq` (from 1) of `worker`: never 0."""
    return ((worker + 1) << 32) | seq


def key_label(key: int) -> str:
    return f"w{(key >> 32) - 1}#{key & 0xFFFFFFFF}"


def stamp_unit(key: int) -> bytes:
    return _QQ.pack(key, key ^ MIX)


def stamp_block(key: int) -> bytes:
    return stamp_unit(key) * UNITS


def _unit_value(unit: bytes) -> int | None:
    """A whole unit: its key, 0 for zeros, None if it is no stamp."""
    if unit == ZERO_UNIT:
        return 0
    key, check = _QQ.unpack(unit)
    return key if key and check == key ^ MIX else None


def decode(data: bytes) -> tuple[Run, ...]:
    """What a read returned, as runs (key, lo, hi) of byte offsets in the block.

    Units that are no stamp are GARBAGE when there are more than two in a row
    or they lie between two runs of one stamp (no write, truncate or torn read
    makes either); otherwise a FRAGMENT, ignored by the check: a truncate may
    cut a unit, a torn read may tear one or two units at a boundary, with a
    value seen nowhere else. A short last unit that is a prefix of the
    previous one belongs to it (end of file inside a unit).
    """
    whole = _uniform(data)
    if whole is not None:
        return whole
    return _runs(_unstamped_resolved(_unit_values(data)), len(data))


def _uniform(data: bytes) -> tuple[Run, ...] | None:
    """Nothing, all zeros, or one stamp throughout (the common reads), said at once; None otherwise."""
    n = len(data)
    if n == 0:
        return ()
    if data.count(0) == n:
        return ((0, 0, n),)
    if n >= UNIT:
        first = data[:UNIT]
        key = _unit_value(first)
        if key and data == first * (n // UNIT) + first[: n % UNIT]:
            return ((key, 0, n),)
    return None


def _unit_values(data: bytes) -> list[int | None]:
    """Each unit's key (0: zeros; None: no stamp); a short last unit is its predecessor's if it is its prefix."""
    values: list[int | None] = []
    for i in range(0, len(data), UNIT):
        unit = data[i : i + UNIT]
        if len(unit) == UNIT:
            values.append(_unit_value(unit))
        elif unit.count(0) == len(unit):
            values.append(0)
        else:  # end of file inside a unit: the prefix of the previous unit's stamp?
            prev = values[-1] if values else None
            values.append(prev if prev and stamp_unit(prev)[: len(unit)] == unit else None)
    return values


def _unstamped_resolved(values: list[int | None]) -> list[int]:
    """The values with each stretch of units that are no stamp decided, at its first unit: GARBAGE when longer
    than two units or between two runs of one stamp, a FRAGMENT otherwise."""
    resolved: list[int] = []
    for i, value in enumerate(values):
        if value is not None:
            resolved.append(value)
        elif i and values[i - 1] is None:
            resolved.append(resolved[-1])  # the stretch, decided at its first unit
        else:
            j = i
            while j < len(values) and values[j] is None:
                j += 1
            before, after = values[i - 1] if i else None, values[j] if j < len(values) else None
            garbage = j - i > 2 or (before is not None and before == after and before != 0)
            resolved.append(GARBAGE if garbage else FRAGMENT)
    return resolved


def _runs(resolved: list[int], n: int) -> tuple[Run, ...]:
    """Runs (key, lo, hi) of equal resolved units, in bytes of the n read."""
    runs: list[Run] = []
    start = 0
    for i in range(1, len(resolved) + 1):
        if i == len(resolved) or resolved[i] != resolved[start]:
            runs.append((resolved[start], start * UNIT, min(i * UNIT, n)))
            start = i
    return tuple(runs)


# -- the history ------------------------------------------------------------------------


class Open(NamedTuple):
    """A name resolved: an open(2), or the lookup of a path stat(2)."""

    id: int
    node: int
    worker: int
    name: int
    start: int
    end: int
    ino: int  # st_ino of what it got, or -errno
    created: int  # the Ns id whose O_CREAT|O_EXCL made this descriptor, or -1


class Op(NamedTuple):
    """A data operation through a descriptor (`fd`: an Open id)."""

    kind: str  # write, append, src_write (behind the mounts' back), read, truncate, stat, fstat
    node: int  # -1: SRC itself (src_write)
    worker: int
    fd: int
    arg: int  # write, src_write, read: the block; append: where it landed (-1: not known yet); truncate: the size
    start: int
    end: int
    res: int  # write, append, src_write, read: bytes; truncate: 0; stat, fstat: the size; or -errno
    stamp: int  # write, append, src_write: its stamp key
    runs: tuple[Run, ...] | None  # read: what it returned, decoded


class Ns(NamedTuple):
    """A namespace operation, under the namespace lock."""

    id: int
    kind: str  # create (setup), recreate (unlink + create), rename (src over dst, then create src)
    node: int
    worker: int
    src: int
    dst: int  # rename: the name replaced; else -1
    start: int
    end: int
    step: int  # the unlink or rename: 0 or -errno (create: 0)
    created: int  # Open id of the new file's descriptor, or -errno
    truth: tuple[tuple[int, int], ...]  # (name, inode number in SRC or -1) after the operation


@dataclass
class History:
    names: list[str]
    opens: list[Open]
    ops: list[Op]
    ns: list[Ns]
    t0: int = 0  # when the workers started
    elapsed: float = 0.0  # seconds the workload took
    nodes: int = 1
    workers: int = 1
    seed: int = 0
    file_size: int = 0
    notes: list[str] = field(default_factory=list)
    # SRC's `log` after the run, one entry a block: the stamp key it holds whole, 0 for zeros,
    # -1 for bytes no stamp; and which names are `log` and `behind` (-1: not in the run)
    log_blocks: list[int] = field(default_factory=list)
    log_name: int = -1
    behind_name: int = -1


# -- the check ---------------------------------------------------------------------------


@dataclass
class Violation:
    kind: str  # stale read, stale size, stale name, corrupt, error
    time: int  # start of the operation that saw it (ns, CLOCK_MONOTONIC)
    text: str


@dataclass
class Report:
    nodes: int = 0
    workers: int = 0
    files: int = 0
    file_size: int = 0
    seed: int = 0
    ops_by_kind: dict[str, int] = field(default_factory=dict)
    reads_checked: int = 0
    sizes_checked: int = 0
    opens_checked: int = 0
    unchecked: int = 0  # observations through a descriptor whose file is ambiguous
    stale_name_reads: int = 0  # reads of data through a descriptor a stale name gave
    elapsed: float = 0.0
    check_seconds: float = 0.0
    counts: Counter[str] = field(default_factory=Counter)
    violations: list[Violation] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def ops(self) -> int:
        return sum(v for k, v in self.ops_by_kind.items() if k != "open")

    @property
    def ok(self) -> bool:
        return not self.violations

    def add(self, kind: str, time: int, text: str) -> None:
        self.counts[kind] += 1
        self.violations.append(Violation(kind, time, text))

    def first(self, count: int) -> list[Violation]:
        """The first violations in time, with the first three of every kind among them."""
        ordered = sorted(self.violations, key=lambda v: v.time)
        chosen: list[Violation] = []
        for kind in KINDS:
            chosen += [v for v in ordered if v.kind == kind][:3]
        chosen = chosen[:count]
        picked = {id(v) for v in chosen}
        chosen += [v for v in ordered if id(v) not in picked][: count - len(chosen)]
        return sorted(chosen, key=lambda v: v.time)

    def summary(self) -> dict[str, Any]:
        t0 = min((v.time for v in self.violations), default=0)
        return {
            "ok": self.ok,
            "nodes": self.nodes,
            "workers": self.workers,
            "files": self.files,
            "file_size": self.file_size,
            "seed": self.seed,
            "ops": self.ops,
            "ops_by_kind": dict(sorted(self.ops_by_kind.items())),
            "reads_checked": self.reads_checked,
            "sizes_checked": self.sizes_checked,
            "opens_checked": self.opens_checked,
            "unchecked": self.unchecked,
            "reads_through_stale_names": self.stale_name_reads,
            "lost_writes": self.counts["lost write"],
            "stale_reads": self.counts["stale read"],
            "stale_sizes": self.counts["stale size"],
            "stale_names": self.counts["stale name"],
            "corrupt": self.counts["corrupt"],
            "errors": self.counts["error"],
            "violations": len(self.violations),
            "elapsed_seconds": round(self.elapsed, 3),
            "ops_per_second": round(self.ops / self.elapsed) if self.elapsed > 0 else None,
            "check_seconds": round(self.check_seconds, 3),
            "first_violations": [{"kind": v.kind, "ms_after_first": round((v.time - t0) / 1e6, 3),
                                  "text": v.text} for v in self.first(50)],
            "notes": self.notes,
        }

    def text(self) -> str:
        s = self.summary()
        kinds = ", ".join(f"{k} {v}" for k, v in s["ops_by_kind"].items())
        rate = f"{s['ops_per_second']:,} ops/s" if s["ops_per_second"] else "-"
        lines = [
            f"coherency: {self.nodes} nodes, {self.workers} workers, {self.files} files of "
            f"{self.file_size // 1024} KiB, seed {self.seed}",
            f"ops: {s['ops']:,} in {self.elapsed:.2f} s ({rate}): {kinds}",
            f"checked: {self.reads_checked:,} reads, {self.sizes_checked:,} sizes, {self.opens_checked:,} opens "
            f"({self.unchecked:,} unchecked) in {self.check_seconds:.2f} s",
            f"violations: {s['lost_writes']} lost writes, {s['stale_reads']} stale reads, "
            f"{s['stale_sizes']} stale sizes, "
            f"{s['stale_names']} stale names, {s['corrupt']} corrupt, {s['errors']} errors",
        ]
        if self.stale_name_reads:
            lines.append(f"reads of data through descriptors that stale names gave: {self.stale_name_reads:,} "
                         "(each checked against the file it got)")
        lines += [f"note: {n}" for n in self.notes]
        if self.violations:
            lines.append(f"first {min(SHOWN, len(self.violations))} of {len(self.violations)}:")
            lines += [f"  {v.text}" for v in self.first(SHOWN)]
        lines.append("result: " + ("ok" if self.ok else "FAILED"))
        return "\n".join(lines)


@dataclass
class _Inc:
    """One incarnation of a file: an inode from its creation on."""

    ino: int
    start: int  # creation
    end: int
    label: str


@dataclass
class _Events:
    writes: dict[int, list[tuple[int, int, int]]] = field(default_factory=lambda: defaultdict(list))
    truncs: list[tuple[int, int, int, int, bool]] = field(default_factory=list)  # start, end, size, op, definite
    setters: list[tuple[int, int, int, int, bool]] = field(default_factory=list)  # ... the size it leaves
    obs: list[int] = field(default_factory=list)  # reads, stats, fstats (op indexes)


def dominance_max(points: Sequence[tuple[int, int, int, int]],
                  queries: Sequence[tuple[int, int]]) -> list[tuple[int, int] | None]:
    """For each query (tq, vq): (w, tag) of the point (t, v, w, tag) with the largest w
    among those with t < tq and v < vq, or None. O((P + Q) log P)."""
    out: list[tuple[int, int] | None] = [None] * len(queries)
    if not points or not queries:
        return out
    values = sorted({p[1] for p in points})
    size = len(values)
    best = [-INF] * (size + 1)
    tags = [0] * (size + 1)
    pts = sorted(points, key=lambda p: p[0])
    j = 0
    for qi in sorted(range(len(queries)), key=lambda i: queries[i][0]):
        tq, vq = queries[qi]
        while j < len(pts) and pts[j][0] < tq:
            _, v, w, tag = pts[j]
            j += 1
            i = bisect.bisect_left(values, v) + 1
            while i <= size:
                if w > best[i]:
                    best[i], tags[i] = w, tag
                i += i & -i
        i = bisect.bisect_left(values, vq)
        bw, bt = -INF, 0
        while i > 0:
            if best[i] > bw:
                bw, bt = best[i], tags[i]
            i -= i & -i
        if bw > -INF:
            out[qi] = (bw, bt)
    return out


class _Queries:
    """dominance_max over one set of points, asked query by query and answered all at once."""

    def __init__(self, points: list[tuple[int, int, int, int]]) -> None:
        self.points = points
        self.asked: list[tuple[int, int]] = []
        self.answers: list[tuple[int, int] | None] = []

    def ask(self, t: int, v: int) -> int:
        self.asked.append((t, v))
        return len(self.asked) - 1

    def answer(self) -> None:
        self.answers = dominance_max(self.points, self.asked)

    def __getitem__(self, i: int) -> tuple[int, int] | None:
        return self.answers[i]


@dataclass
class _FileQueries:
    """A file's changes, each set asked for the latest one (op index) before a moment among those past a size:
    what completed before an observation began could have been missed only by a stale one; what began before
    it ended could have come after what it should have seen."""

    done_truncs: _Queries  # definite truncates (end, size, start): of those done before t below v, the latest begun
    begun_truncs: _Queries  # every truncate (start, size, end): of those begun before t below v, the latest ended
    done_setters: _Queries  # definite size setters (end, -size, start): ... done before t, left larger than -v
    begun_setters: _Queries  # every size setter (start, -size, end): ... begun before t, leaving at least 1 - v

    @classmethod
    def of(cls, ev: _Events) -> _FileQueries:
        return cls(_Queries([(e, size, s, i) for s, e, size, i, d in ev.truncs if d]),
                   _Queries([(s, size, e, i) for s, e, size, i, _ in ev.truncs]),
                   _Queries([(e, -size, s, i) for s, e, size, i, d in ev.setters if d]),
                   _Queries([(s, -size, e, i) for s, e, size, i, _ in ev.setters]))

    def answer(self) -> None:
        for q in (self.done_truncs, self.begun_truncs, self.done_setters, self.begun_setters):
            q.answer()


class _LastWrites:
    """A file's definite writes of each block, for: the latest-starting write of block b that ended before t."""

    def __init__(self, writes: dict[int, list[tuple[int, int, int]]]) -> None:
        self.by_block: dict[int, tuple[list[int], list[int], list[int]]] = {}
        for b, lst in writes.items():
            lst.sort()
            ends, best_start, best_idx = [], [], []
            best, bi = -INF, -1
            for end, start, idx in lst:
                if start > best:
                    best, bi = start, idx
                ends.append(end)
                best_start.append(best)
                best_idx.append(bi)
            self.by_block[b] = (ends, best_start, best_idx)

    def before(self, b: int, t: int) -> tuple[int, int] | None:
        """(start, op) of that write, or None."""
        entry = self.by_block.get(b)
        if entry is None:
            return None
        k = bisect.bisect_left(entry[0], t)
        return (entry[1][k - 1], entry[2][k - 1]) if k else None


class _SrcWrites:
    """The writes made straight to SRC that wrote a whole block: by block in the order they completed, and by
    stamp."""

    def __init__(self, ops: Sequence[Op]) -> None:
        self.by_block: dict[int, list[Op]] = defaultdict(list)
        self.by_key: dict[int, Op] = {}
        for op in ops:
            if op.kind == "src_write" and op.res == BLOCK:
                self.by_block[op.arg].append(op)
                self.by_key[op.stamp] = op
        for lst in self.by_block.values():
            lst.sort(key=lambda w: w.end)
        self.ends = {b: [w.end for w in lst] for b, lst in self.by_block.items()}

    def newest_before(self, block: int, t: int) -> Op | None:
        """The latest-starting write of the block that completed before t."""
        k = bisect.bisect_left(self.ends.get(block, []), t)
        return max(self.by_block.get(block, [])[:k], key=lambda w: w.start, default=None)

    def end_of(self, key: int, read: Op) -> int | None:
        """When the write a read's bytes came from ended (-INF: zeros, what the file held before any write);
        None when no write of the read's block before it ended made them."""
        if key == 0:
            return -INF
        w = self.by_key.get(key)
        if w is None or key == GARBAGE or w.arg != read.arg or w.start > read.end:
            return None
        return w.end


def _unanswered(done: tuple[int, int] | None, later: tuple[int, int] | None) -> tuple[int, int] | None:
    """A change (start, op) completed before an observation, unless a change that could undo it (`later`:
    (end, op)) began before the observation ended and could have come after it."""
    return done if done is not None and (later is None or later[0] < done[0]) else None


def _contradicted(asked: tuple[int, int] | None, done: _Queries, later: _Queries) -> tuple[int, int] | None:
    """The change a size seen contradicts (see _unanswered), when the observation asked (its two queries)."""
    return None if asked is None else _unanswered(done[asked[0]], later[asked[1]])


@dataclass
class _Observation:
    """A read, stat or fstat of one file, with the indexes of its queries in the file's _FileQueries."""

    op: Op
    runs: list[tuple[int, int, int, int]]  # (key, lo, hi, query): what a read returned, a stamp's or zeros' query
    lo_size: int  # the size it saw was at least this (0: no bound)
    hi_size: int  # ... and at most this (INF: no bound)
    larger: tuple[int, int] | None = None  # (done_setters, begun_truncs) queries: was the size left larger?
    smaller: tuple[int, int] | None = None  # (done_truncs, begun_setters) queries: was it left smaller?


class Checker:
    def __init__(self, history: History) -> None:
        self.h = history
        self.report = Report(nodes=history.nodes, workers=history.workers, files=len(history.names),
                             file_size=history.file_size, seed=history.seed, elapsed=history.elapsed,
                             notes=list(history.notes))
        self.opens = {o.id: o for o in history.opens}
        self.incs: list[_Inc] = []
        self.by_ino: dict[int, list[int]] = defaultdict(list)
        # name -> (starts, ends, states during, binding after, the operation)
        self.timeline: dict[int, tuple[list[int], list[int], list[frozenset[int | None]],
                                       list[int | None], list[Ns]]] = {}
        self.created: dict[int, int] = {}  # Open id -> the incarnation its O_CREAT made
        self.fd_incs: dict[int, tuple[int, ...]] = {}  # Open id -> incarnations it may be
        self.stamps: dict[int, int] = {}  # stamp key -> op index
        self.stale_opens: set[int] = set()  # Open ids a stale name resolved
        self.events: dict[int, _Events] = defaultdict(_Events)
        self.per_name: Counter[int] = Counter()
        self.t0 = min((o.start for o in history.ops), default=history.t0)

    # -- words --

    def t(self, ns: int) -> str:
        return f"{(ns - self.t0) / 1e6:+.3f}"

    def span(self, start: int, end: int) -> str:
        return f"[{self.t(start)}..{self.t(end)} ms]"

    @staticmethod
    def who(node: int, worker: int) -> str:
        if node < 0:
            return f"SRC/w{worker}"
        return f"node{node}/w{worker}" if worker >= 0 else f"node{node}/setup"

    def desc(self, idx: int, inc: int) -> str:
        if idx < 0:
            c = self.incs[inc]
            return f"creation of {c.label} {self.span(c.start, c.end)}"
        op = self.h.ops[idx]
        what = (f"{op.kind.replace('_', ' ')} {key_label(op.stamp)} of block {op.arg}" if op.stamp
                else f"truncate to {op.arg}")
        return f"{what} by {self.who(op.node, op.worker)} {self.span(op.start, op.end)}"

    def ns_desc(self, op: Ns) -> str:
        names = self.h.names
        what = (f"rename {names[op.src]} over {names[op.dst]}" if op.kind == "rename"
                else f"{op.kind} of {names[op.src]}")
        return f"{what} by {self.who(op.node, op.worker)} {self.span(op.start, op.end)}"

    def inc_label(self, inc: int | None) -> str:
        return "no file" if inc is None else self.incs[inc].label

    # -- namespace --

    def _new_inc(self, name: int, ino: int, start: int, end: int) -> int:
        self.per_name[name] += 1
        self.incs.append(_Inc(ino, start, end, f"{self.h.names[name]}#{self.per_name[name]}"))
        inc = len(self.incs) - 1
        self.by_ino[ino].append(inc)
        ev = self.events[inc]
        ev.truncs.append((start, end, 0, -1, True))  # a new file is empty
        ev.setters.append((start, end, 0, -1, True))
        return inc

    def replay(self) -> None:
        """The namespace, from the serialized namespace operations and SRC's truth."""
        bind: dict[int, int | None] = {}
        for op in sorted(self.h.ns, key=lambda n: n.start):
            touched = (op.src,) if op.dst < 0 else (op.src, op.dst)
            before = {n: bind.get(n) for n in touched}
            self._judge_step(op, before[op.src])
            new = self._creation(op)
            after = self._bound_after(op, before, new)
            for n in touched:
                bind[n] = self._record(op, n, before[n], after.get(n, before[n]))

    def _judge_step(self, op: Ns, was: int | None) -> None:
        """The unlink or rename failed: ENOENT while the name was bound is a stale name, any other an error."""
        if op.step >= 0:
            return
        if op.step == -errno.ENOENT and was is not None:
            self.report.add("stale name", op.start, f"stale name: {self.ns_desc(op)} failed with ENOENT "
                            f"but {self.h.names[op.src]} was {self.inc_label(was)}")
        elif op.step != -errno.ENOENT:
            self.report.add("error", op.start, f"error: {self.ns_desc(op)}: {errno.errorcode.get(-op.step)}")

    def _creation(self, op: Ns) -> int | None:
        """The incarnation the operation's create made, if it made one; a create that failed after the unlink
        or rename succeeded is judged."""
        if op.created > 0:
            o = self.opens[op.created]
            new = self._new_inc(op.src, o.ino, op.start, op.end)
            self.created[o.id] = new
            return new
        if op.step >= 0 and op.created == -errno.EEXIST and op.kind != "create":
            # the unlink or rename said yes, yet the name was still there: the node's kernel saw
            # no change to make (e.g. both names were one inode in its stale dentries)
            self.report.add("stale name", op.start, f"stale name: {self.ns_desc(op)} succeeded, then creating "
                            f"{self.h.names[op.src]} failed with EEXIST: the node's view of the names was stale")
        elif op.step >= 0:
            self.report.add("error", op.start, f"error: {self.ns_desc(op)}: create failed with "
                            f"{errno.errorcode.get(-op.created)}")
        return None

    def _bound_after(self, op: Ns, before: dict[int, int | None], new: int | None) -> dict[int, int | None]:
        """The incarnation each name touched is bound to after the operation, from SRC's inode numbers."""
        after: dict[int, int | None] = {}
        for n, ino in op.truth:
            if ino < 0:
                after[n] = None
            elif new is not None and n == op.src and self.incs[new].ino == ino:
                after[n] = new
            else:
                match = [i for i in before.values() if i is not None and self.incs[i].ino == ino]
                if match:
                    after[n] = match[0]
                else:
                    after[n] = self._new_inc(n, ino, op.start, op.end)
                    self.report.notes.append(f"{self.h.names[n]} became an unexpected inode {ino} in "
                                             f"{self.ns_desc(op)}")
        return after

    def _record(self, op: Ns, name: int, was: int | None, now_bound: int | None) -> int | None:
        """The name's timeline gains the operation: what it may be bound to during it, and after; returns after."""
        states: set[int | None] = {was, now_bound}
        if name == op.src and op.kind != "create":
            states.add(None)
        starts, ends, during, afters, ops = self.timeline.setdefault(name, ([], [], [], [], []))
        starts.append(op.start)
        ends.append(op.end)
        during.append(frozenset(states))
        afters.append(now_bound)
        ops.append(op)
        return now_bound

    def candidates(self, name: int, start: int, end: int) -> tuple[set[int | None], Ns | None]:
        """Incarnations (None: no file) the name may have been bound to during [start, end],
        and the last namespace operation on it that ended before `start`."""
        tl = self.timeline.get(name)
        if tl is None:
            return {None}, None
        starts, ends, during, afters, ops = tl
        i = bisect.bisect_left(ends, start)  # those ended before `start` (touching counts as overlapping)
        cands: set[int | None] = {afters[i - 1] if i else None}
        j = i
        while j < len(starts) and starts[j] <= end:
            cands |= during[j]
            j += 1
        return cands, ops[i - 1] if i else None

    def resolve_opens(self) -> None:
        names = self.h.names
        for o in self.h.opens:
            if o.id in self.created:
                self.fd_incs[o.id] = (self.created[o.id],)
                continue
            what = "open" if o.created < 0 else "create"
            who = f"{self.who(o.node, o.worker)} {what} of {names[o.name]} {self.span(o.start, o.end)}"
            cands, last = self.candidates(o.name, o.start, o.end)
            bound = " or ".join(sorted(self.inc_label(c) for c in cands if c is not None)) or "no file"
            since = f" (since {self.ns_desc(last)})" if last is not None else ""
            if o.ino < 0:
                if o.ino != -errno.ENOENT:
                    self.report.add("error", o.start, f"error: {who}: {errno.errorcode.get(-o.ino)}")
                elif None not in cands:
                    self.report.add("stale name", o.start, f"stale name: {who} failed with ENOENT but "
                                    f"{names[o.name]} was {bound} throughout{since}")
                continue
            self.report.opens_checked += 1
            match = tuple(c for c in cands if c is not None and self.incs[c].ino == o.ino)
            if match:
                self.fd_incs[o.id] = match
                continue
            same = self.by_ino.get(o.ino, [])
            # a file with this inode number created completely before the open began
            # means the earlier ones were gone by then (the number was free again)
            floor = max((self.incs[i].start for i in same if self.incs[i].end < o.start), default=-INF)
            maybe = tuple(i for i in same if floor <= self.incs[i].start <= o.end)
            if not maybe:
                self.report.add("corrupt", o.start, f"corrupt: {who} got inode {o.ino}, no file the checker made")
                continue
            got = "/".join(self.incs[i].label for i in maybe)
            self.report.add("stale name", o.start, f"stale name: {who} got {got} (inode {o.ino}) but "
                            f"{names[o.name]} was {bound} throughout{since}")
            self.fd_incs[o.id] = maybe
            self.stale_opens.add(o.id)

    # -- data --

    def collect(self) -> None:
        """Each data operation as an event of the files its descriptor may be: the changes (writes, appends,
        truncates) and the observations to check (reads, sizes)."""
        self._count_kinds()
        for idx, op in enumerate(self.h.ops):
            incs = self.fd_incs.get(op.fd)
            if op.kind == "src_write" or self.opens[op.fd].name == self.h.behind_name:
                self._judge_behind_failure(op)
                continue  # judged by check_behind (close-to-open)
            if op.res < 0 and not self._judge_failure(op, incs):
                continue
            if op.stamp:
                self.stamps[op.stamp] = idx
            if not incs or op.arg < 0:  # (an append that landed nowhere: see resolve_appends)
                continue
            if op.kind in CHANGES:
                self._add_change(idx, op, incs)
            elif len(incs) == 1:
                self._add_observation(idx, op, incs[0])
            else:
                self.report.unchecked += 1

    def _count_kinds(self) -> None:
        kinds: Counter[str] = Counter(o.kind for o in self.h.ops)
        kinds.update(n.kind for n in self.h.ns if n.worker >= 0)
        kinds["open"] = sum(1 for o in self.h.opens if o.created < 0 and o.id not in self.created) - kinds["stat"]
        self.report.ops_by_kind = {k: v for k, v in kinds.items() if v}

    def _judge_behind_failure(self, op: Op) -> None:
        if op.res < 0:
            self.report.add("error", op.start, f"error: {self.who(op.node, op.worker)} {op.kind} of "
                            f"{BEHIND} {self.span(op.start, op.end)}: {errno.errorcode.get(-op.res, op.res)}")

    def _judge_failure(self, op: Op, incs: tuple[int, ...] | None) -> bool:
        """An operation that failed is an error (a failed open was judged as an open); whether it still counts
        as a change that may have happened in part."""
        o = self.opens.get(op.fd)
        if o is None or o.ino >= 0:
            label = "/".join(self.inc_label(i) for i in incs) if incs else "?"
            self.report.add("error", op.start, f"error: {self.who(op.node, op.worker)} {op.kind} of {label} "
                            f"{self.span(op.start, op.end)}: {errno.errorcode.get(-op.res, op.res)}")
        return op.kind in CHANGES and bool(incs)

    def _add_change(self, idx: int, op: Op, incs: tuple[int, ...]) -> None:
        """A write or truncate of every file it may have changed: definite when the file is known and it did all
        it was asked."""
        definite = len(incs) == 1 and op.res == (BLOCK if op.stamp else 0)
        for inc in incs:
            ev = self.events[inc]
            if op.stamp:
                if definite:
                    ev.writes[op.arg].append((op.end, op.start, idx))
                ev.setters.append((op.start, op.end, (op.arg + 1) * BLOCK, idx, definite))
            else:
                ev.truncs.append((op.start, op.end, op.arg, idx, definite))
                ev.setters.append((op.start, op.end, op.arg, idx, definite))

    def _add_observation(self, idx: int, op: Op, inc: int) -> None:
        self.events[inc].obs.append(idx)
        if op.kind == "read" and op.res > 0 and op.fd in self.stale_opens:
            self.report.stale_name_reads += 1

    def check_file(self, inc: int, ev: _Events) -> None:
        """Every observation of one file against the file's changes (see the rules in the docstring)."""
        queries = _FileQueries.of(ev)
        seen = [self._ask(self.h.ops[idx], queries) for idx in ev.obs]
        queries.answer()
        writes = _LastWrites(ev.writes)
        for obs in seen:
            found = self._judge(inc, obs, queries, writes)
            if found:
                self.report.add(found[0], obs.op.start, found[1])

    def _ask(self, op: Op, q: _FileQueries) -> _Observation:
        """The queries an observation needs: for each stamp it read, a truncate that cut it; for each range of
        zeros, a truncate that could have zeroed it; for the size it saw, what left the file larger or smaller."""
        if op.kind == "read":
            self.report.reads_checked += 1
            base = op.arg * BLOCK
            runs = [self._ask_run(key, lo, hi, base, op, q) for key, lo, hi in op.runs or () if key != FRAGMENT]
            n = op.res
            obs = _Observation(op, runs, 0 if n == 0 else base + n if n < BLOCK else base + BLOCK,
                               base + n if n < BLOCK else INF)
        else:
            obs = _Observation(op, [], op.res, op.res)
        self.report.sizes_checked += 1
        if obs.hi_size < INF:
            obs.larger = (q.done_setters.ask(op.start, -obs.hi_size), q.begun_truncs.ask(op.end + 1, obs.hi_size + 1))
        if obs.lo_size > 0:
            obs.smaller = (q.done_truncs.ask(op.start, obs.lo_size), q.begun_setters.ask(op.end + 1, -obs.lo_size + 1))
        return obs

    @staticmethod
    def _ask_run(key: int, lo: int, hi: int, base: int, op: Op, q: _FileQueries) -> tuple[int, int, int, int]:
        if key == 0:
            return key, lo, hi, q.begun_truncs.ask(op.end + 1, base + hi)
        if key == GARBAGE:
            return key, lo, hi, -1
        return key, lo, hi, q.done_truncs.ask(op.start, base + hi)

    def _judge(self, inc: int, obs: _Observation, q: _FileQueries, writes: _LastWrites) -> tuple[str, str] | None:
        """The first violation an observation shows: in what it read, then in the size it saw."""
        op = obs.op
        who = f"{self.who(op.node, op.worker)} {op.kind}"
        label = self.incs[inc].label
        where = (f"{who} of {label} block {op.arg} {self.span(op.start, op.end)}" if op.kind == "read"
                 else f"{who} of {label} {self.span(op.start, op.end)}")
        return (self._judge_content(inc, obs, where, q, writes) or self._judge_smaller_than_left(inc, obs, where, q)
                or self._judge_larger_than_cut(inc, obs, where, q))

    def _judge_content(self, inc: int, obs: _Observation, where: str, q: _FileQueries,
                       writes: _LastWrites) -> tuple[str, str] | None:
        """Garbage, a stamp that is no write of this block or was superseded, or zeros over a completed write."""
        op = obs.op
        for key, lo, hi, qi in obs.runs:
            part = f"bytes {lo}-{hi - 1}" if (lo, hi) != (0, BLOCK) else "the block"
            if key == GARBAGE:
                return "corrupt", f"corrupt: {where}: {part} hold bytes no write made"
            if key == 0:
                found = self._judge_zeros(inc, where, part, writes.before(op.arg, op.start), q.begun_truncs[qi])
            else:
                found = self.check_stamp(inc, op, where, part, key, q.done_truncs[qi], writes.before(op.arg, op.start))
            if found:
                return found
        return None

    def _judge_zeros(self, inc: int, where: str, part: str, overwrite: tuple[int, int] | None,
                     zeroed: tuple[int, int] | None) -> tuple[str, str] | None:
        """Zeros are stale when a write of the block completed before the read began, after anything that could
        zero them."""
        write = _unanswered(overwrite, zeroed)
        if write is None:
            return None
        return "stale read", (f"stale read: {where}: {part} read as zeros, but {self.desc(write[1], inc)} "
                              "completed before the read began and after anything that could zero them")

    def _judge_smaller_than_left(self, inc: int, obs: _Observation, where: str,
                                 q: _FileQueries) -> tuple[str, str] | None:
        """A size below what a completed write or truncate left, with no truncate that could have come after."""
        setter = _contradicted(obs.larger, q.done_setters, q.begun_truncs)
        if setter is None:
            return None
        op, seen_max = obs.op, obs.hi_size
        seen = f"at most {seen_max}" if op.kind == "read" and op.res == 0 < seen_max else f"{seen_max}"
        return "stale size", (f"stale size: {where} saw size {seen}, but {self.desc(setter[1], inc)} left it at "
                              f"{self.size_left(setter[1], inc)} before, and no truncate to {seen_max} or less could "
                              "have come after it")

    def _judge_larger_than_cut(self, inc: int, obs: _Observation, where: str,
                               q: _FileQueries) -> tuple[str, str] | None:
        """A size above what a completed truncate left, with no write or truncate reaching it that could have come
        after."""
        trunc = _contradicted(obs.smaller, q.done_truncs, q.begun_setters)
        if trunc is None:
            return None
        op, seen_min = obs.op, obs.lo_size
        seen = f"at least {seen_min}" if op.kind == "read" and op.res == BLOCK else f"{seen_min}"
        return "stale size", (f"stale size: {where} saw size {seen}, but {self.desc(trunc[1], inc)} completed "
                              f"before, and no write or truncate reaching {seen_min} could have come after it")

    def size_left(self, idx: int, inc: int) -> int:
        if idx < 0:
            return 0
        op = self.h.ops[idx]
        return (op.arg + 1) * BLOCK if op.stamp else op.arg

    def check_stamp(self, inc: int, op: Op, where: str, part: str, key: int, trunc: tuple[int, int] | None,
                    overwrite: tuple[int, int] | None) -> tuple[str, str] | None:
        widx = self.stamps.get(key)
        got = f"{part} {'holds' if part == 'the block' else 'hold'} {key_label(key)}"
        if widx is None:
            return "corrupt", f"corrupt: {where}: {got}, a write that never happened"
        w = self.h.ops[widx]
        elsewhere = self._written_elsewhere(inc, op, w)
        if elsewhere:
            return "corrupt", f"corrupt: {where}: {got}, {elsewhere}"
        if overwrite is not None and overwrite[0] > w.end:
            return "stale read", (f"stale read: {where}: {got} ({self.desc(widx, inc)}), but "
                                  f"{self.desc(overwrite[1], inc)} came after it and completed before the read began")
        if trunc is not None and trunc[0] > w.end:
            return "stale read", (f"stale read: {where}: {got} ({self.desc(widx, inc)}), but "
                                  f"{self.desc(trunc[1], inc)} cut them after it and completed before the read began")
        return None

    def _written_elsewhere(self, inc: int, read: Op, w: Op) -> str | None:
        """Why the write whose stamp a read returned cannot be what it read: another block or file, or later."""
        if w.arg != read.arg:
            return f"which wrote block {w.arg}"
        if inc not in self.fd_incs.get(w.fd, ()):
            files = "/".join(self.inc_label(i) for i in self.fd_incs.get(w.fd, ())) or "an unknown file"
            return f"which wrote {files}"
        if w.start > read.end:
            return "which began after the read ended"
        return None

    def resolve_appends(self) -> None:
        """Where each append landed, from SRC's log after the run: an append that returned a
        whole block but is nowhere in it lost data (its bytes went over another's)."""
        if self.h.log_name < 0:
            return
        landed: dict[int, int] = {}
        for block, key in enumerate(self.h.log_blocks):
            if key <= 0:
                what = "zeros" if key == 0 else "bytes no append made"
                self.report.add("corrupt", self.t0, f"corrupt: block {block} of {LOG} in SRC holds {what}")
            elif key in landed:
                self.report.add("corrupt", self.t0, f"corrupt: {key_label(key)} is in blocks {landed[key]} and "
                                f"{block} of {LOG} in SRC: one append, landed twice")
            else:
                landed[key] = block
        ops = self.h.ops
        for idx, op in enumerate(ops):
            if op.kind != "append":
                continue
            block = landed.pop(op.stamp, -1)
            if block < 0 and op.res == BLOCK:
                self.report.add("lost write", op.start, f"lost write: append {key_label(op.stamp)} by "
                                f"{self.who(op.node, op.worker)} {self.span(op.start, op.end)} returned {BLOCK}, "
                                f"but its bytes are nowhere in {LOG} in SRC")
            ops[idx] = op._replace(arg=block)
        for key, block in landed.items():
            self.report.add("corrupt", self.t0, f"corrupt: block {block} of {LOG} in SRC holds {key_label(key)}, "
                            "which no append made")

    def check_behind(self) -> None:
        """Reads and sizes of `behind`, written only in SRC: close-to-open."""
        name = self.h.behind_name
        if name < 0:
            return
        src = _SrcWrites(self.h.ops)
        for op in self.h.ops:
            if op.kind == "src_write" or op.res < 0 or self.opens[op.fd].name != name:
                continue
            self.report.sizes_checked += 1
            if op.kind == "read":
                self._check_behind_read(op, src)
            elif op.res != self.h.file_size:
                self.report.add("stale size", op.start, f"stale size: {self.who(op.node, op.worker)} {op.kind} of "
                                f"{BEHIND} {self.span(op.start, op.end)} saw size {op.res}; it is always "
                                f"{self.h.file_size}")

    def _check_behind_read(self, op: Op, src: _SrcWrites) -> None:
        """A read of `behind` returns the newest write of the block done before its descriptor was opened, or a
        later one: never bytes no write of the block made."""
        self.report.reads_checked += 1
        opened = self.opens[op.fd].start
        where = (f"{self.who(op.node, op.worker)} {op.kind} of {BEHIND} block {op.arg} {self.span(op.start, op.end)} "
                 f"(opened at {self.t(opened)} ms)")
        if op.res != BLOCK:
            self.report.add("stale size", op.start, f"stale size: {where} read {op.res} bytes of a block "
                            f"that always exists")
            return
        newest = src.newest_before(op.arg, opened)
        for key, lo, hi in op.runs or ():
            if key == FRAGMENT:
                continue
            got_end = src.end_of(key, op)
            if got_end is None:
                self.report.add("corrupt", op.start, f"corrupt: {where}: bytes {lo}-{hi - 1} hold bytes no "
                                f"write of this block made")
                return
            if newest is not None and newest.start > got_end:
                got = "zeros" if key == 0 else key_label(key)
                self.report.add("stale read", op.start, f"stale read: {where}: bytes {lo}-{hi - 1} hold "
                                f"{got}, but src write {key_label(newest.stamp)} "
                                f"{self.span(newest.start, newest.end)} came after it and completed "
                                "before the descriptor was opened")
                return

    def run(self) -> Report:
        started = time.monotonic()
        self.replay()
        self.resolve_opens()
        self.resolve_appends()
        self.check_behind()
        self.collect()
        for inc, ev in self.events.items():
            if ev.obs:
                self.check_file(inc, ev)
        self.report.check_seconds = time.monotonic() - started
        return self.report


def check(history: History) -> Report:
    """Check a history offline: the report counts every violation and explains each."""
    return Checker(history).run()


# -- the workers -------------------------------------------------------------------------


@dataclass
class WorkerSpec:
    worker: int
    node: int
    role: str  # writer or reader
    root: str  # the work directory through this node's mount
    src: str  # the work directory in SRC (the truth after namespace operations)
    names: list[str]
    file_size: int
    ops: int
    seed: int
    direct: float  # fraction of opens with O_DIRECT
    fresh: float  # fraction of operations on a descriptor opened for them alone
    out: str
    mix: tuple[tuple[str, int], ...] = WRITER_MIX  # the writers' operation weights
    regular: int = 0  # names[:regular] take every operation; then `log` and `behind`, if in the run
    log: int = -1
    behind: int = -1


class _Worker:
    def __init__(self, spec: WorkerSpec, lock: Any) -> None:
        self.s = spec
        self.lock = lock
        self.rng = random.Random(f"{spec.seed}:{spec.worker}")
        self.paths = [os.path.join(spec.root, n) for n in spec.names]
        self.src_paths = [os.path.join(spec.src, n) for n in spec.names]
        self.blocks = spec.file_size // BLOCK
        self.kept: dict[int, tuple[int, int, bool]] = {}  # name -> (fd, open id, O_DIRECT)
        self.kept_append: tuple[int, int] | None = None  # (fd, open id) with O_APPEND, on the log
        self.opens: list[Open] = []
        self.ops: list[Op] = []
        self.ns: list[Ns] = []
        self.ids = itertools.count(1)
        self.writes = itertools.count(1)
        self.buf = mmap.mmap(-1, BLOCK)  # page-aligned, for O_DIRECT
        self.direct_ok = spec.direct > 0
        self.regular = spec.regular or len(spec.names)
        mix = [(k, w) for k, w in (spec.mix if spec.role == "writer" else READER_MIX)
               if w > 0 and (k != "rename" or self.regular > 1)]
        self.kinds = [k for k, _ in mix]
        self.cum = list(itertools.accumulate(w for _, w in mix))

    def next_id(self) -> int:
        return ((self.s.worker + 1) << 32) | next(self.ids)

    def run(self) -> None:
        rng = self.rng
        for _ in range(self.s.ops):
            kind = rng.choices(self.kinds, cum_weights=self.cum)[0]
            # changes of data and names only on the regular files; reads and stats on any
            name = rng.randrange(self.regular if kind in ("write", "truncate", "recreate", "rename")
                                 else len(self.paths))
            if kind == "append":
                self.append()
            elif kind == "src_write":
                self.src_write()
            elif kind in ("recreate", "rename"):
                self.namespace(kind, name)
            elif kind == "stat":
                self.path_stat(name)
            else:
                self.data(kind, name)

    def close_all(self) -> None:
        for fd, _, _ in self.kept.values():
            with suppress(OSError):
                os.close(fd)
        self.kept.clear()
        if self.kept_append is not None:
            with suppress(OSError):
                os.close(self.kept_append[0])
            self.kept_append = None

    def open(self, name: int) -> tuple[int, int, bool]:
        direct = self.direct_ok and self.rng.random() < self.s.direct
        oid = self.next_id()
        start = now()
        try:
            fd = os.open(self.paths[name], os.O_RDWR | os.O_CLOEXEC | (os.O_DIRECT if direct else 0))
        except OSError as exc:
            end = now()
            if direct and exc.errno == errno.EINVAL:  # no O_DIRECT here: stop asking
                self.direct_ok = False
                return self.open(name)
            self.opens.append(Open(oid, self.s.node, self.s.worker, name, start, end, -(exc.errno or errno.EIO), -1))
            return -1, oid, False
        end = now()
        try:
            ino = os.fstat(fd).st_ino
        except OSError as exc:
            os.close(fd)
            self.opens.append(Open(oid, self.s.node, self.s.worker, name, start, end, -(exc.errno or errno.EIO), -1))
            return -1, oid, False
        self.opens.append(Open(oid, self.s.node, self.s.worker, name, start, end, ino, -1))
        return fd, oid, direct

    def keep(self, name: int, entry: tuple[int, int, bool]) -> None:
        old = self.kept.pop(name, None)
        if old is not None:
            with suppress(OSError):
                os.close(old[0])
        self.kept[name] = entry

    def data(self, kind: str, name: int) -> None:
        """A read, write, truncate or fstat through a descriptor opened for it alone, or a kept one."""
        fresh = kind != "fstat" and self.rng.random() < self.s.fresh
        fd, oid, direct = self.open(name) if fresh else self.kept_descriptor(name)
        if fd < 0:
            o = self.opens[-1]
            self.ops.append(Op(kind, self.s.node, self.s.worker, oid, 0, o.start, o.end, o.ino, 0, None))
            return
        try:
            if kind == "write":
                self.write(fd, oid, direct, self.rng.randrange(self.blocks))
            elif kind == "read":
                self.read(fd, oid, direct, self.log_block(fd, oid) if name == self.s.log
                          else self.rng.randrange(self.blocks))
            elif kind == "truncate":
                self.truncate(fd, oid)
            else:
                self.fstat(fd, oid)
        finally:
            if fresh:
                with suppress(OSError):
                    os.close(fd)

    def kept_descriptor(self, name: int) -> tuple[int, int, bool]:
        """The descriptor kept open on the name (reopened now and then), opened if there is none."""
        kept = self.kept.get(name)
        if kept is not None and self.rng.random() < 0.08:  # reopen now and then
            with suppress(OSError):
                os.close(kept[0])
            del self.kept[name]
            kept = None
        if kept is None:
            kept = self.open(name)
            if kept[0] >= 0:
                self.kept[name] = kept
        return kept

    def fstat(self, fd: int, oid: int) -> int:
        """The size fstat says (or -errno), recorded."""
        start = now()
        try:
            size = os.fstat(fd).st_size
        except OSError as exc:
            size = -(exc.errno or errno.EIO)
        self.ops.append(Op("fstat", self.s.node, self.s.worker, oid, 0, start, now(), size, 0, None))
        return size

    def write(self, fd: int, oid: int, direct: bool, block: int) -> None:
        key = stamp_key(self.s.worker, next(self.writes))
        data = stamp_block(key)
        if direct:
            self.buf[:] = data
        start = now()
        try:
            n = os.pwritev(fd, [self.buf], block * BLOCK) if direct else os.pwrite(fd, data, block * BLOCK)
        except OSError as exc:
            n = -(exc.errno or errno.EIO)
        end = now()
        self.ops.append(Op("write", self.s.node, self.s.worker, oid, block, start, end, n, key, None))

    def log_block(self, fd: int, oid: int) -> int:
        """A block of the log to read, most often its last (the append the others just made):
        the size is asked first (and checked, as any fstat)."""
        last = max(0, self.fstat(fd, oid)) // BLOCK
        return last - self.rng.randrange(2) if last and self.rng.random() < 0.6 else self.rng.randrange(last + 1)

    def append(self) -> None:
        """A whole stamped block appended with O_APPEND (through a kept or a fresh descriptor)."""
        s, name = self.s, self.s.log
        fresh = self.rng.random() < s.fresh
        kept = self.kept_append if not fresh else None
        if kept is None:
            oid = self.next_id()
            start = now()
            try:
                fd = os.open(self.paths[name], os.O_WRONLY | os.O_APPEND | os.O_CLOEXEC)
                ino = os.fstat(fd).st_ino
            except OSError as exc:
                self.opens.append(Open(oid, s.node, s.worker, name, start, now(), -(exc.errno or errno.EIO), -1))
                return
            self.opens.append(Open(oid, s.node, s.worker, name, start, now(), ino, -1))
            kept = (fd, oid)
            if not fresh:
                self.kept_append = kept
        fd, oid = kept
        key = stamp_key(s.worker, next(self.writes))
        start = now()
        try:
            n = os.write(fd, stamp_block(key))
        except OSError as exc:
            n = -(exc.errno or errno.EIO)
        self.ops.append(Op("append", s.node, s.worker, oid, -1, start, now(), n, key, None))
        if fresh:
            os.close(fd)
        elif self.rng.random() < 0.08:  # reopen now and then
            os.close(fd)
            self.kept_append = None

    def src_write(self) -> None:
        """A stamped block written straight to SRC, behind every mount's back."""
        s, name = self.s, self.s.behind
        oid = self.next_id()
        start = now()
        try:
            fd = os.open(self.src_paths[name], os.O_WRONLY | os.O_CLOEXEC)
        except OSError as exc:
            self.opens.append(Open(oid, -1, s.worker, name, start, now(), -(exc.errno or errno.EIO), -1))
            return
        try:
            self.opens.append(Open(oid, -1, s.worker, name, start, now(), os.fstat(fd).st_ino, -1))
            key = stamp_key(s.worker, next(self.writes))
            block = self.rng.randrange(self.blocks)
            start = now()
            try:
                n = os.pwrite(fd, stamp_block(key), block * BLOCK)
            except OSError as exc:
                n = -(exc.errno or errno.EIO)
            self.ops.append(Op("src_write", -1, s.worker, oid, block, start, now(), n, key, None))
        finally:
            os.close(fd)

    def read(self, fd: int, oid: int, direct: bool, block: int) -> None:
        start = now()
        try:
            if direct:
                n = os.preadv(fd, [self.buf], block * BLOCK)
                data = self.buf[:n]
            else:
                data = os.pread(fd, BLOCK, block * BLOCK)
                n = len(data)
        except OSError as exc:
            n, data = -(exc.errno or errno.EIO), b""
        end = now()
        self.ops.append(Op("read", self.s.node, self.s.worker, oid, block, start, end, n, 0, decode(data)))

    def truncate(self, fd: int, oid: int) -> None:
        rng, size = self.rng, self.s.file_size
        r = rng.random()
        if r < 0.4:
            length = rng.randrange(self.blocks + 1) * BLOCK
        elif r < 0.7:
            length = rng.randrange(size // UNIT + 1) * UNIT
        else:
            length = rng.randrange(size + 1)
        start = now()
        try:
            os.ftruncate(fd, length)
            res = 0
        except OSError as exc:
            res = -(exc.errno or errno.EIO)
        end = now()
        self.ops.append(Op("truncate", self.s.node, self.s.worker, oid, length, start, end, res, 0, None))

    def path_stat(self, name: int) -> None:
        s, oid = self.s, self.next_id()
        start = now()
        try:
            st = os.stat(self.paths[name])
            ino, size = st.st_ino, st.st_size
        except OSError as exc:
            ino = size = -(exc.errno or errno.EIO)
        end = now()
        self.opens.append(Open(oid, s.node, s.worker, name, start, end, ino, -1))
        self.ops.append(Op("stat", s.node, s.worker, oid, 0, start, end, size, 0, None))

    def src_ino(self, name: int) -> int:
        try:
            return os.stat(self.src_paths[name], follow_symlinks=False).st_ino
        except FileNotFoundError:
            return -1

    def namespace(self, kind: str, a: int) -> None:
        s, rng = self.s, self.rng
        b = -1 if kind == "recreate" else (a + 1 + rng.randrange(self.regular - 1)) % self.regular
        nid, oid = self.next_id(), self.next_id()
        fd = -1
        if not self.lock.acquire(timeout=LOCK_TIMEOUT):
            raise RuntimeError("the namespace lock was not released (a worker died holding it?)")
        try:
            start = now()
            try:
                if b < 0:
                    os.unlink(self.paths[a])
                else:
                    os.rename(self.paths[a], self.paths[b])
                step = 0
            except OSError as exc:
                step = -(exc.errno or errno.EIO)
            try:
                fd = os.open(self.paths[a], os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
                created = oid
            except OSError as exc:
                created = -(exc.errno or errno.EIO)
            end = now()
            truth = tuple((n, self.src_ino(n)) for n in ((a,) if b < 0 else (a, b)))
        finally:
            self.lock.release()
        try:
            ino = os.fstat(fd).st_ino if fd >= 0 else -1
        except OSError as exc:
            os.close(fd)
            fd, created = -1, -(exc.errno or errno.EIO)
        if fd >= 0:
            self.opens.append(Open(oid, s.node, s.worker, a, start, end, ino, nid))
        self.ns.append(Ns(nid, kind, s.node, s.worker, a, b, start, end, step, created, truth))
        if fd < 0:
            return
        for block in rng.sample(range(self.blocks), min(self.blocks, rng.randrange(3))):  # new content
            self.write(fd, oid, False, block)
        if rng.random() < 0.5:
            self.keep(a, (fd, oid, False))
        else:
            with suppress(OSError):
                os.close(fd)


def _worker_main(spec: WorkerSpec, lock: Any, barrier: Any) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGHUP, signal.SIG_DFL)
    worker = _Worker(spec, lock)
    error = None
    try:
        barrier.wait(timeout=BARRIER_TIMEOUT)
        worker.run()
    except BaseException:
        error = traceback.format_exc()
    finally:
        worker.close_all()
    with open(spec.out, "wb") as f:
        pickle.dump((worker.opens, worker.ops, worker.ns, error), f, protocol=pickle.HIGHEST_PROTOCOL)


# -- a run -----------------------------------------------------------------------------------


class SetupError(Exception):
    """The mounts cannot be checked (exit status 2)."""


class RunError(Exception):
    """The workload did not complete (exit status 1)."""


@dataclass
class Params:
    ops: int = 10_000
    files: int = 4
    file_size: int = 64 * 1024
    workers_per_node: int = 2
    seed: int = 0
    direct: float = 0.1
    fresh: float = 0.35
    timeout: float = 1800.0
    mix: tuple[tuple[str, int], ...] = WRITER_MIX


def find_src(mounts: Sequence[Path]) -> Path:
    """SRC of the mounts (.tmemfs/stats.json); a plain directory is its own SRC."""
    srcs = set()
    for mnt in mounts:
        stats = mnt / ".tmemfs" / "stats.json"
        try:
            srcs.add(Path(json.loads(stats.read_text())["fs.src"]).resolve())
        except (OSError, ValueError, KeyError):
            srcs.add(mnt.resolve())
    if len(srcs) != 1:
        raise SetupError(f"the mounts do not share one SRC: {', '.join(sorted(map(str, srcs)))}")
    return srcs.pop()


def run_workload(mounts: Sequence[Path], src: Path, params: Params,
                 progress: Callable[[str], None] | None = None) -> History:
    """Run the workers on the mounts (node i = mounts[i]) and return their history."""
    workname = f".coherency-{os.getpid()}-{params.seed}"
    history = new_history(len(mounts), params)
    procs: list[multiprocessing.process.BaseProcess] = []
    logdir = Path(tempfile.mkdtemp(prefix="tmemfs-coherency-logs-"))
    made = False
    try:
        os.mkdir(mounts[0] / workname)
        made = True
        check_shared(mounts, src, workname)
        create_files(history, mounts, src, workname)
        specs = worker_specs(history, mounts, src, workname, params, logdir)
        started = start_workers(specs, procs, history, progress)
        wait_workers(procs, params.timeout, started + params.timeout)
        history.elapsed = time.monotonic() - started
        gather(history, specs, procs)
        if history.log_name >= 0:
            history.log_blocks = log_content(src / workname / LOG)
        return history
    finally:
        for proc in procs:
            if proc.exitcode is None:
                proc.kill()
        for proc in procs:
            proc.join(10)
        shutil.rmtree(logdir, ignore_errors=True)
        if made:
            shutil.rmtree(mounts[0] / workname, ignore_errors=True)


def new_history(nodes: int, params: Params) -> History:
    """An empty history of the run's files: the regular ones, then `log` and `behind` if their operations run."""
    weights = dict(params.mix)
    names = [f"f{i}" for i in range(params.files)]
    log = len(names) if weights.get("append") else -1
    names += [LOG] if log >= 0 else []
    behind = len(names) if weights.get("src_write") else -1
    names += [BEHIND] if behind >= 0 else []
    return History(names, [], [], [], nodes=nodes, workers=nodes * params.workers_per_node, seed=params.seed,
                   file_size=params.file_size, log_name=log, behind_name=behind)


def check_shared(mounts: Sequence[Path], src: Path, workname: str) -> None:
    """What node 0 made must be in SRC and on every other node."""
    if not (src / workname).is_dir():
        raise SetupError(f"{mounts[0]} is not a mount of {src}")
    for mnt in mounts[1:]:
        if not (mnt / workname).is_dir():
            raise SetupError(f"{mnt} does not show what {mounts[0]} wrote: not the same SRC")


def create_files(history: History, mounts: Sequence[Path], src: Path, workname: str) -> None:
    """The first incarnations, made through node 0; every node must show SRC's inode numbers."""
    for i, name in enumerate(history.names):
        start = now()
        fd = os.open(mounts[0] / workname / name, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
        end = now()
        ino = os.fstat(fd).st_ino
        if i == history.behind_name:  # full size from the start: only writes behind the mounts' back change it
            os.ftruncate(fd, history.file_size)
        os.close(fd)
        truth = os.stat(src / workname / name).st_ino
        seen = {os.stat(mnt / workname / name).st_ino for mnt in mounts}
        if seen != {truth} or ino != truth:
            raise SetupError(f"the mounts show inode numbers {sorted(seen)} for a file whose inode in SRC is "
                             f"{truth}: the checker needs st_ino to be SRC's")
        history.opens.append(Open(2 * i + 2, 0, -1, i, start, end, ino, 2 * i + 1))
        history.ns.append(Ns(2 * i + 1, "create", 0, -1, i, -1, start, end, 0, 2 * i + 2, ((i, truth),)))


def worker_specs(history: History, mounts: Sequence[Path], src: Path, workname: str, params: Params,
                 logdir: Path) -> list[WorkerSpec]:
    """Per node, half the workers writers (at least one), the others readers; the operations shared out."""
    specs = []
    nworkers = history.workers
    for w in range(nworkers):
        node, k = divmod(w, params.workers_per_node)
        role = "writer" if k < max(1, params.workers_per_node // 2) else "reader"
        ops = params.ops // nworkers + (1 if w < params.ops % nworkers else 0)
        specs.append(WorkerSpec(w, node, role, str(mounts[node] / workname), str(src / workname), history.names,
                                params.file_size, ops, params.seed, params.direct, params.fresh,
                                str(logdir / f"w{w}.pickle"), params.mix, params.files, history.log_name,
                                history.behind_name))
    return specs


def start_workers(specs: list[WorkerSpec], procs: list[multiprocessing.process.BaseProcess], history: History,
                  progress: Callable[[str], None] | None) -> float:
    """Fork the workers (into `procs`) and let them all go at once; when they went (time.monotonic())."""
    ctx = multiprocessing.get_context("fork")
    lock = ctx.Lock()
    barrier = ctx.Barrier(len(specs) + 1)
    for spec in specs:
        procs.append(ctx.Process(target=_worker_main, args=(spec, lock, barrier), daemon=True))
        procs[-1].start()
    barrier.wait(timeout=BARRIER_TIMEOUT)
    started = time.monotonic()
    history.t0 = now()
    if progress:
        progress(f"{history.workers} workers on {history.nodes} nodes running {sum(s.ops for s in specs):,} "
                 "operations")
    return started


def wait_workers(procs: list[multiprocessing.process.BaseProcess], timeout: float, deadline: float) -> None:
    """Until every worker has ended; RunError if some still run at the deadline (a hang)."""
    while alive := [p for p in procs if p.exitcode is None]:
        if time.monotonic() > deadline:
            raise RunError(f"{len(alive)} workers still running after {timeout:.0f} s (a hang?)")
        wait_sentinels([p.sentinel for p in alive], timeout=min(1.0, max(0.0, deadline - time.monotonic())))


def gather(history: History, specs: list[WorkerSpec], procs: list[multiprocessing.process.BaseProcess]) -> None:
    """Every worker's log into the history; RunError naming each worker that failed or left none."""
    failures = []
    for spec, proc in zip(specs, procs, strict=True):
        try:
            with open(spec.out, "rb") as f:
                opens, ops, ns, error = pickle.load(f)
        except (OSError, EOFError, pickle.UnpicklingError):
            failures.append(f"worker {spec.worker} (node {spec.node}) left no log (exit status {proc.exitcode})")
            continue
        if error is not None:
            failures.append(f"worker {spec.worker} (node {spec.node}) failed:\n{error}")
        history.opens += opens
        history.ops += ops
        history.ns += ns
    if failures:
        raise RunError("\n".join(failures))


def log_content(path: Path) -> list[int]:
    """Each block of the log in SRC: the stamp it holds whole, 0 for zeros, -1 otherwise."""
    data = path.read_bytes()
    out = []
    for offset in range(0, len(data), BLOCK):
        runs = decode(data[offset : offset + BLOCK])
        whole = len(runs) == 1 and runs[0][1:] == (0, BLOCK) and runs[0][0] >= 0
        out.append(runs[0][0] if whole else -1)
    return out


def hold_join(first: Path, options: str, stack: ExitStack) -> tuple[str, Callable[[], None]]:
    """Keep the next node mounted with the returned options out of the pool that the node on
    `first` joined, until the returned release is called: the pool's init lock (lmdb) or a
    proxy that answers nothing (Redis, TCP)."""
    stats = json.loads((first / ".tmemfs" / "stats.json").read_text())
    store = stats.get("backend.cluster.store.store")
    if store == "lmdb":
        fd = os.open(Path(str(stats["backend.cluster.store.directory"])) / "init.lock", os.O_RDWR | os.O_CLOEXEC)
        stack.callback(os.close, fd)
        fcntl.flock(fd, fcntl.LOCK_EX)
        return options, lambda: fcntl.flock(fd, fcntl.LOCK_UN)
    url = next((o.partition("=")[2] for o in options.split(",") if o.startswith("cc_store=")), "")
    if store != "redis" or not url.startswith("redis://"):
        raise SetupError("--slow-join needs nodes of cleancache=cluster on lmdb or on a redis:// (TCP) store")
    parts = urlsplit(url)
    proxy = stack.enter_context(StallingProxy(parts.port or 6379, parts.hostname or "127.0.0.1"))
    netloc = parts.netloc.rpartition("@")[0] + "@" if "@" in parts.netloc else ""
    proxied = urlunsplit(parts._replace(netloc=f"{netloc}127.0.0.1:{proxy.port}"))
    return options.replace(f"cc_store={url}", f"cc_store={proxied}"), proxy.release


@contextmanager
def mounted_nodes(src: Path, count: int, options: str, problems: list[str],
                  progress: Callable[[str], None] | None = None, slow_join: float = 0.0) -> Iterator[list[Path]]:
    """`count` foreground tmemfs mounts of `src` in a temporary directory; every one is
    unmounted and its daemon reaped in a finally. Daemon errors go to `problems`.
    With `slow_join`, the last node cannot join its pool until that many seconds after
    the mounts are handed out."""
    base = Path(tempfile.mkdtemp(prefix="tmemfs-coherency-"))
    started: list[tuple[Path, subprocess.Popen[bytes], Path]] = []
    held = ExitStack()
    release: Callable[[], None] | None = None
    try:
        for i in range(count):
            node_options = options
            if slow_join and i == count - 1 and i > 0:
                node_options, release = hold_join(started[0][0], options, held)
            started.append(spawn_node(base, i, src, node_options))
            wait_node(*started[-1], node_options, progress)
        if release is not None:
            release_later(release, slow_join, held)
            if progress:
                progress(f"node{count - 1} cannot join its pool for {slow_join:g} s")
        yield [mnt for mnt, _, _ in started]
    finally:
        if release is not None:
            release()  # (a proxy stays until the nodes are gone: they may still use it)
        with signals_deferred():
            for mnt, proc, log in reversed(started):
                problems += stop_node(mnt, proc, log)
            held.close()
            if not any(is_mounted(mnt) for mnt, _, _ in started):
                shutil.rmtree(base, ignore_errors=True)


def spawn_node(base: Path, i: int, src: Path, options: str) -> tuple[Path, subprocess.Popen[bytes], Path]:
    """Node i's daemon mounting base/node<i>: (mount point, daemon, its log)."""
    mnt, log = base / f"node{i}", base / f"node{i}.log"
    mnt.mkdir()
    args = [*TMEMFS, str(src), str(mnt), "-f"] + (["-o", options] if options else [])
    with open(log, "wb") as out:
        # its own session: a Ctrl-C at the terminal reaches the checker only, which unmounts
        proc = subprocess.Popen(args, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    return mnt, proc, log


def wait_node(mnt: Path, proc: subprocess.Popen[bytes], log: Path, options: str,
              progress: Callable[[str], None] | None) -> None:
    """Until the node answers; then say so."""
    wait_live(mnt, proc, log)
    if progress:
        progress(f"{mnt.name}: {mnt} (-o {options or 'defaults'}, pid {proc.pid})")


def release_later(release: Callable[[], None], seconds: float, held: ExitStack) -> None:
    """Call `release` in `seconds`, unless `held` closes first."""
    timer = threading.Timer(seconds, release)
    timer.daemon = True
    held.callback(timer.cancel)
    timer.start()


def stop_node(mnt: Path, proc: subprocess.Popen[bytes], log: Path) -> list[str]:
    """Unmount a node and reap its daemon: what went wrong, or what it logged as an error."""
    problems = []
    try:
        stop_foreground(mnt, proc)
    except Exception as exc:
        problems.append(f"{mnt}: could not stop: {exc}")
    if proc.returncode not in (0, None):
        problems.append(f"{mnt}: tmemfs exited with {proc.returncode}")
    with suppress(OSError):
        text = log.read_text(errors="replace")
        if "internal error" in text or "Traceback" in text:
            problems.append(f"{mnt}: tmemfs logged an error:\n{text[-3000:]}")
    return problems


# -- the command line ---------------------------------------------------------------------


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        self.exit(2, f"coherency: {message}\n")


def _size(text: str) -> int:
    scale = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
    text = text.strip().upper().removesuffix("IB").removesuffix("B")
    try:
        return int(text[:-1]) * scale[text[-1]] if text and text[-1] in scale else int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a size: {text}") from None


def _mix(text: str) -> tuple[tuple[str, int], ...]:
    """`write=50,rename=0`: the writers' weights, changed from WRITER_MIX."""
    weights = dict(WRITER_MIX)
    for item in filter(None, text.split(",")):
        kind, sep, value = item.partition("=")
        if kind not in weights or not sep or not value.isdigit():
            raise argparse.ArgumentTypeError(f"{item}: expected KIND=WEIGHT, KIND one of {', '.join(weights)}")
        weights[kind] = int(value)
    if not any(weights.values()):
        raise argparse.ArgumentTypeError("every weight is 0")
    return tuple(weights.items())


def _fraction(text: str) -> float:
    value = float(text)
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError("must be between 0 and 1")
    return value


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = _Parser(prog="python -m tools.coherency", description=__doc__,
                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("mounts", nargs="*", type=Path, metavar="MNT", help="mount points of one SRC")
    parser.add_argument("--mount", type=Path, metavar="SRC", help="mount SRC --nodes times in a temporary directory")
    parser.add_argument("--nodes", type=int, default=2, help="with --mount: how many mounts (default 2)")
    parser.add_argument("--options", default="", help="with --mount: tmemfs -o options of every node")
    parser.add_argument("--ops", type=int, default=10_000, help="operations in all (default 10000)")
    parser.add_argument("--files", type=int, default=4, help="files the workers share (default 4)")
    parser.add_argument("--file-size", type=_size, default=64 * 1024,
                        help="largest file size, a multiple of 4096 (default 64K)")
    parser.add_argument("--workers-per-node", type=int, default=2,
                        help="worker processes per node, half writers, half readers (default 2)")
    parser.add_argument("--seed", type=int, default=None, help="random seed (default: random, printed)")
    parser.add_argument("--direct", type=_fraction, default=0.1, help="fraction of opens with O_DIRECT (default 0.1)")
    parser.add_argument("--fresh", type=_fraction, default=0.35,
                        help="fraction of operations on a descriptor opened for them alone (default 0.35)")
    parser.add_argument("--mix", type=_mix, default=WRITER_MIX, metavar="KIND=WEIGHT,...",
                        help="writers' operation weights, changed from the default "
                             + ",".join(f"{k}={w}" for k, w in WRITER_MIX) + " (readers: "
                             + ",".join(f"{k}={w}" for k, w in READER_MIX) + ")")
    parser.add_argument("--timeout", type=float, default=1800.0, help="longest run of the workers, seconds")
    parser.add_argument("--slow-join", type=float, default=0.0, metavar="SECONDS",
                        help="with --mount and cluster nodes: the last node cannot join its pool for "
                             "the first SECONDS of the run")
    parser.add_argument("--json", action="store_true", help="print a JSON summary instead of text")
    args = parser.parse_args(argv)
    if args.mount is not None and args.mounts:
        parser.error("give mount points or --mount SRC, not both")
    if args.mount is None and not args.mounts:
        parser.error("give mount points (MNT1 MNT2 ...) or --mount SRC")
    if args.slow_join and (args.mount is None or args.nodes < 2 or args.slow_join < 0):
        parser.error("--slow-join needs --mount SRC, at least 2 --nodes and a positive number of seconds")
    if args.mount is not None and not args.mount.is_dir():
        parser.error(f"--mount {args.mount}: not a directory")
    for mnt in args.mounts:
        if not mnt.is_dir():
            parser.error(f"{mnt}: not a directory")
    if args.nodes < 1 or args.ops < 1 or args.files < 1 or args.timeout <= 0:
        parser.error("--nodes, --ops, --files and --timeout must be positive")
    if args.workers_per_node < 2:
        parser.error("--workers-per-node must be at least 2 (a writer and a reader)")
    if args.file_size < BLOCK or args.file_size % BLOCK:
        parser.error(f"--file-size must be a positive multiple of {BLOCK}")
    return args


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    seed = args.seed if args.seed is not None else int.from_bytes(os.urandom(3), "little")
    params = Params(args.ops, args.files, args.file_size, args.workers_per_node, seed, args.direct, args.fresh,
                    args.timeout, args.mix)

    def progress(text: str) -> None:
        print(f"coherency: {text}", file=sys.stderr, flush=True)

    progress(f"seed {seed}")
    problems: list[str] = []
    report: Report
    old = {s: signal.signal(s, _interrupt) for s in (signal.SIGTERM, signal.SIGHUP)}  # clean up as for Ctrl-C
    try:
        if args.mount is not None:
            with mounted_nodes(args.mount.resolve(), args.nodes, args.options, problems, progress,
                               args.slow_join) as mounts:
                history = run_workload(mounts, args.mount.resolve(), params, progress)
        else:
            history = run_workload(args.mounts, find_src(args.mounts), params, progress)
        report = check(history)
    except SetupError as exc:
        print(f"coherency: {exc}", file=sys.stderr)
        return 2
    except (RunError, OSError, RuntimeError) as exc:
        print(f"coherency: the run failed: {exc}", file=sys.stderr)
        for problem in problems:
            print(f"coherency: {problem}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("coherency: interrupted", file=sys.stderr)
        return 130
    finally:
        for s, handler in old.items():
            signal.signal(s, handler)
    for problem in problems:
        report.add("error", 0, f"error: {problem}")
    print(json.dumps(report.summary(), indent=2) if args.json else report.text())
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
