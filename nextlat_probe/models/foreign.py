"""Load models that were not trained by this package into the same ``TransformerBridge``.

Two sources, both from local files only (no hub access, never unpickling code):

``load_legacy_tl(state_dict_path, config)``
    A legacy TransformerLens ``HookedTransformer.state_dict()`` saved with ``torch.save``
    (keys ``embed.W_E``, ``blocks.0.attn.W_Q`` [n_heads, d_model, d_head], ...) plus its
    config (a dict or a JSON file). Converted by TransformerLens's own
    ``transformer_lens.utilities.tl_checkpoint_conversion.convert_tl_checkpoint`` and loaded
    into ``TransformerBridge.boot_native``, i.e. the same native architecture our own models
    use.

``load_hf_folder(folder)``
    A local Hugging Face folder of a GPT-2 model (``config.json`` + ``model.safetensors`` or
    ``pytorch_model.bin``), wrapped by TransformerLens's bridge for the HF GPT-2 adapter.

Either way the hook names are the ones the rest of the package reads
(``blocks.0.hook_resid_pre``, ``blocks.{l}.hook_resid_post``, ``ln_final.hook_normalized``)
and ``model(tokens)`` returns logits, so ``nextlat_probe.activations.collect`` works
unchanged; no compatibility mode is needed (and none is enabled: the weights stay as stored,
no LayerNorm folding or centring).

On both bridges (as on our own native models) ``ln_final.hook_normalized`` is the final
norm's normalised input, ``(x - mean) / sqrt(var + eps)``, BEFORE its weight and bias;
``ln_final.hook_out`` is the affine output the unembedding reads (HF GPT-2's last
``hidden_states`` entry). The tests check both against independent computations.

Everything is validated before the model is allocated: the config within the same bounds
as our checkpoints (``checkpoint.MAX_*``), every tensor present with the shape the config
implies, nothing unexpected. Every bad file is a one-line ``CheckpointError`` naming the
file and the key. ``transformer_lens`` / ``transformers`` are imported inside the functions
only, so importing this module stays cheap.
"""
from __future__ import annotations

import contextlib
import json
import math
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator, Mapping

from .. import limits
from ..errors import CheckpointError
from ..safeio import error_line, torch_load_plain, weights_problem
from .transformer import move, resolve_device

if TYPE_CHECKING:  # pragma: no cover
    import torch
    from transformer_lens.model_bridge import TransformerBridge

#: The bounds of ``nextlat_probe.checkpoint`` (MAX_N_LAYERS, ...). Repeated here because the
#: models layer may not import the checkpoint layer (docs/architecture.md);
#: tests/test_foreign_models.py checks that the two agree.
BOUNDS: dict[str, int] = {
    "n_layers": 128,
    "d_model": 16_384,
    "n_heads": 256,
    "d_head": 1_024,
    "d_mlp": 65_536,
    "n_ctx": 65_536,
    "d_vocab": 1 << 20,
}
#: the default parameter bound (``limits.max_parameters()``, raised by ``--max-params``)
MAX_PARAMETERS = limits.DEFAULT_MAX_PARAMETERS

#: The legacy config keys ``load_legacy_tl`` needs: without a default in TransformerLens
#: (``d_vocab``'s -1 means "from the tokenizer", which a state dict does not have), and
#: ``d_head`` or ``n_heads`` (either gives the other, as below).
LEGACY_REQUIRED = ("n_layers", "d_model", "n_ctx", "d_vocab")
#: What TransformerLens fills in for a key a config leaves out (``HookedTransformerConfig``
#: and the bridge's ``TransformerBridgeConfig`` alike; tests/test_hostile_inputs.py checks
#: these against the installed ``TransformerBridgeConfig``). Derived ones, applied by
#: ``fill_legacy_defaults``: ``n_heads = d_model // d_head`` (and here also ``d_head =
#: d_model // n_heads``), ``d_mlp = 4 * d_model`` (unused when ``attn_only``),
#: ``attn_scale = sqrt(d_head)``, ``d_vocab_out = d_vocab``. ``act_fn``: the legacy
#: ``HookedTransformerConfig`` demanded one for models with MLPs; TransformerLens 4 defaults
#: it to relu, the value used here.
LEGACY_DEFAULTS: dict[str, Any] = {
    "act_fn": "relu",
    "normalization_type": "LN",
    "eps": 1e-5,
    "use_attn_scale": True,
    "attn_scale": -1.0,
    "attention_dir": "causal",
    "attn_only": False,
    "positional_embedding_type": "standard",
    "d_vocab_out": -1,
}
#: Keys of a training run, not of the model: ignored (as is every key not named in this
#: module: bookkeeping such as ``model_name``, ``device``, ``n_params``, ``dtype``).
LEGACY_TRAINING_KEYS = ("seed", "init_weights", "init_mode", "initializer_range", "optimizer", "learning_rate", "lr",
                        "batch_size", "num_epochs", "n_iters", "n_epochs", "weight_decay", "betas", "momentum",
                        "warmup_steps", "max_steps", "num_train_samples", "fixed_train_dataset", "wandb",
                        "wandb_project_name", "save_every", "print_every", "max_grad_norm", "device", "n_devices")
