"""Belief-state probes: ``python -m nextlat_probe.probe CKPT [CKPT ...]``.

A linear probe (closed form, intercept, ridge strength chosen by cross-validation over
whole training sequences) maps hidden states to the world's exact belief vectors; it is fit
on some sequences and scored on different, held-out sequences, per layer and for all
layers concatenated. Beside every score: the shuffled-belief control (what a probe reaches
with no real correspondence) and the embedding layer (the belief read off the raw token
and position embeddings: a no-computation baseline). For worlds with a one-hot hidden
state (taxi with visible origin, A5) also a linear classifier to the hidden state and, for
taxi maps with coordinates, a regression to the (x, y) of the current intersection.
"""
from __future__ import annotations

import argparse
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .cli import UsageError, format_table, parse_layers, print_json, run_main

COLUMNS = [
    ("checkpoint", "checkpoint", ""),
    ("objective", "objective", ""),
    ("layer", "layer", ""),
    ("mse", "belief MSE", ".3g"),
    ("r2", "R^2", ".4f"),
    ("kl", "KL", ".4f"),
    ("control_r2", "shuffled R^2", ".3f"),
    ("state_accuracy", "state acc.", ".3f"),
    ("xy_r2", "(x,y) R^2", ".3f"),
    ("val_loss", "val loss", ".4f"),
]

#: belief vectors larger than this are not materialised (e.g. the factored belief on the
#: real Manhattan map); the classifier / coordinate probes still run.
MAX_BELIEF_DIM = 4096


@dataclass
class ProbeReport:
    """Records (one per checkpoint and layer) plus what the plots need."""

    records: list[dict[str, Any]]
    panels: list[dict[str, Any]] = field(default_factory=list)  # simplex / PCA data per checkpoint

    def to_dict(self) -> dict[str, Any]:
        return {"records": self.records}


def _one_hot_targets(world, sample) -> tuple[Any, Any]:
    """(class labels [n, L], xy [n, L, 2] or None) for worlds whose hidden state is known."""
    import numpy as np

    states = np.asarray(sample.states)
    kind = world.spec().get("kind")
    if kind == "a5":
        return states, None
    if kind == "taxi" and getattr(world, "origin", "visible") == "visible":
        node = states[..., 0]
        coords = getattr(world.map, "coords", None)
        xy = None
        if coords is not None:
            xy = np.asarray(coords)[np.clip(node, 0, None)]
        return node, xy
    return None, None


def probe_checkpoints(
    ckpts: list[Any],
    layers: str = "all",
    n_train: int = 256,
    n_test: int = 128,
    seq_len: int | None = None,
    alpha: float | str = "cv",
    seed: int = 0,
    device: str = "cpu",
    classifier: bool = True,
    max_points: int = 3000,
    progress: bool = False,
) -> ProbeReport:
    """Fit and score belief probes for each checkpoint on the same train/test sequences."""
    import numpy as np
    from tqdm.auto import tqdm

    from .activations import analysis_mask, collect, layer_hook, layer_label
    from .analysis.common import ckpt_info, ensure_loaded, shared_tokens
    from .analysis.probes import belief_probe, coordinate_regression, state_classifier

    loaded = ensure_loaded(ckpts, device=device)
    samples = shared_tokens(loaded, n_train + n_test, seq_len, seed)
    tr = np.arange(n_train)
    te = np.arange(n_train, n_train + n_test)  # disjoint by construction: different sequences
    records: list[dict[str, Any]] = []
    panels: list[dict[str, Any]] = []
    for ck, sample in zip(loaded, samples):
        world, tokens = ck.world, sample.tokens
        mask = analysis_mask(world, tokens)
        beliefs = world.beliefs(tokens) if world.n_states <= MAX_BELIEF_DIM else None
        labels, xy = _one_hot_targets(world, sample)
        idx = parse_layers(layers, ck.model_config.n_layers) if isinstance(layers, str) else list(layers)
        hooks = [layer_hook(i) for i in idx]
        acts = collect(ck.model, tokens, hooks, progress=progress)
        sets = [(layer_label(h), acts[h]) for h in hooks]
        blocks = [a for h, a in acts.items() if h.startswith("blocks.") and h.endswith("hook_resid_post")]
        if len(blocks) > 1:
            sets.append(("concat", np.concatenate(blocks, axis=-1)))
        mtr, mte = mask[tr], mask[te]
        seq_ids = np.broadcast_to(tr[:, None], mask[tr].shape)[mtr]
        pos_te = np.broadcast_to(np.arange(tokens.shape[1]), mask[te].shape)[mte]
        for label, H in tqdm(sets, desc=f"probes {ck.name}", disable=not progress, leave=False):
            rec: dict[str, Any] = {**ckpt_info(ck), "layer": label, "d_in": int(H.shape[-1])}
            if beliefs is not None:
                res = belief_probe(
                    H[tr][mtr], beliefs[tr][mtr], H[te][mte], beliefs[te][mte],
                    positions_test=pos_te, groups_train=seq_ids, alpha=alpha, seed=seed,
                )
                rec.update({k: v for k, v in res.to_dict().items() if k not in ("r2_per_coord",)})
                if label == layer_label(hooks[-1]):  # plot data: the last requested layer
                    keep = np.random.default_rng(seed).permutation(res.n_test)[:max_points]
                    panels.append({
                        "title": f"{ck.name} ({ck.objective}) {label}",
                        "objective": ck.objective,
                        "true": beliefs[te][mte][keep],
                        "pred": res.predictions[keep],
                    })
            if classifier and labels is not None:
                c = state_classifier(H[tr][mtr], labels[tr][mtr], H[te][mte], labels[te][mte])
                rec.update(state_accuracy=c.accuracy, state_chance=c.chance)
            if xy is not None:
                r = coordinate_regression(H[tr][mtr], xy[tr][mtr], H[te][mte], xy[te][mte])
                rec.update(xy_r2=r.r2)
            records.append(rec)
        emb = [r for r in records if r["checkpoint"] == ck.name and r["layer"] == "embed"]
        if emb and "r2" in emb[0]:
            for r in records:
                if r["checkpoint"] == ck.name:
                    r["embedding_baseline_r2"] = emb[0]["r2"]
    return ProbeReport(records, panels)


