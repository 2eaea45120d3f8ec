"""tools.bench without mounts: fio JSON parsing, ratios, and the report it renders."""

from __future__ import annotations

import json
from pathlib import Path

from tools import bench

# Trimmed from real fio 3.33 --output-format=json output (only the keys bench reads, plus neighbours).
FIO_OK = """{
  "fio version" : "fio-3.33",
  "jobs" : [
    {
      "jobname" : "4k-randread-psync-qd1-d0",
      "error" : 0,
      "read" : {
        "io_bytes" : 201326592,
        "bw_bytes" : 67108864,
        "iops" : 16384.5,
        "runtime" : 3000,
        "bw" : 65536,
        "total_ios" : 49152
      },
      "write" : {"io_bytes" : 0, "bw_bytes" : 0, "iops" : 0.0, "bw" : 0}
    }
  ]
}
"""

# What fio prints when the pyfuse3 example dies under it: an error line, then the JSON.
FIO_CRASH_STDOUT = ("fio: pid=4889, err=103/file:io_u.c:1876, func=io_u error, "
                    "error=Software caused connection abort\n"
                    + FIO_OK.replace('"error" : 0', '"error" : 103').replace("16384.5", "0.0"))
FIO_CRASH_STDERR = ("fio: io_u error on file /mnt/bench-64M.dat: Software caused connection abort: "
                    "read offset=4046848, buflen=4096\n")


def fio_json(iops: float, bw_kib: int | None = None) -> str:
    """A minimal report with the given numbers; without bw_bytes when bw_kib is given (older fio)."""
    read: dict[str, float] = {"iops": iops}
    if bw_kib is None:
        read["bw_bytes"] = iops * 4096
    else:
        read["bw"] = bw_kib
    return json.dumps({"jobs": [{"jobname": "x", "error": 0, "read": read}]})


def test_parse_ok() -> None:
    r = bench.parse_fio_json(FIO_OK)
    assert r.error is None
    assert r.iops == 16384.5
    assert r.bw == 67108864


def test_parse_falls_back_to_kib_bandwidth() -> None:
    r = bench.parse_fio_json(fio_json(100.0, bw_kib=400))
    assert r.bw == 400 * 1024


def test_parse_crash_with_leading_error_line() -> None:
    r = bench.parse_fio_json(FIO_CRASH_STDOUT, FIO_CRASH_STDERR, returncode=1)
    assert r.error is not None
    assert "103" in r.error
    assert "connection abort" in r.error


def test_parse_no_json() -> None:
    r = bench.parse_fio_json("", "fio: failed to open /nope\n", returncode=1)
    assert r.error == "fio: failed to open /nope"
    assert bench.parse_fio_json("garbage {", "", 2).error == "fio exited 2, no JSON"


def test_nonzero_exit_without_job_error_is_a_failure() -> None:
    assert bench.parse_fio_json(FIO_OK, "", returncode=1).error == "fio exited 1"


def point(*iops: float) -> bench.Point:
    p = bench.Point()
    for n, value in enumerate(iops):
        p.add(n, bench.parse_fio_json(fio_json(value)))
    return p


def test_spread_and_ratio() -> None:
    assert bench.spread([3.0, 1.0, 2.0]) == (2.0, 1.0, 3.0)
    assert bench.spread([]) is None
    r = bench.ratio(point(90, 100, 110), point(100, 100, 100))
    assert r is not None
    assert r.median == 1.0
    assert (r.lo, r.hi) == (0.9, 1.1)
    assert r.meets


def test_ratio_is_none_when_the_baseline_crashed() -> None:
    crashed = bench.Point()
    crashed.add(0, bench.parse_fio_json(FIO_CRASH_STDOUT, FIO_CRASH_STDERR, 1))
    assert crashed.failed
    assert bench.ratio(point(100), crashed) is None


def test_job_arguments() -> None:
    qd16 = next(j for j in bench.JOBS if j.iodepth == 16 and j.direct == 1)
    assert qd16.fio_args() == ["--rw=randread", "--bs=4k", "--ioengine=libaio", "--iodepth=16", "--direct=1"]
    cmd = bench.fio_command(qd16, Path("/m/f"), 3)
    assert "--time_based" in cmd
    assert "--size=64M" in cmd
    assert "--output-format=json" in cmd
    assert "--invalidate=0" in cmd
    assert len(bench.JOBS) == 6


def test_patch_timeouts_changes_exactly_two_lines() -> None:
    src = "a\n        entry.entry_timeout = 0\n        entry.attr_timeout = 0\nb\n"
    out = bench.patch_timeouts(src)
    assert out == "a\n        entry.entry_timeout = 1\n        entry.attr_timeout = 1\nb\n"


