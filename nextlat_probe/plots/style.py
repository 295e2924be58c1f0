"""The look shared by the interactive (plotly) and paper (matplotlib) figures, and nothing else.

- a colour-blind-safe palette (Okabe & Ito 2008) and fixed model colours, so GPT and
  NextLat have the same colour in every figure of either backend (``MODEL_COLORS``,
  ``checkpoint_styles``, ``record_styles``);
- line dashes and markers (repeated models of one objective, transition variants);
- colours of beliefs, map layers and intersections;
- paper sizes (``figsize``, single / double column) and matplotlib rcParams
  (``RCPARAMS``, ``paper_style``);
- how intervals and directions are stated (``INTERVAL_NOTE``); the words, units and ↑ / ↓
  of every metric come from ``nextlat_probe.labels``, never from a key.

A new figure (a map reconstruction, a sweep) gets the same look by drawing inside
``paper_style()`` at a ``figsize`` width and colouring models with ``record_styles``.

Geometry (projections, map segments and arcs) lives in ``geometry.py``; the records the
figures read are defined in ``nextlat_probe.records``. Only numpy here (matplotlib is
imported inside ``paper_style``), so importing it is cheap.
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Iterable, Iterator, Mapping

import numpy as np

from ..errors import UsageError

# --------------------------------------------------------------------------------------
# colours, dashes, sizes
# --------------------------------------------------------------------------------------
#: Okabe & Ito (2008) colour-blind-safe palette.
PALETTE = ["#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#F0E442", "#000000"]
#: fixed colours of known objectives (and of the exact reference)
MODEL_COLORS = {
    "gpt": "#0072B2",
    "nextlat": "#D55E00",
    "mtp": "#009E73",
    "jtp": "#CC79A7",
    "truth": "#000000",
    "exact": "#000000",
}
#: colours for models of unknown objective: the palette minus the reserved ones
OTHER_COLORS = ["#E69F00", "#56B4E9", "#999999", "#F0E442"]
#: colours of the layers of a street-map figure
MAP_COLORS = {
    "true": "#444444",        # the true map in its own panel
    "true_under": "#9A9A9A",  # the thinner true map under every reconstruction
    "node": "#555555",
    "recovered": "#0072B2",
    "invented": "#D55E00",
    "missing": "#000000",
    "embedded": "#0072B2",
}
#: line widths (plotly px; matplotlib points are about half) of the map layers
MAP_WIDTHS = {"true": 1.8, "true_under": 1.0, "recovered": 1.6, "missing": 1.2, "invented": 1.0, "embedded": 1.4}
#: opacity of invented-edge arcs: drawn above the map without covering it
INVENTED_ALPHA = 0.55
#: line dashes that tell repeated checkpoints of one objective apart (plotly / matplotlib)
PLOTLY_DASHES = ["solid", "dash", "dot", "dashdot", "longdash"]
MPL_DASHES: list[Any] = ["-", "--", ":", "-.", (0, (8, 2))]
PLOTLY_MARKERS = ["circle", "square", "diamond", "triangle-up", "x"]
MPL_MARKERS = ["o", "s", "D", "^", "x"]
#: transition records' ``variant`` -> (plotly dash, matplotlib dash): solid = post-hoc MLP,
#: dashed = the model's own p_psi, dotted = post-hoc linear
VARIANT_DASHES: dict[str, tuple[str, Any]] = {
    "post-hoc mlp": ("solid", "-"),
    "own p_psi": ("dash", "--"),
    "post-hoc linear": ("dot", ":"),
}

#: how every figure with intervals states them (under the Table-1 figure, its appendix, ...)
INTERVAL_NOTE = ("Bars: 95% intervals (Wilson for rates; mean ± 1.96 s.e. over prefix pairs for distinction under "
                 "protocol vafa2024). ↑ higher is better, ↓ lower is better.")

#: paper widths in inches (e.g. NeurIPS / ICML / ACL single column and full text width)
SINGLE_COLUMN = 3.25
DOUBLE_COLUMN = 6.75
COLUMN_WIDTHS = {"single": SINGLE_COLUMN, "double": DOUBLE_COLUMN}

#: matplotlib rcParams of the paper figures (applied by ``paper.paper_style``)
RCPARAMS: dict[str, Any] = {
    "font.family": "sans-serif",
    "font.sans-serif": ["DejaVu Sans"],
    "font.size": 8,
    "axes.titlesize": 8,
    "axes.labelsize": 8,
    "xtick.labelsize": 7,
    "ytick.labelsize": 7,
    "legend.fontsize": 7,
    "legend.frameon": False,
    "axes.linewidth": 0.6,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "lines.linewidth": 1.2,
    "lines.markersize": 3.5,
    "xtick.major.width": 0.6,
    "ytick.major.width": 0.6,
    "xtick.major.size": 2.5,
    "ytick.major.size": 2.5,
    "grid.linewidth": 0.4,
    "grid.alpha": 0.4,
    "figure.dpi": 150,
    "savefig.dpi": 300,
    "savefig.bbox": "tight",
    "savefig.pad_inches": 0.02,
    "pdf.fonttype": 42,  # embed TrueType: text stays text (editable, searchable)
    "ps.fonttype": 42,
    "svg.fonttype": "none",
    "svg.hashsalt": "nextlat_probe",  # stable element ids: the same figure gives the same file
}


def figsize(column: str = "single", aspect: float = 0.75, rows: int = 1, cols: int = 1) -> tuple[float, float]:
    """(width, height) in inches of a figure of ``rows`` x ``cols`` panels spanning one
    paper column ("single", 3.25 in) or the full text width ("double", 6.75 in); each
    panel is ``aspect`` (height / width) as tall as it is wide."""
    if column not in COLUMN_WIDTHS:
        raise UsageError(f"column must be 'single' or 'double', got {column!r}")
    w = COLUMN_WIDTHS[column]
    return w, w / max(cols, 1) * aspect * max(rows, 1)


def infer_objective(name: str | None) -> str | None:
    """Objective guessed from a run or checkpoint name ("runs/nextlat/ckpt.pt" -> nextlat)."""
    low = str(name or "").lower()
    for key in ("nextlat", "gpt", "mtp", "jtp"):
        if key in low:
            return key
    return None


def model_color(objective: str | None, index: int = 0) -> str:
    """Colour for a model: fixed for known objectives, else from the remaining palette."""
    if objective and objective.lower() in MODEL_COLORS:
        return MODEL_COLORS[objective.lower()]
    return OTHER_COLORS[index % len(OTHER_COLORS)]


def checkpoint_styles(names: Iterable[str], objectives: dict[str, str | None] | None = None) -> dict[str, dict[str, Any]]:
    """Colour and variant per checkpoint/run name, in order of first appearance.

    Colour follows the objective (given, else guessed from the name); the k-th name of the
    same objective gets variant k, which figures turn into a dash or marker, so two GPT
    seeds stay GPT-blue but remain distinguishable."""
    objectives = objectives or {}
    out: dict[str, dict[str, Any]] = {}
    seen: dict[str, int] = {}
    n_other = 0
    for name in names:
        if name in out:
            continue
        obj = objectives.get(name) or infer_objective(name)
        key = (obj or "").lower()
        if key in MODEL_COLORS:
            color = MODEL_COLORS[key]
        else:
            key = f"?{name}"
            color = OTHER_COLORS[n_other % len(OTHER_COLORS)]
            n_other += 1
        variant = seen.get(key, 0)
        seen[key] = variant + 1
        out[name] = {"color": color, "variant": variant, "objective": obj}
    return out


def record_styles(records: Iterable[Mapping[str, Any]]) -> dict[str, dict[str, Any]]:
    """``checkpoint_styles`` of the records' names, with each record's ``objective``."""
    recs = list(records)
    objectives: dict[str, str | None] = {}
    for r in recs:
        objectives.setdefault(r["name"], r.get("objective"))
    return checkpoint_styles(list(objectives), objectives)


def plotly_dash(st: Mapping[str, Any]) -> str:
    return PLOTLY_DASHES[st["variant"] % len(PLOTLY_DASHES)]


def _marker_index(variant: int) -> int:
    """Markers advance one extra place per lap of the dashes, so (dash, marker) pairs stay
    distinct for len(dashes) x len(markers) variants, not just for len(dashes)."""
    return (variant + variant // len(PLOTLY_DASHES)) % len(PLOTLY_MARKERS)


def plotly_marker(st: Mapping[str, Any]) -> str:
    return PLOTLY_MARKERS[_marker_index(st["variant"])]


def mpl_dash(st: Mapping[str, Any]) -> Any:
    return MPL_DASHES[st["variant"] % len(MPL_DASHES)]


def mpl_marker(st: Mapping[str, Any]) -> str:
    return MPL_MARKERS[_marker_index(st["variant"])]


# --------------------------------------------------------------------------------------
# colours of beliefs and places
# --------------------------------------------------------------------------------------
def state_colors(n_states: int) -> np.ndarray:
    """RGB [S, 3] of the pure states: red, green, blue for 3 states (so the colour of a
    belief is the belief itself, as in Shai et al.), evenly spaced hues otherwise."""
    if n_states == 3:
        return np.eye(3)
    import colorsys

    return np.array([colorsys.hsv_to_rgb(k / n_states, 0.9, 0.9) for k in range(n_states)])


def belief_colors(beliefs: Any) -> np.ndarray:
    """RGB in [0, 1] per belief [N, S]: the belief-weighted mixture of ``state_colors``."""
    B = np.asarray(beliefs, dtype=np.float64)
    return np.clip(B @ state_colors(B.shape[1]), 0.0, 1.0)


#: corner colours of the 2-D place colour map: bottom left, bottom right, top left, top right
PLACE_CORNERS = np.array([[0.0, 0.447, 0.698], [0.835, 0.369, 0.0], [0.0, 0.620, 0.451], [0.902, 0.624, 0.0]])


def place_colors(xy: Any, reference: Any = None) -> np.ndarray:
    """RGB in [0, 1] per point [N, 2]: a bilinear blend of ``PLACE_CORNERS`` over the
    bounding box of ``reference`` (default: the points), so that an intersection's colour
    says where on the map it is (blue bottom left, vermillion bottom right, green top
    left, orange top right) and a probed position can be checked against its colour."""
    P = np.asarray(xy, dtype=np.float64).reshape(-1, 2)
    R = P if reference is None else np.asarray(reference, dtype=np.float64).reshape(-1, 2)
    R = R[np.isfinite(R).all(axis=1)]
    lo, hi = (R.min(axis=0), R.max(axis=0)) if len(R) else (np.zeros(2), np.ones(2))
    uv = np.clip((P - lo) / np.maximum(hi - lo, 1e-12), 0.0, 1.0)
    u, v = uv[:, :1], uv[:, 1:]
    c = PLACE_CORNERS
    rgb = (1 - u) * (1 - v) * c[0] + u * (1 - v) * c[1] + (1 - u) * v * c[2] + u * v * c[3]
    return np.clip(np.nan_to_num(rgb, nan=0.5), 0.0, 1.0)


def rgb_strings(rgb: Any) -> list[str]:
    """'rgb(r,g,b)' strings (plotly) of RGB rows in [0, 1]."""
    v = np.round(255 * np.asarray(rgb, dtype=np.float64).reshape(-1, 3)).astype(int)
    return [f"rgb({r},{g},{b})" for r, g, b in v]


# --------------------------------------------------------------------------------------
# matplotlib style
# --------------------------------------------------------------------------------------
@contextmanager
def paper_style(**overrides: Any) -> Iterator[None]:
    """Apply the paper rcParams (``RCPARAMS`` + the Okabe-Ito colour cycle, plus any
    ``overrides`` such as ``**{"font.size": 9}``) inside a ``with`` block."""
    import matplotlib as mpl
    from cycler import cycler

    rc = {**RCPARAMS, "axes.prop_cycle": cycler(color=PALETTE), **overrides}
    with mpl.rc_context(rc):
        yield


__all__ = [
    "PALETTE", "MODEL_COLORS", "OTHER_COLORS", "MAP_COLORS", "MAP_WIDTHS", "INVENTED_ALPHA", "PLOTLY_DASHES",
    "MPL_DASHES", "PLOTLY_MARKERS", "MPL_MARKERS", "VARIANT_DASHES", "SINGLE_COLUMN", "DOUBLE_COLUMN",
    "COLUMN_WIDTHS", "INTERVAL_NOTE", "RCPARAMS", "figsize", "infer_objective", "model_color", "checkpoint_styles", "record_styles",
    "plotly_dash", "plotly_marker", "mpl_dash", "mpl_marker", "state_colors", "belief_colors", "PLACE_CORNERS",
    "place_colors", "rgb_strings", "paper_style",
]
