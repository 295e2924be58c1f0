"""The interface every world implements.

A *world* generates token sequences together with their true hidden states and, for every
prefix, the exact Bayesian belief state and the exact predictive distribution of the next
token. Training streams sequences from ``sample``; every analysis aligns hidden states of a
model with ``beliefs`` / ``Sample.states`` using the same ``[sequence, position]`` indexing.

Conventions (shared by all worlds, training and analyses):

- ``tokens`` is an int64 array ``[n, length]``.
- ``beliefs(tokens)[:, t]`` is the posterior over hidden states after tokens ``0..t``.
- ``next_token_probs(tokens)[:, t]`` is the exact distribution of token ``t + 1`` given
  tokens ``0..t`` (the last position predicts the token after the array ends).
- ``target_mask(tokens)[:, t]`` is True when token ``t`` is a prediction target, i.e. the
  model's output at position ``t - 1`` is scored against it. Column 0 is always False.
  Prompt tokens (taxi origin/destination), padding and A5 input tokens are not targets.
- ``position_mask(tokens)[:, t]`` is True for positions whose hidden state analyses should
  use (e.g. not padding); defaults to all True.
- ``output_targets(tokens)`` says what the model's output at position ``t`` is scored
  against: token ``t + 1`` by default (language modelling), a label of position ``t`` itself
  in a *tagging* world (``tagging = True``; e.g. A5 in tagging form, whose output at ``t`` is
  the running product ``s_t``). ``target_probs`` is the exact distribution of that target.
  Training's cross-entropy, the validation loss, the exact floor and the per-position loss
  all go through these two, so a world decides its targets in one place.
"""
from __future__ import annotations

import json
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..errors import WorldError  # noqa: F401  (re-exported: every world raises it)


@dataclass
class Sample:
    """Sequences drawn from a world.

    tokens: int64 ``[n, length]``.
    states: int64 ``[n, length]`` (or ``[n, length, k]`` for structured hidden states, see
        ``World.state_fields``): the true hidden state *after* each token.
    extras: world-specific arrays aligned with tokens (e.g. taxi walk lengths).
    """

    tokens: np.ndarray
    states: np.ndarray
    extras: dict[str, np.ndarray] = field(default_factory=dict)

    def __len__(self) -> int:
        return int(self.tokens.shape[0])


