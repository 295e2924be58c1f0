"""Checkpoints: one ``torch.save``'d dict of plain Python types and tensors.

Safe to load: ``torch.load(path, weights_only=True)`` never runs code from the file, so a
malicious pickle is refused instead of executed. Written atomically (temp file
``.<name>.<random>.tmp`` in the same folder, fsync, rename), so a crash mid-write never
leaves a half-written ``ckpt.pt`` in place of a good one; a SIGKILL mid-write can leave the
temp file, which the trainer removes on its next start.

Validated before anything is built: the model config must lie within the ``MAX_*`` bounds
below and agree with the shape of every stored tensor (number of blocks, ``embed`` =
[d_vocab, d_model], ``pos_embed`` = [n_ctx, d_model] unless the positions are rotary, ...),
a model without positions (``positional = "none"``) must have a zero position table, a
NextLat checkpoint must carry its p_psi, and an MTP checkpoint its extra heads (config
within ``MAX_MTP_HORIZON`` / ``MAX_D_MLP``, exactly the tensors that config implies). A
crafted file therefore fails with one ``CheckpointError`` line instead of asking for a
10**9-layer model.

Layout (``FORMAT_VERSION`` 1)::

    format, format_version, package_version
    objective               "gpt" | "nextlat" | "mtp"
    model_config            ModelConfig.to_dict()
    objective_config        ObjectiveConfig.to_dict()
    world_spec              World.spec() (e.g. the taxi map itself)
    train_config            TrainConfig.to_dict()
    step                    optimiser steps taken
    model                   transformer state_dict
    dynamics                p_psi state_dict (NextLat) or None (GPT, MTP)
    dynamics_config         {"d_model", "d_embed", "d_hidden"} or None
    mtp_heads               the MTP extra heads' state_dict (``models.mtp.MTPHeads``; MTP only,
                            None or absent otherwise)
    mtp_config              {"d_model", "horizon", "d_hidden"} or None
    optimizer, scheduler    state_dicts (for exact resume)
    rng                     {"torch": ByteTensor}
    metrics                 validation numbers of THESE weights (step, val_loss, val_floor,
                            gap_to_floor; older files say val_gap, which
                            ``load_checkpoint`` reads as gap_to_floor)
"""
from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Callable

from .errors import CheckpointError
from .safeio import torch_load_plain

FORMAT = "nextlat_probe.checkpoint"
FORMAT_VERSION = 1

#: Bounds on a stored (or requested) model config. Far above every preset, far below what
#: would exhaust memory; checked before any model is allocated.
MAX_N_LAYERS = 128
MAX_D_MODEL = 16_384
MAX_N_HEADS = 256
MAX_D_HEAD = 1_024
MAX_D_MLP = 65_536
MAX_N_CTX = 65_536
MAX_D_VOCAB = 1 << 20
MAX_D_DYNAMICS = 65_536
#: ... and on an MTP checkpoint's number of extra heads (its horizon d).
MAX_MTP_HORIZON = 256
#: ... and on the parameter count they imply (2**31 float32 weights = 8 GiB).
MAX_PARAMETERS = 1 << 31

_BOUNDS = {
    "n_layers": MAX_N_LAYERS,
    "d_model": MAX_D_MODEL,
    "n_heads": MAX_N_HEADS,
    "d_head": MAX_D_HEAD,
    "d_mlp": MAX_D_MLP,
    "n_ctx": MAX_N_CTX,
    "d_vocab": MAX_D_VOCAB,
    "d_dynamics": MAX_D_DYNAMICS,
}


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


