"""Model configuration: one dataclass for GPT and NextLat alike (they are the same
transformer; NextLat only adds the latent dynamics model p_psi used during training)."""
from __future__ import annotations

from dataclasses import asdict, dataclass, fields, replace
from typing import Any

#: Presets. ``tiny`` trains in a few minutes on a 2-core CPU; ``mini`` is the sizing-guide
#: model of the SPEC (4 layers, d_model 128: ~4-5 steps/s on 2 cores at batch 64);
#: ``small`` is what one would run on a GPU; ``base`` is sized like the paper's models (8
#: layers, d_model 512; GPU only; its steps/s on a GPU are still to be measured).
PRESETS: dict[str, dict[str, Any]] = {
    "tiny": dict(n_layers=2, d_model=64, n_heads=4, d_head=16, d_mlp=256),
    "mini": dict(n_layers=4, d_model=128, n_heads=4, d_head=32, d_mlp=512),
    "small": dict(n_layers=6, d_model=256, n_heads=8, d_head=32, d_mlp=1024),
    "base": dict(n_layers=8, d_model=512, n_heads=8, d_head=64, d_mlp=2048),
}

#: Position schemes (``ModelConfig.positional``):
#:
#: - ``learned``: absolute positions, a trained ``[n_ctx, d_model]`` table added to the token
#:   embedding (TransformerLens "standard"). Rows past the training length are never
#:   trained, so such a model does not extrapolate to longer sequences.
#: - ``rotary``: RoPE on queries and keys (TransformerLens "rotary"; the native bridge then
#:   has no position table and no ``hook_pos_embed``). Attention sees relative offsets only.
#: - ``none``: no positional information at all ("NoPE"): the position table exists but is
#:   zero and frozen, so the causal mask alone carries order.
POSITIONAL = ("learned", "rotary", "none")
#: MLP activations the native TransformerLens model builds (``transformer_lens.model_bridge.
#: sources.native``); a stored config naming another would fail deep inside TransformerLens
#: (a 40-line traceback), so it is refused here
ACT_FNS = ("gelu", "gelu_new", "relu", "silu", "swish", "solu", "solu_ln")


@dataclass(frozen=True)
class ModelConfig:
    n_layers: int = 2
    d_model: int = 64
    n_heads: int = 4
    d_head: int = 16
    d_mlp: int = 256
    n_ctx: int = 64
    d_vocab: int = 3
    act_fn: str = "gelu"
    normalization: str = "LN"
    #: NextLat's p_psi hidden width H (None -> d_model). Unused by GPT models.
    d_dynamics: int | None = None
    #: position scheme, one of ``POSITIONAL`` (a stored config without it is "learned")
    positional: str = "learned"

    def __post_init__(self) -> None:
        for name in ("n_layers", "d_model", "n_heads", "d_head", "d_mlp", "n_ctx", "d_vocab"):
            v = getattr(self, name)
            if not isinstance(v, int) or v <= 0:
                raise ValueError(f"ModelConfig.{name} must be a positive integer, got {v!r}")
        if self.act_fn not in ACT_FNS:
            raise ValueError(f"ModelConfig.act_fn must be one of {', '.join(ACT_FNS)}, got {self.act_fn!r}")
        if self.normalization not in ("LN", "RMS"):
            raise ValueError(f"ModelConfig.normalization must be 'LN' or 'RMS', got {self.normalization!r}")
        if self.d_dynamics is not None and self.d_dynamics <= 0:
            raise ValueError("ModelConfig.d_dynamics must be positive (or None for d_model)")
        if self.positional not in POSITIONAL:
            raise ValueError(f"ModelConfig.positional must be one of {', '.join(POSITIONAL)}, got {self.positional!r}")
        if self.positional == "rotary" and self.d_head % 2:
            raise ValueError(f"ModelConfig.positional 'rotary' needs an even d_head, got {self.d_head}")

    @classmethod
    def from_preset(cls, preset: str, **overrides: Any) -> "ModelConfig":
        if preset not in PRESETS:
            raise ValueError(f"unknown preset {preset!r}; choose one of {', '.join(PRESETS)}")
        return cls(**{**PRESETS[preset], **overrides})

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "ModelConfig":
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown model config keys: {', '.join(sorted(unknown))}")
        return cls(**d)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def replace(self, **changes: Any) -> "ModelConfig":
        return replace(self, **changes)
