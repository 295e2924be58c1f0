"""Cost of one training step: GPT vs NextLat (d = 1, d = 8) vs a bare TransformerLens step vs
a plain PyTorch GPT of the same shape.

    .venv/bin/python benchmarks/train_step.py                  # tiny + small, ~4 min on 2 CPU cores
    .venv/bin/python benchmarks/train_step.py --quick          # ~1 min
    .venv/bin/python benchmarks/train_step.py --device cuda --presets small --steps 100
    .venv/bin/python benchmarks/train_step.py --breakdown      # where the time goes, per part

SPEC §1 promises that NextLat is cheap: a d = 1 step should cost about what a GPT step
costs (paper: 1.00x) and a d = 8 step well under 2x (paper: 1.79x); and our GPT step (masked
CE, gradient clipping, two AdamW parameter groups, LR schedule) should cost about what the
plainest TransformerLens step costs. The benchmark checks exactly those ratios.

The bridge's hook points and wrappers cost 1.1-1.3x a plain PyTorch pre-LN GPT of the same
shape (``plain``, ``benchmarks/_plain_gpt.py``; TransformerLens's own bare step: ``TL bare``).
The trainer therefore trains through ``models.fastpath`` (the bridge's own parameters, no
hook points): ``GPT`` is that step, ``GPT hooked`` the same step through the hooked
forward (``--no-fast-forward``), both against ``plain``.

How it measures, and why:
- Every variant lives in ONE process, is built at the same size and steps on the SAME batch
  (taxi trips, batch 64, the world's default length), so only the objective differs.
- The GPT and NextLat steps are the trainer's own step (``trainer._new_run`` for the model,
  optimiser and schedule; then ``trainer._losses`` -> ``_backward`` (zero_grad, backward,
  clip_grad_norm_) -> ``_update`` (AdamW, LambdaLR)), so the numbers are what
  ``nextlat_probe.train`` pays: on CUDA with its GPU settings (fused AdamW, finiteness read
  lazily, NextLat's dense roll-out), on a CPU exactly as before.
- Variants are stepped round-robin, one step each per round, in an order rotated every
  round: drifting machine load (other jobs, thermal throttling) then hits every variant
  alike instead of whichever happened to run last. Warm-up rounds are discarded and
  medians are reported (robust to the occasional descheduled step). "paired" is the
  median over rounds of (variant time / GPT time in the same round), a second estimate
  that cancels slow drift even more directly.
- On CUDA every timed step is bracketed by ``torch.cuda.synchronize`` (kernels are async).
- On CPU torch runs single-threaded by default (``--threads``): at these sizes a second
  intra-op thread buys little, and when anything else shares the cores, oversubscribed
  threads make steps 5-10x slower and far noisier, swamping the ratios being measured.
  The load average is printed so a noisy run can be recognised.
"""
from __future__ import annotations

import argparse
import os
import statistics
import time
from dataclasses import dataclass, field
from typing import Any, Callable

