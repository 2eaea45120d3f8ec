"""Eviction policies: hand-computed victim sequences, invariants, and the scan-resistance claim."""

from __future__ import annotations

import json
import random
from collections.abc import Hashable

import pytest

from backends.eviction import ARC, LRU, POLICIES, S3FIFO, SIEVE, Policy, make_policy
from fusefs.pagecache import CachedFile, PageCache
from tests.unithelpers import take_slot
from tools import trace as tracetool

PAGE = 4096
MODERN = [name for name in POLICIES if name != "lru"]


def drive(policy: Policy[str], capacity: int, steps: str, resident: set[str] | None = None) -> list[str]:
    """Replay `steps` like an owner would; return the victims in order.

    `x` is an access (hit: touch; miss: victim() if full, then insert), `-x`
    an invalidation of the resident key x. Pass the same `resident` set to
    continue a replay.
    """
    resident = set() if resident is None else resident
    victims: list[str] = []
    for step in steps.split():
        if step.startswith("-"):
            key = step[1:]
            assert key in resident
            policy.remove(key)
            resident.discard(key)
        elif step in resident:
            policy.touch(step)
        else:
            if len(resident) >= capacity:
                key = policy.victim()
                assert key in resident, f"victim {key!r} is not resident"
                resident.discard(key)
                victims.append(key)
            policy.insert(step)
            resident.add(step)
        assert len(policy) == len(resident)
    return victims


# -- hand-computed traces ------------------------------------------------------------


def test_lru_evicts_least_recently_used() -> None:
    # a b c fill; hit a -> order b c a; d evicts b -> c a d; b evicts c -> a d b.
    assert drive(LRU(3), 3, "a b c a d b") == ["b", "c"]


def test_sieve_hand_keeps_survivors_in_place() -> None:
    # Queue oldest..newest, hand starts at the oldest; * = visited.
    #  a b c          fill: [a b c], hand at a
    #  a              hit: [a* b c]
    #  d              hand a*: clear, on to b: evict b; hand -> c; [a c d]
    #  b              hand c: evict c; hand -> d; [a d b]
    #  e              hand d: evict d; hand -> b; [a b e]
    #  a e            hits: [a* b e*]
    #  f              hand b: evict b; hand -> e; [a* e* f]
    #  g              hand e*: clear, on to f: evict f (the newest): the hand
    #                 wraps to the oldest; [a* e g]
    #  h              hand a*: clear, on to e: evict e (cleared at g); [a g h]
    # CLOCK would differ at e: it moves a to the head, so it evicts a there.
    assert drive(SIEVE(3), 3, "a b c a d b e a e f g h") == ["b", "c", "d", "b", "f", "e"]


def test_s3fifo_small_main_ghost() -> None:
    # capacity 4: small queue 1 key (10%, at least 1), ghost and main 3 keys.
    # Evict from small while it holds >= 1 key, else from main. f = hits.
    #  a b c d      S=[a b c d]
    #  a a b        a f=2, b f=1
    #  e            S tail a f=2 -> M=[a] (f reset 0); b f=1 (not > 1) -> G=[b], evict b; S=[c d e]
    #  b            S tail c -> G=[b c], evict c; b is in G -> M=[a b], G=[c]; S=[d e]
    #  f            evict d -> G=[c d]; S=[e f]
    #  a b b b b    M: a f=1, b f=3 (capped: the fourth hit does nothing)
    #  g            evict e -> G=[c d e]; S=[f g]
    #  h            evict f -> G=[c d e f] (one over while h is looked up),
    #               h not in G; G trimmed to [d e f]; S=[g h]
    #  -g -h        invalidated: S=[], no ghosts added; 2 resident
    #  d e          not full, no victim; both in G -> M=[a b d e], G=[f]
    #  i            S empty -> main: a f=1 -> f=0, back in; b f=3 -> 2, back in;
    #               d f=0: evict d. M=[e a b]; S=[i]
    #  j            evict i -> G=[f i]; S=[j]
    #  e            e f=1
    #  k            evict j -> G=[f i j]; S=[k]
    #  l            evict k -> G=[f i j k], l not in G, trimmed to [i j k]; S=[l]
    #  f            f forgotten: evict l -> G=[i j k l]; f goes to small -> G=[j k l]; S=[f]
    #  m            S=[f] -> evict f (had f gone to main, main would evict a)
    steps = "a b c d a a b e b f a b b b b g h -g -h d e i j e k l f m"
    policy: S3FIFO[str] = S3FIFO(4)
    assert drive(policy, 4, steps) == ["b", "c", "d", "e", "f", "d", "i", "j", "k", "l", "f"]
    assert policy.ghosts() == 3  # G=[k l f]


