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
from fusefs.logs import LEVELS
from fusefs.metrics import parse_metrics_address
from fusefs.pooluuid import parse_pool_uuid

PASS_THROUGH_FLAGS = {"allow_other", "allow_root", "default_permissions", "ro", "noatime",
                      "auto_unmount", "nodev", "nosuid", "noexec", "dev", "suid", "exec",
                      "atime", "sync", "async", "dirsync"}
PASS_THROUGH_VALUES = {"fsname", "subtype"}
IGNORED_FLAGS = {"rw", "defaults", "auto", "noauto", "user", "nouser", "users", "_netdev",
                 "nofail", "relatime", "strictatime", "lazytime", "nolazytime", "owner", "group"}
IGNORED_PREFIXES = ("x-", "comment=")


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


def need(key: str, value: str | None) -> str:
    """The value of a key that must have one."""
    if value is None or value == "":
        raise OptionError(f"{key}: needs a value ({key}=...)")
    return value


def _flag(key: str, value: str | None, _config: MountConfig) -> bool:
    """A key that only switches something on."""
    if value is not None:
        raise OptionError(f"{key}={value}: {key} takes no value")
    return True


def _backend_names(key: str, value: str | None, _config: MountConfig) -> list[str]:
    names = need(key, value).split("+")
    if any(not n for n in names):
        raise OptionError(f"cleancache={value}: empty backend name")
    return names


def _cache_size(key: str, value: str | None, config: MountConfig) -> int:
    """The page cache is memory: at least one page, at most this machine's."""
    size = parse_size(key, need(key, value))
    if size < PAGE_SIZE:
        raise OptionError(f"cache_size={value}: must be at least one page ({PAGE_SIZE} bytes)")
    if size > physical_memory():
        raise OptionError(f"cache_size={value}: more than this machine's memory "
                          f"({physical_memory() / (1 << 30):.1f}G)")
    return whole_pages(key, need(key, value), size, config.warnings)


def _cc_size(key: str, value: str | None, _config: MountConfig) -> int:
    """Only parsed here: checked (check_cc_size) once every option has said which backend it is for."""
    return parse_size(key, need(key, value))


def _seconds(key: str, value: str | None, _config: MountConfig) -> float:
    return parse_seconds(key, need(key, value))


def _pool_uuid(key: str, value: str | None, _config: MountConfig) -> bytes:
    try:
        return parse_pool_uuid(need(key, value))
    except ValueError as exc:
        raise OptionError(str(exc)) from None


def _pc_policy(key: str, value: str | None, _config: MountConfig) -> str:
    from backends.eviction import POLICIES

    policy = need(key, value)
    if policy not in POLICIES:
        raise OptionError(f"pc_policy={value}: unknown policy (known: {', '.join(POLICIES)})")
    return policy


def _backing_direct(_key: str, value: str | None, _config: MountConfig) -> bool:
    if value not in ("cached", "direct"):
        raise OptionError(f"backing_io={value}: must be cached or direct")
    return value == "direct"


def _poll_us(key: str, value: str | None, _config: MountConfig) -> int:
    return parse_poll_us(need(key, value))


def _max_requests(key: str, value: str | None, _config: MountConfig) -> int:
    return parse_max_requests(need(key, value))


def _absolute_path(key: str, value: str | None, _config: MountConfig) -> str:
    """A file the daemon opens: absolute, as the daemon runs in /."""
    return os.path.abspath(need(key, value))


def _log_level(key: str, value: str | None, _config: MountConfig) -> str:
    level = need(key, value).lower()
    if level not in LEVELS:
        raise OptionError(f"log_level={value}: must be one of {', '.join(LEVELS)}")
    return level


def _metrics_address(key: str, value: str | None, _config: MountConfig) -> tuple[str, int]:
    try:
        return parse_metrics_address(need(key, value))
    except ValueError as exc:
        raise OptionError(str(exc)) from None  # (it names metrics=VALUE)


def _more_frontswap(key: str, value: str | None, config: MountConfig) -> list[str]:
    """frontswap= is repeatable: its paths add to those given before."""
    paths = need(key, value).split(":")
    if not all(paths):
        raise OptionError(f"frontswap={value}: empty path")
    return config.frontswap + paths


@dataclass(frozen=True)
class CoreOption:
    """One of tmemfs's own keys: the MountConfig field it sets, how, and what --help says of it."""

    usage: str  # the key, then =VALUE unless it is a flag
    target: str
    parse: Callable[[str, str | None, MountConfig], object]  # (key, value, config so far) -> the field's value
    help: str

    @property
    def key(self) -> str:
        return self.usage.partition("=")[0]


