"""Transition consistency: ``python -m nextlat_probe.transition CKPT [CKPT ...]``.

Is h_{t+1} a fixed function of (h_t, x_{t+1})? Measured in NextLat's latent space (the last
block's residual output, LayerNorm without affine parameters), relative error
||ĥ_{t+i} - h_{t+i}||^2 / ||h_{t+i} - mean h||^2 for horizons i = 1..k on held-out sequences:

- own:   NextLat's p_psi rolled forward from h_t with the true next tokens;
- mlp:   a fresh dynamics model of p_psi's form fitted post hoc on frozen hidden states of
         training sequences (any checkpoint, GPT included: the comparable number);
- linear: the same with a linear map.

Belief level: within-belief variance / total variance of the hidden states (0 = the hidden
state is exactly a function of the belief), and for one-hot worlds the same grouped by
(hidden state, position).
"""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from .cli import UsageError, format_table, print_json, run_main


def _table_columns(horizon: int) -> list[tuple[str, str, str]]:
    cols = [("checkpoint", "checkpoint", ""), ("objective", "objective", ""), ("dynamics", "dynamics", "")]
    shown = sorted({1, min(2, horizon), min(4, horizon), horizon})
    cols += [(f"err@{i}", f"err@{i}", ".4f") for i in shown]
    cols += [("belief_ratio", "within-belief var", ".4f"), ("state_ratio", "within-(state,pos) var", ".4f"), ("val_loss", "val loss", ".4f")]
    return cols


def latent_states(model, tokens, hook: str):
    """Normalised last-layer latents (NextLat's space) and token embeddings e(x)."""
    import numpy as np

    from .activations import collect

    H = collect(model, tokens, [hook])[hook].astype(np.float32)
    H = (H - H.mean(-1, keepdims=True)) / np.sqrt(H.var(-1, keepdims=True) + 1e-5)
    E = model.W_E.detach().float().cpu().numpy()[tokens]
    return H, E


def transition_checkpoints(
    ckpts: list[Any],
    horizon: int = 8,
    n_train: int = 256,
    n_test: int = 128,
    seq_len: int | None = None,
    steps: int = 1000,
    seed: int = 0,
    device: str = "cpu",
    progress: bool = False,
) -> dict[str, Any]:
    """Returns {"records": [...], "results": {name: TransitionResult}} (one per checkpoint)."""
    import numpy as np

    from .activations import analysis_mask
    from .analysis.common import ckpt_info, ensure_loaded, shared_tokens
    from .analysis.transition import grouped_consistency, transition_consistency
    from .models.transformer import final_hook_name

    loaded = ensure_loaded(ckpts, device=device)
    samples = shared_tokens(loaded, n_train + n_test, seq_len, seed)
    records, results = [], {}
    for ck, sample in zip(loaded, samples):
        tokens = sample.tokens
        if tokens.shape[1] <= horizon:
            raise UsageError(f"--horizon {horizon} needs sequences longer than {tokens.shape[1]} tokens")
        mask = analysis_mask(ck.world, tokens)
        H, E = latent_states(ck.model, tokens, final_hook_name(ck.model_config))
        tr, te = slice(0, n_train), slice(n_train, n_train + n_test)
        beliefs = ck.world.beliefs(tokens[te]) if ck.world.n_states <= 4096 else None
        res = transition_consistency(
            H[tr], E[tr], H[te], E[te], horizon=horizon, own_dynamics=ck.dynamics,
            beliefs_test=beliefs, mask_train=mask[tr], mask_test=mask[te], steps=steps, seed=seed,
        )
        states = np.asarray(sample.states)[te]
        st = states.reshape(*states.shape[:2], -1)  # [n, L, k] hidden-state fields
        positions = np.broadcast_to(np.arange(tokens.shape[1]), states.shape[:2])[..., None]
        keys = np.concatenate([st, positions], -1)  # group by (hidden state, position)
        state_ratio = float(grouped_consistency(H[te][mask[te]], keys[mask[te]]))
        results[ck.name] = res
        info = ckpt_info(ck)
        for kind, errs in (("own p_psi", res.own), ("post-hoc mlp", res.posthoc_mlp), ("post-hoc linear", res.posthoc_linear)):
            if errs is None:
                continue
            rec = {**info, "dynamics": kind, "horizons": res.horizons, "errors": [float(e) for e in errs],
                   "belief_ratio": res.belief_ratio, "state_ratio": state_ratio}
            rec.update({f"err@{i}": float(e) for i, e in zip(res.horizons, errs)})
            records.append(rec)
    return {"records": records, "results": results, "objectives": {ck.name: ck.objective for ck in loaded}}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m nextlat_probe.transition", description="Transition consistency of hidden states: relative error of own / post-hoc dynamics per horizon, and belief-level consistency.")
    p.add_argument("ckpts", nargs="+", metavar="CKPT")
    p.add_argument("--horizon", type=int, default=8, help="largest roll-out horizon k")
    p.add_argument("--n-train", type=int, default=256, help="sequences for fitting post-hoc dynamics")
    p.add_argument("--n-test", type=int, default=128, help="held-out sequences for scoring")
    p.add_argument("--seq-len", type=int, default=None)
    p.add_argument("--fit-steps", type=int, default=1000, help="optimiser steps of the post-hoc MLP fit")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu")
    p.add_argument("--json", action="store_true")
    p.add_argument("--plot", type=Path, default=None, help="offline HTML of error vs horizon")
    p.add_argument("--no-progress", action="store_true")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.horizon < 1 or args.n_train < 1 or args.n_test < 1 or args.fit_steps < 1:
        raise UsageError("--horizon, --n-train, --n-test and --fit-steps must be positive")
    out = transition_checkpoints(
        args.ckpts, horizon=args.horizon, n_train=args.n_train, n_test=args.n_test, seq_len=args.seq_len,
        steps=args.fit_steps, seed=args.seed, device=args.device, progress=not (args.no_progress or args.json),
    )
    if args.plot is not None:
        from .plots.interactive import transition_figure
        from .plots.page import write_page

        write_page([("Transition error vs horizon", "Relative error of rolled-out dynamics; lower = hidden states follow a fixed transition rule.", transition_figure(out["results"], out["objectives"]))], args.plot, title="Transition consistency")
    if args.json:
        print_json(out["records"])
    else:
        print(format_table(out["records"], _table_columns(args.horizon)))
        if args.plot is not None:
            print(f"wrote {args.plot}")
    return 0


if __name__ == "__main__":
    run_main(main)
