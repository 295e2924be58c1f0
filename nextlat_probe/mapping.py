"""Rebuild the street map from a taxi model or from a file of trips.

    python -m nextlat_probe.mapping CKPT [--protocol vafa2024|lenient] [--plot map.html] [--json]
    python -m nextlat_probe.mapping --map MAP.json --trajectories FILE.txt [--plot map.html] [--json]

With a checkpoint: trips sampled from the model are replayed on the true map (edges
recovered / missed / invented, trips explained) and the mean hidden state of every
intersection is embedded in 2-D (cross-fitted linear probe to (x, y) and MDS aligned by
Procrustes). With ``--map`` and ``--trajectories``: the behavioural reconstruction of any
file of trips (one per line, ``origin dest d_1 ... d_k end`` with the map's node ids, as
written by ``python -m nextlat_probe.taxi sample``); this runs on the real Manhattan map
without torch. ``--plot`` writes an offline plotly page of the true map and the
reconstructions. ``--protocol vafa2024`` (default) replays trips by Vafa et al.'s rules
(at most ``--max-degree`` 4 out-edges in use per node, repair of unfollowable turns, failed
trips counted, trips without turns dropped); ``--protocol lenient`` is the earlier rule
(no cap, unexplained trips left out). Python: ``nextlat_probe.compare.run_mapping`` / ``map_from_trips``.
"""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from .cli import (
    ArgumentParser,
    UsageError,
    add_layers_arg,
    add_output_args,
    check_output_path,
    check_positive,
    finish,
    load_cli_models,
    progress_enabled,
    resolve_device_arg,
    run_main,
)


def build_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(
        prog="python -m nextlat_probe.mapping",
        description="Rebuild the street map from a taxi checkpoint (behaviour and hidden states) "
        "or from a file of trips (--map and --trajectories).")
    p.add_argument("ckpt", nargs="?", metavar="CKPT", help="taxi checkpoint (ckpt.pt) or run folder")
    p.add_argument("--map", type=Path, default=None,
                   help="edge-list JSON street map, or 'manhattan' (shipped with the package): the map of "
                   "--trajectories, or of --world taxi for a foreign CKPT")
    p.add_argument("--trajectories", type=Path, default=None,
                   help="text file of trips, one per line: origin dest turns... end")
    p.add_argument("--max-distance", type=float, default=None,
                   help="how far an invented edge may reach: map units with coordinates (default twice the "
                   "median edge length), else undirected hops (default 2)")
    p.add_argument("--protocol", choices=("vafa2024", "lenient"), default="vafa2024",
                   help="reconstruction rules from behaviour: vafa2024 (Vafa et al. 2024, default) or lenient")
    p.add_argument("--max-degree", type=int, default=4,
                   help="vafa2024: most out-edges in use per node, true and new (default 4)")
    p.add_argument("--n-trips", type=int, default=1000, help="checkpoint: trips sampled from the model")
    p.add_argument("--n-seqs", type=int, default=512, help="checkpoint: true trips for the hidden states")
    add_layers_arg(p, "last")
    p.add_argument("--layer", dest="layers", help=argparse.SUPPRESS)  # the older spelling
    p.add_argument("--epsilon", type=float, default=0.01, help="checkpoint: sampling cutoff (default 0.01)")
    p.add_argument("--seed", type=int, default=0, help="seed of prompts, samples and embeddings")
    p.add_argument("--list-edges", action="store_true", help="--json: also list recovered edges")
    g = p.add_argument_group("models not trained by nextlat_probe")
    g.add_argument("--world", default=None, metavar="SPEC", help="the model's world: taxi (with --map FILE.json)")
    g.add_argument("--tl-config", type=Path, default=None, metavar="CONFIG.json",
                   help="config of a legacy TransformerLens state dict")
    g.add_argument("--hf", action="store_true", help="read CKPT as a Hugging Face GPT-2 folder")
    g.add_argument("--vocab", type=Path, default=None, metavar="FILE.json",
                   help="JSON object world token -> model token id")
    add_output_args(p)
    p.add_argument("--out", dest="plot", type=Path, help=argparse.SUPPRESS)  # the older spelling of --plot
    return p


def _pct(r: dict[str, Any]) -> str:
    if not r["n"]:
        return "n/a"
    return f"{100 * r['value']:.1f}% [{100 * r['low']:.1f}, {100 * r['high']:.1f}] ({r['count']}/{r['n']})"


