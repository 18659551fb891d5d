"""Synthetic causal benchmark (mscan_jax.data.synthetic): each dial's placebo and dose, the
warm-up, determinism, contiguous ids and agreement with the generic-log path."""

import dataclasses
import json
import os
import re
import subprocess
import sys

import numpy as np
import pyarrow.parquet as pq
import pytest

from mscan_jax.data import log as log_lib
from mscan_jax.data import synthetic
from mscan_jax.data.schema import BuiltDataset

TINY = synthetic.PRESETS["tiny"]
# A tiny world with more events per user, for statistics that count clicks per cell.
BUSY = dataclasses.replace(TINY, events_per_user=100.0)
ARRAYS = ("user", "item", "scenario", "label", "user_id", "time", "sample_id", "is_sample",
          "true_like", "true_prob", "true_exam")


def _dials(cfg):
  log, truth = synthetic.generate(cfg)
  return synthetic.dial_statistics(cfg, log, truth), log, truth


def test_deterministic_for_a_seed():
  a, ta = synthetic.generate(TINY)
  b, tb = synthetic.generate(TINY)
  c, _ = synthetic.generate(dataclasses.replace(TINY, seed=1))
  for key in ARRAYS:
    np.testing.assert_array_equal(getattr(a, key), getattr(b, key), err_msg=key)
  for key in ("prominence", "slope", "group", "item_z", "pair_user", "base", "specific"):
    np.testing.assert_array_equal(getattr(ta, key), getattr(tb, key), err_msg=key)
  assert a.user_fields == b.user_fields and a.item_fields == b.item_fields
  assert not np.array_equal(a.label, c.label) or not np.array_equal(a.item, c.item)


def test_tiny_preset_shape_and_contiguous_ids():
  log, _ = synthetic.generate(TINY)
  assert 3000 <= log.is_sample.sum() <= 5000
  assert log.scenario_fields[0].vocab_size == TINY.num_scenarios + 1
  assert [f.name for f in log.user_fields] == ["user_id", "user_segment"]
  assert [f.name for f in log.item_fields] == ["item_id", "item_category"]
  # Every id 1..V-1 of every field occurs, so re-indexing the written log is the identity.
  for fields, arr in ((log.user_fields, log.user), (log.item_fields, log.item),
                      (log.scenario_fields, log.scenario)):
    for j, f in enumerate(fields):
      np.testing.assert_array_equal(np.unique(arr[:, j]), np.arange(1, f.vocab_size))
  np.testing.assert_array_equal(log.user_id, log.user[:, 0] - 1)
  assert np.all(np.diff(log.time) > 0)                       # rows in time order, no ties
  # Long tail: scenario 1 carries the most traffic, the last the least.
  counts = np.bincount(log.scenario[:, 0])[1:]
  assert counts[0] == counts.max() and counts[-1] == counts.min()


def test_warmup_rows_are_history_not_samples(tmp_path):
  log, _ = synthetic.generate(TINY)
  warm = int((~log.is_sample).sum())
  assert not log.is_sample[:warm].any() and log.is_sample[warm:].all()   # a leading period
  assert abs(warm / log.is_sample.size - TINY.warmup_fraction) < 0.03
  stats = synthetic.build_synthetic(TINY, str(tmp_path), write_log_file=False)
  ds = BuiltDataset(str(tmp_path))
  for split, rows in ds.splits.items():
    assert np.all(ds.log["sample_id"][np.asarray(rows)] >= warm), split
  assert stats["num_behaviour_events"] > 0.9 * warm          # kept as history (few users dropped)
  # Warm-up rows do enter the histories: the first samples already have some.
  first = np.asarray(ds.splits["train"])[:50]
  assert (ds.log["all_idx"][first] >= 0).any(1).mean() > 0.9
  empty = stats["reference"]["empty_cur_seq_share"]
  assert set(empty) == {"train", "valid", "test"}
  assert ds.gather(np.asarray(ds.splits["test"][:4]))["true_exam"].shape == (4,)


