"""Training throughput of the real trainer (``nextlat_probe.train``'s loop: data, step,
logging), per preset and execution setting, side by side in one process.

    .venv/bin/python benchmarks/throughput.py --device cuda                      # small + base, every setting
    .venv/bin/python benchmarks/throughput.py --device cuda --presets base --objective nextlat
    .venv/bin/python benchmarks/throughput.py --quick                            # CPU: tiny, fp32 +- prefetch

Settings, each a full short training run in a temporary folder (same seed, same batches):

- ``fp32``: the baseline (no prefetch, no compile, float32 forward);
- ``fp32+prefetch``: batches drawn ahead in a thread (``BatchPrefetcher``);
- ``bf16+prefetch`` (CUDA with bfloat16): autocast forward, float32 weights and reductions;
- ``bf16+prefetch+compile`` (CUDA): ``torch.compile`` of the hook-free training forward.

Steps/s is the median over the run's log records of ``tokens_per_s / (batch x seq_len)``
after the first record (warm-up and compilation are excluded). The ratio column is each
setting against ``fp32`` of the same preset, measured in the same process a moment apart.
Settings run one after another, not round-robin (each is a whole training loop), so on a
shared machine repeat the run and compare.
"""
from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

SETTINGS = {  # name -> (precision, prefetch, compile)
    "fp32": ("fp32", False, False),
    "fp32+prefetch": ("fp32", True, False),
    "bf16+prefetch": ("bf16", True, False),
    "bf16+prefetch+compile": ("bf16", True, True),
}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--presets", default=None, help="comma list (default: small,base on CUDA, tiny,mini on CPU)")
    p.add_argument("--objective", default="gpt", choices=("gpt", "nextlat", "mtp"))
    p.add_argument("--world", default="taxi")
    p.add_argument("--steps", type=int, default=None, help="steps per setting (default 300 on CUDA, 60 on CPU)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--device", default="auto", help="cpu, cuda or auto")
    p.add_argument("--settings", default=None, help=f"comma list among {', '.join(SETTINGS)} (default: all "
                   "that the device supports)")
    p.add_argument("--quick", action="store_true", help="CPU: tiny only, 40 steps")
    return p.parse_args(argv)


def steps_per_second(metrics_path: Path, tokens_per_step: int) -> float:
    from nextlat_probe.training.log import read_metrics

    rates = [r["tokens_per_s"] for r in read_metrics(metrics_path) if "tokens_per_s" in r][1:]
    if not rates:
        raise RuntimeError(f"{metrics_path}: no timed log records (train more steps)")
    return statistics.median(rates) / tokens_per_step


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    import torch

    from nextlat_probe.cli import UsageError
    from nextlat_probe.models.transformer import resolve_device
    from nextlat_probe.training.config import TrainConfig
    from nextlat_probe.training.trainer import default_seq_len, train
    from nextlat_probe.worlds import make_world

    device = resolve_device(args.device)  # a DeviceError: one line, exit 2 (run_main)
    cuda = device.type == "cuda"
    presets = (args.presets or ("small,base" if cuda else ("tiny" if args.quick else "tiny,mini"))).split(",")
    steps = args.steps or (300 if cuda else (40 if args.quick else 60))
    bf16 = cuda and torch.cuda.is_bf16_supported()
    names = args.settings.split(",") if args.settings else [n for n, (prec, _, comp) in SETTINGS.items()
                                                            if (prec == "fp32" or bf16) and (not comp or cuda)]
    unknown = [n for n in names if n not in SETTINGS]
    if unknown:
        raise UsageError(f"--settings: unknown {unknown[0]!r}; choose among {', '.join(SETTINGS)}")
    world = make_world(args.world)
    seq_len = default_seq_len(world)
    tokens_per_step = args.batch_size * seq_len
    dev = torch.cuda.get_device_name(device) if cuda else f"cpu ({torch.get_num_threads()} threads)"
    print(f"throughput: world={args.world} objective={args.objective} batch={args.batch_size} seq_len={seq_len} "
          f"steps={steps} device={dev} torch={torch.__version__}")
    rows = []
    for preset in presets:
        base = None
        for name in names:
            precision, prefetch, compile = SETTINGS[name]
            cfg = TrainConfig(world=args.world, objective=args.objective, preset=preset, steps=steps,
                              batch_size=args.batch_size, eval_every=steps, save_every=steps, n_val=64,
                              warmup_steps=min(50, steps // 5), device=str(device), precision=precision)
            with tempfile.TemporaryDirectory() as tmp:
                t0 = time.perf_counter()
                train(cfg, out_dir=Path(tmp) / "run", progress=False, prefetch=prefetch, compile=compile)
                wall = time.perf_counter() - t0
                rate = steps_per_second(Path(tmp) / "run" / "metrics.jsonl", tokens_per_step)
            base = rate if name == "fp32" else base
            rows.append((preset, name, rate, wall, rate / base if base else float("nan")))
            print(f"  {preset:5s} {name:22s} {rate:8.2f} steps/s  ({wall:.0f} s with set-up and validation)", flush=True)
    print("\npreset  setting                 steps/s   vs fp32")
    for preset, name, rate, _, ratio in rows:
        print(f"{preset:6s}  {name:22s} {rate:8.2f}   {ratio:6.2f}x")
    return 0


if __name__ == "__main__":
    from nextlat_probe.cli import run_main

    run_main(main)
