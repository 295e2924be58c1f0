"""Where models come from: one loader for our checkpoints and for models this toolkit did
not train.

``load_model(source, *, world=None, config=None, vocab=None, device="cpu")`` returns a
``LoadedCheckpoint`` (the object every runner takes) for

1. our ``ckpt.pt`` (or its run folder): model, world, p_psi and training state as stored;
2. a legacy TransformerLens ``HookedTransformer.state_dict()`` file plus its config
   (``config``: a dict or a JSON file as TransformerLens wrote it, e.g. a published
   ``train_config.json``: ``n_layers, d_model, d_head or n_heads, n_ctx, d_vocab``, and
   TransformerLens's own defaults for every key it defaults; training keys ignored),
   converted with TransformerLens's own ``convert_tl_checkpoint``
   (``models.foreign.load_legacy_tl``);
3. a Hugging Face folder written by ``python -m nextlat_probe.export`` (``hfexport``): read
   back with its world, p_psi / MTP heads and training record, exactly as the checkpoint;
4. a local Hugging Face folder of a GPT-2-style model (``config.json`` and
   ``model.safetensors`` or ``pytorch_model.bin``), read without any hub access
   (``models.foreign.load_hf_folder``);
5. a model object already in memory: a ``TransformerBridge``, or a torch module with the
   same hooks (``hooks``, ``hook_dict``, ``cfg``, ``W_E``), or an already loaded model.

A model of another origin has no world of its own: give it (``world``: a ``World`` or a
spec string such as ``"mess3:x=0.05,a=0.85"``, ``"rrxor"``, ``"hmm:T=path.npy"``,
``"taxi:map=FILE.json"``; ``world_from_text``). When the model numbers tokens its own way,
``vocab`` maps every world token name to the model's token id (a dict or a JSON file);
the model is then wrapped so that it reads world tokens and returns logits over the
world's tokens, with the same hooks. Such a model has no training record: its records say
``objective = "external"`` and carry no validation loss.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Mapping

from .errors import CheckpointError, UsageError, WorldError

EXTERNAL = "external"  # the objective label of models this toolkit did not train


# --------------------------------------------------------------------------------------
# worlds from text
# --------------------------------------------------------------------------------------
def world_from_text(text: str, map_path: str | Path | None = None) -> Any:
    """A world from a spec string ``name[:key=value,key=value]`` (``--world`` on the CLIs;
    the grammar of ``worlds.parse_spec``, the same on every CLI).

    ``mess3:x=0.05,a=0.85``, ``rrxor``, ``z1r``, ``a5`` (tagging; ``a5:form=interleaved`` for
    the interleaved form), ``taxi`` (with ``map_path`` or
    ``taxi:map=FILE.json``, and any taxi option such as ``map_size=6``), or
    ``hmm:T=FILE.npy[,initial=FILE.npy]`` for any edge-emitting HMM ``T[x, i, j]``."""
    import numpy as np

    from .worlds import make_world, parse_spec

    name, opts = parse_spec(text)
    if map_path is not None:
        if opts.get("map") is not None and str(opts["map"]) != str(map_path):
            raise WorldError(f"--world {text!r}: map={opts['map']} and --map {map_path} disagree")
        opts["map"] = str(map_path)
    if name == "hmm":
        from .worlds.hmm import HMM

        unknown = sorted(set(opts) - {"T", "initial"})
        if unknown:
            raise WorldError(f"--world {text!r}: an hmm takes T= and initial=, not {unknown[0]!r}")
        if "T" not in opts:
            raise WorldError(f"--world {text!r}: an hmm needs T=FILE.npy (token x state x state)")
        arrays = {}
        for key in ("T", "initial"):
            if key in opts:
                try:
                    arrays[key] = np.load(str(opts[key]), allow_pickle=False)
                except (OSError, ValueError) as exc:
                    raise WorldError(f"--world {text!r}: cannot read {key}={opts[key]} ({exc})") from None
        return HMM(arrays["T"], initial=arrays.get("initial"))
    try:
        return make_world(name, **opts)
    except WorldError as exc:
        raise WorldError(f"--world {text!r}: {exc}") from None


# --------------------------------------------------------------------------------------
# token maps
# --------------------------------------------------------------------------------------
def _vocab_ids(world: Any, vocab: Mapping[str, Any] | str | Path, d_vocab: int, where: str) -> list[int]:
    """Model token id of every world token, in world-token order."""
    if not isinstance(vocab, Mapping):
        try:
            vocab = json.loads(Path(vocab).read_text())
        except (OSError, ValueError) as exc:
            raise UsageError(f"--vocab {vocab}: not a readable JSON object ({exc})") from None
        except RecursionError:
            raise UsageError(f"--vocab {vocab}: not a JSON object (nested too deeply)") from None
        if not isinstance(vocab, Mapping):
            raise UsageError("--vocab: expected a JSON object {world token: model token id}")
    names = list(world.token_names)
    missing = [n for n in names if n not in vocab]
    if missing:
        raise UsageError(f"--vocab: no model token for world token(s) {', '.join(map(repr, missing[:5]))}")
    ids = []
    for n in names:
        v = vocab[n]
        if not isinstance(v, int) or not 0 <= v < d_vocab:
            raise UsageError(f"--vocab: world token {n!r} -> {v!r} is not a token id of {where} (0..{d_vocab - 1})")
        ids.append(v)
    if len(set(ids)) != len(ids):
        raise UsageError("--vocab: two world tokens map to the same model token")
    return ids


def vocab_mapped(model: Any, ids: list[int]):
    """``model`` reading world tokens and giving logits over the world's tokens: world token
    ``k`` is fed as model token ``ids[k]``, and the logits keep the columns ``ids``. Hooks,
    ``hook_dict`` and ``cfg`` are the wrapped model's; ``W_E`` holds the world tokens' rows."""
    import torch
    from torch import nn

    class VocabMapped(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.inner = model
            self.register_buffer("ids", torch.as_tensor(ids, dtype=torch.long), persistent=False)

        @property
        def cfg(self):
            return self.inner.cfg

        @property
        def hook_dict(self):
            return self.inner.hook_dict

        def hooks(self, *args: Any, **kwargs: Any):
            return self.inner.hooks(*args, **kwargs)

        @property
        def W_E(self):
            return self.inner.W_E[self.ids]

        def forward(self, tokens, *args: Any, **kwargs: Any):
            return self.inner(self.ids[tokens], *args, **kwargs)[..., self.ids]

    return VocabMapped().to(next(model.parameters()).device)


# --------------------------------------------------------------------------------------
# the loader
# --------------------------------------------------------------------------------------
def _model_config(model: Any, where: str):
    from .models.config import ModelConfig

    cfg = getattr(model, "cfg", None)
    if cfg is None:
        raise CheckpointError(where, "the model has no TransformerLens config (cfg)")
    try:
        norm = str(getattr(cfg, "normalization_type", "LN") or "LN")
        return ModelConfig(n_layers=int(cfg.n_layers), d_model=int(cfg.d_model), n_heads=int(cfg.n_heads),
                           d_head=int(cfg.d_head), d_mlp=int(getattr(cfg, "d_mlp", None) or 4 * int(cfg.d_model)),
                           n_ctx=int(cfg.n_ctx), d_vocab=int(cfg.d_vocab), act_fn=str(getattr(cfg, "act_fn", "gelu")),
                           normalization="RMS" if norm.upper().startswith("RMS") else "LN",
                           positional="rotary" if str(getattr(cfg, "positional_embedding_type", "")) == "rotary" else "learned")
    except (TypeError, ValueError, AttributeError) as exc:
        raise CheckpointError(where, f"unusable model config ({exc})") from None


def wrap_model(model: Any, world: Any, *, where: str = "model", vocab: Any = None, objective: str = EXTERNAL,
               step: int | None = None, dynamics: Any = None):
    """A model object and its world as a ``LoadedCheckpoint`` (what the runners take)."""
    from .checkpoint import LoadedCheckpoint
    from .models.objective import ObjectiveConfig

    if world is None:
        raise UsageError(f"{where}: a model not trained by nextlat_probe needs its world (--world SPEC)")
    if isinstance(world, str):
        world = world_from_text(world)
    for attr in ("hooks", "hook_dict", "cfg"):
        if not hasattr(model, attr):
            raise CheckpointError(where, f"the model has no {attr!r}: pass a TransformerLens bridge or a module "
                                         "with the same hooks")
    mcfg = _model_config(model, where)
    if vocab is not None:
        model = vocab_mapped(model, _vocab_ids(world, vocab, mcfg.d_vocab, where))
    elif world.vocab_size != mcfg.d_vocab:
        raise UsageError(f"{where}: the model has {mcfg.d_vocab} tokens but world {world.name!r} has "
                         f"{world.vocab_size}; give --vocab FILE.json (world token -> model token id)")
    model.eval()
    return LoadedCheckpoint(path=str(where), model=model, world=world, dynamics=dynamics, model_config=mcfg,
                            objective_config=ObjectiveConfig("gpt"), train_config={}, step=step, metrics={},
                            raw={}, objective_name=objective)


def load_model(source: Any, *, world: Any = None, config: Any = None, vocab: Any = None, hf: bool = False,
               device: str = "cpu"):
    """Any supported model source -> ``LoadedCheckpoint`` (see the module docstring).

    ``config``: the legacy TransformerLens config (dict or JSON path) for a state-dict file;
    ``hf``: read a folder as a Hugging Face model even if it also holds a ``ckpt.pt``."""
    from .checkpoint import is_nextlat_checkpoint, load_checkpoint

    if hasattr(source, "model") and hasattr(source, "world"):
        return source  # already loaded
    if not isinstance(source, (str, Path)):
        import torch

        if isinstance(source, torch.nn.Module):
            return wrap_model(source, world, where=type(source).__name__, vocab=vocab)
        raise UsageError(f"cannot load a model from a {type(source).__name__}")
    path = Path(source)
    if path.is_dir() and not hf and not (path / "ckpt.pt").exists():
        from .hfexport import is_export, load_export

        if is_export(path):  # our own Hugging Face export: p_psi, world and configs beside it
            if world is not None or vocab is not None or config is not None:
                raise UsageError(f"{path}: a nextlat_probe export carries its own world and config; drop "
                                 "--world / --vocab / --tl-config (or read it as a plain GPT-2 folder with --hf)")
            return load_export(path, device=device)
    if path.is_dir() and (hf or (not (path / "ckpt.pt").exists() and (path / "config.json").exists())):
        from .models.foreign import load_hf_folder

        return wrap_model(load_hf_folder(path, device=device), world, where=str(path), vocab=vocab)
    if config is None and world is None and vocab is None:
        return load_checkpoint(path, device=device)
    if is_nextlat_checkpoint(path):
        if world is not None or vocab is not None or config is not None:
            raise UsageError(f"{path}: a nextlat_probe checkpoint carries its own world and config; drop "
                             "--world / --vocab / --tl-config")
        return load_checkpoint(path, device=device)
    if config is None:
        raise CheckpointError(path, "a TransformerLens state dict needs its config: --tl-config CONFIG.json "
                                    "(n_layers, d_model, d_head or n_heads, n_ctx, d_vocab; TransformerLens's "
                                    "defaults for the rest)")
    from .models.foreign import load_legacy_tl

    return wrap_model(load_legacy_tl(path, config, device=device), world, where=str(path), vocab=vocab)


__all__ = ["load_model", "wrap_model", "world_from_text", "vocab_mapped", "EXTERNAL"]
