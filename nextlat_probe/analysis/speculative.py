"""Self-speculative decoding with NextLat's own latent dynamics p_psi as the draft model.

Drafting: from the transformer's hidden state ``h_t`` (the last block's residual,
``normalize_latent``'d: the latent space p_psi was trained in) the head's greedy token
``x_{t+1}`` is known from the forward that produced ``h_t``. The drafter rolls
``ĥ_{t+1} = p_psi(h_t, e(x_{t+1}))``, decodes ``x̂_{t+2} = argmax U_frozen · LN(ĥ_{t+1})``
(``models.objective._frozen_logits``, the head NextLat's KL term trains against), then
``ĥ_{t+2} = p_psi(ĥ_{t+1}, e(x̂_{t+2}))`` and so on: one p_psi call per drafted token.

Verification: ONE transformer forward over ``prefix + x_{t+1} + drafts``. The longest
prefix of the drafts on which the transformer's own greedy choices agree is accepted; the
transformer's token at the first disagreement (or after the last draft, when all agree)
becomes the next ``x_{t+1}``, and that same forward gives the next ``h_t``. Every emitted
token is therefore the transformer's greedy token: the output equals plain greedy decoding
token for token, with the same stopping rules (a stop token, ``max_new``, the context).

Regime: TransformerLens 4.3's ``TransformerBridge.boot_native`` models have NO key/value
cache (``NativeModel.forward`` swallows ``past_key_values``; its attention only ever sees
the tokens passed in), so both greedy and speculative decoding here run a full forward over
the whole prefix at every step (``REGIME``). In this regime a verification over ``k`` extra
positions costs about as much as one greedy step, which is why tokens per forward
translates almost directly into wall-clock speedup.

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

from .stats import AnalysisError

REGIME = "no_kv_cache"
REGIME_NOTE = ("no key/value cache (TransformerBridge native models offer none): every greedy step and every "
               "verification is a full forward over the whole prefix")
ADAPTIVE_RULE = (
    "confidence threshold tau, tuned online per sequence: draft while the head's probability of the drafted token "
    ">= tau (at most `cap` tokens); after each verification a rejected draft of head probability p moves tau up, "
    "tau += eta_up*(p - tau), and a candidate stopped by tau that equals the transformer's token there (it would "
    "have been accepted) moves tau down, tau -= eta_down*(tau - p_stop); tau stays in [tau_min, tau_max]. "
    "eta_down >> eta_up because without a KV cache a wasted draft costs one p_psi call and one verification "
    "position, while a wrongly stopped draft costs a whole forward"
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
class GreedyResult:
    tokens: list[np.ndarray]  # generated tokens per prompt (prompt not included)
    forwards: int  # transformer forwards summed over rows (one per generated token)
    batched_forwards: int  # model calls
    seconds: float


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

    @property
    def n_tokens(self) -> int:
        return int(sum(len(t) for t in self.tokens))

    def histogram(self, k_max: int | None = None) -> list[int]:
        """Counts of verifications that accepted 0, 1, 2, ... drafted tokens."""
        top = max(self.accepted, default=0) if k_max is None else int(k_max)
        return np.bincount(np.asarray(self.accepted, dtype=np.int64), minlength=top + 1).tolist()


def _sync(device) -> None:
    import torch

    if getattr(device, "type", str(device)).startswith("cuda"):
        torch.cuda.synchronize(device)


def _check_prompts(model, prompts: np.ndarray, max_new: int) -> tuple[np.ndarray, int]:
    prompts = np.asarray(prompts, dtype=np.int64)
    if prompts.ndim != 2 or prompts.shape[1] < 1:
        raise AnalysisError(f"prompts must be [n, P] with P >= 1, got shape {prompts.shape}")
    n_ctx = int(model.cfg.n_ctx)
    P = prompts.shape[1]
    if P > n_ctx:
        raise AnalysisError(f"prompts of {P} tokens exceed the model's context of {n_ctx}")
    # the last token is predicted from position n_ctx - 1: at most n_ctx + 1 tokens in all
    return prompts, max(0, min(int(max_new), n_ctx + 1 - P))


def _stop_array(stop_mask: Any, V: int) -> np.ndarray:
    if stop_mask is None:
        return np.zeros(V, dtype=bool)
    s = np.asarray(stop_mask, dtype=bool)
    if s.shape != (V,):
        raise AnalysisError(f"stop_mask must have one entry per token ({V}), got shape {s.shape}")
    return s


def _forward(model, tokens, hook: str | None):
    """(logits, normalised latents at ``hook`` or None) of one forward."""
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
# plain greedy decoding (the reference)
# --------------------------------------------------------------------------------------
def greedy_decode(model, prompts: np.ndarray, max_new: int, *, stop_mask: Any = None, batch_size: int = 64,
                  pad_id: int = 0) -> GreedyResult:
    """Plain greedy decoding, no cache: each step is one forward over the whole prefix.

    A row stops after a token with ``stop_mask[token]`` True, after ``max_new`` tokens, or
    when the context is full (at most ``n_ctx + 1`` tokens in all)."""
    import torch

    model.eval()
    prompts, max_new = _check_prompts(model, prompts, max_new)
    n, P = prompts.shape
    stop = _stop_array(stop_mask, int(model.cfg.d_vocab))
    dev = next(model.parameters()).device
    out: list[np.ndarray] = []
    forwards = calls = 0
    _sync(dev)
    t0 = time.perf_counter()
    with torch.no_grad():
        for s in range(0, n, batch_size):
            buf = torch.full((min(batch_size, n - s), P + max_new), pad_id, dtype=torch.long, device=dev)
            buf[:, :P] = torch.as_tensor(prompts[s:s + batch_size], device=dev)
            stop_t = torch.as_tensor(stop, device=dev)
            length = P
            alive = torch.ones(buf.shape[0], dtype=torch.bool, device=dev)
            n_gen = torch.zeros(buf.shape[0], dtype=torch.long, device=dev)
            for _ in range(max_new):
                rows = alive.nonzero()[:, 0]
                if rows.numel() == 0:
                    break
                logits = model(buf[rows, :length])
                calls += 1
                forwards += int(rows.numel())
                tok = logits[:, -1].argmax(-1)
                buf[rows, length] = tok
                n_gen[rows] += 1
                alive[rows] = ~stop_t[tok]
                length += 1
            gen = buf[:, P:].cpu().numpy()
            out.extend(gen[i, :int(c)] for i, c in enumerate(n_gen.cpu().numpy()))
    _sync(dev)
    return GreedyResult(out, forwards, calls, time.perf_counter() - t0)


# --------------------------------------------------------------------------------------
# speculative decoding
# --------------------------------------------------------------------------------------
def speculative_decode(model, drafter: Any, prompts: np.ndarray, max_new: int, *, policy: str | DraftPolicy = "fixed:4",
                       stop_mask: Any = None, batch_size: int = 64, pad_id: int = 0,
                       hook: str | None = None) -> SpeculativeResult:
    """Greedy decoding accelerated by drafts from ``drafter`` (``LatentDrafter(model, p_psi)``
    or anything with its ``step`` / ``logits``), verified by the transformer; same stopping
    rules and (by construction) the same tokens as ``greedy_decode``. ``hook``: where the
    latent is read (default: the last block's ``hook_resid_post``)."""
    import torch

    pol = parse_policy(policy)
    model.eval()
    prompts, max_new = _check_prompts(model, prompts, max_new)
    n, P = prompts.shape
    n_ctx = int(model.cfg.n_ctx)
    stop = _stop_array(stop_mask, int(model.cfg.d_vocab))
    if hook is None:
        hook = f"blocks.{int(model.cfg.n_layers) - 1}.hook_resid_post"
    dev = next(model.parameters()).device
    res = SpeculativeResult([], pol.name, 0, 0, 0)
    _sync(dev)
    t0 = time.perf_counter()
    with torch.no_grad():
        for s in range(0, n, batch_size):
            _speculative_batch(model, drafter, prompts[s:s + batch_size], s, max_new, pol, stop, n_ctx, hook,
                               pad_id, dev, res)
    _sync(dev)
    res.seconds = time.perf_counter() - t0
    return res


def _speculative_batch(model, drafter, prompts, offset, max_new, pol, stop, n_ctx, hook, pad_id, dev, res) -> None:
    import torch

    b, P = prompts.shape
    width = P + max_new
    buf = torch.full((b, width + 1), pad_id, dtype=torch.long, device=dev)
    buf[:, :P] = torch.as_tensor(prompts, device=dev)
    row_ids = torch.arange(b, device=dev) + offset
    length = np.full(b, P, dtype=np.int64)  # committed tokens per row
    n_gen = np.zeros(b, dtype=np.int64)
    done = np.zeros(b, dtype=bool)
    if max_new == 0:
        res.tokens.extend(np.zeros(0, dtype=np.int64) for _ in range(b))
        return
    tau = np.full(b, float(pol.tau0))
    # the prompt forward: the first greedy token and the latent it came from
    logits, h_all = _forward(model, buf[:, :P], hook)
    res.forwards += b
    res.batched_forwards += 1
    g = logits[:, -1].argmax(-1)  # pending greedy token per row (torch, on dev)
    h = h_all[:, -1]  # latent at the last committed position
    stop_np = stop
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
        done[rows] |= stop_np[g_np] | (n_gen[rows] >= max_new)
        rows = np.flatnonzero(~done)
        if rows.size == 0:
            break
        rt = torch.as_tensor(rows, device=dev)
        # how many tokens each live row may draft
        cap = np.minimum(np.minimum(pol.k, max_new - n_gen[rows]), n_ctx - length[rows])
        cap = np.maximum(cap, 0)
        K = int(cap.max())
        drafts = torch.full((rows.size, max(K, 1)), -1, dtype=torch.long, device=dev)
        dprob = np.zeros((rows.size, max(K, 1)))  # head probability of each drafted token
        n_draft = np.zeros(rows.size, dtype=np.int64)
        stop_p = np.full(rows.size, np.nan)  # adaptive: probability of the candidate that tau stopped
        stop_tok = np.full(rows.size, -1, dtype=np.int64)
        drafting = cap > 0
        cur_h, cur_tok = h[rt], g[rt]
        pos = torch.as_tensor(length[rows] - 1, device=dev)
        for j in range(K):
            act = np.flatnonzero(drafting)
            if act.size == 0:
                break
            at = torch.as_tensor(act, device=dev)
            hh = drafter.step(cur_h[at], cur_tok[at], row_ids[rt[at]], pos[at])
            res.draft_calls += int(act.size)
            lg = drafter.logits(hh, row_ids[rt[at]], pos[at]).float()
            prob, tok = torch.softmax(lg, -1).max(-1)
            tok_np, prob_np = tok.cpu().numpy(), prob.double().cpu().numpy()
            keep = np.ones(act.size, dtype=bool)
            if pol.kind == "adaptive":
                keep = prob_np >= tau[rows[act]]
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
            drafting[ka] &= (n_draft[ka] < cap[ka]) & ~stop_np[tok_np[keep]]
        # one verification forward over prefix + drafts for every live row
        for i in range(rows.size):
            if n_draft[i]:
                buf[rows[i], length[rows[i]]:length[rows[i]] + n_draft[i]] = drafts[i, :n_draft[i]]
        W = int((length[rows] + n_draft).max())
        logits, h_all = _forward(model, buf[rt, :W], hook)
        res.forwards += int(rows.size)
        res.verifications += int(rows.size)
        res.batched_forwards += 1
        preds = logits.argmax(-1)  # [r, W]: the transformer's token after each position
        preds_np = preds.cpu().numpy()
        drafts_np = drafts.cpu().numpy()
        sel = np.zeros(rows.size, dtype=np.int64)
        for i, r in enumerate(rows):
            L, nd = int(length[r]), int(n_draft[i])
            want = preds_np[i, L - 1:L - 1 + nd]
            agree = want == drafts_np[i, :nd]
            a = nd if agree.all() else int(np.argmin(agree))
            res.accepted.append(a)
            res.drafted.append(nd)
            used = a
            if a:
                acc = drafts_np[i, :a]
                hit = np.flatnonzero(stop_np[acc])
                if hit.size:  # greedy stops at the first stop token
                    used = int(hit[0]) + 1
                    done[r] = True
                length[r] += used
                n_gen[r] += used
                if n_gen[r] >= max_new:
                    done[r] = True
            sel[i] = L - 1 + a
            if pol.kind == "adaptive":
                tau[r] = update_tau(pol, tau[r], a, nd, dprob[i, a] if a < nd else math.nan,
                                    int(preds_np[i, L - 1 + a]), stop_p[i], int(stop_tok[i]))
        st = torch.as_tensor(sel, device=dev)
        ar = torch.arange(rows.size, device=dev)
        new_g = preds[ar, st]
        new_h = h_all[ar, st]
        g = g.clone()
        h = h.clone()
        g[rt], h[rt] = new_g, new_h.to(h.dtype)
        # positions past the committed length may hold rejected drafts: later verifications
        # overwrite them before reading, and causal attention never looks ahead
    gen = buf[:, P:].cpu().numpy()
    res.tokens.extend(gen[i, :int(c)] for i, c in enumerate(n_gen))
    res.final_tau.extend(float(t) for t in tau)


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
    """The metrics of one policy on one model (plain numbers and lists)."""
    n_tok = spec.n_tokens
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
        "greedy_forwards_per_token": greedy.forwards / max(1, sum(len(t) for t in greedy.tokens)),
        "draft_calls": int(spec.draft_calls),
        "draft_calls_per_token": spec.draft_calls / n_tok if n_tok else math.nan,
        "batched_forwards": int(spec.batched_forwards),
        "greedy_batched_forwards": int(greedy.batched_forwards),
        "seconds_speculative": float(spec.seconds),
        "seconds_greedy": float(greedy.seconds),
        "speedup": float(greedy.seconds / spec.seconds) if spec.seconds > 0 else math.nan,
    }


__all__ = ["REGIME", "REGIME_NOTE", "ADAPTIVE_RULE", "ADAPTIVE_CAP", "DraftPolicy", "parse_policy", "LatentDrafter",
           "GreedyResult", "SpeculativeResult", "greedy_decode", "speculative_decode", "update_tau", "same_tokens", "summary"]
