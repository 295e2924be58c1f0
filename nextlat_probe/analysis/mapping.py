"""Map reconstruction: rebuild the street map from a model's behaviour or from its hidden
states (Vafa et al. 2024; SPEC §3 "Taxi world-model metrics").

**From behaviour** (``reconstruct_map``), two protocols.

``protocol="vafa2024"`` (default) follows ``reconstruct_graph`` / ``reconstruct_sequence``
/ ``bfs_to_failure`` of Vafa et al.'s ``mapping/reconstruction.py``
(github.com/keyonvafa/world-model-evaluation):

- the graph starts as the true map with every edge *unused*; an edge is *in use* once a
  trip has walked it (a true edge) or once it was added (a new edge);
- a node may have at most ``max_degree`` (4) out-edges in use; the cap can block even a
  true edge (``get_used_degree``), and a direction already in use at a node can get no
  new edge (``check_node_using_direction``); a new edge may go out in a direction whose
  true edge is still unused, and that true edge can then never be used;
- a trip is walked on the edges in use plus the unused true edges the cap allows; if it
  reaches its destination it is explained. Otherwise the walk is cut back to its longest
  prefix that ends at a node with room for a new edge in the next direction, and from
  there a new edge with the missing turn goes to the nearby node (within ``max_distance``,
  *the current node included*; nodes in index order, the first strictly best kept) from
  which the remaining turns walk furthest (all the way to the destination beats any
  prefix); this repeats until the trip is explained;
- when only the last turn is missing, the new edge goes straight to the destination if the
  destination is near enough;
- a trip that cannot be repaired (source at the cap or already using the turn, no nearby
  node explains a further turn, destination too far for the last turn) is *failed*, but
  the edges it already used or added stay;
- rows without ``end`` (or otherwise not a trip) and trips with no turns are dropped as
  ill-formed (``utils.sample2sequence``).

Differences from the reference, by necessity: trips are taken in input order (the
reference shuffles them first); nearby nodes are within ``max_distance`` in map units
(Euclidean, default twice the median edge length) on maps with coordinates or undirected
hops on the true map (default 2) without them, where the reference uses 0.5 miles of
haversine distance on Manhattan latitude/longitude; the bound used is in the result.

``protocol="lenient"`` is the earlier rule of this package, kept unchanged: trips in the taxi format (``origin dest d_1 ..
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

Reported (both protocols): edges recovered (true edges used), missed (true edges never
used) and invented (new edges), with precision = recovered / (recovered + invented),
recall = recovered / true edges; trips explained (as they are or after a repair) out of
the well-formed ones, and the counts of trips followed as they are, repaired, failed and
ill-formed (``trips_used``: explained out of all rows).

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
DEFAULT_MAX_DEGREE = 4  # vafa2024: out-edges in use per node (reconstruct_graph(max_degree=4))
PROTOCOLS = ("vafa2024", "lenient")


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
    protocol: str = "lenient"
    max_degree: int | None = None  # vafa2024 only
    n_repaired: int = 0  # explained trips that needed new edges
    n_failed: int = 0  # well-formed trips left unexplained
    n_no_turns: int = 0  # vafa2024: trips without turns, dropped as ill-formed

    @property
    def n_ill_formed(self) -> int:
        """Rows dropped: not trips (``n_malformed``) plus, under vafa2024, trips with no turns."""
        return self.n_malformed + self.n_no_turns

    @property
    def n_followed(self) -> int:
        """Trips explained without any new edge."""
        return self.n_explained - self.n_repaired

    @property
    def explained(self) -> Rate:
        return Rate(self.n_explained, self.n_trips - self.n_ill_formed)

    @property
    def trips_used(self) -> Rate:
        """Trips the reconstructed map explains, out of all rows read."""
        return Rate(self.n_explained, self.n_trips)

    def protocol_dict(self) -> dict[str, Any]:
        """The protocol block of a record: name and its defining parameters."""
        out: dict[str, Any] = {"name": self.protocol}
        if self.protocol == "vafa2024":
            out["max_degree"] = int(self.max_degree or DEFAULT_MAX_DEGREE)
        out.update(max_distance=float(self.max_distance), distance=self.distance)
        if self.protocol == "vafa2024":
            out["reference_max_distance"] = "0.5 miles (haversine on Manhattan latitude/longitude)"
            out["trip_order"] = "input order (the reference shuffles)"
        return out

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
            "protocol": self.protocol, "max_degree": self.max_degree, "n_ill_formed": self.n_ill_formed,
            "n_followed": self.n_followed, "n_repaired": self.n_repaired, "n_failed": self.n_failed,
            "trips_used": self.trips_used.to_dict(),
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
    """Nodes within the distance bound of a node (cached per node), the node itself
    excluded unless ``include_self``."""

    def __init__(self, street_map: StreetMap, bound: float, kind: str, include_self: bool = False):
        self.map, self.bound, self.kind, self.include_self = street_map, bound, kind, include_self
        self._cache: dict[int, tuple[np.ndarray, np.ndarray]] = {}

    def __call__(self, node: int) -> tuple[np.ndarray, np.ndarray]:
        if node not in self._cache:
            if self.kind == "euclidean":
                d = np.linalg.norm(self.map.coords - self.map.coords[node], axis=1)
            else:
                d = self.map.hops([node], limit=self.bound + 0.5)[0]
            d[node] = 0.0 if self.include_self else np.inf
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


def _true_valid(succ: np.ndarray, tr: Trips) -> tuple[np.ndarray, list]:
    """Trips the true map explains (vectorised): (mask ``[n]``, per turn position
    ``(node, direction, legal step)`` arrays)."""
    cur = tr.origin.copy()
    legal = np.ones(tr.origin.size, dtype=bool)
    visits = []
    for k in range(tr.turns.shape[1]):
        d = tr.turns[:, k]
        act = d >= 0
        nxt = succ[cur, np.clip(d, 0, 7)]
        step = act & (nxt >= 0)
        legal &= ~act | step
        visits.append((cur.copy(), d.copy(), step & legal))
        cur = np.where(step, nxt, cur)
    return legal & (cur == tr.dest), visits


def reconstruct_map(street_map: StreetMap, trips: Any, max_distance: float | None = None,
                    protocol: str = "vafa2024", max_degree: int = DEFAULT_MAX_DEGREE) -> ReconstructionResult:
    """Rebuild a street graph from ``trips`` (see the module docstring and ``parse_trips``).

    ``protocol``: ``"vafa2024"`` (Vafa et al.'s rules, default) or ``"lenient"`` (this
    package's earlier rule). ``max_distance``: how far a new edge may reach (Euclidean with
    coordinates, undirected hops without); default ``default_max_distance``.
    ``max_degree``: vafa2024's cap on out-edges in use per node (ignored by lenient)."""
    if protocol not in PROTOCOLS:
        raise AnalysisError(f"unknown map reconstruction protocol {protocol!r} (one of {', '.join(PROTOCOLS)})")
    tr = parse_trips(street_map, trips)
    bound, kind = default_max_distance(street_map)
    if max_distance is not None:
        if not max_distance > 0:
            raise AnalysisError(f"max_distance must be positive, got {max_distance}")
        bound = float(max_distance)
    if protocol == "lenient":
        return _reconstruct_lenient(street_map, tr, bound, kind)
    if isinstance(max_degree, bool) or int(max_degree) != max_degree or max_degree < 1:
        raise AnalysisError(f"max_degree must be a positive integer, got {max_degree}")
    return _reconstruct_vafa(street_map, tr, bound, kind, int(max_degree))


