"""Hugging Face export folders: ``export_hf`` writes one from a checkpoint, ``load_export``
reads it back as the same ``LoadedCheckpoint``.

A folder that ``transformers`` loads as ``GPT2LMHeadModel`` with no code of ours, and that
this toolkit reads back with everything else a checkpoint carries::

    OUT_DIR/
      config.json                    GPT2Config (written by transformers' save_pretrained)
      model.safetensors              the transformer as GPT2LMHeadModel weights
      generation_config.json         (transformers' own, when it writes one)
      nextlat_dynamics.safetensors   NextLat's p_psi ("p_psi.*") and MTP's extra heads
                                     ("mtp.*"); absent for GPT
      nextlat_config.json            what the rest is: objective and its config, model
                                     config, world spec (the taxi map itself), training
                                     config, step, validation loss / exact floor / gap,
                                     p_psi and MTP-head configs, the source checkpoint
      README.md                      model card: world, objective, steps, validation loss
                                     and gap to the exact floor, how to load it

Which architectures GPT-2 can hold is ``models.gpt2.gpt2_refusal``'s to say (learned
positions, LayerNorm, GELU ...); anything else is refused in one line naming the feature.
Every export is checked before it is kept: transformers' ``GPT2LMHeadModel.from_pretrained``
on the written files must give our logits (to 1e-5, relative to their size). The folder is
built under a temporary name next to ``OUT_DIR`` and renamed into place, so a failed export
leaves nothing behind and a reader never sees half a folder. A non-empty ``OUT_DIR`` is
refused unless it holds an earlier export (files of an export only) and ``overwrite`` is
given; nothing else is ever replaced.

``load_export`` validates everything before it builds a model: the JSON config, the
GPT-2 ``config.json`` against it (every architecture key), every tensor's shape from the
safetensors headers, then the checkpoint checks of ``checkpoint.validate_checkpoint``
(bounds, p_psi, MTP heads). The native model it builds holds exactly the exported weights,
so every analysis gives the same records as on the original checkpoint.
"""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

from . import __version__
from .errors import CheckpointError, UsageError

EXPORT_FORMAT = "nextlat_probe.hf_export"
EXPORT_VERSION = 1
EXPORT_CONFIG = "nextlat_config.json"
DYNAMICS_FILE = "nextlat_dynamics.safetensors"
WEIGHTS_FILE = "model.safetensors"
#: every file an export may hold (an earlier export is a folder of these only)
EXPORT_FILES = ("config.json", WEIGHTS_FILE, "generation_config.json", DYNAMICS_FILE, EXPORT_CONFIG, "README.md")
#: transformers' logits on the written folder must match ours within this, times (1 + max |logit|)
LOGITS_TOLERANCE = 1e-5


class ExportError(UsageError):
    """A checkpoint that cannot be exported, or a folder that may not be written."""


@dataclass
class ExportResult:
    path: Path
    files: list[str]
    objective: str
    max_logit_difference: float
    replaced: bool = False
    notes: list[str] = field(default_factory=list)


# --------------------------------------------------------------------------------------
# which folders are exports
# --------------------------------------------------------------------------------------
def read_export_config(folder: str | os.PathLike) -> dict[str, Any] | None:
    """``nextlat_config.json`` of an export folder, or None when ``folder`` is not one."""
    p = Path(folder) / EXPORT_CONFIG
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError):
        return None
    return data if isinstance(data, dict) and data.get("format") == EXPORT_FORMAT else None


def is_export(folder: str | os.PathLike) -> bool:
    return Path(folder).is_dir() and (Path(folder) / EXPORT_CONFIG).is_file()


def _check_target(out: Path, overwrite: bool) -> bool:
    """Whether ``out`` holds an earlier export to replace; refuses every other non-empty
    folder (in one line), before any work is done."""
    if out.exists() and not out.is_dir():
        raise ExportError(f"{out}: exists and is not a folder")
    if not out.exists():
        return False
    present = sorted(p.name for p in out.iterdir())
    if not present:
        return False
    if read_export_config(out) is None:
        shown = ", ".join(present[:3]) + (", ..." if len(present) > 3 else "")
        raise ExportError(f"{out}: not empty and not an earlier export ({shown}); choose a new or empty folder")
    foreign = [n for n in present if n not in EXPORT_FILES]
    if foreign:
        raise ExportError(f"{out}: holds an earlier export and files an export does not write ({', '.join(foreign[:3])}); "
                          "move them away or choose another folder")
    if not overwrite:
        raise ExportError(f"{out}: holds an earlier export; --overwrite replaces it")
    return True


