"""Cloud Theme (Tianchi dataset 9716) -> `EventLog`.

Paper App. A.1: Cloud Theme holds user click logs of the Taobao "cloud theme" scenario, 355
themes (scenarios), 1.4 million records. Files of the Tianchi release (with header rows):

    theme_click_log.csv          user_id,theme_id,item_id,leaf_cate_id,cate_level1_id,clk_cnt,reach_time
    theme_item_pool.csv          theme_id,item_id
    user_item_purchase_log.csv   user_id,item_id,paytime        (optional, see `purchases`)

Fields: user `user_id`; item `item_id`, `leaf_cate_id`, `cate_level1_id`; scenario `theme_id`
(re-indexed 1..P by sorted raw value). Every id is re-indexed by sorted distinct raw value,
1..V, 0 = unknown (`rawio.reindex`); ids are compared as integers when every value of the id
space is a decimal integer, else as strings.

Samples. Every click-log row with clk_cnt >= 1 is a positive (label 1); rows with clk_cnt = 0
are dropped and counted (the log is documented to hold clicks only). The log has no
non-clicks, so for each positive `negatives` items (default 2, the authors' protocol) are drawn
from its theme's item pool, uniformly with replacement, never the positive item itself, with
a seeded generator (`seed`). The pool is, by default (`negative_pool="clicked"`), the theme's
pool items that appear somewhere in the click log: an item's category fields come from the
click log, so an item that was never clicked would carry unknown categories (id 0) ONLY on
negatives, a feature that gives the label away. `negative_pool="pool"` draws from the whole
pool instead (the count of negatives with unknown categories is in the statistics). A click in
a theme whose pool offers no other item is a `DataError` naming the theme and the first line
(`missing_pool="error"`), or is dropped and counted (`missing_pool="drop"`).

Time and ties. `reach_time` is `%Y%m%d%H%M%S` or `%Y-%m-%d %H:%M:%S` (both occur in public
code); anything else is a `DataError` naming the line. Events are sorted by time (stable: ties
keep file order), and a click's negatives get its time and come right before it in the log.
The builder's histories hold strictly earlier timestamps only, so:
  * a negative never sees its own positive, nor the positive its negatives, in S_u or H_u;
    two clicks of a user in the same second do not see each other either;
  * H_u holds clicks only all the same (`all_seq_mode="clicks"`): sampled negatives are no
    behaviour of the user, and with "impressions" the positive of a later click would see
    earlier clicks' sampled negatives, items the user never saw. `prepare` therefore builds
    Cloud Theme with "clicks" and refuses "impressions".

Purchases (`purchases=True`; off by default). Each purchase becomes a behaviour-only event
(`is_sample=False`, never in a split) with label 1 at its `paytime`, and scenario id 0: a
purchase happens in no theme, and id 0 (padding, a zero scenario embedding) says so without
inventing a scenario P+1 that would have no sample (the builder requires every scenario to have
samples). Behaving as clicks, purchases enter H_u (all scenarios) in "clicks" mode and never
S_u, which holds the same theme's clicks. Purchases of users absent from the click log are
dropped and counted; a purchase at the same second as a click is not in its history. The user filter
counts sample scenarios only, so purchases never make a user multi-scenario.

`sample_id` = click-log line * 100 + j (j = 0 the positive, 1..negatives its negatives);
purchases: 10**13 + purchase-log line.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from mscan_jax.data import builder
from mscan_jax.data.rawio import compact, line_of, read_csv_with_header, reindex, row_lines
from mscan_jax.data.schema import DataError, Field

CLICK_LOG = "theme_click_log.csv"
ITEM_POOL = "theme_item_pool.csv"
PURCHASE_LOG = "user_item_purchase_log.csv"
CLICK_COLUMNS = ("user_id", "theme_id", "item_id", "leaf_cate_id", "cate_level1_id", "clk_cnt",
                 "reach_time")
TIME_FORMATS = ("%Y%m%d%H%M%S", "%Y-%m-%d %H:%M:%S")
USER_FIELDS = ("user_id",)
ITEM_FIELDS = ("item_id", "leaf_cate_id", "cate_level1_id")
SCENARIO_FIELDS = ("theme_id",)
NEGATIVE_POOLS = ("clicked", "pool")
SAMPLE_STRIDE = 100                 # sample_id = line * 100 + j
PURCHASE_SAMPLE_BASE = 10 ** 13


def load_cloudtheme(raw: str, *, negatives: int = 2, seed: int = 0,
                    negative_pool: str = "clicked", purchases: bool = False,
                    missing_pool: str = "error"
                    ) -> tuple[builder.EventLog, dict[str, np.ndarray], dict[str, Any]]:
  """Reads the Cloud Theme files in directory `raw` (module docstring).

  Returns (log, vocab, stats): the event log in time order, the raw value of each id per
  field, and the statistics (rows read, dropped per reason, negatives drawn).
  """
  _check_options(raw, negatives, negative_pool, missing_pool)
  stats: dict[str, Any] = {"source_format": "cloudtheme (Tianchi 9716)",
                           "negatives_per_click": negatives, "negative_pool": negative_pool,
                           "negative_seed": seed}
  files = _read_files(raw, purchases, stats)
  keep = files.clk >= 1
  stats["dropped_clk_cnt_0"] = int(np.count_nonzero(~keep))
  items = _item_categories(files, stats)
  pools = _theme_pools(files, items, negative_pool, stats)
  idx, neg_item = _draw_negatives(files, items, pools, keep, negatives=negatives, seed=seed,
                                  negative_pool=negative_pool, missing_pool=missing_pool,
                                  stats=stats)
  events = _click_events(files, items, pools, idx, neg_item, negatives)
  if files.buys is not None:
    _add_purchases(events, files, items, idx, stats)
  return _event_log(events, items, pools, raw, stats)


def _check_options(raw: str, negatives: int, negative_pool: str, missing_pool: str) -> None:
  if not os.path.isdir(raw):
    raise DataError(f"{raw}: not a directory; --raw must be the folder holding {CLICK_LOG} and "
                    f"{ITEM_POOL} (Tianchi dataset 9716)")
  if not 1 <= negatives < SAMPLE_STRIDE:
    raise DataError(f"negatives must be in 1..{SAMPLE_STRIDE - 1}, got {negatives}")
  if negative_pool not in NEGATIVE_POOLS:
    raise DataError(f"negative_pool must be one of {NEGATIVE_POOLS}, got {negative_pool!r}")
  if missing_pool not in ("error", "drop"):
    raise DataError(f"missing_pool must be 'error' or 'drop', got {missing_pool!r}")


@dataclasses.dataclass
class _Files:
  """The three files as read, with their raw id spaces as sortable numpy arrays."""
  click_path: str
  col: dict[str, pa.ChunkedArray]   # click-log columns
  clk: np.ndarray                   # (N,) clk_cnt
  time: np.ndarray                  # (N,) int64 seconds
  line: np.ndarray                  # (N,) file line of each click row
  buys: pa.Table | None
  buy_time: np.ndarray | None
  buy_line: np.ndarray | None
  user_raw: list[np.ndarray]        # [clicks, purchases]
  item_raw: list[np.ndarray]        # [clicks, pool, purchases]
  theme_raw: list[np.ndarray]       # [clicks, pool]
  leaf: np.ndarray
  top: np.ndarray


def _read_files(raw: str, purchases: bool, stats: dict[str, Any]) -> _Files:
  click_path, pool_path = os.path.join(raw, CLICK_LOG), os.path.join(raw, ITEM_POOL)
  buy_path = os.path.join(raw, PURCHASE_LOG)
  for p in (click_path, pool_path) + ((buy_path,) if purchases else ()):
    if not os.path.isfile(p):
      raise DataError(f"{p}: no such file (Cloud Theme needs {CLICK_LOG} and {ITEM_POOL}"
                      f"{' and ' + PURCHASE_LOG + ' with purchases=True' if purchases else ''})")

  clicks, cblocks = read_csv_with_header(click_path, {"clk_cnt": pa.int64()}, include=CLICK_COLUMNS)
  n_read = clicks.num_rows
  stats["click_rows_read"] = n_read
  col = {c: clicks.column(c) for c in CLICK_COLUMNS}
  for c in ("user_id", "theme_id", "item_id"):
    _check_present(col[c], c, click_path, cblocks)
  clk = col["clk_cnt"].to_numpy(zero_copy_only=False)
  if np.any(clk < 0):
    r = int(np.flatnonzero(clk < 0)[0])
    raise DataError(f"{click_path}: line {line_of(cblocks, r)}: clk_cnt {int(clk[r])} is negative")
  time = _parse_times(col["reach_time"], "reach_time", click_path, cblocks)
  line = row_lines(cblocks, n_read)                                   # (N,) file line of each row

  pool, pblocks = read_csv_with_header(pool_path, {}, include=("theme_id", "item_id"))
  stats["pool_rows_read"] = pool.num_rows
  for c in ("theme_id", "item_id"):
    _check_present(pool.column(c), c, pool_path, pblocks)

  buys = buy_time = buy_line = None
  if purchases:
    buys, bblocks = read_csv_with_header(buy_path, {}, include=("user_id", "item_id", "paytime"))
    stats["purchase_rows_read"] = buys.num_rows
    for c in ("user_id", "item_id"):
      _check_present(buys.column(c), c, buy_path, bblocks)
    buy_time = _parse_times(buys.column("paytime"), "paytime", buy_path, bblocks)
    buy_line = row_lines(bblocks, buys.num_rows)

  # Raw id spaces as sortable numpy arrays (integers when every value is one).
  return _Files(
      click_path=click_path, col=col, clk=clk, time=time, line=line, buys=buys,
      buy_time=buy_time, buy_line=buy_line,
      user_raw=_id_space([col["user_id"]] + ([buys.column("user_id")] if buys else [])),
      item_raw=_id_space([col["item_id"], pool.column("item_id")]
                         + ([buys.column("item_id")] if buys else [])),
      theme_raw=_id_space([col["theme_id"], pool.column("theme_id")]),
      leaf=_id_space([col["leaf_cate_id"]])[0], top=_id_space([col["cate_level1_id"]])[0])


@dataclasses.dataclass
class _Items:
  vocab: np.ndarray                 # (items,) raw item ids
  click: np.ndarray                 # (N,) item id of each click row
  pool: np.ndarray                  # item id of each pool row
  buy: np.ndarray | None            # item id of each purchase row
  cat: np.ndarray                   # (items, 2) leaf and top category ids, 0 = unknown
  known_cat: np.ndarray             # (items,) bool: the item appears in the click log
  leaf_vocab: np.ndarray
  top_vocab: np.ndarray


def _item_categories(files: _Files, stats: dict[str, Any]) -> _Items:
  """Item ids, and each item's categories: the first value seen in the click log
  (inconsistent items are counted)."""
  c_item, p_item = files.item_raw[0], files.item_raw[1]
  buys = files.buys is not None
  item_ids, item_vocab = reindex(np.concatenate([c_item, p_item] + ([files.item_raw[2]] if buys else [])))
  n_items = item_vocab.shape[0]
  c_item_id = item_ids[:c_item.shape[0]]
  p_item_id = item_ids[c_item.shape[0]:c_item.shape[0] + p_item.shape[0]]
  b_item_id = item_ids[c_item.shape[0] + p_item.shape[0]:] if buys else None
  leaf_id, leaf_vocab = reindex(files.leaf)
  top_id, top_vocab = reindex(files.top)
  cat = np.zeros((n_items, 2), np.int32)                           # (items, 2) 0 = unknown
  order = np.argsort(c_item_id, kind="stable")
  first = np.ones(order.shape[0], bool)
  first[1:] = c_item_id[order][1:] != c_item_id[order][:-1]
  cat[c_item_id[order[first]], 0] = leaf_id[order[first]]
  cat[c_item_id[order[first]], 1] = top_id[order[first]]
  known_cat = np.zeros(n_items, bool)
  known_cat[c_item_id] = True
  incons = (leaf_id != cat[c_item_id, 0]) | (top_id != cat[c_item_id, 1])
  stats["items_with_inconsistent_category"] = int(np.unique(c_item_id[incons]).shape[0])
  return _Items(vocab=item_vocab, click=c_item_id, pool=p_item_id, buy=b_item_id, cat=cat,
                known_cat=known_cat, leaf_vocab=leaf_vocab, top_vocab=top_vocab)


@dataclasses.dataclass
class _Pools:
  vocab: np.ndarray                 # (themes,) raw theme ids
  click_theme: np.ndarray           # (N,) theme id of each click row
  key: np.ndarray                   # sorted unique theme * items + item of the drawable pool
  item: np.ndarray                  # item of each `key`
  start: np.ndarray                 # (themes,) first `key` of each theme
  count: np.ndarray                 # (themes,) number of pool items of each theme


def _theme_pools(files: _Files, items: _Items, negative_pool: str,
                 stats: dict[str, Any]) -> _Pools:
  """Themes and their pools (deduplicated), sorted by (theme, item)."""
  c_theme, p_theme = files.theme_raw
  n_items = items.vocab.shape[0]
  theme_ids, theme_vocab = reindex(np.concatenate([c_theme, p_theme]))
  c_theme_id, p_theme_id = theme_ids[:c_theme.shape[0]], theme_ids[c_theme.shape[0]:]
  p_theme_known = np.isin(p_theme_id, c_theme_id)
  key = p_theme_id.astype(np.int64) * n_items + items.pool
  ukey = np.unique(key)
  stats["pool_duplicate_rows"] = int(key.shape[0] - ukey.shape[0])
  stats["pool_rows_of_themes_without_clicks"] = int(np.count_nonzero(~p_theme_known))
  if negative_pool == "clicked":
    ukey = ukey[items.known_cat[ukey % n_items]]
  pool_theme, pool_item = ukey // n_items, (ukey % n_items).astype(np.int32)
  n_themes = theme_vocab.shape[0]
  t_start = np.searchsorted(pool_theme, np.arange(n_themes))      # (themes,) segment starts
  t_count = np.diff(np.append(t_start, pool_theme.shape[0]))      # (themes,)
  return _Pools(vocab=theme_vocab, click_theme=c_theme_id, key=ukey, item=pool_item,
                start=t_start, count=t_count)


def _draw_negatives(files: _Files, items: _Items, pools: _Pools, keep: np.ndarray, *,
                    negatives: int, seed: int, negative_pool: str, missing_pool: str,
                    stats: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
  """Per click, `negatives` draws among the theme's pool minus the positive item.

  Returns idx (N',) the click rows kept and neg_item (N', negatives) their negatives.
  """
  n_items = items.vocab.shape[0]
  c_theme_id, c_item_id, ukey = pools.click_theme, items.click, pools.key
  pos_key = c_theme_id.astype(np.int64) * n_items + c_item_id
  at = np.searchsorted(ukey, pos_key)
  in_pool = ((at < ukey.shape[0]) & (ukey[np.minimum(at, ukey.shape[0] - 1)] == pos_key)
             if ukey.size else np.zeros(pos_key.shape, bool))
  avail = pools.count[c_theme_id] - in_pool                       # (N,) candidates per click
  stats["clicks_item_not_in_pool"] = int(np.count_nonzero(keep & ~in_pool))
  no_pool = keep & (avail < 1)
  if no_pool.any():
    if missing_pool == "error":
      r = int(np.flatnonzero(no_pool)[0])
      theme = files.col["theme_id"][r].as_py()
      raise DataError(
          f"{files.click_path}: line {files.line[r]}: theme {theme} has no item in {ITEM_POOL} "
          f"{'that appears in the click log ' if negative_pool == 'clicked' else ''}other than "
          f"the clicked one, so no negative can be drawn ({int(no_pool.sum())} such clicks); "
          "pass missing_pool='drop' to drop and count them"
          + (", or negative_pool='pool'" if negative_pool == "clicked" else ""))
    stats["dropped_theme_without_pool"] = int(no_pool.sum())
    keep = keep & ~no_pool
  else:
    stats["dropped_theme_without_pool"] = 0
  idx = np.flatnonzero(keep)                                       # (N,) kept clicks
  n = idx.shape[0]
  if n == 0:
    raise DataError(f"{files.click_path}: no click left after the drop policies: {stats}")
  rng = np.random.default_rng(seed)
  draw = rng.integers(0, avail[idx][:, None], size=(n, negatives))  # (N, k)
  pos_at = (at - pools.start[c_theme_id])[idx][:, None]            # positive's rank in its pool
  draw += (in_pool[idx][:, None] & (draw >= pos_at))               # skip the positive
  neg_item = pools.item[pools.start[c_theme_id[idx]][:, None] + draw]   # (N, k)
  stats["negatives_with_unknown_category"] = int(np.count_nonzero(~items.known_cat[neg_item]))
  stats["negatives"] = int(neg_item.size)
  return idx, neg_item


def _click_events(files: _Files, items: _Items, pools: _Pools, idx: np.ndarray,
                  neg_item: np.ndarray, negatives: int) -> dict[str, np.ndarray]:
  """Rows per click: its negatives, then the positive (module docstring: ties)."""
  n = idx.shape[0]
  k1 = negatives + 1
  return {
      "item": np.concatenate([neg_item, items.click[idx][:, None]], 1).reshape(-1),  # (N*k1,)
      "user_raw": np.repeat(files.user_raw[0][idx], k1),
      "theme": np.repeat(pools.click_theme[idx], k1),
      "label": np.tile(np.r_[np.zeros(negatives, np.int8), np.ones(1, np.int8)], n),
      "time": np.repeat(files.time[idx], k1),
      "sample_id": (np.repeat(files.line[idx], k1) * SAMPLE_STRIDE
                    + np.tile(np.r_[np.arange(1, k1), 0], n)).astype(np.int64),
      "is_sample": np.ones(n * k1, bool),
  }


def _add_purchases(events: dict[str, np.ndarray], files: _Files, items: _Items, idx: np.ndarray,
                   stats: dict[str, Any]) -> None:
  """Purchases of the click log's users as behaviour-only events of no theme (id 0)."""
  b_user = files.user_raw[1]
  known_user = np.isin(b_user, files.user_raw[0][idx])
  stats["dropped_purchases_unknown_user"] = int(np.count_nonzero(~known_user))
  bi = np.flatnonzero(known_user)
  added = {"item": items.buy[bi], "user_raw": b_user[bi],
           "theme": np.zeros(bi.shape[0], np.int32),                # no scenario
           "label": np.ones(bi.shape[0], np.int8), "time": files.buy_time[bi],
           "sample_id": PURCHASE_SAMPLE_BASE + files.buy_line[bi],
           "is_sample": np.zeros(bi.shape[0], bool)}
  for k, v in added.items():
    events[k] = np.concatenate([events[k], v])
  stats["purchase_events"] = int(bi.shape[0])


