"""Throughput and peak memory of the raw Ali-CCP reader (`mscan_jax.data.aliccp.load_aliccp_raw`).

    .venv/bin/python -m benchmarks.aliccp_preprocess --sizes_gb=1,4 [--workers=N] [--tmp=/tmp] [--keep]

Issue #6: the real `sample_skeleton_train.csv` and `common_features_train.csv` are tens of GB,
so the reader streams them in blocks; the target is >= 50 MB/s with a peak RSS under 4 GB for
1 GB and 4 GB of input. For each size this script writes a synthetic train pair in the raw
Tianchi format into a temporary directory (about 60% skeleton, 40% common features; the sizes
of real rows: ~250 bytes per skeleton row with 15 features, ~10 KB per common row with ~440
features, most of them the multi-valued behaviour fields 109_14/110_14/127_14/150_14 that the
reader skips), reads it in a fresh subprocess (so each peak RSS is its own), prints MB/s
(MB = 10^6 bytes of input, skeleton + common) and the subprocess's peak RSS, and deletes the
files. Generation writes repeated pre-rendered blocks, so it runs at disk speed.

The files were just written, so they are read from the page cache: the figures are the
reader's parsing speed, not the disk's. MB/s is input over wall time; MB/cpu-s is input over the
reader's CPU time (user + system, all threads), which a busy shared machine changes less; the
1-minute load average is printed beside each line.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

import numpy as np

from mscan_jax.data.rawio import DEFAULT_WORKERS

SKELETON_SHARE = 0.6
BLOCK_ROWS = 50_000                  # skeleton rows rendered once, then written repeatedly


def _feature(field: str, fid: int, value: str = "1.0") -> str:
  return f"{field}\x02{fid}\x03{value}"


def write_raw_pair(out_dir: str, total_bytes: int, seed: int = 0, suffix: str = "train",
                   skeleton_rows: int | None = None) -> tuple[str, str]:
  """Writes sample_skeleton_<suffix>.csv and common_features_<suffix>.csv of ~total_bytes, or,
  with `skeleton_rows`, a common file of ~(1 - SKELETON_SHARE) * total_bytes and exactly that
  many skeleton rows (`benchmarks/scale.py` sets the event count)."""
  rng = np.random.default_rng(seed)
  common_path = os.path.join(out_dir, f"common_features_{suffix}.csv")
  skel_path = os.path.join(out_dir, f"sample_skeleton_{suffix}.csv")

  # Common features: one row per (user, visit); behaviour lists drawn from 16 rendered ones.
  behaviours = []
  for _ in range(16):
    feats = []
    for field, k in (("109_14", 140), ("110_14", 140), ("127_14", 100), ("150_14", 50)):
      ids = rng.integers(1_000_000, 9_999_999, size=k)
      vals = rng.random(k) * 5
      feats += [_feature(field, int(i), f"{v:.5f}") for i, v in zip(ids, vals)]
    behaviours.append("\x01".join(feats))
  common_bytes = int(total_bytes * (1 - SKELETON_SHARE))
  row_bytes = len(behaviours[0]) + 200
  n_common = max(common_bytes // row_bytes, 10)
  n_users = max(n_common // 3, 2)
  profile = rng.integers(1, 100, size=(n_users, 8))
  keys = [f"{k:016x}" for k in rng.choice(2 ** 62, size=n_common, replace=False)]
  users = rng.integers(0, n_users, size=n_common)
  pick = rng.integers(0, len(behaviours), size=n_common)
  with open(common_path, "w", newline="\n") as f:
    buf = []
    for r in range(n_common):
      u = int(users[r])
      prof = profile[u]
      head = [_feature("101", 10_000 + u)] + [_feature(fld, int(1000 * j + prof[j]))
                                              for j, fld in enumerate(("121", "122", "124", "125",
                                                                       "126", "127", "128", "129"))]
      feats = "\x01".join(head) + "\x01" + behaviours[pick[r]]
      buf.append(f"{keys[r]},{len(head) + 430},{feats}\n")
      if len(buf) >= 1000:
        f.write("".join(buf))
        buf = []
    f.write("".join(buf))

  # Skeleton: one rendered block of BLOCK_ROWS rows, written until the target size.
  n = BLOCK_ROWS
  click = (rng.random(n) < 0.04).astype(int)
  purchase = ((rng.random(n) < 0.01) & (click == 1)).astype(int)
  purchase[rng.random(n) < 0.0005] = 1           # a few inconsistent rows (click 0, purchase 1)
  row_key = rng.integers(0, n_common, size=n)
  items = rng.integers(1_000_000, 9_999_999, size=(n, 8))
  scen = rng.choice(np.array([9351665, 9351666, 9351667]), size=n, p=[0.6, 0.3, 0.1])
  lines = []
  for r in range(n):
    it = items[r]
    feats = [_feature("205", int(it[0])), _feature("206", int(it[1]) % 10_000),
             _feature("207", int(it[2])), _feature("210", int(it[3])),
             _feature("210", int(it[4])), _feature("216", int(it[5]) % 300_000),
             _feature("508", int(it[6]), "2.30259"), _feature("509", int(it[7]), "4.58498"),
             _feature("702", int(it[6]) + 1, "4.70048"), _feature("853", int(it[7]) + 1, "4.55388"),
             _feature("301", int(scen[r]))]
    lines.append(f"{r + 1},{click[r]},{purchase[r]},{keys[row_key[r]]},{len(feats)},"
                 + "\x01".join(feats) + "\n")
  block = "".join(lines).encode()
  target = total_bytes - os.path.getsize(common_path)
  if skeleton_rows is not None:            # whole blocks, then the first rows of one
    ends = np.cumsum([len(line) for line in lines])
    full, rest = divmod(skeleton_rows, n)
    target = full * len(block) + (int(ends[rest - 1]) if rest else 0)
  with open(skel_path, "wb") as f:
    written = 0
    while written < target:
      part = block
      if written + len(block) > target:                      # the last, partial block
        part = block[:block.rfind(b"\n", 0, target - written) + 1]
      if not part:
        break
      f.write(part)
      written += len(part)
  return skel_path, common_path


_CHILD = r"""
import json, resource, sys, time
from mscan_jax.data import aliccp
t0 = time.perf_counter()
log, vocab, stats = aliccp.load_aliccp_raw(sys.argv[1], workers=int(sys.argv[2]))
sec = time.perf_counter() - t0
use = resource.getrusage(resource.RUSAGE_SELF)
rss = use.ru_maxrss * 1024
print(json.dumps({"seconds": sec, "peak_rss": rss, "events": int(log.label.shape[0]),
                  "cpu_seconds": use.ru_utime + use.ru_stime,
                  "bytes": stats["bytes_read"], "stats": stats}))
