"""Hostile and real-world inputs: world specs, model configs as other tools write them
(TransformerLens training configs, Hugging Face config.json), JSON nested too deeply, empty
trip files. Every bad input is one stderr line and exit code 2 naming what is wrong; a
config as TransformerLens wrote it loads with TransformerLens's own defaults."""
import inspect
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import assert_one_line as _one_line
from helpers import run_in_process as _run
from test_foreign_models import legacy_state_dict, reference_forward, tiny_gpt2, tokens_for

from nextlat_probe.errors import CheckpointError, WorldError

DATA = Path(__file__).parent / "data"
#: Mess3 training config of the belief-geometry study (Shai et al. 2024, "Transformers
#: represent belief state geometry in their residual stream"), byte for byte as published
#: beside its checkpoints (github.com/adamimos/epsilon-transformers,
#: examples/models/mess3/train_config.json): no d_mlp, training keys mixed in.
PUBLISHED = DATA / "shai2024_mess3_train_config.json"
#: the same model with every default TransformerLens fills in written out by hand
PUBLISHED_FILLED = dict(n_layers=4, d_model=64, n_heads=1, d_head=8, d_mlp=4 * 64, n_ctx=10, d_vocab=3,
                        act_fn="relu", normalization_type="LN", eps=1e-5, attention_dir="causal", attn_only=False,
                        positional_embedding_type="standard", use_attn_scale=True, attn_scale=8 ** 0.5)


# ----------------------------------------------------------------------------- world specs


@pytest.mark.parametrize("spec,needle", [("mess3:x=", "x= has no value"), ("mess3:x=abc", "x='abc' is not a number"),
                                         ("mess3:x=0.05,x=0.1", "x given twice"), ("mess3:y=1", "unknown option 'y'"),
                                         ("mess3:x=0.1,,a=0.5", "empty option"), (":x=1", "empty world name")])
def test_bad_world_specs_are_one_line_in_probe_and_sweep(spec, needle, tiny_mess3_ckpts, tmp_path, capsys):
    code, _, err = _run("probe", [str(tiny_mess3_ckpts["gpt"]), "--world", spec], capsys)
    _one_line(code, err, needle, spec)
    code, _, err = _run("sweep", ["--world", spec, "--out", str(tmp_path / "sw"), "--dry-run"], capsys)
    _one_line(code, err, needle)
    assert not (tmp_path / "sw").exists()


def test_one_world_grammar():
    from nextlat_probe.sources import world_from_text
    from nextlat_probe.sweeps import parse_world
    from nextlat_probe.worlds import parse_spec

    assert parse_spec("Taxi:walk=shortest, holdout=0.2,map_size=8x12,origin=none") == (
        "taxi", {"walk": "shortest", "holdout": 0.2, "map_size": "8x12", "origin": None})
    assert parse_world("pathstar:degree=2,length=5") == ("pathstar", {"degree": 2, "length": 5})
    star = world_from_text("pathstar:degree=2,length=5")
    assert (star.degree, star.length) == (2, 5)
    for bad in ("taxi:map_size=3x", "taxi:map_size=x3", "taxi:map_size=6.5", "mess3:x=true", "a5:form=3"):
        with pytest.raises(WorldError):
            world_from_text(bad)
    with pytest.raises(WorldError, match="disagree"):
        world_from_text("taxi:map=a.json", map_path="b.json")


# ----------------------------------------------------------------------------- Hugging Face config.json


@pytest.mark.parametrize("change,needle", [({"activation_function": "evil"}, "activation_function"),
                                           ({"layer_norm_epsilon": "1e-5"}, "layer_norm_epsilon"),
                                           ({"attn_pdrop": "x"}, "attn_pdrop"),
                                           ({"scale_attn_by_inverse_layer_idx": "yes"}, "scale_attn_by_inverse_layer_idx"),
                                           ({"summary_type": 5}, "summary_type")])
