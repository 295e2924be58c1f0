"""Sweeps: a grid of training runs that finds where NextLat's claims hold, and where not.

One grid point is one training run: objective x preset x steps x seed, and for NextLat
also lambda_h x lambda_kl (GPT and MTP do not read the lambdas, so they get one run per
(preset, steps, seed), never one per lambda setting). Every run lives in its own folder,
``{out}/{world}/{name}`` with a readable name::

    taxi/gpt-tiny-s1500-seed0
    taxi/nextlat-tiny-s1500-lh1-lkl0-seed0

A run of S steps is its own run (the cosine schedule decays to its end at S), keeping
``keep`` checkpoints along training (``keep_every = S // keep``, at least 1) besides the
final ``ckpt.pt``. Every distinct step is evaluated once (when ``keep`` divides S the last
kept checkpoint is the final one: ``keep`` points per run, else ``keep + 1``):

- ``rank``: effective rank of the last block (``compare.run_rank``, uncentred);
- ``probe``: linear belief probe R^2 of the last block (``compare.run_probe``, held out),
  where the world's belief vector is small enough to build (``compare.probe.MAX_BELIEF_DIM``);
- ``worldmodel`` (taxi worlds with visible origins): valid trajectories, detour robustness
  (random detours, p = 0.75) and compression (``compare.run_worldmodel``, protocol
  vafa2024) on ``n_pairs`` held-out trips (default 100, below run_worldmodel's 200: about
  10-15 s per tiny checkpoint on one core instead of about 40);
- ``mapping`` (with ``mapping=True``, same worlds): the map rebuilt from ``n_trips`` sampled
  trips (edge precision and recall, invented and missed streets) and the node-state
  embeddings (``compare.run_mapping``).

Reuse and resume. A run whose ``ckpt.pt`` is at its final step, with the same training
configuration, is not trained again; one interrupted partway resumes exactly from its
newest checkpoint (``ckpt.pt`` or a kept ``ckpt_step{N}.pt``, ``train(resume=...)``). A
folder holding a run with another configuration is refused in one line (choose another
``out``), never overwritten; a folder with run files but no readable checkpoint (killed
before its first save) is started afresh, the leftovers moved aside by the trainer
(``.replaced-*``). Evaluations are cached next to each checkpoint
(``ckpt_step{N}.eval.json``, ``ckpt.eval.json``; written atomically) together with the
evaluation settings and the checkpoint's size and modification time: a rerun, or a sweep
interrupted and started again, evaluates only what has no valid cache.

Parallelism. ``workers = N > 1`` trains and evaluates N runs at once in separate
(spawned) processes, each limited to ``max(1, cores // N)`` torch threads so that N x
threads <= cores (``cores`` = the CPUs this process may use); N above the core count is
refused. Small models gain more from several runs side by side than from more threads per
run. ``workers = 1`` runs everything in this process with torch's default threads.
``launcher = "slurm"`` submits one job per run instead (``nextlat_probe.cluster``, through
submitit), with the same folders, caches and tables; pre-empted and failed jobs are
requeued or resubmitted and resume from their checkpoints.

Tracking. ``log = ("tensorboard", "wandb")`` logs every run it trains to those trackers
(``training.tracking``), W&B runs grouped by ``sweep_group``; ``tensorboard --logdir OUT``
shows the whole sweep, one run per folder.

Outputs (``nextlat_probe.sweep``, the CLI): ``sweep_table`` gives one row per (run,
checkpoint) with the run's settings, ``n_params``, ``compute = step x n_params``, the
validation loss, exact floor and gap, and each metric (rates with their Wilson interval);
``beats_table`` pairs NextLat with GPT over seeds at each run's final checkpoint, with a
paired t interval and a flag where either model is far from the exact floor;
``compute_series`` gives the mean and min-max band over seeds along training compute.

Notebook use::

    from nextlat_probe.sweeps import SweepConfig, grid, run_sweep, sweep_runs, sweep_table, beats_table
    cfg = SweepConfig(world="taxi", presets=("tiny",), steps=(1500,), lambda_kl=(0.0, 1.0), seeds=3)
    records = run_sweep(cfg, progress=True)
    rows = sweep_table(records, sweep_runs(cfg))
    beats = beats_table(rows)
"""
from __future__ import annotations

import functools
import json
import math
import os
import re
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

from .errors import NextLatError, UsageError

#: objectives whose loss reads lambda_h and lambda_kl (the others get one run per setting)
LAMBDA_OBJECTIVES = ("nextlat",)
#: what a cache file says it is; a change of EVAL_VERSION invalidates every cache
CACHE_FORMAT = "nextlat_probe.sweep_eval"
EVAL_VERSION = 1
#: where a sweep trains its runs (``SweepConfig.launcher``)
LAUNCHERS = ("local", "slurm")
#: the detour setting of the sweep (record key ``detour_random@0.75``)
DETOUR_PROB = 0.75


@dataclass(frozen=True)
class Metric:
    """A column of the sweep: the record key and the analysis it comes from; its words,
    unit and better direction come from the one label registry (``nextlat_probe.labels``)."""

    key: str
    analysis: str  # "training" (the record's own validation loss) or a record analysis

    @property
    def info(self):
        from .labels import label

        return label(self.key, None if self.analysis == "training" else self.analysis)

    @property
    def better(self) -> str:
        """``"higher"`` | ``"lower"``."""
        return self.info.better

    @property
    def label(self) -> str:
        return self.info.header(arrow=False)

    @property
    def why(self) -> str:
        return self.info.why

    def direction(self) -> str:
        """``lower is better: more compact``."""
        return self.info.direction()


#: the sweep's metrics, in table order
METRICS = (
    Metric("val_loss", "training"),
    Metric("next_token", "worldmodel"),
    Metric("effective_rank", "rank"),
    Metric("r2", "probe"),
    Metric("trajectory_valid", "worldmodel"),
    Metric(f"detour_random@{DETOUR_PROB:g}", "worldmodel"),
    Metric("compression", "worldmodel"),
    Metric("edge_precision", "mapping"),
    Metric("edge_recall", "mapping"),
)
METRIC_KEYS = tuple(m.key for m in METRICS)


def ood_suffix(record: Mapping[str, Any]) -> str:
    """``@ood:{setting}`` for an out-of-distribution world-model record, else ``""``."""
    v = record.get("variant") or ""
    return f"@ood:{v[4:]}" if record.get("analysis") == "worldmodel" and v.startswith("ood ") else ""


def ood_metric_keys(settings: Sequence[str]) -> tuple[str, ...]:
    """The world-model metrics again for each out-of-distribution setting."""
    return tuple(f"{m.key}@ood:{s}" for s in settings for m in METRICS if m.analysis == "worldmodel")


def metric_info(key: str) -> Metric:
    if "@ood:" in key:
        base, setting = key.split("@ood:", 1)
        return Metric(key, metric_info(base).analysis)
    for m in METRICS:
        if m.key == key:
            return m
    raise UsageError(f"unknown sweep metric {key!r}; one of {', '.join(METRIC_KEYS)}")


