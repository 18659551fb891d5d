"""Ali-CCP loaders (mscan_jax.data.aliccp): raw Tianchi files and processed CSVs.

Fixtures are written in the exact raw format; every expected array is computed by hand in the
comments. The shared samples (`<repo>/../shared/data/ali-ccp`, see its PROVENANCE.md) are
checked against an independent reading with Python's csv module.
"""

import csv
import os
import re

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mscan_jax.data import aliccp
from mscan_jax.data.schema import DataError

SHARED = os.path.normpath(os.path.join(os.path.dirname(__file__), "..", "..", "..", "shared",
                                       "data", "ali-ccp"))
needs_shared = pytest.mark.skipif(not os.path.isdir(SHARED),
                                  reason=f"shared Ali-CCP samples not found at {SHARED}")


def feats(*fs):
  """A raw feature list: (field, id[, value]) joined as field\\x02id\\x03value by \\x01."""
  return "\x01".join(f"{f[0]}\x02{f[1]}\x03{f[2] if len(f) > 2 else '1.0'}" for f in fs)


COMMON_TRAIN = [
    "c1,4," + feats(("101", 500), ("121", 70), ("109_14", 99, "0.5"), ("122", 81)),
    "c2,2," + feats(("101", 400), ("124", 90)),
    "c3,1," + feats(("109_14", 7)),                                   # no user id 101
]
SKELETON_TRAIN = [
    # feature_num 4 but 5 features (counted); 210 twice (the first, 30, is kept).
    "1,1,0,c1,4," + feats(("205", 11), ("206", 600), ("210", 30), ("210", 31), ("301", 9001)),
    "2,0,0,c2,3," + feats(("205", 12), ("216", 700), ("301", 9002)),
    "3,0,1,c1,2," + feats(("205", 13), ("301", 9001)),                # click 0 purchase 1: dropped
    "4,1,0,c2,1," + feats(("205", 11)),                              # no scenario: dropped
    "5,0,0,c3,2," + feats(("205", 11), ("301", 9001)),                # no user: dropped
    "6,1,1,c1,2," + feats(("205", 12), ("301", 9002)),
]
COMMON_TEST = ["d1,1," + feats(("101", 400))]
SKELETON_TEST = ["1,0,0,d1,2," + feats(("205", 13), ("301", 9003)),
                 "2,1,0,d1,2," + feats(("205", 11), ("301", 9001))]


def write_raw(d, skel_train=SKELETON_TRAIN, common_train=COMMON_TRAIN, skel_test=SKELETON_TEST,
              common_test=COMMON_TEST, trailing_newline=True):
  os.makedirs(d, exist_ok=True)
  for name, lines in (("sample_skeleton_train.csv", skel_train),
                      ("common_features_train.csv", common_train),
                      ("sample_skeleton_test.csv", skel_test),
                      ("common_features_test.csv", common_test)):
    if lines is None:
      continue
    with open(os.path.join(d, name), "w", newline="") as f:
      f.write("\n".join(lines) + ("\n" if trailing_newline and lines else ""))
  return str(d)


# Hand-computed result of the fixture. Kept rows: train lines 1, 2, 6, test lines 1, 2.
#   101: 500, 400, 500, 400, 400 -> vocab [_, 400, 500] -> 2 1 2 1 1; user_id = id - 1
#   121: 70 on c1 rows -> 1 0 1 0 0; 122: 81 on c1 -> 1 0 1 0 0; 124: 90 on c2 -> 0 1 0 0 0
#   205: 11 12 12 13 11 -> 1 2 2 3 1; 206: 600 on line 1; 210: 30 (first of 30, 31) on line 1;
#   216: 700 on line 2; 207 never present.  301: 9001 9002 9002 9003 9001 -> 1 2 2 3 1.
EXPECTED_USER = [[2, 1, 1, 0, 0, 0, 0, 0, 0], [1, 0, 0, 1, 0, 0, 0, 0, 0],
                 [2, 1, 1, 0, 0, 0, 0, 0, 0], [1, 0, 0, 0, 0, 0, 0, 0, 0],
                 [1, 0, 0, 0, 0, 0, 0, 0, 0]]
