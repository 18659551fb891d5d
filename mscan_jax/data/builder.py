"""Event log -> built dataset: validation, user filter, time order, sequences, splits, statistics.

Every loader (synthetic benchmark, generic CSV/Parquet log, Ali-CCP, Cloud Theme, RecBole) ends
here, so the paper's protocol (Appendix A.1) is applied in one place:

1. validate the arrays (shapes, integer dtypes, ids within their field's vocabulary, labels in
   {0, 1}, times present and finite, unique sample ids): the first problem raises one
   `DataError` naming the source, the column and the (input, 0-based) row;
2. drop exact duplicate rows (`find_duplicates`: equal in every column, timestamp included;
   `duplicates="keep"` keeps them), counted; then keep the users with samples in at least `min_scenarios_per_user` (paper: 2) scenarios
   (`filter_users`); the rows and users dropped are counted in `stats["dropped"]`. A scenario
   whose samples all belonged to dropped users is removed and counted too, and the scenario ids
   are re-numbered 1..P' in order (its vocab entry goes with it): the model never carries a
   scenario it cannot see. A log where no user spans enough scenarios is refused with the
   scenario values its samples have;
3. stable-sort the events by time (equal timestamps keep their input row order, which fixes
   the stored row order and the split boundary, nothing else);
4. build S_u and H_u of every event from the events with a strictly earlier timestamp
   (`sequences.build_sequences`, §2.1): events that share a timestamp never see each other,
   whatever the order in which the log lists them (without timestamps, the row order is the
   time order);
5. split the samples chronologically: the most recent `test_fraction` (paper: 40%) are test, the
   most recent `valid_fraction` of the rest is validation (`splits.chronological_split`);
6. write the built dataset (`schema.write_built`) with its statistics.

Behaviour-only events (`is_sample=False`, e.g. a purchase log) take part in steps 1-4 as
history (they may use scenario id 0 or a scenario without samples) and are never in a split.
`user_id` is stored as given (not re-indexed), so `user_id + 1 == user[:, 0]` stays true for
loaders that build it that way.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

import numpy as np

from mscan_jax.data import sequences, spill, splits as splits_lib
from mscan_jax.data.schema import (ALL_SEQ_MODES, SPLITS, DataError, Field, Schema, check_splits,
                                   log_layout, write_built)

_INT32_MAX = int(np.iinfo(np.int32).max)
DUPLICATE_POLICIES = ("drop", "keep")


@dataclasses.dataclass
class EventLog:
  """A multi-scenario log in memory, one row per event (a sample or a behaviour-only event)."""
  user: np.ndarray          # (E, Fu) int, contiguous ids per field, 0 = unknown
  item: np.ndarray          # (E, Fi)
  scenario: np.ndarray      # (E, Fs); column 0 = scenario id in 1..P
  label: np.ndarray         # (E,) values in {0, 1}
  user_id: np.ndarray       # (E,) int: the user key that groups sequences (contiguous 0..U-1)
  user_fields: tuple[Field, ...]
  item_fields: tuple[Field, ...]
  scenario_fields: tuple[Field, ...]
  time: np.ndarray | None = None        # (E,) sortable; None = row order is time order
  sample_id: np.ndarray | None = None   # (E,) int64; None = original row number
  is_sample: np.ndarray | None = None   # (E,) bool; False = behaviour only (e.g. a purchase log), never in a split
  true_like: np.ndarray | None = None   # (E,) {0,1} ground truth (synthetic only)
  true_prob: np.ndarray | None = None   # (E,) float
  true_exam: np.ndarray | None = None   # (E,) float: examination probability (optional truth)
  source: str = "<memory>"              # file name(s), for error messages


# ---------------------------------------------------------------------------------------
# 1. Validation


def _first(mask: np.ndarray) -> int:
  """First row where `mask` (E, ...) holds anywhere."""
  return int(np.flatnonzero(mask.reshape(mask.shape[0], -1).any(axis=1))[0])


def _is_int(arr: np.ndarray) -> bool:
  return np.issubdtype(arr.dtype, np.integer) or arr.dtype == np.bool_


def _column(src: str, name: str, value: Any, e: int, *, kind: str = "int",
            required: bool = True) -> np.ndarray | None:
  """A 1-D column of length e, of integer ('int'), real ('float') or boolean ('bool') values."""
  if value is None:
    if required:
      raise DataError(f"{src}: column {name!r} is missing")
    return None
  arr = np.asarray(value)
  if arr.shape != (e,):
    raise DataError(f"{src}: column {name!r} must have shape ({e},) (one value per event), got "
                    f"{arr.shape}")
  if kind == "int" and not _is_int(arr):
    raise DataError(f"{src}: column {name!r} must hold integers, got dtype {arr.dtype}")
  if kind == "bool" and not _is_int(arr):
    raise DataError(f"{src}: column {name!r} must be boolean, got dtype {arr.dtype}")
  if kind == "float" and not (np.issubdtype(arr.dtype, np.floating) or _is_int(arr)):
    raise DataError(f"{src}: column {name!r} must hold real numbers, got dtype {arr.dtype}")
  return arr


def _check_binary(src: str, name: str, arr: np.ndarray) -> None:
  bad = (arr != 0) & (arr != 1)
  if bad.any():
    r = _first(bad)
    raise DataError(f"{src}: column {name!r} row {r}: value {arr[r]} is not 0 or 1 "
                    f"({int(bad.sum())} such rows)")


def validate_log(log: EventLog) -> None:
  """Raises one DataError naming the source, the column and the (input, 0-based) row of the
  first problem; returns None when the log is valid. The pages of a spilled log's columns
  (`spill`) are released after each check."""
  e = _check_rows(log)
  for check in (_check_ids, _check_label_and_user_key, _check_samples_have_a_scenario,
                _check_time, _check_sample_ids, _check_truth):
    check(log, e)
    release(log)


def release(log: EventLog) -> None:
  """`spill.release` of every per-event column of `log` (a no-op for a log in memory)."""
  spill.release(*(getattr(log, f.name) for f in dataclasses.fields(log)
                  if f.name not in _NOT_PER_EVENT))


def _check_rows(log: EventLog) -> int:
  """The label column is 1-D, every column has its number of rows E > 0. Returns E."""
  src = log.source
  if log.label is None:
    raise DataError(f"{src}: column 'label' is missing")
  label = np.asarray(log.label)
  if label.ndim != 1:
    raise DataError(f"{src}: column 'label' must be 1-D (one value per event), got shape "
                    f"{label.shape}")
  e = label.shape[0]
  lengths = {name: np.shape(v)[0] for name, v in (("user", log.user), ("item", log.item),
                                                   ("scenario", log.scenario), ("label", label),
                                                   ("user_id", log.user_id))
             if v is not None and np.ndim(v) >= 1}
  if len(set(lengths.values())) > 1:
    raise DataError(f"{src}: the columns have different numbers of rows: {lengths}")
  if e == 0:
    raise DataError(f"{src}: the log has no event")
  return e


def _check_ids(log: EventLog, e: int) -> None:
  """User, item and scenario ids: (E, F) integers within each field's vocabulary."""
  src = log.source
  groups = (("user", log.user, log.user_fields), ("item", log.item, log.item_fields),
            ("scenario", log.scenario, log.scenario_fields))
  for group, value, fields in groups:
    names = [f.name for f in fields]
    if not fields:
      raise DataError(f"{src}: no {group} field given (at least one is needed)")
    if value is None:
      raise DataError(f"{src}: the {group} columns {names} are missing")
    arr = np.asarray(value)
    if arr.ndim != 2 or arr.shape[0] != e:
      raise DataError(f"{src}: {group} ids must have shape ({e}, {len(fields)}) (one column per "
                      f"field {names}), got {arr.shape}")
    if arr.shape[1] < len(fields):
      raise DataError(f"{src}: column {names[arr.shape[1]]!r} ({group} field {arr.shape[1]}) is "
                      f"missing: {group} ids have {arr.shape[1]} column(s) for fields {names}")
    if arr.shape[1] > len(fields):
      raise DataError(f"{src}: {group} ids have {arr.shape[1]} columns but only {len(fields)} "
                      f"field(s) {names} are declared")
    if not _is_int(arr):
      raise DataError(f"{src}: {group} columns {names} must hold integer ids, got dtype {arr.dtype}")
    for field in fields:
      if field.vocab_size - 1 > _INT32_MAX:
        raise DataError(f"{src}: column {field.name!r}: vocab_size {field.vocab_size} does not fit "
                        "the stored int32 ids")
    # Each field's range over blocks of rows; the rows of a field out of range are found after.
    lo = np.full(len(fields), np.iinfo(np.int64).max)
    hi = np.full(len(fields), np.iinfo(np.int64).min)
    for _, _, block in spill.row_chunks(arr):
      if block.shape[0]:
        lo = np.minimum(lo, block.min(axis=0))
        hi = np.maximum(hi, block.max(axis=0))
    for j, field in enumerate(fields):
      if lo[j] >= 0 and hi[j] < field.vocab_size:
        continue
      col = arr[:, j]
      neg = col < 0
      if neg.any():
        r = _first(neg)
        raise DataError(f"{src}: column {field.name!r} row {r}: negative id {col[r]} (ids are "
                        f"0..{field.vocab_size - 1}, 0 = unknown; {int(neg.sum())} such rows)")
      big = col >= field.vocab_size
      if big.any():
        r = _first(big)
        raise DataError(f"{src}: column {field.name!r} row {r}: unknown id {col[r]}, outside the "
                        f"field's vocabulary [0, {field.vocab_size}) ({int(big.sum())} such rows)")


