"""Every key `MNT/.tmemfs/stats` can show: its kind, unit and meaning, in one table.

The README's counter reference is generated from this table (`markdown()`;
`python -m fusefs.counters README.md` rewrites it in place), `tmemctl` and the Prometheus exposition
(fusefs/metrics.py) read it through `describe()`, and a test mounts every
backend and checks that each key it shows is here, so none drifts.

A key may be a pattern: in `backend.NAME.X`, NAME is a backend's name (a
chain lists each member, a second member of the same kind as `tmem#2`), and
an `N` part is a number (a cluster member's node id).

Standard library only: tmemctl imports this without pyfuse3 or trio.
"""

from __future__ import annotations

import re
import sys
from dataclasses import dataclass
from typing import Literal

Kind = Literal["counter", "gauge", "info"]
Unit = Literal["pages", "bytes", "seconds", "none"]


@dataclass(frozen=True)
class CounterInfo:
    """One stats key: a counter only grows (until reset_stats), a gauge is a level or a
    setting, info is text or an identifier (not a quantity)."""

    key: str
    kind: Kind
    unit: Unit
    help: str


def _c(key: str, unit: Unit, help: str) -> CounterInfo:
    return CounterInfo(key, "counter", unit, help)


def _g(key: str, unit: Unit, help: str) -> CounterInfo:
    return CounterInfo(key, "gauge", unit, help)


def _i(key: str, help: str) -> CounterInfo:
    return CounterInfo(key, "info", "none", help)


B = "backend.NAME."  # a backend's own counters: NAME is the backend (or chain member)

