"""Per-position loss of a model next to the exact floor, and matched-loss comparisons."""
from __future__ import annotations

from typing import Any

import numpy as np


def position_losses(model, world, tokens: np.ndarray, batch_size: int = 128) -> dict[str, Any]:
    """Mean model cross-entropy and the exact floor (the world's exact predictive
    distribution) per target position, on the same tokens.

    Position p in the result is the position of the *predicted* token (p >= 1) in a
    next-token world, and the position of the labelled token itself in a tagging world."""
    import torch

    tokens = np.asarray(tokens, dtype=np.int64)
    dev = next(model.parameters()).device
    targets, mask = world.output_targets(tokens)
    p_exact = np.take_along_axis(world.target_probs(tokens), targets[..., None], -1)[..., 0]
    nll = np.empty(targets.shape, dtype=np.float64)
    model.eval()
    with torch.no_grad():
        for s in range(0, len(tokens), batch_size):
            t = torch.as_tensor(tokens[s : s + batch_size], device=dev)
            y = torch.as_tensor(targets[s : s + batch_size], device=dev)
            lp = model(t).float().log_softmax(-1)
            nll[s : s + batch_size] = -lp.gather(-1, y[..., None])[..., 0].cpu().numpy()
    with np.errstate(divide="ignore"):
        floor = -np.log(p_exact)
    counts = mask.sum(0)
    keep = counts > 0
    pos = (np.arange(tokens.shape[1]) + (0 if world.tagging else 1))[keep]
    model_loss = (np.where(mask, nll, 0).sum(0)[keep] / counts[keep])
    floor_loss = (np.where(mask, floor, 0).sum(0)[keep] / counts[keep])
    return {
        "positions": pos.tolist(),
        "loss": model_loss.tolist(),
        "floor": floor_loss.tolist(),
        "count": counts[keep].tolist(),
        "mean_loss": float(np.where(mask, nll, 0).sum() / mask.sum()),
        "mean_floor": float(np.where(mask, floor, 0).sum() / mask.sum()),
    }


def matched_loss_comparison(trajectories: dict[str, list[dict[str, Any]]], key: str = "effective_rank") -> dict[str, Any]:
    """Compare runs at a validation loss they all reach.

    ``trajectories``: run name -> records along training (``nextlat_probe.records`` shape:
    ``step``, ``val_loss`` and the metric ``key``). The common target is the largest of the runs' best validation losses (the
    lowest loss every run reaches); for each run the first checkpoint at or below it is
    reported. Returns {"target_val_loss", "runs": {name: {step, val_loss, key}}}.
    """
    from ..records import metric_value

    def ok(r: dict[str, Any]) -> bool:
        return bool(np.isfinite(metric_value(r, "val_loss")) and np.isfinite(metric_value(r, key)))

    usable = {k: [r for r in v if ok(r)] for k, v in trajectories.items()}
    usable = {k: sorted(v, key=lambda r: r["step"]) for k, v in usable.items() if v}
    if len(usable) < 2:
        return {"target_val_loss": None, "runs": {}}
    target = max(min(r["val_loss"] for r in v) for v in usable.values())
    runs = {}
    for name, recs in usable.items():
        hit = next(r for r in recs if r["val_loss"] <= target + 1e-12)
        runs[name] = {"step": hit["step"], "val_loss": hit["val_loss"], key: metric_value(hit, key)}
    return {"target_val_loss": target, "runs": runs}
