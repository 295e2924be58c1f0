"""The label registry: every key a person sees becomes words with a unit, a direction and a
format, and no figure, table or report line shows a raw metric key."""
import math

import pytest
from helpers import html_headers, metric_keys, mpl_texts, plotly_texts, raw_keys
from test_plots import (
    MODELS,
    ident,
    mapping_records,
    metrics_lines,
    position_records,
    probe_records,
    rank_records,
    taxi_map,
    taxi_probe_records,
    transition_records,
    worldmodel_records,
)

from nextlat_probe.labels import label, layer_name, objective_name
from nextlat_probe.plots import interactive as I
from nextlat_probe.plots import paper as P
from nextlat_probe.records import make_record, rate


def test_labels_have_words_units_directions_and_formats():
    lab = label("gap_to_floor")
    assert (lab.text, lab.unit, lab.better, lab.fmt) == ("gap to the exact floor", "nats/token", "lower", ".4f")
    assert lab.header() == "gap to the exact floor (nats/token) ↓" and lab.format(0.031234) == "0.0312"
    assert label("trajectory_valid").header() == "valid trajectories (legal, ends at the destination) ↑"
    # patterns: detour settings, out-of-distribution columns, list elements, per-pair intervals
    assert label("detour_random@0.75").header() == "detour robustness (random detours, p = 0.75) ↑"
    assert label("detour_least_likely@0.01_legal").text == "detour: every turn legal (least-likely detours, p = 0.01)"
    assert label("compression@ood:walk=random").text == "sequence compression (out of distribution: walk=random)"
    assert label("errors[3]").header(short=True) == "err@4 ↓"
    assert label("distinction_recall_ci").text == "95% interval of distinction recall"
    # the report's summary key "detour" is the paper's setting, named
    assert label("detour").text == label("detour_random@0.75").text
    # one key, two meanings: the analysis decides
    assert label("kl", "probe").unit == "nats" and label("kl").text == "train KL"
    assert label("n_invented").format(59.0) == "59" and label("effective_rank").format(float("nan")) == "n/a"
    with pytest.raises(KeyError, match="no label for metric 'made_up_metric'"):
        label("made_up_metric")
    assert (layer_name("L3"), layer_name("ln_final"), layer_name("embed")) == ("block 3", "final LayerNorm", "embeddings")
    assert objective_name("nextlat") == "NextLat"


def test_every_metric_of_the_hand_made_records_has_a_label():
    m = taxi_map()
    recs = (rank_records() + probe_records() + transition_records() + position_records() + worldmodel_records()
            + mapping_records(m)[0] + taxi_probe_records(m))
    missing = sorted({(r["analysis"], k) for r in recs for k in r["metrics"]
                      if k != "points" and not _has(k, r["analysis"])})
    assert not missing, missing


def _has(key, analysis):
    try:
        label(key, analysis)
    except KeyError:
        return False
    return True


def _worldmodel_with_everything():
    """World-model records carrying every kind of key the figures show: rates, a detour
    setting and its legal rate, per-pair distinction means with their intervals."""
    out = []
    for k, (name, obj) in enumerate(MODELS):
        out.append(make_record(ident(name, obj), "worldmodel", {
            "next_token": rate(99, 100), "trajectory_legal": rate(90 - k, 100), "trajectory_valid": rate(85 + k, 100),
            "compression": rate(40 + 10 * k, 100), "compression_continuations": rate(80, 100),
            "distinction_precision": 0.9, "distinction_precision_ci": [0.85, 0.95], "distinction_precision_n_pairs": 50,
            "distinction_recall": 0.3 + 0.1 * k, "distinction_recall_ci": [0.25, 0.45], "distinction_recall_n_pairs": 50,
            "detour_random@0.75": rate(55 - 9 * k, 100), "detour_random@0.75_legal": rate(70, 100),
            "detour_random@0.01": rate(80, 100), "detour_random@0.01_legal": rate(90, 100)},
            {"n_pairs": 100}, protocol={"name": "vafa2024"}))
    return out


def _all_figures():
    """Every interactive and paper figure, drawn from hand-made records."""
    import json

    m = taxi_map()
    maps = mapping_records(m)[0]
    runs = {"gpt-0": [json.loads(x) for x in metrics_lines("gpt", 2.0)],
            "nextlat-0": [json.loads(x) for x in metrics_lines("nextlat", 1.0)]}
    wm = _worldmodel_with_everything() + [r for r in rank_records() if r["step"] == 400]
    plotly = {
        "rank": I.rank_figure(rank_records()), "rank_training": I.rank_training_figure(rank_records()),
        "beliefs": I.belief_figure(probe_records()), "beliefs_taxi": I.belief_figure(taxi_probe_records(m), true_map=m),
        "probe_r2": I.probe_r2_figure(probe_records()), "transition": I.transition_figure(transition_records()),
        "training": I.training_curves_figure(runs), "position": I.position_loss_figure(position_records()),
        "worldmodel": I.worldmodel_table_figure(wm), "maps": I.map_figure(m, maps),
    }
    paper = {
        "rank": P.rank_plot(rank_records()), "rank_training": P.rank_training_plot(rank_records()),
        "beliefs": P.belief_plot(probe_records()), "beliefs_taxi": P.belief_plot(taxi_probe_records(m), true_map=m),
        "probe_r2": P.probe_r2_plot(probe_records()), "transition": P.transition_plot(transition_records()),
        "training": P.training_curves_plot(runs), "position": P.position_loss_plot(position_records()),
        "table1": P.table1_plot(wm), "appendix": P.worldmodel_plot(wm), "maps": P.map_plot(m, maps),
    }
    return plotly, paper, wm


