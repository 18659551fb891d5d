"""Shared plumbing of the raw-format dataset loaders (`aliccp`, `cloudtheme`, `recbole`).

Streaming: `iter_line_blocks` reads a text file in blocks of whole lines and knows the file
line of each block's first line; `read_block` parses one block with pyarrow's CSV reader into
typed columns and turns any malformed line (wrong column count, a cell of the wrong type) into
a `DataError` naming the file and the line; `ordered_map` parses blocks on a few threads and
yields them in file order. Memory is bounded by a few blocks, whatever the file's size.

Ids: the convention of the generic log loader (`mscan_jax.data.log`): the distinct raw values
of a field, in sorted order (numbers numerically, strings byte-wise), get ids 1..V; id 0 is
padding / unknown. `vocab[k]` is the raw value of id k and `vocab[0]` a placeholder (0 or ""),
saved with the built dataset as `vocab/<field>.npy` so predictions map back to raw ids. Unlike
`log.py`, whose logs must not have missing values, raw formats have fields that may be absent
from a row (an Ali-CCP feature list without a brand, an item that never appears in a click
log): such entries are marked by `missing` and get id 0, and no vocab entry.
"""

from __future__ import annotations

import collections
import concurrent.futures
import io
import os
import re
from typing import Any, Iterator, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv

from mscan_jax.data.schema import DataError

DEFAULT_BLOCK_SIZE = 32 << 20                    # bytes per block read from a raw file
DEFAULT_WORKERS = min(4, os.cpu_count() or 1)    # threads parsing blocks


# ---------------------------------------------------------------------------------------
# Streaming


def iter_line_blocks(path: str, block_size: int = DEFAULT_BLOCK_SIZE,
                     skip_header: bool | bytes = False) -> Iterator[tuple[bytes, int]]:
  """Yields (block, first_line) with blocks of whole lines of about `block_size` bytes.

  `first_line` is the 1-based file line of the block's first line. The first line is skipped
  as a header if `skip_header` is True, or is bytes that the line starts with. A line longer
  than `block_size` makes a longer block. The last line needs no trailing newline.
  """
  if block_size < 1:
    raise ValueError(f"block_size must be >= 1, got {block_size}")
  line = 1
  carry = b""
  with open(path, "rb") as f:
    if skip_header is not False:
      head = f.readline()
      if skip_header is True or head.startswith(skip_header):
        line = 2
      else:
        carry = head
    while True:
      chunk = f.read(block_size)
      if not chunk:
        if carry:
          yield carry, line
        return
      buf = carry + chunk if carry else chunk
      cut = buf.rfind(b"\n")
      if cut < 0:
        carry = buf
        continue
      block, carry = buf[:cut + 1], buf[cut + 1:]
      yield block, line
      line += int(np.count_nonzero(np.frombuffer(block, np.uint8) == 10))


def read_block(block: bytes, names: Sequence[str], types: dict[str, pa.DataType], *,
               source: str, first_line: int, include: Sequence[str] | None = None,
               delimiter: str = ",") -> pa.Table:
  """Parses one block of CSV lines into typed columns; a bad line -> `DataError` with its line.

  No quoting (Ali-CCP and RecBole files have none); empty lines are errors (a wrong column
  count), never skipped, so row k of the table is line `first_line + k`. Line numbers in errors
  are the file's (`first_line` is the block's first line), never counted from the block.
  """
  read = pacsv.ReadOptions(column_names=list(names), block_size=max(len(block) + 1, 1 << 16))
  conv = pacsv.ConvertOptions(column_types=types, include_columns=list(include or names),
                              strings_can_be_null=False, quoted_strings_can_be_null=False)

  opts = pacsv.ParseOptions(delimiter=delimiter, quote_char=False, escape_char=False,
                            newlines_in_values=False, ignore_empty_lines=False)
  read.use_threads = False
  try:
    table = pacsv.read_csv(io.BytesIO(block), read_options=read, parse_options=opts,
                           convert_options=conv)
  except pa.ArrowInvalid as e:
    raise _bad_line(block, names, types, source=source, first_line=first_line,
                    include=include, delimiter=delimiter, cause=e) from None
  # pyarrow ends a row at \r as well as at \n: a stray \r (binary data) adds a row, and row k
  # would no longer be line first_line + k.
  if table.num_rows != block.count(b"\n") + (0 if block.endswith(b"\n") else 1):
    raise _bad_line(block, names, types, source=source, first_line=first_line,
                    include=include, delimiter=delimiter, cause=None)
  # pyarrow reads an empty line as a row of empty cells (null or ""): report it instead.
  # An empty line has an empty first cell, so only blocks with one are searched.
  first = pacsv.read_csv(io.BytesIO(block), read_options=read, parse_options=pacsv.ParseOptions(
      delimiter=delimiter, quote_char=False, ignore_empty_lines=False),
      convert_options=pacsv.ConvertOptions(include_columns=[names[0]],
                                           column_types={names[0]: pa.binary()})) \
      if names[0] not in table.column_names else table
  c0 = first.column(names[0])
  empty0 = pc.is_null(c0) if not pa.types.is_binary(c0.type) and not pa.types.is_string(c0.type) \
      else pc.equal(pc.binary_length(c0), 0)
  if pc.any(empty0).as_py():
    at = 0 if block.startswith(b"\n") else block.find(b"\n\n") + 1
    if at > 0 or block.startswith(b"\n"):
      line = first_line + block.count(b"\n", 0, at)
      raise DataError(f"{source}: line {line}: empty line (expected {len(names)} columns "
                      f"separated by {delimiter!r})")
  for name in table.column_names:
    col = table.column(name)
    if col.null_count:
      k = int(np.flatnonzero(col.is_null().to_numpy(zero_copy_only=False))[0])
      raise DataError(f"{source}: line {first_line + k}: column {name!r} is empty")
  return table


