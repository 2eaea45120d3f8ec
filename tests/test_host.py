"""Host pools through real mounts (cc_host=, issue 16): several mounts of different SRCs as
clients of one tmem, their accounting, tmemctl host / take-back / give-back, and bad input."""

from __future__ import annotations

import errno
import fcntl
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import Mount, MountFactory, Stats

TMEMCTL = [sys.executable, "-m", "fusefs.tmemctl"]
TMEMFS = [sys.executable, "-m", "fusefs.cli"]
PAGE = 4096
MiB = 1 << 20


def tmemctl(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*TMEMCTL, *args], capture_output=True, text=True, timeout=60)


def one_line(text: str) -> str:
    assert len(text.strip().splitlines()) == 1 and "Traceback" not in text, text
    return text


def pages_of(tag: bytes, count: int) -> bytes:
    """`count` distinct pages that compress (text), each naming `tag` and its index."""
    return b"".join(((b"%s page %06d " % (tag, n)) * 300)[:PAGE] for n in range(count))


def make_src(root: Path, name: str, files: dict[str, bytes]) -> Path:
    src = root / name
    src.mkdir()
    for file, data in files.items():
        (src / file).write_bytes(data)
    return src


def cycle(m: Mount, names: list[str]) -> dict[str, bytes]:
    """Read each file through the mount, then evict the page cache into the pool."""
    got = {name: (m.mnt / name).read_bytes() for name in names}
    m.control("drop_caches")
    return got


def host_stats(m: Mount, mode: str = "tmem") -> Stats:
    prefix = f"backend.{mode}."
    return {k.removeprefix(prefix): v for k, v in m.stats().items() if k.startswith(prefix)}


@pytest.fixture
def hostdir(tmp_path: Path) -> Path:
    path = tmp_path / "hosts"
    path.mkdir()
    return path


def options(hostdir: Path, mode: str = "tmem", host: str = "lab", extra: str = "") -> str:
    return f"cleancache={mode},cc_host={host},cc_dir={hostdir},cache_size=64K" + (f",{extra}" if extra else "")


def test_two_mounts_of_different_srcs_are_clients_of_one_host(tmp_path: Path, hostdir: Path,
                                                              mount_factory: MountFactory) -> None:
    """Each client gets its own pages back (hits, no read of SRC), the host counts both, each
    client counts its own, and tmemctl host lists both with their mount points."""
    a_data, b_data = pages_of(b"a", 64), pages_of(b"b", 32)
    src_a = make_src(tmp_path, "a", {"f": a_data})
    src_b = make_src(tmp_path, "b", {"f": b_data})
    with mount_factory(options(hostdir, extra="cc_size=8M"), src=src_a) as a, \
            mount_factory(options(hostdir, extra="cc_size=1M,cc_weight=2"), src=src_b) as b:
        assert cycle(a, ["f"]) == {"f": a_data} and cycle(b, ["f"]) == {"f": b_data}
        sa, sb = host_stats(a), host_stats(b)
        assert sa["host_name"] == "lab" and sa["host.budget_bytes"] == 8 * MiB  # the first client's cc_size
        assert sa["client.stored_pages"] == 64 and sb["client.stored_pages"] == 32
        assert sb["host.stored_pages"] == 96 and sb["host.clients"] == 2
        before = a.stats()["backing.read_bytes"]
        assert (a.mnt / "f").read_bytes() == a_data and (b.mnt / "f").read_bytes() == b_data
        assert a.stats()["backing.read_bytes"] == before  # all 64 pages came from the host
        assert host_stats(a)["client.hits"] == 64 and host_stats(b)["client.hits"] == 32
        shown = tmemctl("host", "lab", "--dir", str(hostdir), "--json")
        assert shown.returncode == 0, shown.stderr
        report = json.loads(shown.stdout)
        clients = {c["label"]: c for c in report["clients"]}
        assert set(clients) == {str(a.mnt), str(b.mnt)}
        assert clients[str(b.mnt)]["weight"] == 2 and all(c["alive"] for c in clients.values())
        table = tmemctl("host", "lab", "--dir", str(hostdir))
        assert table.returncode == 0 and str(a.mnt) in table.stdout and "budget 8388608" in table.stdout


