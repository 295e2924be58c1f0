"""The sweep: grid expansion, a toy sweep's outputs, reuse without retraining or
re-evaluation, resumption of interrupted runs, the paired "beats" table and the CLI."""
import csv
import math

import numpy as np
import pytest
from helpers import assert_light_help, run_cli
from scipy import stats

from nextlat_probe.errors import UsageError
from nextlat_probe.sweeps import (
    NOT_CONVERGED,
    SweepConfig,
    available_cores,
    beats_table,
    grid,
    run_state,
    run_sweep,
)

#: small enough to train and evaluate in seconds on two cores
TOY_TRAIN = {"batch_size": 8, "seq_len": 8, "n_val": 16, "warmup_steps": 1}
TOY_ARGS = ["--world", "mess3", "--objectives", "gpt,nextlat", "--presets", "tiny", "--steps", "4,6", "--seeds", "1",
            "--keep", "2", "--n-seqs", "12", "--batch-size", "8", "--seq-len", "8", "--n-val", "16", "--warmup", "1",
            "--device", "cpu", "--no-progress"]


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """Tiny models train faster on one thread, above all on a shared two-core machine."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def toy_config(out, **kw):
    base = dict(world="mess3", objectives=("gpt", "nextlat"), presets=("tiny",), steps=(4, 6), seeds=1, keep=2,
                n_seqs=12, device="cpu", train_options=TOY_TRAIN, out=str(out))
    return SweepConfig(**{**base, **kw})


# --------------------------------------------------------------------------------------
# the grid
# --------------------------------------------------------------------------------------
def test_grid_expands_lambdas_for_nextlat_only(tmp_path):
    cfg = SweepConfig(world="mess3", objectives=("gpt", "nextlat"), presets=("tiny",), steps=(4, 6),
                      lambda_kl=(0, 1), seeds=2, out=str(tmp_path))
    runs = grid(cfg)
    expected = {f"mess3/gpt-tiny-s{s}-seed{seed}" for s in (4, 6) for seed in (0, 1)}
    expected |= {f"mess3/nextlat-tiny-s{s}-lh1-lkl{kl}-seed{seed}" for s in (4, 6) for kl in (0, 1) for seed in (0, 1)}
    assert [r.folder for r in runs if r.folder not in expected] == []
    assert {r.folder for r in runs} == expected
    assert len(runs) == len(expected) == 12  # GPT is not duplicated over the lambda settings
    for r in runs:
        assert r.keep_every == r.steps // cfg.keep
        assert (r.lambda_h is None) == (r.objective == "gpt")
        tc = r.train_config(cfg)
        assert (tc.steps, tc.seed, tc.objective, tc.keep_every) == (r.steps, r.seed, r.objective, r.keep_every)
        if r.objective == "nextlat":
            assert (tc.lambda_h, tc.lambda_kl) == (r.lambda_h, r.lambda_kl)


def test_cells_replace_the_product_and_share_gpt_runs(tmp_path):
    cfg = SweepConfig(world="mess3", objectives=("gpt", "nextlat"), lambda_kl=(0, 1), seeds=2, out=str(tmp_path),
                      cells=("tiny:4", "mini:6:lambda_kl=0", "mini:6:lambda_kl=1/2"))
    names = [r.folder for r in grid(cfg)]
    expected = ([f"mess3/{n}-seed{s}" for s in (0, 1) for n in ("gpt-tiny-s4", "nextlat-tiny-s4-lh1-lkl0",
                                                                 "nextlat-tiny-s4-lh1-lkl1")]
                + [f"mess3/{n}-seed{s}" for s in (0, 1) for n in ("gpt-mini-s6", "nextlat-mini-s6-lh1-lkl0")]
                + [f"mess3/nextlat-mini-s6-lh1-lkl{kl}-seed{s}" for s in (0, 1) for kl in (1, 2)])
    assert names == expected  # mini's GPT runs appear once although two cells name mini:6
    back = SweepConfig.from_dict(cfg.to_dict())
    assert [r.folder for r in grid(back)] == names


@pytest.mark.parametrize("cell", ["tiny", "tiny:x", "huge:4", "tiny:0", "tiny:4:lambda_q=1", "tiny:4:lambda_kl=a", "tiny:4:lambda_kl=0:lambda_kl=1",
                                  "tiny:4:lambda_kl=-1"])
def test_bad_cells_are_usage_errors(tmp_path, cell):
    with pytest.raises(UsageError) as info:
        toy_config(tmp_path, cells=(cell,))
    assert "--cell" in str(info.value) and "\n" not in str(info.value)


def test_cli_cell_with_presets_is_refused(tmp_path):
    res = run_cli("nextlat_probe.sweep", "--cell", "tiny:4", "--steps", "4", "--out", str(tmp_path), "--dry-run",
                  timeout=60)
    assert res.returncode == 2 and "--cell replaces" in res.stderr and len(res.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize("bad", [dict(objectives=("gpt", "foo")), dict(presets=("huge",)), dict(steps=(0,)),
                                 dict(lambda_kl=(-1.0,)), dict(seeds=0), dict(objectives=("gpt", "gpt")),
                                 dict(world="nowhere"), dict(workers=10_000)])
def test_bad_configs_are_usage_errors(tmp_path, bad):
    with pytest.raises(Exception) as info:
        toy_config(tmp_path, **bad)
    assert isinstance(info.value, ValueError) and "\n" not in str(info.value)


# --------------------------------------------------------------------------------------
# a toy sweep: outputs, reuse, resume
# --------------------------------------------------------------------------------------
def _checkpoint_steps(run_dir):
    """Distinct checkpoint steps of a run folder, read from the files themselves."""
    from nextlat_probe.checkpoint import read_checkpoint

    steps = {int(p.name[len("ckpt_step"):-len(".pt")]) for p in run_dir.glob("ckpt_step*.pt")}
    steps.add(int(read_checkpoint(run_dir / "ckpt.pt")["step"]))
    return steps


def _rows(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _snapshot(out):
    return {str(p.relative_to(out)): p.stat().st_mtime_ns for p in (out / "mess3").rglob("*") if p.is_file()}


@pytest.fixture(scope="module")
def toy_sweep(tmp_path_factory):
    from nextlat_probe.sweep import main

    out = tmp_path_factory.mktemp("sweep")
    assert main([*TOY_ARGS, "--out", str(out)]) == 0
    return out


def test_toy_sweep_writes_one_row_per_run_and_checkpoint(toy_sweep):
    out = toy_sweep
    run_dirs = sorted(p for p in (out / "mess3").iterdir() if p.is_dir())
    assert [p.name for p in run_dirs] == sorted(["gpt-tiny-s4-seed0", "gpt-tiny-s6-seed0",
                                                 "nextlat-tiny-s4-lh1-lkl1-seed0", "nextlat-tiny-s6-lh1-lkl1-seed0"])
    expected = {(p.name, s) for p in run_dirs for s in _checkpoint_steps(p)}
    assert len(expected) == 8  # keep 2: steps 2, 4 and 3, 6
    rows = _rows(out / "sweep.csv")
    got = [(r["run"], int(r["step"])) for r in rows]
    assert len(got) == len(set(got)) and set(got) == expected
    for r in rows:
        assert int(r["compute"]) == int(r["step"]) * int(r["n_params"]) > 0
        assert math.isclose(float(r["gap_to_floor"]), float(r["val_loss"]) - float(r["val_floor"]), rel_tol=1e-6)
        assert float(r["effective_rank"]) > 0 and r["r2"] != ""
        assert r["protocol_rank"] == "training_length" and r["protocol_probe"] == "held_out"
        assert (r["lambda_h"] == "") == (r["objective"] == "gpt")
        assert int(r["steps"]) in (4, 6)
    records = (out / "records.jsonl").read_text().splitlines()
    assert len(records) == 2 * len(expected)  # rank + probe per checkpoint (no world-model metrics on mess3)
    beats = _rows(out / "beats.csv")
    assert {b["metric"] for b in beats} == {"val_loss", "effective_rank", "r2"}
    assert all(b["interval"] == "n=1, no interval" for b in beats)
    assert "## effective_rank" in (out / "beats.md").read_text()
    page = (out / "sweep.html").read_text()
    assert "plotly" in page.lower() and len(page) > 1_000_000  # plotly.js embedded, no CDN
    assert (out / "sweep.png").stat().st_size > 0 and (out / "sweep.pdf").stat().st_size > 0


def test_rerun_trains_and_evaluates_nothing(toy_sweep, monkeypatch):
    import nextlat_probe.sweeps as sweeps
    import nextlat_probe.training.trainer as trainer
    from nextlat_probe.sweep import dry_run_text, main

    out = toy_sweep
    before, csv_before = _snapshot(out), (out / "sweep.csv").read_text()
    original, calls = sweeps.evaluate_checkpoint, []

    def refuse(*args, **kwargs):
        raise AssertionError("the rerun must not train or evaluate")

    monkeypatch.setattr(trainer, "train", refuse)
    monkeypatch.setattr(sweeps, "evaluate_checkpoint", refuse)
    assert main([*TOY_ARGS, "--out", str(out), "--no-figures"]) == 0
    assert _snapshot(out) == before  # checkpoints, metrics logs and caches untouched
    assert (out / "sweep.csv").read_text() == csv_before
    text = dry_run_text(toy_config(out))
    assert "4 runs" in text and "4 done" in text and text.count("2/2") == 4

    # a sweep interrupted during evaluation: only the checkpoint without a cache is evaluated
    lost = out / "mess3" / "gpt-tiny-s6-seed0" / "ckpt_step3.eval.json"
    lost.unlink()
    assert "1/2" in dry_run_text(toy_config(out))

    def counted(ckpt, *args, **kwargs):
        calls.append(ckpt.name)
        return original(ckpt, *args, **kwargs)

    monkeypatch.setattr(sweeps, "evaluate_checkpoint", counted)
    assert main([*TOY_ARGS, "--out", str(out), "--no-figures"]) == 0
    assert calls == ["ckpt_step3.pt"] and lost.is_file()
    after = _snapshot(out)
    assert {k for k in after if after[k] != before.get(k)} == {str(lost.relative_to(out))}
    assert (out / "sweep.csv").read_text() == csv_before


def test_a_run_with_other_settings_is_refused(toy_sweep, monkeypatch):
    import nextlat_probe.training.trainer as trainer

    monkeypatch.setattr(trainer, "train", lambda *a, **k: pytest.fail("must not train"))
    cfg = toy_config(toy_sweep, train_options={**TOY_TRAIN, "lr": 3e-3})
    assert run_state(cfg, grid(cfg)[0]).kind == "conflict"
    with pytest.raises(UsageError, match="other settings: lr"):
        run_sweep(cfg)


def test_interrupted_runs_resume_to_the_end(toy_sweep, tmp_path):
    """One run stopped partway (ckpt.pt and a kept checkpoint at step 3), one with only the
    kept intermediate checkpoint left: the sweep resumes both (with two workers where there
    are two cores) and ends where the uninterrupted toy-sweep runs ended."""
    import torch

    from nextlat_probe.checkpoint import read_checkpoint
    from nextlat_probe.training.trainer import train

    cfg = toy_config(tmp_path, steps=(6,), workers=min(2, available_cores()))
    specs = grid(cfg)
    assert [s.name for s in specs] == ["gpt-tiny-s6-seed0", "nextlat-tiny-s6-lh1-lkl1-seed0"]
    for spec in specs:
        train(spec.train_config(cfg), spec.path(tmp_path), progress=False, stop_at=3)
    (specs[1].path(tmp_path) / "ckpt.pt").unlink()  # only ckpt_step3.pt is left
    kept_mtime = (specs[0].path(tmp_path) / "ckpt_step3.pt").stat().st_mtime_ns
    states = [run_state(cfg, s) for s in specs]
    assert [(st.kind, st.step) for st in states] == [("partial", 3), ("partial", 3)]
    assert states[1].resume_from.endswith("ckpt_step3.pt")

    records = run_sweep(cfg)
    assert sorted({(r["name"], r["step"]) for r in records}) == sorted((s.name, k) for s in specs for k in (3, 6))
    for spec in specs:
        folder = spec.path(tmp_path)
        assert '"event": "resume"' in (folder / "metrics.jsonl").read_text()
        done = read_checkpoint(folder / "ckpt.pt")
        ref = read_checkpoint(toy_sweep / "mess3" / spec.name / "ckpt.pt")  # the same run, never interrupted
        assert done["step"] == ref["step"] == 6
        for k, v in ref["model"].items():  # float sums may differ in the last bits across thread counts
            assert torch.allclose(done["model"][k], v, rtol=1e-3, atol=1e-4), k
        assert done["metrics"]["val_loss"] == pytest.approx(ref["metrics"]["val_loss"], abs=1e-4)
        assert (folder / "ckpt_step3.eval.json").is_file() and (folder / "ckpt.eval.json").is_file()
    assert (specs[0].path(tmp_path) / "ckpt_step3.pt").stat().st_mtime_ns == kept_mtime  # resumed, not restarted


# --------------------------------------------------------------------------------------
# the beats table on hand-made rows
# --------------------------------------------------------------------------------------
def _row(obj, seed, rank, valid, gap, steps=100, lh=None, lkl=None):
    return {"run": f"{obj}-{seed}-{lkl}", "objective": obj, "preset": "tiny", "steps": steps, "step": steps,
            "seed": seed, "lambda_h": lh, "lambda_kl": lkl, "val_loss": 1.0 + gap, "gap_to_floor": gap,
            "effective_rank": rank, "trajectory_valid": valid}


def test_beats_table_is_a_paired_t_interval():
    gpt = {0: (10.0, 0.50), 1: (12.0, 0.55), 2: (11.5, 0.40), 3: (9.0, 0.9)}  # seed 3 has no NextLat partner
    nl = {0: (8.0, 0.60), 1: (10.9, 0.52), 2: (9.4, 0.58)}
    rows = [_row("gpt", s, r, v, 0.010) for s, (r, v) in gpt.items()]
    rows += [_row("nextlat", s, r, v, 0.012, lh=1.0, lkl=0.0) for s, (r, v) in nl.items()]
    rows.append({**_row("gpt", 0, 99.0, 0.0, 0.5), "run": "gpt-0-None", "step": 50})  # an earlier checkpoint
    beats = {b["metric"]: b for b in beats_table(rows, metrics=("effective_rank", "trajectory_valid"))}
    for metric, i in (("effective_rank", 0), ("trajectory_valid", 1)):
        d = np.array([nl[s][i] - gpt[s][i] for s in (0, 1, 2)])
        lo, hi = stats.t.interval(0.95, len(d) - 1, loc=d.mean(), scale=stats.sem(d))
        b = beats[metric]
        assert b["n"] == 3 and b["seeds"] == "0 1 2"
        assert b["diff_mean"] == pytest.approx(d.mean())
        assert (b["diff_low"], b["diff_high"]) == (pytest.approx(lo), pytest.approx(hi))
        assert b["flag"] == ""  # gaps 0.012 and 0.010: both near the floor
    assert beats["effective_rank"]["better_is"] == "lower" and beats["effective_rank"]["better"] == "nextlat"
    assert beats["effective_rank"]["clear"] == "yes"  # every difference negative: [lo, hi] excludes 0
    assert beats["trajectory_valid"]["better_is"] == "higher" and beats["trajectory_valid"]["better"] == "nextlat"
    assert beats["trajectory_valid"]["clear"].startswith("no")


def test_beats_table_with_one_seed_and_far_from_the_floor():
    rows = [_row("gpt", 0, 10.0, 0.5, 0.02), _row("nextlat", 0, 11.0, 0.5, 0.04, lh=1.0, lkl=1.0),
            _row("nextlat", 0, 9.0, 0.5, 0.30, lh=1.0, lkl=0.0)]
    beats = beats_table(rows, metrics=("effective_rank",))
    assert len(beats) == 2
    for b in beats:
        assert b["n"] == 1 and b["interval"] == b["clear"] == "n=1, no interval"
        assert math.isnan(b["diff_low"]) and math.isnan(b["diff_high"])
        assert b["flag"].startswith(NOT_CONVERGED)
    by_kl = {b["lambda_kl"]: b for b in beats}
    assert by_kl[1.0]["better"] == "gpt" and "more than 1.5x" in by_kl[1.0]["flag"]  # 0.04 vs 0.02
    assert by_kl[0.0]["better"] == "nextlat" and "> 0.05" in by_kl[0.0]["flag"]


def test_beats_at_matched_loss_reads_each_pair_where_both_reach_a_loss():
    """GPT converges early, NextLat late: at matched loss GPT is read at an earlier kept
    checkpoint, chosen by the rule written out here (the first at or below the larger of the
    two best losses)."""
    def ck(obj, seed, step, gap, rank, lkl=None):
        return {**_row(obj, seed, rank, 0.5, gap, steps=300, lh=None if lkl is None else 1.0, lkl=lkl), "step": step}

    gpt = {0: [(100, 0.20, 30.0), (200, 0.05, 35.0), (300, 0.02, 36.0)],
           1: [(100, 0.25, 31.0), (200, 0.09, 34.0), (300, 0.03, 37.0)]}
    nl = {0: [(100, 0.30, 20.0), (200, 0.15, 21.0), (300, 0.08, 22.0)],
          1: [(100, 0.40, 19.0), (200, 0.20, 22.0), (300, 0.10, 24.0)]}
    rows = [ck("gpt", s, *c) for s, cs in gpt.items() for c in cs]
    rows += [ck("nextlat", s, *c, lkl=0.0) for s, cs in nl.items() for c in cs]
    want = {}
    for s in (0, 1):
        target = max(min(g for _, g, _ in gpt[s]), min(g for _, g, _ in nl[s]))
        pick = [next(c for c in cs[s] if c[1] <= target + 1e-12) for cs in (nl, gpt)]
        want[s] = pick
    (b,) = beats_table(rows, metrics=("effective_rank",), at="matched_loss")
    assert b["at"] == "matched_loss"
    assert b["steps_challenger"] == " ".join(str(want[s][0][0]) for s in (0, 1)) == "300 300"
    assert b["steps_baseline"] == " ".join(str(want[s][1][0]) for s in (0, 1)) == "200 200"
    assert b["diff_mean"] == pytest.approx(np.mean([want[s][0][2] - want[s][1][2] for s in (0, 1)]))
    assert b["gap_baseline"] == pytest.approx(np.mean([want[s][1][1] for s in (0, 1)]))
    (final,) = beats_table(rows, metrics=("effective_rank",))
    assert final["diff_mean"] == pytest.approx(np.mean([22.0 - 36.0, 24.0 - 37.0]))  # the final checkpoints
    with pytest.raises(UsageError):
        beats_table(rows, at="somewhere")


def test_toy_sweep_writes_the_matched_loss_table(toy_sweep):
    rows = _rows(toy_sweep / "beats_matched.csv")
    assert rows and {r["at"] for r in rows} == {"matched_loss"}
    assert "matched validation loss" in (toy_sweep / "beats_matched.md").read_text()
    assert "matched validation loss" in (toy_sweep / "sweep.html").read_text()


# --------------------------------------------------------------------------------------
# the CLI
# --------------------------------------------------------------------------------------
def test_cli_help_is_fast_and_imports_no_torch():
    assert_light_help("nextlat_probe.sweep", "--lambda-kl", "--workers", "--launcher", "--slurm-partition", "--log")


def test_cli_bad_objective_is_one_line_exit_2(tmp_path):
    res = run_cli("nextlat_probe.sweep", "--objectives", "gpt,foo", "--out", str(tmp_path), timeout=60)
    assert res.returncode == 2
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and "foo" in lines[0]
    assert not any(tmp_path.iterdir())


def test_cli_dry_run_lists_the_runs(tmp_path):
    res = run_cli("nextlat_probe.sweep", "--world", "mess3", "--steps", "4,6", "--lambda-kl", "0,1", "--seeds", "2",
                  "--out", str(tmp_path / "s"), "--dry-run", timeout=60)
    assert res.returncode == 0, res.stderr
    names = [s.folder for s in grid(SweepConfig(world="mess3", steps=(4, 6), lambda_kl=(0, 1), seeds=2))]
    assert len(names) == 12
    for name in names:
        assert name in res.stdout
    assert "12 runs" in res.stdout and "12 new" in res.stdout
    assert not (tmp_path / "s").exists()  # a dry run writes nothing


def test_out_of_distribution_columns_stay_apart_from_in_distribution_ones():
    from nextlat_probe.records import make_record, rate
    from nextlat_probe.sweeps import beats_table, metric_info, sweep_table

    recs = []
    for obj, seeds in (("gpt", {0: (9, 2), 1: (8, 3)}), ("nextlat", {0: (7, 5), 1: (6, 6)})):
        for seed, (k_in, k_ood) in seeds.items():
            ident = {"name": f"{obj}-seed{seed}", "objective": obj, "step": 10, "seed": seed, "val_loss": 1.0,
                     "val_floor": 0.99, "gap_to_floor": 0.01}
            recs.append(make_record(ident, "worldmodel", {"trajectory_valid": rate(k_in, 10)}, {"n_pairs": 10}))
            recs.append(make_record(ident, "worldmodel", {"trajectory_valid": rate(k_ood, 10)}, {"n_pairs": 10},
                                    variant="ood walk=shortest"))
    rows = sweep_table(recs)
    assert len(rows) == 4
    by = {r["run"]: r for r in rows}
    assert by["gpt-seed1"]["trajectory_valid"] == 0.8 and by["gpt-seed1"]["trajectory_valid@ood:walk=shortest"] == 0.3
    assert metric_info("trajectory_valid@ood:walk=shortest").better == "higher"
    beats = {b["metric"]: b for b in beats_table(rows)}
    # in distribution GPT is better (0.85 vs 0.65), out of distribution NextLat (0.55 vs 0.25)
    assert beats["trajectory_valid"]["better"] == "gpt"
    assert beats["trajectory_valid@ood:walk=shortest"]["better"] == "nextlat"
    assert abs(beats["trajectory_valid@ood:walk=shortest"]["diff_mean"] - 0.3) < 1e-12
