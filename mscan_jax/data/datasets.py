"""The dataset registry: `config.data.name` -> how the data is read, built, named and scored.

One function opens the built dataset of a `config.data` (`open_dataset`), one names it for run
folders and reports (`label`), one checks and normalises the data section of a config
(`validate_data`, called by `mscan_jax.config.validate` and by `prepare`), and each dataset's
default `c` of Eq. (12), loader and default history content live with it here. The trainer,
the grid and `prepare` know no dataset name.

  synthetic   the synthetic causal benchmark (`mscan_jax.data.synthetic`), generated once into
              `config.data.cache_dir` from `config.data.preset` and `config.data.seed`
  built       any built dataset directory (`config.data.path`)
  log         a generic CSV/Parquet log (`config.data.path` = the file, `config.data.columns`
              the column mapping), built once into `config.data.cache_dir`; or a directory
              built from one by `python prepare.py --dataset=log`
  aliccp, aliccp_csv, cloudtheme, recbole
              a directory built by `python prepare.py` (`config.data.path`)

Every dataset with a loader (`DatasetSpec.load`) can be built by `prepare`; the loader reads
the raw files with the options of its own sub-dict of `config.data` (`config.data.aliccp`,
`config.data.cloudtheme`, `config.data.recbole`; a log reads `config.data.columns`), and the
common options (`build_options`: caps, history content, split fractions, user filter) are the
same for every source.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from typing import Any, Callable

import ml_collections

from mscan_jax.errors import ConfigError, integer_at_least, number_in
from mscan_jax.data.schema import ALL_SEQ_MODES, BuiltDataset, DataError, check_name

# (raw path, config.data) -> (EventLog, vocab, loader statistics)
Loader = Callable[[str, ml_collections.ConfigDict], tuple[Any, dict, dict]]


# ---------------------------------------------------------------------------------------
# Loaders: each reads its own options from config.data (imported when used)


def _load_log(raw: str, data: ml_collections.ConfigDict):
  from mscan_jax.data import log as log_lib
  log, vocab = log_lib.load_log(raw, log_columns(data))
  return log, vocab, {"source_format": "generic log (CSV/Parquet)"}


def _aliccp_options(data: ml_collections.ConfigDict) -> dict[str, int]:
  from mscan_jax.data import rawio
  o = data.aliccp
  return {"block_size": int(o.block_size_mb * (1 << 20)) or rawio.DEFAULT_BLOCK_SIZE}


def _load_aliccp(raw: str, data: ml_collections.ConfigDict, spill_dir: str | None = None):
  from mscan_jax.data import aliccp, rawio
  return aliccp.load_aliccp_raw(raw, **_aliccp_options(data),
                                workers=int(data.aliccp.workers) or rawio.DEFAULT_WORKERS,
                                missing_common=data.aliccp.missing_common, spill_dir=spill_dir)


def _aliccp_spill_bytes(raw: str) -> int:
  from mscan_jax.data import aliccp
  return aliccp.spill_bytes(raw)


def _load_aliccp_csv(raw: str, data: ml_collections.ConfigDict):
  from mscan_jax.data import aliccp
  return aliccp.load_aliccp_csv(raw, **_aliccp_options(data))


def _load_cloudtheme(raw: str, data: ml_collections.ConfigDict):
  from mscan_jax.data import cloudtheme
  o = data.cloudtheme
  return cloudtheme.load_cloudtheme(raw, negatives=int(o.negatives), seed=int(o.seed),
                                    negative_pool=o.negative_pool, purchases=bool(o.purchases),
                                    missing_pool=o.missing_pool)


def _load_recbole(raw: str, data: ml_collections.ConfigDict):
  from mscan_jax.data import recbole
  o = data.recbole
  return recbole.load_recbole(raw, scenario=o.scenario, user=o.user, item=o.item, label=o.label,
                              label_threshold=o.label_threshold, time=o.time or None)


# ---------------------------------------------------------------------------------------
# Checks of each loader's options: one ConfigError naming the field


def _one_of(field: str, value: Any, valid: tuple) -> None:
  if value not in valid:
    raise ConfigError(f"{field}={value!r} is unknown; valid: {', '.join(map(str, valid))}")


def _check_aliccp(data: ml_collections.ConfigDict) -> None:
  o = data.aliccp
  number_in("config.data.aliccp.block_size_mb", o.block_size_mb, low=0,
            what=">= 0 (0: the default)")
  integer_at_least("config.data.aliccp.workers", o.workers, 0)
  _one_of("config.data.aliccp.missing_common", o.missing_common, ("error", "drop"))


def _check_cloudtheme(data: ml_collections.ConfigDict) -> None:
  from mscan_jax.data import cloudtheme
  o = data.cloudtheme
  integer_at_least("config.data.cloudtheme.seed", o.seed, 0)
  if not 1 <= o.negatives < cloudtheme.SAMPLE_STRIDE:
    raise ConfigError(f"config.data.cloudtheme.negatives must be in "
                      f"1..{cloudtheme.SAMPLE_STRIDE - 1}, got {o.negatives}")
  _one_of("config.data.cloudtheme.negative_pool", o.negative_pool, cloudtheme.NEGATIVE_POOLS)
  _one_of("config.data.cloudtheme.missing_pool", o.missing_pool, ("error", "drop"))


def _check_recbole(data: ml_collections.ConfigDict) -> None:
  o = data.recbole
  for key in ("scenario", "user", "item", "label"):
    if not o[key]:
      raise ConfigError(f"config.data.recbole.{key} is required (a column of the atomic files"
                        + (", e.g. category:token" if key == "scenario" else "") + ")")
  if o.label_threshold is not None:
    number_in("config.data.recbole.label_threshold", o.label_threshold,
              what="a finite number (or unset: labels are 0/1)")


def _synthetic_dial_levels() -> dict[str, dict[str, float]]:
  from mscan_jax.data import synthetic
  return synthetic.DIAL_LEVELS


def _check_log(data: ml_collections.ConfigDict) -> None:
  try:
    log_columns(data)                                 # a column mapped twice, ...
  except DataError as e:
    raise ConfigError(f"config.data.columns: {e}") from None


@dataclasses.dataclass(frozen=True)
class DatasetSpec:
  description: str
  default_c: float = 1.0          # c of Eq. (12) when config.mscan.c < 0
  needs_path: bool = True         # config.data.path is required
  load: Loader | None = None      # reads the raw files: `prepare --dataset=NAME` builds it
  check: Callable[[ml_collections.ConfigDict], None] | None = None   # the loader's options
  all_seq_mode: str = "impressions"   # H_u content when config.data.all_seq_mode is ""
  all_seq_mode_reason: str = ""   # set: the default is the only valid mode, for this reason
  duplicates: str = "drop"        # exact duplicate rows, when config.data.duplicates is ""
  # A generated dataset's dials (`config.data.<name>.<dial>`): () -> {dial: {level: value}}
  dial_levels: Callable[[], dict[str, dict[str, float]]] | None = None
  # Set: the loader takes `spill_dir=` and writes its rows there as it reads (`spill`), so its
  # memory does not grow with the log (the others hold the log in memory: README); this gives
  # the disk that takes, about, from the raw path.
  spill_bytes: Callable[[str], int] | None = None

  @property
  def prepared(self) -> bool:
    """Built by `python prepare.py --dataset=NAME` from raw files."""
    return self.load is not None


DATASETS: dict[str, DatasetSpec] = {
    "synthetic": DatasetSpec("the synthetic causal benchmark (generated, knows the truth)",
                             needs_path=False, dial_levels=_synthetic_dial_levels),
    "built": DatasetSpec("any built dataset directory"),
    "log": DatasetSpec("a generic CSV/Parquet log with a column mapping (config.data.columns)",
                       load=_load_log, check=_check_log),
    # c = 18 for Ali-CCP (the authors' config), 1 to 10 for Cloud Theme (paper §4.4).
    "aliccp": DatasetSpec("Ali-CCP raw files (Tianchi dataset 408)", default_c=18.0,
                          load=_load_aliccp, check=_check_aliccp,
                          spill_bytes=_aliccp_spill_bytes),
    "aliccp_csv": DatasetSpec("Ali-CCP processed CSV (33 or 20 columns)", default_c=18.0,
                              load=_load_aliccp_csv, check=_check_aliccp),
    # Cloud Theme's non-clicks are sampled negatives, which must never enter a history
    # (mscan_jax/data/cloudtheme.py), so H_u holds clicks only.
    "cloudtheme": DatasetSpec(
        "Cloud Theme click log (Tianchi dataset 9716)", default_c=5.0, load=_load_cloudtheme,
        check=_check_cloudtheme, all_seq_mode="clicks",
        all_seq_mode_reason="all_seq_mode='impressions' would put the sampled negatives of "
        "earlier clicks into the all-scenario history as if the user had seen them; Cloud Theme "
        "logs clicks only, so H_u holds clicks (all_seq_mode='clicks')",
        # One click's negatives are drawn with replacement (the authors' protocol), so two of
        # them may be the same item at the same time: kept as drawn.
        duplicates="keep"),
    "recbole": DatasetSpec("RecBole atomic files with a scenario column", load=_load_recbole,
                           check=_check_recbole),
}


def names() -> tuple[str, ...]:
  return tuple(DATASETS)


def prepared_names() -> tuple[str, ...]:
  """The datasets `prepare` builds from raw files (those with a loader)."""
  return tuple(n for n, s in DATASETS.items() if s.prepared)


def get_spec(name: str) -> DatasetSpec:
  if name not in DATASETS:
    raise DataError(f"config.data.name={name!r} is unknown; valid: {', '.join(DATASETS)}")
  return DATASETS[name]


def dial_levels(name: str) -> dict[str, dict[str, float]]:
  """The dials of the generated dataset `name` (one per mechanism of its generator, set as
  `config.data.<name>.<dial>`), each with its placebo / moderate / strong value; {} for a
  dataset that is read, not generated. The grids, the report and the population trainer know
  the dials from here."""
  spec = get_spec(name)
  return spec.dial_levels() if spec.dial_levels is not None else {}


def dials(name: str) -> tuple[str, ...]:
  """The dial names of `name` (`dial_levels`), in the generator's order; () if none."""
  return tuple(dial_levels(name))


