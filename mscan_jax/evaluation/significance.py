"""Significance of an AUC difference: the `*` of Table 1 ("p-value < 0.05 against the best
baseline", paper §4.2).

Within one seed, two models scored on the same test set give correlated AUCs; DeLong, DeLong &
Clarke-Pearson (1988) estimate their covariance from the structural components
psi(X_i, Y_j) = 1[X_i > Y_j] + 0.5 * 1[X_i == Y_j] (X: scores of positives, Y: of negatives):

  V10_i = mean_j psi(X_i, Y_j),  V01_j = mean_i psi(X_i, Y_j),  AUC = mean V10 = mean V01,
  S = S10 / m + S01 / n   (S10, S01: sample covariances, across models, of V10 and V01),
  z = (AUC_a - AUC_b) / sqrt(S_aa + S_bb - 2 S_ab),  two-sided p = 2 * (1 - Phi(|z|)).

`delong_test` is the fast O(n log n) form of Sun & Xu (2014), where V10 and V01 come from
mid-ranks instead of the (m x n) pair matrix; `delong_test_slow` builds that matrix and serves as
the reference in tests.

How runs are combined (the rule used in the report):
  1. the `*` rule (`significant`): the mean AUC of a is higher AND a paired t-test over runs
     (model seeds and data seeds; `paired_ttest`) gives p below the level. Runs of different
     seeds are the independent replicates; with fewer than 2 the t-test is undefined (p = nan),
     so no `*` can be given.
  2. DeLong's test per run (`delong_test`) and their Fisher combination (`combine_pvalues`) are
     auxiliary only: the per-seed tests share one test set, so they are not independent, and
     Fisher's method, which assumes they are, overstates significance (one cell gave 5.7e-10
     where the paired t-test gave 0.82).
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import scipy.stats


def _split_by_class(labels: Any, *scores: Any) -> tuple[np.ndarray, np.ndarray]:
  """Scores (K, N) -> positives' scores (K, m) and negatives' scores (K, n), validated."""
  y = np.asarray(labels, dtype=np.float64)
  s = np.stack([np.asarray(x, dtype=np.float64) for x in scores])        # (K, N)
  if y.ndim != 1 or s.shape[1:] != y.shape:
    raise ValueError(f"labels {y.shape} and scores {s.shape[1:]} must be 1-D of one length")
  if not np.isin(y, (0.0, 1.0)).all():
    raise ValueError("labels: values must be 0 or 1")
  if not np.isfinite(s).all():
    raise ValueError("scores: values must be finite")
  pos, neg = y == 1, y == 0
  if pos.sum() < 2 or neg.sum() < 2:
    raise ValueError(f"DeLong's test needs at least 2 positives and 2 negatives, got "
                     f"{int(pos.sum())} and {int(neg.sum())}")
  return s[:, pos], s[:, neg]


def _result(aucs: np.ndarray, v10: np.ndarray, v01: np.ndarray) -> dict:
  """DeLong statistics from the structural components v10 (2, m) and v01 (2, n)."""
  m, n = v10.shape[1], v01.shape[1]
  cov = np.cov(v10) / m + np.cov(v01) / n                                 # (2, 2)
  # Variance of the difference from the differenced components: exactly 0 for identical
  # scores and never negative by rounding (equal to cov[0,0] + cov[1,1] - 2 cov[0,1]).
  var = float(np.var(v10[0] - v10[1], ddof=1) / m + np.var(v01[0] - v01[1], ddof=1) / n)
  diff = float(aucs[0] - aucs[1])
  if var > 0:
    z = diff / np.sqrt(var)
    p = float(2.0 * scipy.stats.norm.sf(abs(z)))
  elif diff == 0:
    z, p = 0.0, 1.0
  else:  # zero variance but different AUCs (e.g. a perfect ranker vs constant scores)
    z, p = float(np.copysign(np.inf, diff)), 0.0
  return {"auc_a": float(aucs[0]), "auc_b": float(aucs[1]), "z": float(z), "p_value": p,
          "var": var, "cov": cov}


def delong_test(labels: Any, scores_a: Any, scores_b: Any) -> dict:
  """DeLong's test of AUC_a == AUC_b on one test set, fast form (Sun & Xu 2014), O(N log N).

  Returns {"auc_a", "auc_b", "z", "p_value" (two-sided), "var" (variance of AUC_a - AUC_b),
  "cov" ((2, 2) covariance matrix of (AUC_a, AUC_b))}. When the variance of the difference is 0
  (e.g. identical scores) z = 0 and p = 1 if the AUCs are equal, else z = +-inf and p = 0.
  """
  x, yn = _split_by_class(labels, scores_a, scores_b)                     # (2, m), (2, n)
  m, n = x.shape[1], yn.shape[1]
  tx = scipy.stats.rankdata(x, axis=1)                                    # mid-ranks, positives
  ty = scipy.stats.rankdata(yn, axis=1)                                   # among negatives
  tz = scipy.stats.rankdata(np.concatenate([x, yn], axis=1), axis=1)      # among all, (2, m + n)
  aucs = (tz[:, :m].sum(axis=1) - m * (m + 1) / 2.0) / (m * n)            # (2,)
  v10 = (tz[:, :m] - tx) / n                                              # (2, m) negatives below
  v01 = 1.0 - (tz[:, m:] - ty) / m                                        # (2, n) positives above
  return _result(aucs, v10, v01)


def delong_test_slow(labels: Any, scores_a: Any, scores_b: Any) -> dict:
  """Reference DeLong et al. (1988) with the explicit (m x n) matrix psi(X_i, Y_j); small data only.

  Same return value as `delong_test`.
  """
  x, yn = _split_by_class(labels, scores_a, scores_b)                     # (2, m), (2, n)
  xi, yj = x[:, :, None], yn[:, None, :]
  psi = (xi > yj).astype(np.float64) + 0.5 * (xi == yj)                   # (2, m, n)
  aucs = psi.mean(axis=(1, 2))                                            # (2,)
  return _result(aucs, psi.mean(axis=2), psi.mean(axis=1))


def combine_pvalues(pvalues: Sequence[float], method: str = "fisher") -> float:
  """Combine independent p-values (one DeLong test per seed) by Fisher's or Stouffer's method.

  p-values are clipped to [1e-300, 1 - 1e-16] so that a p of exactly 0 or 1 gives a finite
  statistic. Stouffer's method is one-sided in its z-scores; with two-sided inputs prefer Fisher.
  """
  if method not in ("fisher", "stouffer"):
    raise ValueError(f"method must be 'fisher' or 'stouffer', got {method!r}")
  p = np.asarray(pvalues, dtype=np.float64).ravel()
  if p.size == 0:
    raise ValueError("combine_pvalues: no p-values")
  if np.isnan(p).any() or (p < 0).any() or (p > 1).any():
    raise ValueError(f"combine_pvalues: p-values must lie in [0, 1], got {p.tolist()}")
  if p.size == 1:
    return float(p[0])
  p = np.clip(p, 1e-300, 1.0 - 1e-16)
  return float(scipy.stats.combine_pvalues(p, method=method).pvalue)


def paired_ttest(a_per_seed: Sequence[float], b_per_seed: Sequence[float]) -> dict:
  """Two-sided paired t-test of per-seed metrics a vs b (same seeds, same order).

  Returns {"t", "p_value", "mean_diff"} (mean_diff = mean(a - b)). With fewer than 2 seeds the
  test is undefined: t and p_value are nan. When every seed gives the same difference the
  standard error is 0: t = 0, p = 1 if that difference is 0, else t = +-inf, p = 0.
  """
  a = np.asarray(a_per_seed, dtype=np.float64).ravel()
  b = np.asarray(b_per_seed, dtype=np.float64).ravel()
  if a.shape != b.shape:
    raise ValueError(f"paired_ttest: {a.size} seeds for a but {b.size} for b")
  d = a - b
  mean_diff = float(d.mean()) if d.size else float("nan")
  if d.size < 2:
    return {"t": float("nan"), "p_value": float("nan"), "mean_diff": mean_diff}
  if np.all(d == d[0]):
    if d[0] == 0:
      return {"t": 0.0, "p_value": 1.0, "mean_diff": mean_diff}
    return {"t": float(np.copysign(np.inf, d[0])), "p_value": 0.0, "mean_diff": mean_diff}
  res = scipy.stats.ttest_rel(a, b)
  return {"t": float(res.statistic), "p_value": float(res.pvalue), "mean_diff": mean_diff}


def significant(auc_a_runs: Sequence[float], auc_b_runs: Sequence[float],
                level: float = 0.05) -> bool:
  """The `*` rule: the mean AUC of a > b and the paired t-test over runs gives p < level.

  `auc_*_runs` are the per-run AUCs, paired by (model seed, data seed). False with fewer than 2
  runs (the t-test is undefined).
  """
  a = np.asarray(auc_a_runs, dtype=np.float64)
  b = np.asarray(auc_b_runs, dtype=np.float64)
  if a.size != b.size:
    raise ValueError(f"significant: {a.size} runs of a paired with {b.size} runs of b")
  if a.size == 0 or not a.mean() > b.mean():
    return False
  return bool(paired_ttest(a, b)["p_value"] < level)
