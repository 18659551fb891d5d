"""Trains and evaluates a model; with no flags, M-scan on the synthetic benchmark (default preset).

    python launch.py                                   # M-scan, synthetic default, prints Table 1
    python launch.py --config.model=ple --config.seed=1 --workdir=runs/ple-s1
    python launch.py --config.data.name=aliccp --config.data.path=DIR   # a built dataset
    python launch.py --config.mscan.use_sbe=False      # Table 2 ablation

Multi-host: --coordinator_address=HOST:PORT --num_processes=N --process_id=I (or the cluster's
environment, as `jax.distributed.initialize` reads it).
"""

from absl import app, flags
from ml_collections import config_flags

from mscan_jax import config as config_lib

_CONFIG = config_flags.DEFINE_config_dict("config", config_lib.get_config())
_WORKDIR = flags.DEFINE_string("workdir", "", "Run folder (default runs/<model>-<dataset>-s<seed>).")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  config = _CONFIG.value
  from mscan_jax.training import distributed, train
  distributed.initialize(config)
  workdir = _WORKDIR.value or default_workdir(config)
  results = train.run(config, workdir)
  import jax
  if jax.process_index() == 0:
    print(train.format_results(results))
    print(f"Run folder: {workdir}")


def default_workdir(config) -> str:
  data = config.data.name if config.data.name != "synthetic" else f"synthetic-{config.data.preset}"
  return f"runs/{config.model}-{data}-s{config.seed}"


if __name__ == "__main__":
  app.run(main)
