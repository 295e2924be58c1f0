"""Run folders: which run a folder holds, and what training may touch in it.

A run folder holds ONE run. Its identity — world spec, objective, model config, seed — is
written to ``run.json`` (atomically) when the run claims the folder; for folders from
before ``run.json`` it is read from ``ckpt.pt``. The run's files are ``run.json``,
``ckpt.pt``, ``ckpt_step{N}.pt``, ``metrics.jsonl`` and the trackers' ``tensorboard/`` and
``wandb/`` folders; anything else in the folder is never touched. The rules:

* a fresh run claims a folder that has none of these files (missing or empty folders too);
* a resumed run also claims a folder that holds the SAME run (its own folder, or a copy),
  provided it does not rewind it: a run's history (``ckpt.pt``, the kept checkpoints, the
  rows of ``metrics.jsonl``) is append-only, so a checkpoint behind the folder's latest
  one (``ckpt.pt``'s step, or a kept ``ckpt_step{N}.pt`` with a larger N) resumes only
  into a new folder;
* any other folder (a different run, run files without an identity, or a rewind) is
  refused in one line, unless ``overwrite``: then the old run's files are first renamed
  into ``.replaced-<UTC time>/`` inside the folder, before anything is written, so nothing
  is deleted and the folder never mixes two runs;
* nothing is deleted that this process did not write: the atomic writer removes its own
  temp file on any error; a SIGKILL mid-save leaves ``.ckpt.pt.<8 random characters>.tmp``
  behind, which is reported (``leftover_temp_files``), never deleted, since no later
  process can know that a run wrote it; a run that fails before saving any checkpoint
  removes the ``run.json``, ``metrics.jsonl`` and tracker folders it wrote into a folder
  that held no run (so they do not block the next start), and a folder it created if that
  is then empty.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .. import __version__
from ..errors import UsageError
from .log import METRICS_FILE

RUN_FILE = "run.json"
CKPT_FILE = "ckpt.pt"
IDENTITY_KEYS = ("world_spec", "objective", "model_config", "seed")
_KEPT = re.compile(r"ckpt_step\d+\.pt")
#: the atomic writer's temp names: ``tempfile.mkstemp`` adds 8 characters of
#: ``[a-z0-9_]`` between the prefix ``.<name>.`` and the suffix ``.tmp``
_TEMP = re.compile(r"\.(ckpt\.pt|ckpt_step\d+\.pt|run\.json|metrics\.jsonl)\.[a-z0-9_]{8}\.tmp")


def _normal(obj: Any) -> Any:
    """JSON round trip, so identities from run.json and from live objects compare equal."""
    from ..checkpoint import plain

    return json.loads(json.dumps(plain(obj), sort_keys=True))


def run_identity(world_spec: dict[str, Any], objective: str, model_config: dict[str, Any], seed: int) -> dict[str, Any]:
    """What makes two runs the same run (everything else may differ between a run and its
    resumption only in ``steps`` and the device). Keys that older versions did not write
    (a model config without ``positional``, an A5 spec without ``form``) count as the
    value they meant, so a run from before them still resumes in its own folder."""
    from ..models.config import ModelConfig
    from ..worlds.registry import canonical_spec

    if isinstance(model_config, dict):
        model_config = {"positional": ModelConfig.positional, **model_config}
    return _normal({"world_spec": canonical_spec(world_spec), "objective": objective, "model_config": model_config,
                    "seed": int(seed)})


def identity_of_checkpoint(data: dict[str, Any]) -> dict[str, Any]:
    """The identity of the run a (validated) checkpoint dict belongs to."""
    seed = (data.get("train_config") or {}).get("seed", 0)
    return run_identity(data["world_spec"], data["objective"], data["model_config"], seed)


#: the trackers' folders (``training.tracking``): views of metrics.jsonl, moved and
#: claimed with the run's files
TRACKING_DIRS = ("tensorboard", "wandb")


def is_run_file(name: str) -> bool:
    return name in (RUN_FILE, CKPT_FILE, METRICS_FILE, *TRACKING_DIRS) or _KEPT.fullmatch(name) is not None


def is_temp_file(name: str) -> bool:
    return _TEMP.fullmatch(name) is not None


def folder_identity(path: Path) -> dict[str, Any] | None:
    """The identity recorded in ``path/run.json`` (or else ``path/ckpt.pt``); None when
    neither names one."""
    from ..checkpoint import CheckpointError, read_checkpoint

    try:
        rec = json.loads((path / RUN_FILE).read_text())
        return run_identity(*(rec[k] for k in IDENTITY_KEYS))
    except (OSError, ValueError, KeyError, TypeError):
        pass
    if (path / CKPT_FILE).is_file():
        try:
            return identity_of_checkpoint(read_checkpoint(path / CKPT_FILE))
        except CheckpointError:
            return None
    return None


def _differences(a: dict[str, Any], b: dict[str, Any]) -> str:
    names = {"world_spec": "world", "objective": "objective", "model_config": "model config", "seed": "seed"}
    return ", ".join(names[k] for k in IDENTITY_KEYS if a.get(k) != b.get(k))


@dataclass
class RunFolder:
    """A folder claimed by a run (see ``prepare_run_folder``)."""

    path: Path
    created: Path | None = None  # the topmost folder this run created, if any
    replaced: Path | None = None  # where ``overwrite`` moved the folder's old run
    #: the folder held no run files when claimed: every run file in it is this process's
    fresh: bool = True

    @property
    def checkpoint(self) -> Path:
        return self.path / CKPT_FILE

    @property
    def metrics(self) -> Path:
        return self.path / METRICS_FILE

    def kept(self, step: int) -> Path:
        return self.path / f"ckpt_step{int(step)}.pt"

    def clean_up_after_failure(self) -> None:
        """After a failure: if the folder held no run and this run saved no checkpoint, the
        ``run.json``, ``metrics.jsonl`` and tracker folders it wrote (they would block the
        next start); then the folders this run created, if they are empty. Nothing else is
        removed."""
        if self.fresh and self.path.is_dir() and not any(
                p.name == CKPT_FILE or _KEPT.fullmatch(p.name) for p in self.path.iterdir()):
            for name in (RUN_FILE, METRICS_FILE, *TRACKING_DIRS):
                target = self.path / name
                if target.is_dir() and not target.is_symlink():
                    shutil.rmtree(target, ignore_errors=True)
                else:
                    target.unlink(missing_ok=True)
        if self.created is None:
            return
        p = self.path
        while True:
            try:
                p.rmdir()  # only succeeds on an empty folder
            except OSError:
                return
            if p == self.created:
                return
            p = p.parent


def leftover_temp_files(path: Path) -> list[str]:
    """Names in ``path`` shaped like the atomic writer's temp files (``.ckpt.pt.<8
    characters>.tmp``, ...), which a kill mid-save leaves. Listed, never deleted: a user's
    file may have such a name, and no process can know which run wrote one."""
    return sorted(p.name for p in path.iterdir() if p.is_file() and is_temp_file(p.name))


def move_aside(path: Path, names: list[str]) -> Path:
    """Rename ``names`` (files or folders in ``path``) into a new ``path/.replaced-<UTC
    time>/`` and return it: nothing is deleted."""
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    for i in range(1000):
        backup = path / (f".replaced-{stamp}" + (f"-{i}" if i else ""))
        try:
            backup.mkdir()
            break
        except FileExistsError:
            continue
    else:  # pragma: no cover - a thousand backups in one second
        raise UsageError(f"{path}: cannot find a free .replaced-{stamp} name")
    # run.json last: a move cut short still names its run, and the next start refuses it
    for name in sorted(names, key=lambda n: n == RUN_FILE):
        os.rename(path / name, backup / name)
    return backup


def _create(path: Path) -> Path | None:
    """mkdir -p ``path``; returns the topmost folder created (None if it existed)."""
    top = None
    for p in [path, *path.parents]:
        if p.exists():
            break
        top = p
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UsageError(f"{path}: cannot create the run folder ({exc.strerror or exc})") from None
    return top


def prepare_run_folder(path: str | Path, identity: dict[str, Any], *, resuming: bool, overwrite: bool = False,
                       resume_from: tuple[str | Path, int] | None = None) -> RunFolder:
    """Claim ``path`` for the run ``identity`` following the module's rules; returns the
    folder with ``run.json`` written. ``resume_from``: the (checkpoint, step) a resumed run
    continues from, which must not lie behind the folder's latest checkpoint. Raises
    ``UsageError`` (one line) when refused."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise UsageError(f"{path}: exists and is not a folder (the run folder must be a folder)")
    if not path.exists():
        folder = RunFolder(path, created=_create(path))
    else:
        folder = RunFolder(path)
        present = sorted(p.name for p in path.iterdir() if is_run_file(p.name))
        if present:
            held = folder_identity(path)
            same = resuming and held == identity
            rewind = _rewind(path, present, resume_from) if same else None
            if not same or rewind:
                if not overwrite:  # refused: the folder is left exactly as it was
                    raise UsageError(rewind or _refusal(path, held, identity, present))
                folder.replaced = move_aside(path, present)
            else:
                folder.fresh = False
    if not (path / RUN_FILE).is_file() or folder.replaced is not None:
        write_run_file(path, identity)
    return folder