def test_hf_config_values_are_named_in_one_line(change, needle, tmp_path, capsys):
    folder = tmp_path / "gpt2"
    tiny_gpt2().save_pretrained(folder)
    cfg = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**cfg, **change}))
    (tmp_path / "vocab.json").write_text(json.dumps({"0": 4, "1": 5, "2": 6}))
    capsys.readouterr()  # save_pretrained's own progress output
    code, _, err = _run("rank", [str(folder), "--hf", "--world", "mess3", "--vocab", str(tmp_path / "vocab.json"),
                                 "--n-seqs", "4"], capsys)
    _one_line(code, err, needle, "config.json")


# ----------------------------------------------------------------------------- JSON and trip files


def test_json_nested_too_deeply_is_one_line(tmp_path, capsys):
    deep = tmp_path / "deep.json"
    deep.write_text("[" * 100_000 + "]" * 100_000)
    (tmp_path / "trips.txt").write_text("0 1 E end\n")
    code, _, err = _run("mapping", ["--map", str(deep), "--trajectories", str(tmp_path / "trips.txt")], capsys)
    _one_line(code, err, str(deep), "nested")
    code, _, err = _run("taxi", ["info", "--map", str(deep)], capsys)
    _one_line(code, err, str(deep))
    from nextlat_probe.models.foreign import legacy_config

    with pytest.raises(CheckpointError, match="nested"):
        legacy_config(deep)


def test_mapping_on_an_empty_trips_file_is_one_line(tmp_path, capsys):
    from nextlat_probe.worlds.streetmap import synthetic_manhattan
    from nextlat_probe.worlds.trips import parse_trips

    street_map = synthetic_manhattan(3, 3, seed=0)
    street_map.to_json(tmp_path / "map.json")
    for name, text in (("empty.txt", ""), ("blank.txt", "\n\n")):
        (tmp_path / name).write_text(text)
        code, _, err = _run("mapping", ["--map", str(tmp_path / "map.json"), "--trajectories", str(tmp_path / name)],
                            capsys)
        _one_line(code, err, name, "no trips")
    assert parse_trips(street_map, []).origin.shape == (0,)


# ----------------------------------------------------------------------------- TransformerLens configs as published


def test_published_tl_config_loads_with_transformer_lens_defaults(tmp_path):
    """The study's config as published (no d_mlp, training keys such as optimizer and
    num_epochs) gives the same model as the config with TransformerLens's defaults written
    out by hand, and both equal a forward pass in plain torch."""
    from nextlat_probe.activations import collect
    from nextlat_probe.models.foreign import legacy_config, load_legacy_tl

    published = json.loads(PUBLISHED.read_text())
    assert "d_mlp" not in published and {"optimizer", "num_epochs", "learning_rate"} <= set(published)
    assert legacy_config(PUBLISHED) == legacy_config(PUBLISHED_FILLED) == {
        **{k: PUBLISHED_FILLED[k] for k in ("n_layers", "d_model", "n_heads", "d_head", "d_mlp", "n_ctx", "d_vocab",
                                            "act_fn", "normalization_type", "attention_dir", "attn_only", "eps",
                                            "use_attn_scale", "attn_scale")}}
    sd = legacy_state_dict(PUBLISHED_FILLED, seed=7)
    torch.save(sd, tmp_path / "model.pt")
    tokens = tokens_for(PUBLISHED_FILLED, n=3)
    _, got = collect(load_legacy_tl(tmp_path / "model.pt", PUBLISHED), tokens, [], return_logits=True)
    _, by_hand = collect(load_legacy_tl(tmp_path / "model.pt", PUBLISHED_FILLED), tokens, [], return_logits=True)
    np.testing.assert_array_equal(got, by_hand)
    np.testing.assert_allclose(got, reference_forward(sd, PUBLISHED_FILLED, tokens)[2], rtol=1e-5, atol=1e-5)


