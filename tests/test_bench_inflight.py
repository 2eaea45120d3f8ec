"""tools.bench_inflight without mounts: target judgement, fio's IOPS log and job times, the report it renders."""

from __future__ import annotations

import json
from pathlib import Path

from tools import bench_inflight as bi
from tools.fio import FioResult, Point, job_span

MiB = 1 << 20

# IOPS of (4k QD1, 4k libaio QD16, 128k QD1) per configuration, round 1; round 2 is 10% higher everywhere
# but on native, whose disk halves in round 2 (a throttled disk must show).
READS: dict[str, tuple[float, float, float]] = {
    bi.NATIVE: (15000, 60000, 7000),
    bi.PEER: (10000, 40000, 3000),
    bi.PEER_S: (10000, 10000, 3000),
    bi.NULL: (43000, 150000, 20000),
    bi.FLOOR: (9800, 30000, 2900),
    bi.NONE: (9500, 20000, 2800),  # QD1 0.95x, 128k 0.93x: met; QD16 0.5x: missed
    bi.NONE_MR1: (9000, 8000, 2800),
    bi.HELD: (19000, 30000, 4000),  # QD16 0.75x of the peer: missed
    bi.HITS: (40000, 100000, 15000),  # QD16 0.67x of null: met
}


def synthetic(rounds: int = 2, quick: bool = False) -> bi.Report:
    """A report shaped like a run, from hand-made numbers."""
    settings = bi.settings_from(bi.parse_args(["--quick"] if quick else []))
    report = bi.Report(settings, 256 * MiB, {"nproc": "2"}, {"tmemfs source": "git abc1234 (clean)"},
                       "2026-12-05 10:00 UTC")
    for round_ in range(rounds):
        for key, values in READS.items():
            scale = 0.5 ** round_ if key == bi.NATIVE else 1 + 0.1 * round_
            for job, iops in zip(bi.READ_JOBS, values, strict=True):
                report.matrix.point(key, job.name).add(round_, FioResult(iops * scale, iops * scale * 4096))
        report.matrix.point(bi.WRITER_TMEMFS, bi.ALONE).add(round_, FioResult(20000, 0))
        report.matrix.point(bi.WRITER_TMEMFS, bi.DURING_DD).add(round_, FioResult(8000, 0))  # 0.4x: missed
        report.matrix.point(bi.CLUSTER, bi.QD1.name).add(round_, FioResult(1000, 0))
        report.matrix.point(bi.CLUSTER, bi.QD16.name).add(round_, FioResult(4500, 0))  # 4.5x: met
        report.dd_runs.append(bi.DdRun(bi.WRITER_TMEMFS, round_, dd_s=2.0, fio_s=4.0, dd_start=0.1, dd_end=2.1,
                                       whole_iops=14000, during_iops=8000, window_s=1.9))
    report.paths = {"SRC": "/w/run/src", "MNT": "/w/run/mnt", "WS": "/w", ".venv/bin": "/r/.venv/bin"}
    report.mount_commands = {bi.NONE: "/r/.venv/bin/tmemfs /w/run/src /w/run/mnt -o " + bi.NONE_OPTIONS}
    report.matrix.note_command(["fio", "--name=x", "--filename=/w/run/mnt/text-256M.dat"], bi.NONE)
    report.matrix.note_command(["fio", "--name=x", "--filename=/w/run/mnt/text-256M.dat"], bi.PEER)
    return report


def test_targets_are_judged_on_the_ratio_of_medians() -> None:
    got = bi.verdicts(synthetic())
    by_subject = {(v.target.subject, v.target.base): v for v in got}
    assert len(got) == len(bi.TARGETS) == 10
    none_qd1 = by_subject[((bi.NONE, bi.QD1.name), (bi.PEER, bi.QD1.name))]
    assert none_qd1.result == "MET" and none_qd1.ratio is not None and round(none_qd1.ratio.median, 2) == 0.95
    assert by_subject[((bi.NONE, bi.QD16.name), (bi.PEER, bi.QD16.name))].result == "MISSED"
    assert by_subject[((bi.HELD, bi.QD16.name), (bi.PEER, bi.QD16.name))].result == "MISSED"
    assert by_subject[((bi.HELD, bi.QD1.name), (bi.PEER, bi.QD1.name))].result == "MET"
    assert by_subject[((bi.HITS, bi.QD16.name), (bi.NULL, bi.QD16.name))].result == "MET"
    assert by_subject[((bi.NONE, bi.QD1.name), (bi.NONE_MR1, bi.QD1.name))].result == "MET"
    assert by_subject[((bi.WRITER_TMEMFS, bi.DURING_DD), (bi.WRITER_TMEMFS, bi.ALONE))].result == "MISSED"
    assert by_subject[((bi.CLUSTER, bi.QD16.name), (bi.CLUSTER, bi.QD1.name))].result == "MET"


