"""tools.bench_frontswap: the kernel settings it changes are undone (a fake sysfs), its parsing and judging, the
section it writes, and one real quick run that must leave no swap area, loop device or zram device behind."""

from __future__ import annotations

import gzip
import json
import os
import shutil
import zlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, NamedTuple

import pytest

from tools import bench_frontswap as bf
from tools.mounting import Workspace, is_mounted

MiB = 1 << 20


# -- a fake kernel -----------------------------------------------------------------------------------------------


class FakeCommands:
    """Records every command; fails the first one that starts with `fail_on` (with `error`)."""

    def __init__(self, fail_on: str | None = None, error: BaseException | None = None) -> None:
        self.calls: list[str] = []
        self.fail_on, self.error = fail_on, error or RuntimeError("boom")

    def __call__(self, cmd: list[str]) -> str:
        line = " ".join(cmd)
        self.calls.append(line)
        if self.fail_on and line.startswith(self.fail_on):
            raise self.error
        return "/dev/loop7\n" if cmd[:2] == ["losetup", "--find"] else ""


def fake_root(tmp_path: Path) -> Path:
    """The files a run reads and writes under /sys and /proc, with the values this machine starts from."""
    root = tmp_path / "root"
    files = {
        "sys/module/zswap/parameters/enabled": "N\n",
        "sys/module/zswap/parameters/compressor": "lzo\n",
        "proc/sys/vm/page-cluster": "3\n",
        "sys/class/zram-control/hot_add": "2\n",
        "sys/class/zram-control/hot_remove": "",
        "sys/block/zram2/comp_algorithm": "[lzo-rle] lzo lz4 \n",
        "sys/block/zram2/disksize": "0\n",
        "sys/block/zram2/reset": "",
        "sys/block/zram2/mm_stat": "53690368 31077858 32288768 0 32288768 7 0 3277 0\n",
        "sys/kernel/debug/zswap/stored_pages": "13107\n",
        "sys/kernel/debug/zswap/pool_total_size": "31985664\n",
        "proc/self/mountinfo": f"22 1 254:0 / / rw - ext4 /dev/vda rw\n30 22 0:7 / {root}/sys/kernel/debug rw - "
                               "debugfs debugfs rw\n",
        "proc/swaps": "Filename\tType\tSize\tUsed\tPriority\n",
    }
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    (root / bf.MEMCG).mkdir(parents=True)
    (root / bf.MEMCG / "memory.force_empty").write_text("")
    return root


def fake_env(tmp_path: Path, root: Path) -> bf.Env:
    ws = Workspace(tmp_path / "ws", tmp_path / "bin")
    ws.prepare()
    return bf.Env(ws, 4 * MiB, 1, tmp_path / "pattern.bin", None, root)


def settings(root: Path) -> dict[str, str]:
    return {rel: (root / rel).read_text().strip() for rel in ("sys/module/zswap/parameters/enabled",
                                                      "sys/module/zswap/parameters/compressor",
                                                      "proc/sys/vm/page-cluster")}


class Swapping(NamedTuple):
    root: Path
    env: bf.Env
    cmds: FakeCommands
    run: bf.Run
    counters: Callable[[], dict[str, Any]]


@contextmanager
def swapping(tmp_path: Path, key: str) -> Iterator[Swapping]:
    """A configuration set up and swapped on in a fake kernel, undone when the block ends."""
    root = fake_root(tmp_path)
    env, cmds = fake_env(tmp_path, root), FakeCommands()
    with bf.kernel(root, cmds) as k:
        run = bf.Run(key)
        dev, counters = bf.setup(key, k, env, run)
        k.swapon(dev, discard=True)
        yield Swapping(root, env, cmds, run, counters)


