"""The one record shape: what every runner returns and every table and figure reads.

A record is a plain, JSON-ready dict describing one model analysed one way (one layer, one
dynamics variant, ...). Runners in ``nextlat_probe.compare`` produce lists of them;
``nextlat_probe.tables``, ``nextlat_probe.plots`` and ``nextlat_probe.report`` read only
this shape. No other module invents a row format.

::

    {
      # identity: which model
      "name": "nextlat-seed0",        # display label, unique within one comparison
      "objective": "nextlat",         # gpt | nextlat | mtp | external
      "step": 2000,                   # training steps of the weights analysed
      "seed": 0,                      # training seed (None when unknown)
      "source": "runs/x/ckpt.pt",     # where the model came from
      "horizon": 1,                   # d: NextLat's roll-out horizon or MTP's extra heads (None for GPT)
      # training state: how far it was trained (beside every metric, always)
      "val_loss": 0.866,              # validation cross-entropy (nats/token), None if unknown
      "val_floor": 0.814,             # the exact floor on the same tokens
      "gap_to_floor": 0.052,          # val_loss - val_floor
      # what was measured
      "analysis": "rank",             # rank | probe | transition | worldmodel | mapping | position_loss | speculative
      "layer": "L1",                  # hidden-state site (embed, L0.., ln_final, concat) or None
      "variant": None,                # a sub-kind within one analysis (transition: "own p_psi", ...)
      "params": {"n_seqs": 256, ...}, # every parameter the metrics were computed with
      "protocol": {"name": "vafa2024", ...},  # the published (or named) protocol followed, {} if none
      "metrics": {                    # numbers: floats, lists, or rates
        "effective_rank": 23.4,
        "next_token": {"value": 0.99, "low": 0.98, "high": 1.0, "n": 812, "count": 804},
      },
    }

A *rate* is always ``{"value", "low", "high", "n", "count"}``: ``count`` successes of
``n``, with the Wilson 95% interval (``scipy.stats.binomtest(...).proportion_ci``);
``value``/``low``/``high`` are ``None`` when ``n == 0`` (nothing to measure).

Records of analyses that decode (``worldmodel``, ``mapping`` behaviour, ``taskeval`` path-star,
``speculative``) say how: ``params["regime"]`` is ``kv_cache`` (a key/value cache,
``models.kvcache``) or ``full_forward`` (a full forward over the prefix per step), both joined
by ``+`` if a run used both, with ``params["regime_note"]`` saying why a model was not
cached (and, for ``speculative``, what the regime means for its timings). The regime never
changes a metric (``analysis.generation``: near-ties are decided on the full forward).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Iterable, Mapping

from .errors import AnalysisError

IDENTITY_KEYS = ("name", "objective", "step", "seed", "source", "horizon")
TRAINING_KEYS = ("val_loss", "val_floor", "gap_to_floor")
ANALYSIS_KEYS = ("analysis", "layer", "variant", "params", "protocol", "metrics")
RECORD_KEYS = IDENTITY_KEYS + TRAINING_KEYS + ANALYSIS_KEYS
ANALYSES = ("rank", "probe", "transition", "worldmodel", "mapping", "position_loss", "speculative", "taskeval")
RATE_KEYS = ("value", "low", "high", "n", "count")


# --------------------------------------------------------------------------------------
# rates
# --------------------------------------------------------------------------------------
def wilson_interval(count: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson score interval for ``count`` successes of ``n`` (NaNs when ``n == 0``).

    Unlike the normal approximation it stays inside [0, 1] and is not degenerate at 0% or
    100%, which is exactly where world-model metrics live."""
    count, n = int(count), int(n)
    if n <= 0:
        return math.nan, math.nan
    if not 0 <= count <= n:
        raise AnalysisError(f"wilson_interval: count {count} outside [0, {n}]")
    from scipy.stats import binomtest

    ci = binomtest(count, n).proportion_ci(confidence_level=confidence, method="wilson")
    lo = 0.0 if count == 0 else float(ci.low)  # exact ends, no rounding residue
    hi = 1.0 if count == n else float(ci.high)
    return lo, hi


