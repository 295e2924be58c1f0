"""Reference records of everything that decodes, for tests/test_generation.py.

``tests/decoding_reference.json`` was written by this module from the code as it stood
BEFORE generation moved to the key/value cache (every step a full forward over the prefix):

    PYTHONPATH=. python tests/decoding_reference.py --write

The models are built here from fixed seeds and trained for a few steps by a plain loop
(next-token cross-entropy, Adam), independent of the trainer, on one CPU thread (so that
float round-off, and with it any near-tie, does not depend on the machine's core count).
The records are those of the public runners and functions: taxi world-model metrics
(learned and rotary positions: greedy trips, detours, compression continuations, sampled
distinction suffixes), the behavioural map (sampled trips), RRXOR compression
continuations, path-star greedy paths and greedy decoding (taxi trips, Mess3 sequences) as
speculative decoding checks it.
Run the module without ``--write`` to print the differences against the stored file.
"""
from __future__ import annotations

import argparse
import json
import sys
from contextlib import contextmanager
from pathlib import Path

import numpy as np

FIXTURE = Path(__file__).with_name("decoding_reference.json")
COMMAND = "PYTHONPATH=. python tests/decoding_reference.py --write"
SEED = 0
#: tiny transformers: fast to train on a CPU, and enough steps that decoding is not uniform noise
SIZE = dict(n_layers=2, d_model=32, n_heads=4, d_head=8, d_mlp=64)
STEPS = 120


@contextmanager
def one_thread():
    import torch

    old = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(old)


def train_tiny(world, seq_len: int, positional: str = "learned", steps: int = STEPS, seed: int = SEED):
    """A ``build_transformer`` model trained ``steps`` Adam steps on next-token cross-entropy
    over ``world.sample`` batches (seeded), in eval mode."""
    import torch

    from nextlat_probe.models.config import ModelConfig
    from nextlat_probe.models.transformer import build_transformer

    cfg = ModelConfig(**SIZE, n_ctx=seq_len, d_vocab=int(world.vocab_size), positional=positional)
    model = build_transformer(cfg, seed=seed)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.Adam(params, lr=3e-3)
    rng = np.random.default_rng([seed, 0xDEC])
    for _ in range(int(steps)):
        s = world.sample(32, seq_len, seed=rng)
        tokens = torch.as_tensor(s.tokens, dtype=torch.long)
        mask = torch.as_tensor(np.asarray(world.target_mask(s.tokens))[:, 1:], dtype=torch.bool)
        logits = model(tokens[:, :-1])
        loss = torch.nn.functional.cross_entropy(logits[mask], tokens[:, 1:][mask])
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval()


def worlds():
    from nextlat_probe.worlds import make_world

    return {"taxi": make_world("taxi", map_size=4, max_len=10, min_len=2),
            "mess3": make_world("mess3"),
            "rrxor": make_world("rrxor"),
            "pathstar": make_world("pathstar", degree=3, length=3, nodes=20)}


def models():
    """``{name: (model, world)}`` of the reference."""
    w = worlds()
    taxi_len = w["taxi"].default_length
    return {"taxi_learned": (train_tiny(w["taxi"], taxi_len), w["taxi"]),
            "taxi_rotary": (train_tiny(w["taxi"], taxi_len, "rotary"), w["taxi"]),
            "mess3": (train_tiny(w["mess3"], 12), w["mess3"]),
            "rrxor": (train_tiny(w["rrxor"], 12), w["rrxor"]),
            "pathstar": (train_tiny(w["pathstar"], w["pathstar"].default_length), w["pathstar"])}


def _plain(x):
    """JSON-ready copy (numpy scalars and arrays as Python values)."""
    from nextlat_probe.records import to_jsonable

    return json.loads(json.dumps(to_jsonable(x)))


def records() -> dict:
    """Every reference record, as plain JSON data."""
    from nextlat_probe.analysis.pathstar import evaluate_pathstar, greedy_paths
    from nextlat_probe.analysis.speculative import greedy_decode
    from nextlat_probe.analysis.worldmodel import model_predictor
    from nextlat_probe.compare import run_mapping, run_worldmodel
    from nextlat_probe.compare.speculative import prompts_for
    from nextlat_probe.sources import wrap_model

    out: dict = {}
    with one_thread():
        ms = models()
        for name in ("taxi_learned", "taxi_rotary", "rrxor"):
            model, world = ms[name]
            loaded = wrap_model(model, world, where=name)
            n_pairs = 40 if name == "taxi_learned" else 20
            out[f"worldmodel/{name}"] = run_worldmodel([loaded], n_pairs=n_pairs, seed=SEED)
        model, world = ms["taxi_learned"]
        behaviour = run_mapping([wrap_model(model, world, where="taxi_learned")], n_trips=60, n_seqs=32,
                                layers="last", seed=SEED)
        out["mapping/taxi_learned"] = [r for r in behaviour if r["variant"] == "behaviour"]
        model, world = ms["pathstar"]
        out["pathstar"] = evaluate_pathstar(model_predictor(model), world, n_graphs=32, seed=SEED)
        prompts = world.sample(32, seed=np.random.default_rng([SEED, 1])).tokens[:, :world.prompt_length]
        out["pathstar/paths"] = greedy_paths(model_predictor(model), prompts, world.path_length).tolist()
        for name in ("taxi_learned", "mess3"):
            model, world = ms[name]
            prompts, new, stop, _ = prompts_for(world, model, 24, SEED)
            res = greedy_decode(model, prompts, new, stop_mask=stop, batch_size=7)
            out[f"greedy/{name}"] = [t.tolist() for t in res.tokens]
    return _plain(out)


def differences(want, got, where: str = "") -> list[str]:
    """Paths at which ``got`` differs from ``want`` (keys only in ``got`` are not differences:
    records may gain fields, e.g. the decoding regime)."""
    if isinstance(want, dict):
        if not isinstance(got, dict):
            return [f"{where}: {type(got).__name__} instead of a dict"]
        out = []
        for k, v in want.items():
            if k not in got:
                out.append(f"{where}/{k}: missing")
            else:
                out.extend(differences(v, got[k], f"{where}/{k}"))
        return out
    if isinstance(want, list):
        if not isinstance(got, list) or len(got) != len(want):
            return [f"{where}: {got!r:.200} instead of {want!r:.200}"]
        return [d for i, (a, b) in enumerate(zip(want, got)) for d in differences(a, b, f"{where}[{i}]")]
    if want != got and not (want != want and got != got):  # NaN == NaN here
        return [f"{where}: {got!r} instead of {want!r}"]
    return []


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--write", action="store_true", help=f"(re)write {FIXTURE.name}")
    args = ap.parse_args(argv)
    got = records()
    if args.write:
        FIXTURE.write_text(json.dumps({"command": COMMAND, "seed": SEED, "steps": STEPS, "size": SIZE,
                                       "records": got}, indent=1, sort_keys=True) + "\n")
        print(f"wrote {FIXTURE}")
        return 0
    diff = differences(json.loads(FIXTURE.read_text())["records"], got)
    print("\n".join(diff) if diff else "identical")
    return 1 if diff else 0


if __name__ == "__main__":
    sys.exit(main())
