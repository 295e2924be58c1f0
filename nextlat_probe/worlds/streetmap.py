"""Directed street maps for the taxi world: nodes are intersections, every edge carries one
of eight compass directions, and a node has at most one edge per direction.

Two sources of maps:

- ``StreetMap.from_json(path)`` reads an edge-list JSON file (plain or gzip-compressed):
  ``{"directions": [...], "edges": [[src, dir, dst], ...]}`` with integer node ids, optional
  ``nodes`` and ``coords``. The name ``"manhattan"`` reads the map shipped with the package
  (``BUNDLED_MAPS``): the real Manhattan street graph of the taxi-world study (Vafa et al.
  2024), OpenStreetMap data under the ODbL, (c) OpenStreetMap contributors; see
  ``nextlat_probe/maps/README.md`` for its provenance.
- ``synthetic_manhattan(...)`` draws a small Manhattan-like grid (one-way streets, a
  diagonal "Broadway", a park, removed intersections), strongly connected and seeded, so
  the default world trains on a laptop CPU.

Node *indices* ``0..N-1`` are what every array uses; ``node_ids`` keeps the original ids
(the map file's integers), whose decimal strings are the taxi world's node tokens.
The dense successor table ``succ[node, direction]`` (-1 = no edge) makes walks, legality
checks and exact predictive distributions plain numpy gathers.

Undirected geometry is computed here once for every user (map reconstruction, drawings):
``undirected()`` (symmetric adjacency), ``undirected_edges()``, ``hops()`` (undirected hop
distances) and ``layout()`` (the coordinates, or a hop-distance MDS with a fixed
orientation), cached on the map.
"""
from __future__ import annotations

import gzip
import json
import math
import re
import zlib
from importlib import resources
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import scipy.sparse as sp
from scipy.sparse import csgraph

from .. import limits
from .base import WorldError

DIRECTIONS: tuple[str, ...] = ("N", "S", "E", "W", "NE", "NW", "SE", "SW")
DIR_INDEX: dict[str, int] = {d: i for i, d in enumerate(DIRECTIONS)}
#: index of the opposite direction (N<->S, E<->W, NE<->SW, NW<->SE)
OPPOSITE = np.array([1, 0, 3, 2, 7, 6, 5, 4], dtype=np.int64)
#: compass angle (degrees, counter-clockwise from east) at the centre of each direction
DIR_ANGLE = np.array([90.0, 270.0, 0.0, 180.0, 45.0, 135.0, 315.0, 225.0])
#: Maps shipped with the package, by the name ``--map`` (and ``StreetMap.from_json``) accepts
#: in place of a file; a file of that name in the working folder still wins.
BUNDLED_MAPS: dict[str, str] = {"manhattan": "manhattan_streets.json.gz"}
#: What a map derived from a bundled one (a crop) must carry: its licence and attribution
#: (``nextlat_probe/maps/README.md``). ``StreetMap.metadata`` of a bundled map holds it.
BUNDLED_PROVENANCE: dict[str, dict[str, str]] = {"manhattan": {
    "licence": "Open Database Licence (ODbL) 1.0, https://opendatacommons.org/licenses/odbl/1-0/",
    "attribution": "Map data (c) OpenStreetMap contributors",
}}
#: keys of a map file that describe where it comes from; read into ``StreetMap.metadata``
#: and written back by ``to_dict(metadata=True)``, never part of a world's spec
METADATA_KEYS = ("source", "licence", "attribution", "derived_from")
#: ``StreetMap.layout`` defaults: classical MDS up to this many nodes per component ...
LAYOUT_MAX_EXACT = 1000
#: ... landmark MDS with this many landmarks above
LAYOUT_LANDMARKS = 128


def compass_direction(dx: np.ndarray, dy: np.ndarray) -> np.ndarray:
    """Index into ``DIRECTIONS`` of the 45-degree compass sector of displacement(s) (dx, dy)."""
    angle = np.degrees(np.arctan2(np.asarray(dy, float), np.asarray(dx, float)))
    sector = np.round(angle / 45.0).astype(np.int64) % 8  # 0 = E, 1 = NE, 2 = N, ...
    by_sector = np.array([DIR_INDEX[d] for d in ("E", "NE", "N", "NW", "W", "SW", "S", "SE")])
    return by_sector[sector]


