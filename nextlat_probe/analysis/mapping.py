"""Map reconstruction: rebuild the street map from a model's behaviour or from its hidden
states (Vafa et al. 2024; SPEC §3 "Taxi world-model metrics").

**From behaviour** (``reconstruct_map``). Trips in the taxi format (``origin dest d_1 ..
d_k end``) are replayed on a graph that starts as the true map. A trip follows existing
edges while they explain its turns; where a turn is impossible (no edge in that direction
from the current node) a NEW edge with that label is added from the current node to a
nearby node (within ``max_distance``: Euclidean with coordinates, else undirected hops on
the true map; the real Manhattan map has no coordinates). Among the nearby nodes the one
that lets the trip continue best is taken: first one from which the remaining turns reach
the destination, then the most remaining turns explained, then the nearest, then the
lowest index. On the last turn the new edge must lead to the destination itself. A trip
fails (and stays unexplained) when no nearby node explains even one more turn, when the
destination is out of reach for the last turn, or when its turns end away from the
destination. Invented edges stay in the graph and later trips may use them (as in Vafa et
al.; their degree cap is not applied since a node has one slot per direction anyway).

Because our maps have at most one edge per (node, direction), replaying is deterministic:
trips that the true map already explains are replayed for all trips at once (vectorised),
and only the others go through the sequential repair, in file order. True trips therefore
give back exactly the true edges they use and invent nothing.

Reported: edges recovered (true edges traversed), missed (true edges never traversed) and
invented, with precision = recovered / (recovered + invented), recall = recovered / true
edges, and the fraction of trips explained.

**From representations** (``embed_node_states``, ``representation_map``). The mean hidden
state of every intersection (the current node of each position of visible-origin trips,
from ``Sample.states[..., 0]``, positions after the origin token, no padding) is mapped to
2-D by

- a linear probe to (x, y), ridge with cross-validated penalty, **cross-fitted**: the seen
  nodes are split in two random halves and each half is predicted by the probe fitted on
  the other, so every node's position is out of sample (skipped without coordinates);
- metric MDS (``sklearn.manifold.MDS``, classical-MDS start) aligned to the reference by
  Procrustes (``scipy.spatial.procrustes``: translation, rotation/reflection, scale).

The reference geometry is the map's coordinates, or, without coordinates, a classical
MDS of undirected hop distances (landmark MDS on large maps): ``StreetMap.layout()``, the
layout the plots draw (``layout_coords``). Scores:
the Procrustes disparity (sum of squared differences after standardising both point
sets, 0 = same shape) and nearest-neighbour agreement: the fraction of nodes whose nearest
neighbour in the embedding is a map neighbour (an edge either way), and the fraction
whose nearest neighbour is among their nearest nodes in the reference geometry.

Checkpoint-level use (sampling trips from a model, averaging its hidden states per
intersection) is ``nextlat_probe.compare.run_mapping``, which returns ``mapping`` records
that the plotting layer draws.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import scipy.sparse as sp

from ..worlds.streetmap import DIRECTIONS, StreetMap
from ..worlds.trips import Trips, parse_trips  # the trip parser, re-exported
from .stats import AnalysisError
from .worldmodel import Rate

DEFAULT_HOPS = 2
DEFAULT_EDGE_FACTOR = 2.0  # max_distance default with coordinates: x median edge length


# --------------------------------------------------------------------------------------
# reconstruction from behaviour
# --------------------------------------------------------------------------------------
@dataclass
class ReconstructionResult:
    """Edges as ``(src, direction name, dst)`` with node indices of ``street_map``."""

    street_map: StreetMap = field(repr=False)
    recovered: list[tuple[int, str, int]]
    missed: list[tuple[int, str, int]]
    invented: list[tuple[int, str, int]]
    n_trips: int
    n_malformed: int
    n_explained: int
    n_true_valid: int
    max_distance: float
    distance: str  # "euclidean" or "hops"

    @property
    def explained(self) -> Rate:
        return Rate(self.n_explained, self.n_trips - self.n_malformed)

    @property
    def precision(self) -> Rate:
        return Rate(len(self.recovered), len(self.recovered) + len(self.invented))

    @property
    def recall(self) -> Rate:
        return Rate(len(self.recovered), self.street_map.n_edges)

    def to_dict(self, edges: str = "invented") -> dict[str, Any]:
        """Counts and rates; edge lists (original node ids) per ``edges``: ``"none"``,
        ``"invented"`` (default) or ``"all"`` (also recovered and missed)."""
        ids = self.street_map.node_ids

        def named(edges):
            return [[ids[s], d, ids[t]] for s, d, t in edges]

        out: dict[str, Any] = {
            "map": self.street_map.name, "n_nodes": self.street_map.n_nodes, "n_true_edges": self.street_map.n_edges,
            "n_trips": self.n_trips, "n_malformed": self.n_malformed, "n_true_valid": self.n_true_valid,
            "explained": self.explained.to_dict(), "edges_recovered": len(self.recovered),
            "edges_missed": len(self.missed), "edges_invented": len(self.invented),
            "edge_precision": self.precision.to_dict(), "edge_recall": self.recall.to_dict(),
            "max_distance": self.max_distance, "distance": self.distance,
        }
        if edges in ("invented", "all"):
            out["invented"] = named(self.invented)
        if edges == "all":
            out["recovered"] = named(self.recovered)
            out["missed"] = named(self.missed)
        return out


def default_max_distance(street_map: StreetMap) -> tuple[float, str]:
    """(bound, kind): twice the median edge length with coordinates, else 2 hops."""
    if street_map.coords is None:
        return float(DEFAULT_HOPS), "hops"
    c = street_map.coords
    length = np.linalg.norm(c[street_map.edge_dst] - c[street_map.edge_src], axis=1)
    length = length[length > 0]
    return (DEFAULT_EDGE_FACTOR * float(np.median(length)) if length.size else 1.0), "euclidean"


class _Nearby:
    """Nodes within the distance bound of a node (cached per node)."""

    def __init__(self, street_map: StreetMap, bound: float, kind: str):
        self.map, self.bound, self.kind = street_map, bound, kind
        self._cache: dict[int, tuple[np.ndarray, np.ndarray]] = {}

    def __call__(self, node: int) -> tuple[np.ndarray, np.ndarray]:
        if node not in self._cache:
            if self.kind == "euclidean":
                d = np.linalg.norm(self.map.coords - self.map.coords[node], axis=1)
            else:
                d = self.map.hops([node], limit=self.bound + 0.5)[0]
            d[node] = np.inf
            idx = np.flatnonzero(d <= self.bound)
            self._cache[node] = (idx, d[idx])
        return self._cache[node]


def _follow(G: np.ndarray, start: np.ndarray, turns: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Follow ``turns`` (direction indices) through ``G`` from every node of ``start``:
    (turns explained before the first missing edge, node reached)."""
    pos = start.copy()
    alive = np.ones(start.size, dtype=bool)
    steps = np.zeros(start.size, dtype=np.int64)
    for d in turns:
        nxt = G[pos, d]
        alive &= nxt >= 0
        steps += alive
        pos = np.where(alive, nxt, pos)
    return steps, pos


