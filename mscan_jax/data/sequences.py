"""Behaviour sequences S_u and H_u of every sample, as row indices into a time-ordered log.

Paper §2.1: for a sample (u, i, s) the model sees S_u, the user's earlier *clicked* behaviours
in the current scenario s, and H_u, the user's earlier behaviours in all scenarios (each with
its scenario id). "Earlier" is strict: a sample never sees itself nor any later event, so no
label leaks into its own features.

The log's rows are in time order (the caller has sorted the events by timestamp). With the
timestamps given (`time`), "earlier" means a strictly earlier timestamp: events that share a
timestamp never see each other, whatever their row order, so a duplicated row or two events
logged in the same second never leak each other's label. Without them, the row order is the
time order and every row is its own instant.

The construction is vectorised: one sort of the events by (group, row), an exclusive cumulative
count of the *eligible* history events (all events, or clicked events only) in that order, and
index arithmetic. For the event at sorted position p, the eligible events of its group that
precede it are `K[c(p) - n(p) : c(p)]`, where K lists the eligible events in sorted order, c(p)
is the number of eligible events before the first event of p's group with p's timestamp, and
n(p) that count restricted to p's group (capped at L, the most recent kept). Cost O(E log E + E * L); no Python loop over users or rows.

`build_sequences` returns both (E, L) arrays whole (480 bytes per event at Ls 20, Lh 40, int64).
The dataset builder runs the same construction per block of rows instead
(`iter_sequence_blocks`, `write_sequences`): each block's rows see the earlier blocks through a
per-group carry of their last L eligible rows, and each block is appended to the .npy files,
so memory is bounded by a block and the per-id carry, whatever the length of the log (issue 23;
Ali-CCP has 85M events). Both give the same values (tested); stored indices are int32 below
2**31 rows (`index_dtype`).
"""

from __future__ import annotations

import numpy as np

from mscan_jax.data import spill
from mscan_jax.data.schema import ALL_SEQ_MODES

# Elements per block when the (E, L) index arrays are filled: keeps temporaries in cache.
_BLOCK_ELEMENTS = 1 << 16


