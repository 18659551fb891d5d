"""Generic log loader (mscan_jax.data.log): re-indexing, file formats, every bad-input error."""

import os
import re

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest

from mscan_jax import config as config_lib
from mscan_jax.data import datasets
from mscan_jax.data import log as log_lib
from mscan_jax.data.schema import BuiltDataset, DataError

COLS = log_lib.LogColumns(user="uid", item="iid", scenario="scene", label="click", time="ts",
                          item_extra=("cat",))

# Rows are out of time order on purpose; ids are raw strings / unsorted integers.
CSV = """uid,iid,scene,click,ts,cat,unused
bob,30,home,1,105,x,9
amy,10,feed,0,101,y,9
bob,10,feed,0,102,y,9
cat,20,home,1,100,x,9
amy,30,home,0,104,x,9
"""


def write(tmp_path, text, name="log.csv"):
  path = os.path.join(tmp_path, name)
  with open(path, "w") as f:
    f.write(text)
  return path


def test_reindexes_by_sorted_raw_value(tmp_path):
  log, vocab = log_lib.load_log(write(tmp_path, CSV), COLS)
  # user: amy=1 bob=2 cat=3; item: 10=1 20=2 30=3; scenario: feed=1 home=2; cat: x=1 y=2.
  np.testing.assert_array_equal(log.user, [[2], [1], [2], [3], [1]])
  np.testing.assert_array_equal(log.item, [[3, 1], [1, 2], [1, 2], [2, 1], [3, 1]])
  np.testing.assert_array_equal(log.scenario, [[2], [1], [1], [2], [2]])
  np.testing.assert_array_equal(log.user_id, [1, 0, 1, 2, 0])
  np.testing.assert_array_equal(log.label, [1, 0, 0, 1, 0])
  np.testing.assert_array_equal(log.time, [105, 101, 102, 100, 104])
  np.testing.assert_array_equal(log.sample_id, np.arange(5))
  assert log.true_like is None and log.true_prob is None
  assert [(f.name, f.vocab_size) for f in log.user_fields] == [("uid", 4)]
  assert [(f.name, f.vocab_size) for f in log.item_fields] == [("iid", 4), ("cat", 3)]
  assert [(f.name, f.vocab_size) for f in log.scenario_fields] == [("scene", 3)]
  assert list(vocab["uid"]) == ["", "amy", "bob", "cat"]        # entry 0: padding placeholder
  assert list(vocab["iid"]) == [0, 10, 20, 30]
  assert list(vocab["scene"]) == ["", "feed", "home"]
  # Mapping back through the vocab recovers every raw value.
  assert list(vocab["uid"][log.user[:, 0]]) == ["bob", "amy", "bob", "cat", "amy"]


def test_csv_and_parquet_give_the_same_log(tmp_path):
  csv_path = write(tmp_path, CSV)
  pq_path = os.path.join(tmp_path, "log.parquet")
  pq.write_table(pacsv.read_csv(csv_path), pq_path)
  a, va = log_lib.load_log(csv_path, COLS)
  b, vb = log_lib.load_log(pq_path, COLS)
  for key in ("user", "item", "scenario", "label", "user_id", "time", "sample_id"):
    np.testing.assert_array_equal(getattr(a, key), getattr(b, key))
  assert a.user_fields == b.user_fields and a.item_fields == b.item_fields
  for k in va:
    np.testing.assert_array_equal(va[k], vb[k])


def test_no_time_column_means_row_order_and_iso_timestamps_are_read(tmp_path):
  cols = log_lib.LogColumns(user="u", item="i", scenario="s", label="y", time=None)
  log, _ = log_lib.load_log(write(tmp_path, "u,i,s,y\n1,1,1,0\n2,2,2,1\n"), cols)
  assert log.time is None
  cols = log_lib.LogColumns(user="u", item="i", scenario="s", label="y", time="t")
  text = "u,i,s,y,t\n1,1,1,0,2024-01-02 00:00:00\n2,2,2,1,2024-01-01 00:00:00\n"
  log, _ = log_lib.load_log(write(tmp_path, text), cols)
  assert log.time.dtype == np.int64 and log.time[0] > log.time[1]


