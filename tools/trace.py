"""Replay key traces through the eviction policies and compare miss ratios.

Each policy drives a simulated cache of `--capacity` keys, exactly as the
page cache and the RAM backends drive it: a hit touches the key; a miss
evicts `victim()` when the cache is full, then inserts; an invalidation
removes the key if it is resident. Reported per policy: the miss ratio, its
relative reduction against LRU (the baseline, always replayed) and the wall
time per access, which includes the simulated owner's own set operations.

Synthetic traces (integer keys, reproducible with --seed):

    zipf       Zipf(1.1) over 10x capacity keys
    scan       sequential runs of 1/4 to 2x capacity keys from random starts
    loop       a cycle over 1.1x capacity keys (defeats LRU entirely)
    mixed      interleaved: 60% zipf, 20% a loop over 0.6x capacity, 20% one-time scan
    zipf+scan  zipf for 5x capacity accesses, then a one-time scan of 1x capacity, repeated

Recorded traces (--trace FILE): one access per line, either `KEY` or
`OP KEY` with OP one of get, put, hit, miss (all replayed as an access) or
invalidate; blank lines and lines starting with # are skipped. A trace
recorded by `tmemfs -o trace=FILE` (lines `TIME_US OP FILE:INDEX`) replays
its page cache lookups (hit, miss) and invalidations; its cleancache events
(get+, get-, put, invalidate_inode) are skipped.

    python -m tools.trace --synthetic zipf+scan --capacity 1000
    python -m tools.trace --trace keys.txt --policies lru,s3fifo --json
"""

from __future__ import annotations

import argparse
import gc
import json
import random
import sys
import time
from collections.abc import Hashable, Sequence
from dataclasses import dataclass
from itertools import accumulate
from pathlib import Path

from backends.eviction import POLICIES, Policy

SYNTHETIC = ("zipf", "scan", "loop", "mixed", "zipf+scan")
ACCESS_OPS = frozenset({"get", "put", "hit", "miss"})
INVALIDATE = "invalidate"
TMEMFS_SKIPPED_OPS = frozenset({"get+", "get-", "put", "invalidate_inode"})
ZIPF_ALPHA = 1.1


@dataclass
class Trace:
    """Keys in order; `invalidate[i]` marks an invalidation rather than an access."""

    name: str
    keys: list[Hashable]
    invalidate: list[bool] | None = None

    @property
    def accesses(self) -> int:
        return len(self.keys) - (sum(self.invalidate) if self.invalidate else 0)


@dataclass
class Result:
    policy: str
    accesses: int
    misses: int
    seconds: float

    @property
    def miss_ratio(self) -> float:
        return self.misses / self.accesses if self.accesses else 0.0

    @property
    def us_per_access(self) -> float:
        return self.seconds * 1e6 / self.accesses if self.accesses else 0.0


# -- traces --------------------------------------------------------------------------


def _zipf(rng: random.Random, n_keys: int, length: int, base: int = 0) -> list[int]:
    cum = list(accumulate(rank**-ZIPF_ALPHA for rank in range(1, n_keys + 1)))
    return rng.choices(range(base, base + n_keys), cum_weights=cum, k=length)


