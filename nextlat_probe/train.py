"""Train a GPT, NextLat or multi-token-prediction (MTP) model on a world.

    python -m nextlat_probe.train --world taxi --objective nextlat --out runs/taxi-nextlat
    python -m nextlat_probe.train --world taxi --objective mtp --horizon 2 --out runs/taxi-mtp
    python -m nextlat_probe.train --resume runs/taxi-nextlat/ckpt.pt --steps 2000
    python -m nextlat_probe.train --world a5 --objective nextlat --out runs/a5-nextlat
    torchrun --standalone --nproc_per_node 2 -m nextlat_probe.train --world taxi --out runs/taxi-ddp
    python -m nextlat_probe.train --world taxi --map manhattan --preset small --steps 20000 --time-limit 55 --out runs/big
    python -m nextlat_probe.train --resume runs/big/ckpt.pt --time-limit 55     # the next chunk

``--time-limit MINUTES`` stops the run cleanly before that many minutes (counted from the
start of the command) with a checkpoint of the step reached, prints how to continue, and
exits with code 75 (``EXIT_TIME_LIMIT``, EX_TEMPFAIL); a run that reaches its last step exits
0 as usual. Resuming continues bit for bit, so one run can span several time-limited jobs.

Options left unset take the world's defaults: tagging A5 (``--world a5``) trains at length
12 in a context of 64 with the positions of ``worlds.a5.POSITIONAL_TAGGING`` and, for
NextLat, ``--lambda-kl 0`` (the NextLat paper's A5 setting); every other world uses learned
positions and ``--lambda-kl 1``. The values used are printed and stored in the checkpoint.

Under ``torchrun`` every process runs this CLI (``training.distributed``): ``--batch-size``
is the global batch, rank 0 alone writes and prints; a refusal is printed once (by rank 0),
a lost process as one line per surviving process, with exit code 4.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from .cli import UsageError, add_limit_args, run_main

#: when this command started (``--time-limit`` counts from here, imports included)
_STARTED = time.monotonic()

WORLDS = ("mess3", "rrxor", "z1r", "taxi", "a5", "pathstar")
#: ``models.objective.OBJECTIVES`` (not imported here: nothing heavy before ``main``)
OBJECTIVES = ("gpt", "nextlat", "mtp")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m nextlat_probe.train",
        description="Train a GPT (next-token), NextLat or MTP (multi-token prediction) model on a world with "
        "exact belief states. "
        "Writes OUT/ckpt.pt and OUT/metrics.jsonl.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--world", choices=WORLDS, default="taxi", help="world to train on")
    p.add_argument("--objective", choices=OBJECTIVES, default="gpt",
                   help="gpt: next-token CE; nextlat: + latent dynamics p_psi; mtp: + d extra heads (tokens t+2..t+d+1)")
    p.add_argument("--horizon", type=int, default=1, help="d: NextLat's roll-out depth, or MTP's number of extra heads")
    p.add_argument("--lambda-h", type=float, default=1.0, help="NextLat: weight of the SmoothL1 next-latent loss")
    p.add_argument("--lambda-kl", type=float, default=None,
                   help="NextLat: weight of the KL next-token-distribution loss (default: the world's; 1, tagging A5: 0)")
    p.add_argument("--preset", choices=("tiny", "mini", "small", "base"), default="tiny", help="model size")
    p.add_argument("--steps", type=int, default=None, help="total optimiser steps (default 1000; with --resume: the run's own total, or raise it)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--seq-len", type=int, default=None, help="tokens per sequence (default: the world's)")
    p.add_argument("--n-ctx", type=int, default=None, help="context size of the model (default: seq-len; tagging A5: 64)")
    p.add_argument("--positional", choices=("learned", "rotary", "none"), default=None,
                   help="position scheme: learned absolute, rotary (RoPE) or none (causal mask only); default: the world's")
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--warmup", type=int, default=50, help="warm-up steps")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default=None, help="auto (CUDA if available; the default), cpu, cuda, cuda:N or mps")
    p.add_argument("--eval-every", type=int, default=100)
    p.add_argument("--save-every", type=int, default=200)
    p.add_argument("--keep-every", type=int, default=0, help="also keep OUT/ckpt_step{N}.pt every N steps")
    p.add_argument("--n-val", type=int, default=256, help="held-out validation sequences")
    p.add_argument("--out", type=Path, help="run folder (required unless --resume); refused if it holds another run")
    p.add_argument("--resume", type=Path, help="continue exactly from this checkpoint (into its own folder, or --out)")
    p.add_argument("--overwrite", action="store_true", help="if OUT holds a run, move its files into OUT/.replaced-<time>/ first")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--no-fast-forward", action="store_true",
                   help="train through the bridge's hooked forward instead of the hook-free one on the same "
                        "parameters (models.fastpath; same numbers up to round-off, 1.2-1.3x slower at tiny/mini)")
    p.add_argument("--precision", choices=("auto", "bf16", "fp32"), default=None,
                   help="forward/loss precision: bf16 autocast (CUDA only; weights and loss reductions stay float32) "
                        "or fp32; default auto: bf16 on a CUDA device that supports it, fp32 otherwise. "
                        "With --resume: the run's own unless given")
    p.add_argument("--prefetch", action=argparse.BooleanOptionalAction, default=None,
                   help="draw the next batches in a background thread while the device computes (default: on CUDA "
                        "only); batches depend on the seed and step alone, so the run is the same either way")
    p.add_argument("--log", action="append", default=None, metavar="TRACKER",
                   help="also show the run in tensorboard (event files in OUT/tensorboard/) and/or wandb (Weights & "
                        "Biases: online only if you configured W&B, else offline into OUT/wandb/); repeatable or a "
                        "comma list. The trackers show the rows of metrics.jsonl, which stays the record")
    p.add_argument("--time-limit", type=float, default=None, metavar="MINUTES",
                   help="stop cleanly before this many minutes (fractions allowed; counted from the command's start) "
                        "with a resumable checkpoint, and exit with code 75; resume with --resume OUT/ckpt.pt")
    p.add_argument("--compile", action="store_true",
                   help="torch.compile the transformer forward of training (the hook-free one); falls back to it "
                        "uncompiled, with a warning, if compilation fails")
    add_limit_args(p)
    g = p.add_argument_group("world options")
    g.add_argument("--map-size", type=int, default=None, help="taxi: synthetic map with N x N intersections")
    g.add_argument("--map", type=Path, default=None, help="taxi: edge-list JSON map, or 'manhattan' (the real Manhattan map shipped with the package)")
    g.add_argument("--walk", choices=("random", "shortest", "noisy"), default=None, help="taxi: sequence source")
    g.add_argument("--origin", choices=("visible", "hidden"), default=None, help="taxi: observation mode")
    g.add_argument("--noise", type=float, default=None,
                   help="taxi, --walk noisy: probability of a random (still feasible) turn at each intersection "
                        "(default 0.1)")
    g.add_argument("--min-len", type=int, default=None, help="taxi: shortest walk length")
    g.add_argument("--max-len", type=int, default=None, help="taxi: longest walk length")
    g.add_argument("--map-seed", type=int, default=None, help="taxi: seed of the synthetic map")
    g.add_argument("--holdout", type=float, default=None, metavar="FRACTION",
                   help="taxi: hold this fraction of origin/destination pairs out of training (any walk; scored "
                        "later with worldmodel --ood pairs=held_out)")
    g.add_argument("--holdout-seed", type=int, default=None, help="taxi: seed of the held-out pair split (default 0)")
    g.add_argument("--form", choices=("tagging", "interleaved"), default=None,
                   help="a5: tagging (inputs only, every output scored against the running product; the default) "
                        "or interleaved (g1 s1 g2 s2 ...)")
    g.add_argument("--degree", type=int, default=None, help="pathstar: arms of the star graph (default 2)")
    g.add_argument("--arm-length", type=int, default=None, help="pathstar: nodes per arm (default 4)")
    g.add_argument("--nodes", type=int, default=None, help="pathstar: node labels drawn per graph (default 50)")
    return p


PATHSTAR_OPTIONS = {"degree": "degree", "arm_length": "length", "nodes": "nodes"}


def world_options(args: argparse.Namespace) -> dict:
    if args.form is not None and args.world != "a5":
        raise UsageError("--form applies only to --world a5")
    star = {PATHSTAR_OPTIONS[n]: getattr(args, n) for n in PATHSTAR_OPTIONS if getattr(args, n, None) is not None}
    if star and args.world != "pathstar":
        raise UsageError(f"--{next(n for n in PATHSTAR_OPTIONS if getattr(args, n) is not None).replace('_', '-')} "
                         "applies only to --world pathstar")
    if args.world == "pathstar":
        return star
    if args.world != "taxi":
        given = [n for n in ("map_size", "map", "walk", "origin", "min_len", "max_len", "map_seed", "holdout",
                             "holdout_seed", "noise") if getattr(args, n) is not None]
        if given:
            raise UsageError(f"--{given[0].replace('_', '-')} applies only to --world taxi")
        return {"form": args.form} if args.form is not None else {}
    opts = {
        "map_size": args.map_size,
        "map": str(args.map) if args.map is not None else None,
        "walk": args.walk,
        "origin": args.origin,
        "min_len": args.min_len,
        "max_len": args.max_len,
        "seed": args.map_seed,
        "holdout": args.holdout,
        "holdout_seed": args.holdout_seed,
        "noise": args.noise,
    }
    return {k: v for k, v in opts.items() if v is not None}


#: CLI options that are TrainConfig fields. With --resume the stored config is continued, so
#: each of these is refused when given with a value other than the checkpoint's.
TRAIN_OPTIONS = {
    "world": "world", "objective": "objective", "horizon": "horizon", "lambda_h": "lambda_h",
    "lambda_kl": "lambda_kl", "preset": "preset", "batch_size": "batch_size", "seq_len": "seq_len",
    "n_ctx": "n_ctx", "lr": "lr", "warmup": "warmup_steps", "seed": "seed", "eval_every": "eval_every",
    "save_every": "save_every", "keep_every": "keep_every", "n_val": "n_val", "positional": "positional",
}
#: taxi options -> their world_options key
WORLD_OPTIONS = {"map_size": "map_size", "map": "map", "walk": "walk", "origin": "origin",
                 "min_len": "min_len", "max_len": "max_len", "map_seed": "seed", "form": "form",
                 "holdout": "holdout", "holdout_seed": "holdout_seed", "noise": "noise"}


def given_options(argv: list[str] | None) -> set[str]:
    """The options the user actually typed (argparse fills in defaults for the others)."""
    p = build_parser()
    for action in p._actions:
        action.default = argparse.SUPPRESS
    return set(vars(p.parse_args(argv)))


def option(dest: str) -> str:
    return "--" + dest.replace("_", "-")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from .errors import DeviceError, NextLatError, one_line
    from .training.distributed import EXIT_LOST_PROCESS, DistributedError, env_rank
    from .training.trainer import TrainingDiverged

    try:
        rank = env_rank()
    except NextLatError as exc:
        raise UsageError(one_line(exc)) from None
    try:
        return _main(args, given_options(argv), quiet=rank != 0)
    except DistributedError as exc:  # each surviving process says what it saw (the message names its rank)
        print(f"error: {one_line(exc)}", file=sys.stderr, flush=True)
        return EXIT_LOST_PROCESS
    except TrainingDiverged as exc:  # its own exit code: the run stopped, its folder is valid
        if rank == 0:  # every rank stopped at the same check: rank 0 says it
            print(f"error: {one_line(exc)}", file=sys.stderr)
        return 3
    except NextLatError as exc:  # every user-facing error: one line, exit 2 (run_main)
        if rank != 0 and not isinstance(exc, DeviceError):
            return 2  # every rank refuses the same: rank 0 says it once (a device is each rank's own)
        raise UsageError(one_line(exc) if rank == 0 else f"rank {rank}: {one_line(exc)}") from None


def _main(args: argparse.Namespace, given: set[str], quiet: bool = False) -> int:
    if args.out is None and args.resume is None:
        raise UsageError("--out DIR is required (or --resume CKPT)")
    if args.out is not None and args.out.exists() and not args.out.is_dir():
        raise UsageError(f"--out {args.out}: exists and is not a folder")
    from .worlds.streetmap import resolve_map_path

    if args.map is not None and not resolve_map_path(args.map).is_file():
        raise UsageError(f"--map {args.map}: no such file (give an edge-list JSON map, or 'manhattan' for the shipped map)")
    for name in ("steps", "batch_size", "horizon", "n_val", "eval_every", "save_every"):
        v = getattr(args, name)
        if name == "steps" and v is None:
            continue
        if v < 1:
            raise UsageError(f"{option(name)} must be positive, got {v}")

    from .errors import NextLatError
    from .models.transformer import resolve_device
    from .training.config import TrainConfig
    from .training.trainer import TrainingDiverged, train

    limit = None
    if args.time_limit is not None:
        import math

        from .training.trainer import TimeLimit

        if not (math.isfinite(args.time_limit) and args.time_limit > 0):
            raise UsageError(f"--time-limit must be a positive number of minutes, got {args.time_limit}")
        limit = TimeLimit(60.0 * args.time_limit, start=_STARTED)
    resolve_device(args.device)  # an unknown or missing device fails before anything is read
    from .training.tracking import parse_trackers

    tracking = parse_trackers(args.log)  # an unknown tracker or a missing package fails here too
    if args.resume is not None:
        from .checkpoint import read_checkpoint

        state = read_checkpoint(args.resume)  # fail early, one line, on a bad file
        check_resume_options(args, given, state)
        out = args.out or Path(state["_path"]).parent
        cfg = None
        if args.steps is not None or args.device is not None or args.precision is not None:
            cfg = TrainConfig(steps=args.steps or 0, device=args.device or "auto", precision=_precision(args))
    else:
        out = args.out
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
                positional=args.positional,
                fast_forward=not args.no_fast_forward,
                lr=args.lr,
                warmup_steps=args.warmup,
                seed=args.seed,
                device=args.device or "auto",
                eval_every=args.eval_every,
                n_val=args.n_val,
                save_every=args.save_every,
                keep_every=args.keep_every,
                precision=_precision(args),
            )
        except ValueError as exc:
            raise UsageError(str(exc)) from None
    try:
        res = train(cfg, out_dir=out, resume=args.resume, progress=not args.no_progress, overwrite=args.overwrite,
                    compile=args.compile, prefetch=args.prefetch, tracking=tracking,
                    time_limit=limit)
    except TrainingDiverged:
        raise  # main prints it (exit 3)
    except ValueError as exc:  # e.g. a world option the world rejects
        if isinstance(exc, NextLatError):
            raise  # main decides who prints it
        raise UsageError(str(exc)) from None
    if quiet:  # ranks other than 0 of a torchrun job: rank 0 reports
        return 0
    if res.replaced is not None:
        print(f"moved the folder's previous run to {res.replaced}")
    if res.model_config is not None and res.objective_config is not None:
        used = [f"positional {res.model_config.positional}", f"n_ctx {res.model_config.n_ctx}"]
        if res.objective_config.objective == "nextlat":
            used.append(f"lambda_kl {res.objective_config.lambda_kl:g}")
        if res.objective_config.objective == "mtp":
            used.append(f"{res.objective_config.horizon} extra head(s)")
        print(f"used {', '.join(used)}")
    gap = res.val_loss - res.val_floor
    print(f"wrote {res.checkpoint} (step {res.step}); val loss {res.val_loss:.4f} nats, exact floor {res.val_floor:.4f} (gap {gap:.4f})")
    if res.stopped_by_time:
        from .errors import EXIT_TIME_LIMIT

        print(f"stopped by --time-limit {args.time_limit:g} at step {res.step} of {res.total_steps}; continue with: "
              f"python -m nextlat_probe.train --resume {res.checkpoint} --time-limit MINUTES", flush=True)
        print(f"time limit reached at step {res.step} of {res.total_steps}; exit code {EXIT_TIME_LIMIT}", file=sys.stderr)
        return EXIT_TIME_LIMIT
    return 0


def _precision(args: argparse.Namespace) -> str | None:
    return None if args.precision in (None, "auto") else args.precision


def check_resume_options(args: argparse.Namespace, given: set[str], state: dict) -> None:
    """--resume continues the stored configuration: refuse, in one line, every typed option
    that contradicts it (only --steps may extend the run, --device choose where it runs)."""
    path = state["_path"]
    saved = dict(state.get("train_config") or {})
    why = "--resume continues the stored configuration; only --steps may extend it"
    stored_fast = saved.get("fast_forward", True)
    if "no_fast_forward" in given and args.no_fast_forward == bool(stored_fast):
        raise UsageError(f"--no-fast-forward conflicts with {path} (fast_forward = {stored_fast!r}); {why}")
    # options a run may leave to the world: compare with what the run actually used
    used = {"positional": dict(state.get("model_config") or {}).get("positional", "learned"),
            "lambda_kl": dict(state.get("objective_config") or {}).get("lambda_kl", 1.0)}
    for dest, key in TRAIN_OPTIONS.items():
        stored = saved.get(key) if saved.get(key) is not None or key not in used else used[key]
        if dest in given and getattr(args, dest) != stored:
            raise UsageError(f"{option(dest)} {getattr(args, dest)} conflicts with {path} ({key} = {stored!r}); {why}")
    stored_world = dict(saved.get("world_options") or {})
    spec = state.get("world_spec") or {}
    if spec.get("kind") == "a5":  # a spec without a form (older runs) is interleaved
        stored_world.setdefault("form", spec.get("form", "interleaved"))
    for dest, key in WORLD_OPTIONS.items():
        if dest in given:
            value = str(args.map) if dest == "map" else getattr(args, dest)
            if value != stored_world.get(key):
                raise UsageError(f"{option(dest)} {value} conflicts with {path} (world option {key} = {stored_world.get(key)!r}); {why}")
    if args.steps is not None:
        step, total = int(state.get("step", 0)), int(saved.get("steps", 0))
        if args.steps < step:
            raise UsageError(f"--steps {args.steps} is below {path}'s step {step}; a resumed run cannot go back")
        if args.steps < total:
            raise UsageError(f"--steps {args.steps} is below the run's total of {total} steps; {why}")


if __name__ == "__main__":
    run_main(main)
