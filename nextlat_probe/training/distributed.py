"""Multi-process training (DDP): the process group, and what only rank 0 does.

``torchrun --standalone --nproc_per_node N -m nextlat_probe.train ...`` starts N processes
with ``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK`` set; ``session`` reads them, joins the
group (gloo on CPU, nccl on CUDA with device ``cuda:LOCAL_RANK``) and leaves it at the end.
Without them (``WORLD_SIZE`` unset or 1) it is a no-op and training is the single-process
loop, exactly as before. A group the caller already initialised is used as it is (and left
for the caller to destroy).

The helpers below are identities in a single process: ``sum_losses`` (the global value of
partial losses), ``broadcast_floats`` / ``broadcast_object`` (rank 0's value everywhere),
``barrier``. Collective failures (a rank that died, torchrun's SIGTERM to the survivors)
become one ``DistributedError`` line (``failure``), printed where the process still can.
"""
from __future__ import annotations

import os
import re
import signal
import threading
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Iterator

import torch

from ..errors import DeviceError, NextLatError, UsageError, one_line
from ..models.transformer import resolve_device

#: exit code of the train CLI when the job lost one of its processes
EXIT_LOST_PROCESS = 4


class DistributedError(NextLatError):
    """A process of a multi-process run died or the group failed; this process stopped.
    The last good checkpoint (written by rank 0 alone, atomically) is untouched."""


class _Terminated(BaseException):
    """Raised by the SIGTERM handler (torchrun ends the survivors when one process fails).
    A BaseException, so no ``except Exception`` on the way swallows it."""


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    if value is None or value.strip() == "":
        return default
    try:
        return int(value)
    except ValueError:
        raise UsageError(f"environment variable {name}={value!r} is not an integer") from None