def reconstruct_map(street_map: StreetMap, trips: Any, max_distance: float | None = None) -> ReconstructionResult:
    """Rebuild a street graph from ``trips`` (see the module docstring and ``parse_trips``).

    ``max_distance``: how far a new edge may reach (Euclidean with coordinates, undirected
    hops without); default ``default_max_distance``."""
    tr = parse_trips(street_map, trips)
    bound, kind = default_max_distance(street_map)
    if max_distance is not None:
        if not max_distance > 0:
            raise AnalysisError(f"max_distance must be positive, got {max_distance}")
        bound = float(max_distance)
    G = np.array(street_map.succ, dtype=np.int64)  # grows with invented edges
    used = np.zeros(G.shape, dtype=bool)
    invented = np.zeros(G.shape, dtype=bool)
    n = tr.origin.size
    # 1) trips the true map explains, all at once
    cur = tr.origin.copy()
    legal = np.ones(n, dtype=bool)
    visits = []
    for k in range(tr.turns.shape[1]):
        d = tr.turns[:, k]
        act = d >= 0
        nxt = G[cur, np.clip(d, 0, 7)]
        step = act & (nxt >= 0)
        legal &= ~act | step
        visits.append((cur.copy(), d.copy(), step & legal))
        cur = np.where(step, nxt, cur)
    true_valid = legal & (cur == tr.dest)
    for node, d, step in visits:
        sel = step & true_valid
        used[node[sel], d[sel]] = True
    explained = true_valid.copy()
    # 2) the rest, one trip at a time, in input order
    nearby = _Nearby(street_map, bound, kind)
    for i in np.flatnonzero(~true_valid):
        turns = tr.turns[i, :tr.lengths[i]]
        node, dest = int(tr.origin[i]), int(tr.dest[i])
        ok = True
        for j, d in enumerate(turns):
            nxt = G[node, d]
            if nxt < 0:
                cand, dist = nearby(node)
                rest = turns[j + 1:]
                if rest.size == 0:
                    hit = np.flatnonzero(cand == dest)
                    if hit.size == 0:
                        ok = False
                        break
                    nxt = dest
                else:
                    if cand.size == 0:
                        ok = False
                        break
                    steps, reached = _follow(G, cand, rest)
                    complete = (steps == rest.size) & (reached == dest)
                    if steps.max() == 0:
                        ok = False
                        break
                    best = np.lexsort((cand, dist, -steps, ~complete))[0]
                    nxt = int(cand[best])
                G[node, d] = nxt
                invented[node, d] = True
            else:
                used[node, d] = True
            node = int(nxt)
        explained[i] = ok and node == dest
    true_edge = np.asarray(street_map.succ) >= 0
    used &= true_edge

    def listing(mask: np.ndarray) -> list[tuple[int, str, int]]:
        s, d = np.nonzero(mask)
        return [(int(a), DIRECTIONS[int(b)], int(G[a, b])) for a, b in zip(s, d)]

    return ReconstructionResult(street_map=street_map, recovered=listing(used), missed=listing(true_edge & ~used),
                                invented=listing(invented), n_trips=tr.n_input, n_malformed=len(tr.malformed),
                                n_explained=int(explained.sum()), n_true_valid=int(true_valid.sum()),
                                max_distance=bound, distance=kind)