class StreetMap:
    """A directed street graph with compass-labelled edges.

    n_nodes: number of intersections (indices ``0..n_nodes-1``).
    edges: iterable of ``(src, direction, dst)`` with node *indices* and a direction name
        (or its index into ``DIRECTIONS``); at most one edge per ``(src, direction)``.
    coords: optional float ``[n_nodes, 2]`` (x east, y north).
    node_ids: original integer ids (default ``0..n_nodes-1``); tokens are their strings.
    """

    def __init__(self, n_nodes: int, edges: Iterable[Any], coords: Any = None,
                 node_ids: Iterable[int] | None = None, name: str = "streets") -> None:
        self.name = str(name)
        n = int(n_nodes)
        if n <= 0:
            raise WorldError(f"map {self.name!r}: needs at least one node, got {n_nodes}")
        rows = list(edges)
        src = np.empty(len(rows), dtype=np.int64)
        dirs = np.empty(len(rows), dtype=np.int64)
        dst = np.empty(len(rows), dtype=np.int64)
        for k, e in enumerate(rows):
            try:
                s, d, t = e
            except (TypeError, ValueError):
                raise WorldError(f"map {self.name!r}: edge {k} = {e!r} is not (src, direction, dst)") from None
            d = DIR_INDEX.get(d, d) if isinstance(d, str) else d
            if not isinstance(d, (int, np.integer)) or not 0 <= int(d) < 8:
                raise WorldError(f"map {self.name!r}: edge {k} = {e!r} has unknown direction {e[1]!r}")
            if not all(isinstance(v, (int, np.integer)) and 0 <= int(v) < n for v in (s, t)):
                raise WorldError(f"map {self.name!r}: edge {k} = {e!r} names a node outside 0..{n - 1}")
            src[k], dirs[k], dst[k] = int(s), int(d), int(t)
        succ = np.full((n, 8), -1, dtype=np.int64)
        slot = src * 8 + dirs
        uniq, first, counts = np.unique(slot, return_index=True, return_counts=True)
        if (counts > 1).any():
            k = int(np.flatnonzero(slot == uniq[np.argmax(counts > 1)])[1])
            raise WorldError(f"map {self.name!r}: edge {k} = {rows[k]!r} is a second edge from node "
                             f"{src[k]} in direction {DIRECTIONS[dirs[k]]}")
        succ.reshape(-1)[slot] = dst
        order = np.argsort(slot, kind="stable")
        self.edge_src, self.edge_dir, self.edge_dst = src[order], dirs[order], dst[order]
        self.succ = succ
        self.succ.setflags(write=False)
        ids = list(range(n)) if node_ids is None else [int(v) for v in node_ids]
        if len(ids) != n or len(set(ids)) != n:
            raise WorldError(f"map {self.name!r}: node_ids must be {n} distinct integers")
        self.node_ids = ids
        self.id_to_index = {v: i for i, v in enumerate(ids)}
        if coords is not None:
            c = np.asarray(coords, dtype=np.float64)
            if c.shape != (n, 2) or not np.isfinite(c).all():
                bad = "some are NaN or infinite" if c.shape == (n, 2) else f"got shape {c.shape}"
                raise WorldError(f"map {self.name!r}: coords must be [{n}, 2] finite numbers ({bad})")
            coords = c
        self.coords: np.ndarray | None = coords
        #: provenance of the map file (``METADATA_KEYS``: source, licence, attribution,
        #: derived_from); carried into crops, left out of world specs and run identities
        self.metadata: dict[str, Any] = {}

    # --- basic properties ---------------------------------------------------------------
    @property
    def n_nodes(self) -> int:
        return int(self.succ.shape[0])

    @property
    def n_edges(self) -> int:
        return int(self.edge_src.size)

    @property
    def out_degree(self) -> np.ndarray:
        """int64 ``[N]``: number of outgoing edges of each node."""
        return (self.succ >= 0).sum(axis=1)

    @property
    def node_names(self) -> list[str]:
        """Node token names: the original ids as decimal strings."""
        return [str(v) for v in self.node_ids]

    def edges(self) -> list[tuple[int, str, int]]:
        """``[(src index, direction name, dst index), ...]`` sorted by (src, direction)."""
        return [(int(s), DIRECTIONS[int(d)], int(t))
                for s, d, t in zip(self.edge_src, self.edge_dir, self.edge_dst)]

    # --- graph algorithms (scipy.sparse.csgraph) ----------------------------------------
    def adjacency(self) -> sp.csr_matrix:
        """``[N, N]`` sparse matrix counting the edges ``i -> j`` (a pair can be linked in
        two directions, e.g. a self-loop labelled twice)."""
        n = self.n_nodes
        return sp.csr_matrix((np.ones(self.n_edges), (self.edge_src, self.edge_dst)), shape=(n, n))

    def transition_matrix(self, succ: np.ndarray | None = None) -> sp.csr_matrix:
        """Row-stochastic ``[N, N]`` matrix of the uniform random walk over the edges of
        ``succ`` (default: this map's); rows of nodes without edges are zero."""
        succ = self.succ if succ is None else succ
        n = succ.shape[0]
        s, d = np.nonzero(succ >= 0)
        deg = (succ >= 0).sum(axis=1)
        return sp.csr_matrix((1.0 / deg[s], (s, succ[s, d])), shape=(n, n))

    def strong_components(self) -> tuple[int, np.ndarray]:
        """(number of strongly connected components, label of each node)."""
        n_comp, labels = csgraph.connected_components(self.adjacency(), directed=True,
                                                      connection="strong")
        return int(n_comp), labels

    def is_strongly_connected(self) -> bool:
        return self.strong_components()[0] == 1

    def largest_scc(self) -> np.ndarray:
        """Sorted int64 indices of the nodes of the largest strongly connected component
        (ties broken towards the component holding the smallest node index)."""
        _, labels = self.strong_components()
        sizes = np.bincount(labels)
        return np.flatnonzero(labels == int(np.argmax(sizes))).astype(np.int64)

    def shortest_path_lengths(self, sources: Iterable[int] | None = None) -> np.ndarray:
        """float ``[k, N]``: number of turns from each source to every node (inf = unreachable);
        all pairs when ``sources`` is None."""
        idx = None if sources is None else np.asarray(list(sources), dtype=np.int64)
        return csgraph.shortest_path(self.adjacency(), directed=True, unweighted=True, indices=idx)

    def distances_to(self, targets: Iterable[int]) -> np.ndarray:
        """float ``[k, N]``: number of turns from every node to each target (inf = unreachable),
        by breadth-first search from the targets on the reversed graph."""
        idx = np.asarray(list(targets), dtype=np.int64)
        return csgraph.shortest_path(self.adjacency().T.tocsr(), directed=True, unweighted=True,
                                     indices=idx)

    # --- undirected geometry (what layouts, nearness and drawings use; cached) ----------
    def _cached(self, key: Any, build: Any) -> Any:
        cache = self.__dict__.setdefault("_geometry_cache", {})
        if key not in cache:
            cache[key] = build()
        return cache[key]

    def _undirected_csr(self) -> sp.csr_matrix:
        def build() -> sp.csr_matrix:
            n = self.n_nodes
            keep = self.edge_src != self.edge_dst
            s, t = self.edge_src[keep], self.edge_dst[keep]
            A = sp.csr_matrix((np.ones(2 * s.size), (np.concatenate([s, t]), np.concatenate([t, s]))),
                              shape=(n, n))
            A.sum_duplicates()
            A.data[:] = 1.0  # a two-way street is one link
            A.sort_indices()
            return A

        return self._cached("undirected", build)

    def undirected(self) -> sp.csr_matrix:
        """float64 ``[N, N]`` symmetric 0/1 sparse matrix: 1 where two distinct
        intersections are joined by a street in either direction (no self-loops).
        A fresh copy of a cached matrix."""
        return self._undirected_csr().copy()

    def undirected_edges(self) -> np.ndarray:
        """int64 ``[E, 2]``: each pair of intersections joined by a street (either
        direction) once, as ``(u, v)`` with ``u < v``, sorted; self-loops left out.
        Read-only (cached)."""
        def build() -> np.ndarray:
            U = sp.triu(self._undirected_csr(), k=1).tocoo()
            order = np.lexsort((U.col, U.row))
            e = np.stack([U.row[order], U.col[order]], axis=1).astype(np.int64).reshape(-1, 2)
            e.setflags(write=False)
            return e

        return self._cached("undirected_edges", build)

    def hops(self, sources: Iterable[int] | int | None = None, limit: float | None = None) -> np.ndarray:
        """float ``[k, N]``: undirected hop distances (streets walked either way) from each
        source to every node, ``inf`` = other component (or beyond ``limit`` hops, which
        stops each breadth-first search early); all pairs ``[N, N]`` when ``sources`` is
        None."""
        n = self.n_nodes
        if sources is None:
            idx = None
        else:
            raw = sources if isinstance(sources, (np.ndarray, int, np.integer)) else list(sources)
            idx = np.atleast_1d(np.asarray(raw, dtype=np.int64)).ravel()
            if idx.size == 0:
                return np.zeros((0, n))
            if idx.min() < 0 or idx.max() >= n:
                raise WorldError(f"map {self.name!r}: hop sources must be node indices 0..{n - 1}")
        A = self._undirected_csr()
        if limit is None:
            D = csgraph.shortest_path(A, directed=False, unweighted=True, indices=idx)
        else:
            D = csgraph.dijkstra(A, directed=False, unweighted=True, indices=idx, limit=float(limit))
        return np.atleast_2d(D)

    def layout(self, max_exact: int | None = None, n_landmarks: int | None = None) -> np.ndarray:
        """float64 ``[N, 2]``: the one 2-D layout of the map (drawings, reference geometry).

        With ``coords``: the coordinates themselves. Without: multidimensional scaling of
        the undirected hop distances (units: hops; a street grid comes out as a grid),
        each connected component on its own: classical MDS for components of at most
        ``max_exact`` nodes (default ``LAYOUT_MAX_EXACT``), landmark MDS (de Silva &
        Tenenbaum 2004) with ``n_landmarks`` (default ``LAYOUT_LANDMARKS``) farthest-point
        landmarks above, so no ``N x N`` matrix is built for large maps.

        Orientation convention (so one map looks the same everywhere): each component is
        centred, rotated so its principal axes are x (largest spread) and y, and each axis
        is signed so that it points towards increasing node index (non-negative
        covariance with the index; where that is zero, the coordinate of largest
        magnitude is positive). The largest component sits at the origin, the others
        follow to its right, 2 hops apart, largest first. Deterministic; read-only and
        cached per ``(max_exact, n_landmarks)``."""
        if self.coords is not None:
            c = self.coords.view()
            c.setflags(write=False)
            return c
        m = LAYOUT_MAX_EXACT if max_exact is None else int(max_exact)
        k = LAYOUT_LANDMARKS if n_landmarks is None else int(n_landmarks)
        if m < 1 or k < 1:
            raise WorldError(f"map {self.name!r}: layout needs max_exact >= 1 and n_landmarks >= 1, got {m}, {k}")

        def build() -> np.ndarray:
            A = self._undirected_csr()
            n_comp, labels = csgraph.connected_components(A, directed=False)
            sizes = np.bincount(labels, minlength=n_comp)
            out = np.zeros((self.n_nodes, 2))
            right = None
            for c in np.argsort(-sizes, kind="stable"):
                nodes = np.flatnonzero(labels == c)
                Y = _orient(_mds_2d(A[nodes][:, nodes], m, k))
                if right is not None:
                    Y = Y + np.array([right + 2.0 - Y[:, 0].min(), 0.0])
                right = float(Y[:, 0].max())
                out[nodes] = Y
            out.setflags(write=False)
            return out

        return self._cached(("layout", m, k), build)

    def subgraph(self, nodes: Iterable[int], name: str | None = None) -> StreetMap:
        """The map restricted to ``nodes`` (indices, kept in increasing order) and the edges
        between them; original ids and coordinates are kept."""
        keep = np.unique(np.asarray(list(nodes), dtype=np.int64))
        new = np.full(self.n_nodes, -1, dtype=np.int64)
        new[keep] = np.arange(keep.size)
        ok = (new[self.edge_src] >= 0) & (new[self.edge_dst] >= 0)
        edges = zip(new[self.edge_src[ok]], self.edge_dir[ok], new[self.edge_dst[ok]])
        return StreetMap(keep.size, edges, coords=None if self.coords is None else self.coords[keep],
                         node_ids=[self.node_ids[i] for i in keep], name=name or self.name)

    # --- neighbourhoods (crops) -----------------------------------------------------------
    def central_node(self) -> int:
        """The node index ``crop(center="auto")`` grows from: a well-connected central
        intersection, chosen deterministically.

        Candidates are the nodes of the largest strongly connected component (SCC) with at
        least two streets out and two in inside it (every node of the SCC if none has); the
        one with the smallest mean undirected hop distance to the SCC's nodes is taken (the
        graph's closeness centre), ties to the smallest original node id."""
        scc = self.largest_scc()
        inside = np.zeros(self.n_nodes, dtype=bool)
        inside[scc] = True
        keep = inside[self.edge_src] & inside[self.edge_dst]
        deg_out = np.bincount(self.edge_src[keep], minlength=self.n_nodes)
        deg_in = np.bincount(self.edge_dst[keep], minlength=self.n_nodes)
        cand = scc[(deg_out[scc] >= 2) & (deg_in[scc] >= 2)]
        cand = cand if cand.size else scc
        total = np.empty(cand.size)
        for lo in range(0, cand.size, 512):  # [512, N] blocks: bounded memory on the full map
            total[lo:lo + 512] = self.hops(cand[lo:lo + 512])[:, scc].sum(axis=1)
        best = np.flatnonzero(total == total.min())
        ids = np.asarray(self.node_ids, dtype=np.int64)[cand[best]]
        return int(cand[best][int(np.argmin(ids))])

    def crop(self, center: int, hops: int, name: str | None = None) -> StreetMap:
        """The strongly connected part of the map within ``hops`` undirected hops of node
        index ``center``: the intersections at most ``hops`` streets away (walked either
        way), the streets between them, then the strongly connected component holding
        ``center`` (so every intersection can reach every other one and there are no dead
        ends). Original node ids, directions and coordinates are kept; ``metadata`` records
        what it was cut from (``derived_from``) next to the map's licence and attribution.
        Deterministic. A radius for which ``center`` lies on no cycle is a ``WorldError``
        naming the smallest radius that works."""
        c, r = _check_center(self, center), _check_hops(hops)
        sub = self._crop_nodes(c, r)
        if sub.size < 2:
            need = next((k for k in range(r + 1, self.n_nodes + 1) if self._crop_nodes(c, k).size >= 2), None)
            hint = (f"; the smallest radius with one is --hops {need}" if need is not None
                    else "; it lies on no cycle at any radius")
            raise WorldError(f"map {self.name!r}: no cycle through node {self.node_ids[c]} within {r} hop(s), "
                             f"so nothing strongly connected to crop{hint}")
        out = self.subgraph(sub, name=name or f"{self.name}-crop{self.node_ids[c]}-r{r}")
        out.metadata = {**{k: v for k, v in self.metadata.items() if k != "derived_from"},
                        "derived_from": {"map": self.name, **({"source": self.metadata["source"]}
                                                                if "source" in self.metadata else {}),
                                         "center": self.node_ids[c], "hops": r,
                                         "rule": "strongly connected component of the centre within R undirected hops "
                                                 "(nextlat_probe StreetMap.crop)"}}
        out.metadata.pop("source", None)
        return out

    def _crop_nodes(self, center: int, hops: int) -> np.ndarray:
        """Sorted indices of ``crop``'s nodes (empty when ``center`` is on no cycle)."""
        ball = np.flatnonzero(np.isfinite(self.hops(center, limit=hops)[0]))
        sub = self.subgraph(ball)
        _, labels = sub.strong_components()
        mine = labels == labels[int(np.searchsorted(ball, center))]
        return ball[mine] if mine.sum() >= 2 else np.zeros(0, dtype=np.int64)

    def direction_errors(self) -> np.ndarray:
        """Indices of edges whose label is not the compass sector of their displacement
        (empty without coordinates; self-loops are skipped)."""
        if self.coords is None:
            return np.zeros(0, dtype=np.int64)
        delta = self.coords[self.edge_dst] - self.coords[self.edge_src]
        moving = np.abs(delta).sum(axis=1) > 0
        wrong = compass_direction(delta[:, 0], delta[:, 1]) != self.edge_dir
        return np.flatnonzero(moving & wrong)

    # --- serialisation ------------------------------------------------------------------
    def to_dict(self, metadata: bool = False) -> dict[str, Any]:
        """Plain JSON-able dict in the edge-list file format (original node ids); with
        ``metadata`` also the map's provenance (``METADATA_KEYS``), as a map file should
        carry it (a world's spec leaves it out)."""
        ids = self.node_ids
        out: dict[str, Any] = {
            "name": self.name,
            **({k: self.metadata[k] for k in METADATA_KEYS if k in self.metadata} if metadata else {}),
            "directions": list(DIRECTIONS),
            "nodes": list(ids),
            "edges": [[ids[int(s)], DIRECTIONS[int(d)], ids[int(t)]]
                      for s, d, t in zip(self.edge_src, self.edge_dir, self.edge_dst)],
        }
        if self.coords is not None:
            out["coords"] = self.coords.tolist()
        return out

    @classmethod
    def from_dict(cls, data: Any, source: str = "map") -> StreetMap:
        """Build from the edge-list format. ``source`` names the data in error messages.

        Keys: ``directions`` (the labels used, all in ``DIRECTIONS``), ``edges``
        (``[[src_id, direction, dst_id], ...]``, integer ids), optional ``nodes`` (all ids,
        fixing the index order; default: sorted ids seen in edges), optional ``coords``
        (a list aligned with ``nodes`` or a dict ``{"id": [x, y]}``), optional ``name``.
        """
        if not isinstance(data, dict):
            raise WorldError(f"{source}: a street map must be a JSON object, got {type(data).__name__}")
        for key in ("directions", "edges"):
            if key not in data:
                raise WorldError(f"{source}: missing key {key!r} (need 'directions' and 'edges')")
        labels = data["directions"]
        if not isinstance(labels, list) or not all(isinstance(d, str) for d in labels):
            raise WorldError(f"{source}: 'directions' must be a list of strings, got {labels!r}")
        unknown = [d for d in labels if d not in DIR_INDEX]
        if unknown:
            raise WorldError(f"{source}: 'directions' has unknown label {unknown[0]!r} "
                             f"(use {' '.join(DIRECTIONS)})")
        allowed = set(labels)
        raw = data["edges"]
        if not isinstance(raw, list):
            raise WorldError(f"{source}: 'edges' must be a list of [src, direction, dst]")

        def is_id(v: Any) -> bool:
            return isinstance(v, int) and not isinstance(v, bool)

        for k, e in enumerate(raw):
            if not (isinstance(e, list) and len(e) == 3):
                raise WorldError(f"{source}: edges[{k}] = {e!r} is not [src, direction, dst]")
            if not (is_id(e[0]) and is_id(e[2])):
                raise WorldError(f"{source}: edges[{k}] = {e!r}: node ids must be integers")
            if not isinstance(e[1], str) or e[1] not in allowed:
                raise WorldError(f"{source}: edges[{k}] = {e!r}: unknown direction {e[1]!r} "
                                 f"(use {' '.join(labels)})")
        if "nodes" in data:
            ids = data["nodes"]
            if not isinstance(ids, list) or not all(is_id(v) for v in ids):
                raise WorldError(f"{source}: 'nodes' must be a list of integer ids")
            if len(set(ids)) != len(ids):
                raise WorldError(f"{source}: 'nodes' lists an id twice")
        else:
            ids = sorted({e[0] for e in raw} | {e[2] for e in raw})
        if not ids:
            raise WorldError(f"{source}: the map has no nodes")
        index = {v: i for i, v in enumerate(ids)}
        seen: dict[tuple[int, str], int] = {}
        edges = []
        for k, (s, d, t) in enumerate(raw):
            if s not in index or t not in index:
                raise WorldError(f"{source}: edges[{k}] = {raw[k]!r} uses a node not in 'nodes'")
            if (s, d) in seen:
                raise WorldError(f"{source}: edges[{k}] = {raw[k]!r} duplicates edges[{seen[s, d]}] "
                                 f"(two edges from node {s} in direction {d})")
            seen[s, d] = k
            edges.append((index[s], d, index[t]))
        coords = data.get("coords")
        if isinstance(coords, dict):
            try:
                coords = [coords[str(v)] for v in ids]
            except KeyError as exc:
                raise WorldError(f"{source}: 'coords' has no entry for node {exc.args[0]}") from None
        if coords is not None:
            try:
                c = np.asarray(coords, dtype=np.float64)
            except (TypeError, ValueError):
                raise WorldError(f"{source}: 'coords' must be numeric [x, y] pairs") from None
            if c.shape != (len(ids), 2):
                raise WorldError(f"{source}: 'coords' must hold {len(ids)} [x, y] pairs, got shape {c.shape}")
            coords = c
        name = data.get("name", Path(source).stem if source != "map" else "streets")
        out = cls(len(ids), edges, coords=coords, node_ids=ids, name=str(name))
        out.metadata = {k: data[k] for k in METADATA_KEYS if k in data}
        return out

    def to_bytes(self, metadata: bool = False, compress: bool = False) -> bytes:
        """The edge-list file's bytes (gzip-compressed with ``compress``, without a
        timestamp); with ``metadata`` the map's provenance too. The same map gives the same
        bytes."""
        raw = json.dumps(self.to_dict(metadata=metadata)).encode("utf-8")
        return gzip.compress(raw, mtime=0) if compress else raw

    def to_json(self, path: str | Path, metadata: bool = False) -> None:
        """Write the edge-list file (gzip-compressed when ``path`` ends in ``.gz``)."""
        Path(path).write_bytes(self.to_bytes(metadata, compress=str(path).endswith(".gz")))

    @classmethod
    def from_json(cls, path: str | Path) -> StreetMap:
        """Read an edge-list JSON map (``.json`` or gzip-compressed), or a bundled map by name
        (``"manhattan"``, see ``BUNDLED_MAPS``); any problem is a one-line ``WorldError``
        naming the file (and the offending entry)."""
        p = resolve_map_path(path)
        try:
            raw = p.read_bytes()
            if raw[:2] == b"\x1f\x8b":  # gzip magic: compressed JSON
                raw = gzip.decompress(raw)
            text = raw.decode("utf-8")
        except (OSError, UnicodeDecodeError, EOFError, zlib.error) as exc:
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else type(exc).__name__
            raise WorldError(f"{p}: cannot read street map ({reason})") from None
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise WorldError(f"{p}: not valid JSON ({exc.msg} at line {exc.lineno})") from None
        except RecursionError:  # "[[[[..." nested deeper than the parser goes
            raise WorldError(f"{p}: not a street map (JSON nested too deeply)") from None
        bundled = str(path) in BUNDLED_MAPS and p != Path(path)
        shown = str(path) if bundled else str(p)
        try:
            out = cls.from_dict(data, source=shown)
        except WorldError as exc:  # every problem names the file it is in
            msg = str(exc)
            raise WorldError(msg if msg.startswith(shown) else f"{shown}: {msg}") from None
        if bundled:
            out.metadata.update(BUNDLED_PROVENANCE.get(str(path), {}))
        return out

    def __repr__(self) -> str:
        return f"StreetMap({self.name!r}, nodes={self.n_nodes}, edges={self.n_edges})"


