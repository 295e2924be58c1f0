"""Training objectives: next-token cross-entropy (GPT), NextLat (SPEC §1) and the
multi-token-prediction baseline (MTP, Gloeckle et al. 2024).

    GPT:      L = L_CE
    NextLat:  L = L_CE + lambda_h · L_next-h + lambda_KL · L_KL
    MTP:      L = (L_CE + sum_k L_CE,k) / (d + 1)      (extra head k = 1..d: ``models.mtp``)

Everything comes from ONE forward pass of the transformer: the logits for L_CE and the
live (non-detached) last-block residual stream, captured by a forward hook. (TransformerLens's
``run_with_cache`` detaches what it stores, which would cut the gradient that NextLat sends
into the transformer through p_psi's input h_t, and MTP through its heads.)
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from jaxtyping import Bool, Float, Int
from torch import Tensor

from .dynamics import LatentDynamics
from .mtp import MTPHeads, shared_head_logits
from .transformer import frozen_head_params, token_embeddings

#: every training objective this toolkit knows
OBJECTIVES = ("gpt", "nextlat", "mtp")


@dataclass(frozen=True)
class ObjectiveConfig:
    """``horizon`` is d: p_psi's roll-out depth (NextLat) or the number of extra heads
    (MTP); GPT ignores it. ``lambda_h`` and ``lambda_kl`` weigh NextLat's latent terms and
    are unused by GPT and MTP (MTP's loss is the plain mean of its d + 1 cross-entropies)."""

    objective: str = "gpt"  # "gpt" | "nextlat" | "mtp"
    horizon: int = 1  # d: roll-out depth of p_psi, or MTP's number of extra heads
    lambda_h: float = 1.0
    lambda_kl: float = 1.0

    def __post_init__(self) -> None:
        if self.objective not in OBJECTIVES:
            raise ValueError(f"objective must be one of {', '.join(map(repr, OBJECTIVES))}, got {self.objective!r}")
        if not isinstance(self.horizon, int) or self.horizon < 1:
            raise ValueError(f"horizon must be a positive integer, got {self.horizon!r}")
        if self.lambda_h < 0 or self.lambda_kl < 0:
            raise ValueError("lambda_h and lambda_kl must be non-negative")

    def to_dict(self) -> dict:
        return asdict(self)


def normalize_latent(resid: Float[Tensor, "... d_model"]) -> Float[Tensor, "... d_model"]:
    """LayerNorm without affine parameters: the latent space NextLat predicts in."""
    return F.layer_norm(resid, resid.shape[-1:])


@dataclass
class Batch:
    """One batch as every loss reads it (built by ``training.trainer.to_batch`` from
    ``World.output_targets``): the output at position t is scored against ``targets[:, t]``
    where ``scored[:, t]``; ``valid`` marks non-padding positions (NextLat's pairs).

    The optional counts (floats, or 0-d tensors for a batch made on the device) are the
    denominators of the loss means when this batch is one rank's rows of a larger (global) batch (``loss_denominators`` of the global batch): the
    scored targets (CE), those of each MTP head k = 1..d, and NextLat's counted pairs per
    roll-out step i = 1..d. None (the default): this batch's own counts, as always."""

    tokens: Int[Tensor, "batch pos"]
    targets: Int[Tensor, "batch pos"]
    scored: Bool[Tensor, "batch pos"]
    valid: Bool[Tensor, "batch pos"]
    n_scored: float | Tensor | None = None
    n_head_scored: Sequence[float | Tensor] | None = None
    n_pairs: Sequence[float | Tensor] | None = None


def loss_denominators(scored, valid, cfg: ObjectiveConfig) -> dict[str, object]:
    """The counts every loss mean divides by, over a WHOLE batch (``scored`` / ``valid`` as
    in ``Batch``), as ``Batch`` fields: a rank that scores only its own rows of that batch
    and divides by these gets a partial loss whose sum over ranks is the whole batch's loss
    (padded taxi trips and NextLat's pairs make each rank's own counts differ).

    numpy arrays give Python floats; tensors (a batch made on the device) give 0-d float32
    tensors on their device, so reading the counts never waits for the device."""
    if torch.is_tensor(scored):
        scored, valid = scored.bool(), valid.bool()

        def count(m):
            return m.sum(dtype=torch.float32)

        zero = scored.new_zeros((), dtype=torch.float32)
    else:
        scored = np.asarray(scored, dtype=bool)
        valid = np.asarray(valid, dtype=bool)

        def count(m):
            return float(m.sum())

        zero = 0.0
    L = scored.shape[1]
    out: dict[str, object] = {"n_scored": count(scored)}
    if cfg.objective == "mtp":
        out["n_head_scored"] = tuple(count(scored[:, k:]) if k < L else zero for k in range(1, cfg.horizon + 1))
    elif cfg.objective == "nextlat":
        d = min(cfg.horizon, L - 1)
        out["n_pairs"] = tuple(count(valid[:, : L - i] & valid[:, i:]) for i in range(1, d + 1))
    return out


def _denominator(count, fallback: Tensor) -> Tensor | float:
    """A loss mean's denominator: ``count`` (a float or a 0-d tensor: a global batch's
    count) when given, else ``fallback`` (this batch's own); never below 1."""
    if count is None:
        return fallback.clamp_min(1.0)
    if torch.is_tensor(count):
        return count.clamp_min(1.0)
    return max(float(count), 1.0)


def masked_cross_entropy(
    logits: Float[Tensor, "batch pos vocab"],
    targets: Int[Tensor, "batch pos"],
    scored: Bool[Tensor, "batch pos"],
    count: float | Tensor | None = None,
) -> Tensor:
    """Mean CE of ``logits[:, t]`` against ``targets[:, t]`` over the scored positions (for a
    next-token world ``targets[:, t]`` is token t + 1: see ``World.output_targets``).
    ``count``: divide the sum by this many scored targets (a global batch's) instead."""
    lp = logits.float().log_softmax(-1)
    nll = -lp.gather(-1, targets[..., None])[..., 0]
    m = scored.to(nll.dtype)
    return (nll * m).sum() / _denominator(count, m.sum())


def frozen_logits(model, x: Tensor, head: tuple[Tensor, ...] | None = None) -> Tensor:
    """softmax input U_frozen · LN(x): the model's own output head with detached weights
    (NextLat's KL head; analyses decode p_psi's latents with it too). ``head``: the
    detached ``frozen_head_params(model)``, when the caller read them once already."""
    w, b, W_U, b_U = head if head is not None else (p.detach() for p in frozen_head_params(model))
    eps = float(getattr(model.cfg, "eps", 1e-5))
    if getattr(model.cfg, "normalization_type", "LN") == "RMS":
        x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * w
    else:
        x = F.layer_norm(x, x.shape[-1:], w, b, eps)
    return x @ W_U + b_U


_frozen_logits = frozen_logits  # the older private name


def nextlat_latent_losses(
    model,
    dynamics: LatentDynamics,
    h: Float[Tensor, "batch pos d_model"],
    tokens: Int[Tensor, "batch pos"],
    valid: Bool[Tensor, "batch pos"],
    horizon: int,
    with_kl: bool = True,
    pair_counts: Sequence[float | Tensor] | None = None,
    dense: bool = False,
) -> tuple[Tensor, Tensor]:
    """(L_next-h, L_KL) for normalised live latents ``h``.

    For every start t and step i = 1..d: ĥ_{t+i} = p_psi(ĥ_{t+i-1}, e(x_{t+i})) with
    ĥ_t = h_t (live: the gradient reaches the transformer here), target stopgrad(h_{t+i}).
    A pair counts when both h_t and h_{t+i} are at valid (non-padding) positions.
    Each loss is the mean over valid pairs at step i, averaged over i = 1..d
    (``pair_counts[i - 1]``, when given, replaces this batch's count of pairs at step i:
    a global batch's, see ``loss_denominators``).

    Only starts that still have a counting pair at step i or later are rolled out to step i:
    every other row would be multiplied by a zero mask, so skipping it changes nothing but
    the cost (padded taxi batches are ~40% padding). The frozen head's view of the targets
    does not depend on i, so it is computed once and indexed.

    ``dense``: roll out EVERY start instead (step i: all ``[batch, L - i]`` rows, the
    uncounted ones masked out). The same losses up to float round-off, at more arithmetic,
    but with static shapes and no ``nonzero`` (which waits for the device): what a GPU step
    and ``torch.compile`` want.
    """
    emb = token_embeddings(model, tokens).detach()  # e(x): detached, SPEC §1
    target = h.detach()
    L = h.shape[1]
    d = min(horizon, L - 1)
    zero = h.new_zeros(())
    if d < 1:
        return zero, zero
    # pair[i-1][b, t]: (h_t, h_{t+i}) counts; need[i-1][b, t]: some pair at step >= i counts.
    pair = [F.pad(valid[:, : L - i] & valid[:, i:], (0, i)) for i in range(1, d + 1)]
    if with_kl:
        logp_true = _frozen_logits(model, target).float().log_softmax(-1)
        p_true = logp_true.exp()
    if dense:
        return _dense_rollout(model, dynamics, h, target, emb, pair, d, with_kl, pair_counts,
                              (logp_true, p_true) if with_kl else None)
    need = list(pair)
    for i in range(d - 2, -1, -1):
        need[i] = need[i] | need[i + 1]
    b, t = need[0].nonzero(as_tuple=True)
    pred = h[b, t]
    loss_h, loss_kl = zero, zero
    for i in range(1, d + 1):
        keep = need[i - 1][b, t]
        b, t, pred = b[keep], t[keep], pred[keep]
        pred = dynamics(pred, emb[b, t + i])  # ĥ_{t+i} from ĥ_{t+i-1} and x_{t+i}
        m = pair[i - 1][b, t].to(h.dtype)
        denom = _denominator(None if pair_counts is None else pair_counts[i - 1], pair[i - 1].sum().to(h.dtype))
        sl1 = F.smooth_l1_loss(pred, target[b, t + i], reduction="none").mean(-1)
        loss_h = loss_h + (sl1 * m).sum() / denom
        if with_kl:
            logp_pred = _frozen_logits(model, pred).float().log_softmax(-1)
            kl = (p_true[b, t + i] * (logp_true[b, t + i] - logp_pred)).sum(-1)
            loss_kl = loss_kl + (kl * m).sum() / denom
    return loss_h / d, loss_kl / d


def _dense_rollout(model, dynamics, h, target, emb, pair, d, with_kl, pair_counts, true):
    """``nextlat_latent_losses`` with every start rolled out: step i predicts
    ĥ_{t+i} for all t < L - i at once (``[batch, L - i, D]``)."""
    L = h.shape[1]
    zero = h.new_zeros(())
    loss_h, loss_kl = zero, zero
    pred = h[:, : L - 1]
    for i in range(1, d + 1):
        pred = dynamics(pred[:, : L - i], emb[:, i:])  # ĥ_{t+i} for every start t
        m = pair[i - 1][:, : L - i]
        denom = _denominator(None if pair_counts is None else pair_counts[i - 1], pair[i - 1].sum().to(h.dtype))
        sl1 = F.smooth_l1_loss(pred, target[:, i:], reduction="none").mean(-1)
        # where, not a product: an uncounted row (padding) must not leak a NaN into the sum
        loss_h = loss_h + torch.where(m, sl1, 0.0).sum() / denom
        if with_kl:
            logp_true, p_true = true
            logp_pred = _frozen_logits(model, pred).float().log_softmax(-1)
            kl = (p_true[:, i:] * (logp_true[:, i:] - logp_pred)).sum(-1)
            loss_kl = loss_kl + torch.where(m, kl, 0.0).sum() / denom
    return loss_h / d, loss_kl / d


def mtp_head_losses(
    model,
    heads: MTPHeads,
    resid: Float[Tensor, "batch pos d_model"],
    targets: Int[Tensor, "batch pos"],
    scored: Bool[Tensor, "batch pos"],
    counts: Sequence[float | Tensor] | None = None,
) -> list[Tensor]:
    """CE of every extra head, [CE_1 .. CE_d]: head k at position t reads the live residual
    ``resid[:, t]``, is decoded by the model's own (live) final LayerNorm and unembedding
    (``models.mtp.shared_head_logits``) and is scored against ``targets[:, t + k]`` where
    ``scored[:, t + k]``. Each CE is the mean over its own scored positions (0 when none),
    or its sum divided by ``counts[k - 1]`` when given (a global batch's count)."""
    L = resid.shape[1]
    out = []
    for k, head in enumerate(heads.heads, start=1):
        if k >= L:
            out.append(resid.new_zeros((), dtype=torch.float32))
            continue
        logits = shared_head_logits(model, head(resid[:, : L - k]))
        out.append(masked_cross_entropy(logits, targets[:, k:], scored[:, k:], None if counts is None else counts[k - 1]))
    return out


def _forward_keeping_resid(model, tokens: Tensor, last_hook: str, fast: bool = True,
                           forward: Callable | None = None) -> tuple[Tensor, Tensor]:
    """(logits, the LIVE residual at ``last_hook``: graph attached) of one forward pass.

    ``fast``: run ``models.fastpath.forward`` (the same computation on the same parameters
    without hook points; 1.2-1.3x faster per step at the tiny/mini presets) when it
    reproduces this model and ``last_hook`` is the last block's output; otherwise, or with
    ``fast=False``, the bridge's hooked forward. ``forward`` replaces ``fastpath.forward``
    where the fast path applies (the trainer's compiled version of it)."""
    from . import fastpath

    if isinstance(model, fastpath.FastModel):  # already gathered for the hook-free forward
        return (forward or fastpath.forward)(model, tokens)
    if fast and last_hook == f"blocks.{model.cfg.n_layers - 1}.hook_resid_post" and fastpath.supports(model):
        return (forward or fastpath.forward)(model, tokens)
    store: dict[str, Tensor] = {}

    def keep(resid, hook):
        store["resid"] = resid
        return resid

    with model.hooks(fwd_hooks=[(last_hook, keep)]):
        logits = model(tokens)
    return logits, store["resid"]


def compute_losses(
    model,
    dynamics: LatentDynamics | MTPHeads | None,
    batch: Batch,
    cfg: ObjectiveConfig,
    last_hook: str,
    fast: bool = True,
    forward: Callable | None = None,
    dense: bool = False,
) -> dict[str, Tensor]:
    """One forward pass -> {"loss", "ce", "next_h", "kl"} (the last two are 0 for GPT), plus
    "mtp" (the mean extra-head CE) for MTP. ``dynamics`` is the objective's own module:
    p_psi for NextLat, the ``MTPHeads`` for MTP, None for GPT. "ce" is always the standard
    head's CE, computed exactly as for GPT. ``fast``: the hook-free forward where it
    applies (``_forward_keeping_resid``; ``forward`` replaces it, e.g. compiled). The
    batch's optional counts (``Batch.n_scored`` ...) are the denominators of every mean.
    ``model`` may be a ``fastpath.FastModel`` (what ``torch.compile`` traces); ``dense``:
    NextLat's roll-out over every start (``nextlat_latent_losses``)."""
    tokens, valid = batch.tokens, batch.valid
    if cfg.objective == "mtp":
        if not isinstance(dynamics, MTPHeads):
            raise ValueError("the mtp objective needs its MTPHeads")
        logits, resid = _forward_keeping_resid(model, tokens, last_hook, fast, forward)
        ce = masked_cross_entropy(logits, batch.targets, batch.scored, batch.n_scored)
        extra = mtp_head_losses(model, dynamics, resid, batch.targets, batch.scored, batch.n_head_scored)
        zero = ce.new_zeros(())
        loss = (ce + sum(extra)) / (len(extra) + 1)
        return {"loss": loss, "ce": ce, "next_h": zero, "kl": zero, "mtp": sum(extra) / len(extra)}
    if cfg.objective == "gpt" or dynamics is None:
        logits, _ = _forward_keeping_resid(model, tokens, last_hook, fast, forward)
        ce = masked_cross_entropy(logits, batch.targets, batch.scored, batch.n_scored)
        zero = ce.new_zeros(())
        return {"loss": ce, "ce": ce, "next_h": zero, "kl": zero}

    logits, resid = _forward_keeping_resid(model, tokens, last_hook, fast, forward)
    ce = masked_cross_entropy(logits, batch.targets, batch.scored, batch.n_scored)
    h = normalize_latent(resid)
    need_kl = cfg.lambda_kl > 0
    next_h, kl = nextlat_latent_losses(model, dynamics, h, tokens, valid, cfg.horizon, with_kl=need_kl,
                                       pair_counts=batch.n_pairs, dense=dense)
    loss = ce + cfg.lambda_h * next_h + cfg.lambda_kl * kl
    return {"loss": loss, "ce": ce, "next_h": next_h, "kl": kl}
