"""Hostile input and faults: fuzzed option and control parsers, random bytes to the
control file of a live mount, SRC running out of space, SRC changed behind
tmemfs's back, SRC objects swapped for symlinks to outside it, and callers
without permission."""

from __future__ import annotations

import errno
import json
import os
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

import pyfuse3
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from backends import registry
from fusefs.control import COMMANDS, parse_commands
from fusefs.options import OptionError, parse_options
from tests.conftest import mounted

if TYPE_CHECKING:
    from contextlib import AbstractContextManager

    from tests.conftest import Mount

    MountFactory = Callable[..., AbstractContextManager[Mount]]

PAGE = 4096
AS_NOBODY = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]

# -- the option parser ----------------------------------------------------------------

KEYS = ["cleancache", "cache_size", "cc_size", "kernel_cache", "attr_timeout", "entry_timeout", "cc_timeout",
        "pc_policy", "backing_io", "log", "allow_other", "fsname", "subtype", "ro", "defaults", "x-systemd.foo",
        "comment", "cc_policy", "zc_max", "zc_poor", "dd_compress", "bogus", ""]
WORDS = ["none", "tmem", "zcache", "dedup", "zcache+tmem", "tmem+none", "+", "lru", "arc", "sieve", "s3fifo",
         "cached", "direct", "reject", "raw", "lz4", "4K", "0", "-1", "nan", "inf", "1e999", "4096", "3072"]
SIZES = st.from_regex(r"\A[0-9]{1,400}(\.[0-9]{1,5})?[kmgtKMGT]?(i?[bB])?\Z")
VALUES = st.one_of(st.text(max_size=30), st.sampled_from(WORDS), SIZES,
                   st.integers(-(10 ** 400), 10 ** 400).map(str),
                   st.floats(allow_nan=True, allow_infinity=True).map(repr))
OPTION = st.one_of(
    st.text(max_size=40),
    st.tuples(st.sampled_from(KEYS), st.none() | VALUES).map(lambda kv: kv[0] if kv[1] is None else f"{kv[0]}={kv[1]}"),
)
GROUPS = st.lists(st.lists(OPTION, max_size=6).map(",".join), max_size=3)


@settings(max_examples=1000, deadline=None)
@given(GROUPS)
def test_option_parser_parses_or_names_the_error_on_one_line(groups: list[str]) -> None:
    try:
        config = parse_options(groups, registry.load)
    except OptionError as exc:
        message = str(exc)
        assert message and len(message.splitlines()) == 1 and message.isprintable(), repr(message)
    else:
        assert config.cache_size >= PAGE and config.cc_size >= 0
        assert config.cleancache and all(config.cleancache)


def test_option_parser_known_hostile_cases() -> None:
    """Cases found by the property above (each used to raise something else or span lines)."""
    for groups in (["cache_size=" + "9" * 400], ["cc_size=1" + "0" * 300 + "T"], ["a\nb"], ["log=x,\x1b[2J"]):
        with pytest.raises(OptionError) as info:
            parse_options(groups, registry.load)
        assert len(str(info.value).splitlines()) == 1 and str(info.value).isprintable()


# -- the control command parser -----------------------------------------------------------

LINES = st.one_of(
    st.text(max_size=40),
    st.lists(st.one_of(st.sampled_from([*COMMANDS, "cc_size=1M", "cc_size=" + "9" * 400, "zc_max=0",
                                        *WORDS]), st.text(max_size=8)), max_size=5).map(" ".join),
)
CONTROL_BYTES = st.one_of(
    st.binary(max_size=200),
    st.lists(LINES, min_size=0, max_size=4).map("\n".join).map(lambda t: t.encode("utf-8", "surrogatepass")),
)


@settings(max_examples=1000, deadline=None)
@given(CONTROL_BYTES)
def test_control_parser_parses_or_refuses_with_einval(data: bytes) -> None:
    try:
        commands = parse_commands(data)
    except pyfuse3.FUSEError as exc:
        assert exc.errno == errno.EINVAL
    else:
        assert commands and all(words and words[0] in COMMANDS for words in commands)


