"""Held-out origin/destination pairs of the taxi world: the split (against a pure-Python
splitmix64 and its published test vector), the exact first-step distribution on each side
(hand-enumerated), the sampler, refusals, the real Manhattan map, and the ood evaluation."""
from __future__ import annotations

import json

import numpy as np
import pytest
from helpers import run_cli

from nextlat_probe.analysis import worldmodel as wm
from nextlat_probe.worlds import WorldError, make_world, world_from_spec
from nextlat_probe.worlds.taxi import Taxi, _splitmix64, held_out_pairs

M64 = (1 << 64) - 1


def ref_held_out(o: int, d: int, n_nodes: int, fraction: float, seed: int) -> bool:
    """The split written with Python integers (no numpy wrap-around)."""
    z = (o * n_nodes + d + (seed % 2**64) * 0xD1B54A32D192ED03) & M64
    z = (z + 0x9E3779B97F4A7C15) & M64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & M64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & M64
    z ^= z >> 31
    return (z >> 11) * 2.0 ** -53 < fraction


def test_splitmix64_matches_the_published_first_output():
    # splitmix64 seeded with 0: the first output is 0xE220A8397B1DCDAF
    assert int(_splitmix64(np.array([0], dtype=np.uint64))[0]) == 0xE220A8397B1DCDAF


def test_split_matches_a_pure_python_reference_and_its_fraction():
    rng = np.random.default_rng(0)
    o, d = rng.integers(0, 5000, size=400), rng.integers(0, 5000, size=400)
    for seed in (0, 7):
        got = held_out_pairs(o, d, 5000, 0.3, seed)
        want = [ref_held_out(int(a), int(b), 5000, 0.3, seed) for a, b in zip(o, d)]
        assert got.tolist() == want
    big = held_out_pairs(np.arange(300)[:, None], np.arange(300)[None, :], 300, 0.1, 0)
    assert abs(big.mean() - 0.1) < 4 * np.sqrt(0.1 * 0.9 / big.size)  # 90,000 pairs
    assert not held_out_pairs(np.arange(5), np.arange(5), 5, 0.0).any()


def square_world(**kw) -> Taxi:
    from test_taxi import square_map

    return Taxi(square_map(), walk="shortest", **kw)


def split_seed_keeping_both_sides(fraction: float) -> int:
    for seed in range(200):
        try:
            square_world(holdout=fraction, holdout_seed=seed)
            square_world(holdout=fraction, holdout_seed=seed, pairs="held_out")
            return seed
        except WorldError:
            continue
    raise AssertionError("no split seed keeps a destination on both sides for every origin")


@pytest.mark.parametrize("pairs", ["train", "held_out"])
def test_first_step_is_uniform_over_the_side_and_the_sampler_agrees(pairs):
    seed = split_seed_keeping_both_sides(0.4)
    w = square_world(holdout=0.4, holdout_seed=seed, pairs=pairs)
    nodes = [0, 1, 2, 3]  # the strongly connected part; 4 is the dead end
    allowed = {o: [d for d in nodes if d != o and ref_held_out(o, d, 5, 0.4, seed) == (pairs == "held_out")]
               for o in nodes}
    s = w.sample(8000, seed=1)
    org, dst = s.extras["origin"], s.extras["dest"]
    probs = w.next_token_probs(s.tokens)
    for o in nodes:
        rows = np.flatnonzero(org == o)
        want = np.zeros(5)
        want[allowed[o]] = 1.0 / len(allowed[o])
        np.testing.assert_allclose(probs[rows[0], 0, :5], want, atol=1e-12)
        freq = np.bincount(dst[rows], minlength=5) / rows.size
        assert np.abs(freq - want).max() < 4 * np.sqrt(0.25 / rows.size)
        # the belief after the origin: the distance to a destination drawn uniformly from the side
        b = w.belief_parts(s.tokens[rows[:1]])["to_go"][0, 0]
        hops = np.zeros(w.max_len + 1)
        for d in allowed[o]:
            hops[int(w.distances[o, d])] += 1.0 / len(allowed[o])
        np.testing.assert_allclose(b, hops, atol=1e-12)
    assert (w.is_held_out(org, dst) == (pairs == "held_out")).all()
    assert w.check_sequences(s.tokens)["valid"].all()


def test_each_side_refuses_the_others_trips_and_round_trips():
    seed = split_seed_keeping_both_sides(0.4)
    train = square_world(holdout=0.4, holdout_seed=seed)
    held = train.variant(pairs="held_out")
    assert (held.holdout, held.holdout_seed, held.token_names) == (0.4, seed, train.token_names)
    with pytest.raises(WorldError, match="probability 0 at position 1"):
        train.next_token_probs(held.sample(20, seed=0).tokens)
    with pytest.raises(WorldError, match="probability 0 at position 1"):
        held.next_token_probs(train.sample(20, seed=0).tokens)
    for w in (train, held):
        back = world_from_spec(json.loads(json.dumps(w.spec())))
        assert back.spec() == w.spec() and (back.pairs, back.holdout) == (w.pairs, w.holdout)
    plain = square_world()
    assert "holdout" not in plain.spec()  # old specs and new ones without a split are the same
    assert train.variant(walk="random").holdout == 0.0  # random walks draw no destination


