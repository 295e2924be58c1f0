"""``train --time-limit``: a run stops cleanly before its limit with a resumable checkpoint,
and resuming it ends exactly where an uninterrupted run ends (``torch.equal`` on every
tensor of the checkpoint). The limit is tested on a clock the test drives, not by waiting."""
from __future__ import annotations

import json

import pytest
import torch
from helpers import run_cli

from nextlat_probe.checkpoint import read_checkpoint
from nextlat_probe.errors import EXIT_TIME_LIMIT
from nextlat_probe.training.config import TrainConfig
from nextlat_probe.training.trainer import TimeLimit, train


class StepClock:
    """A clock that moves ``tick`` seconds each time it is read."""

    def __init__(self, tick: float) -> None:
        self.now, self.tick = 0.0, tick

    def __call__(self) -> float:
        t = self.now
        self.now += self.tick
        return t


def tensors(obj, prefix=""):
    """Every tensor of a (nested) checkpoint dict, by path."""
    if torch.is_tensor(obj):
        yield prefix, obj
    elif isinstance(obj, dict):
        for k, v in obj.items():
            yield from tensors(v, f"{prefix}/{k}")
    elif isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            yield from tensors(v, f"{prefix}/{i}")


def assert_same_checkpoint(a, b):
    ta, tb = dict(tensors(read_checkpoint(a))), dict(tensors(read_checkpoint(b)))
    assert ta.keys() == tb.keys() and len(ta) > 20
    for k in ta:
        assert torch.equal(ta[k], tb[k]), k


@pytest.mark.parametrize("world, options, objective", [
    ("mess3", {}, "nextlat"),
    ("taxi", {"map_size": 4, "walk": "shortest", "holdout": 0.2}, "mtp"),
])
def test_stopped_by_the_limit_then_resumed_equals_an_uninterrupted_run(tmp_path, world, options, objective):
    cfg = dict(world=world, world_options=options, objective=objective, horizon=2, steps=16, batch_size=8,
               eval_every=5, save_every=5, n_val=16, device="cpu", warmup_steps=3)
    straight = train(TrainConfig(**cfg), tmp_path / "straight", progress=False)
    assert not straight.stopped_by_time
    # the clock moves 10 s per read and is read once before each step: 100 s with no margin
    # leave room for steps 1..9 (step 10 would end at the limit)
    limit = TimeLimit(100.0, clock=StepClock(10.0), margin=0.0)
    part = train(TrainConfig(**cfg), tmp_path / "chunked", progress=False, time_limit=limit)
    assert part.stopped_by_time and part.step == 9 and part.total_steps == 16
    ck = read_checkpoint(part.checkpoint)
    assert ck["step"] == 9 and ck["metrics"]["step"] == 9  # its own evaluation
    log = [json.loads(line) for line in part.metrics_path.read_text().splitlines()]
    assert {"event": "time_limit", "at_step": 9, "total_steps": 16} in log
    # a second chunk that ends before the run does, then the last one
    mid = train(None, tmp_path / "chunked", resume=part.checkpoint, progress=False,
                time_limit=TimeLimit(30.0, clock=StepClock(10.0), margin=0.0))
    assert mid.stopped_by_time and mid.step == 11
    end = train(None, tmp_path / "chunked", resume=mid.checkpoint, progress=False,
                time_limit=TimeLimit(1e6, clock=StepClock(10.0), margin=0.0))
    assert not end.stopped_by_time and end.step == 16
    assert_same_checkpoint(straight.checkpoint, end.checkpoint)


def test_no_time_left_still_leaves_a_checkpoint_to_resume(tmp_path):
    cfg = TrainConfig(world="mess3", objective="gpt", steps=6, batch_size=8, eval_every=3, save_every=3, n_val=16,
                      device="cpu")
    res = train(cfg, tmp_path / "r", progress=False, time_limit=TimeLimit(1.0, clock=StepClock(5.0), margin=0.0))
    assert res.stopped_by_time and res.step == 0 and read_checkpoint(res.checkpoint)["step"] == 0
    done = train(None, tmp_path / "r", resume=res.checkpoint, progress=False)
    assert done.step == 6 and not done.stopped_by_time


@pytest.mark.slow
def test_cli_time_limit_exit_code_message_and_resume(tmp_path):
    out = tmp_path / "run"
    # 0.001 minutes have passed before training starts: the run stops at once, resumable
    res = run_cli("nextlat_probe.train", "--world", "mess3", "--steps", "8", "--batch-size", "8", "--n-val", "16",
                  "--device", "cpu", "--no-progress", "--time-limit", "0.001", "--out", str(out))
    assert res.returncode == EXIT_TIME_LIMIT == 75, res.stderr
    assert "stopped by --time-limit" in res.stdout and f"--resume {out / 'ckpt.pt'}" in res.stdout
    again = run_cli("nextlat_probe.train", "--resume", str(out / "ckpt.pt"), "--time-limit", "30", "--no-progress")
    assert again.returncode == 0, again.stderr
    assert read_checkpoint(out / "ckpt.pt")["step"] == 8
    bad = run_cli("nextlat_probe.train", "--world", "mess3", "--time-limit", "0", "--out", str(tmp_path / "x"))
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and "--time-limit" in bad.stderr
    assert not (tmp_path / "x").exists()


def test_train_pair_stops_at_the_limit_and_the_same_call_continues_exactly(tmp_path):
    from nextlat_probe.errors import TimeLimitReached
    from nextlat_probe.experiments import train_pair

    kw = dict(seeds=[0], steps=8, objectives=("gpt", "nextlat"), batch_size=8, n_val=16, eval_every=4,
              save_every=4, device="cpu")
    straight = train_pair("mess3", out=tmp_path / "straight", **kw)
    # 10 s per clock read, 120 s: the first run (8 steps) fits, the second stops partway
    with pytest.raises(TimeLimitReached, match="run the same command again"):
        train_pair("mess3", out=tmp_path / "chunked", time_limit=TimeLimit(120.0, clock=StepClock(10.0), margin=0.0),
                   **kw)
    steps = [read_checkpoint(tmp_path / "chunked" / f"{o}-seed0" / "ckpt.pt")["step"] for o in ("gpt", "nextlat")]
    assert steps[0] == 8 and 0 <= steps[1] < 8
    again = train_pair("mess3", out=tmp_path / "chunked", **kw)
    for a, b in zip(straight, again):
        assert_same_checkpoint(a.checkpoint, b.checkpoint)
