"""The path-star world and its planning metrics, checked against computations written here
(a BFS over the edge list read from the tokens, counts of the edge order, binomial tests)."""
from collections import deque

import numpy as np
import pytest
from scipy.stats import binomtest, chisquare

from nextlat_probe.analysis.pathstar import (
    evaluate_pathstar,
    exact_predictor,
    forced_accuracy,
    greedy_paths,
    pathstar_scores,
    random_arm_predictor,
)
from nextlat_probe.errors import AnalysisError
from nextlat_probe.sources import world_from_text
from nextlat_probe.worlds import WorldError, make_world, world_from_spec
from nextlat_probe.worlds.pathstar import PathStar


# --- independent readers of the token layout --------------------------------------------
def read_row(row, n_nodes):
    """(edges, start, goal, path) of one sequence, read token by token: labels pair up into
    edges until '/' (id n_nodes + 2), then start, goal, '=' and the path."""
    row = [int(t) for t in row]
    edges, pair, i = [], [], 0
    while row[i] != n_nodes + 2:
        if row[i] < n_nodes:
            pair.append(row[i])
            if len(pair) == 2:
                edges.append(tuple(pair))
                pair = []
        else:
            assert row[i] == n_nodes  # '|'
        i += 1
    assert not pair
    start, goal, eq = row[i + 1], row[i + 2], row[i + 3]
    assert eq == n_nodes + 1
    return edges, start, goal, row[i + 4:]


def bfs_path(edges, start, goal):
    """The path start -> goal by breadth-first search over the (undirected) edges."""
    nb = {}
    for u, v in edges:
        nb.setdefault(u, []).append(v)
        nb.setdefault(v, []).append(u)
    prev, todo = {start: None}, deque([start])
    while todo:
        x = todo.popleft()
        for y in nb.get(x, []):
            if y not in prev:
                prev[y] = x
                todo.append(y)
    path, x = [], goal
    while x is not None:
        path.append(x)
        x = prev[x]
    return path[::-1]


def goal_arm_of(edges, start, goal):
    """Index of the goal's arm, arms numbered by the order of their centre edges."""
    firsts = [v for u, v in edges if u == start]
    return firsts.index(bfs_path(edges, start, goal)[1])


# --- the world ---------------------------------------------------------------------------
@pytest.mark.parametrize("d,arm,nodes", [(2, 4, 50), (3, 2, 12), (5, 5, 50), (2, 1, 3)])
def test_target_is_the_unique_path_from_the_centre_to_the_goal(d, arm, nodes):
    w = PathStar(degree=d, length=arm, nodes=nodes)
    s = w.sample(200, w.default_length, seed=1)
    E = d * arm
    assert s.tokens.shape == (200, 3 * E + arm + 4) and w.default_length == 3 * E + arm + 4
    assert w.prompt_length == 3 * E + 3 and w.path_length == arm + 1
    for row, state in zip(s.tokens, s.states):
        edges, start, goal, path = read_row(row, nodes)
        assert len(edges) == E and len({x for e in edges for x in e}) == E + 1
        children = [v for _, v in edges]
        assert len(set(children)) == E and start not in children  # a tree rooted at the start
        assert sum(u == start for u, _ in edges) == d
        assert goal not in {u for u, _ in edges}  # a leaf
        true = bfs_path(edges, start, goal)
        assert path == true and len(true) == arm + 1
        assert (state == goal_arm_of(edges, start, goal)).all()
    assert (w.true_paths(s.tokens) == s.tokens[:, w.prompt_length:]).all()
    assert (w.parse(s.tokens).goal_arm == s.states[:, 0]).all()