SECTIONS: tuple[tuple[str, tuple[CounterInfo, ...]], ...] = (
    ("Cleancache frontend (fusefs/cleancache.py), in the Linux names", (
        _c("succ_gets", "pages", "gets that found the page in cleancache"),
        _c("failed_gets", "pages", "gets that missed (SRC was read)"),
        _c("puts", "pages", "puts: clean pages evicted and offered to cleancache (the backend may keep them or not)"),
        _c("invalidates", "pages", "pages invalidated in cleancache"),
        _c("cleancache.inode_invalidates", "none", "invalidate_inode calls"),
        _c("cleancache.fs_invalidates", "none", "invalidate_fs calls"),
        _i("cleancache.backend", "the live backend (`none` if none; a chain as `zcache+tmem`)"),
        _c("cleancache.registrations", "none", "backends registered at run time"),
        _g("cleancache.pools", "none", "pools this mount holds"),
        _g("cleancache.placeholder_pools", "none", "pools without a backend pool yet (no backend, or its pool failed)"),
        _c("cleancache.pool_retries", "none",
           "failed attempts to make a placeholder's pool on the live backend (asked every second)"),
        _c("cleancache.backend_errors", "none", "backend exceptions contained (each became a miss)"),
        _c("cleancache.verify_failures", "pages", "pages a backend returned that did not match their digest (refused)"),
        _c("cleancache.peek_races", "pages",
           "peeked pages another request got, invalidated or put anew while the backend answered (a miss, no fault)"),
        _c("cleancache.backend_timeouts", "none", "backend calls cut short by cc_timeout (each became a miss)"),
        _g("cleancache.ledger_entries", "pages", "page digests held to check a private pool's backend"),
    )),
    ("Page cache (fusefs/pagecache.py, fusefs/datapath.py)", (
        _c("pagecache.hits", "pages", "page lookups served from the page cache"),
        _c("pagecache.misses", "pages", "page lookups that missed the page cache"),
        _c("pagecache.evictions", "pages", "pages evicted from the page cache (each clean page is put)"),
        _g("pagecache.pages", "pages", "pages held"),
        _g("pagecache.bytes", "bytes", "bytes held (pages x 4096)"),
        _g("pagecache.capacity_pages", "pages", "the page cache's size (cache_size)"),
        _g("pagecache.files", "none", "files the page cache knows"),
        _c("pagecache.external_changes", "none",
           "files seen changed behind tmemfs's back at open (on a cluster node: behind every node's back)"),
        _c("pagecache.remote_changes", "none", "cluster nodes: files whose pages another node's change dropped"),
        _c("pagecache.cut_offs", "none", "cluster nodes: times this node was cut off (its cached pages dropped)"),
        _c("pagecache.reclaimed", "pages", "pages evicted ahead of need between requests (background reclaim)"),
        _c("pagecache.puts_saved", "pages", "evictions a shared pool needed no put for"),
        _c("pagecache.bypassed", "pages",
           "pages of a scan served without entering the page cache, from the pool or SRC (sequential bypass)"),
        _c("pagecache.fill_waits", "none", "readers that waited for another request's fill or put of a page"),
        _c("pagecache.fill_conflicts", "none",
           "reads served from SRC around the cache: their fill lost a race with a change, or every slot was busy"),
        _c("pagecache.change_waits", "none", "writes and truncates that waited for another change of the same file"),
    )),
    ("I/O on SRC (fusefs/datapath.py, fusefs/srcio.py)", (
        _c("backing.reads", "none", "reads of SRC (one `preadv` each)"),
        _c("backing.read_bytes", "bytes", "bytes read from SRC"),
        _c("backing.writes", "none", "writes to SRC"),
        _c("backing.write_bytes", "bytes", "bytes written to SRC"),
        _c("backing.uncached_reads", "none",
           "reads of SRC around every cache (a node that could not check versions, a fill that lost a race)"),
        _c("backing.inline_calls", "none",
           "blocking calls on SRC run on the loop (nothing else waiting, or a write of at most 16 KiB)"),
        _c("backing.thread_calls", "none", "blocking calls on SRC run on a worker thread"),
        _c("backing.aio_reads", "none", "reads of SRC done as native AIO (O_DIRECT, backing_io=direct)"),
        _c("backing.nowait_reads", "none", "reads of SRC served inline: the host page cache had them (RWF_NOWAIT)"),
        _c("backing.aio_submits", "none", "io_submit calls the AIO reads took (several reads a call)"),
    )),
    ("FUSE and the filesystem (fusefs/operations.py, fusefs/polling.py)", (
        _g("fuse.max_requests", "none", "requests served at once at most (max_requests)"),
        _g("fuse.max_background", "none",
           "asynchronous requests the kernel lets in at once (max_requests, at least the kernel's 12)"),
        _g("fuse.peak_in_flight", "none", "the most requests served at once since the last reset"),
        _g("fuse.poll_us", "none", "the request polling budget in effect, in microseconds (0: off)"),
        _c("fuse.polled", "none", "requests found by polling /dev/fuse"),
        _c("fuse.slept", "none", "waits for a request that slept"),
        _g("fs.inodes", "none", "inodes the kernel knows (one O_PATH descriptor each)"),
        _g("fs.open_files", "none", "open files"),
        _g("fs.open_dirs", "none", "open directories"),
        _c("fs.internal_errors", "none", "requests that failed with EIO on an unexpected error"),
        _c("fs.fenced_changes", "none",
           "changes refused (EIO) on a cluster node that had not joined its pool within node_timeout"),
        _g("fs.uptime_seconds", "seconds", "time since the mount"),
        _i("fs.version", "tmemfs's version"),
        _i("fs.pid", "the daemon's process id"),
        _i("fs.src", "SRC, the directory mounted"),
        _i("fs.mountpoint", "MNT, where it is mounted"),
    )),
    ("Frontswap (fusefs/frontswap.py), in the names of Linux frontswap's debugfs", (
        _c("frontswap.loads", "pages", "swap pages read back from the persistent pool"),
        _c("frontswap.succ_stores", "pages", "swap pages the backend took (nothing written to SRC)"),
        _c("frontswap.failed_stores", "pages",
           "swap pages refused (full, poorly compressible, a fault): written to SRC"),
        _c("frontswap.invalidates", "pages",
           "stored swap pages dropped: rewritten partly, discarded, truncated, written back, or their area ended"),
        _g("frontswap.stored_pages", "pages", "swap pages held in the persistent pool (they exist nowhere else)"),
        _g("frontswap.stored_bytes", "bytes", "what those pages are uncompressed (stored_pages x 4096)"),
        _g("frontswap.areas", "none", "swap files open (areas: from the first open to the last close)"),
        _c("frontswap.load_errors", "pages",
           "swap page reads failed with EIO: a stored page the backend lost, changed or could not return"),
    )),
    ("Every backend: `backend.NAME.X` (a chain lists each member; a second one of a kind is `NAME#2`)", (
        _c(B + "puts", "pages", "puts the backend was asked for (cluster: pages stored)"),
        _c(B + "succ_gets", "pages", "gets that found the page"),
        _c(B + "failed_gets", "pages", "gets that missed"),
    )),
    ("RAM backends (tmem, zcache, dedup), in the names of zswap, zram and Xen tmem", (
        _g(B + "stored_pages", "pages", "pages held, persistent and ephemeral"),
        _g(B + "persistent_pages", "pages", "frontswap's pages held: never evicted, dropped only when invalidated"),
        _g(B + "persistent_bytes", "bytes",
           "what persistent pages take of pool_total_size, which no eviction frees (dedup: the copies they use)"),
        _g(B + "ephemeral_pages", "pages", "cleancache's pages held (stored_pages - persistent_pages): evictable"),
        _g(B + "pool_total_size", "bytes",
           "bytes held, overheads included, persistent and ephemeral pages alike: what cc_size bounds"),
        _g(B + "pool_total_size_max", "bytes",
           "high-water mark of pool_total_size since reset_stats (zram's mem_used_max)"),
        _g(B + "capacity_bytes", "bytes", "the pool's size limit (cc_size)"),
        _c(B + "pool_limit_hit", "none",
           "puts that found the pool full (zswap's pool_limit_hit): they evicted ephemeral pages for room, "
           "or were rejected"),
        _g(B + "orig_data_size", "bytes", "what the held pages would take uncompressed (stored_pages x 4096)"),
        _c(B + "invalidates", "pages", "pages invalidated"),
        _c(B + "evicted_pages", "pages", "pages evicted for room (cc_policy); a chain spills them to the next member"),
        _c(B + "dup_puts_replaced", "none", "puts over a page already held, which replaced it"),
        _c(B + "dup_puts_flushed", "none", "puts over a page already held, which dropped it and stored nothing"),
        _c(B + "rejected_puts", "pages",
           "puts refused: no such pool, or an entry larger than what persistent pages leave of the pool"),
        _c(B + "corrupt_pages", "pages", "entries found corrupt at a get: dropped, a miss"),
    )),
    ("zcache", (
        _g(B + "same_filled_pages", "pages", "pages kept as their fill byte (zero pages above all): no payload"),
        _g(B + "raw_pages", "pages", "pages kept uncompressed (zc_poor=raw)"),
        _g(B + "compr_data_size", "bytes", "compressed bytes held"),
        _c(B + "reject_compress_poor", "pages", "pages that compressed worse than zc_max"),
        _c(B + "reused_compressions", "pages", "puts that reused the block of a page zcache had handed out"),
        _g(B + "compr_ratio", "none", "orig_data_size / pool_total_size"),
    )),
    ("dedup", (
        _g(B + "unique_pages", "pages", "distinct contents held (copies)"),
        _g(B + "unique_data_size", "bytes", "bytes of the copies held"),
        _c(B + "duplicate_entry", "pages", "puts that shared a copy already held"),
        _c(B + "hash_collisions", "none", "lookups that found a copy with the same hash but other bytes"),
        _g(B + "saved_bytes", "bytes", "bytes that sharing saves (orig_data_size - unique_data_size)"),
    )),
    ("cluster (one line per pool; `member.N` is the node with id N)", (
        _c(B + "refused_puts", "pages", "puts the store refused (see store.*: stale version, lock timeout, no room)"),
        _c(B + "hits_from_others", "pages", "gets served by pages other nodes put"),
        _c(B + "heartbeat_faults", "none", "heartbeats that failed"),
        _i(B + "pool_uuid", "the shared pool's uuid"),
        _g(B + "private", "none", "1 if the pool is private (all-ones uuid)"),
        _i(B + "node", "this node's id in the pool"),
        _c(B + "cut_offs", "none", "times this node was cut off (stalled, or lost its store)"),
        _c(B + "versions_unknown", "none", "file version checks that could not be answered (reads went to SRC)"),
        _g(B + "pending_bumps", "none", "version bumps owed to the store since it went away"),
        _g(B + "members_alive", "none", "nodes alive in the pool"),
        _i(B + "member.N.name", "the member's name (host:pid)"),
        _g(B + "member.N.alive", "none", "1 while the member's heartbeat is fresh"),
        _g(B + "member.N.heartbeat_age_s", "seconds", "time since the member's last heartbeat"),
        _c(B + "member.N.puts", "pages", "pages the member put (its last heartbeat)"),
        _c(B + "member.N.gets", "pages", "pages the member got (its last heartbeat)"),
        _c(B + "member.N.hits_from_others", "pages", "the member's gets served by pages other nodes put"),
    )),
    ("cluster store: `store.X` (lmdb, one host; redis, several)", (
        _i(B + "store.store", "the store: lmdb or redis"),
        _i(B + "store.node", "this node's id in the store"),
        _c(B + "store.puts", "pages", "pages stored"),
        _c(B + "store.stale_puts_refused", "pages", "puts refused because the file changed since the page was read"),
        _c(B + "store.gets", "pages", "pages asked for"),
        _c(B + "store.hits", "pages", "pages found"),
        _c(B + "store.hits_from_others", "pages", "pages found that another node put"),
        _i(B + "store.directory", "lmdb: the pool's directory (cc_dir)"),
        _g(B + "store.capacity_pages", "pages", "lmdb: the page slab's size, for every node"),
        _c(B + "store.puts_refused", "pages", "lmdb: puts refused (no frame, map full)"),
        _c(B + "store.puts_unchanged", "pages", "lmdb: puts of a page already held (only marked used)"),
        _c(B + "store.lock_timeouts", "none", "lmdb: writes given up after lock_wait for the write lock"),
        _c(B + "store.torn_reads", "pages", "lmdb: reads that raced a write of their frame (a miss)"),
        _c(B + "store.verify_failures", "pages", "lmdb: pages that did not match their digest (a miss)"),
        _c(B + "store.evicted_pages", "pages", "lmdb: pages this node evicted (CLOCK)"),
        _c(B + "store.invalidated_pages", "pages", "lmdb: pages this node invalidated"),
        _c(B + "store.invalidates_skipped", "none", "lmdb: invalidations skipped on a lock timeout (safe: versions)"),
        _c(B + "store.map_full", "none", "lmdb: writes that found the LMDB map full"),
        _g(B + "store.stored_pages", "pages", "lmdb: pages held in the pool, by every node"),
        _g(B + "store.pool_total_size", "bytes", "lmdb: bytes of pages held in the pool"),
        _c(B + "store.pool_evicted_pages", "pages", "lmdb: pages evicted from the pool, by every node"),
        _g(B + "store.members_alive", "none", "lmdb: nodes alive in the node table"),
        _i(B + "store.url", "redis: the server (no credentials)"),
        _i(B + "store.state", "redis: up or down"),
        _g(B + "store.cluster", "none", "redis: 1 if the server is a Redis Cluster"),
        _c(B + "store.store_errors", "none", "redis: failed or refused commands"),
        _c(B + "store.reconnects", "none", "redis: reconnections"),
        _c(B + "store.timeouts", "none", "redis: calls cut short by cc_timeout"),
        _c(B + "store.unavailable", "none", "redis: calls refused at once while the store was down"),
        _c(B + "store.oom_refused", "none", "redis: writes the server refused for lack of memory (maxmemory)"),
        _c(B + "store.calls", "none", "redis: requests sent"),
        _c(B + "store.shared_calls", "none", "redis: requests that shared another's command (version checks)"),
    )),
    ("host pool client (`cc_host=`; `client.X` is this mount's share, `host.X` the whole host's)", (
        _i(B + "host_name", "the host pool this mount is a client of"),
        _g(B + "client.stored_pages", "pages", "pages this client holds in the host (a shared dedup copy counts)"),
        _g(B + "client.stored_bytes", "bytes", "bytes this client's pages take (a page in half a frame: 2048)"),
        _g(B + "client.persistent_pages", "pages", "frontswap pages this client holds"),
        _c(B + "client.puts", "pages", "pages this client put"),
        _c(B + "client.gets", "pages", "pages this client asked for"),
        _c(B + "client.hits", "pages", "pages this client got back"),
        _c(B + "client.evictions", "pages", "this client's pages evicted for room (by any client's put)"),
        _c(B + "client.cap_hits", "none", "puts that found this client at its cc_cap"),
        _c(B + "client.torn_reads", "pages",
           "reads of this client's entries that another client's write overtook (a miss)"),
        _c(B + "client.verify_failures", "pages",
           "this client's entries found damaged: they held still and did not match their digest (a miss)"),
        _c(B + "client.lock_timeouts", "none", "this client's writes given up after the bounded wait for the lock"),
        _g(B + "client.weight", "none", "cc_weight: the client's share of the budget under contention"),
        _g(B + "client.cap", "bytes", "cc_cap (0: none)"),
        _g(B + "host.budget_bytes", "bytes", "the host's budget (its first client's cc_size, less what is taken back)"),
        _g(B + "host.used_bytes", "bytes", "memory the host's pages take (whole 4 KiB frames)"),
        _g(B + "host.stored_pages", "pages", "pages held, a shared dedup copy once"),
        _g(B + "host.persistent_pages", "pages", "frontswap pages held (never evicted or taken back)"),
        _g(B + "host.clients", "none", "live clients"),
        _c(B + "host.evictions", "pages", "pages evicted for room, of any client"),
        _c(B + "host.dedup_pages", "pages", "puts served by a reference to a copy already held (dedup)"),
        _g(B + "host.buddy_frames", "none", "frames holding compressed pages (two at most: zbud)"),
        _c(B + "host.take_backs", "none", "take-backs (tmemctl take-back, the control file's take-back)"),
        _c(B + "host.taken_back_bytes", "bytes", "budget taken back"),
        _c(B + "host.give_backs", "none", "give-backs"),
        _c(B + "host.reclaimed_pages", "pages", "pages of dead (killed) clients reclaimed"),
        _c(B + "host.lock_timeouts", "none", "writes of any client given up after the bounded wait for the lock"),
    )),
)

