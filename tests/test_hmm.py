"""HMM worlds: hand-worked belief updates, brute-force Bayes, Monte-Carlo frequencies."""
from __future__ import annotations

import itertools
import json
import math

import numpy as np
import pytest

from nextlat_probe.worlds import (
    HMM,
    RRXOR,
    Mess3,
    WorldError,
    ZeroOneRandom,
    make_world,
    world_from_spec,
)

LOG2, LOG3 = math.log(2), math.log(3)


def random_hmm(seed: int, V: int = 3, S: int = 4) -> HMM:
    rng = np.random.default_rng(seed)
    flat = rng.dirichlet(np.ones(V * S), size=S)  # row i: joint over (x, j)
    T = flat.reshape(S, V, S).transpose(1, 0, 2)
    return HMM(T, name="random")


# --- beliefs worked by hand ---------------------------------------------------------------

def test_mess3_two_updates_by_hand():
    # x = 0.05, a = 0.85: stay 0.9, move 0.05 to each other state; emit own state 0.85,
    # each other token 0.075. Start uniform (1/3, 1/3, 1/3).
    w = Mess3(0.05, 0.85)
    b = w.beliefs(np.array([[0, 1]]))[0]
    # token 0: uniform prior stays uniform after moving (symmetric), so
    # eta' ∝ P(emit 0 | new state) = (0.85, 0.075, 0.075), which already sums to 1.
    np.testing.assert_allclose(b[0], [0.85, 0.075, 0.075], atol=1e-12)
    # token 1: move first,
    #   to 0: 0.85*0.9  + 0.075*0.05 + 0.075*0.05 = 0.7725
    #   to 1: 0.85*0.05 + 0.075*0.9  + 0.075*0.05 = 0.11375
    #   to 2: 0.85*0.05 + 0.075*0.05 + 0.075*0.9  = 0.11375
    # then weight by P(emit 1 | new state) = (0.075, 0.85, 0.075):
    #   0.7725*0.075 = 0.0579375, 0.11375*0.85 = 0.0966875, 0.11375*0.075 = 0.00853125
    u = np.array([0.0579375, 0.0966875, 0.00853125])
    z = 0.0579375 + 0.0966875 + 0.00853125  # = 0.16315625 = P(x1 = 1 | x0 = 0)
    np.testing.assert_allclose(b[1], u / z, atol=1e-12)
    p = w.next_token_probs(np.array([[0]]))[0, 0]
    np.testing.assert_allclose(p[1], 0.16315625, atol=1e-12)


def test_rrxor_belief_known_after_xor_bits():
    # start known at S (order S, 0, 1, T, F): bits 1 then 0 -> XOR = 1 -> state T;
    # bits 1 then 1 -> XOR = 0 -> state F; the XOR token then returns to S.
    w = HMM(RRXOR().T, initial=[1, 0, 0, 0, 0])
    b = w.beliefs(np.array([[1, 0, 1], [1, 1, 0], [0, 0, 0]]))
    np.testing.assert_allclose(b[0], [[0, 0, 1, 0, 0], [0, 0, 0, 1, 0], [1, 0, 0, 0, 0]], atol=1e-12)
    np.testing.assert_allclose(b[1], [[0, 0, 1, 0, 0], [0, 0, 0, 0, 1], [1, 0, 0, 0, 0]], atol=1e-12)
    np.testing.assert_allclose(b[2, 1], [0, 0, 0, 0, 1], atol=1e-12)  # 0 xor 0 = 0 -> F
    # after T the XOR bit is 1 for sure, after F it is 0
    p = w.next_token_probs(np.array([[1, 0], [1, 1]]))
    np.testing.assert_allclose(p[:, 1], [[0, 1], [1, 0]], atol=1e-12)


def test_rrxor_first_token_from_stationary_by_hand():
    # prior (S, 0, 1, T, F) = (1/3, 1/6, 1/6, 1/6, 1/6). Ways to emit 0:
    #   S -0-> 0: 1/3 * 1/2 = 1/6;  0 -0-> F: 1/6 * 1/2 = 1/12;  1 -0-> T: 1/12;  F -0-> S: 1/6
    # total 1/2, posterior (S, 0, 1, T, F) = (1/3, 1/3, 0, 1/6, 1/6)
    w = RRXOR()
    np.testing.assert_allclose(w.beliefs(np.array([[0]]))[0, 0], [1 / 3, 1 / 3, 0, 1 / 6, 1 / 6], atol=1e-12)


