"""Plotting layer: data reaches the pages and files, geometry is right, colours agree."""
import base64
import json
import math
import re

import numpy as np
import pytest

from nextlat_probe.analysis.transition import TransitionResult
from nextlat_probe.plots import interactive as I
from nextlat_probe.plots import paper as P
from nextlat_probe.plots import style as S
from nextlat_probe.worlds.streetmap import StreetMap, synthetic_manhattan

GPT, NEXTLAT = S.MODEL_COLORS["gpt"], S.MODEL_COLORS["nextlat"]


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
    return np.array(v, dtype=float)


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
    path = I.write_html(fig, tmp_path / f"{name}.html", title=name)
    return page_figure(path)


def by_name(traces, name):
    hits = [t for t in traces if t.get("name") == name]
    assert hits, f"no trace named {name!r}: {[t.get('name') for t in traces]}"
    return hits[0]


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
# synthetic results
# --------------------------------------------------------------------------------------
LAYERS = ["embed", "L0", "L1", "final"]


def rank_records():
    recs = []
    for k, obj in enumerate(("gpt", "nextlat")):
        for step in (100, 200, 400):
            for li, lay in enumerate(LAYERS):
                s = np.geomspace(5.0, 0.01 * (k + 1), 16)
                recs.append(dict(checkpoint=f"runs/{obj}/ckpt_step{step}.pt", objective=obj, step=step, layer=lay,
                                 effective_rank=3.0 + li + step / 100 + 2 * k, participation_ratio=2.0, n90=3, n99=8,
                                 spectrum=s.tolist(), d_model=16, val_loss=1.5 - step / 1000 + 0.01 * k, val_gap=0.2))
    return recs


def probe_records():
    return [dict(checkpoint=c, objective=o, layer=lay, r2=0.5 + 0.1 * i + 0.05 * k, shuffled_r2=0.01 * i, mse=0.01)
            for k, (c, o) in enumerate((("gpt-0", "gpt"), ("nextlat-0", "nextlat"))) for i, lay in enumerate(LAYERS)]


def transition_results():
    gpt = TransitionResult(horizons=[1, 2, 3], own=None, posthoc_mlp=np.array([0.1, 0.2, 0.4]),
                           posthoc_linear=np.array([0.2, np.nan, 0.5]), belief_ratio=0.3, n_train_seqs=8, n_test_seqs=2)
    nl = dict(horizons=[1, 2, 3], own=[0.05, 0.1, 0.2], posthoc_mlp=[0.04, 0.08, 0.1], posthoc_linear=[0.1, 0.2, 0.3],
              belief_ratio=0.1, n_train_seqs=8, n_test_seqs=2)
    return {"gpt": gpt, "nextlat": nl}


FLOOR = 0.8386


def metrics_lines(obj, scale):
    lines = [json.dumps({"event": "start", "config": {"objective": obj}})]
    for step in (0, 20, 40):
        if step:
            lines.append(json.dumps({"loss": scale / step, "ce": 1 + scale / step, "next_h": scale / step if obj == "nextlat" else 0.0,
                                     "kl": 0.1 / step if obj == "nextlat" else 0.0, "step": step, "lr": 1e-3}))
        lines.append(json.dumps({"step": step, "val_loss": 1 + scale / (step + 1), "val_floor": FLOOR, "val_gap": 0.1}))
    return lines


def position_records():
    pos = np.arange(8)
    floor = 1.0 + 0.5 * np.exp(-pos)
    return [dict(name=n, objective=n, positions=pos.tolist(), loss=(floor + k * 0.1 / (pos + 1)).tolist(), floor=floor.tolist())
            for k, n in ((1, "gpt"), (2, "nextlat"))]


WM_ROWS = [
    {"model": "GPT", "objective": "gpt", "next-token": {"value": 1.0, "low": 0.99, "high": 1.0}, "valid": (0.97, 0.95, 0.98), "compression": 0.65},
    {"model": "NextLat", "objective": "nextlat", "next-token": 1.0, "valid": 0.987, "valid_ci": [0.971, 0.994], "compression": 0.71},
]


def path_map(n=7):
    return StreetMap(n, [(i, "E", i + 1) for i in range(n - 1)] + [(i + 1, "W", i) for i in range(n - 1)])


