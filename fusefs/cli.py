"""The `tmemfs` command: parse, check, mount, then serve (in the background by default)."""

from __future__ import annotations

import argparse
import ctypes
import errno
import logging
import mmap
import os
import re
import resource
import signal
import stat
import sys
import tempfile
import urllib.parse
from collections.abc import AsyncIterator, Callable
from typing import NoReturn

import pyfuse3
import trio

from backends import registry
from backends.base import Backend
from backends.cluster import NODE_TIMEOUT_S, PASSWORD_ENV
from fusefs import PAGE_SIZE, __version__
from fusefs.cleancache import Cleancache
from fusefs.datapath import DataPath
from fusefs.fusectl import raise_max_background
from fusefs.logs import (
    LEVELS,
    LogFile,
    dump_stacks_on_signal,
    log_handler,
    open_private,
    reopen_logs,
    setup_logging,
)
from fusefs.metrics import MetricsServer
from fusefs.mountinfo import mounts
from fusefs.operations import TmemOperations, request_log, with_request_log
from fusefs.options import CORE_OPTIONS, MountConfig, OptionError, parse_options
from fusefs.pagecache import PageCache
from fusefs.polling import RequestPoller, fuse_device_fd
from fusefs.pooluuid import PoolUuidError, effective_uuid, src_pool_uuid
from fusefs.srcio import SrcIO
from fusefs.tracing import Tracer

log = logging.getLogger("tmemfs")

MCL_CURRENT, MCL_FUTURE, MCL_ONFAULT = 1, 2, 4  # <sys/mman.h>
USAGE = "tmemfs SRC MNT [-o opt[,opt...]] [-f] [-d] [--help] [--version]"


