"""Published protocols (Vafa et al. 2024 reference code) against hand-worked answers.

A 3x3 grid (node = 3 * row + col, row 0 at the bottom; two-way N/S/E/W streets) and three
hand-built predictors that are functions of the traced state: uniform over the tokens the
predictor believes legal (turns of the node, ``end`` at the destination). ``exact`` knows
the map; ``forgetful`` forgets the destination (``end`` always possible); ``confused``
answers at the centre 4 with the streets of 1 (N, E, W: no S). Samples are one token long
(turn budget 1 after one-turn prefixes), so every answer below is worked out by hand from
the legal sets; 200 samples make "S is sampled" certain (miss chance (2/3)^200).

Pairs (origin dest turn; the state after it):
  p1: A = 1 4 N (node 4, dest 4)  B = 1 5 N (node 4, dest 5)
  p2: A = 1 2 N (node 4, dest 2)  B = 0 2 E (node 1, dest 2)
  p3: A = 4 2 N (node 7, dest 2)  B = 1 2 N (node 4, dest 2)
vafa2024, suffix length 1, direction A -> B:
  true boundary: p1 {end}, p2 {S}, p3 {} (recall 1 by the edge rule)
  exact:     precision 1, 1, 1   recall 1, 1, 1
  forgetful: p1 model boundary empty -> precision 1, recall 0; p2: S told apart -> 1, 1; p3: 1, 1
  confused:  p1 1, 1; p2 model boundary empty -> precision 1, S not accepted after A -> recall 0;
             p3 samples S after A, rejected after B but valid from B -> precision 0, recall 1
exact protocol (world support = the map here; both directions pooled): true elements
  p1 {A->B end}, p2 {A->B S}, p3 {B->A N}
  exact 3/3, 3/3; forgetful model {p2 S, p3 N}: 2/2, 2/3;
  confused model {p1 end, p3 A->B S, p3 B->A N}: 2/3, 2/3
Compression (A = 1 2 N, B = 3 2 E, both at node 4 with dest 2): every predictor is a
function of the state, so every pair passes (1) under both protocols.
"""
import numpy as np
import pytest

from nextlat_probe.analysis import worldmodel as wm
from nextlat_probe.worlds.streetmap import StreetMap
from nextlat_probe.worlds.taxi import Taxi


