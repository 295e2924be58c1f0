"""Belief-state probes: ``python -m nextlat_probe.probe CKPT [CKPT ...]``.

A linear probe (closed form, intercept, ridge strength chosen by cross-validation over
whole training sequences) maps hidden states to the world's exact belief vectors; it is fit
on some sequences and scored on different, held-out sequences, per layer and for all
blocks concatenated. Beside every score: the shuffled-belief control (what a probe reaches
with no real correspondence) and the embedding layer (a no-computation baseline). For
worlds with a one-hot hidden state (taxi with visible origin, A5) also a linear classifier
to the hidden state and, for taxi maps with coordinates, a regression to the (x, y) of the
current intersection. Python: ``nextlat_probe.compare.run_probe``.
"""
from __future__ import annotations

import argparse

from .cli import (
    ArgumentParser,
    UsageError,
    add_layers_arg,
    add_model_args,
    add_output_args,
    add_sequence_args,
    check_output_path,
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
from .labels import columns

#: the printed table: headers, units, directions and formats from ``nextlat_probe.labels``
COLUMNS = columns(["name", "objective", "layer", "mse", "r2", "kl", "control_r2", "state_accuracy", "xy_r2",
                   "val_loss", "gap_to_floor"], "probe")


def build_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(prog="python -m nextlat_probe.probe",
                                description="Linear probes from hidden states to exact belief states, on held-out "
                                "sequences (the last --n-test of --n-seqs).")
    add_model_args(p)
    add_sequence_args(p, n_seqs=N_SEQS, what="sequences in all: the first n_seqs - n_test train, the rest test; "
                      "the report's default too")
    p.add_argument("--n-test", type=int, default=None,
                   help="held-out test sequences (default: the last third of --n-seqs, 85 of 256, as in the report)")
    p.add_argument("--n-train", type=int, default=None,
                   help="training sequences; sets --n-seqs to n_train + n_test (the older spelling)")
    add_layers_arg(p, "all")
    p.add_argument("--alpha", default="cv", help="ridge strength, or 'cv' to choose it by cross-validation")
    p.add_argument("--in-sample", action="store_true",
                   help="the published belief-geometry protocol: ordinary least squares (alpha 0 unless given) "
                        "fitted and scored on the same rows, every sequence x position; default: held-out")
    p.add_argument("--no-classifier", action="store_true", help="skip the hidden-state classifier")
    add_output_args(p)
    return p


def parse_alpha(text: str) -> float | str:
    if text == "cv":
        return text
    try:
        alpha = float(text)
    except ValueError:
        raise UsageError(f"--alpha must be a number or 'cv', got {text!r}") from None
    if not alpha >= 0:
        raise UsageError(f"--alpha must be non-negative, got {text}")
    return alpha


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    n_seqs, n_test = held_out_split(args)
    alpha = parse_alpha(args.alpha)
    check_output_path(args.plot)
    device = resolve_device_arg(args.device)
    from .compare import run_probe

    models = load_cli_models(args, device)
    records = run_probe(None, inputs=cli_inputs(args, models, n_seqs), n_test=n_test, layers=args.layers,
                        protocol="in_sample" if args.in_sample else "held_out",
                        alpha=alpha, classifier=not args.no_classifier, keep_points=3000 if args.plot else 0,
                        seed=args.seed, device=device, progress=progress_enabled(args))
    if args.plot is not None:
        from .plots.interactive import belief_figure, probe_r2_figure
        from .plots.page import write_page

        sections = []
        if any("points" in r["metrics"] for r in records):
            sections.append(("Probed beliefs", "True vs linear-probe prediction on held-out sequences (last layer).",
                             belief_figure(records, true_map=getattr(models[0].world, "map", None))))
        if any("r2" in r["metrics"] for r in records):
            sections.append(("Probe R^2 per layer", "Weighted R^2 of the belief probe per layer; dotted: "
                             "shuffled-belief control.", probe_r2_figure(records)))
        write_page(sections, args.plot, title="Belief probes")
    return finish(args, records, lambda: table_text([{**r, "metrics": {k: v for k, v in r["metrics"].items() if k != "points"}}
                                                for r in records], COLUMNS))


if __name__ == "__main__":
    run_main(main)
