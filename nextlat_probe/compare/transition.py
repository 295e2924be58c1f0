"""Transition consistency per model: is h_{t+1} a fixed function of (h_t, x_{t+1})?

Measured in NextLat's latent space — the last block's residual output, LayerNorm'd without
affine parameters — as the relative error ||ĥ_{t+i} - h_{t+i}||² / ||h_{t+i} - mean h||²
for horizons i = 1..k on held-out sequences, for three dynamics: NextLat's own p_psi rolled
forward with the true next tokens (``own p_psi``), and a model of p_psi's form / a linear
map fitted post hoc on frozen states of the training sequences (``post-hoc mlp`` /
``post-hoc linear``, comparable across GPT and NextLat). Belief level: the within-belief
share of hidden-state variance (0 = the state is a function of the belief), and for
one-hot worlds the same grouped by (hidden state, position)."""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from ..errors import UsageError
from ..records import identity, make_record
from .inputs import N_SEQS, Inputs, held_out, resolve_inputs
from .probe import MAX_BELIEF_DIM

VARIANTS = (("own p_psi", "own"), ("post-hoc mlp", "posthoc_mlp"), ("post-hoc linear", "posthoc_linear"))


#: the variance ratios' protocol: groups with at least two rows only (singletons add
#: nothing to the within-group part); the singleton-inclusive figure is a labelled extra
#: optimiser steps of the post-hoc dynamics fits, in the runner, the CLI and the report
FIT_STEPS = 1000
PROTOCOL = {"name": "groups>=2", "min_group_rows": 2, "ratio": "mean squares (SS_w/(N-G)) / (SS_t/(N-1))"}


def _group_metrics(name: str, rep: dict[str, Any]) -> dict[str, Any]:
    """``{name}_n_rows``, ``_n_groups``, ``_share_rows``, ``_with_singletons``, ``_note``
    (and ``_share_rows_per_position``) of a ``grouped_consistency_report``."""
    out = {f"{name}_n_rows": rep["n_rows"], f"{name}_n_groups": rep["n_groups"],
           f"{name}_share_rows": rep["share_rows"], f"{name}_with_singletons": rep["ratio_with_singletons"],
           f"{name}_note": rep["note"]}
    if "share_rows_per_position" in rep:
        out[f"{name}_share_rows_per_position"] = rep["share_rows_per_position"]
    return out


def latent_states(hidden: np.ndarray) -> np.ndarray:
    """NextLat's latent space: per-position LayerNorm without affine parameters."""
    H = hidden.astype(np.float32)
    return (H - H.mean(-1, keepdims=True)) / np.sqrt(H.var(-1, keepdims=True) + 1e-5)


def run_transition(
    models: Sequence[Any],
    *,
    n_seqs: int = N_SEQS,
    n_test: int | None = None,
    seq_len: int | None = None,
    horizon: int = 8,
    fit_steps: int = FIT_STEPS,
    seed: int = 0,
    device: str = "cpu",
    progress: bool = False,
    inputs: Inputs | None = None,
) -> list[dict[str, Any]]:
    """One ``transition`` record per model and dynamics variant (``own p_psi`` only for
    models that have one). The first ``n_seqs - n_test`` shared sequences fit the post-hoc
    dynamics, the last ``n_test`` (default ``inputs.held_out``: the last third) score every
    variant."""
    from ..activations import layer_hook, layer_label
    from ..analysis.transition import grouped_consistency_report, transition_consistency
    from ..progress import progress as bar

    if horizon < 1 or fit_steps < 1:
        raise UsageError(f"--horizon and --fit-steps must be positive, got {horizon} and {fit_steps}")
    inp = resolve_inputs(models, inputs, n_seqs=n_seqs, seq_len=seq_len, seed=seed, device=device,
                         progress=progress)
    n_seqs = inp.n_seqs
    n_test = held_out(n_seqs) if n_test is None else n_test
    if not 1 <= n_test <= n_seqs - 1:
        raise UsageError(f"--n-test must lie in 1..{n_seqs - 1} for {n_seqs} sequences, got {n_test}")
    tr, te = slice(0, n_seqs - n_test), slice(n_seqs - n_test, n_seqs)
    out: list[dict[str, Any]] = []
    for i, m in enumerate(bar(inp.models, desc="transition", disable=not progress)):
        tokens, mask = inp.tokens(i), inp.mask(i)
        if tokens.shape[1] <= horizon:
            raise UsageError(f"--horizon {horizon} needs sequences longer than {tokens.shape[1]} tokens "
                             f"({m.path}); lower --horizon or raise --seq-len")
        hook = layer_hook(m.model_config.n_layers - 1)  # NextLat's latent: the last block's residual
        H = latent_states(inp.hidden(i, [hook])[hook])
        E = m.model.W_E.detach().float().cpu().numpy()[tokens]
        beliefs = m.world.beliefs(tokens[te]) if m.world.n_states <= MAX_BELIEF_DIM else None
        res = transition_consistency(H[tr], E[tr], H[te], E[te], horizon=horizon, own_dynamics=m.dynamics,
                                     beliefs_test=beliefs, mask_train=mask[tr], mask_test=mask[te],
                                     steps=fit_steps, seed=seed)
        states = np.asarray(inp.sample(i).states)[te]
        state_ratio, state_rep = None, None  # enumerated sequences (--all-sequences) have no true hidden states
        if not (states < 0).all():
            fields = states.reshape(*states.shape[:2], -1)  # [n, L, k] hidden-state fields
            positions = np.broadcast_to(np.arange(tokens.shape[1]), states.shape[:2])[..., None]
            keys = np.concatenate([fields, positions], -1)  # group by (hidden state, position)
            state_rep = grouped_consistency_report(H[te][mask[te]], keys[mask[te]],
                                                   positions[..., 0].astype(np.int64)[mask[te]])
            state_ratio = state_rep["ratio"]
        ident = identity(m)
        params = {**inp.params_of(i), "n_test": int(n_test), "horizon": int(horizon), "fit_steps": int(fit_steps),
                  "space": "LayerNorm'd last-block residual"}
        for variant, attr in VARIANTS:
            errs = getattr(res, attr)
            if errs is None:
                continue
            metrics = {"horizons": list(res.horizons), "errors": [float(e) for e in errs],
                       "belief_ratio": res.belief_ratio, "state_ratio": state_ratio}
            for name, rep in (("belief_ratio", res.belief), ("state_ratio", state_rep)):
                if rep is not None:
                    metrics.update(_group_metrics(name, rep))
            out.append(make_record(ident, "transition", metrics, params, layer=layer_label(hook), variant=variant,
                                   protocol=PROTOCOL))
    return out


__all__ = ["run_transition", "latent_states", "VARIANTS"]
