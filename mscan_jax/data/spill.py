"""Per-event columns on disk, so that a loader and the build hold a fixed amount of memory
whatever the number of events (issue 23: Ali-CCP's 85M events on a 24 GB machine).

A loader that spills writes each column block by block (`Spill.column`: plain appends, no
writable map) and hands the builder read-only memory maps (`np.memmap`). NumPy treats them as
arrays, so the builder's code is the same for a log in memory and a log on disk; what differs
is where it must not make a whole in-memory copy:

- `release(*arrays)`: the pages of a mapped array that the process has read count in its
  resident set until it lets them go (clean file pages, read again from the page cache or the
  disk when needed). Whole-column passes over a mapped log release as they go.
- `resident_file_bytes()`: how much of the resident set such pages are now (Linux), so that a
  reader can release them when they pass a budget (`BuiltDataset.gather`).
- `row_chunks(arr)`: (lo, hi, arr[lo:hi]) over blocks of rows, releasing each after use.
- `select(arr, keep)` and `take(arr, rows)`: a row selection or a permutation of a mapped array
  is written to a new file beside it (`<name>.<suffix>.npy`, mapped read-only); an in-memory
  array is indexed as before, so the result has the same bytes either way.
- `save(path, arr, dtype)`: `np.save` of an array, block by block for a mapped one.

The folder of a spill is the caller's (`prepare` puts one beside `--out` and removes it).
"""

from __future__ import annotations

import mmap
import os
from typing import Iterator, Sequence

import numpy as np

CHUNK_ROWS = 1 << 18            # rows per block of a pass over a mapped array


def _mapping(arr) -> mmap.mmap | None:
  """The `mmap` under a (view of a) memory-mapped array, else None."""
  base = arr
  while base is not None:
    if isinstance(base, mmap.mmap):
      return base
    base = getattr(base, "base", None)
  return None


def is_mapped(arr) -> bool:
  """Whether `arr` is (a view of) a memory-mapped file."""
  return arr is not None and _mapping(arr) is not None


def release(*arrays) -> None:
  """Lets go of the resident pages of every mapped array of `arrays` (others are skipped): the
  file keeps the data, a later read maps it again."""
  for arr in arrays:
    m = None if arr is None else _mapping(arr)
    if m is not None and not m.closed:
      m.madvise(mmap.MADV_DONTNEED)


def resident_file_bytes() -> int | None:
  """Bytes of this process's resident set that are file-backed or shared pages (the third field
  of Linux's `/proc/self/statm`, in pages): the mapped pages `release` lets go of. None where
  the system has no such file."""
  try:
    with open("/proc/self/statm", "rb") as f:
      return int(f.read().split()[2]) * mmap.PAGESIZE
  except (OSError, ValueError, IndexError):
    return None


def row_chunks(arr: np.ndarray, rows: int = CHUNK_ROWS
               ) -> Iterator[tuple[int, int, np.ndarray]]:
  """(lo, hi, arr[lo:hi]) over the rows of `arr`, the mapped pages released after each."""
  n = int(np.shape(arr)[0])
  for lo in range(0, n, rows):
    hi = min(lo + rows, n)
    yield lo, hi, arr[lo:hi]
    release(arr)


class Spill:
  """Columns written block by block: `column(name, dtype, tail)` gives a writer whose
  `append(block)` adds rows and whose `finish()` returns the whole column: mapped read-only from
  a file of `folder`, or, with no folder, concatenated in memory (the same values either way)."""

  def __init__(self, folder: str | None = None):
    if folder:
      os.makedirs(folder, exist_ok=True)
    self.folder = folder

  def column(self, name: str, dtype, tail: Sequence[int] = ()):
    if not self.folder:
      return MemoryColumn(np.dtype(dtype), tuple(tail))
    return ColumnWriter(os.path.join(self.folder, f"{name}.bin"), np.dtype(dtype), tuple(tail))


class MemoryColumn:
  """`ColumnWriter`'s interface in memory: the blocks concatenated by `finish()`."""

  def __init__(self, dtype: np.dtype, tail: tuple[int, ...]):
    self.dtype, self.tail, self.rows, self._blocks = dtype, tail, 0, []

  def append(self, block: np.ndarray) -> None:
    block = np.asarray(block, dtype=self.dtype)
    if block.shape[1:] != self.tail:
      raise ValueError(f"a block of shape {block.shape}, expected (n,) + {self.tail}")
    self._blocks.append(block)
    self.rows += block.shape[0]

  def finish(self) -> np.ndarray:
    out = (np.concatenate(self._blocks) if self._blocks
           else np.zeros((0,) + self.tail, self.dtype))
    self._blocks = []
    return out


