"""The trainer: one linear `train_and_evaluate(config, workdir)` that reads top to bottom.

mesh -> data -> model -> train state -> (resume) -> loop of jitted `train_step` with validation
and early stopping -> best parameters on the test split -> `predictions.parquet`, `results.json`.

This module is the single-run driver, which applies one jitted step at a time. The steps
(`train_step`, `eval_step`, `predict`, the divergence guard) live in
`mscan_jax.training.steps`; the loop's rules (setting a run up and resuming it, the validation
schedule, early stopping and the best checkpoint, why a run stopped, testing and writing
`results.json`) live in `mscan_jax.training.loop`, shared with the population driver
(`mscan_jax.training.population`).

The run folder's rules (`mscan_jax.training.rundir`): the trainer holds `<workdir>/.lock` for the
whole run and resumes a folder only with the config that started it (up to the keys of
`rundir.RESUMABLE_KEYS`); every output is written to a temporary name and renamed into place;
`results.json` is written last, lists the other outputs and is the only completion marker (a
stale one is removed when a run starts); `metrics.jsonl` is cut back to the restored step on
resume.

Model selection (early stopping, best checkpoint) uses the validation split only, never test.
"""

from __future__ import annotations

import os
import time

import jax
import ml_collections

from mscan_jax import config as config_lib
from mscan_jax import models
from mscan_jax.data import pipeline
from mscan_jax.training import loop, steps


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """Trains one stage in `workdir` (resuming if it holds a checkpoint) and returns its results.

  Holds the folder's lock throughout: a second trainer on the same folder gets a RunDirError.
  """
  config_lib.validate(config, models.model_names())
  with loop.hold(workdir):
    run = loop.set_up(config, workdir)
    _train(run)
    return run.finish()


def _train(run: loop.Run) -> None:
  """The single-run driver: one jitted step at a time; logs, validation, early stopping and
  checkpoints by the rules of `loop.Run` (updates `run`).

  `run.timing` gets the loop's steady-state training speed (for results.json): examples/s over
  the log windows after the first (compilation), evaluation and checkpoints excluded; None when
  the run had fewer than two log windows."""
  config = run.config
  batch_size = config.train.batch_size
  sync_every = steps.sync_every(config)
  if run.should_stop:
    return
  bar = None
  if run.is_main and config.train.progress:
    from tqdm import tqdm
    bar = tqdm(total=run.total_steps * batch_size, initial=run.step * batch_size, unit="ex",
               unit_scale=True, desc=f"train {config.model}", dynamic_ncols=True)

  batches = pipeline.train_batches(
      run.dataset, run.rows["train"], batch_size=batch_size, seed=config.seed,
      start_step=run.step, process_index=jax.process_index(), process_count=jax.process_count(),
      prefetch=config.data.prefetch)
  run.ckpt.restore_data_iter(run.step, batches)   # the saved grain state, if the checkpoint has one
  pending: list[dict] = []
  t_log = time.perf_counter()
  steps_since_log = 0
  # Steady-state speed: the log windows after this process's first (which compiles the step);
  # a window never holds evaluation or checkpoint time (t_log restarts after them).
  windows, timed_steps, timed_s, eval_s = 0, 0, 0.0, 0.0
  try:
    for batch in steps.device_prefetch(batches, run.data_sharding, config.data.prefetch):
      run.state, m = run.train_step(run.state, batch)
      run.step += 1
      step = run.step
      steps_since_log += 1
      pending.append(m)
      if sync_every and step % sync_every == 0:
        jax.block_until_ready(m)
      if run.log_due(step):
        host = jax.device_get(pending)
        pending = []
        dt = time.perf_counter() - t_log
        record = run.log_train(host, steps_since_log, dt)
        windows += 1
        if windows > 1:
          timed_steps, timed_s = timed_steps + steps_since_log, timed_s + dt
        t_log, steps_since_log = time.perf_counter(), 0
        if bar is not None:
          bar.update(len(host) * batch_size)
          bar.set_postfix(loss=f"{record['loss']:.4f}")
      if run.eval_due(step):
        t_eval = time.perf_counter()
        if run.validate(run.state.params):
          run.best_params = run.copy_params(run.state.params)
        if bar is not None:
          bar.set_postfix(loss=f"{record['loss']:.4f}",
                          val=f"{run.last_valid[config.train.select_metric]:.4f}")
        run.save_checkpoint(run.state, run.best_params, data_iter=batches.at(step))
        t_log = time.perf_counter()
        eval_s += t_log - t_eval
        if run.should_stop:
          break
  finally:
    if bar is not None:
      bar.close()
    run.timing = {"train_examples_per_s": (timed_steps * batch_size / timed_s if timed_s > 0
                                           else None),
                  "train_steps_timed": timed_steps, "train_seconds": timed_s,
                  "eval_seconds": eval_s}


def run(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """Runs every stage of the configured model (e.g. `finetune` = `mix`, then one scenario)."""
  config_lib.validate(config, models.model_names())
  stages = models.stages(config)        # a missing target scenario stops before the run folder
  results = None
  with loop.hold(workdir):
    for subdir, stage_config in stages:
      results = _run_stage(workdir, subdir, stage_config)
  return results


def _run_stage(workdir: str, subdir: str, stage_config: ml_collections.ConfigDict) -> dict:
  return train_and_evaluate(*loop.stage_location(workdir, subdir, stage_config))


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
