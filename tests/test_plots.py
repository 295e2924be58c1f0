"""Plotting layer: figures read records of the documented shape, the numbers given reach the
pages and files unchanged, geometry is right, colours agree, non-records are refused."""
import base64
import json
import math
import re

import numpy as np
import pytest

from nextlat_probe.errors import AnalysisError
from nextlat_probe.plots import geometry as G
from nextlat_probe.plots import interactive as I
from nextlat_probe.plots import paper as P
from nextlat_probe.plots import style as S
from nextlat_probe.records import make_record, rate
from nextlat_probe.worlds.streetmap import StreetMap, synthetic_manhattan

GPT, NEXTLAT = "#0072B2", "#D55E00"


# --------------------------------------------------------------------------------------
# reading the figures back
# --------------------------------------------------------------------------------------
def decode(v):
    """A plotly JSON array (plain list, or typed {"dtype", "bdata"}) as a float array."""
    if isinstance(v, dict) and "bdata" in v:
        a = np.frombuffer(base64.b64decode(v["bdata"]), dtype=np.dtype(v["dtype"])).astype(float)
        if "shape" in v:
            a = a.reshape([int(x) for x in str(v["shape"]).split(",")])
        return a
    return np.array([np.nan if x is None else x for x in v], dtype=float)


def page_figure(path):
    """(traces, layout) parsed from a written HTML page; asserts it is offline."""
    text = path.read_text(encoding="utf-8")
    assert not re.search(r"<script[^>]*\bsrc\s*=\s*[\"']?(https?:)?//", text), "page loads a script from the network"
    assert "plotly" in text.lower() and len(text) > 1_000_000  # plotly.js inlined
    m = re.search(r'Plotly\.newPlot\(\s*"[^"]+",\s*', text)
    dec = json.JSONDecoder()
    traces, end = dec.raw_decode(text, m.end())
    layout, _ = dec.raw_decode(text, re.compile(r",\s*").match(text, end).end())
    return traces, layout


def write_and_read(fig, tmp_path, name):
    return page_figure(I.write_html(fig, tmp_path / f"{name}.html", title=name))


def named(traces, name):
    hits = [t for t in traces if t.get("name") == name]
    assert hits, f"no trace named {name!r}: {[t.get('name') for t in traces]}"
    return hits


def rgb_of(colors):
    return np.array([[int(v) for v in re.findall(r"\d+", c)] for c in colors]) / 255


def check_paper_files(fig, tmp_path, name):
    from PIL import Image

    paths = P.save_figure(fig, tmp_path / name)
    assert [p.suffix for p in paths] == [".pdf", ".svg", ".png"]
    assert all(p.stat().st_size > 1000 for p in paths)
    assert paths[0].read_bytes()[:5] == b"%PDF-"
    assert "<svg" in paths[1].read_text()[:2000]
    with Image.open(paths[2]) as im:
        assert np.allclose(im.info["dpi"], (300, 300), atol=0.5)
    return paths


# --------------------------------------------------------------------------------------
# records from hand-made numbers
# --------------------------------------------------------------------------------------
def ident(name, objective, step=400, val_loss=1.0, floor=0.8):
    return {"name": name, "objective": objective, "step": step, "seed": 0, "source": f"runs/{name}/ckpt.pt",
            "horizon": 1 if objective == "nextlat" else None, "val_loss": val_loss, "val_floor": floor,
            "gap_to_floor": val_loss - floor}


LAYERS = ["embed", "L0", "L1", "ln_final"]
MODELS = (("gpt-0", "gpt"), ("nextlat-0", "nextlat"))


def er(k, step, li):
    return 3.0 + li + step / 100 + 2 * k


def rank_records():
    recs = []
    for k, (name, obj) in enumerate(MODELS):
        for step in (100, 200, 400):
            for li, lay in enumerate(reversed(LAYERS)):  # given out of order: figures sort layers
                li = LAYERS.index(lay)
                s = np.geomspace(5.0, 0.01 * (k + 1) * (li + 1), 16)
                recs.append(make_record(ident(name, obj, step, 1.5 - step / 1000 + 0.01 * k), "rank",
                                        {"effective_rank": er(k, step, li), "participation_ratio": 2.0, "n90": 3,
                                         "n99": 8, "d_model": 16, "n_samples": 100, "spectrum": s.tolist()},
                                        {"n_seqs": 64, "seq_len": 16, "seed": 0, "center": False}, layer=lay))
    return recs


def beliefs(n, n_states, seed):
    rng = np.random.default_rng(seed)
    B = rng.dirichlet(np.ones(n_states), n)
    return B, B + 0.03 * rng.standard_normal(B.shape)


