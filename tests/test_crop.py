"""Neighbourhoods of a street map (``StreetMap.crop``, ``taxi crop``): strongly connected,
made of the input's own edges, maximal (checked against a breadth-first search written
here), deterministic, with provenance and licence, and refused in one line when the
radius holds no cycle."""
from __future__ import annotations

import json
import re
from collections import deque

import numpy as np
import pytest
from helpers import MANHATTAN, ROOT, run_cli

from nextlat_probe.worlds import WorldError
from nextlat_probe.worlds.streetmap import DIRECTIONS, StreetMap, synthetic_manhattan


@pytest.fixture(scope="module")
def manhattan() -> StreetMap:
    return StreetMap.from_json("manhattan")


def edge_set(m: StreetMap) -> set[tuple[int, str, int]]:
    """Edges as (src id, direction, dst id) with the map's original ids."""
    return {(m.node_ids[s], d, m.node_ids[t]) for s, d, t in m.edges()}


def bfs(adj: dict[int, set[int]], start: int, allowed: set[int] | None = None, limit: int | None = None) -> dict[int, int]:
    dist = {start: 0}
    todo = deque([start])
    while todo:
        u = todo.popleft()
        if limit is not None and dist[u] >= limit:
            continue
        for v in adj.get(u, ()):
            if v not in dist and (allowed is None or v in allowed):
                dist[v] = dist[u] + 1
                todo.append(v)
    return dist


def reference_crop(m: StreetMap, center_id: int, hops: int) -> set[int]:
    """The crop's node ids by plain breadth-first searches: the ball of undirected radius
    ``hops``, then the nodes that reach the centre and are reached from it inside it."""
    fwd: dict[int, set[int]] = {}
    back: dict[int, set[int]] = {}
    for s, _, t in edge_set(m):
        fwd.setdefault(s, set()).add(t)
        back.setdefault(t, set()).add(s)
    und = {u: fwd.get(u, set()) | back.get(u, set()) for u in set(fwd) | set(back)}
    ball = set(bfs(und, center_id, limit=hops))
    scc = set(bfs(fwd, center_id, ball)) & set(bfs(back, center_id, ball))
    return scc if len(scc) >= 2 else set()


def test_crop_is_strongly_connected_maximal_and_made_of_input_edges(manhattan):
    center = manhattan.central_node()
    cid = manhattan.node_ids[center]
    for hops in (3, 6, 9):
        sub = manhattan.crop(center, hops)
        assert sub.is_strongly_connected() and sub.out_degree.min() >= 1  # no dead ends
        assert set(sub.node_ids) == reference_crop(manhattan, cid, hops)
        assert cid in sub.node_ids
        # every edge is an edge of the input, same direction label, original ids kept
        assert edge_set(sub) <= edge_set(manhattan)
        # and every input edge between two kept nodes is kept
        kept = set(sub.node_ids)
        assert edge_set(sub) == {e for e in edge_set(manhattan) if e[0] in kept and e[2] in kept}
        assert set(d for _, d, _ in edge_set(sub)) <= set(DIRECTIONS)


def test_crop_keeps_coordinates_and_works_on_any_centre():
    m = synthetic_manhattan(8, 8, seed=3)
    for center in (0, 17, m.n_nodes - 1):
        try:
            sub = m.crop(center, 3)
        except WorldError:
            assert reference_crop(m, m.node_ids[center], 3) == set()
            continue
        assert set(sub.node_ids) == reference_crop(m, m.node_ids[center], 3)
        idx = [m.id_to_index[v] for v in sub.node_ids]
        np.testing.assert_array_equal(sub.coords, m.coords[idx])


