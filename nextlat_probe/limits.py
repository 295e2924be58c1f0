"""How much a command may allocate: checked BEFORE allocating, so that a small input (a
14 KB checkpoint, ``--n-val 1000000000``, ``--map-size 100000``) is one line, not an
allocation traceback or a machine brought to its knees.

Two limits, each raised by one flag on every CLI it applies to:

* ``max_parameters()``: the parameters of a model built from a config (a checkpoint's,
  a ``--tl-config``, a Hugging Face ``config.json``, a training preset). Default
  ``DEFAULT_MAX_PARAMETERS`` = 2^30 (4 GiB of float32 weights: far above every preset, the
  ``base`` one has 25M); ``--max-params N`` raises it.
* ``memory_limit(device)``: the bytes an option implies (sequences to analyse, a
  validation set, one training step's activations, a map's distance table). Default: the
  memory there is — on the CPU the smallest of the machine's RAM, its cgroup limit and the
  process's address-space limit (``ulimit -v``); on a CUDA device its total memory. Work
  that needs more cannot succeed anyway. ``--max-memory GIB`` sets it.

Estimates count only what is certain to be allocated (they are lower bounds), so a
refusal never blocks work that would have fitted. The CLIs set the limits while parsing
(``set_limits``); Python callers use ``using(max_params=..., max_memory=...)``.
"""
from __future__ import annotations

import contextlib
import os
from typing import Any, Iterator

#: default bound on the parameters of any model built from a config (2^30 float32 = 4 GiB)
DEFAULT_MAX_PARAMETERS = 1 << 30

_settings: dict[str, int | None] = {"max_params": None, "max_memory": None}


def human_bytes(n: float) -> str:
    """``1.5 GiB``, ``300 MiB``, ``2.1e+03 TiB``: a size for an error line."""
    for unit, scale in (("TiB", 1 << 40), ("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= scale:
            return f"{n / scale:.3g} {unit}"
    return f"{int(n)} bytes"


def set_limits(max_params: int | None = None, max_memory: float | None = None) -> None:
    """Set the process-wide limits (None: the default). ``max_memory`` in GiB."""
    if max_params is not None:
        _settings["max_params"] = int(max_params)
    if max_memory is not None:
        _settings["max_memory"] = int(float(max_memory) * (1 << 30))


def settings() -> dict[str, int | None]:
    """The current limits as plain data (handed to worker processes; ``restore``)."""
    return dict(_settings)


def restore(saved: dict[str, int | None]) -> None:
    """Set the limits ``settings()`` returned (in another process, say)."""
    _settings.update({k: saved.get(k) for k in _settings})


@contextlib.contextmanager
def using(max_params: int | None = None, max_memory: float | None = None) -> Iterator[None]:
    """The limits within a ``with`` block (restored after); ``max_memory`` in GiB."""
    saved = settings()
    try:
        set_limits(max_params, max_memory)
        yield
    finally:
        restore(saved)


def max_parameters() -> int:
    """The bound on a model's parameter count (``--max-params``)."""
    return _settings["max_params"] or DEFAULT_MAX_PARAMETERS


def parameters_problem(n_params: int, what: str = "the model config") -> str | None:
    """Why ``n_params`` parameters are too many (one line naming the flag), or None."""
    bound = max_parameters()
    if n_params > bound:
        return (f"{what} implies ~{n_params:.3g} parameters ({human_bytes(4 * n_params)} as float32), above the "
                f"limit of {bound:.3g} (--max-params N allows more)")
    return None


def machine_memory() -> tuple[int, str]:
    """``(bytes, what they are)``: the smallest of the machine's RAM, its cgroup memory limit
    and the process's address-space limit."""
    found: list[tuple[int, str]] = []
    try:
        found.append((os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"), "this machine's memory"))
    except (ValueError, OSError, AttributeError):  # pragma: no cover - not POSIX
        pass
    for path in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        try:
            with open(path) as f:
                found.append((int(f.read().strip()), "the container's memory limit"))
        except (OSError, ValueError):  # "max", or no cgroup file
            pass
    try:
        import resource

        soft = resource.getrlimit(resource.RLIMIT_AS)[0]
        if soft != resource.RLIM_INFINITY:
            found.append((int(soft), "the process's address-space limit (ulimit -v)"))
    except (ImportError, OSError, ValueError):  # pragma: no cover - not POSIX
        pass
    return min(found) if found else (1 << 62, "no known limit")


def memory_limit(device: Any = None) -> tuple[int, str]:
    """``(bytes, what they are)`` a command may allocate on ``device`` (None or a CPU: host
    memory): ``--max-memory`` if given, else what the device has."""
    if _settings["max_memory"]:
        return int(_settings["max_memory"]), "--max-memory"
    if device is not None and str(device).startswith("cuda"):
        import torch

        dev = torch.device(device)
        index = dev.index if dev.index is not None else torch.cuda.current_device()
        return int(torch.cuda.get_device_properties(index).total_memory), f"the memory of {dev.type}:{index}"
    return machine_memory()


def memory_problem(nbytes: float, what: str, device: Any = None) -> str | None:
    """Why ``what`` (e.g. "--n-seqs 1000000000 of 12 tokens") needing ``nbytes`` cannot run
    (one line with the estimate and the flag that allows more), or None."""
    limit, source = memory_limit(device)
    if nbytes > limit:
        return (f"{what} needs at least {human_bytes(nbytes)} of memory, more than the {human_bytes(limit)} "
                f"available ({source}); --max-memory GIB allows more")
    return None


def check_memory(nbytes: float, what: str, device: Any = None) -> None:
    """``memory_problem`` as a ``UsageError``."""
    from .errors import UsageError

    problem = memory_problem(nbytes, what, device)
    if problem:
        raise UsageError(problem)


__all__ = ["DEFAULT_MAX_PARAMETERS", "human_bytes", "set_limits", "settings", "restore", "using", "max_parameters", "parameters_problem",
           "machine_memory", "memory_limit", "memory_problem", "check_memory"]