def _check_center(street_map: StreetMap, center: Any) -> int:
    if isinstance(center, bool) or not isinstance(center, (int, np.integer)) or not 0 <= int(center) < street_map.n_nodes:
        raise WorldError(f"map {street_map.name!r}: crop centre must be a node index 0..{street_map.n_nodes - 1}, "
                         f"got {center!r}")
    return int(center)


def _check_hops(hops: Any) -> int:
    if isinstance(hops, bool) or not isinstance(hops, (int, np.integer)) or hops < 0:
        raise WorldError(f"crop radius must be a whole number of hops >= 0, got {hops!r}")
    return int(hops)


def resolve_map_path(path: str | Path) -> Path:
    """The file behind a ``--map`` value: the path itself, or the bundled map of that name
    (``BUNDLED_MAPS``) when no such file exists."""
    p = Path(path)
    name = str(path)
    if name in BUNDLED_MAPS and not p.exists():
        return Path(str(resources.files("nextlat_probe") / "maps" / BUNDLED_MAPS[name]))
    return p


def _mds_2d(A: sp.csr_matrix, max_exact: int, n_landmarks: int) -> np.ndarray:
    """``[n, 2]`` MDS of the hop distances of one connected undirected graph ``A``.

    Classical MDS when ``n <= max_exact``; else landmark MDS: classical MDS of ``m``
    farthest-point landmarks (the first is the node farthest from node 0), every node
    placed by triangulation from its distances to them (exact for the landmarks, and for
    every node when the distances are Euclidean). An axis without spread stays 0."""
    from scipy.linalg import eigh

    n = A.shape[0]
    if n == 1:
        return np.zeros((1, 2))
    if n <= max_exact:
        land = np.arange(n)
        D = csgraph.shortest_path(A, directed=False, unweighted=True)
    else:
        k = min(max(int(n_landmarks), 3), n)
        land = np.empty(k, dtype=np.int64)
        D = np.empty((k, n))
        land[0] = int(np.argmax(csgraph.shortest_path(A, directed=False, unweighted=True, indices=0)))
        D[0] = csgraph.shortest_path(A, directed=False, unweighted=True, indices=land[0])
        nearest = D[0].copy()
        for i in range(1, k):
            land[i] = int(np.argmax(nearest))
            D[i] = csgraph.shortest_path(A, directed=False, unweighted=True, indices=land[i])
            nearest = np.minimum(nearest, D[i])
    D2 = D ** 2  # [m, n]
    delta = D2[:, land]  # [m, m]
    mean = delta.mean(axis=1)
    B = -0.5 * (delta - mean[None, :] - mean[:, None] + mean.mean())
    m = land.size
    vals, vecs = eigh((B + B.T) / 2, subset_by_index=[max(m - 2, 0), m - 1])  # the two largest
    lam, v = vals[::-1], vecs[:, ::-1]
    if lam.size < 2:
        lam, v = np.append(lam, 0.0), np.column_stack([v, np.zeros(m)])
    inv = np.where(lam > 1e-9 * max(lam.max(), 1e-300), 1.0 / np.sqrt(np.clip(lam, 1e-300, None)), 0.0)
    return -0.5 * (D2 - mean[:, None]).T @ (v * inv)


