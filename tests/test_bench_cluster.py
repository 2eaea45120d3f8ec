"""tools.bench_cluster without mounts: fio and checker parsing, counters, report text, markers."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tools import bench_cluster as bc
from tools.fio import clat_percentiles_us, parse_fio_json
from tools.report import write_section

MiB = 1 << 20
RAND4K, SEQ128K = bc.READ_JOBS


def fio_json(read_iops: float = 0.0, write_iops: float = 0.0, runtime_ms: int = 1500,
             clat_ns: dict[str, int] | None = None, error: int = 0, prefix: str = "") -> str:
    """A fio 3.33 --output-format=json report of one job, shaped like the real thing."""
    def direction(iops: float, bs: int, pct: dict[str, int] | None) -> dict[str, Any]:
        out: dict[str, Any] = {"io_bytes": int(iops * bs * runtime_ms / 1000), "bw_bytes": int(iops * bs),
                               "iops": iops, "runtime": runtime_ms if iops else 0,
                               "clat_ns": {"min": 1000, "max": 90000, "mean": 20000.0}}
        if pct is not None:
            out["clat_ns"]["percentile"] = pct
        return out

    job = {"jobname": "j", "error": error, "job_runtime": runtime_ms,
           "read": direction(read_iops, 4096, None),
           "write": direction(write_iops, 4096, clat_ns if write_iops else None)}
    return prefix + json.dumps({"fio version": "fio-3.33", "jobs": [job]}, indent=1)


PCT = {"50.000000": 61440, "90.000000": 98304, "99.000000": 150528}


def read_run(store: str, round_: int, iops: float, hits: int = 0, backing: int = 0, busy: float = 0.0) -> bc.ReadRun:
    return bc.ReadRun(round_, iops=iops, bw=iops * 4096, fio_bytes=int(iops * 4096 * 2), seconds=2.0,
                      backing_bytes=backing, backing_reads=backing // 4096, pool_hits=hits,
                      hits_from_others=hits, foreign_cpu=busy)


def canned(ratio: float = 1.6, added_2: float = 42.0, stale: int = 0) -> bc.Results:
    """Three rounds of every measurement, numbers chosen so that every derived value is known."""
    s = bc.settings_for(quick=False)
    res = bc.Results(s, started="2026-11-25 21:00 UTC", elapsed_s=420.0,
                     machine={"nproc": "2", "CPU": "Test CPU", "memory": "8.0 GiB", "kernel": "6.1",
                              "SRC file system": "ext4 /dev/vda", "load average": "0.1 0.2 0.3"},
                     versions={"python": "3.11.7", "fio": "fio-3.33"})
    for r in range(3):
        base = 8000.0 + 100 * r
        for job in bc.READ_JOBS:
            res.add_read(bc.NONE, job, read_run(bc.NONE, r, base, backing=int(base * 4096 * 2)))
            res.add_read(bc.LMDB, job, read_run(bc.LMDB, r, base * ratio, hits=int(base * ratio * 2)))
            res.add_read(bc.REDIS_UNIX, job, read_run(bc.REDIS_UNIX, r, base * 0.2, hits=int(base * 0.4)))
            res.add_read(bc.REDIS_TCP, job, read_run(bc.REDIS_TCP, r, base * 0.2, hits=int(base * 0.4)))
        none_p50 = 60.0 + r
        res.writes.setdefault("none-1", []).append(bc.WriteRun(r, 15000.0, none_p50, 97.0, 148.0))
        for cfg in bc.write_configs([bc.LMDB, bc.REDIS_TCP]):
            if cfg.store == bc.NONE:
                continue
            extra = {bc.LMDB: {1: 40.0, 2: added_2}, bc.REDIS_TCP: {1: 1200.0, 2: 1250.0}}[cfg.store]
            add = extra.get(cfg.nodes, extra[2] + 5) + (50 if cfg.reading else 0)
            res.writes.setdefault(cfg.key, []).append(bc.WriteRun(r, 9000.0, none_p50 + add, 120.0, 170.0))
    res.rates = [bc.StoreRate(bc.LMDB, 1, 400_000, 400_000, 1.0, versions_per_s=1_900_000.0),
                 bc.StoreRate(bc.REDIS_UNIX, 1, 5000, 5000, 1.0, versions_per_s=4500.0),
                 bc.StoreRate(bc.REDIS_UNIX, 4, 8000, 8000, 1.0)]
    res.checks = [bc.CheckerRun(bc.LMDB, "python -m tools.coherency --mount SRC --nodes 3 --ops 100000 --json",
                                100_000, ops=101_234, ops_per_second=4000.0, elapsed=25.3, stale_reads=stale,
                                violations=stale, seed=7, ok=stale == 0)]
    res.fio_commands = ["fio --name=4k-randread-psync-qd1-d1 --filename=NODE/read.dat --size=256M"]
    res.mount_commands = {bc.LMDB: "tmemfs SRC NODE -o cleancache=cluster,backing_io=direct"}
    return res


# -- parsing ----------------------------------------------------------------------------------


def test_clat_percentiles_are_microseconds_even_after_fio_error_lines() -> None:
    out = fio_json(write_iops=15000.0, clat_ns=PCT, prefix="fio: some warning\n")
    assert clat_percentiles_us(out, "write") == {50.0: 61.44, 90.0: 98.304, 99.0: 150.528}
    assert clat_percentiles_us(out, "read") == {}
    assert clat_percentiles_us("no json here", "write") == {}


def test_write_run_takes_p50_p90_p99_and_flags_missing_percentiles() -> None:
    out = fio_json(write_iops=15000.0, clat_ns=PCT)
    run = bc.write_run(2, parse_fio_json(out), out)
    assert (run.round, run.iops, run.p50, run.p90, run.p99, run.error) == (2, 15000.0, 61.44, 98.304, 150.528, None)
    partial = fio_json(write_iops=15000.0, clat_ns={"50.000000": 61440})
    assert bc.write_run(0, parse_fio_json(partial), partial).error == "fio gave no clat percentile 90"
    failed = bc.write_run(1, parse_fio_json("fio: file not found", "fio: file not found", 1), "")
    assert failed.error is not None and "file not found" in failed.error


def test_read_run_counts_only_what_happened_during_the_run() -> None:
    out = fio_json(read_iops=10000.0, runtime_ms=2000)
    before = {"backing.read_bytes": 4096, "backing.reads": 1, "backend.cluster.store.hits": 5,
              "backend.cluster.store.hits_from_others": 5, "pagecache.hits": 0}
    after = {"backing.read_bytes": 4096 + 8 * MiB, "backing.reads": 2049, "backend.cluster.store.hits": 16005,
             "backend.cluster.store.hits_from_others": 12005, "pagecache.hits": 4000}
    run = bc.read_run(1, parse_fio_json(out), out, before, after)
    assert (run.iops, run.fio_bytes, run.seconds) == (10000.0, 10000 * 4096 * 2, 2.0)
    assert (run.backing_bytes, run.backing_reads, run.pool_hits, run.hits_from_others, run.pagecache_hits) == (
        8 * MiB, 2048, 16000, 12000, 4000)
    assert run.pool_hits_per_s == 8000.0
    assert run.backing_share == pytest.approx(8 * MiB / (10000 * 4096 * 2))
    none = bc.read_run(0, parse_fio_json(out), out, {}, {"backing.read_bytes": 10})  # no cluster keys
    assert (none.pool_hits, none.backing_bytes) == (0, 10)


def test_parse_checker_summary_violations_and_failed_runs() -> None:
    summary = {"ok": True, "ops": 101_234, "ops_per_second": 4012, "elapsed_seconds": 25.2, "stale_reads": 0,
               "stale_sizes": 0, "stale_names": 0, "corrupt": 0, "errors": 0, "violations": 0, "seed": 99,
               "first_violations": []}
    good = bc.parse_checker("lmdb", "cmd", 100_000, json.dumps(summary), 0)
    assert (good.ops, good.ops_per_second, good.seed, good.ok, good.error) == (101_234, 4012.0, 99, True, None)
    summary.update(ok=False, stale_reads=3, violations=4,
                   first_violations=[{"kind": "stale read", "text": "stale read: node1 ..."}])
    bad = bc.parse_checker("lmdb", "cmd", 100_000, json.dumps(summary), 1)
    assert (bad.ok, bad.stale_reads, bad.violations, bad.first_violations) == (False, 3, 4, ["stale read: node1 ..."])
    crashed = bc.parse_checker("redis-tcp", "cmd", 20_000, "", 1, "coherency: seed 5\ncoherency: the run failed: boom")
    assert crashed.error == "exit 1: coherency: the run failed: boom" and not crashed.ok


def test_checker_violations_are_shortened_to_one_line() -> None:
    text = ("error: /tmp/x/node1: tmemfs logged an error:\n2026 ERROR tmemfs: failed\nTraceback (most recent call "
            "last):\n  File \"a.py\"\nlmdb.InvalidParameterError: mdb_get: Invalid argument\n")
    assert bc.short_violation(text) == ("error: /tmp/x/node1: tmemfs logged an error: ... "
                                        "lmdb.InvalidParameterError: mdb_get: Invalid argument")
    assert bc.short_violation("stale read: a") == "stale read: a"


def test_log_problems_counts_distinct_messages_with_numbers_blanked() -> None:
    log = ("2026-11-25 21:50:09,770 tmemfs[13612] ERROR tmemfs.cleancache: backend cluster failed in stats "
           "(fault 1); treated as a miss\n"
           "2026-11-25 21:50:09,771 tmemfs[13612] INFO tmemfs: mounted\n"
           "lmdb.InvalidParameterError: mdb_get: Invalid argument\n"
           "2026-11-25 21:50:10,000 tmemfs[13612] ERROR tmemfs.cleancache: backend cluster failed in stats "
           "(fault 2); treated as a miss\n")
    assert bc.log_problems({"lmdb-b": log, "none-b": "2026-11-25 21:50:09,770 tmemfs[1] INFO ok\n"}) == [
        "lmdb-b: 2x `ERROR tmemfs.cleancache: backend cluster failed in stats (fault N); treated as a miss`",
        "lmdb-b: 1x `lmdb.InvalidParameterError: mdb_get: Invalid argument`"]
    many = {f"n{i}": f"2026-11-25 21:50:09,770 tmemfs[1] WARNING w{chr(97 + i)}\n" for i in range(5)}
    assert bc.log_problems(many, limit=3)[-1] == "... and 2 more distinct lines"


def test_fio_command_lines() -> None:
    cmd = bc.fio_args(bc.WRITE_JOB, Path("/mnt/n0/write.dat"), 32 * MiB, 4)
    assert cmd == ["fio", "--name=4k-randwrite-psync-qd1-d1", "--filename=/mnt/n0/write.dat", "--size=32M",
                   "--rw=randwrite", "--bs=4k", "--ioengine=psync", "--direct=1", "--runtime=4", "--time_based",
                   "--invalidate=0", "--percentile_list=50:90:99", "--output-format=json"]
    read = bc.fio_args(SEQ128K, Path("/mnt/b/read.dat"), 256 * MiB, 1.5)
    assert "--rw=read" in read and "--bs=128k" in read and "--runtime=1500ms" in read
    assert not any(a.startswith("--percentile_list") for a in read)
    assert bc.shown(read, Path("/mnt/b"))[2] == "--filename=NODE/read.dat"


def test_write_configs_start_with_the_baseline() -> None:
    keys = [c.key for c in bc.write_configs([bc.NONE, bc.LMDB])]
    assert keys == ["none-1", "lmdb-1", "lmdb-2", "lmdb-3", "lmdb-2+reading"]
    assert bc.write_configs([bc.LMDB])[4].label == "lmdb, 2 nodes, the others reading during the run"


# -- derived numbers and the report ----------------------------------------------------------------


def test_added_latency_pairs_rounds() -> None:
    res = canned(added_2=42.0)
    assert bc.added_us(res, "lmdb-2", "none-1") == [42.0, 42.0, 42.0]
    assert bc.added_us(res, "lmdb-2+reading", "lmdb-1") == [52.0, 52.0, 52.0]
    res.writes["none-1"] = [r for r in res.writes["none-1"] if r.round != 1]  # a round without baseline
    res.writes["lmdb-2"][2] = bc.WriteRun(2, error="mount died")
    assert bc.added_us(res, "lmdb-2", "none-1") == [42.0]


def test_targets_met_and_missed() -> None:
    met = {t: (m, ok) for t, m, ok in bc.targets(canned(ratio=1.6, added_2=42.0))}
    key = f"second node, {RAND4K.label}: lmdb >= 1.5x cleancache=none"
    assert met[key] == ("1.60x", True)
    assert met["coherency adds < 200 us to the median 4k write, 2 nodes, lmdb (the target)"] == ("+42 us", True)
    checker = "coherency checker, lmdb, 3 nodes: 0 stale reads"
    assert met[checker] == ("0 stale reads, 0 violations in 101,234 ops", True)
    missed = {t: (m, ok) for t, m, ok in bc.targets(canned(ratio=1.2, added_2=250.0, stale=2))}
    assert missed[key] == ("1.20x", False)
    assert missed["coherency adds < 200 us to the median 4k write, 2 nodes, lmdb (the target)"] == ("+250 us", False)
    assert missed[checker][1] is False


def test_targets_without_measurements_are_not_applicable() -> None:
    rows = bc.targets(bc.Results(bc.settings_for(quick=True)))
    assert [ok for _, _, ok in rows] == [None, None, None, None]
    assert all(m == "not measured" for _, m, _ in rows)


def test_report_tables() -> None:
    text = bc.report(canned())
    assert text.startswith("## Cluster nodes (normal mode, `python -m tools.bench_cluster`)\n")
    assert "backing_io=direct on every tmemfs mount" in text and "real disk reads" in text
    assert "| second node, 4k randread psync QD1 direct=1: lmdb >= 1.5x cleancache=none | 1.60x | ok |" in text
    # lmdb row of the 4k table: median IOPS 8.1k * 1.6, ratio 1.60x, no backing reads, hits/s = IOPS
    assert ("| cluster, cc_store=lmdb (/dev/shm) | 13.0k (12.8k..13.1k) | 1.60x | 0.0 | 0.0 % "
            "| 12960 (12800..13120) | 100 % |") in text
    assert "| cleancache=none (two mounts) | 8.1k (8.0k..8.2k) | 1.00x (baseline) | 63.3 (62.5..64.1) | 100.0 % |" \
        in text
    assert "| lmdb, 2 nodes | 9.0k (9.0k..9.0k) | 103 (102..104) | 120 | 170 | +42 | +2 |" in text
    assert "| cluster, cc_store=lmdb (/dev/shm) | 400,000 | n/a (gets never wait) | 2.5 | 1,900,000 |" in text
    assert "| cluster, Redis on a unix socket | 5,000 | 8,000 | 200.0 | 4,500 |" in text
    assert "| lmdb | 3 | 100,000 / 101,234 | 4,000 | 0 | 0 | 0 | 0 | 0 | 0 | 7 | ok |" in text
    assert "fio --name=4k-randread-psync-qd1-d1 --filename=NODE/read.dat --size=256M" in text
    assert "tmemfs SRC NODE -o cleancache=cluster,backing_io=direct" in text
    assert text.count("**MISSED**") == 1
    assert "redis-tcp (informative, the target names lmdb) | +1250 us | **MISSED**" in text
    assert " † |" not in text  # no busy run


def test_report_marks_busy_and_failed_runs() -> None:
    res = canned(ratio=1.2)
    res.reads[f"{bc.LMDB}/{RAND4K.name}"][0] = read_run(bc.LMDB, 0, 9600.0, hits=100, busy=0.9)
    res.reads[f"{bc.REDIS_TCP}/{RAND4K.name}"] = [bc.ReadRun(r, error="node B: OSError: EIO") for r in range(3)]
    text = bc.report(res)
    assert "| 1.20x | **MISSED** |" in text
    assert "9.7k (9.6k..9.8k) †" in text
    assert "| cluster, Redis on TCP loopback | **failed**: node B: OSError: EIO |" in text
    assert "max 90%;" in text and "(1 of 21 runs)" in text  # the read runs that did not fail


def test_sanity_note_when_node_b_gets_no_pool_hits() -> None:
    res = canned()
    assert bc.sanity_notes(res) == []
    for run in res.reads[f"{bc.LMDB}/{SEQ128K.name}"]:
        run.pool_hits = 0
    notes = bc.sanity_notes(res)
    assert len(notes) == 1 and notes[0].startswith("lmdb: node B got no pool hits in 128k seq read")
    rows = {t: m for t, m, _ in bc.targets(res)}
    assert rows[f"second node, {SEQ128K.label}: lmdb >= 1.5x cleancache=none"] == (
        "1.60x (node B got no pool hits: see Notes)")
    assert rows[f"second node, {RAND4K.label}: lmdb >= 1.5x cleancache=none"] == "1.60x"


def test_results_survive_json() -> None:
    res = canned()
    res.daemon_problems = ["lmdb-b: 1x `ERROR x`"]
    back = bc.results_from_json(json.loads(json.dumps(bc.results_to_json(res))))
    assert back == res
    assert bc.report(back) == bc.report(res)


# -- the section ------------------------------------------------------------------------------------


def test_write_report_touches_only_the_section(tmp_path: Path) -> None:
    out = tmp_path / "BENCHMARKS.md"
    out.write_text("head\n<!-- cluster:begin -->\nold\n<!-- cluster:end -->\ntail\n")
    write_section(out, bc.report(canned()), bc.BEGIN, bc.END)
    text = out.read_text()
    assert text.startswith("head\n<!-- cluster:begin -->\n## Cluster nodes") and text.endswith(
        "<!-- cluster:end -->\ntail\n")
    assert "\nold\n" not in text
    fresh = tmp_path / "new.md"
    write_section(fresh, "## Cluster nodes\n", bc.BEGIN, bc.END)
    assert fresh.read_text() == "\n<!-- cluster:begin -->\n## Cluster nodes\n<!-- cluster:end -->\n"