# --------------------------------------------------------------------------------------
# configuration and grid
# --------------------------------------------------------------------------------------
@dataclass
class SweepConfig:
    """Everything a sweep depends on. Plain data: ``to_dict`` / ``from_dict`` round-trip
    through JSON."""

    #: world as on the CLIs, ``name[:key=value,...]`` (e.g. ``taxi:map_size=4,max_len=12``)
    world: str = "taxi"
    #: objectives to train (``experiments.OBJECTIVES``); lambdas apply to NextLat only
    objectives: tuple[str, ...] = ("gpt", "nextlat")
    #: model sizes (``models.config.PRESETS``): each preset multiplies the whole grid
    presets: tuple[str, ...] = ("tiny",)
    #: training lengths: each is a separate run with its own cosine schedule (a 1500-step
    #: run is NOT the first 1500 steps of a 6000-step one), so the grid's cost is the sum
    steps: tuple[int, ...] = (1500,)
    #: NextLat's latent-loss weights; every (lambda_h, lambda_kl) pair is one run per seed
    lambda_h: tuple[float, ...] = (1.0,)
    lambda_kl: tuple[float, ...] = (1.0,)
    #: seeds 0..seeds-1; the seed fixes initial weights, batches and validation set, and is
    #: shared by the objectives, so NextLat and GPT of one seed form a pair. One seed gives
    #: no interval; three is the least that says anything about seed-to-seed spread
    seeds: int = 3
    #: root folder of the run folders and outputs
    out: str = "runs/sweep"
    #: kept checkpoints along training (keep_every = steps // keep); more points on the
    #: compute axis cost one evaluation each
    keep: int = 3
    #: runs trained at once in separate processes (each with cores // workers threads)
    workers: int = 1
    #: training and evaluation device (auto = CUDA where available); not part of a run's
    #: identity, so a run may be resumed elsewhere
    device: str = "auto"
    #: further ``TrainConfig`` fields shared by every run (batch_size, lr, horizon, seq_len,
    #: warmup_steps, eval_every, n_val, save_every ...)
    train_options: dict[str, Any] = field(default_factory=dict)
    #: sequences for the effective rank and the probe (the probe tests on the last third);
    #: more sequences: steadier numbers, linearly more time
    n_seqs: int = 256
    #: held-out trips of the world-model metrics (run_worldmodel's default is 200; 100
    #: halves the dominant evaluation cost, Wilson intervals about +-0.1 at worst)
    n_pairs: int = 100
    #: seed of the analysed sequences and trips (the same for every checkpoint)
    eval_seed: int = 0
    #: evaluate the belief probe (where the world's beliefs are small enough)
    probe: bool = True
    #: evaluate the world-model metrics (taxi worlds with visible origins)
    worldmodel: bool = True
    #: explicit grid cells instead of the presets x steps product, each
    #: rebuild the map from each checkpoint's sampled trips (taxi worlds with visible origins;
    #: ``compare.run_mapping``, protocol vafa2024, ``n_trips`` trips) and embed its node states
    mapping: bool = False
    #: trips sampled for the map reconstruction (run_mapping's default is 1000)
    n_trips: int = 500
    #: explicit grid cells instead of the presets x steps product, each
    #: ``PRESET:STEPS[:lambda_h=V/V...][:lambda_kl=V/V...]`` (lambdas not given: the sweep's
    #: lists); e.g. ``("tiny:1500", "tiny:6000", "mini:1500:lambda_kl=0")`` runs mini only
    #: where it fits. Empty: every preset x every steps value
    cells: tuple[str, ...] = ()
    #: out-of-distribution world-model evaluations beside the in-distribution one
    #: (``analysis.worldmodel.ood_world``: ``longer``, ``walk=random`` ...); each costs one
    #: more world-model evaluation per checkpoint. Columns ``{metric}@ood:{setting}``
    ood: tuple[str, ...] = ()
    #: trackers every run also logs to (``training.tracking``: ``tensorboard``, ``wandb``);
    #: W&B groups the sweep's runs under ``sweep_group``
    log: tuple[str, ...] = ()
    #: where runs are trained: ``local`` (this machine, ``workers`` at once) or ``slurm``
    #: (one job per run through submitit: ``nextlat_probe.cluster``); the same folders and tables
    launcher: str = "local"
    #: ``launcher = "slurm"``: ``cluster.SLURM_DEFAULTS`` keys (partition, gpus_per_task,
    #: cpus_per_task, mem_gb, time_min, retries, options, executor ...)
    slurm: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.objectives = tuple(str(o) for o in self.objectives)
        self.presets = tuple(str(p) for p in self.presets)
        self.steps = tuple(int(s) for s in self.steps)
        self.lambda_h = tuple(float(v) for v in self.lambda_h)
        self.lambda_kl = tuple(float(v) for v in self.lambda_kl)
        self.train_options = dict(self.train_options)
        self.ood = tuple(str(o) for o in self.ood)
        self.cells = tuple(str(c) for c in self.cells)
        self.log = tuple(str(t) for t in self.log)
        self.slurm = dict(self.slurm)
        self.validate()

    def validate(self) -> None:
        from .experiments import OBJECTIVES
        from .models.config import PRESETS

        def listed(flag: str, values: Sequence[Any], allowed: Sequence[Any] | None = None) -> None:
            if not values:
                raise UsageError(f"--{flag}: give at least one value")
            dup = sorted({str(v) for v in values if list(values).count(v) > 1})
            if dup:
                raise UsageError(f"--{flag}: {dup[0]} given twice")
            for v in values:
                if allowed is not None and v not in allowed:
                    raise UsageError(f"--{flag}: {v!r} is not one of {', '.join(map(str, allowed))}")

        listed("objectives", self.objectives, OBJECTIVES)
        listed("presets", self.presets, tuple(PRESETS))
        listed("steps", self.steps)
        listed("lambda-h", self.lambda_h)
        listed("lambda-kl", self.lambda_kl)
        for flag, values in (("lambda-h", self.lambda_h), ("lambda-kl", self.lambda_kl)):
            for v in values:
                if not (math.isfinite(v) and v >= 0):
                    raise UsageError(f"--{flag}: {v!r} must be a finite number >= 0")
        positive = {"steps": min(self.steps), "seeds": self.seeds, "keep": self.keep, "workers": self.workers,
                    "n-seqs": self.n_seqs, "n-pairs": self.n_pairs, "n-trips": self.n_trips}
        for flag, v in positive.items():
            if not (isinstance(v, int) and v >= 1):
                raise UsageError(f"--{flag} must be a positive integer, got {v!r}")
        if self.n_seqs < 6:
            raise UsageError(f"--n-seqs must be at least 6 (the probe tests on a third of them), got {self.n_seqs}")
        if self.workers > available_cores():
            raise UsageError(f"--workers {self.workers} exceeds the {available_cores()} cores available "
                             "(each worker needs at least one torch thread)")
        reserved = {"world", "world_options", "objective", "preset", "steps", "seed", "keep_every", "device",
                    "lambda_h", "lambda_kl"}
        clash = sorted(reserved & set(self.train_options))
        if clash:
            raise UsageError(f"train_options may not set {clash[0]!r}: the sweep sets it per run")
        parse_world(self.world)  # a bad world spec fails here, before any run
        from .training.tracking import parse_trackers

        self.log = parse_trackers(self.log)
        if self.launcher not in LAUNCHERS:
            raise UsageError(f"--launcher must be one of {', '.join(LAUNCHERS)}, got {self.launcher!r}")
        if self.launcher == "slurm":
            import importlib.util

            if importlib.util.find_spec("submitit") is None:
                raise UsageError("--launcher slurm needs the submitit package: pip install 'nextlat_probe[cluster]'")
            from .cluster import slurm_options

            slurm_options(self.slurm)
        elif self.slurm:
            raise UsageError("Slurm options apply only with --launcher slurm")
        if self.cells:
            listed("cell", self.cells)
            for c in self.cells:
                preset, steps, lh, lkl = parse_cell(c, self)
                listed("cell", [preset], tuple(PRESETS))
                if steps < 1:
                    raise UsageError(f"--cell {c}: steps must be a positive integer")
                for flag, values in (("lambda_h", lh), ("lambda_kl", lkl)):
                    listed(f"cell {c}: {flag}", values)
                    if not all(math.isfinite(v) and v >= 0 for v in values):
                        raise UsageError(f"--cell {c}: {flag} values must be finite numbers >= 0")

    def grid_cells(self) -> list[tuple[str, int, tuple[float, ...], tuple[float, ...]]]:
        """(preset, steps, lambda_h values, lambda_kl values) per cell of the grid."""
        if self.cells:
            return [parse_cell(c, self) for c in self.cells]
        return [(p, s, self.lambda_h, self.lambda_kl) for p in self.presets for s in self.steps]

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "SweepConfig":
        from dataclasses import fields

        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})

    def eval_settings(self) -> dict[str, Any]:
        """What a cached evaluation depends on (a cache with other settings is redone)."""
        return {"version": EVAL_VERSION, "layers": "last", "n_seqs": self.n_seqs, "n_test": probe_n_test(self.n_seqs),
                "seed": self.eval_seed, "probe": self.probe, "worldmodel": self.worldmodel,
                "n_pairs": self.n_pairs, "detour_probs": [DETOUR_PROB],
                **({"ood": list(self.ood)} if self.ood else {}),
                **({"mapping": {"n_trips": self.n_trips}} if self.mapping else {})}


