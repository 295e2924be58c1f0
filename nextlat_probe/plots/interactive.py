"""Interactive plotly figures, written as self-contained offline HTML (plotly.js embedded,
no CDN: the page opens without network).

Every figure function takes RECORDS (``nextlat_probe.records``: lists of dicts as the
``compare`` runners return them; each one is checked with ``records.check_record``) and
returns a ``plotly.graph_objects.Figure`` that a notebook can restyle before
``write_html``. ``training_curves_figure`` is the exception: it takes a run's
``metrics.jsonl`` rows (or path). ``paper.py`` draws the same views from the same records
in matplotlib; colours live in ``style.py``, geometry in ``geometry.py``.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

import numpy as np

from ..errors import AnalysisError
from ..labels import label, layer_name, objective_name, variant_name
from ..records import value
from ..tables import format_value, metric_cell
from .geometry import (
    LOG_PANELS,
    PATHSTAR_RATES,
    SIMPLEX_CORNERS,
    as_float_array,
    belief_panels,
    by_name,
    checked,
    common_limits,
    deepest_layer,
    latest_step,
    layers_in_order,
    length_series,
    map_panels,
    points_records,
    polylines_xy,
    position_panels,
    train_panels,
    training_series,
    worldmodel_columns,
)
from .style import (
    INVENTED_ALPHA,
    MAP_COLORS,
    MAP_WIDTHS,
    MODEL_COLORS,
    VARIANT_DASHES,
    model_color,  # noqa: F401  (re-exported for notebooks)
    plotly_dash,
    plotly_marker,
    record_styles,
    rgb_strings,
)

__all__ = [
    "write_html",
    "write_report",
    "rank_figure",
    "rank_training_figure",
    "belief_figure",
    "probe_r2_figure",
    "transition_figure",
    "training_curves_figure",
    "position_loss_figure",
    "worldmodel_table_figure",
    "worldmodel_table_html",
    "map_figure",
    "taskeval_figure",
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


def _label(rows: list[Mapping[str, Any]]) -> str:
    return f"{rows[0]['name']} ({objective_name(rows[0]['objective'])})"


def _layer_axis(fig, layers: list[Any], **where: Any) -> None:
    """A categorical layer axis in pipeline order, its ticks in words (``block 1``)."""
    fig.update_xaxes(title_text="layer", categoryorder="array", categoryarray=layers, tickmode="array",
                     tickvals=layers, ticktext=[layer_name(x) for x in layers], **where)


def _wrap(title: str, width: int = 55) -> str:
    """Break a long subplot title onto lines (plotly does not wrap)."""
    import textwrap

    return "<br>".join(textwrap.wrap(str(title), width, break_on_hyphens=False)) or str(title)


def _grid(n: int, cols: int | None, default: int = 3) -> tuple[int, int]:
    c = max(1, min(cols or default, n))
    return -(-n // c), c


def _log_axis(fig, values: Any, axis: str = "y", **where: Any) -> None:
    """A log axis with readable ticks: every digit under one decade of data, 1-2-5 steps
    under two, decades above that; no minor numbers (plotly labels the minor ticks of a
    short log axis, which crowds them)."""
    v = np.asarray(values, dtype=np.float64).ravel()
    v = v[np.isfinite(v) & (v > 0)]
    update = fig.update_yaxes if axis == "y" else fig.update_xaxes
    if v.size == 0:
        update(type="log", **where)
        return
    lo, hi = np.floor(np.log10(v.min())), np.ceil(np.log10(v.max()))
    decades = np.log10(v.max() / v.min())
    subs = range(1, 10) if decades < 1 else (1, 2, 5) if decades < 2 else (1,)
    ticks = [m * 10.0**e for e in range(int(lo), int(hi) + 1) for m in subs]
    ticks = [t for t in ticks if v.min() / 1.5 <= t <= v.max() * 1.5]
    update(type="log", tickmode="array", tickvals=ticks, ticktext=[f"{t:g}" for t in ticks], **where)


def _equal_axes(fig, k: int, row: int, col: int, visible: bool = False) -> None:
    fig.update_xaxes(visible=visible, row=row, col=col)
    fig.update_yaxes(visible=visible, scaleanchor="x" if k == 1 else f"x{k}", scaleratio=1, row=row, col=col)


# --------------------------------------------------------------------------------------
# effective rank
# --------------------------------------------------------------------------------------
def rank_figure(records: list[dict[str, Any]]):
    """``rank`` records. Left: singular-value spectra (log-log), one line per model and
    layer (deeper layers more opaque, the deepest thicker). Right: effective rank per
    layer, one line per model. A model with records of several steps shows its latest."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    recs = latest_step(checked(records, "rank", "rank figure"))
    fig = make_subplots(rows=1, cols=2, subplot_titles=("singular-value spectrum (darker = deeper layer)",
                                                        "effective rank per layer"))
    styles = record_styles(recs)
    for name, rows in by_name(recs).items():
        st = styles[name]
        dash = plotly_dash(st)
        for j, r in enumerate(rows):
            s = as_float_array(r["metrics"].get("spectrum"))
            fig.add_trace(go.Scatter(
                x=np.arange(1, len(s) + 1), y=s, mode="lines", name=f"{name} {layer_name(r['layer'])}",
                legendgroup=f"{name} spectra", legendgrouptitle_text=f"{name}: spectra",
                line=dict(color=st["color"], width=1 + 1.5 * (j == len(rows) - 1), dash=dash),
                opacity=0.35 + 0.65 * (j + 1) / len(rows),
                hovertemplate="component %{x}<br>singular value %{y:.3g}<extra>" + f"{name} {layer_name(r['layer'])}"
                              + "</extra>"),
                row=1, col=1)
        fig.add_trace(go.Scatter(
            x=[r["layer"] for r in rows], y=as_float_array([r["metrics"].get("effective_rank") for r in rows]),
            mode="lines+markers", name=_label(rows), legendgroup=name, line=dict(color=st["color"], width=2.5, dash=dash),
            marker=dict(symbol=plotly_marker(st)),
            customdata=np.c_[as_float_array([r["val_loss"] for r in rows]), as_float_array([r["gap_to_floor"] for r in rows])],
            hovertemplate="%{x}: effective rank %{y:.2f}<br>validation loss %{customdata[0]:.4f} "
            "(gap to the floor %{customdata[1]:.4f})<extra>" + name + "</extra>"),
            row=1, col=2)
    spectra = np.concatenate([as_float_array(r["metrics"].get("spectrum")) for r in recs] or [np.zeros(0)])
    _log_axis(fig, spectra, "y", row=1, col=1)
    _log_axis(fig, np.arange(1, max(2, max(len(r["metrics"].get("spectrum") or []) for r in recs) + 1)), "x", row=1, col=1)
    fig.update_yaxes(title_text=label("spectrum").axis(), row=1, col=1)
    fig.update_xaxes(title_text="component", row=1, col=1)
    fig.update_yaxes(title_text=label("effective_rank").axis(), row=1, col=2)
    _layer_axis(fig, layers_in_order(recs), row=1, col=2)
    fig.update_layout(**_LAYOUT, height=450, width=1100)
    return fig


