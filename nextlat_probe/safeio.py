"""Reading model files that may come from anyone: plain types and tensors only.

``torch_load_plain`` is ``torch.load(..., weights_only=True)`` with every failure turned into
one ``CheckpointError`` line naming the file: a pickle that would run code is refused, never
executed; a corrupt or truncated file says so. Checkpoints (``checkpoint.py``) and foreign
state dicts (``models/foreign.py``) both read through it.
"""
from __future__ import annotations

import pickle
import warnings
import zipfile
from pathlib import Path
from typing import Any

from .errors import CheckpointError, one_line


def torch_load_plain(p: Path, map_location: Any = "cpu", what: str = "checkpoint") -> Any:
    """The object in ``p`` (an existing, non-empty file), loaded with ``weights_only=True``."""
    import torch

    try:
        # torch warns (e.g. "Detected pickle protocol 4") before refusing a foreign pickle;
        # the refusal below is the one line the user gets
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return torch.load(p, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        raise CheckpointError(p, f"refused to load: not a plain-tensor {what} ({one_line(exc)[:160]})") from None
    except (zipfile.BadZipFile, EOFError) as exc:
        raise CheckpointError(p, f"corrupt or truncated file ({type(exc).__name__})") from None
    except RuntimeError as exc:
        raise CheckpointError(p, f"corrupt or truncated file ({one_line(exc)[:160]})") from None
    except Exception as exc:  # noqa: BLE001 - anything else from a foreign file
        raise CheckpointError(p, f"unreadable ({type(exc).__name__}: {one_line(exc)[:160]})") from None


__all__ = ["torch_load_plain"]
