"""Input pipeline: shuffled training batches and padded evaluation batches, gathered on threads.

Batches are gathered whole (one `np.take` per stored array, `BuiltDataset.gather`), not record
by record: the pipeline draws a batch of *row numbers* and the gather turns it into the batch
layout of `mscan_jax.data.schema`. Gathers run on `workers` background threads (numpy's `take`
releases the GIL) at most `prefetch` batches ahead, so the host prepares the next batches while
the device computes. Nothing blocks when the consumer stops: closing the generator (early
stopping, or the generator being dropped) cancels the batches not yet started and joins the
threads (a running gather takes milliseconds).

Training order is a pure function of (seed, epoch, step): epoch e is the permutation
`np.random.default_rng(_epoch_seed(seed, e)).permutation(N)` of the N training rows, and step k
of the epoch reads its positions [k B, (k + 1) B) (the last partial batch of an epoch is
dropped). The data position of a run is therefore its step, and a resumed run reads exactly the
batches an uninterrupted one would have read (`batch_rows` gives the rows of any step).
With several processes (multi-host), every process draws the same global batch of row numbers and
gathers only its own contiguous slice of it (sharding by process), so the global batch, and the
trained model, do not depend on the number of processes.

(Until issue #14 the permutation was grain's `MapDataset.shuffle`; numpy's is a different order,
with the same properties: a run started before the change and resumed after it reads another
order from the resumed step on.)

Evaluation keeps every sample exactly once: the last partial batch is padded (mask 0), so shapes
stay static and nothing is recompiled.
"""

from __future__ import annotations

import collections
import concurrent.futures
from typing import Callable, Iterable, Iterator, Sequence, TypeVar

import numpy as np

from mscan_jax.data.schema import BuiltDataset, DataError

T = TypeVar("T")
# Gather threads. One thread gathers 150k-500k examples/s at the Ali-CCP shape on the 2-core CPU
# (benchmarks/pipeline.py; the figure depends on the load), an H200's training step consumes
# ~170k: a second thread keeps a margin where the host has cores to spare.
DEFAULT_WORKERS = 2


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
  part = _process_slice(batch_size, process_index, process_count)
  epoch, k = divmod(int(step), steps_per_epoch(len(rows), batch_size))
  glob = epoch_permutation(len(rows), seed, epoch)[k * batch_size:(k + 1) * batch_size]  # (B,)
  return np.asarray(rows)[glob[part]]


def train_batches(dataset: BuiltDataset, rows: np.ndarray, *, batch_size: int, seed: int,
                  start_step: int = 0, process_index: int = 0, process_count: int = 1,
                  prefetch: int = 2, workers: int = DEFAULT_WORKERS
                  ) -> Iterator[dict[str, np.ndarray]]:
  """Endless training batches from global step `start_step` on (the order of `batch_rows`).

  `batch_size` is the global batch; this process yields its slice of batch_size / process_count
  samples. Each epoch is a fresh permutation of `rows` seeded by (seed, epoch), computed once per
  epoch. `prefetch` <= 0 or `workers` <= 0 gathers on the consumer's thread.
  """
  part = _process_slice(batch_size, process_index, process_count)
  rows = np.asarray(rows, np.int64)
  n_steps = steps_per_epoch(len(rows), batch_size)

  def plan() -> Iterator[np.ndarray]:          # this process's row numbers of each step, (B/P,)
    step, epoch, perm = int(start_step), None, None
    while True:
      e, k = divmod(step, n_steps)
      if e != epoch:
        epoch, perm = e, epoch_permutation(len(rows), seed, e)                  # (N,)
      yield rows[perm[k * batch_size:(k + 1) * batch_size][part]]
      step += 1

  return _ordered_map(dataset.gather, plan(), prefetch=prefetch, workers=workers)


def eval_batches(dataset: BuiltDataset, rows: np.ndarray, *, batch_size: int,
                 process_index: int = 0, process_count: int = 1,
                 prefetch: int = 2, workers: int = DEFAULT_WORKERS
                 ) -> Iterator[dict[str, np.ndarray]]:
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

  return _ordered_map(make, range(n_batches), prefetch=prefetch, workers=workers)


def _ordered_map(fn: Callable[..., T], items: Iterable, *, prefetch: int,
                 workers: int) -> Iterator[T]:
  """fn(item) for each item, in order, computed on `workers` threads at most max(prefetch,
  workers) items ahead of the consumer. Closing the generator cancels what has not started and
  joins the threads; an exception in `fn` is raised at its item."""
  if prefetch <= 0 or workers <= 0:
    yield from map(fn, items)
    return
  depth = max(prefetch, workers)
  pool = concurrent.futures.ThreadPoolExecutor(workers, thread_name_prefix="pipeline")
  pending: collections.deque = collections.deque()
  try:
    for item in items:
      pending.append(pool.submit(fn, item))
      if len(pending) >= depth:
        yield pending.popleft().result()
    while pending:
      yield pending.popleft().result()
  finally:
    for future in pending:
      future.cancel()
    pool.shutdown(wait=True, cancel_futures=True)
