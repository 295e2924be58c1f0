"""Interactive plotly figures, written as self-contained offline HTML (plotly.js embedded,
no CDN: the page opens without network).

Every function takes an analysis *result* (plain records, result objects or their
``to_dict()``), never a checkpoint, and returns a ``plotly.graph_objects.Figure`` that a
notebook can restyle before ``write_html``. ``paper.py`` draws the same views with the
same arguments in matplotlib; the shared geometry and colours live in ``style.py``.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from .style import (
    DYNAMICS_KINDS,
    MAP_COLORS,
    MODEL_COLORS,
    PLOTLY_DASHES,
    PLOTLY_MARKERS,
    SIMPLEX_CORNERS,
    TRAIN_PANELS,
    as_float_array,
    checkpoint_styles,
    common_limits,
    control_value,
    format_cell,
    group_by,
    map_panels,
    model_color,  # noqa: F401  (re-exported for notebooks)
    pick_layer,
    polylines_xy,
    read_metrics,
    record_name,
    simplex_panels,
    table_cell,
    table_columns,
    training_series,
    transition_dict,
)

__all__ = [
    "write_html",
    "write_report",
    "rank_figure",
    "rank_training_figure",
    "belief_simplex_figure",
    "probe_r2_figure",
    "transition_figure",
    "training_curves_figure",
    "read_metrics",
    "position_loss_figure",
    "worldmodel_table_figure",
    "map_figure",
]

_LAYOUT = dict(template="plotly_white", font=dict(size=13))


def write_html(fig, path: str | Path, title: str | None = None) -> Path:
    """Write one figure as a standalone offline page (plotly.js inlined)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if title:
        fig.update_layout(title=title)
    fig.write_html(str(path), include_plotlyjs=True, full_html=True)
    return path


def write_report(sections: list[tuple[str, Any]], path: str | Path, title: str = "nextlat_probe report") -> Path:
    """Several figures on one offline page, plotly.js inlined once.

    sections: ``(heading, content)`` pairs; content is a plotly Figure or an HTML string
    (e.g. a table) inserted as is. (``plots.page.write_page`` also takes captions.)"""
    from .page import write_page

    return write_page([(heading, "", content) for heading, content in sections], path, title=title)


def _styles(records: list[dict[str, Any]], key: str | None = None) -> dict[str, dict[str, Any]]:
    groups = group_by(records, key)
    return checkpoint_styles(groups, {k: rows[0].get("objective") for k, rows in groups.items()})


def _rgb_strings(rgb: np.ndarray) -> list[str]:
    v = np.round(255 * rgb).astype(int)
    return [f"rgb({r},{g},{b})" for r, g, b in v]


