"""Foreign model files (nextlat_probe.models.foreign): a legacy TransformerLens state dict
and a local Hugging Face GPT-2 folder load into a bridge whose hidden states, read through
``activations.collect``, equal independent computations (plain torch; transformers' own
forward pass); bad files are refused with one-line CheckpointErrors."""
import json
import math
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from nextlat_probe.activations import collect, default_hooks
from nextlat_probe.errors import CheckpointError
from nextlat_probe.models import foreign
from nextlat_probe.models.foreign import load_hf_folder, load_legacy_tl

CFG = dict(n_layers=2, d_model=16, n_heads=2, d_head=8, d_mlp=32, n_ctx=10, d_vocab=5, act_fn="relu", normalization_type="LN")
TOL = dict(rtol=1e-5, atol=1e-5)


# ----------------------------------------------------------------------------- legacy TL


def legacy_state_dict(cfg, seed=0):
    """A HookedTransformer.state_dict() written by hand: random weights (LayerNorm scales
    and biases too, so that an affine dropped or misplaced shows), mask/IGNORE buffers."""
    g = torch.Generator().manual_seed(seed)
    d, H, dh, M, V, C = (cfg[k] for k in ("d_model", "n_heads", "d_head", "d_mlp", "d_vocab", "n_ctx"))

    def r(*shape, scale=0.3):
        return torch.randn(*shape, generator=g) * scale

    def ln(prefix):
        if cfg["normalization_type"] == "LN":
            return {f"{prefix}.w": 1 + r(d), f"{prefix}.b": r(d)}
        if cfg["normalization_type"] == "RMS":
            return {f"{prefix}.w": 1 + r(d)}
        return {}

    sd = {"embed.W_E": r(V, d, scale=1.0), "pos_embed.W_pos": r(C, d, scale=0.5)}
    for i in range(cfg["n_layers"]):
        b = f"blocks.{i}"
        sd.update(ln(f"{b}.ln1"))
        sd.update({
            f"{b}.attn.W_Q": r(H, d, dh), f"{b}.attn.W_K": r(H, d, dh), f"{b}.attn.W_V": r(H, d, dh),
            f"{b}.attn.W_O": r(H, dh, d),
            f"{b}.attn.b_Q": r(H, dh), f"{b}.attn.b_K": r(H, dh), f"{b}.attn.b_V": r(H, dh), f"{b}.attn.b_O": r(d),
            f"{b}.attn.mask": torch.tril(torch.ones(C, C, dtype=torch.bool)),
            f"{b}.attn.IGNORE": torch.tensor(-1e5),
        })
        if not cfg.get("attn_only"):
            sd.update(ln(f"{b}.ln2"))
            sd.update({f"{b}.mlp.W_in": r(d, M), f"{b}.mlp.b_in": r(M), f"{b}.mlp.W_out": r(M, d), f"{b}.mlp.b_out": r(d)})
    sd.update(ln("ln_final"))
    sd.update({"unembed.W_U": r(d, V), "unembed.b_U": r(V)})
    return sd


