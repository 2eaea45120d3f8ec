"""tmemctl: stats in every format, control commands and their refusals, record, usage."""

from __future__ import annotations

import csv
import datetime
import errno
import json
import math
import os
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from fusefs.control import Commands, Refused, parse_commands
from tests.conftest import Mount, MountFactory, mounted

TMEMCTL = [sys.executable, "-m", "fusefs.tmemctl"]
PAGE = 4096


def tmemctl(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*TMEMCTL, *args], capture_output=True, text=True, timeout=60)


def one_line(text: str) -> str:
    assert len(text.splitlines()) == 1 and "Traceback" not in text, text
    return text


def test_tmemctl(mnt: Mount) -> None:
    tmemctl = TMEMCTL
    (mnt.mnt / "f").write_bytes(b"q" * 4096)
    (mnt.mnt / "f").read_bytes()
    out = subprocess.run([*tmemctl, "stats", str(mnt.mnt)], capture_output=True, text=True)
    assert out.returncode == 0 and "hit ratio" in out.stdout and "succ_gets" in out.stdout
    out = subprocess.run([*tmemctl, "stats", str(mnt.mnt), "--json"], capture_output=True, text=True)
    assert json.loads(out.stdout)["pagecache.pages"] == 1
    assert subprocess.run([*tmemctl, "drop-caches", str(mnt.mnt)]).returncode == 0
    assert mnt.stats()["pagecache.pages"] == 0
    bad = subprocess.run([*tmemctl, "stats", "/tmp"], capture_output=True, text=True)
    assert bad.returncode == 2 and "not a tmemfs mount" in bad.stderr
    backends = subprocess.run([*tmemctl, "backends"], capture_output=True, text=True).stdout
    assert "tmem" in backends and "none" in backends


def test_tmemctl_prometheus_register_and_watch(mount_factory: MountFactory) -> None:
    with mount_factory("cleancache=none") as m:
        mnt = str(m.mnt)
        ok = tmemctl("register", mnt, "zcache+tmem", "cc_size=8M")
        assert ok.returncode == 0, ok.stderr
        busy = tmemctl("register", mnt, "tmem")
        assert busy.returncode == 1 and "replace" in one_line(busy.stderr)
        text = tmemctl("stats", mnt, "--prometheus").stdout
        families = {f.name: f for f in text_string_to_metric_families(text)}
        assert families["tmemfs_succ_gets"].type == "counter"
        backends = {s.labels.get("backend") for f in families.values() for s in f.samples}
        assert {"tmem", "zcache"} <= backends
        assert tmemctl("unregister", mnt).returncode == 0
        assert m.stats()["cleancache.backend"] == "none"
        watcher = subprocess.Popen([*TMEMCTL, "stats", mnt, "--watch", "0.2"], stdout=subprocess.PIPE, text=True)
        time.sleep(1.0)
        watcher.send_signal(signal.SIGINT)
        out, _ = watcher.communicate(timeout=10)
        assert watcher.returncode == 0 and "[rates]" in out and "succ_gets/s" in out


# -- refusals and their reasons -------------------------------------------------------------


def test_refused_commands_print_the_daemons_reason(mount_factory: MountFactory) -> None:
    with mount_factory("cleancache=none") as m:
        mnt = str(m.mnt)
        bad = tmemctl("register", mnt, "zcache", "zc_max=lots")
        assert bad.returncode == 1 and one_line(bad.stderr).startswith(f"tmemctl: {mnt}: ")
        assert "zc_max=lots" in bad.stderr and "see the" not in bad.stderr
        assert m.stats()["cleancache.backend"] == "none"
        unknown = tmemctl("register", mnt, "nosuchbackend")
        assert unknown.returncode == 1 and "nosuchbackend" in one_line(unknown.stderr)
        nothing = tmemctl("unregister", mnt)
        assert nothing.returncode == 1 and "no backend is registered" in one_line(nothing.stderr)
        tiny = tmemctl("register", mnt, "tmem", "cc_size=100")  # would refuse every put
        assert tiny.returncode == 1 and "at least one page" in one_line(tiny.stderr)
        log = m.log.read_text()
        assert 'control: refused "register zcache zc_max=lots": ' in log
        assert 'control: refused "unregister": no backend is registered' in log