def test_zswap_configuration_is_undone_last_first(tmp_path: Path) -> None:
    before = settings(fake_root(tmp_path / "as-found"))  # what a fake kernel starts from
    with swapping(tmp_path, bf.ZSWAP) as (root, env, cmds, run, counters):
        assert (root / "sys/module/zswap/parameters/enabled").read_text() == "Y"
        assert (root / "sys/module/zswap/parameters/compressor").read_text() == "lz4"
        assert counters() == {"pool_total_size": 31985664, "stored_pages": 13107}
        assert env.swapfile.stat().st_size == env.swap_size
    assert settings(root) == before
    assert not env.swapfile.exists()
    assert cmds.calls == [
        f"losetup --find --show --direct-io=on {env.swapfile}", "mkswap -f /dev/loop7", "swapon --discard /dev/loop7",
        "swapoff /dev/loop7", "losetup -d /dev/loop7"]  # debugfs was mounted already: not mounted, not unmounted
    assert run.algorithm == "lz4"


def test_the_loop_floor_swaps_to_a_tmpfs_of_its_own_unmounted_after(tmp_path: Path) -> None:
    with swapping(tmp_path, bf.LOOP_RAM) as (_, env, cmds, _, counters):
        assert (env.ram / bf.SWAP_NAME).stat().st_size == env.swap_size and not env.swapfile.exists()
        assert counters() == {}
    ram, swapfile = env.ram, env.ram / bf.SWAP_NAME
    assert cmds.calls == [
        f"mount -t tmpfs -o size={env.swap_size + MiB} tmpfs {ram}", f"losetup --find --show --direct-io=on {swapfile}",
        "mkswap -f /dev/loop7", "swapon --discard /dev/loop7", "swapoff /dev/loop7", "losetup -d /dev/loop7",
        f"umount {ram}"]


def test_a_failure_in_the_middle_restores_everything(tmp_path: Path) -> None:
    root = fake_root(tmp_path)
    (root / "proc/self/mountinfo").write_text("")  # debugfs not mounted: the run mounts it, and must unmount it
    before = settings(root)
    env, cmds = fake_env(tmp_path, root), FakeCommands(fail_on="swapon")
    run = bf.measure(bf.ZSWAP, env, cmds)
    assert run.error == "boom" and run.undo_errors == []
    assert settings(root) == before
    assert cmds.calls == [f"mount -t debugfs debugfs {root / bf.DEBUGFS}",
                          f"losetup --find --show --direct-io=on {env.swapfile}", "mkswap -f /dev/loop7",
                          "swapon --discard /dev/loop7", "losetup -d /dev/loop7", f"umount {root / bf.DEBUGFS}"]
    assert not env.swapfile.exists()
    assert "echo N > /sys/module/zswap/parameters/enabled" in run.commands


def test_a_zram_device_is_reset_and_removed_after_a_failure(tmp_path: Path) -> None:
    root = fake_root(tmp_path)
    env, cmds = fake_env(tmp_path, root), FakeCommands(fail_on="mkswap")
    run = bf.measure(bf.ZRAM, env, cmds)
    assert run.error == "boom" and run.algorithm == "lz4"
    assert (root / "sys/block/zram2/comp_algorithm").read_text() == "lz4"
    assert (root / "sys/block/zram2/disksize").read_text() == str(env.swap_size)
    assert (root / "sys/block/zram2/reset").read_text() == "1"
    assert (root / "sys/class/zram-control/hot_remove").read_text() == "2"
    assert cmds.calls == ["mkswap -f /dev/zram2"]  # never swapped on: nothing to swap off


def test_ctrl_c_restores_everything_and_is_passed_on(tmp_path: Path) -> None:
    root = fake_root(tmp_path)
    before = settings(root)
    env, cmds = fake_env(tmp_path, root), FakeCommands(fail_on="swapon", error=KeyboardInterrupt())
    with pytest.raises(KeyboardInterrupt), bf.kernel(root, cmds) as outer:
        outer.set(bf.PAGE_CLUSTER, "0")
        assert (root / bf.PAGE_CLUSTER).read_text() == "0"
        bf.measure(bf.ZSWAP, env, cmds)
    assert settings(root) == before
    assert cmds.calls[-1] == "losetup -d /dev/loop7"
    assert not list((root / bf.MEMCG).glob("tmemfs-*"))


