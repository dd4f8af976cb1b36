"""fastdistill.evaluation.stats: the paired bootstrap interval and the words that state it."""

import math

import numpy as np
import pytest

from fastdistill.evaluation.stats import describe_comparison, paired_bootstrap


def test_identical_models_give_an_interval_around_zero():
    a = np.random.default_rng(1).uniform(size=96).tolist()
    res = paired_bootstrap(a, a, n_resamples=2000)
    assert res["diff"] == 0.0 and res["low"] == 0.0 and res["high"] == 0.0 and res["n"] == 96
    assert describe_comparison(res).startswith("not distinguishable (+0.000")


def test_noise_only_difference_is_not_distinguishable():
    rng = np.random.default_rng(2)
    a = rng.uniform(size=96)
    b = a + rng.normal(0, 0.2, size=96) - 0.0  # pure noise, mean shift 0
    b = b - (b - a).mean()  # exact mean difference 0
    res = paired_bootstrap(a.tolist(), b.tolist(), n_resamples=4000, seed=3)
    assert res["diff"] == pytest.approx(0.0, abs=1e-12)
    assert res["low"] < 0 < res["high"]
    assert describe_comparison(res).startswith("not distinguishable")


def test_a_clear_shift_excludes_zero_and_matches_the_normal_approximation():
    rng = np.random.default_rng(4)
    a = rng.uniform(size=200)
    d = rng.normal(0.12, 0.1, size=200)
    b = a + d
    res = paired_bootstrap(a.tolist(), b.tolist(), n_resamples=20_000, seed=5)
    assert res["diff"] == pytest.approx(d.mean())
    # the bootstrap interval of a mean is close to mean +- 1.96 standard errors
    se = d.std(ddof=1) / math.sqrt(len(d))
    assert res["low"] == pytest.approx(d.mean() - 1.96 * se, abs=0.25 * se)
    assert res["high"] == pytest.approx(d.mean() + 1.96 * se, abs=0.25 * se)
    text = describe_comparison(res)
    assert text.startswith("higher (+0.1") and "95% CI +0." in text
    flipped = paired_bootstrap(b.tolist(), a.tolist(), n_resamples=2000)
    assert describe_comparison(flipped, words=("higher", "lower")).startswith("lower (-0.1")


def test_missing_values_are_dropped_in_pairs_and_results_are_seeded():
    a = [1.0, None, 3.0, float("nan"), 5.0]
    b = [2.0, 4.0, None, 1.0, 6.0]
    res = paired_bootstrap(a, b, n_resamples=500, seed=7)
    assert res["n"] == 2 and res["diff"] == 1.0 and res["a_mean"] == 3.0 and res["b_mean"] == 4.0
    assert res == paired_bootstrap(a, b, n_resamples=500, seed=7)
    empty = paired_bootstrap([None], [1.0])
    assert empty["diff"] is None and empty["n"] == 0
    assert describe_comparison(empty).startswith("not measurable")
    with pytest.raises(ValueError):
        paired_bootstrap([1.0], [1.0, 2.0])


def test_strata_keep_each_group_weight():
    # stratum 0: differences all +1, stratum 1: all -1, equal sizes: every stratified resample has mean 0
    a = [0.0] * 20
    b = [1.0] * 10 + [-1.0] * 10
    res = paired_bootstrap(a, b, strata=[0] * 10 + [1] * 10, n_resamples=1000)
    assert res["low"] == res["high"] == 0.0
    loose = paired_bootstrap(a, b, n_resamples=1000)
    assert loose["low"] < -0.2 and loose["high"] > 0.2
