"""The data model check with several concurrent clients per file.

Client processes (fork) do random I/O on the SAME few files of a mount at
the same time: pwrite in regions each client alone writes (page-aligned and
not) and anywhere (overlapping other clients'), pread, O_DIRECT reads into
aligned buffers, whole-file reads, fstat, O_APPEND writes, ftruncate
(shrinking and growing), reopen (sometimes with O_TRUNC). A single model
cannot predict racing results, so every byte written names its write, and
every change is published in shared memory, with CLOCK_MONOTONIC times
taken before it starts and after it returns, before the change is made.
After each read, the reader checks what it got against every client's
changes. FUSE and tmemfs promise no atomicity of a read against a racing
write (a read may be torn anywhere), so the oracle is per byte, the
regular-register rule; it is sound (it only passes what a correct
filesystem may return) and misses only cases it cannot decide:

* every byte a read returns was put at that offset by a write or an append
  of this file (its pattern at that offset) or is zero from a truncate,
  creation or hole, by a change that had begun before the read ended, and
  that no other change of that byte replaced before the read began (X is
  replaced for read R when some change of the byte began after X ended and
  ended before R began). Anything else is a STALE READ (bytes of a replaced
  change, the install-after-invalidate race), or GARBAGE (bytes nobody ever
  wrote at this offset of this file: another offset, another file, zeros
  where none were);
* the size a short read (end of file) or fstat shows is one the file could
  have had during it: not below the size left by a change completed before
  it began unless a truncate that low may have come since, not above what a
  truncate completed before it left unless a change reaching that high may
  have come since (a STALE SIZE otherwise);
* every `checkpoint` operations, all clients stop at a barrier; then each
  reads every file whole through the mount, checked as above with nothing
  in flight, and must find it equal to the file in SRC read directly
  (bypassing the mount). SRC's content becomes the model's new starting
  point.

The bytes of a change are drawn from "SEED:CLIENT:INDEX", so every reader
regenerates them from the log, and bytes found out of place name the write
they belong to. An append lands at SRC's end as it is when tmemfs writes it
(README), which is not always where the kernel's file offset says: an
O_TRUNC open is not serialised with writes by the kernel (atomic_o_trunc
takes no inode lock), so one racing an append or an extending write can
leave the kernel's size stale, and the offsets it gives the next appends
with it. The appender therefore finds where its bytes landed in SRC (read
directly), and counts the appends the kernel placed elsewhere; if none of
them is there and no other change of the file ran meanwhile, the append is
a LOST APPEND. (One whose bytes another change cut or overwrote first may
be read anywhere while it runs, and while a change begun before it ended
runs on, since that change may have hidden it from the search; after that,
only as a remnant holding no whole 16-byte chunk of it, which the search
cannot have seen: a full stress run once read the first 6 bytes of such an
append, the rest of its first chunk overwritten, and called them GARBAGE.
A remnant is followed across the read, not only within one interval of
the model, so a chunk split by an interval edge is still whole.) Under kernel_cache the
same race can leave the kernel a stale size for a moment (README), so a
STALE SIZE names the last O_TRUNC open begun before the read ended and the
writes and appends that raced it: the times tell whether that window
explains it. Ops per client are drawn from "SEED:N", so a seed replays the same per-client operation sequences
(the interleaving differs from run to run):

    python -m tools.modelcheck MNT/dir --clients 4 --ops 5000 --seed 42 [--src SRC/dir]
"""

from __future__ import annotations

import argparse
import bisect
import errno
import mmap
import multiprocessing
import os
import queue
import random
import threading
import time
import traceback
from array import array
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from multiprocessing.synchronize import Barrier, Lock
from pathlib import Path
from typing import Any

PAGE = 4096
INF = 1 << 62  # past any offset: where a truncate's cut ends
MAX_WRITE = 5 * PAGE + 1
MAX_APPEND = 2 * PAGE
LANDED_CHUNK = 16  # an append is found in SRC by a whole chunk of its bytes (Client.landed)
MAX_MESSAGES = 5  # per client: the first mismatches in full, the rest counted
WAIT_S = 120.0  # for a change in flight to end, or for the other clients at a barrier

# Each client's operations and their weights (--mix changes them).
MIX = (("write_own", 20), ("write_any", 10), ("pread", 24), ("direct_read", 8), ("whole_read", 4), ("fstat", 4),
       ("truncate", 5), ("append", 6), ("reopen", 3), ("reopen_trunc", 1))

WRITE, APPEND, TRUNCATE, BASE, OPEN_TRUNC = 1, 2, 3, 4, 5
KIND_NAMES = {WRITE: "write", APPEND: "append", TRUNCATE: "truncate", BASE: "checkpoint", OPEN_TRUNC: "O_TRUNC open"}
TRUNCATES = (TRUNCATE, OPEN_TRUNC)  # an O_TRUNC open is a truncate to 0 the kernel does not serialise with writes
FIELDS = 8  # kind, file, offset, length, landed, start, end, failed
F_LANDED, F_START, F_END, F_FAILED = 4, 5, 6, 7


