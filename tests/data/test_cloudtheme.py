"""Cloud Theme loader (mscan_jax.data.cloudtheme): ids, sampled negatives, time and tie order,
purchases, and every bad-input error. Expected arrays are computed by hand in the comments."""

import datetime
import os

import numpy as np
import pytest

from mscan_jax.data import cloudtheme
from mscan_jax.data.schema import DataError

CLICKS = """user_id,theme_id,item_id,leaf_cate_id,cate_level1_id,clk_cnt,reach_time
30,40,20,8,2,1,20190801120000
7,5,100,9,1,2,2019-08-01 11:00:00
7,40,3,8,2,1,20190801100000
30,5,20,8,2,0,20190801090000
7,5,100,9,1,1,20190801110000
"""
POOL = """theme_id,item_id
5,100
5,20
40,20
40,3
40,3
"""


def write(d, clicks=CLICKS, pool=POOL, purchases=None):
  os.makedirs(d, exist_ok=True)
  for name, text in ((cloudtheme.CLICK_LOG, clicks), (cloudtheme.ITEM_POOL, pool),
                     (cloudtheme.PURCHASE_LOG, purchases)):
    if text is not None:
      with open(os.path.join(d, name), "w") as f:
        f.write(text)
  return str(d)


def epoch(hour, minute=0):
  return int(datetime.datetime(2019, 8, 1, hour, minute, tzinfo=datetime.timezone.utc).timestamp())


# Kept clicks: lines 2, 3, 4, 6 (line 5 has clk_cnt 0). Pools of items seen in the click log:
# theme 5 {20, 100}, theme 40 {3, 20}: each positive has exactly one other item, drawn twice.
# Time order: line 4 (10:00), line 3 and line 6 (11:00, file order), line 2 (12:00); each click
# is preceded by its two negatives.  Ids: user 7->1 30->2; theme 5->1 40->2; item 3->1 20->2
# 100->3; leaf 8->1 9->2; level1 1->1 2->2; item rows: 3 [1,1,2], 20 [2,1,2], 100 [3,2,1].
I3, I20, I100 = [1, 1, 2], [2, 1, 2], [3, 2, 1]
EXPECTED_ITEM = [I20, I20, I3, I20, I20, I100, I20, I20, I100, I3, I3, I20]
EXPECTED_USER = [1, 1, 1, 1, 1, 1, 1, 1, 1, 2, 2, 2]
EXPECTED_SCENARIO = [2, 2, 2, 1, 1, 1, 1, 1, 1, 2, 2, 2]
EXPECTED_SAMPLE_ID = [401, 402, 400, 301, 302, 300, 601, 602, 600, 201, 202, 200]
EXPECTED_TIME = [epoch(10)] * 3 + [epoch(11)] * 6 + [epoch(12)] * 3


def test_fixture_gives_the_hand_computed_log(tmp_path):
  log, vocab, stats = cloudtheme.load_cloudtheme(write(tmp_path))
  np.testing.assert_array_equal(log.item, EXPECTED_ITEM)
  np.testing.assert_array_equal(log.user[:, 0], EXPECTED_USER)
  np.testing.assert_array_equal(log.user_id, np.array(EXPECTED_USER) - 1)
  np.testing.assert_array_equal(log.scenario[:, 0], EXPECTED_SCENARIO)
  np.testing.assert_array_equal(log.label, [0, 0, 1] * 4)
  np.testing.assert_array_equal(log.sample_id, EXPECTED_SAMPLE_ID)
  np.testing.assert_array_equal(log.time, EXPECTED_TIME)
  assert log.is_sample is None
  assert [(f.name, f.vocab_size) for f in log.item_fields] == [
      ("item_id", 4), ("leaf_cate_id", 3), ("cate_level1_id", 3)]
  assert [(f.name, f.vocab_size) for f in log.scenario_fields] == [("theme_id", 3)]
  assert list(vocab["item_id"]) == [0, 3, 20, 100] and list(vocab["theme_id"]) == [0, 5, 40]
  assert stats["dropped_clk_cnt_0"] == 1 and stats["pool_duplicate_rows"] == 1
  assert stats["negatives"] == 8 and stats["negatives_with_unknown_category"] == 0
  assert stats["dropped_theme_without_pool"] == 0


