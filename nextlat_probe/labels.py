"""What a person reads for each metric: the one place a key becomes words.

Every metric key a record, a summary row or a training log carries (``trajectory_valid``,
``detour_random@0.75``, ``gap_to_floor`` ...) has a ``Label``: its name in words, its unit,
which direction is better and its number format. Tables, figures, the report, the CLIs and
the verdict lines all read it, so no raw key reaches a person::

    from nextlat_probe.labels import label
    lab = label("detour_random@0.75")
    lab.text          # 'detour robustness (random detours, p = 0.75)'
    lab.header()      # 'detour robustness (random detours, p = 0.75) ↑'
    lab.format(0.46)  # '0.460'
    label("gap_to_floor").axis()   # 'gap to the exact floor (nats/token) ↓'

Keys follow the record shape (``nextlat_probe.records``) and its patterns: a detour
setting ``detour_{kind}@{p}`` (``..._legal`` for the legal rate), an out-of-distribution
column ``{key}@ood:{setting}``, one horizon of a list metric ``errors[i]``, the interval and
pair count of a per-pair mean (``{key}_ci``, ``{key}_n_pairs``). An unknown key is a
``KeyError``: a new metric is added here, once, before any table or figure can show it.

Only the standard library here: every layer may import it.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass, replace
from typing import Any

#: the arrows printed after a header: which direction is better
ARROWS = {"higher": "↑", "lower": "↓"}


@dataclass(frozen=True)
class Label:
    """How one metric is shown.

    ``text``: the name in words; ``unit``: e.g. ``nats/token`` ("" for fractions and
    counts); ``better``: ``"higher"``, ``"lower"`` or ``""`` (neither: a count, a setting);
    ``fmt``: the number format of every cell of this metric; ``short``: a narrow header for
    text tables (default ``text``); ``why``: what "better" means where it is not obvious."""

    key: str
    text: str
    unit: str = ""
    better: str = ""
    fmt: str = ".3f"
    short: str = ""
    why: str = ""

    @property
    def arrow(self) -> str:
        """``↑`` (higher is better), ``↓`` (lower is better) or ``""``."""
        return ARROWS.get(self.better, "")

    def direction(self) -> str:
        """``lower is better: more compact`` ("" when neither direction is better)."""
        if not self.better:
            return ""
        return f"{self.better} is better" + (f": {self.why}" if self.why else "")

    def header(self, short: bool = False, unit: bool = True, arrow: bool = True) -> str:
        """A column or row header: ``text (unit) ↑``."""
        words = (self.short or self.text) if short else self.text
        if unit and self.unit:
            words += f" ({self.unit})"
        return f"{words} {self.arrow}" if arrow and self.arrow else words

    def axis(self) -> str:
        """An axis title: the header with its unit and direction."""
        return self.header()

    def format(self, v: Any) -> str:
        """One number in this metric's format (a rate by its value; ``-`` when missing)."""
        if isinstance(v, dict) and "value" in v:
            v = v["value"]
        if v is None or isinstance(v, bool):
            return "-" if v is None else str(v)
        try:
            f = float(v)
        except (TypeError, ValueError):
            return str(v)
        if math.isnan(f):
            return "n/a"
        if self.fmt.endswith("d"):
            return format(int(round(f)), self.fmt) if math.isfinite(f) else str(f)
        return format(f, self.fmt)


def _L(key: str, text: str, unit: str = "", better: str = "", fmt: str = ".3f", short: str = "", why: str = "") -> Label:
    return Label(key, text, unit, better, fmt, short, why)


_NATS = "nats/token"
_HI, _LO = "higher", "lower"

