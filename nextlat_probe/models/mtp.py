"""The extra heads of the multi-token-prediction (MTP) baseline (Gloeckle et al. 2024).

A shared trunk (the transformer) and one small head per extra offset: head k (k = 1..d)
reads the last block's residual h_t and predicts the target d steps further,
``targets[:, t + k]`` (for a next-token world, token t + k + 1):

    r_k   = h_t + fc2_k(GELU(fc1_k(LayerNorm_k(h_t))))            [batch, pos, d_model]
    logit = U · LN_final(r_k) + b_U                                [batch, pos, d_vocab]

fc1_k: Linear(d_model -> H), fc2_k: Linear(H -> d_model), H = ``d_hidden`` (default
d_model). LN_final and U are the model's OWN final LayerNorm and unembedding, live (not
detached): every head trains them together with the standard head, which stays the model
users analyse. The heads are only used in training; a checkpoint stores them (``config()``
rebuilds them) but every analysis reads the transformer alone.

Initialisation: fc1 and the head's LayerNorm keep PyTorch's defaults; fc2's bias is zero and
its weight is drawn with std ``OUT_INIT_GAIN / sqrt(H)`` (0.00625 at H = 64), so that each
head's branch starts at a few percent of the residual stream's scale. Every head therefore
starts close to the standard head's next-token distribution (the natural first guess for
a later token) without being exactly equal to it: unlike a zero fc2 (p_psi's identity
start), every head weight receives gradient from the first step.
"""
from __future__ import annotations

import math

import torch
from jaxtyping import Float
from torch import Tensor, nn

from .transformer import frozen_head_params

#: fc2's initial weight std is ``OUT_INIT_GAIN / sqrt(d_hidden)`` (see the module docstring).
OUT_INIT_GAIN = 0.05


class MTPHead(nn.Module):
    """One residual MLP block: ``h + fc2(GELU(fc1(LayerNorm(h))))``, shape-preserving."""

    def __init__(self, d_model: int, d_hidden: int):
        super().__init__()
        self.norm = nn.LayerNorm(d_model)
        self.fc1 = nn.Linear(d_model, d_hidden)
        self.fc2 = nn.Linear(d_hidden, d_model)
        nn.init.normal_(self.fc2.weight, std=OUT_INIT_GAIN / math.sqrt(d_hidden))
        nn.init.zeros_(self.fc2.bias)

    def forward(self, h: Float[Tensor, "... d_model"]) -> Float[Tensor, "... d_model"]:
        return h + self.fc2(nn.functional.gelu(self.fc1(self.norm(h))))


class MTPHeads(nn.Module):
    """The ``horizon`` (d) extra heads; ``heads[k - 1]`` predicts offset k. ``d_hidden``
    (H) defaults to ``d_model`` and must be positive."""

    def __init__(self, d_model: int, horizon: int, d_hidden: int | None = None):
        super().__init__()
        d_hidden = d_model if not d_hidden else int(d_hidden)
        if d_model <= 0 or d_hidden <= 0 or not isinstance(horizon, int) or horizon < 1:
            raise ValueError("MTPHeads: d_model, d_hidden and horizon must be positive integers")
        self.d_model, self.horizon, self.d_hidden = int(d_model), int(horizon), d_hidden
        self.heads = nn.ModuleList(MTPHead(self.d_model, d_hidden) for _ in range(horizon))

    def forward(self, h: Float[Tensor, "... d_model"]) -> Float[Tensor, "horizon ... d_model"]:
        """Every head's residual ``r_k`` for the same ``h`` (head k at index k - 1)."""
        return torch.stack([head(h) for head in self.heads])

    def config(self) -> dict[str, int]:
        return {"d_model": self.d_model, "horizon": self.horizon, "d_hidden": self.d_hidden}

    @staticmethod
    def expected_shapes(d_model: int, horizon: int, d_hidden: int) -> dict[str, list[int]]:
        """The state-dict shapes of ``MTPHeads(d_model, horizon, d_hidden)`` (checked
        against a checkpoint's tensors before anything is built)."""
        shapes: dict[str, list[int]] = {}
        for k in range(horizon):
            shapes.update({
                f"heads.{k}.norm.weight": [d_model],
                f"heads.{k}.norm.bias": [d_model],
                f"heads.{k}.fc1.weight": [d_hidden, d_model],
                f"heads.{k}.fc1.bias": [d_hidden],
                f"heads.{k}.fc2.weight": [d_model, d_hidden],
                f"heads.{k}.fc2.bias": [d_model],
            })
        return shapes


def shared_head_logits(model, x: Float[Tensor, "... d_model"]) -> Float[Tensor, "... d_vocab"]:
    """``U · LN_final(x) + b_U`` with the model's own, live (not detached) final LayerNorm
    and unembedding: the same map the model applies to its last residual stream."""
    w, b, W_U, b_U = frozen_head_params(model)
    eps = float(getattr(model.cfg, "eps", 1e-5))
    if getattr(model.cfg, "normalization_type", "LN") == "RMS":
        x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * w
    else:
        x = nn.functional.layer_norm(x, x.shape[-1:], w, b, eps)
    return x @ W_U + b_U
