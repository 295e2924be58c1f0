"""Map reconstruction from behaviour and from representations, and
``python -m nextlat_probe.mapping``."""
import json

import numpy as np
import pytest
from helpers import MANHATTAN, run_cli
from scipy.sparse import csgraph

from nextlat_probe.analysis import mapping as mp
from nextlat_probe.cli import run_main
from nextlat_probe.worlds.streetmap import StreetMap, synthetic_manhattan
from nextlat_probe.worlds.taxi import Taxi, parse_sequences

COORDS = [(0, 0), (1, 0), (2, 0), (0, 1), (1, 1)]
EDGES = [(0, "E", 1), (1, "W", 0), (1, "E", 2), (2, "W", 1), (0, "N", 3), (3, "E", 4), (4, "S", 1), (2, "NW", 4)]


def tiny_map(coords=True) -> StreetMap:
    return StreetMap(5, EDGES, coords=COORDS if coords else None, name="tiny")


def used_edges(street_map: StreetMap, lines: list[str]) -> set:
    """Edges traversed by trips given as text, by a plain walk over the edge list."""
    step = {(street_map.node_names[s], d): street_map.node_names[t] for s, d, t in street_map.edges()}
    idx = {name: i for i, name in enumerate(street_map.node_names)}
    out = set()
    for line in lines:
        words = line.split()
        node = words[0]
        for w in words[2:]:
            if w == "end":
                break
            out.add((idx[node], w, idx[step[node, w]]))
            node = step[node, w]
    return out


# --------------------------------------------------------------------------------------
@pytest.mark.parametrize("protocol", ["lenient", "vafa2024"])
def test_true_trips_give_exactly_the_used_edges(protocol):
    # out-degrees are at most 3 here, so the vafa2024 cap of 4 never binds on true trips
    for street_map, n in ((tiny_map(), 40), (synthetic_manhattan(6, 6, seed=1), 25)):
        world = Taxi(street_map, min_len=1, max_len=10)
        lines = world.to_text(world.sample(n, seed=2).tokens)
        res = mp.reconstruct_map(street_map, parse_sequences(lines, street_map), protocol=protocol)
        want = used_edges(street_map, lines)
        assert set(res.recovered) == want and res.invented == []
        assert set(res.missed) == set(street_map.edges()) - want
        assert res.n_explained == res.n_true_valid == res.n_followed == n and res.n_malformed == 0
        assert res.n_repaired == res.n_failed == 0 and res.protocol == protocol
        assert res.precision.value == 1.0 and res.recall.count == len(want)
    # the synthetic run covered only part of the 6x6 map: missed edges are reported
    assert len(res.missed) > 0


def test_corrupted_trips_invent_the_right_edges():
    """The lenient rule (today's behaviour, unchanged)."""
    m = tiny_map()
    trips = parse_sequences([
        "3 1 E W end",      # at 4 there is no W; last turn: the new edge must reach the destination 1
        "0 2 N S E E end",  # at 3 there is no S; nodes 0 and 4 are nearest, only 0 continues E E to 2
        "3 1 S E end",      # reuses the invented 3 -S-> 0, then 0 -E-> 1
        "0 1 E end",        # true
        "hello world",      # not a trip
    ], m)
    res = mp.reconstruct_map(m, trips, protocol="lenient")
    assert sorted(res.invented) == [(3, "S", 0), (4, "W", 1)]
    assert res.n_trips == 5 and res.n_malformed == 1 and res.n_explained == 4 and res.n_true_valid == 1
    assert set(res.recovered) == {(3, "E", 4), (0, "N", 3), (0, "E", 1), (1, "E", 2)}
    d = res.to_dict()
    assert d["edges_invented"] == 2 and ["3", "S", "0"] == [str(v) for v in d["invented"][0]]
    # lookahead beats proximity and index: from 3, nodes 0 and 4 are nearest, 1 next;
    # only 4 continues with S to the destination 1
    res = mp.reconstruct_map(m, parse_sequences(["0 1 N W S end"], m), protocol="lenient")
    assert res.invented == [(3, "W", 4)] and res.n_explained == 1