def reference_forward(sd, cfg, tokens, eps=1e-5):
    """The transformer in plain torch (float64): token + position embedding, pre-norm
    blocks, causal softmax attention scaled by 1/sqrt(d_head), MLP, residual adds
    (``cfg["attention_dir"] = "bidirectional"``: no mask; ``cfg["attn_only"]``: no MLP).
    Returns ([embed, after block 0, ...], (ln_final before its weight and bias, ln_final
    output), logits)."""
    sd = {k: v.double() for k, v in sd.items()}
    norm = cfg["normalization_type"]
    act = {"relu": F.relu, "gelu": F.gelu, "gelu_new": lambda x: F.gelu(x, approximate="tanh")}[cfg["act_fn"]]

    def normalise(x, prefix, affine_free=False):
        if norm in ("LN", "LNPre"):
            x = x - x.mean(-1, keepdim=True)
        x = x / torch.sqrt(x.pow(2).mean(-1, keepdim=True) + eps)
        if affine_free or norm.endswith("Pre"):
            return x
        return x * sd[f"{prefix}.w"] + sd[f"{prefix}.b"] if norm == "LN" else x * sd[f"{prefix}.w"]

    t = torch.as_tensor(tokens)
    T = t.shape[1]
    x = sd["embed.W_E"][t] + sd["pos_embed.W_pos"][:T]
    resid = [x]
    causal = torch.triu(torch.ones(T, T, dtype=torch.bool), diagonal=1) & (cfg.get("attention_dir") != "bidirectional")
    for i in range(cfg["n_layers"]):
        b = f"blocks.{i}"
        h = normalise(x, f"{b}.ln1")
        q = torch.einsum("btd,hde->bhte", h, sd[f"{b}.attn.W_Q"]) + sd[f"{b}.attn.b_Q"][:, None, :]
        k = torch.einsum("btd,hde->bhte", h, sd[f"{b}.attn.W_K"]) + sd[f"{b}.attn.b_K"][:, None, :]
        v = torch.einsum("btd,hde->bhte", h, sd[f"{b}.attn.W_V"]) + sd[f"{b}.attn.b_V"][:, None, :]
        scores = (q @ k.transpose(-1, -2)) / math.sqrt(cfg["d_head"])
        pattern = torch.softmax(scores.masked_fill(causal, float("-inf")), dim=-1)
        z = pattern @ v
        x = x + torch.einsum("bhte,hed->btd", z, sd[f"{b}.attn.W_O"]) + sd[f"{b}.attn.b_O"]
        if not cfg.get("attn_only"):
            h = normalise(x, f"{b}.ln2")
            x = x + act(h @ sd[f"{b}.mlp.W_in"] + sd[f"{b}.mlp.b_in"]) @ sd[f"{b}.mlp.W_out"] + sd[f"{b}.mlp.b_out"]
        resid.append(x)
    normalized = normalise(x, "ln_final", affine_free=True)
    final = normalise(x, "ln_final")
    logits = final @ sd["unembed.W_U"] + sd["unembed.b_U"]
    return [r.numpy() for r in resid], (normalized.numpy(), final.numpy()), logits.numpy()


def save_legacy(tmp_path, sd, cfg, name="legacy"):
    sd_path, cfg_path = tmp_path / f"{name}.pt", tmp_path / f"{name}.json"
    torch.save(sd, sd_path)
    cfg_path.write_text(json.dumps({**cfg, "lr": 1e-3, "optimizer": "adamw"}))  # extra keys are ignored
    return sd_path, cfg_path


def tokens_for(cfg, n=4, seed=1):
    return np.random.default_rng(seed).integers(0, cfg["d_vocab"], size=(n, cfg["n_ctx"]))


@pytest.mark.parametrize("norm,act", [("LN", "relu"), ("LNPre", "gelu"), ("RMS", "gelu_new")])
def test_legacy_tl_round_trip_matches_plain_torch(tmp_path, norm, act):
    cfg = {**CFG, "normalization_type": norm, "act_fn": act}
    sd = legacy_state_dict(cfg)
    sd_path, cfg_path = save_legacy(tmp_path, sd, cfg)
    model = load_legacy_tl(sd_path, cfg_path)
    assert model.cfg.n_layers == 2 and model.cfg.n_ctx == 10 and not model.training

    tokens = tokens_for(cfg)
    hooks = default_hooks(model.cfg.n_layers)
    states, logits = collect(model, tokens, hooks, return_logits=True)
    resid, final, want_logits = reference_forward(sd, cfg, tokens)
    np.testing.assert_allclose(states["blocks.0.hook_resid_pre"], resid[0], **TOL)
    for layer in range(cfg["n_layers"]):
        np.testing.assert_allclose(states[f"blocks.{layer}.hook_resid_post"], resid[layer + 1], **TOL)
    # the bridge's ln_final.hook_normalized is (x - mean) / sqrt(var + eps), BEFORE the
    # final norm's weight and bias; ln_final.hook_out is what the unembedding reads
    np.testing.assert_allclose(states["ln_final.hook_normalized"], final[0], **TOL)
    np.testing.assert_allclose(collect(model, tokens, ["ln_final.hook_out"])["ln_final.hook_out"], final[1], **TOL)
    np.testing.assert_allclose(logits, want_logits, **TOL)
    # the comparison is sensitive: a config dict (no JSON file) gives the same model ...
    again = collect(load_legacy_tl(sd_path, cfg), tokens, ["blocks.1.hook_resid_post"])
    np.testing.assert_allclose(again["blocks.1.hook_resid_post"], resid[2], **TOL)
    # ... and mis-grouped heads (what a wrong n_heads/d_head factoring would do) do not
    wrong = dict(sd, **{"blocks.0.attn.W_O": sd["blocks.0.attn.W_O"].flip(0)})
    assert not np.allclose(reference_forward(wrong, cfg, tokens)[0][2], states["blocks.1.hook_resid_post"], **TOL)


