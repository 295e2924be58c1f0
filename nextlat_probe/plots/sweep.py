"""Figures of a sweep (``sweeps.sweep_table`` rows): every metric against training
compute per setting, mean over seeds with a min-max band (plotly and matplotlib), the
offline page with the beats table, and every file a sweep writes."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

#: panels of the figure (those with values are drawn)
FIGURE_METRICS = ["val_loss", "gap_to_floor", "effective_rank", "r2", "trajectory_valid", "detour_random@0.75",
                  "compression"]


#: what the matched-loss table is
MATCHED_NOTE = ("Matched loss: per seed, each model read at its first kept checkpoint at or below the larger of the "
                "two models' best validation losses (the lowest loss both reach; sweeps.matched_pair); the steps "
                "used are listed. With few kept checkpoints (--keep) the match is coarse.")


def write_sweep_outputs(cfg, records: list[dict[str, Any]], runs: dict[str, dict[str, Any]], out: Path,
                  figures: bool = True, gap_threshold: float = 0.05, gap_ratio: float = 1.5) -> dict[str, Any]:
    """sweep.csv, records.jsonl, beats.csv / .md (final checkpoints), beats_matched.csv /
    .md (matched validation loss), sweep_config.json and (``figures``) sweep.html / .pdf /
    .png in ``out``; returns ``{"rows", "beats", "beats_matched", "paths"}``."""
    from ..checkpoint import atomic_write_bytes
    from ..records import to_jsonable
    from ..sweeps import beats_table, sweep_columns, sweep_table
    from ..tables import beats_markdown, sweep_context_text, write_csv

    rows = sweep_table(records, runs)
    beats = beats_table(rows, gap_threshold=gap_threshold, gap_ratio=gap_ratio)
    matched = beats_table(rows, gap_threshold=gap_threshold, gap_ratio=gap_ratio, at="matched_loss")
    out.mkdir(parents=True, exist_ok=True)
    paths = [write_csv(rows, out / "sweep.csv", sweep_columns(rows))]
    jsonl = "".join(json.dumps(to_jsonable(r)) + "\n" for r in records)
    paths.append(atomic_write_bytes(jsonl.encode(), out / "records.jsonl"))
    paths.append(write_csv(beats, out / "beats.csv"))
    intro = sweep_context_text(cfg, records)
    paths.append(atomic_write_bytes(beats_markdown(beats, intro).encode(), out / "beats.md"))
    paths.append(write_csv(matched, out / "beats_matched.csv"))
    paths.append(atomic_write_bytes(beats_markdown(matched, sweep_context_text(cfg, records, at="matched_loss")
                                                   + " With few kept checkpoints (--keep) the match is coarse.")
                                    .encode(), out / "beats_matched.md"))
    paths.append(atomic_write_bytes((json.dumps(cfg.to_dict(), indent=1) + "\n").encode(), out / "sweep_config.json"))
    if figures:
        paths += write_sweep_figures(rows, beats, out, intro, matched)
    return {"rows": rows, "beats": beats, "beats_matched": matched, "paths": paths}


def _panels(rows: list[dict[str, Any]]) -> list[tuple[str, list[dict[str, Any]]]]:
    from ..sweeps import compute_series

    out = []
    for m in FIGURE_METRICS:
        series = compute_series(rows, m)
        if series:
            out.append((m, series))
    return out


def _panel_title(metric: str) -> str:
    """``words (unit) (lower is better: why)``, from the label registry."""
    from ..labels import label

    lab = label(metric)
    return f"{lab.header(arrow=False)} ({lab.direction()})"


def _styles(panels: list[tuple[str, list[dict[str, Any]]]]) -> dict[str, dict[str, Any]]:
    """Colour by objective, dash / marker by the k-th setting of that objective."""
    from .style import model_color

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

    from .style import plotly_dash, plotly_marker

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
    from .paper import new_figure
    from .style import mpl_dash, mpl_marker

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


def write_sweep_figures(rows: list[dict[str, Any]], beats: list[dict[str, Any]], out: Path, intro: str,
                        matched: list[dict[str, Any]] | None = None) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    from ..tables import beats_html
    from .page import write_page
    from .paper import paper_style, save_figure

    caption = ("Each metric of every kept checkpoint against training compute (step × transformer parameters; "
               "NextLat's p_psi is not counted). Lines: mean over seeds; bands: min to max over seeds.")
    table = beats_html(beats)
    sections = [("Metrics along training compute", caption, sweep_figure(rows)),
                ("Where does NextLat beat GPT? (final checkpoints)", intro, table)]
    if matched:
        sections.append(("... and at matched validation loss", MATCHED_NOTE, beats_html(matched)))
    page = write_page(sections, out / "sweep.html", title="nextlat_probe sweep")
    with paper_style():
        fig = sweep_plot(rows)
        return [page, *save_figure(fig, out / "sweep", formats=("pdf", "png"))]


__all__ = ["FIGURE_METRICS", "sweep_figure", "sweep_plot", "write_sweep_figures", "write_sweep_outputs"]
