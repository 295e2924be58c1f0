"""Streaming sufficient statistics for hidden-state analyses.

Effective rank needs only the D x D Gram matrix of the hidden states, and a linear probe
with intercept needs only means, the D x D scatter of X and the D x S cross-scatter with
Y. Accumulating these chunk by chunk lets an analysis run over millions of tokens while
holding one batch of activations at a time, and lets cross-validation fit every fold from
per-fold statistics instead of refitting on raw data.

Numerics: everything is float64. Internally the statistics are kept *centred* (count,
mean, scatter = sum of outer products of deviations from the mean) and chunks are merged
with the pairwise update of Chan, Golub & LeVeque. This avoids the cancellation of
``X^T X - n m m^T`` when the mean is large next to the spread; the uncentred Gram is
recovered by an addition, ``scatter + n m m^T``, which loses nothing.

No torch import here: torch tensors are accepted through ``as_numpy``.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from ..errors import AnalysisError

#: elements per float64 chunk in ``update``: bounds the temporary copy at 16 MiB whatever
#: the input dtype, while chunks stay large enough for BLAS to run at full speed
CHUNK_ELEMENTS = 1 << 21


def chunk_rows(dim: int) -> int:
    """Rows per chunk for arrays with ``dim`` columns."""
    return max(256, min(65536, CHUNK_ELEMENTS // max(int(dim), 1)))




def as_numpy(x: Any) -> np.ndarray:
    """numpy view of an array-like; torch tensors are detached and moved to the CPU
    without importing torch here."""
    if hasattr(x, "detach") and hasattr(x, "cpu"):
        x = x.detach().cpu()
        if str(getattr(x, "dtype", "")) == "torch.bfloat16":
            x = x.float()
        x = x.numpy()
    return np.asarray(x)


def as_rows(x: Any, name: str, dim: int | None = None) -> np.ndarray:
    """Flatten ``[..., D]`` to a 2-D float array ``[N, D]`` (dtype kept), checking shape."""
    arr = as_numpy(x)
    if arr.ndim == 1 and dim is None:
        arr = arr[:, None]
    if arr.ndim < 2:
        raise AnalysisError(f"{name}: expected an array [..., D], got shape {arr.shape}")
    if dim is not None and arr.shape[-1] != dim:
        raise AnalysisError(f"{name}: last dimension is {arr.shape[-1]}, expected {dim}")
    if not np.issubdtype(arr.dtype, np.floating):
        if np.issubdtype(arr.dtype, np.number) or arr.dtype == bool:
            arr = arr.astype(np.float64)
        else:
            raise AnalysisError(f"{name}: expected a numeric array, got dtype {arr.dtype}")
    return arr.reshape(-1, arr.shape[-1])


def _check_finite(chunk: np.ndarray, name: str) -> None:
    if not np.isfinite(chunk).all():
        raise AnalysisError(f"{name}: contains NaN or infinite values")


def _merge_moments(n1, m1, s1, n2, m2, s2):
    """Pairwise merge of (count, mean, scatter) for one variable (Chan et al. 1979)."""
    n = n1 + n2
    if n1 == 0:
        return n2, m2.copy(), s2.copy()
    if n2 == 0:
        return n1, m1, s1
    d = m2 - m1
    s1 += s2  # in place: s1 is always owned by the accumulating object
    s1 += np.outer(d, d * (n1 * n2 / n))
    return n, m1 + d * (n2 / n), s1


class SufficientStats:
    """Streaming count, mean and scatter of rows of dimension ``dim``.

    >>> st = SufficientStats(64)
    >>> for batch in batches:            # each [N_b, 64], any float dtype
    ...     st.update(batch)
    >>> st.gram(center=False)            # X^T X over all rows, float64 [64, 64]
    """

    def __init__(self, dim: int):
        if int(dim) <= 0:
            raise AnalysisError(f"SufficientStats: dim must be positive, got {dim}")
        self.dim = int(dim)
        self.count = 0
        self._mean = np.zeros(self.dim)
        self._scatter = np.zeros((self.dim, self.dim))

    def update(self, X: Any) -> SufficientStats:
        """Add rows ``X`` (``[N, dim]`` or ``[..., dim]``); returns self."""
        X = as_rows(X, "SufficientStats.update", self.dim)
        step = chunk_rows(self.dim)
        for i in range(0, X.shape[0], step):
            c = X[i : i + step].astype(np.float64)
            _check_finite(c, "SufficientStats.update")
            m = c.mean(axis=0)
            c -= m
            self.count, self._mean, self._scatter = _merge_moments(
                self.count, self._mean, self._scatter, c.shape[0], m, c.T @ c
            )
        return self

    def merge(self, other: SufficientStats) -> SufficientStats:
        """Fold ``other`` into self (e.g. statistics gathered by several workers)."""
        if other.dim != self.dim:
            raise AnalysisError(f"SufficientStats.merge: dim {other.dim} != {self.dim}")
        self.count, self._mean, self._scatter = _merge_moments(
            self.count, self._mean, self._scatter, other.count, other._mean, other._scatter
        )
        return self

    @property
    def sum(self) -> np.ndarray:
        return self._mean * self.count

    @property
    def mean(self) -> np.ndarray:
        return self._mean.copy()

    def gram(self, center: bool = False) -> np.ndarray:
        """Uncentred ``X^T X`` or (``center=True``) the scatter ``(X - m)^T (X - m)``."""
        if center:
            return self._scatter.copy()
        return self._scatter + np.outer(self._mean, self._mean) * self.count

    def cov(self, ddof: int = 1) -> np.ndarray:
        """Covariance matrix (``ddof=1`` like ``np.cov``)."""
        if self.count - ddof <= 0:
            raise AnalysisError(f"SufficientStats.cov: needs more than {ddof} rows, have {self.count}")
        return self._scatter / (self.count - ddof)

    def __repr__(self) -> str:
        return f"SufficientStats(dim={self.dim}, count={self.count})"


class CrossStats:
    """Streaming statistics of paired rows ``(x, y)`` for linear probes with intercept.

    Keeps count, means of X and Y, the X scatter ``Sxx`` [Dx, Dx], the cross-scatter
    ``Sxy`` [Dx, Dy] and the per-coordinate Y scatter ``syy`` [Dy] (the diagonal is all
    that R^2 and the squared error need, so a probe onto thousands of belief coordinates
    does not store a Dy x Dy matrix). Raw sums follow: ``X^T X = Sxx + n mx mx^T``,
    ``X^T Y = Sxy + n mx my^T``, ``diag(Y^T Y) = syy + n my^2``.
    """

    def __init__(self, dim_x: int, dim_y: int):
        if int(dim_x) <= 0 or int(dim_y) <= 0:
            raise AnalysisError(f"CrossStats: dims must be positive, got ({dim_x}, {dim_y})")
        self.dim_x, self.dim_y = int(dim_x), int(dim_y)
        self.count = 0
        self.mean_x = np.zeros(self.dim_x)
        self.mean_y = np.zeros(self.dim_y)
        self.sxx = np.zeros((self.dim_x, self.dim_x))
        self.sxy = np.zeros((self.dim_x, self.dim_y))
        self.syy = np.zeros(self.dim_y)

    def update(self, X: Any, Y: Any) -> CrossStats:
        """Add paired rows ``X`` [N, dim_x] and ``Y`` [N, dim_y]; returns self."""
        X = as_rows(X, "CrossStats.update X", self.dim_x)
        Y = as_rows(Y, "CrossStats.update Y", self.dim_y)
        if X.shape[0] != Y.shape[0]:
            raise AnalysisError(f"CrossStats.update: X has {X.shape[0]} rows but Y has {Y.shape[0]}")
        step = chunk_rows(self.dim_x + self.dim_y)
        for i in range(0, X.shape[0], step):
            x = X[i : i + step].astype(np.float64)
            y = Y[i : i + step].astype(np.float64)
            _check_finite(x, "CrossStats.update X")
            _check_finite(y, "CrossStats.update Y")
            mx, my = x.mean(axis=0), y.mean(axis=0)
            x -= mx
            y -= my
            self._merge(x.shape[0], mx, my, x.T @ x, x.T @ y, np.einsum("ij,ij->j", y, y))
        return self

    def merge(self, other: CrossStats) -> CrossStats:
        """Fold ``other`` into self (pairwise update; exact up to rounding)."""
        if (other.dim_x, other.dim_y) != (self.dim_x, self.dim_y):
            raise AnalysisError(
                f"CrossStats.merge: dims {(other.dim_x, other.dim_y)} != {(self.dim_x, self.dim_y)}"
            )
        return self._merge(other.count, other.mean_x, other.mean_y, other.sxx, other.sxy, other.syy)

    def _merge(self, n2, mx, my, sxx, sxy, syy) -> CrossStats:
        n1 = self.count
        if n2 == 0:
            return self
        if n1 == 0:
            self.count = n2
            self.mean_x, self.mean_y = mx.copy(), my.copy()
            self.sxx, self.sxy, self.syy = sxx.copy(), sxy.copy(), syy.copy()
            return self
        n = n1 + n2
        dx, dy = mx - self.mean_x, my - self.mean_y
        w = n1 * n2 / n
        self.sxx += sxx
        self.sxx += np.outer(dx, dx * w)
        self.sxy += sxy
        self.sxy += np.outer(dx, dy * w)
        self.syy += syy + dy * dy * w
        self.mean_x = self.mean_x + dx * (n2 / n)
        self.mean_y = self.mean_y + dy * (n2 / n)
        self.count = n
        return self

    def copy(self) -> CrossStats:
        return CrossStats(self.dim_x, self.dim_y).merge(self)

    @property
    def x_stats(self) -> SufficientStats:
        """The X half as a ``SufficientStats`` (e.g. for the effective rank)."""
        st = SufficientStats(self.dim_x)
        st.count, st._mean, st._scatter = self.count, self.mean_x.copy(), self.sxx.copy()
        return st

    def xtx(self) -> np.ndarray:
        return self.sxx + np.outer(self.mean_x, self.mean_x) * self.count

    def xty(self) -> np.ndarray:
        return self.sxy + np.outer(self.mean_x, self.mean_y) * self.count

    def __repr__(self) -> str:
        return f"CrossStats(dim_x={self.dim_x}, dim_y={self.dim_y}, count={self.count})"
