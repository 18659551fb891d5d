"""The steps of training and evaluation, and the host-side helpers that feed them.

`train_step(state, batch) -> (state, metrics)` (pure, jitted with the state donated by its
callers), `eval_step`, `predict` (the scores of a split, on the host), `compute_metrics`, the
divergence guard (`check_divergence`) and the device prefetch. Both drivers use them: the
single-run driver (`mscan_jax.training.train`) applies one jitted step at a time, the population
driver (`mscan_jax.training.population`) vmaps `train_step` over P members; the rules of the loop
between the steps live in `mscan_jax.training.loop`.

The steps never branch on the model's name: models return named logits, and the Scenario Bias
Eliminator's rules (`mscan_jax.training.objective`) turn them into the loss and the score.
"""

from __future__ import annotations

import functools
import queue
import threading
from typing import Any, Callable, Iterator

import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from jax.experimental import multihost_utils
from jax.sharding import NamedSharding

from mscan_jax.data import pipeline
from mscan_jax.data.schema import BuiltDataset, dummy_batch
from mscan_jax.evaluation import metrics as metrics_lib
from mscan_jax.training import objective, rundir


@flax.struct.dataclass
class TrainState:
  step: jnp.ndarray      # () int32
  params: Any
  opt_state: Any


class DivergenceError(FloatingPointError):
  """The loss or the gradient norm became non-finite, or grew past `config.train.divergence_factor`
  times its value at the run's first step: the run stops; the last good checkpoint is kept."""


class NonFiniteLossError(DivergenceError):
  """A NaN or inf loss: the run stops; the last good checkpoint is kept."""


# ----------------------------------------------------------------------------- steps

def make_optimizer(config: ml_collections.ConfigDict) -> optax.GradientTransformation:
  """Adam with L2 weight decay added to the gradient (torch.optim.Adam(weight_decay=)) after a
  global-norm clip, as in the authors' configs."""
  return optimizer(config.train.clip_norm, config.train.learning_rate, config.train.weight_decay)


def optimizer(clip_norm: float, learning_rate, weight_decay) -> optax.GradientTransformation:
  """`make_optimizer`'s chain; learning rate and weight decay may be traced values (population
  training, `mscan_jax.training.population`)."""
  return optax.chain(
      optax.clip_by_global_norm(clip_norm),
      optax.add_decayed_weights(weight_decay),
      optax.adam(learning_rate))


def train_step(state: TrainState, batch: dict, *, model, tx, alpha: float,
               base_rng: jax.Array) -> tuple[TrainState, dict]:
  """One optimisation step; pure. Dropout randomness is fold_in(base_rng, step)."""
  rng = jax.random.fold_in(base_rng, state.step)

  def loss_of(params):
    out = model.apply({"params": params}, batch, train=True, rngs={"dropout": rng})
    loss, aux = objective.loss_fn(out, batch["label"], batch["mask"], alpha)
    return loss, (aux, objective.click_prob(out))

  (loss, (aux, prob)), grads = jax.value_and_grad(loss_of, has_aux=True)(state.params)
  updates, opt_state = tx.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  n = jnp.maximum(batch["mask"].sum(), 1.0)
  metrics = {"loss": loss, **aux, "grad_norm": optax.global_norm(grads),
             "mean_label": (batch["label"] * batch["mask"]).sum() / n,
             "mean_pred": (prob * batch["mask"]).sum() / n}
  return TrainState(step=state.step + 1, params=params, opt_state=opt_state), metrics


def eval_step(params, batch: dict, c: jnp.ndarray, *, model) -> dict:
  """Scores of one batch: the debiased score (Eq. 12), the fitted click probability, raw logits."""
  out = model.apply({"params": params}, batch, train=False)
  res = {"score": objective.inference_score(out, c), "prob": objective.click_prob(out)}
  res.update({k: v.astype(jnp.float32) for k, v in out.items()})
  return res


# ----------------------------------------------------------------------------- host to device

def to_global(batch: dict, sharding: NamedSharding) -> dict:
  """Process-local numpy batch -> global jax arrays sharded on the batch axis."""
  return {k: jax.make_array_from_process_local_data(sharding, v) for k, v in batch.items()}


def device_prefetch(it: Iterator[dict], sharding: NamedSharding, size: int) -> Iterator[dict]:
  """Copies the next `size` batches to the devices on a background thread, so that gathering a
  batch on the host and its host-to-device copy overlap the running step. Closing the generator
  (early stopping) stops the thread (`in_background`), which closes `it` (whose gather threads
  stop too)."""
  if size <= 0:
    for b in it:
      yield to_global(b, sharding)
    return
  yield from in_background(it, size, "device_prefetch", lambda b: to_global(b, sharding))


