"""The one taxi trip automaton (``worlds.trips``) and the street map's undirected geometry
(``StreetMap.undirected / undirected_edges / hops / layout``)."""
import ast
from collections import deque
from pathlib import Path

import numpy as np
import pytest

from nextlat_probe.analysis import mapping as mp
from nextlat_probe.analysis import worldmodel as wm
from nextlat_probe.errors import WorldError
from nextlat_probe.plots import geometry as G
from nextlat_probe.worlds import trips as T
from nextlat_probe.worlds.streetmap import DIRECTIONS, StreetMap, synthetic_manhattan
from nextlat_probe.worlds.taxi import Taxi

# A 2x2 block, node indices (ids 10..13):   2 -E-> 3
#                                           N      S
#                                           0 <-E/W-> 1      and a self-loop 3 -NE-> 3
SQUARE = [(0, "E", 1), (1, "W", 0), (0, "N", 2), (2, "E", 3), (3, "S", 1), (3, "NE", 3)]
N4 = 4
Nt, St, Et, Wt, NEt = (N4 + DIRECTIONS.index(d) for d in ("N", "S", "E", "W", "NE"))
END, PAD = N4 + 8, N4 + 9


def square(coords=None) -> StreetMap:
    return StreetMap(N4, SQUARE, coords=coords, node_ids=[10, 11, 12, 13], name="square")


ROWS = np.array([
    [0, 3, Nt, Et, END, PAD],    # 0: valid (0 -N-> 2 -E-> 3, end at 3)
    [0, 1, Nt, St, Et, END],     # 1: illegal S at 2 (position 3), then a legal E
    [0, 2, Et, END, PAD, PAD],   # 2: legal, end at 1, away from the destination 2
    [0, 2, Nt, END, Et, PAD],    # 3: valid end, then a turn after it
    [1, 0, Wt, 99, END, PAD],    # 4: an id outside the vocabulary
    [3, 3, NEt, NEt, END, PAD],  # 5: the self-loop twice: valid
])


# --------------------------------------------------------------------------------------
# the three readings of one trace, worked by hand
# --------------------------------------------------------------------------------------
def test_strict_trace_by_hand():
    tr = T.trace(ROWS, square().succ, N4)
    assert tr["dest"].tolist() == [3, 1, 2, 2, 0, 3]
    assert tr["node"][0].tolist() == [0, 0, 2, 3, 3, 3]
    assert tr["turns"][0].tolist() == [0, 0, 1, 2, 2, 2]
    assert tr["phase"][0].tolist() == [0, 1, 1, 1, 2, 2]
    # the illegal S leaves the taxi at 2 and is not counted; tracing goes on (E: 2 -> 3)
    assert tr["node"][1].tolist() == [0, 0, 2, 2, 3, 3]
    assert tr["turns"][1].tolist() == [0, 0, 1, 1, 2, 2]
    assert tr["bad"][1].tolist() == [False, False, False, True, True, True]
    assert not tr["malformed"][1].any()  # off the map, but well formed
    # end away from the destination is neither bad nor malformed in the strict trace
    assert not tr["bad"][2].any() and tr["phase"][2].tolist() == [0, 1, 1, 2, 2, 2]
    assert tr["malformed"][3].tolist() == [False] * 4 + [True] * 2
    assert tr["malformed"][4].tolist() == [False] * 3 + [True] * 3
    assert tr["node"][5].tolist() == [3, 3, 3, 3, 3, 3] and tr["turns"][5].tolist() == [0, 0, 1, 2, 2, 2]
    res = T.check_sequences(square(), ROWS)
    assert res["legal"].tolist() == [True, False, True, False, False, True]
    assert res["ended"].tolist() == [True, True, True, True, True, True]
    assert res["valid"].tolist() == [True, False, False, False, False, True]


