"""The paper's Ali-CCP at full size on one machine: raw parse, build, training, full evaluation.

    .venv/bin/python -m benchmarks.scale --drop_raw             # 85M events: the full run
    .venv/bin/python -m benchmarks.scale --events=2000000       # a small check (minutes)
    .venv/bin/python -m benchmarks.scale --events=2000000 --keep --tmp=/big/disk --model=mscan
    .venv/bin/python -m benchmarks.scale --built=KEPT_DIR/built     # train and evaluate only

Issue 23: Ali-CCP has about 85M samples (Tianchi dataset 408: 42.3M train and 43.0M test
skeleton rows); every phase must stay within 6 GB of peak RSS on a 24 GB machine. This script

1. generates the raw Tianchi files (`sample_skeleton_{train,test}.csv`,
   `common_features_{train,test}.csv`) with `--events` skeleton rows, split between train and
   test as the real files are, and ~230 bytes of common features per event (the real
   common files' size per skeleton row), with `benchmarks.aliccp_preprocess.write_raw_pair`:
   the raw format, so the reader is measured too;
2. prepares them (`mscan_jax.data.prepare.prepare("aliccp", ...)`, what `prepare.py` runs) in a
   child process: the raw parse and the build are timed apart, each with its own peak RSS (the
   child resets its high-water mark between them, `/proc/self/clear_refs`);
3. runs `launch.py` on the built dataset in a child: `--steps` training steps (`--model`, Mix
   by default: M-scan's test pass alone would take 10 h or more on 2 cores), one validation pass, then the whole test split predicted, its AUC and
   GAUC computed and `predictions.parquet` written; training, validation and test evaluation
   each with their own peak RSS (reset at the start of each `steps.predict`).

It prints each phase's wall time and peak RSS, and the bytes per event of the raw files and of
the built dataset on disk. Every child's own peak (`os.wait4`'s ru_maxrss) is printed too. The
disk needed is about (raw + spill + built) bytes per event times the events, or with
`--drop_raw` (the raw files deleted once parsed) the larger of raw + spill and spill + built;
the script refuses to start when `--tmp` has less free space than its estimate. Figures are printed, never asserted.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

from benchmarks.aliccp_preprocess import SKELETON_SHARE, write_raw_pair
from benchmarks.launch_child import RSS, RUN_LAUNCH
from mscan_jax.data.aliccp import SPILL_BYTES_PER_EVENT

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GIB = 1 << 30
PAPER_EVENTS = 85_300_000                    # Ali-CCP: 42.3M train + 43.0M test skeleton rows
TRAIN_SHARE = 42.3 / 85.3
COMMON_BYTES_PER_EVENT = 230                 # real common files / skeleton rows, about
# Disk per event for the refusal before generating: raw (~260 skeleton + 230 common), the
# reader's spill and the filter's copy of its log (`aliccp.SPILL_BYTES_PER_EVENT` + 64) and the
# built dataset (~330 at Ls 20, Lh 40, int32 indices); the run prints the measured figures.
RAW_BYTES_PER_EVENT = 260 + COMMON_BYTES_PER_EVENT
BUILD_BYTES_PER_EVENT = SPILL_BYTES_PER_EVENT + 64 + 330


def disk_needed(events: int, drop_raw: bool) -> int:
  """Bytes of disk the run needs at its peak: the raw files and the spill, then (the raw files
  deleted after the parse with `drop_raw`) the spill and the built dataset."""
  if drop_raw:
    return events * max(RAW_BYTES_PER_EVENT + SPILL_BYTES_PER_EVENT, BUILD_BYTES_PER_EVENT)
  return events * (RAW_BYTES_PER_EVENT + BUILD_BYTES_PER_EVENT)


_PREPARE = RSS + r"""
import json, sys, time
marks_path, raw, out, drop_raw, min_scenarios = sys.argv[1:6]
from mscan_jax import config as config_lib
from mscan_jax.data import prepare

marks, t0 = {}, time.perf_counter()
_build, _check_disk = prepare.builder.build_dataset, prepare.check_disk

def check_disk(*args):                  # the parse is over; prepare checks the build's disk
  marks["parse"] = {"seconds": time.perf_counter() - t0, "peak": peak()}
  if drop_raw == "1":                   # the reader is done with them (--drop_raw)
    import shutil
    shutil.rmtree(raw)
  reset()
  marks["t1"] = time.perf_counter()
  return _check_disk(*args)

def build(out, *log, **kwargs):         # *log: no reference of ours outlives the call
  log = list(log)
  stats = _build(out, log.pop(), **kwargs)
  marks["build"] = {"seconds": time.perf_counter() - marks.pop("t1"), "peak": peak()}
  marks["events"] = stats["num_events"]
  marks["samples"] = stats["samples"]
  return stats