class ColumnWriter:
  """Rows appended to a raw file; `finish()` maps it read-only as (rows,) + tail."""

  def __init__(self, path: str, dtype: np.dtype, tail: tuple[int, ...]):
    self.path, self.dtype, self.tail, self.rows = path, dtype, tail, 0
    self._f = open(path, "wb")

  def append(self, block: np.ndarray) -> None:
    block = np.ascontiguousarray(block, dtype=self.dtype)
    if block.shape[1:] != self.tail:
      raise ValueError(f"{self.path}: a block of shape {block.shape}, expected (n,) + {self.tail}")
    self._f.write(block.data)
    self.rows += block.shape[0]

  def finish(self) -> np.ndarray:
    self._f.close()
    if self.rows == 0:
      return np.zeros((0,) + self.tail, self.dtype)
    return np.memmap(self.path, dtype=self.dtype, mode="r", shape=(self.rows,) + self.tail)


def _beside(arr: np.ndarray, suffix: str) -> str:
  """A new file name beside the file `arr` maps."""
  name = getattr(arr, "filename", None)
  base = arr
  while name is None and base is not None:
    base = getattr(base, "base", None)
    name = getattr(base, "filename", None)
  if name is None:
    raise ValueError("a mapped array without a file name")
  stem = os.path.splitext(name)[0]
  k = 0
  while os.path.exists(f"{stem}.{suffix}{k}.bin"):
    k += 1
  return f"{stem}.{suffix}{k}.bin"


def select(arr: np.ndarray, keep: np.ndarray) -> np.ndarray:
  """`arr[keep]` for an (E,) bool `keep`: for a mapped `arr`, written block by block to a new
  file beside it and returned mapped read-only."""
  if not is_mapped(arr):
    return np.asarray(arr)[keep]
  out = ColumnWriter(_beside(arr, "kept"), arr.dtype, arr.shape[1:])
  for lo, hi, block in row_chunks(arr):
    out.append(block[keep[lo:hi]])
  return out.finish()


def take(arr: np.ndarray, rows: np.ndarray) -> np.ndarray:
  """`arr[rows]` for an integer `rows`: for a mapped `arr`, written block by block (of `rows`)
  to a new file beside it and returned mapped read-only."""
  if not is_mapped(arr):
    return np.asarray(arr)[rows]
  out = ColumnWriter(_beside(arr, "order"), arr.dtype, arr.shape[1:])
  for lo in range(0, rows.shape[0], CHUNK_ROWS):
    out.append(arr[rows[lo:lo + CHUNK_ROWS]])
    release(arr)
  return out.finish()


def astype(arr: np.ndarray, dtype) -> np.ndarray:
  """`arr.astype(dtype, copy=False)`: for a mapped `arr` of another dtype, converted block by
  block into a new file beside it and returned mapped read-only."""
  dtype = np.dtype(dtype)
  if not is_mapped(arr):
    return np.asarray(arr).astype(dtype, copy=False)
  if arr.dtype == dtype:
    return arr
  out = ColumnWriter(_beside(arr, dtype.name), dtype, arr.shape[1:])
  for _, _, block in row_chunks(arr):
    out.append(block)
  return out.finish()


def column(arr: np.ndarray, j: int) -> np.ndarray:
  """Column j of an (E, F) array as a contiguous in-memory (E,) array, read block by block."""
  if not is_mapped(arr):
    return np.ascontiguousarray(np.asarray(arr)[:, j])
  out = np.empty(arr.shape[0], arr.dtype)
  for lo, hi, block in row_chunks(arr):
    out[lo:hi] = block[:, j]
  return out


def write_npy_header(f, dtype, shape: Sequence[int]) -> None:
  """The `.npy` header of a C-order array of `dtype` and `shape`, written to the open binary
  file `f`: its rows are then appended with plain writes (no writable map, whose dirty pages
  would count as resident)."""
  np.lib.format.write_array_header_1_0(f, {"descr": np.lib.format.dtype_to_descr(np.dtype(dtype)),
                                           "fortran_order": False, "shape": tuple(shape)})


def save(path: str, arr: np.ndarray, dtype) -> None:
  """`np.save(path, arr as dtype)`; a mapped `arr` is converted and written block by block."""
  dtype = np.dtype(dtype)
  if not is_mapped(arr):
    np.save(path, np.ascontiguousarray(arr, dtype=dtype))
    return
  with open(path, "wb") as f:
    write_npy_header(f, dtype, arr.shape)
    for _, _, block in row_chunks(arr):
      f.write(np.ascontiguousarray(block, dtype=dtype).data)


def spill_arrays(folder: str, arrays: dict[str, np.ndarray | None]
                 ) -> dict[str, np.ndarray | None]:
  """Each array of `arrays` written to `folder` and mapped read-only (None stays None): an
  in-memory log made into a spilled one (tests, benchmarks)."""
  spill = Spill(folder)
  out = {}
  for name, arr in arrays.items():
    if arr is None:
      out[name] = None
      continue
    arr = np.asarray(arr)
    w = spill.column(name, arr.dtype, arr.shape[1:])
    w.append(arr)
    out[name] = w.finish()
  return out
