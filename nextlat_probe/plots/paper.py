"""Paper figures (matplotlib): the views of ``interactive.py`` from the same RECORDS,
sized for single-column (3.25 in) and double-column (6.75 in) papers, in one style
(``paper_style``), saved as vector PDF / SVG and a 300-dpi PNG (``save_figure``).

Every ``*_plot`` function takes records (``nextlat_probe.records``; checked with
``records.check_record``), draws into ``ax`` (one Axes, or a list when the view has
several panels) or into a new figure sized for ``column``, and returns the ``Figure``.
``training_curves_plot`` takes metrics-log rows per run instead. Figures are built with
``matplotlib.figure.Figure`` directly (no pyplot state, any backend, nothing to close).

    from nextlat_probe.plots import paper
    fig = paper.rank_plot(records, column="double")
    paper.save_figure(fig, "figures/rank")   # rank.pdf, rank.svg, rank.png
"""
from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ..errors import AnalysisError, UsageError
from ..labels import label, layer_name, objective_name, variant_name
from ..records import interval, value
from .geometry import (
    LOG_PANELS,
    PATHSTAR_RATES,
    SIMPLEX_CORNERS,
    TABLE1_RATES,
    TRAIN_PANELS,
    as_float_array,
    belief_panels,
    by_name,
    checked,
    common_limits,
    deepest_layer,
    has_interval,
    latest_step,
    layers_in_order,
    length_series,
    map_panels,
    points_records,
    position_panels,
    training_series,
    worldmodel_columns,
)
from .style import (
    COLUMN_WIDTHS,
    INTERVAL_NOTE,
    INVENTED_ALPHA,
    MAP_COLORS,
    MAP_WIDTHS,
    MODEL_COLORS,
    VARIANT_DASHES,
    figsize,
    mpl_dash,
    mpl_marker,
    paper_style,
    record_styles,
)

__all__ = [
    "paper_style",
    "new_figure",
    "save_figure",
    "rank_plot",
    "rank_training_plot",
    "belief_plot",
    "probe_r2_plot",
    "transition_plot",
    "training_curves_plot",
    "position_loss_plot",
    "worldmodel_plot",
    "table1_plot",
    "INTERVAL_NOTE",
    "map_plot",
    "taskeval_plot",
]

_NATS = "nats/token"
#: figure-file metadata without timestamps, so re-saving the same figure gives the same file
_METADATA = {"pdf": {"CreationDate": None}, "svg": {"Date": None}, "png": {}}


def new_figure(column: str = "single", rows: int = 1, cols: int = 1, aspect: float = 0.75, **subplot_kw: Any):
    """(Figure, flat list of Axes) of ``rows`` x ``cols`` panels sized for ``column``, with
    constrained layout, in the paper style."""
    from matplotlib.figure import Figure

    with paper_style():
        fig = Figure(figsize=figsize(column, aspect, rows, cols), layout="constrained")
        axes = fig.subplots(rows, cols, squeeze=False, **subplot_kw)
    return fig, list(axes.ravel())


def save_figure(fig, path_stem: str | Path, formats: Sequence[str] = ("pdf", "svg", "png"), dpi: int = 300) -> list[Path]:
    """Write ``fig`` as ``path_stem.<format>`` for each format (vector PDF / SVG, raster PNG
    at ``dpi``); a suffix already on ``path_stem`` that names one of the formats is
    dropped. Returns the written paths."""
    stem = Path(path_stem)
    if stem.suffix.lstrip(".").lower() in {f.lower() for f in formats}:
        stem = stem.with_suffix("")
    stem.parent.mkdir(parents=True, exist_ok=True)
    out = []
    with paper_style():
        for fmt in formats:
            path = stem.parent / f"{stem.name}.{fmt}"
            fig.savefig(path, format=fmt, dpi=dpi, metadata=_METADATA.get(fmt))
            out.append(path)
    return out


# --------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------
def _root(ax):
    try:
        return ax.get_figure(root=True)
    except TypeError:  # matplotlib < 3.10
        fig = ax.figure
        return getattr(fig, "figure", fig) if not hasattr(fig, "savefig") else fig


