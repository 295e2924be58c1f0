"""What the interactive (plotly) and paper (matplotlib) figures share.

- One look: a colour-blind-safe palette (Okabe & Ito 2008) and fixed model colours, so
  GPT and NextLat have the same colour in every figure of either backend; line dashes for
  the kinds of dynamics; figure sizes for one- and two-column papers; matplotlib rcParams.
- One geometry: belief-simplex and PCA projections, point colours from beliefs, map
  layouts and curved "invented" edges are computed here once, so a plotly page and the
  paper figure of the same result show exactly the same picture.
- Small readers and record helpers (``read_metrics``, ``group_by``, ``interval``) used by
  both backends.

Only numpy / scipy here (no plotly, no matplotlib), so importing it is cheap.
"""
from __future__ import annotations

import json
import math
import warnings
from pathlib import Path
from typing import Any, Iterable

import numpy as np

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
    "true": "#BBBBBB",
    "node": "#777777",
    "recovered": "#0072B2",
    "invented": "#D55E00",
    "missing": "#000000",
}
#: line dashes that tell repeated checkpoints of one objective apart (plotly / matplotlib)
PLOTLY_DASHES = ["solid", "dash", "dot", "dashdot", "longdash"]
MPL_DASHES: list[Any] = ["-", "--", ":", "-.", (0, (8, 2))]
PLOTLY_MARKERS = ["circle", "square", "diamond", "triangle-up", "x"]
MPL_MARKERS = ["o", "s", "D", "^", "x"]
#: transition-consistency curves: result field, legend label, plotly dash, matplotlib dash
DYNAMICS_KINDS: list[tuple[str, str, str, str]] = [
    ("posthoc_mlp", "post-hoc MLP", "solid", "-"),
    ("own", "own p_psi", "dash", "--"),
    ("posthoc_linear", "post-hoc linear", "dot", ":"),
]

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
        raise ValueError(f"column must be 'single' or 'double', got {column!r}")
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


# --------------------------------------------------------------------------------------
# records
# --------------------------------------------------------------------------------------
def record_name(rec: dict[str, Any]) -> str:
    """Label of a record: its ``name``, else its ``checkpoint``."""
    return str(rec.get("name", rec.get("checkpoint", "?")))


def group_by(records: Iterable[dict[str, Any]], key: str | None = None) -> dict[str, list[dict[str, Any]]]:
    """Records grouped by ``key`` (default: ``record_name``), groups and rows in input order."""
    out: dict[str, list[dict[str, Any]]] = {}
    for r in records:
        k = record_name(r) if key is None else str(r.get(key))
        out.setdefault(k, []).append(r)
    return out


def as_float_array(values: Any) -> np.ndarray:
    """1-D float array with None -> NaN (``to_jsonable`` writes NaN as null)."""
    if values is None:
        return np.zeros(0)
    return np.array([np.nan if v is None else v for v in np.ravel(np.asarray(values, dtype=object))], dtype=np.float64)


def interval(cell: Any) -> tuple[float, float, float]:
    """(value, low, high) of a table cell: a number, ``(value, low, high)`` or a dict with
    ``value`` and ``low``/``high`` (or ``ci`` = [low, high]); missing bounds are NaN."""
    nan = float("nan")
    if cell is None:
        return nan, nan, nan
    if isinstance(cell, dict):
        lo, hi = cell.get("ci", (cell.get("low"), cell.get("high")))
        v = cell.get("value", cell.get("mean"))
        return tuple(nan if x is None else float(x) for x in (v, lo, hi))  # type: ignore[return-value]
    if isinstance(cell, (list, tuple, np.ndarray)):
        vals = [nan if x is None else float(x) for x in cell]
        if len(vals) != 3:
            raise ValueError(f"table cell {cell!r}: expected (value, low, high)")
        return vals[0], vals[1], vals[2]
    return float(cell), nan, nan


def read_metrics(path: str | Path) -> list[dict[str, Any]]:
    """Records of a run's ``metrics.jsonl``, in order.

    Tolerant of what a killed or resumed run leaves behind: a partial last line is dropped
    silently (a crash mid-write), an unreadable line elsewhere with a warning; and when a
    resumed run logs a step again, the older records of that kind (train or eval) from
    that step on are dropped, so each step appears once with its latest values."""
    path = Path(path)
    lines = path.read_text().splitlines()
    out: list[dict[str, Any]] = []
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            if i != len(lines) - 1:
                warnings.warn(f"{path}: line {i + 1} is not JSON; skipped", stacklevel=2)
            continue
        if not isinstance(rec, dict):
            continue
        kind = metric_kind(rec)
        if kind is not None:
            step = rec["step"]
            out = [r for r in out if metric_kind(r) != kind or r["step"] < step]
        out.append(rec)
    return out


