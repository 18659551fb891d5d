"""Input pipeline on grain: shuffled training batches and padded evaluation batches.

Batches are gathered whole (one numpy fancy index per array, `BuiltDataset.gather`), not record by
record: grain shuffles and batches *row numbers*, and a `map` turns a batch of row numbers into the
batch layout of `mscan_jax.data.schema`. grain's `ReadOptions` prefetch batches on background
threads, so the host prepares the next batches while the device computes.

Training order is a pure function of (seed, epoch, batch index): the data position of a run is
its step, so a resumed run reads exactly the batches an uninterrupted one would have read.
With several processes (multi-host), every process draws the same global batch of row numbers and
gathers only its own contiguous slice of it (sharding by process), so the global batch, and the
trained model, do not depend on the number of processes.

Evaluation keeps every sample exactly once: the last partial batch is padded (mask 0), so shapes
stay static and nothing is recompiled.
"""

from __future__ import annotations

from typing import Iterator, Sequence

import grain
import numpy as np

from mscan_jax.data.schema import BuiltDataset, DataError


def split_rows(dataset: BuiltDataset, split: str, scenarios: Sequence[int] = ()) -> np.ndarray:
  """Log rows of `split`, optionally restricted to scenario ids `scenarios`. (N,) int64."""
  rows = np.asarray(dataset.splits[split], np.int64)
  if scenarios:
    unknown = [s for s in scenarios if not 1 <= int(s) <= dataset.schema.num_scenarios]
    if unknown:
      raise DataError(f"scenario ids {unknown} do not exist in {dataset.path} "
                      f"(valid: 1..{dataset.schema.num_scenarios})")
    scen = np.asarray(dataset.log["scenario"][rows, 0])
    rows = rows[np.isin(scen, np.asarray(scenarios))]
  if rows.size == 0:
    raise DataError(f"{dataset.path}: split {split!r} has no sample"
                    + (f" in scenarios {tuple(scenarios)}" if scenarios else ""))
  return rows


def steps_per_epoch(num_rows: int, batch_size: int) -> int:
  """Full batches per epoch (training drops the last partial batch; at least one batch)."""
  if num_rows < batch_size:
    raise DataError(f"the training split has {num_rows} samples, fewer than one batch of "
                    f"{batch_size}: lower config.train.batch_size")
  return num_rows // batch_size


def _epoch_seed(seed: int, epoch: int) -> int:
  return int(np.random.SeedSequence([seed, epoch]).generate_state(1)[0])


def train_batches(dataset: BuiltDataset, rows: np.ndarray, *, batch_size: int, seed: int,
                  start_step: int = 0, process_index: int = 0, process_count: int = 1,
                  prefetch: int = 2) -> Iterator[dict[str, np.ndarray]]:
  """Endless training batches from global step `start_step` on.

  `batch_size` is the global batch; this process yields its slice of batch_size / process_count
  samples. Each epoch is a fresh permutation of `rows` seeded by (seed, epoch).
  """
  if batch_size % process_count:
    raise DataError(f"batch size {batch_size} is not divisible by {process_count} processes")
  per_process = batch_size // process_count
  lo = process_index * per_process
  n_steps = steps_per_epoch(len(rows), batch_size)
  epoch, offset = divmod(start_step, n_steps)
  while True:
    ds = (grain.MapDataset.range(len(rows))
          .shuffle(seed=_epoch_seed(seed, epoch))
          .batch(batch_size, drop_remainder=True))[offset:]
    ds = ds.map(lambda idx: dataset.gather(rows[np.asarray(idx)[lo:lo + per_process]]))
    read = grain.ReadOptions(num_threads=max(1, prefetch), prefetch_buffer_size=max(1, prefetch))
    yield from ds.to_iter_dataset(read)
    epoch, offset = epoch + 1, 0


def eval_batches(dataset: BuiltDataset, rows: np.ndarray, *, batch_size: int,
                 process_index: int = 0, process_count: int = 1,
                 prefetch: int = 2) -> Iterator[dict[str, np.ndarray]]:
  """Every row exactly once, in order; the last batch is padded with mask 0 (static shapes)."""
  if batch_size % process_count:
    raise DataError(f"eval batch size {batch_size} is not divisible by {process_count} processes")
  n = len(rows)
  n_batches = max(1, -(-n // batch_size))
  per_process = batch_size // process_count
  lo = process_index * per_process

  def make(b: int) -> dict[str, np.ndarray]:
    idx = np.arange(b * batch_size, (b + 1) * batch_size)[lo:lo + per_process]
    real = idx < n
    batch = dataset.gather(rows[np.where(real, idx, n - 1)])
    batch["mask"] = real.astype(np.float32)
    return batch

  ds = grain.MapDataset.range(n_batches).map(make)
  read = grain.ReadOptions(num_threads=max(1, prefetch), prefetch_buffer_size=max(1, prefetch))
  yield from ds.to_iter_dataset(read)