def outcome(fd: int) -> bytes:
    return os.pread(fd, 4096, 0)


def refused_write(fd: int, data: bytes) -> int:
    with pytest.raises(OSError) as info:
        os.write(fd, data)
    return info.value.errno or 0


def test_control_file_answers_each_handle_with_its_last_outcome(mnt: Mount) -> None:
    control = mnt.mnt / ".tmemfs" / "control"
    assert stat.S_IMODE(control.stat().st_mode) == 0o600
    (mnt.mnt / "f").write_bytes(b"z" * 4 * PAGE)
    (mnt.mnt / "f").read_bytes()
    first, second = os.open(control, os.O_RDWR), os.open(control, os.O_RDWR)
    try:
        assert outcome(first) == b""  # nothing written yet
        assert refused_write(first, b"drop_caches\nbogus\n") == errno.EINVAL
        assert os.write(second, b"reset_stats\n") == len(b"reset_stats\n")
        assert outcome(first) == b'EINVAL: unknown command "bogus" (commands: drop_caches, flush, reset_stats, ' \
                                 b"register, replace, unregister, set, take-back, give-back)\n"
        assert os.read(second, 100) == b"ok\n"  # a plain read after the write: `exec 3<>control`
        assert outcome(second) == b"ok\n"
        assert refused_write(second, "flush \u00e9".encode()) == errno.EINVAL
        assert outcome(second) == b"EINVAL: not ASCII text (byte 0xc3 at offset 6)\n"
        huge = b"drop_caches\n" * 20000  # longer than one FUSE write: refused whole, not run in pieces
        assert refused_write(first, huge) == errno.EINVAL
        assert outcome(first).startswith(b"EINVAL: ") and b"at most 4096" in outcome(first)
        assert mnt.stats()["pagecache.pages"] == 4  # nothing of the refused writes ran
    finally:
        os.close(first)
        os.close(second)
    assert 'control: refused "drop_caches\\nbogus": unknown command "bogus"' in mnt.log.read_text()


def test_echo_into_control_still_works(mnt: Mount) -> None:
    """A writer that opens O_WRONLY (and O_TRUNC), as the shell does, is served as before."""
    (mnt.mnt / "f").write_bytes(b"z" * 4 * PAGE)
    (mnt.mnt / "f").read_bytes()
    assert mnt.stats()["pagecache.pages"] == 4
    done = subprocess.run(["sh", "-c", f"echo drop_caches > {mnt.mnt}/.tmemfs/control"], capture_output=True)
    assert done.returncode == 0 and done.stderr == b""
    assert mnt.stats()["pagecache.pages"] == 0
    shell = subprocess.run(["bash", "-c", f"echo nope > {mnt.mnt}/.tmemfs/control"], capture_output=True, text=True)
    assert shell.returncode != 0 and "Invalid argument" in shell.stderr


# -- set -----------------------------------------------------------------------------------


def test_bad_set_is_einval_with_the_reason(mount_factory: MountFactory) -> None:
    with mount_factory("cleancache=tmem,cache_size=256K") as m:
        mnt = str(m.mnt)
        for args, reason in ((["cache_size=lots"], "cache_size=lots: not a size"),
                             (["cache_size=1M", "flavour=2"], '"flavour=2" is not KEY=VALUE'),
                             (["cc_size=1M", "cc_size=2M"], "cc_size is given twice"),
                             (["cache_size"], '"cache_size" is not KEY=VALUE'),
                             (["cc_weight=0"], "cc_weight=0: must be a whole number from 1 to 1000"),
                             (["cc_cap=1"], "cc_cap=1: must be at least one page"),
                             (["cc_weight=2"], "not a host pool client (cc_host=): it has no cc_weight"),
                             (["cc_cap=none"], "not a host pool client (cc_host=): it has no cc_cap")):
            bad = tmemctl("set", mnt, *args)
            assert bad.returncode == 1 and reason in one_line(bad.stderr), (args, bad.stderr)
        assert m.stats()["pagecache.capacity_pages"] == 64
        assert tmemctl("set", mnt).returncode == 2  # no KEY=SIZE: usage


