"""Mount options: tmemfs's own keys, backend keys, and the FUSE/mount(8) ones.

tmemfs's keys are removed before pyfuse3.init (libfuse rejects keys it does
not know); the FUSE keys pass through; the generic keys mount.fuse3 and
fstab add are mapped or ignored. Anything else is an error naming the key.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from dataclasses import dataclass, field

from backends.base import Backend, physical_memory, size_in_bytes
from fusefs import PAGE_SIZE
from fusefs.metrics import parse_metrics_address
from fusefs.pooluuid import parse_pool_uuid

PASS_THROUGH_FLAGS = {"allow_other", "allow_root", "default_permissions", "ro", "noatime",
                      "auto_unmount", "nodev", "nosuid", "noexec", "dev", "suid", "exec",
                      "atime", "sync", "async", "dirsync"}
PASS_THROUGH_VALUES = {"fsname", "subtype"}
IGNORED_FLAGS = {"rw", "defaults", "auto", "noauto", "user", "nouser", "users", "_netdev",
                 "nofail", "relatime", "strictatime", "lazytime", "nolazytime", "owner", "group"}
IGNORED_PREFIXES = ("x-", "comment=")


CORE_HELP = {
    "cleancache=NAME[+NAME...]": "backend, or a chain tried in order (`tmemctl backends` lists them); "
                                 "default zcache",
    "cache_size=SIZE": "page cache size (K/M/G/T suffixes, powers of 1024); default 64M",
    "cc_size=SIZE": "cleancache backend capacity; default 256M",
    "kernel_cache": "let the kernel cache file data too (no direct_io): faster re-reads, "
                    "shared writable mmap, but tmemfs sees fewer reads",
    "attr_timeout=SECS": "how long the kernel trusts attributes; default 1 (0 on cluster nodes)",
    "entry_timeout=SECS": "how long the kernel trusts name lookups; default 1 (0 on cluster nodes)",
    "pool_uuid=32HEX": "the shared pool's 16-byte uuid (cluster); default: kept on SRC's root in the "
                       "user.tmemfs.pool_uuid attribute, created once; all ones (ff...ff) = private",
    "pc_policy=NAME": "page cache eviction policy: lru (default), sieve, s3fifo, arc",
    "cc_timeout=SECS": "longest wait for a backend that does I/O; then it is a miss; default 1",
    "backing_io=cached|direct": "read SRC through the host page cache or with O_DIRECT "
                                "(real disk reads); default cached",
    "poll_us=N": "after each request, poll for the next one for up to N microseconds before "
                 "sleeping: much lower latency, up to one CPU spent while busy; 0 = off; default 50",
    "max_requests=N": "FUSE requests served at once (1 = one at a time, as before); blocking calls on "
                      "SRC run off the loop while others wait; default 16",
    "log=FILE": "log file (created 0600; SIGHUP reopens it); default: stderr with -f, else syslog, "
                "else a file named after MNT (see FILES)",
    "log_level=LEVEL": "debug, info (default), warning or error; debug logs every request, as -d does, "
                       "but in the background too",
    "metrics=HOST:PORT": "serve the counters for Prometheus at http://HOST:PORT/metrics (e.g. "
                         "127.0.0.1:9567; [::1]:9567); a busy port is refused before mounting",
    "frontswap=RELPATH[:RELPATH...]": "files of SRC (each a whole number of 4 KiB pages) that are swap areas: "
                                      "their pages go to a persistent pool of the backend, ahead of cleancache "
                                      "(swapon a loop device on MNT/RELPATH); repeatable",
    "mlock": "lock the daemon's memory as it is used (mlockall): it is never swapped out, least of all "
             "through itself (frontswap=); cache_size cannot shrink on the live mount then",
    "trace=FILE": "record page-level events (hit, miss, get, put, invalidate) for tools/trace.py "
                  "(created 0600)",
}


class OptionError(ValueError):
    """A bad mount option; the message names it, on one line (control characters escaped)."""

    def __str__(self) -> str:
        text = super().__str__()
        return text if text.isprintable() else "".join(c if c.isprintable() else ascii(c)[1:-1] for c in text)


def parse_size(key: str, text: str) -> int:
    try:
        return size_in_bytes(text)
    except ValueError as exc:
        raise OptionError(f"{key}={text}: {exc}") from None


def whole_pages(key: str, text: str, size: int, warnings: list[str]) -> int:
    """`size` rounded down to whole pages (caches hold pages), with a warning if that changed it:
    down, so that a size is never more memory than the user allowed."""
    rounded = size - size % PAGE_SIZE
    if rounded != size:
        warnings.append(f"{key}={text}: rounded down to {rounded} bytes (a whole number of {PAGE_SIZE}-byte pages)")
    return rounded


def parse_seconds(key: str, text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise OptionError(f"{key}={text}: not a number of seconds") from None
    if not 0 <= value <= 86400 * 365:
        raise OptionError(f"{key}={text}: must be between 0 and one year")
    return value


MAX_REQUESTS = 256


def parse_max_requests(text: str) -> int:
    if not text.isdigit() or not 1 <= int(text) <= MAX_REQUESTS:
        raise OptionError(f"max_requests={text}: must be a whole number from 1 to {MAX_REQUESTS}")
    return int(text)


def parse_poll_us(text: str) -> int:
    from fusefs.polling import MAX_POLL_US

    if not text.isdigit() or int(text) > MAX_POLL_US:
        raise OptionError(f"poll_us={text}: must be a whole number of microseconds from 0 to {MAX_POLL_US}")
    return int(text)


@dataclass
class MountConfig:
    """Everything the command line decided, validated."""

    cleancache: list[str] = field(default_factory=lambda: ["zcache"])
    cache_size: int = 64 << 20
    cc_size: int = 256 << 20
    kernel_cache: bool = False
    attr_timeout: float = 1.0
    entry_timeout: float = 1.0
    pc_policy: str = "lru"
    cc_timeout: float = 1.0
    backing_direct: bool = False
    poll_us: int = 50
    max_requests: int = 16  # measured: see README, Performance
    log_file: str | None = None
    log_level: str = "info"
    trace_file: str | None = None
    metrics_address: tuple[str, int] | None = None  # metrics=: where the daemon serves Prometheus scrapes
    pool_uuid: bytes | None = None
    frontswap: list[str] = field(default_factory=list)  # frontswap=: swap files, relative to SRC
    frontswap_files: set[tuple[int, int]] = field(default_factory=set)  # their (st_dev, st_ino), at mount
    mlock: bool = False
    shared: bool = False  # a backend with shared pools (cluster): this mount is a cluster node
    fuse_options: set[str] = field(default_factory=lambda: {"default_permissions"})
    backend_options: dict[str, object] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)  # for stderr: the mount goes ahead


def split_options(groups: list[str]) -> list[tuple[str, str | None]]:
    """`-o a,b=c -o d` -> [(a, None), (b, c), (d, None)]; a backslash escapes a comma."""
    out: list[tuple[str, str | None]] = []
    for group in groups:
        for item in re.split(r"(?<!\\),", group):
            item = item.replace("\\,", ",").strip()
            if not item:
                continue
            key, sep, value = item.partition("=")
            out.append((key, value if sep else None))
    return out


def parse_options(groups: list[str], load_backend: Callable[[str], type[Backend]] | None = None) -> MountConfig:
    """Validate every option; `load_backend` finds a backend class by name (KeyError if none)."""
    from backends.eviction import POLICIES
    from fusefs.logs import LEVELS

    config = MountConfig()
    explicit: set[str] = set()
    items = split_options(groups)
    deferred: list[tuple[str, str | None]] = []
    cc_size: tuple[str, int] | None = None

    def need(key: str, value: str | None) -> str:
        if value is None or value == "":
            raise OptionError(f"{key}: needs a value ({key}=...)")
        return value

    def flag(key: str, value: str | None) -> None:
        if value is not None:
            raise OptionError(f"{key}={value}: {key} takes no value")

    for key, value in items:
        if key == "cleancache":
            names = need(key, value).split("+")
            if any(not n for n in names):
                raise OptionError(f"cleancache={value}: empty backend name")
            config.cleancache = names
        elif key == "cache_size":
            size = parse_size(key, need(key, value))
            if size < PAGE_SIZE:
                raise OptionError(f"cache_size={value}: must be at least one page ({PAGE_SIZE} bytes)")
            if size > physical_memory():  # the page cache is memory: more cannot be had
                raise OptionError(f"cache_size={value}: more than this machine's memory "
                                  f"({physical_memory() / (1 << 30):.1f}G)")
            config.cache_size = whole_pages(key, need(key, value), size, config.warnings)
        elif key == "cc_size":
            cc_size = (need(key, value), parse_size(key, need(key, value)))  # checked once cleancache= is known
        elif key == "kernel_cache":
            flag(key, value)
            config.kernel_cache = True
        elif key == "mlock":
            flag(key, value)
            config.mlock = True
        elif key == "frontswap":
            paths = need(key, value).split(":")
            if not all(paths):
                raise OptionError(f"frontswap={value}: empty path")
            config.frontswap += paths
        elif key in ("attr_timeout", "entry_timeout", "cc_timeout"):
            setattr(config, key, parse_seconds(key, need(key, value)))
            explicit.add(key)
        elif key == "pool_uuid":
            try:
                config.pool_uuid = parse_pool_uuid(need(key, value))
            except ValueError as exc:
                raise OptionError(str(exc)) from None
        elif key == "pc_policy":
            if need(key, value) not in POLICIES:
                raise OptionError(f"pc_policy={value}: unknown policy (known: {', '.join(POLICIES)})")
            config.pc_policy = value  # type: ignore[assignment]
        elif key == "backing_io":
            if value not in ("cached", "direct"):
                raise OptionError(f"backing_io={value}: must be cached or direct")
            config.backing_direct = value == "direct"
        elif key == "poll_us":
            config.poll_us = parse_poll_us(need(key, value))
        elif key == "max_requests":
            config.max_requests = parse_max_requests(need(key, value))
        elif key == "log":
            config.log_file = os.path.abspath(need(key, value))  # the daemon runs in /
        elif key == "log_level":
            level = need(key, value).lower()
            if level not in LEVELS:
                raise OptionError(f"log_level={value}: must be one of {', '.join(LEVELS)}")
            config.log_level = level
        elif key == "trace":
            config.trace_file = os.path.abspath(need(key, value))
        elif key == "metrics":
            try:
                config.metrics_address = parse_metrics_address(need(key, value))
            except ValueError as exc:
                raise OptionError(str(exc)) from None  # (it names metrics=VALUE)
        elif key in PASS_THROUGH_FLAGS:
            flag(key, value)
            config.fuse_options.add(key)
        elif key in PASS_THROUGH_VALUES:
            config.fuse_options.add(f"{key}={need(key, value)}")
        elif key in IGNORED_FLAGS or key.startswith(IGNORED_PREFIXES) or f"{key}=".startswith(IGNORED_PREFIXES):
            continue
        else:
            deferred.append((key, value))

    if cc_size is not None:
        config.cc_size = check_cc_size(config.cleancache, *cc_size, config.warnings)
    if load_backend is not None:
        config.backend_options = parse_backend_options(config.cleancache, deferred, load_backend)
        config.shared = any(load_backend(n).shared for n in config.cleancache if n != "none")
        if config.frontswap:
            check_frontswap_backend(config.frontswap, config.cleancache, load_backend)
    elif deferred:
        raise OptionError(f"{deferred[0][0]}: unknown option (see tmemfs --help)")
    if config.shared:
        # A cluster node must not trust the kernel's caches of data or attributes:
        # other nodes change files without this kernel knowing (docs/coherency.md).
        if config.kernel_cache:
            raise OptionError(f"kernel_cache: not with cleancache={'+'.join(config.cleancache)} "
                              "(the kernel would serve data other nodes have changed)")
        for key in ("attr_timeout", "entry_timeout"):
            if key not in explicit:
                setattr(config, key, 0.0)
    return config


def check_frontswap_backend(paths: list[str], names: list[str],
                            load_backend: Callable[[str], type[Backend]]) -> None:
    """Swap pages need a backend that keeps persistent pages (every member of a chain)."""
    chain = "+".join(names)
    if names == ["none"]:
        raise OptionError(f"frontswap={':'.join(paths)}: needs a backend to hold the swap pages, "
                          "not cleancache=none (use tmem, zcache, dedup or a chain of them)")
    for name in names:
        if not load_backend(name).persistent_pools:
            raise OptionError(f"frontswap={':'.join(paths)}: cleancache={chain}: {name} cannot hold swap pages "
                              "(no persistent pools; use tmem, zcache, dedup or a chain of them)")


def check_cc_size(names: list[str], text: str, size: int, warnings: list[str]) -> int:
    """cc_size in whole pages; less than a page would refuse every put, so it is an error
    unless there is no backend at all."""
    if names == ["none"]:
        return size
    if size < PAGE_SIZE:
        raise OptionError(f"cc_size={text}: must be at least one page ({PAGE_SIZE} bytes) "
                          f"with cleancache={'+'.join(names)}")
    return whole_pages("cc_size", text, size, warnings)


def parse_backend_options(names: list[str], items: list[tuple[str, str | None]],
                          load_backend: Callable[[str], type[Backend]]) -> dict[str, object]:
    """Options the chosen backends declare (cc_policy=, zc_max=, ...), parsed."""
    from backends.registry import NONE

    specs = {}
    for name in names:
        if name == NONE:
            if len(names) > 1:
                raise OptionError(f"cleancache={'+'.join(names)}: `none` cannot be part of a chain")
            continue
        try:
            specs.update(load_backend(name).options)
        except KeyError:
            raise OptionError(f"cleancache={'+'.join(names)}: unknown backend {name!r} "
                              "(`tmemctl backends` lists them)") from None
        except ImportError as exc:
            raise OptionError(f"cleancache={name}: the backend cannot be loaded ({exc})") from None
    options: dict[str, object] = {}
    for key, value in items:
        spec = specs.get(key)
        if spec is None:
            raise OptionError(unknown_option(key, names, load_backend))
        if not value:
            raise OptionError(f"{key}: needs a value ({key}=...)")
        try:
            options[key] = spec.parse(value)
        except ValueError as exc:
            raise OptionError(f"{key}={value}: {exc}") from None
    return options


def unknown_option(key: str, names: list[str], load_backend: Callable[[str], type[Backend]]) -> str:
    """Why `key` is refused: an option of another installed backend says which one."""
    from backends.registry import NONE, available

    owners = []
    for name in available():
        if name == NONE:
            continue
        try:
            if key in load_backend(name).options:
                owners.append(name)
        except (KeyError, ImportError):  # a broken plugin cannot own the option
            continue
    if owners:
        return (f"{key}: an option of {' or '.join(f'cleancache={o}' for o in owners)}, "
                f"not of cleancache={'+'.join(names)}")
    return f"{key}: unknown option (see tmemfs --help)"


def parse_register(words: list[str], cc_size: int,
                   load_backend: Callable[[str], type[Backend]]) -> tuple[list[str], int, dict[str, object]]:
    """`NAME[+NAME] [cc_size=SIZE] [key=value ...]` of the register/replace commands."""
    if not words:
        raise OptionError("register needs a backend name")
    names = words[0].split("+")
    items: list[tuple[str, str | None]] = []
    for word in words[1:]:
        key, sep, value = word.partition("=")
        if key == "cc_size":
            cc_size = check_cc_size(names, value, parse_size(key, value), [])  # (rounded down to pages)
        else:
            items.append((key, value if sep else None))
    if names == ["none"]:
        raise OptionError("register none: use unregister")
    return names, cc_size, parse_backend_options(names, items, load_backend)
