"""Checkpoint-level runners: models in, records out, one signature for every analysis.

``run_X(models, *, n_seqs, seq_len, layers, seed, device, progress, inputs, ...) -> list[Record]``

- ``models``: checkpoint paths, run folders or loaded models (``LoadedCheckpoint``);
- ``inputs``: a shared ``Inputs`` (sequences sampled once, hidden states computed once per
  model) so several analyses run on one forward pass;
- records: the one shape of ``nextlat_probe.records``.

Runners: ``run_rank``, ``run_probe``, ``run_transition``, ``run_worldmodel``, ``run_mapping``,
``run_position_loss``, ``run_speculative``, ``run_taskeval`` (A5 length generalisation,
path-star planning). The array-level mathematics lives in ``nextlat_probe.analysis``.

Notebook use::

    from nextlat_probe.compare import Inputs, run_rank, run_probe
    inputs = Inputs.build(["runs/gpt/ckpt.pt", "runs/nextlat/ckpt.pt"], n_seqs=256)
    records = run_rank(None, inputs=inputs, layers="all") + run_probe(None, inputs=inputs)
"""
from __future__ import annotations

from .inputs import N_SEQS, Inputs, analysis_length, held_out, load_models, parse_layers
from .losses import run_position_loss
from .mapping import map_from_trips, run_mapping
from .probe import run_probe
from .rank import run_rank
from .speculative import run_speculative
from .tasks import run_taskeval
from .transition import run_transition
from .worldmodel import run_worldmodel

__all__ = ["N_SEQS", "held_out", "Inputs", "analysis_length", "load_models", "parse_layers", "run_rank", "run_probe", "run_transition",
           "run_worldmodel", "run_mapping", "map_from_trips", "run_position_loss", "run_speculative",
           "run_taskeval"]
