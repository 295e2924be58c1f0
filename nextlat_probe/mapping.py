"""Rebuild the street map from a taxi model or from a file of trips.

    python -m nextlat_probe.mapping CKPT [--out map.html] [--json]
    python -m nextlat_probe.mapping --map MAP.json --trajectories FILE.txt [--out map.html] [--json]

With a checkpoint: trips sampled from the model are replayed on the true map (edges
recovered / missed / invented, trips explained) and the mean hidden state of every
intersection is embedded in 2-D (cross-fitted linear probe to (x, y) and MDS aligned by
Procrustes). With ``--map`` and ``--trajectories``: the behavioural reconstruction of any
file of trips (one per line, ``origin dest d_1 ... d_k end`` with the map's node ids, as
written by ``python -m nextlat_probe.taxi sample``); this runs on the real Manhattan map
without torch. ``--out`` writes an offline plotly page of the reconstruction drawn over
the true map. Definitions: ``nextlat_probe.analysis.mapping``.
"""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from .cli import UsageError, print_json, run_main


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m nextlat_probe.mapping",
        description="Rebuild the street map from a taxi checkpoint (behaviour and hidden states) "
        "or from a file of trips (--map and --trajectories).")
    p.add_argument("ckpt", nargs="?", metavar="CKPT", help="taxi checkpoint (ckpt.pt) or run folder")
    p.add_argument("--map", type=Path, default=None, help="edge-list JSON street map (with --trajectories)")
    p.add_argument("--trajectories", type=Path, default=None,
                   help="text file of trips, one per line: origin dest turns... end")
    p.add_argument("--out", type=Path, default=None, help="write an offline plotly HTML page here")
    p.add_argument("--max-distance", type=float, default=None,
                   help="how far an invented edge may reach: map units with coordinates (default twice the "
                   "median edge length), else undirected hops (default 2)")
    p.add_argument("--n-trips", type=int, default=1000, help="checkpoint: trips sampled from the model")
    p.add_argument("--n-seqs", type=int, default=512, help="checkpoint: true trips for the hidden states")
    p.add_argument("--layer", default="last", help="checkpoint: last, final, embed or a block index")
    p.add_argument("--epsilon", type=float, default=0.01, help="checkpoint: sampling cutoff (default 0.01)")
    p.add_argument("--seed", type=int, default=0, help="seed of prompts, samples and embeddings")
    p.add_argument("--device", default="cpu", help="cpu, cuda or auto")
    p.add_argument("--list-edges", action="store_true", help="--json: also list recovered and missed edges")
    p.add_argument("--json", action="store_true", help="print one JSON document and nothing else on stdout")
    return p


def _pct(rate) -> str:
    if not rate.n:
        return "n/a"
    lo, hi = rate.ci
    return f"{100 * rate.rate:.1f}% [{100 * lo:.1f}, {100 * hi:.1f}] ({rate.count}/{rate.n})"


def summary(recon, rep=None) -> str:
    """Plain-text report of the reconstruction(s)."""
    m = recon.street_map
    unit = "hops" if recon.distance == "hops" else "map units"
    lines = [f"reconstruction from behaviour (map {m.name}: {m.n_nodes} intersections, {m.n_edges} edges)",
             f"  trips            {recon.n_trips} ({recon.n_malformed} malformed, "
             f"{recon.n_true_valid} valid on the true map)",
             f"  explained        {_pct(recon.explained)}",
             f"  edges recovered  {len(recon.recovered)}  (recall {_pct(recon.recall)})",
             f"  edges invented   {len(recon.invented)}  (edge precision {_pct(recon.precision)})",
             f"  edges missed     {len(recon.missed)}",
             f"  new edges reach  <= {recon.max_distance:g} {unit}"]
    if rep is not None:
        lines.append(f"reconstruction from hidden states (layer {rep.layer}, {rep.n_nodes_seen} of "
                     f"{rep.street_map.n_nodes} intersections seen, reference: {rep.reference})")
        for emb, label in ((rep.probe, "probe (cross-fitted)"), (rep.mds, "MDS + Procrustes")):
            if emb is None:
                continue
            r2 = "" if emb.r2 is None else f"R^2 {emb.r2:.3f}  "
            lines.append(f"  {label:21s} {r2}disparity {emb.disparity:.4f}")
            lines.append(f"  {'':21s} nearest neighbour is a map neighbour {_pct(emb.nn_map_neighbour)}")
            lines.append(f"  {'':21s} nearest neighbour is a true nearest  {_pct(emb.nn_true_nearest)}")
        if rep.note:
            lines.append(f"  note: {rep.note}")
    return "\n".join(lines)


