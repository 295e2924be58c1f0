"""Checkpoints: one ``torch.save``'d dict of plain Python types and tensors.

Safe to load: ``torch.load(path, weights_only=True)`` never runs code from the file, so a
malicious pickle is refused instead of executed, and the zip archive's CRC-32 checksums
are verified first (``safeio``), so a damaged or altered file is refused as corrupt before
any tensor is used. Written atomically (temp file ``.<name>.<random>.tmp`` in the same
folder, fsync, rename), so a crash mid-write never leaves a half-written ``ckpt.pt`` in
place of a good one; the writer removes its temp file on any error, and a SIGKILL
mid-write leaves it in place (nothing else removes it: see ``training.folder``).

Validated before anything is built: the model config must lie within the ``MAX_*`` bounds
below and agree with the shape of every stored tensor (number of blocks, ``embed`` =
[d_vocab, d_model], ``pos_embed`` = [n_ctx, d_model] unless the positions are rotary, ...),
a model without positions (``positional = "none"``) must have a zero position table, a
NextLat checkpoint must carry its p_psi, and an MTP checkpoint its extra heads (config
within ``MAX_MTP_HORIZON`` / ``MAX_D_MLP``, exactly the tensors that config implies). The
parameter count is bounded by ``limits.max_parameters()`` (``--max-params``) and the bytes
to build it by ``limits.memory_limit()``; every stored weight (transformer, p_psi, MTP
heads) must be floating point, finite, and hold its own storage (``safeio.weights_problem``:
no expanded stride-0 views); ``step``, ``metrics`` and the numbers of ``train_config`` must
have their types. A crafted file therefore fails with one ``CheckpointError`` line instead
of asking for a 10**9-layer model.

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
                            (train_config also records how the run was executed: processes,
                            precision, TF32, compilation, and where its batches came from:
                            sampler_used device / host / data, the device sampler's
                            sampler_chunk and sampler_device, a dataset's identity; the batch
                            of every step is a function of these, the seed and the step)
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

from . import limits
from .errors import CheckpointError
from .safeio import error_line, torch_load_plain, weights_problem

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
#: ... and on the parameter count they imply: the default of ``limits.max_parameters()``
#: (2**30 float32 weights = 4 GiB), which ``--max-params`` raises.
MAX_PARAMETERS = limits.DEFAULT_MAX_PARAMETERS

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
    n_params = parameter_count(cfg)
    return (limits.parameters_problem(n_params, "model_config")
            or limits.memory_problem(4 * n_params, f"building the model (~{n_params:.3g} float32 parameters)"))


def parameter_count(cfg: Any) -> int:
    """The weights of the transformer ``cfg`` (a ``ModelConfig``) describes (matrices and
    tables; the few biases and norms aside)."""
    attn = 4 * cfg.d_model * cfg.n_heads * cfg.d_head
    pos_rows = 0 if getattr(cfg, "positional", "learned") == "rotary" else cfg.n_ctx  # RoPE: no table
    return cfg.n_layers * (attn + 2 * cfg.d_model * cfg.d_mlp) + cfg.d_model * (2 * cfg.d_vocab + pos_rows)


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
    if expected:  # every tensor, once the shapes agree: its dtype, values and storage
        problem = weights_problem(sd)
        if problem:
            raise CheckpointError(p, f"{what} weights: {problem}")


#: ``train_config`` fields that must be integers where a checkpoint has them (None allowed
#: where the field allows it); a string there would fail later, far from the file
_TRAIN_INTS = ("seed", "steps", "batch_size", "n_val", "eval_every", "save_every", "keep_every", "warmup_steps",
               "horizon", "seq_len", "n_ctx", "world_size")


def _validate_numbers(p: Path, data: dict[str, Any]) -> None:
    """``step`` a non-negative integer, ``metrics`` a dict of numbers, the integer fields of
    ``train_config`` integers: each refused in one line naming the field."""
    step = data.get("step", 0)
    if not _is_int(step) or step < 0:
        raise CheckpointError(p, f"step = {step!r} is not a non-negative integer")
    metrics = data.get("metrics")
    if metrics is not None:
        if not isinstance(metrics, dict):
            raise CheckpointError(p, f"metrics is a {type(metrics).__name__}, not a dict")
        for k, v in metrics.items():
            if v is not None and (not isinstance(v, (int, float)) or isinstance(v, bool)):
                raise CheckpointError(p, f"metrics.{k} = {v!r} is not a number")
    for k in _TRAIN_INTS:
        v = (data.get("train_config") or {}).get(k)
        if v is not None and not _is_int(v):
            raise CheckpointError(p, f"train_config.{k} = {v!r} is not an integer")


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


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
    if tcfg is not None:
        _validate_batch_source(p, tcfg)
    _validate_numbers(p, data)

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
        problem = limits.parameters_problem(parameter_count(mcfg) + dh * (dm + de + dh + dm), "model_config with p_psi")
        if problem:
            raise CheckpointError(p, problem)
        _check_tensors(p, "p_psi", dyn, {
            "norm.weight": [dm + de],
            "fc1.weight": [dh, dm + de],
            "fc2.weight": [dh, dh],
            "fc3.weight": [dm, dh],
        })
    _validate_mtp(p, data, mcfg, ocfg)
    return mcfg, ocfg


#: most steps a device-sampler chunk may hold (``training.batches``; far above its default)
MAX_SAMPLER_CHUNK = 1 << 20


def _validate_batch_source(p: Path, tcfg: dict[str, Any]) -> None:
    """Where a run's batches came from (``training.batches``), as its train_config records
    it: ``sampler`` (asked for), ``sampler_used``, the device sampler's ``sampler_chunk``
    and ``sampler_device``, a dataset run's ``data`` and ``dataset`` identity. A resume
    draws the same batches from these, so they must be what training writes."""
    asked, used = tcfg.get("sampler"), tcfg.get("sampler_used")
    if asked not in (None, "device", "host"):
        raise CheckpointError(p, f"train_config.sampler {asked!r} is not device, host or null")
    if used not in (None, "device", "host", "data"):
        raise CheckpointError(p, f"train_config.sampler_used {used!r} is not device, host or data")
    chunk = tcfg.get("sampler_chunk")
    if used == "device" and (not isinstance(chunk, int) or isinstance(chunk, bool) or not 0 < chunk <= MAX_SAMPLER_CHUNK):
        raise CheckpointError(p, f"train_config.sampler_chunk {chunk!r} is not a step count in [1, {MAX_SAMPLER_CHUNK}]")
    if used == "device" and tcfg.get("sampler_device") not in ("cpu", "cuda", "mps"):
        raise CheckpointError(p, f"train_config.sampler_device {tcfg.get('sampler_device')!r} is not cpu, cuda or mps")
    if (used == "data") != (tcfg.get("data") is not None):
        raise CheckpointError(p, "train_config.data and sampler_used disagree (a dataset run reads its rows)")
    if used == "data":
        ds = tcfg.get("dataset")
        fingerprint = ds.get("fingerprint") if isinstance(ds, dict) else None
        if not isinstance(tcfg["data"], str) or not isinstance(fingerprint, str) or len(fingerprint) != 64:
            raise CheckpointError(p, "train_config.dataset must name the dataset (path, fingerprint) it was trained on")


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
    problem = limits.parameters_problem(parameter_count(mcfg) + d * (2 * dm * dh + dh + 3 * dm), f"mtp_config {hcfg}")
    if problem:
        raise CheckpointError(p, problem)
    expected = MTPHeads.expected_shapes(dm, d, dh)
    _check_tensors(p, "MTP heads", heads, expected)
    extra = sorted(set(heads) - set(expected))
    if extra:
        raise CheckpointError(p, f"MTP heads weights do not match mtp_config (unexpected {extra[0]!r})")


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
    from .models.transformer import resolve_device

    dev = resolve_device(device)  # first: a bad device string costs nothing
    data, mcfg, ocfg = _read(path)
    return build_loaded(data, mcfg, ocfg, dev)


def build_loaded(data: dict[str, Any], mcfg: Any, ocfg: Any, dev: Any) -> LoadedCheckpoint:
    """The ``LoadedCheckpoint`` of a checkpoint dict already checked by
    ``validate_checkpoint`` (with ``data["_path"]`` set): our ``ckpt.pt`` files, and the
    Hugging Face export folders (``hfexport``) read back into the same layout."""
    from .models.dynamics import LatentDynamics
    from .models.mtp import MTPHeads
    from .models.transformer import build_transformer, move

    p = data["_path"]
    world = world_of(data)
    model = build_transformer(mcfg, seed=0)
    load_weights(model, data["model"], p, "weights do not match the model config")
    move(model, dev).eval()
    dyn = None
    if data.get("dynamics") is not None:
        dyn = LatentDynamics(**data["dynamics_config"])
        load_weights(dyn, data["dynamics"], p, "p_psi weights do not match")
        dyn.to(dev).eval()
    heads = None
    if data.get("mtp_heads") is not None:
        heads = MTPHeads(**data["mtp_config"])
        load_weights(heads, data["mtp_heads"], p, "MTP heads weights do not match")
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


def load_weights(module: Any, sd: dict[str, Any], path: str | os.PathLike, what: str) -> None:
    """``module.load_state_dict(sd)``, first comparing keys and shapes with the module's own
    state dict, so a failure is one ``CheckpointError`` line ``<path>: <what> (<the first
    missing, unexpected or misshapen key, in the checkpoint's names>)``."""
    own = module.state_dict()
    missing = [k for k in own if k not in sd]
    unexpected = [k for k in sd if k not in own]
    misshapen = [k for k in own if k in sd and tuple(sd[k].shape) != tuple(own[k].shape)]
    why = (f"missing {missing[0]!r}" if missing else f"unexpected {unexpected[0]!r}" if unexpected else
           f"{misshapen[0]} has shape {list(sd[misshapen[0]].shape)}, the model {list(own[misshapen[0]].shape)}"
           if misshapen else None)
    try:
        if why is None:
            module.load_state_dict(sd)
    except (RuntimeError, KeyError, TypeError, ValueError) as exc:
        why = error_line(exc)[:160]
    if why is not None:
        raise CheckpointError(path, f"{what} ({why})")


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
        raise CheckpointError(p, f"invalid world spec ({error_line(exc)})") from None
    d_vocab = data["model_config"]["d_vocab"]
    if world.vocab_size != d_vocab:
        raise CheckpointError(p, f"world spec has {world.vocab_size} tokens but model_config.d_vocab is {d_vocab}")
    return world


__all__ = [
    "FORMAT", "FORMAT_VERSION", "CheckpointError", "LoadedCheckpoint", "load_checkpoint", "build_loaded", "read_checkpoint",
    "load_plain", "is_nextlat_checkpoint",
    "save_checkpoint", "atomic_write_bytes", "validate_checkpoint", "model_config_problem", "expected_model_shapes",
    "world_of", "plain", "parameter_count", "load_weights", "current_metrics",
    "MAX_N_LAYERS", "MAX_D_MODEL", "MAX_N_HEADS", "MAX_D_HEAD", "MAX_D_MLP", "MAX_N_CTX", "MAX_D_VOCAB",
    "MAX_D_DYNAMICS", "MAX_MTP_HORIZON", "MAX_PARAMETERS",
]
