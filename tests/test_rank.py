"""Effective rank and streamed statistics against dense numpy computations."""
from __future__ import annotations

import json

import numpy as np
import pytest

from nextlat_probe.analysis.rank import (
    RankResult,
    effective_rank,
    rank_report,
    spectrum,
    spectrum_from_gram,
)
from nextlat_probe.analysis.stats import AnalysisError, CrossStats, SufficientStats
from nextlat_probe.records import to_jsonable


def dense_erank(H: np.ndarray, center: bool = False, tol: float = 1e-12) -> float:
    """Roy & Vetterli written out directly on numpy's SVD."""
    H = np.asarray(H, dtype=np.float64)
    if center:
        H = H - H.mean(axis=0)
    s = np.linalg.svd(H, compute_uv=False)
    s = s[s >= tol]
    p = s / s.sum()
    return float(np.exp(-(p * np.log(p)).sum()))


def low_rank(n: int, d: int, r: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, r)) @ rng.normal(size=(r, d))


@pytest.mark.parametrize("r", [1, 3, 7, 16])
def test_effective_rank_matches_dense_svd(r):
    H = low_rank(400, 16, r, seed=r)
    assert effective_rank(H) == pytest.approx(dense_erank(H), rel=1e-10)
    assert effective_rank(H, center=True) == pytest.approx(dense_erank(H, center=True), rel=1e-10)
    # rank r -> at most r directions; equal singular values would give exactly r
    assert 1.0 <= effective_rank(H) <= r + 1e-9


def test_rank_one_and_identity():
    u = np.arange(1.0, 51.0)[:, None]
    v = np.linspace(-1, 2, 12)[None, :]
    assert effective_rank(u * v) == pytest.approx(1.0, abs=1e-9)
    for d in (1, 5, 64):
        assert effective_rank(np.eye(d)) == pytest.approx(d, abs=1e-9)


def test_hand_worked_two_values():
    # singular values 3 and 1: p = (3/4, 1/4), erank = exp(H(p))
    H = np.diag([3.0, 1.0])
    expected = np.exp(-(0.75 * np.log(0.75) + 0.25 * np.log(0.25)))
    assert effective_rank(H) == pytest.approx(expected, rel=1e-12)


def test_tolerance_drops_tiny_singular_values():
    H = np.diag([1.0, 1.0, 1e-13])
    assert effective_rank(H) == pytest.approx(2.0, abs=1e-9)
    assert effective_rank(H, tol=1e-14) > 2.0


