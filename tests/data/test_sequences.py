"""Sequence builder (mscan_jax.data.sequences): S_u / H_u from strictly earlier events (§2.1).

The vectorised builder is compared with a slow per-row reference loop on random logs (both
modes, caps smaller and larger than the histories, ties, one-event users), and checked by hand
on a small log and against its stated properties.
"""

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from mscan_jax.data.sequences import build_sequences


def reference(user, scen, click, ls, lh, mode, time=None):
  """The definition, one row at a time: the last `cap` qualifying earlier rows, oldest first
  (earlier: a strictly smaller `time`, or without it a smaller row)."""
  e = len(user)
  cur = np.full((e, ls), -1, np.int64)
  alls = np.full((e, lh), -1, np.int64)
  for r in range(e):
    earlier = range(r) if time is None else [q for q in range(e) if time[q] < time[r]]
    s_u = [q for q in earlier if user[q] == user[r] and scen[q] == scen[r] and click[q]]
    h_u = [q for q in earlier if user[q] == user[r] and (mode == "impressions" or click[q])]
    s_u, h_u = s_u[max(0, len(s_u) - ls):], h_u[max(0, len(h_u) - lh):]
    cur[r, :len(s_u)] = s_u
    alls[r, :len(h_u)] = h_u
  return cur, alls


def build(user, scen, click, ls, lh, mode, time=None):
  return build_sequences(np.asarray(user), np.asarray(scen), np.asarray(click), max_cur_len=ls,
                         max_all_len=lh, all_seq_mode=mode, time=time)


def test_small_log_by_hand():
  #        row: 0  1  2  3  4  5  6
  user = [0, 1, 0, 0, 1, 0, 0]
  scen = [1, 1, 2, 1, 1, 1, 2]
  click = [1, 1, 0, 1, 0, 1, 1]
  cur, alls = build(user, scen, click, 2, 3, "impressions")
  # S_u: earlier clicked rows of the same user and scenario. Row 5 (user 0, scen 1): clicks 0, 3.
  # Row 6 (user 0, scen 2): row 2 is in scenario 2 but not clicked -> empty.
  np.testing.assert_array_equal(cur, [[-1, -1], [-1, -1], [-1, -1], [0, -1], [1, -1], [0, 3],
                                      [-1, -1]])
  # H_u (impressions): every earlier row of the user; row 6 keeps the 3 most recent of 0, 2, 3, 5.
  np.testing.assert_array_equal(alls, [[-1, -1, -1], [-1, -1, -1], [0, -1, -1], [0, 2, -1],
                                       [1, -1, -1], [0, 2, 3], [2, 3, 5]])
  _, clicks = build(user, scen, click, 2, 3, "clicks")
  # H_u (clicks): row 2 is not a click, so it never appears.
  np.testing.assert_array_equal(clicks, [[-1, -1, -1], [-1, -1, -1], [0, -1, -1], [0, -1, -1],
                                         [1, -1, -1], [0, 3, -1], [0, 3, 5]])


def test_the_sample_itself_never_enters_and_caps_keep_the_most_recent():
  # One user, all clicks in one scenario: row r sees rows max(0, r - cap) .. r - 1.
  e = 10
  cur, alls = build(np.zeros(e, int), np.ones(e, int), np.ones(e, int), 3, 4, "clicks")
  for r in range(e):
    expect = list(range(max(0, r - 3), r))
    assert list(cur[r][cur[r] >= 0]) == expect
    assert list(alls[r][alls[r] >= 0]) == list(range(max(0, r - 4), r))


@pytest.mark.parametrize("mode", ["impressions", "clicks"])
def test_equals_the_reference_loop_on_random_logs(mode):
  rng = np.random.default_rng(0)
  for trial in range(60):
    e = int(rng.integers(1, 80))
    num_users = int(rng.integers(1, 12))          # few users: long histories; many: one-event users
    user = rng.integers(0, num_users, e) * int(rng.integers(1, 1000))   # keys need not be contiguous
    scen = rng.integers(1, int(rng.integers(2, 5)), e)
    click = (rng.random(e) < rng.random()).astype(np.int8)
    ls, lh = int(rng.integers(1, 7)), int(rng.integers(1, 12))
    got = build(user, scen, click, ls, lh, mode)
    want = reference(user, scen, click, ls, lh, mode)
    np.testing.assert_array_equal(got[0], want[0], err_msg=f"cur_idx, trial {trial}")
    np.testing.assert_array_equal(got[1], want[1], err_msg=f"all_idx, trial {trial}")


@settings(max_examples=60, deadline=None, database=None)
@given(st.lists(st.tuples(st.integers(0, 3), st.integers(1, 3), st.booleans()), min_size=1,
                max_size=40),
       st.integers(1, 6), st.integers(1, 8), st.sampled_from(["impressions", "clicks"]))
