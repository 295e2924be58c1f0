"""Training throughput of the real trainer, per preset, batch size and execution setting, side
by side in one process: steps/s, tokens/s, MFU, and where a step's time goes.

    .venv/bin/python benchmarks/throughput.py --device cuda                      # small + base, every setting
    .venv/bin/python benchmarks/throughput.py --device cuda --presets base --objective nextlat
    .venv/bin/python benchmarks/throughput.py --quick                            # CPU: tiny, fp32 device / host

Settings, each a full short training run (``trainer.train``) in a temporary folder, same
seed:

- ``fp32``: float32 (TF32 matmuls on CUDA), batches from the device sampler;
- ``fp32+ieee`` (CUDA): the same without TF32 (IEEE float32 matmuls);
- ``fp32+host``: float32, batches from the host (numpy) sampler, drawn ahead in a thread on
  CUDA: how every run trained before device sampling;
- ``bf16`` (CUDA with bfloat16): autocast forward, float32 weights and reductions;
- ``bf16+compile`` (CUDA): ``torch.compile`` of a step's forward and losses (``--compile``,
  mode auto: CUDA graphs for small steps).

Steps/s is the median over the run's log records of ``tokens_per_s / (batch x seq_len)``
after the first record (warm-up and compilation are excluded). ``vs fp32`` is each setting
against ``fp32`` at the same preset and batch, measured in the same process a moment apart
("-" when ``fp32`` is not among ``--settings``). MFU = tokens/s x the model's training FLOPs
per token (``models.flops``: the config, p_psi, the MTP heads and attention included) / the
device's dense peak for the setting's precision (``models.flops.PEAK_TFLOPS``: A100, H100,
H200 by device name; ``--peak-tflops`` overrides; "n/a" where no peak is known, as on a CPU).

The breakdown (``--no-breakdown`` skips it) runs a few more steps of each setting through the
trainer's own step functions, waiting for the device between the parts: sampling
(``source.tokens``), copy (to the device, with the targets: ``source.batch``), forward
(``_losses``), backward (``_backward``: gradients and clipping) and optimiser (``_update``).
The parts are means in ms per step; with the waits they do not overlap, so their sum is
above the step time of the training run, where the device works while the host queues.

On CUDA each preset runs at batch 64 and at the batch that fills the device
(``FILL_BATCH``) unless ``--batch-size`` is given. Settings run one after another, not
round-robin (each is a whole training loop), so on a shared machine repeat the run.
"""
from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

SETTINGS = {  # name -> (precision, sampler, compile, tf32)
    "fp32": ("fp32", "device", False, True),
    "fp32+ieee": ("fp32", "device", False, False),
    "fp32+host": ("fp32", "host", False, True),
    "bf16": ("bf16", "device", False, True),
    "bf16+compile": ("bf16", "device", True, True),
}
#: batch sizes that fill an H100/H200-class GPU with each preset on the default taxi world
#: (43 tokens a sequence): ~22k-180k tokens a step, where the device's arithmetic, not the
#: host's launches, bounds a step (base at 512 is the issue's 40%-MFU setting)
FILL_BATCH = {"tiny": 4096, "mini": 2048, "small": 1024, "base": 512}
PARTS = ("sample", "copy", "forward", "backward", "optimiser")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--presets", default=None, help="comma list (default: small,base on CUDA, tiny,mini on CPU)")
    p.add_argument("--objective", default="gpt", choices=("gpt", "nextlat", "mtp"))
    p.add_argument("--horizon", type=int, default=1, help="NextLat's roll-out depth / MTP's extra heads")
    p.add_argument("--world", default="taxi")
    p.add_argument("--steps", type=int, default=None, help="steps per setting (default 300 on CUDA, 60 on CPU)")
    p.add_argument("--batch-size", default=None,
                   help="comma list of batch sizes (default: 64 and FILL_BATCH[preset] on CUDA, 64 on CPU)")
    p.add_argument("--device", default="auto", help="cpu, cuda or auto")
    p.add_argument("--settings", default=None, help=f"comma list among {', '.join(SETTINGS)} (default: all "
                   "that the device supports; CPU: fp32, fp32+host)")
    p.add_argument("--peak-tflops", type=float, default=None,
                   help="the device's peak TFLOP/s for MFU (default: from the device name; CPU: none)")
    p.add_argument("--no-breakdown", action="store_true", help="skip the per-part time breakdown")
    p.add_argument("--quick", action="store_true", help="CPU: tiny only, 40 steps")
    return p.parse_args(argv)