#: normalization_type values the native bridge builds and the conversion maps. None (no
#: normalisation) is refused: its bridge has no ``ln_final.hook_normalized``, which the
#: analyses read.
LEGACY_NORMALIZATIONS = ("LN", "LNPre", "RMS", "RMSPre")
#: act_fn values the native bridge implements for a plain (non-gated) MLP.
LEGACY_ACTIVATIONS = ("relu", "gelu", "gelu_new", "silu", "swish")
#: attention_dir values, both honoured: causal (GPT) or bidirectional (no mask).
LEGACY_ATTENTION_DIRS = ("causal", "bidirectional")
#: Config options of a HookedTransformerConfig that change the computed function and that
#: this loader does not support: refused, by name, unless they hold the value in the second
#: column. (``attn_only``, ``attention_dir``, ``eps`` and ``attn_scale`` are honoured;
#: ``use_attn_scale = False``, unscaled attention, is refused in ``legacy_config``.)
UNSUPPORTED_LEGACY_OPTIONS: dict[str, Any] = {
    "gated_mlp": False,
    "parallel_attn_mlp": False,
    "final_rms": False,
    "use_local_attn": False,
    "use_qk_norm": False,
    "post_embedding_ln": False,
    "scale_attn_by_inverse_layer_idx": False,
    "positional_embedding_type": "standard",
    "num_experts": None,
    "use_normalization_before_and_after": False,
    "load_in_4bit": False,
}
_SOFTCAP_KEYS = ("attn_scores_soft_cap", "output_logits_soft_cap")
#: Buffers a HookedTransformer state dict carries that are not weights.
LEGACY_BUFFERS = ("mask", "IGNORE")

#: Hugging Face ``model_type`` values ``load_hf_folder`` accepts.
HF_MODEL_TYPES = ("gpt2",)
#: GPT-2 config.json numbers and the interval each must lie in (closed unless noted);
#: ``layer_norm_epsilon`` in (0, 1).
HF_NUMBERS: dict[str, tuple[float, float]] = {
    "layer_norm_epsilon": (0.0, 1.0), "attn_pdrop": (0.0, 1.0), "embd_pdrop": (0.0, 1.0), "resid_pdrop": (0.0, 1.0),
    "summary_first_dropout": (0.0, 1.0), "initializer_range": (0.0, math.inf),
}
#: GPT-2 config.json switches, which must be JSON booleans.
HF_FLAGS = ("scale_attn_weights", "scale_attn_by_inverse_layer_idx", "reorder_and_upcast_attn", "tie_word_embeddings",
            "use_cache", "add_cross_attention", "summary_use_proj", "summary_proj_to_labels")
HF_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")


# --------------------------------------------------------------------------------------
# small helpers


def _first_line(exc: BaseException) -> str:
    return error_line(exc)  # torch's refusal: the refused global; load_state_dict: the key


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def read_json_config(path: str | os.PathLike) -> dict[str, Any]:
    """A JSON object from ``path``; a one-line ``CheckpointError`` when it is missing,
    not JSON, or not an object."""
    p = Path(path)
    if not p.is_file():
        raise CheckpointError(p, "no such config file")
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise CheckpointError(p, f"config is not valid JSON ({_first_line(exc)[:120]})") from None
    except RecursionError:
        raise CheckpointError(p, "config is not a JSON object (nested too deeply)") from None
    if not isinstance(data, dict):
        raise CheckpointError(p, f"config is a JSON {type(data).__name__}, not an object")
    return data


def is_legacy_tl_state_dict(sd: Any) -> bool:
    """Whether ``sd`` looks like a ``HookedTransformer.state_dict()`` (TL property-format
    keys such as ``embed.W_E`` and ``unembed.W_U``) rather than a bridge state dict."""
    return isinstance(sd, Mapping) and "embed.W_E" in sd and "unembed.W_U" in sd


def _torch_load(p: Path) -> Any:
    """``torch.load(weights_only=True)`` with every failure as one CheckpointError line: a
    pickle that would run code is refused, not executed."""

    if not p.exists():
        raise CheckpointError(p, "no such file")
    if p.is_dir():
        raise CheckpointError(p, "is a directory, not a state-dict file")
    if p.stat().st_size == 0:
        raise CheckpointError(p, "empty file")
    return torch_load_plain(p, what="file")