# -- what one client did, in shared memory ------------------------------------------------


class SharedLog:
    """One client's changes: published before each starts (so that any reader it
    may affect sees it) and completed when it returns. Shared with the forked
    clients; one lock per log orders the stores."""

    def __init__(self, capacity: int, lock: Lock) -> None:
        self.capacity = capacity
        self.lock = lock
        self.buf = mmap.mmap(-1, 8 * (1 + FIELDS * capacity))  # MAP_SHARED: inherited by fork
        self.words = memoryview(self.buf).cast("q")

    def begin(self, kind: int, file: int, offset: int, length: int) -> int:
        """Publish a change about to start; its index in this log."""
        with self.lock:
            index = self.words[0]
            if index >= self.capacity:
                raise RuntimeError("shared log full")
            base = 1 + index * FIELDS
            self.words[base : base + FIELDS] = array("q", (kind, file, offset, length, -1, time.monotonic_ns(), 0, 0))
            self.words[0] = index + 1
        return index

    def end(self, index: int, landed: int = -1, failed: bool = False) -> None:
        """The change returned (its end time is taken now: after the syscall)."""
        end = time.monotonic_ns()
        base = 1 + index * FIELDS
        with self.lock:
            self.words[base + F_LANDED] = landed
            self.words[base + F_FAILED] = int(failed)
            self.words[base + F_END] = end

    def records(self, first: int) -> list[list[int]]:
        """Records first.. as published now."""
        with self.lock:
            count = self.words[0]
            return [self.words[1 + n * FIELDS : 1 + (n + 1) * FIELDS].tolist() for n in range(first, count)]

    def completion(self, index: int) -> tuple[int, int, int]:
        """(landed, end, failed) of a record; end 0 while it is in flight."""
        base = 1 + index * FIELDS
        with self.lock:
            return self.words[base + F_LANDED], self.words[base + F_END], self.words[base + F_FAILED]


# -- the oracle ---------------------------------------------------------------------------


@dataclass(eq=False, slots=True)
class Change:
    """A completed change of one file: the bytes [lo, hi) it set, the size it left."""

    kind: int
    client: int  # -1: the checkpoint's content
    index: int  # in its client's log
    lo: int
    hi: int  # INF for a cut (truncate, checkpoint): everything past lo becomes a hole
    start: int
    end: int
    failed: bool = False
    data: bytes = b""  # what it wrote at lo, or the checkpoint's content at 0
    floating: bool = False  # an append whose offset is unknown (see Client.landed)
    cuts: bool = field(init=False)  # a truncate or a checkpoint: the size is exactly `reach`
    reach: int = field(init=False)  # the size it leaves (at least this, for a write)

    def __post_init__(self) -> None:
        self.cuts = self.kind in (*TRUNCATES, BASE)
        self.reach = len(self.data) if self.kind == BASE else self.lo if self.kind in TRUNCATES \
            else INF if self.floating else self.hi

    def content(self, lo: int, hi: int) -> bytes:
        """Its bytes at lo..hi (zeros past a cut)."""
        if self.kind in (WRITE, APPEND):
            return self.data[lo - self.lo : hi - self.lo]
        chunk = self.data[lo:hi]
        return chunk + bytes(hi - lo - len(chunk))

    def label(self, t0: int) -> str:
        what = KIND_NAMES[self.kind]
        if self.kind == BASE:
            return f"checkpoint content ({len(self.data)} bytes) at {ms(self.start, t0)}"
        span = f"to size {self.lo}" if self.kind in TRUNCATES else \
            f"of {len(self.data)} bytes, landed who knows where" if self.floating else f"[{self.lo}, {self.hi})"
        flag = " FAILED" if self.failed else ""
        return f"{what}{flag} {span} by client {self.client} (its change #{self.index}), " \
               f"{ms(self.start, t0)}..{ms(self.end, t0)}"


def ms(t: int, t0: int) -> str:
    return f"{(t - t0) / 1e6:.3f} ms"


def pattern(seed: int, client: int, index: int, length: int) -> bytes:
    """The bytes of a client's change `index`: random, and its own."""
    return random.Random(f"{seed}:{client}:{index}").randbytes(length)


def change_of(seed: int, client: int, index: int, record: list[int], landed: int, end: int,
              failed: int) -> Change:
    kind, _, offset, length, _, start = record[:6]
    if kind in TRUNCATES:
        return Change(kind, client, index, offset, INF, start, end, bool(failed))
    data = pattern(seed, client, index, length)
    if landed < 0:  # an append that failed, or whose bytes were gone before its writer looked
        return Change(kind, client, index, 0, 0, start, end, bool(failed), data, floating=True)
    origin = landed if kind == APPEND else offset
    return Change(kind, client, index, origin, origin + length, start, end, bool(failed), data)