def in_background(it: Iterator, size: int, name: str,
                  transform: Callable[[Any], Any] = lambda x: x) -> Iterator:
  """transform(item) of every item of `it`, computed up to `size` items ahead on a background
  thread. Closing the generator stops the thread: it never stays blocked on a full queue, and it
  closes `it` when it ends; an exception of `it` is raised in the consumer."""
  q: queue.Queue = queue.Queue(maxsize=max(1, size))
  stop = threading.Event()
  sentinel = object()

  def put(item) -> bool:
    while not stop.is_set():
      try:
        q.put(item, timeout=0.1)
        return True
      except queue.Full:
        pass
    return False

  def worker():
    try:
      for b in it:
        if stop.is_set() or not put(transform(b)):
          return
    except BaseException as e:  # surfaced in the consumer
      put(e)
      return
    finally:                    # stops the input pipeline's own threads (pipeline.train_batches)
      if hasattr(it, "close"):
        it.close()
    put(sentinel)

  t = threading.Thread(target=worker, daemon=True, name=name)
  t.start()
  try:
    while True:
      item = q.get()
      if item is sentinel:
        return
      if isinstance(item, BaseException):
        raise item
      yield item
  finally:
    stop.set()
    t.join(timeout=10)


CPU_SYNC_EVERY = 4   # never hung in 6 of 6 runs at 1, 5 or 20; 50 hung 4 of 6 (2-core CPU, 4 devices)


def sync_every(config) -> int:
  """How often the loop waits for a step's result (0 = only at log steps).

  On CPU with several devices, many steps dispatched without waiting deadlock XLA's CPU
  all-reduce (seen on a 2-core machine with 4 simulated devices), so there the loop waits at least every `CPU_SYNC_EVERY`
  steps whatever `config.train.sync_every_steps` says (a smaller value is kept). On accelerators
  it waits only at log steps unless `sync_every_steps` asks for more.
  """
  every = int(config.train.get("sync_every_steps", 0) or 0)
  if jax.default_backend() == "cpu" and jax.device_count() > 1:
    return min(every, CPU_SYNC_EVERY) if every > 0 else CPU_SYNC_EVERY
  return max(every, 0)


def init_params(model, schema, seed: int):
  """The model's initial parameters (one jitted `init`); {} for a model without any."""
  batch = dummy_batch(schema, 2)
  init = jax.jit(functools.partial(model.init, train=False))   # one compilation, not op by op
  variables = init({"params": jax.random.PRNGKey(seed), "dropout": jax.random.PRNGKey(seed + 1)}, batch)
  return variables.get("params", {})   # oracles have no parameter


# ----------------------------------------------------------------------------- evaluation

