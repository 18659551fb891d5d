"""Peak resident memory of `launch.py` at the default model size, training and evaluation apart.

    .venv/bin/python -m benchmarks.memory                      # ~1M samples: 20 steps, full test
    .venv/bin/python -m benchmarks.memory --users=2500         # ~100k samples, a minute
    .venv/bin/python -m benchmarks.memory --launch=/tmp/old/launch.py   # another checkout's code
    .venv/bin/python -m benchmarks.memory -- --config.mscan.coattention_tile=0   # more flags

Issue "Nothing leaks, nothing merges", defect 10: `launch.py` at the default model size once
peaked at 7.5 GB RSS after 20 training steps and 11.8 GB while evaluating a 1M-row log (the
co-attention's (B, Lh, Ls, 200) pair tensor for the evaluation batch of 4096, kept by
`retain_host_memory`). Target: a peak under 4 GB whatever the number of test rows.

The data: the synthetic `large` preset (Lh 50, Ls 20, 64 scenarios, 100k items) with
`--users` users (25,000: about 1M samples, of which 40% test), built once into `--cache_dir`.
The model: M-scan with the default config (embedding 32, towers [512, 256], attention FFN
[200, 80], training batch 1024, evaluation batch 4096). One child process runs `launch.py` with
`--config.train.max_steps=20 --config.train.eval_every_steps=20` (20 steps, one validation,
then the test split with the best parameters, predictions.parquet written). The child wraps
`steps.predict` to read the process's peak RSS (VmHWM, /proc/self/status) when each evaluation
starts and ends, so one run gives:

  training     the peak before the first evaluation (data, model, compilation, 20 steps)
  validation   the peak at the end of the validation pass
  test         the peak at the end of the test pass (the run's peak but for writing results)
  run          the child's peak RSS as `getrusage(RUSAGE_CHILDREN)` reports it

Peak RSS counts the pages of the memory-mapped dataset that the run touched. Figures are
printed, never asserted.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time

from benchmarks.launch_child import RSS, RUN_LAUNCH

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GIB = 1 << 30

# Runs in the child, in the folder of the launch.py under test (its mscan_jax is imported).
_CHILD = r"""
import json, os, runpy, sys, time
marks_path, launch = sys.argv[1], sys.argv[2]
from mscan_jax.training import steps     # imports jax; starts no computation
""" + RSS + r"""
marks, t0 = [], time.perf_counter()
_predict = steps.predict

def predict(params, dataset, rows, **kw):
  marks.append({"event": "start", "rows": int(len(rows)), "peak": peak(),
                "t": time.perf_counter() - t0})
  out = _predict(params, dataset, rows, **kw)
  marks.append({"event": "end", "rows": int(len(rows)), "peak": peak(),
                "t": time.perf_counter() - t0})
  return out

""" + RUN_LAUNCH


def build_data(users: int, cache_dir: str) -> tuple[str, dict]:
  """The `large` preset with `users` users, built once; returns its path and split sizes."""
  sys.path.insert(0, REPO)
  from mscan_jax.data import synthetic
  from mscan_jax.data.schema import BuiltDataset
  path = synthetic.ensure_synthetic("large", 0, cache_dir, num_users=users)
  ds = BuiltDataset(path)
  sizes = {split: ds.split_size(split) for split in ("train", "valid", "test")}
  return path, {"samples": sum(sizes.values()), **sizes, "max_all_len": ds.schema.max_all_len,
                "max_cur_len": ds.schema.max_cur_len}


def run_launch(launch: str, data_path: str, workdir: str, steps: int, extra: list[str]) -> dict:
  """Runs `launch` in a child; returns its phase peaks (bytes) and seconds."""
  marks_path = os.path.join(workdir, "memory_marks.json")
  args = ["--config.data.name=built", f"--config.data.path={data_path}",
          f"--config.train.max_steps={steps}", f"--config.train.eval_every_steps={steps}",
          "--config.train.progress=False", f"--workdir={os.path.join(workdir, 'run')}", *extra]
  start = time.perf_counter()
  proc = subprocess.run([sys.executable, "-c", _CHILD, marks_path, os.path.abspath(launch), *args],
                        cwd=os.path.dirname(os.path.abspath(launch)), capture_output=True, text=True)
  seconds = time.perf_counter() - start
  if proc.returncode:
    sys.stderr.write(proc.stdout[-4000:] + proc.stderr[-4000:])
    raise SystemExit(f"launch.py failed with exit code {proc.returncode}")
  ru_maxrss = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024   # KiB on Linux
  with open(marks_path) as f:
    marks = json.load(f)
  evals = [m for m in marks if m["event"] == "end"]
  first = next(m for m in marks if m["event"] == "start")
  return {"training": first["peak"], "validation": evals[0]["peak"],
          "test": evals[-1]["peak"], "test_rows": evals[-1]["rows"],
          "valid_rows": evals[0]["rows"],
          "run": ru_maxrss,                  # the only child of this process
          "eval_seconds": sum(e["t"] - s["t"] for s, e in zip(
              [m for m in marks if m["event"] == "start"], evals)),
          "seconds": seconds}


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--users", type=int, default=25_000,
                      help="users of the `large` preset (25,000: ~1M samples)")
  parser.add_argument("--steps", type=int, default=20, help="training steps")
  parser.add_argument("--launch", default=os.path.join(REPO, "launch.py"),
                      help="the launch.py to measure (its folder's mscan_jax is used)")
  parser.add_argument("--cache_dir", default=os.path.join(REPO, "data_cache"))
  parser.add_argument("--tmp", default=None, help="where the run folder is made (deleted after)")
  parser.add_argument("extra", nargs="*", help="further launch.py flags, after --")
  a = parser.parse_args(argv)

  t = time.perf_counter()
  data_path, sizes = build_data(a.users, a.cache_dir)
  print(f"data: synthetic large, {a.users:,} users: {sizes['samples']:,} samples (train "
        f"{sizes['train']:,}, valid {sizes['valid']:,}, test {sizes['test']:,}), "
        f"Lh {sizes['max_all_len']}, Ls {sizes['max_cur_len']} ({time.perf_counter() - t:.0f} s)")
  print(f"launch: {a.launch} {' '.join(a.extra)}")
  with tempfile.TemporaryDirectory(dir=a.tmp) as workdir:
    r = run_launch(a.launch, data_path, workdir, a.steps, a.extra)
  print(f"{'phase':<12} {'rows':>9} {'peak RSS':>9}")
  print(f"{'training':<12} {a.steps:>6} st {r['training'] / GIB:8.2f}G")
  print(f"{'validation':<12} {r['valid_rows']:>9,} {r['validation'] / GIB:8.2f}G")
  print(f"{'test':<12} {r['test_rows']:>9,} {r['test'] / GIB:8.2f}G")
  print(f"{'run':<12} {'':>9} {r['run'] / GIB:8.2f}G   (getrusage RUSAGE_CHILDREN)")
  print(f"{r['seconds']:.0f} s in all, {r['eval_seconds']:.0f} s evaluating "
        f"({(r['valid_rows'] + r['test_rows']) / max(r['eval_seconds'], 1e-9):,.0f} rows/s); "
        f"1-min load average {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
  main()
