"""Taxi world-model metrics on a hand-built map (answers known by hand), and the
``python -m nextlat_probe.worldmodel`` CLI on the tiny taxi checkpoints."""
import json
import math

import numpy as np
import pytest
from helpers import run_cli
from scipy.optimize import brentq

from nextlat_probe.analysis import worldmodel as wm
from nextlat_probe.cli import run_main
from nextlat_probe.worlds.streetmap import DIRECTIONS, StreetMap
from nextlat_probe.worlds.taxi import Taxi

#   3 --E--> 4
#   ^N       |S          0 <-> 1 <-> 2 two-way (E/W), one-way 0->3, 3->4, 4->1, 2->4
#   0 <----> 1 <----> 2
#            ^ NW from 2 to 4
COORDS = [(0, 0), (1, 0), (2, 0), (0, 1), (1, 1)]
EDGES = [(0, "E", 1), (1, "W", 0), (1, "E", 2), (2, "W", 1), (0, "N", 3), (3, "E", 4), (4, "S", 1), (2, "NW", 4)]


def tiny_world(max_len: int = 8) -> Taxi:
    return Taxi(StreetMap(5, EDGES, coords=COORDS, name="tiny"), min_len=1, max_len=max_len)


def uniform_predictor(world):
    """Broken model: uniform over the 8 turns and end, whatever the history."""

    def predict(tokens):
        out = np.zeros(tokens.shape + (world.vocab_size,))
        out[..., world.dir0:world.end_id + 1] = 1.0 / 9
        return out

    return predict


def tok(world, *names):
    return [world.token_id(n) for n in names]


# --------------------------------------------------------------------------------------
Z95 = 1.959963984540054  # two-sided 95% normal quantile


def test_wilson_interval_against_hand_and_root_finding():
    lo, hi = wm.wilson_interval(8, 10)
    assert lo == pytest.approx(0.4902, abs=1e-4) and hi == pytest.approx(0.9433, abs=1e-4)  # textbook value
    # the Wilson interval is {p : |phat - p| <= z sqrt(p (1 - p) / n)}: solve that directly
    for k, n in [(8, 10), (3, 40), (97, 100)]:
        f = lambda p, k=k, n=n: (k / n - p) ** 2 - Z95 ** 2 * p * (1 - p) / n  # noqa: E731
        lo, hi = wm.wilson_interval(k, n)
        assert lo == pytest.approx(brentq(f, 1e-12, k / n), abs=1e-9)
        assert hi == pytest.approx(brentq(f, k / n, 1 - 1e-12), abs=1e-9)
    assert wm.wilson_interval(0, 10)[0] == 0.0 and wm.wilson_interval(10, 10)[1] == 1.0
    assert all(math.isnan(v) for v in wm.wilson_interval(0, 0))
    r = wm.Rate(8, 10).to_dict()
    assert r["value"] == 0.8 and r["count"] == 8 and r["n"] == 10 and r["low"] < 0.8 < r["high"]
    assert wm.Rate(0, 0).to_dict() == {"value": None, "low": None, "high": None, "n": 0, "count": 0}


def test_exact_probabilities_clear_epsilon():
    """Precondition of the oracle tests below: every possible token of this world has
    probability far above epsilon, so 'accepted by the oracle' = 'possible'."""
    w = tiny_world()
    s = w.sample(3000, seed=5)
    p = w.next_token_probs(s.tokens)
    mask = w.position_mask(s.tokens)
    mask[:, 0] = False
    trip = p[mask][:, w.dir0:w.end_id + 1]
    assert trip[trip > 0].min() > 10 * wm.EPSILON


@pytest.mark.parametrize("max_turns", [8, None])
def test_oracle_is_perfect(max_turns):
    """The exact model scores 100% everywhere; max_turns=None (3 x max_len) lets detours
    outlast the length prior, exercising the oracle's fallback."""
    w = tiny_world()
    # the exact protocol: distinction against the world's support, where the oracle is exact
    res = wm.evaluate_world_model(wm.oracle_predictor(w), w, n_pairs=80, seed=1, max_turns=max_turns,
                                  protocol="exact")
    d = res.to_dict()
    for key in ("next_token", "trajectory_legal", "trajectory_valid", "compression", "compression_continuations",
                "distinction_precision", "distinction_recall"):
        assert d[key]["n"] > 0 and d[key]["count"] == d[key]["n"], (key, d[key])
    assert len(d["detour"]) == 6
    for key, v in d["detour"].items():
        assert v["valid"]["count"] == v["valid"]["n"] == 80, key
    assert d["settings"]["max_turns"] == (8 if max_turns else 24)
    json.dumps(d)  # JSON-able