# --------------------------------------------------------------------------------------
# writing
# --------------------------------------------------------------------------------------
def _probe_tokens(ck: Any):
    """A few of the world's own sequences at the model's context (or the world's length)."""
    import numpy as np
    import torch

    n_ctx = ck.model_config.n_ctx
    length = min(n_ctx, int(ck.train_config.get("seq_len") or getattr(ck.world, "default_length", n_ctx) or n_ctx))
    try:
        tokens = ck.world.sample(4, max(2, length), seed=np.random.default_rng(0)).tokens
    except Exception:  # noqa: BLE001 - any world: random tokens check the same arithmetic
        tokens = np.random.default_rng(0).integers(0, ck.model_config.d_vocab, size=(4, max(2, length)))
    return torch.as_tensor(np.asarray(tokens, dtype=np.int64))


def _world_text(ck: Any) -> str:
    """``mess3 (x=0.05, a=0.85)``, ``taxi (walk=random, min_len=4, ..., map_size=4)``: the
    world's name, the scalar settings of its spec and the options it was built with (the
    map or transition tensor itself stays in nextlat_config.json)."""
    spec = ck.raw.get("world_spec") or {}
    tc = ck.train_config or {}
    name = tc.get("world") or spec.get("name") or spec.get("kind") or getattr(ck.world, "name", "?")
    items: dict[str, Any] = {}
    for k, v in list(spec.items()) + list((spec.get("params") or {}).items()) + list((tc.get("world_options") or {}).items()):
        if k not in ("kind", "name") and isinstance(v, (int, float, str)) and not isinstance(v, bool):
            items.setdefault(k, v)
    inner = ", ".join(f"{k}={v}" for k, v in items.items())
    return f"{name}" + (f" ({inner})" if inner else "")


def _fmt(v: Any, spec: str = ".4f") -> str:
    try:
        return format(float(v), spec)
    except (TypeError, ValueError):
        return "unknown"


def model_card(ck: Any, export_config: dict[str, Any], out: Path) -> str:
    """The folder's README.md: what the model is, how far it was trained, how to load it."""
    ocfg = export_config["objective_config"]
    objective = ocfg["objective"]
    obj_text = {"gpt": "GPT (next-token cross-entropy)",
                "nextlat": (f"NextLat (next-token CE + next-latent prediction with p_psi; horizon d = {ocfg['horizon']}, "
                            f"lambda_h = {ocfg['lambda_h']:g}, lambda_kl = {ocfg['lambda_kl']:g})"),
                "mtp": f"MTP (multi-token prediction, {ocfg['horizon']} extra head(s))"}.get(objective, objective)
    m = export_config["metrics"] or {}
    tc = export_config["train_config"] or {}
    mc = export_config["model_config"]
    names = list(getattr(ck.world, "token_names", []))
    tokens = ", ".join(f"{i}={n}" for i, n in enumerate(names[:40])) + (f", ... ({len(names)} in all)" if len(names) > 40 else "")
    side = {"nextlat": f"`{DYNAMICS_FILE}` holds p_psi (keys `p_psi.*`; config `dynamics_config` in `{EXPORT_CONFIG}`).",
            "mtp": f"`{DYNAMICS_FILE}` holds the MTP extra heads (keys `mtp.*`; config `mtp_config` in `{EXPORT_CONFIG}`)."
            }.get(objective, "A GPT model has no p_psi or extra heads.")
    rows = [
        ("world", _world_text(ck) + f"; full spec in `{EXPORT_CONFIG}` (`world_spec`)"),
        ("objective", obj_text),
        ("steps", f"{export_config['step']} of {tc.get('steps', '?')} (batch {tc.get('batch_size', '?')}, "
                  f"lr {tc.get('lr', '?')}, seed {tc.get('seed', '?')})"),
        ("validation loss", f"{_fmt(m.get('val_loss'))} nats/token (step {m.get('step', '?')}, "
                            f"{tc.get('n_val', '?')} held-out sequences)"),
        ("exact floor", f"{_fmt(m.get('val_floor'))} nats/token (the world's exact predictive distribution on the "
                        "same tokens)"),
        ("gap to the floor", f"{_fmt(m.get('gap_to_floor'))} nats/token"),
        ("model", f"{mc['n_layers']} layers, d_model {mc['d_model']}, {mc['n_heads']} heads of {mc['d_head']}, "
                  f"d_mlp {mc['d_mlp']}, context {mc['n_ctx']}, {mc['d_vocab']} tokens, {mc['act_fn']}, "
                  "learned positions, LayerNorm, untied unembedding"),
    ]
    table = "\n".join(f"| {k} | {v} |" for k, v in rows)
    return f"""---
library_name: transformers
tags:
- nextlat_probe
- gpt2
- {objective}
---

# {out.name}: {objective} on {_world_text(ck)}

A {objective} model trained by nextlat_probe {export_config['package_version']} on a world with exact
belief states, exported as a Hugging Face GPT-2 folder.

| | |
|---|---|
{table}

## Tokens

Token ids are the world's own tokens (no tokenizer): {tokens or "see the world spec"}.

## Load

```python
from transformers import GPT2LMHeadModel
model = GPT2LMHeadModel.from_pretrained("{out}")   # logits = model(token_ids).logits
```

With p_psi (or the MTP heads) and the world, for every nextlat_probe analysis:

```python
import nextlat_probe
ck = nextlat_probe.load_model("{out}")   # ck.model, ck.world, ck.dynamics
```

```bash
python -m nextlat_probe.rank {out}
```

{side}

Exported from `{export_config['source']['checkpoint']}` on {export_config['source']['exported']}.
"""


