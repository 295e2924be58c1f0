"""Collect hidden states from a hooked transformer, aligned with the world's exact beliefs.

Hook points (TransformerLens's stable names)::

    embed     blocks.0.hook_resid_pre      = hook_embed + hook_pos_embed
    L{l}      blocks.{l}.hook_resid_post   the residual stream after block l
    ln_final  ln_final.hook_normalized     the last residual normalised by the final LayerNorm, before
                                           its weight and bias (what the unembedding reads, up to them)

``L{n-1}``, the last block's residual, is what ``--layers last`` selects and what NextLat's
latent loss predicts; ``ln_final`` is the LayerNorm'd stream after it (called "final" in
earlier versions, which is still accepted as input).

``collect`` returns arrays ``[n, length, D]`` with the same ``[sequence, position]``
indexing as ``world.sample`` / ``world.beliefs``; ``collect_stats`` streams per-layer
sufficient statistics (count, sum, X^T X in float64) so rank and linear probes over many
tokens never hold the full N x D matrix.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Iterable

import numpy as np

if TYPE_CHECKING:  # pragma: no cover
    from .analysis.stats import SufficientStats
    from .worlds import World

EMBED_HOOK = "blocks.0.hook_resid_pre"
LN_FINAL_HOOK = "ln_final.hook_normalized"


def layer_hook(layer: int | str) -> str:
    """"embed" -> the embeddings; l >= 0 -> ``blocks.{l}.hook_resid_post``; "ln_final" (or
    the older "final") -> ``ln_final.hook_normalized``. Negative block indices are resolved
    against the model's depth by ``compare.parse_layers``, not here."""
    if layer in ("embed", "emb"):
        return EMBED_HOOK
    if layer in ("ln_final", "final"):
        return LN_FINAL_HOOK
    if int(layer) < 0:
        raise ValueError(f"layer_hook: negative block index {layer}; resolve it with compare.parse_layers")
    return f"blocks.{int(layer)}.hook_resid_post"


def layer_label(hook: str) -> str:
    """Short label for tables and plots: embed, L0, L1, ..., final."""
    if hook == EMBED_HOOK:
        return "embed"
    if hook == LN_FINAL_HOOK:
        return "ln_final"
    if hook.startswith("blocks.") and hook.endswith(".hook_resid_post"):
        return f"L{hook.split('.')[1]}"
    return hook


def default_hooks(n_layers: int) -> list[str]:
    return [EMBED_HOOK, *(layer_hook(i) for i in range(n_layers)), LN_FINAL_HOOK]


def _batches(n: int, batch_size: int, progress: bool, desc: str) -> Iterable[tuple[int, int]]:
    from .progress import progress as bar

    starts = range(0, n, batch_size)
    for s in bar(starts, desc=desc, disable=not progress or len(starts) <= 1, leave=False):
        yield s, min(n, s + batch_size)


def _run(model, tokens_np: np.ndarray, hooks: list[str]):
    import torch

    dev = next(model.parameters()).device
    t = torch.as_tensor(tokens_np, dtype=torch.long, device=dev)
    store: dict[str, Any] = {}

    def grab(x, hook):
        store[hook.name] = x.detach()
        return x

    # Register on the canonical hook objects so aliases (resid_post == hook_out) resolve.
    fwd = [(h, grab) for h in hooks]
    with torch.no_grad(), model.hooks(fwd_hooks=fwd):
        logits = model(t)
    hd = model.hook_dict
    out = {}
    for h in hooks:
        name = hd[h].name if h in hd else h
        if name not in store:
            raise KeyError(f"hook {h!r} did not fire")
        out[h] = store[name]
    return out, logits


def collect(
    model,
    tokens: np.ndarray,
    hooks: list[str] | None = None,
    batch_size: int = 64,
    progress: bool = False,
    return_logits: bool = False,
) -> dict[str, np.ndarray] | tuple[dict[str, np.ndarray], np.ndarray]:
    """Hidden states ``{hook: float32 [n, length, D]}`` for ``tokens`` (under no_grad)."""
    tokens = np.asarray(tokens, dtype=np.int64)
    hooks = hooks or default_hooks(model.cfg.n_layers)
    was_training = model.training
    model.eval()
    out: dict[str, np.ndarray] = {}
    logits_out = None
    try:
        for s, e in _batches(len(tokens), batch_size, progress, "hidden states"):
            acts, logits = _run(model, tokens[s:e], hooks)
            for h, a in acts.items():
                if h not in out:
                    out[h] = np.empty((len(tokens), *a.shape[1:]), dtype=np.float32)
                out[h][s:e] = a.float().cpu().numpy()
            if return_logits:
                lg = logits.float().cpu().numpy()
                if logits_out is None:
                    logits_out = np.empty((len(tokens), *lg.shape[1:]), dtype=np.float32)
                logits_out[s:e] = lg
    finally:
        model.train(was_training)
    return (out, logits_out) if return_logits else out


