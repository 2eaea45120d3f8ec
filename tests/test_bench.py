"""tools.bench without mounts: its jobs and configurations, the example's patches, and the report it renders."""

from __future__ import annotations

import json
from pathlib import Path

from tests.test_bench_fio import fio_json
from tools import bench, fio
from tools.fio import FioResult, Point, parse_fio_json
from tools.rounds import Settings


def test_matrix_covers_every_workload_at_both_engines_direct1() -> None:
    jobs = bench.MATRIX_JOBS
    assert len(jobs) == 10 and len({j.name for j in jobs}) == 10
    assert all(j.direct == 1 for j in jobs)
    pairs = {(j.workload.label, j.ioengine, j.iodepth) for j in jobs}
    for label in ("4k randread", "4k randwrite", "4k randrw 70/30", "128k seq read", "4k randread zipf:1.1"):
        assert (label, "psync", 1) in pairs and (label, "libaio", 16) in pairs
    keys = [c.key for c in bench.MATRIX_CONFIGS]
    assert keys == ["native", "example", "example-nodirect", "null", "tmemfs-none", "tmemfs-tmem", "tmemfs-zcache",
                    "tmemfs-dedup"]
    assert all("backing_io=direct" in c.options for c in bench.MATRIX_CONFIGS if c.kind == "tmemfs")
    # reads run before writes on a mount, so the read file is never written
    writes = [j.workload.writes for j in jobs]
    assert writes == sorted(writes)
    assert {bench.MATRIX.file_for(j) for j in jobs if j.workload.writes} == {bench.RW_NAME}
    assert {bench.MATRIX.file_for(j) for j in jobs if not j.workload.writes} == {bench.TEXT_NAME}


def test_job_arguments() -> None:
    by_name = bench.ALL_JOBS
    qd16 = by_name["4k-randread-libaio-qd16-d1"]
    assert qd16.fio_args() == ["--rw=randread", "--bs=4k", "--ioengine=libaio", "--iodepth=16", "--direct=1"]
    assert by_name["4k-randrw-psync-qd1-d1"].fio_args() == ["--rw=randrw", "--rwmixread=70", "--bs=4k",
                                                            "--ioengine=psync", "--direct=1"]
    assert "--random_distribution=zipf:1.1" in by_name["4k-zipf-libaio-qd16-d1"].fio_args()
    cmd = fio.fio_command(qd16, Path("/m/f"), 3)
    assert "--time_based" in cmd and "--runtime=3" in cmd
    assert "--size=64M" in cmd
    assert "--output-format=json" in cmd
    assert "--invalidate=0" in cmd
    assert "--runtime=500ms" in fio.fio_command(qd16, Path("/m/f"), 0.5)
    assert [j.direct for j in bench.COMPARE_JOBS] == [0, 0, 0]


def test_patch_timeouts_changes_exactly_two_lines() -> None:
    src = "a\n        entry.entry_timeout = 0\n        entry.attr_timeout = 0\nb\n"
    out = bench.patch_timeouts(src)
    assert out == "a\n        entry.entry_timeout = 1\n        entry.attr_timeout = 1\nb\n"


def test_patch_nodirect_drops_o_direct_on_the_backing_opens() -> None:
    src = ("            fd = os.open(self._inode_to_path(inode), flags)\n"
           "            fd = os.open(path, flags | os.O_CREAT | os.O_TRUNC)\n")
    out = bench.patch_nodirect(src)
    assert out == ("            fd = os.open(self._inode_to_path(inode), flags & ~os.O_DIRECT)\n"
                   "            fd = os.open(path, (flags & ~os.O_DIRECT) | os.O_CREAT | os.O_TRUNC)\n")
    try:
        bench.patch_nodirect("nothing to patch\n")
    except RuntimeError as exc:
        assert "occurs 0 times" in str(exc)
    else:
        raise AssertionError("an example that changed must not be patched silently")


def test_summarize_pyspy() -> None:
    raw = ("main (fusefs/cli.py:260);get_events (trio/_core/_io_epoll.py:243) 6\n"
           "main (fusefs/cli.py:260);DataPath.read (fusefs/datapath.py:138) 3\n"
           "main (fusefs/cli.py:260);DataPath.read (fusefs/datapath.py:129) 1\n")
    samples, cats, top = bench.summarize_pyspy(raw)
    assert samples == 10
    assert cats[0] == ("idle in epoll (waiting for the kernel's next request)", 0.6)
    assert ("DataPath.read (fusefs/datapath.py)", 0.4) in top


