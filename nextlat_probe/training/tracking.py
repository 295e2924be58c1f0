"""Experiment tracking — TensorBoard and Weights & Biases — as views of ``metrics.jsonl``.

``metrics.jsonl`` is the run's record (``training.log``); a tracker is fed the very rows
the log writes (``MetricsLog(views=...)``), so it shows the same numbers and nothing else:

    train rows  -> ``train/loss``, ``train/ce``, ``train/next_h``, ``train/kl``, ``train/mtp``,
                   ``train/lr``, ``train/grad_norm``, ``train/tokens_per_s``
    eval rows   -> ``val/val_loss``, ``val/val_floor``, ``val/gap_to_floor`` (the gap to the exact floor)
    start row   -> the run config (training, model and objective configs, world, runtime)

each scalar at its row's ``step``. Event rows other than ``start`` are not scalars.

- ``tensorboard`` (``torch.utils.tensorboard``): event files in ``RUN/tensorboard/``. On
  resume the folder's event files are rewritten from the (already truncated) log, so the
  events hold each step once and equal the log even after a kill between two saves; this
  also fills in the whole history when tracking is first turned on at a resume.
- ``wandb``: a W&B run whose id is fixed by the run folder (its ``run.json``), so a resume
  continues the same W&B run (``resume="allow"``; W&B keeps each step once and a resumed
  run repeats the steps since its checkpoint bit for bit). Nothing leaves the machine
  unless the user configured W&B: with ``WANDB_MODE`` set, that mode is used; otherwise
  online only with an API key (``WANDB_API_KEY`` or a ``wandb login`` entry in ~/.netrc),
  else offline, into ``RUN/wandb/`` (``wandb sync`` uploads it later). ``group`` (a sweep's
  name) groups runs; ``WANDB_PROJECT`` / ``WANDB_ENTITY`` choose where they go (default
  project ``nextlat_probe``).

A tracker that fails while training runs is dropped with one warning line; training and
``metrics.jsonl`` go on.
"""
from __future__ import annotations

import hashlib
import importlib.util
import json
import math
import netrc
import os
import sys
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence
from urllib.parse import urlparse

from ..errors import UsageError

TRACKERS = ("tensorboard", "wandb")
TENSORBOARD_DIR = "tensorboard"
WANDB_DIR = "wandb"
DEFAULT_PROJECT = "nextlat_probe"
#: the package each tracker needs, and where it comes from
_PACKAGES = {"tensorboard": "tensorboard", "wandb": "wandb"}


def parse_trackers(values: Iterable[str] | str | None) -> tuple[str, ...]:
    """``"tensorboard,wandb"`` or ``["tensorboard", "wandb"]`` -> checked, in order, once
    each; a tracker whose package is missing is refused here, before any training."""
    if values is None:
        return ()
    items = [values] if isinstance(values, str) else list(values)
    out: list[str] = []
    for item in items:
        for name in filter(None, (s.strip().lower() for s in str(item).split(","))):
            if name not in TRACKERS:
                raise UsageError(f"--log {name}: unknown tracker (use {', '.join(TRACKERS)})")
            if importlib.util.find_spec(_PACKAGES[name]) is None:
                raise UsageError(f"--log {name} needs the {_PACKAGES[name]} package: pip install 'nextlat_probe[tracking]'")
            if name not in out:
                out.append(name)
    return tuple(out)


def scalars(rec: Mapping[str, Any]) -> tuple[int, dict[str, float]] | None:
    """``(step, {tag: value})`` of a train or eval row of ``metrics.jsonl``; None for events."""
    from .log import metric_kind

    kind = metric_kind(rec)
    if kind is None:
        return None
    prefix = "val" if kind == "eval" else "train"
    out = {f"{prefix}/{k}": float(v) for k, v in rec.items()
           if k != "step" and isinstance(v, (int, float)) and not isinstance(v, bool)}
    return int(rec["step"]), out


def run_config(start: Mapping[str, Any]) -> dict[str, Any]:
    """The run config of a ``start`` row (everything but the event marker)."""
    return {k: v for k, v in start.items() if k != "event"}


