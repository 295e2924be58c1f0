"""Training configuration (one dataclass, stored in every checkpoint)."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any


@dataclass
class TrainConfig:
    world: str = "taxi"
    world_options: dict[str, Any] = field(default_factory=dict)
    objective: str = "gpt"
    horizon: int = 1
    lambda_h: float = 1.0
    lambda_kl: float = 1.0
    preset: str = "tiny"
    steps: int = 1000
    batch_size: int = 64
    seq_len: int | None = None  # None -> the world's default length
    n_ctx: int | None = None  # None -> seq_len
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
    keep_every: int = 0  # >0: also keep ckpt_step{N}.pt every N steps (rank along training)

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
            "lambda_kl": self.lambda_kl >= 0,
        }
        for name, ok in checks.items():
            if not ok:
                raise ValueError(f"invalid training option {name}={getattr(self, name)!r}")
        if self.seq_len is not None and self.seq_len < 2:
            raise ValueError(f"invalid training option seq_len={self.seq_len!r} (need >= 2)")
        if self.objective not in ("gpt", "nextlat"):
            raise ValueError(f"objective must be 'gpt' or 'nextlat', got {self.objective!r}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "TrainConfig":
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})
