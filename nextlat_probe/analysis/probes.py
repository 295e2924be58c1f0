"""Linear probes from hidden states to exact belief states (SPEC §3).

Shai et al. showed that a *linear* map from the residual stream recovers the Bayesian
belief state; the same test tells whether a NextLat or GPT model's hidden states encode
the belief. The probe is ordinary least squares with intercept and an optional ridge
penalty, solved in closed form from sufficient statistics (``CrossStats``):

    W = (Sxx + alpha I)^-1 Sxy,   b = mean_y - mean_x W

with Sxx, Sxy the centred scatter matrices, so the intercept is never penalised (the same
objective as ``sklearn.linear_model.Ridge(alpha)``; ``alpha = 0`` is ``LinearRegression``).
Working from statistics means: one pass over the states in float64, D x D memory, the
streamed and in-memory fits agree, and K-fold cross-validation over many alphas costs one
eigendecomposition per fold instead of K x len(alphas) refits.

Train and test rows must come from different *sequences*: neighbouring positions of one
sequence have nearly identical states and beliefs, so a split by row would leak.
``split_sequences`` makes such splits, and cross-validation folds are whole sequences
(``groups``).

No torch import here; torch tensors are accepted (moved to numpy).
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np
import scipy.linalg

from .stats import AnalysisError, CrossStats, as_numpy, as_rows, chunk_rows

#: ridge strengths tried by ``alpha="cv"`` (absolute, as in sklearn's Ridge)
DEFAULT_ALPHAS: tuple[float, ...] = (0.0, 1e-4, 1e-3, 1e-2, 1e-1, 1.0, 10.0, 100.0, 1e3, 1e4)

#: eigenvalues of the Gram below RCOND * lambda_max are treated as zero when alpha == 0
#: (e.g. LayerNorm'd states: every row sums to zero, so one direction is exactly empty)
RCOND = 1e-12


# --------------------------------------------------------------------------------------
# splits and folds
# --------------------------------------------------------------------------------------
def split_sequences(n_seqs: int, test_fraction: float = 0.2, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Disjoint sorted index arrays (train, test) over ``n_seqs`` sequences; together they
    cover every sequence. At least one sequence lands on each side."""
    n_seqs = int(n_seqs)
    if n_seqs < 2:
        raise AnalysisError(f"split_sequences: need at least 2 sequences, got {n_seqs}")
    if not 0.0 < float(test_fraction) < 1.0:
        raise AnalysisError(f"split_sequences: test_fraction must be in (0, 1), got {test_fraction}")
    n_test = min(max(int(round(n_seqs * test_fraction)), 1), n_seqs - 1)
    perm = np.random.default_rng(seed).permutation(n_seqs)
    return np.sort(perm[n_test:]), np.sort(perm[:n_test])


def group_folds(groups: Any, n_folds: int, seed: int = 0) -> np.ndarray:
    """Fold id (0..n_folds-1) per row such that all rows of a group share a fold.

    Groups are shuffled with ``seed`` and dealt round-robin, so folds hold equal numbers
    of groups (equal numbers of rows when sequences have equal length)."""
    groups = np.asarray(groups).reshape(-1)
    uniq, inv = np.unique(groups, return_inverse=True)
    if uniq.size < n_folds:
        raise AnalysisError(f"cross-validation: {uniq.size} groups (sequences) for {n_folds} folds")
    order = np.random.default_rng(seed).permutation(uniq.size)
    fold_of_group = np.empty(uniq.size, dtype=np.int64)
    fold_of_group[order] = np.arange(uniq.size) % n_folds
    return fold_of_group[inv]


# --------------------------------------------------------------------------------------
# closed-form solvers
# --------------------------------------------------------------------------------------
def _system(st: CrossStats, fit_intercept: bool) -> tuple[np.ndarray, np.ndarray]:
    """Normal equations A W = B: centred scatter with intercept, raw sums without."""
    return (st.sxx, st.sxy) if fit_intercept else (st.xtx(), st.xty())


