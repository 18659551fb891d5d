"""Trains and evaluates a model; with no flags, M-scan on the synthetic benchmark (default preset).

    python launch.py                                   # M-scan, synthetic default, prints Table 1
    python launch.py --config.model=ple --config.seed=1 --workdir=runs/ple-s1
    python launch.py --config.data.name=aliccp --config.data.path=DIR   # a built dataset
    python launch.py --config.mscan.use_sbe=False      # Table 2 ablation
    python launch.py --config=mscan_jax/config.py:tiny # seconds: tiny preset, small towers

Multi-host: --config.distributed.coordinator_address=HOST:PORT --config.distributed.num_processes=N
--config.distributed.process_id=I on each process, or --config.distributed.auto=True to read the
cluster's environment as `jax.distributed.initialize()` does.

Errors: a user error (a bad flag, an unknown or invalid config field, bad data, a run folder in
use or holding another run) prints one line `error: <message>` and exits with code 2; a run that
cannot go on (it diverged, no checkpoint restores) prints `error: <message>` and exits with 1;
anything else is a bug and keeps its traceback.
"""

import sys

from absl import app, flags, logging

_CONFIG_HELP = ("Config file (`mscan_jax/config.py`, or `mscan_jax/config.py:tiny`), then "
                "--config.X=Y overrides.")
_WORKDIR = flags.DEFINE_string("workdir", "", "Run folder (default runs/<model>-<dataset>-s<seed>).")


def main(argv):
  from mscan_jax.config import ConfigError
  from mscan_jax.data.schema import DataError
  from mscan_jax.training import rundir
  rundir.die_with_parent()           # started by the grid runner: never outlive it
  if len(argv) > 1:
    _fail(f"unexpected arguments: {argv[1:]}")
  if not flags.FLAGS["verbosity"].present:
    logging.set_verbosity(logging.WARNING)   # Orbax logs every file it writes at INFO
  config = flags.FLAGS.config
  try:
    print(apply_tuning(config, sys.argv))
  except ValueError as e:                     # ConfigError, or an unreadable tuning table
    _fail(str(e))
  from mscan_jax.training import distributed
  distributed.retain_host_memory()   # before any JAX computation: XLA:CPU step buffers are reused
  from mscan_jax.training import checkpoint, steps, train
  try:
    distributed.initialize(config)
    workdir = _WORKDIR.value or default_workdir(config)
    results = train.run(config, workdir)
  except (ConfigError, DataError, rundir.RunDirError) as e:   # the user's to fix: no traceback
    _fail(str(e))
  except (checkpoint.CheckpointError, steps.DivergenceError) as e:   # the run cannot go on
    _fail(str(e), code=1)
  import jax
  if jax.process_index() == 0:
    print(train.format_results(results, cold=cold_shares_of_test(config)))
    print(format_speed(results))
    print(f"Run folder: {workdir}")


def apply_tuning(config, argv) -> str:
  """Sets the tuned settings of this run's dataset and model (`experiments.tuning`, the table of
  size "default") on the keys its command line does not give (`--config.KEY=` wins); returns one
  line saying what it used. Nothing with `config.train.tuned=False`."""
  if not config.train.tuned:
    return "Tuning: off (config.train.tuned=False); the config's values"
  import os
  from experiments import tuning
  from mscan_jax import config as config_lib
  from mscan_jax.data import datasets
  key = datasets.tuning_label(config.data)
  overrides = tuning.axis_values(config.to_dict())
  row, path = tuning.row_key(overrides), os.path.relpath(tuning.table_path(key, "default"))
  settings = tuning.settings_for(key, "default", overrides)
  if not settings:
    return (f"Tuning: no tuned setting for {row} on {key} ({path}); the config's values "
            "(tune with python -m experiments.tune)")
  given = {a.split("=", 1)[0][len("--config."):] for a in argv if a.startswith("--config.")}
  applied = {k: v for k, v in settings.items() if k not in given}
  for k, v in applied.items():
    config_lib.set_field(config, k, v)
  kept = sorted(set(settings) - set(applied))
  return (f"Tuning: {row} on {key}: {applied} from {path}"
          + (f"; {', '.join(kept)} from the command line" if kept else ""))


def _fail(message: str, code: int = 2) -> None:
  from mscan_jax import config as config_lib
  config_lib.fail(message, code)


def format_speed(results: dict) -> str:
  """The training loop's steady-state examples/s (results.json), one line."""
  rate = results.get("train_examples_per_s")
  if rate is None:
    return ("Training speed: not measured (fewer than two log windows; "
            "see config.train.log_every_steps)")
  return (f"Training speed: {rate:,.0f} examples/s ({results['train_steps_timed']} steps in "
          f"{results['train_seconds']:.1f} s, first log window (compilation) and "
          f"{results['eval_seconds']:.1f} s of validation and checkpoints excluded)")


def cold_shares_of_test(config) -> dict | None:
  """The test split's shares of samples whose user (item) has no training sample, from the
  built dataset's statistics (`builder.cold_shares`); None for a dataset built before they were
  counted."""
  from mscan_jax.data import datasets
  return datasets.open_dataset(config.data).stats.get("cold", {}).get("test")


def default_workdir(config) -> str:
  from mscan_jax.data import datasets
  return f"runs/{config.model}-{datasets.label(config.data)}-s{config.seed}"


if __name__ == "__main__":
  from mscan_jax import config as config_lib
  config_lib.define_config_flag_or_fail(_CONFIG_HELP)
  app.run(main, flags_parser=config_lib.parse_flags_or_fail)
