"""Dataset builder (mscan_jax.data.builder): time order, user filter, sequences, splits, statistics
and every bad-input error. Expected values are worked out by hand in the comments."""

import dataclasses
import json
import os
import tempfile

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from mscan_jax.data import builder
from mscan_jax.data.builder import EventLog, build_dataset, format_stats
from mscan_jax.data.schema import BuiltDataset, DataError, Field

SRC = "mylog.csv"
#                 input row: 0  1  2  3  4  5  6  7  8  9  10
USER_ID = np.array([0, 1, 0, 2, 1, 0, 1, 0, 1, 0, 2])
SCEN = np.array([1, 2, 2, 1, 1, 1, 2, 1, 1, 2, 1])
ITEM = np.array([1, 2, 3, 4, 5, 6, 7, 8, 9, 1, 2])
LABEL = np.array([1, 0, 1, 1, 1, 0, 1, 1, 0, 0, 0])
TIME = np.array([5, 1, 3, 2, 3, 3, 7, 8, 9, 10, 4])    # rows 2, 4, 5 share t = 3
# Stable time order: 1, 3, 2, 4, 5, 10, 0, 6, 7, 8, 9. User 2 (rows 3, 10) has samples in scenario
# 1 only and is dropped, leaving 9 events; new row k holds input row KEPT[k]:
KEPT = [1, 2, 4, 5, 0, 6, 7, 8, 9]
# new row:  0      1      2      3      4      5      6      7      8
# user:     u1     u0     u1     u0     u0     u1     u0     u1     u0
# scenario: 2      2      1      1      1      2      1      1      2
# label:    0      1      1      0      1      1      1      0      0


def make_log(**changes) -> EventLog:
  log = EventLog(
      user=(USER_ID + 1)[:, None], item=np.stack([ITEM, ITEM % 3], 1), scenario=SCEN[:, None],
      label=LABEL.astype(np.int8), user_id=USER_ID.astype(np.int32),
      user_fields=(Field("uid", 4),), item_fields=(Field("iid", 10), Field("cat", 3)),
      scenario_fields=(Field("scen", 3),), time=TIME.astype(np.int64), source=SRC)
  return dataclasses.replace(log, **changes)


def build(tmp_path, log=None, **kw):
  kw = {"max_cur_len": 2, "max_all_len": 3, **kw}
  out = os.path.join(tmp_path, "built")
  stats = build_dataset(out, log if log is not None else make_log(), **kw)
  return stats, BuiltDataset(out)