def test_legacy_tl_without_unembed_bias_is_zero_filled(tmp_path):
    sd = legacy_state_dict(CFG)
    del sd["unembed.b_U"]
    sd_path, cfg_path = save_legacy(tmp_path, sd, CFG)
    tokens = tokens_for(CFG, n=2)
    _, logits = collect(load_legacy_tl(sd_path, cfg_path), tokens, return_logits=True)
    np.testing.assert_allclose(logits, reference_forward({**sd, "unembed.b_U": torch.zeros(5)}, CFG, tokens)[2], **TOL)


def test_legacy_state_dict_detection():
    assert foreign.is_legacy_tl_state_dict(legacy_state_dict(CFG))
    assert not foreign.is_legacy_tl_state_dict({"embed.weight": torch.zeros(2, 2)})
    assert not foreign.is_legacy_tl_state_dict([1, 2])


# ----------------------------------------------------------------------------- bad legacy inputs


def one_line_error(fn, *args, match=()):
    with pytest.raises(CheckpointError) as info:
        fn(*args)
    msg = str(info.value)
    assert "\n" not in msg, msg
    for m in (match if isinstance(match, tuple) else (match,)):
        assert m in msg, msg
    return msg


def test_legacy_shape_mismatch_names_the_key(tmp_path):
    sd = legacy_state_dict(CFG)
    sd_path, _ = save_legacy(tmp_path, sd, CFG)
    one_line_error(load_legacy_tl, sd_path, {**CFG, "d_vocab": 6}, match=(str(sd_path), "embed.W_E", "[5, 16]", "[6, 16]"))
    # per-head shapes: 4 heads x 4 is also 16 wide, only the head split is wrong
    one_line_error(load_legacy_tl, sd_path, {**CFG, "n_heads": 4, "d_head": 4}, match="blocks.0.attn.W_Q")
    one_line_error(load_legacy_tl, sd_path, {**CFG, "n_layers": 3}, match="blocks.2.")
    bad = dict(sd, **{"blocks.1.mlp.W_out": torch.zeros(32, 15)})
    p, _ = save_legacy(tmp_path, bad, CFG, "bad_shape")
    one_line_error(load_legacy_tl, p, CFG, match="blocks.1.mlp.W_out has shape [32, 15]")


def test_legacy_missing_and_unexpected_weights(tmp_path):
    sd = legacy_state_dict(CFG)
    missing = {k: v for k, v in sd.items() if k != "blocks.1.mlp.b_out"}
    p, _ = save_legacy(tmp_path, missing, CFG, "missing")
    one_line_error(load_legacy_tl, p, CFG, match=("missing", "blocks.1.mlp.b_out"))
    extra = dict(sd, **{"blocks.0.attn.W_extra": torch.zeros(3), "blocks.0.attn.rotary_sin": torch.zeros(10, 8)})
    p, _ = save_legacy(tmp_path, extra, CFG, "extra")
    one_line_error(load_legacy_tl, p, CFG, match=("unexpected", "blocks.0.attn.W_extra", "blocks.0.attn.rotary_sin"))
    nan = dict(sd, **{"ln_final.w": torch.full((16,), float("nan"))})
    p, _ = save_legacy(tmp_path, nan, CFG, "nan")
    one_line_error(load_legacy_tl, p, CFG, match=("ln_final.w", "NaN"))
    p, _ = save_legacy(tmp_path, {"embed.weight": torch.zeros(5, 16)}, CFG, "bridge_format")
    one_line_error(load_legacy_tl, p, CFG, match="not a legacy TransformerLens state_dict")


