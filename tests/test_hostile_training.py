"""Nothing lost, nothing hangs: training and checkpoints against hostile or unlucky input.

Each test is one case of the issue: a run folder that must stay byte-identical, a crafted
checkpoint that must fail fast in one line, an interrupted run that must resume cleanly.
"""
import hashlib
import json
import os
import pickle
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from helpers import edited, no_building

from nextlat_probe import cli
from nextlat_probe import train as train_cli
from nextlat_probe.checkpoint import CheckpointError, load_checkpoint, read_checkpoint
from nextlat_probe.errors import DeviceError, NextLatError
from nextlat_probe.training import trainer as trainer_mod
from nextlat_probe.training.config import TrainConfig
from nextlat_probe.training.log import read_metrics, truncate_metrics

ROOT = Path(__file__).resolve().parents[1]
BASE = ["--world", "mess3", "--steps", "4", "--batch-size", "4", "--seq-len", "8", "--n-val", "8", "--eval-every", "2",
        "--save-every", "2", "--warmup", "1", "--device", "cpu", "--no-progress"]


def run(argv, capsys):
    """The train CLI in-process, as ``python -m nextlat_probe.train`` runs it."""
    with pytest.raises(SystemExit) as info:
        cli.run_main(train_cli.main, [str(a) for a in argv])
    out, err = capsys.readouterr()
    return info.value.code, out, err


def one_error_line(code, err, expected_code=2):
    lines = err.strip().splitlines()
    assert code == expected_code and len(lines) == 1, (code, err)
    return lines[0]


