"""The NextLat paper's other tasks at laptop scale, GPT vs NextLat vs MTP, over several seeds.

    .venv/bin/python analyses/task_table.py --task a5          # A5 state tracking, length generalisation
    .venv/bin/python analyses/task_table.py --task pathstar    # path-star planning G(2, 4)
    .venv/bin/python analyses/task_table.py --task a5 --scale gpu --time-limit 55   # GPU, in chunks; rerun until done

**A5** (``--world a5``, tagging form: inputs g_1..g_T only, the output at t scored against
the running product s_t): every objective is trained at length 12 (rotary positions,
context 64, NextLat with lambda_KL = 0 as in the paper), then scored at lengths
``--lengths`` (default 12, 18, 24, 36): token accuracy and whole-sequence accuracy of the
model's own head and, for NextLat, of p_psi unrolled as a recurrent model from the
transformer's latent at position 4 (``nextlat_probe.analysis.a5eval``).

**Path-star** (``--world pathstar``, Bachmann & Nagarajan 2024; the reference's
"degree 2, path 5" task by default): exact-path accuracy of greedy paths, first-step
accuracy (the step the Clever-Hans shortcut gets wrong) and the share of outputs that are a
valid path to some leaf (``nextlat_probe.analysis.pathstar``).

Every number is a mean with its standard deviation, min and max over seeds; every run's
records (with validation loss and gap to the exact floor) are written too. The table says
how far the runs trained: at this scale none of the objectives may solve the task, and the
table reports that as it is.

Outputs in ``--out``:
    {task}_table.csv / .md     mean / std / min / max over seeds, per objective (and length)
    {task}_records.json        every run's taskeval records
    {task}.pdf/.png            the paper figure (A5: whole-sequence accuracy vs length)
    {task}.html                the interactive figure
    runs/                      the checkpoints (finished runs are reused)

CPU time (2 cores, tiny preset): about 1.5-2 minutes per 1,500-step run plus under a minute
of evaluation per task; the defaults (3 objectives x 3 seeds) take about 20-30 minutes per
task.

**GPU mode** (``--scale gpu``): the same table at the scale the tasks need (``SCALES``:
the ``small`` preset, 20,000 steps per run, 3 seeds, 2,048 evaluation words / graphs;
``--preset mini`` for a cheaper pass). Run it in time-limited chunks: ``--time-limit
MINUTES`` (counted from the command's start) stops the run in progress cleanly with a
resumable checkpoint and exits with code 75; the same command then reuses the finished
runs, resumes the stopped one bit for bit and goes on; once every run is trained it
evaluates and writes the table (a few minutes on a GPU). Untested on a GPU so far.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

_STARTED = time.monotonic()

TASKS = {
    "a5": dict(world="a5", world_options={}, train=dict(lr=3e-3)),
    "pathstar": dict(world="pathstar", world_options={"degree": 2, "length": 4, "nodes": 50}, train=dict(lr=1e-3)),
}

#: what each scale trains (the flags override): cpu = the laptop table, gpu = the paper's scale
SCALES = {"cpu": dict(preset="tiny", steps=1500, seeds=3, n_seqs=512),
          "gpu": dict(preset="small", steps=20000, seeds=3, n_seqs=2048)}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--task", choices=tuple(TASKS), required=True)
    p.add_argument("--objectives", default="gpt,nextlat,mtp", help="comma-separated objectives (default all three)")
    p.add_argument("--scale", choices=tuple(SCALES), default="cpu",
                   help="cpu: tiny, 1,500 steps; gpu: small, 20,000 steps, 2,048 evaluation sequences (in "
                        "--time-limit chunks)")
    p.add_argument("--seeds", type=int, default=None, help="training seeds 0..N-1 per objective (default 3)")
    p.add_argument("--steps", type=int, default=None, help="training steps per run (default: the scale's)")
    p.add_argument("--preset", default=None, choices=("tiny", "mini", "small", "base"),
                   help="model size (default: the scale's; mini is the cheaper GPU option)")
    p.add_argument("--time-limit", type=float, default=None, metavar="MINUTES",
                   help="stop cleanly before this many minutes (counted from the command's start) with resumable "
                        "checkpoints and exit with code 75; the same command continues")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=None, help="peak learning rate (default: a5 3e-3, pathstar 1e-3)")
    p.add_argument("--horizon", type=int, default=1, help="NextLat's roll-out depth and MTP's extra heads")
    p.add_argument("--lengths", default="12,18,24,36", help="A5 evaluation lengths")
    p.add_argument("--degree", type=int, default=None, help="pathstar: arms (default 2)")
    p.add_argument("--arm-length", type=int, default=None, help="pathstar: nodes per arm (default 4)")
    p.add_argument("--n-seqs", type=int, default=None, help="evaluation words per length (A5) or graphs (pathstar); "
                   "default: the scale's")
    p.add_argument("--device", default="auto")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--out", type=Path, default=None, help="output folder (default runs/analyses/{task})")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from nextlat_probe.cli import UsageError
    from nextlat_probe.experiments import OBJECTIVES

    objectives = [o.strip() for o in args.objectives.split(",") if o.strip()]
    bad = [o for o in objectives if o not in OBJECTIVES]
    if bad or not objectives:
        raise UsageError(f"--objectives: unknown {', '.join(bad) or '(none)'}; choose from {', '.join(OBJECTIVES)}")
    for key, value in SCALES[args.scale].items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if args.seeds < 1 or args.steps < 1 or args.n_seqs < 1:
        raise UsageError("--seeds, --steps and --n-seqs must be positive")
    limit = None
    if args.time_limit is not None:
        import math

        if not (math.isfinite(args.time_limit) and args.time_limit > 0):
            raise UsageError(f"--time-limit must be a positive number of minutes, got {args.time_limit}")
        from nextlat_probe.training.trainer import TimeLimit

        limit = TimeLimit(60.0 * args.time_limit, start=_STARTED)
    task = TASKS[args.task]
    opts = dict(task["world_options"])
    if args.degree is not None:
        opts["degree"] = args.degree
    if args.arm_length is not None:
        opts["length"] = args.arm_length
    out = args.out or Path("runs/analyses") / args.task
    out.mkdir(parents=True, exist_ok=True)
    lengths = [int(x) for x in args.lengths.split(",") if x.strip()]

    from nextlat_probe.compare import run_taskeval
    from nextlat_probe.experiments import train_pair
    from nextlat_probe.records import to_jsonable

    t0 = time.time()
    say = (lambda m: None) if args.no_progress else (lambda m: print(f"[{args.task}] {m}", file=sys.stderr, flush=True))
    from nextlat_probe.errors import EXIT_TIME_LIMIT, TimeLimitReached

    # the gpu scale saves every ~5% of a run, so a job killed without warning loses at most that
    # much (a --time-limit stop saves the step reached); part of the run's identity, so it
    # depends on the scale alone, never on the limit
    save_every = args.steps if args.scale == "cpu" else max(1, args.steps // 20)
    try:
        runs = train_pair(task["world"], seeds=range(args.seeds), steps=args.steps, out=out / "runs",
                          objectives=objectives, world_options=opts, progress=not args.no_progress, log=say,
                          preset=args.preset, batch_size=args.batch_size, lr=args.lr or task["train"]["lr"],
                          horizon=args.horizon, device=args.device, eval_every=max(1, args.steps // 5),
                          save_every=save_every, time_limit=limit)
    except TimeLimitReached as exc:
        print(f"stopped: {exc}")
        return EXIT_TIME_LIMIT
    t_train = time.time() - t0
    say(f"training done in {t_train:.0f} s; evaluating")
    records = run_taskeval([r.checkpoint for r in runs], lengths=lengths if args.task == "a5" else None,
                           n_seqs=args.n_seqs, seed=0, progress=not args.no_progress)
    names = {str(r.checkpoint): r for r in runs}
    for rec in records:  # the run's seed in the record (run folders are objective-seedN)
        run = next((r for p, r in names.items() if rec["name"] == r.name or rec.get("source") == p), None)
        if run is not None:
            rec["seed"] = run.seed
    (out / f"{args.task}_records.json").write_text(json.dumps(to_jsonable(records), indent=1))
    table = summary_table(records, args.task)
    (out / f"{args.task}_table.md").write_text(table + "\n")
    print(table)
    from nextlat_probe.plots.interactive import taskeval_figure, write_html
    from nextlat_probe.plots.paper import save_figure, taskeval_plot

    write_html(taskeval_figure(records), out / f"{args.task}.html", title=f"{args.task} task evaluation")
    save_figure(taskeval_plot(records, column="double"), out / args.task, formats=("pdf", "png"))
    print(f"\n{len(runs)} runs ({args.seeds} seeds x {', '.join(objectives)}), {args.steps} steps each, "
          f"preset {args.preset}; training {t_train:.0f} s, total {time.time() - t0:.0f} s. Outputs in {out}")
    return 0


def summary_table(records: list[dict], task: str) -> str:
    """Markdown: mean ± std [min, max] over seeds per objective (A5: and variant, length)."""
    from nextlat_probe.experiments import summarise
    from nextlat_probe.records import value
    from nextlat_probe.tables import convergence_note, protocol_note

    flat = []
    for r in records:
        row = {"objective": r["objective"], "variant": r["variant"], "seed": r.get("seed"),
               "val_loss": r["val_loss"], "gap_to_floor": r["gap_to_floor"]}
        for k, v in r["metrics"].items():
            if isinstance(v, dict) and "value" in v:
                row[k] = value(v)
            elif k == "length":
                row[k] = v
        flat.append(row)
    if task == "a5":
        keys, metrics = ["objective", "variant", "length"], ["token_accuracy", "sequence_accuracy", "gap_to_floor"]
    else:
        keys, metrics = ["objective", "variant"], ["exact_path", "first_step", "valid_path", "forced_token",
                                                   "gap_to_floor"]
    rows = summarise(flat, keys, metrics)

    def cell(row, m):
        mu, sd, lo, hi = (row.get(f"{m}_{s}") for s in ("mean", "std", "min", "max"))
        if mu is None or mu != mu:
            return "-"
        return f"{mu:.3f} ± {0.0 if sd != sd else sd:.3f} [{lo:.3f}, {hi:.3f}]"

    head = keys + ["seeds"] + metrics
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in rows:
        lines.append("| " + " | ".join([str(row.get(k)) for k in keys] + [str(row.get("n"))]
                                       + [cell(row, m) for m in metrics]) + " |")
    per_objective = {}
    for r in records:
        per_objective.setdefault(r["objective"], []).append(r["gap_to_floor"])
    conv = convergence_note([{"name": o, "gap_to_floor": sum(g) / len(g)} for o, g in per_objective.items()
                             if all(x is not None for x in g)])
    return "\n".join(lines + ["", "cells: mean ± std [min, max] over seeds", protocol_note(records)]
                     + ([conv + " (mean over seeds)"] if conv else []))


if __name__ == "__main__":
    from nextlat_probe.cli import run_main

    run_main(main)
