"""Concurrent metadata stress: several processes mutate one small namespace.

Every process (multiprocessing) runs its own random sequence of create,
mkdir, rmdir, rename (plain, RENAME_NOREPLACE, RENAME_EXCHANGE), link,
unlink, symlink, chmod, utime, truncate, xattr set/remove and lookups on
the same few names under DIR/ms-SEED on a mount. Errors that concurrency
legitimately causes (ENOENT, EEXIST, ENOTEMPTY, EISDIR, ENOTDIR, ELOOP...)
are counted; any other error (EIO, ENOTCONN, ESTALE...), a crash or a hang
fails the run. Afterwards the tree seen through the mount is compared with
the same tree in SRC (names, types, sizes, contents, modes, link counts,
symlink targets, xattrs), then removed with `rm -rf` through the mount,
which must leave nothing in SRC.

    python -m tools.metastress MNT/dir --procs 4 --ops 5000 --seed 42 [--src SRC/dir]

--ops is per process. Process N draws its operations from the seed string
"SEED:N", so a seed replays the same per-process sequences (the
interleaving, being concurrent, differs from run to run). Without --src,
the SRC directory is found from the mount's .tmemfs/stats.json.
"""

from __future__ import annotations

import argparse
import errno
import hashlib
import json
import multiprocessing
import os
import random
import stat
import subprocess
import sys
import time
import traceback
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, field
from pathlib import Path

from fusefs.syscalls import AT_FDCWD, renameat2

RENAME_NOREPLACE = 1
RENAME_EXCHANGE = 2
NAMES = ("a", "b", "c", "d", "e", "f")
XATTRS = ("user.k0", "user.k1", "user.k2")
MODES = (0o600, 0o644, 0o755, 0o700, 0o640, 0o444, 0o000, 0o4755, 0o2750, 0o1777)
# What two processes racing on the same names may legitimately see.
EXPECTED = frozenset({errno.ENOENT, errno.EEXIST, errno.ENOTEMPTY, errno.EISDIR, errno.ENOTDIR,
                      errno.ELOOP, errno.EINVAL, errno.EPERM, errno.ENODATA, errno.EXDEV, errno.EBUSY,
                      errno.EMLINK, errno.ETXTBSY})
MAX_FAILURES = 20  # per process: the first fatal errors, then the process stops


class StressFailure(AssertionError):
    pass


@dataclass
class WorkerResult:
    worker: int
    ops: Counter[str] = field(default_factory=Counter)  # successful operations by name
    expected: Counter[str] = field(default_factory=Counter)  # "op:ERRNO" legitimately failed
    failures: list[str] = field(default_factory=list)