def test_auto_centre_is_the_closeness_centre_among_well_connected_nodes():
    m = synthetic_manhattan(7, 7, seed=1)
    fwd: dict[int, set[int]] = {}
    for s, _, t in m.edges():
        fwd.setdefault(s, set()).add(t)
    und: dict[int, set[int]] = {}
    for s, ts in fwd.items():
        for t in ts:
            if s != t:
                und.setdefault(s, set()).add(t)
                und.setdefault(t, set()).add(s)
    nodes = range(m.n_nodes)  # the synthetic map is strongly connected: its SCC is everything
    indeg = {v: sum(v in fwd.get(u, ()) for u in nodes) for v in nodes}
    cand = [v for v in nodes if len(fwd.get(v, ())) >= 2 and indeg[v] >= 2]
    total = {v: sum(bfs(und, v).values()) for v in cand}
    best = min(total.values())
    want = min((v for v in cand if total[v] == best), key=lambda v: m.node_ids[v])
    assert m.central_node() == want


def test_a_radius_without_a_cycle_is_one_line_naming_the_smallest_radius(manhattan):
    center = manhattan.central_node()
    with pytest.raises(WorldError, match=r"no cycle through node .* within 0 hop.*smallest radius with one is --hops \d+"):
        manhattan.crop(center, 0)
    res = run_cli("nextlat_probe.taxi", "crop", "--map", "manhattan", "--center", "auto", "--hops", "0")
    assert res.returncode == 2
    assert len(res.stderr.strip().splitlines()) == 1 and res.stderr.startswith("error: ")
    bad = run_cli("nextlat_probe.taxi", "crop", "--map", "manhattan", "--center", "12", "--hops", "3")
    assert bad.returncode == 2 and "not a node id" in bad.stderr and len(bad.stderr.strip().splitlines()) == 1


def test_cli_is_deterministic_reports_and_carries_the_licence(tmp_path, manhattan):
    a, b = tmp_path / "a.json", tmp_path / "b.json.gz"
    ra = run_cli("nextlat_probe.taxi", "crop", "--map", "manhattan", "--center", "auto", "--hops", "5", "--out", str(a),
                 "--json")
    rb = run_cli("nextlat_probe.taxi", "crop", "--map", str(MANHATTAN), "--center", "auto", "--hops", "5", "--out", str(b))
    assert ra.returncode == 0 and rb.returncode == 0, ra.stderr + rb.stderr
    info = json.loads(ra.stdout)
    sub_a, sub_b = StreetMap.from_json(a), StreetMap.from_json(b)
    assert sub_a.node_ids == sub_b.node_ids and sub_a.edges() == sub_b.edges()
    again = tmp_path / "again.json"
    run_cli("nextlat_probe.taxi", "crop", "--map", "manhattan", "--center", str(info["center"]), "--hops", "5",
            "--out", str(again))
    assert again.read_bytes() == a.read_bytes()  # the same arguments (auto = that id), the same file
    assert info["nodes"] == sub_a.n_nodes and info["edges"] == sub_a.n_edges and info["strongly_connected"]
    hist = np.bincount(sub_a.out_degree)
    assert info["out_degree_histogram"] == {str(d): int(c) for d, c in enumerate(hist) if c}
    assert f"nodes                {sub_a.n_nodes}" in rb.stdout and "out-degree histogram" in rb.stdout
    raw = json.loads(a.read_text())
    assert "ODbL" in raw["licence"] and "OpenStreetMap contributors" in raw["attribution"]
    assert raw["derived_from"]["center"] == info["center"] and raw["derived_from"]["hops"] == 5
    assert sub_a.metadata["licence"] == raw["licence"]  # read back, and carried into a crop of the crop
    assert sub_a.crop(sub_a.id_to_index[info["center"]], 2).metadata["licence"] == raw["licence"]
    # the world spec (a run's identity) never holds the provenance
    assert "licence" not in sub_a.to_dict() and "licence" in sub_a.to_dict(metadata=True)


def test_readme_sizes_around_auto_are_what_crop_gives(manhattan):
    text = (ROOT / "README.md").read_text()
    rows = re.findall(r"^\| `--hops (\d+)` \| ([\d,]+) \| ([\d,]+) \|", text, flags=re.M)
    assert len(rows) >= 3, "README lists the crop sizes around auto"
    center = manhattan.central_node()
    for hops, nodes, edges in rows:
        sub = manhattan.crop(center, int(hops))
        assert (sub.n_nodes, sub.n_edges) == (int(nodes.replace(",", "")), int(edges.replace(",", "")))
