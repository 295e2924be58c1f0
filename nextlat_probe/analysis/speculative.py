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
``ADAPTIVE_RULE``) drafts while the head's probability of the drafted token stays above a
threshold that is tuned online, per sequence, from that sequence's verification outcomes.

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
    "confidence threshold tau, tuned online per sequence: draft while the head's probability of the drafted token "
    ">= tau (at most `cap` tokens); after each verification a rejected draft of head probability p moves tau up, "
    "tau += eta_up*(p - tau), and a candidate stopped by tau that equals the transformer's token there (it would "
    "have been accepted) moves tau down, tau -= eta_down*(tau - p_stop); tau stays in [tau_min, tau_max]. "
    "eta_down >> eta_up because a wasted draft costs one p_psi call and one verification position, while a "
    "wrongly stopped draft costs a whole extra verification (a forward call)"
)


# --------------------------------------------------------------------------------------
# policies
# --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class DraftPolicy:
    """How many tokens to draft per verification. ``kind``: ``fixed`` (``k`` tokens) or
    ``adaptive`` (at most ``k`` = the cap, stopped by the online threshold)."""

    kind: str
    k: int
    tau0: float = 0.1
    eta_up: float = 0.05
    eta_down: float = 0.5
    tau_min: float = 0.0
    tau_max: float = 0.99

    @property
    def name(self) -> str:
        if self.kind == "fixed":
            return f"fixed:{self.k}"
        return "adaptive" if self.k == ADAPTIVE_CAP else f"adaptive:{self.k}"

    def params(self) -> dict[str, Any]:
        if self.kind == "fixed":
            return {"policy": "fixed", "k": self.k, "rule": f"draft exactly {self.k} tokens (fewer at the end of the "
                                                             "budget or context, none past a drafted stop token)"}
        return {"policy": "adaptive", "cap": self.k, "tau0": self.tau0, "eta_up": self.eta_up, "eta_down": self.eta_down,
                "tau_min": self.tau_min, "tau_max": self.tau_max, "rule": ADAPTIVE_RULE}


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
        if dynamics is None:
            raise AnalysisError("speculative decoding needs NextLat's latent dynamics p_psi (none given)")
        self.model = model
        self.dynamics = dynamics.eval()

    def step(self, h, tok, rows, pos):
        """ĥ at position ``pos`` from the latent at ``pos - 1`` and the token at ``pos``."""
        from ..models.transformer import token_embeddings

        return self.dynamics(h, token_embeddings(self.model, tok))

    def logits(self, h, rows, pos):
        """Logits of the token after position ``pos`` from the latent ``h`` there."""
        from ..models.objective import _frozen_logits

        return _frozen_logits(self.model, h)


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
    final_tau: list[float] = field(default_factory=list)  # adaptive: threshold per row at the end
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
    model.eval()
    prompts, max_new = check_prompts(model, prompts, max_new)
    n = prompts.shape[0]
    stop = stop_array(stop_mask, int(model.cfg.d_vocab))
    dev = next(model.parameters()).device
    res = SpeculativeResult([], pol.name, 0, 0, 0)
    sync(dev)
    t0 = time.perf_counter()
    with torch.no_grad():
        for s in range(0, n, batch_size):
            _speculative_batch(model, drafter, prompts[s:s + batch_size], s, max_new, pol, stop, hook, regime,
                               pad_id, dev, res)
    sync(dev)
    res.seconds = time.perf_counter() - t0
    return res


