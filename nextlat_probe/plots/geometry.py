"""What the interactive (plotly) and paper (matplotlib) figures draw, computed once.

- records in: ``checked`` validates the records a figure gets (``records.check_record``)
  and keeps the analyses it draws; ``layer_key`` orders hidden-state sites;
- beliefs: barycentric (3 states) and PCA projections, shared subsampling, the panels of
  the belief figure (``belief_panels``) and of the taxi "where am I" figure
  (``position_panels``);
- street maps: straight segments, curved Bezier arcs for invented edges, NaN-joined
  polylines, and every map panel of the map figure (``map_panels``);
- common axis limits, training-log series.

So a plotly page and the paper figure of the same records show exactly the same picture.
Only numpy here (no plotly, no matplotlib).
"""
from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from ..errors import AnalysisError
from ..labels import SUMMARY_DETOUR, label, layer_name
from ..records import check_records, metric_interval, value
from ..tables import field
from .style import belief_colors, checkpoint_styles, place_colors


# --------------------------------------------------------------------------------------
# records in
# --------------------------------------------------------------------------------------
def checked(records: Iterable[Any], analyses: str | Sequence[str], what: str) -> list[dict[str, Any]]:
    """The records a figure ``what`` draws, each validated with ``records.check_record``
    (a row of another shape is an ``AnalysisError`` naming the figure); every record must
    be of one of ``analyses``; at least one is needed."""
    allowed = (analyses,) if isinstance(analyses, str) else tuple(analyses)
    out = []
    for r in check_records(records, what):
        if r["analysis"] not in allowed:
            raise AnalysisError(f"{what}: draws {' / '.join(allowed)} records, got a {r['analysis']!r} record "
                                f"of {r['name']!r}")
        out.append(r)
    if not out:
        raise AnalysisError(f"{what}: no {' / '.join(allowed)} records")
    return out


def layer_key(layer: Any) -> tuple[int, int, str]:
    """Sort key of hidden-state sites: embed, L0, L1, ..., ln_final, concat, then others."""
    s = "" if layer is None else str(layer)
    if s == "embed":
        return (0, 0, s)
    m = re.fullmatch(r"L(\d+)", s)
    if m:
        return (1, int(m.group(1)), s)
    return ({"ln_final": 2, "final": 2, "concat": 3}.get(s, 4), 0, s)


def layers_in_order(records: Iterable[Mapping[str, Any]]) -> list[Any]:
    """Distinct ``layer`` values of the records, embed first, blocks by index."""
    return sorted({r["layer"] for r in records}, key=layer_key)