class Worker:
    """One process's random operations on the shared namespace under `root`."""

    def __init__(self, root: Path, seed: int, worker: int) -> None:
        self.root = root
        self.rng = random.Random(f"{seed}:{worker}")
        self.result = WorkerResult(worker)
        self.table = [
            (self.op_create, 14), (self.op_mkdir, 8), (self.op_rmdir, 5), (self.op_rename, 10),
            (self.op_rename2, 4), (self.op_link, 6), (self.op_unlink, 9), (self.op_symlink, 5),
            (self.op_chmod, 6), (self.op_utime, 4), (self.op_truncate, 5), (self.op_setxattr, 6),
            (self.op_removexattr, 4), (self.op_stat, 5), (self.op_listdir, 3), (self.op_read, 3),
        ]

    def path(self) -> Path:
        """A random path of depth 1 to 3 in the small namespace (its parents may not exist)."""
        depth = self.rng.choices((1, 2, 3), (4, 3, 1))[0]
        return self.root.joinpath(*(self.rng.choice(NAMES) for _ in range(depth)))

    def existing(self) -> Path:
        """Mostly a path that exists right now (found by listing), else a random one."""
        if self.rng.random() < 0.3:
            return self.path()
        current = self.root
        for _ in range(3):
            entries = sorted(os.listdir(current))
            if not entries:
                break
            current = current / self.rng.choice(entries)
            if not stat.S_ISDIR(os.lstat(current).st_mode) or self.rng.random() < 0.4:
                return current
        return current if current != self.root else self.path()

    def fresh(self) -> Path:
        """A name to create: mostly in a directory that exists right now."""
        if self.rng.random() < 0.3:
            return self.path()
        parent = self.root
        for _ in range(2):
            dirs = sorted(e.name for e in os.scandir(parent) if e.is_dir(follow_symlinks=False))
            if not dirs or self.rng.random() < 0.5:
                break
            parent = parent / self.rng.choice(dirs)
        return parent / self.rng.choice(NAMES)

    def run(self, ops: int) -> WorkerResult:
        funcs = [f for f, _ in self.table]
        weights = [w for _, w in self.table]
        for step in range(ops):
            func = self.rng.choices(funcs, weights)[0]
            name = func.__name__[3:]
            try:
                func()
            except OSError as exc:
                if exc.errno in EXPECTED:
                    self.result.expected[f"{name}:{errno.errorcode.get(exc.errno or 0, exc.errno)}"] += 1
                    continue
                self.result.failures.append(f"worker {self.result.worker} step {step} {name}: {exc!r}")
                if len(self.result.failures) >= MAX_FAILURES or exc.errno in (errno.ENOTCONN, errno.EIO):
                    break
            except Exception:
                self.result.failures.append(f"worker {self.result.worker} step {step} {name}: "
                                            f"{traceback.format_exc()}")
                break
            else:
                self.result.ops[name] += 1
        return self.result

    # -- operations (each raises OSError on failure) ------------------------------------

    def op_create(self) -> None:
        flags = os.O_WRONLY | os.O_CREAT | self.rng.choice((0, os.O_EXCL, os.O_TRUNC, os.O_APPEND))
        fd = os.open(self.fresh(), flags, self.rng.choice(MODES))
        try:
            size = self.rng.choice((0, 1, 100, 4096, 5000, 12288))
            if size:
                os.write(fd, self.rng.randbytes(size))
        finally:
            os.close(fd)

    def op_mkdir(self) -> None:
        os.mkdir(self.fresh(), self.rng.choice((0o755, 0o700, 0o777, 0o2775)))

    def op_rmdir(self) -> None:
        os.rmdir(self.existing())

    def op_rename(self) -> None:
        os.rename(self.existing(), self.fresh() if self.rng.random() < 0.6 else self.existing())

    def op_rename2(self) -> None:
        flags = self.rng.choice((RENAME_NOREPLACE, RENAME_EXCHANGE))
        old = self.existing()
        new = self.existing() if flags == RENAME_EXCHANGE else self.fresh()
        renameat2(AT_FDCWD, bytes(old), AT_FDCWD, bytes(new), flags)

    def op_link(self) -> None:
        os.link(self.existing(), self.fresh(), follow_symlinks=False)

    def op_unlink(self) -> None:
        os.unlink(self.existing())

    def op_symlink(self) -> None:
        # Relative targets without `..` resolve inside the link's directory: nothing
        # this tool later follows (chmod, truncate, xattrs) can leave the tree.
        target = self.rng.choice((*NAMES, "a/b", "b/c", "missing/x"))
        os.symlink(target, self.fresh())

    def op_chmod(self) -> None:
        os.chmod(self.existing(), self.rng.choice(MODES))

    def op_utime(self) -> None:
        if self.rng.random() < 0.5:
            os.utime(self.existing())
        else:
            os.utime(self.existing(), ns=(self.rng.randrange(1 << 40), self.rng.randrange(1 << 40)))

    def op_truncate(self) -> None:
        os.truncate(self.existing(), self.rng.choice((0, 1, 4095, 4096, 4097, 20000)))

    def op_setxattr(self) -> None:
        value = self.rng.randbytes(self.rng.choice((0, 1, 10, 200)))
        os.setxattr(self.existing(), self.rng.choice(XATTRS), value)

    def op_removexattr(self) -> None:
        os.removexattr(self.existing(), self.rng.choice(XATTRS))

    def op_stat(self) -> None:
        os.stat(self.existing(), follow_symlinks=self.rng.random() < 0.5)

    def op_listdir(self) -> None:
        path = self.existing()
        for name in os.listdir(path):
            os.lstat(path / name)

    def op_read(self) -> None:
        fd = os.open(self.existing(), os.O_RDONLY | os.O_NONBLOCK)
        try:
            os.read(fd, 1 << 16)
        finally:
            os.close(fd)


