"""Sweep a grid of GPT / NextLat (/ MTP) runs and say where NextLat beats GPT.

    python -m nextlat_probe.sweep --world taxi --objectives gpt,nextlat --presets tiny,mini \\
        --steps 1500,6000 --lambda-h 1 --lambda-kl 0,1 --seeds 3 --out runs/sweep --workers 2
    python -m nextlat_probe.sweep ... --dry-run        # the grid: which runs are done / partial / new
    python -m nextlat_probe.sweep --cell tiny:1500 --cell tiny:6000 --cell mini:1500 ...  # cells, not a product
    python -m nextlat_probe.sweep ... --time-limit 55  # stop cleanly before 55 minutes (exit 75); rerun to go on

Grid, reuse, resume, caching and parallelism: ``nextlat_probe.sweeps``. Finished runs are
reused, interrupted ones resumed, and every checkpoint's evaluation is cached beside it,
so the same command run again does only what is missing. Writes to ``--out``:

    sweep.csv          one row per (run, checkpoint): settings, n_params, compute = step x
                       n_params, val_loss / val_floor / gap_to_floor, every metric (rates
                       with _low / _high / _n: Wilson 95%), each analysis' protocol
    records.jsonl      the records as the runners returned them, one per line
    beats.csv/.md      NextLat minus GPT per (preset, steps, lambdas) and metric, paired
                       over seeds at the final checkpoints: mean, 95% t interval, which
                       objective is better, and a flag where a model is far from the floor
    sweep.html         each metric against training compute, mean and min-max band over
                       seeds, per setting (offline: plotly.js embedded), and the beats table
    sweep.pdf/.png     the same figure in matplotlib
    sweep_config.json  the sweep's configuration

``--launcher slurm`` trains the runs as Slurm jobs through submitit, one per run (options
``--slurm-partition``, ``--slurm-gpus-per-task``, ``--slurm-time``, ``--slurm-option KEY=VALUE``
...; pre-empted or failed jobs resume from their checkpoints), into the same folders, and
writes the same outputs. ``--log tensorboard`` / ``--log wandb`` logs every run it trains.

    python -m nextlat_probe.sweep ... --launcher slurm --slurm-partition gpu --slurm-gpus-per-task 1 --log wandb
"""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from .cli import ArgumentParser, UsageError, add_limit_args, progress_enabled, run_main


def _list(text: str, flag: str, conv: Any = str) -> tuple[Any, ...]:
    items = [t.strip() for t in str(text).split(",")]
    if not all(items):  # "1500,,6000": refused, not read as two values
        raise UsageError(f"--{flag}: {text!r} has an empty item")
    try:
        return tuple(conv(t) for t in items)
    except ValueError:
        raise UsageError(f"--{flag}: {text!r} is not a comma list of {conv.__name__} values") from None


