"""`python -m mscan_jax.data.prepare`: raw files -> built dataset, for each dataset format.

Checks that the built datasets open, that the loaders' counts are saved with the statistics,
the sequences of the Cloud Theme fixture (negatives never in a history, a click never seen by
its own negatives), the single-scenario refusal and the command line.
"""

import os
import subprocess
import sys

import numpy as np
import pytest

from mscan_jax.data import prepare
from mscan_jax.data.schema import BuiltDataset, DataError

SHARED = os.path.normpath(os.path.join(os.path.dirname(__file__), "..", "..", "..", "shared",
                                       "data", "ali-ccp"))
needs_shared = pytest.mark.skipif(not os.path.isdir(SHARED),
                                  reason=f"shared Ali-CCP samples not found at {SHARED}")
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# User 7 clicks in themes 5 and 40 (kept by the >= 2 scenarios filter); user 30's only other
# theme click has clk_cnt 0, so user 30 is filtered out. One item per pool besides the click,
# so the negatives are known: theme 5 {20, 100}, theme 40 {3, 20}.
CLICKS = """user_id,theme_id,item_id,leaf_cate_id,cate_level1_id,clk_cnt,reach_time
30,40,20,8,2,1,20190801120000
7,5,100,9,1,2,2019-08-01 11:00:00
7,40,3,8,2,1,20190801100000
30,5,20,8,2,0,20190801090000
7,5,100,9,1,1,20190801110000
"""
POOL = "theme_id,item_id\n5,100\n5,20\n40,20\n40,3\n"


def cloudtheme_dir(tmp_path):
  d = tmp_path / "ct"
  d.mkdir()
  (d / "theme_click_log.csv").write_text(CLICKS)
  (d / "theme_item_pool.csv").write_text(POOL)
  return str(d)


def test_cloudtheme_sequences_hold_clicks_only_and_no_own_negative(tmp_path):
  out = str(tmp_path / "built")
  opts = prepare.PrepareOptions(max_cur_len=3, max_all_len=4, test_fraction=0.34,
                                valid_fraction=0.34)
  stats = prepare.prepare("cloudtheme", cloudtheme_dir(tmp_path), out, opts)
  ds = BuiltDataset(out)
  assert ds.schema.all_seq_mode == "clicks"
  assert stats["dropped"]["clk_cnt_0"] == 1
  assert stats["dropped"]["users_in_fewer_than_2_scenarios_users"] == 1   # user 30
  assert stats["dropped"]["users_in_fewer_than_2_scenarios_rows"] == 3
  batch = ds.gather(np.arange(ds.num_events))
  by_id = {int(s): k for k, s in enumerate(batch["sample_id"])}
  # User 7's events in time order: line 4 (10:00, theme 40, item 3), line 3 and line 6
  # (11:00, theme 5, item 100), each after its two negatives (item 20). sample_id = line*100+j.
  assert sorted(by_id) == [300, 301, 302, 400, 401, 402, 600, 601, 602]
  item_raw = {1: 3, 2: 20, 3: 100}          # item ids of the fixture (sorted raw values)

  def seq(sid, key, length):
    k = by_id[sid]
    return [item_raw[int(i)] for i in batch[key][k, :batch[length][k], 0]]

  for sid in (400, 401, 402, 300, 301, 302):
    assert seq(sid, "cur_seq", "cur_len") == []          # no earlier same-theme click
  for sid in (600, 601, 602):
    assert seq(sid, "cur_seq", "cur_len") == [100]       # line 3's click, not its negatives
  for sid in (401, 402, 400):
    assert seq(sid, "all_seq", "all_len") == []          # negatives never in a history
  for sid in (301, 302, 300):
    assert seq(sid, "all_seq", "all_len") == [3]
  for sid in (601, 602, 600):
    assert seq(sid, "all_seq", "all_len") == [3, 100]    # line 6's negatives don't see line 6
  k = by_id[600]
  np.testing.assert_array_equal(batch["all_click"][k, :2], [1, 1])
  np.testing.assert_array_equal(batch["all_scenario"][k, :2], [2, 1])   # themes 40, 5


def test_cloudtheme_refuses_impressions_histories(tmp_path):
  opts = prepare.PrepareOptions(all_seq_mode="impressions")
  with pytest.raises(DataError, match=r"own sampled negatives .* label leak"):
    prepare.prepare("cloudtheme", cloudtheme_dir(tmp_path), str(tmp_path / "o"), opts)


def test_existing_output_needs_overwrite(tmp_path):
  raw, out = cloudtheme_dir(tmp_path), str(tmp_path / "built")
  opts = prepare.PrepareOptions(test_fraction=0.34, valid_fraction=0.34)
  prepare.prepare("cloudtheme", raw, out, opts)
  with pytest.raises(DataError, match=r"already a built dataset; remove it or pass --overwrite"):
    prepare.prepare("cloudtheme", raw, out, opts)
  prepare.prepare("cloudtheme", raw, out, opts, overwrite=True)
  assert BuiltDataset(out).num_events > 0


