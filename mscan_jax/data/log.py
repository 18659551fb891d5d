"""Generic log loader: a user's own multi-scenario log (CSV or Parquet) -> built dataset.

Paper §2.1: a multi-scenario log is a set of interactions y_uis (user u, item i, scenario s,
click y), kept in time order so that S_u and H_u hold only earlier behaviours (App. A.1: the
most recent 40% of samples are the test set). A log file has one row per impression; a
`LogColumns` names its columns:

    user, item, scenario   categorical ids, read exactly: integers (int64, or uint64 where
                           needed), text, booleans or timestamps, never floats (below)
    label                  click, 0 or 1 (integers or booleans; floats only if exactly 0.0/1.0)
    time                   number (int/float), timestamp or date; None = the file's row order
                           is the time order
    user_extra, item_extra, scenario_extra
                           further categorical columns (profile fields, item category, ...)
    true_like, true_prob   optional ground truth (synthetic or simulated logs only)
    true_exam              optional: the impression's examination probability (ground truth,
                           with true_like and true_prob)
    is_sample              optional 0/1: 0 = a behaviour-only row (history for S_u/H_u, never
                           in a split, e.g. a simulator's warm-up); None = every row is a sample

Field order of the built dataset: user fields = user id then `user_extra`; item fields =
item id then `item_extra` (item field 0 is the item id, which sequences are made of);
scenario fields = scenario id then `scenario_extra` (scenario field 0 is the scenario id
in 1..P). Each field is named after its column.

Re-indexing. Every categorical column is re-indexed by the sorted order of its distinct raw
values: the smallest raw value gets id 1, the largest id V (pyarrow's order: numbers
numerically, strings byte-wise); id 0 is padding and never stands for a raw value. Ids are
never floats, where distinct ids above 2**53 merge: CSV id cells are read as text, which
becomes int64 (uint64 where needed) when every value is a plain integer that fits, and stays
text otherwise (e.g. a 25-digit id, or `007`); in Parquet, a float id column is accepted only
when every value is an integer below 2**53, and a decimal one is read like text. The
mapping is saved with the built dataset as `vocab/<column>.npy`, whose entry k is the raw
value of id k (entry 0 is a placeholder: 0, False, NaT or "" by type), so predictions
can be mapped back to raw ids. The user key `user_id` (for GAUC) is the re-indexed user id
minus 1 (0-based, contiguous).

Bad input raises one `DataError` naming the file, the column and the row (row numbers
count data rows from 0; for CSV the file line is given too): a missing file or column, a
null id, a label outside {0, 1}, a missing timestamp, a column of the wrong type, a CSV line
that is not UTF-8, empty, or has another number of cells than the header. Nothing is filled
in or skipped silently: there is no "unknown" id for a missing value, and an empty line is an
error (so row k is always file line k + 2).
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import tempfile
from typing import Any, Callable, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from mscan_jax.data import builder
from mscan_jax.data.rawio import check_unique_columns
from mscan_jax.data.schema import DataError, Field

CSV_SUFFIXES = (".csv", ".csv.gz", ".csv.bz2", ".tsv", ".tsv.gz")
PARQUET_SUFFIXES = (".parquet", ".pq")


@dataclasses.dataclass(frozen=True)
class LogColumns:
  """Which column of the log file holds what (see the module docstring)."""
  user: str
  item: str
  scenario: str
  label: str
  time: str | None
  user_extra: tuple[str, ...] = ()
  item_extra: tuple[str, ...] = ()
  scenario_extra: tuple[str, ...] = ()
  true_like: str | None = None      # ground truth, only logs from a simulator have it
  true_prob: str | None = None
  true_exam: str | None = None      # optional: the impression's examination probability
  is_sample: str | None = None      # optional 0/1: 0 = behaviour-only row (never in a split)

  def __post_init__(self):
    for group in ("user_extra", "item_extra", "scenario_extra"):
      object.__setattr__(self, group, tuple(getattr(self, group)))
    names = self.all_columns()
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
      raise DataError(f"log columns: column(s) {dup} are mapped more than once; each field "
                      "needs its own column")

  def categorical(self) -> dict[str, tuple[str, ...]]:
    """Categorical columns per field group, id column first."""
    return {"user": (self.user,) + self.user_extra, "item": (self.item,) + self.item_extra,
            "scenario": (self.scenario,) + self.scenario_extra}

  def all_columns(self) -> list[str]:
    cols = [c for group in self.categorical().values() for c in group] + [self.label]
    cols += [c for c in (self.time, self.true_like, self.true_prob, self.true_exam,
                         self.is_sample) if c]
    return cols


def load_log(path: str, columns: LogColumns, *,
             source_name: str | None = None) -> tuple[builder.EventLog, dict[str, np.ndarray]]:
  """Reads a CSV or Parquet log (by extension) into an `EventLog` with contiguous ids.

  Returns (log, vocab) where vocab[column] (V+1,) holds the raw value of each id (entry 0
  is a placeholder for padding). Rows keep the file's order; `time` is passed on (the
  builder orders by it) and `sample_id` is the row number in the file, so predictions map
  back to the file's rows.
  """
  source = source_name or path
  table, is_csv = _read_table(path, columns, source)
  n = table.num_rows
  if n == 0:
    raise DataError(f"{source}: the log has no rows")
  where = _Where(source, is_csv)

  vocab: dict[str, np.ndarray] = {}
  groups: dict[str, tuple[np.ndarray, tuple[Field, ...]]] = {}
  for group, names in columns.categorical().items():
    ids, fields = [], []
    for name in names:
      col_ids, raw = _reindex(table.column(name), name, where)
      ids.append(col_ids)
      fields.append(Field(name, int(raw.shape[0])))
      vocab[name] = raw
    groups[group] = (np.stack(ids, axis=1), tuple(fields))        # (E, F)

  user, user_fields = groups["user"]
  item, item_fields = groups["item"]
  scenario, scenario_fields = groups["scenario"]
  label = _label(table.column(columns.label), columns.label, where, "label")
  time = _time(table.column(columns.time), columns.time, where) if columns.time else None
  true_like = true_prob = None
  if columns.true_like:
    true_like = _label(table.column(columns.true_like), columns.true_like, where, "true_like")
  if columns.true_prob:
    true_prob = _probability(table.column(columns.true_prob), columns.true_prob, where)
  true_exam = is_sample = None
  if columns.true_exam:
    true_exam = _probability(table.column(columns.true_exam), columns.true_exam, where)
  if columns.is_sample:
    is_sample = _label(table.column(columns.is_sample), columns.is_sample, where,
                       "is_sample").astype(bool)

  log = builder.EventLog(
      user=user, item=item, scenario=scenario, label=label,
      user_id=(user[:, 0] - 1).astype(np.int32),
      user_fields=user_fields, item_fields=item_fields, scenario_fields=scenario_fields,
      time=time, sample_id=np.arange(n, dtype=np.int64), is_sample=is_sample,
      true_like=true_like, true_prob=true_prob, true_exam=true_exam, source=source)
  return log, vocab


def build_from_log(path: str, out_dir: str, columns: LogColumns, *, max_cur_len: int,
                   max_all_len: int, all_seq_mode: str = "impressions",
                   test_fraction: float = 0.4, valid_fraction: float = 0.1,
                   min_scenarios_per_user: int = 2, duplicates: str = "drop",
                   name: str, extra_stats: dict | None = None,
                   source_name: str | None = None) -> dict:
  """Loads a log file and writes it as a built dataset named `name` into `out_dir` (with its
  vocab); the registry names a log `datasets.log_label(path, columns)`, the name results.json
  and run folders give it.
  """
  log, vocab = load_log(path, columns, source_name=source_name)
  return builder.build_dataset(
      out_dir, log, max_cur_len=max_cur_len, max_all_len=max_all_len,
      all_seq_mode=all_seq_mode, test_fraction=test_fraction, valid_fraction=valid_fraction,
      min_scenarios_per_user=min_scenarios_per_user, duplicates=duplicates,
      name=name, extra_stats=extra_stats, vocab=vocab)


def build_atomically(path: str, build: Callable[[str], Any]) -> bool:
  """Runs `build(tmp_dir)` and renames tmp_dir to `path`, unless `path` is already built.

  A crashed or concurrent build never leaves a half-written dataset under `path`. Returns
  True when this call built it.
  """
  if os.path.exists(os.path.join(path, "schema.json")):
    return False
  parent = os.path.dirname(os.path.abspath(path))
  os.makedirs(parent, exist_ok=True)
  tmp = tempfile.mkdtemp(prefix=f".tmp-{os.path.basename(path)}-", dir=parent)
  try:
    build(tmp)
    try:
      os.rename(tmp, path)
    except OSError:                    # built meanwhile by another process: keep theirs
      if not os.path.exists(os.path.join(path, "schema.json")):
        raise
      return False
  finally:
    if os.path.exists(tmp):
      shutil.rmtree(tmp, ignore_errors=True)
  return True


# ---------------------------------------------------------------------------------------
# Reading


def _read_table(path: str, columns: LogColumns, source: str) -> tuple[pa.Table, bool]:
  lower = path.lower()
  is_csv = lower.endswith(CSV_SUFFIXES)
  if os.path.isdir(path):
    raise DataError(f"{source}: is a directory; a log is one file ("
                    f"{', '.join(CSV_SUFFIXES + PARQUET_SUFFIXES)})")
  if not is_csv and not lower.endswith(PARQUET_SUFFIXES):
    raise DataError(f"{source}: unknown log format; expected one of "
                    f"{', '.join(CSV_SUFFIXES + PARQUET_SUFFIXES)}")
  if not os.path.isfile(path):
    raise DataError(f"{source}: no such file")
  wanted = columns.all_columns()
  try:
    if is_csv:
      # Empty lines are rows too (an error, not skipped): row k stays file line k + 2.
      parse = pacsv.ParseOptions(delimiter="\t" if ".tsv" in lower else ",",
                                 ignore_empty_lines=False)
      with pacsv.open_csv(path, parse_options=parse) as reader:   # header only
        available = reader.schema.names
      _check_columns(available, wanted, columns, source)
      # Empty cells are nulls in every column (so that a missing id is an error, not "").
      # Id columns are read as text, so that no id is ever read as a float (`_exact_ids`).
      ids = {c: pa.string() for group in columns.categorical().values() for c in group}
      convert = pacsv.ConvertOptions(include_columns=wanted, strings_can_be_null=True,
                                     column_types=ids)
      table = pacsv.read_csv(path, parse_options=parse, convert_options=convert)
      if any(pa.types.is_binary(table.column(c).type) for c in wanted):
        _check_utf8(path, source)        # pyarrow reads a non-UTF-8 cell as binary
      empty = None                       # an empty line reads as a row of nulls
      for c in wanted:
        null = pc.is_null(table.column(c))
        empty = null if empty is None else pc.and_(empty, null)
      if empty is not None and pc.any(empty).as_py():
        raise DataError(f"{source}: line {_first(empty) + 2}: empty line, or a row of empty "
                        "cells (every line holds one row); remove it")
    else:
      available = pq.read_schema(path).names
      _check_columns(available, wanted, columns, source)
      table = pq.read_table(path, columns=wanted)
  except DataError:
    raise
  except (pa.ArrowException, OSError, UnicodeDecodeError) as e:   # unparseable, a bad cell
    if is_csv and (isinstance(e, UnicodeDecodeError) or "utf8" in str(e).lower().replace("-", "")):
      _check_utf8(path, source)
    if is_csv and "CSV parse error" in str(e):
      _check_shape(path, source, parse.delimiter)
    raise DataError(f"{source}: cannot read the log: {e}") from e
  return table, is_csv


def _check_utf8(path: str, source: str) -> None:
  """A DataError naming the first line of a CSV log that is not UTF-8 (error path: one pass
  over the file); nothing if every line is."""
  import bz2
  import gzip
  lower = path.lower()
  opener = gzip.open if lower.endswith(".gz") else bz2.open if lower.endswith(".bz2") else open
  with opener(path, "rb") as f:
    for number, line in enumerate(f, start=1):
      try:
        line.decode("utf-8")
      except UnicodeDecodeError as e:
        raise DataError(
            f"{source}: line {number}: not UTF-8 (byte 0x{line[e.start]:02x} at byte "
            f"{e.start + 1} of the line: {_show_bytes(line)}); a CSV log must be UTF-8 text: "
            "convert it first, e.g. `iconv -f latin1 -t utf-8 in.csv > out.csv`") from None


def _check_shape(path: str, source: str, delimiter: str) -> None:
  """A DataError naming the first line of a CSV log whose record has another number of cells
  than the header, or is empty (error path: one pass with Python's csv module, which quotes as
  pyarrow does; pyarrow's own row numbers count from its block)."""
  import bz2
  import csv
  import gzip
  import io
  lower = path.lower()
  opener = gzip.open if lower.endswith(".gz") else bz2.open if lower.endswith(".bz2") else open
  with opener(path, "rb") as raw:
    text = io.TextIOWrapper(raw, encoding="utf-8", errors="replace", newline="")
    reader = csv.reader(text, delimiter=delimiter)
    start = 1
    header = None
    for record in reader:
      line = start                                # the record's first line
      start = reader.line_num + 1
      if header is None:
        header = record
        continue
      if not record:
        raise DataError(f"{source}: line {line}: empty line (every line holds one row of "
                        f"{len(header)} cells); remove it")
      if len(record) != len(header):
        raise DataError(f"{source}: line {line}: {len(record)} cells where the header has "
                        f"{len(header)}: {_show_bytes(delimiter.join(record).encode())}")


def _show_bytes(line: bytes, limit: int = 80) -> str:
  s = repr(line.rstrip(b"\r\n"))
  return s if len(s) <= limit else s[:limit] + "...'"


def _check_columns(available: Sequence[str], wanted: Sequence[str], columns: LogColumns,
                   source: str) -> None:
  check_unique_columns(available, source, wanted)   # a reader would take one of two silently
  role = {}
  for f in dataclasses.fields(columns):
    value = getattr(columns, f.name)
    for c in (value if isinstance(value, tuple) else (value,)):
      if c:
        role.setdefault(c, f.name)
  for c in wanted:
    if c not in available:
      raise DataError(f"{source}: column {c!r} (the {role[c]} column) not found; the file "
                      f"has columns {list(available)}")


@dataclasses.dataclass(frozen=True)
class _Where:
  source: str
  is_csv: bool

  def __call__(self, column: str, row: int) -> str:
    line = f" (line {row + 2})" if self.is_csv else ""
    return f"{self.source}: column {column!r} row {row}{line}"


def _first(mask: pa.ChunkedArray | np.ndarray) -> int:
  """Index of the first true entry of a boolean mask."""
  mask = mask.to_numpy(zero_copy_only=False) if isinstance(mask, (pa.ChunkedArray, pa.Array)) else mask
  return int(np.flatnonzero(np.asarray(mask, bool))[0])


def _check_no_nulls(col: pa.ChunkedArray, name: str, where: _Where, what: str) -> None:
  nulls = pc.is_null(col, nan_is_null=True)
  count = pc.sum(nulls).as_py() or 0
  if count:
    raise DataError(f"{where(name, _first(nulls))}: missing {what} ({count} such rows); "
                    "fill or drop these rows first")


_PLACEHOLDER = {"b": False, "i": 0, "u": 0, "f": np.nan, "M": np.datetime64("NaT"),
                "m": np.timedelta64("NaT"), "U": "", "S": b""}


_INTEGER = r"^(0|-?[1-9][0-9]*)$"
_FLOAT_EXACT = 2 ** 53        # every integer up to this is a float64 of its own


def _exact_ids(col: pa.ChunkedArray, name: str, where: _Where) -> pa.ChunkedArray:
  """An id column as exact values: text of integers (as CSV cells are read) becomes int64, or
  uint64 where int64 is too small, and stays text where no integer type holds it (or where a
  value is no plain integer, e.g. `007`); decimals without fraction likewise; floats become
  int64 only if every value is an integer below 2**53 in magnitude, and are refused otherwise
  (distinct ids above that merge into one float)."""
  t = col.type
  if pa.types.is_decimal(t) and t.scale == 0:
    col, t = col.cast(pa.string()), pa.string()
  if pa.types.is_floating(t):
    v = col.to_numpy(zero_copy_only=False).astype(np.float64)
    finite = v[np.isfinite(v)]
    if finite.size and (np.any(np.abs(finite) > _FLOAT_EXACT) or np.any(finite != np.round(finite))):
      raise DataError(f"{where.source}: column {name!r} holds floats ({t}); ids must be exact "
                      "integers or text, and floats are exact integers only up to 2**53 (larger "
                      "ids may already have merged). Write the ids as integers or strings")
    return col.cast(pa.int64(), safe=False) if finite.size == v.size else col
  if not (pa.types.is_string(t) or pa.types.is_large_string(t)):
    return col
  present = pc.drop_null(col)
  if present.length() == 0 or not pc.all(pc.match_substring_regex(present, _INTEGER)).as_py():
    return col
  digits = pc.max(pc.utf8_length(present)).as_py()
  if digits <= 18:                                  # fits int64 whatever the digits
    return col.cast(pa.int64())
  for typ in (pa.int64(), pa.uint64()):
    try:
      return col.cast(typ)
    except (pa.ArrowInvalid, OverflowError):
      continue
  return col                                        # more digits than any integer type


def _reindex(col: pa.ChunkedArray, name: str, where: _Where) -> tuple[np.ndarray, np.ndarray]:
  """Contiguous ids 1..V by sorted raw value. Returns ids (E,) int32 and raw (V+1,)."""
  if pa.types.is_dictionary(col.type):
    col = col.cast(col.type.value_type)
  col = _exact_ids(col, name, where)
  t = col.type
  if not (pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_boolean(t)
          or pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_temporal(t)):
    raise DataError(f"{where.source}: column {name!r} has type {t}; a categorical column must "
                    "hold integers, strings, booleans or timestamps")
  _check_no_nulls(col, name, where, "value")
  uniq = pc.unique(col)
  uniq = uniq.take(pc.array_sort_indices(uniq))                  # (V,) sorted raw values
  ids = pc.index_in(col, value_set=uniq).to_numpy(zero_copy_only=False)
  ids = (ids + 1).astype(np.int32)                               # 1..V; 0 = padding
  raw = uniq.to_numpy(zero_copy_only=False)
  if raw.dtype == object:                                        # strings
    raw = raw.astype(str)
  raw = np.concatenate([np.array([_PLACEHOLDER.get(raw.dtype.kind, 0)], raw.dtype), raw])
  return ids, raw


def _label(col: pa.ChunkedArray, name: str, where: _Where, what: str) -> np.ndarray:
  """A 0/1 column -> (E,) int8. Integers or booleans; floats only if exactly 0.0 or 1.0."""
  t = col.type
  if pa.types.is_string(t) or pa.types.is_large_string(t):
    values = col.to_numpy(zero_copy_only=False)
    bad = ~np.isin(values, ["0", "1"])
    row = _first(bad) if bad.any() else 0
    raise DataError(f"{where(name, row)}: the {what} column holds text (value "
                    f"{values[row]!r}); it must hold the integers 0 and 1")
  if not (pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_boolean(t)):
    raise DataError(f"{where.source}: column {name!r} has type {t}; the {what} column must "
                    "hold the integers 0 and 1")
  _check_no_nulls(col, name, where, what)
  values = col.to_numpy(zero_copy_only=False)
  bad = (values != 0) & (values != 1)
  if bad.any():
    row = _first(bad)
    raise DataError(f"{where(name, row)}: {what} {values[row].item()!r} is not 0 or 1 "
                    f"({int(bad.sum())} such rows)")
  return values.astype(np.int8)


def _probability(col: pa.ChunkedArray, name: str, where: _Where) -> np.ndarray:
  t = col.type
  if not (pa.types.is_floating(t) or pa.types.is_integer(t)):
    raise DataError(f"{where.source}: column {name!r} has type {t}; a probability column must "
                    "hold numbers in [0, 1]")
  _check_no_nulls(col, name, where, "probability")
  values = col.to_numpy(zero_copy_only=False).astype(np.float32)
  bad = (values < 0) | (values > 1)
  if bad.any():
    row = _first(bad)
    raise DataError(f"{where(name, row)}: probability {values[row].item()} outside [0, 1]")
  return values


_NUMBER = r"^\s*[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?\s*$"


def _first_bad_time(col: pa.ChunkedArray) -> int:
  """The first row of a time column read as text that breaks the type most of its rows have.

  Per candidate type (numbers; timestamps; dates) the longest prefix that parses as that type
  is found (numbers by a regex, the others by bisection on casts); the column's type is the one
  with the longest prefix, and the row right after that prefix is the bad one. A date column
  with one bad value at row 5 names row 5 (the number test alone would name row 0).
  """
  n = len(col)
  is_number = pc.match_substring_regex(col, _NUMBER)
  prefixes = [_first(pc.invert(is_number)) if not pc.all(is_number).as_py() else n]
  for typ in (pa.timestamp("ns"), pa.date32()):
    lo, hi = 0, n                              # col[:lo] parses; col[:hi+1] does not, if hi < n
    while lo < hi:
      mid = (lo + hi + 1) // 2
      try:
        pc.cast(col.slice(0, mid), typ)
        lo = mid
      except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        hi = mid - 1
    prefixes.append(lo)
  best = max(prefixes)
  return best if best < n else 0               # every row parses as one type: mixed types


def _time(col: pa.ChunkedArray, name: str, where: _Where) -> np.ndarray:
  """Timestamps -> (E,) int64 (integers, timestamps, dates) or float64 (floats)."""
  t = col.type
  if pa.types.is_string(t) or pa.types.is_large_string(t):
    # pyarrow reads a column of numbers or ISO timestamps as such: text means a bad cell.
    _check_no_nulls(col, name, where, "timestamp")
    row = _first_bad_time(col)
    value = col[row].as_py()
    raise DataError(f"{where(name, row)}: timestamp {value!r} is not a number, a date or a "
                    "timestamp (all values of the time column must be of one such type)")
  if not (pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_timestamp(t)
          or pa.types.is_date(t)):
    raise DataError(f"{where.source}: column {name!r} has type {t}; the time column must hold "
                    "numbers, dates or timestamps")
  _check_no_nulls(col, name, where, "timestamp")
  if pa.types.is_floating(t):
    return col.to_numpy(zero_copy_only=False).astype(np.float64)
  if pa.types.is_timestamp(t) or pa.types.is_date(t):
    col = col.cast(pa.int64() if not pa.types.is_date32(t) else pa.int32())
  return col.to_numpy(zero_copy_only=False).astype(np.int64)
