"""Training loop: reproducibility, exact resume, NaN handling, the CLI."""
import json

import pytest
import torch
from helpers import run_cli

from nextlat_probe.checkpoint import load_checkpoint, read_checkpoint
from nextlat_probe.training import trainer as trainer_mod
from nextlat_probe.training.config import TrainConfig
from nextlat_probe.training.trainer import TrainingDiverged, train


def cfg(**kw):
    base = dict(world="mess3", objective="nextlat", horizon=2, steps=20, batch_size=8, seq_len=10, eval_every=5, save_every=5, n_val=16, device="cpu", warmup_steps=3, preset="tiny")
    base.update(kw)
    return TrainConfig(**base)


def state(path):
    d = read_checkpoint(path)
    return d["model"], d["dynamics"], d["step"]


def assert_same(a, b):
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_same_seed_same_checkpoint_and_different_seed_differs(tmp_path):
    a = train(cfg(steps=6), tmp_path / "a", progress=False).checkpoint
    b = train(cfg(steps=6), tmp_path / "b", progress=False).checkpoint
    c = train(cfg(steps=6, seed=1), tmp_path / "c", progress=False).checkpoint
    assert_same(state(a)[0], state(b)[0])
    assert not torch.equal(state(a)[0]["embed.weight"], state(c)[0]["embed.weight"])


@pytest.mark.parametrize("objective", ["gpt", "nextlat"])
def test_resume_is_bit_exact(tmp_path, objective):
    straight = train(cfg(objective=objective), tmp_path / "straight", progress=False).checkpoint
    half = train(cfg(objective=objective), tmp_path / "resumed", progress=False, stop_at=10).checkpoint
    assert state(half)[2] == 10
    resumed = train(None, tmp_path / "resumed", resume=half, progress=False).checkpoint
    m1, d1, s1 = state(straight)
    m2, d2, s2 = state(resumed)
    assert s1 == s2 == 20
    assert_same(m1, m2)
    if objective == "nextlat":
        assert_same(d1, d2)
    # and the optimiser state too
    o1, o2 = read_checkpoint(straight)["optimizer"], read_checkpoint(resumed)["optimizer"]
    for k in o1["state"]:
        assert torch.equal(o1["state"][k]["exp_avg"], o2["state"][k]["exp_avg"])


def test_nan_stops_and_keeps_last_good_checkpoint(tmp_path, monkeypatch):
    real = trainer_mod.compute_losses
    calls = {"n": 0}

    def poisoned(*a, **k):
        out = real(*a, **k)
        calls["n"] += 1
        if calls["n"] == 8:  # step 8: after the step-5 checkpoint
            out["loss"] = out["loss"] * float("nan")
        return out

    monkeypatch.setattr(trainer_mod, "compute_losses", poisoned)
    with pytest.raises(TrainingDiverged, match="step 8"):
        train(cfg(), tmp_path / "run", progress=False)
    m, _, step = state(tmp_path / "run" / "ckpt.pt")
    assert step == 5
    assert all(torch.isfinite(v).all() for v in m.values() if v.is_floating_point())


def test_metrics_log_has_every_term_and_floor(tmp_path):
    res = train(cfg(steps=10), tmp_path / "m", progress=False)
    recs = [json.loads(line) for line in open(res.metrics_path)]
    steps = [r for r in recs if "ce" in r]
    assert steps and all({"loss", "ce", "next_h", "kl", "tokens_per_s", "lr"} <= r.keys() for r in steps)
    for r in steps:  # total = CE + 1·next_h + 1·KL (default lambdas)
        assert r["loss"] == pytest.approx(r["ce"] + r["next_h"] + r["kl"], rel=1e-5)
    evals = [r for r in recs if "val_loss" in r]
    assert evals[-1]["step"] == 10
    # the floor is the exact cross-entropy of the world on the validation tokens
    from nextlat_probe.worlds import make_world

    world = make_world("mess3")
    val = world.sample(16, 10, seed=trainer_mod.val_rng(0)).tokens
    assert evals[-1]["val_floor"] == pytest.approx(world.exact_cross_entropy(val), rel=1e-9)


