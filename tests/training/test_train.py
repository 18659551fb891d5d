"""The trainer end to end on the tiny synthetic preset: outputs, compilations, resume, NaN stop."""

import functools
import json
import logging
import os
import re
import signal
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import pyarrow.parquet as pq
import pytest

from mscan_jax import config as config_lib
from mscan_jax import models
from mscan_jax.data import datasets, pipeline
from mscan_jax.training import objective, steps, train
from mscan_jax.training import sharding as sharding_lib

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _tiny(tmp_path, **train_overrides):
  c = config_lib.get_tiny_config()
  c.data.cache_dir = str(tmp_path.parent / "data_cache")   # shared by the tests of this session
  for k, v in train_overrides.items():
    c.train[k] = v
  return c


class _CompileCounter(logging.Handler):
  def __init__(self):
    super().__init__()
    self.names = []

  def emit(self, record):
    msg = record.getMessage()
    if msg.startswith("Compiling "):
      self.names.append(msg.split()[1])


def test_train_and_evaluate_compiles_each_step_once_and_writes_outputs(tmp_path):
  c = _tiny(tmp_path, num_epochs=3, patience=10)
  counter = _CompileCounter()
  logger = logging.getLogger("jax._src.interpreters.pxla")
  logger.addHandler(counter)
  jax.config.update("jax_log_compiles", True)
  try:
    results = train.train_and_evaluate(c, str(tmp_path / "run"))
  finally:
    jax.config.update("jax_log_compiles", False)
    logger.removeHandler(counter)
  # 3 epochs, 3 validations and 1 test pass: one compilation of each step, none after.
  assert counter.names.count("jit(train_step)") == 1, counter.names
  assert counter.names.count("jit(eval_step)") == 1, counter.names

  run = tmp_path / "run"
  saved = json.loads((run / "results.json").read_text())
  assert saved["model"] == "mscan" and saved["dataset"] == "synthetic-tiny"
  assert set(saved["auc"]) == {"all", "mean_per_scenario", "per_scenario"}
  assert "true_interest_auc" in saved and "true_interest_user_auc" in saved
  assert saved["select_metric"] == "mean_scenario_auc"
  assert 0.0 <= saved["auc"]["all"] <= 1.0
  # Steady-state speed: every step but those of the first log window (compilation) is timed.
  logged = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
  first_window = next(r["step"] for r in logged if r["split"] == "train")
  assert saved["train_steps_timed"] == saved["steps"] - first_window > 0
  assert saved["train_examples_per_s"] > 0 and saved["train_seconds"] > 0
  assert saved["eval_seconds"] > 0                     # 3 validations, timed apart
  table = pq.read_table(run / "predictions.parquet")
  assert table.num_rows == saved["n_test"]
  assert {"sample_id", "user_id", "scenario", "label", "score", "y_m", "y_s"} <= set(table.column_names)
  sample_ids = table.column("sample_id").to_numpy()
  assert len(np.unique(sample_ids)) == len(sample_ids)          # every test sample exactly once
  dataset = datasets.open_dataset(c.data)
  want = np.asarray(dataset.log["sample_id"])[np.asarray(dataset.splits["test"])]
  np.testing.assert_array_equal(np.sort(sample_ids), np.sort(want))
  lines = [json.loads(l) for l in (run / "metrics.jsonl").read_text().splitlines()]
  assert sum(l["split"] == "valid" for l in lines) == 3
  assert json.loads((run / "config.json").read_text())["model"] == "mscan"
  assert "#All" in train.format_results(results)