def latest_step(path: Path, present: list[str], known: tuple[str | Path, int] | None = None) -> tuple[int, str] | None:
    """``(step, file)`` of the furthest checkpoint a run folder holds (``ckpt.pt`` or a kept
    ``ckpt_step{N}.pt``), or None when it holds none. ``known``: a (file, step) already read
    (not read again). Raises ``UsageError`` when ``ckpt.pt`` cannot be read (how far the run
    got is then unknown)."""
    from ..checkpoint import CheckpointError, load_plain

    steps = [(int(n[len("ckpt_step"):-len(".pt")]), n) for n in present if _KEPT.fullmatch(n)]
    if CKPT_FILE in present:
        if known is not None and Path(known[0]).resolve() == (path / CKPT_FILE).resolve():
            step: Any = known[1]
        else:
            try:
                step = load_plain(path / CKPT_FILE)[1].get("step")
            except (CheckpointError, AttributeError):
                step = None
        if not isinstance(step, int) or isinstance(step, bool):
            raise UsageError(f"{path / CKPT_FILE} is unreadable, so how far the run got is unknown; resume into a new "
                             "--out (or --overwrite to move the folder's run aside)")
        steps.append((step, CKPT_FILE))
    return max(steps) if steps else None


def _rewind(path: Path, present: list[str], resume_from: tuple[str | Path, int] | None) -> str | None:
    """Why resuming ``resume_from`` into ``path`` would rewind the run there, or None."""
    if resume_from is None:
        return None
    source, step = resume_from
    latest = latest_step(path, present, known=resume_from)
    if latest is None or latest[0] <= step:
        return None
    return (f"{source} is at step {step} but {path / latest[1]} is at step {latest[0]}: resuming it in {path} would "
            f"rewind the run (its history is append-only); resume it into a new --out, or resume {path / latest[1]}")


