"""The paper's other tasks: ``python -m nextlat_probe.taskeval CKPT [CKPT ...]``.

Depending on each checkpoint's world:

- **A5 in tagging form** (``--world a5``): accuracy of the model's head against the running
  product at every position, per evaluation length (``--lengths``, default 12,18,24,36;
  the model's training length is marked), as token accuracy and whole-sequence accuracy;
  for NextLat checkpoints also **p_psi as a recurrent model**: the transformer's latent at
  ``--start`` unrolled by p_psi through the remaining inputs and decoded by the frozen head,
  beside the transformer on the same positions. Does the learned latent dynamics
  generalise where attention does not?
- **path-star graphs** (``--world pathstar:degree=D,length=L``): exact-path accuracy of greedy
  paths, first-step accuracy (the step next-token training's shortcut gets wrong) and the
  share of outputs that are a valid path to some leaf (the Clever-Hans signature), plus
  teacher-forced accuracy.

Records have the shape of every other analysis (``--json``); ``--plot out.html`` writes the
interactive figure, ``--figure out`` the paper figure (pdf, svg, png).
Python: ``nextlat_probe.compare.run_taskeval``.
"""
from __future__ import annotations

import argparse
from typing import Any

from .cli import (
    ArgumentParser,
    UsageError,
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


def parse_lengths(text: str | None) -> list[int] | None:
    if text is None:
        return None
    try:
        out = [int(x) for x in text.split(",")]  # an empty item ("12,,18") is refused, not skipped
    except ValueError:
        raise UsageError(f"--lengths must be comma-separated integers, got {text!r}") from None
    if not out or min(out) < 2:
        raise UsageError(f"--lengths must be integers >= 2, got {text!r}")
    return sorted(set(out))


def table(records: list[dict[str, Any]]) -> str:
    """A5: one row per (model, variant), one column per length (token / sequence accuracy);
    path-star: one row per model. The protocol line under it."""
    from .records import select, value
    from .tables import convergence_note, format_table, protocol_note

    lines = []
    a5 = [r for r in select(records, analysis="taskeval") if "length" in r["metrics"]]
    if a5:
        lengths = sorted({r["metrics"]["length"] for r in a5})
        rows: dict[tuple[str, str], dict[str, Any]] = {}
        for r in a5:
            row = rows.setdefault((r["name"], r["variant"]), {"model": r["name"], "objective": r["objective"],
                                                              "variant": r["variant"]})
            m = r["metrics"]
            row[f"L{m['length']}"] = f"{value(m['token_accuracy']):.3f} / {value(m['sequence_accuracy']):.3f}"
        trained = sorted({r["protocol"].get("train_length") for r in a5} - {None})
        cols = [("model", "model", ""), ("objective", "objective", ""), ("variant", "variant", "")]
        cols += [(f"L{t}", f"len {t}" + (" (train)" if t in trained else ""), "") for t in lengths]
        lines += [format_table(list(rows.values()), cols),
                  "cells: token accuracy / whole-sequence accuracy (argmax vs the running product s_t); "
                  "p_psi rollout counts the positions after its start only"]
    ps = [r for r in select(records, analysis="taskeval") if "exact_path" in r["metrics"]]
    if ps:
        rows2 = [{"model": r["name"], "objective": r["objective"],
                  **{k: f"{value(r['metrics'][k]):.3f} [{r['metrics'][k]['low']:.3f}, {r['metrics'][k]['high']:.3f}]"
                     for k in ("exact_path", "first_step", "valid_path")},
                  "forced": f"{value(r['metrics']['forced_token']):.3f}"} for r in ps]
        lines.append(format_table(rows2, [("model", "model", ""), ("objective", "objective", ""),
                                          ("exact_path", "exact path", ""), ("first_step", "first step", ""),
                                          ("valid_path", "valid path to a leaf", ""),
                                          ("forced", "teacher-forced token acc.", "")]))
    by_model = {r["name"]: r for r in select(records, analysis="taskeval")}
    conv = convergence_note(by_model.values())
    return "\n".join(lines + [protocol_note(records)] + ([conv] if conv else []))


def build_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(prog="python -m nextlat_probe.taskeval",
                                description="A5 length generalisation (with p_psi as a recurrent model) or "
                                            "path-star planning accuracy, by the checkpoint's world.")
    add_model_args(p)
    p.add_argument("--lengths", default=None,
                   help="A5: comma-separated evaluation lengths (default 12,18,24,36); each must fit the context")
    p.add_argument("--n-seqs", type=int, default=256,
                   help="A5: words per length; path-star: graphs (default 256)")
    p.add_argument("--start", type=int, default=None,
                   help="A5: position (0-based) whose latent starts the p_psi roll-out (default 4)")
    p.add_argument("--seed", type=int, default=0, help="seed of the evaluation words / graphs")
    p.add_argument("--figure", default=None, metavar="STEM",
                   help="also write the paper figure as STEM.pdf/.svg/.png")
    add_output_args(p)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    check_positive(n_seqs=args.n_seqs)
    if args.start is not None and args.start < 0:
        raise UsageError(f"--start must be >= 0, got {args.start}")
    lengths = parse_lengths(args.lengths)
    check_output_path(args.plot)
    if args.figure is not None:
        check_output_path(f"{args.figure}.pdf", "--figure")
    device = resolve_device_arg(args.device)
    from .compare import run_taskeval

    records = run_taskeval(load_cli_models(args, device), lengths=lengths, n_seqs=args.n_seqs, start=args.start,
                           seed=args.seed, device=device, progress=progress_enabled(args))
    if args.plot is not None:
        from .plots.interactive import taskeval_figure, write_html

        write_html(taskeval_figure(records), args.plot, title="Task evaluation")
    if args.figure is not None:
        from .plots.paper import save_figure, taskeval_plot

        save_figure(taskeval_plot(records), args.figure)
    return finish(args, records, lambda: table(records))


if __name__ == "__main__":
    run_main(main)