def probe_records(n_states=3, n=200):
    recs = []
    for k, (name, obj) in enumerate(MODELS):
        for i, lay in enumerate(LAYERS[:3]):
            m = {"mse": 0.01, "r2": 0.5 + 0.1 * i + 0.05 * k, "control_r2": 0.01 * i - 0.005 * k, "kl": 0.1}
            if lay == "L1":
                T, Pd = beliefs(n, n_states, k)
                m["points"] = {"true": T.tolist(), "pred": Pd.tolist()}
            recs.append(make_record(ident(name, obj), "probe", m, {"n_seqs": 32, "alpha": 1.0}, layer=lay))
    return recs


def transition_records():
    errs = {("gpt-0", "post-hoc mlp"): [0.1, 0.2, 0.4], ("gpt-0", "post-hoc linear"): [0.2, None, 0.5],
            ("nextlat-0", "own p_psi"): [0.05, 0.1, 0.2], ("nextlat-0", "post-hoc mlp"): [0.04, 0.08, 0.1]}
    ratios = {"gpt-0": (0.3, 0.35), "nextlat-0": (0.1, 0.12)}
    objs = dict(MODELS)
    return [make_record(ident(n, objs[n]), "transition", {"horizons": [1, 2, 3], "errors": e, "belief_ratio": ratios[n][0],
                                                         "state_ratio": ratios[n][1]}, {"horizon": 3}, layer="L1", variant=v)
            for (n, v), e in errs.items()]


def position_records():
    pos = np.arange(1, 9)
    floor = 1.0 + 0.5 * np.exp(-pos)
    return [make_record(ident(n, o), "position_loss",
                        {"positions": pos.tolist(), "loss": (floor + (k + 1) * 0.1 / pos).tolist(), "floor": floor.tolist(),
                         "count": [10] * 8, "mean_loss": 1.2, "mean_floor": 1.1})
            for k, (n, o) in enumerate(MODELS)]


def worldmodel_records():
    out = []
    for (name, obj), (c, n) in zip(MODELS, ((95, 100), (188, 200))):
        out.append(make_record(ident(name, obj), "worldmodel",
                               {"next_token": rate(c, n), "trajectory_valid": rate(c - 20, n), "compression": rate(0, 0),
                                "n_pairs": n}, {"n_pairs": n, "epsilon": 0.01}))
    return out


def path_map(n=7):
    return StreetMap(n, [(i, "E", i + 1) for i in range(n - 1)] + [(i + 1, "W", i) for i in range(n - 1)])


def taxi_map():
    return synthetic_manhattan(4, 4, seed=0)


def mapping_records(m):
    und = sorted({tuple(sorted((s, t))) for s, _, t in m.edges() if s != t})  # computed here, not by the map
    missed = [[und[0][1], und[0][0]], list(und[3])]  # one direction of two streets
    far = int(np.argmax(np.linalg.norm(m.coords - m.coords[0], axis=1)))
    beh = make_record(ident("gpt-0", "gpt"), "mapping",
                      {"explained": rate(9, 10), "edge_recall": rate(38, 40), "edge_precision": rate(38, 39),
                       "n_trips": 10, "n_malformed": 0, "n_recovered": 38, "n_invented": 2, "n_missed": 2,
                       "invented_edges": [[0, far], [far, 0], [3, 3]], "missed_edges": missed},
                      {"n_trips": 10}, variant="behaviour")
    nodes = [0, 1, 2, 4, 5, 6]
    coords = (m.coords[nodes] * 2.0 + 1.0).tolist()
    emb = make_record(ident("gpt-0", "gpt"), "mapping",
                      {"disparity": 0.125, "r2": 0.9, "nn_map_neighbour": rate(5, 6), "nn_true_nearest": rate(4, 6),
                       "nodes": nodes, "coords": coords}, {"n_seqs": 32}, layer="L1", variant="probe")
    return [beh, emb], und, missed, far, nodes, coords


def taxi_probe_records(m, n=60):
    rng = np.random.default_rng(3)
    out = []
    for k, (name, obj) in enumerate(MODELS):
        node = rng.integers(0, m.n_nodes, n)
        xy_true = m.coords[node]
        xy_pred = xy_true + 0.1 * (k + 1) * rng.standard_normal(xy_true.shape)
        out.append(make_record(ident(name, obj), "probe",
                               {"xy_r2": 0.9 - 0.1 * k, "state_accuracy": 0.5,
                                "points": {"xy_true": xy_true.tolist(), "xy_pred": xy_pred.tolist(), "node": node.tolist()}},
                               {"n_seqs": 16}, layer="L1"))
    return out


# --------------------------------------------------------------------------------------
# geometry and style
# --------------------------------------------------------------------------------------
def test_simplex_projection_corners_and_centre():
    xy = G.simplex_project(np.array([[1, 0, 0], [0, 1, 0], [0, 0, 1], [1 / 3, 1 / 3, 1 / 3], [0.5, 0.5, 0.0]]))
    h = math.sqrt(3) / 2
    np.testing.assert_allclose(xy, [[0, 0], [1, 0], [0.5, h], [0.5, h / 3], [0.5, 0.0]], atol=1e-12)
    np.testing.assert_allclose(S.belief_colors([[0.2, 0.3, 0.5]]), [[0.2, 0.3, 0.5]])  # colour = the belief