def _orient(Y: np.ndarray) -> np.ndarray:
    """``Y`` ``[n, 2]`` centred, on its principal axes, each axis pointing towards
    increasing row index (see ``StreetMap.layout``)."""
    Y = Y - Y.mean(axis=0)
    if Y.shape[0] > 1:
        _, _, vt = np.linalg.svd(Y, full_matrices=False)
        Y = Y @ vt.T
    scale = max(float(np.abs(Y).max()) if Y.size else 0.0, 1e-300)
    idx = np.arange(Y.shape[0]) - (Y.shape[0] - 1) / 2.0
    for a in range(2):
        col = Y[:, a]
        cov = float(idx @ col)
        if abs(cov) <= 1e-9 * scale * max(Y.shape[0], 1) ** 2:
            big = col[np.argmax(np.abs(col))] if col.size else 0.0
            cov = float(big) if abs(big) > 1e-9 * scale else 1.0
        if cov < 0:
            Y[:, a] = -col
    Y[np.abs(Y) < 1e-12 * scale] = 0.0  # no -0.0 or rounding dust on an axis without spread
    return Y


# grid offsets (avenue step, street step) of each direction in the synthetic generator;
# avenues are two units apart and streets one, so diagonals move 1 avenue and 2 streets
_GRID_STEP = {"N": (0, 1), "S": (0, -1), "E": (1, 0), "W": (-1, 0),
              "NE": (1, 2), "NW": (-1, 2), "SE": (1, -2), "SW": (-1, -2)}