def _check_label_and_user_key(log: EventLog, e: int) -> None:
  """Labels in {0, 1}; user keys non-negative and within int32."""
  src = log.source
  label = np.asarray(log.label)
  _column(src, "label", label, e)
  _check_binary(src, "label", label)

  user_id = _column(src, "user_id", log.user_id, e)
  neg = user_id < 0
  if neg.any():
    r = _first(neg)
    raise DataError(f"{src}: column 'user_id' row {r}: negative user key {user_id[r]}")
  big = user_id > _INT32_MAX
  if big.any():
    r = _first(big)
    raise DataError(f"{src}: column 'user_id' row {r}: user key {user_id[r]} does not fit int32 "
                    "(use contiguous keys 0..U-1)")


def _check_samples_have_a_scenario(log: EventLog, e: int) -> None:
  """`is_sample` is 0/1, and every sample has a scenario id (behaviour-only events may not)."""
  src = log.source
  is_sample = _column(src, "is_sample", log.is_sample, e, kind="bool", required=False)
  if is_sample is not None:
    _check_binary(src, "is_sample", is_sample)
  sample = np.ones(e, bool) if is_sample is None else is_sample.astype(bool)
  no_scen = sample & (np.asarray(log.scenario)[:, 0] == 0)
  if no_scen.any():
    r = _first(no_scen)
    raise DataError(f"{src}: column {log.scenario_fields[0].name!r} row {r}: a sample has no "
                    "scenario (id 0 is padding/unknown; scenario ids are 1..P)")


