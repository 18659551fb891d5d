"""The training loop's rules, once: what a run is, when it validates, when it stops, what it writes.

Two drivers apply the steps: `train.train_and_evaluate` (one run, one jitted `train_step`) and
`population.train_population` (P runs stacked under `jax.vmap`). How a step is applied is their
only difference; everything else goes through one `Run` per run (a population member is a `Run`):

    run = set_up(config, workdir)          # data, model, state, resume, run folder
    ... each step: run.step += 1
    if run.log_due(step):   run.log_train(host_metrics, n_steps, seconds)   # divergence guard
    if run.eval_due(step):
      if run.validate(params): <copy params into the best>              # early stopping
      run.save_checkpoint(state, best)
      if run.should_stop: break
    results = run.finish()                 # test with the best parameters, results.json last

Validation, early stopping and the best checkpoint. The run validates every `eval_every` steps
(`config.train.eval_every_steps`, 0 = once per epoch) and at its last step. An evaluation
improves when its `config.train.select_metric` is finite and above the best so far; then the
parameters become the best ones and the count of evaluations without a gain starts again.
`config.train.patience` evaluations in a row without a gain stop the run (patience 0 acts as 1:
the first evaluation without a gain stops it). The checkpoint saved after each evaluation holds
the state, the best parameters and `meta`: the best score and its step, the count, the
divergence guard's reference values and the stop reason.

Why a run stopped (`results.json` `stop_reason`, one of `STOP_REASONS`): `early_stopping` (the
patience ran out), `max_steps` (the step budget, `train.max_steps` or `train.num_epochs` epochs,
ran out first) or `not_trainable` (a model without parameters to train, the oracles: scored as
initialised). A resumed run keeps its reason, except that a run stopped by its budget goes on
when resumed with a larger one (`rundir.RESUMABLE_KEYS`). `results.json` also holds
`steps_per_epoch` and `best_epoch` (best_step / steps_per_epoch), so a report can tell how long
runs trained before their best validation score.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import os
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from jax.sharding import NamedSharding

from mscan_jax import config as config_lib
from mscan_jax import models
from mscan_jax.data import datasets, pipeline
from mscan_jax.data.schema import BuiltDataset, save_json
from mscan_jax.evaluation import metrics as metrics_lib
from mscan_jax.training import rundir, steps
from mscan_jax.training import sharding as sharding_lib
from mscan_jax.training.checkpoint import Checkpointer, restore_best_params

# results.json `stop_reason`: why the run stopped training.
STOP_REASONS = {
    "early_stopping": "config.train.patience evaluations in a row without a validation gain",
    "max_steps": "the step budget (train.max_steps, or train.num_epochs epochs) ran out first",
    "not_trainable": "a model without parameters to train (the oracles): scored as initialised",
}


def hold(workdir: str):
  """The run folder's lock (`rundir.WorkdirLock`), held by process 0 (the one that writes)."""
  os.makedirs(workdir, exist_ok=True)
  return rundir.WorkdirLock(workdir) if jax.process_index() == 0 else contextlib.nullcontext()