def test_summarize_pyspy() -> None:
    raw = ("main (fusefs/cli.py:260);get_events (trio/_core/_io_epoll.py:243) 6\n"
           "main (fusefs/cli.py:260);DataPath.read (fusefs/datapath.py:138) 3\n"
           "main (fusefs/cli.py:260);DataPath.read (fusefs/datapath.py:129) 1\n")
    samples, cats, top = bench.summarize_pyspy(raw)
    assert samples == 10
    assert cats[0] == ("idle in epoll (waiting for the kernel's next request)", 0.6)
    assert ("DataPath.read (fusefs/datapath.py)", 0.4) in top


def canned_report() -> bench.Report:
    """Example wins one job, loses another, and crashes on every direct=1 job."""
    matrix = bench.Matrix()
    for job in bench.JOBS:
        for key in ("native", bench.BASELINE, bench.BASELINE_1S, bench.SUBJECT, "tmemfs-tmem"):
            p = matrix.point(key, job.name)
            if key.startswith("example") and job.direct:
                p.add(0, bench.FioResult(
                    error="mount died (fio error 103); daemon: OSError: [Errno 22] Invalid argument"))
                matrix.crashes[(key, job.name)] = "OSError: [Errno 22] Invalid argument"
                continue
            base = {"native": 700_000, bench.BASELINE: 15_000, bench.BASELINE_1S: 500_000}.get(key, 20_000)
            for rnd in range(3):
                p.add(rnd, bench.parse_fio_json(fio_json(base + 1000 * rnd)))
        matrix.note_command(bench.fio_command(job, Path("/mnt/bench-64M.dat"), 8), bench.SUBJECT)
    settings = bench.Settings(runtime=8, reps=3, quick=False, profile=True, sensitivity=False)
    configs = [c for c in bench.CONFIGS if not c.extra]
    report = bench.Report(settings, configs, matrix, {"nproc": "2"}, {"fio": "fio-3.33"}, None, "2026-01-01")
    report.rss = bench.RssResult("cleancache=none,cache_size=64M", 30 << 20, 100 << 20, 101 << 20,
                                 64 << 20, 64 << 20)
    return report


def test_report_sections_and_numbers() -> None:
    text = bench.render_report(canned_report())
    for heading in ("## Summary", "## Ratios", "## IOPS", "## Bandwidth", "## Machine", "## Versions",
                    "## Resident memory", "## fio command lines", "## Crashes and failures"):
        assert heading in text
    assert "| 4k randread psync QD1 direct=0 | 1.31x (1.29..1.33) ok | 0.04x (0.04..0.04) **MISS** |" in text
    assert "n/a (example crashed)" in text
    assert "**Target MISSED in 3 of 6 comparisons:**" in text
    assert "The pyfuse3 example crashes (mount dies) on: 4k randread psync QD1 direct=1" in text
    assert "OSError: [Errno 22] Invalid argument" in text
    assert "**crashed**" in text
    assert "16.0k (15.0k..17.0k)" in text  # example's median (min..max)
    assert "limit 137.6 MiB: ok" in text
    assert "fio --name=4k-randread-libaio-qd16-d1 --filename=/mnt/bench-64M.dat" in text


def test_report_when_every_target_is_met() -> None:
    report = canned_report()
    for (key, _job), p in report.matrix.points.items():
        if key == bench.BASELINE_1S and not p.failed:
            for rnd in list(p.by_round):
                p.by_round[rnd] = bench.FioResult(10_000, 1.0)
    assert "Target met in all 6 comparisons." in bench.render_report(report)
    assert bench.jobs_to_profile(report.matrix) == []


def test_cpu_accounting_and_busy_marker() -> None:
    before = bench.CpuSample(wall=0.0, busy=10.0, steal=1.0, ours=2.0)
    after = bench.CpuSample(wall=2.0, busy=13.0, steal=1.2, ours=4.0)  # 3 s busy, 2 s of it ours
    r = bench.with_cpu(bench.FioResult(1000.0, 4096000.0), before, after)
    assert r.foreign_cpu == 0.5
    assert r.steal is not None and abs(r.steal - 0.1) < 1e-9
    p = bench.Point()
    p.add(0, r)
    assert p.busy()
    assert bench.cell(p).endswith(" †")
    assert "1 of 1 runs" in bench.noise_lines(bench.Matrix(points={("x", "y"): p}))[0]