def _check_time(log: EventLog, e: int) -> None:
  """Timestamps: (E,) numbers or datetimes, none missing or non-finite."""
  src = log.source
  if log.time is not None:
    t = np.asarray(log.time)
    if t.shape != (e,):
      raise DataError(f"{src}: column 'time' must have shape ({e},), got {t.shape}")
    if np.issubdtype(t.dtype, np.datetime64):
      missing = np.isnat(t)
    elif np.issubdtype(t.dtype, np.floating):
      missing = ~np.isfinite(t)
    elif np.issubdtype(t.dtype, np.integer):
      missing = None
    else:
      raise DataError(f"{src}: column 'time' must be numeric or datetime64, got dtype {t.dtype}")
    if missing is not None and missing.any():
      r = _first(missing)
      raise DataError(f"{src}: column 'time' row {r}: missing or non-finite timestamp {t[r]} "
                      f"({int(missing.sum())} such rows)")


def _check_sample_ids(log: EventLog, e: int) -> None:
  """Sample ids, when given, are unique integers."""
  src = log.source
  sample_id = _column(src, "sample_id", log.sample_id, e, required=False)
  if sample_id is not None:
    s = np.sort(sample_id)
    dup = np.flatnonzero(s[1:] == s[:-1])
    if dup.size:
      rows = np.flatnonzero(sample_id == s[dup[0]])
      raise DataError(f"{src}: column 'sample_id' rows {int(rows[0])} and {int(rows[1])}: "
                      f"duplicate sample id {s[dup[0]]} (sample ids must be unique)")


def _check_truth(log: EventLog, e: int) -> None:
  """Ground truth, when given: true_like in {0, 1} with true_prob in [0, 1], both or neither."""
  src = log.source
  if (log.true_like is None) != (log.true_prob is None):
    given, absent = ("true_like", "true_prob") if log.true_prob is None else ("true_prob", "true_like")
    raise DataError(f"{src}: column {absent!r} is missing while {given!r} is given (give both "
                    "or neither)")
  if log.true_like is not None:
    _check_binary(src, "true_like", _column(src, "true_like", log.true_like, e))
    p = _column(src, "true_prob", log.true_prob, e, kind="float")
    bad = ~((p >= 0) & (p <= 1))                 # NaN is bad too
    if bad.any():
      r = _first(bad)
      raise DataError(f"{src}: column 'true_prob' row {r}: value {p[r]} is not a probability in "
                      "[0, 1]")
  if log.true_exam is not None:
    if log.true_like is None:
      raise DataError(f"{src}: column 'true_exam' is given without 'true_like' and 'true_prob' "
                      "(the examination truth is stored with the interest truth)")
    p = _column(src, "true_exam", log.true_exam, e, kind="float")
    bad = ~((p >= 0) & (p <= 1))
    if bad.any():
      r = _first(bad)
      raise DataError(f"{src}: column 'true_exam' row {r}: value {p[r]} is not a probability in "
                      "[0, 1]")


# ---------------------------------------------------------------------------------------
# 2. Exact duplicates, user filter

_NOT_PER_EVENT = ("user_fields", "item_fields", "scenario_fields", "source")