# --------------------------------------------------------------------------------------
# geometry helpers
# --------------------------------------------------------------------------------------
def hop_distances(street_map: StreetMap, sources: np.ndarray | None = None) -> np.ndarray:
    """Undirected hop distances ``[k, N]`` from ``sources`` (all nodes if None):
    ``street_map.hops(sources)``."""
    return street_map.hops(sources)


def layout_coords(street_map: StreetMap, max_landmarks: int | None = None, seed: int = 0) -> np.ndarray:
    """The map's layout, ``StreetMap.layout()`` (a copy): its coordinates, or a 2-D MDS of
    undirected hop distances with the map's fixed orientation, the same picture the plots
    draw. ``max_landmarks`` (default: the map's) sets both the largest component laid out
    by classical MDS and the landmarks of landmark MDS above it. ``seed`` is accepted for
    compatibility and unused: the landmarks are farthest-point, not random."""
    if max_landmarks is None:
        return np.array(street_map.layout(), dtype=np.float64)
    return np.array(street_map.layout(max_exact=max_landmarks, n_landmarks=max_landmarks), dtype=np.float64)


def _procrustes(ref: np.ndarray, X: np.ndarray) -> tuple[np.ndarray, float]:
    """Align ``X`` to ``ref`` (scipy's Procrustes) and return it in ``ref``'s frame."""
    from scipy.spatial import procrustes

    mtx1, mtx2, disparity = procrustes(ref, X)
    centred = ref - ref.mean(axis=0)
    scale = float(np.linalg.norm(centred))
    return mtx2 * scale + ref.mean(axis=0), float(disparity)


