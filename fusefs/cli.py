"""The `tmemfs` command: parse, check, mount, then serve (in the background by default)."""

from __future__ import annotations

import argparse
import logging
import logging.handlers
import os
import re
import resource
import signal
import sys
import urllib.parse
from collections.abc import AsyncIterator
from typing import NoReturn

import pyfuse3
import trio

from backends import registry
from backends.base import Backend
from backends.cluster import NODE_TIMEOUT_S, PASSWORD_ENV
from fusefs import __version__
from fusefs.cleancache import Cleancache
from fusefs.datapath import DataPath
from fusefs.operations import TmemOperations
from fusefs.options import CORE_HELP, MountConfig, OptionError, parse_options
from fusefs.pagecache import PageCache
from fusefs.polling import RequestPoller, fuse_device_fd
from fusefs.pooluuid import PoolUuidError, effective_uuid, src_pool_uuid
from fusefs.srcio import SrcIO, slow_metadata
from fusefs.tracing import Tracer

log = logging.getLogger("tmemfs")

USAGE = "tmemfs SRC MNT [-o opt[,opt...]] [-f] [-d] [--help] [--version]"


def manual() -> str:
    """The --help text, in the shape of a man page."""
    core = "\n".join(f"    {k:<28} {v}" for k, v in CORE_HELP.items())
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

    Mounts of one SRC with cleancache=cluster are the nodes of a cluster and
    stay coherent (docs/coherency.md). A node that has not joined its pool
    yet reads SRC uncached and holds its changes until it has joined; after
    node_timeout they fail with EIO, SRC untouched.

    Without -f, tmemfs returns once the mount answers requests, so MNT is
    usable as soon as the command exits.

OPTIONS
    -o opt[,opt...]  mount options (below); may be repeated
    -f, --foreground stay in the foreground, log to stderr
    -d, --debug      debug logging (implies -f)
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
    flush            empty the cleancache pool
    reset_stats      zero the counters
    register NAME[+NAME] [cc_size=SIZE] [opt=value ...]
                     make a backend live (refused with EBUSY if one is)
    replace NAME[+NAME] [opts]
                     flush and close the live backend, then register another
    unregister       flush and close the live backend; reads go on from SRC

FILES
    MNT/.tmemfs/stats, MNT/.tmemfs/stats.json, MNT/.tmemfs/control

EXIT STATUS
    0 mounted (or unmounted cleanly with -f); 1 the mount failed;
    2 bad command line, option or path (nothing was mounted).

EXAMPLES
    tmemfs /srv/data /mnt/data -o cleancache=zcache,cache_size=64M,cc_size=256M
    tmemfs /srv/data /mnt/data -o cleancache=zcache+tmem     # overflow of zcache goes to tmem
    tmemfs /srv/data /mnt/node1 -o cleancache=cluster       # every cluster mount of /srv/data
    tmemfs /srv/data /mnt/node2 -o cleancache=cluster       #   shares one coherent pool
    tmemfs /srv/data /mnt/a -o cleancache=zcache+cluster,cc_store=redis://10.0.0.5/0,cc_store_password_file=/etc/tmemfs/pw
    cat /mnt/data/.tmemfs/stats
    echo drop_caches > /mnt/data/.tmemfs/control
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


def check_paths(src: str, mnt: str) -> tuple[str, str]:
    """Absolute SRC and MNT, or OptionError if mounting them would be wrong."""
    src_real, mnt_real = os.path.realpath(src), os.path.realpath(mnt)
    if not os.path.isdir(src_real):
        raise OptionError(f"SRC {src}: {'not a directory' if os.path.exists(src_real) else 'no such directory'}")
    if not os.path.isdir(mnt_real):
        raise OptionError(f"MNT {mnt}: {'not a directory' if os.path.exists(mnt_real) else 'no such directory'}")
    if src_real == mnt_real:
        raise OptionError(f"SRC and MNT are the same directory ({src_real})")
    if os.path.commonpath([src_real, mnt_real]) == src_real:
        raise OptionError(f"MNT {mnt} is inside SRC {src}: tmemfs would see itself")
    try:
        if os.listdir(mnt_real):
            raise OptionError(f"MNT {mnt}: not empty")
    except OSError as exc:
        raise OptionError(f"MNT {mnt}: {exc.strerror} (a dead mount? fusermount3 -u {mnt})") from None
    return src_real, mnt_real


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