def _per_event(log: EventLog, keep: np.ndarray) -> dict[str, np.ndarray | None]:
  """The per-event columns of `log` at the rows where `keep` holds (every column of the
  dataclass but the field lists and the source, so a column added to `EventLog` follows).
  `sample_id` is filled with the input row number first, so it still names the input row."""
  per_event = {f.name: getattr(log, f.name) for f in dataclasses.fields(log)
               if f.name not in _NOT_PER_EVENT}
  if per_event["sample_id"] is None:
    per_event["sample_id"] = np.arange(keep.shape[0], dtype=np.int64)
  return {k: (None if v is None else spill.select(v, keep)) for k, v in per_event.items()}


def _as_int64_columns(value: np.ndarray) -> np.ndarray:
  """(E, k) int64 columns with the same equalities as `value` (floats by their bits)."""
  a = np.asarray(value)
  a = a.reshape(a.shape[0], -1)
  if np.issubdtype(a.dtype, np.datetime64) or np.issubdtype(a.dtype, np.timedelta64):
    return a.view(np.int64)
  if np.issubdtype(a.dtype, np.floating):
    return (a.astype(np.float64) + 0.0).view(np.int64)          # + 0.0: -0.0 equals 0.0
  return a.astype(np.int64)


def find_duplicates(log: EventLog) -> tuple[np.ndarray, int]:
  """Exact duplicates of a log with timestamps: rows equal to an earlier row in every column,
  timestamp included (`sample_id`, the row's name, excluded).

  Returns (dup, same_time): dup (E,) bool marks every copy after the first (input order);
  same_time counts the events sharing their user's timestamp with another event. A log
  without timestamps has neither: each row is its own instant.
  """
  e = int(np.asarray(log.label).shape[0])
  dup = np.zeros(e, bool)
  if log.time is None or e < 2:
    return dup, 0
  # Only events sharing (user, time) with another can be duplicates.
  user = np.asarray(log.user_id).astype(np.int64)
  t = _as_int64_columns(log.time)[:, 0]
  o = np.lexsort((t, user))
  same = (user[o][1:] == user[o][:-1]) & (t[o][1:] == t[o][:-1])
  shared = np.zeros(e, bool)
  shared[o[1:][same]] = True
  shared[o[:-1][same]] = True
  rows = np.flatnonzero(shared)
  if rows.size == 0:
    return dup, 0
  keys = np.concatenate([_as_int64_columns(np.asarray(v)[rows]) for k, v in
                         ((f.name, getattr(log, f.name)) for f in dataclasses.fields(log))
                         if k not in _NOT_PER_EVENT + ("sample_id",) and v is not None], 1)
  o = np.lexsort(keys.T[::-1])                                    # stable: copies in input order
  equal = np.all(keys[o][1:] == keys[o][:-1], axis=1)
  dup[rows[o[1:][equal]]] = True
  return dup, int(rows.size)


def drop_duplicates(log: EventLog, policy: str) -> tuple[EventLog, dict[str, int]]:
  """`find_duplicates`, then the copies dropped (`policy="drop"`) or kept ("keep"). Returns
  (log, counts) with counts {"duplicate_rows", "duplicate_rows_dropped", "same_time_events"}."""
  if policy not in DUPLICATE_POLICIES:
    raise DataError(f"duplicates must be one of {DUPLICATE_POLICIES}, got {policy!r}")
  dup, same_time = find_duplicates(log)
  n = int(dup.sum())
  counts = {"duplicate_rows": n, "duplicate_rows_dropped": n if policy == "drop" else 0,
            "same_time_events": same_time}
  if policy == "drop" and n:
    log = dataclasses.replace(log, **_per_event(log, ~dup))
  return log, counts


