"""nextlat_probe.experiments: seed summaries, matched-loss rows, tables, multi-seed training."""
from __future__ import annotations

import csv
import math
import statistics

import numpy as np
import pytest

from nextlat_probe.experiments import (
    intermediate_checkpoints,
    latex_table,
    matched_rank,
    mean_std,
    seed_summary,
    summarise,
    taxi_metrics,
    write_csv,
)


def test_seed_summary_matches_statistics_module():
    vals = [0.31, 0.27, 0.4, 0.35]
    s = seed_summary(vals)
    assert s["n"] == 4
    assert s["mean"] == pytest.approx(statistics.fmean(vals), abs=1e-15)
    assert s["std"] == pytest.approx(statistics.stdev(vals), rel=1e-12)  # sample std, ddof = 1
    assert (s["min"], s["max"]) == (0.27, 0.4)


def test_seed_summary_drops_missing_and_single_value_has_no_spread():
    s = seed_summary([1.0, None, float("nan"), 3.0])
    assert s["n"] == 2 and s["mean"] == 2.0 and s["std"] == pytest.approx(math.sqrt(2.0))
    one = seed_summary([0.5])
    assert one["n"] == 1 and one["mean"] == one["min"] == one["max"] == 0.5 and math.isnan(one["std"])
    empty = seed_summary([None])
    assert empty["n"] == 0 and math.isnan(empty["mean"])


def test_summarise_groups_like_numpy():
    rng = np.random.default_rng(0)
    recs = [{"objective": obj, "layer": lay, "seed": s, "r2": float(rng.normal()), "mse": float(rng.random())}
            for s in range(4) for obj in ("gpt", "nextlat") for lay in ("L0", "L1")]
    rows = summarise(recs, by=("objective", "layer"), metrics=("r2", "mse"))
    assert [(r["objective"], r["layer"]) for r in rows] == [("gpt", "L0"), ("gpt", "L1"), ("nextlat", "L0"), ("nextlat", "L1")]
    for row in rows:
        sel = [r for r in recs if r["objective"] == row["objective"] and r["layer"] == row["layer"]]
        for m in ("r2", "mse"):
            x = np.array([r[m] for r in sel])
            assert row[f"{m}_mean"] == pytest.approx(x.mean(), abs=1e-12)
            assert row[f"{m}_std"] == pytest.approx(x.std(ddof=1), rel=1e-10)
            assert row[f"{m}_min"] == x.min() and row[f"{m}_max"] == x.max()
        assert row["n"] == 4 and row["seeds"] == "0 1 2 3"


def _traj(objective, seed, losses, ranks):
    return [{"objective": objective, "seed": seed, "step": 10 * (i + 1), "val_loss": v, "effective_rank": e}
            for i, (v, e) in enumerate(zip(losses, ranks))]


def test_matched_rank_per_seed_hand_worked():
    # seed 0: GPT's best 1.2, NextLat's best 1.4 -> target 1.4: GPT's first <= 1.4 is step 30,
    # NextLat's is its last (step 40). Seed 1 is matched on its own (target 2.0).
    recs = (_traj("gpt", 0, [3.0, 2.0, 1.4, 1.2], [5, 8, 11, 13]) + _traj("nextlat", 0, [3.1, 2.2, 1.6, 1.4], [4, 6, 7, 9])
            + _traj("gpt", 1, [2.5, 2.1, 2.0, 2.0], [6, 7, 8, 9]) + _traj("nextlat", 1, [2.4, 1.9, 1.8, 1.7], [3, 4, 5, 6]))
    rows = {(r["seed"], r["objective"]): r for r in matched_rank(recs)}
    assert rows[(0, "gpt")]["step"] == 30 and rows[(0, "gpt")]["effective_rank"] == 11
    assert rows[(0, "nextlat")]["step"] == 40 and rows[(0, "nextlat")]["effective_rank"] == 9
    assert rows[(0, "gpt")]["target_val_loss"] == 1.4
    assert rows[(1, "gpt")]["target_val_loss"] == 2.0
    assert rows[(1, "gpt")]["step"] == 30 and rows[(1, "nextlat")]["step"] == 20
    assert rows[(1, "nextlat")]["effective_rank"] == 4
    # a seed with one objective only has nothing to compare
    assert matched_rank(_traj("gpt", 5, [1.0], [2])) == []


def test_mean_std_and_latex_table():
    row = summarise([{"objective": "next_lat", "seed": s, "r2": v, "mse": m} for s, (v, m) in
                     enumerate([(0.4, 2e-3), (0.6, 4e-3)])], by=("objective",), metrics=("r2", "mse"))[0]
    assert mean_std(row, "r2", ".4f") == f"0.5000 ± {math.sqrt(0.02):.4f}"
    tex = latex_table([row], [("objective", "objective")], [("r2", "$R^2$", ".3f"), ("mse", "MSE", ".1e")],
                      caption="cap", label="tab:x")
    assert r"next\_lat & $0.500 \pm 0.141$ & $3.0\times10^{-3} \pm 1.4\times10^{-3}$ \\" in tex
    assert tex.startswith(r"\begin{table}") and r"\label{tab:x}" in tex and r"\begin{tabular}{lrr}" in tex
    one = summarise([{"objective": "gpt", "r2": 0.25}], by=("objective",), metrics=("r2",))[0]
    assert mean_std(one, "r2", ".2f") == "0.25"  # no '± nan'