def test_every_undo_step_runs_even_when_one_fails(tmp_path: Path) -> None:
    root = fake_root(tmp_path)
    cmds = FakeCommands(fail_on="swapoff", error=RuntimeError("swapoff /dev/loop7 exited 1: Device busy"))
    k = bf.Kernel(root, cmds)
    k.set(bf.PAGE_CLUSTER, "0")
    k.swapon(k.loop(tmp_path / "f", direct_io=True), discard=False)
    assert k.close() == ["swapoff /dev/loop7: swapoff /dev/loop7 exited 1: Device busy"]
    assert cmds.calls[-2:] == ["swapoff /dev/loop7", "losetup -d /dev/loop7"]
    assert (root / bf.PAGE_CLUSTER).read_text() == "3" and k.undo == []


def test_a_setting_that_already_has_the_value_is_left_alone(tmp_path: Path) -> None:
    root = fake_root(tmp_path)
    k = bf.Kernel(root, FakeCommands())
    k.set(bf.ZSWAP_PARAMS / "compressor", "lzo")
    assert k.undo == [] and k.changed == [] and k.commands == []


def test_memory_cgroup_is_removed_on_close(tmp_path: Path) -> None:
    root = fake_root(tmp_path)
    k = bf.Kernel(root, FakeCommands())
    path = k.memcg("tmemfs-bench-x")
    assert path.is_dir()
    k.close()
    assert not path.exists()
    assert k.commands == [f"mkdir /{bf.MEMCG}/tmemfs-bench-x", f"rmdir /{bf.MEMCG}/tmemfs-bench-x"]


def test_punch_hole_probe(tmp_path: Path) -> None:
    path = tmp_path / "swapfile"
    path.write_bytes(b"x" * 3 * 4096)
    assert bf.punch_hole(path)
    assert path.read_bytes() == bytes(4096) + b"x" * 2 * 4096


# -- parsing ----------------------------------------------------------------------------------------------------


def test_sysfs_values_and_proc_swaps(tmp_path: Path) -> None:
    root = fake_root(tmp_path)
    assert bf.read_setting(root / "sys/block/zram2/comp_algorithm") == "lzo-rle"
    assert bf.algorithms(root / "sys/block/zram2/comp_algorithm") == ["lzo-rle", "lzo", "lz4"]
    assert bf.read_setting(root / "sys/module/zswap/parameters/enabled") == "N"
    assert bf.active_swaps(root) == []
    (root / "proc/swaps").write_text("Filename\tType\tSize\tUsed\tPriority\n/dev/vdb  partition\t1\t0\t-2\n")
    assert bf.active_swaps(root) == ["/dev/vdb"]
    assert bf.zram_counters("/dev/zram2", root)["same_pages"] == 7


def test_counters_of_each_kind() -> None:
    zram = bf.Run(bf.ZRAM)
    bf.apply_counters(zram, {"orig_data_size": 8 * 4096, "mem_used_total": 4 * 4096})
    assert (zram.stored_pages, zram.ratio) == (8, 2.0)
    zswap = bf.Run(bf.ZSWAP)
    bf.apply_counters(zswap, {"stored_pages": 10, "pool_total_size": 8 * 4096})
    assert (zswap.stored_pages, zswap.ratio) == (10, 1.25)
    fs = bf.Run(bf.FS_ZCACHE)
    bf.apply_counters(fs, {"frontswap.stored_pages": 6, "backend.zcache.orig_data_size": 6 * 4096,
                           "backend.zcache.pool_total_size": 4096, "backing.write_bytes": 0})
    assert (fs.stored_pages, fs.ratio) == (6, 6.0)
    assert bf.Run(bf.DISK).ratio is None