def _check_tensor_dict(p: Path, sd: Any) -> None:
    import torch

    if not isinstance(sd, dict) or not sd:
        raise CheckpointError(p, "is not a non-empty dict of tensors (a state_dict)")
    for k, v in sd.items():
        if not isinstance(k, str) or not torch.is_tensor(v):
            raise CheckpointError(p, f"entry {k!r} is not a named tensor")


def _check_shapes(p: Path, shapes: Mapping[str, Any], expected: dict[str, tuple[int, ...]],
                  optional: dict[str, tuple[int, ...] | None], what: str) -> None:
    """Every ``expected`` key present with its shape; ``optional`` keys may be absent (None:
    any shape); nothing else. ``shapes`` maps key -> shape tuple."""
    for key, shape in expected.items():
        if key not in shapes:
            raise CheckpointError(p, f"missing {key!r}, which the {what} implies")
        if tuple(shapes[key]) != shape:
            raise CheckpointError(p, f"{key} has shape {list(shapes[key])}, the {what} implies {list(shape)}")
    for key, shape in optional.items():
        if key in shapes and shape is not None and tuple(shapes[key]) != shape:
            raise CheckpointError(p, f"{key} has shape {list(shapes[key])}, the {what} implies {list(shape)}")
    extra = sorted(k for k in shapes if k not in expected and k not in optional)
    if extra:
        shown = ", ".join(map(repr, extra[:5])) + (f" and {len(extra) - 5} more" if len(extra) > 5 else "")
        raise CheckpointError(p, f"unexpected weights {shown} (not part of the model the {what} describes)")


def _check_values(p: Path, sd: Mapping[str, "torch.Tensor"], skip: tuple[str, ...] = ()) -> None:
    """Floating point, finite, each tensor with storage of its own (``safeio.weights_problem``)."""
    problem = weights_problem(sd, skip)
    if problem:
        raise CheckpointError(p, problem)


def _bounds_problem(values: Mapping[str, int], where: str) -> str | None:
    for name, bound in BOUNDS.items():
        v = values.get(name)
        if not _is_int(v) or not 0 < v <= bound:
            return f"{where}{name} = {v!r} is not a positive integer within the bound {bound}"
    d, L = values["d_model"], values["n_layers"]
    attn = 4 * d * values["n_heads"] * values["d_head"]
    n_params = L * (attn + 2 * d * values["d_mlp"]) + d * (2 * values["d_vocab"] + values["n_ctx"])
    return (limits.parameters_problem(n_params, "the config")
            or limits.memory_problem(4 * n_params, f"building the model (~{n_params:.3g} float32 parameters)"))


@contextlib.contextmanager
def _offline() -> Iterator[None]:
    """``HF_HUB_OFFLINE=1`` / ``TRANSFORMERS_OFFLINE=1`` while loading (restored after)."""
    keys = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
    old = {k: os.environ.get(k) for k in keys}
    os.environ.update({k: "1" for k in keys})
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


# --------------------------------------------------------------------------------------
# legacy TransformerLens state dicts


def fill_legacy_defaults(raw: Mapping[str, Any], source: str | os.PathLike = "<config>") -> dict[str, Any]:
    """A legacy TransformerLens config with TransformerLens's own defaults filled in for
    every key it defaults (``LEGACY_DEFAULTS`` and the derived ``n_heads`` / ``d_head``,
    ``d_mlp``, ``d_vocab_out``), as ``HookedTransformerConfig(**raw)`` would have: a config
    written without ``d_mlp`` (as published configs often are) means ``4 * d_model``. Keys
    it needs and cannot default (``LEGACY_REQUIRED``, and ``d_head`` or ``n_heads``) are a
    one-line ``CheckpointError``; nothing else is checked here (``legacy_config`` does)."""
    cfg = dict(raw)
    missing = [k for k in LEGACY_REQUIRED if cfg.get(k) in (None, -1)]
    if cfg.get("d_head") in (None, -1) and cfg.get("n_heads") in (None, -1):
        missing.append("d_head (or n_heads)")
    if missing:
        raise CheckpointError(source, f"config is missing {', '.join(map(repr, missing))}, which TransformerLens has "
                                      f"no default for (needed: {', '.join(LEGACY_REQUIRED)}, d_head or n_heads)")
    for key, default in LEGACY_DEFAULTS.items():
        if cfg.get(key) is None and not (key == "normalization_type" and key in cfg):
            cfg[key] = default  # an explicit normalization_type None stays None (refused later)
    d = cfg["d_model"]
    for have, want in (("d_head", "n_heads"), ("n_heads", "d_head")):
        if cfg.get(want) in (None, -1) and cfg.get(have) not in (None, -1):
            h = cfg[have]
            if not (_is_int(d) and _is_int(h) and h > 0 and d % h == 0):
                raise CheckpointError(source, f"config has no {want}, and d_model = {d!r} is not a multiple of "
                                              f"{have} = {h!r} to derive it from; give {want}")
            cfg[want] = d // h
    if cfg.get("d_mlp") is None and _is_int(d):
        cfg["d_mlp"] = 4 * d  # TransformerLens: "for some reason everyone hard codes in this hyper-parameter"
    if cfg["d_vocab_out"] == -1:
        cfg["d_vocab_out"] = cfg["d_vocab"]
    if cfg["attn_scale"] == -1 and _is_int(cfg["d_head"]) and cfg["d_head"] > 0:
        cfg["attn_scale"] = math.sqrt(cfg["d_head"])
    return cfg


