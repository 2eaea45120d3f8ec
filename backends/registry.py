"""Find backends by name through the `tmemfs.backends` entry-point group.

tmemfs registers its own there (see pyproject.toml); another package adds a
backend by declaring an entry point in the same group, without touching
tmemfs.
"""

from __future__ import annotations

from importlib.metadata import entry_points

from backends.base import Backend

GROUP = "tmemfs.backends"


def available() -> dict[str, str]:
    """Installed backend names mapped to their entry-point targets."""
    return {ep.name: ep.value for ep in entry_points(group=GROUP)}


def load(name: str) -> type[Backend]:
    """The backend class registered under `name` (KeyError if none, ImportError if broken)."""
    for ep in entry_points(group=GROUP, name=name):
        cls = ep.load()
        if not (isinstance(cls, type) and issubclass(cls, Backend)):
            raise ImportError(f"entry point {name!r} ({ep.value}) is not a Backend subclass")
        return cls
    raise KeyError(name)