def test_beliefs_are_distributions():
    for w in (Mess3(), RRXOR(), ZeroOneRandom(), random_hmm(0)):
        s = w.sample(50, 12, seed=1)
        b = w.beliefs(s.tokens)
        assert b.shape == (50, 12, w.n_states)
        assert (b >= 0).all()
        np.testing.assert_allclose(b.sum(-1), 1.0, atol=1e-12)
        p = w.next_token_probs(s.tokens)
        np.testing.assert_allclose(p.sum(-1), 1.0, atol=1e-12)
        # the state actually reached always has positive belief
        assert (np.take_along_axis(b, s.states[..., None], -1) > 0).all()


# --- independent brute force --------------------------------------------------------------

def brute_force_posterior(T: np.ndarray, initial: np.ndarray, seq: tuple[int, ...]) -> np.ndarray:
    """P(state after the last token | tokens) by summing over every hidden-state path."""
    S = T.shape[1]
    post = np.zeros(S)
    for path in itertools.product(range(S), repeat=len(seq) + 1):
        p = initial[path[0]]
        for t, x in enumerate(seq):
            p *= T[x, path[t], path[t + 1]]
        post[path[-1]] += p
    return post / post.sum()


@pytest.mark.parametrize("world", [Mess3(0.1, 0.7), RRXOR(), random_hmm(3)], ids=["mess3", "rrxor", "random"])
def test_beliefs_match_path_enumeration(world):
    seqs = world.sample(6, 4, seed=7).tokens
    b = world.beliefs(seqs)
    for i, seq in enumerate(seqs):
        for t in range(seqs.shape[1]):
            want = brute_force_posterior(world.T, world.initial, tuple(int(v) for v in seq[: t + 1]))
            np.testing.assert_allclose(b[i, t], want, atol=1e-12)


def test_next_token_probs_match_monte_carlo():
    for w, prefix in ((Mess3(), (0, 0)), (Mess3(0.15, 0.6), (2, 1)), (RRXOR(), (0, 1)), (random_hmm(5), (1, 2))):
        s = w.sample(200_000, len(prefix) + 1, seed=11).tokens
        hit = (s[:, : len(prefix)] == prefix).all(axis=1)
        n = int(hit.sum())
        assert n > 5000
        freq = np.bincount(s[hit, -1], minlength=w.vocab_size) / n
        p = w.next_token_probs(np.array([prefix]))[0, -1]
        std = np.sqrt(p * (1 - p) / n)
        assert (np.abs(freq - p) <= 4.5 * std + 1e-12).all(), (w.name, freq, p)


def test_sample_states_follow_T_and_stationary():
    w = RRXOR()
    s = w.sample(20_000, 9, seed=2)
    prev = s.states[:, :-1]
    assert (w.T[s.tokens[:, 1:], prev, s.states[:, 1:]] > 0).all()
    freq = np.bincount(s.states[:, 0], minlength=5) / 20_000
    np.testing.assert_allclose(freq, w.initial, atol=0.015)
    m = Mess3(0.05, 0.85).sample(20_000, 5, seed=3)
    assert abs((m.tokens == m.states).mean() - 0.85) < 0.01  # emits its new state w.p. a
    assert abs((m.states[:, 1:] == m.states[:, :-1]).mean() - 0.9) < 0.01  # stays w.p. 1 - 2x


def test_stationary_distributions():
    np.testing.assert_allclose(Mess3().initial, [1 / 3] * 3, atol=1e-12)
    np.testing.assert_allclose(RRXOR().initial, [1 / 3, 1 / 6, 1 / 6, 1 / 6, 1 / 6], atol=1e-12)
    np.testing.assert_allclose(ZeroOneRandom().initial, [1 / 3] * 3, atol=1e-12)
    w = random_hmm(8)
    M = w.T.sum(0)
    np.testing.assert_allclose(w.initial @ M, w.initial, atol=1e-12)


# --- mixed states and myopic entropy -------------------------------------------------------