def _listing(mask: np.ndarray, G: np.ndarray) -> list[tuple[int, str, int]]:
    s, d = np.nonzero(mask)
    return [(int(a), DIRECTIONS[int(b)], int(G[a, b])) for a, b in zip(s, d)]


def _reconstruct_lenient(street_map: StreetMap, tr: Trips, bound: float, kind: str) -> ReconstructionResult:
    G = np.array(street_map.succ, dtype=np.int64)  # grows with invented edges
    used = np.zeros(G.shape, dtype=bool)
    invented = np.zeros(G.shape, dtype=bool)
    # 1) trips the true map explains, all at once
    true_valid, visits = _true_valid(G, tr)
    for node, d, step in visits:
        sel = step & true_valid
        used[node[sel], d[sel]] = True
    explained = true_valid.copy()
    repaired = np.zeros_like(explained)
    # 2) the rest, one trip at a time, in input order
    nearby = _Nearby(street_map, bound, kind)
    for i in np.flatnonzero(~true_valid):
        turns = tr.turns[i, :tr.lengths[i]]
        node, dest = int(tr.origin[i]), int(tr.dest[i])
        ok = True
        added = False
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
                added = True
            else:
                used[node, d] = True
            node = int(nxt)
        explained[i] = ok and node == dest
        repaired[i] = explained[i] and added
    true_edge = np.asarray(street_map.succ) >= 0
    used &= true_edge
    n_explained = int(explained.sum())
    return ReconstructionResult(street_map=street_map, recovered=_listing(used, G),
                                missed=_listing(true_edge & ~used, G), invented=_listing(invented, G),
                                n_trips=tr.n_input, n_malformed=len(tr.malformed), n_explained=n_explained,
                                n_true_valid=int(true_valid.sum()), max_distance=bound, distance=kind,
                                protocol="lenient", n_repaired=int(repaired.sum()),
                                n_failed=int(tr.origin.size - n_explained))