def manual() -> str:
    """The --help text, in the shape of a man page."""
    core = "\n".join(f"    {o.usage:<28} {o.help}" for o in CORE_OPTIONS.values())
    backends = registry.describe("    ")
    return f"""NAME
    tmemfs - pass-through FUSE filesystem with a page cache and cleancache backends

SYNOPSIS
    {USAGE}
    mount -t fuse.tmemfs SRC MNT -o cleancache=NAME[,opt...]

DESCRIPTION
    Mounts the directory SRC at MNT. Every read of a file goes through
    tmemfs's own page cache (the kernel's is bypassed with direct_io); a
    page evicted from it is offered to the cleancache backend (put), and a
    miss asks the backend (get) before reading SRC, as Linux cleancache did.
    Writes go through to SRC before they return; an O_APPEND write lands at
    SRC's end as it is then. Changes made to SRC behind tmemfs's back are
    seen at the next open (close-to-open, as NFS). Counters are in
    MNT/.tmemfs/stats (and stats.json); commands go to MNT/.tmemfs/control.

    Files named by frontswap= are swap areas (frontswap): swapon a loop
    device made on MNT/RELPATH, and each page the kernel swaps out is stored
    in a persistent pool of the backend (never evicted; a refused page goes
    to SRC). Killing the daemon loses the stored pages, as killing zswap
    would: use mlock, and keep the daemon out of the memory pressure it
    serves. flush and unregister write stored pages back to SRC first.

    Mounts of one SRC with cleancache=cluster are the nodes of a cluster and
    stay coherent (docs/coherency.md). A node that has not joined its pool
    yet reads SRC uncached and holds its changes until it has joined; after
    node_timeout they fail with EIO, SRC untouched.

    With cc_host=NAME (cleancache=tmem, zcache or dedup), the mount is a
    client of host pool NAME: every mount on this machine naming it shares
    one budget (its first client's cc_size) and one eviction order, each
    with its own pages and counters (tmemctl host NAME). tmemctl take-back
    NAME SIZE takes memory back from it at once.

    Without -f, tmemfs returns once the mount answers requests, so MNT is
    usable as soon as the command exits. It prints nothing then, except
    "tmemfs: logging to FILE" when there is no syslog and no log= (see
    FILES); a mount that fails prints libfuse's reason on one line. A
    non-empty MNT is mounted with a warning (its files are hidden meanwhile);
    sizes are rounded down to whole 4096-byte pages, with a warning.

OPTIONS
    -o opt[,opt...]  mount options (below); may be repeated
    -f, --foreground stay in the foreground, log to stderr
    -d, --debug      log every request, one line each: opcode, inode or handle,
                     offset, size, result (ok with the bytes read or written,
                     the file size and handle the kernel was given; or the
                     errno name), microseconds; and every append that landed
                     elsewhere than the kernel's offset
                     (implies -f; log_level=debug does it in the background)
    --version        print the version
    --help           print this text

  tmemfs options
{core}

  backends (cleancache=NAME) and their options
{backends}

  FUSE and mount(8) options
    allow_other, allow_root, default_permissions (always on), ro, noatime,
    auto_unmount, fsname=NAME (default SRC), subtype=NAME (default tmemfs),
    nodev, nosuid, noexec are passed to FUSE. rw, defaults, auto, noauto,
    user, users, nofail, _netdev, relatime and x-* are accepted and ignored.

CONTROL COMMANDS (echo CMD > MNT/.tmemfs/control; root or the mount owner)
    drop_caches      evict every page (each is put into cleancache)
    flush            empty the cleancache pool (stored swap pages are written
                     back to SRC first)
    reset_stats      zero the counters
    register NAME[+NAME] [cc_size=SIZE] [opt=value ...]
                     make a backend live (refused with EBUSY if one is)
    replace NAME[+NAME] [opts]
                     flush and close the live backend, then register another
    unregister       flush and close the live backend; reads go on from SRC
    set KEY=VALUE [KEY=VALUE]
                     resize the live mount: cache_size (shrinking evicts, each
                     page put as reclaim does), cc_size; nothing is flushed.
                     A host client (cc_host=): cc_weight=1-1000, cc_cap=SIZE
                     or cc_cap=none, at once, keeping its pages
    take-back SIZE   a host client (cc_host=): lower the host's budget by SIZE
                     now, dropping ephemeral pages (never frontswap's)
    give-back SIZE   return up to SIZE taken back to the host's budget
  A refused command fails with EINVAL (EBUSY: register over a live backend);
  its reason is logged, and a read on the same descriptor (opened O_RDWR)
  returns "ok" or "EINVAL: REASON". tmemctl(1) prints it.

SIGNALS (the daemon's pid is fs.pid in MNT/.tmemfs/stats)
    SIGHUP           reopen the log file (for logrotate without copytruncate);
                     with no log file (-f, logging to stderr) it unmounts
    SIGTERM, SIGINT  unmount and exit
    SIGUSR1          write every thread's Python stack to the log (a daemon that
                     hangs or does not exit); ignored when the log is syslog

FILES
    MNT/.tmemfs/stats, MNT/.tmemfs/stats.json, MNT/.tmemfs/control
    /var/log/tmemfs/NAME.log
                     the log of a background mount run by root when there is
                     no log= and no syslog (/dev/log); NAME is MNT's path with
                     / as - (/mnt/data: mnt-data.log), other characters escaped
                     as systemd does; the directory is created 0700
    $XDG_STATE_HOME/tmemfs/NAME.log (default ~/.local/state/tmemfs/NAME.log)
                     the same for other users
    Log and trace files are created 0600.

EXIT STATUS
    0 mounted (or unmounted cleanly with -f); 1 the mount failed (the reason
    is printed); 2 bad command line, option or path, or a log=, trace= or
    cache_size= that cannot be had (nothing was mounted).

EXAMPLES
    tmemfs /srv/data /mnt/data -o cleancache=zcache,cache_size=64M,cc_size=256M
    tmemfs /srv/data /mnt/data -o cleancache=zcache+tmem     # overflow of zcache goes to tmem
    tmemfs /srv/data /mnt/node1 -o cleancache=cluster       # every cluster mount of /srv/data
    tmemfs /srv/data /mnt/node2 -o cleancache=cluster       #   shares one coherent pool
    tmemfs /srv/data /mnt/a -o cleancache=zcache+cluster,cc_store=redis://10.0.0.5/0,cc_store_password_file=/etc/tmemfs/pw
    tmemfs /srv/data /mnt/data -o cleancache=zcache,metrics=127.0.0.1:9567   # Prometheus scrapes it
    tmemfs /srv/data /mnt/data -o cleancache=zcache,frontswap=swapfile,mlock  # then losetup, mkswap, swapon
    cat /mnt/data/.tmemfs/stats
    echo drop_caches > /mnt/data/.tmemfs/control
    tmemctl set /mnt/data cache_size=128M
    fusermount3 -u /mnt/data
"""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        self.exit(2, f"tmemfs: {message} (usage: {USAGE})\n")


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = _Parser(prog="tmemfs", usage=USAGE, add_help=False)
    parser.add_argument("src", metavar="SRC")
    parser.add_argument("mnt", metavar="MNT")
    parser.add_argument("-o", dest="options", action="append", default=[])
    parser.add_argument("-f", "--foreground", action="store_true")
    parser.add_argument("-d", "--debug", action="store_true")
    if "--help" in argv or "-h" in argv:
        sys.stdout.write(manual())
        sys.exit(0)
    if "--version" in argv or "-V" in argv:
        print(f"tmemfs {__version__} (pyfuse3 {pyfuse3.__version__})")
        sys.exit(0)
    return parser.parse_args(argv)


