"""Multi-process (DDP) training on CPU (gloo): the same run as one process, rank 0 writes,
resume needs the same number of processes, a killed rank leaves the last good checkpoint;
precision options; the single-process default is the plain loop, bit for bit.

Two processes train every case of ``CASES`` (and the variants below) once, in one
``torch.multiprocessing`` launch shared by the module; the kill test runs the real CLI under
``torchrun``.
"""
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp

from nextlat_probe import cli
from nextlat_probe import train as train_cli
from nextlat_probe.checkpoint import read_checkpoint
from nextlat_probe.errors import UsageError
from nextlat_probe.models.objective import Batch, ObjectiveConfig, compute_losses, loss_denominators
from nextlat_probe.models.transformer import last_resid_hook
from nextlat_probe.training import trainer as trainer_mod
from nextlat_probe.training.batches import make_batches
from nextlat_probe.training.config import TrainConfig
from nextlat_probe.training.log import read_metrics
from nextlat_probe.training.trainer import train
from nextlat_probe.worlds import make_world

ROOT = Path(__file__).resolve().parents[1]
TAXI = {"map_size": 4, "max_len": 12, "min_len": 2}
CASES = {
    "mess3_nextlat": dict(world="mess3", objective="nextlat", horizon=2, seq_len=10),
    "taxi_nextlat": dict(world="taxi", world_options=TAXI, objective="nextlat", horizon=2),
    "mess3_mtp_nopos": dict(world="mess3", objective="mtp", horizon=2, seq_len=10, positional="none"),
    "taxi_gpt_hooked": dict(world="taxi", world_options=TAXI, objective="gpt", fast_forward=False),
}
WORLD_SIZE = 2


def cfg(name: str, **kw) -> TrainConfig:
    base = dict(steps=6, batch_size=8, eval_every=3, save_every=3, n_val=16, device="cpu", warmup_steps=2, preset="tiny")
    return TrainConfig(**{**base, **CASES[name], **kw})


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, port: int, base: str) -> None:
    """One of the two processes: joins the group, then trains every case and variant."""
    base = Path(base)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(WORLD_SIZE),
                      LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    torch.distributed.init_process_group("gloo", rank=rank, world_size=WORLD_SIZE)
    try:
        for name in CASES:
            train(cfg(name), base / name, progress=False)
        # each rank normalising by its OWN counts: what the global counts are there to avoid
        real = trainer_mod.loss_denominators
        trainer_mod.loss_denominators = lambda *a, **k: {}
        try:
            train(cfg("taxi_nextlat"), base / "taxi_per_rank", progress=False)
        finally:
            trainer_mod.loss_denominators = real
        # a NaN loss on rank 1 alone: the check reads the all-reduced loss, so both ranks stop at step 5
        real_losses, calls = trainer_mod.compute_losses, {"n": 0}

        def poisoned(*a, **k):
            out = real_losses(*a, **k)
            calls["n"] += 1
            if rank == 1 and calls["n"] == 5:
                out["loss"] = out["loss"] * float("nan")
            return out

        trainer_mod.compute_losses = poisoned
        try:
            train(cfg("mess3_nextlat"), base / "nan", progress=False)
            (base / f"nan.{rank}.txt").write_text("no error")
        except trainer_mod.TrainingDiverged as exc:
            (base / f"nan.{rank}.txt").write_text(str(exc))
        finally:
            trainer_mod.compute_losses = real_losses
        # interrupted after step 3, resumed by two processes to step 6
        half = train(cfg("mess3_nextlat"), base / "resumed", progress=False, stop_at=3).checkpoint
        if rank == 0:
            (base / "half_step.txt").write_text(str(read_checkpoint(half)["step"]))
        train(None, base / "resumed", resume=half, progress=False)
        # refusals reach every rank (none waits forever): an odd global batch, an occupied folder
        for what, call in {"odd_batch": lambda: train(cfg("mess3_nextlat", batch_size=7), base / "odd", progress=False),
                           "occupied": lambda: train(cfg("mess3_nextlat", seed=5), base / "mess3_nextlat",
                                                     progress=False)}.items():
            try:
                call()
                (base / f"{what}.{rank}.txt").write_text("no error")
            except UsageError as exc:
                (base / f"{what}.{rank}.txt").write_text(str(exc))
    finally:
        torch.distributed.destroy_process_group()


