"""Taxi world: sampling, exact predictive distributions and beliefs (checked against brute-force
enumeration and Monte-Carlo frequencies), legality checks, serialisation, the CLI."""
from __future__ import annotations

import json
import time
from collections import Counter, defaultdict, deque

import numpy as np
import pytest
from helpers import MANHATTAN, run_cli

from nextlat_probe.worlds import WorldError, make_world, world_from_spec
from nextlat_probe.worlds.streetmap import DIRECTIONS, StreetMap, synthetic_manhattan
from nextlat_probe.worlds.taxi import MAX_HIDDEN_NODES, Taxi, check_sequences, parse_sequences


def square_map() -> StreetMap:
    """Four intersections in a square (strongly connected) plus a dead end 4 east of 1."""
    edges = [(0, "E", 1), (0, "N", 2), (1, "W", 0), (1, "N", 3), (1, "E", 4),
             (2, "E", 3), (2, "S", 0), (3, "S", 1), (3, "W", 2), (3, "SW", 0)]
    return StreetMap(5, edges, coords=[[0, 0], [1, 0], [0, 1], [1, 1], [2, 0]],
                     node_ids=[10, 11, 12, 13, 14], name="square")


# the walkable edges of square_map (the dead end 4 lies outside the strongly connected part)
SQUARE_WALK = {0: {"E": 1, "N": 2}, 1: {"W": 0, "N": 3}, 2: {"E": 3, "S": 0},
               3: {"S": 1, "W": 2, "SW": 0}}


def enumerate_walks(walk: dict, min_len: int, max_len: int):
    """Every random walk with its probability: (origin, [dirs], [nodes], prob)."""
    origins = sorted(walk)
    p_len = 1.0 / (max_len - min_len + 1)
    out = []

    def rec(path, dirs, prob):
        steps = len(dirs)
        if min_len <= steps <= max_len:
            out.append((path[0], list(dirs), list(path), prob * p_len))
        if steps == max_len:
            return
        here = walk[path[-1]]
        for d, nxt in here.items():
            rec(path + [nxt], dirs + [d], prob / len(here))

    for o in origins:
        rec([o], [], 1.0 / len(origins))
    return out


def prefix_table(seqs):
    """prefix tuple -> Counter(next token -> probability mass)."""
    table: dict[tuple, Counter] = defaultdict(Counter)
    for seq, p in seqs:
        for k in range(len(seq)):
            table[tuple(seq[:k])][seq[k]] += p
    return table


def pad_rows(world: Taxi, rows: list[list[int]], length: int) -> np.ndarray:
    out = np.full((len(rows), length), world.pad_id, dtype=np.int64)
    for i, r in enumerate(rows):
        out[i, :len(r)] = r
    return out


def bfs_dist(walk: dict, target: int) -> dict[int, int]:
    """Turns from every node to target (plain BFS on the reversed walkable graph)."""
    rev = defaultdict(list)
    for a, nb in walk.items():
        for b in nb.values():
            rev[b].append(a)
    dist, todo = {target: 0}, deque([target])
    while todo:
        b = todo.popleft()
        for a in rev[b]:
            if a not in dist:
                dist[a] = dist[b] + 1
                todo.append(a)
    return dist


# --- sampling --------------------------------------------------------------------------------
@pytest.mark.parametrize("opts", [dict(), dict(walk="shortest"), dict(walk="noisy", noise=0.3),
                                  dict(origin="hidden"), dict(map_size=9, seed=2, min_len=1, max_len=15)])