def test_distance_bound_and_graph_distance_without_coords():
    m = tiny_map()
    far = parse_sequences(["3 2 E E end"], m)  # 4 has no E; the destination 2 is sqrt(2) from 4
    assert mp.reconstruct_map(m, far, protocol="lenient").invented == [(4, "E", 2)]
    tight = mp.reconstruct_map(m, far, max_distance=1.0, protocol="lenient")
    assert tight.invented == [] and tight.n_explained == 0
    plain = tiny_map(coords=False)
    res = mp.reconstruct_map(plain, parse_sequences(["0 2 N S E E end"], plain), protocol="lenient")
    assert res.distance == "hops" and res.max_distance == 2 and res.invented == [(3, "S", 0)]
    assert mp.reconstruct_map(plain, parse_sequences(["0 2 N S E E end"], plain), max_distance=0.5,
                              protocol="lenient").n_explained == 0
    # vafa2024: the same final-turn rule, and a failed trip keeps the edge it already used
    assert mp.reconstruct_map(m, far).invented == [(4, "E", 2)]
    tight = mp.reconstruct_map(m, far, max_distance=1.0)
    assert tight.invented == [] and tight.n_explained == 0 and tight.n_failed == 1
    assert tight.recovered == [(3, "E", 4)]
    res = mp.reconstruct_map(plain, parse_sequences(["0 2 N S E E end"], plain))
    assert res.distance == "hops" and res.max_distance == 2 and res.invented == [(3, "S", 0)]
    assert res.protocol_dict() == {"name": "vafa2024", "max_degree": 4, "max_distance": 2.0, "distance": "hops",
                                   **{k: v for k, v in res.protocol_dict().items() if k.startswith(("ref", "trip"))}}


def test_layout_coords_landmark_mds_recovers_a_line():
    """Hop distances along a two-way street are exactly 1-D Euclidean, so landmark MDS
    (10 landmarks for 60 nodes) must put every node at its place on the line."""
    n = 60
    edges = [(i, "E", i + 1) for i in range(n - 1)] + [(i + 1, "W", i) for i in range(n - 1)]
    xy = mp.layout_coords(StreetMap(n, edges), max_landmarks=10)
    d = np.linalg.norm(xy[:, None] - xy[None], axis=-1)
    assert np.allclose(d, np.abs(np.arange(n)[:, None] - np.arange(n)[None]), atol=1e-6)


def test_node_means_against_a_loop():
    rng = np.random.default_rng(0)
    H = rng.normal(size=(7, 5, 3))
    nodes = rng.integers(0, 4, size=(7, 5))
    mask = rng.random((7, 5)) < 0.7
    means, counts = mp.node_means(H, nodes, mask, 6)
    for v in range(6):
        rows = [H[i, t] for i in range(7) for t in range(5) if mask[i, t] and nodes[i, t] == v]
        assert counts[v] == len(rows)
        if rows:
            assert np.allclose(means[v], np.mean(rows, axis=0))
        else:
            assert np.isnan(means[v]).all()


def _nn_is_neighbour(coords: np.ndarray, street_map: StreetMap) -> int:
    pairs = {(s, t) for s, _, t in street_map.edges()}
    hits = 0
    for i in range(len(coords)):
        d = [np.inf if j == i else np.linalg.norm(coords[i] - coords[j]) for j in range(len(coords))]
        j = int(np.argmin(d))
        hits += (i, j) in pairs or (j, i) in pairs
    return hits


def test_embedding_of_states_that_encode_the_map():
    m = synthetic_manhattan(6, 6, seed=0)
    rng = np.random.default_rng(0)
    Q, _ = np.linalg.qr(rng.normal(size=(16, 2)))  # isometry R^2 -> R^16
    means = m.coords @ Q.T * 3.0 + 0.5
    means[4] = np.nan  # a node never visited
    res = mp.embed_node_states(means, m)
    assert res.n_nodes_seen == m.n_nodes - 1 and res.reference == "coordinates"
    assert res.probe.r2 > 0.999 and res.probe.disparity < 1e-6 and res.mds.disparity < 1e-8
    seen = np.delete(np.arange(m.n_nodes), 4)
    assert np.allclose(res.mds.coords[seen], m.coords[seen], atol=1e-6) and np.isnan(res.mds.coords[4]).all()
    sub = m.subgraph(seen)
    assert res.mds.nn_map_neighbour.count == _nn_is_neighbour(m.coords[seen], sub)
    assert res.mds.nn_true_nearest.value == 1.0
    # a control: states unrelated to the map
    shuffled = mp.embed_node_states(rng.permutation(m.coords @ Q.T), m)
    assert shuffled.mds.disparity > 0.3 and shuffled.probe.r2 < 0.5
    # without coordinates: no probe, MDS is compared with the graph-distance MDS layout
    plain = StreetMap(m.n_nodes, m.edges(), name="plain")
    res2 = mp.embed_node_states(mp.layout_coords(plain) @ Q.T, plain)
    assert res2.probe is None and "no coordinates" in res2.note and res2.mds.disparity < 1e-8
    from nextlat_probe.compare.mapping import embedding_metrics

    em = embedding_metrics(res2.mds, res2)
    assert em["nodes"] == list(range(m.n_nodes)) and np.allclose(em["coords"], res2.mds.coords)