def simplex_panels(n=300, S_=3, seed=0):
    rng = np.random.default_rng(seed)
    B = rng.dirichlet(np.ones(S_), n)
    pred = B + 0.03 * rng.standard_normal(B.shape)
    return [{"title": "true", "true": B, "pred": None}, {"title": "GPT", "true": B, "pred": pred}], B, pred


# --------------------------------------------------------------------------------------
# geometry
# --------------------------------------------------------------------------------------
def test_simplex_projection_corners_and_centre():
    xy = S.simplex_project(np.array([[1, 0, 0], [0, 1, 0], [0, 0, 1], [1 / 3, 1 / 3, 1 / 3], [0.5, 0.5, 0.0]]))
    h = math.sqrt(3) / 2
    np.testing.assert_allclose(xy, [[0, 0], [1, 0], [0.5, h], [0.5, h / 3], [0.5, 0.0]], atol=1e-12)
    # colour of a 3-state belief is the belief itself (RGB)
    np.testing.assert_allclose(S.belief_colors([[0.2, 0.3, 0.5]]), [[0.2, 0.3, 0.5]])


def test_pca_projection_matches_sklearn():
    from sklearn.decomposition import PCA

    B = np.random.default_rng(1).dirichlet(np.ones(5), 200)
    proj, is_simplex = S.belief_projection([B])
    assert not is_simplex
    ours, ref = proj(B), PCA(2).fit(B).transform(B)
    ref *= np.sign((ours * ref).sum(axis=0))  # PCA signs are arbitrary
    np.testing.assert_allclose(ours, ref, atol=1e-10)


def test_bezier_curve_bends_off_the_segment():
    c = S.bezier_curves([[0.0, 0.0]], [[2.0, 0.0]], curvature=0.25, n=5)[0]
    np.testing.assert_allclose(c[0], [0, 0])
    np.testing.assert_allclose(c[-1], [2, 0])
    np.testing.assert_allclose(c[2], [1.0, 0.25])  # midpoint = mid + curvature/2 x length, to the left
    back = S.bezier_curves([[2.0, 0.0]], [[0.0, 0.0]], curvature=0.25, n=5)[0]
    np.testing.assert_allclose(back[2], [1.0, -0.25])  # the reverse edge bends the other way


def test_map_layout_without_coordinates_recovers_a_path():
    m = path_map(7)
    for kw in ({}, {"mds_max_nodes": 2, "n_pivots": 3}):  # classical MDS and pivot MDS
        L = S.map_layout(m, **kw)
        D = np.linalg.norm(L[:, None] - L[None], axis=-1)
        np.testing.assert_allclose(D, np.abs(np.arange(7)[:, None] - np.arange(7)[None]), atol=1e-8)
        np.testing.assert_array_equal(L, S.map_layout(m, **kw))  # deterministic


def test_split_invented_moves_non_edges():
    m = path_map(4)
    rec, inv = S.split_invented(m, [(0, 1), (1, 0), (0, 3), (2, 0)], invented=[(3, 1)])
    assert sorted(map(tuple, rec.tolist())) == [(0, 1), (1, 0)]
    assert sorted(map(tuple, inv.tolist())) == [(0, 3), (2, 0), (3, 1)]


def test_read_metrics_partial_line_and_resume(tmp_path):
    lines = [
        json.dumps({"event": "start", "config": {"objective": "gpt"}}),
        json.dumps({"step": 0, "val_loss": 2.0, "val_floor": 1.0}),
        json.dumps({"step": 10, "ce": 1.9, "loss": 1.9}),
        json.dumps({"step": 20, "ce": 1.8, "loss": 1.8}),
        json.dumps({"step": 20, "val_loss": 1.7, "val_floor": 1.0}),
        json.dumps({"step": 30, "ce": 1.75, "loss": 1.75}),  # lost by a crash: resumed from step 20
        json.dumps({"step": 30, "ce": 1.6, "loss": 1.6}),
        json.dumps({"step": 40, "val_loss": 1.5, "val_floor": 1.0}),
        '{"step": 50, "ce": 1.',
    ]
    path = tmp_path / "metrics.jsonl"
    path.write_text("\n".join(lines))
    recs = S.read_metrics(path)
    train = [(r["step"], r["ce"]) for r in recs if S.metric_kind(r) == "train"]
    evals = [(r["step"], r["val_loss"]) for r in recs if S.metric_kind(r) == "eval"]
    assert train == [(10, 1.9), (20, 1.8), (30, 1.6)]
    assert evals == [(0, 2.0), (20, 1.7), (40, 1.5)]
    assert S.run_objective(recs) == "gpt"


