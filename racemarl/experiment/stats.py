"""Statistics over seeds, from rliable (Agarwal et al., NeurIPS 2021) and scipy.

- `interval`: the confidence band of a mean over runs, per evaluation point: Student-t (scipy) or a
  percentile stratified bootstrap (rliable).
- `bootstrap_ci`: rliable's stratified bootstrap interval of an aggregate (mean, IQM) of final scores.
- `probability_of_improvement`: rliable's P(X > Y), the Mann-Whitney statistic over the runs of two
  algorithms, averaged over the tasks both ran, with its stratified bootstrap interval.

rliable draws its bootstrap resamples from numpy's global generator; every function here seeds it
with `SEED` for the call and restores its state afterwards, so the numbers are reproducible and no
caller's random stream is disturbed.
"""

from __future__ import annotations

import contextlib

import numpy as np

from racemarl.records.runs import RunDirError

CI_METHODS = ("t", "bootstrap")
BOOTSTRAP_RESAMPLES = 2000
SEED = 0


def _rliable():
    try:
        from rliable import library, metrics
    except ImportError as e:
        raise RunDirError(f"confidence intervals need rliable ({e}): pip install rliable") from e
    return library, metrics


@contextlib.contextmanager
def _seeded():
    import warnings

    state = np.random.get_state()
    np.random.seed(SEED)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # arch's notices about rliable's use of its API
            yield np.random.RandomState(SEED)
    finally:
        np.random.set_state(state)


def interval(values: np.ndarray, ci: str = "t", level: float = 0.95) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """values `[n_runs, n_points]` -> (mean, lo, hi), each `[n_points]`; one run gives lo = hi = mean."""
    if ci not in CI_METHODS:
        raise RunDirError(f"unknown confidence interval {ci!r}; valid: {', '.join(CI_METHODS)}")
    values = np.asarray(values, dtype=float)
    n = values.shape[0]
    mean = values.mean(axis=0)
    if n < 2 or values.shape[1] == 0:
        return mean, mean.copy(), mean.copy()
    if ci == "t":
        from scipy.stats import t

        half = t.ppf(0.5 + level / 2.0, n - 1) * values.std(axis=0, ddof=1) / np.sqrt(n)
        return mean, mean - half, mean + half
    library, _ = _rliable()
    with _seeded() as rs:
        _, cis = library.get_interval_estimates(
            {"x": values},
            lambda x: x.mean(axis=0),
            reps=BOOTSTRAP_RESAMPLES,
            confidence_interval_size=level,
            random_state=rs,
        )
    lo, hi = cis["x"]
    return mean, np.minimum(lo, mean), np.maximum(hi, mean)


def bootstrap_ci(scores: np.ndarray, aggregate: str = "mean", level: float = 0.95) -> tuple[float, float, float]:
    """(estimate, lo, hi) of the mean or IQM of `scores` `[n_runs]` or `[n_runs, n_tasks]`."""
    library, metrics = _rliable()
    scores = np.asarray(scores, dtype=float)
    scores = scores[:, None] if scores.ndim == 1 else scores
    func = {"mean": metrics.aggregate_mean, "iqm": metrics.aggregate_iqm}[aggregate]
    point = float(func(scores))
    if scores.shape[0] < 2:
        return point, point, point
    with _seeded() as rs:
        _, cis = library.get_interval_estimates(
            {"x": scores},
            lambda x: np.array([func(x)]),
            reps=BOOTSTRAP_RESAMPLES,
            confidence_interval_size=level,
            random_state=rs,
        )
    lo, hi = (float(v) for v in cis["x"][:, 0])
    return point, lo, hi


def probability_of_improvement(
    x: np.ndarray, y: np.ndarray, level: float = 0.95
) -> tuple[float, float | None, float | None]:
    """P(X > Y) of final scores `[n_runs_x, n_tasks]`, `[n_runs_y, n_tasks]` (same tasks, same order), with its
    stratified bootstrap interval (None when either side has a single run)."""
    library, metrics = _rliable()
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    point = float(metrics.probability_of_improvement(x, y))
    if x.shape[0] < 2 or y.shape[0] < 2:
        return point, None, None
    with _seeded() as rs:
        _, cis = library.get_interval_estimates(
            {"xy": [x, y]},
            metrics.probability_of_improvement,
            reps=BOOTSTRAP_RESAMPLES,
            confidence_interval_size=level,
            random_state=rs,
        )
    lo, hi = (float(v) for v in np.ravel(cis["xy"]))
    return point, lo, hi
