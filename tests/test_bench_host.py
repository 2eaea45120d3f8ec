"""tools.bench_host: Jain's index, the files' shared half, the verdict, the section it writes, and one real quick run
that must leave no mount, host pool directory or process behind."""

from __future__ import annotations

import json
import os
import shutil
from collections import Counter
from dataclasses import asdict, replace
from pathlib import Path

import lz4.block
import pytest

from tools import bench_host as bh
from tools.bench_backends import page_digests
from tools.corpus import text_corpus
from tools.mounting import Workspace, mount_points

MiB = 1 << 20
KiB = 1 << 10


# -- Jain's index ------------------------------------------------------------------------------------------------


def test_jain_index() -> None:
    assert bh.jain([0.5, 0.5, 0.5]) == pytest.approx(1.0)
    assert bh.jain([0.9, 0.0, 0.0]) == pytest.approx(1 / 3)
    assert bh.jain([1.0, 0.5]) == pytest.approx(2.25 / 2.5)
    assert bh.jain([0.0, 0.0, 0.0]) == 1.0  # nobody hits: equal, so fair
    with pytest.raises(ValueError, match="no values"):
        bh.jain([])


# -- the files ---------------------------------------------------------------------------------------------------


def pages_of(path: Path) -> list[bytes]:
    return list(page_digests([path.read_bytes()]))


@pytest.mark.parametrize("sizes", [
    {"hot": 32 * KiB, "zipf": 256 * KiB, "scan": 192 * KiB},  # zipf's half is more than the others' together
    {"hot": 64 * KiB, "zipf": 64 * KiB, "scan": 64 * KiB},
])
def test_half_of_each_file_is_shared_with_the_others(tmp_path: Path, sizes: dict[str, int]) -> None:
    ws = Workspace(tmp_path / "ws", tmp_path)
    ws.prepare()
    corpus = text_corpus(1 * MiB)
    bh.make_files(ws, sizes, corpus)
    files = {name: pages_of(bh.data_file(ws, name, size)) for name, size in sizes.items()}
    for name, pages in files.items():
        assert len(pages) == sizes[name] // bh.PAGE
        elsewhere = {d for other, ps in files.items() if other != name for d in ps}
        shared = [d for d in pages if d in elsewhere]
        assert len(shared) == len(pages) // 2, name
        own = [d for d in pages if d not in elsewhere]
        assert max(Counter(own).values()) == 1, f"{name}'s own pages are distinct"
    everything = {d for ps in files.values() for d in ps}
    assert len(everything) < sum(len(ps) for ps in files.values())
    page = bh.data_file(ws, "hot", sizes["hot"]).read_bytes()[:bh.PAGE]
    assert len(lz4.block.compress(page, store_size=False)) < 0.75 * bh.PAGE  # zcache has something to do


def test_files_are_made_once(tmp_path: Path) -> None:
    ws = Workspace(tmp_path / "ws", tmp_path)
    ws.prepare()
    sizes = {"hot": 16 * KiB, "zipf": 32 * KiB, "scan": 16 * KiB}
    bh.make_files(ws, sizes, text_corpus(MiB))
    path = bh.data_file(ws, "zipf", sizes["zipf"])
    path.write_bytes(b"x" * sizes["zipf"])  # same size: kept
    bh.make_files(ws, sizes, text_corpus(MiB))
    assert path.read_bytes() == b"x" * sizes["zipf"]


# -- canned numbers ----------------------------------------------------------------------------------------------


def cell(backend: str, setup: str, ratios: tuple[float, float, float], error: str | None = None) -> bh.Cell:
    clients = [bh.Client(name, succ_gets=round(1000 * r), failed_gets=1000 - round(1000 * r), src_bytes=MiB,
                         read_bytes=4 * MiB, iops=5000.0, used_bytes=4 * MiB, evictions=10)
               for name, r in zip(bh.CLIENTS, ratios, strict=True)]
    host = {"budget_bytes": 36 * MiB, "used_bytes": 35 * MiB, "evictions": 30, "dedup_pages": 99, "clients": 3}
    return bh.Cell(backend, "lru", setup, clients, host if setup == bh.HOST else {}, error)


