"""Find backends by name through the `tmemfs.backends` entry-point group, and build them.

tmemfs registers its own there (see pyproject.toml); another package adds a
backend by declaring an entry point in the same group, without touching
tmemfs. `none` is built in: no backend at all, so every get misses and the
mount's pools stay placeholders until one is registered at run time.
"""

from __future__ import annotations

from importlib.metadata import entry_points

from backends.base import Backend
from backends.host import HOST_OPTIONS, build_host_client

GROUP = "tmemfs.backends"
NONE = "none"


def available() -> dict[str, str]:
    """Backend names mapped to where they come from."""
    found = {ep.name: ep.value for ep in entry_points(group=GROUP)}
    return {NONE: "built in", **dict(sorted(found.items()))}


def load(name: str) -> type[Backend]:
    """The backend class registered under `name` (KeyError if none, ImportError if broken)."""
    for ep in entry_points(group=GROUP, name=name):
        cls = ep.load()
        if not (isinstance(cls, type) and issubclass(cls, Backend)):
            raise ImportError(f"entry point {name!r} ({ep.value}) is not a Backend subclass")
        return cls
    raise KeyError(name)


def describe(indent: str = "") -> str:
    """Every backend with its summary and options (for --help and `tmemctl backends`)."""
    lines = []
    for name, target in available().items():
        if name == NONE:
            lines.append(f"{indent}{name:<28} no backend: every get misses (the baseline)")
            continue
        try:
            cls = load(name)
        except Exception as exc:  # a broken plugin must not break the listing
            lines.append(f"{indent}{name:<28} (cannot load {target}: {exc})")
            continue
        lines.append(f"{indent}{name:<28} {cls.summary}")
        lines.extend(f"{indent}  {key + '=...':<26} {spec.help}" for key, spec in cls.options.items()
                     if spec is not HOST_OPTIONS.get(key))
    lines.append(f"{indent}{'(with cc_host=NAME)':<28} tmem, zcache and dedup as clients of a host pool:")
    lines.extend(f"{indent}  {key + '=...':<26} {spec.help}" for key, spec in HOST_OPTIONS.items())
    return "\n".join(lines)


def build(names: list[str], capacity: int, options: dict[str, object]) -> Backend | None:
    """The backend for `cleancache=A[+B...]`: None for `none`, a chain for several.

    Each member gets the options it declares; the capacity is per member.
    """
    if names == [NONE]:
        return None
    if NONE in names:
        raise ValueError("`none` cannot be part of a chain")
    if "cc_host" in options:
        return build_host_client(names, capacity, options)
    classes = [load(name) for name in names]
    # Each member gets the options it declares as its own: not those it declares by including
    # HOST_OPTIONS (tmem's cc_dir is a host client's; zcache+cluster's cc_dir is cluster's).
    owned = [{k: v for k, v in options.items() if k in cls.options and cls.options[k] is not HOST_OPTIONS.get(k)}
             for cls in classes]
    stray = sorted(set(options).difference(*owned))
    if stray:
        raise ValueError(f"{', '.join(stray)}: only with cc_host=NAME")
    members = [cls(capacity, **mine) for cls, mine in zip(classes, owned, strict=True)]
    if len(members) == 1:
        return members[0]
    from backends.chain import ChainBackend

    return ChainBackend(members)