def _speculative_batch(model, drafter, prompts, offset, max_new, pol, stop, hook, regime, pad_id, dev, res) -> None:
    import torch

    from ..models.objective import normalize_latent

    b, P = prompts.shape
    n_ctx = int(model.cfg.n_ctx)
    if max_new == 0:
        res.tokens.extend(np.zeros(0, dtype=np.int64) for _ in range(b))
        return
    buf = torch.full((b, P + max_new + 1), pad_id, dtype=torch.long, device=dev)
    buf[:, :P] = torch.as_tensor(prompts, device=dev)
    dec = open_decoder(model, b, P + max_new - 1, regime, hook)
    res.regime = dec.regime
    cached = dec.regime == REGIME_CACHED
    row_ids = torch.arange(b, device=dev) + offset
    length = np.full(b, P, dtype=np.int64)  # committed tokens per row (the cache holds all but the pending one)
    n_gen = np.zeros(b, dtype=np.int64)
    done = np.zeros(b, dtype=bool)
    tau = np.full(b, float(pol.tau0))
    # the prompt forward: the first greedy token and the latent it came from
    logits, resid = dec.append(buf[:, :P], resid=True)
    g, k = greedy_pick(model, logits[:, -1], lambda i: buf[i, :P], cached)
    res.refreshed += k
    h = normalize_latent(resid[:, -1].float())  # latent at the last committed position
    res.forwards += b
    res.batched_forwards += 1
    res.positions += b * P
    while True:
        # commit the pending greedy token
        rows = np.flatnonzero(~done)
        if rows.size == 0:
            break
        rt = torch.as_tensor(rows, device=dev)
        g_np = g[rt].cpu().numpy()
        buf[rt, torch.as_tensor(length[rows], device=dev)] = g[rt]
        length[rows] += 1
        n_gen[rows] += 1
        done[rows] |= stop[g_np] | (n_gen[rows] >= max_new)
        rows = np.flatnonzero(~done)
        if rows.size == 0:
            break
        rt = torch.as_tensor(rows, device=dev)
        # how many tokens each live row may draft
        cap = np.maximum(np.minimum(np.minimum(pol.k, max_new - n_gen[rows]), n_ctx - length[rows]), 0)
        drafts, n_draft, dprob, stop_p, stop_tok = _draft(drafter, pol, h[rt], g[rt], row_ids[rt],
                                                         torch.as_tensor(length[rows] - 1, device=dev), cap,
                                                         tau[rows], stop, res)
        # one verification for every live row: the pending token and its drafts at once
        K = drafts.shape[1]
        fed = torch.cat([g[rt][:, None], drafts.clamp(min=0)], dim=1)  # [r, K + 1] (past a row's drafts: unused)
        counts = n_draft + 1
        for i in np.flatnonzero(n_draft):
            buf[rows[i], length[rows[i]]:length[rows[i]] + n_draft[i]] = drafts[i, :n_draft[i]]
        ragged = None if (counts == K + 1).all() else torch.as_tensor(counts, device=dev)
        logits, resid = dec.append(fed, None if rows.size == b else rt, resid=True, counts=ragged)
        res.forwards += int(rows.size)
        res.verifications += int(rows.size)
        res.batched_forwards += 1
        res.positions += int(rows.size) * (K + 1) if cached else int((length[rows] + n_draft).max()) * int(rows.size)
        preds = logits.argmax(-1)  # [r, K + 1]: the transformer's token after the pending one and each draft
        if cached:
            preds, k = _refresh_ties(model, logits, preds, counts, buf, rows, length, dev)
            res.refreshed += k
        preds_np = preds.cpu().numpy()
        drafts_np = drafts.cpu().numpy()
        sel = np.zeros(rows.size, dtype=np.int64)
        keep = np.zeros(rows.size, dtype=np.int64)  # cache length per row after the roll-back
        for i, r in enumerate(rows):
            L, nd = int(length[r]), int(n_draft[i])
            agree = preds_np[i, :nd] == drafts_np[i, :nd]
            a = nd if agree.all() else int(np.argmin(agree))
            res.accepted.append(a)
            res.drafted.append(nd)
            keep[i] = L + a  # the pending token and the accepted drafts stay in the cache
            if a:
                acc = drafts_np[i, :a]
                hit = np.flatnonzero(stop[acc])
                used = int(hit[0]) + 1 if hit.size else a  # greedy stops at the first stop token
                done[r] |= bool(hit.size)
                length[r] += used
                n_gen[r] += used
                if n_gen[r] >= max_new:
                    done[r] = True
            sel[i] = a
            if pol.kind == "adaptive":
                tau[r] = update_tau(pol, tau[r], a, nd, dprob[i, a] if a < nd else math.nan,
                                    int(preds_np[i, a]), stop_p[i], int(stop_tok[i]))
        dec.truncate(torch.as_tensor(keep, device=dev), rt)
        ar = torch.arange(rows.size, device=dev)
        st = torch.as_tensor(sel, device=dev)
        g, h = g.clone(), h.clone()
        g[rt] = preds[ar, st]
        h[rt] = normalize_latent(resid[ar, st].float()).to(h.dtype)
    gen = buf[:, P:].cpu().numpy()
    res.tokens.extend(gen[i, :int(c)] for i, c in enumerate(n_gen))
    res.final_tau.extend(float(t) for t in tau)