def canned(per: tuple[float, float, float], host: tuple[float, float, float]) -> bh.Report:
    s = replace(bh.QUICK, backends=("tmem", "dedup"), policies=("lru",))
    report = bh.Report(s, {"nproc": "2"}, {"python": "3"}, "2026-01-01 00:00 UTC", "python -m tools.bench_host --quick")
    for backend in s.backends:
        report.cells += [cell(backend, bh.PER_MOUNT, per), cell(backend, bh.HOST, host)]
    report.takeback = [bh.TakeBack(64 * MiB, [2_000_000, 3_000_000], [64 * MiB, 64 * MiB], [256 * MiB] * 2)]
    report.commands = ["tmemfs /ws/src/hot /ws/mnt/hot -o cleancache=tmem"]
    report.paths = {"SRC": "/ws/src", "MNT": "/ws/mnt"}
    return report


def test_verdict_follows_the_numbers() -> None:
    text = " ".join(bh.verdict_lines(canned(per=(0.6, 0.5, 0.4), host=(0.99, 0.9, 0.0))))
    assert "higher in 2 of 2 backend/policy pairs, the per-mount backends in 0" in text
    assert "favour Magenheimer's side (one host pool) of the 2011 debate by total hit ratio, and Whitehouse's " \
           "side (per-mount backends) by fairness" in text
    assert "hot 0.60 -> 0.99, zipf 0.50 -> 0.90, scan 0.40 -> 0.00" in text
    assert "With dedup: lru: host 0.63 vs per-mount 0.50, read from SRC 25% vs 25%" in text
    assert "99 puts served by a copy the host already held" in text
    assert "Total IOPS, host / per-mount: 1.00x to 1.00x" in text

    text = " ".join(bh.verdict_lines(canned(per=(0.99, 0.9, 0.0), host=(0.6, 0.5, 0.4))))
    assert "favour Whitehouse's side (per-mount backends) of the 2011 debate by total hit ratio, and " \
           "Magenheimer's side (one host pool) by fairness" in text

    text = " ".join(bh.verdict_lines(canned(per=(0.5, 0.5, 0.5), host=(0.505, 0.5, 0.5))))
    assert "favour neither side of the 2011 debate, by total hit ratio and by fairness alike." in text
    assert "(2 within 0.01" in text


def test_failed_configurations_are_left_out_of_the_verdict() -> None:
    report = canned(per=(0.99, 0.3, 0.0), host=(0.9, 0.6, 0.2))
    report.cells[1].error = "tmemfs exited 2"  # tmem's host side
    assert [h.backend for _, h in bh.pairs(report)] == ["dedup"]
    report.cells[3].error = "tmemfs exited 2"
    assert bh.verdict_lines(report) == ["No backend and policy was measured on both sides: no verdict."]
    assert "**host tmem/lru**: tmemfs exited 2" in bh.render(report)


def test_takeback_table() -> None:
    report = canned(per=(0.5, 0.5, 0.5), host=(0.5, 0.5, 0.5))
    text = "\n".join(bh.takeback_lines(report))
    assert "| 64M | 2.00 | 3.00 | 67108864 | 256.0..256.0 |" in text
    report.takeback_error = "No module named 'backends.hoststore'"
    assert bh.takeback_lines(report) == ["Not measured: No module named 'backends.hoststore'"]


# -- the section -------------------------------------------------------------------------------------------------


def test_section_replaces_only_its_markers_and_round_trips(tmp_path: Path) -> None:
    report = canned(per=(0.99, 0.3, 0.0), host=(0.9, 0.6, 0.2))
    saved = tmp_path / "report.json"
    saved.write_text(json.dumps(asdict(report)))
    head = "# Benchmarks\n\n<!-- backends:begin -->\nbackends text\n<!-- backends:end -->\n\n"
    tail = "\n<!-- frontswap:begin -->\nfrontswap text\n<!-- frontswap:end -->\n"
    out = tmp_path / "BENCHMARKS.md"
    out.write_text(f"{head}{bh.BEGIN}\nold host section\n{bh.END}{tail}")
    assert bh.main(["--from-json", str(saved), "--out", str(out)]) == 0
    written = out.read_text()
    assert written.startswith(f"{head}{bh.BEGIN}\n{bh.TITLE}\n") and written.endswith(f"{bh.END}{tail}")
    assert "old host section" not in written and "tmemfs SRC/hot MNT/hot" in written
    assert "`python -m tools.bench_host --quick`" in written
    assert (tmp_path / "docs/bench/host.png").stat().st_size > 1000
    assert bh.render(bh.report_from_json(json.loads(saved.read_text())), "x") == bh.render(report, "x")


