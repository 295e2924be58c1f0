"""Compression and distinction for worlds with exact beliefs (analysis.beliefmodel), checked
against boundaries worked out by hand on the Zero-One-Random process."""
import json

import numpy as np
import pytest

from nextlat_probe.analysis import beliefmodel as bm
from nextlat_probe.worlds import make_world

# Z1R phases: state 0 emits 0, state 1 emits 1, state 2 emits 0 or 1; then state + 1 (mod 3).
TRUE_ACCEPTS = {0: {0}, 1: {1}, 2: {0, 1}}
# a model that confuses state 0 with the random state 2 (it allows a 1 where only 0 can come)
CONFUSED_ACCEPTS = {0: {0, 1}, 1: {1}, 2: {0, 1}}


def phase_predictor(accepts):
    """Next-token probabilities of a phase automaton: the first token of a row says the start
    phase (0 -> state 0, 1 -> state 2), every later token advances the phase by one;
    probability 1/|accepted| on each accepted token (a token outside the set still advances
    the phase: the model has no notion of impossibility)."""

    def predict(tokens):
        tokens = np.asarray(tokens)
        out = np.zeros(tokens.shape + (2,))
        for r, row in enumerate(tokens):
            s = 0 if row[0] == 0 else 2
            for t in range(len(row)):
                if t > 0:
                    s = (s + 1) % 3
                acc = sorted(accepts[s])
                out[r, t, acc] = 1.0 / len(acc)
        return out

    return predict


class PhaseWorld:
    """A stub world whose exact next-token law is the true phase automaton."""

    name = "phase"
    tagging = False

    def next_token_probs(self, tokens):
        return phase_predictor(TRUE_ACCEPTS)(tokens)


A, B = np.array([[0]]), np.array([[1]])  # A: state 0 (emits 0 next); B: state 2 (random next)
# worked by hand (suffixes of at most 3 tokens; direction 0 = A -> B, 1 = B -> A):
# truth: after A only 0, after B 0 or 1 -> "1" tells B from A; after the common "0", A is in
# state 1 (only 1) and B in state 0 (only 0) -> "0 1" (A) and "0 0" (B); nothing in common.
TRUE_BOUNDARY = {(1, (1,)), (0, (0, 1)), (1, (0, 0))}
# the confused model accepts 0 and 1 after both; then A (state 1) only 1, B (state 0) both ->
# "0 0", "1 0" for B; after the common "0 1" / "1 1", A (state 2) both, B (state 1) only 1.
CONFUSED_BOUNDARY = {(1, (0, 0)), (1, (1, 0)), (0, (0, 1, 0)), (0, (1, 1, 0))}


def last(fn):
    return lambda rows: fn(rows)[:, -1]


def test_boundaries_by_hand():
    assert bm.boundaries(last(phase_predictor(TRUE_ACCEPTS)), A, B, 3, 0.0)[0] == TRUE_BOUNDARY
    assert bm.boundaries(last(phase_predictor(CONFUSED_ACCEPTS)), A, B, 3, 0.01)[0] == CONFUSED_BOUNDARY
    # length 1 keeps only the one-token part of the truth
    assert bm.boundaries(last(phase_predictor(TRUE_ACCEPTS)), A, B, 1, 0.0)[0] == {(1, (1,))}


@pytest.mark.parametrize("name, accepts, precision, recall", [
    ("exact", TRUE_ACCEPTS, 1.0, 1.0),
    ("confused", CONFUSED_ACCEPTS, 1 / 4, 1 / 3),  # shares only "0 0" (B -> A) with the truth
])
def test_distinction_per_pair_by_hand(name, accepts, precision, recall):
    pairs = bm.PrefixPairs(np.array([[0], [1]]), np.array([1]), np.array([0]), np.array([1]))
    res = bm.distinction_beliefs(phase_predictor(accepts), PhaseWorld(), pairs, 0.01, 3)
    assert res["precision"].value == pytest.approx(precision)
    assert res["recall"].value == pytest.approx(recall)
    assert res["skipped"] == 0


def test_a_model_that_distinguishes_nothing_has_precision_one_and_recall_zero():
    def forgetful(tokens):
        return np.full(np.shape(tokens) + (2,), 0.5)

    pairs = bm.PrefixPairs(np.array([[0], [1]]), np.array([1, 1]), np.array([0, 1]), np.array([1, 0]))
    res = bm.distinction_beliefs(forgetful, PhaseWorld(), pairs, 0.01, 3)
    assert res["precision"].scores == (1.0, 1.0) and res["recall"].scores == (0.0, 0.0)


def test_exact_model_on_z1r_scores_one():
    w = make_world("z1r")
    res = bm.evaluate_belief_model(w.next_token_probs, w, n_pairs=60, seed=1, n_continuations=10)
    assert res.compression.n == 60 and res.compression.value == 1.0
    assert res.distinction_precision.value == 1.0 and res.distinction_recall.value == 1.0
    assert res.protocol["name"] == "myhill_nerode" and res.protocol["deviations"] == {"n_continuations": 10}


