"""The training loop, shared line for line by GPT, NextLat and MTP.

``train`` is a short list of named steps: ``_configure``, ``_new_run`` (``_build``) and
``_restore``, claim the run folder (``training.folder``), ``_open_log``, then ``_loop``:
per step ``_train_step`` / ``_log_step`` / ``_evaluate`` / ``_save``.

Data is streamed from the world's sampler: the batch for step ``s`` is drawn with the seed
``(seed, 0, s)``, so a resumed run sees exactly the batches the uninterrupted run would have
seen, with no sampler state to save. The validation set is drawn once with ``(seed, 1)``
and never overlaps the training stream's seeds.

A checkpoint is only ever written with finite weights and the validation loss of THOSE
weights (every save evaluates first), so "the last good checkpoint" is good. Which files
of a run folder training may touch is decided by ``training.folder``.

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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from .. import __version__
from ..checkpoint import (
    CheckpointError,
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
from ..worlds import World, make_world
from . import distributed
from .config import TrainConfig
from .distributed import Dist
from .folder import RunFolder, identity_of_checkpoint, prepare_run_folder, run_identity
from .log import MetricsLog, truncate_metrics


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


def batch_rng(seed: int, step: int) -> np.random.Generator:
    return np.random.default_rng([int(seed), 0, int(step)])


def val_rng(seed: int) -> np.random.Generator:
    return np.random.default_rng([int(seed), 1])


def lr_lambda(cfg: TrainConfig) -> Callable[[int], float]:
    """Linear warm-up, then cosine decay to ``min_lr_ratio`` of the peak at ``steps``."""

    def f(step: int) -> float:
        if cfg.warmup_steps and step < cfg.warmup_steps:
            return (step + 1) / cfg.warmup_steps
        span = max(1, cfg.steps - cfg.warmup_steps)
        progress = min(1.0, (step - cfg.warmup_steps) / span)
        return cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    return f


def _to_device(a: np.ndarray, device: torch.device) -> torch.Tensor:
    """A numpy array on ``device`` (on CUDA through pinned memory, without blocking)."""
    if device.type == "cuda":
        return torch.from_numpy(np.ascontiguousarray(a)).pin_memory().to(device, non_blocking=True)
    return torch.as_tensor(a, device=device)


def to_batch(world: World, tokens: np.ndarray, device: torch.device) -> Batch:
    """Tokens and the world's per-position targets (``World.output_targets``) as tensors."""
    targets, scored = world.output_targets(tokens)

    def dev(a: np.ndarray) -> torch.Tensor:
        return _to_device(a, device)

    return Batch(dev(np.asarray(tokens, dtype=np.int64)), dev(targets), dev(scored), dev(world.position_mask(tokens)))


def shard_batch(world: World, tokens: np.ndarray, device: torch.device, ocfg: ObjectiveConfig, rank: int,
                world_size: int) -> Batch:
    """Rank ``rank``'s rows of the GLOBAL batch ``tokens`` (equal contiguous blocks), with
    the global batch's counts as every loss's denominator (``loss_denominators``): the sum
    over ranks of their partial losses is the global batch's loss. Only the rank's rows are
    moved to the device; the counts come from the whole batch in numpy."""
    tokens = np.asarray(tokens, dtype=np.int64)
    if len(tokens) % world_size:
        raise UsageError(f"a batch of {len(tokens)} sequences does not split evenly over {world_size} processes")
    targets, scored = world.output_targets(tokens)
    valid = world.position_mask(tokens)
    n = len(tokens) // world_size
    rows = slice(rank * n, (rank + 1) * n)
    return Batch(*(_to_device(a[rows], device) for a in (tokens, targets, scored, valid)),
                 **loss_denominators(scored, valid, ocfg))


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
    compiled: bool = False  # the transformer forward of training is torch.compile'd

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
    transformer's. State dicts are always taken from ``model`` / ``aux`` themselves."""

    def __init__(self, model, aux, ocfg: ObjectiveConfig, last_hook: str, fast: bool, forward=None):
        super().__init__()
        self.model = model
        self.aux = aux
        self.ocfg, self.last_hook, self.fast, self.forward_fn = ocfg, last_hook, fast, forward

    def forward(self, batch: Batch) -> dict[str, torch.Tensor]:
        kw = {"fast": self.fast} if self.forward_fn is None else {"fast": self.fast, "forward": self.forward_fn}
        return compute_losses(self.model, self.aux, batch, self.ocfg, self.last_hook, **kw)


