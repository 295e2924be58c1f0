"""The NextLat paper's taxi experiment (Table 1) on the real Manhattan street map.

    python analyses/manhattan.py                               # CPU: a neighbourhood (about 60 CPU-minutes)
    python analyses/manhattan.py --scale gpu --time-limit 55   # GPU: the whole map, in chunks; rerun until done
    python analyses/manhattan.py --smoke                       # a few steps on a 30-intersection crop

One command per scale. Each trains GPT, NextLat and MTP runs over several seeds (one
``nextlat_probe.sweeps`` grid: finished runs reused, interrupted ones resumed, every
checkpoint's evaluation cached beside it), then reports the paper's Table 1 metrics per
preset and objective with 95% Student t intervals over seeds, at equal steps (final
checkpoints) and at matched validation loss (per seed, every objective at its first kept
checkpoint at or below the lowest loss all of them reach), in distribution and out of it.

Scales (``SCALES``; every setting can be overridden on the command line):

- ``cpu``: the strongly connected neighbourhood of ``--hops 11`` undirected hops around
  the map's ``auto`` centre (``taxi crop``: 309 intersections, 573 directed street segments; 12 hops give
  483), shortest-path trips (up to 43 turns, the crop's longest shortest path), 10% of
  origin/destination pairs held out of training; tiny and mini presets, 3 seeds; out of
  distribution: the held-out pairs, and random walks of 4 to 43 turns between training
  pairs. Sized to about 60 CPU-minutes (2 workers, one torch thread each). ``--walk
  random`` trains on random walks (the trip source of the paper's Table 1) of 4 turns to
  the crop's longest shortest path instead; at this budget such models do not yet steer
  to their destination (``analyses/manhattan.md``).
- ``gpu``: the whole map (``--map manhattan``), shortest-path trips, 10% of pairs held
  out, the small preset; out of distribution: held-out pairs, random and noisy walks. Run
  it in chunks: ``--time-limit MINUTES`` stops cleanly (runs keep resumable checkpoints,
  evaluations are cached) with exit code 75, and the same command continues.
- ``--smoke``: the cpu recipe shrunk to a few steps on the 5-hop crop (30 intersections,
  20% of pairs held out), one seed; what the test suite runs.

Every number in the outputs carries its context: the world, the protocol (vafa2024 for the
world-model metrics and the map reconstruction, training_length for the effective rank),
the validation loss and gap to the exact floor, the steps and the seeds.

Outputs in ``--out`` (default ``runs/analyses/manhattan_{scale}``):
    map_r{R}.json              the neighbourhood (ODbL data, (c) OpenStreetMap contributors)
    manhattan_table.md / .csv  Table 1: per preset and objective, mean [95% t interval] over seeds,
                               at equal steps and at matched loss, in and out of distribution
    beats_{nextlat,mtp}[_matched].md   each objective minus GPT, paired by seed
    maps_{preset}.pdf/.png/.html       seed 0's rebuilt maps (true | recovered, missing, invented)
    training_{preset}.pdf/.png/.html   training curves with the exact floor (every seed)
    sweep/                     the runs, sweep.csv, records.jsonl, figures against compute
    cpu_time.jsonl             CPU seconds of every invocation (this process and its workers)
"""
from __future__ import annotations

import argparse
import json
import math
import resource
import sys
import time
from pathlib import Path

_STARTED = time.time()

#: the recipe of each scale (the command-line flags override them)
SCALES = {
    "cpu": dict(hops=11, walk="shortest", min_len=None, max_len=None, holdout=0.1, cells=("tiny:1500", "mini:500"),
                seeds=3, keep=2, n_pairs=50, n_trips=300, n_seqs=256, n_val=256, eval_every=100, batch_size=64,
                ood=("pairs=held_out", "walk=random,pairs=train"), workers=2, lr=1e-3),
    "gpu": dict(hops=None, walk="shortest", min_len=None, max_len=None, holdout=0.1, cells=("small:20000",),
                seeds=3, keep=4, n_pairs=200, n_trips=1000, n_seqs=256, n_val=512, eval_every=500, batch_size=64,
                ood=("pairs=held_out", "walk=random", "walk=noisy"), workers=1, lr=1e-3),
    "smoke": dict(hops=5, walk="shortest", min_len=None, max_len=None, holdout=0.2, cells=("tiny:12",), seeds=1,
                  keep=2, n_pairs=6, n_trips=12, n_seqs=24, n_val=16, eval_every=6, batch_size=8,
                  ood=("pairs=held_out", "walk=random,pairs=train"), workers=1, lr=1e-3),
}
OBJECTIVES = ("gpt", "nextlat", "mtp")
#: Table 1 columns: (sweep key, header, format); ``@ood:`` columns are added per setting
TABLE_METRICS = [("val_loss", "val loss", ".3f"), ("gap_to_floor", "gap to floor", ".3f"),
                 ("next_token", "next-token", ".3f"), ("trajectory_valid", "valid traj.", ".3f"),
                 ("compression", "compression", ".3f"), ("detour_random@0.75", "detour", ".3f"),
                 ("effective_rank", "eff. rank", ".1f"), ("edge_precision", "map precision", ".3f"),
                 ("edge_recall", "map recall", ".3f")]
