"""Transition consistency on latents with a known (or no) transition rule."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch import nn

from nextlat_probe.analysis.stats import AnalysisError
from nextlat_probe.analysis.transition import (
    LinearDynamics,
    TransitionResult,
    belief_consistency,
    fit_posthoc_dynamics,
    grouped_consistency,
    relative_error,
    rollout_errors,
    transition_consistency,
)
from nextlat_probe.models.dynamics import LatentDynamics

D, DE, V = 6, 4, 5


class TanhMap(nn.Module):
    """The true rule h' = tanh(W h + U e) as a dynamics module."""

    def __init__(self, W: np.ndarray, U: np.ndarray):
        super().__init__()
        self.W = nn.Parameter(torch.as_tensor(W, dtype=torch.float32), requires_grad=False)
        self.U = nn.Parameter(torch.as_tensor(U, dtype=torch.float32), requires_grad=False)

    def forward(self, h, e):
        return torch.tanh(h @ self.W.T + e @ self.U.T)


class Identity(nn.Module):
    def __init__(self):
        super().__init__()
        self.dummy = nn.Parameter(torch.zeros(1))

    def forward(self, h, e):
        return h


def tanh_world(n=300, L=20, seed=0):
    """Latents that follow h_{t+1} = tanh(W h_t + U e_{t+1}) exactly (float32)."""
    rng = np.random.default_rng(seed)
    W = rng.normal(size=(D, D)) * 0.9 / np.sqrt(D)
    U = rng.normal(size=(D, DE)) * 1.5 / np.sqrt(DE)
    emb = rng.normal(size=(V, DE)).astype(np.float32)
    tokens = rng.integers(0, V, size=(n, L))
    E = emb[tokens]
    H = np.zeros((n, L, D), dtype=np.float32)
    h = np.tanh(E[:, 0] @ U.T)
    H[:, 0] = h
    for t in range(1, L):
        h = np.tanh(h @ W.T + E[:, t] @ U.T)
        H[:, t] = h
    return H.astype(np.float32), E, W, U


def test_relative_error_hand_value():
    pred = np.array([[1.0, 0.0], [0.0, 1.0]])
    target = np.array([[0.0, 0.0], [2.0, 2.0]])
    # mean target (1, 1): numerator 1 + 0 + 4 + 1 = 6, denominator 2 + 2 = 4
    assert relative_error(pred, target) == pytest.approx(1.5)
    # explicit mean (0, 0): denominator 0 + 8
    assert relative_error(pred, target, mean=[0.0, 0.0]) == pytest.approx(6 / 8)
    assert relative_error(target, target) == 0.0


def test_true_rule_gives_zero_rollout_error():
    H, E, W, U = tanh_world(n=20, L=12)
    err = rollout_errors(TanhMap(W, U), H, E, horizon=5)
    assert err.shape == (5,)
    np.testing.assert_allclose(err, 0.0, atol=1e-10)
    # a wrong rule (another W) is not consistent
    bad = rollout_errors(TanhMap(-W, U), H, E, horizon=2)
    assert np.all(bad > 0.1)


def test_identity_rollout_matches_numpy():
    rng = np.random.default_rng(1)
    n, L, d = 7, 9, 3
    H = rng.normal(size=(n, L, d)).astype(np.float32)
    E = rng.normal(size=(n, L, 2)).astype(np.float32)
    mask = np.ones((n, L), dtype=bool)
    mask[0, 6:] = False  # a padded sequence
    mask[3, 4:] = False
    horizon = 4
    err = rollout_errors(Identity(), H, E, horizon, mask=mask)
    H64 = H.astype(np.float64)
    ref_mean = H64[mask].mean(axis=0)
    for i in range(1, horizon + 1):
        num = den = 0.0
        for s in range(n):
            for t in range(L - i):
                if mask[s, t + i]:
                    num += np.sum((H64[s, t] - H64[s, t + i]) ** 2)
                    den += np.sum((H64[s, t + i] - ref_mean) ** 2)
        assert err[i - 1] == pytest.approx(num / den, rel=1e-6)
    # horizons beyond the sequence length score nothing
    assert np.isnan(rollout_errors(Identity(), H, E, L + 1, mask=mask)[-1])


def test_posthoc_fit_recovers_a_fixed_rule_but_not_noise():
    H, E, _, _ = tanh_world(n=300, L=20, seed=2)
    tr, te = slice(0, 240), slice(240, 300)
    mlp = fit_posthoc_dynamics(H[tr], E[tr], kind="mlp", seed=0)
    assert isinstance(mlp, LatentDynamics)
    err = rollout_errors(mlp, H[te], E[te], horizon=3)
    assert err[0] < 0.05, err
    assert err[2] < 0.2, err  # errors compound but stay small

    rng = np.random.default_rng(3)
    noise = rng.normal(size=H.shape).astype(np.float32)
    err_noise = rollout_errors(fit_posthoc_dynamics(noise[tr], E[tr], kind="mlp", seed=0), noise[te], E[te], 1)
    assert err_noise[0] > 0.5
    err_noise_lin = rollout_errors(fit_posthoc_dynamics(noise[tr], E[tr], kind="linear"), noise[te], E[te], 1)
    assert err_noise_lin[0] > 0.5


def test_linear_posthoc_is_exact_for_a_linear_rule():
    rng = np.random.default_rng(4)
    n, L, d, de = 50, 10, 4, 3
    A = rng.normal(size=(d, d)) * 0.4
    B = rng.normal(size=(d, de))
    E = rng.normal(size=(n, L, de))
    H = np.zeros((n, L, d))
    for t in range(1, L):
        H[:, t] = H[:, t - 1] @ A.T + E[:, t] @ B.T + 0.5
    lin = fit_posthoc_dynamics(H, E, kind="linear")
    assert isinstance(lin, LinearDynamics)
    assert rollout_errors(lin, H, E, horizon=3).max() < 1e-8
    # multi-step training starts from the closed form and stays there
    lin3 = fit_posthoc_dynamics(H, E, kind="linear", horizon_train=3, steps=20, lr=1e-4)
    assert rollout_errors(lin3, H, E, horizon=1)[0] < 1e-3


