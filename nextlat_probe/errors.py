"""The toolkit's errors: one base class and a few kinds, with no dependency on the CLIs.

Every error a user can cause (a bad world spec, a corrupt or foreign checkpoint, an
impossible analysis request, a device that is not there) is a ``NextLatError``. It is a
``ValueError`` so that library callers who already catch ``ValueError`` keep working. The
CLIs (``nextlat_probe.cli.run_main``) turn any of them into ONE line on stderr and exit
code 2; the library never prints and never exits.

Kinds::

    NextLatError            base (ValueError)
    ├── UsageError          an argument out of range or inconsistent (CLI or Python)
    ├── WorldError          invalid world definition or input (bad map, illegal trip, ...)
    ├── CheckpointError     missing, corrupt, foreign, unsafe or inconsistent model file
    ├── AnalysisError       an analysis that cannot run on what it was given
    └── DeviceError         an unknown or unavailable device string

Not an error but a stop: ``TimeLimitReached`` (a sweep or a set of runs stopped by its
time limit with every finished piece saved); scripts exit with ``EXIT_TIME_LIMIT`` (75,
EX_TEMPFAIL of sysexits.h: "try again") and the same command continues the work.
"""
from __future__ import annotations

import os


class NextLatError(ValueError):
    """Base of every error a user can cause; printed by the CLIs as one line, exit 2."""


class UsageError(NextLatError):
    """An argument out of range, or arguments that contradict each other."""


class WorldError(NextLatError):
    """Invalid world definition or input (bad transition tensor, malformed map, ...)."""


class AnalysisError(NextLatError):
    """An analysis that cannot run on the data or model it was given."""


class DeviceError(NextLatError):
    """An unknown device string, or a device (CUDA, MPS) that is not available here."""


class CheckpointError(NextLatError):
    """A model file that is missing, corrupt, foreign, unsafe or inconsistent.

    The message always starts with the file's path: ``<path>: <reason>``."""

    def __init__(self, path: str | os.PathLike, reason: str):
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")

    def __reduce__(self):  # picklable across processes (DDP, multiprocessing)
        return (type(self), (self.path, self.reason))


#: exit code of a command stopped by ``--time-limit`` before its work was done; running the
#: same command again (or ``train --resume``) continues it
EXIT_TIME_LIMIT = 75


class TimeLimitReached(Exception):
    """Work stopped cleanly by its time limit; everything finished is saved and the same
    call continues it. Not a ``NextLatError``: nothing was wrong with the input."""


def one_line(exc: BaseException) -> str:
    """The first non-empty line of an error's message (its type name when empty)."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


__all__ = ["NextLatError", "UsageError", "WorldError", "AnalysisError", "DeviceError", "CheckpointError", "one_line",
           "EXIT_TIME_LIMIT", "TimeLimitReached"]