OOD_METRICS = [("next_token", "next-token", ".3f"), ("trajectory_valid", "valid traj.", ".3f"),
               ("compression", "compression", ".3f"), ("detour_random@0.75", "detour", ".3f")]
#: the paper's Table 1 (NextLat, arXiv 2511.05963; real Manhattan map, random walks, d = 8)
PAPER = {"gpt": {"next_token": 1.0, "trajectory_valid": 0.970, "compression": 0.65, "effective_rank": 160.1,
                 "detour_random@0.75": 0.85},
         "mtp": {"next_token": 1.0, "trajectory_valid": 0.981, "compression": 0.64, "effective_rank": 57.7,
                 "detour_random@0.75": 0.95},
         "nextlat": {"next_token": 1.0, "trajectory_valid": 0.987, "compression": 0.71, "effective_rank": 52.7,
                     "detour_random@0.75": 0.95}}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="analyses/manhattan.py", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__.split("\n\n", 1)[1])
    p.add_argument("--scale", choices=("cpu", "gpu"), default="cpu", help="cpu: a neighbourhood; gpu: the whole map")
    p.add_argument("--smoke", action="store_true", help="a few steps on a 30-intersection crop, one seed (tests)")
    p.add_argument("--out", type=Path, default=None, help="output folder (default runs/analyses/manhattan_{scale})")
    g = p.add_argument_group("world (default: the scale's recipe)")
    g.add_argument("--hops", type=int, default=None, help="crop radius around the auto centre (cpu; 0 = whole map)")
    g.add_argument("--walk", choices=("random", "shortest", "noisy"), default=None, help="training trips")
    g.add_argument("--holdout", type=float, default=None, help="fraction of origin/destination pairs held out")
    g.add_argument("--ood", action="append", default=None, metavar="SETTING",
                   help="out-of-distribution settings (repeatable; default: the scale's)")
    r = p.add_argument_group("runs")
    r.add_argument("--cell", action="append", default=None, metavar="PRESET:STEPS",
                   help="preset and training length (repeatable; default: the scale's)")
    r.add_argument("--seeds", type=int, default=None)
    r.add_argument("--objectives", default=",".join(OBJECTIVES), help="comma list (gpt first: the baseline)")
    r.add_argument("--horizon", type=int, default=1, help="NextLat's roll-out depth and MTP's extra heads")
    r.add_argument("--keep", type=int, default=None, help="kept checkpoints per run (matched-loss comparison)")
    r.add_argument("--batch-size", type=int, default=None)
    r.add_argument("--lr", type=float, default=None)
    e = p.add_argument_group("evaluation")
    e.add_argument("--n-pairs", type=int, default=None, help="held-out trips of the world-model metrics")
    e.add_argument("--n-trips", type=int, default=None, help="sampled trips of the map reconstruction")
    e.add_argument("--n-seqs", type=int, default=None, help="sequences of the effective rank")
    x = p.add_argument_group("execution")
    x.add_argument("--workers", type=int, default=None, help="runs at once, each in its own process")
    x.add_argument("--device", default="auto")
    x.add_argument("--time-limit", type=float, default=None, metavar="MINUTES",
                   help="stop cleanly before this many minutes (exit 75); the same command continues")
    x.add_argument("--dry-run", action="store_true", help="print the grid and what is done, train nothing")
    x.add_argument("--no-figures", action="store_true")
    x.add_argument("--no-progress", action="store_true")
    return p


