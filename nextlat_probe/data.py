"""Token datasets on disk: write them from a world, import trip files, describe them.

    python -m nextlat_probe.data write --world taxi --map-size 4 --n-seqs 2000 --out data/taxi4
    python -m nextlat_probe.data write --world "mess3:x=0.05,a=0.85" --n-seqs 100000 --seq-len 16 --out data/mess3
    python -m nextlat_probe.data import-trips trips.txt --map manhattan --out data/manhattan-trips
    python -m nextlat_probe.data info data/taxi4
    python -m nextlat_probe.train --data data/taxi4 --preset tiny --steps 2000 --out runs/taxi4

A dataset folder holds ``train.bin`` and ``val.bin`` (token rows, memory-mapped when read)
and ``meta.json`` (the world, the vocabulary, how the rows were made); see
``nextlat_probe.training.dataset``. ``write`` draws from the world's own distribution (the
device sampler by default, ``--sampler host`` for the numpy reference), so the world's exact
loss floor applies. ``import-trips`` reads trips in the taxi-world study's text format
(``origin destination turn ... end``, one trip a line) and keeps only valid trips on the
map; every other line is counted and reported by kind, never trained on. Imported trips
have no exact floor.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from .cli import (
    WORLD_FLAGS,
    UsageError,
    add_world_args,
    check_positive,
    print_json,
    run_main,
    world_spec,
)

#: the named worlds ``write`` draws from (``train``'s); ``hmm:T=T.npy`` gives any other HMM
WORLDS = ("mess3", "rrxor", "z1r", "taxi", "a5", "pathstar")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m nextlat_probe.data",
                                description="Token datasets on disk (train.bin, val.bin, meta.json) for "
                                            "python -m nextlat_probe.train --data DIR.")
    sub = p.add_subparsers(dest="command", required=True, metavar="{write,import-trips,info}")

    w = sub.add_parser("write", help="draw sequences from a world into a dataset folder",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    w.add_argument("--world", required=True, metavar="SPEC",
                   help='world name and options: taxi, mess3, rrxor, z1r, a5, pathstar, "mess3:x=0.05,a=0.85", '
                        '"hmm:T=T.npy", "taxi:walk=noisy,noise=0.2" (the world options below apply too)')
    w.add_argument("--n-seqs", type=int, required=True, help="training sequences (train.bin)")
    w.add_argument("--n-val", type=int, default=256, help="validation sequences (val.bin)")
    w.add_argument("--seq-len", type=int, default=None, help="tokens per sequence (default: the world's)")
    w.add_argument("--seed", type=int, default=0, help="seed of the draws")
    w.add_argument("--sampler", choices=("device", "host"), default=None,
                   help="the world's torch sampler on --device, or its numpy sampler (the reference); default: "
                        "device where the world has a device sampler, else host")
    w.add_argument("--device", default="auto", help="device of the torch sampler: auto, cpu, cuda or cuda:N")
    w.add_argument("--out", type=Path, required=True, help="dataset folder (created; refused if it holds one)")
    w.add_argument("--overwrite", action="store_true", help="replace the dataset OUT holds")
    add_world_args(w)

    i = sub.add_parser("import-trips", help="read a file of taxi trips into a dataset folder",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter,
                       description="Read trips in the taxi-world study's text format (origin destination turn ... "
                                   "end, one trip a line). Lines that are not valid trips on the map are counted "
                                   "and reported by kind and left out.")
    i.add_argument("trips", type=Path, help="text file of trips")
    i.add_argument("--map", type=Path, required=True,
                   help="the trips' street map: edge-list JSON, or 'manhattan' (shipped with the package)")
    i.add_argument("--walk", choices=("random", "shortest", "noisy"), default="random",
                   help="the taxi world recorded with the data (the prompts analyses draw); the trips are kept as "
                        "they are")
    i.add_argument("--max-len", type=int, default=None,
                   help="most turns of a kept trip (default: the longest valid trip in the file)")
    i.add_argument("--n-val", type=int, default=None,
                   help="trips held out for validation, drawn at random (default: a tenth, at most 256)")
    i.add_argument("--seed", type=int, default=0, help="seed of the train / validation split")
    i.add_argument("--out", type=Path, required=True, help="dataset folder (created; refused if it holds one)")
    i.add_argument("--overwrite", action="store_true", help="replace the dataset OUT holds")
    i.add_argument("--json", action="store_true", help="print the counts as one JSON object")

    n = sub.add_parser("info", help="describe a dataset folder")
    n.add_argument("dir", type=Path, help="dataset folder")
    n.add_argument("--json", action="store_true", help="print meta.json's summary as one JSON object")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "write":
        return _write(args)
    if args.command == "import-trips":
        return _import(args)
    return _info(args)


def _check_out(out: Path) -> None:
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {out}: exists and is not a folder")


def _write(args: argparse.Namespace) -> int:
    check_positive(n_seqs=args.n_seqs, n_val=args.n_val)
    _check_out(args.out)
    from .models.transformer import resolve_device
    from .sources import world_from_text
    from .training.dataset import drawn_rows, write_dataset
    from .training.trainer import default_seq_len
    from .worlds import make_world, parse_spec

    device = resolve_device(args.device)
    if parse_spec(args.world)[0] == "hmm":  # T (and initial) from .npy files: no world flag applies
        flags = [d for d in WORLD_FLAGS if getattr(args, d) is not None]
        if flags:
            raise UsageError(f"--{flags[0].replace('_', '-')} does not apply to --world hmm")
        world = world_from_text(args.world)
    else:
        name, options = world_spec(args, WORLDS)
        world = make_world(name, **options)
    seq_len = args.seq_len or default_seq_len(world)
    if seq_len < 2:
        raise UsageError(f"--seq-len must be at least 2, got {seq_len}")
    if args.sampler is None:
        from .training import samplers

        args.sampler = "device" if samplers.supports(world) else "host"
    made = {"command": "write", "world": args.world, "n_seqs": args.n_seqs, "n_val": args.n_val, "seed": args.seed,
            "sampler": args.sampler, "device": device.type if args.sampler == "device" else "cpu"}
    splits = {split: drawn_rows(world, n, seq_len, args.seed, split, args.sampler, device)
              for split, n in (("train", args.n_seqs), ("val", args.n_val))}
    ds = write_dataset(args.out, world, seq_len, splits, source="world", made=made, overwrite=args.overwrite)
    how = f"{args.sampler} sampler" + (f" on {device.type}" if args.sampler == "device" else "")
    print(f"wrote {ds.path}: {ds.train.shape[0]} training + {ds.val.shape[0]} validation sequences of {seq_len} "
          f"tokens ({world.name}, {how}, seed {args.seed})")
    return 0


def _import(args: argparse.Namespace) -> int:
    if args.n_val is not None and args.n_val < 1:
        raise UsageError(f"--n-val must be positive, got {args.n_val}")
    _check_out(args.out)
    import numpy as np

    from .training.dataset import LEFT_OUT, import_trips, write_dataset
    from .worlds.streetmap import StreetMap, resolve_map_path

    if not resolve_map_path(args.map).is_file():
        raise UsageError(f"--map {args.map}: no such file (give an edge-list JSON map, or 'manhattan')")
    street_map = StreetMap.from_json(args.map)
    got = import_trips(args.trips, street_map, walk=args.walk, max_len=args.max_len)
    kept = got.counts["kept"]
    n_val = args.n_val if args.n_val is not None else max(1, min(256, kept // 10))
    if kept < n_val + 1:
        raise UsageError(f"{args.trips}: {kept} valid trip(s), too few for {n_val} validation trip(s) and at least "
                         "one training trip")
    order = np.random.default_rng(int(args.seed)).permutation(kept)
    val, train = got.tokens[order[:n_val]], got.tokens[order[n_val:]]
    made = {"command": "import-trips", "file": str(args.trips.resolve()), "map": street_map.name, "walk": args.walk,
            "max_len": got.world.max_len, "seed": args.seed, "lines": got.lines, "counts": got.counts,
            "left_out_lines": got.examples}
    ds = write_dataset(args.out, got.world, got.world.default_length, {"train": [train], "val": [val]},
                       source="imported", made=made, overwrite=args.overwrite)
    if args.json:
        print_json({"dataset": str(ds.path), "lines": got.lines, **got.counts, "n_train": len(train), "n_val": n_val,
                    "left_out_lines": got.examples})
        return 0
    print(f"read {got.lines} trip line(s) from {args.trips} (map {street_map.name}: {street_map.n_nodes} intersections)")
    print(f"  kept        {kept}")
    for kind, what in LEFT_OUT.items():
        if got.counts[kind]:
            lines = ", ".join(map(str, got.examples[kind]))
            more = ", ..." if got.counts[kind] > len(got.examples[kind]) else ""
            print(f"  {kind.replace('_', ' '):11s} {got.counts[kind]}  ({what}; line {lines}{more})")
    print(f"wrote {ds.path}: {len(train)} training + {n_val} validation trips of at most {got.world.max_len} turns "
          f"({got.world.default_length} tokens a row); no exact loss floor (imported trips)")
    return 0


def _info(args: argparse.Namespace) -> int:
    from .training.dataset import open_dataset

    ds = open_dataset(args.dir)
    meta = ds.meta
    summary = {"dataset": str(ds.path), "world": ds.world.name, "source": ds.source, "vocab_size": meta["vocab_size"],
               "seq_len": ds.seq_len, "dtype": meta["dtype"], "n_train": int(ds.train.shape[0]),
               "n_val": int(ds.val.shape[0]), "exact_floor": ds.exact_floor, "fingerprint": ds.fingerprint,
               "made": meta.get("made", {})}
    if args.json:
        print_json(summary)
        return 0
    for key, value in summary.items():
        print(f"{key:12s} {value}")
    return 0


if __name__ == "__main__":
    run_main(main)
