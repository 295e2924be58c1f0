"""nextlat_probe.experiments: seed summaries over records, matched-loss rows, rank along
training, multi-seed training."""
from __future__ import annotations

import math
import statistics

import numpy as np
import pytest

from nextlat_probe.experiments import (
    intermediate_checkpoints,
    matched_rank,
    seed_summary,
    summarise,
)
from nextlat_probe.records import make_record, rate
from nextlat_probe.tables import latex_table, mean_std


def ident(objective, seed, step=100, val_loss=None, val_floor=None):
    """Identity and training-state fields of a record (``records.identity`` shape)."""
    gap = None if val_loss is None or val_floor is None else val_loss - val_floor
    return {"name": f"{objective}-seed{seed}", "objective": objective, "step": step, "seed": seed,
            "source": f"runs/{objective}-seed{seed}/ckpt.pt", "horizon": 1 if objective == "nextlat" else None,
            "val_loss": val_loss, "val_floor": val_floor, "gap_to_floor": gap}


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


def test_summarise_records_groups_like_numpy():
    """Metrics, rates (by their value) and training-state fields of records, summarised per
    (objective, layer) exactly as numpy computes them from the same numbers."""
    rng = np.random.default_rng(0)
    raw = []  # (objective, layer, seed, r2, mse, count of 50, val_loss, val_floor): the numbers behind each record
    for s in range(4):
        for obj in ("gpt", "nextlat"):
            loss, floor = 1.0 + float(rng.random()), 0.9
            for lay in ("L0", "L1"):
                raw.append((obj, lay, s, float(rng.normal()), float(rng.random()), int(rng.integers(0, 51)), loss, floor))
    recs = [make_record(ident(obj, s, val_loss=loss, val_floor=floor), "probe",
                        {"r2": r2, "mse": mse, "acc": rate(c, 50), "r2_per_position": [r2, r2]},
                        {"n_seqs": 64}, layer=lay)
            for obj, lay, s, r2, mse, c, loss, floor in raw]
    rows = summarise(recs, by=("objective", "layer"), metrics=("r2", "mse", "acc", "val_loss", "gap_to_floor"))
    assert [(r["objective"], r["layer"]) for r in rows] == [("gpt", "L0"), ("gpt", "L1"), ("nextlat", "L0"), ("nextlat", "L1")]
    for row in rows:
        sel = [x for x in raw if x[0] == row["objective"] and x[1] == row["layer"]]
        columns = {"r2": [x[3] for x in sel], "mse": [x[4] for x in sel], "acc": [x[5] / 50 for x in sel],
                   "val_loss": [x[6] for x in sel], "gap_to_floor": [x[6] - x[7] for x in sel]}
        for m, values in columns.items():
            x = np.array(values)
            assert row[f"{m}_mean"] == pytest.approx(x.mean(), abs=1e-12)
            assert row[f"{m}_std"] == pytest.approx(x.std(ddof=1), rel=1e-10)
            assert row[f"{m}_min"] == pytest.approx(x.min(), abs=1e-15)
            assert row[f"{m}_max"] == pytest.approx(x.max(), abs=1e-15)
        assert row["n"] == 4 and row["seeds"] == "0 1 2 3"


def test_summarise_skips_records_without_the_metric():
    """A record that lacks a metric (or measured nothing: an empty rate) does not count
    towards that metric's summary."""
    recs = [make_record(ident("gpt", 0), "worldmodel", {"next_token": rate(3, 4), "compression": rate(0, 0)}),
            make_record(ident("gpt", 1), "worldmodel", {"next_token": rate(1, 4), "compression": rate(2, 2)}),
            make_record(ident("gpt", 2), "worldmodel", {"compression": rate(1, 2)})]
    (row,) = summarise(recs, by=("objective",), metrics=("next_token", "compression"))
    assert row["n"] == 3 and row["seeds"] == "0 1 2"
    assert row["next_token_mean"] == pytest.approx(0.5) and row["next_token_std"] == pytest.approx(math.sqrt(0.125))
    assert (row["compression_min"], row["compression_max"]) == (0.5, 1.0)
    assert row["compression_mean"] == pytest.approx(0.75)