def test_rrxor_has_36_beliefs():
    w = RRXOR()
    ms = w.enumerate_beliefs(10)
    assert len(ms) == 36
    np.testing.assert_allclose(ms.probs.sum(), 1.0)
    np.testing.assert_allclose(ms.beliefs.sum(1), 1.0)
    assert ms.first_length.max() == 6  # 34 beliefs at length 5, all 36 by length 6
    assert len(w.enumerate_beliefs(5)) == 34
    # the same set as the beliefs of every possible binary sequence of length 8
    seqs = np.array(list(itertools.product([0, 1], repeat=8)))
    ok = [i for i, s in enumerate(seqs) if np.linalg.multi_dot([w.initial, *w.T[s]]).sum() > 0]
    b = w.beliefs(seqs[ok]).reshape(-1, 5)
    seen = {tuple(r) for r in np.round(b, 9)} | {tuple(np.round(w.initial, 9))}
    assert seen == {tuple(r) for r in np.round(ms.beliefs, 9)}


def test_z1r_myopic_entropy_by_hand():
    # h(1): P(0) = 1/3 (state 0) + 1/3 * 1/2 (random bit) = 1/2 -> log 2
    # h(2): after 0 the next is 1 w.p. 2/3; after 1 it is 0 w.p. 2/3 -> H(1/3, 2/3)
    # h(3): "00" (1/6) and "11" (1/6) synchronise (entropy 0); "01" (1/3) -> random bit next,
    #       "10" (1/3) -> states 0/1 equally likely -> log 2 each: 2/3 log 2
    # h(L >= 4): synchronised; the random bit comes one position in three: log 2 / 3
    h = ZeroOneRandom().myopic_entropy(8)
    want = [LOG2, LOG3 - 2 / 3 * LOG2, 2 / 3 * LOG2] + [LOG2 / 3] * 5
    np.testing.assert_allclose(h, want, atol=1e-12)


def sequence_entropy(w: HMM, L: int) -> float:
    """H(X_1..X_L) from P(x) = pi T[x_1] ... T[x_L] 1, one sequence at a time."""
    H = 0.0
    for seq in itertools.product(range(w.vocab_size), repeat=L):
        v = w.initial.copy()
        for x in seq:
            v = v @ w.T[x]
        p = v.sum()
        if p > 0:
            H -= p * math.log(p)
    return H


@pytest.mark.parametrize("world", [Mess3(), RRXOR(), random_hmm(4, V=2, S=3)], ids=["mess3", "rrxor", "random"])
def test_myopic_entropy_matches_block_entropies(world):
    h = world.myopic_entropy(6)
    blocks = [0.0] + [sequence_entropy(world, L) for L in range(1, 7)]
    np.testing.assert_allclose(h, np.diff(blocks), atol=1e-10)


def test_mess3_myopic_entropy_decreases_to_rate():
    w = Mess3()
    h = w.myopic_entropy(11)  # exact regime: 3**10 mixed states
    assert h[0] == pytest.approx(LOG3)
    assert (np.diff(h) <= 1e-12).all()
    gaps = -np.diff(h)
    assert gaps[-1] < 2e-6 and (gaps[1:] < gaps[:-1]).all()  # converging
    assert h[-1] > w.entropy_rate_bound()
    # long horizon (coarsened mixed states) stays at the converged value
    h64 = w.myopic_entropy(64)
    np.testing.assert_allclose(h64[:11], h, atol=1e-12)
    assert abs(h64[-1] - h[-1]) < 1e-5
    # Monte-Carlo: mean -log p of the 10th token under the exact predictor is h(10)
    s = w.sample(40_000, 10, seed=5).tokens
    p = w.next_token_probs(s)[:, 8]
    nll = -np.log(p[np.arange(len(s)), s[:, 9]])
    assert abs(nll.mean() - h[9]) < 4 * nll.std() / np.sqrt(len(s))


def test_exact_cross_entropy_by_hand():
    w = Mess3(0.05, 0.85)
    # P(x1 = 1 | x0 = 0) = 0.16315625 (see test above); P(x1 = 0 | x0 = 0):
    # moved prior (0.7725, 0.11375, 0.11375) · P(emit 0 | state) (0.85, 0.075, 0.075)
    p00 = 0.7725 * 0.85 + 0.11375 * 0.075 * 2
    want = (-math.log(0.16315625) - math.log(p00)) / 2
    assert w.exact_cross_entropy(np.array([[0, 1], [0, 0]])) == pytest.approx(want, abs=1e-12)


