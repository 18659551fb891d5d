"""Ali-CCP (Tianchi dataset 408) -> `EventLog`: the raw Tianchi files and the processed CSVs.

Paper App. A.1: Ali-CCP is the Taobao recommendation log released with ESMM; M-scan takes its
field `301` (3 values) as the scenario, keeps the users seen in at least two scenarios, orders
the samples in time and puts the most recent 40% in the test set. The filter and the split are
applied by `prepare` / `builder.build_dataset`; this module only turns the files into an event
log.

Raw format (`load_aliccp_raw(dir)`), four headerless CSV files:

    sample_skeleton_{train,test}.csv   sample_id,click,purchase,common_feature_index,feature_num,feature_list
    common_features_{train,test}.csv   common_feature_index,feature_num,feature_list

A feature list is features joined by `\\x01`, each `field_id\\x02feature_id\\x03value`. A skeleton
row is joined with the common-features row of its `common_feature_index`, from the common file
of the same split (train with train, test with test).

  * user fields, from the common row: 101 (user id), 121, 122, 124, 125, 126, 127, 128, 129
    (profile). The multi-valued behaviour fields 109_14, 110_14, 127_14, 150_14 are not used.
  * item fields, from the skeleton row: 205 (item id), 206 (category), 207 (shop), 210
    (intention node), 216 (brand). 210 is multi-valued: the FIRST value in the feature list
    is kept (the number of rows with more than one is in the statistics, `multi_valued`).
    Any other field given twice in a row is treated the same way and counted too.
  * scenario: field 301 (3 raw feature ids -> scenario ids 1..3 in sorted raw order).
  * label: click. Cross fields 508/509/702/853 and all feature values (`\\x03` part) are
    not used (the batch contract has categorical user/item/scenario fields only).
  * ids: raw feature ids (int64) are re-indexed per field by sorted distinct value, 1..V,
    0 = absent from the row (`rawio.reindex`); the vocab is returned for the dataset.
  * time: the log has no timestamp; file order is time order, the train file before the test
    file. `sample_id` = file index * 10**12 + line number (file index 0 = train skeleton,
    1 = test skeleton; lines counted from 1), so every prediction maps back to its raw line
    (raw `sample_id`s repeat between the two files).

Rows and policies. Every dropped row is counted in the statistics (`dropped_*`):
  * click=0, purchase=1 (a purchase without a click: inconsistent) -> dropped.
  * no field 301 in the skeleton row -> dropped (no scenario).
  * no field 101 in the joined common row -> dropped (no user to build a history for).
  * a `common_feature_index` absent from the common file -> a `DataError` naming the file and
    line (default, `missing_common="error"`: it means the train/test files were mixed up or a
    file is truncated), or dropped and counted with `missing_common="drop"`.
  * `feature_num` different from the number of features in the list -> kept, counted.
  * anything that cannot be parsed (a wrong column count, a feature without `\\x02` or `\\x03`,
    a non-numeric id, a click or purchase not 0/1, a duplicated common key, an empty file) ->
    `DataError` naming the file and line.

Streaming: the files are read in blocks of `block_size` bytes cut at newlines, parsed on
`workers` threads (`rawio.ordered_map`); each block is parsed by pyarrow's CSV reader into
typed columns, and its feature-list column is split with vectorised numpy on the column's own
buffers (positions of the control bytes, a grammar check, field names packed into uint64,
SWAR digit arithmetic): no Python loop over rows. The common table keeps, per row, its key
and 9 user ids; a skeleton row's key is looked up by binary search in it. Only the few ints
kept per row are retained (about 60 bytes per kept sample, then the re-indexed int32 log), so
memory grows with the rows kept, never with the raw text. The result does not depend on
`block_size` or `workers` (tested).

Processed CSV (`load_aliccp_csv(path)`): the 33-column files written by torch-rechub's
`preprocess_ali_ccp.py` and used by Scenario-Wise-Rec
(`click,purchase,101,121,...,301,109_14,...,D853`), or the 20-column AITM variant
(`click,purchase,101,...,853,301`), with or without a header row. `path` is a file or a
directory of `*train*`, `*val*` and `*test*` CSV files, concatenated in that order as the
time order. The ids there are already re-indexed with 0 = missing or rare (frequency < 10):
raw 0 becomes id 0 (unknown), other values are re-indexed 1..V; rows with user 0 (a rare
user, merged upstream into one pseudo-user) or scenario 0 are dropped and counted.
"""

from __future__ import annotations

import dataclasses
import glob
import os
import re
from typing import Any, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from mscan_jax.data import builder, spill
from mscan_jax.data.rawio import (DEFAULT_BLOCK_SIZE, DEFAULT_WORKERS, check_file,
                                  iter_line_blocks, merge_vocab, ordered_map, read_block, reindex,
                                  reindex_with_vocab)
from mscan_jax.data.schema import DataError, Field

# Disk per event of the reader's spill (`load_aliccp_raw(spill_dir=)`): the parsed rows (sample
# id 8, click 1, common row 4, raw item fields 40, raw scenario 8) and the re-indexed log (user
# 36, item 20, scenario 4, user key 4); and the size of a skeleton row, about (the generated
# files of benchmarks.aliccp_preprocess, modelled on the real ones), to estimate the rows.
SPILL_BYTES_PER_EVENT = 125
SKELETON_BYTES_PER_ROW = 260


def spill_bytes(raw: str) -> int:
  """About how much disk `load_aliccp_raw(raw, spill_dir=)` writes: the skeleton files' rows
  (their size over `SKELETON_BYTES_PER_ROW`) times `SPILL_BYTES_PER_EVENT`."""
  rows = sum(os.path.getsize(skel) for _, skel, _ in raw_files(raw)) / SKELETON_BYTES_PER_ROW
  return int(rows * SPILL_BYTES_PER_EVENT)