def test_load_checkpoint_round_trip(tmp_path):
    res = train(cfg(steps=4), tmp_path / "r", progress=False)
    ck = load_checkpoint(res.checkpoint)
    assert ck.objective == "nextlat" and ck.step == 4 and ck.dynamics is not None
    assert ck.world.spec() == read_checkpoint(res.checkpoint)["world_spec"]
    tokens = torch.as_tensor(ck.world.sample(4, 10, seed=3).tokens)
    with torch.no_grad():
        logits = ck.model(tokens)
    val = ck.world.sample(16, 10, seed=trainer_mod.val_rng(0)).tokens
    assert trainer_mod.evaluate_ce(ck.model, ck.world, val) == pytest.approx(ck.metrics["val_loss"], rel=1e-5)
    assert logits.shape == (4, 10, ck.world.vocab_size)


def test_train_cli_and_errors(tmp_path):
    out = tmp_path / "cli"
    args = ("--world", "z1r", "--objective", "gpt", "--steps", "5", "--batch-size", "4", "--seq-len", "8", "--out", str(out), "--no-progress", "--n-val", "8")
    r = run_cli("nextlat_probe.train", *args)
    assert r.returncode == 0, r.stderr
    assert "exact floor" in r.stdout and (out / "ckpt.pt").is_file()
    again = run_cli("nextlat_probe.train", *args)
    assert again.returncode == 2 and "already exists" in again.stderr and len(again.stderr.strip().splitlines()) == 1
    other = run_cli("nextlat_probe.train", "--world", "z1r", "--steps", "5", "--out", str(out))
    assert other.returncode == 2 and "different run" in other.stderr and len(other.stderr.strip().splitlines()) == 1
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    r = run_cli("nextlat_probe.train", "--resume", str(bad))
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1 and str(bad) in r.stderr
    r = run_cli("nextlat_probe.train", "--world", "mess3", "--map-size", "4", "--out", str(tmp_path / "x"))
    assert r.returncode == 2 and "--map-size" in r.stderr
    r = run_cli("nextlat_probe.train", "--world", "mess3", "--steps", "-1", "--out", str(tmp_path / "x"))
    assert r.returncode == 2


def test_infinite_gradient_stops_before_the_update(tmp_path, monkeypatch):
    """A finite loss with an inf gradient must not reach the weights or the checkpoint."""
    real = trainer_mod.compute_losses
    calls = {"n": 0}

    def poisoned(model, *a, **k):
        out = real(model, *a, **k)
        calls["n"] += 1
        if calls["n"] == 7:  # step 7: after the step-5 checkpoint
            next(model.parameters()).register_hook(lambda g: torch.full_like(g, float("inf")))
        return out

    monkeypatch.setattr(trainer_mod, "compute_losses", poisoned)
    with pytest.raises(TrainingDiverged, match="gradient norm .* step 7"):
        train(cfg(objective="gpt", grad_clip=0.0), tmp_path / "run", progress=False)
    m, _, step = state(tmp_path / "run" / "ckpt.pt")
    assert step == 5
    assert all(torch.isfinite(v).all() for v in m.values() if v.is_floating_point())


def test_fresh_run_over_an_old_run_is_refused_or_moves_it_aside(tmp_path):
    out = tmp_path / "run"
    train(cfg(steps=6, keep_every=3), out, progress=False)
    old = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    assert {"ckpt.pt", "run.json", "metrics.jsonl", "ckpt_step3.pt", "ckpt_step6.pt"} <= old.keys()
    with pytest.raises(ValueError, match="already exists"):
        train(cfg(steps=4, keep_every=4), out, progress=False)
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()} == old  # refused: untouched
    train(cfg(steps=4, keep_every=4), out, progress=False, overwrite=True)
    assert sorted(p.name for p in out.glob("ckpt_step*.pt")) == ["ckpt_step4.pt"]
    # the old run was moved aside whole, not deleted
    (backup,) = out.glob(".replaced-*")
    assert {p.name: p.read_bytes() for p in backup.iterdir()} == old
    # kept checkpoints carry the validation loss of their own step
    assert read_checkpoint(out / "ckpt_step4.pt")["metrics"]["step"] == 4