def test_edge_order_carries_no_information_about_the_goal():
    d, arm = 3, 3
    w = PathStar(degree=d, length=arm, nodes=20)
    n = 6000
    s = w.sample(n, seed=7)
    E = d * arm
    slot_of_goal_first = np.empty(n, dtype=int)
    rank_of_goal_arm = np.empty(n, dtype=int)
    for i, row in enumerate(s.tokens):
        edges, start, goal, _ = read_row(row, w.n_nodes)
        first = bfs_path(edges, start, goal)[1]
        slot_of_goal_first[i] = edges.index((start, first))
        rank_of_goal_arm[i] = goal_arm_of(edges, start, goal)
    # the goal arm's first edge sits anywhere in the list with equal chance
    assert chisquare(np.bincount(slot_of_goal_first, minlength=E)).pvalue > 1e-4
    # the goal's arm is first, second, ... among the arms with equal chance (= the state)
    assert chisquare(np.bincount(rank_of_goal_arm, minlength=d)).pvalue > 1e-4
    assert (rank_of_goal_arm == s.states[:, 0]).all()
    # and the goal arm's first-edge slot does not depend on which arm it is
    for k in range(d):
        sel = slot_of_goal_first[rank_of_goal_arm == k]
        assert np.bincount(sel, minlength=E)[: k].sum() == 0  # k arms start before it
    # the separator never moves: the same skeleton for every row
    assert (s.tokens[:, 2:3 * E - 1:3] == w.edge_sep_id).all()


def test_beliefs_uniform_before_the_goal_then_one_hot():
    w = PathStar(degree=4, length=2, nodes=30)
    s = w.sample(50, seed=3)
    b = w.beliefs(s.tokens)
    assert b.shape == (50, w.default_length, 4)
    assert np.allclose(b[:, :w.goal_pos], 0.25)
    onehot = np.eye(4)[s.states[:, 0]]
    assert np.array_equal(b[:, w.goal_pos:], np.repeat(onehot[:, None], w.default_length - w.goal_pos, axis=1))
    # prefixes: the same beliefs
    assert np.allclose(w.beliefs(s.tokens[:, :w.goal_pos]), 0.25)
    assert np.array_equal(w.beliefs(s.tokens[:, :w.goal_pos + 1]), b[:, :w.goal_pos + 1])
    assert w.n_states == 4 and w.beliefs(s.tokens).sum(-1).min() == pytest.approx(1.0)


def test_next_token_probs_and_the_floor():
    w = PathStar(degree=3, length=2, nodes=15)
    s = w.sample(40, seed=5)
    p = w.next_token_probs(s.tokens)
    assert p.shape == (40, w.default_length, w.vocab_size) and np.allclose(p.sum(-1), 1.0)
    assert PathStar.exact_prompt_probs is False
    # every actual next token has positive probability; after '=' it is certain
    got = np.take_along_axis(p[:, :-1], s.tokens[:, 1:, None], axis=2)[..., 0]
    assert (got > 0).all()
    assert np.allclose(got[:, w.eq_pos:], 1.0)
    assert np.allclose(got[:, w.sep_pos], 1.0)  # the start is the centre
    assert np.allclose(got[:, w.start_pos], 1 / 3)  # the goal: one of the 3 leaves
    assert w.exact_cross_entropy(s.tokens) == 0.0
    mask = w.target_mask(s.tokens)
    assert mask[:, w.prompt_length:].all() and not mask[:, :w.prompt_length].any()
    targets, scored = w.output_targets(s.tokens)
    assert scored.sum(axis=1).tolist() == [w.path_length] * 40
    # the path targets are a function of the prompt: a wrong path keeps the prompt's targets
    bad = s.tokens.copy()
    bad[:, w.prompt_length + 1:] = 0
    assert np.array_equal(w.next_token_probs(bad)[:, w.eq_pos:-1], p[:, w.eq_pos:-1])
    # prefixes agree with the full array
    assert np.array_equal(w.next_token_probs(s.tokens[:, :w.prompt_length + 1]), p[:, :w.prompt_length + 1])


def test_is_path_to_leaf():
    w = PathStar(degree=3, length=3, nodes=20)
    s = w.sample(30, seed=2)
    g = w.parse(s.tokens)
    rows = np.arange(30)
    for k in range(3):
        path = np.concatenate([g.centre[:, None], g.arms[rows, np.full(30, k)]], axis=1)
        valid, goal = w.is_path_to_leaf(s.tokens, path)
        assert valid.all() and np.array_equal(goal, g.goal_arm == k)
    true = s.tokens[:, w.prompt_length:]
    broken = true.copy()
    broken[:, 2] = true[:, 3]  # skip a node
    assert not w.is_path_to_leaf(s.tokens, broken)[0].any()
    short = true.copy()
    short[:, -1] = w.edge_sep_id  # a special token instead of the leaf
    assert not w.is_path_to_leaf(s.tokens, short)[0].any()
    reverse = true[:, ::-1].copy()
    assert not w.is_path_to_leaf(s.tokens, reverse)[0].any()
    with pytest.raises(WorldError):
        w.is_path_to_leaf(s.tokens, true[:, :-1])
    assert w.decode_path(true[:1])[0] == " -> ".join(str(int(t)) for t in true[0])


