"""The training loop, shared line for line by GPT, NextLat and MTP.

``train`` is a short list of named steps: ``_configure``, ``_new_run`` (``_build``) and
``_restore``, claim the run folder (``training.folder``), ``_open_log``, then ``_loop``:
per step ``_train_step`` / ``_log_step`` / ``_evaluate`` / ``_save``.

Batches come from ``training.batches``: the world's torch sampler on the training device
(the default), its numpy sampler on the host (every run from before device sampling), or a
token dataset on disk. The batch of step ``s`` is a function of the seed and ``s`` alone, so a
resumed run sees exactly the batches the uninterrupted run would have seen. The validation
set is drawn once by the world's reference sampler with ``(seed, 1)`` (a dataset's run: its
``val.bin``) and never overlaps the training stream.

On CUDA nothing in a step waits for the device: the finiteness of the loss and of the
gradient norm is checked on the device, and a non-finite step's update is skipped there
(fused AdamW's ``found_inf``, as mixed-precision training does); the flag is read at every
log record, evaluation and save (``check_every``), which raise ``TrainingDiverged`` naming
the first bad step. Elsewhere every step is checked at once, before its update.

A checkpoint is only ever written with finite weights, no unread non-finite step and the
validation loss of THOSE weights (every save evaluates first), so "the last good
checkpoint" is good. Which files of a run folder training may touch is decided by
``training.folder``.

Under ``torchrun`` (``training.distributed``) the same loop runs in every process: each
draws the same global batch and takes its own rows (``shard_batch``), normalises its
partial losses by the global batch's counts, and DDP sums the gradients (the step module
``_Objective``, the transformer and p_psi / the MTP heads together, is what DDP wraps).
Rank 0 alone claims the folder, evaluates, logs and writes checkpoints; the validation
loss is broadcast so every rank takes the same decisions (a NaN stops all of them).
"""
from __future__ import annotations

import contextlib
import math
import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from .. import __version__, limits
from ..checkpoint import (
    CheckpointError,
    load_weights,
    model_config_problem,
    plain,
    read_checkpoint,
    save_checkpoint,
    world_of,
)
from ..errors import NextLatError, UsageError, one_line
from ..models.config import ModelConfig
from ..models.dynamics import LatentDynamics
from ..models.mtp import MTPHeads
from ..models.objective import (
    Batch,
    ObjectiveConfig,
    compute_losses,
    loss_denominators,
    masked_cross_entropy,
)
from ..models.transformer import build_transformer, last_resid_hook, move
from ..safeio import error_line, weights_problem
from ..worlds import World, make_world
from . import distributed, samplers
from .batches import batch_rng, host_batch, make_batches, val_rng  # noqa: F401  (batch_rng: re-exported)
from .config import TrainConfig
from .dataset import TokenDataset, open_dataset
from .distributed import Dist
from .folder import (
    RunFolder,
    identity_of_checkpoint,
    leftover_temp_files,
    prepare_run_folder,
    run_identity,
)
from .log import MetricsLog, read_metrics, truncate_metrics


@dataclass
class TimeLimit:
    """Stop a run cleanly, with a resumable checkpoint, before ``seconds`` have passed.

    The budget counts from ``start`` (default: when the ``TimeLimit`` is made) on ``clock``
    (seconds; ``time.monotonic`` unless a test gives its own). Before every step the loop
    asks whether that step (the slowest recent training step, plus the step's own
    evaluation and save when it has them) and then stopping (an evaluation and a checkpoint
    write, as measured in this run) still fit before the limit less ``margin`` (default 2%
    of the limit, at least 2 s and at most 60 s); if not, it saves and stops.
    """

    seconds: float
    clock: Callable[[], float] = time.monotonic
    start: float | None = None
    margin: float | None = None

    def __post_init__(self) -> None:
        if not (math.isfinite(float(self.seconds)) and self.seconds > 0):
            raise UsageError(f"time limit must be a positive number of seconds, got {self.seconds!r}")
        if self.start is None:
            self.start = self.clock()
        if self.margin is None:
            self.margin = min(60.0, max(2.0, 0.02 * float(self.seconds)))

    def left(self) -> float:
        """Seconds left before the limit, less the margin."""
        return float(self.start) + float(self.seconds) - float(self.margin) - self.clock()


class TrainingDiverged(NextLatError):
    """The loss, a gradient or a weight became NaN/inf; training stopped and no checkpoint
    was written from the bad state (the message names the last good one, if any). The train
    CLI prints it as one line and exits with code 3."""


def default_seq_len(world: World) -> int:
    return int(getattr(world, "default_length", 16))


def default_n_ctx(world: World, seq_len: int) -> int:
    """The model's context when ``TrainConfig.n_ctx`` is None: ``seq_len``, or the world's
    ``default_n_ctx`` if larger (tagging A5 asks for 64, to be read at longer lengths)."""
    return max(int(seq_len), int(getattr(world, "default_n_ctx", 0) or 0))


def default_positional(world: World) -> str:
    """The position scheme when ``TrainConfig.positional`` is None: the world's
    ``default_positional``, else "learned"."""
    return str(getattr(world, "default_positional", "learned"))


def default_lambda_kl(world: World) -> float:
    """NextLat's KL weight when ``TrainConfig.lambda_kl`` is None: the world's
    ``default_lambda_kl``, else 1.0 (tagging A5: 0.0, the NextLat paper's A5 setting)."""
    return float(getattr(world, "default_lambda_kl", 1.0))


def lr_lambda(cfg: TrainConfig) -> Callable[[int], float]:
    """Linear warm-up, then cosine decay to ``min_lr_ratio`` of the peak at ``steps``."""

    def f(step: int) -> float:
        if cfg.warmup_steps and step < cfg.warmup_steps:
            return (step + 1) / cfg.warmup_steps
        span = max(1, cfg.steps - cfg.warmup_steps)
        progress = min(1.0, (step - cfg.warmup_steps) / span)
        return cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    return f


def to_batch(world: World, tokens: np.ndarray, device: torch.device) -> Batch:
    """Tokens and the world's per-position targets (``World.output_targets``) as tensors."""
    return host_batch(world, tokens, device)