def default_c(data: ml_collections.ConfigDict) -> float:
  return float(get_spec(data.name).default_c)


# ---------------------------------------------------------------------------------------
# The data section of a config


# Column-mapping keys holding a list of column names; the others hold one name ("" = none).
LIST_COLUMNS = ("user_extra", "item_extra", "scenario_extra")
REQUIRED_COLUMNS = ("user", "item", "scenario", "label")


def column_names(value: Any, field: str) -> tuple[str, ...]:
  """A list of column names from the command line or Python: `age,gender`, `(age,gender)`,
  `('age','gender')`, `['age']`, `()`; a ConfigError naming `field` otherwise."""
  items = [value] if isinstance(value, str) else list(value)
  out: list[str] = []
  for item in items:
    if not isinstance(item, str):
      raise ConfigError(f"{field}={value!r}: column names must be text, got {item!r}")
    text = item.strip()
    if text[:1] + text[-1:] in ("()", "[]"):
      text = text[1:-1].strip()
    if not text:
      continue
    parts = [p.strip() for p in text.split(",")]
    if parts[-1] == "" and len(parts) > 1:                    # `age,` is ('age',)
      parts.pop()
    for part in parts:
      if part[:1] in "'\"" or part[-1:] in "'\"":
        if len(part) < 3 or part[0] != part[-1]:
          raise ConfigError(f"{field}={value!r}: cannot read {part!r} as a column name")
        part = part[1:-1]
      if not part or any(c in part for c in "()[]"):
        raise ConfigError(f"{field}={value!r}: cannot read {part!r} as a column name; write "
                          "a list as name1,name2")
      out.append(part)
  return tuple(out)