def test_legacy_missing_config_key_says_what_is_needed(tmp_path):
    sd_path, cfg_path = save_legacy(tmp_path, legacy_state_dict(CFG), CFG)
    cfg_path.write_text(json.dumps({k: v for k, v in CFG.items() if k not in ("n_ctx", "d_vocab")}))
    msg = one_line_error(load_legacy_tl, sd_path, cfg_path, match=(str(cfg_path), "'n_ctx'", "'d_vocab'", "needed"))
    assert "d_head or n_heads" in msg  # the full list of what is needed
    one_line_error(load_legacy_tl, sd_path, {k: v for k, v in CFG.items() if k not in ("d_head", "n_heads")},
                   match=(str(sd_path), "d_head (or n_heads)"))
    # d_mlp left out means TransformerLens's 4 * d_model, which these weights (d_mlp 32) do not have
    one_line_error(load_legacy_tl, sd_path, {k: v for k, v in CFG.items() if k != "d_mlp"},
                   match=("blocks.0.mlp.W_in", "[16, 64]"))
    cfg_path.write_text("{not json")
    one_line_error(load_legacy_tl, sd_path, cfg_path, match=(str(cfg_path), "not valid JSON"))
    one_line_error(load_legacy_tl, sd_path, tmp_path / "absent.json", match="no such config file")


def test_legacy_config_bounds_and_unsupported_options(tmp_path):
    sd_path, _ = save_legacy(tmp_path, legacy_state_dict(CFG), CFG)
    one_line_error(load_legacy_tl, sd_path, {**CFG, "n_layers": 10**9}, match=("n_layers", "bound"))
    one_line_error(load_legacy_tl, sd_path, {**CFG, "d_model": 2**20, "d_mlp": 2**16}, match="bound")
    one_line_error(load_legacy_tl, sd_path, {**CFG, "d_model": True}, match="d_model")
    one_line_error(load_legacy_tl, sd_path, {**CFG, "normalization_type": None}, match="normalization_type")
    one_line_error(load_legacy_tl, sd_path, {**CFG, "act_fn": "solu_ln"}, match="act_fn")
    one_line_error(load_legacy_tl, sd_path, {**CFG, "gated_mlp": True}, match="gated_mlp")
    one_line_error(load_legacy_tl, sd_path, {**CFG, "positional_embedding_type": "rotary"}, match="positional_embedding_type")
    one_line_error(load_legacy_tl, sd_path, {**CFG, "n_key_value_heads": 1}, match="n_key_value_heads")
    # HookedTransformerConfig.to_dict() defaults pass
    load_legacy_tl(sd_path, {**CFG, "attn_scale": math.sqrt(8), "use_attn_scale": True, "gated_mlp": False,
                             "positional_embedding_type": "standard", "n_key_value_heads": None, "d_vocab_out": 5,
                             "eps": 1e-5, "output_logits_soft_cap": -1.0})


def test_bounds_agree_with_checkpoint():
    from nextlat_probe import checkpoint as ck

    assert foreign.BOUNDS == {k: v for k, v in ck._BOUNDS.items() if k != "d_dynamics"}
    assert foreign.MAX_PARAMETERS == ck.MAX_PARAMETERS


class Payload:
    """Unpickling this creates a file: what a malicious checkpoint would do."""

    def __init__(self, target):
        self.target = str(target)

    def __reduce__(self):
        return (open, (self.target, "w"))


def test_pickle_with_code_payload_is_refused_and_not_run(tmp_path):
    target = tmp_path / "pwned"
    evil = tmp_path / "evil.pt"
    torch.save({"embed.W_E": Payload(target), "unembed.W_U": torch.zeros(16, 5)}, evil)
    one_line_error(load_legacy_tl, evil, CFG, match=(str(evil), "refused"))
    assert not target.exists()
    # the payload is real: an unsafe load does create the file
    control = tmp_path / "control"
    torch.save({"x": Payload(control)}, tmp_path / "control.pt")
    torch.load(tmp_path / "control.pt", weights_only=False)
    assert control.exists()


