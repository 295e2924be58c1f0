"""Rebuild the street map of a taxi model, from its behaviour and from its hidden states.

Behaviour: trips sampled from the model (epsilon-cutoff sampling, as in the compression
test) from held-out (origin, destination) prompts, replayed on the true map: edges
recovered / missed / invented, trips explained / repaired / failed / ill-formed, under
Vafa et al.'s rules (protocol ``vafa2024``, default) or this package's earlier lenient rule
(``lenient``); the record's ``protocol`` names which, with its degree cap and distance bound. Representations: the mean
hidden state of every intersection embedded in 2-D by a cross-fitted linear probe to
(x, y) and by MDS aligned with Procrustes. Definitions: ``nextlat_probe.analysis.mapping``.
"""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from ..errors import AnalysisError
from ..records import identity, make_record, rate
from .inputs import Inputs, load_models, parse_layers

#: ``default_rng([seed, stream])`` streams of the prompts, of the sampling, and of the true
#: trips whose hidden states are averaged (when no shared ``Inputs`` are given)
PROMPT_STREAM, SAMPLE_STREAM, STATES_STREAM = 0x3A, 0x3B, 0x4D


def _edge_list(edges: list[tuple[int, str, int]]) -> list[list[Any]]:
    """Edges as ``[src, direction, dst]`` (node indices of the map, direction names)."""
    return [[int(s), str(d), int(t)] for s, d, t in edges]


def behaviour_metrics(recon: Any, list_edges: bool = False) -> dict[str, Any]:
    """The ``behaviour`` variant's metrics of a ``ReconstructionResult``."""
    m = {"explained": rate(recon.n_explained, recon.n_trips - recon.n_ill_formed),
         "edge_recall": rate(len(recon.recovered), recon.street_map.n_edges),
         "edge_precision": rate(len(recon.recovered), len(recon.recovered) + len(recon.invented)),
         "n_trips": int(recon.n_trips), "n_malformed": int(recon.n_malformed), "n_true_valid": int(recon.n_true_valid),
         "n_true_edges": int(recon.street_map.n_edges), "n_recovered": len(recon.recovered),
         "n_invented": len(recon.invented), "n_missed": len(recon.missed),
         "invented_edges": _edge_list(recon.invented), "missed_edges": _edge_list(recon.missed),
         "trips_used": rate(recon.n_explained, recon.n_trips), "n_ill_formed": int(recon.n_ill_formed),
         "n_no_turns": int(recon.n_no_turns), "n_followed": int(recon.n_followed),
         "n_repaired": int(recon.n_repaired), "n_failed": int(recon.n_failed)}
    if list_edges:
        m["recovered_edges"] = _edge_list(recon.recovered)
    return m


def embedding_metrics(emb: Any, rep: Any) -> dict[str, Any]:
    """The ``probe`` / ``mds`` variant's metrics of one ``Embedding``."""
    seen = np.flatnonzero(np.isfinite(emb.coords).all(axis=1))
    return {"disparity": float(emb.disparity), "r2": None if emb.r2 is None else float(emb.r2),
            "nn_map_neighbour": rate(emb.nn_map_neighbour.count, emb.nn_map_neighbour.n),
            "nn_true_nearest": rate(emb.nn_true_nearest.count, emb.nn_true_nearest.n),
            "n_nodes_seen": int(rep.n_nodes_seen), "reference": rep.reference, "note": rep.note,
            "nodes": seen.tolist(), "coords": np.asarray(emb.coords)[seen].tolist()}


def trips_identity(path: Any) -> dict[str, Any]:
    """Identity of a reconstruction from a file of trips (no model behind it)."""
    from pathlib import Path

    return {"name": Path(str(path)).stem, "objective": None, "step": None, "seed": None, "source": str(path),
            "horizon": None, "val_loss": None, "val_floor": None, "gap_to_floor": None}


