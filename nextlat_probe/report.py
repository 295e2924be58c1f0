"""The comparison report: ``python -m nextlat_probe.report CKPT [CKPT ...] --out DIR``.

Runs every analysis that applies to the checkpoints' world on the same held-out sequences
and writes

    DIR/report.html     one offline page: summary table, then each analysis's figures
    DIR/summary.json    every number
    DIR/figures/*.pdf, *.svg, *.png   paper figures (matplotlib)

and prints the summary table. Validation loss and its gap to the exact floor stand beside
every representation metric, and effective rank is also compared at matched validation
loss when the runs kept intermediate checkpoints (``--keep-every``).
"""
from __future__ import annotations

import argparse
import html
import json
import sys
import time
from pathlib import Path
from typing import Any

from .cli import UsageError, format_table, run_main, to_jsonable

SUMMARY_COLUMNS = [
    ("checkpoint", "checkpoint", ""),
    ("objective", "objective", ""),
    ("step", "step", "d"),
    ("val_loss", "val loss", ".4f"),
    ("val_gap", "gap to floor", ".4f"),
    ("effective_rank", "eff. rank", ".2f"),
    ("probe_r2", "belief R^2", ".4f"),
    ("probe_mse", "belief MSE", ".3g"),
    ("transition_err1", "post-hoc err@1", ".4f"),
    ("belief_ratio", "within-belief var", ".4f"),
]
STATE_COLUMN = ("state_accuracy", "state probe acc.", ".3f")
TAXI_COLUMNS = [
    ("next_token", "next-token", ".3f"),
    ("valid_trajectory", "valid traj.", ".3f"),
    ("compression", "compression", ".3f"),
    ("detour", "detour", ".3f"),
]

CAPTIONS = {
    "training": "Validation loss during training with the exact floor (dashed): the cross-entropy of the world's exact predictive distribution on the same validation tokens. The gap is what the model has still to learn.",
    "position": "Loss per position on held-out sequences next to the exact per-position floor. Early positions carry more uncertainty; a model that tracks the belief state follows the floor.",
    "rank": "Singular-value spectra (left) and effective rank (Roy & Vetterli) per layer (right), uncentred, on the same sequences. Lower = more compact hidden states. Read it with the validation loss: an undertrained model also looks compact.",
    "rank_training": "Effective rank of the last layer along training, against step (left) and against validation loss (right). The right panel is the matched-loss comparison.",
    "probe_simplex": "Exact belief states (left) and the linear-probe predictions from the last layer on held-out sequences, coloured by the true belief. A model whose hidden states linearly encode the belief reproduces the geometry.",
    "probe_r2": "Weighted R^2 of the linear belief probe on held-out sequences per layer (concat = all blocks together). The shuffled-belief control shows what a probe reaches without a real correspondence.",
    "transition": "Relative error ||ĥ - h||² / ||h - mean h||² of dynamics rolled out from h_t with the true next tokens, per horizon. Post-hoc dynamics are fitted on frozen hidden states of training sequences (comparable across GPT and NextLat); 'own' is NextLat's p_psi.",
    "worldmodel": "World-model metrics of the taxi world (Vafa et al.; NextLat Table 1) with 95% intervals: next-token validity, valid greedy trajectories, sequence compression, distinction precision/recall, detour robustness.",
    "maps": "True street map (grey) with the maps rebuilt from each model: from generated trajectories (invented edges curved and coloured) and from hidden states (mean state per intersection embedded in 2-D).",
}


def _stage(bar, name: str) -> None:
    if bar is not None:
        bar.set_description(f"report: {name}")


def _metrics_path(ck) -> Path | None:
    p = Path(ck.path).parent / "metrics.jsonl"
    return p if p.is_file() else None


def _intermediate(ck) -> list[Path]:
    """Intermediate checkpoints of the same run (``ckpt_step{N}.pt``), by step."""
    from .experiments import intermediate_checkpoints

    return intermediate_checkpoints(Path(ck.path).parent)