def test_pca_projection_matches_sklearn():
    from sklearn.decomposition import PCA

    B = np.random.default_rng(1).dirichlet(np.ones(5), 200)
    proj, is_simplex = G.belief_projection([B])
    assert not is_simplex
    ours, ref = proj(B), PCA(2).fit(B).transform(B)
    ref *= np.sign((ours * ref).sum(axis=0))  # PCA signs are arbitrary
    np.testing.assert_allclose(ours, ref, atol=1e-10)


def test_bezier_curve_bends_off_the_segment():
    c = G.bezier_curves([[0.0, 0.0]], [[2.0, 0.0]], curvature=0.25, n=5)[0]
    np.testing.assert_allclose(c[[0, -1]], [[0, 0], [2, 0]])
    np.testing.assert_allclose(c[2], [1.0, 0.25])  # midpoint = mid + curvature/2 x length, to the left
    back = G.bezier_curves([[2.0, 0.0]], [[0.0, 0.0]], curvature=0.25, n=5)[0]
    np.testing.assert_allclose(back[2], [1.0, -0.25])  # the reverse edge bends the other way


def test_layer_order_and_place_colours():
    assert sorted(["concat", "L10", "ln_final", "L2", "embed"], key=G.layer_key) == ["embed", "L2", "L10", "ln_final", "concat"]
    corners = np.array([[0.0, 0.0], [4.0, 0.0], [0.0, 2.0], [4.0, 2.0], [2.0, 1.0]])
    rgb = S.place_colors(corners)
    np.testing.assert_allclose(rgb[:4], S.PLACE_CORNERS)
    np.testing.assert_allclose(rgb[4], S.PLACE_CORNERS.mean(axis=0))  # the centre blends all four


def test_model_colours_are_fixed():
    st = S.checkpoint_styles(["a", "b", "c"], {"a": "nextlat", "b": "gpt", "c": "gpt"})
    assert (st["a"]["color"], st["b"]["color"], st["c"]["color"]) == (NEXTLAT, GPT, GPT)
    assert (st["b"]["variant"], st["c"]["variant"]) == (0, 1)
    assert S.checkpoint_styles(["runs/nextlat/ckpt.pt"])["runs/nextlat/ckpt.pt"]["color"] == NEXTLAT
    assert S.record_styles(rank_records())["nextlat-0"]["color"] == NEXTLAT


# --------------------------------------------------------------------------------------
# non-records are refused, with a clear error
# --------------------------------------------------------------------------------------
OLD_ROW = {"checkpoint": "gpt", "objective": "gpt", "layer": "L0", "effective_rank": 3.0, "spectrum": [1.0]}


@pytest.mark.parametrize("make", [
    I.rank_figure, I.rank_training_figure, I.probe_r2_figure, I.belief_figure, I.transition_figure,
    I.position_loss_figure, I.worldmodel_table_figure, lambda r: I.map_figure(path_map(), r),
    P.rank_plot, P.probe_r2_plot, P.belief_plot, P.transition_plot, P.worldmodel_plot, P.position_loss_plot,
    lambda r: P.map_plot(path_map(), r),
])
def test_figures_refuse_rows_that_are_not_records(make):
    with pytest.raises(AnalysisError, match="not a record.*missing"):
        make([OLD_ROW])
    with pytest.raises(AnalysisError, match="no .*records|draws"):
        make([])


def test_figures_refuse_records_of_another_analysis():
    with pytest.raises(AnalysisError, match="draws rank records, got a 'probe' record"):
        I.rank_figure(probe_records())
    with pytest.raises(AnalysisError, match="keep_points"):
        I.belief_figure([r for r in probe_records() if "points" not in r["metrics"]])


# --------------------------------------------------------------------------------------
# interactive pages
# --------------------------------------------------------------------------------------
def test_rank_pages(tmp_path):
    recs = rank_records()
    traces, layout = write_and_read(I.rank_figure(recs), tmp_path, "rank")
    t = named(traces, "gpt-0 (GPT)")[0]
    assert t["x"] == LAYERS and t["line"]["color"] == GPT  # layers in order, only the latest step
    np.testing.assert_allclose(decode(t["y"]), [er(0, 400, li) for li in range(4)])
    assert named(traces, "nextlat-0 (NextLat)")[0]["line"]["color"] == NEXTLAT
    spec = named(traces, "nextlat-0 block 0")  # every spectrum in the legend, its layer in words
    assert len(spec) == 1
    np.testing.assert_allclose(decode(spec[0]["y"]), np.geomspace(5.0, 0.01 * 2 * 2, 16))
    assert layout["xaxis2"]["categoryarray"] == LAYERS
    assert layout["xaxis2"]["ticktext"] == ["embeddings", "block 0", "block 1", "final LayerNorm"]

    traces, _ = write_and_read(I.rank_training_figure(recs), tmp_path, "rank_steps")
    t = named(traces, "gpt-0")
    assert len(t) == 2  # vs step, vs validation loss
    np.testing.assert_allclose(decode(t[0]["x"]), [100, 200, 400])
    np.testing.assert_allclose(decode(t[0]["y"]), [er(0, s, 2) for s in (100, 200, 400)])  # deepest block: L1
    np.testing.assert_allclose(decode(t[1]["x"]), [1.5 - s / 1000 for s in (100, 200, 400)])
    traces, _ = write_and_read(I.rank_training_figure(recs, layer="embed"), tmp_path, "rank_steps_embed")
    np.testing.assert_allclose(decode(named(traces, "nextlat-0")[0]["y"]), [er(1, s, 0) for s in (100, 200, 400)])
    with pytest.raises(AnalysisError, match="no rank records at layer 'L7'"):
        I.rank_training_figure(recs, layer="L7")