def test_checkpoint_file_mode_follows_umask(tmp_path):
    import os
    import stat

    res = train(cfg(steps=1), tmp_path / "m", progress=False)
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(os.stat(res.checkpoint).st_mode) == 0o666 & ~umask


def test_prefetched_batches_give_the_same_run(tmp_path):
    """Batches drawn ahead in a thread (the host sampler) are the batches of the same steps:
    bit-identical weights, with or without prefetch, also across a resume."""
    taxi = dict(world="taxi", world_options={"map_size": 4, "max_len": 8}, seq_len=None, steps=12, sampler="host")
    plain = train(cfg(**taxi), tmp_path / "plain", progress=False, prefetch=False).checkpoint
    ahead = train(cfg(**taxi), tmp_path / "ahead", progress=False, prefetch=True).checkpoint
    assert_same(state(plain)[0], state(ahead)[0])
    assert_same(state(plain)[1], state(ahead)[1])
    half = train(cfg(**taxi), tmp_path / "half", progress=False, prefetch=True, stop_at=7).checkpoint
    done = train(resume=half, progress=False, prefetch=True, out_dir=tmp_path / "half").checkpoint
    assert_same(state(plain)[0], state(done)[0])


def test_prefetch_error_reaches_the_trainer_and_the_thread_ends(tmp_path, monkeypatch):
    import threading

    from nextlat_probe.worlds.hmm import HMM

    real = HMM.sample
    seen = []

    def flaky(self, n, length=None, seed=None):
        seen.append(1)
        if len(seen) == 4:
            raise RuntimeError("sampler broke")
        return real(self, n, length, seed=seed)

    monkeypatch.setattr(HMM, "sample", flaky)
    with pytest.raises(RuntimeError, match="sampler broke"):
        train(cfg(steps=20, sampler="host"), tmp_path / "r", progress=False, prefetch=True)
    assert not [t for t in threading.enumerate() if t.name == "batch-prefetch" and t.is_alive()]
    assert len(seen) <= 6  # the thread stopped drawing after the error (at most `depth` ahead)


def test_new_runs_sample_on_the_device_and_old_checkpoints_resume_on_the_host(tmp_path):
    """A new run draws its batches with the device sampler (recorded with its chunk); a
    checkpoint from before device sampling (no ``sampler_used``) resumes with the host
    sampler it was trained with, bit for bit."""
    new = read_checkpoint(train(cfg(steps=2), tmp_path / "new", progress=False).checkpoint)["train_config"]
    assert new["sampler_used"] == "device" and new["sampler_device"] == "cpu" and new["sampler_chunk"] >= 1
    assert new["sampler"] is None and new["tf32"] is True and new["tf32_used"] is False  # TF32 is for CUDA
    assert new["finite_check_every"] == 1
    straight = train(cfg(sampler="host"), tmp_path / "straight", progress=False).checkpoint
    half = train(cfg(sampler="host"), tmp_path / "old", progress=False, stop_at=10).checkpoint
    raw = torch.load(half, weights_only=True)
    for key in ("sampler", "sampler_used", "tf32", "tf32_used", "finite_check_every", "data"):  # not written before
        del raw["train_config"][key]
    torch.save(raw, half)
    resumed = train(None, tmp_path / "old", resume=half, progress=False).checkpoint
    assert read_checkpoint(resumed)["train_config"]["sampler_used"] == "host"
    assert_same(state(straight)[0], state(resumed)[0])
    assert_same(state(straight)[1], state(resumed)[1])