def normalize_columns(data: ml_collections.ConfigDict) -> dict[str, Any]:
  """`config.data.columns` checked, its lists normalised in place (`column_names`).

  Returns {key: name, or None where the column is absent, or a tuple of names for the
  `LIST_COLUMNS`}.
  """
  cols = data.columns
  out: dict[str, Any] = {}
  for key in cols.keys():
    field = f"config.data.columns.{key}"
    value = cols[key]
    if key in LIST_COLUMNS:
      names_ = column_names(value, field)
      if tuple(value) != names_:
        cols[key] = names_
      out[key] = names_
      continue
    if value is None:
      value = ""
    if not isinstance(value, str):
      raise ConfigError(f"{field}={value!r}: a column name must be text")
    if key in REQUIRED_COLUMNS and not value.strip():
      raise ConfigError(f"{field} is required (the column holding the {key})")
    out[key] = value.strip() or None
  return out


def log_columns(data: ml_collections.ConfigDict) -> Any:
  """The `log.LogColumns` of `config.data` (`data.columns.{user, item, ...}`), lists
  normalised by `normalize_columns` ("" = no such column).

  Every key of the mapping that names a `LogColumns` field is passed on; a key `LogColumns`
  does not know must be left "" (a ConfigError names it otherwise).
  """
  from mscan_jax.data import log as log_lib
  given = normalize_columns(data)
  known = {f.name for f in dataclasses.fields(log_lib.LogColumns)}
  for key, value in given.items():
    if value and key not in known:
      raise ConfigError(f"config.data.columns.{key}={value!r}: this version's log loader reads "
                        f"no such column (it reads {', '.join(sorted(known))})")
  return log_lib.LogColumns(**{k: v for k, v in given.items() if k in known})


