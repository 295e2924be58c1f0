"""Our native transformer as a Hugging Face GPT-2 (``GPT2LMHeadModel``) and back.

GPT-2 is one fixed architecture: a learned absolute position table added to the token
embedding, pre-LayerNorm blocks (eps ``layer_norm_epsilon``), biased Q/K/V/O and MLP
projections, causal attention scaled by 1/sqrt(n_embd / n_head), one activation
(``activation_function``: "gelu" is the exact erf GELU, "gelu_new" the tanh one), a final
LayerNorm and a bias-free ``lm_head``. Our native models (``models.transformer``) with
learned positions, LayerNorm and GELU are exactly that, so their weights map one to one:

    ours (nn.Linear: [out, in])          GPT-2 (Conv1D: [in, out])
    embed.weight, pos_embed.weight       transformer.wte.weight, transformer.wpe.weight
    blocks.l.ln1 / ln2                   transformer.h.l.ln_1 / ln_2
    blocks.l.attn.{q,k,v}                transformer.h.l.attn.c_attn  (q | k | v side by side)
    blocks.l.attn.o                      transformer.h.l.attn.c_proj
    blocks.l.mlp.in / out                transformer.h.l.mlp.c_fc / c_proj
    ln_final                             transformer.ln_f
    unembed.weight (bias: zero, frozen)  lm_head.weight  (untied: tie_word_embeddings false)

Anything else is refused by ``gpt2_refusal`` with the feature named: rotary or no
positions, RMSNorm, another activation, an attention width other than d_model, a non-zero
unembedding bias, another LayerNorm eps or attention scale. Nothing here imports
``transformers``; ``gpt2_config`` returns the plain dict its ``GPT2Config`` takes.
"""
from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any, Mapping

from .config import ModelConfig

if TYPE_CHECKING:  # pragma: no cover
    import torch

#: our ``act_fn`` -> GPT-2's ``activation_function`` (the same function in both libraries:
#: TransformerLens "gelu" is torch's exact GELU, as is transformers' "gelu")
HF_ACTIVATION = {"gelu": "gelu", "gelu_new": "gelu_new", "relu": "relu", "silu": "silu"}
#: the LayerNorm eps of every native model (``TransformerBridgeConfig`` default)
DEFAULT_EPS = 1e-5


def gpt2_refusal(mcfg: ModelConfig, *, eps: float = DEFAULT_EPS, attn_scale: float = -1.0,
                 unembed_bias: "torch.Tensor | None" = None) -> str | None:
    """Why a model of config ``mcfg`` cannot be a ``GPT2LMHeadModel`` (the feature, in a
    few words), or None when it can. ``eps`` / ``attn_scale`` are the bridge config's
    (``model.cfg``), ``unembed_bias`` the model's ``unembed.bias``."""
    if mcfg.positional == "rotary":
        return "rotary positions (GPT-2 has only a learned absolute position table)"
    if mcfg.positional == "none":
        return "no positions (positional 'none'; GPT-2 always adds a trainable position table)"
    if mcfg.normalization != "LN":
        return f"{mcfg.normalization} normalisation (GPT-2 has LayerNorm only)"
    if mcfg.act_fn not in HF_ACTIVATION:
        return f"activation {mcfg.act_fn!r} (exportable: {', '.join(HF_ACTIVATION)})"
    if mcfg.n_heads * mcfg.d_head != mcfg.d_model:
        return (f"attention width n_heads x d_head = {mcfg.n_heads * mcfg.d_head} other than d_model "
                f"{mcfg.d_model} (GPT-2's heads split d_model)")
    if attn_scale not in (-1, -1.0) and not math.isclose(float(attn_scale), math.sqrt(mcfg.d_head), rel_tol=1e-12):
        return f"attention scale {attn_scale} (GPT-2 divides by sqrt(d_head) = {math.sqrt(mcfg.d_head):g})"
    if not (isinstance(eps, (int, float)) and 0 < eps < 1):
        return f"LayerNorm eps {eps!r}"
    if unembed_bias is not None and bool(unembed_bias.detach().ne(0).any()):
        return "a non-zero unembedding bias (GPT-2's lm_head has none)"
    return None