def test_builds_the_hand_computed_dataset(tmp_path):
  stats, ds = build(tmp_path)
  lg = ds.log
  np.testing.assert_array_equal(lg["sample_id"], KEPT)          # default: the input row number
  np.testing.assert_array_equal(lg["user_id"], USER_ID[KEPT])
  np.testing.assert_array_equal(lg["item"][:, 0], ITEM[KEPT])
  np.testing.assert_array_equal(lg["label"], LABEL[KEPT])
  # S_u: earlier clicks of the user in the same scenario (new rows 4 -> 6, 2 -> 7, 1 -> 8).
  np.testing.assert_array_equal(lg["cur_idx"], [[-1, -1]] * 6 + [[4, -1], [2, -1], [1, -1]])
  # H_u (impressions): the user's events with a strictly earlier time, the 3 most recent. New
  # rows 1 and 3 (user 0, both at t = 3) do not see each other.
  np.testing.assert_array_equal(lg["all_idx"], [
      [-1, -1, -1], [-1, -1, -1], [0, -1, -1], [-1, -1, -1], [1, 3, -1], [0, 2, -1], [1, 3, 4],
      [0, 2, 5], [3, 4, 6]])
  # 9 samples: test = round(3.6) = 4 most recent, valid = round(0.5) = 1 (halves up), train 4.
  np.testing.assert_array_equal(ds.splits["train"], [0, 1, 2, 3])
  np.testing.assert_array_equal(ds.splits["valid"], [4])
  np.testing.assert_array_equal(ds.splits["test"], [5, 6, 7, 8])
  assert ds.schema.num_scenarios == 2 and not ds.schema.has_truth
  assert ds.schema.all_seq_mode == "impressions"
  # Statistics (scenario 1: new rows 2,3,4,6,7 with labels 1,0,1,1,0; scenario 2: 0,1,5,8).
  assert stats["name"] == "dataset" and stats["num_events"] == 9 and stats["num_users"] == 2
  assert stats["num_items"] == 8                                 # item ids 1,2,3,5,6,7,8,9
  assert stats["num_scenarios"] == 2
  assert stats["samples"] == {"train": 4, "valid": 1, "test": 4}
  assert stats["samples_per_scenario"] == {"1": 5, "2": 4}
  assert stats["test_samples_per_scenario"] == {"1": 2, "2": 2}
  assert stats["click_rate_per_scenario"] == {"1": pytest.approx(0.6), "2": pytest.approx(0.5)}
  assert stats["dropped"] == {"users_in_fewer_than_2_scenarios_rows": 2,
                              "users_in_fewer_than_2_scenarios_users": 1, "duplicate_rows": 0}
  assert stats["duplicate_rows"] == 0 and stats["same_time_events"] == 2   # rows 2 and 5
  assert "true_interest_rate_per_scenario" not in stats
  assert json.load(open(os.path.join(ds.path, "stats.json"))) == json.loads(json.dumps(stats))
  # A gathered test sample: new row 8 (u0, scenario 2) sees S_u = [row 1] and H_u = rows 3, 4, 6.
  b = ds.gather(np.array([8]))
  np.testing.assert_array_equal(b["cur_seq"][0, :, 0], [3, 0])
  np.testing.assert_array_equal(b["all_seq"][0, :, 0], [6, 1, 8])
  np.testing.assert_array_equal(b["all_click"][0], [0, 1, 1])
  np.testing.assert_array_equal(b["all_scenario"][0], [1, 1, 1])
  assert b["cur_len"][0] == 1 and b["all_len"][0] == 3


def test_clicks_mode_truth_and_no_time(tmp_path):
  # No time: the row order is the time order. Truth given: has_truth and per-scenario rates.
  e = len(USER_ID)
  like = np.array([1, 1, 1, 0, 1, 0, 0, 1, 1, 1, 0], np.int8)
  log = make_log(time=None, true_like=like, true_prob=np.full(e, 0.5, np.float32),
                 sample_id=np.arange(e, dtype=np.int64) + 100)
  stats, ds = build(tmp_path, log, all_seq_mode="clicks", name="toy")
  kept = [0, 1, 2, 4, 5, 6, 7, 8, 9]                             # users 0, 1 in input order
  np.testing.assert_array_equal(ds.log["sample_id"], np.array(kept) + 100)
  assert ds.schema.has_truth and ds.schema.name == "toy" and ds.schema.all_seq_mode == "clicks"
  # H_u (clicks) of new row 8 (input row 9, u0): u0's earlier clicks are input rows 0, 2, 7 ->
  # new rows 0, 2, 6.
  np.testing.assert_array_equal(ds.log["all_idx"][8], [0, 2, 6])
  # scenario 1 samples: input rows 0, 4, 5, 7, 8 -> like 1, 1, 0, 1, 1 = 0.8.
  assert stats["true_interest_rate_per_scenario"]["1"] == pytest.approx(0.8)
  assert "true-interest rate" in format_stats(stats)


def test_behaviour_only_events_are_history_never_samples(tmp_path):
  # A behaviour-only event (e.g. a purchase) may use scenario 0; it feeds H_u but no split.
  is_sample = np.ones(len(USER_ID), bool)
  is_sample[6] = False                                           # u1, t = 7 -> new row 5
  scen = SCEN.copy()
  scen[6] = 0
  stats, ds = build(tmp_path, make_log(is_sample=is_sample, scenario=scen[:, None]))
  assert stats["num_samples"] == 8 and stats["num_behaviour_events"] == 1
  for rows in ds.splits.values():
    assert 5 not in set(np.asarray(rows).tolist())
  np.testing.assert_array_equal(ds.log["all_idx"][7], [0, 2, 5])  # u1's new row 7 sees row 5
  assert stats["samples_per_scenario"] == {"1": 5, "2": 3}