def test_predict_gives_every_row_once_in_order_whatever_the_batch_size(tmp_path):
  """predict copies each batch's outputs into host arrays: one padded batch or several (the last
  one padded) give the same rows, in the order of `rows`, as numpy arrays."""
  c = _tiny(tmp_path)
  dataset = datasets.open_dataset(c.data)
  model = models.build_model(c, dataset.schema)
  params = steps.init_params(model, dataset.schema, 0)
  sharding = sharding_lib.data_sharding(sharding_lib.make_mesh())
  eval_fn = jax.jit(functools.partial(steps.eval_step, model=model), out_shardings=sharding)
  rows = np.asarray(pipeline.split_rows(dataset, "test", ()))[:37]
  n_dev = jax.device_count()
  one, many = (steps.predict(params, dataset, rows, eval_fn=eval_fn, c=0.5, batch_size=size,
                             sharding=sharding, prefetch=2) for size in (64 * n_dev, 8 * n_dev))
  want_ids = np.asarray(dataset.log["sample_id"])[rows]
  assert set(one) == set(many) and {"score", "prob", "y_m", "y_s", "label"} <= set(one)
  for k in one:
    assert type(many[k]) is np.ndarray and len(many[k]) == len(rows), k
    np.testing.assert_allclose(many[k], one[k], rtol=1e-6, err_msg=k)
  np.testing.assert_array_equal(many["sample_id"], want_ids)


def test_nan_loss_stops_with_step_and_keeps_last_good_checkpoint(tmp_path, monkeypatch):
  c = _tiny(tmp_path, max_steps=20, eval_every_steps=10, log_every_steps=1, patience=100)
  workdir = str(tmp_path / "run")
  train.train_and_evaluate(c, workdir)          # a good run with checkpoints up to step 20
  assert "20" in os.listdir(os.path.join(workdir, "checkpoints"))

  real_loss_fn = objective.loss_fn

  def nan_loss(out, label, mask, alpha):        # the objective diverges from now on
    loss, aux = real_loss_fn(out, label, mask, alpha)
    return loss * jnp.nan, aux

  monkeypatch.setattr(objective, "loss_fn", nan_loss)
  c.train.max_steps = 40                        # resumes at 20, diverges at step 21
  with pytest.raises(steps.NonFiniteLossError, match=r"non-finite loss at step 21\b"):
    train.train_and_evaluate(c, workdir)
  assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == ["10", "20"]
  assert not os.path.exists(os.path.join(workdir, "results.json")) or \
      json.loads(open(os.path.join(workdir, "results.json")).read())["steps"] == 20


def _launch(workdir, extra=()):
  cmd = [sys.executable, os.path.join(ROOT, "launch.py"), "--config=" + os.path.join(ROOT, "mscan_jax", "config.py") + ":tiny",
         f"--workdir={workdir}", "--config.train.max_steps=60", "--config.train.eval_every_steps=10",
         "--config.train.patience=100", *extra]
  return cmd