_INT64 = (-(1 << 63), (1 << 63) - 1)


def _bad_line(block: bytes, names: Sequence[str], types: dict[str, pa.DataType], *, source: str,
              first_line: int, include: Sequence[str] | None, delimiter: str,
              cause: Exception | None) -> DataError:
  """The DataError of the first bad line of a block that pyarrow refused (error path only).

  Read line by line in Python, so that the line number is the file's (pyarrow counts rows from
  the block's start) and binary data is shown, not decoded: a wrong column count, an empty
  line, a stray carriage return, a non-integer (or out-of-range) cell of an integer column, or
  text that is not UTF-8 in a text column.
  """
  lines = block.split(b"\n")
  if block.endswith(b"\n"):
    lines.pop()
  wanted = set(include or names)
  delim = delimiter.encode()
  for k, raw in enumerate(lines):
    line = raw[:-1] if raw.endswith(b"\r") else raw             # \r\n line ends are fine
    where = f"{source}: line {first_line + k}"
    if not line:
      return DataError(f"{where}: empty line (expected {len(names)} columns separated by "
                       f"{delimiter!r})")
    cells = line.split(delim)
    if len(cells) != len(names):
      return DataError(f"{where}: expected {len(names)} columns separated by {delimiter!r}, got "
                       f"{len(cells)}: {_show(line.decode('latin-1'))}")
    if b"\r" in line:
      return DataError(f"{where}: a carriage return (\\r) inside the line (binary data?): "
                       f"{_show(line.decode('latin-1'))}")
    for name, cell in zip(names, cells):
      typ = types.get(name, pa.string())
      if name not in wanted:
        continue
      if pa.types.is_integer(typ):
        if not re.fullmatch(rb"[+-]?[0-9]+", cell):
          return DataError(f"{where}: column {name!r}: {_show(cell.decode('latin-1'))} is not "
                           "an integer")
        if not _INT64[0] <= int(cell) <= _INT64[1]:
          return DataError(f"{where}: column {name!r}: {cell.decode()} is out of the int64 range")
      elif pa.types.is_string(typ) or pa.types.is_large_string(typ):
        try:
          cell.decode("utf-8")
        except UnicodeDecodeError as e:
          return DataError(f"{where}: column {name!r}: not UTF-8 (byte 0x{cell[e.start]:02x}): "
                           f"{_show(cell.decode('latin-1'))}")
  last = first_line + max(len(lines) - 1, 0)
  return DataError(f"{source}: lines {first_line}-{last}: cannot be parsed"
                   + (f" ({cause})" if cause is not None else ""))


def _show(text: Any, limit: int = 120) -> str:
  s = repr(text)
  return s if len(s) <= limit else s[:limit] + "...'"



def check_file(path: str) -> None:
  """A `DataError` unless `path` is a non-empty file."""
  if not os.path.isfile(path):
    raise DataError(f"{path}: no such file")
  if os.path.getsize(path) == 0:
    raise DataError(f"{path}: the file is empty")


def read_header(path: str, delimiter: str = ",") -> list[str]:
  """The column names of a CSV file's first line."""
  check_file(path)
  with open(path, "rb") as f:
    head = f.readline().rstrip(b"\r\n").decode("utf-8", errors="replace")
  if not head:
    raise DataError(f"{path}: line 1: empty header line")
  return head.split(delimiter)


def check_unique_columns(names: Sequence[str], where: str,
                         wanted: Sequence[str] | None = None) -> None:
  """A `DataError` naming the columns of `wanted` (default: every one) whose name appears more
  than once in `names` (a file's header or schema): a reader would take one of them silently.
  `where` starts the message (the file, and the line for a header)."""
  counts = collections.Counter(names)
  dup = sorted({c for c in (names if wanted is None else wanted) if counts[c] > 1})
  if dup:
    raise DataError(f"{where}: column(s) {dup} appear more than once; give each column its "
                    "own name")