USER_FIELDS = ("101", "121", "122", "124", "125", "126", "127", "128", "129")
ITEM_FIELDS = ("205", "206", "207", "210", "216")
SCENARIO_FIELD = "301"
SKELETON_COLUMNS = ("sample_id", "click", "purchase", "common_feature_index", "feature_num",
                    "feature_list")
COMMON_COLUMNS = ("common_feature_index", "feature_num", "feature_list")
RAW_FILES = {"train": ("sample_skeleton_train.csv", "common_features_train.csv"),
             "test": ("sample_skeleton_test.csv", "common_features_test.csv")}
SAMPLE_ID_FILE_STRIDE = 10 ** 12  # sample_id = file index * stride + line number

# Processed CSV layouts (torch-rechub / Scenario-Wise-Rec, and AITM).
CSV_COLUMNS_33 = ("click", "purchase", "101", "121", "122", "124", "125", "126", "127", "128",
                  "129", "205", "206", "207", "210", "216", "508", "509", "702", "853", "301",
                  "109_14", "110_14", "127_14", "150_14", "D109_14", "D110_14", "D127_14",
                  "D150_14", "D508", "D509", "D702", "D853")
CSV_COLUMNS_20 = ("click", "purchase", "101", "121", "122", "124", "125", "126", "127", "128",
                  "129", "205", "206", "207", "216", "508", "509", "702", "853", "301")

_NEXT_CONTROL = np.array([255, 2, 3, 1], np.uint8)   # \x01 -> \x02 -> \x03 -> \x01 ...
_MAX_ID_DIGITS = 16                                   # ids of up to 16 digits (int64)


# ---------------------------------------------------------------------------------------
# Feature lists


@dataclasses.dataclass
class ParsedFeatures:
  """Wanted fields of a block of feature lists."""
  values: np.ndarray        # (n, F) int64 first raw feature id of each wanted field, -1 = absent
  multi: np.ndarray         # (F,) int64 rows with more than one value of the field
  num_features: np.ndarray  # (n,) int64 features in each row's list


def parse_feature_lists(col: pa.Array | pa.ChunkedArray, wanted: Sequence[str], *, source: str,
                        first_line: int) -> ParsedFeatures:
  """Splits `field\\x02id\\x03value` features joined by `\\x01`, keeping the fields in `wanted`.

  Vectorised on the column's buffers: the control bytes (< 4) are located once and must follow
  the grammar (\\x02 \\x03)(\\x01 \\x02 \\x03)* in every row; a feature's field is the text
  before its \\x02 and its id the digits between \\x02 and \\x03. Row k of `col` is line
  `first_line + k` of `source` (for errors).
  """
  if isinstance(col, pa.ChunkedArray):
    col = col.combine_chunks() if col.num_chunks != 1 else col.chunk(0)
  if not pa.types.is_binary(col.type):
    col = col.cast(pa.binary())
  n, nf = len(col), len(wanted)
  enc = [w.encode() for w in wanted]
  if any(len(w) == 0 or len(w) > 7 for w in enc):
    raise ValueError(f"wanted field names must have 1..7 bytes, got {list(wanted)}")
  offsets = np.frombuffer(col.buffers()[1], np.int32)[col.offset:col.offset + n + 1].astype(np.int64)
  data_buf = col.buffers()[2]
  data = (np.frombuffer(data_buf, np.uint8)[offsets[0]:offsets[-1]] if data_buf is not None
          else np.zeros(0, np.uint8))
  offs = offsets - offsets[0]                                      # (n+1,) row starts in data
  pos = np.flatnonzero(data < 4)                                   # (m,) control bytes
  code = data[pos]                                                 # (m,) uint8
  cstart = np.searchsorted(pos, offs)                              # (n+1,) first control of row
  nctrl = np.diff(cstart)                                          # (n,)
  has = nctrl > 0
  rows_with = int(np.count_nonzero(has))
  # Grammar: a row's controls start with \x02 and end with \x03, and every transition is
  # 2->3, 3->1 or 1->2 inside a row; 3->2 is allowed only across a row boundary, so the
  # number of 3->2 transitions must be the number of boundaries.
  trans = code[:-1] * np.uint8(4) + code[1:]                       # (m-1,) uint8 in 0..15
  is32 = trans == 14
  allowed = (trans == 11) | (trans == 13) | (trans == 6) | is32    # 2->3, 3->1, 1->2, 3->2
  ok = (bool(allowed.all()) and int(np.count_nonzero(is32)) == max(rows_with - 1, 0)
        and bool((code[cstart[:-1][has]] == 2).all()) and bool((code[cstart[1:][has] - 1] == 3).all())
        and not bool(np.any((offs[1:] > offs[:-1]) & ~has)))
  if not ok:
    r = _first_bad_row(offs, pos, code, has)
    text = bytes(data[offs[r]:offs[r + 1]])
    raise DataError(f"{source}: line {first_line + r}: {_explain_feature_list(text)}")

  k = (nctrl + 1) // 3                                             # (n,) features per row
  i2 = np.flatnonzero(code == 2)                                   # (T,) one \x02 per feature
  p2, p3 = pos[i2], pos[i2 + 1]
  start = pos[i2 - 1] + 1                                          # after the previous \x01 ...
  tok_first = np.cumsum(k) - k
  start[tok_first[has]] = offs[:-1][has]                           # ... or at the row start

  # Field names: the L bytes right before the \x02 of each token of a wanted length L, read
  # as one little-endian uint64 and compared with the packed wanted names.
  words = _Words(data)
  flen = p2 - start                                                # (T,)
  field = np.full(p2.shape[0], -1, np.int8)                        # (T,) wanted index or -1
  for length in sorted({len(w) for w in enc}):
    names = [j for j, w in enumerate(enc) if len(w) == length]
    at = np.flatnonzero(flen == length)                            # (c,)
    packed = words.before(p2[at]) >> np.uint64(8 * (8 - length))  # (c,) first byte lowest
    want = np.array([int.from_bytes(enc[j], "little") for j in names], np.uint64)
    order = np.argsort(want)
    k_at = np.minimum(np.searchsorted(want[order], packed), len(names) - 1)
    hit = want[order][k_at] == packed
    field[at[hit]] = np.asarray(names, np.int8)[order[k_at[hit]]]
  sel = np.flatnonzero(field >= 0)                                 # (K,) wanted tokens, in order
  fidx = field[sel].astype(np.int64)                               # (K,) their field index
  tok_row = np.repeat(np.arange(n), k)[sel]                        # (K,) their row

  ids = _parse_ids(words, data, p2[sel] + 1, p3[sel], tok_row, wanted, fidx, source, first_line)
  values = np.full((nf, n), -1, np.int64)                         # transposed while filled
  multi = np.zeros(nf, np.int64)
  for f in range(nf):
    at_f = np.flatnonzero(fidx == f)
    r = tok_row[at_f]                                              # sorted (file order)
    new = np.ones(r.shape[0], bool)
    np.not_equal(r[1:], r[:-1], out=new[1:])
    values[f, r[new]] = ids[at_f[new]]                             # the first value in the row
    dup = r[~new]
    multi[f] = int(np.count_nonzero(dup[1:] != dup[:-1])) + int(dup.size > 0)
  return ParsedFeatures(np.ascontiguousarray(values.T), multi, k.astype(np.int64))


