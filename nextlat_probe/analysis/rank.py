"""Effective rank of hidden states (Roy & Vetterli 2007), as in the NextLat paper.

For an N x D matrix H with singular values s_i:

    p_i   = s_i / sum_j s_j              (singular values below ``tol`` dropped)
    erank = exp(-sum_i p_i log p_i)

erank is 1 for a rank-1 matrix and D for a matrix with D equal singular values; between
those it counts "how many directions the states really use". The paper computes it on the
final-layer states of 256 sequences x 256 tokens, *uncentred*, with tol = 1e-12. Uncentred
H includes the mean direction (a constant offset adds one direction), centred H measures
only the spread around the mean: report both and say which.

Two routes give the same numbers:

- ``spectrum(H)``: dense SVD of the whole matrix (exact; memory N x D x 8 bytes);
- ``spectrum_from_gram(stats.gram())``: s_i = sqrt(eigenvalues of H^T H) from streamed
  ``SufficientStats`` (memory D x D, one pass over the states). Eigenvalues of the Gram
  carry rounding noise of about ``D * eps * lambda_max``, i.e. singular values of about
  ``sqrt(D * eps) * s_max`` for directions that are exactly zero; these are clipped to zero
  so a rank-deficient matrix gives the same effective rank by both routes. The price:
  directions weaker than about 1e-7 s_max are invisible to the Gram route (float32 states
  carry rounding "directions" near 1e-8 s_max that the dense SVD counts), so the two
  routes agree to about 1e-6 relative on real activations, and exactly on clean ones.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import scipy.linalg

from .stats import AnalysisError, SufficientStats, as_rows

#: eigenvalues of a Gram matrix below GRAM_RTOL * D * lambda_max are rounding noise
GRAM_RTOL = 4.0 * np.finfo(np.float64).eps


def spectrum(H: Any, center: bool = False) -> np.ndarray:
    """Singular values (descending, float64) of ``H`` ``[..., D]`` flattened to rows."""
    X = as_rows(H, "spectrum H").astype(np.float64)
    if not np.isfinite(X).all():
        raise AnalysisError("spectrum: H contains NaN or infinite values")
    if X.shape[0] == 0:
        raise AnalysisError("spectrum: H has no rows")
    if center:
        X = X - X.mean(axis=0)
    return scipy.linalg.svdvals(X, overwrite_a=True, check_finite=False)


def spectrum_from_gram(gram: Any) -> np.ndarray:
    """Singular values (descending) of any H with ``H^T H == gram``.

    Eigenvalues at the rounding-noise level (including small negatives) become 0."""
    G = np.asarray(gram, dtype=np.float64)
    if G.ndim != 2 or G.shape[0] != G.shape[1]:
        raise AnalysisError(f"spectrum_from_gram: expected a square matrix, got shape {G.shape}")
    if not np.isfinite(G).all():
        raise AnalysisError("spectrum_from_gram: gram contains NaN or infinite values")
    lam = scipy.linalg.eigvalsh(G, check_finite=False)[::-1]
    floor = GRAM_RTOL * G.shape[0] * max(lam[0], 0.0)
    lam = np.where(lam > floor, lam, 0.0)
    return np.sqrt(lam)


def effective_rank_from_spectrum(s: Any, tol: float = 1e-12) -> float:
    """Roy & Vetterli effective rank of singular values ``s`` (those < ``tol`` dropped)."""
    s = np.asarray(s, dtype=np.float64)
    s = s[s >= tol]
    if s.size == 0:
        return 0.0
    p = s / s.sum()
    return float(np.exp(-np.sum(p * np.log(p))))


def effective_rank(H: Any, center: bool = False, tol: float = 1e-12) -> float:
    """Effective rank of ``H`` ``[..., D]`` (dense SVD; see ``rank_report`` for streams)."""
    return effective_rank_from_spectrum(spectrum(H, center=center), tol=tol)


def participation_ratio(s: Any) -> float:
    """(sum lambda)^2 / sum lambda^2 with lambda = s^2: another 'number of directions'
    that, unlike erank, is dominated by the largest components."""
    lam = np.asarray(s, dtype=np.float64) ** 2
    den = float(np.sum(lam**2))
    return float(np.sum(lam) ** 2 / den) if den > 0 else 0.0


def n_components(s: Any, fraction: float) -> int:
    """Fewest leading components whose energy (sum of s^2) reaches ``fraction`` of the total."""
    lam = np.sort(np.asarray(s, dtype=np.float64) ** 2)[::-1]
    total = lam.sum()
    if total <= 0:
        return 0
    cum = np.cumsum(lam)
    # relative slack so that an exact boundary (e.g. 9/10 of the energy) is not missed
    # through rounding of the cumulative sum
    k = int(np.searchsorted(cum, fraction * total * (1.0 - 1e-12), side="left")) + 1
    return min(k, lam.size)


@dataclass
class RankResult:
    """Effective rank and spectrum of one set of hidden states."""

    effective_rank: float
    participation_ratio: float
    n90: int
    n99: int
    spectrum: np.ndarray = field(repr=False)
    d_model: int
    n_samples: int
    centered: bool

    def to_dict(self) -> dict[str, Any]:
        return {
            "effective_rank": self.effective_rank,
            "participation_ratio": self.participation_ratio,
            "n90": self.n90,
            "n99": self.n99,
            "spectrum": [float(v) for v in self.spectrum],
            "d_model": self.d_model,
            "n_samples": self.n_samples,
            "centered": self.centered,
        }


def rank_report(H_or_stats: Any, center: bool = False, tol: float = 1e-12) -> RankResult:
    """Effective rank, participation ratio, n90 / n99 and spectrum.

    ``H_or_stats``: hidden states ``[..., D]`` (dense SVD) or a ``SufficientStats``
    gathered batch by batch (eigenvalues of its Gram; same answer, D x D memory)."""
    if isinstance(H_or_stats, SufficientStats):
        st = H_or_stats
        if st.count == 0:
            raise AnalysisError("rank_report: the SufficientStats hold no rows")
        s = spectrum_from_gram(st.gram(center=center))
        d, n = st.dim, st.count
    else:
        X = as_rows(H_or_stats, "rank_report H")
        s = spectrum(X, center=center)
        d, n = X.shape[1], X.shape[0]
        s = np.concatenate([s, np.zeros(d - s.size)])  # N < D: the missing values are zeros
    return RankResult(
        effective_rank=effective_rank_from_spectrum(s, tol=tol),
        participation_ratio=participation_ratio(s),
        n90=n_components(s, 0.90),
        n99=n_components(s, 0.99),
        spectrum=s,
        d_model=int(d),
        n_samples=int(n),
        centered=bool(center),
    )