def _eig_solve(evals: np.ndarray, evecs: np.ndarray, B: np.ndarray, alpha: float, rcond: float) -> np.ndarray:
    """(A + alpha I)^+ B from A = V diag(evals) V^T; near-zero eigenvalues are dropped when
    alpha == 0 (minimum-norm least squares, like ``lstsq``)."""
    lam_max = max(float(evals.max(initial=0.0)), 0.0)
    keep = evals > rcond * lam_max
    denom = np.where(keep, evals, 0.0) + alpha
    inv = np.divide(1.0, denom, out=np.zeros_like(denom), where=keep if alpha == 0 else denom > 0)
    return evecs @ (inv[:, None] * (evecs.T @ B))


def _solve(A: np.ndarray, B: np.ndarray, alpha: float, rcond: float) -> np.ndarray:
    """W = (A + alpha I)^-1 B. Ridge systems go through Cholesky; plain least squares and
    anything Cholesky rejects through a symmetric eigendecomposition (stable when A is
    singular, which LayerNorm'd hidden states always make it)."""
    if alpha > 0:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("error", scipy.linalg.LinAlgWarning)
                c = scipy.linalg.cho_factor(A + alpha * np.eye(A.shape[0]), check_finite=False)
                return scipy.linalg.cho_solve(c, B, check_finite=False)
        except (np.linalg.LinAlgError, scipy.linalg.LinAlgWarning):
            pass
    evals, evecs = scipy.linalg.eigh(A, check_finite=False)
    return _eig_solve(evals, evecs, B, alpha, rcond)