class World(ABC):
    """Abstract world. Subclasses set ``name`` and implement the abstract methods."""

    name: str = "world"
    #: True when the output at position t is scored against a label of position t (see
    #: ``output_targets``), not against the next token.
    tagging: bool = False
    #: names of the columns of ``Sample.states`` when it is ``[n, length, k]``; None if scalar
    state_fields: tuple[str, ...] | None = None

    # --- vocabulary -------------------------------------------------------------------
    @property
    @abstractmethod
    def token_names(self) -> list[str]:
        """Token id -> printable name."""

    @property
    def vocab_size(self) -> int:
        return len(self.token_names)

    def token_id(self, name: str) -> int:
        try:
            return self.token_names.index(name)
        except ValueError:
            raise WorldError(f"{self.name}: unknown token {name!r}") from None

    def decode(self, tokens: np.ndarray) -> list[str]:
        names = self.token_names
        return [" ".join(names[int(t)] for t in row) for row in np.atleast_2d(tokens)]

    # --- hidden states and beliefs ----------------------------------------------------
    @property
    @abstractmethod
    def n_states(self) -> int:
        """Dimension S of the belief vectors returned by ``beliefs``."""

    @abstractmethod
    def sample(self, n: int, length: int, seed: int | np.random.Generator | None = None) -> Sample:
        """Draw ``n`` sequences of ``length`` tokens (padded where the world needs it)."""

    @abstractmethod
    def beliefs(self, tokens: np.ndarray) -> np.ndarray:
        """float64 ``[n, length, S]``: exact posterior after each token."""

    @abstractmethod
    def next_token_probs(self, tokens: np.ndarray) -> np.ndarray:
        """float64 ``[n, length, V]``: exact distribution of the next token."""

    def target_mask(self, tokens: np.ndarray) -> np.ndarray:
        """bool ``[n, length]``: which tokens are prediction targets (column 0 never)."""
        tokens = np.asarray(tokens)
        mask = np.ones(tokens.shape, dtype=bool)
        mask[:, 0] = False
        return mask

    def position_mask(self, tokens: np.ndarray) -> np.ndarray:
        """bool ``[n, length]``: positions whose hidden states analyses should use."""
        return np.ones(np.asarray(tokens).shape, dtype=bool)

    # --- per-position targets -------------------------------------------------------
    def output_targets(self, tokens: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(targets int64 ``[n, length]``, scored bool ``[n, length]``): the id the model's
        output at position ``t`` is scored against, and whether it is scored at all.

        Default (next-token worlds): ``targets[:, t] = tokens[:, t + 1]`` where
        ``target_mask[:, t + 1]``; the last position is never scored (nothing follows it in
        the array). Tagging worlds override this with their per-position labels."""
        tokens = np.asarray(tokens, dtype=np.int64)
        if tokens.ndim == 1:
            tokens = tokens[None, :]
        targets = np.zeros(tokens.shape, dtype=np.int64)
        scored = np.zeros(tokens.shape, dtype=bool)
        targets[:, :-1] = tokens[:, 1:]
        scored[:, :-1] = self.target_mask(tokens)[:, 1:]
        return targets, scored

    def target_probs(self, tokens: np.ndarray) -> np.ndarray:
        """float64 ``[n, length, V]``: the exact distribution of ``output_targets[:, t]``
        given tokens ``0..t``. For next-token worlds this is ``next_token_probs``."""
        return self.next_token_probs(tokens)

    # --- loss floor -------------------------------------------------------------------
    def exact_cross_entropy(self, tokens: np.ndarray) -> float:
        """Mean cross-entropy (nats) of the exact target distribution on the scored
        targets: the floor a perfect model would reach on these very tokens."""
        tokens = np.asarray(tokens, dtype=np.int64)
        targets, scored = self.output_targets(tokens)
        if not scored.any():
            return float("nan")
        probs = self.target_probs(tokens)
        p = np.take_along_axis(probs, targets[..., None], axis=-1)[..., 0]
        with np.errstate(divide="ignore"):
            nll = -np.log(p[scored])
        return float(nll.mean())

    # --- serialisation ----------------------------------------------------------------
    @abstractmethod
    def spec(self) -> dict[str, Any]:
        """Plain JSON-able dict (``{"kind": ..., ...}``) that rebuilds this world exactly
        through ``nextlat_probe.worlds.world_from_spec``."""

    def __repr__(self) -> str:  # pragma: no cover - cosmetic
        s = json.dumps(self.spec())
        return f"{type(self).__name__}({s[:120]}{'...' if len(s) > 120 else ''})"


def as_rng(seed: int | np.random.Generator | None) -> np.random.Generator:
    if isinstance(seed, np.random.Generator):
        return seed
    return np.random.default_rng(seed)


def check_tokens(tokens: Any, vocab_size: int, world: str) -> np.ndarray:
    """Validate a token array: 2-D integer ids inside the vocabulary."""
    arr = np.asarray(tokens)
    if arr.ndim == 1:
        arr = arr[None, :]
    if arr.ndim != 2:
        raise WorldError(f"{world}: tokens must be a 2-D array [n, length], got shape {arr.shape}")
    if arr.size and not np.issubdtype(arr.dtype, np.integer):
        raise WorldError(f"{world}: tokens must be integer ids, got dtype {arr.dtype}")
    arr = arr.astype(np.int64, copy=False)
    if arr.size and (arr.min() < 0 or arr.max() >= vocab_size):
        bad = arr[(arr < 0) | (arr >= vocab_size)][0]
        raise WorldError(f"{world}: token id {int(bad)} outside the vocabulary [0, {vocab_size})")
    return arr
