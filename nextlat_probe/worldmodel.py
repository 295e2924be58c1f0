"""World-model metrics: ``python -m nextlat_probe.worldmodel ckpt.pt [ckpt.pt ...]``.

Prints the NextLat paper's Table 1 for taxi checkpoints, transposed so that checkpoints
sit side by side: next-token validity, valid trajectories (every turn legal / legal and
ending at the destination), sequence compression, distinction precision and recall,
detour robustness, effective rank (last block) and validation loss. Every cell is
``rate [95% Wilson interval]`` as a fraction, in the same formats as the report (labels
from ``nextlat_probe.labels``). All checkpoints of the same world are scored on the same
held-out trips. Python: ``nextlat_probe.compare.run_worldmodel``; definitions:
``nextlat_probe.analysis.worldmodel``. Checkpoints of other next-token worlds with exact
beliefs (HMMs, interleaved A5) get sequence compression and distinction against the exact
beliefs (protocol ``myhill_nerode``, ``nextlat_probe.analysis.beliefmodel``).
"""
from __future__ import annotations

import argparse
from typing import Any

from .cli import (
    ArgumentParser,
    UsageError,
    add_layers_arg,
    add_model_args,
    add_output_args,
    check_output_path,
    check_positive,
    finish,
    load_cli_models,
    progress_enabled,
    resolve_device_arg,
    run_main,
)


def table(records: list[dict[str, Any]]) -> str:
    """``worldmodel`` records (and optionally ``rank`` records of the same models) as one
    table: metrics as rows (labels, units, directions and formats from
    ``nextlat_probe.labels``, the same as the report's), models as columns, every rate with
    its 95% interval; the protocol line and the convergence note under it."""
    from .plots.geometry import worldmodel_columns
    from .records import select
    from .tables import convergence_note, format_table, metric_rows, protocol_note

    wm, cols, cell = worldmodel_columns(records)
    keys = [k for k, _ in cols]

    def col(r: dict[str, Any]) -> str:  # out-of-distribution records sit beside their model
        return r["name"] if not r.get("variant") else f"{r['name']} [{r['variant']}]"

    names = [col(r) for r in wm]
    values = [(col(r), {"step": r["step"], **{k: cell(r, k) for k in keys}}) for r in wm]
    if select(records, analysis="rank"):
        for (_, vals), r in zip(values, wm):
            if r.get("variant"):  # the effective rank was measured on the model's own sequences only
                vals["effective_rank"] = None
    rows: list[dict[str, Any]] = [{"metric": "objective", **{col(r): r["objective"] for r in wm}}]
    for row in metric_rows(values, ["step", *keys], "worldmodel",
                           headers={"effective_rank": dict(cols)["effective_rank"]} if "effective_rank" in keys else None):
        rows.append({"metric": row[0], **dict(zip(names, row[1:]))})
    if any(r.get("variant") for r in wm):
        def changed(r: dict[str, Any]) -> str:
            if not r.get("variant"):
                return "trips as in training"
            ev, tr = r["params"]["eval_world"], r["params"]["train_world"]
            return ", ".join(f"{k}={ev[k]}" for k in ev if ev[k] != tr.get(k) and ev[k] is not None)

        rows.append({"metric": "evaluated on", **{col(r): changed(r) for r in wm}})
    out = [("metric", "metric", "")] + [(n, n, "") for n in names]
    notes = [f"{r['name']}: {note}" for r in wm for note in r["metrics"].get("notes", [])]
    taxi = any(k.startswith("detour_") for r in wm for k in r["metrics"])
    conv = convergence_note(wm)
    return (format_table(rows, out) + "\n" + "↑ higher is better, ↓ lower is better; [95% interval]"
            + ("; detour rows: legal and ending at the destination" if taxi else "")
            + "\n" + protocol_note(records) + (f"\n{conv}" if conv else "")
            + "".join(f"\n{n}" for n in notes))


