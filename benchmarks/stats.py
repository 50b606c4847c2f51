"""Paired comparisons over seeds, shared by the benchmarks that print them."""

from __future__ import annotations


def bootstrap_ci(diffs: list[float], n: int = 10_000, seed: int = 0) -> tuple[float, float]:
    """95 % percentile interval of the mean of ``diffs`` resampled with replacement."""
    import numpy as np

    rng = np.random.default_rng(seed)
    arr = np.asarray(diffs)
    means = arr[rng.integers(0, len(arr), (n, len(arr)))].mean(axis=1)
    return float(np.quantile(means, 0.025)), float(np.quantile(means, 0.975))


def wilcoxon_p(diffs: list[float]) -> float:
    """Two-sided Wilcoxon signed-rank p-value (zero differences split); 1.0 if all are zero."""
    from scipy.stats import wilcoxon

    if all(d == 0 for d in diffs):
        return 1.0
    return float(wilcoxon(diffs, zero_method="zsplit", alternative="two-sided").pvalue)