def _worker(root: str, seed: int, worker: int, ops: int) -> WorkerResult:
    return Worker(Path(root), seed, worker).run(ops)


# -- comparing the trees --------------------------------------------------------------


def describe(path: Path) -> dict[str, object]:
    """What the comparison looks at, for one object (never following a symlink)."""
    st = os.lstat(path)
    info: dict[str, object] = {"type": stat.S_IFMT(st.st_mode), "mode": stat.S_IMODE(st.st_mode),
                               "nlink": st.st_nlink}
    if stat.S_ISLNK(st.st_mode):
        info["target"] = os.readlink(path)
        info["size"] = st.st_size
        return info
    if stat.S_ISREG(st.st_mode):
        info["size"] = st.st_size
        with open(path, "rb") as f:
            info["sha256"] = hashlib.sha256(f.read()).hexdigest()
    info["xattrs"] = {name: os.getxattr(path, name, follow_symlinks=False).hex()
                      for name in sorted(os.listxattr(path, follow_symlinks=False))}
    return info


def snapshot(top: Path) -> dict[str, dict[str, object]]:
    """Every object under `top` (relative path -> description), `top` itself as '.'."""
    out = {".": describe(top)}
    for dirpath, dirnames, filenames in os.walk(top):
        for name in sorted(dirnames + filenames):
            path = Path(dirpath, name)
            out[str(path.relative_to(top))] = describe(path)
    return out


def compare(mnt_tree: Path, src_tree: Path) -> list[str]:
    """Differences between the tree seen through the mount and the tree in SRC."""
    seen, truth = snapshot(mnt_tree), snapshot(src_tree)
    diffs = []
    for name in sorted(seen.keys() | truth.keys()):
        a, b = seen.get(name), truth.get(name)
        if a is None:
            diffs.append(f"{name}: in SRC, missing through the mount")
        elif b is None:
            diffs.append(f"{name}: through the mount, missing in SRC")
        elif a != b:
            keys = sorted(k for k in a.keys() | b.keys() if a.get(k) != b.get(k))
            diffs.append(f"{name}: " + ", ".join(f"{k} mount={a.get(k)!r} src={b.get(k)!r}" for k in keys))
    return diffs


def mount_root(path: Path) -> Path | None:
    """The root of the tmemfs mount `path` is on, if it is on one."""
    path = path.resolve()
    return next((top for top in (path, *path.parents) if (top / ".tmemfs" / "stats.json").exists()), None)


def mount_stats(path: Path) -> dict[str, object]:
    top = mount_root(path)
    if top is None:
        return {}
    stats: dict[str, object] = json.loads((top / ".tmemfs" / "stats.json").read_text())
    return stats


def find_src(path: Path) -> Path:
    """The directory in SRC behind `path` on a tmemfs mount (from .tmemfs/stats.json)."""
    top = mount_root(path)
    if top is None:
        raise StressFailure(f"{path} is not on a tmemfs mount; give --src")
    return Path(str(mount_stats(top)["fs.src"])) / path.resolve().relative_to(top)


# -- the run --------------------------------------------------------------------------


@dataclass
class StressReport:
    seed: int
    procs: int
    ops: int  # attempted, all processes
    succeeded: Counter[str]
    expected_errors: Counter[str]
    objects: int  # in the tree at the end
    seconds: float

    def summary(self) -> str:
        failed = sum(self.expected_errors.values())
        return (f"metastress seed {self.seed}: {self.ops} operations by {self.procs} processes in "
                f"{self.seconds:.1f} s ({sum(self.succeeded.values())} succeeded, {failed} failed as "
                f"concurrency allows); {self.objects} objects compared, 0 mismatches, rm -rf ok")