def test_recbole_toy_builds_and_drops_a_scenario_left_without_users(tmp_path):
  d = tmp_path / "toy"
  d.mkdir()
  rows = ["user_id:token\titem_id:token\tlabel:float\ttimestamp:float\tscene:token"]
  for t in range(12):                       # two users, each in scenes s0 and s1
    rows.append(f"u{t % 2}\ti{t % 5}\t{t % 3 == 0:d}\t{t}\ts{t // 2 % 2}")
  rows += ["u9\ti1\t1\t3.5\tsX", "u9\ti2\t0\t4.5\tsX"]   # u9: one scenario only
  (d / "toy.inter").write_text("\n".join(rows) + "\n")
  out = str(tmp_path / "built")
  stats = prepare.prepare("recbole", str(d), out,
                          prepare.PrepareOptions(recbole_scenario="scene", max_cur_len=2,
                                                 max_all_len=3))
  ds = BuiltDataset(out)
  # u9 is filtered out, and with it scenario sX (3 before), which is removed: s0 -> 1, s1 -> 2.
  assert ds.schema.num_scenarios == 2 and ds.num_events == 12
  assert list(np.load(os.path.join(out, "vocab", "scene.npy"))) == ["", "s0", "s1"]
  assert stats["dropped"]["no_scenario"] == 0
  assert stats["dropped"]["users_in_fewer_than_2_scenarios_users"] == 1
  assert stats["dropped"]["users_in_fewer_than_2_scenarios_rows"] == 2
  assert stats["source_scenarios_without_samples_removed"] == 1
  assert stats["source_scenarios_removed_raw"] == "sX"
  batch = ds.gather(np.arange(ds.num_events))
  np.testing.assert_array_equal(batch["scenario"][:, 0], [t // 2 % 2 + 1 for t in range(12)])


@needs_shared
def test_single_scenario_samples_are_refused_with_the_reason(tmp_path):
  with pytest.raises(DataError, match=r"no user is seen in >= 2 scenarios.*1 scenario value\(s\) "
                                      r"in field '301': 1 \(.*single-scenario"):
    prepare.prepare("aliccp_csv", os.path.join(SHARED, "torch-rechub"), str(tmp_path / "o"))


@needs_shared
def test_cli_builds_the_scenario_wise_rec_samples(tmp_path):
  out = str(tmp_path / "built")
  res = subprocess.run(
      [sys.executable, "-m", "mscan_jax.data.prepare", "--dataset=aliccp_csv",
       f"--raw={os.path.join(SHARED, 'scenario-wise-rec')}", f"--out={out}", "--max_cur_len=5",
       "--max_all_len=8"], cwd=ROOT, capture_output=True, text=True, timeout=300)
  assert res.returncode == 0, res.stderr[-2000:]
  assert "built dataset:" in res.stdout and "--config.data.name=aliccp_csv" in res.stdout
  ds = BuiltDataset(out)
  assert ds.schema.num_scenarios == 3
  assert [f.name for f in ds.schema.item_fields] == ["205", "206", "207", "210", "216"]
  assert "dropped by policy click0_purchase1: " in res.stdout
  for split in ("train", "valid", "test"):
    assert ds.split_size(split) > 0
  # A bad option is a clear error, not a traceback.
  res = subprocess.run(
      [sys.executable, "-m", "mscan_jax.data.prepare", "--dataset=aliccp_csv",
       f"--raw={os.path.join(SHARED, 'torch-rechub')}", f"--out={tmp_path / 'o2'}"],
      cwd=ROOT, capture_output=True, text=True, timeout=300)
  assert res.returncode != 0 and "error:" in res.stderr and "no user is seen" in res.stderr


def test_aliccp_raw_builds(tmp_path):
  def feats(*fs):
    return "\x01".join(f"{f}\x02{i}\x031.0" for f, i in fs)

  d = tmp_path / "raw"
  d.mkdir()
  (d / "common_features_train.csv").write_text(
      "c1,1," + feats(("101", 500)) + "\nc2,1," + feats(("101", 400)) + "\n")
  (d / "sample_skeleton_train.csv").write_text("".join(
      f"{k},{k % 2},0,c{1 + k % 2},2," + feats(("205", 10 + k), ("301", 9001 + k % 3)) + "\n"
      for k in range(1, 13)))
  out = str(tmp_path / "built")
  stats = prepare.prepare("aliccp", str(d), out, prepare.PrepareOptions(block_size=64))
  ds = BuiltDataset(out)
  assert ds.num_events == 12 and ds.schema.num_scenarios == 3
  assert stats["source_train_rows_read"] == 12
  np.testing.assert_array_equal(np.sort(ds.gather(np.arange(12))["sample_id"]), np.arange(1, 13))
