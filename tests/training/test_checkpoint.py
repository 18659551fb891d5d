"""Checkpointer with the input pipeline's grain state (item `data_iter`): a resumed pipeline
continues at the saved batch; a checkpoint without the item (older runs) still restores."""

import os

import jax.numpy as jnp
import numpy as np

from mscan_jax.data import pipeline
from mscan_jax.training.checkpoint import DATA_ITER, Checkpointer
from tests.data.test_pipeline import _write_tiny_dataset

B = 8          # 120 training rows: 15 steps per epoch


def _state(v: float):
  return {"w": jnp.full((3,), v)}, {"w": jnp.full((3,), -v)}


def _ids(batches, n: int) -> np.ndarray:
  return np.stack([next(batches)["sample_id"] for _ in range(n)])


def test_the_saved_grain_state_resumes_at_the_checkpointed_step(tmp_path):
  dataset = _write_tiny_dataset(str(tmp_path / "ds"))
  rows = pipeline.split_rows(dataset, "train")
  full = _ids(pipeline.train_batches(dataset, rows, batch_size=B, seed=1), 30)
  ckpt = Checkpointer(str(tmp_path / "run"))
  batches = pipeline.train_batches(dataset, rows, batch_size=B, seed=1)
  _ids(batches, 17)                        # handed out up to step 16 (a consumer reading ahead)
  state, best = _state(1.0)
  ckpt.save(13, state, best, {"step": 13}, data_iter=batches.at(13))   # trained 13 steps
  batches.close()
  assert os.path.isdir(os.path.join(ckpt.directory, "13", DATA_ITER))
  # A fresh pipeline started elsewhere (step 0) continues at step 13 from the saved state alone.
  resumed = pipeline.train_batches(dataset, rows, batch_size=B, seed=1, start_step=0)
  assert ckpt.restore_data_iter(13, resumed)
  np.testing.assert_array_equal(_ids(resumed, 17), full[13:30])
  resumed.close()
  # The same through `restore`, with the train state.
  again = pipeline.train_batches(dataset, rows, batch_size=B, seed=1, start_step=5)
  got, got_best, meta = ckpt.restore(*_state(0.0), data_iter=again)
  np.testing.assert_array_equal(got["w"], state["w"])
  np.testing.assert_array_equal(got_best["w"], best["w"])
  assert meta == {"step": 13}
  np.testing.assert_array_equal(_ids(again, 2), full[13:15])
  again.close()
  # Resumed by another number of processes (grain keeps a file per process): from the step.
  item = os.path.join(ckpt.directory, "13", DATA_ITER)
  os.rename(os.path.join(item, "process_0-of-1.json"), os.path.join(item, "process_0-of-2.json"))
  other = pipeline.train_batches(dataset, rows, batch_size=B, seed=1, start_step=13)
  assert not ckpt.restore_data_iter(13, other)
  np.testing.assert_array_equal(_ids(other, 2), full[13:15])
  other.close()
  ckpt.close()


def test_a_checkpoint_without_the_grain_state_restores_and_the_pipeline_starts_at_the_step(
    tmp_path):
  dataset = _write_tiny_dataset(str(tmp_path / "ds"))
  rows = pipeline.split_rows(dataset, "train")
  full = _ids(pipeline.train_batches(dataset, rows, batch_size=B, seed=2), 20)
  ckpt = Checkpointer(str(tmp_path / "run"))
  state, best = _state(2.0)
  ckpt.save(10, state, best, {"step": 10})                        # as before the grain state
  assert not os.path.exists(os.path.join(ckpt.directory, "10", DATA_ITER))
  batches = pipeline.train_batches(dataset, rows, batch_size=B, seed=2, start_step=10)
  got, _, meta = ckpt.restore(*_state(0.0), data_iter=batches)
  np.testing.assert_array_equal(got["w"], state["w"])
  assert meta == {"step": 10}
  assert not ckpt.restore_data_iter(10, batches)                  # nothing to restore: untouched
  assert not ckpt.restore_data_iter(99, batches)                  # no such checkpoint
  np.testing.assert_array_equal(_ids(batches, 10), full[10:20])
  batches.close()
  ckpt.close()


def test_at_knows_only_the_steps_handed_out(tmp_path):
  dataset = _write_tiny_dataset(str(tmp_path / "ds"))
  rows = pipeline.split_rows(dataset, "train")
  batches = pipeline.train_batches(dataset, rows, batch_size=B, seed=0, start_step=4)
  _ids(batches, 3)                                                # steps 4, 5, 6
  assert [batches.at(s).get_state() == {**batches.get_state(), "next_index": s}
          for s in (4, 5, 6, 7)] == [True] * 4
  for step in (3, 8):
    try:
      batches.at(step)
    except ValueError as e:
      assert f"no state of step {step}" in str(e) and "steps 4..7" in str(e)
    else:
      raise AssertionError(f"a state of step {step} was made up")
  batches.close()
