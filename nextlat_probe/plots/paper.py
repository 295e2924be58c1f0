"""Paper figures (matplotlib): the views of ``interactive.py`` with the same data arguments,
sized for single-column (3.25 in) and double-column (6.75 in) papers, in one style
(``paper_style``), saved as vector PDF / SVG and a 300-dpi PNG (``save_figure``).

Every ``*_plot`` function takes an analysis result, draws into ``ax`` (one Axes, or a
list when the view has several panels) or into a new figure sized for ``column``, and
returns the ``Figure``. Figures are built with ``matplotlib.figure.Figure`` directly
(no pyplot state, any backend, nothing to close).

    from nextlat_probe.plots import paper
    fig = paper.rank_plot(records, column="double")
    paper.save_figure(fig, "figures/rank")   # rank.pdf, rank.svg, rank.png
"""
from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np

from .style import (
    DYNAMICS_KINDS,
    MAP_COLORS,
    MODEL_COLORS,
    MPL_DASHES,
    MPL_MARKERS,
    PALETTE,
    RCPARAMS,
    SIMPLEX_CORNERS,
    TRAIN_PANELS,
    as_float_array,
    checkpoint_styles,
    common_limits,
    control_value,
    figsize,
    group_by,
    map_panels,
    pick_layer,
    read_metrics,  # noqa: F401  (re-exported for notebooks)
    record_name,
    simplex_panels,
    table_cell,
    table_columns,
    training_series,
    transition_dict,
)

__all__ = [
    "paper_style",
    "new_figure",
    "save_figure",
    "rank_plot",
    "rank_training_plot",
    "belief_simplex_plot",
    "probe_r2_plot",
    "transition_plot",
    "training_curves_plot",
    "position_loss_plot",
    "worldmodel_plot",
    "map_plot",
]

#: figure-file metadata without timestamps, so re-saving the same figure gives the same file
_METADATA = {"pdf": {"CreationDate": None}, "svg": {"Date": None}, "png": {}}


@contextmanager
def paper_style(**overrides: Any) -> Iterator[None]:
    """Apply the paper rcParams (``style.RCPARAMS`` + the Okabe-Ito colour cycle, plus any
    ``overrides`` such as ``**{"font.size": 9}``) inside a ``with`` block."""
    import matplotlib as mpl
    from cycler import cycler

    rc = {**RCPARAMS, "axes.prop_cycle": cycler(color=PALETTE), **overrides}
    with mpl.rc_context(rc):
        yield


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
        raise ValueError(f"this figure needs {n} axes, got {len(axes)}")
    return _root(axes[0]), axes[:n]


def _styles(records: list[dict[str, Any]], key: str | None = None) -> dict[str, dict[str, Any]]:
    groups = group_by(records, key)
    return checkpoint_styles(groups, {k: rows[0].get("objective") for k, rows in groups.items()})


def _dash(st: dict[str, Any]) -> Any:
    return MPL_DASHES[st["variant"] % len(MPL_DASHES)]


def _marker(st: dict[str, Any]) -> str:
    return MPL_MARKERS[st["variant"] % len(MPL_MARKERS)]


def _categorical(groups: dict[str, list[dict[str, Any]]], key: str = "layer") -> dict[Any, int]:
    """Positions of categorical x values (layers) in order of first appearance."""
    pos: dict[Any, int] = {}
    for rows in groups.values():
        for r in rows:
            pos.setdefault(r[key], len(pos))
    return pos


# --------------------------------------------------------------------------------------
# effective rank
# --------------------------------------------------------------------------------------
def rank_plot(records: list[dict[str, Any]], ax: Any = None, column: str = "double"):
    """Singular-value spectra (log-log; deeper layers darker) and effective rank per
    layer, one colour per checkpoint (``rank.rank_checkpoints`` records). Two panels."""
    with paper_style():
        fig, (a1, a2) = _axes(ax, 2, column)
        groups = group_by(records)
        styles = _styles(records)
        pos = _categorical(groups)
        for name, rows in groups.items():
            st = styles[name]
            for j, r in enumerate(rows):
                s = as_float_array(r["spectrum"])
                last = j == len(rows) - 1
                a1.plot(np.arange(1, len(s) + 1), s, color=st["color"], ls=_dash(st), alpha=0.3 + 0.7 * (j + 1) / len(rows),
                        lw=1.2 if last else 0.6, label=f"{name} {r['layer']}" if last else None)
            a2.plot([pos[r["layer"]] for r in rows], as_float_array([r["effective_rank"] for r in rows]), color=st["color"],
                    ls=_dash(st), marker=_marker(st), label=f"{name} ({rows[0].get('objective')})")
        a1.set(xscale="log", yscale="log", xlabel="component", ylabel="singular value", title="spectrum")
        a2.set_xticks(list(pos.values()), [str(k) for k in pos])
        a2.set(xlabel="layer", ylabel="effective rank", title="effective rank per layer")
        a2.legend()
    return fig


