"""Effective rank of hidden states: ``python -m nextlat_probe.rank ckpt.pt [ckpt.pt ...]``.

The default: the last block's residual output on 256 sequences at the training length,
uncentred, singular values below 1e-12 dropped; ``--protocol nextlat2025`` is the NextLat
paper's 256 sequences x 256 tokens (or the world's maximum length). Several checkpoints are
compared side by side on the same sequences; each row carries the checkpoint's validation
loss and gap to the exact floor (rank grows during training: compare at equal steps AND at
matched validation loss). Python: ``nextlat_probe.compare.run_rank``.
"""
from __future__ import annotations

import argparse

from .cli import (
    ArgumentParser,
    add_layers_arg,
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
from .labels import columns

#: the printed table: headers, units, directions and formats from ``nextlat_probe.labels``
COLUMNS = columns(["name", "objective", "step", "layer", "effective_rank", "participation_ratio", "n90", "n99",
                   "d_model", "val_loss", "gap_to_floor"])


def build_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(
        prog="python -m nextlat_probe.rank",
        description="Effective rank (Roy & Vetterli) of hidden states, per checkpoint and layer. "
        "Default: last block's residual, 256 sequences, uncentred (as in the NextLat paper).")
    add_model_args(p)
    add_sequence_args(p, n_seqs=256)
    add_layers_arg(p, "last")
    p.add_argument("--center", action="store_true", help="subtract the mean hidden state first")
    p.add_argument("--protocol", choices=("nextlat2025",), default=None,
                   help="nextlat2025: the NextLat paper's protocol (last block, 256 sequences x 256 tokens or the "
                        "world's maximum length, uncentred, s < 1e-12 dropped), named in every record")
    add_output_args(p)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    check_positive(n_seqs=args.n_seqs)
    check_output_path(args.plot)
    device = resolve_device_arg(args.device)
    from .compare import run_rank

    if args.protocol is not None:
        records = run_rank(load_cli_models(args, device), protocol=args.protocol, seed=args.seed, device=device,
                           progress=progress_enabled(args))
    else:
        inputs = cli_inputs(args, load_cli_models(args, device), args.n_seqs)
        records = run_rank(None, inputs=inputs, layers=args.layers, center=args.center,
                           progress=progress_enabled(args))
    if args.plot is not None:
        from .plots.interactive import rank_figure, write_html

        write_html(rank_figure(records), args.plot, title="Effective rank")
    return finish(args, records, lambda: table_text(records, COLUMNS))


if __name__ == "__main__":
    run_main(main)