def test_behaviour_record_of_a_reconstruction():
    from nextlat_probe.compare.mapping import behaviour_metrics

    m = tiny_map()
    res = mp.reconstruct_map(m, parse_sequences(["3 1 E W end", "0 1 E end"], m), protocol="lenient")
    bm = behaviour_metrics(res, list_edges=True)
    assert [(s, t) for s, _, t in bm["invented_edges"]] == [(4, 1)]
    assert sorted((s, t) for s, _, t in bm["recovered_edges"]) == [(0, 1), (3, 4)]
    assert bm["n_missed"] == len(bm["missed_edges"]) == m.n_edges - 2
    assert bm["edge_recall"] == {"value": 2 / m.n_edges, "low": bm["edge_recall"]["low"],
                                 "high": bm["edge_recall"]["high"], "n": m.n_edges, "count": 2}


# --------------------------------------------------------------------------------------
# vafa2024: the rules of Vafa et al.'s mapping/reconstruction.py, worked by hand on tiny_map
# (median edge length 1, so new edges reach Euclidean distance <= 2, the current node included)
# --------------------------------------------------------------------------------------
def _vafa(m, lines, **kw):
    return mp.reconstruct_map(m, parse_sequences(lines, m), **kw)


def test_vafa_repair_takes_the_first_longest_continuation():
    """3 -E-> 4, then N is impossible at 4 with E S to go. bfs_to_failure from the nodes
    near 4, in index order: 0 -E-> 1 (S impossible), 1 -E-> 2 (S impossible) and
    3 -E-> 4 -S-> 1 (ends away from 2, so only its prefix 3 -E-> 4 counts) all explain one
    turn; the first, 0, wins (lenient takes 3, the most steps, and fails). Then only S is
    left at 1: a new edge straight to the destination 2."""
    m = tiny_map()
    res = _vafa(m, ["3 2 E N E S end"])
    assert sorted(res.invented) == [(1, "S", 2), (4, "N", 0)]
    assert sorted(res.recovered) == [(0, "E", 1), (3, "E", 4)]
    assert (res.n_explained, res.n_repaired, res.n_failed, res.n_followed) == (1, 1, 0, 0)
    old = _vafa(m, ["3 2 E N E S end"], protocol="lenient")
    assert old.invented == [(4, "N", 3)] and old.n_explained == 0


def test_vafa_repair_may_loop_back_to_the_current_node():
    """0 -N-> 3, W impossible at 3, E to go to 4: from 3 itself (near_neighbors includes
    it) E reaches 4, so the new edge is the self-loop 3 -W-> 3. Lenient excludes the
    current node, takes 0 (nearest) and fails."""
    m = tiny_map()
    res = _vafa(m, ["0 4 N W E end"])
    assert res.invented == [(3, "W", 3)] and sorted(res.recovered) == [(0, "N", 3), (3, "E", 4)]
    assert res.n_explained == res.n_repaired == 1
    assert _vafa(m, ["0 4 N W E end"], protocol="lenient").invented == [(3, "W", 0)]


def test_vafa_wrong_destination_gets_a_new_last_edge_that_shadows_a_true_one():
    """0 -E-> 1 -E-> 2 ends at 2, not 4: the walk is cut back to 0 -E-> 1 (room at 1) and
    the last turn E gets a new edge 1 -E-> 4 (4 is 1 away) although the true 1 -E-> 2 is
    unused. That true edge can then never be used: "1 2 E end" walks the new edge to 4,
    and its source already uses E, so it fails."""
    m = tiny_map()
    res = _vafa(m, ["0 4 E E end", "1 2 E end"])
    assert res.invented == [(1, "E", 4)] and res.recovered == [(0, "E", 1)]
    assert (1, "E", 2) in res.missed
    assert (res.n_explained, res.n_repaired, res.n_failed) == (1, 1, 1)
    old = _vafa(m, ["0 4 E E end", "1 2 E end"], protocol="lenient")
    assert old.invented == [] and old.n_explained == 1


