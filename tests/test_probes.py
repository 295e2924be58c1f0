"""Linear probes against sklearn and hand computations."""
from __future__ import annotations

import json

import numpy as np
import pytest
from sklearn.linear_model import LinearRegression, Ridge
from sklearn.metrics import r2_score
from sklearn.model_selection import PredefinedSplit, cross_val_predict

from nextlat_probe.analysis.probes import (
    LinearProbe,
    ProbeResult,
    belief_probe,
    coordinate_regression,
    group_folds,
    regression_scores,
    simplex_kl,
    split_sequences,
    state_classifier,
)
from nextlat_probe.analysis.stats import AnalysisError, CrossStats
from nextlat_probe.records import to_jsonable


def noisy_linear(n=600, d=12, s=3, noise=0.3, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, d)) * rng.uniform(0.5, 2.0, size=d) + rng.normal(size=d)
    W = rng.normal(size=(d, s))
    b = rng.normal(size=s)
    Y = X @ W + b + noise * rng.normal(size=(n, s))
    return X, Y, W, b


def softmax(z):
    z = z - z.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def test_recovers_exact_linear_map():
    X, _, W, b = noisy_linear(noise=0.0)
    Y = X @ W + b
    p = LinearProbe().fit(X, Y)
    np.testing.assert_allclose(p.coef_, W, atol=1e-9)
    np.testing.assert_allclose(p.intercept_, b, atol=1e-9)
    sc = p.score(X, Y)
    assert sc["r2"] == pytest.approx(1.0, abs=1e-8)
    assert sc["mse"] < 1e-16
    np.testing.assert_allclose(sc["r2_per_coord"], 1.0, atol=1e-8)


@pytest.mark.parametrize("fit_intercept", [True, False])
def test_matches_sklearn_linear_regression_and_ridge(fit_intercept):
    X, Y, _, _ = noisy_linear(seed=1)
    ref = LinearRegression(fit_intercept=fit_intercept).fit(X, Y)
    ours = LinearProbe(alpha=0.0, fit_intercept=fit_intercept).fit(X, Y)
    np.testing.assert_allclose(ours.coef_, ref.coef_.T, rtol=1e-6, atol=1e-8)
    np.testing.assert_allclose(ours.intercept_, np.broadcast_to(ref.intercept_, (3,)), atol=1e-8)
    for alpha in (0.5, 30.0):
        ref = Ridge(alpha=alpha, fit_intercept=fit_intercept, solver="cholesky").fit(X, Y)
        ours = LinearProbe(alpha=alpha, fit_intercept=fit_intercept).fit(X, Y)
        np.testing.assert_allclose(ours.coef_, ref.coef_.T, rtol=1e-6, atol=1e-8)
        np.testing.assert_allclose(ours.predict(X), ref.predict(X), rtol=1e-6, atol=1e-8)


def test_weighted_r2_matches_sklearn():
    X, Y, _, _ = noisy_linear(seed=2, noise=1.0)
    Y[:, 1] *= 10.0  # unequal variances make the weighting matter
    p = LinearProbe(alpha=1.0).fit(X[:400], Y[:400])
    sc = p.score(X[400:], Y[400:])
    pred = p.predict(X[400:])
    assert sc["r2"] == pytest.approx(r2_score(Y[400:], pred, multioutput="variance_weighted"), rel=1e-10)
    np.testing.assert_allclose(sc["r2_per_coord"], r2_score(Y[400:], pred, multioutput="raw_values"), rtol=1e-10)
    assert sc["mse"] == pytest.approx(np.mean((pred - Y[400:]) ** 2), rel=1e-12)


def test_singular_gram_matches_sklearn_predictions():
    # LayerNorm'd states: every row sums to 0, so the centred Gram is exactly singular
    rng = np.random.default_rng(3)
    H = rng.normal(size=(500, 16))
    H -= H.mean(axis=1, keepdims=True)
    H /= H.std(axis=1, keepdims=True)
    Y = H @ rng.normal(size=(16, 2)) + 0.1 * rng.normal(size=(500, 2))
    ours = LinearProbe().fit(H, Y)
    ref = LinearRegression().fit(H, Y)
    np.testing.assert_allclose(ours.predict(H), ref.predict(H), atol=1e-8)
    assert np.all(np.isfinite(ours.coef_)) and np.abs(ours.coef_).max() < 1e3
    # minimum-norm solution: no component along the empty direction (1, ..., 1)
    np.testing.assert_allclose(ours.coef_.sum(axis=0), 0.0, atol=1e-8)


