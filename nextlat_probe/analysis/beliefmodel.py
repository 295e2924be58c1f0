"""Sequence compression and distinction for any next-token world with exact beliefs.

The taxi world judges compression and distinction by its street map (``analysis.worldmodel``,
Vafa et al. 2024). Any world with exact belief states has the same two tests without a map,
because the belief is a sufficient statistic of the prefix for everything that follows:

- **compression**: two *different* prefixes ``A`` and ``B`` of the same length with the
  *same* exact belief admit exactly the same continuations, so a model that compresses
  its input into the belief state should too. ``n_continuations`` continuations of
  ``continuation_len`` tokens are sampled from the model after ``A`` by epsilon-cutoff
  sampling (tokens with probability < epsilon removed, the rest renormalised); the pair
  passes when every token of every continuation has model probability > epsilon after
  ``B`` (all-or-nothing per pair, as Vafa et al.). Pairs are found among sampled
  sequences: prefixes whose beliefs agree to ``belief_decimals`` places (in RRXOR and
  Zero-One-Random many prefixes share a belief exactly; in Mess3 only prefixes ending in a
  long run of one token, whose belief has converged to a fixed point). Where no such pair
  exists the result says so (``n == 0``) instead of giving a number.
- **distinction** at the Myhill–Nerode boundary: two prefixes of the same length with
  *different* beliefs. A suffix ``s`` is *accepted* after a prefix when every token of it
  is possible: exact probability > 0 for the truth (the world's support), model
  probability > epsilon for the model. The boundary ``A -> B`` is the set of minimal
  distinguishing suffixes

      { u + x : u accepted after both A and B, u + x accepted after A but not after B }

  over suffixes of at most ``suffix_len`` tokens, and symmetrically ``B -> A``. Per pair,
  precision = |model ∩ true| / |model| (1 when the model distinguishes nothing, the
  reference's edge case) and recall = |model ∩ true| / |true|, averaged over pairs (the
  reference's per-pair aggregation). Pairs whose true boundary is empty (the two beliefs
  have the same support for every short suffix: always so for a world of full support
  such as Mess3) cannot be scored and are counted as ``distinction_skipped``.

The boundary is found breadth first, extending only suffixes accepted after both prefixes,
so the world is never asked about an impossible prefix and the work stays small. The
settings form the ``myhill_nerode`` protocol (``PROTOCOL``), recorded with every result.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..records import Rate
from .generation import Sample, extend, regime_of
from .stats import AnalysisError
from .worldmodel import EPSILON, PairMean, as_predictor, resolve_protocol

#: this package's protocol for worlds without a map (no published reference exists for HMMs:
#: the definitions follow Vafa et al.'s compression and per-pair distinction, with the
#: world's exact support as the truth)
PROTOCOL: dict[str, Any] = {"name": "myhill_nerode", "n_continuations": 30, "continuation_len": 5,
                            "suffix_len": 3, "truth": "support", "aggregation": "per_pair",
                            "belief_decimals": 9}
#: exact probabilities at or below this count as impossible (float round-off of zeros)
SUPPORT_TOL = 1e-12


def check_belief_world(world) -> None:
    """Compression and distinction here need a next-token world that is not the taxi world
    (which has its map-based definitions in ``analysis.worldmodel``)."""
    if getattr(world, "name", None) == "taxi":
        raise AnalysisError("the taxi world has map-based compression and distinction (analysis.worldmodel)")
    if getattr(world, "tagging", False):
        raise AnalysisError(f"world {getattr(world, 'name', '?')!r} is a tagging world: its outputs are labels, "
                            "not continuations, so compression and distinction do not apply")


def resolve_belief_protocol(epsilon: float = EPSILON, **given: Any) -> dict[str, Any]:
    """The ``protocol`` block: ``PROTOCOL`` with ``epsilon``; values given (not None) that
    differ from the protocol's are used and listed under ``deviations``
    (``analysis.worldmodel.resolve_protocol``)."""
    fields = {k: v for k, v in PROTOCOL.items() if k != "name"}
    return resolve_protocol(PROTOCOL["name"], epsilon, {PROTOCOL["name"]: fields}, **given)


# --------------------------------------------------------------------------------------
# pairs of prefixes
# --------------------------------------------------------------------------------------
@dataclass
class PrefixPairs:
    """Pairs of prefixes of sampled sequences: pair ``i`` is ``tokens[a[i], :cut[i]]`` and
    ``tokens[b[i], :cut[i]]``."""

    tokens: np.ndarray
    cut: np.ndarray
    a: np.ndarray
    b: np.ndarray

    def __len__(self) -> int:
        return int(self.cut.size)

    def groups(self):
        """``(cut, A [m, cut], B [m, cut], indices)`` per distinct cut length."""
        for k in np.unique(self.cut):
            idx = np.flatnonzero(self.cut == k)
            yield int(k), self.tokens[self.a[idx], :k], self.tokens[self.b[idx], :k], idx


def _belief_keys(beliefs: np.ndarray, decimals: int) -> np.ndarray:
    """Integer keys of beliefs rounded to ``decimals`` places (equal keys = same belief)."""
    q = np.round(beliefs * 10.0 ** decimals).astype(np.int64)
    _, inv = np.unique(q, axis=0, return_inverse=True)
    return inv.reshape(-1)


def same_belief_pairs(world, tokens: np.ndarray, rng: np.random.Generator, n_pairs: int,
                      decimals: int = 9) -> PrefixPairs:
    """Up to ``n_pairs`` pairs of different prefixes (same length) with the same exact
    belief, drawn uniformly from all such pairs of neighbouring distinct prefixes."""
    beliefs = world.beliefs(tokens)
    pmask = world.position_mask(tokens)
    cand: list[tuple[int, int, int]] = []
    for k in range(1, tokens.shape[1] + 1):
        rows = np.flatnonzero(pmask[:, k - 1])
        if rows.size < 2:
            continue
        keys = _belief_keys(beliefs[rows, k - 1], decimals)
        _, first = np.unique(tokens[rows, :k], axis=0, return_index=True)  # one row per distinct prefix
        first = rows[first]
        fkeys = keys[np.searchsorted(rows, first)]
        order = np.lexsort((first, fkeys))
        f, fk = first[order], fkeys[order]
        same = np.flatnonzero(fk[1:] == fk[:-1])
        cand.extend((k, int(f[i]), int(f[i + 1])) for i in same)
    if not cand:
        z = np.zeros(0, dtype=np.int64)
        return PrefixPairs(tokens, z, z, z)
    pick = rng.permutation(len(cand))[:n_pairs]
    c = np.asarray(cand, dtype=np.int64)[np.sort(pick)]
    return PrefixPairs(tokens, c[:, 0], c[:, 1], c[:, 2])


def different_belief_pairs(world, tokens: np.ndarray, rng: np.random.Generator, n_pairs: int,
                           decimals: int = 9) -> PrefixPairs:
    """``n_pairs`` pairs of prefixes (same length, random cut, random rows) whose exact
    beliefs differ (fewer if the sample has too few distinct beliefs)."""
    beliefs = world.beliefs(tokens)
    pmask = world.position_mask(tokens)
    n, L = tokens.shape
    cut, a, b = [], [], []
    for _ in range(20):
        m = 4 * n_pairs
        k = rng.integers(1, L + 1, size=m)
        i, j = rng.integers(0, n, size=m), rng.integers(0, n, size=m)
        ok = (pmask[i, k - 1] & pmask[j, k - 1]
              & (np.abs(beliefs[i, k - 1] - beliefs[j, k - 1]).max(axis=1) > 10.0 ** -decimals))
        cut.extend(k[ok])
        a.extend(i[ok])
        b.extend(j[ok])
        if len(cut) >= n_pairs:
            break
    arr = [np.asarray(x[:n_pairs], dtype=np.int64) for x in (cut, a, b)]
    return PrefixPairs(tokens, *arr)


# --------------------------------------------------------------------------------------
# the two tests
# --------------------------------------------------------------------------------------
def compression_beliefs(predict: Any, pairs: PrefixPairs, rng: np.random.Generator, epsilon: float = EPSILON,
                        n_continuations: int = 30, continuation_len: int = 5) -> dict[str, Any]:
    """``{"pairs": Rate, "continuations": Rate, "per_pair": bool [n]}`` (module docstring)."""
    predict = as_predictor(predict)
    M, C = int(n_continuations), int(continuation_len)
    per_pair = np.zeros(len(pairs), dtype=bool)
    n_acc = 0
    for k, A, B, idx in pairs.groups():
        X = extend(predict, np.repeat(A, M, axis=0), C, Sample(rng, epsilon))  # C tokens after each prefix
        Y = np.concatenate([np.repeat(B, M, axis=0), X[:, k:]], axis=1)
        p = predict.token_probs(Y)[:, k - 1:]  # the continuation's tokens after B
        accepted = (p > epsilon).all(axis=1)
        n_acc += int(accepted.sum())
        per_pair[idx] = accepted.reshape(-1, M).all(axis=1)
    n = len(pairs)
    return {"pairs": Rate(int(per_pair.sum()), n), "continuations": Rate(n_acc, n * M), "per_pair": per_pair}


def boundaries(next_probs, A: np.ndarray, B: np.ndarray, suffix_len: int, threshold: float) -> list[set]:
    """Per pair, the set of ``(direction, suffix)`` in the Myhill–Nerode boundary (module
    docstring), ``direction`` 0 for ``A -> B`` and 1 for ``B -> A``, a token accepted when
    its probability exceeds ``threshold``. ``next_probs(rows [n, L]) -> [n, V]`` is the
    distribution of the token after each row (a predictor's ``last``, or the world's)."""
    m = A.shape[0]
    out: list[set] = [set() for _ in range(m)]
    frontier = [(i, ()) for i in range(m)]  # (pair, suffix accepted after both prefixes)
    for _ in range(int(suffix_len)):
        if not frontier:
            break
        pair = np.asarray([f[0] for f in frontier], dtype=np.int64)
        suf = np.asarray([f[1] for f in frontier], dtype=np.int64).reshape(len(frontier), -1)
        rows = np.concatenate([np.concatenate([A[pair], suf], axis=1), np.concatenate([B[pair], suf], axis=1)])
        probs = np.asarray(next_probs(rows))
        acc_a, acc_b = probs[: len(frontier)] > threshold, probs[len(frontier):] > threshold
        nxt = []
        for r, (i, u) in enumerate(frontier):
            for x in np.flatnonzero(acc_a[r] & ~acc_b[r]):
                out[i].add((0, u + (int(x),)))
            for x in np.flatnonzero(acc_b[r] & ~acc_a[r]):
                out[i].add((1, u + (int(x),)))
            nxt.extend((i, u + (int(x),)) for x in np.flatnonzero(acc_a[r] & acc_b[r]))
        frontier = nxt
    return out


def distinction_beliefs(predict: Any, world, pairs: PrefixPairs, epsilon: float = EPSILON,
                        suffix_len: int = 3) -> dict[str, Any]:
    """``{"precision": PairMean, "recall": PairMean, "skipped": int, "per_pair": [...]}``:
    per-pair precision and recall of the model's boundary against the world's (module
    docstring); pairs with an empty true boundary are skipped."""
    predict = as_predictor(predict)
    prec, rec, per = [], [], []
    skipped = 0

    def exact(rows: np.ndarray) -> np.ndarray:
        return world.next_token_probs(rows)[:, -1]

    for _, A, B, _ in pairs.groups():
        true = boundaries(exact, A, B, suffix_len, SUPPORT_TOL)
        model = boundaries(predict.last, A, B, suffix_len, epsilon)
        for t, mo in zip(true, model):
            if not t:
                skipped += 1
                continue
            hit = len(t & mo)
            prec.append(1.0 if not mo else hit / len(mo))
            rec.append(hit / len(t))
            per.append({"true": len(t), "model": len(mo), "both": hit})
    return {"precision": PairMean(tuple(prec)), "recall": PairMean(tuple(rec)), "skipped": skipped,
            "per_pair": per}


@dataclass
class BeliefModelResult:
    """Compression and distinction of one predictor on a world with exact beliefs."""

    compression: Rate
    compression_continuations: Rate
    distinction_precision: PairMean
    distinction_recall: PairMean
    settings: dict[str, Any] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=dict)
    protocol: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


def evaluate_belief_model(predict: Any, world, n_pairs: int = 200, seed: int = 0, epsilon: float = EPSILON,
                          n_continuations: int | None = None, continuation_len: int | None = None,
                          suffix_len: int | None = None, seq_len: int | None = None,
                          n_seqs: int | None = None) -> BeliefModelResult:
    """Compression on up to ``n_pairs`` same-belief pairs and distinction on ``n_pairs``
    different-belief pairs, all cut from ``n_seqs`` sequences (default ``4 * n_pairs``, at
    least 256) of ``seq_len`` tokens (default: the world's length, shortened so that every
    prefix plus its continuation or suffix fits the predictor's context) drawn with
    ``seed``. Parameters left None take the protocol's values (``PROTOCOL``)."""
    check_belief_world(world)
    predict = as_predictor(predict)
    if n_pairs < 1:
        raise AnalysisError(f"n_pairs must be positive, got {n_pairs}")
    if not 0 < epsilon < 1:
        raise AnalysisError(f"epsilon must lie in (0, 1), got {epsilon}")
    block = resolve_belief_protocol(epsilon, n_continuations=n_continuations, continuation_len=continuation_len,
                                    suffix_len=suffix_len)
    M, C, K, dec = (int(block[k]) for k in ("n_continuations", "continuation_len", "suffix_len", "belief_decimals"))
    for name, v in (("n_continuations", M), ("continuation_len", C), ("suffix_len", K)):
        if v < 1:
            raise AnalysisError(f"{name} must be positive, got {v}")
    length = int(seq_len or getattr(world, "default_length", 16))
    notes = []
    if predict.max_length is not None and length + max(C, K) > predict.max_length:
        length = int(predict.max_length) - max(C, K)
        notes.append(f"prefixes cut from {length}-token sequences so that a prefix plus its "
                     f"{max(C, K)}-token continuation fits the model's context of {predict.max_length}")
    if length < 1:
        raise AnalysisError(f"the model's context ({predict.max_length}) is too short for "
                            f"{max(C, K)}-token continuations")
    n_seqs = int(n_seqs or max(256, 4 * n_pairs))
    tokens = world.sample(n_seqs, length, seed=np.random.default_rng([int(seed), 0xB1])).tokens
    same = same_belief_pairs(world, tokens, np.random.default_rng([int(seed), 1]), int(n_pairs), dec)
    diff = different_belief_pairs(world, tokens, np.random.default_rng([int(seed), 2]), int(n_pairs), dec)
    comp = compression_beliefs(predict, same, np.random.default_rng([int(seed), 3]), epsilon, M, C)
    dist = distinction_beliefs(predict, world, diff, epsilon, K)
    if not len(same):
        notes.append("no two different prefixes with the same exact belief were found: compression is undefined")
    if len(diff) and dist["skipped"] == len(diff):
        notes.append("no pair of different beliefs has a distinguishing suffix in the world's support "
                     f"(up to {K} tokens): distinction is undefined")
    settings = {"n_pairs": int(n_pairs), "seed": int(seed), "epsilon": float(epsilon), "seq_len": length,
                "n_seqs": n_seqs, "protocol": block["name"], **regime_of(predict)}
    counts = {"compression_pairs": len(same), "distinction_pairs": len(diff),
              "distinction_skipped": int(dist["skipped"])}
    return BeliefModelResult(comp["pairs"], comp["continuations"], dist["precision"], dist["recall"],
                             settings, counts, block, notes)


__all__ = ["PROTOCOL", "check_belief_world", "resolve_belief_protocol", "PrefixPairs", "same_belief_pairs",
           "different_belief_pairs", "compression_beliefs", "boundaries", "distinction_beliefs",
           "BeliefModelResult", "evaluate_belief_model"]
