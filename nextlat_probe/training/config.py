"""Training configuration (one dataclass, stored in every checkpoint)."""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from ..errors import UsageError
from ..models.config import POSITIONAL
from ..models.objective import OBJECTIVES

#: the forward / loss precisions ``TrainConfig.precision`` may name
PRECISIONS = ("bf16", "fp32")
#: the samplers ``TrainConfig.sampler`` may name (a dataset is ``TrainConfig.data``)
SAMPLERS = ("device", "host")

#: The largest float32 value: a learning rate above it overflows in the optimiser update.
_FLOAT32_MAX = 3.4028234663852886e38


@dataclass
class TrainConfig:
    world: str = "taxi"
    world_options: dict[str, Any] = field(default_factory=dict)
    objective: str = "gpt"  # "gpt" | "nextlat" | "mtp"
    horizon: int = 1  # d: NextLat's roll-out depth, or MTP's number of extra heads (GPT: unused)
    lambda_h: float = 1.0  # NextLat only (GPT and MTP do not use it)
    lambda_kl: float | None = None  # NextLat only; None -> the world's default_lambda_kl (1.0; tagging A5: 0.0)
    preset: str = "tiny"
    steps: int = 1000
    batch_size: int = 64
    seq_len: int | None = None  # None -> the world's default length
    n_ctx: int | None = None  # None -> seq_len, or the world's default_n_ctx if larger
    positional: str | None = None  # None -> the world's default_positional ("learned"; tagging A5: see worlds.a5)
    lr: float = 1e-3
    weight_decay: float = 0.01
    warmup_steps: int = 50
    min_lr_ratio: float = 0.1
    grad_clip: float = 1.0
    seed: int = 0
    device: str = "auto"
    eval_every: int = 100
    n_val: int = 256
    save_every: int = 200  # also the "last good checkpoint" cadence
    #: train through ``models.fastpath`` (the bridge's parameters, no hook points: 1.2-1.3x
    #: faster at tiny/mini on CPU, same numbers up to float round-off); False: the hooked forward
    fast_forward: bool = True
    keep_every: int = 0  # >0: also keep ckpt_step{N}.pt every N steps (rank along training)
    #: the forward / loss precision: "bf16" (autocast; CUDA only), "fp32", or None: bf16 on a
    #: CUDA device that supports it, fp32 otherwise. The weights and every loss reduction
    #: stay float32; the precision used is recorded in the checkpoint (train_config.precision_used)
    precision: str | None = None
    #: on CUDA, float32 matmuls in TF32 (torch's "high" float32 matmul precision): 8x the
    #: float32 peak of an A100/H100 for 10-bit mantissas in the products (the sums stay
    #: float32; validation always runs in full float32). False: IEEE float32 ("highest").
    #: What the run used is recorded as train_config.tf32_used (False off CUDA)
    tf32: bool = True
    #: where batches are drawn (``training.batches``): "device" (the world's torch sampler on
    #: the training device; no host work per step), "host" (the world's numpy sampler, the
    #: reference: what every run before device sampling used), or None: "device" for a new
    #: run (where the world has one), and on resume what the checkpoint used
    #: (train_config.sampler_used). The two draw the same distribution, not the same numbers
    sampler: str | None = None
    #: a token dataset folder (``python -m nextlat_probe.data``): train on its rows instead
    #: of sampling; its meta.json names the world (``world`` / ``world_options`` are then
    #: ignored) and the row length. The checkpoint records its identity (train_config.dataset)
    data: str | None = None

    def __post_init__(self) -> None:
        checks = {
            "steps": self.steps >= 0,
            "batch_size": self.batch_size > 0,
            "lr": self.lr > 0,
            "horizon": self.horizon >= 1,
            "eval_every": self.eval_every > 0,
            "n_val": self.n_val > 0,
            "save_every": self.save_every > 0,
            "keep_every": self.keep_every >= 0,
            "warmup_steps": self.warmup_steps >= 0,
            "grad_clip": self.grad_clip >= 0,
            "lambda_h": self.lambda_h >= 0,
            "lambda_kl": self.lambda_kl is None or self.lambda_kl >= 0,
        }
        # NaN compares False above, inf passes: neither is a usable number here
        for name in ("lr", "weight_decay", "min_lr_ratio", "grad_clip", "lambda_h", "lambda_kl"):
            v = getattr(self, name)
            checks[name] = checks.get(name, True) and ((v is None and name == "lambda_kl") or math.isfinite(v))
        checks["lr"] = checks["lr"] and self.lr <= _FLOAT32_MAX
        for name, ok in checks.items():
            if not ok:
                raise UsageError(f"invalid training option {name}={getattr(self, name)!r}")
        if self.seq_len is not None and self.seq_len < 2:
            raise UsageError(f"invalid training option seq_len={self.seq_len!r} (need >= 2)")
        if self.n_ctx is not None and self.n_ctx < 1:
            raise UsageError(f"invalid training option n_ctx={self.n_ctx!r} (need >= 1)")
        if self.objective not in OBJECTIVES:
            raise UsageError(f"objective must be one of {', '.join(map(repr, OBJECTIVES))}, got {self.objective!r}")
        if self.precision is not None and self.precision not in PRECISIONS:
            raise UsageError(f"precision must be one of {', '.join(PRECISIONS)} (or None: bf16 on CUDA, fp32 otherwise), "
                             f"got {self.precision!r}")
        if self.sampler is not None and self.sampler not in SAMPLERS:
            raise UsageError(f"sampler must be one of {', '.join(SAMPLERS)} (or None: the device sampler for a new "
                             f"run), got {self.sampler!r}")
        if self.positional is not None and self.positional not in POSITIONAL:
            raise UsageError(f"positional must be one of {', '.join(POSITIONAL)}, got {self.positional!r}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "TrainConfig":
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})