def test_tolerant_trace_by_hand():
    w = Taxi(square(), min_len=1, max_len=3)
    tr = wm.trace_trips(w, ROWS)
    F, Tr = False, True
    assert tr["ok"].tolist() == [
        [Tr, Tr, Tr, Tr, Tr, Tr],
        [Tr, Tr, Tr, F, F, F],
        [Tr, Tr, Tr, F, F, F],
        [Tr, Tr, Tr, Tr, F, F],
        [Tr, Tr, Tr, F, F, F],
        [Tr, Tr, Tr, Tr, Tr, Tr],
    ]
    # frozen where the prefix stops being legal; the illegal turn itself is counted
    assert tr["node"][1].tolist() == [0, 0, 2, 2, 2, 2] and tr["turns"][1].tolist() == [0, 0, 1, 2, 2, 2]
    assert tr["ended"][1].tolist() == [F] * 6
    # end away from the destination: ended (and not ok) from there on
    assert tr["ended"][2].tolist() == [F, F, F, Tr, Tr, Tr] and tr["node"][2].tolist() == [0, 0, 1, 1, 1, 1]
    assert tr["ended"][3].tolist() == [F, F, F, Tr, Tr, Tr] and tr["node"][3, -1] == 2
    assert tr["node"][4].tolist() == [1, 1, 0, 0, 0, 0] and tr["turns"][4].tolist() == [0, 0, 1, 1, 1, 1]
    # the same function on the table directly
    direct = T.trace_tolerant(ROWS, square().succ, N4)
    assert all((direct[k] == tr[k]).all() for k in tr)


def test_parser_by_hand():
    tr = T.parse_trips(square(), ROWS)
    assert tr.index.tolist() == [0, 1, 2, 5] and tr.malformed == [3, 4] and tr.n_input == 6
    assert tr.origin.tolist() == [0, 0, 0, 3] and tr.dest.tolist() == [3, 1, 2, 3]
    # row 1's S is not a street, but the parser keeps it (reconstruction may invent it)
    assert tr.turns.tolist() == [[0, 2, -1], [0, 1, 2], [2, -1, -1], [4, 4, -1]]
    assert tr.lengths.tolist() == [2, 3, 1, 2]
    # ragged lists, an empty trip, too short rows
    tr = T.parse_trips(square(), [[0, 0, END], [0], [], [1, 2, Nt], [2, 3, Et, END, PAD, PAD]])
    assert tr.index.tolist() == [0, 4] and tr.malformed == [1, 2, 3]
    assert tr.turns.tolist() == [[-1], [2]] and tr.lengths.tolist() == [0, 1]
    assert mp.parse_trips is T.parse_trips and mp.Trips is T.Trips


def test_ragged_lists_stop_at_their_length():
    m = square()
    res = T.check_sequences(m, [[0, 3, Nt, Et, END], [0], [], [0, 3, Nt, Et], [0, 3, Nt, Et, END, PAD, PAD]])
    assert res["legal"].tolist() == [True, False, False, True, True]
    assert res["valid"].tolist() == [True, False, False, False, True]
    # -2 is an unknown id in an array, not "no more tokens"
    arr = np.array([[0, 3, Nt, Et, END, -2]])
    assert T.check_sequences(m, arr)["legal"].tolist() == [False]
    with pytest.raises(WorldError, match="integer"):
        T.check_sequences(m, np.array([[0.0, 3.0]]))


def _strict_ref(row, succ, N):
    legal = len(row) >= 2 and 0 <= row[0] < N and 0 <= row[1] < N
    node = row[0] if len(row) and 0 <= row[0] < N else 0
    ended = False
    for t in row[2:]:
        if ended:
            legal &= t == N + 9
        elif N <= t < N + 8:
            nxt = succ[node][t - N]
            legal &= nxt >= 0
            node = nxt if nxt >= 0 else node
        elif t == N + 8:
            ended = True
        else:
            legal = False
    return legal, ended, legal and ended and node == row[1]


def _tolerant_ref(row, succ, N):
    ok, nodes, good, ended, node = [], [], True, False, 0
    for p, t in enumerate(row):
        if p == 0:
            good = 0 <= t < N
            node = t if good else 0
        elif p == 1:
            good = good and 0 <= t < N
        elif not good:
            pass
        elif ended:
            good = t == N + 9
        elif N <= t < N + 8 and succ[node][t - N] >= 0:
            node = succ[node][t - N]
        elif t == N + 8 and node == row[1]:
            ended = True
        else:
            good = False
        ok.append(good)
        nodes.append(node)
    return ok, nodes


def _parse_ref(row, N):
    if len(row) < 3 or not (0 <= row[0] < N and 0 <= row[1] < N) or N + 8 not in row:
        return None
    e = row.index(N + 8)
    if all(N <= t < N + 8 for t in row[2:e]) and all(t == N + 9 for t in row[e + 1:]):
        return row[0], row[1], [t - N for t in row[2:e]]
    return None