def parse_cell(text: str, cfg: "SweepConfig") -> tuple[str, int, tuple[float, ...], tuple[float, ...]]:
    """``PRESET:STEPS[:lambda_h=V/V...][:lambda_kl=V/V...]`` -> (preset, steps, lambda_h,
    lambda_kl); lambdas not given are ``cfg``'s."""
    parts = [p.strip() for p in str(text).split(":")]
    if len(parts) < 2:
        raise UsageError(f"--cell {text!r}: expected PRESET:STEPS[:lambda_kl=V/V...]")
    try:
        steps = int(parts[1])
    except ValueError:
        raise UsageError(f"--cell {text!r}: steps {parts[1]!r} is not an integer") from None
    lam = {"lambda_h": cfg.lambda_h, "lambda_kl": cfg.lambda_kl}
    given: set[str] = set()
    for part in parts[2:]:
        key, eq, val = part.partition("=")
        key = key.strip().replace("-", "_")
        if not eq or key not in lam:
            raise UsageError(f"--cell {text!r}: {part!r} is not lambda_h=... or lambda_kl=...")
        if key in given:
            raise UsageError(f"--cell {text!r}: {key} given twice")
        given.add(key)
        try:
            lam[key] = tuple(float(v) for v in val.split("/"))
        except ValueError:
            raise UsageError(f"--cell {text!r}: {part!r}: values must be numbers separated by /") from None
    return parts[0], steps, tuple(lam["lambda_h"]), tuple(lam["lambda_kl"])


def probe_n_test(n_seqs: int) -> int:
    """Held-out sequences of the probe: the last third (``compare.held_out``)."""
    from .compare import held_out

    return held_out(n_seqs)


def available_cores() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def threads_per_worker(workers: int) -> int:
    """torch threads of each of ``workers`` processes: ``workers x threads <= cores``."""
    return max(1, available_cores() // max(1, int(workers)))


def parse_world(text: str) -> tuple[str, dict[str, Any]]:
    """``name[:key=value,...]`` (``worlds.parse_spec``) -> (name, options), checked by
    building the world once (per distinct text: building a large map is not free)."""
    name, opts = _parse_world(str(text))
    return name, dict(opts)


@functools.lru_cache(maxsize=32)
def _parse_world(text: str) -> tuple[str, tuple[tuple[str, Any], ...]]:
    from .worlds import WorldError, make_world, parse_spec

    name, opts = parse_spec(text)
    try:
        make_world(name, **opts)
    except WorldError as exc:
        raise WorldError(f"--world {text!r}: {exc}") from None
    return name, tuple(opts.items())


def world_label(text: str) -> str:
    """The world's folder name: ``taxi``, ``taxi-map_size4-max_len12``, ``taxi-map_manhattan``."""
    name, opts = parse_world(text)
    parts = [name]
    for k, v in sorted(opts.items()):
        v = Path(str(v)).stem if k == "map" else v
        parts.append(f"{k}{_num(v) if isinstance(v, float) else v}")
    return re.sub(r"[^A-Za-z0-9_.=-]+", "_", "-".join(parts))


def _num(v: float) -> str:
    return format(float(v), "g")


@dataclass(frozen=True)
class RunSpec:
    """One grid point: one training run and its folder (relative to the sweep's ``out``)."""

    objective: str
    preset: str
    steps: int
    seed: int
    lambda_h: float | None  # None: the objective does not use it
    lambda_kl: float | None
    keep_every: int
    folder: str

    @property
    def name(self) -> str:
        return Path(self.folder).name

    def path(self, out: str | Path) -> Path:
        return Path(out) / self.folder

    def setting(self) -> tuple[Any, ...]:
        """What pairs runs across objectives: (preset, steps) plus the lambda setting."""
        return (self.preset, self.steps, self.lambda_h, self.lambda_kl)

    def train_config(self, cfg: SweepConfig):
        from .training.config import TrainConfig

        name, opts = parse_world(cfg.world)
        lambdas = {} if self.lambda_h is None else {"lambda_h": self.lambda_h, "lambda_kl": self.lambda_kl}
        return TrainConfig(world=name, world_options=opts, objective=self.objective, preset=self.preset,
                           steps=self.steps, seed=self.seed, keep_every=self.keep_every, device=cfg.device,
                           **lambdas, **cfg.train_options)

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, **asdict(self)}


def run_name(objective: str, preset: str, steps: int, seed: int, lambda_h: float | None = None,
             lambda_kl: float | None = None) -> str:
    """``nextlat-tiny-s1500-lh1-lkl0-seed0``; without lambdas ``gpt-tiny-s1500-seed0``."""
    lam = "" if lambda_h is None else f"-lh{_num(lambda_h)}-lkl{_num(lambda_kl)}"
    return f"{objective}-{preset}-s{int(steps)}{lam}-seed{int(seed)}"


