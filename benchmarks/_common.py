"""Shared by the benchmark scripts (run as ``python benchmarks/<name>.py``)."""
from __future__ import annotations

import time
import tracemalloc


def measure(fn):
    """(result, seconds, peak MiB of allocations made during fn)."""
    tracemalloc.start()
    tracemalloc.reset_peak()
    base = tracemalloc.get_traced_memory()[0]
    t0 = time.perf_counter()
    out = fn()
    dt = time.perf_counter() - t0
    peak = tracemalloc.get_traced_memory()[1] - base
    tracemalloc.stop()
    return out, dt, peak / 2**20