def test_published_tl_config_through_probe_in_sample(tmp_path, capsys):
    """``probe --tl-config`` with the published config, the published protocol (OLS fitted
    and scored on the same rows): its MSE equals sklearn's on hidden states of a plain-torch
    forward pass."""
    from sklearn.linear_model import LinearRegression

    from nextlat_probe.worlds import make_world

    sd = legacy_state_dict(PUBLISHED_FILLED, seed=8)
    torch.save(sd, tmp_path / "model.pt")
    argv = [str(tmp_path / "model.pt"), "--tl-config", str(PUBLISHED), "--world", "mess3:x=0.05,a=0.85",
            "--n-seqs", "48", "--in-sample", "--layers", "-1", "--alpha", "0", "--no-classifier", "--json"]
    code, out, err = _run("probe", argv, capsys)
    assert code == 0, err
    (rec,) = [r for r in json.loads(out) if r["layer"] == "L3"]
    from nextlat_probe.compare import Inputs, load_models

    tokens = Inputs(load_models([tmp_path / "model.pt"], world="mess3:x=0.05,a=0.85", config=PUBLISHED), 48,
                    None, seed=0).tokens(0)
    H = reference_forward(sd, PUBLISHED_FILLED, tokens)[0][4].reshape(-1, 64)
    B = make_world("mess3", x=0.05, a=0.85).beliefs(tokens).reshape(-1, 3)
    want = float(((LinearRegression().fit(H, B).predict(H) - B) ** 2).mean())
    assert rec["metrics"]["mse"] == pytest.approx(want, rel=2e-3)


def test_tl_keys_that_change_the_forward_are_honoured_or_named(tmp_path):
    from nextlat_probe.activations import collect
    from nextlat_probe.models.foreign import load_legacy_tl

    base = dict(n_layers=2, d_model=16, d_head=8, n_ctx=6, d_vocab=5, act_fn="gelu")  # n_heads, d_mlp: defaults
    full = {**base, "n_heads": 2, "d_mlp": 64, "normalization_type": "LN"}
    for extra in ({"attn_only": True}, {"attention_dir": "bidirectional"}):
        cfg = {**full, **extra}
        sd = legacy_state_dict(cfg, seed=2)
        torch.save(sd, tmp_path / "m.pt")
        _, got = collect(load_legacy_tl(tmp_path / "m.pt", {**base, **extra}), tokens_for(cfg), [], return_logits=True)
        np.testing.assert_allclose(got, reference_forward(sd, cfg, tokens_for(cfg))[2], rtol=1e-5, atol=1e-5)
        if "attention_dir" in extra:  # sensitive: the causal reading of the same weights differs
            assert not np.allclose(got, reference_forward(sd, full, tokens_for(cfg))[2], atol=1e-3)
    torch.save(legacy_state_dict(full), tmp_path / "m.pt")
    for key, value in (("positional_embedding_type", "rotary"), ("use_attn_scale", False), ("gated_mlp", True),
                       ("attention_dir", "sideways"), ("parallel_attn_mlp", True), ("attn_only", "yes")):
        with pytest.raises(CheckpointError, match=key) as exc:
            load_legacy_tl(tmp_path / "m.pt", {**base, key: value})
        assert len(str(exc.value).splitlines()) == 1
    # training-only keys are ignored, whatever they hold
    load_legacy_tl(tmp_path / "m.pt", {**base, "optimizer": {"name": "adam", "betas": [0.9, 0.99]}, "batch_size": "x",
                                        "learning_rate": None, "num_epochs": 10 ** 9, "seed": 1, "init_weights": True})


def test_tl_defaults_are_transformer_lens_own():
    """``LEGACY_DEFAULTS`` against the installed TransformerLens (a version that changed one
    would show here)."""
    from transformer_lens.config import TransformerBridgeConfig

    from nextlat_probe.models.foreign import LEGACY_DEFAULTS

    params = inspect.signature(TransformerBridgeConfig.__init__).parameters
    for key, value in LEGACY_DEFAULTS.items():
        if key == "positional_embedding_type":  # a dataclass field of the base class
            cfg = TransformerBridgeConfig(d_model=8, d_head=4, n_layers=1, n_ctx=4)
            assert getattr(cfg, key) == value
            assert cfg.d_mlp == 4 * 8 and cfg.n_heads == 8 // 4  # the derived defaults
        else:
            assert params[key].default == value, key
