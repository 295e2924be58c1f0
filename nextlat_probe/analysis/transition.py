"""Transition consistency: is h_{t+1} a fixed function of (h_t, x_{t+1})? (SPEC §3)

A belief state updates by a fixed rule from the previous belief and the next token. If
the hidden states of a model are belief states, some map p(h_t, e(x_{t+1})) reproduces
h_{t+1}; if they instead re-read the whole history through attention, no such map need
exist. Three measurements:

- the model's own p_psi (NextLat checkpoints), rolled out i = 1..k steps;
- a *post-hoc* dynamics model of the same form (or a linear one) fitted on frozen states
  of training sequences and scored on held-out sequences: usable for any checkpoint,
  GPT included, so GPT and NextLat are compared with the same yardstick;
- belief level: rows with the same exact belief should have the same hidden state
  (``belief_consistency``: within-belief / total variance, 0 for a perfect belief state).

Errors are *relative*: ||ĥ - h||^2 summed over the evaluated set divided by
||h - mean h||^2 summed over the same targets, i.e. 1 - R^2 of the prediction. 0 is a
perfect transition rule, 1 is no better than predicting the mean state.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from ..models.dynamics import LatentDynamics
from .stats import AnalysisError, as_numpy, as_rows, chunk_rows


# --------------------------------------------------------------------------------------
# relative error and roll-outs
# --------------------------------------------------------------------------------------
def relative_error(pred: Any, target: Any, mean: Any = None) -> float:
    """sum ||pred - target||^2 / sum ||target - mean||^2 over all rows (a ratio of sums).

    ``mean`` defaults to the mean of the targets; pass the mean hidden state of a larger
    set to compare several subsets on one scale."""
    P = as_rows(pred, "relative_error pred").astype(np.float64)
    T = as_rows(target, "relative_error target").astype(np.float64)
    if P.shape != T.shape:
        raise AnalysisError(f"relative_error: pred {P.shape} and target {T.shape} differ in shape")
    if T.shape[0] == 0:
        raise AnalysisError("relative_error: no rows")
    m = T.mean(axis=0) if mean is None else np.asarray(as_numpy(mean), dtype=np.float64).reshape(-1)
    den = float(np.sum((T - m) ** 2))
    return float(np.sum((P - T) ** 2) / den) if den > 0 else float("nan")


def _as_tensor(x: Any, name: str, device: torch.device | str, dtype=torch.float32) -> torch.Tensor:
    t = x.detach() if isinstance(x, torch.Tensor) else torch.as_tensor(np.asarray(x))
    if t.ndim != 3:
        raise AnalysisError(f"{name}: expected [n, L, D], got shape {tuple(t.shape)}")
    if not torch.isfinite(t).all():
        raise AnalysisError(f"{name}: contains NaN or infinite values")
    return t.to(device=device, dtype=dtype)


def _check_pair(H: torch.Tensor, E: torch.Tensor, mask: Any) -> torch.Tensor:
    if H.shape[:2] != E.shape[:2]:
        raise AnalysisError(f"states {tuple(H.shape)} and embeddings {tuple(E.shape)} are not aligned [n, L, ...]")
    if mask is None:
        return torch.ones(H.shape[:2], dtype=torch.bool, device=H.device)
    m = torch.as_tensor(as_numpy(mask), device=H.device).to(torch.bool)
    if m.shape != H.shape[:2]:
        raise AnalysisError(f"mask {tuple(m.shape)} does not match the states' [n, L] = {tuple(H.shape[:2])}")
    return m


def _module_device_dtype(module: nn.Module) -> tuple[torch.device, torch.dtype]:
    p = next(iter(module.parameters()), None)
    return (p.device, p.dtype) if p is not None else (torch.device("cpu"), torch.float32)


@torch.no_grad()
def rollout_errors(
    dynamics: nn.Module,
    H: Any,
    E: Any,
    horizon: int,
    mask: Any = None,
    mean: Any = None,
    batch_size: int = 256,
) -> np.ndarray:
    """Relative error of ``dynamics`` rolled out from true states, for i = 1..horizon.

    H: hidden states [n, L, D] (normalised as the caller wants); E: token embeddings
    [n, L, D_e] with E[:, t] the embedding of token t; mask [n, L]: which positions may be
    targets. From every start t: ĥ_{t+1} = p(h_t, e_{t+1}), ĥ_{t+i} = p(ĥ_{t+i-1}, e_{t+i}),
    scored against h_{t+i} wherever t+i < L and mask[t+i]. The denominator uses one
    reference ``mean`` for all horizons (default: mean of the masked states of H), so the
    curve over i is on a single scale. Returns float64 [horizon] (NaN where nothing is
    scored).
    """
    horizon = int(horizon)
    if horizon < 1:
        raise AnalysisError(f"rollout_errors: horizon must be >= 1, got {horizon}")
    device, dtype = _module_device_dtype(dynamics)
    Ht = _as_tensor(H, "rollout_errors H", device, dtype)
    Et = _as_tensor(E, "rollout_errors E", device, dtype)
    M = _check_pair(Ht, Et, mask)
    n, L, D = Ht.shape
    if mean is None:
        if not M.any():
            raise AnalysisError("rollout_errors: the mask selects no positions")
        ref = Ht[M].double().mean(dim=0)
    else:
        ref = torch.as_tensor(np.asarray(as_numpy(mean), dtype=np.float64), device=device).reshape(-1)
    was_training = dynamics.training
    dynamics.eval()
    sse = np.zeros(horizon)
    sst = np.zeros(horizon)
    try:
        for s in range(0, n, batch_size):
            h_seq, e_seq, m_seq = Ht[s : s + batch_size], Et[s : s + batch_size], M[s : s + batch_size]
            h = h_seq[:, : L - 1]  # starts t = 0..L-2
            for i in range(1, min(horizon, L - 1) + 1):
                # ĥ^{(i)} covers starts t = 0..L-i-1 and predicts h_{t+i}
                h = dynamics(h[:, : L - i], e_seq[:, i:L])
                tgt, valid = h_seq[:, i:L], m_seq[:, i:L]
                sse[i - 1] += float(((h - tgt).double() ** 2).sum(-1)[valid].sum())
                sst[i - 1] += float(((tgt.double() - ref) ** 2).sum(-1)[valid].sum())
    finally:
        dynamics.train(was_training)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(sst > 0, sse / np.where(sst > 0, sst, 1.0), np.nan)


# --------------------------------------------------------------------------------------
# post-hoc dynamics
# --------------------------------------------------------------------------------------
class LinearDynamics(nn.Module):
    """ĥ_{t+1} = h_t + A concat[h_t, e_{t+1}] + b: the linear baseline of the post-hoc fit.

    Zero-initialised like ``LatentDynamics`` so it starts as the identity. Same call
    signature and ``rollout`` as ``LatentDynamics``."""

    def __init__(self, d_model: int, d_embed: int | None = None):
        super().__init__()
        d_embed = d_model if d_embed is None else int(d_embed)
        self.d_model, self.d_embed = int(d_model), d_embed
        self.proj = nn.Linear(self.d_model + d_embed, self.d_model)
        nn.init.zeros_(self.proj.weight)
        nn.init.zeros_(self.proj.bias)

    def forward(self, h: torch.Tensor, e: torch.Tensor) -> torch.Tensor:
        return h + self.proj(torch.cat([h, e], dim=-1))

    rollout = LatentDynamics.rollout

    def config(self) -> dict[str, int]:
        return {"d_model": self.d_model, "d_embed": self.d_embed}


def _fit_linear_closed_form(model: LinearDynamics, h0: np.ndarray, e1: np.ndarray, h1: np.ndarray) -> None:
    """Exact least-squares fit of the one-step residual h_{t+1} - h_t on [h_t, e_{t+1}]:
    the optimum of the squared one-step error in milliseconds, so the linear baseline is
    never under-trained."""
    from .probes import LinearProbe

    probe = LinearProbe(alpha=0.0).fit(np.concatenate([h0, e1], axis=1), h1 - h0)
    with torch.no_grad():
        model.proj.weight.copy_(torch.as_tensor(probe.coef_.T))
        model.proj.bias.copy_(torch.as_tensor(probe.intercept_))


def fit_posthoc_dynamics(
    H_train: Any,
    E_train: Any,
    kind: str = "mlp",
    horizon_train: int = 1,
    mask: Any = None,
    steps: int = 1000,
    lr: float = 1e-2,
    batch_size: int = 512,
    d_hidden: int | None = None,
    weight_decay: float = 0.0,
    seed: int = 0,
    device: str | torch.device = "cpu",
    cpu_threads: int | None = 1,
) -> nn.Module:
    """Fit a fresh dynamics model on frozen hidden states (nothing flows into the states).

    kind: ``"mlp"`` (a ``LatentDynamics``, the same form as NextLat's p_psi) or ``"linear"``
        (``LinearDynamics``).
    horizon_train: roll-out length of the SmoothL1 training targets (1 = one step).
    d_hidden: MLP width; defaults to max(D, 64) so that very small latents are not fitted
        by a starved network (for D >= 64 this is p_psi's own default H = D).
    The MLP trains with Adam for ``steps`` minibatches of (sequence, start) pairs whose
    targets t+1..t+horizon_train lie inside the sequence and the mask, with a cosine
    learning-rate decay. The linear model is solved in closed form for one-step targets
    (and used as the starting point of gradient training for longer horizons).
    cpu_threads: torch threads while training on the CPU (None = leave as is). The
        minibatches are tiny, so extra threads mostly add synchronisation; on a busy
        2-core machine two threads made a fit 10-40x slower than one.
    Returns the fitted module in eval mode.
    """
    if kind not in ("mlp", "linear"):
        raise AnalysisError(f"fit_posthoc_dynamics: kind must be 'mlp' or 'linear', got {kind!r}")
    horizon_train = int(horizon_train)
    if horizon_train < 1:
        raise AnalysisError(f"fit_posthoc_dynamics: horizon_train must be >= 1, got {horizon_train}")
    if int(steps) < 0 or int(batch_size) < 1:
        raise AnalysisError("fit_posthoc_dynamics: steps must be >= 0 and batch_size >= 1")
    Ht = _as_tensor(H_train, "fit_posthoc_dynamics H_train", "cpu")
    Et = _as_tensor(E_train, "fit_posthoc_dynamics E_train", "cpu")
    M = _check_pair(Ht, Et, mask)
    n, L, D = Ht.shape
    k = horizon_train
    if L <= k:
        raise AnalysisError(f"fit_posthoc_dynamics: sequences of length {L} leave no {k}-step targets")
    # valid starts: every target position t+1..t+k is inside the mask
    ok = torch.ones((n, L - k), dtype=torch.bool)
    for i in range(1, k + 1):
        ok &= M[:, i : L - k + i]
    seq_idx, start_idx = torch.nonzero(ok, as_tuple=True)
    if seq_idx.numel() == 0:
        raise AnalysisError("fit_posthoc_dynamics: no start position has valid targets")

    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    model: nn.Module
    if kind == "mlp":
        model = LatentDynamics(D, d_embed=Et.shape[-1], d_hidden=d_hidden or max(D, 64))
    else:
        model = LinearDynamics(D, d_embed=Et.shape[-1])
        _fit_linear_closed_form(
            model,
            Ht[seq_idx, start_idx].double().numpy(),
            Et[seq_idx, start_idx + 1].double().numpy(),
            Ht[seq_idx, start_idx + 1].double().numpy(),
        )
        if k == 1:
            return model.to(device).eval()
    model = model.to(device).train()
    threads = torch.get_num_threads()
    if cpu_threads and torch.device(device).type == "cpu":
        torch.set_num_threads(int(cpu_threads))
    try:
        _train(model, Ht, Et, seq_idx, start_idx, k, int(steps), lr, batch_size, weight_decay, gen, device)
    finally:
        torch.set_num_threads(threads)
    return model.eval()


def _train(model, Ht, Et, seq_idx, start_idx, k, steps, lr, batch_size, weight_decay, gen, device) -> None:
    """AdamW + cosine decay on SmoothL1 roll-out targets h_{t+1..t+k} from random starts."""
    if steps <= 0:
        return
    offsets = torch.arange(1, k + 1)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=steps)
    loss_fn = nn.SmoothL1Loss()
    for _ in range(steps):
        b = torch.randint(0, seq_idx.numel(), (min(batch_size, seq_idx.numel()),), generator=gen)
        si, ti = seq_idx[b], start_idx[b]
        h0 = Ht[si, ti].to(device)
        e = Et[si[:, None], ti[:, None] + offsets].to(device)  # [B, k, D_e]
        tgt = Ht[si[:, None], ti[:, None] + offsets].to(device)  # [B, k, D]
        loss = loss_fn(model.rollout(h0, e), tgt)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()


# --------------------------------------------------------------------------------------
# belief-level consistency
# --------------------------------------------------------------------------------------
NO_PAIRS_NOTE = "no groups with two rows"


def _group_index(H: Any, keys: Any) -> tuple[np.ndarray, np.ndarray]:
    X = as_rows(H, "grouped_consistency H")
    K = np.asarray(as_numpy(keys))
    if K.ndim == 1:
        K = K[:, None]
    K = K.reshape(K.shape[0], -1)
    if K.shape[0] != X.shape[0]:
        raise AnalysisError(f"grouped_consistency: {K.shape[0]} keys for {X.shape[0]} rows")
    if X.shape[0] < 2:
        raise AnalysisError("grouped_consistency: needs at least 2 rows")
    _, inv = np.unique(K, axis=0, return_inverse=True)
    return X, inv.reshape(-1)


def grouped_consistency_report(H: Any, keys: Any, positions: Any = None) -> dict[str, Any]:
    """Within-group / total variance of ``H`` grouped by ``keys``, computed over the rows
    of groups with at least two rows (singletons carry no within-group information, and
    kept in they would only inflate the total):

    ``ratio`` (None with ``note`` "no groups with two rows" when every group is a
    singleton), ``n_rows`` and ``n_groups`` (rows and groups with >= 2 rows),
    ``share_rows`` (their share of all rows), ``n_rows_all``, ``n_groups_all``, and the
    singleton-inclusive figure as the labelled extra ``ratio_with_singletons``. With
    ``positions`` (one per row) also ``share_rows_per_position`` (list, by position)."""
    X, inv = _group_index(H, keys)
    counts = np.bincount(inv)
    multi = counts[inv] >= 2
    out: dict[str, Any] = {"ratio": None, "n_rows": int(multi.sum()), "n_groups": int((counts >= 2).sum()),
                           "share_rows": float(multi.mean()), "n_rows_all": int(X.shape[0]),
                           "n_groups_all": int(counts.size), "ratio_with_singletons": None, "note": ""}
    allv = _consistency(X, inv)
    out["ratio_with_singletons"] = None if allv != allv else float(allv)
    if positions is not None:
        pos = np.asarray(as_numpy(positions)).reshape(-1)
        if pos.size != X.shape[0]:
            raise AnalysisError(f"grouped_consistency: {pos.size} positions for {X.shape[0]} rows")
        P = int(pos.max()) + 1 if pos.size else 0
        tot = np.bincount(pos, minlength=P)
        good = np.bincount(pos[multi], minlength=P)
        out["share_rows_per_position"] = [float(g / t) if t else None for g, t in zip(good, tot)]
    if not multi.any():
        out["note"] = NO_PAIRS_NOTE
        return out
    sel = np.flatnonzero(multi)
    _, sub = np.unique(inv[sel], return_inverse=True)
    r = _consistency(X[sel], sub.reshape(-1))
    out["ratio"] = None if r != r else float(r)
    if r != r:
        out["note"] = "no variance in the rows of groups with two rows"
    return out


def grouped_consistency(H: Any, keys: Any) -> float:
    """Within-group variance / total variance of the rows of ``H`` grouped by ``keys``,
    over the rows of groups with at least two rows (``grouped_consistency_report``).

    keys: integer key per row ([N]) or a key tuple per row ([N, k], e.g. (hidden state,
    position)). Variances are mean squares with their degrees of freedom,
    (SS_within / (N' - G')) / (SS_total' / (N' - 1)) over those N' rows in G' groups, so
    rows of pure noise give about 1 however small the groups, and 0 means H is a function
    of the key. NaN when every group is a singleton ("no groups with two rows")."""
    r = grouped_consistency_report(H, keys)["ratio"]
    return float("nan") if r is None else float(r)


def belief_consistency(H: Any, beliefs: Any, decimals: int = 6) -> float:
    """``grouped_consistency`` with rows grouped by their exact belief vector rounded to
    ``decimals`` (so float noise does not split one belief into many)."""
    B = as_rows(beliefs, "belief_consistency beliefs").astype(np.float64)
    return grouped_consistency(H, np.round(B, decimals) + 0.0)  # + 0.0 folds -0.0 into 0.0


def belief_consistency_report(H: Any, beliefs: Any, decimals: int = 6, positions: Any = None) -> dict[str, Any]:
    """``grouped_consistency_report`` with rows grouped by their rounded belief vector."""
    B = as_rows(beliefs, "belief_consistency beliefs").astype(np.float64)
    return grouped_consistency_report(H, np.round(B, decimals) + 0.0, positions)


def _consistency(X: np.ndarray, inv: np.ndarray) -> float:
    N = X.shape[0]
    chunk = chunk_rows(X.shape[1])
    G = int(inv.max()) + 1
    counts = np.bincount(inv, minlength=G).astype(np.float64)
    sums = np.zeros((G, X.shape[1]))
    for i in range(0, N, chunk):  # chunked so a float32 X is never copied whole to float64
        np.add.at(sums, inv[i : i + chunk], X[i : i + chunk].astype(np.float64))
    means = sums / counts[:, None]
    grand = sums.sum(axis=0) / N
    ss_w = ss_t = 0.0
    for i in range(0, N, chunk):
        x = X[i : i + chunk].astype(np.float64)
        ss_w += float(np.sum((x - means[inv[i : i + chunk]]) ** 2))
        ss_t += float(np.sum((x - grand) ** 2))
    if N == G or ss_t == 0.0:
        return float("nan")
    return (ss_w / (N - G)) / (ss_t / (N - 1))


# --------------------------------------------------------------------------------------
# everything together
# --------------------------------------------------------------------------------------
@dataclass
class TransitionResult:
    """Relative error per horizon for each dynamics model, and the belief-level ratio."""

    horizons: list[int]
    own: np.ndarray | None
    posthoc_mlp: np.ndarray | None
    posthoc_linear: np.ndarray | None
    belief_ratio: float | None
    n_train_seqs: int
    n_test_seqs: int
    #: ``belief_consistency_report`` of the test states (None without beliefs)
    belief: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        from ..records import to_jsonable

        return to_jsonable(self)


def transition_consistency(
    H_train: Any,
    E_train: Any,
    H_test: Any,
    E_test: Any,
    horizon: int = 8,
    own_dynamics: nn.Module | None = None,
    beliefs_test: Any = None,
    mask_train: Any = None,
    mask_test: Any = None,
    kinds: tuple[str, ...] = ("mlp", "linear"),
    horizon_train: int = 1,
    steps: int = 1000,
    lr: float = 1e-2,
    decimals: int = 6,
    seed: int = 0,
    device: str | torch.device = "cpu",
) -> TransitionResult:
    """Run every transition measurement on one set of states: the model's own dynamics
    (if given), post-hoc dynamics fitted on the training sequences, all scored on the test
    sequences with the same reference mean; and ``belief_consistency`` of the test states
    when ``beliefs_test`` [n, L, S] is given."""
    Htr = _as_tensor(H_train, "H_train", "cpu")
    Hte = _as_tensor(H_test, "H_test", "cpu")
    M = _check_pair(Hte, _as_tensor(E_test, "E_test", "cpu"), mask_test)
    ref = Hte[M].double().mean(dim=0).numpy()
    own = None
    if own_dynamics is not None:
        own = rollout_errors(own_dynamics, H_test, E_test, horizon, mask=mask_test, mean=ref)
    fitted = {}
    for kind in kinds:
        model = fit_posthoc_dynamics(
            H_train, E_train, kind=kind, horizon_train=horizon_train, mask=mask_train,
            steps=steps, lr=lr, seed=seed, device=device,
        )
        fitted[kind] = rollout_errors(model, H_test, E_test, horizon, mask=mask_test, mean=ref)
    ratio, report = None, None
    if beliefs_test is not None:
        B = np.asarray(as_numpy(beliefs_test))
        Hn = Hte.numpy()
        sel = M.numpy()
        pos = np.broadcast_to(np.arange(sel.shape[1]), sel.shape)[sel]
        report = belief_consistency_report(Hn[sel], B[sel], decimals=decimals, positions=pos)
        ratio = report["ratio"]
    return TransitionResult(
        horizons=list(range(1, int(horizon) + 1)),
        own=own,
        posthoc_mlp=fitted.get("mlp"),
        posthoc_linear=fitted.get("linear"),
        belief_ratio=ratio,
        n_train_seqs=int(Htr.shape[0]),
        n_test_seqs=int(Hte.shape[0]),
        belief=report,
    )