def snapshot(folder: Path) -> dict[str, str]:
    """sha256 of every file under ``folder`` (relative names)."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def trained(tmp_path, capsys, name, *extra):
    out = tmp_path / name
    code, _, err = run(["--out", out, *BASE, *extra], capsys)
    assert code == 0, err
    return out


def cfg(**kw):
    base = dict(world="mess3", objective="gpt", steps=4, batch_size=4, seq_len=8, eval_every=2, save_every=2, n_val=8,
                device="cpu", warmup_steps=1, preset="tiny")
    base.update(kw)
    return TrainConfig(**base)


# 1. a run folder has an identity; nothing writes into a folder holding another run

def test_resume_or_fresh_run_into_another_runs_folder_is_refused(tmp_path, capsys):
    a = trained(tmp_path, capsys, "a", "--world", "mess3", "--objective", "gpt")
    b = trained(tmp_path, capsys, "b", "--world", "z1r", "--objective", "nextlat")
    assert json.loads((b / "run.json").read_text())["objective"] == "nextlat"
    (b / ".ckpt.pt.k1ll3d.tmp").write_bytes(b"a refused command touches nothing, not even this")
    before = snapshot(b)
    line = one_error_line(*run(["--resume", a / "ckpt.pt", "--out", b, "--no-progress"], capsys)[::2])
    assert "different run" in line and str(b) in line
    line = one_error_line(*run(["--out", b, *BASE, "--world", "mess3"], capsys)[::2])
    assert "different run" in line
    assert snapshot(b) == before


def test_resume_into_a_new_folder_or_its_own_is_allowed(tmp_path, capsys):
    a = trained(tmp_path, capsys, "a", "--world", "mess3")
    code, _, err = run(["--resume", a / "ckpt.pt", "--out", tmp_path / "copy", "--steps", "6", "--no-progress"], capsys)
    assert code == 0, err
    assert read_checkpoint(tmp_path / "copy" / "ckpt.pt")["step"] == 6
    assert json.loads((tmp_path / "copy" / "run.json").read_text())["seed"] == 0
    code, _, err = run(["--resume", a / "ckpt.pt", "--steps", "6", "--no-progress"], capsys)
    assert code == 0, err
    # the same run continued twice from the same checkpoint: the same weights
    w1, w2 = (read_checkpoint(p / "ckpt.pt")["model"] for p in (a, tmp_path / "copy"))
    assert all(torch.equal(w1[k], w2[k]) for k in w1)


# 2. a fresh run deletes nothing it did not write

def test_fresh_run_deletes_no_file_named_like_a_temporary(tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    mine = {".ckpt.pt.mine.tmp": b"my notes", ".metrics.jsonl.backup.tmp": b"my backup",
            ".ckpt.pt.abcd1234.tmp": b"shaped exactly like a killed save's leftover"}
    for name, data in mine.items():
        (out / name).write_bytes(data)
    code, _, err = run(["--out", out, *BASE], capsys)
    assert code == 0, err
    assert all((out / name).read_bytes() == data for name, data in mine.items())
    # only the exact shape of the writer's temp names is pointed out, in one warning line
    warning = [line for line in err.splitlines() if line.startswith("warning:")]
    assert len(warning) == 1 and ".ckpt.pt.abcd1234.tmp" in warning[0] and "mine" not in warning[0]


def test_resume_from_a_kept_checkpoint_never_rewinds_the_run(tmp_path, capsys):
    out = trained(tmp_path, capsys, "run", "--steps", "8", "--keep-every", "2")
    assert read_checkpoint(out / "ckpt.pt")["step"] == 8
    before = snapshot(out)
    for ck, extra in ((out / "ckpt_step2.pt", []), (out / "ckpt_step4.pt", ["--steps", "10"])):
        line = one_error_line(*run(["--resume", ck, *extra, "--no-progress"], capsys)[::2])
        assert "step 8" in line and "rewind" in line and "new --out" in line, line
        line = one_error_line(*run(["--resume", ck, "--out", out, "--no-progress"], capsys)[::2])
        assert "rewind" in line
    assert snapshot(out) == before  # ckpt.pt, the kept files and every metrics row as they were
    # into a new folder it is a new run, continued from step 2
    branch = tmp_path / "branch"
    code, _, err = run(["--resume", out / "ckpt_step2.pt", "--out", branch, "--no-progress"], capsys)
    assert code == 0, err
    assert read_checkpoint(branch / "ckpt.pt")["step"] == 8
    first = json.loads((branch / "metrics.jsonl").read_text().splitlines()[0])
    assert first["resumed_at"] == 2 and first["resumed_from"].endswith("ckpt_step2.pt")
    # resuming the latest state in place stays allowed (a kept file of the same step too)
    code, _, err = run(["--resume", out / "ckpt_step8.pt", "--steps", "10", "--no-progress"], capsys)
    assert code == 0, err
    assert read_checkpoint(out / "ckpt.pt")["step"] == 10

def test_fresh_run_keeps_a_killed_runs_files(tmp_path, capsys):
    out = trained(tmp_path, capsys, "run", "--keep-every", "2")
    (out / "ckpt.pt").unlink()  # as if killed before its first save of ckpt.pt
    before = snapshot(out)
    line = one_error_line(*run(["--out", out, *BASE, "--keep-every", "2"], capsys)[::2])
    assert "--overwrite" in line
    assert snapshot(out) == before
    (out / "run.json").unlink()  # leftovers of an unidentified run
    before = snapshot(out)
    line = one_error_line(*run(["--out", out, *BASE], capsys)[::2])
    assert "unidentified" in line and "ckpt_step2.pt" in line
    assert snapshot(out) == before


def test_unrelated_files_do_not_block_and_are_kept(tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    code, _, err = run(["--out", out, *BASE], capsys)
    assert code == 0, err
    assert (out / "notes.txt").read_text() == "mine"


# 3. --overwrite moves the old run aside first; a NaN afterwards blames no old file

def test_overwrite_moves_old_run_aside_and_a_nan_names_no_old_checkpoint(tmp_path, capsys, monkeypatch):
    out = trained(tmp_path, capsys, "run", "--keep-every", "2")
    before = snapshot(out)

    def poisoned(*a, **k):
        return {"loss": torch.tensor(float("nan")), "ce": torch.tensor(0.0)}

    monkeypatch.setattr(trainer_mod, "compute_losses", poisoned)
    code, _, err = run(["--out", out, *BASE, "--overwrite"], capsys)
    line = one_error_line(code, err, expected_code=3)
    assert "no checkpoint was saved" in line and "ckpt.pt" not in line
    (backup,) = out.glob(".replaced-*")
    assert snapshot(backup) == before  # every old file, byte for byte
    # the new run saved nothing: what it wrote (run.json, metrics.jsonl) is gone, the old run kept
    assert [p.name for p in out.iterdir()] == [backup.name]


# 4. a crafted checkpoint is rejected before any model is allocated

@pytest.fixture(scope="module")
def tiny_ckpts(tmp_path_factory):
    base = tmp_path_factory.mktemp("tiny")
    return {obj: trainer_mod.train(cfg(objective=obj), base / obj, progress=False).checkpoint for obj in ("gpt", "nextlat")}


@pytest.mark.parametrize("field", ["n_layers", "d_model", "n_ctx", "d_vocab", "n_heads", "d_mlp", "d_head"])
def test_huge_model_config_fails_fast(tiny_ckpts, tmp_path, monkeypatch, field):
    bad = edited(tiny_ckpts["gpt"], tmp_path / "huge.pt", lambda raw: raw["model_config"].__setitem__(field, 10**9))
    no_building(monkeypatch)
    with pytest.raises(CheckpointError, match=field) as info:
        load_checkpoint(bad)
    assert "\n" not in str(info.value)
    with pytest.raises(CheckpointError, match=field):
        trainer_mod.train(None, tmp_path / "out", resume=bad, progress=False)
    assert not (tmp_path / "out").exists()


def test_huge_config_under_a_memory_limit(tiny_ckpts, tmp_path):
    """The real thing: 10**9 layers with 3 GB of address space ends in one error line."""
    bad = edited(tiny_ckpts["gpt"], tmp_path / "huge.pt", lambda raw: raw["model_config"].__setitem__("n_layers", 10**9))
    code = textwrap.dedent(f"""
        import resource, sys
        resource.setrlimit(resource.RLIMIT_AS, (3 << 30, 3 << 30))
        from nextlat_probe.checkpoint import CheckpointError, load_checkpoint
        try:
            load_checkpoint({str(bad)!r})
        except CheckpointError as exc:
            print("refused:", exc)
    """)
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert r.returncode == 0 and "refused:" in r.stdout and "n_layers" in r.stdout, r.stderr[-2000:]


@pytest.mark.parametrize("case", ["blocks", "embed", "pos", "mlp", "missing", "dyn_shape"])
def test_config_inconsistent_with_tensors(tiny_ckpts, tmp_path, monkeypatch, case):
    def edit(raw):
        mc = raw["model_config"]
        if case == "blocks":
            mc["n_layers"] += 1  # within bounds, but one block short in the weights
        elif case == "embed":
            raw["model"]["embed.weight"] = torch.zeros(mc["d_vocab"] + 1, mc["d_model"])
        elif case == "pos":
            raw["model"]["pos_embed.weight"] = torch.zeros(mc["n_ctx"] * 4, mc["d_model"])
        elif case == "mlp":
            mc["d_mlp"] *= 2
        elif case == "missing":
            del raw["model"]["unembed.weight"]
        elif case == "dyn_shape":
            raw["dynamics"]["fc2.weight"] = torch.zeros(3, 3)

    bad = edited(tiny_ckpts["nextlat"], tmp_path / "bad.pt", edit)
    no_building(monkeypatch)
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(bad)
    assert str(info.value).startswith(str(bad)) and "\n" not in str(info.value)


# 5. a checkpoint's metrics are those of its own weights, and its weights are finite

def test_checkpoint_metrics_are_its_own_even_when_training_diverges(tmp_path):
    out = tmp_path / "run"
    # a huge learning rate: the loss explodes after a few steps; evaluation is rare
    with pytest.raises(trainer_mod.TrainingDiverged):
        trainer_mod.train(cfg(lr=1e5, steps=20, save_every=1, eval_every=1000, warmup_steps=0, grad_clip=0.0), out, progress=False)
    ck = load_checkpoint(out / "ckpt.pt")
    assert ck.step >= 1
    for w in [*ck.model.parameters()]:
        assert torch.isfinite(w).all()
    val = ck.world.sample(8, 8, seed=trainer_mod.val_rng(0)).tokens
    assert ck.metrics["step"] == ck.step
    assert trainer_mod.evaluate_ce(ck.model, ck.world, val) == pytest.approx(ck.metrics["val_loss"], rel=1e-5)


# 6. bad files and arguments: one line, exit 2

def test_resume_of_edited_checkpoint_is_one_line(tiny_ckpts, tmp_path, capsys):
    def wrong_shape(raw):
        raw["model"]["blocks.0.attn.q.weight"] = torch.zeros(5, 5)

    for name, edit in {"shape": wrong_shape, "no_dyn": lambda raw: raw.__setitem__("dynamics", None),
                       "no_opt": lambda raw: raw.pop("optimizer")}.items():
        bad = edited(tiny_ckpts["nextlat"], tmp_path / f"{name}.pt", edit)
        line = one_error_line(*run(["--resume", bad, "--out", tmp_path / f"out_{name}", "--no-progress"], capsys)[::2])
        assert str(bad) in line
        assert not (tmp_path / f"out_{name}").exists()


def test_out_naming_a_file_and_unknown_device(tmp_path, capsys):
    f = tmp_path / "file"
    f.write_text("keep me")
    line = one_error_line(*run(["--out", f, *BASE], capsys)[::2])
    assert "not a folder" in line and f.read_text() == "keep me"
    line = one_error_line(*run(["--out", tmp_path / "new" / "run", *BASE[:-3], "--device", "tpu", "--no-progress"], capsys)[::2])
    assert "unknown device 'tpu' (use auto, cpu, cuda or cuda:N)" in line
    assert not (tmp_path / "new").exists()  # a failed command leaves no folder it created


def test_resolve_device_is_the_one_resolver(monkeypatch):
    from nextlat_probe.models.transformer import resolve_device

    assert resolve_device("cpu") == torch.device("cpu") and resolve_device(None).type in ("cpu", "cuda")
    for bad in ("tpu", "cuda:x", "gpu0", ""):
        with pytest.raises(DeviceError, match="unknown device"):
            resolve_device(bad)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    assert resolve_device("cuda:0") == torch.device("cuda:0")
    with pytest.raises(DeviceError, match="cuda:3"):
        resolve_device("cuda:3")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(DeviceError, match="CUDA is not available"):
        resolve_device("cuda")
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    with pytest.raises(DeviceError, match="MPS"):
        resolve_device("mps")
    with pytest.raises(DeviceError):
        load_checkpoint("/nonexistent.pt", device="tpu")  # the device is checked first
    assert issubclass(DeviceError, NextLatError)


# 7. --resume honours or refuses every conflicting argument; nothing is silently clamped

@pytest.mark.parametrize("extra", [["--world", "z1r"], ["--objective", "nextlat"], ["--lr", "0.5"], ["--batch-size", "7"],
                                   ["--seq-len", "6"], ["--horizon", "3"], ["--preset", "mini"], ["--seed", "4"],
                                   ["--steps", "2"], ["--steps", "3"], ["--no-fast-forward"]])
def test_resume_refuses_conflicting_arguments(tmp_path, capsys, extra):
    out = trained(tmp_path, capsys, "run", "--steps", "4")
    ck = out / "ckpt.pt"
    if extra == ["--steps", "3"]:  # a run stopped at step 2 of 4: --steps 3 would change its schedule
        ck = edited(ck, tmp_path / "half.pt", lambda raw: raw.update(step=2))
    before = snapshot(out)
    line = one_error_line(*run(["--resume", ck, *extra, "--no-progress"], capsys)[::2])
    assert extra[0] in line
    assert snapshot(out) == before


def test_resume_honours_matching_arguments_and_more_steps(tmp_path, capsys):
    out = trained(tmp_path, capsys, "run")
    code, _, err = run(["--resume", out / "ckpt.pt", "--world", "mess3", "--lr", "0.001", "--steps", "6", "--no-progress"], capsys)
    assert code == 0, err
    assert read_checkpoint(out / "ckpt.pt")["step"] == 6


@pytest.mark.parametrize("steps", ["0", "-5"])
def test_zero_or_negative_steps_are_refused(tmp_path, capsys, steps):
    line = one_error_line(*run(["--out", tmp_path / "z", *BASE, "--steps", steps], capsys)[::2])
    assert f"--steps must be positive, got {steps}" in line
    assert not (tmp_path / "z").exists()


def test_diverged_resume_into_a_new_out_leaves_nothing_behind(tmp_path, capsys, monkeypatch):
    a = trained(tmp_path, capsys, "a")
    new = tmp_path / "new"

    def poisoned(*args, **kwargs):
        return {"loss": torch.tensor(float("nan")), "ce": torch.tensor(0.0)}

    with monkeypatch.context() as m:
        m.setattr(trainer_mod, "compute_losses", poisoned)
        line = one_error_line(*run(["--resume", a / "ckpt.pt", "--out", new, "--steps", "6", "--no-progress"],
                                   capsys)[::2], expected_code=3)
    assert "loss became nan" in line and str(a / "ckpt.pt") in line  # the last good one is the resumed file
    assert not new.exists()  # no run.json, no metrics.jsonl, no folder
    code, _, err = run(["--out", new, *BASE], capsys)  # so a fresh run there starts normally
    assert code == 0, err


def test_horizon_beyond_the_sequence_is_refused_not_clamped(tmp_path, capsys):
    line = one_error_line(*run(["--out", tmp_path / "h", *BASE, "--objective", "nextlat", "--horizon", "8"], capsys)[::2])
    assert "horizon 8" in line
    assert not (tmp_path / "h").exists()


def test_nextlat_checkpoint_without_p_psi_is_an_error(tiny_ckpts, tmp_path):
    bad = edited(tiny_ckpts["nextlat"], tmp_path / "nodyn.pt", lambda raw: raw.update(dynamics=None, dynamics_config=None))
    with pytest.raises(CheckpointError, match="p_psi"):
        load_checkpoint(bad)


# 8. leftovers of a kill: temp files removed, the log truncated to the resumed step

KILL_DURING_SECOND_SAVE = """
import os, signal, sys, torch
real = torch.save
calls = {"n": 0}
def save(obj, f, *a, **k):
    calls["n"] += 1
    if calls["n"] == 2:  # the step-4 save: half a file, then the power goes
        f.write(b"PK\\x03\\x04 partial")
        f.flush()
        os.kill(os.getpid(), signal.SIGKILL)
    return real(obj, f, *a, **k)