def test_click_requires_like_and_examination():
  log, truth = synthetic.generate(BUSY)
  assert np.all(log.label <= log.true_like)                  # y = liked AND examined
  assert 0.05 <= log.label.mean() <= 0.3
  # true_exam is e_si: logit(e_si) = logit(exam_base) + exposure_bias * (a_s + b_s z_i).
  s, i = log.scenario[:, 0], log.item[:, 0]
  want = 1 / (1 + np.exp(-BUSY.exposure_bias * (truth.prominence[s] + truth.slope[s]
                                                 * truth.item_z[i])))
  np.testing.assert_allclose(log.true_exam, want, rtol=1e-5)
  # Among liked impressions, the click rate of a scenario estimates its mean e_si.
  liked = log.true_like == 1
  n = np.bincount(s[liked])[1:]
  observed = np.bincount(s[liked], weights=log.label[liked])[1:] / n
  expected = np.bincount(s[liked], weights=log.true_exam[liked])[1:] / n
  np.testing.assert_allclose(observed, expected, atol=0.04)
  # Calibrated truth, and examination independent of interest.
  assert abs(log.true_prob.mean() - log.true_like.mean()) < 0.01
  assert abs(np.corrcoef(log.true_prob, log.true_exam)[0, 1]) < 0.1


# ----------------------------------------------------------------------------- exposure_bias


def test_exposure_placebo_examines_every_impression_alike():
  cfg = dataclasses.replace(BUSY, exposure_bias=0.0)
  st, log, _ = _dials(cfg)
  ex = st["exposure_bias"]
  np.testing.assert_array_equal(log.true_exam, np.float32(cfg.exam_base))
  assert ex["exam_ratio"] == 1.0
  # click/like is constant across scenarios and popularity quintiles, within sampling noise.
  liked = log.true_like == 1
  n_scen = np.bincount(log.scenario[liked, 0])[1:]
  for n, r in zip(n_scen, ex["click_like_per_scenario"].values()):
    assert abs(r - cfg.exam_base) < 4 * np.sqrt(0.25 / n)
  for n, r in zip(ex["likes_per_popularity_quintile"], ex["click_like_per_popularity_quintile"]):
    assert abs(r - cfg.exam_base) < 4 * np.sqrt(0.25 / n)
  # The mean of per-scenario rank correlations: under no effect each has variance 1 / (n - 1).
  n_items = np.array(list(ex["popularity_rank_corr_items_per_scenario"].values()))
  assert abs(ex["popularity_rank_corr"]) < 4 * np.sqrt(np.sum(1 / (n_items - 1))) / n_items.size
  # Only the examination changed: the interest outcomes are the same draws as at the default.
  moderate, _ = synthetic.generate(BUSY)
  np.testing.assert_array_equal(log.true_like, moderate.true_like)
  np.testing.assert_array_equal(log.true_prob, moderate.true_prob)


def test_exposure_dose_moves_its_statistics_monotonically():
  stats = [_dials(dataclasses.replace(BUSY, exposure_bias=x))[0]["exposure_bias"]
           for x in (0.5, 1.5, 3.0)]
  ratio = [s["exam_ratio"] for s in stats]
  corr = [s["popularity_rank_corr"] for s in stats]
  assert 1.0 < ratio[0] < ratio[1] < ratio[2]
  assert 0.0 < corr[0] < corr[1] < corr[2]
  # Pooled over scenarios, popular items' click/like ratio is above the least popular ones'.
  assert all(s["click_like_per_popularity_quintile"][-1] > s["click_like_per_popularity_quintile"][0]
             for s in stats)


# ----------------------------------------------------------------------------- scenario_interest


def _same_user_item_other_scenario(log):
  """p_like of consecutive impressions of one (user, item) pair in two different scenarios."""
  key = log.user[:, 0].astype(np.int64) * 100_000 + log.item[:, 0]
  order = np.lexsort((log.scenario[:, 0], key))
  k, s, p = key[order], log.scenario[order, 0], log.true_prob[order]
  pair = (k[1:] == k[:-1]) & (s[1:] != s[:-1])
  return p[1:][pair], p[:-1][pair]


