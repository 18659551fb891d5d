"""Evaluation metrics, computed on the host in numpy (paper §4.1.2).

The paper reports AUC in each scenario and over all scenarios (`#All`), and RelaImpr against a
reference model (Single per scenario, Mix on `#All`). AUC cannot be averaged over batches, so the
evaluator gathers every test prediction and calls `evaluate_predictions` once.

All AUCs here are the exact Mann-Whitney statistic

    AUC = P(score_pos > score_neg) + 0.5 * P(score_pos == score_neg),

computed from average ("mid") ranks in O(n log n): a stable sort by score, then a stable sort by
group, puts each group's scores in order; runs of equal (group, score) get the mean of their
ranks, and per-group rank sums of the positives come from `np.bincount`. No Python loop runs over
examples or groups. `evaluate_predictions` sorts the scores once for all its AUCs.

An AUC needs both classes: a set (or group) with only positives or only negatives gets `nan`.

RelaImpr (Yan et al. 2014, used by DIN) = ((AUC - 0.5) / (AUC_ref - 0.5) - 1) * 100 %.
GAUC (DIN, Zhou et al. 2018) = sum_u n_u * AUC_u / sum_u n_u over users u that have both classes,
n_u = number of the user's samples.
"""

from __future__ import annotations

from typing import Any

import numpy as np


# Samples per chunk of the element-wise sums (log loss): bounded temporaries.
_CHUNK = 1 << 20


def _as_1d(x: Any, name: str, dtype=np.float64) -> np.ndarray:
  """x as a 1-D array of `dtype`; dtype "same_kind": floats and integers kept as they are (no
  widening copy: orders, ties and ids are the same), others as float64."""
  a = np.asarray(x)
  if a.ndim != 1:
    raise ValueError(f"{name}: expected a 1-D array, got shape {a.shape}")
  if dtype == "same_kind":
    ok = np.issubdtype(a.dtype, np.floating) or np.issubdtype(a.dtype, np.integer)
    return a if ok else a.astype(np.float64)
  return a.astype(dtype, copy=False)


def _check_labels(labels: np.ndarray, name: str = "labels") -> None:
  bad = np.flatnonzero((labels != 0) & (labels != 1))
  if bad.size:
    raise ValueError(f"{name}: values must be 0 or 1; row {bad[0]} holds {labels[bad[0]]!r} "
                     f"({bad.size} bad rows)")


def _check_finite(x: np.ndarray, name: str) -> None:
  bad = np.flatnonzero(~np.isfinite(x))
  if bad.size:
    raise ValueError(f"{name}: values must be finite; row {bad[0]} holds {x[bad[0]]!r} "
                     f"({bad.size} non-finite rows)")


def _check_same_length(**arrays: np.ndarray) -> None:
  lengths = {k: len(v) for k, v in arrays.items()}
  if len(set(lengths.values())) > 1:
    raise ValueError(f"arrays must have the same length, got {lengths}")


def _narrow(index: np.ndarray, bound: int) -> np.ndarray:
  """`index` (values in 0..bound-1) as int32 when `bound` allows (43M-sample orders and group
  indices: 4 bytes per sample instead of numpy's int64), else unchanged."""
  return index.astype(np.int32, copy=False) if bound <= np.iinfo(np.int32).max else index