def test_properties_and_reference_hypothesis(events, ls, lh, mode):
  user = np.array([u for u, _, _ in events])
  scen = np.array([s for _, s, _ in events])
  click = np.array([c for _, _, c in events])
  cur, alls = build(user, scen, click, ls, lh, mode)
  assert cur.dtype == np.int64 and alls.dtype == np.int64
  assert cur.shape == (len(events), ls) and alls.shape == (len(events), lh)
  for idx, cap in ((cur, ls), (alls, lh)):
    valid = idx >= 0
    assert np.all(idx >= -1)
    # Left-aligned: the valid slots are a prefix; padding (-1) only at the end.
    n = valid.sum(1)
    assert np.array_equal(valid, np.arange(cap)[None] < n[:, None])
    rows = np.broadcast_to(np.arange(len(events))[:, None], idx.shape)
    # Strictly earlier than the sample, same user, oldest first.
    assert np.all(idx[valid] < rows[valid])
    assert np.all(user[idx[valid]] == user[rows[valid]])
    assert all(np.all(np.diff(r[r >= 0]) > 0) for r in idx)
  cvalid = cur >= 0
  rows = np.broadcast_to(np.arange(len(events))[:, None], cur.shape)
  assert np.all(scen[cur[cvalid]] == scen[rows[cvalid]])       # S_u: the same scenario only
  assert np.all(click[cur[cvalid]])                             # S_u: clicked only
  if mode == "clicks":
    assert np.all(click[alls[alls >= 0]])
  want = reference(user, scen, click, ls, lh, mode)
  np.testing.assert_array_equal(cur, want[0])
  np.testing.assert_array_equal(alls, want[1])


def test_events_sharing_a_timestamp_never_see_each_other():
  # One user, one scenario, all clicks; rows 1 and 2 share t = 5, rows 3, 4 and 5 share t = 7.
  time = np.array([1, 5, 5, 7, 7, 7, 9])
  e = time.shape[0]
  cur, alls = build(np.zeros(e, int), np.ones(e, int), np.ones(e, int), 4, 4, "impressions", time)
  want = [[], [0], [0], [0, 1, 2], [0, 1, 2], [0, 1, 2], [2, 3, 4, 5]]
  for idx in (cur, alls):
    assert [list(r[r >= 0]) for r in idx] == want
  # Datetimes are times too.
  days = (np.datetime64("2024-01-01") + time).astype("datetime64[s]")
  np.testing.assert_array_equal(build(np.zeros(e, int), np.ones(e, int), np.ones(e, int), 4, 4,
                                      "impressions", days)[1], alls)


@settings(max_examples=80, deadline=None, database=None)
@given(st.lists(st.tuples(st.integers(0, 2), st.integers(1, 3), st.booleans(), st.integers(0, 4)),
                min_size=1, max_size=40),
       st.integers(1, 6), st.integers(1, 8), st.sampled_from(["impressions", "clicks"]),
       st.randoms(use_true_random=False))
def test_strict_time_order_with_many_ties_hypothesis(events, ls, lh, mode, random):
  """Few distinct times, so most events share theirs: a history holds strictly earlier times
  only, equals the reference, and does not depend on the order of the rows within a time."""
  events = sorted(events, key=lambda ev: ev[3])                # the log is in time order
  user, scen, click, time = (np.array(col) for col in zip(*events))
  cur, alls = build(user, scen, click, ls, lh, mode, time)
  for idx in (cur, alls):
    valid = idx >= 0
    assert np.all(time[idx[valid]] < np.broadcast_to(time[:, None], idx.shape)[valid])
  want = reference(user, scen, click, ls, lh, mode, time)
  np.testing.assert_array_equal(cur, want[0])
  np.testing.assert_array_equal(alls, want[1])
  # Another file order of the same events (ties shuffled): with caps long enough to hold every
  # history, each event sees the same events.
  n = len(events)
  keys = [(t, random.random()) for t in time]
  perm = np.array(sorted(range(n), key=lambda k: keys[k]))      # new row -> old row
  before = build(user, scen, click, n, n, mode, time)
  after = build(user[perm], scen[perm], click[perm], n, n, mode, time[perm])
  for old_idx, new_idx in zip(before, after):
    for new_row, old_row in enumerate(perm):
      seen_old = sorted(old_idx[old_row][old_idx[old_row] >= 0].tolist())
      seen_new = sorted(perm[new_idx[new_row][new_idx[new_row] >= 0]].tolist())
      assert seen_old == seen_new


def test_time_must_be_in_order():
  with pytest.raises(ValueError, match="time must be non-decreasing"):
    build([0, 0], [1, 1], [1, 1], 2, 2, "impressions", np.array([2, 1]))


def test_huge_user_keys():
  # Users 1 and 1 + 2^62 would share the key user * 4 + scenario modulo 2^64; keys that large are
  # ranked first, so the two users stay apart.
  user = np.array([1, 1 + 2**62, 1, 1 + 2**62, 1], np.int64)
  scen, click = np.array([3, 3, 3, 3, 2]), np.array([1, 1, 1, 1, 1])
  cur, alls = build(user, scen, click, 2, 3, "impressions")
  np.testing.assert_array_equal(cur, [[-1, -1], [-1, -1], [0, -1], [1, -1], [-1, -1]])
  np.testing.assert_array_equal(alls, [[-1] * 3, [-1] * 3, [0, -1, -1], [1, -1, -1], [0, 2, -1]])


