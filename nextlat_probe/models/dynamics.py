"""The latent dynamics model p_psi of NextLat (SPEC §1).

    ĥ_{t+1} = h_t + MLP(LayerNorm(concat[h_t, e(x_{t+1})]))

MLP = Linear(2D -> H) -> GELU -> Linear(H -> H) -> GELU -> Linear(H -> D). The last Linear
is zero-initialised, so p_psi starts as the identity map h_t -> h_t: early in training the
transition loss then only asks the transformer to change slowly along the sequence, and
the dynamics model learns the rest.

The same module is used post hoc (``nextlat_probe.analysis.transition``) to ask whether the
frozen hidden states of ANY checkpoint follow a fixed transition rule.
"""
from __future__ import annotations

import torch
from jaxtyping import Float
from torch import Tensor, nn


class LatentDynamics(nn.Module):
    """p_psi(h, e) -> next latent. ``d_embed`` defaults to ``d_model``; ``d_hidden`` (H)
    defaults to ``d_model`` and must be positive."""

    def __init__(self, d_model: int, d_embed: int | None = None, d_hidden: int | None = None):
        super().__init__()
        d_embed = d_model if d_embed is None else int(d_embed)
        d_hidden = d_model if not d_hidden else int(d_hidden)  # H = 0 / None -> D (never 0)
        if d_model <= 0 or d_embed <= 0 or d_hidden <= 0:
            raise ValueError("LatentDynamics: d_model, d_embed and d_hidden must be positive")
        self.d_model, self.d_embed, self.d_hidden = d_model, d_embed, d_hidden
        self.norm = nn.LayerNorm(d_model + d_embed)
        self.fc1 = nn.Linear(d_model + d_embed, d_hidden)
        self.fc2 = nn.Linear(d_hidden, d_hidden)
        self.fc3 = nn.Linear(d_hidden, d_model)
        nn.init.zeros_(self.fc3.weight)
        nn.init.zeros_(self.fc3.bias)

    def forward(
        self, h: Float[Tensor, "... d_model"], e: Float[Tensor, "... d_embed"]
    ) -> Float[Tensor, "... d_model"]:
        x = self.norm(torch.cat([h, e], dim=-1))
        x = nn.functional.gelu(self.fc1(x))
        x = nn.functional.gelu(self.fc2(x))
        return h + self.fc3(x)

    def rollout(
        self, h0: Float[Tensor, "... d_model"], e_seq: Float[Tensor, "... k d_embed"]
    ) -> Float[Tensor, "... k d_model"]:
        """Recursive roll-out: ĥ_1 = p(h0, e_1), ĥ_i = p(ĥ_{i-1}, e_i). Returns all k steps."""
        out = []
        h = h0
        for i in range(e_seq.shape[-2]):
            h = self(h, e_seq[..., i, :])
            out.append(h)
        return torch.stack(out, dim=-2)

    def config(self) -> dict[str, int]:
        return {"d_model": self.d_model, "d_embed": self.d_embed, "d_hidden": self.d_hidden}