def test_arc_adapts_p() -> None:
    # c = 3, p = 0. victim(): from T1 if |T1| > p (or T2 empty), else from T2.
    # insert(x): x in B1 -> p += max(|B2|/|B1|, 1); x in B2 -> p -= max(|B1|/|B2|, 1);
    # either way x goes to T2; else x to T1, then trim B1 to |T1|+|B1| <= c and the
    # lists to 2c. Lists are LRU..MRU.
    #  a b c     T1=[a b c]
    #  a         T1=[b c] T2=[a]
    #  d         |T1|=2 > 0: evict b -> B1=[b]; T1=[c d]
    #  e         evict c -> B1=[b c]; T1=[d e]; |T1|+|B1|=4 > 3: B1=[c]
    #  c         evict d -> B1=[c d]; c in B1: p=0+max(0/2,1)=1; T1=[e] T2=[a c] B1=[d]
    #  f         |T1|=1 not > 1: evict T2's a -> B2=[a]; T1=[e f]
    #  a         |T1|=2 > 1: evict e -> B1=[d e]; a in B2: p=max(1-max(2/1,1),0)=0; T2=[c a]
    #            (steps so far match the paper exactly)
    #  e         |T1|=1 > 0: evict f -> B1=[d e f]; e in B1: p=1; T1=[] T2=[c a e] B1=[d f]
    #            (the paper adapts p before REPLACE and would evict c here; this
    #            interface names the victim before the key, so p adapts one miss late)
    #  g         T1 empty: evict c -> B2=[c]; T1=[g]; total 6
    #  g         hit: T2=[a e g]
    #  h         T1 empty: evict a -> B2=[c a]; T1=[h]; total 7 > 6: B2=[a]
    #  -e        T2=[g]
    #  i         not full; T1=[h i]; |T1|+|B1|=4 > 3: B1=[f]
    #  f         |T1|=2 > 1: evict h -> B1=[f h]; f in B1: p=1+max(1/2,1)=2; T2=[g f] B1=[h]
    policy: ARC[str] = ARC(3)
    resident: set[str] = set()
    assert drive(policy, 3, "a b c a d e c f a", resident) == ["b", "c", "d", "a", "e"]
    assert policy.p == 0
    assert drive(policy, 3, "e", resident) == ["f"] and policy.p == 1
    assert drive(policy, 3, "g g h -e i f", resident) == ["c", "a", "h"]
    assert policy.p == 2 and len(policy) == 3 and policy.ghosts() == 2  # B1=[h] B2=[a]


@pytest.mark.parametrize("name", list(POLICIES))
def test_a_scan_does_not_flush_reused_keys(name: str) -> None:
    # Keys 0-3 used three times (S3-FIFO promotes on the second hit), then a
    # one-time scan of 20 keys through a cache of 10.
    policy = make_policy(name, 10)
    hot = [str(i) for i in range(4)]
    scan = [f"s{i}" for i in range(20)]
    drive(policy, 10, " ".join(hot * 3 + scan))
    drained = set(drain(policy))
    survivors = [k for k in hot if k in drained]
    assert len(survivors) == (0 if name == "lru" else 4)


def drain(policy: Policy[Hashable]) -> list[Hashable]:
    out = []
    while len(policy):
        out.append(policy.victim())
    return out


# -- registry ------------------------------------------------------------------------


def test_registry_and_make_policy() -> None:
    assert list(POLICIES) == ["lru", "sieve", "s3fifo", "arc"]
    for name, cls in POLICIES.items():
        assert cls.name == name
        assert isinstance(make_policy(name, 5), cls)
    assert isinstance(LRU(), LRU)  # LRU needs no capacity
    with pytest.raises(ValueError, match="unknown eviction policy"):
        make_policy("random", 5)
    with pytest.raises(ValueError):
        make_policy("s3fifo", 0)


@pytest.mark.parametrize("name", list(POLICIES))
def test_victim_of_empty_policy_is_keyerror(name: str) -> None:
    policy = make_policy(name, 4)
    with pytest.raises(KeyError):
        policy.victim()
    policy.insert(1)
    policy.touch(1)
    assert policy.victim() == 1
    with pytest.raises(KeyError):
        policy.victim()


# -- invariants under random operations -------------------------------------------------


def ghost_bound(policy: Policy[Hashable], capacity: int) -> int:
    # S3-FIFO: the main share (at most c - 1) + 1 between victim and insert; ARC: the 2c directory.
    return capacity + 1 if isinstance(policy, S3FIFO) else 2 * capacity