def _draft(drafter, pol, h, g, row_ids, pos, cap, tau, stop, res):
    """Up to ``cap`` drafted tokens per row from latents ``h`` and pending tokens ``g``:
    (drafts ``[r, K]`` (-1 past each row's count), counts, head probability of each draft,
    probability and token of the candidate the adaptive threshold stopped (NaN / -1 where
    none))."""
    import torch

    dev = h.device
    r = h.shape[0]
    K = int(cap.max()) if r else 0
    drafts = torch.full((r, K), -1, dtype=torch.long, device=dev)
    dprob = np.zeros((r, max(K, 1)))
    n_draft = np.zeros(r, dtype=np.int64)
    stop_p = np.full(r, np.nan)
    stop_tok = np.full(r, -1, dtype=np.int64)
    drafting = cap > 0
    cur_h, cur_tok = h, g
    for j in range(K):
        act = np.flatnonzero(drafting)
        if act.size == 0:
            break
        at = torch.as_tensor(act, device=dev)
        hh = drafter.step(cur_h[at], cur_tok[at], row_ids[at], pos[at])
        res.draft_calls += int(act.size)
        lg = drafter.logits(hh, row_ids[at], pos[at]).float()
        prob, tok = torch.softmax(lg, -1).max(-1)
        tok_np, prob_np = tok.cpu().numpy(), prob.double().cpu().numpy()
        keep = np.ones(act.size, dtype=bool)
        if pol.kind == "adaptive":
            keep = prob_np >= tau[act]
            stop_p[act[~keep]] = prob_np[~keep]
            stop_tok[act[~keep]] = tok_np[~keep]
        ka = act[keep]
        drafts[torch.as_tensor(ka, device=dev), j] = tok[torch.as_tensor(np.flatnonzero(keep), device=dev)]
        dprob[ka, j] = prob_np[keep]
        n_draft[ka] += 1
        nh, nt = cur_h.clone(), cur_tok.clone()
        nh[at], nt[at] = hh.to(nh.dtype), tok
        cur_h, cur_tok = nh, nt
        pos = pos + 1
        drafting[act[~keep]] = False
        drafting[ka] &= (n_draft[ka] < cap[ka]) & ~stop[tok_np[keep]]
    return drafts, n_draft, dprob, stop_p, stop_tok


def _refresh_ties(model, logits, preds, counts, buf, rows, length, dev):
    """``preds`` with the rows that hold a near-tie (best two logits within ``TIE_LOGIT``) at
    a verified position re-decided on the full forward over the committed tokens and the
    drafts (what plain greedy decoding re-decides on), and how many rows that was."""
    import torch

    top2 = logits.float().topk(2, dim=-1).values
    tie = (top2[..., 0] - top2[..., 1]) < TIE_LOGIT  # [r, K + 1]
    tie &= torch.arange(logits.shape[1], device=dev)[None, :] < torch.as_tensor(counts, device=dev)[:, None]
    idx = tie.any(dim=1).nonzero()[:, 0].cpu().numpy()
    if idx.size == 0:
        return preds, 0
    preds = preds.clone()
    for i in idx:  # rare: one full forward per such row
        L, c = int(length[rows[i]]), int(counts[i])
        ref = model(buf[rows[i]:rows[i] + 1, :L + c - 1])[0, L - 1:]
        preds[i, :c] = ref.argmax(-1)
    return preds, int(idx.size)


def update_tau(pol: DraftPolicy, tau: float, accepted: int, drafted: int, p_rejected: float, next_token: int,
               p_stop: float, tok_stop: int) -> float:
    """One step of ``ADAPTIVE_RULE`` after a verification: ``p_rejected`` is the head
    probability of the first rejected draft (NaN when none was rejected), ``tok_stop`` /
    ``p_stop`` the candidate the threshold stopped (-1 / NaN when drafting ended for another
    reason: the cap, the budget, a drafted stop token) and ``next_token`` the transformer's
    token at that position (what the candidate would have been checked against)."""
    if accepted < drafted:  # a confident draft was wrong: be more careful
        tau = tau + pol.eta_up * (p_rejected - tau)
    elif tok_stop >= 0 and tok_stop == next_token:  # stopped a draft that would have been accepted
        tau = tau - pol.eta_down * (tau - p_stop)
    return _clip(pol, tau)


def _clip(pol: DraftPolicy, tau: float) -> float:
    return float(min(pol.tau_max, max(pol.tau_min, tau)))


# --------------------------------------------------------------------------------------
# comparison of outputs
# --------------------------------------------------------------------------------------
def same_tokens(a: Sequence[np.ndarray], b: Sequence[np.ndarray]) -> np.ndarray:
    """bool per sequence: identical token for token (same length too)."""
    if len(a) != len(b):
        raise AnalysisError(f"same_tokens: {len(a)} vs {len(b)} sequences")
    return np.array([x.shape == y.shape and bool(np.array_equal(x, y)) for x, y in zip(a, b)], dtype=bool)


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
        "draft_calls": int(spec.draft_calls),
        "draft_calls_per_token": spec.draft_calls / n_tok if n_tok else math.nan,
        "batched_forwards": int(spec.batched_forwards),
        "greedy_batched_forwards": int(greedy.batched_forwards),
        "seconds_speculative": float(spec.seconds),
        "seconds_greedy": float(greedy.seconds),
        "speedup": float(greedy.seconds / spec.seconds) if spec.seconds > 0 else math.nan,
    }


__all__ = ["REGIME_NOTES", "ADAPTIVE_RULE", "ADAPTIVE_CAP", "DraftPolicy", "parse_policy", "LatentDrafter",
           "GreedyResult", "SpeculativeResult", "greedy_decode", "speculative_decode", "update_tau", "same_tokens", "summary"]
