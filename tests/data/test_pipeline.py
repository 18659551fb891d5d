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


# ----------------------------------------------------------------------------- training order
# Issue #14: the order is numpy's epoch permutation, a pure function of (seed, epoch, step).

B = 8          # 120 training rows: 15 steps per epoch


def _ids(batches, n: int) -> list[np.ndarray]:
  return [next(batches)["sample_id"] for _ in range(n)]


def test_training_order_is_a_pure_function_of_seed_and_step(tmp_path):
  dataset = _write_tiny_dataset(str(tmp_path / "ds"))
  rows = pipeline.split_rows(dataset, "train")
  a = _ids(pipeline.train_batches(dataset, rows, batch_size=B, seed=3), 20)
  b = _ids(pipeline.train_batches(dataset, rows, batch_size=B, seed=3, prefetch=0), 20)
  other = _ids(pipeline.train_batches(dataset, rows, batch_size=B, seed=4), 20)
  np.testing.assert_array_equal(np.stack(a), np.stack(b))      # threads change nothing
  assert not np.array_equal(np.stack(a), np.stack(other))
  for step in (0, 7, 14, 15, 19):                              # sample ids are the row numbers
    np.testing.assert_array_equal(
        a[step], pipeline.batch_rows(rows, batch_size=B, seed=3, step=step))


def test_each_epoch_reads_every_row_once_in_a_new_order(tmp_path):
  dataset = _write_tiny_dataset(str(tmp_path / "ds"))
  rows = pipeline.split_rows(dataset, "train")
  ids = np.stack(_ids(pipeline.train_batches(dataset, rows, batch_size=B, seed=0), 45))
  epochs = ids.reshape(3, 15 * B)
  for epoch in epochs:
    np.testing.assert_array_equal(np.sort(epoch), np.arange(120))
  assert not np.array_equal(epochs[0], epochs[1]) and not np.array_equal(epochs[1], epochs[2])
  # A partial last batch is dropped: 120 rows in batches of 50 -> 2 steps, 20 rows unread.
  part = np.concatenate(_ids(pipeline.train_batches(dataset, rows, batch_size=50, seed=0), 2))
  assert len(np.unique(part)) == 100


def test_a_resumed_run_reads_the_batches_of_an_uninterrupted_one(tmp_path):
  dataset = _write_tiny_dataset(str(tmp_path / "ds"))
  rows = pipeline.split_rows(dataset, "train")
  full = _ids(pipeline.train_batches(dataset, rows, batch_size=B, seed=1), 40)
  for start in range(0, 34):                                   # every step of two epochs
    resumed = _ids(pipeline.train_batches(dataset, rows, batch_size=B, seed=1,
                                          start_step=start), 6)
    np.testing.assert_array_equal(np.stack(resumed), np.stack(full[start:start + 6]))


def test_process_slices_partition_the_global_batch(tmp_path):
  dataset = _write_tiny_dataset(str(tmp_path / "ds"))
  rows = pipeline.split_rows(dataset, "train")
  whole = np.stack(_ids(pipeline.train_batches(dataset, rows, batch_size=B, seed=2), 18))
  for count in (2, 4):
    parts = [np.stack(_ids(pipeline.train_batches(dataset, rows, batch_size=B, seed=2,
                                                  process_index=i, process_count=count), 18))
             for i in range(count)]
    assert all(p.shape == (18, B // count) for p in parts)
    np.testing.assert_array_equal(np.concatenate(parts, axis=1), whole)
  try:
    pipeline.train_batches(dataset, rows, batch_size=B, seed=2, process_count=3)
  except pipeline.DataError as e:
    assert "not divisible by 3 processes" in str(e)
  else:
    raise AssertionError("a batch of 8 split over 3 processes was accepted")


def _pipeline_threads() -> list:
  import threading
  return [t for t in threading.enumerate() if t.name.startswith("grain-prefetch")]  # grain's


def test_closing_the_generator_stops_its_threads(tmp_path):
  dataset = _write_tiny_dataset(str(tmp_path / "ds"))
  rows = pipeline.split_rows(dataset, "train")
  before = len(_pipeline_threads())
  batches = pipeline.train_batches(dataset, rows, batch_size=B, seed=0, prefetch=4, workers=2)
  next(batches)                                  # threads started, batches queued ahead
  assert len(_pipeline_threads()) > before
  batches.close()                                # early stopping
  assert len(_pipeline_threads()) == before
  evals = pipeline.eval_batches(dataset, pipeline.split_rows(dataset, "test"), batch_size=8)
  next(evals)
  evals.close()
  assert len(_pipeline_threads()) == before


def test_a_failing_gather_raises_in_the_consumer_and_stops_the_threads(tmp_path):
  dataset = _write_tiny_dataset(str(tmp_path / "ds"))
  rows = pipeline.split_rows(dataset, "train")
  before = len(_pipeline_threads())
  bad = np.concatenate([rows[:-1], [10**9]])     # a row number past the log
  batches = pipeline.train_batches(dataset, bad, batch_size=len(bad), seed=0)
  try:
    next(batches)
  except IndexError:
    pass
  else:
    raise AssertionError("a row past the log was gathered")
  assert len(_pipeline_threads()) == before


# ----------------------------------------------------------------------------- gather

def test_gather_matches_a_row_by_row_reference(tmp_path):
  """`BuiltDataset.gather` (one np.take per array) against a plain loop over rows and steps."""
  n, rng = 200, np.random.default_rng(5)
  path = str(tmp_path / "ds")
  _write_tiny_dataset(path, n)
  for key, length in (("cur_idx", SCHEMA.max_cur_len), ("all_idx", SCHEMA.max_all_len)):
    idx = np.full((n, length), -1, np.int64)
    for r in range(1, n):                       # left-aligned earlier rows, then padding
      k = int(rng.integers(0, min(r, length) + 1))
      idx[r, :k] = np.sort(rng.choice(r, size=k, replace=False))
    np.save(f"{path}/log/{key}.npy", idx)
  ds = BuiltDataset(path)
  lg = {k: np.asarray(v) for k, v in ds.log.items()}
  rows = rng.permutation(n)[:37]
  batch = ds.gather(rows)
  for b, r in enumerate(rows):
    assert batch["cur_len"][b] == (lg["cur_idx"][r] >= 0).sum()
    assert batch["all_len"][b] == (lg["all_idx"][r] >= 0).sum()
    for t, j in enumerate(lg["cur_idx"][r]):
      np.testing.assert_array_equal(batch["cur_seq"][b, t], lg["item"][j] if j >= 0 else 0)
    for t, j in enumerate(lg["all_idx"][r]):
      np.testing.assert_array_equal(batch["all_seq"][b, t], lg["item"][j] if j >= 0 else 0)
      assert batch["all_click"][b, t] == (lg["label"][j] if j >= 0 else 0)
      assert batch["all_scenario"][b, t] == (lg["scenario"][j, 0] if j >= 0 else 0)
    for key in ("user", "item", "scenario", "sample_id", "user_id"):
      np.testing.assert_array_equal(batch[key][b], lg[key][r])
    assert batch["label"][b] == lg["label"][r]
  dtypes = {"user": np.int32, "cur_seq": np.int32, "all_seq": np.int32, "all_click": np.int32,
            "all_scenario": np.int32, "cur_len": np.int32, "label": np.float32,
            "sample_id": np.int64, "mask": np.float32}
  assert {k: batch[k].dtype for k in dtypes} == dtypes
  assert batch["all_seq"].shape == (37, SCHEMA.max_all_len, len(SCHEMA.item_fields))