def test_a_client_never_sees_another_clients_pages(tmp_path: Path, hostdir: Path,
                                                   mount_factory: MountFactory) -> None:
    """Two SRCs holding files of the same names and sizes but other bytes: each mount reads its
    own, whatever the other put into the host under the same names."""
    src_a = make_src(tmp_path, "a", {f"f{n}": pages_of(b"A%d" % n, 8) for n in range(8)})
    src_b = make_src(tmp_path, "b", {f"f{n}": pages_of(b"B%d" % n, 8) for n in range(8)})
    names = [f"f{n}" for n in range(8)]
    with mount_factory(options(hostdir, extra="cc_size=8M"), src=src_a) as a, \
            mount_factory(options(hostdir), src=src_b) as b:
        for _ in range(3):
            assert cycle(a, names) == {n: (src_a / n).read_bytes() for n in names}
            assert cycle(b, names) == {n: (src_b / n).read_bytes() for n in names}
        assert a.stats()["cleancache.verify_failures"] == b.stats()["cleancache.verify_failures"] == 0
        assert host_stats(a)["client.hits"] > 0 and host_stats(b)["client.hits"] > 0


def test_dedup_clients_store_a_shared_page_once_and_both_count_it(tmp_path: Path, hostdir: Path,
                                                                 mount_factory: MountFactory) -> None:
    shared = pages_of(b"shared", 32)
    src_a = make_src(tmp_path, "a", {"f": shared + pages_of(b"a", 16)})
    src_b = make_src(tmp_path, "b", {"g": shared + pages_of(b"b", 16)})
    with mount_factory(options(hostdir, "dedup", extra="cc_size=8M"), src=src_a) as a, \
            mount_factory(options(hostdir, "dedup"), src=src_b) as b:
        cycle(a, ["f"])
        cycle(b, ["g"])
        sa, sb = host_stats(a, "dedup"), host_stats(b, "dedup")
        assert sa["client.stored_pages"] == sb["client.stored_pages"] == 48
        assert sb["host.stored_pages"] == 32 + 16 + 16 and sb["host.dedup_pages"] == 32
        assert (a.mnt / "f").read_bytes() == (src_a / "f").read_bytes()
        assert (b.mnt / "g").read_bytes() == (src_b / "g").read_bytes()


def test_zcache_clients_pack_two_compressed_pages_a_frame(tmp_path: Path, hostdir: Path,
                                                          mount_factory: MountFactory) -> None:
    data = pages_of(b"z", 64)
    src = make_src(tmp_path, "a", {"f": data})
    with mount_factory(options(hostdir, "zcache", extra="cc_size=8M"), src=src) as m:
        cycle(m, ["f"])
        s = host_stats(m, "zcache")
        assert s["host.stored_pages"] == 64 and s["host.used_bytes"] == 32 * PAGE
        assert (m.mnt / "f").read_bytes() == data


def test_take_back_and_give_back(tmp_path: Path, hostdir: Path, mount_factory: MountFactory) -> None:
    """The donor takes memory back at once through tmemctl (no client asked) or the control file:
    pages go, the budget shrinks, reads stay correct; give-back returns at most what was taken."""
    data = pages_of(b"t", 512)  # 2 MiB
    src = make_src(tmp_path, "a", {"f": data})
    with mount_factory(options(hostdir, extra="cc_size=4M"), src=src) as m:
        cycle(m, ["f"])
        assert host_stats(m)["host.used_bytes"] == 2 * MiB
        out = tmemctl("take-back", "lab", "3M", "--dir", str(hostdir))
        assert out.returncode == 0 and "took back 3145728 bytes" in one_line(out.stdout), out.stderr
        s = host_stats(m)
        assert s["host.budget_bytes"] == 1 * MiB and s["host.used_bytes"] <= 1 * MiB
        assert s["host.take_backs"] == 1 and s["host.taken_back_bytes"] == 3 * MiB
        assert (m.mnt / "f").read_bytes() == data
        m.control("give-back 8M")
        s = host_stats(m)
        assert s["host.budget_bytes"] == 4 * MiB and s["host.give_backs"] == 1
        m.control("take-back 1M")
        assert host_stats(m)["host.budget_bytes"] == 3 * MiB
        assert (m.mnt / "f").read_bytes() == data


def test_take_back_never_drops_frontswap_pages(tmp_path: Path, hostdir: Path,
                                               mount_factory: MountFactory) -> None:
    """A host client's frontswap pages are persistent: a take-back of everything takes only the
    ephemeral pages, says so, and every stored swap page reads back intact, never from SRC."""
    src = make_src(tmp_path, "a", {"swap": bytes(64 * PAGE), "f": pages_of(b"e", 64)})
    swapped = os.urandom(32 * PAGE)
    with mount_factory(options(hostdir, extra="cc_size=4M,frontswap=swap"), src=src) as m:
        fd = os.open(m.mnt / "swap", os.O_RDWR)
        try:
            for n in range(32):
                assert os.pwrite(fd, swapped[n * PAGE:(n + 1) * PAGE], n * PAGE) == PAGE
            cycle(m, ["f"])
            assert m.stats()["frontswap.succ_stores"] == 32
            out = tmemctl("take-back", "lab", "4M", "--dir", str(hostdir))
            assert out.returncode == 0, out.stderr
            taken = int(out.stdout.split("took back ")[1].split()[0])
            assert taken == 4 * MiB - 32 * PAGE and "of 4194304 asked" in out.stdout
            assert host_stats(m)["host.persistent_pages"] == 32
            assert os.pread(fd, 32 * PAGE, 0) == swapped
        finally:
            os.close(fd)
        assert (src / "swap").read_bytes()[: 32 * PAGE] == bytes(32 * PAGE)  # never reached SRC