def test_a_failed_subject_misses_a_failed_or_missing_baseline_is_not_applicable() -> None:
    target = bi.TARGETS[0]
    assert (bi.judge(target, {}).result, bi.judge(target, {}).why) == ("n/a", f"{bi.NONE} not measured")
    failed = Point()
    failed.add(0, FioResult(error="mount failed: boom"))
    ok = Point()
    ok.add(0, FioResult(100.0))
    verdict = bi.judge(target, {target.subject: ok, target.base: failed})
    assert (verdict.result, verdict.why) == ("n/a", f"{bi.PEER} failed: round 1: mount failed: boom")
    assert verdict.ratio is None and verdict.measured == "-"
    crashed = bi.judge(target, {target.subject: failed, target.base: ok})  # tmemfs failing is no excuse
    assert (crashed.result, crashed.why) == ("MISSED", f"{bi.NONE} failed: round 1: mount failed: boom")


def test_rounds_that_straddle_the_threshold_are_said() -> None:
    target = bi.Target("t", ("a", "j"), ("b", "j"), 1.0)
    a, b = Point(), Point()
    for round_, (x, y) in enumerate([(90.0, 100.0), (110.0, 100.0), (100.0, 100.0)]):
        a.add(round_, FioResult(x))
        b.add(round_, FioResult(y))
    verdict = bi.judge(target, {("a", "j"): a, ("b", "j"): b})
    assert verdict.result == "MET"
    assert verdict.measured == "1.00x (0.90..1.10) (rounds straddle the target)"


def test_iops_log_windows_within_dd() -> None:
    rows = bi.iops_log("100, 1000, 0, 0, 0\n200, 2000, 0, 0, 0\n300, 4000, 0, 0, 0\nnot a line\n"
                       "400, 8000, 0, 4096, 0\n")
    assert rows == [(100.0, 1000.0), (200.0, 2000.0), (300.0, 4000.0), (400.0, 8000.0)]
    assert bi.window_iops(rows, 0, 250) == (1500.0, 0.2)  # windows ending at 100 and 200 ms
    assert bi.window_iops(rows, 100, 400) == (14000 / 3, 0.3)  # from the window that starts at 100 ms
    assert bi.window_iops(rows, 120, 190) is None  # no whole window inside
    assert bi.window_iops([], 0, 1000) is None


def test_job_span_from_the_report_stamp() -> None:
    stdout = "fio: some warning\n" + json.dumps({"timestamp_ms": 10_000_500, "jobs": [{"job_runtime": 4000}]})
    assert job_span(stdout) == (10_000_500 / 1000 - 4.0, 4.0)
    assert job_span("no json") is None
    assert job_span(json.dumps({"jobs": [{"job_runtime": 0}], "timestamp_ms": 1})) is None


def test_dd_ended_first_is_reported() -> None:
    report = synthetic(rounds=1)
    report.dd_runs = [bi.DdRun(bi.WRITER_TMEMFS, 0, dd_s=1.0, fio_s=4.0, dd_start=0.1, dd_end=1.1,
                               whole_iops=14000, during_iops=8000, window_s=1.0)]
    assert report.dd_runs[0].ended_first
    text = bi.render(report)
    assert "r1 yes, 2.9 s before fio's end" in text
    assert "| writer-tmemfs | 20.0k | 8.0k | 0.40x | 1.0 of 4.0 | 14.0k | 1.0 s (512 MiB/s) |" in text


def test_render_has_targets_tables_paths_and_the_throttled_disk() -> None:
    text = bi.render(synthetic())
    assert text.startswith("## Many requests in flight (issue 13; `python -m tools.bench_inflight`)")
    assert "| none >= 0.75x passthrough_ll (threads), 4k randread libaio QD16 | 0.50x | **MISSED** |" in text
    assert "git abc1234 (clean)" in text and "2026-12-05 10:00 UTC" in text
    assert "* native, 4k randread psync QD1: r1 15.0k, r2 7.5k. **the disk's speed moved 2.00x" in text
    assert "| 4k randread psync QD1 | 11.2k (7.5k..15.0k) | 10.5k (10.0k..11.0k) |" in text
    assert "| 1.0k (1.0k..1.0k) | 4.5k (4.5k..4.5k) | 4.50x |" in text  # the cluster node
    assert "`.venv/bin/tmemfs SRC MNT -o cleancache=none,backing_io=direct,cache_size=64M`" in text
    assert "fio and dd, on none, passthrough_ll:" in text and "fio --name=x --filename=MNT/text-256M.dat" in text
    assert "/w/run" not in text.split("Paths: ")[0]
    assert "Quick mode" not in text and "\n\n\n" not in text and text.endswith("\n")