def legacy_config(config: Mapping[str, Any] | str | os.PathLike, source: str | os.PathLike = "<config>") -> dict[str, Any]:
    """Validate a legacy TL config (a dict, or a path to a JSON file), with TransformerLens's
    defaults filled in (``fill_legacy_defaults``), and return the ``TransformerBridgeConfig``
    keyword arguments it implies. Training keys (``LEGACY_TRAINING_KEYS``) and other keys
    that do not change the forward are ignored; a key that changes it is honoured
    (``attn_only``, ``attention_dir``, ``eps``, ``attn_scale``) or refused by name
    (``UNSUPPORTED_LEGACY_OPTIONS``, ``use_attn_scale = false``, rotary positions ...).
    ``source`` names the file in errors when ``config`` is a dict."""
    if isinstance(config, (str, os.PathLike)):
        source = Path(config)
        raw = read_json_config(config)
    elif isinstance(config, Mapping):
        raw = dict(config)
    else:
        raise CheckpointError(source, f"config must be a dict or a JSON file path, got {type(config).__name__}")
    raw = fill_legacy_defaults(raw, source)
    problem = _bounds_problem(raw, "config.")
    if problem:
        raise CheckpointError(source, problem)
    norm = raw["normalization_type"]
    if norm not in LEGACY_NORMALIZATIONS:
        raise CheckpointError(source, f"config.normalization_type = {norm!r} is not supported (use one of {', '.join(map(str, LEGACY_NORMALIZATIONS))})")
    act = raw["act_fn"]
    if act not in LEGACY_ACTIVATIONS:
        raise CheckpointError(source, f"config.act_fn = {act!r} is not supported (use one of {', '.join(LEGACY_ACTIVATIONS)})")
    for key in ("attn_only", "use_attn_scale"):
        if not isinstance(raw[key], bool):
            raise CheckpointError(source, f"config.{key} = {raw[key]!r} is not a boolean")
    if raw["attention_dir"] not in LEGACY_ATTENTION_DIRS:
        raise CheckpointError(source, f"config.attention_dir = {raw['attention_dir']!r} is not supported (use one of "
                                      f"{', '.join(LEGACY_ATTENTION_DIRS)})")
    for key, default in UNSUPPORTED_LEGACY_OPTIONS.items():
        if key in raw and raw[key] not in (default, None):
            raise CheckpointError(source, f"config.{key} = {raw[key]!r} is not supported (only {default!r})")
    for key in _SOFTCAP_KEYS:
        v = raw.get(key)
        if v is not None and (not isinstance(v, (int, float)) or v > 0):
            raise CheckpointError(source, f"config.{key} = {v!r} is not supported (no soft-capping)")
    kv = raw.get("n_key_value_heads")
    if kv is not None and kv != raw["n_heads"]:
        raise CheckpointError(source, f"config.n_key_value_heads = {kv!r} is not supported (grouped-query attention)")
    if raw["d_vocab_out"] != raw["d_vocab"]:
        raise CheckpointError(source, f"config.d_vocab_out = {raw['d_vocab_out']!r} differs from d_vocab {raw['d_vocab']} (not supported)")
    out = {k: raw[k] for k in ("n_layers", "d_model", "n_heads", "d_head", "d_mlp", "n_ctx", "d_vocab", "act_fn",
                               "normalization_type", "attention_dir", "attn_only")}
    eps = raw["eps"]
    if not isinstance(eps, (int, float)) or isinstance(eps, bool) or not 0 < eps < 1:
        raise CheckpointError(source, f"config.eps = {eps!r} is not a number in (0, 1)")
    out["eps"] = float(eps)
    scale = raw["attn_scale"]
    if not isinstance(scale, (int, float)) or isinstance(scale, bool) or not (scale == -1 or scale > 0) or not math.isfinite(scale):
        raise CheckpointError(source, f"config.attn_scale = {scale!r} is not positive (or -1 for sqrt(d_head))")
    if not raw["use_attn_scale"]:  # HookedTransformer: no scaling at all = divide by 1; the bridge always scales
        raise CheckpointError(source, "config.use_attn_scale = False is not supported (unscaled attention)")
    out["use_attn_scale"] = True
    out["attn_scale"] = float(scale)
    return out