def test_vafa_degree_cap_blocks_even_a_true_edge():
    """max_degree=1: "0 2 E E end" puts one edge in use at 0 and at 1; "1 0 W end" is a true
    trip, but 1 is at the cap, so neither its true W edge nor a new one may be used."""
    m = tiny_map()
    res = _vafa(m, ["0 2 E E end", "1 0 W end"], max_degree=1)
    assert res.invented == [] and sorted(res.recovered) == [(0, "E", 1), (1, "E", 2)]
    assert res.n_true_valid == 2 and (res.n_explained, res.n_failed) == (1, 1)
    assert _vafa(m, ["0 2 E E end", "1 0 W end"]).n_explained == 2  # the default cap of 4 lets it through


def test_vafa_failed_trip_keeps_its_edges_and_ill_formed_rows_are_dropped():
    """max_distance=1: 3 -E-> 4, N impossible at 4, W S to go; near 4 are 1, 3, 4 and only
    1 -W-> 0 explains a turn, so 4 -N-> 1 is added; the last turn S at 0 needs the
    destination 2, which is 2 away: the trip fails, its edges stay. A row without end and
    a trip without turns are ill-formed (lenient counts "0 0 end" as explained)."""
    m = tiny_map()
    lines = ["3 2 E N W S end", "0 0 end", "0 1 E", "0 1 E end"]
    res = _vafa(m, lines, max_distance=1.0)
    assert res.invented == [(4, "N", 1)] and sorted(res.recovered) == [(0, "E", 1), (1, "W", 0), (3, "E", 4)]
    assert (res.n_trips, res.n_malformed, res.n_no_turns, res.n_ill_formed) == (4, 1, 1, 2)
    assert (res.n_explained, res.n_followed, res.n_failed, res.n_true_valid) == (1, 1, 1, 1)
    assert res.explained.n == 2 and res.trips_used.count == 1 and res.trips_used.n == 4
    old = _vafa(m, lines, max_distance=1.0, protocol="lenient")
    assert (old.n_ill_formed, old.n_explained, old.explained.n) == (1, 2, 3)


def _walk_in_use(res, street_map, origin, dest, turns) -> bool:
    """Follow turns over the edges in use of a reconstruction (new edges first, as there a
    true edge with the same direction is unused)."""
    step = {(s, d): t for s, d, t in res.recovered}
    step.update({(s, d): t for s, d, t in res.invented})
    node = origin
    for d in turns:
        if (node, d) not in step:
            return False
        node = step[node, d]
    return node == dest


@pytest.mark.parametrize("max_degree", [2, 3, 4])
def test_vafa_degree_cap_is_never_exceeded(max_degree):
    """Random corrupted trips (one turn replaced in 40% of them, as make_graphs.py's
    --randomerr) on a synthetic map: edges in use per node never exceed the cap, every
    trip counted as explained is a walk over the edges in use, and the counts add up."""
    from collections import Counter

    m = synthetic_manhattan(7, 7, seed=4)
    world = Taxi(m, min_len=2, max_len=14)
    lines = world.to_text(world.sample(400, seed=5).tokens)
    rng = np.random.default_rng(6)
    names = ["N", "S", "E", "W", "NE", "NW", "SE", "SW"]
    for i in range(len(lines)):
        if rng.random() < 0.4:
            words = lines[i].split()
            k = int(rng.integers(2, len(words) - 1))
            words[k] = str(rng.choice([d for d in names if d != words[k]]))
            lines[i] = " ".join(words)
    res = mp.reconstruct_map(m, parse_sequences(lines, m), max_degree=max_degree)
    in_use = Counter(s for s, _, _ in res.recovered + res.invented)
    assert max(in_use.values()) == max_degree  # the cap binds
    slots = Counter((s, d) for s, d, _ in res.invented)
    assert max(slots.values()) == 1 and not {(s, d) for s, d, _ in res.recovered} & set(slots)
    assert len(res.invented) > 0
    assert res.n_explained + res.n_failed + res.n_ill_formed == res.n_trips == 400
    assert res.n_failed > 0 or max_degree == 4
    idx = {name: i for i, name in enumerate(m.node_names)}
    walks = [_walk_in_use(res, m, idx[w[0]], idx[w[1]], w[2:-1]) for w in (line.split() for line in lines)]
    assert sum(walks) >= res.n_explained  # explained trips stay explained by the final graph
    lenient = mp.reconstruct_map(m, parse_sequences(lines, m), protocol="lenient")
    assert max(Counter(s for s, _, _ in lenient.recovered + lenient.invented).values()) > 2  # no cap there


