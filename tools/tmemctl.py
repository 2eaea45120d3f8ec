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

USAGE = """tmemctl stats MNT [--json]
       tmemctl drop-caches|flush|reset-stats MNT
       tmemctl backends"""

DESCRIPTION = """Commands:
  stats MNT [--json]   counters of the mount: cleancache (succ_gets, failed_gets,
                       puts, invalidates), page cache, backing I/O, backend
  drop-caches MNT      evict every page from the page cache (each is put into cleancache)
  flush MNT            empty the cleancache pool
  reset-stats MNT      zero the counters
  backends             installed cleancache backends and their options

Exit status: 0 success, 1 the command failed, 2 bad usage or MNT is not a tmemfs mount."""

COMMANDS = {"drop-caches": "drop_caches", "flush": "flush", "reset-stats": "reset_stats"}


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


def send(mnt: str, command: str) -> None:
    path = control_dir(mnt) / "control"
    fd = os.open(path, os.O_WRONLY)
    try:
        os.write(fd, command.encode() + b"\n")
    finally:
        os.close(fd)


def list_backends() -> str:
    from backends import registry

    lines = []
    for name, target in registry.available().items():
        if name == registry.NONE:
            lines.append(f"{name:<10} no backend: every get misses (the baseline)")
            continue
        try:
            cls = registry.load(name)
        except Exception as exc:
            lines.append(f"{name:<10} cannot load {target}: {exc}")
            continue
        lines.append(f"{name:<10} {cls.summary}")
        lines.extend(f"{'':<10}   {key}=...  {spec.help}" for key, spec in cls.options.items())
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="tmemctl", usage=USAGE, description=DESCRIPTION,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("command", choices=["stats", "backends", *COMMANDS])
    parser.add_argument("mnt", nargs="?")
    parser.add_argument("--json", action="store_true", help="stats as JSON")
    args = parser.parse_args(argv)
    if args.command == "backends":
        sys.stdout.write(list_backends())
        return 0
    if args.mnt is None:
        parser.error(f"{args.command} needs MNT")
    try:
        if args.command == "stats":
            stats = read_stats(args.mnt)
            sys.stdout.write(json.dumps(stats, indent=1) + "\n" if args.json else format_stats(stats))
        else:
            send(args.mnt, COMMANDS[args.command])
    except NotTmemfs as exc:
        print(f"tmemctl: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        hint = " (needs root or the mount owner)" if exc.errno in (errno.EACCES, errno.EPERM) else ""
        print(f"tmemctl: {args.mnt}: {exc.strerror}{hint}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