def shard(batch: Batch, ocfg: ObjectiveConfig, rank: int, world_size: int) -> Batch:
    """Rank ``rank``'s rows of a GLOBAL batch (equal contiguous blocks), with the global
    batch's counts as every loss's denominator (``loss_denominators``): the sum over ranks
    of their partial losses is the global batch's loss."""
    n = batch.tokens.shape[0]
    if n % world_size:
        raise UsageError(f"a batch of {n} sequences does not split evenly over {world_size} processes")
    counts = loss_denominators(batch.scored, batch.valid, ocfg)
    rows = slice(rank * (n // world_size), (rank + 1) * (n // world_size))
    return Batch(batch.tokens[rows], batch.targets[rows], batch.scored[rows], batch.valid[rows], **counts)


def shard_batch(world: World, tokens: np.ndarray, device: torch.device, ocfg: ObjectiveConfig, rank: int,
                world_size: int) -> Batch:
    """``shard`` of the host batch of ``tokens``."""
    return shard(to_batch(world, tokens, device), ocfg, rank, world_size)


def resolve_precision(requested: str | None, device: torch.device) -> str:
    """The precision a run uses (``TrainConfig.precision``): None -> bf16 on a CUDA device
    that supports it, else fp32; bf16 is refused off CUDA (CPU bf16 autocast is slower
    than fp32 for these models)."""
    bf16_ok = device.type == "cuda" and torch.cuda.is_bf16_supported()
    if requested is None:
        return "bf16" if bf16_ok else "fp32"
    if requested == "bf16" and device.type != "cuda":
        raise UsageError(f"precision bf16 needs a CUDA device (this run is on {device.type}, where bf16 autocast is "
                         "slower than fp32); use precision fp32")
    if requested == "bf16" and not bf16_ok:
        raise UsageError(f"precision bf16: {device} does not support bfloat16; use precision fp32")
    return requested


@torch.no_grad()
def evaluate_ce(model, world: World, tokens: np.ndarray, batch_size: int = 256) -> float:
    """Mean CE over the scored targets (weighted by their count across batches)."""
    was_training = model.training
    model.eval()
    dev = next(model.parameters()).device
    total, count = 0.0, 0
    for i in range(0, len(tokens), batch_size):
        b = to_batch(world, tokens[i : i + batch_size], dev)
        n = int(b.scored.sum())
        if n:
            total += float(masked_cross_entropy(model(b.tokens), b.targets, b.scored)) * n
            count += n
    model.train(was_training)
    return total / max(count, 1)


@dataclass
class TrainResult:
    checkpoint: Path
    step: int
    val_loss: float
    val_floor: float
    metrics_path: Path
    replaced: Path | None = None  # where ``overwrite`` moved the folder's old run, if it did
    model_config: ModelConfig | None = None  # what the run used (e.g. its positional scheme)
    objective_config: ObjectiveConfig | None = None  # ... and its objective (e.g. lambda_kl)
    total_steps: int | None = None  # the run's planned total (``TrainConfig.steps``)
    stopped_by_time: bool = False  # ``time_limit`` stopped it before ``total_steps``; resume continues it


@dataclass
class _Run:
    """Everything one training run holds while it runs (built by ``_build``)."""

    cfg: TrainConfig
    world: World
    seq_len: int
    device: torch.device
    mcfg: ModelConfig
    ocfg: ObjectiveConfig
    model: Any
    aux: LatentDynamics | MTPHeads | None  # the objective's own module: p_psi, the MTP heads, or None (GPT)
    opt: torch.optim.Optimizer
    sched: Any
    step: int = 0
    val_tokens: np.ndarray | None = None
    val_floor: float = float("nan")
    metrics: dict[str, Any] = field(default_factory=dict)  # the last evaluation
    last_good: tuple[Path, int] | None = None  # newest checkpoint known good (path, step)
    dist: Dist = field(default_factory=Dist)  # this process's place in a torchrun job (or the single process)
    precision: str = "fp32"  # what the forward runs in (resolve_precision)
    step_module: Any = None  # what a training step calls: _Objective, under DDP in a multi-process run
    compiled: bool = False  # the step's losses are torch.compile'd
    compile_mode: str | None = None  # torch.compile's mode when compiled ("default", "reduce-overhead", ...)
    source: Any = None  # where the batches come from (training.batches)
    check_every: int = 1  # steps between reads of the device's finiteness flag (1: every step, before its update)
    guard: Any = None  # the device-side record of the first non-finite step (_FiniteGuard), when check_every > 1
    tf32: bool = False  # float32 matmuls in TF32 (CUDA with TrainConfig.tf32)
    #: seconds of the last evaluation / checkpoint write (what stopping costs, for ``TimeLimit``)
    cost: dict[str, float] = field(default_factory=dict)

    @property
    def dynamics(self) -> LatentDynamics | None:
        """NextLat's p_psi (None for GPT and MTP)."""
        return self.aux if isinstance(self.aux, LatentDynamics) else None

    @property
    def mtp_heads(self) -> MTPHeads | None:
        """MTP's extra heads (None for GPT and NextLat)."""
        return self.aux if isinstance(self.aux, MTPHeads) else None

    def params(self) -> list[torch.Tensor]:
        return [p for g in self.opt.param_groups for p in g["params"]]

    def last_good_text(self) -> str:
        if self.last_good is None:
            return "no checkpoint was saved"
        return f"last good checkpoint: {self.last_good[0]} (step {self.last_good[1]})"

    def autocast(self):
        """The forward's precision context (none at all for fp32)."""
        if self.precision == "bf16":
            return torch.autocast(device_type=self.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()


class _Objective(torch.nn.Module):
    """The transformer and the objective's own module (p_psi, the MTP heads or None) as ONE
    module whose forward is a training step's forward pass and losses (``compute_losses``):
    what DDP wraps, so the reducer syncs p_psi's and the heads' gradients with the
    transformer's. State dicts are always taken from ``model`` / ``aux`` themselves.
    ``fast``: the hook-free forward, on the model's parameters gathered once
    (``fastpath.FastModel``: no per-step walk over the bridge); ``dense``: NextLat's
    roll-out over every start (no ``nonzero``: nothing waits for the device);
    ``compiled``: the whole loss computation compiled (``_compiled_losses``)."""

    def __init__(self, model, aux, ocfg: ObjectiveConfig, last_hook: str, fast: bool, dense: bool = False,
                 compiled=None):
        from ..models import fastpath

        super().__init__()
        self.model = model
        self.aux = aux
        self.ocfg, self.last_hook, self.fast, self.dense, self.compiled = ocfg, last_hook, fast, dense, compiled
        last = last_hook == last_resid_hook(model.cfg)  # the hook-free forward returns the last block's residual
        self.fast_model = fastpath.FastModel(model) if fast and last and fastpath.supports(model) else None

    def forward(self, batch: Batch) -> dict[str, torch.Tensor]:
        if self.compiled is not None:
            return self.compiled(batch)
        model = self.fast_model if self.fast_model is not None else self.model
        return compute_losses(model, self.aux, batch, self.ocfg, self.last_hook, fast=self.fast, dense=self.dense)


def train(
    cfg: TrainConfig | None = None,
    out_dir: str | Path = "runs/run",
    resume: str | Path | None = None,
    world: World | None = None,
    progress: bool = True,
    extra_steps: int | None = None,
    stop_at: int | None = None,
    overwrite: bool = False,
    compile: bool | str = False,
    prefetch: bool | None = None,
    tracking: tuple[str, ...] | list[str] = (),
    tracking_group: str | None = None,
    check_every: int | None = None,
    time_limit: TimeLimit | float | None = None,
) -> TrainResult:
    """Train (or resume) a model; writes ``out_dir/ckpt.pt``, ``out_dir/metrics.jsonl`` and
    ``out_dir/run.json`` (the run's identity; see ``training.folder`` for what a run may
    write over: nothing of another run unless ``overwrite``, which moves it aside first).

    ``resume``: continue exactly from that checkpoint (its configs win over ``cfg``, except
    ``steps``, which may be raised via ``cfg.steps`` or ``extra_steps``, and the device).
    ``stop_at``: stop (with a checkpoint) after this step, as an interrupted run would; the
    learning-rate schedule still follows ``cfg.steps``, so resuming continues exactly.
    ``compile``: ``torch.compile`` a step's forward pass and losses as one graph (on the
    hook-free forward; static shapes), True / ``"auto"`` or a torch.compile mode (``COMPILE_MODES``;
    auto: CUDA graphs, ``reduce-overhead``, for small steps on one CUDA device, else
    ``default``); falls back to the eager step, with a one-line warning, if compiling fails.
    ``prefetch``: draw the next batches in a background thread while the device works on
    this one (``BatchPrefetcher``; host sampling and datasets only; None: on CUDA only).
    Every step's batch is a function of (seed, step) alone, so the run is the same with or
    without it.
    ``tracking``: ``"tensorboard"`` and/or ``"wandb"`` (``training.tracking``): views of
    ``metrics.jsonl`` fed with its rows; ``tracking_group`` groups runs (a sweep's) in W&B.
    ``check_every``: read the device's finiteness flag every this many steps (and at every
    log record, evaluation and save); non-finite steps are skipped on the device meanwhile
    (fused AdamW). None: every step on a CPU (the step stops before its update), every log
    interval on CUDA. More than 1 on a CPU uses fused AdamW too.
    ``time_limit``: a ``TimeLimit`` (or seconds from now): stop cleanly, with a checkpoint
    of the step reached, before the limit (``TrainResult.stopped_by_time``); resuming from
    that checkpoint continues bit for bit, as after ``stop_at``.

    Under ``torchrun`` (``WORLD_SIZE`` > 1, or a process group already initialised) every
    process calls this: ``cfg.batch_size`` is the global batch, split over the processes;
    rank 0 writes the folder; a resume needs the checkpoint's number of processes.
    """
    if time_limit is not None and not isinstance(time_limit, TimeLimit):
        time_limit = TimeLimit(float(time_limit))
    state = _read_resume(resume) if resume is not None else None
    cfg, world, dataset = _configure(cfg, world, state, extra_steps)
    with distributed.session(cfg.device) as dist:
        run: _Run | None = None
        folder: RunFolder | None = None
        log: MetricsLog | _NoLog | None = None
        try:
            _check_launch(cfg, state, dist)
            precision = resolve_precision(cfg.precision, dist.device)
            checks = _check_interval(cfg, dist.device, check_every)
            run = _new_run(cfg, world, state, dist, dataset=dataset, fused=checks > 1)
            run.precision, run.check_every = precision, checks
            run.guard = _FiniteGuard(run.device) if checks > 1 else None
            _check_sampler_device(run, state)
            if state is not None:
                _restore(run, state)
            folder = _claim_folder(run, out_dir, state, overwrite)
            with _fp32_matmuls(run):
                _prepare_step(run, compile)
                log = _open_log(run, folder, state, tracking, tracking_group)
                use_prefetch = run.device.type == "cuda" if prefetch is None else bool(prefetch)
                stopped = _loop(run, folder, log, stop_at, progress, prefetch=use_prefetch and run.source.prefetchable,
                                time_limit=time_limit)
            log.close()
            dist.barrier()  # every rank returns after rank 0 wrote the last checkpoint
        except BaseException as exc:
            if log is not None:
                log.close(failed=True)
            if folder is not None and dist.is_main:
                folder.clean_up_after_failure()
            if dist.enabled:
                err = distributed.failure(exc, dist, run.step if run is not None else 0,
                                          run.last_good_text() if run is not None else "no checkpoint was saved")
                if err is not None:
                    raise err from None
            raise
    val_loss = float(run.metrics.get("val_loss", float("nan")))
    return TrainResult(folder.checkpoint, run.step, val_loss, run.val_floor, folder.metrics, folder.replaced,
                       run.mcfg, run.ocfg, total_steps=run.cfg.steps, stopped_by_time=stopped)


def _read_resume(resume: str | Path) -> dict[str, Any]:
    """The checkpoint to resume from, validated (shapes, p_psi) and complete for training."""
    state = read_checkpoint(resume)
    p = state["_path"]
    for key in ("train_config", "step", "optimizer", "scheduler", "rng"):
        if state.get(key) is None:
            raise CheckpointError(p, f"cannot resume: the checkpoint has no {key!r}")
    if not isinstance(state["step"], int) or state["step"] < 0:
        raise CheckpointError(p, f"cannot resume: invalid step {state['step']!r}")
    return state


def _configure(cfg: TrainConfig | None, world: World | None, state: dict[str, Any] | None,
               extra_steps: int | None) -> tuple[TrainConfig, World, TokenDataset | None]:
    """The run's TrainConfig, world and dataset (``cfg.data``; else None): the stored ones on
    resume (``steps`` may grow)."""
    if state is not None:
        try:
            saved = TrainConfig.from_dict(state["train_config"])
        except (TypeError, ValueError) as exc:
            raise CheckpointError(state["_path"], f"invalid train_config ({exc})") from None
        if cfg is not None and cfg.steps > saved.steps:
            saved.steps = cfg.steps
        if extra_steps:
            saved.steps = int(state["step"]) + int(extra_steps)
        saved.steps = max(saved.steps, int(state["step"]))
        if cfg is not None and cfg.device != "auto":
            saved.device = cfg.device
        if cfg is not None and cfg.precision is not None:
            saved.precision = cfg.precision
        if cfg is not None and not cfg.tf32:  # an execution setting, like the precision: may be switched off
            saved.tf32 = False
        return saved, world_of(state), _resumed_dataset(saved, state)
    cfg = cfg if cfg is not None else TrainConfig()
    if cfg.data is None:
        return cfg, world if world is not None else make_world(cfg.world, **cfg.world_options), None
    if world is not None:
        raise UsageError("give a world or a dataset (its meta.json names its world), not both")
    if cfg.sampler is not None:
        raise UsageError(f"sampler {cfg.sampler!r} draws from a world; a run on a dataset reads its rows")
    dataset = open_dataset(cfg.data)
    if cfg.seq_len is not None and cfg.seq_len != dataset.seq_len:
        raise UsageError(f"seq_len {cfg.seq_len}: the rows of {dataset.path} have {dataset.seq_len} tokens")
    cfg = replace(cfg, data=str(dataset.path), world=dataset.world.name, world_options={}, seq_len=dataset.seq_len)
    return cfg, dataset.world, dataset


def _resumed_dataset(saved: TrainConfig, state: dict[str, Any]) -> TokenDataset | None:
    """The dataset a resumed run was trained on: still there, and still the same data."""
    if saved.data is None:
        return None
    p = state["_path"]
    stored = dict(state["train_config"].get("dataset") or {}).get("fingerprint")
    try:
        dataset = open_dataset(saved.data)
    except UsageError as exc:
        raise CheckpointError(p, f"cannot resume: its dataset is gone or broken ({one_line(exc)})") from None
    if dataset.fingerprint != stored:
        raise CheckpointError(p, f"cannot resume: {dataset.path} no longer holds the dataset this run was trained on "
                                 "(its meta.json changed)")
    return dataset


def _check_launch(cfg: TrainConfig, state: dict[str, Any] | None, dist: Dist) -> None:
    """A resume runs with the checkpoint's number of processes; the global batch splits
    evenly over them."""
    if state is not None:
        try:
            stored = int((state.get("train_config") or {}).get("world_size", 1) or 1)
        except (TypeError, ValueError):
            raise CheckpointError(state["_path"], "invalid train_config.world_size") from None
        if stored != dist.world_size:
            how = "without torchrun" if stored == 1 else f"torchrun --nproc_per_node {stored}"
            raise UsageError(f"{state['_path']} was trained by {_processes(stored)}; resume it with {_processes(stored)} "
                             f"({how}), not {dist.world_size}")
    if cfg.batch_size % dist.world_size:
        raise UsageError(f"batch size {cfg.batch_size} (the global batch) does not split evenly over "
                         f"{_processes(dist.world_size)}; use a multiple of {dist.world_size}")


def _processes(n: int) -> str:
    return "1 process" if n == 1 else f"{n} processes"


def _new_run(cfg: TrainConfig, world: World, state: dict[str, Any] | None = None, dist: Dist | None = None,
             dataset: TokenDataset | None = None, fused: bool = False) -> _Run:
    """The run's modules (``_build``) on its device, its batch source (``_sampler``) and its
    validation set (rank 0 only: the others never evaluate). On resume the model config is
    the checkpoint's own (already validated against its weights)."""
    dist = dist if dist is not None else Dist(device=distributed.device_for(cfg.device, 1, 0))
    device = dist.device
    seq_len = cfg.seq_len or default_seq_len(world)
    mcfg = None
    if state is not None:
        mcfg = ModelConfig.from_dict(state["model_config"])
        if mcfg.n_ctx < seq_len:
            raise CheckpointError(state["_path"], f"model_config.n_ctx ({mcfg.n_ctx}) is smaller than the run's seq_len ({seq_len})")
    else:
        mcfg = _fresh_model_config(cfg, world, seq_len)
    check_training_memory(cfg, world, seq_len, mcfg, device, where=state["_path"] if state is not None else None,
                          world_size=dist.world_size)
    run = _Run(cfg, world, seq_len, device, *_build(cfg, world, seq_len, device, mcfg, fused=fused), dist=dist)
    stored = dict(state["train_config"]) if state is not None else {}
    run.source = make_batches(_sampler(cfg, world, stored), world, cfg.batch_size, seq_len, cfg.seed, device,
                              chunk=stored.get("sampler_chunk"), dataset=dataset)
    if dist.is_main:
        if dataset is not None:
            run.val_tokens = np.asarray(dataset.val[: cfg.n_val], dtype=np.int64)
            if not len(run.val_tokens):
                raise UsageError(f"{dataset.path}: val.bin holds no rows to validate on")
            # imported trips have no known generating process: no exact floor
            run.val_floor = float(world.exact_cross_entropy(run.val_tokens)) if dataset.exact_floor else float("nan")
        else:
            run.val_tokens = world.sample(cfg.n_val, seq_len, seed=val_rng(cfg.seed)).tokens
            run.val_floor = float(world.exact_cross_entropy(run.val_tokens))
    return run


def _sampler(cfg: TrainConfig, world: World, stored: dict[str, Any]) -> str:
    """The batch source of a run (``training.batches``): a dataset's rows with ``cfg.data``;
    on resume the one the checkpoint used (``sampler_used``; none recorded: the host sampler,
    the only one before); else ``cfg.sampler``, by default the device sampler (the host one
    for a world without a device sampler)."""
    if cfg.data is not None:
        return "data"
    if stored:
        return str(stored.get("sampler_used") or "host")
    if cfg.sampler is not None:
        return cfg.sampler
    return "device" if samplers.supports(world) else "host"


def _check_sampler_device(run: _Run, state: dict[str, Any] | None) -> None:
    """A device-sampled run resumed on the other kind of device draws other numbers (CPU and
    CUDA generators differ): equally distributed batches, but not the uninterrupted run's."""
    was = dict((state or {}).get("train_config") or {}).get("sampler_device")
    if run.source.kind == "device" and was is not None and was != run.device.type:
        _warn(run, f"this run drew its batches on {was}; from step {int(state['step']) + 1} on they are drawn on "
                   f"{run.device.type}, whose generator draws other numbers (same distribution): the run is not the "
                   "uninterrupted one")


def _build(cfg: TrainConfig, world: World, seq_len: int, device: torch.device, mcfg: ModelConfig | None = None,
           fused: bool = False):
    """(mcfg, ocfg, model, aux, optimiser, schedule), freshly initialised from ``cfg.seed``;
    ``aux`` is the objective's own module: p_psi (NextLat), the extra heads (MTP, d =
    ``cfg.horizon``) or None (GPT), seeded with ``cfg.seed + 1`` after the transformer, so
    the transformer starts identical under every objective. ``mcfg`` defaults to
    ``cfg.preset`` sized for the world (within the checkpoint bounds, so training never
    makes a model that loading would refuse). ``fused``: fused AdamW (one kernel per
    parameter group, and ``found_inf``: skipping a non-finite step on the device)."""
    if mcfg is None:
        mcfg = _fresh_model_config(cfg, world, seq_len)
    if cfg.objective in ("nextlat", "mtp") and cfg.horizon > seq_len - 1:
        # refused, not clamped: the roll-out would silently be shorter than asked
        raise UsageError(f"horizon {cfg.horizon} needs sequences of at least {cfg.horizon + 1} tokens (seq_len is {seq_len})")
    lambda_kl = default_lambda_kl(world) if cfg.lambda_kl is None else float(cfg.lambda_kl)
    ocfg = ObjectiveConfig(cfg.objective, cfg.horizon, float(cfg.lambda_h), lambda_kl)
    torch.manual_seed(cfg.seed)
    model = move(build_transformer(mcfg, seed=cfg.seed), device)
    aux: LatentDynamics | MTPHeads | None = None
    if cfg.objective == "nextlat":
        torch.manual_seed(cfg.seed + 1)
        aux = LatentDynamics(mcfg.d_model, d_hidden=mcfg.d_dynamics).to(device)
    elif cfg.objective == "mtp":
        torch.manual_seed(cfg.seed + 1)
        aux = MTPHeads(mcfg.d_model, cfg.horizon).to(device)
    # a frozen parameter (the zero position table of positional "none") is not optimised
    params = [p for p in list(model.parameters()) + (list(aux.parameters()) if aux is not None else []) if p.requires_grad]
    decay = [p for p in params if p.ndim >= 2]
    no_decay = [p for p in params if p.ndim < 2]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=cfg.lr,
        betas=(0.9, 0.95),
        fused=True if fused else None,  # None: torch's default (foreach), what every CPU run used
    )
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda(cfg))
    return mcfg, ocfg, model, aux, opt, sched


def _fresh_model_config(cfg: TrainConfig, world: World, seq_len: int) -> ModelConfig:
    """``cfg.preset`` sized for the world, within the checkpoint bounds."""
    n_ctx = cfg.n_ctx or default_n_ctx(world, seq_len)
    if n_ctx < seq_len:
        raise UsageError(f"n_ctx ({n_ctx}) is smaller than seq_len ({seq_len})")
    positional = cfg.positional or default_positional(world)
    try:
        mcfg = ModelConfig.from_preset(cfg.preset, n_ctx=n_ctx, d_vocab=world.vocab_size, positional=positional)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    problem = model_config_problem(mcfg)
    if problem:
        raise UsageError(problem)
    return mcfg


#: sequences per forward pass of ``evaluate_ce``
EVAL_BATCH = 256


def training_memory(cfg: TrainConfig, world: World, seq_len: int, mcfg: ModelConfig,
                    world_size: int = 1) -> dict[str, tuple[float, str]]:
    """Lower bounds of what one process of a run allocates, by what causes it: ``{"host":
    (bytes, cause), "device": (bytes, cause)}``. Host: the validation set (tokens and their
    exact next-token distributions, float64). Device: weights with their gradients and AdamW
    moments, and the larger of one training step on the process's share of the batch (the
    residual stream of every block kept for the backward pass, and the logits) and one
    evaluation batch (the hooked forward keeps an attention pattern of seq_len x seq_len per
    head)."""
    L, V, d = int(seq_len), int(mcfg.d_vocab), int(mcfg.d_model)
    from ..checkpoint import parameter_count

    val = cfg.n_val * L * (8 + 8 * V)
    weights = 16 * parameter_count(mcfg)
    step = cfg.batch_size // max(1, world_size) * L * (4 * d * mcfg.n_layers + 8 * V)
    n_eval = min(EVAL_BATCH, cfg.n_val)
    evaluation = n_eval * mcfg.n_heads * L * L * 4
    causes = {
        "val": f"n_val {cfg.n_val} validation sequences of {L} tokens",
        "step": f"batch_size {cfg.batch_size} x seq_len {L} (one training step)",
        "eval": f"seq_len {L} (attention over {L}x{L} positions, {n_eval} sequences per evaluation batch)",
    }
    worst = "step" if step >= evaluation else "eval"
    return {"host": (float(val), causes["val"]), "device": (float(weights + max(step, evaluation)), causes[worst])}


def check_training_memory(cfg: TrainConfig, world: World, seq_len: int, mcfg: ModelConfig, device: torch.device,
                          where: str | None = None, world_size: int = 1) -> None:
    """Refuse, in one line, a run whose options imply more memory than ``limits.memory_limit``
    (``training_memory``), before anything is allocated. ``where``: the checkpoint whose
    ``train_config`` the options come from (on resume)."""
    need = training_memory(cfg, world, seq_len, mcfg, world_size)
    (host, host_cause), (dev, dev_cause) = need["host"], need["device"]
    if device.type == "cpu":  # one memory: the sum must fit
        cause = host_cause if host >= dev else dev_cause
        problem = limits.memory_problem(host + dev, cause)
    else:
        problem = limits.memory_problem(host, host_cause) or limits.memory_problem(dev, dev_cause, device)
    if problem:
        raise UsageError(f"{where}: train_config {problem}" if where else problem)


def _restore(run: _Run, state: dict[str, Any]) -> None:
    """Weights, optimiser, schedule and torch RNG exactly as saved (bit-exact resume)."""
    p = state["_path"]
    why = "cannot resume: training state does not match"
    load_weights(run.model, state["model"], p, why)
    if run.dynamics is not None:
        load_weights(run.dynamics, state["dynamics"], p, why)
    if run.mtp_heads is not None:
        load_weights(run.mtp_heads, state["mtp_heads"], p, why)
    try:
        # this run's choice of fused AdamW, not the saved one (it moves the step counters too)
        fused = run.opt.param_groups[0].get("fused")
        saved = state["optimizer"]
        run.opt.load_state_dict({**saved, "param_groups": [{**g, "fused": fused} for g in saved["param_groups"]]})
        run.sched.load_state_dict(state["scheduler"])
        torch.set_rng_state(state["rng"]["torch"])
    except (RuntimeError, KeyError, TypeError, ValueError, IndexError, AttributeError) as exc:
        raise CheckpointError(p, f"cannot resume: training state does not match ({error_line(exc)[:160]})") from None
    problem = _optimizer_state_problem(run)
    if problem:
        raise CheckpointError(p, f"cannot resume: optimizer state {problem}")
    run.step = int(state["step"])
    run.metrics = dict(state.get("metrics") or {})
    run.last_good = (Path(p), run.step)


def _optimizer_state_problem(run: _Run) -> str | None:
    """Why the restored AdamW state cannot be stepped (a moment whose shape is not its
    parameter's, a non-float or non-finite one, an expanded view), or None; torch's
    ``load_state_dict`` checks none of this, and the first step would fail."""
    for i, param in enumerate(run.params()):
        st = run.opt.state.get(param, {})
        moments = {f"state.{i}.{k}": v for k, v in st.items() if torch.is_tensor(v) and v.dim() > 0}
        for k, v in moments.items():
            if tuple(v.shape) != tuple(param.shape):
                return f"{k} has shape {list(v.shape)}, its parameter {list(param.shape)}"
        problem = weights_problem(moments)
        if problem:
            return problem
    return None


def _identity(run: _Run) -> dict[str, Any]:
    return run_identity(run.world.spec(), run.cfg.objective, run.mcfg.to_dict(), run.cfg.seed)


def _claim_folder(run: _Run, out_dir: str | Path, state: dict[str, Any] | None, overwrite: bool) -> RunFolder:
    """``training.folder.prepare_run_folder``; in a multi-process run on rank 0 alone, whose
    answer (the folder, or its one-line refusal) every rank waits for."""
    d = run.dist
    resume_from = (state["_path"], int(state["step"])) if state is not None else None
    if not d.enabled:
        folder = prepare_run_folder(out_dir, _identity(run), resuming=state is not None, overwrite=overwrite,
                                    resume_from=resume_from)
        _report_leftovers(run, folder)
        return folder
    folder, error = None, None
    if d.is_main:
        try:
            folder = prepare_run_folder(out_dir, _identity(run), resuming=state is not None, overwrite=overwrite,
                                        resume_from=resume_from)
            _report_leftovers(run, folder)
        except Exception as exc:  # every rank stops, none waits forever
            error = exc
    refusal = d.broadcast_object(None if error is None else one_line(error))
    if error is not None:
        raise error
    if refusal is not None:
        raise UsageError(refusal)
    return folder if folder is not None else RunFolder(Path(out_dir))


def _report_leftovers(run: _Run, folder: RunFolder) -> None:
    """One warning line for temp files a killed save left (never deleted: see ``folder``)."""
    names = leftover_temp_files(folder.path)
    if names:
        shown = ", ".join(names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")
        _warn(run, f"{folder.path} holds {shown}, named like the temp file of a save that was killed; not removed "
                   "(delete it if no run is writing this folder)")


#: torch.compile modes ``train(compile=...)`` takes; "auto" picks one (``_compile_mode``)
COMPILE_MODES = ("auto", "default", "reduce-overhead", "max-autotune")
#: ``compile="auto"`` uses CUDA graphs (``reduce-overhead``) for steps of at most this many
#: tokens on one CUDA device: there a step's kernels are short and launching them (the host's
#: work) is what the device waits for; larger steps are bound by the device's arithmetic
CUDA_GRAPH_TOKENS = 16384


def _prepare_step(run: _Run, compile: bool | str = False) -> None:
    """What ``_train_step`` calls: the ``_Objective`` (its losses compiled if asked), under
    DDP in a multi-process run. On CUDA NextLat rolls out every start (``dense``): static
    shapes and no ``nonzero``, which would wait for the device in every step."""
    compiled = _compiled_losses(run, _compile_mode(run, compile)) if compile else None
    module = _Objective(run.model, run.aux, run.ocfg, last_resid_hook(run.mcfg), run.cfg.fast_forward,
                        dense=run.device.type == "cuda", compiled=compiled)
    run.step_module = run.dist.wrap(module)


def _compile_mode(run: _Run, requested: bool | str) -> str:
    mode = "auto" if requested is True else str(requested)
    if mode not in COMPILE_MODES:
        raise UsageError(f"compile mode must be one of {', '.join(COMPILE_MODES)}, got {requested!r}")
    if mode != "auto":
        return mode
    small = run.cfg.batch_size * run.seq_len <= CUDA_GRAPH_TOKENS
    return "reduce-overhead" if run.device.type == "cuda" and small and not run.dist.enabled else "default"


def _warn(run: _Run, text: str) -> None:
    if run.dist.is_main:
        print(f"warning: {text}", file=sys.stderr, flush=True)


class _FallbackForward:
    """A compiled function that falls back to the eager one (once, with a one-line
    warning) if compiling or running it fails."""

    def __init__(self, compiled, eager, on_failure):
        self.compiled, self.eager, self.on_failure = compiled, eager, on_failure

    def __call__(self, *args):
        if self.compiled is not None:
            try:
                return self.compiled(*args)
            except Exception as exc:  # torch.compile reports its failures at the first call
                self.compiled = None
                self.on_failure(exc)
        return self.eager(*args)


def _compiled_losses(run: _Run, mode: str):
    """``torch.compile`` of a step's forward pass and losses (``compute_losses`` on a
    ``fastpath.FastModel`` of the model: one graph, no graph breaks, NextLat's dense
    roll-out; static shapes, so one compilation serves every step), or None (with a
    one-line warning) where the hook-free forward does not apply. Autocast is the caller's
    (``_Run.autocast``), traced into the graph like any other state."""
    from ..models import fastpath

    if not (run.cfg.fast_forward and fastpath.supports(run.model)):
        _warn(run, "compile applies to the hook-free forward, which this model does not use; training uncompiled")
        return None
    fast_model = fastpath.FastModel(run.model)
    aux, ocfg, hook = run.aux, run.ocfg, last_resid_hook(run.mcfg)
    dense = run.device.type == "cuda"

    def losses(batch: Batch) -> dict[str, torch.Tensor]:
        return compute_losses(fast_model, aux, batch, ocfg, hook, dense=True)

    def eager(batch: Batch) -> dict[str, torch.Tensor]:
        return compute_losses(run.model, aux, batch, ocfg, hook, fast=run.cfg.fast_forward, dense=dense)

    try:
        compiled = torch.compile(losses, fullgraph=True, dynamic=False, mode=None if mode == "default" else mode)
    except Exception as exc:
        _warn(run, f"torch.compile is not available ({one_line(exc)[:160]}); training uncompiled")
        return None

    def failed(exc: BaseException) -> None:
        run.compiled = False
        _warn(run, f"torch.compile failed ({one_line(exc)[:160]}); training uncompiled")

    run.compiled, run.compile_mode = True, mode
    return _FallbackForward(compiled, eager, failed)


@contextlib.contextmanager
def _matmul_precision(device: torch.device, precision: str):
    """torch's float32 matmul precision (``highest``: IEEE float32; ``high``: TF32) while
    inside, on CUDA only (elsewhere nothing changes); the previous setting after."""
    if device.type != "cuda":
        yield
        return
    before = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision(precision)
    try:
        yield
    finally:
        torch.set_float32_matmul_precision(before)


@contextlib.contextmanager
def _fp32_matmuls(run: _Run):
    """Training's float32 matmuls in TF32 on CUDA (``TrainConfig.tf32``): 8x the float32
    peak on an A100/H100, with 10-bit mantissas in the products (the sums stay float32)."""
    run.tf32 = run.device.type == "cuda" and bool(run.cfg.tf32)
    with _matmul_precision(run.device, "high" if run.tf32 else "highest"):
        yield


def _check_interval(cfg: TrainConfig, device: torch.device, requested: int | None) -> int:
    """Steps between reads of the finiteness flag (``train(check_every=...)``)."""
    if requested is not None:
        if int(requested) < 1:
            raise UsageError(f"check_every must be >= 1, got {requested}")
        return int(requested)
    return _log_every(cfg) if device.type == "cuda" else 1


def _log_every(cfg: TrainConfig) -> int:
    return max(1, min(10, cfg.eval_every))


class _FiniteGuard:
    """The first non-finite step of a run, recorded on the device (no step waits to know):
    ``record`` returns the step's ``found_inf`` flag, with which fused AdamW skips the
    update on the device; ``check`` (a synchronisation) raises ``TrainingDiverged`` naming
    the first bad step, if there was one."""

    def __init__(self, device: torch.device) -> None:
        self.step = torch.full((), -1, dtype=torch.int64, device=device)
        self.loss = torch.zeros((), dtype=torch.float32, device=device)
        self.gnorm = torch.zeros((), dtype=torch.float32, device=device)

    def record(self, step: int, loss: torch.Tensor, gnorm: torch.Tensor) -> torch.Tensor:
        bad = ~(torch.isfinite(loss.detach()) & torch.isfinite(gnorm))
        first = bad & (self.step < 0)
        self.step = torch.where(first, step, self.step)
        self.loss = torch.where(first, loss.detach().float(), self.loss)
        self.gnorm = torch.where(first, gnorm.float(), self.gnorm)
        return bad.float()

    def check(self, run: _Run, now: int) -> None:
        step = int(self.step)
        if step < 0:
            return
        loss, gnorm = float(self.loss), float(self.gnorm)
        what = f"loss became {loss}" if not math.isfinite(loss) else f"gradient norm became {gnorm}"
        raise TrainingDiverged(f"{what} at step {step}; its update was skipped and training stopped at step {now} "
                               f"({run.last_good_text()})")


class _NoLog:
    """The metrics log of ranks other than 0: they write nothing."""

    def write(self, rec: dict[str, Any]) -> None:
        pass

    def close(self, failed: bool = False) -> None:
        pass


def _runtime(run: _Run) -> dict[str, Any]:
    """How this run is being executed (recorded next to its config; not part of its identity):
    processes, precision, TF32, compilation, how often finiteness is read, and where the
    batches come from (``sampler_used``; the device sampler's chunk and device kind, or the
    dataset's identity)."""
    out = {"world_size": run.dist.world_size, "precision_used": run.precision, "tf32_used": run.tf32,
           "compile": run.compiled, "finite_check_every": run.check_every}
    if run.compiled:
        out["compile_mode"] = run.compile_mode
    if run.source is not None:
        out.update(run.source.settings())
    return out


def _open_log(run: _Run, folder: RunFolder, state: dict[str, Any] | None, tracking=(),
              group: str | None = None) -> MetricsLog | _NoLog:
    """The metrics log: a fresh one (with the step-0 evaluation), or on resume the existing
    one truncated back to the checkpoint's step, so no step is logged twice. Ranks other
    than 0 get a log that writes nothing (they still take part in the evaluation).
    ``tracking``: trackers fed with the log's rows (``training.tracking``); on resume they
    first get the rows the truncated log holds."""
    if not run.dist.is_main:
        log = _NoLog()
        if state is None:
            _evaluate(run, log, 0)
        return log
    log = MetricsLog(folder.metrics)
    start = {"event": "start", "config": run.cfg.to_dict(), "model_config": run.mcfg.to_dict(),
             "objective_config": run.ocfg.to_dict(), "world": run.world.spec().get("kind"), **_runtime(run)}
    continuing = state is not None and folder.metrics.is_file()
    if continuing:
        truncate_metrics(folder.metrics, run.step)
    if tracking:
        from .tracking import open_views

        log.views = open_views(tracking, folder.path, start=start, group=group,
                               history=read_metrics(folder.metrics) if continuing else ())
    if state is None:
        log.write(start)
        _evaluate(run, log, 0)
    elif continuing:
        log.write({"event": "resume", "step": run.step, "from": state["_path"], **_runtime(run)})
    else:  # resumed into a new folder: its log starts here
        log.write({**start, "resumed_from": state["_path"], "resumed_at": run.step})
    return log


class BatchPrefetcher:
    """The token batches of steps ``first..last`` drawn ahead in a daemon thread, at most
    ``depth`` waiting. On CUDA the device runs a step while this thread samples the next
    (the per-step finiteness checks synchronise, so without it the device idles while the
    CPU samples). Batches are ``sample(step)``, a function of the step alone, so the order
    of drawing cannot change them; an error in the thread is raised by ``get``."""

    def __init__(self, sample: Callable[[int], np.ndarray], first: int, last: int, depth: int = 2) -> None:
        import queue
        import threading

        self._queue: Any = queue.Queue(maxsize=max(1, int(depth)))
        self._stop = threading.Event()

        def work() -> None:
            for step in range(first, last + 1):
                try:
                    item: Any = sample(step)
                except BaseException as exc:  # handed to the training thread
                    item = exc
                while not self._stop.is_set():
                    try:
                        self._queue.put((step, item), timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if self._stop.is_set() or isinstance(item, BaseException):
                    return

        self._thread = threading.Thread(target=work, name="batch-prefetch", daemon=True)
        self._thread.start()

    def get(self, step: int) -> np.ndarray:
        got, item = self._queue.get()
        if isinstance(item, BaseException):
            raise item
        if got != step:  # steps are drawn in order: anything else is a bug, not bad input
            raise RuntimeError(f"batch prefetch: expected the batch of step {step}, got step {got}")
        return item

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)


def _out_of_time(run: _Run, limit: TimeLimit | None, step: int, step_seconds: list[float]) -> bool:
    """Whether ``step`` and then stopping (an evaluation and a checkpoint write) would not
    fit in what is left of ``limit`` (rank 0 decides, every rank follows)."""
    if limit is None:
        return False
    stop = None
    if run.dist.is_main:
        cfg = run.cfg
        finish = run.cost.get("evaluate", 0.0) + run.cost.get("save", 0.0)
        need = max(step_seconds[-20:], default=0.0) + finish
        if step % cfg.eval_every == 0 or step % cfg.save_every == 0 or (cfg.keep_every and step % cfg.keep_every == 0):
            need += finish  # the step's own evaluation and save
        stop = need > limit.left()
    return bool(run.dist.broadcast_object(stop) if run.dist.enabled else stop)


def _loop(run: _Run, folder: RunFolder, log: MetricsLog, stop_at: int | None, progress: bool,
          prefetch: bool = False, time_limit: TimeLimit | None = None) -> bool:
    """Train from ``run.step`` to ``stop_at`` (or the end); True when ``time_limit`` stopped
    it first (with a checkpoint of the step reached)."""
    from ..progress import progress as progress_bar

    cfg = run.cfg
    last = cfg.steps if stop_at is None else min(cfg.steps, int(stop_at))
    log_every = _log_every(cfg)
    start = run.step
    bar = progress_bar(total=cfg.steps, initial=start, disable=not progress or not run.dist.is_main,
                       desc=f"{cfg.objective} {cfg.world}", dynamic_ncols=True)
    timer = [time.perf_counter(), 0]  # [time of the last train record, tokens since]
    shown: dict[str, float] = {}  # the last train record, shown with the latest evaluation
    run.model.train()
    ahead = BatchPrefetcher(run.source.tokens, start + 1, last) if prefetch and last > start else None
    step_seconds: list[float] = []
    stopped = False
    try:
        for step in range(start + 1, last + 1):
            if _out_of_time(run, time_limit, step, step_seconds):
                stopped = True
                break
            t_step = time.perf_counter()
            tokens = ahead.get(step) if ahead is not None else None
            losses, gnorm, n_tokens = _train_step(run, step, tokens)
            step_seconds.append(time.perf_counter() - t_step)
            run.step = step
            timer[1] += n_tokens
            logs = step % log_every == 0 or step == cfg.steps
            keep = bool(cfg.keep_every) and step % cfg.keep_every == 0
            save = step % cfg.save_every == 0 or step == last
            evaluate = step % cfg.eval_every == 0 or save or keep
            if run.guard is not None and (logs or evaluate or step % run.check_every == 0):
                run.guard.check(run, step)  # nothing non-finite is logged, evaluated or saved
            if logs:
                shown = _log_step(run, log, losses, gnorm, timer, bar)
            bar.update(1)
            # every checkpoint carries the validation loss of its own weights
            if evaluate:
                _evaluate(run, log, step)
                if shown:  # the bar (and a log's "done" line) shows this evaluation, not the one before
                    _show(run, bar, shown)
            if save:
                _save(run, folder.checkpoint, step)
            if keep:
                _save(run, folder.kept(step), step)
    finally:
        if ahead is not None:
            ahead.close()
        bar.close()
    exists = run.dist.broadcast_object(folder.checkpoint.exists() if run.dist.is_main else None)
    saved_here = run.last_good is not None and run.last_good[1] == run.step and exists
    if (run.step == start and not exists) or (stopped and not saved_here):  # the step reached gets its checkpoint
        if run.metrics.get("step") != run.step:
            _evaluate(run, log, run.step)
        _save(run, folder.checkpoint, run.step)
    if stopped and run.dist.is_main:
        log.write({"event": "time_limit", "at_step": run.step, "total_steps": cfg.steps})
    return stopped


def _train_step(run: _Run, step: int, tokens: Any = None) -> tuple[dict[str, torch.Tensor], torch.Tensor, int]:
    """One optimiser step on the batch of ``step`` (``tokens``: drawn ahead, or None):
    ``_next_batch``, ``_losses``, ``_backward``, ``_update``. Returns the (global) losses,
    the gradient norm and the tokens of the global batch.

    A NaN/inf loss or gradient never reaches the weights: with ``check_every`` 1 the step
    stops before its update (``TrainingDiverged``); otherwise the update is skipped on the
    device and ``_FiniteGuard.check`` reports it. In a multi-process run every rank draws
    the same global batch and scores its own rows (``shard``); the losses are the global
    ones (all-reduced) and both checks read values that are identical on every rank, so all
    ranks stop together."""
    if run.step_module is None:
        _prepare_step(run, compile=False)
    batch, n_tokens = _next_batch(run, step, tokens)
    losses, total = _losses(run, batch)
    gnorm = _backward(run, step, losses, total)
    _update(run, step, total, gnorm)
    return total, gnorm, n_tokens


def _next_batch(run: _Run, step: int, tokens: Any = None) -> tuple[Batch, int]:
    """This rank's rows of the batch of ``step`` on the device, and the global batch's
    number of tokens."""
    if tokens is None:
        tokens = run.source.tokens(step)
    batch = run.source.batch(tokens)
    if run.dist.enabled:
        batch = shard(batch, run.ocfg, run.dist.rank, run.dist.world_size)
    return batch, int(tokens.numel() if torch.is_tensor(tokens) else np.asarray(tokens).size)


def _losses(run: _Run, batch: Batch) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """The forward pass and losses: (this rank's losses, the global ones)."""
    with run.autocast():
        losses = run.step_module(batch)
    return losses, run.dist.sum_losses(losses)  # the global losses (this very dict in a single process)


def _backward(run: _Run, step: int, losses: dict[str, torch.Tensor], total: dict[str, torch.Tensor]) -> torch.Tensor:
    """The gradients, clipped; returns their norm (before clipping)."""
    d = run.dist
    if run.guard is None and not torch.isfinite(total["loss"]):
        raise TrainingDiverged(f"loss became {float(total['loss'].detach())} at step {step}; stopped ({run.last_good_text()})")
    run.opt.zero_grad(set_to_none=True)
    # DDP AVERAGES gradients over the ranks, and each partial loss is its rank's share of
    # the global mean: scaled by the world size, the synced gradient is the global batch's
    (losses["loss"] * d.world_size if d.enabled else losses["loss"]).backward()
    # the norm is always computed: a finite loss can still give an inf/NaN gradient,
    # which must stop training BEFORE the optimiser writes it into the weights
    clip = run.cfg.grad_clip if run.cfg.grad_clip > 0 else float("inf")
    return torch.nn.utils.clip_grad_norm_(run.params(), clip)


def _update(run: _Run, step: int, total: dict[str, torch.Tensor], gnorm: torch.Tensor) -> None:
    """The optimiser and schedule step, unless the loss or the gradient is not finite."""
    if run.guard is not None:  # decided on the device: fused AdamW skips a flagged step
        run.opt.found_inf = run.guard.record(step, total["loss"], gnorm)
    elif not torch.isfinite(gnorm):
        raise TrainingDiverged(f"gradient norm became {float(gnorm)} at step {step}; stopped before the update ({run.last_good_text()})")
    run.opt.step()
    run.sched.step()
    # the gradients are dropped at once, not at the next step's backward: with CUDA graphs
    # (compile's reduce-overhead) they live in the graphs' memory, which the next forward reuses
    run.opt.zero_grad(set_to_none=True)


def _log_step(run: _Run, log: MetricsLog, losses: dict[str, torch.Tensor], gnorm: torch.Tensor, timer: list,
              bar) -> dict[str, float]:
    now = time.perf_counter()
    rec = {k: float(v.detach()) for k, v in losses.items()}
    rec.update(step=run.step, lr=run.sched.get_last_lr()[0], grad_norm=float(gnorm), tokens_per_s=timer[1] / max(now - timer[0], 1e-9))
    log.write(rec)
    timer[:] = [now, 0]
    _show(run, bar, rec)
    return rec


def _show(run: _Run, bar, rec: dict[str, float]) -> None:
    """The bar's numbers: the last train record's losses and the latest validation loss
    (with the step it was measured at when that is not the bar's step)."""
    at = run.metrics.get("step")
    val = f"{run.metrics.get('val_loss', float('nan')):.4f}" + ("" if at == run.step else f" (step {at})")
    bar.set_postfix(loss=f"{rec['loss']:.4f}", ce=f"{rec['ce']:.4f}", val=val)


def _evaluate(run: _Run, log: MetricsLog | _NoLog, step: int) -> None:
    """The validation loss of the current weights: computed by rank 0 (in float32, whatever
    the training precision or TF32) and broadcast, so every rank decides the same about saving."""
    t0 = time.perf_counter()
    vl = float("nan")
    if run.dist.is_main:
        with _matmul_precision(run.device, "highest"):
            vl = evaluate_ce(run.model, run.world, run.val_tokens)
    run.cost["evaluate"] = time.perf_counter() - t0
    if run.dist.enabled:
        vl, run.val_floor = run.dist.broadcast_floats([vl, run.val_floor])
    run.metrics = {"step": step, "val_loss": vl, "val_floor": run.val_floor, "gap_to_floor": vl - run.val_floor}
    log.write(dict(run.metrics))


def _save(run: _Run, path: Path, step: int) -> None:
    """Write a checkpoint of the current state — only if it is good: its own evaluation
    (this step's) is finite and every weight is finite. Otherwise stop, writing nothing.
    Every rank checks (their weights are the same); rank 0 alone writes."""
    if run.guard is not None:
        run.guard.check(run, step)
    vl = run.metrics.get("val_loss", float("nan"))
    if run.metrics.get("step") != step or not math.isfinite(float(vl)):
        raise TrainingDiverged(f"validation loss is {vl} at step {step}; not writing {path} ({run.last_good_text()})")
    aux = {"nextlat": "p_psi.", "mtp": "mtp."}.get(run.ocfg.objective, "")
    modules = [("", run.model)] + ([(aux, run.aux)] if run.aux is not None else [])
    for prefix, module in modules:
        for name, w in module.named_parameters():
            if not torch.isfinite(w).all():
                raise TrainingDiverged(f"weight {prefix}{name} is not finite at step {step}; not writing {path} ({run.last_good_text()})")
    if run.dist.is_main:
        t0 = time.perf_counter()
        save_checkpoint(_payload(run, step), path)
        run.cost["save"] = time.perf_counter() - t0
    if path.name == "ckpt.pt":
        run.last_good = (path, step)


def _payload(run: _Run, step: int) -> dict[str, Any]:
    def cpu(sd):
        return {k: v.detach().cpu() if torch.is_tensor(v) else v for k, v in sd.items()}

    return plain(
        {
            "package_version": __version__,
            "objective": run.ocfg.objective,
            "model_config": run.mcfg.to_dict(),
            "objective_config": run.ocfg.to_dict(),
            "world_spec": run.world.spec(),
            "train_config": {**run.cfg.to_dict(), **_runtime(run)},
            "step": int(step),
            "model": cpu(run.model.state_dict()),
            "dynamics": cpu(run.dynamics.state_dict()) if run.dynamics is not None else None,
            "dynamics_config": run.dynamics.config() if run.dynamics is not None else None,
            "mtp_heads": cpu(run.mtp_heads.state_dict()) if run.mtp_heads is not None else None,
            "mtp_config": run.mtp_heads.config() if run.mtp_heads is not None else None,
            "optimizer": run.opt.state_dict(),
            "scheduler": run.sched.state_dict(),
            "rng": {"torch": torch.get_rng_state()},
            "metrics": dict(run.metrics),
        }
    )


def identity_of(path: str | Path) -> dict[str, Any]:
    """The run identity (world spec, objective, model config, seed) of a checkpoint file."""
    return identity_of_checkpoint(read_checkpoint(path))