def test_extra_stats_merge_and_format(tmp_path):
  extra = {"dropped": {"bad_lines": 3}, "name": "shadowed", "source_rows": 11,
           "source_dropped_no_user": 4}
  stats, _ = build(tmp_path, extra_stats=extra)
  assert stats["dropped"]["bad_lines"] == 3 and stats["dropped"]["users_in_fewer_than_2_scenarios_rows"] == 2
  assert stats["name"] == "dataset" and stats["extra_name"] == "shadowed"
  assert stats["source_rows"] == 11
  text = format_stats(stats)
  for fragment in ("2 users", "8 items", "2 scenarios", "train 4, valid 1, test 4",
                   "0.6000", "0.5000",
                   "dropped by policy users_in_fewer_than_2_scenarios_rows: 2",
                   "dropped by policy bad_lines: 3", "dropped by policy source_dropped_no_user: 4"):
    assert fragment in text, (fragment, text)


def _set(arr, index, value, dtype=None):
  arr = np.array(arr, dtype=dtype)
  arr[index] = value
  return arr


BAD = [
    # (change to the valid log, fragments every message must hold)
    (dict(item=ITEM[:, None]), ["column 'cat' (item field 1) is missing"]),
    (dict(item=np.stack([ITEM, ITEM % 3], 1).astype(np.float32)),
     ["item columns ['iid', 'cat'] must hold integer ids", "float32"]),
    (dict(item=_set(np.stack([ITEM, ITEM % 3], 1), (3, 0), -1)), ["column 'iid' row 3: negative id -1"]),
    (dict(item=_set(np.stack([ITEM, ITEM % 3], 1), (4, 1), 3)),
     ["column 'cat' row 4: unknown id 3", "[0, 3)"]),
    (dict(user=_set((USER_ID + 1)[:, None], (7, 0), 4)), ["column 'uid' row 7: unknown id 4"]),
    (dict(label=_set(LABEL, 6, 2)), ["column 'label' row 6: value 2 is not 0 or 1"]),
    (dict(label=LABEL.astype(np.float64)), ["column 'label' must hold integers", "float64"]),
    (dict(label=LABEL[:5]), ["different numbers of rows", "'label': 5", "'user': 11"]),
    (dict(time=_set(TIME, 2, np.nan, float)), ["column 'time' row 2: missing or non-finite timestamp"]),
    (dict(time=_set(TIME.astype("datetime64[s]"), 9, np.datetime64("NaT"))),
     ["column 'time' row 9: missing"]),
    (dict(time=TIME.astype(str)), ["column 'time' must be numeric or datetime64"]),
    (dict(time=TIME[:4]), ["column 'time' must have shape (11,)"]),
    (dict(scenario=_set(SCEN, 1, 0)[:, None]), ["column 'scen' row 1: a sample has no scenario"]),
    (dict(user_id=_set(USER_ID, 0, -3)), ["column 'user_id' row 0: negative user key -3"]),
    (dict(user_id=None), ["column 'user_id' is missing"]),
    (dict(label=None), ["column 'label' is missing"]),
    (dict(item=None), ["the item columns ['iid', 'cat'] are missing"]),
    (dict(user_id=USER_ID.astype(np.float32)), ["column 'user_id' must hold integers"]),
    (dict(sample_id=_set(np.arange(11), 8, 2)),
     ["column 'sample_id' rows 2 and 8: duplicate sample id 2"]),
    (dict(is_sample=_set(np.ones(11, np.int8), 5, 2)), ["column 'is_sample' row 5: value 2"]),
    (dict(true_like=np.zeros(11, np.int8)), ["column 'true_prob' is missing while 'true_like'"]),
    (dict(true_like=_set(np.zeros(11, np.int8), 3, 5), true_prob=np.zeros(11)),
     ["column 'true_like' row 3: value 5 is not 0 or 1"]),
    (dict(true_like=np.zeros(11, np.int8), true_prob=_set(np.zeros(11), 4, 1.5)),
     ["column 'true_prob' row 4: value 1.5 is not a probability"]),
    (dict(true_exam=np.full(11, 0.5)), ["column 'true_exam' is given without 'true_like'"]),
    (dict(true_like=np.zeros(11, np.int8), true_prob=np.zeros(11), true_exam=_set(np.zeros(11), 7, -0.5)),
     ["column 'true_exam' row 7: value -0.5 is not a probability"]),
    (dict(label=np.zeros(0, np.int8), user=np.zeros((0, 1), int), item=np.zeros((0, 2), int),
          scenario=np.zeros((0, 1), int), user_id=np.zeros(0, int), time=None),
     ["the log has no event"]),
]


