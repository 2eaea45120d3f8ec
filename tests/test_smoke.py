from pathlib import Path

from tests.conftest import Mount


def test_read_write_roundtrip(mnt: Mount, src: Path) -> None:
    (mnt.mnt / "f").write_bytes(b"x" * 10000)
    assert (src / "f").read_bytes() == b"x" * 10000
    assert (mnt.mnt / "f").read_bytes() == b"x" * 10000
    assert mnt.stats()["backing.writes"] >= 1