def test_samples_are_valid_and_states_follow_tokens(opts):
    world = make_world("taxi", **opts)
    s = world.sample(300, world.default_length + 2, seed=0)
    n, length = s.tokens.shape
    res = world.check_sequences(s.tokens)
    assert res["legal"].all() and res["valid"].all() and res["ended"].all()
    succ = world.map.succ
    prompt = 0 if world.origin == "hidden" else 2
    L = s.extras["lengths"]
    if world.walk == "random":
        assert L.min() >= world.min_len and L.max() <= world.max_len
    else:
        assert L.max() <= world.max_len
    for i in range(n):
        row, st = s.tokens[i], s.states[i]
        if prompt:
            assert row[0] == s.extras["origin"][i] and row[1] == s.extras["dest"][i]
        node = s.extras["origin"][i]
        for k in range(L[i]):
            d = row[prompt + k] - world.dir0
            assert 0 <= d < 8
            node = succ[node, d]
            assert st[prompt + k, 0] == node
            if world.walk == "random":
                assert st[prompt + k, 2] == L[i] - k - 1
        assert node == s.extras["dest"][i]
        assert row[prompt + L[i]] == world.end_id
        assert (row[prompt + L[i] + 1:] == world.pad_id).all()
        assert (st[:, 1] == node).all() and (st[prompt + L[i]:, 0] == node).all()
        assert (st[prompt + L[i]:, 2] == 0).all()
    # exact distributions are distributions, and every observed token has positive probability
    probs = world.next_token_probs(s.tokens)
    assert np.allclose(probs.sum(-1), 1.0)
    assert np.isfinite(world.exact_cross_entropy(s.tokens))


def test_sample_is_seeded_and_checks_length():
    w = make_world("taxi")
    a, b = w.sample(20, seed=3), w.sample(20, seed=3)
    assert np.array_equal(a.tokens, b.tokens) and np.array_equal(a.states, b.states)
    assert w.default_length == w.max_len + 3 == 43
    with pytest.raises(WorldError, match="length"):
        w.sample(5, w.max_len + 2)
    h = make_world("taxi", origin="hidden")
    assert h.default_length == h.max_len + 1
    h.sample(5, h.max_len + 1)


def test_shortest_paths_follow_bfs_and_tie_break():
    world = Taxi(synthetic_manhattan(5, 5, seed=1), walk="shortest")
    walk = {a: {DIRECTIONS[d]: int(world.walk_succ[a, d]) for d in range(8) if world.walk_succ[a, d] >= 0}
            for a in range(world.map.n_nodes)}
    s = world.sample(200, seed=1)
    for i in range(200):
        o, g, L = s.extras["origin"][i], s.extras["dest"][i], s.extras["lengths"][i]
        dist = bfs_dist(walk, int(g))
        assert L == dist[o]
        node = o
        for k in range(L):
            on_path = [d for d in DIRECTIONS if d in walk[node] and dist[walk[node][d]] == dist[node] - 1]
            d = world.token_names[s.tokens[i, 2 + k]]
            assert d == on_path[0]  # first in DIRECTIONS order
            node = walk[node][d]
    assert world.max_len == max(max(bfs_dist(walk, g).values()) for g in walk)


# --- exact distributions against brute-force enumeration ---------------------------------------
def test_random_walk_probs_and_beliefs_match_enumeration():
    world = Taxi(square_map(), min_len=2, max_len=5)
    walks = enumerate_walks(SQUARE_WALK, 2, 5)
    assert abs(sum(p for *_, p in walks) - 1) < 1e-12
    tid = {name: i for i, name in enumerate(world.token_names)}
    seqs = [([o, path[-1]] + [tid[d] for d in dirs] + [world.end_id], p) for o, dirs, path, p in walks]
    table = prefix_table(seqs)
    # the steps still to go, given each prefix (brute force over the same enumeration)
    to_go: dict[tuple, Counter] = defaultdict(Counter)
    for (seq, p), (_, dirs, _, _) in zip(seqs, walks):
        for k in range(len(dirs) + 1):
            to_go[tuple(seq[:2 + k])][len(dirs) - k] += p
    rows = [seq for seq, _ in seqs]
    tokens = pad_rows(world, rows, world.default_length)
    probs = world.next_token_probs(tokens)
    parts = world.belief_parts(tokens)
    beliefs = world.beliefs(tokens)
    N, K = world.map.n_nodes, world.max_len
    assert beliefs.shape == (len(rows), tokens.shape[1], 2 * N + K + 1) == (len(rows), 8, world.n_states)
    for i, seq in enumerate(rows):
        for t in range(len(seq) - 1):
            c = table[tuple(seq[:t + 1])]
            z = sum(c.values())
            expect = np.zeros(world.vocab_size)
            for tok, m in c.items():
                expect[tok] = m / z
            np.testing.assert_allclose(probs[i, t], expect, atol=1e-12)
        for t in range(1, len(seq) - 1):
            c = to_go[tuple(seq[:t + 1])]
            z = sum(c.values())
            expect = np.zeros(K + 1)
            for k, m in c.items():
                expect[k] = m / z
            np.testing.assert_allclose(parts["to_go"][i, t], expect, atol=1e-12)
            np.testing.assert_allclose(beliefs[i, t, 2 * N:], expect, atol=1e-12)
            assert beliefs[i, t, seq[1] + N] == 1.0 and beliefs[i, t, N:2 * N].sum() == 1.0
        # after end and on padding: pad with certainty, node = destination, nothing to go
        assert np.all(probs[i, len(seq) - 1:, world.pad_id] == 1.0)
        assert np.all(parts["node"][i, len(seq) - 1:] == seq[1])
        assert np.all(parts["to_go"][i, len(seq) - 1:, 0] == 1.0)
        # after the origin alone: the destination block is P(dest | origin)
        np.testing.assert_allclose(beliefs[i, 0, N:2 * N], probs[i, 0, :N], atol=1e-15)


