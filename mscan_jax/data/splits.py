"""User filtering and the chronological train / validation / test split (paper Appendix A.1).

The paper: "We first filter out the users who own behaviors across multiple scenarios and then
sort all the logged samples in chronological order. Finally, we split the most recent 40% samples
as the test set while the other samples are put into the training set."

We keep that protocol and carve a validation split from the most recent end of the training part,
so model selection and early stopping never look at the test set:

    time ->  |------------- train -------------|-- valid --|------- test (40%) -------|

Splits are by sample count over the time-ordered samples, so samples sharing a timestamp at a
boundary are split by their (stable) row order.
"""

from __future__ import annotations

import numpy as np

from mscan_jax.data.schema import DataError

# Largest (users x scenario ids) table of booleans used to find distinct pairs (128 MB).
_DENSE_PAIRS = 1 << 27


def filter_users(user_id: np.ndarray, scenario: np.ndarray, *, min_scenarios: int = 2,
                 is_sample: np.ndarray | None = None) -> tuple[np.ndarray, dict[str, int]]:
  """Keep-mask over events of the users with samples in >= `min_scenarios` distinct scenarios.

  Only samples (`is_sample`, default: every event) count towards a user's scenarios, so a user
  whose samples all lie in one scenario is dropped even if behaviour-only events (for example a
  purchase log) lie elsewhere; a dropped user loses all of their events, samples and behaviours.

  Args:
    user_id: (E,) integer user key (any non-negative values).
    scenario: (E,) integer scenario id.
    min_scenarios: the threshold (the paper: 2, "behaviours across multiple scenarios").
    is_sample: (E,) bool, or None for all True.

  Returns:
    keep: (E,) bool.
    counts: {"users_before", "users_dropped", "rows_dropped"}.
  """
  user_id, scenario = np.asarray(user_id), np.asarray(scenario)
  if user_id.ndim != 1 or scenario.shape != user_id.shape:
    raise ValueError(f"filter_users: user_id and scenario must be 1-D of one length, got "
                     f"{user_id.shape} and {scenario.shape}")
  if is_sample is not None:
    is_sample = np.asarray(is_sample, bool)
    if is_sample.shape != user_id.shape:
      raise ValueError(f"filter_users: is_sample has shape {is_sample.shape}, expected {user_id.shape}")
  if min_scenarios < 1:
    raise ValueError(f"filter_users: min_scenarios must be >= 1, got {min_scenarios}")
  e = user_id.shape[0]
  if e == 0:
    return np.zeros(0, bool), {"users_before": 0, "users_dropped": 0, "rows_dropped": 0}
  user_idx, num_users = dense_index(user_id)                         # (E,) in 0..U-1
  scen_idx, num_scen_ids = dense_index(scenario)                     # (E,) in 0..S-1
  if num_users * num_scen_ids > np.iinfo(np.int64).max:              # ranks keep the pair id in int64
    user_idx, num_users = dense_index(user_id, rank=True)
    scen_idx, num_scen_ids = dense_index(scenario, rank=True)
  pairs = user_idx * num_scen_ids + scen_idx                         # (E,) one id per (user, scenario)
  if is_sample is not None:
    pairs = pairs[is_sample]
  if num_users * num_scen_ids <= _DENSE_PAIRS:
    seen = np.zeros(num_users * num_scen_ids, bool)
    seen[pairs] = True
    num_scen = seen.reshape(num_users, num_scen_ids).sum(1)          # (U,) scenarios with samples
  else:
    pairs = np.sort(pairs)
    distinct = pairs[np.concatenate([[True], pairs[1:] != pairs[:-1]])]
    num_scen = np.bincount(distinct // num_scen_ids, minlength=num_users)
  present = np.bincount(user_idx, minlength=num_users) > 0           # (U,) a user of this log
  keep_user = num_scen >= min_scenarios
  keep = keep_user[user_idx]
  counts = {"users_before": int(present.sum()), "users_dropped": int((present & ~keep_user).sum()),
            "rows_dropped": int(e - keep.sum())}
  return keep, counts


def dense_index(values: np.ndarray, *, rank: bool = False) -> tuple[np.ndarray, int]:
  """(E,) int64 indices in 0..K-1 of integer `values`, and K.

  Non-negative values below max(4 E, 2^20) are their own index (K = max + 1, some indices
  unused) unless `rank`; others are replaced by their rank among the distinct values (a sort).
  """
  v = np.asarray(values).astype(np.int64, copy=False)
  if v.size == 0:
    return v, 0
  lo, hi = int(v.min()), int(v.max())
  if not rank and lo >= 0 and hi < max(4 * v.size, 1 << 20):
    return v, hi + 1
  uniq, inv = np.unique(v, return_inverse=True)
  return inv.reshape(-1).astype(np.int64, copy=False), int(uniq.size)


def chronological_split(num_samples_or_sample_rows: int | np.ndarray, *, test_fraction: float = 0.4,
                        valid_fraction: float = 0.1) -> dict[str, np.ndarray]:
  """Splits time-ordered samples into train / valid / test (paper A.1, plus a validation split).

  test = the most recent round(test_fraction * N) samples; valid = the most recent
  round(valid_fraction * N_rest) of the remaining N_rest; train = the rest (halves round up).

  Args:
    num_samples_or_sample_rows: N (samples are rows 0..N-1) or (N,) strictly increasing int row
      numbers of the samples in a time-ordered log (behaviour-only rows left out).
    test_fraction: in (0, 1); the paper uses 0.4.
    valid_fraction: in (0, 1), taken from the end of the training part.

  Returns:
    {"train", "valid", "test"}: int64 row arrays, disjoint and chronological
    (max train < min valid, max valid < min test).

  Raises:
    DataError: when a split would be empty, or the rows are not increasing.
  """
  if np.ndim(num_samples_or_sample_rows) == 0:
    n = int(num_samples_or_sample_rows)
    if n < 0:
      raise ValueError(f"chronological_split: number of samples must be >= 0, got {n}")
    rows = np.arange(n, dtype=np.int64)
  else:
    rows = np.asarray(num_samples_or_sample_rows)
    if rows.ndim != 1 or not (np.issubdtype(rows.dtype, np.integer) or rows.size == 0):
      raise ValueError(f"chronological_split: sample rows must be a 1-D integer array, got "
                       f"{rows.dtype} {rows.shape}")
    rows = rows.astype(np.int64)
    bad = np.flatnonzero(np.diff(rows) <= 0)
    if bad.size:
      r = int(bad[0]) + 1
      raise DataError(f"chronological_split: sample rows must be strictly increasing (time order); "
                      f"position {r} holds row {rows[r]} after row {rows[r - 1]}")
  for name, frac in (("test_fraction", test_fraction), ("valid_fraction", valid_fraction)):
    if not 0.0 < frac < 1.0:
      raise ValueError(f"chronological_split: {name} must be in (0, 1), got {frac}")
  n = rows.shape[0]
  n_test = _round_half_up(test_fraction * n)
  n_rest = n - n_test
  n_valid = _round_half_up(valid_fraction * n_rest)
  n_train = n_rest - n_valid
  sizes = {"train": n_train, "valid": n_valid, "test": n_test}
  for name, size in sizes.items():
    if size <= 0:
      raise DataError(f"split {name!r} is empty: {n} samples with test_fraction={test_fraction}, "
                      f"valid_fraction={valid_fraction} give sizes {sizes}. Use more data or "
                      "change the fractions.")
  return {"train": rows[:n_train], "valid": rows[n_train:n_rest], "test": rows[n_rest:]}


def _round_half_up(x: float) -> int:
  return int(np.floor(x + 0.5))
