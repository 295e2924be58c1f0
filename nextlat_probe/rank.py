"""Effective rank of hidden states: ``python -m nextlat_probe.rank ckpt.pt``.

The default mirrors the NextLat paper: final-layer (last block's residual output) states
of 256 sequences, uncentred, singular values below 1e-12 dropped. Several checkpoints are
compared side by side on the same sequences. Each row also carries the checkpoint's
validation loss: effective rank grows during training, so compare checkpoints at equal
steps AND at matched validation loss.

Notebook use::

    from nextlat_probe.rank import effective_rank, rank_checkpoints
    records = rank_checkpoints(["runs/gpt/ckpt.pt", "runs/nextlat/ckpt.pt"], layers="all")
"""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from .analysis.rank import RankResult, effective_rank, rank_report, spectrum, spectrum_from_gram  # noqa: F401
from .cli import UsageError, add_checkpoint_args, format_table, parse_layers, print_json, run_main

COLUMNS = [
    ("checkpoint", "checkpoint", ""),
    ("objective", "objective", ""),
    ("step", "step", "d"),
    ("layer", "layer", ""),
    ("effective_rank", "eff. rank", ".2f"),
    ("participation_ratio", "PR", ".2f"),
    ("n90", "n90", "d"),
    ("n99", "n99", "d"),
    ("d_model", "d_model", "d"),
    ("val_loss", "val loss", ".4f"),
    ("val_gap", "gap to floor", ".4f"),
]


def rank_checkpoints(
    ckpts: list[Any],
    layers: str | list[int] = "last",
    n_seqs: int = 256,
    seq_len: int | None = None,
    center: bool = False,
    seed: int = 0,
    device: str = "cpu",
    batch_size: int = 64,
    progress: bool = False,
) -> list[dict[str, Any]]:
    """Effective rank per checkpoint and layer, streamed (X^T X per layer, never N x D).

    ``ckpts``: paths or ``LoadedCheckpoint`` objects. Returns plain records (JSON-ready):
    checkpoint, objective, step, layer, hook, effective_rank, participation_ratio, n90,
    n99, d_model, n_samples, centered, spectrum, val_loss, val_floor, val_gap.
    """
    from .activations import analysis_mask, collect_stats, layer_hook, layer_label
    from .analysis.common import ckpt_info, ensure_loaded, shared_tokens

    loaded = ensure_loaded(ckpts, device=device)
    samples = shared_tokens(loaded, n_seqs, seq_len, seed)
    records: list[dict[str, Any]] = []
    for ck, sample in zip(loaded, samples):
        n_layers = ck.model_config.n_layers
        idx = parse_layers(layers, n_layers) if isinstance(layers, str) else list(layers)
        hooks = [layer_hook(i) for i in idx]
        mask = analysis_mask(ck.world, sample.tokens)
        stats = collect_stats(ck.model, sample.tokens, hooks, mask=mask, batch_size=batch_size, progress=progress)
        for hook in hooks:
            res = rank_report(stats[hook], center=center)
            records.append({**ckpt_info(ck), "layer": layer_label(hook), "hook": hook, **res.to_dict()})
    return records


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m nextlat_probe.rank",
        description="Effective rank (Roy & Vetterli) of hidden states, per checkpoint and layer. "
        "Default: final layer, 256 sequences, uncentred (as in the NextLat paper).",
    )
    add_checkpoint_args(p)
    p.add_argument("--layers", default="last", help="all, last, or a comma list of block indices (emb = embeddings)")
    p.add_argument("--center", action="store_true", help="subtract the mean hidden state first")
    p.add_argument("--plot", type=Path, default=None, help="write an offline plotly HTML of spectra and rank per layer")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.n_seqs < 1:
        raise UsageError("--n-seqs must be positive")
    records = rank_checkpoints(
        args.ckpts,
        layers=args.layers,
        n_seqs=args.n_seqs,
        seq_len=args.seq_len,
        center=args.center,
        seed=args.seed,
        device=args.device,
        progress=not (args.no_progress or args.json),
    )
    if args.plot is not None:
        from .plots.interactive import rank_figure, write_html

        write_html(rank_figure(records), args.plot, title="Effective rank")
    if args.json:
        print_json(records)
    else:
        print(format_table(records, COLUMNS))
        if args.plot is not None:
            print(f"wrote {args.plot}")
    return 0


if __name__ == "__main__":
    run_main(main)