@pytest.mark.parametrize("n_states", [3, 4])
def test_belief_page(tmp_path, n_states):
    recs = probe_records(n_states)
    traces, _ = write_and_read(I.belief_figure(recs), tmp_path, "beliefs")
    T, Pd = beliefs(200, n_states, 1)  # nextlat-0's points, rebuilt here
    pts = named(traces, "nextlat-0")[0]
    if n_states == 3:
        Q = Pd / Pd.sum(axis=1, keepdims=True)
        want = np.stack([Q[:, 1] + 0.5 * Q[:, 2], math.sqrt(3) / 2 * Q[:, 2]], axis=1)
    else:  # PCA fitted on the stacked true beliefs of all panels' records
        from sklearn.decomposition import PCA

        allT = np.vstack([beliefs(200, n_states, 0)[0], T])
        pca = PCA(2).fit(allT)
        want = pca.transform(Pd)
        got = np.stack([decode(pts["x"]), decode(pts["y"])], axis=1)
        want *= np.sign((got * want).sum(axis=0))
    np.testing.assert_allclose(decode(pts["x"]), want[:, 0], atol=1e-9)
    np.testing.assert_allclose(decode(pts["y"]), want[:, 1], atol=1e-9)
    np.testing.assert_allclose(rgb_of(pts["marker"]["color"]), np.clip(T @ S.state_colors(n_states), 0, 1),
                               atol=0.5 / 255 + 1e-12)
    exact = named(traces, "exact beliefs")[0]
    assert len(decode(exact["x"])) == 200
    assert len([t for t in traces if t["type"] == "scattergl"]) == 3  # exact + one panel per record with points


def test_taxi_belief_page_puts_probed_positions_on_the_map(tmp_path):
    m = taxi_map()
    recs = taxi_probe_records(m)
    traces, _ = write_and_read(I.belief_figure(recs, true_map=m), tmp_path, "taxi_beliefs")
    for r in recs:
        pts = named(traces, f"{r['name']}: probed (x, y)")[0]
        xy = np.array(r["metrics"]["points"]["xy_pred"])
        np.testing.assert_allclose(decode(pts["x"]), xy[:, 0])
        np.testing.assert_allclose(decode(pts["y"]), xy[:, 1])
        lo, hi = m.coords.min(axis=0), m.coords.max(axis=0)
        want = S.place_colors(m.coords[r["metrics"]["points"]["node"]], np.array([lo, hi]))
        np.testing.assert_allclose(rgb_of(pts["marker"]["color"]), want, atol=0.5 / 255 + 1e-12)
    streets = named(traces, "streets")
    n_und = len({tuple(sorted((s, t))) for s, _, t in m.edges() if s != t})
    assert len(streets) == 2 and np.isnan(decode(streets[0]["x"])).sum() == n_und
    nodes = named(traces, "intersections")[0]
    np.testing.assert_allclose(decode(nodes["x"]), m.coords[:, 0])
    # without a map: the points and the true intersections they name
    traces, _ = write_and_read(I.belief_figure(recs), tmp_path, "taxi_beliefs_nomap")
    np.testing.assert_allclose(decode(named(traces, "gpt-0: probed (x, y)")[0]["y"]),
                               np.array(recs[0]["metrics"]["points"]["xy_pred"])[:, 1])
    assert not [t for t in traces if t.get("name") == "streets"]