def test_resume_after_sigkill_gives_same_results_as_uninterrupted(tmp_path):
  cache = str(tmp_path.parent / "data_cache")
  env = dict(os.environ, PYTHONUNBUFFERED="1")
  common = [f"--config.data.cache_dir={cache}"]
  ref_dir, killed_dir = tmp_path / "ref", tmp_path / "killed"
  subprocess.run(_launch(ref_dir, common), check=True, cwd=ROOT, env=env, timeout=300,
                 capture_output=True)
  proc = subprocess.Popen(_launch(killed_dir, common), cwd=ROOT, env=env,
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  ckpt = killed_dir / "checkpoints" / "10"
  deadline = time.time() + 240
  while not ckpt.exists() and proc.poll() is None and time.time() < deadline:
    time.sleep(0.02)
  proc.send_signal(signal.SIGKILL)
  proc.wait(timeout=30)
  assert ckpt.exists(), "the run never wrote its first checkpoint"
  assert not (killed_dir / "results.json").exists(), "the run finished before it could be killed"
  subprocess.run(_launch(killed_dir, common), check=True, cwd=ROOT, env=env, timeout=300,
                 capture_output=True)
  ref = json.loads((ref_dir / "results.json").read_text())
  got = json.loads((killed_dir / "results.json").read_text())
  assert got["steps"] == ref["steps"] == 60
  assert got["best_step"] == ref["best_step"]
  np.testing.assert_allclose(got["auc"]["all"], ref["auc"]["all"], rtol=0, atol=1e-6)
  np.testing.assert_allclose(got["logloss"], ref["logloss"], rtol=0, atol=1e-6)
  for k, v in ref["auc"]["per_scenario"].items():
    np.testing.assert_allclose(got["auc"]["per_scenario"][k], v, rtol=0, atol=1e-6)


def test_launch_rejects_unknown_model_and_lists_valid_ones(tmp_path):
  proc = subprocess.run([sys.executable, os.path.join(ROOT, "launch.py"), "--config.model=nope",
                         f"--workdir={tmp_path}"], cwd=ROOT, capture_output=True, text=True, timeout=120)
  assert proc.returncode != 0
  assert "config.model='nope' is unknown; valid:" in proc.stderr and "mscan" in proc.stderr


@pytest.mark.parametrize("override, message", [
    ("--config.mscan.alpha=-1", "config.mscan.alpha must be a finite number >= 0, got -1.0"),
    ("--config.data.max_cur_len=0", "config.data.max_cur_len and config.data.max_all_len must be >= 1"),
    ("--config.data.name=nope", "config.data.name='nope' is unknown; valid:"),
    ("--config.data.name=aliccp", "config.data.path is required for config.data.name='aliccp'"),
])
def test_invalid_config_fields_give_one_clear_error(override, message):
  c = config_lib.get_config()
  key, value = override[len("--config."):].split("=")
  node = c
  *path, leaf = key.split(".")
  for p in path:
    node = node[p]
  node[leaf] = type(node[leaf])(value) if not isinstance(node[leaf], str) else value
  with pytest.raises(config_lib.ConfigError, match=re.escape(message)):
    config_lib.validate(c)


# ----------------------------------------------------------------------------- the run folder
# A cheap model (bias-only logistic regression) stands in where only the run folder is tested.

def _cheap(tmp_path, **train_overrides):
  c = _tiny(tmp_path, **{"max_steps": 20, "eval_every_steps": 10, "log_every_steps": 1,
                         "patience": 100, **train_overrides})
  c.model = "logreg"
  return c


def test_outputs_are_atomic_and_results_json_comes_last(tmp_path, monkeypatch):
  """A crash while writing predictions leaves neither a partial predictions.parquet nor a
  results.json (the only completion marker, written last): not even the stale one of an earlier
  finished run in the same folder."""
  import pyarrow.parquet as pq_mod
  c = _cheap(tmp_path)
  workdir = str(tmp_path / "run")
  train.train_and_evaluate(c, workdir)
  saved = json.loads(open(os.path.join(workdir, "results.json")).read())
  old_predictions = open(os.path.join(workdir, "predictions.parquet"), "rb").read()

  def disk_full(writer, table, **kw):          # the file is open (partial), then a write fails
    raise OSError("No space left on device")

  monkeypatch.setattr(pq_mod.ParquetWriter, "write_table", disk_full)
  c.train.max_steps = 30                        # the same run, longer: resumes and re-exports
  with pytest.raises(OSError, match="No space left"):
    train.train_and_evaluate(c, workdir)
  left = sorted(os.listdir(workdir))
  assert "results.json" not in left, left
  assert not [f for f in left if f.startswith(".tmp-")], left
  # The earlier run's predictions stay whole (the new file never replaced them).
  assert open(os.path.join(workdir, "predictions.parquet"), "rb").read() == old_predictions
  # results.json lists the outputs that must read back for the run to count as finished.
  assert saved["outputs"] == ["config.json", "predictions.parquet"]
  json.loads(open(os.path.join(workdir, "config.json")).read())   # whole


def test_metrics_hold_each_step_once_after_resume(tmp_path):
  """Resuming from an older checkpoint replays steps: their records replace the old ones, and a
  line cut short by a crash is dropped."""
  c = _cheap(tmp_path)
  workdir = str(tmp_path / "run")
  train.train_and_evaluate(c, workdir)
  import shutil
  shutil.rmtree(os.path.join(workdir, "checkpoints", "20"))      # as if killed before step 20
  with open(os.path.join(workdir, "metrics.jsonl"), "a") as f:
    f.write('{"step": 21, "split": "tr')                        # torn by the crash
  train.train_and_evaluate(c, workdir)                           # resumes at step 10
  lines = [json.loads(l) for l in open(os.path.join(workdir, "metrics.jsonl"))]
  keys = [(l["step"], l["split"]) for l in lines]
  assert len(keys) == len(set(keys)), sorted(keys)
  assert sorted(k for k in keys if k[1] == "train") == [(s, "train") for s in range(1, 21)]
  assert sorted(k for k in keys if k[1] == "valid") == [(10, "valid"), (20, "valid")]


def test_a_stopped_and_resumed_run_trains_on_the_batches_of_an_uninterrupted_one(tmp_path,
                                                                                monkeypatch):
  """The batches the loop trains on (recorded where it takes them) across a stop after
  checkpoint 10 and a resume: the uninterrupted run's, with the input pipeline's grain state
  restored from the checkpoint (`data_iter`)."""
  from mscan_jax.training import checkpoint
  seen, restored = [], []
  device_prefetch, restore_data_iter = steps.device_prefetch, checkpoint.Checkpointer.restore_data_iter

  def recording(*args, **kwargs):
    for batch in device_prefetch(*args, **kwargs):
      seen.append(np.asarray(batch["sample_id"]))
      yield batch

  def spy(self, step, data_iter):
    restored.append(restore_data_iter(self, step, data_iter))
    return restored[-1]

  monkeypatch.setattr(steps, "device_prefetch", recording)
  monkeypatch.setattr(checkpoint.Checkpointer, "restore_data_iter", spy)
  train.train_and_evaluate(_cheap(tmp_path), str(tmp_path / "ref"))            # 20 steps
  ref, seen[:] = np.stack(seen), []
  workdir = str(tmp_path / "run")
  train.train_and_evaluate(_cheap(tmp_path, max_steps=10), workdir)   # stops after checkpoint 10
  assert os.path.isdir(os.path.join(workdir, "checkpoints", "10", checkpoint.DATA_ITER))
  train.train_and_evaluate(_cheap(tmp_path), workdir)                 # resumes at step 10
  assert restored == [False, False, True]            # fresh, fresh, then the saved grain state
  assert ref.shape[0] == 20
  np.testing.assert_array_equal(np.stack(seen), ref)


def test_second_launch_on_a_locked_workdir_refuses(tmp_path):
  """The trainer holds an flock on <workdir>/.lock for the whole run; a second launch.py on the
  same folder stops at once with one error line and exit code 2."""
  import fcntl
  workdir = tmp_path / "run"
  workdir.mkdir()
  with open(workdir / ".lock", "w") as held:
    fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)            # another run holds the folder
    proc = subprocess.run(
        _launch(workdir, [f"--config.data.cache_dir={tmp_path.parent / 'data_cache'}",
                          "--config.model=logreg", "--config.train.max_steps=2"]),
        cwd=ROOT, capture_output=True, text=True, timeout=300)
  assert proc.returncode == 2, proc.stderr[-2000:]
  errors = [l for l in proc.stderr.splitlines() if l.startswith("error:")]
  assert len(errors) == 1 and "in use by another run" in errors[0], proc.stderr[-2000:]
  assert "Traceback" not in proc.stderr
  assert not (workdir / "checkpoints").exists() and not (workdir / "config.json").exists()