# --------------------------------------------------------------------------------------
# effective rank
# --------------------------------------------------------------------------------------
def rank_figure(records: list[dict[str, Any]]):
    """Left: singular-value spectra (log-log), one line per checkpoint and layer (deeper
    layers more opaque, the last one thicker). Right: effective rank per layer, one line
    per checkpoint. ``records``: output of ``rank.rank_checkpoints``."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    fig = make_subplots(rows=1, cols=2, subplot_titles=("singular-value spectrum", "effective rank per layer"))
    styles = _styles(records)
    for name, rows in group_by(records).items():
        st = styles[name]
        dash = PLOTLY_DASHES[st["variant"] % len(PLOTLY_DASHES)]
        for j, r in enumerate(rows):
            s = as_float_array(r["spectrum"])
            fig.add_trace(
                go.Scatter(
                    x=np.arange(1, len(s) + 1),
                    y=s,
                    mode="lines",
                    name=f"{name} {r['layer']}",
                    legendgroup=name,
                    showlegend=False,
                    line=dict(color=st["color"], width=1 + 1.5 * (j == len(rows) - 1), dash=dash),
                    opacity=0.35 + 0.65 * (j + 1) / len(rows),
                    hovertemplate="component %{x}<br>singular value %{y:.3g}<extra>" + f"{name} {r['layer']}" + "</extra>",
                ),
                row=1,
                col=1,
            )
        fig.add_trace(
            go.Scatter(
                x=[r["layer"] for r in rows],
                y=as_float_array([r["effective_rank"] for r in rows]),
                mode="lines+markers",
                name=f"{name} ({rows[0].get('objective')})",
                legendgroup=name,
                line=dict(color=st["color"], width=2.5, dash=dash),
                customdata=np.array([[r.get("val_loss"), r.get("val_gap")] for r in rows], dtype=float),
                hovertemplate="%{x}: eff. rank %{y:.2f}<br>val loss %{customdata[0]:.4f} "
                "(gap %{customdata[1]:.4f})<extra>" + name + "</extra>",
            ),
            row=1,
            col=2,
        )
    fig.update_yaxes(type="log", title_text="singular value", row=1, col=1)
    fig.update_xaxes(type="log", title_text="component", row=1, col=1)
    fig.update_yaxes(title_text="effective rank", row=1, col=2)
    fig.update_xaxes(title_text="layer", row=1, col=2)
    fig.update_layout(**_LAYOUT, height=450, width=1100)
    return fig


def rank_training_figure(records: list[dict[str, Any]], layer: str | None = None, group: str = "objective"):
    """Effective rank along training: rank vs step (left) and vs validation loss (right),
    one line per ``group`` (default: objective; use e.g. "run" for several seeds), from
    ``rank_checkpoints`` records of intermediate checkpoints. The right panel is the
    matched-loss comparison: an undertrained model looks compact at equal steps."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    rows_all = pick_layer(records, layer)
    lay = rows_all[0]["layer"] if rows_all else layer
    fig = make_subplots(rows=1, cols=2, subplot_titles=(f"effective rank vs step ({lay})", "effective rank vs validation loss"))
    groups = group_by(rows_all, group)
    styles = checkpoint_styles(groups, {k: v[0].get("objective") for k, v in groups.items()})
    for name, rows in groups.items():
        rows = sorted(rows, key=lambda r: r.get("step") or 0)
        st = styles[name]
        step = as_float_array([r.get("step") for r in rows])
        er = as_float_array([r["effective_rank"] for r in rows])
        vl = as_float_array([r.get("val_loss") for r in rows])
        line = dict(color=st["color"], width=2.5, dash=PLOTLY_DASHES[st["variant"] % len(PLOTLY_DASHES)])
        fig.add_trace(go.Scatter(x=step, y=er, mode="lines+markers", name=name, legendgroup=name, line=line,
                                 hovertemplate="step %{x}: eff. rank %{y:.2f}<extra>" + name + "</extra>"), row=1, col=1)
        fig.add_trace(go.Scatter(x=vl, y=er, mode="lines+markers", name=name, legendgroup=name, showlegend=False, line=line,
                                 customdata=step, hovertemplate="val loss %{x:.4f}: eff. rank %{y:.2f} (step %{customdata})<extra>" + name + "</extra>"),
                      row=1, col=2)
    fig.update_xaxes(title_text="training step", row=1, col=1)
    fig.update_xaxes(title_text="validation loss", autorange="reversed", row=1, col=2)
    fig.update_yaxes(title_text="effective rank", row=1, col=1)
    fig.update_layout(**_LAYOUT, height=450, width=1100)
    return fig


