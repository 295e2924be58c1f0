"""Hugging Face export (``python -m nextlat_probe.export CKPT --hf OUT``) and reading it back.

transformers alone (no code of ours) must give our logits on the exported folder; the
round trip must give the same weights, p_psi, world and analysis records; architectures
GPT-2 cannot hold are refused in one line naming the feature; a folder that is not an
earlier export is never written over."""
import json
import shutil

import numpy as np
import pytest
import torch
from helpers import assert_light_help, run_cli

from nextlat_probe import load_checkpoint, load_model
from nextlat_probe.errors import CheckpointError, UsageError
from nextlat_probe.hfexport import DYNAMICS_FILE, EXPORT_CONFIG, ExportError, export_hf
from nextlat_probe.models.config import ModelConfig
from nextlat_probe.models.gpt2 import from_gpt2, gpt2_refusal, to_gpt2


@pytest.fixture(scope="module")
def exported(tiny_mess3_ckpts, tmp_path_factory):
    """The fixture's NextLat and GPT checkpoints exported once for the module."""
    base = tmp_path_factory.mktemp("export")
    out = {}
    for obj in ("nextlat", "gpt"):
        res = export_hf(tiny_mess3_ckpts[obj], base / f"{obj}-hf")
        out[obj] = res.path
    return out


def _sequences(world, n=8, length=12):
    return torch.as_tensor(world.sample(n, length, seed=np.random.default_rng(5)).tokens, dtype=torch.long)


def test_transformers_alone_gives_our_logits(tiny_mess3_ckpts, exported):
    from transformers import GPT2LMHeadModel

    for obj in ("nextlat", "gpt"):
        ck = load_checkpoint(tiny_mess3_ckpts[obj])
        hf = GPT2LMHeadModel.from_pretrained(str(exported[obj])).eval()
        tokens = _sequences(ck.world)
        with torch.no_grad():
            ours, theirs = ck.model(tokens), hf(tokens).logits
        torch.testing.assert_close(theirs, ours, rtol=0, atol=1e-5)
        # sensitive: a model of the other objective gives other logits
        assert (ours - load_checkpoint(tiny_mess3_ckpts["gpt" if obj == "nextlat" else "nextlat"]).model(tokens)).abs().max() > 1e-3
    files = sorted(p.name for p in exported["nextlat"].iterdir())
    assert {"config.json", "model.safetensors", DYNAMICS_FILE, EXPORT_CONFIG, "README.md"} <= set(files)
    assert not (exported["gpt"] / DYNAMICS_FILE).exists()  # GPT has no p_psi
    cfg = json.loads((exported["nextlat"] / "config.json").read_text())
    assert cfg["architectures"] == ["GPT2LMHeadModel"] and cfg["activation_function"] == "gelu"
    assert cfg["tie_word_embeddings"] is False and cfg["layer_norm_epsilon"] == 1e-5


def test_model_card_states_world_objective_steps_and_gap(tiny_mess3_ckpts, exported):
    ck = load_checkpoint(tiny_mess3_ckpts["nextlat"])
    card = (exported["nextlat"] / "README.md").read_text()
    assert "mess3 (x=0.05, a=0.85)" in card and "NextLat" in card
    assert f"{ck.step} of {ck.train_config['steps']}" in card
    assert f"{ck.metrics['val_loss']:.4f}" in card and f"{ck.metrics['gap_to_floor']:.4f}" in card
    assert "gap to the floor" in card and "GPT2LMHeadModel.from_pretrained" in card