def _event_log(events: dict[str, np.ndarray], items: _Items, pools: _Pools, raw: str,
               stats: dict[str, Any]
               ) -> tuple[builder.EventLog, dict[str, np.ndarray], dict[str, Any]]:
  """The events in time order (ties keep row order), ids compacted to the values used."""
  order = np.argsort(events["time"], kind="stable")                # ties keep row order
  sample = events["is_sample"][order]
  user_ids, user_vocab = reindex(events["user_raw"][order])
  # Vocabularies keep only the values that occur in an event (ids are compacted, in order).
  ev_item = events["item"][order]
  item_id, item_vocab = compact(ev_item, items.vocab)
  leaf_e, leaf_vocab = compact(items.cat[ev_item, 0], items.leaf_vocab)
  top_e, top_vocab = compact(items.cat[ev_item, 1], items.top_vocab)
  item = np.stack([item_id, leaf_e, top_e], 1).astype(np.int32)   # (E, 3)
  theme, theme_vocab = compact(events["theme"][order], pools.vocab)  # purchases: 0 (none)
  vocab = {"user_id": user_vocab, "item_id": item_vocab, "leaf_cate_id": leaf_vocab,
           "cate_level1_id": top_vocab, "theme_id": theme_vocab}
  fields = lambda names: tuple(Field(nm, max(int(vocab[nm].shape[0]), 2)) for nm in names)  # noqa: E731
  stats["events"] = int(order.shape[0])
  stats["samples"] = int(np.count_nonzero(sample))
  stats["themes"] = int(np.unique(theme[sample]).shape[0])
  log = builder.EventLog(
      user=user_ids[:, None].astype(np.int32), item=item, scenario=theme[:, None],
      label=events["label"][order], user_id=(user_ids - 1).astype(np.int32),
      user_fields=fields(USER_FIELDS), item_fields=fields(ITEM_FIELDS),
      scenario_fields=fields(SCENARIO_FIELDS), time=events["time"][order],
      sample_id=events["sample_id"][order], is_sample=None if sample.all() else sample,
      source=raw)
  return log, vocab, stats