def filter_users(log: EventLog, vocab: dict | None, min_scenarios: int
                 ) -> tuple[EventLog, dict | None, dict[str, Any]]:
  """The paper's user filter (App. A.1), then the removal of the scenarios it empties.

  Keeps the events of the users whose samples span >= `min_scenarios` scenarios
  (`splits.filter_users`; a dropped user loses every event). A scenario that had samples and
  has none left (e.g. a small Cloud Theme theme whose users were all single-theme) is removed:
  the scenario ids are re-numbered 1..P' in the same order, `vocab` (a copy) loses its entry,
  and behaviour-only events of a removed scenario get scenario id 0 (none). With no user left,
  a `DataError` names the scenario values the samples have (a single-scenario file, typically).
  `sample_id` is filled with the input row number first, so it still names the input row.

  Returns (log, vocab, counts): counts holds `splits.filter_users`'s counts and, when scenarios
  were removed, "scenarios_removed" and "scenarios_removed_raw" (their raw values).
  """
  e = int(np.asarray(log.label).shape[0])
  sample = np.ones(e, bool) if log.is_sample is None else np.asarray(log.is_sample, bool)
  scen = np.asarray(log.scenario)[:, 0]
  keep, counts = splits_lib.filter_users(log.user_id, scen, min_scenarios=min_scenarios,
                                         is_sample=sample)
  name = log.scenario_fields[0].name
  vocab = dict(vocab) if vocab else vocab
  if not keep[sample].any():
    ids, n = np.unique(scen[sample], return_counts=True)
    shown = ", ".join(f"{r} ({c} rows)" for r, c in zip(_raw(vocab, name, ids).tolist(), n.tolist()))
    raise DataError(
        f"{log.source}: no user has samples in at least {min_scenarios} scenarios, so the paper's "
        f"user filter (App. A.1) leaves no sample. The samples have {ids.shape[0]} scenario "
        f"value(s) in field {name!r}: {shown}"
        + (". A single-scenario file cannot be used for multi-scenario training"
           if ids.shape[0] == 1 else "")
        + "; lower config.data.min_scenarios_per_user only if that is what you mean")
  if keep.all():
    return log, vocab, counts
  per_event = _per_event(log, keep)
  num = log.scenario_fields[0].vocab_size
  had = np.bincount(scen[sample], minlength=num) > 0                      # (P+1,)
  has = np.bincount(scen[sample & keep], minlength=num) > 0
  emptied = np.flatnonzero(had & ~has)
  sf = tuple(log.scenario_fields)
  if emptied.size:
    kept_ids = np.setdiff1d(np.arange(1, num), emptied)                     # (P',) old ids
    new = np.zeros(num, np.int32)
    new[kept_ids] = np.arange(1, kept_ids.shape[0] + 1)
    scenario = np.array(per_event["scenario"], np.int32)                  # (E', Fs) copy
    scenario[:, 0] = new[scenario[:, 0]]
    per_event["scenario"] = scenario
    counts["scenarios_removed"] = int(emptied.shape[0])
    counts["scenarios_removed_raw"] = ", ".join(str(r) for r in _raw(vocab, name, emptied).tolist()[:50])
    if vocab and name in vocab and np.shape(vocab[name])[0] == num:
      vocab[name] = np.asarray(vocab[name])[np.concatenate([[0], kept_ids])]
    sf = (Field(name, max(kept_ids.shape[0] + 1, 2)),) + sf[1:]
  out = dataclasses.replace(log, scenario_fields=sf, **per_event)
  return out, vocab, counts


def _raw(vocab: dict | None, name: str, ids: np.ndarray) -> np.ndarray:
  """Raw values of the ids of field `name` (the ids themselves without a vocab)."""
  return np.asarray(vocab[name])[ids] if vocab and name in vocab else ids


# ---------------------------------------------------------------------------------------
# 3-6. Build


def time_order(time: np.ndarray | None, e: int) -> np.ndarray | None:
  """Permutation putting the events in time order, equal times keeping their input row order;
  None when the rows already are in time order."""
  if time is None:
    return None
  t = np.asarray(time)
  if e < 2 or bool(np.all(t[1:] >= t[:-1])):
    return None
  if np.issubdtype(t.dtype, np.datetime64):
    t = t.view(np.int64)
  if np.issubdtype(t.dtype, np.integer):
    lo, span = int(t.min()), int(t.max()) - int(t.min()) + 1
    if span < (np.iinfo(np.int64).max - e) // e:
      # (time, row) as one unique int64 key: any sort kind is exact, and the default is fastest.
      return np.argsort((t.astype(np.int64) - lo) * e + np.arange(e, dtype=np.int64))
  return np.argsort(t, kind="stable").astype(np.int64, copy=False)


def _policy(min_scen: int) -> str:
  return f"users_in_fewer_than_{min_scen}_scenarios"


