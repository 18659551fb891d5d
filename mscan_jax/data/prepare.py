"""Builds a dataset from raw files (your own log, or a public dataset), ready for `launch.py`.

    python -m mscan_jax.data.prepare --dataset=log --raw=my_log.csv --out=data/mylog \\
        --config.data.columns.user=uid --config.data.columns.item=iid \\
        --config.data.columns.scenario=page --config.data.columns.label=click \\
        --config.data.columns.time=ts
    python -m mscan_jax.data.prepare --dataset=aliccp --raw=ali-ccp/ --out=data/aliccp
    python -m mscan_jax.data.prepare --dataset=aliccp_csv --raw=DIR|FILE --out=data/aliccp_csv
    python -m mscan_jax.data.prepare --dataset=cloudtheme --raw=cloud-theme/ --out=data/cloudtheme \\
        --config.data.cloudtheme.negatives=2 --config.data.cloudtheme.seed=0
    python -m mscan_jax.data.prepare --dataset=recbole --raw=NAME/ --out=data/NAME \\
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

Paper App. A.1: keep the users seen in at least two scenarios, order the samples in time and put
the most recent 40% in the test set. Each loader turns its files into an `EventLog`;
`builder.build_dataset` applies the filter and the split and writes the built dataset (schema,
log, splits, vocab, statistics), the same as for a log built on the fly by `launch.py`. The
loader's own counts (rows read, rows dropped per reason, negatives drawn) are saved with them.
The output is written to a temporary folder and renamed into place, so a failed run never
leaves a half-built dataset.
"""

from __future__ import annotations

import os
import shutil
import sys
import time
from typing import Any

import ml_collections
import numpy as np

from mscan_jax import config as config_lib
from mscan_jax.config import ConfigError
from mscan_jax.data import builder, datasets
from mscan_jax.data.log import build_atomically
from mscan_jax.data.schema import DataError


def dataset_config(dataset: str, raw: str,
                   data: ml_collections.ConfigDict | None = None) -> ml_collections.ConfigDict:
  """A copy of `data` (default: the default `config.data`) for building `dataset` from `raw`:
  `name` and `path` set from them, validated (`datasets.validate_data`)."""
  if dataset not in datasets.prepared_names():
    raise ConfigError(f"--dataset={dataset!r} is unknown; valid: "
                      f"{', '.join(datasets.prepared_names())}")
  data = (data or config_lib.get_config().data).copy_and_resolve_references()
  data.name, data.path = dataset, raw
  datasets.validate_data(data)
  return data


def prepare(dataset: str, raw: str, out: str, data: ml_collections.ConfigDict | None = None, *,
            overwrite: bool = False) -> dict[str, Any]:
  """Loads `raw` as `dataset` with the options of `data` (a `config.data`), builds it into
  `out` and returns the statistics."""
  data = dataset_config(dataset, raw, data)
  spec = datasets.get_spec(dataset)
  options = datasets.build_options(data)
  if os.path.exists(os.path.join(out, "schema.json")):
    if not overwrite:
      raise DataError(f"{out}: already a built dataset; remove it or pass --overwrite")
    shutil.rmtree(out)
  elif os.path.isdir(out) and os.listdir(out):
    raise DataError(f"{out}: exists and is not a built dataset; choose another --out")
  elif os.path.exists(out) and not os.path.isdir(out):
    raise DataError(f"{out}: exists and is not a directory; choose another --out")
  start = time.perf_counter()
  log, vocab, load_stats = spec.load(raw, data)
  load_stats["load_seconds"] = round(time.perf_counter() - start, 2)
  extra = source_stats(load_stats)
  if spec.all_seq_mode_reason:
    extra["all_seq_mode_reason"] = spec.all_seq_mode_reason
  result: dict[str, Any] = {}

  def build(tmp: str) -> None:
    result.update(builder.build_dataset(tmp, log, **options, name=datasets.label(data),
                                        extra_stats=extra, vocab=vocab))

  if os.path.isdir(out):
    os.rmdir(out)                                     # empty: the build renames into place
  build_atomically(out, build)
  return result


def source_stats(load_stats: dict[str, Any]) -> dict[str, Any]:
  """The loader's counts as builder `extra_stats`: drop counts (keys `dropped_*`) join the
  builder's "dropped" (printed), the others are saved as `source_*`."""
  extra: dict[str, Any] = {"dropped": {}}
  for k, v in load_stats.items():
    if "dropped_" in k:
      extra["dropped"][k.replace("dropped_", "")] = _flat(v)
    else:
      extra[k if k.startswith("source") else f"source_{k}"] = _flat(v)
  return extra


def format_source_stats(stats: dict[str, Any]) -> str:
  """The loader's own counts (rows read, negatives drawn, ...), one per line."""
  keys = [k for k in stats if k.startswith("source_")]
  return "\n".join(f"{k}: {stats[k]}" for k in keys)


def _flat(v: Any) -> Any:
  """Statistics values as JSON scalars (lists become one string)."""
  if isinstance(v, (list, tuple)):
    return ", ".join(str(x) for x in v)
  if isinstance(v, np.generic):
    return v.item()
  return v


# ---------------------------------------------------------------------------------------
# Command line

CONFIG_FILE = os.path.join(os.path.dirname(os.path.abspath(config_lib.__file__)), "config.py")


def _fail(message: str) -> None:
  """One line on stderr, exit code 2 (a usage error), no traceback."""
  print(f"error: {message}", file=sys.stderr)
  sys.exit(2)


def check_config_overrides(argv: list[str]) -> None:
  """Refuses a `--config.KEY` that the config does not have, naming it and the valid keys at
  that level (`config.check_override_keys`; ml_collections would raise a traceback)."""
  try:
    config_lib.check_override_keys(argv)
  except ConfigError as e:
    _fail(str(e))


def _define_flags() -> None:
  from absl import flags
  from ml_collections import config_flags
  flags.DEFINE_enum("dataset", None, list(datasets.prepared_names()),
                    "What the raw files are (mscan_jax/data/datasets.py).", required=True)
  flags.DEFINE_string("raw", None, "Raw files: a log file (log), a directory (aliccp, cloudtheme, "
                      "recbole, aliccp_csv) or a file (aliccp_csv, a recbole .inter).", required=True)
  flags.DEFINE_string("out", None, "Output directory of the built dataset.", required=True)
  flags.DEFINE_bool("overwrite", False, "Replace an existing built dataset at --out.")
  config_flags.DEFINE_config_file(
      "config", CONFIG_FILE, "mscan_jax/config.py; --config.data.X=Y sets the build options as "
      "for launch.py (column mapping, caps, fractions, each loader's sub-dict).")


def _parse_flags(argv: list[str]) -> list[str]:
  from absl import flags
  try:
    return flags.FLAGS(argv)
  except flags.Error as e:
    _fail(str(e))
  return []


def main(argv) -> None:
  from absl import flags
  if len(argv) > 1:
    _fail(f"unexpected arguments: {argv[1:]}")
  f = flags.FLAGS
  start = time.perf_counter()
  try:
    stats = prepare(f.dataset, f.raw, f.out, f.config.data, overwrite=f.overwrite)
  except (ConfigError, DataError) as e:
    _fail(str(e))
  print(builder.format_stats(stats))
  print(format_source_stats(stats))
  print(f"built dataset: {f.out}  ({time.perf_counter() - start:.1f} s)")
  print(f"train on it:   python launch.py --config.data.name={f.dataset} --config.data.path={f.out}")


if __name__ == "__main__":
  from absl import app
  check_config_overrides(sys.argv)
  _define_flags()
  app.run(main, flags_parser=_parse_flags)