def build_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(
        prog="python -m nextlat_probe.worldmodel",
        description="World-model metrics for one or more checkpoints: taxi worlds get Vafa et al.'s (NextLat "
                    "Table 1); HMM worlds get compression and distinction against the exact beliefs.")
    add_model_args(p)
    p.add_argument("--n-pairs", type=int, default=200, help="held-out (origin, destination) trips (default 200)")
    p.add_argument("--seed", type=int, default=0, help="seed of the trips and of every random choice")
    p.add_argument("--epsilon", type=float, default=0.01, help="acceptance threshold (default 0.01)")
    p.add_argument("--max-turns", type=int, default=None,
                   help="turn budget of generations (default 3 x the world's max_len, capped by the context)")
    p.add_argument("--protocol", choices=("vafa2024", "exact"), default="vafa2024",
                   help="vafa2024 (default): Vafa et al.'s reference definitions (30 continuations, per-pair "
                        "distinction from 5 sampled suffixes, map boundary of length-5 suffixes); exact: "
                        "distinction by exact enumeration up to length 3 against the world's support, pooled")
    p.add_argument("--continuations", type=int, default=None,
                   help="compression: continuations per prefix pair (default: the protocol's, 30)")
    p.add_argument("--suffix-len", type=int, default=None,
                   help="distinction: suffix length (default: the protocol's, vafa2024 5, exact 3)")
    p.add_argument("--suffix-samples", type=int, default=None,
                   help="vafa2024 distinction: model suffixes sampled per pair (default 5)")
    p.add_argument("--truth", choices=("world", "map"), default=None,
                   help="distinction ground truth (default: the protocol's; vafa2024 map, exact world)")
    p.add_argument("--ood", action="append", default=[], metavar="SETTING",
                   help="also score out-of-distribution trips on the same map, beside the in-distribution "
                        "column: 'longer' (random walks longer than in training; needs a larger context) or "
                        "key=value settings, e.g. walk=random (a shortest-path model on random-walk trips), "
                        "walk=shortest, or pairs=held_out (the origin/destination pairs a model trained with "
                        "--holdout never saw); repeatable")
    p.add_argument("--rank-seqs", type=int, default=256, help="sequences for the effective rank row")
    add_layers_arg(p, "last")
    add_output_args(p)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    check_positive(n_pairs=args.n_pairs, continuations=args.continuations, suffix_len=args.suffix_len,
                   suffix_samples=args.suffix_samples, rank_seqs=args.rank_seqs, max_turns=args.max_turns)
    if args.protocol == "exact" and args.suffix_samples is not None:
        raise UsageError("--suffix-samples belongs to --protocol vafa2024 (exact enumerates every suffix)")
    if args.protocol == "vafa2024" and args.truth == "world":
        raise UsageError("--truth world needs --protocol exact (vafa2024 judges distinction by the map)")
    if not 0 < args.epsilon < 1:
        raise UsageError(f"--epsilon must lie in (0, 1), got {args.epsilon}")
    check_output_path(args.plot)
    device = resolve_device_arg(args.device)
    from .compare import run_rank, run_worldmodel

    models = load_cli_models(args, device)
    progress = progress_enabled(args)
    records = run_worldmodel(models, n_pairs=args.n_pairs, seed=args.seed, epsilon=args.epsilon,
                             max_turns=args.max_turns, n_continuations=args.continuations, suffix_len=args.suffix_len,
                             truth=args.truth, protocol=args.protocol, n_suffix_samples=args.suffix_samples,
                             ood=args.ood, device=device, progress=progress)
    records += run_rank(models, n_seqs=args.rank_seqs, layers=args.layers, seed=args.seed, progress=progress)
    if args.plot is not None:
        from .plots.interactive import worldmodel_table_figure, write_html

        write_html(worldmodel_table_figure(records), args.plot, title="Taxi world model")
    return finish(args, records, lambda: table(records))


if __name__ == "__main__":
    run_main(main)