# --------------------------------------------------------------------------------------
# belief probes
# --------------------------------------------------------------------------------------
def belief_simplex_figure(panels: list[dict[str, Any]], max_points: int | None = 4000, seed: int = 0, marker_size: float = 3.0):
    """True beliefs vs probe predictions, one panel per entry of ``panels``
    ({"title", "true": [N, S], "pred": [N, S] or None}; pred None = show the true
    beliefs). 3 states: barycentric coordinates in the triangle; more: the first two
    principal components of the true beliefs. Colour = true belief (RGB for 3 states)."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    proj, is_simplex = simplex_panels(panels, max_points, seed)
    fig = make_subplots(rows=1, cols=len(proj), subplot_titles=[p["title"] for p in proj], horizontal_spacing=0.03)
    tri = np.vstack([SIMPLEX_CORNERS, SIMPLEX_CORNERS[:1]])
    xr, yr = common_limits([p["xy"] for p in proj] + ([SIMPLEX_CORNERS] if is_simplex else []))
    for k, p in enumerate(proj, start=1):
        if is_simplex:
            fig.add_trace(go.Scatter(x=tri[:, 0], y=tri[:, 1], mode="lines", line=dict(color="#444444", width=1),
                                     showlegend=False, hoverinfo="skip"), row=1, col=k)
        fig.add_trace(
            go.Scattergl(x=p["xy"][:, 0], y=p["xy"][:, 1], mode="markers", name=p["title"], showlegend=False,
                         marker=dict(size=marker_size, color=_rgb_strings(p["rgb"]), line=dict(width=0)),
                         hoverinfo="skip"),
            row=1, col=k,
        )
        anchor = "x" if k == 1 else f"x{k}"
        fig.update_xaxes(range=xr, row=1, col=k)
        fig.update_yaxes(range=yr, scaleanchor=anchor, scaleratio=1, row=1, col=k)
        if is_simplex:
            fig.update_xaxes(visible=False, row=1, col=k)
            fig.update_yaxes(visible=False, row=1, col=k)
        else:
            fig.update_xaxes(title_text="PC 1 of true beliefs", row=1, col=k)
            fig.update_yaxes(title_text="PC 2" if k == 1 else None, row=1, col=k)
    fig.update_layout(**_LAYOUT, height=420, width=max(420, 360 * len(proj)))
    return fig


def probe_r2_figure(records: list[dict[str, Any]], metric: str = "r2"):
    """Probe ``metric`` (default R^2) per layer, one line per checkpoint; the
    shuffled-belief control as a dotted line of the same colour when the records have it
    (``shuffled_r2`` or ``control_r2``)."""
    import plotly.graph_objects as go

    fig = go.Figure()
    styles = _styles(records)
    for name, rows in group_by(records).items():
        st = styles[name]
        x = [r["layer"] for r in rows]
        fig.add_trace(go.Scatter(
            x=x, y=as_float_array([r.get(metric) for r in rows]), mode="lines+markers", name=f"{name} ({rows[0].get('objective')})",
            legendgroup=name, line=dict(color=st["color"], width=2.5, dash=PLOTLY_DASHES[st["variant"] % len(PLOTLY_DASHES)]),
            marker=dict(symbol=PLOTLY_MARKERS[st["variant"] % len(PLOTLY_MARKERS)]),
            hovertemplate="%{x}: " + metric + " %{y:.4f}<extra>" + name + "</extra>"))
        ctrl = [control_value(r, metric) for r in rows]
        if any(c is not None for c in ctrl):
            fig.add_trace(go.Scatter(
                x=x, y=as_float_array(ctrl), mode="lines", name=f"{name} shuffled control", legendgroup=name,
                line=dict(color=st["color"], width=1.2, dash="dot"),
                hovertemplate="%{x}: control " + metric + " %{y:.4f}<extra>" + name + "</extra>"))
    fig.update_xaxes(title_text="layer")
    fig.update_yaxes(title_text=f"probe {metric} (held-out sequences)")
    fig.update_layout(**_LAYOUT, height=450, width=750)
    return fig


# --------------------------------------------------------------------------------------
# transition consistency
# --------------------------------------------------------------------------------------
def transition_figure(results: dict[str, Any], objectives: dict[str, str] | None = None, log_y: bool = True):
    """Relative error ||ĥ_{t+i} - h_{t+i}||² / ||h_{t+i} - mean h||² vs horizon i, one line
    per checkpoint and dynamics kind (solid = post-hoc MLP, dashed = the model's own
    p_psi, dotted = post-hoc linear); right: the belief-level ratio (within-belief /
    total variance of hidden states) per checkpoint when the results have it."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    res = {k: transition_dict(v) for k, v in results.items()}
    styles = checkpoint_styles(res, objectives)
    ratios = {k: r.get("belief_ratio") for k, r in res.items() if r.get("belief_ratio") is not None}
    cols = 2 if ratios else 1
    fig = make_subplots(rows=1, cols=cols, column_widths=[0.75, 0.25][:cols],
                        subplot_titles=("relative error vs horizon", "within-belief / total variance")[:cols])
    for name, r in res.items():
        st = styles[name]
        x = as_float_array(r.get("horizons"))
        for key, label, dash, _ in DYNAMICS_KINDS:
            y = r.get(key)
            if y is None:
                continue
            fig.add_trace(go.Scatter(
                x=x, y=as_float_array(y), mode="lines+markers", name=f"{name}: {label}", legendgroup=name,
                line=dict(color=st["color"], width=2.2, dash=dash),
                marker=dict(symbol=PLOTLY_MARKERS[st["variant"] % len(PLOTLY_MARKERS)], size=6),
                hovertemplate="horizon %{x}: %{y:.4g}<extra>" + f"{name}: {label}" + "</extra>"), row=1, col=1)
    if ratios:
        fig.add_trace(go.Bar(x=list(ratios), y=as_float_array(list(ratios.values())), showlegend=False,
                             marker_color=[styles[k]["color"] for k in ratios],
                             hovertemplate="%{x}: %{y:.4g}<extra></extra>"), row=1, col=2)
        fig.update_yaxes(title_text="variance ratio (0 = belief state)", rangemode="tozero", row=1, col=2)
    fig.update_xaxes(title_text="horizon i (steps ahead)", row=1, col=1)
    fig.update_yaxes(title_text="relative error", type="log" if log_y else "linear", row=1, col=1)
    fig.update_layout(**_LAYOUT, height=450, width=1100 if ratios else 800)
    return fig


