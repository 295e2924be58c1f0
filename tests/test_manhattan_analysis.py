"""analyses/manhattan.py --smoke (a few steps on the 30-intersection crop of the shipped map)
and analyses/task_table.py's GPU mode in --time-limit chunks, run as a user would, from a
folder with nothing beside it."""
from __future__ import annotations

import csv
import json
import math
import os
import subprocess
import sys

import pytest
from helpers import ROOT


def script(name: str, *args: str, cwd, timeout: float = 900) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "analyses" / name), *args], capture_output=True, text=True,
                          timeout=timeout, cwd=cwd, env={**os.environ, "MPLBACKEND": "Agg", "OMP_NUM_THREADS": "1"})


@pytest.mark.slow
def test_manhattan_smoke_runs_resumes_and_reports_what_its_runs_measured(tmp_path):
    out = tmp_path / "m"
    # a limit already spent when the sweep starts: nothing trained, exit 75, the same command continues
    stopped = script("manhattan.py", "--smoke", "--no-progress", "--out", str(out), "--time-limit", "0.001", cwd=tmp_path)
    assert stopped.returncode == 75, stopped.stderr[-2000:]
    assert "run the same command again" in stopped.stdout
    done = script("manhattan.py", "--smoke", "--no-progress", "--out", str(out), cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    crop = json.loads((out / "map_r5.json").read_text())
    assert len(crop["nodes"]) == 30 and "ODbL" in crop["licence"]
    with open(out / "manhattan_table.csv") as f:
        table = list(csv.DictReader(f))
    assert {(r["objective"], r["at"]) for r in table} == {(o, a) for o in ("gpt", "nextlat", "mtp")
                                                         for a in ("final", "matched_loss")}
    with open(out / "sweep" / "sweep.csv") as f:
        sweep = list(csv.DictReader(f))
    records = [json.loads(line) for line in (out / "sweep" / "records.jsonl").read_text().splitlines()]
    for row in table:
        # one seed: each cell is that run's own value at the step the row says it used
        used = int(row["step_used"])
        mine = [r for r in sweep if r["objective"] == row["objective"] and int(r["step"]) == used]
        assert len(mine) == 1
        for key in ("val_loss", "trajectory_valid", "effective_rank", "edge_recall",
                    "trajectory_valid@ood:pairs=held_out", "compression@ood:walk=random,pairs=train"):
            assert float(row[key]) == pytest.approx(float(mine[0][key])), key
        wm = [r for r in records if r["analysis"] == "worldmodel" and r["objective"] == row["objective"]
              and r["step"] == used and r["variant"] is None]
        assert float(row["next_token"]) == pytest.approx(wm[0]["metrics"]["next_token"]["value"])
        if row["at"] == "final":
            assert used == 12
    # matched loss: every objective at a checkpoint at or below the largest of their best losses
    matched = [r for r in table if r["at"] == "matched_loss"]
    best = {o: min(float(r["val_loss"]) for r in sweep if r["objective"] == o) for o in ("gpt", "nextlat", "mtp")}
    target = max(best.values())
    assert all(float(r["val_loss"]) <= target + 1e-9 for r in matched)
    text = (out / "manhattan_table.md").read_text()
    assert "Equal steps" in text and "Matched validation loss" in text and "160.1" in text  # the paper's row
    for name in ("maps_tiny.png", "maps_tiny.pdf", "maps_tiny.html", "training_tiny.png", "beats_nextlat.md",
                 "beats_mtp_matched.md"):
        assert (out / name).stat().st_size > 500, name
    cpu = [json.loads(line) for line in (out / "cpu_time.jsonl").read_text().splitlines()]
    assert [c["finished"] for c in cpu] == [False, True] and all(math.isfinite(c["cpu_seconds"]) for c in cpu)
    # a third call trains and evaluates nothing
    again = script("manhattan.py", "--smoke", "--out", str(out), "--no-figures", cwd=tmp_path)
    assert again.returncode == 0 and "0 need training or evaluation" in again.stderr


@pytest.mark.slow
def test_task_table_gpu_mode_runs_in_time_limited_chunks(tmp_path):
    out = tmp_path / "ps"
    args = ["--task", "pathstar", "--scale", "gpu", "--preset", "tiny", "--steps", "6", "--seeds", "1",
            "--objectives", "gpt", "--n-seqs", "16", "--device", "cpu", "--no-progress", "--out", str(out)]
    first = script("task_table.py", *args, "--time-limit", "0.001", cwd=tmp_path)
    assert first.returncode == 75 and "run the same command again" in first.stdout, first.stderr[-2000:]
    second = script("task_table.py", *args, cwd=tmp_path)
    assert second.returncode == 0, second.stderr[-2000:]
    ck = out / "runs" / "gpt-seed0" / "ckpt.pt"
    from nextlat_probe.checkpoint import read_checkpoint

    state = read_checkpoint(ck)
    assert state["step"] == 6 and state["train_config"]["preset"] == "tiny"
    assert state["train_config"]["save_every"] == 1  # the gpu scale saves every ~5% of a run
    assert "| gpt |" in (out / "pathstar_table.md").read_text()


def load_script():
    import importlib.util

    spec = importlib.util.spec_from_file_location("manhattan_script", ROOT / "analyses" / "manhattan.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_table_rows_at_equal_steps_and_matched_loss_against_a_hand_computation():
    from scipy import stats

    mod = load_script()
    rows = []
    # per seed: (objective, [(step, val_loss, metric)]), each run with a kept and a final checkpoint
    runs = {0: {"gpt": [(5, 1.0, 0.2), (10, 0.6, 0.5)], "nextlat": [(5, 0.9, 0.3), (10, 0.8, 0.4)],
                "mtp": [(5, 0.7, 0.1), (10, 0.5, 0.9)]},
            1: {"gpt": [(5, 1.1, 0.25), (10, 0.7, 0.45)], "nextlat": [(5, 1.2, 0.35), (10, 0.65, 0.6)],
                "mtp": [(5, 0.75, 0.15), (10, 0.55, 0.8)]}}
    for seed, by_obj in runs.items():
        for obj, pts in by_obj.items():
            for step, loss, v in pts:
                rows.append({"run": f"{obj}-s{seed}", "objective": obj, "preset": "tiny", "steps": 10, "step": step,
                             "seed": seed, "val_loss": loss, "trajectory_valid": v})
    keys = [("val_loss", "", ".3f"), ("trajectory_valid", "", ".3f")]
    final = {r["objective"]: r for r in mod.summary_rows(rows, keys, "final")}
    m = 0.5 * (0.5 + 0.45)
    lo, hi = stats.t.interval(0.95, 1, loc=m, scale=stats.sem([0.5, 0.45]))
    assert final["gpt"]["trajectory_valid"] == pytest.approx(m)
    assert (final["gpt"]["trajectory_valid_low"], final["gpt"]["trajectory_valid_high"]) == pytest.approx((lo, hi))
    matched = {r["objective"]: r for r in mod.summary_rows(rows, keys, "matched_loss")}
    # seed 0: best losses 0.6 / 0.8 / 0.5 -> target 0.8: gpt step 10, nextlat step 10, mtp step 5
    # seed 1: best losses 0.7 / 0.65 / 0.55 -> target 0.7: gpt 10, nextlat 10, mtp 10 (step 5 is at 0.75)
    assert matched["mtp"]["step_used"] == "5 10" and matched["gpt"]["step_used"] == "10 10"
    assert matched["mtp"]["trajectory_valid"] == pytest.approx(0.5 * (0.1 + 0.8))
    assert "[" in mod.cell(final["gpt"], "trajectory_valid", ".3f")
