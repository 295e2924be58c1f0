"""Shared CLI plumbing: one-line errors and non-zero exits instead of tracebacks.

Every ``python -m nextlat_probe.<tool>`` parses its arguments first (so ``--help`` is
instant), then imports what it needs inside ``main`` and is run through ``run_main``.
"""
from __future__ import annotations

import json
import sys
from typing import Any, Callable

EXIT_USAGE = 2


class UsageError(Exception):
    """A problem with what the user asked for; printed as one line, exit code 2."""


def _expected_errors() -> tuple[type[BaseException], ...]:
    errs: list[type[BaseException]] = [UsageError, FileNotFoundError, IsADirectoryError, PermissionError]
    from .worlds.base import WorldError

    errs.append(WorldError)
    mod = sys.modules.get("nextlat_probe.checkpoint")
    if mod is not None:
        errs.append(mod.CheckpointError)
    return tuple(errs)


def run_main(main: Callable[[list[str] | None], int | None], argv: list[str] | None = None) -> None:
    """Run a CLI ``main`` and exit. Expected errors become ``prog: error: <one line>`` on
    stderr with exit code 2; Ctrl-C exits 130."""
    prog = sys.argv[0].rsplit("/", 1)[-1] if sys.argv else "nextlat_probe"
    try:
        code = main(argv)
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        sys.exit(130)
    except Exception as exc:  # noqa: BLE001 - filtered just below
        if isinstance(exc, _expected_errors()):
            msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            if isinstance(exc, (FileNotFoundError, IsADirectoryError, PermissionError)) and getattr(exc, "filename", None):
                msg = f"{exc.filename}: {exc.strerror or msg}"
            print(f"error: {msg}", file=sys.stderr)
            sys.exit(EXIT_USAGE)
        raise
    sys.exit(int(code or 0))


def print_json(obj: Any) -> None:
    """Print one JSON document on stdout (NaN written as null)."""
    print(json.dumps(to_jsonable(obj), indent=2))


def to_jsonable(obj: Any) -> Any:
    """Convert numpy/torch scalars and arrays, dataclasses and tuples into JSON types."""
    import dataclasses
    import math

    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return to_jsonable(dataclasses.asdict(obj))
    if isinstance(obj, dict):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_jsonable(v) for v in obj]
    if hasattr(obj, "tolist") and not isinstance(obj, (str, bytes)):
        return to_jsonable(obj.tolist())
    if isinstance(obj, float):
        return None if (math.isnan(obj) or math.isinf(obj)) else obj
    if isinstance(obj, (str, int, bool)) or obj is None:
        return obj
    if hasattr(obj, "item"):
        return to_jsonable(obj.item())
    return str(obj)


def parse_layers(text: str, n_layers: int) -> list[int]:
    """``all`` / ``last`` / ``0,2,...`` -> block indices; -1 means the embeddings.

    Layer ``L`` (0-based) is ``blocks.L.hook_resid_post``; ``emb`` / ``-1`` is
    ``hook_embed + hook_pos_embed``.
    """
    text = text.strip().lower()
    if text == "all":
        return [-1, *range(n_layers)]
    if text == "last":
        return [n_layers - 1]
    out = []
    for part in text.split(","):
        part = part.strip()
        if part in ("emb", "embed", "-1"):
            out.append(-1)
            continue
        try:
            v = int(part)
        except ValueError:
            raise UsageError(f"--layers: {part!r} is not a layer index (use all, last or 0,1,...)") from None
        if not 0 <= v < n_layers:
            raise UsageError(f"--layers: layer {v} out of range for a {n_layers}-layer model")
        out.append(v)
    return out


def format_table(rows: list[dict[str, Any]], columns: list[tuple[str, str, str]]) -> str:
    """Plain-text table. ``columns``: (key, header, format spec such as '.2f' or '')."""

    def cell(v: Any, fmt: str) -> str:
        if v is None:
            return "-"
        if isinstance(v, float) and v != v:
            return "nan"
        try:
            return format(v, fmt) if fmt else str(v)
        except (TypeError, ValueError):
            return str(v)

    body = [[cell(r.get(k), f) for k, _, f in columns] for r in rows]
    heads = [h for _, h, _ in columns]
    widths = [max(len(h), *(len(b[i]) for b in body)) if body else len(h) for i, h in enumerate(heads)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(heads, widths)), "  ".join("-" * w for w in widths)]
    lines += ["  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(b, widths))) for b in body]
    return "\n".join(lines)


def add_checkpoint_args(p, n_seqs: int = 256, seeds: bool = True) -> None:
    """Arguments shared by the analysis CLIs."""
    p.add_argument("ckpts", nargs="+", metavar="CKPT", help="checkpoint files (ckpt.pt) or run folders")
    p.add_argument("--n-seqs", type=int, default=n_seqs, help="number of sequences to analyse")
    p.add_argument("--seq-len", type=int, default=None, help="tokens per sequence (default: the training length)")
    if seeds:
        p.add_argument("--seed", type=int, default=0, help="seed of the analysed sequences")
    p.add_argument("--device", default="cpu", help="cpu, cuda or auto")
    p.add_argument("--json", action="store_true", help="print one JSON document and nothing else on stdout")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
