"""Hostile checkpoints: a damaged, crafted or foreign file is refused in one line BEFORE any
of its tensors is used or any model is built — corrupt bytes, NaN or integer weights in any
saved module, expanded views that stand for gigabytes, configs TransformerLens cannot
build, fields of the wrong type, pickles that would run code."""
import importlib
import os
import pickle
import zipfile

import pytest
import torch
from helpers import edited, no_building

from nextlat_probe.checkpoint import CheckpointError, load_checkpoint
from nextlat_probe.cli import run_main
from nextlat_probe.safeio import torch_load_plain


def _run(module, argv, capsys):
    with pytest.raises(SystemExit) as exc:
        run_main(importlib.import_module(f"nextlat_probe.{module}").main, [str(a) for a in argv])
    cap = capsys.readouterr()
    return exc.value.code, cap.err.strip()


def one_line(code, err):
    assert code == 2, err
    assert len(err.splitlines()) == 1 and err.startswith("error:"), err
    return err


# --------------------------------------------------------------------------------------
# 1. bytes flipped inside a tensor: the zip CRC no longer matches

def flip_tensor_bytes(src, dst, n=64):
    """A copy of ``src`` with ``n`` bytes of its largest tensor record inverted in place
    (the zip archive stays well-formed; only its CRC-32 of that record no longer matches)."""
    data = bytearray(src.read_bytes())
    with zipfile.ZipFile(src) as z:
        info = max((i for i in z.infolist() if "/data/" in i.filename), key=lambda i: i.file_size)
    start = info.header_offset
    name_len = int.from_bytes(data[start + 26:start + 28], "little")
    extra_len = int.from_bytes(data[start + 28:start + 30], "little")
    body = start + 30 + name_len + extra_len
    assert info.file_size >= 4 * n
    for i in range(body + 16, body + 16 + n):
        data[i] ^= 0xFF
    dst.parent.mkdir(parents=True, exist_ok=True)
    dst.write_bytes(bytes(data))
    return dst


def test_flipped_bytes_in_a_tensor_are_refused_as_corrupt_everywhere(tiny_mess3_ckpts, tmp_path, capsys):
    bad = flip_tensor_bytes(tiny_mess3_ckpts["nextlat"], tmp_path / "flipped" / "ckpt.pt")
    raw = torch.load(bad, weights_only=True)  # torch itself reads the altered weights without a word
    assert raw["model"].keys()
    for module, argv in (("rank", [bad, "--n-seqs", "8"]), ("probe", [bad, "--n-seqs", "8", "--n-test", "4"]),
                         ("train", ["--resume", bad, "--out", tmp_path / "resumed", "--no-progress"])):
        err = one_line(*_run(module, argv, capsys))
        assert str(bad) in err and "corrupt" in err and "unreadable" not in err and "CRC" in err, (module, err)
    assert not (tmp_path / "resumed").exists()


def test_checkpoints_without_a_zip_archive_still_load(tiny_mess3_ckpts, tmp_path):
    """torch's legacy (pre-zip) format has no checksums: it still loads, and is validated."""
    raw = torch.load(tiny_mess3_ckpts["gpt"], weights_only=True)
    old = tmp_path / "legacy.pt"
    torch.save(raw, old, _use_new_zipfile_serialization=False)
    ck = load_checkpoint(old)
    assert ck.step == raw["step"]


# --------------------------------------------------------------------------------------
# 2. NaN / inf / integer weights in any saved module

@pytest.fixture(scope="module")
def tiny_mtp_ckpt(tmp_path_factory):
    from nextlat_probe.training.config import TrainConfig
    from nextlat_probe.training.trainer import train

    cfg = TrainConfig(world="mess3", objective="mtp", horizon=2, steps=2, batch_size=4, seq_len=8, eval_every=2,
                      save_every=2, n_val=8, device="cpu", warmup_steps=1)
    return train(cfg, out_dir=tmp_path_factory.mktemp("mtp") / "run", progress=False).checkpoint


def _poison(part, key_filter, value):
    def edit(raw):
        key = next(k for k in raw[part] if key_filter(k))
        raw[part][key] = torch.full_like(raw[part][key], value)
    return edit