def export_hf(source: str | os.PathLike, out_dir: str | os.PathLike, *, overwrite: bool = False) -> ExportResult:
    """Write the checkpoint ``source`` (a ``ckpt.pt`` or run folder) as a Hugging Face
    GPT-2 folder ``out_dir`` (module docstring). Raises ``ExportError`` (one line) for an
    architecture GPT-2 cannot hold or a folder that may not be written, ``CheckpointError``
    for a bad checkpoint."""
    from .checkpoint import load_checkpoint
    from .models.gpt2 import gpt2_refusal

    out = Path(out_dir)
    replacing = _check_target(out, overwrite)  # before the (slow) load: a refusal costs nothing
    ck = load_checkpoint(source, device="cpu")
    sd = ck.model.state_dict()
    refusal = gpt2_refusal(ck.model_config, eps=float(getattr(ck.model.cfg, "eps", 1e-5)),
                           attn_scale=float(getattr(ck.model.cfg, "attn_scale", -1.0)),
                           unembed_bias=sd.get("unembed.bias"))
    if refusal:
        raise ExportError(f"{ck.path}: cannot export as GPT-2: {refusal}")

    parent = out.absolute().parent
    created = _mkdirs(parent)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".export.tmp", dir=parent))
    try:
        result = _write(ck, sd, tmp, out)
        os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp makes 0700; an export is an ordinary folder
        if replacing:
            backup = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".replaced.tmp", dir=parent))
            os.rename(out, backup / "old")
            try:
                os.rename(tmp, out)
            except BaseException:
                os.rename(backup / "old", out)  # the earlier export back in place
                backup.rmdir()
                raise
            shutil.rmtree(backup, ignore_errors=True)
        else:
            if out.is_dir():
                out.rmdir()  # empty (checked): rename needs the name free
            os.rename(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        for p in created:
            try:
                p.rmdir()
            except OSError:
                break
        raise
    result.path, result.replaced = out, replacing
    return result


@contextlib.contextmanager
def _quiet_transformers() -> Iterator[None]:
    """transformers without its progress bars and info lines (a CLI prints its own)."""
    from transformers.utils import logging as hf_logging

    bars, level = hf_logging.is_progress_bar_enabled(), hf_logging.get_verbosity()
    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
    try:
        yield
    finally:
        hf_logging.set_verbosity(level)
        if bars:
            hf_logging.enable_progress_bar()


def _umask() -> int:
    u = os.umask(0)
    os.umask(u)
    return u


def _mkdirs(path: Path) -> list[Path]:
    """mkdir -p; returns the folders created, deepest first (removed again on failure)."""
    made = [p for p in [path, *path.parents] if not p.exists()]
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ExportError(f"{path}: cannot create the folder ({exc.strerror or exc})") from None
    return made


def _write(ck: Any, sd: dict[str, Any], tmp: Path, out: Path) -> ExportResult:
    import torch
    from safetensors.torch import save_file

    from .checkpoint import plain
    from .models.foreign import _offline
    from .models.gpt2 import gpt2_config, to_gpt2

    eps = float(getattr(ck.model.cfg, "eps", 1e-5))
    with _offline(), _quiet_transformers():
        from transformers import GPT2Config, GPT2LMHeadModel

        hf = GPT2LMHeadModel(GPT2Config(**gpt2_config(ck.model_config, eps)))
        hf.load_state_dict(to_gpt2(sd, ck.model_config), strict=True)
        hf.save_pretrained(str(tmp))
        del hf
        # the check a user would make: transformers alone, from the files just written
        reread = GPT2LMHeadModel.from_pretrained(str(tmp)).float().eval()
    tokens = _probe_tokens(ck)
    with torch.no_grad():
        want = ck.model(tokens).float()
        got = reread(tokens).logits.float()
    diff = float((got - want).abs().max())
    if not diff <= LOGITS_TOLERANCE * (1.0 + float(want.abs().max())):
        raise ExportError(f"{ck.path}: transformers' GPT2LMHeadModel does not reproduce the model's logits "
                          f"(max difference {diff:.3g}); nothing written")

    tensors: dict[str, Any] = {}
    if ck.dynamics is not None:
        tensors.update({f"p_psi.{k}": v for k, v in ck.dynamics.state_dict().items()})
    if ck.mtp_heads is not None:
        tensors.update({f"mtp.{k}": v for k, v in ck.mtp_heads.state_dict().items()})
    if tensors:
        save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, str(tmp / DYNAMICS_FILE),
                  metadata={"format": "pt", "producer": f"nextlat_probe {__version__}"})
    raw = ck.raw
    config = plain({
        "format": EXPORT_FORMAT, "format_version": EXPORT_VERSION, "package_version": __version__,
        "objective": ck.objective_config.objective, "objective_config": ck.objective_config.to_dict(),
        "model_config": ck.model_config.to_dict(), "world_spec": raw["world_spec"],
        "train_config": dict(raw.get("train_config") or {}), "step": int(ck.step), "metrics": dict(ck.metrics),
        "dynamics_config": raw.get("dynamics_config") if ck.dynamics is not None else None,
        "mtp_config": raw.get("mtp_config") if ck.mtp_heads is not None else None,
        "source": {"checkpoint": str(Path(ck.path).absolute()),
                   "exported": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())},
    })
    (tmp / EXPORT_CONFIG).write_text(json.dumps(config, indent=1) + "\n")
    (tmp / "README.md").write_text(model_card(ck, config, out))
    mode = 0o666 & ~_umask()
    for p in tmp.iterdir():  # ordinary permissions, durable before the rename shows the folder
        os.chmod(p, mode)
        with open(p, "rb") as f:
            os.fsync(f.fileno())
    files = sorted(p.name for p in tmp.iterdir())
    unknown = [n for n in files if n not in EXPORT_FILES]
    if unknown:  # a transformers version writing more: refuse rather than ship unexplained files
        raise ExportError(f"transformers wrote files this export does not know ({', '.join(unknown)}); nothing written")
    return ExportResult(out, files, ck.objective_config.objective, diff)


