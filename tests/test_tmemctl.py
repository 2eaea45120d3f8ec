"""tmemctl: stats in every format, control commands and their refusals."""

from __future__ import annotations

import signal
import subprocess
import sys
import time


def test_tmemctl(mnt) -> None:
    tmemctl = [sys.executable, "-m", "tools.tmemctl"]
    (mnt.mnt / "f").write_bytes(b"q" * 4096)
    (mnt.mnt / "f").read_bytes()
    out = subprocess.run([*tmemctl, "stats", str(mnt.mnt)], capture_output=True, text=True)
    assert out.returncode == 0 and "hit ratio" in out.stdout and "succ_gets" in out.stdout
    out = subprocess.run([*tmemctl, "stats", str(mnt.mnt), "--json"], capture_output=True, text=True)
    import json

    assert json.loads(out.stdout)["pagecache.pages"] == 1
    assert subprocess.run([*tmemctl, "drop-caches", str(mnt.mnt)]).returncode == 0
    assert mnt.stats()["pagecache.pages"] == 0
    bad = subprocess.run([*tmemctl, "stats", "/tmp"], capture_output=True, text=True)
    assert bad.returncode == 2 and "not a tmemfs mount" in bad.stderr
    backends = subprocess.run([*tmemctl, "backends"], capture_output=True, text=True).stdout
    assert "tmem" in backends and "none" in backends


def test_tmemctl_prometheus_register_and_watch(mount_factory) -> None:
    import re

    tmemctl = [sys.executable, "-m", "tools.tmemctl"]
    with mount_factory("cleancache=none") as m:
        mnt = str(m.mnt)
        ok = subprocess.run([*tmemctl, "register", mnt, "zcache+tmem", "cc_size=8M"], capture_output=True, text=True)
        assert ok.returncode == 0, ok.stderr
        busy = subprocess.run([*tmemctl, "register", mnt, "tmem"], capture_output=True, text=True)
        assert busy.returncode == 1 and "replace" in busy.stderr
        text = subprocess.run([*tmemctl, "stats", mnt, "--prometheus"], capture_output=True, text=True).stdout
        families: list[str] = []
        for line in text.splitlines():
            if line.startswith("# TYPE "):
                name = line.split()[2]
                assert name not in families, f"{name} is not grouped"
                families.append(name)
                continue
            match = re.fullmatch(r'(tmemfs_[a-zA-Z0-9_]+)\{src="[^"]*"(,backend="[^"]+")?\} -?[0-9.e+]+', line)
            assert match and match.group(1) == families[-1], line
        assert "tmemfs_succ_gets" in families and 'backend="tmem"' in text and 'backend="zcache"' in text
        assert subprocess.run([*tmemctl, "unregister", mnt]).returncode == 0
        assert m.stats()["cleancache.backend"] == "none"
        watcher = subprocess.Popen([*tmemctl, "stats", mnt, "--watch", "0.2"], stdout=subprocess.PIPE, text=True)
        time.sleep(1.0)
        watcher.send_signal(signal.SIGINT)
        out, _ = watcher.communicate(timeout=10)
        assert watcher.returncode == 0 and "[rates]" in out and "succ_gets/s" in out