@pytest.fixture(scope="module")
def ddp_runs(tmp_path_factory):
    base = tmp_path_factory.mktemp("ddp")
    ctx = mp.start_processes(_worker, args=(_free_port(), str(base)), nprocs=WORLD_SIZE, join=False, start_method="spawn")
    deadline = time.monotonic() + 240
    while not ctx.join(timeout=1):
        if time.monotonic() > deadline:
            for p in ctx.processes:
                p.kill()
            pytest.fail("the two-process runs did not finish in time (a deadlock?)")
    return base


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One torch thread here too, like each of the two processes (a tiny model gains nothing
    from more, and loses a lot on a busy machine)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def single_runs(tmp_path_factory):
    base = tmp_path_factory.mktemp("single")
    return {name: train(cfg(name), base / name, progress=False).checkpoint for name in CASES}


#: attention key biases: their gradient is zero in exact arithmetic (a bias on every key adds
#: the same q·b to all scores of a query, which the softmax ignores), so Adam turns float
#: round-off into full-size steps: they differ between ANY two reduction orders (a change of
#: thread count does it too) and are compared through the logits instead
NOISE_ONLY = ("attn.k.bias",)


def assert_close_weights(a: dict, b: dict, atol=1e-5) -> None:
    assert a.keys() == b.keys()
    for k in a:
        if not k.endswith(NOISE_ONLY):
            assert torch.allclose(a[k], b[k], atol=atol, rtol=0), (k, float((a[k] - b[k]).abs().max()))


def logits_of(path: Path, tokens: np.ndarray) -> torch.Tensor:
    from nextlat_probe.sources import load_model

    ck = load_model(path)
    with torch.no_grad():
        return ck.model(torch.as_tensor(tokens))


@pytest.mark.parametrize("name", list(CASES))
def test_two_processes_follow_the_single_process_run(ddp_runs, single_runs, name):
    two, one = read_checkpoint(ddp_runs / name / "ckpt.pt"), read_checkpoint(single_runs[name])
    assert two["step"] == one["step"] == 6
    for part in ("model", "dynamics", "mtp_heads"):  # p_psi and the MTP heads are synced too
        assert (two.get(part) is None) == (one.get(part) is None), part
        if two.get(part) is not None:
            assert_close_weights(two[part], one[part])
    world = make_world(CASES[name]["world"], **CASES[name].get("world_options", {}))
    tokens = world.sample(8, CASES[name].get("seq_len") or trainer_mod.default_seq_len(world), seed=11).tokens
    assert torch.allclose(logits_of(ddp_runs / name / "ckpt.pt", tokens), logits_of(single_runs[name], tokens), atol=1e-4)
    # the logged losses are the global ones, not rank 0's share
    logged = {r["step"]: r for r in read_metrics(ddp_runs / name / "metrics.jsonl") if "ce" in r}
    plain = {r["step"]: r for r in read_metrics(single_runs[name].parent / "metrics.jsonl") if "ce" in r}
    assert logged.keys() == plain.keys() and logged
    for step in logged:
        for key in ("loss", "ce", "next_h", "kl", "mtp", "grad_norm"):
            if key in plain[step]:
                assert logged[step][key] == pytest.approx(plain[step][key], rel=1e-4, abs=1e-6), (step, key)
    assert two["metrics"]["val_loss"] == pytest.approx(one["metrics"]["val_loss"], rel=1e-5)
    assert two["train_config"]["world_size"] == 2 and one["train_config"]["world_size"] == 1
    if name == "mess3_mtp_nopos":  # the frozen position table stayed zero under DDP
        assert not two["model"]["pos_embed.weight"].any()