def _traj(objective, seed, losses, ranks):
    """``rank`` records of one run along training: steps 10, 20, ..."""
    return [make_record(ident(objective, seed, step=10 * (i + 1), val_loss=v, val_floor=0.5), "rank",
                        {"effective_rank": e, "d_model": 64}, {"n_seqs": 256, "seed": 0}, layer="L1")
            for i, (v, e) in enumerate(zip(losses, ranks))]


def test_matched_rank_per_seed_hand_worked():
    # seed 0: GPT's best 1.2, NextLat's best 1.4 -> target 1.4: GPT's first <= 1.4 is step 30,
    # NextLat's is its last (step 40). Seed 1 is matched on its own (target 2.0).
    recs = (_traj("gpt", 0, [3.0, 2.0, 1.4, 1.2], [5, 8, 11, 13]) + _traj("nextlat", 0, [3.1, 2.2, 1.6, 1.4], [4, 6, 7, 9])
            + _traj("gpt", 1, [2.5, 2.1, 2.0, 2.0], [6, 7, 8, 9]) + _traj("nextlat", 1, [2.4, 1.9, 1.8, 1.7], [3, 4, 5, 6]))
    rows = {(r["seed"], r["objective"]): r for r in matched_rank(recs)}
    assert rows[(0, "gpt")]["step"] == 30 and rows[(0, "gpt")]["effective_rank"] == 11
    assert rows[(0, "nextlat")]["step"] == 40 and rows[(0, "nextlat")]["effective_rank"] == 9
    assert rows[(0, "gpt")]["target_val_loss"] == 1.4 and rows[(0, "gpt")]["val_loss"] == 1.4
    assert rows[(1, "gpt")]["target_val_loss"] == 2.0
    assert rows[(1, "gpt")]["step"] == 30 and rows[(1, "nextlat")]["step"] == 20
    assert rows[(1, "nextlat")]["effective_rank"] == 4
    assert rows[(1, "nextlat")]["name"] == "nextlat-seed1"
    # a seed with one objective only has nothing to compare
    assert matched_rank(_traj("gpt", 5, [1.0], [2])) == []


def test_matched_rank_ignores_checkpoints_without_loss_or_rank():
    # GPT's step-20 checkpoint has no validation loss and NextLat's step-10 one no rank:
    # neither can be the match. Without them the target is max(1.5, 1.3) = 1.5 (were they
    # counted, it would be max(1.0, 1.2) = 1.2)
    gpt = _traj("gpt", 0, [2.0, 1.0, 1.5], [5, 6, 7])
    gpt[1]["val_loss"] = None
    nl = _traj("nextlat", 0, [1.2, 1.3], [3, 4])
    nl[0]["metrics"]["effective_rank"] = None
    rows = {r["objective"]: r for r in matched_rank(gpt + nl)}
    assert rows["gpt"]["target_val_loss"] == 1.5
    assert (rows["gpt"]["step"], rows["gpt"]["effective_rank"]) == (30, 7)
    assert (rows["nextlat"]["step"], rows["nextlat"]["effective_rank"]) == (20, 4)


def test_mean_std_and_latex_table_of_record_summaries():
    recs = [make_record(ident("next_lat", s), "probe", {"r2": v, "mse": m}) for s, (v, m) in
            enumerate([(0.4, 2e-3), (0.6, 4e-3)])]
    row = summarise(recs, by=("objective",), metrics=("r2", "mse"))[0]
    assert mean_std(row, "r2", ".4f") == f"0.5000 ± {math.sqrt(0.02):.4f}"
    tex = latex_table([row], [("objective", "objective")], [("r2", "$R^2$", ".3f"), ("mse", "MSE", ".1e")],
                      caption="cap", label="tab:x")
    assert r"next\_lat & $0.500 \pm 0.141$ & $3.0\times10^{-3} \pm 1.4\times10^{-3}$ \\" in tex
    assert tex.startswith(r"\begin{table}") and r"\label{tab:x}" in tex and r"\begin{tabular}{lrr}" in tex
    one = summarise([make_record(ident("gpt", 0), "probe", {"r2": 0.25})], by=("objective",), metrics=("r2",))[0]
    assert mean_std(one, "r2", ".2f") == "0.25"  # no '± nan'


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


