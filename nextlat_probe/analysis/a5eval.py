"""A5 in tagging form: accuracy by sequence length, and p_psi as a recurrent model.

Both functions sample input words ``g_1 .. g_T`` from the world for every evaluation length
``T`` (seeded by ``(seed, T)``, so the two functions see the same words for the same seed),
score the output at position ``t`` (0-based) against the running product of tokens
``0..t`` (``World.output_targets``), and report rates with Wilson 95% intervals
(``records.rate``):

- per position: the fraction of sequences whose output at ``t`` is the product;
- ``token``: over every counted (sequence, position);
- ``sequence``: the fraction of sequences right at *every* counted position.

``length_accuracy`` reads the model's own output head (argmax of its logits) at every
position. A model trained at length 12 with ``learned`` positions has never trained the
position rows past 11, so its accuracy there says nothing about state tracking; compare
``rotary`` / ``none`` models, and build any model with ``n_ctx`` at least the longest
evaluation length (tagging A5 trains with a context of 64 by default).

``rollout_accuracy`` uses NextLat's latent dynamics p_psi as a recurrent model. It takes
the transformer's last-block residual at position ``start`` (``models.transformer
.last_resid_hook``), normalised as NextLat's latent loss does
(``models.objective.normalize_latent``), and unrolls

    ĥ_start = h_start,   ĥ_{t+1} = p_psi(ĥ_t, e(g_{t+1}))     for t = start .. T - 2

where ``e`` is the detached token embedding (``models.transformer.token_embeddings``) of
the token at position ``t + 1``. The transformer is read only at ``start``; every later
state comes from p_psi and the inputs alone. Each ĥ_t is decoded with the model's own
frozen head (its final LayerNorm and unembedding, ``models.objective.frozen_logits``, the
head NextLat's KL term uses). Only positions ``start + 1 .. T - 1`` are counted, for the
roll-out and, next to it, for the transformer's own outputs at the same positions.
``start`` defaults to ``DEFAULT_START`` = 4 (0-based: the output after the fifth input),
inside every training length used here, early enough that most of each sequence is rolled
out, and past the first few positions, whose products involve only a handful of inputs.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Sequence

import numpy as np

from ..errors import AnalysisError
from ..records import rate

#: evaluation lengths: the tagging training length (12), then 1.5x, 2x and 3x of it
DEFAULT_LENGTHS = (12, 18, 24, 36)
#: the position (0-based) whose transformer state starts the p_psi roll-out
DEFAULT_START = 4


@dataclass
class Accuracy:
    """Accuracy of one predictor at one length. ``positions`` are the counted (0-based)
    positions, ``per_position[i]`` the rate at ``positions[i]``; ``token`` and ``sequence``
    are rates over all counted positions (see the module docstring)."""

    length: int
    positions: list[int]
    per_position: list[dict[str, Any]]
    token: dict[str, Any]
    sequence: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class RolloutAccuracy:
    """p_psi's roll-out from ``start`` (``rollout``) next to the transformer's own outputs
    on the same positions (``transformer``), at one length; ``start_state`` is the rate at
    which the frozen head decodes the starting latent ĥ_start itself to the product."""

    length: int
    start: int
    rollout: Accuracy
    transformer: Accuracy
    start_state: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def accuracy_of(correct: np.ndarray, positions: Sequence[int] | None = None) -> Accuracy:
    """``Accuracy`` from a bool array ``correct[n, T]`` (sequence, position), counting the
    given positions (default: all)."""
    correct = np.asarray(correct, dtype=bool)
    if correct.ndim != 2:
        raise AnalysisError(f"accuracy_of: correct must be [n, length], got shape {correct.shape}")
    n, length = correct.shape
    pos = list(range(length)) if positions is None else [int(p) for p in positions]
    if any(p < 0 or p >= length for p in pos):
        raise AnalysisError(f"accuracy_of: positions must lie in [0, {length})")
    c = correct[:, pos]
    return Accuracy(
        length=int(length),
        positions=pos,
        per_position=[rate(int(c[:, i].sum()), n) for i in range(len(pos))],
        token=rate(int(c.sum()), int(c.size)),
        sequence=rate(int(c.all(axis=1).sum()) if pos else 0, n if pos else 0),
    )


def _check(model, world, lengths: Sequence[int], n_seqs: int) -> list[int]:
    if not getattr(world, "tagging", False):
        raise AnalysisError(f"{getattr(world, 'name', 'world')}: needs a tagging world (A5 in tagging form, "
                            "form='tagging'); in the interleaved form the targets are tokens of the sequence")
    lengths = [int(t) for t in lengths]
    if not lengths or min(lengths) < 1:
        raise AnalysisError(f"lengths must be positive, got {lengths}")
    if int(n_seqs) < 1:
        raise AnalysisError(f"n_seqs must be positive, got {n_seqs}")
    n_ctx = getattr(getattr(model, "cfg", None), "n_ctx", None)
    if n_ctx is not None and max(lengths) > int(n_ctx):
        raise AnalysisError(f"length {max(lengths)} exceeds the model's context of {int(n_ctx)} "
                            "(train with a larger --n-ctx to evaluate longer sequences)")
    return lengths


def _sample(world, length: int, n_seqs: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    tokens = world.sample(int(n_seqs), int(length), seed=np.random.default_rng([int(seed), int(length)])).tokens
    targets, _ = world.output_targets(tokens)
    return tokens, targets


def _device(model):
    import torch

    try:
        return next(model.parameters()).device
    except (StopIteration, AttributeError):
        return torch.device("cpu")


def _argmax_outputs(model, tokens: np.ndarray, batch_size: int) -> np.ndarray:
    """int64 ``[n, T]``: argmax of the model's logits at every position."""
    from .worldmodel import model_predictor

    return model_predictor(model, batch_size=batch_size).top1(tokens)