def test_unknown_protocol_and_bad_degree():
    m = tiny_map()
    with pytest.raises(mp.AnalysisError, match="protocol"):
        _vafa(m, ["0 1 E end"], protocol="vafa")
    with pytest.raises(mp.AnalysisError, match="max_degree"):
        _vafa(m, ["0 1 E end"], max_degree=0)


# --------------------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------------------
def test_cli_on_manhattan_trajectory_file(tmp_path):
    m = StreetMap.from_json(MANHATTAN)
    world = Taxi(m, max_len=30)
    s = world.sample(300, seed=0)
    lines = world.to_text(s.tokens)
    # corrupt one turn of 5 trips into a direction the current node does not have
    rng = np.random.default_rng(1)
    bad_rows = rng.choice(300, 5, replace=False)
    for r in bad_rows:
        words = lines[r].split()
        k = int(rng.integers(s.extras["lengths"][r]))
        node = s.states[r, 1 + k, 0]
        missing = [d for i, d in enumerate(["N", "S", "E", "W", "NE", "NW", "SE", "SW"]) if m.succ[node, i] < 0]
        words[2 + k] = missing[0]
        lines[r] = " ".join(words)
    path = tmp_path / "walks.txt"
    path.write_text("\n".join(lines) + "\n")
    out = tmp_path / "map.html"
    r = run_cli("nextlat_probe.mapping", "--map", "manhattan", "--trajectories", str(path), "--json",
                "--plot", str(out), timeout=300)
    assert r.returncode == 0, r.stderr
    (rec,) = json.loads(r.stdout)
    doc, params = rec["metrics"], rec["params"]
    assert rec["analysis"] == "mapping" and rec["variant"] == "behaviour" and rec["source"] == str(path)
    assert doc["n_trips"] == 300 and doc["n_true_valid"] == 295 and params["distance"] == "hops"
    assert rec["protocol"]["name"] == "vafa2024" and rec["protocol"]["max_degree"] == 4
    assert rec["protocol"]["distance"] == "hops" and rec["protocol"]["max_distance"] == 2
    assert doc["n_followed"] + doc["n_repaired"] + doc["n_failed"] + doc["n_ill_formed"] == 300
    assert doc["n_invented"] >= 1 and doc["explained"]["n"] == 300 and doc["explained"]["count"] >= 295
    good = [line for i, line in enumerate(lines) if i not in set(bad_rows)]
    assert doc["n_recovered"] >= len(used_edges(m, good))
    # every invented edge fills an empty slot and reaches at most 2 undirected hops
    und = m.adjacency() + m.adjacency().T
    for s_i, d, t_i in doc["invented_edges"]:
        assert m.succ[s_i, ["N", "S", "E", "W", "NE", "NW", "SE", "SW"].index(d)] < 0
        assert csgraph.shortest_path(und, directed=False, unweighted=True, indices=s_i)[t_i] <= 2
    assert out.is_file() and "plotly" in out.read_text()[:200000].lower()
    r = run_cli("nextlat_probe.mapping", "--map", str(MANHATTAN), "--trajectories", str(path), "--json",
                "--list-edges", "--protocol", "vafa2024", "--max-degree", "2", timeout=300)
    assert r.returncode == 0, r.stderr
    (capped,) = json.loads(r.stdout)
    from collections import Counter

    in_use = Counter(e[0] for e in capped["metrics"]["recovered_edges"] + capped["metrics"]["invented_edges"])
    assert max(in_use.values()) == 2 and capped["protocol"]["max_degree"] == 2
    assert capped["metrics"]["n_failed"] > doc["n_failed"]  # nodes of degree 3-4 are cut to 2