torch.save = save
from nextlat_probe.train import main
main(sys.argv[1:])
"""


def test_sigkill_during_save_then_resume(tmp_path, capsys):
    args = ["--world", "mess3", "--steps", "6", "--batch-size", "4", "--seq-len", "8", "--n-val", "8", "--eval-every", "1",
            "--save-every", "2", "--warmup", "1", "--device", "cpu", "--no-progress"]
    killed = tmp_path / "killed"
    r = subprocess.run([sys.executable, "-c", KILL_DURING_SECOND_SAVE, "--out", str(killed), *args],
                       capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert r.returncode == -9, r.stderr[-2000:]
    temps = [p.name for p in killed.iterdir() if p.name.endswith(".tmp")]
    assert temps and all(n.startswith(".ckpt.pt.") for n in temps)
    assert read_checkpoint(killed / "ckpt.pt")["step"] == 2
    assert any(r.get("step") == 4 for r in read_metrics(killed / "metrics.jsonl"))  # logged past the save

    code, _, err = run(["--resume", killed / "ckpt.pt", "--no-progress"], capsys)
    assert code == 0, err
    # the leftover is pointed out, never deleted (no process can know that a run wrote it)
    assert sorted(p.name for p in killed.iterdir() if p.name.endswith(".tmp")) == sorted(temps)
    assert "warning:" in err and temps[0] in err
    recs = [json.loads(line) for line in (killed / "metrics.jsonl").read_text().splitlines()]
    for kind in ("val_loss", "ce"):
        steps = [r["step"] for r in recs if kind in r]
        assert steps == sorted(set(steps)), (kind, steps)  # each step once, in order
    # and the resumed run is the uninterrupted one, bit for bit
    straight = trained(tmp_path, capsys, "straight", *args[:-3])
    a, b = (read_checkpoint(p / "ckpt.pt")["model"] for p in (straight, killed))
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_truncate_metrics(tmp_path):
    log = tmp_path / "metrics.jsonl"
    lines = [{"event": "start"}, {"step": 0, "val_loss": 1.0}, {"step": 2, "ce": 1.0, "loss": 1.0},
             {"step": 2, "val_loss": 0.9}, {"step": 4, "ce": 0.8, "loss": 0.8}]
    log.write_text("".join(json.dumps(r) + "\n" for r in lines) + '{"step": 6, "ce"')
    assert truncate_metrics(log, 2) == 2
    assert [json.loads(x) for x in log.read_text().splitlines()] == lines[:4]
    assert truncate_metrics(log, 2) == 0


def test_read_metrics_tolerates_what_a_killed_or_resumed_run_left(tmp_path):
    log = tmp_path / "metrics.jsonl"
    log.write_text('{"event": "start"}\n{"step": 0, "val_loss": 2}\n{"step": 2, "ce": 1, "loss": 1}\n'
                   'not json\n{"step": 1, "ce": 0.5, "loss": 0.5}\n{"step": 3, "ce"')
    with pytest.warns(UserWarning, match="line 4"):
        recs = read_metrics(log)
    # the resumed step 1 replaces the old train record of step 2; eval records are kept;
    # the half-written last line is dropped silently
    assert recs == [{"event": "start"}, {"step": 0, "val_loss": 2}, {"step": 1, "ce": 0.5, "loss": 0.5}]


# 9. a refused pickle prints exactly one line (no torch warning first)

class Evil:
    def __reduce__(self):
        return (os.system, ("touch pwned",))


def test_malicious_pickle_is_one_line(tmp_path):
    bad = tmp_path / "evil.pt"
    bad.write_bytes(pickle.dumps(Evil(), protocol=4))  # protocol 4 makes torch warn before refusing
    # a real process: pytest would swallow the warning that must not reach stderr
    r = subprocess.run([sys.executable, "-m", "nextlat_probe.train", "--resume", str(bad)],
                       capture_output=True, text=True, timeout=120, cwd=tmp_path,
                       env={**os.environ, "PYTHONPATH": str(ROOT)})
    line = one_error_line(r.returncode, r.stderr)
    assert "refused" in line and str(bad) in line
    assert not (tmp_path / "pwned").exists()


def test_last_resid_hook_names_the_last_block():
    from nextlat_probe.models.config import ModelConfig
    from nextlat_probe.models.transformer import build_transformer, final_hook_name, last_resid_hook

    mcfg = ModelConfig.from_preset("tiny", n_ctx=8, d_vocab=3)
    name = last_resid_hook(mcfg)
    assert name == final_hook_name(mcfg) == f"blocks.{mcfg.n_layers - 1}.hook_resid_post"
    assert name in build_transformer(mcfg).hook_dict
