"""Every checkpoint-level runner on the same two tiny checkpoints: one record shape out, one
forward pass per model when inputs are shared, and tables / CSV / figures built from the
records as they come (no adapters)."""
import csv
import json

import numpy as np
import pytest

from nextlat_probe import compare
from nextlat_probe.records import RECORD_KEYS, check_record, to_jsonable


@pytest.fixture(scope="module")
def mess3_records(tiny_mess3_ckpts):
    models = compare.load_models([tiny_mess3_ckpts["gpt"], tiny_mess3_ckpts["nextlat"]])
    inputs = compare.Inputs(models, n_seqs=48)
    recs = {
        "rank": compare.run_rank(None, inputs=inputs, layers="all"),
        "probe": compare.run_probe(None, inputs=inputs, n_test=16, keep_points=40),
        "transition": compare.run_transition(None, inputs=inputs, n_test=16, horizon=3, fit_steps=20),
        "position_loss": compare.run_position_loss(None, inputs=inputs),
    }
    return models, inputs, recs


@pytest.fixture(scope="module")
def taxi_records(tiny_taxi_ckpts):
    models = compare.load_models([tiny_taxi_ckpts["gpt"], tiny_taxi_ckpts["nextlat"]])
    inputs = compare.Inputs(models, n_seqs=48)
    recs = {
        "worldmodel": compare.run_worldmodel(models, n_pairs=12, n_continuations=2),
        "mapping": compare.run_mapping(None, inputs=inputs, n_trips=40),
        "probe": compare.run_probe(None, inputs=inputs, n_test=16, layers="last", keep_points=30),
        "rank": compare.run_rank(None, inputs=inputs),
    }
    return models, inputs, recs


def _all(recs):
    return [r for rs in recs.values() for r in rs]


def test_every_runner_returns_the_one_record_shape(mess3_records, taxi_records):
    for models, _, recs in (mess3_records, taxi_records):
        for analysis, rs in recs.items():
            assert rs, analysis
            for r in rs:
                check_record(r)
                assert tuple(r) == RECORD_KEYS and r["analysis"] == analysis
                assert r["name"] in {m.name for m in models}
                # identity and training state are those stored with the weights
                m = next(m for m in models if m.name == r["name"])
                assert r["step"] == m.step and r["objective"] == m.objective and r["source"] == m.path
                assert r["val_loss"] == pytest.approx(m.metrics["val_loss"])
                assert r["gap_to_floor"] == pytest.approx(m.metrics["val_loss"] - m.metrics["val_floor"])
                assert r["seed"] == m.train_config["seed"]
                assert r["params"], (analysis, "every metric carries its parameters")
        json.dumps(to_jsonable(_all(recs)))  # plain data


def test_rates_have_wilson_intervals_from_scipy(taxi_records):
    from scipy.stats import binomtest

    for r in taxi_records[2]["worldmodel"]:
        for v in r["metrics"].values():
            if isinstance(v, dict) and v["n"]:
                ci = binomtest(v["count"], v["n"]).proportion_ci(method="wilson")
                assert v["value"] == pytest.approx(v["count"] / v["n"])
                assert v["low"] == pytest.approx(0.0 if v["count"] == 0 else ci.low)
                assert v["high"] == pytest.approx(1.0 if v["count"] == v["n"] else ci.high)


def test_shared_inputs_run_one_forward_pass_per_model(tiny_mess3_ckpts, monkeypatch):
    import nextlat_probe.activations as A

    calls = []
    real = A.collect

    def counting(model, tokens, hooks=None, **kw):
        calls.append(tuple(hooks))
        return real(model, tokens, hooks, **kw)

    monkeypatch.setattr(A, "collect", counting)
    models = compare.load_models([tiny_mess3_ckpts["gpt"], tiny_mess3_ckpts["nextlat"]])
    inputs = compare.Inputs(models, n_seqs=24)
    hooks = [A.layer_hook("embed"), A.layer_hook(0), A.layer_hook(1)]
    for i in range(2):
        inputs.hidden(i, hooks)
    assert len(calls) == 2
    compare.run_rank(None, inputs=inputs, layers="all")
    compare.run_probe(None, inputs=inputs, n_test=8)
    compare.run_transition(None, inputs=inputs, n_test=8, horizon=2, fit_steps=5)
    assert len(calls) == 2  # every analysis read the cached states
    # the same sequences for both models of one world
    assert np.array_equal(inputs.tokens(0), inputs.tokens(1))


def test_runner_results_do_not_depend_on_sharing(tiny_mess3_ckpts):
    paths = [tiny_mess3_ckpts["gpt"]]
    alone = compare.run_rank(paths, n_seqs=24, layers="all")
    inputs = compare.Inputs.build(paths, n_seqs=24)
    inputs.hidden(0, [r["layer"] == "embed" and "blocks.0.hook_resid_pre" or f"blocks.{r['layer'][1:]}.hook_resid_post"
                      for r in alone])
    shared = compare.run_rank(None, inputs=inputs, layers="all")
    for a, b in zip(alone, shared):
        assert a["metrics"]["effective_rank"] == pytest.approx(b["metrics"]["effective_rank"], rel=1e-9)


