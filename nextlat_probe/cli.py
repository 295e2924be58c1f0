"""Shared CLI plumbing: the same flags everywhere, one-line errors and exit code 2.

Every ``python -m nextlat_probe.<tool>`` parses its arguments first (so ``--help`` is
instant: nothing heavy is imported before ``main`` runs), then calls one runner and prints.
``run_main`` turns every ``nextlat_probe.errors.NextLatError`` (and the usual file errors)
into ``error: <one line>`` on stderr with exit code 2; Ctrl-C exits 130.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import warnings
from pathlib import Path
from typing import Any, Callable

from .errors import NextLatError, UsageError, one_line

EXIT_USAGE = 2
FILE_ERRORS = (FileNotFoundError, IsADirectoryError, NotADirectoryError, PermissionError)

__all__ = ["EXIT_USAGE", "UsageError", "run_main", "print_json", "add_model_args", "source_options", "load_cli_models",
           "cli_inputs", "add_sequence_args",
           "add_output_args", "add_layers_arg", "check_positive", "held_out_split", "check_output_path", "resolve_device_arg",
           "progress_enabled", "table_text", "print_table", "finish"]


def run_main(main: Callable[[list[str] | None], int | None], argv: list[str] | None = None) -> None:
    """Run a CLI ``main`` and exit with its code; user errors become one line, exit 2."""
    try:
        with warnings.catch_warnings():
            # library warnings (torch's weights_only notice, sklearn convergence) are not
            # the user's business on a CLI; real problems arrive as errors
            warnings.simplefilter("ignore")
            code = main(argv)
            sys.stdout.flush()  # a closed pipe shows here, inside the handler, not at exit
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
    except BrokenPipeError:
        if not _stdout_is_closed():
            raise  # another pipe (a worker process, a socket): a real error
        # the reader of stdout went away (``... | head``): end quietly, as a program killed by
        # SIGPIPE would (exit 141); stdout points at devnull so the final flush cannot raise
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.exit(141)
    except FILE_ERRORS as exc:
        where = getattr(exc, "filename", None)
        msg = f"{where}: {exc.strerror or one_line(exc)}" if where else one_line(exc)
        print(f"error: {msg}", file=sys.stderr)
        sys.exit(EXIT_USAGE)
    except NextLatError as exc:
        print(f"error: {one_line(exc)}", file=sys.stderr)
        sys.exit(EXIT_USAGE)
    sys.exit(int(code or 0))


def _stdout_is_closed() -> bool:
    """Whether writing to stdout fails with a broken pipe (its reader has gone)."""
    try:
        sys.stdout.write("\n")
        sys.stdout.flush()
    except BrokenPipeError:
        return True
    except (OSError, ValueError):
        return False
    return False


def print_json(obj: Any) -> None:
    """Print one JSON document on stdout (NaN written as null)."""
    from .records import to_jsonable

    print(json.dumps(to_jsonable(obj), indent=2))


# --------------------------------------------------------------------------------------
# shared argument groups: one spelling and one help text per flag, in every CLI
# --------------------------------------------------------------------------------------
def add_model_args(p: argparse.ArgumentParser, nargs: str = "+") -> None:
    p.add_argument("ckpts", nargs=nargs, metavar="CKPT",
                   help="checkpoint files (ckpt.pt) or run folders; also legacy TransformerLens state dicts "
                        "(with --tl-config) and Hugging Face GPT-2 folders, with --world")
    g = p.add_argument_group("models not trained by nextlat_probe")
    g.add_argument("--world", default=None, metavar="SPEC",
                   help='the world the models were trained on, e.g. "mess3:x=0.05,a=0.85", rrxor, '
                        '"hmm:T=T.npy", taxi (with --map)')
    g.add_argument("--map", dest="world_map", type=Path, default=None, metavar="FILE.json",
                   help="the street map of --world taxi: edge-list JSON, or 'manhattan' (shipped with the package)")
    g.add_argument("--tl-config", type=Path, default=None, metavar="CONFIG.json",
                   help="config of a legacy TransformerLens state dict (n_layers, d_model, n_heads, d_head, "
                        "d_mlp, n_ctx, d_vocab, act_fn, normalization_type; other keys ignored)")
    g.add_argument("--hf", action="store_true", help="read model folders as Hugging Face models (config.json + "
                   "model.safetensors or pytorch_model.bin), never from a hub")
    g.add_argument("--vocab", type=Path, default=None, metavar="FILE.json",
                   help="JSON object world token -> model token id, when the model numbers tokens its own way")


def source_options(args: argparse.Namespace) -> dict[str, Any]:
    """The ``sources.load_model`` options of ``add_model_args`` (empty for our checkpoints)."""
    opts: dict[str, Any] = {}
    if getattr(args, "world", None) is not None:
        from .sources import world_from_text

        opts["world"] = world_from_text(args.world, map_path=getattr(args, "world_map", None))
    elif getattr(args, "world_map", None) is not None:
        raise UsageError("--map goes with --world taxi")
    if getattr(args, "tl_config", None) is not None:
        opts["config"] = args.tl_config
    if getattr(args, "vocab", None) is not None:
        opts["vocab"] = args.vocab
    if getattr(args, "hf", False):
        opts["hf"] = True
    return opts


def load_cli_models(args: argparse.Namespace, device: str) -> list[Any]:
    """The CLI's models, loaded once (ours, or foreign ones with ``source_options``)."""
    from .compare import load_models

    return load_models(args.ckpts, device=device, **source_options(args))