def test_bool_clicks_empty_log_and_one_event_users():
  cur, alls = build([5, 6, 7], [1, 2, 1], [True, True, False], 2, 2, "impressions")
  assert np.all(cur == -1) and np.all(alls == -1)
  cur, alls = build(np.zeros(0, int), np.zeros(0, int), np.zeros(0, int), 2, 3, "clicks")
  assert cur.shape == (0, 2) and alls.shape == (0, 3)


def test_bad_arguments():
  u, s, c = np.zeros(3, int), np.ones(3, int), np.ones(3, int)
  with pytest.raises(ValueError, match="all_seq_mode"):
    build_sequences(u, s, c, max_cur_len=2, max_all_len=2, all_seq_mode="views")
  with pytest.raises(ValueError, match="caps must be >= 1"):
    build_sequences(u, s, c, max_cur_len=0, max_all_len=2)
  with pytest.raises(ValueError, match="scenario must be 1-D of length 3"):
    build_sequences(u, np.ones(2, int), c, max_cur_len=2, max_all_len=2)
  with pytest.raises(ValueError, match="click must hold only 0 and 1"):
    build_sequences(u, s, np.array([0, 2, 1]), max_cur_len=2, max_all_len=2)
  with pytest.raises(ValueError, match="user_id must be integer"):
    build_sequences(u.astype(float), s, c, max_cur_len=2, max_all_len=2)
  with pytest.raises(ValueError, match="non-negative"):
    build_sequences(np.array([0, -1, 0]), s, c, max_cur_len=2, max_all_len=2)


def test_blocked_build_equals_the_whole_log_build_on_random_logs(tmp_path):
  """`iter_sequence_blocks` (blocks of 1..19 rows, so most histories cross blocks) and the files
  of `write_sequences` equal `build_sequences` in value: both modes, ties (integer and float
  times, a tie run never split), no time, sparse user keys (ranked), many scenarios (pair
  slots instead of a dense table)."""
  from mscan_jax.data.sequences import iter_sequence_blocks, write_sequences
  rng = np.random.default_rng(1)
  for trial in range(120):
    e = int(rng.integers(1, 120))
    user = rng.integers(0, int(rng.integers(1, 12)), e) * [1, 10**6][trial % 4 == 3]
    scen = rng.integers(1, int(rng.integers(2, 5)), e) * [1, 30_000][trial % 5 == 4]   # pair slots
    click = (rng.random(e) < rng.random()).astype(np.int8)
    ls, lh = int(rng.integers(1, 7)), int(rng.integers(1, 12))
    mode = ("impressions", "clicks")[trial % 2]
    time = (None if trial % 3 == 0 else
            np.sort(rng.integers(0, max(1, e // 3), e)).astype((np.int64, np.float64)[trial % 2]))
    want = build_sequences(user, scen, click, max_cur_len=ls, max_all_len=lh, all_seq_mode=mode,
                           time=time)
    block = int(rng.integers(1, 20))
    parts = list(iter_sequence_blocks(user, scen, click, max_cur_len=ls, max_all_len=lh,
                                      all_seq_mode=mode, time=time, block_rows=block))
    assert [p[0] for p in parts[1:]] == [p[1] for p in parts[:-1]] and parts[-1][1] == e
    for k in (0, 1):
      got = np.concatenate([p[2 + k] for p in parts])
      assert got.dtype == np.int32
      np.testing.assert_array_equal(got, want[k], err_msg=f"trial {trial}")
    paths = [str(tmp_path / "cur.npy"), str(tmp_path / "all.npy")]
    count = rng.random(e) < 0.5
    dtype, n_cur, n_all = write_sequences(*paths, user, scen, click, max_cur_len=ls,
                                          max_all_len=lh, all_seq_mode=mode, time=time,
                                          block_rows=block, count_rows=count)
    assert dtype == np.int32
    for path, w, n in zip(paths, want, (n_cur, n_all)):
      np.testing.assert_array_equal(np.load(path), w)
      assert n == int((w[count] >= 0).sum())


def test_blocks_check_the_time_order_across_their_boundaries():
  from mscan_jax.data.sequences import iter_sequence_blocks
  u = np.zeros(4, int)
  with pytest.raises(ValueError, match="non-decreasing"):
    list(iter_sequence_blocks(u, u + 1, u, max_cur_len=2, max_all_len=2,
                              time=np.array([0, 5, 4, 6]), block_rows=2))


def test_index_dtype_is_int32_below_two_to_the_31_rows():
  from mscan_jax.data.sequences import index_dtype
  assert index_dtype(0) == np.int32 and index_dtype(2**31 - 1) == np.int32
  assert index_dtype(2**31) == np.int64
