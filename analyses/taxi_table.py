"""Table 1 of the NextLat paper on the taxi world, GPT vs NextLat, over several seeds.

Reproduces the world-model comparison of the NextLat paper (Teoh et al., Table 1; metrics
of Vafa et al. 2024) at laptop scale: GPT and NextLat models are trained on random walks
over a synthetic Manhattan-like street map (default 6x6), one pair per seed (same initial
weights and data within a pair), and scored on the same held-out trips:

    next-token validity, valid trajectories (legal and ending at the destination),
    sequence compression, detour robustness (random detours, p = 0.75),
    effective rank of the last block, validation loss and its gap to the exact floor.

Effective rank is reported twice, and the table says which is which: at equal steps
(final checkpoints) and at matched validation loss (per seed, each run's first kept
checkpoint reaching the lowest validation loss that both runs reach; checkpoints are kept
every ``--keep-every`` steps). Valid trajectories and compression are also reported at
those matched-loss checkpoints (``--no-matched-worldmodel`` skips them): at equal steps a
converged model is otherwise compared with an unconverged one, and the table prints the gap
to the exact floor of each objective and says so when they differ. Every number is a mean
with its standard deviation, min and max over seeds.

``--objectives gpt,nextlat,mtp`` adds the multi-token-prediction baseline (``--horizon``
extra heads; the same d as NextLat's roll-out) as a third row, trained on the same seeds.

CPU time (2 cores): the default (3 seeds x 2 objectives x 1,500 steps, tiny preset, 6x6
map) takes about 25-35 minutes: training at about 8-10 steps/s, then about a minute of
world-model metrics per model. Finished runs are reused when the script is run again.
Adding ``mtp`` adds a third run per seed (at about GPT's speed plus d small heads), so about
half as much time again. ``--seeds 1 --steps 30 --map-size 4 --min-len 2 --max-len 12`` takes about a minute.

Outputs in ``--out``:
    taxi_table.csv            mean / std / min / max over seeds, per objective
    taxi_table_runs.csv       every run's world-model record (rates with 95% Wilson intervals)
    taxi_table.tex            the summary as a booktabs LaTeX table
    rank_trajectory.csv       effective rank and validation loss at every kept checkpoint
    rank_matched.csv          the matched-loss checkpoint of every run, with its effective rank
    worldmodel.pdf/.png       the metrics of every run: the rates on one shared [0, 1] axis (bars = 95%
                              Wilson intervals), effective rank and gap to the floor beside them
    rank_training.pdf/.png    effective rank vs step and vs validation loss, every run
    maps_seed0.pdf/.png       maps rebuilt from the seed-0 models (behaviour, hidden states)
    runs/                     the checkpoints
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

#: summary columns as (key, header, format); "detour" stands for the record key of the chosen
#: ``--detour`` setting (``detour_random@0.75`` ...). Keys are record keys: world-model rates
#: and training state of the ``worldmodel`` records, ``effective_rank`` of the final ``rank``
#: records, and the matched-loss comparison (``experiments.matched_rank``) as
#: ``effective_rank_matched`` / ``matched_val_loss``.
METRICS = [("next_token", "next-token", ".3f"), ("trajectory_valid", "valid traj.", ".3f"),
           ("compression", "compression", ".3f"), ("detour", "detour", ".3f"),
           ("effective_rank", "eff. rank (equal steps)", ".2f"),
           ("effective_rank_matched", "eff. rank (matched loss)", ".2f"),
           ("matched_val_loss", "val loss at match", ".4f"),
           ("trajectory_valid_matched", "valid traj. (matched loss)", ".3f"),
           ("compression_matched", "compression (matched loss)", ".3f"),
           ("val_loss", "val loss", ".4f"), ("gap_to_floor", "gap to floor", ".4f")]
LATEX_METRICS = [("next_token", "next-token", ".3f"), ("trajectory_valid", "valid traj.", ".3f"),
                 ("compression", "compression", ".2f"), ("detour", "detour", ".3f"),
                 ("effective_rank", "eff.\\ rank (eq.\\ steps)", ".1f"),
                 ("effective_rank_matched", "eff.\\ rank (matched)", ".1f"),
                 ("val_loss", "val.\\ loss", ".3f"), ("gap_to_floor", "gap to floor", ".3f")]
#: summary columns that come from other summaries than the world-model one:
#: key -> (source, key in that source's summary)
OTHER_SOURCES = {"effective_rank": ("rank", "effective_rank"), "effective_rank_matched": ("matched", "effective_rank"),
                 "matched_val_loss": ("matched", "val_loss"),
                 "trajectory_valid_matched": ("matched_wm", "trajectory_valid"),
                 "compression_matched": ("matched_wm", "compression")}
TRAJECTORY_COLUMNS = ["name", "objective", "seed", "step", "layer", "effective_rank", "val_loss", "val_floor",
                      "gap_to_floor"]
MATCHED_COLUMNS = ["name", "objective", "seed", "step", "val_loss", "target_val_loss", "effective_rank"]
#: the rates of the world-model figure ("detour" as in METRICS); effective rank and the gap to
#: the floor are drawn beside them (``paper.table1_plot``)
FIGURE_METRICS = ["next_token", "trajectory_valid", "compression", "detour"]


def with_detour(columns: list, detour_key: str) -> list:
    """``columns`` with the placeholder ``detour`` replaced by the record key ``detour_key``."""
    out = []
    for c in columns:
        if isinstance(c, tuple):
            out.append((detour_key if c[0] == "detour" else c[0], *c[1:]))
        else:
            out.append(detour_key if c == "detour" else c)
    return out


def combined_summary(summaries: dict[str, list[dict]], metrics: list[tuple[str, str, str]]) -> list[dict]:
    """One row per objective joining ``experiments.summarise`` rows of several sources
    (``worldmodel``, ``rank``, ``matched``): ``{metric}_{mean,std,min,max}`` for every
    metric in ``metrics``, taken from the source ``OTHER_SOURCES`` names (else the
    world-model summary), plus ``n`` and ``seeds`` of the world-model summary."""
    from nextlat_probe.experiments import SUMMARY_STATS

    by_obj = {src: {row["objective"]: row for row in rows} for src, rows in summaries.items()}
    out = []
    for base in summaries["worldmodel"]:
        obj = base["objective"]
        row = {k: base[k] for k in ("objective", "n", "seeds") if k in base}
        for key, _, _ in metrics:
            src, src_key = OTHER_SOURCES.get(key, ("worldmodel", key))
            other = by_obj[src].get(obj, {})
            for stat in SUMMARY_STATS:
                row[f"{key}_{stat}"] = other.get(f"{src_key}_{stat}", float("nan"))
        out.append(row)
    return out


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="analyses/taxi_table.py",
        description="NextLat Table 1 on the taxi world, GPT vs NextLat, mean and spread over seeds; effective rank "
        "at equal steps and at matched validation loss. Writes CSV, a LaTeX table and paper figures.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--seeds", type=int, default=3, help="number of training seeds (0..N-1) per objective")
    p.add_argument("--steps", type=int, default=1500, help="training steps per run")
    p.add_argument("--preset", default="tiny", choices=("tiny", "mini", "small", "base"), help="model size")
    p.add_argument("--map-size", type=int, default=6, help="synthetic map: N avenues x N streets")
    p.add_argument("--min-len", type=int, default=None, help="shortest random walk (default: the world's, 4)")
    p.add_argument("--max-len", type=int, default=None, help="longest random walk (default: the world's, 40)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--objectives", default="gpt,nextlat",
                   help="comma-separated objectives to train and compare (gpt, nextlat, mtp)")
    p.add_argument("--horizon", type=int, default=1, help="d: NextLat's roll-out depth and MTP's number of extra heads")
    p.add_argument("--keep-every", type=int, default=None,
                   help="keep a checkpoint every N steps for the matched-loss comparison (default: steps / 10)")
    p.add_argument("--n-pairs", type=int, default=200, help="held-out (origin, destination) trips per metric")
    p.add_argument("--n-seqs", type=int, default=256, help="sequences for the effective rank")
    p.add_argument("--detour", default="random@0.75",
                   help="detour setting of the 'detour' column: {random,least_likely,second_most_likely}@{0.75,0.01}")
    p.add_argument("--no-maps", action="store_true", help="skip the map reconstruction figure")
    p.add_argument("--no-matched-worldmodel", action="store_true",
                   help="skip the world-model metrics at matched validation loss (about a minute per model)")
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

    matplotlib.use("Agg")  # the paper figures are plain matplotlib Figures; no display needed

    from nextlat_probe.analysis.worldmodel import DETOUR_KINDS, DETOUR_PROBS
    from nextlat_probe.compare import load_models, run_mapping, run_rank, run_worldmodel
    from nextlat_probe.experiments import (
        OBJECTIVES,
        matched_rank,
        rank_along_training,
        summarise,
        train_pair,
    )
    from nextlat_probe.plots import paper as P
    from nextlat_probe.records import group_by
    from nextlat_probe.tables import latex_table, mean_std_table, write_csv

    objectives = [o.strip() for o in args.objectives.split(",") if o.strip()]
    unknown = [o for o in objectives if o not in OBJECTIVES]
    if not objectives or unknown or len(set(objectives)) != len(objectives):
        raise UsageError(f"--objectives must list distinct objectives of {', '.join(OBJECTIVES)}, got {args.objectives!r}")
    detours = {f"{k}@{p:g}" for k in DETOUR_KINDS for p in DETOUR_PROBS}
    if args.detour not in detours:
        raise UsageError(f"--detour must be one of {', '.join(sorted(detours))}, got {args.detour!r}")
    detour_key = f"detour_{args.detour}"
    metrics, latex_metrics = with_detour(METRICS, detour_key), with_detour(LATEX_METRICS, detour_key)
    out: Path = args.out
    world_options = {"map_size": args.map_size, "min_len": args.min_len, "max_len": args.max_len}
    world_options = {k: v for k, v in world_options.items() if v is not None}
    runs = train_pair("taxi", seeds=range(args.seeds), steps=args.steps, out=out / "runs", world_options=world_options,
                      objectives=objectives, preset=args.preset, batch_size=args.batch_size, lr=args.lr,
                      horizon=args.horizon,
                      keep_every=keep, device=args.device, reuse=not args.retrain, progress=not args.no_progress)
    t_train = time.time() - t0

    # equal steps: the final checkpoints, every metric on the same held-out trips (records named after the runs)
    worldmodel = run_worldmodel([r.checkpoint for r in runs], n_pairs=args.n_pairs, progress=not args.no_progress)
    # and the effective rank of the last block (uncentred) of the same final checkpoints
    final_rank = run_rank([r.checkpoint for r in runs], n_seqs=args.n_seqs, layers="last", progress=not args.no_progress)
    # effective rank along training: every kept checkpoint, on the same sequences
    trajectory = rank_along_training(runs, n_seqs=args.n_seqs)
    # matched validation loss: per seed, each run's first kept checkpoint at the loss both runs reach
    matched = matched_rank(trajectory)
    # the world-model metrics again at those matched checkpoints (a converged model and an
    # unconverged one compared at equal steps is a comparison of training budgets)
    matched_wm = []
    if not args.no_matched_worldmodel:
        by_name = {r.name: r for r in runs}
        paths = [by_name[m["name"]].out_dir / (f"ckpt_step{m['step']}.pt" if m["step"] != by_name[m["name"]].step
                                               else "ckpt.pt") for m in matched]
        matched_wm = run_worldmodel([p for p in paths if p.exists()], n_pairs=args.n_pairs,
                                    progress=not args.no_progress)
    wm_keys = [k for k, _, _ in metrics if k not in OTHER_SOURCES]
    sources = {"worldmodel": summarise(worldmodel, by=("objective",), metrics=wm_keys),
               "rank": summarise(final_rank, by=("objective",), metrics=["effective_rank"]),
               "matched": summarise(matched, by=("objective",), metrics=["effective_rank", "val_loss"])}
    if matched_wm:
        sources["matched_wm"] = summarise(matched_wm, by=("objective",), metrics=["trajectory_valid", "compression"])
    summary = combined_summary(sources, [m for m in metrics if m[0] not in OTHER_SOURCES
                                         or OTHER_SOURCES[m[0]][0] in sources])

    write_csv(worldmodel, out / "taxi_table_runs.csv")
    write_csv(summary, out / "taxi_table.csv")
    write_csv(trajectory, out / "rank_trajectory.csv", TRAJECTORY_COLUMNS)
    write_csv(matched, out / "rank_matched.csv", MATCHED_COLUMNS)
    caption = (f"Taxi world ({args.map_size}$\\times${args.map_size} synthetic map, random walks), "
               f"{args.preset} models, mean $\\pm$ std over {args.seeds} seed(s). Next-token validity, valid "
               f"trajectories, compression and detour robustness ({latex_detour(args.detour)}) on {args.n_pairs} "
               f"held-out trips, final checkpoints ({args.steps} steps). Effective rank of the last block at "
               "equal steps and at matched validation loss (per seed, the first kept checkpoint reaching the "
               "lowest validation loss both runs reach).")
    (out / "taxi_table.tex").write_text(latex_table(summary, [("objective", "objective")], latex_metrics,
                                                    caption=caption, label="tab:taxi"))

    with P.paper_style():
        fig = P.table1_plot(worldmodel + final_rank, rates=with_detour(FIGURE_METRICS, detour_key))
        P.save_figure(fig, out / "worldmodel", formats=("pdf", "png"))
        fig = P.rank_training_plot(trajectory)
        P.save_figure(fig, out / "rank_training", formats=("pdf", "png"))
        if not args.no_maps:
            seed0 = load_models([r.checkpoint for r in runs if r.seed == 0])
            maps = run_mapping(seed0, n_trips=1000, n_seqs=512, layers="last", progress=not args.no_progress)
            # per model, run_mapping's records come as behaviour, then the hidden-state embeddings
            # (probe to (x, y) where the map has coordinates, then MDS): draw the map rebuilt from
            # the model's trips and the first one rebuilt from its hidden states
            shown = [rec for recs in group_by(maps, "name").values() for rec in recs[:2]]
            fig = P.map_plot(seed0[0].world.map, shown)
            P.save_figure(fig, out / "maps_seed0", formats=("pdf", "png"))

    print(f"Taxi world ({args.map_size}x{args.map_size} map), {args.seeds} seed(s) x {{{', '.join(objectives)}}}, "
          f"{args.steps} steps each; mean ± std over seeds (std blank with one seed)")
    print("World-model metrics and 'eff. rank (equal steps)': final checkpoints. 'eff. rank (matched loss)': "
          "per seed, at the lowest validation loss both runs reach ('val loss at match').")
    shown = [m for m in metrics if m[0] not in OTHER_SOURCES or OTHER_SOURCES[m[0]][0] in sources]
    print(mean_std_table(summary, ["objective", "n"], shown))
    from nextlat_probe.tables import convergence_note

    conv = convergence_note([{"name": r["objective"], "gap_to_floor": r.get("gap_to_floor_mean")} for r in summary])
    if conv:
        print(conv + " (mean over seeds; see the matched-loss columns)")
    print(f"\ntraining {t_train:.0f} s, total {time.time() - t0:.0f} s")
    print(f"wrote {out / 'taxi_table.csv'}, {out / 'taxi_table_runs.csv'}, {out / 'taxi_table.tex'}, "
          f"{out / 'rank_trajectory.csv'}, {out / 'rank_matched.csv'} and figures in {out}", file=sys.stderr)
    return 0


def latex_detour(key: str) -> str:
    kind, p = key.split("@")
    return f"{kind.replace('_', ' ')} detours, $p = {p}$"


if __name__ == "__main__":
    from nextlat_probe.cli import run_main

    run_main(main)
