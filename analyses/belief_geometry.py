"""Belief-state geometry on Mess3, GPT vs NextLat, over several seeds.

Reproduces the experiment of Shai et al. (2024), "Transformers represent belief state
geometry in their residual stream", for both objectives: small transformers are trained
on the Mess3 process (x = 0.05, a = 0.85), and a linear probe (closed form, intercept,
ridge strength chosen by cross-validation) maps each layer's hidden states, and all
blocks concatenated, to the exact Bayesian belief over the 3 hidden states. Probes are
fitted and scored on different sequences; every seed's models are scored on the same
sequences. Reported per objective and layer: belief MSE, weighted R^2, the
shuffled-belief control R^2, and the validation loss with its gap to the exact floor, as
mean, standard deviation, min and max over seeds (all runs at equal training steps).

CPU time (2 cores): the default (3 seeds x 2 objectives x 1,000 steps, tiny preset,
10-token sequences) takes about 10-15 minutes, almost all of it training; finished runs
are reused when the script is run again. ``--seeds 1 --steps 30`` takes under a minute.

Outputs in ``--out``:
    belief_geometry.csv        mean / std / min / max over seeds, per objective and layer
    belief_geometry_runs.csv   every seed's numbers
    belief_geometry.tex        the summary as a booktabs LaTeX table
    belief_simplex.pdf/.png    exact beliefs and the last layer's probed beliefs (seed 0)
    probe_r2.pdf/.png          probe R^2 per layer, every run
    runs/                      the checkpoints
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

#: (record key, header, format): probe metrics and the training state of the same records
METRICS = [("mse", "belief MSE", ".3g"), ("r2", "R^2", ".4f"), ("control_r2", "shuffled R^2", ".3f"),
           ("val_loss", "val loss", ".4f"), ("gap_to_floor", "gap to floor", ".4f")]
LATEX_METRICS = [("mse", "belief MSE", ".2e"), ("r2", "$R^2$", ".4f"), ("control_r2", "shuffled $R^2$", ".3f"),
                 ("val_loss", "val.\\ loss", ".4f"), ("gap_to_floor", "gap to floor", ".4f")]
#: columns of the per-run CSV (``tables.write_csv`` of the probe records)
RUN_COLUMNS = ["name", "objective", "seed", "step", "layer", "mse", "r2", "control_r2", "kl", "val_loss", "val_floor",
               "gap_to_floor", "embedding_baseline_r2"]
#: held-out (true, probed) belief points kept for the simplex figure (last layer)
KEEP_POINTS = 3000


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="analyses/belief_geometry.py",
        description="Mess3 belief-state geometry (Shai et al. 2024), GPT vs NextLat: probe MSE / R^2 per layer, "
        "mean and spread over seeds; CSV, LaTeX table and paper figures.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--seeds", type=int, default=3, help="number of training seeds (0..N-1) per objective")
    p.add_argument("--steps", type=int, default=1000, help="training steps per run")
    p.add_argument("--preset", default="tiny", choices=("tiny", "mini", "small", "base"), help="model size")
    p.add_argument("--seq-len", type=int, default=10, help="tokens per sequence (Shai et al.: 10)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--horizon", type=int, default=1, help="NextLat roll-out depth d")
    p.add_argument("--n-train", type=int, default=512, help="probe training sequences")
    p.add_argument("--n-test", type=int, default=256, help="held-out probe test sequences")
    p.add_argument("--device", default="auto", help="training device: auto, cpu or cuda")
    p.add_argument("--retrain", action="store_true", help="train again even when finished runs exist")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--out", type=Path, default=Path("runs/analyses/belief_geometry"), help="output folder")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from nextlat_probe.cli import UsageError

    if args.seeds < 1 or args.steps < 1:
        raise UsageError("--seeds and --steps must be positive")
    if args.seq_len < 2 or args.n_train < 2 or args.n_test < 1:
        raise UsageError("--seq-len and --n-train must be >= 2, --n-test >= 1")
    t0 = time.time()
    import matplotlib

    matplotlib.use("Agg")  # the paper figures are plain matplotlib Figures; no display needed

    from nextlat_probe.compare import run_probe
    from nextlat_probe.experiments import summarise, train_pair
    from nextlat_probe.plots import paper as P
    from nextlat_probe.records import select
    from nextlat_probe.tables import latex_table, mean_std_table, write_csv

    out: Path = args.out
    runs = train_pair("mess3", seeds=range(args.seeds), steps=args.steps, out=out / "runs", preset=args.preset,
                      seq_len=args.seq_len, batch_size=args.batch_size, lr=args.lr, horizon=args.horizon,
                      device=args.device, reuse=not args.retrain, progress=not args.no_progress)
    t_train = time.time() - t0
    # one probe record per run and layer (name = the run, e.g. gpt-seed0), all on the same sequences:
    # the first n_train fit, the last n_test score
    records = run_probe([r.checkpoint for r in runs], n_seqs=args.n_train + args.n_test, n_test=args.n_test,
                        layers="all", keep_points=KEEP_POINTS, seed=0, progress=not args.no_progress)
    summary = summarise(records, by=("objective", "layer"), metrics=[m for m, _, _ in METRICS])

    write_csv(records, out / "belief_geometry_runs.csv", RUN_COLUMNS)
    write_csv(summary, out / "belief_geometry.csv")
    caption = (f"Linear probes from hidden states to the exact Mess3 belief (held-out sequences), "
               f"mean $\\pm$ std over {args.seeds} seed(s), all runs at {args.steps} steps "
               f"({args.preset} preset). Embed = token + position embeddings; concat = all blocks.")
    (out / "belief_geometry.tex").write_text(
        latex_table(summary, [("objective", "objective"), ("layer", "layer")], LATEX_METRICS, caption=caption,
                    label="tab:belief-geometry"))

    # the seed-0 models' probed beliefs (their records with points: the last layer), after the exact ones
    seed0 = [r for r in select(records, seed=0) if "points" in r["metrics"]]
    if seed0:
        with P.paper_style():
            fig = P.belief_plot(seed0, column="double")
            P.save_figure(fig, out / "belief_simplex", formats=("pdf", "png"))
            fig = P.probe_r2_plot(records, column="single")
            P.save_figure(fig, out / "probe_r2", formats=("pdf", "png"))

    print(f"Mess3 belief probes, {args.seeds} seed(s) x {{gpt, nextlat}}, {args.steps} steps each "
          f"(equal steps; mean ± std over seeds, std blank with one seed)")
    print(mean_std_table(summary, ["objective", "layer", "n"], METRICS))
    print(f"\ntraining {t_train:.0f} s, total {time.time() - t0:.0f} s")
    print(f"wrote {out / 'belief_geometry.csv'}, {out / 'belief_geometry_runs.csv'}, {out / 'belief_geometry.tex'}, "
          f"{out / 'belief_simplex.pdf'}, {out / 'probe_r2.pdf'}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    from nextlat_probe.cli import run_main

    run_main(main)