CORE_OPTIONS = {option.key: option for option in (  # in the order --help lists them
    CoreOption("cleancache=NAME[+NAME...]", "cleancache", _backend_names,
               "backend, or a chain tried in order (`tmemctl backends` lists them); default zcache"),
    CoreOption("cache_size=SIZE", "cache_size", _cache_size,
               "page cache size (K/M/G/T suffixes, powers of 1024); default 64M"),
    CoreOption("cc_size=SIZE", "cc_size", _cc_size, "cleancache backend capacity; default 256M"),
    CoreOption("kernel_cache", "kernel_cache", _flag,
               "let the kernel cache file data too (no direct_io): faster re-reads, "
               "shared writable mmap, but tmemfs sees fewer reads"),
    CoreOption("attr_timeout=SECS", "attr_timeout", _seconds,
               "how long the kernel trusts attributes; default 1 (0 on cluster nodes)"),
    CoreOption("entry_timeout=SECS", "entry_timeout", _seconds,
               "how long the kernel trusts name lookups; default 1 (0 on cluster nodes)"),
    CoreOption("pool_uuid=32HEX", "pool_uuid", _pool_uuid,
               "the shared pool's 16-byte uuid (cluster); default: kept on SRC's root in the "
               "user.tmemfs.pool_uuid attribute, created once; all ones (ff...ff) = private"),
    CoreOption("pc_policy=NAME", "pc_policy", _pc_policy,
               "page cache eviction policy: lru (default), sieve, s3fifo, arc"),
    CoreOption("cc_timeout=SECS", "cc_timeout", _seconds,
               "longest wait for a backend that does I/O; then it is a miss; default 1"),
    CoreOption("backing_io=cached|direct", "backing_direct", _backing_direct,
               "read SRC through the host page cache or with O_DIRECT (real disk reads); default cached"),
    CoreOption("poll_us=N", "poll_us", _poll_us,
               "after each request, poll for the next one for up to N microseconds before "
               "sleeping: much lower latency, up to one CPU spent while busy; 0 = off; default 50"),
    CoreOption("max_requests=N", "max_requests", _max_requests,
               "FUSE requests served at once (1 = one at a time, as before); blocking calls on "
               "SRC run off the loop while others wait; the kernel lets as many asynchronous "
               "requests in at once (max_background through fusectl, root only, at least 12); "
               "default 16"),
    CoreOption("log=FILE", "log_file", _absolute_path,
               "log file (created 0600; SIGHUP reopens it); default: stderr with -f, else syslog, "
               "else a file named after MNT (see FILES)"),
    CoreOption("log_level=LEVEL", "log_level", _log_level,
               "debug, info (default), warning or error; debug logs every request, as -d does, "
               "but in the background too"),
    CoreOption("metrics=HOST:PORT", "metrics_address", _metrics_address,
               "serve the counters for Prometheus at http://HOST:PORT/metrics (e.g. "
               "127.0.0.1:9567; [::1]:9567); a busy port is refused before mounting"),
    CoreOption("frontswap=RELPATH[:RELPATH...]", "frontswap", _more_frontswap,
               "files of SRC (each a whole number of 4 KiB pages) that are swap areas: "
               "their pages go to a persistent pool of the backend, ahead of cleancache "
               "(swapon a loop device on MNT/RELPATH); repeatable"),
    CoreOption("mlock", "mlock", _flag,
               "lock the daemon's memory as it is used (mlockall): it is never swapped out, least of all "
               "through itself (frontswap=); cache_size cannot shrink on the live mount then"),
    CoreOption("trace=FILE", "trace_file", _absolute_path,
               "record page-level events (hit, miss, get, put, invalidate) for tools/trace.py (created 0600)"),
)}


def parse_options(groups: list[str], load_backend: Callable[[str], type[Backend]] | None = None) -> MountConfig:
    """Validate every option; `load_backend` finds a backend class by name (KeyError if none)."""
    config = MountConfig()
    given: dict[str, str | None] = {}  # tmemfs's own keys the command line set, with their last value
    deferred: list[tuple[str, str | None]] = []  # the backends' keys, or unknown ones
    for key, value in split_options(groups):
        option = CORE_OPTIONS.get(key)
        if option is not None:
            setattr(config, option.target, option.parse(key, value, config))
            given[key] = value
        elif not _fuse_option(config, key, value):
            deferred.append((key, value))
    cc_size = given.get("cc_size")
    if cc_size is not None:
        config.cc_size = check_cc_size(config.cleancache, cc_size, config.cc_size, config.warnings)
    if load_backend is not None:
        _parse_backends(config, deferred, load_backend)
    elif deferred:
        raise OptionError(f"{deferred[0][0]}: unknown option (see tmemfs --help)")
    if config.shared:
        _as_cluster_node(config, given)
    return config


def _fuse_option(config: MountConfig, key: str, value: str | None) -> bool:
    """Take a FUSE or mount(8) key: passed through to FUSE or ignored; False if it is none of them."""
    if key in PASS_THROUGH_FLAGS:
        _flag(key, value, config)
        config.fuse_options.add(key)
    elif key in PASS_THROUGH_VALUES:
        config.fuse_options.add(f"{key}={need(key, value)}")
    elif not (key in IGNORED_FLAGS or key.startswith(IGNORED_PREFIXES) or f"{key}=".startswith(IGNORED_PREFIXES)):
        return False
    return True


def _parse_backends(config: MountConfig, items: list[tuple[str, str | None]],
                    load_backend: Callable[[str], type[Backend]]) -> None:
    """The chosen backends' own options, whether they make this mount a cluster node, and
    whether they can hold frontswap's pages."""
    config.backend_options = parse_backend_options(config.cleancache, items, load_backend)
    config.shared = any(load_backend(n).shared for n in config.cleancache if n != "none")
    if config.frontswap:
        check_frontswap_backend(config.frontswap, config.cleancache, load_backend)


def _as_cluster_node(config: MountConfig, given: dict[str, str | None]) -> None:
    """A cluster node must not trust the kernel's caches of data or attributes: other nodes
    change files without this kernel knowing (docs/coherency.md)."""
    if config.kernel_cache:
        raise OptionError(f"kernel_cache: not with cleancache={'+'.join(config.cleancache)} "
                          "(the kernel would serve data other nodes have changed)")
    for key in ("attr_timeout", "entry_timeout"):
        if key not in given:
            setattr(config, key, 0.0)


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
        text = need(key, value)
        try:
            options[key] = spec.parse(text)
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