def test_random_command_bytes_never_hurt_the_daemon(mount_factory: MountFactory) -> None:
    """Through one mount, about a hundred hostile writes to the control file: each is
    refused (EINVAL, EBUSY) or runs; the daemon answers and has no internal error."""
    with mount_factory("cleancache=tmem,cache_size=64K,cc_size=1M") as m:
        (m.mnt / "f").write_bytes(os.urandom(20 * PAGE))
        control = m.mnt / ".tmemfs" / "control"
        seen: set[int] = set()

        @settings(max_examples=100, deadline=None, suppress_health_check=list(HealthCheck))
        @given(CONTROL_BYTES, st.integers(0, 1 << 20))
        def write_command(data: bytes, offset: int) -> None:
            fd = os.open(control, os.O_WRONLY)
            try:
                os.pwrite(fd, data, offset)
            except OSError as exc:
                seen.add(exc.errno or 0)
            finally:
                os.close(fd)
            stats = m.stats()
            assert stats["fs.internal_errors"] == 0, data
            assert (m.mnt / "f").stat().st_size == 20 * PAGE

        write_command()
        assert seen <= {errno.EINVAL, errno.EBUSY}, seen
        assert (m.mnt / "f").read_bytes() == (m.src / "f").read_bytes()
        assert m.proc.poll() is None


def test_register_with_an_oversized_cc_size_is_einval(mnt: Mount) -> None:
    mnt.control("unregister")
    with pytest.raises(OSError) as info:
        mnt.control("register tmem cc_size=" + "9" * 400)
    assert info.value.errno == errno.EINVAL
    assert mnt.stats()["fs.internal_errors"] == 0


# -- SRC running out of space ---------------------------------------------------------------


@contextmanager
def tmpfs(path: Path, size: str) -> Iterator[Path]:
    path.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0755", "tmpfs", str(path)], check=True)
    try:
        yield path
    finally:
        subprocess.run(["umount", str(path)], check=False)
        subprocess.run(["umount", "-l", str(path)], capture_output=True, check=False)


def test_enospc_reaches_the_writer_and_the_mount_keeps_working(mount_factory: MountFactory, tmp_path: Path) -> None:
    with tmpfs(tmp_path / "small", "2M") as small, \
            mount_factory("cleancache=tmem,cache_size=64K,cc_size=1M", src=small) as m:
        keep = os.urandom(6 * PAGE)
        (m.mnt / "keep").write_bytes(keep)
        victim = m.mnt / "victim"
        victim.write_bytes(b"v" * 2 * PAGE)
        assert victim.read_bytes() == b"v" * 2 * PAGE  # its pages are cached now
        chunk = os.urandom(1 << 20)
        written = 0
        fd = os.open(victim, os.O_WRONLY)
        try:
            with pytest.raises(OSError) as info:
                for _ in range(8):  # 8 MiB into 2 MiB
                    written += os.pwrite(fd, chunk, written)  # the first goes over the cached pages
        finally:
            os.close(fd)
        assert info.value.errno == errno.ENOSPC
        assert 0 < written < 2 << 20
        # what was acknowledged is in SRC, and the mount shows SRC (not the stale cached pages)
        src_bytes = (m.src / "victim").read_bytes()
        assert src_bytes[:written] == (chunk * 2)[:written]
        assert victim.read_bytes() == src_bytes
        assert (m.mnt / "keep").read_bytes() == keep
        with pytest.raises(OSError) as info:
            (m.mnt / "more").write_bytes(os.urandom(4 << 20))
        assert info.value.errno == errno.ENOSPC
        # deleting frees space (once the kernel forgets the inodes: until then tmemfs holds
        # an O_PATH descriptor of each, as it does of every inode the kernel knows)
        os.unlink(victim)
        os.unlink(m.mnt / "more")
        deadline = time.monotonic() + 10
        while os.statvfs(small).f_bavail * os.statvfs(small).f_frsize < 1 << 20:
            assert time.monotonic() < deadline, "deleting through the mount freed no space"
            time.sleep(0.02)
        (m.mnt / "new").write_bytes(b"after ENOSPC")
        os.rename(m.mnt / "new", m.mnt / "renamed")
        assert (m.mnt / "renamed").read_bytes() == (m.src / "renamed").read_bytes() == b"after ENOSPC"
        assert (m.mnt / "keep").read_bytes() == keep
        assert sorted(os.listdir(m.mnt)) == ["keep", "renamed"]
        assert m.stats()["fs.internal_errors"] == 0