def test_same_belief_pairs_share_the_belief_and_differ_in_tokens():
    w = make_world("rrxor")
    tokens = w.sample(200, 10, seed=0).tokens
    pairs = bm.same_belief_pairs(w, tokens, np.random.default_rng(0), 50)
    assert len(pairs) == 50
    beliefs = w.beliefs(tokens)
    for k, a, b in zip(pairs.cut, pairs.a, pairs.b):
        assert not np.array_equal(tokens[a, :k], tokens[b, :k])
        np.testing.assert_allclose(beliefs[a, k - 1], beliefs[b, k - 1], atol=1e-9)
    diff = bm.different_belief_pairs(w, tokens, np.random.default_rng(0), 50)
    assert all(np.abs(beliefs[a, k - 1] - beliefs[b, k - 1]).max() > 1e-9 for k, a, b in zip(diff.cut, diff.a, diff.b))


def test_compression_fails_exactly_when_the_model_remembers_the_first_token():
    """Z1R: the model is exact after prefixes starting with 0 and forbids token 1 after
    prefixes starting with 1. Same-belief pairs pass iff both prefixes start alike: from a
    0-start the 5-token continuation holds a 1 (a 1 comes every 3 tokens), which the
    1-start forbids; from a 1-start it is all zeros, which the world (hence the 0-start,
    exact) forbids (at most two zeros in a row)."""
    w = make_world("z1r")

    def exact_or_uniform(tokens):
        """Z1R's next-token law by the forward recursion written out here; uniform after
        a prefix of probability 0 (the model's own samples can leave the support)."""
        T = w.T  # [x, i, j]
        emit = T.sum(axis=2).T  # [i, x]
        eta = np.tile(w.initial, (len(tokens), 1))
        alive = np.ones(len(tokens), dtype=bool)
        out = np.empty(tokens.shape + (2,))
        for t in range(tokens.shape[1]):
            u = np.einsum("ni,nij->nj", eta, T[tokens[:, t]])
            z = u.sum(axis=1)
            alive &= z > 0
            eta = np.where(alive[:, None], u / np.where(z > 0, z, 1.0)[:, None], eta)
            out[:, t] = np.where(alive[:, None], eta @ emit, 0.5)
        return out

    def remembers(tokens):
        q = exact_or_uniform(tokens)
        ones = tokens[:, 0] == 1
        q[ones, :, 1] = 0.0
        dead = q[ones].sum(-1) == 0
        sub = q[ones]
        sub[dead, 0] = 1.0
        q[ones] = sub / sub.sum(-1, keepdims=True)
        return q

    tokens = w.sample(300, 9, seed=3).tokens
    pairs = bm.same_belief_pairs(w, tokens, np.random.default_rng(0), 80)
    want = tokens[pairs.a, 0] == tokens[pairs.b, 0]
    assert want.any() and (~want).any()
    res = bm.compression_beliefs(remembers, pairs, np.random.default_rng(1), 0.01, 20, 5)
    assert res["per_pair"].tolist() == want.tolist()


def test_full_support_world_reports_distinction_undefined():
    w = make_world("mess3")
    res = bm.evaluate_belief_model(w.next_token_probs, w, n_pairs=20, seed=0, n_continuations=4)
    assert res.distinction_precision.n == 0 and res.counts["distinction_skipped"] == 20
    assert any("distinction is undefined" in n for n in res.notes)


def test_tagging_and_taxi_worlds_are_refused():
    with pytest.raises(bm.AnalysisError, match="taxi"):
        bm.check_belief_world(type("T", (), {"name": "taxi"})())
    with pytest.raises(bm.AnalysisError, match="tagging"):
        bm.check_belief_world(type("T", (), {"name": "a5", "tagging": True})())


def test_worldmodel_cli_on_an_hmm_checkpoint(tiny_mess3_ckpts, capsys):
    from nextlat_probe import worldmodel

    rc = worldmodel.main([str(tiny_mess3_ckpts["gpt"]), "--n-pairs", "20", "--continuations", "3", "--json",
                          "--rank-seqs", "32", "--no-progress"])
    assert rc == 0
    recs = json.loads(capsys.readouterr().out)
    wm = [r for r in recs if r["analysis"] == "worldmodel"]
    # Mess3 has full support (distinction undefined) and, in the 7-token prefixes that fit
    # this 12-token context with 5-token continuations, no two prefixes share a belief
    m = wm[0]["metrics"]
    assert wm[0]["protocol"]["name"] == "myhill_nerode" and m["distinction_skipped"] == m["distinction_pairs"] == 20
    assert m["compression"]["n"] == m["compression_pairs"] == 0
    assert any("compression is undefined" in n for n in m["notes"])
    rc = worldmodel.main([str(tiny_mess3_ckpts["gpt"]), "--n-pairs", "20", "--continuations", "3",
                          "--rank-seqs", "32", "--no-progress"])
    out = capsys.readouterr().out
    assert rc == 0 and "compression" in out and "myhill_nerode" in out and "distinction is undefined" in out


def test_every_runner_names_its_protocol(tiny_mess3_ckpts, tiny_taxi_ckpts):
    from nextlat_probe import compare

    m = [tiny_mess3_ckpts["gpt"]]
    recs = (compare.run_rank(m, n_seqs=16) + compare.run_probe(m, n_seqs=24, n_test=8, layers="last")
            + compare.run_transition([tiny_mess3_ckpts["nextlat"]], n_seqs=16, n_test=8)
            + compare.run_position_loss(m, n_seqs=16)
            + compare.run_worldmodel(m, n_pairs=10, n_continuations=2)
            + compare.run_mapping([tiny_taxi_ckpts["gpt"]], n_trips=20))
    assert {r["analysis"] for r in recs} == {"rank", "probe", "transition", "position_loss", "worldmodel", "mapping"}
    for r in recs:
        assert r["protocol"].get("name"), (r["analysis"], r["protocol"])