def test_spec_options_and_errors():
    w = make_world("pathstar", degree=2, length=5, nodes=50)
    assert w.spec() == {"kind": "pathstar", "degree": 2, "length": 5, "n_nodes": 50}
    back = world_from_spec(w.spec())
    assert back.spec() == w.spec() and isinstance(back, PathStar)
    assert world_from_text("pathstar:degree=3,length=2,nodes=10").spec() == \
        {"kind": "pathstar", "degree": 3, "length": 2, "n_nodes": 10}
    assert PathStar(n_nodes=12, degree=2, length=3).n_nodes == 12
    assert PathStar().spec() == {"kind": "pathstar", "degree": 2, "length": 4, "n_nodes": 50}
    assert PathStar().default_length == 32  # the reference's deg 2 path 5 sequences
    for bad in ({"degree": 1}, {"length": 0}, {"degree": 3, "length": 3, "nodes": 9}, {"degree": 2.5},
                {"degree": True}, {"nodes": 20, "n_nodes": 30}, {"length": "x"}):
        with pytest.raises(WorldError) as exc:
            PathStar(**bad)
        assert "\n" not in str(exc.value)
    for spec in ({"kind": "pathstar", "degree": 2}, {"kind": "a5"}, {"kind": "pathstar", "degree": 1, "length": 2,
                                                                      "n_nodes": 10}):
        with pytest.raises(WorldError):
            PathStar.from_spec(spec)
    with pytest.raises(WorldError) as exc:
        w.sample(2, 16)
    assert "\n" not in str(exc.value) and str(w.default_length) in str(exc.value)
    assert w.sample(2, None, seed=0).tokens.shape == (2, w.default_length)
    assert np.array_equal(w.sample(3, seed=4).tokens, w.sample(3, seed=4).tokens)


def test_malformed_prompts_raise():
    w = PathStar(degree=2, length=2, nodes=10)
    s = w.sample(4, seed=0)
    cases = []
    t = s.tokens.copy()
    t[1, 2] = 3  # a label where '|' belongs
    cases.append(t)
    t = s.tokens.copy()
    t[2, 1] = t[2, 4]  # two edges share a child
    cases.append(t)
    t = s.tokens.copy()
    t[0, w.start_pos] = t[0, 1]  # a child as the start: not the centre
    cases.append(t)
    t = s.tokens.copy()
    t[3, w.goal_pos] = t[3, w.start_pos]  # goal not a leaf
    cases.append(t)
    for t in cases:
        with pytest.raises(WorldError) as exc:
            w.beliefs(t)
        assert "\n" not in str(exc.value)
    with pytest.raises(WorldError):
        w.next_token_probs(np.concatenate([s.tokens, s.tokens[:, :1]], axis=1))  # too long
    lines = w.to_text(s.tokens)
    assert np.array_equal(w.from_text(lines), s.tokens)
    a, b, c, d_, e = 1, 2, 3, 4, 5
    line = f"{a},{b}|{c},{d_}|{b},{e}|{a},{c}/{a},{e}={a},{b},{e}"
    toks = w.from_text([line])
    assert w.true_paths(toks).tolist() == [[a, b, e]] and toks[0, -3:].tolist() == [a, b, e]
    with pytest.raises(WorldError):
        w.from_text(["1,2|3/1,2=1"])