@dataclass(frozen=True)
class Rate:
    """``count`` successes out of ``n`` trials, with the rate and its Wilson 95% interval."""

    count: int
    n: int

    @property
    def value(self) -> float:
        return self.count / self.n if self.n else math.nan

    @property
    def ci(self) -> tuple[float, float]:
        return wilson_interval(self.count, self.n)

    def to_dict(self) -> dict[str, Any]:
        """The record form of a rate (``None`` for the undefined value of an empty rate)."""
        if not self.n:
            return {"value": None, "low": None, "high": None, "n": 0, "count": 0}
        lo, hi = self.ci
        return {"value": self.value, "low": lo, "high": hi, "n": int(self.n), "count": int(self.count)}

    def __str__(self) -> str:
        if not self.n:
            return "n/a (0 trials)"
        lo, hi = self.ci
        return f"{self.value:.3f} [{lo:.3f}, {hi:.3f}] ({self.count}/{self.n})"


def rate(count: int, n: int) -> dict[str, Any]:
    """``Rate(count, n).to_dict()``."""
    return Rate(int(count), int(n)).to_dict()


def is_rate(v: Any) -> bool:
    return isinstance(v, Mapping) and "value" in v and "n" in v and "low" in v


def value(v: Any) -> float:
    """A metric as one float: a rate's value, a number itself; NaN for None/undefined."""
    if is_rate(v):
        v = v["value"]
    if v is None:
        return math.nan
    try:
        return float(v)
    except (TypeError, ValueError):
        return math.nan


def interval(v: Any) -> tuple[float, float, float]:
    """``(value, low, high)`` of a metric; a plain number has no interval (NaN bounds)."""
    if is_rate(v):
        return value(v), value(v["low"]), value(v["high"])
    return value(v), math.nan, math.nan


def metric_interval(record: Mapping[str, Any], key: str) -> tuple[float, float, float]:
    """``(value, low, high)`` of metric ``key`` of a record: a rate's Wilson interval, or
    for a per-pair mean (protocol ``vafa2024``'s distinction) its ``{key}_ci``; NaN bounds
    when the metric has no interval."""
    v = metric(record, key)
    if is_rate(v):
        return interval(v)
    ci = metric(record, f"{key}_ci")
    if isinstance(ci, (list, tuple)) and len(ci) == 2:
        return value(v), value(ci[0]), value(ci[1])
    return value(v), math.nan, math.nan


def metric(record: Mapping[str, Any], key: str) -> Any:
    """The raw metric ``key`` of a record (a number, list or rate), or None."""
    return record.get("metrics", {}).get(key)


def metric_value(record: Mapping[str, Any], key: str) -> float:
    """``value(metric(record, key))``, also for the training-state fields (``val_loss`` ...)."""
    if key in TRAINING_KEYS or key in ("step", "seed", "horizon"):
        return value(record.get(key))
    return value(metric(record, key))


# --------------------------------------------------------------------------------------
# building and checking records
# --------------------------------------------------------------------------------------
def _finite_or_none(v: Any) -> float | None:
    if v is None:
        return None
    f = float(v)
    return f if math.isfinite(f) else None


def identity(model: Any) -> dict[str, Any]:
    """Identity and training-state fields of a loaded model (``LoadedCheckpoint`` or anything
    with ``name``, ``objective``, ``step``, ``path``, ``train_config``, ``objective_config``
    and ``metrics``). The validation numbers are those stored with the weights; None when
    the weights were never evaluated."""
    m = dict(getattr(model, "metrics", None) or {})
    tc = dict(getattr(model, "train_config", None) or {})
    objective = getattr(model, "objective", None)
    ocfg = getattr(model, "objective_config", None)
    horizon = getattr(ocfg, "horizon", None) if objective in ("nextlat", "mtp") else None
    val_loss, val_floor = _finite_or_none(m.get("val_loss")), _finite_or_none(m.get("val_floor"))
    gap = m.get("gap_to_floor", m.get("val_gap"))  # val_gap: older checkpoints
    if gap is None and val_loss is not None and val_floor is not None:
        gap = val_loss - val_floor
    return {
        "name": str(getattr(model, "name", "model")),
        "objective": objective,
        "step": None if getattr(model, "step", None) is None else int(model.step),
        "seed": None if tc.get("seed") is None else int(tc["seed"]),
        "source": None if getattr(model, "path", None) is None else str(model.path),
        "horizon": None if horizon is None else int(horizon),
        "val_loss": val_loss,
        "val_floor": val_floor,
        "gap_to_floor": _finite_or_none(gap),
    }