def run_mapping(
    models: Sequence[Any],
    *,
    n_trips: int = 1000,
    n_seqs: int = 512,
    layers: str | int = "last",
    epsilon: float = 0.01,
    max_distance: float | None = None,
    protocol: str = "vafa2024",
    max_degree: int = 4,
    list_edges: bool = False,
    seed: int = 0,
    device: str = "cpu",
    progress: bool = False,
    inputs: Inputs | None = None,
    batch_size: int = 256,
) -> list[dict[str, Any]]:
    """Per taxi model: one ``mapping`` record of variant ``behaviour`` and one per hidden-state
    embedding (``probe`` when the map has coordinates, ``mds``) at the one ``layers`` site.
    ``protocol`` / ``max_degree`` / ``max_distance``: the behavioural reconstruction's rules
    (``nextlat_probe.analysis.mapping.reconstruct_map``).
    With ``inputs`` the node means come from its shared sequences and cached states."""
    from ..activations import collect, layer_label
    from ..analysis.generation import regime_of
    from ..analysis.mapping import embed_node_states, node_means, reconstruct_map
    from ..analysis.worldmodel import check_taxi_world, generate, model_predictor, turn_budget
    from ..progress import progress as bar

    if n_trips < 1 or n_seqs < 1:
        raise AnalysisError(f"n_trips and n_seqs must be positive, got {n_trips} and {n_seqs}")
    if not 0 < epsilon < 1:
        raise AnalysisError(f"epsilon must lie in (0, 1), got {epsilon}")
    _check_protocol(protocol, max_degree)
    loaded = inputs.models if inputs is not None else load_models(models, device=device)
    sites = []
    for m in loaded:  # every check before any work (and before any progress output)
        try:
            check_taxi_world(m.world)
        except AnalysisError as exc:
            raise AnalysisError(f"{m.path}: {exc}") from None
        hooks = parse_layers(layers, m.model_config.n_layers)
        if len(hooks) != 1:
            raise AnalysisError(f"--layers: maps are drawn from one layer, got {layers!r}")
        sites.append(hooks[0])
    out: list[dict[str, Any]] = []
    for i, (m, hook) in enumerate(bar(list(zip(loaded, sites)), desc="maps", disable=not progress)):
        world = m.world
        predict = model_predictor(m.model, batch_size=batch_size)
        prompts = world.sample(int(n_trips), seed=np.random.default_rng([int(seed), PROMPT_STREAM])).tokens[:, :2]
        budget = turn_budget(world, predict, 2)
        trips = generate(predict, world, prompts, budget + 1, sample=True, epsilon=epsilon,
                         rng=np.random.default_rng([int(seed), SAMPLE_STREAM]))
        recon = reconstruct_map(world.map, trips, max_distance=max_distance, protocol=protocol,
                                max_degree=max_degree)
        if inputs is not None:
            tokens, states, H = inputs.tokens(i), inputs.sample(i).states, inputs.hidden(i, [hook])[hook]
            seq_params = inputs.params_of(i)
        else:
            sample = world.sample(int(n_seqs), seed=np.random.default_rng([int(seed), STATES_STREAM]))
            tokens, states = sample.tokens, sample.states
            if tokens.shape[1] > m.model_config.n_ctx:
                raise AnalysisError(f"{m.path}: trips of {tokens.shape[1]} tokens exceed the context "
                                    f"({m.model_config.n_ctx})")
            H = collect(m.model, tokens, [hook], batch_size=64)[hook]
            seq_params = {"n_seqs": int(n_seqs), "seq_len": int(tokens.shape[1]), "seed": int(seed)}
        mask = np.asarray(world.position_mask(tokens), dtype=bool).copy()
        mask[:, 0] = False  # the origin token alone: destination not yet known
        means, _ = node_means(H, np.asarray(states)[..., 0], mask, world.map.n_nodes)
        rep = embed_node_states(means, world.map, seed=seed)
        ident = identity(m)
        params = {"n_trips": int(n_trips), "epsilon": float(epsilon), "max_turns": int(budget),
                  "max_distance": float(recon.max_distance), "distance": recon.distance, "seed": int(seed),
                  **regime_of(predict)}
        out.append(make_record(ident, "mapping", behaviour_metrics(recon, list_edges), params, variant="behaviour",
                               protocol=recon.protocol_dict()))
        for emb in (rep.probe, rep.mds):
            if emb is not None:
                out.append(make_record(ident, "mapping", embedding_metrics(emb, rep), seq_params,
                                       layer=layer_label(hook), variant=emb.method,
                                       protocol={**EMBEDDING_PROTOCOL, "method": emb.method}))
    return out


#: the representation maps are this package's (no published protocol): the mean hidden
#: state per intersection, embedded in 2-D by a linear probe onto the map's coordinates or
#: by MDS, scored by neighbourhood agreement with the true map
EMBEDDING_PROTOCOL = {"name": "node_means", "states": "mean hidden state per current intersection, "
                      "origin-only position dropped"}


def _check_protocol(protocol: str, max_degree: int) -> None:
    from ..analysis.mapping import PROTOCOLS

    if protocol not in PROTOCOLS:
        raise AnalysisError(f"unknown map reconstruction protocol {protocol!r} (one of {', '.join(PROTOCOLS)})")
    if isinstance(max_degree, bool) or not isinstance(max_degree, (int, np.integer)) or max_degree < 1:
        raise AnalysisError(f"max_degree must be a positive integer, got {max_degree!r}")


def map_from_trips(street_map: Any, trips_path: Any, max_distance: float | None = None,
                   list_edges: bool = False, protocol: str = "vafa2024", max_degree: int = 4) -> dict[str, Any]:
    """The ``behaviour`` record of a file of trips (one per line: origin dest turns... end)."""
    from ..analysis.mapping import reconstruct_map
    from ..worlds.taxi import parse_sequences

    _check_protocol(protocol, max_degree)
    trips = parse_sequences(trips_path, street_map)
    if not len(trips):
        raise AnalysisError(f"{trips_path}: holds no trips (one per line: origin dest turns... end, with the map's "
                            "node ids)")
    recon = reconstruct_map(street_map, trips, max_distance=max_distance, protocol=protocol, max_degree=max_degree)
    if recon.n_trips == recon.n_malformed:
        raise AnalysisError(f"{trips_path}: none of its {recon.n_trips} lines is a trip on map {street_map.name!r} "
                            "(origin dest turns... end, with the map's node ids)")
    params = {"trips_file": str(trips_path), "max_distance": float(recon.max_distance), "distance": recon.distance}
    return make_record(trips_identity(trips_path), "mapping", behaviour_metrics(recon, list_edges), params,
                       variant="behaviour", protocol=recon.protocol_dict())


__all__ = ["run_mapping", "map_from_trips", "behaviour_metrics", "embedding_metrics"]