def test_set_cache_size_changes_the_live_page_cache(mount_factory: MountFactory) -> None:
    with mount_factory("cleancache=tmem,cache_size=256K") as m:
        mnt = str(m.mnt)
        data = os.urandom(48 * PAGE)
        (m.mnt / "f").write_bytes(data)
        assert (m.mnt / "f").read_bytes() == data
        assert m.stats()["pagecache.capacity_pages"] == 64
        done = tmemctl("set", mnt, "cache_size=512K")
        assert done.returncode == 0, done.stderr
        assert m.stats()["pagecache.capacity_pages"] == 128
        done = tmemctl("set", mnt, "cache_size=128K", "cc_size=2M")
        assert done.returncode == 0, done.stderr
        assert m.stats()["pagecache.capacity_pages"] == 32
        small = tmemctl("set", mnt, "cache_size=64K", "cc_size=1K")  # the second is refused: both stay
        assert small.returncode == 1 and "cc_size must be at least one page" in one_line(small.stderr)
        assert m.stats()["pagecache.capacity_pages"] == 32
        assert (m.mnt / "f").read_bytes() == data


class FakeCleancache:
    def __init__(self, refuse: bool) -> None:
        self.refuse = refuse

    async def set_cc_size(self, nbytes: int) -> None:
        if self.refuse:
            raise ValueError("below one page")


class FakeData:
    """What `set` touches of a DataPath: the page cache's size and the cleancache's."""

    def __init__(self, refuse_cc: bool) -> None:
        self.pc = type("PC", (), {"capacity": 64})()
        self.cc = FakeCleancache(refuse_cc)
        self.cache_sizes: list[int] = []

    async def set_cache_size(self, nbytes: int) -> None:
        self.cache_sizes.append(nbytes)


@pytest.mark.trio
async def test_set_puts_back_what_it_changed_when_a_later_key_is_refused() -> None:
    data = FakeData(refuse_cc=True)
    commands = Commands(data, 1 << 20, lambda: None)  # type: ignore[arg-type]
    with pytest.raises(Refused) as info:
        await commands.run(parse_commands(b"set cache_size=1M cc_size=1\n")[0])
    assert info.value.errno == errno.EINVAL and info.value.reason == "cc_size: below one page"
    assert data.cache_sizes == [1 << 20, 64 * PAGE]  # changed, then put back
    assert commands.cc_size == 1 << 20
    ok = Commands(FakeData(refuse_cc=False), 1 << 20, lambda: None)  # type: ignore[arg-type]
    await ok.run(["set", "cc_size=2M"])
    assert ok.cc_size == 2 << 20  # what a later register without cc_size= gets


# -- record --------------------------------------------------------------------------------


def busy(m) -> None:  # type: ignore[no-untyped-def]
    (m.mnt / "f").write_bytes(os.urandom(8 * PAGE))
    (m.mnt / "f").read_bytes()


def test_record_csv_and_jsonl(mount_factory: MountFactory) -> None:
    with mount_factory("cleancache=tmem") as m:
        busy(m)
        out = tmemctl("record", str(m.mnt), "--count", "3", "--interval", "0.2", "--format", "csv")
        assert out.returncode == 0 and out.stderr == ""
        rows = list(csv.DictReader(out.stdout.splitlines()))
        assert len(rows) == 3 and len(out.stdout.splitlines()) == 4
        assert "succ_gets_per_s" in rows[0] and "pagecache.hits_per_s" in rows[0]
        assert "pagecache.pages" in rows[0] and "pagecache.pages_per_s" not in rows[0]  # a gauge: no rate
        assert "fs.src" not in rows[0]  # text is no counter
        for row in rows:
            assert datetime.datetime.fromisoformat(row["time"]).tzinfo == datetime.UTC
            assert all(math.isfinite(float(row[k])) for k in row if k.endswith("_per_s"))
            assert int(row["pagecache.pages"]) == 8
        assert [float(r["elapsed_s"]) for r in rows] == sorted(float(r["elapsed_s"]) for r in rows)
        out = tmemctl("record", str(m.mnt), "--count", "2", "--interval", "0.2", "--format", "jsonl")
        lines = [json.loads(line) for line in out.stdout.splitlines()]
        assert out.returncode == 0 and len(lines) == 2
        assert all(isinstance(line["puts_per_s"], (int, float)) and line["pagecache.pages"] == 8 for line in lines)