def steps_per_second(metrics_path: Path, tokens_per_step: int) -> float:
    from nextlat_probe.training.log import read_metrics

    rates = [r["tokens_per_s"] for r in read_metrics(metrics_path) if "tokens_per_s" in r][1:]
    if not rates:
        raise RuntimeError(f"{metrics_path}: no timed log records (train more steps)")
    return statistics.median(rates) / tokens_per_step


def breakdown(cfg, world, compile: bool, steps: int, sync) -> dict[str, float]:
    """Mean ms per step of each part of a step (see the module docstring)."""
    import torch

    from nextlat_probe.training import trainer

    run = trainer._new_run(cfg, world, fused=torch.device(cfg.device).type == "cuda")
    run.precision = trainer.resolve_precision(cfg.precision, run.device)
    if run.device.type == "cuda":  # the training default: finiteness read lazily, fused AdamW
        run.check_every, run.guard = 10, trainer._FiniteGuard(run.device)
    times = {k: 0.0 for k in PARTS}
    with trainer._fp32_matmuls(run):
        trainer._prepare_step(run, compile)
        warm = 3 if not compile else 5
        for step in range(1, warm + steps + 1):
            sync()
            clock = [time.perf_counter()]
            tokens = run.source.tokens(step)
            sync()
            clock.append(time.perf_counter())
            batch, _ = trainer._next_batch(run, step, tokens)
            sync()
            clock.append(time.perf_counter())
            losses, total = trainer._losses(run, batch)
            sync()
            clock.append(time.perf_counter())
            gnorm = trainer._backward(run, step, losses, total)
            sync()
            clock.append(time.perf_counter())
            trainer._update(run, step, total, gnorm)
            sync()
            clock.append(time.perf_counter())
            if step > warm:
                for k, a, b in zip(PARTS, clock, clock[1:]):
                    times[k] += (b - a) * 1e3 / steps
    return times


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    import torch

    from nextlat_probe.cli import UsageError
    from nextlat_probe.models.config import ModelConfig
    from nextlat_probe.models.flops import mfu, peak_tflops, training_flops_per_token
    from nextlat_probe.models.transformer import resolve_device
    from nextlat_probe.training.config import TrainConfig
    from nextlat_probe.training.trainer import default_lambda_kl, default_seq_len, train
    from nextlat_probe.worlds import make_world

    device = resolve_device(args.device)  # a DeviceError: one line, exit 2 (run_main)
    cuda = device.type == "cuda"
    presets = (args.presets or ("small,base" if cuda else ("tiny" if args.quick else "tiny,mini"))).split(",")
    steps = args.steps or (300 if cuda else (40 if args.quick else 60))
    bf16 = cuda and torch.cuda.is_bf16_supported()
    if args.settings:
        names = args.settings.split(",")
    elif cuda:
        names = [n for n, (prec, *_) in SETTINGS.items() if prec == "fp32" or bf16]
    else:
        names = ["fp32", "fp32+host"]
    unknown = [n for n in names if n not in SETTINGS]
    if unknown:
        raise UsageError(f"--settings: unknown {unknown[0]!r}; choose among {', '.join(SETTINGS)}")
    if not cuda and any(SETTINGS[n][0] == "bf16" for n in names):
        raise UsageError("--settings: bf16 needs a CUDA device")
    if args.peak_tflops is not None and not args.peak_tflops > 0:
        raise UsageError(f"--peak-tflops must be positive, got {args.peak_tflops}")
    world = make_world(args.world)
    seq_len = default_seq_len(world)
    sync = (lambda: torch.cuda.synchronize(device)) if cuda else (lambda: None)
    dev = torch.cuda.get_device_name(device) if cuda else f"cpu ({torch.get_num_threads()} threads)"
    print(f"throughput: world={args.world} objective={args.objective} seq_len={seq_len} steps={steps} device={dev} "
          f"torch={torch.__version__} date={time.strftime('%Y-%m-%d')}")
    rows = []
    for preset in presets:
        mcfg = ModelConfig.from_preset(preset, n_ctx=seq_len, d_vocab=world.vocab_size)
        flops = training_flops_per_token(mcfg, seq_len, args.objective, args.horizon, default_lambda_kl(world))
        print(f"  {preset}: {flops.total / 1e6:.2f} MFLOP per token "
              f"({', '.join(f'{k} {v / 1e6:.2f}' for k, v in flops.to_dict().items() if v and k != 'total')})")
        batches = ([int(b) for b in args.batch_size.split(",")] if args.batch_size
                   else ([64, FILL_BATCH.get(preset, 512)] if cuda else [64]))
        for batch in batches:
            base = None
            for name in names:
                precision, sampler, compile, tf32 = SETTINGS[name]
                cfg = TrainConfig(world=args.world, objective=args.objective, horizon=args.horizon, preset=preset,
                                  steps=steps, batch_size=batch, eval_every=steps, save_every=steps, n_val=64,
                                  warmup_steps=min(50, steps // 5), device=str(device), precision=precision,
                                  sampler=sampler, tf32=tf32)
                with tempfile.TemporaryDirectory() as tmp:
                    t0 = time.perf_counter()
                    train(cfg, out_dir=Path(tmp) / "run", progress=False, prefetch=cuda and sampler == "host",
                          compile=compile)
                    wall = time.perf_counter() - t0
                    rate = steps_per_second(Path(tmp) / "run" / "metrics.jsonl", batch * seq_len)
                base = rate if name == "fp32" else base
                peak = args.peak_tflops or (peak_tflops(dev, "bf16" if precision == "bf16" else ("tf32" if tf32 else
                                                                                                  "fp32")) if cuda else None)
                share = mfu(rate * batch * seq_len, flops.total, peak)
                parts = None if args.no_breakdown else breakdown(cfg, world, compile, max(5, min(30, steps // 10)), sync)
                rows.append(dict(preset=preset, batch=batch, name=name, rate=rate, tokens=rate * batch * seq_len,
                                 mfu=share, ratio=rate / base if base else None, wall=wall, parts=parts))
                print(f"  {preset:5s} batch {batch:5d} {name:13s} {rate:8.2f} steps/s  ({wall:.0f} s with set-up and "
                      "validation)", flush=True)
    print(f"\n{'preset':6s} {'batch':>5s}  {'setting':13s} {'steps/s':>8s} {'tokens/s':>10s} {'MFU':>6s} {'vs fp32':>7s}"
          + ("" if args.no_breakdown else "   " + " ".join(f"{k:>9s}" for k in PARTS) + "  (ms/step)"))
    for r in rows:
        share = "n/a" if r["mfu"] is None else f"{100 * r['mfu']:.1f}%"
        ratio = "-" if r["ratio"] is None else f"{r['ratio']:.2f}x"
        line = f"{r['preset']:6s} {r['batch']:5d}  {r['name']:13s} {r['rate']:8.2f} {r['tokens']:10.0f} {share:>6s} {ratio:>7s}"
        if r["parts"] is not None:
            line += "   " + " ".join(f"{r['parts'][k]:9.2f}" for k in PARTS)
        print(line)
    peak_note = (f"--peak-tflops {args.peak_tflops:g}" if args.peak_tflops else
                 "dense peak of the device by name (models.flops.PEAK_TFLOPS)" if cuda else "no peak known for a CPU")
    print(f"\nMFU: tokens/s x training FLOPs per token / peak ({peak_note}). vs fp32: steps/s over fp32's at the same "
          "preset and batch.")
    return 0


if __name__ == "__main__":
    from nextlat_probe.cli import run_main

    run_main(main)