def test_dest_given_origin_hand_worked():
    # one-turn trips: the destination is a uniformly chosen walkable neighbour
    world = Taxi(square_map(), min_len=1, max_len=1)
    tokens = np.array([[3, 0, world.dir0 + DIRECTIONS.index("SW"), world.end_id],
                       [1, 3, world.dir0 + DIRECTIONS.index("N"), world.end_id]])
    probs = world.next_token_probs(tokens)
    np.testing.assert_allclose(probs[0, 0, :5], [1 / 3, 1 / 3, 1 / 3, 0, 0])
    # from node 1 the dead end (E -> 4) is never driven: W and N only
    np.testing.assert_allclose(probs[1, 0, :5], [1 / 2, 0, 0, 1 / 2, 0])
    assert probs[1, 1, world.dir0 + DIRECTIONS.index("N")] == 1.0
    assert probs[1, 2, world.end_id] == 1.0


def test_r_vectors_match_walk_counting():
    # r_j = A^j e_dest: probability that j more steps from n end at dest, by pushing walks
    world = Taxi(square_map(), min_len=1, max_len=3)
    A = world._A.toarray()
    for n in range(4):
        frontier = {n: 1.0}
        for j in range(5):
            r_j = np.linalg.matrix_power(A, j)[n]
            expect = np.array([frontier.get(g, 0.0) for g in range(5)])
            np.testing.assert_allclose(r_j, expect, atol=1e-12)
            nxt: dict[int, float] = defaultdict(float)
            for a, pa in frontier.items():
                for b in SQUARE_WALK[a].values():
                    nxt[b] += pa / len(SQUARE_WALK[a])
            frontier = nxt


def test_hidden_origin_matches_enumeration():
    world = Taxi(square_map(), min_len=1, max_len=4, origin="hidden")
    assert world.token_names == list(DIRECTIONS) + ["end", "pad"]
    assert world.belief_nodes.tolist() == [0, 1, 2, 3] and world.n_states == 4
    walks = enumerate_walks(SQUARE_WALK, 1, 4)
    tid = {name: i for i, name in enumerate(world.token_names)}
    seqs = [([tid[d] for d in dirs] + [world.end_id], p) for o, dirs, path, p in walks]
    table = prefix_table(seqs)
    node_post: dict[tuple, Counter] = defaultdict(Counter)
    for (seq, p), (_, dirs, path, _) in zip(seqs, walks):
        for k in range(1, len(dirs) + 1):
            node_post[tuple(seq[:k])][path[k]] += p
    rows = sorted({tuple(seq) for seq, _ in seqs})
    tokens = pad_rows(world, [list(r) for r in rows], world.default_length)
    probs = world.next_token_probs(tokens)
    beliefs = world.beliefs(tokens)
    for i, seq in enumerate(rows):
        for t in range(len(seq) - 1):
            c = table[tuple(seq[:t + 1])]
            z = sum(c.values())
            expect = np.zeros(world.vocab_size)
            for tok, m in c.items():
                expect[tok] = m / z
            np.testing.assert_allclose(probs[i, t], expect, atol=1e-12)
        for t in range(len(seq) - 1):
            c = node_post[tuple(seq[:t + 1])]
            z = sum(c.values())
            expect = np.array([c[k] / z for k in range(4)])
            np.testing.assert_allclose(beliefs[i, t], expect, atol=1e-12)
        # end carries no information about the node
        np.testing.assert_allclose(beliefs[i, len(seq) - 1], beliefs[i, len(seq) - 2], atol=1e-15)
        assert np.all(probs[i, len(seq) - 1:, world.pad_id] == 1.0)