def build_dataset(out_dir: str, log: EventLog, *, max_cur_len: int, max_all_len: int,
                  all_seq_mode: str = "impressions", test_fraction: float = 0.4,
                  valid_fraction: float = 0.1, min_scenarios_per_user: int = 2,
                  name: str = "dataset", extra_stats: dict | None = None,
                  vocab: dict | None = None, duplicates: str = "drop",
                  block_rows: int = sequences.DEFAULT_BLOCK_ROWS) -> dict:
  """Validates `log`, applies the paper's protocol (module docstring) and writes the built
  dataset into `out_dir` with `schema.write_built`. Returns the statistics (also in stats.json).

  `extra_stats` (e.g. the loader's counts) is merged into the statistics: its "dropped" dict
  joins the builder's; a key that the builder itself sets is kept under "extra_<key>".
  `block_rows`: rows per block of the sequence build (`sequences.write_sequences`); the result
  does not depend on it.
  """
  if all_seq_mode not in ALL_SEQ_MODES:
    raise DataError(f"all_seq_mode must be one of {ALL_SEQ_MODES}, got {all_seq_mode!r}")
  if max_cur_len < 1 or max_all_len < 1:
    raise DataError(f"sequence caps must be >= 1, got max_cur_len={max_cur_len}, "
                    f"max_all_len={max_all_len}")
  if min_scenarios_per_user < 1:
    raise DataError(f"min_scenarios_per_user must be >= 1, got {min_scenarios_per_user}")
  validate_log(log)
  src = log.source
  # 2. Exact duplicate rows (same timestamp and values): dropped by default, counted.
  log, dup_counts = drop_duplicates(log, duplicates)
  # Users with samples in at least `min_scenarios_per_user` scenarios (paper A.1), and the
  # scenarios this empties. A row selection: the time order of the rest is unchanged.
  log, vocab, kept = filter_users(log, vocab, min_scenarios_per_user)
  e = int(np.asarray(log.label).shape[0])
  has_truth = log.true_like is not None
  num_scen = log.scenario_fields[0].vocab_size - 1                   # P

  # 3. Time order (stable: equal times keep their input row order).
  order = time_order(log.time, e)
  cols: dict[str, np.ndarray] = {
      "user": np.asarray(log.user), "item": np.asarray(log.item),
      "scenario": np.asarray(log.scenario), "label": np.asarray(log.label),
      "user_id": np.asarray(log.user_id),
      "sample_id": (np.arange(e, dtype=np.int64) if log.sample_id is None
                    else np.asarray(log.sample_id)),
      "is_sample": (np.ones(e, bool) if log.is_sample is None else np.asarray(log.is_sample)),
  }
  if has_truth:
    cols["true_like"] = np.asarray(log.true_like)
    cols["true_prob"] = np.asarray(log.true_prob)
  if log.true_exam is not None:
    cols["true_exam"] = np.asarray(log.true_exam)
  dtypes = {"user": np.int32, "item": np.int32, "scenario": np.int32, "label": np.int8,
            "user_id": np.int32, "sample_id": np.int64, "is_sample": bool, "true_like": np.int8,
            "true_prob": np.float32, "true_exam": np.float32}
  cols = {k: spill.astype(v if order is None else spill.take(v, order), dtypes[k])
          for k, v in cols.items()}
  release(log)

  sample = cols["is_sample"]

  # 5. Chronological split of the samples (behaviour-only rows are in no split); before 4, so
  # that a log with an empty split is refused before anything is written.
  sample_rows = np.flatnonzero(sample).astype(np.int64)
  try:
    split_rows = splits_lib.chronological_split(sample_rows, test_fraction=test_fraction,
                                                valid_fraction=valid_fraction)
  except DataError as err:
    raise DataError(f"{src}: {err}") from None
  check_splits(split_rows)                                           # before anything is written

  # 4. S_u and H_u from events with a strictly earlier timestamp (§2.1): ties never see
  # each other. Written block by block straight into the dataset's files (never held whole).
  time = None if log.time is None else np.asarray(log.time)
  os.makedirs(os.path.join(out_dir, "log"), exist_ok=True)
  index_dtype, cur_total, all_total = sequences.write_sequences(
      os.path.join(out_dir, "log", "cur_idx.npy"), os.path.join(out_dir, "log", "all_idx.npy"),
      cols["user_id"], cols["scenario"][:, 0], cols["label"], max_cur_len=max_cur_len,
      max_all_len=max_all_len, all_seq_mode=all_seq_mode,
      time=time if order is None else time[order], count_rows=sample, block_rows=block_rows)
  num_samples = max(int(sample.sum()), 1)
  mean_len = {"cur": cur_total / num_samples, "all": all_total / num_samples}

  # 6. Statistics and storage.
  schema = Schema(user_fields=tuple(log.user_fields), item_fields=tuple(log.item_fields),
                  scenario_fields=tuple(log.scenario_fields), max_cur_len=max_cur_len,
                  max_all_len=max_all_len, all_seq_mode=all_seq_mode, has_truth=has_truth,
                  has_exam=log.true_exam is not None, name=name, index_dtype=index_dtype.name)
  stats = _statistics(name, cols, mean_len, split_rows, num_scen, kept,
                      min_scenarios_per_user, schema, ordered_by="time" if log.time is not None
                      else "row order")
  if log.time is not None:
    stats["duplicate_rows"] = dup_counts["duplicate_rows"]
    stats["same_time_events"] = dup_counts["same_time_events"]
    if duplicates == "drop":
      stats["dropped"]["duplicate_rows"] = dup_counts["duplicate_rows_dropped"]
  _merge_extra(stats, extra_stats)
  stored = {k: v for k, v in cols.items() if k != "is_sample"}
  write_built(out_dir, schema, stored, split_rows, stats, vocab=vocab,
              written=("cur_idx", "all_idx"))
  return stats


def disk_bytes_per_event(log: EventLog, *, max_cur_len: int, max_all_len: int) -> int:
  """Bytes on disk per event of the dataset `build_dataset` writes from `log`: its log arrays
  (`schema.log_layout`, with the index dtype its row count gets) and one int64 split row
  number. An upper bound per input event: the filters only drop rows. The vocab (per id) is
  not counted."""
  e = int(np.asarray(log.label).shape[0])
  schema = Schema(user_fields=tuple(log.user_fields), item_fields=tuple(log.item_fields),
                  scenario_fields=tuple(log.scenario_fields), max_cur_len=max_cur_len,
                  max_all_len=max_all_len, has_truth=log.true_like is not None,
                  has_exam=log.true_like is not None and log.true_exam is not None,
                  index_dtype=sequences.index_dtype(e).name)
  per = sum(np.dtype(dtype).itemsize * int(np.prod(tail, dtype=np.int64))
            for dtype, tail in log_layout(schema).values())
  return per + np.dtype(np.int64).itemsize