@pytest.mark.parametrize("change,fragments", BAD, ids=[str(i) for i in range(len(BAD))])
def test_bad_input_names_file_column_and_row(tmp_path, change, fragments):
  with pytest.raises(DataError) as e:
    build(tmp_path, make_log(**change))
  msg = str(e.value)
  assert msg.startswith(SRC + ": "), msg
  for fragment in fragments:
    assert fragment in msg, msg
  assert not os.path.exists(os.path.join(tmp_path, "built", "schema.json"))


def test_scenario_emptied_by_the_user_filter_is_removed_and_counted(tmp_path):
  # Scenario 2 of 3 holds only user 2's samples (rows 3, 10; user 2 is seen in it alone and
  # dropped), so it is removed: old scenario 3 becomes 2, the vocab loses "s2".
  scen = np.where(SCEN == 2, 3, SCEN)
  scen[[3, 10]] = 2
  log = make_log(scenario=scen[:, None], scenario_fields=(Field("scen", 4),))
  vocab = {"scen": np.array(["", "s1", "s2", "s3"])}
  out = os.path.join(tmp_path, "built")
  stats = build_dataset(out, log, max_cur_len=2, max_all_len=3, vocab=vocab)
  ds = BuiltDataset(out)
  assert ds.schema.num_scenarios == 2
  np.testing.assert_array_equal(ds.log["scenario"][:, 0], SCEN[KEPT])   # as without scenario 2
  assert list(np.load(os.path.join(out, "vocab", "scen.npy"))) == ["", "s1", "s3"]
  assert list(vocab["scen"]) == ["", "s1", "s2", "s3"]                  # the caller's is intact
  assert stats["dropped"]["users_in_fewer_than_2_scenarios_scenarios"] == 1
  assert stats["scenarios_removed_raw"] == "s2"
  assert "scenarios removed (no sample left after the user filter): s2" in format_stats(stats)


def test_no_multi_scenario_user_and_empty_split_are_errors(tmp_path):
  with pytest.raises(DataError, match=r"mylog.csv: no user has samples in at least 2 scenarios.*"
                                      r"1 scenario value\(s\) in field 'scen': 1 \(11 rows\)\. A "
                                      r"single-scenario file"):
    build(tmp_path, make_log(scenario=np.ones((11, 1), int)))
  with pytest.raises(DataError, match="mylog.csv: split 'valid' is empty: 9 samples"):
    build(tmp_path, valid_fraction=0.01)
  with pytest.raises(DataError, match="all_seq_mode"):
    build(tmp_path, all_seq_mode="views")
  with pytest.raises(DataError, match="caps must be >= 1"):
    build(tmp_path, max_cur_len=0)