prepare.builder.build_dataset, prepare.check_disk = build, check_disk
data = config_lib.get_config().data
data.min_scenarios_per_user = int(min_scenarios)
prepare.prepare("aliccp", raw, out, data)
with open(marks_path, "w") as f:
  json.dump(marks, f)
"""

_LAUNCH = RSS + r"""
import json, runpy, sys, time
marks_path, launch = sys.argv[1], sys.argv[2]
from mscan_jax.training import steps

marks, t0 = [], time.perf_counter()
_predict = steps.predict

def predict(params, dataset, rows, **kw):
  marks.append({"event": "predict", "rows": int(len(rows)), "peak": peak(),
                "t": time.perf_counter() - t0})
  reset()
  marks[-1]["rss"] = current()           # where this phase's peak starts from
  save()
  return _predict(params, dataset, rows, **kw)

""" + RUN_LAUNCH


def run_child(code: str, args: list[str], log_path: str) -> tuple[float, int]:
  """Runs `python -c code args` in the repository, output to `log_path`; returns (seconds, the
  child's own peak RSS in bytes, from `os.wait4`)."""
  start = time.perf_counter()
  with open(log_path, "w") as log:
    proc = subprocess.Popen([sys.executable, "-c", code, *args], cwd=REPO, stdout=log,
                            stderr=subprocess.STDOUT)
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
  seconds = time.perf_counter() - start
  if proc.returncode:
    with open(log_path) as f:
      sys.stderr.write(f.read()[-4000:])
    raise SystemExit(f"child failed with exit code {proc.returncode} (log: {log_path})")
  return seconds, usage.ru_maxrss * 1024                    # KiB on Linux


def generate(raw: str, events: int) -> None:
  """The raw train and test pairs, `events` skeleton rows in all."""
  train = round(events * TRAIN_SHARE)
  for seed, (suffix, rows) in enumerate((("train", train), ("test", events - train))):
    common = rows * COMMON_BYTES_PER_EVENT
    write_raw_pair(raw, int(common / (1 - SKELETON_SHARE)), seed=seed, suffix=suffix,
                   skeleton_rows=rows)


def du(path: str) -> int:
  return sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(path) for f in fs)


def main(argv=None) -> None:
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--events", type=int, default=PAPER_EVENTS,
                 help="skeleton rows (events) in all; default: Ali-CCP's 85.3M")
  p.add_argument("--steps", type=int, default=20, help="training steps")
  p.add_argument("--tmp", default=tempfile.gettempdir(), help="where the files are written")
  p.add_argument("--keep", action="store_true", help="keep the raw files, dataset and run")
  p.add_argument("--prepare_only", action="store_true",
                 help="stop after the build (raw parse and build figures only)")
  p.add_argument("--model", default="mix",
                 help="the model trained and evaluated (M-scan's co-attention predicts ~1k "
                      "samples/s on 2 CPU cores: 10 h or more for the full test split)")
  p.add_argument("--drop_raw", action="store_true",
                 help="delete the raw files once parsed, before the build (the disk of a 24 GB "
                      "machine with ~75 GB free holds raw + spill or spill + built, not all three)")
  p.add_argument("--min_scenarios_per_user", type=int, default=1,
                 help="the user filter of the build (the paper's: 2). The generated skeleton "
                      "repeats one block of rows, so at 85M events most of its users stay in one "
                      "scenario and the paper's filter drops 83%% of the events (measured: 14.6M "
                      "of 85.3M kept); 1 keeps them all, so that every phase sees the full size")
  p.add_argument("--built", default="",
                 help="a dataset built by an earlier run (--keep): only train and evaluate it")
  p.add_argument("extra", nargs="*", help="further launch.py flags, after --")
  a = p.parse_args(argv)
  if a.built:
    return evaluate_built(a)

  need = disk_needed(a.events, a.drop_raw)
  free = shutil.disk_usage(a.tmp).free
  if need > free:
    raise SystemExit(f"error: {a.tmp}: {free / 1e9:.1f} GB free, about {need / 1e9:.1f} GB "
                     f"needed for {a.events:,} events"
                     + ("" if a.drop_raw else "; --drop_raw needs less"))
  rows = []                                  # (phase, seconds, peak bytes, note)
  with work_folder(a) as work:
    raw, built = os.path.join(work, "raw"), os.path.join(work, "built")
    os.makedirs(raw)
    t = time.perf_counter()
    generate(raw, a.events)
    rows.append(("generate raw", time.perf_counter() - t, None, ""))
    raw_bytes = du(raw)

    seconds, child_peak = run_child(_PREPARE, [os.path.join(work, "prepare.json"), raw, built,
                                               "1" if a.drop_raw else "0",
                                               str(a.min_scenarios_per_user)],
                                    os.path.join(work, "prepare.log"))
    with open(os.path.join(work, "prepare.json")) as f:
      pm = json.load(f)
    rows.append(("raw parse", pm["parse"]["seconds"], pm["parse"]["peak"], ""))
    rows.append(("build", pm["build"]["seconds"], pm["build"]["peak"],
                 f"prepare child: {seconds:.0f} s; its ru_maxrss since the reset {child_peak / GIB:.2f}G"))
    built_bytes = du(built)
    if not a.keep:
      shutil.rmtree(raw, ignore_errors=True)
    pred_bytes = 0
    if a.prepare_only:
      return report(a, pm, rows, raw_bytes, built_bytes, pred_bytes)

    pred_bytes = train_and_evaluate(a, built, work, rows)
  report(a, pm, rows, raw_bytes, built_bytes, pred_bytes)


