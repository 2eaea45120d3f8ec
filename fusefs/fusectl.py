"""Let the kernel pass as many asynchronous requests to this mount as it serves at once.

Why: the kernel holds a FUSE mount's asynchronous requests (reads of an
O_DIRECT file by libaio, readahead) to `max_background` in flight, 12 unless
the daemon says otherwise at FUSE_INIT, and pyfuse3 lets no filesystem say it.
With max_requests=16 a 4k libaio QD16 reader kept at most 12 requests in
tmemfs, so 12 reads of SRC went out per io_submit instead of 16. Measured
(none, backing_io=direct, 4k randread QD16): 17.6k -> 20.6k IOPS and 44 -> 37
us of daemon CPU a request with the limit raised.

The only other way to set it is the fusectl filesystem
(/sys/fs/fuse/connections/DEV/max_background, writable by root). systemd
mounts it at boot. Where nobody has, tmemfs mounts it in a mount namespace of
its own for the two writes (`unshare --mount`, util-linux): fusectl has one
instance, so the limit is set all the same, and the machine's mounts are left
as they were. The limit is never lowered below the kernel's 12 (it also
bounds readahead and writeback), and congestion_threshold follows at the
kernel's 3/4. Without root, or where neither works, the mount goes on at 12
and the log says why.
"""

from __future__ import annotations

import logging
import os
import subprocess

from fusefs.mountinfo import MOUNTINFO, mounts

log = logging.getLogger("tmemfs.fusectl")

CONNECTIONS = "/sys/fs/fuse/connections"
KERNEL_MAX_BACKGROUND = 12  # FUSE_DEFAULT_MAX_BACKGROUND


def connection_id(mountpoint: str, mountinfo: str = MOUNTINFO) -> int | None:
    """The FUSE connection's number in fusectl (the mount's dev_t), from mountinfo.
    `mountpoint` must be resolved already: a stat of it, or of anything below it, would
    ask this very daemon, which serves nothing yet."""
    try:
        found = [m.dev for m in mounts(mountinfo) if m.point == mountpoint]
    except OSError:
        return None
    return found[-1] if found else None  # the last one listed is on top


def raise_max_background(mountpoint: str, wanted: int) -> int:
    """Set the mount's max_background to `wanted` (never below the kernel's 12); the value in force."""
    wanted = max(wanted, KERNEL_MAX_BACKGROUND)
    conn = connection_id(mountpoint)
    if conn is None:
        log.info("max_background stays at %d: %s not found in mountinfo", KERNEL_MAX_BACKGROUND, mountpoint)
        return KERNEL_MAX_BACKGROUND
    if os.path.ismount(CONNECTIONS):
        return _set(os.path.join(CONNECTIONS, str(conn)), wanted)
    return _set_in_own_namespace(conn, wanted)


def _set(directory: str, wanted: int) -> int:
    try:
        _write(os.path.join(directory, "max_background"), wanted)
        _write(os.path.join(directory, "congestion_threshold"), wanted * 3 // 4)
    except OSError as exc:
        log.info("max_background: %s", exc)
    try:
        with open(os.path.join(directory, "max_background"), encoding="ascii") as f:
            return int(f.read())
    except (OSError, ValueError):
        return KERNEL_MAX_BACKGROUND


def _write(path: str, value: int) -> None:
    with open(path, "w", encoding="ascii") as f:
        f.write(f"{value}\n")


# $1 the connection, $2 max_background, $3 congestion_threshold. (mount(8) looks at nothing but
# its target; a stat of this mount would ask this very daemon, which serves nothing yet.)
_IN_OWN_NAMESPACE = (f'mount -t fusectl fusectl {CONNECTIONS} && cd {CONNECTIONS}/"$1" && '
                     'echo "$2" > max_background && echo "$3" > congestion_threshold && cat max_background')


def _set_in_own_namespace(conn: int, wanted: int) -> int:
    try:
        done = subprocess.run(["unshare", "--mount", "--propagation", "private", "sh", "-c", _IN_OWN_NAMESPACE,
                               "sh", str(conn), str(wanted), str(wanted * 3 // 4)],
                              capture_output=True, text=True, timeout=10, check=False)
        if done.returncode == 0:
            return int(done.stdout)
        log.info("max_background stays at %d: fusectl is not mounted, and in a namespace of our own: %s",
                 KERNEL_MAX_BACKGROUND, done.stderr.strip().splitlines()[-1:] or done.returncode)
    except (OSError, ValueError, subprocess.TimeoutExpired) as exc:
        log.info("max_background stays at %d: fusectl is not mounted (%s)", KERNEL_MAX_BACKGROUND, exc)
    return KERNEL_MAX_BACKGROUND