"""


def run_one(size_gb: float, tmp_root: str, keep: bool, workers: int) -> dict:
  total = int(size_gb * 1e9)
  free = shutil.disk_usage(tmp_root).free
  if free < total * 1.2:
    raise SystemExit(f"{tmp_root}: {free / 1e9:.1f} GB free, {total * 1.2 / 1e9:.1f} GB needed")
  d = tempfile.mkdtemp(prefix="aliccp-bench-", dir=tmp_root)
  try:
    t0 = time.perf_counter()
    write_raw_pair(d, total)
    gen = time.perf_counter() - t0
    size = sum(os.path.getsize(os.path.join(d, f)) for f in os.listdir(d))
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    out = subprocess.run([sys.executable, "-c", _CHILD, d, str(workers)], cwd=root,
                         capture_output=True, text=True, check=False)
    if out.returncode != 0:
      raise SystemExit(f"reader failed:\n{out.stderr}")
    res = json.loads(out.stdout.strip().splitlines()[-1])
    res.update(size_gb=size_gb, input_bytes=size, generate_seconds=gen,
               mb_per_s=size / 1e6 / res["seconds"])
    return res
  finally:
    if not keep:
      shutil.rmtree(d, ignore_errors=True)
    else:
      print(f"kept {d}")


def main() -> None:
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--sizes_gb", default="1,4", help="comma-separated input sizes in GB (10^9 bytes)")
  p.add_argument("--tmp", default=tempfile.gettempdir(), help="where the files are written")
  p.add_argument("--keep", action="store_true", help="keep the generated files")
  p.add_argument("--workers", type=int, default=DEFAULT_WORKERS, help="threads parsing blocks")
  a = p.parse_args()
  print(f"workers={a.workers}, {os.cpu_count()} CPUs")
  print(f"{'input':>8} {'events':>10} {'seconds':>8} {'MB/s':>7} {'MB/cpu-s':>9} {'peak RSS':>9}"
        "  (generate s, load average)")
  for s in (float(x) for x in a.sizes_gb.split(",")):
    r = run_one(s, a.tmp, a.keep, a.workers)
    print(f"{r['input_bytes'] / 1e9:7.2f}G {r['events']:>10,} {r['seconds']:8.1f} "
          f"{r['mb_per_s']:7.1f} {r['input_bytes'] / 1e6 / r['cpu_seconds']:9.1f} "
          f"{r['peak_rss'] / 2 ** 30:8.2f}G  ({r['generate_seconds']:.1f}, "
          f"{os.getloadavg()[0]:.1f})", flush=True)


if __name__ == "__main__":
  main()