EXPECTED_ITEM = [[1, 1, 0, 1, 0], [2, 0, 0, 0, 1], [2, 0, 0, 0, 0], [3, 0, 0, 0, 0],
                 [1, 0, 0, 0, 0]]
EXPECTED_SCENARIO = [1, 2, 2, 3, 1]
EXPECTED_LABEL = [1, 0, 1, 0, 1]
EXPECTED_SAMPLE_ID = [1, 2, 6, 10 ** 12 + 1, 10 ** 12 + 2]


def assert_fixture_log(log):
  np.testing.assert_array_equal(log.user, EXPECTED_USER)
  np.testing.assert_array_equal(log.item, EXPECTED_ITEM)
  np.testing.assert_array_equal(log.scenario[:, 0], EXPECTED_SCENARIO)
  np.testing.assert_array_equal(log.label, EXPECTED_LABEL)
  np.testing.assert_array_equal(log.user_id, [1, 0, 1, 0, 0])
  np.testing.assert_array_equal(log.sample_id, EXPECTED_SAMPLE_ID)


def test_raw_fixture_gives_the_hand_computed_log(tmp_path):
  log, vocab, stats = aliccp.load_aliccp_raw(write_raw(tmp_path))
  assert_fixture_log(log)
  assert log.time is None                                  # file order is time order
  assert [f.name for f in log.user_fields] == list(aliccp.USER_FIELDS)
  assert [f.name for f in log.item_fields] == list(aliccp.ITEM_FIELDS)
  assert [(f.name, f.vocab_size) for f in log.scenario_fields] == [("301", 4)]
  assert [f.vocab_size for f in log.item_fields] == [4, 2, 2, 2, 2]   # 207 absent: size 2
  assert list(vocab["101"]) == [0, 400, 500]
  assert list(vocab["301"]) == [0, 9001, 9002, 9003]
  assert list(vocab["210"]) == [0, 30]
  # Every dropped row is counted under its reason.
  assert stats["train_rows_read"] == 6 and stats["test_rows_read"] == 2
  assert stats["train_dropped_click0_purchase1"] == 1
  assert stats["train_dropped_no_scenario"] == 1
  assert stats["train_dropped_no_user"] == 1
  assert stats["train_dropped_missing_common"] == 0
  assert stats["train_feature_num_mismatch"] == 1
  assert stats["train_multi_valued_210"] == 1
  assert stats["events"] == 5


def test_raw_headers_and_missing_trailing_newline_are_accepted(tmp_path):
  d = write_raw(tmp_path, trailing_newline=False)
  for name, header in (("sample_skeleton_train.csv", aliccp.SKELETON_COLUMNS),
                       ("common_features_train.csv", aliccp.COMMON_COLUMNS)):
    path = os.path.join(d, name)
    body = open(path).read()
    with open(path, "w") as f:
      f.write(",".join(header) + "\n" + body)
  log, _, _ = aliccp.load_aliccp_raw(d)
  np.testing.assert_array_equal(log.item, EXPECTED_ITEM)
  # Line numbers shift by the header: the train rows are lines 2, 3, 7.
  np.testing.assert_array_equal(log.sample_id[:3], [2, 3, 7])


@settings(max_examples=25, deadline=None)
@given(block_size=st.integers(1, 400), workers=st.integers(1, 3))
def test_raw_result_does_not_depend_on_block_size(tmp_path_factory, block_size, workers):
  d = write_raw(tmp_path_factory.mktemp("raw"))
  log, vocab, stats = aliccp.load_aliccp_raw(d, block_size=block_size, workers=workers)
  assert_fixture_log(log)
  ref_stats = aliccp.load_aliccp_raw(d)[2]
  assert stats == ref_stats


