"""User filter and chronological split (mscan_jax.data.splits, paper Appendix A.1)."""

import numpy as np
import pytest

from mscan_jax.data import splits
from mscan_jax.data.schema import DataError
from mscan_jax.data.splits import chronological_split, filter_users


def test_filter_users_by_hand():
  # user 7: scenarios {1, 2} -> kept; user 3: {1} only -> dropped (3 rows); user 9: {2, 3} -> kept.
  user = np.array([7, 3, 7, 3, 9, 3, 9])
  scen = np.array([1, 1, 2, 1, 2, 1, 3])
  keep, counts = filter_users(user, scen)
  np.testing.assert_array_equal(keep, [1, 0, 1, 0, 1, 0, 1])
  assert counts == {"users_before": 3, "users_dropped": 1, "rows_dropped": 3}
  keep3, counts3 = filter_users(user, scen, min_scenarios=3)
  assert not keep3.any() and counts3 == {"users_before": 3, "users_dropped": 3, "rows_dropped": 7}
  keep1, _ = filter_users(user, scen, min_scenarios=1)
  assert keep1.all()


def test_filter_users_large_keys_and_sorted_pairs(monkeypatch):
  # The same log as above with sparse 64-bit keys (ranked by a sort) and with the distinct
  # (user, scenario) pairs found by sorting instead of a dense table.
  user = np.array([7, 3, 7, 3, 9, 3, 9]) * 10**12
  scen = np.array([1, 1, 2, 1, 2, 1, 3]) + 1000
  monkeypatch.setattr(splits, "_DENSE_PAIRS", 0)
  keep, counts = filter_users(user, scen)
  np.testing.assert_array_equal(keep, [1, 0, 1, 0, 1, 0, 1])
  assert counts == {"users_before": 3, "users_dropped": 1, "rows_dropped": 3}
  idx, k = splits.dense_index(user)
  np.testing.assert_array_equal(idx, [1, 0, 1, 0, 2, 0, 2])
  assert k == 3


def test_filter_users_counts_only_samples():
  # User 1 has samples in scenario 1 only; its behaviour-only row in scenario 2 does not count,
  # and the user is dropped with all 3 rows. User 2 has samples in 1 and 2.
  user = np.array([1, 1, 1, 2, 2])
  scen = np.array([1, 1, 2, 1, 2])
  is_sample = np.array([1, 1, 0, 1, 1], bool)
  keep, counts = filter_users(user, scen, is_sample=is_sample)
  np.testing.assert_array_equal(keep, [0, 0, 0, 1, 1])
  assert counts["rows_dropped"] == 3 and counts["users_dropped"] == 1
  # A user with behaviours only (no sample at all) is dropped too.
  keep, counts = filter_users(np.array([5, 5]), np.array([1, 2]), is_sample=np.array([0, 0], bool))
  assert not keep.any() and counts["users_dropped"] == 1


def test_filter_users_bad_arguments():
  with pytest.raises(ValueError, match="one length"):
    filter_users(np.zeros(3, int), np.zeros(2, int))
  with pytest.raises(ValueError, match="min_scenarios"):
    filter_users(np.zeros(3, int), np.zeros(3, int), min_scenarios=0)
  keep, counts = filter_users(np.zeros(0, int), np.zeros(0, int))
  assert keep.shape == (0,) and counts["users_before"] == 0


def test_split_sizes_by_hand():
  # 20 samples: test = round(0.4 * 20) = 8 most recent; valid = round(0.1 * 12) = 1; train 11.
  s = chronological_split(20)
  np.testing.assert_array_equal(s["train"], np.arange(11))
  np.testing.assert_array_equal(s["valid"], [11])
  np.testing.assert_array_equal(s["test"], np.arange(12, 20))
  assert all(v.dtype == np.int64 for v in s.values())
  s = chronological_split(10, test_fraction=0.3, valid_fraction=0.2)
  assert [len(s[k]) for k in ("train", "valid", "test")] == [6, 1, 3]


@pytest.mark.parametrize("n", [3, 7, 50, 1001])
def test_splits_are_disjoint_chronological_and_cover(n):
  rng = np.random.default_rng(n)
  rows = np.sort(rng.choice(5 * n, size=n, replace=False))      # sample rows in a larger log
  s = chronological_split(rows, test_fraction=0.4, valid_fraction=0.25)
  tr, va, te = s["train"], s["valid"], s["test"]
  assert min(len(tr), len(va), len(te)) > 0
  assert tr.max() < va.min() and va.max() < te.min()            # validation before test
  np.testing.assert_array_equal(np.concatenate([tr, va, te]), rows)   # disjoint, complete
  assert len(te) == round(0.4 * n)


def test_empty_split_is_an_error():
  with pytest.raises(DataError, match="split 'valid' is empty"):
    chronological_split(4, valid_fraction=0.2)                 # round(0.2 * 2) = 0
  with pytest.raises(DataError, match="split 'test' is empty"):
    chronological_split(2, test_fraction=0.2, valid_fraction=0.5)   # round(0.4) = 0
  with pytest.raises(DataError, match="split 'train' is empty"):
    chronological_split(np.zeros(0, np.int64))


def test_bad_split_arguments():
  with pytest.raises(ValueError, match="test_fraction must be in"):
    chronological_split(10, test_fraction=1.0)
  with pytest.raises(ValueError, match="valid_fraction must be in"):
    chronological_split(10, valid_fraction=0.0)
  with pytest.raises(DataError, match=r"strictly increasing .* position 2 holds row 3 after row 5"):
    chronological_split(np.array([1, 5, 3, 8]))
  with pytest.raises(ValueError, match="1-D integer"):
    chronological_split(np.array([0.0, 1.0]))
