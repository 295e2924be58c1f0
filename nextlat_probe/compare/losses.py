"""Loss per position against the exact floor (the world's exact predictive distribution),
per model, on the shared sequences."""
from __future__ import annotations

from typing import Any, Sequence

from ..records import identity, make_record
from .inputs import Inputs, resolve_inputs

#: the floor is the world's exact target distribution on the very same tokens
PROTOCOL = {"name": "exact_floor", "floor": "mean -log p_exact(target) per position, same tokens"}


def run_position_loss(
    models: Sequence[Any],
    *,
    n_seqs: int = 256,
    seq_len: int | None = None,
    seed: int = 0,
    device: str = "cpu",
    progress: bool = False,
    inputs: Inputs | None = None,
) -> list[dict[str, Any]]:
    """One ``position_loss`` record per model: mean cross-entropy and exact floor per target
    position (``positions`` are those of the predicted tokens), and their means."""
    from ..analysis.losses import position_losses

    inp = resolve_inputs(models, inputs, n_seqs=n_seqs, seq_len=seq_len, seed=seed, device=device,
                         progress=progress)
    return [make_record(identity(m), "position_loss", position_losses(m.model, m.world, inp.tokens(i)),
                        inp.params_of(i), protocol={**PROTOCOL, "n_seqs": int(inp.n_seqs),
                                                    "seq_len": int(inp.tokens(i).shape[1])})
            for i, m in enumerate(inp.models)]


__all__ = ["run_position_loss"]