def test_model_colours_are_fixed():
    assert (GPT, NEXTLAT) == ("#0072B2", "#D55E00")  # Okabe-Ito blue and vermillion, in every figure
    st = S.checkpoint_styles(["a", "b", "c"], {"a": "nextlat", "b": "gpt", "c": "gpt"})
    assert (st["a"]["color"], st["b"]["color"], st["c"]["color"]) == (NEXTLAT, GPT, GPT)
    assert (st["b"]["variant"], st["c"]["variant"]) == (0, 1)
    assert S.checkpoint_styles(["runs/nextlat/ckpt.pt"])["runs/nextlat/ckpt.pt"]["color"] == NEXTLAT


# --------------------------------------------------------------------------------------
# interactive pages
# --------------------------------------------------------------------------------------
def test_rank_pages(tmp_path):
    recs = rank_records()
    traces, _ = write_and_read(I.rank_figure(recs), tmp_path, "rank")
    name = "runs/gpt/ckpt_step400.pt"
    t = by_name(traces, f"{name} (gpt)")
    want = [r["effective_rank"] for r in recs if r["checkpoint"] == name]
    np.testing.assert_allclose(decode(t["y"]), want)
    assert t["x"] == LAYERS and t["line"]["color"] == GPT
    assert by_name(traces, "runs/nextlat/ckpt_step100.pt (nextlat)")["line"]["color"] == NEXTLAT
    spec = by_name(traces, "runs/nextlat/ckpt_step100.pt final")
    want = [r for r in recs if r["checkpoint"] == "runs/nextlat/ckpt_step100.pt" and r["layer"] == "final"][0]
    np.testing.assert_allclose(decode(spec["y"]), want["spectrum"])

    traces, _ = write_and_read(I.rank_training_figure(recs), tmp_path, "rank_steps")
    gpt_final = [r for r in recs if r["objective"] == "gpt" and r["layer"] == "final"]
    t = [t for t in traces if t["name"] == "gpt"]
    np.testing.assert_allclose(decode(t[0]["x"]), [r["step"] for r in gpt_final])
    np.testing.assert_allclose(decode(t[0]["y"]), [r["effective_rank"] for r in gpt_final])
    np.testing.assert_allclose(decode(t[1]["x"]), [r["val_loss"] for r in gpt_final])
    assert t[0]["line"]["color"] == GPT


@pytest.mark.parametrize("n_states", [3, 4])
def test_belief_simplex_page(tmp_path, n_states):
    panels, B, pred = simplex_panels(S_=n_states)
    traces, _ = write_and_read(I.belief_simplex_figure(panels), tmp_path, "simplex")
    pts = by_name(traces, "GPT")
    proj, _ = S.belief_projection([B])
    np.testing.assert_allclose(decode(pts["x"]), proj(pred)[:, 0], atol=1e-12)
    np.testing.assert_allclose(decode(pts["y"]), proj(pred)[:, 1], atol=1e-12)
    rgb = np.array([[int(v) for v in re.findall(r"\d+", c)] for c in pts["marker"]["color"]]) / 255
    np.testing.assert_allclose(rgb, S.belief_colors(B), atol=0.5 / 255 + 1e-12)
    if n_states == 3:
        np.testing.assert_allclose(decode(by_name(traces, "true")["x"]), S.simplex_project(B)[:, 0])


def test_probe_and_transition_pages(tmp_path):
    recs = probe_records()
    traces, _ = write_and_read(I.probe_r2_figure(recs), tmp_path, "probe")
    t = by_name(traces, "gpt-0 (gpt)")
    np.testing.assert_allclose(decode(t["y"]), [r["r2"] for r in recs[:4]])
    assert t["line"]["color"] == GPT
    np.testing.assert_allclose(decode(by_name(traces, "nextlat-0 shuffled control")["y"]), [r["shuffled_r2"] for r in recs[4:]])

    traces, _ = write_and_read(I.transition_figure(transition_results()), tmp_path, "transition")
    mlp = by_name(traces, "gpt: post-hoc MLP")
    np.testing.assert_allclose(decode(mlp["y"]), [0.1, 0.2, 0.4])
    assert mlp["line"]["color"] == GPT and mlp["line"]["dash"] == "solid"
    lin = decode(by_name(traces, "gpt: post-hoc linear")["y"])
    assert lin[0] == 0.2 and np.isnan(lin[1])
    own = by_name(traces, "nextlat: own p_psi")
    assert own["line"]["dash"] == "dash" and own["line"]["color"] == NEXTLAT
    np.testing.assert_allclose(decode(own["y"]), [0.05, 0.1, 0.2])
    assert not any(t.get("name") == "gpt: own p_psi" for t in traces)
    bars = [t for t in traces if t["type"] == "bar"][0]
    np.testing.assert_allclose(decode(bars["y"]), [0.3, 0.1])


