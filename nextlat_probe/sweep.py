"""Sweep a grid of GPT / NextLat (/ MTP) runs and say where NextLat beats GPT.

    python -m nextlat_probe.sweep --world taxi --objectives gpt,nextlat --presets tiny,mini \\
        --steps 1500,6000 --lambda-h 1 --lambda-kl 0,1 --seeds 3 --out runs/sweep --workers 2
    python -m nextlat_probe.sweep ... --dry-run        # the grid: which runs are done / partial / new
    python -m nextlat_probe.sweep --cell tiny:1500 --cell tiny:6000 --cell mini:1500 ...  # cells, not a product

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
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from .cli import UsageError, progress_enabled, run_main

#: the columns of the printed / Markdown beats table: (key, header, format)
BEATS_COLUMNS = [("preset", "preset", ""), ("steps", "steps", ""), ("lambda_h", "λh", "g"), ("lambda_kl", "λkl", "g"),
                 ("n", "n", ""), ("challenger_mean", "{c}", ".4g"), ("baseline_mean", "{b}", ".4g"),
                 ("diff_mean", "{c} − {b}", "+.4g"), ("interval", "95% t interval", ""), ("better", "better", ""),
                 ("clear", "clear", ""), ("gap_challenger", "gap {c}", ".3g"), ("gap_baseline", "gap {b}", ".3g"),
                 ("flag", "flag", "")]
#: panels of the figure (those with values are drawn)
FIGURE_METRICS = ["val_loss", "gap_to_floor", "effective_rank", "r2", "trajectory_valid", "detour_random@0.75",
                  "compression"]


def _list(text: str, flag: str, conv: Any = str) -> tuple[Any, ...]:
    items = [t.strip() for t in str(text).split(",") if t.strip()]
    try:
        return tuple(conv(t) for t in items)
    except ValueError:
        raise UsageError(f"--{flag}: {text!r} is not a comma list of {conv.__name__} values") from None


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m nextlat_probe.sweep",
        description="Train a grid of runs (objectives x presets x steps x seeds, and for NextLat lambda_h x "
                    "lambda_kl), reusing finished runs and resuming interrupted ones; evaluate every kept "
                    "checkpoint (effective rank and belief probe of the last block; taxi: valid trajectories, "
                    "detours, compression); write sweep.csv, records.jsonl, figures against training compute and "
                    "a table of where NextLat beats GPT, paired over seeds.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    g = p.add_argument_group("grid")
    g.add_argument("--world", default="taxi", help='world spec name[:key=value,...], e.g. taxi, '
                   '"taxi:map_size=4,max_len=12", mess3')
    g.add_argument("--objectives", default="gpt,nextlat", help="comma list of objectives")
    g.add_argument("--presets", default=None, help="comma list of model presets (tiny, mini, small, base; "
                   "default tiny)")
    g.add_argument("--steps", default=None, help="comma list of training lengths; each is its own run (its own "
                   "cosine schedule)")
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
                   "(run_worldmodel's default is 200; 100 halves the dominant evaluation cost)")
    e.add_argument("--eval-seed", type=int, default=0, help="seed of the analysed sequences and trips")
    e.add_argument("--no-probe", action="store_true", help="skip the belief probe")
    e.add_argument("--no-worldmodel", action="store_true", help="skip the taxi world-model metrics")
    e.add_argument("--ood", action="append", default=[], metavar="SETTING",
                   help="also score the world-model metrics out of distribution (taxi): 'longer' or key=value "
                        "trip settings such as walk=shortest (see worldmodel --ood); repeatable; columns "
                        "METRIC@ood:SETTING in sweep.csv and the beats table")
    e.add_argument("--gap-threshold", type=float, default=0.05, help="flag a comparison where a model's mean gap "
                   "to the exact floor exceeds this (nats/token)")
    e.add_argument("--gap-ratio", type=float, default=1.5, help="... or where one gap is more than this many "
                   "times the other (gaps below 0.01 count as 0.01)")
    x = p.add_argument_group("execution and output")
    x.add_argument("--workers", type=int, default=1, help="runs trained at once in separate processes, each with "
                   "cores // N torch threads (N x threads <= cores)")
    x.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto (CUDA when available)")
    x.add_argument("--dry-run", action="store_true", help="print the grid (which runs are done, partial or new) "
                   "and stop")
    x.add_argument("--no-figures", action="store_true", help="skip sweep.html / sweep.pdf / sweep.png")
    x.add_argument("--no-progress", action="store_true", help="no progress output on stderr")
    return p


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
                       worldmodel=not args.no_worldmodel, ood=tuple(args.ood), cells=tuple(args.cell))


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    cfg = config_from_args(args)
    if args.dry_run:
        print(dry_run_text(cfg))
        return 0
    from .cli import resolve_device_arg
    from .sweeps import run_sweep, sweep_runs

    resolve_device_arg(args.device)  # an unknown device fails before any training
    records = run_sweep(cfg, progress=progress_enabled(args))
    written = write_outputs(cfg, records, sweep_runs(cfg), Path(cfg.out), figures=not args.no_figures,
                            gap_threshold=args.gap_threshold, gap_ratio=args.gap_ratio)
    print(report_text(cfg, records, written["beats"], written["rows"]))
    print("wrote " + ", ".join(str(p) for p in written["paths"]))
    return 0


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


def _header(col: str, challenger: str, baseline: str) -> str:
    return col.format(c=challenger, b=baseline)


def beats_sections(beats: list[dict[str, Any]]) -> list[tuple[str, list[dict[str, Any]]]]:
    """The beats rows per metric, with a heading that says which direction is better."""
    from .sweeps import metric_info

    out: list[tuple[str, list[dict[str, Any]]]] = []
    for r in beats:
        if not out or out[-1][1][0]["metric"] != r["metric"]:
            info = metric_info(r["metric"])
            out.append((f"{r['metric']}: {info.label}; {info.direction()}", []))
        out[-1][1].append(r)
    return out


def beats_text(beats: list[dict[str, Any]]) -> str:
    from .tables import format_table

    if not beats:
        return "(no NextLat / GPT pairs: the table needs both objectives with the same seeds)"
    parts = []
    for heading, rows in beats_sections(beats):
        c, b = rows[0]["challenger"], rows[0]["baseline"]
        cols = [(k, _header(h, c, b), f) for k, h, f in BEATS_COLUMNS]
        parts.append(f"{heading}\n{format_table(rows, cols)}")
    return "\n\n".join(parts)


def _md_cell(v: Any, fmt: str) -> str:
    from .tables import format_value

    return format_value(v, fmt).replace("|", "\\|")


def beats_markdown(beats: list[dict[str, Any]], intro: str = "") -> str:
    lines = ["# Where does NextLat beat GPT?", ""]
    if intro:
        lines += [intro, ""]
    if not beats:
        lines.append("No NextLat / GPT pairs.")
    for heading, rows in beats_sections(beats):
        c, b = rows[0]["challenger"], rows[0]["baseline"]
        heads = [_header(h, c, b) for _, h, _ in BEATS_COLUMNS]
        lines += [f"## {heading}", "", "| " + " | ".join(heads) + " |", "|" + "---|" * len(heads)]
        lines += ["| " + " | ".join(_md_cell(r.get(k), f) for k, _, f in BEATS_COLUMNS) + " |" for r in rows]
        lines.append("")
    return "\n".join(lines) + "\n"


def context_text(cfg, records: list[dict[str, Any]]) -> str:
    """What every number is: where the metrics come from and with which settings (each
    record's full protocol and parameters are in records.jsonl; sweep.csv names them)."""
    from .sweeps import probe_n_test

    analyses = {r["analysis"] for r in records}
    parts = [f"World {cfg.world}; {cfg.seeds} seed(s) per setting. Beats table: NextLat minus GPT at each run's "
             "final checkpoint, paired by seed, mean with a 95% Student t interval (n - 1 degrees of freedom)."]
    ev = [f"effective rank of the last block (uncentred, protocol training_length) on {cfg.n_seqs} sequences"]
    if "probe" in analyses:
        ev.append(f"belief probe R² of the last block (ridge, protocol held_out: tested on the last "
                  f"{probe_n_test(cfg.n_seqs)} of them)")
    if "worldmodel" in analyses:
        ev.append(f"world-model metrics on {cfg.n_pairs} held-out trips (--n-pairs; run_worldmodel's default is "
                  "200), protocol vafa2024, random detours at p = 0.75")
    parts.append("Evaluated: " + "; ".join(ev) + f"; evaluation seed {cfg.eval_seed}.")
    parts.append("Lower is better for the validation loss and the effective rank (more compact); higher for the "
                 "probe R², valid trajectories, detour robustness and compression. A flagged row compares models "
                 "at different distances from the exact floor: compare them at matched loss (e.g. "
                 "experiments.matched_rank) before reading a difference as an effect of the objective.")
    return " ".join(parts)


def report_text(cfg, records: list[dict[str, Any]], beats: list[dict[str, Any]], rows: list[dict[str, Any]]) -> str:
    n_runs = len({r["run"] for r in rows})
    return (f"sweep: {n_runs} runs, {len(rows)} checkpoints evaluated (one row each in sweep.csv)\n"
            f"{context_text(cfg, records)}\n\n{beats_text(beats)}")


# --------------------------------------------------------------------------------------
# files
# --------------------------------------------------------------------------------------
def write_outputs(cfg, records: list[dict[str, Any]], runs: dict[str, dict[str, Any]], out: Path,
                  figures: bool = True, gap_threshold: float = 0.05, gap_ratio: float = 1.5) -> dict[str, Any]:
    """sweep.csv, records.jsonl, beats.csv / .md, sweep_config.json and (``figures``)
    sweep.html / .pdf / .png in ``out``; returns ``{"rows", "beats", "paths"}``."""
    from .checkpoint import atomic_write_bytes
    from .records import to_jsonable
    from .sweeps import beats_table, sweep_columns, sweep_table
    from .tables import write_csv

    rows = sweep_table(records, runs)
    beats = beats_table(rows, gap_threshold=gap_threshold, gap_ratio=gap_ratio)
    out.mkdir(parents=True, exist_ok=True)
    paths = [write_csv(rows, out / "sweep.csv", sweep_columns(rows))]
    jsonl = "".join(json.dumps(to_jsonable(r)) + "\n" for r in records)
    paths.append(atomic_write_bytes(jsonl.encode(), out / "records.jsonl"))
    paths.append(write_csv(beats, out / "beats.csv"))
    intro = context_text(cfg, records)
    paths.append(atomic_write_bytes(beats_markdown(beats, intro).encode(), out / "beats.md"))
    paths.append(atomic_write_bytes((json.dumps(cfg.to_dict(), indent=1) + "\n").encode(), out / "sweep_config.json"))
    if figures:
        paths += write_figures(rows, beats, out, intro)
    return {"rows": rows, "beats": beats, "paths": paths}


def _panels(rows: list[dict[str, Any]]) -> list[tuple[str, list[dict[str, Any]]]]:
    from .sweeps import compute_series

    out = []
    for m in FIGURE_METRICS:
        series = compute_series(rows, m)
        if series:
            out.append((m, series))
    return out


def _panel_title(metric: str) -> str:
    from .sweeps import metric_info

    if metric == "gap_to_floor":
        return "gap to the exact floor (nats/token; lower is better)"
    info = metric_info(metric)
    return f"{info.label} ({info.direction()})"


def _styles(panels: list[tuple[str, list[dict[str, Any]]]]) -> dict[str, dict[str, Any]]:
    """Colour by objective, dash / marker by the k-th setting of that objective."""
    from .plots.style import model_color

    out: dict[str, dict[str, Any]] = {}
    per_obj: dict[str, int] = {}
    for _, series in panels:
        for s in series:
            if s["label"] not in out:
                k = per_obj.get(s["objective"], 0)
                per_obj[s["objective"]] = k + 1
                out[s["label"]] = {"color": model_color(s["objective"], len(per_obj)), "variant": k}
    return out


def _rgba(hex_color: str, alpha: float) -> str:
    h = hex_color.lstrip("#")
    r, g, b = (int(h[i:i + 2], 16) for i in (0, 2, 4))
    return f"rgba({r},{g},{b},{alpha})"


def sweep_figure(rows: list[dict[str, Any]]):
    """plotly: one panel per metric against training compute (log), per setting the mean
    over seeds with a min-max band."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    from .plots.style import plotly_dash, plotly_marker

    panels = _panels(rows)
    cols = 2
    n_rows = max(1, -(-len(panels) // cols))
    fig = make_subplots(rows=n_rows, cols=cols, subplot_titles=[_panel_title(m) for m, _ in panels],
                        horizontal_spacing=0.08, vertical_spacing=0.12 if n_rows > 1 else 0.2)
    styles = _styles(panels)
    shown: set[str] = set()
    for i, (_metric, series) in enumerate(panels):
        row, col = i // cols + 1, i % cols + 1
        for s in series:
            st = styles[s["label"]]
            fig.add_trace(go.Scatter(x=s["compute"] + s["compute"][::-1], y=s["high"] + s["low"][::-1],
                                     fill="toself", fillcolor=_rgba(st["color"], 0.15), line=dict(width=0),
                                     hoverinfo="skip", legendgroup=s["label"], showlegend=False), row=row, col=col)
            text = [f"{s['label']}<br>step {st_}: mean {m:.4g} (min {lo:.4g}, max {hi:.4g}, {n} seed(s))"
                    for st_, m, lo, hi, n in zip(s["step"], s["mean"], s["low"], s["high"], s["n"])]
            fig.add_trace(go.Scatter(x=s["compute"], y=s["mean"], mode="lines+markers", name=s["label"],
                                     legendgroup=s["label"], showlegend=s["label"] not in shown,
                                     line=dict(color=st["color"], dash=plotly_dash(st)),
                                     marker=dict(symbol=plotly_marker(st), size=6), text=text,
                                     hovertemplate="%{text}<extra></extra>"), row=row, col=col)
            shown.add(s["label"])
        fig.update_xaxes(type="log", title_text="training compute (step × parameters)", row=row, col=col)
    fig.update_layout(template="plotly_white", height=330 * n_rows + 80, font=dict(size=12),
                      legend=dict(orientation="h", y=-0.08))
    return fig


def sweep_plot(rows: list[dict[str, Any]]):
    """matplotlib: the panels of ``sweep_figure`` for a paper (double column)."""
    from .plots.paper import new_figure
    from .plots.style import mpl_dash, mpl_marker

    panels = _panels(rows)
    cols = 2 if len(panels) > 1 else 1
    n_rows = max(1, -(-len(panels) // cols))
    fig, axes = new_figure("double", rows=n_rows, cols=cols, aspect=0.62)
    styles = _styles(panels)
    for ax, (metric, series) in zip(axes, panels):
        for s in series:
            st = styles[s["label"]]
            ax.fill_between(s["compute"], s["low"], s["high"], color=st["color"], alpha=0.18, linewidth=0)
            ax.plot(s["compute"], s["mean"], color=st["color"], linestyle=mpl_dash(st), marker=mpl_marker(st),
                    markersize=2.5, label=s["label"])
        ax.set_xscale("log")
        ax.set_title(_panel_title(metric), fontsize=7)
        ax.set_xlabel("training compute (step × parameters)", fontsize=6)
    for extra in axes[len(panels):]:
        extra.set_visible(False)
    if panels:
        handles, labels = axes[0].get_legend_handles_labels()
        fig.legend(handles, labels, loc="outside lower center", ncols=min(3, len(labels)), fontsize=5, frameon=False)
    return fig


def write_figures(rows: list[dict[str, Any]], beats: list[dict[str, Any]], out: Path, intro: str) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    from .plots.page import write_page
    from .plots.paper import paper_style, save_figure

    caption = ("Each metric of every kept checkpoint against training compute (step × transformer parameters; "
               "NextLat's p_psi is not counted). Lines: mean over seeds; bands: min to max over seeds.")
    table = _beats_html(beats)
    page = write_page([("Metrics along training compute", caption, sweep_figure(rows)),
                       ("Where does NextLat beat GPT?", intro, table)], out / "sweep.html",
                      title="nextlat_probe sweep")
    with paper_style():
        fig = sweep_plot(rows)
        return [page, *save_figure(fig, out / "sweep", formats=("pdf", "png"))]


def _beats_html(beats: list[dict[str, Any]]) -> str:
    import html

    from .tables import format_value

    if not beats:
        return "<p>No NextLat / GPT pairs.</p>"
    parts = []
    for heading, rows in beats_sections(beats):
        c, b = rows[0]["challenger"], rows[0]["baseline"]
        head = "".join(f"<th>{html.escape(_header(h, c, b))}</th>" for _, h, _ in BEATS_COLUMNS)
        body = "".join("<tr>" + "".join(f"<td>{html.escape(format_value(r.get(k), f))}</td>"
                                        for k, _, f in BEATS_COLUMNS) + "</tr>" for r in rows)
        parts.append(f"<h3>{html.escape(heading)}</h3><table class='summary'><tr>{head}</tr>{body}</table>")
    return "".join(parts)


if __name__ == "__main__":
    run_main(main)