def test_every_reading_matches_a_plain_loop_on_corrupted_trips():
    m = synthetic_manhattan(4, 4, seed=1)
    w = Taxi(m, min_len=1, max_len=6)
    N, succ = m.n_nodes, m.succ.tolist()
    rng = np.random.default_rng(0)
    s = w.sample(300, seed=0).tokens
    hit = rng.random(s.shape) < 0.06
    s[hit] = rng.integers(-1, w.vocab_size + 1, size=hit.sum())
    lists = [r if rng.random() < 0.7 else r[:rng.integers(0, len(r) + 1)] for r in s.tolist()]
    res = T.check_sequences(m, lists)
    ref = np.array([_strict_ref(r, succ, N) for r in lists])
    assert (res["legal"] == ref[:, 0]).all() and (res["ended"] == ref[:, 1]).all()
    assert (res["valid"] == ref[:, 2]).all() and 0 < res["valid"].sum() < len(lists)
    tr = wm.trace_trips(w, s)
    for i, row in enumerate(s.tolist()):
        ok, nodes = _tolerant_ref(row, succ, N)
        assert tr["ok"][i].tolist() == ok and tr["node"][i].tolist() == nodes
    parsed = T.parse_trips(m, lists)
    want = [(i, _parse_ref(r, N)) for i, r in enumerate(lists)]
    assert parsed.malformed == [i for i, p in want if p is None]
    got = [(int(o), int(d), [int(t) for t in turns[:k]])
           for o, d, turns, k in zip(parsed.origin, parsed.dest, parsed.turns, parsed.lengths)]
    assert got == [p for _, p in want if p is not None]


# --------------------------------------------------------------------------------------
# the text format
# --------------------------------------------------------------------------------------
def test_byte_order_mark_is_dropped(tmp_path):
    m = square()
    path = tmp_path / "trips.txt"
    path.write_bytes(b"\xef\xbb\xbf10 13 N E end\n10 11 E end\n")
    rows = T.parse_sequences(path, m)
    assert rows == [[0, 3, Nt, Et, END], [0, 1, Et, END]]
    assert T.check_sequences(m, rows)["valid"].tolist() == [True, True]
    # lines from an iterable: only a mark before the first line is dropped
    assert T.parse_sequences(["\ufeff10 13 N E end", "\ufeff10 13 N E end"], m) == [[0, 3, Nt, Et, END],
                                                                                    [-1, 3, Nt, Et, END]]
    from nextlat_probe.worlds.taxi import parse_sequences

    assert parse_sequences(path, m) == rows  # still importable from worlds.taxi


def test_a_directory_is_not_a_trips_file(tmp_path):
    with pytest.raises(WorldError) as err:
        T.parse_sequences(tmp_path, square())
    assert str(tmp_path) in str(err.value) and "directory" in str(err.value)
    assert "no such file" not in str(err.value)
    with pytest.raises(WorldError, match="missing.txt"):
        T.parse_sequences(tmp_path / "missing.txt", square())


# --------------------------------------------------------------------------------------
# undirected geometry of a street map
# --------------------------------------------------------------------------------------
def test_undirected_edges_and_adjacency_by_hand():
    m = square()
    assert m.undirected_edges().tolist() == [[0, 1], [0, 2], [1, 3], [2, 3]]  # no self-loop, 0-1 once
    A = m.undirected().toarray()
    assert (A == A.T).all() and (np.diag(A) == 0).all() and A.sum() == 8
    assert not m.undirected_edges().flags.writeable
    assert sorted((s, t) for s, _, t in m.edges() if s != t) == [(0, 1), (0, 2), (1, 0), (2, 3), (3, 1)]
    # the map figure draws exactly these streets, once each
    (true_panel,) = G.map_panels(m, [])
    assert true_panel["n_true"] == 4


def _bfs(street_map: StreetMap, source: int) -> np.ndarray:
    nb = {v: set() for v in range(street_map.n_nodes)}
    for s, _, t in street_map.edges():
        nb[s].add(t)
        nb[t].add(s)
    dist = np.full(street_map.n_nodes, np.inf)
    dist[source] = 0
    queue = deque([source])
    while queue:
        u = queue.popleft()
        for v in nb[u]:
            if dist[v] == np.inf:
                dist[v] = dist[u] + 1
                queue.append(v)
    return dist