# --------------------------------------------------------------------------------------
# training curves and per-position loss
# --------------------------------------------------------------------------------------
def training_curves_figure(runs: dict[str, Any], objectives: dict[str, str] | None = None):
    """Training curves of several runs: validation loss vs step with the exact entropy
    floor (dashed: one black line when all runs share it, else one per run in its colour),
    train cross-entropy, and NextLat's next_h and KL terms. ``runs``: name -> records of
    ``metrics.jsonl`` (see ``read_metrics``) or the file's path."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    series, styles, floor = training_series(runs, objectives)
    fig = make_subplots(rows=2, cols=2, subplot_titles=[t for _, t in TRAIN_PANELS], vertical_spacing=0.12)
    pos = {key: (i // 2 + 1, i % 2 + 1) for i, (key, _) in enumerate(TRAIN_PANELS)}
    for name, s in series.items():
        st = styles[name]
        dash = PLOTLY_DASHES[st["variant"] % len(PLOTLY_DASHES)]
        first = True
        for key, _ in TRAIN_PANELS:
            if key not in s:
                continue
            x, y = s[key]
            fig.add_trace(go.Scatter(x=x, y=y, mode="lines+markers" if key == "val_loss" else "lines", name=name,
                                     legendgroup=name, showlegend=first, line=dict(color=st["color"], width=2, dash=dash),
                                     hovertemplate="step %{x}: %{y:.4f}<extra>" + f"{name} {key}" + "</extra>"),
                          row=pos[key][0], col=pos[key][1])
            first = False
        if floor is None and s["val_floor"] is not None:
            fig.add_hline(y=s["val_floor"], line=dict(color=st["color"], dash="dash", width=1.2), row=1, col=1,
                          annotation_text=f"floor {name}", annotation_position="bottom right")
    if floor is not None:
        fig.add_hline(y=floor, line=dict(color=MODEL_COLORS["exact"], dash="dash", width=1.2), row=1, col=1,
                      annotation_text=f"exact floor {floor:.4f}", annotation_position="top right")
    for key, (r, c) in pos.items():
        fig.update_xaxes(title_text="step", row=r, col=c)
        if key in ("next_h", "kl"):
            fig.update_yaxes(type="log", row=r, col=c)
    fig.update_layout(**_LAYOUT, height=750, width=1100)
    return fig


def position_loss_figure(records: list[dict[str, Any]]):
    """Per-position validation loss vs the exact per-position cross-entropy (the entropy
    floor; dashed). Left: loss and floor; right: the excess loss over the floor.
    ``records``: [{name, objective, positions, loss, floor}]."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    fig = make_subplots(rows=1, cols=2, subplot_titles=("loss per position", "loss - exact floor"))
    styles = checkpoint_styles([record_name(r) for r in records], {record_name(r): r.get("objective") for r in records})
    floors = [as_float_array(r["floor"]) for r in records]
    shared = all(f.shape == floors[0].shape and np.allclose(f, floors[0], equal_nan=True) for f in floors) if records else False
    for r, fl in zip(records, floors):
        name = record_name(r)
        st = styles[name]
        x, y = as_float_array(r["positions"]), as_float_array(r["loss"])
        dash = PLOTLY_DASHES[st["variant"] % len(PLOTLY_DASHES)]
        fig.add_trace(go.Scatter(x=x, y=y, mode="lines+markers", name=name, legendgroup=name,
                                 line=dict(color=st["color"], width=2, dash=dash),
                                 hovertemplate="position %{x}: %{y:.4f}<extra>" + name + "</extra>"), row=1, col=1)
        fig.add_trace(go.Scatter(x=x, y=y - fl, mode="lines+markers", name=name, legendgroup=name, showlegend=False,
                                 line=dict(color=st["color"], width=2, dash=dash),
                                 hovertemplate="position %{x}: +%{y:.4f}<extra>" + name + "</extra>"), row=1, col=2)
        if not shared:
            fig.add_trace(go.Scatter(x=x, y=fl, mode="lines", name=f"{name} floor", legendgroup=name,
                                     line=dict(color=st["color"], width=1.2, dash="dash")), row=1, col=1)
    if shared:
        fig.add_trace(go.Scatter(x=as_float_array(records[0]["positions"]), y=floors[0], mode="lines", name="exact floor",
                                 line=dict(color=MODEL_COLORS["exact"], width=1.5, dash="dash")), row=1, col=1)
    fig.add_hline(y=0.0, line=dict(color="#888888", width=1), row=1, col=2)
    fig.update_xaxes(title_text="position")
    fig.update_yaxes(title_text="cross-entropy (nats)", row=1, col=1)
    fig.update_layout(**_LAYOUT, height=450, width=1100)
    return fig


