"""Build worlds by name (CLIs) or from a stored spec (checkpoints)."""
from __future__ import annotations

from typing import Any

from .base import World, WorldError

WORLD_NAMES = ("mess3", "rrxor", "z1r", "taxi", "a5", "pathstar")


def make_world(name: str, **options: Any) -> World:
    """Build a world by its CLI name. ``options`` are the world's own keyword arguments
    (``None`` values are dropped so CLI defaults fall through to the world's defaults)."""
    opts = {k: v for k, v in options.items() if v is not None}
    key = name.lower()
    if key == "mess3":
        from .hmm import Mess3

        return Mess3(**opts)
    if key == "rrxor":
        from .hmm import RRXOR

        return RRXOR(**opts)
    if key in ("z1r", "zero_one_random", "zeroonerandom"):
        from .hmm import ZeroOneRandom

        return ZeroOneRandom(**opts)
    if key == "taxi":
        from .taxi import Taxi

        return Taxi.from_options(**opts)
    if key == "a5":
        from .a5 import A5

        return A5(**opts)
    if key == "pathstar":
        from .pathstar import PathStar

        return PathStar(**opts)
    raise WorldError(f"unknown world {name!r}; choose one of {', '.join(WORLD_NAMES)}")


def canonical_spec(spec: Any) -> Any:
    """``spec`` with the keys that older versions did not write filled in with what they
    meant (an A5 spec without ``form`` is the interleaved form), so that a stored spec and
    the one its rebuilt world writes compare equal. Builds no world."""
    if isinstance(spec, dict) and spec.get("kind") == "a5" and "form" not in spec:
        return {**spec, "form": "interleaved"}
    return spec


def world_from_spec(spec: dict[str, Any]) -> World:
    """Rebuild a world from ``World.spec()``."""
    if not isinstance(spec, dict) or "kind" not in spec:
        raise WorldError("world spec must be a dict with a 'kind' key")
    kind = spec["kind"]
    if kind == "hmm":
        from .hmm import HMM

        return HMM.from_spec(spec)
    if kind == "taxi":
        from .taxi import Taxi

        return Taxi.from_spec(spec)
    if kind == "a5":
        from .a5 import A5

        return A5.from_spec(spec)
    if kind == "pathstar":
        from .pathstar import PathStar

        return PathStar.from_spec(spec)
    raise WorldError(f"unknown world kind {kind!r} in spec")
