"""nextlat_probe.tables: text, CSV and LaTeX from records carry exactly the numbers given."""
import csv
import math

import pytest

from nextlat_probe.errors import AnalysisError
from nextlat_probe.records import make_record, rate
from nextlat_probe.tables import (
    format_table,
    latex_escape,
    latex_table,
    mean_std,
    mean_std_table,
    protocol_note,
    record_rows,
    text_table,
    write_csv,
)


def ident(name, objective, val_loss=1.25):
    return {"name": name, "objective": objective, "step": 500, "seed": 1, "source": "x.pt", "horizon": None,
            "val_loss": val_loss, "val_floor": 1.0, "gap_to_floor": val_loss - 1.0}


def wilson(c, n):
    z, p = 1.959963984540054, c / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return (0.0 if c == 0 else centre - half), (1.0 if c == n else centre + half)


def records():
    return [
        make_record(ident("gpt_0", "gpt"), "worldmodel", {"next_token": rate(90, 100), "compression": rate(0, 0),
                                                          "n_pairs": 100, "spectrum": [1.0, 2.0]},
                    {"n_pairs": 100, "epsilon": 0.01, "seed": 0}),
        make_record(ident("nextlat_0", "nextlat", 1.125), "worldmodel",
                    {"next_token": rate(196, 200), "compression": rate(3, 4), "n_pairs": 200},
                    {"n_pairs": 200, "epsilon": 0.01, "seed": 0}),
    ]


COLUMNS = [("name", "model", ""), ("step", "step", ""), ("val_loss", "val loss", ".3f"),
           ("next_token", "next token", ".3f"), ("n_pairs", "pairs", "d"), ("params.epsilon", "eps", "g"),
           ("missing_metric", "absent", ".2f")]


def test_record_rows_render_rates_with_intervals():
    rows = record_rows(records(), COLUMNS)
    lo, hi = wilson(90, 100)
    assert rows[0] == {"name": "gpt_0", "step": "500", "val_loss": "1.250", "next_token": f"0.900 [{lo:.3f}, {hi:.3f}]",
                       "n_pairs": "100", "params.epsilon": "0.01", "missing_metric": "-"}
    lo, hi = wilson(196, 200)
    assert rows[1]["next_token"] == f"0.980 [{lo:.3f}, {hi:.3f}]" and rows[1]["val_loss"] == "1.125"
    assert record_rows(records(), [("compression", "c", ".2f")])[0] == {"compression": "n/a"}


def test_text_table_is_format_table_of_the_rows():
    text = text_table(records(), COLUMNS)
    lines = text.splitlines()
    assert lines[0].split() == ["model", "step", "val", "loss", "next", "token", "pairs", "eps", "absent"]
    lo, hi = wilson(196, 200)
    assert f"0.980 [{lo:.3f}, {hi:.3f}]" in lines[3] and lines[3].startswith("nextlat_0")
    assert len(lines) == 4


def test_format_table_semantics():
    rows = [{"a": "x", "b": 1.23456, "c": None}, {"a": "longer", "b": float("nan"), "c": "s"}]
    out = format_table(rows, [("a", "A", ""), ("b", "B", ".2f"), ("c", "C", ".1f")])
    assert out.splitlines() == ["A       B     C", "------  ----  -", "x       1.23  -", "longer   nan  s"]
    assert format_table([], [("a", "head", "")]) == "head\n----"


def test_non_records_are_refused():
    with pytest.raises(AnalysisError, match="not a record.*missing"):
        text_table([{"name": "gpt", "next_token": 0.9}], COLUMNS)
    with pytest.raises(AnalysisError, match="not a record"):
        protocol_note([{"name": "x", "params": {}}])
    bad = records()[0]
    bad["metrics"] = {"next_token": {"value": 0.9}}
    with pytest.raises(AnalysisError, match="not a rate"):
        write_csv([bad], "/tmp/never.csv")
    with pytest.raises(AnalysisError, match="list of records"):
        record_rows(records()[0], COLUMNS)


def test_write_csv_of_records_splits_rates(tmp_path):
    path = write_csv(records(), tmp_path / "sub" / "wm.csv")
    with open(path) as f:
        rows = list(csv.DictReader(f))
    head = list(rows[0])
    assert head[:13] == ["name", "objective", "step", "seed", "source", "horizon", "val_loss", "val_floor", "gap_to_floor",
                         "analysis", "layer", "variant", "next_token"]
    assert head[13:] == ["next_token_low", "next_token_high", "next_token_n", "compression", "compression_low",
                         "compression_high", "compression_n", "n_pairs"]
    assert "spectrum" not in head  # lists left out
    lo, hi = wilson(196, 200)
    assert float(rows[1]["next_token"]) == 0.98 and rows[1]["next_token_n"] == "200"
    assert float(rows[1]["next_token_low"]) == pytest.approx(lo, abs=1e-12)
    assert float(rows[1]["next_token_high"]) == pytest.approx(hi, abs=1e-12)
    assert rows[0]["compression"] == "" and rows[0]["compression_n"] == "0"  # nothing measured: empty, not 0
    assert rows[0]["layer"] == "" and rows[0]["val_loss"] == "1.25"
    path = write_csv(records(), tmp_path / "few.csv", columns=["name", "next_token_low"])
    with open(path) as f:
        assert list(csv.DictReader(f))[0] == {"name": "gpt_0", "next_token_low": repr(wilson(90, 100)[0])}


