"""The three trip sources on a cropped piece of the real map, with and without held-out
origin/destination pairs: every sampled trip is legal and valid, and the world's exact
predictive distribution and floor agree with a brute-force enumeration of every trip,
written here from the sources' definitions (random walks, shortest paths with the
first-direction tie rule, noisy shortest paths)."""
from __future__ import annotations

import math
from collections import defaultdict
from itertools import product

import numpy as np
import pytest
from scipy import stats
from test_taxi import bfs_dist, pad_rows

from nextlat_probe.worlds import WorldError
from nextlat_probe.worlds.streetmap import StreetMap
from nextlat_probe.worlds.taxi import Taxi, check_sequences


@pytest.fixture(scope="module")
def crop() -> StreetMap:
    m = StreetMap.from_json("manhattan")
    return m.crop(m.central_node(), 3)


def successors(m: StreetMap) -> dict[int, list[tuple[int, int]]]:
    """node -> [(direction index, next node)] in direction order."""
    out: dict[int, list[tuple[int, int]]] = defaultdict(list)
    for s, d, t in zip(m.edge_src, m.edge_dir, m.edge_dst):
        out[int(s)].append((int(d), int(t)))
    return {k: sorted(v) for k, v in out.items()}


def enumerate_trips(world: Taxi) -> dict[tuple[int, ...], float]:
    """Every trip (origin, dest, turn ids..., end) with its probability, by brute force."""
    m, N = world.map, world.map.n_nodes
    succ = successors(m)
    nodes = list(range(N))  # a crop is strongly connected: every node is walkable
    trips: dict[tuple[int, ...], float] = {}
    side = world._on_side(np.array(nodes))  # the split itself (tested against a pure-Python hash elsewhere)
    if world.walk == "random":
        lengths = range(world.min_len, world.max_len + 1)
        for o in nodes:
            mine: dict[tuple[int, ...], float] = {}
            for L in lengths:
                for choice in product(*[range(4)] * L):
                    cur, p, turns = o, 1.0 / len(lengths), []
                    for c in choice:
                        if c >= len(succ[cur]):
                            break
                        d, nxt = succ[cur][c]
                        p /= len(succ[cur])
                        turns.append(d)
                        cur = nxt
                    else:
                        if side[o, cur]:
                            key = (o, cur, *[N + d for d in turns], N + 8)
                            mine[key] = mine.get(key, 0.0) + p
            z = sum(mine.values())  # conditioned on ending on the side
            trips.update({k: v / (z * N) for k, v in mine.items()})
        return trips
    def walk(o: int, dest: int, dist: dict[int, int], cur: int, turns: tuple[int, ...], p: float) -> None:
        if cur == dest:
            key = (o, dest, *[N + d for d in turns], N + 8)
            trips[key] = trips.get(key, 0.0) + p
            return
        sp = next(d for d, nxt in succ[cur] if dist.get(nxt, 1e9) == dist[cur] - 1)  # first shortest direction
        feasible = [(d, nxt) for d, nxt in succ[cur] if len(turns) + 1 + dist.get(nxt, 1e9) <= world.max_len]
        for d, nxt in succ[cur]:
            q = (1 - world.noise) * (d == sp) + (world.noise / len(feasible) if (d, nxt) in feasible else 0.0)
            if q > 0:
                walk(o, dest, dist, nxt, turns + (d,), p * q)

    for o in nodes:
        dests = [d for d in nodes if d != o and side[o, d]]
        for dest in dests:
            walk(o, dest, bfs_dist({a: dict(nb) for a, nb in succ.items()}, dest), o, (), 1.0 / (N * len(dests)))
    return trips


WORLDS = [
    dict(walk="random", min_len=1, max_len=4),
    dict(walk="random", min_len=2, max_len=4, holdout=0.3),
    dict(walk="shortest"),
    dict(walk="shortest", holdout=0.3),
    dict(walk="noisy", noise=0.3, extra=2),
    dict(walk="noisy", noise=0.3, extra=1, holdout=0.3),
]


def build(crop: StreetMap, opts: dict) -> Taxi:
    opts = dict(opts)
    extra = opts.pop("extra", None)
    if extra is not None:
        opts["max_len"] = Taxi(crop, walk="shortest").max_len + extra
    if not opts.get("holdout"):
        return Taxi(crop, **opts)
    for seed in range(50):  # a split that leaves every origin a destination on both sides
        try:
            Taxi(crop, **opts, holdout_seed=seed, pairs="held_out")
            return Taxi(crop, **opts, holdout_seed=seed)
        except WorldError:
            continue
    raise AssertionError("no usable split seed")


@pytest.mark.parametrize("opts", WORLDS, ids=lambda o: "-".join(f"{k}{v}" for k, v in o.items()))
def test_exact_predictive_and_floor_match_enumeration(crop, opts):
    world = build(crop, opts)
    for w in ([world, world.variant(pairs="held_out")] if world.holdout else [world]):
        trips = enumerate_trips(w)
        assert abs(sum(trips.values()) - 1.0) < 1e-9
        keys = list(trips)
        weights = np.array([trips[k] for k in keys])
        tokens = pad_rows(w, [list(k) for k in keys], w.default_length)
        probs = w.next_token_probs(tokens)
        # brute-force conditionals: P(prefix + token) / P(prefix), from the enumeration alone
        mass: dict[tuple[int, ...], float] = defaultdict(float)
        for k, p in trips.items():
            for t in range(1, len(k) + 1):
                mass[k[:t]] += p
        nll_world = nll_brute = scored = 0.0
        for i, k in enumerate(keys):
            for t in range(1, len(k)):
                want = mass[k[:t + 1]] / mass[k[:t]]
                got = probs[i, t - 1, k[t]]
                assert got == pytest.approx(want, rel=1e-9, abs=1e-12), (k, t)
                if t >= 2:  # turns and end are scored
                    nll_world -= weights[i] * math.log(got)
                    nll_brute -= weights[i] * math.log(want)
                    scored += weights[i]
        assert nll_world / scored == pytest.approx(nll_brute / scored, rel=1e-9)  # the exact floor, both ways
        # the sampler draws exactly these trips (all legal, valid, on the world's side)
        sample = w.sample(400, seed=1)
        chk = check_sequences(w.map, sample.tokens)
        assert chk["legal"].all() and chk["valid"].all()
        for row in sample.tokens:
            assert tuple(int(x) for x in row[row != w.pad_id]) in trips
        if w.holdout:
            held = w.is_held_out(sample.extras["origin"], sample.extras["dest"])
            assert held.all() if w.pairs == "held_out" else not held.any()
        # and with the enumerated frequencies: the law of (origin, destination, turns) of
        # 4,000 draws against the enumeration (chi-square; categories of expected count >= 5)
        drawn = defaultdict(int)
        for row in w.sample(4000, seed=2).tokens:
            drawn[tuple(int(x) for x in row[row != w.pad_id])] += 1
        for key in (lambda k: k[:2], lambda k: (k[0], len(k))):
            law, seen = defaultdict(float), defaultdict(int)
            for k, p in trips.items():
                law[key(k)] += p
            for k, c in drawn.items():
                seen[key(k)] += c
            cats = sorted(law, key=law.get, reverse=True)
            big = [c for c in cats if law[c] * 4000 >= 5]
            exp = [law[c] * 4000 for c in big] + [4000 - sum(law[c] * 4000 for c in big)]
            obs = [seen[c] for c in big] + [4000 - sum(seen[c] for c in big)]
            if exp[-1] < 1e-9:
                exp, obs = exp[:-1], obs[:-1]
            assert stats.chisquare(obs, exp).pvalue > 1e-4