# A random well-formed feature list, and the reference reading by plain Python.
_FIELDS = ("101", "121", "205", "210", "301", "109_14", "508", "1", "12345")
_feature = st.tuples(st.sampled_from(_FIELDS), st.integers(0, 10 ** 16 - 1),
                     st.sampled_from(["1.0", "", "0.25"]))


def _reference(rows, wanted):
  out = []
  for row in rows:
    vals = {}
    for f, i, _ in row:
      vals.setdefault(f, i)                                # first value wins
    out.append([vals.get(w, -1) for w in wanted])
  return np.array(out, np.int64).reshape(len(rows), len(wanted))


@settings(max_examples=30, deadline=None)
@given(rows=st.lists(st.lists(_feature, min_size=1, max_size=6), min_size=1, max_size=12),
       block_size=st.integers(1, 300))
def test_streamed_feature_lists_match_a_python_reference(tmp_path_factory, rows, block_size):
  """Random feature lists (ids up to 16 digits, multi-valued and unwanted fields) read by the
  streaming reader with any block size equal a per-row Python parse."""
  d = tmp_path_factory.mktemp("fl")
  path = os.path.join(d, "common_features_train.csv")
  with open(path, "w") as f:
    for k, row in enumerate(rows):
      f.write(f"k{k},{len(row)},{feats(*row)}\n")
  table = aliccp.read_common_features(path, block_size=block_size, workers=2)
  want = _reference(rows, aliccp.USER_FIELDS)
  np.testing.assert_array_equal(table.user, want)
  assert [k.decode() for k in table.keys.to_pylist()] == [f"k{k}" for k in range(len(rows))]
  wanted = ("205", "210", "1", "12345")
  col = pa.array([feats(*r).encode() for r in rows], pa.binary())
  parsed = aliccp.parse_feature_lists(col, wanted, source="x", first_line=1)
  np.testing.assert_array_equal(parsed.values, _reference(rows, wanted))
  np.testing.assert_array_equal(parsed.num_features, [len(r) for r in rows])
  multi = [sum(1 for r in rows if sum(f == w for f, _, _ in r) > 1) for w in wanted]
  np.testing.assert_array_equal(parsed.multi, multi)


# --- bad input: each is an error naming the file and line, or a counted drop -------------

def _replace(lines, k, text):
  lines = list(lines)
  lines[k] = text
  return lines


@pytest.mark.parametrize("block_size", [1, 64, 1 << 20])
@pytest.mark.parametrize("bad_line, pattern", [
    ("2,0,0,c2", r"sample_skeleton_train.csv: line 2: expected 6 columns .* got 4"),
    ("2,0,0,c2,1," + "205\x0212", r"sample_skeleton_train.csv: line 2: feature 1 .* no '\\x03'"),
    ("2,0,0,c2,2," + feats(("205", 12)) + "\x01206\x03x\x0212",
     r"line 2: feature 2 .* no '\\x03' after its '\\x02'"),
    ("2,0,0,c2,1," + feats(("205", "12a")), r"line 2: field 205: feature id '12a' is not"),
    ("2,0,0,c2,1," + feats(("301", "")), r"line 2: field 301: feature id '' is not"),
    ("2,x,0,c2,1," + feats(("205", 12)), r"line 2: column 'click': 'x' is not an integer"),
    ("2,2,0,c2,1," + feats(("205", 12)), r"line 2: click must be 0 or 1, got 2"),
    ("2,0,0,c9,1," + feats(("205", 12)), r"line 2: common_feature_index 'c9' is not in the common"),
    ("2,0,0,c2,1," + feats(("205", 12)) + "\x01", r"line 2: feature 2 '' has 0 '\\x02'"),
    ("", r"sample_skeleton_train.csv: line 2: empty line"),
])
def test_raw_bad_skeleton_line_names_file_and_line(tmp_path, block_size, bad_line, pattern):
  d = write_raw(tmp_path, skel_train=_replace(SKELETON_TRAIN, 1, bad_line))
  with pytest.raises(DataError, match=pattern):
    aliccp.load_aliccp_raw(d, block_size=block_size, workers=2)


