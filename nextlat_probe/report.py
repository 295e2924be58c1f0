"""The comparison report: ``python -m nextlat_probe.report CKPT [CKPT ...] --out DIR``.

Runs every analysis that applies to the checkpoints' world on ONE set of held-out
sequences (one forward pass per model, the same hidden states handed to every analysis)
and writes

    DIR/report.html     one offline page: summary table, then each analysis's figures
    DIR/summary.json    every record (``nextlat_probe.records`` shape) and the summary rows
    DIR/figures/*.pdf, *.png   paper figures (matplotlib)

and prints the summary table. Validation loss and its gap to the exact floor stand beside
every representation metric, and effective rank is also compared at matched validation
loss when the runs kept intermediate checkpoints (``--keep-every``).

``DIR`` must be new, empty, or hold an earlier report of this tool (``summary.json`` with
``"format": "nextlat_probe.report"``, or from before that key, a ``report.html`` titled
"nextlat_probe report"); an earlier report's files are moved into ``DIR/.replaced-<UTC
time>/`` once the new one is ready to be written, as ``train --overwrite`` does with a run.
Any other non-empty folder is refused before any work, and nothing in it is touched.

The report is a list of ``Section``s, each (what to compute, an interactive figure, a paper
figure); ``run_report`` is a short loop over them.
"""
from __future__ import annotations

import argparse
import html
import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from .cli import (
    ArgumentParser,
    UsageError,
    add_model_args,
    check_positive,
    resolve_device_arg,
    run_main,
    source_options,
)
from .compare.inputs import N_SEQS, held_out
from .compare.transition import FIT_STEPS

#: the report's summary, metrics as rows (one column per model); "# ..." keys are
#: headings; labels, units, directions and formats come from ``nextlat_probe.labels``
SUMMARY_KEYS = [
    "# training", "step", "val_loss", "gap_to_floor",
    "# hidden states", "effective_rank", "probe_r2", "probe_mse", "state_accuracy", "transition_err1", "own_err1",
    "belief_ratio",
    "# world model", "next_token", "valid_trajectory", "legal_trajectory", "compression", "distinction_precision",
    "distinction_recall", "detour", "invented_edges",
]
#: the headline metrics the verdict lines compare, in order (every one the summary shows
#: that has a better direction)
VERDICT_KEYS = ["val_loss", "gap_to_floor", "effective_rank", "probe_r2", "transition_err1", "next_token",
                "valid_trajectory", "compression", "distinction_precision", "distinction_recall", "detour",
                "invented_edges"]
#: the world-model detour setting shown in the summary (the paper's: random detours, p = 0.75)
SUMMARY_DETOUR = "detour_random@0.75"
#: summary row key -> worldmodel metric
WORLDMODEL_SUMMARY = {"next_token": "next_token", "valid_trajectory": "trajectory_valid",
                      "legal_trajectory": "trajectory_legal", "compression": "compression",
                      "distinction_precision": "distinction_precision", "distinction_recall": "distinction_recall",
                      "detour": SUMMARY_DETOUR}

CAPTIONS = {
    "training": "Validation loss minus the exact floor during training (log scale), with the training losses. The floor is the cross-entropy of the world's exact predictive distribution on the same validation tokens; the gap is what the model has still to learn.",
    "position": "Loss per position on held-out sequences next to the exact per-position floor, the excess over it, and how many targets each position's number rests on (later positions of variable-length trips rest on fewer). Early positions carry more uncertainty; a model that tracks the belief state follows the floor.",
    "rank": "Singular-value spectra (left) and effective rank (Roy & Vetterli) per layer (right), uncentred, on the same sequences. Lower = more compact hidden states. Read it with the validation loss: an undertrained model also looks compact.",
    "rank_training": "Effective rank of the last block along training, against step (left) and against validation loss (right). The right panel is the matched-loss comparison.",
    "beliefs": "Exact belief states and the linear-probe predictions from the last layer on held-out sequences. A model whose hidden states linearly encode the belief reproduces the geometry.",
    "beliefs_taxi": "Probed (x, y) of the current intersection from the last layer on held-out trips, drawn over the true map and coloured by intersection: a model that knows where it is puts each colour on its own intersection.",
    "probe_r2": "Weighted R² of the linear belief probe on held-out sequences per layer (all blocks concatenated as the last point). The shuffled-belief control shows what a probe reaches without a real correspondence.",
    "transition": "Relative error ||ĥ - h||² / ||h - mean h||² of dynamics rolled out from h_t with the true next tokens, per horizon. Post-hoc dynamics are fitted on frozen hidden states of training sequences (comparable across GPT and NextLat); 'own' is NextLat's p_ψ. Right: the share of the hidden states' variance left within groups of equal belief (or equal hidden state and position); 0 means the hidden state is a function of the belief.",
    "worldmodel": "World-model metrics of the taxi world (Vafa et al.; NextLat Table 1), metrics as rows and models as columns, with 95% intervals (Wilson for rates; mean ± 1.96 s.e. over prefix pairs for distinction under protocol vafa2024): next-token validity, valid greedy trajectories, sequence compression, distinction precision and recall, detour robustness at each setting scored, the effective rank of the last block and the validation loss. ↑ higher is better, ↓ lower is better. Paper figures: figures/table1.pdf (the headline metrics) and figures/worldmodel_appendix.pdf (every other one).",
    "beliefmodel": "Compression and distinction on a world with exact beliefs (after Vafa et al.; protocol myhill_nerode): prefixes with the same exact belief should get the same continuations from the model (compression, all-or-nothing per pair over sampled continuations), prefixes with different beliefs should be told apart by the minimal suffixes that distinguish them (distinction precision and recall, per pair). Worlds of full support (Mess3) have no distinguishing suffix: distinction is then undefined, not a number.",
    "maps": "The true street map, then, one row per model, the maps rebuilt from it: from generated trajectories (recovered streets, missing streets dotted, invented edges as arcs; an invented edge back to its own intersection as a small loop) and from hidden states (mean state per intersection embedded in 2-D). The counts in the titles are one-way edges, as in summary.json.",
}