def test_a_folder_is_resumed_only_by_the_same_run(tmp_path):
  """A workdir holding another run's config.json is refused, naming the keys that differ (exit
  2 from launch.py); the keys of rundir.RESUMABLE_KEYS may differ (here a longer run)."""
  c = _cheap(tmp_path, max_steps=10)
  workdir = str(tmp_path / "run")
  train.train_and_evaluate(c, workdir)
  other = c.copy_and_resolve_references()
  other.train.learning_rate = 0.5
  other.seed = 3
  with pytest.raises(ValueError, match=r"differs in seed, train\.learning_rate\b"):
    train.train_and_evaluate(other, workdir)
  assert json.loads(open(os.path.join(workdir, "config.json")).read())["seed"] == 0
  longer = c.copy_and_resolve_references()
  longer.train.max_steps = 20
  longer.train.log_every_steps = 2
  assert train.train_and_evaluate(longer, workdir)["steps"] == 20
  proc = subprocess.run(
      [sys.executable, os.path.join(ROOT, "launch.py"), "--config=" + os.path.join(ROOT, "mscan_jax", "config.py") + ":tiny",
       f"--workdir={workdir}", f"--config.data.cache_dir={tmp_path.parent / 'data_cache'}",
       "--config.model=logreg", "--config.train.max_steps=20"],
      cwd=ROOT, capture_output=True, text=True, timeout=300)
  assert proc.returncode == 2, proc.stderr[-2000:]
  errors = [l for l in proc.stderr.splitlines() if l.startswith("error:")]
  assert len(errors) == 1 and "holds another run" in errors[0], proc.stderr[-2000:]
  assert "train.eval_every_steps" in errors[0] and "Traceback" not in proc.stderr