def test_unreadable_legacy_files(tmp_path):
    one_line_error(load_legacy_tl, tmp_path / "nope.pt", CFG, match="no such file")
    (tmp_path / "empty.pt").write_bytes(b"")
    one_line_error(load_legacy_tl, tmp_path / "empty.pt", CFG, match="empty file")
    (tmp_path / "junk.pt").write_bytes(b"PK\x03\x04 this is not a zip")
    one_line_error(load_legacy_tl, tmp_path / "junk.pt", CFG, match="junk.pt")
    torch.save([torch.zeros(2)], tmp_path / "list.pt")
    one_line_error(load_legacy_tl, tmp_path / "list.pt", CFG, match="dict of tensors")


# ----------------------------------------------------------------------------- Hugging Face GPT-2


def tiny_gpt2(seed=0):
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(seed)
    cfg = GPT2Config(n_layer=2, n_embd=16, n_head=2, n_positions=12, vocab_size=7, bos_token_id=0, eos_token_id=0)
    cfg._attn_implementation = "eager"
    model = GPT2LMHeadModel(cfg).eval()
    with torch.no_grad():  # LayerNorms are 1 / 0 at init: make their affine visible
        for name, p in model.named_parameters():
            if ".ln_" in name:
                p.add_(torch.randn_like(p) * 0.3)
    return model


def hf_reference(model, tokens):
    """transformers' own forward: hidden_states[0] = embeddings, [l + 1] = after block l
    for all but the last (whose entry has ln_f applied); the last block's output from a
    forward hook on that block."""
    seen = {}
    handle = model.transformer.h[-1].register_forward_hook(lambda mod, args, out: seen.update(last=out[0] if isinstance(out, tuple) else out))
    try:
        with torch.no_grad():
            out = model(torch.as_tensor(tokens), output_hidden_states=True)
    finally:
        handle.remove()
    return out.hidden_states, seen["last"], out.logits


def check_hf_model(bridge, ref_model):
    n = ref_model.config.n_layer
    assert bridge.cfg.n_layers == n and bridge.cfg.n_ctx == 12
    tokens = np.random.default_rng(3).integers(0, 7, size=(3, 12))
    states, logits = collect(bridge, tokens, default_hooks(bridge.cfg.n_layers), return_logits=True)
    hidden, last, want_logits = hf_reference(ref_model, tokens)
    np.testing.assert_allclose(states["blocks.0.hook_resid_pre"], hidden[0].numpy(), **TOL)
    for layer in range(n - 1):
        np.testing.assert_allclose(states[f"blocks.{layer}.hook_resid_post"], hidden[layer + 1].numpy(), **TOL)
    np.testing.assert_allclose(states[f"blocks.{n - 1}.hook_resid_post"], last.numpy(), **TOL)
    # hidden_states[n] is ln_f's output = ln_final.hook_out; hook_normalized is the same
    # stream before ln_f's weight and bias (as for the native models)
    out = collect(bridge, tokens, ["ln_final.hook_out"])["ln_final.hook_out"]
    np.testing.assert_allclose(out, hidden[n].numpy(), **TOL)
    x = last.double() - last.double().mean(-1, keepdim=True)
    eps = ref_model.config.layer_norm_epsilon
    np.testing.assert_allclose(states["ln_final.hook_normalized"], (x / torch.sqrt(x.pow(2).mean(-1, keepdim=True) + eps)).numpy(), **TOL)
    w, b = ref_model.transformer.ln_f.weight.detach().double(), ref_model.transformer.ln_f.bias.detach().double()
    np.testing.assert_allclose(states["ln_final.hook_normalized"] * w.numpy() + b.numpy(), hidden[n].numpy(), **TOL)
    np.testing.assert_allclose(logits, want_logits.numpy(), **TOL)
    # sensitive: the last block's output is not its ln_f'd hidden_states entry
    assert not np.allclose(states[f"blocks.{n - 1}.hook_resid_post"], hidden[n].numpy(), **TOL)


def test_hf_folder_safetensors_matches_transformers(tmp_path):
    ref = tiny_gpt2()
    ref.save_pretrained(tmp_path / "gpt2")
    assert (tmp_path / "gpt2" / "model.safetensors").is_file()
    bridge = load_hf_folder(tmp_path / "gpt2")
    assert not bridge.training
    check_hf_model(bridge, ref)