def _write_bytes(d, name, data):
  with open(os.path.join(d, name), "wb") as f:
    f.write(data)


@pytest.mark.parametrize("block_size", [64, 300, 1 << 20])
@pytest.mark.parametrize("garbage, pattern", [
    (b"\x89PNG\r\n\x1a", r"line 25: (a carriage return|expected 6 columns)"),
    (b"\xf3\xcb)\x0b\x8c\xe7;", r"line 25: expected 6 columns separated by ',', got 1"),
    (b"25,1,0,c1,\xd4\x10\xcd,", r"line 25: column 'feature_num': .* is not an integer"),
    (b"25,1,0,c1,2,205\x0212\x031.0\x01301\x029001\x031.0\r\xe2",
     r"line 25: a carriage return \(\\r\) inside the line"),
    (b"25,1,0,c1,2,205\x0212\x031.0\x00\x01301\x029001\x031.0", r"line 25: feature 1 .* NUL byte"),
])
def test_raw_binary_garbage_is_a_data_error_at_its_file_line(tmp_path, block_size, garbage,
                                                               pattern):
  """Binary data (not UTF-8, NUL bytes, carriage returns) inside a raw file: a DataError naming
  the file's own line number, whatever block it falls in (never pyarrow's ArrowInvalid with a
  row counted from the block's start)."""
  d = write_raw(tmp_path)
  lines = [l.encode() for l in SKELETON_TRAIN * 5]             # 30 lines
  lines[24] = garbage
  _write_bytes(d, "sample_skeleton_train.csv", b"\n".join(lines) + b"\n")
  with pytest.raises(DataError, match=r"sample_skeleton_train.csv: " + pattern):
    aliccp.load_aliccp_raw(d, block_size=block_size, workers=2)


@pytest.mark.parametrize("cut, why", [
    (5, "its last feature is cut short"),                     # inside the value of 301
    (12, "its last feature is cut short"),                    # inside the id of 301
    (len("\x01301\x029002\x031.0"), "1 of its 2 features"),   # 301 lost entirely
    (len(feats(("205", 12), ("301", 9002))) + 3, "4 of its 6 columns"),
])
@pytest.mark.parametrize("block_size", [64, 1 << 20])
def test_raw_truncated_last_line_is_reported_as_truncation(tmp_path, cut, why, block_size):
  """A file cut short (no newline at its end, the last line incomplete) is an error that says
  so; without 301 the line was counted as `no_scenario` before."""
  d = write_raw(tmp_path)
  data = ("\n".join(SKELETON_TRAIN)).encode()
  _write_bytes(d, "sample_skeleton_train.csv", data[:-cut])
  with pytest.raises(DataError, match=rf"sample_skeleton_train.csv: line 6: the file ends inside "
                     rf"this line \({why}, and no newline after it\): the file looks truncated"):
    aliccp.load_aliccp_raw(d, block_size=block_size, workers=2)
  _write_bytes(d, "sample_skeleton_train.csv", data + b"\n")     # whole again
  _write_bytes(d, "common_features_train.csv", ("\n".join(COMMON_TRAIN)).encode()[:-5])
  with pytest.raises(DataError, match=r"common_features_train.csv: line 3: the file ends inside"):
    aliccp.load_aliccp_raw(d, block_size=block_size, workers=2)


def test_raw_missing_common_key_can_be_dropped_and_counted(tmp_path):
  d = write_raw(tmp_path, skel_train=_replace(SKELETON_TRAIN, 1, "2,0,0,c9,1," + feats(("301", 9002)))
                )
  log, _, stats = aliccp.load_aliccp_raw(d, missing_common="drop")
  assert stats["train_dropped_missing_common"] == 1
  # The fixture without train line 2: 4 events.
  np.testing.assert_array_equal(log.sample_id, [1, 6, 10 ** 12 + 1, 10 ** 12 + 2])