def _atomic_write(path: Path, write: Callable[[Any], None]) -> Path:
    """Write ``path`` through ``write(file)`` into ``.<name>.<random>.tmp`` next to it,
    fsync, then rename over ``path``: readers see the old file or the new one, never half."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    umask = os.umask(0)
    os.umask(umask)
    os.fchmod(fd, 0o666 & ~umask)  # mkstemp makes 0600; a run's files get normal permissions
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
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


def atomic_write_bytes(data: bytes, path: str | os.PathLike) -> Path:
    """Atomically replace ``path`` by ``data`` (same temp-file scheme as checkpoints)."""
    return _atomic_write(Path(path), lambda f: f.write(data))


def save_checkpoint(payload: dict[str, Any], path: str | os.PathLike) -> Path:
    """Atomically write ``payload`` (already plain) to ``path``."""
    import torch

    record = {"format": FORMAT, "format_version": FORMAT_VERSION, **payload}
    return _atomic_write(Path(path), lambda f: torch.save(record, f))


def model_config_problem(cfg: Any) -> str | None:
    """Why ``cfg`` (a ``ModelConfig``) is out of bounds, or None. Used for checkpoints and
    for fresh training configs alike, so nothing builds a model these bounds refuse."""
    for name, bound in _BOUNDS.items():
        v = getattr(cfg, name)
        if v is not None and v > bound:
            return f"model_config.{name} = {v} exceeds the bound {bound}"
    attn = 4 * cfg.d_model * cfg.n_heads * cfg.d_head
    pos_rows = 0 if getattr(cfg, "positional", "learned") == "rotary" else cfg.n_ctx  # RoPE: no table
    n_params = cfg.n_layers * (attn + 2 * cfg.d_model * cfg.d_mlp) + cfg.d_model * (2 * cfg.d_vocab + pos_rows)
    if n_params > MAX_PARAMETERS:
        return f"model_config implies ~{n_params:.3g} parameters, above the bound {MAX_PARAMETERS:.3g}"
    return None


def _shape(t: Any) -> list[int]:
    return list(t.shape)


def expected_model_shapes(cfg: Any) -> dict[str, list[int]]:
    """The shapes ``cfg`` implies for the transformer's main weight matrices (TransformerLens
    bridge names), which a checkpoint's tensors must have."""
    d, hd = cfg.d_model, cfg.n_heads * cfg.d_head
    shapes = {
        "embed.weight": [cfg.d_vocab, d],
        "pos_embed.weight": [cfg.n_ctx, d],
        "unembed.weight": [cfg.d_vocab, d],
        "ln_final.weight": [d],
    }
    if getattr(cfg, "positional", "learned") == "rotary":  # RoPE: no position table
        del shapes["pos_embed.weight"]
    for i in range(cfg.n_layers):
        shapes.update({
            f"blocks.{i}.attn.q.weight": [hd, d],
            f"blocks.{i}.attn.k.weight": [hd, d],
            f"blocks.{i}.attn.v.weight": [hd, d],
            f"blocks.{i}.attn.o.weight": [d, hd],
            f"blocks.{i}.mlp.in.weight": [cfg.d_mlp, d],
            f"blocks.{i}.mlp.out.weight": [d, cfg.d_mlp],
        })
    return shapes


def _check_tensors(p: Path, what: str, sd: Any, expected: dict[str, list[int]]) -> None:
    import torch

    if not isinstance(sd, dict) or not all(isinstance(k, str) and torch.is_tensor(v) for k, v in sd.items()):
        raise CheckpointError(p, f"{what} weights are not a dict of tensors")
    for key, shape in expected.items():
        if key not in sd:
            raise CheckpointError(p, f"{what} weights do not match the config (missing {key!r})")
        if _shape(sd[key]) != shape:
            raise CheckpointError(p, f"{what} weights do not match the config ({key} has shape {_shape(sd[key])}, the config implies {shape})")