def metric_kind(rec: dict[str, Any]) -> str | None:
    """'eval' (has val_loss), 'train' (has ce or loss) or None (events) for a metrics record."""
    if "step" not in rec:
        return None
    if "val_loss" in rec:
        return "eval"
    if "ce" in rec or "loss" in rec:
        return "train"
    return None


def run_objective(records: list[dict[str, Any]]) -> str | None:
    """Objective written in a metrics log's start event, if any."""
    for r in records:
        if r.get("event") == "start":
            return (r.get("config") or {}).get("objective")
    return None


def common_value(values: Iterable[Any], rtol: float = 1e-9) -> float | None:
    """The shared value if all finite values agree (e.g. one exact floor for all runs)."""
    vals = [float(v) for v in values if v is not None and math.isfinite(float(v))]
    if not vals:
        return None
    return vals[0] if all(abs(v - vals[0]) <= rtol * max(1.0, abs(vals[0])) for v in vals) else None


# --------------------------------------------------------------------------------------
# beliefs: projections and colours
# --------------------------------------------------------------------------------------
#: corners of the equilateral 2-simplex: state 0 bottom left, 1 bottom right, 2 top
SIMPLEX_CORNERS = np.array([[0.0, 0.0], [1.0, 0.0], [0.5, math.sqrt(3.0) / 2.0]])


def simplex_project(beliefs: Any) -> np.ndarray:
    """Barycentric 2-D coordinates of 3-state belief vectors [N, 3] -> [N, 2]: vertex k of
    the simplex lands on ``SIMPLEX_CORNERS[k]``; off-simplex vectors (probe predictions)
    are mapped by the same affine formula (normalised by their sum when it is non-zero)."""
    B = np.asarray(beliefs, dtype=np.float64)
    if B.ndim != 2 or B.shape[1] != 3:
        raise ValueError(f"simplex_project: expected beliefs [N, 3], got shape {B.shape}")
    s = B.sum(axis=1, keepdims=True)
    B = np.where(np.abs(s) > 1e-12, B / np.where(np.abs(s) > 1e-12, s, 1.0), B)
    return B @ SIMPLEX_CORNERS


def pca_basis(X: Any, n_components: int = 2) -> tuple[np.ndarray, np.ndarray]:
    """(mean [S], components [k, S]) of PCA fitted on ``X``; signs fixed so that the
    largest-magnitude loading of each component is positive (deterministic pictures)."""
    X = np.asarray(X, dtype=np.float64)
    mean = X.mean(axis=0)
    _, _, vt = np.linalg.svd(X - mean, full_matrices=False)
    comps = vt[:n_components]
    sign = np.sign(comps[np.arange(comps.shape[0]), np.abs(comps).argmax(axis=1)])
    comps = comps * np.where(sign == 0, 1.0, sign)[:, None]
    if comps.shape[0] < n_components:  # fewer dimensions than components: pad with zeros
        comps = np.vstack([comps, np.zeros((n_components - comps.shape[0], X.shape[1]))])
    return mean, comps


def belief_projection(true_sets: list[Any]) -> tuple[Any, bool]:
    """Projection to 2-D shared by all panels: barycentric for 3 states, else PCA with two
    components fitted on the stacked true beliefs. Returns (function, is_simplex)."""
    S = np.asarray(true_sets[0]).shape[-1]
    if S == 3:
        return simplex_project, True
    mean, comps = pca_basis(np.vstack([np.asarray(t, dtype=np.float64) for t in true_sets]), 2)
    return (lambda B: (np.asarray(B, dtype=np.float64) - mean) @ comps.T), False


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


def subsample(n: int, max_points: int | None, seed: int = 0) -> np.ndarray:
    """Sorted indices of at most ``max_points`` of ``n`` rows (all when n is small), drawn
    with a fixed seed so the same points are shown in every backend."""
    if max_points is None or n <= max_points:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(n, size=int(max_points), replace=False))