FOLLOWED, REPAIRED, FAILED = 0, 1, 2


class _VafaGraph:
    """The reconstruction state of Vafa et al.'s ``reconstruct_graph``, for maps with at
    most one true edge per (node, direction): ``used[u][d]`` (the true edge is in use),
    ``new[u][d]`` (target of the new edge, -1 = none), ``deg[u]`` (out-edges in use).

    Per (node, direction) at most one edge can be walked: the new one, else the true one
    (in use, or unused and allowed by the cap), so the reference's breadth-first search is
    a single walk here."""

    def __init__(self, street_map: StreetMap, max_degree: int, nearby: _Nearby):
        n = street_map.n_nodes
        self.true = np.asarray(street_map.succ, dtype=np.int64).tolist()
        self.used = [[False] * 8 for _ in range(n)]
        self.new = [[-1] * 8 for _ in range(n)]
        self.deg = [0] * n
        self.max_degree = max_degree
        self.nearby = nearby
        self._near: dict[int, list[int]] = {}

    def near(self, node: int) -> list[int]:
        if node not in self._near:
            self._near[node] = [int(v) for v in self.nearby(node)[0]]
        return self._near[node]

    def using(self, u: int, d: int) -> bool:
        """``check_node_using_direction``: an edge in use leaves ``u`` in direction ``d``."""
        return self.used[u][d] or self.new[u][d] >= 0

    def walk(self, src: int, dest: int, dirs: list[int], init: tuple[int, int] | None = None) -> list[tuple]:
        """``bfs_to_failure``: the full walk of ``dirs`` from ``src`` if it ends at ``dest``,
        else its longest prefix (at least one edge) ending at a node with room for a new
        edge in the next direction (or []). ``init`` = (node, direction) of the new edge
        about to be added: reserved in the degree count, its unused true edge not walked.
        Edges as ``(u, d, v, is_new)``."""
        pending: dict[int, set[int]] = {}
        if init is not None:
            pending[init[0]] = {init[1]}
        path: list[tuple] = []
        longest = 0
        cur, n = src, len(dirs)
        for j in range(n):
            d = dirs[j]
            v = self.new[cur][d]
            is_new = v >= 0
            if not is_new:
                v = self.true[cur][d]
                if v < 0:
                    break
                if not self.used[cur][d]:
                    if init is not None and cur == init[0] and d == init[1]:
                        break
                    p = pending.setdefault(cur, set())
                    if d not in p:
                        if len(p) + self.deg[cur] >= self.max_degree:
                            break  # the cap blocks this true edge
                        p.add(d)
            path.append((cur, d, v, is_new))
            cur = v
            if j + 1 == n:
                if v == dest:
                    return path
                break
            nd = dirs[j + 1]
            p = pending.get(v, ())
            if len(p) + self.deg[v] < self.max_degree and not self.using(v, nd) and nd not in p:
                longest = j + 1
        return path[:longest]

    def commit(self, path: list[tuple]) -> None:
        for u, d, _, is_new in path:
            if not is_new and not self.used[u][d]:
                self.used[u][d] = True
                self.deg[u] += 1

    def add(self, u: int, d: int, v: int) -> None:
        assert not self.using(u, d) and self.deg[u] < self.max_degree
        self.new[u][d] = v
        self.deg[u] += 1

    def trip(self, src: int, dest: int, dirs: list[int]) -> int:
        """``reconstruct_sequence``: FOLLOWED, REPAIRED or FAILED (edges used or added
        before a failure stay)."""
        path = self.walk(src, dest, dirs)
        self.commit(path)
        k, n = len(path), len(dirs)
        cur = path[-1][2] if path else src
        added = False
        while k < n:
            d = dirs[k]
            if k == 0 and (self.deg[src] >= self.max_degree or self.using(src, d)):
                return FAILED  # no room at the source
            if k == n - 1:  # only the last turn is missing: straight to the destination
                if dest not in self.near(cur):
                    return FAILED
                self.add(cur, d, dest)
                return REPAIRED
            rest = dirs[k + 1:]
            best: list[tuple] = []
            best_node = -1
            for node in self.near(cur):
                sub = self.walk(node, dest, rest, init=(cur, d))
                if len(sub) > len(best):
                    best, best_node = sub, node
            if not best:
                return FAILED
            self.add(cur, d, best_node)
            self.commit(best)
            added = True
            k += 1 + len(best)
            cur = best[-1][2]
        return REPAIRED if added else FOLLOWED


