"""A run's ``metrics.jsonl``: written by the trainer, read by plots and reports — both here.

One JSON object per line, appended as training goes:

    {"event": "start", "config": {...}, "model_config": {...}, "world": "mess3"}
    {"step": 0, "val_loss": ..., "val_floor": ..., "gap_to_floor": ...}     (eval; older logs: "val_gap")
    {"step": 10, "loss": ..., "ce": ..., "next_h": ..., "kl": ..., "lr": ...,
     "grad_norm": ..., "tokens_per_s": ...}                                  (train)
    {"event": "resume", "step": 100}

A resumed run first truncates the log back to its checkpoint's step (``truncate_metrics``),
so the log holds each step once; ``read_metrics`` still tolerates logs from before that rule
(and a partial last line from a crash mid-write).
"""
from __future__ import annotations

import json
import sys
import warnings
from pathlib import Path
from typing import Any

from ..errors import one_line

METRICS_FILE = "metrics.jsonl"


class MetricsLog:
    """Appends records to a ``metrics.jsonl`` (opened per record: a kill loses at most the
    line being written, which the readers drop).

    ``views`` (``training.tracking``: TensorBoard, W&B) receive every record right after it
    is written: the log is the record, they show it. A view that fails is dropped with one
    warning line; the log goes on."""

    def __init__(self, path: str | Path, views: list[Any] | None = None):
        self.path = Path(path)
        self.views = list(views or [])

    def write(self, rec: dict[str, Any]) -> None:
        with open(self.path, "a") as f:
            f.write(json.dumps(rec) + "\n")
        for view in list(self.views):
            try:
                view.write(rec)
            except Exception as exc:  # noqa: BLE001 - a tracker never stops training
                self.views.remove(view)
                print(f"warning: --log {view.name} stopped ({one_line(exc)[:160]}); {self.path} goes on",
                      file=sys.stderr, flush=True)

    def close(self, failed: bool = False) -> None:
        """Flush and close the views (the log itself is closed after every record)."""
        views, self.views = self.views, []
        for view in views:
            try:
                view.close(failed=failed)
            except Exception as exc:  # noqa: BLE001
                print(f"warning: --log {view.name}: closing failed ({type(exc).__name__})", file=sys.stderr, flush=True)


def metric_kind(rec: dict[str, Any]) -> str | None:
    """'eval' (has val_loss), 'train' (has ce or loss) or None (events) for a metrics record."""
    if "step" not in rec:
        return None
    if "val_loss" in rec:
        return "eval"
    if "ce" in rec or "loss" in rec:
        return "train"
    return None


def read_metrics(path: str | Path) -> list[dict[str, Any]]:
    """Records of a run's ``metrics.jsonl``, in order.

    Tolerant of what a killed or resumed run leaves behind: a partial last line is dropped
    silently (a crash mid-write), an unreadable line elsewhere with a warning; and when a
    resumed run logs a step again, the older records of that kind (train or eval) from
    that step on are dropped, so each step appears once with its latest values."""
    path = Path(path)
    lines = path.read_text().splitlines()
    out: list[dict[str, Any]] = []
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            if i != len(lines) - 1:
                warnings.warn(f"{path}: line {i + 1} is not JSON; skipped", stacklevel=2)
            continue
        if not isinstance(rec, dict):
            continue
        kind = metric_kind(rec)
        if kind is not None:
            step = rec["step"]
            out = [r for r in out if metric_kind(r) != kind or r["step"] < step]
        out.append(rec)
    return out


def truncate_metrics(path: str | Path, step: int) -> int:
    """Drop the records of steps after ``step`` (and a partial last line) from a log.

    Used on resume: a run interrupted between its last save (``step``) and the kill logged
    steps its checkpoint does not have; the resumed run logs them again. Events without a
    step and unreadable lines elsewhere are kept (nothing but the re-done steps is lost).
    The file is rewritten atomically. Returns the number of lines dropped."""
    from ..checkpoint import atomic_write_bytes

    path = Path(path)
    if not path.is_file():
        return 0
    lines = path.read_text().splitlines(keepends=True)
    keep: list[str] = []
    for i, line in enumerate(lines):
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            if i == len(lines) - 1 and not line.endswith("\n"):
                continue  # the half-written line of a kill mid-write
            keep.append(line)
            continue
        s = rec.get("step") if isinstance(rec, dict) else None
        if isinstance(s, (int, float)) and not isinstance(s, bool) and s > step:
            continue
        keep.append(line if line.endswith("\n") else line + "\n")
    dropped = len(lines) - len(keep)
    if keep != lines:
        atomic_write_bytes("".join(keep).encode(), path)
    return dropped


__all__ = ["METRICS_FILE", "MetricsLog", "metric_kind", "read_metrics", "truncate_metrics"]