class TensorBoardView:
    """``RUN/tensorboard/`` event files, written through ``torch.utils.tensorboard``."""

    name = "tensorboard"

    def __init__(self, folder: Path, history: Sequence[Mapping[str, Any]] = ()) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.dir = Path(folder) / TENSORBOARD_DIR
        if self.dir.is_dir():  # rewritten from the log: the log is the record
            for p in self.dir.glob("events.out.tfevents.*"):
                p.unlink()
        self.writer = SummaryWriter(log_dir=str(self.dir))
        for rec in history:
            self.write(rec)

    def write(self, rec: Mapping[str, Any]) -> None:
        if rec.get("event") == "start":
            text = json.dumps(run_config(rec), indent=1, sort_keys=True, default=str)
            self.writer.add_text("config", "```\n" + text + "\n```", global_step=int(rec.get("resumed_at", 0) or 0))
            return
        got = scalars(rec)
        if got is None:
            return
        step, values = got
        for tag, v in values.items():
            self.writer.add_scalar(tag, v, global_step=step)

    def close(self, failed: bool = False) -> None:
        self.writer.close()


def wandb_mode() -> tuple[str, str]:
    """(mode, why): the user's ``WANDB_MODE`` if set; else online where an API key is
    configured (``WANDB_API_KEY``, or ~/.netrc's entry for the W&B host); else offline."""
    if os.environ.get("WANDB_MODE"):
        return os.environ["WANDB_MODE"], "WANDB_MODE"
    if os.environ.get("WANDB_API_KEY"):
        return "online", "WANDB_API_KEY"
    host = urlparse(os.environ.get("WANDB_BASE_URL") or "https://api.wandb.ai").hostname or "api.wandb.ai"
    try:
        if netrc.netrc().authenticators(host):
            return "online", f"~/.netrc ({host})"
    except (OSError, netrc.NetrcParseError):
        pass
    return "offline", "no W&B account configured"


def wandb_run_id(folder: Path) -> str:
    """A W&B run id fixed by the run folder: its absolute path and its ``run.json`` (the
    run's identity and creation time), so a resume continues the same W&B run and a new
    run in the same folder (``--overwrite``) gets another."""
    try:
        ident = (Path(folder) / "run.json").read_text()
    except OSError:
        ident = ""
    return hashlib.sha1(f"{Path(folder).resolve()}\n{ident}".encode()).hexdigest()[:16]


class WandbView:
    """A Weights & Biases run (``wandb.init`` / ``wandb.log`` / ``wandb.finish``)."""

    name = "wandb"

    def __init__(self, folder: Path, start: Mapping[str, Any], group: str | None = None) -> None:
        import wandb

        self.mode, why = wandb_mode()
        (Path(folder) / WANDB_DIR).mkdir(exist_ok=True)
        cfg = run_config(start)
        tags = [str(t) for t in ((cfg.get("config") or {}).get("objective"), cfg.get("world")) if t]
        self.run = wandb.init(
            project=os.environ.get("WANDB_PROJECT") or DEFAULT_PROJECT, dir=str(folder), id=wandb_run_id(folder),
            name=Path(folder).resolve().name, group=group, tags=tags, config=json.loads(json.dumps(cfg, default=str)),
            resume="allow", mode=self.mode, allow_val_change=True,
            settings=wandb.Settings(silent=True, console="off", x_disable_stats=True, save_code=False,
                                    disable_git=True, x_disable_machine_info=True))
        if self.mode == "offline":
            print(f"wandb: logging offline ({why}) to {Path(folder) / WANDB_DIR}; `wandb sync` uploads it",
                  file=sys.stderr, flush=True)

    def write(self, rec: Mapping[str, Any]) -> None:
        got = scalars(rec)
        if got is None:
            return
        step, values = got
        self.run.log({k: v for k, v in values.items() if math.isfinite(v)}, step=step)

    def close(self, failed: bool = False) -> None:
        self.run.finish(exit_code=1 if failed else 0)


def open_views(trackers: Sequence[str], folder: Path, *, start: Mapping[str, Any],
               history: Sequence[Mapping[str, Any]] = (), group: str | None = None) -> list[Any]:
    """The trackers of a run as ``MetricsLog`` views. ``history``: the rows the log already
    holds (a resumed run's, truncated to its checkpoint), which TensorBoard rewrites;
    ``start``: the run's config row."""
    views: list[Any] = []
    try:
        for name in parse_trackers(trackers):
            if name == "tensorboard":
                views.append(TensorBoardView(folder, history))
            else:
                views.append(WandbView(folder, start, group))
    except BaseException:
        for v in views:
            v.close(failed=True)
        raise
    return views


__all__ = ["TRACKERS", "TENSORBOARD_DIR", "WANDB_DIR", "parse_trackers", "scalars", "run_config", "open_views",
           "TensorBoardView", "WandbView", "wandb_mode", "wandb_run_id"]