def rank_training_figure(records: list[dict[str, Any]], layer: str | None = None):
    """``rank`` records of several steps per model: effective rank at ``layer`` (default:
    the deepest block) vs training step (left) and vs validation loss (right, reversed),
    one line per model name. The right panel is the matched-loss comparison: an
    undertrained model looks compact at equal steps."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    recs = checked(records, "rank", "rank-along-training figure")
    lay = deepest_layer(recs) if layer is None else layer
    sel = [r for r in recs if r["layer"] == lay]
    if not sel:
        raise AnalysisError(f"rank-along-training figure: no rank records at layer {lay!r}")
    fig = make_subplots(rows=1, cols=2, subplot_titles=(f"effective rank ({layer_name(lay)}) vs step",
                                                        "effective rank vs validation loss"))
    styles = record_styles(sel)
    for name, rows in by_name(sel).items():
        rows = sorted(rows, key=lambda r: -1 if r["step"] is None else r["step"])
        st = styles[name]
        step = as_float_array([r["step"] for r in rows])
        er = as_float_array([r["metrics"].get("effective_rank") for r in rows])
        vl = as_float_array([r["val_loss"] for r in rows])
        line = dict(color=st["color"], width=2.5, dash=plotly_dash(st))
        fig.add_trace(go.Scatter(x=step, y=er, mode="lines+markers", name=name, legendgroup=name, line=line,
                                 hovertemplate="step %{x}: effective rank %{y:.2f}<extra>" + name + "</extra>"),
                      row=1, col=1)
        fig.add_trace(go.Scatter(x=vl, y=er, mode="lines+markers", name=name, legendgroup=name, showlegend=False, line=line,
                                 customdata=step,
                                 hovertemplate="validation loss %{x:.4f}: effective rank %{y:.2f} (step %{customdata})<extra>"
                                 + name + "</extra>"), row=1, col=2)
    fig.update_xaxes(title_text=label("step").text, row=1, col=1)
    fig.update_xaxes(title_text=label("val_loss").axis() + " (training →)", autorange="reversed", row=1, col=2)
    fig.update_yaxes(title_text=label("effective_rank").axis(), row=1, col=1)
    fig.update_layout(**_LAYOUT, height=450, width=1100)
    return fig


# --------------------------------------------------------------------------------------
# belief probes
# --------------------------------------------------------------------------------------
def belief_figure(records: list[dict[str, Any]], true_map: Any = None, max_points: int | None = 4000, seed: int = 0,
                  marker_size: float = 3.0, cols: int | None = None):
    """``probe`` records with ``metrics["points"]`` (other probe records are ignored).

    Beliefs (points ``true`` / ``pred``): a first panel of the exact beliefs, then one per
    record of the probed beliefs, coloured by the true belief; 3 states in the simplex
    (barycentric), more states on the first two principal components of the true beliefs.
    Taxi (points ``xy_true`` / ``xy_pred`` / ``node``): per record, the probed (x, y) of the
    current intersection over the true map (``true_map``: streets in grey), each point in
    the colour of its true intersection (``style.place_colors``: the map's corners are
    blue, vermillion, green and orange), so a good probe puts colours where they belong."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    recs, taxi = points_records(checked(records, "probe", "belief figure"))
    if taxi:
        base, panels = position_panels(recs, true_map, max_points, seed)
        lims = [base["nodes_xy"]] + [p["xy"] for p in panels]
    else:
        panels, is_simplex = belief_panels(recs, max_points, seed)
        lims = [p["xy"] for p in panels] + ([SIMPLEX_CORNERS] if is_simplex else [])
    n_rows, n_cols = _grid(len(panels), cols, 4)
    fig = make_subplots(rows=n_rows, cols=n_cols, subplot_titles=[_wrap(p["title"], 45) for p in panels],
                        horizontal_spacing=0.03, vertical_spacing=0.1 / n_rows)
    xr, yr = common_limits(lims)
    # panels as tall as the data are: a tall street map gets tall panels, not a thin strip
    aspect = float(np.clip((yr[1] - yr[0]) / max(xr[1] - xr[0], 1e-12), 0.35, 1.8)) if taxi else 1.0
    tri = np.vstack([SIMPLEX_CORNERS, SIMPLEX_CORNERS[:1]])
    for k, p in enumerate(panels, start=1):
        row, col = (k - 1) // n_cols + 1, (k - 1) % n_cols + 1
        if taxi:
            if len(base["segments"]):
                x, y = polylines_xy(base["segments"])
                fig.add_trace(go.Scatter(x=x, y=y, mode="lines", name="streets", legendgroup="streets", showlegend=k == 1,
                                         line=dict(color=MAP_COLORS["true_under"], width=1.0), hoverinfo="skip"),
                              row=row, col=col)
            nx = base["nodes_xy"]
            fig.add_trace(go.Scatter(x=nx[:, 0], y=nx[:, 1], mode="markers", name="intersections", legendgroup="nodes",
                                     showlegend=k == 1, marker=dict(size=6, color=rgb_strings(base["node_rgb"]),
                                                                    line=dict(color="#333333", width=0.5)),
                                     text=[str(i) for i in range(len(nx))], hovertemplate="node %{text}<extra></extra>"),
                          row=row, col=col)
            fig.add_trace(go.Scattergl(x=p["xy"][:, 0], y=p["xy"][:, 1], mode="markers", name=f"{p['name']}: probed (x, y)",
                                       marker=dict(size=marker_size, color=rgb_strings(p["rgb"]), opacity=0.6, line=dict(width=0)),
                                       text=[str(i) for i in p["node"]],
                                       hovertemplate="true node %{text}<br>probed (%{x:.2f}, %{y:.2f})<extra></extra>"),
                          row=row, col=col)
            _equal_axes(fig, k, row, col)
        else:
            if is_simplex:
                fig.add_trace(go.Scatter(x=tri[:, 0], y=tri[:, 1], mode="lines", line=dict(color="#444444", width=1),
                                         showlegend=False, hoverinfo="skip"), row=row, col=col)
            fig.add_trace(go.Scattergl(x=p["xy"][:, 0], y=p["xy"][:, 1], mode="markers", name=p["name"], showlegend=False,
                                       marker=dict(size=marker_size, color=rgb_strings(p["rgb"]), line=dict(width=0)),
                                       hoverinfo="skip"), row=row, col=col)
            _equal_axes(fig, k, row, col, visible=not is_simplex)
            if not is_simplex:
                fig.update_xaxes(title_text="PC 1 of true beliefs", row=row, col=col)
                fig.update_yaxes(title_text="PC 2" if col == 1 else None, row=row, col=col)
        fig.update_xaxes(range=xr, row=row, col=col)
        fig.update_yaxes(range=yr, row=row, col=col)
    fig.update_annotations(font_size=11)
    panel_w = 360 if not taxi else min(540, 1100 // n_cols)
    fig.update_layout(**_LAYOUT, height=int(110 + (panel_w * aspect + 40) * n_rows), width=max(440, panel_w * n_cols + 40),
                      margin=dict(l=20, r=20, t=70, b=40))
    if taxi:  # the legend under the maps: they get the page's width
        fig.update_layout(legend=dict(orientation="h", yanchor="top", y=-0.02, x=0))
    return fig


def probe_r2_figure(records: list[dict[str, Any]], metric: str = "r2"):
    """``probe`` records: ``metrics[metric]`` (default R^2) per layer, one line per model;
    the shuffled-belief control ``metrics["control_" + metric]`` dotted in the same colour.
    Records without the metric (e.g. no belief targets) are left out."""
    import plotly.graph_objects as go

    recs = latest_step([r for r in checked(records, "probe", "probe figure") if metric in r["metrics"]])
    if not recs:
        raise AnalysisError(f"probe figure: no probe record has metric {metric!r}")
    fig = go.Figure()
    styles = record_styles(recs)
    for name, rows in by_name(recs).items():
        st = styles[name]
        x = [r["layer"] for r in rows]
        fig.add_trace(go.Scatter(
            x=x, y=as_float_array([r["metrics"][metric] for r in rows]), mode="lines+markers", name=_label(rows),
            legendgroup=name, line=dict(color=st["color"], width=2.5, dash=plotly_dash(st)),
            marker=dict(symbol=plotly_marker(st)),
            hovertemplate="%{x}: " + label(metric, "probe").text + " %{y:.4f}<extra>" + name + "</extra>"))
        ctrl = [r["metrics"].get(f"control_{metric}") for r in rows]
        if any(c is not None for c in ctrl):
            fig.add_trace(go.Scatter(
                x=x, y=as_float_array(ctrl), mode="lines", name=f"{name} shuffled control", legendgroup=name,
                line=dict(color=st["color"], width=1.2, dash="dot"),
                hovertemplate="%{x}: shuffled control %{y:.4f}<extra>" + name + "</extra>"))
    _layer_axis(fig, layers_in_order(recs))
    fig.update_yaxes(title_text=label(metric, "probe").axis() + " (held-out sequences)")
    fig.update_layout(**_LAYOUT, height=450, width=750)
    return fig


# --------------------------------------------------------------------------------------
# transition consistency
# --------------------------------------------------------------------------------------
def transition_figure(records: list[dict[str, Any]], log_y: bool = True):
    """``transition`` records: relative error ||ĥ_{t+i} - h_{t+i}||² / ||h_{t+i} - mean h||²
    vs horizon i, one line per model (colour) and variant (solid = post-hoc mlp, dashed =
    own p_psi, dotted = post-hoc linear); right: per model the within-belief and
    within-state variance ratios (``belief_ratio``, ``state_ratio``) where defined."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    recs = checked(records, "transition", "transition figure")
    groups = by_name(recs)
    styles = record_styles(recs)
    ratios = {key: {n: value(rows[0]["metrics"].get(key)) for n, rows in groups.items()} for key in ("belief_ratio", "state_ratio")}
    ratios = {k: v for k, v in ratios.items() if any(np.isfinite(x) for x in v.values())}
    cols = 2 if ratios else 1
    fig = make_subplots(rows=1, cols=cols, column_widths=[0.72, 0.28][:cols],
                        subplot_titles=("relative error vs horizon", "within-group / total variance")[:cols])
    for name, rows in groups.items():
        st = styles[name]
        for r in rows:
            trace = f"{name}: {variant_name(r['variant'])}"
            fig.add_trace(go.Scatter(
                x=as_float_array(r["metrics"].get("horizons")), y=as_float_array(r["metrics"].get("errors")),
                mode="lines+markers", name=trace, legendgroup=name,
                line=dict(color=st["color"], width=2.2, dash=VARIANT_DASHES.get(r["variant"], ("dashdot", "-."))[0]),
                marker=dict(symbol=plotly_marker(st), size=6),
                hovertemplate="horizon %{x}: %{y:.4g}<extra>" + trace + "</extra>"), row=1, col=1)
    for key, vals in ratios.items():
        words = label(key).header(arrow=False)
        fig.add_trace(go.Bar(x=list(vals), y=np.array(list(vals.values())), name=words,
                             marker_color=[styles[n]["color"] for n in vals],
                             marker_pattern_shape="" if key == "belief_ratio" else "/",
                             hovertemplate="%{x}: %{y:.4g}<extra>" + words + "</extra>"), row=1, col=2)
    if ratios:
        fig.update_yaxes(title_text="variance share ↓ (0 = a function of the belief / state)", rangemode="tozero",
                         row=1, col=2)
        fig.update_layout(barmode="group")
    fig.update_xaxes(title_text="horizon i (steps ahead)", row=1, col=1)
    fig.update_yaxes(title_text=label("errors").axis(), row=1, col=1)
    if log_y:
        _log_axis(fig, np.concatenate([as_float_array(r["metrics"].get("errors")) for r in recs]), "y", row=1, col=1)
    fig.update_layout(**_LAYOUT, height=450, width=1100 if ratios else 800)
    return fig


# --------------------------------------------------------------------------------------
# training curves and per-position loss
# --------------------------------------------------------------------------------------
def training_curves_figure(runs: dict[str, Any], objectives: dict[str, str] | None = None):
    """Training curves of several runs: validation loss vs step with the exact entropy
    floor (dashed: one black line when all runs share it, else one per run in its colour),
    train cross-entropy, NextLat's next_h and KL terms (and MTP's extra-head CE when a run
    has it). ``runs``: name -> rows of the
    run's ``metrics.jsonl`` (``training.log.read_metrics``) or the file's path (not
    analysis records)."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    series, styles, floor = training_series(runs, objectives)
    panels = train_panels(series)
    n_rows = (len(panels) + 1) // 2
    def title(key: str, words: str) -> str:
        lab = label(key)
        words += f" ({lab.unit})" if lab.unit else ""
        if key == "gap_to_floor":
            words += f"; exact floor {floor:.4f}" if floor is not None else "; each run's own floor"
        return f"{words} {lab.arrow}".strip()

    titles = [title(k, t) for k, t in panels]
    fig = make_subplots(rows=n_rows, cols=2, subplot_titles=titles, vertical_spacing=0.24 / n_rows)
    pos = {key: (i // 2 + 1, i % 2 + 1) for i, (key, _) in enumerate(panels)}
    for name, s in series.items():
        st = styles[name]
        first = True
        for key, _ in panels:
            if key not in s:
                continue
            x, y = s[key]
            fig.add_trace(go.Scatter(x=x, y=y, mode="lines+markers" if key == "gap_to_floor" else "lines", name=name,
                                     legendgroup=name, showlegend=first,
                                     line=dict(color=st["color"], width=2, dash=plotly_dash(st)),
                                     hovertemplate="step %{x}: %{y:.4g}<extra>" + f"{name}: {label(key).text}"
                                                   + "</extra>"),
                          row=pos[key][0], col=pos[key][1])
            first = False
    for key, (r, c) in pos.items():
        fig.update_xaxes(title_text=label("step").text, row=r, col=c)
        fig.update_yaxes(title_text=label(key).unit or None, row=r, col=c)
        if key in LOG_PANELS:
            _log_axis(fig, np.concatenate([s[key][1] for s in series.values() if key in s] or [np.zeros(0)]), "y",
                      row=r, col=c)
    fig.update_layout(**_LAYOUT, height=375 * n_rows, width=1100)
    return fig


def position_loss_figure(records: list[dict[str, Any]]):
    """``position_loss`` records: per-position validation loss vs the exact per-position
    cross-entropy (the floor; dashed). Left: loss and floor; right: the excess over it."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    recs = checked(records, "position_loss", "position-loss figure")
    fig = make_subplots(rows=1, cols=3, subplot_titles=("loss per position", "loss − exact floor",
                                                        "targets scored per position"))
    styles = record_styles(recs)
    floors = [as_float_array(r["metrics"]["floor"]) for r in recs]
    shared = all(f.shape == floors[0].shape and np.allclose(f, floors[0], equal_nan=True) for f in floors)
    counts = [as_float_array(r["metrics"].get("count")) for r in recs]
    same_counts = all(c.shape == counts[0].shape and np.array_equal(c, counts[0]) for c in counts)
    if same_counts and len(counts[0]):  # the same sequences for every model: one set of bars
        fig.add_trace(go.Bar(x=as_float_array(recs[0]["metrics"]["positions"]), y=counts[0], name="targets (every model)",
                             marker_color="#9A9A9A", showlegend=False,
                             hovertemplate="position %{x}: %{y:d} targets<extra></extra>"), row=1, col=3)
    for r, fl in zip(recs, floors):
        name, st = r["name"], styles[r["name"]]
        x, y = as_float_array(r["metrics"]["positions"]), as_float_array(r["metrics"]["loss"])
        line = dict(color=st["color"], width=2, dash=plotly_dash(st))
        fig.add_trace(go.Scatter(x=x, y=y, mode="lines+markers", name=name, legendgroup=name, line=line,
                                 hovertemplate="position %{x}: %{y:.4f}<extra>" + name + "</extra>"), row=1, col=1)
        fig.add_trace(go.Scatter(x=x, y=y - fl, mode="lines+markers", name=name, legendgroup=name, showlegend=False,
                                 line=line, hovertemplate="position %{x}: +%{y:.4f}<extra>" + name + "</extra>"),
                      row=1, col=2)
        cnt = as_float_array(r["metrics"].get("count"))
        if len(cnt) == len(x) and not same_counts:
            fig.add_trace(go.Bar(x=x, y=cnt, name=f"{name}: targets", legendgroup=name, showlegend=False,
                                 marker_color=st["color"], opacity=0.6,
                                 hovertemplate="position %{x}: %{y:d} targets<extra>" + name + "</extra>"),
                          row=1, col=3)
        if not shared:
            fig.add_trace(go.Scatter(x=x, y=fl, mode="lines", name=f"{name} floor", legendgroup=name,
                                     line=dict(color=st["color"], width=1.2, dash="dash")), row=1, col=1)
    if shared:
        fig.add_trace(go.Scatter(x=as_float_array(recs[0]["metrics"]["positions"]), y=floors[0], mode="lines",
                                 name="exact floor", line=dict(color=MODEL_COLORS["exact"], width=1.5, dash="dash")),
                      row=1, col=1)
    fig.add_hline(y=0.0, line=dict(color="#888888", width=1), row=1, col=2)
    fig.update_xaxes(title_text="position")
    fig.update_yaxes(title_text=label("loss", "position_loss").axis(), row=1, col=1)
    fig.update_yaxes(title_text="nats/token ↓", row=1, col=2)
    fig.update_yaxes(title_text=label("count").text, row=1, col=3)
    fig.update_layout(**_LAYOUT, height=430, width=1150, barmode="group")
    return fig


# --------------------------------------------------------------------------------------
# taxi: world-model table and maps
# --------------------------------------------------------------------------------------
def _worldmodel_columns(records: list[dict[str, Any]], columns: list[str] | None):
    """(column titles, {key: cell} per model, {key: row header}, model colours) of the
    world-model table: one column per record (an out-of-distribution or matched-loss record
    beside its model)."""
    wm, cols, cell = worldmodel_columns(records, columns)
    styles = record_styles(wm)
    titles = [r["name"] if not r.get("variant") else f"{r['name']} [{variant_name(r['variant'])}]" for r in wm]
    values = [{k: cell(r, k) for k, _ in cols} for r in wm]
    return titles, values, dict(cols), [styles[r["name"]]["color"] for r in wm]


def worldmodel_table_figure(records: list[dict[str, Any]], columns: list[str] | None = None,
                            formats: dict[str, str] | None = None):
    """``worldmodel`` records (optionally mixed with ``rank`` records of the same models, to
    show their effective rank) as a plotly table with the metrics as rows (label, unit and
    direction from ``nextlat_probe.labels``) and the models as columns (titles coloured by
    objective), each rate as 'value [low, high]' (Wilson 95%; distinction under vafa2024
    as the per-pair mean with its interval); ``formats`` overrides a metric's format.
    However many metrics there are, the table grows down, not sideways."""
    import plotly.graph_objects as go

    titles, values, heads, colors = _worldmodel_columns(records, columns)
    fmts = dict(formats or {})

    def show(v: Any, key: str) -> str:
        return format_value(v, fmts[key]) if key in fmts else metric_cell(v, key, "worldmodel")

    keys = list(heads)
    cells = [list(heads.values())] + [[show(vals.get(k), k) for k in keys] for vals in values]
    fig = go.Figure(go.Table(
        columnwidth=[2.2] + [1.2] * len(values),
        header=dict(values=["metric", *titles], fill_color="#EEEEEE", align="left",
                    font=dict(size=13, color=["#222222", *colors])),
        cells=dict(values=cells, align=["left"] + ["right"] * len(values), font=dict(size=13), height=26),
    ))
    fig.update_layout(**_LAYOUT, height=90 + 27 * (len(keys) + 1), width=min(1150, 420 + 230 * len(values)),
                      margin=dict(l=10, r=10, t=40, b=10))
    return fig


def worldmodel_table_html(records: list[dict[str, Any]], columns: list[str] | None = None) -> str:
    """The same table as ``worldmodel_table_figure``, as plain HTML (the report's; it never
    scrolls or cuts: metrics as rows, models as columns)."""
    from ..tables import metric_table_html

    titles, values, heads, colors = _worldmodel_columns(records, columns)
    return metric_table_html(list(zip(titles, values)), list(heads), "worldmodel", colors=colors, headers=heads)


#: map layers in drawing order: geometry key, legend label, colour key, dash
_MAP_LAYERS = [("recovered", "recovered streets", "solid"), ("missing", "missing streets", "dot"),
               ("embedded", "embedded map", "solid"), ("invented", "invented edges", "solid")]


def map_figure(true_map: Any, records: list[dict[str, Any]], curvature: float = 0.25, node_size: float = 4.0,
               cols: int | None = None):
    """``mapping`` records over the true map (a ``StreetMap``). First panel: the true map
    alone, dark. Then one panel per record, each over a thinner grey copy of the true map:
    ``behaviour`` = recovered streets (true streets minus ``missed_edges``), missing
    streets dotted, ``invented_edges`` as thin translucent arcs (as in Vafa et al.);
    ``probe`` / ``mds`` = the true streets between the embedded ``nodes`` at their
    ``coords``. One row per model, [true map | the model's panels], unless ``cols`` asks for
    that many panels to a row."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    recs = checked(records, "mapping", "map figure")
    geo = map_panels(true_map, recs, curvature)
    if cols is None:  # a row per model: no model's panels wrap onto the next one's row
        per_model = [len(g) for g in by_name(recs).values()]
        n_rows, n_cols = len(per_model), 1 + max(per_model)
        places = [(1, 1)] + [(r + 1, 2 + j) for r, k in enumerate(per_model) for j in range(k)]
    else:
        n_rows, n_cols = _grid(len(geo), cols)
        places = [((k - 1) // n_cols + 1, (k - 1) % n_cols + 1) for k in range(1, len(geo) + 1)]
    at = {p: g for p, g in zip(places, geo)}
    specs = [[{} if (r, c) in at else None for c in range(1, n_cols + 1)] for r in range(1, n_rows + 1)]
    fig = make_subplots(rows=n_rows, cols=n_cols, specs=specs,
                        subplot_titles=[_wrap(at[(r, c)]["title"], 48) for r in range(1, n_rows + 1)
                                        for c in range(1, n_cols + 1) if (r, c) in at],
                        horizontal_spacing=0.03, vertical_spacing=0.12 / n_rows)
    shown: set[str] = set()

    def lines(paths, name, group, color, width, dash="solid", opacity=1.0, row=1, col=1):
        x, y = polylines_xy(paths)
        fig.add_trace(go.Scatter(x=x, y=y, mode="lines", name=name, legendgroup=group, showlegend=group not in shown,
                                 line=dict(color=color, width=width, dash=dash), opacity=opacity, hoverinfo="skip"),
                      row=row, col=col)
        shown.add(group)

    for k, ((row, col), g) in enumerate(sorted(at.items(), key=lambda kv: kv[0]), start=1):
        if g["kind"] == "true":
            lines(g["true"], "true map", "true", MAP_COLORS["true"], MAP_WIDTHS["true"], row=row, col=col)
        else:
            lines(g["true"], "true map (under)", "true_under", MAP_COLORS["true_under"], MAP_WIDTHS["true_under"],
                  row=row, col=col)
        for key, words, dash in _MAP_LAYERS:
            if len(g[key]):
                lines(g[key], words, key, MAP_COLORS[key], MAP_WIDTHS[key], dash,
                      INVENTED_ALPHA if key == "invented" else 1.0, row, col)
        xy = g["coords"]
        fig.add_trace(go.Scattergl(x=xy[:, 0], y=xy[:, 1], mode="markers", name="intersections", legendgroup="nodes",
                                   showlegend="nodes" not in shown, marker=dict(size=node_size, color=MAP_COLORS["node"]),
                                   hoverinfo="skip"), row=row, col=col)
        shown.add("nodes")
        _equal_axes(fig, k, row, col)
    fig.update_annotations(font_size=11)
    fig.update_layout(**_LAYOUT, height=110 + 340 * n_rows, width=min(1150, max(600, 300 * n_cols)),
                      legend=dict(orientation="h", yanchor="top", y=-0.02, x=0), margin=dict(l=20, r=20, t=80, b=40))
    return fig


# --------------------------------------------------------------------------------------
# self-speculative decoding
# --------------------------------------------------------------------------------------
def speculative_figure(records: list[dict[str, Any]]):
    """``speculative`` records: left, the distribution of drafted tokens accepted per
    verification (fraction of verifications) per model and policy; right, tokens per
    transformer forward and wall-clock speedup over greedy per policy (the regime, e.g.
    no KV cache, is in the title)."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    recs = checked(records, "speculative", "speculative figure")
    regimes = sorted({str(r["params"].get("regime")) for r in recs})
    fig = make_subplots(rows=1, cols=2, subplot_titles=(
        "accepted drafted tokens per verification",
        f"tokens per forward and wall-clock speedup ({', '.join(regimes)})"))
    names = list(dict.fromkeys(r["name"] for r in recs))
    for r in recs:
        hist = as_float_array(r["metrics"]["accepted_histogram"])
        frac = hist / hist.sum() if hist.sum() > 0 else hist
        label = f"{r['name']} {r['variant']}" if len(names) > 1 else str(r["variant"])
        fig.add_trace(go.Bar(x=np.arange(hist.size), y=frac, name=label, legendgroup=label,
                             hovertemplate="%{x} accepted: %{y:.3f}<extra>" + label + "</extra>"), row=1, col=1)
    for name in names:
        rows = [r for r in recs if r["name"] == name]
        x = [str(r["variant"]) for r in rows]
        prefix = f"{name}: " if len(names) > 1 else ""
        fig.add_trace(go.Bar(x=x, y=[value(r["metrics"]["tokens_per_forward"]) for r in rows],
                             name=f"{prefix}tokens / forward", hovertemplate="%{x}: %{y:.2f} tokens/forward<extra></extra>"),
                      row=1, col=2)
        fig.add_trace(go.Bar(x=x, y=[value(r["metrics"]["speedup"]) for r in rows], name=f"{prefix}speedup",
                             hovertemplate="%{x}: %{y:.2f}x<extra></extra>"), row=1, col=2)
    fig.add_hline(y=1.0, line=dict(color="#888888", width=1, dash="dash"), row=1, col=2)
    fig.update_xaxes(title_text="drafted tokens accepted", row=1, col=1)
    fig.update_yaxes(title_text="fraction of verifications", row=1, col=1)
    fig.update_xaxes(title_text="draft policy", row=1, col=2)
    fig.update_layout(**_LAYOUT, barmode="group", height=450, width=1100)
    return fig


# --------------------------------------------------------------------------------------
# the paper's other tasks
# --------------------------------------------------------------------------------------
def taskeval_figure(records: list[dict[str, Any]]):
    """``taskeval`` records. A5: token and whole-sequence accuracy vs evaluation length, one
    line per model (colour; dashed = p_psi roll-out), the training length marked by a
    vertical line. Path-star: exact-path, first-step and valid-path rates per model with
    Wilson intervals (valid path ≫ exact path is the Clever-Hans signature)."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    from ..records import interval

    recs = checked(records, "taskeval", "task figure")
    styles = record_styles(recs)
    series = length_series(recs)
    if series:
        fig = make_subplots(rows=1, cols=2, subplot_titles=("token accuracy", "whole-sequence accuracy"))
        for (name, variant), s in series.items():
            st = styles[name]
            for col, key in ((1, "token"), (2, "sequence")):
                y = as_float_array(s[key])
                lo = np.array([interval(v)[1] for v in s[key]])
                hi = np.array([interval(v)[2] for v in s[key]])
                fig.add_trace(go.Scatter(
                    x=s["lengths"], y=y, mode="lines+markers", name=f"{name}: {variant}", legendgroup=f"{name}{variant}",
                    showlegend=col == 1, error_y=dict(type="data", symmetric=False, array=hi - y, arrayminus=y - lo),
                    line=dict(color=st["color"], width=2.2, dash="dash" if variant == "p_psi rollout" else "solid"),
                    marker=dict(symbol=plotly_marker(st), size=7),
                    hovertemplate="length %{x}: %{y:.3f}<extra>" + f"{name}: {variant}" + "</extra>"), row=1, col=col)
        trained = {s["train_length"] for s in series.values() if s["train_length"]}
        for t in trained:
            for col in (1, 2):
                fig.add_vline(x=t, line=dict(color="#777777", dash="dot"), row=1, col=col)
        fig.update_xaxes(title_text="sequence length" + (f" (dotted: training length {', '.join(map(str, sorted(trained)))})"
                                                         if trained else ""))
        fig.update_yaxes(title_text="accuracy", range=[0, 1.02])
        fig.update_layout(**_LAYOUT, height=450, width=1100)
        return fig
    fig = go.Figure()
    names = list(dict.fromkeys(r["name"] for r in recs))
    for key, words in PATHSTAR_RATES:
        vals = [interval(next(r for r in recs if r["name"] == n)["metrics"][key]) for n in names]
        y = np.array([v[0] for v in vals])
        fig.add_trace(go.Bar(x=names, y=y, name=words,
                             error_y=dict(type="data", symmetric=False, array=np.array([v[2] for v in vals]) - y,
                                          arrayminus=y - np.array([v[1] for v in vals])),
                             hovertemplate="%{x}: %{y:.3f}<extra>" + words + "</extra>"))
    fig.update_yaxes(title_text="rate", range=[0, 1.05])
    fig.update_layout(**_LAYOUT, barmode="group", height=420, width=max(500, 160 * len(names) + 250))
    return fig

