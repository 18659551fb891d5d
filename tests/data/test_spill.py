"""The spilled log (`mscan_jax.data.spill`): a loader that writes its rows to disk and a build
over memory-mapped columns give the same dataset, byte for byte, as the log in memory."""

import dataclasses
import os

import numpy as np
import pytest

from mscan_jax.data import aliccp, builder, spill
from tests.data.test_aliccp import write_raw
from tests.data.test_builder import _synthetic_tiny_log, make_log


def _files(root):
  return sorted(os.path.relpath(os.path.join(d, f), root) for d, _, fs in os.walk(root)
                for f in fs)


def assert_same_files(a, b):
  files = _files(a)
  assert files == _files(b)
  assert "log/user.npy" in files and "log/cur_idx.npy" in files
  for f in files:
    with open(os.path.join(a, f), "rb") as x, open(os.path.join(b, f), "rb") as y:
      assert x.read() == y.read(), f


@pytest.fixture
def small_chunks(monkeypatch):
  """Blocks of 3 rows, so that every pass crosses many block boundaries."""
  monkeypatch.setattr(spill, "CHUNK_ROWS", 3)


def test_the_helpers_equal_numpy_on_mapped_arrays(tmp_path, small_chunks):
  rng = np.random.default_rng(0)
  arrays = {"a": rng.integers(0, 100, (11, 4)).astype(np.int32),
            "b": rng.random(11), "c": None}
  mapped = spill.spill_arrays(str(tmp_path), arrays)
  a, b = mapped["a"], mapped["b"]
  assert mapped["c"] is None and spill.is_mapped(a) and spill.is_mapped(a[2:5, 1])
  assert not spill.is_mapped(arrays["a"])
  keep = rng.random(11) < 0.5
  order = rng.permutation(11)
  np.testing.assert_array_equal(spill.select(a, keep), arrays["a"][keep])
  np.testing.assert_array_equal(spill.take(b, order), arrays["b"][order])
  np.testing.assert_array_equal(spill.column(a, 2), arrays["a"][:, 2])
  converted = spill.astype(a, np.int64)
  assert converted.dtype == np.int64 and spill.is_mapped(converted)
  np.testing.assert_array_equal(converted, arrays["a"])
  assert spill.astype(a, np.int32) is a
  spill.release(a, b, None, arrays["a"])            # in-memory arrays and None are skipped
  np.testing.assert_array_equal(a, arrays["a"])     # released pages read back the same
  for name, arr in (("m.npy", a), ("n.npy", arrays["a"])):
    spill.save(str(tmp_path / name), arr, np.int64)
    got = np.load(tmp_path / name)
    assert got.dtype == np.int64
    np.testing.assert_array_equal(got, arrays["a"])
  with pytest.raises(ValueError, match="expected"):
    spill.Spill(str(tmp_path / "s")).column("x", np.int32, (2,)).append(np.zeros((3, 3)))


@pytest.mark.parametrize("case", ["fixture", "synthetic_tiny"])
def test_a_build_over_a_spilled_log_equals_the_build_in_memory(tmp_path, small_chunks, case):
  """Every column of the log memory-mapped (`spill.spill_arrays`): the duplicate rows, the user
  filter, the time order and the writes go through `spill`'s block-by-block paths, and every
  stored file equals the in-memory build's."""
  log = _synthetic_tiny_log() if case == "synthetic_tiny" else make_log()
  kw = ({"max_cur_len": 5, "max_all_len": 10} if case == "synthetic_tiny" else
        {"max_cur_len": 2, "max_all_len": 3})
  columns = {f.name: getattr(log, f.name) for f in dataclasses.fields(log)
             if f.name not in builder._NOT_PER_EVENT}
  if case == "synthetic_tiny":           # rows out of time order: the build sorts them
    order = np.random.default_rng(0).permutation(log.label.shape[0])
    columns = {k: None if v is None else np.asarray(v)[order] for k, v in columns.items()}
    log = dataclasses.replace(log, **columns)
  mapped = dataclasses.replace(log, **spill.spill_arrays(str(tmp_path / "spill"), columns))
  assert spill.is_mapped(mapped.user) and spill.is_mapped(mapped.label)
  builder.build_dataset(str(tmp_path / "memory"), log, **kw)
  builder.build_dataset(str(tmp_path / "mapped"), mapped, **kw)
  assert_same_files(str(tmp_path / "memory"), str(tmp_path / "mapped"))
  if case == "synthetic_tiny":           # the filter and the time order wrote their copies
    made = os.listdir(tmp_path / "spill")
    assert any(".kept" in f for f in made) and any(".order" in f for f in made)