#: every fixed key; patterns (detour settings, out-of-distribution columns, list elements)
#: are built by ``label``
LABELS: dict[str, Label] = {lab.key: lab for lab in [
    # identity and training state
    _L("name", "model", fmt=""),
    _L("objective", "objective", fmt=""),
    _L("step", "training step", fmt="d", short="step"),
    _L("seed", "seed", fmt="d"),
    _L("source", "source", fmt=""),
    _L("intervals", "95% intervals", fmt=""),
    _L("horizon", "roll-out horizon d", fmt="d", short="d"),
    _L("layer", "layer", fmt=""),
    _L("variant", "variant", fmt=""),
    _L("val_loss", "validation loss", _NATS, _LO, ".4f", "val loss"),
    _L("val_floor", "exact floor", _NATS, "", ".4f", "floor",
       "the cross-entropy of the world's exact predictive distribution on the same tokens"),
    _L("gap_to_floor", "gap to the exact floor", _NATS, _LO, ".4f", "gap to floor",
       "closer to the best any model can do"),
    # training log (metrics.jsonl)
    _L("loss", "training loss", _NATS, _LO, ".4f"),
    _L("ce", "train cross-entropy", _NATS, _LO, ".4f", "train CE"),
    _L("next_h", "train next-latent prediction loss", "", _LO, ".3g", "train latent loss"),
    _L("kl", "train KL", _NATS, _LO, ".3g"),
    _L("mtp", "train MTP extra-head cross-entropy", _NATS, _LO, ".4f", "train MTP CE"),
    _L("lr", "learning rate", fmt=".2e"),
    _L("grad_norm", "gradient norm", fmt=".3g"),
    _L("tokens_per_s", "tokens per second", "tokens/s", _HI, ".0f"),
    # rank
    _L("effective_rank", "effective rank", "", _LO, ".2f", "eff. rank", "more compact"),
    _L("participation_ratio", "participation ratio", "", _LO, ".2f", "PR", "more compact"),
    _L("n90", "components for 90% of the variance", "", _LO, "d", "dims 90%", "more compact"),
    _L("n99", "components for 99% of the variance", "", _LO, "d", "dims 99%", "more compact"),
    _L("d_model", "model width", fmt="d", short="width"),
    _L("n_samples", "hidden states", fmt="d", short="states"),
    _L("spectrum", "singular value", fmt=".3g"),
    # probe
    _L("r2", "belief probe R²", "", _HI, ".3f", "R²", "belief more linearly decodable"),
    _L("mse", "belief probe MSE", "", _LO, ".3g", "MSE"),
    _L("control_r2", "shuffled-belief control R²", "", "", ".3f", "shuffled R²",
       "what a probe reaches without a real correspondence"),
    _L("control_mse", "shuffled-belief control MSE", "", "", ".3g", "shuffled MSE"),
    _L("control_kl", "shuffled-belief control KL", "nats", "", ".3f", "shuffled KL"),
    _L("embedding_baseline_r2", "embedding-layer R²", "", "", ".3f", "embed R²"),
    _L("r2_per_position", "belief probe R² per position", "", _HI, ".3f"),
    _L("state_accuracy", "hidden-state probe accuracy", "", _HI, ".3f", "state acc."),
    _L("state_chance", "hidden-state chance accuracy", "", "", ".3f", "chance"),
    _L("n_classes", "hidden states (classes)", fmt="d"),
    _L("n_states", "belief dimensions", fmt="d"),
    _L("xy_r2", "(x, y) probe R²", "", _HI, ".3f", "(x, y) R²"),
    _L("alpha", "ridge strength", fmt=".3g"),
    _L("n_train", "fitting sequences", fmt="d"),
    _L("n_test", "held-out sequences", fmt="d"),
    _L("d_in", "probe input width", fmt="d"),
    _L("fit_rows", "fitted rows", fmt="d"),
    _L("score_rows", "scored rows", fmt="d"),
    _L("n_rows", "rows", fmt="d"),
    # transition
    _L("horizons", "horizon i", fmt="d"),
    _L("errors", "relative transition error", "", _LO, ".4f", "transition error",
       "hidden states follow a fixed transition rule"),
    _L("belief_ratio", "within-belief variance share", "", _LO, ".4f", "within-belief var",
       "the hidden state is a function of the belief"),
    _L("state_ratio", "within-(state, position) variance share", "", _LO, ".4f", "within-(state,pos) var"),
    # world model (taxi; Vafa et al.)
    _L("next_token", "next-token validity", "", _HI, ".3f", "next-token"),
    _L("trajectory_legal", "legal trajectories (every turn legal)", "", _HI, ".3f", "legal traj."),
    _L("trajectory_valid", "valid trajectories (legal, ends at the destination)", "", _HI, ".3f", "valid traj."),
    _L("compression", "sequence compression", "", _HI, ".3f", "compression"),
    _L("compression_continuations", "compression per continuation", "", _HI, ".3f", "compression (per cont.)"),
    _L("distinction_precision", "distinction precision", "", _HI, ".3f", "dist. precision"),
    _L("distinction_recall", "distinction recall", "", _HI, ".3f", "dist. recall"),
    _L("compression_skipped", "compression pairs skipped", fmt="d"),
    _L("distinction_pairs", "distinction pairs", fmt="d"),
    _L("distinction_skipped", "distinction pairs skipped", fmt="d"),
    _L("distinction_recall_context_skipped", "distinction pairs skipped (context)", fmt="d"),
    # mapping
    _L("explained", "trips explained by the rebuilt map", "", _HI, ".3f", "explained"),
    _L("edge_recall", "street recall", "", _HI, ".3f", "edge recall"),
    _L("edge_precision", "street precision", "", _HI, ".3f", "edge precision"),
    _L("trips_used", "trips used", "", _HI, ".3f"),
    _L("n_trips", "trips", fmt="d"),
    _L("n_malformed", "malformed trips", fmt="d"),
    _L("n_ill_formed", "ill-formed trips", fmt="d"),
    _L("n_no_turns", "trips without turns", fmt="d"),
    _L("n_true_valid", "trips valid on the true map", fmt="d"),
    _L("n_true_edges", "true street edges", fmt="d"),
    _L("n_recovered", "recovered edges", fmt="d", short="recovered"),
    _L("n_invented", "invented edges", "", _LO, "d", "invented", "fewer streets that do not exist"),
    _L("n_missed", "missed edges", "", _LO, "d", "missed"),
    _L("n_followed", "trips followed", fmt="d"),
    _L("n_repaired", "trips repaired", fmt="d"),
    _L("n_failed", "trips failed", fmt="d"),
    _L("disparity", "Procrustes disparity", "", _LO, ".3f", "disparity"),
    _L("nn_map_neighbour", "nearest neighbour is a map neighbour", "", _HI, ".3f", "NN map neighbour"),
    _L("nn_true_nearest", "nearest neighbour is the true nearest", "", _HI, ".3f", "NN true nearest"),
    _L("n_nodes_seen", "intersections seen", fmt="d"),
    _L("nodes", "intersections", fmt=""),
    _L("coords", "embedded coordinates", fmt=""),
    _L("missed_edges", "missed edges", fmt=""),
    _L("recovered_edges", "recovered edges", fmt=""),
    _L("reference", "reference", fmt=""),
    _L("note", "note", fmt=""),
    _L("notes", "notes", fmt=""),
    _L("n_pairs", "trips (origin, destination pairs)", fmt="d"),
    # per-position loss
    _L("positions", "position", fmt="d"),
    _L("floor", "exact floor", _NATS, "", ".4f"),
    _L("count", "targets scored", fmt="d"),
    _L("mean_loss", "mean loss per position", _NATS, _LO, ".4f"),
    _L("mean_floor", "mean exact floor per position", _NATS, "", ".4f"),
    # self-speculative decoding
    _L("identical_to_greedy", "identical to greedy", fmt=""),
    _L("n_identical", "identical generations", fmt="d"),
    _L("n_prompts", "prompts", fmt="d"),
    _L("tokens_generated", "tokens generated", fmt="d"),
    _L("mean_accepted", "drafted tokens accepted per verification", "", _HI, ".2f", "accepted"),
    _L("mean_drafted", "tokens drafted per verification", "", "", ".2f", "drafted"),
    _L("draft_acceptance", "draft acceptance", "", _HI, ".3f"),
    _L("accepted_histogram", "verifications", fmt="d"),
    _L("verifications", "verifications", fmt="d"),
    _L("forwards", "transformer forwards", fmt="d"),
    _L("tokens_per_forward", "tokens per forward", "", _HI, ".2f", "tokens/forward"),
    _L("forwards_per_token", "forwards per token", "", _LO, ".3f", "forwards/token"),
    _L("draft_calls", "draft calls", fmt="d"),
    _L("seconds_greedy", "greedy wall-clock", "s", _LO, ".2f", "greedy s"),
    _L("seconds_speculative", "speculative wall-clock", "s", _LO, ".2f", "speculative s"),
    _L("speedup", "wall-clock speed-up over greedy", "×", _HI, ".2f", "speed-up"),
    # task evaluation (A5, path-star)
    _L("length", "sequence length", fmt="d"),
    _L("beyond_training", "beyond the training length", fmt=""),
    _L("per_position", "accuracy per position", "", _HI, ".3f"),
    _L("token_accuracy", "token accuracy", "", _HI, ".3f"),
    _L("sequence_accuracy", "whole-sequence accuracy", "", _HI, ".3f"),
    _L("exact_path", "exact path", "", _HI, ".3f"),
    _L("first_step", "first step", "", _HI, ".3f"),
    _L("valid_path", "valid path to a leaf", "", "", ".3f", why="high with a low exact path is the Clever-Hans signature"),
    # the report's summary rows (one per model; ``report.summary_rows``)
    _L("rank_layer", "layer of the effective rank", fmt=""),
    _L("probe_r2", "belief probe R² (last block, held out)", "", _HI, ".3f", "belief R²",
       "belief more linearly decodable"),
    _L("probe_mse", "belief probe MSE (last block)", "", _LO, ".3g", "belief MSE"),
    _L("probe_control_r2", "shuffled-belief control R² (last block)", "", "", ".3f", "shuffled R²"),
    _L("transition_err1", "post-hoc transition error at horizon 1", "", _LO, ".4f", "transition err@1",
       "more consistent dynamics"),
    _L("own_err1", "own p_ψ transition error at horizon 1", "", _LO, ".4f", "own p_ψ err@1"),
    _L("valid_trajectory", "valid trajectories (legal, ends at the destination)", "", _HI, ".3f", "valid traj."),
    _L("legal_trajectory", "legal trajectories (every turn legal)", "", _HI, ".3f", "legal traj."),
    _L("invented_edges", "invented edges (rebuilt from behaviour)", "", _LO, "d", "invented edges",
       "fewer streets that do not exist"),
]}

