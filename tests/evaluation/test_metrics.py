"""Tests of mscan_jax.evaluation.metrics against brute-force pair counts and hand-made values."""

import math

import numpy as np
import pytest

from mscan_jax.evaluation import metrics


def brute_auc(labels, scores):
  """Count pairs: (#pos > neg + 0.5 #ties) / (n_pos n_neg), by an explicit pair matrix."""
  labels = np.asarray(labels)
  scores = np.asarray(scores, dtype=np.float64)
  pos, neg = scores[labels == 1], scores[labels == 0]
  if pos.size == 0 or neg.size == 0:
    return float("nan")
  diff = pos[:, None] - neg[None, :]
  return ((diff > 0).sum() + 0.5 * (diff == 0).sum()) / (pos.size * neg.size)


def test_auc_hand_example():
  # pos scores {0.8, 0.4}, neg scores {0.4, 0.1}: pairs 0.8>0.4, 0.8>0.1, 0.4=0.4 (1/2), 0.4>0.1.
  assert metrics.auc([1, 0, 1, 0], [0.8, 0.4, 0.4, 0.1]) == pytest.approx(3.5 / 4)
  assert metrics.auc([1, 1, 0, 0], [0.1, 0.2, 0.3, 0.4]) == 0.0
  assert metrics.auc([1, 0, 1, 0], [5.0, 5.0, 5.0, 5.0]) == 0.5


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_auc_matches_brute_force_with_many_ties(seed):
  rng = np.random.default_rng(seed)
  n = 300
  labels = rng.integers(0, 2, n)
  scores = rng.integers(0, 7, n).astype(np.float32)  # 7 distinct values: ties everywhere
  assert metrics.auc(labels, scores) == pytest.approx(brute_auc(labels, scores), abs=1e-12)
  # Boolean labels and float scores with no ties too.
  scores = rng.normal(size=n) + labels
  assert metrics.auc(labels.astype(bool), scores) == pytest.approx(brute_auc(labels, scores),
                                                                   abs=1e-12)


def test_auc_one_class_is_nan():
  assert math.isnan(metrics.auc([1, 1, 1], [0.1, 0.2, 0.3]))
  assert math.isnan(metrics.auc([0, 0], [0.1, 0.2]))


def test_auc_rejects_bad_input():
  with pytest.raises(ValueError, match="labels.*row 1"):
    metrics.auc([1, 2, 0], [0.1, 0.2, 0.3])
  with pytest.raises(ValueError, match="scores.*row 2"):
    metrics.auc([1, 0, 0], [0.1, 0.2, np.nan])
  with pytest.raises(ValueError, match="same length"):
    metrics.auc([1, 0, 0], [0.1, 0.2])


def test_grouped_auc_matches_per_group_auc():
  rng = np.random.default_rng(3)
  n = 400
  groups = rng.choice([1, 4, 5, 9], size=n)
  labels = rng.integers(0, 2, n)
  scores = rng.integers(0, 5, n) * 0.25 + 0.3 * labels * (groups == 4)
  labels[groups == 9] = 1  # a one-class group
  got = metrics.grouped_auc(labels, scores, groups)
  assert sorted(got) == [1, 4, 5, 9]
  for g in (1, 4, 5):
    sel = groups == g
    assert got[g] == pytest.approx(brute_auc(labels[sel], scores[sel]), abs=1e-12)
  assert math.isnan(got[9])
  # A score tie across groups must not be counted as a tie within a group.
  assert metrics.grouped_auc([1, 0, 1, 0], [0.5, 0.2, 0.2, 0.5], [1, 1, 2, 2]) == {1: 1.0, 2: 0.0}