@pytest.mark.parametrize("block_size", [None, 90])
def test_the_spilled_aliccp_reader_equals_the_reader_in_memory(tmp_path, small_chunks,
                                                               block_size):
  """The raw Ali-CCP reader with `spill_dir` (what `prepare` runs): its log's columns are maps
  of the spill's files, equal to the in-memory reader's, and so is the built dataset."""
  d = write_raw(str(tmp_path / "raw"))
  kw = {} if block_size is None else {"block_size": block_size, "workers": 2}
  log, vocab, stats = aliccp.load_aliccp_raw(d, **kw)
  slog, svocab, sstats = aliccp.load_aliccp_raw(d, spill_dir=str(tmp_path / "spill"), **kw)
  assert spill.is_mapped(slog.user) and spill.is_mapped(slog.item)
  assert stats == sstats and vocab.keys() == svocab.keys()
  for k in vocab:
    np.testing.assert_array_equal(vocab[k], svocab[k], err_msg=k)
    assert vocab[k].dtype == svocab[k].dtype
  for f in dataclasses.fields(log):
    a, b = getattr(log, f.name), getattr(slog, f.name)
    if f.name in builder._NOT_PER_EVENT or a is None:
      assert (a is None and b is None) or a == b, f.name
      continue
    assert a.dtype == b.dtype and a.shape == b.shape, f.name
    np.testing.assert_array_equal(a, b, err_msg=f.name)
  kw = {"max_cur_len": 2, "max_all_len": 3, "min_scenarios_per_user": 1, "valid_fraction": 0.25}
  builder.build_dataset(str(tmp_path / "memory"), log, vocab=vocab, **kw)
  builder.build_dataset(str(tmp_path / "mapped"), slog, vocab=svocab, **kw)
  assert_same_files(str(tmp_path / "memory"), str(tmp_path / "mapped"))


def test_prepare_spills_beside_out_and_removes_the_spill(tmp_path):
  from mscan_jax import config as config_lib
  from mscan_jax.data import prepare
  d = write_raw(str(tmp_path / "raw"))
  data = config_lib.get_config().data
  data.min_scenarios_per_user, data.valid_fraction = 1, 0.25
  prepare.prepare("aliccp", d, str(tmp_path / "built"), data)
  assert sorted(os.listdir(tmp_path)) == ["built", "raw"]        # no spill folder left
  log, vocab, _ = aliccp.load_aliccp_raw(d)
  from mscan_jax.data import datasets
  opts = datasets.build_options(prepare.dataset_config("aliccp", d, data))
  builder.build_dataset(str(tmp_path / "memory"), log, vocab=vocab, **opts)
  for f in ("log/user.npy", "log/item.npy", "log/cur_idx.npy", "splits/test.npy"):
    with open(tmp_path / "built" / f, "rb") as x, open(tmp_path / "memory" / f, "rb") as y:
      assert x.read() == y.read(), f


def test_prepare_refuses_before_the_spill_when_the_disk_is_short(tmp_path, monkeypatch):
  """The reader's spill (about `aliccp.SPILL_BYTES_PER_EVENT` per skeleton row, the rows
  estimated from the files' size) is checked against the free disk before anything is written."""
  from mscan_jax import config as config_lib
  from mscan_jax.data import prepare
  from mscan_jax.data.schema import DataError
  d = write_raw(str(tmp_path / "raw"))
  need = aliccp.spill_bytes(d)
  assert need > 0
  real = prepare.shutil.disk_usage
  monkeypatch.setattr(prepare.shutil, "disk_usage", lambda p: real(p)._replace(free=need - 1))
  with pytest.raises(DataError, match=r"the reader's spill of the raw rows needs about .* GB"):
    prepare.prepare("aliccp", d, str(tmp_path / "built"), config_lib.get_config().data)
  assert sorted(os.listdir(tmp_path)) == ["raw"]                  # nothing written


@pytest.mark.skipif(spill.resident_file_bytes() is None, reason="no /proc/self/statm")
def test_read_pages_count_as_resident_file_pages_until_released(tmp_path):
  """What `resident_file_bytes` measures is what `release` lets go of: reading a mapped 32 MiB
  column adds about that much to it, and releasing the column takes it away again."""
  n = 8 << 20                                        # int32 rows: 32 MiB
  arr = spill.spill_arrays(str(tmp_path), {"a": np.arange(n, dtype=np.int32)})["a"]
  before = spill.resident_file_bytes()
  assert int(arr.sum(dtype=np.int64)) == n * (n - 1) // 2       # every page read
  read = spill.resident_file_bytes()
  spill.release(arr)
  after = spill.resident_file_bytes()
  assert read - before > 28 << 20
  assert read - after > 28 << 20


def test_gather_releases_the_dataset_pages_past_its_budget(tmp_path, monkeypatch):
  """A dataset that fits in the page budget is never released; past its budget `gather`
  releases after the batch, and the next batch reads back the same."""
  from mscan_jax.data.schema import BuiltDataset
  from tests.data.test_builder import build
  _, ds = build(tmp_path)
  rows = np.arange(ds.num_events)
  want = ds.gather(rows)
  tight = BuiltDataset(ds.path, page_budget=0)
  tight.gather(rows)                                 # the pages released (a real release) ...
  got = tight.gather(rows)                           # ... and read again
  for key in want:
    np.testing.assert_array_equal(got[key], want[key], err_msg=key)
  calls = []
  monkeypatch.setattr(BuiltDataset, "release_pages", lambda self: calls.append(1))
  assert ds.page_budget is None                      # the fixture fits in the default budget
  ds.gather(rows)
  assert calls == []
  monkeypatch.setattr(spill, "resident_file_bytes", lambda: 1)
  tight.gather(rows[:3])
  assert calls == [1]
  monkeypatch.setattr(spill, "resident_file_bytes", lambda: 0)      # within the budget
  tight.gather(rows[:3])
  monkeypatch.setattr(spill, "resident_file_bytes", lambda: None)   # no /proc: never
  tight.gather(rows[:3])
  assert calls == [1]