# --------------------------------------------------------------------------------------
# what the sections share
# --------------------------------------------------------------------------------------
@dataclass
class Context:
    """Everything a section needs: the loaded models, ONE ``compare.Inputs`` (sequences and
    hidden states computed once), the report's parameters, and the records computed so far
    (by analysis key, so two sections can show one computation)."""

    models: list[Any]
    inputs: Any
    seed: int
    device: str
    horizon: int
    fit_steps: int
    progress: bool
    records: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    extras: dict[str, Any] = field(default_factory=dict)

    @property
    def n_seqs(self) -> int:
        return self.inputs.n_seqs

    @property
    def n_test(self) -> int:
        return held_out(self.n_seqs)

    @property
    def objectives(self) -> dict[str, str]:
        return {m.name: m.objective for m in self.models}

    @property
    def is_taxi(self) -> bool:
        """World-model sections need origin and destination tokens (visible-origin taxi)."""
        return all(m.world.spec().get("kind") == "taxi" and getattr(m.world, "origin", "visible") == "visible"
                   for m in self.models)

    @property
    def true_map(self) -> Any:
        return self.models[0].world.map if self.is_taxi else None

    def get(self, key: str) -> list[dict[str, Any]]:
        """The records of analysis ``key`` (computed on first use)."""
        if key not in self.records:
            self.records[key] = ANALYSES[key](self)
        return self.records[key]


def _training_logs(ctx: Context) -> dict[str, list[dict[str, Any]]]:
    from .training.log import read_metrics

    logs = {}
    for m in ctx.models:
        p = Path(m.path).parent / "metrics.jsonl"
        if p.is_file():
            logs[m.name] = read_metrics(p)
    return logs


def _rank_along_training(ctx: Context) -> list[dict[str, Any]]:
    """``rank`` records (last block) of each model's kept checkpoints and of the model
    itself, on the report's sequences; every record named after its run."""
    from .checkpoint import load_checkpoint
    from .compare import run_rank
    from .experiments import intermediate_checkpoints

    per_model = []
    for m in ctx.models:
        inter = [p for p in intermediate_checkpoints(Path(m.path).parent) if p.resolve() != Path(m.path).resolve()]
        loaded = []
        for p in inter:
            ck = load_checkpoint(p, device=ctx.device)
            if ck.step == m.step:  # the last kept checkpoint is the model itself
                continue
            ck.label = m.name
            loaded.append(ck)
        recs = run_rank(loaded, n_seqs=ctx.n_seqs, seq_len=ctx.inputs.length, seed=ctx.seed,
                        device=ctx.device) if loaded else []
        per_model.append((m, recs))
    if not any(recs for _, recs in per_model):
        return []  # no model kept a checkpoint along training: no trajectory to show
    out = []
    for m, recs in per_model:
        # each model's own last block (models of different depths name it differently); a
        # model without kept checkpoints still takes part with its final point (it may be
        # the one that sets the matched loss)
        final = _last_block([r for r in ctx.get("rank") if r["name"] == m.name])
        recs = recs + [r for r in final if not recs or r["layer"] == recs[0]["layer"]]
        out.extend(sorted(recs, key=lambda r: r["step"]))
    return out


def _worldmodel(ctx: Context) -> list[dict[str, Any]]:
    """``worldmodel`` records: the taxi metrics (visible origin), or compression and
    distinction (``myhill_nerode``) on other next-token worlds with exact beliefs; none for
    worlds where neither applies (tagging worlds, hidden-origin taxi)."""
    from .analysis.beliefmodel import check_belief_world
    from .analysis.worldmodel import check_taxi_world
    from .errors import AnalysisError

    try:
        for m in ctx.models:
            (check_taxi_world if ctx.is_taxi else check_belief_world)(m.world)
    except AnalysisError:
        return []
    return _compare().run_worldmodel(ctx.models, n_pairs=_wm_pairs(ctx), seed=ctx.seed, device=ctx.device,
                                     progress=ctx.progress)


