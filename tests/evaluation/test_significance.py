"""Tests of mscan_jax.evaluation.significance: fast DeLong vs the explicit-pair reference."""

import math

import numpy as np
import pytest
import scipy.stats

from mscan_jax.evaluation import metrics, significance


def _random_case(seed, n=120, levels=6):
  rng = np.random.default_rng(seed)
  labels = rng.integers(0, 2, n)
  labels[:2], labels[2:4] = 1, 0
  # Few distinct values: ties within each model and across classes.
  a = rng.integers(0, levels, n) + labels * rng.integers(0, 2, n)
  b = np.where(rng.random(n) < 0.6, a, rng.integers(0, levels, n)).astype(np.float64)
  return labels, a.astype(np.float32), b


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_fast_delong_matches_slow_reference(seed):
  labels, a, b = _random_case(seed)
  fast = significance.delong_test(labels, a, b)
  slow = significance.delong_test_slow(labels, a, b)
  for key in ("auc_a", "auc_b", "z", "p_value", "var"):
    assert fast[key] == pytest.approx(slow[key], abs=1e-10), key
  np.testing.assert_allclose(fast["cov"], slow["cov"], atol=1e-10)
  assert fast["auc_a"] == pytest.approx(metrics.auc(labels, a), abs=1e-12)
  assert fast["auc_b"] == pytest.approx(metrics.auc(labels, b), abs=1e-12)
  # var is the variance of the difference.
  c = fast["cov"]
  assert fast["var"] == pytest.approx(c[0, 0] + c[1, 1] - 2 * c[0, 1], abs=1e-12)
  assert 0.0 <= fast["p_value"] <= 1.0


def test_delong_hand_example():
  # Positives X = (2, 1), negatives Y = (0, 1). Model b scores X = (1, 2), Y = (1, 0).
  labels = [1, 1, 0, 0]
  a = [2.0, 1.0, 0.0, 1.0]
  b = [1.0, 2.0, 1.0, 0.0]
  # psi_a = [[1, 1], [1, .5]] -> AUC 7/8, V10 = (1, .75), V01 = (1, .75).
  # psi_b = [[.5, 1], [1, 1]] -> AUC 7/8, V10 = (.75, 1), V01 = (.75, 1).
  # var(V10_a - V10_b) = var((.25, -.25), ddof=1) = .125; same for V01 -> var = .125/2 * 2.
  out = significance.delong_test(labels, a, b)
  assert out["auc_a"] == pytest.approx(0.875) and out["auc_b"] == pytest.approx(0.875)
  assert out["var"] == pytest.approx(0.125)
  assert out["z"] == 0.0 and out["p_value"] == pytest.approx(1.0)
  # Cov of (AUC_a, AUC_b): var(V10_a) = .03125, cov(V10_a, V10_b) = -.03125, each /2, twice.
  np.testing.assert_allclose(out["cov"], [[0.03125, -0.03125], [-0.03125, 0.03125]])


def test_delong_p_value_from_z():
  labels, a, b = _random_case(7, n=200)
  out = significance.delong_test(labels, a, b)
  z = (out["auc_a"] - out["auc_b"]) / math.sqrt(out["var"])
  assert out["z"] == pytest.approx(z)
  assert out["p_value"] == pytest.approx(2 * scipy.stats.norm.sf(abs(z)))


def test_delong_identical_scores_give_p_one():
  labels, a, _ = _random_case(5)
  out = significance.delong_test(labels, a, a)
  assert out["var"] == 0.0 and out["z"] == 0.0 and out["p_value"] == 1.0
  # A perfect ranker against constant scores: both variances 0, AUCs 1 and 1/2.
  out = significance.delong_test([1, 1, 0, 0], [3.0, 2.0, 1.0, 0.0], [1.0, 1.0, 1.0, 1.0])
  assert out["auc_a"] == 1.0 and out["auc_b"] == 0.5
  assert out["z"] == math.inf and out["p_value"] == 0.0


def test_delong_clear_difference_is_significant():
  rng = np.random.default_rng(11)
  labels = rng.integers(0, 2, 2000)
  good = labels + rng.normal(size=2000)
  bad = 0.2 * labels + rng.normal(size=2000)
  out = significance.delong_test(labels, good, bad)
  assert out["auc_a"] > out["auc_b"] and out["z"] > 0 and out["p_value"] < 1e-6


def test_delong_needs_two_of_each_class():
  with pytest.raises(ValueError, match="2 positives and 2 negatives"):
    significance.delong_test([1, 0, 0], [0.1, 0.2, 0.3], [0.3, 0.2, 0.1])


def test_combine_pvalues_fisher_by_hand():
  p = [0.1, 0.2]
  stat = -2 * (math.log(0.1) + math.log(0.2))
  # chi-square with 4 dof: sf(x) = exp(-x/2) (1 + x/2).
  expected = math.exp(-stat / 2) * (1 + stat / 2)
  assert significance.combine_pvalues(p) == pytest.approx(expected)
  z = (scipy.stats.norm.isf(0.1) + scipy.stats.norm.isf(0.2)) / math.sqrt(2)
  assert significance.combine_pvalues(p, "stouffer") == pytest.approx(scipy.stats.norm.sf(z))
  assert significance.combine_pvalues([0.03]) == 0.03
  assert significance.combine_pvalues([1.0, 1.0]) == pytest.approx(1.0)
  assert significance.combine_pvalues([0.0, 0.5]) < 1e-100
  with pytest.raises(ValueError):
    significance.combine_pvalues([0.1], "tippett")


def test_paired_ttest_by_hand():
  a = [0.70, 0.72, 0.71]
  b = [0.69, 0.70, 0.70]
  d = np.array([0.01, 0.02, 0.01])
  t = d.mean() / (d.std(ddof=1) / math.sqrt(3))
  out = significance.paired_ttest(a, b)
  assert out["t"] == pytest.approx(t)
  assert out["p_value"] == pytest.approx(2 * scipy.stats.t.sf(t, df=2))
  assert out["mean_diff"] == pytest.approx(d.mean())
  one = significance.paired_ttest([0.7], [0.6])
  assert math.isnan(one["t"]) and math.isnan(one["p_value"])
  assert one["mean_diff"] == pytest.approx(0.1)


def test_significant_rule():
  a = [0.70, 0.72, 0.71]
  b = [0.69, 0.70, 0.70]                   # t = 4, df 2: t-test p = 0.057
  assert not significance.significant(a, b)
  a2 = [0.710, 0.720, 0.715]
  b2 = [0.700, 0.711, 0.704]               # differences .010, .009, .011: t-test p ~ 0.003
  assert significance.significant(a2, b2)
  assert not significance.significant(b2, a2)                       # wrong direction
  assert not significance.significant([0.8], [0.7])                 # one run: no t-test
