"""What every runner starts from: models loaded once, sequences sampled once, hidden states
computed once.

``Inputs`` holds, for a list of models, ONE set of sequences per world (every model of the
same world is compared on identical tokens) and a cache of hidden states per model and
hook. A runner given an ``Inputs`` reads its sequences and states from it; the report
builds one ``Inputs``, asks for every hook it will need in one forward pass per model, and
hands the same object to every analysis.
"""
from __future__ import annotations

import sys
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

from ..errors import UsageError

#: ``np.random.default_rng([seed, SEQUENCE_STREAM])`` draws the shared analysis sequences;
#: a stream of its own so analysis sequences never coincide with training batches
SEQUENCE_STREAM = 7
#: ``all_sequences`` enumerates V^n sequences; more than this is refused (memory and time)
MAX_ALL_SEQUENCES = 200_000
#: sequences every hidden-state analysis reads by default, in every runner, CLI and the
#: report alike (the NextLat paper's 256 for the effective rank), so one metric gives one
#: number whichever tool computed it
N_SEQS = 256


def held_out(n_seqs: int) -> int:
    """Sequences held out for scoring by default: the last third (85 of 256). The probe
    and the post-hoc transition fit on the others; the same rule in every tool."""
    return max(1, int(n_seqs) // 3)


def load_models(models: Sequence[Any], device: str = "cpu", **source: Any) -> list[Any]:
    """Paths / run folders / model objects or loaded models -> loaded models, in order
    (``sources.load_model``; ``source``: its ``world``, ``config``, ``vocab``, ``hf`` for
    models this toolkit did not train). Every path is loaded before any analysis starts, so
    a bad file fails fast. Models with the same name and step
    (the same file given twice, two runs in folders of one name) get ``#1``, ``#2`` suffixes
    so their records stay apart; checkpoints of one run at different steps keep its name."""
    from ..sources import load_model

    if not models:
        raise UsageError("no models given")
    out = [load_model(m, device=device, **source) for m in models]
    # (name, step) identifies a record; checkpoints of one run along training share the name
    seen: dict[tuple[str, Any], int] = {}
    for m in out:
        seen[m.name, m.step] = seen.get((m.name, m.step), 0) + 1
    count: dict[tuple[str, Any], int] = {}
    for m in out:
        key = (m.name, m.step)
        if seen[key] > 1:
            count[key] = count.get(key, 0) + 1
            m.label = f"{key[0]}#{count[key]}"
    return out


def parse_layers(layers: str | int | Sequence[int | str], n_layers: int, flag: str = "layers") -> list[str]:
    """``all`` / ``last`` / ``0,2`` / ``-1`` / ``embed`` / ``ln_final`` -> hook names.

    ``all`` = embed and every block; ``last`` = the last block's residual; block indices
    may be negative (``-1`` = the last block, as in Python); ``embed`` (also ``emb``) and
    ``ln_final`` (also the older ``final``) name the embedding and the final LayerNorm."""
    from ..activations import layer_hook

    if isinstance(layers, str):
        text = layers.strip().lower()
        if text == "all":
            return [layer_hook("embed"), *(layer_hook(i) for i in range(n_layers))]
        if text == "last":
            return [layer_hook(n_layers - 1)]
        parts: list[Any] = [p.strip() for p in text.split(",") if p.strip()]
    elif isinstance(layers, int):
        parts = [layers]
    else:
        parts = list(layers)
    if not parts:
        raise UsageError(f"--{flag}: no layer given (use all, last, embed, ln_final or block indices)")
    hooks = []
    for part in parts:
        if part in ("emb", "embed", "ln_final", "final"):
            hooks.append(layer_hook(part))
            continue
        try:
            v = int(part)
        except (TypeError, ValueError):
            raise UsageError(f"--{flag}: {part!r} is not a layer (use all, last, embed, ln_final or block indices)") from None
        if not -n_layers <= v < n_layers:
            raise UsageError(f"--{flag}: block {v} out of range for a {n_layers}-layer model "
                             f"(0..{n_layers - 1}, or -{n_layers}..-1 from the end)")
        hooks.append(layer_hook(v % n_layers))
    return list(dict.fromkeys(hooks))


def analysis_length(model: Any, seq_len: int | None = None) -> int:
    """The sequence length to analyse: asked for, else the training length, within n_ctx."""
    n_ctx = int(model.model_config.n_ctx)
    if seq_len is not None:
        if seq_len < 2:
            raise UsageError(f"--seq-len must be at least 2, got {seq_len}")
        if seq_len > n_ctx:
            raise UsageError(f"--seq-len {seq_len} exceeds the context of {model.path} ({n_ctx} tokens)")
        return int(seq_len)
    trained = model.train_config.get("seq_len") or int(getattr(model.world, "default_length", 16))
    return min(int(trained), n_ctx)


def world_key(world: Any) -> str:
    return repr(sorted(world.spec().items()))


@dataclass
class Inputs:
    """Shared sequences and cached hidden states for a list of loaded models.

    ``n_seqs`` sequences of ``length`` tokens are drawn once per distinct world with
    ``default_rng([seed, SEQUENCE_STREAM])``; with ``all_sequences`` instead every one of the
    V^n sequences of length n (n = ``seq_len``, else the models' context) is used once,
    unweighted, and ``n_seqs`` becomes V^n. ``hidden(i, hooks)`` runs model ``i`` once over
    them for every hook not cached yet (float32 ``[n_seqs, length, D]``)."""

    models: list[Any]
    n_seqs: int
    seq_len: int | None = None
    seed: int = 0
    batch_size: int = 64
    progress: bool = False
    all_sequences: bool = False
    length: int = field(init=False)  # the shortest analysis length over the models
    _samples: dict[str, Any] = field(default_factory=dict, init=False, repr=False)
    _hidden: dict[tuple[int, str], np.ndarray] = field(default_factory=dict, init=False, repr=False)

    def __post_init__(self) -> None:
        if self.all_sequences:
            self._enumerate_all()
        if self.n_seqs < 1:
            raise UsageError(f"--n-seqs must be positive, got {self.n_seqs}")
        self._lengths: dict[str, int] = {}
        for m in self.models:  # one length per world: the shortest its models allow
            k = world_key(m.world)
            self._lengths[k] = min(self._lengths.get(k, 1 << 30), analysis_length(m, self.seq_len))
        self.length = min(self._lengths.values())
        self._check_memory()
        if len(self._lengths) > 1:
            print("warning: the models were trained on different worlds; each is analysed on its own world's "
                  "sequences", file=sys.stderr)

    def _check_memory(self) -> None:
        """Refuse (one line) sequences whose tokens and one layer's hidden states per model
        would not fit (``limits.memory_limit``), before any is drawn."""
        from .. import limits

        L = max(self._lengths.values())
        per_token = 8 * len(self._lengths) + sum(4 * int(m.model_config.d_model) for m in self.models)
        flag = "sequences (--all-sequences)" if self.all_sequences else f"--n-seqs {self.n_seqs:,} sequences"
        limits.check_memory(self.n_seqs * L * per_token,
                            f"{flag} of {L} tokens, with the hidden states of {len(self.models)} model(s)")

    def _enumerate_all(self) -> None:
        """Every sequence of the one world, as ``Sample``s with unknown (-1) hidden states."""
        from ..worlds.base import Sample

        keys = {world_key(m.world) for m in self.models}
        if len(keys) != 1:
            raise UsageError("--all-sequences needs every model on the same world")
        world = self.models[0].world
        if int(getattr(world, "prompt_length", 0)) or world.spec().get("kind") == "taxi":
            raise UsageError(f"--all-sequences enumerates HMM-style worlds, not {world.name!r}")
        n = int(self.seq_len) if self.seq_len is not None else min(int(m.model_config.n_ctx) for m in self.models)
        for m in self.models:
            analysis_length(m, n)  # within every context
        V = int(world.vocab_size)
        if V ** n > MAX_ALL_SEQUENCES:
            raise UsageError(f"--all-sequences: {V}^{n} = {V ** n} sequences exceed the limit of "
                             f"{MAX_ALL_SEQUENCES}; lower --seq-len")
        tokens = np.indices((V,) * n).reshape(n, -1).T.astype(np.int64)  # lexicographic order
        self.n_seqs = int(tokens.shape[0])
        self.seq_len = n
        self._all = Sample(tokens, np.full(tokens.shape, -1, dtype=np.int64))

    @classmethod
    def build(cls, models: Sequence[Any], n_seqs: int = 256, seq_len: int | None = None, seed: int = 0,
              device: str = "cpu", progress: bool = False, batch_size: int = 64, all_sequences: bool = False,
              **source: Any) -> "Inputs":
        return cls(load_models(models, device=device, **source), int(n_seqs), seq_len, int(seed), batch_size,
                   progress, all_sequences)

    def sample(self, i: int):
        """The shared ``Sample`` (tokens, hidden world states) for model ``i``'s world."""
        world = self.models[i].world
        key = world_key(world)
        if self.all_sequences:
            return self._all
        if key not in self._samples:
            try:
                self._samples[key] = world.sample(self.n_seqs, self._lengths[key],
                                                  seed=np.random.default_rng([self.seed, SEQUENCE_STREAM]))
            except ValueError as exc:  # e.g. a taxi length that cannot hold a trip
                raise UsageError(f"{self.models[i].path}: {exc}") from None
        return self._samples[key]

    def tokens(self, i: int) -> np.ndarray:
        return self.sample(i).tokens

    def mask(self, i: int) -> np.ndarray:
        """Positions analyses use: no padding, not the taxi origin (destination unknown)."""
        from ..activations import analysis_mask

        return analysis_mask(self.models[i].world, self.tokens(i))

    def hidden(self, i: int, hooks: Sequence[str]) -> dict[str, np.ndarray]:
        """Hidden states of model ``i`` at ``hooks``: one forward pass for the missing ones."""
        from ..activations import collect

        missing = [h for h in hooks if (i, h) not in self._hidden]
        if missing:
            acts = collect(self.models[i].model, self.tokens(i), list(missing), batch_size=self.batch_size,
                           progress=self.progress)
            for h, a in acts.items():
                if not np.isfinite(a).all():
                    from ..errors import AnalysisError

                    raise AnalysisError(f"{self.models[i].path}: hidden states at {h} contain NaN or infinite "
                                        "values (are the weights finite?)")
                self._hidden[(i, h)] = a
        return {h: self._hidden[(i, h)] for h in hooks}

    def has_hidden(self, i: int, hook: str) -> bool:
        return (i, hook) in self._hidden

    def params(self) -> dict[str, Any]:
        """The sequence parameters every record made from these inputs carries."""
        return {"n_seqs": self.n_seqs, "seq_len": self.length, "seed": self.seed,
                "sequences": "all" if self.all_sequences else "sampled"}

    def params_of(self, i: int) -> dict[str, Any]:
        """``params()`` with model ``i``'s own sequence length."""
        return {**self.params(), "seq_len": int(self.tokens(i).shape[1])}


def resolve_inputs(models: Sequence[Any], inputs: Inputs | None, *, n_seqs: int, seq_len: int | None, seed: int,
                   device: str, progress: bool, batch_size: int = 64) -> Inputs:
    """``inputs`` if given (its models and sequences win), else a fresh ``Inputs`` of the
    (loaded or loadable) ``models``."""
    if inputs is not None:
        return inputs
    return Inputs.build(models, n_seqs, seq_len=seq_len, seed=seed, device=device, progress=progress,
                        batch_size=batch_size)


__all__ = ["Inputs", "load_models", "parse_layers", "analysis_length", "resolve_inputs", "SEQUENCE_STREAM"]