def test_hops_against_breadth_first_search():
    two = StreetMap(7, SQUARE + [(4, "E", 5), (6, "W", 5)])  # a second component 4 - 5 - 6
    for m in (square(), synthetic_manhattan(5, 5, seed=2), two):
        want = np.stack([_bfs(m, v) for v in range(m.n_nodes)])
        np.testing.assert_array_equal(m.hops(), want)
        np.testing.assert_array_equal(m.hops([2, 0]), want[[2, 0]])
        np.testing.assert_array_equal(m.hops(1), want[[1]])
        capped = m.hops([0], limit=1.5)[0]
        np.testing.assert_array_equal(capped, np.where(want[0] <= 1, want[0], np.inf))
        np.testing.assert_array_equal(mp.hop_distances(m, np.array([3])), want[[3]])
    assert np.isinf(two.hops([0])[0, 4:]).all()
    with pytest.raises(WorldError, match="hop sources"):
        square().hops([4])


def test_layout_of_a_path_is_worked_out_by_hand():
    edges = [(i, "E", i + 1) for i in range(4)] + [(i + 1, "W", i) for i in range(4)]
    m = StreetMap(5, edges)
    want = np.array([[-2.0, 0], [-1, 0], [0, 0], [1, 0], [2, 0]])
    np.testing.assert_allclose(m.layout(), want, atol=1e-9)  # classical MDS
    np.testing.assert_allclose(m.layout(max_exact=2, n_landmarks=3), want, atol=1e-9)  # landmark MDS
    # reversed labels: still pointing towards increasing node index
    rev = StreetMap(5, [(4 - s, d, 4 - t) for s, d, t in edges])
    np.testing.assert_allclose(rev.layout(), want, atol=1e-9)
    # components side by side, the largest at the origin
    two = StreetMap(5, [(0, "E", 1), (1, "W", 0), (2, "N", 3), (3, "N", 4)])
    np.testing.assert_allclose(two.layout(), [[3, 0], [4, 0], [-1, 0], [0, 0], [1, 0]], atol=1e-9)


def test_one_layout_everywhere_for_a_map_without_coordinates():
    g = synthetic_manhattan(6, 5, seed=3)
    plain = StreetMap(g.n_nodes, g.edges(), name="plain")
    again = StreetMap(g.n_nodes, g.edges(), name="plain")
    L = plain.layout()
    np.testing.assert_array_equal(L, again.layout())  # deterministic, not per-object luck
    np.testing.assert_array_equal(G.map_panels(plain, [])[0]["coords"], L)  # what the figures draw
    np.testing.assert_array_equal(mp.layout_coords(plain), L)  # what mapping compares with
    # the orientation convention: centred, principal axes, axes towards increasing index
    idx = np.arange(plain.n_nodes) - (plain.n_nodes - 1) / 2
    for Y in (L, plain.layout(max_exact=10, n_landmarks=10)):
        np.testing.assert_allclose(Y.mean(axis=0), 0, atol=1e-9)
        C = Y.T @ Y
        assert abs(C[0, 1]) < 1e-8 * C[0, 0] and C[0, 0] >= C[1, 1]
        assert idx @ Y[:, 0] > 0 and idx @ Y[:, 1] > 0
    # hop distances are reproduced well by the (exact, classical) layout
    D = np.linalg.norm(L[:, None] - L[None], axis=-1)
    H = plain.hops()
    assert np.corrcoef(D.ravel(), H.ravel())[0, 1] > 0.95
    # callers get copies: changing them does not change the map's layout
    copy = mp.layout_coords(plain)
    copy[:] = 0
    np.testing.assert_array_equal(mp.layout_coords(plain), L)
    with pytest.raises(ValueError):
        L[0, 0] = 1.0


def test_layout_with_coordinates_is_the_coordinates():
    xy = [(0.0, 0.0), (1.0, 0.0), (0.0, 1.0), (1.0, 1.0)]
    m = square(coords=xy)
    np.testing.assert_array_equal(m.layout(), xy)
    np.testing.assert_array_equal(G.map_panels(m, [])[0]["coords"], xy)
    np.testing.assert_array_equal(mp.layout_coords(m), xy)


def test_worlds_import_no_cli():
    """worlds/ sits at the top of the pipeline: only itself and the base modules."""
    base = {"errors", "records", "progress", "limits"}
    for path in (Path(T.__file__).parent).glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level >= 2:
                # ``from ..errors import X`` names the module; ``from .. import limits`` the names
                modules = [node.module.split(".")[0]] if node.module else [a.name for a in node.names]
                assert all(m in base for m in modules), (path.name, node.module, modules)
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else (
                [node.module or ""] if isinstance(node, ast.ImportFrom) and node.level == 0 else [])
            for name in names:
                parts = name.split(".")
                if parts[0] == "nextlat_probe":
                    assert len(parts) > 1 and (parts[1] == "worlds" or parts[1] in base), (path.name, name)