def test_taxi_needs_the_global_counts(ddp_runs, single_runs):
    """Padded trips: the two halves of a batch score different numbers of tokens, so each
    rank normalising by its own counts trains another model."""
    c = cfg("taxi_nextlat")
    world = make_world("taxi", **TAXI)
    seq_len = trainer_mod.default_seq_len(world)
    half = c.batch_size // 2
    source = make_batches("device", world, c.batch_size, seq_len, c.seed, torch.device("cpu"))  # the runs' batches
    differ = 0
    for step in range(1, c.steps + 1):
        tokens = source.tokens(step).numpy()
        _, scored = world.output_targets(tokens)
        differ += int(scored[:half].sum() != scored[half:].sum())
    assert differ >= c.steps - 1, differ  # (by chance one step's halves may score equally many)
    per_rank = read_checkpoint(ddp_runs / "taxi_per_rank" / "ckpt.pt")["model"]
    one = read_checkpoint(single_runs["taxi_nextlat"])["model"]
    assert_close_weights(read_checkpoint(ddp_runs / "taxi_nextlat" / "ckpt.pt")["model"], one)
    with pytest.raises(AssertionError):
        assert_close_weights(per_rank, one)


@pytest.mark.parametrize("objective", ["nextlat", "mtp", "gpt"])
def test_partial_losses_with_global_counts_sum_to_the_batch_loss(objective):
    """No processes: the losses (and gradients) of two shards of a taxi batch, each divided
    by the whole batch's counts, add up to the whole batch's; by their own counts they do not."""
    world = make_world("taxi", **TAXI)
    c = cfg("taxi_nextlat", objective=objective)
    mcfg, ocfg, model, aux, _, _ = trainer_mod._build(c, world, trainer_mod.default_seq_len(world), torch.device("cpu"))
    tokens = world.sample(8, trainer_mod.default_seq_len(world), seed=3).tokens
    hook = last_resid_hook(mcfg)
    params = [p for m in (model, aux) if m is not None for p in m.parameters() if p.requires_grad]

    def losses_and_grads(batches):
        total, grads = {}, [torch.zeros_like(p) for p in params]
        for b in batches:
            out = compute_losses(model, aux, b, ocfg, hook)
            for k, v in out.items():
                total[k] = total.get(k, 0.0) + float(v.detach())
            for g, p in zip(grads, torch.autograd.grad(out["loss"], params, allow_unused=True)):
                if p is not None:
                    g += p
        return total, grads

    whole, g_whole = losses_and_grads([trainer_mod.to_batch(world, tokens, torch.device("cpu"))])
    shards = [trainer_mod.shard_batch(world, tokens, torch.device("cpu"), ocfg, r, 2) for r in range(2)]
    parts, g_parts = losses_and_grads(shards)
    for k in whole:
        assert parts[k] == pytest.approx(whole[k], rel=1e-5, abs=1e-7), k
    for a, b in zip(g_whole, g_parts):
        assert torch.allclose(a, b, atol=1e-6)
    own = [Batch(b.tokens, b.targets, b.scored, b.valid) for b in shards]  # each shard's own counts
    wrong, _ = losses_and_grads(own)
    assert wrong["ce"] != pytest.approx(whole["ce"], rel=1e-3)


def test_rank_zero_writes_once_and_the_checkpoint_loads_everywhere(ddp_runs):
    from nextlat_probe.sources import load_model

    folder = ddp_runs / "mess3_nextlat"
    ck = load_model(folder / "ckpt.pt")
    assert ck.step == 6 and ck.dynamics is not None
    raw = read_checkpoint(folder / "ckpt.pt")
    for part in ("model", "dynamics"):
        assert not [k for k in raw[part] if k.startswith("module.")]
    lines = [json.loads(x) for x in (folder / "metrics.jsonl").read_text().splitlines()]
    starts = [r for r in lines if r.get("event") == "start"]
    assert len(starts) == 1 and starts[0]["world_size"] == 2 and starts[0]["precision_used"] == "fp32"
    evals = [r["step"] for r in lines if "val_loss" in r]
    assert evals == [0, 3, 6]  # validation once per evaluation, not once per rank
    assert not [p for p in folder.iterdir() if p.name.endswith(".tmp")]