def _axes(ax: Any, n: int, column: str, aspect: float = 0.75, rows: int = 1, **kw: Any):
    """(Figure, n Axes): new ones sized for ``column`` when ``ax`` is None, else the given
    Axes (one, or a sequence of at least ``n``)."""
    if ax is None:
        cols = int(np.ceil(n / rows))
        fig, axes = new_figure(column, rows, cols, aspect, **kw)
        for extra in axes[n:]:
            extra.set_visible(False)
        return fig, axes[:n]
    axes = list(np.ravel(np.asarray(ax, dtype=object))) if isinstance(ax, (list, tuple, np.ndarray)) else [ax]
    if len(axes) < n:
        raise UsageError(f"this figure needs {n} axes, got {len(axes)}")
    return _root(axes[0]), axes[:n]


def _wrap(title: str, width: int = 38) -> str:
    return "\n".join(textwrap.wrap(str(title), width, break_on_hyphens=False)) or str(title)


def _layer_ticks(a, layers: list[Any]) -> dict[Any, int]:
    pos = {lay: i for i, lay in enumerate(layers)}
    names = [layer_name(k) for k in pos]
    crowded = sum(len(n) for n in names) > 40  # the names would run into each other: slant them
    a.set_xticks(list(pos.values()), names, rotation=25 if crowded else 0, ha="right" if crowded else "center")
    return pos


def _model_label(name: str, objective: str | None) -> str:
    """``gpt-seed0 (GPT)``: a model in a legend, its objective in words."""
    return f"{name} ({objective_name(objective)})"


def _tidy_log(a, axis: str = "y") -> None:
    """Readable ticks on a log axis: every digit under one decade, 1-2-5 steps under two
    (no tick at all would show otherwise), decades only above that; no minor labels
    (matplotlib labels the minor ticks of a short log axis, which crowds them)."""
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    ax_obj = a.yaxis if axis == "y" else a.xaxis
    lo, hi = a.get_ylim() if axis == "y" else a.get_xlim()
    if not (lo > 0 and hi > 0):
        return
    decades = abs(np.log10(hi / lo))
    # under one decade every digit (0.03, 0.04, 0.05), under two 1-2-5, above that decades only
    subs = tuple(float(k) for k in range(1, 10)) if decades < 1 else (1.0, 2.0, 5.0) if decades < 2 else (1.0,)
    ax_obj.set_major_locator(LogLocator(base=10, subs=subs, numticks=8))
    ax_obj.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    ax_obj.set_minor_formatter(NullFormatter())


# --------------------------------------------------------------------------------------
# effective rank
# --------------------------------------------------------------------------------------
def rank_plot(records: list[dict[str, Any]], ax: Any = None, column: str = "double"):
    """``rank`` records: singular-value spectra (log-log; deeper layers darker, named in
    the left legend) and effective rank per layer, one colour per model (latest step of
    each). Two panels."""
    from matplotlib.lines import Line2D

    recs = latest_step(checked(records, "rank", "rank plot"))
    layers = layers_in_order(recs)
    shade = {lay: 0.3 + 0.7 * (j + 1) / len(layers) for j, lay in enumerate(layers)}
    with paper_style():
        fig, (a1, a2) = _axes(ax, 2, column)
        styles = record_styles(recs)
        pos = _layer_ticks(a2, layers)
        for name, rows in by_name(recs).items():
            st = styles[name]
            for j, r in enumerate(rows):
                s = as_float_array(r["metrics"].get("spectrum"))
                last = j == len(rows) - 1
                a1.plot(np.arange(1, len(s) + 1), s, color=st["color"], ls=mpl_dash(st), alpha=shade[r["layer"]],
                        lw=1.2 if last else 0.6, label=f"{name} {r['layer']}")
            a2.plot([pos[r["layer"]] for r in rows], as_float_array([r["metrics"].get("effective_rank") for r in rows]),
                    color=st["color"], ls=mpl_dash(st), marker=mpl_marker(st),
                    label=_model_label(name, rows[0]["objective"]))
        a1.set(xscale="log", yscale="log", xlabel="component", ylabel=label("spectrum").axis(),
               title="singular-value spectrum")
        _tidy_log(a1, "x")
        _tidy_log(a1, "y")
        a1.legend(handles=[Line2D([], [], color="#333333", alpha=shade[lay], lw=1.0, label=layer_name(lay))
                           for lay in layers], title="layer (darker = deeper)", loc="lower left")
        a2.set(xlabel="layer", ylabel=label("effective_rank").axis(), title="effective rank per layer")
        a2.legend()
    return fig


