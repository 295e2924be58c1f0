"""Decoding benchmark: key/value-cached greedy against full-forward greedy, and self-speculative
decoding against cached greedy, measured side by side in one run.

    python benchmarks/generation.py --quick                    # CPU, about a minute on 2 cores (fastest of 5)
    python benchmarks/generation.py --quick --clock cpu --threads 1   # a CPU shared with other jobs
    python benchmarks/generation.py                            # more prompts, fastest of 3 timings
    python benchmarks/generation.py --device cuda              # the same on a GPU
    python benchmarks/generation.py --ckpt runs/demo/nextlat-seed0/ckpt.pt --worldmodel

1. Cached vs full-forward greedy (``analysis.generation.greedy_decode``, regimes
   ``kv_cache`` and ``full_forward``) at lengths 43 and 128 (taxi 6x6 trips and
   Manhattan-length trips): the ``tiny`` preset with a context of 129 and random weights
   (timing does not depend on training), one-token prompts, exactly L tokens (no stop token),
   at batch 1 and batched; outputs compared token for token.
2. Speculative decoding (``fixed:k`` and ``adaptive``) against cached greedy on a trained
   NextLat taxi checkpoint (``--ckpt``, or a fresh tiny one trained here), at batch 1 and
   batched: wall-clock speedup, tokens per forward, positions computed per token and the
   draft acceptance rate beside it.
3. ``--worldmodel``: ``compare.run_worldmodel`` on the checkpoint (default taxi world, 200
   pairs, seed 0) in both regimes: wall-clock ratio and whether the records are identical.

``--clock cpu --threads 1`` times CPU seconds of this process instead of wall-clock seconds:
on a CPU shared with other jobs, wall-clock ratios measure the neighbours' load as much as
the code. Timings on CUDA are bracketed by ``torch.cuda.synchronize`` (inside ``greedy_decode`` /
``speculative_decode``, and around every timed call here); every timed configuration runs once
untimed first. The last line is the summary:
``kv_speedup_len128=X.XX spec_speedup_best=Y.YY identical=True`` where ``kv_speedup_len128``
is the smaller of the batch-1 and batched ratios at length 128, ``spec_speedup_best`` the best
policy's speedup over cached greedy at batch 1, and ``identical`` says every output equalled
greedy decoding's.
"""
from __future__ import annotations

import argparse
import os
import tempfile
import time
from functools import partial

import numpy as np

POLICIES = ("fixed:1", "fixed:2", "fixed:4", "fixed:8", "adaptive")
LENGTHS = (43, 128)


CLOCK = {"wall": "wall-clock seconds", "cpu": "CPU seconds of this process"}


def timed(fn, clock, **kw):
    """``fn(**kw)`` with ``.seconds`` set by ``clock``: ``wall`` (the decoder's own timing,
    device-synchronised) or ``cpu`` (process CPU time: robust to other jobs on a shared CPU)."""
    c0 = time.process_time()
    r = fn(**kw)
    if clock == "cpu":
        r.seconds = time.process_time() - c0
    return r


def paired(a, b, repeats, clock, **common):
    """(fastest of ``a(**common)``, fastest of ``b(**common)``) over ``repeats`` alternating
    runs after one untimed warm-up of each (results have ``.seconds``): load on a shared
    machine hits both sides alike."""
    a(**common), b(**common)
    best = [None, None]
    for _ in range(repeats):
        for i, fn in enumerate((a, b)):
            r = timed(fn, clock, **common)
            best[i] = r if best[i] is None or r.seconds < best[i].seconds else best[i]
    return best[0], best[1]


def same(a, b):
    return len(a) == len(b) and all(x.shape == y.shape and np.array_equal(x, y) for x, y in zip(a, b))


