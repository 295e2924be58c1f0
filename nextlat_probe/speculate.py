"""Self-speculative decoding: ``python -m nextlat_probe.speculate ckpt.pt [ckpt.pt ...]``.

NextLat's latent dynamics p_psi drafts tokens from the transformer's own hidden state, the
transformer verifies them in one forward, and the output is exactly greedy decoding's
(checked on every prompt: ``identical``). Prints, per checkpoint and draft policy
(``--draft fixed:4 --draft adaptive ...``): drafted tokens accepted per verification, tokens
per transformer forward, token positions the transformer computed per token, the draft
acceptance rate, p_psi calls per token, and the wall-clock speedup over greedy decoding
measured side by side in the same run. Regime (``--regime``): both decode from a key/value
cache (``kv_cache``, ``models.kvcache``) wherever the model is supported, else with a full
forward over the prefix per step (``full_forward``, also on request). GPT checkpoints have no
p_psi and are refused. Python: ``nextlat_probe.compare.run_speculative``;
algorithms: ``nextlat_probe.analysis.speculative``.
"""
from __future__ import annotations

import argparse
from typing import Any

from .cli import (
    ArgumentParser,
    add_model_args,
    add_output_args,
    check_output_path,
    check_positive,
    finish,
    load_cli_models,
    progress_enabled,
    resolve_device_arg,
    run_main,
)


def table(records: list[dict[str, Any]]) -> str:
    from .tables import format_table

    rows = []
    for r in records:
        m = r["metrics"]
        rows.append({"model": r["name"], "policy": r["variant"], "identical": "yes" if m["identical_to_greedy"] else
                     f"NO ({m['n_identical']}/{m['n_prompts']})",
                     "accepted/verif": f"{m['mean_accepted']:.2f}", "acceptance": f"{m['draft_acceptance']:.2f}",
                     "tokens/forward": f"{m['tokens_per_forward']:.2f}",
                     "positions/token": f"{m['positions_per_token']:.2f} (greedy {m['greedy_positions_per_token']:.2f})",
                     "p_psi calls/token": f"{m['draft_calls_per_token']:.2f}",
                     "greedy s": f"{m['seconds_greedy']:.3f}", "spec s": f"{m['seconds_speculative']:.3f}",
                     "speedup": f"{m['speedup']:.2f}x", "tokens": str(m["tokens_generated"])})
    cols = [(k, k, "") for k in rows[0]] if rows else []
    p = records[0]["params"] if records else {}
    note = (f"regime: {p.get('regime')} ({p.get('regime_note')}); {p.get('n_prompts')} prompts "
            f"({p.get('prompts')}), max_new {p.get('max_new')}, batch {p.get('batch_size')}, device {p.get('device')}, "
            f"fastest of {p.get('repeats')} alternating runs")
    return format_table(rows, cols) + "\n" + note


def build_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(
        prog="python -m nextlat_probe.speculate",
        description="Self-speculative decoding with NextLat's p_psi as the drafter, verified by the transformer "
                    "(output identical to greedy decoding).")
    add_model_args(p)
    p.add_argument("--draft", action="append", default=None, metavar="POLICY",
                   help="draft-length policy, repeatable: fixed:K, adaptive (confidence threshold tuned online, "
                        "cap 16) or adaptive:CAP (default fixed:4)")
    p.add_argument("--n-prompts", type=int, default=64, help="prompts to decode (default 64)")
    p.add_argument("--max-new", type=int, default=None,
                   help="tokens generated at most per prompt (default: taxi, the world-model turn budget + end; "
                        "other worlds, up to the context)")
    p.add_argument("--prefix-len", type=int, default=4, help="prompt length on non-taxi worlds (default 4)")
    p.add_argument("--batch-size", type=int, default=64, help="prompts decoded together (default 64)")
    p.add_argument("--repeats", type=int, default=1, help="alternating timing runs, fastest kept (default 1)")
    p.add_argument("--regime", choices=("auto", "kv_cache", "full_forward"), default="auto",
                   help="decoding regime of greedy and speculative decoding alike: auto (a key/value cache where the "
                        "model allows it, else full forwards), kv_cache (refuse models without one) or full_forward "
                        "(a full forward over the prefix per step) (default auto)")
    p.add_argument("--seed", type=int, default=0, help="seed of the prompts")
    add_output_args(p)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    check_positive(n_prompts=args.n_prompts, max_new=args.max_new, prefix_len=args.prefix_len,
                   batch_size=args.batch_size, repeats=args.repeats)
    check_output_path(args.plot)
    from .analysis.speculative import parse_policy

    draft = args.draft or ["fixed:4"]
    for d in draft:
        parse_policy(d)  # a bad policy fails before any model is loaded
    device = resolve_device_arg(args.device)
    from .compare import run_speculative

    models = load_cli_models(args, device)
    records = run_speculative(models, draft=draft, n_prompts=args.n_prompts, max_new=args.max_new,
                              prefix_len=args.prefix_len, seed=args.seed, device=device,
                              progress=progress_enabled(args), batch_size=args.batch_size, repeats=args.repeats,
                              regime=args.regime)
    if args.plot is not None:
        from .plots.interactive import speculative_figure, write_html

        write_html(speculative_figure(records), args.plot, title="Self-speculative decoding")
    return finish(args, records, lambda: table(records))


if __name__ == "__main__":
    run_main(main)
