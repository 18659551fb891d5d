"""The trainer: one linear `train_and_evaluate(config, workdir)` that reads top to bottom.

mesh -> data -> model -> train state -> (resume) -> loop of jitted `train_step` with validation
and early stopping -> best parameters on the test split -> `predictions.parquet`, `results.json`.

The run folder's rules (`mscan_jax.training.rundir`): the trainer holds `<workdir>/.lock` for the
whole run and resumes a folder only with the config that started it (up to the keys of
`rundir.RESUMABLE_KEYS`); every output is written to a temporary name and renamed into place;
`results.json` is written last, lists the other outputs and is the only completion marker (a
stale one is removed when a run starts); `metrics.jsonl` is cut back to the restored step on
resume.

The trainer never branches on the model's name: models return named logits, and the Scenario
Bias Eliminator's rules (`mscan_jax.training.objective`) turn them into the loss and the score.
Model selection (early stopping, best checkpoint) uses the validation split only, never test.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import os
import queue
import threading
import time
from typing import Any, Callable, Iterator

import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from jax.experimental import multihost_utils
from jax.sharding import NamedSharding, PartitionSpec as P

from mscan_jax import config as config_lib
from mscan_jax import models
from mscan_jax.data import datasets, pipeline
from mscan_jax.data.schema import BuiltDataset, DataError, dummy_batch, save_json
from mscan_jax.evaluation import metrics as metrics_lib
from mscan_jax.training import objective, rundir
from mscan_jax.training import sharding as sharding_lib
from mscan_jax.training.checkpoint import Checkpointer, restore_best_params


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


# ----------------------------------------------------------------------------- setup

def _to_global(batch: dict, sharding: NamedSharding) -> dict:
  """Process-local numpy batch -> global jax arrays sharded on the batch axis."""
  return {k: jax.make_array_from_process_local_data(sharding, v) for k, v in batch.items()}


def _device_prefetch(it: Iterator[dict], sharding: NamedSharding, size: int) -> Iterator[dict]:
  """Copies the next `size` batches to the devices on a background thread, so that gathering a
  batch on the host and its host-to-device copy overlap the running step. Closing the generator
  (early stopping) stops the thread (`in_background`), which closes `it` (whose gather threads
  stop too)."""
  if size <= 0:
    for b in it:
      yield _to_global(b, sharding)
    return
  yield from in_background(it, size, "device_prefetch", lambda b: _to_global(b, sharding))


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


_CPU_SYNC_EVERY = 4   # never hung in 6 of 6 runs at 1, 5 or 20; 50 hung 4 of 6 (2-core CPU, 4 devices)


def _sync_every(config) -> int:
  """How often the loop waits for a step's result (0 = only at log steps).

  On CPU with several devices, many steps dispatched without waiting deadlock XLA's CPU
  all-reduce (seen on a 2-core machine with 4 simulated devices), so there the loop waits at least every `_CPU_SYNC_EVERY`
  steps whatever `config.train.sync_every_steps` says (a smaller value is kept). On accelerators
  it waits only at log steps unless `sync_every_steps` asks for more.
  """
  every = int(config.train.get("sync_every_steps", 0) or 0)
  if jax.default_backend() == "cpu" and jax.device_count() > 1:
    return min(every, _CPU_SYNC_EVERY) if every > 0 else _CPU_SYNC_EVERY
  return max(every, 0)


def _init_params(model, schema, seed: int):
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
  host batches.
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
    batch = _to_global(local, sharding)
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
  out = {k: v[:start] for k, v in outs.items()}
  keep = out.pop("mask") > 0
  out = {k: v[keep] for k, v in out.items()}
  out["scenario"] = out["scenario"][:, 0]
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


def write_predictions(path: str, pred: dict[str, np.ndarray]) -> None:
  """predictions.parquet: sample_id, user_id, scenario, label, score (+ y_m, y_s or y_e, prob,
  true_like, true_exam where present); written to a temporary name and renamed into place."""
  import pyarrow as pa
  import pyarrow.parquet as pq
  cols = ["sample_id", "user_id", "scenario", "label", "score", "prob", "y_m", "y_s", "y_e",
          "true_like", "true_exam"]
  table = pa.table({k: pred[k] for k in cols if k in pred})
  rundir.write_atomic(path, lambda tmp: pq.write_table(table, tmp))


# ----------------------------------------------------------------------------- loop

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


def _hold(workdir: str):
  """The run folder's lock (`rundir.WorkdirLock`), held by process 0 (the one that writes)."""
  os.makedirs(workdir, exist_ok=True)
  return rundir.WorkdirLock(workdir) if jax.process_index() == 0 else contextlib.nullcontext()


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """Trains one stage in `workdir` (resuming if it holds a checkpoint) and returns its results.

  Holds the folder's lock throughout: a second trainer on the same folder gets a RunDirError.
  """
  config_lib.validate(config, models.model_names())
  with _hold(workdir):
    return _train_and_evaluate(config, workdir)


