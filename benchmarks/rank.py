"""Effective rank: streamed Gram statistics vs a dense SVD of the whole matrix.

    .venv/bin/python benchmarks/rank.py            # N = 1e4, 1e5, 1e6 x D = 256
    .venv/bin/python benchmarks/rank.py --quick    # N = 1e4, 1e5
    .venv/bin/python benchmarks/rank.py --cli-only # just the CLI wall-time split

Both routes get the same float32 hidden-state matrix (low-rank structure + noise + an
offset, like real residual streams). The streamed route feeds it to ``SufficientStats``
in batches of 4,096 rows (what collecting activations batch by batch does) and takes the
eigenvalues of the Gram; the dense route runs ``scipy.linalg.svdvals`` on the full
float64 matrix. Printed per N: wall time of each and their ratio, peak memory of each,
and the absolute difference of the two effective ranks (uncentred, the paper's setting).

Peak memory is measured with ``tracemalloc``: the peak of Python/numpy allocations made
*during* the call, on top of the input matrix that already exists. numpy and scipy's
LAPACK workspace arrays are numpy allocations and are counted; memory that OpenBLAS/LAPACK
allocate internally with malloc is not, so the dense figure is a lower bound.
tracemalloc stays on during the timed calls; with a handful of large allocations its
overhead is negligible.
"""
from __future__ import annotations

import argparse
import sys
import time

from _common import measure  # noqa: E402  (benchmarks/ is on sys.path when run as a script)


def make_states(n: int, d: int, seed: int = 0):
    """float32 [n, d]: 48-dim signal + small isotropic noise + a constant offset."""
    import numpy as np

    rng = np.random.default_rng(seed)
    A = rng.standard_normal((48, d), dtype=np.float32) / np.float32(np.sqrt(48))
    A *= np.float32(0.85) ** np.arange(48, dtype=np.float32)[:, None]
    offset = rng.standard_normal(d, dtype=np.float32) * np.float32(0.5)
    H = np.empty((n, d), dtype=np.float32)
    for i in range(0, n, 65536):
        m = min(65536, n - i)
        H[i : i + m] = rng.standard_normal((m, 48), dtype=np.float32) @ A
        H[i : i + m] += np.float32(0.05) * rng.standard_normal((m, d), dtype=np.float32)
        H[i : i + m] += offset
    return H


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="N = 1e4 and 1e5 only")
    ap.add_argument("--d", type=int, default=256, help="state dimension (default 256)")
    ap.add_argument("--batch", type=int, default=4096, help="rows per streamed batch (default 4096)")
    ap.add_argument("--cli-only", action="store_true", help="only the CLI wall-time split")
    args = ap.parse_args(argv)
    if args.cli_only:
        cli_timing()
        return

    from nextlat_probe.analysis.rank import rank_report
    from nextlat_probe.analysis.stats import SufficientStats

    sizes = [10_000, 100_000] if args.quick else [10_000, 100_000, 1_000_000]
    d = args.d
    print(f"effective rank, D = {d}, float32 states, streamed batches of {args.batch} rows")
    header = (
        f"{'N':>9} | {'stream s':>9} {'dense s':>9} {'dense/stream':>12} | "
        f"{'stream MiB':>10} {'dense MiB':>10} | {'erank':>10} {'|diff|':>9} {'rel diff':>9}"
    )
    print(header)
    print("-" * len(header))
    for n in sizes:
        H = make_states(n, d, seed=n)

        def streamed(H=H):
            st = SufficientStats(d)
            for i in range(0, H.shape[0], args.batch):
                st.update(H[i : i + args.batch])
            return rank_report(st)

        def dense(H=H):
            return rank_report(H)

        rs, ts, ms = measure(streamed)
        rd, td, md = measure(dense)
        diff = abs(rs.effective_rank - rd.effective_rank)
        print(
            f"{n:>9,} | {ts:>9.3f} {td:>9.3f} {td / ts:>11.1f}x | {ms:>10.1f} {md:>10.1f} | "
            f"{rd.effective_rank:>10.4f} {diff:>9.2e} {diff / rd.effective_rank:>9.2e}",
            flush=True,
        )
        del H
    print(
        "\nstream = SufficientStats.update per batch + eigvalsh of the D x D Gram; "
        "dense = scipy svdvals of the float64 N x D matrix.\n"
        "MiB = tracemalloc peak of allocations during the call (input matrix excluded; "
        "LAPACK-internal buffers not seen)."
    )


def cli_timing() -> None:
    """Wall time of ``python -m nextlat_probe.rank ckpt.pt`` on a tiny checkpoint, split into
    import, model load, forward passes and rank. Each part is timed in a fresh interpreter
    (the import cost is what a user pays once per command), with the CLI's own defaults:
    256 sequences, the last block's residual (`--layers last`), streamed statistics."""
    import json
    import subprocess
    import sys
    import tempfile
    from pathlib import Path

    from nextlat_probe.training.config import TrainConfig
    from nextlat_probe.training.trainer import train

    tmp = Path(tempfile.mkdtemp(prefix="rank_bench_"))
    ckpt = train(TrainConfig(world="taxi", objective="nextlat", steps=2, n_val=8, device="cpu"), tmp, progress=False).checkpoint
    probe = f"""
import json, time
t0 = time.perf_counter()
import torch, transformer_lens  # noqa: F401  (what the CLI imports)
import nextlat_probe.rank  # noqa: F401  (the CLI module itself)
from nextlat_probe.activations import collect_stats, layer_hook
from nextlat_probe.analysis.rank import rank_report
from nextlat_probe.compare import Inputs, load_models
t1 = time.perf_counter()
ck = load_models([{str(ckpt)!r}])[0]
t2 = time.perf_counter()
inputs = Inputs([ck], n_seqs=256, seed=0)  # the shared sequences compare.run_rank analyses
hook = layer_hook(ck.model_config.n_layers - 1)
stats = collect_stats(ck.model, inputs.tokens(0), [hook], mask=inputs.mask(0))
t3 = time.perf_counter()
res = rank_report(stats[hook])
t4 = time.perf_counter()
print(json.dumps(dict(imports=t1 - t0, load=t2 - t1, forward=t3 - t2, rank=t4 - t3)))
"""
    parts = json.loads(subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout)
    t = time.perf_counter()
    subprocess.run([sys.executable, "-m", "nextlat_probe.rank", str(ckpt), "--no-progress"], capture_output=True, check=True)
    total = time.perf_counter() - t
    t = time.perf_counter()
    subprocess.run([sys.executable, "-m", "nextlat_probe.rank", "--help"], capture_output=True, check=True)
    helptime = time.perf_counter() - t
    print("\nCLI wall time on a tiny taxi checkpoint (256 sequences, last block):")
    for k, v in parts.items():
        print(f"  {k:<8} {v:7.2f} s")
    print(f"  {'total':<8} {total:7.2f} s   (python -m nextlat_probe.rank ckpt.pt, interpreter start included)")
    print(f"  {'--help':<8} {helptime:7.2f} s")


if __name__ == "__main__":
    main()
    if "--cli-only" not in sys.argv and "--no-cli" not in sys.argv:
        cli_timing()