def test_streamed_fit_equals_in_memory_fit():
    X, Y, _, _ = noisy_linear(n=2000, seed=4)
    X32 = X.astype(np.float32)
    st = CrossStats(12, 3)
    for xs, ys in zip(np.array_split(X32, 9), np.array_split(Y, 9)):
        st.update(xs, ys)
    for alpha in (0.0, 3.0):
        mem = LinearProbe(alpha=alpha).fit(X32, Y)
        streamed = LinearProbe(alpha=alpha).fit_stats(st)
        np.testing.assert_allclose(streamed.coef_, mem.coef_, rtol=1e-9, atol=1e-11)
        np.testing.assert_allclose(streamed.intercept_, mem.intercept_, rtol=1e-9, atol=1e-11)
        sc, sc_st = mem.score(X32, Y), streamed.score_stats(st)
        assert sc_st["r2"] == pytest.approx(sc["r2"], rel=1e-9)
        assert sc_st["mse"] == pytest.approx(sc["mse"], rel=1e-8)
        np.testing.assert_allclose(sc_st["r2_per_coord"], sc["r2_per_coord"], rtol=1e-8)
    # raw sums derived from the centred statistics
    X64 = X32.astype(np.float64)
    np.testing.assert_allclose(st.xtx(), X64.T @ X64, rtol=1e-11)
    np.testing.assert_allclose(st.xty(), X64.T @ Y, rtol=1e-10, atol=1e-8)


def test_cv_curve_matches_sklearn_and_picks_sensible_alpha():
    # few noisy rows, many features: OLS overfits, a ridge penalty helps
    rng = np.random.default_rng(5)
    n_seq, L, d = 40, 5, 40
    X = rng.normal(size=(n_seq * L, d))
    W = rng.normal(size=(d, 2)) * 0.3
    Y = X @ W + 2.0 * rng.normal(size=(n_seq * L, 2))
    groups = np.repeat(np.arange(n_seq), L)
    alphas = (0.0, 1.0, 10.0, 100.0, 1000.0)
    p = LinearProbe(alpha="cv", alphas=alphas, cv_folds=5, seed=0).fit(X, Y, groups=groups)

    folds = group_folds(groups, 5, seed=0)
    assert np.array_equal(p.cv_folds_, folds)
    for g in range(n_seq):  # whole sequences stay in one fold
        assert np.unique(folds[groups == g]).size == 1
    ref_mse = []
    for a in alphas:
        est = LinearRegression() if a == 0 else Ridge(alpha=a, solver="cholesky")
        pred = cross_val_predict(est, X, Y, cv=PredefinedSplit(folds))
        ref_mse.append(np.mean((pred - Y) ** 2))
    np.testing.assert_allclose(p.cv_mse_, ref_mse, rtol=1e-8)
    assert p.alpha_ == alphas[int(np.argmin(ref_mse))]
    assert p.alpha_ > 0

    # the chosen penalty generalises better than plain least squares
    Xt = rng.normal(size=(2000, d))
    Yt = Xt @ W + 2.0 * rng.normal(size=(2000, 2))
    assert p.score(Xt, Yt)["mse"] < LinearProbe().fit(X, Y).score(Xt, Yt)["mse"]


