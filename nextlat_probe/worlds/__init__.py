"""Worlds with exact belief states: HMM processes, the taxi world, the A5 word problem, the
path-star planning task.

``make_world(name, **options)`` builds a world by name (what the CLIs use);
``parse_spec("name:key=value,...")`` reads the one world grammar of every command line;
``world_from_spec(spec)`` rebuilds one from ``World.spec()`` (what checkpoints store).
"""
from __future__ import annotations

from .base import Sample, World, WorldError
from .registry import WORLD_NAMES, make_world, parse_spec, world_from_spec

__all__ = ["Sample", "World", "WorldError", "WORLD_NAMES", "make_world", "parse_spec", "world_from_spec"]

# Imported lazily so that `from nextlat_probe.worlds import Mess3` works without paying
# for modules a caller does not use.
_LAZY = {
    "HMM": ".hmm",
    "Mess3": ".hmm",
    "RRXOR": ".hmm",
    "ZeroOneRandom": ".hmm",
    "StreetMap": ".streetmap",
    "synthetic_manhattan": ".streetmap",
    "Taxi": ".taxi",
    "A5": ".a5",
    "PathStar": ".pathstar",
}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        mod = importlib.import_module(_LAZY[name], __name__)
        return getattr(mod, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ += list(_LAZY)