def _write_figure(path: Path, true_map, panels: list[dict[str, Any]]) -> None:
    from .plots.interactive import map_figure, write_html

    write_html(map_figure(true_map, panels), path, title=f"Map reconstruction: {true_map.name}")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.ckpt is not None and (args.map is not None or args.trajectories is not None):
        raise UsageError("give either CKPT or --map with --trajectories, not both")
    if args.ckpt is None and (args.map is None or args.trajectories is None):
        raise UsageError("give a checkpoint, or both --map MAP.json and --trajectories FILE.txt")
    if args.max_distance is not None and not args.max_distance > 0:
        raise UsageError(f"--max-distance must be positive, got {args.max_distance}")
    from .analysis.mapping import panels_for, reconstruct_map

    rep = None
    if args.ckpt is None:
        from .worlds.streetmap import StreetMap
        from .worlds.taxi import parse_sequences

        street_map = StreetMap.from_json(args.map)
        if not args.trajectories.is_file():
            raise UsageError(f"{args.trajectories}: no such file")
        trips = parse_sequences(args.trajectories, street_map)
        recon = reconstruct_map(street_map, trips, max_distance=args.max_distance)
        if recon.n_trips == recon.n_malformed:
            raise UsageError(f"{args.trajectories}: none of its {recon.n_trips} lines is a trip on map "
                             f"{street_map.name!r} (origin dest turns... end, with the map's node ids)")
    else:
        if args.n_trips < 1 or args.n_seqs < 1:
            raise UsageError("--n-trips and --n-seqs must be positive")
        if not 0 < args.epsilon < 1:
            raise UsageError(f"--epsilon must lie in (0, 1), got {args.epsilon}")
        layer: int | str = args.layer
        if layer not in ("last", "final", "embed"):
            try:
                layer = int(layer)
            except ValueError:
                raise UsageError(f"--layer {args.layer!r}: use last, final, embed or a block index") from None
        from .analysis.common import ckpt_info
        from .analysis.mapping import map_from_checkpoint
        from .analysis.worldmodel import check_taxi_world
        from .checkpoint import load_checkpoint

        ck = load_checkpoint(args.ckpt, device=args.device)
        try:
            check_taxi_world(ck.world)
        except UsageError as exc:
            raise UsageError(f"{ck.path}: {exc}") from None
        if isinstance(layer, int) and not -1 <= layer < ck.model_config.n_layers:
            raise UsageError(f"--layer {layer} out of range for a {ck.model_config.n_layers}-layer model")
        recon, rep = map_from_checkpoint(ck, n_trips=args.n_trips, n_seqs=args.n_seqs, seed=args.seed, layer=layer,
                                         epsilon=args.epsilon, max_distance=args.max_distance)
    if args.out is not None:
        panels = panels_for(recon) + ([] if rep is None else panels_for(rep))
        _write_figure(args.out, recon.street_map, panels)
    if args.json:
        doc: dict[str, Any] = {"reconstruction": recon.to_dict(edges="all" if args.list_edges else "invented"),
                               "representation": None if rep is None else rep.to_dict()}
        if rep is not None:
            doc = {**ckpt_info(ck), **doc}
        if args.out is not None:
            doc["figure"] = str(args.out)
        print_json(doc)
    else:
        print(summary(recon, rep))
        if args.out is not None:
            print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    run_main(main)