def recipe(args: argparse.Namespace) -> dict:
    """The scale's settings with the command line's overrides."""
    rec = dict(SCALES["smoke" if args.smoke else args.scale])
    for key in ("hops", "walk", "holdout", "seeds", "keep", "batch_size", "lr", "n_pairs", "n_trips", "n_seqs",
                "workers"):
        if getattr(args, key) is not None:
            rec[key] = getattr(args, key)
    if args.hops == 0:
        rec["hops"] = None
    if args.ood is not None:
        rec["ood"] = tuple(args.ood)
    if args.cell is not None:
        rec["cells"] = tuple(args.cell)
    if args.walk is not None and args.walk != SCALES["smoke" if args.smoke else args.scale]["walk"]:
        rec["min_len"] = 4 if args.walk == "random" else None
        rec["max_len"] = "diameter" if args.walk == "random" else None
        if args.ood is None:  # the scale's other walk type may be this one: score the other kind instead
            other = "shortest" if args.walk != "shortest" else "random,pairs=train"
            rec["ood"] = ("pairs=held_out", f"walk={other}")
    return rec


def prepare_map(rec: dict, out: Path):
    """(map argument for the world spec, StreetMap): the crop written to ``out`` (same bytes
    on every call), or the shipped map by name."""
    from nextlat_probe.checkpoint import atomic_write_bytes
    from nextlat_probe.worlds.streetmap import StreetMap

    full = StreetMap.from_json("manhattan")
    if rec["hops"] is None:
        return "manhattan", full
    sub = full.crop(full.central_node(), int(rec["hops"]))
    path = out / f"map_r{int(rec['hops'])}.json"
    data = sub.to_bytes(metadata=True)
    if not path.is_file() or path.read_bytes() != data:
        atomic_write_bytes(data, path)
    return str(path), sub


def world_spec(rec: dict, map_arg: str, street_map) -> str:
    """The sweep's world string; a split seed is picked (the first from 0) that leaves
    every origin a destination on both sides of the held-out split."""
    from nextlat_probe.cli import UsageError
    from nextlat_probe.worlds import WorldError
    from nextlat_probe.worlds.taxi import Taxi

    if any(c in map_arg for c in ",:="):
        raise UsageError(f"--out: the map path {map_arg!r} may not contain ',', ':' or '=' (it goes into a world spec)")
    opts = {"map": map_arg, "walk": rec["walk"]}
    if rec["walk"] == "random":
        opts["min_len"] = rec["min_len"]
        opts["max_len"] = (Taxi(street_map, walk="shortest").max_len if rec["max_len"] == "diameter"
                           else rec["max_len"])
    if rec["holdout"]:
        opts["holdout"] = rec["holdout"]
        kw = {k: v for k, v in opts.items() if k != "map"}
        for seed in range(100):
            try:
                Taxi(street_map, **kw, holdout_seed=seed)
                Taxi(street_map, **kw, holdout_seed=seed, pairs="held_out")
            except WorldError:
                continue
            if seed:
                opts["holdout_seed"] = seed
            break
        else:
            raise UsageError(f"--holdout {rec['holdout']}: no split seed 0..99 leaves every origin a destination on "
                             "both sides; use a larger map or another fraction")
    return "taxi:" + ",".join(f"{k}={v}" for k, v in opts.items() if v is not None)


def sweep_config(rec: dict, world: str, args: argparse.Namespace, out: Path):
    from nextlat_probe.sweeps import SweepConfig

    objectives = tuple(o.strip() for o in args.objectives.split(",") if o.strip())
    train = {"batch_size": rec["batch_size"], "lr": rec["lr"], "horizon": args.horizon, "n_val": rec["n_val"],
             "eval_every": rec["eval_every"]}
    return SweepConfig(world=world, objectives=objectives, cells=tuple(rec["cells"]), seeds=rec["seeds"],
                       out=str(out / "sweep"), keep=rec["keep"], workers=rec["workers"], device=args.device,
                       train_options=train, n_seqs=rec["n_seqs"], n_pairs=rec["n_pairs"], probe=False,
                       worldmodel=True, mapping=True, n_trips=rec["n_trips"], ood=tuple(rec["ood"]))


# --------------------------------------------------------------------------------------
# the table
# --------------------------------------------------------------------------------------
def table_keys(ood: tuple[str, ...]) -> list[tuple[str, str, str]]:
    return TABLE_METRICS + [(f"{k}@ood:{s}", f"{h} [{s}]", f) for s in ood for k, h, f in OOD_METRICS]


