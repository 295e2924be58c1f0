"""The training loop, shared line for line by GPT and NextLat.

Data is streamed from the world's sampler: the batch for step ``s`` is drawn with the seed
``(seed, 0, s)``, so a resumed run sees exactly the batches the uninterrupted run would have
seen, with no sampler state to save. The validation set is drawn once with ``(seed, 1)``
and never overlaps the training stream's seeds.
"""
from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from .. import __version__
from ..checkpoint import plain, read_checkpoint, save_checkpoint
from ..models.config import ModelConfig
from ..models.dynamics import LatentDynamics
from ..models.objective import ObjectiveConfig, compute_losses, masked_cross_entropy
from ..models.transformer import build_transformer, final_hook_name, move, resolve_device
from ..worlds import World, make_world, world_from_spec
from .config import TrainConfig


class TrainingDiverged(RuntimeError):
    """The loss became NaN/inf; the last good checkpoint on disk is untouched."""


def default_seq_len(world: World) -> int:
    return int(getattr(world, "default_length", 16))


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


def to_batch(world: World, tokens: np.ndarray, device: torch.device) -> tuple[torch.Tensor, ...]:
    t = torch.as_tensor(tokens, dtype=torch.long, device=device)
    tm = torch.as_tensor(world.target_mask(tokens), device=device)
    pm = torch.as_tensor(world.position_mask(tokens), device=device)
    return t, tm, pm


@torch.no_grad()
def evaluate_ce(model, world: World, tokens: np.ndarray, batch_size: int = 256) -> float:
    """Mean next-token CE over target positions (weighted by target count across batches)."""
    was_training = model.training
    model.eval()
    dev = next(model.parameters()).device
    total, count = 0.0, 0
    for i in range(0, len(tokens), batch_size):
        t, tm, _ = to_batch(world, tokens[i : i + batch_size], dev)
        n = int(tm[:, 1:].sum())
        if n:
            total += float(masked_cross_entropy(model(t), t, tm)) * n
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


def _build(cfg: TrainConfig, world: World, seq_len: int, device: torch.device):
    n_ctx = cfg.n_ctx or seq_len
    if n_ctx < seq_len:
        raise ValueError(f"n_ctx ({n_ctx}) is smaller than seq_len ({seq_len})")
    mcfg = ModelConfig.from_preset(cfg.preset, n_ctx=n_ctx, d_vocab=world.vocab_size)
    ocfg = ObjectiveConfig(cfg.objective, cfg.horizon, float(cfg.lambda_h), float(cfg.lambda_kl))
    torch.manual_seed(cfg.seed)
    model = move(build_transformer(mcfg, seed=cfg.seed), device)
    dynamics = None
    if cfg.objective == "nextlat":
        torch.manual_seed(cfg.seed + 1)
        dynamics = LatentDynamics(mcfg.d_model, d_hidden=mcfg.d_dynamics).to(device)
    params = list(model.parameters()) + (list(dynamics.parameters()) if dynamics else [])
    decay = [p for p in params if p.ndim >= 2]
    no_decay = [p for p in params if p.ndim < 2]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=cfg.lr,
        betas=(0.9, 0.95),
    )
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda(cfg))
    return mcfg, ocfg, model, dynamics, opt, sched


def _payload(cfg, world, mcfg, ocfg, model, dynamics, opt, sched, step, metrics) -> dict[str, Any]:
    def cpu(sd):
        return {k: v.detach().cpu() if torch.is_tensor(v) else v for k, v in sd.items()}

    return plain(
        {
            "package_version": __version__,
            "objective": ocfg.objective,
            "model_config": mcfg.to_dict(),
            "objective_config": ocfg.to_dict(),
            "world_spec": world.spec(),
            "train_config": cfg.to_dict(),
            "step": int(step),
            "model": cpu(model.state_dict()),
            "dynamics": cpu(dynamics.state_dict()) if dynamics is not None else None,
            "dynamics_config": dynamics.config() if dynamics is not None else None,
            "optimizer": opt.state_dict(),
            "scheduler": sched.state_dict(),
            "rng": {"torch": torch.get_rng_state()},
            "metrics": metrics,
        }
    )