def check_paths(src: str, mnt: str, warnings: list[str]) -> tuple[str, str]:
    """Absolute SRC and MNT, or OptionError if mounting them would be wrong; a non-empty MNT
    is allowed (as libfuse 3 does) with a warning."""
    for label, path in (("SRC", src), ("MNT", mnt)):
        _check_dead_mount(label, path)
    src_real, mnt_real = os.path.realpath(src), os.path.realpath(mnt)
    if not os.path.isdir(src_real):
        raise OptionError(f"SRC {src}: {'not a directory' if os.path.exists(src_real) else 'no such directory'}")
    if not os.path.isdir(mnt_real):
        raise OptionError(f"MNT {mnt}: {'not a directory' if os.path.exists(mnt_real) else 'no such directory'}")
    if src_real == mnt_real:
        raise OptionError(f"SRC and MNT are the same directory ({src_real})")
    if os.path.commonpath([src_real, mnt_real]) == src_real:
        raise OptionError(f"MNT {mnt} is inside SRC {src}: tmemfs would see itself")
    mounted = mounted_at(mnt_real)
    if mounted is not None:
        raise OptionError(f"MNT {mnt}: already mounted ({mounted}); unmount it first or choose another MNT")
    try:
        if os.listdir(mnt_real):
            warnings.append(f"MNT {mnt} is not empty: its files are hidden while tmemfs is mounted on it")
    except OSError as exc:
        raise OptionError(f"MNT {mnt}: {exc.strerror}") from None
    return src_real, mnt_real


def _check_dead_mount(label: str, path: str) -> None:
    """A FUSE mount whose daemon died answers ENOTCONN: name it, not "no such directory".

    Opening asks the daemon (a stat may be answered from the kernel's cache); other errors
    are for the checks that follow to explain."""
    try:
        os.close(os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC))
    except OSError as exc:
        if exc.errno == errno.ENOTCONN:
            raise OptionError(f"{label} {path}: a dead FUSE mount (its daemon is gone); "
                              f"fusermount3 -u {path} removes it") from None


def mounted_at(path: str) -> str | None:
    """`FSTYPE SOURCE` of what is mounted on `path` (from mountinfo), None if nothing."""
    for mount in mounts():
        if mount.point == path:
            return f"{mount.fstype} {mount.source}"
    return None


def check_frontswap(src: str, paths: list[str]) -> set[tuple[int, int]]:
    """(st_dev, st_ino) of each frontswap= file: a regular file inside SRC (no .., no absolute
    path, no symlink leading out), a whole number of pages; else OptionError naming it."""
    files = set()
    for path in paths:
        label = f"frontswap={path}"
        if os.path.isabs(path) or ".." in path.split("/"):
            raise OptionError(f"{label}: must be a path inside SRC, relative to it (no leading /, no ..)")
        real = os.path.realpath(os.path.join(src, path))
        if os.path.commonpath([src, real]) != src or real == src:
            raise OptionError(f"{label}: leads outside SRC (to {real})")
        try:
            st = os.stat(real)
        except FileNotFoundError:
            raise OptionError(f"{label}: no such file in SRC (make it first: truncate -s 1G {real})") from None
        except OSError as exc:
            raise OptionError(f"{label}: {exc.strerror}") from None
        if stat.S_ISDIR(st.st_mode):
            raise OptionError(f"{label}: a directory, not a swap file")
        if not stat.S_ISREG(st.st_mode):
            raise OptionError(f"{label}: not a regular file")
        if st.st_size == 0 or st.st_size % PAGE_SIZE:
            raise OptionError(f"{label}: its size ({st.st_size} bytes) is not a whole, non-zero number of "
                              f"{PAGE_SIZE}-byte pages")
        files.add((st.st_dev, st.st_ino))
    return files