def build_options(data: ml_collections.ConfigDict) -> dict[str, Any]:
  """The options every source is built with (`builder.build_dataset`'s keywords)."""
  return {"max_cur_len": int(data.max_cur_len), "max_all_len": int(data.max_all_len),
          "all_seq_mode": resolve_all_seq_mode(data),
          "test_fraction": float(data.test_fraction), "valid_fraction": float(data.valid_fraction),
          "min_scenarios_per_user": int(data.min_scenarios_per_user),
          "duplicates": data.duplicates or get_spec(data.name).duplicates}


def resolve_all_seq_mode(data: ml_collections.ConfigDict) -> str:
  """`config.data.all_seq_mode`, or the dataset's default where it is ""."""
  spec = get_spec(data.name)
  mode = data.all_seq_mode or spec.all_seq_mode
  if mode not in ALL_SEQ_MODES:
    raise ConfigError(f"config.data.all_seq_mode={data.all_seq_mode!r} is unknown; valid: "
                      f"{', '.join(ALL_SEQ_MODES)} or '' (the dataset's default)")
  if spec.all_seq_mode_reason and mode != spec.all_seq_mode:
    raise ConfigError(f"config.data.all_seq_mode: {data.name}: {spec.all_seq_mode_reason}")
  return mode


def validate_data(data: ml_collections.ConfigDict) -> None:
  """Raises ConfigError on the first invalid field of `config.data`, naming it; normalises
  the column lists in place (`normalize_columns`)."""
  if data.name not in DATASETS:
    raise ConfigError(f"config.data.name={data.name!r} is unknown; valid: {', '.join(DATASETS)}")
  spec = DATASETS[data.name]
  from mscan_jax.data.synthetic import PRESETS    # the generator owns its presets
  if data.name == "synthetic" and data.preset not in PRESETS:
    raise ConfigError(f"config.data.preset={data.preset!r} is unknown; "
                      f"valid: {', '.join(PRESETS)}")
  if spec.needs_path and not data.path:
    raise ConfigError(f"config.data.path is required for config.data.name={data.name!r} "
                      "(a built dataset directory, see `python prepare.py`)")
  if data.max_cur_len < 1 or data.max_all_len < 1:
    raise ConfigError("config.data.max_cur_len and config.data.max_all_len must be >= 1, got "
                      f"{data.max_cur_len} and {data.max_all_len}")
  for key in ("max_cur_len", "max_all_len"):
    integer_at_least(f"config.data.{key}", data[key], 1)
  resolve_all_seq_mode(data)
  for key in ("test_fraction", "valid_fraction"):
    if not 0 < data[key] < 1:                      # NaN fails too
      raise ConfigError(f"config.data.{key} must be in (0, 1), got {data[key]}")
  integer_at_least("config.data.min_scenarios_per_user", data.min_scenarios_per_user, 1)
  integer_at_least("config.data.prefetch", data.prefetch, 0)
  integer_at_least("config.data.seed", data.seed, 0)
  for key in ("train_scenarios", "eval_scenarios"):
    ids = data[key]
    if not isinstance(ids, (tuple, list)) or any(
        isinstance(i, bool) or not isinstance(i, int) or i < 1 for i in ids):
      raise ConfigError(f"config.data.{key} must be a list of scenario ids (integers >= 1; "
                        f"() = all), got {ids!r}")
  for dial, value in (data.synthetic.items() if data.get("synthetic") is not None else ()):
    number_in(f"config.data.synthetic.{dial}", value,
              what="a finite number (>= 0: the dial's value; < 0: the preset's)")
  if data.name == "synthetic":
    from mscan_jax.data import synthetic
    try:                                           # the generator's own ranges of its dials
      dataclasses.replace(synthetic.PRESETS[data.preset], **synthetic_overrides(data))
    except ValueError as e:
      message = str(e).replace("SyntheticConfig: ", "")
      dial = message.split()[0]
      if dial in data.synthetic:
        raise ConfigError(f"config.data.synthetic.{message}, got {data.synthetic[dial]}") from None
      raise ConfigError(f"config.data.synthetic: {message}") from None
  if data.duplicates:
    from mscan_jax.data.builder import DUPLICATE_POLICIES
    _one_of("config.data.duplicates", data.duplicates, DUPLICATE_POLICIES)
  normalize_columns(data)
  if spec.check is not None:
    spec.check(data)


