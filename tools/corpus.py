"""The bytes the benchmarks read: text-like (lz4 about halves it) from the system's documentation, binaries,
random bytes; and test files of them, made once and kept across runs."""

from __future__ import annotations

import gzip
import os
from contextlib import suppress
from pathlib import Path

MiB = 1 << 20
TEXT_ROOTS = (Path("/usr/share/common-licenses"), Path("/usr/share/doc"))
ELF_ROOTS = (Path("/usr/lib/x86_64-linux-gnu"), Path("/usr/bin"))


def is_text(data: bytes) -> bool:
    """A file counts as text if its first 8 KiB have no NUL byte and decode as UTF-8-ish."""
    head = data[:8192]
    return bool(head) and b"\0" not in head


def text_corpus(limit: int) -> bytes:
    """Uncompressed text from /usr/share/common-licenses and /usr/share/doc (gunzipped .gz if short)."""
    parts: list[bytes] = []
    total = 0
    for gz in (False, True):
        for path in sorted(p for r in TEXT_ROOTS for p in r.rglob("*") if p.is_file() and not p.is_symlink()):
            if (path.suffix == ".gz") != gz:
                continue
            with suppress(OSError, EOFError, gzip.BadGzipFile):
                data = gzip.decompress(path.read_bytes()) if gz else path.read_bytes()
                if is_text(data):
                    parts.append(data)
                    total += len(data)
            if total >= limit:
                return b"".join(parts)
    return b"".join(parts)


def elf_corpus(limit: int) -> bytes:
    """ELF shared libraries and executables, concatenated."""
    parts: list[bytes] = []
    total = 0
    for root in ELF_ROOTS:
        for path in sorted(root.iterdir()):
            with suppress(OSError):
                if path.is_file() and not path.is_symlink():
                    data = path.read_bytes()
                    if data[:4] == b"\x7fELF":
                        parts.append(data)
                        total += len(data)
            if total >= limit:
                return b"".join(parts)
    return b"".join(parts)


def fill(corpus: bytes, size: int) -> bytes:
    """Repeat a corpus to `size` bytes (repeats are not page-aligned, so they do not dedup)."""
    if not corpus:
        raise RuntimeError("empty corpus")
    reps = size // len(corpus) + 1
    return (corpus * reps)[:size]


def _kept(path: Path, size: int) -> bool:
    """A file made by an earlier run is reused when its size already fits."""
    return path.exists() and path.stat().st_size == size


def make_file(path: Path, size: int) -> None:
    """Random (incompressible) contents, on disk before this returns."""
    if _kept(path, size):
        return
    with open(path, "wb") as f:
        for _ in range(size // MiB):
            f.write(os.urandom(MiB))
        f.flush()
        os.fsync(f.fileno())


def make_text_file(path: Path, size: int) -> None:
    """Text-like contents (compresses about 2x with lz4), on disk before this returns."""
    if _kept(path, size):
        return
    with open(path, "wb") as f:
        f.write(fill(text_corpus(min(size, 48 * MiB)), size))
        f.flush()
        os.fsync(f.fileno())