def length_accuracy(
    model,
    world,
    lengths: Sequence[int] = DEFAULT_LENGTHS,
    n_seqs: int = 256,
    seed: int = 0,
    *,
    batch_size: int = 256,
) -> list[Accuracy]:
    """Per-position, token and whole-sequence accuracy of the model's output head (argmax
    vs the running product ``s_t``) at every position, one ``Accuracy`` per length."""
    lengths = _check(model, world, lengths, n_seqs)
    results = []
    for length in lengths:
        tokens, targets = _sample(world, length, n_seqs, seed)
        results.append(accuracy_of(_argmax_outputs(model, tokens, batch_size) == targets))
    return results


def unroll(dynamics, h_start, embeddings):
    """ĥ_{start+i} = p_psi(ĥ_{start+i-1}, e_i) for i = 1..k from ``h_start [n, D]`` and the
    embeddings ``[n, k, D]`` of the tokens at positions ``start + 1 .. start + k``;
    returns ``[n, k, D]`` (k = 0 gives an empty array)."""
    import torch

    out, h = [], h_start
    for i in range(embeddings.shape[1]):
        h = dynamics(h, embeddings[:, i])
        out.append(h)
    if not out:
        return h_start.new_zeros((h_start.shape[0], 0, h_start.shape[-1]))
    return torch.stack(out, dim=1)


def rollout_predictions(model, dynamics, tokens: np.ndarray, start: int = DEFAULT_START, *,
                        batch_size: int = 256) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The roll-out of ``rollout_accuracy`` on given tokens ``[n, T]``, as predicted ids:
    (roll-out argmax ``[n, T - start - 1]`` for positions ``start + 1 .. T - 1``, the frozen
    head's argmax of ĥ_start ``[n]``, the transformer's own argmax ``[n, T]``)."""
    import torch

    from ..activations import collect
    from ..models.objective import frozen_logits, normalize_latent
    from ..models.transformer import last_resid_hook, token_embeddings

    tokens = np.asarray(tokens, dtype=np.int64)
    length = tokens.shape[1]
    if not 0 <= int(start) <= length - 2:
        raise AnalysisError(f"start must lie in [0, {length - 2}] so that a position follows it, got {start}")
    start = int(start)
    hook = last_resid_hook(model.cfg)
    dev = _device(model)
    acts, logits = collect(model, tokens, [hook], batch_size=batch_size, return_logits=True)
    resid = acts[hook]
    pred = np.empty((len(tokens), length - start - 1), dtype=np.int64)
    start_pred = np.empty(len(tokens), dtype=np.int64)
    was_training = getattr(dynamics, "training", False)
    dynamics.eval()
    try:
        with torch.no_grad():
            for s in range(0, len(tokens), batch_size):
                t = torch.as_tensor(tokens[s : s + batch_size], dtype=torch.long, device=dev)
                h0 = normalize_latent(torch.as_tensor(resid[s : s + batch_size, start], device=dev))
                emb = token_embeddings(model, t[:, start + 1 :]).detach()
                pred[s : s + batch_size] = frozen_logits(model, unroll(dynamics, h0, emb)).argmax(-1).cpu().numpy()
                start_pred[s : s + batch_size] = frozen_logits(model, h0).argmax(-1).cpu().numpy()
    finally:
        dynamics.train(was_training)
    return pred, start_pred, logits.argmax(-1)


def rollout_accuracy(
    model,
    dynamics,
    world,
    lengths: Sequence[int] = DEFAULT_LENGTHS,
    start: int = DEFAULT_START,
    n_seqs: int = 256,
    seed: int = 0,
    *,
    batch_size: int = 256,
) -> list[RolloutAccuracy]:
    """p_psi unrolled from the transformer's normalised last-block latent at ``start``
    through the remaining inputs, decoded by the frozen head, next to the transformer's own
    outputs; positions ``start + 1 .. T - 1`` count (see the module docstring)."""
    if dynamics is None:
        raise AnalysisError("rollout_accuracy needs the model's p_psi (a NextLat checkpoint's dynamics)")
    lengths = _check(model, world, lengths, n_seqs)
    start = int(start)
    if start < 0 or start > min(lengths) - 2:
        raise AnalysisError(f"start must lie in [0, {min(lengths) - 2}] so that every length has a position after it, got {start}")
    results = []
    for length in lengths:
        tokens, targets = _sample(world, length, n_seqs, seed)
        pred, start_pred, own = rollout_predictions(model, dynamics, tokens, start, batch_size=batch_size)
        counted = list(range(start + 1, length))
        roll = np.zeros(tokens.shape, dtype=bool)
        roll[:, start + 1 :] = pred == targets[:, start + 1 :]
        results.append(RolloutAccuracy(
            length=int(length),
            start=start,
            rollout=accuracy_of(roll, counted),
            transformer=accuracy_of(own == targets, counted),
            start_state=rate(int((start_pred == targets[:, start]).sum()), len(tokens)),
        ))
    return results


__all__ = ["DEFAULT_LENGTHS", "DEFAULT_START", "Accuracy", "RolloutAccuracy", "accuracy_of", "length_accuracy",
           "rollout_accuracy", "rollout_predictions", "unroll"]
