"""Self-speculative decoding with NextLat's own latent dynamics p_psi as the draft model.

Drafting: from the transformer's hidden state ``h_t`` (the last block's residual,
``normalize_latent``'d: the latent space p_psi was trained in) the head's greedy token
``x_{t+1}`` is known from the forward that produced ``h_t``. The drafter rolls
``ĥ_{t+1} = p_psi(h_t, e(x_{t+1}))``, decodes ``x̂_{t+2} = argmax U_frozen · LN(ĥ_{t+1})``
(``models.objective._frozen_logits``, the head NextLat's KL term trains against), then
``ĥ_{t+2} = p_psi(ĥ_{t+1}, e(x̂_{t+2}))`` and so on: one p_psi call per drafted token.

Verification: ONE transformer forward over ``x_{t+1} + drafts``, appended to the row's
key/value cache (``models.kvcache``: ``k + 1`` positions at once). The longest prefix of the
drafts on which the transformer's own greedy choices agree is accepted; the transformer's
token at the first disagreement (or after the last draft, when all agree) becomes the next
``x_{t+1}``, that same forward gives the next ``h_t``, and the rejected positions are rolled
back out of the cache. Every emitted token is therefore the transformer's greedy token: the
output equals greedy decoding token for token (``analysis.generation.greedy_decode``, the
baseline, also from the cache), with the same stopping rules (a stop token, ``max_new``, the
context). A verified position whose best two logits are within ``generation.TIE_LOGIT`` is
re-decided on the full forward, as greedy decoding re-decides it, so float round-off between
appending one and ``k + 1`` positions never makes the two outputs differ.

Regimes (``REGIME_NOTES``): ``kv_cache`` (the default wherever ``models.kvcache`` supports the
model) and ``full_forward`` (every greedy step and every verification one forward over the
whole prefix; the only regime before the cache, and the fallback for other models). With the
cache a greedy step computes one position and a verification ``k + 1``, so the saving is
bounded by the positions a verification costs beside its per-call overhead, not by tokens per
forward alone: records give both (``positions_*`` beside ``tokens_per_forward``).

Draft-length policies (``parse_policy``): ``fixed:k`` drafts ``k`` tokens (fewer at the end
of the budget or the context, and never past a drafted stop token); ``adaptive`` (see
``ADAPTIVE_RULE``) drafts while the estimated chance that the next draft is accepted pays
for a p_psi step: acceptance rates calibrated against the head's probabilities and the costs
of a draft step and of a verification are both learned online, from the run's own
verifications, so the draft length keeps following the drafter and the device.

Multi-token-prediction (MTP) heads would be the other self-drafting scheme; MTP checkpoints
(``--objective mtp``) carry their heads (``models.mtp``), but there is no MTP drafter here.

Everything in this module takes a model, a drafter and token arrays and returns result
dataclasses; the runner is ``nextlat_probe.compare.run_speculative``.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

from ..models.kvcache import REGIME_CACHED, REGIME_FULL
from .generation import (
    TIE_LOGIT,
    GreedyResult,
    check_prompts,
    greedy_decode,
    greedy_pick,
    near_tie,
    open_decoder,
    stop_array,
    sync,
)
from .stats import AnalysisError

#: what each decoding regime means for the timings (``params["regime_note"]`` of a record)
REGIME_NOTES = {
    REGIME_CACHED: "key/value cache (models.kvcache): a greedy step computes one position, a verification the "
                   "pending token and its drafts; rejected positions are rolled back",
    REGIME_FULL: "no key/value cache: every greedy step and every verification is a full forward over the whole "
                 "prefix",
}
ADAPTIVE_RULE = (
    "online, from this run's own verifications: each draft's chance of acceptance (every earlier draft of the "
    "verification accepted too) is estimated as the product of calibrated acceptance rates (the rate of drafts whose "
    "head probability fell in the same of `bins` equal bins, Beta(1, 1) prior), the next draft's as that product "
    "times the overall acceptance rate alpha; with n drafts of expected yield E tokens (the pending token counts 1) "
    "costing 1 + n*rho verifications, where rho = seconds per p_psi step / seconds per verification round without "
    "its drafting (moving averages, weight `ema`, of this run's calls; `draft_cost` fixes rho), one more draft is "
    "made while it raises the expected tokens per second: reach*alpha*(1 + n*rho) >= rho*E; never past `cap` "
    "drafts or a drafted stop token. Every verification updates the rates (its accepted drafts and its first "
    "rejected one) and the timings, so the draft length keeps following the drafter's quality and the device's costs "
    "(alpha below rho: no drafts, plain greedy steps)"
)


# --------------------------------------------------------------------------------------
# policies
# --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class DraftPolicy:
    """How many tokens to draft per verification. ``kind``: ``fixed`` (``k`` tokens) or
    ``adaptive`` (at most ``k`` = the cap, ``ADAPTIVE_RULE``). ``draft_cost``: adaptive's
    cost ratio rho fixed (None: measured online; a fixed one makes the draft lengths, and so
    the counts, independent of timing)."""

    kind: str
    k: int
    bins: int = 10
    ema: float = 0.2
    draft_cost: float | None = None

    @property
    def name(self) -> str:
        if self.kind == "fixed":
            return f"fixed:{self.k}"
        return "adaptive" if self.k == ADAPTIVE_CAP else f"adaptive:{self.k}"

    def params(self) -> dict[str, Any]:
        if self.kind == "fixed":
            return {"policy": "fixed", "k": self.k, "rule": f"draft exactly {self.k} tokens (fewer at the end of the "
                                                             "budget or context, none past a drafted stop token)"}
        return {"policy": "adaptive", "cap": self.k, "bins": self.bins, "ema": self.ema,
                "draft_cost": self.draft_cost, "rule": ADAPTIVE_RULE}


class AdaptiveState:
    """What ``adaptive`` learns during one decoding call (``ADAPTIVE_RULE``): acceptance
    counts per head-probability bin and in all, and the moving-average seconds of a draft
    step and of a verification."""

    def __init__(self, pol: DraftPolicy):
        self.pol = pol
        self.bin_hits = np.zeros(pol.bins)
        self.bin_tries = np.zeros(pol.bins)
        self.hits = self.tries = 0.0
        self.t_draft: float | None = None
        self.t_verify: float | None = None

    def calibrated(self, p: np.ndarray) -> np.ndarray:
        """Acceptance rate of drafts with head probabilities ``p`` (their bins)."""
        b = np.minimum((np.asarray(p) * self.pol.bins).astype(np.int64), self.pol.bins - 1)
        return (self.bin_hits[b] + 1.0) / (self.bin_tries[b] + 2.0)

    @property
    def alpha(self) -> float:
        return (self.hits + 1.0) / (self.tries + 2.0)

    @property
    def rho(self) -> float:
        if self.pol.draft_cost is not None:
            return float(self.pol.draft_cost)
        if self.t_draft is None or self.t_verify is None or self.t_verify <= 0:
            return 0.25  # before both are measured: draft, and measure
        return self.t_draft / self.t_verify

    def time(self, which: str, seconds: float) -> None:
        old = getattr(self, which)
        setattr(self, which, seconds if old is None else (1 - self.pol.ema) * old + self.pol.ema * seconds)

    def update(self, probs: np.ndarray, accepted: int) -> None:
        """One verification's outcome: drafts ``probs[:accepted]`` accepted, the next (if
        any) rejected; later drafts were never tested."""
        seen = probs[:accepted + 1]
        ok = np.arange(seen.size) < accepted
        b = np.minimum((seen * self.pol.bins).astype(np.int64), self.pol.bins - 1)
        np.add.at(self.bin_tries, b, 1.0)
        np.add.at(self.bin_hits, b, ok.astype(float))
        self.tries += seen.size
        self.hits += float(ok.sum())

    def summary(self) -> dict[str, Any]:
        return {"rho": self.rho, "acceptance": self.alpha, "seconds_draft": self.t_draft,
                "seconds_verification": self.t_verify}


#: the default draft cap of ``adaptive``
ADAPTIVE_CAP = 16


def parse_policy(text: str | DraftPolicy) -> DraftPolicy:
    """``fixed:K`` / ``adaptive`` / ``adaptive:CAP`` -> ``DraftPolicy`` (``AnalysisError``
    naming the problem otherwise)."""
    if isinstance(text, DraftPolicy):
        return text
    s = str(text).strip().lower()
    kind, _, arg = s.partition(":")
    if kind == "fixed":
        try:
            k = int(arg)
        except ValueError:
            raise AnalysisError(f"draft policy {text!r}: fixed needs a draft length, e.g. fixed:4") from None
        if k < 1:
            raise AnalysisError(f"draft policy {text!r}: the draft length must be positive")
        return DraftPolicy("fixed", k)
    if kind == "adaptive":
        cap = ADAPTIVE_CAP
        if arg:
            try:
                cap = int(arg)
            except ValueError:
                raise AnalysisError(f"draft policy {text!r}: adaptive takes an optional cap, e.g. adaptive:16") from None
            if cap < 1:
                raise AnalysisError(f"draft policy {text!r}: the cap must be positive")
        return DraftPolicy("adaptive", cap)
    raise AnalysisError(f"unknown draft policy {text!r} (use fixed:K, adaptive or adaptive:CAP)")


# --------------------------------------------------------------------------------------
# drafters
# --------------------------------------------------------------------------------------
class LatentDrafter:
    """NextLat's p_psi as a drafter: ``step`` rolls one latent, ``logits`` decodes it through
    the frozen head. ``rows`` (prompt indices) and ``pos`` (the sequence position of
    ``tok``) are unused here; test stubs (oracle drafters) read them."""

    def __init__(self, model, dynamics):
        from ..models.transformer import frozen_head_params

        if dynamics is None:
            raise AnalysisError("speculative decoding needs NextLat's latent dynamics p_psi (none given)")
        self.model = model
        self.dynamics = dynamics.eval()
        # read once: the bridge's weight properties cost more than a small p_psi step
        self.W_E = model.W_E.detach()
        self.head = tuple(p.detach() for p in frozen_head_params(model))

    def step(self, h, tok, rows, pos):
        """ĥ at position ``pos`` from the latent at ``pos - 1`` and the token at ``pos``
        (``e(x)`` = the token's embedding row, ``models.transformer.token_embeddings``)."""
        return self.dynamics(h, self.W_E[tok])

    def logits(self, h, rows, pos):
        """Logits of the token after position ``pos`` from the latent ``h`` there."""
        from ..models.objective import frozen_logits

        return frozen_logits(self.model, h, head=self.head)


# --------------------------------------------------------------------------------------
# results
# --------------------------------------------------------------------------------------
@dataclass
class SpeculativeResult:
    tokens: list[np.ndarray]
    policy: str
    forwards: int  # transformer forwards summed over rows: the prompt forward + one per verification
    batched_forwards: int
    verifications: int  # verification forwards summed over rows
    accepted: list[int] = field(default_factory=list)  # drafted tokens accepted, one per verification
    drafted: list[int] = field(default_factory=list)  # drafted tokens, one per verification
    draft_calls: int = 0  # p_psi calls summed over rows
    seconds: float = 0.0
    #: what the draft-length policy learned (timings of a draft step and of a verification,
    #: their ratio rho; adaptive: the acceptance rate it reached)
    policy_state: dict[str, Any] = field(default_factory=dict)
    regime: str = REGIME_FULL
    positions: int = 0  # token positions the transformer computed, summed over rows
    refreshed: int = 0  # near-tie verifications re-decided on the full forward

    @property
    def n_tokens(self) -> int:
        return int(sum(len(t) for t in self.tokens))

    def histogram(self, k_max: int | None = None) -> list[int]:
        """Counts of verifications that accepted 0, 1, 2, ... drafted tokens."""
        top = max(self.accepted, default=0) if k_max is None else int(k_max)
        return np.bincount(np.asarray(self.accepted, dtype=np.int64), minlength=top + 1).tolist()


def _forward(model, tokens, hook: str | None):
    """(logits, normalised latents at ``hook`` or None) of one full forward."""
    if hook is None:
        return model(tokens), None
    from ..models.objective import normalize_latent

    store: dict[str, Any] = {}

    def keep(resid, hook):
        store["h"] = resid
        return resid

    with model.hooks(fwd_hooks=[(hook, keep)]):
        logits = model(tokens)
    return logits, normalize_latent(store["h"].float())


# --------------------------------------------------------------------------------------
# speculative decoding
# --------------------------------------------------------------------------------------
def speculative_decode(model, drafter: Any, prompts: np.ndarray, max_new: int, *, policy: str | DraftPolicy = "fixed:4",
                       stop_mask: Any = None, batch_size: int = 64, pad_id: int = 0,
                       hook: str | None = None, regime: str = "auto") -> SpeculativeResult:
    """Greedy decoding accelerated by drafts from ``drafter`` (``LatentDrafter(model, p_psi)``
    or anything with its ``step`` / ``logits``), verified by the transformer; same stopping
    rules and the same tokens as ``greedy_decode``. ``hook``: where the latent is read
    (default: the last block's ``hook_resid_post``). ``regime``: as ``greedy_decode``
    (``auto``: the key/value cache where the model allows; each verification appends ``k + 1``
    positions and rolls the rejected ones back)."""
    import torch

    pol = parse_policy(policy)
    if model.training:  # as greedy_decode: no walk over every submodule when already in eval mode
        model.eval()
    prompts, max_new = check_prompts(model, prompts, max_new)
    n = prompts.shape[0]
    stop = stop_array(stop_mask, int(model.cfg.d_vocab))
    dev = next(model.parameters()).device
    res = SpeculativeResult([], pol.name, 0, 0, 0)
    state = AdaptiveState(pol)  # one per call: what later batches learn from earlier ones
    sync(dev)
    t0 = time.perf_counter()
    with torch.no_grad():
        for s in range(0, n, batch_size):
            _speculative_batch(model, drafter, prompts[s:s + batch_size], s, max_new, pol, state, stop, hook, regime,
                               pad_id, dev, res)
    sync(dev)
    res.seconds = time.perf_counter() - t0
    res.policy_state = state.summary()
    return res


def _speculative_batch(model, drafter, prompts, offset, max_new, pol, state, stop, hook, regime, pad_id, dev,
                       res) -> None:
    """Decode one batch of prompts into ``res``. Tokens and lengths stay on the host; the
    device holds the cache and the latents."""
    import torch

    from ..models.objective import normalize_latent

    b, P = prompts.shape
    n_ctx = int(model.cfg.n_ctx)
    if max_new == 0:
        res.tokens.extend(np.zeros(0, dtype=np.int64) for _ in range(b))
        return
    buf = np.full((b, P + max_new + 1), pad_id, dtype=np.int64)
    buf[:, :P] = prompts
    dec = open_decoder(model, b, P + max_new, regime, hook)  # the last draft may sit at P + max_new - 1
    res.regime = dec.regime
    cached = dec.regime == REGIME_CACHED
    row_ids = torch.arange(b, device=dev) + offset
    length = np.full(b, P, dtype=np.int64)  # committed tokens per row (the cache holds all but the pending one)
    n_gen = np.zeros(b, dtype=np.int64)
    done = np.zeros(b, dtype=bool)
    # the prompt forward: the first greedy token (pending) and the latent it came from
    logits, resid = dec.append(torch.as_tensor(buf[:, :P], device=dev), resid=True)
    g, k = greedy_pick(model, logits[:, -1], lambda i: buf[i, :P], cached)
    res.refreshed += k
    h = normalize_latent(resid[:, -1].float())  # latent at the last committed position
    res.forwards += b
    res.batched_forwards += 1
    res.positions += b * P
    while True:
        t_round = time.perf_counter()
        # commit the pending greedy token
        rows = np.flatnonzero(~done)
        if rows.size == 0:
            break
        buf[rows, length[rows]] = g[rows]
        length[rows] += 1
        n_gen[rows] += 1
        done[rows] |= stop[g[rows]] | (n_gen[rows] >= max_new)
        rows = np.flatnonzero(~done)
        if rows.size == 0:
            break
        rt = torch.as_tensor(rows, device=dev)
        # how many tokens each live row may draft, and the drafts
        cap = np.maximum(np.minimum(np.minimum(pol.k, max_new - n_gen[rows]), n_ctx - length[rows]), 0)
        drafts, n_draft, dprob, t_drafting = _draft(drafter, pol, state, h[rt], torch.as_tensor(g[rows], device=dev),
                                                    row_ids[rt], torch.as_tensor(length[rows] - 1, device=dev), cap,
                                                    stop, res)
        # one verification for every live row: the pending token and its drafts at once
        K = drafts.shape[1]
        counts = n_draft + 1
        L = length[rows]
        cols = L[:, None] + np.arange(K)[None, :]
        has = np.arange(K)[None, :] < n_draft[:, None]
        buf[rows[:, None].repeat(K, 1)[has], cols[has]] = drafts[has]
        fed = torch.as_tensor(np.concatenate([g[rows][:, None], np.maximum(drafts, 0)], axis=1), device=dev)
        ragged = None if (counts == K + 1).all() else counts
        logits, resid = dec.append(fed, None if rows.size == b else rows, resid=True, counts=ragged)
        res.forwards += int(rows.size)
        res.verifications += int(rows.size)
        res.batched_forwards += 1
        res.positions += int(rows.size) * (K + 1) if cached else int((L + n_draft).max()) * int(rows.size)
        preds = _verified(model, logits, counts, buf, rows, L, cached, res)  # [r, K + 1], host
        # the longest agreeing prefix of each row's drafts, its roll-back and next pending token
        agree = (preds[:, :K] == drafts) & has
        a = np.where(agree.all(axis=1), n_draft, np.argmin(agree, axis=1)) if K else np.zeros(rows.size, np.int64)
        res.accepted.extend(a.tolist())
        res.drafted.extend(n_draft.tolist())
        dec.truncate(L + a, rows)  # the pending token and the accepted drafts stay in the cache
        for i in np.flatnonzero(a):
            r, ai = rows[i], int(a[i])
            hit = np.flatnonzero(stop[drafts[i, :ai]])
            used = int(hit[0]) + 1 if hit.size else ai  # greedy stops at the first stop token
            done[r] |= bool(hit.size)
            length[r] += used
            n_gen[r] += used
            done[r] |= bool(n_gen[r] >= max_new)
        for i in np.flatnonzero(n_draft):
            state.update(dprob[i, :n_draft[i]], int(a[i]))
        g[rows] = preds[np.arange(rows.size), a]
        h = h.clone()
        h[rt] = normalize_latent(resid[torch.arange(rows.size, device=dev), torch.as_tensor(a, device=dev)].float())
        # what a verification costs beside the drafting: the forward and all this bookkeeping
        state.time("t_verify", time.perf_counter() - t_round - t_drafting)
    res.tokens.extend(buf[i, P:P + int(c)].copy() for i, c in enumerate(n_gen))


def _draft(drafter, pol, state, h, g, row_ids, pos, cap, stop, res):
    """Up to ``cap`` drafted tokens per row from latents ``h`` and pending tokens ``g``:
    (drafts ``[r, K]`` on the host, -1 past each row's count; counts; head probability of
    each draft; seconds spent). ``adaptive`` stops a row when ``ADAPTIVE_RULE`` says the next
    draft would not raise the expected tokens per second. Only the rows still drafting are
    computed at each step."""
    import torch

    t_start = time.perf_counter()
    dev = h.device
    r = h.shape[0]
    K = int(cap.max()) if r else 0
    drafts = np.full((r, K), -1, dtype=np.int64)
    dprob = np.zeros((r, max(K, 1)))
    n_draft = np.zeros(r, dtype=np.int64)
    reach = np.ones(r)  # adaptive: estimated probability that every draft so far is accepted
    gain = np.ones(r)  # adaptive: expected tokens of the verification so far (the pending one, 1)
    go = cap > 0
    if pol.kind == "adaptive":
        go &= _pays(state, reach, gain, n_draft)
    act = np.flatnonzero(go)  # rows still drafting
    if act.size == 0:
        return drafts, n_draft, dprob, time.perf_counter() - t_start
    at = torch.as_tensor(act, device=dev)
    cur_h, cur_tok, cur_ids, cur_pos = h[at], g[at], row_ids[at], pos[at]
    for j in range(K):
        if act.size == 0:
            break
        t0 = time.perf_counter()
        hh = drafter.step(cur_h, cur_tok, cur_ids, cur_pos)
        prob, tok = torch.softmax(drafter.logits(hh, cur_ids, cur_pos).float(), -1).max(-1)
        both = torch.stack((prob.double(), tok.double())).cpu().numpy()  # one transfer (and wait) per step
        state.time("t_draft", time.perf_counter() - t0)
        res.draft_calls += int(act.size)
        prob_np, tok_np = both[0], both[1].astype(np.int64)
        drafts[act, j] = tok_np
        dprob[act, j] = prob_np
        n_draft[act] += 1
        cont = (n_draft[act] < cap[act]) & ~stop[tok_np]
        if pol.kind == "adaptive":
            reach[act] *= state.calibrated(prob_np)
            gain[act] += reach[act]
            cont &= _pays(state, reach[act], gain[act], n_draft[act])
        if not cont.all():
            ct = torch.as_tensor(np.flatnonzero(cont), device=dev)
            hh, tok, cur_ids, cur_pos = hh[ct], tok[ct], cur_ids[ct], cur_pos[ct]
            act = act[cont]
        cur_h, cur_tok, cur_pos = hh.to(cur_h.dtype), tok, cur_pos + 1
    width = int(n_draft.max()) if r else 0  # the verification feeds no more than the longest draft
    return drafts[:, :width], n_draft, dprob, time.perf_counter() - t_start


def _pays(state, reach, gain, n) -> np.ndarray:
    """bool per row: one more draft raises the expected tokens per second of the
    verification (``ADAPTIVE_RULE``): with ``n`` drafts so far of expected yield ``gain``
    (tokens) at a cost of ``1 + n * rho`` verifications, the next one adds ``reach * alpha``
    tokens for ``rho``; it pays when ``reach * alpha / rho >= gain / (1 + n * rho)``."""
    rho = state.rho
    return reach * state.alpha * (1.0 + n * rho) >= rho * gain


def _verified(model, logits, counts, buf, rows, L, approximate: bool, res) -> np.ndarray:
    """The transformer's greedy token after each fed position (host ``[r, K + 1]``). With
    ``approximate`` (a cache), a row with a near-tie (best two logits within ``TIE_LOGIT``) at
    a verified position is re-decided on the full forward over its committed tokens and
    drafts, as greedy decoding re-decides it."""
    import torch

    dev = logits.device
    lg = logits.float()
    if not approximate:
        return lg.argmax(-1).cpu().numpy()
    fed = np.arange(lg.shape[1])[None, :] < np.asarray(counts)[:, None]
    if dev.type == "cpu":  # host memory already: numpy, no further tensor operations
        host = lg.numpy()
        preds = host.argmax(-1)
        r, K1, V = host.shape
        tie = near_tie(host.reshape(r * K1, V), TIE_LOGIT).reshape(r, K1) & fed
        idx = np.flatnonzero(tie.any(axis=1))
    else:  # on the device: argmax and near-tie flags, read back together
        top2 = lg.topk(2, dim=-1).values
        tie = ((top2[..., 0] - top2[..., 1]) < TIE_LOGIT) & torch.as_tensor(fed, device=dev)  # [r, K + 1]
        both = torch.cat([lg.argmax(-1), tie.any(dim=1, keepdim=True).long()], dim=1).cpu().numpy()
        preds, idx = both[:, :-1], np.flatnonzero(both[:, -1])
    for i in idx:  # rare: one full forward per such row
        c = int(counts[i])
        with torch.no_grad():
            ref = model(torch.as_tensor(buf[rows[i]:rows[i] + 1, :L[i] + c - 1], device=dev))[0, L[i] - 1:]
        preds[i, :c] = ref.argmax(-1).cpu().numpy()
    res.refreshed += int(idx.size)
    return preds


# --------------------------------------------------------------------------------------
# comparison of outputs
# --------------------------------------------------------------------------------------
def same_tokens(a: Sequence[np.ndarray], b: Sequence[np.ndarray]) -> np.ndarray:
    """bool per sequence: identical token for token (same length too)."""
    if len(a) != len(b):
        raise AnalysisError(f"same_tokens: {len(a)} vs {len(b)} sequences")
    return np.array([x.shape == y.shape and bool(np.array_equal(x, y)) for x, y in zip(a, b)], dtype=bool)


def _ratio(a: float | None, b: float | None) -> float | None:
    return None if a is None or not b else float(a / b)


def summary(spec: SpeculativeResult, greedy: GreedyResult, k_max: int) -> dict[str, Any]:
    """The metrics of one policy on one model (plain numbers and lists). ``positions_*``:
    token positions the transformer computed (what a forward costs under a cache);
    ``draft_acceptance``: accepted / drafted tokens (the acceptance rate)."""
    n_tok = spec.n_tokens
    n_greedy = max(1, sum(len(t) for t in greedy.tokens))
    same = same_tokens(spec.tokens, greedy.tokens)
    n_ver = len(spec.accepted)
    return {
        "identical_to_greedy": bool(same.all()),
        "n_identical": int(same.sum()),
        "n_prompts": len(spec.tokens),
        "tokens_generated": n_tok,
        "mean_accepted": float(np.mean(spec.accepted)) if n_ver else math.nan,
        "mean_drafted": float(np.mean(spec.drafted)) if n_ver else math.nan,
        "draft_acceptance": float(np.sum(spec.accepted) / max(1, np.sum(spec.drafted))),
        "accepted_histogram": spec.histogram(k_max),
        "verifications": int(n_ver),
        "forwards": int(spec.forwards),
        "forwards_per_token": spec.forwards / n_tok if n_tok else math.nan,
        "tokens_per_forward": n_tok / spec.forwards if spec.forwards else math.nan,
        "greedy_forwards_per_token": greedy.forwards / n_greedy,
        "positions_speculative": int(spec.positions),
        "positions_greedy": int(greedy.positions),
        "positions_per_token": spec.positions / n_tok if n_tok else math.nan,
        "greedy_positions_per_token": greedy.positions / n_greedy,
        "near_ties_refreshed": int(spec.refreshed + greedy.refreshed),
        "draft_cost_ratio": _ratio(spec.policy_state.get("seconds_draft"), spec.policy_state.get("seconds_verification")),
        "draft_calls": int(spec.draft_calls),
        "draft_calls_per_token": spec.draft_calls / n_tok if n_tok else math.nan,
        "batched_forwards": int(spec.batched_forwards),
        "greedy_batched_forwards": int(greedy.batched_forwards),
        "seconds_speculative": float(spec.seconds),
        "seconds_greedy": float(greedy.seconds),
        "speedup": float(greedy.seconds / spec.seconds) if spec.seconds > 0 else math.nan,
    }


__all__ = ["REGIME_NOTES", "ADAPTIVE_RULE", "ADAPTIVE_CAP", "DraftPolicy", "parse_policy", "LatentDrafter",
           "GreedyResult", "SpeculativeResult", "greedy_decode", "speculative_decode", "AdaptiveState", "same_tokens", "summary"]