def _nn_agreement(Z: np.ndarray, nodes: np.ndarray, street_map: StreetMap,
                  ref: np.ndarray | None) -> tuple[Rate, Rate]:
    """(NN in the embedding is a map neighbour, NN is among the reference-nearest nodes),
    both over the seen ``nodes``. Without reference coordinates "nearest" is in hops."""
    from scipy.spatial.distance import cdist

    k = nodes.size
    if k < 2:
        return Rate(0, 0), Rate(0, 0)
    dz = cdist(Z, Z)
    np.fill_diagonal(dz, np.inf)
    nn = dz.argmin(axis=1)
    und = street_map.undirected()[nodes][:, nodes].toarray() > 0
    is_nb = und[np.arange(k), nn]
    if ref is not None:
        dr = cdist(ref, ref)
    else:
        dr = street_map.hops(nodes)[:, nodes]
    np.fill_diagonal(dr, np.inf)
    closest = dr <= dr.min(axis=1, keepdims=True) * (1 + 1e-9)
    is_true = closest[np.arange(k), nn]
    return Rate(int(is_nb.sum()), k), Rate(int(is_true.sum()), k)


# --------------------------------------------------------------------------------------
# reconstruction from representations
# --------------------------------------------------------------------------------------
@dataclass
class Embedding:
    """One 2-D embedding of the intersections. ``coords`` ``[N, 2]`` in the reference
    frame (NaN for nodes never seen); ``r2``: out-of-fold R^2 of the probe (None for MDS)."""

    method: str
    coords: np.ndarray = field(repr=False)
    disparity: float
    nn_map_neighbour: Rate
    nn_true_nearest: Rate
    r2: float | None = None

    def to_dict(self, include_coords: bool = False) -> dict[str, Any]:
        out = {"method": self.method, "disparity": self.disparity, "r2": self.r2,
               "nn_map_neighbour": self.nn_map_neighbour.to_dict(), "nn_true_nearest": self.nn_true_nearest.to_dict()}
        if include_coords:
            out["coords"] = np.where(np.isfinite(self.coords), self.coords, np.nan).tolist()
        return out


@dataclass
class RepresentationMapResult:
    street_map: StreetMap = field(repr=False)
    reference: str  # "coordinates" or "graph-distance MDS"
    n_nodes_seen: int
    mds: Embedding
    probe: Embedding | None
    note: str = ""
    layer: str = ""
    reconstruction: ReconstructionResult | None = field(default=None, repr=False)

    def to_dict(self, include_coords: bool = False) -> dict[str, Any]:
        return {"map": self.street_map.name, "reference": self.reference, "layer": self.layer,
                "n_nodes": self.street_map.n_nodes, "n_nodes_seen": self.n_nodes_seen,
                "probe": None if self.probe is None else self.probe.to_dict(include_coords),
                "mds": self.mds.to_dict(include_coords), "note": self.note}


def node_means(hidden: Any, nodes: Any, mask: Any, n_nodes: int) -> tuple[np.ndarray, np.ndarray]:
    """Mean hidden state per intersection: (means ``[N, D]``, NaN rows for nodes never
    seen; counts ``[N]``). ``hidden`` ``[n, L, D]``, ``nodes`` ``[n, L]``, ``mask`` ``[n, L]``."""
    H = np.asarray(hidden, dtype=np.float64)
    nodes = np.asarray(nodes, dtype=np.int64)
    mask = np.asarray(mask, dtype=bool)
    X, idx = H[mask], nodes[mask]
    S = sp.csr_matrix((np.ones(idx.size), (idx, np.arange(idx.size))), shape=(n_nodes, idx.size))
    counts = np.bincount(idx, minlength=n_nodes)
    sums = S @ X
    with np.errstate(invalid="ignore", divide="ignore"):
        means = sums / counts[:, None]
    means[counts == 0] = np.nan
    return means, counts


