"""Input pipeline (mscan_jax.data.pipeline): rows of a split restricted to scenarios, training
batches over them, evaluation batches that hold every row once."""

import numpy as np

from mscan_jax import config as config_lib
from mscan_jax import models
from mscan_jax.data import pipeline
from mscan_jax.data.schema import BuiltDataset, Field, Schema, write_built

P = 5
SCHEMA = Schema(user_fields=(Field("user_id", 20), Field("user_segment", 4)),
                item_fields=(Field("item_id", 30), Field("item_category", 5)),
                scenario_fields=(Field("scenario_id", P + 1),), max_cur_len=4, max_all_len=6)


def _write_tiny_dataset(path: str, n: int = 200) -> BuiltDataset:
  """Scenario of row k is k % P + 1; rows 0-119 train, 120-159 valid, 160-199 test."""
  rng = np.random.default_rng(0)

  def ids(fields):
    return np.stack([rng.integers(1, f.vocab_size, n) for f in fields], 1).astype(np.int32)

  log = {"user": ids(SCHEMA.user_fields), "item": ids(SCHEMA.item_fields),
         "scenario": (np.arange(n) % P + 1)[:, None].astype(np.int32),
         "label": rng.integers(0, 2, n).astype(np.int8),
         "user_id": rng.integers(0, 20, n).astype(np.int32),
         "sample_id": np.arange(n, dtype=np.int64),
         "cur_idx": -np.ones((n, SCHEMA.max_cur_len), np.int64),
         "all_idx": -np.ones((n, SCHEMA.max_all_len), np.int64)}
  splits = {"train": np.arange(0, 120), "valid": np.arange(120, 160), "test": np.arange(160, n)}
  write_built(path, SCHEMA, log, splits, stats={})
  return BuiltDataset(path)


def test_single_stage_batches_only_hold_the_target_scenario(tmp_path):
  dataset = _write_tiny_dataset(str(tmp_path / "ds"))
  config = config_lib.get_config()
  config.model, config.single.scenario = "single", 2
  (_, stage), = models.stages(config)
  rows = pipeline.split_rows(dataset, "train", stage.data.train_scenarios)
  assert len(rows) == 24                                     # every 5th of 120 rows
  batches = pipeline.train_batches(dataset, rows, batch_size=8, seed=0, prefetch=1)
  seen = np.concatenate([next(batches)["scenario"][:, 0] for _ in range(7)])   # > 2 epochs
  assert seen.size == 56 and np.all(seen == 2)
  for split, scen in (("valid", stage.data.train_scenarios), ("test", stage.data.eval_scenarios)):
    rows = pipeline.split_rows(dataset, split, scen)
    assert len(rows) == 8 and np.all(np.asarray(dataset.log["scenario"][rows, 0]) == 2)


def test_eval_batches_hold_every_row_once_and_pad_the_last_batch(tmp_path):
  dataset = _write_tiny_dataset(str(tmp_path / "ds"))
  rows = pipeline.split_rows(dataset, "test")                # 40 rows
  batches = list(pipeline.eval_batches(dataset, rows, batch_size=16, prefetch=1))
  assert [b["mask"].shape[0] for b in batches] == [16, 16, 16]
  mask = np.concatenate([b["mask"] for b in batches])
  ids = np.concatenate([b["sample_id"] for b in batches])
  assert mask.sum() == 40 and np.all(mask[:40] == 1) and np.all(mask[40:] == 0)
  np.testing.assert_array_equal(ids[:40], np.arange(160, 200))
