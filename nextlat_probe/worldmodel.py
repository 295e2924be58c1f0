"""Taxi world-model metrics: ``python -m nextlat_probe.worldmodel ckpt.pt [ckpt.pt ...]``.

Prints the NextLat paper's Table 1 for taxi checkpoints, transposed so that checkpoints
sit side by side: next-token validity, valid trajectories (every turn legal / legal and
ending at the destination), sequence compression, distinction precision and recall,
detour robustness, effective rank (final layer) and validation loss. Every cell is
``rate [95% Wilson interval]``; percentages except compression and distinction, which
are fractions as in the paper. All checkpoints of the same world are scored on the same
held-out trips. Definitions: ``nextlat_probe.analysis.worldmodel``.

Notebook use::

    from nextlat_probe.worldmodel import evaluate_checkpoints
    records = evaluate_checkpoints(["runs/gpt/ckpt.pt", "runs/nextlat/ckpt.pt"], n_pairs=200)
"""
from __future__ import annotations

import argparse
from typing import Any

from .cli import UsageError, format_table, print_json, run_main

PERCENT = ("next_token", "trajectory_legal", "trajectory_valid")
FRACTION = ("compression", "distinction_precision", "distinction_recall")
LABELS = {
    "next_token": "next-token validity (%)",
    "trajectory_legal": "traj.: every turn legal (%)",
    "trajectory_valid": "traj.: legal, ends at dest (%)",
    "compression": "compression",
    "distinction_precision": "distinction precision",
    "distinction_recall": "distinction recall",
}


def evaluate_checkpoints(ckpts: list[Any], n_pairs: int = 200, seed: int = 0, epsilon: float = 0.01,
                         max_turns: int | None = None, n_continuations: int = 10, suffix_len: int = 3,
                         truth: str = "world", detour_probs: tuple[float, ...] = (0.75, 0.01),
                         rank_seqs: int = 256, device: str = "cpu", batch_size: int = 256) -> list[dict[str, Any]]:
    """One JSON-ready record per checkpoint (paths or ``LoadedCheckpoint``): the
    checkpoint's identifying fields and validation loss, the final-layer effective rank
    and every world-model metric (``WorldModelResult.to_dict()``)."""
    from .analysis.common import ckpt_info, ensure_loaded
    from .analysis.worldmodel import check_taxi_world, evaluate_world_model, model_predictor
    from .rank import rank_checkpoints

    loaded = ensure_loaded(ckpts, device=device)
    for ck in loaded:
        try:
            check_taxi_world(ck.world)
        except UsageError as exc:
            raise UsageError(f"{ck.path}: {exc}") from None
    ranks = rank_checkpoints(loaded, layers="last", n_seqs=rank_seqs, seed=seed, device=device)
    records = []
    for ck, rk in zip(loaded, ranks):
        res = evaluate_world_model(model_predictor(ck.model, batch_size=batch_size), ck.world, n_pairs=n_pairs,
                                   seed=seed, epsilon=epsilon, max_turns=max_turns,
                                   n_continuations=n_continuations, suffix_len=suffix_len,
                                   detour_probs=tuple(detour_probs), truth=truth)
        records.append({**ckpt_info(ck), "effective_rank": rk["effective_rank"], "rank_layer": rk["layer"],
                        **res.to_dict()})
    return records


def _cell(r: dict[str, Any], percent: bool) -> str:
    if r is None or r.get("n", 0) == 0 or r.get("rate") is None or r["rate"] != r["rate"]:
        return "n/a"
    f = 100.0 if percent else 1.0
    digits = 1 if percent else 3
    return f"{f * r['rate']:.{digits}f} [{f * r['ci_low']:.{digits}f}, {f * r['ci_high']:.{digits}f}]"


def table(records: list[dict[str, Any]]) -> str:
    """Metrics as rows, checkpoints as columns."""
    names = [r["checkpoint"] for r in records]
    if len(set(names)) < len(names):
        names = [r["path"] for r in records]
    rows: list[dict[str, Any]] = [{"metric": "objective", **{n: r["objective"] for n, r in zip(names, records)}},
                                  {"metric": "step", **{n: str(r["step"]) for n, r in zip(names, records)}}]
    for key, label in LABELS.items():
        rows.append({"metric": label, **{n: _cell(r[key], key in PERCENT) for n, r in zip(names, records)}})
    for key in records[0]["detour"]:
        kind, p = key.split("@")
        rows.append({"metric": f"detour {kind.replace('_', '-')} p={p} (%)",
                     **{n: _cell(r["detour"][key]["valid"], True) for n, r in zip(names, records)}})
    rows.append({"metric": "eff. rank (final layer)",
                 **{n: f"{r['effective_rank']:.2f}" for n, r in zip(names, records)}})
    rows.append({"metric": "val loss",
                 **{n: ("-" if r["val_loss"] is None else f"{r['val_loss']:.4f}") for n, r in zip(names, records)}})
    cols = [("metric", "metric", "")] + [(n, n, "") for n in names]
    s = records[0]["settings"]
    note = (f"{s['n_pairs']} held-out trips (seed {s['seed']}), epsilon {s['epsilon']}, at most "
            f"{s['max_turns']} turns, suffixes <= {s['suffix_len']} tokens ({s['truth']} truth); "
            "detour rows: legal and ending at the destination")
    return format_table(rows, cols) + "\n" + note