def _summary_table_html(rows: list[dict[str, Any]], columns) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for _, h, _ in columns)
    body = []
    for r in rows:
        cells = []
        for k, _, f in columns:
            v = r.get(k)
            txt = "-" if v is None else (format(v, f) if f and isinstance(v, (int, float)) else str(v))
            cells.append(f"<td>{html.escape(txt)}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    return f"<table class='summary'><tr>{head}</tr>{''.join(body)}</table>"


def run_report(
    ckpts: list[Any],
    out: str | Path,
    n_seqs: int = 256,
    seed: int = 0,
    device: str = "cpu",
    horizon: int = 8,
    fit_steps: int = 600,
    figures: bool = True,
    progress: bool = True,
    quiet: bool = False,
) -> dict[str, Any]:
    """Run every applicable analysis; write report.html, summary.json, figures/. Returns
    the summary dict (what summary.json holds)."""
    from tqdm.auto import tqdm

    from .analysis.common import ensure_loaded, load_all, shared_tokens
    from .analysis.losses import matched_loss_comparison, position_losses
    from .plots import interactive as I
    from .plots.page import write_page
    from .plots.style import read_metrics
    from .probe import probe_checkpoints
    from .rank import rank_checkpoints
    from .transition import transition_checkpoints

    t0 = time.time()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    loaded = ensure_loaded(ckpts, device=device)
    names = [ck.name for ck in loaded]
    if len(set(names)) != len(names):  # e.g. the same file twice: number the labels
        for i, ck in enumerate(loaded):
            ck.label = f"{ck.name}#{i + 1}"
    kinds = {ck.world.spec().get("kind") for ck in loaded}
    # world-model metrics need origin and destination tokens (visible-origin taxi world)
    is_taxi = kinds == {"taxi"} and all(getattr(ck.world, "origin", "visible") == "visible" for ck in loaded)
    objectives = {ck.name: ck.objective for ck in loaded}
    stages = ["training curves", "per-position loss", "effective rank", "belief probes", "transition consistency"]
    if is_taxi:
        stages += ["world-model metrics", "maps"]
    bar = tqdm(total=len(stages), disable=not progress, desc="report")
    summary: dict[str, Any] = {"checkpoints": [], "world": sorted(k for k in kinds if k), "n_seqs": n_seqs, "seed": seed}
    sections: list[tuple[str, str, Any]] = []
    paper: list[tuple[str, Any, tuple, dict]] = []  # (file stem, function, args, kwargs)

    # 1. training curves
    _stage(bar, stages[0])
    runs = {ck.name: read_metrics(p) for ck in loaded if (p := _metrics_path(ck)) is not None}
    if runs:
        sections.append(("Training curves", CAPTIONS["training"], I.training_curves_figure(runs, objectives)))
        paper.append(("training_curves", "training_curves_plot", (runs, objectives), {}))
    bar.update(1)

    # 2. per-position loss vs the exact floor, on shared held-out sequences
    _stage(bar, stages[1])
    samples = shared_tokens(loaded, n_seqs, None, seed + 1)
    pos_records = []
    for ck, sample in zip(loaded, samples):
        r = position_losses(ck.model, ck.world, sample.tokens)
        pos_records.append({"name": ck.name, "objective": ck.objective, **r})
    sections.append(("Loss per position vs the exact floor", CAPTIONS["position"], I.position_loss_figure(pos_records)))
    paper.append(("position_loss", "position_loss_plot", (pos_records,), {}))
    summary["position_loss"] = pos_records
    bar.update(1)

    # 3. effective rank, all layers, and along training
    _stage(bar, stages[2])
    rank_records = rank_checkpoints(loaded, layers="all", n_seqs=n_seqs, seed=seed)
    sections.append(("Effective rank", CAPTIONS["rank"], I.rank_figure(rank_records)))
    paper.append(("effective_rank", "rank_plot", (rank_records,), {}))
    summary["rank"] = rank_records
    traj_records = []
    for ck in loaded:
        inter = load_all(_intermediate(ck), device=device)
        if inter:
            recs = rank_checkpoints([*inter, ck], layers="last", n_seqs=n_seqs, seed=seed)
            for r in recs:
                r["run"] = ck.name
                r["objective"] = ck.objective
            traj_records.extend(recs)
    if traj_records:
        sections.append(("Effective rank along training", CAPTIONS["rank_training"], I.rank_training_figure(traj_records, group="run")))
        paper.append(("rank_training", "rank_training_plot", (traj_records,), {"group": "run"}))
        by_run: dict[str, list[dict[str, Any]]] = {}
        for r in traj_records:
            by_run.setdefault(r["run"], []).append(r)
        summary["rank_along_training"] = traj_records
        summary["rank_matched_loss"] = matched_loss_comparison(by_run)
    bar.update(1)

    # 4. belief probes
    _stage(bar, stages[3])
    n_test = max(1, n_seqs // 3)
    prep = probe_checkpoints(loaded, layers="all", n_train=n_seqs - n_test, n_test=n_test, seed=seed)
    summary["probes"] = prep.records
    if prep.panels:
        panels = [{"title": "exact beliefs", "true": prep.panels[0]["true"], "pred": None}, *prep.panels]
        sections.append(("Belief geometry: exact vs probed", CAPTIONS["probe_simplex"], I.belief_simplex_figure(panels)))
        paper.append(("belief_simplex", "belief_simplex_plot", (panels,), {}))
    if any("r2" in r for r in prep.records):
        sections.append(("Belief probe R² per layer", CAPTIONS["probe_r2"], I.probe_r2_figure(prep.records)))
        paper.append(("probe_r2", "probe_r2_plot", (prep.records,), {}))
    bar.update(1)

    # 5. transition consistency
    _stage(bar, stages[4])
    n_tr = max(1, n_seqs - n_test)
    trans = transition_checkpoints(loaded, horizon=horizon, n_train=n_tr, n_test=n_test, steps=fit_steps, seed=seed)
    summary["transition"] = trans["records"]
    sections.append(("Transition consistency", CAPTIONS["transition"], I.transition_figure(trans["results"], objectives)))
    paper.append(("transition", "transition_plot", (trans["results"], objectives), {}))
    bar.update(1)

    # 6. taxi world model
    taxi_rows: dict[str, dict[str, Any]] = {}
    if is_taxi:
        taxi_rows = _taxi_sections(loaded, sections, paper, summary, bar, stages, seed, n_seqs)

    # summary rows
    rows = []
    for ck in loaded:
        row: dict[str, Any] = {k: v for k, v in _info(ck).items()}
        last = [r for r in rank_records if r["checkpoint"] == ck.name]
        if last:
            row["effective_rank"] = last[-1]["effective_rank"]
            row["rank_layer"] = last[-1]["layer"]
        pr = [r for r in prep.records if r["checkpoint"] == ck.name and r["layer"] not in ("concat", "embed") and "r2" in r]
        if pr:
            row.update(probe_r2=pr[-1]["r2"], probe_mse=pr[-1]["mse"], probe_control_r2=pr[-1].get("control_r2"))
        acc = [r for r in prep.records if r["checkpoint"] == ck.name and r["layer"] not in ("concat", "embed") and "state_accuracy" in r]
        if acc:
            row.update(state_accuracy=acc[-1]["state_accuracy"], state_chance=acc[-1].get("state_chance"))
        tr = [r for r in trans["records"] if r["checkpoint"] == ck.name and r["dynamics"] == "post-hoc mlp"]
        if tr:
            row.update(transition_err1=tr[0]["errors"][0], belief_ratio=tr[0]["belief_ratio"], state_ratio=tr[0]["state_ratio"])
        own = [r for r in trans["records"] if r["checkpoint"] == ck.name and r["dynamics"] == "own p_psi"]
        if own:
            row["own_err1"] = own[0]["errors"][0]
        row.update(taxi_rows.get(ck.name, {}))
        rows.append(row)
    summary["checkpoints"] = rows
    columns = SUMMARY_COLUMNS + ([STATE_COLUMN] if any("state_accuracy" in r for r in rows) else []) + (TAXI_COLUMNS if is_taxi else [])
    intro = _intro_html(rows, columns, summary)
    summary["seconds"] = time.time() - t0

    if figures:
        _write_figures(out / "figures", paper)
    write_page(sections, out / "report.html", title="nextlat_probe report: " + " vs ".join(f"{ck.name} ({ck.objective})" for ck in loaded), intro_html=intro)
    tmp = out / "summary.json.tmp"
    tmp.write_text(json.dumps(to_jsonable(summary), indent=1))
    tmp.replace(out / "summary.json")
    bar.close()
    if not quiet:
        print(format_table(rows, columns))
        mm = summary.get("rank_matched_loss", {})
        if mm.get("runs"):
            print(f"\nAt matched validation loss ({mm['target_val_loss']:.4f}): " + ", ".join(f"{n} eff. rank {v['effective_rank']:.2f} (step {v['step']})" for n, v in mm["runs"].items()))
        _print_verdict(rows)
    return summary


def _info(ck) -> dict[str, Any]:
    from .analysis.common import ckpt_info

    return ckpt_info(ck)


def _verdict_lines(rows: list[dict[str, Any]]) -> list[str]:
    """Plain statements of which model is better on each metric (no spin either way)."""
    gpt = [r for r in rows if r["objective"] == "gpt"]
    nl = [r for r in rows if r["objective"] == "nextlat"]
    if len(gpt) != 1 or len(nl) != 1:
        return []
    g, n = gpt[0], nl[0]
    out = []
    checks = [
        ("effective_rank", "effective rank (lower = more compact)", -1),
        ("probe_r2", "belief-probe R^2 (higher = belief more linearly decodable)", 1),
        ("transition_err1", "post-hoc transition error (lower = more consistent dynamics)", -1),
        ("val_loss", "validation loss (lower = better next-token prediction)", -1),
        ("valid_trajectory", "valid-trajectory rate", 1),
        ("compression", "sequence compression", 1),
    ]
    for key, label, sign in checks:
        a, b = g.get(key), n.get(key)
        if a is None or b is None:
            continue
        if abs(a - b) <= 1e-9 * max(1.0, abs(a)):
            out.append(f"{label}: tie ({a:.4g})")
            continue
        better = "NextLat" if (b - a) * sign > 0 else "GPT"
        out.append(f"{label}: {better} better (GPT {a:.4g}, NextLat {b:.4g})")
    return out


def _print_verdict(rows: list[dict[str, Any]]) -> None:
    lines = _verdict_lines(rows)
    if lines:
        print("\nOne run per objective, at equal training steps (not a seed average):")
        for line in lines:
            print("  - " + line)


def _intro_html(rows, columns, summary) -> str:
    parts = ["<h2 id='summary'>Summary</h2>", _summary_table_html(rows, columns)]
    verdict = _verdict_lines(rows)
    if verdict:
        parts.append("<p class='caption'>One run per objective at equal training steps — not a seed average; compare also at matched validation loss below.</p><ul>")
        parts += [f"<li>{html.escape(v)}</li>" for v in verdict]
        parts.append("</ul>")
    mm = summary.get("rank_matched_loss", {})
    if mm.get("runs"):
        items = ", ".join(f"{html.escape(n)}: {v['effective_rank']:.2f} at step {v['step']} (val loss {v['val_loss']:.4f})" for n, v in mm["runs"].items())
        parts.append(f"<div class='note'>Effective rank at matched validation loss (≤ {mm['target_val_loss']:.4f}): {items}.</div>")
    return "\n".join(parts)


def _write_figures(folder: Path, paper: list[tuple[str, str, tuple, dict]]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .plots import paper as P

    folder.mkdir(parents=True, exist_ok=True)
    with P.paper_style():
        for stem, fn_name, args, kwargs in paper:
            fig = getattr(P, fn_name)(*args, **kwargs)
            P.save_figure(fig, folder / stem, formats=("pdf", "png"))
            plt.close(fig)


def _taxi_sections(loaded, sections, paper, summary, bar, stages, seed, n_seqs) -> dict[str, dict[str, Any]]:
    """World-model table and maps for taxi checkpoints; returns summary fields per name."""
    from .analysis.mapping import map_from_checkpoint, panels_for
    from .plots import interactive as I
    from .worldmodel import evaluate_checkpoints, figure_rows

    _stage(bar, stages[5])
    n_pairs = max(50, min(200, n_seqs))
    records = evaluate_checkpoints(loaded, n_pairs=n_pairs, seed=seed, rank_seqs=n_seqs)
    summary["worldmodel"] = records
    rows = figure_rows(records)
    sections.append(("Taxi world model (Table 1 style)", CAPTIONS["worldmodel"], I.worldmodel_table_figure(rows)))
    paper.append(("worldmodel", "worldmodel_plot", (rows,), {}))
    out: dict[str, dict[str, Any]] = {}
    for ck, rec in zip(loaded, records):
        det = rec.get("detour", {}).get("random@0.75", {}).get("valid", {})
        out[ck.name] = {
            "next_token": rec["next_token"]["rate"],
            "valid_trajectory": rec["trajectory_valid"]["rate"],
            "legal_trajectory": rec["trajectory_legal"]["rate"],
            "compression": rec["compression"]["rate"],
            "distinction_precision": rec["distinction_precision"]["rate"],
            "distinction_recall": rec["distinction_recall"]["rate"],
            "detour": det.get("rate"),
        }
    bar.update(1)

    _stage(bar, stages[6])
    summary["maps"] = []
    true_map = loaded[0].world.map
    panels: list[dict[str, Any]] = []
    for ck in loaded:
        recon, rep = map_from_checkpoint(ck, n_trips=min(500, 2 * n_seqs), n_seqs=n_seqs, seed=seed)
        summary["maps"].append({"checkpoint": ck.name, "objective": ck.objective,
                                "behaviour": recon.to_dict(edges="invented"), "representation": rep.to_dict()})
        for panel in panels_for(recon) + panels_for(rep, recon):
            panel["title"] = f"{ck.name} ({ck.objective}): {panel.get('title', '')}"
            panels.append(panel)
        out.setdefault(ck.name, {})["invented_edges"] = len(recon.invented)
    sections.append(("Reconstructed maps", CAPTIONS["maps"], I.map_figure(true_map, panels)))
    paper.append(("maps", "map_plot", (true_map, panels), {}))
    bar.update(1)
    return out


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m nextlat_probe.report", description="Run every analysis on checkpoints and write an offline HTML report, summary.json and paper figures.")
    p.add_argument("ckpts", nargs="+", metavar="CKPT")
    p.add_argument("--out", type=Path, required=True, help="output folder")
    p.add_argument("--n-seqs", type=int, default=256, help="sequences per analysis")
    p.add_argument("--horizon", type=int, default=8, help="transition roll-out horizon")
    p.add_argument("--fit-steps", type=int, default=600, help="optimiser steps of post-hoc dynamics fits")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu")
    p.add_argument("--no-figures", action="store_true", help="skip the matplotlib paper figures")
    p.add_argument("--no-progress", action="store_true")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.n_seqs < 4:
        raise UsageError("--n-seqs must be at least 4")
    run_report(args.ckpts, args.out, n_seqs=args.n_seqs, seed=args.seed, device=args.device, horizon=args.horizon,
               fit_steps=args.fit_steps, figures=not args.no_figures, progress=not args.no_progress)
    print(f"\nwrote {args.out / 'report.html'}, {args.out / 'summary.json'}, {args.out / 'figures'}/", file=sys.stderr)
    return 0


if __name__ == "__main__":
    run_main(main)