def test_two_process_resume_is_the_uninterrupted_run(ddp_runs):
    assert (ddp_runs / "half_step.txt").read_text() == "3"
    a = read_checkpoint(ddp_runs / "resumed" / "ckpt.pt")
    b = read_checkpoint(ddp_runs / "mess3_nextlat" / "ckpt.pt")
    assert a["step"] == b["step"] == 6
    for part in ("model", "dynamics"):
        assert all(torch.equal(a[part][k], b[part][k]) for k in b[part]), part


def test_a_nan_on_one_rank_stops_every_rank_at_the_same_step(ddp_runs):
    texts = [(ddp_runs / f"nan.{rank}.txt").read_text() for rank in range(WORLD_SIZE)]
    assert texts[0] == texts[1] and "loss became nan at step 5" in texts[0] and "(step 3)" in texts[0], texts
    assert read_checkpoint(ddp_runs / "nan" / "ckpt.pt")["step"] == 3


def test_refusals_reach_every_rank(ddp_runs):
    for rank in range(WORLD_SIZE):
        assert "does not split evenly over 2 processes" in (ddp_runs / f"odd_batch.{rank}.txt").read_text()
        assert "different run" in (ddp_runs / f"occupied.{rank}.txt").read_text()
    assert not (ddp_runs / "odd").exists()


def run(argv, capsys):
    with pytest.raises(SystemExit) as info:
        cli.run_main(train_cli.main, [str(a) for a in argv])
    out, err = capsys.readouterr()
    return info.value.code, out, err


def test_resume_with_another_number_of_processes_is_refused(ddp_runs, capsys):
    ckpt = ddp_runs / "mess3_nextlat" / "ckpt.pt"
    before = ckpt.read_bytes()
    code, _, err = run(["--resume", ckpt, "--steps", "8", "--no-progress"], capsys)
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1, err
    assert "trained by 2 processes" in lines[0] and "not 1" in lines[0]
    assert ckpt.read_bytes() == before


KILL_RANK_1 = """
import os, sys
from nextlat_probe.training import trainer
real = trainer._train_step
def step(run, s, *rest):
    if run.dist.rank == 1 and s == 5:  # rank 1 dies in step 5, after the step-4 checkpoint
        os._exit(1)
    return real(run, s, *rest)
trainer._train_step = step
from nextlat_probe.cli import run_main
from nextlat_probe.train import main
run_main(main, sys.argv[1:])
"""


def test_killing_one_rank_ends_the_job_and_keeps_the_last_good_checkpoint(tmp_path):
    script = tmp_path / "kill_rank_1.py"
    script.write_text(KILL_RANK_1)
    out = tmp_path / "run"
    args = ["--world", "mess3", "--objective", "nextlat", "--horizon", "2", "--steps", "8", "--batch-size", "8",
            "--seq-len", "10", "--eval-every", "2", "--save-every", "2", "--n-val", "16", "--warmup", "2",
            "--device", "cpu", "--out", str(out), "--no-progress"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1"}
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                        str(script), *args], capture_output=True, text=True, timeout=150, cwd=tmp_path, env=env)
    assert r.returncode != 0, r.stderr[-3000:]
    ours = [line for line in r.stderr.splitlines() if line.startswith("error: rank 0:")]
    # rank 0 says what happened in one line, unless torchrun's SIGTERM ended it first
    assert len(ours) <= 1 and all("last good checkpoint" in line and "step 4" in line for line in ours), r.stderr[-3000:]
    from nextlat_probe.checkpoint import load_checkpoint

    ck = load_checkpoint(out / "ckpt.pt")
    assert ck.step == 4 and ck.metrics["step"] == 4
    assert all(torch.isfinite(p).all() for p in ck.model.parameters())
    assert read_checkpoint(out / "ckpt.pt")["train_config"]["world_size"] == 2


def test_bf16_on_cpu_is_refused_in_one_line(tmp_path, capsys):
    out = tmp_path / "bf16"
    code, _, err = run(["--world", "mess3", "--steps", "2", "--batch-size", "4", "--seq-len", "8", "--n-val", "8",
                        "--device", "cpu", "--precision", "bf16", "--out", out, "--no-progress"], capsys)
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and "bf16" in lines[0] and "CUDA" in lines[0], err
    assert not out.exists()
    with pytest.raises(UsageError, match="precision"):
        TrainConfig(precision="fp16")
    assert trainer_mod.resolve_precision(None, torch.device("cpu")) == "fp32"


