"""Street maps: the synthetic generator, the edge-list loader, graph helpers."""
from __future__ import annotations

import gzip
import json
import math
import time
from collections import deque

import numpy as np
import pytest
from helpers import MANHATTAN

from nextlat_probe.worlds import WorldError
from nextlat_probe.worlds.streetmap import (
    DIRECTIONS,
    StreetMap,
    compass_direction,
    synthetic_manhattan,
)

# expected compass angle of each label (degrees counter-clockwise from east)
ANGLE = {"E": 0, "NE": 45, "N": 90, "NW": 135, "W": 180, "SW": 225, "S": 270, "SE": 315}


def reachable(n: int, edges: list[tuple[int, str, int]], start: int, reverse: bool = False) -> set[int]:
    """Plain breadth-first search (independent of scipy)."""
    nbrs: dict[int, list[int]] = {i: [] for i in range(n)}
    for s, _, t in edges:
        a, b = (t, s) if reverse else (s, t)
        nbrs[a].append(b)
    seen, todo = {start}, deque([start])
    while todo:
        for b in nbrs[todo.popleft()]:
            if b not in seen:
                seen.add(b)
                todo.append(b)
    return seen


def square_map() -> StreetMap:
    """0 (0,0) -- 1 (1,0) / 2 (0,1) -- 3 (1,1), plus a dead end 4 east of 1."""
    edges = [(0, "E", 1), (0, "N", 2), (1, "W", 0), (1, "N", 3), (1, "E", 4),
             (2, "E", 3), (2, "S", 0), (3, "S", 1), (3, "W", 2), (3, "SW", 0)]
    coords = [[0, 0], [1, 0], [0, 1], [1, 1], [2, 0]]
    return StreetMap(5, edges, coords=coords, node_ids=[10, 11, 12, 13, 14], name="square")


@pytest.mark.parametrize("size,seed", [((3, 3), 0), ((4, 4), 1), ((6, 6), 0), ((6, 6), 1),
                                       ((6, 6), 2), ((5, 9), 3), ((12, 8), 4), ((20, 20), 5)])
def test_generator_strongly_connected_and_consistent(size, seed):
    m = synthetic_manhattan(*size, seed=seed)
    edges = m.edges()
    assert m.n_nodes >= 0.7 * size[0] * size[1]
    # strongly connected: node 0 reaches everything and everything reaches node 0
    assert len(reachable(m.n_nodes, edges, 0)) == m.n_nodes
    assert len(reachable(m.n_nodes, edges, 0, reverse=True)) == m.n_nodes
    assert m.is_strongly_connected()
    # at most one edge per (node, direction), and succ agrees with the edge list
    slots = [(s, d) for s, d, _ in edges]
    assert len(slots) == len(set(slots))
    for s, d, t in edges:
        assert m.succ[s, DIRECTIONS.index(d)] == t
    assert (m.succ >= 0).sum() == m.n_edges
    # labels agree with the coordinates: the displacement lies in the label's 45-degree sector
    for s, d, t in edges:
        dx, dy = m.coords[t] - m.coords[s]
        ang = math.degrees(math.atan2(dy, dx)) % 360
        diff = (ang - ANGLE[d] + 180) % 360 - 180
        assert abs(diff) < 22.5, (s, d, t, ang)
        if d == "N":
            assert dy > 0
        if d == "S":
            assert dy < 0
        if d == "E":
            assert dx > 0
        if d == "W":
            assert dx < 0
    assert m.direction_errors().size == 0


def test_generator_is_manhattan_like_and_seeded():
    m = synthetic_manhattan(12, 12, seed=7)
    dirs = {d for _, d, _ in m.edges()}
    assert dirs & {"NE", "NW", "SE", "SW"}, "expected at least one diagonal avenue"
    pairs = {(s, t) for s, _, t in m.edges()}
    one_way = sum((t, s) not in pairs for s, t in pairs)
    assert one_way > 0.2 * len(pairs), "expected many one-way streets"
    assert m.n_nodes < 144, "expected removed blocks"
    # deterministic in the seed, different across seeds
    assert synthetic_manhattan(12, 12, seed=7).to_dict() == m.to_dict()
    assert synthetic_manhattan(12, 12, seed=8).to_dict() != m.to_dict()