def setup_logging(foreground: bool, debug: bool, log_file: str | None) -> None:
    handler: logging.Handler
    if log_file:
        handler = logging.FileHandler(log_file)
    elif foreground:
        handler = logging.StreamHandler(sys.stderr)
    elif os.path.exists("/dev/log"):
        handler = logging.handlers.SysLogHandler("/dev/log")
    else:
        handler = logging.NullHandler()
    fmt = "%(asctime)s tmemfs[%(process)d] %(levelname)s %(name)s: %(message)s"
    handler.setFormatter(logging.Formatter(fmt))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.DEBUG if debug else logging.INFO)
    if not debug:
        logging.getLogger("pyfuse3").setLevel(logging.WARNING)


def raise_fd_limit() -> None:
    """One O_PATH descriptor is held per inode the kernel knows: allow many."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


async def serve(config: MountConfig, backend: Backend | None, src: str, mnt: str,
                notify_fd: int | None) -> None:
    cleancache = Cleancache(backend, config.cc_timeout)
    pagecache = PageCache(config.cache_size, config.pc_policy)
    tracer = Tracer(config.trace_file, src) if config.trace_file else None
    cleancache.tracer = pagecache.tracer = tracer
    if config.shared and config.pool_uuid is not None:
        pool = await cleancache.init_shared_fs(effective_uuid(config.pool_uuid))
    else:
        pool = await cleancache.init_fs()
    join_wait = float(config.backend_options.get("node_timeout", NODE_TIMEOUT_S))  # type: ignore[arg-type]
    io = SrcIO(threads=config.max_requests, slow_metadata=slow_metadata(src))
    data = DataPath(pagecache, cleancache, pool, node=config.shared, join_wait=join_wait, io=io)
    if not data.coherency.caches:
        log.warning("no shared pool (see above): this cluster node caches nothing until one is registered")
    root_fd = os.open(src, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    ops = TmemOperations(root_fd, config, data, src)
    ops.mountpoint = mnt
    if notify_fd is not None:
        ops.ready = lambda: _notify(notify_fd, b"ok")
    # Signals are caught from before the mount exists, so none can kill us half-mounted.
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGHUP) as signals:
        pyfuse3.init(ops, mnt, fuse_options(config, src))
        poller = RequestPoller(config.poll_us)
        if poller.install():
            ops.poller = poller
            poller.idle = data.reclaim
            poller.in_flight = lambda: io.in_flight
        io.watch_requests(fuse_device_fd())
        log.info("mounted %s on %s: cleancache=%s cache_size=%d cc_size=%d", src, mnt,
                 "+".join(config.cleancache), config.cache_size, config.cc_size)
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(_stop_on_signal, signals)
                cleancache.start(nursery)
                io.start(nursery)
                ops.nursery = nursery
                await pyfuse3.main(max_tasks=config.max_requests)
                nursery.cancel_scope.cancel()
        finally:
            poller.uninstall()
            await ops.shutdown()
            io.close()
            await cleancache.unregister()
            pyfuse3.close(unmount=True)
            if tracer is not None:
                tracer.close()
            log.info("unmounted %s", mnt)


async def _stop_on_signal(signals: AsyncIterator[int]) -> None:
    async for signum in signals:
        log.info("signal %d: unmounting", signum)
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
    try:
        config = parse_options(args.options, registry.load)
        src, mnt = check_paths(args.src, args.mnt)
        backend = make_backend(config)
        if config.shared and config.pool_uuid is None:
            config.pool_uuid = pool_uuid_of(src)
    except OptionError as exc:
        print(f"tmemfs: {exc}", file=sys.stderr)
        return 2
    reexec_without_credentials(argv)
    foreground = args.foreground or args.debug
    os.umask(0)  # modes arrive already masked by the kernel
    raise_fd_limit()
    if foreground:
        setup_logging(True, args.debug, config.log_file)
        return _run(config, backend, src, mnt, None)
    read_end, write_end = os.pipe()
    if os.fork():
        os.close(write_end)
        with os.fdopen(read_end, "rb") as pipe:
            status = pipe.read()
        if status == b"ok":
            return 0
        print(f"tmemfs: mounting {mnt} failed: {status.decode(errors='replace') or 'see the log'}",
              file=sys.stderr)
        return 1
    os.close(read_end)
    os.setsid()
    setup_logging(False, False, config.log_file)
    devnull = os.open(os.devnull, os.O_RDWR)
    for std in (0, 1, 2):  # errors reach the parent through the pipe, and the log
        os.dup2(devnull, std)
    code = _run(config, backend, src, mnt, write_end)
    os._exit(code)


def _run(config: MountConfig, backend: Backend | None, src: str, mnt: str, notify_fd: int | None) -> int:
    try:
        trio.run(serve, config, backend, src, mnt, notify_fd)
    except RuntimeError as exc:  # pyfuse3.init could not mount
        log.error("mount failed: %s", exc)
        if notify_fd is not None:
            _notify(notify_fd, str(exc).encode())
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