def make_record(ident: Mapping[str, Any], analysis: str, metrics: Mapping[str, Any],
                params: Mapping[str, Any] | None = None, layer: str | None = None,
                variant: str | None = None, protocol: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """One record: ``ident`` (from ``identity``) plus what was measured, in the fixed key
    order of ``RECORD_KEYS``. ``protocol``: the named protocol the numbers follow
    (``{"name": "vafa2024", ...its defining parameters}``), empty when none is claimed."""
    if analysis not in ANALYSES:
        raise AnalysisError(f"make_record: unknown analysis {analysis!r} (one of {', '.join(ANALYSES)})")
    rec: dict[str, Any] = {k: ident.get(k) for k in IDENTITY_KEYS + TRAINING_KEYS}
    rec.update(analysis=analysis, layer=layer, variant=variant, params=dict(params or {}),
               protocol=dict(protocol or {}), metrics=dict(metrics))
    return rec


def check_record(rec: Any) -> None:
    """Raise ``AnalysisError`` unless ``rec`` has exactly the record shape (used by tests
    and by the table/figure builders' entry points)."""
    if not isinstance(rec, Mapping):
        raise AnalysisError(f"record must be a dict, got {type(rec).__name__}")
    keys = tuple(rec.keys())
    if set(keys) != set(RECORD_KEYS):
        missing = [k for k in RECORD_KEYS if k not in rec]
        extra = [k for k in keys if k not in RECORD_KEYS]
        raise AnalysisError(f"record of {rec.get('name')!r}: missing {missing}, unexpected {extra}")
    if rec["analysis"] not in ANALYSES:
        raise AnalysisError(f"record of {rec.get('name')!r}: unknown analysis {rec['analysis']!r}")
    if not all(isinstance(rec[k], Mapping) for k in ("params", "protocol", "metrics")):
        raise AnalysisError(f"record of {rec.get('name')!r}: params, protocol and metrics must be dicts")
    for k, v in rec["metrics"].items():
        if isinstance(v, Mapping) and set(v) != set(RATE_KEYS) and ("value" in v or "rate" in v):
            raise AnalysisError(f"record of {rec.get('name')!r}: metric {k!r} is not a rate {RATE_KEYS}")


def check_records(records: Iterable[Any], what: str) -> list[dict[str, Any]]:
    """``records`` as a list, each checked with ``check_record``; a row of another shape is
    an ``AnalysisError`` naming the consumer ``what`` (a table, a figure)."""
    if isinstance(records, Mapping):
        raise AnalysisError(f"{what}: expected a list of records, got one dict")
    out = []
    for r in records:
        try:
            check_record(r)
        except AnalysisError as exc:
            raise AnalysisError(f"{what}: not a record ({exc})") from None
        out.append(r)
    return out


def select(records: Iterable[Mapping[str, Any]], **match: Any) -> list[dict[str, Any]]:
    """The records whose fields equal every ``match`` (e.g. ``analysis="rank", layer="L1"``)."""
    return [dict(r) for r in records if all(r.get(k) == v for k, v in match.items())]


def names(records: Iterable[Mapping[str, Any]]) -> list[str]:
    """Distinct record names, in first-seen order."""
    out: list[str] = []
    for r in records:
        if r["name"] not in out:
            out.append(r["name"])
    return out


def group_by(records: Iterable[Mapping[str, Any]], key: str = "name") -> dict[Any, list[dict[str, Any]]]:
    """Records grouped by one field (groups in first-seen order)."""
    out: dict[Any, list[dict[str, Any]]] = {}
    for r in records:
        out.setdefault(r.get(key), []).append(dict(r))
    return out


def to_jsonable(obj: Any) -> Any:
    """Convert numpy/torch scalars and arrays, dataclasses and tuples into JSON types
    (NaN and infinities become None)."""
    import dataclasses

    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return to_jsonable({f.name: getattr(obj, f.name) for f in dataclasses.fields(obj)})
    if isinstance(obj, Mapping):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_jsonable(v) for v in obj]
    if hasattr(obj, "tolist") and not isinstance(obj, (str, bytes)):
        return to_jsonable(obj.tolist())
    if isinstance(obj, float):
        return None if (math.isnan(obj) or math.isinf(obj)) else obj
    if isinstance(obj, (str, int, bool)) or obj is None:
        return obj
    if hasattr(obj, "item"):
        return to_jsonable(obj.item())
    return str(obj)


__all__ = [
    "RECORD_KEYS", "IDENTITY_KEYS", "TRAINING_KEYS", "ANALYSES", "RATE_KEYS", "Rate", "rate", "wilson_interval",
    "is_rate", "value", "interval", "metric", "metric_interval", "metric_value", "identity", "make_record", "check_record", "check_records",
    "select", "names", "group_by", "to_jsonable",
]
