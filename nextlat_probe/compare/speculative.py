"""Self-speculative decoding per model and draft policy: NextLat's p_psi drafts, the
transformer verifies, the output is plain greedy decoding's (checked, ``identical_to_greedy``).

One ``speculative`` record per model and policy (``variant`` = the policy name, e.g.
``fixed:4`` or ``adaptive``). ``params["regime"]`` names the decoding regime of both
(``kv_cache``: greedy and speculative decoding from a key/value cache, ``models.kvcache``;
``full_forward``: a full forward over the prefix at every step, for models the cache does
not support or on request), and their wall-clock times are measured side by side in the
same call (``repeats`` alternating runs, the fastest of each kept).
Prompts: taxi worlds: held-out ``(origin, destination)`` pairs (2 tokens, greedy trips with
the turn budget of ``analysis.worldmodel``, stopping after ``end`` or any non-turn token);
other worlds: sampled prefixes of ``prefix_len`` tokens, generation up to ``max_new`` tokens
or the context. GPT checkpoints have no p_psi and are refused (``AnalysisError``), and so are
multi-token-prediction (MTP) checkpoints: there is no MTP-head drafter here.
Algorithms: ``nextlat_probe.analysis.speculative``.
"""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from ..errors import AnalysisError
from ..records import identity, make_record
from .inputs import load_models

#: ``default_rng([seed, PROMPT_STREAM])`` draws the prompts (a stream of its own: held out
#: from training batches and from the other analyses' sequences)
PROMPT_STREAM = 0x5BEC


def check_speculative_model(m: Any) -> None:
    """``AnalysisError`` naming the reason unless ``m`` carries NextLat's p_psi."""
    if getattr(m, "dynamics", None) is None:
        obj = getattr(m, "objective", None)
        raise AnalysisError(f"{m.path}: self-speculative decoding needs NextLat's latent dynamics p_psi, and this "
                            f"{obj or 'model'} checkpoint has none (GPT checkpoints cannot draft; there is no "
                            "drafter for MTP heads)")


def check_draft_lengths(m: Any, policies: Sequence[Any]) -> None:
    """``AnalysisError`` for a draft length the model's context cannot hold: a draft
    continues a prompt of at least one token, so more than ``n_ctx - 1`` drafted tokens
    never fit (``fixed:1000000`` would only size a histogram of a million counts). The
    cap of ``adaptive`` is a ceiling the drafting stops under anyway, so only a cap above
    both the context and the default (16) is refused."""
    from ..analysis.speculative import ADAPTIVE_CAP

    n_ctx = int(m.model.cfg.n_ctx)
    for pol in policies:
        most = n_ctx - 1 if pol.kind == "fixed" else max(n_ctx - 1, ADAPTIVE_CAP)
        if pol.k > most:
            raise AnalysisError(f"draft policy {pol.name}: {m.path} has a context of {n_ctx} tokens, so a draft "
                                f"holds at most {most}")


def prompts_for(world: Any, model: Any, n_prompts: int, seed: int, prefix_len: int = 4,
                max_new: int | None = None) -> tuple[np.ndarray, int, np.ndarray | None, dict[str, Any]]:
    """(prompts [n, P], max_new, stop mask over the vocabulary or None, params) for ``world``."""
    from ..analysis.worldmodel import ModelPredictor, check_taxi_world, turn_budget

    rng = np.random.default_rng([int(seed), PROMPT_STREAM])
    V = int(model.cfg.d_vocab)
    n_ctx = int(model.cfg.n_ctx)
    if getattr(world, "name", None) == "taxi":
        check_taxi_world(world)
        prompts = world.sample(int(n_prompts), seed=rng).tokens[:, :2]
        budget = turn_budget(world, ModelPredictor(model), 2, None if max_new is None else max(1, int(max_new) - 1))
        stop = np.ones(V, dtype=bool)
        stop[world.dir0:world.dir0 + 8] = False  # greedy trips stop after `end` or any non-turn token
        return prompts, budget + 1, stop, {"prompts": "taxi (origin, destination)", "prompt_len": 2,
                                           "stop": "after end or any non-turn token", "max_turns": budget}
    P = int(prefix_len)
    if not 1 <= P <= n_ctx:
        raise AnalysisError(f"prefix_len must lie in 1..{n_ctx} (the context), got {P}")
    prompts = world.sample(int(n_prompts), P, seed=rng).tokens
    room = n_ctx + 1 - P
    new = room if max_new is None else min(int(max_new), room)
    return prompts, new, None, {"prompts": "sampled prefixes", "prompt_len": P, "stop": "max_new or the context"}