@pytest.mark.parametrize("capacity", [1, 7, 50])
@pytest.mark.parametrize("name", list(POLICIES))
def test_random_operations_keep_invariants(name: str, capacity: int) -> None:
    rng = random.Random(f"{name}-{capacity}")
    policy = make_policy(name, capacity)
    resident: set[Hashable] = set()
    fresh = 10_000  # keys never seen before, as a scan would bring
    for step in range(6000):
        u = rng.random()
        if u < 0.1 and resident:  # invalidate any resident key
            key = rng.choice(sorted(resident, key=repr))
            policy.remove(key)
            resident.remove(key)
        elif u < 0.12:  # drain a few, as drop_caches does
            for _ in range(rng.randint(1, capacity)):
                if not resident:
                    break
                key = policy.victim()
                assert key in resident
                resident.remove(key)
        else:
            if u < 0.3:
                key = (0, b"scan", fresh)
                fresh += 1
            else:
                key = (rng.randrange(2), b"f", int(rng.paretovariate(1.0)) % (3 * capacity))
            if key in resident:
                policy.touch(key)
            else:
                if len(resident) >= capacity:
                    victim = policy.victim()
                    assert victim in resident, (step, victim)
                    resident.remove(victim)
                policy.insert(key)
                resident.add(key)
        assert len(policy) == len(resident), step
        assert policy.ghosts() <= ghost_bound(policy, capacity), step
    assert set(drain(policy)) == resident
    assert len(policy) == 0


@pytest.mark.parametrize("name", list(POLICIES))
def test_overfull_owner_is_tolerated(name: str) -> None:
    # RAM backends bound bytes, not keys: they may hold more keys than the
    # capacity they announced. Nothing may break, and ghosts stay bounded.
    capacity = 10
    policy = make_policy(name, capacity)
    for key in range(3 * capacity):
        policy.insert(key)
    for key in range(0, 3 * capacity, 2):
        policy.touch(key)
    evicted = [policy.victim() for _ in range(capacity)]
    assert len(set(evicted)) == capacity and len(policy) == 2 * capacity
    for key in range(100, 100 + 5 * capacity):
        policy.insert(key)
        policy.victim()
        assert policy.ghosts() <= ghost_bound(policy, capacity)
    assert len(drain(policy)) == 2 * capacity


@pytest.mark.parametrize("name", list(POLICIES))
def test_page_cache_runs_on_every_policy(name: str) -> None:
    pc = PageCache(4 * PAGE, name)
    f = CachedFile(b"k")
    for index in range(10):
        if pc.lookup(f, index % 6) is None:
            slot, _ = take_slot(pc)
            pc.install(f, index % 6, slot)
    assert pc.pages == 4 == len(f.pages)
    assert pc.drop(f, next(iter(f.pages)))
    out = pc.evict(pc.pages)
    assert len(out) == 3 and pc.pages == 0 and not f.pages


# -- traces ------------------------------------------------------------------------


@pytest.mark.parametrize("name", MODERN)
def test_modern_policies_beat_lru_on_zipf_with_scans(name: str) -> None:
    # A ratio, never a timing: the same seed gives the same misses on any machine.
    capacity = 1000
    trace = tracetool.synthetic("zipf+scan", capacity, 100_000, seed=1)
    lru, modern = tracetool.compare(trace, [name], capacity)
    assert lru.policy == "lru" and modern.policy == name
    assert tracetool.reduction(modern, lru) >= 0.10, (lru.miss_ratio, modern.miss_ratio)


def test_parse_recorded_trace() -> None:
    lines = ["# comment", "", "k1", "get k2", "PUT k1", "hit k1", "miss k3", "invalidate k1", "two words here"]
    trace = tracetool.parse_trace(lines)
    assert trace.keys == ["k1", "k2", "k1", "k1", "k3", "k1", "two words here"]
    assert trace.invalidate == [False, False, False, False, False, True, False]
    assert trace.accesses == 6
    result = tracetool.replay(LRU(), trace, 2)
    # k1 miss, k2 miss, k1 hit, k1 hit, k3 miss (evicts k2), k1 invalidated, "two words" miss
    assert result.misses == 4
    with pytest.raises(ValueError, match=":2: get needs a key"):
        tracetool.parse_trace(["a", "get"])


def test_trace_tool_json(capsys: pytest.CaptureFixture[str]) -> None:
    assert tracetool.main(["--synthetic", "loop", "--capacity", "50", "--length", "2000", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert [r["policy"] for r in out["results"]] == list(POLICIES)
    assert out["results"][0]["miss_ratio"] == 1.0  # a loop just over the cache defeats LRU
    assert tracetool.main(["--synthetic", "zipf", "--capacity", "50", "--length", "2000"]) == 0
    assert "reduction vs lru" in capsys.readouterr().out