def write_probe_plot(rep: ProbeReport, path: Path) -> Path:
    """One offline page: belief simplex (3-state worlds) or PCA panels, and R^2 per layer."""
    from .plots.interactive import belief_simplex_figure, probe_r2_figure
    from .plots.page import write_page

    sections = []
    if rep.panels:
        sections.append(("Probed beliefs", "True belief vs linear-probe prediction on held-out sequences (last layer).", belief_simplex_figure(rep.panels)))
    if any("r2" in r for r in rep.records):
        sections.append(("Probe R^2 per layer", "Weighted R^2 of the belief probe per layer; dashed: shuffled-belief control.", probe_r2_figure(rep.records)))
    return write_page(sections, path, title="Belief probes")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m nextlat_probe.probe", description="Linear probes from hidden states to exact belief states, on held-out sequences.")
    p.add_argument("ckpts", nargs="+", metavar="CKPT")
    p.add_argument("--layers", default="all", help="all, last, or a comma list of block indices (emb = embeddings)")
    p.add_argument("--n-train", type=int, default=256, help="training sequences")
    p.add_argument("--n-test", type=int, default=128, help="held-out test sequences")
    p.add_argument("--seq-len", type=int, default=None)
    p.add_argument("--alpha", default="cv", help="ridge strength, or 'cv' to choose it by cross-validation")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu")
    p.add_argument("--no-classifier", action="store_true", help="skip the hidden-state classifier")
    p.add_argument("--json", action="store_true")
    p.add_argument("--plot", type=Path, default=None, help="offline HTML: belief simplex (3 states) or PCA, and R^2 per layer")
    p.add_argument("--no-progress", action="store_true")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.n_train < 2 or args.n_test < 1:
        raise UsageError("--n-train must be >= 2 and --n-test >= 1")
    alpha: float | str = args.alpha
    if alpha != "cv":
        try:
            alpha = float(alpha)
        except ValueError:
            raise UsageError(f"--alpha must be a number or 'cv', got {args.alpha!r}") from None
        if alpha < 0:
            raise UsageError("--alpha must be non-negative")
    rep = probe_checkpoints(
        args.ckpts, layers=args.layers, n_train=args.n_train, n_test=args.n_test, seq_len=args.seq_len,
        alpha=alpha, seed=args.seed, device=args.device, classifier=not args.no_classifier,
        progress=not (args.no_progress or args.json),
    )
    if args.plot is not None:
        write_probe_plot(rep, args.plot)
    if args.json:
        print_json(rep.records)
    else:
        print(format_table(rep.records, COLUMNS))
        if args.plot is not None:
            print(f"wrote {args.plot}")
    return 0


if __name__ == "__main__":
    run_main(main)
