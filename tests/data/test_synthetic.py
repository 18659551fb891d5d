"""Synthetic causal benchmark (mscan_jax.data.synthetic): causal structure, determinism, and
agreement with the generic-log path."""

import dataclasses
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
ARRAYS = ("user", "item", "scenario", "label", "user_id", "time", "sample_id", "true_like",
          "true_prob")


def test_deterministic_for_a_seed():
  a, ta = synthetic.generate(TINY)
  b, tb = synthetic.generate(TINY)
  c, _ = synthetic.generate(dataclasses.replace(TINY, seed=1))
  for key in ARRAYS:
    np.testing.assert_array_equal(getattr(a, key), getattr(b, key))
  np.testing.assert_array_equal(ta.examination, tb.examination)
  assert a.user_fields == b.user_fields and a.item_fields == b.item_fields
  assert not np.array_equal(a.label, c.label) or not np.array_equal(a.item, c.item)


def test_tiny_preset_shape_and_contiguous_ids():
  log, truth = synthetic.generate(TINY)
  e = log.label.shape[0]
  assert 3000 <= e <= 5000
  assert log.scenario_fields[0].vocab_size == TINY.num_scenarios + 1
  assert [f.name for f in log.user_fields] == ["user_id", "user_segment"]
  assert [f.name for f in log.item_fields] == ["item_id", "item_category"]
  # Every id 1..V-1 of every field occurs, so re-indexing the written log is the identity.
  for fields, arr in ((log.user_fields, log.user), (log.item_fields, log.item),
                      (log.scenario_fields, log.scenario)):
    for j, f in enumerate(fields):
      np.testing.assert_array_equal(np.unique(arr[:, j]), np.arange(1, f.vocab_size))
  np.testing.assert_array_equal(log.user_id, log.user[:, 0] - 1)
  assert np.all(np.diff(log.time) > 0)                       # rows are in time order
  # Long tail: scenario 1 carries the most traffic, the last the least.
  counts = np.bincount(log.scenario[:, 0])[1:]
  assert counts[0] == counts.max() and counts[-1] == counts.min()


def test_click_requires_like_and_examination():
  log, truth = synthetic.generate(synthetic.PRESETS["default"])
  assert np.all(log.label <= log.true_like)                  # y = liked AND examined
  assert 0.05 <= log.label.mean() <= 0.2
  scen = log.scenario[:, 0] - 1
  liked = log.true_like == 1
  # Among liked impressions, the click rate of scenario s estimates e_s (S -> Y).
  observed = np.bincount(scen[liked], weights=log.label[liked]) / np.bincount(scen[liked])
  np.testing.assert_allclose(observed, truth.examination, atol=0.06)
  assert truth.examination.min() <= 0.11 and truth.examination.max() >= 0.89
  # true_prob is calibrated for true_like.
  assert abs(log.true_prob.mean() - log.true_like.mean()) < 0.01


def test_bias_strength_zero_examines_every_scenario_alike():
  _, truth = synthetic.generate(dataclasses.replace(TINY, bias_strength=0.0))
  np.testing.assert_allclose(truth.examination, 0.5)


def _same_user_item_other_scenario(log):
  """p_like of consecutive impressions of one (user, item) pair in two different scenarios."""
  key = log.user[:, 0].astype(np.int64) * 100_000 + log.item[:, 0]
  order = np.lexsort((log.scenario[:, 0], key))
  k, s, p = key[order], log.scenario[order, 0], log.true_prob[order]
  pair = (k[1:] == k[:-1]) & (s[1:] != s[:-1])
  return p[1:][pair], p[:-1][pair]


def test_interest_overlap_sets_how_much_interest_depends_on_the_scenario():
  many = dict(events_per_user=60.0)
  same = synthetic.generate(dataclasses.replace(TINY, interest_overlap=1.0, **many))[0]
  p1, p2 = _same_user_item_other_scenario(same)
  assert p1.size > 10
  np.testing.assert_allclose(p1, p2, rtol=1e-5)        # rho = 1: S -> M switched off
  apart = synthetic.generate(dataclasses.replace(TINY, interest_overlap=0.0, **many))[0]
  p1, p2 = _same_user_item_other_scenario(apart)
  assert p1.size > 10 and np.abs(p1 - p2).max() > 0.1


def test_generic_log_path_builds_the_same_dataset(tmp_path):
  direct, via_log = os.path.join(tmp_path, "direct"), os.path.join(tmp_path, "via_log")
  synthetic.build_synthetic(TINY, direct, name="synthetic-tiny")
  log_file = os.path.join(direct, synthetic.LOG_FILE)
  assert pq.read_schema(log_file).names == [
      "user_id", "user_segment", "item_id", "item_category", "scenario_id", "label", "timestamp",
      "true_like", "true_prob"]
  log_lib.build_from_log(log_file, via_log, synthetic.log_columns(), max_cur_len=TINY.max_cur_len,
                         max_all_len=TINY.max_all_len, all_seq_mode=TINY.all_seq_mode,
                         name="synthetic-tiny")
  a, b = BuiltDataset(direct), BuiltDataset(via_log)
  assert a.schema == b.schema and a.schema.has_truth
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
  assert batch["true_prob"].shape == (8,)


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
  other = synthetic.ensure_synthetic("tiny", 3, cache, bias_strength=0.0)
  assert re.fullmatch(r"synthetic-tiny-seed3-bias_strength0\.0-[0-9a-f]{8}", os.path.basename(other))
  # A changed generator parameter set never reuses a cache built for another one.
  assert synthetic.ensure_synthetic("tiny", 3, cache, num_users=150) not in (path, other)
  with pytest.raises(ValueError, match="unknown synthetic preset"):
    synthetic.ensure_synthetic("huge", 0, cache)


def test_command_line_writes_dataset_and_log(tmp_path):
  out = os.path.join(tmp_path, "ds")
  root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  proc = subprocess.run([sys.executable, "-m", "mscan_jax.data.synthetic", "--preset=tiny",
                         f"--out={out}", "--seed=2"], cwd=root, capture_output=True, text=True,
                        timeout=120)
  assert proc.returncode == 0, proc.stderr
  assert os.path.join(out, synthetic.LOG_FILE) in proc.stdout
  ds = BuiltDataset(out)
  log, _ = synthetic.generate(dataclasses.replace(TINY, seed=2))
  assert ds.stats["generator"]["seed"] == 2
  assert pq.read_metadata(os.path.join(out, synthetic.LOG_FILE)).num_rows == log.label.shape[0]
