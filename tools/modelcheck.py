"""Randomized data model check: random I/O through a mount, checked against memory.

Every step applies one random operation (pwrite, pread, truncate, append,
reopen, O_DIRECT read) to one of several files through the mount and to an
in-memory model, then checks what the step can observe (bytes read, the
size) against the model; the whole files are compared periodically and at
the end. A failure names the seed and the step, and the same seed replays
the same run:

    python -m tools.modelcheck MNT --ops 100000 --seed 42

With --clients N, N processes work on the same files at once instead
(tools/concurrentmodel.py: per-byte oracle, checkpoints against SRC):

    python -m tools.modelcheck MNT --clients 4 --ops 5000 --seed 42 [--src SRC]
"""

from __future__ import annotations

import argparse
import mmap
import os
import random
import sys
from dataclasses import dataclass, field
from pathlib import Path

from tools import concurrentmodel
from tools.metastress import find_src

PAGE = 4096


class Mismatch(AssertionError):
    pass


@dataclass
class ModelFile:
    path: Path
    data: bytearray = field(default_factory=bytearray)
    fd: int = -1

    def open(self, extra: int = 0) -> None:
        if self.fd >= 0:
            os.close(self.fd)
        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT | extra, 0o644)


class ModelCheck:
    def __init__(self, root: Path, seed: int, files: int = 4, max_size: int = 64 * PAGE) -> None:
        self.rng = random.Random(seed)
        self.seed = seed
        self.max_size = max_size
        self.files = [ModelFile(root / f"model-{seed}-{n}") for n in range(files)]
        self.step = 0
        self.aligned = mmap.mmap(-1, 4 * PAGE)
        for f in self.files:
            f.open(os.O_TRUNC)

    def fail(self, what: str) -> None:
        raise Mismatch(f"seed {self.seed}, step {self.step}: {what}")

    def run(self, ops: int) -> None:
        ops_table = [(self.op_pwrite, 30), (self.op_pread, 30), (self.op_truncate, 6),
                     (self.op_append, 10), (self.op_reopen, 4), (self.op_direct_read, 5),
                     (self.op_full_read, 3)]
        funcs = [f for f, _ in ops_table]
        weights = [w for _, w in ops_table]
        try:
            for self.step in range(ops):
                f = self.rng.choice(self.files)
                self.rng.choices(funcs, weights)[0](f)
                size = os.fstat(f.fd).st_size
                if size != len(f.data):
                    self.fail(f"{f.path.name}: size {size}, model {len(f.data)}")
                if self.step % 1000 == 999:
                    self.compare_all()
            self.compare_all()
        finally:
            for f in self.files:
                if f.fd >= 0:
                    os.close(f.fd)
                    f.fd = -1
            self.aligned.close()

    def compare_all(self) -> None:
        for f in self.files:
            self.check_range(f, 0, len(f.data) + PAGE)

    def check_range(self, f: ModelFile, offset: int, size: int) -> None:
        got = os.pread(f.fd, size, offset)
        want = bytes(f.data[offset : offset + size])
        if got != want:
            pairs = enumerate(zip(got, want, strict=False))
            first = next((i for i, (a, b) in pairs if a != b), min(len(got), len(want)))
            self.fail(f"{f.path.name}: read {size} at {offset}: {len(got)} bytes, model {len(want)}, "
                      f"first difference at +{first}")

    def random_extent(self) -> tuple[int, int]:
        offset = self.rng.randrange(self.max_size)
        if self.rng.random() < 0.3:
            offset &= ~(PAGE - 1)
        size = self.rng.choice((1, 7, PAGE - 1, PAGE, PAGE + 1, 3 * PAGE, self.rng.randrange(1, 5 * PAGE)))
        return offset, size

    def model_write(self, f: ModelFile, offset: int, data: bytes) -> None:
        if offset > len(f.data):
            f.data.extend(bytes(offset - len(f.data)))
        f.data[offset : offset + len(data)] = data

    def op_pwrite(self, f: ModelFile) -> None:
        offset, size = self.random_extent()
        data = self.rng.randbytes(size)
        if os.pwrite(f.fd, data, offset) != size:
            self.fail("short pwrite")
        self.model_write(f, offset, data)
        self.check_range(f, max(0, offset - 100), size + 200)

    def op_pread(self, f: ModelFile) -> None:
        offset, size = self.random_extent()
        self.check_range(f, offset, size)

    def op_full_read(self, f: ModelFile) -> None:
        self.check_range(f, 0, len(f.data) + 1)

    def op_truncate(self, f: ModelFile) -> None:
        size = self.rng.randrange(self.max_size)
        os.ftruncate(f.fd, size)
        if size < len(f.data):
            del f.data[size:]
        else:
            f.data.extend(bytes(size - len(f.data)))
        self.check_range(f, max(0, size - PAGE), 2 * PAGE)

    def op_append(self, f: ModelFile) -> None:
        data = self.rng.randbytes(self.rng.randrange(1, 2 * PAGE))
        fd = os.open(f.path, os.O_WRONLY | os.O_APPEND)
        try:
            os.write(fd, data)
        finally:
            os.close(fd)
        f.data.extend(data)
        self.check_range(f, len(f.data) - len(data), len(data) + 1)

    def op_reopen(self, f: ModelFile) -> None:
        f.open()

    def op_direct_read(self, f: ModelFile) -> None:
        offset = self.rng.randrange(self.max_size // PAGE) * PAGE
        fd = os.open(f.path, os.O_RDONLY | os.O_DIRECT)
        try:
            n = os.preadv(fd, [self.aligned], offset)
        finally:
            os.close(fd)
        want = bytes(f.data[offset : offset + len(self.aligned)])
        if self.aligned[:n] != want:
            self.fail(f"{f.path.name}: O_DIRECT read at {offset}: {n} bytes, model {len(want)}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("dir", type=Path, help="a directory on the mount under test")
    parser.add_argument("--ops", type=int, default=20000)
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--files", type=int, default=None, help="4, or 2 with --clients")
    parser.add_argument("--clients", type=int, default=1, help="processes on the same files at once "
                        "(--ops is then per client)")
    parser.add_argument("--src", type=Path, default=None, help="with --clients: the directory in SRC behind DIR "
                        "(default: found from the mount's .tmemfs/stats.json)")
    parser.add_argument("--max-size", type=int, default=32 * PAGE, help="with --clients: where writes and "
                        "truncates go (bytes)")
    parser.add_argument("--checkpoint", type=int, default=250, help="with --clients: operations per client "
                        "between two checkpoints")
    parser.add_argument("--mix", type=concurrentmodel.parse_mix, default=concurrentmodel.MIX, metavar="OP=WEIGHT,...",
                        help="with --clients: the operations' weights, changed from "
                             + ",".join(f"{k}={w}" for k, w in concurrentmodel.MIX))
    args = parser.parse_args(argv)
    seed = args.seed if args.seed is not None else random.randrange(1 << 32)
    if args.clients > 1:
        return concurrent_main(args, seed)
    args.files = args.files or 4
    print(f"model check: seed {seed}, {args.ops} operations on {args.files} files in {args.dir}")
    try:
        ModelCheck(args.dir, seed, args.files).run(args.ops)
    except Mismatch as exc:
        print(f"MISMATCH: {exc}", file=sys.stderr)
        return 1
    print("ok: no mismatch")
    return 0


def concurrent_main(args: argparse.Namespace, seed: int) -> int:
    """--clients N: the concurrent model check."""
    src = args.src if args.src is not None else find_src(args.dir)
    files = args.files or 2
    print(f"concurrent model check: seed {seed}, {args.clients} clients x {args.ops} operations on {files} files "
          f"in {args.dir} (SRC {src})", flush=True)
    report = concurrentmodel.run(args.dir, src, seed, args.clients, args.ops, files, args.max_size, args.checkpoint,
                                 mix=args.mix)
    print(report.summary())
    for message in report.messages:
        print(f"MISMATCH: {message}", file=sys.stderr)
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