def test_bf16_autocast_path_keeps_float32_losses():
    """The bf16 branch of a step (CUDA-only from the CLI) run on the CPU's autocast: the
    forward is bf16, every loss and the weights stay float32."""
    run = trainer_mod._new_run(cfg("taxi_nextlat"), make_world("taxi", **TAXI))
    run.precision = "bf16"
    with run.autocast():
        assert torch.is_autocast_enabled("cpu")
    losses, gnorm, _ = trainer_mod._train_step(run, 1)
    assert all(v.dtype == torch.float32 and torch.isfinite(v) for v in losses.values()) and torch.isfinite(gnorm)
    assert all(p.dtype == torch.float32 for p in run.params())


def test_compile_failure_falls_back_with_one_warning(tmp_path, monkeypatch, capsys):
    def broken_compile(fn, *a, **k):
        def compiled(*args, **kwargs):
            raise RuntimeError("no C++ compiler here\nand a long traceback")
        return compiled

    monkeypatch.setattr(torch, "compile", broken_compile)
    c = cfg("mess3_nextlat", steps=2, eval_every=2, save_every=2)
    a = train(c, tmp_path / "compiled", progress=False, compile=True).checkpoint
    warnings = [line for line in capsys.readouterr().err.splitlines() if line.startswith("warning:")]
    assert warnings == ["warning: torch.compile failed (no C++ compiler here); training uncompiled"]
    b = train(c, tmp_path / "plain", progress=False).checkpoint
    A, B = read_checkpoint(a), read_checkpoint(b)
    assert A["train_config"]["compile"] is False
    assert all(torch.equal(A["model"][k], B["model"][k]) for k in B["model"])


def test_single_process_default_is_the_plain_loop_bit_for_bit(tmp_path):
    """``train`` without the new options (and with explicit fp32) is exactly the loop it
    always was: full-batch means, no autocast, no wrapper effects."""
    c = cfg("taxi_nextlat")
    runs = [train(c, tmp_path / "default", progress=False).checkpoint,
            train(cfg("taxi_nextlat", precision="fp32"), tmp_path / "fp32", progress=False).checkpoint]
    world = make_world("taxi", **TAXI)
    seq_len = trainer_mod.default_seq_len(world)
    mcfg, ocfg, model, aux, opt, sched = trainer_mod._build(c, world, seq_len, torch.device("cpu"))
    params = [p for g in opt.param_groups for p in g["params"]]
    source = make_batches("device", world, c.batch_size, seq_len, c.seed, torch.device("cpu"))  # the default sampler
    for step in range(1, c.steps + 1):
        tokens = source.tokens(step).numpy()  # the targets below are the world's own (numpy)
        targets, scored = world.output_targets(tokens)
        batch = Batch(*(torch.as_tensor(a) for a in (np.asarray(tokens, np.int64), targets, scored,
                                                     world.position_mask(tokens))))
        loss = compute_losses(model, aux, batch, ocfg, last_resid_hook(mcfg))["loss"]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, c.grad_clip)
        opt.step()
        sched.step()
    for path in runs:
        saved = read_checkpoint(path)
        assert saved["train_config"]["precision_used"] == "fp32" and saved["train_config"]["world_size"] == 1
        for part, module in (("model", model), ("dynamics", aux)):
            sd = module.state_dict()
            assert all(torch.equal(saved[part][k], sd[k]) for k in sd), part


def test_loss_denominators_default_to_the_batch_itself():
    scored = np.array([[1, 1, 0, 0], [1, 0, 0, 0]], dtype=bool)
    valid = np.array([[1, 1, 1, 0], [1, 1, 0, 0]], dtype=bool)
    assert loss_denominators(scored, valid, ObjectiveConfig("nextlat", 2)) == {"n_scored": 3.0, "n_pairs": (3.0, 1.0)}
    assert loss_denominators(scored, valid, ObjectiveConfig("mtp", 2)) == {"n_scored": 3.0, "n_head_scored": (1.0, 0.0)}
    assert Batch(*(torch.zeros(1, 2),) * 4).n_scored is None
