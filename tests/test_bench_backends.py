"""tools.bench_backends without mounts: page counting, report text and marker replacement."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from tools import bench_backends as bb
from tools.report import write_section

PAGE = bb.PAGE


def canned() -> bb.Results:
    """Hand-made numbers shaped like a quick run."""
    s = bb.settings_for(quick=True)
    res = bb.Results(s, machine={"machine": "test box"}, runtime_s=90.0)
    for ds in bb.DATASETS:
        res.data_size[ds] = s.data_size
        res.pages[ds] = (s.data_size // PAGE, s.data_size // PAGE // (2 if ds == "dup50" else 1))
        for backend in bb.BACKENDS:
            none = backend == "none"
            res.reads[(backend, ds)] = [bb.ReadResult(
                hit_ratio=0.0 if none else 0.99,
                backing_bytes=s.data_size if none else s.data_size // 100,
                pool_bytes=0 if none else s.data_size // 2,
                orig_bytes=0 if none else s.data_size,
                unique_data=s.data_size // 2 if backend == "dedup" else 0,
                unique_pages=0)]
    res.iops = {b: [10000.0 if b == "none" else 16000.0] for b in bb.BACKENDS}
    res.zipf = {p: [(15000.0, 0.8)] for p in bb.POLICIES}
    res.cpu = {(b, k): (5.0, 1.5) for b in ("tmem", "zcache", "dedup") for k in ("text", "random")}
    res.commands = ["fio --name=r --filename=MNT/fio/text.dat", "fio --name=r --filename=MNT/fio/text.dat"]
    res.charts = [("IOPS per backend", "docs/bench/backends-iops.png")]
    return res


def test_unique_pages_counts_duplicates_and_pads_tail() -> None:
    a, b = b"a" * PAGE, b"b" * PAGE
    assert bb.unique_pages([a + b + a, b + a]) == (5, 2)
    assert bb.unique_pages([b"x" * 10, b"x" * 10 + b"\0" * (PAGE - 10)]) == (2, 1)  # tail page zero-padded
    assert bb.unique_pages([]) == (0, 0)


def test_dup_heavy_set_is_half_duplicates() -> None:
    text = bytes(range(256)) * 64
    data = bb.dup_heavy(text, 200 * PAGE, random.Random(3))
    total, unique = bb.unique_pages([data])
    assert total == 200 and unique == 100


def test_zero_heavy_set_is_mostly_zero_pages() -> None:
    data = bb.zero_heavy(b"hello world\n" * 1000, 500 * PAGE, random.Random(1))
    zero = sum(1 for i in range(500) if data[i * PAGE:(i + 1) * PAGE] == bytes(PAGE))
    assert 400 < zero < 500


def test_split_files_keeps_every_byte() -> None:
    data = bytes(random.Random(2).randbytes(10 * PAGE + 5))
    parts = bb.split_files(data, 4)
    assert len(parts) == 4 and b"".join(parts) == data
    assert all(len(p) % PAGE == 0 for p in parts[:-1])


def test_report_has_tables_targets_commands_and_images() -> None:
    text = bb.report(canned())
    assert "quick mode" in text and "test box" in text
    assert "zcache effective capacity >= 2.0x on plain text | 2.00x | ok" in text
    assert "fio 4k randread QD1 zcache/none >= 1.5x | 1.60x | ok" in text
    assert "| dedup pool_total_size within 5% of unique content" in text
    assert text.count("fio --name=r --filename=MNT/fio/text.dat") == 1  # repeated command lines listed once
    assert "![IOPS per backend](docs/bench/backends-iops.png)" in text
    assert "| zcache | 5.0 | 1.5 | 5.0 | 1.5 |" in text


def test_targets_report_missed() -> None:
    res = canned()
    res.iops["zcache"] = [11000.0]
    res.reads[("dedup", "dup50")][0].pool_bytes = res.settings.data_size  # twice the unique content
    got = {t: ok for t, _, ok in bb.targets(res)}
    assert got["fio 4k randread QD1 zcache/none >= 1.5x"] is False
    assert got["dedup pool_total_size within 5% of unique content (50%-dup set)"] is False
    assert "MISSED" in bb.report(res)


def test_write_report_touches_only_the_marked_part(tmp_path: Path) -> None:
    out = tmp_path / "BENCHMARKS.md"
    out.write_text("# Other tool's numbers\n| a | b |\n")
    write_section(out, bb.report(canned()), bb.BEGIN, bb.END)
    first = out.read_text()
    assert first.startswith("# Other tool's numbers\n| a | b |\n")
    write_section(out, "second\n", bb.BEGIN, bb.END)
    assert out.read_text() == f"# Other tool's numbers\n| a | b |\n\n{bb.BEGIN}\nsecond\n{bb.END}\n"


def test_charts_render_small_pngs(tmp_path: Path) -> None:
    made = bb.make_charts(canned(), tmp_path, "docs/bench")
    assert len(made) == 4
    for _, rel in made:
        png = tmp_path / Path(rel).name
        assert png.read_bytes()[:4] == b"\x89PNG" and png.stat().st_size < 150_000


def test_save_results_is_json(tmp_path: Path) -> None:
    bb.save_results(canned(), tmp_path / "r.json")
    data = json.loads((tmp_path / "r.json").read_text())
    assert data["iops"]["zcache"] == [16000.0] and "zcache/dup50" in data["reads"]


def test_load_results_round_trips(tmp_path: Path) -> None:
    res = canned()
    bb.save_results(res, tmp_path / "r.json")
    back = bb.load_results(tmp_path / "r.json")
    back.charts = res.charts
    assert bb.report(back) == bb.report(res)


def test_refused_pages_make_the_backing_target_not_applicable() -> None:
    res = canned()
    size = res.settings.data_size
    run = res.reads[("zcache", "binary")][0]
    run.backing_bytes, run.rejected = size // 4, size // 4 // PAGE  # a quarter refused, a quarter read again
    run2 = res.reads[("zcache", "text")][0]
    run2.rejected = 10  # a few refused, target still met
    got = {t: ok for t, _, ok in bb.targets(res)}
    assert got["backing bytes -90% vs none: zcache on binary"] is None
    assert got["backing bytes -90% vs none: zcache on text"] is True


def test_quick_results_never_overwrite_a_full_run() -> None:
    assert bb.results_path(bb.settings_for(quick=True)).name == "results-quick.json"
    assert bb.results_path(bb.settings_for(quick=False)).name == "results.json"
    assert bb.settings_for(quick=True).runtime < bb.settings_for(quick=False).runtime


def test_from_json_draws_charts_beside_the_report(tmp_path: Path) -> None:
    """--out elsewhere must not touch the committed docs/bench/ charts."""
    bb.save_results(canned(), tmp_path / "r.json")
    out = tmp_path / "elsewhere" / "B.md"
    out.parent.mkdir()
    assert bb.main(["--from-json", str(tmp_path / "r.json"), "--out", str(out)]) == 0
    assert sorted(p.name for p in (out.parent / "docs" / "bench").iterdir()) == [
        "backends-capacity.png", "backends-iops.png", "backends-reads.png", "backends-zipf.png"]
    text = out.read_text()
    assert bb.BEGIN in text and "![fio IOPS per backend](docs/bench/backends-iops.png)" in text


def test_sizes_and_backends_parse() -> None:
    M = bb.MiB
    assert bb.parse_sizes("16M/256M,64M/1G", 8 * M) == ((16 * M, 256 * M), (64 * M, 1024 * M))
    assert bb.parse_sizes("128M,512k", 8 * M) == ((8 * M, 128 * M), (8 * M, 512 * 1024))
    assert bb.parse_backends("none,zcache+tmem") == ("none", "zcache+tmem")


def test_bad_options_get_one_line_and_status_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for argv, message in ((["--sizes", "16M/12Q"], "'12Q' is not a size"),
                          (["--sizes", "1000"], "not a whole number of 4096-byte pages"),
                          (["--backends", "zcache,zswap"], "unknown backend 'zswap'"),
                          (["--src", str(tmp_path / "nope")], "no such file or directory"),
                          (["--src", str(tmp_path)], "no files to read")):
        with pytest.raises(SystemExit) as exc:
            bb.main(argv)
        err = capsys.readouterr().err
        assert exc.value.code == 2 and message in err and err.count("\n") == 1, (argv, err)


def test_user_data_job_and_backends(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """--src, --backends, --sizes and --job on real mounts: the job runs once per backend, on the user's file."""
    monkeypatch.setattr(bb, "ROOT", tmp_path / "results")
    src = tmp_path / "mine"
    src.mkdir()
    text = b"".join(b"line %06d of the user's own data\n" % i for i in range(8000))
    (src / "big.txt").write_bytes(text)
    (src / "small.txt").write_bytes(text[:5000])
    job = tmp_path / "tiny.fio"
    job.write_text("[tiny]\ndirectory=${MNT}\nfilename=${FILE}\nsize=${SIZE}\nrw=randread\nbs=4k\ndirect=1\n")
    out = tmp_path / "report.md"
    argv = ["--quick", "--src", str(src), "--backends", "none,zcache", "--sizes", "64K/1M", "--job", str(job),
            "--out", str(out)]
    assert bb.main(argv) == 0
    text_out = out.read_text()
    assert "fio job `" + str(job) + "`" in text_out and "cache_size=64K,cc_size=1M" in text_out
    rows = [line for line in text_out.splitlines() if line.startswith(("| none |", "| zcache |"))]
    assert any(line.startswith("| zcache | ") and line.endswith("x |") for line in rows)
    saved = json.loads((tmp_path / "results" / "custom" / "results-quick-64K-1M.json").read_text())
    assert saved["backends"] == ["none", "zcache"] and saved["datasets"] == ["mine"] and saved["job"] == str(job)
    assert saved["settings"]["cache_size"] == 64 * 1024 and saved["settings"]["fio_size"] == len(text) // PAGE * PAGE
    assert [c for c in saved["commands"] if "FILE=big.txt" in c and str(job) in c] and len(saved["commands"]) == 2
    assert saved["reads"]["zcache/mine"][0]["hit_ratio"] > 0.9  # the user's text fits zcache's 1 MiB
    assert saved["reads"]["none/mine"][0]["hit_ratio"] == 0