def test_probe_and_transition_pages(tmp_path):
    recs = probe_records()
    traces, _ = write_and_read(I.probe_r2_figure(recs), tmp_path, "probe")
    t = named(traces, "gpt-0 (GPT)")[0]
    np.testing.assert_allclose(decode(t["y"]), [0.5, 0.6, 0.7])
    assert t["line"]["color"] == GPT and t["x"] == ["embed", "L0", "L1"]
    ctrl = named(traces, "nextlat-0 shuffled control")[0]
    np.testing.assert_allclose(decode(ctrl["y"]), [-0.005, 0.005, 0.015])
    assert ctrl["line"]["dash"] == "dot" and ctrl["line"]["color"] == NEXTLAT

    traces, _ = write_and_read(I.transition_figure(transition_records()), tmp_path, "transition")
    mlp = named(traces, "gpt-0: post-hoc MLP")[0]
    np.testing.assert_allclose(decode(mlp["y"]), [0.1, 0.2, 0.4])
    assert mlp["line"]["color"] == GPT and mlp["line"]["dash"] == "solid"
    lin = decode(named(traces, "gpt-0: post-hoc linear")[0]["y"])
    assert lin[0] == 0.2 and np.isnan(lin[1]) and named(traces, "gpt-0: post-hoc linear")[0]["line"]["dash"] == "dot"
    own = named(traces, "nextlat-0: own p_ψ")[0]
    assert own["line"]["dash"] == "dash" and own["line"]["color"] == NEXTLAT
    np.testing.assert_allclose(decode(own["y"]), [0.05, 0.1, 0.2])
    assert not [t for t in traces if t.get("name") == "gpt-0: own p_ψ"]
    np.testing.assert_allclose(decode(named(traces, "within-belief variance share")[0]["y"]), [0.3, 0.1])
    np.testing.assert_allclose(decode(named(traces, "within-(state, position) variance share")[0]["y"]), [0.35, 0.12])


FLOOR = 0.8386


def metrics_lines(obj, scale):
    lines = [json.dumps({"event": "start", "config": {"objective": obj}})]
    for step in (0, 20, 40):
        if step:
            lines.append(json.dumps({"loss": scale / step, "ce": 1 + scale / step, "next_h": scale / step if obj == "nextlat" else 0.0,
                                     "kl": 0.1 / step if obj == "nextlat" else 0.0, "step": step, "lr": 1e-3}))
        lines.append(json.dumps({"step": step, "val_loss": 1 + scale / (step + 1), "val_floor": FLOOR,
                                 "gap_to_floor": 1 + scale / (step + 1) - FLOOR}))
    return lines


def test_training_and_position_pages(tmp_path):
    (tmp_path / "gpt").mkdir()
    (tmp_path / "gpt" / "metrics.jsonl").write_text("\n".join(metrics_lines("gpt", 2.0)) + "\n{\"step\": 6")
    runs = {"run-a": tmp_path / "gpt" / "metrics.jsonl", "run-b": [json.loads(x) for x in metrics_lines("nextlat", 1.0)]}
    traces, layout = write_and_read(I.training_curves_figure(runs), tmp_path, "train")
    gap = [t for t in traces if t["name"] == "run-a" and t["xaxis"] == "x"][0]
    np.testing.assert_allclose(decode(gap["x"]), [0, 20, 40])
    # the first panel: validation loss minus the exact floor, on a log axis
    np.testing.assert_allclose(decode(gap["y"]), [1 + 2.0 / (s + 1) - FLOOR for s in (0, 20, 40)])
    assert layout["yaxis"]["type"] == "log"
    assert gap["line"]["color"] == GPT  # objective read from the log's start event
    assert [t["name"] for t in traces if t["xaxis"] == "x3"] == ["run-b"]  # GPT's zero next_h left out
    titles = [a["text"] for a in layout["annotations"]]
    assert f"validation loss − exact floor (nats/token); exact floor {FLOOR:.4f} ↓" in titles  # the floor, said once

    recs = position_records()
    traces, _ = write_and_read(I.position_loss_figure(recs), tmp_path, "positions")
    loss = named(traces, "nextlat-0")
    pos = np.arange(1, 9)
    floor = 1.0 + 0.5 * np.exp(-pos)
    np.testing.assert_allclose(decode(loss[0]["y"]), floor + 0.2 / pos)
    np.testing.assert_allclose(decode(loss[1]["y"]), 0.2 / pos, atol=1e-12)
    np.testing.assert_allclose(decode(named(traces, "exact floor")[0]["y"]), floor)
    counts = named(traces, "targets (every model)")[0]  # the count behind every point, once: the same for both
    assert counts["xaxis"] == "x3" and list(decode(counts["y"])) == [10] * 8


def test_mtp_extra_head_loss_gets_its_own_panel(tmp_path):
    mtp = [json.loads(x) for x in metrics_lines("gpt", 2.0)]
    mtp[0]["config"]["objective"] = "mtp"
    for r in mtp:
        if "ce" in r:
            r["mtp"] = 1.5 + 3.0 / r["step"]
    runs = {"m": mtp, "n": [json.loads(x) for x in metrics_lines("nextlat", 1.0)]}
    traces, layout = write_and_read(I.training_curves_figure(runs), tmp_path, "train_mtp")
    titles = [a["text"] for a in layout["annotations"]]
    assert "train MTP extra-head cross-entropy (nats/token) ↓" in titles
    panel = [t for t in traces if t["name"] == "m" and t["xaxis"] == "x5"]
    assert len(panel) == 1
    np.testing.assert_allclose(decode(panel[0]["y"]), [1.5 + 3.0 / s for s in (20, 40)])
    assert not [t for t in traces if t["name"] == "n" and t["xaxis"] == "x5"]  # NextLat has no extra heads
    plain = {"n": runs["n"]}
    _, layout = write_and_read(I.training_curves_figure(plain), tmp_path, "train_plain")
    assert "train MTP extra-head cross-entropy (nats/token) ↓" not in [a["text"] for a in layout["annotations"]]
    fig = P.training_curves_plot(runs)
    assert "train MTP extra-head cross-entropy (nats/token) ↓" in [a.get_title().replace("\n", " ") for a in fig.axes]