def summary_rows(rows: list[dict], keys: list[tuple[str, str, str]], at: str) -> list[dict]:
    """Per (preset, steps, objective): each metric's mean and 95% t interval over seeds, at
    each run's final checkpoint (``at="final"``) or at matched validation loss (per preset,
    steps and seed, every objective's first checkpoint at or below the lowest loss all of
    them reach; ``sweeps.matched_set``)."""
    from nextlat_probe.sweeps import final_rows, matched_set, paired_interval

    if at == "final":
        picked = final_rows(rows)
    else:
        runs: dict[str, list[dict]] = {}
        for r in rows:
            runs.setdefault(r["run"], []).append(r)
        groups: dict[tuple, list[str]] = {}
        for name, rs in runs.items():
            groups.setdefault((rs[0]["preset"], rs[0]["steps"], rs[0]["seed"]), []).append(name)
        picked = []
        for names in groups.values():
            hit = matched_set(*[runs[n] for n in names])
            picked += hit or []
    out: dict[tuple, dict] = {}
    for r in picked:
        key = (r["preset"], r["steps"], r["objective"])
        row = out.setdefault(key, {"preset": r["preset"], "steps": r["steps"], "objective": r["objective"],
                                   "at": at, "seeds": [], "step_used": [], "_vals": {}})
        row["seeds"].append(r["seed"])
        row["step_used"].append(r["step"])
        for k, _, _ in keys:
            v = r.get(k)
            if v is not None and math.isfinite(float(v)):
                row["_vals"].setdefault(k, []).append(float(v))
    result = []
    for row in out.values():
        vals = row.pop("_vals")
        row["n"] = len(row["seeds"])
        for k, _, _ in keys:
            mean, lo, hi = paired_interval(vals.get(k, []))
            row[k], row[f"{k}_low"], row[f"{k}_high"] = mean, lo, hi
        row["seeds"] = " ".join(str(s) for s in row["seeds"])
        row["step_used"] = " ".join(str(s) for s in row["step_used"])
        result.append(row)
    order = {o: i for i, o in enumerate(OBJECTIVES)}
    return sorted(result, key=lambda r: (str(r["preset"]), r["steps"], order.get(r["objective"], 9)))


def cell(row: dict, key: str, fmt: str) -> str:
    v, lo, hi = row.get(key), row.get(f"{key}_low"), row.get(f"{key}_high")
    if v is None or not math.isfinite(v):
        return "-"
    if lo is None or not math.isfinite(lo):
        return format(v, fmt)
    return f"{v:{fmt}} [{lo:{fmt}}, {hi:{fmt}}]"


def markdown_table(rows: list[dict], keys: list[tuple[str, str, str]]) -> str:
    head = ["preset", "steps", "objective", "seeds", "steps used"] + [h for _, h, _ in keys]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        lines.append("| " + " | ".join([str(r["preset"]), str(r["steps"]), r["objective"], str(r["n"]),
                                        r["step_used"]] + [cell(r, k, f) for k, _, f in keys]) + " |")
    return "\n".join(lines)


def paper_table() -> str:
    keys = [("next_token", ".0%"), ("trajectory_valid", ".1%"), ("compression", ".2f"),
            ("detour_random@0.75", ".0%"), ("effective_rank", ".1f")]
    lines = ["| objective | next-token | valid traj. | compression | detour | eff. rank |", "|---|---|---|---|---|---|"]
    for obj in ("gpt", "nextlat", "mtp"):
        lines.append(f"| {obj} | " + " | ".join(format(PAPER[obj][k], f) for k, f in keys) + " |")
    return "\n".join(lines)


