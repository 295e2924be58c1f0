"""Linear probes: closed form from streamed statistics vs sklearn on the same data.

    .venv/bin/python benchmarks/probes.py            # N = 1e5 (S = 3, 60) and 1e6 (S = 3)
    .venv/bin/python benchmarks/probes.py --quick    # N = 1e5 only

Data: D = 256 correlated features with an offset (like hidden states), S targets that
depend linearly on them plus noise. Both sides get the same float64 arrays.

- least squares: ``LinearProbe(alpha=0)`` vs ``sklearn.linear_model.LinearRegression``;
- ridge: ``LinearProbe(alpha=1)`` vs ``sklearn.linear_model.Ridge(alpha=1)`` (solver
  "auto", i.e. Cholesky on X^T X for dense data: the same algebra as ours, so the
  difference is in passes over the data and copies);
- ridgecv (first case only): ``LinearProbe(alpha="cv")`` over 5 alphas x 5 folds of
  whole sequences (100 rows each) vs ``GridSearchCV(Ridge, cv=PredefinedSplit(same
  folds))``, which refits 25 times; ours needs one pass and one eigendecomposition per fold.

A small warm-up fit runs first so that one-off library initialisation is not timed.

Printed per case: wall time of each and the ratio sklearn / ours, peak memory of each,
and the largest absolute difference of the coefficients and of the predictions on 10,000
held-out rows. Peak memory is the ``tracemalloc`` peak of Python/numpy allocations made
during ``fit`` (the input arrays already exist and are not counted; LAPACK-internal
buffers are not seen).
"""
from __future__ import annotations

import argparse

from _common import measure  # noqa: E402  (benchmarks/ is on sys.path when run as a script)


def make_data(n: int, d: int, s: int, seed: int = 0):
    import numpy as np

    rng = np.random.default_rng(seed)
    mix = rng.normal(size=(d, d)) / np.sqrt(d) + np.eye(d)
    X = np.empty((n, d))
    for i in range(0, n, 65536):
        m = min(65536, n - i)
        X[i : i + m] = rng.standard_normal((m, d)) @ mix + 0.3
    W = rng.normal(size=(d, s)) / np.sqrt(d)
    Y = X @ W + 0.1 * rng.standard_normal((n, s))
    Xt = rng.standard_normal((10_000, d)) @ mix + 0.3
    return X, Y, Xt


def run_case(n: int, s: int, d: int, with_cv: bool) -> None:
    """Fit ours and sklearn's estimators on one data set and print a row per method."""
    import numpy as np
    from sklearn.linear_model import LinearRegression, Ridge
    from sklearn.model_selection import GridSearchCV, PredefinedSplit

    from nextlat_probe.analysis.probes import LinearProbe, group_folds

    X, Y, Xt = make_data(n, d, s, seed=n + s)
    groups = np.arange(n) // 100  # "sequences" of 100 rows
    methods = [
        ("ols", LinearProbe(alpha=0.0), LinearRegression()),
        ("ridge", LinearProbe(alpha=1.0), Ridge(alpha=1.0)),
    ]
    if with_cv:
        alphas = [1e-4, 1e-2, 1.0, 1e2, 1e4]
        split = PredefinedSplit(group_folds(groups, 5, seed=0))  # the folds ours uses
        grid = GridSearchCV(Ridge(), {"alpha": alphas}, cv=split, scoring="neg_mean_squared_error")
        methods.append(("ridgecv", LinearProbe(alpha="cv", alphas=alphas, cv_folds=5), grid))
    for name, ours, ref in methods:
        _, to, mo = measure(lambda: ours.fit(X, Y, groups=groups))  # noqa: B023 - called at once
        _, tr, mr = measure(lambda: ref.fit(X, Y))  # noqa: B023
        if name == "ridgecv":
            assert ours.alpha_ == ref.best_params_["alpha"], (ours.alpha_, ref.best_params_)
            ref = ref.best_estimator_
        dcoef = np.abs(ours.coef_ - ref.coef_.T).max()
        dpred = np.abs(ours.predict(Xt) - ref.predict(Xt)).max()
        print(
            f"{n:>9,} {s:>3} {name:>7} | {to:>7.3f} {tr:>9.3f} {tr / to:>5.1f}x | "
            f"{mo:>8.1f} {mr:>8.1f} | {dcoef:>10.2e} {dpred:>10.2e}",
            flush=True,
        )


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="N = 1e5 only")
    ap.add_argument("--d", type=int, default=256, help="feature dimension (default 256)")
    args = ap.parse_args(argv)

    from sklearn.linear_model import LinearRegression, Ridge

    from nextlat_probe.analysis.probes import LinearProbe

    d = args.d
    Xw, Yw, _ = make_data(2000, d, 3)  # warm-up: BLAS threads, lazy imports
    LinearProbe().fit(Xw, Yw)
    LinearRegression().fit(Xw, Yw)
    Ridge().fit(Xw, Yw)

    cases = [(100_000, 3), (100_000, 60)] + ([] if args.quick else [(1_000_000, 3)])
    print(f"linear probe fit, D = {d}, float64 inputs")
    header = (
        f"{'N':>9} {'S':>3} {'method':>7} | {'ours s':>7} {'sklearn s':>9} {'ratio':>6} | "
        f"{'ours MiB':>8} {'skl MiB':>8} | {'max|dcoef|':>10} {'max|dpred|':>10}"
    )
    print(header)
    print("-" * len(header))
    for i, (n, s) in enumerate(cases):
        run_case(n, s, d, with_cv=i == 0)
    print(
        "\nratio = sklearn time / ours. MiB = tracemalloc peak of allocations during fit "
        "(inputs excluded; LAPACK-internal buffers not seen)."
    )


if __name__ == "__main__":
    main()