def _probe_coords(X: np.ndarray, Y: np.ndarray, seed: int) -> tuple[np.ndarray, float]:
    """Cross-fitted ridge probe X -> Y over two random halves: out-of-fold predictions, R^2."""
    from sklearn.linear_model import RidgeCV

    rng = np.random.default_rng(seed)
    perm = rng.permutation(X.shape[0])
    halves = [perm[: perm.size // 2], perm[perm.size // 2:]]
    pred = np.empty_like(Y)
    for fit, out in ((halves[0], halves[1]), (halves[1], halves[0])):
        probe = RidgeCV(alphas=np.logspace(-4, 4, 17)).fit(X[fit], Y[fit])
        pred[out] = probe.predict(X[out])
    sst = float(((Y - Y.mean(axis=0)) ** 2).sum())
    r2 = 1.0 - float(((pred - Y) ** 2).sum()) / sst if sst > 0 else float("nan")
    return pred, r2


def embed_node_states(means: np.ndarray, street_map: StreetMap, seed: int = 0) -> RepresentationMapResult:
    """Probe and MDS embeddings of per-node mean states ``[N, D]`` (NaN rows = unseen)."""
    from sklearn.manifold import MDS

    means = np.asarray(means, dtype=np.float64)
    N = street_map.n_nodes
    if means.shape[0] != N:
        raise AnalysisError(f"embed_node_states: {means.shape[0]} rows of means for a map of {N} nodes")
    seen = np.flatnonzero(np.isfinite(means).all(axis=1))
    if seen.size < 3:
        raise AnalysisError(f"embed_node_states: only {seen.size} intersections seen; need at least 3")
    has_coords = street_map.coords is not None
    ref_all = layout_coords(street_map, seed=seed)
    ref = ref_all[seen]
    X = means[seen]

    def place(Z: np.ndarray) -> np.ndarray:
        out = np.full((N, 2), np.nan)
        out[seen] = Z
        return out

    note = ""
    probe = None
    if not has_coords:
        note = "linear probe skipped: the map has no coordinates (MDS compared with graph-distance MDS)"
    elif seen.size < 6:
        note = f"linear probe skipped: only {seen.size} intersections seen"
    else:
        pred, r2 = _probe_coords(X, ref, seed)
        _, disparity = _procrustes(ref, pred)
        nb, tn = _nn_agreement(pred, seen, street_map, ref)
        probe = Embedding("probe", place(pred), disparity, nb, tn, r2=r2)
    try:
        mds = MDS(n_components=2, n_init=1, init="classical_mds", random_state=seed)
        Z = mds.fit_transform(X)
    except TypeError:  # scikit-learn before 1.8
        Z = MDS(n_components=2, random_state=seed).fit_transform(X)
    aligned, disparity = _procrustes(ref, Z)
    nb, tn = _nn_agreement(aligned, seen, street_map, ref if has_coords else None)
    emb = Embedding("mds", place(aligned), disparity, nb, tn)
    return RepresentationMapResult(street_map=street_map, reference="coordinates" if has_coords else "graph-distance MDS",
                                   n_nodes_seen=int(seen.size), mds=emb, probe=probe, note=note)


__all__ = ["Trips", "parse_trips", "ReconstructionResult", "reconstruct_map", "default_max_distance", "hop_distances",
           "layout_coords", "Embedding", "RepresentationMapResult", "node_means", "embed_node_states"]