def test_noisy_shortest_paths_match_enumeration():
    noise, max_len = 0.3, 4
    world = Taxi(square_map(), walk="noisy", noise=noise, max_len=max_len)
    tid = {name: i for i, name in enumerate(world.token_names)}
    seqs = []

    def rec(node, dest, dirs, prob, dist):
        if node == dest:
            seqs.append(([o, dest] + [tid[d] for d in dirs] + [world.end_id], prob))
            return
        here = SQUARE_WALK[node]
        best = next(d for d in DIRECTIONS if d in here and dist[here[d]] == dist[node] - 1)
        feas = [d for d in DIRECTIONS if d in here and len(dirs) + 1 + dist[here[d]] <= max_len]
        for d in here:
            p = (1 - noise) * (d == best) + noise * (d in feas) / len(feas)
            if p > 0:
                rec(here[d], dest, dirs + [d], prob * p, dist)

    for o in range(4):
        for g in range(4):
            if g != o:
                rec(o, g, [], 1 / 12, bfs_dist(SQUARE_WALK, g))
    assert abs(sum(p for _, p in seqs) - 1) < 1e-12
    assert max(len(s) for s, _ in seqs) - 3 == max_len  # the budget binds
    table = prefix_table(seqs)
    rows = [s for s, _ in seqs]
    probs = world.next_token_probs(pad_rows(world, rows, world.default_length))
    for i, seq in enumerate(rows):
        for t in range(len(seq) - 1):
            c = table[tuple(seq[:t + 1])]
            z = sum(c.values())
            expect = np.zeros(world.vocab_size)
            for tok, m in c.items():
                expect[tok] = m / z
            np.testing.assert_allclose(probs[i, t], expect, atol=1e-12)


# --- exact distributions against the sampler (Monte-Carlo) ------------------------------------
@pytest.mark.parametrize("origin,prefix_len", [("visible", 3), ("visible", 5), ("hidden", 2)])
def test_probs_match_sampler_frequencies(origin, prefix_len):
    world = Taxi(synthetic_manhattan(4, 4, seed=0), min_len=2, max_len=8, origin=origin)
    s = world.sample(100_000, seed=11)
    keys = [tuple(r) for r in s.tokens[:, :prefix_len]]
    top = [k for k, _ in Counter(keys).most_common(3)]
    probs = world.next_token_probs(s.tokens)
    checked = 0
    for key in top:
        rows = np.flatnonzero(np.all(s.tokens[:, :prefix_len] == np.array(key), axis=1))
        exact = probs[rows, prefix_len - 1]
        assert np.allclose(exact, exact[0])  # the same prefix gives the same distribution
        freq = np.bincount(s.tokens[rows, prefix_len], minlength=world.vocab_size) / rows.size
        sd = np.sqrt(exact[0] * (1 - exact[0]) / rows.size)
        assert np.all(np.abs(freq - exact[0]) <= 4.5 * sd + 1e-12), (key, freq, exact[0])
        checked += rows.size
    assert checked > 500