MATRIX_BASE = {"native": 15_000, "example-nodirect": 12_000, "null": 40_000, "tmemfs-none": 10_000,
               "tmemfs-tmem": 20_000, "tmemfs-zcache": 18_000, "tmemfs-dedup": 19_000}
CRASH = "mount died (fio error 103); daemon: OSError: [Errno 22] Invalid argument"


def canned_report() -> bench.Report:
    """The stock example crashes on every direct=1 job; in the comparison it wins one job and loses another."""
    report = bench.Report(Settings(runtime=2, reps=3, quick=False, profile=True, sensitivity=False),
                          {"nproc": "2"}, {"fio": "fio-3.33"}, "2026-01-01")
    for job in bench.MATRIX_JOBS:
        for config in bench.MATRIX_CONFIGS:
            p = report.matrix.point(config.key, job.name)
            if config.key == bench.BASELINE:
                p.add(0, FioResult(error=CRASH))
                report.matrix.crashes[(config.key, job.name)] = "OSError: [Errno 22] Invalid argument"
                continue
            for rnd in range(3):
                p.add(rnd, parse_fio_json(fio_json(MATRIX_BASE[config.key] + 1000 * rnd)))
            report.matrix.note_command(fio.fio_command(job, Path("/mnt") / bench.MATRIX.file_for(job), 2),
                                       config.key)
    for job in bench.COMPARE_JOBS:
        for key in ("native", bench.BASELINE, bench.BASELINE_1S, bench.SUBJECT, bench.SUBJECT_KC):
            p = report.compare.point(key, job.name)
            base = {"native": 700_000, bench.BASELINE: 15_000, bench.BASELINE_1S: 500_000,
                    bench.SUBJECT_KC: 480_000}.get(key, 20_000)
            for rnd in range(3):
                p.add(rnd, parse_fio_json(fio_json(base + 1000 * rnd)))
        report.compare.note_command(fio.fio_command(job, Path("/mnt/bench-64M.dat"), 2), bench.SUBJECT)
    report.rss = bench.RssResult("cleancache=none,cache_size=64M", 30 << 20, 100 << 20, 101 << 20,
                                 64 << 20, 64 << 20)
    report.example = bench.ExampleSource("/c/pyfuse3-3.5.0.tar.gz", "ab" * 32, False, "pip download pyfuse3",
                                         {"timeouts1": "-a\n+b\n", "nodirect": "-c\n+d\n"})
    return report


def test_report_sections_and_numbers() -> None:
    text = bench.render_report(canned_report())
    for heading in ("## Summary", "## fio matrix (direct=1): IOPS", "## fio matrix: ratios",
                    "## fio matrix: bandwidth", "## Pass-through comparison (direct=0): ratios", "## Machine",
                    "## Versions", "## Resident memory", "## fio command lines", "## Crashes and failures",
                    "## The baseline and the patched examples"):
        assert heading in text
    # the matrix: every job row, the crashed example shown as such, medians with ranges
    assert "| 4k randrw 70/30 libaio QD16 direct=1 | 16.0k (15.0k..17.0k) | **crashed** | 13.0k (12.0k..14.0k) |" \
           " 41.0k (40.0k..42.0k) | 11.0k (10.0k..12.0k) |" in text
    assert text.count("| **crashed** |") >= 20  # IOPS and bandwidth tables
    assert "**Cannot run: example** (pyfuse3 example, as shipped) crashed (the mount died) on every job" in text
    assert "70 of 80 combinations measured" in text
    assert "| 4k randread psync QD1 direct=1 | 0.85x (0.83..0.86) | 0.27x (0.25..0.29) | 1.91x (1.83..2.00) |" in text
    assert "| tmemfs-none | disk (backing_io=direct" in text
    assert "max_tasks=1" in text and "attr_timeout 1 s" in text
    # the comparison
    assert "| 4k randread psync QD1 direct=0 | 1.31x (1.29..1.33) ok | 0.96x (0.96..0.96) ok | " \
           "0.04x (0.04..0.04) |" in text  # judged: vs the stock example, and kernel_cache vs example-1s
    assert "* Informative, tmemfs (direct_io: every read(2) reaches tmemfs) against example-1s" in text
    assert "The pyfuse3 example as shipped crashes (mount dies) on: every job of the fio matrix (direct=1)." in text
    assert "16.0k (15.0k..17.0k)" in text  # example's median (min..max)
    assert "limit 137.6 MiB: ok" in text
    assert "| matrix | example | 4k randread psync QD1 direct=1 | `OSError: [Errno 22] Invalid argument` |" in text
    # every fio line, both parts
    assert "fio --name=4k-randrw-libaio-qd16-d1 --filename=/mnt/rw-64M.dat --size=64M --rw=randrw " \
           "--rwmixread=70" in text
    assert "fio --name=4k-zipf-psync-qd1-d1 --filename=/mnt/text-64M.dat" in text
    assert "fio --name=128k-read-psync-qd1-d0 --filename=/mnt/bench-64M.dat" in text
    assert "`passthroughfs-nodirect.py`:" in text and "+d" in text