def build_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(
        prog="python -m nextlat_probe.sweep",
        description="Train a grid of runs (objectives x presets x steps x seeds, and for NextLat lambda_h x "
                    "lambda_kl), reusing finished runs and resuming interrupted ones; evaluate every kept "
                    "checkpoint (effective rank and belief probe of the last block; taxi: valid trajectories, "
                    "detours, compression); write sweep.csv, records.jsonl, figures against training compute and "
                    "a table of where NextLat beats GPT, paired over seeds.")
    g = p.add_argument_group("grid")
    g.add_argument("--world", default="taxi", help='world spec name[:key=value,...], e.g. taxi, '
                   '"taxi:map_size=4,max_len=12", mess3')
    g.add_argument("--objectives", default="gpt,nextlat", help="comma list of objectives")
    g.add_argument("--presets", default=None, help="comma list of model presets (tiny, mini, small, base; "
                   "default tiny)")
    g.add_argument("--steps", default=None, help="comma list of training lengths; each is its own run (its own "
                   "cosine schedule; default 1500)")
    g.add_argument("--lambda-h", default="1", help="comma list of NextLat latent-loss weights")
    g.add_argument("--lambda-kl", default="1", help="comma list of NextLat KL weights")
    g.add_argument("--seeds", type=int, default=3, help="seeds 0..N-1 per setting; pairs are formed by seed")
    g.add_argument("--cell", action="append", default=[], metavar="PRESET:STEPS[:lambda_kl=V/V]",
                   help="an explicit grid cell instead of --presets x --steps; repeatable, e.g. --cell tiny:1500 "
                        "--cell tiny:6000 --cell mini:1500:lambda_kl=0 (lambdas not given: --lambda-h/--lambda-kl)")
    g.add_argument("--keep", type=int, default=3, help="checkpoints kept along training (keep_every = steps // K), "
                   "besides the final one")
    g.add_argument("--out", type=Path, default=Path("runs/sweep"), help="folder of the runs and outputs")
    t = p.add_argument_group("training (shared by every run; unset = the trainer's defaults)")
    t.add_argument("--batch-size", type=int, default=None)
    t.add_argument("--lr", type=float, default=None)
    t.add_argument("--horizon", type=int, default=None, help="NextLat roll-out depth / MTP extra heads")
    t.add_argument("--seq-len", type=int, default=None, help="tokens per training sequence")
    t.add_argument("--warmup", type=int, default=None, help="warm-up steps")
    t.add_argument("--eval-every", type=int, default=None, help="validation every N steps")
    t.add_argument("--n-val", type=int, default=None, help="validation sequences")
    e = p.add_argument_group("evaluation")
    e.add_argument("--n-seqs", type=int, default=256, help="sequences for the effective rank and the probe (which "
                   "tests on the last third)")
    e.add_argument("--n-pairs", type=int, default=100, help="held-out trips of the taxi world-model metrics "
                   "(default 100: half run_worldmodel's 200, which halves the dominant evaluation cost)")
    e.add_argument("--eval-seed", type=int, default=0, help="seed of the analysed sequences and trips")
    e.add_argument("--no-probe", action="store_true", help="skip the belief probe")
    e.add_argument("--no-worldmodel", action="store_true", help="skip the taxi world-model metrics")
    e.add_argument("--ood", action="append", default=[], metavar="SETTING",
                   help="also score the world-model metrics out of distribution (taxi): 'longer' or key=value "
                        "trip settings such as walk=shortest (see worldmodel --ood); repeatable; columns "
                        "METRIC@ood:SETTING in sweep.csv and the beats table")
    e.add_argument("--mapping", action="store_true", help="also rebuild the street map from each checkpoint's "
                   "sampled trips (taxi; edge precision / recall, invented streets)")
    e.add_argument("--n-trips", type=int, default=500, help="trips sampled for --mapping")
    e.add_argument("--gap-threshold", type=float, default=0.05, help="flag a comparison where a model's mean gap "
                   "to the exact floor exceeds this (nats/token)")
    e.add_argument("--gap-ratio", type=float, default=1.5, help="... or where one gap is more than this many "
                   "times the other (gaps below 0.01 count as 0.01)")
    x = p.add_argument_group("execution and output")
    x.add_argument("--workers", type=int, default=1, help="runs trained at once in separate processes, each with "
                   "cores // N torch threads (N x threads <= cores)")
    x.add_argument("--launcher", choices=("local", "slurm"), default="local",
                   help="local: this machine (--workers at once); slurm: one job per run through submitit "
                        "(the same folders and tables), see the Slurm options")
    x.add_argument("--log", action="append", default=[], metavar="TRACKER",
                   help="also log every run it trains to tensorboard and/or wandb (runs grouped as one sweep); "
                        "repeatable or a comma list")
    x.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto (CUDA when available)")
    x.add_argument("--time-limit", type=float, default=None, metavar="MINUTES",
                   help="stop cleanly before this many minutes (runs stop with resumable checkpoints) and exit with "
                        "code 75; the same command continues")
    x.add_argument("--dry-run", action="store_true", help="print the grid (which runs are done, partial or new) "
                   "and stop")
    x.add_argument("--no-figures", action="store_true", help="skip sweep.html / sweep.pdf / sweep.png")
    x.add_argument("--no-progress", action="store_true", help="no progress output on stderr")
    c = p.add_argument_group("Slurm (--launcher slurm, through submitit; logs in OUT/slurm/)")
    c.add_argument("--slurm-partition", default=None, help="partition to submit to")
    c.add_argument("--slurm-gpus-per-task", type=int, default=None, help="GPUs per job (use with --device cuda/auto)")
    c.add_argument("--slurm-cpus-per-task", type=int, default=None, help="CPUs per job (its torch threads)")
    c.add_argument("--slurm-mem-gb", type=float, default=None, help="memory per job")
    c.add_argument("--slurm-time", type=int, default=None, metavar="MINUTES",
                   help="time limit per job (default 120); a run still training then is requeued and resumes "
                        "from its checkpoint")
    c.add_argument("--slurm-retries", type=int, default=None,
                   help="resubmissions of a run whose job failed (killed, node failure, out of memory; default 2); "
                        "it resumes from its checkpoints")
    c.add_argument("--slurm-array-parallelism", type=int, default=None, help="jobs of the array running at once")
    c.add_argument("--slurm-option", action="append", default=[], metavar="KEY=VALUE",
                   help="any other sbatch option, repeatable, e.g. --slurm-option account=lab --slurm-option qos=high")
    c.add_argument("--slurm-executor", choices=("slurm", "local"), default=None,
                   help="local: submitit's local executor runs the same jobs as processes on this machine (to try "
                        "a Slurm sweep without a cluster)")
    add_limit_args(p)
    return p