def rank_training_plot(records: list[dict[str, Any]], ax: Any = None, column: str = "double", layer: str | None = None):
    """``rank`` records of several steps per model: effective rank at ``layer`` (default the
    deepest block) vs training step and vs validation loss (x reversed: training goes left
    to right), one line per model name. Two panels."""
    recs = checked(records, "rank", "rank-along-training plot")
    lay = deepest_layer(recs) if layer is None else layer
    sel = [r for r in recs if r["layer"] == lay]
    if not sel:
        raise AnalysisError(f"rank-along-training plot: no rank records at layer {lay!r}")
    with paper_style():
        fig, (a1, a2) = _axes(ax, 2, column)
        styles = record_styles(sel)
        for name, rows in by_name(sel).items():
            rows = sorted(rows, key=lambda r: -1 if r["step"] is None else r["step"])
            st = styles[name]
            er = as_float_array([r["metrics"].get("effective_rank") for r in rows])
            kw = dict(color=st["color"], ls=mpl_dash(st), marker=mpl_marker(st))
            a1.plot(as_float_array([r["step"] for r in rows]), er, label=name, **kw)
            a2.plot(as_float_array([r["val_loss"] for r in rows]), er, **kw)
        a1.set(xlabel=label("step").text, ylabel=label("effective_rank").axis(),
               title=f"effective rank ({layer_name(lay)}) vs step")
        a2.set(xlabel=label("val_loss").axis() + " (training →)", title="effective rank vs validation loss")
        a2.invert_xaxis()
        a1.legend()
    return fig


