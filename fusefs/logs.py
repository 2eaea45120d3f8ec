"""Where the daemon's log goes, so that no line is ever lost.

In the foreground: stderr. In the background: `log=FILE` if given, else
syslog if its socket exists, else a file named after the mount point
(/var/log/tmemfs for root, $XDG_STATE_HOME/tmemfs for other users), because
containers and minimal VMs have no syslog and a NullHandler would discard
every line. Files are created 0600 whatever the umask (tmemfs runs with
umask 0), and SIGHUP reopens them for logrotate. SIGUSR1 writes every
thread's stack into the same place, for a daemon that hangs.
"""

from __future__ import annotations

import faulthandler
import logging
import logging.handlers
import os
import re
import signal
import sys
from typing import TextIO

# TEST ONLY: the syslog socket is /dev/log; tests name a missing one in this variable to reach the
# "no syslog" fallback (a log file named after MNT) on a machine that has syslog. No user sets it.
TEST_SYSLOG_ENV = "TMEMFS_TEST_ONLY_SYSLOG_SOCKET"
SYSLOG_SOCKET = os.environ.get(TEST_SYSLOG_ENV, "/dev/log")
ROOT_LOG_DIR = "/var/log/tmemfs"
LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR}
_FORMAT = "%(asctime)s tmemfs[%(process)d] %(levelname)s %(name)s: %(message)s"


def open_private(path: str, truncate: bool = False, buffering: int = 1) -> TextIO:
    """`path` opened for writing (appending unless `truncate`), created 0600 whatever the umask
    (tmemfs's is 0): logs and traces show file names and access patterns."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC | (os.O_TRUNC if truncate else os.O_APPEND)
    fd = os.open(path, flags, 0o600)
    return open(fd, "w", buffering=buffering, encoding="utf-8", errors="backslashreplace")


def mount_name(mnt: str) -> str:
    """A file name for MNT, escaped as systemd names mount units (/mnt/my-data -> mnt-my\\x2ddata),
    so that two mount points never share a log file."""
    path = mnt.strip("/")
    if not path:
        return "-"
    escaped = re.sub(r"[^A-Za-z0-9:_./]", lambda m: "".join(f"\\x{b:02x}" for b in m.group().encode()), path)
    escaped = re.sub(r"^\.", r"\\x2e", escaped)
    return escaped.replace("/", "-")


def default_log_file(mnt: str, euid: int | None = None, env: dict[str, str] | None = None) -> str:
    """The log file of a background mount without syslog: per mount point, root's in /var/log."""
    euid = os.geteuid() if euid is None else euid
    env = dict(os.environ) if env is None else env
    if euid == 0:
        directory = ROOT_LOG_DIR
    else:
        state = env.get("XDG_STATE_HOME") or os.path.join(env.get("HOME") or os.path.expanduser("~"),
                                                          ".local", "state")
        directory = os.path.join(state, "tmemfs")
    return os.path.join(directory, mount_name(mnt) + ".log")


class LogFile(logging.StreamHandler):  # type: ignore[type-arg]
    """A log file that SIGHUP reopens (after logrotate renamed it), created 0600."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.dumps_stacks = False  # SIGUSR1 writes the threads' stacks here (dump_stacks_on_signal)
        super().__init__(open_private(path))

    def reopen(self) -> None:
        """Continue in a new file at `path`; on failure keep writing to the old one, and say so."""
        try:
            stream = open_private(self.path)
        except OSError as exc:
            logging.getLogger("tmemfs").error("cannot reopen the log %s (%s): still writing to the old file",
                                              self.path, exc.strerror)
            return
        old = self.setStream(stream)
        if self.dumps_stacks:  # moved before the old descriptor is closed, and maybe reused
            faulthandler.register(STACKS_SIGNAL, file=stream, all_threads=True)
        if old is not None:
            old.close()

    def close(self) -> None:
        self.acquire()
        try:
            self.stream.close()
        finally:
            self.release()
        super().close()


def log_handler(foreground: bool, log_file: str | None, mnt: str) -> logging.Handler:
    """The handler for this mount (OSError if the file cannot be created): see the module docstring.

    Called before the daemon forks, so that a bad log= is reported on the terminal.
    """
    if log_file:
        return LogFile(log_file)
    if foreground:
        return logging.StreamHandler(sys.stderr)
    if os.path.exists(SYSLOG_SOCKET):
        return logging.handlers.SysLogHandler(SYSLOG_SOCKET)
    path = default_log_file(mnt)
    os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
    return LogFile(path)


def setup_logging(handler: logging.Handler, level: int) -> None:
    """Send every log line to `handler`; pyfuse3's own chatter only when debugging."""
    handler.setFormatter(logging.Formatter(_FORMAT))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    logging.getLogger("pyfuse3").setLevel(logging.DEBUG if level <= logging.DEBUG else logging.WARNING)


STACKS_SIGNAL = signal.SIGUSR1


def dump_stacks_on_signal(handler: logging.Handler) -> None:
    """SIGUSR1 writes every thread's Python stack to the log file, or to stderr in the foreground:
    where a daemon that does not answer or does not exit is stuck. faulthandler writes from the
    signal handler, in C, so it works even when the event loop itself is blocked. Syslog takes no
    raw writes: there the signal is ignored rather than left to kill the daemon."""
    if not isinstance(handler, logging.StreamHandler):  # syslog
        signal.signal(STACKS_SIGNAL, signal.SIG_IGN)
        return
    faulthandler.register(STACKS_SIGNAL, file=handler.stream, all_threads=True)
    if isinstance(handler, LogFile):
        handler.dumps_stacks = True


def reopen_logs() -> bool:
    """Reopen the log file (SIGHUP); False if the log is not a file (stderr, syslog)."""
    files = [h for h in logging.getLogger().handlers if isinstance(h, LogFile)]
    for handler in files:
        handler.reopen()
    return bool(files)