def test_section_is_appended_when_the_markers_are_absent(tmp_path: Path) -> None:
    saved = tmp_path / "report.json"
    saved.write_text(json.dumps(asdict(canned(per=(0.9, 0.5, 0.1), host=(0.8, 0.6, 0.3)))))
    out = tmp_path / "BENCHMARKS.md"
    out.write_text("# Benchmarks\nsomething\n")
    assert bh.main(["--from-json", str(saved), "--out", str(out)]) == 0
    written = out.read_text()
    assert written.startswith("# Benchmarks\nsomething\n\n" + bh.BEGIN) and written.endswith(bh.END + "\n")


def test_a_bad_saved_report_gets_one_line_and_status_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "BENCHMARKS.md"
    out.write_text("untouched\n")
    garbage = tmp_path / "garbage.json"
    garbage.write_text('{"settings": {}}')
    for path, why in ((tmp_path / "missing.json", "FileNotFoundError"), (garbage, "KeyError")):
        assert bh.main(["--from-json", str(path), "--out", str(out)]) == 2
        err = capsys.readouterr().err
        assert err.startswith(f"bench_host: --from-json {path}: no report there ({why}: ") and err.count("\n") == 1
    assert out.read_text() == "untouched\n"


# -- one real run ------------------------------------------------------------------------------------------------


def our_processes(marker: str) -> list[int]:
    """Processes whose command line names `marker` (the workspace of the run)."""
    found = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                if marker in (proc / "cmdline").read_bytes().decode(errors="replace"):
                    found.append(int(proc.name))
            except OSError:
                continue
    return found


def test_quick_run_measures_both_sides_and_leaves_nothing_behind(tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    if os.geteuid() != 0 or not shutil.which("fio") or not shutil.which("fusermount3"):
        pytest.skip("needs root, fio and fusermount3")
    small = replace(bh.QUICK, sizes={"hot": 2 * MiB, "zipf": 8 * MiB, "scan": 6 * MiB}, memory=6 * MiB,
                    cache_size=512 * KiB, work={"hot": 2 * MiB, "zipf": 2 * MiB, "scan": 6 * MiB},
                    backends=("dedup",), policies=("sieve",),
                    takeback_budget=16 * MiB, takeback_sizes=(4 * MiB, 8 * MiB), reps=3)
    monkeypatch.setattr(bh, "QUICK", small)
    hosts_before = set(bh.HOST_DIR.glob("tmemfs-host-bench-*"))
    ws, out = tmp_path / "ws", tmp_path / "BENCHMARKS.md"
    try:
        assert bh.main(["--quick", "--out", str(out), "--results-dir", str(ws)]) == 0
    finally:
        assert not [m for m in mount_points() if m.startswith(str(tmp_path))]
        assert set(bh.HOST_DIR.glob("tmemfs-host-bench-*")) == hosts_before
        assert our_processes(str(ws)) == []
    report = bh.report_from_json(json.loads((ws / "run/report-quick.json").read_text()))
    assert [(c.setup, c.error) for c in report.cells] == [(bh.PER_MOUNT, None), (bh.HOST, None)]
    per, host = report.cells
    for c in (per, host):
        assert [x.name for x in c.clients] == list(bh.CLIENTS)
        assert all(x.succ_gets + x.failed_gets > 0 and x.iops > 0 and x.read_bytes > 0 for x in c.clients), c
    assert host.host["clients"] == 3 and host.host["budget_bytes"] == small.memory
    assert all(x.used_bytes is not None and x.evictions is not None for x in host.clients)
    assert report.takeback_error is None
    assert [(t.size, len(t.latencies_ns), len(t.returned)) for t in report.takeback] == [(4 * MiB, 3, 3),
                                                                                      (8 * MiB, 3, 3)]
    assert all(0 < r <= t.size for t in report.takeback for r in t.returned)
    assert "favour" in out.read_text()
