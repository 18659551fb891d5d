"""Throughput of the sequence builder and of the whole dataset build on a large random log.

    .venv/bin/python -m benchmarks.sequences [--events=5000000] [--users=200000] [--repeats=3]

Issue #2, item 3: `sequences.build_sequences` (S_u and H_u of every event, §2.1) must handle at
least 1M events/s on one core on a log of >= 5M events. This script draws a random log (users
with log-normal activity, a few scenarios of unequal traffic, ~5% clicks), times
`build_sequences` with Ls = 20, Lh = 40 in both `all_seq_mode`s, and the blocked build
(`sequences.iter_sequence_blocks`, what `build_dataset` runs since issue 23), then times the whole
`builder.build_dataset` (validation, a stable time sort of shuffled rows with tied timestamps,
the user filter, sequences, splits, statistics and writing the .npy files into a temporary
directory, deleted afterwards).

Each figure is the best of `--repeats` runs, as wall-clock time and as process CPU time (on a
shared machine the CPU time is the steadier figure). numpy runs single-threaded here: its sorts
and gathers are single-threaded anyway, and BLAS threads are pinned to 1 below.
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
  os.environ.setdefault(_var, "1")

import argparse        # noqa: E402
import shutil          # noqa: E402
import tempfile        # noqa: E402
import time            # noqa: E402

import numpy as np     # noqa: E402

from mscan_jax.data import builder, sequences     # noqa: E402
from mscan_jax.data.schema import Field             # noqa: E402

TARGET = 1_000_000     # events/s


def random_log(num_events: int, num_users: int, num_scenarios: int, num_items: int,
               click_rate: float, seed: int) -> dict[str, np.ndarray]:
  """A time-ordered random log: row r is the r-th event."""
  rng = np.random.default_rng(seed)
  activity = rng.lognormal(0.0, 1.0, num_users)
  user = np.searchsorted(np.cumsum(activity / activity.sum()), rng.random(num_events))
  user = np.minimum(user, num_users - 1)                               # (E,) user key
  traffic = 1.0 / np.arange(1, num_scenarios + 1)
  scenario = 1 + np.searchsorted(np.cumsum(traffic / traffic.sum()), rng.random(num_events))
  scenario = np.minimum(scenario, num_scenarios)
  return {"user_id": user.astype(np.int32), "scenario": scenario.astype(np.int32),
          "item": rng.integers(1, num_items, num_events).astype(np.int32),
          "label": (rng.random(num_events) < click_rate).astype(np.int8)}


def best_of(repeats: int, fn) -> tuple[float, float]:
  """(best wall seconds, best CPU seconds) of `repeats` calls of fn()."""
  walls, cpus = [], []
  for _ in range(repeats):
    w, c = time.perf_counter(), time.process_time()
    result = fn()
    walls.append(time.perf_counter() - w)
    cpus.append(time.process_time() - c)
    del result
  return min(walls), min(cpus)


def main() -> None:
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--events", type=int, default=5_000_000)
  p.add_argument("--users", type=int, default=200_000)
  p.add_argument("--scenarios", type=int, default=3)
  p.add_argument("--items", type=int, default=1_000_000)
  p.add_argument("--click_rate", type=float, default=0.05)
  p.add_argument("--max_cur_len", type=int, default=20)
  p.add_argument("--max_all_len", type=int, default=40)
  p.add_argument("--repeats", type=int, default=3)
  p.add_argument("--skip_build", action="store_true", help="time build_sequences only")
  p.add_argument("--tmp", default=None, help="where the built dataset is written (then deleted)")
  p.add_argument("--seed", type=int, default=0)
  args = p.parse_args()

  e = args.events
  log = random_log(e, args.users, args.scenarios, args.items, args.click_rate, args.seed)
  print(f"log: {e:,} events, {args.users:,} users, {args.scenarios} scenarios, "
        f"click rate {log['label'].mean():.4f}; Ls={args.max_cur_len}, Lh={args.max_all_len}")
  ok = True
  for mode in ("impressions", "clicks"):
    wall, cpu = best_of(args.repeats, lambda: sequences.build_sequences(
        log["user_id"], log["scenario"], log["label"], max_cur_len=args.max_cur_len,
        max_all_len=args.max_all_len, all_seq_mode=mode))
    ok &= e / cpu >= TARGET
    print(f"build_sequences {mode:>11}: {wall:6.2f} s wall ({e / wall / 1e6:5.2f}M events/s), "
          f"{cpu:6.2f} s CPU ({e / cpu / 1e6:5.2f}M events/s)")
    # The blocked build that build_dataset runs (memory bounded by a block, not the log).
    wall, cpu = best_of(args.repeats, lambda: sum(1 for _ in sequences.iter_sequence_blocks(
        log["user_id"], log["scenario"], log["label"], max_cur_len=args.max_cur_len,
        max_all_len=args.max_all_len, all_seq_mode=mode)))
    print(f"  blocked     {mode:>11}: {wall:6.2f} s wall ({e / wall / 1e6:5.2f}M events/s), "
          f"{cpu:6.2f} s CPU ({e / cpu / 1e6:5.2f}M events/s)")
  print(f"target {TARGET / 1e6:.0f}M events/s (CPU): {'met' if ok else 'NOT met'}")
  if args.skip_build:
    return

  # The whole build, on shuffled rows with timestamps of 1 s resolution (many ties).
  rng = np.random.default_rng(args.seed + 1)
  perm = rng.permutation(e)
  seconds = (np.arange(e) // 4)[perm]                                  # 4 events per second
  ev = builder.EventLog(
      user=(log["user_id"][perm] + 1)[:, None], item=log["item"][perm][:, None],
      scenario=log["scenario"][perm][:, None], label=log["label"][perm],
      user_id=log["user_id"][perm], user_fields=(Field("user_id", args.users + 1),),
      item_fields=(Field("item_id", args.items),),
      scenario_fields=(Field("scenario_id", args.scenarios + 1),), time=seconds,
      source="benchmark")
  tmp = tempfile.mkdtemp(prefix="bench_sequences_", dir=args.tmp)
  try:
    stats = {}

    def run():
      shutil.rmtree(os.path.join(tmp, "built"), ignore_errors=True)
      stats.update(builder.build_dataset(os.path.join(tmp, "built"), ev,
                                         max_cur_len=args.max_cur_len,
                                         max_all_len=args.max_all_len, name="benchmark"))
    wall, cpu = best_of(min(args.repeats, 2), run)
  finally:
    shutil.rmtree(tmp, ignore_errors=True)
  print(f"build_dataset (impressions): {wall:6.2f} s wall ({e / wall / 1e6:5.2f}M events/s), "
        f"{cpu:6.2f} s CPU ({e / cpu / 1e6:5.2f}M events/s)")
  print(builder.format_stats(stats))


if __name__ == "__main__":
  main()