def test_tables_csv_and_figures_read_records_directly(mess3_records, taxi_records, tmp_path):
    from nextlat_probe.plots import interactive as I
    from nextlat_probe.plots import paper as P
    from nextlat_probe.tables import protocol_note, text_table, write_csv

    _, _, m3 = mess3_records
    models, _, tx = taxi_records
    rank = m3["rank"]
    text = text_table(rank, [("name", "checkpoint", ""), ("layer", "layer", ""), ("effective_rank", "eff. rank", ".3f")])
    for r in rank:
        assert f"{r['metrics']['effective_rank']:.3f}" in text
    assert "n_seqs=48" in protocol_note(rank)
    path = write_csv(tx["worldmodel"], tmp_path / "wm.csv")
    rows = list(csv.DictReader(open(path)))
    assert [row["name"] for row in rows] == [r["name"] for r in tx["worldmodel"]]
    nt = tx["worldmodel"][0]["metrics"]["next_token"]
    assert float(rows[0]["next_token"]) == pytest.approx(nt["value"])
    assert float(rows[0]["next_token_low"]) == pytest.approx(nt["low"])
    # every figure function takes the records as the runners return them
    I.rank_figure(rank)
    I.probe_r2_figure(m3["probe"])
    I.belief_figure(m3["probe"])
    I.transition_figure(m3["transition"])
    I.position_loss_figure(m3["position_loss"])
    I.worldmodel_table_figure(tx["worldmodel"] + tx["rank"])
    I.map_figure(models[0].world.map, tx["mapping"])
    I.belief_figure(tx["probe"], true_map=models[0].world.map)
    import matplotlib.pyplot as plt

    for fig in (P.rank_plot(rank), P.transition_plot(m3["transition"]), P.worldmodel_plot(tx["worldmodel"]),
                P.map_plot(models[0].world.map, tx["mapping"]), P.belief_plot(m3["probe"])):
        plt.close(fig)


def test_parse_layers_counts_from_the_end():
    from nextlat_probe.errors import UsageError

    assert compare.parse_layers("-1", 4) == ["blocks.3.hook_resid_post"]
    assert compare.parse_layers("embed,0,-2", 4) == ["blocks.0.hook_resid_pre", "blocks.0.hook_resid_post",
                                                     "blocks.2.hook_resid_post"]
    assert compare.parse_layers("ln_final", 2) == ["ln_final.hook_normalized"]
    assert compare.parse_layers("all", 2)[0] == "blocks.0.hook_resid_pre"
    for bad in ("4", "-5", "x", ""):
        with pytest.raises(UsageError):
            compare.parse_layers(bad, 4)


def test_mapping_records_name_the_edges(taxi_records):
    models, _, tx = taxi_records
    m = models[0].world.map
    beh = [r for r in tx["mapping"] if r["variant"] == "behaviour"]
    assert len(beh) == 2
    true = {(int(s), d, int(t)) for s, d, t in m.edges()}
    for r in beh:
        mm = r["metrics"]
        assert mm["n_recovered"] + mm["n_missed"] == m.n_edges
        assert all(tuple(e) in true for e in mm["missed_edges"])  # [src, direction, dst] of the map
        assert not any(tuple(e) in true for e in mm["invented_edges"])
        assert len(mm["invented_edges"]) == mm["n_invented"] and len(mm["missed_edges"]) == mm["n_missed"]
        assert mm["edge_recall"]["count"] == mm["n_recovered"] and mm["edge_recall"]["n"] == m.n_edges


def test_rank_protocol_nextlat2025_uses_its_own_settings(tiny_mess3_ckpts):
    """256 sequences at the longest length the model allows, last block, uncentred; the
    number equals a dense SVD of the same tokens' states, and the record names it."""
    from nextlat_probe.activations import collect

    ck = compare.load_models([tiny_mess3_ckpts["gpt"]])[0]
    (rec,) = compare.run_rank([ck], protocol="nextlat2025", layers="all", center=True, n_seqs=7)  # overridden
    n_ctx = ck.model_config.n_ctx
    assert rec["protocol"]["name"] == "nextlat2025" and rec["protocol"]["seq_len_requested"] == 256
    assert rec["params"]["n_seqs"] == 256 and rec["params"]["seq_len"] == rec["protocol"]["seq_len"] == n_ctx
    assert rec["layer"] == "L1" and rec["params"]["center"] is False
    tokens = compare.Inputs([ck], n_seqs=256, seq_len=n_ctx).tokens(0)
    H = collect(ck.model, tokens, ["blocks.1.hook_resid_post"])["blocks.1.hook_resid_post"].reshape(-1, 64)
    s = np.linalg.svd(H.astype(np.float64), compute_uv=False)
    s = s[s >= 1e-12]
    p = s / s.sum()
    assert rec["metrics"]["effective_rank"] == pytest.approx(float(np.exp(-(p * np.log(p)).sum())), rel=1e-6)