def cli_inputs(args: argparse.Namespace, models: list[Any], n_seqs: int):
    """The shared ``compare.Inputs`` of an analysis CLI (``--all-sequences`` honoured)."""
    from .compare import Inputs

    return Inputs(models, n_seqs=n_seqs, seq_len=args.seq_len, seed=args.seed, progress=progress_enabled(args),
                  all_sequences=getattr(args, "all_sequences", False))


def add_sequence_args(p: argparse.ArgumentParser, n_seqs: int, what: str = "sequences to analyse",
                      seq_len: bool = True) -> None:
    g = p.add_argument_group("sequences")
    g.add_argument("--n-seqs", type=int, default=n_seqs, help=f"{what} (default {n_seqs})")
    if seq_len:
        g.add_argument("--seq-len", type=int, default=None,
                       help="tokens per sequence (default: the training length, within the context)")
    g.add_argument("--seed", type=int, default=0, help="seed of the analysed sequences and every random choice")
    if seq_len:
        g.add_argument("--all-sequences", action="store_true",
                       help="use every one of the V^n sequences of length n (n = --seq-len, else the context) "
                            "once, instead of --n-seqs sampled ones (small HMM worlds)")


def add_layers_arg(p: argparse.ArgumentParser, default: str, flag: str = "--layers") -> None:
    p.add_argument(flag, default=default,
                   help=f"all, last, or a comma list of block indices (negative count from the end: -1 = last "
                        f"block); embed = embeddings, ln_final = after the final LayerNorm (default {default})")


def add_output_args(p: argparse.ArgumentParser, plot: bool = True) -> None:
    g = p.add_argument_group("output and execution")
    g.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or auto (CUDA when available)")
    g.add_argument("--json", action="store_true", help="print one JSON document and nothing else on stdout")
    if plot:
        g.add_argument("--plot", type=Path, default=None, metavar="FILE.html",
                       help="write an offline interactive HTML page (plotly.js embedded) here")
    g.add_argument("--no-progress", action="store_true", help="no progress output on stderr")


# --------------------------------------------------------------------------------------
# checks that give one line instead of a traceback
# --------------------------------------------------------------------------------------
def check_positive(**values: int | float | None) -> None:
    """``check_positive(n_seqs=args.n_seqs)`` -> UsageError naming the flag when not > 0."""
    for name, v in values.items():
        if v is not None and not v > 0:
            raise UsageError(f"--{name.replace('_', '-')} must be positive, got {v}")


def check_output_path(path: Path | None, flag: str = "--plot") -> None:
    """An output file must not be a directory and its folder must exist (checked before any
    work starts, so a failed command leaves nothing behind)."""
    if path is None:
        return
    if path.is_dir():
        raise UsageError(f"{flag} {path}: is a directory; give a file name such as {path / 'page.html'}")
    if not path.parent.exists():
        raise UsageError(f"{flag} {path}: folder {path.parent} does not exist")


def held_out_split(args: argparse.Namespace) -> tuple[int, int]:
    """(n_seqs, n_test) of ``--n-seqs`` / ``--n-test`` / ``--n-train`` (probe, transition):
    the held-out part is the last third unless given (``compare.held_out``, the report's
    rule too); with ``--n-train`` alone, half as many as it."""
    from .compare.inputs import held_out

    check_positive(n_test=args.n_test, n_train=args.n_train)
    if args.n_train is not None:
        n_test = args.n_test if args.n_test is not None else max(1, args.n_train // 2)
        return args.n_train + n_test, n_test
    check_positive(n_seqs=args.n_seqs)
    return args.n_seqs, args.n_test if args.n_test is not None else held_out(args.n_seqs)


def resolve_device_arg(device: str) -> str:
    """Validate ``--device`` through the one resolver (one line for unknown / unavailable)."""
    from .models.transformer import resolve_device

    return str(resolve_device(device))


def progress_enabled(args: argparse.Namespace) -> bool:
    return not (getattr(args, "no_progress", False) or getattr(args, "json", False))


def table_text(records: list[dict[str, Any]], columns: list[tuple[str, str, str]]) -> str:
    """Records as a text table with, under it, the protocol line (their ``params``) and the
    convergence note (how far from the exact floor each model is: the context of every
    number)."""
    from .tables import convergence_note, protocol_note, text_table

    notes = [n for n in (protocol_note(records), convergence_note(records)) if n]
    return "\n".join([text_table(records, columns), *notes])


def print_table(records: list[dict[str, Any]], columns: list[tuple[str, str, str]]) -> None:
    print(table_text(records, columns))


def finish(args: argparse.Namespace, records: list[dict[str, Any]], text: Callable[[], str]) -> int:
    """The end of every analysis CLI: one JSON document with ``--json``, else the text (and
    where ``--plot`` wrote its page)."""
    if args.json:
        print_json(records)
    else:
        print(text())
        if getattr(args, "plot", None) is not None:
            print(f"wrote {args.plot}")
    return 0