# --------------------------------------------------------------------------------------
# figures
# --------------------------------------------------------------------------------------
def write_figures(cfg, records: list[dict], street_map, out: Path) -> list[Path]:
    """Per preset: seed 0's rebuilt maps beside the true map, and every run's training
    curves with the exact floor (PDF, PNG and offline HTML)."""
    import matplotlib

    matplotlib.use("Agg")
    from nextlat_probe.plots import paper as P
    from nextlat_probe.plots.interactive import map_figure, training_curves_figure, write_html
    from nextlat_probe.sweeps import grid

    paths: list[Path] = []
    specs = grid(cfg)
    for preset in dict.fromkeys(s.preset for s in specs):
        mine = [s for s in specs if s.preset == preset]
        final = {s.name: max(r["step"] for r in records if r["name"] == s.name) for s in mine}
        maps = [dict(r, name=f"{s.objective} (seed 0, step {r['step']})") for s in mine if s.seed == 0
                for r in records if r["name"] == s.name and r["analysis"] == "mapping"
                and r["step"] == final[s.name] and r["variant"] == "behaviour"]
        if maps:
            with P.paper_style():
                fig = P.map_plot(street_map, maps, cols=2)
                paths += P.save_figure(fig, out / f"maps_{preset}", formats=("pdf", "png"))
            paths.append(write_html(map_figure(street_map, maps, cols=2), out / f"maps_{preset}.html",
                                    title=f"Rebuilt maps, {preset}, seed 0"))
        logs = {s.name: s.path(cfg.out) / "metrics.jsonl" for s in mine if (s.path(cfg.out) / "metrics.jsonl").is_file()}
        if logs:
            objectives = {s.name: s.objective for s in mine}
            with P.paper_style():
                fig = P.training_curves_plot(logs, objectives)
                paths += P.save_figure(fig, out / f"training_{preset}", formats=("pdf", "png"))
            paths.append(write_html(training_curves_figure(logs, objectives), out / f"training_{preset}.html",
                                    title=f"Training curves, {preset}"))
    return paths


# --------------------------------------------------------------------------------------
def cpu_seconds() -> float:
    """CPU time of this process and of its finished worker processes."""
    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def log_cpu(out: Path, argv: list[str], done: bool) -> float:
    """Append this invocation's CPU and wall seconds to ``cpu_time.jsonl``; the total so far."""
    path = out / "cpu_time.jsonl"
    entry = {"argv": argv, "started": _STARTED, "cpu_seconds": round(cpu_seconds(), 1),
             "wall_seconds": round(time.time() - _STARTED, 1), "finished": done}
    with open(path, "a") as f:
        f.write(json.dumps(entry) + "\n")
    return sum(json.loads(line)["cpu_seconds"] for line in path.read_text().splitlines() if line.strip())


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from nextlat_probe.cli import UsageError
    from nextlat_probe.errors import EXIT_TIME_LIMIT, TimeLimitReached

    rec = recipe(args)
    scale = "smoke" if args.smoke else args.scale
    out = args.out or Path("runs/analyses") / f"manhattan_{scale}"
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {out}: exists and is not a folder")
    objectives = [o.strip() for o in args.objectives.split(",") if o.strip()]
    if not objectives or objectives[0] != "gpt" or any(o not in OBJECTIVES for o in objectives):
        raise UsageError(f"--objectives: a comma list of {', '.join(OBJECTIVES)} starting with gpt (the baseline), "
                         f"got {args.objectives!r}")
    for key in ("seeds", "keep", "n_pairs", "n_trips", "n_seqs", "workers", "batch_size"):
        if not (isinstance(rec[key], int) and rec[key] >= 1):
            raise UsageError(f"--{key.replace('_', '-')} must be a positive integer, got {rec[key]!r}")
    if not 0 <= rec["holdout"] < 1:
        raise UsageError(f"--holdout must lie in [0, 1), got {rec['holdout']}")
    if rec["hops"] is not None and rec["hops"] < 0:
        raise UsageError(f"--hops must be >= 0 (0: the whole map), got {rec['hops']}")
    if args.time_limit is not None and not (math.isfinite(args.time_limit) and args.time_limit > 0):
        raise UsageError(f"--time-limit must be a positive number of minutes, got {args.time_limit}")
    out.mkdir(parents=True, exist_ok=True)
    say = (lambda m: None) if args.no_progress else (lambda m: print(f"[manhattan] {m}", file=sys.stderr, flush=True))
    map_arg, street_map = prepare_map(rec, out)
    world = world_spec(rec, map_arg, street_map)
    cfg = sweep_config(rec, world, args, out)
    say(f"world {world} ({street_map.n_nodes} intersections, {street_map.n_edges} directed street segments); cells "
        f"{', '.join(cfg.cells)}; {cfg.seeds} seed(s); objectives {', '.join(cfg.objectives)}")
    if args.dry_run:
        from nextlat_probe.sweep import dry_run_text

        print(dry_run_text(cfg))
        return 0
    from nextlat_probe.cli import resolve_device_arg
    from nextlat_probe.sweeps import run_sweep

    resolve_device_arg(args.device)
    deadline = None if args.time_limit is None else _STARTED + 60.0 * args.time_limit
    try:
        records = run_sweep(cfg, progress=not args.no_progress, deadline=deadline)
    except TimeLimitReached as exc:
        total = log_cpu(out, sys.argv if argv is None else argv, done=False)
        print(f"stopped: {exc}. CPU time so far {total / 60:.1f} min (cpu_time.jsonl)")
        return EXIT_TIME_LIMIT
    report(cfg, rec, records, street_map, out, args, say)
    total = log_cpu(out, sys.argv if argv is None else argv, done=True)
    print(f"CPU time: this call {cpu_seconds() / 60:.1f} min, all calls for {out} {total / 60:.1f} min "
          f"(cpu_time.jsonl; this process and its worker processes)")
    return 0