def greedy_section(device, batches, repeats, clock):
    """Rows (length, batch, full s, cached s, speedup, identical) of cached vs full greedy."""
    from nextlat_probe.analysis.generation import greedy_decode
    from nextlat_probe.models.config import ModelConfig
    from nextlat_probe.models.transformer import build_transformer

    cfg = ModelConfig.from_preset("tiny", n_ctx=max(LENGTHS) + 1, d_vocab=48)
    model = build_transformer(cfg, seed=0, device=device).eval()
    rows = []
    print(f"\n1. greedy decoding, tiny preset ({cfg.n_layers} layers, d_model {cfg.d_model}, n_ctx {cfg.n_ctx}, "
          f"vocab {cfg.d_vocab}; random weights), one-token prompts, exactly L new tokens, fastest of {repeats} "
          f"({CLOCK[clock]})")
    print(f"{'length':>6} {'batch':>5} {'full s':>8} {'cached s':>9} {'speedup':>8} {'positions full/cached':>22} "
          f"{'identical':>9}")
    for L in LENGTHS:
        for b in batches:
            prompts = np.random.default_rng(L + b).integers(0, cfg.d_vocab, (b, 1))
            full, cached = paired(partial(greedy_decode, regime="full_forward"), partial(greedy_decode, regime="kv_cache"),
                                  repeats, clock, model=model, prompts=prompts, max_new=L, batch_size=b)
            ok = same(full.tokens, cached.tokens) and all(len(t) == L for t in cached.tokens)
            ratio = full.seconds / cached.seconds
            rows.append((L, b, ratio, ok))
            print(f"{L:6d} {b:5d} {full.seconds:8.3f} {cached.seconds:9.3f} {ratio:7.2f}x "
                  f"{full.positions:>11d}/{cached.positions:<10d} {str(ok):>9}")
    return rows


def train_fresh(steps):
    from nextlat_probe.training.config import TrainConfig
    from nextlat_probe.training.trainer import train

    t0 = time.perf_counter()
    cfg = TrainConfig(world="taxi", world_options={"map_size": 4, "max_len": 12, "min_len": 2}, objective="nextlat",
                      steps=steps, batch_size=32, eval_every=steps, save_every=steps, n_val=64, device="cpu",
                      warmup_steps=10, lr=3e-3)
    ckpt = train(cfg, out_dir=tempfile.mkdtemp(prefix="generation-bench-"), progress=False).checkpoint
    print(f"trained a fresh tiny NextLat taxi checkpoint ({steps} steps) in {time.perf_counter() - t0:.1f}s")
    return ckpt


def speculative_section(ckpt, device, n_prompts, batches, repeats, clock):
    """Rows (batch, policy, summary) of speculative decoding against cached greedy."""
    from nextlat_probe.analysis.generation import greedy_decode
    from nextlat_probe.analysis.speculative import (
        LatentDrafter,
        parse_policy,
        speculative_decode,
        summary,
    )
    from nextlat_probe.checkpoint import load_checkpoint
    from nextlat_probe.compare.speculative import prompts_for

    m = load_checkpoint(ckpt, device=device)
    prompts, new, stop, pparams = prompts_for(m.world, m.model, n_prompts, 0)
    pad = int(getattr(m.world, "pad_id", 0) or 0)
    drafter = LatentDrafter(m.model, m.dynamics)
    val = (m.metrics or {}).get("val_loss")
    print(f"\n2. speculative decoding vs cached greedy: {ckpt} (step {m.step}"
          + (f", val loss {val:.4f}" if isinstance(val, (int, float)) else "")
          + f"), {n_prompts} {pparams['prompts']} prompts, max_new {new}, fastest of {repeats} ({CLOCK[clock]})")
    print(f"{'batch':>5} {'policy':9} {'regime':9} {'identical':>9} {'accept':>6} {'tok/fwd':>7} {'pos/tok':>7} "
          f"{'greedy pos/tok':>14} {'greedy s':>9} {'spec s':>8} {'speedup':>8}")
    rows = []
    for b in batches:
        for pol in POLICIES:
            greedy, spec = paired(greedy_decode, partial(speculative_decode, drafter=drafter, policy=pol), repeats,
                                  clock, model=m.model, prompts=prompts, max_new=new, stop_mask=stop, batch_size=b, pad_id=pad)
            s = summary(spec, greedy, parse_policy(pol).k)
            rows.append((b, pol, s))
            print(f"{b:5d} {pol:9} {spec.regime:9} {str(s['identical_to_greedy']):>9} {s['draft_acceptance']:6.2f} "
                  f"{s['tokens_per_forward']:7.2f} {s['positions_per_token']:7.2f} {s['greedy_positions_per_token']:14.2f} "
                  f"{s['seconds_greedy']:9.3f} {s['seconds_speculative']:8.3f} {s['speedup']:7.2f}x")
    return rows


