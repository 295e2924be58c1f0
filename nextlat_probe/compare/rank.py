"""Effective rank of hidden states, per model and layer (the NextLat paper's protocol by
default: last block's residual, 256 sequences, uncentred, singular values < 1e-12 x the
largest dropped)."""
from __future__ import annotations

from typing import Any, Sequence

from ..errors import AnalysisError
from ..records import identity, make_record
from .inputs import Inputs, parse_layers, resolve_inputs

TOL = 1e-12


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
) -> list[dict[str, Any]]:
    """One ``rank`` record per model and layer (``nextlat_probe.records`` shape).

    Hidden states already in ``inputs`` are used as they are; otherwise they are streamed
    (count, sum and X^T X per layer in float64), so N x D is never held in memory."""
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
        for h in hooks:
            res = rank_report(stats[h], center=center, tol=TOL).to_dict()
            res.pop("centered", None)
            out.append(make_record(ident, "rank", res, params, layer=layer_label(h)))
    return out


__all__ = ["run_rank"]