def test_boolean_and_float_zero_one_labels_are_accepted(tmp_path):
  cols = log_lib.LogColumns(user="u", item="i", scenario="s", label="y", time=None)
  for text in ("u,i,s,y\n1,1,1,true\n2,2,2,false\n", "u,i,s,y\n1,1,1,1.0\n2,2,2,0.0\n"):
    log, _ = log_lib.load_log(write(tmp_path, text), cols)
    np.testing.assert_array_equal(log.label, [1, 0])
    assert log.label.dtype == np.int8


GOOD_ROW = "bob,30,home,1,105,x,9\n"
HEADER = "uid,iid,scene,click,ts,cat,unused\n"


@pytest.mark.parametrize("bad_row, column, fragment", [
    ("amy,,home,1,106,x,9\n", "iid", "missing value"),             # null id
    (",30,home,1,106,x,9\n", "uid", "missing value"),              # null user (string column)
    ("amy,30,home,0.5,106,x,9\n", "click", "0.5 is not 0 or 1"),   # float label
    ("amy,30,home,2,106,x,9\n", "click", "2 is not 0 or 1"),       # integer outside {0, 1}
    ("amy,30,home,yes,106,x,9\n", "click", "holds text"),          # string label
    ("amy,30,home,,106,x,9\n", "click", "missing label"),          # null label
    ("amy,30,home,1,,x,9\n", "ts", "missing timestamp"),           # null timestamp
    ("amy,30,home,1,soon,x,9\n", "ts", "'soon' is not a number"),  # unparseable timestamp
])
def test_bad_cell_names_file_column_and_row(tmp_path, bad_row, column, fragment):
  path = write(tmp_path, HEADER + GOOD_ROW * 3 + bad_row + GOOD_ROW)
  with pytest.raises(DataError) as e:
    log_lib.load_log(path, COLS)
  msg = str(e.value)
  assert path in msg and f"column {column!r}" in msg and "row 3 (line 5)" in msg, msg
  assert fragment in msg, msg


def test_a_bad_date_names_its_own_row(tmp_path):
  """A date column with one bad value at row 5 names row 5, not row 0 (a valid date that is no
  number); also for timestamps, and for a bad first row."""
  dates = [f"2024-01-{d:02d}" for d in range(1, 9)]
  for values, row in [(dates[:5] + ["2024-13-45"] + dates[6:], 5),
                      ([d + " 10:00:00" for d in dates[:5]] + ["noon"] + dates[6:], 5),
                      (["someday"] + dates[1:], 0)]:
    rows = [f"u{i % 3},{i % 4},s{i % 2},{i % 2},{v},x,9" for i, v in enumerate(values)]
    path = write(tmp_path, HEADER + "\n".join(rows) + "\n")
    with pytest.raises(DataError, match=rf"column 'ts' row {row} \(line {row + 2}\): timestamp "
                       rf"'{values[row]}' is not"):
      log_lib.load_log(path, COLS)


@pytest.mark.parametrize("column", [0, 2, 3, 4, 5])
def test_a_latin1_csv_is_reported_as_not_utf8(tmp_path, column):
  """A non-UTF-8 cell in any mapped column (an id, a label, the time) names its line and says
  the file is not UTF-8 (not "type binary", not a bare conversion error)."""
  cells = "amy,30,home,1,106,x,9".split(",")
  cells[column] = "caf\xe9" if column != 4 else "10\xb06"
  path = os.path.join(tmp_path, "latin1.csv")
  with open(path, "wb") as f:
    f.write((HEADER + GOOD_ROW * 3 + ",".join(cells) + "\n" + GOOD_ROW).encode("latin-1"))
  with pytest.raises(DataError, match=r"latin1.csv: line 5: not UTF-8 \(byte 0x(e9|b0) .*a CSV "
                     r"log must be UTF-8 text"):
    log_lib.load_log(path, COLS)


def test_an_empty_line_or_a_short_row_names_its_line(tmp_path):
  """Found by the fuzz test below: an empty line was skipped silently, so every later row's
  "row k (line k + 2)" pointed one line off; a short row named pyarrow's row in its block."""
  path = write(tmp_path, HEADER + GOOD_ROW * 2 + "\n" + GOOD_ROW)
  with pytest.raises(DataError, match=r"log.csv: line 4: empty line"):
    log_lib.load_log(path, COLS)
  path = write(tmp_path, HEADER + GOOD_ROW * 3 + "amy,30\n" + GOOD_ROW)
  with pytest.raises(DataError, match=r"log.csv: line 5: 2 cells where the header has 7"):
    log_lib.load_log(path, COLS)