def test_no_figure_shows_a_raw_metric_key():
    plotly, paper, wm = _all_figures()
    keys = metric_keys(rank_records() + probe_records() + transition_records() + position_records() + wm)
    bad = {}
    for backend, figures, read in (("plotly", plotly, plotly_texts), ("paper", paper, mpl_texts)):
        for name, fig in figures.items():
            texts = read(fig)
            assert texts, name
            hits = {t: raw_keys(t, keys) for t in texts if raw_keys(t, keys)}
            if hits:
                bad[f"{backend} {name}"] = hits
    assert not bad, bad
    # the check can fail: a raw key in a title is found
    assert raw_keys("trajectory_valid per model", keys) == ["trajectory_valid"]
    assert raw_keys("detour robustness (random detours, p = 0.75) ↑", keys) == []


def test_the_table1_figure_shows_the_headline_metrics_with_directions_and_intervals():
    _, paper, wm = _all_figures()
    fig = paper["table1"]
    rates, rank, gap = fig.axes
    rows = [t.get_text().replace("\n", " ") for t in rates.get_yticklabels()]
    assert rows == ["next-token validity ↑", "valid trajectories (legal, ends at the destination) ↑",
                    "sequence compression ↑", "distinction precision ↑", "distinction recall ↑",
                    "detour robustness (random detours, p = 0.75) ↑"]
    assert rates.get_xlim() == pytest.approx((-0.02, 1.02))  # one shared [0, 1] axis for every rate
    # distinction under vafa2024: the per-pair mean with its stated interval, as a bar
    bars = [ln for ln in rates.get_lines() if len(ln.get_xdata()) == 2]
    assert any(list(b.get_xdata()) == [0.25, 0.45] for b in bars)
    assert rank.get_title().replace("\n", " ").endswith("↓") and gap.get_title().replace("\n", " ").endswith("↓")
    note = fig.get_supxlabel().replace("\n", " ")
    assert "95% intervals" in note and "Wilson" in note and "↑ higher is better" in note
    # the appendix holds every other metric, none of the headline ones
    appendix = [t.get_text().replace("\n", " ") for t in paper["appendix"].axes[0].get_yticklabels()]
    assert appendix == ["legal trajectories (every turn legal) ↑", "compression per continuation ↑",
                        "detour: every turn legal (random detours, p = 0.75) ↑",
                        "detour robustness (random detours, p = 0.01) ↑",
                        "detour: every turn legal (random detours, p = 0.01) ↑"]


def test_one_palette_colour_per_objective_in_every_figure():
    """GPT is the same blue and NextLat the same vermillion in every paper figure."""
    from matplotlib.colors import to_hex

    from nextlat_probe.plots.style import MODEL_COLORS

    _, paper, _ = _all_figures()
    for name in ("rank", "rank_training", "probe_r2", "transition", "table1", "appendix"):
        colours = {to_hex(ln.get_color()).upper() for ax in paper[name].axes for ln in ax.get_lines()
                   if ln.get_label() and "gpt-0" in str(ln.get_label())}
        colours |= {to_hex(h.get_color()).upper() for h in paper[name].legends[0].legend_handles
                    if "gpt-0" in h.get_label()} if paper[name].legends else set()
        assert colours <= {MODEL_COLORS["gpt"].upper()}, (name, colours)


def test_cli_tables_show_labels_units_and_directions():
    from nextlat_probe.probe import COLUMNS as PROBE
    from nextlat_probe.rank import COLUMNS as RANK
    from nextlat_probe.transition import table_columns
    from nextlat_probe.worldmodel import table

    keys = metric_keys(probe_records() + rank_records() + transition_records())
    for cols in (RANK, PROBE, table_columns(8)):
        for key, head, _ in cols:
            assert not raw_keys(head, keys), head
            lab = label(key, "probe" if cols is PROBE else None)
            if lab.better:
                assert head.endswith(lab.arrow), head  # every metric column says which way is better
            if lab.unit:
                assert f"({lab.unit})" in head, head
    assert dict((k, h) for k, h, _ in PROBE)["kl"] == "belief KL (nats) ↓"
    text = table(_worldmodel_with_everything() + [r for r in rank_records() if r["step"] == 400])
    body = text.split("\n↑ higher is better")[0].splitlines()[2:]  # the table's rows (protocol lines follow)
    first_column = [line.split("  ")[0] for line in body]
    assert len(first_column) >= 12
    assert not [t for t in first_column if raw_keys(t, keys | {"trajectory_valid", "detour_random@0.75"})]
    assert "detour robustness (random detours, p = 0.75) ↑" in text and "0.550 [" in text  # fractions, as the report