def rank_training_plot(records: list[dict[str, Any]], ax: Any = None, column: str = "double", layer: str | None = None, group: str = "objective"):
    """Effective rank vs training step and vs validation loss (x reversed: training goes
    left to right), one line per ``group``. Two panels."""
    with paper_style():
        fig, (a1, a2) = _axes(ax, 2, column)
        rows_all = pick_layer(records, layer)
        groups = group_by(rows_all, group)
        styles = checkpoint_styles(groups, {k: v[0].get("objective") for k, v in groups.items()})
        for name, rows in groups.items():
            rows = sorted(rows, key=lambda r: r.get("step") or 0)
            st = styles[name]
            er = as_float_array([r["effective_rank"] for r in rows])
            kw = dict(color=st["color"], ls=_dash(st), marker=_marker(st))
            a1.plot(as_float_array([r.get("step") for r in rows]), er, label=name, **kw)
            a2.plot(as_float_array([r.get("val_loss") for r in rows]), er, **kw)
        lay = rows_all[0]["layer"] if rows_all else layer
        a1.set(xlabel="training step", ylabel="effective rank", title=f"rank vs step ({lay})")
        a2.set(xlabel="validation loss", title="rank vs validation loss")
        a2.invert_xaxis()
        a1.legend()
    return fig


# --------------------------------------------------------------------------------------
# belief probes
# --------------------------------------------------------------------------------------
def belief_simplex_plot(panels: list[dict[str, Any]], ax: Any = None, column: str = "double", max_points: int | None = 4000,
                        seed: int = 0, marker_size: float = 1.5):
    """True beliefs vs probe predictions, one panel per entry ({"title", "true", "pred"});
    barycentric triangle for 3 states, PCA of the true beliefs otherwise; colour = true
    belief. Points are rasterised (the PDF stays small), text and frame stay vector."""
    proj, is_simplex = simplex_panels(panels, max_points, seed)
    with paper_style():
        fig, axes = _axes(ax, len(proj), column, aspect=0.9 if is_simplex else 1.0)
        tri = np.vstack([SIMPLEX_CORNERS, SIMPLEX_CORNERS[:1]])
        xr, yr = common_limits([p["xy"] for p in proj] + ([SIMPLEX_CORNERS] if is_simplex else []))
        for a, p in zip(axes, proj):
            if is_simplex:
                a.plot(tri[:, 0], tri[:, 1], color="#444444", lw=0.6)
                a.set_axis_off()
            else:
                a.set(xlabel="PC 1", ylabel="PC 2", xticks=[], yticks=[])
            a.scatter(p["xy"][:, 0], p["xy"][:, 1], c=p["rgb"], s=marker_size, linewidths=0, rasterized=True)
            a.set(xlim=xr, ylim=yr, aspect="equal", title=p["title"])
    return fig


def probe_r2_plot(records: list[dict[str, Any]], ax: Any = None, column: str = "single", metric: str = "r2"):
    """Probe ``metric`` per layer, one line per checkpoint; shuffled control dotted."""
    with paper_style():
        fig, (a,) = _axes(ax, 1, column)
        groups = group_by(records)
        styles = _styles(records)
        pos = _categorical(groups)
        for name, rows in groups.items():
            st = styles[name]
            x = [pos[r["layer"]] for r in rows]
            a.plot(x, as_float_array([r.get(metric) for r in rows]), color=st["color"], ls=_dash(st), marker=_marker(st),
                   label=f"{name} ({rows[0].get('objective')})")
            ctrl = [control_value(r, metric) for r in rows]
            if any(c is not None for c in ctrl):
                a.plot(x, as_float_array(ctrl), color=st["color"], ls=":", lw=0.8)
        a.set_xticks(list(pos.values()), [str(k) for k in pos])
        a.set(xlabel="layer", ylabel=f"probe {metric} (held out)")
        a.legend()
    return fig