def test_bad_parquet_cells_name_the_row(tmp_path):
  path = os.path.join(tmp_path, "log.parquet")
  base = {"uid": [1, 2, 3], "iid": [1, 2, 3], "scene": [1, 1, 2], "click": [0, 1, 0],
          "ts": [1.0, 2.0, 3.0], "cat": [1, 1, 1]}
  for column, values, fragment in [("iid", [1, None, 3], "missing value"),
                                   ("ts", [1.0, 2.0, float("nan")], "missing timestamp"),
                                   ("click", [0.0, 1.0, 0.25], "0.25 is not 0 or 1")]:
    pq.write_table(pa.table({**base, column: values}), path)
    with pytest.raises(DataError, match=fragment) as e:
      log_lib.load_log(path, COLS)
    bad_row = values.index(None) if None in values else 2
    assert path in str(e.value) and f"column {column!r} row {bad_row}" in str(e.value)


def test_missing_file_column_and_unknown_format(tmp_path):
  with pytest.raises(DataError, match="no such file"):
    log_lib.load_log(os.path.join(tmp_path, "nope.csv"), COLS)
  with pytest.raises(DataError, match="unknown log format"):
    log_lib.load_log(write(tmp_path, CSV, "log.json"), COLS)
  path = write(tmp_path, CSV.replace("scene", "place"))
  with pytest.raises(DataError) as e:
    log_lib.load_log(path, COLS)
  assert path in str(e.value) and "'scene' (the scenario column) not found" in str(e.value)
  empty = write(tmp_path, HEADER, "empty.csv")
  with pytest.raises(DataError, match="no rows"):
    log_lib.load_log(empty, COLS)
  os.mkdir(os.path.join(tmp_path, "logs.csv"))
  with pytest.raises(DataError, match="logs.csv: is a directory; a log is one file"):
    log_lib.load_log(os.path.join(tmp_path, "logs.csv"), COLS)


def test_a_directory_given_for_a_log_file_says_so(tmp_path):
  """config.data.name=log with a directory (not a built one) as config.data.path: the message
  says a log file is expected, not "build it with prepare"."""
  c = config_lib.get_config()
  c.data.name, c.data.path = "log", str(tmp_path)
  with pytest.raises(DataError, match=r"is a directory, but config.data.name='log' reads a log "
                     r"file \(\.csv, .*\): give the file itself"):
    datasets.built_path(c.data)


def test_wrong_column_type(tmp_path):
  path = os.path.join(tmp_path, "log.parquet")
  pq.write_table(pa.table({"uid": [[1], [2]], "iid": [1, 2], "scene": [1, 2], "click": [0, 1],
                           "ts": [1, 2], "cat": [1, 1]}), path)
  with pytest.raises(DataError, match=r"column .uid. has type list<.*a categorical column must hold"):
    log_lib.load_log(path, COLS)


def test_a_column_mapped_twice_is_an_error():
  with pytest.raises(DataError, match="mapped more than once"):
    log_lib.LogColumns(user="u", item="i", scenario="s", label="y", time=None, user_extra=("i",))


def test_a_column_name_given_twice_in_the_file_is_refused(tmp_path):
  """Two columns named `click`: pyarrow would read the first one silently."""
  csv_path = write(tmp_path, CSV.replace("cat,unused", "cat,click", 1))
  with pytest.raises(DataError, match=re.escape(f"{csv_path}: column(s) ['click'] appear more "
                                                "than once")):
    log_lib.load_log(csv_path, COLS)
  pq_path = os.path.join(tmp_path, "log.parquet")
  table = pacsv.read_csv(write(tmp_path, CSV))
  pq.write_table(table.rename_columns([*table.column_names[:-1], "click"]), pq_path)
  with pytest.raises(DataError, match=re.escape(f"{pq_path}: column(s) ['click'] appear more")):
    log_lib.load_log(pq_path, COLS)
  # A repeated column the mapping does not read is no ambiguity.
  header, *rows = CSV.splitlines()
  two_unused = "\n".join([header + ",unused", *(row + ",8" for row in rows)]) + "\n"
  log, _ = log_lib.load_log(write(tmp_path, two_unused), COLS)
  np.testing.assert_array_equal(log.label, [1, 0, 0, 1, 0])