def grid_world() -> Taxi:
    edges = []
    for n in range(9):
        r, c = divmod(n, 3)
        if r < 2:
            edges.append((n, "N", n + 3))
        if r > 0:
            edges.append((n, "S", n - 3))
        if c < 2:
            edges.append((n, "E", n + 1))
        if c > 0:
            edges.append((n, "W", n - 1))
    coords = [(n % 3, n // 3) for n in range(9)]
    return Taxi(StreetMap(9, edges, coords=coords, name="grid3"), min_len=1, max_len=20)


def automaton(world, forget_dest=False, confuse=None):
    """Uniform over the tokens believed legal at the traced state (see the docstring)."""
    succ = np.asarray(world.map.succ)

    def predict(tokens):
        tr = wm.trace_trips(world, tokens)
        n, L = tokens.shape
        out = np.zeros((n, L, world.vocab_size))
        for i in range(n):
            for t in range(L):
                if t == 0:
                    out[i, t, :world.map.n_nodes] = 1.0
                elif not tr["ok"][i, t] or tr["ended"][i, t]:
                    out[i, t, world.pad_id] = 1.0
                else:
                    node = int(tr["node"][i, t])
                    look = confuse[1] if confuse and node == confuse[0] else node
                    if t >= 2:
                        out[i, t, world.dir0:world.dir0 + 8] = succ[look] >= 0
                    else:  # after the destination token: turns only
                        out[i, t, world.dir0:world.dir0 + 8] = succ[look] >= 0
                    out[i, t, world.end_id] = 1.0 if (forget_dest or node == tr["dest"][i]) and t >= 2 else 0.0
                out[i, t] /= out[i, t].sum()
        return out

    return predict


W = grid_world()
PREDICTORS = {"exact": automaton(W), "forgetful": automaton(W, forget_dest=True),
              "confused": automaton(W, confuse=(4, 1))}


def t(x):
    """Token id: node tokens are the node indices; turns and end by name."""
    return x if isinstance(x, int) else W.token_id(x)


def pairs():
    A = [[t(1), t(4), t("N")], [t(1), t(2), t("N")], [t(4), t(2), t("N")]]
    B = [[t(1), t(5), t("N")], [t(0), t(2), t("E")], [t(1), t(2), t("N")]]
    return wm.explicit_pairs(W, A, B)


VAFA = {"exact": ([1, 1, 1], [1, 1, 1]), "forgetful": ([1, 1, 1], [0, 1, 1]),
        "confused": ([1, 1, 0], [1, 0, 1])}
EXACT = {"exact": ((3, 3), (3, 3)), "forgetful": ((2, 2), (2, 3)), "confused": ((2, 3), (2, 3))}


@pytest.mark.parametrize("name", list(PREDICTORS))
def test_distinction_vafa2024_by_hand(name):
    res = wm.distinction_on_pairs(PREDICTORS[name], W, pairs(), "vafa2024", rng=np.random.default_rng(1),
                                  suffix_len=1, n_suffix_samples=200, max_turns=1)
    prec, rec = VAFA[name]
    assert res["per_pair_precision"] == prec
    assert res["per_pair_recall"] == rec
    assert res["precision"].value == pytest.approx(np.mean(prec))
    assert res["recall"].value == pytest.approx(np.mean(rec))
    assert res["precision"].n == 3 and res["precision"].to_dict()["count"] == pytest.approx(sum(prec))
    assert res["true_boundary"] == [{(t("end"),)}, {(t("S"),)}, set()]


@pytest.mark.parametrize("name", list(PREDICTORS))
def test_distinction_exact_protocol_by_hand(name):
    res = wm.distinction_on_pairs(PREDICTORS[name], W, pairs(), "exact", suffix_len=1)
    (pc, pn), (rc, rn) = EXACT[name]
    assert (res["precision"].count, res["precision"].n) == (pc, pn)
    assert (res["recall"].count, res["recall"].n) == (rc, rn)


def test_empty_model_boundary_is_precision_one_only_in_vafa2024():
    one = wm.explicit_pairs(W, [pairs()["A"][0]], [pairs()["B"][0]])
    v = wm.distinction_on_pairs(PREDICTORS["forgetful"], W, one, "vafa2024", suffix_len=1, max_turns=1)
    assert v["per_pair_precision"] == [1.0] and v["per_pair_recall"] == [0.0]
    e = wm.distinction_on_pairs(PREDICTORS["forgetful"], W, one, "exact", suffix_len=1)
    assert e["precision"].n == 0 and e["precision"].to_dict()["value"] is None  # undefined, pooled


def test_longer_true_boundary_counts_minimal_elements():
    """Suffix length 2 from (node 4, dest 4) vs (node 4, dest 5): "x end" would need one turn
    from 4 back to 4 (impossible), and "end end" is cut at its first token, so the boundary
    is {end} alone."""
    one = wm.explicit_pairs(W, [pairs()["A"][0]], [pairs()["B"][0]])
    v = wm.distinction_on_pairs(PREDICTORS["exact"], W, one, "vafa2024", suffix_len=2, max_turns=1)
    assert v["true_boundary"] == [{(W.token_id("end"),)}]


@pytest.mark.parametrize("name", list(PREDICTORS))
def test_compression_by_hand(name):
    same = wm.explicit_pairs(W, [[t(1), t(2), t("N")]], [[t(3), t(2), t("E")]])
    res = wm.compression_on_pairs(PREDICTORS[name], W, same, n_continuations=30, max_turns=1)
    assert res["per_pair"].tolist() == [True]
    assert res["pairs"].value == 1.0 and res["continuations"].n == 30


def test_compression_fails_when_the_state_differs():
    """Sanity: with B at another node (1 instead of 4), 200 one-token samples after A
    (node 4: N S E W) include S, impossible after B -> the pair fails."""
    other = wm.explicit_pairs(W, [pairs()["A"][1]], [pairs()["B"][1]])
    res = wm.compression_on_pairs(PREDICTORS["exact"], W, other, n_continuations=200, max_turns=1)
    assert res["per_pair"].tolist() == [False]


def test_protocol_blocks_and_defaults():
    block = wm.resolve_protocol("vafa2024")
    assert block == {"name": "vafa2024", "epsilon": 0.01, "n_continuations": 30, "suffix_len": 5,
                     "n_suffix_samples": 5, "truth": "map", "aggregation": "per_pair"}
    assert wm.resolve_protocol("exact")["suffix_len"] == 3
    assert wm.resolve_protocol("vafa2024", n_continuations=3)["deviations"] == {"n_continuations": 3}
    with pytest.raises(wm.AnalysisError, match="protocol"):
        wm.resolve_protocol("nope")
    res = wm.evaluate_world_model(PREDICTORS["exact"], W, n_pairs=6, seed=0, max_turns=4)
    assert res.protocol["name"] == "vafa2024" and res.settings["n_continuations"] == 30
    res = wm.evaluate_world_model(PREDICTORS["exact"], W, n_pairs=6, seed=0, max_turns=4, protocol="exact")
    assert res.protocol["name"] == "exact" and res.settings["truth"] == "world"
