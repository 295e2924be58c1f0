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
    held_out_split,
    load_cli_models,
    progress_enabled,
    resolve_device_arg,
    run_main,
    table_text,
)
from .compare.inputs import N_SEQS
from .compare.transition import FIT_STEPS
from .labels import columns


def table_columns(horizon: int) -> list[tuple[str, str, str]]:
    """The printed table's columns (``nextlat_probe.labels``): the errors at horizons 1, 2,
    4 and ``horizon``, the variance shares, the training state."""
    shown = sorted({1, min(2, horizon), min(4, horizon), horizon})
    cols = columns(["name", "objective"]) + [("variant", "dynamics", "")]
    return cols + columns([f"errors[{i - 1}]" for i in shown] + ["belief_ratio", "state_ratio", "val_loss",
                                                                  "gap_to_floor"])


def build_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(prog="python -m nextlat_probe.transition",
                                description="Transition consistency of hidden states: relative error of own / "
                                "post-hoc dynamics per horizon, and belief-level consistency.")
    add_model_args(p)
    add_sequence_args(p, n_seqs=N_SEQS, what="sequences in all: the first n_seqs - n_test fit post-hoc dynamics, "
                      "the rest score; the report's default too")
    p.add_argument("--n-test", type=int, default=None,
                   help="held-out scoring sequences (default: the last third of --n-seqs, 85 of 256, as in the report)")
    p.add_argument("--n-train", type=int, default=None,
                   help="fitting sequences; sets --n-seqs to n_train + n_test (the older spelling)")
    p.add_argument("--horizon", type=int, default=8, help="largest roll-out horizon k (default 8)")
    p.add_argument("--fit-steps", type=int, default=FIT_STEPS,
                   help=f"optimiser steps of the post-hoc MLP fit (default {FIT_STEPS}, as in the report)")
    add_output_args(p)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    check_positive(horizon=args.horizon, fit_steps=args.fit_steps)
    n_seqs, n_test = held_out_split(args)
    check_output_path(args.plot)
    device = resolve_device_arg(args.device)
    from .compare import run_transition

    inputs = cli_inputs(args, load_cli_models(args, device), n_seqs)
    records = run_transition(None, inputs=inputs, n_test=n_test,
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
