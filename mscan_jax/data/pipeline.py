"""Input pipeline: shuffled training batches and padded evaluation batches, read with grain.

The pipeline is a grain dataset over *batches*, not records: `grain.MapDataset.range` of step
numbers, mapped to the row numbers of each step's batch, mapped to the batch itself, gathered
whole by `BuiltDataset.gather` (one `np.take` per stored array) in the batch layout of
`mscan_jax.data.schema`. Per-record mapping costs a Python call per example (~26k examples/s at
the Ali-CCP shape, benchmarks/pipeline.py); a batch per element leaves grain one call per batch.
grain's read threads (`grain.ReadOptions`: `workers` threads, `max(prefetch, workers)` batches
ahead) run the gathers in the background (numpy's `take` releases the GIL) while the device
computes. Closing the iterator (early stopping) cancels the batches not yet started and joins
the threads (a running gather takes milliseconds).

Training order is a pure function of (seed, epoch, step): epoch e is the permutation
`np.random.default_rng(_epoch_seed(seed, e)).permutation(N)` of the N training rows, and step k
of the epoch reads its positions [k B, (k + 1) B) (the last partial batch of an epoch is
dropped). The grain dataset is indexed by the global step, so grain's iterator state (its next
index) *is* the data position: the checkpoint saves it beside the train state
(`Checkpointer.save(data_iter=Batches.at(step))`), and a resumed run reads exactly the batches an
uninterrupted one would have read, whether it restores that state or, from a checkpoint without
it, starts at the step (`batch_rows` gives the rows of any step).
With several processes (multi-host), every process draws the same global batch of row numbers and
gathers only its own contiguous slice of it (sharding by process), so the global batch, and the
trained model, do not depend on the number of processes.

(Until issue #14 the permutation was grain's `MapDataset.shuffle` over records; numpy's is a
different order, with the same properties: a run started before that change and resumed after it
reads another order from the resumed step on.)

Evaluation keeps every sample exactly once: the last partial batch is padded (mask 0), so shapes
stay static and nothing is recompiled.
"""

from __future__ import annotations

import collections
import sys
import threading
from typing import Any, Sequence

import grain
import numpy as np

from mscan_jax.data.schema import BuiltDataset, DataError

# grain read threads. One thread gathers 150k-500k examples/s at the Ali-CCP shape on the 2-core
# CPU (benchmarks/pipeline.py; the figure depends on the load), an H200's training step consumes
# ~170k: a second thread keeps a margin where the host has cores to spare.
DEFAULT_WORKERS = 2
# Training never ends by itself: its grain dataset has this many steps (the caller stops).
_ENDLESS = sys.maxsize


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


def epoch_permutation(num_rows: int, seed: int, epoch: int) -> np.ndarray:
  """The order of the training rows in epoch `epoch`: positions 0..num_rows-1, (num_rows,) int64.
  A pure function of (num_rows, seed, epoch)."""
  return np.random.default_rng(_epoch_seed(seed, epoch)).permutation(num_rows)


def _process_slice(batch_size: int, process_index: int, process_count: int,
                   what: str = "batch size") -> slice:
  """This process's contiguous part of a global batch of `batch_size`."""
  if process_count < 1 or not 0 <= process_index < process_count:
    raise DataError(f"process index {process_index} is not in 0..{process_count - 1}")
  if batch_size % process_count:
    raise DataError(f"{what} {batch_size} is not divisible by {process_count} processes")
  per_process = batch_size // process_count
  return slice(process_index * per_process, (process_index + 1) * per_process)


def batch_rows(rows: np.ndarray, *, batch_size: int, seed: int, step: int, process_index: int = 0,
               process_count: int = 1) -> np.ndarray:
  """Row numbers this process reads at global training step `step`: (batch_size / process_count,).

  A pure function of its arguments: step `step` is step `step % S` of epoch `step // S`, S =
  `steps_per_epoch(len(rows), batch_size)`; the global batch is that epoch's permutation of
  `rows` at positions [(step % S) B, (step % S + 1) B), and this process gets its contiguous part.
  """
  return _StepRows(rows, batch_size, seed, process_index, process_count)(step)


class _StepRows:
  """step -> this process's row numbers of that step (`batch_rows`), with each epoch's
  permutation computed once (the last two are kept: grain's threads may straddle an epoch's end).
  Called from grain's read threads."""

  def __init__(self, rows: np.ndarray, batch_size: int, seed: int, process_index: int,
               process_count: int):
    self.part = _process_slice(batch_size, process_index, process_count)
    self.rows = np.asarray(rows, np.int64)
    self.batch_size, self.seed = batch_size, seed
    self.n_steps = steps_per_epoch(len(self.rows), batch_size)
    self.perms: dict[int, np.ndarray] = {}
    self.lock = threading.Lock()

  def __call__(self, step: int) -> np.ndarray:                                   # (B/P,)
    epoch, k = divmod(int(step), self.n_steps)
    with self.lock:
      perm = self.perms.get(epoch)
      if perm is None:
        perm = self.perms[epoch] = epoch_permutation(len(self.rows), self.seed, epoch)  # (N,)
        for old in sorted(self.perms)[:-2]:
          del self.perms[old]
    return self.rows[perm[k * self.batch_size:(k + 1) * self.batch_size][self.part]]