def test_time_order_is_stable():
  want = [1, 3, 4, 0, 2]                                             # ties keep the input order
  np.testing.assert_array_equal(builder.time_order(np.array([3, 1, 3, 1, 2]), 5), want)
  np.testing.assert_array_equal(builder.time_order(np.array([3.5, 1, 3.5, 1, 2]), 5), want)
  days = np.array(["2024-03", "2024-01", "2024-03", "2024-01", "2024-02"], "datetime64[D]")
  np.testing.assert_array_equal(builder.time_order(days, 5), want)
  huge = np.array([3, 1, 3, 1, 2]) * (2**62 // 3) - 2**62           # span too wide for one key
  np.testing.assert_array_equal(builder.time_order(huge, 5), want)
  assert builder.time_order(np.array([1, 1, 2]), 3) is None          # already in order
  assert builder.time_order(None, 3) is None


def test_optional_examination_truth(tmp_path):
  # true_exam is stored and gathered when given; a dataset built before it existed (no
  # has_exam in schema.json, no log/true_exam.npy) still opens, without the key.
  e = len(USER_ID)
  exam = np.linspace(0.1, 0.9, e).astype(np.float32)
  log = make_log(true_like=np.ones(e, np.int8), true_prob=np.full(e, 0.5, np.float32),
                 true_exam=exam)
  _, ds = build(tmp_path, log)
  assert ds.schema.has_truth and ds.schema.has_exam
  np.testing.assert_allclose(ds.log["true_exam"], exam[KEPT])
  batch = ds.gather(np.array([0, 3]))
  np.testing.assert_allclose(batch["true_exam"], exam[KEPT][[0, 3]])
  assert batch["true_exam"].dtype == np.float32
  path = os.path.join(tmp_path, "built")
  with open(os.path.join(path, "schema.json")) as f:
    old = json.load(f)
  del old["has_exam"]
  with open(os.path.join(path, "schema.json"), "w") as f:
    json.dump(old, f)
  os.remove(os.path.join(path, "log", "true_exam.npy"))
  older = BuiltDataset(path)
  assert older.schema.has_truth and not older.schema.has_exam
  assert "true_exam" not in older.gather(np.array([0, 3])) and "true_prob" in older.gather(np.array([0]))


# ---------------------------------------------------------------------------------------
# Ties and exact duplicates

def _tie_log(rows, **changes) -> EventLog:
  """rows: (user, scenario, item, label, time) per event; users 0 and 1 (two scenarios each)."""
  user, scen, item, label, time = (np.array(c) for c in zip(*rows))
  return EventLog(user=(user + 1)[:, None], item=item[:, None], scenario=scen[:, None],
                  label=label.astype(np.int8), user_id=user.astype(np.int32),
                  user_fields=(Field("uid", 3),), item_fields=(Field("iid", 10),),
                  scenario_fields=(Field("scen", 3),), time=time.astype(np.int64), source=SRC,
                  **changes)


# A duplicated click (rows 2 and 3: user 0, item 5, t = 4) and two other events at t = 4.
TIES = [(0, 1, 1, 1, 1), (1, 1, 2, 1, 1), (0, 1, 5, 1, 4), (0, 1, 5, 1, 4), (0, 2, 6, 0, 4),
        (1, 2, 3, 1, 2), (0, 2, 7, 1, 6), (1, 1, 4, 1, 6), (0, 1, 8, 0, 8), (1, 2, 9, 0, 9)]


def test_exact_duplicates_are_dropped_and_counted(tmp_path):
  stats, ds = build(tmp_path, _tie_log(TIES), max_cur_len=4, max_all_len=6, test_fraction=0.3,
                    valid_fraction=0.2)
  assert stats["duplicate_rows"] == 1 and stats["dropped"]["duplicate_rows"] == 1
  assert stats["same_time_events"] == 3                 # rows 2, 3, 4 share user 0's t = 4
  assert ds.num_events == 9 and 3 not in set(np.asarray(ds.log["sample_id"]).tolist())
  assert "exact duplicate rows: 1 (dropped)" in format_stats(stats)


def test_kept_duplicates_and_same_time_events_never_see_each_other(tmp_path):
  for rows in (TIES, TIES[:2] + TIES[4:5] + TIES[2:4] + TIES[5:]):   # two file orders
    out = os.path.join(tmp_path, str(len(os.listdir(tmp_path))))
    stats = build_dataset(out, _tie_log(rows), max_cur_len=4, max_all_len=6, test_fraction=0.3,
                          valid_fraction=0.2, duplicates="keep")
    ds = BuiltDataset(out)
    assert stats["duplicate_rows"] == 1 and "duplicate_rows" not in stats["dropped"]
    sid = np.asarray(ds.log["sample_id"])
    at = {int(s): k for k, s in enumerate(sid)}
    time = np.array([r[4] for r in rows])
    for k in range(ds.num_events):
      for idx in (ds.log["cur_idx"][k], ds.log["all_idx"][k]):
        seen = sid[idx[idx >= 0]]
        assert np.all(time[seen] < time[sid[k]]), (k, seen)
    # The later copy of the duplicated click sees user 0's t = 1 click only, like the first.
    copies = [i for i, r in enumerate(rows) if r == TIES[2]]
    for c in copies:
      assert list(sid[ds.log["all_idx"][at[c]][ds.log["all_idx"][at[c]] >= 0]]) == [0]


def test_a_log_without_timestamps_has_no_duplicates(tmp_path):
  stats, _ = build(tmp_path, dataclasses.replace(_tie_log(TIES), time=None), test_fraction=0.3,
                   valid_fraction=0.2)
  assert "duplicate_rows" not in stats and "duplicate_rows" not in stats["dropped"]


@settings(max_examples=40, deadline=None, database=None,
          suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(st.integers(0, 1), st.integers(1, 2), st.integers(1, 3),
                          st.integers(0, 1), st.integers(0, 3)), min_size=8, max_size=40),
       st.sampled_from(["drop", "keep"]))
