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
"""
from __future__ import annotations

import math
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
from ..errors import NextLatError, UsageError
from ..models.config import ModelConfig
from ..models.dynamics import LatentDynamics
from ..models.mtp import MTPHeads
from ..models.objective import Batch, ObjectiveConfig, compute_losses, masked_cross_entropy
from ..models.transformer import build_transformer, last_resid_hook, move, resolve_device
from ..worlds import World, make_world
from .config import TrainConfig
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


def to_batch(world: World, tokens: np.ndarray, device: torch.device) -> Batch:
    """Tokens and the world's per-position targets (``World.output_targets``) as tensors."""
    targets, scored = world.output_targets(tokens)

    def dev(a: np.ndarray) -> torch.Tensor:
        return torch.as_tensor(a, device=device)

    return Batch(dev(np.asarray(tokens, dtype=np.int64)), dev(targets), dev(scored), dev(world.position_mask(tokens)))


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


def train(
    cfg: TrainConfig | None = None,
    out_dir: str | Path = "runs/run",
    resume: str | Path | None = None,
    world: World | None = None,
    progress: bool = True,
    extra_steps: int | None = None,
    stop_at: int | None = None,
    overwrite: bool = False,
) -> TrainResult:
    """Train (or resume) a model; writes ``out_dir/ckpt.pt``, ``out_dir/metrics.jsonl`` and
    ``out_dir/run.json`` (the run's identity; see ``training.folder`` for what a run may
    write over: nothing of another run unless ``overwrite``, which moves it aside first).

    ``resume``: continue exactly from that checkpoint (its configs win over ``cfg``, except
    ``steps``, which may be raised via ``cfg.steps`` or ``extra_steps``, and the device).
    ``stop_at``: stop (with a checkpoint) after this step, as an interrupted run would; the
    learning-rate schedule still follows ``cfg.steps``, so resuming continues exactly.
    """
    state = _read_resume(resume) if resume is not None else None
    cfg, world = _configure(cfg, world, state, extra_steps)
    run = _new_run(cfg, world, state)
    if state is not None:
        _restore(run, state)
    folder = prepare_run_folder(out_dir, _identity(run), resuming=state is not None, overwrite=overwrite)
    try:
        log = _open_log(run, folder, state)
        _loop(run, folder, log, stop_at, progress)
    except BaseException:
        folder.clean_up_after_failure()
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
        return saved, world_of(state)
    cfg = cfg if cfg is not None else TrainConfig()
    return cfg, world if world is not None else make_world(cfg.world, **cfg.world_options)


def _new_run(cfg: TrainConfig, world: World, state: dict[str, Any] | None = None) -> _Run:
    """The run's modules (``_build``) on its device, and its validation set. On resume the
    model config is the checkpoint's own (already validated against its weights)."""
    device = resolve_device(cfg.device)
    seq_len = cfg.seq_len or default_seq_len(world)
    mcfg = None
    if state is not None:
        mcfg = ModelConfig.from_dict(state["model_config"])
        if mcfg.n_ctx < seq_len:
            raise CheckpointError(state["_path"], f"model_config.n_ctx ({mcfg.n_ctx}) is smaller than the run's seq_len ({seq_len})")
    run = _Run(cfg, world, seq_len, device, *_build(cfg, world, seq_len, device, mcfg))
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


def _open_log(run: _Run, folder: RunFolder, state: dict[str, Any] | None) -> MetricsLog:
    """The metrics log: a fresh one (with the step-0 evaluation), or on resume the existing
    one truncated back to the checkpoint's step, so no step is logged twice."""
    log = MetricsLog(folder.metrics)
    start = {"event": "start", "config": run.cfg.to_dict(), "model_config": run.mcfg.to_dict(),
             "objective_config": run.ocfg.to_dict(), "world": run.world.spec().get("kind")}
    if state is None:
        log.write(start)
        _evaluate(run, log, 0)
    elif folder.metrics.is_file():
        truncate_metrics(folder.metrics, run.step)
        log.write({"event": "resume", "step": run.step, "from": state["_path"]})
    else:  # resumed into a new folder: its log starts here
        log.write({**start, "resumed_from": state["_path"], "resumed_at": run.step})
    return log