def build_sequences(user_id: np.ndarray, scenario: np.ndarray, click: np.ndarray, *, max_cur_len: int,
                    max_all_len: int, all_seq_mode: str = "impressions",
                    time: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
  """Row indices of S_u (cur_idx) and H_u (all_idx) for every event of a time-ordered log.

  Events are in time order (the caller has already sorted them by timestamp). Returns cur_idx
  (E, Ls) int64 and all_idx (E, Lh) int64: row numbers of strictly earlier events of the same
  user (a strictly earlier timestamp when `time` is given, else an earlier row), -1 = padding,
  left-aligned and oldest first (padding at the end), keeping the most recent when over the cap.
    cur_idx: earlier CLICKED events of the same user in the same scenario (S_u).
    all_idx: earlier events of the same user in any scenario (H_u): all impressions
      ("impressions", the authors' choice; the click flags travel with the batch as `all_click`)
      or clicked events only ("clicks").

  Args:
    user_id: (E,) integer user key.
    scenario: (E,) integer scenario id.
    click: (E,) 0/1 click label (bool or integer).
    max_cur_len: Ls >= 1.
    max_all_len: Lh >= 1.
    all_seq_mode: one of `schema.ALL_SEQ_MODES`.
    time: (E,) non-decreasing timestamps (numbers or datetime64), or None: every row is its
      own instant.
  """
  user_id, scenario, click, time = _checked(user_id, scenario, click, time, max_cur_len=max_cur_len,
                                            max_all_len=max_all_len, all_seq_mode=all_seq_mode)
  _check_values(user_id, scenario, click, time)
  e = user_id.shape[0]
  clicked = click.astype(bool, copy=False)
  user = user_id.astype(np.int64, copy=False)
  num_scen = int(scenario.max()) + 1 if e else 1
  if e and int(user.max()) >= np.iinfo(np.int64).max // num_scen:
    user = np.unique(user, return_inverse=True)[1].reshape(-1)       # ranks: the key fits int64
  # S_u: group = (user, scenario); history = clicked events only.
  cur_idx = _earlier_in_group(user * num_scen + scenario.astype(np.int64, copy=False), clicked,
                              max_cur_len, time)
  # H_u: group = user; history = all impressions or clicked events only.
  all_idx = _earlier_in_group(user, None if all_seq_mode == "impressions" else clicked,
                              max_all_len, time)
  return cur_idx, all_idx


# Rows per block of `iter_sequence_blocks`: a few (block, cap) int64 temporaries, ~0.2 GB at Lh 40.
DEFAULT_BLOCK_ROWS = 1 << 17


def index_dtype(num_rows: int) -> np.dtype:
  """The dtype of stored row indices for a log of `num_rows` rows: int32 when every row number
  fits (fewer than 2**31 rows: Ali-CCP's 85M does), int64 past that. -1 is the padding in both."""
  return np.dtype(np.int32 if num_rows <= np.iinfo(np.int32).max else np.int64)


def iter_sequence_blocks(user_id: np.ndarray, scenario: np.ndarray, click: np.ndarray, *,
                         max_cur_len: int, max_all_len: int, all_seq_mode: str = "impressions",
                         time: np.ndarray | None = None, block_rows: int = DEFAULT_BLOCK_ROWS):
  """`build_sequences`, one block of rows at a time: yields (lo, hi, cur_idx[lo:hi],
  all_idx[lo:hi]) for consecutive blocks covering the log, the values equal to
  `build_sequences`'s and the dtype `index_dtype(E)`.

  Memory does not grow with the log: a block's rows see the earlier blocks through a carry, per
  group (user for H_u, (user, scenario) for S_u), of its last `cap` eligible rows, updated after
  each block (per-id state: U * (P+1) * Ls + U * Lh indices, not per event). With `time`, a
  block ends where the timestamp changes (a run of equal timestamps is never split), so every
  carried event is strictly earlier than the block's. User keys much larger than the number of
  events (not contiguous) are first ranked, an (E,) int64 array. When U * (P+1) exceeds ~4E the
  (user, scenario) pairs get slots in order of first appearance instead of a dense table, so
  the carry of S_u grows with the pairs that occur.
  """
  fn = "iter_sequence_blocks"
  user_id, scenario, click, time = _checked(user_id, scenario, click, time, max_cur_len=max_cur_len,
                                            max_all_len=max_all_len, all_seq_mode=all_seq_mode,
                                            fn=fn)
  if block_rows < 1:
    raise ValueError(f"{fn}: block_rows must be >= 1, got {block_rows}")
  e = user_id.shape[0]
  if e == 0:
    return
  dtype = index_dtype(e)
  if user_id.min() < 0 or scenario.min() < 0:
    raise ValueError(f"{fn}: user_id and scenario must be non-negative")
  num_scen = int(scenario.max()) + 1
  num_users = int(user_id.max()) + 1
  user = user_id
  if num_users * num_scen > 4 * e + 1024:                          # sparse keys: rank them
    user = np.unique(user_id, return_inverse=True)[1].reshape(-1)
    num_users = int(user.max()) + 1
  # (user, scenario) pairs: dense keys when U * (P+1) is small (Ali-CCP: 3 scenarios), else
  # slots given in order of first appearance (Cloud Theme: 355 themes, most pairs never occur).
  pairs = None if num_users * num_scen <= 4 * e + 1024 else _Slots()
  cur_carry = _Carry(num_users * num_scen if pairs is None else 0, max_cur_len, dtype)
  all_carry = _Carry(num_users, max_all_len, dtype)
  lo = 0
  while lo < e:
    hi = min(lo + block_rows, e)
    if time is not None and hi < e:                                # never split equal times
      hi = max(hi, int(np.searchsorted(time, time[hi - 1], side="right")))
    u = user[lo:hi].astype(np.int64)
    s, c = scenario[lo:hi], click[lo:hi]
    t = None if time is None else time[lo:hi]
    _check_values(u, s, c, None if t is None else time[max(lo - 1, 0):hi], fn)
    clicked = c.astype(bool, copy=False)
    # Equal timestamps as one instant: the run number within the block (any time dtype).
    rank = None
    if t is not None:
      rank = np.zeros(hi - lo, np.int64)
      np.cumsum(t[1:] != t[:-1], out=rank[1:])
    pair = u * num_scen + s.astype(np.int64, copy=False)
    if pairs is not None:
      pair = pairs(pair)
      cur_carry.grow(pairs.n)
    cur = cur_carry.block(pair, clicked, rank, lo)
    alls = all_carry.block(u, None if all_seq_mode == "impressions" else clicked, rank, lo)
    yield lo, hi, cur, alls
    lo = hi


class _Carry:
  """The last `cap` eligible rows of each group seen so far (global row numbers, oldest first,
  RIGHT-aligned: -1 padding first), for `iter_sequence_blocks`."""

  def __init__(self, num_groups: int, cap: int, dtype: np.dtype):
    self.cap, self.dtype = cap, dtype
    self.hist = np.full((num_groups, cap), -1, dtype)               # (G, cap)
    self.n = np.zeros(num_groups, np.int64)                         # (G,) real entries
    self._view()

  def _view(self) -> None:
    self.rows = self.hist.view(np.dtype((np.void, self.cap * self.dtype.itemsize))).reshape(-1)

  def grow(self, num_groups: int) -> None:
    """Room for groups 0..num_groups-1 (doubling, so growing costs O(G) in all)."""
    have = self.hist.shape[0]
    if num_groups <= have:
      return
    size = max(num_groups, 2 * have)
    self.hist = np.concatenate([self.hist, np.full((size - have, self.cap), -1, self.dtype)])
    self.n = np.concatenate([self.n, np.zeros(size - have, np.int64)])
    self._view()

  def block(self, group: np.ndarray, eligible: np.ndarray | None, rank: np.ndarray | None,
            lo: int) -> np.ndarray:
    """(b, cap) indices of the block's rows (global row lo + i), then the carry updated.

    Row r's history is the carried entries followed by its in-block ones. Side by side in one
    row of M = [carry, right-aligned (cap) | in-block, left-aligned (cap)] they are contiguous,
    so the last `cap` of them are one window of M's row: the output (left-aligned) starts at
    max(cap - n_old, n_in), the new carry (right-aligned) at n_in. One sentinel row per group
    of the block, appended after its rows (strictly later, never eligible), gives the carry.
    """
    b, cap = group.shape[0], self.cap
    groups = _sorted_unique(group)                                  # (k,)
    g = np.concatenate([group, groups])                             # (R,) = (b + k,)
    el = None if eligible is None else np.concatenate([eligible, np.zeros(groups.shape[0], bool)])
    t = None if rank is None else np.concatenate([rank, np.full(groups.shape[0], rank[-1] + 1)])
    local = _earlier_in_group(g, el, cap, t)                        # (R, cap), in-block rows
    real = local >= 0
    n_in = np.count_nonzero(real, axis=1)                           # (R,) <= cap
    m = np.empty((g.shape[0], 2 * cap), self.dtype)                 # (R, 2 cap)
    m[:, :cap] = self.rows[g].view(self.dtype).reshape(-1, cap)      # one item per row: fast
    m[:, cap:] = local
    np.add(m[:, cap:], lo, out=m[:, cap:], where=real)              # global row numbers
    start = np.arange(g.shape[0]) * (2 * cap)
    out = _windows(m, cap)[start + np.maximum(cap - self.n[g], n_in)]
    out = out.view(self.dtype).reshape(-1, cap)                     # (R, cap), left-aligned
    self.rows[groups] = _windows(m, cap)[start[b:] + n_in[b:]]
    self.n[groups] = np.minimum(self.n[groups] + n_in[b:], cap)
    return out[:b]


def _sorted_unique(a: np.ndarray) -> np.ndarray:
  """np.unique by one sort (numpy's hashing unique is slower on many distinct int64 keys)."""
  a = np.sort(a)
  return a[np.concatenate([[True], a[1:] != a[:-1]])] if a.shape[0] else a


class _Slots:
  """Dense slot numbers 0..n-1 for int64 keys, in order of first appearance: per-key state of
  `iter_sequence_blocks` when the key space is too large for a dense table. Keys kept sorted
  with their slots; a block's new keys are inserted (O(keys) per block)."""

  def __init__(self):
    self.keys = np.zeros(0, np.int64)                               # (n,) sorted
    self.slots = np.zeros(0, np.int64)                              # (n,) slot of each key
    self.n = 0

  def __call__(self, keys: np.ndarray) -> np.ndarray:
    """(b,) slots of `keys` (b,), new keys given the next slots."""
    order = np.argsort(keys)
    ks = keys[order]
    first = np.empty(ks.shape[0], bool)
    first[:1] = True
    np.not_equal(ks[1:], ks[:-1], out=first[1:])
    uniq = ks[first]
    inv = np.empty(ks.shape[0], np.int64)
    inv[order] = np.cumsum(first) - 1                               # (b,) index into uniq
    pos = np.searchsorted(self.keys, uniq)
    found = pos < self.keys.shape[0]
    found[found] = self.keys[pos[found]] == uniq[found]
    slot = np.empty(uniq.shape[0], np.int64)
    slot[found] = self.slots[pos[found]]
    new = ~found
    slot[new] = np.arange(self.n, self.n + int(new.sum()))
    if new.any():
      self.keys = np.insert(self.keys, pos[new], uniq[new])
      self.slots = np.insert(self.slots, pos[new], slot[new])
      self.n += int(new.sum())
    return slot[inv]


def _windows(m: np.ndarray, cap: int) -> np.ndarray:
  """Every run of `cap` consecutive items of the contiguous array `m`, each seen as one void
  item (an overlapping strided view, read only): windows[k] = m.flat[k : k + cap]."""
  size = m.dtype.itemsize
  return np.ndarray(shape=(m.size - cap + 1,), dtype=np.dtype((np.void, cap * size)), buffer=m,
                    strides=(size,))


def write_sequences(cur_path: str, all_path: str, user_id: np.ndarray, scenario: np.ndarray,
                    click: np.ndarray, *, max_cur_len: int, max_all_len: int,
                    all_seq_mode: str = "impressions", time: np.ndarray | None = None,
                    count_rows: np.ndarray | None = None,
                    block_rows: int = DEFAULT_BLOCK_ROWS) -> tuple[np.dtype, int, int]:
  """Writes cur_idx (E, Ls) and all_idx (E, Lh) (`build_sequences`) into the .npy files
  `cur_path` and `all_path`, block by block (`iter_sequence_blocks`): the header first, then
  each block appended in the final row-major layout, so neither array is ever held whole.
  Plain file writes, not a writable memory map, whose dirty pages would count as resident.

  Returns (dtype, cur entries, all entries): the index dtype (`index_dtype`) and the number of
  real (>= 0) entries over the rows where `count_rows` (E,) bool holds (all rows when None).
  """
  e = int(np.shape(user_id)[0])
  dtype = index_dtype(e)
  counts = [0, 0]
  with open(cur_path, "wb") as fc, open(all_path, "wb") as fa:
    for f, cap in ((fc, max_cur_len), (fa, max_all_len)):
      spill.write_npy_header(f, dtype, (e, cap))
    for lo, hi, cur, alls in iter_sequence_blocks(
        user_id, scenario, click, max_cur_len=max_cur_len, max_all_len=max_all_len,
        all_seq_mode=all_seq_mode, time=time, block_rows=block_rows):
      keep = None if count_rows is None else np.asarray(count_rows[lo:hi], bool)
      for k, (f, arr) in enumerate(((fc, cur), (fa, alls))):
        f.write(np.ascontiguousarray(arr).data)
        real = arr >= 0
        counts[k] += int(np.count_nonzero(real if keep is None else real[keep]))
  return dtype, counts[0], counts[1]


def _checked(user_id, scenario, click, time, *, max_cur_len: int, max_all_len: int,
             all_seq_mode: str, fn: str = "build_sequences"):
  """The arguments of `build_sequences` (or of `fn`) as arrays, checked: a ValueError names the
  first problem. Returns (user_id, scenario, click, time), time as int64 when datetime64."""
  user_id, scenario, click = np.asarray(user_id), np.asarray(scenario), np.asarray(click)
  e = user_id.shape[0] if user_id.ndim == 1 else -1
  for name, arr in (("user_id", user_id), ("scenario", scenario), ("click", click)):
    if arr.ndim != 1 or arr.shape[0] != e:
      raise ValueError(f"{fn}: {name} must be 1-D of length {max(e, 0)} like user_id, "
                       f"got shape {arr.shape}")
    if not (np.issubdtype(arr.dtype, np.integer) or arr.dtype == np.bool_):
      raise ValueError(f"{fn}: {name} must be integer, got dtype {arr.dtype}")
  if all_seq_mode not in ALL_SEQ_MODES:
    raise ValueError(f"{fn}: all_seq_mode must be one of {ALL_SEQ_MODES}, got {all_seq_mode!r}")
  if max_cur_len < 1 or max_all_len < 1:
    raise ValueError(f"{fn}: caps must be >= 1, got max_cur_len={max_cur_len}, "
                     f"max_all_len={max_all_len}")
  if time is not None:
    time = np.asarray(time)
    if time.shape != (e,):
      raise ValueError(f"{fn}: time must have shape ({e},), got {time.shape}")
    if np.issubdtype(time.dtype, np.datetime64):
      time = time.view(np.int64)
  return user_id, scenario, click, time


def _check_values(user_id: np.ndarray, scenario: np.ndarray, click: np.ndarray,
                  time: np.ndarray | None, fn: str = "build_sequences") -> None:
  """The value checks of `_checked`, on a whole log or one block of it (time includes the row
  before the block, so the order is checked across block boundaries)."""
  if user_id.shape[0] == 0:
    return
  if not np.array_equal(click.astype(bool, copy=False), click):
    raise ValueError(f"{fn}: click must hold only 0 and 1")
  if user_id.min() < 0 or scenario.min() < 0:
    raise ValueError(f"{fn}: user_id and scenario must be non-negative")
  if time is not None and time.shape[0] > 1 and bool(np.any(time[1:] < time[:-1])):
    raise ValueError(f"{fn}: time must be non-decreasing (the rows in time order)")


def _group_order(group: np.ndarray) -> np.ndarray:
  """Permutation sorting events by (group, row). (E,) int64."""
  e = group.shape[0]
  gmax = int(group.max()) if e else 0
  if e and gmax < (np.iinfo(np.int64).max - e) // e:
    # Unique combined key: any sort kind is exact, and the default (SIMD quicksort) is the fastest.
    return np.argsort(group * e + np.arange(e, dtype=np.int64))
  return np.argsort(group, kind="stable")


def _earlier_in_group(group: np.ndarray, eligible: np.ndarray | None, cap: int,
                      time: np.ndarray | None = None) -> np.ndarray:
  """(E, cap) int64: rows of the last `cap` eligible events of the same group strictly before each row.

  `eligible` (E,) bool marks the events that may appear in a history (None = all). With
  `time` (E,) non-decreasing, "before" means a strictly smaller time. Rows are left-aligned,
  oldest first, -1 padding at the end.
  """
  e = group.shape[0]
  out = np.empty((e, cap), np.int64)
  if e == 0:
    return out
  order = _group_order(group)                                        # (E,) sorted pos -> row
  g_sorted = group[order]
  start = np.empty(e, bool)
  start[0] = True
  np.not_equal(g_sorted[1:], g_sorted[:-1], out=start[1:])           # first event of each group
  if eligible is None:
    keys = order                                                     # every event is history
    before = np.arange(e, dtype=np.int64)                            # eligible events before p
  else:
    elig_sorted = eligible[order]
    keys = order[elig_sorted]                                        # (K,) eligible rows, sorted
    before = np.cumsum(elig_sorted, dtype=np.int64)
    before -= elig_sorted                                            # exclusive cumulative count
  # Eligible events before the group's first event, broadcast over the group.
  group_start = np.maximum.accumulate(np.where(start, np.arange(e), 0))
  if time is not None:
    # Within a group the rows are in time order, so the events sharing a time are one run:
    # each event sees only what precedes the first event of its run.
    t_sorted = time[order]
    tie_start = start.copy()
    tie_start[1:] |= t_sorted[1:] != t_sorted[:-1]
    before = before[np.maximum.accumulate(np.where(tie_start, np.arange(e), 0))]
  count = before - before[group_start]                               # eligible earlier, same group
  # Back to row order: history length and first kept index into `keys` of every row.
  n = np.empty(e, np.int64)
  n[order] = np.minimum(count, cap)                                  # (E,)
  base = np.empty(e, np.int64)
  base[order] = before
  base -= n
  # `windows[k]` is the (cap * 8)-byte run keys[k : k + cap], seen as one item (an overlapping
  # strided view, read only), so a row's history is copied with one fancy-index gather; the
  # slots past its length are then overwritten with -1, where `is_pad[k]` (cap bytes) marks the
  # padding slots of a length-k history. The -1 tail of `keys` keeps every run in bounds.
  keys = np.concatenate([keys, np.full(cap, -1, np.int64)])
  row_t, mask_t = np.dtype((np.void, cap * 8)), np.dtype((np.void, cap))
  windows = np.ndarray(shape=(keys.shape[0] - cap + 1,), dtype=row_t, buffer=keys, strides=(8,))
  out_rows = out.view(row_t).reshape(e)
  j = np.arange(cap, dtype=np.int64)
  is_pad = np.ascontiguousarray(j >= np.arange(cap + 1)[:, None]).view(mask_t).reshape(cap + 1)
  block = max(1, _BLOCK_ELEMENTS // cap)
  pad = np.empty((block, cap), bool)
  pad_rows = pad.view(mask_t).reshape(block)
  for lo in range(0, e, block):
    hi = min(lo + block, e)
    out_rows[lo:hi] = windows[base[lo:hi]]                           # (b,) rows of cap
    nb = n[lo:hi]
    if nb.min() < cap:
      pad_rows[:hi - lo] = is_pad[nb]                                # (b, cap) bool
      np.putmask(out[lo:hi], pad[:hi - lo], -1)
  return out

