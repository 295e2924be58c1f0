"""Shared CLI plumbing: the same flags everywhere, one-line errors and exit code 2.

Every ``python -m nextlat_probe.<tool>`` parses its arguments first (so ``--help`` is
instant: nothing heavy is imported before ``main`` runs), then calls one runner and prints.
Every CLI builds its parser with ``ArgumentParser`` below: a bad flag value is one line
(``error: argument --n-seqs: invalid int value: 'x'; see ... --help``, exit 2), and
``--help`` shows one default per option. ``run_main`` turns every
``nextlat_probe.errors.NextLatError`` and every operating-system error (a missing file, a
full disk, a name too long, standard output on a full device) into ``error: <one line>``
on stderr with exit code 2; a closed stdout pipe ends quietly (141); Ctrl-C exits 130.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import warnings
from pathlib import Path
from typing import Any, Callable

from . import limits
from .errors import NextLatError, UsageError, one_line

EXIT_USAGE = 2

__all__ = ["EXIT_USAGE", "UsageError", "ArgumentParser", "HelpFormatter", "run_main", "print_json", "add_model_args", "source_options", "load_cli_models",
           "cli_inputs", "add_sequence_args", "add_world_args", "world_spec", "WORLD_FLAGS",
           "world_flag_value", "held_out_split",
           "add_output_args", "add_layers_arg", "check_positive", "check_output_path", "resolve_device_arg",
           "progress_enabled", "table_text", "print_table", "finish", "add_limit_args"]


def run_main(main: Callable[[list[str] | None], int | None], argv: list[str] | None = None) -> None:
    """Run a CLI ``main`` and exit with its code; user errors become one line, exit 2."""
    try:
        with warnings.catch_warnings(), limits.using():  # --max-params / --max-memory last for this call
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
    except OSError as exc:  # a missing file, a full disk, a name too long, stdout on /dev/full
        where = getattr(exc, "filename", None)
        what = exc.strerror or one_line(exc)
        if where is None and _stdout_fails():
            # the output itself cannot be written: say so on stderr, and point stdout at
            # devnull so that the interpreter's final flush does not raise a second time
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            what = f"cannot write the output: {what}"
        print(f"error: {f'{where}: {what}' if where else what}", file=sys.stderr)
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


def _stdout_fails() -> bool:
    """Whether flushing stdout raises (its device is full or gone)."""
    try:
        sys.stdout.flush()
    except (OSError, ValueError):
        return True
    return False


# --------------------------------------------------------------------------------------
# the parser every CLI builds
# --------------------------------------------------------------------------------------
class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """One default per option in ``--help``: ``(default: X)`` is added only where the help
    text does not state its default already, and never for an unset (None), off (False)
    or empty default."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        default = action.default
        if ("default" in text.lower() or default is None or default is False or default == []
                or default is argparse.SUPPRESS or not (action.option_strings or action.nargs in ("?", "*"))):
            return text
        return text + " (default: %(default)s)"