def test_a_killed_clients_pages_are_reclaimed_within_node_timeout(tmp_path: Path, hostdir: Path,
                                                                  mount_factory: MountFactory) -> None:
    src_a = make_src(tmp_path, "a", {"f": pages_of(b"a", 64)})
    src_b = make_src(tmp_path, "b", {"f": pages_of(b"b", 8)})
    with mount_factory(options(hostdir, extra="cc_size=8M,node_timeout=0.5"), src=src_a) as a, \
            mount_factory(options(hostdir, extra="node_timeout=0.5"), src=src_b) as b:
        cycle(a, ["f"])
        cycle(b, ["f"])
        assert host_stats(b)["host.stored_pages"] == 72
        a.kill()
        deadline = time.monotonic() + 30  # a bound for a hung test, not the rule (node_timeout is)
        while host_stats(b)["host.stored_pages"] != 8 and time.monotonic() < deadline:
            time.sleep(0.1)
        s = host_stats(b)
        assert s["host.stored_pages"] == 8 and s["host.reclaimed_pages"] == 64 and s["host.clients"] == 1
        assert (b.mnt / "f").read_bytes() == (src_b / "f").read_bytes()


@pytest.mark.parametrize(("opts", "message"), [
    ("cleancache=tmem,cc_host=lab,cc_weight=0", "cc_weight=0: must be a whole number from 1 to 1000"),
    ("cleancache=tmem,cc_weight=2", "cc_dir, cc_weight: only with cc_host=NAME"),
    ("cleancache=tmem,cc_host=.lab", "cc_host=.lab: a host name is 1-64 of A-Z a-z 0-9 . _ -"),
    ("cleancache=zcache+tmem,cc_host=lab", "cc_host: a host pool serves one backend, not a chain"),
    ("cleancache=cluster,cc_host=lab", "cc_host: an option of cleancache=dedup or cleancache=tmem or "
                                       "cleancache=zcache, not of cleancache=cluster"),
    ("cleancache=tmem,cc_host=lab,cc_policy=arc", "cc_policy=arc: a host pool evicts by lru or sieve"),
    ("cleancache=tmem,cc_host=lab,cc_size=1M,cc_cap=2M", "cc_cap=2097152 is more than cc_size=1048576"),
    ("cleancache=zcache,cc_host=lab,zc_max=1000", "zc_max: not an option of a host client"),
])
def test_bad_host_options_are_one_line_and_status_2(tmp_path: Path, hostdir: Path, opts: str, message: str) -> None:
    (tmp_path / "src").mkdir()
    (tmp_path / "mnt").mkdir()
    args = [*TMEMFS, str(tmp_path / "src"), str(tmp_path / "mnt"), "-f", "-o", f"{opts},cc_dir={hostdir}"]
    run = subprocess.run(args, capture_output=True, text=True, timeout=60)
    assert run.returncode == 2 and message in one_line(run.stderr), run.stderr
    assert list(hostdir.iterdir()) == []  # nothing was made


@pytest.mark.parametrize(("extra", "message"), [
    ("cc_size=64M,cc_cap=4M", "cc_cap=4194304 is more than host lab's budget (2097152 bytes)"),
    ("cc_policy=sieve", "cc_policy=sieve: host lab evicts by lru (its first client's)"),
])
def test_a_mount_the_existing_host_cannot_take_is_refused_before_mounting(
        tmp_path: Path, hostdir: Path, mount_factory: MountFactory, extra: str, message: str) -> None:
    (tmp_path / "b").mkdir()
    (tmp_path / "mnt-b").mkdir()
    with mount_factory(options(hostdir, extra="cc_size=2M")) as m:
        before = sorted(p.name for p in (hostdir / "tmemfs-host-lab").iterdir())
        run = subprocess.run([*TMEMFS, str(tmp_path / "b"), str(tmp_path / "mnt-b"), "-f", "-o",
                              options(hostdir, extra=extra)], capture_output=True, text=True, timeout=60)
        assert run.returncode == 2 and message in one_line(run.stderr), run.stderr
        assert sorted(p.name for p in (hostdir / "tmemfs-host-lab").iterdir()) == before
        assert host_stats(m)["host.clients"] == 1