# ---------------------------------------------------------------------------------------
# Names and paths


def log_label(path: str, columns: Any) -> str:
  """The name of the generic log at `path` read with `columns` (a `log.LogColumns`):
  log-<file stem>-<digest of the real path and the columns mapped>, so two logs (or one log
  read two ways) never share a name."""
  path = os.path.realpath(path)
  mapped = sorted((k, v) for k, v in dataclasses.asdict(columns).items() if v)
  digest = hashlib.sha1(repr((path, mapped)).encode()).hexdigest()[:8]
  stem = os.path.basename(path.rstrip("/")).split(".")[0] or "log"
  return f"log-{stem}-{digest}"


def label(data: ml_collections.ConfigDict) -> str:
  """The dataset's name in results.json, run folders and reports.

  synthetic-<preset> (+ -data<seed> for a data seed other than 0); a generic log file by
  `log_label`, which is also the name its built dataset stores; a built directory given as
  `log` or `built` by the name its schema stores; any other dataset by its `name`. A log or raw
  files built with another duplicates policy than the dataset's default get `-dup<policy>`
  (`policy_suffix`): the two builds are two datasets.
  """
  name = data.name
  if name == "synthetic":
    seed = int(data.get("seed", 0))
    dials = "".join(f"-{k}{v:g}" for k, v in sorted(synthetic_overrides(data).items()))
    return f"synthetic-{data.preset}{dials}" + (f"-data{seed}" if seed else "")
  if name in ("log", "built") and data.path and os.path.isdir(data.path):
    schema = os.path.join(data.path, "schema.json")
    if os.path.isfile(schema):
      with open(schema) as f:
        stored = json.load(f).get("name") or name
      return check_name(str(stored), f"{schema}: dataset name")  # it names run folders
    return name
  if name == "log":
    return log_label(data.path, log_columns(data)) + policy_suffix(data)
  return name + policy_suffix(data)