def test_cv_on_clean_data_prefers_small_alpha():
    X, Y, _, _ = noisy_linear(n=500, noise=0.01, seed=6)
    p = LinearProbe(alpha="cv", alphas=(0.0, 1e-2, 1e2, 1e4)).fit(X, Y, groups=np.arange(500) // 10)
    assert p.alpha_ <= 1e-2


def test_split_sequences_disjoint_and_complete():
    for n, f in [(2, 0.5), (10, 0.2), (257, 0.1), (1000, 0.33)]:
        tr, te = split_sequences(n, f, seed=1)
        assert np.intersect1d(tr, te).size == 0
        assert np.array_equal(np.sort(np.concatenate([tr, te])), np.arange(n))
        assert len(te) == max(1, round(n * f)) and len(tr) >= 1
    a, b = split_sequences(100, 0.2, seed=7), split_sequences(100, 0.2, seed=7)
    assert np.array_equal(a[1], b[1])
    assert not np.array_equal(a[1], split_sequences(100, 0.2, seed=8)[1])
    with pytest.raises(AnalysisError):
        split_sequences(1, 0.5)
    with pytest.raises(AnalysisError):
        split_sequences(10, 1.0)


def make_belief_data(n_seq=120, L=10, d=16, s=3, seed=0):
    """States carry a belief linearly (plus noise); beliefs are softmax of a linear map."""
    rng = np.random.default_rng(seed)
    Z = rng.normal(size=(n_seq, L, s))
    B = softmax(2.0 * Z)
    mix = rng.normal(size=(s, d))
    H = B @ mix + 0.05 * rng.normal(size=(n_seq, L, d))
    return H, B


def test_belief_probe_signal_and_shuffled_control():
    H, B = make_belief_data()
    tr, te = split_sequences(len(H), 0.25, seed=0)
    res = belief_probe(H[tr], B[tr], H[te], B[te], seed=0)
    assert isinstance(res, ProbeResult)
    assert res.r2 > 0.98
    assert abs(res.control_r2) < 0.05
    assert res.control_mse > 20 * res.mse
    assert res.kl < res.control_kl
    assert (res.n_train, res.n_test, res.d_in, res.n_states) == (len(tr) * 10, len(te) * 10, 16, 3)

    # the headline numbers equal an independent sklearn fit on flattened rows
    ref = LinearRegression().fit(H[tr].reshape(-1, 16), B[tr].reshape(-1, 3))
    pred = ref.predict(H[te].reshape(-1, 16))
    np.testing.assert_allclose(res.predictions, pred, atol=1e-8)
    assert res.r2 == pytest.approx(r2_score(B[te].reshape(-1, 3), pred, multioutput="variance_weighted"), rel=1e-8)
    # per-position R^2 against sklearn on each position's rows
    for t in (0, 4, 9):
        exp = r2_score(B[te][:, t], pred.reshape(len(te), 10, 3)[:, t], multioutput="variance_weighted")
        assert res.r2_by_position[t] == pytest.approx(exp, rel=1e-8)
    assert np.array_equal(res.positions, np.arange(10))

    d = res.to_dict()
    assert "predictions" not in d
    json.dumps(d)
    json.dumps(to_jsonable(res.to_dict(include_predictions=True)))


def test_belief_probe_flat_rows_with_positions_equal_3d():
    H, B = make_belief_data(n_seq=40, L=6)
    tr, te = split_sequences(40, 0.25, seed=2)
    a = belief_probe(H[tr], B[tr], H[te], B[te], alpha="cv", seed=3)
    pos = np.tile(np.arange(6), len(te))
    groups = np.repeat(np.arange(len(tr)), 6)
    b = belief_probe(
        H[tr].reshape(-1, 16), B[tr].reshape(-1, 3), H[te].reshape(-1, 16), B[te].reshape(-1, 3),
        positions_test=pos, groups_train=groups, alpha="cv", seed=3,
    )
    assert a.r2 == pytest.approx(b.r2, rel=1e-12) and a.alpha == b.alpha
    np.testing.assert_allclose(a.r2_by_position, b.r2_by_position)


def test_simplex_kl_hand_value():
    B = np.array([[0.5, 0.5, 0.0]])
    pred = np.array([[0.25, 0.75, -0.1]])  # negative entry clipped to 1e-12
    q = np.array([0.25, 0.75, 1e-12]) / (1.0 + 1e-12)
    expected = 0.5 * np.log(0.5 / q[0]) + 0.5 * np.log(0.5 / q[1])
    assert simplex_kl(B, pred)[0] == pytest.approx(expected, rel=1e-12)
    assert simplex_kl(B, B)[0] == pytest.approx(0.0, abs=2e-12)  # the floor adds 1e-12 mass


def test_state_classifier_separable_vs_noise():
    rng = np.random.default_rng(8)
    centres = rng.normal(size=(5, 10)) * 4.0
    y = rng.integers(0, 5, size=1500)
    H = centres[y] + rng.normal(size=(1500, 10))
    res = state_classifier(H[:1000], y[:1000], H[1000:], y[1000:])
    assert res.accuracy > 0.95
    assert res.chance == pytest.approx(np.mean(y[1000:] == np.bincount(y[:1000]).argmax()))
    assert res.n_classes == 5

    noise = rng.normal(size=(1500, 10))
    res0 = state_classifier(noise[:1000], y[:1000], noise[1000:], y[1000:])
    assert abs(res0.accuracy - 0.2) < 0.08
    json.dumps(res0.to_dict())


def test_coordinate_regression_matches_sklearn():
    rng = np.random.default_rng(9)
    H = rng.normal(size=(50, 8, 12))
    xy = H[..., :2] @ np.array([[1.0, 0.5], [-0.3, 2.0]]) + 0.2 * rng.normal(size=(50, 8, 2))
    res = coordinate_regression(H[:40], xy[:40], H[40:], xy[40:])
    ref = LinearRegression().fit(H[:40].reshape(-1, 12), xy[:40].reshape(-1, 2))
    pred = ref.predict(H[40:].reshape(-1, 12))
    assert res.r2 == pytest.approx(r2_score(xy[40:].reshape(-1, 2), pred, multioutput="variance_weighted"), rel=1e-8)
    assert res.r2 > 0.9
    json.dumps(res.to_dict())


def test_regression_scores_constant_coordinate_is_nan():
    Y = np.stack([np.arange(5.0), np.ones(5)], axis=1)
    sc = regression_scores(Y + 0.1, Y)
    assert np.isnan(sc["r2_per_coord"][1])
    assert sc["r2_per_coord"][0] == pytest.approx(1 - 5 * 0.01 / 10.0)


def test_errors_are_clear():
    with pytest.raises(AnalysisError, match="alpha"):
        LinearProbe(alpha=-1.0)
    with pytest.raises(AnalysisError, match="alpha"):
        LinearProbe(alpha="auto")
    with pytest.raises(AnalysisError, match="rows"):
        LinearProbe().fit(np.ones((5, 2)), np.ones((4, 1)))
    with pytest.raises(AnalysisError, match="fit"):
        LinearProbe().predict(np.ones((3, 2)))
    with pytest.raises(AnalysisError, match="groups"):
        LinearProbe(alpha="cv", cv_folds=5).fit(np.ones((6, 2)), np.ones((6, 1)), groups=[0, 0, 1, 1, 2, 2])