def test_no_mass_on_illegal_turns_or_early_end():
    world = Taxi(synthetic_manhattan(6, 6, seed=4), min_len=3, max_len=20)
    s = world.sample(500, seed=2)
    probs = world.next_token_probs(s.tokens)
    parts = world.belief_parts(s.tokens)
    node, dest = parts["node"], s.extras["dest"][:, None]
    walking = np.zeros(s.tokens.shape, dtype=bool)
    walking[:, 1:] = world.target_mask(s.tokens)[:, 1:] & (s.tokens[:, 1:] != world.end_id)
    walking[:, 1] = True  # after the destination token
    walking &= np.cumsum(s.tokens == world.end_id, axis=1) == 0
    illegal = world.map.succ[node] < 0  # [n, L, 8]
    turn_p = probs[..., world.dir0:world.dir0 + 8]
    assert np.all(turn_p[walking][illegal[walking]] == 0)
    end_p = probs[..., world.end_id]
    assert np.all(end_p[walking & (node != dest)] == 0)
    assert np.any(end_p[walking & (node == dest)] > 0)
    assert np.all(probs[walking][:, :world.map.n_nodes] == 0)
    # the true state agrees with the factored belief's known parts
    assert np.array_equal(node[:, 1:], s.states[:, 1:, 0])


def test_hidden_belief_covers_true_node():
    world = make_world("taxi", origin="hidden", map_size=6, seed=1)
    s = world.sample(300, seed=5)
    b = world.beliefs(s.tokens)
    col = np.searchsorted(world.belief_nodes, s.states[..., 0])
    true_mass = np.take_along_axis(b, col[..., None], axis=2)[..., 0]
    assert np.all(true_mass > 0)
    assert np.allclose(b.sum(-1), 1.0)
    # the filter sharpens: fewer candidate intersections late than after one turn
    support = (b > 1e-12).sum(-1)
    assert support[:, 10].mean() < support[:, 0].mean()
    parts = world.belief_parts(s.tokens)
    assert np.allclose(parts["node"], b) and np.allclose(parts["to_go"].sum(-1), 1.0)


# --- masks, errors, legality ------------------------------------------------------------------
def test_masks_hand_checked():
    world = Taxi(square_map(), min_len=1, max_len=3)
    N = 5
    row = np.array([[0, 3, N + 0, N + 2, N + 8, N + 9]])  # 10 13 N E end pad
    assert world.decode(row) == ["10 13 N E end pad"]
    assert world.target_mask(row).tolist() == [[False, False, True, True, True, False]]
    assert world.position_mask(row).tolist() == [[True, True, True, True, True, False]]
    h = Taxi(square_map(), min_len=1, max_len=3, origin="hidden")
    row = np.array([[0, 2, 8, 9]])
    assert h.target_mask(row).tolist() == [[False, True, True, False]]
    assert h.position_mask(row).tolist() == [[True, True, True, False]]


def test_impossible_prefixes_raise():
    world = Taxi(square_map(), min_len=1, max_len=3)
    N = 5
    E, S, W, end, pad = N + 2, N + 1, N + 3, N + 8, N + 9
    with pytest.raises(WorldError, match="sequence 0 has probability 0 at position 2"):
        world.next_token_probs(np.array([[0, 1, S, end, pad]]))  # no street south of 0
    with pytest.raises(WorldError, match="position 3"):
        world.next_token_probs(np.array([[0, 3, E, end, pad]]))  # end away from 13
    with pytest.raises(WorldError, match="position 1 .token '14'"):
        world.beliefs(np.array([[1, 4, E, end, pad]]))  # the dead end is never a destination
    with pytest.raises(WorldError, match="position 2"):
        world.beliefs(np.array([[1, 0, E, end, pad]]))  # ... nor driven into
    with pytest.raises(WorldError, match="position 5"):
        world.next_token_probs(np.array([[1, 0, W, end, pad, E]]))  # a turn after the padding
    with pytest.raises(WorldError, match="outside the vocabulary"):
        world.next_token_probs(np.array([[0, 1, 99]]))