@pytest.mark.slow
def test_round_trip_gives_the_same_weights_and_records(tiny_mess3_ckpts, exported):
    from nextlat_probe.compare import (
        Inputs,
        run_position_loss,
        run_probe,
        run_rank,
        run_speculative,
        run_transition,
    )

    ck = load_checkpoint(tiny_mess3_ckpts["nextlat"])
    ex = load_model(exported["nextlat"])
    for a, b in ((ck.model, ex.model), (ck.dynamics, ex.dynamics)):
        sa, sb = a.state_dict(), b.state_dict()
        assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)
    assert ex.world.spec() == ck.world.spec() and ex.step == ck.step and ex.metrics == ck.metrics
    assert ex.objective == "nextlat" and ex.model_config == ck.model_config

    def strip(records):
        out = []
        for r in records:
            r = {k: v for k, v in r.items() if k not in ("name", "source")}
            # measured times (and the cost ratio timed from them) differ between two runs
            timed = ("seconds_", "speedup", "draft_cost_ratio")
            r["metrics"] = {k: v for k, v in r["metrics"].items() if not k.startswith(timed)}
            out.append(r)
        return out

    runs = []
    for m in (ck, ex):
        inputs = Inputs([m], n_seqs=48, seed=3)
        recs = run_rank(None, inputs=inputs, layers="all") + run_probe(None, inputs=inputs, layers="last", n_test=16)
        recs += run_transition(None, inputs=inputs, n_test=16, horizon=2, fit_steps=40, seed=3)
        recs += run_position_loss([m], n_seqs=32, seed=3)
        recs += run_speculative([m], draft=("fixed:2",), n_prompts=4, max_new=4, seed=3)
        runs.append(strip(recs))
    assert len(runs[0]) >= 6 and json.dumps(runs[0], sort_keys=True, default=str) == json.dumps(runs[1], sort_keys=True, default=str)
    assert any(r["analysis"] == "speculative" and r["metrics"]["identical_to_greedy"] for r in runs[1])
    assert runs[1][0]["val_loss"] == pytest.approx(ck.metrics["val_loss"])


def test_mtp_heads_round_trip(tmp_path):
    from nextlat_probe.training.config import TrainConfig
    from nextlat_probe.training.trainer import train

    cfg = TrainConfig(world="mess3", objective="mtp", horizon=2, steps=3, batch_size=8, seq_len=8, eval_every=3,
                      save_every=3, n_val=8, device="cpu", warmup_steps=1)
    ckpt = train(cfg, out_dir=tmp_path / "mtp", progress=False).checkpoint
    ex = load_model(export_hf(ckpt, tmp_path / "mtp-hf").path)
    ck = load_checkpoint(ckpt)
    sa, sb = ck.mtp_heads.state_dict(), ex.mtp_heads.state_dict()
    assert len(sa) == 12 and all(torch.equal(sa[k], sb[k]) for k in sa)
    assert ex.objective == "mtp" and ex.dynamics is None


def test_conversion_is_a_bijection_on_native_weights():
    from nextlat_probe.models.transformer import build_transformer

    cfg = ModelConfig.from_preset("tiny", d_vocab=5, n_ctx=8)
    sd = build_transformer(cfg, seed=3).state_dict()
    back = from_gpt2(to_gpt2(sd, cfg), cfg)
    assert back.keys() == sd.keys() and all(torch.equal(back[k], sd[k]) for k in sd)
    hf = to_gpt2(sd, cfg)
    # q, k, v side by side in GPT-2's Conv1D layout ([in, out])
    torch.testing.assert_close(hf["transformer.h.1.attn.c_attn.weight"][:, 64:128], sd["blocks.1.attn.k.weight"].T)


@pytest.mark.parametrize("change, feature", [
    (dict(positional="rotary"), "rotary"),
    (dict(positional="none"), "no positions"),
    (dict(normalization="RMS"), "RMS"),
    (dict(act_fn="solu_ln"), "activation 'solu_ln'"),
    (dict(n_heads=2, d_head=16), "attention width"),
])
def test_architectures_gpt2_cannot_hold_are_named(change, feature):
    assert gpt2_refusal(ModelConfig.from_preset("tiny")) is None
    assert feature in gpt2_refusal(ModelConfig.from_preset("tiny", **change))
    assert "unembedding bias" in gpt2_refusal(ModelConfig.from_preset("tiny"), unembed_bias=torch.tensor([0.0, 0.1]))
    assert "attention scale" in gpt2_refusal(ModelConfig.from_preset("tiny"), attn_scale=2.0)


