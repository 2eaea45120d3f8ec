"""Fixtures that mount tmemfs for real and always unmount, pass or fail; the `mount` marker."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import Protocol

import pytest

from fusefs.srcio import MEMORY_FILESYSTEMS, filesystem_type
from tools.mounting import TMEMFS as TMEMFS  # re-exported: tests run the command line with it
from tools.mounting import Foreground, foreground
from tools.mounting import Stats as Stats  # re-exported: stats.json as the tests read it

# A test that requests one of these (itself or through another fixture) mounts tmemfs or starts redis-server
# (`srv` is test_redisstore's): it is marked `mount`.
MOUNT_FIXTURES = frozenset({"mnt", "mount_factory", "world_dir", "redis_srv", "srv"})
# Tests marked `mount` although they request none of those: they run tmemfs, fio, redis-server, man or another
# uid themselves. A module can instead mark its own: `pytestmark = pytest.mark.mount` or @pytest.mark.mount.
MOUNT_TESTS = {
    "test_bench_backends.py": {"test_user_data_job_and_backends"},
    "test_bench_frontswap.py": {"test_quick_run_measures_and_leaves_nothing_behind"},
    "test_bench_host.py": {"test_quick_run_measures_both_sides_and_leaves_nothing_behind"},
    "test_cli.py": {"test_sizes_are_rounded_down_to_pages_with_a_warning", "test_non_empty_mnt_mounts_with_a_warning",
                    "test_failed_mount_prints_libfuses_reason", "test_daemon_mode_is_usable_when_the_command_returns",
                    "test_mount_t_fuse_tmemfs", "test_sigterm_unmounts_cleanly"},
    "test_cluster.py": {"test_randomized_checker_finds_no_stale_read_across_three_nodes"},
    "test_cluster_redis.py": {"test_randomized_checker_on_redis_nodes",
                              "test_randomized_checker_on_redis_nodes_with_a_slow_join"},
    "test_coherency_tool.py": {"test_mount_mode_mounts_checks_and_unmounts", "test_interrupt_unmounts_everything"},
    "test_hoststore.py": {"test_another_uid_without_access_cannot_join"},
    "test_logs.py": {"test_without_syslog_the_log_goes_to_a_file_named_after_mnt", "test_log_and_trace_files_are_0600",
                     "test_sighup_reopens_the_log", "test_log_level_debug_logs_requests_in_the_background",
                     "test_log_level_warning_leaves_out_info_and_requests",
                     "test_sigusr1_writes_every_threads_stack_to_the_log_and_follows_a_reopen",
                     "test_sigusr1_is_ignored_when_the_log_is_syslog"},
    "test_nullfs.py": {"test_reads_zeros_and_swallows_writes", "test_o_direct_reads_and_writes",
                       "test_backing_serves_src_files_as_tmemfs_serves_a_miss",
                       "test_bench_mounts_it_and_fio_counts_both_directions"},
    "test_packaging.py": {"test_man_page_renders"},
    "test_polling.py": {"test_polling_mount_stops_on_sigterm_and_unmount"},
    "test_redisstore.py": {"test_password", "test_down_at_join_then_recovers",
                           "test_tiny_maxmemory_evicts_without_errors", "test_noeviction_refuses_puts", "test_tls",
                           "test_redis_cluster", "test_redis_cluster_found_by_moved_reply"},
}


class Mount(Foreground):
    """A running tmemfs (foreground child process) on `mnt` over `src`.

    Tests that kill the daemon on purpose call kill(); tests whose backend fails on purpose set
    faults_expected: either way the end of the mount is not taken for a failure."""

    def control(self, command: str) -> None:
        (self.mnt / ".tmemfs" / "control").write_text(command + "\n")

    def counters(self, *names: str) -> Stats:
        stats = self.stats()
        return {n: stats[n] for n in names}


def on_memory_filesystem(path: Path | str) -> bool:
    """Whether `path` is on tmpfs or ramfs, where tmemfs reads SRC inline whatever the load."""
    return filesystem_type(os.stat(path).st_dev) in MEMORY_FILESYSTEMS


class MountFactory(Protocol):
    """The mount_factory fixture: mount_factory(options) is a context manager yielding a Mount."""

    def __call__(self, options: str = "", src: Path | None = None, extra_args: tuple[str, ...] = (),
                 plugins: bool = False, env: dict[str, str] | None = None) -> AbstractContextManager[Mount]: ...


@contextmanager
def mounted(src: Path, mnt: Path, options: str = "", extra_args: tuple[str, ...] = (),
            plugins: bool = False, env: dict[str, str] | None = None) -> Iterator[Mount]:
    """Mount in the foreground, wait until it answers, and unmount in a finally; a daemon that
    failed or logged an error fails the test.

    With `plugins`, the test backends in tests/plugins are installed (on PYTHONPATH);
    `env` adds environment variables for the daemon.
    """
    mnt.mkdir(parents=True, exist_ok=True)
    with foreground(Mount, src, mnt, mnt.parent / f"{mnt.name}.log", options, extra_args=extra_args,
                    plugins=plugins, env=env) as mount:
        yield mount


def needs_mount(item: pytest.Item) -> bool:
    """Whether a test needs root, /dev/fuse or the Debian packages, by its fixtures or by MOUNT_TESTS."""
    if MOUNT_FIXTURES.intersection(getattr(item, "fixturenames", ())):
        return True
    return getattr(item, "originalname", item.name) in MOUNT_TESTS.get(item.path.name, ())


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark `mount` every test that needs root, /dev/fuse or the Debian packages, so that
    `pytest -m "not mount"` runs the unit tests as any user without them (a plain `pytest` runs all)."""
    for item in items:
        if needs_mount(item):
            item.add_marker(pytest.mark.mount)


