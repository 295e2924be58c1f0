"""The taxi world (Vafa et al. 2024; the NextLat paper's world-modelling benchmark).

A sequence is a trip on a directed street map (``StreetMap``)::

    visible origin:   <origin> <destination> d_1 ... d_L end pad pad ...
    hidden origin:    d_1 ... d_L end pad pad ...

with turns ``d_k`` in ``N S E W NE NW SE SW``. Node tokens are the map's node ids as strings.

Sources (``walk``):

- ``random``: origin uniform, length ``L`` uniform on ``{min_len..max_len}``, each turn
  uniform over the current node's outgoing edges, destination = where the walk ends.
- ``shortest``: origin and destination uniform distinct nodes, the shortest path between
  them; among turns that lie on a shortest path the first in ``DIRECTIONS`` order is taken.
- ``noisy``: the same, but at each node (not the destination) with probability ``noise`` a
  turn is drawn uniformly among the turns after which the destination can still be reached
  within ``max_len`` turns in total; otherwise the shortest-path turn. Paths therefore
  never exceed ``max_len`` turns and the next-turn distribution stays exact.

Held-out origin/destination pairs (``holdout``, ``pairs``; every walk): a fixed fraction
``holdout`` of the ordered pairs (o, d) is set aside by a hash of ``(o, d, holdout_seed)``,
so the split needs no table and is the same on every machine. ``pairs="train"``
(training) keeps only the pairs that are *not* held out, ``pairs="held_out"``
(out-of-distribution evaluation, Vafa et al.'s unseen trips) only those that are; the
origin stays uniform. Shortest and noisy walks draw the destination uniformly among the
origin's pairs on their side. A random walk is conditioned on ending on its side: with
``w(d | o)`` the unsplit walk's ``P(destination | origin)``, ``P(d | o) ∝ w(d | o)`` on the
side (``d = o`` included) and the walk given (o, d) is the unsplit walk given (o, d), which
the sampler draws exactly (forward, by the ``G_t`` below; no rejection). After the
destination token nothing changes, so the beliefs stay exact; only the belief after the
origin token (destination and length) is the split's.

Maps that are not strongly connected (the real Manhattan map has dead ends): every source
lives on the largest strongly connected component (SCC): origins and destinations are drawn
inside it and walks only take edges that stay inside it. The few turns that leave it are
legal streets (``check_sequences`` accepts them) but have probability zero.

Hidden state (``Sample.states[..., :]`` = ``state_fields``): the current node, the
destination and ``to_go``, the number of turns still to go (for ``shortest``/``noisy``:
the shortest-path distance to the destination). After the origin token the state already
holds the true destination and walk length (the sampler knows them; the belief does not).
After ``end`` and on padding the last state repeats (node = destination, to_go = 0).

Exact beliefs, visible origin, are stored *factored*::

    beliefs(tokens)[s, t] = concat[ one-hot node (N), one-hot destination (N),
                                    P(to_go = k | prefix), k = 0..max_len ]

so ``n_states = 2 N + max_len + 1``. Once the destination token is seen, node and
destination are known exactly and the posterior over ``to_go`` completes the state, so the
vector is an exact sufficient statistic. After the origin token alone the destination block
holds ``P(destination | origin)`` and the ``to_go`` block ``P(L = k)`` (their marginals).
``belief_parts`` returns the same information without one-hot blocks (large maps).

Random walks, exact next-token distribution (SPEC section 2). With ``A`` the walk's
transition matrix and ``P(L)`` uniform, define for a destination ``g``
``G_t = sum_{l >= t} P(L = l) A^{l-t} e_g`` (probability of finishing at ``g`` from each
node, having made ``t`` turns), which obeys ``G_t = P(L = t) e_g + A G_{t+1}``. After ``t``
turns at node ``n``: ``P(end) = P(L = t)[n = g] / G_t(n)`` and
``P(d leading to n') = G_{t+1}(n') / (outdeg(n) G_t(n))``; the posterior over steps still to
go is ``P(k) ∝ P(L = t + k) (A^k e_g)(n)``. Both are computed for a block of destinations
at once with ``max_len`` sparse products per call (cheap on the 4,579-node map).
``P(destination | origin) = sum_l P(L = l) (A^l)[origin, :]`` is pushed forward from the
origins through ``A^T`` in the same way.

Hidden origin: an HMM over the intersections of the SCC, built with ``HMM``:
``T[d, n, n'] = (1 - h) / outdeg(n)`` for an edge ``(n, d) -> n'`` and
``T[end] = T[pad] = (h / 2) I`` with a constant ``h = 1/2``. The identity blocks make
``end`` and padding carry no information about the node, and the constant factor cancels
in the filter, so ``HMM.beliefs`` is exactly the posterior over the current intersection
given the turns (initial belief uniform). The HMM's own predictive is not used because the
end-of-walk hazard depends on time: ``P(end) = P(L = t | L >= t)`` and
``P(d) = (1 - P(end)) eta_t T_walk[d] 1``. The dense ``T`` limits this mode to maps whose
SCC has at most ``MAX_HIDDEN_NODES`` intersections.

Zero-probability prefixes (an illegal turn, ``end`` away from the destination, a turn after
``end``, ...) have no posterior: ``beliefs`` and ``next_token_probs`` raise ``WorldError``
naming the sequence and position, like ``HMM``. Use ``check_sequences`` for model output.

The visible-origin trip automaton (tracing, legality, the text format) is
``worlds.trips``; ``check_sequences`` and ``parse_sequences`` are re-exported here.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from scipy.sparse import csgraph

from .. import limits
from .base import Sample, World, WorldError, as_rng, check_tokens
from .streetmap import DIR_INDEX, DIRECTIONS, StreetMap, parse_map_size, synthetic_manhattan
from .trips import as_token_matrix, check_sequences, parse_sequences, trace

WALKS = ("random", "shortest", "noisy")
ORIGINS = ("visible", "hidden")
#: largest SCC (in intersections) for the dense hidden-origin HMM (T is 10 x S x S floats)
MAX_HIDDEN_NODES = 1000
DEFAULT_MIN_LEN = 4
DEFAULT_MAX_LEN = 40
DEFAULT_NOISE = 0.1
_HIDDEN_H = 0.5
_FAR = np.iinfo(np.int32).max // 4  # "unreachable" in integer distance tables
PAIRS = ("train", "held_out")
_M64 = np.uint64(0xFFFFFFFFFFFFFFFF)


def _splitmix64(x: np.ndarray) -> np.ndarray:
    """The splitmix64 finaliser on uint64 arrays (wrapping arithmetic): a fixed, portable
    hash, so a pair's side of the split does not depend on numpy's RNG or the platform."""
    with np.errstate(over="ignore"):
        x = (x + np.uint64(0x9E3779B97F4A7C15)) & _M64
        x = ((x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)) & _M64
        x = ((x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)) & _M64
        return x ^ (x >> np.uint64(31))


def held_out_pairs(origin: np.ndarray, dest: np.ndarray, n_nodes: int, fraction: float,
                   seed: int = 0) -> np.ndarray:
    """bool, broadcast shape of ``origin`` and ``dest``: whether the ordered pair (origin,
    dest) of node indices is held out (hash below ``fraction`` of the uint64 range)."""
    origin, dest = np.asarray(origin), np.asarray(dest)
    if fraction <= 0:
        return np.zeros(np.broadcast(origin, dest).shape, dtype=bool)
    if (origin.size and origin.min() < 0) or (dest.size and dest.min() < 0):
        raise WorldError("taxi: held-out pairs are of node indices >= 0")
    key = origin.astype(np.uint64) * np.uint64(n_nodes) + dest.astype(np.uint64)
    with np.errstate(over="ignore"):
        key = key + np.uint64(int(seed) % 2**64) * np.uint64(0xD1B54A32D192ED03)
    h = _splitmix64(key & _M64)
    return (h >> np.uint64(11)).astype(np.float64) * 2.0 ** -53 < float(fraction)


def _one_hot(idx: np.ndarray, size: int) -> np.ndarray:
    out = np.zeros(idx.shape + (size,))
    ok = (idx >= 0) & (idx < size)
    out[ok, idx[ok]] = 1.0
    return out


class Taxi(World):
    """Trips on a street map with exact beliefs; see the module docstring.

    street_map: the ``StreetMap``.
    walk: ``random`` | ``shortest`` | ``noisy``.
    min_len, max_len: random walks: length range (defaults 4 and 40). Shortest/noisy: no
        ``min_len``; ``max_len`` defaults to the SCC's diameter (``shortest``) or twice it
        (``noisy``) and must be at least the diameter.
    origin: ``visible`` (origin and destination tokens first) or ``hidden`` (turns only;
        random walks only).
    noise: probability of a random turn for ``noisy`` (default 0.1).
    holdout: fraction of ordered origin/destination pairs held out of training (default 0:
        none). ``pairs`` picks the side this world draws from,
        ``train`` or ``held_out``; ``holdout_seed`` picks the split.
    """

    name = "taxi"
    state_fields = ("node", "dest", "to_go")

    def __init__(self, street_map: StreetMap, walk: str = "random", min_len: int | None = None,
                 max_len: int | None = None, origin: str = "visible",
                 noise: float | None = None, holdout: float = 0.0, pairs: str = "train",
                 holdout_seed: int = 0) -> None:
        if not isinstance(street_map, StreetMap):
            raise WorldError(f"taxi: street_map must be a StreetMap, got {type(street_map).__name__}")
        if walk not in WALKS:
            raise WorldError(f"taxi: unknown walk {walk!r}; choose one of {', '.join(WALKS)}")
        if origin not in ORIGINS:
            raise WorldError(f"taxi: unknown origin mode {origin!r}; choose visible or hidden")
        self.map = street_map
        self.walk = walk
        self.origin = origin
        N = street_map.n_nodes
        # the process lives on the largest SCC: origins, destinations and every step
        self.walk_nodes = street_map.largest_scc()
        inside = np.zeros(N, dtype=bool)
        inside[self.walk_nodes] = True
        succ = np.asarray(street_map.succ)
        self.walk_succ = np.where(inside[:, None] & (succ >= 0) & inside[np.clip(succ, 0, None)], succ, -1)
        self.walk_succ.setflags(write=False)
        self.walk_deg = (self.walk_succ >= 0).sum(axis=1)
        if self.walk_deg[self.walk_nodes].min() == 0:
            raise WorldError(f"taxi: map {street_map.name!r} has no strongly connected component "
                             "with an edge; nothing can be driven")
        self._A = street_map.transition_matrix(self.walk_succ)
        self._AT = self._A.T.tocsr()
        self._dist: np.ndarray | None = None

        if walk == "random":
            if noise not in (None, 0, 0.0):
                raise WorldError("taxi: noise applies to walk='noisy' only")
            max_len = DEFAULT_MAX_LEN if max_len is None else int(max_len)
            min_len = min(DEFAULT_MIN_LEN, max_len) if min_len is None else int(min_len)
            if not 1 <= min_len <= max_len:
                raise WorldError(f"taxi: need 1 <= min_len <= max_len, got min_len={min_len}, max_len={max_len}")
            self.noise = 0.0
        else:
            if min_len is not None:
                raise WorldError(f"taxi: min_len applies to random walks only (walk={walk!r})")
            if origin == "hidden":
                raise WorldError("taxi: the hidden-origin world is defined for random walks only")
            diam = int(self.distances[np.ix_(self.walk_nodes, self.walk_nodes)].max())
            if max_len is None:
                max_len = max(1, diam if walk == "shortest" else 2 * diam)
            max_len = int(max_len)
            if max_len < max(diam, 1):
                raise WorldError(f"taxi: max_len={max_len} is shorter than the longest shortest path ({diam})")
            if walk == "noisy":
                noise = DEFAULT_NOISE if noise is None else float(noise)
                if not 0.0 <= noise <= 1.0:
                    raise WorldError(f"taxi: noise must lie in [0, 1], got {noise}")
            elif noise not in (None, 0, 0.0):
                raise WorldError("taxi: noise applies to walk='noisy' only")
            self.noise = float(noise or 0.0)
        self.min_len = min_len
        self.max_len = max_len
        # P(L = l) for l = 0..max_len (+1 trailing zero); shortest sources do not use it
        self.length_probs = np.zeros(max_len + 2)
        if walk == "random":
            self.length_probs[min_len:max_len + 1] = 1.0 / (max_len - min_len + 1)

        nodes = [] if origin == "hidden" else street_map.node_names
        self._init_pairs(holdout, pairs, holdout_seed)
        self._names = nodes + list(DIRECTIONS) + ["end", "pad"]
        self.dir0 = len(nodes)
        self.end_id = self.dir0 + 8
        self.pad_id = self.dir0 + 9
        self._hmm = self._build_hmm() if origin == "hidden" else None

    def _init_pairs(self, holdout: Any, pairs: Any, holdout_seed: Any) -> None:
        try:
            holdout = float(holdout)
            holdout_seed = int(holdout_seed)
        except (TypeError, ValueError):
            raise WorldError(f"taxi: holdout must be a number and holdout_seed an integer, got "
                             f"{holdout!r}, {holdout_seed!r}") from None
        if not 0.0 <= holdout < 1.0:
            raise WorldError(f"taxi: holdout must lie in [0, 1), got {holdout}")
        if pairs not in PAIRS:
            raise WorldError(f"taxi: pairs must be train or held_out, got {pairs!r}")
        if pairs == "held_out" and holdout == 0:
            raise WorldError("taxi: pairs=held_out needs holdout > 0")
        self.holdout, self.pairs, self.holdout_seed = holdout, pairs, holdout_seed
        if holdout > 0:
            # every origin must keep at least one destination on BOTH sides of the split:
            # the training world's and the held-out one it will be scored on
            held = np.zeros(self.walk_nodes.size, dtype=np.int64)
            seen = np.zeros(self.walk_nodes.size, dtype=np.int64)
            N = self.map.n_nodes
            inside = np.zeros(N, dtype=bool)
            inside[self.walk_nodes] = True
            for lo in range(0, self.walk_nodes.size, 256):
                o = self.walk_nodes[lo:lo + 256]
                if self.walk == "random":  # where a walk from o can end (o itself included)
                    other = self._walk_end_probs(o) > 0
                else:
                    other = inside[None, :] & (np.arange(N)[None, :] != o[:, None])
                h = held_out_pairs(o[:, None], np.arange(N)[None, :], N, holdout, holdout_seed) & other
                held[lo:lo + o.size] = h.sum(axis=1)
                seen[lo:lo + o.size] = (other & ~h).sum(axis=1)
            for side, counts in (("held_out", held), ("train", seen)):
                if counts.min() == 0:
                    bad = self.map.node_names[int(self.walk_nodes[int(np.argmin(counts))])]
                    raise WorldError(f"taxi: with holdout={holdout} (seed {holdout_seed}) origin {bad!r} has no "
                                     f"{side} destination; use a larger map, another holdout or holdout_seed")

    def _on_side(self, origins: np.ndarray) -> np.ndarray:
        """bool ``[k, N]``: pairs (origin, d) on this world's side of the pair split (all
        True without a split)."""
        N = self.map.n_nodes
        origins = np.asarray(origins, dtype=np.int64)
        if self.holdout <= 0:
            return np.ones((origins.size, N), dtype=bool)
        held = held_out_pairs(origins[:, None], np.arange(N)[None, :], N, self.holdout, self.holdout_seed)
        return held if self.pairs == "held_out" else ~held

    def _allowed_dest(self, origins: np.ndarray) -> np.ndarray:
        """bool ``[k, N]``: destinations a shortest or noisy walk may draw for each origin
        (inside the SCC, not the origin, on this world's side of the pair split)."""
        N = self.map.n_nodes
        origins = np.asarray(origins, dtype=np.int64)
        inside = np.zeros(N, dtype=bool)
        inside[self.walk_nodes] = True
        return inside[None, :] & (np.arange(N)[None, :] != origins[:, None]) & self._on_side(origins)

    def is_held_out(self, origin: np.ndarray, dest: np.ndarray) -> np.ndarray:
        """bool: whether each (origin, destination) node pair is in this map's held-out set."""
        return held_out_pairs(np.asarray(origin), np.asarray(dest), self.map.n_nodes, self.holdout,
                              self.holdout_seed)

    # --- construction helpers -----------------------------------------------------------
    def variant(self, **changes: Any) -> Taxi:
        """The same map (hence the same vocabulary and token ids) with other trip settings:
        ``walk``, ``min_len``, ``max_len``, ``noise`` (what out-of-distribution evaluation
        changes). Settings not given keep this world's values, except those that do not
        apply to the new walk (``min_len`` for shortest paths, ``noise`` off noisy); a new
        walk keeps ``max_len`` (so trips still fit the models' context) unless it is shorter
        than the map's longest shortest path, where the new walk's default applies.
        ``pairs`` (``train`` / ``held_out``) switches the side of the origin/destination
        split, which stays this world's (``holdout``, ``holdout_seed``). Switching a
        shortest or noisy world to ``walk="random"`` without naming ``pairs`` drops the
        split (random walks over every pair, as before random walks had a split); name
        ``pairs="train"`` to keep the training side."""
        unknown = set(changes) - {"walk", "min_len", "max_len", "noise", "pairs"}
        if unknown:
            raise WorldError(f"taxi: cannot vary {', '.join(sorted(unknown))} (walk, min_len, max_len, noise, pairs)")
        named = "pairs" in changes
        split = {"holdout": self.holdout, "pairs": changes.pop("pairs", self.pairs), "holdout_seed": self.holdout_seed}
        if (not named and split["pairs"] == "train" and split["holdout"] > 0 and self.walk != "random"
                and changes.get("walk") == "random"):
            split["holdout"] = 0.0
        walk = changes.get("walk", self.walk)
        min_len = changes.get("min_len", self.min_len if walk == "random" == self.walk else None)
        noise = changes.get("noise", self.noise if walk == "noisy" == self.walk else None)
        if "max_len" in changes:
            return Taxi(self.map, walk=walk, min_len=min_len, max_len=changes["max_len"], origin=self.origin,
                        noise=noise, **split)
        if walk == "random" and min_len is None:
            min_len = min(DEFAULT_MIN_LEN, self.max_len)
        try:
            return Taxi(self.map, walk=walk, min_len=min_len, max_len=self.max_len, origin=self.origin, noise=noise,
                        **split)
        except WorldError:
            if walk == "random":
                raise
            return Taxi(self.map, walk=walk, min_len=min_len, max_len=None, origin=self.origin, noise=noise, **split)

    @classmethod
    def from_options(cls, map_size: int | str = 6, map: str | Path | None = None, walk: str = "random",
                     min_len: int | None = None, max_len: int | None = None, origin: str = "visible",
                     seed: int = 0, noise: float | None = None, holdout: float = 0.0, pairs: str = "train",
                     holdout_seed: int = 0) -> Taxi:
        """What ``make_world("taxi", ...)`` calls: a synthetic ``map_size`` x ``map_size``
        map (or ``"AxS"``) drawn with ``seed``, or the edge-list JSON file ``map``."""
        if map is not None:
            street_map = StreetMap.from_json(map)
        else:
            a_n, s_n = parse_map_size(map_size)
            street_map = synthetic_manhattan(a_n, s_n, seed=int(seed))
        return cls(street_map, walk=walk, min_len=min_len, max_len=max_len, origin=origin, noise=noise,
                   holdout=holdout, pairs=pairs, holdout_seed=holdout_seed)

    def _build_hmm(self):
        from .hmm import HMM

        S = self.walk_nodes.size
        if S > MAX_HIDDEN_NODES:
            raise WorldError(f"taxi: the hidden-origin world needs a dense {S}x{S} HMM; maps with more "
                             f"than {MAX_HIDDEN_NODES} intersections are supported with origin='visible' only")
        local = np.full(self.map.n_nodes, -1, dtype=np.int64)
        local[self.walk_nodes] = np.arange(S)
        T = np.zeros((10, S, S))
        src, d = np.nonzero(self.walk_succ[self.walk_nodes] >= 0)
        dst = local[self.walk_succ[self.walk_nodes[src], d]]
        np.add.at(T, (d, src, dst), (1.0 - _HIDDEN_H) / self.walk_deg[self.walk_nodes[src]])
        T[8] = T[9] = np.eye(S) * (_HIDDEN_H / 2)
        #: P(turn d | node) of the walk, per belief column
        self._walk_emission = (self.walk_succ[self.walk_nodes] >= 0) / self.walk_deg[self.walk_nodes, None]
        return HMM(T, initial=np.full(S, 1.0 / S), name="taxi-hidden", token_names=self._names)

    @property
    def hmm(self):
        """The ``HMM`` that filters the intersection (hidden-origin mode; else None)."""
        return self._hmm

    @property
    def distances(self) -> np.ndarray:
        """int64 ``[N, N]`` turns from node to node along walkable edges (large = unreachable);
        computed on first use (all-pairs breadth-first search)."""
        if self._dist is None:
            adj = self._A.copy()
            adj.data[:] = 1.0
            N = self.map.n_nodes
            dtype = np.int64 if N < 3000 else np.int32
            problem = limits.memory_problem(N * N * np.dtype(dtype).itemsize,
                                            f"the {N:,}x{N:,} table of shortest-path distances of map {self.map.name!r}")
            if problem:
                raise WorldError(f"taxi: {problem}")
            dist = np.empty((N, N), dtype=dtype)
            for a in range(0, N, 1024):
                block = csgraph.shortest_path(adj, directed=True, unweighted=True,
                                              indices=np.arange(a, min(N, a + 1024)))
                dist[a:a + 1024] = np.where(np.isfinite(block), block, _FAR)
            self._dist = dist
        return self._dist

    # --- World interface ----------------------------------------------------------------
    @property
    def token_names(self) -> list[str]:
        return list(self._names)

    @property
    def n_states(self) -> int:
        if self.origin == "hidden":
            return int(self.walk_nodes.size)
        return 2 * self.map.n_nodes + self.max_len + 1

    @property
    def belief_nodes(self) -> np.ndarray:
        """Node index of each belief column in hidden-origin mode (the SCC's nodes)."""
        return self.walk_nodes

    @property
    def prompt_length(self) -> int:
        """Leading positions whose hidden states analyses drop by default: the origin token
        (visible mode), where the destination, and so the state, is not yet known."""
        return 1 if self.origin == "visible" else 0

    @property
    def default_length(self) -> int:
        """Shortest padded length that holds every trip (``max_len`` + the prompt + end)."""
        return self.max_len + (1 if self.origin == "hidden" else 3)

    def sample(self, n: int, length: int | None = None,
               seed: int | np.random.Generator | None = None) -> Sample:
        """``n`` trips padded to ``length`` tokens (default and minimum: ``default_length``).
        ``extras``: ``origin``, ``dest`` (node indices) and ``lengths`` (turns)."""
        length = self.default_length if length is None else int(length)
        if n < 0:
            raise WorldError(f"taxi: n must be >= 0, got {n}")
        if length < self.default_length:
            raise WorldError(f"taxi: length {length} cannot hold trips of up to {self.max_len} turns; "
                             f"need length >= {self.default_length}")
        rng = as_rng(seed)
        if self.walk == "random":
            path, dirs, L = self._sample_random(n, rng) if self.holdout <= 0 else self._sample_random_split(n, rng)
        else:
            path, dirs, L = self._sample_shortest(n, rng)
        origin, dest = path[:, 0], path[np.arange(n), L]
        prompt = 0 if self.origin == "hidden" else 2
        col = np.arange(length)[None, :]
        k = col - prompt  # index of the turn at each position
        tokens = np.full((n, length), self.pad_id, dtype=np.int64)
        turn = (k >= 0) & (k < L[:, None])
        tokens[turn] = self.dir0 + np.take_along_axis(dirs, np.clip(k, 0, dirs.shape[1] - 1), axis=1)[turn]
        tokens[k == L[:, None]] = self.end_id
        if prompt:
            tokens[:, 0], tokens[:, 1] = origin, dest
        done = np.clip(k + 1, 0, L[:, None])  # turns made after each token
        states = np.empty((n, length, 3), dtype=np.int64)
        states[..., 0] = np.take_along_axis(path, done, axis=1)
        states[..., 1] = dest[:, None]
        states[..., 2] = L[:, None] - done
        if self.walk != "random":
            states[..., 2] = self.distances[states[..., 0], dest[:, None]]
        return Sample(tokens=tokens, states=states, extras={"origin": origin, "dest": dest, "lengths": L})

    def _sample_random(self, n: int, rng: np.random.Generator):
        K = self.max_len
        L = rng.integers(self.min_len, K + 1, size=n)
        cur = self.walk_nodes[rng.integers(self.walk_nodes.size, size=n)]
        # legal directions of each node first, in DIRECTIONS order
        order = np.argsort(self.walk_succ < 0, axis=1, kind="stable")
        path = np.empty((n, K + 1), dtype=np.int64)
        dirs = np.zeros((n, K), dtype=np.int64)
        path[:, 0] = cur
        for k in range(K):
            pick = (rng.random(n) * self.walk_deg[cur]).astype(np.int64)
            d = order[cur, pick]
            active = k < L
            dirs[:, k] = d
            cur = np.where(active, self.walk_succ[cur, d], cur)
            path[:, k + 1] = cur
        return path, dirs, L

    def _sample_random_split(self, n: int, rng: np.random.Generator):
        """Random walks conditioned on their (origin, end) pair lying on this world's side
        of the split, drawn exactly: origin uniform, destination from ``P(d | o)``, then the
        walk given (o, d) forward with the probabilities of ``_probs_random`` (``G_t``)."""
        K, N = self.max_len, self.map.n_nodes
        cur = self.walk_nodes[rng.integers(self.walk_nodes.size, size=n)]
        P = self._origin_marginals(cur)[0]
        c = np.cumsum(P, axis=1)
        dest = np.minimum(np.argmax(c >= rng.random(n)[:, None] * c[:, -1:], axis=1), N - 1)
        dests, col = np.unique(dest, return_inverse=True)
        G = np.zeros((K + 2, N, dests.size))  # G[t][node, j]: P(finish at dests[j] | t turns made, at node)
        for t in range(K, -1, -1):
            G[t] = self._A @ G[t + 1]
            G[t][dests, np.arange(dests.size)] += self.length_probs[t]
        path = np.empty((n, K + 1), dtype=np.int64)
        dirs = np.zeros((n, K), dtype=np.int64)
        L = np.full(n, K, dtype=np.int64)
        path[:, 0] = cur
        walking = np.ones(n, dtype=bool)
        for k in range(K + 1):
            nb = self.walk_succ[cur]
            den = G[k][cur, col]
            p = np.zeros((n, 9))
            p[:, :8] = np.where(nb >= 0, G[k + 1][np.clip(nb, 0, None), col[:, None]], 0.0)
            p[:, :8] /= np.maximum(self.walk_deg[cur], 1)[:, None]
            p[:, 8] = self.length_probs[k] * (cur == dest)
            p /= np.where(den > 0, den, 1.0)[:, None]
            c = np.cumsum(p, axis=1)
            pick = np.argmax(c >= rng.random(n)[:, None] * c[:, -1:], axis=1)
            stop = walking & (pick == 8)
            L[stop] = k
            walking &= ~stop
            if k == K:
                break
            d = np.where(walking, pick, 0)
            dirs[:, k] = d
            cur = np.where(walking, self.walk_succ[cur, np.minimum(d, 7)], cur)
            path[:, k + 1] = cur
        return path, dirs, L

    def _redraw_dest(self, origin: np.ndarray, dest: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """Destinations uniform among each origin's allowed ones: redraw rejected pairs a few
        rounds (cheap when the side is large), then draw the rest from their allowed lists."""
        N, S = self.map.n_nodes, self.walk_nodes.size
        dest = dest.copy()

        def bad(idx):
            held = held_out_pairs(origin[idx], dest[idx], N, self.holdout, self.holdout_seed)
            return idx[held != (self.pairs == "held_out")]

        todo = bad(np.arange(origin.size))
        for _ in range(32):
            if not todo.size:
                return dest
            b = rng.integers(S - 1, size=todo.size)
            a = np.searchsorted(self.walk_nodes, origin[todo])
            dest[todo] = self.walk_nodes[b + (b >= a)]
            todo = bad(todo)
        for i in todo:  # uniform among the allowed, exactly
            options = np.flatnonzero(self._allowed_dest(origin[i:i + 1])[0])
            dest[i] = options[rng.integers(options.size)]
        return dest

    def _shortest_dir(self, node: np.ndarray, dest: np.ndarray) -> np.ndarray:
        """First direction (``DIRECTIONS`` order) on a shortest path from node to dest; -1 if none."""
        nb = self.walk_succ[node]
        dist = self.distances
        on_path = (nb >= 0) & (dist[np.clip(nb, 0, None), dest[:, None]] == dist[node, dest][:, None] - 1)
        return np.where(on_path.any(axis=1), np.argmax(on_path, axis=1), -1)

    def _feasible_dirs(self, node: np.ndarray, dest: np.ndarray, t: np.ndarray) -> np.ndarray:
        """bool ``[k, 8]``: turns after which dest is still reachable within max_len turns."""
        nb = self.walk_succ[node]
        left = self.distances[np.clip(nb, 0, None), dest[:, None]]
        return (nb >= 0) & (t[:, None] + 1 + left <= self.max_len)

    def _sample_shortest(self, n: int, rng: np.random.Generator):
        S, K = self.walk_nodes.size, self.max_len
        if S < 2:
            raise WorldError("taxi: shortest-path trips need at least two connected intersections")
        a = rng.integers(S, size=n)
        b = rng.integers(S - 1, size=n)
        b = b + (b >= a)
        cur, dest = self.walk_nodes[a], self.walk_nodes[b]
        if self.holdout > 0:
            dest = self._redraw_dest(cur, dest, rng)
        path = np.empty((n, K + 1), dtype=np.int64)
        dirs = np.zeros((n, K), dtype=np.int64)
        L = np.zeros(n, dtype=np.int64)
        path[:, 0] = cur
        for k in range(K):
            active = cur != dest
            d = self._shortest_dir(cur, dest)
            if self.noise > 0:
                feas = self._feasible_dirs(cur, dest, np.full(n, k))
                u = rng.random(n) * feas.sum(axis=1)
                rand_d = np.argmax(np.cumsum(feas, axis=1) > u[:, None], axis=1)
                d = np.where(rng.random(n) < self.noise, rand_d, d)
            d = np.where(active, d, 0)
            dirs[:, k] = d
            cur = np.where(active, self.walk_succ[cur, d], cur)
            L += active
            path[:, k + 1] = cur
        return path, dirs, L

    # --- exact predictive distribution ----------------------------------------------------
    def next_token_probs(self, tokens: np.ndarray) -> np.ndarray:
        """float64 ``[n, length, V]``; see the module docstring for the formulas."""
        return self._analyse(tokens)[1]

    def beliefs(self, tokens: np.ndarray) -> np.ndarray:
        """float64 ``[n, length, n_states]``: the factored belief (visible origin) or the
        posterior over the SCC's intersections (hidden origin, columns = ``belief_nodes``)."""
        if self.origin == "hidden":
            return self._analyse(tokens)[2]["eta"]
        parts = self.belief_parts(tokens)
        N = self.map.n_nodes
        dest = _one_hot(parts["dest"], N)
        if dest.shape[1]:
            dest[:, 0] = parts["dest_first"]
        return np.concatenate([_one_hot(parts["node"], N), dest, parts["to_go"]], axis=-1)

    def belief_parts(self, tokens: np.ndarray) -> dict[str, np.ndarray]:
        """The belief without one-hot blocks.

        Visible origin: ``node`` int64 ``[n, length]`` (current intersection), ``dest``
        int64 ``[n, length]`` (-1 after the origin token, where it is not yet known),
        ``dest_first`` float ``[n, N]`` (``P(destination | origin)``, the belief after the
        origin token) and ``to_go`` float ``[n, length, max_len + 1]``.
        Hidden origin: ``node`` float ``[n, length, S]`` (posterior over ``belief_nodes``)
        and ``to_go`` (the posterior over turns still to go, ``P(L = t + k | L >= t)``).
        """
        tokens, probs, extra = self._analyse(tokens)
        n, length = tokens.shape
        K = self.max_len
        if self.origin == "hidden":
            t, ended = extra["turns"], extra["ended"]
            to_go = self._length_posterior(t)
            to_go[ended] = _one_hot(np.zeros(1, dtype=np.int64), K + 1)[0]
            return {"node": extra["eta"], "to_go": to_go}
        tr = extra
        N = self.map.n_nodes
        dest = np.broadcast_to(tr["dest"][:, None], (n, length)).copy()
        to_go = np.zeros((n, length, K + 1))
        dest_first = probs[:, 0, :N].copy() if length else np.zeros((n, N))
        if length:
            dest[:, 0] = -1
            if self.walk == "random":  # L given the origin alone (independent of it without a split)
                to_go[:, 0] = self._origin_marginals(tr["node"][:, 0])[1]
            else:  # distance to a destination drawn from dest_first
                hops = np.minimum(self.distances[tr["node"][:, 0]], K + 1)
                first = np.zeros((n, K + 2))
                np.add.at(first, (np.arange(n)[:, None], hops), dest_first)
                to_go[:, 0] = first[:, :K + 1]
        walking = tr["phase"] == 1
        s, p = np.nonzero(walking)
        nd, g, t = tr["node"][s, p], tr["dest"][s], tr["turns"][s, p]
        if self.walk == "random":
            dests, col = np.unique(g, return_inverse=True)
            R = np.zeros((N, dests.size))
            R[dests, np.arange(dests.size)] = 1.0  # r_0 = e_dest
            vals = np.zeros((s.size, K + 1))
            for k in range(K + 1):
                tk = np.minimum(t + k, K + 1)
                vals[:, k] = self.length_probs[tk] * R[nd, col]
                R = self._A @ R
            z = vals.sum(axis=1, keepdims=True)
            to_go[s, p] = vals / np.where(z > 0, z, 1.0)
        else:
            to_go[s, p] = _one_hot(np.minimum(self.distances[nd, g], K + 1), K + 1)
        ended = tr["phase"] == 2
        to_go[ended, 0] = 1.0
        return {"node": tr["node"], "dest": dest, "dest_first": dest_first, "to_go": to_go}

    def _length_posterior(self, t: np.ndarray) -> np.ndarray:
        """``P(to_go = k | L >= t)`` for turn counts ``t`` (any shape) -> ``[..., max_len + 1]``."""
        K = self.max_len
        k = np.arange(K + 1)
        idx = np.minimum(t[..., None] + k, K + 1)
        w = self.length_probs[idx]
        z = w.sum(axis=-1, keepdims=True)
        return w / np.where(z > 0, z, 1.0)

    def _analyse(self, tokens: Any) -> tuple[np.ndarray, np.ndarray, Any]:
        """(tokens, next-token probs, trace or hidden-mode extras); raises ``WorldError`` on
        the first token of probability zero."""
        tokens = check_tokens(tokens, self.vocab_size, f"taxi ({self.origin} origin)")
        if self.origin == "hidden":
            probs, extra = self._probs_hidden(tokens)
            first = self._hidden_first_probs()
        else:
            extra = trace(tokens, self.walk_succ, self.map.n_nodes)
            probs = self._probs_random(tokens, extra) if self.walk == "random" else self._probs_shortest(tokens, extra)
            first = np.zeros(self.vocab_size)
            first[self.walk_nodes] = 1.0 / self.walk_nodes.size
        self._check_possible(tokens, probs, first)
        return tokens, probs, extra

    def _check_possible(self, tokens: np.ndarray, probs: np.ndarray, first: np.ndarray) -> None:
        n, length = tokens.shape
        if length == 0 or n == 0:
            return
        p = np.empty((n, length))
        p[:, 0] = first[tokens[:, 0]]
        p[:, 1:] = np.take_along_axis(probs[:, :-1], tokens[:, 1:, None], axis=2)[..., 0]
        zero = p <= 0
        if zero.any():
            i = int(np.flatnonzero(zero.any(axis=1))[0])
            t = int(np.flatnonzero(zero[i])[0])
            raise WorldError(f"taxi: sequence {i} has probability 0 at position {t} "
                             f"(token {self._names[int(tokens[i, t])]!r} cannot follow the prefix)")

    def _walk_end_probs(self, origins: np.ndarray) -> np.ndarray:
        """float ``[k, N]``: where the unsplit random walk from each origin ends,
        ``w(d | o) = sum_l P(L = l) (A^l)[o, d]``."""
        return self._walk_marginals(origins)[0]

    def _walk_marginals(self, origins: np.ndarray, side: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(``sum_l P(L = l) (A^l)[o, :]`` ``[k, N]``, and per length ``l`` the mass
        ``P(L = l) sum_{d in side} (A^l)[o, d]`` ``[k, max_len + 1]``) for each origin ``o``;
        ``side`` bool ``[k, N]`` (default: every destination)."""
        N = self.map.n_nodes
        origins = np.asarray(origins, dtype=np.int64)
        uniq, inv = np.unique(origins, return_inverse=True)
        P = np.zeros((N, uniq.size))
        P[uniq, np.arange(uniq.size)] = 1.0
        acc = np.zeros_like(P)
        by_len = np.zeros((uniq.size, self.max_len + 1))
        first = np.zeros(uniq.size, dtype=np.int64)
        first[inv] = np.arange(origins.size)  # a row of ``side`` for each distinct origin
        mask = None if side is None else np.asarray(side, dtype=bool)[first].T
        for steps in range(self.max_len + 1):
            if self.length_probs[steps] > 0:
                acc += self.length_probs[steps] * P
                by_len[:, steps] = self.length_probs[steps] * (P.sum(axis=0) if mask is None else (P * mask).sum(axis=0))
            P = self._AT @ P
        return acc.T[inv], by_len[inv]

    def _origin_marginals(self, origins: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Random walks, after the origin token alone: (``P(destination | origin)`` ``[k, N]``,
        ``P(L = l | origin)`` ``[k, max_len + 1]``), on this world's side of the pair split
        (conditioned on the walk ending there)."""
        side = self._on_side(origins) if self.holdout > 0 else None
        dest, by_len = self._walk_marginals(origins, side)
        if side is not None:
            dest = dest * side
        dest /= np.maximum(dest.sum(axis=1, keepdims=True), 1e-300)
        by_len /= np.maximum(by_len.sum(axis=1, keepdims=True), 1e-300)
        return dest, by_len

    def _probs_random(self, tokens: np.ndarray, tr: dict[str, np.ndarray]) -> np.ndarray:
        n, length = tokens.shape
        N, K = self.map.n_nodes, self.max_len
        out = np.zeros((n, length, self.vocab_size))
        if length == 0:
            return out
        out[:, 0, :N] = self._origin_marginals(tr["node"][:, 0])[0]
        walking = tr["phase"] == 1
        dests, col = np.unique(np.clip(tr["dest"], 0, None), return_inverse=True)
        cols = np.arange(dests.size)
        G_next = np.zeros((N, dests.size))  # G_{K+1} = 0
        for t in range(K, -1, -1):
            G = self._A @ G_next
            G[dests, cols] += self.length_probs[t]  # + P(L = t) e_dest
            s, p = np.nonzero(walking & (tr["turns"] == t))
            if s.size:
                nd, c = tr["node"][s, p], col[s]
                den = G[nd, c]
                nb = self.walk_succ[nd]
                num = np.where(nb >= 0, G_next[np.clip(nb, 0, None), c[:, None]], 0.0)
                num /= np.maximum(self.walk_deg[nd], 1)[:, None]
                scale = np.where(den > 0, 1.0 / np.where(den > 0, den, 1.0), 0.0)
                out[s, p, self.dir0:self.dir0 + 8] = num * scale[:, None]
                out[s, p, self.end_id] = self.length_probs[t] * (nd == dests[c]) * scale
            G_next = G
        out[tr["phase"] == 2, self.pad_id] = 1.0
        return out

    def _probs_shortest(self, tokens: np.ndarray, tr: dict[str, np.ndarray]) -> np.ndarray:
        n, length = tokens.shape
        N = self.map.n_nodes
        out = np.zeros((n, length, self.vocab_size))
        if length == 0:
            return out
        uniq, inv = np.unique(tr["node"][:, 0], return_inverse=True)
        first = self._allowed_dest(uniq).astype(np.float64)
        first /= np.maximum(first.sum(axis=1, keepdims=True), 1.0)
        out[:, 0, :N] = first[inv]
        s, p = np.nonzero(tr["phase"] == 1)
        nd, g, t = tr["node"][s, p], np.clip(tr["dest"][s], 0, None), tr["turns"][s, p]
        arrived = nd == g
        sp_dir = self._shortest_dir(nd, g)
        probs = np.zeros((s.size, 8))
        has = (sp_dir >= 0) & ~arrived
        probs[np.flatnonzero(has), sp_dir[has]] = 1.0 - self.noise
        if self.noise > 0:
            feas = self._feasible_dirs(nd, g, t) & ~arrived[:, None]
            probs += self.noise * feas / np.maximum(feas.sum(axis=1, keepdims=True), 1)
        out[s, p, self.dir0:self.dir0 + 8] = probs
        out[s, p, self.end_id] = arrived
        out[tr["phase"] == 2, self.pad_id] = 1.0
        return out

    def _hidden_first_probs(self) -> np.ndarray:
        first = np.zeros(self.vocab_size)
        uniform = np.full(self.walk_nodes.size, 1.0 / self.walk_nodes.size)
        first[:8] = (1.0 - self._hazard(np.zeros(1, dtype=np.int64))[0]) * (uniform @ self._walk_emission)
        return first

    def _hazard(self, t: np.ndarray) -> np.ndarray:
        """``P(L = t | L >= t)`` (0 where no length >= t is possible)."""
        tail = np.cumsum(self.length_probs[::-1])[::-1]  # tail[t] = P(L >= t)
        tc = np.minimum(t, self.max_len + 1)
        return np.where(tail[tc] > 0, self.length_probs[tc] / np.where(tail[tc] > 0, tail[tc], 1.0), 0.0)

    def _probs_hidden(self, tokens: np.ndarray) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        n, length = tokens.shape
        is_dir = tokens < 8
        is_end = tokens == self.end_id
        ended = np.cumsum(is_end, axis=1) > 0
        turns = np.cumsum(is_dir & ~ended, axis=1)
        eta = self._hmm.beliefs(tokens)
        walk = eta @ self._walk_emission  # [n, length, 8]
        h = self._hazard(turns)
        out = np.zeros((n, length, self.vocab_size))
        over = turns > self.max_len  # no walk is this long: leave zeros
        live = ~ended & ~over
        out[..., :8] = np.where(live[..., None], (1.0 - h)[..., None] * walk, 0.0)
        out[..., self.end_id] = np.where(live, h, 0.0)
        out[ended, self.pad_id] = 1.0
        return out, {"eta": eta, "turns": turns, "ended": ended}

    # --- masks ----------------------------------------------------------------------------
    def target_mask(self, tokens: np.ndarray) -> np.ndarray:
        """Turns and ``end`` are targets; the origin/destination prompt and padding are not."""
        tokens = np.asarray(tokens)
        if tokens.ndim == 1:
            tokens = tokens[None, :]
        mask = (tokens >= self.dir0) & (tokens <= self.end_id)
        mask[:, :1 if self.origin == "hidden" else 2] = False
        return mask

    def position_mask(self, tokens: np.ndarray) -> np.ndarray:
        """False on padding."""
        tokens = np.asarray(tokens)
        if tokens.ndim == 1:
            tokens = tokens[None, :]
        return tokens != self.pad_id

    # --- legality of (model-generated) trips ---------------------------------------------
    def check_sequences(self, tokens_or_lists: Any) -> dict[str, np.ndarray]:
        """Per sequence: ``legal`` (every turn is a street of the map, well-formed),
        ``ended`` and ``valid`` (legal, ended, and — visible origin — ``end`` at the
        destination). Hidden origin: legal means some start intersection makes every turn
        a street; valid = legal and ended. Accepts arrays or ragged lists of token ids."""
        if self.origin == "visible":
            return check_sequences(self.map, tokens_or_lists)
        tokens, lengths = as_token_matrix(tokens_or_lists)
        n, length = tokens.shape
        succ = np.asarray(self.map.succ)
        alive = np.ones((n, self.map.n_nodes), dtype=bool)
        ok = np.ones(n, dtype=bool)
        ph = np.zeros(n, dtype=np.int8)  # 0 walking, 1 ended, 2 no more tokens
        for p in range(length):
            tok = tokens[:, p]
            ph = np.where(p >= lengths, 2, ph).astype(np.int8)
            walking = ph == 0
            is_dir = (tok >= 0) & (tok < 8)
            ok &= ~(walking & ~is_dir & (tok != self.end_id)) & ~((ph == 1) & (tok != self.pad_id))
            rows = np.flatnonzero(walking & is_dir)
            if rows.size:
                r, a = np.nonzero(alive[rows])
                nxt = succ[a, tokens[rows[r], p]]
                new = np.zeros((rows.size, self.map.n_nodes), dtype=bool)
                new[r[nxt >= 0], nxt[nxt >= 0]] = True
                alive[rows] = new
            ph = np.where(walking & (tok == self.end_id), 1, ph).astype(np.int8)
        legal = ok & alive.any(axis=1)
        ended = ((tokens == self.end_id) & (np.arange(length)[None, :] < lengths[:, None])).any(axis=1)
        return {"legal": legal, "ended": ended, "valid": legal & ended}

    def to_text(self, tokens: np.ndarray) -> list[str]:
        """One line per trip in the text format (padding dropped)."""
        names = self._names
        return [" ".join(names[int(t)] for t in row if t != self.pad_id)
                for row in np.atleast_2d(np.asarray(tokens))]

    # --- serialisation --------------------------------------------------------------------
    def spec(self) -> dict[str, Any]:
        return {"kind": "taxi", "map": self.map.to_dict(), "walk": self.walk,
                "min_len": self.min_len, "max_len": self.max_len, "origin": self.origin,
                "noise": self.noise if self.walk == "noisy" else None,
                **({"holdout": self.holdout, "pairs": self.pairs, "holdout_seed": self.holdout_seed}
                   if self.holdout > 0 else {})}

    @classmethod
    def from_spec(cls, spec: dict[str, Any]) -> Taxi:
        if not isinstance(spec, dict) or spec.get("kind") != "taxi":
            raise WorldError("Taxi.from_spec: spec must be a dict with kind 'taxi'")
        if "map" not in spec:
            raise WorldError("Taxi.from_spec: spec has no 'map'")
        street_map = StreetMap.from_dict(spec["map"], source="taxi spec map")
        return cls(street_map, walk=spec.get("walk", "random"), min_len=spec.get("min_len"),
                   max_len=spec.get("max_len"), origin=spec.get("origin", "visible"),
                   noise=spec.get("noise"), holdout=spec.get("holdout", 0.0), pairs=spec.get("pairs", "train"),
                   holdout_seed=spec.get("holdout_seed", 0))


__all__ = ["Taxi", "StreetMap", "held_out_pairs", "DIRECTIONS", "DIR_INDEX", "check_sequences", "parse_sequences",
           "synthetic_manhattan", "MAX_HIDDEN_NODES"]
