"""Model FLOPs of a training step, and the device peaks they are divided by (MFU).

MFU (model FLOPs utilisation, PaLM's definition) = tokens/s x training FLOPs per token /
the device's peak FLOP/s. The FLOPs are counted from the configs alone (never measured), as
multiply-adds (MACs) x 2, with a backward pass costing twice its forward (one product for
the inputs' gradient, one for the weights'): a matrix with trainable weights costs
6 x MACs per row, a frozen one 4 x MACs (forward, and the inputs' gradient only), one
outside the graph 2 x MACs. Per token of a ``[batch, L]`` training batch:

- transformer: per layer Q, K, V, O (``4 d A`` MACs, ``A = n_heads d_head``) and the MLP
  (``2 d d_mlp``); the unembedding (``d V``); the embedding lookups cost nothing;
- attention: per layer the scores and the weighted values, ``2 A (L + 1) / 2`` MACs (the
  causal mask: position t attends to t + 1 positions, (L + 1) / 2 on average);
- NextLat, step i = 1..d of the roll-out (every start t < L - i is rolled out, as the
  GPU path does: ``(L - i) / L`` rows per token): p_psi (``2d H + H H + H d`` MACs,
  trainable) and, when ``lambda_kl > 0``, the frozen head on its prediction (``d V``, 4x);
  plus the frozen head once on every target latent (``d V``, forward only);
- MTP, head k = 1..d (rows ``(L - k) / L``): its MLP (``2 d H``) and the shared live
  unembedding (``d V``), trainable.

Norms, softmaxes, GELUs, the optimiser and the losses' reductions are not counted (they are
a few percent at these sizes and are not matrix work).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

from .config import ModelConfig

#: Dense tensor-core peaks in TFLOP/s, from NVIDIA's datasheets (the "with sparsity" figure
#: halved), per matmul precision: ``bf16``, ``tf32`` (float32 with TF32 matmuls, torch's
#: "high" float32 matmul precision) and ``fp32`` (no TF32, "highest"). Matched against the
#: CUDA device name, first match wins: specific names first.
PEAK_TFLOPS: tuple[tuple[str, dict[str, float]], ...] = (
    ("H100 PCIE", {"bf16": 756.0, "tf32": 378.0, "fp32": 51.2}),
    ("H100 NVL", {"bf16": 835.5, "tf32": 417.5, "fp32": 60.0}),
    ("H100", {"bf16": 989.5, "tf32": 494.5, "fp32": 66.9}),
    ("H200 NVL", {"bf16": 835.5, "tf32": 417.5, "fp32": 60.0}),
    ("H200", {"bf16": 989.5, "tf32": 494.5, "fp32": 66.9}),
    ("A100", {"bf16": 312.0, "tf32": 156.0, "fp32": 19.5}),
)


@dataclass(frozen=True)
class StepFlops:
    """Training FLOPs per token of a batch, by part (see the module docstring)."""

    transformer: float
    attention: float
    p_psi: float = 0.0
    kl_head: float = 0.0
    mtp_heads: float = 0.0

    @property
    def total(self) -> float:
        return self.transformer + self.attention + self.p_psi + self.kl_head + self.mtp_heads

    def to_dict(self) -> dict[str, float]:
        return {**asdict(self), "total": self.total}


def training_flops_per_token(mcfg: ModelConfig, seq_len: int, objective: str = "gpt", horizon: int = 1,
                             lambda_kl: float = 1.0, d_aux: int | None = None) -> StepFlops:
    """Training FLOPs per token of ``mcfg`` on ``[batch, seq_len]`` batches under
    ``objective`` (``horizon`` d, NextLat's ``lambda_kl``). ``d_aux`` is the hidden width H
    of p_psi / the MTP heads (default: ``mcfg.d_dynamics`` for p_psi, else ``d_model``)."""
    d, V, L = mcfg.d_model, mcfg.d_vocab, int(seq_len)
    A = mcfg.n_heads * mcfg.d_head
    transformer = 6.0 * (mcfg.n_layers * (4 * d * A + 2 * d * mcfg.d_mlp) + d * V)
    attention = 6.0 * mcfg.n_layers * 2 * A * (L + 1) / 2
    if objective == "nextlat":
        H = d_aux or mcfg.d_dynamics or d
        steps = min(horizon, L - 1)
        rows = sum((L - i) / L for i in range(1, steps + 1))
        p_psi = 6.0 * (2 * d * H + H * H + H * d) * rows
        kl = (4.0 * d * V * rows + 2.0 * d * V) if lambda_kl > 0 else 0.0
        return StepFlops(transformer, attention, p_psi=p_psi, kl_head=kl)
    if objective == "mtp":
        H = d_aux or d
        rows = sum((L - k) / L for k in range(1, horizon + 1) if k < L)
        return StepFlops(transformer, attention, mtp_heads=6.0 * (2 * d * H + d * V) * rows)
    return StepFlops(transformer, attention)


def peak_tflops(device_name: str, precision: str) -> float | None:
    """The dense peak (TFLOP/s) of a CUDA device for ``precision`` (``bf16``, ``tf32`` or
    ``fp32``), or None when the device is not in ``PEAK_TFLOPS`` (a CPU, say)."""
    name = device_name.upper()
    for key, peaks in PEAK_TFLOPS:
        if key in name:
            return peaks.get(precision)
    return None


def mfu(tokens_per_s: float, flops_per_token: float, peak: float | None) -> float | None:
    """Model FLOPs utilisation (a fraction), or None without a peak."""
    if not peak:
        return None
    return tokens_per_s * flops_per_token / (peak * 1e12)


__all__ = ["PEAK_TFLOPS", "StepFlops", "training_flops_per_token", "peak_tflops", "mfu"]