@pytest.mark.parametrize("kw, match", [
    ({"walk": "random", "holdout": 0.995, "min_len": 1, "max_len": 2}, "no train destination"),
    ({"walk": "shortest", "holdout": 1.0}, r"\[0, 1\)"),
    ({"walk": "shortest", "pairs": "held_out"}, "holdout > 0"),
    ({"walk": "shortest", "holdout": 0.1, "pairs": "test"}, "train or held_out"),
    ({"walk": "shortest", "holdout": 0.97, "pairs": "train"}, "no train destination"),
    # refused when the TRAINING world is built, not after training, when scoring the held-out side
    ({"walk": "shortest", "holdout": 0.01, "pairs": "train"}, "no held_out destination"),
])
def test_bad_splits_are_refused(kw, match):
    with pytest.raises(WorldError, match=match):
        make_world("taxi", map_size=3, **kw)


def test_manhattan_held_out_pairs_are_held_out_legal_and_exact():
    train = make_world("taxi", map="manhattan", walk="shortest", holdout=0.1)
    held = wm.ood_world(train, "pairs=held_out")
    assert held.pairs == "held_out" and held.max_len == train.max_len
    s = held.sample(64, seed=3)
    org, dst = s.extras["origin"], s.extras["dest"]
    seen = train.sample(64, seed=3).extras
    assert held.is_held_out(org, dst).all() and not train.is_held_out(seen["origin"], seen["dest"]).any()
    assert held.check_sequences(s.tokens)["valid"].all()
    p = held.next_token_probs(s.tokens[:4])
    n_allowed = held._allowed_dest(org[:4]).sum(axis=1)
    np.testing.assert_allclose(p[np.arange(4), 0, dst[:4]], 1.0 / n_allowed)
    assert (n_allowed < 0.2 * held.walk_nodes.size).all()  # about a tenth of the destinations
    with pytest.raises(wm.AnalysisError, match="same trips"):
        wm.ood_world(train, "pairs=train")


def test_worldmodel_cli_scores_held_out_pairs_beside_training_pairs(tmp_path):
    from nextlat_probe.training.config import TrainConfig
    from nextlat_probe.training.trainer import train

    opts = {"map_size": 4, "walk": "shortest", "holdout": 0.25}
    cfg = TrainConfig(world="taxi", world_options=opts, objective="gpt", steps=30, batch_size=32, eval_every=30,
                      save_every=30, n_val=32, device="cpu", warmup_steps=5, lr=3e-3)
    ck = train(cfg, out_dir=tmp_path / "gpt", progress=False).checkpoint
    r = run_cli("nextlat_probe.worldmodel", str(ck), "--n-pairs", "10", "--continuations", "2", "--ood",
                "pairs=held_out", "--json")
    assert r.returncode == 0, r.stderr
    recs = [x for x in json.loads(r.stdout) if x["analysis"] == "worldmodel"]
    assert [x["variant"] for x in recs] == [None, "ood pairs=held_out"]
    assert recs[1]["params"]["eval_world"]["pairs"] == "held_out"
    assert recs[1]["params"]["train_world"]["pairs"] == "train"
    # the held-out record is an evaluation on the held-out world, drawn with the same seed
    from nextlat_probe.sources import load_model

    m = load_model(ck)
    direct = wm.evaluate_world_model(wm.model_predictor(m.model), m.world.variant(pairs="held_out"), n_pairs=10,
                                     n_continuations=2, seed=0)
    assert recs[1]["metrics"]["trajectory_valid"]["count"] == direct.trajectory_valid.count
    assert recs[1]["metrics"]["next_token"]["n"] == direct.next_token.n


def test_compression_draws_second_prefixes_on_the_worlds_side_of_the_split(monkeypatch):
    seed = split_seed_keeping_both_sides(0.4)
    seen = []
    real = wm._sample_and_score

    def spy(predict, world, A, B, *rest):
        seen.append((world, B.copy()))
        return real(predict, world, A, B, *rest)

    monkeypatch.setattr(wm, "_sample_and_score", spy)
    for pairs in ("train", "held_out"):
        w = square_world(holdout=0.4, holdout_seed=seed, pairs=pairs)
        s = w.sample(60, seed=2)
        wm.compression(wm.oracle_predictor(w), w, s, np.random.default_rng(0), n_continuations=2)
    assert len(seen) == 2
    for w, B in seen:
        held = [ref_held_out(int(o), int(d), 5, 0.4, seed) for o, d in B[:, :2]]
        assert held == [w.pairs == "held_out"] * len(B)  # every scored prefix pair is on the world's side
