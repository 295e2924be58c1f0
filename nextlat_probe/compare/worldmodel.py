"""World-model metrics per model. Taxi worlds (Vafa et al.; the NextLat paper's Table 1):
next-token validity, valid trajectories, sequence compression, distinction precision /
recall and detour robustness, every one a rate with its Wilson 95% interval, all models of
one world scored on the same held-out trips (``nextlat_probe.analysis.worldmodel``). Any
other next-token world with exact beliefs (HMMs, interleaved A5): compression and
distinction against the exact beliefs (protocol ``myhill_nerode``,
``nextlat_probe.analysis.beliefmodel``)."""
from __future__ import annotations

from typing import Any, Sequence

from ..errors import AnalysisError
from ..records import identity, make_record
from .inputs import load_models

RATES = ("next_token", "trajectory_legal", "trajectory_valid", "compression", "compression_continuations",
         "distinction_precision", "distinction_recall")
#: what worlds without a map get (``analysis.beliefmodel``)
BELIEF_RATES = ("compression", "compression_continuations", "distinction_precision", "distinction_recall")


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
    ood: Sequence[str] = (),
    seed: int = 0,
    device: str = "cpu",
    progress: bool = False,
    batch_size: int = 256,
    regime: str = "auto",
) -> list[dict[str, Any]]:
    """One ``worldmodel`` record per model. Taxi worlds (visible origin) get every metric;
    other worlds get compression and distinction by ``evaluate_belief_model`` (protocol
    ``myhill_nerode``; ``truth``, ``protocol`` and ``n_suffix_samples`` are taxi-only and
    refused there, ``max_turns`` / ``detour_probs`` unused). Under
    ``vafa2024`` the distinction metrics are plain means over pairs (not binomial rates),
    with ``{metric}_ci`` (mean -/+ 1.96 s.e.) and ``{metric}_n_pairs``. ``params`` holds
    the settings actually used (the turn budget resolved); ``protocol`` the named protocol
    (``vafa2024`` by default, or ``exact``) with its defining parameters; parameters left
    None take the protocol's values (``analysis.worldmodel.PROTOCOLS``).

    ``ood`` (taxi): out-of-distribution settings (``analysis.worldmodel.ood_world``: e.g.
    ``longer``, ``walk=random``); each adds a record per model with ``variant`` ``ood
    <setting>`` and ``params["eval_world"]`` / ``params["train_world"]``, scored with the
    same protocol and seed, beside the in-distribution record (``variant`` None).

    ``regime``: how trips, continuations and suffixes are decoded (``auto``: a key/value
    cache where the model allows it, ``models.kvcache``; ``kv_cache``; ``full_forward``); the
    records are the same in every regime and ``params["regime"]`` names the one used."""
    from ..analysis.beliefmodel import check_belief_world
    from ..analysis.worldmodel import (
        check_taxi_world,
        evaluate_world_model,
        model_predictor,
        ood_world,
        trip_settings,
    )
    from ..progress import progress as bar

    loaded = load_models(models, device=device)
    eval_worlds: dict[str, list[Any]] = {}
    for m in loaded:
        try:
            if getattr(m.world, "name", None) == "taxi":
                check_taxi_world(m.world)
                eval_worlds[m.path] = [(text, ood_world(m.world, text, m.model_config.n_ctx)) for text in ood]
            else:
                if ood:
                    raise AnalysisError("out-of-distribution settings (--ood) are for taxi worlds")
                check_belief_world(m.world)
                if truth is not None or n_suffix_samples is not None or protocol != "vafa2024":
                    raise AnalysisError("--protocol, --truth and --suffix-samples are taxi options; other worlds "
                                        "use protocol myhill_nerode")
        except AnalysisError as exc:
            raise AnalysisError(f"{m.path}: {exc}") from None
    out = []
    for m in bar(loaded, desc="world-model metrics", disable=not progress):
        if getattr(m.world, "name", None) != "taxi":
            out.append(_belief_record(m, n_pairs, seed, epsilon, n_continuations, suffix_len, batch_size, regime))
            continue
        for text, world in [(None, m.world)] + eval_worlds.get(m.path, []):
            res = evaluate_world_model(model_predictor(m.model, batch_size=batch_size, regime=regime), world,
                                       n_pairs=n_pairs,
                                       seed=seed, epsilon=epsilon, max_turns=max_turns,
                                       n_continuations=n_continuations, suffix_len=suffix_len,
                                       detour_probs=tuple(detour_probs), truth=truth, protocol=protocol,
                                       n_suffix_samples=n_suffix_samples)
            metrics = _rates(res, RATES)
            for key, pair in res.detour.items():
                metrics[f"detour_{key}"] = rate_dict(pair["valid"])
                metrics[f"detour_{key}_legal"] = rate_dict(pair["legal"])
            metrics.update({k: int(v) for k, v in res.counts.items()})
            params = dict(res.settings)
            if text is not None:
                params.update(eval_world=trip_settings(world), train_world=trip_settings(m.world))
            out.append(make_record(identity(m), "worldmodel", metrics, params, protocol=res.protocol,
                                   variant=None if text is None else f"ood {text}"))
    return out


def _rates(res: Any, keys: Sequence[str]) -> dict[str, Any]:
    """The result's rates in record form; a ``PairMean`` (per-pair distinction) as its mean
    with ``{metric}_ci`` (mean -/+ 1.96 s.e.) and ``{metric}_n_pairs``, not as a count."""
    from ..analysis.worldmodel import PairMean

    metrics: dict[str, Any] = {}
    for k in keys:
        r = getattr(res, k)
        if isinstance(r, PairMean):
            d = r.to_dict()
            metrics[k] = d["value"]
            metrics[f"{k}_ci"] = [d["low"], d["high"]]
            metrics[f"{k}_n_pairs"] = int(r.n)
        else:
            metrics[k] = rate_dict(r)
    return metrics


def _belief_record(m: Any, n_pairs: int, seed: int, epsilon: float, n_continuations: int | None,
                   suffix_len: int | None, batch_size: int, regime: str = "auto") -> dict[str, Any]:
    from ..analysis.beliefmodel import evaluate_belief_model
    from ..analysis.worldmodel import model_predictor

    res = evaluate_belief_model(model_predictor(m.model, batch_size=batch_size, regime=regime), m.world, n_pairs=n_pairs,
                                seed=seed, epsilon=epsilon, n_continuations=n_continuations, suffix_len=suffix_len)
    metrics = _rates(res, BELIEF_RATES)
    metrics.update({k: int(v) for k, v in res.counts.items()})
    if res.notes:
        metrics["notes"] = list(res.notes)
    return make_record(identity(m), "worldmodel", metrics, dict(res.settings), protocol=res.protocol)


__all__ = ["run_worldmodel", "RATES", "BELIEF_RATES"]