def _truncate_data_files(step_dir):
  import glob
  files = [f for f in glob.glob(os.path.join(step_dir, "**", "d", "*"), recursive=True)
           if os.path.isfile(f)]
  assert files
  for f in files:
    os.truncate(f, os.path.getsize(f) // 2)


def test_a_damaged_latest_checkpoint_falls_back_to_the_previous_one(tmp_path, capfd):
  """The data files of the latest step truncated (a full disk): the run warns with that step and
  resumes from the older intact one; only when no step restores does it fail, in one message."""
  from mscan_jax.training import checkpoint
  c = _cheap(tmp_path)
  workdir = str(tmp_path / "run")
  ref = train.train_and_evaluate(c, workdir)
  ckpts = os.path.join(workdir, "checkpoints")
  assert sorted(os.listdir(ckpts)) == ["10", "20"]
  _truncate_data_files(os.path.join(ckpts, "20"))
  capfd.readouterr()
  got = train.train_and_evaluate(c, workdir)
  err, out = capfd.readouterr()[::-1]
  moved = os.listdir(os.path.join(workdir, "damaged_checkpoints"))
  assert len(moved) == 1
  warnings = [l for l in err.splitlines() if "warning" in l.lower()]
  assert len(warnings) == 1 and re.fullmatch(
      r"warning: checkpoint 20 in \S+ does not restore \(\w+: .+\); moved to "
      + re.escape(os.path.join(workdir, "damaged_checkpoints", moved[0])) + r"; restored step 10",
      warnings[0]), err
  assert "Traceback" not in err and "Event loop is closed" not in err, err
  assert "Resumed from" in out and "at step 10" in out, out
  assert sorted(os.listdir(ckpts)) == ["10", "20"]            # step 20 trained and saved again
  assert got["steps"] == 20 and got["best_step"] == ref["best_step"]
  np.testing.assert_allclose(got["auc"]["all"], ref["auc"]["all"], atol=1e-6)
  # No step restores: one error naming each step and its cause; nothing is moved.
  for step in ("10", "20"):
    _truncate_data_files(os.path.join(ckpts, step))
  with pytest.raises(checkpoint.CheckpointError, match=r"no checkpoint restores \(step 20: .+; "
                     r"step 10: .+\)"):
    train.train_and_evaluate(c, workdir)
  assert sorted(os.listdir(ckpts)) == ["10", "20"]


def test_a_failed_restores_leftover_reads_print_no_traceback(capfd, monkeypatch):
  """What a failed Orbax restore leaves behind, made deterministic: a tensorstore read awaited on
  an event loop that is closed when the restore fails, and that completes while the previous
  step is read. Tensorstore reports its callback's "Event loop is closed" to sys.unraisablehook
  (a bare traceback on stderr outside pytest); the fallback drops exactly that, passes other
  unraisable exceptions on, and prints one warning line."""
  import asyncio
  import types
  import tensorstore as ts
  from mscan_jax.training import checkpoint
  seen = []
  monkeypatch.setattr(sys, "unraisablehook", lambda u: seen.append(repr(u.exc_value)))
  promise, read = ts.Promise.new()

  async def wait():
    return await read

  class Other:
    def __del__(self):
      raise KeyError("another")

  def restore_step(step):
    if step == 20:                               # reads start, the first fails, the loop closes
      loop = asyncio.new_event_loop()
      task = loop.create_task(wait())
      task._log_destroy_pending = False          # (asyncio's own message when it is collected)
      loop.run_until_complete(asyncio.sleep(0.01))
      loop.close()
      raise ValueError("OUT_OF_RANGE: short file\nmore detail")
    promise.set_result(0)                        # the leftover read completes meanwhile
    Other()
    return "state of step 10"

  ckpt = types.SimpleNamespace(manager=types.SimpleNamespace(all_steps=lambda: [10, 20]),
                               directory="/run/checkpoints", _move_aside=lambda s: f"/run/d/{s}")
  capfd.readouterr()
  assert checkpoint._latest_that_restores(ckpt, restore_step, move_aside=True) == "state of step 10"
  assert capfd.readouterr().err == (
      "warning: checkpoint 20 in /run/checkpoints does not restore (ValueError: OUT_OF_RANGE: "
      "short file); moved to /run/d/20; restored step 10\n")
  assert seen == ["KeyError('another')"]
  # The hook is put back afterwards:
  sys.unraisablehook(types.SimpleNamespace(exc_value=RuntimeError("Event loop is closed")))
  assert seen[-1] == "RuntimeError('Event loop is closed')"

@pytest.mark.parametrize("flag, message", [
    ("--config.train.clip_norm=-1", "config.train.clip_norm must be a finite number > 0, got -1.0"),
    ("--config.train.learning_rate=nan", "config.train.learning_rate must be a finite number > 0"),
    ("--config.mscan.mlp=(0,)", "config.mscan.mlp must be a list of layer widths (each an integer >= 1"),
    ("--config.seed=-1", "config.seed must be an integer >= 0, got -1"),
    ("--config.train.nonexistent=1", "--config.train.nonexistent: config.train has no field "
     "'nonexistent'; valid: batch_size, checkpoint_every_steps, clip_norm"),
    ("--config.train.batch_size=abc", "flag --config.train.batch_size=abc:"),
    ("--no_such_flag=1", "Unknown command line flag 'no_such_flag'"),
])
def test_launch_user_errors_are_one_error_line_and_exit_2(tmp_path, flag, message):
  proc = subprocess.run(
      [sys.executable, os.path.join(ROOT, "launch.py"),
       "--config=" + os.path.join(ROOT, "mscan_jax", "config.py") + ":tiny",
       f"--workdir={tmp_path / 'run'}", f"--config.data.cache_dir={tmp_path.parent / 'data_cache'}",
       flag], cwd=ROOT, capture_output=True, text=True, timeout=300)
  assert proc.returncode == 2, proc.stderr[-2000:]
  errors = [l for l in proc.stderr.splitlines() if l.startswith("error:")]
  assert len(errors) == 1 and message in errors[0], proc.stderr[-2000:]
  assert "Traceback" not in proc.stderr
  assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("flags, message", [
    # No --config=: ml_collections applies the overrides while launch.py defines the flag.
    (["--config.train.nosuchkey=3"], "--config.train.nosuchkey: config.train has no field "
     "'nosuchkey'; valid: batch_size"),
    (["--config.model=single"], "config.model='single' needs a target scenario: set "
     "--config.single.scenario=ID"),
    (["--config=" + os.path.join(ROOT, "mscan_jax", "config.py") + ":tiny", "--config.model=finetune"],
     "config.model='finetune' needs a target scenario"),
])
def test_launch_refuses_a_bad_config_before_any_data_or_run_folder(tmp_path, flags, message):
  proc = subprocess.run(
      [sys.executable, os.path.join(ROOT, "launch.py"), *flags, f"--workdir={tmp_path / 'run'}",
       f"--config.data.cache_dir={tmp_path / 'cache'}"],
      cwd=ROOT, capture_output=True, text=True, timeout=300)
  assert proc.returncode == 2, proc.stderr[-2000:]
  assert proc.stderr.startswith(f"error: {message}") and len(proc.stderr.splitlines()) == 1, proc.stderr
  assert not (tmp_path / "run").exists() and not (tmp_path / "cache").exists()


def test_format_results_shows_the_test_split_cold_shares():
  results = {"model": "m", "dataset": "d", "auc": {"per_scenario": {"1": 0.6, "2": 0.7},
                                                   "all": 0.65, "mean_per_scenario": 0.65},
             "gauc": 0.6, "logloss": 0.5, "n_per_scenario": {"1": 2, "2": 2}, "n_test": 4}
  cold = {"users": {"all": 0.5, "1": 0.0, "2": 1.0}, "items": {"all": 0.25, "1": 0.5, "2": 0.0}}
  lines = train.format_results(results, cold=cold).splitlines()
  assert lines[1].split()[-4:] == ["cold", "users", "cold", "items"]
  assert lines[2].split()[-2:] == ["0.0%", "50.0%"] and lines[3].split()[-2:] == ["100.0%", "0.0%"]
  assert lines[5].startswith("     #All") and lines[5].split()[-2:] == ["50.0%", "25.0%"]
  # Evaluated on scenario 2 only: the dataset's #All shares are not this run's.
  results["auc"]["per_scenario"] = {"2": 0.7}
  assert train.format_results(results, cold=cold).splitlines()[-2].split()[-2:] == ["-", "-"]
  assert "cold" not in train.format_results(results)       # a dataset built before they were counted


def test_a_diverging_run_stops_and_keeps_its_last_good_checkpoint(tmp_path, monkeypatch):
  """A loss that grows past divergence_factor x its first value (finite, so the NaN check never
  fires) stops the run at that step; the checkpoint before it is kept and no results.json
  appears."""
  c = _cheap(tmp_path, max_steps=10)
  workdir = str(tmp_path / "run")
  train.train_and_evaluate(c, workdir)                  # good up to step 10
  real_loss_fn = objective.loss_fn

  def exploding(out, label, mask, alpha):              # 1e4 x the loss: large, finite
    loss, aux = real_loss_fn(out, label, mask, alpha)
    return loss * 1e4, aux

  monkeypatch.setattr(objective, "loss_fn", exploding)
  c.train.max_steps = 20
  with pytest.raises(steps.DivergenceError, match=r"loss \S+ at step 11 is more than "
                     r"config\.train\.divergence_factor=1000 times its first value"):
    train.train_and_evaluate(c, workdir)
  assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == ["10"]
  assert not os.path.exists(os.path.join(workdir, "results.json"))
  c.train.divergence_factor = 0.0                       # off: only non-finite values stop it
  assert steps.check_divergence([{"loss": 1e30, "grad_norm": 1.0}], 5, {}, 0.0, "") is None


def test_a_non_finite_gradient_norm_stops_the_run():
  """The gradient norm is watched like the loss (lr 1e6 on M-scan: a finite loss of 1e26 beside
  an infinite gradient norm)."""
  meta = {}
  steps.check_divergence([{"loss": 0.7, "grad_norm": 0.2}], 1, meta, 1e3, "kept")
  assert meta["divergence_ref"] == {"loss": 0.7, "grad_norm": 0.2}
  with pytest.raises(steps.DivergenceError, match=r"non-finite gradient norm at step 3; "
                     r"stopping\. kept"):
    steps.check_divergence([{"loss": 0.6, "grad_norm": 0.3}, {"loss": 1e3, "grad_norm": np.inf}],
                           3, meta, 1e3, "kept")
  with pytest.raises(steps.DivergenceError, match=r"gradient norm 300 at step 4 is more than"):
    steps.check_divergence([{"loss": 0.6, "grad_norm": 300.0}], 4, meta, 1e3, "kept")


def test_launch_exits_with_an_error_line_when_training_diverges(tmp_path):
  """learning rate 1e6 (the reference scorers read config.reference.learning_rate): the loss
  jumps from 0.69 to about 1e6 at step 2; launch.py prints one error line and exits 1."""
  proc = subprocess.run(
      [sys.executable, os.path.join(ROOT, "launch.py"),
       "--config=" + os.path.join(ROOT, "mscan_jax", "config.py") + ":tiny",
       f"--workdir={tmp_path / 'run'}", f"--config.data.cache_dir={tmp_path.parent / 'data_cache'}",
       "--config.model=logreg", "--config.reference.learning_rate=1e6",
       "--config.train.log_every_steps=1"], cwd=ROOT, capture_output=True, text=True, timeout=300)
  assert proc.returncode == 1, (proc.returncode, proc.stderr[-2000:])
  errors = [l for l in proc.stderr.splitlines() if l.startswith("error:")]
  assert len(errors) == 1 and "the run diverged" in errors[0], proc.stderr[-2000:]
  assert "Traceback" not in proc.stderr
  assert not (tmp_path / "run" / "results.json").exists()


# ----------------------------------------------------------------------------- stopping

def _scripted_validation(monkeypatch, values):
  """The validation metric of each evaluation in turn is the next of `values` (the rest of the
  evaluation runs as usual): early stopping sees a known sequence."""
  from mscan_jax.training import loop
  it = iter(values)
  monkeypatch.setattr(loop.metrics_lib, "select_value", lambda metrics, name: next(it))


@pytest.mark.parametrize("patience, evals", [(0, 3), (1, 3), (3, 5)])
def test_patience_stops_after_exactly_that_many_evaluations_without_a_gain(
    tmp_path, monkeypatch, patience, evals):
  """Gains at the first two evaluations, then none (an equal value is no gain): patience N stops
  at the N-th evaluation without a gain (0 acts as 1); results.json says why, and where the best
  one was. A second start of the finished folder, with a larger budget, trains no further and
  keeps the reason."""
  _scripted_validation(monkeypatch, [0.6, 0.7, 0.7, 0.65, 0.69, 0.5, 0.5])
  c = _cheap(tmp_path, max_steps=1000, eval_every_steps=2, log_every_steps=2, patience=patience)
  workdir = str(tmp_path / "run")
  res = train.train_and_evaluate(c, workdir)
  valid = [json.loads(l) for l in open(os.path.join(workdir, "metrics.jsonl"))
           if json.loads(l)["split"] == "valid"]
  assert [r["step"] for r in valid] == [2 * (k + 1) for k in range(evals)]
  assert res["stop_reason"] == "early_stopping" and res["steps"] == 2 * evals
  assert res["best_step"] == 4 and res["best_valid_auc"] == 0.7
  assert res["best_epoch"] == 4 / res["steps_per_epoch"] and res["steps_per_epoch"] > 4
  c.train.max_steps = 2000
  again = train.train_and_evaluate(c, workdir)
  assert again["stop_reason"] == "early_stopping" and again["steps"] == 2 * evals


def test_a_run_whose_budget_runs_out_stops_for_max_steps_and_goes_on_under_a_larger_one(
    tmp_path, monkeypatch):
  """Every evaluation a gain: the budget stops the run (`max_steps`); resumed with a larger budget
  it trains on, and stops again for its budget or its patience."""
  _scripted_validation(monkeypatch, [0.5, 0.6, 0.7, 0.7])
  c = _cheap(tmp_path, max_steps=6, eval_every_steps=2, log_every_steps=2, patience=1)
  workdir = str(tmp_path / "run")
  res = train.train_and_evaluate(c, workdir)
  assert res["stop_reason"] == "max_steps" and res["steps"] == 6 and res["best_step"] == 6
  assert json.load(open(os.path.join(workdir, "results.json")))["stop_reason"] == "max_steps"
  c.train.max_steps = 20
  more = train.train_and_evaluate(c, workdir)    # evaluation 4 at step 8: no gain, patience 1
  assert more["stop_reason"] == "early_stopping" and more["steps"] == 8
  assert more["best_step"] == 6


def test_an_oracle_is_scored_as_initialised_and_says_so(tmp_path):
  c = _cheap(tmp_path)
  c.model = "oracle_like"
  res = train.train_and_evaluate(c, str(tmp_path / "run"))
  assert res["stop_reason"] == "not_trainable" and res["steps"] == 0 and res["best_epoch"] == 0
