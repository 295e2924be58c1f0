"""Checkpoints: one ``torch.save``'d dict of plain Python types and tensors.

Safe to load: ``torch.load(path, weights_only=True)`` never runs code from the file, so a
malicious pickle is refused instead of executed. Written atomically (temp file in the same
folder, fsync, rename), so a crash mid-write never leaves a half-written ``ckpt.pt`` in
place of a good one.

Layout (``FORMAT_VERSION`` 1)::

    format, format_version, package_version
    objective               "gpt" | "nextlat"
    model_config            ModelConfig.to_dict()
    objective_config        ObjectiveConfig.to_dict()
    world_spec              World.spec() (e.g. the taxi map itself)
    train_config            TrainConfig.to_dict()
    step                    optimiser steps taken
    model                   transformer state_dict
    dynamics                p_psi state_dict (NextLat) or None
    dynamics_config         {"d_model", "d_embed", "d_hidden"} or None
    optimizer, scheduler    state_dicts (for exact resume)
    rng                     {"torch": ByteTensor}
    metrics                 last logged validation numbers (floats)
"""
from __future__ import annotations

import os
import pickle
import tempfile
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

FORMAT = "nextlat_probe.checkpoint"
FORMAT_VERSION = 1


class CheckpointError(Exception):
    """``<path>: <reason>`` — raised for anything that is not a loadable checkpoint."""

    def __init__(self, path: str | os.PathLike, reason: str):
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")


def plain(obj: Any) -> Any:
    """Convert numpy scalars/arrays and tuples to Python types so weights_only loads them."""
    import numpy as np

    if isinstance(obj, dict):
        return {str(k) if not isinstance(k, (int, str)) else k: plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [plain(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, np.generic):
        return obj.item()
    return obj


def save_checkpoint(payload: dict[str, Any], path: str | os.PathLike) -> Path:
    """Atomically write ``payload`` (already plain) to ``path``."""
    import torch

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    umask = os.umask(0)
    os.umask(umask)
    os.fchmod(fd, 0o666 & ~umask)  # mkstemp makes 0600; a checkpoint gets normal file permissions
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save({"format": FORMAT, "format_version": FORMAT_VERSION, **payload}, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    return path


def read_checkpoint(path: str | os.PathLike, map_location: Any = "cpu") -> dict[str, Any]:
    """Load and validate the raw dict; every failure is a one-line ``CheckpointError``."""
    import torch

    p = Path(path)
    if not p.exists():
        raise CheckpointError(p, "no such file")
    if p.is_dir():
        cand = p / "ckpt.pt"
        if cand.is_file():
            p = cand
        else:
            raise CheckpointError(p, "is a directory without ckpt.pt")
    if p.stat().st_size == 0:
        raise CheckpointError(p, "empty file")
    try:
        data = torch.load(p, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise CheckpointError(p, f"refused to load: not a plain-tensor checkpoint ({first[:160]})") from None
    except (zipfile.BadZipFile, EOFError) as exc:
        raise CheckpointError(p, f"corrupt or truncated file ({type(exc).__name__})") from None
    except RuntimeError as exc:
        msg = str(exc).strip().splitlines()[0] if str(exc).strip() else "RuntimeError"
        raise CheckpointError(p, f"corrupt or truncated file ({msg[:160]})") from None
    except Exception as exc:  # noqa: BLE001 - anything else from a foreign file
        raise CheckpointError(p, f"unreadable ({type(exc).__name__}: {str(exc)[:160]})") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise CheckpointError(p, "not a nextlat_probe checkpoint")
    if data.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(p, f"unsupported checkpoint format version {data.get('format_version')!r} (expected {FORMAT_VERSION})")
    for key in ("model_config", "world_spec", "model", "objective"):
        if key not in data:
            raise CheckpointError(p, f"checkpoint is missing {key!r}")
    data["_path"] = str(p)
    return data


@dataclass
class LoadedCheckpoint:
    """What ``load_checkpoint`` returns: ready-to-use model, world and configs."""

    path: str
    model: Any  # TransformerBridge (eval mode)
    world: Any  # nextlat_probe.worlds.World
    dynamics: Any  # LatentDynamics or None
    model_config: Any  # ModelConfig
    objective_config: Any  # ObjectiveConfig
    train_config: dict[str, Any]
    step: int
    metrics: dict[str, Any] = field(default_factory=dict)
    raw: dict[str, Any] = field(default_factory=dict, repr=False)
    label: str | None = None  # display name override (e.g. to tell two "gpt" runs apart)

    @property
    def objective(self) -> str:
        return self.objective_config.objective

    @property
    def name(self) -> str:
        """Short label: ``label`` if set, else the run folder name, or the file stem."""
        if self.label:
            return self.label
        p = Path(self.path)
        return p.parent.name if p.name == "ckpt.pt" and p.parent.name else p.stem

    @property
    def device(self):
        return next(self.model.parameters()).device


def load_checkpoint(path: str | os.PathLike, device: str | None = "cpu") -> LoadedCheckpoint:
    """Load a checkpoint into a model (eval mode), its world, p_psi (or None) and configs.

    Raises ``CheckpointError("<path>: <reason>")`` for missing, corrupt, truncated, foreign
    or unsafe files.
    """
    from .models.config import ModelConfig
    from .models.dynamics import LatentDynamics
    from .models.objective import ObjectiveConfig
    from .models.transformer import build_transformer, move, resolve_device
    from .worlds import WorldError, world_from_spec

    data = read_checkpoint(path)
    p = data["_path"]
    try:
        mcfg = ModelConfig.from_dict(data["model_config"])
        ocfg = ObjectiveConfig(**data.get("objective_config", {"objective": data["objective"]}))
    except (TypeError, ValueError) as exc:
        raise CheckpointError(p, f"invalid config ({exc})") from None
    try:
        world = world_from_spec(data["world_spec"])
    except (WorldError, KeyError, TypeError, ValueError) as exc:
        raise CheckpointError(p, f"invalid world spec ({exc})") from None
    dev = resolve_device(device)
    model = build_transformer(mcfg, seed=0)
    try:
        model.load_state_dict(data["model"])
    except (RuntimeError, KeyError, TypeError) as exc:
        raise CheckpointError(p, f"weights do not match the model config ({str(exc).splitlines()[0][:160]})") from None
    move(model, dev).eval()
    dyn = None
    if data.get("dynamics") is not None:
        try:
            dyn = LatentDynamics(**data["dynamics_config"])
            dyn.load_state_dict(data["dynamics"])
        except (RuntimeError, KeyError, TypeError, ValueError) as exc:
            raise CheckpointError(p, f"p_psi weights do not match ({str(exc).splitlines()[0][:160]})") from None
        dyn.to(dev).eval()
    return LoadedCheckpoint(
        path=p,
        model=model,
        world=world,
        dynamics=dyn,
        model_config=mcfg,
        objective_config=ocfg,
        train_config=dict(data.get("train_config", {})),
        step=int(data.get("step", 0)),
        metrics=dict(data.get("metrics", {})),
        raw=data,
    )