def test_write_cut_short_by_enospc_keeps_the_cache_true(mount_factory: MountFactory, tmp_path: Path) -> None:
    """A write that SRC takes only in part: the part that reached SRC must reach the
    cached pages too, and the writer learns how much was written."""
    with tmpfs(tmp_path / "small", "1M") as small, \
            mount_factory("cleancache=tmem,cache_size=1M,cc_size=1M", src=small) as m:
        victim = m.mnt / "victim"
        with open(victim, "wb") as f:
            f.truncate(16 * PAGE)  # a hole: no space used in SRC
        assert victim.read_bytes() == bytes(16 * PAGE)  # 16 zero pages cached
        filler = os.open(m.src / "filler", os.O_WRONLY | os.O_CREAT, 0o644)
        try:
            with pytest.raises(OSError):
                while True:
                    os.write(filler, bytes(PAGE))
            os.ftruncate(filler, os.fstat(filler).st_size - 2 * PAGE)  # room for two pages
        finally:
            os.close(filler)
        data = os.urandom(16 * PAGE)
        fd = os.open(victim, os.O_WRONLY)
        try:
            try:
                written = os.pwrite(fd, data, 0)
            except OSError as exc:
                assert exc.errno == errno.ENOSPC
                written = 0
        finally:
            os.close(fd)
        src_bytes = (m.src / "victim").read_bytes()
        landed = next((i for i in range(16) if src_bytes[i * PAGE:(i + 1) * PAGE] != data[i * PAGE:(i + 1) * PAGE]),
                      16)
        assert landed >= 1 and written == landed * PAGE  # what SRC took is what the writer is told
        assert victim.read_bytes() == src_bytes  # and what the mount shows
        m.control("drop_caches")
        assert victim.read_bytes() == src_bytes
        assert m.stats()["fs.internal_errors"] == 0


# -- SRC changed behind tmemfs's back ------------------------------------------------------------


def _cached(m: Mount, name: str) -> bytes:
    data = (m.mnt / name).read_bytes()
    assert (m.mnt / name).read_bytes() == data
    return data


def test_external_change_is_seen_at_the_next_open(mount_factory: MountFactory) -> None:
    """Close-to-open: a file changed in SRC is seen when it is next opened, even with
    the same size and the old mtime put back (ctime still differs), and even when its
    old pages were in the pool."""
    with mount_factory("cleancache=tmem,cache_size=1M,cc_size=4M") as m:
        old, new = b"o" * 3 * PAGE, b"n" * 3 * PAGE
        (m.src / "f").write_bytes(old)
        assert _cached(m, "f") == old
        before = m.stats()
        st = os.stat(m.src / "f")
        (m.src / "f").write_bytes(new)
        os.utime(m.src / "f", ns=(st.st_atime_ns, st.st_mtime_ns))
        assert (m.mnt / "f").read_bytes() == new
        after = m.stats()
        assert after["pagecache.external_changes"] == before["pagecache.external_changes"] + 1
        # the old pages sit in cleancache now; SRC changes again; the next open must not get them
        m.control("drop_caches")
        assert m.stats()["backend.tmem.stored_pages"] == 3
        (m.src / "f").write_bytes(old)
        assert (m.mnt / "f").read_bytes() == old
        assert m.stats()["backend.tmem.stored_pages"] == 0
        # shorter and longer behind our back: the sizes follow at the next open
        (m.src / "f").write_bytes(b"short")
        assert (m.mnt / "f").read_bytes() == b"short"
        (m.src / "f").write_bytes(new * 2)
        assert (m.mnt / "f").read_bytes() == new * 2
        assert m.stats()["fs.internal_errors"] == 0