class _Words:
  """Every 8-byte window of a byte array as an (unaligned) uint64, for one-gather reads."""

  def __init__(self, data: np.ndarray):
    if data.shape[0] < 8:
      data = np.concatenate([data, np.zeros(8 - data.shape[0], np.uint8)])
    self.words = np.ndarray((data.shape[0] - 7,), "<u8", buffer=data, strides=(1,))

  def before(self, stop: np.ndarray) -> np.ndarray:
    """(k,) uint64 whose highest byte is data[stop-1], then data[stop-2], ... (little-endian)."""
    w = self.words[np.maximum(stop - 8, 0)]
    near = np.flatnonzero(stop < 8)                                # the block's first bytes
    if near.size:
      w[near] <<= (np.uint64(8) * (np.uint64(8) - stop[near].astype(np.uint64)))
    return w


def _first_bad_row(offs: np.ndarray, pos: np.ndarray, code: np.ndarray, has: np.ndarray) -> int:
  """The first row breaking the feature-list grammar (error path only)."""
  n = offs.shape[0] - 1
  row = np.searchsorted(offs, pos, side="right") - 1               # (m,)
  first = np.ones(pos.shape[0], bool)
  first[1:] = row[1:] != row[:-1]
  last = np.ones(pos.shape[0], bool)
  last[:-1] = first[1:]
  ok = np.where(first, code == 2, True) & np.where(last, code == 3, True) & (code != 0)
  ok[:-1] &= last[:-1] | (_NEXT_CONTROL[np.minimum(code[:-1], 3)] == code[1:])
  cands = [int(row[i]) for i in np.flatnonzero(~ok)[:1]]
  cands += [int(r) for r in np.flatnonzero((offs[1:] > offs[:-1]) & ~has)[:1]]
  return min(cands) if cands else n - 1


def _parse_ids(words: "_Words", data: np.ndarray, start: np.ndarray, stop: np.ndarray,
               rows: np.ndarray, wanted: Sequence[str], fidx: np.ndarray, source: str,
               first_line: int) -> np.ndarray:
  """Decimal digits data[start:stop] -> (K,) int64; anything else -> `DataError` with the line.

  SWAR: the 8 bytes before `stop` (and the 8 before those, for ids of 9..16 digits) are read
  as one uint64, the bytes left of the id replaced by '0', checked to be digits and combined
  pairwise (2, 4, 8 digits) with three multiply-shift steps.
  """
  length = stop - start
  bad = (length < 1) | (length > _MAX_ID_DIGITS)
  value, b = _digits8(words.before(stop), np.minimum(length, 8))
  bad |= b
  long = np.flatnonzero(length > 8)
  if long.size:
    hi, b = _digits8(words.before(stop[long] - 8), np.clip(length[long] - 8, 0, 8))
    value[long] += hi * 100_000_000
    bad[long] |= b
  if bad.any():
    t = int(np.flatnonzero(bad)[0])
    text = bytes(data[start[t]:stop[t]]).decode("latin-1")
    raise DataError(f"{source}: line {first_line + int(rows[t])}: field {wanted[int(fidx[t])]}: "
                    f"feature id {text!r} is not a non-negative integer of at most "
                    f"{_MAX_ID_DIGITS} digits")
  return value


_ZEROS = np.uint64(0x3030303030303030)


