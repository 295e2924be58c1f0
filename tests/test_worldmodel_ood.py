"""Out-of-distribution taxi evaluation: other trips on the same map, beside the usual numbers."""
import numpy as np
import pytest

from nextlat_probe.analysis import worldmodel as wm
from nextlat_probe.worlds import make_world


@pytest.fixture(scope="module")
def world():
    return make_world("taxi", map_size=4, max_len=12, min_len=2)


def test_variant_keeps_the_map_and_tokens(world):
    short = world.variant(walk="shortest")
    assert short.token_names == world.token_names and short.walk == "shortest"
    assert short.max_len == world.max_len and short.min_len is None
    back = short.variant(walk="random")
    assert (back.min_len, back.max_len) == (min(4, short.max_len), short.max_len)
    with pytest.raises(wm.WorldError, match="cannot vary"):
        world.variant(map_size=5)


def test_longer_trips_are_longer_than_training_and_fit_the_context(world):
    longer = wm.ood_world(world, "longer", n_ctx=24)
    assert (longer.min_len, longer.max_len) == (13, 21) and longer.default_length <= 24
    s = longer.sample(200, seed=0)
    assert s.extras["lengths"].min() >= 13 > world.max_len
    with pytest.raises(wm.AnalysisError, match="context"):
        wm.ood_world(world, "longer", n_ctx=world.default_length)
    with pytest.raises(wm.AnalysisError, match="same trips"):
        wm.ood_world(world, "walk=random")
    with pytest.raises(wm.AnalysisError, match="key=value"):
        wm.ood_world(world, "sideways")
    with pytest.raises(wm.AnalysisError, match="random-walk"):
        wm.ood_world(world.variant(walk="shortest"), "longer", n_ctx=40)


def test_run_worldmodel_adds_ood_records_that_equal_a_direct_evaluation(tiny_taxi_ckpts):
    from nextlat_probe.compare import run_worldmodel
    from nextlat_probe.sources import load_model

    ck = tiny_taxi_ckpts["gpt"]
    kw = dict(n_pairs=12, n_continuations=2, seed=4)
    recs = run_worldmodel([ck], ood=["walk=shortest"], **kw)
    plain = run_worldmodel([ck], **kw)
    assert [r["variant"] for r in recs] == [None, "ood walk=shortest"]
    assert recs[0]["metrics"] == plain[0]["metrics"]
    ood = recs[1]
    assert ood["params"]["eval_world"]["walk"] == "shortest" and ood["params"]["train_world"]["walk"] == "random"
    m = load_model(ck)
    direct = wm.evaluate_world_model(wm.model_predictor(m.model), m.world.variant(walk="shortest"), n_pairs=12,
                                     n_continuations=2, seed=4)
    assert ood["metrics"]["trajectory_valid"]["count"] == direct.trajectory_valid.count
    assert ood["metrics"]["compression"]["count"] == direct.compression.count
    assert ood["metrics"]["next_token"]["n"] == direct.next_token.n
    assert np.isclose(ood["metrics"]["distinction_recall"], direct.distinction_recall.value, equal_nan=True)


def test_worldmodel_cli_ood_errors_are_one_line(tiny_taxi_ckpts, capsys):
    from nextlat_probe.cli import run_main
    from nextlat_probe.worldmodel import main

    with pytest.raises(SystemExit) as exc:
        run_main(main, [str(tiny_taxi_ckpts["gpt"]), "--ood", "longer"])
    err = capsys.readouterr().err.strip()
    assert exc.value.code == 2 and len(err.splitlines()) == 1 and "--n-ctx" in err
