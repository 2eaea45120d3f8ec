"""`tmemctl`: read a tmemfs mount's counters and send it control commands.

Talks to MNT/.tmemfs/stats.json and MNT/.tmemfs/control only, so it works
for any user who can see the mount (commands need root or the mount owner).
"""

from __future__ import annotations

import argparse
import errno
import json
import os
import sys
from pathlib import Path

USAGE = """tmemctl stats MNT [--json | --prometheus | --watch [SECONDS]]
       tmemctl drop-caches|flush|reset-stats|unregister MNT
       tmemctl register|replace MNT NAME[+NAME] [cc_size=SIZE] [opt=value ...]
       tmemctl backends"""

DESCRIPTION = """Commands:
  stats MNT            counters of the mount: cleancache (succ_gets, failed_gets,
                       puts, invalidates), page cache, backing I/O, backend
      --json           the same keys as JSON (MNT/.tmemfs/stats.json)
      --prometheus     text exposition format, metrics named tmemfs_*
      --watch [SECS]   a live view refreshed every SECS (1), with per-second rates
  drop-caches MNT      evict every page from the page cache (each is put into cleancache)
  flush MNT            empty the cleancache pool
  reset-stats MNT      zero the counters
  register MNT SPEC    make a backend live on a mount that has none (EBUSY if it has)
  replace MNT SPEC     flush and close the live backend, then register SPEC
  unregister MNT       flush and close the live backend; reads go on from SRC
  backends             installed cleancache backends and their options

Control commands need root or the owner of the mount.
Exit status: 0 success, 1 the command failed, 2 bad usage or MNT is not a tmemfs mount."""

COMMANDS = {"drop-caches": "drop_caches", "flush": "flush", "reset-stats": "reset_stats",
            "unregister": "unregister", "register": "register", "replace": "replace"}
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
    return json.loads((control_dir(mnt) / "stats.json").read_text())


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


def prometheus(stats: dict[str, object]) -> str:
    """Prometheus text exposition: numeric counters as tmemfs_* metric families,
    labelled by SRC (and by backend for backend counters), each family grouped."""
    import re

    src = str(stats.get("fs.src", "")).replace("\\", "\\\\").replace('"', '\\"')
    families: dict[str, list[str]] = {}
    for key, value in stats.items():
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            continue
        labels = f'src="{src}"'
        name = key
        if key.startswith("backend."):
            backend, _, counter = key[len("backend."):].rpartition(".")
            name = f"backend.{counter}"
            labels += f',backend="{backend}"'
        metric = "tmemfs_" + re.sub(r"[^a-zA-Z0-9_]", "_", name)
        families.setdefault(metric, []).append(f"{metric}{{{labels}}} {value}")
    out = []
    for metric, samples in families.items():
        out.append(f"# TYPE {metric} gauge")
        out.extend(samples)
    return "\n".join(out) + "\n"


def watch(mnt: str, interval: float) -> None:
    """A top-like view: the table plus per-second rates, until Ctrl-C."""
    import time

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


def send(mnt: str, command: str) -> None:
    path = control_dir(mnt) / "control"
    fd = os.open(path, os.O_WRONLY)
    try:
        os.write(fd, command.encode() + b"\n")
    finally:
        os.close(fd)


def list_backends() -> str:
    from backends import registry

    return registry.describe() + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="tmemctl", usage=USAGE, description=DESCRIPTION,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("command", choices=["stats", "backends", *COMMANDS])
    parser.add_argument("mnt", nargs="?")
    parser.add_argument("spec", nargs="*", help="register/replace: NAME[+NAME] [opt=value ...]")
    view = parser.add_mutually_exclusive_group()
    view.add_argument("--json", action="store_true", help="stats as JSON")
    view.add_argument("--prometheus", action="store_true", help="stats in Prometheus text format")
    view.add_argument("--watch", nargs="?", type=float, const=1.0, metavar="SECONDS",
                      help="live view with per-second rates")
    args = parser.parse_args(argv)
    if args.command == "backends":
        sys.stdout.write(list_backends())
        return 0
    if args.mnt is None:
        parser.error(f"{args.command} needs MNT")
    try:
        if args.command == "stats":
            if args.watch:
                watch(args.mnt, args.watch)
                return 0
            stats = read_stats(args.mnt)
            if args.json:
                sys.stdout.write(json.dumps(stats, indent=1) + "\n")
            elif args.prometheus:
                sys.stdout.write(prometheus(stats))
            else:
                sys.stdout.write(format_stats(stats))
        else:
            if (args.command in ("register", "replace")) != bool(args.spec):
                parser.error(f"{args.command}: " + ("needs a backend" if args.spec == [] else "takes no arguments"))
            send(args.mnt, " ".join([COMMANDS[args.command], *args.spec]))
    except NotTmemfs as exc:
        print(f"tmemctl: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        hint = {errno.EACCES: " (needs root or the mount owner)", errno.EPERM: " (needs root or the mount owner)",
                errno.EBUSY: " (a backend is registered: unregister it, or use replace)",
                errno.EINVAL: " (rejected: see tmemctl --help and the tmemfs log)"}.get(exc.errno or 0, "")
        print(f"tmemctl: {args.mnt}: {exc.strerror}{hint}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