class _GroupRanks:
  """Mid-ranks of scores within groups; label-independent, so one sort serves several labels.

  scores (N,) finite, group_index (N,) in 0..n_groups-1. `score_order` (N,), a stable argsort
  of `scores`, may be passed to share one float sort between groupings.

  Memory (the test split of Ali-CCP is 43M samples): it keeps 16-20 bytes per sample (`order`
  int32 below 2**31 samples, the group of each sorted position in the smallest integer type,
  the float64 mid-rank) and frees its temporaries as it goes (at most ~3 int64 per sample).
  """

  def __init__(self, scores: np.ndarray, group_index: np.ndarray, n_groups: int,
               score_order: np.ndarray | None = None):
    n = len(scores)
    self.n_groups = n_groups
    self.counts = np.bincount(group_index, minlength=n_groups)            # (G,)
    if score_order is None:
      score_order = np.argsort(scores, kind="stable")
    if n_groups > 1:  # stable sort by group keeps the score order inside each group
      g = group_index[score_order]
      by_group = np.argsort(g, kind="stable")
      order = score_order[by_group]
      g = g[by_group]
      del by_group
    else:
      order = score_order
      g = np.zeros(n, np.uint8)
    g = g.astype(np.min_scalar_type(max(n_groups - 1, 0)), copy=False)   # (N,) smallest int
    self.order = _narrow(order, n)
    del order
    s = scores[self.order]
    new_run = np.ones(n, dtype=bool)                                      # start of a tie run
    new_run[1:] = (g[1:] != g[:-1]) | (s[1:] != s[:-1])
    del s
    run_start = np.flatnonzero(new_run)                                   # (R,)
    run_end = np.append(run_start[1:], n)                                 # (R,) exclusive
    run_end += run_start + 1
    del run_start
    run_of = np.cumsum(new_run) - 1                                       # (N,)
    del new_run
    twice = run_end[run_of]                                               # (N,) int64
    del run_of, run_end
    group_start = np.concatenate([[0], np.cumsum(self.counts)[:-1]])      # (G,)
    twice -= 2 * group_start[g]
    self.group_sorted = g                                                 # (N,)
    # 1-based mid-rank of each sorted position within its group.
    self.rank = twice / 2.0                                               # (N,)

  def auc(self, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Mann-Whitney AUC of each group for 0/1 labels (N,): (auc, n_pos, n_neg), each (G,).

    auc is nan where a group lacks a class.
    """
    y = labels[self.order]
    n_pos = np.bincount(self.group_sorted, weights=y, minlength=self.n_groups)        # (G,)
    n_neg = self.counts - n_pos
    pos_rank_sum = np.bincount(self.group_sorted, weights=self.rank * y,
                               minlength=self.n_groups)                               # (G,)
    denom = n_pos * n_neg
    with np.errstate(divide="ignore", invalid="ignore"):
      auc = np.where(denom > 0, (pos_rank_sum - n_pos * (n_pos + 1) / 2.0) / denom, np.nan)
    return auc, n_pos, n_neg


def _grouped_auc_arrays(labels: np.ndarray, scores: np.ndarray, group_index: np.ndarray,
                        n_groups: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """Mann-Whitney AUC of each group 0..n_groups-1: (auc, n_pos, n_neg), each (G,)."""
  return _GroupRanks(scores, group_index, n_groups).auc(labels)


def _prepare(labels: Any, scores: Any) -> tuple[np.ndarray, np.ndarray]:
  y = _as_1d(labels, "labels")
  s = _as_1d(scores, "scores")
  _check_same_length(labels=y, scores=s)
  _check_labels(y)
  _check_finite(s, "scores")
  return y, s


def auc(labels: Any, scores: Any) -> float:
  """Exact ROC AUC (Mann-Whitney, ties count 1/2). `nan` when only one class is present."""
  y, s = _prepare(labels, scores)
  out, _, _ = _grouped_auc_arrays(y, s, np.zeros(len(y), dtype=np.int64), 1)
  return float(out[0])


def grouped_auc(labels: Any, scores: Any, groups: Any) -> dict[int, float]:
  """AUC of each group value (e.g. per scenario): {group: auc}; `nan` for a one-class group."""
  y, s = _prepare(labels, scores)
  g = _as_1d(groups, "groups", dtype=np.int64)
  _check_same_length(labels=y, groups=g)
  values, index = np.unique(g, return_inverse=True)
  out, _, _ = _grouped_auc_arrays(y, s, index, len(values))
  return {int(v): float(a) for v, a in zip(values, out)}


def gauc(labels: Any, scores: Any, user_ids: Any) -> float:
  """User-weighted AUC (DIN's GAUC): sum_u n_u AUC_u / sum_u n_u over users with both classes.

  n_u is the user's number of samples. `nan` when no user has both classes.
  """
  y, s = _prepare(labels, scores)
  u = _as_1d(user_ids, "user_ids", dtype=np.int64)
  _check_same_length(labels=y, user_ids=u)
  values, index = np.unique(u, return_inverse=True)
  out, n_pos, n_neg = _grouped_auc_arrays(y, s, index, len(values))
  return _weighted_auc(out, n_pos + n_neg)


def user_pooled_auc(labels: Any, scores: Any, user_ids: Any) -> float:
  """Per-user AUC over each user's candidates pooled across scenarios, averaged over users.

  This is the ranking Eq. (12) is about: for one user, do the scores order the candidates of
  all scenarios as the labels do? Unweighted mean over the users with both classes (GAUC weighs
  them by their sample count); `nan` when no user has both classes.
  """
  y, s = _prepare(labels, scores)
  u = _as_1d(user_ids, "user_ids", dtype=np.int64)
  _check_same_length(labels=y, user_ids=u)
  values, index = np.unique(u, return_inverse=True)
  out, _, _ = _grouped_auc_arrays(y, s, index, len(values))
  return _mean_defined(out)


def _mean_defined(values: np.ndarray) -> float:
  valid = np.isfinite(values)
  return float(values[valid].mean()) if valid.any() else float("nan")


# Validation metrics that model selection (early stopping, best checkpoint) may use:
# config.train.select_metric -> the value in `evaluate_predictions`' output.
SELECT_METRICS = {
    "mean_scenario_auc": lambda m: m["auc"]["mean_per_scenario"],   # what the paper reports
    "auc_all": lambda m: m["auc"]["all"],         # pooled #All: mostly scenario base rates
    "gauc": lambda m: m["gauc"],
}


def select_value(metrics: dict, name: str) -> float:
  """The model-selection value `name` (one of SELECT_METRICS) of evaluate_predictions' output."""
  if name not in SELECT_METRICS:
    raise ValueError(f"select metric {name!r} is unknown; valid: {', '.join(SELECT_METRICS)}")
  return float(SELECT_METRICS[name](metrics))


def _weighted_auc(group_auc: np.ndarray, weight: np.ndarray) -> float:
  """sum w AUC / sum w over groups whose AUC is defined; nan when none is."""
  valid = np.isfinite(group_auc)
  if not valid.any():
    return float("nan")
  w = weight[valid]
  return float((w * group_auc[valid]).sum() / w.sum())


def logloss(labels: Any, probs: Any, eps: float = 1e-7) -> float:
  """Mean binary cross-entropy of probabilities clipped to [eps, 1 - eps]. `nan` on no samples."""
  y = _as_1d(labels, "labels")
  p = _as_1d(probs, "probs", "same_kind")
  _check_same_length(labels=y, probs=p)
  _check_labels(y)
  _check_finite(p, "probs")
  if len(y) == 0:
    return float("nan")
  total = 0.0
  for lo in range(0, len(y), _CHUNK):                 # a few float64 temporaries per chunk only
    yc = y[lo:lo + _CHUNK]
    pc = np.clip(p[lo:lo + _CHUNK].astype(np.float64), eps, 1.0 - eps)
    total += float((yc * np.log(pc) + (1.0 - yc) * np.log1p(-pc)).sum())
  return -total / len(y)


def relaimpr(auc: float, auc_ref: float) -> float:
  """RelaImpr (%): ((auc - 0.5) / (auc_ref - 0.5) - 1) * 100 (§4.1.2); nan if auc_ref is 0.5."""
  if auc_ref == 0.5:
    return float("nan")
  return float(((auc - 0.5) / (auc_ref - 0.5) - 1.0) * 100.0)


def _auc_block(all_auc: float, per_auc: np.ndarray, scen_values: np.ndarray) -> dict:
  return {"all": all_auc, "mean_per_scenario": _mean_defined(per_auc),
          "per_scenario": {str(int(v)): float(a) for v, a in zip(scen_values, per_auc)}}


def evaluate_predictions(labels: Any, scores: Any, probs: Any, scenarios: Any, user_ids: Any,
                         true_like: Any = None, mask: Any = None) -> dict:
  """All test metrics of one model on one test set, as a JSON-ready dict.

  Args (N samples; N may include evaluation padding, removed by `mask`):
    labels     (N,) observed clicks 0/1.
    scores     (N,) ranking scores (the debiased y_db of Eq. 12 for an SBE model); used for AUCs.
    probs      (N,) click probabilities sigmoid(y_uis); used for log loss and mean_pred.
    scenarios  (N,) scenario ids, or (N, Fs) scenario fields whose column 0 is the id.
    user_ids   (N,) user index, for GAUC.
    true_like  (N,) optional ground-truth liked outcome (synthetic data only).
    mask       (N,) optional, nonzero / True for real samples.

  Returns
    {"auc": {"all": x, "mean_per_scenario": x, "per_scenario": {"<id>": x}}, "gauc": x,
     "logloss": x, "mean_label": x, "mean_pred": x, "n_test": n, "n_per_scenario": {"<id>": n}}
  plus, when `true_like` is given, "true_interest_auc" (the same block, AUC of `scores`
  against `true_like`), "true_interest_gauc" and "true_interest_user_auc" (`user_pooled_auc`
  against `true_like`). AUCs of one-class sets are nan and left out of means.
  """
  scen = np.asarray(scenarios)
  if scen.ndim == 2:
    scen = scen[:, 0]
  # Scores, probabilities and ids keep their dtype (float32 / int32 from `predict`): no widened
  # copies of 43M samples; the sort order, ties and groups are the same.
  arrays = {"labels": _as_1d(labels, "labels"), "scores": _as_1d(scores, "scores", "same_kind"),
            "probs": _as_1d(probs, "probs", "same_kind"),
            "scenarios": _as_1d(scen, "scenarios", "same_kind"),
            "user_ids": _as_1d(user_ids, "user_ids", "same_kind")}
  if true_like is not None:
    arrays["true_like"] = _as_1d(true_like, "true_like")
  if mask is not None:
    arrays["mask"] = _as_1d(mask, "mask")
  _check_same_length(**arrays)
  if mask is not None:
    keep = arrays.pop("mask") != 0
    arrays = {k: v[keep] for k, v in arrays.items()}
  y, s, p = arrays["labels"], arrays["scores"], arrays["probs"]
  n = len(y)
  if n == 0:
    raise ValueError("evaluate_predictions: no samples (after masking)")
  _check_labels(y)
  _check_finite(s, "scores")
  _check_finite(p, "probs")
  targets = {"": y}                                   # label sets ranked against: "" = clicks
  if true_like is not None:
    targets["true_interest_"] = arrays["true_like"]
    _check_labels(targets["true_interest_"], "true_like")
  scen_values, scen_index = np.unique(arrays["scenarios"], return_inverse=True)
  scen_index = _narrow(scen_index, len(scen_values))
  counts = np.bincount(scen_index, minlength=len(scen_values))
  score_order = _narrow(np.argsort(s, kind="stable"), n)                 # one float sort
  # One grouping at a time (all, per scenario, per user), freed before the next: the peak is
  # one `_GroupRanks` and its temporaries, not three.
  ranks = _GroupRanks(s, np.zeros(n, np.uint8), 1, score_order)
  all_auc = {t: float(ranks.auc(lab)[0][0]) for t, lab in targets.items()}
  ranks = None
  ranks = _GroupRanks(s, scen_index, len(scen_values), score_order)
  per_auc = {t: ranks.auc(lab)[0] for t, lab in targets.items()}
  ranks = scen_index = None
  user_values, user_index = np.unique(arrays["user_ids"], return_inverse=True)
  user_index = _narrow(user_index, len(user_values))
  ranks = _GroupRanks(s, user_index, len(user_values), score_order)
  user_index = score_order = None
  by_user = {t: ranks.auc(lab) for t, lab in targets.items()}
  ranks = None
  user_auc, user_pos, user_neg = by_user[""]
  out = {
      "auc": _auc_block(all_auc[""], per_auc[""], scen_values),
      "gauc": _weighted_auc(user_auc, user_pos + user_neg),
      "logloss": logloss(y, p),
      "mean_label": float(y.mean()),
      "mean_pred": float(p.astype(np.float64).mean()),
      "n_test": int(n),
      "n_per_scenario": {str(int(v)): int(c) for v, c in zip(scen_values, counts)},
  }
  if true_like is not None:
    t = "true_interest_"
    out["true_interest_auc"] = _auc_block(all_auc[t], per_auc[t], scen_values)
    t_auc, t_pos, t_neg = by_user[t]
    out["true_interest_gauc"] = _weighted_auc(t_auc, t_pos + t_neg)
    out["true_interest_user_auc"] = _mean_defined(t_auc)
  return out


def spearman(a: Any, b: Any) -> float:
  """Spearman's rank correlation (average ranks for ties); nan for fewer than 2 values or a
  constant input."""
  from scipy import stats
  a, b = _as_1d(a, "a"), _as_1d(b, "b")
  _check_same_length(a=a, b=b)
  if len(a) < 2 or np.all(a == a[0]) or np.all(b == b[0]):
    return float("nan")
  return float(stats.spearmanr(a, b).statistic)


def scenario_factor_diagnostic(factor: Any, true_exam: Any, scenarios: Any) -> dict:
  """Does the scenario tower learn the scenario bias? Per scenario, the mean of its factor
  sigmoid(y_s) (or sigmoid(y_e)) against the true examination rate (the mean true_exam of that
  scenario's test samples), and their rank correlation over scenarios."""
  f, t = _as_1d(factor, "factor"), _as_1d(true_exam, "true_exam")
  scen = _as_1d(scenarios, "scenarios", np.int64)
  _check_same_length(factor=f, true_exam=t, scenarios=scen)
  values, index = np.unique(scen, return_inverse=True)
  n = np.bincount(index, minlength=len(values))
  mean_f = np.bincount(index, weights=f, minlength=len(values)) / n
  mean_t = np.bincount(index, weights=t, minlength=len(values)) / n
  return {"mean_factor": {str(int(v)): float(x) for v, x in zip(values, mean_f)},
          "true_exam_rate": {str(int(v)): float(x) for v, x in zip(values, mean_t)},
          "spearman": spearman(mean_f, mean_t)}