@pytest.mark.slow
def test_a_rotary_model_is_refused_in_one_line_and_nothing_written(tmp_path):
    from nextlat_probe.training.config import TrainConfig
    from nextlat_probe.training.trainer import train

    cfg = TrainConfig(world="mess3", positional="rotary", steps=1, batch_size=4, seq_len=6, eval_every=1, save_every=1,
                      n_val=4, device="cpu", warmup_steps=0)
    ckpt = train(cfg, out_dir=tmp_path / "rot", progress=False).checkpoint
    with pytest.raises(ExportError, match="rotary positions"):
        export_hf(ckpt, tmp_path / "new" / "rot-hf")
    assert not (tmp_path / "new").exists()  # the folder it created for the export is gone too
    res = run_cli("nextlat_probe.export", str(ckpt), "--hf", str(tmp_path / "rot-hf"), timeout=180)
    lines = res.stderr.strip().splitlines()
    assert res.returncode == 2 and len(lines) == 1 and "rotary" in lines[0] and lines[0].startswith("error:")
    assert not (tmp_path / "rot-hf").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["rot"]  # no temp folder left behind


def test_folders_that_are_not_earlier_exports_are_never_written(tiny_mess3_ckpts, exported, tmp_path):
    ckpt = tiny_mess3_ckpts["gpt"]
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")
    for overwrite in (False, True):
        with pytest.raises(ExportError, match="not an earlier export"):
            export_hf(ckpt, mine, overwrite=overwrite)
    assert [p.name for p in mine.iterdir()] == ["notes.txt"]
    with pytest.raises(ExportError, match="not a folder"):
        export_hf(ckpt, mine / "notes.txt")

    again = tmp_path / "again"
    shutil.copytree(exported["nextlat"], again)
    with pytest.raises(ExportError, match="--overwrite"):
        export_hf(ckpt, again)
    assert (again / DYNAMICS_FILE).exists()  # untouched
    res = export_hf(ckpt, again, overwrite=True)  # the GPT model replaces the NextLat export whole
    assert res.replaced and not (again / DYNAMICS_FILE).exists() and load_model(again).objective == "gpt"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["again", "mine"]  # no temp folders left

    (again / "tokenizer.json").write_text("{}")
    with pytest.raises(ExportError, match="tokenizer.json"):
        export_hf(ckpt, again, overwrite=True)
    empty = tmp_path / "empty"
    empty.mkdir()
    assert export_hf(ckpt, empty).path == empty and (empty / "model.safetensors").is_file()


def test_a_damaged_export_is_one_line(exported, tmp_path):
    f = tmp_path / "bad"
    shutil.copytree(exported["nextlat"], f)
    cfg = json.loads((f / "config.json").read_text())
    (f / "config.json").write_text(json.dumps({**cfg, "n_layer": 3}))
    with pytest.raises(CheckpointError, match=r"config.json: disagrees with nextlat_config.json: n_layer 3"):
        load_model(f)
    (f / "config.json").write_text(json.dumps(cfg))
    (f / DYNAMICS_FILE).unlink()
    with pytest.raises(CheckpointError, match="has no nextlat_dynamics.safetensors"):
        load_model(f)
    shutil.copy(exported["gpt"] / "model.safetensors", f / "model.safetensors")
    (f / "model.safetensors").write_bytes((f / "model.safetensors").read_bytes()[:200])
    with pytest.raises(CheckpointError, match="model.safetensors"):
        load_model(f)
    with pytest.raises(UsageError, match="carries its own world"):
        load_model(exported["gpt"], world="mess3")
    # read as a plain GPT-2 folder on request (--hf): then it is a model from elsewhere
    plain = load_model(exported["gpt"], hf=True, world="mess3")
    assert plain.objective == "external"


@pytest.mark.slow
def test_rank_cli_runs_on_an_export(exported):
    res = run_cli("nextlat_probe.rank", str(exported["nextlat"]), "--n-seqs", "24", "--json", timeout=300)
    assert res.returncode == 0, res.stderr
    recs = json.loads(res.stdout)
    assert recs and recs[0]["objective"] == "nextlat" and recs[0]["val_loss"] is not None
    assert recs[0]["name"] == exported["nextlat"].name


def test_cli_help_is_fast_and_imports_no_torch():
    assert_light_help("nextlat_probe.export", "--hf", "--overwrite")