def _runs(rng: random.Random, capacity: int, length: int) -> list[int]:
    out: list[int] = []
    space = 10 * capacity
    while len(out) < length:
        start = rng.randrange(space)
        out.extend(range(start, start + rng.randint(max(1, capacity // 4), 2 * capacity)))
    return out[:length]


def synthetic(kind: str, capacity: int, length: int, seed: int = 1) -> Trace:
    """A reproducible synthetic trace of `length` accesses sized for `capacity` keys."""
    rng = random.Random(seed)
    keys: list[int]
    if kind == "zipf":
        keys = _zipf(rng, 10 * capacity, length)
    elif kind == "scan":
        keys = _runs(rng, capacity, length)
    elif kind == "loop":
        span = capacity + max(1, capacity // 10)
        keys = [i % span for i in range(length)]
    elif kind == "mixed":
        zipf = iter(_zipf(rng, 10 * capacity, length))
        span = max(1, capacity * 6 // 10)
        loop_base, scan_next = 10 * capacity, 11 * capacity
        keys = []
        for i, u in enumerate(rng.random() for _ in range(length)):
            if u < 0.6:
                keys.append(next(zipf))
            elif u < 0.8:
                keys.append(loop_base + i % span)
            else:
                keys.append(scan_next)
                scan_next += 1
    elif kind == "zipf+scan":
        zipf = iter(_zipf(rng, 10 * capacity, length))
        scan_next = 10 * capacity  # scan keys are never seen again
        keys = []
        while len(keys) < length:
            keys.extend(next(zipf) for _ in range(min(5 * capacity, length - len(keys))))
            run = min(capacity, length - len(keys))
            keys.extend(range(scan_next, scan_next + run))
            scan_next += run
    else:
        raise ValueError(f"unknown synthetic trace {kind!r} (known: {', '.join(SYNTHETIC)})")
    return Trace(kind, list(keys))


def parse_trace(lines: Sequence[str], name: str = "trace") -> Trace:
    """`KEY` or `OP KEY` lines (see the module docstring); ValueError names a bad line."""
    keys: list[Hashable] = []
    invalidate: list[bool] = []
    for number, raw in enumerate(lines, 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        fields = line.split(maxsplit=1)
        if len(fields) == 2 and fields[0].isdigit() and " " in fields[1]:
            fields = fields[1].split(maxsplit=1)  # a tmemfs trace: TIME_US OP FILE:INDEX
            if fields[0] in TMEMFS_SKIPPED_OPS:
                continue
        op = fields[0].lower()
        if len(fields) == 2 and (op in ACCESS_OPS or op == INVALIDATE):
            keys.append(fields[1].strip())
            invalidate.append(op == INVALIDATE)
        elif len(fields) == 1 and (op in ACCESS_OPS or op == INVALIDATE):
            raise ValueError(f"{name}:{number}: {fields[0]} needs a key")
        else:
            keys.append(line)
            invalidate.append(False)
    return Trace(name, keys, invalidate if any(invalidate) else None)


def load_trace(path: str) -> Trace:
    return parse_trace(Path(path).read_text().splitlines(), path)


# -- replay --------------------------------------------------------------------------


def replay(policy: Policy[Hashable], trace: Trace, capacity: int) -> Result:
    """Drive a simulated cache of `capacity` keys; KeyError if a victim was not resident."""
    resident: set[Hashable] = set()
    cuts = [i for i, gone in enumerate(trace.invalidate) if gone] if trace.invalidate else []
    enabled = gc.isenabled()
    gc.disable()  # as timeit does: collections would land on whichever policy runs
    try:
        start = time.perf_counter()
        misses, held = _replay_keys(policy, trace.keys, cuts, capacity, resident)
        seconds = time.perf_counter() - start
    finally:
        if enabled:
            gc.enable()
    assert len(policy) == held == len(resident), (policy.name, len(policy), held)
    return Result(policy.name, trace.accesses, misses, seconds)


def _replay_keys(policy: Policy[Hashable], keys: Sequence[Hashable], cuts: Sequence[int], capacity: int,
                 resident: set[Hashable]) -> tuple[int, int]:
    """The accesses between the invalidations (at `cuts`), and each invalidated key out of the cache:
    (misses, keys held at the end)."""
    if not cuts:
        return _accesses(policy, keys, capacity, resident, 0)
    misses = held = 0
    start = 0
    for cut in [*cuts, len(keys)]:
        more, held = _accesses(policy, keys[start:cut], capacity, resident, held)
        misses += more
        if cut < len(keys) and keys[cut] in resident:
            policy.remove(keys[cut])
            resident.remove(keys[cut])
            held -= 1
        start = cut + 1
    return misses, held


def _accesses(policy: Policy[Hashable], keys: Sequence[Hashable], capacity: int, resident: set[Hashable],
              held: int) -> tuple[int, int]:
    """The hot loop: accesses alone, `held` keys in the cache at the start: (misses, keys held at the end)."""
    touch, insert, victim = policy.touch, policy.insert, policy.victim
    add, drop = resident.add, resident.remove
    misses = 0
    for key in keys:
        if key in resident:
            touch(key)
            continue
        misses += 1
        if held >= capacity:
            drop(victim())
        else:
            held += 1
        insert(key)
        add(key)
    return misses, held


def compare(trace: Trace, names: Sequence[str], capacity: int, repeat: int = 1) -> list[Result]:
    """One result per policy (LRU first, always: it is the baseline); best time of `repeat`."""
    order = ["lru", *(n for n in names if n != "lru")]
    results = []
    for name in order:
        runs = [replay(POLICIES[name](capacity), trace, capacity) for _ in range(max(1, repeat))]
        results.append(min(runs, key=lambda r: r.seconds))
    return results


def reduction(result: Result, baseline: Result) -> float:
    """Relative miss-ratio reduction against the baseline (0.15 = 15% fewer misses)."""
    if baseline.miss_ratio == 0:
        return 0.0
    return (baseline.miss_ratio - result.miss_ratio) / baseline.miss_ratio


# -- output --------------------------------------------------------------------------


def as_json(trace: Trace, capacity: int, seed: int | None, results: list[Result]) -> dict[str, object]:
    base = results[0]
    return {
        "trace": trace.name,
        "accesses": trace.accesses,
        "distinct_keys": len(set(trace.keys)),
        "capacity": capacity,
        "seed": seed,
        "results": [
            {
                "policy": r.policy,
                "misses": r.misses,
                "miss_ratio": round(r.miss_ratio, 6),
                "reduction_vs_lru": round(reduction(r, base), 6),
                "us_per_access": round(r.us_per_access, 4),
            }
            for r in results
        ],
    }


def table(trace: Trace, capacity: int, seed: int | None, results: list[Result]) -> str:
    base = results[0]
    seeded = f", seed {seed}" if seed is not None else ""
    lines = [
        f"{trace.name}: {trace.accesses} accesses, {len(set(trace.keys))} distinct keys, capacity {capacity}{seeded}",
        f"{'policy':<8} {'miss ratio':>10} {'reduction vs lru':>16} {'us/access':>10}",
    ]
    for r in results:
        vs = "(baseline)" if r is base else f"{reduction(r, base):+.1%}"
        lines.append(f"{r.policy:<8} {r.miss_ratio:>10.4f} {vs:>16} {r.us_per_access:>10.3f}")
    best = min(results[1:], key=lambda r: r.miss_ratio, default=None)
    if best is not None:
        lines.append(f"best: {best.policy}, {reduction(best, base):.1%} fewer misses than lru")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.trace", description=__doc__.split("\n\n")[0])
    parser.add_argument("--policies", default=",".join(POLICIES), help="comma-separated (default: all)")
    parser.add_argument("--capacity", type=int, default=1000, help="cache size in keys (default 1000)")
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--trace", metavar="FILE", help="replay a recorded trace")
    source.add_argument("--synthetic", choices=SYNTHETIC, help="generate a trace (default zipf+scan)")
    parser.add_argument("--length", type=int, default=200_000, help="synthetic accesses (default 200000)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--repeat", type=int, default=1, help="replays per policy; the best time counts")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    args = parser.parse_args(argv)

    names = [n.strip() for n in args.policies.split(",") if n.strip()]
    unknown = [n for n in names if n not in POLICIES]
    if unknown:
        parser.error(f"unknown policy {', '.join(unknown)} (known: {', '.join(POLICIES)})")
    if args.capacity < 1 or args.length < 1:
        parser.error("--capacity and --length must be positive")
    seed: int | None = None
    if args.trace:
        try:
            trace = load_trace(args.trace)
        except (OSError, ValueError) as e:
            parser.error(str(e))
    else:
        seed = args.seed
        trace = synthetic(args.synthetic or "zipf+scan", args.capacity, args.length, seed)

    results = compare(trace, names, args.capacity, args.repeat)
    if args.json:
        json.dump(as_json(trace, args.capacity, seed, results), sys.stdout, indent=2)
        print()
    else:
        print(table(trace, args.capacity, seed, results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
