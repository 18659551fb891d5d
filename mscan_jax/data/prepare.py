"""Builds a dataset from raw files (your own log, or a public dataset): the library of the
`python prepare.py` command (the repository root's `prepare.py`, which reads the config).

`prepare(dataset, raw, out, data)` loads `raw` with the registry's loader of `dataset`
(`datasets.prepared_names()`) and the options of `data` (a `config.data`), builds it into `out`
and returns its statistics, with the loader's own counts (`source_*`: rows read, negatives
drawn, ...).

Paper App. A.1: keep the users seen in at least two scenarios, order the samples in time and put
the most recent 40% in the test set. Each loader turns its files into an `EventLog`;
`builder.build_dataset` applies the filter and the split and writes the built dataset (schema,
log, splits, vocab, statistics), the same as for a log built on the fly by `launch.py`. The
loader's own counts (rows read, rows dropped per reason, negatives drawn) are saved with them.
The output is written to a temporary folder and renamed into place, so a failed run never
leaves a half-built dataset. Before anything is written, the disk the built dataset needs
(`builder.disk_bytes_per_event` x events) is compared with the free space of the folder it goes
to: short of it, `prepare` stops with a `DataError` giving both figures.
"""

from __future__ import annotations

import errno
import os
import shutil
import tempfile
import time
from typing import Any

import ml_collections
import numpy as np

from mscan_jax.data import builder, datasets
from mscan_jax.data.log import build_atomically
from mscan_jax.data.schema import DataError
from mscan_jax.errors import ConfigError


def dataset_config(dataset: str, raw: str,
                   data: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """A copy of `data` (a `config.data`) for building `dataset` from `raw`: `name` and `path`
  set from them, validated (`datasets.validate_data`)."""
  if dataset not in datasets.prepared_names():
    raise ConfigError(f"--dataset={dataset!r} is unknown; valid: "
                      f"{', '.join(datasets.prepared_names())}")
  data = data.copy_and_resolve_references()
  data.name, data.path = dataset, raw
  datasets.validate_data(data)
  return data


def prepare(dataset: str, raw: str, out: str, data: ml_collections.ConfigDict, *,
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
  # A loader that spills writes its rows to a folder beside `out` (removed at the end).
  spill_dir = None
  if spec.spill_bytes:
    _check_free(out, spec.spill_bytes(raw), "the reader's spill of the raw rows")
    spill_dir = tempfile.mkdtemp(prefix=f".{os.path.basename(os.path.abspath(out))}.spill-",
                                 dir=_existing_parent(out))
  try:
    return _prepare(spec, raw, out, data, options, spill_dir)
  except OSError as e:
    if e.errno != errno.ENOSPC or not spill_dir:
      raise
    raise DataError(f"{out}: the disk of {_existing_parent(out)} filled up while the raw rows "
                    f"were written to {spill_dir} (the reader's spill, removed now); free some "
                    "space or choose another --out") from None
  finally:
    if spill_dir:
      shutil.rmtree(spill_dir, ignore_errors=True)


def _prepare(spec, raw, out, data, options, spill_dir) -> dict[str, Any]:
  start = time.perf_counter()
  log, vocab, load_stats = (spec.load(raw, data, spill_dir=spill_dir) if spill_dir
                            else spec.load(raw, data))
  load_stats["load_seconds"] = round(time.perf_counter() - start, 2)
  per_event = builder.disk_bytes_per_event(log, max_cur_len=options["max_cur_len"],
                                           max_all_len=options["max_all_len"])
  if spill_dir:       # the filter's and the time order's copies of the spilled columns
    per_event += 2 * builder.log_bytes_per_event(log)
  check_disk(out, per_event, int(np.asarray(log.label).shape[0]))
  extra = source_stats(load_stats)
  if spec.all_seq_mode_reason:
    extra["all_seq_mode_reason"] = spec.all_seq_mode_reason
  result: dict[str, Any] = {}
  # The build's argument is the only reference to the loaded log, so the builder's filtered
  # copy replaces it instead of adding to it (tens of bytes per event at Ali-CCP's 85M).
  logs = [log]
  del log

  def build(tmp: str) -> None:
    result.update(builder.build_dataset(tmp, logs.pop(), **options, name=datasets.label(data),
                                        extra_stats=extra, vocab=vocab))

  if os.path.isdir(out):
    os.rmdir(out)                                     # empty: the build renames into place
  build_atomically(out, build)
  return result


def check_disk(out: str, bytes_per_event: int, num_events: int) -> None:
  """A DataError, before anything is written, when the free disk where `out` will be written
  (its nearest existing folder) is less than `bytes_per_event * num_events`."""
  _check_free(out, bytes_per_event * num_events,
              f"the built dataset ({num_events:,} events x {bytes_per_event} bytes)")


def _check_free(out: str, needed: int, what: str) -> None:
  """A DataError when the folder `out` goes to has less free disk than `needed` bytes."""
  where = _existing_parent(out)
  free = shutil.disk_usage(where).free
  if needed > free:
    raise DataError(f"{out}: {what} needs about {needed / 1e9:.2f} GB of disk but {where} has "
                    f"{free / 1e9:.2f} GB free; free some space or choose another --out")


def _existing_parent(out: str) -> str:
  """The nearest existing folder above `out`."""
  where = os.path.dirname(os.path.abspath(out))
  while not os.path.isdir(where):
    where = os.path.dirname(where)
  return where


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