class ArgumentParser(argparse.ArgumentParser):
    """``argparse.ArgumentParser`` for every CLI of the package: ``HelpFormatter`` by
    default, and a usage error (a bad type, an unknown choice, a missing argument) is one
    line on stderr, ``error: <what>; see <prog> --help``, with exit code 2, instead of the
    whole usage. Subcommand parsers (``add_subparsers``) are of this class too."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", HelpFormatter)
        super().__init__(*args, **kwargs)

    def error(self, message: str):  # type: ignore[override]
        text = " ".join(str(message).split())
        self.exit(EXIT_USAGE, f"error: {text}; see {self.prog} --help\n")


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
                   help="config of a legacy TransformerLens state dict, as TransformerLens wrote it (n_layers, "
                        "d_model, d_head or n_heads, n_ctx, d_vocab; TransformerLens's defaults for the rest, e.g. "
                        "d_mlp = 4 d_model; training keys such as optimizer or batch_size ignored)")
    g.add_argument("--hf", action="store_true", help="read model folders as Hugging Face models (config.json + "
                   "model.safetensors or pytorch_model.bin), never from a hub")
    g.add_argument("--vocab", type=Path, default=None, metavar="FILE.json",
                   help="JSON object world token -> model token id, when the model numbers tokens its own way")
    add_limit_args(p)


class _SetLimit(argparse.Action):
    """Stores the value and sets it in ``limits`` at once (run_main restores the defaults)."""

    def __call__(self, parser, namespace, values, option_string=None):
        setattr(namespace, self.dest, values)
        limits.set_limits(**{self.dest: values})


def _positive(cast: Callable[[float], Any]) -> Callable[[str], Any]:
    """An argparse type: a finite number > 0 (``1e9`` is fine for a count), then ``cast``."""

    def parse(text: str) -> Any:
        try:
            v = float(text)
        except ValueError:
            v = float("nan")
        if not (0 < v < float("inf")) or (cast is int and v != int(v)):
            raise argparse.ArgumentTypeError(f"expected a positive {'integer' if cast is int else 'number'}, got {text!r}")
        return cast(v)

    return parse


def add_limit_args(p: argparse.ArgumentParser) -> None:
    """``--max-params`` and ``--max-memory`` (``nextlat_probe.limits``)."""
    g = p.add_argument_group("limits (checked before anything is allocated)")
    g.add_argument("--max-params", dest="max_params", type=_positive(int), action=_SetLimit, default=None,
                   metavar="N", help=f"largest model to build, in parameters (default {limits.DEFAULT_MAX_PARAMETERS:,})")
    g.add_argument("--max-memory", dest="max_memory", type=_positive(float), action=_SetLimit, default=None,
                   metavar="GIB", help="memory a command may plan to use, in GiB (default: what this machine, or "
                                       "the CUDA device, has)")


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


def add_world_args(p: argparse.ArgumentParser) -> None:
    """The world flags of ``train`` and ``data write``: shorthands for keys of the ``--world``
    spec (``world_spec`` reads them)."""
    g = p.add_argument_group("world options (shorthands for keys of the --world spec)")
    g.add_argument("--map-size", default=None, metavar="N|AxS",
                   help="taxi: synthetic map with N x N (or A x S) intersections")
    g.add_argument("--map", type=Path, default=None, help="taxi: edge-list JSON map, or 'manhattan' (the real Manhattan map shipped with the package)")
    g.add_argument("--walk", choices=("random", "shortest", "noisy"), default=None, help="taxi: sequence source")
    g.add_argument("--origin", choices=("visible", "hidden"), default=None, help="taxi: observation mode")
    g.add_argument("--noise", type=float, default=None,
                   help="taxi, --walk noisy: probability of a random (still feasible) turn at each intersection "
                        "(default 0.1)")
    g.add_argument("--min-len", type=int, default=None, help="taxi: shortest walk length")
    g.add_argument("--max-len", type=int, default=None, help="taxi: longest walk length")
    g.add_argument("--map-seed", type=int, default=None, help="taxi: seed of the synthetic map")
    g.add_argument("--holdout", type=float, default=None, metavar="FRACTION",
                   help="taxi: hold this fraction of origin/destination pairs out of training (any walk; scored "
                        "later with worldmodel --ood pairs=held_out)")
    g.add_argument("--holdout-seed", type=int, default=None, help="taxi: seed of the held-out pair split (default 0)")
    g.add_argument("--form", choices=("tagging", "interleaved"), default=None,
                   help="a5: tagging (inputs only, every output scored against the running product; the default) "
                        "or interleaved (g1 s1 g2 s2 ...)")
    g.add_argument("--degree", type=int, default=None, help="pathstar: arms of the star graph (default 2)")
    g.add_argument("--arm-length", type=int, default=None, help="pathstar: nodes per arm (default 4)")
    g.add_argument("--nodes", type=int, default=None, help="pathstar: node labels drawn per graph (default 50)")


#: world flags -> (their key in the --world spec, the world they apply to): shorthands, so
#: ``--world taxi --walk shortest`` is ``--world taxi:walk=shortest``
WORLD_FLAGS = {
    "map_size": ("map_size", "taxi"), "map": ("map", "taxi"), "walk": ("walk", "taxi"),
    "origin": ("origin", "taxi"), "min_len": ("min_len", "taxi"), "max_len": ("max_len", "taxi"),
    "map_seed": ("seed", "taxi"), "holdout": ("holdout", "taxi"), "holdout_seed": ("holdout_seed", "taxi"),
    "noise": ("noise", "taxi"),
    "form": ("form", "a5"), "degree": ("degree", "pathstar"), "arm_length": ("length", "pathstar"),
    "nodes": ("nodes", "pathstar"),
}


def world_flag_value(args: argparse.Namespace, dest: str):
    """A world flag's value as the spec would hold it (``--map-size 6`` is ``map_size=6``)."""
    from .worlds.registry import spec_value

    value = getattr(args, dest)
    if dest == "map":
        return str(value)
    return spec_value(value) if isinstance(value, str) and dest == "map_size" else value