def test_record_stops_on_ctrl_c_and_when_the_mount_goes(mount_factory: MountFactory) -> None:
    with mount_factory("cleancache=tmem") as m:
        rec = subprocess.Popen([*TMEMCTL, "record", str(m.mnt), "--interval", "0.1", "--format", "jsonl"],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        assert rec.stdout is not None
        json.loads(rec.stdout.readline())
        rec.send_signal(signal.SIGINT)
        _, err = rec.communicate(timeout=10)
        assert rec.returncode == 0 and err == ""
        rec = subprocess.Popen([*TMEMCTL, "record", str(m.mnt), "--interval", "0.1"],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        assert rec.stdout is not None
        assert rec.stdout.readline().startswith("time,elapsed_s,")
        m.kill()
        _, err = rec.communicate(timeout=10)
        assert rec.returncode == 1 and "the mount went away" in one_line(err)


# -- usage ---------------------------------------------------------------------------------


SUBCOMMANDS = ("stats", "record", "drop-caches", "flush", "reset-stats", "unregister", "register", "replace",
               "set", "backends", "host", "take-back", "give-back")


def test_usage_errors_are_one_line_and_status_2(tmp_path: Path) -> None:
    for args in (["stats", str(tmp_path), "--watch", "-1"], ["stats", str(tmp_path), "--watch", "0"],
                 ["stats", str(tmp_path), "--watch", "nan"], ["record", str(tmp_path), "--interval", "inf"],
                 ["record", str(tmp_path), "--count", "0"], ["record", str(tmp_path), "--format", "xml"],
                 ["register", str(tmp_path)], ["frobnicate"], []):
        bad = tmemctl(*args)
        assert bad.returncode == 2 and one_line(bad.stderr).startswith("tmemctl"), (args, bad.stderr)
    assert "not a tmemfs mount" in one_line(tmemctl("record", str(tmp_path)).stderr)


def test_every_subcommand_has_its_own_help_and_there_is_a_version() -> None:
    for sub in SUBCOMMANDS:
        out = tmemctl(sub, "--help")
        assert out.returncode == 0 and out.stdout.startswith(f"usage: tmemctl {sub} "), (sub, out.stdout)
    main = tmemctl("--help")
    assert main.returncode == 0 and "{" + ",".join(SUBCOMMANDS) + "}" in main.stdout
    version = tmemctl("--version")
    assert version.returncode == 0 and version.stdout.strip() == "tmemctl " + __import__("fusefs").__version__


def test_tmemctl_imports_neither_pyfuse3_nor_trio() -> None:
    """Non-root users run it with whatever python sees the mount: the standard library is enough
    (backends.page, where the page size lives, is standard library only; no backend is loaded)."""
    code = ("import sys, fusefs.tmemctl as t; t.build_parser(); "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in {'pyfuse3', 'trio', 'xxhash', 'lmdb', 'lz4'}"
            " or (m.startswith('backends.') and m != 'backends.page')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_a_user_who_can_see_the_mount_reads_it_but_cannot_command_it(world_dir: Path) -> None:
    (world_dir / "src").mkdir()
    with mounted(world_dir / "src", world_dir / "mnt", "cleancache=tmem,allow_other") as m:
        as_user = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", *TMEMCTL]
        cwd = Path(__file__).parent.parent

        def run(*args: str) -> subprocess.CompletedProcess[str]:
            return subprocess.run([*as_user, *args], capture_output=True, text=True, cwd=cwd, timeout=60)

        stats = run("stats", str(m.mnt))
        assert stats.returncode == 0 and "hit ratio" in stats.stdout, stats.stderr
        rec = run("record", str(m.mnt), "--count", "1", "--interval", "0.1")
        assert rec.returncode == 0 and len(rec.stdout.splitlines()) == 2, rec.stderr
        denied = run("flush", str(m.mnt))
        assert denied.returncode == 1 and "needs root or the mount owner" in one_line(denied.stderr)