def test_rank_along_training_names_records_after_runs_and_matches_a_dense_svd(tmp_path):
    """Every kept checkpoint and the final one, once per step, as ``rank`` records named
    after the run, with the checkpoint's own validation loss; the effective rank equals
    Roy & Vetterli's formula on a dense SVD of the same hidden states, computed here."""
    from nextlat_probe.activations import collect
    from nextlat_probe.checkpoint import load_checkpoint, read_checkpoint
    from nextlat_probe.compare.inputs import SEQUENCE_STREAM
    from nextlat_probe.experiments import rank_along_training, train_pair
    from nextlat_probe.records import check_record

    kw = dict(seq_len=6, batch_size=8, n_val=16, warmup_steps=1, device="cpu", preset="tiny")
    runs = train_pair("mess3", seeds=[0], steps=4, out=tmp_path, keep_every=2, **kw)
    n_seqs = 12
    recs = rank_along_training(runs, n_seqs=n_seqs)
    for r in recs:
        check_record(r)
    # ckpt_step4.pt and ckpt.pt are the same step: counted once
    assert [(r["name"], r["step"]) for r in recs] == [("gpt-seed0", 2), ("gpt-seed0", 4), ("nextlat-seed0", 2),
                                                      ("nextlat-seed0", 4)]
    assert {(r["analysis"], r["layer"], r["seed"]) for r in recs} == {("rank", "L1", 0)}
    for run in runs:
        for r in (r for r in recs if r["name"] == run.name):
            path = run.out_dir / f"ckpt_step{r['step']}.pt"
            assert r["objective"] == run.objective
            assert r["val_loss"] == pytest.approx(read_checkpoint(path)["metrics"]["val_loss"], abs=1e-12)
            ck = load_checkpoint(path)
            tokens = ck.world.sample(n_seqs, 6, seed=np.random.default_rng([0, SEQUENCE_STREAM])).tokens
            hook = f"blocks.{ck.model_config.n_layers - 1}.hook_resid_post"
            H = collect(ck.model, tokens, [hook])[hook].reshape(-1, ck.model_config.d_model).astype(np.float64)
            sv = np.linalg.svd(H, compute_uv=False)  # uncentred, as in the NextLat paper
            p = sv[sv >= 1e-12] / sv[sv >= 1e-12].sum()
            assert r["metrics"]["effective_rank"] == pytest.approx(float(np.exp(-(p * np.log(p)).sum())), rel=1e-5)
            assert r["params"]["n_seqs"] == n_seqs and r["params"]["center"] is False
    matched = matched_rank(recs)
    target = max(min(r["val_loss"] for r in recs if r["objective"] == o) for o in ("gpt", "nextlat"))
    assert {m["target_val_loss"] for m in matched} == {target}
    for m in matched:
        first = next(r for r in recs if r["name"] == m["name"] and r["val_loss"] <= target)
        assert (m["step"], m["effective_rank"]) == (first["step"], first["metrics"]["effective_rank"])


def test_a_run_saved_before_a_config_field_existed_is_still_the_same_run(tmp_path):
    """A checkpoint whose stored train_config lacks a field added later (here the
    fast_forward switch) is reused, not retrained, when the field is at its default."""
    import torch

    from nextlat_probe.experiments import _run_state
    from nextlat_probe.training.config import TrainConfig
    from nextlat_probe.training.trainer import train

    cfg = TrainConfig(world="mess3", steps=4, batch_size=8, seq_len=8, eval_every=4, save_every=4, n_val=8,
                      device="cpu", warmup_steps=1)
    ck = train(cfg, out_dir=tmp_path / "run", progress=False).checkpoint
    assert _run_state(ck, cfg)[0] == "done"
    raw = torch.load(ck, weights_only=True)
    del raw["train_config"]["fast_forward"]
    torch.save(raw, ck)
    assert _run_state(ck, cfg)[0] == "done"
    assert _run_state(ck, TrainConfig(**{**cfg.to_dict(), "fast_forward": False}))[0] == "new"