# --------------------------------------------------------------------------------------
# belief probes
# --------------------------------------------------------------------------------------
def belief_plot(records: list[dict[str, Any]], true_map: Any = None, ax: Any = None, column: str = "double",
                max_points: int | None = 4000, seed: int = 0, marker_size: float = 1.5):
    """Paper version of ``interactive.belief_figure``: exact beliefs and each record's
    probed beliefs (simplex for 3 states, PCA otherwise; colour = true belief), or for the
    taxi world the probed (x, y) over the true map in the colour of the true
    intersection. Points are rasterised (the PDF stays small), text and frame vector."""
    from matplotlib.collections import LineCollection

    recs, taxi = points_records(checked(records, "probe", "belief plot"))
    if taxi:
        base, panels = position_panels(recs, true_map, max_points, seed)
        lims = [base["nodes_xy"]] + [p["xy"] for p in panels]
        is_simplex = False
    else:
        panels, is_simplex = belief_panels(recs, max_points, seed)
        lims = [p["xy"] for p in panels] + ([SIMPLEX_CORNERS] if is_simplex else [])
    xr, yr = common_limits(lims)
    with paper_style():
        n = len(panels)
        n_rows = -(-n // 4)
        # each panel as tall as the data are (a tall map gets tall panels, not a strip)
        aspect = (yr[1] - yr[0]) / max(xr[1] - xr[0], 1e-12) if taxi else (0.9 if is_simplex else 1.0)
        n_cols = -(-n // n_rows)
        col = column if ax is not None or not taxi else ("single" if n_cols == 1 else "double")
        fig, axes = _axes(ax, n, col, aspect=float(np.clip(aspect, 0.5, 1.6)), rows=n_rows)
        tri = np.vstack([SIMPLEX_CORNERS, SIMPLEX_CORNERS[:1]])
        for a, p in zip(axes, panels):
            if taxi:
                if len(base["segments"]):
                    a.add_collection(LineCollection(base["segments"], colors=MAP_COLORS["true_under"], linewidths=0.5))
                a.scatter(base["nodes_xy"][:, 0], base["nodes_xy"][:, 1], c=base["node_rgb"], s=6, linewidths=0.3,
                          edgecolors="#333333", zorder=2)
                a.scatter(p["xy"][:, 0], p["xy"][:, 1], c=p["rgb"], s=marker_size, linewidths=0, alpha=0.6, zorder=3,
                          rasterized=True, label=p["name"])
                a.set_axis_off()
            else:
                if is_simplex:
                    a.plot(tri[:, 0], tri[:, 1], color="#444444", lw=0.6)
                    a.set_axis_off()
                else:
                    a.set(xlabel="PC 1", ylabel="PC 2", xticks=[], yticks=[])
                a.scatter(p["xy"][:, 0], p["xy"][:, 1], c=p["rgb"], s=marker_size, linewidths=0, rasterized=True,
                          label=p["name"])
            a.set(xlim=xr, ylim=yr, aspect="equal")
            a.set_title(_wrap(p["title"], 30), fontsize="small")
    return fig


def probe_r2_plot(records: list[dict[str, Any]], ax: Any = None, column: str = "single", metric: str = "r2"):
    """``probe`` records: ``metrics[metric]`` per layer, one line per model; the shuffled
    control ``metrics["control_" + metric]`` dotted."""
    recs = latest_step([r for r in checked(records, "probe", "probe plot") if metric in r["metrics"]])
    if not recs:
        raise AnalysisError(f"probe plot: no probe record has metric {metric!r}")
    with paper_style():
        fig, (a,) = _axes(ax, 1, column)
        styles = record_styles(recs)
        pos = _layer_ticks(a, layers_in_order(recs))
        for name, rows in by_name(recs).items():
            st = styles[name]
            x = [pos[r["layer"]] for r in rows]
            a.plot(x, as_float_array([r["metrics"][metric] for r in rows]), color=st["color"], ls=mpl_dash(st),
                   marker=mpl_marker(st), label=_model_label(name, rows[0]["objective"]))
            ctrl = [r["metrics"].get(f"control_{metric}") for r in rows]
            if any(c is not None for c in ctrl):
                a.plot(x, as_float_array(ctrl), color=st["color"], ls=":", lw=0.8, label=f"{name} shuffled control")
        lab = label(metric, "probe")
        a.set(xlabel="layer", ylabel=f"{lab.header(arrow=False)} (held out) {lab.arrow}")
        if ax is None:  # under the figure, clear of the slanted layer names
            fig.legend(*a.get_legend_handles_labels(), loc="outside lower center", ncol=2, fontsize="x-small")
        else:
            a.legend(fontsize="x-small")
    return fig


# --------------------------------------------------------------------------------------
# transition consistency
# --------------------------------------------------------------------------------------
def transition_plot(records: list[dict[str, Any]], ax: Any = None, column: str = "single", log_y: bool = True):
    """``transition`` records: relative error vs horizon per model (colour) and variant
    (solid = post-hoc MLP, dashed = own p_ψ, dotted = post-hoc linear); the belief /
    state variance ratios, where defined, are written in the legend."""
    from matplotlib.lines import Line2D
    from matplotlib.ticker import MaxNLocator

    recs = checked(records, "transition", "transition plot")
    groups = by_name(recs)
    styles = record_styles(recs)
    with paper_style():
        fig, (a,) = _axes(ax, 1, column, aspect=0.8)
        used: list[str] = []
        for name, rows in groups.items():
            st = styles[name]
            for r in rows:
                dash = VARIANT_DASHES.get(r["variant"], ("dashdot", "-."))[1]
                a.plot(as_float_array(r["metrics"].get("horizons")), as_float_array(r["metrics"].get("errors")),
                       color=st["color"], ls=dash, marker=mpl_marker(st), ms=2.5,
                       label=f"{name}: {variant_name(r['variant'])}")
                if r["variant"] not in used:
                    used.append(r["variant"])

        def legend_label(n: str) -> str:
            m = groups[n][0]["metrics"]
            parts = [f"{k} {value(m.get(k + '_ratio')):.3g}" for k in ("belief", "state") if np.isfinite(value(m.get(k + "_ratio")))]
            return n if not parts else f"{n} (within-{', within-'.join(parts)})"

        handles = [Line2D([], [], color=styles[n]["color"], marker=mpl_marker(styles[n]), ms=2.5, label=legend_label(n))
                   for n in groups]
        handles += [Line2D([], [], color="#555555", ls=VARIANT_DASHES.get(v, ("", "-."))[1], label=variant_name(v))
                    for v in used]
        # below the axes: inside, the legend would cover the short horizons' points
        a.legend(handles=handles, loc="upper center", bbox_to_anchor=(0.5, -0.2), ncol=2, fontsize="x-small")
        a.xaxis.set_major_locator(MaxNLocator(integer=True))
        a.set(xlabel="horizon i (steps ahead)", ylabel=label("errors").axis(), yscale="log" if log_y else "linear")
        if log_y:
            _tidy_log(a, "y")
    return fig


# --------------------------------------------------------------------------------------
# training curves and per-position loss
# --------------------------------------------------------------------------------------
def training_curves_plot(runs: dict[str, Any], objectives: dict[str, str] | None = None, ax: Any = None, column: str = "double"):
    """The validation loss minus the exact floor (log axis: the gap between two models near
    their floor shows), train CE, next_h and KL vs step, one colour per run (``runs``:
    name -> metrics-log rows or path); panels without data (e.g. next_h for GPT-only runs)
    are left out. The floor itself is written in the first panel's title."""
    from matplotlib.ticker import MaxNLocator

    series, styles, floor = training_series(runs, objectives)
    keys = [(k, t) for k, t in TRAIN_PANELS if any(k in s for s in series.values())]  # only panels with data
    with paper_style():
        fig, axes = _axes(ax, len(keys), column, aspect=0.65, rows=(len(keys) + 1) // 2)
        for a, (key, title) in zip(axes, keys):
            for name, s in series.items():
                if key in s:
                    st = styles[name]
                    a.plot(*s[key], color=st["color"], ls=mpl_dash(st), label=name,
                           marker="o" if key == "gap_to_floor" else None, ms=2)
            lab = label(key)
            title += f" ({lab.unit})" if lab.unit else ""
            if key == "gap_to_floor":
                title += f"; exact floor {floor:.4f}" if floor is not None else "; each run's own floor"
                a.legend(loc="upper right")
            if key in LOG_PANELS:
                a.set_yscale("log")
                _tidy_log(a, "y")
            a.xaxis.set_major_locator(MaxNLocator(integer=True))
            a.set(xlabel=label("step").text, title=_wrap(f"{title} {lab.arrow}".strip(), 52))
    return fig


def position_loss_plot(records: list[dict[str, Any]], ax: Any = None, column: str = "double"):
    """``position_loss`` records: per-position loss vs the exact per-position floor
    (dashed), the excess over it, and the number of targets scored at each position (the
    count behind every point: late positions of variable-length trips rest on fewer).
    Three panels."""
    recs = checked(records, "position_loss", "position-loss plot")
    with paper_style():
        fig, (a1, a2, a3) = _axes(ax, 3, column, aspect=0.9)
        styles = record_styles(recs)
        floors = [as_float_array(r["metrics"]["floor"]) for r in recs]
        shared = all(f.shape == floors[0].shape and np.allclose(f, floors[0], equal_nan=True) for f in floors)
        counts = [as_float_array(r["metrics"].get("count")) for r in recs]
        same_counts = all(c.shape == counts[0].shape and np.array_equal(c, counts[0]) for c in counts)
        for r, fl, cnt in zip(recs, floors, counts):
            name, st = r["name"], styles[r["name"]]
            x, y = as_float_array(r["metrics"]["positions"]), as_float_array(r["metrics"]["loss"])
            a1.plot(x, y, color=st["color"], ls=mpl_dash(st), marker=mpl_marker(st), ms=2, label=name)
            a2.plot(x, y - fl, color=st["color"], ls=mpl_dash(st), marker=mpl_marker(st), ms=2)
            if not shared:
                a1.plot(x, fl, color=st["color"], ls="--", lw=0.8)
            if len(cnt) == len(x) and not same_counts:
                a3.step(x, cnt, where="mid", color=st["color"], ls=mpl_dash(st), label=name)
        if shared:
            a1.plot(as_float_array(recs[0]["metrics"]["positions"]), floors[0], color=MODEL_COLORS["exact"], ls="--",
                    lw=0.8, label="exact floor")
        x0 = as_float_array(recs[0]["metrics"]["positions"])
        if same_counts and len(counts[0]) == len(x0):
            a3.bar(x0, counts[0], width=0.8, color="#9A9A9A", label="every model")
        a2.axhline(0.0, color="#888888", lw=0.6)
        a1.set(xlabel="position", ylabel=f"{_NATS} ↓", title="cross-entropy per position")
        a2.set(xlabel="position", title="loss − exact floor", ylabel=f"{_NATS} ↓")
        a3.set(xlabel="position", title="targets scored per position", ylabel=label("count").text)
        a1.legend()
    return fig


# --------------------------------------------------------------------------------------
# taxi: world-model metrics and maps
# --------------------------------------------------------------------------------------
def _rate_rows(a, wm: list[dict[str, Any]], keys: list[str], cell: Any, styles: dict[str, Any], wrap: int = 30) -> None:
    """Metrics as rows on ONE shared [0, 1] axis, each model a dot with its interval as a
    bar, offset within the row (models top to bottom in record order); the row labels are
    the metrics' labels with their direction marks."""
    k = len(wm)
    offsets = (np.arange(k)[::-1] - (k - 1) / 2) * (0.6 / max(k, 2))
    for i, key in enumerate(keys):
        y0 = len(keys) - 1 - i
        if i % 2 == 0:
            a.axhspan(y0 - 0.5, y0 + 0.5, color="#F2F2F2", zorder=0, lw=0)
        for r, dy in zip(wm, offsets):
            st = styles[r["name"]]
            v, lo, hi = interval(cell(r, key))
            if np.isfinite(lo) and np.isfinite(hi):
                a.plot([lo, hi], [y0 + dy, y0 + dy], color=st["color"], lw=1.2, solid_capstyle="butt")
            if np.isfinite(v):
                a.plot([v], [y0 + dy], marker=mpl_marker(st), color=st["color"], ls="none", ms=3.5)
    a.set_yticks(np.arange(len(keys))[::-1], [_wrap(label(key, "worldmodel").header(), wrap) for key in keys])
    a.set_ylim(-0.5, len(keys) - 0.5)
    a.set_xlim(-0.02, 1.02)
    a.set_xticks([0, 0.25, 0.5, 0.75, 1.0], ["0", "0.25", "0.5", "0.75", "1"])
    a.grid(axis="x")
    a.tick_params(axis="y", length=0)


def _value_rows(a, wm: list[dict[str, Any]], get: Any, styles: dict[str, Any], title: str) -> None:
    """One number per model (no interval: one run), models as rows, from zero."""
    names = [r["name"] for r in wm]
    y = np.arange(len(names))[::-1]
    vals = as_float_array([get(r) for r in wm])
    for yi, r, v in zip(y, wm, vals):
        st = styles[r["name"]]
        if np.isfinite(v):
            a.plot([0, v], [yi, yi], color=st["color"], lw=1.0, alpha=0.5)
            a.plot([v], [yi], marker=mpl_marker(st), color=st["color"], ls="none", ms=3.5)
            a.annotate(f"{v:.3g}", (v, yi), xytext=(3, 3), textcoords="offset points", fontsize=6, color=st["color"])
    top = np.nanmax(vals) if np.isfinite(vals).any() else 1.0
    a.set_xlim(0, top * 1.3 if top > 0 else 1.0)
    a.set_ylim(-0.6, len(names) - 0.4)
    a.set_yticks(y, [""] * len(names))
    a.set_title(_wrap(title, 24), fontsize="small")
    a.tick_params(axis="y", length=0)
    a.grid(axis="x")


def _worldmodel_parts(records: list[dict[str, Any]], what: str):
    """(in-distribution worldmodel records, cell getter, rank record per name, styles)."""
    wm, _, cell = worldmodel_columns(records, [], what)
    wm = [r for r in wm if r["variant"] is None] or wm
    rank = {}
    for name, rows in by_name([r for r in records if r["analysis"] == "rank"]).items():
        lay = deepest_layer(rows)
        rank[name] = [r for r in rows if r["layer"] == lay][-1]
    return wm, cell, rank, record_styles(wm)


def table1_plot(records: list[dict[str, Any]], column: str = "double", rates: Sequence[str] | None = None):
    """The NextLat paper's Table 1 as a figure, from ``worldmodel`` records (and ``rank``
    records of the same models): the rates that matter — validity (next-token, valid
    trajectories), compression, distinction precision and recall, detour robustness at
    the paper's setting (random detours, p = 0.75) — as rows on one shared [0, 1] axis
    with their 95% intervals; beside them the effective rank of the last block and the gap
    to the exact floor, each on its own axis from zero. Direction marks on every label;
    the interval is stated under the figure; models coloured by objective. ``rates``: other
    rates to draw instead (e.g. another detour setting)."""
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D

    wm, cell, rank, styles = _worldmodel_parts(records, "Table-1 figure")
    keys = [k for k in (TABLE1_RATES if rates is None else rates) if any(k in r["metrics"] for r in wm)]
    extra = []
    if rank:
        lays = {r["layer"] for r in rank.values()}
        where = layer_name(lays.pop()) if len(lays) == 1 else "last block"
        extra.append((f"{label('effective_rank').text} ({where}) {label('effective_rank').arrow}",
                      lambda r: value((rank.get(r["name"]) or {"metrics": {}})["metrics"].get("effective_rank"))))
    if any(r["gap_to_floor"] is not None for r in wm):
        extra.append((label("gap_to_floor").header(), lambda r: r["gap_to_floor"]))
    with paper_style():
        w = COLUMN_WIDTHS[column]
        fig = Figure(figsize=(w, 0.9 + 0.32 * max(len(keys), 3)), layout="constrained")
        grid = fig.add_gridspec(1, 1 + len(extra), width_ratios=[3.2] + [1] * len(extra))
        a = fig.add_subplot(grid[0, 0])
        _rate_rows(a, wm, keys, cell, styles)
        a.set_title("world-model metrics (rates)", fontsize="small")
        for j, (title, get) in enumerate(extra, start=1):
            _value_rows(fig.add_subplot(grid[0, j]), wm, get, styles, title)
        handles = [Line2D([], [], color=styles[r["name"]]["color"], marker=mpl_marker(styles[r["name"]]), lw=1.2,
                          label=_model_label(r["name"], r["objective"]) + (f", step {r['step']}" if r["step"] else ""))
                   for r in wm]
        fig.legend(handles=handles, loc="outside upper center", ncol=min(4, len(handles)))
        fig.supxlabel(_wrap(INTERVAL_NOTE + " One run per model: effective rank and gap have no interval.", 150),
                      fontsize=6, color="#444444")
    return fig


def worldmodel_plot(records: list[dict[str, Any]], ax: Any = None, column: str = "double", columns: list[str] | None = None):
    """The appendix to ``table1_plot``: every other world-model metric with an interval
    (``columns``, else every rate and per-pair mean of the records not in the Table-1
    figure: legal trajectories, compression per continuation, the other detour settings
    and their legal rates ...) as rows on one shared [0, 1] axis, each model a dot with its
    95% interval, coloured by objective."""
    from matplotlib.lines import Line2D

    wm, cols, cell = worldmodel_columns(records, columns, "world-model plot")
    wm = [r for r in wm if r["variant"] is None] or wm
    if columns is None:
        keys = [k for k, _ in cols if k not in TABLE1_RATES and has_interval(cell(wm[0], k))]
    else:
        keys = list(columns)
    if not keys:
        raise AnalysisError("world-model plot: no metric with an interval beyond the Table-1 figure's")
    styles = record_styles(wm)
    with paper_style():
        fig, (a,) = _axes(ax, 1, column, aspect=0.12 + 0.06 * len(keys))
        _rate_rows(a, wm, keys, cell, styles, wrap=60)
        handles = [Line2D([], [], color=styles[r["name"]]["color"], marker=mpl_marker(styles[r["name"]]), lw=1.2,
                          label=_model_label(r["name"], r["objective"])) for r in wm]
        a.legend(handles=handles, loc="lower left", bbox_to_anchor=(0.0, 1.0), ncol=min(4, len(handles)))
        a.set_xlabel(_wrap(INTERVAL_NOTE, 110), fontsize=6, color="#444444")
    return fig


def map_plot(true_map: Any, records: list[dict[str, Any]], ax: Any = None, column: str = "double", curvature: float = 0.25,
             node_size: float = 1.0, cols: int | None = None):
    """Paper version of ``interactive.map_figure``: the true map alone first (dark), then
    each ``mapping`` record over a thinner grey copy of it: recovered streets, missing
    streets (dotted) and thin translucent invented arcs (behaviour; an invented edge that
    returns to its own intersection as a small loop), or the true streets between the
    embedded nodes (probe / mds); one row per model by default, else ``cols`` to a row."""
    from matplotlib.collections import LineCollection
    from matplotlib.lines import Line2D

    recs = checked(records, "mapping", "map plot")
    geo = map_panels(true_map, recs, curvature)
    layers = [("recovered", "-", "recovered"), ("missing", ":", "missing"), ("embedded", "-", "embedded"),
              ("invented", "-", "invented")]
    with paper_style():
        n = len(geo)
        if ax is None and cols is None and recs:
            # one row per model: [true map | its panels]; the legend below the true map
            per_model = [len(g) for g in by_name(recs).values()]
            n_cols, n_rows = 1 + max(per_model), len(per_model)
            fig, grid = new_figure(column, n_rows, n_cols, aspect=1.15)
            grid = list(np.ravel(grid))
            slots = [0] + [r * n_cols + 1 + j for r, k in enumerate(per_model) for j in range(k)]
            axes = [grid[i] for i in slots]
            spare = [a for i, a in enumerate(grid) if i not in slots]
            for a in spare:
                a.set_axis_off()
            legend_ax = spare[0] if spare and n_rows > 1 and spare[0] is grid[n_cols] else None
        else:
            n_cols = max(1, min(cols or 3, n))
            fig, axes = _axes(ax, n, column, aspect=1.15, rows=-(-n // n_cols))
            legend_ax = None
        used: set[str] = set()
        for a, g in zip(axes, geo):
            if g["kind"] == "true":
                a.add_collection(LineCollection(g["true"], colors=MAP_COLORS["true"], linewidths=MAP_WIDTHS["true"] / 2,
                                                capstyle="round", label="true map"))
                used.add("true")
            else:
                a.add_collection(LineCollection(g["true"], colors=MAP_COLORS["true_under"],
                                                linewidths=MAP_WIDTHS["true_under"] / 2, capstyle="round",
                                                label="true map (under)"))
                used.add("true_under")
            for z, (key, ls, lab) in enumerate(layers, start=2):
                if len(g[key]):
                    a.add_collection(LineCollection(g[key], colors=MAP_COLORS[key], linewidths=MAP_WIDTHS[key] / 2,
                                                    linestyles=ls, capstyle="round", zorder=z, label=lab,
                                                    alpha=INVENTED_ALPHA if key == "invented" else 1.0))
                    used.add(key)
            a.scatter(g["coords"][:, 0], g["coords"][:, 1], s=node_size, color=MAP_COLORS["node"], linewidths=0, zorder=7,
                      rasterized=len(g["coords"]) > 2000)
            a.autoscale_view()
            a.set_aspect("equal")
            a.set_axis_off()
            a.set_title(_wrap(g["title"]), fontsize="x-small")
        legend = [("true", MAP_COLORS["true"], "-", "true map"), ("true_under", MAP_COLORS["true_under"], "-", "true map (under)")]
        legend += [(k, MAP_COLORS[k], ls, lab) for k, ls, lab in layers]
        handles = [Line2D([], [], color=c, lw=1.2, ls=ls, label=lab) for key, c, ls, lab in legend if key in used]
        if legend_ax is not None:
            legend_ax.legend(handles=handles, loc="center", ncol=1, frameon=False)
        else:
            axes[0].legend(handles=handles, loc="upper left", bbox_to_anchor=(0.0, 0.0), ncol=min(3, len(handles)))
    return fig


# --------------------------------------------------------------------------------------
# the paper's other tasks
# --------------------------------------------------------------------------------------
def taskeval_plot(records: list[dict[str, Any]], ax: Any = None, column: str = "single"):
    """``taskeval`` records as the paper figure. A5: whole-sequence accuracy vs length, one
    line per model (dashed: p_psi roll-out), the training length marked. Path-star: grouped
    bars of exact-path, first-step and valid-path rates with Wilson intervals."""
    recs = checked(records, "taskeval", "task plot")
    styles = record_styles(recs)
    series = length_series(recs)
    with paper_style():
        fig, (a,) = _axes(ax, 1, column, aspect=0.8)
        if series:
            for (name, variant), s in series.items():
                st = styles[name]
                a.plot(s["lengths"], as_float_array(s["sequence"]), color=st["color"], marker=mpl_marker(st), ms=2.5,
                       ls="--" if variant == "p_psi rollout" else "-", label=f"{name}" + (" (p_psi)" if variant == "p_psi rollout" else ""))
            for t in {s["train_length"] for s in series.values() if s["train_length"]}:
                a.axvline(t, color="#777777", ls=":", lw=0.8)
            a.set(xlabel="sequence length (dotted: training length)", ylabel="whole-sequence accuracy", ylim=(0, 1.02))
            a.legend()
            return fig
        names = list(dict.fromkeys(r["name"] for r in recs))
        width = 0.8 / len(PATHSTAR_RATES)
        for i, (key, label) in enumerate(PATHSTAR_RATES):
            vals = [interval(next(r for r in recs if r["name"] == n)["metrics"][key]) for n in names]
            y = np.array([v[0] for v in vals])
            err = np.array([[v[0] - v[1] for v in vals], [v[2] - v[0] for v in vals]])
            a.bar(np.arange(len(names)) + (i - 1) * width, y, width, yerr=err, label=label, capsize=1.5)
        a.set_xticks(np.arange(len(names)), names, rotation=20)
        a.set(ylabel="rate", ylim=(0, 1.05))
        a.legend()
    return fig