def validate_checkpoint(data: dict[str, Any], path: str | os.PathLike) -> tuple[Any, Any]:
    """Check a raw checkpoint dict without building anything; returns its
    ``(ModelConfig, ObjectiveConfig)``. Raises a one-line ``CheckpointError`` naming the
    first missing, unknown, out-of-bounds or inconsistent part."""
    from .models.config import ModelConfig
    from .models.objective import ObjectiveConfig

    p = Path(path)
    for key in ("model_config", "world_spec", "model", "objective"):
        if key not in data:
            raise CheckpointError(p, f"checkpoint is missing {key!r}")
    raw = data["model_config"]
    if not isinstance(raw, dict):
        raise CheckpointError(p, "model_config is not a dict")
    # defaults every version of this format agrees on (no "positional" = learned positions)
    optional = {"d_dynamics", "positional"}
    missing = [f.name for f in fields(ModelConfig) if f.name not in raw and f.name not in optional]
    if missing:
        raise CheckpointError(p, f"model_config is missing {', '.join(map(repr, missing))}")
    for name in _BOUNDS:  # bounds first: ModelConfig itself would accept 10**9 layers
        v = raw.get(name)
        if v is not None and (not isinstance(v, int) or isinstance(v, bool) or v > _BOUNDS[name]):
            raise CheckpointError(p, f"model_config.{name} = {v!r} is not an integer within the bound {_BOUNDS[name]}")
    try:
        mcfg = ModelConfig.from_dict(raw)
    except (TypeError, ValueError) as exc:
        raise CheckpointError(p, f"invalid model config ({exc})") from None
    problem = model_config_problem(mcfg)
    if problem:
        raise CheckpointError(p, problem)

    objective = data["objective"]
    try:
        ocfg = ObjectiveConfig(**data.get("objective_config") or {"objective": objective})
    except (TypeError, ValueError) as exc:
        raise CheckpointError(p, f"invalid objective config ({exc})") from None
    if ocfg.objective != objective:
        raise CheckpointError(p, f"objective {objective!r} disagrees with objective_config ({ocfg.objective!r})")
    tcfg = data.get("train_config")
    if tcfg is not None and (not isinstance(tcfg, dict) or tcfg.get("objective", objective) != objective):
        raise CheckpointError(p, "train_config is not a dict or disagrees with the objective")

    sd = data["model"]
    _check_tensors(p, "model", sd, {})
    blocks = {int(k.split(".")[1]) for k in sd if k.startswith("blocks.") and k.split(".")[1].isdigit()}
    if blocks != set(range(mcfg.n_layers)):
        raise CheckpointError(p, f"weights do not match the model config (model_config.n_layers = {mcfg.n_layers}, the weights have {len(blocks)} blocks)")
    _check_tensors(p, "model", sd, expected_model_shapes(mcfg))
    if mcfg.positional == "none" and bool(sd["pos_embed.weight"].any()):
        raise CheckpointError(p, "model_config.positional is 'none' but the position table (pos_embed.weight) is not zero")

    dyn, dcfg = data.get("dynamics"), data.get("dynamics_config")
    if objective == "nextlat" and dyn is None:
        raise CheckpointError(p, "NextLat checkpoint without its p_psi weights ('dynamics' is missing)")
    if objective == "gpt" and dyn is not None:
        raise CheckpointError(p, "GPT checkpoint with p_psi weights ('dynamics'); a GPT run has none")
    if objective == "mtp" and dyn is not None:
        raise CheckpointError(p, "MTP checkpoint with p_psi weights ('dynamics'); an MTP run has none")
    if dyn is not None:
        if not isinstance(dcfg, dict) or set(dcfg) != {"d_model", "d_embed", "d_hidden"}:
            raise CheckpointError(p, "dynamics_config must be {'d_model', 'd_embed', 'd_hidden'}")
        dm, de, dh = dcfg["d_model"], dcfg["d_embed"], dcfg["d_hidden"]
        if not all(isinstance(v, int) and not isinstance(v, bool) for v in (dm, de, dh)) or dm != mcfg.d_model or de != mcfg.d_model or not 0 < dh <= MAX_D_DYNAMICS:
            raise CheckpointError(p, f"dynamics_config {dcfg} disagrees with d_model {mcfg.d_model} or exceeds the bound {MAX_D_DYNAMICS}")
        _check_tensors(p, "p_psi", dyn, {
            "norm.weight": [dm + de],
            "fc1.weight": [dh, dm + de],
            "fc2.weight": [dh, dh],
            "fc3.weight": [dm, dh],
        })
    _validate_mtp(p, data, mcfg, ocfg)
    return mcfg, ocfg


