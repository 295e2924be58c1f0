"""A5 word problem: group structure checked against permutations composed by hand."""
from __future__ import annotations

import itertools
import json

import numpy as np
import pytest

from nextlat_probe.worlds import A5, WorldError, make_world, world_from_spec


def compose(g: tuple[int, ...], h: tuple[int, ...]) -> tuple[int, ...]:
    """(g h)(i) = g(h(i)): apply h first, then g."""
    return tuple(g[h[i]] for i in range(5))


def parity(p: tuple[int, ...]) -> int:
    """Parity from the cycle decomposition: a k-cycle is k - 1 transpositions."""
    seen, transpositions = set(), 0
    for s in range(5):
        k, i = 0, s
        while i not in seen:
            seen.add(i)
            i = p[i]
            k += 1
        transpositions += max(k - 1, 0)
    return transpositions % 2


@pytest.fixture(scope="module")
def a5() -> A5:
    """The interleaved form (g_1, s_1, g_2, s_2, ...); tests/test_a5_tagging.py covers the
    tagging form, the default."""
    return A5(form="interleaved")


def test_elements(a5):
    el = a5.elements
    assert len(el) == 60 and len(set(el)) == 60
    assert el == sorted(el) and el[0] == (0, 1, 2, 3, 4) and a5.identity == 0
    assert all(parity(p) == 0 for p in el)
    assert set(el) == {p for p in itertools.permutations(range(5)) if parity(p) == 0}
    names = a5.token_names
    assert len(set(names)) == 60 and names[0] == "e" and not any(" " in n for n in names)
    assert names[el.index((1, 2, 0, 3, 4))] == "(012)"


def test_multiplication_table(a5):
    el, mul = a5.elements, a5.mul
    assert mul.shape == (60, 60)
    for a, b in itertools.product(range(60), repeat=2):
        assert el[mul[a, b]] == compose(el[a], el[b])
    # closure and cancellation: every row and column is a permutation of the group
    assert all(sorted(r) == list(range(60)) for r in mul)
    assert all(sorted(c) == list(range(60)) for c in mul.T)
    np.testing.assert_array_equal(mul[0], np.arange(60))
    np.testing.assert_array_equal(mul[:, 0], np.arange(60))
    for a in range(60):  # inverses: the inverse permutation lists positions by image
        inv = tuple(sorted(range(5), key=lambda i: el[a][i]))
        assert mul[a, el.index(inv)] == 0
    idx = np.arange(60)
    left = mul[mul[idx[:, None, None], idx[None, :, None]], idx[None, None, :]]
    right = mul[idx[:, None, None], mul[idx[None, :, None], idx[None, None, :]]]
    np.testing.assert_array_equal(left, right)  # associative
    assert (mul != mul.T).any()  # not abelian


def test_running_products_and_states(a5):
    s = a5.sample(20, 9, seed=0)
    assert s.tokens.shape == s.states.shape == (20, 9)
    el = a5.elements
    for row_t, row_s in zip(s.tokens, s.states):
        prod = el[0]
        for pos in range(0, 9, 2):
            prod = compose(prod, el[row_t[pos]])  # s_k = s_{k-1} g_k
            assert el[row_s[pos]] == prod
            if pos + 1 < 9:
                assert el[row_t[pos + 1]] == prod and row_s[pos + 1] == row_t[pos + 1]
    # inputs are uniform over the group
    g = a5.sample(30_000, 2, seed=1).tokens[:, 0]
    counts = np.bincount(g, minlength=60)
    assert abs(counts - 500).max() < 5 * np.sqrt(500)


def test_masks_and_positions(a5):
    tokens = a5.sample(3, 7, seed=2).tokens
    mask = a5.target_mask(tokens)
    np.testing.assert_array_equal(mask, np.tile([False, True] * 3 + [False], (3, 1)))
    np.testing.assert_array_equal(A5.state_positions(7), [1, 3, 5])
    np.testing.assert_array_equal(A5.input_positions(7), [0, 2, 4, 6])
    np.testing.assert_array_equal(a5.position_mask(tokens), np.ones((3, 7), bool))


def test_next_token_probs_and_beliefs(a5):
    s = a5.sample(10, 8, seed=3)
    p = a5.next_token_probs(s.tokens)
    b = a5.beliefs(s.tokens)
    assert p.shape == b.shape == (10, 8, 60)
    # at inputs: one-hot on the next token (the product just formed)
    np.testing.assert_array_equal(p[:, 0:-1:2].argmax(-1), s.tokens[:, 1::2])
    np.testing.assert_array_equal(p[:, 0::2].max(-1), 1.0)
    np.testing.assert_allclose(p[:, 1::2], 1 / 60)
    np.testing.assert_array_equal(b.argmax(-1), s.states)
    np.testing.assert_array_equal(b.sum(-1), 1.0)
    assert a5.exact_cross_entropy(s.tokens) == 0.0
    # wrong state tokens do not change the belief: it follows the inputs
    bad = s.tokens.copy()
    bad[:, 1::2] = (bad[:, 1::2] + 1) % 60
    np.testing.assert_array_equal(a5.beliefs(bad), b)
    assert a5.exact_cross_entropy(bad) == np.inf


def test_odd_length_ends_on_input(a5):
    s = a5.sample(4, 5, seed=4)
    el = a5.elements
    for row_t, row_s in zip(s.tokens, s.states):
        prod = compose(compose(el[row_t[0]], el[row_t[2]]), el[row_t[4]])
        assert el[row_s[4]] == prod


def test_spec_round_trip_and_errors(a5):
    spec = json.loads(json.dumps(a5.spec()))
    assert spec == {"kind": "a5", "form": "interleaved"}
    back = world_from_spec(spec)
    assert isinstance(back, A5) and back.form == "interleaved"
    np.testing.assert_array_equal(back.mul, a5.mul)
    assert isinstance(make_world("a5"), A5)
    with pytest.raises(WorldError, match="kind 'a5'"):
        A5.from_spec({"kind": "hmm"})
    with pytest.raises(WorldError, match="outside the vocabulary"):
        a5.beliefs(np.array([[0, 60]]))
