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

``FastModel(model)`` gathers those parameters ONCE into plain attributes (the bridge's own
``Parameter`` objects, so optimiser updates are seen; nothing is copied). ``torch.compile``
traces a forward on a ``FastModel`` as one graph; on the bridge itself every component
wrapper and property breaks the graph, so each ``_linear`` call site became its own compiled
frame, recompiled for every dtype autocast hands it ("tensor 'x' dtype mismatch") until
dynamo's recompile limit. Build it after the model is on its device.
"""
from __future__ import annotations

import math
from types import SimpleNamespace

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


def _inner(module):
    """The torch module a bridge component wraps (or the module itself)."""
    return getattr(module, "_original_component", None) or module


class FastModel:
    """The parameters ``forward`` reads, as plain attributes of a plain object (see the
    module docstring). Also what the losses read from a model: ``cfg`` (n_layers,
    normalization_type, eps), ``W_E``, ``W_U``, ``b_U`` and ``head_params`` (the final
    LayerNorm and unembedding, ``models.transformer.frozen_head_params``)."""

    def __init__(self, model) -> None:
        cfg = model.cfg
        self.cfg = SimpleNamespace(n_layers=int(cfg.n_layers), n_heads=int(cfg.n_heads), d_head=int(cfg.d_head),
                                   normalization_type=cfg.normalization_type, eps=float(getattr(cfg, "eps", 1e-5)),
                                   act_fn=cfg.act_fn)
        self.W_E = _inner(model.embed).weight
        pos = getattr(model, "pos_embed", None)
        self.W_pos = _inner(pos).weight if pos is not None else None

        def wb(module):
            m = _inner(module)
            return m.weight, getattr(m, "bias", None)

        self.blocks = [(wb(b.ln1), wb(b.attn.q), wb(b.attn.k), wb(b.attn.v), wb(b.attn.o), wb(b.ln2),
                        wb(getattr(b.mlp, "in")), wb(b.mlp.out)) for b in model.blocks]
        self.ln_final = wb(model.ln_final)
        self.unembed = wb(model.unembed)

    @property
    def W_U(self) -> Tensor:
        return self.unembed[0].T

    @property
    def b_U(self) -> Tensor | None:
        return self.unembed[1]

    @property
    def head_params(self) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        w, b = self.ln_final
        W_U = self.W_U
        b_U = self.b_U if self.b_U is not None else W_U.new_zeros(W_U.shape[-1])
        return w, (b if b is not None else torch.zeros_like(w)), W_U, b_U

    def parameters(self):
        """The tensors it reads (the bridge's own parameters), the token embedding first."""
        yield self.W_E
        if self.W_pos is not None:
            yield self.W_pos
        for block in self.blocks:
            for w, b in block:
                yield w
                if b is not None:
                    yield b
        for w, b in (self.ln_final, self.unembed):
            yield w
            if b is not None:
                yield b

    def __call__(self, tokens: Int[Tensor, "batch pos"]):
        return _forward(self, tokens)


def forward(model, tokens: Int[Tensor, "batch pos"]) -> tuple[Float[Tensor, "batch pos vocab"], Float[Tensor, "batch pos d_model"]]:
    """(logits, last block's residual output) of ``model`` (a bridge or a ``FastModel``) on
    ``tokens``, live (graph attached), without hook points. Call only when ``supports(model)``."""
    return _forward(model if isinstance(model, FastModel) else FastModel(model), tokens)


def _norm_w(x: Tensor, wb: tuple, kind: str, eps: float) -> Tensor:
    w, b = wb
    if kind == "RMS":
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * w
    return F.layer_norm(x, x.shape[-1:], w, b, eps)


def _forward(m: FastModel, tokens: Tensor) -> tuple[Tensor, Tensor]:
    cfg = m.cfg
    kind, eps, act = cfg.normalization_type, cfg.eps, _ACTS[cfg.act_fn]
    H, dh = cfg.n_heads, cfg.d_head
    B, L = tokens.shape
    x = F.embedding(tokens, m.W_E)
    if m.W_pos is not None:
        x = x + m.W_pos[:L]
    for ln1, q, k, v, o, ln2, fc_in, fc_out in m.blocks:
        h = _norm_w(x, ln1, kind, eps)
        qh = F.linear(h, *q).view(B, L, H, dh).transpose(1, 2)
        kh = F.linear(h, *k).view(B, L, H, dh).transpose(1, 2)
        vh = F.linear(h, *v).view(B, L, H, dh).transpose(1, 2)
        z = F.scaled_dot_product_attention(qh, kh, vh, is_causal=True)
        x = x + F.linear(z.transpose(1, 2).reshape(B, L, H * dh), *o)
        h = _norm_w(x, ln2, kind, eps)
        x = x + F.linear(act(F.linear(h, *fc_in)), *fc_out)
    resid = x
    logits = F.linear(_norm_w(x, m.ln_final, kind, eps), *m.unembed)
    return logits, resid