def test_external_change_while_open_may_show_old_data(mount_factory: MountFactory) -> None:
    """While a file is open through tmemfs, a change in SRC may not be seen (its pages
    are cached): old data, never an error; the next open sees the new data."""
    with mount_factory("cleancache=tmem,cache_size=1M,attr_timeout=0") as m:
        old = b"o" * 2 * PAGE
        (m.src / "f").write_bytes(old)
        with open(m.mnt / "f", "rb", buffering=0) as f:
            assert f.read() == old
            with open(m.src / "f", "r+b") as behind:
                behind.write(b"N" * PAGE)
            f.seek(0)
            assert f.read() == old  # served from tmemfs's page cache
            os.truncate(m.src / "f", 10)  # shorter behind its back
            f.seek(0)
            assert f.read() in (old, b"N" * 10)
            with open(m.src / "f", "ab") as behind:
                behind.write(b"x" * 3 * PAGE)  # and longer
            f.seek(0)
            assert len(f.read()) in (2 * PAGE, 10 + 3 * PAGE)
        assert (m.mnt / "f").read_bytes() == (m.src / "f").read_bytes() == b"N" * 10 + b"x" * 3 * PAGE
        assert m.stats()["fs.internal_errors"] == 0


def test_file_replaced_behind_the_back(mount_factory: MountFactory) -> None:
    """A file deleted and recreated in SRC (a new inode under the old name) is a new
    file for tmemfs: once the kernel looks the name up again, its data is seen."""
    with mount_factory("cleancache=tmem,entry_timeout=0,attr_timeout=0") as m:
        (m.src / "f").write_bytes(b"first" * 1000)
        assert _cached(m, "f") == b"first" * 1000
        os.unlink(m.src / "f")
        (m.src / "f").write_bytes(b"second" * 1000)
        assert (m.mnt / "f").read_bytes() == b"second" * 1000
        os.unlink(m.src / "f")
        assert not (m.mnt / "f").exists()
        assert m.stats()["fs.internal_errors"] == 0


# -- SRC objects swapped for symlinks that lead outside -----------------------------------------