def worldmodel_section(ckpt, device, n_pairs, clock):
    """(full s, cached s, identical records) of ``run_worldmodel`` in both regimes."""
    from nextlat_probe.analysis.generation import sync
    from nextlat_probe.checkpoint import load_checkpoint
    from nextlat_probe.compare import run_worldmodel
    from nextlat_probe.models.transformer import resolve_device

    m = load_checkpoint(ckpt, device=device)
    dev = resolve_device(device)
    out = {}
    for regime in ("full_forward", "kv_cache"):
        sync(dev)
        t0, c0 = time.perf_counter(), time.process_time()
        rec = run_worldmodel([m], n_pairs=n_pairs, seed=0, device=device, regime=regime)[0]
        sync(dev)
        out[regime] = ((time.process_time() - c0) if clock == "cpu" else (time.perf_counter() - t0), rec)
    (t_full, r_full), (t_cached, r_cached) = out["full_forward"], out["kv_cache"]
    strip = [{**r["params"], "regime": None} for r in (r_full, r_cached)]
    identical = r_full["metrics"] == r_cached["metrics"] and strip[0] == strip[1]
    print(f"\n3. world-model metrics (compare.run_worldmodel, {n_pairs} pairs, seed 0, fp32; {CLOCK[clock]}): {ckpt}")
    print(f"full_forward {t_full:.1f}s, kv_cache {t_cached:.1f}s: {t_full / t_cached:.2f}x, records identical: "
          f"{identical}")
    return t_full / t_cached, identical


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer prompts and a smaller batch (16, not 64)")
    ap.add_argument("--device", default="cpu", help="cpu (default), cuda or auto")
    ap.add_argument("--ckpt", default=None, help="a trained NextLat taxi checkpoint (default: train a fresh tiny one)")
    ap.add_argument("--steps", type=int, default=None, help="training steps of the fresh checkpoint")
    ap.add_argument("--worldmodel", action="store_true", help="also time run_worldmodel in both regimes")
    ap.add_argument("--n-pairs", type=int, default=200, help="world-model pairs with --worldmodel (default 200)")
    ap.add_argument("--clock", choices=tuple(CLOCK), default="wall",
                    help="what is timed: wall (default) or cpu (this process's CPU time; for a CPU shared with other "
                         "jobs, with --threads 1)")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    args = ap.parse_args(argv)
    from nextlat_probe.models.transformer import resolve_device

    device = str(resolve_device(args.device))  # a DeviceError: one line, exit 2 (run_main)
    import torch

    from nextlat_probe.errors import UsageError

    if args.clock == "cpu" and device.startswith("cuda"):
        raise UsageError("--clock cpu times the host only; on CUDA use --clock wall")
    if args.threads is not None:
        if args.threads < 1:
            raise UsageError(f"--threads must be positive, got {args.threads}")
        torch.set_num_threads(args.threads)

    # timings of a tenth of a second: the fastest of 5 (quick) or 7 rounds, so a moment of
    # load from elsewhere does not decide the ratio
    repeats, n_prompts, big = (5, 16, 16) if args.quick else (7, 64, 64)
    print(f"device {device}" + (f" ({torch.cuda.get_device_name(device)})" if device.startswith("cuda") else
                                f" ({torch.get_num_threads()} torch threads, {os.cpu_count()} cores)")
          + f", timing: {CLOCK[args.clock]}")
    t0 = time.perf_counter()
    greedy = greedy_section(device, (1, big), repeats, args.clock)
    ckpt = args.ckpt or train_fresh(args.steps or (150 if args.quick else 400))
    spec = speculative_section(ckpt, device, n_prompts, (1, big), repeats, args.clock)
    identical = all(ok for *_, ok in greedy) and all(s["identical_to_greedy"] for *_, s in spec)
    if args.worldmodel:
        _, same_records = worldmodel_section(ckpt, device, args.n_pairs, args.clock)
        identical &= same_records
    print(f"\ntotal {time.perf_counter() - t0:.1f}s")
    kv = min(r for L, _, r, _ in greedy if L == 128)
    best = max(s["speedup"] for b, _, s in spec if b == 1)
    print(f"kv_speedup_len128={kv:.2f} spec_speedup_best={best:.2f} identical={identical}")


if __name__ == "__main__":
    from nextlat_probe.cli import run_main

    run_main(main)
