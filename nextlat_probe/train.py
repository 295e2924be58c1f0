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

from .cli import WORLD_FLAGS, ArgumentParser, UsageError, add_limit_args, add_world_args, run_main
from .cli import world_flag_value as _flag_value
from .cli import world_spec as _world_spec

#: when this command started (``--time-limit`` counts from here, imports included)
_STARTED = time.monotonic()

WORLDS = ("mess3", "rrxor", "z1r", "taxi", "a5", "pathstar")
#: ``models.objective.OBJECTIVES`` (not imported here: nothing heavy before ``main``)
OBJECTIVES = ("gpt", "nextlat", "mtp")


def build_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(
        prog="python -m nextlat_probe.train",
        description="Train a GPT (next-token), NextLat or MTP (multi-token prediction) model on a world with "
        "exact belief states. "
        "Writes OUT/ckpt.pt and OUT/metrics.jsonl."
    )
    p.add_argument("--world", default="taxi", metavar="SPEC",
                   help="world to train on, as every CLI writes it: name[:key=value,...], e.g. taxi, "
                        "\"taxi:walk=shortest,holdout=0.2\", \"pathstar:degree=2,length=5\", mess3, a5 (the world "
                        "options below are shorthands for its keys; a flag and a key that disagree are refused)")
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
    p.add_argument("--no-tf32", action="store_true",
                   help="CUDA: float32 matmuls in IEEE float32 instead of TF32 (the default for fp32 on CUDA: "
                        "several times faster; validation always runs in full float32)")
    p.add_argument("--sampler", choices=("device", "host"), default=None,
                   help="where batches are drawn: device (the world's torch sampler on the training device; the "
                        "default where the world has one: not taxi random walks with held-out pairs) or host (its numpy sampler, the reference: what runs before device sampling used). "
                        "Same distribution, different draws. With --resume: the run's own")
    p.add_argument("--data", type=Path, default=None, metavar="DIR",
                   help="train on a token dataset (python -m nextlat_probe.data write / import-trips) instead of "
                        "sampling: its meta.json names the world and the sequence length")
    p.add_argument("--prefetch", action=argparse.BooleanOptionalAction, default=None,
                   help="host sampler and --data: read or draw the next batches in a background thread while the "
                        "device computes (default: on CUDA only); batches depend on the seed and step alone, so the "
                        "run is the same either way")
    p.add_argument("--log", action="append", default=None, metavar="TRACKER",
                   help="also show the run in tensorboard (event files in OUT/tensorboard/) and/or wandb (Weights & "
                        "Biases: online only if you configured W&B, else offline into OUT/wandb/); repeatable or a "
                        "comma list. The trackers show the rows of metrics.jsonl, which stays the record")
    p.add_argument("--time-limit", type=float, default=None, metavar="MINUTES",
                   help="stop cleanly before this many minutes (fractions allowed; counted from the command's start) "
                        "with a resumable checkpoint, and exit with code 75; resume with --resume OUT/ckpt.pt")
    p.add_argument("--compile", nargs="?", const="auto", default=None,
                   choices=("auto", "default", "reduce-overhead", "max-autotune"), metavar="MODE",
                   help="torch.compile a step's forward pass and losses (the hook-free forward) as one graph; MODE: "
                        "auto (CUDA graphs for small steps on one GPU, else default), default, reduce-overhead or "
                        "max-autotune. Falls back to eager, with a warning, if compiling fails")
    add_limit_args(p)
    add_world_args(p)
    return p


#: CLI options that are TrainConfig fields. With --resume the stored config is continued, so
#: each of these is refused when given with a value other than the checkpoint's.
TRAIN_OPTIONS = {
    "objective": "objective", "horizon": "horizon", "lambda_h": "lambda_h",
    "lambda_kl": "lambda_kl", "preset": "preset", "batch_size": "batch_size", "seq_len": "seq_len",
    "n_ctx": "n_ctx", "lr": "lr", "warmup": "warmup_steps", "seed": "seed", "eval_every": "eval_every",
    "save_every": "save_every", "keep_every": "keep_every", "n_val": "n_val", "positional": "positional",
    "sampler": "sampler",
}