def test_swapped_for_symlink_behind_the_back_never_reaches_outside(mount_factory: MountFactory,
                                                                   tmp_path: Path) -> None:
    """A directory or file the kernel already knows is replaced in SRC by a symlink to
    a place outside SRC. Requests on the known objects go to tmemfs's descriptors of
    the original objects, never through the new symlinks; nothing outside changes."""
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret").write_bytes(b"outside SRC")
    os.chmod(outside / "secret", 0o640)
    with mount_factory("cleancache=tmem,entry_timeout=60,attr_timeout=60") as m:
        (m.mnt / "moved").mkdir()
        (m.mnt / "removed").mkdir()
        (m.mnt / "file").write_bytes(b"inside")
        for name in ("moved", "removed", "file"):
            os.stat(m.mnt / name)  # the kernel knows them now, for 60 s
        os.rename(m.src / "moved", m.src / "moved.old")
        os.symlink(outside, m.src / "moved")
        os.rmdir(m.src / "removed")
        os.symlink(outside, m.src / "removed")
        os.rename(m.src / "file", m.src / "file.old")
        os.symlink(outside / "secret", m.src / "file")
        # through the dentries the kernel holds
        (m.mnt / "moved" / "new").write_bytes(b"lands in moved.old")
        (m.mnt / "moved" / "sub").mkdir()
        os.symlink("../..", m.mnt / "moved" / "up")
        assert (m.src / "moved.old" / "new").read_bytes() == b"lands in moved.old"
        assert (m.src / "moved.old" / "sub").is_dir()
        for op in (lambda: (m.mnt / "removed" / "new").write_bytes(b"x"),
                   lambda: (m.mnt / "removed" / "sub").mkdir()):
            with pytest.raises(FileNotFoundError):  # the directory tmemfs holds was deleted
                op()
        assert os.listdir(m.mnt / "removed") == []  # as a deleted directory lists
        with open(m.mnt / "file", "r+b") as f:
            assert f.read() == b"inside"
            f.seek(0)
            f.write(b"INSIDE")
        os.chmod(m.mnt / "file", 0o600)
        os.setxattr(m.mnt / "file", "user.k", b"v")
        assert (m.src / "file.old").read_bytes() == b"INSIDE"
        assert os.getxattr(m.src / "file.old", "user.k") == b"v"
        assert sorted(os.listdir(outside)) == ["secret"]
        assert (outside / "secret").read_bytes() == b"outside SRC"
        assert os.stat(outside / "secret").st_mode & 0o777 == 0o640
        assert os.listxattr(outside / "secret") == []
        assert m.stats()["fs.internal_errors"] == 0


# -- callers without permission ---------------------------------------------------------------


def test_other_user_cannot_read_or_write_root_files(world_dir: Path) -> None:
    """allow_other + default_permissions: nobody reads a 0600 root file, writes or
    truncates a 0644 one, or changes either's mode, times or xattrs; SRC is untouched."""
    src = world_dir / "src"
    src.mkdir()
    with mounted(src, world_dir / "mnt", "cleancache=tmem,allow_other") as m:
        (m.mnt / "private").write_bytes(b"root only")
        os.chmod(m.mnt / "private", 0o600)
        (m.mnt / "public").write_bytes(b"everyone reads")
        os.chmod(m.mnt / "public", 0o644)
        script = f"""
import errno, json, os
def err(fn, *args):
    try:
        fn(*args)
    except OSError as exc:
        return errno.errorcode[exc.errno]
    return "ok"
d = {str(m.mnt)!r}
out = {{
    "read private": err(lambda: open(d + "/private", "rb").read()),
    "read public": err(lambda: open(d + "/public", "rb").read()),
    "write public": err(lambda: open(d + "/public", "r+b").write(b"x")),
    "append public": err(lambda: open(d + "/public", "ab").write(b"x")),
    "truncate public": err(os.truncate, d + "/public", 0),
    "chmod public": err(os.chmod, d + "/public", 0o666),
    "utime public": err(os.utime, d + "/public", (1, 1)),
    "setxattr public": err(os.setxattr, d + "/public", "user.x", b"1"),
    "unlink public": err(os.unlink, d + "/public"),
    "create": err(lambda: open(d + "/new", "wb")),
}}
print(json.dumps(out))
"""
        proc = subprocess.run([*AS_NOBODY, "/usr/bin/python3", "-c", script], capture_output=True, text=True,
                              timeout=30, cwd="/")
        assert proc.returncode == 0, proc.stderr
        got = json.loads(proc.stdout)
        assert got == {"read private": "EACCES", "read public": "ok", "write public": "EACCES",
                       "append public": "EACCES", "truncate public": "EACCES", "chmod public": "EPERM",
                       "utime public": "EPERM", "setxattr public": "EACCES", "unlink public": "EACCES",
                       "create": "EACCES"}
        assert (src / "private").read_bytes() == b"root only"
        assert (src / "public").read_bytes() == b"everyone reads"
        assert os.stat(src / "public").st_mode & 0o7777 == 0o644
        assert os.listxattr(src / "public") == []
        assert sorted(os.listdir(src)) == ["private", "public"]
        assert m.stats()["fs.internal_errors"] == 0