def test_generator_scales():
    t0 = time.perf_counter()
    m = synthetic_manhattan(60, 60, seed=0)
    assert time.perf_counter() - t0 < 5.0
    assert m.n_nodes > 3000 and m.is_strongly_connected()
    assert m.direction_errors().size == 0


def test_generator_rejects_bad_options():
    with pytest.raises(WorldError, match="at least 2"):
        synthetic_manhattan(1, 5)
    with pytest.raises(WorldError, match="rotation"):
        synthetic_manhattan(6, 6, rotation_deg=30)


def test_compass_direction_hand_values():
    dx = np.array([1, 1, 0, -1, -1, -1, 0, 1, 2])
    dy = np.array([0, 1, 1, 1, 0, -1, -1, -1, 0.3])
    names = [DIRECTIONS[i] for i in compass_direction(dx, dy)]
    assert names == ["E", "NE", "N", "NW", "W", "SW", "S", "SE", "E"]


def test_graph_helpers_on_hand_made_map():
    m = square_map()
    assert m.n_nodes == 5 and m.n_edges == 10
    assert m.out_degree.tolist() == [2, 3, 2, 3, 0]
    assert m.node_names == ["10", "11", "12", "13", "14"]
    assert not m.is_strongly_connected()
    assert m.largest_scc().tolist() == [0, 1, 2, 3]
    # hand-worked hop counts
    d = m.shortest_path_lengths()
    assert d[0].tolist() == [0, 1, 1, 2, 2]
    assert d[3].tolist() == [1, 1, 1, 0, 2]
    assert np.isinf(d[4, :4]).all()
    to = m.distances_to([0, 4])
    assert np.array_equal(to, d[:, [0, 4]].T)
    A = m.adjacency().toarray()
    assert A[1].tolist() == [1, 0, 0, 1, 1]
    P = m.transition_matrix().toarray()
    assert np.allclose(P[3], [1 / 3, 1 / 3, 1 / 3, 0, 0]) and np.allclose(P[4], 0)
    sub = m.subgraph(m.largest_scc())
    assert sub.n_nodes == 4 and sub.n_edges == 9 and sub.is_strongly_connected()
    assert sub.node_ids == [10, 11, 12, 13]
    assert m.direction_errors().size == 0
    # a wrong label is reported
    bad = StreetMap(2, [(0, "N", 1)], coords=[[0, 0], [1, 0]])
    assert bad.direction_errors().tolist() == [0]


def test_dict_and_json_round_trip(tmp_path):
    m = synthetic_manhattan(5, 7, seed=3)
    again = StreetMap.from_dict(json.loads(json.dumps(m.to_dict())))
    assert again.to_dict() == m.to_dict()
    assert np.array_equal(again.succ, m.succ) and np.allclose(again.coords, m.coords)
    sq = square_map()
    path = tmp_path / "sq.json"
    sq.to_json(path)
    back = StreetMap.from_json(path)
    assert back.node_ids == sq.node_ids and back.edges() == sq.edges()
    assert np.allclose(back.coords, sq.coords)


def test_loader_reads_vafa_format_without_nodes(tmp_path):
    path = tmp_path / "m.json"
    path.write_text(json.dumps({"directions": list(DIRECTIONS),
                                "edges": [[7, "N", 3], [3, "S", 7], [3, "E", 99]],
                                "coords": {"3": [0, 1], "7": [0, 0], "99": [1, 1]}}))
    m = StreetMap.from_json(path)
    assert m.node_ids == [3, 7, 99]  # sorted ids
    assert m.edges() == [(0, "S", 1), (0, "E", 2), (1, "N", 0)]
    assert m.coords.tolist() == [[0, 1], [0, 0], [1, 1]]