def test_hf_folder_pytorch_bin_matches_transformers(tmp_path):
    ref = tiny_gpt2(seed=1)
    folder = tmp_path / "gpt2bin"
    ref.config.save_pretrained(folder)
    # GPT2Model-style keys (no "transformer." prefix, no lm_head: tied), as old GPT-2 files
    torch.save({k: v.clone() for k, v in ref.transformer.state_dict().items()}, folder / "pytorch_model.bin")
    check_hf_model(load_hf_folder(folder), ref)


def test_hf_folder_bad_inputs(tmp_path):
    folder = tmp_path / "noconfig"
    folder.mkdir()
    one_line_error(load_hf_folder, folder, match=(str(folder), "config.json"))
    one_line_error(load_hf_folder, tmp_path / "absent", match="no such folder")

    ref = tiny_gpt2()
    good = tmp_path / "gpt2"
    ref.save_pretrained(good)
    raw = json.loads((good / "config.json").read_text())

    def variant(name, **changes):
        f = tmp_path / name
        f.mkdir()
        (f / "config.json").write_text(json.dumps({**raw, **changes}))
        return f

    f = variant("vocab", vocab_size=9)
    (f / "model.safetensors").write_bytes((good / "model.safetensors").read_bytes())
    one_line_error(load_hf_folder, f, match=("model.safetensors", "transformer.wte.weight", "[7, 16]", "[9, 16]"))
    one_line_error(load_hf_folder, variant("noweights"), match="has no weights")
    one_line_error(load_hf_folder, variant("llama", model_type="llama"), match=("model_type", "llama"))
    one_line_error(load_hf_folder, variant("huge", n_layer=10**6), match=("n_layer", "bound"))
    one_line_error(load_hf_folder, variant("nolayers", n_layer=None), match="n_layer")

    f = variant("extra")
    from safetensors.torch import load_file, save_file

    save_file({**load_file(str(good / "model.safetensors")), "transformer.h.0.attn.c_extra.weight": torch.zeros(2)}, str(f / "model.safetensors"))
    one_line_error(load_hf_folder, f, match=("unexpected", "transformer.h.0.attn.c_extra.weight"))

    f = variant("evil")
    target = tmp_path / "pwned_hf"
    torch.save({"transformer.wte.weight": Payload(target)}, f / "pytorch_model.bin")
    one_line_error(load_hf_folder, f, match=("pytorch_model.bin", "refused"))
    assert not target.exists()


def test_hf_folder_guard_compares_bridge_and_transformers_logits(tmp_path, monkeypatch):
    """A bridge that computes something else than the HF model is refused, not returned."""
    from transformer_lens.model_bridge.sources import _bridge_builder

    ref = tiny_gpt2()
    ref.save_pretrained(tmp_path / "gpt2")
    real = _bridge_builder.build_bridge_from_module

    def drifting(model, *args, **kwargs):
        bridge = real(model, *args, **kwargs)
        with torch.no_grad():
            model.transformer.ln_f.bias.add_(0.01)
        return bridge

    monkeypatch.setattr(_bridge_builder, "build_bridge_from_module", drifting)
    one_line_error(load_hf_folder, tmp_path / "gpt2", match="does not reproduce the model's logits")


def test_hf_folder_options_and_device(tmp_path):
    from nextlat_probe.errors import DeviceError

    ref = tiny_gpt2()
    ref.save_pretrained(tmp_path / "gpt2")
    raw = json.loads((tmp_path / "gpt2" / "config.json").read_text())
    (tmp_path / "gpt2" / "config.json").write_text(json.dumps({**raw, "scale_attn_weights": False}))
    one_line_error(load_hf_folder, tmp_path / "gpt2", match="scale_attn_weights")
    with pytest.raises(DeviceError):
        load_hf_folder(tmp_path / "gpt2", device="tpu")
    with pytest.raises(DeviceError):
        load_legacy_tl(tmp_path / "x.pt", CFG, device="tpu")