def test_uniform_predictor_scores_low():
    w = tiny_world()
    res = wm.evaluate_world_model(uniform_predictor(w), w, n_pairs=80, seed=1, max_turns=8)
    # independent count: argmax of a tie is the first turn, N, legal only where a node has an N edge
    s = w.sample(80, seed=np.random.default_rng([1, 0x7A]))
    has_n = {src for src, d, _ in EDGES if d == "N"}
    good = total = 0
    for row in s.tokens:
        node = int(row[0])
        for t in row[2:]:
            name = w.token_names[int(t)]
            if name == "pad":
                break
            total += 1
            good += node in has_n
            if name != "end":
                node = dict(((a, d), b) for a, d, b in EDGES)[node, name]
    assert (res.next_token.count, res.next_token.n) == (good, total)
    assert 0 < res.next_token.value < 0.3
    # always N: 0 -> 3, then N is illegal; every other node has no N at all
    assert res.trajectory_legal.count == 0 and res.trajectory_valid.count == 0
    assert all(v["valid"].count == 0 for v in res.detour.values())  # it never says end
    # it treats every state alike: compression is trivially perfect, distinction is nil
    assert res.compression.value == 1.0
    # vafa2024 (default): per pair, an empty model boundary scores precision 1, recall 0
    assert res.protocol["name"] == "vafa2024"
    assert res.distinction_recall.value == 0.0 and res.distinction_recall.n > 50
    assert res.distinction_precision.value == 1.0
    # exact: pooled counts, precision undefined when the model distinguishes nothing
    ex = wm.evaluate_world_model(uniform_predictor(w), w, n_pairs=80, seed=1, max_turns=8, protocol="exact")
    assert ex.distinction_recall.count == 0 and ex.distinction_recall.n > 50
    assert ex.distinction_precision.n == 0 and math.isnan(ex.distinction_precision.value)


def test_distinction_boundaries_by_hand():
    """Prefix A: origin 0, dest 2, E -> at node 1. Prefix B: origin 0, dest 4, N -> at 3.
    Level 1: A allows W, E; B allows E -> A->B {W}. Jointly legal: E (A to 2, B to 4).
    Level 2: A at its destination allows W, NW, end; B at its destination S, end."""
    w = tiny_world()
    A, B = tok(w, "0", "2", "E"), tok(w, "0", "4", "N")
    want_ab = {tuple(tok(w, *s)) for s in [("W",), ("E", "W"), ("E", "NW")]}
    want_ba = {tuple(tok(w, "E", "S"))}
    for truth in ("map", "world"):
        sets = wm.distinction_sets(wm.oracle_predictor(w), w, A, B, suffix_len=2, truth=truth)
        assert sets["true_ab"] == want_ab and sets["true_ba"] == want_ba
        assert sets["model_ab"] == want_ab and sets["model_ba"] == want_ba
    one = wm.distinction_sets(wm.oracle_predictor(w), w, A, B, suffix_len=1)
    assert one["true_ab"] == {tuple(tok(w, "W"))} and one["true_ba"] == set()
    broken = wm.distinction_sets(uniform_predictor(w), w, A, B, suffix_len=2)
    assert broken["model_ab"] == broken["model_ba"] == set() and broken["true_ab"] == want_ab


def test_map_truth_penalises_the_length_prior():
    """With the bare map as truth the exact model loses where the length budget rules
    out a legal turn (late cuts of long walks); with the world's support it does not."""
    w = tiny_world(max_len=4)
    o = wm.oracle_predictor(w)
    s = w.sample(120, seed=2)
    exact = wm.distinction(o, w, s, np.random.default_rng(0), truth="world")
    bare = wm.distinction(o, w, s, np.random.default_rng(0), truth="map")
    assert exact["recall"].value == 1.0 and exact["precision"].value == 1.0
    assert bare["recall"].value < 1.0


class OriginBiased(wm.Predictor):
    """The exact model, except that after origin 0 it nearly never says end (p < epsilon):
    a model whose state depends on where the trip started."""

    def __init__(self, world):
        self.w, self.o = world, wm.oracle_predictor(world)

    def __call__(self, tokens):
        p = self.o(tokens).copy()
        rows = tokens[:, 0] == 0
        end = p[rows, :, self.w.end_id]
        p[rows, :, self.w.end_id] = np.minimum(end, 0.002)
        return p / p.sum(axis=-1, keepdims=True)