#: analysis-specific meanings of a key shared by several analyses
ANALYSIS_LABELS: dict[tuple[str, str], Label] = {
    ("probe", "kl"): _L("kl", "belief KL(exact ‖ probed), mean per position", "nats", _LO, ".3f", "belief KL",
                         "the probed belief, clipped onto the simplex, is closer to the exact one"),
    ("mapping", "r2"): _L("r2", "embedding R² (true coordinates)", "", _HI, ".3f", "R²"),
    ("position_loss", "loss"): _L("loss", "cross-entropy per position", _NATS, _LO, ".4f"),
}

#: what a suffix adds to a metric's key (``distinction_recall_ci``, ``belief_ratio_n_groups``),
#: longest first: (suffix, words around the metric's own, format; None = the metric's)
SUFFIXES = [
    ("_share_rows_per_position", "share of rows in groups of two or more per position, {}", ".3f"),
    ("_with_singletons", "{}, single-row groups counted", None),
    ("_share_rows", "share of rows in groups of two or more, {}", ".3f"),
    ("_n_groups", "groups behind the {}", "d"),
    ("_n_pairs", "pairs scored for {}", "d"),
    ("_n_rows", "rows behind the {}", "d"),
    ("_note", "note on the {}", ""),
    ("_ci", "95% interval of {}", None),
]
#: ``detour_{kind}@{p}``, optionally ``_legal``
_DETOUR = re.compile(r"detour_(?P<kind>[a-z_]+)@(?P<p>[0-9.eE+-]+)(?P<legal>_legal)?")
#: the report's summary-row key for the detour setting it shows
SUMMARY_DETOUR = "detour_random@0.75"