def _wm_pairs(ctx: Context) -> int:
    """Trips of the report's world-model metrics (the same at equal steps and matched loss)."""
    return max(50, min(200, ctx.n_seqs))


def _worldmodel_matched(ctx: Context) -> list[dict[str, Any]]:
    """``worldmodel`` records (taxi) of the checkpoints at matched validation loss: each
    run's first kept checkpoint at the loss every run reaches (``_matched_loss``), scored on
    the same trips as the ``worldmodel`` section. Empty when every matched checkpoint is the
    final one (the equal-step numbers are then already at matched loss)."""
    from .checkpoint import load_checkpoint
    from .experiments import intermediate_checkpoints

    if not ctx.is_taxi:
        return []
    runs = _matched_loss(ctx).get("runs") or {}
    if all(runs[m.name]["step"] == m.step for m in ctx.models if m.name in runs):
        return []  # no runs, or every match is a final checkpoint
    picked = []
    for m in ctx.models:
        want = runs.get(m.name)
        if want is None:
            continue
        if want["step"] == m.step:
            picked.append(m)
            continue
        path = next((p for p in intermediate_checkpoints(Path(m.path).parent)
                     if p.name == f"ckpt_step{want['step']}.pt"), None)
        if path is None:
            return []  # a kept checkpoint went missing: no honest matched comparison
        ck = load_checkpoint(path, device=ctx.device)
        ck.label = m.name
        picked.append(ck)
    if len(picked) < 2:
        return []
    recs = _compare().run_worldmodel(picked, n_pairs=_wm_pairs(ctx), seed=ctx.seed, device=ctx.device,
                                     progress=ctx.progress)
    return [{**r, "variant": "matched_loss"} for r in recs]


def _compare():
    from . import compare

    return compare


#: analysis key -> how the report computes its records (all on the context's shared inputs,
#: except the world-model metrics, which generate trips of their own)
ANALYSES: dict[str, Callable[[Context], Any]] = {
    "training": _training_logs,
    "position_loss": lambda c: _compare().run_position_loss(None, inputs=c.inputs),
    "rank": lambda c: _compare().run_rank(None, inputs=c.inputs, layers="all"),
    "rank_training": _rank_along_training,
    "probe": lambda c: _compare().run_probe(None, inputs=c.inputs, layers="all", n_test=c.n_test, keep_points=3000,
                                            seed=c.seed),
    "transition": lambda c: _compare().run_transition(None, inputs=c.inputs, n_test=c.n_test, horizon=c.horizon,
                                                      fit_steps=c.fit_steps, seed=c.seed),
    "worldmodel": _worldmodel,
    "mapping": lambda c: _compare().run_mapping(None, inputs=c.inputs, n_trips=min(500, 2 * c.n_seqs), seed=c.seed),
    "worldmodel_matched": _worldmodel_matched,
}


# --------------------------------------------------------------------------------------
# the sections
# --------------------------------------------------------------------------------------
@dataclass
class Section:
    """One block of the report: the analysis it shows, its heading and caption, and its
    interactive and paper figures (functions of the context and the analysis's records)."""

    analysis: str
    title: str
    caption: str
    figure: Callable[[Context, Any], Any]
    paper: Callable[[Context, Any], Any] | None = None
    stem: str = ""  # file stem of the paper figure
    applies: Callable[[Context, Any], bool] = lambda ctx, recs: bool(recs)
    #: further paper figures of the section: (file stem, function of the context and records
    #: returning a figure, or None when it has nothing to show)
    more: list[tuple[str, Callable[[Context, Any], Any]]] = field(default_factory=list)
    #: a sentence appended to the caption, from the context and the records (e.g. where the
    #: report's numbers were computed differently from the CLI's defaults)
    note: Callable[[Context, Any], str] | None = None

    def paper_figures(self, ctx: Context, recs: Any) -> list[tuple[str, Callable[[], Any]]]:
        """(file stem, function making the figure) of each paper figure of the section."""
        if self.paper is None:
            return []
        out = [(self.stem, lambda: self.paper(ctx, recs))]
        return out + [(stem, lambda make=make: make(ctx, recs)) for stem, make in self.more]


def _plots():
    from .plots import interactive as I
    from .plots import paper as P

    return I, P


def _appendix(recs: list[dict[str, Any]]) -> Any:
    """The appendix figure of every world-model metric not in the Table-1 figure (None when
    there is none)."""
    from .errors import AnalysisError

    try:
        return _plots()[1].worldmodel_plot(recs)
    except AnalysisError:
        return None


