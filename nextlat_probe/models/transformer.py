"""Build the hooked transformer (TransformerLens 4.x ``TransformerBridge``) from a config.

Hook names are TransformerLens's stable ones: ``hook_embed``, ``hook_pos_embed``,
``blocks.{l}.hook_resid_post``, ``ln_final.hook_normalized``. A ``rotary`` model has no
position table and so no ``hook_pos_embed``; ``blocks.0.hook_resid_pre`` (what the
activations call ``embed``) exists for every position scheme.
"""
from __future__ import annotations

import re
from typing import TYPE_CHECKING

import torch

from ..errors import DeviceError
from .config import ModelConfig
from .fastpath import FastModel

if TYPE_CHECKING:  # pragma: no cover
    from transformer_lens.model_bridge import TransformerBridge


def resolve_device(device: str | torch.device | None = "auto") -> torch.device:
    """The one device resolver: ``auto`` (None too) -> CUDA when available, else CPU;
    ``cpu``, ``cuda``, ``cuda:N`` and ``mps`` when that device exists here.

    Raises ``DeviceError`` (one line) for an unknown string and for a device that is not
    available (CUDA without CUDA, ``cuda:3`` on a one-GPU machine, MPS without MPS)."""
    text = "auto" if device is None else str(device).strip().lower()
    if text == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    m = re.fullmatch(r"(cpu|cuda|mps)(?::(\d+))?", text)
    if m is None or (m.group(2) is not None and m.group(1) != "cuda"):
        raise DeviceError(f"unknown device {str(device)!r} (use auto, cpu, cuda or cuda:N)")
    kind = m.group(1)
    if kind == "cuda":
        if not torch.cuda.is_available():
            raise DeviceError(f"device {text!r} requested but CUDA is not available (use --device cpu or auto)")
        index = int(m.group(2) or 0)
        count = torch.cuda.device_count()
        if index >= count:
            raise DeviceError(f"device {text!r} is not available: this machine has {count} CUDA device(s), cuda:0..cuda:{count - 1}")
    if kind == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise DeviceError("device 'mps' requested but MPS is not available (use --device cpu or auto)")
    return torch.device(text)


def move(model, device):
    """``model.to(device)`` without TransformerLens's "Moving model to device" print (which
    would corrupt a CLI's ``--json`` stdout)."""
    import contextlib
    import io

    with contextlib.redirect_stdout(io.StringIO()):
        return model.to(device)


def build_transformer(cfg: ModelConfig, seed: int = 0, device: str | torch.device | None = None) -> "TransformerBridge":
    """A randomly initialised TransformerLens-native transformer (no hub access), with the
    position scheme ``cfg.positional`` (``models.config.POSITIONAL``): ``learned`` and
    ``rotary`` are the native model's "standard" and "rotary"; ``none`` is "standard" with
    the position table zeroed and frozen (``requires_grad`` False: the optimiser never
    moves it, and the checkpoint stores the zeros)."""
    from transformer_lens.config import TransformerBridgeConfig
    from transformer_lens.model_bridge import TransformerBridge

    tl_cfg = TransformerBridgeConfig(
        n_layers=cfg.n_layers,
        d_model=cfg.d_model,
        n_heads=cfg.n_heads,
        d_head=cfg.d_head,
        d_mlp=cfg.d_mlp,
        n_ctx=cfg.n_ctx,
        d_vocab=cfg.d_vocab,
        act_fn=cfg.act_fn,
        normalization_type=cfg.normalization,
        positional_embedding_type="rotary" if cfg.positional == "rotary" else "standard",
        seed=int(seed),
    )
    model = TransformerBridge.boot_native(tl_cfg)
    if cfg.positional == "none":
        pos = position_table(model)
        with torch.no_grad():
            pos.zero_()
        pos.requires_grad_(False)
    if device is not None:
        model = move(model, resolve_device(device))
    return model


def position_table(model: "TransformerBridge") -> torch.nn.Parameter:
    """The ``[n_ctx, d_model]`` absolute position table (``pos_embed.weight``) of a learned
    or ``none`` model; a rotary model has none (AttributeError)."""
    return model.pos_embed._original_component.weight


def last_resid_hook(cfg: ModelConfig) -> str:
    """``blocks.{L-1}.hook_resid_post``: the last block's residual output, which NextLat's
    latent loss uses and ``--layers last`` reads (not ``ln_final.hook_normalized``, the
    normalised stream the unembedding sees)."""
    return f"blocks.{cfg.n_layers - 1}.hook_resid_post"


def final_hook_name(cfg: ModelConfig) -> str:
    """Deprecated alias of ``last_resid_hook`` ("final" was ambiguous with ``ln_final``)."""
    return last_resid_hook(cfg)


def frozen_head_params(model: "TransformerBridge") -> tuple[torch.Tensor, ...]:
    """(ln_final weight, ln_final bias, W_U [D, V], b_U [V]) — the parameters that map a
    residual stream to logits. Callers detach them to build NextLat's frozen KL head.
    ``model`` may also be a ``fastpath.FastModel`` (the same tensors, gathered once)."""
    if isinstance(model, FastModel):
        return model.head_params
    ln = model.ln_final._original_component
    w = ln.weight
    b = ln.bias if getattr(ln, "bias", None) is not None else torch.zeros_like(w)
    W_U = model.W_U
    b_U = model.b_U if model.b_U is not None else torch.zeros(W_U.shape[-1], device=W_U.device, dtype=W_U.dtype)
    return w, b, W_U, b_U


def token_embeddings(model: "TransformerBridge", tokens: torch.Tensor) -> torch.Tensor:
    """e(x): the token embedding rows (no positional embedding) for ``tokens``."""
    return model.W_E[tokens]