def _validate_mtp(p: Path, data: dict[str, Any], mcfg: Any, ocfg: Any) -> None:
    """An MTP checkpoint carries exactly the heads its ``mtp_config`` implies (one per
    offset 1..horizon, horizon = the objective's); no other checkpoint carries any."""
    from .models.mtp import MTPHeads

    heads, hcfg = data.get("mtp_heads"), data.get("mtp_config")
    if ocfg.objective != "mtp":
        if heads is not None:
            raise CheckpointError(p, f"{ocfg.objective} checkpoint with MTP heads ('mtp_heads'); only an MTP run has them")
        return
    if heads is None:
        raise CheckpointError(p, "MTP checkpoint without its extra heads ('mtp_heads' is missing)")
    if not isinstance(hcfg, dict) or set(hcfg) != {"d_model", "horizon", "d_hidden"}:
        raise CheckpointError(p, "mtp_config must be {'d_model', 'horizon', 'd_hidden'}")
    dm, d, dh = hcfg["d_model"], hcfg["horizon"], hcfg["d_hidden"]
    if (not all(isinstance(v, int) and not isinstance(v, bool) for v in (dm, d, dh)) or dm != mcfg.d_model
            or d != ocfg.horizon or not 0 < d <= MAX_MTP_HORIZON or not 0 < dh <= MAX_D_MLP):
        raise CheckpointError(p, f"mtp_config {hcfg} disagrees with d_model {mcfg.d_model} or horizon {ocfg.horizon}, "
                                 f"or exceeds the bounds (horizon {MAX_MTP_HORIZON}, d_hidden {MAX_D_MLP})")
    if d * (2 * dm * dh + dh + 3 * dm) > MAX_PARAMETERS:
        raise CheckpointError(p, f"mtp_config {hcfg} implies more than {MAX_PARAMETERS:.3g} parameters")
    expected = MTPHeads.expected_shapes(dm, d, dh)
    _check_tensors(p, "MTP heads", heads, expected)
    extra = sorted(set(heads) - set(expected))
    if extra:
        raise CheckpointError(p, f"MTP heads weights do not match mtp_config (unexpected {extra[0]!r})")


def _first_line(exc: BaseException) -> str:
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    # torch's refusal starts with a paragraph about the weights_only default; the line that
    # names what was refused ("Unsupported global: GLOBAL posix.system") is the useful one
    for ln in lines:
        if "Unsupported" in ln or "unsupported" in ln:
            return ln.split("WeightsUnpickler error:")[-1].strip()
    return lines[0] if lines else type(exc).__name__


def read_checkpoint(path: str | os.PathLike, map_location: Any = "cpu") -> dict[str, Any]:
    """Load and validate the raw dict (``validate_checkpoint``); every failure is a
    one-line ``CheckpointError``. ``data["_path"]`` is the file actually read."""
    return _read(path, map_location)[0]


def load_plain(path: str | os.PathLike, map_location: Any = "cpu") -> tuple[Path, Any]:
    """``(file read, object)`` of a file loaded with ``torch.load(weights_only=True)``: plain
    types and tensors only, never code. A run folder means its ``ckpt.pt``. Every failure
    is a one-line ``CheckpointError``."""

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
    data = torch_load_plain(p, map_location)
    return p, data


def is_nextlat_checkpoint(path: str | os.PathLike) -> bool:
    """Whether a (safely loadable) file is a nextlat_probe checkpoint rather than, say, a
    legacy TransformerLens state dict."""
    _, data = load_plain(path)
    return isinstance(data, dict) and data.get("format") == FORMAT