# --------------------------------------------------------------------------------------
# street maps
# --------------------------------------------------------------------------------------
def map_successors(true_map: Any) -> np.ndarray:
    """Successor table [N, 8] (-1 = no edge) of a StreetMap (or the table itself)."""
    succ = getattr(true_map, "succ", true_map)
    return np.asarray(succ, dtype=np.int64)


def _street_map(true_map: Any) -> Any:
    """``true_map`` as a ``StreetMap``: itself, or one built from a successor table (or an
    object with ``succ`` and optional ``coords``)."""
    from ..worlds.streetmap import StreetMap

    if isinstance(true_map, StreetMap):
        return true_map
    succ = map_successors(true_map)
    s, d = np.nonzero(succ >= 0)
    return StreetMap(succ.shape[0], zip(s, d, succ[s, d]), coords=getattr(true_map, "coords", None))


def map_edges(true_map: Any, undirected: bool = True) -> np.ndarray:
    """int64 [E, 2] edges (src, dst) of the map, without self-loops; with ``undirected``
    each linked pair once, ``src < dst`` (``StreetMap.undirected_edges``: a two-way street
    is one grey line)."""
    if undirected:
        return np.array(_street_map(true_map).undirected_edges(), dtype=np.int64).reshape(-1, 2)
    succ = map_successors(true_map)
    s, d = np.nonzero(succ >= 0)
    e = np.stack([s, succ[s, d]], axis=1)
    return np.unique(e[e[:, 0] != e[:, 1]], axis=0).astype(np.int64).reshape(-1, 2)


def map_layout(true_map: Any, mds_max_nodes: int | None = None, n_pivots: int | None = None) -> np.ndarray:
    """Node positions [N, 2] for drawing: ``StreetMap.layout()`` (a copy), the one layout
    the analyses use too: the map's ``coords`` when it has them, otherwise MDS of the
    undirected hop distances with the map's fixed orientation (units: hops). Classical
    MDS for components up to ``mds_max_nodes`` nodes, landmark MDS with ``n_pivots``
    farthest-point landmarks above (defaults: the map's, ``LAYOUT_MAX_EXACT`` and
    ``LAYOUT_LANDMARKS``); components side by side, largest first. Deterministic."""
    return np.array(_street_map(true_map).layout(max_exact=mds_max_nodes, n_landmarks=n_pivots), dtype=np.float64)


def as_edges(edges: Any) -> np.ndarray:
    """int64 [E, 2] from a list of (src, dst) pairs (empty -> shape [0, 2])."""
    if edges is None:
        return np.zeros((0, 2), dtype=np.int64)
    arr = np.asarray(list(edges) if not isinstance(edges, np.ndarray) else edges, dtype=np.int64)
    return arr.reshape(-1, 2)


def split_invented(true_map: Any, edges: Any, invented: Any = None) -> tuple[np.ndarray, np.ndarray]:
    """(recovered, invented) directed edges: any of ``edges`` that is not a (src, dst) edge
    of the true map moves to ``invented``, so callers may pass a reconstructed graph whole."""
    succ = map_successors(true_map)
    e = as_edges(edges)
    inv = as_edges(invented)
    if e.size:
        true = map_edges(succ, undirected=False)
        n = succ.shape[0]
        is_true = np.isin(e[:, 0] * n + e[:, 1], true[:, 0] * n + true[:, 1]) | (e[:, 0] == e[:, 1])
        inv = np.unique(np.vstack([inv, e[~is_true]]), axis=0) if (~is_true).any() else inv
        e = e[is_true]
    return e, inv