def test_render_shows_the_floor_against_the_peer_and_none_against_the_floor() -> None:
    text = bi.render(synthetic())
    assert "| job | floor / passthrough_ll | none / floor | none / passthrough_ll |" in text
    assert "| 4k randread libaio QD16 | 0.75x | 0.67x | 0.50x |" in text
    report = synthetic()
    for key in [k for k in report.matrix.points if k[0] == bi.FLOOR]:
        del report.matrix.points[key]
    assert "### Where a miss's time goes" in bi.render(report) and "Not measured." in bi.render(report)


def test_render_quick_missing_cluster_and_failures() -> None:
    report = synthetic(rounds=1, quick=True)
    for key in [k for k in report.matrix.points if k[0] == bi.CLUSTER]:
        del report.matrix.points[key]
    report.notes.append("/usr/bin/redis-server is not installed: no cluster row")
    report.matrix.point(bi.PEER_S, bi.SEQ.name).failures.append("round 1: mount died (fio error 103)")
    text = bi.render(report)
    assert "quick mode, `python -m tools.bench_inflight --quick`" in text and "**Quick mode**" in text
    assert "Not measured (no redis-server: see the notes)." in text
    assert "* /usr/bin/redis-server is not installed: no cluster row" in text
    assert ("| cluster node on Redis: 4k randread libaio QD16 >= 4x its QD1 IOPS | - | "
            "n/a (cluster-redis not measured) |") in text
    assert "| **MISSED** (passthrough_ll-s failed" not in text  # a baseline's failure is not tmemfs's
    assert "* **passthrough_ll-s, 128k-read-psync-qd1-d1**: round 1: mount died (fio error 103)" in text


def test_target_lines_for_stdout() -> None:
    lines = bi.target_lines(synthetic())
    assert lines[0] == "MET     none >= 0.9x passthrough_ll (threads), 4k randread QD1: 0.95x"
    assert any(line.startswith("MISSED  none >= 0.75x") for line in lines)
    empty = bi.Report(synthetic().settings, 256 * MiB, {}, {}, "now")
    assert bi.target_lines(empty)[0] == "n/a     none >= 0.9x passthrough_ll (threads), 4k randread QD1: - " \
        "(none not measured)"


def test_from_json_writes_only_the_marked_section(tmp_path: Path) -> None:
    saved = tmp_path / "report.json"
    saved.write_text(json.dumps(bi.report_to_json(synthetic())))
    out = tmp_path / "BENCHMARKS.md"
    out.write_text(f"head\n{bi.BEGIN}\nold\n{bi.END}\ntail\n")
    assert bi.main(["--from-json", str(saved), "--out", str(out)]) == 0
    text = out.read_text()
    assert text.startswith(f"head\n{bi.BEGIN}\n## Many requests in flight") and text.endswith(f"{bi.END}\ntail\n")
    assert bi.render(bi.report_from_json(json.loads(saved.read_text()))) == bi.render(synthetic())


def test_settings_parts_and_plan() -> None:
    quick = bi.settings_from(bi.parse_args(["--quick"]))
    full = bi.settings_from(bi.parse_args([]))
    assert (quick.reps, quick.runtime, quick.wait_quiet_s) == (1, 1.0, 0.0)
    assert (full.reps, full.runtime) == (3, 4.0)
    parts = [bi.read_part(256 * MiB), bi.writer_part(256 * MiB), bi.cluster_part("redis://127.0.0.1:1/0")]
    assert bi.steps_per_round(parts) == 9 * 3 + 2 * 2 + 2
    # quick: one round of 1 s runs plus about 0.6 s of overhead each, well under 3 minutes
    assert bi.steps_per_round(parts) * (quick.runtime + 1.0) < 120
    assert [c.key for c in bi.read_part(256 * MiB, with_peer=False).configs if c.kind == "peer"] == []
    assert {c.key for c in bi.read_configs(256 * MiB) if c.warm} == {bi.HELD, bi.HITS}
    assert "cc_size=512M" in bi.read_part(256 * MiB).config(bi.HELD).options
    assert "cache_size=320M" in bi.read_part(256 * MiB).config(bi.HITS).options
    assert bi.dd_command(Path("/m/o")) == ["dd", "if=/dev/zero", "of=/m/o", "bs=1M", "count=512", "oflag=direct",
                                           "conv=fsync"]