def _read(path: str | os.PathLike, map_location: Any = "cpu") -> tuple[dict[str, Any], Any, Any]:
    p, data = load_plain(path, map_location)
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise CheckpointError(p, "not a nextlat_probe checkpoint (a TransformerLens state dict? give its config "
                                 "with --tl-config and its world with --world)")
    if data.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(p, f"unsupported checkpoint format version {data.get('format_version')!r} (expected {FORMAT_VERSION})")
    mcfg, ocfg = validate_checkpoint(data, p)
    data["_path"] = str(p)
    return data, mcfg, ocfg


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
    #: the objective label of a model this toolkit did not train ("external"); None for ours
    objective_name: str | None = None
    #: MTP's extra heads (``models.mtp.MTPHeads``, eval mode) or None; analyses read ``model``
    mtp_heads: Any = None

    @property
    def objective(self) -> str:
        return self.objective_name or self.objective_config.objective

    @property
    def horizon(self) -> int | None:
        """d of a NextLat (roll-out depth) or MTP (extra heads) checkpoint; None otherwise."""
        return int(self.objective_config.horizon) if self.objective in ("nextlat", "mtp") else None

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
    """Load a checkpoint into a model (eval mode), its world, p_psi (or None), MTP heads
    (or None) and configs.

    Raises ``CheckpointError("<path>: <reason>")`` for missing, corrupt, truncated, foreign,
    unsafe or inconsistent files (validated before any model is built), and ``DeviceError``
    for an unknown or unavailable ``device``.
    """
    from .models.dynamics import LatentDynamics
    from .models.mtp import MTPHeads
    from .models.transformer import build_transformer, move, resolve_device

    dev = resolve_device(device)  # first: a bad device string costs nothing
    data, mcfg, ocfg = _read(path)
    p = data["_path"]
    world = world_of(data)
    model = build_transformer(mcfg, seed=0)
    try:
        model.load_state_dict(data["model"])
    except (RuntimeError, KeyError, TypeError) as exc:
        raise CheckpointError(p, f"weights do not match the model config ({_first_line(exc)[:160]})") from None
    move(model, dev).eval()
    dyn = None
    if data.get("dynamics") is not None:
        try:
            dyn = LatentDynamics(**data["dynamics_config"])
            dyn.load_state_dict(data["dynamics"])
        except (RuntimeError, KeyError, TypeError, ValueError) as exc:
            raise CheckpointError(p, f"p_psi weights do not match ({_first_line(exc)[:160]})") from None
        dyn.to(dev).eval()
    heads = None
    if data.get("mtp_heads") is not None:
        try:
            heads = MTPHeads(**data["mtp_config"])
            heads.load_state_dict(data["mtp_heads"])
        except (RuntimeError, KeyError, TypeError, ValueError) as exc:
            raise CheckpointError(p, f"MTP heads weights do not match ({_first_line(exc)[:160]})") from None
        heads.to(dev).eval()
    return LoadedCheckpoint(
        path=p,
        model=model,
        world=world,
        dynamics=dyn,
        model_config=mcfg,
        objective_config=ocfg,
        train_config=dict(data.get("train_config") or {}),
        step=int(data.get("step", 0)),
        metrics=current_metrics(data.get("metrics")),
        raw=data,
        mtp_heads=heads,
    )


def current_metrics(stored: Any) -> dict[str, Any]:
    """A checkpoint's stored validation numbers under today's names: ``val_gap`` (what older
    files store; 0.2 renamed it everywhere else) is read as ``gap_to_floor``, so
    ``LoadedCheckpoint.metrics`` is the same for old and new files."""
    m = dict(stored or {})
    if "val_gap" in m:
        m.setdefault("gap_to_floor", m["val_gap"])
        del m["val_gap"]
    return m


def world_of(data: dict[str, Any]) -> Any:
    """The world a validated checkpoint dict was trained on; its vocabulary must be the
    model's (a crafted spec must not index past the embedding)."""
    from .worlds import WorldError, world_from_spec

    p = data.get("_path", "<checkpoint>")
    try:
        world = world_from_spec(data["world_spec"])
    except (WorldError, KeyError, TypeError, ValueError) as exc:
        raise CheckpointError(p, f"invalid world spec ({_first_line(exc)})") from None
    d_vocab = data["model_config"]["d_vocab"]
    if world.vocab_size != d_vocab:
        raise CheckpointError(p, f"world spec has {world.vocab_size} tokens but model_config.d_vocab is {d_vocab}")
    return world


__all__ = [
    "FORMAT", "FORMAT_VERSION", "CheckpointError", "LoadedCheckpoint", "load_checkpoint", "read_checkpoint",
    "load_plain", "is_nextlat_checkpoint",
    "save_checkpoint", "atomic_write_bytes", "validate_checkpoint", "model_config_problem", "expected_model_shapes",
    "world_of", "plain", "current_metrics",
    "MAX_N_LAYERS", "MAX_D_MODEL", "MAX_N_HEADS", "MAX_D_HEAD", "MAX_D_MLP", "MAX_N_CTX", "MAX_D_VOCAB",
    "MAX_D_DYNAMICS", "MAX_MTP_HORIZON", "MAX_PARAMETERS",
]
