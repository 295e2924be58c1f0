"""Taxi world-model metrics (Vafa et al. 2024; NextLat paper, Table 1).

Every metric talks to the model only through a *predictor*: a callable
``predict(tokens int64 [n, L]) -> float [n, L, V]`` of next-token probabilities (row
``t`` is the distribution of token ``t + 1``), the same convention as
``World.next_token_probs``. ``model_predictor`` wraps a transformer, ``oracle_predictor``
is the exact world (a perfect model), and any plain function works too, so the metrics
can be checked on hand-built predictors without training anything.

Validity is judged by the street map as a deterministic automaton (Vafa et al.; the one
automaton is ``worlds.trips``, traced here by ``trace_trips``): after
``origin dest d_1 .. d_t`` the taxi is at node ``n``; a turn ``d`` is *legal* iff the map
has an edge ``(n, d)``; ``end`` is legal iff ``n == dest``; after ``end`` nothing but
padding follows. Node tokens or padding in the middle of a trip are never legal.

Metrics (all on fresh trips drawn from the world's own sampler with ``seed``; every one
returns a count, the number of trials and a Wilson 95% interval, see ``Rate``):

- **next-token validity** (teacher forced): at every target position of a true trip (the
  turns and the final ``end``) the top-1 prediction over the whole vocabulary must be a
  legal turn from the current node, or ``end`` while the taxi stands at the destination
  (for random walks ``end`` is legal at the destination only, even mid-walk). Unit: one
  target position (positions of one trip are not independent, so the interval is
  optimistic).
- **valid trajectories**: greedy generation from each held-out ``(origin, dest)`` prompt for
  at most ``max_turns`` turns (default ``3 * world.max_len``, capped by the model's
  context). ``legal``: every generated turn is a street and the trip is well formed
  (``check_sequences``' legal); ``valid``: legal, ended, and ``end`` at the destination.
- **sequence compression** (Vafa et al.): a prefix ``A`` is cut from a true trip after
  ``k`` turns, and a different prefix ``B`` with the same destination, the same current
  node and the same number of turns ``k`` is drawn by a backward random walk from that
  node (the turn count is matched because, for bounded random walks, the exact
  next-token distribution depends on it through the length prior; Vafa et al. also
  match lengths). ``n_continuations`` continuations are sampled from the model after
  ``A`` with epsilon-cutoff sampling (tokens with probability < epsilon removed, the rest
  renormalised), each until ``end``, a non-turn token or the turn budget. A pair passes
  when every token of every continuation has probability > epsilon under the model
  after ``B``. Unit: one prefix pair (all-or-nothing, as Vafa et al.); the fraction of
  single continuations accepted is reported too. A model that ignores the state passes
  trivially; read it together with distinction.
- **protocols**: ``vafa2024`` (the default, ``PROTOCOLS``) follows the reference code of
  Vafa et al. (``compression_test.py``: 30 continuations per pair, epsilon 0.01;
  ``distinction_test.py``: per-pair precision / recall, see ``distinction_vafa``);
  ``exact`` is our alternative for distinction (below). Every result names its protocol
  and parameters (``WorldModelResult.protocol``).
- **distinction precision / recall** (protocol ``exact``; ``vafa2024``: ``distinction_vafa``) at the Myhill–Nerode boundary: two true trips cut
  after the same number of turns ``k`` at *different* (node, destination) states. For
  suffixes over the trip alphabet (8 turns and ``end``; ``end`` closes a suffix) of at
  most ``suffix_len`` tokens, enumerated exactly:

      true boundary A->B  = { u + x : u accepted from both states, u + x accepted from A
                              but not from B }            (minimal distinguishing suffixes)
      model boundary A->B = the same with "accepted" = every token has model probability
                            > epsilon after the prefix

  and symmetrically B->A. Precision = |model ∩ true| / |model|, recall =
  |model ∩ true| / |true|, pooled over pairs and both directions (Vafa et al. average a
  per-pair precision with an empty model boundary counted as 1; pooling keeps a binomial
  count and leaves precision undefined (NaN) when the model distinguishes nothing).
  ``truth="world"`` (default) takes "accepted" from the world's exact support
  (probability > 0), i.e. the language the model was trained on: for bounded random
  walks that includes the length prior and the largest strongly connected component,
  and the exact model scores 1 whenever its positive probabilities exceed epsilon.
  ``truth="map"`` uses the street map's automaton alone (Vafa et al.'s definition); the
  exact model then loses points wherever the length budget rules out a legal turn.
- **detour robustness**: greedy generation as above, but at each step, while the trip is
  legal and the taxi is not at the destination, with probability ``p`` the model's token
  is replaced by a legal turn after which the destination can still be reached within
  the turn budget: ``random`` (uniform, other than the model's pick when possible),
  ``least_likely`` (lowest model probability) or ``second_most_likely`` (highest model
  probability other than the model's pick). Success is reported as legal and as valid.
  (Vafa et al.'s rule; the NextLat paper uses random detours with p = 0.75.)
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from ..records import Rate, wilson_interval  # noqa: F401  (re-exported)
from ..worlds.base import WorldError
from ..worlds.trips import check_sequences, trace_tolerant
from .generation import (
    TIE_PROB,
    Rule,
    Session,
    extend,
    near_tie,
    regime_of,
    sample_cutoff,
    sample_cutoff_fragile,
)
from .stats import AnalysisError

EPSILON = 0.01
DETOUR_KINDS = ("random", "least_likely", "second_most_likely")
DETOUR_PROBS = (0.75, 0.01)
TRUTHS = ("world", "map")
#: the published protocol (Vafa et al. 2024, keyonvafa/world-model-evaluation:
#: ``compression_test.py``, ``distinction_test.py``) and our exact alternative; every value
#: here is a defining parameter recorded in the record's ``protocol`` block
PROTOCOLS: dict[str, dict[str, Any]] = {
    "vafa2024": {"n_continuations": 30, "suffix_len": 5, "n_suffix_samples": 5, "truth": "map",
                 "aggregation": "per_pair"},
    "exact": {"n_continuations": 30, "suffix_len": 3, "truth": "world", "aggregation": "pooled"},
}
DEFAULT_PROTOCOL = "vafa2024"


def resolve_protocol(protocol: str, epsilon: float = EPSILON, table: dict[str, dict[str, Any]] | None = None,
                     **given: Any) -> dict[str, Any]:
    """The ``protocol`` block of a record: ``{"name", "epsilon", <defining parameters>}``
    of ``protocol`` in ``table`` (default ``PROTOCOLS``). ``given`` values that are None
    take the protocol's default; any other value that differs from it is used AND listed
    under ``"deviations"`` (never silently)."""
    table = PROTOCOLS if table is None else table
    if protocol not in table:
        raise AnalysisError(f"protocol must be one of {', '.join(table)}, got {protocol!r}")
    block: dict[str, Any] = {"name": protocol, "epsilon": float(epsilon)}
    deviations: dict[str, Any] = {}
    for key, default in table[protocol].items():
        v = given.get(key)
        block[key] = default if v is None else v
        if v is not None and v != default:
            deviations[key] = v
    if float(epsilon) != EPSILON:
        deviations["epsilon"] = float(epsilon)
    if deviations:
        block["deviations"] = deviations
    return block


@dataclass(frozen=True)
class PairMean:
    """A mean of per-pair scores in [0, 1] (Vafa et al.'s aggregation), with the record
    form of a rate: ``value`` the mean, ``n`` the pairs, ``count`` the SUM of the per-pair
    scores (a float), ``low`` / ``high`` mean -/+ 1.96 standard errors (clipped to [0, 1];
    None with fewer than two pairs). Not a binomial count: no Wilson interval."""

    scores: tuple[float, ...]

    @property
    def n(self) -> int:
        return len(self.scores)

    @property
    def count(self) -> float:
        return float(sum(self.scores))

    @property
    def value(self) -> float:
        return self.count / self.n if self.n else float("nan")

    @property
    def ci(self) -> tuple[float, float]:
        if self.n < 2:
            return float("nan"), float("nan")
        se = float(np.std(self.scores, ddof=1)) / np.sqrt(self.n)
        return float(max(0.0, self.value - 1.96 * se)), float(min(1.0, self.value + 1.96 * se))

    def to_dict(self) -> dict[str, Any]:
        if not self.n:
            return {"value": None, "low": None, "high": None, "n": 0, "count": 0}
        lo, hi = self.ci
        return {"value": self.value, "low": None if lo != lo else lo, "high": None if hi != hi else hi,
                "n": self.n, "count": self.count}

    def __str__(self) -> str:
        if not self.n:
            return "n/a (0 pairs)"
        return f"{self.value:.3f} (mean of {self.n} pairs)"


# --------------------------------------------------------------------------------------
# predictors
# --------------------------------------------------------------------------------------
class Predictor:
    """Next-token probabilities ``[n, L, V]`` for token arrays ``[n, L]``.

    ``max_length``: the longest input the predictor accepts (a transformer's context), or
    None. ``last`` and ``token_probs`` exist so that large vocabularies (the real
    Manhattan map has 4,589 tokens) never need ``[n, L, V]`` at once; subclasses override
    them when they can do better than slicing ``__call__``.
    """

    max_length: int | None = None

    def __call__(self, tokens: np.ndarray) -> np.ndarray:  # pragma: no cover - interface
        raise NotImplementedError

    def last(self, tokens: np.ndarray) -> np.ndarray:
        """``[n, V]``: the distribution of the token after each row."""
        return self(tokens)[:, -1]

    def token_probs(self, tokens: np.ndarray) -> np.ndarray:
        """``[n, L - 1]``: probability of ``tokens[:, t + 1]`` given ``tokens[:, :t + 1]``."""
        probs = self(tokens[:, :-1])
        return np.take_along_axis(probs, tokens[:, 1:, None], axis=2)[..., 0]

    def top1(self, tokens: np.ndarray) -> np.ndarray:
        """int64 ``[n, L]``: the most likely next token at every position."""
        return self(tokens).argmax(axis=-1)

    def at(self, tokens: np.ndarray, pos: np.ndarray) -> np.ndarray:
        """``[n, V]``: the distribution of the token after position ``pos[i]`` of row ``i``
        (ragged prefixes in one padded array; what follows ``pos[i]`` is ignored)."""
        pos = np.asarray(pos, dtype=np.int64)
        out = None
        for p in np.unique(pos):
            rows = np.flatnonzero(pos == p)
            probs = self.last(tokens[rows, :p + 1])
            if out is None:
                out = np.zeros((pos.size, probs.shape[1]))
            out[rows] = probs
        return np.zeros((0, 0)) if out is None else out

    def session(self, prefixes: np.ndarray, lengths: np.ndarray | None, steps: int, pad_id: int = 0) -> Session:
        """A decoding session over ``prefixes`` (``analysis.generation``): this base asks
        ``at`` for every step's distributions."""
        return Session(self, prefixes, lengths, steps, pad_id)


class _FunctionPredictor(Predictor):
    def __init__(self, fn: Callable[[np.ndarray], np.ndarray], max_length: int | None = None):
        self.fn = fn
        self.max_length = max_length

    def __call__(self, tokens: np.ndarray) -> np.ndarray:
        return np.asarray(self.fn(np.asarray(tokens, dtype=np.int64)), dtype=np.float64)


def as_predictor(predict: Any) -> Predictor:
    """A ``Predictor`` from a predictor or a plain function ``tokens -> [n, L, V]``."""
    if isinstance(predict, Predictor):
        return predict
    if callable(predict):
        return _FunctionPredictor(predict, getattr(predict, "max_length", None))
    raise AnalysisError(f"predictor must be callable, got {type(predict).__name__}")


class ModelPredictor(Predictor):
    """Softmax of a transformer's logits, under ``torch.no_grad`` and in row batches.

    The model is put in eval mode. ``max_length`` is its context ``n_ctx``. Its decoding
    sessions (``session``: every generation) use a key/value cache (``models.kvcache``) when
    the model is supported and the cache fits ``max_cache_bytes``, else full forwards;
    ``regime`` forces one (``auto``, ``kv_cache``, ``full_forward``). ``regimes`` collects
    the regime of every session opened (``generation.regime_of``)."""

    def __init__(self, model, batch_size: int = 256, regime: str = "auto", max_cache_bytes: int | None = None):
        from ..models.kvcache import REGIMES

        if regime not in ("auto",) + REGIMES:
            raise AnalysisError(f"regime must be auto, {' or '.join(REGIMES)}, got {regime!r}")
        self.model = model.eval()
        self.batch_size = int(batch_size)
        self.max_length = int(model.cfg.n_ctx)
        self.regime = regime
        self.max_cache_bytes = max_cache_bytes
        self.regimes: dict[str, str | None] = {}

    def session(self, prefixes: np.ndarray, lengths: np.ndarray | None, steps: int, pad_id: int = 0) -> Session:
        from ..models.kvcache import REGIME_FULL, fallback_reason
        from .generation import CachedSession

        n, W = np.shape(prefixes)
        width = min(self.max_length, W + int(steps))
        why = fallback_reason(self.model, n, width, regime=self.regime, max_cache_bytes=self.max_cache_bytes)
        if why is None:
            return CachedSession(self.model, self, prefixes, lengths, steps, pad_id)
        if self.regime == "kv_cache":
            raise AnalysisError(f"no key/value cache for this model: {why}")
        return Session(self, prefixes, lengths, steps, pad_id, regime=REGIME_FULL, note=why)

    def _run(self, tokens: np.ndarray, mode: str) -> np.ndarray:
        """mode: ``all`` (float32 [n, L, V]), ``last`` ([n, V]), ``gather`` ([n, L - 1],
        the probability of each next token) or ``top1`` (int64 [n, L])."""
        import torch

        tokens = np.asarray(tokens, dtype=np.int64)
        if tokens.ndim != 2:
            raise AnalysisError(f"predictor: tokens must be [n, L], got shape {tokens.shape}")
        pos = None
        if isinstance(mode, tuple):  # ("at", positions)
            mode, pos = mode
            tokens = tokens[:, :int(pos.max()) + 1] if pos.size else tokens[:, :1]
        fed = tokens.shape[1] - (mode == "gather")
        if fed > self.max_length:
            raise AnalysisError(f"predictor: {fed} tokens exceed the model's context of {self.max_length}")
        dev = next(self.model.parameters()).device
        out = []
        with torch.no_grad():
            for s in range(0, tokens.shape[0], self.batch_size):
                t = torch.as_tensor(tokens[s:s + self.batch_size], device=dev)
                if mode == "gather":
                    logp = torch.log_softmax(self.model(t[:, :-1]).float(), dim=-1)
                    out.append(logp.gather(-1, t[:, 1:, None])[..., 0].exp().double().cpu().numpy())
                    continue
                logits = self.model(t).float()
                if mode == "at":
                    p = torch.as_tensor(pos[s:s + self.batch_size], device=dev)
                    out.append(torch.softmax(logits[torch.arange(t.shape[0], device=dev), p], dim=-1).double().cpu().numpy())
                elif mode == "top1":
                    out.append(logits.argmax(dim=-1).cpu().numpy())
                elif mode == "last":
                    out.append(torch.softmax(logits[:, -1], dim=-1).double().cpu().numpy())
                else:
                    out.append(torch.softmax(logits, dim=-1).cpu().numpy())
        if not out:
            V = int(self.model.cfg.d_vocab)
            shapes = {"gather": (0, max(fed, 0)), "last": (0, V), "at": (0, V), "top1": (0, tokens.shape[1]),
                      "all": (0, tokens.shape[1], V)}
            return np.zeros(shapes[mode])
        return np.concatenate(out)

    def __call__(self, tokens: np.ndarray) -> np.ndarray:
        return self._run(tokens, "all")

    def last(self, tokens: np.ndarray) -> np.ndarray:
        return self._run(tokens, "last")

    def token_probs(self, tokens: np.ndarray) -> np.ndarray:
        return self._run(tokens, "gather")

    def top1(self, tokens: np.ndarray) -> np.ndarray:
        return self._run(tokens, "top1")

    def at(self, tokens: np.ndarray, pos: np.ndarray) -> np.ndarray:
        return self._run(tokens, ("at", np.asarray(pos, dtype=np.int64)))


def model_predictor(model, batch_size: int = 256, regime: str = "auto") -> ModelPredictor:
    """Wrap a transformer (``model(tokens) -> logits [n, L, V]``) as a predictor (decoding
    with a key/value cache where the model allows: ``ModelPredictor``)."""
    return ModelPredictor(model, batch_size=batch_size, regime=regime)


class OraclePredictor(Predictor):
    """The exact world as a model: ``world.next_token_probs`` wherever the prefix is
    possible under the world.

    Greedy detours and distinction suffixes can lead to prefixes of probability zero
    (a detour that outlasts the length prior, an illegal suffix token); the world has
    no posterior there and raises. Such positions get the distribution of a perfect
    navigator instead: ``end`` at the destination, else the first turn (``DIRECTIONS``
    order) on a shortest path of the full map, so the oracle still knows the map and its
    goal after any legal detour. (Malformed prefixes get ``end``.)"""

    def __init__(self, world):
        check_taxi_world(world)
        self.world = world
        self._dist: dict[int, np.ndarray] = {}

    def __call__(self, tokens: np.ndarray) -> np.ndarray:
        w = self.world
        tokens = np.asarray(tokens, dtype=np.int64)
        probs, possible = _exact_where_possible(w, tokens)
        if possible.all():
            return probs
        tr = trace_trips(w, tokens)
        rows, cols = np.nonzero(~possible)
        fill = np.zeros((rows.size, w.vocab_size))
        first = cols == 0
        fill[first, :w.map.n_nodes] = 1.0 / w.map.n_nodes
        rest = ~first
        r, c = rows[rest], cols[rest]
        node, dest = tr["node"][r, c], tr["dest"][r]
        ended, ok = tr["ended"][r, c], tr["ok"][r, c]
        choice = np.full(r.size, w.end_id)
        choice[ended] = w.pad_id
        steer = ok & ~ended & (node != dest)
        if steer.any():
            choice[steer] = self._shortest_turn(node[steer], dest[steer])
        fill[np.flatnonzero(rest), choice] = 1.0
        probs[rows, cols] = fill
        return probs

    def _shortest_turn(self, node: np.ndarray, dest: np.ndarray) -> np.ndarray:
        """Token of the first shortest-path turn (full map) from node to dest; end if none."""
        w = self.world
        need = [int(g) for g in np.unique(dest) if int(g) not in self._dist]
        if need:
            for g, row in zip(need, w.map.distances_to(need)):
                self._dist[g] = row
        succ = np.asarray(w.map.succ)
        nb = succ[node]
        dist = np.stack([self._dist[int(g)] for g in dest])  # [k, N]
        here = dist[np.arange(node.size), node]
        nxt = np.where(nb >= 0, dist[np.arange(node.size)[:, None], np.clip(nb, 0, None)], np.inf)
        on_path = np.isfinite(here)[:, None] & (nxt == here[:, None] - 1)
        return np.where(on_path.any(axis=1), w.dir0 + np.argmax(on_path, axis=1), w.end_id)


def oracle_predictor(world) -> OraclePredictor:
    """The perfect model of ``world`` (see ``OraclePredictor``)."""
    return OraclePredictor(world)


def _exact_where_possible(world, tokens: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(``world.next_token_probs`` where defined, bool ``[n, L]`` "tokens 0..t possible").

    Fast path: one call when every row is possible. Otherwise the rows are grown one
    position at a time, asking the world only about prefixes known to be possible."""
    n, L = tokens.shape
    try:
        return world.next_token_probs(tokens), np.ones((n, L), dtype=bool)
    except WorldError:
        pass
    out = np.zeros((n, L, world.vocab_size))
    possible = np.zeros((n, L), dtype=bool)
    if L == 0:
        return out, possible
    possible[:, 0] = np.isin(tokens[:, 0], world.walk_nodes)
    for p in range(L):
        rows = np.flatnonzero(possible[:, p])
        if rows.size == 0:
            break
        pr = world.next_token_probs(tokens[rows, :p + 1])[:, p]
        out[rows, p] = pr
        if p + 1 < L:
            possible[rows, p + 1] = pr[np.arange(rows.size), tokens[rows, p + 1]] > 0
    return out, possible


# --------------------------------------------------------------------------------------
# the street map as an automaton
# --------------------------------------------------------------------------------------
def check_taxi_world(world) -> None:
    """Raise ``AnalysisError`` unless ``world`` is a visible-origin taxi world."""
    if getattr(world, "name", None) != "taxi":
        raise AnalysisError(f"world-model metrics need a taxi world, got {getattr(world, 'name', type(world).__name__)!r}")
    if getattr(world, "origin", "visible") != "visible":
        raise AnalysisError("world-model metrics need the visible-origin taxi world (origin and destination tokens)")


def trace_trips(world, tokens: np.ndarray) -> dict[str, np.ndarray]:
    """Follow ``origin dest d_1 .. end pad ..`` rows through the full street map
    (``worlds.trips.trace_tolerant``).

    Per position ``t`` (state after token ``t``): ``node`` (current intersection; frozen
    at the last legal position), ``turns`` (turn tokens so far), ``ok`` (tokens ``0..t``
    are a legal trip prefix: nodes first, legal turns, ``end`` only at the destination,
    only padding after it) and ``ended``; per row ``dest`` (-1 if the second token is
    not a node)."""
    tokens = np.asarray(tokens, dtype=np.int64)
    return trace_tolerant(tokens, world.map.succ, world.map.n_nodes)


def legal_next(world, node: np.ndarray, dest: np.ndarray) -> np.ndarray:
    """bool ``[..., 9]``: legal next trip tokens (8 turns in ``DIRECTIONS`` order, then
    ``end``) at intersection ``node`` with destination ``dest``."""
    succ = np.asarray(world.map.succ)
    node = np.asarray(node)
    return np.concatenate([succ[node] >= 0, (node == np.asarray(dest))[..., None]], axis=-1)


def _trip_ids(world) -> np.ndarray:
    """Token ids of the trip alphabet: the 8 turns then ``end`` (contiguous)."""
    return np.arange(world.dir0, world.end_id + 1)


# --------------------------------------------------------------------------------------
# generation
# --------------------------------------------------------------------------------------
def _detour_choices(world, probs: np.ndarray, pick: np.ndarray, allowed: np.ndarray):
    """(``others``: allowed turns other than the model's ``pick`` when there are any, else
    all allowed; the turn probabilities ``[r, 8]``)."""
    d_pick = pick - world.dir0
    not_pick = allowed & (np.arange(8)[None, :] != d_pick[:, None])
    others = np.where(not_pick.any(axis=1, keepdims=True), not_pick, allowed)
    return others, probs[:, world.dir0:world.dir0 + 8]


def _detour(world, kind: str, probs: np.ndarray, pick: np.ndarray, allowed: np.ndarray,
            u: np.ndarray) -> np.ndarray:
    """Token replacing the model's ``pick`` on rows with a non-empty ``allowed`` [r, 8]."""
    others, turn_p = _detour_choices(world, probs, pick, allowed)
    if kind == "random":
        c = np.cumsum(others, axis=1)
        d = np.minimum((c <= (u * c[:, -1])[:, None]).sum(axis=1), 7)
    elif kind == "least_likely":
        d = np.argmin(np.where(allowed, turn_p, np.inf), axis=1)
    elif kind == "second_most_likely":
        d = np.argmax(np.where(others, turn_p, -np.inf), axis=1)
    else:
        raise AnalysisError(f"unknown detour kind {kind!r}; choose one of {', '.join(DETOUR_KINDS)}")
    return world.dir0 + d


def _detour_fragile(world, kind: str, probs: np.ndarray, pick: np.ndarray, allowed: np.ndarray) -> np.ndarray:
    """bool per row: ``_detour``'s choice could change if the probabilities moved by
    ``TIE_PROB`` (two candidate turns that close; ``random`` reads no probability)."""
    others, turn_p = _detour_choices(world, probs, pick, allowed)
    if kind == "least_likely":
        return near_tie(turn_p, TIE_PROB, mask=allowed, lowest=True)
    if kind == "second_most_likely":
        return near_tie(turn_p, TIE_PROB, mask=others)
    return np.zeros(len(pick), dtype=bool)


class _TripRule(Rule):
    """Taxi trips for ``generate``: greedy or epsilon-cutoff picks, the detour rule, and the
    street-map automaton that ends a row after any non-turn token."""

    def __init__(self, world, prefixes, lengths, limit, sample, epsilon, rng, detour, detour_p, max_turns):
        n = prefixes.shape[0]
        tr = trace_trips(world, prefixes)
        at = (np.arange(n), lengths - 1)
        self.world, self.n, self.rng = world, n, rng
        self.sample, self.epsilon = bool(sample), float(epsilon)
        self.node, self.turns, self.ok = tr["node"][at].copy(), tr["turns"][at].copy(), tr["ok"][at].copy()
        self.dest = tr["dest"]
        self.alive = ~tr["ended"][at] & (limit > 0)
        self.succ = np.asarray(world.map.succ)
        self.kinds = np.full(n, -1, dtype=np.int64)
        if detour is not None:
            names = [detour] * n if isinstance(detour, str) else list(detour)
            for kind in set(names) - {None}:
                if kind not in DETOUR_KINDS:
                    raise AnalysisError(f"unknown detour kind {kind!r}; choose one of {', '.join(DETOUR_KINDS)}")
            self.kinds = np.array([-1 if k is None else DETOUR_KINDS.index(k) for k in names], dtype=np.int64)
        self.p_detour = np.broadcast_to(np.asarray(detour_p, dtype=np.float64), (n,))
        self.detouring = (self.kinds >= 0) & (self.p_detour > 0)
        self.dist = None
        self.max_turns = max_turns
        if self.detouring.any():
            if max_turns is None:
                raise AnalysisError("generate: detours need max_turns (the turn budget)")
            dests, self.dest_col = np.unique(np.clip(self.dest, 0, None), return_inverse=True)
            self.dist = world.map.distances_to(dests)  # [k, N] turns to each destination
        self.u = np.zeros(0)

    def start(self, step):
        self.u_detour, self.u_pick = self.rng.random(self.n), self.rng.random(self.n)  # every row: reproducible

    def draw(self, rows):
        if self.sample:
            self.u = self.rng.random(rows.size)

    def choose(self, rows, probs, at):
        if self.sample:
            tok = sample_cutoff(probs, self.u[at], self.epsilon)
            fragile = sample_cutoff_fragile(probs, self.u[at], self.epsilon)
        else:
            tok, fragile = probs.argmax(axis=1), near_tie(probs, TIE_PROB)
        if self.dist is not None:
            nd = self.node[rows]
            nb = self.succ[nd]
            left = self.max_turns - self.turns[rows] - 1
            allowed = (nb >= 0) & (self.dist[self.dest_col[rows][:, None], np.clip(nb, 0, None)] <= left[:, None])
            go = (self.detouring[rows] & self.ok[rows] & (nd != self.dest[rows])
                  & (self.u_detour[rows] < self.p_detour[rows]) & allowed.any(axis=1))
            for code, kind in enumerate(DETOUR_KINDS):
                g = go & (self.kinds[rows] == code)
                if g.any():
                    fragile[g] |= _detour_fragile(self.world, kind, probs[g], tok[g], allowed[g])
                    tok[g] = _detour(self.world, kind, probs[g], tok[g], allowed[g], self.u_pick[rows][g])
        return tok, fragile

    def advance(self, rows, tok):
        d = tok - self.world.dir0
        is_turn = (d >= 0) & (d < 8)
        node = self.node[rows]
        nxt = self.succ[node, np.clip(d, 0, 7)]
        move = is_turn & (nxt >= 0)
        self.ok[rows] &= move | ((tok == self.world.end_id) & (node == self.dest[rows]))
        self.node[rows] = np.where(move, nxt, node)
        self.turns[rows] += is_turn
        return is_turn


def generate(predict: Any, world, prefixes: np.ndarray, n_new: int | np.ndarray, *,
             lengths: np.ndarray | None = None, sample: bool = False, epsilon: float = EPSILON,
             rng: np.random.Generator | None = None, detour: Any = None, detour_p: Any = 0.0,
             max_turns: int | None = None) -> np.ndarray:
    """Extend ``prefixes`` ``[n, W]`` (row ``i`` holds ``lengths[i]`` tokens, default all
    ``W``) by up to ``n_new`` tokens (an int or one per row).

    Greedy (top-1 over the whole vocabulary) unless ``sample`` (epsilon-cutoff sampling).
    A row stops after ``end`` or any other non-turn token; its remaining cells are
    padding. ``detour`` (greedy only; a kind, or one kind or None per row) applies the
    detour rule of the module docstring with probability ``detour_p`` (scalar or per
    row) at each step; ``max_turns`` is the turn budget it protects. Returns int64
    ``[n, W + max n_new]``; row ``i``'s new tokens start at ``lengths[i]``. All rows are
    decoded together (``analysis.generation.extend``: a key/value cache for a transformer)."""
    predict = as_predictor(predict)
    prefixes = np.asarray(prefixes, dtype=np.int64)
    n, W = prefixes.shape
    lengths = np.full(n, W, dtype=np.int64) if lengths is None else np.asarray(lengths, dtype=np.int64)
    limit = np.broadcast_to(np.asarray(n_new, dtype=np.int64), (n,))
    rng = np.random.default_rng() if rng is None else rng
    rule = _TripRule(world, prefixes, lengths, limit, sample, epsilon, rng, detour, detour_p, max_turns)
    return extend(predict, prefixes, limit, rule, lengths=lengths, alive=rule.alive, pad_id=world.pad_id)


def turn_budget(world, predict: Any, prompt_len: int = 2, max_turns: int | None = None) -> int:
    """Turns a generation may take: ``max_turns`` (default ``3 * world.max_len``), capped so
    that ``prompt + turns`` stays within the predictor's context (``end`` is the next
    token, predicted from the last position)."""
    want = 3 * int(world.max_len) if max_turns is None else int(max_turns)
    cap = getattr(as_predictor(predict), "max_length", None)
    if cap is not None:
        want = min(want, int(cap) - prompt_len)
    if want < 1:
        raise AnalysisError(f"no room to generate: context {cap} leaves {want} turns after the prompt")
    return want


# --------------------------------------------------------------------------------------
# the metrics
# --------------------------------------------------------------------------------------
def next_token_validity(predict: Any, world, tokens: np.ndarray, batch_size: int = 256) -> Rate:
    """Teacher-forced top-1 validity over the target positions of true trips ``tokens``."""
    predict = as_predictor(predict)
    tokens = np.asarray(tokens, dtype=np.int64)
    tr = trace_trips(world, tokens)
    rows, cols = np.nonzero(world.target_mask(tokens))
    good = 0
    n_rows = tokens.shape[0]
    for s in range(0, n_rows, batch_size):
        sel = (rows >= s) & (rows < s + batch_size)
        if not sel.any():
            continue
        top = predict.top1(tokens[s:s + batch_size, :-1])  # position t predicts token t + 1
        r, c = rows[sel], cols[sel]
        pred = top[r - s, c - 1]
        legal = legal_next(world, tr["node"][r, c - 1], tr["dest"][r])
        j = pred - world.dir0
        in_trip = (j >= 0) & (j < 9)
        good += int((in_trip & legal[np.arange(r.size), np.clip(j, 0, 8)] & tr["ok"][r, c - 1]).sum())
    return Rate(good, int(rows.size))


def trajectory_validity(predict: Any, world, prompts: np.ndarray, max_turns: int | None = None,
                        detour: Any = None, detour_p: Any = 0.0,
                        rng: np.random.Generator | None = None) -> tuple[Rate, Rate, np.ndarray]:
    """Greedy trips from ``(origin, dest)`` prompts ``[n, 2]`` (optionally with detours,
    see ``generate``). Returns (legal, valid, generated tokens)."""
    prompts = np.asarray(prompts, dtype=np.int64)
    budget = turn_budget(world, predict, 2, max_turns)
    out = generate(predict, world, prompts, budget + 1, rng=rng, detour=detour, detour_p=detour_p,
                   max_turns=budget)
    chk = check_sequences(world.map, out)
    return Rate(int(chk["legal"].sum()), len(out)), Rate(int(chk["valid"].sum()), len(out)), out


def _trajectory_flags(predict, world, prompts, budget, kinds, probs, rng):
    """(legal, valid, tokens) per prompt row of one batched greedy generation."""
    out = generate(predict, world, prompts, budget + 1, rng=rng, detour=kinds, detour_p=probs, max_turns=budget)
    chk = check_sequences(world.map, out)
    return chk["legal"], chk["valid"], out


def _off_split(world, prefixes: np.ndarray) -> np.ndarray:
    """bool per prefix row: its (origin, destination) tokens are a pair on the other side of
    the world's held-out pair split (``Taxi.holdout``) than the world's own trips."""
    if not getattr(world, "holdout", 0):
        return np.zeros(len(prefixes), dtype=bool)
    held = world.is_held_out(prefixes[:, 0], prefixes[:, 1])
    return held != (world.pairs == "held_out")


def _backward_prefixes(world, node: np.ndarray, dest: np.ndarray, k: np.ndarray,
                       rng: np.random.Generator, width: int | None = None) -> np.ndarray:
    """Prefixes ``[n, width]`` (default ``2 + max k``; padded) of ``k`` turns ending at
    ``node``: a backward random walk over the world's walkable edges, uniform over the
    incoming edges of each node."""
    ws = np.asarray(world.walk_succ)
    src, d = np.nonzero(ws >= 0)
    dst = ws[src, d]
    order = np.argsort(dst, kind="stable")
    src, d, dst = src[order], d[order], dst[order]
    start = np.searchsorted(dst, np.arange(world.map.n_nodes))
    indeg = np.bincount(dst, minlength=world.map.n_nodes)
    n, K = node.size, int(k.max()) if k.size else 0
    out = np.full((n, 2 + K if width is None else width), world.pad_id, dtype=np.int64)
    cur = node.copy()
    for step in range(K):
        act = step < k
        e = start[cur] + (rng.random(n) * np.maximum(indeg[cur], 1)).astype(np.int64)
        e = np.minimum(e, dst.size - 1)
        pos = 2 + k - 1 - step  # turns are written from the last backwards
        r = np.flatnonzero(act)
        out[r, pos[r]] = world.dir0 + d[e[r]]
        cur = np.where(act, src[e], cur)
    out[:, 0], out[:, 1] = cur, dest
    return out


def compression(predict: Any, world, sample, rng: np.random.Generator, epsilon: float = EPSILON,
                n_continuations: int = 30, max_turns: int | None = None,
                retries: int = 10) -> dict[str, Any]:
    """Sequence compression on trips ``sample`` (a ``Sample`` of true trips); see the module
    docstring. Returns ``{"pairs": Rate, "continuations": Rate, "skipped": int}`` where
    skipped counts states reachable by one prefix only (no different prefix found, or none
    whose origin/destination pair is on the world's side of a held-out pair split).

    The second prefix is a backward random walk over the walkable edges: for random walks
    it is a possible trip prefix of the world; for shortest-path data it usually is not
    (as in Vafa et al., whose prefixes are also backward random walks)."""
    predict = as_predictor(predict)
    L = np.asarray(sample.extras["lengths"], dtype=np.int64)
    keep = np.flatnonzero(L >= 1)
    k = rng.integers(1, L[keep] + 1)
    node = sample.states[keep, 1 + k, 0]
    dest = sample.extras["dest"][keep]
    B = _backward_prefixes(world, node, dest, k, rng)
    width = B.shape[1]
    A = np.where(np.arange(width)[None, :] < 2 + k[:, None], sample.tokens[keep, :width], world.pad_id)
    # a second prefix equal to the first, or (held-out pair split) whose origin/destination
    # pair lies on the other side of the split than the world's trips, is drawn again
    same = (A == B).all(axis=1) | _off_split(world, B)
    for _ in range(retries):
        if not same.any():
            break
        idx = np.flatnonzero(same)
        B[idx] = _backward_prefixes(world, node[idx], dest[idx], k[idx], rng, width)
        same[idx] = (A[idx] == B[idx]).all(axis=1) | _off_split(world, B[idx])
    use = np.flatnonzero(~same)
    M = int(n_continuations)
    if use.size == 0:
        return {"pairs": Rate(0, 0), "continuations": Rate(0, 0), "skipped": int(same.sum()),
                "per_pair": np.zeros(0, dtype=bool)}
    _, inside, pr = _sample_and_score(predict, world, A[use], B[use], 2 + k[use], M, epsilon, rng, max_turns)
    accepted = np.where(inside, pr > epsilon, True).all(axis=1)
    n_pairs = use.size
    per_pair = accepted.reshape(-1, M).all(axis=1)
    return {"pairs": Rate(int(per_pair.sum()), n_pairs),
            "continuations": Rate(int(accepted.sum()), n_pairs * M), "skipped": int(same.sum()),
            "per_pair": per_pair}


def _sample_and_score(predict: Predictor, world, A: np.ndarray, B: np.ndarray, P: np.ndarray, M: int,
                      epsilon: float, rng: np.random.Generator,
                      max_turns: int | None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``M`` epsilon-cutoff continuations sampled from the model after each prefix ``A[i]``
    (``P[i]`` tokens; rows ``i * M .. i * M + M - 1``), each up to and including its first
    non-turn token (``end``) or the turn budget, scored after prefix ``B[i]`` instead.
    Returns (continuation tokens ``[r, S]``, bool ``inside`` ``[r, S]`` (cells of the
    continuation), model probability of each cell's token after ``B`` + the earlier cells)."""
    width = A.shape[1]
    budget = turn_budget(world, predict, 2, max_turns)
    cap = getattr(predict, "max_length", None)
    P = np.repeat(np.asarray(P, dtype=np.int64), M)  # prefix length of every continuation row
    n_new = np.maximum(1, budget - (P - 2) + 1)
    if cap is not None:
        n_new = np.minimum(n_new, int(cap) + 1 - P)
    a, b = np.repeat(A, M, axis=0), np.repeat(B, M, axis=0)
    gen = generate(predict, world, a, n_new, lengths=P, sample=True, epsilon=epsilon, rng=rng)
    # row i's continuation occupies cells P_i .. P_i + len_i - 1 (up to and including its
    # first non-turn token); score it after prefix B instead of A
    steps = gen.shape[1] - width
    cells = P[:, None] + np.arange(steps)[None, :]
    in_gen = np.arange(steps)[None, :] < n_new[:, None]
    cont = np.take_along_axis(gen, np.minimum(cells, gen.shape[1] - 1), axis=1)
    d = cont - world.dir0
    stop = in_gen & ~((d >= 0) & (d < 8))
    last = np.where(stop.any(axis=1), stop.argmax(axis=1), n_new - 1)
    inside = np.arange(steps)[None, :] <= last[:, None]
    scored = np.full_like(gen, world.pad_id)
    scored[:, :width] = b
    np.put_along_axis(scored, np.minimum(cells, gen.shape[1] - 1), np.where(inside, cont, world.pad_id), axis=1)
    scored = np.where(np.arange(gen.shape[1])[None, :] < (P + last + 1)[:, None], scored, world.pad_id)
    tp = predict.token_probs(scored[:, :int((P + last).max()) + 1])  # [n, W' - 1]
    pr = np.take_along_axis(tp, np.minimum(cells - 1, tp.shape[1] - 1), axis=1)
    return np.where(inside, cont, world.pad_id), inside, pr


def _accepts(predict: Predictor | None, world, X: np.ndarray, lengths: np.ndarray, need: np.ndarray,
             epsilon: float) -> np.ndarray:
    """bool ``[m, 9]``: trip tokens accepted after the ragged prefixes ``X`` (rows with
    ``need`` only): by the model (probability > epsilon) or, with ``predict=None``, by the
    world's exact support (probability > 0; every needed prefix must be possible)."""
    out = np.zeros((X.shape[0], 9), dtype=bool)
    rows = np.flatnonzero(need)
    if rows.size == 0:
        return out
    trip = _trip_ids(world)
    if predict is not None:
        out[rows] = predict.at(X[rows], lengths[rows] - 1)[:, trip] > epsilon
        return out
    for length in np.unique(lengths[rows]):
        r = rows[lengths[rows] == length]
        out[r] = world.next_token_probs(X[r, :length])[:, -1, trip] > 0
    return out


def _with_suffix(P: np.ndarray, lengths: np.ndarray, pair: np.ndarray, suffix: np.ndarray, level: int) -> np.ndarray:
    """Rows ``pair`` of prefixes ``P`` (true lengths ``lengths``) followed by their first
    ``level`` suffix tokens, cut to the longest row: only what is fed to a predictor."""
    ln = lengths[pair] + level
    width = int(ln.max())
    cols = np.arange(width)[None, :]
    shifted = np.clip(cols - lengths[pair][:, None], 0, max(level - 1, 0))
    tail = np.take_along_axis(suffix, shifted, axis=1) if level else np.zeros((pair.size, width), np.int64)
    grown = np.pad(P, ((0, 0), (0, max(0, width - P.shape[1]))))[pair][:, :width]
    return np.where(cols < lengths[pair][:, None], grown, tail)


def _distinction_pairs(predict: Predictor, world, A: np.ndarray, B: np.ndarray, lengths: np.ndarray,
                       suffix_len: int, epsilon: float, truth: str, return_sets: bool = False) -> dict[str, Any]:
    """Boundary counts for prefix pairs ``A[i]``, ``B[i]`` of equal length ``lengths[i]``
    (padded arrays). Enumerates suffixes ``u`` level by level, keeping those accepted from
    both states by the truth or by the model (only those extend into a minimal boundary
    element); every level costs two predictor calls for all pairs together."""
    trip = _trip_ids(world)
    m = A.shape[0]
    tr_a, tr_b = trace_trips(world, A), trace_trips(world, B)
    last = (np.arange(m), lengths - 1)
    pair = np.arange(m)
    suffix = np.zeros((m, 0), dtype=np.int64)
    v_a, v_b = tr_a["ok"][last].copy(), tr_b["ok"][last].copy()
    a_a, a_b = np.ones(m, bool), np.ones(m, bool)
    n_a, n_b = tr_a["node"][last].copy(), tr_b["node"][last].copy()
    d_a, d_b = tr_a["dest"], tr_b["dest"]
    succ = np.asarray(world.map.succ)
    counts = {"true": 0, "model": 0, "both": 0}
    sets: dict[str, set] = {"true_ab": set(), "true_ba": set(), "model_ab": set(), "model_ba": set()}
    for level in range(int(suffix_len)):
        ln = lengths[pair] + level
        xa, xb = _with_suffix(A, lengths, pair, suffix, level), _with_suffix(B, lengths, pair, suffix, level)
        if truth == "map":
            ta = legal_next(world, n_a, d_a[pair]) & v_a[:, None]
            tb = legal_next(world, n_b, d_b[pair]) & v_b[:, None]
        else:
            ta, tb = _accepts(None, world, xa, ln, v_a, epsilon), _accepts(None, world, xb, ln, v_b, epsilon)
        ma, mb = _accepts(predict, world, xa, ln, a_a, epsilon), _accepts(predict, world, xb, ln, a_b, epsilon)
        jt = (v_a & v_b)[:, None]
        jm = (a_a & a_b)[:, None]
        t_ab, t_ba = jt & ta & ~tb, jt & tb & ~ta
        m_ab, m_ba = jm & ma & ~mb, jm & mb & ~ma
        counts["true"] += int(t_ab.sum() + t_ba.sum())
        counts["model"] += int(m_ab.sum() + m_ba.sum())
        counts["both"] += int((t_ab & m_ab).sum() + (t_ba & m_ba).sum())
        if return_sets:
            for key, arr in (("true_ab", t_ab), ("true_ba", t_ba), ("model_ab", m_ab), ("model_ba", m_ba)):
                for r, x in zip(*np.nonzero(arr)):
                    sets[key].add(tuple(int(v) for v in suffix[r]) + (int(trip[x]),))
        if level + 1 >= suffix_len:
            break
        grow = (jt & ta & tb) | (jm & ma & mb)
        grow[:, 8] = False  # end closes a suffix
        r, x = np.nonzero(grow)
        if r.size == 0:
            break
        pair, suffix = pair[r], np.concatenate([suffix[r], trip[x][:, None]], axis=1)
        v_a, v_b = v_a[r] & ta[r, x], v_b[r] & tb[r, x]
        a_a, a_b = a_a[r] & ma[r, x], a_b[r] & mb[r, x]
        n_a = np.where(succ[n_a[r], x] >= 0, succ[n_a[r], x], n_a[r])
        n_b = np.where(succ[n_b[r], x] >= 0, succ[n_b[r], x], n_b[r])
    out: dict[str, Any] = dict(counts)
    if return_sets:
        out["sets"] = sets
    return out


def distinction_sets(predict: Any, world, prefix_a, prefix_b, suffix_len: int = 3,
                     epsilon: float = EPSILON, truth: str = "world") -> dict[str, set]:
    """The four boundaries of ONE prefix pair as sets of token-id tuples:
    ``true_ab``, ``true_ba``, ``model_ab``, ``model_ba`` (see the module docstring)."""
    if truth not in TRUTHS:
        raise AnalysisError(f"truth must be one of {', '.join(TRUTHS)}, got {truth!r}")
    A = np.asarray(prefix_a, dtype=np.int64)[None, :]
    B = np.asarray(prefix_b, dtype=np.int64)[None, :]
    if A.shape != B.shape:
        raise AnalysisError("distinction_sets: the two prefixes must have the same length")
    return _distinction_pairs(as_predictor(predict), world, A, B, np.array([A.shape[1]]), suffix_len, epsilon,
                              truth, return_sets=True)["sets"]


def distinction(predict: Any, world, sample, rng: np.random.Generator, epsilon: float = EPSILON,
                suffix_len: int = 3, truth: str = "world") -> dict[str, Any]:
    """Distinction precision / recall over pairs of trips in ``sample``; see the module
    docstring. Each trip is paired with another random trip; both are cut after the same
    number of turns; pairs at the same (node, destination) state are skipped."""
    if truth not in TRUTHS:
        raise AnalysisError(f"truth must be one of {', '.join(TRUTHS)}, got {truth!r}")
    predict = as_predictor(predict)
    n = len(sample)
    if n < 2:
        return {"precision": Rate(0, 0), "recall": Rate(0, 0), "pairs": 0, "skipped": 0}
    i = np.arange(n)
    j = (i + 1 + rng.integers(0, n - 1, size=n)) % n
    L = np.asarray(sample.extras["lengths"], dtype=np.int64)
    k = rng.integers(1, np.maximum(np.minimum(L[i], L[j]), 1) + 1)
    differ = (sample.states[i, 1 + k, :2] != sample.states[j, 1 + k, :2]).any(axis=1)
    differ &= np.minimum(L[i], L[j]) >= 1
    g = np.flatnonzero(differ)
    tot = {"true": 0, "model": 0, "both": 0}
    if g.size:
        width = 2 + int(k[g].max())
        keep = np.arange(width)[None, :] < 2 + k[g][:, None]
        A = np.where(keep, sample.tokens[i[g], :width], world.pad_id)
        B = np.where(keep, sample.tokens[j[g], :width], world.pad_id)
        tot = _distinction_pairs(predict, world, A, B, 2 + k[g], suffix_len, epsilon, truth)
    return {"precision": Rate(tot["both"], tot["model"]), "recall": Rate(tot["both"], tot["true"]),
            "pairs": int(differ.sum()), "skipped": int((~differ).sum())}


def _pairs_of(world, sample, rng: np.random.Generator) -> dict[str, Any]:
    """Prefix pairs of the distinction tests: each trip with another random trip, both cut
    after the same number of turns ``k``; pairs at the same (node, destination) are skipped."""
    n = len(sample)
    i = np.arange(n)
    j = (i + 1 + rng.integers(0, n - 1, size=n)) % n
    L = np.asarray(sample.extras["lengths"], dtype=np.int64)
    k = rng.integers(1, np.maximum(np.minimum(L[i], L[j]), 1) + 1)
    differ = (sample.states[i, 1 + k, :2] != sample.states[j, 1 + k, :2]).any(axis=1)
    differ &= np.minimum(L[i], L[j]) >= 1
    g = np.flatnonzero(differ)
    out: dict[str, Any] = {"pairs": int(differ.sum()), "skipped": int((~differ).sum()), "g": g}
    if g.size:
        width = 2 + int(k[g].max())
        keep = np.arange(width)[None, :] < 2 + k[g][:, None]
        out["A"] = np.where(keep, sample.tokens[i[g], :width], world.pad_id)
        out["B"] = np.where(keep, sample.tokens[j[g], :width], world.pad_id)
        out["lengths"] = 2 + k[g]
    return out


def _map_valid(succ: np.ndarray, node: int, dest: int, suffix: Any, dir0: int, end_id: int) -> bool:
    """Vafa et al.'s ``is_suffix_valid``: every turn a street from the current node, ``end``
    only at the destination; any other token is invalid."""
    for t in suffix:
        t = int(t)
        if t == end_id:
            if node != dest:
                return False
            continue
        d = t - dir0
        if not 0 <= d < 8 or succ[node, d] < 0:
            return False
        node = int(succ[node, d])
    return True


def _walks(succ: np.ndarray, K: int) -> np.ndarray:
    """bool ``[K + 1, N]``: a walk of exactly ``k`` turns starts at the node."""
    out = np.ones((K + 1, succ.shape[0]), dtype=bool)
    for k in range(1, K + 1):
        out[k] = ((succ >= 0) & out[k - 1][np.clip(succ, 0, None)]).any(axis=1)
    return out


def distinction_vafa(predict: Any, world, sample, rng: np.random.Generator, epsilon: float = EPSILON,
                     suffix_len: int = 5, n_suffix_samples: int = 5, max_turns: int | None = None,
                     pairs: dict[str, Any] | None = None) -> dict[str, Any]:
    """Distinction precision / recall as in Vafa et al.'s ``distinction_test.py`` (protocol
    ``vafa2024``), per prefix pair ``(A, B)`` (states differ), direction A -> B, then averaged
    over pairs (``PairMean``):

    - precision: ``n_suffix_samples`` suffixes sampled from the model after ``A``
      (epsilon-cutoff, until ``end`` or the turn budget); each one's first token with model
      probability <= epsilon after ``B`` ends a model boundary element (a sample that
      ``B`` accepts gives none). Precision = share of the distinct elements that the map
      accepts from A's state and rejects from B's state; **1 when the model's boundary is
      empty**.
    - recall: the true boundary = the shortest prefixes, rejected from B's state by the
      map, of the map-valid suffixes of exactly ``suffix_len`` tokens from A's state
      (``end`` only at A's destination and then only ``end`` again, so ``u end`` counts
      when ``len(u) < suffix_len``). Recall = share of them that the model accepts after
      ``A`` (every token > epsilon) and not after ``B``; **1 when the true boundary is
      empty**.

    Returns ``{"precision": PairMean, "recall": PairMean, "pairs", "skipped",
    "per_pair_precision", "per_pair_recall", "model_boundary", "true_boundary"}`` (the last
    two: elements per pair)."""
    predict = as_predictor(predict)
    if pairs is None:
        if len(sample) < 2:
            return {"precision": PairMean(()), "recall": PairMean(()), "pairs": 0, "skipped": 0,
                    "per_pair_precision": [], "per_pair_recall": [], "model_boundary": [], "true_boundary": []}
        pairs = _pairs_of(world, sample, rng)
    if not pairs["g"].size:
        return {"precision": PairMean(()), "recall": PairMean(()), "pairs": pairs["pairs"],
                "skipped": pairs["skipped"], "per_pair_precision": [], "per_pair_recall": [],
                "model_boundary": [], "true_boundary": []}
    A, B, lengths = pairs["A"], pairs["B"], pairs["lengths"]
    m = A.shape[0]
    succ = np.asarray(world.map.succ)
    tr_a, tr_b = trace_trips(world, A), trace_trips(world, B)
    last = (np.arange(m), lengths - 1)
    node_a, node_b = tr_a["node"][last], tr_b["node"][last]
    dest_a, dest_b = tr_a["dest"], tr_b["dest"]
    ok_a, ok_b = tr_a["ok"][last], tr_b["ok"][last]
    # ---- precision: sampled model suffixes
    S = int(n_suffix_samples)
    cont, inside, pr = _sample_and_score(predict, world, A, B, lengths, S, epsilon, rng, max_turns)
    fail = inside & ~(pr > epsilon)
    first = np.where(fail.any(axis=1), fail.argmax(axis=1), -1)
    precision, model_sets = [], []
    for p in range(m):
        elems = {tuple(int(t) for t in cont[r, :first[r] + 1]) for r in range(p * S, (p + 1) * S) if first[r] >= 0}
        model_sets.append(elems)
        if not elems:
            precision.append(1.0)
            continue
        hit = sum(1 for e in elems
                  if ok_a[p] and _map_valid(succ, int(node_a[p]), int(dest_a[p]), e, world.dir0, world.end_id)
                  and not (ok_b[p] and _map_valid(succ, int(node_b[p]), int(dest_b[p]), e, world.dir0,
                                                  world.end_id)))
        precision.append(hit / len(elems))
    # ---- recall: the true boundary, level by level over suffixes u valid from both states
    Lsuf = int(suffix_len)
    walks = _walks(succ, Lsuf)
    dests = np.unique(np.clip(dest_a, 0, None))
    dist = world.map.distances_to(dests)  # [k, N] turns to each destination
    drow = np.searchsorted(dests, np.clip(dest_a, 0, None))
    trip = _trip_ids(world)
    n_true = np.zeros(m, dtype=np.int64)
    n_hit = np.zeros(m, dtype=np.int64)
    true_sets: list[set] = [set() for _ in range(m)]
    pair = np.flatnonzero(ok_a & ok_b)
    # a pair whose prefix plus a full suffix does not fit the model's context cannot be
    # scored for recall: it is left out and counted (``recall_context_skipped``)
    cap = getattr(predict, "max_length", None)
    scored = np.ones(m, dtype=bool)
    if cap is not None:
        fits = lengths[pair] + Lsuf - 1 <= int(cap)
        scored[pair[~fits]] = False
        pair = pair[fits]
    suffix = np.zeros((pair.size, 0), dtype=np.int64)
    na, nb = node_a[pair].copy(), node_b[pair].copy()
    acc_a, acc_b = np.ones(pair.size, bool), np.ones(pair.size, bool)
    for level in range(Lsuf):
        if pair.size == 0:
            break
        ln = lengths[pair] + level
        xa, xb = _with_suffix(A, lengths, pair, suffix, level), _with_suffix(B, lengths, pair, suffix, level)
        ta = legal_next(world, na, dest_a[pair])
        tb = legal_next(world, nb, dest_b[pair])
        left = Lsuf - level - 1  # tokens still to come after u + x
        nxt = np.clip(succ[na], 0, None)  # [r, 8]
        ext_turn = walks[left][nxt] | (dist[drow[pair]][np.arange(pair.size)[:, None], nxt] <= left - 1)
        ext = np.concatenate([ext_turn, np.ones((pair.size, 1), bool)], axis=1) & ta  # end pads with end
        ma = _accepts(predict, world, xa, ln, acc_a, epsilon) & acc_a[:, None]
        mb = _accepts(predict, world, xb, ln, acc_b, epsilon) & acc_b[:, None]
        bound = ext & ~tb
        hit = bound & ma & ~mb
        np.add.at(n_true, pair, bound.sum(axis=1))
        np.add.at(n_hit, pair, hit.sum(axis=1))
        for r, x in zip(*np.nonzero(bound)):
            true_sets[pair[r]].add(tuple(int(v) for v in suffix[r]) + (int(trip[x]),))
        grow = ext & tb
        grow[:, 8] = False  # end closes a suffix (only end may follow)
        r, x = np.nonzero(grow)
        pair, suffix = pair[r], np.concatenate([suffix[r], trip[x][:, None]], axis=1)
        acc_a, acc_b = ma[r, x], mb[r, x]
        na, nb = succ[na[r], x], succ[nb[r], x]
    recall = np.where(n_true > 0, n_hit / np.maximum(n_true, 1), 1.0)[scored]
    return {"precision": PairMean(tuple(float(v) for v in precision)),
            "recall": PairMean(tuple(float(v) for v in recall)), "pairs": pairs["pairs"],
            "skipped": pairs["skipped"], "per_pair_precision": [float(v) for v in precision],
            "per_pair_recall": [float(v) for v in recall], "model_boundary": model_sets, "true_boundary": true_sets,
            "recall_context_skipped": int((~scored).sum())}


def distinction_pair_vafa(predict: Any, world, prefix_a, prefix_b, rng: np.random.Generator | None = None,
                          epsilon: float = EPSILON, suffix_len: int = 5, n_suffix_samples: int = 5,
                          max_turns: int | None = None) -> dict[str, Any]:
    """``distinction_vafa`` of ONE prefix pair (equal lengths): ``precision``, ``recall``
    (floats), ``model_boundary`` and ``true_boundary`` (sets of token-id tuples)."""
    A = np.asarray(prefix_a, dtype=np.int64)[None, :]
    B = np.asarray(prefix_b, dtype=np.int64)[None, :]
    if A.shape != B.shape:
        raise AnalysisError("distinction_pair_vafa: the two prefixes must have the same length")
    pairs = {"pairs": 1, "skipped": 0, "g": np.array([0]), "A": A, "B": B, "lengths": np.array([A.shape[1]])}
    res = distinction_vafa(predict, world, None, np.random.default_rng(0) if rng is None else rng, epsilon,
                           suffix_len, n_suffix_samples, max_turns, pairs=pairs)
    return {"precision": res["per_pair_precision"][0], "recall": res["per_pair_recall"][0],
            "model_boundary": res["model_boundary"][0], "true_boundary": res["true_boundary"][0]}


def explicit_pairs(world, prefixes_a: Any, prefixes_b: Any) -> dict[str, Any]:
    """Hand-chosen prefix pairs (lists of equal-length token lists, pair by pair) in the
    padded form that ``distinction_vafa`` / ``distinction_on_pairs`` / ``compression_on_pairs``
    take."""
    pa = [list(map(int, a)) for a in prefixes_a]
    pb = [list(map(int, b)) for b in prefixes_b]
    if len(pa) != len(pb) or any(len(a) != len(b) for a, b in zip(pa, pb)):
        raise AnalysisError("explicit_pairs: pairs of equal-length prefixes expected")
    width = max(len(a) for a in pa)
    A = np.full((len(pa), width), world.pad_id, dtype=np.int64)
    B = A.copy()
    for r, (a, b) in enumerate(zip(pa, pb)):
        A[r, :len(a)], B[r, :len(b)] = a, b
    return {"pairs": len(pa), "skipped": 0, "g": np.arange(len(pa)), "A": A, "B": B,
            "lengths": np.array([len(a) for a in pa], dtype=np.int64)}


def distinction_on_pairs(predict: Any, world, pairs: dict[str, Any], protocol: str = DEFAULT_PROTOCOL,
                         rng: np.random.Generator | None = None, epsilon: float = EPSILON,
                         suffix_len: int | None = None, n_suffix_samples: int | None = None,
                         truth: str | None = None, max_turns: int | None = None) -> dict[str, Any]:
    """Distinction on given pairs (``explicit_pairs``) under ``protocol``: ``vafa2024`` gives
    ``distinction_vafa``'s per-pair lists and means; ``exact`` the pooled counts (both
    directions) as ``Rate``s."""
    block = resolve_protocol(protocol, epsilon, suffix_len=suffix_len, truth=truth,
                             **({"n_suffix_samples": n_suffix_samples} if protocol == "vafa2024" else {}))
    rng = np.random.default_rng(0) if rng is None else rng
    if protocol == "vafa2024":
        return distinction_vafa(predict, world, None, rng, epsilon, int(block["suffix_len"]),
                                int(block["n_suffix_samples"]), max_turns, pairs=pairs)
    tot = _distinction_pairs(as_predictor(predict), world, pairs["A"], pairs["B"], pairs["lengths"],
                             int(block["suffix_len"]), epsilon, block["truth"])
    return {"precision": Rate(tot["both"], tot["model"]), "recall": Rate(tot["both"], tot["true"]),
            "pairs": pairs["pairs"], "skipped": 0}


def compression_on_pairs(predict: Any, world, pairs: dict[str, Any], n_continuations: int = 30,
                         rng: np.random.Generator | None = None, epsilon: float = EPSILON,
                         max_turns: int | None = None) -> dict[str, Any]:
    """Compression of given pairs (both prefixes at the same state): ``per_pair`` (bool),
    ``pairs`` (a ``Rate``, the per-pair mean) and ``continuations``."""
    predict = as_predictor(predict)
    M = int(n_continuations)
    rng = np.random.default_rng(0) if rng is None else rng
    _, inside, pr = _sample_and_score(predict, world, pairs["A"], pairs["B"], pairs["lengths"], M, epsilon, rng,
                                      max_turns)
    accepted = np.where(inside, pr > epsilon, True).all(axis=1)
    per_pair = accepted.reshape(-1, M).all(axis=1)
    return {"per_pair": per_pair, "pairs": Rate(int(per_pair.sum()), per_pair.size),
            "continuations": Rate(int(accepted.sum()), accepted.size)}


# --------------------------------------------------------------------------------------
# everything at once
# --------------------------------------------------------------------------------------
@dataclass
class WorldModelResult:
    """All taxi world-model metrics of one predictor (each a ``Rate``; distinction under
    protocol ``vafa2024`` a ``PairMean``, the mean of per-pair scores)."""

    next_token: Rate
    trajectory_legal: Rate
    trajectory_valid: Rate
    compression: Rate
    compression_continuations: Rate
    distinction_precision: Any  # Rate (exact) or PairMean (vafa2024)
    distinction_recall: Any
    #: ``{"random@0.75": {"legal": Rate, "valid": Rate}, ...}``
    detour: dict[str, dict[str, Rate]] = field(default_factory=dict)
    settings: dict[str, Any] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=dict)
    #: the record's ``protocol`` block (``resolve_protocol``)
    protocol: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for name in ("next_token", "trajectory_legal", "trajectory_valid", "compression",
                     "compression_continuations", "distinction_precision", "distinction_recall"):
            out[name] = getattr(self, name).to_dict()
        out["detour"] = {key: {k: r.to_dict() for k, r in v.items()} for key, v in self.detour.items()}
        out["settings"] = dict(self.settings)
        out["counts"] = dict(self.counts)
        out["protocol"] = dict(self.protocol)
        return out


def trip_settings(world) -> dict[str, Any]:
    """The trip settings of a taxi world (what ``Taxi.variant`` changes)."""
    return {"walk": world.walk, "min_len": world.min_len, "max_len": world.max_len,
            "noise": world.noise if world.walk == "noisy" else None,
            "pairs": getattr(world, "pairs", "train") if getattr(world, "holdout", 0) else None}


def ood_world(world, text: str, n_ctx: int | None = None):
    """An out-of-distribution evaluation world: the same map (same tokens) with other trips.

    ``text``: ``longer`` (random walks longer than any in training: ``min_len`` = the
    training ``max_len`` + 1, ``max_len`` the longest the model's context ``n_ctx`` holds), or
    ``key=value`` settings among ``walk``, ``min_len``, ``max_len``, ``noise``, ``pairs`` (e.g.
    ``walk=random``: random-walk trips for a model trained on shortest paths;
    ``pairs=held_out``: the origin/destination pairs a world with ``holdout > 0`` kept out
    of training)."""
    check_taxi_world(world)
    text = str(text).strip()
    if text == "longer":
        if world.walk != "random":
            raise AnalysisError(f"ood 'longer' needs a random-walk training world (this one: walk={world.walk}); "
                                "every shortest path is already in training: try walk=random")
        top = None if n_ctx is None else int(n_ctx) - 3  # origin, destination, end
        lo = int(world.max_len) + 1
        if top is None or top < lo:
            raise AnalysisError(f"ood 'longer': trips of more than {world.max_len} turns need a context of at "
                                f"least {lo + 3} tokens; the model's is {n_ctx} (train with a larger --n-ctx)")
        return world.variant(walk="random", min_len=lo, max_len=top)
    changes: dict[str, Any] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        key, eq, val = part.partition("=")
        if not eq:
            raise AnalysisError(f"ood {text!r}: {part!r} is not key=value (or use 'longer')")
        key = key.strip()
        if key in ("min_len", "max_len"):
            try:
                changes[key] = int(val)
            except ValueError:
                raise AnalysisError(f"ood {text!r}: {key} must be an integer, got {val!r}") from None
        elif key == "noise":
            try:
                changes[key] = float(val)
            except ValueError:
                raise AnalysisError(f"ood {text!r}: noise must be a number, got {val!r}") from None
        else:
            changes[key] = val.strip()
    if not changes:
        raise AnalysisError("ood: empty setting (use 'longer' or key=value, e.g. walk=random)")
    try:
        out = world.variant(**changes)
    except WorldError as exc:
        raise AnalysisError(f"ood {text!r}: {exc}") from None
    if n_ctx is not None and out.default_length > int(n_ctx):
        raise AnalysisError(f"ood {text!r}: trips of up to {out.max_len} turns need {out.default_length} tokens; "
                            f"the model's context is {n_ctx}")
    if trip_settings(out) == trip_settings(world):
        raise AnalysisError(f"ood {text!r}: the same trips as in training")
    return out


def detour_key(kind: str, p: float) -> str:
    return f"{kind}@{p:g}"


def evaluate_world_model(predict: Any, world, n_pairs: int = 200, seed: int = 0, epsilon: float = EPSILON,
                         max_turns: int | None = None, n_continuations: int | None = None,
                         suffix_len: int | None = None, detour_probs: tuple[float, ...] = DETOUR_PROBS,
                         detour_kinds: tuple[str, ...] = DETOUR_KINDS, truth: str | None = None,
                         protocol: str = DEFAULT_PROTOCOL, n_suffix_samples: int | None = None) -> WorldModelResult:
    """Every metric of the module docstring on ``n_pairs`` fresh trips drawn from ``world``
    with ``seed`` (the same trips for every predictor given the same world and seed).

    ``protocol``: ``"vafa2024"`` (default; Vafa et al.'s reference code: 30 continuations
    per compression pair, distinction per pair from 5 sampled model suffixes and the map's
    boundary of suffixes of length 5, averaged over pairs) or ``"exact"`` (distinction by
    exact enumeration of suffixes up to length 3 against the world's support, pooled
    counts). Parameters left None take the protocol's values; others are used and listed as
    deviations in ``result.protocol``."""
    check_taxi_world(world)
    predict = as_predictor(predict)
    if n_pairs < 1:
        raise AnalysisError(f"n_pairs must be positive, got {n_pairs}")
    if not 0 < epsilon < 1:
        raise AnalysisError(f"epsilon must lie in (0, 1), got {epsilon}")
    given = {"n_continuations": n_continuations, "suffix_len": suffix_len, "truth": truth}
    if protocol == "vafa2024":
        given["n_suffix_samples"] = n_suffix_samples
    elif n_suffix_samples is not None:
        raise AnalysisError("n_suffix_samples belongs to protocol vafa2024 (exact enumerates every suffix)")
    block = resolve_protocol(protocol, epsilon, **given)
    n_continuations, suffix_len, truth = block["n_continuations"], block["suffix_len"], block["truth"]
    if truth not in TRUTHS:
        raise AnalysisError(f"truth must be one of {', '.join(TRUTHS)}, got {truth!r}")
    if protocol == "vafa2024" and truth != "map":
        raise AnalysisError("protocol vafa2024 judges distinction by the street map (truth='map'); "
                            "use protocol 'exact' for the world's support")
    for kind in detour_kinds:
        if kind not in DETOUR_KINDS:
            raise AnalysisError(f"unknown detour kind {kind!r}; choose one of {', '.join(DETOUR_KINDS)}")
    sample = world.sample(int(n_pairs), seed=np.random.default_rng([int(seed), 0x7A]))
    budget = turn_budget(world, predict, 2, max_turns)
    nt = next_token_validity(predict, world, sample.tokens)
    # plain greedy trips and every detour setting in ONE generation (one call per step)
    settings_list = [(None, 0.0)] + [(kind, float(p)) for p in detour_probs for kind in detour_kinds]
    n = int(n_pairs)
    prompts = np.tile(sample.tokens[:, :2], (len(settings_list), 1))
    kinds = [kind for kind, _ in settings_list for _ in range(n)]
    probs = np.repeat([p for _, p in settings_list], n)
    legal_all, valid_all, _ = _trajectory_flags(predict, world, prompts, budget, kinds, probs,
                                                np.random.default_rng([int(seed), 3]))
    legal, valid = Rate(int(legal_all[:n].sum()), n), Rate(int(valid_all[:n].sum()), n)
    comp = compression(predict, world, sample, np.random.default_rng([int(seed), 1]), epsilon,
                       int(n_continuations), budget)
    rng_d = np.random.default_rng([int(seed), 2])
    if protocol == "vafa2024":
        dist = distinction_vafa(predict, world, sample, rng_d, epsilon, int(suffix_len),
                                int(block["n_suffix_samples"]), budget)
    else:
        dist = distinction(predict, world, sample, rng_d, epsilon, int(suffix_len), truth)
    detours: dict[str, dict[str, Rate]] = {}
    for b, (kind, p) in enumerate(settings_list[1:], start=1):
        block_rows = slice(b * n, (b + 1) * n)
        detours[detour_key(kind, p)] = {"legal": Rate(int(legal_all[block_rows].sum()), n),
                                        "valid": Rate(int(valid_all[block_rows].sum()), n)}
    settings = {"n_pairs": int(n_pairs), "seed": int(seed), "epsilon": float(epsilon), "max_turns": budget,
                "n_continuations": int(n_continuations), "suffix_len": int(suffix_len), "truth": truth,
                "detour_probs": [float(p) for p in detour_probs], "detour_kinds": list(detour_kinds),
                "protocol": protocol}
    if protocol == "vafa2024":
        settings["n_suffix_samples"] = int(block["n_suffix_samples"])
    settings.update(regime_of(predict))  # kv_cache / full_forward: how the trips were decoded
    block = {**block, "detour_kinds": list(detour_kinds), "detour_probs": [float(p) for p in detour_probs]}
    counts = {"compression_skipped": comp["skipped"], "distinction_pairs": dist["pairs"],
              "distinction_skipped": dist["skipped"]}
    if "recall_context_skipped" in dist:  # pairs too long for the model's context to score recall
        counts["distinction_recall_context_skipped"] = dist["recall_context_skipped"]
    return WorldModelResult(next_token=nt, trajectory_legal=legal, trajectory_valid=valid,
                            compression=comp["pairs"], compression_continuations=comp["continuations"],
                            distinction_precision=dist["precision"], distinction_recall=dist["recall"],
                            detour=detours, settings=settings, counts=counts, protocol=block)


__all__ = ["EPSILON", "DETOUR_KINDS", "DETOUR_PROBS", "Rate", "wilson_interval", "Predictor", "ModelPredictor",
           "OraclePredictor", "model_predictor", "oracle_predictor", "as_predictor", "trace_trips", "legal_next",
           "generate", "turn_budget", "next_token_validity", "trajectory_validity", "compression", "distinction",
           "distinction_sets", "WorldModelResult", "evaluate_world_model", "detour_key", "check_taxi_world",
           "PROTOCOLS", "DEFAULT_PROTOCOL", "resolve_protocol", "PairMean", "distinction_vafa",
           "distinction_pair_vafa", "explicit_pairs", "distinction_on_pairs", "compression_on_pairs",
           "ood_world", "trip_settings"]
