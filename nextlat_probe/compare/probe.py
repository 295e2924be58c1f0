"""Belief-state probes per model and layer, fit on some sequences and scored on held-out
ones: a closed-form linear probe to the exact belief (ridge strength by cross-validation
over whole training sequences), its shuffled-belief control, the embedding-layer baseline,
and for one-hot worlds a classifier to the hidden state and a regression to (x, y)."""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from ..errors import UsageError
from ..records import identity, make_record
from .inputs import N_SEQS, Inputs, held_out, parse_layers, resolve_inputs

#: how probe scores are obtained: fit on some sequences and score on held-out ones (ours,
#: the default), or the published belief-geometry protocol — ordinary least squares with
#: intercept fitted and scored on the same rows (every sequence x every position)
PROTOCOLS = ("held_out", "in_sample")
#: the protocol block of each: what is fitted on which rows
PROTOCOL_BLOCKS = {
    "held_out": {"name": "held_out", "fit": "ridge (alpha by grouped CV unless given) on the first sequences",
                 "score": "the last n_test sequences (disjoint)",
                 "differs_from": "shai2024 fits and scores ordinary least squares on the same rows (in_sample)"},
    "in_sample": {"name": "in_sample", "paper": "shai2024", "fit": "least squares on every row",
                  "score": "the same rows"},
}

#: belief vectors larger than this are not materialised (e.g. the factored belief on the
#: real Manhattan map); the classifier / coordinate probes still run
MAX_BELIEF_DIM = 4096


def state_targets(world: Any, states: np.ndarray) -> tuple[np.ndarray | None, np.ndarray | None]:
    """(class labels ``[n, L]``, (x, y) ``[n, L, 2]``) for worlds whose hidden state is a
    known discrete thing (visible-origin taxi: the current intersection; A5: the element);
    None where not defined (HMM worlds; maps without coordinates have no (x, y))."""
    states = np.asarray(states)
    kind = world.spec().get("kind")
    if kind == "a5":
        return states, None
    if kind == "taxi" and getattr(world, "origin", "visible") == "visible":
        node = states[..., 0]
        coords = getattr(world.map, "coords", None)
        xy = None if coords is None else np.asarray(coords, dtype=np.float64)[np.clip(node, 0, None)]
        return node, xy
    return None, None