def test_duplicates_and_ties_hypothesis(rows, policy):
  """Logs with many ties and exact copies, in any order: the copies are counted (and dropped
  by default), and no history holds an event of the same or a later time."""
  rows = [(0, 1, 1, 1, 0), (0, 2, 1, 1, 0), (1, 1, 1, 1, 0), (1, 2, 1, 1, 0)] + rows
  copies = len(rows) - len(set(rows))
  with tempfile.TemporaryDirectory() as d:
    try:
      stats = build_dataset(d + "/b", _tie_log(rows), max_cur_len=3, max_all_len=4,
                            test_fraction=0.25, valid_fraction=0.25, duplicates=policy)
    except DataError as e:                   # a split left empty by dropping copies
      assert "is empty" in str(e)
      return
    ds = BuiltDataset(d + "/b")
    assert stats["duplicate_rows"] == copies
    assert ds.num_events == len(rows) - (copies if policy == "drop" else 0)
    sid = np.asarray(ds.log["sample_id"])
    if policy == "drop":
      assert len({rows[s] for s in sid}) == len(sid)
    time = np.array([r[4] for r in rows])
    for key in ("cur_idx", "all_idx"):
      idx = np.asarray(ds.log[key])
      valid = idx >= 0
      assert np.all(time[sid[idx[valid]]] < np.broadcast_to(time[sid][:, None], idx.shape)[valid])


def test_cold_users_and_items_per_split_and_scenario(tmp_path):
  """The share of valid/test samples whose user (item) has no training sample. No time: the
  row order is the time order; 10 samples -> train 5, valid round(0.6) = 1, test 4."""
  #         train ----------------------------  valid  test --------------------
  user = np.array([0, 1, 0, 1, 0,                 2,     0, 3, 3, 1])
  item = np.array([1, 2, 2, 1, 3,                 1,     4, 1, 5, 2])
  scen = np.array([1, 2, 2, 1, 1,                 1,     1, 2, 2, 1])
  # test: row 6 (u0 seen, i4 new), 7 (u3 new, i1 seen), 8 (u3 new, i5 new), 9 (both seen).
  log = EventLog(user=(user + 1)[:, None], item=item[:, None], scenario=scen[:, None],
                 label=np.array([1, 0] * 5, np.int8), user_id=user.astype(np.int32),
                 user_fields=(Field("uid", 5),), item_fields=(Field("iid", 6),),
                 scenario_fields=(Field("scen", 3),), source=SRC)
  stats, ds = build(tmp_path, log, min_scenarios_per_user=1)
  np.testing.assert_array_equal(ds.splits["test"], [6, 7, 8, 9])
  assert stats["cold"] == {
      "valid": {"users": {"all": 1.0, "1": 1.0}, "items": {"all": 0.0, "1": 0.0}},
      # scenario 1: rows 6, 9; scenario 2: rows 7, 8.
      "test": {"users": {"all": 0.5, "1": 0.0, "2": 1.0}, "items": {"all": 0.5, "1": 0.5, "2": 0.5}}}
  assert json.load(open(os.path.join(ds.path, "stats.json")))["cold"] == stats["cold"]
  text = format_stats(stats)
  assert "cold (no training sample): valid users 100.0%, items 0.0%; test users 50.0%, items 50.0%" in text
  assert "cold u valid" in text and "cold i test" in text
  # Statistics written before the cold shares were counted still print.
  del stats["cold"]
  assert "cold" not in format_stats(stats)


def _synthetic_tiny_log():
  from mscan_jax.data import synthetic
  return synthetic.generate(synthetic.get_preset("tiny"))[0]


