"""Transition consistency: ``python -m nextlat_probe.transition CKPT [CKPT ...]``.

Is h_{t+1} a fixed function of (h_t, x_{t+1})? Measured in NextLat's latent space (the last
block's residual output, LayerNorm without affine parameters), relative error
||ĥ_{t+i} - h_{t+i}||^2 / ||h_{t+i} - mean h||^2 for horizons i = 1..k on held-out sequences:

- own p_psi:       NextLat's p_psi rolled forward from h_t with the true next tokens;
- post-hoc mlp:    a fresh dynamics model of p_psi's form fitted post hoc on frozen hidden
                   states of training sequences (any checkpoint, GPT included);
- post-hoc linear: the same with a linear map.

Belief level: within-belief variance / total variance of the hidden states (0 = the hidden
state is exactly a function of the belief), and for one-hot worlds the same grouped by
(hidden state, position). Python: ``nextlat_probe.compare.run_transition``.
"""
from __future__ import annotations

import argparse

from .cli import (
    ArgumentParser,
    add_model_args,
    add_output_args,
    add_sequence_args,
    check_output_path,
    check_positive,
    cli_inputs,
    finish,
    load_cli_models,
    progress_enabled,
    resolve_device_arg,
    run_main,
    table_text,
)


def table_columns(horizon: int) -> list[tuple[str, str, str]]:
    cols = [("name", "checkpoint", ""), ("objective", "objective", ""), ("variant", "dynamics", "")]
    shown = sorted({1, min(2, horizon), min(4, horizon), horizon})
    cols += [(f"errors[{i - 1}]", f"err@{i}", ".4f") for i in shown]
    cols += [("belief_ratio", "within-belief var", ".4f"), ("state_ratio", "within-(state,pos) var", ".4f"),
             ("val_loss", "val loss", ".4f")]
    return cols


def build_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(prog="python -m nextlat_probe.transition",
                                description="Transition consistency of hidden states: relative error of own / "
                                "post-hoc dynamics per horizon, and belief-level consistency.")
    add_model_args(p)
    add_sequence_args(p, n_seqs=384, what="sequences in all: the first n_seqs - n_test fit post-hoc dynamics, "
                      "the rest score")
    p.add_argument("--n-test", type=int, default=128, help="held-out scoring sequences (default 128)")
    p.add_argument("--n-train", type=int, default=None,
                   help="fitting sequences; sets --n-seqs to n_train + n_test (the older spelling)")
    p.add_argument("--horizon", type=int, default=8, help="largest roll-out horizon k (default 8)")
    p.add_argument("--fit-steps", type=int, default=1000, help="optimiser steps of the post-hoc MLP fit")
    add_output_args(p)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    check_positive(horizon=args.horizon, n_test=args.n_test, n_train=args.n_train, fit_steps=args.fit_steps)
    n_seqs = args.n_seqs if args.n_train is None else args.n_train + args.n_test
    check_positive(n_seqs=n_seqs)
    check_output_path(args.plot)
    device = resolve_device_arg(args.device)
    from .compare import run_transition

    inputs = cli_inputs(args, load_cli_models(args, device), n_seqs)
    records = run_transition(None, inputs=inputs, n_test=args.n_test,
                             horizon=args.horizon, fit_steps=args.fit_steps, seed=args.seed, device=device,
                             progress=progress_enabled(args))
    if args.plot is not None:
        from .plots.interactive import transition_figure
        from .plots.page import write_page

        write_page([("Transition error vs horizon", "Relative error of rolled-out dynamics; lower = hidden states "
                     "follow a fixed transition rule.", transition_figure(records))], args.plot,
                   title="Transition consistency")
    return finish(args, records, lambda: table_text(records, table_columns(args.horizon)))


if __name__ == "__main__":
    run_main(main)
