"""Effective rank of hidden states, per model and layer (by default: last block's residual,
256 sequences at the training length, uncentred, singular values below 1e-12 dropped;
``protocol="nextlat2025"`` for the NextLat paper's 256 x 256 tokens)."""
from __future__ import annotations

from typing import Any, Sequence

from ..errors import AnalysisError
from ..records import identity, make_record
from .inputs import Inputs, parse_layers, resolve_inputs

TOL = 1e-12
#: the NextLat paper's protocol (arXiv 2511.05963): final-layer (last block) states of 256
#: sequences x 256 tokens (or the world's maximum length, stated), uncentred, s < 1e-12 dropped
NEXTLAT2025 = {"name": "nextlat2025", "n_seqs": 256, "seq_len": 256, "layer": "last", "center": False, "tol": TOL}
#: the default: this package's shared sequences (training length), any layers
TRAINING_LENGTH = {"name": "training_length",
                   "differs_from": "nextlat2025 uses 256 sequences x 256 tokens of the last block, uncentred "
                                   "(--protocol nextlat2025)"}


def _world_max_length(world: Any, default: int) -> int:
    """Longest sequence a world produces: taxi ``origin dest`` + ``max_len`` turns + ``end``;
    ``default`` (the context) for worlds without an end."""
    if getattr(world, "name", None) == "taxi" and getattr(world, "max_len", None):
        return 2 * (getattr(world, "origin", "visible") == "visible") + int(world.max_len) + 1
    return int(default)


def run_rank(
    models: Sequence[Any],
    *,
    n_seqs: int = 256,
    seq_len: int | None = None,
    layers: str | Sequence[int | str] = "last",
    center: bool = False,
    seed: int = 0,
    device: str = "cpu",
    progress: bool = False,
    inputs: Inputs | None = None,
    batch_size: int = 64,
    protocol: str | None = None,
) -> list[dict[str, Any]]:
    """One ``rank`` record per model and layer (``nextlat_probe.records`` shape).

    Hidden states already in ``inputs`` are used as they are; otherwise they are streamed
    (count, sum and X^T X per layer in float64), so N x D is never held in memory.

    ``protocol="nextlat2025"`` fixes the NextLat paper's settings (``NEXTLAT2025``; the
    sequence length is 256 tokens or, when the model or world is shorter, the longest
    available, recorded in the protocol block as ``seq_len`` with ``seq_len_requested``);
    the records then carry that protocol block. Otherwise the block is ``training_length``
    (``TRAINING_LENGTH``): the shared sequences at the models' training length, with the
    settings used and what differs from nextlat2025 stated."""
    block: dict[str, Any] = {}
    if protocol is not None:
        if protocol != "nextlat2025":
            raise AnalysisError(f"rank protocol must be 'nextlat2025', got {protocol!r}")
        if inputs is not None:
            raise AnalysisError("protocol nextlat2025 samples its own 256 sequences; pass models, not inputs")
        from .inputs import load_models

        loaded = load_models(models, device=device)
        longest = min(int(m.model_config.n_ctx) for m in loaded)
        world_max = min(_world_max_length(m.world, longest) for m in loaded)
        n_seqs, seq_len = NEXTLAT2025["n_seqs"], min(NEXTLAT2025["seq_len"], longest, max(world_max, 2))
        layers, center = "last", False
        models = loaded
        block = {**NEXTLAT2025, "seq_len": int(seq_len), "seq_len_requested": NEXTLAT2025["seq_len"]}
    from ..activations import collect_stats, layer_label
    from ..analysis.rank import rank_report
    from ..analysis.stats import SufficientStats

    inp = resolve_inputs(models, inputs, n_seqs=n_seqs, seq_len=seq_len, seed=seed, device=device,
                         progress=progress, batch_size=batch_size)
    out: list[dict[str, Any]] = []
    for i, m in enumerate(inp.models):
        hooks = parse_layers(layers, m.model_config.n_layers)
        mask = inp.mask(i)
        cached = [h for h in hooks if inp.has_hidden(i, h)]
        stats = {h: SufficientStats(a.shape[-1]).update(a[mask].astype("float64"))
                 for h, a in inp.hidden(i, cached).items()}
        rest = [h for h in hooks if h not in stats]
        if rest:
            try:
                stats.update(collect_stats(m.model, inp.tokens(i), rest, mask=mask, batch_size=inp.batch_size,
                                           progress=progress))
            except AnalysisError as exc:  # e.g. NaN weights: say which file
                raise AnalysisError(f"{m.path}: {exc} (are the weights finite?)") from None
        ident = identity(m)
        params = {**inp.params_of(i), "center": bool(center), "tol": TOL}
        prot = block or {**TRAINING_LENGTH, "n_seqs": int(inp.n_seqs), "seq_len": int(inp.tokens(i).shape[1]),
                         "center": bool(center), "tol": TOL}
        for h in hooks:
            res = rank_report(stats[h], center=center, tol=TOL).to_dict()
            res.pop("centered", None)
            out.append(make_record(ident, "rank", res, params, layer=layer_label(h), protocol=prot))
    return out


__all__ = ["run_rank"]