def test_training_and_position_pages(tmp_path):
    (tmp_path / "gpt").mkdir()
    (tmp_path / "gpt" / "metrics.jsonl").write_text("\n".join(metrics_lines("gpt", 2.0)) + "\n{\"step\": 6")
    runs = {"run-a": tmp_path / "gpt" / "metrics.jsonl", "run-b": [json.loads(x) for x in metrics_lines("nextlat", 1.0)]}
    traces, layout = write_and_read(I.training_curves_figure(runs), tmp_path, "train")
    val = [t for t in traces if t["name"] == "run-a" and t["xaxis"] == "x"][0]
    np.testing.assert_allclose(decode(val["x"]), [0, 20, 40])
    np.testing.assert_allclose(decode(val["y"]), [1 + 2.0 / (s + 1) for s in (0, 20, 40)])
    assert val["line"]["color"] == GPT  # objective read from the log's start event
    assert [t["name"] for t in traces if t["xaxis"] == "x3"] == ["run-b"]  # GPT's zero next_h left out
    floors = [s for s in layout["shapes"] if s.get("y0") == s.get("y1")]
    assert len(floors) == 1 and floors[0]["y0"] == pytest.approx(FLOOR)

    recs = position_records()
    traces, _ = write_and_read(I.position_loss_figure(recs), tmp_path, "positions")
    loss = [t for t in traces if t["name"] == "nextlat"]
    np.testing.assert_allclose(decode(loss[0]["y"]), recs[1]["loss"])
    np.testing.assert_allclose(decode(loss[1]["y"]), np.subtract(recs[1]["loss"], recs[1]["floor"]), atol=1e-12)
    np.testing.assert_allclose(decode(by_name(traces, "exact floor")["y"]), recs[0]["floor"])


def test_worldmodel_table_page(tmp_path):
    traces, _ = write_and_read(I.worldmodel_table_figure(WM_ROWS), tmp_path, "table")
    header, cells = traces[0]["header"]["values"], traces[0]["cells"]["values"]
    assert header == ["model", "next-token", "valid", "compression"]
    assert cells[0] == ["GPT", "NextLat"]
    assert cells[1] == ["1 [0.99, 1]", "1"]
    assert cells[2] == ["0.97 [0.95, 0.98]", "0.987 [0.971, 0.994]"]
    assert traces[0]["cells"]["font"]["color"][0] == [GPT, NEXTLAT]


def test_map_page(tmp_path):
    m = synthetic_manhattan(4, 4, seed=0)
    e = [(s, t) for s, _, t in m.edges()]
    far = int(np.argmax(np.linalg.norm(m.coords - m.coords[0], axis=1)))
    panels = [{"title": "behaviour", "edges": e[:10] + [(0, far)], "missing": e[10:12]},
              {"title": "embedding", "coords": m.coords * 2.0}]
    traces, _ = write_and_read(I.map_figure(m, panels), tmp_path, "map")
    true = [t for t in traces if t["name"] == "true map"]
    n_true = len(S.map_edges(m))
    assert len(true) == 2 and np.isnan(decode(true[0]["x"])).sum() == n_true
    rec = by_name(traces, "recovered edges")
    assert np.isnan(decode(rec["x"])).sum() == 10 and rec["line"]["color"] == S.MAP_COLORS["recovered"]
    inv = by_name(traces, "invented edges")
    pts = np.stack([decode(inv["x"]), decode(inv["y"])], axis=1)
    pts = pts[~np.isnan(pts[:, 0])]
    a, b = m.coords[0], m.coords[far]
    np.testing.assert_allclose(pts[[0, -1]], [a, b], atol=1e-9)
    d = b - a
    off = np.abs(d[0] * (pts[:, 1] - a[1]) - d[1] * (pts[:, 0] - a[0])) / np.linalg.norm(d)
    assert off.max() > 0.1 * np.linalg.norm(d)  # curved, not the straight segment
    nodes = [t for t in traces if t["name"] == "intersections"]
    np.testing.assert_allclose(decode(nodes[1]["x"]), m.coords[:, 0] * 2.0)