def grid(cfg: SweepConfig) -> list[RunSpec]:
    """Every run of the sweep, ordered cell (preset, steps), seed, objective, lambdas (so
    the runs of one pair finish close together). Objectives outside ``LAMBDA_OBJECTIVES`` get one
    run per (preset, steps, seed)."""
    label = world_label(cfg.world)
    runs, seen = [], set()
    for preset, steps, lambda_h, lambda_kl in cfg.grid_cells():
        keep_every = max(1, steps // cfg.keep)
        for seed in range(cfg.seeds):
            for obj in cfg.objectives:
                lambdas = ([(lh, lkl) for lh in lambda_h for lkl in lambda_kl]
                           if obj in LAMBDA_OBJECTIVES else [(None, None)])
                for lh, lkl in lambdas:
                    name = run_name(obj, preset, steps, seed, lh, lkl)
                    if name not in seen:  # two cells of one preset and length share their GPT runs
                        seen.add(name)
                        runs.append(RunSpec(obj, preset, steps, seed, lh, lkl, keep_every, f"{label}/{name}"))
    return runs


# --------------------------------------------------------------------------------------
# the state of a run folder
# --------------------------------------------------------------------------------------
@dataclass
class RunState:
    """Where a run stands: ``new`` (nothing, or leftovers without a checkpoint), ``partial``
    (interrupted at ``step``; resumes from ``resume_from``), ``done`` (``ckpt.pt`` at the
    final step) or ``conflict`` (the folder holds another run: ``reason``)."""

    kind: str
    step: int = 0
    resume_from: str | None = None
    leftovers: bool = False  # run files without a readable checkpoint (moved aside on start)
    reason: str = ""
    evaluated: int = 0  # checkpoints with a valid cached evaluation
    checkpoints: int = 0  # distinct checkpoint steps on disk

    def text(self, steps: int) -> str:
        if self.kind == "done":
            return "done"
        if self.kind == "partial":
            return f"partial (step {self.step}/{steps})"
        if self.kind == "conflict":
            return f"conflict: {self.reason}"
        return "new (leftovers moved aside)" if self.leftovers else "new"


def _config_differences(saved: Mapping[str, Any], want: Mapping[str, Any]) -> list[str]:
    return [k for k, v in want.items() if k != "device" and saved.get(k) != v]


def kept_checkpoints(folder: Path) -> list[tuple[int, Path]]:
    """``(step, path)`` of the kept ``ckpt_step{N}.pt`` files, by step."""
    found = []
    if folder.is_dir():
        for p in folder.iterdir():
            m = re.fullmatch(r"ckpt_step(\d+)\.pt", p.name)
            if m and p.is_file():
                found.append((int(m.group(1)), p))
    return sorted(found)


def _read_train_state(path: Path) -> tuple[int, dict[str, Any]] | None:
    """(step, train_config) of a readable checkpoint, None otherwise."""
    from .checkpoint import read_checkpoint
    from .errors import CheckpointError

    try:
        raw = read_checkpoint(path)
    except CheckpointError:
        return None
    from .experiments import normalised_train_config

    return int(raw.get("step", 0)), normalised_train_config(raw.get("train_config"))


def run_state(cfg: SweepConfig, spec: RunSpec) -> RunState:
    """Read a run folder (imports torch only when the folder holds checkpoints)."""
    from .training.folder import is_run_file

    folder = spec.path(cfg.out)
    if not folder.is_dir():
        return RunState("new")
    present = [p.name for p in folder.iterdir() if is_run_file(p.name)]
    if not present:
        return RunState("new")
    want = spec.train_config(cfg).to_dict()
    # ckpt.pt, and the newest readable kept checkpoint (kept steps need not be save steps,
    # so it may be newer than ckpt.pt): the run resumes from the newer of the two
    found: list[tuple[int, Path]] = []
    final_step = None
    candidates = [folder / "ckpt.pt"] + [p for _, p in reversed(kept_checkpoints(folder))]
    for path in candidates:
        got = _read_train_state(path) if path.is_file() else None
        if got is None:
            continue
        step, saved = got
        diff = _config_differences(saved, want)
        if diff:
            shown = ", ".join(f"{k} {saved.get(k)!r} (sweep: {want[k]!r})" for k in diff[:3])
            return RunState("conflict", step, reason=f"{folder} holds a run with other settings: {shown}; "
                                                      "choose another --out")
        found.append((step, path))
        if path.name == "ckpt.pt":
            final_step = step
            if step >= spec.steps:
                break  # finished: no need to read the kept ones
        else:
            break
    if not found:
        return RunState("new", leftovers=True)
    step, path = max(found, key=lambda sp: sp[0])
    if final_step is not None and final_step >= spec.steps:
        state = RunState("done", final_step)
    else:
        state = RunState("partial", step, resume_from=str(path))
    if state.kind == "done":
        ckpts = run_checkpoints(folder, final_step)
        state.checkpoints = len(ckpts)
        settings = cfg.eval_settings()
        state.evaluated = sum(read_cache(p, settings) is not None for _, p in ckpts)
    return state


def plan(cfg: SweepConfig) -> list[tuple[RunSpec, RunState]]:
    """Every run of the grid with its state (nothing is trained or written)."""
    return [(spec, run_state(cfg, spec)) for spec in grid(cfg)]


def run_checkpoints(folder: Path, final_step: int) -> list[tuple[int, Path]]:
    """The checkpoints a finished run is evaluated at, one per distinct step: every kept
    ``ckpt_step{N}.pt`` and ``ckpt.pt`` (which stands for its step when a kept file has it
    too: the same weights)."""
    out = {s: p for s, p in kept_checkpoints(folder) if s != final_step}
    out[int(final_step)] = folder / "ckpt.pt"
    return sorted(out.items())


# --------------------------------------------------------------------------------------
# per-checkpoint evaluation and its cache
# --------------------------------------------------------------------------------------
def cache_path(ckpt: Path) -> Path:
    """``ckpt_step100.pt`` -> ``ckpt_step100.eval.json``; ``ckpt.pt`` -> ``ckpt.eval.json``."""
    return ckpt.with_name(ckpt.stem + ".eval.json")


def _stamp(ckpt: Path) -> dict[str, Any]:
    st = ckpt.stat()
    return {"file": ckpt.name, "size": int(st.st_size), "mtime_ns": int(st.st_mtime_ns)}


def read_cache(ckpt: Path, settings: Mapping[str, Any]) -> dict[str, Any] | None:
    """The cached evaluation of ``ckpt`` if it is of this very file (size, mtime) with these
    settings; None otherwise (missing, stale, unreadable)."""
    path = cache_path(ckpt)
    try:
        data = json.loads(path.read_text())
        stamp = _stamp(ckpt)
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or data.get("format") != CACHE_FORMAT:
        return None
    if data.get("checkpoint") != stamp or data.get("settings") != json.loads(json.dumps(dict(settings))):
        return None
    if not isinstance(data.get("records"), list) or not isinstance(data.get("context"), dict):
        return None
    return data


def _write_cache(ckpt: Path, settings: Mapping[str, Any], context: Mapping[str, Any],
                 records: list[dict[str, Any]]) -> None:
    from .checkpoint import atomic_write_bytes
    from .records import to_jsonable

    doc = {"format": CACHE_FORMAT, "checkpoint": _stamp(ckpt), "settings": dict(settings),
           "context": dict(context), "records": records}
    atomic_write_bytes((json.dumps(to_jsonable(doc), indent=1) + "\n").encode(), cache_path(ckpt))


def evaluate_checkpoint(ckpt: Path, spec: RunSpec, cfg: SweepConfig, progress: bool = False) -> dict[str, Any]:
    """Evaluate one checkpoint (rank, probe, world-model metrics as ``cfg`` says), write its
    cache and return it (``{"context", "records", ...}``)."""
    from .checkpoint import load_checkpoint
    from .compare import Inputs, run_mapping, run_probe, run_rank, run_worldmodel
    from .compare.probe import MAX_BELIEF_DIM
    from .models.transformer import resolve_device

    device = str(resolve_device(cfg.device))
    settings = cfg.eval_settings()
    ck = load_checkpoint(ckpt, device=device)
    ck.label = spec.name  # records carry the run's name at every step
    inputs = Inputs([ck], n_seqs=cfg.n_seqs, seed=cfg.eval_seed, progress=progress)
    records = run_rank(None, inputs=inputs, layers="last", seed=cfg.eval_seed, device=device)
    if cfg.probe and ck.world.n_states <= MAX_BELIEF_DIM:
        records += run_probe(None, inputs=inputs, layers="last", n_test=settings["n_test"], classifier=False,
                             seed=cfg.eval_seed, device=device)
    taxi = getattr(ck.world, "name", None) == "taxi" and getattr(ck.world, "origin", "visible") == "visible"
    if cfg.worldmodel and taxi:
        records += run_worldmodel([ck], n_pairs=cfg.n_pairs, detour_probs=(DETOUR_PROB,), seed=cfg.eval_seed,
                                  ood=cfg.ood, device=device)
    if cfg.mapping and taxi:
        records += run_mapping(None, inputs=inputs, n_trips=cfg.n_trips, layers="last", seed=cfg.eval_seed,
                               device=device)
    n_params = sum(int(p.numel()) for p in ck.model.parameters())
    n_p_psi = None if ck.dynamics is None else sum(int(p.numel()) for p in ck.dynamics.parameters())
    context = {**spec.to_dict(), "step": int(ck.step), "n_params": n_params, "n_params_p_psi": n_p_psi,
               "checkpoint": str(ckpt)}
    _write_cache(ckpt, settings, context, records)
    return {"context": context, "records": records}


# --------------------------------------------------------------------------------------
# running the sweep
# --------------------------------------------------------------------------------------
def _stderr(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def process_run(cfg: SweepConfig, spec: RunSpec, progress: bool = False,
                log: Callable[[str], None] | None = None, deadline: float | None = None) -> dict[str, Any]:
    """Train (or resume, or reuse) one run, then evaluate every checkpoint without a valid
    cache. Returns ``{"name", "state", "trained", "evaluated", "checkpoints", "stopped"}``.

    ``deadline`` (``time.time()`` seconds): stop cleanly before it. Training stops with a
    resumable checkpoint (``trainer.TimeLimit``); a checkpoint is evaluated only while the
    time left exceeds 1.5 times the previous evaluation's. ``stopped`` is then True and the
    same call later continues where this one stopped."""
    import time

    from .training import trainer

    say = log or (lambda msg: None)
    out = {"name": spec.name, "state": "", "trained": False, "evaluated": 0, "checkpoints": 0, "stopped": False}

    def left() -> float:
        return math.inf if deadline is None else deadline - time.time()

    if left() <= 0:
        return {**out, "stopped": True}
    state = run_state(cfg, spec)
    out["state"] = state.kind
    folder = spec.path(cfg.out)
    if state.kind == "conflict":
        raise UsageError(state.reason)
    out["trained"] = state.kind != "done"
    final_step = state.step
    if state.kind == "done":
        say(f"reusing {spec.folder} (finished, step {state.step})")
    else:
        if state.kind == "partial":
            say(f"resuming {spec.folder} from {Path(state.resume_from).name} (step {state.step}/{spec.steps})")
        else:
            say(f"training {spec.folder} ({spec.steps} steps)")
        limit = None if deadline is None else trainer.TimeLimit(max(left(), 1e-3))
        res = trainer.train(spec.train_config(cfg), folder, resume=state.resume_from, progress=progress,
                            overwrite=state.kind == "new" and state.leftovers, tracking=cfg.log,
                            tracking_group=sweep_group(cfg) if cfg.log else None, time_limit=limit)
        if res.stopped_by_time:
            say(f"time limit: {spec.folder} stopped at step {res.step}/{spec.steps} (resumes on the next call)")
            return {**out, "stopped": True}
        final_step = int(res.step)
    ckpts = run_checkpoints(folder, final_step)
    out["checkpoints"] = len(ckpts)
    settings = cfg.eval_settings()
    todo = [(s, p) for s, p in ckpts if read_cache(p, settings) is None]
    if todo:
        say(f"evaluating {spec.folder}: {len(todo)} of {len(ckpts)} checkpoint(s) (steps "
            f"{', '.join(str(s) for s, _ in todo)})")
    last = 0.0
    for _, p in todo:
        if left() <= 1.5 * last:
            say(f"time limit: {spec.folder} has {len(todo) - out['evaluated']} checkpoint(s) left to evaluate")
            return {**out, "stopped": True}
        t0 = time.time()
        evaluate_checkpoint(p, spec, cfg)
        last = time.time() - t0
        out["evaluated"] += 1
    return out


def sweep_group(cfg: SweepConfig) -> str:
    """The tracking group of a sweep's runs (W&B ``group``): its folder's name and a short
    hash of its absolute path, the same for every run and every rerun of the sweep."""
    import hashlib

    out = Path(cfg.out).resolve()
    return f"sweep-{out.name}-{hashlib.sha1(str(out).encode()).hexdigest()[:6]}"


def _worker_init(threads: int, limit_settings: dict[str, Any] | None = None) -> None:
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = str(threads)
    if limit_settings:  # --max-params / --max-memory of the parent
        from . import limits

        limits.restore(limit_settings)
    import torch

    torch.set_num_threads(threads)


def _worker_task(cfg_dict: dict[str, Any], spec_dict: dict[str, Any], deadline: float | None = None) -> dict[str, Any]:
    cfg = SweepConfig.from_dict(cfg_dict)
    spec = RunSpec(**{k: v for k, v in spec_dict.items() if k != "name"})
    return process_run(cfg, spec, progress=False, log=lambda msg: _stderr(f"[{spec.name}] {msg}"), deadline=deadline)


def run_sweep(cfg: SweepConfig, progress: bool = False, log: Callable[[str], None] | None = None,
              deadline: float | None = None) -> list[dict[str, Any]]:
    """Train, resume or reuse every run of the grid and evaluate every kept checkpoint and
    the final one; returns their records (``nextlat_probe.records`` shape, named after the
    runs, one ``step`` per checkpoint), in grid order then by step.

    Every state is read first: a folder holding another run stops the sweep before anything
    is trained. The first error (a diverged run, say) stops it too; all finished work is
    kept, and a rerun continues from there. ``progress``: a line (or bar) per finished run
    and, with one worker, the trainer's own progress; ``log`` receives one line per step
    of work (default: stderr when ``progress``, else nothing).

    ``deadline`` (``time.time()`` seconds; ``--time-limit``): every run stops cleanly
    before it (``process_run``); when some work is left, ``errors.TimeLimitReached`` is
    raised after everything finished has been saved, and the same call continues."""
    from .progress import progress as progress_bar

    say = log or (_stderr if progress else (lambda msg: None))
    planned = plan(cfg)
    conflicts = [st for _, st in planned if st.kind == "conflict"]
    if conflicts:
        raise UsageError(conflicts[0].reason + (f" (and {len(conflicts) - 1} more)" if len(conflicts) > 1 else ""))
    todo = [spec for spec, st in planned if not (st.kind == "done" and st.evaluated == st.checkpoints)]
    counts = {k: sum(st.kind == k for _, st in planned) for k in ("done", "partial", "new")}
    say(f"sweep: {len(planned)} runs ({counts['done']} done, {counts['partial']} partial, {counts['new']} new); "
        f"{len(todo)} need training or evaluation" + (f", {cfg.workers} workers x {threads_per_worker(cfg.workers)} "
                                                      f"threads" if cfg.workers > 1 and todo else ""))
    bar = progress_bar(total=len(todo), desc="sweep", disable=not progress or not todo)
    stopped: list[str] = []
    try:
        if cfg.launcher == "slurm" and todo:
            from .cluster import run_jobs

            run_jobs(cfg, todo, bar, say)
        elif cfg.workers == 1 or len(todo) <= 1:
            for spec in todo:
                res = process_run(cfg, spec, progress=progress, log=say, deadline=deadline)
                if res["stopped"]:
                    stopped.append(spec.name)
                    break
                bar.set_postfix_str(res["name"])
                bar.update(1)
        else:
            stopped = _run_parallel(cfg, todo, bar, say, deadline)
    finally:
        bar.close()
    if stopped:
        from .errors import TimeLimitReached

        left = sum(not (st.kind == "done" and st.evaluated == st.checkpoints) for _, st in plan(cfg))
        raise TimeLimitReached(f"time limit reached with {left} of {len(planned)} runs still to train or evaluate "
                               f"(every finished step is saved); run the same command again to continue")
    return collect_records(cfg)


def _run_parallel(cfg: SweepConfig, todo: list[RunSpec], bar: Any, say: Callable[[str], None],
                  deadline: float | None = None) -> list[str]:
    """Run ``todo`` in ``cfg.workers`` processes; the names of the runs a deadline stopped."""
    import multiprocessing as mp
    from concurrent.futures import FIRST_EXCEPTION, ProcessPoolExecutor, wait

    threads = threads_per_worker(cfg.workers)
    ctx = mp.get_context("spawn")  # a fresh interpreter per worker: no forked torch state
    from . import limits

    with ProcessPoolExecutor(max_workers=min(cfg.workers, len(todo)), mp_context=ctx, initializer=_worker_init,
                             initargs=(threads, limits.settings())) as pool:
        futures = {pool.submit(_worker_task, cfg.to_dict(), spec.to_dict(), deadline): spec for spec in todo}
        pending = set(futures)
        stopped: list[str] = []
        while pending:
            done, pending = wait(pending, return_when=FIRST_EXCEPTION)
            for f in done:
                exc = f.exception()
                if exc is not None:
                    for p in pending:
                        p.cancel()
                    raise exc
                res = f.result()
                if res["stopped"]:
                    stopped.append(res["name"])
                    continue
                say(f"finished {futures[f].folder} ({'trained' if res['trained'] else 'reused'}, "
                    f"{res['evaluated']} evaluated)")
                bar.set_postfix_str(res["name"])
                bar.update(1)
    return stopped


def collect_records(cfg: SweepConfig) -> list[dict[str, Any]]:
    """The cached records of every finished run of the grid (grid order, then step)."""
    return [r for entry in collect(cfg) for r in entry["records"]]


def collect(cfg: SweepConfig) -> list[dict[str, Any]]:
    """The cache entries (``{"context", "records"}``) of every finished, evaluated
    checkpoint of the grid; a run not finished or not evaluated is an error naming it."""
    settings = cfg.eval_settings()
    out = []
    for spec in grid(cfg):
        folder = spec.path(cfg.out)
        final = read_cache(folder / "ckpt.pt", settings) if (folder / "ckpt.pt").is_file() else None
        if final is None:
            raise NextLatError(f"{folder}: not finished or not evaluated with these settings; run the sweep")
        for _, p in run_checkpoints(folder, int(final["context"]["step"])):
            entry = final if p.name == "ckpt.pt" else read_cache(p, settings)
            if entry is None:
                raise NextLatError(f"{p}: no evaluation with these settings; run the sweep")
            out.append(entry)
    return out


def sweep_runs(cfg: SweepConfig) -> dict[str, dict[str, Any]]:
    """Per run name: its grid settings and ``n_params`` / ``n_params_p_psi`` (from the
    cached evaluation of its final checkpoint): the context ``sweep_table`` adds to the
    records."""
    out = {}
    for entry in collect(cfg):
        c = entry["context"]
        out.setdefault(c["name"], {k: v for k, v in c.items() if k not in ("step", "checkpoint")})
    return out


# --------------------------------------------------------------------------------------
# tables
# --------------------------------------------------------------------------------------
#: columns of ``sweep.csv`` before the metrics
ROW_KEYS = ("run", "objective", "preset", "steps", "step", "seed", "lambda_h", "lambda_kl", "n_params", "compute",
            "val_loss", "val_floor", "gap_to_floor")


def metrics_of(items: Iterable[Mapping[str, Any]]) -> tuple[str, ...]:
    """``METRIC_KEYS`` plus the out-of-distribution columns of the records or rows given."""
    extra: list[str] = []
    for r in items:
        suffix = ood_suffix(r) if "analysis" in r else ""
        keys = [f"{m.key}{suffix}" for m in METRICS if m.analysis == "worldmodel"] if suffix else \
            [k for k in r if "@ood:" in k and not k.endswith(("_low", "_high", "_n"))]
        extra += [k for k in keys if k not in extra]
    return METRIC_KEYS + tuple(extra)


def sweep_columns(rows: Iterable[Mapping[str, Any]], metrics: Sequence[str] | None = None) -> list[str]:
    """The CSV columns of ``sweep_table`` rows: ``ROW_KEYS``, each metric followed by its
    ``_low`` / ``_high`` / ``_n`` where it is a rate, then the context (``n_pairs``, each
    analysis' protocol, the checkpoint file) and anything else."""
    rows = list(rows)
    metrics = metrics_of(rows) if metrics is None else metrics
    present: list[str] = []
    for r in rows:
        present += [k for k in r if k not in present]
    cols = list(ROW_KEYS)
    for m in metrics:
        cols += [k for k in (m, f"{m}_low", f"{m}_high", f"{m}_n") if k in present and k not in cols]
    cols += [k for k in ("n_pairs", "protocol_rank", "protocol_probe", "protocol_worldmodel", "checkpoint")
             if k in present]
    return cols + [k for k in present if k not in cols]


def _float(v: Any) -> float:
    from .records import value

    return value(v)


def sweep_table(records: Iterable[Mapping[str, Any]], runs: Mapping[str, Mapping[str, Any]] | None = None,
                metrics: Sequence[str] | None = None) -> list[dict[str, Any]]:
    """One row per (run, checkpoint): ``ROW_KEYS``, then each metric (a rate as ``key``,
    ``key_low``, ``key_high``, ``key_n``), ``protocol_{analysis}`` naming each analysis'
    protocol and ``checkpoint``. ``runs`` (``sweep_runs``) supplies preset, steps, lambdas
    and ``n_params``; without it those cells are None. ``compute = step x n_params``
    (transformer parameters; NextLat's p_psi, used only in training, is not counted)."""
    from .records import is_rate

    runs = runs or {}
    records = list(records)
    metrics = metrics_of(records) if metrics is None else metrics
    rows: dict[tuple[str, int], dict[str, Any]] = {}
    for r in records:
        key = (r["name"], int(r["step"]))
        row = rows.get(key)
        if row is None:
            info = runs.get(r["name"], {})
            n_params = info.get("n_params")
            row = {"run": r["name"], "objective": r.get("objective"), "preset": info.get("preset"),
                   "steps": info.get("steps"), "step": int(r["step"]), "seed": r.get("seed"),
                   "lambda_h": info.get("lambda_h"), "lambda_kl": info.get("lambda_kl"), "n_params": n_params,
                   "compute": None if n_params is None else int(r["step"]) * int(n_params),
                   "val_loss": r.get("val_loss"), "val_floor": r.get("val_floor"),
                   "gap_to_floor": r.get("gap_to_floor")}
            for m in metrics:
                if m != "val_loss":
                    row[m] = None
            rows[key] = row
        row[f"protocol_{r['analysis']}"] = (r.get("protocol") or {}).get("name")
        if r["analysis"] == "worldmodel":
            row["n_pairs"] = (r.get("params") or {}).get("n_pairs")
        row.setdefault("checkpoint", r.get("source"))
        ood = ood_suffix(r)
        for m in metrics:
            if metric_info(m).analysis != r["analysis"]:
                continue
            base_key, _, setting = m.partition("@ood:")
            if (f"@ood:{setting}" if setting else "") != ood:
                continue  # in-distribution columns take in-distribution records, each ood its own
            v = (r.get("metrics") or {}).get(base_key)
            if v is None:
                continue  # another variant of the analysis (a map's embedding) does not overwrite it
            if is_rate(v):
                row.update({m: v["value"], f"{m}_low": v["low"], f"{m}_high": v["high"], f"{m}_n": v["n"]})
            else:
                row[m] = v
    return list(rows.values())


def final_rows(rows: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Each run's row at its final checkpoint (``step == steps``, else its largest step)."""
    best: dict[str, dict[str, Any]] = {}
    for r in rows:
        cur = best.get(r["run"])
        if cur is None or (cur["step"] != cur.get("steps") and (r["step"] == r.get("steps") or r["step"] > cur["step"])):
            best[r["run"]] = dict(r)
    return list(best.values())


def paired_interval(diffs: Sequence[float], confidence: float = 0.95) -> tuple[float, float, float]:
    """(mean, low, high) of paired differences: Student t interval with n - 1 degrees of
    freedom (``scipy.stats.t.interval``); NaN bounds for fewer than two pairs; the mean
    itself when every difference is equal."""
    from scipy import stats

    d = [float(x) for x in diffs]
    n = len(d)
    if n == 0:
        return math.nan, math.nan, math.nan
    mean = math.fsum(d) / n
    if n < 2:
        return mean, math.nan, math.nan
    sd = math.sqrt(math.fsum((x - mean) ** 2 for x in d) / (n - 1))
    if sd == 0:
        return mean, mean, mean
    lo, hi = stats.t.interval(confidence, n - 1, loc=mean, scale=sd / math.sqrt(n))
    return mean, float(lo), float(hi)


NOT_CONVERGED = "not converged; compare at matched loss"


def convergence_flag(gaps: Sequence[float], threshold: float = 0.05, ratio: float = 1.5, tol: float = 0.01) -> str:
    """``NOT_CONVERGED`` plus the reason where either model is far from the exact floor (a
    mean gap above ``threshold`` nats/token) or one gap is more than ``ratio`` times the
    other (gaps below ``tol`` count as ``tol``: two models within 0.01 nats of the floor are
    both converged, whatever their ratio); '' otherwise."""
    g = [x for x in gaps if x is not None and math.isfinite(x)]
    if len(g) < len(gaps) or not g:
        return f"{NOT_CONVERGED} (gap unknown)"
    hi, lo = max(g), min(g)
    if hi > threshold:
        return f"{NOT_CONVERGED} (gap {hi:.3g} > {threshold:g})"
    if max(hi, tol) / max(lo, tol) > ratio:
        return f"{NOT_CONVERGED} (gaps {hi:.3g} vs {lo:.3g}: more than {ratio:g}x)"
    return ""


#: where the beats table reads each run: its final checkpoint, or per pair the kept
#: checkpoints at matched validation loss (``matched_pair``)
BEATS_AT = ("final", "matched_loss")


def matched_set(*runs: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]] | None:
    """The rows of several runs (all their evaluated checkpoints) compared at matched
    validation loss: the target is the largest of the runs' best validation losses (the
    lowest loss every run reaches), and each run contributes its first checkpoint (by step)
    at or below it, the rule of ``analysis.losses.matched_loss_comparison``. None when a run
    has no finite validation loss."""
    def usable(rs):
        return sorted((dict(r) for r in rs if math.isfinite(_float(r.get("val_loss")))), key=lambda r: r["step"])

    kept = [usable(rs) for rs in runs]
    if not kept or not all(kept):
        return None
    target = max(min(_float(r["val_loss"]) for r in rs) for rs in kept)
    return [next(r for r in rs if _float(r["val_loss"]) <= target + 1e-12) for rs in kept]


def matched_pair(chall: Sequence[Mapping[str, Any]], base: Sequence[Mapping[str, Any]]) -> tuple[dict[str, Any], dict[str, Any]] | None:
    """``matched_set`` of two runs, as a pair."""
    pick = matched_set(chall, base)
    return None if pick is None else (pick[0], pick[1])


def beats_table(rows: Iterable[Mapping[str, Any]], metrics: Sequence[str] | None = None, challenger: str = "nextlat",
                baseline: str = "gpt", confidence: float = 0.95, gap_threshold: float = 0.05, gap_ratio: float = 1.5,
                gap_tol: float = 0.01, at: str = "final") -> list[dict[str, Any]]:
    """Where ``challenger`` beats ``baseline``: per (preset, steps, challenger's lambda
    setting) and metric, the challenger minus the baseline at each run's final checkpoint
    (``at="final"``) or, per pair, at the kept checkpoints of matched validation loss
    (``at="matched_loss"``, ``matched_pair``; columns ``steps_challenger`` /
    ``steps_baseline`` list the steps used per seed), paired over seeds (the same seed
    index), as the mean difference with a paired t interval (``paired_interval``).

    Columns: ``preset``, ``steps``, ``lambda_h``, ``lambda_kl``, ``metric``, ``better_is``
    (higher | lower), ``n`` (pairs), ``seeds``, ``challenger`` / ``baseline`` (the
    objectives), ``challenger_mean``, ``baseline_mean``, ``diff_mean``, ``diff_low``,
    ``diff_high``, ``interval`` (text; ``n=1, no interval`` with one pair), ``better`` (the
    objective whose mean is better, or ``tie``), ``clear`` (``yes`` when the interval
    excludes 0, ``no``, or ``n=1, no interval``), ``gap_challenger`` / ``gap_baseline``
    (mean gap to the exact floor) and ``flag`` (``convergence_flag``)."""
    if at not in BEATS_AT:
        raise UsageError(f"beats table: at must be one of {', '.join(BEATS_AT)}, got {at!r}")
    rows = list(rows)
    metrics = metrics_of(rows) if metrics is None else metrics
    final = final_rows(rows)
    by_run: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        by_run.setdefault(r["run"], []).append(dict(r))
    base = {(r.get("preset"), r.get("steps"), r.get("seed")): r for r in final if r.get("objective") == baseline}
    groups: dict[tuple[Any, ...], list[dict[str, Any]]] = {}
    for r in final:
        if r.get("objective") == challenger:
            groups.setdefault((r.get("preset"), r.get("steps"), r.get("lambda_h"), r.get("lambda_kl")), []).append(r)
    out = []
    for (preset, steps, lh, lkl), chall in groups.items():
        pairs = [(c, base[(preset, steps, c.get("seed"))]) for c in sorted(chall, key=lambda r: r.get("seed") or 0)
                 if (preset, steps, c.get("seed")) in base]
        if at == "matched_loss":
            pairs = [p for p in (matched_pair(by_run[c["run"]], by_run[b["run"]]) for c, b in pairs) if p is not None]
        gaps_c = [_float(c.get("gap_to_floor")) for c, _ in pairs]
        gaps_b = [_float(b.get("gap_to_floor")) for _, b in pairs]
        gap_c = _mean(gaps_c)
        gap_b = _mean(gaps_b)
        flag = convergence_flag([gap_c, gap_b], gap_threshold, gap_ratio, gap_tol) if pairs else ""
        for m in metrics:
            info = metric_info(m)
            used = [(c, b) for c, b in pairs if math.isfinite(_float(c.get(m))) and math.isfinite(_float(b.get(m)))]
            if not used:
                continue  # e.g. world-model metrics of a world without them
            diffs = [_float(c.get(m)) - _float(b.get(m)) for c, b in used]
            mean, lo, hi = paired_interval(diffs, confidence)
            n = len(diffs)
            sign = mean if info.better == "higher" else -mean
            better = challenger if sign > 0 else baseline if sign < 0 else "tie"
            if n < 2:
                interval, clear = "n=1, no interval", "n=1, no interval"
            else:
                interval = f"[{lo:.4g}, {hi:.4g}]"
                clear = "yes" if (lo > 0 or hi < 0) else "no (interval includes 0)"
            out.append({"preset": preset, "steps": steps, "lambda_h": lh, "lambda_kl": lkl, "metric": m,
                        "better_is": info.better, "n": n, "seeds": " ".join(str(c.get("seed")) for c, _ in used),
                        "challenger": challenger, "baseline": baseline,
                        "challenger_mean": _mean([_float(c.get(m)) for c, _ in used]),
                        "baseline_mean": _mean([_float(b.get(m)) for _, b in used]),
                        "diff_mean": mean, "diff_low": lo, "diff_high": hi, "interval": interval,
                        "better": better, "clear": clear, "gap_challenger": gap_c, "gap_baseline": gap_b,
                        "flag": flag, "at": at,
                        **({"steps_challenger": " ".join(str(c["step"]) for c, _ in used),
                            "steps_baseline": " ".join(str(b["step"]) for _, b in used)}
                           if at == "matched_loss" else {})})
    order = {m: i for i, m in enumerate(metrics)}
    out.sort(key=lambda r: (order[r["metric"]], str(r["preset"]), r["steps"] or 0, r["lambda_h"] or 0,
                            r["lambda_kl"] or 0))
    return out


def _mean(values: Sequence[float]) -> float:
    v = [x for x in values if math.isfinite(x)]
    return math.fsum(v) / len(v) if v else math.nan


# --------------------------------------------------------------------------------------
# figures' data: metric against training compute, mean and band over seeds
# --------------------------------------------------------------------------------------
def series_label(objective: str, preset: Any, steps: Any, lambda_h: Any, lambda_kl: Any) -> str:
    lam = "" if lambda_h is None else f" λh={_num(lambda_h)} λkl={_num(lambda_kl)}"
    return f"{objective} {preset} {steps} steps{lam}"


def compute_series(rows: Iterable[Mapping[str, Any]], metric: str) -> list[dict[str, Any]]:
    """Per setting (objective, preset, steps, lambdas), ``metric`` along training compute:
    ``{"objective", "preset", "steps", "lambda_h", "lambda_kl", "label", "compute",
    "step", "mean", "low", "high", "n"}`` with lists over the checkpoint steps; ``low`` /
    ``high`` are the min and max over seeds (equal to the mean with one seed). Rows without
    a compute value or the metric are skipped."""
    groups: dict[tuple[Any, ...], dict[int, list[tuple[float, float]]]] = {}
    for r in rows:
        v, c = _float(r.get(metric)), _float(r.get("compute"))
        if not (math.isfinite(v) and math.isfinite(c)):
            continue
        key = (r.get("objective"), r.get("preset"), r.get("steps"), r.get("lambda_h"), r.get("lambda_kl"))
        groups.setdefault(key, {}).setdefault(int(r["step"]), []).append((c, v))
    out = []
    for (obj, preset, steps, lh, lkl), by_step in groups.items():
        s = {"objective": obj, "preset": preset, "steps": steps, "lambda_h": lh, "lambda_kl": lkl,
             "label": series_label(obj, preset, steps, lh, lkl), "compute": [], "step": [], "mean": [], "low": [],
             "high": [], "n": []}
        for step in sorted(by_step):
            pts = by_step[step]
            vals = [v for _, v in pts]
            s["step"].append(step)
            s["compute"].append(pts[0][0])
            s["mean"].append(math.fsum(vals) / len(vals))
            s["low"].append(min(vals))
            s["high"].append(max(vals))
            s["n"].append(len(vals))
        out.append(s)
    return out


__all__ = ["ood_suffix", "ood_metric_keys", "metrics_of", "SweepConfig", "RunSpec", "RunState", "Metric", "METRICS", "METRIC_KEYS", "LAMBDA_OBJECTIVES",
           "NOT_CONVERGED", "grid", "run_name", "world_label", "parse_world", "plan", "run_state", "run_checkpoints",
           "kept_checkpoints", "matched_pair", "matched_set", "BEATS_AT", "cache_path", "read_cache", "evaluate_checkpoint", "process_run", "run_sweep",
           "collect", "collect_records", "sweep_runs", "sweep_table", "sweep_columns", "final_rows", "beats_table",
           "paired_interval", "convergence_flag", "compute_series", "threads_per_worker", "available_cores",
           "metric_info", "probe_n_test", "sweep_group", "LAUNCHERS"]
