"""nextlat_probe: train NextLat and GPT hooked transformers on worlds with exact belief
states, and measure what their hidden states learned.

Pipeline: ``worlds`` -> ``models`` -> ``training`` -> ``checkpoint`` -> ``activations`` ->
``analysis`` -> ``compare`` (runners, records out) -> ``tables`` / ``plots`` / ``report`` ->
CLIs; see docs/architecture.md. Heavy libraries (torch, transformer-lens) are imported only by the
parts that need them, so ``import nextlat_probe`` and every CLI's ``--help`` stay fast.
"""
from __future__ import annotations

__version__ = "0.2.0"

_LAZY = {
    "load_checkpoint": "nextlat_probe.checkpoint",
    "load_model": "nextlat_probe.sources",
    "save_checkpoint": "nextlat_probe.checkpoint",
    "CheckpointError": "nextlat_probe.errors",
    "NextLatError": "nextlat_probe.errors",
    "make_world": "nextlat_probe.worlds",
    "world_from_spec": "nextlat_probe.worlds",
}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'nextlat_probe' has no attribute {name!r}")


__all__ = ["__version__", *_LAZY]