def test_cli_on_a_synthetic_map(tmp_path, capsys):
    from nextlat_probe.mapping import main

    m = synthetic_manhattan(5, 5, seed=3)
    m.to_json(tmp_path / "map.json")
    world = Taxi(m, min_len=2, max_len=12)
    lines = world.to_text(world.sample(40, seed=0).tokens)
    (tmp_path / "trips.txt").write_text("\n".join(lines))
    assert main(["--map", str(tmp_path / "map.json"), "--trajectories", str(tmp_path / "trips.txt"),
                 "--json", "--list-edges"]) == 0
    (rec,) = json.loads(capsys.readouterr().out)
    doc = rec["metrics"]
    want = set(used_edges(m, lines))
    assert {tuple(e) for e in doc["recovered_edges"]} == want and doc["invented_edges"] == []
    assert main(["--map", str(tmp_path / "map.json"), "--trajectories", str(tmp_path / "trips.txt")]) == 0
    text = capsys.readouterr().out
    assert "edges recovered" in text and f"{len(want)}" in text and "protocol vafa2024" in text
    assert main(["--map", str(tmp_path / "map.json"), "--trajectories", str(tmp_path / "trips.txt"), "--json",
                 "--protocol", "lenient"]) == 0
    (old,) = json.loads(capsys.readouterr().out)
    assert old["protocol"]["name"] == "lenient" and "max_degree" not in old["protocol"]
    assert old["metrics"]["n_recovered"] == doc["n_recovered"] and old["metrics"]["n_invented"] == 0


def test_cli_errors(tmp_path, capsys):
    from nextlat_probe.mapping import main

    m = tiny_map()
    m.to_json(tmp_path / "map.json")
    (tmp_path / "garbage.txt").write_text("hello world\nthis is not a trip\n")
    (tmp_path / "binary.txt").write_bytes(b"\x00\x01\x02 end")
    cases = [
        (["--map", str(tmp_path / "map.json"), "--trajectories", str(tmp_path / "garbage.txt")], "garbage.txt"),
        (["--map", str(tmp_path / "map.json"), "--trajectories", str(tmp_path / "binary.txt")], "binary.txt"),
        (["--map", str(tmp_path / "missing.json"), "--trajectories", str(tmp_path / "garbage.txt")], "missing.json"),
        (["--map", str(tmp_path / "map.json"), "--trajectories", str(tmp_path / "none.txt")], "none.txt"),
        (["--map", str(tmp_path / "map.json")], "--trajectories"),
        (["--map", str(tmp_path / "map.json"), "--trajectories", str(tmp_path / "garbage.txt"), "--max-degree", "0"],
         "--max-degree"),
        ([], "checkpoint"),
    ]
    for argv, needle in cases:
        with pytest.raises(SystemExit) as exc:
            run_main(main, argv)
        err = capsys.readouterr().err.strip()
        assert exc.value.code == 2 and len(err.splitlines()) == 1 and needle in err, (argv, err)


def test_cli_with_a_checkpoint(tiny_taxi_ckpts, tmp_path, capsys):
    from nextlat_probe.mapping import main

    out = tmp_path / "map.html"
    assert main([str(tiny_taxi_ckpts["nextlat"]), "--n-trips", "60", "--n-seqs", "48", "--json", "--plot", str(out)]) == 0
    recs = {r["variant"]: r for r in json.loads(capsys.readouterr().out)}
    assert set(recs) == {"behaviour", "probe", "mds"}
    rec, mds = recs["behaviour"]["metrics"], recs["mds"]["metrics"]
    assert all(r["objective"] == "nextlat" for r in recs.values()) and rec["n_trips"] == 60
    assert rec["n_recovered"] + rec["n_missed"] == rec["n_true_edges"]
    assert mds["reference"] == "coordinates" and recs["probe"]["layer"] == "L1"
    assert 0 <= mds["disparity"] <= 1 and mds["n_nodes_seen"] == len(mds["nodes"]) == len(mds["coords"])
    assert out.is_file()


def test_cli_rejects_a_non_taxi_checkpoint(tmp_path, capsys):
    from nextlat_probe.mapping import main
    from nextlat_probe.training.config import TrainConfig
    from nextlat_probe.training.trainer import train

    cfg = TrainConfig(world="mess3", objective="gpt", steps=2, batch_size=8, seq_len=8, eval_every=2,
                      save_every=2, n_val=8, device="cpu", warmup_steps=1)
    ck = train(cfg, out_dir=tmp_path / "mess3", progress=False).checkpoint
    with pytest.raises(SystemExit) as exc:
        run_main(main, [str(ck)])
    err = capsys.readouterr().err.strip()
    assert exc.value.code == 2 and len(err.splitlines()) == 1 and "taxi" in err