def lock_memory() -> None:
    """mlock: lock every page the daemon uses, now and later (mlockall), or RuntimeError why not.
    On fault: the page cache's slab reserves address space for all memory, touched only as used."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.mlockall(MCL_CURRENT | MCL_FUTURE | MCL_ONFAULT) != 0:
        code = ctypes.get_errno()
        raise RuntimeError(f"mlock: mlockall failed ({os.strerror(code)}; RLIMIT_MEMLOCK or CAP_IPC_LOCK)")


def check_memory(cache_size: int) -> None:
    """The page cache is one anonymous mapping: if the kernel would refuse it (strict overcommit,
    RLIMIT_AS), say so before mounting rather than fail in the daemon."""
    try:
        mmap.mmap(-1, cache_size).close()
    except OSError as exc:
        raise OptionError(f"cache_size={cache_size}: cannot be allocated ({exc.strerror})") from None


def make_backend(config: MountConfig) -> Backend | None:
    try:
        return registry.build(config.cleancache, config.cc_size, config.backend_options)
    except (TypeError, ValueError, ImportError) as exc:
        raise OptionError(f"cleancache={'+'.join(config.cleancache)}: {exc}") from None


def pool_uuid_of(src: str) -> bytes:
    """The pool uuid kept on SRC (created on first use), as an OptionError if impossible."""
    fd = os.open(src, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        return src_pool_uuid(fd)
    except PoolUuidError as exc:
        raise OptionError(str(exc)) from None
    finally:
        os.close(fd)


def fuse_options(config: MountConfig, src: str) -> set[str]:
    options = set(config.fuse_options)
    if not any(o.startswith("fsname=") for o in options):
        options.add("fsname=" + src.replace("\\", "\\\\").replace(",", "\\,"))
    if not any(o.startswith("subtype=") for o in options):
        options.add("subtype=tmemfs")
    return options


def open_log(foreground: bool, config: MountConfig, mnt: str) -> logging.Handler:
    """The log handler, opened before the daemon forks so that a bad log= is an exit-2 line."""
    try:
        return log_handler(foreground, config.log_file, mnt)
    except OSError as exc:
        if config.log_file:
            raise OptionError(f"log={config.log_file}: {exc.strerror}") from None
        raise OptionError(f"cannot log to {exc.filename or 'syslog'}: {exc.strerror} (give -o log=FILE)") from None


def check_trace(trace_file: str | None) -> None:
    """Create the trace file now (the daemon rewrites it), so that a bad trace= is an exit-2 line."""
    if trace_file:
        try:
            open_private(trace_file, truncate=True).close()
        except OSError as exc:
            raise OptionError(f"trace={trace_file}: {exc.strerror}") from None


class StartupStderr:
    """The daemon's stderr until it is mounted: a temporary file, so that what libfuse or
    fusermount3 prints about a failed mount reaches the terminal through the parent."""

    def __init__(self) -> None:
        self._file = tempfile.TemporaryFile()
        os.dup2(self._file.fileno(), 2)

    def text(self) -> str:
        """What was printed, on one line."""
        self._file.seek(0)
        lines = self._file.read().decode(errors="replace").splitlines()
        return "; ".join(line.strip() for line in lines if line.strip())

    def close(self) -> None:
        """Mounted: from now on stderr goes nowhere (every message goes to the log)."""
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, 2)
        os.close(devnull)
        self._file.close()


def bind_metrics(address: tuple[str, int] | None) -> MetricsServer | None:
    """The metrics= server's socket, bound (it serves once the daemon's loop runs)."""
    if address is None:
        return None
    server = MetricsServer(address)
    try:
        server.bind()
    except OSError as exc:
        raise OptionError(f"metrics={format_address(address)}: {exc.strerror or exc}") from None
    return server


def format_address(address: tuple[str, int] | None) -> str:
    assert address is not None
    host, port = address
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def raise_fd_limit() -> None:
    """One O_PATH descriptor is held per inode the kernel knows: allow many."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


