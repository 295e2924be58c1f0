"""The training forward without hook points: the bridge's own parameters, plain torch ops.

A ``TransformerBridge`` forward passes every activation through a ``HookPoint`` module and
the bridge's component wrappers; at the sizes this package trains (d_model 64-256) that
Python overhead is a measurable share of a step (``benchmarks/train_step.py``: the bridge
costs 1.1-1.25x a plain PyTorch GPT of the same shape). Training needs no hooks, so the
trainer runs this forward instead, on the SAME parameter tensors: gradients and optimiser
updates land in the bridge, which stays the hooked model every analysis reads.

``supports(model)`` says whether the fast path reproduces the model's forward (the
architecture this package builds: pre-LN or pre-RMS, learned / no positional embedding,
GELU or ReLU MLP, causal attention with 1/sqrt(d_head) scaling); anything else falls back to
the bridge. ``tests/test_fastpath.py`` checks logits, the last residual and gradients
against the bridge.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from jaxtyping import Float, Int
from torch import Tensor

_ACTS = {"gelu": F.gelu, "relu": F.relu, "gelu_new": lambda x: F.gelu(x, approximate="tanh")}


def _cfg(model, name, default=None):
    return getattr(model.cfg, name, default)


def supports(model) -> bool:
    """True when ``forward`` computes exactly what ``model(tokens)`` computes."""
    try:
        if _cfg(model, "architecture") != "TransformerLensNative":
            return False
        if _cfg(model, "act_fn") not in _ACTS or _cfg(model, "attention_dir", "causal") != "causal":
            return False
        if _cfg(model, "normalization_type") not in ("LN", "RMS") or _cfg(model, "attn_only", False):
            return False
        if _cfg(model, "positional_embedding_type", "standard") not in ("standard",):
            return False
        scale = _cfg(model, "attn_scale", -1.0)
        if scale not in (-1.0, None) and not math.isclose(float(scale), math.sqrt(model.cfg.d_head)):
            return False
        if _cfg(model, "attn_scores_soft_cap", -1.0) not in (-1.0, None) or _cfg(model, "final_rms", False):
            return False
        return all(hasattr(model, n) for n in ("embed", "blocks", "ln_final", "unembed"))
    except Exception:  # an unfamiliar config: the bridge is always right
        return False


def _norm(x: Tensor, module, kind: str, eps: float) -> Tensor:
    w = module.weight
    if kind == "RMS":
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * w
    return F.layer_norm(x, x.shape[-1:], w, getattr(module, "bias", None), eps)


def _linear(x: Tensor, module) -> Tensor:
    return F.linear(x, module.weight, getattr(module, "bias", None))


def _inner(module):
    """The torch module a bridge component wraps (or the module itself)."""
    return getattr(module, "_original_component", None) or module


def forward(model, tokens: Int[Tensor, "batch pos"]) -> tuple[Float[Tensor, "batch pos vocab"], Float[Tensor, "batch pos d_model"]]:
    """(logits, last block's residual output) of ``model`` on ``tokens``, live (graph
    attached), without hook points. Call only when ``supports(model)``."""
    cfg = model.cfg
    kind, eps = cfg.normalization_type, float(getattr(cfg, "eps", 1e-5))
    act = _ACTS[cfg.act_fn]
    H, dh = cfg.n_heads, cfg.d_head
    B, L = tokens.shape
    x = F.embedding(tokens, _inner(model.embed).weight)
    pos = getattr(model, "pos_embed", None)
    if pos is not None:
        x = x + _inner(pos).weight[:L]
    for block in model.blocks:
        attn = block.attn
        h = _norm(x, _inner(block.ln1), kind, eps)
        q = _linear(h, _inner(attn.q)).view(B, L, H, dh).transpose(1, 2)
        k = _linear(h, _inner(attn.k)).view(B, L, H, dh).transpose(1, 2)
        v = _linear(h, _inner(attn.v)).view(B, L, H, dh).transpose(1, 2)
        z = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + _linear(z.transpose(1, 2).reshape(B, L, H * dh), _inner(attn.o))
        h = _norm(x, _inner(block.ln2), kind, eps)
        mlp = block.mlp
        x = x + _linear(act(_linear(h, _inner(getattr(mlp, "in")))), _inner(mlp.out))
    resid = x
    logits = _linear(_norm(x, _inner(model.ln_final), kind, eps), _inner(model.unembed))
    return logits, resid