def train(
    cfg: TrainConfig | None = None,
    out_dir: str | Path = "runs/run",
    resume: str | Path | None = None,
    world: World | None = None,
    progress: bool = True,
    extra_steps: int | None = None,
    stop_at: int | None = None,
    overwrite: bool = False,
    compile: bool = False,
    prefetch: bool | None = None,
) -> TrainResult:
    """Train (or resume) a model; writes ``out_dir/ckpt.pt``, ``out_dir/metrics.jsonl`` and
    ``out_dir/run.json`` (the run's identity; see ``training.folder`` for what a run may
    write over: nothing of another run unless ``overwrite``, which moves it aside first).

    ``resume``: continue exactly from that checkpoint (its configs win over ``cfg``, except
    ``steps``, which may be raised via ``cfg.steps`` or ``extra_steps``, and the device).
    ``stop_at``: stop (with a checkpoint) after this step, as an interrupted run would; the
    learning-rate schedule still follows ``cfg.steps``, so resuming continues exactly.
    ``compile``: ``torch.compile`` the transformer forward of training (the hook-free one;
    falls back to it uncompiled, with a one-line warning, if compilation fails).
    ``prefetch``: draw the next batches in a background thread while the device works on
    this one (``BatchPrefetcher``; None: on CUDA only). Every step's batch is a function of
    (seed, step) alone, so the run is the same with or without it.

    Under ``torchrun`` (``WORLD_SIZE`` > 1, or a process group already initialised) every
    process calls this: ``cfg.batch_size`` is the global batch, split over the processes;
    rank 0 writes the folder; a resume needs the checkpoint's number of processes.
    """
    state = _read_resume(resume) if resume is not None else None
    cfg, world = _configure(cfg, world, state, extra_steps)
    with distributed.session(cfg.device) as dist:
        run: _Run | None = None
        folder: RunFolder | None = None
        try:
            _check_launch(cfg, state, dist)
            precision = resolve_precision(cfg.precision, dist.device)
            run = _new_run(cfg, world, state, dist)
            run.precision = precision
            if state is not None:
                _restore(run, state)
            folder = _claim_folder(run, out_dir, state, overwrite)
            _prepare_step(run, compile)
            log = _open_log(run, folder, state)
            use_prefetch = run.device.type == "cuda" if prefetch is None else bool(prefetch)
            _loop(run, folder, log, stop_at, progress, prefetch=use_prefetch)
            dist.barrier()  # every rank returns after rank 0 wrote the last checkpoint
        except BaseException as exc:
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
                       run.mcfg, run.ocfg)


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


def _configure(cfg: TrainConfig | None, world: World | None, state: dict[str, Any] | None, extra_steps: int | None) -> tuple[TrainConfig, World]:
    """The run's TrainConfig and world: the stored ones on resume (``steps`` may grow)."""
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
        return saved, world_of(state)
    cfg = cfg if cfg is not None else TrainConfig()
    return cfg, world if world is not None else make_world(cfg.world, **cfg.world_options)


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