def world_spec(args: argparse.Namespace) -> tuple[str, dict]:
    """(world name, world options) of ``--world SPEC`` and the world flags (``cli.world_spec``)."""
    return _world_spec(args, WORLDS)


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
    if args.data is not None and args.resume is None:
        _check_data_options(args, given)
    if args.resume is not None:
        from .checkpoint import read_checkpoint

        state = read_checkpoint(args.resume)  # fail early, one line, on a bad file
        check_resume_options(args, given, state)
        out = args.out or Path(state["_path"]).parent
        cfg = None
        if args.steps is not None or args.device is not None or args.precision is not None or args.no_tf32:
            cfg = TrainConfig(steps=args.steps or 0, device=args.device or "auto", precision=_precision(args),
                              tf32=not args.no_tf32)
    else:
        out = args.out
        world, options = world_spec(args) if args.data is None else (WORLDS[0], {})  # --data: its own world
        try:
            cfg = TrainConfig(
                world=world,
                world_options=options,
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
                tf32=not args.no_tf32,
                sampler=args.sampler,
                data=str(args.data) if args.data is not None else None,
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
    if res.val_floor == res.val_floor:
        floor = f"exact floor {res.val_floor:.4f} (gap {gap:.4f})"
    else:
        floor = "no exact floor (imported trips: their generating process is unknown)"
    print(f"wrote {res.checkpoint} (step {res.step}); val loss {res.val_loss:.4f} nats, {floor}")
    if res.stopped_by_time:
        from .errors import EXIT_TIME_LIMIT

        print(f"stopped by --time-limit {args.time_limit:g} at step {res.step} of {res.total_steps}; continue with: "
              f"python -m nextlat_probe.train --resume {res.checkpoint} --time-limit MINUTES", flush=True)
        print(f"time limit reached at step {res.step} of {res.total_steps}; exit code {EXIT_TIME_LIMIT}", file=sys.stderr)
        return EXIT_TIME_LIMIT
    return 0


#: options that describe the world or its sampling: a dataset brings its own
_DATA_CONFLICTS = ("world", "seq_len", "sampler", *WORLD_FLAGS)


def _check_data_options(args: argparse.Namespace, given: set[str]) -> None:
    """``--data`` names the world (its meta.json) and the rows: refuse options that would
    describe another one."""
    clash = [d for d in _DATA_CONFLICTS if d in given]
    if clash:
        raise UsageError(f"{option(clash[0])} does not go with --data: {args.data}/meta.json names the world and the "
                         "sequence length")
    if not (args.data / "meta.json").is_file():
        raise UsageError(f"--data {args.data}: no dataset there (no meta.json; write one with python -m "
                         "nextlat_probe.data write)")


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
            "lambda_kl": dict(state.get("objective_config") or {}).get("lambda_kl", 1.0),
            "sampler": saved.get("sampler_used") or "host"}
    if "data" in given and str(args.data) != str(saved.get("data")) and \
            Path(args.data).resolve() != Path(str(saved.get("data"))).resolve():
        raise UsageError(f"--data {args.data} conflicts with {path} (data = {saved.get('data')!r}); {why}")
    for dest, key in TRAIN_OPTIONS.items():
        stored = saved.get(key) if saved.get(key) is not None or key not in used else used[key]
        if dest in given and getattr(args, dest) != stored:
            raise UsageError(f"{option(dest)} {getattr(args, dest)} conflicts with {path} ({key} = {stored!r}); {why}")
    stored_world = dict(saved.get("world_options") or {})
    spec = state.get("world_spec") or {}
    if spec.get("kind") == "a5":  # a spec without a form (older runs) is interleaved
        stored_world.setdefault("form", spec.get("form", "interleaved"))
    wanted: dict = {}  # world options typed, as --world keys or as their flags
    if "world" in given:
        from .worlds import parse_spec

        name, wanted = parse_spec(args.world)
        if name != saved.get("world"):
            raise UsageError(f"--world {args.world} conflicts with {path} (world = {saved.get('world')!r}); {why}")
    for dest, (key, _) in WORLD_FLAGS.items():
        if dest in given:
            wanted[key] = _flag_value(args, dest)
    for key, value in wanted.items():
        if value != stored_world.get(key):
            flag = next((option(d) for d, (k, _) in WORLD_FLAGS.items() if k == key and d in given), "--world")
            raise UsageError(f"{flag} {key}={value!r} conflicts with {path} (world option {key} = "
                             f"{stored_world.get(key)!r}); {why}")
    if args.steps is not None:
        step, total = int(state.get("step", 0)), int(saved.get("steps", 0))
        if args.steps < step:
            raise UsageError(f"--steps {args.steps} is below {path}'s step {step}; a resumed run cannot go back")
        if args.steps < total:
            raise UsageError(f"--steps {args.steps} is below the run's total of {total} steps; {why}")


if __name__ == "__main__":
    run_main(main)
