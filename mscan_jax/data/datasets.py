"""The dataset registry: `config.data.name` -> how the data is opened, named and scored.

One function opens the built dataset of a `config.data` (`open_dataset`), one names it for run
folders and reports (`label`), and each dataset's default `c` of Eq. (12) lives with it here
(`default_c`). The trainer and the grid know no dataset name.

  synthetic   the synthetic causal benchmark (`mscan_jax.data.synthetic`), generated once into
              `config.data.cache_dir` from `config.data.preset` and `config.data.seed`
  log         a generic CSV/Parquet log (`config.data.path` = the file, `config.data.columns`
              the column mapping), built once beside the file; or a built directory
  aliccp, aliccp_csv, cloudtheme, recbole
              a directory built by `python -m mscan_jax.data.prepare` (`config.data.path`)
"""

from __future__ import annotations

import dataclasses
import hashlib
import os

import ml_collections

from mscan_jax.data.schema import BuiltDataset, DataError


@dataclasses.dataclass(frozen=True)
class DatasetSpec:
  description: str
  default_c: float = 1.0          # c of Eq. (12) when config.mscan.c < 0
  needs_path: bool = True         # config.data.path is required
  prepared: bool = True           # built by `prepare --dataset=NAME` from raw files


DATASETS: dict[str, DatasetSpec] = {
    "synthetic": DatasetSpec("the synthetic causal benchmark (generated, knows the truth)",
                             needs_path=False, prepared=False),
    "built": DatasetSpec("any built dataset directory", prepared=False),
    "log": DatasetSpec("a generic CSV/Parquet log with a column mapping (config.data.columns)"),
    # c = 18 for Ali-CCP (the authors' config), 1 to 10 for Cloud Theme (paper §4.4).
    "aliccp": DatasetSpec("Ali-CCP raw files (Tianchi dataset 408)", default_c=18.0),
    "aliccp_csv": DatasetSpec("Ali-CCP processed CSV (33 or 20 columns)", default_c=18.0),
    "cloudtheme": DatasetSpec("Cloud Theme click log (Tianchi dataset 9716)", default_c=5.0),
    "recbole": DatasetSpec("RecBole atomic files with a scenario column"),
}


def names() -> tuple[str, ...]:
  return tuple(DATASETS)


def get_spec(name: str) -> DatasetSpec:
  if name not in DATASETS:
    raise DataError(f"config.data.name={name!r} is unknown; valid: {', '.join(DATASETS)}")
  return DATASETS[name]


def default_c(data: ml_collections.ConfigDict) -> float:
  return float(get_spec(data.name).default_c)


def label(data: ml_collections.ConfigDict) -> str:
  """The dataset's name in results.json, run folders and reports.

  synthetic-<preset> (+ -data<seed> for a data seed other than 0); a generic log is named
  after its file stem and a digest of its path and column mapping, so two logs never share a
  name; any other dataset by its `name`.
  """
  name = data.name
  if name == "synthetic":
    seed = int(data.get("seed", 0))
    dials = "".join(f"-{k}{v:g}" for k, v in sorted(synthetic_overrides(data).items()))
    return f"synthetic-{data.preset}{dials}" + (f"-data{seed}" if seed else "")
  if name == "log":
    path = os.path.realpath(data.path)
    key = repr((path, sorted(data.columns.to_dict().items())))
    digest = hashlib.sha1(key.encode()).hexdigest()[:8]
    stem = os.path.splitext(os.path.basename(path.rstrip("/")))[0]
    return f"log-{stem}-{digest}"
  return name


def synthetic_overrides(data: ml_collections.ConfigDict) -> dict[str, float]:
  """The dials set in `config.data.synthetic` (>= 0), as generator overrides."""
  dials = data.get("synthetic")
  return {k: float(v) for k, v in (dials.items() if dials is not None else ()) if v >= 0}


def built_path(data: ml_collections.ConfigDict) -> str:
  """The built dataset directory of `data`, building the synthetic benchmark or a log once."""
  name = data.name
  get_spec(name)
  if name == "synthetic":
    from mscan_jax.data import synthetic
    return synthetic.ensure_synthetic(data.preset, data.get("seed", 0), data.cache_dir,
                                      **synthetic_overrides(data))
  path = data.path
  if not path:
    raise DataError(f"config.data.path is required for config.data.name={name!r} (a built "
                    "dataset directory, see `python -m mscan_jax.data.prepare`)")
  if not os.path.exists(path):
    raise DataError(f"config.data.path={path!r} does not exist")
  if name == "log" and os.path.isfile(path):
    from mscan_jax.data import log as log_lib
    return log_lib.ensure_built(path, data)
  if not os.path.exists(os.path.join(path, "schema.json")):
    raise DataError(f"config.data.path={path!r} is not a built dataset (no schema.json); build it "
                    f"with `python -m mscan_jax.data.prepare --dataset={name} --raw=RAW --out=DIR`")
  return path


def open_dataset(data: ml_collections.ConfigDict) -> BuiltDataset:
  """The built dataset of `config.data`, opened (memory-mapped)."""
  return BuiltDataset(built_path(data))


def resolve_c(config: ml_collections.ConfigDict) -> float:
  """c of Eq. (12): `config.mscan.c` if set (>= 0), else the dataset's default."""
  return float(config.mscan.c) if config.mscan.c >= 0 else default_c(config.data)