def test_scenario_interest_placebo_is_the_same_interest_everywhere():
  cfg = dataclasses.replace(BUSY, scenario_interest=0.0, drift=0.0)
  st, log, _ = _dials(cfg)
  assert st["scenario_interest"]["specific_share"] == 0.0
  p1, p2 = _same_user_item_other_scenario(log)
  assert p1.size > 50
  np.testing.assert_allclose(p1, p2, rtol=1e-5)              # S -> M switched off
  apart = synthetic.generate(dataclasses.replace(cfg, scenario_interest=0.5))[0]
  p1, p2 = _same_user_item_other_scenario(apart)
  assert np.abs(p1 - p2).max() > 0.1


def test_scenario_interest_dose():
  share = [_dials(dataclasses.replace(TINY, scenario_interest=x))[0]["scenario_interest"]
           ["specific_share"] for x in (0.2, 0.5, 0.8)]
  assert share[0] < share[1] < share[2]
  np.testing.assert_allclose(share, [0.2, 0.5, 0.8], atol=0.05)


# ----------------------------------------------------------------------------- transfer


def test_transfer_placebo_and_dose():
  stats = [_dials(dataclasses.replace(TINY, transfer=x))[0]["transfer"]
           for x in (0.0, 0.2, 0.5, 0.8)]
  related = [s["related_corr"] for s in stats]
  unrelated = [s["unrelated_corr"] for s in stats]
  assert abs(related[0]) < 0.06                              # placebo: independent parts
  assert related[1] < related[2] < related[3]
  np.testing.assert_allclose(related, [0.0, 0.2, 0.5, 0.8], atol=0.06)
  np.testing.assert_allclose(unrelated, 0.0, atol=0.06)      # unrelated scenarios: never
  assert sorted(len(g) for g in stats[0]["groups"]) == [2, 2]  # tiny: two pairs


# ----------------------------------------------------------------------------- drift


def test_drift_placebo_and_dose():
  corr = [_dials(dataclasses.replace(TINY, drift=x))[0]["drift"]["start_end_corr"]
          for x in (0.0, 0.2, 0.5, 0.8)]
  assert corr[0] == pytest.approx(1.0, abs=1e-9)
  assert corr[1] > corr[2] > corr[3]
  np.testing.assert_allclose(corr[1:], np.cos(np.array([0.2, 0.5, 0.8]) * np.pi / 2), atol=0.05)
  # In the log: without scenario interest, one (user, item) pair's p_like is constant over time
  # at drift 0 and moves at drift > 0.
  for drift, moves in ((0.0, False), (0.8, True)):
    log = synthetic.generate(dataclasses.replace(BUSY, scenario_interest=0.0, drift=drift))[0]
    p1, p2 = _same_user_item_other_scenario(log)
    assert (np.abs(p1 - p2).max() > 0.05) == moves


# ----------------------------------------------------------------------------- levels


def test_dial_levels_map_to_their_statistics_on_the_default_preset():
  default = synthetic.PRESETS["default"]
  for dial in synthetic.DIALS:
    levels = synthetic.DIAL_LEVELS[dial]
    assert levels["placebo"] == 0.0 < levels["moderate"] < levels["strong"]
    assert getattr(default, dial) == levels["moderate"]
  targets = {"moderate": {"exposure_bias": 3.0, "scenario_interest": 0.3, "transfer": 0.5,
                          "drift": 0.7},
             "strong": {"exposure_bias": 9.0, "scenario_interest": 0.6, "transfer": 0.9,
                        "drift": 0.2}}
  for level, want in targets.items():
    cfg = dataclasses.replace(default, **{d: synthetic.DIAL_LEVELS[d][level]
                                          for d in synthetic.DIALS})
    st = _dials(cfg)[0]
    for dial, target in want.items():
      got = st[dial][synthetic.DIAL_STATISTIC[dial]]
      # Sampled over 400 users: within sampling noise of the analytic value.
      assert got == pytest.approx(target, rel=0.1, abs=0.05), (level, dial, got)


# ----------------------------------------------------------------------------- paths


