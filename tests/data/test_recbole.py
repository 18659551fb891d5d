"""RecBole atomic-file loader (mscan_jax.data.recbole): typed headers, side files, scenario
from any of the three files, label threshold, time order, and every bad-input error."""

import os

import numpy as np
import pytest

from mscan_jax.data import recbole
from mscan_jax.data.schema import DataError

T = "\t"
INTER = [["user_id:token", "item_id:token", "label:float", "timestamp:float", "scene:token", "rating:float"],
         ["u2", "i9", "1", "30", "s2", "5"],        # line 2
         ["u1", "i3", "0", "10", "s1", "2"],        # line 3
         ["u1", "i9", "1", "20", "s2", "4"],        # line 4
         ["u3", "i3", "1", "20", "", "3"],          # line 5: no scene
         ["u2", "i3", "0", "5", "s1", "1"]]         # line 6
USER = [["user_id:token", "age:token", "score:float"], ["u1", "20", "0.5"]]
ITEM = [["item_id:token", "cat:token", "tags:token_seq"], ["i3", "c1", "a b"], ["i9", "c2", "b"]]


def write(d, inter=INTER, user=USER, item=ITEM, name="toy"):
  d = os.path.join(d, name)
  os.makedirs(d, exist_ok=True)
  for ext, rows in (("inter", inter), ("user", user), ("item", item)):
    if rows is not None:
      with open(os.path.join(d, f"{name}.{ext}"), "w") as f:
        f.write("".join(T.join(r) + "\n" for r in rows))
  return d


def test_scenario_from_inter_sorted_by_time(tmp_path):
  log, vocab, stats = recbole.load_recbole(write(tmp_path), scenario="scene")
  # Kept lines 2, 3, 4, 6 sorted by timestamp: 6 (5), 3 (10), 4 (20), 2 (30).
  # user u1->1 u2->2; age: u1 "20" -> 1, u2 has no .user row -> 0; item i3->1 i9->2;
  # cat c1->1 c2->2; scene s1->1 s2->2.
  np.testing.assert_array_equal(log.user, [[2, 0], [1, 1], [1, 1], [2, 0]])
  np.testing.assert_array_equal(log.item, [[1, 1], [1, 1], [2, 2], [2, 2]])
  np.testing.assert_array_equal(log.scenario[:, 0], [1, 1, 2, 2])
  np.testing.assert_array_equal(log.label, [0, 0, 1, 1])
  np.testing.assert_array_equal(log.time, [5, 10, 20, 30])
  np.testing.assert_array_equal(log.sample_id, [6, 3, 4, 2])
  np.testing.assert_array_equal(log.user_id, [1, 0, 0, 1])
  assert [f.name for f in log.user_fields] == ["user_id", "age"]
  assert [f.name for f in log.item_fields] == ["item_id", "cat"]
  assert [(f.name, f.vocab_size) for f in log.scenario_fields] == [("scene", 3)]
  assert list(vocab["user_id"]) == ["", "u1", "u2"] and list(vocab["age"]) == [0, 20]
  assert stats["dropped_no_scenario"] == 1
  assert stats["inter_rows_without_user_row"] == 3       # u2 twice, u3
  assert stats["user_columns_unused"] == ["score:float"]
  assert stats["item_columns_unused"] == ["tags:token_seq"]
  assert stats["inter_columns_unused"] == ["rating:float"]


def test_scenario_from_item_file_and_label_threshold(tmp_path):
  log, vocab, stats = recbole.load_recbole(write(tmp_path), scenario="cat:token", label="rating",
                                           label_threshold=4)
  # Every line has a scenario now (by item: i3 -> c1, i9 -> c2); order by time, ties in file
  # order: 6 (5), 3 (10), 4 (20), 5 (20), 2 (30); rating >= 4: lines 2 and 4.
  np.testing.assert_array_equal(log.sample_id, [6, 3, 4, 5, 2])
  np.testing.assert_array_equal(log.scenario[:, 0], [1, 1, 2, 1, 2])
  np.testing.assert_array_equal(log.label, [0, 0, 1, 0, 1])
  assert [f.name for f in log.item_fields] == ["item_id"]           # cat is the scenario
  assert stats["scenario_column"] == "toy.item:cat:token"


def test_inter_file_path_without_side_files_and_without_time(tmp_path):
  d = write(tmp_path, user=None, item=None)
  log, _, _ = recbole.load_recbole(os.path.join(d, "toy.inter"), scenario="scene", time="")
  np.testing.assert_array_equal(log.sample_id, [2, 3, 4, 6])        # file order
  assert log.time is None and log.user.shape == (4, 1) and log.item.shape == (4, 1)


def _edit(rows, r, c, value):
  rows = [list(x) for x in rows]
  rows[r][c] = value
  return rows


@pytest.mark.parametrize("inter, user, kwargs, pattern", [
    (_edit(INTER, 0, 0, "user_id:str"), USER, {}, r"toy.inter: line 1: column 1 'user_id:str' is not"),
    (_edit(INTER, 2, 2, "2"), USER, {}, r"toy.inter: line 3: column 'label:float': label '2' is not 0 or 1"),
    (_edit(INTER, 2, 3, "abc"), USER, {}, r"toy.inter: line 3: column 'timestamp:float': 'abc' is not a number"),
    (_edit(INTER, 4, 0, ""), USER, {}, r"toy.inter: line 5: empty 'user_id:token'"),
    (INTER[:2] + [INTER[2][:5]] + INTER[3:], USER, {}, r"toy.inter: line 3: expected 6 columns"),
    (INTER, USER + [["u1", "21", "0.2"]], {}, r"toy.user: line 3: user 'u1' has a second row"),
    (INTER, USER, {"scenario": "nope"}, r"scenario column 'nope' is in none of"),
    (INTER, USER, {"label": "click"}, r"toy.inter: no label column 'click'; the header has"),
    (INTER[:1], USER, {}, r"toy.inter: the file has a header but no data rows"),
])
def test_bad_input_names_file_and_line(tmp_path, inter, user, kwargs, pattern):
  kwargs = {"scenario": "scene", **kwargs}
  with pytest.raises(DataError, match=pattern):
    recbole.load_recbole(write(tmp_path, inter=inter, user=user), **kwargs)


def test_missing_inter_file(tmp_path):
  with pytest.raises(DataError, match=r"toy.inter: no such file"):
    recbole.load_recbole(write(tmp_path, inter=None), scenario="scene")