def test_gauc_hand_example():
  # user 7: 3 samples, pos 0.9 vs negs {0.5, 0.95}: AUC 1/2.
  # user 8: 2 samples, pos 0.6 > neg 0.1: AUC 1.
  # user 9: one class only, left out.
  labels = [1, 0, 0, 1, 0, 1, 1]
  scores = [0.9, 0.5, 0.95, 0.6, 0.1, 0.3, 0.2]
  users = [7, 7, 7, 8, 8, 9, 9]
  assert metrics.gauc(labels, scores, users) == pytest.approx((3 * 0.5 + 2 * 1.0) / 5)
  assert math.isnan(metrics.gauc([1, 0], [0.1, 0.2], [1, 2]))


def test_logloss_hand_example():
  got = metrics.logloss([1, 0], [0.8, 0.4])
  assert got == pytest.approx(-(math.log(0.8) + math.log(0.6)) / 2)
  # Clipping: p = 0 for a positive costs -log(eps), not inf.
  assert metrics.logloss([1], [0.0], eps=1e-7) == pytest.approx(-math.log(1e-7))


def test_relaimpr_by_hand():
  # (0.65 - 0.5) / (0.6 - 0.5) = 1.5 -> +50 %
  assert metrics.relaimpr(0.65, 0.6) == pytest.approx(50.0)
  assert metrics.relaimpr(0.55, 0.6) == pytest.approx(-50.0)
  assert metrics.relaimpr(0.6, 0.6) == pytest.approx(0.0)


def test_evaluate_predictions_hand_example_with_mask():
  labels = np.array([1, 0, 1, 0, 1, 0, 1, 1], np.float32)
  scores = np.array([0.9, 0.2, 0.3, 0.6, 0.7, 0.1, 0.0, 5.0], np.float32)
  probs = np.array([0.8, 0.4, 0.5, 0.5, 0.7, 0.2, 0.5, 0.9], np.float32)
  scen = np.array([[1, 3], [1, 3], [2, 3], [2, 3], [2, 3], [1, 3], [2, 3], [1, 3]])
  users = np.array([0, 0, 1, 1, 1, 2, 2, 0])
  true_like = np.array([1, 0, 0, 1, 1, 0, 1, 0], np.float32)
  mask = np.array([1, 1, 1, 1, 1, 1, 0, 0], np.float32)  # last two rows are padding
  out = metrics.evaluate_predictions(labels, scores, probs, scen, users, true_like=true_like,
                                     mask=mask)
  # Real rows 0..5. Positives {0.9, 0.3, 0.7}, negatives {0.2, 0.6, 0.1}: 8 of 9 pairs.
  assert out["auc"]["all"] == pytest.approx(8 / 9)
  # Scenario 1: rows 0, 1, 5 -> pos 0.9 vs {0.2, 0.1}: 1. Scenario 2: rows 2, 3, 4 ->
  # pos {0.3, 0.7} vs 0.6: 1/2.
  assert out["auc"]["per_scenario"] == {"1": pytest.approx(1.0), "2": pytest.approx(0.5)}
  # Users: 0 (rows 0, 1) AUC 1 weight 2; 1 (rows 2, 3, 4) AUC 1/2 weight 3; 2 one class.
  assert out["gauc"] == pytest.approx((2 * 1.0 + 3 * 0.5) / 5)
  expected_ll = -np.mean(np.log([0.8, 0.6, 0.5, 0.5, 0.7, 0.8]))
  assert out["logloss"] == pytest.approx(expected_ll, rel=1e-6)
  assert out["mean_label"] == pytest.approx(0.5)
  assert out["mean_pred"] == pytest.approx(np.mean([0.8, 0.4, 0.5, 0.5, 0.7, 0.2]), rel=1e-6)
  assert out["n_test"] == 6
  assert out["n_per_scenario"] == {"1": 3, "2": 3}
  # true_like on real rows: pos {0.9 (s1), 0.6 (s2), 0.7 (s2)}, neg {0.2 (s1), 0.3 (s2), 0.1 (s1)}.
  assert out["true_interest_auc"]["all"] == pytest.approx(1.0)
  assert out["true_interest_auc"]["per_scenario"] == {"1": pytest.approx(1.0),
                                                      "2": pytest.approx(1.0)}
  # Without a mask the padded rows count: n_test 8, and no true_interest_auc without true_like.
  out2 = metrics.evaluate_predictions(labels, scores, probs, scen[:, 0], users)
  assert out2["n_test"] == 8 and "true_interest_auc" not in out2
  assert out2["auc"]["all"] == pytest.approx(brute_auc(labels, scores))


