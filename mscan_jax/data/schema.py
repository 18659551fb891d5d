"""The data contract of mscan-jax: schema of a multi-scenario dataset and the batch layout.

Paper §2.1: a sample is a triplet (u, i, s) with a click label y_uis; the model also sees
S_u, the user's earlier clicked behaviours in the current scenario, and H_u, the user's
earlier behaviours across all scenarios, each with its scenario id.

Every model (M-scan, its ablations, every baseline) consumes one batch layout:

    user          (B, Fu)      int32  categorical user fields, 0 = padding/unknown
    item          (B, Fi)      int32  categorical item fields of the candidate item
    scenario      (B, Fs)      int32  scenario fields; column 0 is the scenario id in 1..P
    label         (B,)         float32 observed click (0/1)
    cur_seq       (B, Ls, Fi)  int32  earlier clicked items in the same scenario (S_u), oldest first
    cur_len       (B,)         int32  number of real steps in cur_seq (the rest is 0-padding)
    all_seq       (B, Lh, Fi)  int32  earlier behaviours across all scenarios (H_u), oldest first
    all_len       (B,)         int32
    all_click     (B, Lh)      int32  click flag of each all_seq behaviour (0 on padding)
    all_scenario  (B, Lh)      int32  scenario id of each all_seq behaviour (0 on padding)
    sample_id     (B,)         int64  stable id of the sample (to export predictions)
    user_id       (B,)         int32  contiguous user index (for GAUC)
    mask          (B,)         float32 1 for a real sample, 0 for evaluation padding
  and, on data that knows it (the synthetic benchmark):
    true_like     (B,)         float32 the liked outcome (M), which real logs never have
    true_prob     (B,)         float32 its probability
    true_exam     (B,)         float32 the examination probability of the impression (S -> Y),
                                       where the dataset stores it (`Schema.has_exam`)

A *built dataset* is a directory:

    schema.json            this module's `Schema`
    stats.json             statistics printed when it was built
    log/<array>.npy        one row per event, in time order (the row number *is* the time order)
        user (E,Fu) item (E,Fi) scenario (E,Fs) label (E,) int8 user_id (E,) int32
        sample_id (E,) int64, cur_idx (E,Ls) and all_idx (E,Lh) of `Schema.index_dtype`
        [true_like (E,) int8, true_prob (E,) float32 [, true_exam (E,) float32]]
    splits/{train,valid,test}.npy   int64 row numbers of `log` belonging to each split
    vocab/<field>.npy      (optional) raw value of each contiguous id, index 0 = padding

`cur_idx` / `all_idx` hold, for every event, row numbers of earlier events of the same
user (-1 = padding), int32 where the row count allows (below 2**31 rows), int64 past that
and in datasets built before the choice existed (`Schema.index_dtype` says which). Sequences are materialised only when a batch is gathered
(`BuiltDataset.gather`), so a dataset of 100M samples is a few memory-mapped arrays, not
100M copies of 40 behaviours.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any, Mapping, Sequence

import numpy as np

from mscan_jax.data import spill

SPLITS = ("train", "valid", "test")
ALL_SEQ_MODES = ("impressions", "clicks")
INDEX_DTYPES = ("int32", "int64")
# Schema keys that say how a dataset is named and stored, not what a model sees
# (`Schema.model_differences`): datasets that differ only in them train in one population.
STORAGE_ONLY_KEYS = ("name", "index_dtype")

# Batch keys every model may read; `true_*` only exist where the data knows the truth.
BATCH_KEYS = ("user", "item", "scenario", "label", "cur_seq", "cur_len", "all_seq",
              "all_len", "all_click", "all_scenario", "sample_id", "user_id", "mask")
TRUTH_KEYS = ("true_like", "true_prob", "true_exam")


class DataError(ValueError):
  """Bad input data: the message names the file, column/field and row."""


@dataclasses.dataclass(frozen=True)
class Field:
  """A categorical field. Valid ids are 1..vocab_size-1; 0 is padding/unknown."""
  name: str
  vocab_size: int

  def __post_init__(self):
    if self.vocab_size < 2:
      raise DataError(f"field {self.name!r}: vocab_size must be >= 2 (0 is padding), "
                      f"got {self.vocab_size}")


@dataclasses.dataclass(frozen=True)
class Schema:
  """Typed schema of a multi-scenario dataset (paper §2.1)."""
  user_fields: tuple[Field, ...]
  item_fields: tuple[Field, ...]
  scenario_fields: tuple[Field, ...]   # [0] is the scenario id, vocab = P + 1
  max_cur_len: int                     # Ls: cap of S_u (most recent kept)
  max_all_len: int                     # Lh: cap of H_u (most recent kept)
  all_seq_mode: str = "impressions"    # H_u holds all impressions (with click flags) or clicks only
  has_truth: bool = False              # true_like / true_prob stored (synthetic data)
  has_exam: bool = False               # true_exam stored too (absent from older built datasets)
  name: str = "dataset"
  index_dtype: str = "int64"           # of cur_idx / all_idx: "int32" below 2**31 rows (older
                                       # datasets, without the key, are int64)

  def __post_init__(self):
    if self.index_dtype not in INDEX_DTYPES:
      raise DataError(f"schema.index_dtype must be one of {INDEX_DTYPES}, got {self.index_dtype!r}")
    for group in ("user_fields", "item_fields", "scenario_fields"):
      if not getattr(self, group):
        raise DataError(f"schema.{group} must name at least one field")
    if self.max_cur_len < 1 or self.max_all_len < 1:
      raise DataError(f"sequence caps must be >= 1, got max_cur_len={self.max_cur_len}, "
                      f"max_all_len={self.max_all_len}")
    if self.all_seq_mode not in ALL_SEQ_MODES:
      raise DataError(f"all_seq_mode must be one of {ALL_SEQ_MODES}, got {self.all_seq_mode!r}")
    if self.has_exam and not self.has_truth:
      raise DataError("schema.has_exam needs has_truth (true_exam is stored with true_like and "
                      "true_prob)")

  @property
  def num_scenarios(self) -> int:
    """P: scenario ids are 1..P."""
    return self.scenario_fields[0].vocab_size - 1

  def to_dict(self) -> dict[str, Any]:
    return dataclasses.asdict(self)

  def model_differences(self, other: "Schema") -> list[str]:
    """The keys in which `other` differs from this schema in what a model sees: all but
    `STORAGE_ONLY_KEYS` (a dataset's name and how its history indices are stored, which never
    reach a batch: `BuiltDataset.gather` returns the gathered ids)."""
    mine, theirs = self.to_dict(), other.to_dict()
    return sorted(k for k in mine if k not in STORAGE_ONLY_KEYS and mine[k] != theirs[k])

  @classmethod
  def from_dict(cls, d: Mapping[str, Any]) -> "Schema":
    d = dict(d)
    for group in ("user_fields", "item_fields", "scenario_fields"):
      d[group] = tuple(Field(**f) for f in d[group])
    return cls(**d)


def check_name(name: str, what: str) -> str:
  """`name` if it can name a file inside a folder (a vocab file, a run folder); a DataError
  naming it otherwise. Names come from data files (column names, a stored dataset name), so
  one holding a path separator, `..` or a control character never becomes a path."""
  bad = (not isinstance(name, str) or not name.strip() or ".." in name
         or any(sep in name for sep in ("/", "\\", os.sep, os.altsep or "/"))
         or any(ord(c) < 32 or ord(c) == 127 for c in name))
  if bad:
    raise DataError(f"{what} {name!r} cannot name a file: it is empty or holds a path separator, "
                    "'..' or a control character; rename it")
  return name


def save_json(path: str, obj: Any) -> None:
  with open(path, "w") as f:
    json.dump(obj, f, indent=2, sort_keys=False, default=_json_default)
    f.write("\n")


def _json_default(o):
  if isinstance(o, np.integer):
    return int(o)
  if isinstance(o, np.floating):
    return float(o)
  if isinstance(o, np.ndarray):
    return o.tolist()
  raise TypeError(f"not JSON serialisable: {type(o)}")


# Expected dtype and trailing shape of each stored log array.
def log_layout(schema: Schema) -> dict[str, tuple[Any, tuple[int, ...]]]:
  fu, fi, fs = len(schema.user_fields), len(schema.item_fields), len(schema.scenario_fields)
  layout = {
      "user": (np.int32, (fu,)), "item": (np.int32, (fi,)), "scenario": (np.int32, (fs,)),
      "label": (np.int8, ()), "user_id": (np.int32, ()), "sample_id": (np.int64, ()),
      "cur_idx": (np.dtype(schema.index_dtype), (schema.max_cur_len,)),
      "all_idx": (np.dtype(schema.index_dtype), (schema.max_all_len,)),
  }
  if schema.has_truth:
    layout["true_like"] = (np.int8, ())
    layout["true_prob"] = (np.float32, ())
  if schema.has_exam:
    layout["true_exam"] = (np.float32, ())
  return layout


def check_splits(splits: Mapping[str, np.ndarray]) -> None:
  """A DataError naming the first empty (or missing) split."""
  for name in SPLITS:
    if name not in splits or len(splits[name]) == 0:
      raise DataError(f"split {name!r} is empty: nothing to {'train on' if name == 'train' else 'evaluate'}")


def write_built(out_dir: str, schema: Schema, log: Mapping[str, np.ndarray],
                splits: Mapping[str, np.ndarray], stats: Mapping[str, Any],
                vocab: Mapping[str, np.ndarray] | None = None, written: Sequence[str] = ()) -> None:
  """Writes a built dataset (layout in the module docstring), checking every array.

  `written` names the log arrays the caller has already written as `out_dir/log/<key>.npy` (the
  sequence indices, written block by block): they are checked (shape and dtype, memory-mapped),
  not in `log`."""
  for field in vocab or {}:
    check_name(field, "field name (of a vocab file)")
  layout = log_layout(schema)
  n = None
  for key, (dtype, tail) in layout.items():
    if key in written:
      arr = np.load(os.path.join(out_dir, "log", f"{key}.npy"), mmap_mode="r")
      if arr.dtype != dtype:
        raise DataError(f"built log array {key!r}: expected dtype {np.dtype(dtype)}, got {arr.dtype}")
    elif key not in log:
      raise DataError(f"built log is missing array {key!r}")
    else:
      arr = np.asarray(log[key])
    if n is None:
      n = arr.shape[0]
    if arr.shape != (n,) + tail:
      raise DataError(f"built log array {key!r}: expected shape {(n,) + tail}, got {arr.shape}")
  check_splits(splits)
  os.makedirs(os.path.join(out_dir, "log"), exist_ok=True)
  os.makedirs(os.path.join(out_dir, "splits"), exist_ok=True)
  for key, (dtype, _) in layout.items():
    if key in written:
      continue
    spill.save(os.path.join(out_dir, "log", f"{key}.npy"), log[key], dtype)   # mapped: by blocks
  for name in SPLITS:
    np.save(os.path.join(out_dir, "splits", f"{name}.npy"), np.asarray(splits[name], np.int64))
  if vocab:
    os.makedirs(os.path.join(out_dir, "vocab"), exist_ok=True)
    for field, values in vocab.items():
      np.save(os.path.join(out_dir, "vocab", f"{field}.npy"), np.asarray(values))
  save_json(os.path.join(out_dir, "schema.json"), schema.to_dict())
  save_json(os.path.join(out_dir, "stats.json"), dict(stats))


# Resident pages of the memory-mapped dataset (with the process's other file-backed pages)
# above which `BuiltDataset.gather` releases them (`release_pages`). Random gathers map pages
# all over the log, and the kernel maps up to 16 neighbouring pages of each read
# (fault-around): at Ali-CCP's 85M events one training batch of 1,024 rows and their 60 history
# rows maps 1.4 GiB, and every further batch 0.2 GiB more, so without a bound the resident set
# grows with the log (7.1 GiB after 20 steps, `benchmarks/scale.py`; `benchmarks/gather_pages.py`).
# A release costs about 0.1 s there and the next gather's page faults about 0.15 s more, so it is
# done only past the budget, never on a dataset smaller than it.
PAGE_BUDGET_BYTES = 2 << 30


class BuiltDataset:
  """A built dataset opened with memory-mapped arrays; `gather` makes contract batches.

  `page_budget`: the bytes of resident file pages above which `gather` releases the dataset's
  mapped pages (`PAGE_BUDGET_BYTES`; None never releases)."""

  def __init__(self, path: str, page_budget: int | None = PAGE_BUDGET_BYTES):
    schema_path = os.path.join(path, "schema.json")
    if not os.path.exists(schema_path):
      raise DataError(f"{path}: not a built dataset (no schema.json). Build one with "
                      "`python -m mscan_jax.data.synthetic --out=DIR` or "
                      "`python prepare.py ... --out=DIR`")
    self.path = path
    with open(schema_path) as f:
      self.schema = Schema.from_dict(json.load(f))
    stats_path = os.path.join(path, "stats.json")
    self.stats = json.load(open(stats_path)) if os.path.exists(stats_path) else {}
    self.log: dict[str, np.ndarray] = {}
    for key, (dtype, tail) in log_layout(self.schema).items():
      f = os.path.join(path, "log", f"{key}.npy")
      if not os.path.exists(f):
        raise DataError(f"{f}: missing array of the built dataset")
      arr = np.load(f, mmap_mode="r")
      if arr.dtype != dtype or arr.shape[1:] != tail:
        raise DataError(f"{f}: expected dtype {np.dtype(dtype)} and trailing shape {tail}, "
                        f"got {arr.dtype} {arr.shape}")
      self.log[key] = arr
    self.splits = {name: np.load(os.path.join(path, "splits", f"{name}.npy"), mmap_mode="r")
                   for name in SPLITS}
    self.num_events = self.log["label"].shape[0]
    mapped = sum(a.nbytes for a in (*self.log.values(), *self.splits.values()))
    # A dataset that fits in the budget is never released (no system call per batch).
    self.page_budget = None if page_budget is None or mapped <= page_budget else page_budget

  def release_pages(self) -> None:
    """Drops the pages of the memory-mapped arrays from this process's resident set.

    A pass over many rows (an evaluation of Ali-CCP's 43M test samples) maps in the pages it
    read: clean file pages that the kernel may reclaim at any time, yet they count in the
    resident set (several GB at full size). `madvise(MADV_DONTNEED)` unmaps them; the page
    cache keeps them, so a later read costs a page fault, not a disk read.
    """
    spill.release(*self.log.values(), *self.splits.values())

  def bound_pages(self) -> None:
    """`release_pages` when the resident file pages pass `page_budget` (after each gather, from
    any thread: a page released while another gather reads it is mapped again)."""
    if self.page_budget is not None:
      resident = spill.resident_file_bytes()
      if resident is not None and resident > self.page_budget:
        self.release_pages()

  def split_size(self, split: str) -> int:
    return int(self.splits[split].shape[0])

  def gather(self, rows: np.ndarray) -> dict[str, np.ndarray]:
    """Materialises the batch layout for log rows `rows` (B,) (sorted or not).

    One `np.take` per stored array and per sequence table, on the memory-mapped arrays: no
    sort, no Python loop over fields or rows (about 4x the rate of a fancy index per array
    with a sort per table, `benchmarks/pipeline.py`). `np.take` releases the GIL, so gathers
    on background threads (`pipeline.train_batches`) run in parallel.
    """
    rows = np.asarray(rows, np.int64)
    lg = self.log
    item = lg["item"]
    batch = {
        "user": _take(lg["user"], rows),                                 # (B, Fu)
        "item": _take(item, rows),                                       # (B, Fi)
        "scenario": _take(lg["scenario"], rows),                         # (B, Fs)
        "label": _take(lg["label"], rows).astype(np.float32),            # (B,)
        "sample_id": _take(lg["sample_id"], rows),
        "user_id": _take(lg["user_id"], rows),
        "mask": np.ones(rows.shape, np.float32),
    }
    cur_idx = _take(lg["cur_idx"], rows)                                 # (B, Ls), -1 = padding
    all_idx = _take(lg["all_idx"], rows)                                 # (B, Lh)
    cur_valid, all_valid = cur_idx >= 0, all_idx >= 0
    cur_idx, all_idx = np.maximum(cur_idx, 0), np.maximum(all_idx, 0)  # padding reads row 0 ...
    batch["cur_seq"] = _take_masked(item, cur_idx, cur_valid)            # (B, Ls, Fi)
    batch["cur_len"] = cur_valid.sum(1, dtype=np.int32)
    batch["all_seq"] = _take_masked(item, all_idx, all_valid)            # (B, Lh, Fi)
    batch["all_len"] = all_valid.sum(1, dtype=np.int32)
    batch["all_click"] = _take_masked(lg["label"], all_idx, all_valid).astype(np.int32)  # (B, Lh)
    batch["all_scenario"] = _take_masked(lg["scenario"][:, 0], all_idx, all_valid)      # (B, Lh)
    if self.schema.has_truth:
      batch["true_like"] = _take(lg["true_like"], rows).astype(np.float32)
      batch["true_prob"] = _take(lg["true_prob"], rows)
    if self.schema.has_exam:
      batch["true_exam"] = _take(lg["true_exam"], rows)
    self.bound_pages()
    return batch


def _take(table: np.ndarray, idx: np.ndarray) -> np.ndarray:
  """table[idx] along axis 0 as a plain in-memory array. idx (...) -> (..., *table.shape[1:])."""
  return np.asarray(np.take(table, idx, axis=0))


def _take_masked(table: np.ndarray, idx: np.ndarray, valid: np.ndarray) -> np.ndarray:
  """table[idx] with 0 where `valid` is False (... and is zeroed here). idx, valid (B, L) ->
  (B, L, *table.shape[1:])."""
  out = _take(table, idx.reshape(-1)).reshape(idx.shape + table.shape[1:])
  out *= valid.reshape(valid.shape + (1,) * (table.ndim - 1))
  return out


def dummy_batch(schema: Schema, batch_size: int, seed: int = 0) -> dict[str, np.ndarray]:
  """A random batch with valid ids and lengths (for init, tests and benchmarks)."""
  rng = np.random.default_rng(seed)
  b, ls, lh = batch_size, schema.max_cur_len, schema.max_all_len

  def ids(fields: Sequence[Field], shape):
    return np.stack([rng.integers(1, f.vocab_size, size=shape) for f in fields], -1).astype(np.int32)

  cur_len = rng.integers(0, ls + 1, size=b).astype(np.int32)
  all_len = np.maximum(cur_len, rng.integers(0, lh + 1, size=b)).astype(np.int32).clip(0, lh)
  cur_m = np.arange(ls)[None] < cur_len[:, None]
  all_m = np.arange(lh)[None] < all_len[:, None]
  batch = {
      "user": ids(schema.user_fields, (b,)), "item": ids(schema.item_fields, (b,)),
      "scenario": ids(schema.scenario_fields, (b,)),
      "label": rng.integers(0, 2, size=b).astype(np.float32),
      "cur_seq": ids(schema.item_fields, (b, ls)) * cur_m[..., None],
      "cur_len": cur_len,
      "all_seq": ids(schema.item_fields, (b, lh)) * all_m[..., None],
      "all_len": all_len,
      "all_click": rng.integers(0, 2, size=(b, lh)).astype(np.int32) * all_m,
      "all_scenario": rng.integers(1, schema.num_scenarios + 1, size=(b, lh)).astype(np.int32) * all_m,
      "sample_id": np.arange(b, dtype=np.int64), "user_id": rng.integers(0, 100, size=b).astype(np.int32),
      "mask": np.ones(b, np.float32),
  }
  if schema.has_truth:
    batch["true_like"] = rng.integers(0, 2, size=b).astype(np.float32)
    batch["true_prob"] = rng.random(b).astype(np.float32)
  if schema.has_exam:
    batch["true_exam"] = rng.random(b).astype(np.float32)
  return batch