def test_negatives_come_from_the_themes_pool_never_the_positive_and_are_seeded(tmp_path):
  rng = np.random.default_rng(0)
  rows = ["user_id,theme_id,item_id,leaf_cate_id,cate_level1_id,clk_cnt,reach_time"]
  pool = ["theme_id,item_id"]
  for theme in (1, 2):
    for item in range(theme * 100, theme * 100 + 6):
      pool.append(f"{theme},{item}")
  for k in range(40):
    theme = 1 + k % 2
    rows.append(f"{k % 7},{theme},{theme * 100 + rng.integers(0, 6)},1,1,1,2019080112{k:02d}00")
  d = write(tmp_path, "\n".join(rows) + "\n", "\n".join(pool) + "\n")
  log, vocab, _ = cloudtheme.load_cloudtheme(d, negatives=3, seed=1, negative_pool="pool")
  raw_item = vocab["item_id"][log.item[:, 0]].reshape(40, 4)      # 3 negatives, then the click
  raw_theme = vocab["theme_id"][log.scenario[:, 0]].reshape(40, 4)
  np.testing.assert_array_equal(log.label.reshape(40, 4), [[0, 0, 0, 1]] * 40)
  assert (raw_item[:, :3] != raw_item[:, 3:]).all()                     # never the positive
  assert ((raw_item // 100) == raw_theme).all()                         # from the theme's pool
  again = cloudtheme.load_cloudtheme(d, negatives=3, seed=1, negative_pool="pool")[0]
  other = cloudtheme.load_cloudtheme(d, negatives=3, seed=2, negative_pool="pool")[0]
  np.testing.assert_array_equal(again.item, log.item)
  assert not np.array_equal(other.item, log.item)


def test_whole_pool_counts_negatives_without_known_category(tmp_path):
  # Item 55 is in theme 5's pool but never clicked: drawn from the whole pool it has
  # unknown categories (0), which the default pool ("clicked") avoids.
  pool = POOL.replace("5,20\n", "5,55\n")
  log, vocab, stats = cloudtheme.load_cloudtheme(write(tmp_path, pool=pool), negative_pool="pool")
  theme5 = log.scenario[:, 0] == 1
  negatives = theme5 & (log.label == 0)
  assert (vocab["item_id"][log.item[negatives, 0]] == 55).all()
  np.testing.assert_array_equal(log.item[negatives, 1:], 0)
  assert stats["negatives_with_unknown_category"] == 4
  with pytest.raises(DataError, match=r"line 3: theme 5 has no item in theme_item_pool.csv that "
                                      r"appears in the click log other than the clicked one"):
    cloudtheme.load_cloudtheme(write(tmp_path / "b", pool=pool))


def test_purchases_are_behaviour_events_without_scenario(tmp_path):
  buys = "user_id,item_id,paytime\n7,20,20190801103000\n99,3,2019-08-01 10:30:00\n"
  log, vocab, stats = cloudtheme.load_cloudtheme(write(tmp_path, purchases=buys), purchases=True)
  # The purchase of user 7 (10:30) comes after the 10:00 click; user 99 is unknown: dropped.
  assert stats["dropped_purchases_unknown_user"] == 1 and stats["purchase_events"] == 1
  assert log.is_sample.tolist() == [True] * 3 + [False] + [True] * 9
  assert log.scenario[3, 0] == 0 and list(vocab["theme_id"]) == [0, 5, 40]
  assert log.label[3] == 1 and log.user[3, 0] == 1 and log.item[3].tolist() == I20
  assert log.sample_id[3] == 10 ** 13 + 2
  np.testing.assert_array_equal(np.delete(log.item, 3, 0), EXPECTED_ITEM)
  assert log.scenario_fields[0].vocab_size == 3


@pytest.mark.parametrize("clicks, pool, pattern", [
    (CLICKS.replace("2019-08-01 11:00:00", "2019/08/01 11:00:00"), POOL,
     r"theme_click_log.csv: line 3: reach_time '2019/08/01 11:00:00' is in no known time format"),
    (CLICKS.replace("20190801100000", "1564653600"), POOL,
     r"theme_click_log.csv: line 4: reach_time '1564653600' is in no known time format"),
    (CLICKS + "7,77,3,8,2,1,20190801130000\n", POOL,
     r"theme_click_log.csv: line 7: theme 77 has no item in theme_item_pool.csv"),
    (CLICKS.replace("30,5,20,8,2,0,", "30,5,20,8,2,x,"), POOL,
     r"theme_click_log.csv: line 5: column 'clk_cnt': 'x' is not an integer"),
    (CLICKS.replace("7,40,3,8,2,1,", "7,40,3,8,1,"), POOL,
     r"theme_click_log.csv: line 4: expected 7 columns"),
    (CLICKS.replace("30,40,20,", ",40,20,"), POOL, r"theme_click_log.csv: line 2: empty user_id"),
    ("", POOL, r"theme_click_log.csv: the file is empty"),
    (CLICKS.splitlines()[0] + "\n", POOL, r"theme_click_log.csv: the file has a header but no data"),
    (CLICKS.replace(",reach_time", ",time"), POOL, r"column\(s\) \['reach_time'\] not found"),
    (CLICKS, "theme_id,item_id\n5,100\n5,20\n40\n", r"theme_item_pool.csv: line 4: expected 2 columns"),
])
def test_bad_input_names_file_and_line(tmp_path, clicks, pool, pattern):
  with pytest.raises(DataError, match=pattern):
    cloudtheme.load_cloudtheme(write(tmp_path, clicks, pool))


def test_theme_without_pool_can_be_dropped_and_counted(tmp_path):
  d = write(tmp_path, CLICKS + "7,77,3,8,2,1,20190801130000\n")
  log, _, stats = cloudtheme.load_cloudtheme(d, missing_pool="drop")
  assert stats["dropped_theme_without_pool"] == 1
  np.testing.assert_array_equal(log.item, EXPECTED_ITEM)
  with pytest.raises(DataError, match=r"no such file"):
    cloudtheme.load_cloudtheme(d, purchases=True)


def test_pool_themes_without_clicks_do_not_become_scenarios(tmp_path):
  log, vocab, stats = cloudtheme.load_cloudtheme(write(tmp_path, pool=POOL + "99,100\n99,7\n"))
  assert list(vocab["theme_id"]) == [0, 5, 40] and log.scenario_fields[0].vocab_size == 3
  assert stats["pool_rows_of_themes_without_clicks"] == 2
  np.testing.assert_array_equal(log.item, EXPECTED_ITEM)        # item 7 never drawn: not in vocab


def test_pool_without_any_clicked_item(tmp_path):
  # No pool item appears in the click log: with the default pool nothing can be drawn.
  d = write(tmp_path, pool="theme_id,item_id\n5,1\n40,2\n")
  with pytest.raises(DataError, match=r"line 2: theme 40 has no item .* that appears in the click"):
    cloudtheme.load_cloudtheme(d)
  log, vocab, stats = cloudtheme.load_cloudtheme(d, negative_pool="pool")
  assert stats["clicks_item_not_in_pool"] == 4
  np.testing.assert_array_equal(vocab["item_id"][log.item[log.label == 0, 0]],
                                [2, 2, 1, 1, 1, 1, 2, 2])   # lines 4, 3, 6, 2 in time order