def test_device_side_finiteness_checks_skip_the_update_and_stop_at_the_next_read(tmp_path, monkeypatch):
    """check_every > 1 (the CUDA default): no step waits to know whether it was finite; a
    non-finite step's update is skipped on the device (fused AdamW's found_inf), the flag is
    read every check_every steps and at every log, evaluation and save, and training stops
    there naming the bad step; no checkpoint sees it."""
    from nextlat_probe.worlds import make_world

    c = cfg(objective="gpt")
    run = trainer_mod._new_run(c, make_world("mess3"), fused=True)
    run.check_every, run.guard = 4, trainer_mod._FiniteGuard(run.device)
    assert all(g["fused"] for g in run.opt.param_groups)
    trainer_mod._train_step(run, 1)
    before = {k: v.clone() for k, v in run.model.state_dict().items()}
    steps_before = [run.opt.state[p]["step"].clone() for p in run.params()]
    real = trainer_mod.compute_losses

    def poisoned(*a, **k):
        out = real(*a, **k)
        out["loss"] = out["loss"] * float("nan")
        return out

    monkeypatch.setattr(trainer_mod, "compute_losses", poisoned)
    trainer_mod._train_step(run, 2)  # no exception: nothing was read
    monkeypatch.setattr(trainer_mod, "compute_losses", real)
    assert_same(before, run.model.state_dict())  # the update was skipped ...
    assert all(torch.equal(a, run.opt.state[p]["step"]) for a, p in zip(steps_before, run.params()))  # ... wholly
    trainer_mod._train_step(run, 3)  # and training goes on from the good weights
    assert not torch.equal(before["embed.weight"], run.model.state_dict()["embed.weight"])
    with pytest.raises(TrainingDiverged, match="loss became nan at step 2; its update was skipped and training stopped at step 3"):
        run.guard.check(run, 3)

    calls = {"n": 0}

    def nan_at_7(*a, **k):
        out = real(*a, **k)
        calls["n"] += 1
        if calls["n"] == 7:
            out["loss"] = out["loss"] * float("nan")
        return out

    monkeypatch.setattr(trainer_mod, "compute_losses", nan_at_7)
    with pytest.raises(TrainingDiverged, match="at step 7; its update was skipped and training stopped at step 8"):
        train(c, tmp_path / "run", progress=False, check_every=4)
    saved = read_checkpoint(tmp_path / "run" / "ckpt.pt")
    assert saved["step"] == 5 and saved["train_config"]["finite_check_every"] == 4
    assert all(torch.isfinite(v).all() for v in saved["model"].values() if v.is_floating_point())
    assert not [r for r in map(json.loads, open(tmp_path / "run" / "metrics.jsonl")) if r.get("step", 0) > 5]


@pytest.mark.slow
def test_compiled_step_is_one_graph_without_recompiles_under_autocast(tmp_path):
    """--compile traces a step's forward and losses as ONE graph over the model's parameters
    (fastpath.FastModel): under bf16 autocast no dtype-driven recompile happens (dynamo is
    told to raise on any recompile), and the compiled losses are the eager ones."""
    import torch._dynamo

    from nextlat_probe.models.objective import compute_losses
    from nextlat_probe.models.transformer import last_resid_hook
    from nextlat_probe.worlds import make_world

    world = make_world("taxi", map_size=4, max_len=6)
    run = trainer_mod._new_run(cfg(world="taxi", world_options={"map_size": 4, "max_len": 6}, seq_len=None, horizon=2,
                                   batch_size=4), world)
    run.precision = "bf16"  # CPU autocast: the failure was bf16 activations meeting float32 code
    torch._dynamo.reset()
    with torch._dynamo.config.patch(error_on_recompile=True):
        trainer_mod._prepare_step(run, compile=True)
        for step in (1, 2, 3):
            batch, _ = trainer_mod._next_batch(run, step)
            with run.autocast():
                eager = compute_losses(run.model, run.aux, batch, run.ocfg, last_resid_hook(run.mcfg), dense=True)
            losses, total = trainer_mod._losses(run, batch)
            for k in eager:
                assert float(losses[k].detach()) == pytest.approx(float(eager[k].detach()), rel=2e-2, abs=2e-3), k
            trainer_mod._update(run, step, total, trainer_mod._backward(run, step, losses, total))
    assert run.compiled and run.compile_mode == "default"
