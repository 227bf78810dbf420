"""Statistics over seeds for `lingotune compare`: the t-interval and two paired tests.

(The bootstrap intervals over examples within one evaluation are `lingotune.eval.metrics`.)
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence


def t_interval(values: Sequence[float]) -> tuple[float, float]:
    """Mean and the half-width of its 95% t-interval over seeds (0 for a single value)."""
    from scipy import stats

    n = len(values)
    m = sum(values) / n
    if n < 2:
        return m, 0.0
    sd = math.sqrt(sum((v - m) ** 2 for v in values) / (n - 1))
    return m, float(stats.t.ppf(0.975, n - 1) * sd / math.sqrt(n))


def paired_permutation(diffs: Sequence[float], n_perm: int = 10000, seed: int = 0) -> float:
    """Two-sided p-value of a paired sign-flip permutation test that the mean difference is 0."""
    if not diffs or all(d == 0 for d in diffs):
        return 1.0
    obs = abs(sum(diffs))
    rng = random.Random(seed)
    hits = 0
    for _ in range(n_perm):
        s = sum(d if rng.random() < 0.5 else -d for d in diffs)
        if abs(s) >= obs - 1e-12:
            hits += 1
    return (hits + 1) / (n_perm + 1)


def paired_t_pvalue(a: Sequence[float], b: Sequence[float]) -> float:
    """Two-sided p-value of a paired t-test of a against b (1.0 for one pair or no difference)."""
    from scipy import stats

    if len(a) < 2 or all(x == y for x, y in zip(a, b)):
        return 1.0
    diffs = [x - y for x, y in zip(a, b)]
    if max(diffs) - min(diffs) <= 1e-12 * max(1.0, abs(diffs[0])):  # one and the same difference on every pair
        return 0.0
    return float(stats.ttest_rel(a, b).pvalue)
