"""The one generation API: everything that decodes extends token rows through a session.

Two levels, one regime rule:

- **Predictor level** (``extend``): the world-model metrics (greedy and sampled taxi trips,
  detours, compression continuations, sampled distinction suffixes: ``analysis.worldmodel``),
  the belief-world compression continuations (``analysis.beliefmodel``), the behavioural map's
  sampled trips (``compare.mapping``) and path-star's greedy paths (``analysis.pathstar``).
  A ``Rule`` picks each row's next token from the next-token distribution (and keeps whatever
  state its analysis needs: the taxi automaton, detours); ``extend`` runs the loop, one step
  for all rows at once. The distributions come from a ``Session`` that the predictor opens
  (``Predictor.session``): a transformer's (``worldmodel.ModelPredictor``) feeds each new
  token to a key/value cache (``models.kvcache``), any other predictor (the exact world, a
  plain function) recomputes through ``Predictor.at`` as every step did before.
- **Model level** (``greedy_decode`` here, ``analysis.speculative.speculative_decode``):
  torch logits straight from a ``models.kvcache`` decoder, greedy (argmax) with stop tokens;
  speculative decoding appends ``k + 1`` positions per verification and rolls the rejected
  ones back.

Regimes (``models.kvcache.REGIMES``): ``kv_cache`` when the model is supported and the cache
fits, else ``full_forward`` (one forward over the whole prefix per step). Records name the
one used (``params["regime"]``, with ``params["regime_note"]`` saying why when it is not the
cache).

**Near-ties.** Cached and full-forward logits agree to float round-off (about 1e-6 in fp32),
not bit for bit, so a decision that a difference of that size could flip is re-decided on the
full forward (the reference every earlier result was computed with): a greedy pick whose two
best candidates are within ``TIE_PROB`` in probability (``TIE_LOGIT`` in logits for model-level
greedy), a sample whose uniform draw lies within ``TIE_PROB`` of a cumulative boundary, a
probability within ``TIE_PROB`` of the epsilon cut-off, a detour choice between two turns
within ``TIE_PROB``. Those rows get the full forward's distribution (the same computation, on
the same prefix, as before the cache), so a cached run makes the decisions the full-forward
run makes (``tests/test_generation.py`` checks stored full-forward records). Such re-decisions
are rare (``Session.refreshed`` counts them).
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from .stats import AnalysisError

#: probability gap under which a decision is re-decided on the full forward (cached
#: probabilities differ from it by ~1e-7 to 2e-6 in fp32: a taxi model's largest difference
#: over whole trips was 1.5e-6)
TIE_PROB = 5e-5
#: the same for model-level greedy, in logits (cached logits differ by ~1e-6 to 2e-5 in fp32)
TIE_LOGIT = 1e-3


# --------------------------------------------------------------------------------------
# sessions
# --------------------------------------------------------------------------------------
class Session:
    """Rows of ``prefixes`` (row ``i`` holds ``lengths[i]`` tokens, the rest padding) grown
    by up to ``steps`` tokens, one per ``push``. This base asks the predictor for every
    distribution (``predict.at`` over the whole prefixes): the regime of predictors that are
    not transformers, and the full-forward fallback of those that are."""

    #: whether ``probs`` may differ from ``exact`` by float round-off (then near-ties are
    #: re-decided on ``exact``)
    approximate = False

    def __init__(self, predict, prefixes: np.ndarray, lengths: np.ndarray | None, steps: int, pad_id: int = 0,
                 regime: str = "predictor", note: str | None = None):
        prefixes = np.asarray(prefixes, dtype=np.int64)
        n, W = prefixes.shape
        self.predict = predict
        self.lengths0 = np.full(n, W, dtype=np.int64) if lengths is None else np.asarray(lengths, dtype=np.int64)
        self.tokens = np.full((n, W + int(steps)), pad_id, dtype=np.int64)
        self.tokens[:, :W] = np.where(np.arange(W)[None, :] < self.lengths0[:, None], prefixes, pad_id)
        self.cur = self.lengths0.copy()  # the next cell to fill, per row
        self.regime, self.note = regime, note
        self.refreshed = 0  # rows re-decided on the full forward

    def probs(self, rows: np.ndarray) -> np.ndarray:
        """float64 ``[r, V]``: the distribution of the token after each of ``rows``."""
        c = self.cur[rows]
        return self.predict.at(self.tokens[rows, :int(c.max())], c - 1)

    def exact(self, rows: np.ndarray) -> np.ndarray:
        """``probs`` by the reference computation (a full forward for a transformer)."""
        c = self.cur[rows]
        return self.predict.at(self.tokens[rows, :int(c.max())], c - 1)

    def push(self, rows: np.ndarray, tokens: np.ndarray) -> None:
        """Append one token to each of ``rows``."""
        self.tokens[rows, self.cur[rows]] = tokens
        self.cur[rows] += 1


class CachedSession(Session):
    """A transformer's distributions from a key/value cache (``models.kvcache``): each row's
    tokens enter the cache once, when its next distribution is first asked for. ``reference``
    is the model's full-forward predictor (``exact``, near-ties)."""

    approximate = True

    def __init__(self, model, reference, prefixes, lengths, steps: int, pad_id: int = 0,
                 chunk_elements: int = 1 << 24):
        super().__init__(reference, prefixes, lengths, steps, pad_id, regime="kv_cache")
        import torch

        from ..models.kvcache import CachedDecoder

        n = self.tokens.shape[0]
        self.model = model
        self.n_ctx = int(model.cfg.n_ctx)
        self.torch = torch
        self.decoder = CachedDecoder(model, n, capacity=min(self.n_ctx, int(self.tokens.shape[1])))
        self.device = self.decoder.device
        self.fed = np.zeros(n, dtype=np.int64)  # tokens of each row in the cache
        self.last = torch.zeros((n, int(model.cfg.d_vocab)), dtype=torch.float32, device=self.device)
        self.chunk_elements = int(chunk_elements)  # bounds the transient tensors of one append

    def _sync(self, rows: np.ndarray) -> None:
        torch = self.torch
        need = rows[self.fed[rows] < self.cur[rows]]
        if need.size == 0:
            return
        if int(self.cur[need].max()) > self.n_ctx:
            raise AnalysisError(f"predictor: {int(self.cur[need].max())} tokens exceed the model's context of "
                                f"{self.n_ctx}")
        counts = self.cur[need] - self.fed[need]
        k = int(counts.max())
        per_row = k * max(int(self.model.cfg.d_vocab), int(self.cur[need].max()) * int(self.model.cfg.d_model))
        step = max(1, self.chunk_elements // max(per_row, 1))
        for s in range(0, need.size, step):
            r, c = need[s:s + step], counts[s:s + step]
            cols = self.fed[r][:, None] + np.arange(k)[None, :]
            toks = np.take_along_axis(self.tokens[r], np.minimum(cols, self.tokens.shape[1] - 1), axis=1)
            ragged = None if (c == k).all() else torch.as_tensor(c, device=self.device)
            logits = self.decoder.append(torch.as_tensor(toks, device=self.device), r, counts=ragged)
            at = torch.as_tensor(c - 1, device=self.device)
            self.last[torch.as_tensor(r, device=self.device)] = logits[torch.arange(r.size, device=self.device), at].float()
        self.fed[need] = self.cur[need]

    def probs(self, rows: np.ndarray) -> np.ndarray:
        self._sync(rows)
        rt = self.torch.as_tensor(rows, device=self.device)
        return self.torch.softmax(self.last[rt], dim=-1).double().cpu().numpy()


def open_session(predict, prefixes: np.ndarray, lengths: np.ndarray | None, steps: int, pad_id: int = 0) -> Session:
    """The predictor's own session (``Predictor.session``), or the recomputing base one."""
    opener = getattr(predict, "session", None)
    if opener is not None:
        return opener(prefixes, lengths, steps, pad_id)
    return Session(predict, prefixes, lengths, steps, pad_id)


# --------------------------------------------------------------------------------------
# rules: how a row's next token is chosen
# --------------------------------------------------------------------------------------
def near_tie(values: np.ndarray, tol: float, mask: np.ndarray | None = None, lowest: bool = False) -> np.ndarray:
    """bool per row: the best two of ``values`` (highest, or lowest with ``lowest``; only
    where ``mask``) are within ``tol`` of each other."""
    v = np.asarray(values, dtype=np.float64)
    v = -v if lowest else v
    if mask is not None:
        v = np.where(mask, v, -np.inf)
    if v.shape[1] < 2:
        return np.zeros(v.shape[0], dtype=bool)
    top2 = -np.partition(-v, 1, axis=1)[:, :2]  # best, second best
    return np.isfinite(top2[:, 1]) & (top2[:, 0] - top2[:, 1] < tol)


def sample_cutoff(probs: np.ndarray, u: np.ndarray, epsilon: float) -> np.ndarray:
    """Epsilon-cutoff sampling with uniforms ``u`` (one per row): tokens with probability <
    epsilon removed, the rest renormalised (rows where nothing survives take their argmax)."""
    q = np.where(probs >= epsilon, probs, 0.0)
    c = np.cumsum(q, axis=1)
    total = c[:, -1]
    idx = np.minimum((c <= (u * total)[:, None]).sum(axis=1), probs.shape[1] - 1)
    return np.where(total > 0, idx, probs.argmax(axis=1))


def sample_cutoff_fragile(probs: np.ndarray, u: np.ndarray, epsilon: float, tol: float = TIE_PROB) -> np.ndarray:
    """bool per row: ``sample_cutoff`` could pick another token if the probabilities moved by
    ``tol`` (a probability near epsilon, the draw near a cumulative boundary, or an argmax
    near-tie where nothing survives the cut)."""
    q = np.where(probs >= epsilon, probs, 0.0)
    c = np.cumsum(q, axis=1)
    total = c[:, -1]
    target = u * total
    out = (np.abs(probs - epsilon) < tol).any(axis=1) | (np.abs(c - target[:, None]) < tol).any(axis=1)
    return out | ((total < tol) & near_tie(probs, tol))


class Rule:
    """How ``extend`` picks tokens. ``choose`` must be pure (it is called again, on the full
    forward's distributions, for near-tie rows); ``draw`` makes the step's random draws for
    the rows still decoding; ``start`` those made for every row at the start of a step;
    ``advance`` updates the rule's state and says which rows continue."""

    def start(self, step: int) -> None:
        pass

    def draw(self, rows: np.ndarray) -> None:
        pass

    def choose(self, rows: np.ndarray, probs: np.ndarray, at: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(tokens, bool fragile) for ``rows`` with distributions ``probs``; ``at`` indexes
        ``rows`` in this step's rows (where the step's draws are)."""
        raise NotImplementedError

    def advance(self, rows: np.ndarray, tokens: np.ndarray) -> np.ndarray:
        return np.ones(rows.size, dtype=bool)


class Greedy(Rule):
    """The most likely token (first index on exact ties)."""

    def choose(self, rows, probs, at):
        return probs.argmax(axis=1), near_tie(probs, TIE_PROB)


class Sample(Rule):
    """Epsilon-cutoff sampling (``sample_cutoff``), one uniform per decoding row per step
    from ``rng``."""

    def __init__(self, rng: np.random.Generator, epsilon: float):
        self.rng, self.epsilon = rng, float(epsilon)
        self.u = np.zeros(0)

    def draw(self, rows):
        self.u = self.rng.random(rows.size)

    def choose(self, rows, probs, at):
        u = self.u[at]
        return sample_cutoff(probs, u, self.epsilon), sample_cutoff_fragile(probs, u, self.epsilon)


def extend(predict, prefixes: np.ndarray, n_new: int | np.ndarray, rule: Rule, *, lengths: np.ndarray | None = None,
           alive: np.ndarray | None = None, pad_id: int = 0) -> np.ndarray:
    """Grow ``prefixes`` ``[n, W]`` (row ``i`` holds ``lengths[i]`` tokens, default ``W``) by up
    to ``n_new`` tokens (an int or one per row) chosen by ``rule``, all decoding rows together,
    one step at a time; rows stop when ``rule.advance`` says so (or start stopped where
    ``alive`` is False). Returns int64 ``[n, W + max n_new]`` (row ``i``'s new tokens from
    ``lengths[i]``, padding after its last). The predictor's session decides the regime
    (module docstring); near-tie decisions of a cached session are re-decided on the full
    forward."""
    prefixes = np.asarray(prefixes, dtype=np.int64)
    n = prefixes.shape[0]
    limit = np.broadcast_to(np.asarray(n_new, dtype=np.int64), (n,))
    steps = int(limit.max()) if n else 0
    session = open_session(predict, prefixes, lengths, steps, pad_id)
    live = np.ones(n, dtype=bool) if alive is None else np.asarray(alive, dtype=bool).copy()
    live &= limit > 0
    for s in range(steps):
        rule.start(s)
        live &= s < limit
        rows = np.flatnonzero(live)
        if rows.size == 0:
            break
        rule.draw(rows)
        probs = session.probs(rows)
        at = np.arange(rows.size)
        tok, fragile = rule.choose(rows, probs, at)
        if session.approximate and fragile.any():
            f = np.flatnonzero(fragile)
            probs[f] = session.exact(rows[f])
            tok[f] = rule.choose(rows[f], probs[f], f)[0]
            session.refreshed += int(f.size)
        session.push(rows, tok)
        live[rows] &= rule.advance(rows, tok)
    record_regime(predict, session)
    return session.tokens


def record_regime(predict, session: Session) -> None:
    """Tell the predictor which regime one of its sessions ran in (``regime_of``)."""
    seen = getattr(predict, "regimes", None)
    if isinstance(seen, dict):
        seen.setdefault(session.regime, session.note)


def regime_of(predict) -> dict[str, Any]:
    """``{"regime": ...}`` (and ``"regime_note"`` when it is not the cache) of the sessions a
    predictor has opened: ``kv_cache``, ``full_forward``, both joined by ``+``, or
    ``predictor`` (not a transformer); ``{}`` when it opened none."""
    seen = getattr(predict, "regimes", None) or {}
    if not seen:
        return {}
    names = sorted(seen)
    out: dict[str, Any] = {"regime": "+".join(names)}
    notes = [seen[k] for k in names if seen[k]]
    if notes:
        out["regime_note"] = "; ".join(dict.fromkeys(notes))
    return out


# --------------------------------------------------------------------------------------
# model level: greedy decoding from a key/value cache
# --------------------------------------------------------------------------------------
@dataclass
class GreedyResult:
    tokens: list[np.ndarray]  # generated tokens per prompt (prompt not included)
    forwards: int  # transformer forwards summed over rows (one per generated token)
    batched_forwards: int  # model calls
    seconds: float
    regime: str = "full_forward"
    positions: int = 0  # token positions the transformer computed, summed over rows
    refreshed: int = 0  # near-tie decisions re-decided on the full forward


def check_prompts(model, prompts: np.ndarray, max_new: int) -> tuple[np.ndarray, int]:
    """(int64 prompts ``[n, P]``, ``max_new`` capped so that at most ``n_ctx + 1`` tokens
    exist in all: the last one is predicted from position ``n_ctx - 1``)."""
    prompts = np.asarray(prompts, dtype=np.int64)
    if prompts.ndim != 2 or prompts.shape[1] < 1:
        raise AnalysisError(f"prompts must be [n, P] with P >= 1, got shape {prompts.shape}")
    n_ctx = int(model.cfg.n_ctx)
    P = prompts.shape[1]
    if P > n_ctx:
        raise AnalysisError(f"prompts of {P} tokens exceed the model's context of {n_ctx}")
    return prompts, max(0, min(int(max_new), n_ctx + 1 - P))


def stop_array(stop_mask: Any, V: int) -> np.ndarray:
    if stop_mask is None:
        return np.zeros(V, dtype=bool)
    s = np.asarray(stop_mask, dtype=bool)
    if s.shape != (V,):
        raise AnalysisError(f"stop_mask must have one entry per token ({V}), got shape {s.shape}")
    return s


def sync(device) -> None:
    """Wait for the device's queued work (CUDA timings measure nothing otherwise)."""
    import torch

    if getattr(device, "type", str(device)).startswith("cuda"):
        torch.cuda.synchronize(device)


def open_decoder(model, batch: int, capacity: int, regime: str = "auto", hook: str | None = None):
    """``models.kvcache.decoder`` with its refusals as ``AnalysisError`` (one line)."""
    from ..models.kvcache import decoder

    try:
        return decoder(model, batch, capacity, regime=regime, hook=hook)
    except ValueError as exc:
        raise AnalysisError(str(exc)) from None


def greedy_pick(model, logits, prefix_of, approximate: bool) -> tuple[np.ndarray, int]:
    """(argmax tokens ``[r]`` of ``logits [r, V]`` as a host array, rows re-decided): rows
    whose best two logits are within ``TIE_LOGIT`` take the argmax of the full forward over
    ``prefix_of(rows) -> tokens [r', L]`` (its last position) when ``approximate``."""
    import torch

    if logits.device.type == "cpu":  # host memory already: numpy, no further tensor operations
        lg = logits.float().numpy()
        tok = lg.argmax(axis=-1)
        fragile = near_tie(lg, TIE_LOGIT) if approximate else np.zeros(tok.size, dtype=bool)
    else:  # on the device: the argmax and the gap of the best two, read back together
        lg = logits.float()
        gap = lg.topk(2, dim=-1).values if lg.shape[-1] > 1 else lg.repeat(1, 2)
        both = torch.stack((lg.argmax(-1).double(), (gap[:, 0] - gap[:, 1]).double())).cpu().numpy()
        tok = both[0].astype(np.int64)
        fragile = (both[1] < TIE_LOGIT) & approximate
    if not fragile.any():
        return tok, 0
    idx = np.flatnonzero(fragile)
    with torch.no_grad():
        ref = model(torch.as_tensor(prefix_of(idx), device=logits.device))[:, -1]
    tok = tok.copy()
    tok[idx] = ref.argmax(-1).cpu().numpy()
    return tok, int(idx.size)


def greedy_decode(model, prompts: np.ndarray, max_new: int, *, stop_mask: Any = None, batch_size: int = 64,
                  pad_id: int = 0, regime: str = "auto") -> GreedyResult:
    """Greedy decoding (the reference of speculative decoding). ``regime``: ``auto`` (the
    key/value cache when the model is supported, ``models.kvcache.decoder``), ``kv_cache`` or
    ``full_forward`` (one forward over the whole prefix per token, as before the cache).

    A row stops after a token with ``stop_mask[token]`` True, after ``max_new`` tokens, or
    when the context is full (at most ``n_ctx + 1`` tokens in all). Every regime gives the
    same tokens (near-ties: module docstring). The bookkeeping stays on the host: one
    decoder call and one read-back of the picked tokens per step."""
    import torch

    if model.training:  # (a no-op walk over every submodule otherwise: ms per call at batch 1)
        model.eval()
    prompts, max_new = check_prompts(model, prompts, max_new)
    n, P = prompts.shape
    stop = stop_array(stop_mask, int(model.cfg.d_vocab))
    dev = next(model.parameters()).device
    out: list[np.ndarray] = []
    forwards = calls = positions = refreshed = 0
    used = regime if regime != "auto" else "full_forward"
    sync(dev)
    t0 = time.perf_counter()
    with torch.no_grad():
        for s in range(0, n, batch_size):
            b = min(batch_size, n - s)
            if max_new == 0:
                out.extend(np.zeros(0, dtype=np.int64) for _ in range(b))
                continue
            buf = np.full((b, P + max_new), pad_id, dtype=np.int64)
            buf[:, :P] = prompts[s:s + batch_size]
            n_gen = np.zeros(b, dtype=np.int64)
            dec = open_decoder(model, b, P + max_new - 1, regime)
            used = dec.regime
            cached = dec.regime == "kv_cache"
            rows = np.arange(b)
            logits = dec.append(torch.as_tensor(buf[:, :P], device=dev))[:, -1]
            length = P
            calls += 1
            forwards += b
            positions += b * P
            while True:
                tok, k = greedy_pick(model, logits, lambda i, r=rows, L=length, t=buf: t[r[i], :L], cached)
                refreshed += k
                buf[rows, length] = tok
                n_gen[rows] += 1
                length += 1
                if length - P >= max_new:
                    break
                keep = ~stop[tok]
                rows, tok = rows[keep], tok[keep]
                if rows.size == 0:
                    break
                logits = dec.append(torch.as_tensor(tok[:, None], device=dev), None if rows.size == b else rows)[:, -1]
                calls += 1
                forwards += int(rows.size)
                positions += int(rows.size) * (1 if cached else length)
            out.extend(buf[i, P:P + int(c)].copy() for i, c in enumerate(n_gen))
    sync(dev)
    return GreedyResult(out, forwards, calls, time.perf_counter() - t0, used, positions, refreshed)


__all__ = ["TIE_PROB", "TIE_LOGIT", "Session", "CachedSession", "open_session", "near_tie", "sample_cutoff",
           "sample_cutoff_fragile", "Rule", "Greedy", "Sample", "extend", "record_regime", "regime_of", "GreedyResult",
           "check_prompts", "stop_array", "sync", "open_decoder", "greedy_pick", "greedy_decode"]