def test_module_import_does_not_import_transformer_lens():
    code = "import sys, nextlat_probe.models.foreign; print('transformer_lens' in sys.modules, 'transformers' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["False", "False"]


# ----------------------------------------------------------------------------- through the CLIs


def test_probe_cli_on_a_legacy_state_dict_reproduces_an_in_sample_ols(tmp_path, capsys):
    """The published belief-geometry protocol end to end: a legacy TransformerLens state
    dict on Mess3, every sequence of the context, OLS fitted and scored on the same rows at
    L1; the MSE the CLI prints equals sklearn's on hidden states from our own forward."""
    from sklearn.linear_model import LinearRegression

    from nextlat_probe.cli import run_main
    from nextlat_probe.probe import main
    from nextlat_probe.sources import world_from_text

    cfg = {**CFG, "d_vocab": 3, "n_ctx": 5, "d_model": 32, "d_head": 16}
    sd = legacy_state_dict(cfg, seed=4)
    sd_path, cfg_path = save_legacy(tmp_path, sd, cfg)
    argv = [str(sd_path), "--tl-config", str(cfg_path), "--world", "mess3:x=0.05,a=0.85", "--all-sequences",
            "--in-sample", "--layers", "1", "--alpha", "0", "--json", "--no-classifier"]
    with pytest.raises(SystemExit) as exc:
        run_main(main, argv)
    cap = capsys.readouterr()
    assert exc.value.code == 0, cap.err
    (rec,) = [r for r in json.loads(cap.out) if r["layer"] == "L1"]
    assert rec["objective"] == "external" and rec["params"]["protocol"] == "in_sample"
    world = world_from_text("mess3:x=0.05,a=0.85")
    tokens = np.indices((3,) * 5).reshape(5, -1).T
    H = reference_forward(sd, cfg, tokens)[0][2].reshape(-1, cfg["d_model"])  # after block 1
    B = world.beliefs(tokens).reshape(-1, 3)
    pred = LinearRegression().fit(H, B).predict(H)
    assert rec["metrics"]["n_rows"] == 3 ** 5 * 5
    assert rec["metrics"]["mse"] == pytest.approx(float(((pred - B) ** 2).mean()), rel=2e-3)


def test_rank_cli_on_a_hugging_face_folder(tmp_path, capsys):
    from nextlat_probe.cli import run_main
    from nextlat_probe.rank import main

    model = tiny_gpt2()
    model.save_pretrained(tmp_path / "gpt2-tiny")
    argv = [str(tmp_path / "gpt2-tiny"), "--world", "mess3", "--n-seqs", "8", "--seq-len", "10", "--json"]
    with pytest.raises(SystemExit) as exc:
        run_main(main, argv)
    cap = capsys.readouterr()
    assert exc.value.code == 2 and "--vocab" in cap.err  # 7 model tokens, 3 world tokens
    (tmp_path / "vocab.json").write_text(json.dumps({"0": 4, "1": 5, "2": 6}))
    with pytest.raises(SystemExit) as exc:
        run_main(main, [*argv, "--vocab", str(tmp_path / "vocab.json"), "--layers", "all"])
    cap = capsys.readouterr()
    assert exc.value.code == 0, cap.err
    recs = json.loads(cap.out)
    assert [r["layer"] for r in recs] == ["embed", "L0", "L1"] and recs[0]["source"] == str(tmp_path / "gpt2-tiny")
    # the rank of the embeddings, recomputed from transformers' own hidden states of the same tokens
    from nextlat_probe.compare import Inputs, load_models

    toks = Inputs(load_models([tmp_path / "gpt2-tiny"], world="mess3", vocab=tmp_path / "vocab.json"), 8, 10).tokens(0)
    with torch.no_grad():
        hs = model(torch.as_tensor(np.array([4, 5, 6])[toks]), output_hidden_states=True).hidden_states
    s = np.linalg.svd(hs[0].reshape(-1, 16).double().numpy(), compute_uv=False)
    s = s[s > 1e-12 * s[0]]
    p = s / s.sum()
    assert recs[0]["metrics"]["effective_rank"] == pytest.approx(float(np.exp(-(p * np.log(p)).sum())), rel=1e-4)