def _refusal(path: Path, held: dict[str, Any] | None, identity: dict[str, Any], present: list[str]) -> str:
    fix = "choose another --out, or --overwrite to move the old run aside"
    if held is None:
        shown = ", ".join(present[:3]) + (", ..." if len(present) > 3 else "")
        return f"{path} holds files of an unidentified run ({shown}); {fix}"
    if held != identity:
        return f"{path} holds a different run (other {_differences(held, identity)}); {fix}"
    what = f"{path / CKPT_FILE} already exists" if (path / CKPT_FILE).is_file() else f"{path} already holds this run's files"
    return f"{what}; use --resume {path / CKPT_FILE} to continue, another --out, or --overwrite to start afresh"


def write_run_file(path: Path, identity: dict[str, Any]) -> None:
    from ..checkpoint import atomic_write_bytes

    rec = {**identity, "package_version": __version__, "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    atomic_write_bytes((json.dumps(rec, indent=1, sort_keys=True) + "\n").encode(), path / RUN_FILE)


__all__ = [
    "RUN_FILE", "CKPT_FILE", "IDENTITY_KEYS", "RunFolder", "run_identity", "identity_of_checkpoint", "folder_identity",
    "prepare_run_folder", "move_aside", "leftover_temp_files", "latest_step", "is_run_file", "is_temp_file", "write_run_file",
]