@dataclasses.dataclass
class _Stage:
  """What one stage's loop needs, made by `_set_up` (data, shardings, model, state, steps)."""
  config: ml_collections.ConfigDict
  workdir: str
  is_main: bool
  dataset: BuiltDataset
  rows: dict[str, np.ndarray]           # "train", "valid", "test" -> row numbers
  total_steps: int
  eval_every: int
  log_every: int
  data_sharding: NamedSharding
  state: TrainState
  best_params: Any
  meta: dict
  ckpt: Checkpointer
  copy_params: Any                      # jitted: a copy of the parameters, never an alias
  train_step: Any                       # jitted, donating the state
  eval_kwargs: dict                     # `predict`'s keyword arguments
  c: float
  metrics_path: str
  step: int = 0
  timing: dict = dataclasses.field(default_factory=dict)   # `_train`'s speed, for results.json

  def log(self, record: dict) -> None:
    if self.is_main:
      with open(self.metrics_path, "a") as f:
        f.write(json.dumps(record) + "\n")


def _train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict:
  stage = _set_up(config, workdir)
  _train(stage)
  return _test_and_write(stage)


def _set_up(config: ml_collections.ConfigDict, workdir: str) -> _Stage:
  """Data, mesh, model, train state (resumed from the folder's checkpoint) and jitted steps."""
  is_main = jax.process_index() == 0
  # A folder holding another run's config.json is refused (rundir.RESUMABLE_KEYS may differ).
  rundir.check_resume(workdir, json.loads(config_lib.to_json(config)),
                      defaults=json.loads(config_lib.to_json(config_lib.get_config())))
  if is_main and os.path.exists(os.path.join(workdir, rundir.RESULTS)):
    os.remove(os.path.join(workdir, rundir.RESULTS))    # not finished until written again

  # Data.
  dataset = datasets.open_dataset(config.data)
  schema = dataset.schema
  rows = {"train": pipeline.split_rows(dataset, "train", config.data.train_scenarios),
          "valid": pipeline.split_rows(dataset, "valid", config.data.train_scenarios),
          "test": pipeline.split_rows(dataset, "test", config.data.eval_scenarios)}
  n_per_epoch = pipeline.steps_per_epoch(len(rows["train"]), config.train.batch_size)
  total_steps = config.train.max_steps or config.train.num_epochs * n_per_epoch
  if not models.get_spec(config.model).trainable:
    total_steps = 0            # scored as initialised (oracles): no training loop
  eval_every = config.train.eval_every_steps or n_per_epoch
  log_every = max(1, min(config.train.log_every_steps, eval_every))

  # Mesh: the batch is sharded on its first axis; parameters are replicated, or with
  # config.shard_embeddings the embedding tables (and their Adam moments) are row-sharded
  # (mscan_jax.training.sharding).
  mesh = sharding_lib.make_mesh()
  for key in ("batch_size", "eval_batch_size"):
    if config.train[key] % jax.device_count():
      raise config_lib.ConfigError(f"config.train.{key}={config.train[key]} must be divisible by "
                                   f"the {jax.device_count()} devices")
  data_sharding = sharding_lib.data_sharding(mesh)
  replicated = sharding_lib.replicated(mesh)

  # Model and state.
  model = models.build_model(config, schema)
  tx = make_optimizer(config)
  params = _init_params(model, schema, config.seed)
  if config.shard_embeddings:   # tables padded with zero rows to a multiple of the device count
    model = sharding_lib.RowPadded(model, sharding_lib.embedding_rows(params))
    params = sharding_lib.pad_embeddings(params, mesh.size)
  if config.train.init_from:   # relative to the run folder (a stage's or a sibling run's)
    params = restore_best_params(os.path.join(os.path.abspath(workdir), config.train.init_from),
                                 params)
  params = jax.device_get(params)   # host values, the same in every process; placed just below
  new_state = lambda p: TrainState(step=jnp.zeros((), jnp.int32), params=p, opt_state=tx.init(p))  # noqa: E731
  state_sharding = sharding_lib.state_shardings(jax.eval_shape(new_state, params), mesh,
                                                config.shard_embeddings)
  state = jax.jit(new_state, out_shardings=state_sharding)(params)
  # A copy, never an alias of state.params: the train step donates (deletes) the state's buffers.
  copy_params = jax.jit(lambda p: jax.tree.map(jnp.copy, p), out_shardings=state_sharding.params)
  best_params = copy_params(state.params)
  meta = {"best_valid_auc": -1.0, "best_step": 0, "bad_evals": 0, "done": False}

  # Resume.
  ckpt = Checkpointer(workdir)
  if ckpt.latest_step() is not None:
    state, best_params, meta = ckpt.restore(state, best_params)
    if is_main:
      print(f"Resumed from {ckpt.directory} at step {int(state.step)}")

  # Jitted steps.
  base_rng = jax.random.PRNGKey(config.seed + 2)
  c = datasets.resolve_c(config)
  p_train_step = jax.jit(functools.partial(train_step, model=model, tx=tx,
                                           alpha=float(config.mscan.alpha), base_rng=base_rng),
                         donate_argnums=0, out_shardings=(state_sharding, replicated))
  p_eval_step = jax.jit(functools.partial(eval_step, model=model),
                        out_shardings=data_sharding)
  eval_kwargs = dict(eval_fn=p_eval_step, c=c, batch_size=config.train.eval_batch_size,
                     sharding=data_sharding, prefetch=config.data.prefetch)

  metrics_path = os.path.join(workdir, rundir.METRICS)
  if is_main:
    rundir.write_text_atomic(os.path.join(workdir, rundir.CONFIG), config_lib.to_json(config))
    rundir.truncate_metrics(metrics_path, int(state.step))   # replayed steps are logged anew
  return _Stage(config, workdir, is_main, dataset, rows, total_steps, eval_every, log_every,
                data_sharding, state, best_params, meta, ckpt, copy_params, p_train_step,
                eval_kwargs, c, metrics_path, step=int(state.step))