# --------------------------------------------------------------------------------------
# transition consistency
# --------------------------------------------------------------------------------------
def transition_plot(results: dict[str, Any], objectives: dict[str, str] | None = None, ax: Any = None, column: str = "single",
                    log_y: bool = True):
    """Relative error vs horizon per checkpoint (colour) and dynamics kind (solid =
    post-hoc MLP, dashed = own p_psi, dotted = post-hoc linear). The belief-level ratio
    (within-belief / total variance), when present, is written in the legend."""
    from matplotlib.lines import Line2D
    from matplotlib.ticker import MaxNLocator

    res = {k: transition_dict(v) for k, v in results.items()}
    styles = checkpoint_styles(res, objectives)
    with paper_style():
        fig, (a,) = _axes(ax, 1, column, aspect=0.8)
        kinds_used = []
        for name, r in res.items():
            st = styles[name]
            x = as_float_array(r.get("horizons"))
            for key, label, _, dash in DYNAMICS_KINDS:
                if r.get(key) is None:
                    continue
                a.plot(x, as_float_array(r[key]), color=st["color"], ls=dash, marker=_marker(st), ms=2.5, label=f"{name}: {label}")
                if label not in kinds_used:
                    kinds_used.append(label)

        def label(n: str) -> str:
            ratio = res[n].get("belief_ratio")
            return n if ratio is None else f"{n} (belief ratio {ratio:.3g})"

        handles = [Line2D([], [], color=styles[n]["color"], marker=_marker(styles[n]), ms=2.5, label=label(n)) for n in res]
        handles += [Line2D([], [], color="#555555", ls=d, label=lab) for _, lab, _, d in DYNAMICS_KINDS if lab in kinds_used]
        a.legend(handles=handles)
        a.xaxis.set_major_locator(MaxNLocator(integer=True))
        a.set(xlabel="horizon i", ylabel="relative error", yscale="log" if log_y else "linear")
    return fig