#: Timed steps per variant (full, quick). ``small`` is ~20x the work of ``tiny`` on CPU.
DEFAULT_STEPS = {"tiny": (40, 15), "small": (15, 4), "mini": (25, 8)}
#: (variant, baseline it is compared with, target ratio, paper's ratio or None)
TARGETS = {
    "TL bare": ("plain", None, None),
    "GPT hooked": ("plain", None, None),
    "GPT": ("plain", 1.10, None),
    "NextLat d=1": ("GPT", 1.10, 1.00),
    "NextLat d=8": ("GPT", 1.60, 1.79),
}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--presets", default="tiny,small", help="comma-separated model presets (tiny, mini, small)")
    p.add_argument("--steps", type=int, default=None, help="timed steps per variant (default: per preset)")
    p.add_argument("--warmup", type=int, default=None, help="untimed warm-up rounds (default 5, --quick 3)")
    p.add_argument("--device", default="auto", help="cpu, cuda or auto (default)")
    p.add_argument("--quick", action="store_true", help="fewer steps: about one minute on 2 CPU cores")
    p.add_argument("--world", default="taxi", help="world whose tokens form the batch (default taxi)")
    p.add_argument("--batch", type=int, default=64, help="batch size (default 64)")
    p.add_argument("--seq-len", type=int, default=None, help="tokens per sequence (default: the world's default length)")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1, see the module docstring)")
    p.add_argument("--breakdown", action="store_true", help="also time the parts of each step (forward, latent loss, backward, optimiser)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    from nextlat_probe.cli import UsageError
    from nextlat_probe.models.config import PRESETS

    args.presets = [s.strip() for s in args.presets.split(",") if s.strip()]
    for s in args.presets:
        if s not in PRESETS:
            raise UsageError(f"unknown preset {s!r}; choose from {', '.join(PRESETS)}")
    for name in ("steps", "batch", "threads"):
        v = getattr(args, name)
        if v is not None and v < 1:
            raise UsageError(f"--{name} must be a positive integer, got {v}")
    if args.seq_len is not None and args.seq_len < 2:
        raise UsageError(f"--seq-len must be at least 2, got {args.seq_len}")
    if args.warmup is not None and args.warmup < 0:
        raise UsageError(f"--warmup must be >= 0, got {args.warmup}")
    return args


@dataclass
class Variant:
    name: str
    step: Callable[[], None]
    parts: dict[str, Any] | None = None  # model, optimiser, batch ...: what --breakdown needs
    times: list[float] = field(default_factory=list)  # seconds per timed step


def build_variants(preset: str, world, tokens, device, args) -> list[Variant]:
    """The four variants at one model size, all stepping on the same batch."""
    import torch

    from nextlat_probe.models.config import ModelConfig
    from nextlat_probe.models.transformer import build_transformer, last_resid_hook, move
    from nextlat_probe.training import trainer
    from nextlat_probe.training.config import TrainConfig
    from nextlat_probe.training.trainer import to_batch

    seq_len = tokens.shape[1]
    batch = to_batch(world, tokens, device)

    def trainer_variant(name: str, objective: str, horizon: int, fast: bool = True) -> Variant:
        cfg = TrainConfig(world=args.world, objective=objective, horizon=horizon, preset=preset, device=str(device),
                          seq_len=seq_len, n_val=8, fast_forward=fast)
        cuda = device.type == "cuda"
        run = trainer._new_run(cfg, world, fused=cuda)  # the trainer's model, optimiser and schedule
        if cuda:  # what training does on CUDA: finiteness read lazily, fused AdamW skips bad steps
            run.check_every, run.guard = 10, trainer._FiniteGuard(run.device)
        trainer._prepare_step(run)
        run.model.train()

        def step() -> None:  # the trainer's step (trainer._train_step) on the shared batch, minus data and logging
            losses, total = trainer._losses(run, batch)
            trainer._update(run, 1, total, trainer._backward(run, 1, losses, total))

        parts = dict(model=run.model, dynamics=run.aux, opt=run.opt, sched=run.sched, ocfg=run.ocfg,
                     hook=last_resid_hook(run.mcfg), params=run.params(), clip=cfg.grad_clip, batch=batch)
        return Variant(name, step, parts)

    # Bare TransformerLens: the simplest possible training step, same model size and batch
    # (the config is the one trainer._build makes).
    mcfg = ModelConfig.from_preset(preset, n_ctx=seq_len, d_vocab=world.vocab_size)
    torch.manual_seed(0)
    bare = move(build_transformer(mcfg, seed=0), device)
    bare.train()
    bare_opt = torch.optim.AdamW(bare.parameters(), lr=1e-3)

    def bare_step() -> None:  # loss -> zero_grad -> backward -> step, nothing else
        loss = bare(batch.tokens, return_type="loss")
        bare_opt.zero_grad()
        loss.backward()
        bare_opt.step()

    # Plain PyTorch pre-LN GPT of the same shape (nanoGPT style): what the bridge's hook
    # points and wrappers cost is measured against it. Same loss, clipping and optimiser
    # settings as the trainer's GPT step.
    import sys

    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from _plain_gpt import PlainGPT

    from nextlat_probe.models.objective import masked_cross_entropy

    torch.manual_seed(0)
    plain = PlainGPT(mcfg).to(device)
    plain.train()
    plain_opt = torch.optim.AdamW(plain.parameters(), lr=1e-3, betas=(0.9, 0.95))

    def plain_step() -> None:
        loss = masked_cross_entropy(plain(batch.tokens), batch.targets, batch.scored)
        plain_opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(plain.parameters(), 1.0)
        plain_opt.step()

    return [
        Variant("plain", plain_step, None),
        Variant("TL bare", bare_step, dict(model=bare, dynamics=None, opt=bare_opt, batch=batch)),
        trainer_variant("GPT hooked", "gpt", 1, fast=False),
        trainer_variant("GPT", "gpt", 1),
        trainer_variant("NextLat d=1", "nextlat", 1),
        trainer_variant("NextLat d=8", "nextlat", 8),
    ]


def matmul_share(preset: str, seq_len: int, vocab: int) -> tuple[float, float]:
    """(p_psi, KL heads) multiply-adds per row and roll-out step, as fractions of the
    transformer's forward multiply-adds per token. Backward passes scale both alike, so this
    is roughly what each roll-out step adds to a GPT step when matmuls dominate."""
    from nextlat_probe.models.config import ModelConfig

    c = ModelConfig.from_preset(preset)
    d, hd = c.d_model, c.d_dynamics or c.d_model
    attn = c.n_heads * c.d_head
    transformer = c.n_layers * (4 * d * attn + 2 * d * c.d_mlp + 2 * attn * seq_len) + d * vocab
    p_psi = 2 * d * hd + hd * hd + hd * d
    return p_psi / transformer, 2 * d * vocab / transformer


def estimate_line(preset: str, world, tokens) -> str:
    """Expected NextLat/GPT ratios from matmul work alone, rolling out every row (as a dense
    implementation does) or only the (start, start + i) pairs the loss counts (padding skipped)."""
    import numpy as np

    share = sum(matmul_share(preset, tokens.shape[1], world.vocab_size))
    valid = np.asarray(world.position_mask(tokens), dtype=bool)
    n, L = valid.shape
    out = []
    for d in (1, 8):
        dense = sum(L - i for i in range(1, min(d, L - 1) + 1)) / L
        counted = sum((valid[:, : L - i] & valid[:, i:]).sum() for i in range(1, min(d, L - 1) + 1)) / (n * L)
        out.append(f"d={d} ~{1 + dense * share:.2f}x every row, ~{1 + counted * share:.2f}x counted pairs only")
    return f"p_psi + KL heads add {100 * share:.0f}% of the transformer's matmul work per roll-out step; " + "; ".join(out)


def run_round_robin(variants: list[Variant], warmup: int, steps: int, sync: Callable[[], None]) -> None:
    """One step per variant per round, order rotated each round; warm-up rounds untimed."""
    n = len(variants)
    for r in range(warmup + steps):
        for k in range(n):
            v = variants[(r + k) % n]
            sync()
            t0 = time.perf_counter()
            v.step()
            sync()
            if r >= warmup:
                v.times.append(time.perf_counter() - t0)


def summarise(preset: str, variants: list[Variant]) -> list[dict]:
    by_name = {v.name: v for v in variants}
    med = {v.name: statistics.median(v.times) for v in variants}
    rows = []
    for v in variants:
        row = {"preset": preset, "variant": v.name, "ms": 1e3 * med[v.name], "steps_s": 1.0 / med[v.name],
               "iqr_ms": 1e3 * _iqr(v.times), "base": None}
        if v.name in TARGETS:
            base, target, paper = TARGETS[v.name]
            row.update(base=base, ratio=med[v.name] / med[base], target=target, paper=paper,
                       paired=statistics.median(a / b for a, b in zip(v.times, by_name[base].times)))
        rows.append(row)
    return rows


def _iqr(xs: list[float]) -> float:
    if len(xs) < 4:
        return float("nan")
    q = statistics.quantiles(xs, n=4)
    return q[2] - q[0]


def print_table(rows: list[dict]) -> None:
    head = f"{'preset':<7} {'variant':<12} {'ms/step':>9} {'IQR ms':>8} {'steps/s':>8}  {'ratio':>14} {'paired':>7}  {'target':>8} {'paper':>6}  result"
    print(head)
    print("-" * len(head))
    for r in rows:
        line = f"{r['preset']:<7} {r['variant']:<12} {r['ms']:9.1f} {r['iqr_ms']:8.1f} {r['steps_s']:8.2f}  "
        if r["base"] is None:
            line += f"{'(baseline)':>14}"
        else:
            paper = f"{r['paper']:.2f}x" if r["paper"] is not None else "-"
            if r["target"] is None:
                line += f"{r['ratio']:6.2f}x {r['base']:<7} {r['paired']:6.2f}x  {'-':>8} {paper:>6}  (reference)"
            else:
                verdict = "PASS" if r["ratio"] <= r["target"] else "MISS"
                line += (f"{r['ratio']:6.2f}x {r['base']:<7} {r['paired']:6.2f}x  "
                         f"<={r['target']:.2f}x {paper:>6}  {verdict}")
        print(line)


def breakdown(variants: list[Variant], steps: int, sync: Callable[[], None]) -> None:
    """Median time of each part of every step (for GPT/NextLat the work of ``compute_losses``,
    split at its seams): forward + CE, NextLat's latent losses, backward, optimiser (with
    gradient clipping and the LR schedule, except for the bare step).
    Each variant runs ``steps`` more steps here, one variant after another."""
    import torch

    from nextlat_probe.models.objective import (
        masked_cross_entropy,
        nextlat_latent_losses,
        normalize_latent,
    )

    store: dict[str, Any] = {}

    def keep(resid, hook):  # the live last-block residual, as compute_losses keeps it
        store["resid"] = resid
        return resid

    def now() -> float:
        sync()
        return time.perf_counter()

    print(f"{'variant':<12} {'forward+CE':>11} {'latent':>8} {'backward':>9} {'optimiser':>10}   (median ms)")
    for v in variants:
        if v.parts is None:  # the plain reference has no parts to split
            continue
        p = v.parts
        bare = "ocfg" not in p
        model, dynamics, ocfg = p["model"], p["dynamics"], p.get("ocfg")
        b = p["batch"]
        t = b.tokens
        times: dict[str, list[float]] = {"fwd": [], "lat": [], "bwd": [], "opt": []}
        for _ in range(steps):
            clock = [now()]
            if bare:
                loss = model(t, return_type="loss")
                clock += [now(), now()]
            elif dynamics is None:
                loss = masked_cross_entropy(model(t), b.targets, b.scored)
                clock += [now(), now()]
            else:
                with model.hooks(fwd_hooks=[(p["hook"], keep)]):
                    logits = model(t)
                ce = masked_cross_entropy(logits, b.targets, b.scored)
                clock.append(now())
                h = normalize_latent(store.pop("resid"))
                nh, kl = nextlat_latent_losses(model, dynamics, h, t, b.valid, ocfg.horizon, with_kl=ocfg.lambda_kl > 0)
                loss = ce + ocfg.lambda_h * nh + ocfg.lambda_kl * kl
                clock.append(now())
            p["opt"].zero_grad(set_to_none=True)
            loss.backward()
            clock.append(now())
            if not bare:
                torch.nn.utils.clip_grad_norm_(p["params"], p["clip"])
            p["opt"].step()
            if not bare:
                p["sched"].step()
            clock.append(now())
            for key, a, b in zip(times, clock, clock[1:]):
                times[key].append(b - a)
        med = {k: 1e3 * statistics.median(x) for k, x in times.items()}
        print(f"{v.name:<12} {med['fwd']:11.1f} {med['lat']:8.1f} {med['bwd']:9.1f} {med['opt']:10.1f}")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    import torch

    from nextlat_probe.models.transformer import resolve_device
    from nextlat_probe.training.trainer import default_seq_len
    from nextlat_probe.worlds import make_world

    device = resolve_device(args.device)  # a DeviceError: one line, exit 2 (run_main)
    if device.type == "cpu":
        torch.set_num_threads(args.threads)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    world = make_world(args.world)
    seq_len = args.seq_len or default_seq_len(world)
    tokens = world.sample(args.batch, seq_len, seed=args.seed).tokens
    warmup = args.warmup if args.warmup is not None else (3 if args.quick else 5)
    if device.type == "cuda":
        dev_name = torch.cuda.get_device_name(device)
    else:
        dev_name = f"cpu ({torch.get_num_threads()} threads, load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores)"
    print(f"training-step benchmark: world={args.world} batch={tokens.shape[0]} seq_len={tokens.shape[1]} "
          f"device={dev_name} torch={torch.__version__}")
    print("variants stepped round-robin on the same batch; medians over timed steps\n")

    rows = []
    for preset in args.presets:
        steps = args.steps or DEFAULT_STEPS.get(preset, (20, 6))[1 if args.quick else 0]
        variants = build_variants(preset, world, tokens, device, args)
        t0 = time.perf_counter()
        run_round_robin(variants, warmup, steps, sync)
        print(f"[{preset}: {warmup} warm-up + {steps} timed rounds in {time.perf_counter() - t0:.0f} s]", flush=True)
        rows += summarise(preset, variants)
        print(f"[{preset}: {estimate_line(preset, world, tokens)}]", flush=True)
        if args.breakdown:
            breakdown(variants, max(3, steps // 2), sync)
    print()
    print_table(rows)
    print("\nratio = median(variant) / median(baseline); paired = median over rounds of the same-round ratio.")
    print("Targets: GPT (hook-free training forward) <= 1.10x a plain PyTorch GPT; NextLat d=1 <= 1.10x GPT "
          "(paper 1.00x); d=8 <= 1.60x GPT (paper 1.79x). TL bare and GPT hooked: the bridge's own cost, for reference.")
    return 0


if __name__ == "__main__":
    from nextlat_probe.cli import run_main

    run_main(main)