def _digits8(v: np.ndarray, length: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """The last `length` (0..8) bytes of each uint64 `v` as decimal digits -> (value, bad)."""
  # Bytes below the id (the low 8 - length bytes) become '0'.
  low = (np.uint64(1) << (np.uint64(8) * (np.uint64(8) - length.astype(np.uint64)))) - np.uint64(1)
  low[length == 0] = np.uint64(0xFFFFFFFFFFFFFFFF)
  v = (v & ~low) | (_ZEROS & low)
  bad = ((v + np.uint64(0x4646464646464646)) | (v - _ZEROS)) & np.uint64(0x8080808080808080)
  v = v - _ZEROS
  v = (v * np.uint64(10) + (v >> np.uint64(8))) & np.uint64(0x00FF00FF00FF00FF)
  v = (v * np.uint64(100) + (v >> np.uint64(16))) & np.uint64(0x0000FFFF0000FFFF)
  v = (v * np.uint64(10000) + (v >> np.uint64(32))) & np.uint64(0x00000000FFFFFFFF)
  return v.astype(np.int64), bad != 0


def _explain_feature_list(text: bytes) -> str:
  """Names the first malformed feature of one feature list (error path only)."""
  if not text:
    return "empty feature list"
  for k, feat in enumerate(text.split(b"\x01")):
    shown = feat.decode("latin-1")
    if b"\x00" in feat:
      return f"feature {k + 1} {shown!r} holds a NUL byte"
    if feat.count(b"\x02") != 1:
      return (f"feature {k + 1} {shown!r} has {feat.count(chr(2).encode())} '\\x02' separators, "
              "expected field\\x02id\\x03value")
    if feat.count(b"\x03") != 1 or feat.index(b"\x03") < feat.index(b"\x02"):
      return (f"feature {k + 1} {shown!r} has no '\\x03' after its '\\x02' (or more than one), "
              "expected field\\x02id\\x03value")
  return f"malformed feature list {text.decode('latin-1')!r}"


# ---------------------------------------------------------------------------------------
# Raw Tianchi files


@dataclasses.dataclass
class CommonTable:
  """The needed part of a common-features file: one row per common_feature_index."""
  keys: pa.Array           # (N,) binary common_feature_index, file order
  user: np.ndarray         # (N, Fu) int64 raw user field ids, -1 = absent
  rows: int
  multi: np.ndarray        # (Fu,) rows with a multi-valued user field
  num_mismatch: int        # rows whose feature_num differs from their list

  def __post_init__(self):
    # The real keys are 16 hex characters: with one key length L the keys are viewed as
    # fixed-width bytes ('S<L>', no copy) and looked up by binary search in a sorted copy,
    # built once (pc.index_in would rebuild its hash table for every block).
    lengths = pc.binary_length(self.keys).to_numpy(zero_copy_only=False)
    self._width = int(lengths[0]) if lengths.size and (lengths == lengths[0]).all() else 0
    if self._width:
      fixed = _fixed_width(self.keys, self._width)                  # (N,) S<L>
      self._order = np.argsort(fixed, kind="stable")
      self._sorted = fixed[self._order]

  def lookup(self, keys: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """Row of each key in this table, -1 where absent. (n,) int64."""
    if isinstance(keys, pa.ChunkedArray):
      keys = keys.combine_chunks() if keys.num_chunks != 1 else keys.chunk(0)
    if not self._width:
      idx = pc.index_in(keys, value_set=self.keys)
      return pc.fill_null(idx, -1).to_numpy(zero_copy_only=False).astype(np.int64)
    lengths = pc.binary_length(keys).to_numpy(zero_copy_only=False)
    same = lengths == self._width
    if same.all():
      query = _fixed_width(keys, self._width)
    else:                                                         # other lengths: absent
      query = np.zeros(len(keys), f"S{self._width}")
      query[same] = np.array(keys.filter(pa.array(same)).to_pylist(), f"S{self._width}")
    at = np.minimum(np.searchsorted(self._sorted, query), self._sorted.shape[0] - 1)
    found = same & (self._sorted[at] == query)
    return np.where(found, self._order[at], -1).astype(np.int64)


def _fixed_width(keys: pa.Array, width: int) -> np.ndarray:
  """A binary array whose values all have `width` bytes, as an (n,) 'S<width>' view."""
  offsets = np.frombuffer(keys.buffers()[1], np.int32)[keys.offset:keys.offset + len(keys) + 1]
  data = np.frombuffer(keys.buffers()[2], np.uint8)[offsets[0]:offsets[-1]]
  return data.view(f"S{width}")


_SKELETON_TYPES = {"sample_id": pa.int64(), "click": pa.int64(), "purchase": pa.int64(),
                   "common_feature_index": pa.binary(), "feature_num": pa.int64(),
                   "feature_list": pa.binary()}
_COMMON_TYPES = {"common_feature_index": pa.binary(), "feature_num": pa.int64(),
                 "feature_list": pa.binary()}


def read_common_features(path: str, block_size: int = DEFAULT_BLOCK_SIZE,
                         workers: int = DEFAULT_WORKERS) -> CommonTable:
  """Reads a `common_features_*.csv` keeping the key and the user fields of each row."""
  check_file(path)

  def parse(block: bytes, line: int):
    _check_last_line(block, line, path, COMMON_COLUMNS)
    t = read_block(block, COMMON_COLUMNS, _COMMON_TYPES, source=path, first_line=line)
    f = parse_feature_lists(t.column("feature_list"), USER_FIELDS, source=path, first_line=line)
    mismatch = int(np.count_nonzero(f.num_features != t.column("feature_num").to_numpy()))
    return line, t.column("common_feature_index").combine_chunks(), f, mismatch

  keys, users, multi, mismatch, rows = [], [], np.zeros(len(USER_FIELDS), np.int64), 0, 0
  block_starts, block_lines = [], []          # first row and first line of each block
  blocks = iter_line_blocks(path, block_size, skip_header=b"common_feature_index,")
  for line, key, f, mis in ordered_map(parse, blocks, workers):
    block_starts.append(rows)
    block_lines.append(line)
    keys.append(key)
    users.append(f.values)
    multi += f.multi
    mismatch += mis
    rows += len(key)
  if rows == 0:
    raise DataError(f"{path}: the file is empty (no common-features rows)")
  key_arr = pa.concat_arrays(keys)

  def line_of(r: int) -> int:
    b = int(np.searchsorted(block_starts, r, side="right")) - 1
    return block_lines[b] + r - block_starts[b]

  _check_unique_keys(key_arr, path, line_of)
  return CommonTable(key_arr, np.concatenate(users), rows, multi, mismatch)


def _check_last_line(block: bytes, first_line: int, path: str, names: Sequence[str]) -> None:
  """The last line of a raw file that does not end with a newline must be whole.

  A download or copy cut short ends inside a line; read as it is, that line would be a row
  without its scenario (dropped as `no_scenario`), without its user fields, or with a shorter
  id. So a line with no newline after it (only the file's last can have none) must have all its
  columns, a feature list whose last feature is whole (field\x02id\x03) and at least as many
  features as its feature_num; otherwise a DataError calls the file truncated.
  """
  if block.endswith(b"\n"):
    return
  text = block[block.rfind(b"\n") + 1:]
  line = first_line + block.count(b"\n")
  cells = text.split(b",")
  why = ""
  if len(cells) < len(names):
    why = f"{len(cells)} of its {len(names)} columns"
  elif len(cells) == len(names):
    num, features = cells[-2], cells[-1].split(b"\x01") if cells[-1] else []
    last = features[-1] if features else b""
    if not features or last.count(b"\x02") != 1 or b"\x03" not in last.partition(b"\x02")[2]:
      why = "its last feature is cut short"
    elif num.isdigit() and len(features) < int(num):
      why = f"{len(features)} of its {int(num)} features"
  if why:
    raise DataError(f"{path}: line {line}: the file ends inside this line ({why}, and no newline "
                    "after it): the file looks truncated (an interrupted download or copy?); "
                    "fetch or extract it again")


def _check_unique_keys(keys: pa.Array, path: str, line_of) -> None:
  if len(pc.unique(keys)) == len(keys):
    return
  order = pc.sort_indices(keys).to_numpy()
  s = keys.take(pa.array(order))
  same = pc.equal(s[1:], s[:-1]).to_numpy(zero_copy_only=False)
  dup = np.flatnonzero(same)
  # The first duplicated key in file order: the smallest second occurrence.
  second = np.maximum(order[dup], order[dup + 1])
  j = int(np.argmin(second))
  a, b = int(min(order[dup[j]], order[dup[j] + 1])), int(second[j])
  raise DataError(f"{path}: line {line_of(b)}: common_feature_index "
                  f"{keys[b].as_py().decode('latin-1')!r} already appeared on line {line_of(a)} "
                  f"({len(dup)} duplicated keys in all); each common-features row needs its own key")


class _Kept:
  """The kept skeleton rows of the raw files, appended file after file to one set of columns
  (`spill.Spill`: on disk or in memory), and the distinct raw values seen per item and scenario
  field (per id, not per event: the vocab)."""

  def __init__(self, store: spill.Spill):
    self.sample_id = store.column("sample_id", np.int64)
    self.click = store.column("click", np.int8)
    self.common_idx = store.column("common_idx", np.int32)   # row of its file's common table
    self.item = store.column("item_raw", np.int64, (len(ITEM_FIELDS),))     # -1 absent
    self.scenario = store.column("scenario_raw", np.int64)
    self._distinct: list[list[np.ndarray]] = [[] for _ in range(len(ITEM_FIELDS) + 1)]

  def append(self, sid, click, idx, item, scen) -> None:
    for w, v in ((self.sample_id, sid), (self.click, click), (self.common_idx, idx),
                 (self.item, item), (self.scenario, scen)):
      w.append(v)
    for j, values in enumerate((*item.T, scen)):
      parts = self._distinct[j]
      parts.append(np.unique(values))
      if len(parts) >= 64:                          # merged now and then: per id, not per row
        parts[:] = [np.unique(np.concatenate(parts))]

  def remove_parsed(self) -> None:
    """Deletes the spill files of the raw values and common rows (none in memory)."""
    for w in (self.common_idx, self.item, self.scenario):
      if isinstance(w, spill.ColumnWriter) and os.path.exists(w.path):
        os.remove(w.path)

  def distinct(self, j: int) -> list[np.ndarray]:
    """The distinct raw values of item field j (j = len(ITEM_FIELDS): the scenario)."""
    return self._distinct[j]


def read_skeleton(path: str, common: CommonTable, kept: _Kept, *, file_index: int,
                  block_size: int = DEFAULT_BLOCK_SIZE, missing_common: str = "error",
                  counts: dict[str, int] | None = None, workers: int = DEFAULT_WORKERS) -> int:
  """Streams a `sample_skeleton_*.csv`, joining each row with `common` and applying the
  drop policies of the module docstring; the kept rows are appended to `kept`. Counters are
  added to `counts`. Returns the number of rows kept."""
  check_file(path)
  if missing_common not in ("error", "drop"):
    raise ValueError(f"missing_common must be 'error' or 'drop', got {missing_common!r}")
  counts = counts if counts is not None else {}
  wanted = ITEM_FIELDS + (SCENARIO_FIELD,)

  def parse(block: bytes, line: int):
    _check_last_line(block, line, path, SKELETON_COLUMNS)
    t = read_block(block, SKELETON_COLUMNS, _SKELETON_TYPES, source=path, first_line=line)
    n = t.num_rows
    click = t.column("click").to_numpy()
    purchase = t.column("purchase").to_numpy()
    for name, v in (("click", click), ("purchase", purchase)):
      bad = np.flatnonzero((v != 0) & (v != 1))
      if bad.size:
        raise DataError(f"{path}: line {line + int(bad[0])}: {name} must be 0 or 1, got "
                        f"{int(v[bad[0]])}")
    f = parse_feature_lists(t.column("feature_list"), wanted, source=path, first_line=line)
    c = {"rows_read": n,
         "feature_num_mismatch": np.count_nonzero(f.num_features != t.column("feature_num").to_numpy())}
    for name, m in zip(wanted, f.multi):
      c[f"multi_valued_{name}"] = m
    idx = common.lookup(t.column("common_feature_index"))         # (n,) -1 = absent
    missing = idx < 0
    if missing.any() and missing_common == "error":
      k = int(np.flatnonzero(missing)[0])
      key = t.column("common_feature_index")[k].as_py().decode("latin-1")
      raise DataError(f"{path}: line {line + k}: common_feature_index {key!r} is not in the "
                      f"common-features file ({int(missing.sum())} such rows in this block); "
                      "check that train skeletons are paired with common_features_train.csv "
                      "and test with test, or pass missing_common='drop' to drop and count them")
    idx = np.maximum(idx, 0)
    # Each dropped row is counted once, under its first reason in this order.
    reasons = (("dropped_missing_common", missing),
               ("dropped_click0_purchase1", (click == 0) & (purchase == 1)),
               ("dropped_no_scenario", f.values[:, -1] < 0),
               ("dropped_no_user", common.user[idx, 0] < 0))
    drop = np.zeros(n, bool)
    for name, mask in reasons:
      c[name] = np.count_nonzero(mask & ~drop)
      drop |= mask
    keep = np.flatnonzero(~drop)
    return (c, file_index * SAMPLE_ID_FILE_STRIDE + line + keep, click[keep].astype(np.int8),
            idx[keep].astype(np.int32), f.values[keep, :-1], f.values[keep, -1])

  rows, before = 0, kept.click.rows
  blocks = iter_line_blocks(path, block_size, skip_header=b"sample_id,")
  for c, sid, click, idx, item, scen in ordered_map(parse, blocks, workers):
    for k, v in c.items():
      _add(counts, k, v)
    rows += c["rows_read"]
    kept.append(sid, click, idx, item, scen)
  if rows == 0:
    raise DataError(f"{path}: the file is empty (no sample rows)")
  return kept.click.rows - before


def _add(counts: dict[str, int], key: str, value) -> None:
  counts[key] = counts.get(key, 0) + int(value)


def raw_files(raw: str) -> list[tuple[str, str, str]]:
  """(split, skeleton path, common path) of the raw pairs present in directory `raw`."""
  if not os.path.isdir(raw):
    raise DataError(f"{raw}: not a directory; --raw must be the folder holding "
                    f"{', '.join(RAW_FILES['train'] + RAW_FILES['test'])}")
  pairs = []
  for split, (skel, comm) in RAW_FILES.items():
    s, c = os.path.join(raw, skel), os.path.join(raw, comm)
    if os.path.exists(s) != os.path.exists(c):
      have, lack = (s, c) if os.path.exists(s) else (c, s)
      raise DataError(f"{raw}: found {os.path.basename(have)} but not {os.path.basename(lack)}; "
                      "a skeleton file needs the common-features file of the same split")
    if os.path.exists(s):
      pairs.append((split, s, c))
  if not pairs:
    raise DataError(f"{raw}: no Ali-CCP raw files; expected {RAW_FILES['train'][0]} and "
                    f"{RAW_FILES['train'][1]} (and the _test pair), as extracted from Tianchi "
                    "dataset 408")
  return pairs


def load_aliccp_raw(raw: str, *, block_size: int = DEFAULT_BLOCK_SIZE,
                    missing_common: str = "error", workers: int = DEFAULT_WORKERS,
                    spill_dir: str | None = None
                    ) -> tuple[builder.EventLog, dict[str, np.ndarray], dict[str, Any]]:
  """Reads the raw Tianchi files in directory `raw` (train pair, then test pair).

  Returns (log, vocab, stats): the event log in time order (file order), the raw feature id of
  each contiguous id per field, and the parsing statistics (rows read and dropped per reason).
  With `spill_dir` (a folder the caller owns and removes), the rows are written there block
  by block as they are parsed and the log's columns are read-only memory maps of its files
  (`spill`): what stays in memory is per id (the common tables, the vocab), not per event.
  Without it, the same columns are built in memory.
  """
  pairs = raw_files(raw)
  stats: dict[str, Any] = {"source_format": "aliccp raw (Tianchi 408)", "bytes_read": 0}
  kept = _Kept(spill.Spill(spill_dir))
  user_tables = []        # per file: (its common table's user rows (C, Fu), its kept rows)
  for file_index, (split, skel, comm) in enumerate(pairs):
    common = read_common_features(comm, block_size, workers)
    counts: dict[str, int] = {}
    n = read_skeleton(skel, common, kept, file_index=file_index, block_size=block_size,
                      missing_common=missing_common, counts=counts, workers=workers)
    stats[f"{split}_common_rows"] = common.rows
    stats[f"{split}_common_feature_num_mismatch"] = common.num_mismatch
    for name, c in zip(USER_FIELDS, common.multi):
      if c:                                       # user fields are single-valued in practice
        stats[f"{split}_common_multi_valued_{name}"] = int(c)
    for k, v in counts.items():
      if v or not k.startswith("multi_valued_") or k == "multi_valued_210":
        stats[f"{split}_{k}"] = v
    stats["bytes_read"] += os.path.getsize(skel) + os.path.getsize(comm)
    user_tables.append((common.user, n))
    del common
  return _assemble_raw(kept, user_tables, stats, raw, spill.Spill(spill_dir))


def _assemble_raw(kept: _Kept, user_tables, stats, source, store: spill.Spill):
  """Re-indexes every field of the kept rows (vocab over the kept rows), block by block.

  user_tables: per file (its common table's user rows (C, Fu), the number of kept rows of the
  file). Only the common rows that kept samples use enter the vocab.
  """
  sample_id, label = kept.sample_id.finish(), kept.click.finish()
  common_idx, item_raw, scen_raw = (kept.common_idx.finish(), kept.item.finish(),
                                    kept.scenario.finish())
  n = label.shape[0]
  if n == 0:
    raise DataError(f"{source}: no sample row left after the drop policies: {stats}")
  vocab: dict[str, np.ndarray] = {}
  for j, name in enumerate((*ITEM_FIELDS, SCENARIO_FIELD)):
    vocab[name] = merge_vocab(kept.distinct(j), missing=-1)
  # Per file: the common rows its kept samples use (sorted), found over blocks of rows.
  used, lo = [], 0
  for table, rows in user_tables:
    mask = np.zeros(table.shape[0], bool)
    for a in range(lo, lo + rows, spill.CHUNK_ROWS):
      mask[common_idx[a:min(a + spill.CHUNK_ROWS, lo + rows)]] = True
    spill.release(common_idx)
    used.append(np.flatnonzero(mask))
    lo += rows
  user_rows = [table[u] for (table, _), u in zip(user_tables, used)]       # (C_f, Fu) raw
  user_ids = np.zeros((sum(u.shape[0] for u in used), len(USER_FIELDS)), np.int32)
  for j, name in enumerate(USER_FIELDS):
    vocab[name] = merge_vocab([r[:, j] for r in user_rows], missing=-1)
    user_ids[:, j] = np.concatenate([reindex_with_vocab(r[:, j], vocab[name], missing=-1)
                                     for r in user_rows])
  offsets = np.cumsum([0] + [u.shape[0] for u in used])                 # table row of file k
  ends = np.cumsum([rows for _, rows in user_tables])                  # kept rows up to file k
  item_w = store.column("item", np.int32, (len(ITEM_FIELDS),))                # (E, Fi)
  scen_w = store.column("scenario", np.int32, (1,))                          # (E, 1)
  user_w = store.column("user", np.int32, (len(USER_FIELDS),))               # (E, Fu)
  user_id_w = store.column("user_id", np.int32)                              # (E,)
  for a in range(0, n, spill.CHUNK_ROWS):
    b = min(a + spill.CHUNK_ROWS, n)
    raw = item_raw[a:b]
    item_w.append(np.stack([reindex_with_vocab(raw[:, j], vocab[name], missing=-1)
                            for j, name in enumerate(ITEM_FIELDS)], axis=1))
    scen_w.append(reindex_with_vocab(scen_raw[a:b], vocab[SCENARIO_FIELD], missing=-1)[:, None])
    f = np.searchsorted(ends, np.arange(a, b), side="right")          # the file of each row
    rows = np.empty(b - a, np.int64)
    for k in np.unique(f):
      at = f == k
      rows[at] = offsets[k] + np.searchsorted(used[k], common_idx[a:b][at])
    user = user_ids[rows]
    user_w.append(user)
    user_id_w.append((user[:, 0].astype(np.int64) - 1).astype(np.int32))
    spill.release(item_raw, scen_raw, common_idx)
  del item_raw, scen_raw, common_idx
  kept.remove_parsed()                   # the raw values: their ids are written now
  log = _event_log(user_w.finish(), item_w.finish(), scen_w.finish(), label, sample_id,
                   user_id_w.finish(), vocab, source, ITEM_FIELDS)
  stats["events"] = int(n)
  return log, vocab, stats


def _event_log(user, item, scenario, label, sample_id, user_id, vocab, source,
               item_names: Sequence[str]) -> builder.EventLog:
  """The `EventLog` of re-indexed (E, F) int32 arrays; field sizes from the vocab. user_id
  None: user field 0's id - 1."""
  fields = lambda names: tuple(Field(nm, max(int(vocab[nm].shape[0]), 2)) for nm in names)  # noqa: E731
  if user_id is None:
    user_id = (user[:, 0].astype(np.int64) - 1).astype(np.int32)
  return builder.EventLog(
      user=user, item=item, scenario=spill.astype(scenario, np.int32),
      label=spill.astype(label, np.int8), user_id=user_id,
      user_fields=fields(USER_FIELDS), item_fields=fields(tuple(item_names)),
      scenario_fields=fields((SCENARIO_FIELD,)), time=None, sample_id=sample_id, source=source)


# ---------------------------------------------------------------------------------------
# Processed CSV (torch-rechub / Scenario-Wise-Rec / AITM)


def csv_files(path: str) -> list[str]:
  """The processed CSV file(s) of `path` in time order (train, val, test for a directory)."""
  if os.path.isfile(path):
    return [path]
  if not os.path.isdir(path):
    raise DataError(f"{path}: no such file or directory")
  files = sorted(glob.glob(os.path.join(path, "*.csv")))
  if not files:
    raise DataError(f"{path}: no .csv file in this directory")
  split_of = {}
  for f in files:
    base = os.path.basename(f).lower()
    found = [s for s, pat in (("train", r"train"), ("val", r"val"), ("test", r"test"))
             if re.search(pat, base)]
    if len(found) != 1:
      raise DataError(f"{f}: cannot tell whether this file is the train, val or test split "
                      "(its name must contain exactly one of 'train', 'val', 'test'); pass "
                      "the files one by one or rename them")
    if found[0] in split_of:
      raise DataError(f"{path}: two {found[0]} files: {split_of[found[0]]} and {f}")
    split_of[found[0]] = f
  if "train" not in split_of:
    raise DataError(f"{path}: no train file (a name containing 'train') among {files}")
  return [split_of[s] for s in ("train", "val", "test") if s in split_of]


def _csv_layout(path: str) -> tuple[tuple[str, ...], bool]:
  """(column names, has_header) of a processed CSV from its first line."""
  with open(path, "rb") as f:
    head = f.readline()
  if not head.strip():
    raise DataError(f"{path}: the file is empty")
  cells = head.rstrip(b"\r\n").decode("latin-1").split(",")
  if cells[0] == "click" or not all(re.fullmatch(r"[-+]?[0-9.eE+-]+", c) for c in cells):
    return tuple(cells), True
  if len(cells) == len(CSV_COLUMNS_33):
    return CSV_COLUMNS_33, False
  if len(cells) == len(CSV_COLUMNS_20):
    return CSV_COLUMNS_20, False
  raise DataError(f"{path}: line 1: no header and {len(cells)} columns; a processed Ali-CCP "
                  f"CSV without a header must have {len(CSV_COLUMNS_33)} columns (torch-rechub) "
                  f"or {len(CSV_COLUMNS_20)} (AITM)")


def load_aliccp_csv(path: str, *, block_size: int = DEFAULT_BLOCK_SIZE
                    ) -> tuple[builder.EventLog, dict[str, np.ndarray], dict[str, Any]]:
  """Reads processed Ali-CCP CSV file(s) (module docstring). Returns (log, vocab, stats)."""
  files = csv_files(path)
  stats: dict[str, Any] = {"source_format": "aliccp processed csv", "files": files}
  item_names = None
  cols = {k: [] for k in ("sample_id", "click", "purchase", "user", "item", "scenario")}
  for file_index, fpath in enumerate(files):
    names, has_header = _csv_layout(fpath)
    names_here = tuple(f for f in ITEM_FIELDS if f in names)
    needed = ("click", "purchase") + USER_FIELDS + (SCENARIO_FIELD,)
    lacking = [c for c in needed + ("205",) if c not in names]
    if lacking:
      raise DataError(f"{fpath}: columns {lacking} not found; the file has {list(names)}")
    if item_names is None:
      item_names = names_here
    elif names_here != item_names:
      raise DataError(f"{fpath}: item columns {list(names_here)} differ from the earlier "
                      f"file's {list(item_names)}; all files must share one layout")
    include = needed + names_here
    types = {c: pa.int64() for c in include}
    rows = 0
    for block, line in iter_line_blocks(fpath, block_size, skip_header=has_header):
      t = read_block(block, names, types, source=fpath, first_line=line, include=include)
      arr = {c: t.column(c).to_numpy() for c in include}
      for name in ("click", "purchase"):
        bad = np.flatnonzero((arr[name] != 0) & (arr[name] != 1))
        if bad.size:
          raise DataError(f"{fpath}: line {line + int(bad[0])}: {name} must be 0 or 1, got "
                          f"{int(arr[name][bad[0]])}")
      for c in USER_FIELDS + names_here + (SCENARIO_FIELD,):
        bad = np.flatnonzero(arr[c] < 0)
        if bad.size:
          raise DataError(f"{fpath}: line {line + int(bad[0])}: column {c!r}: negative id "
                          f"{int(arr[c][bad[0]])}")
      n = t.num_rows
      rows += n
      cols["sample_id"].append(file_index * SAMPLE_ID_FILE_STRIDE + line + np.arange(n))
      cols["click"].append(arr["click"].astype(np.int8))
      cols["purchase"].append(arr["purchase"].astype(np.int8))
      cols["user"].append(np.stack([arr[c] for c in USER_FIELDS], 1))
      cols["item"].append(np.stack([arr[c] for c in names_here], 1))
      cols["scenario"].append(arr[SCENARIO_FIELD])
    if rows == 0:
      raise DataError(f"{fpath}: the file has no data rows")
    stats[f"rows_read_{os.path.basename(fpath)}"] = rows
  c = {k: np.concatenate(v) for k, v in cols.items()}
  inconsistent = (c["click"] == 0) & (c["purchase"] == 1)
  no_user = c["user"][:, 0] == 0
  no_scen = c["scenario"] == 0
  drop = np.zeros(inconsistent.shape, bool)
  for name, mask in (("dropped_click0_purchase1", inconsistent),
                     ("dropped_unknown_user", no_user), ("dropped_no_scenario", no_scen)):
    stats[name] = int(np.count_nonzero(mask & ~drop))
    drop |= mask
  keep = ~drop
  if not keep.any():
    raise DataError(f"{path}: no row left after the drop policies: {stats}")
  vocab: dict[str, np.ndarray] = {}
  user = np.zeros((int(keep.sum()), len(USER_FIELDS)), np.int32)
  for j, name in enumerate(USER_FIELDS):
    user[:, j], vocab[name] = reindex(c["user"][keep, j], missing=0)
  item = np.zeros((user.shape[0], len(item_names)), np.int32)
  for j, name in enumerate(item_names):
    item[:, j], vocab[name] = reindex(c["item"][keep, j], missing=0)
  scenario, vocab[SCENARIO_FIELD] = reindex(c["scenario"][keep][:, None], missing=0)
  stats["events"] = int(user.shape[0])
  log = _event_log(user, item, scenario, c["click"][keep], c["sample_id"][keep], None, vocab, path,
                   item_names)
  return log, vocab, stats