def expected_legacy_shapes(cfg: Mapping[str, Any]) -> tuple[dict[str, tuple[int, ...]], dict[str, tuple[int, ...] | None]]:
    """``(required, optional)`` key -> shape of a ``HookedTransformer.state_dict()`` for a
    validated legacy config (``legacy_config``). Optional: ``unembed.b_U`` (zero-filled when
    absent, as TransformerLens's own legacy loader does) and the attention buffers."""
    d, V, C = cfg["d_model"], cfg["d_vocab"], cfg["n_ctx"]
    H, dh, M = cfg["n_heads"], cfg["d_head"], cfg["d_mlp"]
    norm = cfg["normalization_type"]

    def ln(prefix: str) -> dict[str, tuple[int, ...]]:
        if norm == "LN":
            return {f"{prefix}.w": (d,), f"{prefix}.b": (d,)}
        if norm == "RMS":
            return {f"{prefix}.w": (d,)}
        return {}  # LNPre / RMSPre: no parameters

    req: dict[str, tuple[int, ...]] = {"embed.W_E": (V, d), "pos_embed.W_pos": (C, d)}
    opt: dict[str, tuple[int, ...] | None] = {"unembed.b_U": (V,)}
    for i in range(cfg["n_layers"]):
        b = f"blocks.{i}"
        req.update(ln(f"{b}.ln1"))
        req.update({
            f"{b}.attn.W_Q": (H, d, dh), f"{b}.attn.W_K": (H, d, dh), f"{b}.attn.W_V": (H, d, dh),
            f"{b}.attn.W_O": (H, dh, d),
            f"{b}.attn.b_Q": (H, dh), f"{b}.attn.b_K": (H, dh), f"{b}.attn.b_V": (H, dh),
            f"{b}.attn.b_O": (d,),
        })
        if not cfg.get("attn_only"):  # an attention-only model has no second norm and no MLP
            req.update(ln(f"{b}.ln2"))
            req.update({f"{b}.mlp.W_in": (d, M), f"{b}.mlp.b_in": (M,), f"{b}.mlp.W_out": (M, d), f"{b}.mlp.b_out": (d,)})
        opt.update({f"{b}.attn.mask": (C, C), f"{b}.attn.IGNORE": ()})
    req.update(ln("ln_final"))
    req["unembed.W_U"] = (d, V)
    return req, opt


def load_legacy_tl(state_dict_path: str | os.PathLike, config: Mapping[str, Any] | str | os.PathLike,
                   device: str | None = "cpu") -> "TransformerBridge":
    """A legacy TransformerLens ``HookedTransformer.state_dict()`` file as a native
    ``TransformerBridge`` (eval mode) on ``device``.

    ``config`` is a dict or a JSON file as TransformerLens wrote it (``HookedTransformerConfig
    .to_dict()``, or a training config such as a published study's ``train_config.json``):
    ``n_layers, d_model, n_ctx, d_vocab`` and ``d_head`` or ``n_heads``; every key
    TransformerLens defaults takes TransformerLens's default when absent
    (``fill_legacy_defaults``: ``d_mlp = 4 * d_model``, ``n_heads = d_model // d_head``,
    ``act_fn`` relu, ``normalization_type`` LN, ``eps`` 1e-5, causal attention scaled by
    sqrt(d_head), learned positions). Training keys (``LEGACY_TRAINING_KEYS``: optimizer,
    learning_rate, batch_size, num_epochs, seed, ...) and bookkeeping keys are ignored.
    Keys that change the forward are honoured (``attn_only``: no MLPs; ``attention_dir``
    causal or bidirectional; ``eps``; ``attn_scale``) or refused by name when not at their
    default (``UNSUPPORTED_LEGACY_OPTIONS``: gated MLP, parallel attention, rotary /
    shortformer positions, local attention, QK norm, final RMS, grouped-query heads,
    soft-capping; ``use_attn_scale = false``).

    Supported: ``normalization_type`` LN, LNPre, RMS or RMSPre (not None: that bridge has
    no ``ln_final.hook_normalized``); ``act_fn`` relu, gelu
    (exact), gelu_new (tanh), silu / swish. The buffers ``blocks.{l}.attn.mask`` /
    ``IGNORE`` are accepted and dropped; a missing ``unembed.b_U`` is zero-filled.

    The file is read with ``torch.load(weights_only=True)`` (a pickle that would run code is
    refused); config bounds, every key and every shape are checked before the model is
    built. Raises a one-line ``CheckpointError`` naming the file and the key, and
    ``DeviceError`` for a bad ``device``.
    """
    dev = resolve_device(device)
    p = Path(state_dict_path)
    kwargs = legacy_config(config, source=p)
    sd = _torch_load(p)
    _check_tensor_dict(p, sd)
    if not is_legacy_tl_state_dict(sd):
        raise CheckpointError(p, "not a legacy TransformerLens state_dict (no 'embed.W_E' / 'unembed.W_U'; a bridge or HF state dict?)")
    required, optional = expected_legacy_shapes(kwargs)
    _check_shapes(p, {k: tuple(v.shape) for k, v in sd.items()}, required, optional, "config")
    _check_values(p, sd, skip=tuple(f".{b}" for b in LEGACY_BUFFERS))

    import torch
    from transformer_lens.config import TransformerBridgeConfig
    from transformer_lens.model_bridge import TransformerBridge
    from transformer_lens.utilities.tl_checkpoint_conversion import convert_tl_checkpoint

    tl_cfg = TransformerBridgeConfig(**kwargs, init_weights=False, seed=0)
    try:
        converted = convert_tl_checkpoint({k: v.float() for k, v in sd.items()}, tl_cfg)
    except ValueError as exc:
        raise CheckpointError(p, f"cannot convert ({_first_line(exc)[:200]})") from None
    converted.setdefault("unembed.bias", torch.zeros(kwargs["d_vocab"]))
    with _offline():
        model = TransformerBridge.boot_native(tl_cfg)
    try:
        result = model.load_state_dict(converted, strict=True)
    except (RuntimeError, KeyError) as exc:
        raise CheckpointError(p, f"weights do not fit the native model ({_first_line(exc)[:200]})") from None
    if result.missing_keys or result.unexpected_keys:  # pragma: no cover - strict raises first
        raise CheckpointError(p, f"weights do not fit the native model (missing {result.missing_keys}, unexpected {result.unexpected_keys})")
    return move(model, dev).eval()