def test_tmemctl_on_an_unknown_host_is_one_line_and_status_1(hostdir: Path) -> None:
    for args in (("host", "nosuch"), ("take-back", "nosuch", "1M"), ("give-back", "nosuch", "1M")):
        out = tmemctl(*args, "--dir", str(hostdir))
        assert out.returncode == 1 and "no host pool named nosuch" in one_line(out.stderr), out.stderr
    bad = tmemctl("take-back", "lab", "lots", "--dir", str(hostdir))
    assert bad.returncode == 2 and "not a size" in one_line(bad.stderr)


def test_set_cc_size_on_any_client_changes_the_hosts_budget(tmp_path: Path, hostdir: Path,
                                                            mount_factory: MountFactory) -> None:
    """The host's budget is every client's: tmemctl set on one client evicts down to it at once,
    and the other client sees the new budget."""
    src_a = make_src(tmp_path, "a", {"f": pages_of(b"a", 256)})
    src_b = make_src(tmp_path, "b", {"f": pages_of(b"b", 8)})
    with mount_factory(options(hostdir, extra="cc_size=4M"), src=src_a) as a, \
            mount_factory(options(hostdir), src=src_b) as b:
        cycle(a, ["f"])
        assert host_stats(b)["host.used_bytes"] == 1 * MiB
        out = tmemctl("set", str(b.mnt), "cc_size=512K")
        assert out.returncode == 0, out.stderr
        sa = host_stats(a)
        assert sa["host.budget_bytes"] == 512 * 1024 and sa["host.used_bytes"] <= 512 * 1024
        assert sa["client.evictions"] >= 128
        assert (a.mnt / "f").read_bytes() == (src_a / "f").read_bytes()


def test_set_cc_weight_and_cc_cap_on_a_live_client(tmp_path: Path, hostdir: Path,
                                                   mount_factory: MountFactory) -> None:
    """As Xen's `xm tmem-set -w/-c`: a live client's weight and cap change at once and it keeps its
    pages; a lower cap holds from its next put; a refused key puts back what the same set changed."""
    data = pages_of(b"w", 64)
    src = make_src(tmp_path, "a", {"f": data})
    with mount_factory(options(hostdir, extra="cc_size=4M"), src=src) as m:
        cycle(m, ["f"])
        out = tmemctl("set", str(m.mnt), "cc_weight=3", "cc_cap=1M")
        assert out.returncode == 0, out.stderr
        s = host_stats(m)
        assert (s["client.weight"], s["client.cap"], s["client.stored_pages"]) == (3, MiB, 64)
        m.control("set cc_cap=64K")
        more = pages_of(b"g", 64)
        (src / "g").write_bytes(more)
        assert cycle(m, ["g"]) == {"g": more}  # 64 new puts under the new cap: the client evicts its own
        s = host_stats(m)
        assert s["client.stored_pages"] <= 16 and s["client.evictions"] >= 48
        bad = tmemctl("set", str(m.mnt), "cc_weight=5", "cc_cap=8M")  # more than the host's budget
        assert bad.returncode == 1 and "budget" in one_line(bad.stderr), bad.stderr
        assert (host_stats(m)["client.weight"], host_stats(m)["client.cap"]) == (3, 64 * 1024)  # put back
        m.control("set cc_cap=none")
        assert host_stats(m)["client.cap"] == 0
        assert cycle(m, ["f"]) == {"f": data}
        assert host_stats(m)["client.stored_pages"] > 16  # no cap any more


def test_a_busy_host_refuses_a_live_change_with_the_reason(tmp_path: Path, hostdir: Path,
                                                          mount_factory: MountFactory) -> None:
    """With the host's write lock held elsewhere, give-back and set cc_size are refused with EINVAL
    and the reason, not an internal error or a backend fault; once the lock is free they work."""
    src = make_src(tmp_path, "a", {"f": pages_of(b"l", 16)})
    with mount_factory(options(hostdir, extra="cc_size=4M"), src=src) as m:
        cycle(m, ["f"])
        m.control("take-back 1M")
        [lock] = hostdir.rglob("write.lock")
        fd = os.open(lock, os.O_RDWR)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)  # another open file: the mount's own flock fails
            for command in ("give-back 1M", "set cc_size=2M"):
                with pytest.raises(OSError) as refused:
                    m.control(command)
                assert refused.value.errno == errno.EINVAL, command
        finally:
            os.close(fd)
        assert "write lock stayed busy" in m.log.read_text()
        stats = m.stats()
        assert stats["fs.internal_errors"] == 0 and stats["cleancache.backend_errors"] == 0
        m.control("give-back 1M")
        assert host_stats(m)["host.budget_bytes"] == 4 * MiB
