"""RecBole atomic files (`.inter`, `.user`, `.item`) -> `EventLog`.

Many public recommendation datasets are distributed in RecBole's atomic format: tab-separated
files whose header names each column with its type, `name:type`, type one of `token`,
`token_seq`, `float`, `float_seq` (https://recbole.io/atomic_files.html):

    DIR/NAME.inter   one row per interaction, e.g. user_id:token item_id:token label:float timestamp:float
    DIR/NAME.user    optional, one row per user: user_id:token and profile columns
    DIR/NAME.item    optional, one row per item: item_id:token and attribute columns

`load_recbole(path, scenario=...)` takes DIR (NAME = the directory's name, as RecBole does) or
the `.inter` file itself. Columns are named with or without their type (`label` or
`label:float`).

  * scenario: the named column, looked up in `.inter`, then `.item`, then `.user` (the first
    file that has it): a per-interaction scenario, an item attribute used as scenario (e.g. a
    category), or a user attribute. Re-indexed 1..P; rows with an empty scenario are dropped
    and counted.
  * label: the `label` column (default `label:float`), which must hold 0 and 1, or, with
    `label_threshold=T`, label = value >= T (RecBole's `threshold`, e.g. rating >= 4).
  * time: the `timestamp` column (default `timestamp:float`) if present: events are sorted by
    it (stable, ties in file order); without it the file order is the time order.
  * fields: user = user id, then every `token` column of `.user`; item = item id, then every
    `token` column of `.item` (the scenario column excluded). `token_seq`, `float`,
    `float_seq` columns and further `.inter` columns are not used (the batch contract has
    single categorical fields only); their names are listed in the statistics.
  * ids: tokens are re-indexed by sorted distinct value, 1..V (numerically when every token
    of the column is a decimal integer, else byte-wise), 0 = unknown: a user (item) of
    `.inter` without a `.user` (`.item`) row gets 0 in the profile fields (counted), and an
    empty token is 0.
  * a wrong column count, an unparseable number, an empty user or item id, a duplicated
    `.user`/`.item` key: `DataError` with the file and line.

`sample_id` = the `.inter` file line of the interaction.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from mscan_jax.data import builder
from mscan_jax.data.rawio import (check_unique_columns, line_of, read_csv_with_header, read_header,
                                  reindex, row_lines)
from mscan_jax.data.schema import DataError, Field

TYPES = ("token", "token_seq", "float", "float_seq")


def atomic_files(path: str) -> dict[str, str]:
  """{'inter': ..., 'user': ..., 'item': ...} of the atomic files at `path` (DIR or .inter)."""
  if os.path.isdir(path):
    stem = os.path.join(path, os.path.basename(os.path.normpath(path)))
  elif path.endswith(".inter"):
    stem = path[:-len(".inter")]
  else:
    raise DataError(f"{path}: expected a RecBole dataset directory DIR holding DIR.inter, or a "
                    ".inter file")
  files = {kind: f"{stem}.{kind}" for kind in ("inter", "user", "item")}
  if not os.path.isfile(files["inter"]):
    raise DataError(f"{files['inter']}: no such file (a RecBole dataset needs its .inter file)")
  return {k: v for k, v in files.items() if os.path.isfile(v)}


class _Atomic:
  """One atomic file: its header's names and types, read as text."""

  def __init__(self, path: str, kind: str):
    self.path, self.kind = path, kind
    header = read_header(path, "\t")
    self.columns, self.names, self.types = header, [], []
    for k, h in enumerate(header):
      name, sep, typ = h.partition(":")
      if not sep or typ not in TYPES or not name:
        raise DataError(f"{path}: line 1: column {k + 1} {h!r} is not 'name:type' with type one "
                        f"of {TYPES}")
      self.names.append(name)
      self.types.append(typ)
    check_unique_columns(self.names, f"{path}: line 1")    # x:token beside x:float too
    self.table, self.blocks = read_csv_with_header(path, {}, delimiter="\t")

  def find(self, name: str) -> str | None:
    """The header column of `name` ('x' or 'x:type'), or None."""
    base, _, typ = name.partition(":")
    for h, n, t in zip(self.columns, self.names, self.types):
      if n == base and (not typ or t == typ):
        return h
    return None

  def col(self, header: str) -> pa.ChunkedArray:
    return self.table.column(header)

  def line(self, row: int) -> int:
    return line_of(self.blocks, row)


