"""Path-star planning metrics (Bachmann & Nagarajan 2024; ``worlds.pathstar``).

A model talks to these metrics only through a predictor (``analysis.worldmodel``'s
convention): a callable ``predict(tokens int64 [n, L]) -> [n, L, V]`` whose row ``t`` scores
token ``t + 1``; logits or probabilities both work, only the argmax is read.
``worldmodel.model_predictor`` wraps a transformer, ``exact_predictor`` is the world itself
(a perfect model) and ``RandomArmPredictor`` the chance baseline.

- ``greedy_paths``: generate the path after the prompt greedily (top-1 over the whole
  vocabulary), without teacher forcing (``analysis.generation.extend``: a transformer's
  tokens enter a key/value cache one at a time).
- ``pathstar_scores``: rates (``records.rate``, Wilson 95%) over the generated paths:

  - ``exact_path``: the whole path (start copy included) equals the true one;
  - ``first_step``: the node after the start is the goal arm's first node, the one step
    the Clever-Hans shortcut cannot learn (after it, each node is the child of the one
    before, which teacher forcing hands over);
  - ``valid_path``: a valid path from the centre to SOME leaf (a whole arm), right or
    wrong. A model that learnt the shortcut but not the plan scores ``valid_path`` near 1
    and ``exact_path`` near ``1 / degree``: the Clever-Hans signature.

- ``forced_accuracy``: teacher-forced top-1 accuracy at every path token, the reference's
  per-token accuracy under teacher forcing (the shortcut reaches 1 everywhere but the
  first arm node).
- ``evaluate_pathstar``: fresh prompts from the world, greedy paths, scores.

``RandomArmPredictor`` copies the start, picks an arm uniformly at random (a function of
the prompt and the seed, so repeated calls agree) and follows its edges to the leaf:
``exact_path`` and ``first_step`` ``1 / degree`` in expectation, ``valid_path`` 1.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from ..errors import AnalysisError
from ..records import rate
from .generation import Greedy, extend, regime_of
from .worldmodel import Predictor, as_predictor


def check_pathstar_world(world) -> None:
    """Raise ``AnalysisError`` unless ``world`` is a path-star world."""
    if getattr(world, "name", None) != "pathstar":
        raise AnalysisError(f"path-star metrics need a pathstar world, got "
                            f"{getattr(world, 'name', type(world).__name__)!r}")


def exact_predictor(world) -> Predictor:
    """The world as a model: ``world.next_token_probs`` (exact at every path position)."""
    check_pathstar_world(world)
    return as_predictor(world.next_token_probs)


def greedy_paths(predict: Any, prompts: np.ndarray, n_steps: int) -> np.ndarray:
    """int64 ``[n, n_steps]``: ``n_steps`` tokens generated greedily after ``prompts``
    ``[n, P]`` (the argmax of the next-token distribution, fed back)."""
    predict = as_predictor(predict)
    prompts = np.asarray(prompts)
    if prompts.ndim != 2 or (prompts.size and not np.issubdtype(prompts.dtype, np.integer)):
        raise AnalysisError(f"greedy_paths: prompts must be integer tokens [n, P], got shape {prompts.shape}")
    n_steps = int(n_steps)
    if n_steps < 0:
        raise AnalysisError(f"greedy_paths: n_steps must be >= 0, got {n_steps}")
    limit = predict.max_length
    if limit is not None and n_steps and prompts.shape[1] + n_steps - 1 > limit:
        raise AnalysisError(f"greedy_paths: {prompts.shape[1]} prompt tokens and {n_steps} steps need a context "
                            f"of {prompts.shape[1] + n_steps - 1}; the predictor's is {limit}")
    if prompts.shape[0] == 0 or n_steps == 0:
        return np.zeros((prompts.shape[0], n_steps), dtype=np.int64)
    return extend(predict, prompts.astype(np.int64), n_steps, Greedy())[:, prompts.shape[1]:]


def pathstar_scores(world, prompts: np.ndarray, paths: np.ndarray) -> dict[str, Any]:
    """Rates ``exact_path``, ``first_step``, ``valid_path`` (module docstring) and ``n`` for
    generated ``paths`` ``[n, world.path_length]`` after ``prompts`` (prompts or full
    sequences: only the prompt is read)."""
    check_pathstar_world(world)
    prompts = np.asarray(prompts)
    paths = np.asarray(paths)
    n = int(prompts.shape[0]) if prompts.ndim == 2 else -1
    if paths.ndim != 2 or paths.shape != (n, world.path_length):
        raise AnalysisError(f"pathstar_scores: paths must be [{n}, {world.path_length}] (one path per prompt), "
                            f"got {list(paths.shape)}")
    if n == 0:
        return {"exact_path": rate(0, 0), "first_step": rate(0, 0), "valid_path": rate(0, 0), "n": 0}
    truth = world.true_paths(prompts)
    valid, _ = world.is_path_to_leaf(prompts, paths)
    exact = (paths == truth).all(axis=1)
    first = paths[:, 1] == truth[:, 1]
    return {"exact_path": rate(exact.sum(), n), "first_step": rate(first.sum(), n),
            "valid_path": rate(valid.sum(), n), "n": n}


def forced_accuracy(predict: Any, world, tokens: np.ndarray) -> dict[str, Any]:
    """Teacher-forced top-1 accuracy on full sequences ``[n, default_length]``:
    ``per_token`` (a rate per path token, the start copy first), ``token`` (all path
    tokens) and ``sequence`` (every path token right)."""
    check_pathstar_world(world)
    tokens = np.asarray(tokens, dtype=np.int64)
    if tokens.ndim != 2 or tokens.shape[1] != world.default_length:
        raise AnalysisError(f"forced_accuracy: tokens must be [n, {world.default_length}], got {list(tokens.shape)}")
    n, P = tokens.shape[0], world.prompt_length
    if n == 0:
        return {"per_token": [rate(0, 0)] * world.path_length, "token": rate(0, 0), "sequence": rate(0, 0)}
    top = as_predictor(predict).top1(tokens[:, :-1])[:, P - 1:]  # predictions of tokens P .. end
    right = top == world.true_paths(tokens)
    return {"per_token": [rate(c, n) for c in right.sum(axis=0)], "token": rate(right.sum(), right.size),
            "sequence": rate(right.all(axis=1).sum(), n)}


def evaluate_pathstar(predict: Any, world, n_graphs: int = 1000, seed: int = 0) -> dict[str, Any]:
    """``pathstar_scores`` of greedy paths on ``n_graphs`` fresh prompts drawn from the world
    with ``seed`` (the same prompts for every predictor), with ``forced`` (the
    ``forced_accuracy`` of the same sequences) and ``params``."""
    check_pathstar_world(world)
    if int(n_graphs) < 1:
        raise AnalysisError(f"n_graphs must be positive, got {n_graphs}")
    tokens = world.sample(int(n_graphs), seed=np.random.default_rng([int(seed), 0x57A2])).tokens
    prompts = tokens[:, :world.prompt_length]
    out = pathstar_scores(world, prompts, greedy_paths(predict, prompts, world.path_length))
    out["forced"] = forced_accuracy(predict, world, tokens)
    out["params"] = {"n_graphs": int(n_graphs), "seed": int(seed), **world.spec(), **regime_of(predict)}
    return out


class RandomArmPredictor(Predictor):
    """The chance baseline (module docstring). Rows ``t`` of ``__call__``: at ``=`` one-hot
    on the start; in the path, after the centre one-hot on the first node of the row's arm,
    after any arm node one-hot on its child (so under teacher forcing it is the Clever-Hans
    shortcut: right everywhere but at the first arm node); everywhere else (the prompt, after a leaf or a
    token off the graph) uniform over the labels. The arm of a row is drawn from a
    generator seeded by ``seed`` and the row's prompt."""

    def __init__(self, world, seed: int = 0):
        check_pathstar_world(world)
        self.world = world
        self.seed = int(seed)
        self.max_length = None
        self._arms: dict[bytes, int] = {}

    def arm_choice(self, prompts: np.ndarray) -> np.ndarray:
        """int64 ``[n]``: the arm (first-edge order) each prompt's row follows."""
        prompts = np.asarray(prompts, dtype=np.int64)[:, :self.world.prompt_length]
        out = np.empty(prompts.shape[0], dtype=np.int64)
        for i, row in enumerate(prompts):
            key = row.tobytes()
            if key not in self._arms:
                self._arms[key] = int(np.random.default_rng([self.seed, *row.tolist()]).integers(self.world.degree))
            out[i] = self._arms[key]
        return out

    def __call__(self, tokens: np.ndarray) -> np.ndarray:
        w = self.world
        tokens = np.asarray(tokens, dtype=np.int64)
        n, L = tokens.shape
        N, V, rows = w.n_nodes, w.vocab_size, np.arange(n)
        probs = np.zeros((n, L, V))
        probs[:, :, :N] = 1.0 / N
        if L <= w.eq_pos or n == 0:
            return probs
        g = w.parse(tokens)
        probs[:, w.eq_pos] = 0.0
        probs[rows, w.eq_pos, g.centre] = 1.0
        child = np.full((n, V), -1, dtype=np.int64)  # the next node along the edges
        for j in range(1, w.length):
            child[rows[:, None], g.arms[:, :, j - 1]] = g.arms[:, :, j]
        child[rows, g.centre] = g.arms[rows, self.arm_choice(tokens), 0]  # the row's arm
        for t in range(w.prompt_length, L):
            nxt = child[rows, tokens[:, t]]
            hit = nxt >= 0
            probs[rows[hit], t] = 0.0
            probs[rows[hit], t, nxt[hit]] = 1.0
        return probs


def random_arm_predictor(world, seed: int = 0) -> RandomArmPredictor:
    """The random-arm chance baseline (``RandomArmPredictor``)."""
    return RandomArmPredictor(world, seed=seed)


__all__ = ["check_pathstar_world", "exact_predictor", "greedy_paths", "pathstar_scores", "forced_accuracy",
           "evaluate_pathstar", "RandomArmPredictor", "random_arm_predictor"]