@pytest.mark.parametrize("case", ["model_nan", "p_psi_nan", "p_psi_inf", "mtp_inf"])
def test_non_finite_weights_in_any_module_are_refused_at_load(case, tiny_mess3_ckpts, tiny_mtp_ckpt, tmp_path,
                                                              monkeypatch):
    src, part, value = {
        "model_nan": (tiny_mess3_ckpts["gpt"], "model", float("nan")),
        "p_psi_nan": (tiny_mess3_ckpts["nextlat"], "dynamics", float("nan")),
        "p_psi_inf": (tiny_mess3_ckpts["nextlat"], "dynamics", float("inf")),
        "mtp_inf": (tiny_mtp_ckpt, "mtp_heads", float("-inf")),
    }[case]
    bad = edited(src, tmp_path / f"{case}.pt", _poison(part, lambda k: k.endswith("weight"), value))
    no_building(monkeypatch)
    with pytest.raises(CheckpointError, match="NaN or inf") as info:
        load_checkpoint(bad)
    assert str(info.value).startswith(str(bad)) and "\n" not in str(info.value)


def test_nan_p_psi_stops_transition_and_speculate(tiny_mess3_ckpts, tmp_path, capsys):
    bad = edited(tiny_mess3_ckpts["nextlat"], tmp_path / "nan" / "ckpt.pt",
                 _poison("dynamics", lambda k: k == "fc1.weight", float("nan")))
    for module, argv in (("transition", [bad, "--n-seqs", "16", "--n-test", "8"]), ("speculate", [bad])):
        err = one_line(*_run(module, argv, capsys))
        assert "p_psi" in err and "fc1.weight" in err and "NaN" in err, (module, err)


@pytest.mark.parametrize("key", ["blocks.0.ln1.bias", "embed.weight"])
def test_integer_weights_are_refused_not_cast(key, tiny_mess3_ckpts, tmp_path, monkeypatch):
    def edit(raw):
        raw["model"][key] = torch.ones_like(raw["model"][key], dtype=torch.int64)

    bad = edited(tiny_mess3_ckpts["gpt"], tmp_path / "int.pt", edit)
    no_building(monkeypatch)
    with pytest.raises(CheckpointError, match=f"{key} has dtype torch.int64"):
        load_checkpoint(bad)


# --------------------------------------------------------------------------------------
# 3. memory: a small file must not stand for a large model

def expanded_checkpoint(src, dst, **dims):
    """``src`` with a bigger model config whose every tensor is a stride-0 expanded view of
    one stored number: shapes agree with the config, the file stays a few KB."""
    from nextlat_probe.checkpoint import expected_model_shapes
    from nextlat_probe.models.config import ModelConfig

    def edit(raw):
        raw["model_config"].update(dims)
        mcfg = ModelConfig.from_dict(raw["model_config"])
        full = {k: list(v.shape) for k, v in raw["model"].items()}
        d, m = mcfg.d_model, mcfg.d_mlp
        shapes = expected_model_shapes(mcfg)
        for k in full:  # biases and norms follow d_model / d_mlp / the heads
            if k not in shapes:
                shapes[k] = [m] if k.endswith("mlp.in.bias") else ([mcfg.d_vocab] if k == "unembed.bias" else
                                                                   [mcfg.n_heads * mcfg.d_head] if ".attn." in k and not k.endswith("o.bias") else [d])
        raw["model"] = {k: torch.zeros(1).expand(*shapes[k]) for k in full if k in shapes and
                        (not k.startswith("blocks.") or int(k.split(".")[1]) < mcfg.n_layers)}
        raw["optimizer"] = {"state": {}, "param_groups": raw["optimizer"]["param_groups"]}

    return edited(src, dst, edit)


def test_expanded_views_are_refused_before_the_model_is_built(tiny_mess3_ckpts, tmp_path, monkeypatch):
    bad = expanded_checkpoint(tiny_mess3_ckpts["gpt"], tmp_path / "views.pt", n_layers=1, d_model=1024, n_heads=8,
                              d_head=128, d_mlp=4096)
    assert bad.stat().st_size < 64_000  # for ~12.6M float32 parameters (50 MB)
    no_building(monkeypatch)
    with pytest.raises(CheckpointError, match="expanded or overlapping view") as info:
        load_checkpoint(bad)
    assert "\n" not in str(info.value)


