"""Reading model files that may come from anyone: plain types and tensors only.

``torch_load_plain`` is ``torch.load(..., weights_only=True)`` with every failure turned into
one ``CheckpointError`` line naming the file: a pickle that would run code is refused, never
executed, and the refusal names the global it would have called; a file that is no PyTorch
file at all says so; a zip archive (what ``torch.save`` writes) whose CRC-32 checksums do
not match its contents — a flipped byte in a tensor — is refused as corrupt before any
tensor is used. Checkpoints (``checkpoint.py``) and foreign state dicts
(``models/foreign.py``) both read through it, and both check their tensors with
``weights_problem`` (floating point, finite, each with storage of its own: an expanded
stride-0 view would make a 14 KB file stand for gigabytes).
"""
from __future__ import annotations

import pickle
import pickletools
import re
import warnings
import zipfile
import zlib
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping

from .errors import CheckpointError, one_line

if TYPE_CHECKING:  # pragma: no cover
    import torch

#: how much of a refused pickle is scanned for the global it would call
_SCAN_BYTES = 16 << 20


def error_line(exc: BaseException) -> str:
    """The line of an error that says what is wrong: for torch's weights-only refusal the
    line naming what was refused (not the paragraph about defaults before it), for a
    ``load_state_dict`` error the line naming the key; else the first line."""
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    for ln in lines:
        if "Unsupported" in ln or "unsupported" in ln:
            return ln.split("WeightsUnpickler error:")[-1].strip()
    if len(lines) > 1 and lines[0].startswith("Error(s) in loading state_dict"):
        return lines[1]
    return lines[0] if lines else type(exc).__name__


def _pickle_bytes(p: Path) -> bytes:
    """The pickle of a file: ``*/data.pkl`` of a zip archive, else the file's start."""
    try:
        if zipfile.is_zipfile(p):
            with zipfile.ZipFile(p) as z:
                name = next((n for n in z.namelist() if n.endswith("data.pkl")), None)
                return z.open(name).read(_SCAN_BYTES) if name else b""
        with open(p, "rb") as f:
            return f.read(_SCAN_BYTES)
    except (OSError, zipfile.BadZipFile, zlib.error, EOFError):
        return b""


def refused_global(p: Path, exc: BaseException) -> str | None:
    """The first global (``module.name``) the pickle in ``p`` would call that a weights-only
    load does not allow: from torch's message, else by reading the pickle's opcodes
    (``pickletools``: nothing is executed)."""
    m = re.search(r"GLOBAL ([\w.]+)", str(exc))
    if m:
        return m.group(1)
    try:
        from torch._weights_only_unpickler import _get_allowed_globals

        allowed = set(_get_allowed_globals())
    except (ImportError, AttributeError):  # pragma: no cover - a torch without it
        allowed = set()
    strings: list[str] = []
    try:
        for op, arg, _ in pickletools.genops(_pickle_bytes(p)):
            if op.name in ("GLOBAL", "INST"):
                name = str(arg).replace(" ", ".")
            elif op.name == "STACK_GLOBAL" and len(strings) >= 2:
                name = f"{strings[-2]}.{strings[-1]}"
            else:
                if isinstance(arg, str):
                    strings.append(arg)
                continue
            if name not in allowed:
                return name
    except Exception:  # noqa: BLE001 - a truncated or malformed pickle: nothing more to name
        pass
    return None


def _check_container(p: Path, what: str) -> None:
    """A zip archive whose checksums match, or a pickle (torch's legacy format); anything
    else is refused before ``torch.load`` reads it."""
    with open(p, "rb") as f:
        head = f.read(16)
    if zipfile.is_zipfile(p):
        try:
            with zipfile.ZipFile(p) as z:
                bad = z.testzip()  # reads every entry once and compares its CRC-32
        except (zipfile.BadZipFile, zlib.error, EOFError, OSError, NotImplementedError, ValueError) as exc:
            raise CheckpointError(p, f"corrupt file: its zip archive cannot be read ({type(exc).__name__}: "
                                     f"{one_line(exc)[:120]})") from None
        if bad is not None:
            raise CheckpointError(p, f"corrupt file: the CRC-32 checksum of {bad} in its zip archive does not match "
                                     "its contents (the file was damaged or altered after it was written)")
    elif head.startswith(b"PK\x03\x04"):
        raise CheckpointError(p, "corrupt or truncated file (a zip archive without its end record)")
    elif not head.startswith(b"\x80"):
        kind = "text" if all(32 <= b < 127 or b in (9, 10, 13) for b in head) else "data"
        raise CheckpointError(p, f"not a PyTorch {what} (neither a zip archive written by torch.save nor a pickle; "
                                 f"it starts with {kind} {head[:12]!r})")


def torch_load_plain(p: Path, map_location: Any = "cpu", what: str = "checkpoint") -> Any:
    """The object in ``p`` (an existing, non-empty file), loaded with ``weights_only=True``
    after its zip checksums were verified."""
    import torch

    _check_container(p, what)
    try:
        # torch warns (e.g. "Detected pickle protocol 4") before refusing a foreign pickle;
        # the refusal below is the one line the user gets
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return torch.load(p, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        name = refused_global(p, exc)
        why = f"it would call {name}" if name else error_line(exc)[:160]
        raise CheckpointError(p, f"refused to load: not a plain-tensor {what} ({why})") from None
    except (zipfile.BadZipFile, EOFError) as exc:
        raise CheckpointError(p, f"corrupt or truncated file ({type(exc).__name__})") from None
    except RuntimeError as exc:
        raise CheckpointError(p, f"corrupt or truncated file ({one_line(exc)[:160]})") from None
    except Exception as exc:  # noqa: BLE001 - anything else from a foreign file
        raise CheckpointError(p, f"not a readable PyTorch {what} ({type(exc).__name__}: {one_line(exc)[:160]})") from None


def weights_problem(sd: Mapping[str, "torch.Tensor"], skip: tuple[str, ...] = ()) -> str | None:
    """Why the weights ``sd`` (name -> tensor) cannot be used, naming the first bad key, or
    None: every tensor (but names ending in ``skip``: buffers) must be floating point (an
    int64 weight would be silently cast) and finite, and hold its elements in storage of its
    own — an expanded view (a stride 0) or views that overlap make a small file stand for a
    large model, which would be allocated in full."""
    import torch

    storages: dict[int, int] = {}
    views: set[tuple[Any, ...]] = set()
    need = 0
    for k, t in sd.items():
        nbytes = t.numel() * t.element_size()
        storage = t.untyped_storage()
        if t.numel() and (any(s == 0 and n > 1 for s, n in zip(t.stride(), t.shape)) or storage.nbytes() < nbytes):
            return (f"{k} {list(t.shape)} is an expanded or overlapping view of {storage.nbytes()} bytes of storage, "
                    f"not {nbytes} bytes of its own")
        storages[storage.data_ptr()] = storage.nbytes()
        view = (storage.data_ptr(), t.storage_offset(), tuple(t.shape), tuple(t.stride()))
        if view not in views:  # one tensor saved twice (tied weights) counts once
            views.add(view)
            need += nbytes
        if k.endswith(skip):
            continue
        if not t.is_floating_point():
            return f"{k} has dtype {t.dtype}, not a floating-point weight"
        if not bool(torch.isfinite(t).all()):
            return f"{k} contains NaN or inf"
    have = sum(storages.values())
    if need > have:
        return f"the tensors span {need} bytes but share {have} bytes of storage (overlapping views)"
    return None


__all__ = ["torch_load_plain", "error_line", "refused_global", "weights_problem"]