def test_compression_scores_under_the_other_prefix():
    """Scoring the continuations under the prefix they were sampled from would make the
    test vacuous (every model passes); the origin-biased model must fail some pairs."""
    w = tiny_world()
    s = w.sample(150, seed=4)
    good = wm.compression(wm.oracle_predictor(w), w, s, np.random.default_rng(0), n_continuations=5, max_turns=8)
    bad = wm.compression(OriginBiased(w), w, s, np.random.default_rng(0), n_continuations=5, max_turns=8)
    assert good["pairs"].value == 1.0 and good["pairs"].n > 100
    assert bad["pairs"].n == good["pairs"].n and bad["pairs"].value < 0.9


def test_backward_prefixes_reach_the_state_uniformly():
    w = tiny_world()
    rng = np.random.default_rng(0)
    n = 3000
    node = np.full(n, 1)
    dest = np.full(n, 2)
    k = rng.integers(1, 6, size=n)
    B = wm._backward_prefixes(w, node, dest, k, rng)
    tr = wm.trace_trips(w, B)
    last = 1 + k
    assert (tr["node"][np.arange(n), last] == 1).all() and (tr["turns"][np.arange(n), last] == k).all()
    assert tr["ok"][np.arange(n), last].all() and (B[:, 1] == 2).all()
    # one step back from node 1: the edges into it are 0-E, 2-W, 4-S, each with prob 1/3
    one = B[k == 1]
    freq = np.array([(one[:, 0] == o).mean() for o in (0, 2, 4)])
    assert np.abs(freq - 1 / 3).max() < 0.06


def test_detours_follow_the_rule():
    """p = 1: at every step away from the destination the turn is replaced, and the
    replacement is the one the rule names (checked against the oracle step by step)."""
    w = tiny_world()
    o = wm.oracle_predictor(w)
    prompts = np.array([tok(w, "0", "2"), tok(w, "3", "0"), tok(w, "2", "3")] * 4)
    succ = np.asarray(w.map.succ)
    dist = w.map.shortest_path_lengths()
    for kind in wm.DETOUR_KINDS:
        out = wm.generate(o, w, prompts, 9, rng=np.random.default_rng(0), detour=kind, detour_p=1.0, max_turns=8)
        for row in out:
            node, dest, turns = int(row[0]), int(row[1]), 0
            for p in range(2, row.size):
                t = int(row[p])
                if t == w.end_id or t == w.pad_id:
                    break
                probs = o(row[None, :p])[0, -1]
                pick = int(probs.argmax())
                allowed = [d for d in range(8) if succ[node, d] >= 0 and dist[succ[node, d], dest] <= 8 - turns - 1]
                if node != dest and allowed:
                    others = [d for d in allowed if w.dir0 + d != pick] or allowed
                    turn_p = probs[w.dir0:w.dir0 + 8]
                    if kind == "least_likely":
                        assert t - w.dir0 == min(allowed, key=lambda d: (turn_p[d], d))
                    elif kind == "second_most_likely":
                        assert t - w.dir0 == max(others, key=lambda d: (turn_p[d], -d))
                    else:
                        assert t - w.dir0 in others
                else:
                    assert t == pick
                node, turns = int(succ[node, t - w.dir0]), turns + 1
    plain = wm.generate(o, w, prompts, 9)
    assert (wm.generate(o, w, prompts, 9, rng=np.random.default_rng(0), detour="random", detour_p=0.0,
                        max_turns=8) == plain).all()


def test_turn_budget_respects_context():
    w = tiny_world()
    small = uniform_predictor(w)
    small.max_length = 6
    assert wm.turn_budget(w, small) == 4 and wm.turn_budget(w, wm.oracle_predictor(w)) == 24
    legal, valid, out = wm.trajectory_validity(small, w, np.array([tok(w, "0", "2")]))
    assert out.shape == (1, 2 + 4 + 1)
    with pytest.raises(wm.AnalysisError):
        wm.evaluate_world_model(wm.oracle_predictor(w), tiny_world().map, n_pairs=2)  # not a world


def test_trace_trips_matches_check_sequences():
    from nextlat_probe.worlds.taxi import check_sequences

    w = tiny_world()
    rng = np.random.default_rng(3)
    s = w.sample(200, seed=3).tokens
    junk = s.copy()
    hit = rng.random(junk.shape) < 0.05
    junk[hit] = rng.integers(w.dir0, w.vocab_size, size=hit.sum())
    tr = wm.trace_trips(w, junk)
    chk = check_sequences(w.map, junk)
    # a prefix is legal up to the end iff the whole trip is valid (end at the destination)
    assert (tr["ok"][:, -1] == chk["valid"]).all() and chk["valid"].sum() < 200


