"""Export a checkpoint as a Hugging Face folder: ``python -m nextlat_probe.export RUN/ckpt.pt --hf OUT_DIR``.

``OUT_DIR`` loads in ``transformers`` as ``GPT2LMHeadModel`` with no code of this package
(``config.json`` + ``model.safetensors``); NextLat's p_psi and MTP's heads go beside it in
``nextlat_dynamics.safetensors``, the world, configs and validation numbers in
``nextlat_config.json``, and a model card in ``README.md``. ``nextlat_probe.load_model(OUT_DIR)``
and every analysis CLI read the folder back. Architectures GPT-2 cannot hold (rotary or no
positions, RMSNorm, ...) are refused in one line. Module: ``nextlat_probe.hfexport``.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from .cli import ArgumentParser, UsageError, run_main


def build_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(
        prog="python -m nextlat_probe.export",
        description="Export a nextlat_probe checkpoint as a Hugging Face GPT-2 folder (GPT2LMHeadModel: config.json + "
                    "model.safetensors), with p_psi / MTP heads in nextlat_dynamics.safetensors, the world and "
                    "training record in nextlat_config.json and a model card README.md.")
    p.add_argument("ckpt", type=Path, metavar="CKPT", help="checkpoint (ckpt.pt) or run folder")
    p.add_argument("--hf", type=Path, required=True, metavar="OUT_DIR",
                   help="the folder to write (new or empty; an earlier export only with --overwrite)")
    p.add_argument("--overwrite", action="store_true", help="replace an earlier export in OUT_DIR (nothing else "
                   "is ever replaced)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if not args.ckpt.exists():
        raise UsageError(f"{args.ckpt}: no such file")
    from .hfexport import export_hf

    res = export_hf(args.ckpt, args.hf, overwrite=args.overwrite)
    print(f"{'replaced' if res.replaced else 'wrote'} {res.path}: {', '.join(res.files)}")
    print(f"GPT2LMHeadModel ({res.objective} model); transformers' logits on the folder match ours "
          f"(max difference {res.max_logit_difference:.2g})")
    return 0


if __name__ == "__main__":
    run_main(main)