# --------------------------------------------------------------------------------------
# local Hugging Face folders (GPT-2)


def _hf_dims(p: Path, raw: Mapping[str, Any]) -> dict[str, int]:
    """Our dimension names for a GPT-2 config.json, within the bounds."""
    for key in ("n_layer", "n_embd", "n_head", "n_positions", "vocab_size"):
        if key not in raw:
            raise CheckpointError(p, f"config is missing {key!r} (needed: n_layer, n_embd, n_head, n_positions, vocab_size)")
    d, h = raw["n_embd"], raw["n_head"]
    inner = raw.get("n_inner")
    dims = {
        "n_layers": raw["n_layer"], "d_model": d, "n_heads": h,
        "d_head": d // h if _is_int(d) and _is_int(h) and h > 0 else h,
        "d_mlp": 4 * d if inner is None and _is_int(d) else inner,
        "n_ctx": raw["n_positions"], "d_vocab": raw["vocab_size"],
    }
    names = {"n_layers": "n_layer", "d_model": "n_embd", "n_heads": "n_head", "d_head": "n_embd // n_head",
             "d_mlp": "n_inner", "n_ctx": "n_positions", "d_vocab": "vocab_size"}
    for ours, bound in BOUNDS.items():
        v = dims[ours]
        if not _is_int(v) or not 0 < v <= bound:
            raise CheckpointError(p, f"config.{names[ours]} = {v!r} is not a positive integer within the bound {bound}")
    if d % h:
        raise CheckpointError(p, f"config.n_embd = {d} is not divisible by n_head = {h}")
    problem = _bounds_problem(dims, "")
    if problem:
        raise CheckpointError(p, problem)
    return dims


def _check_hf_options(p: Path, raw: Mapping[str, Any]) -> None:
    """The GPT-2 config.json keys besides the dimensions, each named in a one-line
    ``CheckpointError`` when it holds something transformers would choke on deep inside
    (an activation it does not know, an epsilon written as a string)."""
    for key, (low, high) in HF_NUMBERS.items():
        v = raw.get(key)
        if v is None:
            continue
        if not isinstance(v, (int, float)) or isinstance(v, bool) or not math.isfinite(v) or not low <= v <= high \
                or (key == "layer_norm_epsilon" and not 0 < v < 1):
            where = "(0, 1)" if key == "layer_norm_epsilon" else f"[{low:g}, {high:g}]"
            raise CheckpointError(p, f"config.{key} = {v!r} is not a number in {where}")
    for key in HF_FLAGS:
        v = raw.get(key)
        if v is not None and not isinstance(v, bool):
            raise CheckpointError(p, f"config.{key} = {v!r} is not a boolean (true or false)")
    act = raw.get("activation_function", "gelu_new")
    from transformers.activations import ACT2FN

    if not isinstance(act, str) or act not in ACT2FN:
        raise CheckpointError(p, f"config.activation_function = {act!r} is not an activation transformers knows "
                                 "(e.g. gelu_new, gelu, relu, silu)")