@dataclasses.dataclass
class Run:
  """One run's data, state and bookkeeping (made by `set_up`), and the loop's rules as methods.

  The driver owns the parameters while it trains (`state`, `best_params` are `set_up`'s, and
  must hold the best parameters again when `finish` is called) and advances `step`."""
  config: ml_collections.ConfigDict
  workdir: str
  is_main: bool
  dataset: BuiltDataset
  rows: dict[str, np.ndarray]           # "train", "valid", "test" -> row numbers
  steps_per_epoch: int
  total_steps: int
  eval_every: int
  log_every: int
  data_sharding: NamedSharding
  state: steps.TrainState
  best_params: Any
  meta: dict                            # saved with each checkpoint (see the module docstring)
  ckpt: Checkpointer
  copy_params: Any                      # jitted: a copy of the parameters, never an alias
  train_step: Any                       # jitted, donating the state (the single-run driver's)
  eval_kwargs: dict                     # `steps.predict`'s keyword arguments
  c: float
  metrics_path: str
  step: int = 0
  timing: dict = dataclasses.field(default_factory=dict)   # the driver's speed, for results.json
  last_valid: dict = dataclasses.field(default_factory=dict)   # the last validation record

  def log(self, record: dict) -> None:
    if self.is_main:
      with open(self.metrics_path, "a") as f:
        f.write(json.dumps(record) + "\n")

  # --------------------------------------------------------------------------- schedule

  def eval_due(self, step: int) -> bool:
    """Whether the run validates after `step`: every `eval_every` steps and at its last one."""
    return step % self.eval_every == 0 or step >= self.total_steps

  def log_due(self, step: int) -> bool:
    """Whether the run logs its train metrics after `step` (and at every validation)."""
    return step % self.log_every == 0 or self.eval_due(step)

  @property
  def should_stop(self) -> bool:
    return self.meta["stop_reason"] is not None

  # --------------------------------------------------------------------------- rules

  def log_train(self, host: list[dict], n_steps: int, seconds: float) -> dict:
    """The train record of the logged steps `host` (per-step metrics on the host, the last of
    them `self.step`; `n_steps` steps in `seconds`), after the divergence guard
    (`steps.check_divergence`, which raises `steps.DivergenceError`)."""
    steps.check_divergence(host, self.step, self.meta, self.config.train.divergence_factor,
                           f"The last good checkpoint ({self.ckpt.latest_step()}) in "
                           f"{self.ckpt.directory} is kept.")
    record = {"step": self.step, "split": "train",
              **{k: float(np.mean([h[k] for h in host])) for k in host[0]},
              "examples_per_s": n_steps * self.config.train.batch_size / max(seconds, 1e-9)}
    self.log(record)
    return record

  def validate(self, params) -> bool:
    """Scores `params` (this step's) on the validation split, logs the record and applies early
    stopping; returns whether they improved on the best (then the driver makes them the best
    parameters before `save_checkpoint`)."""
    meta, select_metric = self.meta, self.config.train.select_metric
    val = steps.compute_metrics(steps.predict(params, self.dataset, self.rows["valid"],
                                              **self.eval_kwargs))
    value = metrics_lib.select_value(val, select_metric)
    improved = bool(np.isfinite(value) and value > meta["best_valid_auc"])
    if improved:
      meta.update(best_valid_auc=float(value), best_step=self.step, bad_evals=0)
    else:
      meta["bad_evals"] += 1
    if meta["bad_evals"] >= max(1, self.config.train.patience):
      meta["stop_reason"] = "early_stopping"
    elif self.step >= self.total_steps:
      meta["stop_reason"] = "max_steps"
    self.last_valid = {"step": self.step, "split": "valid", select_metric: value,
                       "auc": val["auc"]["all"], "gauc": val["gauc"], "logloss": val["logloss"],
                       "best_valid_auc": meta["best_valid_auc"]}
    self.log(self.last_valid)
    return improved

  def save_checkpoint(self, state, best_params, data_iter=None) -> None:
    """The checkpoint of this step: the state, the best parameters, `meta` and, where given, the
    input pipeline's state before the next step (`pipeline.Batches.at`), so that a resumed run
    reads exactly the next batch."""
    self.ckpt.save(self.step, state, best_params, self.meta, data_iter=data_iter)

  def finish(self, extra: dict | None = None) -> dict:
    """Tests the best parameters (`best_params`); predictions, then results.json (last), with
    `extra` entries added (a population member's). Closes the checkpointer."""
    config, meta = self.config, self.meta
    pred = steps.predict(self.best_params, self.dataset, self.rows["test"], **self.eval_kwargs)
    results = {"model": config.model, "dataset": datasets.label(config.data), "seed": config.seed,
               "data_seed": int(config.data.seed), "c": self.c,
               "select_metric": config.train.select_metric, "best_step": meta["best_step"],
               "best_valid_auc": meta["best_valid_auc"], "steps": self.step,
               "stop_reason": meta["stop_reason"], "steps_per_epoch": self.steps_per_epoch,
               "best_epoch": meta["best_step"] / self.steps_per_epoch,
               **steps.compute_metrics(pred), **self.timing}
    refs = self.dataset.stats.get("reference", {}).get("test_auc")
    if refs and not config.data.eval_scenarios:
      # Model-free reference rows on the same test split, computed when the data was built
      # (the synthetic benchmark): the training split's item click rate and the oracles.
      results["reference_auc"] = refs
    results.update(extra or {})
    results["outputs"] = [rundir.CONFIG] + ([rundir.PREDICTIONS] if config.train.export_predictions
                                             else [])
    if self.is_main:   # results.json last: the run's only completion marker
      if config.train.export_predictions:
        steps.write_predictions(os.path.join(self.workdir, rundir.PREDICTIONS), pred)
      rundir.write_atomic(os.path.join(self.workdir, rundir.RESULTS),
                          lambda tmp: save_json(tmp, results))
    self.ckpt.close()
    return results