def collect_stats(
    model,
    tokens: np.ndarray,
    hooks: list[str] | None = None,
    mask: np.ndarray | None = None,
    batch_size: int = 64,
    progress: bool = False,
) -> dict[str, "SufficientStats"]:
    """Streaming mode: per-hook ``SufficientStats`` over the positions where ``mask`` is True."""
    from .analysis.stats import SufficientStats

    tokens = np.asarray(tokens, dtype=np.int64)
    hooks = hooks or default_hooks(model.cfg.n_layers)
    if mask is None:
        mask = np.ones(tokens.shape, dtype=bool)
    stats: dict[str, SufficientStats] = {}
    was_training = model.training
    model.eval()
    try:
        for s, e in _batches(len(tokens), batch_size, progress, "hidden-state statistics"):
            acts, _ = _run(model, tokens[s:e], hooks)
            m = mask[s:e]
            for h, a in acts.items():
                rows = a.double().cpu().numpy()[m]
                stats.setdefault(h, SufficientStats(rows.shape[-1])).update(rows)
    finally:
        model.train(was_training)
    return stats


@dataclass
class HiddenStates:
    """Hidden states of sequences from a world, with everything needed to align them.

    ``hidden[hook]`` is float32 ``[n, length, D]``; ``mask`` marks the positions analyses
    use (no padding; with ``drop_prompt`` also not the taxi origin position, where the
    destination is still unknown); ``flat(hook)`` gives the masked rows ``[N, D]`` with
    ``seq_index`` / ``positions`` saying where each row came from.
    """

    tokens: np.ndarray
    states: np.ndarray
    hidden: dict[str, np.ndarray]
    mask: np.ndarray
    logits: np.ndarray | None = None
    extras: dict[str, Any] = field(default_factory=dict)

    @property
    def hooks(self) -> list[str]:
        return list(self.hidden)

    def flat(self, hook: str) -> np.ndarray:
        return self.hidden[hook][self.mask]

    def rows(self, arr: np.ndarray) -> np.ndarray:
        """Select the analysed positions of any ``[n, length, ...]`` array (e.g. beliefs)."""
        return np.asarray(arr)[self.mask]

    @property
    def seq_index(self) -> np.ndarray:
        return np.nonzero(self.mask)[0]

    @property
    def positions(self) -> np.ndarray:
        return np.nonzero(self.mask)[1]


def analysis_mask(world: "World", tokens: np.ndarray, drop_prompt: bool = True) -> np.ndarray:
    mask = np.asarray(world.position_mask(tokens), dtype=bool).copy()
    if drop_prompt:
        mask[:, : int(getattr(world, "prompt_length", 0))] = False
    return mask


def hidden_states(
    model,
    world: "World",
    n_seqs: int = 256,
    seq_len: int | None = None,
    seed: int = 0,
    hooks: list[str] | None = None,
    tokens: np.ndarray | None = None,
    drop_prompt: bool = True,
    batch_size: int = 64,
    progress: bool = False,
    return_logits: bool = False,
) -> HiddenStates:
    """Sample ``n_seqs`` sequences from ``world`` (or use ``tokens``) and collect hidden states."""
    states = None
    extras: dict[str, Any] = {}
    if tokens is None:
        length = seq_len or int(getattr(world, "default_length", 16))
        sample = world.sample(n_seqs, length, seed=seed)
        tokens, states, extras = sample.tokens, sample.states, dict(sample.extras)
    tokens = np.asarray(tokens, dtype=np.int64)
    n_ctx = int(model.cfg.n_ctx)
    if tokens.shape[1] > n_ctx:
        from .errors import AnalysisError

        raise AnalysisError(f"sequences of {tokens.shape[1]} tokens exceed the model's context of {n_ctx}")
    res = collect(model, tokens, hooks, batch_size=batch_size, progress=progress, return_logits=return_logits)
    hidden, logits = res if return_logits else (res, None)
    if states is None:
        states = np.zeros(tokens.shape, dtype=np.int64)
    return HiddenStates(tokens, states, hidden, analysis_mask(world, tokens, drop_prompt), logits, extras)