def test_kernel_options_from_the_running_kernels_config(tmp_path: Path) -> None:
    assert bf.kernel_options(bf.USER_BLOCK_DEVICES, tmp_path) == {}  # a kernel without /proc/config.gz says nothing
    (tmp_path / "proc").mkdir()
    (tmp_path / bf.KERNEL_CONFIG).write_bytes(gzip.compress(
        b"CONFIG_IO_URING=y\n# CONFIG_BLK_DEV_NBD is not set\nCONFIG_BLK_DEV_UBLK=m\nCONFIG_BLK_DEV_UBLK_X=y\n"))
    assert bf.kernel_options(bf.USER_BLOCK_DEVICES, tmp_path) == {"CONFIG_BLK_DEV_UBLK": "m",
                                                                   "CONFIG_BLK_DEV_NBD": "not set"}


def test_the_pattern_has_the_stated_mix(tmp_path: Path) -> None:
    kinds = bf.page_kinds(1000)
    assert (kinds.count("text"), kinds.count("zero"), kinds.count("random")) == (600, 200, 200)
    assert kinds == bf.page_kinds(1000) != bf.page_kinds(1000, seed=1)
    corpus = b"the quick brown fox jumps over the lazy dog. " * 500
    path = tmp_path / "p.bin"
    bf.make_pattern(path, 40 * 4096, corpus)
    data = path.read_bytes()
    pages = [data[i * 4096:(i + 1) * 4096] for i in range(40)]
    for kind, page in zip(bf.page_kinds(40), pages, strict=True):
        size = len(zlib.compress(page))
        assert {"zero": page == bytes(4096), "text": size < 1024, "random": size > 4000}[kind]