def summary(records: list[dict[str, Any]], street_map: Any) -> str:
    """Plain-text report of the reconstruction records of one model or trips file."""
    lines = []
    for r in records:
        m, p = r["metrics"], r["params"]
        if r["variant"] == "behaviour":
            unit = "hops" if p["distance"] == "hops" else "map units"
            prot = r.get("protocol") or {}
            rules = prot.get("name", "lenient")
            if rules == "vafa2024":
                rules += f": at most {prot.get('max_degree')} out-edges in use per node"
            lines += [f"reconstruction from behaviour (map {street_map.name}: {street_map.n_nodes} intersections, "
                      f"{street_map.n_edges} edges; protocol {rules})",
                      f"  trips            {m['n_trips']} ({m['n_malformed']} malformed, {m['n_true_valid']} valid on "
                      "the true map)",
                      f"  explained        {_pct(m['explained'])}",
                      f"  outcome          {m.get('n_followed', 0)} followed as they are, {m.get('n_repaired', 0)} "
                      f"repaired, {m.get('n_failed', 0)} failed, {m.get('n_ill_formed', m['n_malformed'])} ill-formed",
                      f"  edges recovered  {m['n_recovered']}  (recall {_pct(m['edge_recall'])})",
                      f"  edges invented   {m['n_invented']}  (edge precision {_pct(m['edge_precision'])})",
                      f"  edges missed     {m['n_missed']}",
                      f"  new edges reach  <= {p['max_distance']:g} {unit}"]
        else:
            if not any(x.startswith("reconstruction from hidden") for x in lines):
                lines.append(f"reconstruction from hidden states (layer {r['layer']}, {m['n_nodes_seen']} of "
                             f"{street_map.n_nodes} intersections seen, reference: {m['reference']})")
            label = "probe (cross-fitted)" if r["variant"] == "probe" else "MDS + Procrustes"
            r2 = "" if m["r2"] is None else f"R^2 {m['r2']:.3f}  "
            lines.append(f"  {label:21s} {r2}disparity {m['disparity']:.4f}")
            lines.append(f"  {'':21s} nearest neighbour is a map neighbour {_pct(m['nn_map_neighbour'])}")
            lines.append(f"  {'':21s} nearest neighbour is a true nearest  {_pct(m['nn_true_nearest'])}")
    notes = {r["metrics"].get("note") for r in records if r["metrics"].get("note")}
    lines += [f"  note: {n}" for n in sorted(notes)]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.ckpt is not None and args.trajectories is not None:
        raise UsageError("give either CKPT or --map with --trajectories, not both")
    if args.ckpt is not None and args.map is not None and args.world is None:
        raise UsageError("--map with a checkpoint is the map of --world taxi (a model not trained by nextlat_probe)")
    if args.ckpt is None and (args.map is None or args.trajectories is None):
        raise UsageError("give a checkpoint, or both --map MAP.json and --trajectories FILE.txt")
    check_positive(max_distance=args.max_distance, n_trips=args.n_trips, n_seqs=args.n_seqs,
                   max_degree=args.max_degree)
    if not 0 < args.epsilon < 1:
        raise UsageError(f"--epsilon must lie in (0, 1), got {args.epsilon}")
    check_output_path(args.plot)
    if args.ckpt is None:
        from .compare.mapping import map_from_trips
        from .worlds.streetmap import StreetMap

        street_map = StreetMap.from_json(args.map)
        records = [map_from_trips(street_map, args.trajectories, max_distance=args.max_distance,
                                  list_edges=args.list_edges, protocol=args.protocol, max_degree=args.max_degree)]
    else:
        device = resolve_device_arg(args.device)
        from .compare import run_mapping

        args.ckpts, args.world_map = [args.ckpt], args.map
        models = load_cli_models(args, device)
        records = run_mapping(models, n_trips=args.n_trips, n_seqs=args.n_seqs, layers=args.layers,
                              epsilon=args.epsilon, max_distance=args.max_distance, protocol=args.protocol,
                              max_degree=args.max_degree, list_edges=args.list_edges,
                              seed=args.seed, progress=progress_enabled(args))
        street_map = models[0].world.map
    if args.plot is not None:
        from .plots.interactive import map_figure, write_html

        write_html(map_figure(street_map, records), args.plot, title=f"Map reconstruction: {street_map.name}")
    return finish(args, records, lambda: summary(records, street_map))


if __name__ == "__main__":
    run_main(main)
