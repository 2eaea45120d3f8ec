"""The randomized model check through real mounts, cache sizes from one page up."""

from __future__ import annotations

import os
import random

import pytest

from tools.modelcheck import ModelCheck

OPS = 20000
CONFIGS = [
    "cleancache=tmem,cache_size=4K",
    "cleancache=tmem,cache_size=28K,cc_size=64K",
    "cleancache=none,cache_size=256K",
    "cleancache=tmem,cache_size=16M",
]


@pytest.mark.parametrize("options", CONFIGS)
def test_random_io_matches_model(mount_factory, options: str) -> None:
    seed = int(os.environ.get("TMEMFS_SEED", random.randrange(1 << 32)))
    with mount_factory(options) as m:
        try:
            ModelCheck(m.mnt, seed).run(OPS)
        except AssertionError as exc:
            raise AssertionError(f"{options}: {exc} (replay with TMEMFS_SEED={seed})") from None
        stats = m.stats()
    assert stats["cleancache.verify_failures"] == 0
    assert stats["fs.internal_errors"] == 0