def read_csv_with_header(path: str, types: dict[str, pa.DataType], *, delimiter: str = ",",
                         include: Sequence[str] | None = None,
                         block_size: int = DEFAULT_BLOCK_SIZE) -> tuple[pa.Table, list[int]]:
  """A headed CSV file as one table of the `include` columns (default: all, typed by `types`,
  others as strings). Returns (table, block_lines): block k's first row is file line
  block_lines[k] (use `line_of`). An empty file or a header without rows is a `DataError`."""
  names = read_header(path, delimiter)
  check_unique_columns(names, f"{path}: line 1")
  include = list(include or names)
  lacking = [c for c in include if c not in names]
  if lacking:
    raise DataError(f"{path}: column(s) {lacking} not found; the header has {names}")
  all_types = {c: types.get(c, pa.string()) for c in include}
  tables, lines, starts, rows = [], [], [], 0
  for block, line in iter_line_blocks(path, block_size, skip_header=True):
    t = read_block(block, names, all_types, source=path, first_line=line, include=include,
                   delimiter=delimiter)
    tables.append(t)
    lines.append(line)
    starts.append(rows)
    rows += t.num_rows
  if rows == 0:
    raise DataError(f"{path}: the file has a header but no data rows")
  return pa.concat_tables(tables).combine_chunks(), [starts, lines]


def row_lines(blocks: list, n: int) -> np.ndarray:
  """(n,) int64 file line of every data row of a table from `read_csv_with_header`."""
  starts, lines = blocks
  rows = np.arange(n)
  b = np.searchsorted(np.asarray(starts), rows, side="right") - 1
  return np.asarray(lines, np.int64)[b] + rows - np.asarray(starts, np.int64)[b]


def line_of(blocks: list, row: int) -> int:
  """File line of data row `row` of a table from `read_csv_with_header`."""
  starts, lines = blocks
  b = int(np.searchsorted(starts, row, side="right")) - 1
  return lines[b] + row - starts[b]


def ordered_map(fn, items: Iterator[tuple], workers: int) -> Iterator[Any]:
  """fn(*item) for each item, computed by `workers` threads, yielded in input order.

  pyarrow and large numpy operations release the GIL, so blocks are parsed in parallel; at
  most workers + 1 blocks are in flight, which bounds memory. The first failing item in input
  order raises.
  """
  if workers <= 1:
    for item in items:
      yield fn(*item)
    return
  with concurrent.futures.ThreadPoolExecutor(workers) as ex:
    pending: collections.deque = collections.deque()
    try:
      for item in items:
        pending.append(ex.submit(fn, *item))
        if len(pending) > workers:
          yield pending.popleft().result()
      while pending:
        yield pending.popleft().result()
    finally:
      for fut in pending:
        fut.cancel()


# ---------------------------------------------------------------------------------------
# Ids


def reindex(values: np.ndarray, missing=None) -> tuple[np.ndarray, np.ndarray]:
  """Ids 1..V by sorted distinct raw value; entries equal to `missing` get id 0.

  Args:
    values: (...) integer or string array of raw values.
    missing: the raw value that means "absent" (e.g. -1), or None if every entry is a value.
  Returns:
    ids: int32 array of the shape of `values`.
    vocab: (V+1,) raw value of each id, entry 0 a placeholder.
  """
  values = np.asarray(values)
  flat = values.reshape(-1)
  if missing is not None:
    present = flat != missing
    uniq, inv = np.unique(flat[present], return_inverse=True)
    ids = np.zeros(flat.shape, np.int32)
    ids[present] = inv.astype(np.int32) + 1
  else:
    uniq, inv = np.unique(flat, return_inverse=True)
    ids = inv.astype(np.int32) + 1
  return ids.reshape(values.shape), _with_placeholder(uniq)


def reindex_with_vocab(values: np.ndarray, vocab: np.ndarray, missing=None) -> np.ndarray:
  """Ids of `values` under an existing vocab (from `reindex` or `merge_vocab`).

  Values not in the vocab, or equal to `missing`, get id 0. (...) -> (...) int32.
  """
  values = np.asarray(values)
  keys = vocab[1:]
  if keys.shape[0] == 0:
    return np.zeros(values.shape, np.int32)
  pos = np.searchsorted(keys, values)
  pos_c = np.minimum(pos, keys.shape[0] - 1)
  found = keys[pos_c] == values
  if missing is not None:
    found &= values != missing
  return np.where(found, pos_c + 1, 0).astype(np.int32)


def merge_vocab(parts: Sequence[np.ndarray], missing=None) -> np.ndarray:
  """The vocab (V+1,) of the union of the raw values in `parts` (entry 0 a placeholder)."""
  flat = [np.asarray(p).reshape(-1) for p in parts]
  allv = np.unique(np.concatenate(flat)) if flat else np.zeros(0, np.int64)
  if missing is not None:
    allv = allv[allv != missing]
  return _with_placeholder(allv)


def compact(ids: np.ndarray, vocab: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """Drops the vocab entries no id uses; ids keep their (sorted) order, 0 stays 0.

  Returns (new ids of the shape of `ids`, int32; the compacted vocab)."""
  ids = np.asarray(ids)
  used = np.unique(ids[ids > 0])
  new = np.zeros(vocab.shape[0], np.int32)
  new[used] = np.arange(1, used.shape[0] + 1, dtype=np.int32)
  return new[ids], vocab[np.concatenate([[0], used])]


def _with_placeholder(uniq: np.ndarray) -> np.ndarray:
  placeholder = "" if uniq.dtype.kind in "US" else 0
  return np.concatenate([np.array([placeholder], dtype=uniq.dtype), uniq])