def test_raw_bad_common_files(tmp_path):
  d = write_raw(tmp_path / "a", common_train=COMMON_TRAIN + ["c1,1," + feats(("101", 1))])
  with pytest.raises(DataError, match=r"common_features_train.csv: line 4: common_feature_index "
                                      r"'c1' already appeared on line 1"):
    aliccp.load_aliccp_raw(d, block_size=7)
  d = write_raw(tmp_path / "b", common_train=_replace(COMMON_TRAIN, 2, "c3,1,109_14\x027"))
  with pytest.raises(DataError, match=r"common_features_train.csv: line 3: feature 1 '109_14\\x027' has no"):
    aliccp.load_aliccp_raw(d)
  d = write_raw(tmp_path / "c", common_train=[])
  with pytest.raises(DataError, match=r"common_features_train.csv: the file is empty"):
    aliccp.load_aliccp_raw(d)
  d = write_raw(tmp_path / "d", skel_train=[])
  with pytest.raises(DataError, match=r"sample_skeleton_train.csv: the file is empty"):
    aliccp.load_aliccp_raw(d)
  d = write_raw(tmp_path / "e", common_test=None)
  with pytest.raises(DataError, match=r"found sample_skeleton_test.csv but not common_features_test"):
    aliccp.load_aliccp_raw(d)
  with pytest.raises(DataError, match=r"no Ali-CCP raw files"):
    aliccp.load_aliccp_raw(str(tmp_path / "a" / ".."))


# --- processed CSV ----------------------------------------------------------------------

CSV_HEADER = ",".join(aliccp.CSV_COLUMNS_33)


def csv_row(click, purchase, user, item205, item206, scen, dense="0.5"):
  # 101, 121..129 (9 user columns: user, then 8 profile = 1), 205 206 207 210 216,
  # 508 509 702 853, 301, 109_14 110_14 127_14 150_14, 8 dense values.
  vals = [click, purchase, user] + [1] * 8 + [item205, item206, 3, 4, 5] + [0] * 4 + [scen] \
      + [1] * 4 + [dense] * 8
  return ",".join(str(v) for v in vals)


def test_processed_csv_directory_in_train_val_test_order(tmp_path):
  d = tmp_path / "csv"
  d.mkdir()
  (d / "x_train.csv").write_text(CSV_HEADER + "\n" + "\n".join([
      csv_row(1, 0, 7, 40, 2, 1), csv_row(0, 1, 7, 41, 2, 2),        # line 3: click0 purchase1
      csv_row(0, 0, 0, 42, 2, 1)]) + "\n")                          # line 4: user 0: dropped
  (d / "x_test.csv").write_text(csv_row(0, 0, 9, 40, 0, 3) + "\n")  # no header
  (d / "x_val.csv").write_text(CSV_HEADER + "\n" + csv_row(1, 1, 9, 0, 5, 2) + "\n")
  log, vocab, stats = aliccp.load_aliccp_csv(str(d))
  # Order train (line 2), val (line 2), test (line 1).
  # 101: 7, 9, 9 -> 1 2 2; 205: 40, 0 (unknown), 40 -> 1 0 1; 206: 2, 5, 0 -> 1 2 0;
  # 301: 1, 2, 3 -> 1 2 3.
  np.testing.assert_array_equal(log.user[:, 0], [1, 2, 2])
  np.testing.assert_array_equal(log.user[:, 1:], np.ones((3, 8)))
  np.testing.assert_array_equal(log.item, [[1, 1, 1, 1, 1], [0, 2, 1, 1, 1], [1, 0, 1, 1, 1]])
  np.testing.assert_array_equal(log.scenario[:, 0], [1, 2, 3])
  np.testing.assert_array_equal(log.label, [1, 1, 0])
  np.testing.assert_array_equal(log.user_id, [0, 1, 1])
  np.testing.assert_array_equal(log.sample_id, [2, 10 ** 12 + 2, 2 * 10 ** 12 + 1])
  assert stats["dropped_click0_purchase1"] == 1 and stats["dropped_unknown_user"] == 1
  assert list(vocab["205"]) == [0, 40]


