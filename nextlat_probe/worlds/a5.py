"""The A5 word problem: track the running product of random elements of the alternating group.

A5 (the 60 even permutations of 5 points) is the smallest non-solvable group, so tracking
its running product cannot be done by a fixed-depth "parallel" shortcut; a model has to
carry a state. Two forms (``A5(form=...)``):

``tagging`` (the default) — the state-tracking test. The sequence is the inputs alone, and
the output at every position ``t`` is scored against the running product::

    tokens   g_1  g_2  g_3  ...      (uniform over the 60 elements)
    targets  s_1  s_2  s_3  ...      s_t = g_1 g_2 ... g_t

No token ever shows a product, so ``s_t`` is not a function of any fixed window of tokens:
the model has to carry ``s_{t-1}`` along the sequence and update it with ``g_t``. This is the
sequence-tagging A5 task of "The Illusion of State in State-Space Models" and of the NextLat
paper. It is a tagging world (``tagging = True``): ``output_targets`` are the products,
``target_probs`` is one-hot on them (so the exact floor is 0) and ``next_token_probs`` (the
next *input*) is uniform, 1/60 each.

``interleaved`` (kept for old checkpoints: a spec without a ``form`` is this one) — inputs
and running products alternate::

    g_1, s_1, g_2, s_2, ...

and only the state tokens ``s_k`` are next-token targets. Under teacher forcing every target
``s_k = s_{k-1} g_k`` can be read off the two tokens before it, so this form does not test
state tracking: a one-layer lookup of (previous state token, current input) solves it.

Composition convention: a permutation is a tuple ``p`` with ``p[i]`` the image of ``i``, and
``(g h)[i] = g[h[i]]`` (ordinary function composition: apply ``h`` first, then ``g``), so
``s_t = s_{t-1} g_t`` and ``mul[a, b]`` is the index of ``elements[a] ∘ elements[b]``.

The hidden state (and the one-hot belief) at a position is the running product of the
inputs up to it. It is a function of the *inputs* alone, so in the interleaved form
``beliefs`` and ``next_token_probs`` ignore the state tokens in the sequence: a sequence
whose state tokens are wrong (a model's own rollout, say) still gets the belief of its inputs.

Training defaults (read by ``training``; interleaved keeps the old ones):

- length 12 for tagging (``default_length``), 16 for interleaved; tagging models get a
  context of 64 (``default_n_ctx``) so that they can be evaluated at longer lengths;
- positions ``default_positional``: ``POSITIONAL_TAGGING`` for tagging, ``learned`` for
  interleaved. Learned absolute positions are never trained past the training length, so
  a model trained at 12 cannot be read at 18 or 36; see ``POSITIONAL_TAGGING`` for the
  scheme tagging uses and why;
- ``default_lambda_kl`` 0 for tagging, as in the NextLat paper's A5 setting (the next-token
  KL term of NextLat is off; the latent loss ``lambda_h`` alone shapes the states), 1 for
  interleaved.
"""
from __future__ import annotations

import itertools
from typing import Any

import numpy as np

from .base import Sample, World, WorldError, as_rng, check_tokens