async def open_data_path(config: MountConfig, pagecache: PageCache, cleancache: Cleancache, src: str) -> DataPath:
    """The data path over this mount's pool (on a cluster node, the shared pool of SRC's uuid)."""
    if config.shared and config.pool_uuid is not None:
        pool = await cleancache.init_shared_fs(effective_uuid(config.pool_uuid))
    else:
        pool = await cleancache.init_fs()
    join_wait = float(config.backend_options.get("node_timeout", NODE_TIMEOUT_S))  # type: ignore[arg-type]
    io = SrcIO(threads=config.max_requests)
    data = DataPath(pagecache, cleancache, pool, node=config.shared, join_wait=join_wait, io=io)
    data.frontswap.files = set(config.frontswap_files)
    return data


async def serve(config: MountConfig, backend: Backend | None, src: str, mnt: str,
                ready: Callable[[], None] | None, metrics: MetricsServer | None = None) -> None:
    cleancache = Cleancache(backend, config.cc_timeout)
    pagecache = PageCache(config.cache_size, config.pc_policy)
    tracer = Tracer(config.trace_file, src) if config.trace_file else None
    cleancache.tracer = pagecache.tracer = tracer
    data = await open_data_path(config, pagecache, cleancache, src)
    io = data.io
    if config.mlock:
        lock_memory()
    if not data.coherency.caches:
        log.warning("no shared pool (see above): this cluster node caches nothing until one is registered")
    root_fd = os.open(src, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    logged = request_log.isEnabledFor(logging.DEBUG)  # -d, log_level=debug
    ops = (with_request_log(TmemOperations) if logged else TmemOperations)(root_fd, config, data, src)
    ops.mountpoint = mnt
    ops.ready = ready
    # Signals are caught from before the mount exists, so none can kill us half-mounted.
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGHUP) as signals:
        pyfuse3.init(ops, mnt, fuse_options(config, src))
        ops.max_background = raise_max_background(mnt, config.max_requests)
        poller = RequestPoller(config.poll_us)
        if poller.install():
            ops.poller = poller
            poller.idle = data.reclaim
            poller.requests = io
        io.watch_requests(fuse_device_fd())
        log.info("mounted %s on %s: cleancache=%s cache_size=%d cc_size=%d", src, mnt,
                 "+".join(config.cleancache), config.cache_size, config.cc_size)
        if metrics is not None:
            metrics.start(trio.lowlevel.current_trio_token(), ops.collect_stats)
            log.info("metrics: serving http://%s/metrics", format_address(config.metrics_address))
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(_on_signal, signals)
                cleancache.start(nursery)
                io.start(nursery)
                ops.nursery = nursery
                await pyfuse3.main(max_tasks=config.max_requests)
                nursery.cancel_scope.cancel()
        finally:
            if metrics is not None:
                await trio.to_thread.run_sync(metrics.close)
            poller.uninstall()
            await ops.shutdown()
            io.close()
            await cleancache.unregister()
            pyfuse3.close(unmount=True)
            if tracer is not None:
                tracer.close()
            log.info("unmounted %s", mnt)


async def _on_signal(signals: AsyncIterator[int]) -> None:
    """SIGHUP reopens the log file (logrotate); SIGTERM and SIGINT unmount, and so does SIGHUP
    when there is no log file (a foreground tmemfs whose terminal went away)."""
    async for signum in signals:
        if signum == signal.SIGHUP and reopen_logs():
            log.info("SIGHUP: log file reopened")
            continue
        log.info("%s: unmounting", signal.Signals(signum).name)
        pyfuse3.terminate()
        return


def _notify(fd: int, message: bytes) -> None:
    try:
        os.write(fd, message)
        os.close(fd)
    except OSError:
        pass


_URL_CREDENTIALS = re.compile(r"(cc_store=(?:redis|rediss|unix)://)([^@/,]*)@")


def without_credentials(argv: list[str]) -> tuple[list[str], dict[str, str]]:
    """argv with any password taken out of a cc_store= URL, and the environment
    variables that carry it instead (so it never shows in `ps`)."""
    secrets: dict[str, str] = {}

    def strip(match: re.Match[str]) -> str:
        user, _, password = match.group(2).partition(":")
        if password:
            secrets[PASSWORD_ENV] = urllib.parse.unquote(password)
        return match.group(1) + (f"{user}@" if user else "")

    return [_URL_CREDENTIALS.sub(strip, arg) for arg in argv], secrets