#: Slurm CLI options -> ``cluster.SLURM_DEFAULTS`` keys
SLURM_FLAGS = {"slurm_partition": "partition", "slurm_gpus_per_task": "gpus_per_task",
               "slurm_cpus_per_task": "cpus_per_task", "slurm_mem_gb": "mem_gb", "slurm_time": "time_min",
               "slurm_retries": "retries", "slurm_array_parallelism": "array_parallelism",
               "slurm_executor": "executor"}


def slurm_from_args(args: argparse.Namespace) -> dict[str, Any]:
    """The Slurm options the user gave (``SweepConfig.slurm``)."""
    opts = {key: getattr(args, dest) for dest, key in SLURM_FLAGS.items() if getattr(args, dest) is not None}
    if args.slurm_option:
        opts["options"] = dict(_sbatch_option(t) for t in args.slurm_option)
    return opts


def _sbatch_option(text: str) -> tuple[str, str]:
    """``KEY=VALUE`` (``--slurm-option account=lab``) -> (key, value)."""
    key, eq, value = str(text).partition("=")
    if not eq or not key.strip():
        raise UsageError(f"--slurm-option {text!r}: expected KEY=VALUE (an sbatch option, e.g. account=lab)")
    return key.strip().lstrip("-").replace("-", "_"), value.strip()


TRAIN_FLAGS = {"batch_size": "batch_size", "lr": "lr", "horizon": "horizon", "seq_len": "seq_len",
               "warmup": "warmup_steps", "eval_every": "eval_every", "n_val": "n_val"}


