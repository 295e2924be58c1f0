"""Build the hooked transformer (TransformerLens 4.x ``TransformerBridge``) from a config.

Hook names are TransformerLens's stable ones: ``hook_embed``, ``hook_pos_embed``,
``blocks.{l}.hook_resid_post``, ``ln_final.hook_normalized``.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from .config import ModelConfig

if TYPE_CHECKING:  # pragma: no cover
    from transformer_lens.model_bridge import TransformerBridge


def resolve_device(device: str | torch.device | None = "auto") -> torch.device:
    """``auto`` -> CUDA when available, else CPU. Asking for CUDA without one is an error."""
    if device is None or str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("device 'cuda' requested but CUDA is not available (use --device cpu or auto)")
    return dev


def move(model, device):
    """``model.to(device)`` without TransformerLens's "Moving model to device" print (which
    would corrupt a CLI's ``--json`` stdout)."""
    import contextlib
    import io

    with contextlib.redirect_stdout(io.StringIO()):
        return model.to(device)


def build_transformer(cfg: ModelConfig, seed: int = 0, device: str | torch.device | None = None) -> "TransformerBridge":
    """A randomly initialised TransformerLens-native transformer (no hub access)."""
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
        seed=int(seed),
    )
    model = TransformerBridge.boot_native(tl_cfg)
    if device is not None:
        model = move(model, resolve_device(device))
    return model


def final_hook_name(cfg: ModelConfig) -> str:
    """The hook whose output NextLat's latent loss uses: the last block's residual output."""
    return f"blocks.{cfg.n_layers - 1}.hook_resid_post"


def frozen_head_params(model: "TransformerBridge") -> tuple[torch.Tensor, ...]:
    """(ln_final weight, ln_final bias, W_U [D, V], b_U [V]) — the parameters that map a
    residual stream to logits. Callers detach them to build NextLat's frozen KL head."""
    ln = model.ln_final._original_component
    w = ln.weight
    b = ln.bias if getattr(ln, "bias", None) is not None else torch.zeros_like(w)
    W_U = model.W_U
    b_U = model.b_U if model.b_U is not None else torch.zeros(W_U.shape[-1], device=W_U.device, dtype=W_U.dtype)
    return w, b, W_U, b_U


def token_embeddings(model: "TransformerBridge", tokens: torch.Tensor) -> torch.Tensor:
    """e(x): the token embedding rows (no positional embedding) for ``tokens``."""
    return model.W_E[tokens]
