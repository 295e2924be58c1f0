"""Hidden Markov processes with exact belief states (Shai et al. 2024).

An HMM is given by a tensor ``T[x, i, j] = P(emit x, move to j | in i)``. The belief state
(the "mixed state") after a prefix is the posterior over the current hidden state; it is
updated by ``eta' = eta T[x] / (eta T[x] 1)`` and predicts the next token through
``P(x | eta) = eta T[x] 1``. Because both are linear in ``eta``, everything here is a few
batched matrix products per position, vectorised over the sequences.

``Mess3``, ``RRXOR`` and ``ZeroOneRandom`` build the standard processes of the
computational-mechanics literature.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import scipy.linalg

from .base import Sample, World, WorldError, as_rng, check_tokens

ROW_TOL = 1e-8
SMALL_S = 32  # up to this many hidden states, batched einsum beats BLAS matmuls


@dataclass
class MixedStates:
    """Distinct beliefs reachable from the initial belief.

    beliefs: float64 ``[K, S]``.
    probs: float64 ``[K]``: probability of holding each belief at a position drawn
        uniformly from ``0..max_length`` (position 0 = before any token); sums to 1.
    first_length: int64 ``[K]``: the shortest prefix length that reaches each belief.
    """

    beliefs: np.ndarray
    probs: np.ndarray
    first_length: np.ndarray

    def __len__(self) -> int:
        return int(self.beliefs.shape[0])


def _entropy(p: np.ndarray) -> np.ndarray:
    """Shannon entropy (nats) over the last axis, with 0 log 0 = 0."""
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = np.where(p > 0, -p * np.log(np.where(p > 0, p, 1.0)), 0.0)
    return terms.sum(axis=-1)


def _merge_grid(beliefs: np.ndarray, probs: np.ndarray, scale: float) -> tuple[np.ndarray, np.ndarray]:
    """``_merge`` on a grid of spacing ``1 / scale`` instead of ``decimals`` places."""
    b, p, _ = _merge(beliefs * scale, probs, 0)
    return b / scale, p


def _merge(beliefs: np.ndarray, probs: np.ndarray, decimals: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Merge beliefs that agree to ``decimals`` places. Returns (beliefs, probs, inverse);
    a merged belief is the probability-weighted mean of its members, so the mixture of
    beliefs (and hence every next-token probability) is preserved exactly."""
    if len(probs) == 0:
        return beliefs, probs, np.zeros(0, dtype=np.int64)
    keys = np.round(beliefs, decimals)
    order = np.lexsort(keys.T[::-1])  # rows sorted lexicographically (faster than np.unique)
    sk = keys[order]
    new_group = np.empty(len(sk), dtype=bool)
    new_group[0] = True
    new_group[1:] = (sk[1:] != sk[:-1]).any(axis=1)
    inverse = np.empty(len(sk), dtype=np.int64)
    inverse[order] = np.cumsum(new_group) - 1
    k = int(inverse.max()) + 1
    p = np.bincount(inverse, weights=probs, minlength=k)
    b = np.stack([np.bincount(inverse, weights=probs * beliefs[:, s], minlength=k)
                  for s in range(beliefs.shape[1])], axis=1)
    b /= np.where(p > 0, p, 1.0)[:, None]
    return b, p, inverse