def figure_rows(records: list[dict[str, Any]], detour: str = "random@0.75") -> list[dict[str, Any]]:
    """Rows for ``plots.interactive.worldmodel_table_figure`` / ``plots.paper.worldmodel_plot``:
    one per checkpoint, metric cells as ``(rate, ci_low, ci_high)`` (NaN when undefined)."""
    nan = float("nan")

    def cell(r: dict[str, Any]) -> tuple[float, float, float]:
        if not r or not r.get("n"):
            return nan, nan, nan
        return tuple(nan if r[k] is None else float(r[k]) for k in ("rate", "ci_low", "ci_high"))  # type: ignore[return-value]

    short = {"next_token": "next-token", "trajectory_legal": "legal traj.", "trajectory_valid": "valid traj.",
             "compression": "compression", "distinction_precision": "distinction P",
             "distinction_recall": "distinction R"}
    rows = []
    for r in records:
        row: dict[str, Any] = {"model": r["checkpoint"], "objective": r["objective"]}
        row.update({label: cell(r[key]) for key, label in short.items()})
        if detour in r["detour"]:
            kind, p = detour.split("@")
            row[f"detour ({kind}, p={p})"] = cell(r["detour"][detour]["valid"])
        row["eff. rank"] = r["effective_rank"]
        row["val loss"] = nan if r["val_loss"] is None else r["val_loss"]
        rows.append(row)
    return rows


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m nextlat_probe.worldmodel",
        description="Taxi world-model metrics (Vafa et al.; NextLat Table 1) for one or more checkpoints.")
    p.add_argument("ckpts", nargs="+", metavar="CKPT", help="taxi checkpoint files (ckpt.pt) or run folders")
    p.add_argument("--n-pairs", type=int, default=200, help="held-out (origin, destination) trips (default 200)")
    p.add_argument("--seed", type=int, default=0, help="seed of the trips and of every random choice")
    p.add_argument("--epsilon", type=float, default=0.01, help="acceptance threshold (default 0.01)")
    p.add_argument("--max-turns", type=int, default=None,
                   help="turn budget of generations (default 3 x the world's max_len, capped by the context)")
    p.add_argument("--continuations", type=int, default=10, help="compression: continuations per prefix pair")
    p.add_argument("--suffix-len", type=int, default=3, help="distinction: longest suffix enumerated (default 3)")
    p.add_argument("--truth", choices=("world", "map"), default="world",
                   help="distinction ground truth: the world's exact support (default) or the bare street map")
    p.add_argument("--rank-seqs", type=int, default=256, help="sequences for the effective rank")
    p.add_argument("--device", default="cpu", help="cpu, cuda or auto")
    p.add_argument("--json", action="store_true", help="print one JSON document and nothing else on stdout")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.n_pairs < 1:
        raise UsageError(f"--n-pairs must be positive, got {args.n_pairs}")
    if not 0 < args.epsilon < 1:
        raise UsageError(f"--epsilon must lie in (0, 1), got {args.epsilon}")
    if args.continuations < 1 or args.suffix_len < 1 or args.rank_seqs < 1:
        raise UsageError("--continuations, --suffix-len and --rank-seqs must be positive")
    if args.max_turns is not None and args.max_turns < 1:
        raise UsageError(f"--max-turns must be positive, got {args.max_turns}")
    records = evaluate_checkpoints(args.ckpts, n_pairs=args.n_pairs, seed=args.seed, epsilon=args.epsilon,
                                   max_turns=args.max_turns, n_continuations=args.continuations,
                                   suffix_len=args.suffix_len, truth=args.truth, rank_seqs=args.rank_seqs,
                                   device=args.device)
    if args.json:
        print_json(records)
    else:
        print(table(records))
    return 0


if __name__ == "__main__":
    run_main(main)
