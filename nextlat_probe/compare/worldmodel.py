"""Taxi world-model metrics per model (Vafa et al.; the NextLat paper's Table 1): next-token
validity, valid trajectories, sequence compression, distinction precision / recall and
detour robustness, every one a rate with its Wilson 95% interval, all models of one world
scored on the same held-out trips. Definitions: ``nextlat_probe.analysis.worldmodel``."""
from __future__ import annotations

from typing import Any, Sequence

from ..errors import AnalysisError
from ..records import identity, make_record
from .inputs import load_models

RATES = ("next_token", "trajectory_legal", "trajectory_valid", "compression", "compression_continuations",
         "distinction_precision", "distinction_recall")


def rate_dict(r: Any) -> dict[str, Any]:
    """A ``Rate`` or a ``PairMean`` (of ``analysis.worldmodel``) in the record form."""
    if hasattr(r, "to_dict"):
        return r.to_dict()
    from ..records import rate

    return rate(r.count, r.n)


def run_worldmodel(
    models: Sequence[Any],
    *,
    n_pairs: int = 200,
    epsilon: float = 0.01,
    max_turns: int | None = None,
    n_continuations: int | None = None,
    suffix_len: int | None = None,
    truth: str | None = None,
    protocol: str = "vafa2024",
    n_suffix_samples: int | None = None,
    detour_probs: Sequence[float] = (0.75, 0.01),
    seed: int = 0,
    device: str = "cpu",
    progress: bool = False,
    batch_size: int = 256,
) -> list[dict[str, Any]]:
    """One ``worldmodel`` record per model (visible-origin taxi worlds only). Under
    ``vafa2024`` the distinction metrics are plain means over pairs (not binomial rates),
    with ``{metric}_ci`` (mean -/+ 1.96 s.e.) and ``{metric}_n_pairs``. ``params`` holds
    the settings actually used (the turn budget resolved); ``protocol`` the named protocol
    (``vafa2024`` by default, or ``exact``) with its defining parameters; parameters left
    None take the protocol's values (``analysis.worldmodel.PROTOCOLS``)."""
    from ..analysis.worldmodel import (
        PairMean,
        check_taxi_world,
        evaluate_world_model,
        model_predictor,
    )
    from ..progress import progress as bar

    loaded = load_models(models, device=device)
    for m in loaded:
        try:
            check_taxi_world(m.world)
        except AnalysisError as exc:
            raise AnalysisError(f"{m.path}: {exc}") from None
    out = []
    for m in bar(loaded, desc="world-model metrics", disable=not progress):
        res = evaluate_world_model(model_predictor(m.model, batch_size=batch_size), m.world, n_pairs=n_pairs,
                                   seed=seed, epsilon=epsilon, max_turns=max_turns, n_continuations=n_continuations,
                                   suffix_len=suffix_len, detour_probs=tuple(detour_probs), truth=truth,
                                   protocol=protocol, n_suffix_samples=n_suffix_samples)
        metrics: dict[str, Any] = {}
        for k in RATES:
            r = getattr(res, k)
            if isinstance(r, PairMean):  # vafa2024 distinction: a mean of per-pair scores, not a count
                d = r.to_dict()
                metrics[k] = d["value"]
                metrics[f"{k}_ci"] = [d["low"], d["high"]]
                metrics[f"{k}_n_pairs"] = int(r.n)
            else:
                metrics[k] = rate_dict(r)
        for key, pair in res.detour.items():
            metrics[f"detour_{key}"] = rate_dict(pair["valid"])
            metrics[f"detour_{key}_legal"] = rate_dict(pair["legal"])
        metrics.update({k: int(v) for k, v in res.counts.items()})
        out.append(make_record(identity(m), "worldmodel", metrics, dict(res.settings), protocol=res.protocol))
    return out


__all__ = ["run_worldmodel", "RATES"]
