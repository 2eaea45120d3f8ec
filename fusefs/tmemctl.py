"""`tmemctl`: read a tmemfs mount's counters and send it control commands.

Talks to MNT/.tmemfs/stats.json and MNT/.tmemfs/control only, so it works
for any user who can see the mount (commands need root or the mount owner).
The host pool commands (host, take-back, give-back) open the host's store
itself: a donor takes memory back without asking any client.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import datetime
import errno
import json
import math
import os
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn

from fusefs import __version__, counters

if TYPE_CHECKING:
    from backends.hoststore import HostStore

DESCRIPTION = """Read a tmemfs mount's counters and send it control commands.
Each command has its own help: tmemctl COMMAND --help."""

EPILOG = """Control commands need root or the owner of the mount; a refused one prints the
daemon's reason. Counters are read from MNT/.tmemfs/stats.json, so any user who
can see the mount can read them.

Exit status: 0 success, 1 the command failed (or the mount went away, or there
is no such host pool), 2 bad usage or MNT is not a tmemfs mount."""

# tmemctl subcommand -> (control command, help)
COMMANDS = {
    "drop-caches": ("drop_caches", "evict every page from the page cache (each is put into cleancache)"),
    "flush": ("flush", "empty the cleancache pool (frontswap areas: their pages are written back to SRC first)"),
    "reset-stats": ("reset_stats", "zero the counters"),
    "unregister": ("unregister",
                   "flush and close the live backend (frontswap pages go back to SRC first); reads go on from SRC"),
}
MAX_SECONDS = 86400.0  # an interval longer than a day is a typo
RATE_KEYS = ("succ_gets", "failed_gets", "puts", "invalidates", "pagecache.hits", "pagecache.misses",
             "backing.reads", "backing.read_bytes", "backing.writes", "backing.write_bytes")


class NotTmemfs(Exception):
    pass


def control_dir(mnt: str) -> Path:
    path = Path(mnt) / ".tmemfs"
    try:
        if (path / "stats.json").is_file():
            return path
    except OSError as exc:
        raise NotTmemfs(f"{mnt}: {exc.strerror} (a dead mount? fusermount3 -u {mnt})") from None
    raise NotTmemfs(f"{mnt}: not a tmemfs mount (no {path}/stats.json)")


def read_stats(mnt: str) -> dict[str, object]:
    stats: dict[str, object] = json.loads((control_dir(mnt) / "stats.json").read_text())
    return stats


def _ratio(num: float, den: float) -> str:
    return f"{num / den:.1%}" if den else "-"


def format_stats(stats: dict[str, object]) -> str:
    """A readable table: derived ratios first, then every counter by group."""

    def num(key: str) -> float:
        value = stats.get(key, 0)
        return float(value) if isinstance(value, (int, float)) else 0.0

    gets = num("succ_gets") + num("failed_gets")
    reads = num("pagecache.hits") + num("pagecache.misses")
    lines = [
        f"tmemfs {stats.get('fs.version', '?')} on {stats.get('fs.src', '?')} "
        f"(pid {stats.get('fs.pid', '?')}), backend {stats.get('cleancache.backend', '?')}",
        f"  page cache hit ratio   {_ratio(num('pagecache.hits'), reads)}"
        f"  ({num('pagecache.pages'):.0f}/{num('pagecache.capacity_pages'):.0f} pages)",
        f"  cleancache hit ratio   {_ratio(num('succ_gets'), gets)}",
        f"  reads served from SRC  {_ratio(num('backing.reads'), reads)} of page lookups",
        *cluster_lines(stats),
        "",
    ]
    group = None
    for key, value in stats.items():
        head = key.split(".", 1)[0] if "." in key else "cleancache"
        if head != group:
            group = head
            lines.append(f"[{group}]")
        lines.append(f"  {key:<40} {value}")
    return "\n".join(lines) + "\n"


def cluster_lines(stats: dict[str, object]) -> list[str]:
    """The shared pool of a cluster node: uuid, store, members (Xen's tmem-list)."""
    prefix = "backend.cluster."
    if prefix + "pool_uuid" not in stats:
        return []

    def get(key: str) -> object:
        return stats.get(prefix + key, "-")

    gets = sum(float(str(stats.get(prefix + k, 0))) for k in ("succ_gets", "failed_gets"))
    state = f" ({get('store.state')})" if prefix + "store.state" in stats else ""
    lines = [
        f"  cluster pool           {get('pool_uuid')} ({'private' if get('private') == 1 else 'shared'}), "
        f"node {get('node')}, store {get('store.store')}{state}",
        f"  hits from other nodes  {get('hits_from_others')} of {gets:.0f} pool gets; "
        f"{get('members_alive')} member(s) alive",
        f"    {'node':>4}  {'name':<32} {'alive':>5} {'heartbeat':>9} {'puts':>10} {'gets':>10} {'from others':>11}",
    ]
    nodes = sorted({key[len(prefix + "member."):].split(".", 1)[0] for key in stats
                    if key.startswith(prefix + "member.")}, key=lambda n: int(n) if n.isdigit() else 0)
    for node in nodes:
        m = f"member.{node}."
        lines.append(f"    {node:>4}  {get(m + 'name')!s:<32} {'yes' if get(m + 'alive') == 1 else 'NO':>5} "
                     f"{str(get(m + 'heartbeat_age_s')) + ' s':>9} {get(m + 'puts')!s:>10} {get(m + 'gets')!s:>10} "
                     f"{get(m + 'hits_from_others')!s:>11}")
    return lines


def watch(mnt: str, interval: float) -> None:
    """A top-like view: the table plus per-second rates, until Ctrl-C."""
    previous, then = read_stats(mnt), time.monotonic()
    try:
        while True:
            time.sleep(interval)
            stats, now = read_stats(mnt), time.monotonic()
            elapsed = max(now - then, 1e-9)
            rates = []
            for key in RATE_KEYS:
                a, b = previous.get(key, 0), stats.get(key, 0)
                if isinstance(a, (int, float)) and isinstance(b, (int, float)):
                    rates.append(f"  {key + '/s':<40} {(b - a) / elapsed:,.1f}")
            sys.stdout.write("\x1b[H\x1b[2J" + format_stats(stats).split("\n[")[0] + "\n[rates]\n"
                             + "\n".join(rates) + f"\n\n(every {interval:g} s; Ctrl-C to stop)\n")
            sys.stdout.flush()
            previous, then = stats, now
    except KeyboardInterrupt:
        pass


def numeric(stats: dict[str, object]) -> dict[str, int | float]:
    return {k: v for k, v in stats.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}


def is_counter(key: str) -> bool:
    """Only counters get a rate: a gauge's difference (pages held, a setting) is no rate."""
    info = counters.describe(key)
    return info is not None and info.kind == "counter"


def record_columns(first: dict[str, int | float]) -> list[str]:
    """The csv header: fixed by the first snapshot (a key that appears later is in jsonl only)."""
    columns = ["time", "elapsed_s"]
    for key in first:
        columns += [key, f"{key}_per_s"] if is_counter(key) else [key]
    return columns


def record_row(previous: dict[str, int | float], current: dict[str, int | float],
               elapsed: float, since_start: float) -> dict[str, object]:
    """One interval: every value, and for counters the rate (since the reset, if reset_stats ran)."""
    now = datetime.datetime.now(datetime.UTC).isoformat(timespec="milliseconds")
    row: dict[str, object] = {"time": now.replace("+00:00", "Z"), "elapsed_s": round(since_start, 3)}
    for key, value in current.items():
        row[key] = value
        if is_counter(key):
            before = previous.get(key, 0)
            row[f"{key}_per_s"] = round((value - before if value >= before else value) / elapsed, 3)
    return row


class MountGone(Exception):
    pass


def read_live(mnt: str) -> dict[str, int | float]:
    """A snapshot during a recording, whose mount was there when it started."""
    try:
        return numeric(read_stats(mnt))
    except NotTmemfs:
        raise MountGone(f"{mnt}: the mount went away") from None
    except (OSError, ValueError) as exc:
        raise MountGone(f"{mnt}: the mount went away ({getattr(exc, 'strerror', None) or exc})") from None


def record(mnt: str, interval: float, count: int | None, fmt: str) -> None:
    """vmstat for a mount: a line every interval (on a fixed schedule, so no drift), flushed at once
    so that it can be piped or tee'd next to fio; until `count` lines, or Ctrl-C."""
    previous = numeric(read_stats(mnt))
    start = then = time.monotonic()
    columns = record_columns(previous)
    writer = csv.writer(sys.stdout, lineterminator="\n")
    if fmt == "csv":
        writer.writerow(columns)
        sys.stdout.flush()
    lines = 0
    try:
        while count is None or lines < count:
            time.sleep(max(0.0, start + (lines + 1) * interval - time.monotonic()))
            current, now = read_live(mnt), time.monotonic()
            row = record_row(previous, current, max(now - then, 1e-9), now - start)
            if fmt == "csv":
                writer.writerow([row.get(column, "") for column in columns])
            else:
                sys.stdout.write(json.dumps(row) + "\n")
            sys.stdout.flush()
            previous, then, lines = current, now, lines + 1
    except KeyboardInterrupt:
        pass


class Failed(Exception):
    """A control command that failed: the message names MNT and says why."""


ERRNO_HINTS = {errno.EACCES: " (needs root or the mount owner)", errno.EPERM: " (needs root or the mount owner)",
               errno.EBUSY: " (a backend is registered: unregister it, or use replace)",
               errno.EINVAL: " (refused; this tmemfs logs the reason)"}


def send(mnt: str, command: str) -> None:
    """Write one command; when it fails, read the daemon's reason back on the same handle."""
    path = control_dir(mnt) / "control"
    try:
        try:
            fd = os.open(path, os.O_RDWR)
        except PermissionError:
            fd = os.open(path, os.O_WRONLY)  # an older tmemfs: control was write-only (0200)
        try:
            os.write(fd, command.encode() + b"\n")
        except OSError as exc:
            raise Failed(f"{mnt}: {refusal(fd) or errno_text(exc)}") from None
        finally:
            os.close(fd)
    except OSError as exc:
        raise Failed(f"{mnt}: {errno_text(exc)}") from None


def errno_text(exc: OSError) -> str:
    return f"{exc.strerror or exc}{ERRNO_HINTS.get(exc.errno or 0, '')}"


def refusal(fd: int) -> str:
    """Why the daemon refused this handle's last write ('EINVAL: reason'); '' from an older tmemfs."""
    try:
        outcome = os.pread(fd, 4096, 0).decode("utf-8", "replace").strip()
    except OSError:
        return ""
    name, sep, reason = outcome.partition(": ")
    return reason if sep and name in errno.errorcode.values() else outcome


# -- host pools (cc_host=) ------------------------------------------------------------------


@contextmanager
def attached(name: str, directory: str) -> Iterator[HostStore]:
    """The host's store, opened by name without joining it (Failed, one line, if there is none)."""
    from backends.hoststore import HostError, HostStore

    try:
        store = HostStore.attach(name, directory)
    except HostError as exc:
        raise Failed(str(exc)) from None
    try:
        yield store
    except HostError as exc:  # give-back with the host's write lock held throughout
        raise Failed(str(exc)) from None
    finally:
        store.close()


def host_report(name: str, directory: str) -> dict[str, object]:
    """The host's counters and its clients', read from its store."""
    with attached(name, directory) as store:
        return {"host": name, "directory": directory, **store.host_stats(),
                "clients": [dataclasses.asdict(c) for c in store.clients()]}


def format_host(report: dict[str, object]) -> str:
    clients = report["clients"]
    assert isinstance(clients, list)
    lines = [f"host {report['host']} ({report['directory']}): budget {report['budget_bytes']} bytes, "
             f"used {report['used_bytes']}, {report['stored_pages']} pages ({report['persistent_pages']} persistent, "
             f"{report['dedup_pages']} deduplicated puts), {report['evictions']} evictions, "
             f"taken back {report['taken_back_bytes']} bytes",
             f"{'client':>6} {'pid':>7} {'alive':>5} {'weight':>6} {'cap':>10} {'pages':>8} {'bytes':>11} "
             f"{'persist':>7} {'puts':>9} {'gets':>9} {'hits':>9} {'hit%':>6} {'evicted':>8}  mount"]
    for c in clients:
        ratio = f"{100 * c['hits'] / c['gets']:.1f}" if c["gets"] else "-"
        lines.append(f"{c['client']:>6} {c['pid']:>7} {'yes' if c['alive'] else 'DEAD':>5} {c['weight']:>6} "
                     f"{c['cap'] or '-':>10} {c['stored_pages']:>8} {c['stored_bytes']:>11} "
                     f"{c['persistent_pages']:>7} {c['puts']:>9} {c['gets']:>9} {c['hits']:>9} {ratio:>6} "
                     f"{c['evictions']:>8}  {c['label']}")
    return "\n".join(lines) + "\n"


def move_budget(name: str, directory: str, nbytes: int, back: bool) -> str:
    """take-back (back=False: the donor takes memory) or give-back; what was done, one line."""
    with attached(name, directory) as store:
        started = time.perf_counter()
        moved = store.give_back(nbytes) if back else store.take_back(nbytes)
        took = time.perf_counter() - started
        budget = store.host_stats()["budget_bytes"]
    verb = "gave back" if back else "took back"
    short = f" of {nbytes} asked" if moved < nbytes else ""
    return f"host {name}: {verb} {moved} bytes{short} in {took * 1000:.1f} ms; budget now {budget} bytes\n"


def size(text: str) -> int:
    from backends.base import size_in_bytes

    try:
        value = size_in_bytes(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"{text!r}: {exc}") from None
    if value == 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a size above 0")
    return value


def list_backends() -> str:
    from backends import registry

    return registry.describe() + "\n"


# -- the command line ---------------------------------------------------------------------


class Parser(argparse.ArgumentParser):
    """Bad usage is one line and exit status 2 (argparse would print the whole usage first)."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: {message} (see {self.prog} --help)\n")


def seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not 0 < value <= MAX_SECONDS:  # nan fails too
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds above 0 and at most {MAX_SECONDS:g}")
    return value


def positive(text: str) -> int:
    if not text.isdigit() or int(text) == 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number above 0")
    return int(text)


def build_parser() -> Parser:
    parser = Parser(prog="tmemctl", description=DESCRIPTION, epilog=EPILOG,
                    formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"tmemctl {__version__}")
    sub = parser.add_subparsers(title="commands", dest="command", required=True)

    def command(name: str, help: str, mnt: bool = True) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help, description=help[0].upper() + help[1:] + ".")
        if mnt:
            p.add_argument("mnt", metavar="MNT", help="a tmemfs mount point")
        return p

    stats = command("stats", "counters of the mount: cleancache (succ_gets, failed_gets, puts, invalidates), "
                             "page cache, backing I/O, backend")
    view = stats.add_mutually_exclusive_group()
    view.add_argument("--json", action="store_true", help="the same keys as JSON (MNT/.tmemfs/stats.json)")
    view.add_argument("--prometheus", action="store_true", help="Prometheus text exposition format")
    view.add_argument("--watch", nargs="?", type=seconds, const=1.0, metavar="SECONDS",
                      help="a live view refreshed every SECONDS (default 1), with per-second rates")
    rec = command("record", "a line of every counter and its per-second rate each interval (vmstat-style), "
                            "to keep next to fio's output; Ctrl-C stops it")
    rec.add_argument("--interval", type=seconds, default=1.0, metavar="SECONDS", help="seconds a line (default 1)")
    rec.add_argument("--count", type=positive, metavar="N", help="stop after N lines (default: until Ctrl-C)")
    rec.add_argument("--format", choices=("csv", "jsonl"), default="csv",
                     help="csv: a header, then a line per interval (columns fixed by the first snapshot); "
                          "jsonl: a JSON object per line (default csv)")
    for name, (_, help) in COMMANDS.items():
        command(name, help)
    for name, help in (("register", "make a backend live on a mount that has none (EBUSY if it has)"),
                       ("replace", "flush and close the live backend, then register SPEC")):
        command(name, help).add_argument("spec", nargs="+", metavar="SPEC",
                                         help="NAME[+NAME] [cc_size=SIZE] [opt=value ...] (tmemctl backends)")
    command("set", "change cache_size and/or cc_size of the live mount (shrinking evicts; nothing is flushed), or "
                   "a host client's cc_weight and cc_cap").add_argument(
        "settings", nargs="+", metavar="KEY=VALUE",
        help="cache_size=SIZE, cc_size=SIZE, cc_weight=1-1000, cc_cap=SIZE|none (as the mount options)")
    command("backends", "installed cleancache backends and their options", mnt=False)
    host_help = (("host", "a host pool's budget, pages and evictions, and each client's pages, puts, gets, hits, "
                          "weight and cap"),
                 ("take-back", "the donor takes SIZE of a host pool's budget back now: ephemeral pages are "
                               "dropped, never frontswap's; says how much it took"),
                 ("give-back", "return SIZE (at most what was taken back) to a host pool's budget"))
    for name, help in host_help:
        p = command(name, help, mnt=False)
        p.add_argument("host", metavar="NAME", help="the host pool (cc_host=NAME)")
        if name == "host":
            p.add_argument("--json", action="store_true", help="the same as JSON")
        else:
            p.add_argument("size", metavar="SIZE", type=size, help="bytes, with an optional K, M, G or T suffix")
        p.add_argument("--dir", default="/dev/shm", metavar="DIR", help="cc_dir of its clients (default /dev/shm)")
    return parser


def show_stats(args: argparse.Namespace) -> None:
    if args.watch:
        watch(args.mnt, args.watch)
        return
    stats = read_stats(args.mnt)
    if args.json:
        sys.stdout.write(json.dumps(stats, indent=1) + "\n")
    elif args.prometheus:
        from fusefs.metrics import exposition

        sys.stdout.write(exposition(stats).decode())
    else:
        sys.stdout.write(format_stats(stats))


def run(args: argparse.Namespace) -> None:
    if args.command == "backends":
        sys.stdout.write(list_backends())
    elif args.command == "stats":
        show_stats(args)
    elif args.command == "record":
        record(args.mnt, args.interval, args.count, args.format)
    elif args.command == "set":
        send(args.mnt, " ".join(["set", *args.settings]))
    elif args.command == "host":
        report = host_report(args.host, args.dir)
        sys.stdout.write(json.dumps(report, indent=1) + "\n" if args.json else format_host(report))
    elif args.command in ("take-back", "give-back"):
        sys.stdout.write(move_budget(args.host, args.dir, args.size, back=args.command == "give-back"))
    elif args.command in COMMANDS:
        send(args.mnt, COMMANDS[args.command][0])
    else:
        send(args.mnt, " ".join([args.command, *args.spec]))


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        run(args)
    except NotTmemfs as exc:
        print(f"tmemctl: {exc}", file=sys.stderr)
        return 2
    except (Failed, MountGone) as exc:
        print(f"tmemctl: {exc}", file=sys.stderr)
        return 1
    except BrokenPipeError:  # `tmemctl record MNT | head`: the reader has had enough
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return 0


if __name__ == "__main__":
    sys.exit(main())