def test_failed_tmemfs_point_is_reported_not_dropped() -> None:
    report = canned_report()
    job = bench.MATRIX_JOBS[3]
    p = report.matrix.points[("tmemfs-zcache", job.name)] = Point()
    p.add(0, FioResult(error="fio error 5: Input/output error"))
    text = bench.render_report(report)
    assert "**failed**" in text
    assert "**Cannot run: tmemfs-zcache** (tmemfs cleancache=zcache) failed on 128k seq read libaio QD16" in text
    assert f"| {job.label} | 0.85x (0.83..0.86) | 0.27x (0.25..0.29) | 1.91x (1.83..2.00) | n/a (tmemfs-zcache " \
           "failed) |" in text
    assert "matrix, tmemfs-zcache, 128k seq read libaio QD16 direct=1: fio error 5: Input/output error" in text


def test_report_judges_kernel_cache_against_the_kernel_cached_example() -> None:
    """Against example-1s the target is judged on tmemfs-kernel_cache (the same caching);
    default tmemfs there is informative, however far behind."""
    report = canned_report()
    assert "Target met in all 6 comparisons." in bench.render_report(report)
    assert bench.jobs_to_profile(report.compare) == []
    for (key, _job), p in report.compare.points.items():
        if key == bench.SUBJECT_KC:
            for rnd in list(p.by_round):
                p.by_round[rnd] = FioResult(300_000, 1.0)
    text = bench.render_report(report)
    assert "**Target MISSED in 3 of 6 comparisons:** 4k randread psync QD1 direct=0, tmemfs-kernel_cache vs " \
           "example-1s = 0.60x" in text
    assert bench.jobs_to_profile(report.compare) == list(bench.COMPARE_JOBS)


def test_report_round_trips_through_json(tmp_path: Path) -> None:
    report = canned_report()
    report.profiles = ["py-spy is not installed"]
    report.sensitivity = bench.Sensitivity(bench.COMPARE_JOBS[0], {"tmemfs": FioResult(5.0, 6.0)}, ["fio x"])
    path = tmp_path / "report.json"
    path.write_text(json.dumps(bench.report_to_json(report)))
    back = bench.report_from_json(json.loads(path.read_text()))
    assert bench.render_report(back) == bench.render_report(report)


def test_charts_and_markers(tmp_path: Path) -> None:
    report = canned_report()
    made = bench.make_charts(report, tmp_path / "BENCHMARKS.md")
    assert [rel for _, rel in made] == ["docs/bench/matrix-iops.png", "docs/bench/compare-iops.png"]
    for _, rel in made:
        png = tmp_path / rel
        assert png.read_bytes()[:4] == b"\x89PNG" and 10_000 < png.stat().st_size < 150_000
    report.charts = made
    assert "![fio matrix (direct=1): IOPS per configuration and workload](docs/bench/matrix-iops.png)" in \
        bench.render_report(report)


def test_quick_settings_and_plan() -> None:
    quick = bench.settings_from(bench.parse_args(["--quick"]))
    full = bench.settings_from(bench.parse_args([]))
    assert (quick.reps, quick.runtime, quick.profile, quick.sensitivity) == (1, 0.5, False, False)
    assert full.reps >= 3
    runs, seconds = bench.plan(full)
    assert runs == 3 * (8 * 10 + 5 * 3)
    assert seconds < 15 * 60  # the fio runs of a full run leave room for the rest within 20 minutes
    assert bench.plan(quick)[1] < 100  # with bench_backends --quick, make bench QUICK=1 < 3 min
    assert bench.settings_from(bench.parse_args(["--parts", "matrix"])).parts == ("matrix",)