def gpt2_config(mcfg: ModelConfig, eps: float = DEFAULT_EPS) -> dict[str, Any]:
    """The ``GPT2Config`` keyword arguments of an exportable ``mcfg``: no dropout, our eps,
    untied unembedding, the standard 1/sqrt(d_head) attention scale, no token ids (a world's
    tokens are its own; GPT-2's default 50256 would lie outside the vocabulary)."""
    return {
        "model_type": "gpt2", "architectures": ["GPT2LMHeadModel"],
        "vocab_size": mcfg.d_vocab, "n_positions": mcfg.n_ctx, "n_embd": mcfg.d_model, "n_layer": mcfg.n_layers,
        "n_head": mcfg.n_heads, "n_inner": mcfg.d_mlp, "activation_function": HF_ACTIVATION[mcfg.act_fn],
        "resid_pdrop": 0.0, "embd_pdrop": 0.0, "attn_pdrop": 0.0, "layer_norm_epsilon": float(eps),
        "scale_attn_weights": True, "scale_attn_by_inverse_layer_idx": False, "reorder_and_upcast_attn": False,
        "tie_word_embeddings": False, "bos_token_id": None, "eos_token_id": None, "use_cache": True,
    }


#: the ``config.json`` keys whose values must be ``gpt2_config``'s for a folder to be read
#: back as our model (the rest are transformers' own bookkeeping)
GPT2_ARCHITECTURE_KEYS = ("model_type", "vocab_size", "n_positions", "n_embd", "n_layer", "n_head", "n_inner",
                          "activation_function", "layer_norm_epsilon", "scale_attn_weights",
                          "scale_attn_by_inverse_layer_idx", "reorder_and_upcast_attn", "tie_word_embeddings")


def gpt2_config_difference(raw: Mapping[str, Any], mcfg: ModelConfig, eps: float = DEFAULT_EPS) -> str | None:
    """The first architecture key of a ``config.json`` that disagrees with ``mcfg``, as
    text (``n_layer 3, expected 2``), or None."""
    want = gpt2_config(mcfg, eps)
    for key in GPT2_ARCHITECTURE_KEYS:
        got = raw.get(key, want[key] if key in ("scale_attn_weights", "scale_attn_by_inverse_layer_idx",
                                                  "reorder_and_upcast_attn") else None)
        if got != want[key] and not (isinstance(got, float) and isinstance(want[key], float)
                                     and math.isclose(got, want[key], rel_tol=1e-9)):
            return f"{key} {got!r}, expected {want[key]!r}"
    return None


def gpt2_dims(mcfg: ModelConfig) -> dict[str, int]:
    """``models.foreign.expected_gpt2_shapes``' dimension names for ``mcfg``."""
    return {"n_layers": mcfg.n_layers, "d_model": mcfg.d_model, "d_mlp": mcfg.d_mlp, "d_vocab": mcfg.d_vocab,
            "n_ctx": mcfg.n_ctx}


