"""tools/mounting.py: a foreground daemon that lingers after its unmount leaves its threads' stacks
in its log before it is killed, so that a failed stress run shows where it was stuck."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

from tools.mounting import stop_foreground

# A stand-in for a daemon stuck on its way out: it answers SIGUSR1 as tmemfs does, and never exits.
STUCK = """
import faulthandler, signal, sys, time
faulthandler.register(signal.SIGUSR1, all_threads=True)
print("ready", flush=True)
while True:
    time.sleep(60)
"""


def test_a_lingering_daemon_writes_its_stacks_to_its_log_and_is_killed(tmp_path: Path) -> None:
    log = tmp_path / "daemon.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-c", STUCK], stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 20
        while "ready" not in log.read_text():
            assert proc.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.01)
        stop_foreground(tmp_path / "not-mounted", proc, timeout=0.2)
        assert proc.returncode == -9  # killed: it did not leave by itself
        text = log.read_text()
        assert "thread 0x" in text.lower() and 'File "<string>", line 6' in text, text  # where it sleeps
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