def _check_present(col: pa.ChunkedArray, name: str, path: str, blocks: list) -> None:
  empty = pc.equal(pc.utf8_length(col), 0) if pa.types.is_string(col.type) else pc.is_null(col)
  if pc.any(empty).as_py():
    r = int(np.flatnonzero(empty.to_numpy(zero_copy_only=False))[0])
    raise DataError(f"{path}: line {line_of(blocks, r)}: empty {name}")


def _parse_times(col: pa.ChunkedArray, name: str, path: str, blocks: list) -> np.ndarray:
  """Text times in one of TIME_FORMATS -> (N,) int64 seconds since the epoch."""
  col = pc.utf8_trim_whitespace(col.cast(pa.string()))
  out = None
  for fmt in TIME_FORMATS:
    # Each format must match the whole text: strptime alone accepts trailing characters on
    # some platforms, so the length is checked too.
    parsed = pc.strptime(col, format=fmt, unit="s", error_is_null=True)
    width = 14 if fmt == "%Y%m%d%H%M%S" else 19
    parsed = pc.if_else(pc.equal(pc.utf8_length(col), width), parsed, pa.scalar(None, parsed.type))
    out = parsed if out is None else pc.coalesce(out, parsed)
  bad = pc.is_null(out).to_numpy(zero_copy_only=False)
  if bad.any():
    r = int(np.flatnonzero(bad)[0])
    raise DataError(f"{path}: line {line_of(blocks, r)}: {name} {col[r].as_py()!r} is in no known "
                    f"time format; expected one of {list(TIME_FORMATS)} ({int(bad.sum())} such rows)")
  return out.cast(pa.int64()).to_numpy(zero_copy_only=False)


def _id_space(cols: list[pa.ChunkedArray]) -> list[np.ndarray]:
  """Columns of one id space as numpy arrays: int64 if every value is a decimal integer, else
  str (so that ids sort numerically or byte-wise, the same in every file)."""
  cols = [c.cast(pa.string()) for c in cols]
  numeric = all(pc.all(pc.match_substring_regex(c, r"^[0-9]{1,18}$")).as_py() in (True, None)
                for c in cols)
  if numeric:
    return [c.cast(pa.int64()).to_numpy(zero_copy_only=False) for c in cols]
  return [c.to_numpy(zero_copy_only=False).astype(str) for c in cols]