# --------------------------------------------------------------------------------------
# reading
# --------------------------------------------------------------------------------------
_CONFIG_KEYS = ("objective", "objective_config", "model_config", "world_spec", "train_config", "step", "metrics")


def load_export(folder: str | os.PathLike, device: str | None = "cpu"):
    """An export folder as a ``LoadedCheckpoint`` (model, world, p_psi, MTP heads, configs,
    step and validation numbers as exported). Every failure is a one-line
    ``CheckpointError`` naming the file."""
    from .checkpoint import (
        FORMAT,
        FORMAT_VERSION,
        build_loaded,
        model_config_problem,
        validate_checkpoint,
    )
    from .models.config import ModelConfig
    from .models.foreign import (
        _check_shapes,
        _check_values,
        _hf_key,
        _hf_weight_shapes,
        expected_gpt2_shapes,
        read_json_config,
    )
    from .models.gpt2 import gpt2_config_difference, gpt2_dims
    from .models.transformer import resolve_device

    dev = resolve_device(device)
    root = Path(folder)
    cpath = root / EXPORT_CONFIG
    meta = read_json_config(cpath)
    if meta.get("format") != EXPORT_FORMAT:
        raise CheckpointError(cpath, f"not a nextlat_probe export (format {meta.get('format')!r})")
    if meta.get("format_version") != EXPORT_VERSION:
        raise CheckpointError(cpath, f"unsupported export format version {meta.get('format_version')!r} "
                                     f"(expected {EXPORT_VERSION})")
    missing = [k for k in _CONFIG_KEYS if k not in meta]
    if missing:
        raise CheckpointError(cpath, f"is missing {', '.join(map(repr, missing))}")
    try:
        mcfg = ModelConfig.from_dict(dict(meta["model_config"]))
        problem = model_config_problem(mcfg)
    except (TypeError, ValueError) as exc:
        raise CheckpointError(cpath, f"invalid model_config ({exc})") from None
    if problem:
        raise CheckpointError(cpath, problem)

    hf_cfg = read_json_config(root / "config.json")
    differs = gpt2_config_difference(hf_cfg, mcfg)
    if differs:
        raise CheckpointError(root / "config.json", f"disagrees with {EXPORT_CONFIG}: {differs}")
    wp = root / WEIGHTS_FILE
    if not wp.is_file():
        raise CheckpointError(root, f"has no {WEIGHTS_FILE}")
    required, optional = expected_gpt2_shapes(gpt2_dims(mcfg), tied=False)
    shapes = _hf_weight_shapes(wp)
    prefixed = any(k.startswith("transformer.") for k in shapes)  # as transformers writes them; else GPT2Model keys
    _check_shapes(wp, {_hf_key(k, prefixed): v for k, v in shapes.items()}, required, optional, "config")
    hf_sd = {_hf_key(k, prefixed): v for k, v in _load_safetensors(wp).items()
             if not k.endswith((".attn.bias", ".attn.masked_bias"))}
    _check_values(wp, hf_sd)

    from .models.gpt2 import from_gpt2

    aux: dict[str, dict[str, Any]] = {"p_psi": {}, "mtp": {}}
    dp = root / DYNAMICS_FILE
    if meta.get("dynamics_config") is not None or meta.get("mtp_config") is not None:
        if not dp.is_file():
            raise CheckpointError(root, f"has no {DYNAMICS_FILE} although {EXPORT_CONFIG} names p_psi or MTP heads")
        shapes = _hf_weight_shapes(dp)
        bad = [k for k in shapes if k.split(".", 1)[0] not in aux]
        if bad:
            raise CheckpointError(dp, f"unexpected tensor {bad[0]!r} (expected p_psi.* or mtp.*)")
        total = sum(_numel(s) for s in shapes.values())
        if total > 1 << 31:
            raise CheckpointError(dp, f"holds {total:.3g} values, above the bound {1 << 31:.3g}")
        for k, v in _load_safetensors(dp).items():
            prefix, _, rest = k.partition(".")
            aux[prefix][rest] = v
    data = {
        "format": FORMAT, "format_version": FORMAT_VERSION, "objective": meta["objective"],
        "objective_config": meta["objective_config"], "model_config": meta["model_config"],
        "world_spec": meta["world_spec"], "train_config": meta["train_config"], "step": meta["step"],
        "metrics": meta["metrics"], "model": from_gpt2(hf_sd, mcfg),
        "dynamics": aux["p_psi"] or None, "dynamics_config": meta.get("dynamics_config"),
        "mtp_heads": aux["mtp"] or None, "mtp_config": meta.get("mtp_config"),
        "package_version": meta.get("package_version"), "export": meta.get("source"),
    }
    if not isinstance(data["step"], int) or isinstance(data["step"], bool) or data["step"] < 0:
        raise CheckpointError(cpath, f"invalid step {data['step']!r}")
    vcfg, ocfg = validate_checkpoint(data, cpath)
    data["_path"] = str(root)
    return build_loaded(data, vcfg, ocfg, dev)


def _numel(shape: Any) -> int:
    n = 1
    for s in shape:
        n *= int(s)
    return n


def _load_safetensors(p: Path) -> dict[str, Any]:
    from safetensors.torch import load_file

    from .models.foreign import _first_line

    try:
        return load_file(str(p), device="cpu")
    except Exception as exc:  # noqa: BLE001 - SafetensorError and friends from a damaged file
        raise CheckpointError(p, f"corrupt safetensors file ({_first_line(exc)[:160]})") from None


__all__ = ["EXPORT_FORMAT", "EXPORT_VERSION", "EXPORT_CONFIG", "DYNAMICS_FILE", "EXPORT_FILES", "ExportError",
           "ExportResult", "export_hf", "load_export", "is_export", "read_export_config", "model_card"]
