"""Paired comparisons of two models with a bootstrap confidence interval, and the words that state them.

Two models scored on the same instances give paired values ``a[i]``, ``b[i]``; the comparison is the
mean of ``b - a`` with a percentile bootstrap interval obtained by resampling instances (numpy,
seeded: the same inputs always give the same interval). With ``strata`` (e.g. the seed of the run
each instance belongs to) instances are resampled within each stratum, so every seed keeps its
weight in a pooled comparison. A comparison is stated as "higher" or "lower" only when the interval
excludes 0; otherwise it is "not distinguishable". Plain numpy (already a dependency) rather than
scipy.stats.bootstrap: the paired, stratified, NaN-dropping variant needed here is a few lines.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

__all__ = ["describe_comparison", "paired_bootstrap"]


def paired_bootstrap(a: Sequence[float], b: Sequence[float], *, strata: Sequence | None = None,
                     n_resamples: int = 10_000, confidence: float = 0.95, seed: int = 0) -> dict:
    """Mean paired difference ``b - a`` with a percentile bootstrap interval over instances.

    Args:
        a, b: per-instance values of the two models, same order and length. A pair where either
            value is None or NaN is left out (e.g. a runtime of a test file that does not pass).
        strata: optional per-instance group labels; resampling is done within each group.
        n_resamples: bootstrap resamples.
        confidence: two-sided coverage of the interval (0.95: the 2.5th and 97.5th percentiles).
        seed: seed of the numpy generator.

    Returns:
        ``{"diff", "low", "high", "a_mean", "b_mean", "n", "confidence", "n_resamples"}``; ``diff``,
        ``low`` and ``high`` are None when no pair is left.
    """
    import numpy as np

    if len(a) != len(b):
        raise ValueError(f"a and b must have the same length, got {len(a)} and {len(b)}")
    if strata is not None and len(strata) != len(a):
        raise ValueError(f"strata must have one label per instance, got {len(strata)} for {len(a)}")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")

    def value(x):
        return math.nan if x is None else float(x)

    av = np.array([value(x) for x in a], dtype=float)
    bv = np.array([value(x) for x in b], dtype=float)
    keep = ~(np.isnan(av) | np.isnan(bv))
    labels = np.array(list(strata) if strata is not None else [0] * len(a), dtype=object)[keep]
    av, bv = av[keep], bv[keep]
    out = {"diff": None, "low": None, "high": None, "a_mean": None, "b_mean": None, "n": int(keep.sum()),
           "confidence": confidence, "n_resamples": n_resamples}
    if not len(av):
        return out
    d = bv - av
    rng = np.random.default_rng(seed)
    # resampled mean of d: per stratum, draw its own size with replacement; pooled mean weighted by size
    total = np.zeros(n_resamples)
    for label in dict.fromkeys(labels.tolist()):
        ds = d[labels == label]
        idx = rng.integers(0, len(ds), size=(n_resamples, len(ds)))
        total += ds[idx].sum(axis=1)
    means = total / len(d)
    tail = (1 - confidence) / 2 * 100
    low, high = np.percentile(means, [tail, 100 - tail])
    out.update(diff=float(d.mean()), low=float(low), high=float(high), a_mean=float(av.mean()),
               b_mean=float(bv.mean()))
    return out


def describe_comparison(result: dict, *, spec: str = "+.3f", scale: float = 1.0, unit: str = "",
                        words: tuple[str, str] = ("higher", "lower")) -> str:
    """``"higher (+0.12, 95% CI +0.05..+0.19)"``, ``"lower (...)"`` or ``"not distinguishable (...)"``.

    ``result`` is a :func:`paired_bootstrap` result (difference ``b - a``); ``words`` name a positive
    and a negative difference; values are multiplied by ``scale`` and formatted with ``spec``.
    """
    if result.get("diff") is None:
        return "not measurable (no instance with a value for both models)"
    diff, low, high = (result[k] * scale for k in ("diff", "low", "high"))
    level = round(result.get("confidence", 0.95) * 100)
    numbers = (f"{format(diff, spec)}{unit}, {level}% CI {format(low, spec)}..{format(high, spec)}{unit}, "
               f"n={result['n']}")
    if low > 0:
        return f"{words[0]} ({numbers})"
    if high < 0:
        return f"{words[1]} ({numbers})"
    return f"not distinguishable ({numbers})"