def test_belief_consistency_function_vs_noise():
    rng = np.random.default_rng(5)
    beliefs = rng.dirichlet(np.ones(3), size=12)  # 12 distinct beliefs
    which = rng.integers(0, 12, size=2000)
    B = beliefs[which] + rng.normal(scale=1e-9, size=(2000, 3))  # float noise below 1e-6
    f = np.tanh(beliefs @ rng.normal(size=(3, 8)))
    assert belief_consistency(f[which], B) == pytest.approx(0.0, abs=1e-12)
    noise = rng.normal(size=(2000, 8))
    assert belief_consistency(noise, B) == pytest.approx(1.0, abs=0.1)
    half = f[which] + 0.5 * np.std(f) * rng.normal(size=(2000, 8))
    assert 0.05 < belief_consistency(half, B) < 0.95


def test_grouped_consistency_hand_value_and_tuple_keys():
    H = np.array([[1.0], [3.0], [5.0], [9.0]])
    # group means 2 and 7: SS_w = 10 on 2 df; grand mean 4.5: SS_t = 35 on 3 df
    assert grouped_consistency(H, [0, 0, 1, 1]) == pytest.approx((10 / 2) / (35 / 3))
    # tuple keys: (state, position) split differently
    keys = np.array([[0, 0], [0, 0], [0, 1], [1, 1]])
    # groups {1, 3}, {5}, {9}: only {1, 3} has two rows; over it SS_w = 2 on 1 df and
    # SS_t = 2 on 1 df -> 1 (the singleton-inclusive figure would be (2 / 1) / (35 / 3))
    assert grouped_consistency(H, keys) == pytest.approx(1.0)
    assert np.isnan(grouped_consistency(H, [0, 1, 2, 3]))
    with pytest.raises(AnalysisError, match="keys"):
        grouped_consistency(H, [0, 1])


def test_transition_consistency_report():
    H, E, W, U = tanh_world(n=60, L=10, seed=6)
    beliefs = np.round(H, 1)  # stand-in "beliefs": H is near-constant within each
    res = transition_consistency(
        H[:45], E[:45], H[45:], E[45:], horizon=3, own_dynamics=TanhMap(W, U),
        beliefs_test=beliefs[45:], steps=50,
    )
    assert isinstance(res, TransitionResult)
    assert res.horizons == [1, 2, 3]
    np.testing.assert_allclose(res.own, 0.0, atol=1e-10)
    assert res.posthoc_mlp.shape == (3,) and res.posthoc_linear.shape == (3,)
    assert res.posthoc_linear[0] < 1.0
    assert res.belief_ratio < 0.05
    json.dumps(res.to_dict())


def test_bad_inputs():
    H, E, _, _ = tanh_world(n=4, L=5)
    with pytest.raises(AnalysisError, match="kind"):
        fit_posthoc_dynamics(H, E, kind="gru")
    with pytest.raises(AnalysisError, match="aligned"):
        rollout_errors(Identity(), H, E[:, :4], 1)
    with pytest.raises(AnalysisError, match="horizon"):
        rollout_errors(Identity(), H, E, 0)
    with pytest.raises(AnalysisError, match="mask"):
        rollout_errors(Identity(), H, E, 1, mask=np.ones((4, 4), dtype=bool))


def test_grouped_report_counts_only_groups_of_two_rows():
    from nextlat_probe.analysis.transition import grouped_consistency_report

    # rows 1, 3 | 5, 7, 9 | 100 (singleton far away)
    H = np.array([[1.0], [3.0], [5.0], [7.0], [9.0], [100.0]])
    rep = grouped_consistency_report(H, [0, 0, 1, 1, 1, 2], positions=[0, 1, 0, 1, 2, 2])
    # over the 5 rows in groups of >= 2: means 2 and 7, SS_w = 2 + 8 = 10 on 5 - 2 = 3 df;
    # grand mean 5, SS_t = 16 + 4 + 0 + 4 + 16 = 40 on 4 df -> (10 / 3) / (40 / 4) = 1/3
    assert rep["ratio"] == pytest.approx(1 / 3)
    assert (rep["n_rows"], rep["n_groups"], rep["n_rows_all"], rep["n_groups_all"]) == (5, 2, 6, 3)
    assert rep["share_rows"] == pytest.approx(5 / 6)
    assert rep["share_rows_per_position"] == [1.0, 1.0, 0.5]
    # singleton-inclusive extra: grand mean 20.833.., SS_t far larger
    x = H[:, 0]
    ss_t = float(((x - x.mean()) ** 2).sum())
    assert rep["ratio_with_singletons"] == pytest.approx((10 / 3) / (ss_t / 5))
    assert rep["note"] == ""


def test_all_singleton_groups_report_no_groups_with_two_rows():
    from nextlat_probe.analysis.transition import (
        belief_consistency_report,
        grouped_consistency_report,
    )

    H = np.array([[1.0], [3.0], [5.0]])
    rep = grouped_consistency_report(H, [0, 1, 2])
    assert rep["ratio"] is None and rep["note"] == "no groups with two rows"
    assert rep["n_rows"] == 0 and rep["n_groups"] == 0 and rep["share_rows"] == 0.0
    B = np.eye(3)
    assert belief_consistency_report(H, B)["note"] == "no groups with two rows"