def env_rank() -> int:
    """This process's rank as the launcher set it (0 without one)."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank()
    return _env_int("RANK", 0)


def env_world_size() -> int:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_world_size()
    return _env_int("WORLD_SIZE", 1)


@dataclass
class Dist:
    """This process's place in the job; ``Dist()`` is the single process."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    owns_group: bool = False  # True when ``session`` initialised the group (and destroys it)

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    # --- collectives (identities in a single process) ----------------------------------
    def sum_losses(self, losses: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The sum over ranks of each (detached) partial loss: with losses normalised by
        global counts this is the global value, the same on every rank. One all-reduce."""
        if not self.enabled:
            return losses
        keys = list(losses)
        flat = torch.stack([losses[k].detach().float().reshape(()) for k in keys]).to(self.device)
        torch.distributed.all_reduce(flat)
        return {k: flat[i] for i, k in enumerate(keys)}

    def broadcast_floats(self, values: list[float]) -> list[float]:
        """Rank 0's ``values`` on every rank."""
        if not self.enabled:
            return values
        t = torch.tensor([float(v) for v in values], dtype=torch.float64, device=self.device)
        torch.distributed.broadcast(t, src=0)
        return [float(v) for v in t.tolist()]

    def broadcast_object(self, obj: Any) -> Any:
        """Rank 0's ``obj`` (picklable) on every rank."""
        if not self.enabled:
            return obj
        box = [obj]
        torch.distributed.broadcast_object_list(box, src=0, device=self.device if self.device.type == "cuda" else None)
        return box[0]

    def barrier(self) -> None:
        if self.enabled:
            if self.device.type == "cuda":
                torch.distributed.barrier(device_ids=[self.device.index or 0])
            else:
                torch.distributed.barrier()

    def wrap(self, module: torch.nn.Module) -> torch.nn.Module:
        """``module`` under DistributedDataParallel (itself in a single process).

        Every trainable parameter receives a gradient in every step (p_psi and the MTP
        heads included, zero-initialised ones too), so ``find_unused_parameters`` stays off;
        frozen parameters (``requires_grad`` False) are not registered with the reducer.
        Buffers are constants built identically on every rank: not broadcast per step."""
        if not self.enabled:
            return module
        from torch.nn.parallel import DistributedDataParallel

        ids = [self.device.index or 0] if self.device.type == "cuda" else None
        import inspect

        # torch >= 2.13 names "no per-forward buffer sync" forward_sync_buffers (broadcast_buffers is deprecated)
        newer = "forward_sync_buffers" in inspect.signature(DistributedDataParallel.__init__).parameters
        sync = {"forward_sync_buffers": False} if newer else {"broadcast_buffers": False}
        return DistributedDataParallel(module, device_ids=ids, find_unused_parameters=False, **sync)


def device_for(requested: str | None, world_size: int, local_rank: int) -> torch.device:
    """The device of this process: ``resolve_device`` in a single process; in a group,
    ``cuda:LOCAL_RANK`` for ``auto`` (with CUDA) and ``cuda``, or the CPU."""
    if world_size <= 1:
        return resolve_device(requested)
    text = "auto" if requested is None else str(requested).strip().lower()
    if text == "auto":
        text = "cuda" if torch.cuda.is_available() else "cpu"
    if text == "cpu":
        return torch.device("cpu")
    if text == "cuda":
        resolve_device("cuda")  # one line when CUDA is missing
        count = torch.cuda.device_count()
        if local_rank >= count:
            raise DeviceError(f"process {local_rank} of this node needs cuda:{local_rank}, but this machine has "
                              f"{count} CUDA device(s); start at most {count} processes per node")
        return torch.device(f"cuda:{local_rank}")
    resolve_device(text)  # unknown strings fail here, in one line
    raise DeviceError(f"device {text!r} with {world_size} processes: every process uses its own GPU "
                      "(cuda:LOCAL_RANK); use --device cuda, cpu or auto")


@contextmanager
def session(requested_device: str | None) -> Iterator[Dist]:
    """This process's ``Dist`` for the duration of a run: joins the group named by the
    launcher's environment (and leaves it afterwards), uses one already initialised, or
    is the single process. In a group, SIGTERM (torchrun ending the survivors after a
    failure) becomes an exception, so the run stops through its normal failure path."""
    already = torch.distributed.is_available() and torch.distributed.is_initialized()
    world_size = env_world_size()
    if world_size <= 1:
        yield Dist(device=device_for(requested_device, 1, 0))
        return
    if not torch.distributed.is_available():  # pragma: no cover - every supported build has it
        raise UsageError(f"WORLD_SIZE={world_size} but this torch build has no torch.distributed")
    rank = env_rank()
    local_rank = _env_int("LOCAL_RANK", rank)
    device = device_for(requested_device, world_size, local_rank)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if not already:
        try:
            torch.distributed.init_process_group(backend="nccl" if device.type == "cuda" else "gloo",
                                                 rank=rank, world_size=world_size)
        except (RuntimeError, ValueError) as exc:
            raise DistributedError(f"rank {rank}: cannot join the process group ({one_line(exc)[:200]})") from None
    d = Dist(rank, world_size, local_rank, device, owns_group=not already)
    previous = _install_sigterm()
    try:
        yield d
    finally:
        _restore_sigterm(previous)
        if d.owns_group and torch.distributed.is_initialized():
            try:
                torch.distributed.destroy_process_group()
            except Exception:  # a broken group: the process is ending anyway
                pass


def _install_sigterm():
    if threading.current_thread() is not threading.main_thread():
        return None

    def stop(signum, frame):
        raise _Terminated()

    try:
        return signal.signal(signal.SIGTERM, stop)
    except (ValueError, OSError):  # pragma: no cover - not the main thread of the interpreter
        return None


def _restore_sigterm(previous) -> None:
    if previous is not None:
        try:
            signal.signal(signal.SIGTERM, previous)
        except (ValueError, OSError):  # pragma: no cover
            pass


#: words of the errors a collective raises when another rank is gone (gloo: "Connection reset
#: by peer", "Connection closed by peer"; nccl: "NCCL error", watchdog timeouts)
_COLLECTIVE_WORDS = ("gloo", "nccl", "connection reset", "connection closed", "connection refused", "broken pipe",
                     "processgroup", "timed out")


def failure(exc: BaseException, d: Dist, step: int, last_good: str) -> DistributedError | None:
    """The one-line error for a failure of the group seen by this process (the launcher's
    SIGTERM, a collective that failed because another rank died), or None when ``exc``
    is something else (which then propagates unchanged)."""
    if isinstance(exc, _Terminated):
        return DistributedError(f"rank {d.rank}: stopped after step {step} by the launcher (SIGTERM; torchrun ends "
                                f"every process when one fails); {last_good}")
    dist_error = getattr(torch.distributed, "DistError", ())
    if isinstance(exc, NextLatError):
        return None
    looks = isinstance(exc, dist_error) or (isinstance(exc, RuntimeError)
                                           and any(w in str(exc).lower() for w in _COLLECTIVE_WORDS))
    if not looks:
        return None
    reason = re.sub(r"^\[[^\]]*\]\s*", "", one_line(exc))  # gloo's "[.../pair.cc:537] " source prefix
    return DistributedError(f"rank {d.rank}: lost the other training processes after step {step} "
                            f"({reason[:160]}); {last_good}")


__all__ = ["Dist", "DistributedError", "EXIT_LOST_PROCESS", "device_for", "env_rank", "env_world_size", "failure",
           "session"]