def to_gpt2(sd: Mapping[str, "torch.Tensor"], mcfg: ModelConfig) -> dict[str, "torch.Tensor"]:
    """A native model's state dict as a ``GPT2LMHeadModel`` state dict (contiguous copies)."""
    import torch

    t = "transformer."
    out = {f"{t}wte.weight": sd["embed.weight"], f"{t}wpe.weight": sd["pos_embed.weight"]}
    for i in range(mcfg.n_layers):
        b, h = f"blocks.{i}.", f"{t}h.{i}."
        out.update({
            f"{h}ln_1.weight": sd[f"{b}ln1.weight"], f"{h}ln_1.bias": sd[f"{b}ln1.bias"],
            f"{h}attn.c_attn.weight": torch.cat([sd[f"{b}attn.{x}.weight"].T for x in "qkv"], dim=1),
            f"{h}attn.c_attn.bias": torch.cat([sd[f"{b}attn.{x}.bias"] for x in "qkv"]),
            f"{h}attn.c_proj.weight": sd[f"{b}attn.o.weight"].T, f"{h}attn.c_proj.bias": sd[f"{b}attn.o.bias"],
            f"{h}ln_2.weight": sd[f"{b}ln2.weight"], f"{h}ln_2.bias": sd[f"{b}ln2.bias"],
            f"{h}mlp.c_fc.weight": sd[f"{b}mlp.in.weight"].T, f"{h}mlp.c_fc.bias": sd[f"{b}mlp.in.bias"],
            f"{h}mlp.c_proj.weight": sd[f"{b}mlp.out.weight"].T, f"{h}mlp.c_proj.bias": sd[f"{b}mlp.out.bias"],
        })
    out.update({f"{t}ln_f.weight": sd["ln_final.weight"], f"{t}ln_f.bias": sd["ln_final.bias"],
                "lm_head.weight": sd["unembed.weight"]})
    return {k: v.detach().to("cpu", torch.float32).contiguous().clone() for k, v in out.items()}


def from_gpt2(hf: Mapping[str, "torch.Tensor"], mcfg: ModelConfig) -> dict[str, "torch.Tensor"]:
    """The inverse of ``to_gpt2``: a ``GPT2LMHeadModel`` state dict (keys with the
    ``transformer.`` prefix) as a native model's state dict, with the zero unembedding
    bias GPT-2 lacks. Shapes are the caller's to check first (``expected_gpt2_shapes``)."""
    import torch

    t = "transformer."
    d = mcfg.d_model
    out = {"embed.weight": hf[f"{t}wte.weight"], "pos_embed.weight": hf[f"{t}wpe.weight"]}
    for i in range(mcfg.n_layers):
        b, h = f"blocks.{i}.", f"{t}h.{i}."
        w = hf[f"{h}attn.c_attn.weight"]
        bias = hf[f"{h}attn.c_attn.bias"]
        for j, x in enumerate("qkv"):
            out[f"{b}attn.{x}.weight"] = w[:, j * d:(j + 1) * d].T
            out[f"{b}attn.{x}.bias"] = bias[j * d:(j + 1) * d]
        out.update({
            f"{b}ln1.weight": hf[f"{h}ln_1.weight"], f"{b}ln1.bias": hf[f"{h}ln_1.bias"],
            f"{b}attn.o.weight": hf[f"{h}attn.c_proj.weight"].T, f"{b}attn.o.bias": hf[f"{h}attn.c_proj.bias"],
            f"{b}ln2.weight": hf[f"{h}ln_2.weight"], f"{b}ln2.bias": hf[f"{h}ln_2.bias"],
            f"{b}mlp.in.weight": hf[f"{h}mlp.c_fc.weight"].T, f"{b}mlp.in.bias": hf[f"{h}mlp.c_fc.bias"],
            f"{b}mlp.out.weight": hf[f"{h}mlp.c_proj.weight"].T, f"{b}mlp.out.bias": hf[f"{h}mlp.c_proj.bias"],
        })
    out.update({"ln_final.weight": hf[f"{t}ln_f.weight"], "ln_final.bias": hf[f"{t}ln_f.bias"],
                "unembed.weight": hf["lm_head.weight"], "unembed.bias": torch.zeros(mcfg.d_vocab)})
    return {k: v.to(torch.float32).contiguous().clone() for k, v in out.items()}


__all__ = ["HF_ACTIVATION", "DEFAULT_EPS", "GPT2_ARCHITECTURE_KEYS", "gpt2_refusal", "gpt2_config",
           "gpt2_config_difference", "gpt2_dims", "to_gpt2", "from_gpt2"]