def _loop(run: _Run, folder: RunFolder, log: MetricsLog, stop_at: int | None, progress: bool) -> None:
    from ..progress import progress as progress_bar

    cfg = run.cfg
    last = cfg.steps if stop_at is None else min(cfg.steps, int(stop_at))
    log_every = max(1, min(10, cfg.eval_every))
    start = run.step
    bar = progress_bar(total=cfg.steps, initial=start, disable=not progress, desc=f"{cfg.objective} {cfg.world}", dynamic_ncols=True)
    timer = [time.perf_counter(), 0]  # [time of the last train record, tokens since]
    run.model.train()
    try:
        for step in range(start + 1, last + 1):
            losses, gnorm, n_tokens = _train_step(run, step)
            run.step = step
            timer[1] += n_tokens
            if step % log_every == 0 or step == cfg.steps:
                _log_step(run, log, losses, gnorm, timer, bar)
            bar.update(1)
            keep = bool(cfg.keep_every) and step % cfg.keep_every == 0
            save = step % cfg.save_every == 0 or step == last
            # every checkpoint carries the validation loss of its own weights
            if step % cfg.eval_every == 0 or save or keep:
                _evaluate(run, log, step)
            if save:
                _save(run, folder.checkpoint, step)
            if keep:
                _save(run, folder.kept(step), step)
    finally:
        bar.close()
    if run.step == start and not folder.checkpoint.exists():  # nothing to do: make sure one exists
        if run.metrics.get("step") != run.step:
            _evaluate(run, log, run.step)
        _save(run, folder.checkpoint, run.step)


def _train_step(run: _Run, step: int) -> tuple[dict[str, torch.Tensor], torch.Tensor, int]:
    """One optimiser step on the batch of ``step``; stops before the update on a NaN/inf
    loss or gradient, so the weights (and any later checkpoint) never see it."""
    tokens = run.world.sample(run.cfg.batch_size, run.seq_len, seed=batch_rng(run.cfg.seed, step)).tokens
    batch = to_batch(run.world, tokens, run.device)
    losses = compute_losses(run.model, run.aux, batch, run.ocfg, last_resid_hook(run.mcfg),
                            fast=run.cfg.fast_forward)
    if not torch.isfinite(losses["loss"]):
        raise TrainingDiverged(f"loss became {float(losses['loss'].detach())} at step {step}; stopped ({run.last_good_text()})")
    run.opt.zero_grad(set_to_none=True)
    losses["loss"].backward()
    # the norm is always computed: a finite loss can still give an inf/NaN gradient,
    # which must stop training BEFORE the optimiser writes it into the weights
    clip = run.cfg.grad_clip if run.cfg.grad_clip > 0 else float("inf")
    gnorm = torch.nn.utils.clip_grad_norm_(run.params(), clip)
    if not torch.isfinite(gnorm):
        raise TrainingDiverged(f"gradient norm became {float(gnorm)} at step {step}; stopped before the update ({run.last_good_text()})")
    run.opt.step()
    run.sched.step()
    return losses, gnorm, batch.tokens.numel()


def _log_step(run: _Run, log: MetricsLog, losses: dict[str, torch.Tensor], gnorm: torch.Tensor, timer: list, bar) -> None:
    now = time.perf_counter()
    rec = {k: float(v.detach()) for k, v in losses.items()}
    rec.update(step=run.step, lr=run.sched.get_last_lr()[0], grad_norm=float(gnorm), tokens_per_s=timer[1] / max(now - timer[0], 1e-9))
    log.write(rec)
    timer[:] = [now, 0]
    bar.set_postfix(loss=f"{rec['loss']:.4f}", ce=f"{rec['ce']:.4f}", val=f"{run.metrics.get('val_loss', float('nan')):.4f}")


def _evaluate(run: _Run, log: MetricsLog, step: int) -> None:
    vl = evaluate_ce(run.model, run.world, run.val_tokens)
    run.metrics = {"step": step, "val_loss": vl, "val_floor": run.val_floor, "val_gap": vl - run.val_floor}
    log.write(dict(run.metrics))


def _save(run: _Run, path: Path, step: int) -> None:
    """Write a checkpoint of the current state — only if it is good: its own evaluation
    (this step's) is finite and every weight is finite. Otherwise stop, writing nothing."""
    vl = run.metrics.get("val_loss", float("nan"))
    if run.metrics.get("step") != step or not math.isfinite(float(vl)):
        raise TrainingDiverged(f"validation loss is {vl} at step {step}; not writing {path} ({run.last_good_text()})")
    aux = {"nextlat": "p_psi.", "mtp": "mtp."}.get(run.ocfg.objective, "")
    modules = [("", run.model)] + ([(aux, run.aux)] if run.aux is not None else [])
    for prefix, module in modules:
        for name, w in module.named_parameters():
            if not torch.isfinite(w).all():
                raise TrainingDiverged(f"weight {prefix}{name} is not finite at step {step}; not writing {path} ({run.last_good_text()})")
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
            "train_config": run.cfg.to_dict(),
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