@pytest.fixture
def src(tmp_path: Path) -> Path:
    path = tmp_path / "src"
    path.mkdir()
    return path


@pytest.fixture
def mount_factory(tmp_path: Path) -> Iterator[MountFactory]:
    """mount_factory(options="...") -> context manager yielding a Mount of tmp_path/src."""
    counter = iter(range(1000))

    def factory(options: str = "", src: Path | None = None, extra_args: tuple[str, ...] = (),
                plugins: bool = False, env: dict[str, str] | None = None) -> AbstractContextManager[Mount]:
        source = src or tmp_path / "src"
        source.mkdir(exist_ok=True)
        return mounted(source, tmp_path / f"mnt{next(counter)}", options, extra_args, plugins, env)

    yield factory


@pytest.fixture
def world_dir() -> Iterator[Path]:
    """A 0755 directory under /tmp: other users can reach mounts made in it
    (pytest's own tmp_path lives under a 0700 directory)."""
    path = Path(tempfile.mkdtemp(prefix="tmemfs-test-", dir="/tmp"))
    path.chmod(0o755)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def mnt(src: Path, tmp_path: Path) -> Iterator[Mount]:
    """A default tmemfs mount (cleancache=tmem) of `src`."""
    with mounted(src, tmp_path / "mnt", "cleancache=tmem") as m:
        yield m


@contextmanager
def umask(mask: int) -> Iterator[None]:
    """The process umask set to `mask` for a test, then back: a local mkdir or mknod to compare with sees it."""
    old = os.umask(mask)
    try:
        yield
    finally:
        os.umask(old)


@pytest.fixture
def umask022() -> Iterator[None]:
    with umask(0o022):
        yield


@pytest.fixture
def umask0() -> Iterator[None]:
    with umask(0):
        yield


@pytest.fixture
def ref(tmp_path: Path) -> Path:
    """A plain directory on the same filesystem as SRC, for doing things directly."""
    path = tmp_path / "ref"
    path.mkdir()
    return path


@pytest.fixture
def user_mnt(mount_factory: MountFactory) -> Iterator[Mount]:
    """A mount other users may use (allow_other), its root world-writable."""
    with mount_factory("cleancache=tmem,allow_other") as m:
        os.chmod(m.mnt, 0o777)
        yield m


def pytest_configure(config: pytest.Config) -> None:
    """Ctrl-C must reach the tools the tests interrupt: a suite started as a background job of a
    shell without job control inherits SIGINT ignored, and every child would inherit it too."""
    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Belt and braces: nothing this session mounted may stay mounted after it."""
    # (tools.coherency mounts its nodes under /tmp/tmemfs-coherency-*: a test that had to SIGKILL it leaves them)
    roots = [str(session.config._tmp_path_factory.getbasetemp()), "/tmp/tmemfs-test-",  # type: ignore[attr-defined]
             "/tmp/tmemfs-coherency-"]
    with open("/proc/self/mountinfo") as f:
        leftovers = [line.split()[4] for line in f
                     if "fuse.tmemfs" in line and any(line.split()[4].startswith(r) for r in roots)]
    for path in leftovers:
        subprocess.run(["fusermount3", "-u", "-z", path], capture_output=True)
    if leftovers:
        print(f"\nWARNING: unmounted leftover tmemfs mounts: {leftovers}", file=sys.stderr)