def wilson(c, n):
    """Wilson 95% interval, by its formula (independent of records.wilson_interval)."""
    z, p = 1.959963984540054, c / n
    centre, half = (p + z * z / (2 * n)) / (1 + z * z / n), z / (1 + z * z / n) * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return (0.0 if c == 0 else centre - half), (1.0 if c == n else centre + half)


def test_worldmodel_table_page(tmp_path):
    wm = worldmodel_records()
    rank = [r for r in rank_records() if r["step"] == 400]
    traces, _ = write_and_read(I.worldmodel_table_figure(wm + rank), tmp_path, "table")
    header, cells = traces[0]["header"]["values"], traces[0]["cells"]["values"]
    # metrics as rows (labels with direction marks), models as columns coloured by objective
    assert header == ["metric", "gpt-0", "nextlat-0"]
    assert traces[0]["header"]["font"]["color"] == ["#222222", GPT, NEXTLAT]
    assert cells[0] == ["next-token validity ↑", "valid trajectories (legal, ends at the destination) ↑",
                        "sequence compression ↑", "effective rank (block 1) ↓", "validation loss (nats/token) ↓",
                        "gap to the exact floor (nats/token) ↓"]
    for j, (c, n) in enumerate(((95, 100), (188, 200))):
        lo, hi = wilson(c, n)
        assert cells[1 + j][0] == f"{c / n:.3f} [{lo:.3f}, {hi:.3f}]"
        lo, hi = wilson(c - 20, n)
        assert cells[1 + j][1] == f"{(c - 20) / n:.3f} [{lo:.3f}, {hi:.3f}]"
        assert cells[1 + j][2] == "n/a"  # a rate of nothing measured
        assert cells[1 + j][3] == f"{er(j, 400, 2):.2f}"
        assert cells[1 + j][4:] == ["1.0000", "0.2000"]
    traces, _ = write_and_read(I.worldmodel_table_figure(wm, columns=["next_token"], formats={"next_token": ".2f"}),
                               tmp_path, "table2")
    assert traces[0]["header"]["values"] == ["metric", "gpt-0", "nextlat-0"]
    assert traces[0]["cells"]["values"][1][0] == "0.95 [{:.2f}, {:.2f}]".format(*wilson(95, 100))
    page = I.worldmodel_table_html(wm + rank)  # the report's: the same rows, as HTML
    assert page.count("<tr>") == 1 + 6 and "effective rank (block 1) ↓" in page


def test_map_page_shows_the_true_map(tmp_path):
    m = taxi_map()
    recs, und, missed, far, nodes, coords = mapping_records(m)
    traces, layout = write_and_read(I.map_figure(m, recs), tmp_path, "map")
    true = named(traces, "true map")
    assert len(true) == 1 and true[0]["xaxis"] == "x"  # its own first panel
    t = true[0]
    assert np.isnan(decode(t["x"])).sum() == len(und) and t["line"]["width"] >= 1.5 and t.get("opacity", 1) == 1
    assert t["line"]["color"] == S.MAP_COLORS["true"]
    seg = np.stack([decode(t["x"]), decode(t["y"])], axis=1).reshape(-1, 3, 2)[:, :2]
    want = {tuple(sorted(map(tuple, np.round(m.coords[[a, b]], 9).tolist()))) for a, b in und}
    assert {tuple(sorted(map(tuple, np.round(s, 9).tolist()))) for s in seg} == want  # every true street, once
    under = named(traces, "true map (under)")
    assert len(under) == 2 and all(np.isnan(decode(u["x"])).sum() == len(und) for u in under)
    assert under[0]["line"]["width"] < t["line"]["width"]
    rec = named(traces, "recovered streets")[0]
    assert np.isnan(decode(rec["x"])).sum() == len(und) - 2 and rec["line"]["color"] == S.MAP_COLORS["recovered"]
    assert np.isnan(decode(named(traces, "missing streets")[0]["x"])).sum() == 2
    inv = named(traces, "invented edges")[0]
    assert inv["opacity"] < 1 and inv["line"]["width"] < rec["line"]["width"]
    pts = np.stack([decode(inv["x"]), decode(inv["y"])], axis=1)
    arcs = pts.reshape(3, -1, 2)[:, :-1]  # two arcs and the self-loop, NaN-separated
    loop = arcs[2]
    np.testing.assert_allclose(loop[[0, -1]], m.coords[[3, 3]], atol=1e-9)  # leaves and returns to node 3
    assert np.linalg.norm(loop - m.coords[3], axis=1).max() > 0.05  # a visible loop, not a point
    np.testing.assert_allclose(arcs[0][[0, -1]], m.coords[[0, far]], atol=1e-9)
    np.testing.assert_allclose(arcs[1][[0, -1]], m.coords[[far, 0]], atol=1e-9)
    a, b = m.coords[0], m.coords[far]
    d = b - a
    off = np.abs(d[0] * (arcs[0][:, 1] - a[1]) - d[1] * (arcs[0][:, 0] - a[0])) / np.linalg.norm(d)
    assert off.max() > 0.1 * np.linalg.norm(d)  # curved, not the straight segment
    assert traces.index(inv) > traces.index(under[0])  # drawn above the map
    emb = named(traces, "embedded map")[0]
    n_inner = sum(1 for u, v in und if u in nodes and v in nodes)
    assert np.isnan(decode(emb["x"])).sum() == n_inner
    ints = named(traces, "intersections")
    assert len(ints) == 3
    np.testing.assert_allclose(decode(ints[2]["x"]), np.array(coords)[:, 0])
    titles = [a["text"] for a in layout["annotations"]]
    assert titles[0].startswith("true map (16 intersections, 25 streets)")
    # the counts are the record's (what summary.json says), self-loop included
    assert "2 invented" in titles[1].replace("<br>", " ") and "2 missed" in titles[1].replace("<br>", " ")
    assert "disparity 0.125" in titles[2].replace("<br>", " ")