def test_check_sequences_hand_made():
    m = square_map()
    N = 5
    N_, S, E, W, SW = (N + DIRECTIONS.index(d) for d in ("N", "S", "E", "W", "SW"))
    end, pad = N + 8, N + 9
    seqs = [
        [0, 3, E, N_, end],          # valid
        [0, 3, E, N_, end, pad],     # valid, padded
        [0, 3, E, N_],               # legal, no end
        [0, 1, E, N_, end],          # legal, end away from the destination
        [0, 1, S, end],              # illegal turn
        [1, 4, E, end],              # the dead end is a street: valid
        [0, 3, E, N_, end, E],       # a turn after end
        [0, -1, E, end],             # unknown destination token
        [0],                         # no destination
        [3, 0, SW, pad, end],        # padding before end
        [3, 3, end],                 # empty trip at the destination
    ]
    res = check_sequences(m, seqs)
    assert res["legal"].tolist() == [True, True, True, True, False, True, False, False, False, False, True]
    assert res["valid"].tolist() == [True, True, False, False, False, True, False, False, False, False, True]
    world = Taxi(m, min_len=1, max_len=3)
    arr = pad_rows(world, [[0, 3, E, N_, end], [0, 1, W, end]], 7)
    assert world.check_sequences(arr)["valid"].tolist() == [True, False]


def test_hidden_check_sequences():
    world = Taxi(square_map(), min_len=1, max_len=4, origin="hidden")
    d = {name: i for i, name in enumerate(world.token_names)}
    seqs = [[d["N"], d["E"], d["end"]],        # 0 N 2 E 3
            [d["SW"], d["SW"], d["end"]],      # SW only from 3, then no SW from 0
            [d["E"], d["E"]],                  # 0 E 1 E 4 (a street, no end)
            [d["end"], d["pad"]]]
    res = world.check_sequences(seqs)
    assert res["legal"].tolist() == [True, False, True, True]
    assert res["valid"].tolist() == [True, False, False, True]


def test_parse_sequences_text(tmp_path):
    m = square_map()
    path = tmp_path / "trips.txt"
    path.write_text("10 13 E N end\n\n10 13 E FOO end\n   11 14 E end pad  \n")
    rows = parse_sequences(path, m)
    assert rows == [[0, 3, 7, 5, 13], [0, 3, 7, -1, 13], [1, 4, 7, 13, 14]]
    res = check_sequences(m, rows)
    assert res["legal"].tolist() == [True, False, True] and res["valid"].tolist() == [True, False, True]
    world = Taxi(m, min_len=1, max_len=3)
    assert world.to_text(pad_rows(world, [[0, 3, 7, 5, 13]], 6)) == ["10 13 E N end"]
    path.write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(WorldError, match="trips.txt"):
        parse_sequences(path, m)


# --- options, spec, errors ---------------------------------------------------------------------
def test_spec_round_trip_rebuilds_the_world(tmp_path):
    for opts in (dict(), dict(walk="noisy", noise=0.2), dict(origin="hidden", min_len=2, max_len=9)):
        w = make_world("taxi", map_size=5, seed=3, **opts)
        spec = json.loads(json.dumps(w.spec()))
        assert spec["kind"] == "taxi" and spec["map"] == w.map.to_dict()
        w2 = world_from_spec(spec)
        assert w2.spec() == w.spec() and w2.token_names == w.token_names
        a, b = w.sample(30, seed=1), w2.sample(30, seed=1)
        assert np.array_equal(a.tokens, b.tokens)
        assert np.allclose(w.next_token_probs(a.tokens), w2.next_token_probs(b.tokens))
    path = tmp_path / "m.json"
    square_map().to_json(path)
    w = make_world("taxi", map=str(path), max_len=5)
    assert w.map.node_ids == [10, 11, 12, 13, 14] and w.token_names[:5] == ["10", "11", "12", "13", "14"]


def test_default_world_and_bad_options():
    w = make_world("taxi")
    assert (w.walk, w.origin, w.min_len, w.max_len) == ("random", "visible", 4, 40)
    assert w.map.n_nodes > 25 and w.map.is_strongly_connected()
    assert w.vocab_size == w.map.n_nodes + 10
    assert w.n_states == 2 * w.map.n_nodes + 41
    with pytest.raises(WorldError, match="walk"):
        make_world("taxi", walk="teleport")
    with pytest.raises(WorldError, match="min_len"):
        make_world("taxi", min_len=10, max_len=5)
    with pytest.raises(WorldError, match="random walks only"):
        make_world("taxi", walk="shortest", origin="hidden")
    with pytest.raises(WorldError, match="shorter than the longest shortest path"):
        make_world("taxi", walk="shortest", max_len=2)
    with pytest.raises(WorldError, match="noise"):
        make_world("taxi", noise=0.5)
    with pytest.raises(WorldError, match="origin='visible' only"):
        Taxi(synthetic_manhattan(40, 40, seed=0), origin="hidden")
    assert MAX_HIDDEN_NODES >= 500