def log_bytes_per_event(log: EventLog) -> int:
  """Bytes per event of the per-event columns of `log` (what a spilled copy of it takes)."""
  e = max(int(np.asarray(log.label).shape[0]), 1)
  return sum(int(np.asarray(getattr(log, f.name)).nbytes) // e for f in dataclasses.fields(log)
             if f.name not in _NOT_PER_EVENT and getattr(log, f.name) is not None)


def _merge_extra(stats: dict[str, Any], extra: dict | None) -> None:
  if not extra:
    return
  for k, v in extra.items():
    if k == "dropped" and isinstance(v, dict):
      stats["dropped"].update(v)
    elif k in stats:
      stats[f"extra_{k}"] = v
    else:
      stats[k] = v


def _rate_per_scenario(values: np.ndarray, scen: np.ndarray, num_scen: int) -> dict[str, float]:
  """Mean of `values` per scenario id 1..P (scenarios with samples only)."""
  n = np.bincount(scen, minlength=num_scen + 1)
  s = np.bincount(scen, weights=values.astype(np.float64), minlength=num_scen + 1)
  return {str(k): float(s[k] / n[k]) for k in range(1, num_scen + 1) if n[k]}


def _num_distinct(values: np.ndarray) -> int:
  idx, k = splits_lib.dense_index(values)
  return int(np.count_nonzero(np.bincount(idx, minlength=k)))


def _statistics(name: str, cols: dict[str, np.ndarray], mean_len: dict[str, float],
                split_rows: dict[str, np.ndarray], num_scen: int, counts: dict[str, int],
                min_scen: int, schema: Schema, ordered_by: str) -> dict[str, Any]:
  sample = cols["is_sample"]
  scen_all = spill.column(cols["scenario"], 0)                      # (E,) in memory
  scen = scen_all[sample]                                            # (N,) of the samples
  label = np.asarray(cols["label"])[sample]
  per = np.bincount(scen, minlength=num_scen + 1)
  per_test = np.bincount(scen_all[split_rows["test"]], minlength=num_scen + 1)
  items = spill.column(cols["item"], 0)                              # (E,) in memory
  policy = _policy(min_scen)
  stats: dict[str, Any] = {
      "name": name,
      "num_events": int(sample.shape[0]),
      "num_samples": int(sample.sum()),
      "num_behaviour_events": int(sample.shape[0] - sample.sum()),
      "num_users": _num_distinct(cols["user_id"]),
      "num_items": _num_distinct(items[items > 0]),                 # distinct known item ids
      "num_scenarios": int(num_scen),
      "samples": {k: int(split_rows[k].shape[0]) for k in SPLITS},
      "click_rate": float(label.mean()),
      "click_rate_per_split": {k: float(cols["label"][v].mean()) for k, v in split_rows.items()},
      "samples_per_scenario": {str(k): int(per[k]) for k in range(1, num_scen + 1)},
      "test_samples_per_scenario": {str(k): int(per_test[k]) for k in range(1, num_scen + 1)},
      "click_rate_per_scenario": _rate_per_scenario(label, scen, num_scen),
      "mean_cur_len": mean_len["cur"],
      "mean_all_len": mean_len["all"],
      "max_cur_len": schema.max_cur_len,
      "max_all_len": schema.max_all_len,
      "all_seq_mode": schema.all_seq_mode,
      "time_order": (f"by {ordered_by}; histories hold strictly earlier times only"
                     if ordered_by == "time" else f"by {ordered_by}"),
      "users_before_filter": counts["users_before"],
      "dropped": {f"{policy}_rows": counts["rows_dropped"], f"{policy}_users": counts["users_dropped"]},
  }
  if counts.get("scenarios_removed"):
    stats["dropped"][f"{policy}_scenarios"] = counts["scenarios_removed"]
    stats["scenarios_removed_raw"] = counts["scenarios_removed_raw"]
  if "true_like" in cols:
    truth = cols["true_like"][sample]
    stats["true_interest_rate"] = float(truth.mean())
    stats["true_interest_rate_per_scenario"] = _rate_per_scenario(truth, scen, num_scen)
  stats["cold"] = cold_shares(cols["user_id"], items, scen_all, split_rows, num_scen)
  spill.release(*cols.values())
  return stats