def test_processed_csv_bad_input(tmp_path):
  def load(text, name="a_train.csv"):
    p = tmp_path / name
    p.write_text(text)
    return aliccp.load_aliccp_csv(str(p))

  with pytest.raises(DataError, match=r"a_train.csv: line 3: expected 33 columns"):
    load(CSV_HEADER + "\n" + csv_row(1, 0, 7, 40, 2, 1) + "\n1,0,7\n")
  with pytest.raises(DataError, match=r"line 2: column '205': 'abc' is not an integer"):
    load(CSV_HEADER + "\n" + csv_row(1, 0, 7, "abc", 2, 1) + "\n")
  with pytest.raises(DataError, match=r"line 1: no header and 5 columns"):
    load("1,0,7,40,2\n")
  with pytest.raises(DataError, match=r"the file is empty"):
    load("")
  with pytest.raises(DataError, match=r"has no data rows"):
    load(CSV_HEADER + "\n")
  with pytest.raises(DataError, match=r"columns \['301'\] not found"):
    load("click,purchase,101,121,122,124,125,126,127,128,129,205\n" + "1," * 11 + "1\n")


# --- shared samples -----------------------------------------------------------------------

def _read_rows(path):
  with open(path) as f:
    rows = list(csv.reader(f))
  return rows[1:] if rows[0][0] == "click" else rows


@needs_shared
def test_shared_scenario_wise_rec_samples_load(tmp_path):
  d = os.path.join(SHARED, "scenario-wise-rec")
  log, vocab, stats = aliccp.load_aliccp_csv(d)
  rows = [r for s in ("train", "val", "test") for r in _read_rows(
      os.path.join(d, f"ali_ccp_{s}_sample.csv"))]
  assert len(rows) == 200
  kept = [r for r in rows if not (r[0] == "0" and r[1] == "1") and r[2] != "0"]
  assert stats["events"] == len(kept)
  assert stats["dropped_click0_purchase1"] == len(rows) - len(kept)
  np.testing.assert_array_equal(log.label, [int(r[0]) for r in kept])
  # 301 holds 1..3, so the scenario ids are the raw values.
  np.testing.assert_array_equal(log.scenario[:, 0], [int(r[20]) for r in kept])
  # 205: non-zero raw values re-indexed by sorted value, 0 stays 0.
  raw205 = np.array([int(r[11]) for r in kept])
  uniq = np.unique(raw205[raw205 > 0])
  want = np.where(raw205 > 0, np.searchsorted(uniq, raw205) + 1, 0)
  np.testing.assert_array_equal(log.item[:, 0], want)
  assert np.unique(log.user_id).tolist() == [0]             # one user (101 = 1) in the sample


@needs_shared
def test_shared_aitm_files_with_and_without_header(tmp_path):
  d = os.path.join(SHARED, "paddlerec")
  log, vocab, stats = aliccp.load_aliccp_csv(d)             # aitm_train.csv, aitm_test.csv
  rows = _read_rows(os.path.join(d, "aitm_train.csv")) + _read_rows(os.path.join(d, "aitm_test.csv"))
  assert len(rows) == 98
  kept = [r for r in rows if not (r[0] == "0" and r[1] == "1") and r[2] != "0"]
  assert stats["events"] == len(kept)
  assert [f.name for f in log.item_fields] == ["205", "206", "207", "216"]   # no 210 in AITM
  np.testing.assert_array_equal(vocab["301"][log.scenario[:, 0]], [int(r[19]) for r in kept])
  np.testing.assert_array_equal(vocab["101"][log.user[:, 0]], [int(r[2]) for r in kept])


@needs_shared
def test_shared_torch_rechub_samples_load_with_one_scenario():
  log, vocab, _ = aliccp.load_aliccp_csv(os.path.join(SHARED, "torch-rechub"))
  assert np.unique(log.scenario).tolist() == [1] and list(vocab["301"]) == [0, 1]