def by_name(records: Iterable[Mapping[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """Records grouped by ``name`` (first-seen order), each group sorted by layer."""
    out: dict[str, list[dict[str, Any]]] = {}
    for r in records:
        out.setdefault(r["name"], []).append(dict(r))
    return {k: sorted(v, key=lambda r: layer_key(r["layer"])) for k, v in out.items()}


def latest_step(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per name, only the records of its largest ``step`` (a per-layer figure shows one
    checkpoint per model; ``rank_training_*`` shows the steps)."""
    best: dict[str, Any] = {}
    for r in records:
        s = -1 if r["step"] is None else r["step"]
        best[r["name"]] = max(best.get(r["name"], s), s)
    return [r for r in records if (-1 if r["step"] is None else r["step"]) == best[r["name"]]]


def deepest_layer(records: Iterable[Mapping[str, Any]]) -> Any:
    """The deepest block ``L{n}`` among the records (else the last site in order)."""
    layers = layers_in_order(records)
    blocks = [x for x in layers if layer_key(x)[0] == 1]
    return blocks[-1] if blocks else (layers[-1] if layers else None)


def as_float_array(values: Any) -> np.ndarray:
    """1-D float array with None -> NaN (``to_jsonable`` writes NaN as null); rates by value."""
    if values is None:
        return np.zeros(0)
    return np.array([value(v) for v in values], dtype=np.float64)


# --------------------------------------------------------------------------------------
# beliefs: projections
# --------------------------------------------------------------------------------------
#: corners of the equilateral 2-simplex: state 0 bottom left, 1 bottom right, 2 top
SIMPLEX_CORNERS = np.array([[0.0, 0.0], [1.0, 0.0], [0.5, math.sqrt(3.0) / 2.0]])


def simplex_project(beliefs: Any) -> np.ndarray:
    """Barycentric 2-D coordinates of 3-state belief vectors [N, 3] -> [N, 2]: vertex k of
    the simplex lands on ``SIMPLEX_CORNERS[k]``; off-simplex vectors (probe predictions)
    are mapped by the same affine formula (normalised by their sum when it is non-zero)."""
    B = np.asarray(beliefs, dtype=np.float64)
    if B.ndim != 2 or B.shape[1] != 3:
        raise AnalysisError(f"simplex_project: expected beliefs [N, 3], got shape {B.shape}")
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


def subsample(n: int, max_points: int | None, seed: int = 0) -> np.ndarray:
    """Sorted indices of at most ``max_points`` of ``n`` rows (all when n is small), drawn
    with a fixed seed so the same points are shown in every backend."""
    if max_points is None or n <= max_points:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(n, size=int(max_points), replace=False))


def common_limits(xys: list[np.ndarray], pad: float = 0.04) -> tuple[tuple[float, float], tuple[float, float]]:
    """Shared (x range, y range) of several point sets, padded, so panels compare at a glance."""
    arrs = [np.asarray(x, dtype=np.float64).reshape(-1, 2) for x in xys]
    pts = np.vstack(arrs) if arrs else np.zeros((0, 2))
    pts = pts[np.isfinite(pts).all(axis=1)]
    if len(pts) == 0:
        return (0.0, 1.0), (0.0, 1.0)
    lo, hi = pts.min(axis=0), pts.max(axis=0)
    span = np.maximum(hi - lo, 1e-12)
    lo, hi = lo - pad * span, hi + pad * span
    return (float(lo[0]), float(hi[0])), (float(lo[1]), float(hi[1]))


def points_records(records: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], bool]:
    """(probe records that carry ``metrics["points"]``, is_taxi): taxi when any of them
    has probed positions (``xy_true`` / ``xy_pred`` / ``node``); then only those."""
    with_pts = [r for r in records if isinstance(r["metrics"].get("points"), Mapping)]
    if not with_pts:
        raise AnalysisError("belief figure: no probe record has metrics['points'] (run the probe with keep_points > 0)")
    taxi = [r for r in with_pts if "xy_pred" in r["metrics"]["points"]]
    if taxi:
        return taxi, True
    beliefs = [r for r in with_pts if "true" in r["metrics"]["points"]]
    if not beliefs:
        raise AnalysisError("belief figure: points carry neither beliefs (true, pred) nor positions (xy_true, xy_pred)")
    return beliefs, False


def panel_title(r: Mapping[str, Any], extra: str = "") -> str:
    lay = f" ({layer_name(r['layer'])})" if r.get("layer") else ""
    return f"{r['name']}{lay}{extra}"


def belief_panels(records: list[dict[str, Any]], max_points: int | None = 4000,
                  seed: int = 0) -> tuple[list[dict[str, Any]], bool]:
    """Panels of the belief figure with one shared projection: first the exact beliefs
    (of the first record's points), then each record's probed beliefs, coloured by the
    true belief; ``[{title, name, xy, rgb}]`` and is_simplex. At most ``max_points``
    rows per panel (the same rows in every backend)."""
    trues, preds = [], []
    for r in records:
        p = r["metrics"]["points"]
        T = np.asarray(p["true"], dtype=np.float64)
        P = np.asarray(p.get("pred", p["true"]), dtype=np.float64)
        if T.ndim != 2 or P.shape != T.shape:
            raise AnalysisError(f"belief figure: points of {r['name']!r} must be true [N, S] and pred [N, S], "
                                f"got {T.shape} and {P.shape}")
        trues.append(T)
        preds.append(P)
    if len({T.shape[1] for T in trues}) > 1:
        raise AnalysisError("belief figure: records of different worlds (numbers of states differ)")
    proj, is_simplex = belief_projection(trues)
    idx0 = subsample(len(trues[0]), max_points, seed)
    out = [{"title": "exact beliefs", "name": "exact beliefs", "xy": proj(trues[0][idx0]), "rgb": belief_colors(trues[0][idx0])}]
    for r, T, P in zip(records, trues, preds):
        idx = subsample(len(T), max_points, seed)
        out.append({"title": panel_title(r, ": probed"), "name": r["name"], "xy": proj(P[idx]), "rgb": belief_colors(T[idx])})
    return out, is_simplex


def position_panels(records: list[dict[str, Any]], true_map: Any = None, max_points: int | None = 4000,
                    seed: int = 0) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The taxi view: (map, panels). ``map`` = {"segments": [E, 2, 2] streets (empty without
    a map), "nodes_xy": [N, 2] intersections, "node_rgb": [N, 3]}; one panel per record =
    {title, name, xy: probed (x, y) [n, 2], xy_true, node, rgb: the colour of the true
    intersection}. Intersection colours come from ``style.place_colors`` of their map
    position, so a probed point wearing the colour of its neighbourhood is right."""
    if true_map is not None:
        layout = np.asarray(true_map.layout(), dtype=np.float64)
        nodes_xy = layout
        segs = segments(layout, np.asarray(true_map.undirected_edges(), dtype=np.int64).reshape(-1, 2))
    else:
        allxy = np.vstack([np.asarray(r["metrics"]["points"]["xy_true"], dtype=np.float64).reshape(-1, 2) for r in records])
        nodes_xy, segs = np.unique(allxy, axis=0), np.zeros((0, 2, 2))
    node_rgb = place_colors(nodes_xy, nodes_xy)
    panels = []
    for r in records:
        p = r["metrics"]["points"]
        xy = np.asarray(p["xy_pred"], dtype=np.float64).reshape(-1, 2)
        xt = np.asarray(p.get("xy_true", p["xy_pred"]), dtype=np.float64).reshape(-1, 2)
        node = np.asarray(p.get("node", np.full(len(xy), -1)), dtype=np.int64).ravel()
        if len(xt) != len(xy) or len(node) != len(xy):
            raise AnalysisError(f"belief figure: points of {r['name']!r}: xy_pred, xy_true and node differ in length")
        idx = subsample(len(xy), max_points, seed)
        if true_map is not None and len(node) and (node.min() < 0 or node.max() >= len(nodes_xy)):
            raise AnalysisError(f"belief figure: points of {r['name']!r} name intersections outside the map "
                                f"(0..{len(nodes_xy) - 1})")
        rgb = node_rgb[node[idx]] if true_map is not None else place_colors(xt[idx], nodes_xy)
        r2 = value(r["metrics"].get("xy_r2"))
        extra = f": probed (x, y), R² {r2:.3f}" if np.isfinite(r2) else ": probed (x, y)"
        panels.append({"title": panel_title(r, extra), "name": r["name"], "xy": xy[idx], "xy_true": xt[idx],
                       "node": node[idx], "rgb": rgb})
    return {"segments": segs, "nodes_xy": nodes_xy, "node_rgb": node_rgb}, panels


# --------------------------------------------------------------------------------------
# street maps
# --------------------------------------------------------------------------------------
def as_edges(edges: Any) -> np.ndarray:
    """int64 [E, 2] from (src, dst) pairs or the records' (src, direction, dst) triples
    (empty -> shape [0, 2])."""
    if edges is None:
        return np.zeros((0, 2), dtype=np.int64)
    if not isinstance(edges, np.ndarray):
        edges = [(e[0], e[-1]) for e in edges]
    arr = np.asarray(edges, dtype=np.int64)
    return arr.reshape(-1, 2)


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


#: the way a direction name points on the map (a self-loop bulges that way)
DIRECTION_VECTORS = {"N": (0.0, 1.0), "E": (1.0, 0.0), "S": (0.0, -1.0), "W": (-1.0, 0.0)}


def self_loops(at: Any, directions: list[Any], radius: float, n: int = 17) -> np.ndarray:
    """Closed loops [E, n, 2] of ``radius`` that leave and return to each point of ``at``
    [E, 2], bulging toward the direction the edge was taken in (``N``, ``SE`` ...; up when
    unknown): how an invented edge from an intersection back to itself is drawn."""
    at = np.asarray(at, dtype=np.float64).reshape(-1, 2)
    out = np.zeros((len(at), n, 2))
    t = np.linspace(0.0, 2 * np.pi, n)
    for i, (p, d) in enumerate(zip(at, directions)):
        u = np.sum([DIRECTION_VECTORS[c] for c in str(d).upper() if c in DIRECTION_VECTORS] or [(0.0, 1.0)], axis=0)
        u = u / max(float(np.linalg.norm(u)), 1e-12)
        centre = p + radius * u
        start = np.arctan2(-u[1], -u[0])  # the angle at which the circle touches p
        out[i] = centre + radius * np.stack([np.cos(start + t), np.sin(start + t)], axis=1)
    return out


def polylines_xy(paths: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """x and y of [E, k, 2] paths joined into one NaN-separated line (one plotly trace)."""
    if len(paths) == 0:
        return np.zeros(0), np.zeros(0)
    gap = np.full((paths.shape[0], 1, 2), np.nan)
    flat = np.concatenate([paths, gap], axis=1).reshape(-1, 2)
    return flat[:, 0], flat[:, 1]


def _pair_set(edges: np.ndarray) -> set[tuple[int, int]]:
    return {(int(min(a, b)), int(max(a, b))) for a, b in edges if a != b}


def map_panels(true_map: Any, records: list[dict[str, Any]], curvature: float = 0.25) -> list[dict[str, Any]]:
    """Every panel of the map figure, geometry only. First the true map alone (all
    undirected streets at ``true_map.layout()``), then one panel per ``mapping`` record:

    - ``behaviour``: the true map (thin, underneath), recovered streets = the true
      undirected streets none of whose directions is in ``missed_edges``, missing streets
      (a direction missed), and ``invented_edges`` as Bezier arcs (an edge back to its own
      intersection as a small loop, ``self_loops``); the title's counts are the record's
      ``n_invented`` and ``n_missed`` (what summary.json says);
    - ``probe`` / ``mds``: the true map (thin, at the true layout, underneath) and the true
      streets between the embedded ``nodes`` drawn at their ``coords``.

    Panel keys: title, kind ("true" | "behaviour" | "embedding"), coords (node positions
    drawn), true, recovered, missing, invented, embedded (segments / curves [E, k, 2]),
    and n_* counts of each."""
    layout = np.asarray(true_map.layout(), dtype=np.float64)
    und = np.asarray(true_map.undirected_edges(), dtype=np.int64).reshape(-1, 2)
    n = layout.shape[0]
    empty = np.zeros((0, 2, 2))
    true_segs = segments(layout, und)

    def panel(title: str, kind: str, coords: np.ndarray, **parts: np.ndarray) -> dict[str, Any]:
        p = {"title": title, "kind": kind, "coords": coords, "true": true_segs, "recovered": empty, "missing": empty,
             "invented": empty, "embedded": empty}
        p.update(parts)
        p.update({f"n_{k}": len(p[k]) for k in ("true", "recovered", "missing", "invented", "embedded")})
        return p

    out = [panel(f"true map ({n} intersections, {len(und)} streets)", "true", layout)]
    for r in records:
        m, variant = r["metrics"], r["variant"]
        if variant == "behaviour":
            missed = as_edges(m.get("missed_edges"))
            inv = as_edges(m.get("invented_edges"))
            for key, e in (("missed_edges", missed), ("invented_edges", inv)):
                if len(e) and (e.min() < 0 or e.max() >= n):
                    raise AnalysisError(f"map figure: {key} of {r['name']!r} name intersections outside the map (0..{n - 1})")
            gone = _pair_set(missed)
            is_missing = np.array([(int(a), int(b)) in gone for a, b in und], dtype=bool)
            loop = inv[:, 0] == inv[:, 1]
            arcs = bezier_curves(layout[inv[~loop, 0]], layout[inv[~loop, 1]], curvature) if (~loop).any() else empty
            if loop.any():  # a turn the model took that returns to its own intersection: a small loop
                dirs = [e[1] if len(e) == 3 else None for e in (m.get("invented_edges") or [])]
                size = float(np.median(np.linalg.norm(true_segs[:, 1] - true_segs[:, 0], axis=1))) if len(true_segs) else 1.0
                loops = self_loops(layout[inv[loop, 0]], [d for d, is_loop in zip(dirs, loop) if is_loop]
                                   if len(dirs) == len(inv) else [None] * int(loop.sum()), 0.1 * size)
                arcs = np.concatenate([arcs.reshape(-1, loops.shape[1], 2), loops]) if len(arcs) else loops
            # the counts are the record's (summary.json's): every invented edge, self-loops
            # included, and every missed one-way edge
            n_inv, n_missed = int(m.get("n_invented", len(inv))), int(m.get("n_missed", len(missed)))
            recall = value(m.get("edge_recall"))
            bits = [f"edge recall {recall:.2f}"] if np.isfinite(recall) else []
            bits.append(f"{n_inv} invented" + (f" ({int(loop.sum())} back to their own intersection)" if loop.any() else ""))
            bits.append(f"{n_missed} missed")
            out.append(panel(f"{r['name']}: rebuilt from behaviour - {', '.join(bits)}",
                             "behaviour", layout, recovered=segments(layout, und[~is_missing]),
                             missing=segments(layout, und[is_missing]), invented=arcs))
        else:
            nodes = np.asarray(m.get("nodes") or [], dtype=np.int64).ravel()
            coords = np.asarray(m.get("coords") or [], dtype=np.float64).reshape(-1, 2)
            if len(nodes) != len(coords):
                raise AnalysisError(f"map figure: {r['name']!r} ({variant}) has {len(nodes)} nodes but {len(coords)} coords")
            if len(nodes) and (nodes.min() < 0 or nodes.max() >= n):
                raise AnalysisError(f"map figure: nodes of {r['name']!r} ({variant}) outside the map (0..{n - 1})")
            pos = np.full((n, 2), np.nan)
            pos[nodes] = coords
            seen = np.zeros(n, dtype=bool)
            seen[nodes] = True
            inner = und[seen[und[:, 0]] & seen[und[:, 1]]]
            disp = value(m.get("disparity"))
            extra = f" - disparity {disp:.3f}" if np.isfinite(disp) else ""
            out.append(panel(f"{panel_title(r)}: {variant} embedding{extra}", "embedding", coords,
                             embedded=segments(pos, inner)))
    return out


# --------------------------------------------------------------------------------------
# world-model columns (both backends)
# --------------------------------------------------------------------------------------
#: the headline metrics of the NextLat paper's Table 1 (``paper.table1_plot``, the report's
#: summary), in order: validity, compression, distinction, detour at the paper's setting
TABLE1_RATES = ("next_token", "trajectory_valid", "compression", "distinction_precision", "distinction_recall",
                SUMMARY_DETOUR)


def interval_cell(r: Mapping[str, Any], key: str) -> Any:
    """Metric ``key`` of a record as a rate-shaped dict where it has an interval: a rate as
    it is, a per-pair mean with ``{key}_ci`` (protocol vafa2024's distinction) as
    ``{"value", "low", "high", "n": pairs, "count": None}``; anything else as it is."""
    v = field(r, key)
    if isinstance(v, (int, float)) and not isinstance(v, bool) and f"{key}_ci" in r.get("metrics", {}):
        x, lo, hi = metric_interval(r, key)
        fin = [None if not math.isfinite(t) else t for t in (x, lo, hi)]
        return {"value": fin[0], "low": fin[1], "high": fin[2], "n": r["metrics"].get(f"{key}_n_pairs"), "count": None}
    return v


def has_interval(v: Any) -> bool:
    return isinstance(v, Mapping) and "low" in v and "value" in v


def worldmodel_columns(records: list[dict[str, Any]], columns: list[str] | None = None,
                       what: str = "world-model table") -> tuple[list[dict[str, Any]], list[tuple[str, str]], Any]:
    """(worldmodel records, [(key, header)], cell getter) shared by both backends.

    Columns: ``columns``, else every metric with an interval of the worldmodel records
    (rates, and per-pair means with ``_ci``; first-seen order), then ``effective_rank``
    when rank records of the same models are mixed in (the deepest block of each model),
    then ``val_loss`` and ``gap_to_floor``. Headers come from ``nextlat_probe.labels``.
    ``cell(record, key)`` is the raw value (a rate, a rate-shaped per-pair mean, or a
    number)."""
    recs = checked(records, ("worldmodel", "rank"), what)
    wm = [r for r in recs if r["analysis"] == "worldmodel"]
    if not wm:
        raise AnalysisError(f"{what}: no worldmodel records")
    rank: dict[str, dict[str, Any]] = {}
    for name, rows in by_name([r for r in recs if r["analysis"] == "rank"]).items():
        lay = deepest_layer(rows)
        rank[name] = [r for r in rows if r["layer"] == lay][-1]
    if columns is None:
        keys: list[str] = []
        for r in wm:
            keys += [k for k in r["metrics"] if has_interval(interval_cell(r, k)) and k not in keys]
        if rank:
            keys.append("effective_rank")
        if any(r["val_loss"] is not None for r in wm):
            keys += ["val_loss", "gap_to_floor"]
    else:
        keys = list(columns)
    layers = {r["layer"] for r in rank.values()}
    where = layer_name(layers.pop()) if len(layers) == 1 else "last block"
    heads = {k: label(k, "worldmodel").header() for k in keys}
    if "effective_rank" in heads:
        heads["effective_rank"] = label("effective_rank").header().replace("effective rank", f"effective rank ({where})")

    def cell(r: Mapping[str, Any], key: str) -> Any:
        if key == "effective_rank" and "effective_rank" not in r["metrics"]:
            other = rank.get(r["name"])
            return None if other is None else other["metrics"].get("effective_rank")
        return interval_cell(r, key)

    return wm, [(k, heads[k]) for k in keys], cell


# --------------------------------------------------------------------------------------
# training-log series (metrics.jsonl rows, not analysis records)
# --------------------------------------------------------------------------------------
#: panels of the training curves: (key, title). The first is the validation loss minus the
#: exact floor on a log axis: on a loss axis from the first evaluation (~4 nats) down, a
#: difference of 0.03 between two models near their floor would not show
TRAIN_PANELS = [("gap_to_floor", "validation loss − exact floor"), ("ce", "train cross-entropy"),
                ("next_h", "train next-latent prediction loss"), ("kl", "train KL"),
                ("mtp", "train MTP extra-head cross-entropy")]
#: panels drawn even when no run has them (the 2 x 2 grid every NextLat/GPT report shows);
#: the others (MTP's extra heads) appear only when some run logged them
CORE_PANELS = ("gap_to_floor", "ce", "next_h", "kl")
#: panels drawn on a log axis
LOG_PANELS = ("gap_to_floor", "next_h", "kl")


def train_panels(series: Mapping[str, Mapping[str, Any]]) -> list[tuple[str, str]]:
    """The ``TRAIN_PANELS`` a figure of these runs shows."""
    return [(k, t) for k, t in TRAIN_PANELS if k in CORE_PANELS or any(k in s for s in series.values())]


def _metric_kind(rec: Mapping[str, Any]) -> str | None:
    from ..training.log import metric_kind

    return metric_kind(dict(rec))


def run_objective(rows: list[dict[str, Any]]) -> str | None:
    """Objective written in a metrics log's start event, if any."""
    for r in rows:
        if r.get("event") == "start":
            return (r.get("config") or {}).get("objective")
    return None


def common_value(values: Iterable[Any], rtol: float = 1e-9) -> float | None:
    """The shared value if all finite values agree (e.g. one exact floor for all runs)."""
    vals = [float(v) for v in values if v is not None and math.isfinite(float(v))]
    if not vals:
        return None
    return vals[0] if all(abs(v - vals[0]) <= rtol * max(1.0, abs(vals[0])) for v in vals) else None


def training_series(runs: Mapping[str, Any], objectives: Mapping[str, str | None] | None = None):
    """Per run: {metric: (steps, values)} for each of ``TRAIN_PANELS`` and ``val_loss``
    (``gap_to_floor``: each evaluation's validation loss minus its exact floor), plus ``val_floor``;
    the run styles; and the floor shared by all runs (None when they differ). ``runs``
    values are metrics-log rows or paths to ``metrics.jsonl`` files (read with
    ``training.log.read_metrics``). Metrics that are all zero (GPT's latent losses) are
    left out."""
    from ..training.log import read_metrics

    rows = {k: (read_metrics(v) if isinstance(v, (str, Path)) else list(v)) for k, v in runs.items()}
    objs = dict(objectives or {})
    for k, v in rows.items():
        if objs.get(k) is None:
            objs[k] = run_objective(v)
    series: dict[str, dict[str, Any]] = {}
    for name, rs in rows.items():
        ev = sorted((r for r in rs if _metric_kind(r) == "eval"), key=lambda r: r["step"])
        tr = sorted((r for r in rs if _metric_kind(r) == "train"), key=lambda r: r["step"])
        s: dict[str, Any] = {}
        for key in ["val_loss"] + [k for k, _ in TRAIN_PANELS]:
            if key == "gap_to_floor":
                pts = [(r["step"], r["val_loss"] - r["val_floor"]) for r in ev
                       if r.get("val_loss") is not None and r.get("val_floor") is not None]
            else:
                pts = [(r["step"], r[key]) for r in (ev if key == "val_loss" else tr) if r.get(key) is not None]
            if pts and any(v != 0 for _, v in pts):
                s[key] = (as_float_array([p[0] for p in pts]), as_float_array([p[1] for p in pts]))
        floors = [r.get("val_floor") for r in ev if r.get("val_floor") is not None]
        s["val_floor"] = float(floors[-1]) if floors else None
        series[name] = s
    floor = common_value(s["val_floor"] for s in series.values())
    return series, checkpoint_styles(list(rows), objs), floor


__all__ = [
    "PATHSTAR_RATES",
    "length_series",
    "checked", "layer_key", "layers_in_order", "by_name", "latest_step", "deepest_layer", "as_float_array",
    "SIMPLEX_CORNERS", "simplex_project", "pca_basis", "belief_projection", "subsample", "common_limits",
    "points_records", "belief_panels", "position_panels", "as_edges", "segments", "bezier_curves", "self_loops", "polylines_xy",
    "map_panels", "worldmodel_columns", "interval_cell", "has_interval", "TABLE1_RATES", "TRAIN_PANELS", "CORE_PANELS", "LOG_PANELS", "train_panels", "run_objective", "common_value", "training_series",
]


# --------------------------------------------------------------------------------------
# task evaluation (A5 length curves, path-star rates)
# --------------------------------------------------------------------------------------
#: the path-star rates drawn, in order, with their labels
PATHSTAR_RATES = (("exact_path", "exact path"), ("first_step", "first step"), ("valid_path", "valid path to a leaf"))


def length_series(records: Iterable[Mapping[str, Any]]) -> dict[tuple[str, str], dict[str, Any]]:
    """A5 ``taskeval`` records -> ``{(name, variant): {"lengths", "token", "sequence",
    "train_length"}}`` sorted by length (``token`` / ``sequence``: accuracy rates)."""
    out: dict[tuple[str, str], dict[str, Any]] = {}
    for r in records:
        m = r["metrics"]
        if "length" not in m:
            continue
        s = out.setdefault((r["name"], r["variant"]), {"rows": [], "train_length": r["protocol"].get("train_length")})
        s["rows"].append((int(m["length"]), m["token_accuracy"], m["sequence_accuracy"]))
    for s in out.values():
        rows = sorted(s.pop("rows"), key=lambda t: t[0])
        s.update(lengths=[t[0] for t in rows], token=[t[1] for t in rows], sequence=[t[2] for t in rows])
    return out