def test_command_line_checks(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(bf, "active_swaps", lambda root=None: [])
    assert bf.main(["--only", "disk,floppy"]) == 2
    assert capsys.readouterr().err.strip() == "bench_frontswap: --only takes some of " \
        "disk,fs-zcache,fs-tmem,zram,zswap,loop-ram, not disk,floppy"
    assert bf.main(["--size", "1000"]) == 2
    assert "multiple of 4 KiB" in capsys.readouterr().err
    assert bf.main(["--rounds", "0"]) == 2
    assert capsys.readouterr().err == "bench_frontswap: --rounds must be at least 1\n"
    monkeypatch.setattr(bf, "active_swaps", lambda root=None: ["/dev/vdb"])
    assert bf.main([]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "swap is already active (/dev/vdb)" in err and "--force" in err


# -- judging and the section ------------------------------------------------------------------------------------


def synthetic() -> bf.Report:
    s = bf.Settings(False, 256 * MiB, 5, bf.KEYS, False)
    report = bf.Report(s, {"nproc": "2"}, {"tmemfs source": "git abc1234 (clean)"}, "2026-12-06 10:00 UTC")
    numbers = {  # p50 us, disk bytes, orig, pool
        bf.DISK: (60.0, 500 * MiB, None, None),
        bf.FS_ZCACHE: (25.0, 10 * MiB, 200 * MiB, 125 * MiB),  # 98% fewer bytes, ratio 1.6, 2.4x faster
        bf.FS_TMEM: (40.0, 0, 200 * MiB, 210 * MiB),  # 1.5x faster: missed
        bf.ZRAM: (6.0, 0, 200 * MiB, 120 * MiB),  # ratio 1.67: zcache within 4%
        bf.ZSWAP: (7.0, 0, 200 * MiB, 118 * MiB),
        bf.LOOP_RAM: (20.0, 0, None, None),  # the loop device alone
    }
    for key, (p50, disk, orig, pool) in numbers.items():
        report.runs[key] = bf.Run(key, elapsed_s=10.0, p50_us=p50, p99_us=2 * p50, disk_bytes=disk, orig_bytes=orig,
                                  pool_bytes=pool, stored_pages=(orig or 0) // 4096,
                                  algorithm="lz4" if key in (bf.FS_ZCACHE, bf.ZRAM) else "",
                                  commands=["losetup --find --show --direct-io=on /w/run/src/swapfile"],
                                  pageout_s=[0.1], touch_s=[1.0], swapped_kib=[262144], major_faults=[65536],
                                  passes=[2], still_cached=[0], round_p50_us=[p50])
    report.paths = {"SRC": "/w/run/src", "MNT": "/w/run/mnt"}
    report.kernel_config = {"CONFIG_BLK_DEV_UBLK": "not set", "CONFIG_BLK_DEV_NBD": "not set"}
    return report


def test_targets() -> None:
    got = {v.label: v for v in bf.verdicts(synthetic())}
    assert [v.result for v in got.values()] == ["MET", "MET", "MET", "MISSED"]
    assert got["(b) writes >= 90% fewer bytes to disk than (a)"].measured == "98.0% fewer (10.0 vs 500.0 MiB)"
    assert got["(b)'s compression ratio within 10% of zram's, same algorithm"].measured == "1.60 vs 1.67 (0.96x)"
    assert got["(c) loads >= 2x faster than (a)'s swap-ins (p50 per page)"].measured == "1.50x (40 vs 60 us)"


def test_targets_without_numbers() -> None:
    report = synthetic()
    report.runs[bf.ZRAM].algorithm = "lzo-rle"
    del report.runs[bf.DISK]
    report.runs[bf.FS_TMEM].error = "mount failed"
    by_label = {v.label: v for v in bf.verdicts(report)}
    ratio = by_label["(b)'s compression ratio within 10% of zram's, same algorithm"]
    assert (ratio.result, ratio.why) == ("n/a", "zram used lzo-rle, zcache lz4")
    disk = by_label["(b) writes >= 90% fewer bytes to disk than (a)"]
    assert (disk.result, disk.why) == ("n/a", "disk not measured")
    del report.runs[bf.FS_ZCACHE]
    disk = bf.disk_target(report)
    assert (disk.result, disk.why) == ("MISSED", "fs-zcache not measured")  # the subject missing is a miss
    tmem = bf.load_target(report, bf.FS_TMEM)
    assert (tmem.result, tmem.why) == ("MISSED", "fs-tmem failed: mount failed")


def test_the_floor_says_when_the_loop_device_alone_is_slower_than_the_target() -> None:
    runs = {key: bf.Run(key, p50_us=p50) for key, p50 in ((bf.DISK, 56.0), (bf.FS_TMEM, 58.0), (bf.LOOP_RAM, 38.0))}
    assert bf.floor_lines(runs, 28.0, {"CONFIG_BLK_DEV_UBLK": "m", "CONFIG_BLK_DEV_NBD": "not set"}) == [
        "* The floor: (f), the same loop device with its file in memory, answers a swap-in in 38.0 us p50. A load 2x "
        "faster than (a) is 28.0 us, below what the loop device alone costs here; tmemfs adds fs-tmem 20.0 us to it "
        "(the /dev/fuse round trip and the daemon).",
        "* This kernel has CONFIG_BLK_DEV_UBLK: a user-space block device could serve swap without a loop device."]
    del runs[bf.LOOP_RAM]
    assert bf.floor_lines(runs, 28.0, {}) == []  # neither measured nor known: nothing said


def test_render_and_from_json(tmp_path: Path) -> None:
    report = synthetic()
    text = bf.render(report, "docs/bench/frontswap.png")
    assert text.startswith(bf.TITLE + "\n")
    assert "| (b) tmemfs frontswap, cleancache=zcache | 10.0 | 25.0 / 50.0 | 51200 | 1.60 | 10.0 | - | " \
           "1.00x / 1.00x | 0.42x / 4.17x | 0.02x / - |" in text  # zram wrote nothing: no ratio against it
    assert "| (b) writes >= 90% fewer bytes to disk than (a) | 98.0% fewer (10.0 vs 500.0 MiB) | MET |" in text
    assert "| (c) loads >= 2x faster than (a)'s swap-ins (p50 per page) | 1.50x (40 vs 60 us) | **MISSED** |" in text
    assert "  losetup --find --show --direct-io=on SRC/swapfile" in text and "/w/run" not in text
    assert "* Loads: a frontswap load is a round trip" in text and "(a): 60.0 us p50" in text
    assert "* tmem keeps pages uncompressed" in text and "held 51200 pages" not in text  # as many as zram
    assert "* The floor: (f), the same loop device with its file in memory, answers a swap-in in 20.0 us p50. A load " \
           "2x faster than (a) is 30.0 us, above what the loop device alone costs here; tmemfs adds fs-zcache 5.0 " \
           "us, fs-tmem 20.0 us to it (the /dev/fuse round trip and the daemon)." in text
    assert "* This kernel has no user-space block device that could serve swap without a loop device " \
           "(CONFIG_BLK_DEV_UBLK and CONFIG_BLK_DEV_NBD not set)." in text
    assert "![swap-in latency" in text and "Quick mode" not in text and "\n\n\n" not in text
    saved = tmp_path / "report.json"
    saved.write_text(json.dumps(bf.report_to_json(report)))
    out = tmp_path / "BENCHMARKS.md"
    out.write_text(f"head\n{bf.BEGIN}\nold\n{bf.END}\ntail\n")
    assert bf.main(["--from-json", str(saved), "--out", str(out)]) == 0
    written = out.read_text()
    assert written.startswith(f"head\n{bf.BEGIN}\n{bf.TITLE}\n") and written.endswith(f"{bf.END}\ntail\n")
    assert (tmp_path / "docs/bench/frontswap.png").stat().st_size > 1000
    assert bf.render(bf.report_from_json(json.loads(saved.read_text())), "x") == bf.render(report, "x")


# -- one real run --------------------------------------------------------------------------------------------------


def kernel_state() -> dict[str, object]:
    return {"swaps": bf.active_swaps(), "loops": sorted(p.name for p in Path("/sys/block").glob("loop*")
                                                       if (p / "loop" / "backing_file").exists()),
            "zram": sorted(p.name for p in Path("/sys/block").glob("zram*")),
            "page-cluster": Path("/proc/sys/vm/page-cluster").read_text(),
            "zswap": Path("/sys/module/zswap/parameters/enabled").read_text() if Path(
                "/sys/module/zswap/parameters/enabled").exists() else None}


def test_quick_run_measures_and_leaves_nothing_behind(tmp_path: Path) -> None:
    if os.geteuid() != 0 or not shutil.which("losetup") or not shutil.which("swapon"):
        pytest.skip("needs root, losetup and swapon")
    if not Path("/sys/class/zram-control/hot_add").exists():
        pytest.skip("no zram-control in this kernel")
    if bf.active_swaps():
        pytest.skip(f"swap already active on this machine ({bf.active_swaps()}): the benchmark would refuse")
    keys = ["disk", "zram", "fs-zcache", "loop-ram"]
    before = kernel_state()
    out = tmp_path / "BENCHMARKS.md"
    try:
        assert bf.main(["--quick", "--size", "8M", "--rounds", "1", "--only", ",".join(keys), "--out", str(out),
                        "--results-dir", str(tmp_path / "ws")]) == 0
    finally:
        assert kernel_state() == before
        assert not is_mounted(tmp_path / "ws/run/mnt") and not is_mounted(tmp_path / "ws/run/ram")
    report = bf.report_from_json(json.loads((tmp_path / "ws/run/report-quick.json").read_text()))
    assert set(report.runs) == set(keys)
    for run in report.runs.values():
        assert run.error is None and run.undo_errors == [] and run.intact, run
        assert run.major_faults[0] >= 2048 and run.p50_us > 0  # every page of 8 MiB came back from swap
    # zero pages never reach a swap device; the cgroup's reclaim pushes out a few pages of the interpreter too
    assert round(2048 * 0.8) <= (report.runs["zram"].stored_pages or 0) < round(2048 * 0.8) + 200
    assert bf.TITLE in out.read_text()