def _mapping_note(ctx: Context, recs: list[dict[str, Any]]) -> str:
    """Where the report's maps differ from the mapping CLI's defaults, said beside them."""
    import inspect

    defaults = inspect.signature(_compare().run_mapping).parameters
    trips = next((r["params"].get("n_trips") for r in recs if r["variant"] == "behaviour"), None)
    cli_trips, cli_seqs = defaults["n_trips"].default, defaults["n_seqs"].default
    if trips == cli_trips and ctx.n_seqs == cli_seqs:
        return ""
    return (f"Here the maps are rebuilt from {trips} generated trips and the hidden states of the report's {ctx.n_seqs} "
            f"sequences; python -m nextlat_probe.mapping uses {cli_trips} trips and {cli_seqs} sequences by default, "
            "so its counts differ from these.")


def _has_points(ctx: Context, recs: list[dict[str, Any]]) -> bool:
    return any("points" in r["metrics"] for r in recs)


SECTIONS = [
    Section("training", "Training curves", CAPTIONS["training"],
            lambda c, logs: _plots()[0].training_curves_figure(logs, c.objectives),
            lambda c, logs: _plots()[1].training_curves_plot(logs, c.objectives), "training_curves"),
    Section("position_loss", "Loss per position vs the exact floor", CAPTIONS["position"],
            lambda c, r: _plots()[0].position_loss_figure(r), lambda c, r: _plots()[1].position_loss_plot(r),
            "position_loss"),
    Section("rank", "Effective rank", CAPTIONS["rank"],
            lambda c, r: _plots()[0].rank_figure(r), lambda c, r: _plots()[1].rank_plot(r), "effective_rank"),
    Section("rank_training", "Effective rank along training", CAPTIONS["rank_training"],
            lambda c, r: _plots()[0].rank_training_figure(r), lambda c, r: _plots()[1].rank_training_plot(r),
            "rank_training"),
    Section("probe", "Belief geometry: exact vs probed", CAPTIONS["beliefs"],
            lambda c, r: _plots()[0].belief_figure(r, true_map=c.true_map),
            lambda c, r: _plots()[1].belief_plot(r, true_map=c.true_map), "beliefs",
            applies=lambda c, r: _has_points(c, r) and not c.is_taxi),
    Section("probe", "Where the model thinks it is: probed (x, y) over the map", CAPTIONS["beliefs_taxi"],
            lambda c, r: _plots()[0].belief_figure(r, true_map=c.true_map),
            lambda c, r: _plots()[1].belief_plot(r, true_map=c.true_map), "beliefs",
            applies=lambda c, r: _has_points(c, r) and c.is_taxi),
    Section("probe", "Belief probe R² per layer", CAPTIONS["probe_r2"],
            lambda c, r: _plots()[0].probe_r2_figure(r), lambda c, r: _plots()[1].probe_r2_plot(r), "probe_r2",
            applies=lambda c, r: any("r2" in x["metrics"] for x in r)),
    Section("transition", "Transition consistency", CAPTIONS["transition"],
            lambda c, r: _plots()[0].transition_figure(r), lambda c, r: _plots()[1].transition_plot(r), "transition"),
    Section("worldmodel", "Taxi world model (Table 1 style)", CAPTIONS["worldmodel"],
            lambda c, r: _plots()[0].worldmodel_table_html(r + _last_block(c.get("rank"))),
            lambda c, r: _plots()[1].table1_plot(r + _last_block(c.get("rank"))), "table1",
            applies=lambda c, r: bool(r) and c.is_taxi, more=[("worldmodel_appendix", lambda c, r: _appendix(r))]),
    Section("worldmodel", "Belief-state world model: compression and distinction", CAPTIONS["beliefmodel"],
            lambda c, r: _plots()[0].worldmodel_table_html(r + _last_block(c.get("rank"))),
            lambda c, r: _plots()[1].table1_plot(r + _last_block(c.get("rank"))), "table1",
            applies=lambda c, r: bool(r) and not c.is_taxi, more=[("worldmodel_appendix", lambda c, r: _appendix(r))]),
    Section("mapping", "Reconstructed maps", CAPTIONS["maps"],
            lambda c, r: _plots()[0].map_figure(c.true_map, r), lambda c, r: _plots()[1].map_plot(c.true_map, r),
            "maps", note=lambda c, r: _mapping_note(c, r)),
]
#: sections computed only for the visible-origin taxi world
TAXI_ONLY = {"mapping"}


