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
                    "trajectory_valid@ood:pairs=held_out", "compression@ood:walk=shortest"):
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
