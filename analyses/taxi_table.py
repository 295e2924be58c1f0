"""Table 1 of the NextLat paper on the taxi world, GPT vs NextLat, over several seeds.

Reproduces the world-model comparison of the NextLat paper (Teoh et al., Table 1; metrics
of Vafa et al. 2024) at laptop scale: GPT and NextLat models are trained on random walks
over a synthetic Manhattan-like street map (default 6x6), one pair per seed (same initial
weights and data within a pair), and scored on the same held-out trips:

    next-token validity, valid trajectories (legal and ending at the destination),
    sequence compression, detour robustness (random detours, p = 0.75),
    effective rank of the final layer, validation loss and its gap to the exact floor.

Effective rank is reported twice, and the table says which is which: at equal steps
(final checkpoints) and at matched validation loss (per seed, each run's first kept
checkpoint reaching the lowest validation loss that both runs reach; checkpoints are kept
every ``--keep-every`` steps). Every number is a mean with its standard deviation, min
and max over seeds.

CPU time (2 cores): the default (3 seeds x 2 objectives x 1,500 steps, tiny preset, 6x6
map) takes about 25-35 minutes: training at about 8-10 steps/s, then about a minute of
world-model metrics per model. Finished runs are reused when the script is run again.
``--seeds 1 --steps 30 --map-size 4 --min-len 2 --max-len 12`` takes about a minute.

Outputs in ``--out``:
    taxi_table.csv            mean / std / min / max over seeds, per objective
    taxi_table_runs.csv       every run's numbers (with 95% Wilson intervals of the rates)
    taxi_table.tex            the summary as a booktabs LaTeX table
    rank_trajectory.csv       effective rank and validation loss at every kept checkpoint
    worldmodel.pdf/.png       the metrics per objective (mean, bars = min..max over seeds)
    rank_training.pdf/.png    effective rank vs step and vs validation loss, every run
    maps_seed0.pdf/.png       maps rebuilt from the seed-0 models (behaviour, hidden states)
    runs/                     the checkpoints
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

METRICS = [("next_token", "next-token", ".3f"), ("valid_trajectory", "valid traj.", ".3f"),
           ("compression", "compression", ".3f"), ("detour", "detour", ".3f"),
           ("effective_rank", "eff. rank (equal steps)", ".2f"),
           ("effective_rank_matched", "eff. rank (matched loss)", ".2f"),
           ("matched_val_loss", "val loss at match", ".4f"),
           ("val_loss", "val loss", ".4f"), ("val_gap", "gap to floor", ".4f")]
LATEX_METRICS = [("next_token", "next-token", ".3f"), ("valid_trajectory", "valid traj.", ".3f"),
                 ("compression", "compression", ".2f"), ("detour", "detour", ".3f"),
                 ("effective_rank", "eff.\\ rank (eq.\\ steps)", ".1f"),
                 ("effective_rank_matched", "eff.\\ rank (matched)", ".1f"),
                 ("val_loss", "val.\\ loss", ".3f"), ("val_gap", "gap to floor", ".3f")]
RUN_COLUMNS = ["run", "objective", "seed", "step", "next_token", "next_token_low", "next_token_high",
               "valid_trajectory", "valid_trajectory_low", "valid_trajectory_high", "legal_trajectory",
               "compression", "compression_low", "compression_high", "distinction_precision", "distinction_recall",
               "detour", "detour_low", "detour_high", "effective_rank", "effective_rank_matched", "matched_step",
               "matched_val_loss", "target_val_loss", "val_loss", "val_floor", "val_gap"]
FIGURE_METRICS = [("next_token", "next-token"), ("valid_trajectory", "valid traj."), ("compression", "compression"),
                  ("detour", "detour"), ("effective_rank", "eff. rank (equal steps)"),
                  ("effective_rank_matched", "eff. rank (matched loss)")]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="analyses/taxi_table.py",
        description="NextLat Table 1 on the taxi world, GPT vs NextLat, mean and spread over seeds; effective rank "
        "at equal steps and at matched validation loss. Writes CSV, a LaTeX table and paper figures.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--seeds", type=int, default=3, help="number of training seeds (0..N-1) per objective")
    p.add_argument("--steps", type=int, default=1500, help="training steps per run")
    p.add_argument("--preset", default="tiny", choices=("tiny", "mini", "small"), help="model size")
    p.add_argument("--map-size", type=int, default=6, help="synthetic map: N avenues x N streets")
    p.add_argument("--min-len", type=int, default=None, help="shortest random walk (default: the world's, 4)")
    p.add_argument("--max-len", type=int, default=None, help="longest random walk (default: the world's, 40)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--horizon", type=int, default=1, help="NextLat roll-out depth d")
    p.add_argument("--keep-every", type=int, default=None,
                   help="keep a checkpoint every N steps for the matched-loss comparison (default: steps / 10)")
    p.add_argument("--n-pairs", type=int, default=200, help="held-out (origin, destination) trips per metric")
    p.add_argument("--n-seqs", type=int, default=256, help="sequences for the effective rank")
    p.add_argument("--detour", default="random@0.75",
                   help="detour setting of the 'detour' column: {random,least_likely,second_most_likely}@{0.75,0.01}")
    p.add_argument("--no-maps", action="store_true", help="skip the map reconstruction figure")
    p.add_argument("--device", default="auto", help="training device: auto, cpu or cuda")
    p.add_argument("--retrain", action="store_true", help="train again even when finished runs exist")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--out", type=Path, default=Path("runs/analyses/taxi_table"), help="output folder")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from nextlat_probe.cli import UsageError

    if args.seeds < 1 or args.steps < 1 or args.n_pairs < 1 or args.n_seqs < 1:
        raise UsageError("--seeds, --steps, --n-pairs and --n-seqs must be positive")
    if args.map_size < 2:
        raise UsageError(f"--map-size must be at least 2, got {args.map_size}")
    keep = args.keep_every if args.keep_every is not None else max(1, args.steps // 10)
    if keep < 1:
        raise UsageError("--keep-every must be positive")
    t0 = time.time()
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from nextlat_probe.analysis.worldmodel import DETOUR_KINDS, DETOUR_PROBS
    from nextlat_probe.experiments import (
        latex_table,
        matched_rank,
        mean_std_table,
        rank_along_training,
        summarise,
        tag_records,
        taxi_metrics,
        train_pair,
        write_csv,
    )
    from nextlat_probe.plots import paper as P
    from nextlat_probe.worldmodel import evaluate_checkpoints

    detours = {f"{k}@{p:g}" for k in DETOUR_KINDS for p in DETOUR_PROBS}
    if args.detour not in detours:
        raise UsageError(f"--detour must be one of {', '.join(sorted(detours))}, got {args.detour!r}")
    out: Path = args.out
    world_options = {"map_size": args.map_size, "min_len": args.min_len, "max_len": args.max_len}
    world_options = {k: v for k, v in world_options.items() if v is not None}
    runs = train_pair("taxi", seeds=range(args.seeds), steps=args.steps, out=out / "runs", world_options=world_options,
                      preset=args.preset, batch_size=args.batch_size, lr=args.lr, horizon=args.horizon,
                      keep_every=keep, device=args.device, reuse=not args.retrain, progress=not args.no_progress)
    t_train = time.time() - t0

    # equal steps: the final checkpoints, every metric on the same held-out trips
    records = tag_records(evaluate_checkpoints([r.checkpoint for r in runs], n_pairs=args.n_pairs,
                                               rank_seqs=args.n_seqs), runs)
    rows = [{**taxi_metrics(rec, detour=args.detour), "run": rec["run"], "seed": rec["seed"]} for rec in records]
    # matched validation loss: effective rank along training, compared per seed
    trajectory = rank_along_training(runs, n_seqs=args.n_seqs)
    matched = {m["run"]: m for m in matched_rank(trajectory)}
    for row in rows:
        m = matched.get(row["run"], {})
        row.update(effective_rank_matched=m.get("effective_rank"), matched_step=m.get("step"),
                   matched_val_loss=m.get("val_loss"), target_val_loss=m.get("target_val_loss"))
    summary = summarise(rows, by=("objective",), metrics=[m for m, _, _ in METRICS])

    write_csv(rows, out / "taxi_table_runs.csv", RUN_COLUMNS)
    write_csv(summary, out / "taxi_table.csv")
    write_csv(trajectory, out / "rank_trajectory.csv",
              ["run", "objective", "seed", "step", "layer", "effective_rank", "val_loss", "val_floor", "val_gap"])
    caption = (f"Taxi world ({args.map_size}$\\times${args.map_size} synthetic map, random walks), "
               f"{args.preset} models, mean $\\pm$ std over {args.seeds} seed(s). Next-token validity, valid "
               f"trajectories, compression and detour robustness ({latex_detour(args.detour)}) on {args.n_pairs} "
               f"held-out trips, final checkpoints ({args.steps} steps). Effective rank of the final layer at "
               "equal steps and at matched validation loss (per seed, the first kept checkpoint reaching the "
               "lowest validation loss both runs reach).")
    (out / "taxi_table.tex").write_text(latex_table(summary, [("objective", "objective")], LATEX_METRICS,
                                                    caption=caption, label="tab:taxi"))

    with P.paper_style():
        fig_rows = [{"model": s["objective"], "objective": s["objective"],
                     **{label: s[f"{m}_mean"] for m, label in FIGURE_METRICS},
                     **{f"{label}_low": s[f"{m}_min"] for m, label in FIGURE_METRICS},
                     **{f"{label}_high": s[f"{m}_max"] for m, label in FIGURE_METRICS}} for s in summary]
        fig, axes = P.new_figure("double", rows=2, cols=3, aspect=0.45)
        P.worldmodel_plot(fig_rows, ax=axes, columns=[label for _, label in FIGURE_METRICS])
        P.save_figure(fig, out / "worldmodel", formats=("pdf", "png"))
        plt.close(fig)
        fig = P.rank_training_plot(trajectory, group="run")
        P.save_figure(fig, out / "rank_training", formats=("pdf", "png"))
        plt.close(fig)
        if not args.no_maps:
            from nextlat_probe.analysis.mapping import map_from_checkpoint, panels_for
            from nextlat_probe.checkpoint import load_checkpoint

            panels, true_map = [], None
            for run in (r for r in runs if r.seed == 0):
                ck = load_checkpoint(run.checkpoint)
                recon, rep = map_from_checkpoint(ck, n_trips=1000, n_seqs=512)
                true_map = ck.world.map
                for p in panels_for(recon) + panels_for(rep)[:1]:
                    panels.append({**p, "title": f"{run.objective}: {p['title'].split(':')[0]}"})
            fig, axes = P.new_figure("double", rows=max(1, len(panels) // 2), cols=2, aspect=0.9)
            P.map_plot(true_map, panels, ax=axes)
            P.save_figure(fig, out / "maps_seed0", formats=("pdf", "png"))
            plt.close(fig)

    print(f"Taxi world ({args.map_size}x{args.map_size} map), {args.seeds} seed(s) x {{gpt, nextlat}}, "
          f"{args.steps} steps each; mean ± std over seeds (std blank with one seed)")
    print("World-model metrics and 'eff. rank (equal steps)': final checkpoints. 'eff. rank (matched loss)': "
          "per seed, at the lowest validation loss both runs reach ('val loss at match').")
    print(mean_std_table(summary, ["objective", "n"], METRICS))
    print(f"\ntraining {t_train:.0f} s, total {time.time() - t0:.0f} s")
    print(f"wrote {out / 'taxi_table.csv'}, {out / 'taxi_table_runs.csv'}, {out / 'taxi_table.tex'}, "
          f"{out / 'rank_trajectory.csv'} and figures in {out}", file=sys.stderr)
    return 0


def latex_detour(key: str) -> str:
    kind, p = key.split("@")
    return f"{kind.replace('_', ' ')} detours, $p = {p}$"


if __name__ == "__main__":
    from nextlat_probe.cli import run_main

    run_main(main)