# --------------------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------------------
def test_worldmodel_cli_table_and_json(tiny_taxi_ckpts, capsys):
    import torch

    from nextlat_probe.checkpoint import load_checkpoint
    from nextlat_probe.worldmodel import main, table

    paths = [str(tiny_taxi_ckpts["gpt"]), str(tiny_taxi_ckpts["nextlat"])]
    args = [*paths, "--n-pairs", "24", "--rank-seqs", "16", "--continuations", "3", "--seed", "5"]
    assert main([*args, "--json"]) == 0
    recs = json.loads(capsys.readouterr().out)  # one JSON document, nothing else
    text = table(recs)  # what main prints without --json
    for label in ("next-token validity ↑", "every turn legal", "sequence compression ↑", "distinction recall ↑",
                  "detour robustness (random detours, p = 0.75) ↑", "effective rank (block 1) ↓",
                  "validation loss (nats/token) ↓", "gpt", "nextlat"):
        assert label in text
    wm = [r for r in recs if r["analysis"] == "worldmodel"]
    ranks = {r["name"]: r for r in recs if r["analysis"] == "rank"}
    nt = wm[1]["metrics"]["next_token"]
    assert f"{nt['value']:.3f} [{nt['low']:.3f}, {nt['high']:.3f}]" in text  # fractions, as in the report
    assert "gap to floor" in text.lower() or "gap to the exact floor" in text  # the convergence context
    assert "n_pairs=24" in text and "seed=5" in text  # the protocol line under the table
    assert "worldmodel: protocol vafa2024 (" in text  # the protocol's name first
    assert [r["objective"] for r in wm] == ["gpt", "nextlat"]
    for r in wm:
        assert ranks[r["name"]]["metrics"]["effective_rank"] > 1 and r["val_loss"] is not None
        assert r["params"]["n_pairs"] == 24 and r["params"]["n_continuations"] == 3
        m = r["metrics"]
        for key in ("next_token", "trajectory_legal", "trajectory_valid", "compression"):
            c = m[key]
            assert 0 <= c["count"] <= c["n"] and (c["n"] == 0 or c["low"] <= c["value"] <= c["high"])
        # protocol vafa2024 (default): distinction is a mean of per-pair scores, named in the record
        assert r["protocol"]["name"] == "vafa2024" and r["protocol"]["deviations"] == {"n_continuations": 3}
        assert m["distinction_recall_n_pairs"] > 0 and 0 <= m["distinction_recall"] <= 1
        assert m["trajectory_valid"]["count"] <= m["trajectory_legal"]["count"] <= 24
    # next-token validity recomputed independently: the same trips, a plain forward pass
    ck = load_checkpoint(paths[0])
    w = ck.world
    s = w.sample(24, seed=np.random.default_rng([5, 0x7A]))
    with torch.no_grad():
        pred = ck.model(torch.as_tensor(s.tokens)).argmax(-1).numpy()
    step = {(a, d): b for a, d, b in w.map.edges()}
    good = total = 0
    for row, pr in zip(s.tokens, pred):
        node, dest = int(row[0]), int(row[1])
        for p in range(2, row.size):
            name = w.token_names[int(row[p])]
            if name == "pad":
                break
            total += 1
            guess = w.token_names[int(pr[p - 1])]
            good += (guess in DIRECTIONS and (node, guess) in step) or (guess == "end" and node == dest)
            if name != "end":
                node = step[node, name]
    assert (wm[0]["metrics"]["next_token"]["count"], wm[0]["metrics"]["next_token"]["n"]) == (good, total)


@pytest.fixture(scope="module")
def mess3_ckpt(tmp_path_factory):
    from nextlat_probe.training.config import TrainConfig
    from nextlat_probe.training.trainer import train

    cfg = TrainConfig(world="mess3", objective="gpt", steps=2, batch_size=8, seq_len=8, eval_every=2,
                      save_every=2, n_val=8, device="cpu", warmup_steps=1)
    return train(cfg, out_dir=tmp_path_factory.mktemp("mess3-wm"), progress=False).checkpoint


def test_worldmodel_cli_errors(mess3_ckpt, tmp_path, capsys):
    from nextlat_probe.worldmodel import main

    for argv, needle in ([[str(mess3_ckpt), "--protocol", "exact"], "taxi options"], [[str(tmp_path / "nope.pt")], "nope.pt"],
                         [[str(mess3_ckpt), "--n-pairs", "0"], "--n-pairs"]):
        with pytest.raises(SystemExit) as exc:
            run_main(main, argv)
        err = capsys.readouterr().err.strip()
        assert exc.value.code == 2 and len(err.splitlines()) == 1 and needle in err, err


def test_worldmodel_help_is_fast():
    r = run_cli("nextlat_probe.worldmodel", "--help", timeout=60)
    assert r.returncode == 0 and "--n-pairs" in r.stdout