@contextlib.contextmanager
def work_folder(a):
  """A new folder under --tmp for the run's files, removed at the end unless --keep."""
  work = tempfile.mkdtemp(prefix="scale-", dir=a.tmp)
  try:
    yield work
  finally:
    if not a.keep:
      shutil.rmtree(work, ignore_errors=True)
    else:
      print(f"kept {work}")


def evaluate_built(a) -> None:
  """--built=DIR: the launch phases only, on a dataset an earlier run kept."""
  with open(os.path.join(a.built, "stats.json")) as f:
    stats = json.load(f)
  pm = {"events": stats["num_events"], "samples": stats["samples"]}
  rows: list = []
  with work_folder(a) as work:
    pred_bytes = train_and_evaluate(a, a.built, work, rows)
  report(a, pm, rows, 0, du(a.built), pred_bytes)


def train_and_evaluate(a, built: str, work: str, rows: list) -> int:
  """launch.py on `built` in a child: its phases appended to `rows`; returns the size of
  predictions.parquet. The child writes its marks as each phase begins, so a run stopped
  half-way leaves them in `work`/launch.json (kept with --keep)."""
  args = [f"--config.model={a.model}", "--config.data.name=aliccp", f"--config.data.path={built}",
          f"--config.train.max_steps={a.steps}", f"--config.train.eval_every_steps={a.steps}",
          "--config.train.progress=False", f"--workdir={os.path.join(work, 'run')}", *a.extra]
  seconds, child_peak = run_child(_LAUNCH, [os.path.join(work, "launch.json"),
                                            os.path.join(REPO, "launch.py"), *args],
                                  os.path.join(work, "launch.log"))
  with open(os.path.join(work, "launch.json")) as f:
    lm = json.load(f)
  calls = [m for m in lm if m["event"] == "predict"]
  end = lm[-1]
  rows.append((f"train {a.steps} steps", calls[0]["t"], calls[0]["peak"], "incl. start-up"))
  for k, m in enumerate(calls):
    last = k == len(calls) - 1
    nxt = end if last else calls[k + 1]
    name = "test evaluation" if last else "validation"
    note = ("predict, AUC, GAUC, predictions.parquet" if last else "") + (
        f"; launch child: {seconds:.0f} s, ru_maxrss since the last reset {child_peak / GIB:.2f}G" if last else "")
    note = f"grew {(nxt['peak'] - m['rss']) / m['rows']:.0f} B/sample; " + note
    rows.append((f"{name} ({m['rows']:,})", nxt["t"] - m["t"], nxt["peak"], note))
  pred = os.path.join(work, "run", "predictions.parquet")
  return os.path.getsize(pred) if os.path.exists(pred) else 0


def report(a, pm: dict, rows: list, raw_bytes: int, built_bytes: int, pred_bytes: int) -> None:
  events = pm["events"]
  source = f"the built dataset {a.built}" if a.built else f"{a.events:,} skeleton rows"
  print(f"Ali-CCP raw format, {source} -> {events:,} events built "
        f"(samples: {', '.join(f'{k} {v:,}' for k, v in pm['samples'].items())}); "
        f"{os.cpu_count()} CPUs, 1-min load average {os.getloadavg()[0]:.1f}")
  print(f"{'phase':<30} {'seconds':>8} {'peak RSS':>9} {'RSS/event':>9}")
  for name, sec, peak, note in rows:
    rss = f"{peak / GIB:8.2f}G" if peak else f"{'-':>9}"
    per = f"{peak / events:9.0f}" if peak else f"{'-':>9}"
    print(f"{name:<30} {sec:8.1f} {rss} {per}" + (f"  {note}" if note else ""))
  print(f"disk: raw {raw_bytes / 1e9:.2f} GB ({raw_bytes / a.events:.0f} B/event), built "
        f"{built_bytes / 1e9:.2f} GB ({built_bytes / events:.0f} B/event), predictions.parquet "
        f"{pred_bytes / 1e6:.1f} MB; peak RSS per event is the phase's peak over the events "
        "built (it includes the interpreter, JAX and the model)")


if __name__ == "__main__":
  main()