def _train(st: _Stage) -> None:
  """The loop: jitted steps, logs, validation with early stopping, checkpoints (updates `st`).

  `st.timing` gets the loop's steady-state training speed (for results.json): examples/s over
  the log windows after the first (compilation), evaluation and checkpoints excluded; None when
  the run had fewer than two log windows."""
  config, meta = st.config, st.meta
  batch_size = config.train.batch_size
  select_metric = config.train.select_metric   # validation metric of early stopping
  sync_every = _sync_every(config)
  if meta["done"] or st.step >= st.total_steps:
    return
  bar = None
  if st.is_main and config.train.progress:
    from tqdm import tqdm
    bar = tqdm(total=st.total_steps * batch_size, initial=st.step * batch_size, unit="ex",
               unit_scale=True, desc=f"train {config.model}", dynamic_ncols=True)

  batches = pipeline.train_batches(
      st.dataset, st.rows["train"], batch_size=batch_size, seed=config.seed, start_step=st.step,
      process_index=jax.process_index(), process_count=jax.process_count(),
      prefetch=config.data.prefetch)
  pending: list[dict] = []
  t_log = time.perf_counter()
  steps_since_log = 0
  # Steady-state speed: the log windows after this process's first (which compiles the step);
  # a window never holds evaluation or checkpoint time (t_log restarts after them).
  windows, timed_steps, timed_s, eval_s = 0, 0, 0.0, 0.0
  try:
    for batch in _device_prefetch(batches, st.data_sharding, config.data.prefetch):
      st.state, m = st.train_step(st.state, batch)
      st.step += 1
      step = st.step
      steps_since_log += 1
      pending.append(m)
      if sync_every and step % sync_every == 0:
        jax.block_until_ready(m)
      do_eval = step % st.eval_every == 0 or step >= st.total_steps
      if step % st.log_every == 0 or do_eval:
        host = jax.device_get(pending)
        pending = []
        check_divergence(host, step, meta, config.train.divergence_factor,
                         f"The last good checkpoint ({st.ckpt.latest_step()}) in "
                         f"{st.ckpt.directory} is kept.")
        dt = time.perf_counter() - t_log
        record = {"step": step, "split": "train",
                  **{k: float(np.mean([h[k] for h in host])) for k in host[0]},
                  "examples_per_s": steps_since_log * batch_size / max(dt, 1e-9)}
        st.log(record)
        windows += 1
        if windows > 1:
          timed_steps, timed_s = timed_steps + steps_since_log, timed_s + dt
        t_log, steps_since_log = time.perf_counter(), 0
        if bar is not None:
          bar.update(len(host) * batch_size)
          bar.set_postfix(loss=f"{record['loss']:.4f}")
      if do_eval:
        t_eval = time.perf_counter()
        pred = predict(st.state.params, st.dataset, st.rows["valid"], **st.eval_kwargs)
        val = compute_metrics(pred)
        auc = metrics_lib.select_value(val, select_metric)
        improved = bool(np.isfinite(auc) and auc > meta["best_valid_auc"])
        if improved:
          st.best_params = st.copy_params(st.state.params)
          meta.update(best_valid_auc=float(auc), best_step=step, bad_evals=0)
        else:
          meta["bad_evals"] += 1
        meta["done"] = bool(meta["bad_evals"] > config.train.patience)   # early stopped
        st.log({"step": step, "split": "valid", select_metric: auc, "auc": val["auc"]["all"],
                "gauc": val["gauc"], "logloss": val["logloss"],
                "best_valid_auc": meta["best_valid_auc"]})
        if bar is not None:
          bar.set_postfix(loss=f"{record['loss']:.4f}", val_auc=f"{auc:.4f}")
        st.ckpt.save(step, st.state, st.best_params, meta)
        t_log = time.perf_counter()
        eval_s += t_log - t_eval
        if meta["done"] or step >= st.total_steps:
          break
  finally:
    if bar is not None:
      bar.close()
    st.timing = {"train_examples_per_s": (timed_steps * batch_size / timed_s if timed_s > 0
                                          else None),
                 "train_steps_timed": timed_steps, "train_seconds": timed_s,
                 "eval_seconds": eval_s}


