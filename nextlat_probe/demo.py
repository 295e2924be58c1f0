"""The main job: train a tiny GPT and a tiny NextLat model on the default world (a
synthetic Manhattan-like taxi map), run every analysis on both, write the report.

    python -m nextlat_probe.demo                 # what `make demo` runs
    python -m nextlat_probe.demo --steps 3000 --preset mini --out runs/bigger

Re-running reuses finished checkpoints (and resumes interrupted ones) unless ``--retrain``.
CUDA is used when present, CPU otherwise.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from .cli import ArgumentParser, UsageError, add_limit_args, run_main
from .report import MIN_N_SEQS

#: worlds the demo trains and reports on (the report has no path-star sections)
DEMO_WORLDS = ("taxi", "mess3", "rrxor", "z1r", "a5")


def keep_interval(steps: int, kept: int = 6) -> int:
    """Steps between the checkpoints kept along training: ``steps / kept`` rounded up, so
    the last one kept is the final step itself or well before it, never a step or two
    short of it (2000 // 6 = 333 kept ckpt_step1998 beside the final 2000)."""
    return max(1, -(-int(steps) // kept))


def build_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(prog="python -m nextlat_probe.demo", description=__doc__.split("\n\n")[0])
    p.add_argument("--world", default="taxi", metavar="SPEC",
                   help=f"world to train on, as every CLI writes it (name[:key=value,...], e.g. "
                        f"\"taxi:map_size=4\"); one of {', '.join(DEMO_WORLDS)} (default: taxi)")
    p.add_argument("--out", type=Path, default=Path("runs/demo"), help="folder for the two runs")
    p.add_argument("--report", type=Path, default=None, help="report folder (default: OUT/report)")
    p.add_argument("--steps", type=int, default=2000, help="training steps per model")
    p.add_argument("--preset", default="tiny", choices=("tiny", "mini", "small", "base"))
    p.add_argument("--horizon", type=int, default=1, help="NextLat roll-out depth d")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto", help="auto (CUDA when available), cpu, cuda or cuda:N")
    p.add_argument("--retrain", action="store_true", help="train again even if checkpoints exist")
    p.add_argument("--n-seqs", type=int, default=256, help=f"sequences per analysis (at least {MIN_N_SEQS})")
    p.add_argument("--no-progress", action="store_true")
    add_limit_args(p)
    return p


def check_options(args: argparse.Namespace) -> tuple[str, dict, str]:
    """Every option, checked before anything is trained or written: (world name, world
    options, device). A refusal is one line (``UsageError``) and leaves nothing behind."""
    from .cli import check_positive, resolve_device_arg
    from .worlds import WorldError, make_world, parse_spec

    check_positive(steps=args.steps, horizon=args.horizon, batch_size=args.batch_size)
    if args.n_seqs < MIN_N_SEQS:
        raise UsageError(f"--n-seqs must be at least {MIN_N_SEQS} (the report's probe), got {args.n_seqs}")
    name, options = parse_spec(args.world)
    if name not in DEMO_WORLDS:
        raise UsageError(f"--world {args.world!r}: the demo trains on {', '.join(DEMO_WORLDS)}, not {name!r}")
    try:
        make_world(name, **options)  # built once here: a bad option fails before any training
    except WorldError as exc:
        raise UsageError(f"--world {args.world!r}: {exc}") from None
    for flag, folder in (("--out", args.out), ("--report", args.report)):
        if folder is not None and folder.exists() and not folder.is_dir():
            raise UsageError(f"{flag} {folder}: exists and is not a folder")
    return name, options, resolve_device_arg(args.device)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    world, world_options, device = check_options(args)
    from .experiments import train_pair

    t0 = time.time()
    runs = train_pair(
        world,
        world_options=world_options,
        seeds=(args.seed,),
        steps=args.steps,
        out=args.out,
        reuse=not args.retrain,
        progress=not args.no_progress,
        log=lambda msg: print(f"[demo] {msg}", file=sys.stderr),
        horizon=args.horizon,
        preset=args.preset,
        batch_size=args.batch_size,
        device=device,
        eval_every=max(50, args.steps // 15),
        save_every=max(100, args.steps // 6),
        keep_every=keep_interval(args.steps),  # the matched-loss comparison picks among these
    )
    ckpts = [run.checkpoint for run in runs]
    print(f"[demo] training done in {time.time() - t0:.0f} s", file=sys.stderr)

    from .report import run_report

    out = args.report or (args.out / "report")
    run_report(ckpts, out, n_seqs=args.n_seqs, seed=args.seed, device=device, progress=not args.no_progress)
    print(f"\nReport: {(out / 'report.html').resolve()}")
    print(f"Numbers: {(out / 'summary.json').resolve()}  Figures: {(out / 'figures').resolve()}")
    print(f"Total time: {time.time() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    run_main(main)