def run_probe(
    models: Sequence[Any],
    *,
    n_seqs: int = N_SEQS,
    n_test: int | None = None,
    seq_len: int | None = None,
    layers: str | Sequence[int | str] = "all",
    alpha: float | str = "cv",
    protocol: str = "held_out",
    classifier: bool = True,
    keep_points: int = 0,
    seed: int = 0,
    device: str = "cpu",
    progress: bool = False,
    inputs: Inputs | None = None,
) -> list[dict[str, Any]]:
    """One ``probe`` record per model and layer, plus ``concat`` (every block's residual
    side by side) when more than one block is probed.

    ``protocol="held_out"``: the first ``n_seqs - n_test`` shared sequences train, the last
    ``n_test`` test (disjoint sequences; default ``inputs.held_out``: the last third). ``protocol="in_sample"`` (Shai et al.'s): fit and
    score on every row, with ``alpha`` 0 (ordinary least squares) unless a number is given;
    ``n_test`` is then unused. ``params["protocol"]`` and the metrics ``fit_rows`` /
    ``score_rows`` say which rows produced each number. ``keep_points > 0`` keeps up to that many held-out (true, predicted) points
    of the last requested layer in ``metrics["points"]`` for figures: beliefs, or for taxi
    maps with coordinates the (x, y) of the current intersection."""
    from ..activations import layer_label
    from ..analysis.probes import belief_probe, coordinate_regression, state_classifier
    from ..progress import progress as bar

    inp = resolve_inputs(models, inputs, n_seqs=n_seqs, seq_len=seq_len, seed=seed, device=device,
                         progress=progress)
    n_seqs = inp.n_seqs
    if protocol not in PROTOCOLS:
        raise UsageError(f"probe protocol must be one of {', '.join(PROTOCOLS)}, got {protocol!r}")
    if protocol == "in_sample":
        alpha = 0.0 if alpha == "cv" else alpha
        tr = te = np.arange(n_seqs)
    else:
        n_test = held_out(n_seqs) if n_test is None else n_test
        if not 1 <= n_test <= n_seqs - 2:
            raise UsageError(f"--n-test must lie in 1..{n_seqs - 2} for {n_seqs} sequences (two or more train), "
                             f"got {n_test}")
        tr, te = np.arange(n_seqs - n_test), np.arange(n_seqs - n_test, n_seqs)
    out: list[dict[str, Any]] = []
    for i, m in enumerate(inp.models):
        world, sample = m.world, inp.sample(i)
        tokens, mask = sample.tokens, inp.mask(i)
        beliefs = world.beliefs(tokens) if world.n_states <= MAX_BELIEF_DIM else None
        labels, xy = state_targets(world, sample.states)
        hooks = parse_layers(layers, m.model_config.n_layers)
        acts = inp.hidden(i, hooks)
        sets = [(layer_label(h), acts[h]) for h in hooks]
        blocks = [acts[h] for h in hooks if h.startswith("blocks.") and h.endswith("hook_resid_post")]
        if len(blocks) > 1:
            sets.append(("concat", np.concatenate(blocks, axis=-1)))
        mtr, mte = mask[tr], mask[te]
        seq_ids = np.broadcast_to(tr[:, None], mtr.shape)[mtr]
        pos_te = np.broadcast_to(np.arange(tokens.shape[1]), mte.shape)[mte]
        keep = np.random.default_rng(seed).permutation(int(mte.sum()))[:keep_points]
        ident = identity(m)
        params = {**inp.params_of(i), "protocol": protocol, "alpha": alpha, "classifier": bool(classifier),
                  **({"n_test": int(n_test)} if protocol == "held_out" else {})}
        prot = {**PROTOCOL_BLOCKS[protocol], "alpha": alpha,
                **({"n_test": int(n_test)} if protocol == "held_out" else {})}
        points_layer = layer_label(hooks[-1])
        recs = []
        for label, H in bar(sets, desc=f"probes {m.name}", disable=not progress, leave=False):
            metrics: dict[str, Any] = {"d_in": int(H.shape[-1]), "n_rows": int(mask.sum()),
                                       "fit_rows": int(mtr.sum()), "score_rows": int(mte.sum())}
            points: dict[str, Any] = {}
            want_points = keep_points > 0 and label == points_layer
            if beliefs is not None:
                res = belief_probe(H[tr][mtr], beliefs[tr][mtr], H[te][mte], beliefs[te][mte],
                                   positions_test=pos_te, groups_train=seq_ids, alpha=alpha, seed=seed,
                                   keep_predictions=want_points)
                d = res.to_dict()
                metrics.update(mse=d["mse"], r2=d["r2"], kl=d["kl"], control_mse=d["control_mse"],
                               control_r2=d["control_r2"], control_kl=d["control_kl"], alpha=d["alpha"],
                               n_train=d["n_train"], n_test=d["n_test"], n_states=d["n_states"],
                               positions=d["positions"], r2_per_position=d["r2_by_position"])
                if want_points and xy is None:  # with (x, y) the figure shows positions, not beliefs
                    points.update(true=beliefs[te][mte][keep], pred=res.predictions[keep])
            if classifier and labels is not None:
                c = state_classifier(H[tr][mtr], labels[tr][mtr], H[te][mte], labels[te][mte], seed=seed)
                metrics.update(state_accuracy=c.accuracy, state_chance=c.chance, n_classes=c.n_classes)
            if xy is not None:
                r = coordinate_regression(H[tr][mtr], xy[tr][mtr], H[te][mte], xy[te][mte], seed=seed,
                                          keep_predictions=want_points)
                metrics.update(xy_r2=r.r2)
                if want_points:
                    points.update(xy_true=xy[te][mte][keep], xy_pred=r.predictions[keep],
                                  node=labels[te][mte][keep])
            if points:
                metrics["points"] = {k: np.asarray(v).tolist() for k, v in points.items()}
            recs.append(make_record(ident, "probe", metrics, params, layer=label, protocol=prot))
        base = next((r["metrics"].get("r2") for r in recs if r["layer"] == "embed"), None)
        for r in recs:
            r["metrics"]["embedding_baseline_r2"] = base
        out.extend(recs)
    return out


__all__ = ["run_probe", "state_targets", "MAX_BELIEF_DIM"]