def _test_and_write(st: _Stage, extra: dict | None = None) -> dict:
  """Test with the best-validation parameters; predictions, then results.json (last), with
  `extra` entries added (a population member's)."""
  config = st.config
  pred = predict(st.best_params, st.dataset, st.rows["test"], **st.eval_kwargs)
  results = {"model": config.model, "dataset": datasets.label(config.data), "seed": config.seed,
             "data_seed": int(config.data.seed), "c": st.c,
             "select_metric": config.train.select_metric, "best_step": st.meta["best_step"],
             "best_valid_auc": st.meta["best_valid_auc"],
             "steps": st.step, **compute_metrics(pred), **st.timing}
  refs = st.dataset.stats.get("reference", {}).get("test_auc")
  if refs and not config.data.eval_scenarios:
    # Model-free reference rows on the same test split, computed when the data was built
    # (the synthetic benchmark): the training split's item click rate and the oracles.
    results["reference_auc"] = refs
  results.update(extra or {})
  results["outputs"] = [rundir.CONFIG] + ([rundir.PREDICTIONS] if config.train.export_predictions
                                           else [])
  if st.is_main:   # results.json last: the run's only completion marker
    if config.train.export_predictions:
      write_predictions(os.path.join(st.workdir, rundir.PREDICTIONS), pred)
    rundir.write_atomic(os.path.join(st.workdir, rundir.RESULTS),
                        lambda tmp: save_json(tmp, results))
  st.ckpt.close()
  return results