# --------------------------------------------------------------------------------------
# taxi: world-model table and maps
# --------------------------------------------------------------------------------------
def worldmodel_table_figure(rows: list[dict[str, Any]], columns: list[str] | None = None, formats: dict[str, str] | None = None):
    """World-model metrics as a plotly table: one row per model, each cell
    'value [low, high]' (95% intervals). Rows: {"model": name, "objective"?: ...,
    metric: number | (value, low, high) | {"value", "low", "high"}} or bounds in
    ``{metric}_ci`` / ``{metric}_low`` / ``{metric}_high``. Model names are coloured by
    objective."""
    import plotly.graph_objects as go

    cols = table_columns(rows, columns)
    formats = formats or {}
    names = [str(r.get("model", r.get("name", "?"))) for r in rows]
    styles = checkpoint_styles(names, {n: r.get("objective") for n, r in zip(names, rows)})
    cells = [names] + [[format_cell(*table_cell(r, c), fmt=formats.get(c, ".3g")) for r in rows] for c in cols]
    font_colors = [[styles[n]["color"] for n in names]] + [["#222222"] * len(rows) for _ in cols]
    fig = go.Figure(go.Table(
        header=dict(values=["model", *cols], fill_color="#EEEEEE", align="left", font=dict(size=13)),
        cells=dict(values=cells, align="left", font=dict(color=font_colors, size=13), height=28),
    ))
    fig.update_layout(**_LAYOUT, height=120 + 32 * len(rows), width=min(1150, max(600, 170 * (len(cols) + 1))), margin=dict(l=10, r=10, t=40, b=10))
    return fig


def map_figure(true_map: Any, panels: list[dict[str, Any]], curvature: float = 0.25, node_size: float = 3.0,
               cols: int | None = None):
    """Maps side by side: the true street map in grey (nodes at each panel's ``coords``,
    default the map's coordinates or a deterministic layout), overlaid with recovered
    edges, invented edges (curved, contrasting colour, as in Vafa et al.) and missing
    edges (dotted). Panel spec: {"title", "coords": [N, 2] or None, "edges": [(src, dst)],
    "invented": [(src, dst)], "missing": [(src, dst)]} with node indices. Panels are laid
    out ``cols`` to a row (default: up to 3)."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    geo, _ = map_panels(true_map, panels, curvature)
    cols = max(1, min(cols or 3, len(geo)))
    n_rows = max(1, -(-len(geo) // cols))
    fig = make_subplots(rows=n_rows, cols=cols, subplot_titles=[_wrap(g["title"]) for g in geo],
                        horizontal_spacing=0.03, vertical_spacing=0.12 / n_rows)
    layers = [("true", "true map", MAP_COLORS["true"], 1.0, "solid"),
              ("recovered", "recovered edges", MAP_COLORS["recovered"], 1.6, "solid"),
              ("missing", "missing edges", MAP_COLORS["missing"], 1.0, "dot"),
              ("invented", "invented edges", MAP_COLORS["invented"], 1.6, "solid")]
    shown: set[str] = set()
    for k, g in enumerate(geo, start=1):
        row, col = (k - 1) // cols + 1, (k - 1) % cols + 1
        for key, label, color, width, dash in layers:
            if len(g[key]) == 0:
                continue
            x, y = polylines_xy(g[key])
            fig.add_trace(go.Scatter(x=x, y=y, mode="lines", name=f"{label}", legendgroup=key, showlegend=key not in shown,
                                     line=dict(color=color, width=width, dash=dash), hoverinfo="skip"), row=row, col=col)
            shown.add(key)
        fig.add_trace(go.Scattergl(x=g["coords"][:, 0], y=g["coords"][:, 1], mode="markers", name="intersections",
                                   legendgroup="nodes", showlegend="nodes" not in shown,
                                   marker=dict(size=node_size, color=MAP_COLORS["node"]),
                                   text=[str(i) for i in range(len(g["coords"]))],
                                   hovertemplate="node %{text}<extra></extra>"), row=row, col=col)
        shown.add("nodes")
        fig.update_xaxes(visible=False, row=row, col=col)
        fig.update_yaxes(visible=False, scaleanchor="x" if k == 1 else f"x{k}", scaleratio=1, row=row, col=col)
    fig.update_annotations(font_size=11)
    fig.update_layout(**_LAYOUT, height=80 + 420 * n_rows, width=min(1150, max(600, 400 * cols)))
    return fig


def _wrap(title: str, width: int = 55) -> str:
    """Break a long subplot title onto lines (plotly does not wrap)."""
    import textwrap

    return "<br>".join(textwrap.wrap(str(title), width)) or str(title)