def world_spec(args: argparse.Namespace, worlds: tuple[str, ...]) -> tuple[str, dict]:
    """(world name, world options) of ``--world SPEC`` and the world flags of
    ``add_world_args``, refused in one line when the world is not one of ``worlds``, a flag
    belongs to another world or disagrees with a key of the spec."""
    from .worlds import WorldError, parse_spec
    from .worlds.registry import check_options
    from .worlds.streetmap import parse_map_size

    name, opts = parse_spec(args.world)
    if name not in worlds:
        raise UsageError(f"--world {args.world!r}: unknown world {name!r}; choose one of {', '.join(worlds)}")
    for dest, (key, world) in WORLD_FLAGS.items():
        if getattr(args, dest) is None:
            continue
        if name != world:
            raise UsageError(f"{_flag(dest)} applies only to --world {world}")
        value = world_flag_value(args, dest)
        if key in opts and opts[key] != value:
            raise UsageError(f"{_flag(dest)} {value} disagrees with --world {args.world!r} ({key}={opts[key]!r})")
        opts[key] = value
    if "map_size" in opts:
        try:
            parse_map_size(opts["map_size"])
        except WorldError:
            where = "--map-size" if args.map_size is not None else f"--world {args.world!r}: map_size"
            raise UsageError(f"{where} {opts['map_size']!r}: expected N or AxS, e.g. 6 or 8x12") from None
    try:
        check_options(name, opts)
    except WorldError as exc:
        raise UsageError(f"--world {args.world!r}: {exc}") from None
    return name, opts


def _flag(dest: str) -> str:
    return "--" + dest.replace("_", "-")


# --------------------------------------------------------------------------------------
# checks that give one line instead of a traceback
# --------------------------------------------------------------------------------------
def check_positive(**values: int | float | None) -> None:
    """``check_positive(n_seqs=args.n_seqs)`` -> UsageError naming the flag when not > 0."""
    for name, v in values.items():
        if v is not None and not v > 0:
            raise UsageError(f"--{name.replace('_', '-')} must be positive, got {v}")


def check_output_path(path: Path | str | None, flag: str = "--plot") -> None:
    """An output file must be a regular file (or not exist yet) in an existing, writable
    folder: checked before any work starts, so a failed command leaves nothing behind and
    a device such as /dev/full is never replaced by a page. A name the system refuses
    (too long) is one line naming the flag."""
    if path is None:
        return
    path = Path(path)
    try:
        if path.is_dir():
            raise UsageError(f"{flag} {path}: is a directory; give a file name such as {path / 'page.html'}")
        if path.exists() and not path.is_file():
            raise UsageError(f"{flag} {path}: is not a regular file (a device, pipe or socket); give a file name")
        folder = path.parent
        if not folder.exists():
            raise UsageError(f"{flag} {path}: folder {folder} does not exist")
        if not folder.is_dir():
            raise UsageError(f"{flag} {path}: {folder} is a file, not a folder")
        if not os.access(folder, os.W_OK):
            raise UsageError(f"{flag} {path}: folder {folder} is not writable")
    except OSError as exc:  # e.g. ENAMETOOLONG from stat
        raise UsageError(f"{flag} {path}: {exc.strerror or one_line(exc)}") from None


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
