"""Train a GPT or NextLat model on a world.

    python -m nextlat_probe.train --world taxi --objective nextlat --out runs/taxi-nextlat
    python -m nextlat_probe.train --resume runs/taxi-nextlat/ckpt.pt --steps 2000
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .cli import UsageError, run_main

WORLDS = ("mess3", "rrxor", "z1r", "taxi", "a5")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m nextlat_probe.train",
        description="Train a GPT (next-token) or NextLat model on a world with exact belief states. "
        "Writes OUT/ckpt.pt and OUT/metrics.jsonl.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--world", choices=WORLDS, default="taxi", help="world to train on")
    p.add_argument("--objective", choices=("gpt", "nextlat"), default="gpt")
    p.add_argument("--horizon", type=int, default=1, help="NextLat roll-out depth d")
    p.add_argument("--lambda-h", type=float, default=1.0, help="weight of the SmoothL1 next-latent loss")
    p.add_argument("--lambda-kl", type=float, default=1.0, help="weight of the KL next-token-distribution loss")
    p.add_argument("--preset", choices=("tiny", "mini", "small"), default="tiny", help="model size")
    p.add_argument("--steps", type=int, default=None, help="total optimiser steps (default 1000; with --resume: the run's own total, or raise it)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--seq-len", type=int, default=None, help="tokens per sequence (default: the world's)")
    p.add_argument("--n-ctx", type=int, default=None, help="context size of the model (default: seq-len)")
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--warmup", type=int, default=50, help="warm-up steps")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default=None, help="auto (CUDA if available; the default), cpu or cuda")
    p.add_argument("--eval-every", type=int, default=100)
    p.add_argument("--save-every", type=int, default=200)
    p.add_argument("--keep-every", type=int, default=0, help="also keep OUT/ckpt_step{N}.pt every N steps")
    p.add_argument("--n-val", type=int, default=256, help="held-out validation sequences")
    p.add_argument("--out", type=Path, help="output folder (required unless --resume)")
    p.add_argument("--resume", type=Path, help="continue exactly from this checkpoint")
    p.add_argument("--overwrite", action="store_true", help="start afresh even if OUT/ckpt.pt exists")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    g = p.add_argument_group("world options")
    g.add_argument("--map-size", type=int, default=None, help="taxi: synthetic map with N x N intersections")
    g.add_argument("--map", type=Path, default=None, help="taxi: edge-list JSON map (e.g. manhattan_streets.json)")
    g.add_argument("--walk", choices=("random", "shortest", "noisy"), default=None, help="taxi: sequence source")
    g.add_argument("--origin", choices=("visible", "hidden"), default=None, help="taxi: observation mode")
    g.add_argument("--min-len", type=int, default=None, help="taxi: shortest walk length")
    g.add_argument("--max-len", type=int, default=None, help="taxi: longest walk length")
    g.add_argument("--map-seed", type=int, default=None, help="taxi: seed of the synthetic map")
    return p


def world_options(args: argparse.Namespace) -> dict:
    if args.world != "taxi":
        given = [n for n in ("map_size", "map", "walk", "origin", "min_len", "max_len", "map_seed") if getattr(args, n) is not None]
        if given:
            raise UsageError(f"--{given[0].replace('_', '-')} applies only to --world taxi")
        return {}
    opts = {
        "map_size": args.map_size,
        "map": str(args.map) if args.map is not None else None,
        "walk": args.walk,
        "origin": args.origin,
        "min_len": args.min_len,
        "max_len": args.max_len,
        "seed": args.map_seed,
    }
    return {k: v for k, v in opts.items() if v is not None}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.out is None and args.resume is None:
        raise UsageError("--out DIR is required (or --resume CKPT)")
    if args.map is not None and not args.map.is_file():
        raise UsageError(f"--map {args.map}: no such file")
    for name in ("steps", "batch_size", "horizon", "n_val", "eval_every", "save_every"):
        v = getattr(args, name)
        if name == "steps" and v is None:
            continue
        if v < (0 if name == "steps" else 1):
            raise UsageError(f"--{name.replace('_', '-')} must be {'>= 0' if name == 'steps' else 'positive'}, got {v}")

    from .training.config import TrainConfig
    from .training.trainer import TrainingDiverged, train

    if args.resume is not None:
        from .checkpoint import read_checkpoint

        read_checkpoint(args.resume)  # fail early, one line, on a bad file
        out = args.out or (args.resume.parent if args.resume.is_file() else args.resume)
        cfg = None
        if args.steps is not None or args.device is not None:
            cfg = TrainConfig(steps=args.steps or 0, device=args.device or "auto")
    else:
        out = args.out
        if (out / "ckpt.pt").exists() and not args.overwrite:
            raise UsageError(f"{out / 'ckpt.pt'} already exists; use --resume to continue or --overwrite to start afresh")
        try:
            cfg = TrainConfig(
                world=args.world,
                world_options=world_options(args),
                objective=args.objective,
                horizon=args.horizon,
                lambda_h=args.lambda_h,
                lambda_kl=args.lambda_kl,
                preset=args.preset,
                steps=1000 if args.steps is None else args.steps,
                batch_size=args.batch_size,
                seq_len=args.seq_len,
                n_ctx=args.n_ctx,
                lr=args.lr,
                warmup_steps=args.warmup,
                seed=args.seed,
                device=args.device or "auto",
                eval_every=args.eval_every,
                n_val=args.n_val,
                save_every=args.save_every,
                keep_every=args.keep_every,
            )
        except ValueError as exc:
            raise UsageError(str(exc)) from None
    try:
        res = train(cfg, out_dir=out, resume=args.resume, progress=not args.no_progress)
    except TrainingDiverged as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 3
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    gap = res.val_loss - res.val_floor
    print(f"wrote {res.checkpoint} (step {res.step}); val loss {res.val_loss:.4f} nats, exact floor {res.val_floor:.4f} (gap {gap:.4f})")
    return 0


if __name__ == "__main__":
    run_main(main)
