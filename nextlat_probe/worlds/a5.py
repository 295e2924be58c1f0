"""The A5 word problem: track the running product of random elements of the alternating group.

A5 (the 60 even permutations of 5 points) is the smallest non-solvable group, so tracking
its running product cannot be done by a fixed-depth "parallel" shortcut; a model has to
carry a state. Sequences interleave inputs and running products::

    g_1, s_1, g_2, s_2, ...      s_t = g_1 g_2 ... g_t

Composition convention: a permutation is a tuple ``p`` with ``p[i]`` the image of ``i``, and
``(g h)[i] = g[h[i]]`` (ordinary function composition: apply ``h`` first, then ``g``), so
``s_t = s_{t-1} g_t`` and ``mul[a, b]`` is the index of ``elements[a] ∘ elements[b]``.

Only the state tokens ``s_t`` are prediction targets (inputs are uniform noise). The hidden
state after both ``g_t`` and ``s_t`` is ``s_t``. It is a function of the *inputs* alone, so
``beliefs`` and ``next_token_probs`` ignore the state tokens in the sequence: a sequence
whose state tokens are wrong (a model's own rollout, say) still gets the belief of its inputs.
"""
from __future__ import annotations

import itertools
from typing import Any

import numpy as np

from .base import Sample, World, WorldError, as_rng, check_tokens


def _is_even(p: tuple[int, ...]) -> bool:
    inversions = sum(1 for i in range(len(p)) for j in range(i + 1, len(p)) if p[i] > p[j])
    return inversions % 2 == 0


def _cycle_name(p: tuple[int, ...]) -> str:
    """Compact cycle notation without spaces, e.g. ``(012)(34)``; the identity is ``e``."""
    seen: set[int] = set()
    out = []
    for start in range(len(p)):
        if start in seen or p[start] == start:
            continue
        cycle, i = [], start
        while i not in seen:
            seen.add(i)
            cycle.append(str(i))
            i = p[i]
        out.append("(" + "".join(cycle) + ")")
    return "".join(out) or "e"


class A5(World):
    """The A5 word problem. Vocabulary and hidden states are the 60 group elements, in
    sorted-tuple order (identity first). ``Sample.states[:, t]`` is the running product after
    token ``t``: ``s_k`` both at the input ``g_k`` (index ``2k - 2``) and at ``s_k`` (index
    ``2k - 1``). An odd ``length`` ends on an input token."""

    name = "a5"

    def __init__(self) -> None:
        self.elements: list[tuple[int, ...]] = [p for p in itertools.permutations(range(5)) if _is_even(p)]
        perms = np.array(self.elements, dtype=np.int64)  # [60, 5]
        # a permutation read as a base-5 number; sorted tuples <=> sorted codes
        weights = 5 ** np.arange(4, -1, -1)
        codes = perms @ weights
        # mul[a, b] = index of a∘b, the permutation i -> a[b[i]]
        comp = perms[np.arange(60)[:, None, None], perms[None, :, :]]  # comp[a, b, i] = a[b[i]]
        self.mul = np.searchsorted(codes, comp @ weights).astype(np.int64)
        self.mul.setflags(write=False)
        self.identity = 0  # (0, 1, 2, 3, 4) sorts first
        self._names = [_cycle_name(p) for p in self.elements]

    # --- vocabulary / states ----------------------------------------------------------
    @property
    def token_names(self) -> list[str]:
        return list(self._names)

    @property
    def n_states(self) -> int:
        return 60

    @staticmethod
    def state_positions(length: int) -> np.ndarray:
        """Indices of the state tokens ``s_t`` (1, 3, 5, ...) in a sequence of ``length``."""
        return np.arange(1, length, 2)

    @staticmethod
    def input_positions(length: int) -> np.ndarray:
        """Indices of the input tokens ``g_t`` (0, 2, 4, ...)."""
        return np.arange(0, length, 2)

    def running_products(self, inputs: np.ndarray) -> np.ndarray:
        """int64 ``[n, k]``: ``s_t = g_1 ... g_t`` for inputs ``[n, k]`` (loop over time only)."""
        inputs = np.asarray(inputs, dtype=np.int64)
        out = np.empty_like(inputs)
        s = np.full(inputs.shape[0], self.identity, dtype=np.int64)
        for t in range(inputs.shape[1]):
            s = self.mul[s, inputs[:, t]]
            out[:, t] = s
        return out

    def _states(self, tokens: np.ndarray) -> np.ndarray:
        """Running product after each position, from the input tokens only."""
        prods = self.running_products(tokens[:, 0::2])
        return np.repeat(prods, 2, axis=1)[:, : tokens.shape[1]]

    # --- World interface --------------------------------------------------------------
    def sample(self, n: int, length: int, seed: int | np.random.Generator | None = None) -> Sample:
        if n < 0 or length < 0:
            raise WorldError(f"a5: n and length must be >= 0, got n={n}, length={length}")
        rng = as_rng(seed)
        inputs = rng.integers(0, 60, size=(n, (length + 1) // 2), dtype=np.int64)
        prods = self.running_products(inputs)
        tokens = np.empty((n, length), dtype=np.int64)
        tokens[:, 0::2] = inputs
        tokens[:, 1::2] = prods[:, : length // 2]
        states = np.repeat(prods, 2, axis=1)[:, :length]
        return Sample(tokens=tokens, states=states)

    def beliefs(self, tokens: np.ndarray) -> np.ndarray:
        """float64 ``[n, length, 60]``: one-hot on the running product of the inputs so far."""
        tokens = check_tokens(tokens, 60, "a5")
        return np.eye(60)[self._states(tokens)]

    def next_token_probs(self, tokens: np.ndarray) -> np.ndarray:
        """After an input ``g_t`` the next token is ``s_t`` (one-hot); after a state token the
        next token is a fresh uniform input (1/60 each)."""
        tokens = check_tokens(tokens, 60, "a5")
        probs = np.eye(60)[self._states(tokens)]
        probs[:, 1::2] = 1.0 / 60
        return probs

    def target_mask(self, tokens: np.ndarray) -> np.ndarray:
        """True only at the state tokens (odd positions); inputs are unpredictable noise."""
        tokens = np.asarray(tokens)
        if tokens.ndim == 1:
            tokens = tokens[None, :]
        mask = np.zeros(tokens.shape, dtype=bool)
        mask[:, 1::2] = True
        return mask

    # --- serialisation ----------------------------------------------------------------
    def spec(self) -> dict[str, Any]:
        return {"kind": "a5"}

    @classmethod
    def from_spec(cls, spec: dict[str, Any]) -> A5:
        if not isinstance(spec, dict) or spec.get("kind") != "a5":
            raise WorldError("A5.from_spec: spec must be a dict with kind 'a5'")
        return cls()