# --------------------------------------------------------------------------------------
# training curves and per-position loss
# --------------------------------------------------------------------------------------
def training_curves_plot(runs: dict[str, Any], objectives: dict[str, str] | None = None, ax: Any = None, column: str = "double"):
    """Validation loss with the exact floor (dashed), train CE, next_h and KL vs step, one
    colour per run; panels without data (e.g. next_h for GPT-only runs) are left out."""
    series, styles, floor = training_series(runs, objectives)
    keys = [(k, t) for k, t in TRAIN_PANELS if any(k in s for s in series.values())]
    with paper_style():
        fig, axes = _axes(ax, len(keys), column, aspect=0.65, rows=(len(keys) + 1) // 2)
        for a, (key, title) in zip(axes, keys):
            for name, s in series.items():
                if key in s:
                    st = styles[name]
                    a.plot(*s[key], color=st["color"], ls=_dash(st), label=name, marker="o" if key == "val_loss" else None, ms=2)
                if key == "val_loss" and floor is None and s["val_floor"] is not None:
                    a.axhline(s["val_floor"], color=styles[name]["color"], ls="--", lw=0.8)
            if key == "val_loss":
                if floor is not None:
                    a.axhline(floor, color=MODEL_COLORS["exact"], ls="--", lw=0.8, label="exact floor")
                a.legend()
            if key in ("next_h", "kl"):
                a.set_yscale("log")
            a.set(xlabel="step", title=title)
    return fig


def position_loss_plot(records: list[dict[str, Any]], ax: Any = None, column: str = "double"):
    """Per-position loss vs the exact per-position floor (dashed), and the excess over it."""
    with paper_style():
        fig, (a1, a2) = _axes(ax, 2, column)
        names = [record_name(r) for r in records]
        styles = checkpoint_styles(names, {record_name(r): r.get("objective") for r in records})
        floors = [as_float_array(r["floor"]) for r in records]
        shared = bool(records) and all(f.shape == floors[0].shape and np.allclose(f, floors[0], equal_nan=True) for f in floors)
        for r, fl, name in zip(records, floors, names):
            st = styles[name]
            x, y = as_float_array(r["positions"]), as_float_array(r["loss"])
            a1.plot(x, y, color=st["color"], ls=_dash(st), marker=_marker(st), ms=2, label=name)
            a2.plot(x, y - fl, color=st["color"], ls=_dash(st), marker=_marker(st), ms=2)
            if not shared:
                a1.plot(x, fl, color=st["color"], ls="--", lw=0.8)
        if shared:
            a1.plot(as_float_array(records[0]["positions"]), floors[0], color=MODEL_COLORS["exact"], ls="--", lw=0.8, label="exact floor")
        a2.axhline(0.0, color="#888888", lw=0.6)
        a1.set(xlabel="position", ylabel="cross-entropy (nats)", title="loss per position")
        a2.set(xlabel="position", title="loss - exact floor")
        a1.legend()
    return fig


# --------------------------------------------------------------------------------------
# taxi: world-model metrics and maps
# --------------------------------------------------------------------------------------
def worldmodel_plot(rows: list[dict[str, Any]], ax: Any = None, column: str = "double", columns: list[str] | None = None):
    """Paper version of ``worldmodel_table_figure``: one small panel per metric, one
    point per model with its 95% interval as a horizontal bar, models coloured by
    objective (top to bottom in row order)."""
    from matplotlib.ticker import MaxNLocator

    cols = table_columns(rows, columns)
    names = [str(r.get("model", r.get("name", "?"))) for r in rows]
    styles = checkpoint_styles(names, {n: r.get("objective") for n, r in zip(names, rows)})
    with paper_style():
        per_row = min(4, len(cols))  # one row of 9 panels collapses at paper widths
        n_rows = -(-len(cols) // per_row)
        fig, axes = _axes(ax, len(cols), column, aspect=0.45 + 0.12 * len(rows), rows=n_rows, sharey=True)
        ypos = np.arange(len(rows))[::-1]
        for a, c in zip(axes, cols):
            for y, r, n in zip(ypos, rows, names):
                v, lo, hi = table_cell(r, c)
                st = styles[n]
                if np.isfinite(lo) and np.isfinite(hi):
                    a.plot([lo, hi], [y, y], color=st["color"], lw=1.2)
                a.plot([v], [y], marker=_marker(st), color=st["color"], ls="none")
            a.set_title(c, fontsize="small")
            a.set_yticks(ypos, names)
            a.set_ylim(-0.6, len(rows) - 0.4)
            a.margins(x=0.15)
            a.xaxis.set_major_locator(MaxNLocator(3))
    return fig


def map_plot(true_map: Any, panels: list[dict[str, Any]], ax: Any = None, column: str = "double", curvature: float = 0.25,
             node_size: float = 1.0, cols: int | None = None):
    """Paper version of ``map_figure``: true map in grey at each panel's node positions,
    recovered edges, missing edges (dotted) and curved invented edges; panels ``cols`` to a
    row (default up to 3), long titles wrapped."""
    import textwrap

    from matplotlib.collections import LineCollection
    from matplotlib.lines import Line2D

    geo, _ = map_panels(true_map, panels, curvature)
    layers = [("true", MAP_COLORS["true"], 0.5, "-", "true map"),
              ("recovered", MAP_COLORS["recovered"], 0.8, "-", "recovered"),
              ("missing", MAP_COLORS["missing"], 0.5, ":", "missing"),
              ("invented", MAP_COLORS["invented"], 0.8, "-", "invented")]
    with paper_style():
        n = max(1, len(geo))
        cols = max(1, min(cols or 3, n))
        rows = -(-n // cols)
        fig, axes = _axes(ax, n, column, aspect=1.15, rows=rows)
        used: set[str] = set()
        for a, g in zip(axes, geo):
            for key, color, lw, ls, _ in layers:
                if len(g[key]):
                    a.add_collection(LineCollection(g[key], colors=color, linewidths=lw, linestyles=ls, capstyle="round"))
                    used.add(key)
            a.scatter(g["coords"][:, 0], g["coords"][:, 1], s=node_size, color=MAP_COLORS["node"], linewidths=0, zorder=3,
                      rasterized=len(g["coords"]) > 2000)
            a.autoscale_view()
            a.set_aspect("equal")
            a.set_axis_off()
            a.set_title("\n".join(textwrap.wrap(str(g["title"]), 38)), fontsize="x-small")
        handles = [Line2D([], [], color=c, lw=1.2, ls=ls, label=lab) for key, c, _, ls, lab in layers if key in used]
        if handles:
            axes[0].legend(handles=handles, loc="upper left", bbox_to_anchor=(0.0, 0.0), ncol=len(handles))
    return fig
