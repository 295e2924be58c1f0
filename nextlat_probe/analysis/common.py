"""Helpers shared by the checkpoint-level analyses: loading several checkpoints and
drawing ONE set of sequences that every compared model sees."""
from __future__ import annotations

import sys
from typing import Any

import numpy as np


def load_all(paths, device: str = "cpu") -> list[Any]:
    from ..checkpoint import load_checkpoint

    return [load_checkpoint(p, device=device) for p in paths]


def ensure_loaded(ckpts, device: str = "cpu") -> list[Any]:
    """Paths or ``LoadedCheckpoint`` objects -> loaded checkpoints (paths are loaded, in
    order; all of them before any analysis starts, so a bad file fails fast)."""
    paths = [c for c in ckpts if not hasattr(c, "model")]
    fresh = iter(load_all(paths, device=device))
    return [c if hasattr(c, "model") else next(fresh) for c in ckpts]


def analysis_length(ck, seq_len: int | None = None) -> int:
    """The sequence length to analyse: asked for, else the training length, within n_ctx."""
    n_ctx = int(ck.model_config.n_ctx)
    if seq_len is not None:
        if seq_len > n_ctx:
            from ..cli import UsageError

            raise UsageError(f"--seq-len {seq_len} exceeds the context of {ck.path} ({n_ctx} tokens)")
        return int(seq_len)
    trained = ck.train_config.get("seq_len") or int(getattr(ck.world, "default_length", 16))
    return min(int(trained), n_ctx)


def shared_tokens(ckpts: list[Any], n_seqs: int, seq_len: int | None, seed: int):
    """Sample sequences once from the first checkpoint's world and reuse them for every
    checkpoint with the same world, so the comparison is on identical inputs. Returns a
    list of (tokens, Sample) per checkpoint."""
    out = []
    cache: dict[str, Any] = {}
    length = min(analysis_length(ck, seq_len) for ck in ckpts)
    for ck in ckpts:
        key = repr(sorted(ck.world.spec().items()))
        if key not in cache:
            if cache:
                print(f"warning: {ck.path} was trained on a different world; it is analysed on its own sequences", file=sys.stderr)
            cache[key] = ck.world.sample(n_seqs, length, seed=np.random.default_rng([seed, 7]))
        out.append(cache[key])
    return out


def ckpt_info(ck) -> dict[str, Any]:
    """The identifying fields every analysis record carries (validation loss beside every
    representation metric: SPEC's honest-comparison rule)."""
    m = ck.metrics or {}
    return {
        "checkpoint": ck.name,
        "path": ck.path,
        "objective": ck.objective,
        "horizon": ck.objective_config.horizon if ck.objective == "nextlat" else None,
        "step": ck.step,
        "val_loss": m.get("val_loss"),
        "val_floor": m.get("val_floor"),
        "val_gap": m.get("val_gap"),
    }