def _stop_reason(meta: dict, step: int, total_steps: int, trainable: bool) -> str | None:
  """The stop reason of a run set up (or resumed) at `step`: an early-stopped run stays stopped
  (a checkpoint of before `stop_reason` says so with `done`); a run stopped by its budget goes on
  under a larger one."""
  reason = meta.get("stop_reason") or ("early_stopping" if meta.pop("done", False) else None)
  if not trainable:
    return "not_trainable"
  if reason == "early_stopping":
    return reason
  return "max_steps" if step >= total_steps else None


def set_up(config: ml_collections.ConfigDict, workdir: str) -> Run:
  """Data, mesh, model, train state (resumed from the folder's checkpoint), jitted steps and the
  run folder (config.json written, metrics.jsonl cut back to the restored step)."""
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
  trainable = models.get_spec(config.model).trainable
  if not trainable:
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
  tx = steps.make_optimizer(config)
  params = steps.init_params(model, schema, config.seed)
  if config.shard_embeddings:   # tables padded with zero rows to a multiple of the device count
    model = sharding_lib.RowPadded(model, sharding_lib.embedding_rows(params))
    params = sharding_lib.pad_embeddings(params, mesh.size)
  if config.train.init_from:   # relative to the run folder (a stage's or a sibling run's)
    params = restore_best_params(os.path.join(os.path.abspath(workdir), config.train.init_from),
                                 params)
  params = jax.device_get(params)   # host values, the same in every process; placed just below
  new_state = lambda p: steps.TrainState(step=jnp.zeros((), jnp.int32), params=p,  # noqa: E731
                                         opt_state=tx.init(p))
  state_sharding = sharding_lib.state_shardings(jax.eval_shape(new_state, params), mesh,
                                                config.shard_embeddings)
  state = jax.jit(new_state, out_shardings=state_sharding)(params)
  # A copy, never an alias of state.params: the train step donates (deletes) the state's buffers.
  copy_params = jax.jit(lambda p: jax.tree.map(jnp.copy, p), out_shardings=state_sharding.params)
  best_params = copy_params(state.params)
  meta = {"best_valid_auc": -1.0, "best_step": 0, "bad_evals": 0, "stop_reason": None}

  # Resume.
  ckpt = Checkpointer(workdir)
  if ckpt.latest_step() is not None:
    state, best_params, meta = ckpt.restore(state, best_params)
    if is_main:
      print(f"Resumed from {ckpt.directory} at step {int(state.step)}")
  step = int(state.step)
  meta["stop_reason"] = _stop_reason(meta, step, total_steps, trainable)

  # Jitted steps.
  base_rng = jax.random.PRNGKey(config.seed + 2)
  c = datasets.resolve_c(config)
  p_train_step = jax.jit(functools.partial(steps.train_step, model=model, tx=tx,
                                           alpha=float(config.mscan.alpha), base_rng=base_rng),
                         donate_argnums=0, out_shardings=(state_sharding, replicated))
  p_eval_step = jax.jit(functools.partial(steps.eval_step, model=model),
                        out_shardings=data_sharding)
  eval_kwargs = dict(eval_fn=p_eval_step, c=c, batch_size=config.train.eval_batch_size,
                     sharding=data_sharding, prefetch=config.data.prefetch)

  metrics_path = os.path.join(workdir, rundir.METRICS)
  if is_main:
    rundir.write_text_atomic(os.path.join(workdir, rundir.CONFIG), config_lib.to_json(config))
    rundir.truncate_metrics(metrics_path, step)   # replayed steps are logged anew
  return Run(config, workdir, is_main, dataset, rows, n_per_epoch, total_steps, eval_every,
             log_every, data_sharding, state, best_params, meta, ckpt, copy_params, p_train_step,
             eval_kwargs, c, metrics_path, step=step)


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