# --- bad inputs ------------------------------------------------------------------------------

@pytest.mark.parametrize("T, match", [
    (np.full((2, 3, 3), 0.15), r"row 0 of sum_x T sums to 0\.9, not 1"),
    (np.array([[[1.5, -0.5]], [[0.0, 0.0]]]).reshape(2, 1, 2), "square"),
    (np.array([[[1.5, -0.5], [0.5, 0.5]], [[0.0, 0.0], [0.0, 0.0]]]), r"T\[0, 0, 1\] = -0\.5 is negative"),
    (np.eye(3), "3-D"),
    (np.full((1, 2, 2), np.nan), "not finite"),
    ("abc", "numeric"),
])
def test_bad_T_raises(T, match):
    with pytest.raises(WorldError, match=match):
        HMM(T)


def test_bad_initial_and_names_raise():
    T = Mess3().T
    with pytest.raises(WorldError, match=r"initial must have shape \(3,\)"):
        HMM(T, initial=[0.5, 0.5])
    with pytest.raises(WorldError, match="initial sums to 0.9"):
        HMM(T, initial=[0.3, 0.3, 0.3])
    with pytest.raises(WorldError, match="2 token names for 3 tokens"):
        HMM(T, token_names=["a", "b"])
    with pytest.raises(WorldError, match="unique"):
        HMM(np.stack([np.eye(2) / 2, np.eye(2) / 2]))  # two closed classes
    with pytest.raises(WorldError, match="x must lie in"):
        Mess3(x=1.5)


def test_zero_probability_sequence_raises():
    w = ZeroOneRandom()
    # "0 0" forces state 1, which must emit 1: the third 0 is impossible
    with pytest.raises(WorldError, match=r"sequence 1 has probability 0 at position 2"):
        w.beliefs(np.array([[0, 1, 0], [0, 0, 0]]))
    with pytest.raises(WorldError, match="outside the vocabulary"):
        w.beliefs(np.array([[0, 2]]))


# --- serialisation and registry ----------------------------------------------------------------

def test_spec_round_trip():
    for w in (Mess3(0.1, 0.7), RRXOR(0.3, 0.6), ZeroOneRandom(0.2)):
        spec = json.loads(json.dumps(w.spec()))
        assert spec["kind"] == "hmm" and spec["name"] == w.name
        back = world_from_spec(spec)
        assert type(back) is type(w) and back.params == w.params
        np.testing.assert_array_equal(back.T, w.T)
        assert back.spec() == w.spec()
    custom = HMM(Mess3().T, initial=[0.5, 0.25, 0.25], name="custom", token_names=["a", "b", "c"])
    back = world_from_spec(json.loads(json.dumps(custom.spec())))
    assert type(back) is HMM and back.token_names == ["a", "b", "c"]
    np.testing.assert_array_equal(back.initial, custom.initial)
    toks = custom.sample(4, 6, seed=0).tokens
    np.testing.assert_array_equal(back.beliefs(toks), custom.beliefs(toks))


def test_make_world_names():
    assert make_world("mess3", x=0.1, a=None).params == {"x": 0.1, "a": 0.85}
    assert make_world("rrxor").name == "rrxor"
    assert make_world("z1r", p=0.3).name == "z1r"
    s1 = Mess3().sample(3, 5, seed=9)
    s2 = Mess3().sample(3, 5, seed=9)
    np.testing.assert_array_equal(s1.tokens, s2.tokens)


def test_many_states_path_matches_textbook_filter():
    # more than 32 states takes the per-token matmul path instead of the batched einsum
    w = random_hmm(12, V=2, S=40)
    toks = w.sample(30, 6, seed=0).tokens
    b = w.beliefs(toks)
    for i, seq in enumerate(toks):
        eta = w.initial
        for t, x in enumerate(seq):
            eta = eta @ w.T[x] / (eta @ w.T[x]).sum()
            np.testing.assert_allclose(b[i, t], eta, atol=1e-12)
    h = w.myopic_entropy(4)
    blocks = [0.0] + [sequence_entropy(w, L) for L in range(1, 5)]
    np.testing.assert_allclose(h, np.diff(blocks), atol=1e-10)