@pytest.mark.parametrize("case", ["fixture", "fixture_clicks", "synthetic_tiny"])
def test_blocked_build_equals_the_whole_log_build(tmp_path, case):
  """The sequence indices are built block by block (`sequences.write_sequences`). With blocks of
  a few rows (the fixture: 2 rows, ties at t = 3 crossing a boundary; the synthetic tiny preset,
  ~6.8k events: 97 rows, ~70 blocks) every stored file equals, byte for byte, the build in one
  block, and the indices equal the whole-log `build_sequences` (today's build, int64) in value;
  their dtype is int32 (fewer than 2**31 rows), as the schema records. The synthetic default
  (2M events) is too large for a test; the tiny preset has the same generator."""
  from mscan_jax.data.sequences import build_sequences
  log = _synthetic_tiny_log() if case == "synthetic_tiny" else make_log()
  kw = ({"max_cur_len": 5, "max_all_len": 10} if case == "synthetic_tiny" else
        {"max_cur_len": 2, "max_all_len": 3})
  if case == "fixture_clicks":
    kw["all_seq_mode"] = "clicks"
  block = 97 if case == "synthetic_tiny" else 2
  small, whole = os.path.join(tmp_path, "small"), os.path.join(tmp_path, "whole")
  build_dataset(small, log, block_rows=block, **kw)
  build_dataset(whole, log, block_rows=10**9, **kw)
  files = sorted(os.path.relpath(os.path.join(d, f), small) for d, _, fs in os.walk(small) for f in fs)
  assert "log/cur_idx.npy" in files and "log/all_idx.npy" in files
  for f in files:
    with open(os.path.join(small, f), "rb") as a, open(os.path.join(whole, f), "rb") as b:
      assert a.read() == b.read(), f
  ds = BuiltDataset(small)
  assert ds.schema.index_dtype == "int32"
  lg = ds.log
  t = np.asarray(log.time)[lg["sample_id"]]                          # input row -> built order
  want = build_sequences(lg["user_id"], lg["scenario"][:, 0], lg["label"], time=t,
                         **kw)
  for key, expect in zip(("cur_idx", "all_idx"), want):
    assert lg[key].dtype == np.int32 and expect.dtype == np.int64
    np.testing.assert_array_equal(lg[key], expect, err_msg=key)
  if case == "synthetic_tiny":
    assert ds.num_events // block > 50
    rows = np.arange(ds.num_events)[:, None]
    crossing = (lg["all_idx"] >= 0) & (lg["all_idx"] < rows // block * block)
    assert crossing.any(1).mean() > 0.5                          # histories reach earlier blocks


def test_a_dataset_built_before_int32_indices_still_opens(tmp_path):
  """Datasets built before `Schema.index_dtype` hold int64 indices and no such key: they open
  (int64 assumed) and give the same batches."""
  _, ds = build(tmp_path)
  rows = np.arange(ds.num_events)
  want = ds.gather(rows)
  for key in ("cur_idx", "all_idx"):
    path = os.path.join(ds.path, "log", f"{key}.npy")
    np.save(path, np.load(path).astype(np.int64))
  with open(os.path.join(ds.path, "schema.json")) as f:
    schema = json.load(f)
  del schema["index_dtype"]
  with open(os.path.join(ds.path, "schema.json"), "w") as f:
    json.dump(schema, f)
  old = BuiltDataset(ds.path)
  assert old.schema.index_dtype == "int64" and old.log["cur_idx"].dtype == np.int64
  got = old.gather(rows)
  for key in want:
    np.testing.assert_array_equal(got[key], want[key], err_msg=key)


def test_released_pages_read_back_the_same(tmp_path):
  """`BuiltDataset.release_pages` drops the mapped pages from the resident set only: every
  array reads back the same afterwards."""
  _, ds = build(tmp_path)
  rows = np.arange(ds.num_events)
  want = ds.gather(rows)
  ds.release_pages()
  got = ds.gather(rows)
  for key in want:
    np.testing.assert_array_equal(got[key], want[key], err_msg=key)
  assert all(hasattr(a, "_mmap") for a in ds.log.values())      # the mappings it releases