def cold_shares(user: np.ndarray, item: np.ndarray, scen: np.ndarray,
                split_rows: dict[str, np.ndarray], num_scen: int) -> dict[str, Any]:
  """The share of each evaluation split's samples whose user (item) has no training sample:
  {"valid"|"test": {"users"|"items": {"all": share, "<scenario id>": share, ...}}}, over the
  scenarios with samples in that split. A time split can leave most test rows to users that
  training never saw; their scores then rest on the item and scenario alone.

  user, item, scen: (E,) ids of every event; split_rows: row numbers per split.
  """
  train = split_rows["train"]
  out: dict[str, Any] = {}
  for split in ("valid", "test"):
    rows = split_rows[split]
    s = scen[rows]                                                   # (N,)
    n = np.bincount(s, minlength=num_scen + 1)
    out[split] = {}
    for key, ids in (("users", user), ("items", item)):
      seen = np.zeros(int(ids.max(initial=0)) + 1, bool)
      seen[ids[train]] = True
      cold = ~seen[ids[rows]]                                        # (N,)
      per = np.bincount(s, weights=cold, minlength=num_scen + 1)
      shares = {"all": float(cold.mean()) if rows.size else 0.0}
      shares.update({str(k): float(per[k] / n[k]) for k in range(1, num_scen + 1) if n[k]})
      out[split][key] = shares
  return out


def format_cold(cold: dict[str, Any]) -> str:
  """`stats["cold"]` (`cold_shares`) as one line: the share of valid and test samples whose user
  or item has no training sample."""
  return "cold (no training sample): " + "; ".join(
      f"{split} users {c['users']['all']:.1%}, items {c['items']['all']:.1%}"
      for split, c in cold.items())


def format_stats(stats: dict) -> str:
  """A readable multi-line summary of a built dataset's statistics: sizes, samples per split,
  click rate (and true-interest rate when known) per scenario, rows dropped by each policy."""
  s = stats
  get = s.get
  lines = [f"dataset {get('name', '?')}: {get('num_users', 0):,} users, {get('num_items', 0):,} "
           f"items, {get('num_scenarios', 0)} scenarios, {get('num_samples', get('num_events', 0)):,} "
           f"samples ({get('num_events', 0):,} events)"]
  if "samples" in s:
    lines.append("samples per split: " + ", ".join(f"{k} {v:,}" for k, v in s["samples"].items()))
  if "click_rate" in s:
    lines.append(f"click rate {s['click_rate']:.4f}" + (
        f", true-interest rate {s['true_interest_rate']:.4f}" if "true_interest_rate" in s else ""))
  if "mean_cur_len" in s:
    lines.append(f"mean sequence lengths per sample: S_u {s['mean_cur_len']:.2f} (cap "
                 f"{get('max_cur_len', '?')}), H_u {s['mean_all_len']:.2f} (cap "
                 f"{get('max_all_len', '?')}, {get('all_seq_mode', '?')})")
  truth = s.get("true_interest_rate_per_scenario")
  per = s.get("samples_per_scenario", {})
  if per:
    test = s.get("test_samples_per_scenario", {})
    clicks = s.get("click_rate_per_scenario", {})
    # Cold shares per scenario (`cold_shares`): users, then items, of valid and test.
    cold = [(f"cold {key[0]} {split}", c[key]) for key in ("users", "items")
            for split, c in s.get("cold", {}).items()]
    lines.append(f"{'scenario':>9} {'samples':>10} {'test':>9} {'click rate':>11}"
                 + (f" {'true rate':>10}" if truth else "")
                 + "".join(f" {title:>12}" for title, _ in cold))
    for k, n in per.items():
      line = (f"{'#' + k:>9} {n:>10,} {test.get(k, 0):>9,} "
              f"{clicks.get(k, float('nan')):>11.4f}")
      if truth:
        line += f" {truth.get(k, float('nan')):>10.4f}"
      line += "".join(f" {shares[k]:>12.1%}" if k in shares else f" {'-':>12}"
                      for _, shares in cold)
      lines.append(line)
  # The builder's policies, then the loader's counts of rows it dropped (keys naming "dropped").
  dropped = dict(s.get("dropped", {}))
  dropped.update({k: v for k, v in s.items() if "dropped" in k and k != "dropped"
                  and isinstance(v, (int, np.integer)) and not isinstance(v, bool)})
  for policy, count in dropped.items():
    lines.append(f"dropped by policy {policy}: {count:,}")
  if "duplicate_rows" in s:
    lines.append(f"exact duplicate rows: {s['duplicate_rows']:,} ("
                 f"{'dropped' if 'duplicate_rows' in s.get('dropped', {}) else 'kept'}); events "
                 f"sharing their user's timestamp: {s.get('same_time_events', 0):,} (never in "
                 "each other's histories)")
  if s.get("scenarios_removed_raw"):
    lines.append(f"scenarios removed (no sample left after the user filter): "
                 f"{s['scenarios_removed_raw']}")
  if "cold" in s:                       # datasets built before it was counted lack it
    lines.append(format_cold(s["cold"]))
  return "\n".join(lines)
