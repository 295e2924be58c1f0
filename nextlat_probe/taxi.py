"""Taxi-world tools for the shell: check trips against a street map, sample trips, map info.

    python -m nextlat_probe.taxi check --map manhattan_streets.json trips.txt [--json]
    python -m nextlat_probe.taxi sample --map manhattan_streets.json --n 10 [--walk random]
    python -m nextlat_probe.taxi sample --map-size 6 --n 10 --seed 0
    python -m nextlat_probe.taxi info --map-size 6 [--write map.json] [--json]
    python -m nextlat_probe.taxi crop --map manhattan --center auto --hops 11 --out sub.json

Trips are text, one per line: ``origin dest d_1 ... d_k end`` with the map's node ids and
turns N S E W NE NW SE SW. ``check`` counts trips whose every turn is a street (legal) and
that also end at their destination (valid); lines with unknown tokens count as neither.
Without ``--map`` the synthetic ``--map-size`` map drawn with ``--map-seed`` is used.

``crop`` writes a neighbourhood of a map (``StreetMap.crop``): the strongly connected part
within ``--hops`` undirected hops of ``--center`` (an original node id, or ``auto``:
``StreetMap.central_node``, the closeness centre of the largest strongly connected
component among its nodes with two streets in and two out), original node ids kept, and the
map's provenance and licence carried into the file (a crop of ``manhattan`` is ODbL data,
(c) OpenStreetMap contributors). It reports nodes, edges, the out-degree histogram and the
longest shortest path (the turns of the longest shortest-path trip). The same arguments
give the same file, byte for byte.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from .cli import ArgumentParser, UsageError, add_limit_args, check_output_path, print_json, run_main

#: ``sample`` draws and writes trips in blocks of this many (one random stream throughout),
#: so ``--n`` is bounded by the output, never by memory
SAMPLE_BLOCK = 10_000


def _add_map_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("map (one of)")
    g.add_argument("--map", type=Path, default=None, help="edge-list JSON map, or 'manhattan' (the real Manhattan map shipped with the package)")
    g.add_argument("--map-size", default=None,
                   help="synthetic Manhattan-like map with N x N (or AxS) intersections (default 6)")
    g.add_argument("--map-seed", type=int, default=0, help="seed of the synthetic map")
    add_limit_args(p)


def build_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(prog="python -m nextlat_probe.taxi",
                       description="Taxi-world tools: check or sample trips on a street map.")
    sub = p.add_subparsers(dest="command", required=True, metavar="{check,sample,info,crop}")

    c = sub.add_parser("check", help="count legal and valid trips in a text file",
                       description="Count trips (one per line: origin dest turns... end) whose turns "
                       "are all streets of the map (legal) and that end at their destination (valid).")
    c.add_argument("sequences", type=Path, help="text file of trips")
    _add_map_options(c)
    c.add_argument("--json", action="store_true", help="print one JSON object {n, legal, valid}")

    s = sub.add_parser("sample", help="write sampled trips in the text format to stdout (streamed: any --n)")
    _add_map_options(s)
    s.add_argument("--n", type=int, default=10, help="number of trips")
    s.add_argument("--walk", choices=("random", "shortest", "noisy"), default="random", help="trip source")
    s.add_argument("--min-len", type=int, default=None, help="random walks: fewest turns (default 4)")
    s.add_argument("--max-len", type=int, default=None,
                   help="most turns (random default 40; shortest/noisy default from the map's diameter)")
    s.add_argument("--noise", type=float, default=None, help="noisy: probability of a random turn (default 0.1)")
    s.add_argument("--seed", type=int, default=0, help="seed of the trips")

    k = sub.add_parser("crop", help="write the strongly connected neighbourhood of a node as a map file",
                       description="Write the strongly connected part of a map within --hops undirected hops of "
                       "--center (no dead ends; original node ids, provenance and licence kept) and report its "
                       "nodes, edges and out-degree histogram. The same arguments give the same file.")
    _add_map_options(k)
    k.add_argument("--center", required=True, metavar="NODE|auto",
                   help="the centre's original node id, or 'auto': the closeness centre of the largest strongly "
                        "connected component among its nodes with >= 2 streets in and out (ties: smallest id)")
    k.add_argument("--hops", type=int, required=True, metavar="R", help="radius in undirected hops (streets walked "
                   "either way); on the Manhattan map around auto: 9 ~ 140, 11 ~ 310, 12 ~ 480, 16 ~ 1,040 intersections")
    k.add_argument("--out", type=Path, default=None, help="write the crop here (edge-list JSON; gzip if it ends in .gz)")
    k.add_argument("--json", action="store_true", help="print one JSON object")

    i = sub.add_parser("info", help="print the map's size and connectivity")
    _add_map_options(i)
    i.add_argument("--write", type=Path, default=None, help="also write the map as edge-list JSON here")
    i.add_argument("--json", action="store_true", help="print one JSON object")
    return p


def _load_map(args: argparse.Namespace):
    from .worlds import WorldError
    from .worlds.streetmap import StreetMap, parse_map_size, synthetic_manhattan

    if args.map is not None and args.map_size is not None:
        raise UsageError("give either --map or --map-size, not both")
    if args.map is not None:
        return StreetMap.from_json(args.map)
    size = "6" if args.map_size is None else str(args.map_size)
    try:
        n_av, n_st = parse_map_size(size)
    except WorldError:
        raise UsageError(f"--map-size {size!r}: expected N or AxS, e.g. 6 or 8x12") from None
    return synthetic_manhattan(n_av, n_st, seed=args.map_seed)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if getattr(args, "write", None) is not None:
        check_output_path(args.write, "--write")
    if args.command == "crop" and args.out is not None:
        check_output_path(args.out, "--out")
    street_map = _load_map(args)
    if args.command == "crop":
        return _crop(args, street_map)
    if args.command == "check":
        from .worlds.taxi import check_sequences, parse_sequences

        if not args.sequences.exists():
            raise UsageError(f"{args.sequences}: no such file")
        res = check_sequences(street_map, parse_sequences(args.sequences, street_map))
        out = {"n": int(res["legal"].size), "legal": int(res["legal"].sum()), "valid": int(res["valid"].sum())}
        if args.json:
            print_json(out)
        else:
            n = max(out["n"], 1)
            print(f"n      {out['n']}")
            print(f"legal  {out['legal']} ({100 * out['legal'] / n:.1f}%)")
            print(f"valid  {out['valid']} ({100 * out['valid'] / n:.1f}%)")
        return 0
    if args.command == "sample":
        from .worlds.taxi import Taxi

        if args.n < 0:
            raise UsageError(f"--n must be >= 0, got {args.n}")
        import sys

        import numpy as np

        world = Taxi(street_map, walk=args.walk, min_len=args.min_len, max_len=args.max_len,
                     noise=args.noise)
        rng = np.random.default_rng(args.seed)
        for start in range(0, args.n, SAMPLE_BLOCK):
            lines = world.to_text(world.sample(min(SAMPLE_BLOCK, args.n - start), seed=rng).tokens)
            sys.stdout.write("\n".join(lines) + "\n")
        return 0
    # info
    n_comp, _ = street_map.strong_components()
    deg = street_map.out_degree
    info = {"name": street_map.name, "nodes": street_map.n_nodes, "edges": street_map.n_edges,
            "strongly_connected": n_comp == 1, "strong_components": n_comp,
            "largest_scc": int(street_map.largest_scc().size), "dead_ends": int((deg == 0).sum()),
            "max_out_degree": int(deg.max()), "coords": street_map.coords is not None}
    if args.write is not None:
        street_map.to_json(args.write)
    if args.json:
        print_json(info)
    else:
        for k, v in info.items():
            print(f"{k:20s} {v}")
    return 0


def _crop(args: argparse.Namespace, street_map) -> int:
    import numpy as np

    if args.center == "auto":
        center = street_map.central_node()
    else:
        try:
            center = street_map.id_to_index[int(args.center)]
        except (ValueError, KeyError):
            raise UsageError(f"--center {args.center!r}: not a node id of map {street_map.name!r} (or use 'auto')") from None
    sub = street_map.crop(center, args.hops)
    from scipy.sparse import csgraph

    hist = np.bincount(sub.out_degree, minlength=int(sub.out_degree.max()) + 1)
    info = {"name": sub.name, "center": street_map.node_ids[center], "center_rule": "auto" if args.center == "auto" else "given",
            "hops": args.hops, "nodes": sub.n_nodes, "edges": sub.n_edges, "strongly_connected": sub.is_strongly_connected(),
            "out_degree_histogram": {str(d): int(c) for d, c in enumerate(hist) if c},
            "longest_shortest_path": int(csgraph.shortest_path(sub.adjacency(), unweighted=True).max()),
            "licence": sub.metadata.get("licence"), "out": None if args.out is None else str(args.out)}
    if args.out is not None:
        from .checkpoint import atomic_write_bytes

        atomic_write_bytes(sub.to_bytes(metadata=True, compress=str(args.out).endswith(".gz")), args.out)
    if args.json:
        print_json(info)
        return 0
    print(f"crop of {street_map.name!r} around node {info['center']} ({info['center_rule']}), {args.hops} hops")
    print(f"nodes                {sub.n_nodes}")
    print(f"edges                {sub.n_edges}")
    print("out-degree histogram " + ", ".join(f"{d}: {c}" for d, c in info["out_degree_histogram"].items()))
    print(f"longest shortest path {info['longest_shortest_path']} turns")
    if info["licence"]:
        print(f"licence              {info['licence']}; {sub.metadata.get('attribution', '')}")
    if args.out is not None:
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    run_main(main)
