"""Multi-seed GPT-vs-NextLat experiments: train pairs, follow them along training, and
summarise every number as mean and spread over seeds.

Small models vary from seed to seed, and effective rank grows during training, so a
single run at a single step says little (SPEC §3, "Comparing GPT and NextLat honestly").
This module holds the logic the notebooks and ``analyses/`` scripts share:

- ``train_pair``: one GPT and one NextLat run per seed (``objectives`` may add the MTP
  baseline), identical apart from the objective (same data stream, same initial weights,
  same schedule), reusing finished runs;
- ``rank_along_training``: effective rank of the intermediate checkpoints
  (``keep_every``) and the final one, with each checkpoint's validation loss;
- ``matched_rank``: per seed, GPT and NextLat compared at a validation loss both reach
  (``analysis.losses.matched_loss_comparison``);
- ``seed_summary`` / ``summarise``: mean, sample standard deviation, min and max over
  seeds (tables of them: ``nextlat_probe.tables``).

Notebook use::

    from nextlat_probe.experiments import train_pair, rank_along_training, matched_rank
    runs = train_pair("mess3", seeds=[0, 1, 2], steps=600, out="runs/m3", keep_every=100)
    traj = rank_along_training(runs)
    matched = matched_rank(traj)
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

#: every objective ``train_pair`` can train (``models.objective.OBJECTIVES``)
OBJECTIVES = ("gpt", "nextlat", "mtp")
#: what ``train_pair`` trains unless told otherwise
PAIR_OBJECTIVES = ("gpt", "nextlat")
SUMMARY_STATS = ("mean", "std", "min", "max")


@dataclass
class Run:
    """One finished training run: where it lives and its final validation numbers."""

    objective: str
    seed: int
    out_dir: Path
    checkpoint: Path
    step: int
    val_loss: float
    val_floor: float

    @property
    def name(self) -> str:
        """The run folder's name, ``{objective}-seed{seed}``: what analysis records call
        the checkpoint (``LoadedCheckpoint.name``)."""
        return self.out_dir.name

    @property
    def gap_to_floor(self) -> float:
        return self.val_loss - self.val_floor

    @property
    def val_gap(self) -> float:
        """The 0.1 name of ``gap_to_floor`` (kept so older scripts run)."""
        return self.gap_to_floor

    def intermediate(self) -> list[Path]:
        """Intermediate checkpoints ``ckpt_step{N}.pt`` of this run, by step."""
        return intermediate_checkpoints(self.out_dir)

    def info(self) -> dict[str, Any]:
        return {"run": self.name, "objective": self.objective, "seed": self.seed, "step": self.step,
                "val_loss": self.val_loss, "val_floor": self.val_floor, "gap_to_floor": self.gap_to_floor,
                "checkpoint": str(self.checkpoint)}


def run_name(objective: str, seed: int) -> str:
    return f"{objective}-seed{int(seed)}"


def intermediate_checkpoints(folder: str | Path) -> list[Path]:
    """``ckpt_step{N}.pt`` files in ``folder`` sorted by ``N`` (other files ignored)."""
    found = []
    for p in Path(folder).glob("ckpt_step*.pt"):
        m = re.fullmatch(r"ckpt_step(\d+)\.pt", p.name)
        if m:
            found.append((int(m.group(1)), p))
    return [p for _, p in sorted(found)]


def normalised_train_config(saved: Any) -> dict[str, Any]:
    """A checkpoint's stored training config with every field a newer ``TrainConfig`` added
    at its default (so a run saved before a field existed still counts as the same run);
    ``{}`` when it is not a valid config."""
    from .training.config import TrainConfig

    try:
        base = TrainConfig.from_dict(dict(saved or {})).to_dict()
    except (TypeError, ValueError):
        return {}
    return {**dict(saved or {}), **{k: v for k, v in base.items() if k not in (saved or {})}}


def _run_state(ckpt: Path, cfg) -> tuple[str, dict[str, Any]]:
    """("done" | "resume" | "new", stored metrics): whether ``ckpt`` is exactly this run,
    finished or interrupted (same configuration), or something else / nothing."""
    from .checkpoint import CheckpointError, read_checkpoint

    if not ckpt.is_file():
        return "new", {}
    try:
        raw = read_checkpoint(ckpt)
    except CheckpointError:
        return "new", {}
    saved, want = normalised_train_config(raw.get("train_config")), cfg.to_dict()
    if any(saved.get(k) != v for k, v in want.items() if k != "device"):
        return "new", {}
    metrics = {"step": int(raw.get("step", 0)), **dict(raw.get("metrics", {}))}
    return ("done" if metrics["step"] >= cfg.steps else "resume"), metrics


def train_pair(
    world: str,
    seeds: Iterable[int] = (0,),
    steps: int = 1000,
    out: str | Path = "runs/experiments",
    objectives: Sequence[str] = PAIR_OBJECTIVES,
    world_options: dict[str, Any] | None = None,
    reuse: bool = True,
    progress: bool = False,
    log: Callable[[str], None] | None = None,
    time_limit: Any = None,
    **train_options: Any,
) -> list[Run]:
    """Train one run per objective and seed under ``out/{objective}-seed{seed}/``.

    Runs of the same seed differ only in the objective: the seed fixes the initial
    weights, the training batches and the validation set for both. ``train_options`` are
    further ``TrainConfig`` fields (``preset``, ``batch_size``, ``seq_len``, ``lr``,
    ``horizon`` (NextLat's and MTP's d alike), ``keep_every`` ...). Every kept checkpoint carries its own, current
    validation loss (the trainer evaluates at kept steps), which the matched-loss
    comparison needs. ``log`` receives one line per run (trained / resumed / reused). A finished run with the same configuration is reused and an
    interrupted one resumed (exactly, from its last checkpoint) unless ``reuse=False``; a
    run folder holding anything else is moved aside (``.replaced-*``), never deleted.
    Returns the runs in the order (seed, objective).

    ``time_limit`` (a ``training.trainer.TimeLimit``, or seconds from now) bounds the whole
    call: the run in progress stops cleanly with a resumable checkpoint and
    ``errors.TimeLimitReached`` is raised; calling again continues (finished runs reused,
    the stopped one resumed bit for bit).
    """
    from .errors import TimeLimitReached
    from .training.config import TrainConfig
    from .training.trainer import TimeLimit, train

    if time_limit is not None and not isinstance(time_limit, TimeLimit):
        time_limit = TimeLimit(float(time_limit))

    seeds = [int(s) for s in seeds]
    if not seeds:
        raise ValueError("train_pair: need at least one seed")
    for obj in objectives:
        if obj not in OBJECTIVES:
            raise ValueError(f"train_pair: objective must be one of {', '.join(OBJECTIVES)}, got {obj!r}")
    opts = dict(train_options)
    say = log or (lambda msg: None)
    out = Path(out)
    runs: list[Run] = []
    for seed in seeds:
        for obj in objectives:
            cfg = TrainConfig(world=world, world_options=dict(world_options or {}), objective=obj, steps=int(steps),
                              seed=seed, **opts)
            folder = out / run_name(obj, seed)
            state, done = _run_state(folder / "ckpt.pt", cfg) if reuse else ("new", {})
            if state == "done":
                say(f"reusing {folder / 'ckpt.pt'} (finished)")
            else:
                if time_limit is not None and time_limit.left() <= 0:
                    raise TimeLimitReached(f"time limit reached before {folder} ({state}); run the same command "
                                           "again to continue")
                say(f"{'resuming' if state == 'resume' else 'training'} {obj} on {world}, seed {seed} -> {folder}")
                # a fresh run moves whatever run the folder held aside (``folder/.replaced-*``)
                # rather than mixing with it: its kept checkpoints would pollute the trajectory
                res = train(cfg, folder, resume=folder / "ckpt.pt" if state == "resume" else None, progress=progress,
                            overwrite=state == "new", time_limit=time_limit)
                if getattr(res, "replaced", None):
                    say(f"moved the run {folder} held before to {res.replaced}")
                if res.stopped_by_time:
                    raise TimeLimitReached(f"time limit reached: {folder} stopped at step {res.step} of {steps} "
                                           "(checkpoint saved); run the same command again to continue")
                done = {"step": res.step, "val_loss": res.val_loss, "val_floor": res.val_floor}
            runs.append(Run(obj, seed, folder, folder / "ckpt.pt", int(done["step"]),
                            float(done.get("val_loss", math.nan)), float(done.get("val_floor", math.nan))))
    return runs


def rank_along_training(runs: Sequence[Run], layers: str = "last", n_seqs: int = 256, seed: int = 0,
                        device: str = "cpu", progress: bool = False) -> list[dict[str, Any]]:
    """``rank`` records (``compare.run_rank``, uncentred) of every kept checkpoint of every run
    plus its final checkpoint, all on the same sequences. Every record of a run is named
    after the run (``{objective}-seed{seed}``); ``step`` and ``val_loss`` say where along
    training it is. Checkpoints are loaded one run at a time to bound memory."""
    from .checkpoint import load_checkpoint
    from .compare import run_rank

    records: list[dict[str, Any]] = []
    for run in runs:
        paths = [p for p in run.intermediate() if p.resolve() != run.checkpoint.resolve()] + [run.checkpoint]
        by_step: dict[int, Any] = {}
        for p in paths:  # the last kept checkpoint and ckpt.pt may hold the same step: keep one
            ck = load_checkpoint(p, device=device)
            ck.label = run.name
            by_step[ck.step] = ck
        loaded = [by_step[k] for k in sorted(by_step)]
        records.extend(run_rank(loaded, layers=layers, n_seqs=n_seqs, seed=seed, device=device, progress=progress))
    return records


def matched_rank(records: list[dict[str, Any]], key: str = "effective_rank") -> list[dict[str, Any]]:
    """Per seed, the objectives compared at matched validation loss: the target is the
    lowest validation loss that every objective's run of that seed reaches, and each run
    contributes its first checkpoint at or below it. One row per (seed, objective):
    ``seed``, ``objective``, ``name``, ``step``, ``val_loss``, ``target_val_loss``, ``key``.
    Seeds where fewer than two objectives have records are skipped."""
    from .analysis.losses import matched_loss_comparison

    by_seed: dict[int, dict[str, list[dict[str, Any]]]] = {}
    for r in records:
        by_seed.setdefault(int(r["seed"]), {}).setdefault(r["objective"], []).append(r)
    rows = []
    for seed, traj in sorted(by_seed.items()):
        res = matched_loss_comparison(traj, key=key)
        for obj, hit in res["runs"].items():
            rows.append({"seed": seed, "objective": obj, "name": run_name(obj, seed), "step": hit["step"],
                         "val_loss": hit["val_loss"], "target_val_loss": res["target_val_loss"], key: hit[key]})
    return rows


# --------------------------------------------------------------------------------------
# summaries over seeds
# --------------------------------------------------------------------------------------
def _finite(values: Iterable[Any]) -> list[float]:
    out = []
    for v in values:
        if v is None:
            continue
        f = float(v)
        if math.isfinite(f):
            out.append(f)
    return out


def seed_summary(values: Iterable[Any]) -> dict[str, float]:
    """Mean, sample standard deviation (ddof = 1), min, max and count of the finite
    values (None and NaN are dropped). With one value ``std`` is NaN: one run has no
    measurable spread, and reporting 0 would claim a precision nobody measured."""
    v = _finite(values)
    n = len(v)
    if n == 0:
        nan = math.nan
        return {"mean": nan, "std": nan, "min": nan, "max": nan, "n": 0}
    mean = math.fsum(v) / n
    std = math.sqrt(math.fsum((x - mean) ** 2 for x in v) / (n - 1)) if n > 1 else math.nan
    return {"mean": mean, "std": std, "min": min(v), "max": max(v), "n": n}


def _field(r: dict[str, Any], key: str) -> Any:
    """A value of a record (identity / training field or metric, rates by their value) or of
    a flat row."""
    from .records import metric_value

    if "metrics" in r:
        return metric_value(r, key)
    return r.get(key)


def summarise(records: list[dict[str, Any]], by: Sequence[str], metrics: Sequence[str]) -> list[dict[str, Any]]:
    """Group ``records`` by the ``by`` fields (groups in first-seen order) and summarise
    each metric over the group with ``seed_summary``: columns ``{metric}_mean``,
    ``{metric}_std``, ``{metric}_min``, ``{metric}_max``, plus ``n`` (records in the
    group) and ``seeds`` (sorted distinct seeds, when records carry one)."""
    groups: dict[tuple, list[dict[str, Any]]] = {}
    for r in records:
        groups.setdefault(tuple(r.get(k) for k in by), []).append(r)
    rows = []
    for key, recs in groups.items():
        row: dict[str, Any] = dict(zip(by, key))
        row["n"] = len(recs)
        seeds = sorted({r["seed"] for r in recs if r.get("seed") is not None})
        if seeds:
            row["seeds"] = " ".join(str(s) for s in seeds)
        for m in metrics:
            s = seed_summary(_field(r, m) for r in recs)
            for stat in SUMMARY_STATS:
                row[f"{m}_{stat}"] = s[stat]
        rows.append(row)
    return rows


__all__ = ["normalised_train_config", "OBJECTIVES", "PAIR_OBJECTIVES", "Run", "run_name", "intermediate_checkpoints", "train_pair", "rank_along_training",
           "matched_rank", "seed_summary", "summarise"]