def detour_setting(key: str) -> tuple[str, str] | None:
    """``("random", "0.75")`` of ``detour_random@0.75`` (or its ``_legal`` rate); None
    for other keys."""
    m = _DETOUR.fullmatch(key)
    return None if m is None else (m.group("kind"), m.group("p"))


def label(key: str, analysis: str | None = None) -> Label:
    """The ``Label`` of metric ``key`` (for ``analysis`` where a key means different things
    in different analyses). ``KeyError`` for a key no one has described."""
    if analysis is not None and (analysis, key) in ANALYSIS_LABELS:
        return ANALYSIS_LABELS[(analysis, key)]
    if "@ood:" in key:
        base, setting = key.split("@ood:", 1)
        lab = label(base, analysis)
        return replace(lab, key=key, text=f"{lab.text} (out of distribution: {setting})",
                       short=f"{lab.short or lab.text} (ood {setting})")
    if key == "detour":  # the report's summary row: the paper's setting
        return replace(label(SUMMARY_DETOUR), key=key)
    m = _DETOUR.fullmatch(key)
    if m:
        kind, p = m.group("kind").replace("_", "-"), m.group("p")
        if m.group("legal"):
            return _L(key, f"detour: every turn legal ({kind} detours, p = {p})", "", _HI, ".3f",
                      f"detour legal ({kind}, p={p})")
        return _L(key, f"detour robustness ({kind} detours, p = {p})", "", _HI, ".3f", f"detour ({kind}, p={p})",
                  "valid trajectories after forced detours")
    m = re.fullmatch(r"(?P<base>\w+)\[(?P<i>\d+)\]", key)
    if m and m.group("base") == "errors":
        i = int(m.group("i")) + 1
        base = label("errors", analysis)
        return replace(base, key=key, text=f"{base.text} at horizon {i}", short=f"err@{i}")
    for suffix, words, fmt in SUFFIXES:
        if key.endswith(suffix) and key[: -len(suffix)] in LABELS:
            base = LABELS[key[: -len(suffix)]]
            return _L(key, words.format(base.text), fmt=base.fmt if fmt is None else fmt)
    if key.startswith("params."):
        name = key[len("params."):]
        return LABELS[name] if name in LABELS else _L(key, name.replace("_", " "), fmt="")
    try:
        return LABELS[key]
    except KeyError:
        raise KeyError(f"no label for metric {key!r}: describe it in nextlat_probe.labels.LABELS") from None


