"""The NextLat paper's tasks beyond the taxi world, per model: A5 state tracking with length
generalisation (tagging form) and path-star planning. Definitions:
``nextlat_probe.analysis.a5eval`` and ``nextlat_probe.analysis.pathstar``.

A5 (tagging worlds): one ``taskeval`` record per model, evaluation length and variant:
``transformer`` (the model's own head at every position) and, for NextLat models,
``p_psi rollout`` (p_psi unrolled from the transformer's latent at ``start``, decoded by the
frozen head, beside the transformer on the same positions). Path-star worlds: one record
per model (variant ``greedy``): exact-path, first-step and valid-path (Clever-Hans) rates of
greedy paths, plus teacher-forced accuracy."""
from __future__ import annotations

from typing import Any, Sequence

from ..errors import AnalysisError
from ..records import identity, make_record
from .inputs import load_models


def train_length(m: Any) -> int:
    """The sequence length a checkpoint was trained at (its training config, else the
    world's default)."""
    seq = (m.train_config or {}).get("seq_len")
    return int(seq or getattr(m.world, "default_length", 0) or 0)


def task_of(world: Any) -> str:
    """``a5`` (tagging A5), ``pathstar`` or an AnalysisError naming what is supported."""
    if getattr(world, "name", None) == "pathstar":
        return "pathstar"
    if getattr(world, "name", None) == "a5" and getattr(world, "tagging", False):
        return "a5"
    raise AnalysisError(f"taskeval needs an A5 checkpoint in tagging form or a path-star checkpoint, got world "
                        f"{getattr(world, 'name', '?')!r}" + (" (interleaved form: retrain with --world a5)"
                                                              if getattr(world, "name", None) == "a5" else ""))


def run_taskeval(
    models: Sequence[Any],
    *,
    lengths: Sequence[int] | None = None,
    n_seqs: int = 256,
    start: int | None = None,
    seed: int = 0,
    device: str = "cpu",
    progress: bool = False,
    batch_size: int = 256,
) -> list[dict[str, Any]]:
    """Task records of every model (module docstring). ``lengths``: A5 evaluation lengths
    (default 12, 18, 24, 36, and never below the training length's own); ``n_seqs``: words
    per length (A5) or graphs (path-star); ``start``: the roll-out's first position (A5,
    default ``a5eval.DEFAULT_START``)."""
    from ..analysis import a5eval
    from ..analysis.pathstar import evaluate_pathstar
    from ..analysis.worldmodel import model_predictor
    from ..progress import progress as bar

    if int(n_seqs) < 1:
        raise AnalysisError(f"n_seqs must be positive, got {n_seqs}")
    loaded = load_models(models, device=device)
    tasks = []
    for m in loaded:
        try:
            tasks.append(task_of(m.world))
        except AnalysisError as exc:
            raise AnalysisError(f"{m.path}: {exc}") from None
    lens = [int(t) for t in (lengths or a5eval.DEFAULT_LENGTHS)]
    st = a5eval.DEFAULT_START if start is None else int(start)
    for m, task in zip(loaded, tasks):  # every check before any work (and before any progress output)
        if task == "a5" and max(lens) > int(m.model_config.n_ctx):
            raise AnalysisError(f"{m.path}: length {max(lens)} exceeds the model's context of {m.model_config.n_ctx} "
                                "(train with a larger --n-ctx to evaluate longer sequences)")
        if task == "a5" and m.dynamics is not None and not 0 <= st <= min(lens) - 2:
            raise AnalysisError(f"--start must lie in [0, {min(lens) - 2}] so that every length has a position "
                                f"after it, got {st}")
    out: list[dict[str, Any]] = []
    for m, task in bar(list(zip(loaded, tasks)), desc="task evaluation", disable=not progress):
        ident = identity(m)
        if task == "pathstar":
            res = evaluate_pathstar(model_predictor(m.model, batch_size=batch_size), m.world, n_graphs=n_seqs,
                                    seed=seed)
            metrics = {k: res[k] for k in ("exact_path", "first_step", "valid_path")}
            metrics.update(forced_token=res["forced"]["token"], forced_sequence=res["forced"]["sequence"],
                           forced_per_token=res["forced"]["per_token"])
            protocol = {"name": "pathstar_greedy", "decoding": "greedy from the prompt, path_length tokens",
                        "n_graphs": int(n_seqs), "first_step": "equals the goal arm's first node",
                        "valid_path": "a path from the centre to some leaf (the Clever-Hans signature)"}
            out.append(make_record(ident, "taskeval", metrics, res["params"], variant="greedy", protocol=protocol))
            continue
        trained = train_length(m)
        protocol = {"name": "a5_length", "train_length": trained, "lengths": lens,
                    "positional": getattr(m.model_config, "positional", "learned"),
                    "targets": "running product s_t at every position (tagging form)"}
        params = {"n_seqs": int(n_seqs), "seed": int(seed)}
        for acc in a5eval.length_accuracy(m.model, m.world, lens, n_seqs, seed, batch_size=batch_size):
            out.append(make_record(ident, "taskeval", _a5_metrics(acc, trained), {**params, "length": acc.length},
                                   variant="transformer", protocol=protocol))
        if m.dynamics is not None:
            for ro in a5eval.rollout_accuracy(m.model, m.dynamics, m.world, lens, st, n_seqs, seed,
                                              batch_size=batch_size):
                metrics = _a5_metrics(ro.rollout, trained)
                metrics.update(transformer_token_accuracy=ro.transformer.token,
                               transformer_sequence_accuracy=ro.transformer.sequence,
                               start_state_accuracy=ro.start_state)
                out.append(make_record(ident, "taskeval", metrics, {**params, "length": ro.length, "start": st},
                                       variant="p_psi rollout", protocol={**protocol, "start": st}))
    return out


def _a5_metrics(acc: Any, trained: int) -> dict[str, Any]:
    return {"length": int(acc.length), "beyond_training": bool(acc.length > trained),
            "token_accuracy": acc.token, "sequence_accuracy": acc.sequence,
            "positions": list(acc.positions), "per_position": list(acc.per_position)}


__all__ = ["run_taskeval", "task_of", "train_length"]