def test_write_csv_of_plain_rows(tmp_path):
    rows = [{"a": 1, "b": 0.5, "skip": [1, 2]}, {"a": 2, "b": float("nan")}]
    with open(write_csv(rows, tmp_path / "x" / "t.csv")) as f:
        back = list(csv.DictReader(f))
    assert list(back[0]) == ["a", "b"]
    assert back[0] == {"a": "1", "b": "0.5"} and back[1]["b"] == "nan"


def test_protocol_note_lists_the_params():
    rank = make_record(ident("g", "gpt"), "rank", {"effective_rank": 3.0},
                       {"n_seqs": 256, "seq_len": 16, "seed": 0, "center": False}, layer="L0")
    assert protocol_note([rank, dict(rank, layer="L1")]) == "rank: n_seqs=256, seq_len=16, seed=0, center=False"
    note = protocol_note(records() + [rank])
    assert note == "worldmodel: n_pairs=100|200, epsilon=0.01, seed=0; rank: n_seqs=256, seq_len=16, seed=0, center=False"
    assert protocol_note([make_record(ident("g", "gpt"), "rank", {})]) == ""


def summary_row(objective, r2s, mses):
    def stats(v):
        m = sum(v) / len(v)
        s = math.sqrt(sum((x - m) ** 2 for x in v) / (len(v) - 1)) if len(v) > 1 else float("nan")
        return m, s

    row = {"objective": objective, "n": len(r2s)}
    for key, v in (("r2", r2s), ("mse", mses)):
        row[f"{key}_mean"], row[f"{key}_std"] = stats(v)
    return row


def test_mean_std_and_latex_table_of_summaries():
    row = summary_row("next_lat", [0.4, 0.6], [2e-3, 4e-3])
    assert mean_std(row, "r2", ".4f") == f"0.5000 ± {math.sqrt(0.02):.4f}"
    tex = latex_table([row], [("objective", "objective")], [("r2", "$R^2$", ".3f"), ("mse", "MSE", ".1e")],
                      caption="cap", label="tab:x")
    assert r"next\_lat & $0.500 \pm 0.141$ & $3.0\times10^{-3} \pm 1.4\times10^{-3}$ \\" in tex
    assert tex.startswith(r"\begin{table}") and r"\label{tab:x}" in tex and r"\begin{tabular}{lrr}" in tex
    assert r"objective & $R^2$ & MSE \\" in tex and r"\caption{cap}" in tex
    one = summary_row("gpt", [0.25], [1.0])
    assert mean_std(one, "r2", ".2f") == "0.25"  # no '± nan'
    assert mean_std({"r2_mean": float("nan")}, "r2") == "-"
    text = mean_std_table([row, one], ["objective", "n"], [("r2", "R2", ".2f")])
    assert text.splitlines()[2:] == ["next_lat   2  0.50 ± 0.14", "gpt" + " " * 8 + "1" + " " * 9 + "0.25"]


def test_latex_escapes_and_renders_record_rates():
    assert latex_escape("a_b & 50% #1 $x$ {y} ~ ^ \\") == (r"a\_b \& 50\% \#1 \$x\$ \{y\} \textasciitilde{} "
                                                           r"\textasciicircum{} \textbackslash{}")
    tex = latex_table(records(), [("name", "model"), ("objective", "objective")],
                      [("next_token", "next token", ".3f"), ("compression", "compression", ".2f"),
                       ("val_loss", "val loss", ".2f"), ("absent", "absent", ".1f")])
    lo, hi = wilson(90, 100)
    assert rf"gpt\_0 & gpt & $0.900$ [${lo:.3f}$, ${hi:.3f}$] & -- & $1.25$ & -- \\" in tex
    lo, hi = wilson(196, 200)
    clo, chi = wilson(3, 4)
    assert (rf"nextlat\_0 & nextlat & $0.980$ [${lo:.3f}$, ${hi:.3f}$] & $0.75$ [${clo:.2f}$, ${chi:.2f}$] & $1.12$ & -- \\"
            in tex)


def test_convergence_note_says_when_models_are_not_equally_trained():
    from nextlat_probe.tables import convergence_note

    rows = [{"name": "gpt", "gap_to_floor": 0.091}, {"name": "nextlat", "gap_to_floor": 0.148}]
    assert convergence_note(rows) == ("nextlat gap to floor 0.148 vs gpt 0.091: not equally converged; "
                                      "compare at matched loss")
    far = convergence_note([{"name": "gpt", "gap_to_floor": 0.2}, {"name": "nextlat", "gap_to_floor": 0.5}])
    assert far.endswith("the numbers describe unconverged models") and "not equally converged" in far
    near = [{"name": "gpt", "gap_to_floor": 0.009}, {"name": "nextlat", "gap_to_floor": 0.0095}]
    assert "comparable" in convergence_note(near)
    # both tiny: a factor alone (0.001 vs 0.004) is not "much further"
    assert "comparable" in convergence_note([{"name": "a", "gap_to_floor": 0.001}, {"name": "b", "gap_to_floor": 0.004}])
    assert convergence_note([{"name": "gpt", "gap_to_floor": 0.1}]) == ""
    both_far = convergence_note([{"name": "gpt", "gap_to_floor": 3.59}, {"name": "nextlat", "gap_to_floor": 3.66}])
    assert "comparable" not in both_far and "no model is near the exact floor" in both_far
    assert convergence_note([{"name": "gpt", "gap_to_floor": None}, {"name": "x", "gap_to_floor": float("nan")}]) == ""