def test_write_report_inlines_plotly_once(tmp_path):
    path = I.write_report([("probes", I.probe_r2_figure(probe_records())), ("note", "<p>hello</p>"),
                           ("table", I.worldmodel_table_figure(worldmodel_records()))], tmp_path / "report.html")
    text = path.read_text()
    assert text.count("Plotly.newPlot(") == 2 and "<p>hello</p>" in text
    assert not re.search(r"<script[^>]*\bsrc\s*=", text)
    assert len(re.findall(r"plotly\.js v\d", text)) == 1  # the library is inlined exactly once


# --------------------------------------------------------------------------------------
# paper figures
# --------------------------------------------------------------------------------------
def _lines(fig, label):
    from matplotlib.colors import to_hex

    hits = [ln for ax in fig.axes for ln in ax.get_lines() if ln.get_label() == label]
    assert hits, f"no line labelled {label!r}"
    return hits, to_hex(hits[0].get_color()).upper()


def test_paper_rank_probe_belief(tmp_path):
    recs = rank_records()
    fig = P.rank_plot(recs)
    assert len(fig.axes) == 2 and fig.get_size_inches()[0] == pytest.approx(S.DOUBLE_COLUMN)
    assert len(fig.axes[0].get_lines()) == 2 * len(LAYERS) and len(fig.axes[1].get_lines()) == 2
    (line,), color = _lines(fig, "gpt-0 (GPT)")
    assert color == GPT
    np.testing.assert_allclose(line.get_ydata(), [er(0, 400, li) for li in range(4)])
    assert _lines(fig, "nextlat-0 (NextLat)")[1] == NEXTLAT
    legend = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    assert legend == ["embeddings", "block 0", "block 1", "final LayerNorm"]  # the spectra's layers, named
    check_paper_files(fig, tmp_path, "rank")
    fig = P.rank_training_plot(recs)
    (line,), _ = _lines(fig, "gpt-0")
    np.testing.assert_allclose(line.get_xdata(), [100, 200, 400])
    np.testing.assert_allclose(fig.axes[1].get_lines()[0].get_xdata(), [1.5 - s / 1000 for s in (100, 200, 400)])

    fig = P.probe_r2_plot(probe_records())
    assert len(fig.axes) == 1 and fig.get_size_inches()[0] == pytest.approx(S.SINGLE_COLUMN)
    assert len(fig.axes[0].get_lines()) == 4  # two models, each with its control
    (line,), color = _lines(fig, "gpt-0 (GPT)")
    np.testing.assert_allclose(line.get_ydata(), [0.5, 0.6, 0.7])
    assert _lines(fig, "gpt-0 shuffled control")[0][0].get_linestyle() == ":"

    fig = P.belief_plot(probe_records())
    assert len([a for a in fig.axes if a.get_visible()]) == 3
    off = fig.axes[2].collections[0].get_offsets()
    T, Pd = beliefs(200, 3, 1)
    np.testing.assert_allclose(off, G.simplex_project(Pd), atol=1e-12)
    check_paper_files(fig, tmp_path, "beliefs")
    m = taxi_map()
    trecs = taxi_probe_records(m)
    fig = P.belief_plot(trecs, true_map=m)
    pts = fig.axes[1].collections[-1].get_offsets()
    np.testing.assert_allclose(pts, trecs[1]["metrics"]["points"]["xy_pred"])
    assert len(fig.axes[0].collections[0].get_segments()) == 25  # the streets under the points