def run_speculative(
    models: Sequence[Any],
    *,
    draft: Sequence[str] = ("fixed:4",),
    n_prompts: int = 64,
    max_new: int | None = None,
    prefix_len: int = 4,
    seed: int = 0,
    device: str = "cpu",
    progress: bool = False,
    batch_size: int = 64,
    repeats: int = 1,
    regime: str = "auto",
) -> list[dict[str, Any]]:
    """One ``speculative`` record per model and draft policy (``fixed:K``, ``adaptive``,
    ``adaptive:CAP``). ``max_new``: tokens generated at most per prompt (default: taxi, the
    turn budget of ``analysis.worldmodel`` plus ``end``; other worlds, up to the context).
    ``repeats``: greedy and speculative decoding are timed alternately this many times and
    the fastest run of each is kept (the counts do not depend on it). ``regime``: ``auto``
    (the key/value cache where the model allows it), ``kv_cache`` or ``full_forward``, for
    both decoders."""
    from ..analysis.speculative import (
        REGIME_NOTES,
        LatentDrafter,
        greedy_decode,
        parse_policy,
        speculative_decode,
        summary,
    )
    from ..progress import progress as bar

    if n_prompts < 1:
        raise AnalysisError(f"n_prompts must be positive, got {n_prompts}")
    if repeats < 1:
        raise AnalysisError(f"repeats must be positive, got {repeats}")
    if regime not in ("auto",) + tuple(REGIME_NOTES):
        raise AnalysisError(f"regime must be auto, {' or '.join(REGIME_NOTES)}, got {regime!r}")
    policies = [parse_policy(p) for p in draft]
    if not policies:
        raise AnalysisError("no draft policy given (e.g. fixed:4 or adaptive)")
    loaded = load_models(models, device=device)
    for m in loaded:
        check_speculative_model(m)
        check_draft_lengths(m, policies)
    out = []
    for m in bar(loaded, desc="speculative decoding", disable=not progress):
        prompts, new, stop, pparams = prompts_for(m.world, m.model, n_prompts, seed, prefix_len, max_new)
        pad = int(getattr(m.world, "pad_id", 0) or 0)
        drafter = LatentDrafter(m.model, m.dynamics)
        greedy_decode(m.model, prompts, new, stop_mask=stop, batch_size=batch_size, pad_id=pad,
                      regime=regime)  # warm-up, untimed
        for pol in policies:
            best_g = best_s = None
            for _ in range(int(repeats)):
                g = greedy_decode(m.model, prompts, new, stop_mask=stop, batch_size=batch_size, pad_id=pad,
                                  regime=regime)
                s = speculative_decode(m.model, drafter, prompts, new, policy=pol, stop_mask=stop,
                                       batch_size=batch_size, pad_id=pad, regime=regime)
                best_g = g if best_g is None or g.seconds < best_g.seconds else best_g
                best_s = s if best_s is None or s.seconds < best_s.seconds else best_s
            metrics = summary(best_s, best_g, pol.k)
            used = best_s.regime if best_s.regime == best_g.regime else f"{best_g.regime}+{best_s.regime}"
            note = "; ".join(dict.fromkeys(REGIME_NOTES[r] for r in (best_g.regime, best_s.regime)))
            params = {"regime": used, "regime_note": note, **pol.params(), "n_prompts": int(n_prompts),
                      "max_new": int(new), **pparams, "seed": int(seed), "batch_size": int(batch_size),
                      "repeats": int(repeats), "device": str(m.device), "timing": "greedy and speculative "
                      "alternately in one call, fastest of `repeats` each; speedup = greedy / speculative seconds"}
            out.append(make_record(identity(m), "speculative", metrics, params, variant=pol.name,
                                   protocol={"name": used, "note": note, **pol.params()}))
    return out


__all__ = ["run_speculative", "check_speculative_model", "check_draft_lengths", "prompts_for", "PROMPT_STREAM"]