@pytest.mark.parametrize("content,match", [
    ("{not json", "not valid JSON"),
    ('["a list"]', "JSON object"),
    ('{"edges": []}', "missing key 'directions'"),
    ('{"directions": ["N"]}', "missing key 'edges'"),
    ('{"directions": ["N", "Q"], "edges": []}', "unknown label 'Q'"),
    ('{"directions": ["N", "S"], "edges": [[1, "N", 2], [2, "S"]]}', r"edges\[1\].*not \[src, direction, dst\]"),
    ('{"directions": ["N", "S"], "edges": [[1, "N", 2], [2, "X", 1]]}', r"edges\[1\].*unknown direction 'X'"),
    ('{"directions": ["N", "S"], "edges": [[1, "E", 2]]}', r"edges\[0\].*unknown direction 'E'"),
    ('{"directions": ["N", "S"], "edges": [[1, "N", 2], [2, "S", 1], [1, "N", 3]]}', r"edges\[2\].*duplicates edges\[0\]"),
    ('{"directions": ["N"], "edges": [["a", "N", 2]]}', r"edges\[0\].*integers"),
    ('{"directions": ["N"], "edges": [[1, "N", 2]], "nodes": [1]}', r"edges\[0\].*not in 'nodes'"),
    ('{"directions": ["N"], "edges": [[1, "N", 2]], "coords": [[0, 0]]}', "coords"),
])
def test_loader_errors_name_file_and_entry(tmp_path, content, match):
    path = tmp_path / "bad_map.json"
    path.write_text(content)
    with pytest.raises(WorldError, match=match) as info:
        StreetMap.from_json(path)
    msg = str(info.value)
    assert "bad_map.json" in msg and "\n" not in msg


def test_loader_unreadable_file(tmp_path):
    with pytest.raises(WorldError, match="cannot read"):
        StreetMap.from_json(tmp_path / "absent.json")
    binary = tmp_path / "bin.json"
    binary.write_bytes(bytes(range(128, 256)))
    with pytest.raises(WorldError, match="bin.json"):
        StreetMap.from_json(binary)


def test_constructor_rejects_duplicates_and_unknown_directions():
    with pytest.raises(WorldError, match="second edge"):
        StreetMap(3, [(0, "N", 1), (1, "S", 0), (0, "N", 2)])
    with pytest.raises(WorldError, match="unknown direction"):
        StreetMap(2, [(0, "UP", 1)])
    with pytest.raises(WorldError, match="outside"):
        StreetMap(2, [(0, "N", 5)])


def test_manhattan_map_loads():
    m = StreetMap.from_json(MANHATTAN)
    assert m.n_nodes == 4579 and m.n_edges == 9705
    assert m.coords is None
    assert not m.is_strongly_connected()
    assert m.largest_scc().size == 4473
    assert int((m.out_degree == 0).sum()) == 17
    assert 1 <= m.out_degree.max() <= 4
    raw = json.loads(gzip.decompress(MANHATTAN.read_bytes()))
    s, d, t = raw["edges"][0]
    i = m.id_to_index[s]
    assert m.node_ids[m.succ[i, DIRECTIONS.index(d)]] == t


def test_manhattan_is_shipped_with_the_package_and_named_by_map_manhattan(tmp_path, monkeypatch):
    """``--map manhattan`` (and ``from_json("manhattan")``) reads the packaged file from any
    working folder; a file of that name in the working folder wins; the package states the
    map's provenance and licence."""
    from nextlat_probe.worlds.streetmap import resolve_map_path

    monkeypatch.chdir(tmp_path)
    by_name = StreetMap.from_json("manhattan")
    by_file = StreetMap.from_json(MANHATTAN)
    assert resolve_map_path("manhattan").resolve() == MANHATTAN.resolve()
    assert np.array_equal(by_name.succ, by_file.succ) and by_name.node_ids == by_file.node_ids
    notes = (MANHATTAN.parent / "README.md").read_text()
    assert "ODbL" in notes and "OpenStreetMap contributors" in notes and "world-model-evaluation" in notes
    (tmp_path / "manhattan").write_text(json.dumps({"directions": ["N", "S"], "edges": [[1, "N", 2], [2, "S", 1]]}))
    assert StreetMap.from_json("manhattan").n_nodes == 2
    with pytest.raises(WorldError, match="no_such_map"):
        StreetMap.from_json("no_such_map")