def _reconstruct_vafa(street_map: StreetMap, tr: Trips, bound: float, kind: str,
                      max_degree: int) -> ReconstructionResult:
    has_turns = tr.lengths > 0
    true_valid, _ = _true_valid(np.asarray(street_map.succ, dtype=np.int64), tr)
    g = _VafaGraph(street_map, max_degree, _Nearby(street_map, bound, kind, include_self=True))
    outcome = np.full(tr.origin.size, -1)
    for i in np.flatnonzero(has_turns):
        dirs = [int(x) for x in tr.turns[i, :tr.lengths[i]]]
        outcome[i] = g.trip(int(tr.origin[i]), int(tr.dest[i]), dirs)
    true = np.asarray(street_map.succ, dtype=np.int64)
    used = np.array(g.used, dtype=bool).reshape(true.shape)
    new = np.array(g.new, dtype=np.int64).reshape(true.shape)
    assert ((used.sum(axis=1) + (new >= 0).sum(axis=1)) <= max_degree).all()
    n_rep, n_fail = int((outcome == REPAIRED).sum()), int((outcome == FAILED).sum())
    # a new edge that lands where the unused true edge of that direction goes is that street
    # found again, not an invented one (the reference can add it when the true edge was
    # blocked by the degree cap earlier): it counts as recovered
    same = (new >= 0) & (new == true)
    found = used | same
    return ReconstructionResult(street_map=street_map, recovered=_listing(found, true),
                                missed=_listing((true >= 0) & ~found, true), invented=_listing((new >= 0) & ~same, new),
                                n_trips=tr.n_input, n_malformed=len(tr.malformed),
                                n_explained=int((outcome == FOLLOWED).sum()) + n_rep,
                                n_true_valid=int((true_valid & has_turns).sum()), max_distance=bound, distance=kind,
                                protocol="vafa2024", max_degree=max_degree, n_repaired=n_rep, n_failed=n_fail,
                                n_no_turns=int((~has_turns).sum()))


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


__all__ = ["Trips", "parse_trips", "ReconstructionResult", "reconstruct_map", "default_max_distance", "PROTOCOLS",
           "DEFAULT_MAX_DEGREE", "hop_distances",
           "layout_coords", "Embedding", "RepresentationMapResult", "node_means", "embed_node_states"]
