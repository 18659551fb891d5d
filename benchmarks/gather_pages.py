"""Resident file pages of training gathers on a large built dataset, with and without the budget.

    .venv/bin/python -m benchmarks.gather_pages --built=DIR            # e.g. scale.py --keep's
    .venv/bin/python -m benchmarks.gather_pages --built=DIR --batches=32 --batch=1024

Issue 23. `BuiltDataset.gather` reads each sample's row and its history rows from memory-mapped
arrays; the pages it maps stay in the process's resident set until released, and
`BuiltDataset.gather` releases them past `schema.PAGE_BUDGET_BYTES` (`BuiltDataset.bound_pages`).
This gathers `--batches` batches of `--batch` random training rows (seed 0) on one thread, twice:
with the budget, and with none (`page_budget=None`), each in a fresh child process, and prints
per batch the gather's seconds and the resident anonymous and file pages after it (Linux
`/proc/self/status`), then each pass's peak resident set (VmHWM). Timings depend on the machine's
load and on whether the page cache holds the dataset; the pages do not.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GIB = 2 ** 30

_CHILD = r"""
import json, sys, time
import numpy as np
from mscan_jax.data import schema

def status():
  out = {}
  with open("/proc/self/status") as f:
    for line in f:
      key, _, value = line.partition(":")
      if key in ("VmHWM", "RssAnon", "RssFile"):
        out[key] = int(value.split()[0]) * 1024
  return out

path, budget, batches, batch = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
ds = schema.BuiltDataset(path, page_budget=None if budget == "none" else schema.PAGE_BUDGET_BYTES)
train = np.asarray(ds.splits["train"])
rng = np.random.default_rng(0)
for i in range(batches):
  rows = rng.choice(train, batch)
  t = time.perf_counter()
  ds.gather(rows)
  print(json.dumps({"batch": i, "seconds": time.perf_counter() - t, **status()}), flush=True)
"""


def run_pass(built: str, budget: str, batches: int, batch: int) -> list[dict]:
  out = subprocess.run([sys.executable, "-c", _CHILD, built, budget, str(batches), str(batch)],
                       cwd=REPO, capture_output=True, text=True)
  if out.returncode != 0:
    raise SystemExit(f"error: the gather child failed:\n{out.stderr[-2000:]}")
  return [json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")]


def main(argv=None) -> None:
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--built", required=True, help="a built dataset (prepare.py --out, scale.py --keep)")
  p.add_argument("--batches", type=int, default=16)
  p.add_argument("--batch", type=int, default=1024, help="training rows per batch")
  a = p.parse_args(argv)
  if not os.path.exists(os.path.join(a.built, "schema.json")):
    raise SystemExit(f"error: --built={a.built}: not a built dataset (no schema.json)")
  from mscan_jax.data import schema
  with open(os.path.join(a.built, "stats.json")) as f:
    events = json.load(f)["num_events"]
  print(f"benchmarks/gather_pages.py: {events:,} events, {a.batches} batches of {a.batch} random "
        f"training rows; budget {schema.PAGE_BUDGET_BYTES / GIB:g} GiB; 1-min load average "
        f"{os.getloadavg()[0]:.1f}; GiB = 2^30")
  for budget in ("default", "none"):
    recs = run_pass(a.built, budget, a.batches, a.batch)
    print(f"\npage budget: {'PAGE_BUDGET_BYTES' if budget == 'default' else 'none'}")
    print(f"{'batch':>5} {'seconds':>8} {'RssAnon':>8} {'RssFile':>8}")
    for r in recs:
      print(f"{r['batch']:>5} {r['seconds']:>8.3f} {r['RssAnon'] / GIB:>7.2f}G "
            f"{r['RssFile'] / GIB:>7.2f}G")
    print(f"peak resident set (VmHWM): {max(r['VmHWM'] for r in recs) / GIB:.2f} GiB")


if __name__ == "__main__":
  main()