def test_evaluate_predictions_errors():
  with pytest.raises(ValueError, match="no samples"):
    metrics.evaluate_predictions([1], [0.1], [0.5], [1], [0], mask=[0])
  with pytest.raises(ValueError, match="same length"):
    metrics.evaluate_predictions([1, 0], [0.1, 0.2], [0.5, 0.5], [1, 1], [0])


def slow_user_pooled_auc(labels, scores, users):
  """Per user, a brute-force pair count over the user's samples; the mean over users with both
  classes."""
  labels, scores, users = map(np.asarray, (labels, scores, users))
  per_user = [brute_auc(labels[users == u], scores[users == u]) for u in np.unique(users)]
  defined = [a for a in per_user if not math.isnan(a)]
  return float(np.mean(defined)) if defined else float("nan")


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_user_pooled_auc_matches_a_slow_reference(seed):
  rng = np.random.default_rng(seed)
  n = 400
  users = rng.integers(0, 25, n)
  labels = rng.integers(0, 2, n)
  scores = rng.integers(0, 5, n).astype(np.float32) + 0.5 * labels   # ties and signal
  want = slow_user_pooled_auc(labels, scores, users)
  assert metrics.user_pooled_auc(labels, scores, users) == pytest.approx(want, abs=1e-12)
  # It is the unweighted mean over users, unlike GAUC (weighted by sample count).
  assert metrics.gauc(labels, scores, users) != pytest.approx(want, abs=1e-9)
  scen = rng.integers(1, 4, n)
  out = metrics.evaluate_predictions(labels, scores, np.full(n, 0.5), scen, users,
                                     true_like=labels)
  assert out["true_interest_user_auc"] == pytest.approx(want, abs=1e-12)
  assert math.isnan(metrics.user_pooled_auc([1, 1], [0.1, 0.2], [0, 1]))


def test_selection_metrics_read_the_evaluation():
  labels = np.array([1, 0, 1, 0, 0, 1])
  scores = np.array([0.9, 0.1, 0.2, 0.8, 0.3, 0.7])
  scen = np.array([1, 1, 2, 2, 2, 2])
  out = metrics.evaluate_predictions(labels, scores, np.full(6, 0.5), scen, np.zeros(6))
  # Scenario 1: AUC 1. Scenario 2: pos {0.2, 0.7} vs neg {0.8, 0.3}: 1 of 4 pairs.
  assert out["auc"]["mean_per_scenario"] == pytest.approx((1.0 + 0.25) / 2)
  assert metrics.select_value(out, "mean_scenario_auc") == pytest.approx(0.625)
  assert metrics.select_value(out, "auc_all") == out["auc"]["all"]
  with pytest.raises(ValueError, match="valid: mean_scenario_auc"):
    metrics.select_value(out, "loss")


def test_scenario_factor_diagnostic_by_hand():
  factor = np.array([0.2, 0.4, 0.9, 0.7, 0.5])
  exam = np.array([0.1, 0.1, 0.8, 0.8, 0.5])
  scen = np.array([1, 1, 2, 2, 3])
  d = metrics.scenario_factor_diagnostic(factor, exam, scen)
  assert d["mean_factor"] == {"1": pytest.approx(0.3), "2": pytest.approx(0.8), "3": pytest.approx(0.5)}
  assert d["true_exam_rate"] == {"1": pytest.approx(0.1), "2": pytest.approx(0.8), "3": pytest.approx(0.5)}
  assert d["spearman"] == pytest.approx(1.0)
  assert metrics.spearman([1, 2, 3], [3, 2, 1]) == pytest.approx(-1.0)
  assert math.isnan(metrics.spearman([1, 1], [0, 1]))