def load_recbole(path: str, *, scenario: str, user: str = "user_id", item: str = "item_id",
                 label: str = "label:float", label_threshold: float | None = None,
                 time: str | None = "timestamp:float"
                 ) -> tuple[builder.EventLog, dict[str, np.ndarray], dict[str, Any]]:
  """Reads RecBole atomic files (module docstring). Returns (log, vocab, stats)."""
  if not scenario:
    raise DataError("recbole: name the scenario column (e.g. scenario='category:token')")
  files = atomic_files(path)
  inter = _Atomic(files["inter"], "inter")
  side = {k: _Atomic(files[k], k) for k in ("user", "item") if k in files}
  stats: dict[str, Any] = {"source_format": "recbole atomic files",
                           "files": sorted(files.values()), "inter_rows_read": inter.table.num_rows}
  u_col, i_col = _need(inter, user, "user"), _need(inter, item, "item")
  l_col = _need(inter, label, "label")
  t_col = inter.find(time) if time else None
  n = inter.table.num_rows
  for h in (u_col, i_col):
    _check_nonempty(inter, h)
  lab = _labels(inter, l_col, label_threshold)
  ts = _floats(inter, t_col) if t_col else None

  # Scenario: .inter, else .item (by item), else .user (by user).
  where = next((f for f in [inter] + [side[k] for k in ("item", "user") if k in side]
                if f.find(scenario)), None)
  if where is None:
    raise DataError(f"recbole: scenario column {scenario!r} is in none of {sorted(files.values())}")
  s_col = where.find(scenario)
  stats["scenario_column"] = f"{os.path.basename(where.path)}:{s_col}"
  u_tok, i_tok = _tokens(inter.col(u_col)), _tokens(inter.col(i_col))
  profile, scen_tok = _side_tables(side, {"user": (user, u_tok), "item": (item, i_tok)}, where,
                                   s_col, stats)
  if where is inter:
    scen_tok = _tokens(inter.col(s_col))
  used = {u_col, i_col, l_col, t_col, s_col if where is inter else None}
  stats["inter_columns_unused"] = [h for h in inter.columns if h not in used]

  keep = scen_tok != ""
  stats["dropped_no_scenario"] = int(np.count_nonzero(~keep))
  if not keep.any():
    raise DataError(f"{inter.path}: no interaction has a scenario ({scenario!r})")
  sample_id = row_lines(inter.blocks, n)                           # (E,) .inter file line
  order = np.flatnonzero(keep)
  if ts is not None:
    order = order[np.argsort(ts[order], kind="stable")]

  user_names = [user.partition(":")[0]] + [h.partition(":")[0] for h in profile["user"][0]]
  item_names = [item.partition(":")[0]] + [h.partition(":")[0] for h in profile["item"][0]]
  scen_name = scenario.partition(":")[0]
  if len(set(user_names + item_names + [scen_name])) != len(user_names) + len(item_names) + 1:
    raise DataError(f"recbole: field names {user_names + item_names + [scen_name]} must be "
                    "distinct (a .user and a .item column share a name)")
  vocab: dict[str, np.ndarray] = {}
  user_arr = _field_ids(user_names, [u_tok] + profile["user"][1], order, vocab)   # (E, Fu)
  item_arr = _field_ids(item_names, [i_tok] + profile["item"][1], order, vocab)   # (E, Fi)
  scen_arr = _field_ids([scen_name], [scen_tok], order, vocab)                    # (E, 1)
  fields = lambda names: tuple(Field(nm, max(int(vocab[nm].shape[0]), 2)) for nm in names)  # noqa: E731
  stats["events"] = int(order.shape[0])
  log = builder.EventLog(
      user=user_arr.astype(np.int32), item=item_arr.astype(np.int32),
      scenario=scen_arr.astype(np.int32), label=lab[order],
      user_id=(user_arr[:, 0] - 1).astype(np.int32),
      user_fields=fields(user_names), item_fields=fields(item_names),
      scenario_fields=fields([scen_name]), time=None if ts is None else ts[order],
      sample_id=sample_id[order], source=inter.path)
  return log, vocab, stats


def _need(f: _Atomic, name: str, role: str) -> str:
  """The header column of `name` in `f`; a DataError listing the header if there is none."""
  h = f.find(name)
  if h is None:
    raise DataError(f"{f.path}: no {role} column {name!r}; the header has {f.columns}")
  return h


def _labels(inter: _Atomic, l_col: str, label_threshold: float | None) -> np.ndarray:
  """(E,) int8: the label column, 0/1 as given, or value >= `label_threshold`."""
  values = _floats(inter, l_col)
  if label_threshold is None:
    bad = (values != 0) & (values != 1)
    if bad.any():
      r = int(np.flatnonzero(bad)[0])
      raise DataError(f"{inter.path}: line {inter.line(r)}: column {l_col!r}: label "
                      f"{inter.col(l_col)[r].as_py()!r} is not 0 or 1; pass label_threshold "
                      "(e.g. 4 for ratings) to binarise it")
    return values.astype(np.int8)
  return (values >= label_threshold).astype(np.int8)


