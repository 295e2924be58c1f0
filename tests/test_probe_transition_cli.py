"""`python -m nextlat_probe.probe` / `.transition` end to end, against independent fits."""
import json

import numpy as np
import pytest
from helpers import run_cli

from nextlat_probe.activations import analysis_mask, collect
from nextlat_probe.checkpoint import load_checkpoint
from nextlat_probe.compare import Inputs, run_probe, run_transition
from nextlat_probe.compare.transition import latent_states


def test_probe_matches_sklearn_on_same_split(tiny_mess3_ckpts):
    from sklearn.linear_model import LinearRegression
    from sklearn.metrics import r2_score

    ck = load_checkpoint(tiny_mess3_ckpts["nextlat"])
    recs = run_probe([ck], layers="last", n_seqs=60, n_test=20, alpha=0.0, classifier=False, keep_points=50)
    (rec,) = [r["metrics"] for r in recs if r["layer"] == "L1"]
    # independent: same sequences, same split, sklearn least squares
    sample = Inputs([ck], 60).sample(0)
    H = collect(ck.model, sample.tokens, ["blocks.1.hook_resid_post"])["blocks.1.hook_resid_post"].astype(np.float64)
    B = ck.world.beliefs(sample.tokens)
    m = analysis_mask(ck.world, sample.tokens)
    tr, te = slice(0, 40), slice(40, 60)
    pred = LinearRegression().fit(H[tr][m[tr]], B[tr][m[tr]]).predict(H[te][m[te]])
    truth = B[te][m[te]]
    assert rec["n_train"] == m[tr].sum() and rec["n_test"] == m[te].sum()
    assert rec["mse"] == pytest.approx(float(((pred - truth) ** 2).mean()), rel=1e-4)
    assert rec["r2"] == pytest.approx(r2_score(truth, pred, multioutput="variance_weighted"), abs=1e-4)
    assert rec["control_r2"] < 0.2 < rec["r2"]
    assert np.asarray(rec["points"]["true"]).shape == (50, 3)  # plot data: 50 held-out beliefs
    np.testing.assert_allclose(np.asarray(rec["points"]["pred"]).sum(1), 1.0, atol=1e-6)  # affine probe keeps sums


def test_probe_cli_json_plot_and_errors(tiny_mess3_ckpts, tmp_path):
    page = tmp_path / "probe.html"
    r = run_cli("nextlat_probe.probe", str(tiny_mess3_ckpts["gpt"]), str(tiny_mess3_ckpts["nextlat"]), "--n-train", "24", "--n-test", "12", "--json", "--plot", str(page))
    assert r.returncode == 0, r.stderr
    recs = json.loads(r.stdout)
    layers = {x["layer"] for x in recs}
    assert layers == {"embed", "L0", "L1", "concat"}
    assert {x["objective"] for x in recs} == {"gpt", "nextlat"}
    assert all(np.isfinite(x["metrics"]["r2"]) and x["metrics"]["embedding_baseline_r2"] is not None for x in recs)
    assert all(x["params"]["n_seqs"] == 36 and x["params"]["n_test"] == 12 for x in recs)
    html = page.read_text()
    assert "Probed beliefs" in html and '<script src="http' not in html
    for bad in (["--alpha", "x"], ["--n-seqs", "10", "--n-test", "40"], ["--layers", "9"], ["--seq-len", "0"], ["--device", "tpu"],
                ["--plot", str(tmp_path)]):
        r = run_cli("nextlat_probe.probe", str(tiny_mess3_ckpts["gpt"]), *bad)
        assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1, (bad, r.stderr)


def test_transition_own_dynamics_matches_hand_rollout(tiny_mess3_ckpts):
    import torch

    ck = load_checkpoint(tiny_mess3_ckpts["nextlat"])
    out = run_transition([ck], horizon=2, n_seqs=30, n_test=10, fit_steps=50)
    (own,) = [r["metrics"] for r in out if r["variant"] == "own p_psi"]
    sample = Inputs([ck], 30).sample(0)
    hook = "blocks.1.hook_resid_post"
    H = latent_states(collect(ck.model, sample.tokens, [hook])[hook])
    E = ck.model.W_E.detach().numpy()[sample.tokens]
    Ht, Et = torch.as_tensor(H[20:]), torch.as_tensor(E[20:])
    ref = H[20:].reshape(-1, H.shape[-1]).astype(np.float64).mean(0)
    with torch.no_grad():
        h1 = ck.dynamics(Ht[:, :-1], Et[:, 1:])
        h2 = ck.dynamics(h1[:, :-1], Et[:, 2:])
    for i, pred in ((1, h1), (2, h2)):
        tgt = H[20:, i:].astype(np.float64)
        err = ((pred.numpy() - tgt) ** 2).sum() / ((tgt - ref) ** 2).sum()
        assert own["errors"][i - 1] == pytest.approx(err, rel=1e-4)
    assert {r["variant"] for r in out} == {"own p_psi", "post-hoc mlp", "post-hoc linear"}
    assert 0 <= own["belief_ratio"] <= 1.5


def test_transition_cli(tiny_mess3_ckpts, tmp_path):
    page = tmp_path / "t.html"
    r = run_cli("nextlat_probe.transition", str(tiny_mess3_ckpts["gpt"]), "--horizon", "3", "--n-train", "16", "--n-test", "8", "--fit-steps", "30", "--json", "--plot", str(page))
    assert r.returncode == 0, r.stderr
    recs = json.loads(r.stdout)
    assert {x["variant"] for x in recs} == {"post-hoc mlp", "post-hoc linear"}  # GPT has no p_psi
    assert all(len(x["metrics"]["errors"]) == 3 and x["params"]["horizon"] == 3 for x in recs)
    assert page.stat().st_size > 1000
    r = run_cli("nextlat_probe.transition", str(tiny_mess3_ckpts["gpt"]), "--horizon", "40")
    assert r.returncode == 2 and "horizon" in r.stderr