def test_parameter_limit_is_documented_and_raised_by_max_params(tiny_mess3_ckpts, tmp_path, monkeypatch, capsys):
    """1 layer of d_model 16384 (1.6e9 parameters, 6.4 GB): within every per-field bound, above
    the parameter limit; --max-params lets it through to the next check (its storage)."""
    from nextlat_probe import limits

    bad = expanded_checkpoint(tiny_mess3_ckpts["gpt"], tmp_path / "huge.pt", n_layers=1, d_model=16384,
                              n_heads=16, d_head=1024, d_mlp=16384)
    no_building(monkeypatch)
    with pytest.raises(CheckpointError, match="--max-params") as info:
        load_checkpoint(bad)
    assert "1.61e+09 parameters" in str(info.value) and "6 GiB" in str(info.value)
    with limits.using(max_params=2 * 10**9, max_memory=1000):
        with pytest.raises(CheckpointError, match="expanded"):
            load_checkpoint(bad)
    err = one_line(*_run("rank", [bad, "--max-params", "2e9", "--max-memory", "1000"], capsys))
    assert "expanded" in err
    assert limits.max_parameters() == limits.DEFAULT_MAX_PARAMETERS  # the CLI's limit ended with the call


def test_legacy_transformerlens_file_of_expanded_views_is_refused(tmp_path, monkeypatch):
    from nextlat_probe.models import foreign

    cfg = dict(n_layers=1, d_model=1024, n_heads=8, d_head=128, d_mlp=4096, n_ctx=16, d_vocab=3, act_fn="gelu",
               normalization_type="LN")
    required, _ = foreign.expected_legacy_shapes(foreign.legacy_config(cfg))
    sd = {k: torch.zeros(1).expand(*shape) if shape else torch.zeros(()) for k, shape in required.items()}
    path = tmp_path / "tl.pt"
    torch.save(sd, path)
    assert path.stat().st_size < 64_000

    def refuse(*a, **k):
        raise AssertionError("built a model from expanded views")

    from transformer_lens.model_bridge import TransformerBridge

    monkeypatch.setattr(TransformerBridge, "boot_native", refuse)
    with pytest.raises(CheckpointError, match="expanded or overlapping view"):
        foreign.load_legacy_tl(path, cfg)


# --------------------------------------------------------------------------------------
# 4. one line where a traceback was

@pytest.mark.parametrize("case", ["act_fn", "step", "metrics", "seed"])
def test_fields_of_the_wrong_kind_are_one_line(case, tiny_mess3_ckpts, tmp_path, capsys):
    def edit(raw):
        if case == "act_fn":
            raw["model_config"]["act_fn"] = "evil"
        elif case == "step":
            raw["step"] = "forty"
        elif case == "metrics":
            raw["metrics"] = ["not", "a", "dict"]
        else:
            raw["train_config"]["seed"] = "zero"

    bad = edited(tiny_mess3_ckpts["gpt"], tmp_path / case / "ckpt.pt", edit)
    field = {"act_fn": "act_fn", "step": "step", "metrics": "metrics", "seed": "train_config.seed"}[case]
    for module, argv in (("rank", [bad, "--n-seqs", "8"]),
                         ("train", ["--resume", bad, "--out", tmp_path / "out", "--no-progress"])):
        err = one_line(*_run(module, argv, capsys))
        assert str(bad) in err and field in err, (module, err)
    assert not (tmp_path / "out").exists()


class Evil:
    def __reduce__(self):
        return (os.system, ("true",))


@pytest.mark.parametrize("form", ["pickle", "zip"])
def test_pickle_refusals_name_the_global(form, tmp_path):
    bad = tmp_path / "evil.pt"
    if form == "pickle":
        bad.write_bytes(pickle.dumps(Evil(), protocol=4))
    else:
        torch.save({"model": Evil()}, bad)
    with pytest.raises(CheckpointError, match=r"refused to load.*(posix|os)\.system"):
        torch_load_plain(bad)


@pytest.mark.parametrize("case", ["missing", "unexpected", "size"])
def test_load_state_errors_name_the_key(case, tiny_mess3_ckpts, tmp_path):
    key = {"missing": "blocks.1.ln2.bias", "unexpected": "blocks.0.attn.evil", "size": "blocks.0.ln1.bias"}[case]

    def edit(raw):
        if case == "missing":
            del raw["model"][key]
        elif case == "unexpected":
            raw["model"][key] = torch.zeros(3)
        else:
            raw["model"][key] = torch.zeros(5)

    bad = edited(tiny_mess3_ckpts["gpt"], tmp_path / f"{case}.pt", edit)
    with pytest.raises(CheckpointError, match=key.replace(".", r"\.")) as info:
        load_checkpoint(bad)
    assert "\n" not in str(info.value)


def test_a_text_file_says_what_it_is_not(tmp_path, capsys):
    text = tmp_path / "notes.pt"
    text.write_text("hello world\nthese are notes, not weights\n")
    err = one_line(*_run("rank", [text], capsys))
    assert "not a PyTorch checkpoint" in err and "unreadable" not in err and "KeyError" not in err
