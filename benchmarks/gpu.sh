#!/usr/bin/env bash
# The GPU measurements behind the README's performance table, in one go (~10 minutes on an
# H100/H200-class GPU). Run from the repository root with the project's Python:
#
#     PY=.venv/bin/python bash benchmarks/gpu.sh [OUT_DIR]
#
# Each step writes its output to OUT_DIR (default gpu-results/) and to the terminal. The
# first step checks the CUDA samplers against the reference samplers and a short bf16 +
# compile training run before anything is timed.
set -euo pipefail
PY=${PY:-python}
OUT=${1:-gpu-results}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1

# 1. correctness on the GPU: every world's sampler drawn on CUDA against its reference (~1 min)
"$PY" -m pytest -q -p no:cacheprovider tests/test_samplers.py -k cuda 2>&1 | tee "$OUT/samplers.txt"

# 2. a short training run with the GPU defaults and --compile: no recompile warnings after warm-up
"$PY" -m nextlat_probe.train --world taxi --objective nextlat --preset small --steps 200 --eval-every 100 \
    --compile --device cuda --out "$OUT/run-compile" --overwrite --no-progress 2>&1 | tee "$OUT/compile-run.txt"

# 3. throughput, tokens/s, MFU and the time breakdown: small and base at batch 64 and at the
#    batch that fills the device, every setting (targets: base bf16 >= 40% MFU at batch 512;
#    small >= 150 steps/s at batch 64; bf16+compile >= 1.2x bf16)
"$PY" benchmarks/throughput.py --device cuda --presets small --steps 200 2>&1 | tee "$OUT/throughput-small.txt"
"$PY" benchmarks/throughput.py --device cuda --presets base --steps 200 --settings fp32,bf16,bf16+compile \
    2>&1 | tee "$OUT/throughput-base.txt"

# 4. NextLat d=1 / d=8 against GPT at batch 64 (targets <= 1.10x and <= 1.60x)
"$PY" benchmarks/train_step.py --device cuda --presets small 2>&1 | tee "$OUT/train-step.txt"
