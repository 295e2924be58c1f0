"""Self-speculative decoding benchmark: tokens per forward and wall-clock speedup over greedy.

    python benchmarks/speculative.py --quick            # fresh tiny NextLat (taxi), < ~2 min on 2 CPU cores
    python benchmarks/speculative.py --ckpt runs/demo/nextlat-seed0/ckpt.pt

Rows: fixed k in {1, 2, 4, 8}, fixed:16 (the cap of adaptive, for reference) and adaptive,
on (a) a trained NextLat checkpoint (fresh tiny taxi one, or --ckpt) and (b) a bigger
preset with UNTRAINED random weights and a random non-zero p_psi (timing only: its drafts
are rarely accepted, so it shows the cost of drafting and verifying when drafts fail).
Regime: the key/value cache (``models.kvcache``) for both greedy and speculative decoding
(the speedup is over cached greedy); they are timed alternately in this run.
``benchmarks/generation.py`` adds cached vs full-forward greedy and batch-1 timings.
"""
from __future__ import annotations

import argparse
import tempfile
import time

import numpy as np

POLICIES = ("fixed:1", "fixed:2", "fixed:4", "fixed:8", "fixed:16", "adaptive")


def show(title, rows):
    print(f"\n{title}")
    print(f"{'policy':10} {'identical':>9} {'acc/verif':>9} {'tok/fwd':>8} {'psi/tok':>8} {'greedy s':>9} "
          f"{'spec s':>8} {'speedup':>8}")
    for name, m in rows:
        print(f"{name:10} {str(m['identical_to_greedy']):>9} {m['mean_accepted']:9.2f} {m['tokens_per_forward']:8.2f} "
              f"{m['draft_calls_per_token']:8.2f} {m['seconds_greedy']:9.3f} {m['seconds_speculative']:8.3f} "
              f"{m['speedup']:7.2f}x")


def trained(ckpt, n_prompts, repeats):
    from nextlat_probe.compare import run_speculative

    recs = run_speculative([ckpt], draft=POLICIES, n_prompts=n_prompts, repeats=repeats)
    p = recs[0]["params"]
    show(f"{recs[0]['name']} (step {recs[0]['step']}, {p['prompts']}, {n_prompts} prompts, max_new {p['max_new']}, "
         f"regime {p['regime']}, fastest of {repeats})", [(r["variant"], r["metrics"]) for r in recs])


def untrained(n_prompts, repeats, quick):
    import torch

    from nextlat_probe.analysis.speculative import (
        LatentDrafter,
        greedy_decode,
        speculative_decode,
        summary,
    )
    from nextlat_probe.models.config import ModelConfig
    from nextlat_probe.models.dynamics import LatentDynamics
    from nextlat_probe.models.transformer import build_transformer

    d = 128 if quick else 256
    cfg = ModelConfig(n_layers=4, d_model=d, n_heads=8, d_head=d // 8, d_mlp=4 * d, n_ctx=64 if quick else 128,
                      d_vocab=64)
    model = build_transformer(cfg, seed=0).eval()
    torch.manual_seed(0)
    dyn = LatentDynamics(d)
    with torch.no_grad():
        dyn.fc3.weight.normal_(0, 0.05)
    prompts = np.random.default_rng(0).integers(0, 64, (n_prompts, 4))
    new = cfg.n_ctx + 1 - 4
    drafter = LatentDrafter(model, dyn)
    rows = []
    for pol in POLICIES:
        g = s = None
        for _ in range(repeats):
            g1 = greedy_decode(model, prompts, new)
            s1 = speculative_decode(model, drafter, prompts, new, policy=pol)
            g = g1 if g is None or g1.seconds < g.seconds else g
            s = s1 if s is None or s1.seconds < s.seconds else s
        rows.append((pol, summary(s, g, 16)))
    show(f"UNTRAINED preset n_layers=4 d_model={d} n_ctx={cfg.n_ctx} d_vocab=64, random p_psi (timing only), "
         f"{n_prompts} random 4-token prompts, {new} new tokens, regime {s.regime}, fastest of {repeats}", rows)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="small sizes, one timing run")
    ap.add_argument("--ckpt", default=None, help="an existing NextLat checkpoint instead of a fresh tiny one")
    ap.add_argument("--steps", type=int, default=None, help="training steps of the fresh checkpoint")
    ap.add_argument("--no-untrained", action="store_true", help="skip the untrained bigger preset")
    args = ap.parse_args()
    n_prompts, repeats = (32, 1) if args.quick else (64, 3)
    t0 = time.perf_counter()
    ckpt = args.ckpt
    if ckpt is None:
        from nextlat_probe.training.config import TrainConfig
        from nextlat_probe.training.trainer import train

        steps = args.steps or (150 if args.quick else 400)
        cfg = TrainConfig(world="taxi", world_options={"map_size": 4, "max_len": 12, "min_len": 2}, objective="nextlat",
                          steps=steps, batch_size=32, eval_every=steps, save_every=steps, n_val=64, device="cpu",
                          warmup_steps=10, lr=3e-3)
        ckpt = train(cfg, out_dir=tempfile.mkdtemp(prefix="spec-bench-"), progress=False).checkpoint
        print(f"trained a fresh tiny NextLat taxi checkpoint ({steps} steps) in {time.perf_counter() - t0:.1f}s")
    trained(ckpt, n_prompts, repeats)
    if not args.no_untrained:
        untrained(8 if args.quick else 16, repeats, args.quick)
    print(f"\ntotal {time.perf_counter() - t0:.1f}s")


if __name__ == "__main__":
    main()
