"""tools/report.py: the numbers as BENCHMARKS.md shows them (medians, ranges, ratios, the busy marker), the
sections each program owns, and the progress line."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from tests.test_bench_fio import crashed_point, point
from tools import fio, report
from tools.machine import CpuSample

BEGIN, END = report.markers("backends")
CLUSTER_BEGIN, CLUSTER_END = report.markers("cluster")


def test_spread_and_ratio() -> None:
    assert report.spread([3.0, 1.0, 2.0]) == (2.0, 1.0, 3.0)
    assert report.spread([]) is None
    r = report.ratio(point(90, 100, 110), point(100, 100, 100))
    assert r is not None
    assert r.median == 1.0
    assert (r.lo, r.hi) == (0.9, 1.1)
    assert r.meets(0.9)
    assert str(r) == "1.00x (0.90..1.10)"


def test_ratio_is_none_when_the_baseline_crashed() -> None:
    crashed = crashed_point()
    assert crashed.failed
    assert report.ratio(point(100), crashed) is None
    points = {("a", "j"): point(100), ("b", "j"): crashed}
    assert report.plain_ratio(points, "a", "b", "j") == "n/a (b failed)"
    assert report.plain_ratio(points, "a", "c", "j") == "-"


def test_spread_formats_median_and_range() -> None:
    assert report.spread_text([3.0, 1.0, 2.0]) == "2 (1..3)"
    assert report.spread_text([1.25], "{:.1f}") == "1.2"
    assert report.spread_text([]) == "-"
    assert report.spread_text([2.0, 2.0]) == "2"


def test_percentile_nearest_rank() -> None:
    values = list(range(1, 101))
    assert (report.percentile(values, 0.5), report.percentile(values, 0.99), report.percentile(values, 1.0)) == (
        50, 99, 100)
    assert report.percentile([], 0.5) == 0.0 and report.percentile([7], 0.99) == 7


def test_cpu_accounting_and_busy_marker() -> None:
    before = CpuSample(wall=0.0, busy=10.0, steal=1.0, ours=2.0)
    after = CpuSample(wall=2.0, busy=13.0, steal=1.2, ours=4.0)  # 3 s busy, 2 s of it ours
    r = fio.with_cpu(fio.FioResult(1000.0, 4096000.0), before, after)
    assert r.foreign_cpu == 0.5
    assert r.steal is not None and abs(r.steal - 0.1) < 1e-9
    p = fio.Point()
    p.add(0, r)
    assert p.busy()
    assert report.cell(p).endswith(" †")
    assert "1 of 1 runs" in report.noise_lines(fio.Matrix(points={("x", "y"): p}))[0]


def test_sizes_and_tables() -> None:
    assert [report.human(n) for n in (16 << 20, 1 << 30, 12 << 10, 4097)] == ["16M", "1G", "12K", "4097"]
    assert report.table(["a", "b"], [["1", "2"]]) == ["| a | b |", "|---|---|", "| 1 | 2 |"]
    assert report.markdown(["x", "", "", "", "y", "", ""]) == "x\n\ny\n"
    assert report.placeholders("/w/run/src and /w", {"WS": "/w", "SRC": "/w/run/src"}) == "SRC and WS"


def test_replace_between_markers_keeps_the_rest() -> None:
    text = f"# Bench\nintro\n{BEGIN}\nold\n{END}\ntail owned by tools/bench.py\n"
    new = report.replace_between(text, "new body\n", BEGIN, END)
    assert new == f"# Bench\nintro\n{BEGIN}\nnew body\n{END}\ntail owned by tools/bench.py\n"
    assert report.replace_between(new, "new body\n", BEGIN, END) == new  # idempotent


def test_replace_between_appends_markers_when_absent() -> None:
    assert report.replace_between("# Bench", "body\n", BEGIN, END) == f"# Bench\n\n{BEGIN}\nbody\n{END}\n"
    assert report.replace_between("", "body\n", BEGIN, END) == f"\n{BEGIN}\nbody\n{END}\n"


def test_section_is_appended_once_then_replaced_in_place() -> None:
    original = "# tmemfs benchmarks\n\nintro\n<!-- backends:begin -->\nB\n<!-- backends:end -->\n"
    first = report.replace_between(original, "## Cluster nodes\n\nv1\n", CLUSTER_BEGIN, CLUSTER_END)
    assert first == original + "\n<!-- cluster:begin -->\n## Cluster nodes\n\nv1\n<!-- cluster:end -->\n"
    second = report.replace_between(first + "trailer\n", "## Cluster nodes\n\nv2\n", CLUSTER_BEGIN, CLUSTER_END)
    assert second == original + "\n<!-- cluster:begin -->\n## Cluster nodes\n\nv2\n<!-- cluster:end -->\ntrailer\n"
    assert (report.replace_between("no newline", "X\n", CLUSTER_BEGIN, CLUSTER_END)
            == "no newline\n\n<!-- cluster:begin -->\nX\n<!-- cluster:end -->\n")


def test_write_head_keeps_the_sections_after_it(tmp_path: Path) -> None:
    out = tmp_path / "BENCHMARKS.md"
    out.write_text(f"# old\nold numbers\n\n{BEGIN}\nbackend numbers\n{END}\n")
    report.write_head(out, "# new\n", "backends")
    assert out.read_text() == f"# new\n\n{BEGIN}\nbackend numbers\n{END}\n"
    fresh = tmp_path / "fresh.md"
    report.write_head(fresh, "# new\n", "backends")
    assert fresh.read_text() == "# new\n"


def test_progress_estimates_what_is_left(capsys: pytest.CaptureFixture[str]) -> None:
    before = report.Progress(4)  # a step is logged as it begins: no estimate until one has run
    before.begin("first")
    time.sleep(0.01)
    before.begin("second")
    after = report.Progress(2, per_step_s=30.0)  # logged once done, estimated from the start
    after.step("skipped", ran=False)
    lines = capsys.readouterr().err.splitlines()
    assert lines[0].endswith("[1/4 25%, 0:00 elapsed] first")
    assert "[2/4 50%, 0:00 elapsed, ~0:00 left] second" in lines[1]
    assert "[1/2 50%, 0:00 elapsed, ~0:30 left] skipped" in lines[2]


def test_git_state_names_the_commit_and_changes_to_the_code_not_the_benches_own_outputs(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """One bench writes BENCHMARKS.md and its charts before the next runs from the same tree:
    that next run still measured the commit as it is."""
    import subprocess

    from tools import machine

    def git(*args: str) -> str:
        return subprocess.run(["git", "-C", str(tmp_path), *args], check=True, capture_output=True,
                              text=True).stdout.strip()

    git("init", "-q")
    (tmp_path / "fusefs").mkdir()
    (tmp_path / "docs" / "bench").mkdir(parents=True)
    for name in ("fusefs/datapath.py", "BENCHMARKS.md", "docs/bench/matrix-iops.png"):
        (tmp_path / name).write_text("before\n")
    git("add", "-A")
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "-m", "c")
    head = git("rev-parse", "--short", "HEAD")
    monkeypatch.setattr(machine, "REPO", tmp_path)
    monkeypatch.chdir("/")
    (tmp_path / "BENCHMARKS.md").write_text("after\n")
    (tmp_path / "docs" / "bench" / "matrix-iops.png").write_text("after\n")
    assert machine.git_state() == f"git {head} (clean)"
    (tmp_path / "fusefs" / "datapath.py").write_text("after\n")
    assert machine.git_state() == f"git {head} + uncommitted changes in 1 files"