def _new_run(cfg: TrainConfig, world: World, state: dict[str, Any] | None = None, dist: Dist | None = None) -> _Run:
    """The run's modules (``_build``) on its device, and its validation set (rank 0 only:
    the others never evaluate). On resume the model config is the checkpoint's own
    (already validated against its weights)."""
    dist = dist if dist is not None else Dist(device=distributed.device_for(cfg.device, 1, 0))
    device = dist.device
    seq_len = cfg.seq_len or default_seq_len(world)
    mcfg = None
    if state is not None:
        mcfg = ModelConfig.from_dict(state["model_config"])
        if mcfg.n_ctx < seq_len:
            raise CheckpointError(state["_path"], f"model_config.n_ctx ({mcfg.n_ctx}) is smaller than the run's seq_len ({seq_len})")
    run = _Run(cfg, world, seq_len, device, *_build(cfg, world, seq_len, device, mcfg), dist=dist)
    if dist.is_main:
        run.val_tokens = world.sample(cfg.n_val, seq_len, seed=val_rng(cfg.seed)).tokens
        run.val_floor = float(world.exact_cross_entropy(run.val_tokens))
    return run


def _build(cfg: TrainConfig, world: World, seq_len: int, device: torch.device, mcfg: ModelConfig | None = None):
    """(mcfg, ocfg, model, aux, optimiser, schedule), freshly initialised from ``cfg.seed``;
    ``aux`` is the objective's own module: p_psi (NextLat), the extra heads (MTP, d =
    ``cfg.horizon``) or None (GPT), seeded with ``cfg.seed + 1`` after the transformer, so
    the transformer starts identical under every objective. ``mcfg`` defaults to
    ``cfg.preset`` sized for the world (within the checkpoint bounds, so training never
    makes a model that loading would refuse)."""
    if mcfg is None:
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
    )
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda(cfg))
    return mcfg, ocfg, model, aux, opt, sched