def predict(params, dataset: BuiltDataset, rows: np.ndarray, *, eval_fn, c: float, batch_size: int,
            sharding: NamedSharding, prefetch: int) -> dict[str, np.ndarray]:
  """Runs `eval_fn` over `rows` (padded last batch) and returns host arrays, one row per sample.

  Memory: each batch's outputs are copied into host arrays allocated once for every row (at the
  first batch), so no device buffer outlives its batch and no per-batch allocation stays
  behind between the large step buffers (with `retain_host_memory` such leftovers fragment the
  heap). At most one batch is on the devices at a time, plus the input pipeline's `prefetch`
  host batches. The pages of the memory-mapped dataset that the gathers read leave the resident
  set past a budget (`BuiltDataset.gather`), and all of them at the end, so that the metrics
  computed next do not add their peak to up to 2 GiB of clean file pages (at 85M events the test
  phase peaked at 5.55 GiB without this release). The rows kept are views of those arrays (one
  copy of the predictions in all) when the padding is at the end, as with one process.
  """
  n_rows = max(1, -(-len(rows) // batch_size)) * batch_size     # padded to whole batches
  outs: dict[str, np.ndarray] = {}
  start = 0
  meta_keys = ("label", "scenario", "user_id", "sample_id", "mask", "true_like", "true_exam")
  c_arr = jnp.asarray(c, jnp.float32)
  it = pipeline.eval_batches(dataset, rows, batch_size=batch_size,
                             process_index=jax.process_index(), process_count=jax.process_count(),
                             prefetch=prefetch)
  for local in it:
    batch = to_global(local, sharding)
    res = eval_fn(params, batch, c_arr)
    # Identifiers come from the host batch: on the device int64 ids would be cut to int32
    # (x64 is off), and Ali-CCP's sample ids exceed 2^31.
    meta = {k: local[k] for k in meta_keys if k in local}
    if jax.process_count() > 1:
      res = multihost_utils.process_allgather(res, tiled=True)
      sid = meta.pop("sample_id").astype(np.int64)
      meta["sid_hi"] = (sid >> 32).astype(np.int32)
      meta["sid_lo"] = (sid & 0xFFFFFFFF).astype(np.uint32).view(np.int32)
      meta = {k: np.asarray(v) for k, v in
              multihost_utils.process_allgather(meta, tiled=True).items()}
      meta["sample_id"] = ((meta.pop("sid_hi").astype(np.int64) << 32)
                           | meta.pop("sid_lo").view(np.uint32).astype(np.int64))
    res.update(meta)
    for k, v in res.items():
      if k not in outs:
        outs[k] = np.empty((n_rows,) + tuple(v.shape[1:]), v.dtype)
      outs[k][start:start + len(v)] = v              # a host copy; the device buffer is freed
    start += len(res["mask"])
    del batch, res
  dataset.release_pages()     # the pages read leave the resident set before the metrics' own peak
  keep = outs.pop("mask")[:start] > 0
  n = int(keep.sum())
  if keep[:n].all():                                 # padding only at the end: views, no copy
    out = {k: v[:n] for k, v in outs.items()}
  else:                                              # one column copied at a time
    out = {k: outs.pop(k)[:start][keep] for k in list(outs)}
  out["scenario"] = np.ascontiguousarray(out["scenario"][:, 0])
  return out


def compute_metrics(pred: dict[str, np.ndarray]) -> dict:
  out = metrics_lib.evaluate_predictions(
      labels=pred["label"], scores=pred["score"], probs=pred["prob"], scenarios=pred["scenario"],
      user_ids=pred["user_id"], true_like=pred.get("true_like"))
  factor = objective.scenario_factor({k: pred[k] for k in ("y_s", "y_e") if k in pred})
  if factor is not None and "true_exam" in pred:
    out["scenario_factor"] = metrics_lib.scenario_factor_diagnostic(
        np.asarray(factor), pred["true_exam"], pred["scenario"])
  return out


# Rows per row group of predictions.parquet: ~30 MB of columns in memory at a time.
PREDICTION_ROW_GROUP = 1 << 20


def write_predictions(path: str, pred: dict[str, np.ndarray],
                      row_group: int = PREDICTION_ROW_GROUP) -> None:
  """predictions.parquet: sample_id, user_id, scenario, label, score (+ y_m, y_s or y_e, prob,
  true_like, true_exam where present); written to a temporary name and renamed into place.

  Written in row groups of `row_group` rows (`pq.ParquetWriter`), each a zero-copy slice of
  `pred`: the writer holds one group's encoded pages, never a second copy of 43M predictions.
  """
  import pyarrow as pa
  import pyarrow.parquet as pq
  cols = [k for k in ("sample_id", "user_id", "scenario", "label", "score", "prob", "y_m", "y_s",
                      "y_e", "true_like", "true_exam") if k in pred]
  n = len(pred[cols[0]])

  def group(lo: int) -> pa.Table:
    return pa.table({k: np.asarray(pred[k][lo:lo + row_group]) for k in cols})

  def write(tmp: str) -> None:
    first = group(0)
    with pq.ParquetWriter(tmp, first.schema) as writer:
      writer.write_table(first)
      for lo in range(row_group, n, row_group):
        writer.write_table(group(lo))

  rundir.write_atomic(path, write)


# ----------------------------------------------------------------------------- divergence guard

_WATCHED = (("loss", "loss"), ("grad_norm", "gradient norm"))


def check_divergence(host: list[dict], step: int, meta: dict, factor: float, kept: str) -> None:
  """Raises DivergenceError at the first of the logged steps `host` (per-step metrics, the last
  one of step `step`) whose loss or gradient norm is non-finite, or exceeds `factor` times its
  value at the run's first logged step (`meta["divergence_ref"]`, set here and saved with the
  checkpoints); `factor` 0 checks finiteness only.

  The early value is the first step's, before any update: with a learning rate far too large the
  second step has already diverged (lr 1e6: loss 0.76 -> 1e17), so a median over later steps
  would measure the divergence itself. In normal training both values stay within a few times
  their first value (the tiny preset, every model: at most 2.8x).
  """
  first = step - len(host) + 1                        # the step of host[0]
  values = {k: np.array([h[k] for h in host], np.float64) for k, _ in _WATCHED}
  for key, title in _WATCHED:
    bad = ~np.isfinite(values[key])
    if bad.any():
      error = NonFiniteLossError if key == "loss" else DivergenceError
      raise error(f"non-finite {title} at step {first + int(np.argmax(bad))}; stopping. {kept}")
  ref = meta.setdefault("divergence_ref", {k: float(values[k][0]) for k, _ in _WATCHED})
  if not factor:
    return
  for key, title in _WATCHED:
    early = abs(ref.get(key, 0.0))
    over = values[key] > factor * early if early > 0 else np.zeros(len(host), bool)
    if over.any():
      k = int(np.argmax(over))
      raise DivergenceError(
          f"{title} {values[key][k]:.3g} at step {first + k} is more than "
          f"config.train.divergence_factor={factor:g} times its first value ({early:.3g}): the "
          f"run diverged (a learning rate too large?); stopping. {kept} Lower the learning rate, "
          "or set config.train.divergence_factor=0 to check for non-finite values only.")