class Batches(grain.DatasetIterator):
  """The batches of a grain dataset indexed by step, read on grain's threads; a grain
  `DatasetIterator` (its state is grain's, `get_state`/`set_state`).

  `close()` stops grain's threads and waits for them (grain's own close does not wait). An
  exception in a gather is raised at its batch and closes the iterator. `at(step)` is the state
  before step `step` for a checkpoint: a training loop's consumer reads ahead of the step it
  trains (its own prefetch), so the live state is ahead of the checkpointed step; the states of
  the last `_KEEP` batches handed out are kept for that."""

  _KEEP = 4096

  def __init__(self, data: grain.MapDataset, *, start: int, prefetch: int, workers: int):
    super().__init__()
    threads = workers if prefetch > 0 and workers > 0 else 0
    self._it = data.to_iter_dataset(grain.ReadOptions(
        num_threads=threads, prefetch_buffer_size=max(prefetch, workers) if threads else 0)
    ).__iter__()
    self._lock = threading.Lock()
    self._states: collections.deque = collections.deque(maxlen=self._KEEP)   # (step, state)
    self.set_state({**self._it.get_state(), "next_index": int(start)})

  def __next__(self) -> dict[str, np.ndarray]:
    try:
      batch = next(self._it)
    except BaseException:       # the end (evaluation), or a failed gather: threads stop
      self.close()
      raise
    state = self._it.get_state()
    with self._lock:
      self._states.append((state["next_index"], state))
    return batch

  def get_state(self) -> dict[str, Any]:
    """grain's state after the batches handed out so far."""
    with self._lock:
      return dict(self._states[-1][1])

  def set_state(self, state: dict[str, Any]) -> None:
    """Continues at grain state `state` (e.g. restored from a checkpoint)."""
    self._it.set_state(dict(state))
    state = self._it.get_state()
    with self._lock:
      self._states.clear()
      self._states.append((state["next_index"], state))

  def at(self, step: int) -> grain.DatasetIterator:
    """A grain iterator holding the state before step `step` (one of the last `_KEEP` batches
    handed out, or the next one), to save in a checkpoint of step `step`."""
    with self._lock:
      found = [s for n, s in self._states if n == step]
      known = (self._states[0][0], self._states[-1][0])
    if not found:
      raise ValueError(f"the input pipeline has no state of step {step} (it knows steps "
                       f"{known[0]}..{known[1]})")
    return _Position(found[-1])

  def start_prefetch(self) -> None:
    self._it.start_prefetch()

  def close(self) -> None:
    if self._closed:
      return
    super().close()
    self._it.close()
    executor = getattr(self._it, "_executor", None)   # grain 0.2.18: its read threads' pool
    if executor is not None:
      executor.shutdown(wait=True)


class _Position(grain.DatasetIterator):
  """A grain iterator state to save (`Batches.at`): no batches, only `get_state`."""

  def __init__(self, state: dict[str, Any]):
    super().__init__()
    self._state = dict(state)

  def __next__(self):
    raise TypeError("a saved pipeline position is not iterable")

  def get_state(self) -> dict[str, Any]:
    return dict(self._state)

  def set_state(self, state: dict[str, Any]) -> None:
    self._state = dict(state)


def train_batches(dataset: BuiltDataset, rows: np.ndarray, *, batch_size: int, seed: int,
                  start_step: int = 0, process_index: int = 0, process_count: int = 1,
                  prefetch: int = 2, workers: int = DEFAULT_WORKERS) -> Batches:
  """Endless training batches from global step `start_step` on (the order of `batch_rows`).

  `batch_size` is the global batch; this process yields its slice of batch_size / process_count
  samples. Each epoch is a fresh permutation of `rows` seeded by (seed, epoch), computed once per
  epoch. The grain dataset's index is the global step. `prefetch` <= 0 or `workers` <= 0 gathers
  on the consumer's thread.
  """
  step_rows = _StepRows(rows, batch_size, seed, process_index, process_count)
  data = grain.MapDataset.range(_ENDLESS).map(step_rows).map(dataset.gather)
  return Batches(data, start=start_step, prefetch=prefetch, workers=workers)


def eval_batches(dataset: BuiltDataset, rows: np.ndarray, *, batch_size: int,
                 process_index: int = 0, process_count: int = 1,
                 prefetch: int = 2, workers: int = DEFAULT_WORKERS) -> Batches:
  """Every row exactly once, in order; the last batch is padded with mask 0 (static shapes)."""
  part = _process_slice(batch_size, process_index, process_count, "eval batch size")
  rows = np.asarray(rows, np.int64)
  n = len(rows)
  n_batches = max(1, -(-n // batch_size))

  def make(b: int) -> dict[str, np.ndarray]:
    idx = np.arange(b * batch_size, (b + 1) * batch_size)[part]       # (B/P,) positions in rows
    real = idx < n
    batch = dataset.gather(rows[np.where(real, idx, n - 1)])
    batch["mask"] = real.astype(np.float32)
    return batch

  data = grain.MapDataset.range(n_batches).map(make)
  return Batches(data, start=0, prefetch=prefetch, workers=workers)