def _restore(run: _Run, state: dict[str, Any]) -> None:
    """Weights, optimiser, schedule and torch RNG exactly as saved (bit-exact resume)."""
    p = state["_path"]
    try:
        run.model.load_state_dict(state["model"])
        if run.dynamics is not None:
            run.dynamics.load_state_dict(state["dynamics"])
        if run.mtp_heads is not None:
            run.mtp_heads.load_state_dict(state["mtp_heads"])
        run.opt.load_state_dict(state["optimizer"])
        run.sched.load_state_dict(state["scheduler"])
        torch.set_rng_state(state["rng"]["torch"])
    except (RuntimeError, KeyError, TypeError, ValueError, IndexError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(p, f"cannot resume: training state does not match ({first[:160]})") from None
    run.step = int(state["step"])
    run.metrics = dict(state.get("metrics") or {})
    run.last_good = (Path(p), run.step)


def _identity(run: _Run) -> dict[str, Any]:
    return run_identity(run.world.spec(), run.cfg.objective, run.mcfg.to_dict(), run.cfg.seed)


def _claim_folder(run: _Run, out_dir: str | Path, state: dict[str, Any] | None, overwrite: bool) -> RunFolder:
    """``training.folder.prepare_run_folder``; in a multi-process run on rank 0 alone, whose
    answer (the folder, or its one-line refusal) every rank waits for."""
    d = run.dist
    if not d.enabled:
        return prepare_run_folder(out_dir, _identity(run), resuming=state is not None, overwrite=overwrite)
    folder, error = None, None
    if d.is_main:
        try:
            folder = prepare_run_folder(out_dir, _identity(run), resuming=state is not None, overwrite=overwrite)
        except Exception as exc:  # every rank stops, none waits forever
            error = exc
    refusal = d.broadcast_object(None if error is None else one_line(error))
    if error is not None:
        raise error
    if refusal is not None:
        raise UsageError(refusal)
    return folder if folder is not None else RunFolder(Path(out_dir))


def _prepare_step(run: _Run, compile: bool) -> None:
    """What ``_train_step`` calls: the ``_Objective`` (the transformer forward compiled if
    asked), under DDP in a multi-process run."""
    forward = _compiled_forward(run) if compile else None
    module = _Objective(run.model, run.aux, run.ocfg, last_resid_hook(run.mcfg), run.cfg.fast_forward, forward)
    run.step_module = run.dist.wrap(module)


def _warn(run: _Run, text: str) -> None:
    if run.dist.is_main:
        print(f"warning: {text}", file=sys.stderr, flush=True)


class _FallbackForward:
    """A compiled forward that falls back to the eager one (once, with a one-line
    warning) if compiling or running it fails."""

    def __init__(self, compiled, eager, on_failure):
        self.compiled, self.eager, self.on_failure = compiled, eager, on_failure

    def __call__(self, model, tokens):
        if self.compiled is not None:
            try:
                return self.compiled(model, tokens)
            except Exception as exc:  # torch.compile reports its failures at the first call
                self.compiled = None
                self.on_failure(exc)
        return self.eager(model, tokens)


def _compiled_forward(run: _Run):
    """``torch.compile`` of the hook-free forward (``models.fastpath``) training uses, or
    None (with a one-line warning) where that forward does not apply."""
    from ..models import fastpath

    if not (run.cfg.fast_forward and fastpath.supports(run.model)):
        _warn(run, "compile applies to the hook-free forward, which this model does not use; training uncompiled")
        return None
    try:
        compiled = torch.compile(fastpath.forward)
    except Exception as exc:
        _warn(run, f"torch.compile is not available ({one_line(exc)[:160]}); training uncompiled")
        return None

    def failed(exc: BaseException) -> None:
        run.compiled = False
        _warn(run, f"torch.compile failed ({one_line(exc)[:160]}); training uncompiled")

    run.compiled = True
    return _FallbackForward(compiled, fastpath.forward, failed)


class _NoLog:
    """The metrics log of ranks other than 0: they write nothing."""

    def write(self, rec: dict[str, Any]) -> None:
        pass


def _runtime(run: _Run) -> dict[str, Any]:
    """How this run is being executed (recorded next to its config; not part of its identity)."""
    return {"world_size": run.dist.world_size, "precision_used": run.precision, "compile": run.compiled}


def _open_log(run: _Run, folder: RunFolder, state: dict[str, Any] | None) -> MetricsLog | _NoLog:
    """The metrics log: a fresh one (with the step-0 evaluation), or on resume the existing
    one truncated back to the checkpoint's step, so no step is logged twice. Ranks other
    than 0 get a log that writes nothing (they still take part in the evaluation)."""
    if not run.dist.is_main:
        log = _NoLog()
        if state is None:
            _evaluate(run, log, 0)
        return log
    log = MetricsLog(folder.metrics)
    start = {"event": "start", "config": run.cfg.to_dict(), "model_config": run.mcfg.to_dict(),
             "objective_config": run.ocfg.to_dict(), "world": run.world.spec().get("kind"), **_runtime(run)}
    if state is None:
        log.write(start)
        _evaluate(run, log, 0)
    elif folder.metrics.is_file():
        truncate_metrics(folder.metrics, run.step)
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


def _sample_tokens(run: _Run, step: int) -> np.ndarray:
    """The global batch of ``step`` (the same on every rank and with or without prefetch)."""
    return run.world.sample(run.cfg.batch_size, run.seq_len, seed=batch_rng(run.cfg.seed, step)).tokens


def _loop(run: _Run, folder: RunFolder, log: MetricsLog, stop_at: int | None, progress: bool,
          prefetch: bool = False) -> None:
    from ..progress import progress as progress_bar

    cfg = run.cfg
    last = cfg.steps if stop_at is None else min(cfg.steps, int(stop_at))
    log_every = max(1, min(10, cfg.eval_every))
    start = run.step
    bar = progress_bar(total=cfg.steps, initial=start, disable=not progress or not run.dist.is_main,
                       desc=f"{cfg.objective} {cfg.world}", dynamic_ncols=True)
    timer = [time.perf_counter(), 0]  # [time of the last train record, tokens since]
    shown: dict[str, float] = {}  # the last train record, shown with the latest evaluation
    run.model.train()
    ahead = BatchPrefetcher(lambda s: _sample_tokens(run, s), start + 1, last) if prefetch and last > start else None
    try:
        for step in range(start + 1, last + 1):
            tokens = ahead.get(step) if ahead is not None else None
            losses, gnorm, n_tokens = _train_step(run, step, tokens)
            run.step = step
            timer[1] += n_tokens
            if step % log_every == 0 or step == cfg.steps:
                shown = _log_step(run, log, losses, gnorm, timer, bar)
            bar.update(1)
            keep = bool(cfg.keep_every) and step % cfg.keep_every == 0
            save = step % cfg.save_every == 0 or step == last
            # every checkpoint carries the validation loss of its own weights
            if step % cfg.eval_every == 0 or save or keep:
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
    if run.step == start and not exists:  # nothing to do: make sure one exists
        if run.metrics.get("step") != run.step:
            _evaluate(run, log, run.step)
        _save(run, folder.checkpoint, run.step)


def _train_step(run: _Run, step: int, tokens: np.ndarray | None = None) -> tuple[dict[str, torch.Tensor], torch.Tensor, int]:
    """One optimiser step on the batch of ``step``; stops before the update on a NaN/inf
    loss or gradient, so the weights (and any later checkpoint) never see it.

    In a multi-process run every rank draws the same global batch and scores its own rows
    (``shard_batch``); the returned losses are the global ones (all-reduced) and both checks
    read values that are identical on every rank, so all ranks stop together."""
    if run.step_module is None:
        _prepare_step(run, compile=False)
    d = run.dist
    if tokens is None:
        tokens = _sample_tokens(run, step)
    if d.enabled:
        batch = shard_batch(run.world, tokens, run.device, run.ocfg, d.rank, d.world_size)
    else:
        batch = to_batch(run.world, tokens, run.device)
    with run.autocast():
        losses = run.step_module(batch)
    total = d.sum_losses(losses)  # the global losses (this very dict in a single process)
    if not torch.isfinite(total["loss"]):
        raise TrainingDiverged(f"loss became {float(total['loss'].detach())} at step {step}; stopped ({run.last_good_text()})")
    run.opt.zero_grad(set_to_none=True)
    # DDP AVERAGES gradients over the ranks, and each partial loss is its rank's share of
    # the global mean: scaled by the world size, the synced gradient is the global batch's
    (losses["loss"] * d.world_size if d.enabled else losses["loss"]).backward()
    # the norm is always computed: a finite loss can still give an inf/NaN gradient,
    # which must stop training BEFORE the optimiser writes it into the weights
    clip = run.cfg.grad_clip if run.cfg.grad_clip > 0 else float("inf")
    gnorm = torch.nn.utils.clip_grad_norm_(run.params(), clip)
    if not torch.isfinite(gnorm):
        raise TrainingDiverged(f"gradient norm became {float(gnorm)} at step {step}; stopped before the update ({run.last_good_text()})")
    run.opt.step()
    run.sched.step()
    return total, gnorm, int(np.asarray(tokens).size)


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
    the training precision) and broadcast, so every rank decides the same about saving."""
    vl = evaluate_ce(run.model, run.world, run.val_tokens) if run.dist.is_main else float("nan")
    if run.dist.enabled:
        vl, run.val_floor = run.dist.broadcast_floats([vl, run.val_floor])
    run.metrics = {"step": step, "val_loss": vl, "val_floor": run.val_floor, "gap_to_floor": vl - run.val_floor}
    log.write(dict(run.metrics))


def _save(run: _Run, path: Path, step: int) -> None:
    """Write a checkpoint of the current state — only if it is good: its own evaluation
    (this step's) is finite and every weight is finite. Otherwise stop, writing nothing.
    Every rank checks (their weights are the same); rank 0 alone writes."""
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
        save_checkpoint(_payload(run, step), path)
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