def test_log_columns_of_the_config():
  cfg = config_lib.get_config()
  assert datasets.log_columns(cfg.data) == log_lib.LogColumns(
      user="user_id", item="item_id", scenario="scenario_id", label="label", time="timestamp")
  cfg.data.columns.time = ""
  cfg.data.columns.item_extra = ("category",)
  cols = datasets.log_columns(cfg.data)
  assert cols.time is None and cols.item_extra == ("category",)


def test_build_from_log_writes_a_dataset_with_its_vocab(tmp_path):
  # Two users, each active in two scenarios, enough rows for three splits.
  rng = np.random.default_rng(0)
  n = 40
  table = pa.table({"uid": np.where(np.arange(n) % 2 == 0, "u7", "u3"),
                    "iid": rng.integers(100, 110, n), "scene": np.tile(["a", "a", "b", "b"], n // 4),
                    "click": rng.integers(0, 2, n), "ts": np.arange(n)[::-1].copy(),
                    "cat": rng.integers(0, 3, n)})
  path = os.path.join(tmp_path, "mylog.parquet")
  pq.write_table(table, path)
  out = os.path.join(tmp_path, "built")
  log_lib.build_from_log(path, out, COLS, max_cur_len=3, max_all_len=4, name="mylog")
  ds = BuiltDataset(out)
  assert [f.name for f in ds.schema.item_fields] == ["iid", "cat"]
  assert ds.schema.name == "mylog" and not ds.schema.has_truth
  assert list(np.load(os.path.join(out, "vocab", "uid.npy"))) == ["", "u3", "u7"]
  # Every stored row maps back to a raw value of the file.
  users = np.load(os.path.join(out, "vocab", "uid.npy"))[np.asarray(ds.log["user"][:, 0])]
  assert set(users) == {"u3", "u7"}


def test_a_log_file_is_built_once(tmp_path):
  """The registry builds a log file into the cache once (datasets.built_path), named by
  `datasets.log_label`; new settings build anew."""
  path = write(tmp_path, "user_id,item_id,scenario_id,label,timestamp\n" + "".join(
      f"{u},{i},{s},{(u + i) % 2},{t}\n"
      for t, (u, i, s) in enumerate((u, i, s) for i in range(5) for u in range(4) for s in (1, 2))))
  cfg = config_lib.get_config()
  cfg.data.cache_dir = os.path.join(tmp_path, "cache")
  cfg.data.max_cur_len, cfg.data.max_all_len = 2, 3
  cfg.data.name, cfg.data.path = "log", path
  out = datasets.built_path(cfg.data)
  assert BuiltDataset(out).schema.name == datasets.log_label(path, datasets.log_columns(cfg.data))
  stamp = os.path.getmtime(os.path.join(out, "schema.json"))
  assert datasets.built_path(cfg.data) == out
  assert os.path.getmtime(os.path.join(out, "schema.json")) == stamp
  assert os.listdir(cfg.data.cache_dir) == [os.path.basename(out)]   # no temporary left
  cfg.data.max_all_len = 4                                            # new settings: new build
  assert datasets.built_path(cfg.data) != out


# ---------------------------------------------------------------------------------------
# Ids are exact: integers or strings, never floats

BIG = 2**60
# Users 2^60 + k stay apart (as float64 they are all one number); one id needs uint64, one
# id has more digits than any integer type.
WIDE_IDS = {"int64": [BIG + k for k in range(4)],
            "uint64": [BIG + k for k in range(3)] + [2**63 + 5],
            "decimal": [BIG + k for k in range(3)] + [10**25 + 1]}


def _wide_table(users):
  n = 24
  return {"uid": [users[k % 4] for k in range(n)], "iid": [k % 5 for k in range(n)],
          "scene": [1 + k // 4 % 2 for k in range(n)], "click": [k % 2 for k in range(n)],
          "ts": list(range(n)), "cat": [1] * n}


@pytest.mark.parametrize("kind", sorted(WIDE_IDS))
@pytest.mark.parametrize("fmt", ["csv", "parquet"])
def test_wide_integer_ids_stay_distinct(tmp_path, kind, fmt):
  users = WIDE_IDS[kind]
  table = _wide_table(users)
  if fmt == "csv":
    path = write(tmp_path, "uid,iid,scene,click,ts,cat\n" + "".join(
        ",".join(str(table[c][k]) for c in table) + "\n" for k in range(24)))
  else:
    path = os.path.join(tmp_path, "log.parquet")
    columns = dict(table)
    if kind == "uint64":
      columns["uid"] = pa.array(users * 6, pa.uint64())
    elif kind == "decimal":
      columns["uid"] = pa.array([__import__("decimal").Decimal(u) for u in users * 6],
                                pa.decimal128(38, 0))
    pq.write_table(pa.table(columns), path)
  log, vocab = log_lib.load_log(path, COLS)
  assert log.user_fields[0].vocab_size == 5                    # four users, none merged
  raw = vocab["uid"][log.user[:, 0]]
  assert [int(r) for r in raw] == table["uid"]                 # each row maps back exactly
  assert vocab["uid"].dtype.kind in "iuU"                      # integers or text, never floats


def test_float_ids_in_parquet_are_refused_unless_exact(tmp_path):
  path = os.path.join(tmp_path, "log.parquet")
  table = _wide_table([1, 2, 3, 4])
  table["uid"] = [float(u) for u in table["uid"]]              # pandas' ints with a gap
  pq.write_table(pa.table(table), path)
  log, vocab = log_lib.load_log(path, COLS)
  assert vocab["uid"].dtype == np.int64 and list(vocab["uid"]) == [0, 1, 2, 3, 4]
  table["uid"] = [float(BIG + k % 4) for k in range(24)]
  pq.write_table(pa.table(table), path)
  with pytest.raises(DataError, match=r"column 'uid' holds floats .* 2\*\*53"):
    log_lib.load_log(path, COLS)


# ---------------------------------------------------------------------------------------
# Fuzz: any malformed row is a DataError naming a line or row, never another exception

from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

_CELLS = ["", "0", "1", "2", "-1", "0.5", "1.0", "nan", "inf", "-inf", "1e400", "True",
          "false", "2024-01-01", "2024-13-45", "2024-01-01 10:00:00", "99999999999999999999999",
          "007", "x", "caf\u00e9", '"', '""', '"a,b"', '"unclosed', "a\"b", " ", "\t", "\\"]
_cell = st.one_of(st.sampled_from(_CELLS).map(str.encode),
                  st.text(max_size=5).map(str.encode),
                  st.binary(max_size=5))
_row = st.lists(_cell, min_size=1, max_size=9).map(lambda cells: b",".join(cells))


@settings(max_examples=30, deadline=None)
@given(bad=st.lists(st.tuples(st.integers(0, 4), _row), min_size=1, max_size=3),
       parquet=st.booleans())
def test_fuzz_malformed_rows_are_a_data_error_naming_a_line_or_row(tmp_path_factory, bad, parquet):
  good = [l.encode() for l in CSV.splitlines()]
  lines = list(good)
  for at, row in bad:
    lines.insert(1 + at, row.replace(b"\n", b" ").replace(b"\r", b" "))
  path = str(tmp_path_factory.mktemp("fuzz") / "log.csv")
  with open(path, "wb") as f:
    f.write(b"\n".join(lines) + b"\n")
  rows = len(lines) - 1
  if parquet:                       # the same cells, read by pyarrow then stored as Parquet
    try:
      table = pacsv.read_csv(path)
    except (pa.ArrowException, UnicodeDecodeError):
      return
    path, rows = path[:-4] + ".parquet", table.num_rows
    pq.write_table(table, path)
  try:
    log, _ = log_lib.load_log(path, COLS)
  except DataError as e:
    assert re.search(r"\b(line|row) \d+", str(e)) or "column" in str(e), str(e)
    if not parquet:
      assert re.search(r"\b(line|row) \d+", str(e)), str(e)
    return
  assert len(log.label) == rows and set(np.unique(log.label)) <= {0, 1}   # no row lost