def test_generic_log_path_builds_the_same_dataset(tmp_path):
  direct, via_log = os.path.join(tmp_path, "direct"), os.path.join(tmp_path, "via_log")
  synthetic.build_synthetic(TINY, direct, name="synthetic-tiny")
  log_file = os.path.join(direct, synthetic.LOG_FILE)
  assert pq.read_schema(log_file).names == [
      "user_id", "user_segment", "item_id", "item_category", "scenario_id", "label", "timestamp",
      "true_like", "true_prob", "true_exam", "is_sample"]
  log_lib.build_from_log(log_file, via_log, synthetic.log_columns(), max_cur_len=TINY.max_cur_len,
                         max_all_len=TINY.max_all_len, all_seq_mode=TINY.all_seq_mode,
                         name="synthetic-tiny")
  a, b = BuiltDataset(direct), BuiltDataset(via_log)
  assert a.schema == b.schema and a.schema.has_truth and a.schema.has_exam
  assert set(a.log) == set(b.log)
  for key in a.log:
    np.testing.assert_array_equal(a.log[key], b.log[key], err_msg=key)
  for split in a.splits:
    assert len(a.splits[split]) > 0
    np.testing.assert_array_equal(a.splits[split], b.splits[split], err_msg=split)
  # The re-indexing was the identity: vocab entry k is raw id k.
  for f in a.schema.user_fields + a.schema.item_fields + a.schema.scenario_fields:
    np.testing.assert_array_equal(np.load(os.path.join(via_log, "vocab", f"{f.name}.npy")),
                                  np.arange(f.vocab_size))
  batch = a.gather(np.asarray(a.splits["test"][:8]))
  assert batch["true_prob"].shape == (8,) and batch["true_exam"].shape == (8,)


def test_ensure_synthetic_builds_once_atomically(tmp_path):
  cache = os.path.join(tmp_path, "cache")
  path = synthetic.ensure_synthetic("tiny", 3, cache)
  name = os.path.basename(path)
  assert re.fullmatch(r"synthetic-tiny-seed3-[0-9a-f]{8}", name), name
  stamp = os.path.getmtime(os.path.join(path, "schema.json"))
  assert synthetic.ensure_synthetic("tiny", 3, cache) == path
  assert os.path.getmtime(os.path.join(path, "schema.json")) == stamp
  assert sorted(os.listdir(cache)) == [name]                             # no temporary left
  assert BuiltDataset(path).schema.name == "synthetic-tiny"
  other = synthetic.ensure_synthetic("tiny", 3, cache, exposure_bias=0.0)
  assert re.fullmatch(r"synthetic-tiny-seed3-exposure_bias0\.0-[0-9a-f]{8}", os.path.basename(other))
  assert BuiltDataset(other).stats["dials"]["exposure_bias"]["exam_ratio"] == 1.0
  # A changed generator parameter set never reuses a cache built for another one.
  assert synthetic.ensure_synthetic("tiny", 3, cache, num_users=150) not in (path, other)
  with pytest.raises(ValueError, match="unknown synthetic preset"):
    synthetic.ensure_synthetic("huge", 0, cache)
  with pytest.raises(ValueError, match="transfer must be in"):
    synthetic.get_preset("tiny", transfer=1.5)


def test_command_line_writes_dataset_log_and_dial_statistics(tmp_path):
  out = os.path.join(tmp_path, "ds")
  root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  proc = subprocess.run([sys.executable, "-m", "mscan_jax.data.synthetic", "--preset=tiny",
                         f"--out={out}", "--seed=2", "--drift=0"], cwd=root, capture_output=True,
                        text=True, timeout=120)
  assert proc.returncode == 0, proc.stderr
  assert os.path.join(out, synthetic.LOG_FILE) in proc.stdout
  for dial in synthetic.DIALS:
    assert re.search(rf"^ +{dial} .* {synthetic.DIAL_STATISTIC[dial]} ", proc.stdout, re.M), dial
  assert "empty S_u share: train" in proc.stdout and "item_click_rate" in proc.stdout
  ds = BuiltDataset(out)
  log, _ = synthetic.generate(dataclasses.replace(TINY, seed=2, drift=0.0))
  assert ds.stats["generator"]["seed"] == 2 and ds.stats["generator"]["drift"] == 0.0
  assert ds.stats["dials"]["drift"]["start_end_corr"] == pytest.approx(1.0)
  with open(os.path.join(out, "stats.json")) as f:
    assert "test_auc" in json.load(f)["reference"]
  assert pq.read_metadata(os.path.join(out, synthetic.LOG_FILE)).num_rows == log.label.shape[0]