def _side_tables(side: dict[str, _Atomic], keys: dict[str, tuple[str, np.ndarray]],
                 where: _Atomic, s_col: str, stats: dict[str, Any]
                 ) -> tuple[dict[str, tuple[list[str], list[np.ndarray]]], np.ndarray | None]:
  """Side tables, joined on the user / item token: profile fields and the scenario.

  Returns ({"user" | "item": (token columns, their (E,) tokens per interaction)}, the
  scenario's (E,) tokens when `where` is a side table, else None).
  """
  profile: dict[str, tuple[list[str], list[np.ndarray]]] = {"user": ([], []), "item": ([], [])}
  scen_tok = None
  for kind, (key_name, key_tok) in keys.items():
    if kind not in side:
      continue
    f = side[kind]
    k_col = _need(f, key_name, f"{kind} id")
    row, found = _join(f, k_col, key_tok, kind)                     # (E,), (E,)
    cols = [h for h, t in zip(f.columns, f.types) if t == "token" and h not in (k_col, s_col)]
    profile[kind] = (cols, [np.where(found, _tokens(f.col(h))[row], "") for h in cols])
    stats[f"inter_rows_without_{kind}_row"] = int(np.count_nonzero(~found))
    stats[f"{kind}_columns_unused"] = [h for h, t in zip(f.columns, f.types)
                                       if t != "token" and h not in (k_col, s_col)]
    if where is f:
      scen_tok = np.where(found, _tokens(f.col(s_col))[row], "")
  return profile, scen_tok


def _field_ids(names: list[str], tokens: list[np.ndarray], order: np.ndarray,
               vocab: dict[str, np.ndarray]) -> np.ndarray:
  """(E, F) ids of the fields `names` from their tokens, rows in `order`; fills `vocab`."""
  ids = []
  for name, tok in zip(names, tokens):
    raw, missing = _sortable(tok[order])
    col, vocab[name] = reindex(raw, missing=missing)
    ids.append(col)
  return np.stack(ids, 1)


def _join(f: _Atomic, key_col: str, query: np.ndarray, kind: str) -> tuple[np.ndarray, np.ndarray]:
  """Row of side table `f` whose `key_col` equals each query token, and whether one does.

  Keys must be non-empty and unique (a `DataError` names the line of a second row)."""
  _check_nonempty(f, key_col)
  keys = _tokens(f.col(key_col))
  order = np.argsort(keys, kind="stable")
  sk = keys[order]
  dup = np.flatnonzero(sk[1:] == sk[:-1])
  if dup.size:
    r = int(max(order[dup[0]], order[dup[0] + 1]))
    raise DataError(f"{f.path}: line {f.line(r)}: {kind} {str(keys[r])!r} has a second row")
  at = np.minimum(np.searchsorted(sk, query), sk.shape[0] - 1)
  return order[at], sk[at] == query


def _tokens(col: pa.ChunkedArray) -> np.ndarray:
  """A text column as a numpy str array (whitespace-trimmed; '' = empty)."""
  return pc.utf8_trim_whitespace(col.cast(pa.string())).to_numpy(zero_copy_only=False).astype(str)


def _sortable(tokens: np.ndarray) -> tuple[np.ndarray, Any]:
  """(values, missing): int64 values with -1 for '' if every non-empty token is a decimal
  integer (numeric order), else the strings themselves with '' missing."""
  present = tokens != ""
  if present.any() and np.char.isdigit(tokens[present]).all() \
      and int(np.char.str_len(tokens[present]).max()) <= 18:
    out = np.full(tokens.shape, -1, np.int64)
    out[present] = tokens[present].astype(np.int64)
    return out, -1
  return tokens, ""


def _check_nonempty(f: _Atomic, h: str) -> None:
  tok = _tokens(f.col(h))
  empty = np.flatnonzero(tok == "")
  if empty.size:
    raise DataError(f"{f.path}: line {f.line(int(empty[0]))}: empty {h!r}")


def _floats(f: _Atomic, h: str) -> np.ndarray:
  col = pc.utf8_trim_whitespace(f.col(h).cast(pa.string()))
  ok = pc.match_substring_regex(col, r"^[-+]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][-+]?[0-9]+)?$")
  okn = ok.to_numpy(zero_copy_only=False)
  if not okn.all():
    r = int(np.flatnonzero(~okn)[0])
    raise DataError(f"{f.path}: line {f.line(r)}: column {h!r}: {col[r].as_py()!r} is not a number")
  return col.cast(pa.float64()).to_numpy(zero_copy_only=False)