def train(
    cfg: TrainConfig | None = None,
    out_dir: str | Path = "runs/run",
    resume: str | Path | None = None,
    world: World | None = None,
    progress: bool = True,
    extra_steps: int | None = None,
    stop_at: int | None = None,
) -> TrainResult:
    """Train (or resume) a model; writes ``out_dir/ckpt.pt`` and ``out_dir/metrics.jsonl``.

    ``resume``: continue exactly from that checkpoint (its configs win over ``cfg``, except
    ``steps``, which may be raised via ``cfg.steps`` or ``extra_steps``).
    ``stop_at``: stop (with a checkpoint) after this step, as an interrupted run would; the
    learning-rate schedule still follows ``cfg.steps``, so resuming continues exactly.
    """
    from tqdm.auto import tqdm

    out_dir = Path(out_dir)
    state = None
    if resume is not None:
        state = read_checkpoint(resume)
        saved = TrainConfig.from_dict(state["train_config"])
        if cfg is not None and cfg.steps > saved.steps:
            saved.steps = cfg.steps
        if extra_steps:
            saved.steps = int(state["step"]) + int(extra_steps)
        if cfg is not None and cfg.device != "auto":
            saved.device = cfg.device
        cfg = saved
        world = world_from_spec(state["world_spec"])
    if cfg is None:
        cfg = TrainConfig()
    if world is None:
        world = make_world(cfg.world, **cfg.world_options)
    device = resolve_device(cfg.device)
    seq_len = cfg.seq_len or default_seq_len(world)
    mcfg, ocfg, model, dynamics, opt, sched = _build(cfg, world, seq_len, device)
    start = 0
    if state is not None:
        model.load_state_dict(state["model"])
        if dynamics is not None:
            dynamics.load_state_dict(state["dynamics"])
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        torch.set_rng_state(state["rng"]["torch"])
        start = int(state["step"])

    val_tokens = world.sample(cfg.n_val, seq_len, seed=val_rng(cfg.seed)).tokens
    val_floor = world.exact_cross_entropy(val_tokens)
    last_hook = final_hook_name(mcfg)
    out_dir.mkdir(parents=True, exist_ok=True)
    ckpt_path = out_dir / "ckpt.pt"
    metrics_path = out_dir / "metrics.jsonl"
    metrics: dict[str, Any] = dict(state.get("metrics", {})) if state else {}
    log_every = max(1, min(10, cfg.eval_every))

    if state is not None and metrics_path.is_file() and metrics_path.stat().st_size:
        with open(metrics_path, "rb+") as f:  # a killed run may have left half a line
            f.seek(-1, 2)
            if f.read(1) != b"\n":
                f.write(b"\n")

    def write(rec: dict[str, Any]) -> None:
        with open(metrics_path, "a") as f:
            f.write(json.dumps(rec) + "\n")

    def do_eval(step: int) -> None:
        vl = evaluate_ce(model, world, val_tokens)
        metrics.update(step=step, val_loss=vl, val_floor=val_floor, val_gap=vl - val_floor)
        write({"step": step, "val_loss": vl, "val_floor": val_floor, "val_gap": vl - val_floor})

    def save(path: Path, step: int) -> None:
        if not math.isfinite(float(metrics.get("val_loss", 0.0))):
            raise TrainingDiverged(f"validation loss is {metrics.get('val_loss')} at step {step}; not overwriting {path}")
        save_checkpoint(_payload(cfg, world, mcfg, ocfg, model, dynamics, opt, sched, step, metrics), path)

    if state is None:
        metrics_path.unlink(missing_ok=True)  # a fresh run starts a fresh log
        for old in out_dir.glob("ckpt_step*.pt"):  # and must not mix in another run's history
            old.unlink()
        write({"event": "start", "config": cfg.to_dict(), "model_config": mcfg.to_dict(), "world": world.spec().get("kind")})
        do_eval(0)
    model.train()
    last = cfg.steps if stop_at is None else min(cfg.steps, int(stop_at))
    bar = tqdm(total=cfg.steps, initial=start, disable=not progress, desc=f"{cfg.objective} {cfg.world}", dynamic_ncols=True)
    t_last, tok_count = time.perf_counter(), 0
    step = start
    try:
        for step in range(start + 1, last + 1):
            tokens = world.sample(cfg.batch_size, seq_len, seed=batch_rng(cfg.seed, step)).tokens
            t, tm, pm = to_batch(world, tokens, device)
            losses = compute_losses(model, dynamics, t, tm, pm, ocfg, last_hook)
            if not torch.isfinite(losses["loss"]):
                raise TrainingDiverged(
                    f"loss became {float(losses['loss'].detach())} at step {step}; stopped. "
                    f"Last good checkpoint: {ckpt_path if ckpt_path.exists() else 'none written yet'}"
                )
            opt.zero_grad(set_to_none=True)
            losses["loss"].backward()
            params = [p for g in opt.param_groups for p in g["params"]]
            # the norm is always computed: a finite loss can still give an inf/NaN gradient,
            # which must stop training BEFORE the optimiser writes it into the weights
            gnorm = torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip if cfg.grad_clip > 0 else float("inf"))
            if not torch.isfinite(gnorm):
                raise TrainingDiverged(
                    f"gradient norm became {float(gnorm)} at step {step}; stopped before the update. "
                    f"Last good checkpoint: {ckpt_path if ckpt_path.exists() else 'none written yet'}"
                )
            opt.step()
            sched.step()
            tok_count += t.numel()
            if step % log_every == 0 or step == cfg.steps:
                now = time.perf_counter()
                rec = {k: float(v.detach()) for k, v in losses.items()}
                rec.update(step=step, lr=sched.get_last_lr()[0], grad_norm=float(gnorm), tokens_per_s=tok_count / max(now - t_last, 1e-9))
                write(rec)
                t_last, tok_count = now, 0
                bar.set_postfix(loss=f"{rec['loss']:.4f}", ce=f"{rec['ce']:.4f}", val=f"{metrics.get('val_loss', float('nan')):.4f}")
            bar.update(1)
            keep = bool(cfg.keep_every) and step % cfg.keep_every == 0
            # evaluate at kept steps too, so every kept checkpoint carries its own val loss
            if step % cfg.eval_every == 0 or step == last or keep:
                do_eval(step)
            if step % cfg.save_every == 0 or step == last:
                save(ckpt_path, step)
            if keep:
                save(out_dir / f"ckpt_step{step}.pt", step)
    finally:
        bar.close()
    if step == start:  # nothing to do (already trained): make sure a checkpoint exists
        if not ckpt_path.exists():
            save(ckpt_path, step)
    return TrainResult(ckpt_path, step, float(metrics.get("val_loss", float("nan"))), float(val_floor), metrics_path)