# --- metrics -------------------------------------------------------------------------------
def test_oracle_scores_one_and_random_arm_is_clever_hans():
    d = 3
    w = PathStar(degree=d, length=3, nodes=30)
    n = 900
    s = w.sample(n, seed=11)
    prompts = s.tokens[:, :w.prompt_length]
    oracle = greedy_paths(exact_predictor(w), prompts, w.path_length)
    assert np.array_equal(oracle, s.tokens[:, w.prompt_length:])
    sc = pathstar_scores(w, prompts, oracle)
    assert sc["n"] == n and all(sc[k]["value"] == 1.0 for k in ("exact_path", "first_step", "valid_path"))
    rnd = greedy_paths(random_arm_predictor(w, seed=3), prompts, w.path_length)
    sc = pathstar_scores(w, s.tokens, rnd)
    assert sc["valid_path"]["value"] == 1.0 and sc["valid_path"]["count"] == n
    assert binomtest(sc["exact_path"]["count"], n, 1 / d).pvalue > 1e-4
    assert sc["first_step"]["count"] == sc["exact_path"]["count"]
    assert sc["exact_path"]["low"] < 1 / d < sc["exact_path"]["high"] or \
        binomtest(sc["exact_path"]["count"], n, 1 / d).pvalue > 1e-3
    # independent count: exact iff the random path's first arm node is the goal arm's
    exact = [bfs_path(*read_row(row, w.n_nodes)[:3])[1] == r[1] for row, r in zip(s.tokens, rnd)]
    assert sum(exact) == sc["exact_path"]["count"]
    # the same prompts always get the same arm
    assert np.array_equal(rnd, greedy_paths(random_arm_predictor(w, seed=3), prompts, w.path_length))


def test_scores_count_partly_wrong_paths():
    w = PathStar(degree=2, length=3, nodes=20)
    s = w.sample(8, seed=9)
    true = s.tokens[:, w.prompt_length:].copy()
    paths = true.copy()
    paths[:2, 3] = (true[:2, 3] + 1) % w.n_nodes  # wrong leaf on rows 0, 1 (not an edge: invalid)
    g = w.parse(s.tokens)
    other = 1 - g.goal_arm
    paths[2:4] = np.concatenate([g.centre[2:4, None], g.arms[np.arange(2, 4), other[2:4]]], axis=1)  # other arm
    sc = pathstar_scores(w, s.tokens, paths)
    assert sc["exact_path"]["count"] == 4 and sc["first_step"]["count"] == 6 and sc["valid_path"]["count"] == 6
    with pytest.raises(AnalysisError):
        pathstar_scores(w, s.tokens, paths[:, :-1])
    with pytest.raises(AnalysisError):
        pathstar_scores(make_world("a5"), s.tokens, paths)


def test_greedy_paths_reads_logits_and_checks_the_context():
    w = PathStar(degree=2, length=2, nodes=10)
    s = w.sample(5, seed=0)
    prompts = s.tokens[:, :w.prompt_length]

    def logits(tokens):
        return np.log(w.next_token_probs(tokens) + 1e-12) * 3.0

    assert np.array_equal(greedy_paths(logits, prompts, w.path_length), s.tokens[:, w.prompt_length:])
    assert greedy_paths(logits, prompts, 0).shape == (5, 0)
    logits.max_length = w.default_length - 2
    with pytest.raises(AnalysisError):
        greedy_paths(logits, prompts, w.path_length)


def test_forced_accuracy_shows_the_shortcut_and_training_runs(tmp_path):
    from nextlat_probe.analysis.worldmodel import model_predictor
    from nextlat_probe.checkpoint import load_checkpoint
    from nextlat_probe.training.config import TrainConfig
    from nextlat_probe.training.trainer import train

    w = PathStar(degree=2, length=3, nodes=20)
    s = w.sample(400, seed=1)
    fa = forced_accuracy(random_arm_predictor(w), w, s.tokens)
    per = [r["value"] for r in fa["per_token"]]
    assert per[0] == 1.0 and per[2:] == [1.0] * (w.path_length - 2)  # teacher forcing hands them over
    assert binomtest(fa["per_token"][1]["count"], 400, 0.5).pvalue > 1e-4  # the first arm node: chance
    assert forced_accuracy(exact_predictor(w), w, s.tokens)["sequence"]["value"] == 1.0
    cfg = TrainConfig(world="pathstar", world_options={"degree": 2, "length": 2, "nodes": 8}, objective="gpt",
                      steps=3, batch_size=16, eval_every=3, save_every=3, n_val=16, device="cpu", warmup_steps=1)
    res = train(cfg, out_dir=tmp_path / "ps", progress=False)
    assert res.val_floor == 0.0
    ck = load_checkpoint(res.checkpoint)
    assert ck.world.spec() == {"kind": "pathstar", "degree": 2, "length": 2, "n_nodes": 8}
    assert ck.model_config.n_ctx == ck.world.default_length
    out = evaluate_pathstar(model_predictor(ck.model), ck.world, n_graphs=20, seed=0)
    assert out["n"] == 20 and out["params"]["degree"] == 2 and len(out["forced"]["per_token"]) == 3