def report(cfg, rec: dict, records: list[dict], street_map, out: Path, args, say) -> None:
    from nextlat_probe.plots.sweep import write_sweep_outputs
    from nextlat_probe.sweeps import beats_table, sweep_runs
    from nextlat_probe.tables import (
        beats_markdown,
        convergence_note,
        protocol_note,
        sweep_context_text,
        write_csv,
    )

    written = write_sweep_outputs(cfg, records, sweep_runs(cfg), Path(cfg.out), figures=not args.no_figures)
    rows = written["rows"]
    keys = table_keys(tuple(rec["ood"]))
    final, matched = summary_rows(rows, keys, "final"), summary_rows(rows, keys, "matched_loss")
    write_csv(final + matched, out / "manhattan_table.csv")
    beats = {}
    for obj in [o for o in cfg.objectives if o != "gpt"]:
        for at in ("final", "matched_loss"):
            b = beats_table(rows, challenger=obj, at=at)
            beats[(obj, at)] = b
            name = f"beats_{obj}" + ("_matched" if at == "matched_loss" else "")
            intro = sweep_context_text(cfg, records, at=at, challenger=obj)
            (out / f"{name}.md").write_text(beats_markdown(b, intro))
            write_csv(b, out / f"{name}.csv")
    context = (f"World `{cfg.world}` ({street_map.n_nodes} intersections, {street_map.n_edges} directed street segments), "
               f"{cfg.seeds} seed(s); cells {', '.join(cfg.cells)}, batch {rec['batch_size']}, lr {rec['lr']:g}, "
               f"horizon {args.horizon} (the paper: d = 8), checkpoints kept: {cfg.keep} per run. World-model metrics "
               f"on {cfg.n_pairs} trips (protocol vafa2024, random detours p = 0.75), map from {cfg.n_trips} sampled "
               f"trips (vafa2024), effective rank of the last block on {cfg.n_seqs} sequences (uncentred). "
               "Cells: mean [95% Student t interval] over seeds (no interval with one seed).")
    conv = convergence_note([{"name": f"{r['preset']} {r['objective']}", "gap_to_floor": r["gap_to_floor"]}
                             for r in final])
    text = "\n\n".join([
        f"# Table 1 on the real Manhattan map ({'neighbourhood' if rec['hops'] else 'whole map'})", context,
        "## Equal steps (final checkpoints)", markdown_table(final, keys),
        "## Matched validation loss (per preset and seed, every objective at its first kept checkpoint at or below "
        "the lowest loss all reach; `steps used` lists them)", markdown_table(matched, keys),
        "## The paper's Table 1 (whole map, random walks, d = 8)", paper_table(),
        protocol_note(records)] + ([conv] if conv else []))
    (out / "manhattan_table.md").write_text(text + "\n")
    paths = [] if args.no_figures else write_figures(cfg, records, street_map, out)
    print(text)
    for obj in [o for o in cfg.objectives if o != "gpt"]:
        b = [r for r in beats[(obj, "final")] if r["metric"] in ("trajectory_valid", "effective_rank", "compression")]
        for r in b:
            verdict = "tie" if r["better"] == "tie" else f"{r['better']} better"
            print(f"{obj} - gpt, {r['preset']} {r['steps']}, {r['metric']}: {r['diff_mean']:+.3f} {r['interval']} "
                  f"({verdict}; interval excludes 0: {r['clear']}){'; ' + r['flag'] if r['flag'] else ''}")
    say("wrote " + ", ".join(str(p) for p in [out / "manhattan_table.md", out / "manhattan_table.csv"] + paths))


if __name__ == "__main__":
    from nextlat_probe.cli import run_main

    run_main(main)
