"""Packaging: tmemctl for users other than root, and man pages that keep every word of --help."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import mounted

VENV_BIN = Path(sys.executable).parent
NOBODY = ["runuser", "-u", "nobody", "--"]


def nobody_runs_the_venv() -> str | None:
    """Why nobody cannot run the venv's interpreter (None if it can)."""
    done = subprocess.run([*NOBODY, str(VENV_BIN / "python"), "-c", "pass"], capture_output=True, text=True)
    if done.returncode == 0:
        return None
    return (f"{VENV_BIN / 'python'} (-> {os.path.realpath(VENV_BIN / 'python')}) is not runnable by nobody: "
            f"{done.stderr.strip()[-200:]}; `make install` makes the venv again with /usr/bin/python3")


def test_nobody_reads_stats_of_an_allow_other_mount(world_dir: Path) -> None:
    reason = nobody_runs_the_venv()
    if reason:
        pytest.skip(reason)
    (world_dir / "src").mkdir()
    (world_dir / "src" / "f").write_bytes(b"x" * 10000)
    with mounted(world_dir / "src", world_dir / "mnt", "cleancache=tmem,allow_other") as m:
        (m.mnt / "f").read_bytes()
        done = subprocess.run([*NOBODY, str(VENV_BIN / "tmemctl"), "stats", str(m.mnt), "--json"],
                              capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["pagecache.misses"] >= 3  # the 10000-byte file, read as root


def roff_words(page: str) -> list[str]:
    """The words a reader sees: roff escapes undone, request names dropped (their arguments kept)."""
    text = re.sub(r"^\.(TH|SH|SS|TP|PP|nf|fi)\b", "", page, flags=re.M)
    text = re.sub(r'^\.\\".*$', "", text, flags=re.M)
    for escape, plain in (("\\fB", ""), ("\\fR", ""), ("\\&", ""), ("\\ ", " "), ("\\-", "-"), ("\\e", "\\")):
        text = text.replace(escape, plain)
    return text.split()


@pytest.mark.parametrize("prog", ["tmemfs", "tmemctl"])
def test_man_page_keeps_every_word_of_help(prog: str) -> None:
    help_text = subprocess.run([str(VENV_BIN / prog), "--help"], capture_output=True, text=True, check=True).stdout
    page = subprocess.run([sys.executable, "-m", "tools.manpage", prog], capture_output=True, text=True,
                          check=True).stdout
    words = {w.rstrip(":") for w in roff_words(page)}  # argparse's `options:` becomes a subsection title
    missing = [w for w in help_text.replace("usage:", "").split() if w.rstrip(":") not in words]
    assert not missing, f"words of {prog} --help missing from its man page: {missing[:20]}"
    options = re.findall(r"(?<![\w-])(--?[a-z][\w-]*|[a-z_]+=)", help_text)
    assert options and all(any(o in w for w in words) for o in options)


def test_man_page_renders(tmp_path: Path) -> None:
    page = tmp_path / "tmemfs.1"
    page.write_text(subprocess.run([sys.executable, "-m", "tools.manpage", "tmemfs"], capture_output=True,
                                   text=True, check=True).stdout)
    done = subprocess.run(f"man -l {page} | col -bx", shell=True, capture_output=True, text=True,
                          env={**os.environ, "MANWIDTH": "200"})
    assert done.returncode == 0 and not done.stderr, done.stderr
    assert "cache_size=SIZE" in done.stdout and "TMEMFS(1)" in done.stdout


def test_imports_run_one_way_backends_never_import_fusefs() -> None:
    """fusefs uses backends, never the reverse: a third-party backend needs nothing of the FUSE
    package (page size, eviction policies and handle types live in backends)."""
    code = ("import importlib, pkgutil, sys, backends\n"
            "for m in pkgutil.iter_modules(backends.__path__):\n"
            "    importlib.import_module('backends.' + m.name)\n"
            "print(len(list(pkgutil.iter_modules(backends.__path__))), "
            "sorted(m for m in sys.modules if m.split('.')[0] == 'fusefs'))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=Path(__file__).parent.parent)
    count, imported = out.stdout.split(" ", 1)
    assert int(count) >= 15 and imported.strip() == "[]", out.stdout