def parse_map_size(value: Any) -> tuple[int, int]:
    """A synthetic map's size as (avenues, streets): an integer N or the text ``"N"`` gives
    N x N, ``"AxS"`` gives A x S. Anything else (``"3x"``, ``"x3"``, ``6.5``, ``True``) is a
    ``WorldError``: the one reading of ``map_size`` for the world spec, ``train --map-size``
    and ``taxi --map-size``."""
    if isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_)):
        return int(value), int(value)
    m = re.fullmatch(r"\s*(\d+)\s*(?:[xX]\s*(\d+)\s*)?", value) if isinstance(value, str) else None
    if m is None:
        raise WorldError(f"taxi: map_size {value!r} is not N or AxS (e.g. 6 or 8x12)")
    return int(m.group(1)), int(m.group(2) or m.group(1))


#: what one intersection of a map costs at least: its 8 successors (int64) and 2 coordinates
BYTES_PER_INTERSECTION = 8 * 8 + 2 * 8


def synthetic_manhattan(n_avenues: int = 6, n_streets: int = 6, seed: int = 0, *,
                        rotation_deg: float = 10.0, two_way_frac: float = 0.25,
                        n_diagonals: int | None = None, park: bool = True,
                        removed_frac: float = 0.03) -> StreetMap:
    """A seeded Manhattan-like street map, strongly connected.

    Avenues run north-south (``n_avenues`` of them, two length units apart) and streets
    east-west (``n_streets``, one unit apart), on a grid rotated ``rotation_deg`` degrees
    counter-clockwise. Streets are one-way in alternating directions except every fifth
    (a two-way crosstown street); avenues alternate too, each two-way with probability
    ``two_way_frac``. ``n_diagonals`` "Broadway"-like lines (default one per 8 avenues or
    streets, at least one) cut across at 45 degrees (one avenue per two streets), one-way or
    two-way at random. A "park" (a block of interior intersections) and a fraction
    ``removed_frac`` of other interior intersections are removed.

    Strong connectivity is then guaranteed by keeping the largest weakly connected part and
    adding the reverse of every edge that joins two different strongly connected components
    (which makes the condensation strongly connected). The reverse of a grid edge always
    lands back on its source, so at most one edge per (node, direction) still holds.
    Direction labels match the coordinates as long as ``|rotation_deg| < 22.5``.
    """
    A, S = int(n_avenues), int(n_streets)
    if A < 2 or S < 2:
        raise WorldError(f"synthetic_manhattan: need at least 2 avenues and 2 streets, got {A}x{S}")
    problem = limits.memory_problem(BYTES_PER_INTERSECTION * A * S, f"a synthetic map of {A}x{S} = {A * S:,} intersections")
    if problem:
        raise WorldError(f"synthetic_manhattan: {problem}")
    if not abs(rotation_deg) < 22.5:
        raise WorldError(f"synthetic_manhattan: |rotation_deg| must be < 22.5 so labels match "
                         f"the compass, got {rotation_deg}")
    if not (0.0 <= two_way_frac <= 1.0 and 0.0 <= removed_frac < 0.5):
        raise WorldError("synthetic_manhattan: two_way_frac must lie in [0, 1] and removed_frac in [0, 0.5)")
    rng = np.random.default_rng(seed)
    alive = np.ones((A, S), dtype=bool)
    if park and A >= 5 and S >= 5:
        pw, ph = max(1, A // 5), max(1, S // 4)
        i0, j0 = int(rng.integers(1, A - pw)), int(rng.integers(1, S - ph))
        alive[i0:i0 + pw, j0:j0 + ph] = False
    if removed_frac > 0 and A >= 4 and S >= 4:
        inner = np.argwhere(alive[1:-1, 1:-1]) + 1
        k = min(len(inner), int(round(removed_frac * A * S)))
        for i, j in inner[rng.choice(len(inner), size=k, replace=False)]:
            alive[i, j] = False

    edges: set[tuple[int, int, str]] = set()  # (i, j, direction) in grid coordinates

    def add(i: int, j: int, d: str) -> None:
        di, dj = _GRID_STEP[d]
        if 0 <= i + di < A and 0 <= j + dj < S and alive[i, j] and alive[i + di, j + dj]:
            edges.add((i, j, d))

    street_phase, avenue_phase = int(rng.integers(2)), int(rng.integers(2))
    two_way_avenue = rng.random(A) < two_way_frac
    for j in range(S):
        two_way = j % 5 == 2
        for i in range(A - 1):
            if two_way or (j + street_phase) % 2 == 0:
                add(i, j, "E")
            if two_way or (j + street_phase) % 2 == 1:
                add(i + 1, j, "W")
    for i in range(A):
        for j in range(S - 1):
            if two_way_avenue[i] or (i + avenue_phase) % 2 == 0:
                add(i, j, "N")
            if two_way_avenue[i] or (i + avenue_phase) % 2 == 1:
                add(i, j + 1, "S")
    if n_diagonals is None:
        n_diagonals = max(1, max(A, S) // 8)
    for _ in range(int(n_diagonals)):
        forward, back = ("NE", "SW") if rng.random() < 0.5 else ("NW", "SE")
        mode = int(rng.integers(3))  # 0: forward only, 1: back only, 2: two-way
        i, j = int(rng.integers(A)), 0
        di, dj = _GRID_STEP[forward]
        while 0 <= i + di < A and j + dj < S:
            if mode in (0, 2):
                add(i, j, forward)
            if mode in (1, 2):
                add(i + di, j + dj, back)
            i, j = i + di, j + dj

    # index the intersections in street-major order, then keep the largest weak component
    index = np.full((A, S), -1, dtype=np.int64)
    cells = [(i, j) for j in range(S) for i in range(A) if alive[i, j]]
    for k, (i, j) in enumerate(cells):
        index[i, j] = k
    triples = sorted((int(index[i, j]), DIR_INDEX[d], int(index[i + _GRID_STEP[d][0], j + _GRID_STEP[d][1]]))
                     for i, j, d in edges)
    theta = math.radians(rotation_deg)
    g = np.array(cells, dtype=np.float64) * np.array([2.0, 1.0])
    rot = np.array([[math.cos(theta), -math.sin(theta)], [math.sin(theta), math.cos(theta)]])
    coords = g @ rot.T
    name = f"synthetic-{A}x{S}-seed{seed}"
    m = StreetMap(len(cells), triples, coords=coords, name=name)
    _, weak = csgraph.connected_components(m.adjacency(), directed=True, connection="weak")
    if weak.max() > 0:
        m = m.subgraph(np.flatnonzero(weak == np.argmax(np.bincount(weak))), name=name)
        m = StreetMap(m.n_nodes, m.edges(), coords=m.coords, name=name)  # ids 0..N-1 again
    n_comp, labels = m.strong_components()
    if n_comp > 1:
        cross = labels[m.edge_src] != labels[m.edge_dst]
        extra = {(int(t), int(OPPOSITE[d]), int(s))
                 for s, d, t in zip(m.edge_src[cross], m.edge_dir[cross], m.edge_dst[cross])}
        have = {(int(s), int(d), int(t)) for s, d, t in zip(m.edge_src, m.edge_dir, m.edge_dst)}
        m = StreetMap(m.n_nodes, sorted(have | extra), coords=m.coords, name=name)
    if not m.is_strongly_connected():  # pragma: no cover - guaranteed by the repair above
        raise WorldError(f"synthetic_manhattan: could not make {name} strongly connected")
    return m