def has_label(key: str, analysis: str | None = None) -> bool:
    try:
        label(key, analysis)
    except KeyError:
        return False
    return True


def header(key: str, analysis: str | None = None, short: bool = False) -> str:
    """``label(key, analysis).header(short)``."""
    return label(key, analysis).header(short=short)


def column(key: str, analysis: str | None = None, short: bool = True) -> tuple[str, str, str]:
    """A ``tables`` column ``(key, header, format)`` of metric ``key``: header and format
    from its label (short headers by default: text tables are narrow)."""
    lab = label(key, analysis)
    return key, lab.header(short=short), lab.fmt


def columns(keys: list[str], analysis: str | None = None, short: bool = True) -> list[tuple[str, str, str]]:
    """``column`` of each key."""
    return [column(k, analysis, short) for k in keys]


#: how objectives are named to a person
OBJECTIVE_NAMES = {"gpt": "GPT", "nextlat": "NextLat", "mtp": "MTP", "jtp": "JTP", "external": "external"}


def objective_name(objective: str | None) -> str:
    """``NextLat`` for ``nextlat`` (unknown objectives as they are)."""
    return OBJECTIVE_NAMES.get(str(objective).lower(), str(objective)) if objective else "?"


#: how hidden-state sites are named in titles and headers (``--layers`` keeps the short names)
LAYER_NAMES = {"embed": "embeddings", "ln_final": "final LayerNorm", "final": "final LayerNorm",
               "concat": "all blocks (concatenated)"}


def layer_name(layer: Any) -> str:
    """``block 1`` for ``L1``; ``embeddings``, ``final LayerNorm``, ``all blocks``."""
    s = "" if layer is None else str(layer)
    m = re.fullmatch(r"L(\d+)", s)
    return f"block {m.group(1)}" if m else LAYER_NAMES.get(s, s)


#: how variants of an analysis are named (transition dynamics, mapping reconstructions)
VARIANT_NAMES = {"own p_psi": "own p_ψ", "post-hoc mlp": "post-hoc MLP", "post-hoc linear": "post-hoc linear",
                 "behaviour": "behaviour", "probe": "linear probe", "mds": "MDS", "matched_loss": "at matched loss",
                 "p_psi rollout": "p_ψ roll-out"}


def variant_name(variant: Any) -> str:
    return VARIANT_NAMES.get(str(variant), str(variant)) if variant is not None else ""


__all__ = ["Label", "LABELS", "ANALYSIS_LABELS", "ARROWS", "SUMMARY_DETOUR", "label", "has_label", "header", "column",
           "columns", "detour_setting", "OBJECTIVE_NAMES", "objective_name", "LAYER_NAMES", "layer_name",
           "VARIANT_NAMES", "variant_name"]