def tuning_label(data: ml_collections.ConfigDict) -> str:
  """The dataset's name in a tuning table (`experiments.tuning`): `label` at data seed 0 and, for
  the synthetic benchmark, at the preset's own dial levels: settings tuned on the default data
  serve every data seed and dial level of that dataset."""
  if data.name == "synthetic":
    return f"synthetic-{data.preset}"
  return label(data)


def policy_suffix(data: ml_collections.ConfigDict) -> str:
  """The part of a built dataset's name that its build options add: `-dup<policy>` when
  `config.data.duplicates` is not the dataset's default (`DatasetSpec.duplicates`); "" for a
  dataset that is not built from raw files here."""
  spec, policy = DATASETS.get(data.name), data.get("duplicates", "")
  if spec is None or not spec.prepared or not policy or policy == spec.duplicates:
    return ""
  return f"-dup{policy}"


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
                    "dataset directory, see `python prepare.py`)")
  if not os.path.exists(path):
    raise DataError(f"config.data.path={path!r} does not exist")
  if name == "log" and os.path.isfile(path):
    return _ensure_log_built(path, data)
  if name == "log" and not os.path.exists(os.path.join(path, "schema.json")):
    from mscan_jax.data import log as log_lib
    raise DataError(f"config.data.path={path!r} is a directory, but config.data.name='log' "
                    "reads a log file (" + ", ".join(log_lib.CSV_SUFFIXES + log_lib.PARQUET_SUFFIXES)
                    + "): give the file itself, or a dataset directory built from it by "
                    "`python prepare.py --dataset=log` (it holds schema.json)")
  if not os.path.exists(os.path.join(path, "schema.json")):
    raise DataError(f"config.data.path={path!r} is not a built dataset (no schema.json); build it "
                    f"with `python prepare.py --dataset={name} --raw=RAW --out=DIR`")
  return path


def _ensure_log_built(path: str, data: ml_collections.ConfigDict) -> str:
  """Built dataset of the log file `path`, built once into `data.cache_dir`.

  The cache key covers the file (absolute path, size, modification time), the column mapping
  and the build options (`build_options`: caps, history content, split fractions, user
  filter), so a changed file, mapping or option builds anew. The dataset is named
  `label(data)` (the log's name, with its duplicates policy where it is not the default).
  """
  from mscan_jax.data import log as log_lib
  columns = log_columns(data)
  options = build_options(data)
  st = os.stat(path)
  key = json.dumps({"file": os.path.abspath(path), "size": st.st_size, "mtime": st.st_mtime_ns,
                    "columns": dataclasses.asdict(columns), **options}, sort_keys=True)
  stem = os.path.basename(path).split(".")[0] or "log"
  out = os.path.join(data.cache_dir, f"log-{stem}-{hashlib.sha1(key.encode()).hexdigest()[:12]}")
  log_lib.build_atomically(out, lambda tmp: log_lib.build_from_log(
      path, tmp, columns, **options, name=label(data)))
  return out


def open_dataset(data: ml_collections.ConfigDict) -> BuiltDataset:
  """The built dataset of `config.data`, opened (memory-mapped)."""
  return BuiltDataset(built_path(data))


def resolve_c(config: ml_collections.ConfigDict) -> float:
  """c of Eq. (12): `config.mscan.c` if set (>= 0), else the dataset's default."""
  return float(config.mscan.c) if config.mscan.c >= 0 else default_c(config.data)
