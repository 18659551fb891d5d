"""Builds a dataset from the public raw files, ready for `launch.py`.

    python -m mscan_jax.data.prepare --dataset=aliccp     --raw=DIR  --out=data/aliccp
    python -m mscan_jax.data.prepare --dataset=aliccp_csv --raw=DIR|FILE --out=data/aliccp_csv
    python -m mscan_jax.data.prepare --dataset=cloudtheme --raw=DIR  --out=data/cloudtheme [--negatives=2 --seed=0]
    python -m mscan_jax.data.prepare --dataset=recbole    --raw=DIR  --out=data/x --recbole_scenario=NAME
    python launch.py --config.data.name=aliccp --config.data.path=data/aliccp

Paper App. A.1: keep the users seen in at least two scenarios, order the samples in time and put
the most recent 40% in the test set. Each loader (`aliccp`, `cloudtheme`, `recbole`) turns its
files into an `EventLog`; `builder.build_dataset` applies the filter and the split and writes
the built dataset (schema, log, splits, vocab, statistics), which prints the same statistics as
the synthetic generator. The loader's own counts (rows read, rows dropped per reason, negatives
drawn) are saved with them. The output is written to a temporary folder and renamed into place,
so a failed run never leaves a half-built dataset.

The user filter is applied here, before building (`keep_multi_scenario_users`, the builder's
own rule): a log whose samples show no user in two scenarios (e.g. a file with a single
scenario) is refused with that reason, and scenarios left without samples are removed.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import time
from typing import Any

import numpy as np

from mscan_jax.data import builder
from mscan_jax.data import splits as splits_lib
from mscan_jax.data.log import build_atomically
from mscan_jax.data.rawio import DEFAULT_BLOCK_SIZE, DEFAULT_WORKERS
from mscan_jax.data.schema import ALL_SEQ_MODES, DataError, Field

DATASETS = ("aliccp", "aliccp_csv", "cloudtheme", "recbole")
# H_u holds all impressions by default; Cloud Theme's non-clicks are sampled negatives, which
# must not enter any history (cloudtheme module docstring), so it holds clicks only.
DEFAULT_ALL_SEQ_MODE = {"cloudtheme": "clicks"}


@dataclasses.dataclass
class PrepareOptions:
  """Everything `prepare` can be told; the CLI flags have the same names."""
  max_cur_len: int = 20                  # Ls
  max_all_len: int = 40                  # Lh
  all_seq_mode: str | None = None        # None = the dataset's default
  test_fraction: float = 0.4
  valid_fraction: float = 0.1
  min_scenarios_per_user: int = 2
  name: str | None = None                # default: the dataset name
  # Ali-CCP raw
  block_size: int = DEFAULT_BLOCK_SIZE
  workers: int = DEFAULT_WORKERS
  missing_common: str = "error"          # or "drop" (counted)
  # Cloud Theme
  seed: int = 0                          # negative sampling
  negatives: int = 2
  negative_pool: str = "clicked"         # or "pool"
  purchases: bool = False
  missing_pool: str = "error"            # or "drop" (counted)
  # RecBole
  recbole_scenario: str = ""
  recbole_user: str = "user_id"
  recbole_item: str = "item_id"
  recbole_label: str = "label:float"
  recbole_label_threshold: float | None = None
  recbole_time: str = "timestamp:float"


def load(dataset: str, raw: str, opts: PrepareOptions
         ) -> tuple[builder.EventLog, dict[str, np.ndarray], dict[str, Any]]:
  """The event log, vocab and loader statistics of `dataset` read from `raw`."""
  if dataset == "aliccp":
    from mscan_jax.data import aliccp
    return aliccp.load_aliccp_raw(raw, block_size=opts.block_size, workers=opts.workers,
                                  missing_common=opts.missing_common)
  if dataset == "aliccp_csv":
    from mscan_jax.data import aliccp
    return aliccp.load_aliccp_csv(raw, block_size=opts.block_size)
  if dataset == "cloudtheme":
    from mscan_jax.data import cloudtheme
    return cloudtheme.load_cloudtheme(raw, negatives=opts.negatives, seed=opts.seed,
                                      negative_pool=opts.negative_pool, purchases=opts.purchases,
                                      missing_pool=opts.missing_pool)
  if dataset == "recbole":
    from mscan_jax.data import recbole
    return recbole.load_recbole(raw, scenario=opts.recbole_scenario, user=opts.recbole_user,
                                item=opts.recbole_item, label=opts.recbole_label,
                                label_threshold=opts.recbole_label_threshold,
                                time=opts.recbole_time or None)
  raise DataError(f"unknown dataset {dataset!r}; valid: {', '.join(DATASETS)}")


def resolve_all_seq_mode(dataset: str, requested: str | None) -> str:
  mode = requested or DEFAULT_ALL_SEQ_MODE.get(dataset, "impressions")
  if mode not in ALL_SEQ_MODES:
    raise DataError(f"all_seq_mode must be one of {ALL_SEQ_MODES}, got {mode!r}")
  if dataset == "cloudtheme" and mode == "impressions":
    raise DataError("cloudtheme: all_seq_mode='impressions' would put each click's own sampled "
                    "negatives (same timestamp, just before it) into its all-scenario history, a "
                    "label leak; Cloud Theme logs clicks only, so H_u holds clicks "
                    "(all_seq_mode='clicks')")
  return mode


def keep_multi_scenario_users(log: builder.EventLog, vocab: dict[str, np.ndarray],
                              min_scenarios: int) -> tuple[builder.EventLog, dict[str, Any]]:
  """The paper's user filter (App. A.1), applied before building, then scenario compaction.

  Keeps the events of the users whose samples span >= `min_scenarios` scenarios (the builder's
  own rule, `splits.filter_users`, so its filter then drops nothing). A scenario left without
  any sample (e.g. a small Cloud Theme theme whose users were all single-theme) is removed and
  the scenario ids are re-numbered 1..P' in the same order (vocab updated): otherwise the model
  would carry scenarios it can never see. With no user left, a `DataError` names the
  scenarios the samples do have (a single-scenario file, typically).

  Returns (log, stats) where stats holds the counts under the builder's own "dropped" keys.
  """
  sample = (np.ones(log.label.shape[0], bool) if log.is_sample is None
            else np.asarray(log.is_sample, bool))
  scen = np.asarray(log.scenario)[:, 0]
  keep, counts = splits_lib.filter_users(log.user_id, scen, min_scenarios=min_scenarios,
                                         is_sample=sample)
  name = log.scenario_fields[0].name
  if not keep[sample].any():
    ids, n = np.unique(scen[sample], return_counts=True)
    raw = vocab[name][ids] if name in vocab else ids
    shown = ", ".join(f"{r} ({c} rows)" for r, c in zip(raw.tolist(), n.tolist()))
    raise DataError(
        f"{log.source}: no user is seen in >= {min_scenarios} scenarios, so the paper's filter "
        f"(users with behaviours in several scenarios, App. A.1) would drop every user. The "
        f"samples have {ids.shape[0]} scenario value(s) in field {name!r}: {shown}"
        + (". A single-scenario file cannot be used for multi-scenario training (the "
           "torch-rechub Ali-CCP samples, for one, have 301 = 1 on every row)"
           if ids.shape[0] == 1 else "")
        + "; lower --min_scenarios only if that is what you mean")
  # The builder's own keys (`builder._policy`), so that its statistics show these counts.
  policy = f"users_in_fewer_than_{min_scenarios}_scenarios"
  stats: dict[str, Any] = {"users_before_filter": counts["users_before"], "dropped": {
      f"{policy}_rows": counts["rows_dropped"], f"{policy}_users": counts["users_dropped"]}}
  fields = dict(user=log.user, item=log.item, scenario=log.scenario, label=log.label,
                user_id=log.user_id, time=log.time, sample_id=log.sample_id,
                is_sample=log.is_sample, true_like=log.true_like, true_prob=log.true_prob,
                true_exam=log.true_exam)
  if log.sample_id is None:
    fields["sample_id"] = np.arange(log.label.shape[0], dtype=np.int64)
  if not keep.all():
    fields = {k: (None if v is None else np.asarray(v)[keep]) for k, v in fields.items()}
  # Scenarios with samples left; other scenario ids (on behaviour-only events) become 0.
  scenario = np.array(fields["scenario"], np.int32)                 # (E', Fs) copy
  used = np.unique(scenario[sample[keep], 0])
  num = log.scenario_fields[0].vocab_size
  sf = tuple(log.scenario_fields)
  if used.shape[0] < num - 1:
    lost = np.setdiff1d(np.arange(1, num), used)
    has_vocab = name in vocab and vocab[name].shape[0] == num
    raw = vocab[name][lost] if has_vocab else lost
    stats["scenarios_without_samples_removed"] = int(lost.shape[0])
    stats["scenarios_removed_raw"] = ", ".join(str(r) for r in raw.tolist()[:50])
    new = np.zeros(num, np.int32)
    new[used] = np.arange(1, used.shape[0] + 1)
    scenario[:, 0] = new[scenario[:, 0]]
    if has_vocab:
      vocab[name] = vocab[name][np.concatenate([[0], used])]
    sf = (Field(name, max(used.shape[0] + 1, 2)),) + sf[1:]
  fields["scenario"] = scenario
  out = builder.EventLog(user_fields=tuple(log.user_fields), item_fields=tuple(log.item_fields),
                         scenario_fields=sf, source=log.source, **fields)
  return out, stats


def prepare(dataset: str, raw: str, out: str, opts: PrepareOptions | None = None, *,
            overwrite: bool = False) -> dict[str, Any]:
  """Loads `raw` as `dataset`, builds it into `out` and returns the statistics."""
  opts = opts or PrepareOptions()
  if dataset not in DATASETS:
    raise DataError(f"unknown dataset {dataset!r}; valid: {', '.join(DATASETS)}")
  mode = resolve_all_seq_mode(dataset, opts.all_seq_mode)
  if os.path.exists(os.path.join(out, "schema.json")):
    if not overwrite:
      raise DataError(f"{out}: already a built dataset; remove it or pass --overwrite")
    shutil.rmtree(out)
  start = time.perf_counter()
  log, vocab, load_stats = load(dataset, raw, opts)
  load_stats["load_seconds"] = round(time.perf_counter() - start, 2)
  log, filter_stats = keep_multi_scenario_users(log, vocab, opts.min_scenarios_per_user)
  # The loader's drop counts join the builder's "dropped" (printed); the rest is saved as source_*.
  extra: dict[str, Any] = {"dropped": {}}
  for k, v in load_stats.items():
    if "dropped_" in k:
      extra["dropped"][k.replace("dropped_", "")] = _flat(v)
    else:
      extra[k if k.startswith("source") else f"source_{k}"] = _flat(v)
  extra["dropped"].update(filter_stats.pop("dropped"))
  extra.update({f"source_{k}": v for k, v in filter_stats.items()})
  if dataset == "cloudtheme":
    extra["all_seq_mode_reason"] = "clicks only: negatives are sampled, never behaviours"
  result: dict[str, Any] = {}

  def build(tmp: str) -> None:
    result.update(builder.build_dataset(
        tmp, log, max_cur_len=opts.max_cur_len, max_all_len=opts.max_all_len, all_seq_mode=mode,
        test_fraction=opts.test_fraction, valid_fraction=opts.valid_fraction,
        min_scenarios_per_user=opts.min_scenarios_per_user, name=opts.name or dataset,
        extra_stats=extra, vocab=vocab))

  build_atomically(out, build)
  return result


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


def _define_flags() -> None:
  from absl import flags
  d = PrepareOptions()
  flags.DEFINE_enum("dataset", None, list(DATASETS), "Format of the raw files.", required=True)
  flags.DEFINE_string("raw", None, "Raw files: a directory (aliccp, cloudtheme, recbole, "
                      "aliccp_csv) or a file (aliccp_csv, a recbole .inter).", required=True)
  flags.DEFINE_string("out", None, "Output directory of the built dataset.", required=True)
  flags.DEFINE_bool("overwrite", False, "Replace an existing built dataset at --out.")
  flags.DEFINE_integer("max_cur_len", d.max_cur_len, "Ls: cap of the current-scenario sequence S_u.")
  flags.DEFINE_integer("max_all_len", d.max_all_len, "Lh: cap of the all-scenario sequence H_u.")
  flags.DEFINE_enum("all_seq_mode", None, list(ALL_SEQ_MODES),
                    "H_u holds all impressions or clicks only "
                    "(default: impressions; cloudtheme: clicks).")
  flags.DEFINE_float("test_fraction", d.test_fraction, "Most recent fraction of samples for test.")
  flags.DEFINE_float("valid_fraction", d.valid_fraction, "Fraction before the test part for validation.")
  flags.DEFINE_integer("min_scenarios", d.min_scenarios_per_user,
                       "Keep users seen in at least this many scenarios (paper: 2).")
  flags.DEFINE_string("name", None, "Dataset name saved in the schema (default: --dataset).")
  flags.DEFINE_integer("block_size_mb", d.block_size >> 20, "aliccp: MB per block read.")
  flags.DEFINE_integer("workers", d.workers, "aliccp: threads parsing blocks.")
  flags.DEFINE_enum("missing_common", d.missing_common, ["error", "drop"],
                    "aliccp: a skeleton row whose common_feature_index is unknown.")
  flags.DEFINE_integer("seed", d.seed, "cloudtheme: seed of the negative sampling.")
  flags.DEFINE_integer("negatives", d.negatives, "cloudtheme: negatives drawn per click.")
  flags.DEFINE_enum("negative_pool", d.negative_pool, ["clicked", "pool"],
                    "cloudtheme: draw negatives from the theme's pool items seen in the click log "
                    "(clicked) or from the whole pool.")
  flags.DEFINE_bool("purchases", d.purchases, "cloudtheme: add the purchase log as behaviours.")
  flags.DEFINE_enum("missing_pool", d.missing_pool, ["error", "drop"],
                    "cloudtheme: a click whose theme offers no negative.")
  flags.DEFINE_string("recbole_scenario", "", "recbole: the scenario column (e.g. category:token).")
  flags.DEFINE_string("recbole_user", d.recbole_user, "recbole: the user id column.")
  flags.DEFINE_string("recbole_item", d.recbole_item, "recbole: the item id column.")
  flags.DEFINE_string("recbole_label", d.recbole_label, "recbole: the label column.")
  flags.DEFINE_float("recbole_label_threshold", None, "recbole: label = value >= threshold.")
  flags.DEFINE_string("recbole_time", d.recbole_time, "recbole: the timestamp column ('' = file order).")


def main(argv) -> None:
  from absl import app, flags
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  f = flags.FLAGS
  opts = PrepareOptions(
      max_cur_len=f.max_cur_len, max_all_len=f.max_all_len, all_seq_mode=f.all_seq_mode,
      test_fraction=f.test_fraction, valid_fraction=f.valid_fraction,
      min_scenarios_per_user=f.min_scenarios, name=f.name, block_size=f.block_size_mb << 20,
      workers=f.workers, missing_common=f.missing_common, seed=f.seed, negatives=f.negatives,
      negative_pool=f.negative_pool, purchases=f.purchases, missing_pool=f.missing_pool,
      recbole_scenario=f.recbole_scenario, recbole_user=f.recbole_user,
      recbole_item=f.recbole_item, recbole_label=f.recbole_label,
      recbole_label_threshold=f.recbole_label_threshold, recbole_time=f.recbole_time)
  start = time.perf_counter()
  try:
    stats = prepare(f.dataset, f.raw, f.out, opts, overwrite=f.overwrite)
  except DataError as e:
    raise SystemExit(f"error: {e}") from None
  print(builder.format_stats(stats))
  print(format_source_stats(stats))
  print(f"built dataset: {f.out}  ({time.perf_counter() - start:.1f} s)")
  print(f"train on it:   python launch.py --config.data.name={f.dataset} --config.data.path={f.out}")


if __name__ == "__main__":
  from absl import app
  _define_flags()
  app.run(main)