# --- the real Manhattan map --------------------------------------------------------------------
def test_manhattan_random_walks_and_speed():
    world = make_world("taxi", map=str(MANHATTAN), max_len=97)
    assert world.map.n_nodes == 4579 and world.map.n_edges == 9705
    assert world.vocab_size == 4589
    s = world.sample(32, 100, seed=0)
    res = world.check_sequences(s.tokens)
    assert res["valid"].all()
    t0 = time.perf_counter()
    probs = world.next_token_probs(s.tokens)
    elapsed = time.perf_counter() - t0
    assert elapsed < 10.0, f"next_token_probs took {elapsed:.1f} s"
    assert np.allclose(probs.sum(-1), 1.0)
    parts = world.belief_parts(s.tokens)
    node = parts["node"]
    illegal = world.map.succ[node] < 0
    turn_p = probs[..., world.dir0:world.dir0 + 8]
    assert np.all(turn_p[illegal] == 0)
    assert np.allclose(parts["to_go"].sum(-1), 1.0)
    # the true steps to go has positive posterior mass
    tg = np.take_along_axis(parts["to_go"][:, 1:], s.states[:, 1:, 2:3], axis=2)
    assert np.all(tg > 0)


# --- CLI ---------------------------------------------------------------------------------------
def test_cli_check_json_and_text(tmp_path):
    mp = tmp_path / "map.json"
    square_map().to_json(mp)
    trips = tmp_path / "trips.txt"
    trips.write_text("10 13 E N end\n10 13 E N\n10 11 S end\n10 99 E end\n11 14 E end\n")
    r = run_cli("nextlat_probe.taxi", "check", "--map", str(mp), str(trips), "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout) == {"n": 5, "legal": 3, "valid": 2}
    r = run_cli("nextlat_probe.taxi", "check", "--map", str(mp), str(trips))
    assert r.returncode == 0 and "valid  2 (40.0%)" in r.stdout


def test_cli_sample_then_check(tmp_path):
    mp = tmp_path / "map.json"
    r = run_cli("nextlat_probe.taxi", "info", "--map-size", "5", "--map-seed", "2", "--write", str(mp), "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["strongly_connected"] is True
    r = run_cli("nextlat_probe.taxi", "sample", "--map", str(mp), "--n", "25", "--walk", "noisy", "--seed", "4")
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert len(lines) == 25 and all(line.endswith(" end") for line in lines)
    trips = tmp_path / "trips.txt"
    trips.write_text(r.stdout)
    r = run_cli("nextlat_probe.taxi", "check", "--map", str(mp), str(trips), "--json")
    assert json.loads(r.stdout) == {"n": 25, "legal": 25, "valid": 25}


@pytest.mark.parametrize("case", ["garbage", "missing", "bad_map", "map_and_size"])
def test_cli_bad_inputs_exit_2(tmp_path, case):
    mp = tmp_path / "map.json"
    square_map().to_json(mp)
    trips = tmp_path / "trips.txt"
    trips.write_text("10 13 E N end\n")
    args = ["check", "--map", str(mp), str(trips)]
    if case == "garbage":
        trips.write_bytes(bytes(np.random.default_rng(0).integers(0, 256, 300, dtype=np.uint8)))
    elif case == "missing":
        args[-1] = str(tmp_path / "absent.txt")
    elif case == "bad_map":
        mp.write_text('{"directions": ["N"], "edges": [[1, "N", 2], [1, "N", 3]]}')
    else:
        args[1:1] = ["--map-size", "5"]
    r = run_cli("nextlat_probe.taxi", *args)
    assert r.returncode == 2
    assert r.stdout == ""
    assert len(r.stderr.strip().splitlines()) == 1 and r.stderr.startswith("error:")