def reexec_without_credentials(argv: list[str]) -> None:
    """Run again with the password in the environment instead of the command line."""
    clean, secrets = without_credentials(argv)
    if not secrets:
        return
    env = {**os.environ, **secrets}
    program = sys.argv[0]
    if os.path.basename(program) == "tmemfs" and os.access(program, os.X_OK):
        os.execve(program, [program, *clean], env)
    os.execve(sys.executable, [sys.executable, "-m", "fusefs.cli", *clean], env)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    foreground = args.foreground or args.debug
    try:
        config = parse_options(args.options, registry.load)
        src, mnt = check_paths(args.src, args.mnt, config.warnings)
        config.frontswap_files = check_frontswap(src, config.frontswap)
        check_memory(config.cache_size)
    except OptionError as exc:
        print(f"tmemfs: {exc}", file=sys.stderr)
        return 2
    reexec_without_credentials(argv)
    metrics: MetricsServer | None = None
    try:
        backend = make_backend(config)
        if backend is not None:
            backend.label = mnt
        if config.shared and config.pool_uuid is None:
            config.pool_uuid = pool_uuid_of(src)
        check_trace(config.trace_file)
        metrics = bind_metrics(config.metrics_address)  # before the fork: a busy port is refused here
        handler = open_log(foreground, config, mnt)  # last: a refused mount leaves no empty log behind
    except OptionError as exc:
        if metrics is not None:
            metrics.close()
        print(f"tmemfs: {exc}", file=sys.stderr)
        return 2
    for warning in config.warnings:
        print(f"tmemfs: warning: {warning}", file=sys.stderr)
    os.umask(0)  # modes arrive already masked by the kernel
    raise_fd_limit()
    setup_logging(handler, logging.DEBUG if args.debug else LEVELS[config.log_level])
    dump_stacks_on_signal(handler)
    if foreground:
        return _run(config, backend, src, mnt, None, metrics)
    read_end, write_end = os.pipe()
    if os.fork():
        os.close(write_end)
        return _wait_mounted(read_end, mnt, handler, config.log_file)
    os.close(read_end)
    os.setsid()
    os.chdir("/")  # as fuse_daemonize(): hold no directory busy (SRC, MNT, log= and trace= are absolute)
    devnull = os.open(os.devnull, os.O_RDWR)
    for std in (0, 1):
        os.dup2(devnull, std)
    os.close(devnull)
    code = _run(config, backend, src, mnt, write_end, metrics)
    os._exit(code)


def _wait_mounted(read_end: int, mnt: str, handler: logging.Handler, log_file: str | None) -> int:
    """The parent: 0 once the daemon is mounted, 1 with its reason (libfuse's own words) if not.

    On success nothing is printed, as mount(8) expects, except where the log went when that is a
    file the user did not name (no syslog): nothing else would tell them."""
    with os.fdopen(read_end, "rb") as pipe:
        status = pipe.read()
    if status != b"ok":
        print(f"tmemfs: mounting {mnt} failed: {status.decode(errors='replace') or 'see the log'}", file=sys.stderr)
        return 1
    if isinstance(handler, LogFile) and not log_file:
        print(f"tmemfs: logging to {handler.path}", file=sys.stderr)
    return 0


def _run(config: MountConfig, backend: Backend | None, src: str, mnt: str, notify_fd: int | None,
         metrics: MetricsServer | None) -> int:
    """Serve until unmounted; a daemon (`notify_fd`) tells its parent whether the mount worked."""
    stderr = StartupStderr() if notify_fd is not None else None

    def mounted() -> None:
        if stderr is not None and notify_fd is not None:
            stderr.close()
            _notify(notify_fd, b"ok")

    try:
        trio.run(serve, config, backend, src, mnt, mounted, metrics)
    except RuntimeError as exc:  # pyfuse3.init could not mount: libfuse printed why
        reason = (stderr.text() if stderr is not None else "") or str(exc)
        log.error("mount failed: %s", reason)
        if notify_fd is not None:
            _notify(notify_fd, reason.encode())
        else:
            print(f"tmemfs: mounting {mnt} failed: {exc}", file=sys.stderr)
        return 1
    except Exception as exc:
        log.exception("tmemfs stopped on an internal error")
        if notify_fd is not None:
            _notify(notify_fd, repr(exc).encode())
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
