"""Builds a dataset from raw files (your own log, or a public dataset), ready for `launch.py`.

    python prepare.py --dataset=log --raw=my_log.csv --out=data/mylog \\
        --config.data.columns.user=uid --config.data.columns.item=iid \\
        --config.data.columns.scenario=page --config.data.columns.label=click \\
        --config.data.columns.time=ts
    python prepare.py --dataset=aliccp --raw=ali-ccp/ --out=data/aliccp
    python prepare.py --dataset=aliccp_csv --raw=DIR|FILE --out=data/aliccp_csv
    python prepare.py --dataset=cloudtheme --raw=cloud-theme/ --out=data/cloudtheme \\
        --config.data.cloudtheme.negatives=2 --config.data.cloudtheme.seed=0
    python prepare.py --dataset=recbole --raw=NAME/ --out=data/NAME \\
        --config.data.recbole.scenario=category:token
    python launch.py --config.data.name=aliccp --config.data.path=data/aliccp   # printed at the end

It prints the statistics of the built dataset (users, items, scenarios, samples per split,
click rate and test samples per scenario, mean sequence lengths, rows dropped by each policy),
the loader's own counts (`source_*`: rows read, negatives drawn, ...), the seconds it took and
the `launch.py` command that trains on it. Cost: the small public samples and a log of a few
million rows take seconds; the raw Ali-CCP files (tens of GB) are streamed at 25-110 MB/s of
input depending on the machine's load, with a peak memory of about 0.7 GB per GB of input
(README, "Speed and scale"; `python -m benchmarks.aliccp_preprocess`).

One command-line style with `launch.py`: `--dataset` (one of the registry's datasets with a
loader, `datasets.prepared_names()`), `--raw`, `--out` and `--overwrite` are plain flags;
everything else is `mscan_jax/config.py`'s `config.data`, set with `--config.data.*` exactly as
for `launch.py`: the column mapping of a log (`--config.data.columns.*`), the common build
options (`max_cur_len`, `max_all_len`, `all_seq_mode`, `test_fraction`, `valid_fraction`,
`min_scenarios_per_user`, `duplicates`) and each loader's own sub-dict (`--config.data.aliccp.*`,
`--config.data.cloudtheme.*`, `--config.data.recbole.*`). An invalid value stops with one line
`error: ...` naming the field, exit code 2.

The command sits beside `launch.py`, above the config (README, "Layout"): the building itself is
`mscan_jax.data.prepare`, which knows no config file.
"""

import time

from absl import app, flags

from mscan_jax import config as config_lib
from mscan_jax.data import builder, datasets
from mscan_jax.data import prepare as prepare_lib
from mscan_jax.data.schema import DataError
from mscan_jax.errors import ConfigError

_fail = config_lib.fail


def _define_flags() -> None:
  flags.DEFINE_enum("dataset", None, list(datasets.prepared_names()),
                    "What the raw files are (mscan_jax/data/datasets.py).", required=True)
  flags.DEFINE_string("raw", None, "Raw files: a log file (log), a directory (aliccp, cloudtheme, "
                      "recbole, aliccp_csv) or a file (aliccp_csv, a recbole .inter).", required=True)
  flags.DEFINE_string("out", None, "Output directory of the built dataset.", required=True)
  flags.DEFINE_bool("overwrite", False, "Replace an existing built dataset at --out.")
  # `--config` and its overrides, as launch.py: an unknown `--config.KEY` is one `error:` line
  # naming it and its valid neighbours, exit code 2.
  config_lib.define_config_flag_or_fail(
      "mscan_jax/config.py; --config.data.X=Y sets the build options as for launch.py (column "
      "mapping, caps, fractions, each loader's sub-dict).")


def main(argv) -> None:
  if len(argv) > 1:
    _fail(f"unexpected arguments: {argv[1:]}")
  f = flags.FLAGS
  start = time.perf_counter()
  try:
    stats = prepare_lib.prepare(f.dataset, f.raw, f.out, f.config.data, overwrite=f.overwrite)
  except (ConfigError, DataError) as e:
    _fail(str(e))
  print(builder.format_stats(stats))
  print(prepare_lib.format_source_stats(stats))
  print(f"built dataset: {f.out}  ({time.perf_counter() - start:.1f} s)")
  print(f"train on it:   python launch.py --config.data.name={f.dataset} --config.data.path={f.out}")


if __name__ == "__main__":
  _define_flags()
  app.run(main, flags_parser=config_lib.parse_flags_or_fail)