def test_paper_transition_training_position_worldmodel_map(tmp_path):
    fig = P.transition_plot(transition_records())
    assert len(fig.axes[0].get_lines()) == 4
    (line,), color = _lines(fig, "gpt-0: post-hoc MLP")
    assert color == GPT and line.get_linestyle() == "-"
    assert _lines(fig, "nextlat-0: own p_ψ")[0][0].get_linestyle() == "--"
    assert "gpt-0 (within-belief 0.3, within-state 0.35)" in [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    check_paper_files(fig, tmp_path, "transition")
    runs = {"gpt": [json.loads(x) for x in metrics_lines("gpt", 2.0)], "nextlat": [json.loads(x) for x in metrics_lines("nextlat", 1.0)]}
    fig = P.training_curves_plot(runs)
    assert _lines(fig, "nextlat")[1] == NEXTLAT
    fig = P.position_loss_plot(position_records())
    assert len(fig.axes) == 3
    pos = np.arange(1, 9)
    np.testing.assert_allclose(fig.axes[1].get_lines()[0].get_ydata(), 0.1 / pos, atol=1e-12)
    assert [p.get_height() for p in fig.axes[2].patches] == [10] * 8  # targets behind each position

    wm = worldmodel_records()
    fig = P.table1_plot(wm + [r for r in rank_records() if r["step"] == 400])
    rates, rank, gap = fig.axes
    assert [t.get_text() for t in rates.get_yticklabels()] == [
        "next-token validity ↑", "valid trajectories (legal,\nends at the destination) ↑", "sequence compression ↑"]
    assert rates.get_xlim() == pytest.approx((-0.02, 1.02))  # every rate on one shared axis
    bars = [ln for ln in rates.get_lines() if len(ln.get_xdata()) == 2]
    np.testing.assert_allclose(bars[0].get_xdata(), wilson(95, 100))
    assert rank.get_title().replace("\n", " ") == "effective rank (block 1) ↓" and gap.get_title().endswith("↓")
    np.testing.assert_allclose(rank.get_lines()[1].get_xdata(), [er(0, 400, 2)])
    assert "95% intervals" in fig.get_supxlabel().replace("\n", " ")
    check_paper_files(fig, tmp_path, "table1")
    with pytest.raises(AnalysisError, match="beyond the Table-1"):
        P.worldmodel_plot(wm)  # no metric left for the appendix
    more = [make_record(r["name"] and ident(r["name"], r["objective"]), "worldmodel",
                        {**r["metrics"], "trajectory_legal": rate(90, 100), "detour_random@0.01": rate(50, 100)},
                        r["params"]) for r in wm]
    fig = P.worldmodel_plot(more)
    assert [t.get_text() for t in fig.axes[0].get_yticklabels()] == [
        "legal trajectories (every turn legal) ↑", "detour robustness (random detours, p = 0.01) ↑"]

    m = taxi_map()
    recs, und, *_ = mapping_records(m)
    fig = P.map_plot(m, recs)
    visible = [a for a in fig.axes if a.get_visible()]
    assert len(visible) == 3
    true = visible[0].collections[0]
    assert len(true.get_segments()) == len(und) and true.get_label() == "true map"
    from matplotlib.colors import to_hex

    assert to_hex(true.get_colors()[0]).upper() == S.MAP_COLORS["true"].upper()
    labels = [c.get_label() for c in visible[1].collections[:-1]]
    assert labels == ["true map (under)", "recovered", "missing", "invented"]
    assert visible[1].collections[3].get_alpha() == S.INVENTED_ALPHA
    check_paper_files(fig, tmp_path, "map")


def test_paper_plot_into_given_axes_and_style(tmp_path):
    import matplotlib as mpl

    fig, axes = P.new_figure("single", 1, 3)
    assert P.position_loss_plot(position_records(), ax=axes) is fig
    with pytest.raises(ValueError, match="needs 3 axes"):
        P.position_loss_plot(position_records(), ax=axes[0])
    before = mpl.rcParams["font.size"]
    with P.paper_style():
        assert mpl.rcParams["font.size"] == S.RCPARAMS["font.size"] and mpl.rcParams["pdf.fonttype"] == 42
    assert mpl.rcParams["font.size"] == before
    out = P.save_figure(fig, tmp_path / "x.svg", formats=("svg",))
    assert [p.name for p in out] == ["x.svg"] and "<svg" in out[0].read_text()


def test_line_styles_stay_distinct_beyond_five_settings():
    from nextlat_probe.plots.style import mpl_dash, mpl_marker, plotly_dash, plotly_marker

    for dash, marker in ((plotly_dash, plotly_marker), (mpl_dash, mpl_marker)):
        pairs = [(str(dash({"variant": k})), marker({"variant": k})) for k in range(25)]
        assert len(set(pairs)) == 25
        assert pairs[:5] == [(str(dash({"variant": k})), marker({"variant": k})) for k in range(5)]