def test_write_report_inlines_plotly_once(tmp_path):
    path = I.write_report([("probes", I.probe_r2_figure(probe_records())), ("note", "<p>hello</p>"),
                           ("table", I.worldmodel_table_figure(WM_ROWS))], tmp_path / "report.html")
    text = path.read_text()
    assert text.count("Plotly.newPlot(") == 2 and "<p>hello</p>" in text
    assert not re.search(r"<script[^>]*\bsrc\s*=", text)
    assert len(re.findall(r"plotly\.js v\d", text)) == 1  # the library is inlined exactly once


# --------------------------------------------------------------------------------------
# paper figures
# --------------------------------------------------------------------------------------
def _line_color(fig, label):
    from matplotlib.colors import to_hex

    for ax in fig.axes:
        for line in ax.get_lines():
            if line.get_label() == label:
                return to_hex(line.get_color()).upper()
    raise AssertionError(f"no line labelled {label!r}")


def test_paper_figures_write_files(tmp_path):
    recs = rank_records()
    fig = P.rank_plot(recs)
    assert _line_color(fig, "runs/gpt/ckpt_step100.pt (gpt)") == GPT
    assert _line_color(fig, "runs/nextlat/ckpt_step100.pt (nextlat)") == NEXTLAT
    ys = [ln.get_ydata() for ln in fig.axes[1].get_lines() if ln.get_label() == "runs/gpt/ckpt_step400.pt (gpt)"][0]
    np.testing.assert_allclose(ys, [r["effective_rank"] for r in recs if r["checkpoint"] == "runs/gpt/ckpt_step400.pt"])
    assert fig.get_size_inches()[0] == pytest.approx(S.DOUBLE_COLUMN)
    check_paper_files(fig, tmp_path, "rank")
    check_paper_files(P.rank_training_plot(recs), tmp_path, "rank_steps")

    panels, _, _ = simplex_panels()
    check_paper_files(P.belief_simplex_plot(panels), tmp_path, "simplex")
    fig = P.probe_r2_plot(probe_records())
    assert _line_color(fig, "gpt-0 (gpt)") == GPT
    assert fig.get_size_inches()[0] == pytest.approx(S.SINGLE_COLUMN)
    check_paper_files(fig, tmp_path, "probe")


def test_paper_figures_write_files_2(tmp_path):
    fig = P.transition_plot(transition_results())
    assert _line_color(fig, "gpt: post-hoc MLP") == GPT
    check_paper_files(fig, tmp_path, "transition")
    runs = {"gpt": [json.loads(x) for x in metrics_lines("gpt", 2.0)], "nextlat": [json.loads(x) for x in metrics_lines("nextlat", 1.0)]}
    fig = P.training_curves_plot(runs)
    assert _line_color(fig, "nextlat") == NEXTLAT
    check_paper_files(fig, tmp_path, "train")
    check_paper_files(P.position_loss_plot(position_records()), tmp_path, "positions")
    check_paper_files(P.worldmodel_plot(WM_ROWS), tmp_path, "table")
    m = synthetic_manhattan(4, 4, seed=0)
    e = [(s, t) for s, _, t in m.edges()]
    check_paper_files(P.map_plot(m, [{"title": "rebuilt", "edges": e[:10] + [(0, 5)]}, {"title": "true map"}]), tmp_path, "map")


def test_paper_plot_into_given_axes_and_style(tmp_path):
    import matplotlib as mpl

    fig, axes = P.new_figure("single", 1, 2)
    assert P.position_loss_plot(position_records(), ax=axes) is fig
    with pytest.raises(ValueError, match="needs 2 axes"):
        P.position_loss_plot(position_records(), ax=axes[0])
    before = mpl.rcParams["font.size"]
    with P.paper_style():
        assert mpl.rcParams["font.size"] == S.RCPARAMS["font.size"] and mpl.rcParams["pdf.fonttype"] == 42
    assert mpl.rcParams["font.size"] == before
    out = P.save_figure(fig, tmp_path / "x.svg", formats=("svg",))
    assert [p.name for p in out] == ["x.svg"] and "<svg" in out[0].read_text()