def test_streamed_stats_equal_dense():
    rng = np.random.default_rng(0)
    H = (rng.normal(size=(3000, 32)) * rng.uniform(0.1, 3.0, size=32) + 0.7).astype(np.float32)
    st = SufficientStats(32)
    for chunk in np.array_split(H, 7):
        st.update(chunk)
    H64 = H.astype(np.float64)
    assert st.count == 3000
    np.testing.assert_allclose(st.gram(center=False), H64.T @ H64, rtol=1e-12, atol=1e-9)
    Hc = H64 - H64.mean(axis=0)
    np.testing.assert_allclose(st.gram(center=True), Hc.T @ Hc, rtol=1e-10, atol=1e-8)
    np.testing.assert_allclose(st.cov(), np.cov(H64, rowvar=False), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(st.sum, H64.sum(axis=0), rtol=1e-12)
    for center in (False, True):
        dense = rank_report(H, center=center)
        streamed = rank_report(st, center=center)
        assert streamed.effective_rank == pytest.approx(dense.effective_rank, rel=1e-6)
        assert streamed.effective_rank == pytest.approx(dense_erank(H, center), rel=1e-6)
        np.testing.assert_allclose(streamed.spectrum, dense.spectrum, rtol=1e-6)
        assert (streamed.n90, streamed.n99) == (dense.n90, dense.n99)


def test_streamed_rank_deficient_matches_dense():
    # exactly rank 5 in 64 dims: the Gram's rounding noise must not add directions
    H = low_rank(2000, 64, 5, seed=3)
    st = SufficientStats(64)
    for chunk in np.array_split(H, 5):
        st.update(chunk)
    assert rank_report(st).effective_rank == pytest.approx(dense_erank(H), rel=1e-6)
    assert np.count_nonzero(spectrum_from_gram(st.gram())) == 5


def test_merge_equals_single_pass():
    rng = np.random.default_rng(1)
    A, B = rng.normal(size=(500, 8)) + 5.0, rng.normal(size=(300, 8)) - 2.0
    merged = SufficientStats(8).update(A).merge(SufficientStats(8).update(B))
    whole = SufficientStats(8).update(np.concatenate([A, B]))
    np.testing.assert_allclose(merged.gram(True), whole.gram(True), rtol=1e-12)
    np.testing.assert_allclose(merged.mean, whole.mean, rtol=1e-12)
    # the X half of CrossStats is the same statistic
    cs = CrossStats(8, 2).update(np.concatenate([A, B]), rng.normal(size=(800, 2)))
    np.testing.assert_allclose(cs.x_stats.gram(False), whole.gram(False), rtol=1e-12)


def test_centering_removes_the_offset_direction():
    # rank-1 signal plus a constant offset in another direction: uncentred sees 2
    # directions, centred sees only the signal
    rng = np.random.default_rng(2)
    u = rng.normal(size=(1000, 1))
    signal = u @ np.array([[1.0, 0.0, 0.0, 0.0]])
    H = signal + np.array([0.0, 0.0, 3.0, 0.0])
    unc, cen = effective_rank(H), effective_rank(H, center=True)
    assert unc == pytest.approx(dense_erank(H), rel=1e-10)
    assert 1.5 < unc <= 2.0
    assert cen == pytest.approx(1.0, abs=1e-6)


def test_participation_ratio_and_energy_counts():
    # energies s^2 = 5, 3, 1, 1 (total 10): cumulative 0.5, 0.8, 0.9, 1.0
    H = np.diag(np.sqrt([5.0, 3.0, 1.0, 1.0]))
    r = rank_report(H)
    assert r.participation_ratio == pytest.approx(100.0 / 36.0, rel=1e-12)
    assert r.n90 == 3
    assert r.n99 == 4
    np.testing.assert_allclose(r.spectrum, np.sqrt([5.0, 3.0, 1.0, 1.0]), rtol=1e-12)
    assert (r.d_model, r.n_samples, r.centered) == (4, 4, False)
    # energies 95, 4.5, 0.5: n90 = 1, n99 = 2
    r2 = rank_report(np.diag(np.sqrt([95.0, 4.5, 0.5])))
    assert (r2.n90, r2.n99) == (1, 2)


def test_report_is_json_serialisable_and_pads_spectrum():
    rng = np.random.default_rng(4)
    r = rank_report(rng.normal(size=(3, 10, 6)))  # [n, L, D] flattens to 30 x 6
    assert isinstance(r, RankResult) and r.n_samples == 30 and r.d_model == 6
    d = json.loads(json.dumps(to_jsonable(r.to_dict())))
    assert d["effective_rank"] == pytest.approx(r.effective_rank)
    assert len(d["spectrum"]) == 6
    short = rank_report(rng.normal(size=(2, 6)))  # N < D: zeros fill the spectrum
    assert short.spectrum.shape == (6,) and np.count_nonzero(short.spectrum) == 2


def test_spectrum_equals_numpy():
    H = np.random.default_rng(5).normal(size=(50, 9))
    np.testing.assert_allclose(spectrum(H), np.linalg.svd(H, compute_uv=False), rtol=1e-12)


def test_bad_input_is_a_clear_error():
    with pytest.raises(AnalysisError, match="NaN"):
        effective_rank(np.array([[1.0, np.nan]]))
    with pytest.raises(AnalysisError, match="last dimension"):
        SufficientStats(3).update(np.ones((4, 2)))
    with pytest.raises(AnalysisError, match="no rows"):
        rank_report(SufficientStats(3))