def config_from_args(args: argparse.Namespace):
    from .sweeps import SweepConfig

    if args.cell and (args.presets is not None or args.steps is not None):
        raise UsageError("--cell replaces --presets and --steps: give one or the other")
    if args.out.exists() and not args.out.is_dir():
        raise UsageError(f"--out {args.out}: exists and is not a folder")
    if not (args.gap_threshold >= 0 and args.gap_ratio >= 1):
        raise UsageError("--gap-threshold must be >= 0 and --gap-ratio >= 1")
    train_options = {key: getattr(args, dest) for dest, key in TRAIN_FLAGS.items() if getattr(args, dest) is not None}
    return SweepConfig(world=args.world, objectives=_list(args.objectives, "objectives"),
                       presets=_list(args.presets or "tiny", "presets"), steps=_list(args.steps or "1500", "steps", int),
                       lambda_h=_list(args.lambda_h, "lambda-h", float),
                       lambda_kl=_list(args.lambda_kl, "lambda-kl", float), seeds=args.seeds, out=str(args.out),
                       keep=args.keep, workers=args.workers, device=args.device, train_options=train_options,
                       n_seqs=args.n_seqs, n_pairs=args.n_pairs, eval_seed=args.eval_seed, probe=not args.no_probe,
                       worldmodel=not args.no_worldmodel, ood=tuple(args.ood), cells=tuple(args.cell),
                       log=tuple(args.log), launcher=args.launcher, slurm=slurm_from_args(args),
                       mapping=args.mapping, n_trips=args.n_trips)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    cfg = config_from_args(args)
    if args.dry_run:
        print(dry_run_text(cfg))
        return 0
    from .cli import resolve_device_arg
    from .plots.sweep import write_sweep_outputs
    from .sweeps import run_sweep, sweep_runs

    if args.launcher == "local" or args.slurm_executor == "local":
        resolve_device_arg(args.device)  # an unknown device fails before any training (a cluster's: in its jobs)
    if args.time_limit is not None and args.launcher == "slurm":
        raise UsageError("--time-limit applies to local sweeps; a Slurm job's time is its own (--slurm-time)")
    from .errors import EXIT_TIME_LIMIT, TimeLimitReached

    try:
        records = run_sweep(cfg, progress=progress_enabled(args), deadline=deadline_of(args.time_limit))
    except TimeLimitReached as exc:
        print(f"stopped: {exc}")
        return EXIT_TIME_LIMIT
    written = write_sweep_outputs(cfg, records, sweep_runs(cfg), Path(cfg.out), figures=not args.no_figures,
                            gap_threshold=args.gap_threshold, gap_ratio=args.gap_ratio)
    print(report_text(cfg, records, written["beats"], written["rows"]))
    if written["beats_matched"]:
        from .plots.sweep import MATCHED_NOTE
        from .tables import beats_text

        print(f"\nAt matched validation loss. {MATCHED_NOTE}\n\n{beats_text(written['beats_matched'])}")
    print("wrote " + ", ".join(str(p) for p in written["paths"]))
    return 0


_STARTED = __import__("time").time()


def deadline_of(minutes: float | None) -> float | None:
    """``time.time()`` at which ``--time-limit MINUTES`` (counted from the command's start)
    runs out; None without a limit."""
    import math

    if minutes is None:
        return None
    if not (math.isfinite(minutes) and minutes > 0):
        raise UsageError(f"--time-limit must be a positive number of minutes, got {minutes}")
    return _STARTED + 60.0 * float(minutes)


# --------------------------------------------------------------------------------------
# text
# --------------------------------------------------------------------------------------
def dry_run_text(cfg) -> str:
    from .sweeps import plan
    from .tables import format_table

    rows = []
    remaining = 0
    for spec, st in plan(cfg):
        if st.kind != "done":
            remaining += spec.steps - (st.step if st.kind == "partial" else 0)
        rows.append({"run": spec.folder, "state": st.text(spec.steps),
                     "evaluated": f"{st.evaluated}/{st.checkpoints}" if st.kind == "done" else "-",
                     "keep_every": spec.keep_every})
    counts = {k: sum(r["state"].startswith(k) for r in rows) for k in ("done", "partial", "new", "conflict")}
    head = (f"{len(rows)} runs under {cfg.out}: {counts['done']} done, {counts['partial']} partial, "
            f"{counts['new']} new" + (f", {counts['conflict']} in conflict" if counts["conflict"] else "")
            + f"; {remaining} training steps to go")
    table = format_table(rows, [("run", "run", ""), ("state", "state", ""), ("evaluated", "evaluated", ""),
                                ("keep_every", "keep every", "")])
    return f"{head}\n{table}\n(dry run: nothing trained or written)"


def report_text(cfg, records: list[dict[str, Any]], beats: list[dict[str, Any]], rows: list[dict[str, Any]]) -> str:
    from .tables import beats_text, sweep_context_text

    n_runs = len({r["run"] for r in rows})
    return (f"sweep: {n_runs} runs, {len(rows)} checkpoints evaluated (one row each in sweep.csv)\n"
            f"{sweep_context_text(cfg, records)}\n\n{beats_text(beats)}")



if __name__ == "__main__":
    run_main(main)