def _last_block(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per model, the record of its deepest block (``L{n-1}``)."""
    best: dict[str, dict[str, Any]] = {}
    for r in records:
        if r["layer"] and r["layer"].startswith("L"):
            if r["name"] not in best or int(r["layer"][1:]) > int(best[r["name"]]["layer"][1:]):
                best[r["name"]] = r
    return list(best.values())


# --------------------------------------------------------------------------------------
# the summary table, built from the records
# --------------------------------------------------------------------------------------
def summary_rows(ctx: Context) -> list[dict[str, Any]]:
    """One row per model with the headline number of each analysis (summary.json's
    ``summary``): plain numbers, and under ``intervals`` the 95% interval ``[low, high]`` of
    each world-model rate (Wilson; distinction under vafa2024: mean -/+ 1.96 s.e.)."""
    from .records import identity, metric, metric_interval, select, value

    recs = ctx.records
    rows = []
    for m in ctx.models:
        n = m.name
        row: dict[str, Any] = identity(m)
        intervals: dict[str, list[float | None]] = {}
        rank = _last_block(select(recs.get("rank", []), name=n))
        if rank:
            row.update(effective_rank=value(metric(rank[0], "effective_rank")), rank_layer=rank[0]["layer"])
        probe = _last_block(select(recs.get("probe", []), name=n))
        if probe:
            pm = probe[0]["metrics"]
            if "r2" in pm:
                row.update(probe_r2=pm["r2"], probe_mse=pm["mse"], probe_control_r2=pm.get("control_r2"))
            if "state_accuracy" in pm:
                row.update(state_accuracy=pm["state_accuracy"], state_chance=pm.get("state_chance"))
        for r in select(recs.get("transition", []), name=n):
            if r["variant"] == "post-hoc mlp":
                row.update(transition_err1=r["metrics"]["errors"][0], belief_ratio=r["metrics"]["belief_ratio"],
                           state_ratio=r["metrics"]["state_ratio"])
            elif r["variant"] == "own p_psi":
                row["own_err1"] = r["metrics"]["errors"][0]
        for r in select(recs.get("worldmodel", []), name=n, variant=None):
            mm = r["metrics"]  # taxi: every key; other worlds: compression and distinction only
            for key, src in WORLDMODEL_SUMMARY.items():
                if src in mm or ctx.is_taxi:
                    v, lo, hi = metric_interval(r, src)
                    row[key] = value(v)
                    if lo == lo and hi == hi:
                        intervals[key] = [lo, hi]
        for r in select(recs.get("mapping", []), name=n, variant="behaviour"):
            row["invented_edges"] = r["metrics"]["n_invented"]
        row["intervals"] = intervals
        rows.append(row)
    return rows


def _cells(row: dict[str, Any]) -> dict[str, Any]:
    """A summary row's values for ``tables.metric_rows``: rates with their interval."""
    out = {k: v for k, v in row.items() if k != "intervals"}
    for key, (lo, hi) in (row.get("intervals") or {}).items():
        out[key] = {"value": row.get(key), "low": lo, "high": hi, "n": None, "count": None}
    return out


def _column_title(row: dict[str, Any]) -> str:
    from .labels import objective_name

    return f"{row['name']} ({objective_name(row['objective'])})"


def _summary_headers(rows: list[dict[str, Any]], short: bool = False) -> dict[str, str]:
    """Row headers that name where a summary number was measured (the layer of the
    effective rank), beyond the label's words."""
    from .labels import label, layer_name

    layers = {r.get("rank_layer") for r in rows if r.get("rank_layer")}
    if len(layers) != 1:
        return {}
    lab = label("effective_rank")
    words = lab.short if short else lab.text
    return {"effective_rank": f"{words} ({layer_name(layers.pop())}) {lab.arrow}"}


def summary_text(rows: list[dict[str, Any]]) -> str:
    """The summary as a text table: metrics as rows (label, unit, direction), models as
    columns."""
    from .tables import metric_table_text

    return metric_table_text([(_column_title(r), _cells(r)) for r in rows], SUMMARY_KEYS,
                             headers=_summary_headers(rows, short=True))


def summary_html(rows: list[dict[str, Any]]) -> str:
    """The summary as an HTML table: metrics as rows, models as columns (titles in their
    objective's colour)."""
    from .plots.style import checkpoint_styles
    from .tables import metric_table_html

    styles = checkpoint_styles([r["name"] for r in rows], {r["name"]: r["objective"] for r in rows})
    return metric_table_html([(_column_title(r), _cells(r)) for r in rows], SUMMARY_KEYS,
                             colors=[styles[r["name"]]["color"] for r in rows], headers=_summary_headers(rows))


def _matched_loss(ctx: Context) -> dict[str, Any]:
    from .analysis.losses import matched_loss_comparison
    from .records import group_by

    traj = ctx.records.get("rank_training") or []
    return matched_loss_comparison(group_by(traj, "name")) if traj else {}


def _verdict_lines(rows: list[dict[str, Any]]) -> list[str]:
    """Plain statements of which model is better on every headline metric (no spin either
    way): each objective with exactly one run against the one GPT run (NextLat first, then
    MTP). Names, directions and formats come from the label registry (so the detour line
    names its setting); where both 95% intervals are known and overlap, the line says the
    difference is within them."""
    from .labels import label, objective_name

    gpt = [r for r in rows if r["objective"] == "gpt"]
    if len(gpt) != 1:
        return []
    g = gpt[0]
    challengers = [(obj, [r for r in rows if r["objective"] == obj]) for obj in ("nextlat", "mtp")]
    challengers = [(obj, rs[0]) for obj, rs in challengers if len(rs) == 1]
    out = []
    for obj, n in challengers:
        who = objective_name(obj)
        prefix = "" if len(challengers) == 1 else f"{who} vs GPT, "
        for key in VERDICT_KEYS:
            a, b = g.get(key), n.get(key)
            if a is None or b is None or a != a or b != b:
                continue
            lab = label(key)
            words = lab.header(unit=False)  # with its direction mark: ↑ higher is better, ↓ lower
            if abs(a - b) <= 1e-9 * max(1.0, abs(a)):
                out.append(f"{prefix}{words}: tie ({lab.format(a)})")
                continue
            better = who if (b - a) * (1 if lab.better == "higher" else -1) > 0 else "GPT"
            line = f"{prefix}{words}: {better} better (GPT {lab.format(a)}, {who} {lab.format(b)})"
            ia, ib = (g.get("intervals") or {}).get(key), (n.get("intervals") or {}).get(key)
            if ia and ib and None not in ia + ib and max(ia[0], ib[0]) <= min(ia[1], ib[1]):
                line += "; the 95% intervals overlap"
            out.append(line)
    return out


def _matched_line(mm: dict[str, Any]) -> str:
    return (f"At matched validation loss ({mm['target_val_loss']:.4f}): "
            + ", ".join(f"{n} effective rank {v['effective_rank']:.2f} (step {v['step']})" for n, v in mm["runs"].items()))


def _matched_worldmodel_line(recs: list[dict[str, Any]]) -> str:
    """The world-model metrics of the matched-loss checkpoints, one clause per model."""
    from .labels import label
    from .records import metric_value

    parts = []
    for r in recs:
        m = r["metrics"]
        bits = [f"{label(key).header(short=True, arrow=False)} {label(key).format(metric_value(r, key))}"
                for key in ("trajectory_valid", "compression", SUMMARY_DETOUR) if key in m]
        parts.append(f"{r['name']} (step {r['step']}, validation loss {r['val_loss']:.4f}): " + ", ".join(bits))
    return "World-model metrics at matched validation loss: " + "; ".join(parts)


def _protocol_details(records: list[dict[str, Any]]) -> str:
    """Every analysis's protocol and parameters, one line each, in a collapsed block."""
    from .tables import protocol_note

    by: dict[str, list[dict[str, Any]]] = {}
    for r in records:
        by.setdefault(r["analysis"], []).append(r)
    items = [protocol_note(rs) for rs in by.values()]
    items = [i for i in items if i]
    if not items:
        return ""
    return ("<details class='protocol'><summary>Protocols and parameters of every number</summary><ul>"
            + "".join(f"<li>{html.escape(i)}</li>" for i in items) + "</ul></details>")


def _intro_html(rows, matched: dict[str, Any], records: list[dict[str, Any]],
                matched_wm: list[dict[str, Any]] | None = None, n_seqs: int | None = None) -> str:
    from .tables import convergence_note

    steps = sorted({r["step"] for r in rows if r.get("step") is not None})
    at = f" at step {steps[0]}" if len(steps) == 1 else ""
    parts = ["<h2 id='summary'>Summary</h2>",
             "<p class='caption'>One run per objective" + at + " (not a seed average). Metrics are rows, models "
             "columns; ↑ higher is better, ↓ lower is better; brackets: 95% intervals (Wilson for rates; mean ± 1.96 "
             "s.e. over prefix pairs for distinction under protocol vafa2024)."
             + (f" Hidden-state metrics on {n_seqs} shared sequences (probe and post-hoc transition scored on the "
                f"last {held_out(n_seqs)}), world-model metrics on the report's own trips; every protocol is "
                "listed below." if n_seqs else "") + "</p>",
             summary_html(rows)]
    conv = convergence_note(rows)
    if conv:
        parts.append(f"<div class='note'>{html.escape(conv)}</div>")
    verdict = _verdict_lines(rows)
    if verdict:
        parts.append("<p class='caption'>Which is better, metric by metric, at equal training steps (↑ higher is "
                     "better, ↓ lower is better) — compare also at matched validation loss below.</p>"
                     "<ul class='verdict'>")
        parts += [f"<li>{html.escape(v)}</li>" for v in verdict]
        parts.append("</ul>")
    if matched.get("runs"):
        items = ", ".join(f"{html.escape(n)}: {v['effective_rank']:.2f} at step {v['step']} (validation loss "
                          f"{v['val_loss']:.4f})" for n, v in matched["runs"].items())
        parts.append(f"<div class='note'>Effective rank at matched validation loss (≤ {matched['target_val_loss']:.4f}): "
                     f"{items}.</div>")
    if matched_wm:
        parts.append(f"<div class='note'>{html.escape(_matched_worldmodel_line(matched_wm))}.</div>")
    parts.append(_protocol_details(records))
    return "\n".join(parts)


# --------------------------------------------------------------------------------------
# the loop
# --------------------------------------------------------------------------------------
def prepare(ckpts: list[Any], n_seqs: int, seed: int, device: str, horizon: int, fit_steps: int,
            progress: bool, **source: Any) -> Context:
    """Load every model, draw the shared sequences, and run each model's forward pass over
    them once for every hook any section reads (embeddings and every block)."""
    from .activations import layer_hook
    from .compare import Inputs

    inputs = Inputs.build(ckpts, n_seqs=n_seqs, seed=seed, device=device, progress=progress, **source)
    for i, m in enumerate(inputs.models):
        inputs.hidden(i, [layer_hook("embed"), *(layer_hook(b) for b in range(m.model_config.n_layers))])
    return Context(inputs.models, inputs, seed, device, horizon, fit_steps, progress)


def write_figures(folder: Path, figures: list[tuple[str, Any]]) -> list[Path]:
    """Paper figures as PDF and PNG (``figures``: (file stem, function making the figure))."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .plots import paper as P

    folder.mkdir(parents=True, exist_ok=True)
    written = []
    with P.paper_style():
        for stem, make in figures:
            fig = make()
            if fig is None:  # nothing to show (e.g. no metric beyond the Table-1 figure's)
                continue
            written += P.save_figure(fig, folder / stem, formats=("pdf", "png"))
            plt.close(fig)
    return written


#: what ``summary.json`` says it is (a folder holding one is a report folder)
REPORT_FORMAT = "nextlat_probe.report"
#: the files and folder a report writes into ``--out``
REPORT_FILES = ("report.html", "summary.json", "figures")


def _is_our_report(out: Path) -> bool:
    """Whether ``out`` holds a report written by this tool."""
    try:
        data = json.loads((out / "summary.json").read_text())
        if isinstance(data, dict) and (data.get("format") == REPORT_FORMAT
                                       or {"summary", "records", "params"} <= set(data)):  # before "format"
            return True
    except (OSError, ValueError):
        pass
    try:
        with open(out / "report.html", encoding="utf-8", errors="replace") as f:
            return "<title>nextlat_probe report" in f.read(1 << 16)
    except OSError:
        return False


def earlier_report(out: Path) -> list[str]:
    """The files of an earlier report in ``out`` (to be moved aside), [] for a missing or
    empty folder; ``UsageError`` for any other non-empty folder (nothing is written there)."""
    if not out.is_dir() or not any(out.iterdir()):
        return []
    if not _is_our_report(out):
        raise UsageError(f"--out {out}: not empty and holds no report of nextlat_probe.report; give a new or empty "
                         "folder (nothing was written)")
    return [n for n in REPORT_FILES if (out / n).exists()]


def run_report(
    ckpts: list[Any],
    out: str | Path,
    n_seqs: int = N_SEQS,
    seed: int = 0,
    device: str = "cpu",
    horizon: int = 8,
    fit_steps: int = FIT_STEPS,
    figures: bool = True,
    progress: bool = True,
    quiet: bool = False,
    **source: Any,
) -> dict[str, Any]:
    """Run every applicable section; write report.html, summary.json and figures/. Returns
    what summary.json holds: ``summary`` (one row per model), ``records`` (every record),
    ``rank_matched_loss``, the report's ``params`` and ``seconds``. ``source``: the
    ``sources.load_model`` options (``world``, ``config``, ``vocab``, ``hf``) for models this
    toolkit did not train. The defaults (``n_seqs``, its held-out third, ``fit_steps``) are
    the analysis CLIs' and runners' own, so a number here is the number they print."""
    from .checkpoint import atomic_write_bytes
    from .labels import objective_name
    from .plots.page import write_page
    from .progress import progress as bar
    from .records import to_jsonable
    from .tables import convergence_note, protocol_note

    t0 = time.time()
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {out}: exists and is not a folder")
    earlier_report(out)  # refused before any work
    ctx = prepare(ckpts, n_seqs, seed, device, horizon, fit_steps, progress, **source)
    sections = [s for s in SECTIONS if s.analysis not in TAXI_ONLY or ctx.is_taxi]
    pages, paper = [], []
    claimed: list[bool] = []

    def claim() -> None:
        """Make ``out`` ready, once, before the first file is written: an earlier report is
        moved aside (a failed run before this point leaves the folder as it was)."""
        if claimed:
            return
        claimed.append(True)
        earlier = earlier_report(out)
        if earlier:
            from .training.folder import move_aside

            moved = move_aside(out, earlier)
            if not quiet:
                print(f"moved the earlier report to {moved}", file=sys.stderr)
        out.mkdir(parents=True, exist_ok=True)

    # every stage of the work under one progress bar, the last ones too: the world model
    # again at matched loss and the paper figures take most of a minute on a CPU
    stages = [("section", s) for s in sections] + [("matched", None)] + ([("figures", None)] if figures else [])
    steps = bar(stages, desc="report", disable=not progress)
    for kind, s in steps:
        if hasattr(steps, "set_description"):
            steps.set_description("report: " + {"section": getattr(s, "title", ""),
                                                "matched": "world model at matched validation loss",
                                                "figures": "paper figures"}[kind])
        if kind == "matched":
            matched_wm = ctx.get("worldmodel_matched")
            continue
        if kind == "figures":
            claim()  # only now: a failed run leaves no empty folder
            write_figures(out / "figures", paper)
            continue
        recs = ctx.get(s.analysis)
        if not s.applies(ctx, recs):
            continue
        protocol = ""
        if isinstance(recs, list) and recs and all(isinstance(r, dict) and "protocol" in r for r in recs):
            protocol = protocol_note(recs)  # each section names the protocol its numbers follow (collapsed)
        caption = s.caption + (" " + s.note(ctx, recs) if s.note is not None else "")
        pages.append((s.title, caption.strip(), s.figure(ctx, recs), protocol))
        if s.paper is not None:
            for stem, make in s.paper_figures(ctx, recs):
                paper.append((stem, make))
    rows = summary_rows(ctx)
    matched = _matched_loss(ctx)
    records = [r for key, rs in ctx.records.items() if key not in ("training", "worldmodel_matched") for r in rs]
    protocol = protocol_note(records)
    summary = {"format": REPORT_FORMAT, "summary": rows, "records": records, "rank_matched_loss": matched, "worldmodel_matched_loss": matched_wm,
               "params": {"n_seqs": ctx.n_seqs, "seq_len": ctx.inputs.length, "seed": seed, "horizon": horizon,
                          "fit_steps": fit_steps, "n_test": ctx.n_test},
               "seconds": time.time() - t0}

    claim()
    title = "nextlat_probe report: " + " vs ".join(f"{m.name} ({objective_name(m.objective)})" for m in ctx.models)
    write_page(pages, out / "report.html", title=title,
               intro_html=_intro_html(rows, matched, records, matched_wm, ctx.n_seqs))
    atomic_write_bytes(json.dumps(to_jsonable(summary), indent=1).encode(), out / "summary.json")
    if not quiet:
        print(summary_text(rows))
        conv = convergence_note(rows)
        if conv:
            print(conv)
        if matched.get("runs"):
            print("\n" + _matched_line(matched))
        if matched_wm:
            print(_matched_worldmodel_line(matched_wm))
        lines = _verdict_lines(rows)
        if lines:
            print("\nOne run per objective, at equal training steps (not a seed average; ↑ higher is better, "
                  "↓ lower is better):")
            for line in lines:
                print("  - " + line)
        if protocol:
            print("\nProtocols: " + protocol)
    return summary


#: fewest shared sequences the report runs on: the probe holds out n_seqs // 3 and
#: cross-validates its ridge strength over 5 folds of whole training sequences (7 - 2 = 5)
MIN_N_SEQS = 7


def build_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(prog="python -m nextlat_probe.report",
                                description="Run every analysis on checkpoints and write an offline HTML report, "
                                "summary.json and paper figures.")
    add_model_args(p)
    p.add_argument("--out", type=Path, required=True,
                   help="output folder: new, empty, or holding an earlier report (moved into OUT/.replaced-<time>/)")
    p.add_argument("--n-seqs", type=int, default=N_SEQS,
                   help=f"shared sequences for every analysis, the last third held out (default {N_SEQS}, as in the "
                        "analysis CLIs)")
    p.add_argument("--horizon", type=int, default=8, help="transition roll-out horizon")
    p.add_argument("--fit-steps", type=int, default=FIT_STEPS,
                   help=f"optimiser steps of post-hoc dynamics fits (default {FIT_STEPS}, as in the transition CLI)")
    p.add_argument("--seed", type=int, default=0, help="seed of the sequences and every random choice")
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or auto (CUDA when available)")
    p.add_argument("--no-figures", action="store_true", help="skip the matplotlib paper figures")
    p.add_argument("--no-progress", action="store_true", help="no progress output on stderr")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.n_seqs < MIN_N_SEQS:
        raise UsageError(f"--n-seqs must be at least {MIN_N_SEQS} (the probe's cross-validation), got {args.n_seqs}")
    check_positive(horizon=args.horizon, fit_steps=args.fit_steps)
    if args.out.exists() and not args.out.is_dir():
        raise UsageError(f"--out {args.out}: exists and is not a folder")
    device = resolve_device_arg(args.device)
    run_report(args.ckpts, args.out, n_seqs=args.n_seqs, seed=args.seed, device=device, horizon=args.horizon,
               fit_steps=args.fit_steps, figures=not args.no_figures, progress=not args.no_progress,
               **source_options(args))
    wrote = [str(args.out / "report.html"), str(args.out / "summary.json")]
    if not args.no_figures:
        wrote.append(f"{args.out / 'figures'}/")
    print(f"\nwrote {', '.join(wrote)}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    run_main(main)