def _sse_from_stats(st: CrossStats, W: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Per-coordinate sum of squared residuals of ``x W + b`` on the rows behind ``st``:
    syy - 2 diag(W^T Sxy) + diag(W^T Sxx W) + n (my - mx W - b)^2 (centred form, so the
    large terms of raw sums never cancel)."""
    off = st.mean_y - st.mean_x @ W - b
    sse = (
        st.syy
        - 2.0 * np.einsum("ds,ds->s", W, st.sxy)
        + np.einsum("ds,ds->s", W, st.sxx @ W)
        + st.count * off**2
    )
    return np.maximum(sse, 0.0)


def _score_dict(sse: np.ndarray, sst: np.ndarray, n: int) -> dict[str, Any]:
    with np.errstate(divide="ignore", invalid="ignore"):
        per = np.where(sst > 0, 1.0 - sse / np.where(sst > 0, sst, 1.0), np.nan)
    tot = float(sst.sum())
    return {
        "mse": float(sse.sum() / (n * sse.size)),
        "r2": float(1.0 - sse.sum() / tot) if tot > 0 else float("nan"),
        "r2_per_coord": per,
        "n": int(n),
    }


# --------------------------------------------------------------------------------------
# the probe
# --------------------------------------------------------------------------------------
class LinearProbe:
    """Least squares / ridge regression ``Y ~ X W + b`` solved from sufficient statistics.

    alpha: ridge strength (>= 0, intercept not penalised) or ``"cv"`` to pick it from
        ``alphas`` by K-fold cross-validation over whole sequences (``groups``) of the
        training data, scored by pooled validation MSE.
    fit_intercept: fit ``b`` (centred normal equations) or force ``b = 0``.
    rcond: relative eigenvalue cut-off of the minimum-norm solution when alpha == 0.

    Fitted attributes: ``coef_`` [D, S], ``intercept_`` [S], ``alpha_`` (the alpha used),
    and with ``alpha="cv"``: ``cv_alphas_``, ``cv_mse_`` (pooled validation MSE per alpha),
    ``cv_folds_`` (fold id per training row, when fitted from arrays).
    """

    def __init__(
        self,
        alpha: float | str = 0.0,
        alphas: Sequence[float] = DEFAULT_ALPHAS,
        cv_folds: int = 5,
        fit_intercept: bool = True,
        seed: int = 0,
        rcond: float = RCOND,
    ):
        if isinstance(alpha, str):
            if alpha != "cv":
                raise AnalysisError(f"LinearProbe: alpha must be a number >= 0 or 'cv', got {alpha!r}")
        elif not float(alpha) >= 0.0:
            raise AnalysisError(f"LinearProbe: alpha must be >= 0, got {alpha}")
        if alpha == "cv":
            if len(alphas) == 0 or min(alphas) < 0:
                raise AnalysisError("LinearProbe: alphas must be a non-empty list of values >= 0")
            if int(cv_folds) < 2:
                raise AnalysisError(f"LinearProbe: cv_folds must be >= 2, got {cv_folds}")
        self.alpha = alpha
        self.alphas = tuple(float(a) for a in alphas)
        self.cv_folds = int(cv_folds)
        self.fit_intercept = bool(fit_intercept)
        self.seed = seed
        self.rcond = float(rcond)

    # -- fitting -------------------------------------------------------------------------
    def fit(self, X: Any, Y: Any, groups: Any = None) -> LinearProbe:
        """Fit on rows ``X`` [N, D] -> ``Y`` [N, S] (``[..., D]`` arrays are flattened).

        groups: sequence id per row, used only by ``alpha="cv"`` to keep sequences whole
            inside folds. Without it the rows are cut into ``cv_folds`` contiguous blocks
            (whole sequences when rows are laid out sequence by sequence)."""
        X = as_rows(X, "LinearProbe.fit X")
        Y = as_rows(Y, "LinearProbe.fit Y")
        if X.shape[0] != Y.shape[0]:
            raise AnalysisError(f"LinearProbe.fit: X has {X.shape[0]} rows but Y has {Y.shape[0]}")
        if self.alpha != "cv":
            return self.fit_stats(CrossStats(X.shape[1], Y.shape[1]).update(X, Y))
        n = X.shape[0]
        if groups is None:
            if n < self.cv_folds:
                raise AnalysisError(f"cross-validation: {n} rows for {self.cv_folds} folds")
            folds = (np.arange(n) * self.cv_folds) // n
        else:
            groups = np.asarray(as_numpy(groups)).reshape(-1)
            if groups.shape[0] != n:
                raise AnalysisError(f"LinearProbe.fit: groups has {groups.shape[0]} entries for {n} rows")
            folds = group_folds(groups, self.cv_folds, self.seed)
        fold_stats = [
            CrossStats(X.shape[1], Y.shape[1]).update(X[folds == k], Y[folds == k])
            for k in range(self.cv_folds)
        ]
        self.fit_stats(fold_stats)
        self.cv_folds_ = folds
        return self

    def fit_stats(self, stats: CrossStats | Sequence[CrossStats]) -> LinearProbe:
        """Fit from streamed statistics. With ``alpha="cv"`` pass one ``CrossStats`` per
        fold (e.g. one per block of sequences); otherwise a single one (a list is merged)."""
        fold_stats = [stats] if isinstance(stats, CrossStats) else list(stats)
        if not fold_stats:
            raise AnalysisError("LinearProbe.fit_stats: no statistics given")
        total = CrossStats(fold_stats[0].dim_x, fold_stats[0].dim_y)
        for st in fold_stats:
            total.merge(st)
        if total.count == 0:
            raise AnalysisError("LinearProbe.fit_stats: the statistics hold no rows")
        if self.alpha == "cv":
            if len(fold_stats) < 2:
                raise AnalysisError("LinearProbe: alpha='cv' needs one CrossStats per fold (at least 2)")
            self.cv_alphas_ = np.asarray(self.alphas)
            self.cv_mse_ = self._cv_curve(fold_stats)
            alpha = float(self.cv_alphas_[int(np.argmin(self.cv_mse_))])
        else:
            alpha = float(self.alpha)
        self.coef_, self.intercept_ = self._solve_stats(total, alpha)
        self.alpha_ = alpha
        self.n_features_in_, self.n_targets_ = total.dim_x, total.dim_y
        return self

    def _solve_stats(self, st: CrossStats, alpha: float) -> tuple[np.ndarray, np.ndarray]:
        A, B = _system(st, self.fit_intercept)
        W = _solve(A, B, alpha, self.rcond)
        b = st.mean_y - st.mean_x @ W if self.fit_intercept else np.zeros(st.dim_y)
        return W, b

    def _cv_curve(self, fold_stats: list[CrossStats]) -> np.ndarray:
        """Pooled validation MSE per alpha: for each fold, one eigendecomposition of the
        other folds' Gram serves every alpha."""
        sse = np.zeros(len(self.alphas))
        n_val = 0
        for k, val in enumerate(fold_stats):
            train = CrossStats(val.dim_x, val.dim_y)
            for j, st in enumerate(fold_stats):
                if j != k:
                    train.merge(st)
            if train.count == 0 or val.count == 0:
                raise AnalysisError(f"cross-validation: fold {k} is empty or holds every row")
            A, B = _system(train, self.fit_intercept)
            evals, evecs = scipy.linalg.eigh(A, check_finite=False)
            for i, a in enumerate(self.alphas):
                W = _eig_solve(evals, evecs, B, a, self.rcond)
                b = train.mean_y - train.mean_x @ W if self.fit_intercept else np.zeros(val.dim_y)
                sse[i] += _sse_from_stats(val, W, b).sum()
            n_val += val.count
        return sse / (n_val * fold_stats[0].dim_y)

    # -- prediction and scoring ----------------------------------------------------------
    def _check_fitted(self) -> None:
        if not hasattr(self, "coef_"):
            raise AnalysisError("LinearProbe: call fit() or fit_stats() first")

    def predict(self, X: Any) -> np.ndarray:
        """float64 predictions [N, S] (computed in chunks so a float32 X is never copied whole)."""
        self._check_fitted()
        X = as_rows(X, "LinearProbe.predict X", self.n_features_in_)
        out = np.empty((X.shape[0], self.n_targets_))
        step = chunk_rows(X.shape[1])
        for i in range(0, X.shape[0], step):
            out[i : i + step] = X[i : i + step].astype(np.float64) @ self.coef_ + self.intercept_
        return out

    def score(self, X: Any, Y: Any) -> dict[str, Any]:
        """mse (mean over rows and coordinates), r2 = 1 - sum SSE / sum SST over all
        coordinates (sklearn's ``variance_weighted``), r2_per_coord (NaN where Y is
        constant), n."""
        Y = as_rows(Y, "LinearProbe.score Y", self.n_targets_ if hasattr(self, "n_targets_") else None)
        pred = self.predict(X)
        if pred.shape[0] != Y.shape[0]:
            raise AnalysisError(f"LinearProbe.score: X has {pred.shape[0]} rows but Y has {Y.shape[0]}")
        return regression_scores(pred, Y)

    def score_stats(self, stats: CrossStats) -> dict[str, Any]:
        """``score`` computed from streamed statistics of the evaluation rows."""
        self._check_fitted()
        sse = _sse_from_stats(stats, self.coef_, self.intercept_)
        return _score_dict(sse, stats.syy, stats.count)


def regression_scores(pred: Any, Y: Any) -> dict[str, Any]:
    """mse, weighted r2, r2_per_coord and n of predictions against targets (float64)."""
    pred = as_rows(pred, "pred").astype(np.float64)
    Y = as_rows(Y, "targets").astype(np.float64)
    if pred.shape != Y.shape:
        raise AnalysisError(f"predictions {pred.shape} and targets {Y.shape} differ in shape")
    if Y.shape[0] == 0:
        raise AnalysisError("scoring: no rows")
    sse = np.sum((pred - Y) ** 2, axis=0)
    sst = np.sum((Y - Y.mean(axis=0)) ** 2, axis=0)
    return _score_dict(sse, sst, Y.shape[0])


# --------------------------------------------------------------------------------------
# belief probes
# --------------------------------------------------------------------------------------
def simplex_kl(B: Any, pred: Any, floor: float = 1e-12) -> np.ndarray:
    """Per-row KL(B || q) where q is ``pred`` clipped to >= ``floor`` and renormalised onto
    the simplex (a linear probe's output need not be a distribution). 0 log 0 = 0."""
    B = np.asarray(B, dtype=np.float64)
    q = np.clip(np.asarray(pred, dtype=np.float64), floor, None)
    q /= q.sum(axis=-1, keepdims=True)
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = np.where(B > 0, B * (np.log(np.where(B > 0, B, 1.0)) - np.log(q)), 0.0)
    return terms.sum(axis=-1)


def _by_position(pred: np.ndarray, Y: np.ndarray, positions: np.ndarray):
    """Per-position weighted R^2 and MSE (SST around each position's own mean)."""
    pos_vals, inv = np.unique(positions, return_inverse=True)
    P, S = pos_vals.size, Y.shape[1]
    counts = np.bincount(inv, minlength=P).astype(np.float64)
    sse = np.bincount(inv, weights=np.sum((pred - Y) ** 2, axis=1), minlength=P)
    means = np.stack([np.bincount(inv, weights=Y[:, j], minlength=P) for j in range(S)], axis=1)
    means /= counts[:, None]
    sst = np.bincount(inv, weights=np.sum((Y - means[inv]) ** 2, axis=1), minlength=P)
    with np.errstate(divide="ignore", invalid="ignore"):
        r2 = np.where(sst > 0, 1.0 - sse / np.where(sst > 0, sst, 1.0), np.nan)
    return pos_vals, r2, sse / (counts * S)


@dataclass
class ProbeResult:
    """Scores of a belief probe on held-out sequences, and of the shuffled control."""

    mse: float
    r2: float
    kl: float
    r2_per_coord: np.ndarray
    control_mse: float
    control_r2: float
    control_kl: float
    alpha: float
    n_train: int
    n_test: int
    d_in: int
    n_states: int
    positions: np.ndarray | None = None
    r2_by_position: np.ndarray | None = None
    mse_by_position: np.ndarray | None = None
    predictions: np.ndarray | None = field(default=None, repr=False)

    def to_dict(self, include_predictions: bool = False) -> dict[str, Any]:
        from ..records import to_jsonable

        d = {k: getattr(self, k) for k in self.__dataclass_fields__ if k != "predictions"}
        if include_predictions:
            d["predictions"] = self.predictions
        return to_jsonable(d)


def _flatten_pair(H: Any, B: Any, name: str):
    """Rows of (H, B); for ``[n, L, ...]`` inputs also the sequence and position of each row."""
    H, B = as_numpy(H), as_numpy(B)
    seq = pos = None
    if H.ndim == 3:
        if B.ndim != 3 or B.shape[:2] != H.shape[:2]:
            raise AnalysisError(f"{name}: states {H.shape} and targets {B.shape} are not aligned [n, L, ...]")
        n, L = H.shape[:2]
        seq = np.repeat(np.arange(n), L)
        pos = np.tile(np.arange(L), n)
    Hr, Br = as_rows(H, f"{name} states"), as_rows(B, f"{name} targets")
    if Hr.shape[0] != Br.shape[0]:
        raise AnalysisError(f"{name}: {Hr.shape[0]} state rows but {Br.shape[0]} target rows")
    return Hr, Br, seq, pos


def belief_probe(
    H_train: Any,
    B_train: Any,
    H_test: Any,
    B_test: Any,
    positions_test: Any = None,
    groups_train: Any = None,
    alpha: float | str = 0.0,
    alphas: Sequence[float] = DEFAULT_ALPHAS,
    cv_folds: int = 5,
    seed: int = 0,
    keep_predictions: bool = True,
) -> ProbeResult:
    """Fit a linear probe hidden state -> exact belief on training sequences, score it on
    test sequences, and run the shuffled-belief control.

    Inputs are rows (``H`` [N, D], ``B`` [N, S]) or aligned ``[n, L, ...]`` arrays, which are
    flattened and supply ``groups_train`` (sequence ids) and ``positions_test`` themselves.
    The control permutes the training beliefs across rows (rng ``seed``), fits the same
    way and scores on the real test beliefs: it shows what R^2 a probe reaches without any
    real state-belief correspondence (about 0, or below).
    """
    Htr, Btr, seq_tr, _ = _flatten_pair(H_train, B_train, "belief_probe train")
    Hte, Bte, _, pos_te = _flatten_pair(H_test, B_test, "belief_probe test")
    if Htr.shape[1] != Hte.shape[1] or Btr.shape[1] != Bte.shape[1]:
        raise AnalysisError(
            f"belief_probe: train ({Htr.shape[1]} -> {Btr.shape[1]}) and test "
            f"({Hte.shape[1]} -> {Bte.shape[1]}) dimensions differ"
        )
    groups = seq_tr if groups_train is None else groups_train
    positions = pos_te if positions_test is None else np.asarray(as_numpy(positions_test)).reshape(-1)
    if positions is not None and positions.shape[0] != Hte.shape[0]:
        raise AnalysisError(f"belief_probe: positions_test has {positions.shape[0]} entries for {Hte.shape[0]} rows")

    probe = LinearProbe(alpha=alpha, alphas=alphas, cv_folds=cv_folds, seed=seed).fit(Htr, Btr, groups=groups)
    pred = probe.predict(Hte)
    sc = regression_scores(pred, Bte)
    Bte64 = Bte.astype(np.float64)

    perm = np.random.default_rng(seed).permutation(Btr.shape[0])
    control = LinearProbe(alpha=alpha, alphas=alphas, cv_folds=cv_folds, seed=seed).fit(Htr, Btr[perm], groups=groups)
    cpred = control.predict(Hte)
    csc = regression_scores(cpred, Bte)

    pos_vals = r2_pos = mse_pos = None
    if positions is not None:
        pos_vals, r2_pos, mse_pos = _by_position(pred, Bte64, positions)
    return ProbeResult(
        mse=sc["mse"],
        r2=sc["r2"],
        kl=float(simplex_kl(Bte64, pred).mean()),
        r2_per_coord=sc["r2_per_coord"],
        control_mse=csc["mse"],
        control_r2=csc["r2"],
        control_kl=float(simplex_kl(Bte64, cpred).mean()),
        alpha=probe.alpha_,
        n_train=int(Htr.shape[0]),
        n_test=int(Hte.shape[0]),
        d_in=int(Htr.shape[1]),
        n_states=int(Btr.shape[1]),
        positions=pos_vals,
        r2_by_position=r2_pos,
        mse_by_position=mse_pos,
        predictions=pred if keep_predictions else None,
    )


# --------------------------------------------------------------------------------------
# one-hot worlds: classifier and coordinate regression
# --------------------------------------------------------------------------------------
@dataclass
class ClassifierResult:
    """Held-out accuracy of a linear classifier and the majority-class baseline."""

    accuracy: float
    chance: float
    n_classes: int
    n_train: int
    n_test: int
    d_in: int
    converged: bool

    def to_dict(self) -> dict[str, Any]:
        from ..records import to_jsonable

        return to_jsonable(self)


def state_classifier(
    H_train: Any,
    y_train: Any,
    H_test: Any,
    y_test: Any,
    C: float = 1.0,
    max_iter: int = 200,
    max_train: int | None = 50_000,
    seed: int = 0,
) -> ClassifierResult:
    """Multinomial logistic regression (standardised inputs) from hidden states to the
    discrete hidden state (taxi: intersection; A5: group element).

    ``chance`` is the accuracy of always answering the most frequent training class, the
    honest baseline when classes are unbalanced. ``max_train`` subsamples the training
    rows (seeded) so that thousands of classes stay quick on a CPU; ``converged`` is False
    when lbfgs stopped at ``max_iter``.
    """
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    Xtr, Xte = as_rows(H_train, "state_classifier H_train"), as_rows(H_test, "state_classifier H_test")
    ytr, yte = np.asarray(as_numpy(y_train)).reshape(-1), np.asarray(as_numpy(y_test)).reshape(-1)
    if Xtr.shape[0] != ytr.shape[0] or Xte.shape[0] != yte.shape[0]:
        raise AnalysisError("state_classifier: states and labels have different numbers of rows")
    if Xtr.shape[1] != Xte.shape[1]:
        raise AnalysisError(f"state_classifier: train has {Xtr.shape[1]} features, test {Xte.shape[1]}")
    if yte.shape[0] == 0:
        raise AnalysisError("state_classifier: no test rows")
    classes, counts = np.unique(ytr, return_counts=True)
    if classes.size < 2:
        raise AnalysisError("state_classifier: the training labels hold a single class")
    if max_train is not None and Xtr.shape[0] > max_train:
        idx = np.sort(np.random.default_rng(seed).choice(Xtr.shape[0], size=max_train, replace=False))
        Xtr, ytr = Xtr[idx], ytr[idx]
    clf = make_pipeline(StandardScaler(), LogisticRegression(C=C, max_iter=max_iter, random_state=seed))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        clf.fit(Xtr, ytr)
    n_iter = int(np.max(clf[-1].n_iter_))
    return ClassifierResult(
        accuracy=float(np.mean(clf.predict(Xte) == yte)),
        chance=float(np.mean(yte == classes[np.argmax(counts)])),
        n_classes=int(classes.size),
        n_train=int(Xtr.shape[0]),
        n_test=int(Xte.shape[0]),
        d_in=int(Xtr.shape[1]),
        converged=n_iter < max_iter,
    )


@dataclass
class RegressionResult:
    """Held-out scores of a linear regression (e.g. hidden state -> (x, y) coordinates)."""

    r2: float
    mse: float
    r2_per_coord: np.ndarray
    alpha: float
    n_train: int
    n_test: int
    d_in: int
    predictions: np.ndarray | None = field(default=None, repr=False)

    def to_dict(self) -> dict[str, Any]:
        from ..records import to_jsonable

        return to_jsonable({k: getattr(self, k) for k in self.__dataclass_fields__ if k != "predictions"})


def coordinate_regression(
    H_train: Any,
    xy_train: Any,
    H_test: Any,
    xy_test: Any,
    alpha: float | str = 0.0,
    groups_train: Any = None,
    alphas: Sequence[float] = DEFAULT_ALPHAS,
    cv_folds: int = 5,
    seed: int = 0,
    keep_predictions: bool = False,
) -> RegressionResult:
    """Linear regression from hidden states to the (x, y) position of the current
    intersection; R^2 on held-out sequences says whether the map's geometry is linearly
    readable from the states."""
    Htr, Ytr, seq_tr, _ = _flatten_pair(H_train, xy_train, "coordinate_regression train")
    Hte, Yte, _, _ = _flatten_pair(H_test, xy_test, "coordinate_regression test")
    groups = seq_tr if groups_train is None else groups_train
    probe = LinearProbe(alpha=alpha, alphas=alphas, cv_folds=cv_folds, seed=seed).fit(Htr, Ytr, groups=groups)
    sc = probe.score(Hte, Yte)
    return RegressionResult(
        r2=sc["r2"],
        mse=sc["mse"],
        r2_per_coord=sc["r2_per_coord"],
        alpha=probe.alpha_,
        n_train=int(Htr.shape[0]),
        n_test=int(Hte.shape[0]),
        d_in=int(Htr.shape[1]),
        predictions=probe.predict(Hte) if keep_predictions else None,
    )
