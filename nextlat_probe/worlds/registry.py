"""Build worlds by name (CLIs) or from a stored spec (checkpoints).

One grammar for worlds on every command line (``--world`` of every CLI, ``sweep``'s grid):
``name[:key=value,key=value,...]``, e.g. ``mess3:x=0.05,a=0.85``, ``taxi:walk=shortest,
holdout=0.2``, ``pathstar:degree=2,length=5``. ``parse_spec`` reads it (a key given twice,
a key without a value, an empty name: one-line ``WorldError``); ``make_world`` checks the
options against the world's own keyword arguments (an unknown key, a word where a number
belongs) before it builds anything.
"""
from __future__ import annotations

import inspect
from typing import Any, Callable

from .base import World, WorldError

WORLD_NAMES = ("mess3", "rrxor", "z1r", "taxi", "a5", "pathstar")


def _builder(name: str) -> Callable[..., World]:
    """The callable ``make_world`` calls for a world name."""
    key = name.lower()
    if key == "mess3":
        from .hmm import Mess3

        return Mess3
    if key == "rrxor":
        from .hmm import RRXOR

        return RRXOR
    if key in ("z1r", "zero_one_random", "zeroonerandom"):
        from .hmm import ZeroOneRandom

        return ZeroOneRandom
    if key == "taxi":
        from .taxi import Taxi

        return Taxi.from_options
    if key == "a5":
        from .a5 import A5

        return A5
    if key == "pathstar":
        from .pathstar import PathStar

        return PathStar
    raise WorldError(f"unknown world {name!r}; choose one of {', '.join(WORLD_NAMES)}")


def check_options(name: str, options: dict[str, Any]) -> None:
    """Every option is a keyword of world ``name``, and a number where the world takes only
    a number (a word such as ``x=abc`` is named here, not left to a conversion deep inside);
    ``WorldError`` otherwise. Builds nothing."""
    _check_options(name.lower(), _builder(name), {k: v for k, v in options.items() if v is not None})


def _check_options(name: str, build: Callable[..., World], opts: dict[str, Any]) -> None:
    params = {k: v for k, v in inspect.signature(build).parameters.items() if v.kind is v.KEYWORD_ONLY
              or v.kind is v.POSITIONAL_OR_KEYWORD}
    for key, value in opts.items():
        if key not in params:
            raise WorldError(f"{name}: unknown option {key!r} (it takes {', '.join(params) or 'no options'})")
        ann = str(params[key].annotation)
        numeric = ("int" in ann or "float" in ann) and "str" not in ann
        if numeric and (isinstance(value, (str, bool)) or not isinstance(value, (int, float))):
            raise WorldError(f"{name}: {key}={value!r} is not a number")


def make_world(name: str, **options: Any) -> World:
    """Build a world by its CLI name. ``options`` are the world's own keyword arguments
    (``None`` values are dropped so CLI defaults fall through to the world's defaults); an
    unknown option or a word where a number belongs is a ``WorldError`` naming it."""
    opts = {k: v for k, v in options.items() if v is not None}
    build = _builder(name)
    _check_options(name.lower(), build, opts)
    return build(**opts)


def spec_value(text: str) -> Any:
    """One option value of a world spec: ``none``/``null`` (the world's default), ``true``/
    ``false``, an integer, a number, or else the text itself (a map file, a walk kind)."""
    low = text.lower()
    if low in ("none", "null"):
        return None
    if low in ("true", "false"):
        return low == "true"
    for conv in (int, float):
        try:
            return conv(text)
        except ValueError:
            pass
    return text


def parse_spec(text: str, flag: str = "--world") -> tuple[str, dict[str, Any]]:
    """``name[:key=value,...]`` -> (lower-case name, options in the order given). Refused in
    one line (naming ``flag`` and the spec): an empty name, a part that is not key=value,
    a key without a value, a key given twice. Builds nothing (``make_world`` checks the
    options against the world)."""
    name, _, rest = str(text).strip().partition(":")
    name = name.strip().lower()
    if not name:
        raise WorldError(f"{flag} {text!r}: empty world name (e.g. mess3, taxi:walk=shortest)")
    opts: dict[str, Any] = {}
    for part in (p.strip() for p in rest.split(",")):
        if not part and rest.strip():
            raise WorldError(f"{flag} {text!r}: an empty option between commas")
        if not part:
            continue
        key, eq, val = (x.strip() for x in part.partition("="))
        if not eq or not key:
            raise WorldError(f"{flag} {text!r}: {part!r} is not key=value")
        if not val:
            raise WorldError(f"{flag} {text!r}: {key}= has no value")
        if key in opts:
            raise WorldError(f"{flag} {text!r}: {key} given twice")
        opts[key] = spec_value(val)
    return name, opts


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