def expected_gpt2_shapes(dims: Mapping[str, int], tied: bool) -> tuple[dict[str, tuple[int, ...]], dict[str, tuple[int, ...] | None]]:
    """``(required, optional)`` key -> shape of a ``GPT2LMHeadModel`` state dict (HF Conv1D
    weights are [in, out]). ``lm_head.weight`` is optional when the embeddings are tied;
    the old causal-mask buffers ``h.{l}.attn.bias`` / ``masked_bias`` are accepted."""
    d, M, V, C = dims["d_model"], dims["d_mlp"], dims["d_vocab"], dims["n_ctx"]
    t = "transformer."
    req: dict[str, tuple[int, ...]] = {f"{t}wte.weight": (V, d), f"{t}wpe.weight": (C, d)}
    opt: dict[str, tuple[int, ...] | None] = {}
    for i in range(dims["n_layers"]):
        b = f"{t}h.{i}."
        req.update({
            f"{b}ln_1.weight": (d,), f"{b}ln_1.bias": (d,),
            f"{b}attn.c_attn.weight": (d, 3 * d), f"{b}attn.c_attn.bias": (3 * d,),
            f"{b}attn.c_proj.weight": (d, d), f"{b}attn.c_proj.bias": (d,),
            f"{b}ln_2.weight": (d,), f"{b}ln_2.bias": (d,),
            f"{b}mlp.c_fc.weight": (d, M), f"{b}mlp.c_fc.bias": (M,),
            f"{b}mlp.c_proj.weight": (M, d), f"{b}mlp.c_proj.bias": (d,),
        })
        opt.update({f"{b}attn.bias": None, f"{b}attn.masked_bias": None})
    req.update({f"{t}ln_f.weight": (d,), f"{t}ln_f.bias": (d,)})
    if tied:
        opt["lm_head.weight"] = (V, d)
    else:
        req["lm_head.weight"] = (V, d)
    return req, opt


def _hf_key(k: str, prefixed: bool) -> str:
    return k if prefixed or k.startswith("lm_head.") else f"transformer.{k}"