def run(directory: Path, src: Path | None, procs: int, ops: int, seed: int,
        timeout: float = 600.0, settle: float = 1.2) -> StressReport:
    """The whole stress: workers, comparison, rm -rf. StressFailure on any failure."""
    src = src if src is not None else find_src(directory)
    name = f"ms-{seed}"
    root, src_root = directory / name, src / name
    started = time.monotonic()
    errors_before = mount_stats(directory).get("fs.internal_errors", 0)
    root.mkdir()
    if not src_root.is_dir():
        raise StressFailure(f"{src_root}: not there after mkdir {root} (is --src right?)")
    results = _run_workers(root, procs, ops, seed, timeout)
    time.sleep(settle)  # the kernel may keep attributes for attr_timeout
    diffs = compare(root, src_root)
    if diffs:
        raise StressFailure(f"seed {seed}: {len(diffs)} differences between mount and SRC:\n" +
                            "\n".join(diffs[:50]))
    objects = len(snapshot(src_root))
    _remove_through_mount(root, src_root, seed)
    errors_after = mount_stats(directory).get("fs.internal_errors", 0)
    if errors_after != errors_before:
        raise StressFailure(f"seed {seed}: tmemfs counted internal errors ({errors_before} -> {errors_after})")
    succeeded: Counter[str] = Counter()
    expected: Counter[str] = Counter()
    for r in results:
        succeeded.update(r.ops)
        expected.update(r.expected)
    return StressReport(seed, procs, procs * ops, succeeded, expected, objects, time.monotonic() - started)


def _run_workers(root: Path, procs: int, ops: int, seed: int, timeout: float) -> list[WorkerResult]:
    """The workers' results; StressFailure with every failure if any worker failed, crashed or hung."""
    results: list[WorkerResult] = []
    failures: list[str] = []
    with ProcessPoolExecutor(procs, mp_context=multiprocessing.get_context("fork")) as pool:
        futures = [pool.submit(_worker, str(root), seed, n, ops) for n in range(procs)]
        deadline = time.monotonic() + timeout
        for n, future in enumerate(futures):
            try:
                results.append(future.result(timeout=max(0.0, deadline - time.monotonic())))
            except FutureTimeout:
                failures.append(f"worker {n}: no answer in {timeout:.0f} s (a hung mount?)")
                for p in list(getattr(pool, "_processes", {}).values()):
                    p.kill()  # our own workers only
                break
            except Exception as exc:  # a worker process died
                failures.append(f"worker {n}: crashed: {exc!r}")
    for r in results:
        failures.extend(r.failures)
    if failures:
        raise StressFailure(f"seed {seed}: " + "\n".join(failures))
    return results


def _remove_through_mount(root: Path, src_root: Path, seed: int) -> None:
    """rm -rf through the mount must take the tree out of SRC too."""
    rm = subprocess.run(["rm", "-rf", "--", str(root)], capture_output=True, text=True)
    if rm.returncode != 0:
        raise StressFailure(f"seed {seed}: rm -rf {root} failed: {rm.stderr.strip()}")
    if root.exists() or src_root.exists():
        raise StressFailure(f"seed {seed}: {src_root} still exists after rm -rf through the mount")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("dir", type=Path, help="a directory on the mount under test")
    parser.add_argument("--src", type=Path, default=None, help="the same directory in SRC (default: found)")
    parser.add_argument("--procs", type=int, default=4)
    parser.add_argument("--ops", type=int, default=2000, help="operations per process")
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds before a run counts as hung")
    parser.add_argument("-v", "--verbose", action="store_true", help="print counts per operation and errno")
    args = parser.parse_args(argv)
    seed = args.seed if args.seed is not None else random.randrange(1 << 32)
    print(f"metastress: seed {seed}, {args.procs} processes x {args.ops} operations in {args.dir}", flush=True)
    try:
        report = run(args.dir, args.src, args.procs, args.ops, seed, args.timeout)
    except StressFailure as exc:
        print(f"FAILED: {exc}\n(replay: python -m tools.metastress {args.dir} --procs {args.procs} "
              f"--ops {args.ops} --seed {seed})", file=sys.stderr)
        return 1
    print(report.summary())
    if args.verbose:
        print("succeeded:", dict(sorted(report.succeeded.items())))
        print("expected errors:", dict(sorted(report.expected_errors.items())))
    return 0


if __name__ == "__main__":
    sys.exit(main())