@pytest.mark.parametrize("keys", [["bb", "aa", "cc"], ["bb", "a", "ccc"]])
def test_common_key_lookup_fixed_and_variable_width(keys):
  table = aliccp.CommonTable(pa.array([k.encode() for k in keys], pa.binary()),
                             np.zeros((3, len(aliccp.USER_FIELDS)), np.int64), 3,
                             np.zeros(len(aliccp.USER_FIELDS), np.int64), 0)
  query = pa.array([k.encode() for k in [keys[2], "zz", keys[0], "a" * 5, keys[1]]], pa.binary())
  np.testing.assert_array_equal(table.lookup(query), [2, -1, 0, -1, 1])


# --- fuzz: a malformed raw line is a DataError naming its line, or a counted drop ---------

_GOOD = {"sample_skeleton_train.csv": [l.encode() for l in SKELETON_TRAIN],
         "common_features_train.csv": [l.encode() for l in COMMON_TRAIN]}


@st.composite
def _mutated_line(draw, good):
  """A good line cut, grown or overwritten at a random place, or plain garbage."""
  base = draw(st.sampled_from(good))
  kind = draw(st.sampled_from(["cut", "insert", "replace", "garbage"]))
  junk = draw(st.one_of(st.binary(max_size=8),
                        st.sampled_from([b",", b"\x01", b"\x02", b"\x03", b"\x00", b"\r", b"-",
                                         b"301\x02", b"\x029999999999999999999", b"\xff\xfe"])))
  at = draw(st.integers(0, len(base)))
  if kind == "cut":
    return base[:at]
  if kind == "insert":
    return base[:at] + junk + base[at:]
  if kind == "replace":
    return base[:at] + junk + base[at + len(junk):]
  return junk


@st.composite
def _damaged_file(draw):
  name = draw(st.sampled_from(sorted(_GOOD)))
  lines = list(_GOOD[name])
  for _ in range(draw(st.integers(1, 3))):
    at = draw(st.integers(0, len(lines)))
    lines.insert(at, draw(_mutated_line(_GOOD[name])).replace(b"\n", b""))
  return name, lines


@settings(max_examples=30, deadline=None)
@given(damaged=_damaged_file(), block_size=st.sampled_from([1, 50, 1 << 20]),
       trailing_newline=st.booleans())
def test_fuzz_malformed_raw_lines_are_a_data_error_at_their_line_or_counted(
    tmp_path_factory, damaged, block_size, trailing_newline):
  """Random damage (cut, grown or overwritten lines, binary garbage) in a skeleton or a
  common-features file: a DataError naming a file and a line within it, or every skeleton line
  kept or counted under one drop reason; never another exception."""
  name, lines = damaged
  d = write_raw(tmp_path_factory.mktemp("fuzz"))
  content = b"\n".join(lines) + (b"\n" if trailing_newline else b"")
  with open(os.path.join(d, name), "wb") as f:
    f.write(content)
  # The file's lines: a final newline ends the last line (an empty last element written without
  # a trailing newline is just that newline, not a line).
  lines = content.split(b"\n")[:-1] if content.endswith(b"\n") else content.split(b"\n")
  try:
    log, _, stats = aliccp.load_aliccp_raw(d, block_size=block_size, workers=2)
  except DataError as e:
    m = re.search(r"(sample_skeleton|common_features)_train\.csv: line (\d+)", str(e))
    assert m, str(e)
    n = len(lines) if m.group(1) + "_train.csv" == name else len(_GOOD[m.group(1) + "_train.csv"])
    assert 1 <= int(m.group(2)) <= n, str(e)
    return
  skeleton = lines if name.startswith("sample") else _GOOD["sample_skeleton_train.csv"]
  dropped = sum(v for k, v in stats.items() if k.startswith("train_dropped_"))
  assert stats["train_rows_read"] == len(skeleton)
  kept = int(np.sum(log.sample_id < aliccp.SAMPLE_ID_FILE_STRIDE))
  assert kept + dropped == len(skeleton), stats