class FileModel:
    """What each byte of one file may read as: intervals of offsets, each with the
    changes not yet replaced there (a set of possible values instead of one value),
    and every change since the last checkpoint for sizes and diagnosis."""

    def __init__(self, t0: int) -> None:
        self.t0 = t0
        self.bounds: list[int] = [0]  # interval n is [bounds[n], bounds[n + 1] or INF)
        self.live: list[tuple[Change, ...]] = [()]
        self.history: list[Change] = []
        self.pending: list[Change] = []  # added, but not yet applied as a replacement
        self.floating: list[Change] = []
        self.reset(b"", t0)

    def reset(self, content: bytes, when: int) -> None:
        """A checkpoint: the file is `content`, exactly, as of `when`."""
        base = Change(BASE, -1, 0, 0, INF, when, when, data=content)
        self.bounds, self.live, self.history, self.pending, self.floating = [0], [(base,)], [base], [], []

    def add(self, change: Change) -> None:
        """A change that completed: a possible value of its bytes from now on."""
        self.history.append(change)
        if change.floating:
            self.floating.append(change)
            return
        for n in self._span(change.lo, change.hi):
            self.live[n] += (change,)
        if not change.failed:  # a failed change's effect is unknown: it replaces nothing
            self.pending.append(change)

    def settle(self, before: int) -> None:
        """Apply the changes that ended before `before` (a read's start) as replacements:
        every later read starts later still."""
        keep = []
        for change in self.pending:
            if change.end < before:
                self._replace(change)
            else:
                keep.append(change)
        self.pending = keep

    def _replace(self, by: Change) -> None:
        span = self._span(by.lo, by.hi)
        for n in span:
            self.live[n] = tuple(x for x in self.live[n] if not x.end < by.start)
        self._merge(max(0, span.start - 1), span.stop + 1)

    def _split(self, at: int) -> int:
        n = bisect.bisect_right(self.bounds, at) - 1
        if self.bounds[n] == at:
            return n
        self.bounds.insert(n + 1, at)
        self.live.insert(n + 1, self.live[n])
        return n + 1

    def _span(self, lo: int, hi: int) -> range:
        first = self._split(lo)
        return range(first, self._split(hi) if hi < INF else len(self.bounds))

    def _merge(self, first: int, stop: int) -> None:
        n = min(stop, len(self.bounds)) - 1
        while n > first:
            if self.live[n] == self.live[n - 1]:
                del self.bounds[n], self.live[n]
            n -= 1

    def intervals(self, lo: int, hi: int) -> Iterator[tuple[int, int, tuple[Change, ...]]]:
        """(a, b, possible changes) covering lo..hi."""
        n = bisect.bisect_right(self.bounds, lo) - 1
        while n < len(self.bounds) and self.bounds[n] < hi:
            end = self.bounds[n + 1] if n + 1 < len(self.bounds) else INF
            yield max(lo, self.bounds[n]), min(hi, end), self.live[n]
            n += 1

    # -- checks: each returns the problems found, as text ---------------------------------

    def check_bytes(self, offset: int, data: bytes, start: int, end: int) -> list[str]:
        """Bytes read at `offset` by a read that ran start..end."""
        torn = []  # the intervals no one option explains whole, in the read's coordinates
        for a, b, live in self.intervals(offset, offset + len(data)):
            options = [x for x in live if x.start < end]
            wants = [x.content(a, b) for x in options]
            if data[a - offset : b - offset] not in wants:
                torn.append((a - offset, b - offset, options, wants))
        if not torn:
            return []
        whole, remnants = self.floating_pieces(start, end)
        explained_to = 0  # bytes before it are a run of a floating append's (it may span intervals)
        for i, stop, options, wants in torn:
            at = max(i, explained_to)
            while at < stop:
                if any(want[at - i] == data[at] for want in wants):
                    at += 1
                    continue
                explained_to = floating_run(data, at, stop, whole, remnants)
                if explained_to == at:
                    return [self.explain(offset + at, data[at:stop][:16], options, start)]
                at = explained_to
        return []

    def floating_pieces(self, start: int, end: int) -> tuple[list[bytes], list[bytes]]:
        """The bytes of the appends whose offset is unknown (Client.landed) that a read
        running start..end may find: whole, or only in remnants holding no whole chunk.

        Whole while the append ran, and after it while a change begun before it ended
        (before its writer's search) had not ended when the read began: that change may
        have hidden the append's bytes from the search and not yet from a read (a byte
        may read as its old value while a change of it is in flight). Otherwise only
        remnants: the search found no whole chunk, and nothing writes the bytes again.
        None of an append that began after the read ended."""
        whole, remnants = [], []
        for x in self.floating:
            if x.start >= end:
                continue
            if start < x.end or any(y is not x and y.start < x.end and y.end > start for y in self.history):
                whole.append(x.data)
            else:
                remnants.append(x.data)
        return whole, remnants

    def check_size(self, low: int, high: int, start: int, end: int) -> str | None:
        """A size seen between start and end, known to lie in low..high."""
        seen = f"size {low}" if low == high else f"size in {low}..{high}"
        history = [x for x in self.history if x.start < end and not x.failed]
        lows = [x.end for x in history if x.cuts and x.reach <= high]
        last_low = max(lows, default=-1)
        for x in history:
            if x.end < start and x.reach > high and x.start >= last_low and not x.floating:
                return f"STALE SIZE: {seen}, but {x.label(self.t0)} left it at {x.reach} before the read began, " \
                       f"and no truncate to {high} or less may have come after it{self.open_trunc_note(start, end)}"
        highs = [x.end for x in history if x.reach >= low]
        last_high = max(highs, default=-1)
        for x in history:
            if x.cuts and x.end < start and x.reach < low and x.start >= last_high:
                return f"STALE SIZE: {seen}, but {x.label(self.t0)} left it at {x.reach} before the read began, " \
                       f"and no change reaching {low} may have come after it{self.open_trunc_note(start, end)}"
        return None

    def open_trunc_note(self, start: int, end: int) -> str:
        """The last O_TRUNC open of the file that began before a read that saw a stale size ended, and the
        changes that raced it: the kernel_cache window README describes (the kernel truncates at that open
        without its inode lock, so a write racing it can leave the kernel a size guessed from before), or
        not, shown by the times."""
        opens = [x for x in self.history if x.kind == OPEN_TRUNC and x.start < end]
        if not opens:
            return "; no O_TRUNC open of the file came before the read"
        last = max(opens, key=lambda x: x.start)
        racing = [x for x in self.history if x.kind in (WRITE, APPEND) and x.start < last.end and x.end > last.start]
        when = f"{(start - last.end) / 1e6:.1f} ms before the read began" if last.end <= start else \
            "in flight when the read began" if last.start < start else "begun during the read"
        return f"; the last O_TRUNC open before it ended: {last.label(self.t0)}, {when}, raced by " + \
               (", ".join(x.label(self.t0) for x in racing[:3]) if racing else "no write or append")

    def explain(self, at: int, got: bytes, options: list[Change], start: int) -> str:
        """Why the bytes at `at` are wrong: whose they are, and what replaced them."""
        allowed = "; ".join(x.label(self.t0) for x in options) or "nothing (no change may be read here)"
        matches = [x for x in self.history if x.lo <= at < x.hi and x.content(at, at + len(got)) == got]
        if not matches:
            what = "zeros" if got == bytes(len(got)) else "bytes"
            return f"GARBAGE at offset {at}: {what} {got.hex()} that no change of this file put there" \
                   f"{self.misplaced(got)}; allowed: {allowed}"
        old = matches[-1]
        newer = [x for x in self.history if x.lo <= at < x.hi and x.start > old.end and x.end < start]
        by = f", replaced by {newer[0].label(self.t0)}" if newer else ""
        return f"STALE READ at offset {at}: {got.hex()} is from {old.label(self.t0)}{by}, before the read began " \
               f"at {ms(start, self.t0)}; allowed: {allowed}"

    def misplaced(self, got: bytes) -> str:
        """Whose bytes these are if they are a change's at another offset."""
        if len(got) < 8 or got == bytes(len(got)):
            return ""
        for x in self.history:
            at = x.data.find(got) if x.kind in (WRITE, APPEND) else -1
            if at >= 0:
                where = "" if x.floating else f": they belong at offset {x.lo + at}"
                return f" (they are byte {at} of {x.label(self.t0)}{where})"
        return " (nor any change of it since the last checkpoint, at any offset)"