TABLE: tuple[CounterInfo, ...] = tuple(info for _, infos in SECTIONS for info in infos)
_BY_KEY = {info.key: info for info in TABLE}
_NUMBER = re.compile(r"(?<=\.)\d+(?=\.)")


def pattern_of(key: str) -> str:
    """The table key a stats key falls under: backend.zcache.x -> backend.NAME.x, member.3.y -> member.N.y."""
    if key.startswith("backend.") and key.count(".") >= 2:
        key = B + key.split(".", 2)[2]
    return _NUMBER.sub("N", key)


def describe(key: str) -> CounterInfo | None:
    """What a stats key is (kind, unit, help), or None for a key the table lacks."""
    return _BY_KEY.get(pattern_of(key))


def markdown() -> str:
    """The README's counter reference: one table per group."""
    out = []
    for title, infos in SECTIONS:
        out += [f"**{title}**", "", "| key | kind | unit | meaning |", "|---|---|---|---|"]
        for info in infos:
            unit = "" if info.unit == "none" else info.unit
            meaning = info.help.replace("|", "\\|")
            out.append(f"| `{info.key}` | {info.kind} | {unit} | {meaning} |")
        out.append("")
    return "\n".join(out)


README_BEGIN = "<!-- generated by python -m fusefs.counters README.md: edit the table in fusefs/counters.py -->"
README_END = "<!-- end of the generated counter reference -->"


def with_reference(readme: str) -> str:
    """`readme` with the text between README_BEGIN and README_END replaced by markdown()."""
    head, begin, rest = readme.partition(README_BEGIN)
    _, end, tail = rest.partition(README_END)
    if not begin or not end:
        raise ValueError("the README has no generated counter reference (its markers are missing)")
    return f"{head}{README_BEGIN}\n\n{markdown()}\n{README_END}{tail}"


def main(argv: list[str]) -> int:
    """Print the reference, or rewrite it in the README files named."""
    if not argv:
        sys.stdout.write(markdown())
    for path in argv:
        with open(path, encoding="utf-8") as f:
            text = f.read()
        with open(path, "w", encoding="utf-8") as f:
            f.write(with_reference(text))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