def segments(coords: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """[E, 2, 2] straight segments between node positions."""
    return np.stack([coords[edges[:, 0]], coords[edges[:, 1]]], axis=1) if len(edges) else np.zeros((0, 2, 2))


def bezier_curves(p0: Any, p1: Any, curvature: float = 0.25, n: int = 17) -> np.ndarray:
    """Quadratic Bezier curves [E, n, 2] from p0 [E, 2] to p1 [E, 2], bulging to the left
    of the direction of travel by ``curvature`` x the segment length at the control point
    (so the curve's midpoint sits curvature/2 x length off the straight line, and the two
    directions of one pair bend apart). Invented edges are drawn this way so they never
    hide under a true straight street (as in Vafa et al.)."""
    p0 = np.asarray(p0, dtype=np.float64).reshape(-1, 2)
    p1 = np.asarray(p1, dtype=np.float64).reshape(-1, 2)
    d = p1 - p0
    ctrl = 0.5 * (p0 + p1) + curvature * np.stack([-d[:, 1], d[:, 0]], axis=1)
    t = np.linspace(0.0, 1.0, n)[None, :, None]
    return (1 - t) ** 2 * p0[:, None] + 2 * (1 - t) * t * ctrl[:, None] + t**2 * p1[:, None]


def polylines_xy(paths: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """x and y of [E, k, 2] paths joined into one NaN-separated line (one plotly trace)."""
    if len(paths) == 0:
        return np.zeros(0), np.zeros(0)
    gap = np.full((paths.shape[0], 1, 2), np.nan)
    flat = np.concatenate([paths, gap], axis=1).reshape(-1, 2)
    return flat[:, 0], flat[:, 1]


# --------------------------------------------------------------------------------------
# per-figure data preparation (one implementation for both backends)
# --------------------------------------------------------------------------------------
def pick_layer(records: list[dict[str, Any]], layer: str | None) -> list[dict[str, Any]]:
    """Records of one layer: ``layer``, else 'final' if present, else the deepest layer
    (the last one listed for the first checkpoint)."""
    if layer is None and records:
        first = group_by(records)[record_name(records[0])]
        layer = "final" if any(r.get("layer") == "final" for r in records) else first[-1].get("layer")
    return [r for r in records if r.get("layer") == layer]


def simplex_panels(panels: list[dict[str, Any]], max_points: int | None = 4000, seed: int = 0) -> tuple[list[dict[str, Any]], bool]:
    """Project every panel with one shared projection: [{title, xy, rgb}], is_simplex.
    Points are the predictions (or the true beliefs when ``pred`` is None), coloured by
    the true belief; at most ``max_points`` per panel (same rows in every backend)."""
    if not panels:
        raise ValueError("belief simplex: no panels")
    trues = [np.asarray(p["true"], dtype=np.float64).reshape(-1, np.asarray(p["true"]).shape[-1]) for p in panels]
    proj, is_simplex = belief_projection(trues)
    out = []
    for p, T in zip(panels, trues):
        P = T if p.get("pred") is None else np.asarray(p["pred"], dtype=np.float64)
        if P.size != T.size:
            raise ValueError(f"belief panel {p.get('title')!r}: pred has shape {P.shape}, true beliefs {T.shape}")
        P = P.reshape(T.shape)
        idx = subsample(len(T), max_points, seed)
        out.append({"title": str(p.get("title", "")), "xy": proj(P[idx]), "rgb": belief_colors(T[idx])})
    return out, is_simplex


def common_limits(xys: list[np.ndarray], pad: float = 0.04) -> tuple[tuple[float, float], tuple[float, float]]:
    """Shared (x range, y range) of several point sets, padded, so panels compare at a glance."""
    pts = np.vstack([np.asarray(x, dtype=np.float64).reshape(-1, 2) for x in xys])
    pts = pts[np.isfinite(pts).all(axis=1)]
    if len(pts) == 0:
        return (0.0, 1.0), (0.0, 1.0)
    lo, hi = pts.min(axis=0), pts.max(axis=0)
    span = np.maximum(hi - lo, 1e-12)
    lo, hi = lo - pad * span, hi + pad * span
    return (float(lo[0]), float(hi[0])), (float(lo[1]), float(hi[1]))


def control_value(rec: dict[str, Any], metric: str = "r2") -> float | None:
    """Shuffled-belief control of ``metric`` in a probe record, under either name."""
    for key in (f"shuffled_{metric}", f"control_{metric}"):
        if rec.get(key) is not None:
            return rec[key]
    return None


def transition_dict(result: Any) -> dict[str, Any]:
    """A TransitionResult or its ``to_dict()`` as a plain dict."""
    return result.to_dict() if hasattr(result, "to_dict") else dict(result)


TRAIN_PANELS = [("val_loss", "validation loss"), ("ce", "train cross-entropy"), ("next_h", "train next_h (latent)"), ("kl", "train KL")]


def training_series(runs: dict[str, Any], objectives: dict[str, str] | None = None) -> tuple[dict[str, dict[str, Any]], dict[str, dict[str, Any]], float | None]:
    """Per run: {metric: (steps, values)} for each of ``TRAIN_PANELS`` plus ``val_floor``;
    the run styles; and the floor shared by all runs (None when they differ). ``runs``
    values are record lists or paths to ``metrics.jsonl`` files. Metrics that are all
    zero (GPT's latent losses) are left out."""
    recs = {k: (read_metrics(v) if isinstance(v, (str, Path)) else list(v)) for k, v in runs.items()}
    objs = dict(objectives or {})
    for k, v in recs.items():
        objs.setdefault(k, run_objective(v))
    series: dict[str, dict[str, Any]] = {}
    for name, rows in recs.items():
        ev = sorted((r for r in rows if metric_kind(r) == "eval"), key=lambda r: r["step"])
        tr = sorted((r for r in rows if metric_kind(r) == "train"), key=lambda r: r["step"])
        s: dict[str, Any] = {}
        for key, _ in TRAIN_PANELS:
            src = ev if key == "val_loss" else tr
            pts = [(r["step"], r[key]) for r in src if r.get(key) is not None]
            if pts and any(v != 0 for _, v in pts):
                s[key] = (as_float_array([p[0] for p in pts]), as_float_array([p[1] for p in pts]))
        floors = [r.get("val_floor") for r in ev if r.get("val_floor") is not None]
        s["val_floor"] = float(floors[-1]) if floors else None
        series[name] = s
    floor = common_value(s["val_floor"] for s in series.values())
    return series, checkpoint_styles(recs, objs), floor


_ROW_KEYS = ("model", "name", "objective", "checkpoint")


def table_columns(rows: list[dict[str, Any]], columns: list[str] | None = None) -> list[str]:
    """Metric columns of world-model rows: ``columns``, else every key other than the
    model name/objective and interval companions (``*_low``, ``*_high``, ``*_ci``)."""
    if columns is not None:
        return list(columns)
    out: list[str] = []
    for r in rows:
        for k in r:
            if k in _ROW_KEYS or k.endswith(("_low", "_high", "_ci")) or k in out:
                continue
            out.append(k)
    return out


def table_cell(row: dict[str, Any], col: str) -> tuple[float, float, float]:
    """(value, low, high) of a metric in a row; bounds may also sit in ``{col}_ci`` or
    ``{col}_low`` / ``{col}_high``."""
    v, lo, hi = interval(row.get(col))
    if f"{col}_ci" in row and row[f"{col}_ci"] is not None:
        lo, hi = (float("nan") if x is None else float(x) for x in row[f"{col}_ci"])
    if row.get(f"{col}_low") is not None:
        lo = float(row[f"{col}_low"])
    if row.get(f"{col}_high") is not None:
        hi = float(row[f"{col}_high"])
    return v, lo, hi


def format_cell(v: float, lo: float, hi: float, fmt: str = ".3g") -> str:
    """'0.987 [0.971, 0.994]' (or just the value when there is no interval)."""
    if not np.isfinite(v):
        return "—"
    s = format(v, fmt)
    if np.isfinite(lo) and np.isfinite(hi):
        s += f" [{format(lo, fmt)}, {format(hi, fmt)}]"
    return s


def map_panels(true_map: Any, panels: list[dict[str, Any]], curvature: float = 0.25) -> tuple[list[dict[str, Any]], np.ndarray]:
    """Geometry of every map panel: true edges as segments at the panel's node positions,
    recovered / missing edges straight, invented edges as Bezier curves. Edges of a
    panel's ``edges`` that are not in the true map count as invented."""
    base = map_layout(true_map)
    true_edges = map_edges(true_map)
    out = []
    for p in panels:
        xy = base if p.get("coords") is None else np.asarray(p["coords"], dtype=np.float64)
        if xy.shape != base.shape:
            raise ValueError(f"map panel {p.get('title')!r}: coords must be [{base.shape[0]}, 2], got {xy.shape}")
        rec, inv = split_invented(true_map, p.get("edges"), p.get("invented"))
        inv = inv[inv[:, 0] != inv[:, 1]] if len(inv) else inv
        miss = as_edges(p.get("missing"))
        out.append({
            "title": str(p.get("title", "")),
            "coords": xy,
            "true": segments(xy, true_edges),
            "recovered": segments(xy, rec),
            "missing": segments(xy, miss),
            "invented": bezier_curves(xy[inv[:, 0]], xy[inv[:, 1]], curvature) if len(inv) else np.zeros((0, 2, 2)),
            "n_recovered": len(rec),
            "n_invented": len(inv),
            "n_missing": len(miss),
        })
    return out, base