def floating_run(data: bytes, at: int, stop: int, whole: list[bytes], remnants: list[bytes]) -> int:
    """Where the longest run of `data` from `at` on that is the bytes of one of `whole` or
    `remnants` ends (`at`: none). A run is found by the bytes up to `stop` (the end of the
    interval: what lies past it may be another change's, the one that cut the append)
    at every place they occur in the piece, then followed as far as `data` goes on
    matching. A run of a remnant explains nothing if it holds a whole LANDED_CHUNK-aligned
    chunk of its piece, counting the bytes that match before `at` too (so a chunk split
    by an interval edge is still whole)."""
    probe = data[at : min(stop, at + LANDED_CHUNK)]
    best = at
    for piece, remnant in [(p, False) for p in whole] + [(p, True) for p in remnants]:
        k = piece.find(probe)
        while k >= 0:
            n = len(probe)
            while at + n < len(data) and k + n < len(piece) and data[at + n] == piece[k + n]:
                n += 1
            before = 0
            if remnant:
                while before < min(at, k) and data[at - before - 1] == piece[k - before - 1]:
                    before += 1
            lo = k - before
            if not remnant or -(-lo // LANDED_CHUNK) * LANDED_CHUNK + LANDED_CHUNK > k + n:
                best = max(best, at + n)
            k = piece.find(probe, k + 1)
    return best


def size_seen(offset: int, asked: int, got: int) -> tuple[int, int]:
    """What a read of `asked` bytes at `offset` returning `got` tells of the size."""
    if got == asked:
        return offset + got, INF
    if got == 0:
        return 0, offset
    return offset + got, offset + got


# -- a client -----------------------------------------------------------------------------


@dataclass
class Setup:
    """What every client shares (inherited through fork)."""

    paths: list[Path]
    srcs: list[Path]
    seed: int
    clients: int
    ops: int
    max_size: int
    checkpoint: int
    mix: tuple[tuple[str, int], ...]
    t0: int
    logs: list[SharedLog]
    barrier: Barrier
    stop: Any  # a multiprocessing Event: a client failed, everybody leaves

    @property
    def whole(self) -> int:
        """What a whole-file read asks for: more than a file grows to (appends stop at
        2 x max_size, but every client may append once more)."""
        return 3 * self.max_size + self.clients * MAX_APPEND + 2 * MAX_WRITE


@dataclass
class Tally:
    """What the clients count, added up in the report."""

    ops: Counter[str] = field(default_factory=Counter)
    reads: int = 0  # reads (and fstats) checked
    bytes_checked: int = 0
    checkpoints: int = 0
    mismatches: int = 0
    messages: list[str] = field(default_factory=list)  # the first mismatches, in full
    appends_moved: int = 0  # landed elsewhere than the kernel's file offset said
    appends_unseen: int = 0  # overwritten or cut before the appender looked

    def add(self, other: Tally) -> None:
        self.ops.update(other.ops)
        self.reads += other.reads
        self.bytes_checked += other.bytes_checked
        self.checkpoints = max(self.checkpoints, other.checkpoints)  # every client passes each
        self.mismatches += other.mismatches
        self.messages += other.messages
        self.appends_moved += other.appends_moved
        self.appends_unseen += other.appends_unseen


@dataclass
class ClientResult(Tally):
    client: int = 0
    crashed: str | None = None


class Client:
    """One client process: its own descriptors, its own copy of the oracle."""

    def __init__(self, setup: Setup, number: int) -> None:
        self.s, self.me = setup, number
        self.rng = random.Random(f"{setup.seed}:{number}")
        self.result = ClientResult(client=number)
        self.models = [FileModel(setup.t0) for _ in setup.paths]
        self.seen = [0] * setup.clients  # records of each log already taken
        self.in_flight: dict[tuple[int, int], list[int]] = {}  # (client, index) -> record
        self.fds = [os.open(p, os.O_RDWR) for p in setup.paths]
        self.aligned = mmap.mmap(-1, 4 * PAGE)
        self.all_regions = own_regions(setup.seed, setup.clients, setup.max_size)
        self.regions = self.all_regions[number]
        self.step, self.op = 0, ""
        self.table: list[tuple[Callable[[int], None], int]] = [(getattr(self, f"op_{name}"), weight)
                                                                for name, weight in setup.mix]

    def run(self) -> ClientResult:
        funcs = [f for f, _ in self.table]
        weights = [w for _, w in self.table]
        try:
            for step in range(self.s.ops):
                self.step = step
                if step and step % self.s.checkpoint == 0:
                    self.checkpoint()
                func = self.rng.choices(funcs, weights)[0]
                self.op = func.__name__[3:]
                file = self.rng.randrange(len(self.fds))
                try:
                    func(file)
                except OSError as exc:
                    if exc.errno in (errno.ENOTCONN, errno.ECONNABORTED):
                        raise  # the mount is gone: stop everybody
                    self.mismatch(file, f"failed: {exc!r}")
                self.result.ops[self.op] += 1
                if self.s.stop.is_set():
                    return self.result
            self.checkpoint()
        finally:
            for fd in self.fds:
                os.close(fd)
            self.aligned.close()
        return self.result

    # -- reporting ------------------------------------------------------------------------

    def mismatch(self, file: int, what: str) -> None:
        self.result.mismatches += 1
        if len(self.result.messages) < MAX_MESSAGES:
            self.result.messages.append(f"seed {self.s.seed}, client {self.me}, op {self.step} ({self.op}) "
                                        f"on {self.s.paths[file].name}: {what}")

    # -- the shared logs ------------------------------------------------------------------

    def ingest(self) -> None:
        """Take every change the logs show as completed into the file models."""
        for c, log in enumerate(self.s.logs):
            for record in log.records(self.seen[c]):
                self.in_flight[(c, self.seen[c])] = record
                self.seen[c] += 1
        for (c, index), record in list(self.in_flight.items()):
            landed, end, failed = self.s.logs[c].completion(index)
            if end:
                del self.in_flight[(c, index)]
                self.models[record[1]].add(change_of(self.s.seed, c, index, record, landed, end, failed))

    def catch_up(self, file: int, before: int) -> None:
        """Ingest until no change of `file` that began before `before` is in flight
        (each may have touched what a read ending at `before` returned)."""
        deadline = time.monotonic() + WAIT_S
        while True:
            self.ingest()
            waiting = [k for k, r in self.in_flight.items() if r[1] == file and r[F_START] < before]
            if not waiting:
                return
            if self.s.stop.is_set() or time.monotonic() > deadline:
                raise RuntimeError(f"changes {waiting} (client, index) of file {file} never completed")
            time.sleep(0.0002)

    # -- checks ---------------------------------------------------------------------------

    def check_read(self, file: int, offset: int, asked: int, data: bytes, start: int, end: int) -> None:
        self.catch_up(file, end)
        model = self.models[file]
        model.settle(start)
        self.result.reads += 1
        self.result.bytes_checked += len(data)
        context = f"read of {asked} at {offset} got {len(data)} bytes ({ms(start, self.s.t0)}..{ms(end, self.s.t0)})"
        problem = model.check_size(*size_seen(offset, asked, len(data)), start, end)
        if problem:
            self.mismatch(file, f"{context}: {problem}")
        for problem in model.check_bytes(offset, data, start, end):
            self.mismatch(file, f"{context}: {problem}")

    def read(self, file: int, offset: int, size: int) -> None:
        start = time.monotonic_ns()
        data = os.pread(self.fds[file], size, offset)
        self.check_read(file, offset, size, data, start, time.monotonic_ns())

    # -- changes --------------------------------------------------------------------------

    def change(self, file: int, kind: int, offset: int, length: int, do: Callable[[bytes], int]) -> None:
        """Publish, do (`do` returns where an append landed), complete; a failure is a
        mismatch, and the change stays possible (it replaces nothing)."""
        log = self.s.logs[self.me]
        index = log.begin(kind, file, offset, length)
        try:
            landed = do(pattern(self.s.seed, self.me, index, length))
        except OSError as exc:
            log.end(index, landed=offset, failed=True)  # an append's offset is -1: unknown
            self.mismatch(file, f"{KIND_NAMES[kind]} of {length} at {offset} failed: {exc!r}")
            return
        log.end(index, landed=landed)

    def write(self, file: int, offset: int, length: int) -> None:
        def do(data: bytes) -> int:
            if os.pwrite(self.fds[file], data, offset) != length:
                raise OSError(errno.EIO, "short write")
            return offset

        self.change(file, WRITE, offset, length, do)
        if self.rng.random() < 0.5:  # read after write: every reader must see it from now on
            self.read(file, max(0, offset - self.rng.choice((0, 1, 100))), length + self.rng.choice((0, 1, 200)))

    def truncate(self, file: int, size: int, do: Callable[[], None], kind: int = TRUNCATE) -> None:
        def run(data: bytes) -> int:
            do()
            return size

        self.change(file, kind, size, 0, run)

    # -- operations -----------------------------------------------------------------------

    def extent(self) -> tuple[int, int]:
        """Anywhere in the file, often page-aligned, of the sizes that split pages oddly."""
        offset = self.rng.randrange(self.s.max_size)
        if self.rng.random() < 0.3:
            offset &= ~(PAGE - 1)
        size = self.rng.choice((1, 7, PAGE - 1, PAGE, PAGE + 1, 3 * PAGE, self.rng.randrange(1, MAX_WRITE)))
        return offset, size

    def op_write_own(self, file: int) -> None:
        if not self.regions:
            self.op_write_any(file)
            return
        lo, hi = self.rng.choice(self.regions)
        if self.rng.random() < 0.3:
            self.write(file, lo, hi - lo)
            return
        a, b = sorted(self.rng.sample(range(lo, hi + 1), 2))
        self.write(file, a, b - a)

    def op_write_any(self, file: int) -> None:
        self.write(file, *self.extent())

    def op_pread(self, file: int) -> None:
        regions = self.all_regions[self.rng.randrange(self.s.clients)]
        if regions and self.rng.random() < 0.4:  # a region one client owns
            lo, hi = self.rng.choice(regions)
            self.read(file, lo, hi - lo)
            return
        self.read(file, *self.extent())

    def op_direct_read(self, file: int) -> None:
        offset = self.rng.randrange(self.s.max_size // PAGE) * PAGE
        pages = self.rng.randint(1, 4)
        buf = memoryview(self.aligned)[: pages * PAGE]
        fd = os.open(self.s.paths[file], os.O_RDONLY | os.O_DIRECT)
        try:
            start = time.monotonic_ns()
            n = os.preadv(fd, [buf], offset)
            end = time.monotonic_ns()
        finally:
            os.close(fd)
        data = bytes(buf[:n])
        buf.release()
        self.check_read(file, offset, pages * PAGE, data, start, end)

    def op_whole_read(self, file: int) -> None:
        self.read(file, 0, self.s.whole)

    def op_fstat(self, file: int) -> None:
        start = time.monotonic_ns()
        size = os.fstat(self.fds[file]).st_size
        end = time.monotonic_ns()
        self.catch_up(file, end)
        self.models[file].settle(start)
        self.result.reads += 1
        problem = self.models[file].check_size(size, size, start, end)
        if problem:
            self.mismatch(file, f"fstat ({ms(start, self.s.t0)}..{ms(end, self.s.t0)}): {problem}")

    def op_truncate(self, file: int) -> None:
        size = self.rng.randrange(self.s.max_size + 2 * PAGE)
        if self.rng.random() < 0.3:
            size &= ~(PAGE - 1)
        self.truncate(file, size, lambda: os.ftruncate(self.fds[file], size))
        if self.rng.random() < 0.5:  # around the new end: nothing past it, zeros once regrown
            self.read(file, max(0, size - PAGE), 2 * PAGE)

    def op_append(self, file: int) -> None:
        if os.fstat(self.fds[file]).st_size > 2 * self.s.max_size:
            self.op_truncate(file)
            return
        length = self.rng.randrange(16, MAX_APPEND)
        fd = os.open(self.s.paths[file], os.O_WRONLY | os.O_APPEND)
        since = time.monotonic_ns()

        def do(data: bytes) -> int:
            if os.write(fd, data) != length:
                raise OSError(errno.EIO, "short append")
            return self.landed(file, data, os.lseek(fd, 0, os.SEEK_CUR) - length, since)

        try:
            self.change(file, APPEND, -1, length, do)
        finally:
            os.close(fd)

    def landed(self, file: int, data: bytes, guess: int, since: int) -> int:
        """Where an append (begun after `since`) landed: where SRC has its bytes (some may be
        overwritten already), found by a whole LANDED_CHUNK-aligned chunk of them. -1 if no
        such chunk is there any more (cut or overwritten): the kernel's offset cannot be
        trusted, so the append may have been read anywhere while it ran, since then only in
        remnants that hold no whole chunk; and if no other change of the file ran meanwhile,
        it is lost."""
        content = self.s.srcs[file].read_bytes()
        for k in range(0, len(data) - LANDED_CHUNK + 1, LANDED_CHUNK):
            at = content.find(data[k : k + LANDED_CHUNK])
            if at >= 0:
                if at - k != guess:
                    self.result.appends_moved += 1
                return at - k
        self.result.appends_unseen += 1
        if not self.others_changed(file, since):
            self.mismatch(file, f"LOST APPEND of {len(data)} bytes: none of them is in SRC right after the append "
                                "returned, and no other change of the file ran meanwhile")
        return -1

    def others_changed(self, file: int, since: int) -> bool:
        """Whether another client changed `file` at some moment from `since` until now."""
        self.ingest()
        running = any(r[1] == file and c != self.me for (c, _), r in self.in_flight.items())
        return running or any(x.end > since and x.client != self.me for x in self.models[file].history)

    def op_reopen(self, file: int) -> None:
        os.close(self.fds[file])
        self.fds[file] = os.open(self.s.paths[file], os.O_RDWR)

    def op_reopen_trunc(self, file: int) -> None:
        """open(O_TRUNC): a truncate to 0 made by an open."""
        def do() -> None:
            fd = os.open(self.s.paths[file], os.O_RDWR | os.O_TRUNC)
            os.close(self.fds[file])
            self.fds[file] = fd

        self.truncate(file, 0, do, OPEN_TRUNC)

    # -- checkpoints ----------------------------------------------------------------------

    def wait(self) -> None:
        self.s.barrier.wait(WAIT_S)

    def checkpoint(self) -> None:
        """Everybody stops; each checks every whole file through the mount against the
        model and against SRC read directly, which then becomes the model."""
        self.op = "checkpoint"
        self.wait()
        self.ingest()
        if self.in_flight:
            raise RuntimeError(f"changes in flight at a checkpoint: {sorted(self.in_flight)}")
        self.result.checkpoints += 1
        for file, (fd, src) in enumerate(zip(self.fds, self.s.srcs, strict=True)):
            start = time.monotonic_ns()
            data = os.pread(fd, self.s.whole, 0)
            self.check_read(file, 0, self.s.whole, data, start, time.monotonic_ns())
            truth = src.read_bytes()
            if data != truth:
                first = next((i for i, (a, b) in enumerate(zip(data, truth, strict=False)) if a != b),
                             min(len(data), len(truth)))
                self.mismatch(file, f"checkpoint: the mount shows {len(data)} bytes, SRC has {len(truth)}, "
                                    f"first difference at {first}")
            self.models[file].reset(truth, time.monotonic_ns())
        self.wait()


def own_regions(seed: int, clients: int, max_size: int) -> list[list[tuple[int, int]]]:
    """Each client's regions of every file, disjoint: 3 per client, cut at offsets
    some page-aligned and some not (the same in every client)."""
    rng = random.Random(f"{seed}:regions")
    count = 3 * clients
    cuts = [0]
    for n in range(1, count):
        at = n * max_size // count
        cuts.append(at & ~(PAGE - 1) if rng.random() < 0.5 else at + rng.randrange(-100, 100))
    cuts = sorted([*cuts, max_size])
    regions: list[list[tuple[int, int]]] = [[] for _ in range(clients)]
    for n in range(count):
        if cuts[n] < cuts[n + 1]:
            regions[n % clients].append((cuts[n], cuts[n + 1]))
    return regions


def _client_main(setup: Setup, number: int, results: Any) -> None:
    """A client process: its result (or its crash) goes to the parent; a crash stops everyone."""
    result = ClientResult(client=number)
    try:
        client = Client(setup, number)
        result = client.result
        client.run()
    except threading.BrokenBarrierError:
        if not setup.stop.is_set():  # else another client failed, and says why
            result.crashed = f"client {number}: the others never came to a checkpoint"
    except BaseException as exc:
        result.crashed = f"client {number}: {exc!r}\n{traceback.format_exc()}"
    if result.crashed:
        setup.stop.set()
        setup.barrier.abort()
    results.put(result)


# -- the parent ---------------------------------------------------------------------------


@dataclass
class ConcurrentReport(Tally):
    seed: int = 0
    clients: int = 0
    files: int = 0
    seconds: float = 0.0

    @property
    def total_ops(self) -> int:
        return sum(self.ops.values())

    @property
    def ok(self) -> bool:
        return self.mismatches == 0

    def merge(self, r: ClientResult) -> None:
        self.add(r)
        if r.crashed:
            self.mismatches += 1
            self.messages.append(r.crashed)

    def summary(self) -> str:
        return (f"concurrent model check seed {self.seed}: {self.clients} clients on {self.files} files, "
                f"{self.total_ops} operations in {self.seconds:.1f} s, {self.reads} reads and sizes checked "
                f"({self.bytes_checked / (1 << 20):.1f} MiB), {self.checkpoints} checkpoints, "
                f"{self.appends_moved} appends not where the kernel's offset said ({self.appends_unseen} gone before "
                f"their writer looked), {self.mismatches} mismatches")

    def failure(self) -> str:
        return "\n".join([self.summary(), *self.messages])


def parse_mix(text: str) -> tuple[tuple[str, int], ...]:
    """`append=0,reopen_trunc=0`: the operations' weights, changed from MIX."""
    weights = dict(MIX)
    for item in filter(None, text.split(",")):
        name, sep, value = item.partition("=")
        if name not in weights or not sep or not value.isdigit():
            raise argparse.ArgumentTypeError(f"{item}: expected NAME=WEIGHT, NAME one of {', '.join(weights)}")
        weights[name] = int(value)
    if not any(weights.values()):
        raise argparse.ArgumentTypeError("every weight is 0")
    return tuple(weights.items())


def run(root: Path, src: Path, seed: int, clients: int = 4, ops: int = 2000, files: int = 2,
        max_size: int = 32 * PAGE, checkpoint: int = 250, timeout: float = 1800.0,
        mix: tuple[tuple[str, int], ...] = MIX) -> ConcurrentReport:
    """`clients` processes, `ops` operations each, on `files` files made in `root` (on the
    mount; `src` is the same directory in SRC). Mismatches are counted in the report."""
    names = [f"cmodel-{seed}-{n}" for n in range(files)]
    paths = [root / name for name in names]
    for path in paths:
        os.close(os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644))
    srcs = [src / name for name in names]
    missing = [str(p) for p in srcs if not p.exists()]
    if missing:
        raise FileNotFoundError(f"not in SRC after creating them through the mount: {missing} (is the SRC right?)")
    ctx = multiprocessing.get_context("fork")
    setup = Setup(paths, srcs, seed, clients, ops, max_size, max(1, checkpoint), mix, time.monotonic_ns(),
                  [SharedLog(ops + 16, ctx.Lock()) for _ in range(clients)], ctx.Barrier(clients), ctx.Event())
    results: multiprocessing.Queue[ClientResult] = ctx.Queue()
    started = time.monotonic()
    procs = [ctx.Process(target=_client_main, args=(setup, n, results), daemon=True) for n in range(clients)]
    for p in procs:
        p.start()
    got = _collect(results, procs, started + timeout)
    report = ConcurrentReport(seed=seed, clients=clients, files=files)
    for r in sorted(got, key=lambda r: r.client):
        report.merge(r)
    if len(got) < clients:
        report.mismatches += 1
        report.messages.append(f"seed {seed}: {clients - len(got)} clients gave no answer in {timeout:.0f} s "
                               "(a hung mount?)")
    report.seconds = time.monotonic() - started
    return report


def _collect(results: Any, procs: list[Any], deadline: float) -> list[ClientResult]:
    """Every client's result, until the deadline; stragglers are killed (ours only)."""
    got: list[ClientResult] = []
    try:
        while len(got) < len(procs):
            try:
                got.append(results.get(timeout=max(0.1, min(5.0, deadline - time.monotonic()))))
            except queue.Empty:
                if time.monotonic() > deadline:
                    break
    finally:
        for p in procs:
            p.join(timeout=0 if len(got) < len(procs) else 30)
            if p.is_alive():
                p.kill()
                p.join()
    return got