#: the two sequence forms (see the module docstring); a spec without ``form`` is interleaved
FORMS = ("tagging", "interleaved")
#: The position scheme tagging A5 trains with by default (``ModelConfig.positional``):
#: rotary. Learned absolute positions leave every row past the training length untrained, so
#: a model trained at 12 has nothing meaningful to read at 18 or 36; rotary positions
#: (relative offsets inside attention, no table) and ``none`` (the causal mask alone) have
#: no parameter tied to a position, so they can be read at any length up to ``n_ctx``. Of
#: the three, rotary learned fastest at the tiny preset on a CPU (GPT, 3000 steps at length
#: 12, batch 64, lr 3e-3: the first real product s_2 = g_1 g_2 right 98% of the time, vs 61%
#: without positions and 36% with learned ones); none of them had learned all 12 positions
#: in that budget.
POSITIONAL_TAGGING = "rotary"


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
    token ``t``. Tagging form: token ``t`` is ``g_{t+1}`` and the state is ``s_{t+1}``.
    Interleaved form: ``s_k`` both at the input ``g_k`` (index ``2k - 2``) and at ``s_k``
    (index ``2k - 1``); an odd ``length`` ends on an input token."""

    name = "a5"

    def __init__(self, form: str = "tagging") -> None:
        if form not in FORMS:
            raise WorldError(f"a5: form must be one of {', '.join(FORMS)}, got {form!r}")
        self.form = form
        #: instance attribute: the tagging form scores the output at t against s_t
        self.tagging = form == "tagging"
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

    # --- training defaults (see the module docstring) ---------------------------------
    @property
    def default_length(self) -> int:
        return 12 if self.tagging else 16

    @property
    def default_n_ctx(self) -> int:
        """Tagging: a context of 64, so a model trained at 12 can be read at 18 ... 64;
        interleaved: 0 (the context is the training length, as before)."""
        return 64 if self.tagging else 0

    @property
    def default_positional(self) -> str:
        return POSITIONAL_TAGGING if self.tagging else "learned"

    @property
    def default_lambda_kl(self) -> float:
        return 0.0 if self.tagging else 1.0

    # --- vocabulary / states ----------------------------------------------------------
    @property
    def token_names(self) -> list[str]:
        return list(self._names)

    @property
    def n_states(self) -> int:
        return 60

    @staticmethod
    def state_positions(length: int) -> np.ndarray:
        """Interleaved form: indices of the state tokens ``s_t`` (1, 3, 5, ...) in a
        sequence of ``length``."""
        return np.arange(1, length, 2)

    @staticmethod
    def input_positions(length: int) -> np.ndarray:
        """Interleaved form: indices of the input tokens ``g_t`` (0, 2, 4, ...)."""
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
        if self.tagging:
            return self.running_products(tokens)
        prods = self.running_products(tokens[:, 0::2])
        return np.repeat(prods, 2, axis=1)[:, : tokens.shape[1]]

    # --- World interface --------------------------------------------------------------
    def sample(self, n: int, length: int, seed: int | np.random.Generator | None = None) -> Sample:
        if n < 0 or length < 0:
            raise WorldError(f"a5: n and length must be >= 0, got n={n}, length={length}")
        rng = as_rng(seed)
        if self.tagging:
            inputs = rng.integers(0, 60, size=(n, length), dtype=np.int64)
            return Sample(tokens=inputs, states=self.running_products(inputs))
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
        """Tagging: the next token is a fresh uniform input (1/60 each) everywhere.
        Interleaved: after an input ``g_t`` the next token is ``s_t`` (one-hot); after a state
        token the next token is a fresh uniform input (1/60 each)."""
        tokens = check_tokens(tokens, 60, "a5")
        if self.tagging:
            return np.full((*tokens.shape, 60), 1.0 / 60)
        probs = np.eye(60)[self._states(tokens)]
        probs[:, 1::2] = 1.0 / 60
        return probs

    def target_mask(self, tokens: np.ndarray) -> np.ndarray:
        """Interleaved: True only at the state tokens (odd positions). Tagging: never (every
        token is an input, unpredictable noise; the targets are ``output_targets``)."""
        tokens = np.asarray(tokens)
        if tokens.ndim == 1:
            tokens = tokens[None, :]
        mask = np.zeros(tokens.shape, dtype=bool)
        if not self.tagging:
            mask[:, 1::2] = True
        return mask

    def output_targets(self, tokens: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Tagging: the output at every position ``t`` is scored against ``s_t``, the running
        product of tokens ``0..t``. Interleaved: the next token (``World.output_targets``)."""
        if not self.tagging:
            return super().output_targets(tokens)
        tokens = check_tokens(tokens, 60, "a5")
        return self.running_products(tokens), np.ones(tokens.shape, dtype=bool)

    def target_probs(self, tokens: np.ndarray) -> np.ndarray:
        """Tagging: one-hot on ``s_t`` (the target is a function of the inputs: floor 0).
        Interleaved: ``next_token_probs``."""
        if not self.tagging:
            return super().target_probs(tokens)
        return self.beliefs(tokens)

    # --- serialisation ----------------------------------------------------------------
    def spec(self) -> dict[str, Any]:
        return {"kind": "a5", "form": self.form}

    @classmethod
    def from_spec(cls, spec: dict[str, Any]) -> A5:
        """A spec without ``form`` (every checkpoint written before the tagging form
        existed) is the interleaved form."""
        if not isinstance(spec, dict) or spec.get("kind") != "a5":
            raise WorldError("A5.from_spec: spec must be a dict with kind 'a5'")
        form = spec.get("form", "interleaved")
        if form not in FORMS:
            raise WorldError(f"A5.from_spec: form must be one of {', '.join(FORMS)}, got {form!r}")
        return cls(form=form)