def _summary_rows():
    g = {**ident("gpt-seed0", "gpt", 2000, 0.8625, 0.8320), "effective_rank": 30.2, "probe_r2": 0.22,
         "valid_trajectory": 0.9, "compression": 0.4, "distinction_precision": 0.9, "distinction_recall": 0.3,
         "detour": 0.55, "next_token": 0.999, "invented_edges": 59,
         "intervals": {"valid_trajectory": [0.85, 0.94], "detour": [0.48, 0.62], "compression": [0.3, 0.5]}}
    n = {**ident("nextlat-seed0", "nextlat", 2000, 0.8633, 0.8320), "effective_rank": 28.0, "probe_r2": 0.25,
         "valid_trajectory": 0.92, "compression": 0.65, "distinction_precision": 0.91, "distinction_recall": 0.35,
         "detour": 0.46, "next_token": 0.994, "invented_edges": 61,
         "intervals": {"valid_trajectory": [0.87, 0.95], "detour": [0.36, 0.47], "compression": [0.55, 0.74]}}
    return [g, n]


def test_report_summary_is_transposed_and_its_verdicts_cover_every_headline_metric():
    from nextlat_probe.report import VERDICT_KEYS, _verdict_lines, summary_html, summary_text

    rows = _summary_rows()
    page = summary_html(rows)
    heads = html_headers(page)
    assert heads[:3] == ["metric", "gpt-seed0 (GPT)", "nextlat-seed0 (NextLat)"]  # models as columns
    assert "detour robustness (random detours, p = 0.75) ↑" in heads and "distinction recall ↑" in heads
    assert not [h for h in heads if raw_keys(h, metric_keys(rows))]
    assert "0.550 [0.480, 0.620]" in page and ">59<" in page and ">61<" in page
    text = summary_text(rows)
    assert max(len(line) for line in text.splitlines()) < 120  # no sideways scroll in a terminal either
    lines = _verdict_lines(rows)
    shown = [k for k in VERDICT_KEYS if rows[0].get(k) is not None and not math.isnan(rows[0][k])]
    assert len(lines) == len(shown)
    detour = [ln for ln in lines if ln.startswith("detour")][0]
    # GPT is better on detour here, and the line says so, naming the setting
    assert detour == "detour robustness (random detours, p = 0.75) ↑: GPT better (GPT 0.550, NextLat 0.460)"
    comp = [ln for ln in lines if ln.startswith("sequence compression")][0]
    assert comp.endswith("NextLat better (GPT 0.400, NextLat 0.650)")
    valid = [ln for ln in lines if ln.startswith("valid trajectories")][0]
    assert valid.endswith("; the 95% intervals overlap")
    assert any(ln.startswith("distinction precision") for ln in lines)
    assert any(ln.startswith("invented edges") and "GPT better (GPT 59, NextLat 61)" in ln for ln in lines)


def test_cli_defaults_are_the_reports():
    """One default per metric: the probe / transition CLIs read as many sequences and hold
    out as many as the report (and the rank CLI as many), so their numbers agree."""
    from nextlat_probe import probe, rank, report, transition, worldmodel
    from nextlat_probe.cli import held_out_split

    rep = report.build_parser().parse_args(["x.pt", "--out", "o"])
    assert rep.n_seqs == 256
    for cli in (probe, transition):
        args = cli.build_parser().parse_args(["x.pt"])
        assert held_out_split(args) == (rep.n_seqs, rep.n_seqs // 3) == (256, 85)
    assert transition.build_parser().parse_args(["x.pt"]).fit_steps == rep.fit_steps == 1000
    assert rank.build_parser().parse_args(["x.pt"]).n_seqs == rep.n_seqs
    assert worldmodel.build_parser().parse_args(["x.pt"]).n_pairs == max(50, min(200, rep.n_seqs))
    # the older spelling still works: --n-train alone holds out half as many again
    assert held_out_split(probe.build_parser().parse_args(["x.pt", "--n-train", "24"])) == (36, 12)


def test_convergence_note_under_every_analysis_table():
    from nextlat_probe.cli import table_text
    from nextlat_probe.probe import COLUMNS as PROBE
    from nextlat_probe.rank import COLUMNS as RANK
    from nextlat_probe.transition import table_columns

    gaps = {"gpt": 0.05, "nextlat": 0.5}
    far = [{**r, "gap_to_floor": gaps[r["objective"]]} for r in rank_records() + probe_records() + transition_records()]
    for analysis, cols in (("rank", RANK), ("probe", PROBE), ("transition", table_columns(3))):
        text = table_text([r for r in far if r["analysis"] == analysis], cols)
        assert "nextlat-0 gap to floor 0.500 vs gpt-0 0.050: not equally converged" in text.splitlines()[-1], text