def test_write_csv_round_trip(tmp_path):
    rows = [{"a": 1, "b": 0.5, "skip": [1, 2]}, {"a": 2, "b": float("nan")}]
    path = write_csv(rows, tmp_path / "x" / "t.csv")
    with open(path) as f:
        back = list(csv.DictReader(f))
    assert list(back[0]) == ["a", "b"]
    assert back[0] == {"a": "1", "b": "0.5"} and back[1]["b"] == "nan"


def test_taxi_metrics_flattens_rates():
    def rate(c, n, lo, hi):
        return {"rate": c / n if n else math.nan, "count": c, "n": n, "ci_low": lo, "ci_high": hi}

    rec = {"checkpoint": "nl", "objective": "nextlat", "step": 9, "next_token": rate(9, 10, 0.6, 0.98),
           "trajectory_valid": rate(1, 4, 0.05, 0.7), "trajectory_legal": rate(2, 4, 0.1, 0.9),
           "compression": rate(3, 3, 0.4, 1.0), "distinction_precision": rate(0, 0, math.nan, math.nan),
           "distinction_recall": rate(0, 5, 0.0, 0.4),
           "detour": {"random@0.75": {"legal": rate(4, 4, 0.5, 1.0), "valid": rate(3, 4, 0.3, 0.95)}},
           "effective_rank": 7.5, "val_loss": 1.1, "val_floor": 1.0, "val_gap": 0.1}
    row = taxi_metrics(rec)
    assert row["next_token"] == 0.9 and row["next_token_low"] == 0.6 and row["next_token_high"] == 0.98
    assert row["valid_trajectory"] == 0.25 and row["legal_trajectory"] == 0.5
    assert row["detour"] == 0.75 and row["detour_low"] == 0.3
    assert row["effective_rank"] == 7.5 and row["val_gap"] == 0.1 and row["objective"] == "nextlat"
    assert "detour" not in taxi_metrics(rec, detour="least_likely@0.01")


def test_intermediate_checkpoints_sorted_by_step(tmp_path):
    for name in ("ckpt_step10.pt", "ckpt_step2.pt", "ckpt_stepx.pt", "ckpt.pt", "ckpt_step3.pt.tmp"):
        (tmp_path / name).write_bytes(b"")
    assert [p.name for p in intermediate_checkpoints(tmp_path)] == ["ckpt_step2.pt", "ckpt_step10.pt"]


def test_train_pair_pairs_seeds_keeps_checkpoints_and_reuses(tmp_path):
    from nextlat_probe.checkpoint import read_checkpoint
    from nextlat_probe.experiments import train_pair

    kw = dict(seq_len=6, batch_size=8, n_val=16, warmup_steps=1, device="cpu", preset="tiny")
    runs = train_pair("mess3", seeds=[0], steps=4, out=tmp_path, keep_every=2, **kw)
    assert [(r.objective, r.seed, r.name) for r in runs] == [("gpt", 0, "gpt-seed0"), ("nextlat", 0, "nextlat-seed0")]
    for r in runs:
        kept = r.intermediate()
        assert [p.name for p in kept] == ["ckpt_step2.pt", "ckpt_step4.pt"]
        for p in kept:  # each kept checkpoint carries the validation loss of its own step
            raw = read_checkpoint(p)
            assert raw["metrics"]["step"] == raw["step"]
        assert math.isfinite(r.val_loss) and r.val_gap == pytest.approx(r.val_loss - r.val_floor)
    # same seed: the same validation set (same floor) for both objectives
    assert runs[0].val_floor == runs[1].val_floor
    # the two runs of a seed differ in the objective only
    a, b = (read_checkpoint(r.checkpoint)["train_config"] for r in runs)
    assert {k: v for k, v in a.items() if k != "objective"} == {k: v for k, v in b.items() if k != "objective"}
    mtimes = [r.checkpoint.stat().st_mtime_ns for r in runs]
    again = train_pair("mess3", seeds=[0], steps=4, out=tmp_path, keep_every=2, **kw)
    assert [r.checkpoint.stat().st_mtime_ns for r in again] == mtimes  # reused, not retrained
    assert [r.val_loss for r in again] == [r.val_loss for r in runs]
    with pytest.raises(ValueError, match="objective"):
        train_pair("mess3", seeds=[0], steps=1, out=tmp_path, objectives=("bert",))


def test_train_pair_resumes_an_interrupted_run(tmp_path):
    from nextlat_probe.experiments import train_pair
    from nextlat_probe.training.config import TrainConfig
    from nextlat_probe.training.trainer import train

    kw = dict(seq_len=6, batch_size=8, n_val=16, warmup_steps=1, device="cpu", keep_every=2, eval_every=2)
    folder = tmp_path / "gpt-seed0"
    train(TrainConfig(world="mess3", objective="gpt", steps=4, seed=0, **kw), folder, stop_at=2, progress=False)
    first = (folder / "ckpt_step2.pt").stat().st_mtime_ns
    (run,) = train_pair("mess3", seeds=[0], steps=4, out=tmp_path, objectives=("gpt",), **kw)
    assert run.step == 4
    assert [p.name for p in run.intermediate()] == ["ckpt_step2.pt", "ckpt_step4.pt"]
    assert (folder / "ckpt_step2.pt").stat().st_mtime_ns == first  # continued, not restarted