class HMM(World):
    """Edge-emitting hidden Markov process.

    T: ``[V, S, S]`` with ``T[x, i, j] = P(emit x, go to j | in i)``; ``sum_x T[x]`` must be
        row-stochastic.
    initial: belief before the first token; defaults to the stationary distribution of
        ``sum_x T`` (so sampled sequences are stationary and every position is alike).
    ``Sample.states[:, t]`` is the hidden state *after* emitting token ``t`` (the state moved
    to), the same state ``beliefs(tokens)[:, t]`` is a posterior over.
    """

    def __init__(self, T: Any, initial: Any = None, name: str = "hmm",
                 token_names: list[str] | None = None) -> None:
        self.name = name
        self.T = self._check_T(T)
        V, S, _ = self.T.shape
        self._initial_given = initial is not None
        self.initial = self._check_initial(initial, S) if initial is not None else self._stationary()
        if token_names is None:
            token_names = [str(x) for x in range(V)]
        token_names = [str(t) for t in token_names]
        if len(token_names) != V:
            raise WorldError(f"{self._who}: {len(token_names)} token names for {V} tokens")
        if len(set(token_names)) != V:
            raise WorldError(f"{self._who}: token names are not unique: {token_names}")
        self._token_names = token_names
        # E[i, x] = P(emit x | in i); Tcat[i, x*S + j] = T[x, i, j] for one matmul over all x
        self.emission = self.T.sum(axis=2).T.copy()
        self._Tcat = self.T.transpose(1, 0, 2).reshape(S, V * S).copy()

    @property
    def _who(self) -> str:
        return f"HMM {self.name!r}"

    # --- validation -------------------------------------------------------------------
    def _check_T(self, T: Any) -> np.ndarray:
        who = f"HMM {self.name!r}"
        try:
            arr = np.array(T, dtype=np.float64)
        except (TypeError, ValueError) as exc:
            raise WorldError(f"{who}: T is not a numeric array ({exc})") from None
        if arr.ndim != 3:
            raise WorldError(f"{who}: T must be 3-D [tokens, states, states], got shape {arr.shape}")
        V, S, S2 = arr.shape
        if S != S2:
            raise WorldError(f"{who}: T[x] must be square, got shape {arr.shape}")
        if V == 0 or S == 0:
            raise WorldError(f"{who}: T must have at least one token and one state, got shape {arr.shape}")
        if not np.isfinite(arr).all():
            x, i, j = np.argwhere(~np.isfinite(arr))[0]
            raise WorldError(f"{who}: T[{x}, {i}, {j}] = {arr[x, i, j]} is not finite")
        if (arr < 0).any():
            x, i, j = np.argwhere(arr < 0)[0]
            raise WorldError(f"{who}: T[{x}, {i}, {j}] = {arr[x, i, j]:g} is negative")
        rows = arr.sum(axis=(0, 2))
        bad = np.flatnonzero(np.abs(rows - 1.0) > ROW_TOL)
        if bad.size:
            i = int(bad[0])
            raise WorldError(f"{who}: row {i} of sum_x T sums to {rows[i]:.10g}, not 1")
        arr.setflags(write=False)
        return arr

    def _check_initial(self, initial: Any, S: int) -> np.ndarray:
        try:
            p = np.array(initial, dtype=np.float64)
        except (TypeError, ValueError) as exc:
            raise WorldError(f"{self._who}: initial is not a numeric vector ({exc})") from None
        if p.shape != (S,):
            raise WorldError(f"{self._who}: initial must have shape ({S},), got {p.shape}")
        if not np.isfinite(p).all() or (p < 0).any():
            raise WorldError(f"{self._who}: initial must be finite and non-negative, got {p.tolist()}")
        if abs(p.sum() - 1.0) > ROW_TOL:
            raise WorldError(f"{self._who}: initial sums to {p.sum():.10g}, not 1")
        p = p / p.sum()
        p.setflags(write=False)
        return p

    def _stationary(self) -> np.ndarray:
        """Left eigenvector of ``sum_x T`` for eigenvalue 1 (null space of ``M^T - I``)."""
        M = self.T.sum(axis=0)
        ns = scipy.linalg.null_space(M.T - np.eye(M.shape[0]), rcond=1e-10)
        if ns.shape[1] != 1:
            raise WorldError(f"{self._who}: the stationary distribution is not unique "
                             f"({ns.shape[1]} closed classes); pass initial=")
        v = ns[:, 0] / ns[:, 0].sum()
        if (v < -1e-9).any():
            raise WorldError(f"{self._who}: could not find a non-negative stationary distribution; pass initial=")
        v = np.clip(v, 0.0, None)
        v /= v.sum()
        v.setflags(write=False)
        return v

    # --- World interface --------------------------------------------------------------
    @property
    def token_names(self) -> list[str]:
        return list(self._token_names)

    @property
    def n_states(self) -> int:
        return int(self.T.shape[1])

    def sample(self, n: int, length: int, seed: int | np.random.Generator | None = None) -> Sample:
        """Draw ``n`` stationary sequences (hidden start ~ ``initial``); loops over time only."""
        if n < 0 or length < 0:
            raise WorldError(f"{self._who}: n and length must be >= 0, got n={n}, length={length}")
        rng = as_rng(seed)
        V, S, _ = self.T.shape
        tokens = np.empty((n, length), dtype=np.int64)
        states = np.empty((n, length), dtype=np.int64)
        # joint (token, next state) draw: cumulative over the flattened [x, j] row of state i
        cum = np.cumsum(self._Tcat, axis=1)
        cum /= cum[:, -1:]
        state = rng.choice(S, size=n, p=self.initial)
        for t in range(length):
            u = rng.random(n)
            k = (u[:, None] >= cum[state]).sum(axis=1)
            k = np.minimum(k, V * S - 1)
            tokens[:, t], state = np.divmod(k, S)
            states[:, t] = state
        return Sample(tokens=tokens, states=states)

    def beliefs(self, tokens: np.ndarray) -> np.ndarray:
        """float64 ``[n, length, S]``: posterior over the hidden state after each token.

        A prefix of probability zero under the model has no posterior; it raises
        ``WorldError`` naming the sequence and position rather than returning NaN."""
        tokens = check_tokens(tokens, self.vocab_size, self._who)
        n, length = tokens.shape
        V, S, _ = self.T.shape
        out = np.empty((n, length, S))
        eta = np.broadcast_to(self.initial, (n, S))
        for t in range(length):
            u = self._advance(eta, tokens[:, t])
            z = u.sum(axis=1)
            if (z <= 0).any():
                i = int(np.flatnonzero(z <= 0)[0])
                name = self._token_names[int(tokens[i, t])]
                raise WorldError(f"{self._who}: sequence {i} has probability 0 at position {t} "
                                 f"(token {name!r} cannot follow the prefix)")
            eta = u / z[:, None]
            out[:, t] = eta
        return out

    def _advance(self, eta: np.ndarray, x: np.ndarray) -> np.ndarray:
        """Unnormalised ``eta[i] @ T[x[i]]`` for every row ``i``. Few states: one batched
        product over gathered ``T[x]`` (BLAS is slow on such skinny matrices); many states:
        one matmul per token value, so no ``[n, S, S]`` gather is ever built."""
        if self.n_states <= SMALL_S:
            return np.einsum("ns,nsj->nj", eta, self.T[x])
        out = np.empty(eta.shape)
        for v in np.unique(x):
            rows = x == v
            out[rows] = eta[rows] @ self.T[v]
        return out

    def next_token_probs(self, tokens: np.ndarray) -> np.ndarray:
        """float64 ``[n, length, V]``: ``P(x_{t+1} | x_0..x_t) = eta_t T[x] 1``."""
        return self.beliefs(tokens) @ self.emission

    # --- mixed states and the loss floor ----------------------------------------------
    def _step(self, beliefs: np.ndarray, probs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """All one-token successors of a weighted set of beliefs (zero-probability ones dropped)."""
        V, S, _ = self.T.shape
        if S <= SMALL_S:
            u = np.einsum("ks,xsj->kxj", beliefs, self.T)  # [K, V, S]
        else:
            u = (beliefs @ self._Tcat).reshape(-1, V, S)
        z = u.sum(axis=2)  # [K, V] = P(x | belief)
        keep = z > 0
        new_b = u[keep] / z[keep][:, None]
        new_p = (probs[:, None] * z)[keep]
        return new_b, new_p

    def myopic_entropy(self, length: int, decimals: int = 10, max_beliefs: int = 50_000) -> np.ndarray:
        """float64 ``[length]``: ``h(L) = H(X_L | X_1..X_{L-1})`` in nats for ``L = 1..length``.

        This is the lowest mean cross-entropy any model can reach on the ``L``-th token, so
        the loss floor at target position ``t`` (0-based, no BOS) is ``h(t + 1)``. Computed by
        pushing the mixed-state distribution (distinct beliefs with their probabilities)
        forward one token at a time, merging beliefs equal to ``decimals`` places; once the
        distribution stops changing, every later ``h`` equals the last one.

        Processes whose beliefs never coincide (Mess3) grow ``V**L`` mixed states. Beyond
        ``max_beliefs`` the merge grid is coarsened (halved) until they fit; merging keeps
        the mean belief, so next-token marginals stay exact and ``h`` is off only by a
        second-order amount (about 1e-6 nats for Mess3), always upwards; on the coarse grid the
        computation also stops once ``h`` has changed by less than 1e-12 for 5 steps."""
        if length < 0:
            raise WorldError(f"{self._who}: length must be >= 0, got {length}")
        b = self.initial[None, :].copy()
        p = np.ones(1)
        h = np.empty(length)
        scale = 10.0 ** decimals
        settled = 0
        for L in range(length):
            h[L] = float(p @ _entropy(b @ self.emission))
            if L + 1 == length:
                break
            nb, np_ = self._step(b, p)
            nb, np_ = _merge_grid(nb, np_, scale)
            while len(np_) > max_beliefs:  # the grid only ever gets coarser
                scale /= 2.0
                nb, np_ = _merge_grid(nb, np_, scale)
            if nb.shape == b.shape and np.allclose(nb, b, rtol=0, atol=1e-13) \
                    and np.allclose(np_, p, rtol=0, atol=1e-13):
                h[L + 1:] = h[L]  # fixed point: the distribution, hence h, no longer changes
                break
            # on a coarsened grid the values are approximate anyway: stop once h has settled
            settled = settled + 1 if L > 0 and abs(h[L] - h[L - 1]) < 1e-12 else 0
            if scale < 10.0 ** decimals and settled >= 5:
                h[L + 1:] = h[L]
                break
            b, p = nb, np_
        return h

    def entropy_rate_bound(self) -> float:
        """``H(X | current hidden state)`` under ``initial``: a lower bound on the entropy rate
        (the loss even a model that knew the hidden state could not beat)."""
        return float(self.initial @ _entropy(self.emission))

    def enumerate_beliefs(self, max_length: int, decimals: int = 10,
                          max_beliefs: int = 1_000_000) -> MixedStates:
        """Distinct beliefs reached by prefixes of length ``0..max_length`` (0 = the initial
        belief), merged when equal to ``decimals`` places. Raises ``WorldError`` if one
        length alone has more than ``max_beliefs`` of them (Mess3 has ``3**L``)."""
        if max_length < 0:
            raise WorldError(f"{self._who}: max_length must be >= 0, got {max_length}")
        b = self.initial[None, :].copy()
        p = np.ones(1)
        all_b, all_p, all_len = [b], [p], [np.zeros(1, dtype=np.int64)]
        for L in range(1, max_length + 1):
            b, p = self._step(b, p)
            b, p, _ = _merge(b, p, decimals)
            if len(p) > max_beliefs:
                raise WorldError(f"{self._who}: more than {max_beliefs} distinct beliefs at length {L}; "
                                 "lower max_length or raise max_beliefs")
            all_b.append(b)
            all_p.append(p)
            all_len.append(np.full(len(p), L, dtype=np.int64))
        b = np.concatenate(all_b)
        p = np.concatenate(all_p) / (max_length + 1)
        lens = np.concatenate(all_len)
        mb, mp, inv = _merge(b, p, decimals)
        first = np.full(len(mp), max_length + 1, dtype=np.int64)
        np.minimum.at(first, inv, lens)
        order = np.lexsort((-mp, first))  # by first length, then most probable
        return MixedStates(beliefs=mb[order], probs=mp[order], first_length=first[order])

    # --- serialisation ----------------------------------------------------------------
    def spec(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "kind": "hmm",
            "name": self.name,
            "T": self.T.tolist(),
            "initial": self.initial.tolist() if self._initial_given else None,
            "token_names": self.token_names,
        }
        params = getattr(self, "params", None)
        if params:
            out["params"] = dict(params)
        return out

    @classmethod
    def from_spec(cls, spec: dict[str, Any]) -> HMM:
        """Rebuild from ``spec()``. A named process (``mess3``, ...) with its ``params`` is
        rebuilt through its factory so the result keeps its type and parameters."""
        if not isinstance(spec, dict) or spec.get("kind") != "hmm":
            raise WorldError("HMM.from_spec: spec must be a dict with kind 'hmm'")
        if "T" not in spec:
            raise WorldError("HMM.from_spec: spec has no 'T'")
        factory = _NAMED.get(spec.get("name", ""))
        if factory is not None and "params" in spec and spec.get("initial") is None:
            world = factory(**spec["params"])
            if np.array_equal(world.T, np.asarray(spec["T"], dtype=np.float64)):
                return world
        return HMM(spec["T"], initial=spec.get("initial"), name=spec.get("name", "hmm"),
                   token_names=spec.get("token_names"))


def _check_prob(who: str, **values: float) -> None:
    for k, v in values.items():
        if not 0.0 <= float(v) <= 1.0:
            raise WorldError(f"{who}: {k} must lie in [0, 1], got {v}")


class Mess3(HMM):
    """Mess3(x, a): three hidden states; stay with prob ``1 - 2x``, move to each other state
    with prob ``x``; then emit token ``k`` with prob ``a`` if ``k`` is the *new* state, else
    ``(1 - a) / 2``. Its beliefs fill a Sierpinski-like fractal in the 2-simplex."""

    def __init__(self, x: float = 0.05, a: float = 0.85) -> None:
        _check_prob("Mess3", x=x, a=a)
        if x > 0.5:
            raise WorldError(f"Mess3: x must be <= 0.5 (stay prob 1 - 2x), got {x}")
        x, a = float(x), float(a)
        move = np.full((3, 3), x) + np.eye(3) * (1 - 3 * x)  # 1 - 2x on the diagonal
        emit = np.full((3, 3), (1 - a) / 2) + np.eye(3) * (a - (1 - a) / 2)  # emit[j, k]
        T = move[None, :, :] * emit.T[:, None, :]  # T[k, i, j] = move[i, j] * emit[j, k]
        self.params = {"x": x, "a": a}
        super().__init__(T, name="mess3")


class RRXOR(HMM):
    """Random-Random-XOR: emit a random bit (1 w.p. ``p1``), another random bit (1 w.p.
    ``p2``), then their XOR, and repeat. Hidden states in order S, 0, 1, T, F: S = start,
    0/1 = first bit seen, T/F = XOR is 1/0. With p1 = p2 = 1/2 the stationary distribution is
    (1/3, 1/6, 1/6, 1/6, 1/6) and 36 beliefs are reachable."""

    STATE_NAMES = ("S", "0", "1", "T", "F")

    def __init__(self, p1: float = 0.5, p2: float = 0.5) -> None:
        _check_prob("RRXOR", p1=p1, p2=p2)
        p1, p2 = float(p1), float(p2)
        start, zero, one, true, false = range(5)
        T = np.zeros((2, 5, 5))
        T[0, start, zero], T[1, start, one] = 1 - p1, p1  # first bit
        T[0, zero, false], T[1, zero, true] = 1 - p2, p2  # second bit; 0 xor b = b
        T[0, one, true], T[1, one, false] = 1 - p2, p2  # 1 xor b = not b
        T[1, true, start] = 1.0  # the XOR bit
        T[0, false, start] = 1.0
        self.params = {"p1": p1, "p2": p2}
        super().__init__(T, name="rrxor")


class ZeroOneRandom(HMM):
    """Zero-One-Random (Z1R): emit 0, then 1, then a random bit (1 w.p. ``p``), repeat.
    Hidden states 0, 1, 2 = about to emit the 0, the 1, the random bit."""

    def __init__(self, p: float = 0.5) -> None:
        _check_prob("ZeroOneRandom", p=p)
        p = float(p)
        T = np.zeros((2, 3, 3))
        T[0, 0, 1] = 1.0
        T[1, 1, 2] = 1.0
        T[0, 2, 0], T[1, 2, 0] = 1 - p, p
        self.params = {"p": p}
        super().__init__(T, name="z1r")


_NAMED: dict[str, type[HMM]] = {"mess3": Mess3, "rrxor": RRXOR, "z1r": ZeroOneRandom}
