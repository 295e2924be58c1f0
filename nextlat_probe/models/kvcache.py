"""Incremental decoding: a key/value cache on the bridge's own parameters.

TransformerLens 4.3's ``TransformerBridge.boot_native`` models have no key/value cache
(``NativeModel.forward`` ignores ``past_key_values``), so decoding with ``model(tokens)``
recomputes the whole prefix at every step: O(L²) work per sequence of L tokens. This module
runs the same computation incrementally, beside ``models.fastpath`` (the hook-free training
forward), reading the SAME parameter tensors:

- ``KVCache``: preallocated keys and values ``[layer, batch, capacity, heads, d_head]`` and
  one length per row (rows of one batch may hold prefixes of different lengths);
- ``CachedDecoder.append(tokens [b, k], rows)``: feed ``k`` tokens to each of ``rows`` at
  once, each row at its own position offset (its length), and get the logits (and,
  optionally, the last block's residual) at those ``k`` positions;
- ``CachedDecoder.truncate(lengths, rows)``: roll each row back to its own length (a
  speculative verification's rejected drafts). Stale keys past a row's length are never
  read: a query at position p attends to keys 0..p only, and those are rewritten before
  any later query reaches them.

Positions: learned tables (``learned`` and ``none``: the table row of each absolute
position) and rotary (the model's own cos / sin tables at each absolute position, applied
to queries and keys before the keys are cached). The attention is computed as the native
model computes it (scores divided by the model's scale, masked, softmax, weighted values), so
logits agree with ``model(tokens)`` to float round-off (``tests/test_kvcache.py``: 1e-5 in
fp32 at every step).

``supports(model)`` says whether the cache reproduces the model (the native architecture
this package builds, and legacy TransformerLens models loaded into it: pre-norm LN / RMS /
LNPre / RMSPre, a plain MLP, causal multi-head attention, learned or rotary positions, no
soft-capping). Anything else (a Hugging Face GPT-2 bridge, a vocabulary-mapped wrapper, a
gated MLP, grouped-query attention) gets ``FullForwardDecoder``: the same interface, each
call one full forward over the prefix (what decoding did before the cache). ``decoder()``
picks one and its ``regime`` (``REGIME_CACHED`` / ``REGIME_FULL``) is what records report.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from jaxtyping import Int
from torch import Tensor

from .fastpath import _inner

#: the two decoding regimes a record can name (``params["regime"]``)
REGIME_CACHED = "kv_cache"
REGIME_FULL = "full_forward"
REGIMES = (REGIME_CACHED, REGIME_FULL)
#: a cache larger than this (bytes) is not allocated: ``decoder`` falls back to full forwards
#: (an evaluation of thousands of rows of long trips on a big model would not fit a CPU's
#: memory; pass ``max_cache_bytes`` to allow more)
MAX_CACHE_BYTES = 4 * 2**30


def _cfg(model, name, default=None):
    return getattr(getattr(model, "cfg", None), name, default)


def unsupported_reason(model) -> str | None:
    """None when ``CachedDecoder`` reproduces ``model(tokens)``; otherwise why not (one
    phrase, for the record of a full-forward fallback)."""
    try:
        if _cfg(model, "architecture") != "TransformerLensNative":
            return f"architecture {_cfg(model, 'architecture', type(model).__name__)!r} (only the native bridge is cached)"
        if not all(hasattr(model, n) for n in ("embed", "blocks", "ln_final", "unembed")):
            return "not a bridge (a wrapped model)"
        if _cfg(model, "attention_dir", "causal") != "causal" or _cfg(model, "attn_only", False):
            return "non-causal or attention-only model"
        if _cfg(model, "gated_mlp", False):
            return "gated MLP"
        kv = _cfg(model, "n_key_value_heads")
        if kv not in (None, _cfg(model, "n_heads")):
            return "grouped-query attention"
        for cap in ("attn_scores_soft_cap", "output_logits_soft_cap"):
            v = _cfg(model, cap, -1.0)
            if v is not None and float(v) > 0:
                return "soft-capping"
        kind = (_cfg(model, "positional_embedding_type") or "standard").lower()
        if kind == "standard":
            if getattr(model, "pos_embed", None) is None:
                return "no position table"
        elif kind == "rotary":
            if getattr(model.cfg, "rope_scaling", None):
                return "scaled rotary positions"
        else:
            return f"positional embedding {kind!r}"
        for block in model.blocks:
            attn, mlp = _inner(block.attn), _inner(block.mlp)
            if not all(hasattr(attn, n) for n in ("q", "k", "v", "o", "scale")):
                return "unfamiliar attention module"
            if kind == "rotary":
                rot = getattr(attn, "rotary", None)
                if rot is None or not all(hasattr(rot, n) for n in ("cos_cached", "sin_cached", "rotary_dim")):
                    return "unfamiliar rotary module"
            if not all(hasattr(mlp, n) for n in ("fc_in", "fc_out", "act")):
                return "unfamiliar MLP module"
        return None
    except Exception as exc:  # an unfamiliar model: the full forward is always right
        return f"unfamiliar model ({type(exc).__name__})"


def supports(model) -> bool:
    """True when ``CachedDecoder`` computes exactly what ``model(tokens)`` computes."""
    return unsupported_reason(model) is None


def _rotate(x: Tensor, cos: Tensor, sin: Tensor, rd: int) -> Tensor:
    """RoPE in the native model's adjacent-pair form on ``x [b, k, H, dh]`` (first ``rd``
    dimensions) with ``cos`` / ``sin`` ``[b, k, 1, rd]``."""
    x_rot, x_pass = x[..., :rd], x[..., rd:]
    rot = torch.stack((-x_rot[..., 1::2], x_rot[..., 0::2]), dim=-1).flatten(-2)
    x_rot = x_rot * cos + rot * sin
    return torch.cat([x_rot, x_pass], dim=-1) if x_pass.shape[-1] else x_rot


class KVCache:
    """Keys and values of ``batch`` rows, ``capacity`` positions each, in one tensor
    ``kv [layer, slot, position, 2 (key, value), head, d_head]``, and the number of positions
    each row holds (``lengths``, int64 on the host: positions and masks are built there, so
    a decoding step never waits for the device to learn its own shapes)."""

    def __init__(self, n_layers: int, batch: int, capacity: int, n_heads: int, d_head: int, *,
                 device: torch.device, dtype: torch.dtype):
        self.kv = torch.zeros((n_layers, batch, capacity, 2, n_heads, d_head), device=device, dtype=dtype)
        self.lengths = np.zeros(batch, dtype=np.int64)
        self.capacity = int(capacity)

    @staticmethod
    def nbytes(model, batch: int, capacity: int) -> int:
        """Bytes a cache of ``batch`` rows and ``capacity`` positions takes for ``model``."""
        dtype = next(model.parameters()).dtype
        per = int(model.cfg.n_layers) * 2 * int(model.cfg.n_heads) * int(model.cfg.d_head)
        return per * int(batch) * int(capacity) * torch.finfo(dtype).bits // 8


def _host(x, dtype=np.int64) -> np.ndarray:
    """A host (numpy) copy of indices or lengths given as a tensor, array or sequence."""
    if isinstance(x, Tensor):
        x = x.detach().cpu().numpy()
    return np.asarray(x, dtype=dtype)


def _positions(start: np.ndarray, k: int, counts, capacity: int, n_ctx: int):
    """(positions ``[b, k]``, bool ``[b, k]`` of the tokens taken or None when all are,
    positions attended ``T``) of an append of ``k`` tokens to rows of lengths ``start``.
    Positions of tokens not taken are clamped into the table (their outputs are unused)."""
    pos = start[:, None] + np.arange(k)[None, :]
    valid = None if counts is None else np.arange(k)[None, :] < _host(counts)[:, None]
    last = pos if valid is None else np.where(valid, pos, 0)
    T = int(last.max()) + 1 if pos.size else 0
    if T > capacity:
        raise ValueError(f"append: {T} positions exceed the decoder's capacity of {capacity} "
                         f"(the model's context is {n_ctx})")
    if valid is not None:
        pos = np.minimum(pos, max(T - 1, 0))
    return pos, valid, T


def _np_rows(rows, batch: int) -> np.ndarray:
    """Row indices as a numpy array (a tensor is read back from its device)."""
    rows = _host(rows).reshape(-1)
    if rows.size and (rows.min() < 0 or rows.max() >= batch):
        raise ValueError(f"rows must lie in 0..{batch - 1}")
    return rows


def _weights(module) -> tuple[Tensor, Tensor | None]:
    """(weight, bias or None) of the linear layer a bridge component wraps."""
    inner = _inner(module)
    return inner.weight, getattr(inner, "bias", None)


class CachedDecoder:
    """Incremental forward of ``model`` for ``batch`` rows of up to ``capacity`` tokens
    (default the model's context). The bridge's modules are looked up once, here (a
    decoding step then costs a few tensor operations per layer and no bridge attribute
    lookups, which dominate a small model's step), and the query, key and value projections
    are one matrix product (their weights concatenated here). A decoder reads the parameters
    as they are at its creation; build a new one after changing the model."""

    regime = REGIME_CACHED

    def __init__(self, model, batch: int, capacity: int | None = None):
        reason = unsupported_reason(model)
        if reason is not None:
            raise ValueError(f"no key/value cache for this model: {reason}")
        cfg = model.cfg
        self.model = model
        self.n_ctx = int(cfg.n_ctx)
        self.capacity = min(self.n_ctx, int(capacity or self.n_ctx))
        p = next(model.parameters())
        self.device, self.dtype = p.device, p.dtype
        self.H, self.dh = int(cfg.n_heads), int(cfg.d_head)
        self.cache = KVCache(int(cfg.n_layers), int(batch), self.capacity, self.H, self.dh,
                             device=self.device, dtype=self.dtype)
        # rows keep their index; their keys live in slots of the cache (``compact`` moves them)
        self.batch = int(batch)
        self.slot = np.arange(self.batch)
        self.row_of_slot = np.arange(self.batch)
        self.rotary = None
        if (getattr(cfg, "positional_embedding_type", None) or "standard").lower() == "rotary":
            self.rotary = _inner(model.blocks[0].attn).rotary
        self.embed = _inner(model.embed).weight
        self.pos_table = None if self.rotary is not None else _inner(model.pos_embed).weight
        self.layers = []
        with torch.no_grad():
            for block in model.blocks:
                attn, mlp = _inner(block.attn), _inner(block.mlp)
                (wq, bq), (wk, bk), (wv, bv) = _weights(attn.q), _weights(attn.k), _weights(attn.v)
                biases = [b if b is not None else torch.zeros(w.shape[0], device=w.device, dtype=w.dtype)
                          for w, b in ((wq, bq), (wk, bk), (wv, bv))]
                qkv = (torch.cat([wq, wk, wv]), torch.cat(biases))
                self.layers.append((_norm_fn(_inner(block.ln1)), qkv, _weights(attn.o), 1.0 / float(attn.scale),
                                    _norm_fn(_inner(block.ln2)), mlp.act, getattr(mlp, "ln", None),
                                    _weights(mlp.fc_in), _weights(mlp.fc_out)))
        self.ln_final, self.unembed = _norm_fn(_inner(model.ln_final)), _weights(model.unembed)

    @property
    def lengths(self) -> Int[Tensor, " batch"]:
        """Tokens each row holds (by row, whatever its slot)."""
        return torch.as_tensor(self.cache.lengths, device=self.device)

    def truncate(self, lengths, rows=None) -> None:
        """Roll rows back (or forward over what they already hold) to ``lengths``."""
        r = np.arange(self.batch) if rows is None else _np_rows(rows, self.batch)
        self.cache.lengths[r] = _host(lengths)

    def compact(self, rows) -> None:
        """Keep only ``rows`` in the cache, in slots ``0 .. len(rows) - 1`` (one copy): later
        appends to them read contiguous keys. Other rows can no longer be appended to."""
        rows = _np_rows(rows, self.batch)
        self.cache.kv = self.cache.kv[:, torch.as_tensor(self.slot[rows], device=self.device)]
        self.slot[:] = -1
        self.slot[rows] = np.arange(rows.size)
        self.row_of_slot = rows.copy()

    @torch.no_grad()
    def append(self, tokens: Int[Tensor, "b k"], rows=None, resid: bool = False, counts=None):
        """Feed ``tokens[i]`` to row ``rows[i]`` (default: every row, in order) at positions
        ``lengths[row] .. lengths[row] + k - 1``; the rows' lengths grow by ``k``. Returns the
        logits ``[b, k, vocab]`` at those positions, and with ``resid`` also the last block's
        residual output ``[b, k, d_model]``. ``counts`` (one per row, 1..k): row ``i`` takes
        only its first ``counts[i]`` tokens (ragged appends); the outputs past them are
        meaningless and nothing of them enters the cache.

        The computation runs over the contiguous span of cache slots that holds ``rows`` (a
        view of the cache, no copy); rows of the span not appended to ride along with nothing
        taken. When ``rows`` fill less than half their span (rows of a batch that finished
        early), the cache is first compacted to them."""
        tokens = torch.as_tensor(tokens, dtype=torch.long, device=self.device)
        b, k = tokens.shape
        r = np.arange(b) if rows is None else _np_rows(rows, self.batch)
        slots = self.slot[r]
        if (slots < 0).any():
            raise ValueError("append: row(s) no longer in the cache (compacted away)")
        lo, hi = (int(slots.min()), int(slots.max()) + 1) if b else (0, 0)
        if b and b < 0.5 * (hi - lo):
            self.compact(r)
            slots, lo, hi = self.slot[r], 0, b
        lengths = self.cache.lengths
        if counts is None and hi - lo == b and (slots == np.arange(lo, hi)).all():
            sel = None  # the rows are the span, in order: nothing to pad
            cnt = None
        else:  # the whole span, each appended row at its slot, the others taking nothing
            sel = slots - lo
            padded = torch.zeros((hi - lo, k), dtype=torch.long, device=self.device)
            padded[torch.as_tensor(sel, device=self.device)] = tokens
            tokens = padded
            cnt = np.zeros(hi - lo, dtype=np.int64)
            cnt[sel] = k if counts is None else _host(counts)
        start = lengths[self.row_of_slot[lo:hi]]
        pos, valid, T = _positions(start, k, cnt, self.capacity, self.n_ctx)
        logits, x = self._run(tokens, pos, valid, T, lo, hi)
        taken = k if valid is None else valid.sum(1)
        lengths[self.row_of_slot[lo:hi]] = start + taken
        if sel is None:
            return (logits, x) if resid else logits
        at = torch.as_tensor(sel, device=self.device)
        return (logits[at], x[at]) if resid else logits[at]

    def _run(self, tokens, pos_np: np.ndarray, valid_np, T: int, lo: int, hi: int):
        """(logits, last residual) of ``tokens [span, k]`` at positions ``pos_np`` for the
        cache slots ``lo:hi``; only the positions ``valid_np`` (all when None) are cached.
        When every row appends at the same position (greedy steps, prompts of one length)
        positions are slices and a single new token needs no mask: no index tensors at all."""
        dev = self.device
        span, k = tokens.shape
        p0 = int(pos_np[0, 0]) if valid_np is None and (pos_np[:, 0] == pos_np[0, 0]).all() else None
        pos = slice(p0, p0 + k) if p0 is not None else torch.as_tensor(pos_np, device=dev)
        x = F.embedding(tokens, self.embed)
        if self.rotary is None:
            x = x + self.pos_table[pos]
            cos = sin = None
        else:
            rd = int(self.rotary.rotary_dim)
            cos = self.rotary.cos_cached[pos].to(x.dtype).unsqueeze(-2)
            sin = self.rotary.sin_cached[pos].to(x.dtype).unsqueeze(-2)
        # key position j is visible from query position p iff j <= p (causal); keys past a
        # row's own length hold stale values and are hidden the same way
        visible = None
        if not (p0 is not None and k == 1):
            visible = torch.as_tensor(np.arange(T)[None, None, :] <= pos_np[:, :, None], device=dev)[:, None]
        if p0 is not None:
            at = (slice(None), pos)
        elif valid_np is None:
            at = (torch.arange(span, device=dev)[:, None], pos)
        else:
            rr, cc = np.nonzero(valid_np)
            at = (torch.as_tensor(rr, device=dev), torch.as_tensor(pos_np[rr, cc], device=dev))
            keep = torch.as_tensor(valid_np, device=dev)
        H, dh = self.H, self.dh
        for layer, (ln1, wqkv, wo, scale, ln2, act, mid_ln, w_in, w_out) in enumerate(self.layers):
            kv = self.cache.kv[layer, lo:hi]  # [span, capacity, 2, H, dh]: a view of the cache
            q, kk, v = F.linear(ln1(x), *wqkv).view(span, k, 3, H, dh).unbind(2)
            if cos is not None:
                q, kk = _rotate(q, cos, sin, rd), _rotate(kk, cos, sin, rd)
            new = torch.stack((kk, v), dim=2)  # [span, k, 2, H, dh]
            kv[at] = new if valid_np is None else new[keep]
            keys, vals = kv[:, :T].unbind(2)  # [span, T, H, dh]
            z = F.scaled_dot_product_attention(q.transpose(1, 2), keys.transpose(1, 2), vals.transpose(1, 2),
                                               attn_mask=visible, scale=scale)
            x = x + F.linear(z.transpose(1, 2).reshape(span, k, H * dh), *wo)
            mid = act(F.linear(ln2(x), *w_in))
            if mid_ln is not None:
                mid = mid_ln(mid)
            x = x + F.linear(mid, *w_out)
        return F.linear(self.ln_final(x), *self.unembed), x


def _norm_fn(module):
    """``module`` as a function: ``F.layer_norm`` straight for a ``torch.nn.LayerNorm`` (no
    module-call overhead), the module itself otherwise (RMS, param-free norms)."""
    if type(module) is torch.nn.LayerNorm:
        shape, w, b, eps = module.normalized_shape, module.weight, module.bias, module.eps
        return lambda x: F.layer_norm(x, shape, w, b, eps)
    return module


class FullForwardDecoder:
    """The same interface without a cache: the rows' tokens are kept, and every ``append``
    is one forward of ``model`` over the appended rows' whole prefixes (the regime every
    model has, and the reference the cache is checked against). ``hook``: where the residual
    returned with ``resid=True`` is read (default the last block's output)."""

    regime = REGIME_FULL

    def __init__(self, model, batch: int, capacity: int | None = None, hook: str | None = None):
        self.model = model
        self.n_ctx = int(model.cfg.n_ctx)
        self.capacity = min(self.n_ctx, int(capacity or self.n_ctx))
        p = next(model.parameters())
        self.device = p.device
        self.tokens = torch.zeros((int(batch), self.capacity), dtype=torch.long, device=self.device)
        self._lengths = np.zeros(int(batch), dtype=np.int64)
        self.hook = hook or f"blocks.{int(model.cfg.n_layers) - 1}.hook_resid_post"

    @property
    def lengths(self) -> Int[Tensor, " batch"]:
        return torch.as_tensor(self._lengths, device=self.device)

    def truncate(self, lengths, rows=None) -> None:
        r = np.arange(self._lengths.size) if rows is None else _np_rows(rows, self._lengths.size)
        self._lengths[r] = _host(lengths)

    @torch.no_grad()
    def append(self, tokens: Int[Tensor, "b k"], rows=None, resid: bool = False, counts=None):
        """As ``CachedDecoder.append``."""
        tokens = torch.as_tensor(tokens, dtype=torch.long, device=self.device)
        b, k = tokens.shape
        r_np = np.arange(b) if rows is None else _np_rows(rows, self._lengths.size)
        r = torch.as_tensor(r_np, device=self.device)
        start = self._lengths[r_np]
        pos_np, valid, T = _positions(start, k, counts, self.capacity, self.n_ctx)
        pos = torch.as_tensor(pos_np, device=self.device)
        if valid is None:
            self.tokens[r[:, None], pos] = tokens
            self._lengths[r_np] = start + k
        else:
            v = torch.as_tensor(valid, device=self.device)
            self.tokens[r[:, None].expand(b, k)[v], pos[v]] = tokens[v]
            self._lengths[r_np] = start + valid.sum(1)
        store: dict[str, Tensor] = {}
        if resid:
            def keep(act, hook):
                store["h"] = act
                return act

            with self.model.hooks(fwd_hooks=[(self.hook, keep)]):
                logits = self.model(self.tokens[r, :T])
        else:
            logits = self.model(self.tokens[r, :T])
        at = (torch.arange(b, device=self.device)[:, None], pos)
        return (logits[at], store["h"][at]) if resid else logits[at]


def decoder(model, batch: int, capacity: int | None = None, *, regime: str = "auto", hook: str | None = None,
            max_cache_bytes: int | None = None):
    """A ``CachedDecoder`` when ``regime`` is ``auto`` (or ``kv_cache``), the model is
    supported, ``hook`` is None or the last block's output, and the cache fits
    ``max_cache_bytes`` (default ``MAX_CACHE_BYTES``); otherwise a ``FullForwardDecoder``
    (``regime="kv_cache"`` for an unsupported model raises ``ValueError`` naming why).
    ``decoder(...).regime`` says which; ``fallback_reason(...)`` says why."""
    reason = fallback_reason(model, batch, capacity, regime=regime, hook=hook, max_cache_bytes=max_cache_bytes)
    if reason is None:
        return CachedDecoder(model, batch, capacity)
    if regime == REGIME_CACHED:
        raise ValueError(f"no key/value cache for this model: {reason}")
    return FullForwardDecoder(model, batch, capacity, hook=hook)


def fallback_reason(model, batch: int, capacity: int | None = None, *, regime: str = "auto", hook: str | None = None,
                    max_cache_bytes: int | None = None) -> str | None:
    """None when ``decoder`` would cache; otherwise why it runs full forwards."""
    if regime not in ("auto",) + REGIMES:
        raise ValueError(f"regime must be auto, {REGIME_CACHED} or {REGIME_FULL}, got {regime!r}")
    if regime == REGIME_FULL:
        return "full forwards requested"
    reason = unsupported_reason(model)
    if reason is not None:
        return reason
    if hook is not None and hook != f"blocks.{int(model.cfg.n_layers) - 1}.hook_resid_post":
        return f"latents read at {hook} (the cache gives the last block's output)"
    cap = min(int(model.cfg.n_ctx), int(capacity or model.cfg.n_ctx))
    need = KVCache.nbytes(model, batch, cap)
    limit = MAX_CACHE_BYTES if max_cache_bytes is None else int(max_cache_bytes)
    if need > limit:
        return f"a cache of {need / 2**20:.0f} MiB exceeds the limit of {limit / 2**20:.0f} MiB"
    return None


__all__ = ["REGIME_CACHED", "REGIME_FULL", "REGIMES", "MAX_CACHE_BYTES", "KVCache", "CachedDecoder",
           "FullForwardDecoder", "decoder", "fallback_reason", "supports", "unsupported_reason"]
