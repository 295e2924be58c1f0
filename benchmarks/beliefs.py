"""Exact Mess3 beliefs for all 3**10 sequences of length 10: vectorised vs a per-sequence loop.

    .venv/bin/python benchmarks/beliefs.py

``HMM.beliefs`` loops over positions only and updates every sequence with one matrix product
per position; the reference below is the textbook filter, one sequence and one token at a
time. Both must agree to rounding error.
"""
from __future__ import annotations

import itertools
import time

import numpy as np

from nextlat_probe.worlds import Mess3


def beliefs_loop(T: np.ndarray, initial: np.ndarray, tokens: np.ndarray) -> np.ndarray:
    out = np.empty((*tokens.shape, T.shape[1]))
    for i, seq in enumerate(tokens):
        eta = initial
        for t, x in enumerate(seq):
            u = eta @ T[x]
            eta = u / u.sum()
            out[i, t] = eta
    return out


def main() -> None:
    world = Mess3()
    tokens = np.array(list(itertools.product(range(3), repeat=10)), dtype=np.int64)
    world.beliefs(tokens[:10])  # warm-up

    t0 = time.perf_counter()
    fast = world.beliefs(tokens)
    t_fast = time.perf_counter() - t0

    t0 = time.perf_counter()
    slow = beliefs_loop(world.T, world.initial, tokens)
    t_slow = time.perf_counter() - t0

    print(f"Mess3(x=0.05, a=0.85): {len(tokens)} sequences x {tokens.shape[1]} tokens")
    print(f"vectorised beliefs : {t_fast * 1e3:9.1f} ms")
    print(f"per-sequence loop  : {t_slow * 1e3:9.1f} ms")
    print(f"speed-up           : {t_slow / t_fast:9.1f}x")
    print(f"max |difference|   : {np.abs(fast - slow).max():.2e}")


if __name__ == "__main__":
    main()