def run(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """Runs every stage of the configured model (e.g. `finetune` = `mix`, then one scenario)."""
  config_lib.validate(config, models.model_names())
  stages = models.stages(config)        # a missing target scenario stops before the run folder
  results = None
  with _hold(workdir):
    for subdir, stage_config in stages:
      results = _run_stage(workdir, subdir, stage_config)
  return results


def _run_stage(workdir: str, subdir: str, stage_config: ml_collections.ConfigDict) -> dict:
  return train_and_evaluate(*stage_location(workdir, subdir, stage_config))


def stage_location(workdir: str, subdir: str, stage_config: ml_collections.ConfigDict
                   ) -> tuple[ml_collections.ConfigDict, str]:
  """(stage config, stage folder) of one stage of `models.stages` in the run folder `workdir`."""
  stage_dir = os.path.join(workdir, subdir) if subdir else workdir
  stage_config = stage_config.copy_and_resolve_references()
  if stage_config.train.init_from and not os.path.isabs(stage_config.train.init_from):
    # A stage's init_from names a subdir of the run (or a path relative to the run folder);
    # stored relative to the stage's own folder, so no absolute path enters config.json.
    with stage_config.unlocked():
      stage_config.train.init_from = os.path.relpath(
          os.path.join(workdir, stage_config.train.init_from), stage_dir)
  return stage_config, stage_dir


def format_results(results: dict, cold: dict | None = None) -> str:
  """A per-scenario table in the shape of the paper's Table 1: AUC and, where the data records
  the truth, the AUC against the true interest; then the mean over scenarios, #All, GAUC and the
  per-user pooled true-interest AUC (each user's candidates of every scenario ranked together).

  `cold`: the test split's cold shares of the dataset (`stats["cold"]["test"]` of a built
  dataset, `builder.cold_shares`), shown as two columns: the share of test samples whose user
  (item) has no training sample. #All's cell is the dataset's, shown when every scenario is."""
  per = results["auc"]["per_scenario"]
  truth = results.get("true_interest_auc")
  n = results.get("n_per_scenario", {})
  refs = {k: v for k, v in REFERENCE_COLUMNS.items() if k in results.get("reference_auc", {})}
  keys = sorted(per, key=lambda k: int(k))
  colds = [(f"cold {key}", cold[key]) for key in ("users", "items")] if cold else []
  head = (f"{'Scenario':>9} {'n':>9} {'AUC':>8}" + (f" {'true AUC':>9}" if truth else "")
          + "".join(f" {title:>{len(title)}}" for title in refs.values())
          + "".join(f" {title:>10}" for title, _ in colds))
  lines = [f"{results['model']} on {results['dataset']} (seed {results.get('seed', 0)}, "
           f"c={results.get('c')}; best validation step {results.get('best_step')} by "
           f"{results.get('select_metric', 'auc_all')})", head]
  def ref_cells(k):
    return ("".join(f" {results['reference_auc'][r].get(k, float('nan')):>{len(t)}.4f}"
                    for r, t in refs.items()) + cold_cells(k))

  def cold_cells(k):
    if k == "all" and any(set(shares) - {"all"} != set(keys) for _, shares in colds):
      k = ""                      # evaluated on some scenarios: the dataset's share is not theirs
    return "".join(f" {shares[k]:>10.1%}" if k in shares else f" {'-':>10}"
                   for _, shares in colds)

  for k in keys:
    line = f"{'#' + k:>9} {n.get(k, ''):>9} {per[k]:8.4f}"
    if truth:
      line += f" {truth['per_scenario'].get(k, float('nan')):9.4f}"
    lines.append(line + ref_cells(k))
  mean = results["auc"].get("mean_per_scenario")
  if mean is not None:
    line = f"{'mean':>9} {'':>9} {mean:8.4f}"
    if truth:
      line += f" {truth.get('mean_per_scenario', float('nan')):9.4f}"
    lines.append(line)
  line = f"{'#All':>9} {results.get('n_test', ''):>9} {results['auc']['all']:8.4f}"
  if truth:
    line += f" {truth['all']:9.4f}"
  lines.append(line + ref_cells("all"))
  tail = f"GAUC {results['gauc']:.4f}   log loss {results['logloss']:.4f}"
  if "true_interest_user_auc" in results:
    tail += (f"   true-interest GAUC {results['true_interest_gauc']:.4f}   per-user pooled "
             f"true-interest AUC {results['true_interest_user_auc']:.4f}")
  lines.append(tail)
  if refs:
    lines.append("Reference columns (observed-click AUC on the same test split, no training): "
                 "item click rate counted on the training split (popularity) and the recorded "
                 "truth (oracles). Trained references: --config.model=popularity|logreg|mf.")
  return "\n".join(lines)


# Model-free reference columns of format_results: key in results["reference_auc"] -> title.
REFERENCE_COLUMNS = {"item_click_rate": "click rate", "true_prob": "oracle like",
                     "exam_x_like": "oracle click"}