def _hf_weight_shapes(wp: Path) -> dict[str, tuple[int, ...]]:
    """Key -> shape of a safetensors file from its header (nothing loaded)."""
    from safetensors import safe_open

    try:
        with safe_open(str(wp), framework="pt") as f:
            return {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
    except Exception as exc:  # noqa: BLE001 - SafetensorError and friends from a foreign file
        raise CheckpointError(wp, f"corrupt or not a safetensors file ({_first_line(exc)[:160]})") from None


def load_hf_folder(folder: str | os.PathLike, device: str | None = "cpu") -> "TransformerBridge":
    """A local Hugging Face GPT-2 folder as a ``TransformerBridge`` (eval mode) on ``device``.

    ``folder`` holds ``config.json`` (``model_type`` "gpt2") and ``model.safetensors``
    (preferred) or ``pytorch_model.bin`` (read only through ``torch.load(weights_only=
    True)``); keys with or without the ``transformer.`` prefix. Sharded checkpoints are not
    supported. Nothing is fetched from a hub (``HF_HUB_OFFLINE=1`` while loading, no
    ``from_pretrained``) and no tokenizer is loaded: the bridge takes token ids.

    The HF model is built from the config (eager attention), the weights are checked
    (bounds, keys, shapes) before it is built, and the bridge is made with TransformerLens's
    own HF adapter (``build_bridge_from_module``, what ``boot_transformers`` does after
    loading). Its hook names are the same as for our native models:
    ``blocks.0.hook_resid_pre`` (token + position embedding), ``blocks.{l}.hook_resid_post``
    (= HF ``hidden_states[l + 1]`` for all but the last block), ``ln_final.hook_normalized``
    (``ln_f``'s normalised input before its weight and bias; ``ln_final.hook_out`` = ``ln_f``
    output = HF's last ``hidden_states`` entry). As a guard, the bridge's logits on a short
    probe sequence must match the HF model's own (computed before wrapping).

    Raises a one-line ``CheckpointError`` naming the file (and key) for a missing folder,
    config or weights, a foreign ``model_type``, out-of-bounds dimensions, a missing,
    misshapen or unexpected weight, or an unsafe pickle; ``DeviceError`` for a bad device.
    """
    dev = resolve_device(device)
    root = Path(folder)
    if not root.exists():
        raise CheckpointError(root, "no such folder")
    if not root.is_dir():
        raise CheckpointError(root, "is not a folder (expected a Hugging Face model folder with config.json)")
    cfg_path = root / "config.json"
    if not cfg_path.is_file():
        raise CheckpointError(root, "has no config.json (not a Hugging Face model folder)")
    raw = read_json_config(cfg_path)
    mt = raw.get("model_type")
    if mt not in HF_MODEL_TYPES:
        raise CheckpointError(cfg_path, f"model_type {mt!r} is not supported (only {', '.join(map(repr, HF_MODEL_TYPES))})")
    dims = _hf_dims(cfg_path, raw)
    with _offline():
        _check_hf_options(cfg_path, raw)
    if raw.get("scale_attn_weights", True) is False:  # the bridge's GPT-2 attention always scales
        raise CheckpointError(cfg_path, "config.scale_attn_weights = false is not supported (the bridge scales attention by 1/sqrt(d_head))")
    tied = raw.get("tie_word_embeddings", True) is not False

    wp = next((root / n for n in HF_WEIGHT_FILES if (root / n).is_file()), None)
    if wp is None:
        sharded = any((root / f"{n}.index.json").is_file() for n in HF_WEIGHT_FILES)
        raise CheckpointError(root, "sharded checkpoints are not supported" if sharded
                              else f"has no weights ({' or '.join(HF_WEIGHT_FILES)})")
    if wp.suffix == ".safetensors":
        shapes = _hf_weight_shapes(wp)
        sd = None
    else:
        sd = _torch_load(wp)
        _check_tensor_dict(wp, sd)
        shapes = {k: tuple(v.shape) for k, v in sd.items()}
    prefixed = any(k.startswith("transformer.") for k in shapes)
    shapes = {_hf_key(k, prefixed): s for k, s in shapes.items()}
    required, optional = expected_gpt2_shapes(dims, tied)
    _check_shapes(wp, shapes, required, optional, "config")

    import torch

    if sd is None:
        from safetensors.torch import load_file

        try:
            sd = load_file(str(wp), device="cpu")
        except Exception as exc:  # noqa: BLE001
            raise CheckpointError(wp, f"corrupt safetensors file ({_first_line(exc)[:160]})") from None
    sd = {_hf_key(k, prefixed): v for k, v in sd.items() if not k.endswith((".attn.bias", ".attn.masked_bias"))}
    _check_values(wp, sd)
    if tied and "lm_head.weight" in sd and not torch.equal(sd["lm_head.weight"], sd["transformer.wte.weight"]):
        raise CheckpointError(wp, "lm_head.weight differs from transformer.wte.weight although config.json ties them")

    with _offline():
        from transformer_lens.model_bridge.sources._bridge_builder import build_bridge_from_module
        from transformer_lens.model_bridge.sources._hf_format import (
            determine_architecture_from_hf_config,
        )
        from transformers import GPT2Config, GPT2LMHeadModel

        try:  # any other key transformers refuses (its validation errors name the field)
            hf_cfg = GPT2Config.from_dict({k: v for k, v in raw.items() if k not in ("auto_map", "transformers_version")})
            hf_cfg._attn_implementation = "eager"  # what the bridge forces; also the reference below
            model = GPT2LMHeadModel(hf_cfg)
        except Exception as exc:  # noqa: BLE001 - transformers' own validation error classes vary by version
            raise CheckpointError(cfg_path, f"invalid GPT-2 config ({' '.join(str(exc).split())[:200]})") from None
        if tied:  # one tensor with wte (checked equal above)
            sd.pop("lm_head.weight", None)
        result = model.load_state_dict({k: v.float() for k, v in sd.items()}, strict=False)
        missing = [k for k in result.missing_keys if not (tied and k == "lm_head.weight")]
        if missing or result.unexpected_keys:
            raise CheckpointError(wp, f"weights do not fit GPT2LMHeadModel (missing {missing[:3]}, unexpected {result.unexpected_keys[:3]})")
        model.float().eval()
        probe = (torch.arange(min(8, dims["n_ctx"])) % dims["d_vocab"]).unsqueeze(0)
        with torch.no_grad():
            want = model(probe).logits
        bridge = build_bridge_from_module(model, determine_architecture_from_hf_config(hf_cfg),
                                          hf_config=hf_cfg, model_name=str(root))
        bridge.eval()
        with torch.no_grad():
            got = bridge(probe)
    err = float((got - want).abs().max())
    if not err <= 1e-4 * (1.0 + float(want.abs().max())):
        raise CheckpointError(root, f"the TransformerLens bridge does not reproduce the model's logits (max difference {err:.3g})")
    return move(bridge, dev).eval()


__all__ = [
    "BOUNDS", "MAX_PARAMETERS", "LEGACY_REQUIRED", "LEGACY_DEFAULTS", "LEGACY_TRAINING_KEYS", "LEGACY_NORMALIZATIONS",
    "LEGACY_ACTIVATIONS", "LEGACY_ATTENTION_DIRS", "UNSUPPORTED_LEGACY_OPTIONS", "fill_legacy_defaults", "HF_MODEL_TYPES", "HF_WEIGHT_FILES",
    "HF_NUMBERS", "HF_FLAGS",
    "load_legacy_tl", "load_hf_folder", "legacy_config", "expected_legacy_shapes", "expected_gpt2_shapes",
    "is_legacy_tl_state_dict", "read_json_config",
]
