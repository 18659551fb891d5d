"""Host input pipeline throughput at the Ali-CCP shape: the gathers, the loaders before, grain's.

    .venv/bin/python -m benchmarks.pipeline                          # ~1.2M samples, batch 1024
    .venv/bin/python -m benchmarks.pipeline --events=200000 --seconds=3   # quicker
    .venv/bin/python -m benchmarks.pipeline --end_to_end --out=benchmarks/results/pipeline_cpu_2core.txt

Issue #14, item 2 ("input that keeps up"), and issue #21, item 5 (grain as the pipeline). The
data: a built dataset at the Ali-CCP shape of `benchmarks/throughput.py` (9 user fields, 4 item
fields, 1 scenario field: 14 fields, 3 scenarios, Ls 20, Lh 40, full vocabulary sizes), written
by the project's own builder (`mscan_jax.data.builder.build_dataset`: the paper's protocol, so the
layout, the sequences and the split are the real ones) from `--events` random events of `--users`
users (each event's ids drawn uniformly; a user's events are spread over the whole log, so the
rows a sequence points at are scattered as in a real log). Built once into `--cache_dir` (a
temporary name renamed into place) and reused.

Rows measured, each in examples/s on batches of `--batch` (default 1024) training rows, for
`--seconds` after a warm-up, median of `--repeats`:

  gather (old)      `legacy_gather`: the gather before issue #14 (one argsort per gathered table)
  gather (new)      `BuiltDataset.gather` of one batch of random training rows, on this thread
  pipeline (old)    the grain pipeline before issue #14 (`legacy_train_batches`: MapDataset
                    range -> shuffle -> batch -> map(gather), one record per element, 2 threads,
                    prefetch 2)
  threaded (#14)    the hand-written loader of issues #14 to #21 (`threaded_train_batches`: the
                    same order, gathers on a thread pool, `--prefetch` batches ahead)
  pipeline (new)    `mscan_jax.data.pipeline.train_batches`: grain over batches (a step per
                    element, one gather per batch, grain's read threads), with its ratio to the
                    row above it

The last two rows come in pairs, one pair per thread count (1 and `--workers`), on the same
rows, batch and prefetch; their timings alternate (threaded, grain, threaded, ...) so that a
change of the machine's load falls on both. Issue #21's bar: grain at >= 0.9 of the threaded
loader.

Nothing consumes the batches but the loop that counts them: these are the rates at which the
host can feed a training step, not training rates.

`--end_to_end` (issue #14, item 3) then runs `launch.py` twice, on the synthetic default preset
(no flag but the run folder and the batch) and on the Ali-CCP-shape data (`--aliccp_steps`
steps, one validation at the end, log every 2 steps), and puts each run's steady-state training
examples/s (results.json's `train_examples_per_s`: compilation, validation and checkpoints
excluded) next to `benchmarks/throughput.py`'s training step at the same shape and batch (the
synthetic default's shape is added to throughput.py's table in a child process). The split
shares of the benchmark data are small (test 5%, validation 2% of the rest) so that launch.py's
test pass stays short; the pipeline rows read the training split only.

Figures are printed and written to `--out` (atomically), never asserted; on a shared machine
they are noisy.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time

if __package__ in (None, ""):   # run as a file: the repo root
  sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402

from mscan_jax.data import builder, pipeline  # noqa: E402
from mscan_jax.data.schema import BuiltDataset, Field  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# benchmarks/throughput.py's Ali-CCP shape: (field, distinct values); vocab = values + 1.
ALICCP_USER = (("101", 238_000), ("121", 98), ("122", 14), ("124", 3), ("125", 8), ("126", 4),
               ("127", 4), ("128", 3), ("129", 5))
ALICCP_ITEM = (("205", 467_000), ("206", 6_800), ("207", 264_000), ("216", 80_000))
ALICCP_SCENARIOS = 3
ALICCP_LS, ALICCP_LH = 20, 40


def aliccp_shape_log(events: int, users: int, seed: int) -> builder.EventLog:
  """`events` random events of `users` users at the Ali-CCP shape, in time (row) order."""
  rng = np.random.default_rng(seed)
  user_id = rng.integers(0, users, events).astype(np.int32)              # (E,)

  def ids(spec, key):                                                    # (E, F) int32
    cols = [key + 1 if i == 0 and key is not None else rng.integers(1, n + 1, events)
            for i, (_, n) in enumerate(spec)]
    return np.stack(cols, 1).astype(np.int32)

  return builder.EventLog(
      user=ids(ALICCP_USER, user_id), item=ids(ALICCP_ITEM, None),
      scenario=rng.integers(1, ALICCP_SCENARIOS + 1, (events, 1)).astype(np.int32),
      label=(rng.random(events) < 0.05).astype(np.int8), user_id=user_id,
      user_fields=tuple(Field(f, n + 1) for f, n in ALICCP_USER),
      item_fields=tuple(Field(f, n + 1) for f, n in ALICCP_ITEM),
      scenario_fields=(Field("301", ALICCP_SCENARIOS + 1),))


# Split shares of the benchmark data: most samples train (the pipeline reads the training
# split), and launch.py's test pass stays short (--end_to_end).
TEST_FRACTION, VALID_FRACTION = 0.05, 0.02


def ensure_aliccp_shape(cache_dir: str, events: int, users: int, seed: int = 0) -> str:
  """The built dataset of `aliccp_shape_log(events, users, seed)`, built once into `cache_dir`."""
  from mscan_jax.data.log import build_atomically
  path = os.path.join(cache_dir, f"aliccp-shape-e{events}-u{users}-s{seed}-t{TEST_FRACTION}")
  build_atomically(path, lambda tmp: builder.build_dataset(
      tmp, aliccp_shape_log(events, users, seed), max_cur_len=ALICCP_LS, max_all_len=ALICCP_LH,
      test_fraction=TEST_FRACTION, valid_fraction=VALID_FRACTION, name="aliccp-shape"))
  return path


# ----------------------------------------------------------------------------- the code before #14

def legacy_gather(ds: BuiltDataset, rows: np.ndarray) -> dict[str, np.ndarray]:
  """`BuiltDataset.gather` as it was before issue #14: a fancy index per array, and a stable
  argsort of the flattened indices for each of the four sequence tables."""
  rows = np.asarray(rows, np.int64)
  lg = ds.log
  item = lg["item"]

  def take_rows(table, idx, valid):
    flat = np.where(valid, idx, 0).reshape(-1)
    order = np.argsort(flat, kind="stable")
    out = np.empty((flat.shape[0],) + table.shape[1:], table.dtype)
    out[order] = table[flat[order]]
    out = out.reshape(idx.shape + table.shape[1:])
    mask = valid.reshape(valid.shape + (1,) * (table.ndim - 1))
    return np.where(mask, out, 0).astype(table.dtype)

  batch = {"user": np.asarray(lg["user"][rows]), "item": np.asarray(item[rows]),
           "scenario": np.asarray(lg["scenario"][rows]),
           "label": np.asarray(lg["label"][rows], np.float32),
           "sample_id": np.asarray(lg["sample_id"][rows]),
           "user_id": np.asarray(lg["user_id"][rows]), "mask": np.ones(rows.shape, np.float32)}
  cur_idx, all_idx = np.asarray(lg["cur_idx"][rows]), np.asarray(lg["all_idx"][rows])
  cur_valid, all_valid = cur_idx >= 0, all_idx >= 0
  batch["cur_seq"] = take_rows(item, cur_idx, cur_valid)
  batch["cur_len"] = cur_valid.sum(1).astype(np.int32)
  batch["all_seq"] = take_rows(item, all_idx, all_valid)
  batch["all_len"] = all_valid.sum(1).astype(np.int32)
  batch["all_click"] = take_rows(lg["label"], all_idx, all_valid).astype(np.int32)
  batch["all_scenario"] = take_rows(lg["scenario"], all_idx, all_valid)[..., 0]
  return batch


def legacy_train_batches(ds: BuiltDataset, rows: np.ndarray, *, batch_size: int, seed: int,
                         prefetch: int = 2):
  """The grain training pipeline before issue #14 (one process): MapDataset.range -> shuffle ->
  batch -> map(legacy_gather), `prefetch` threads and batches ahead."""
  import grain
  epoch = 0
  while True:
    d = (grain.MapDataset.range(len(rows)).shuffle(seed=pipeline._epoch_seed(seed, epoch))
         .batch(batch_size, drop_remainder=True))
    d = d.map(lambda idx: legacy_gather(ds, rows[np.asarray(idx)]))
    read = grain.ReadOptions(num_threads=max(1, prefetch), prefetch_buffer_size=max(1, prefetch))
    yield from d.to_iter_dataset(read)
    epoch += 1


# ----------------------------------------------------------------------------- the code before #21

def threaded_train_batches(ds: BuiltDataset, rows: np.ndarray, *, batch_size: int, seed: int,
                           prefetch: int = 2, workers: int = pipeline.DEFAULT_WORKERS):
  """The training loader of issues #14 to #21 (one process, from step 0): the order of
  `pipeline.batch_rows` (each epoch's permutation computed once), `BuiltDataset.gather` on
  `workers` threads at most max(prefetch, workers) batches ahead."""
  rows = np.asarray(rows, np.int64)
  n_steps = pipeline.steps_per_epoch(len(rows), batch_size)

  def plan():                                   # row numbers of each step, (B,)
    step, epoch, perm = 0, None, None
    while True:
      e, k = divmod(step, n_steps)
      if e != epoch:
        epoch, perm = e, pipeline.epoch_permutation(len(rows), seed, e)        # (N,)
      yield rows[perm[k * batch_size:(k + 1) * batch_size]]
      step += 1

  return _ordered_map(ds.gather, plan(), prefetch=prefetch, workers=workers)


def _ordered_map(fn, items, *, prefetch: int, workers: int):
  """fn(item) for each item, in order, computed on `workers` threads at most max(prefetch,
  workers) items ahead of the consumer. Closing the generator cancels what has not started and
  joins the threads; an exception in `fn` is raised at its item."""
  import collections
  import concurrent.futures
  if prefetch <= 0 or workers <= 0:
    yield from map(fn, items)
    return
  depth = max(prefetch, workers)
  pool = concurrent.futures.ThreadPoolExecutor(workers, thread_name_prefix="threaded")
  pending: collections.deque = collections.deque()
  try:
    for item in items:
      pending.append(pool.submit(fn, item))
      if len(pending) >= depth:
        yield pending.popleft().result()
    while pending:
      yield pending.popleft().result()
  finally:
    for future in pending:
      future.cancel()
    pool.shutdown(wait=True, cancel_futures=True)


# ----------------------------------------------------------------------------- timing

def rate_of_calls(fn, rows: np.ndarray, batch: int, seconds: float, seed: int) -> float:
  """Examples/s of fn(batch of random training rows) on this thread, for `seconds`. Every call
  gets fresh rows (the draw is timed too): reusing a few batches would gather from the CPU's
  caches (3x the rate at the Ali-CCP shape), which a pass over the training split never does."""
  rng = np.random.default_rng(seed)
  fn(rows[rng.integers(0, len(rows), batch)])                       # warm-up
  n, start = 0, time.perf_counter()
  while time.perf_counter() - start < seconds:
    fn(rows[rng.integers(0, len(rows), batch)])
    n += 1
  return n * batch / (time.perf_counter() - start)


def rate_of_iterator(make, batch: int, seconds: float, warmup: int = 4) -> float:
  """Examples/s of the batches `make()` yields (threads started and warmed up first)."""
  it = make()
  try:
    for _ in range(warmup):
      next(it)
    n, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
      next(it)
      n += 1
    return n * batch / (time.perf_counter() - start)
  finally:
    close = getattr(it, "close", None)
    if close is not None:
      close()


# ----------------------------------------------------------------------------- end to end

# A child that runs benchmarks/throughput.py with one more shape (the synthetic default's), as
# `throughput.py --shapes=NAME` would: argv[1] = the shape as JSON, then throughput's flags.
_STEP_CHILD = r"""
import json, sys
shape, argv = json.loads(sys.argv[1]), sys.argv[2:]
sys.argv = ["throughput"] + argv               # --retain_host_memory is read at import
from benchmarks import throughput
if shape:
  throughput.SHAPES[shape["name"]] = throughput.Shape(
      user=tuple(map(tuple, shape["user"])), item=tuple(map(tuple, shape["item"])),
      scenario=tuple(map(tuple, shape["scenario"])), max_cur_len=shape["max_cur_len"],
      max_all_len=shape["max_all_len"])
throughput.main(argv)
"""


def step_rate(schema, shape_name: str, batch: int, steps: int, repeats: int, tmp: str) -> dict:
  """benchmarks/throughput.py's training examples/s (factored path, float32, host memory
  retained as launch.py does) at the shape of `schema`, in a child process."""
  import json
  import subprocess
  shape = {"name": shape_name, "max_cur_len": schema.max_cur_len,
           "max_all_len": schema.max_all_len,
           **{key: [(f.name, f.vocab_size - 1) for f in getattr(schema, f"{key}_fields")]
              for key in ("user", "item", "scenario")}}
  out = os.path.join(tmp, f"step-{shape_name}.json")
  argv = [f"--shapes={shape_name}", "--impls=factored", f"--batch={batch}", f"--steps={steps}",
          f"--repeats={repeats}", "--retain_host_memory", f"--json_out={out}"]
  proc = subprocess.run([sys.executable, "-c", _STEP_CHILD, json.dumps(shape), *argv], cwd=REPO,
                        capture_output=True, text=True)
  if proc.returncode:
    sys.stderr.write(proc.stdout[-3000:] + proc.stderr[-3000:])
    raise SystemExit(f"benchmarks/throughput.py failed with exit code {proc.returncode}")
  with open(out) as f:
    rec = json.load(f)["records"][0]
  return {"train_examples_per_s": rec["train_examples_per_s"], "compile_s": rec["compile_train_s"]}


def launch_rate(flags: list[str], workdir: str) -> dict:
  """Runs launch.py with `flags` in a child; its results.json's speed keys and the wall time."""
  import json
  import subprocess
  start = time.perf_counter()
  proc = subprocess.run([sys.executable, os.path.join(REPO, "launch.py"), f"--workdir={workdir}",
                         "--config.train.progress=False", *flags], cwd=REPO,
                        capture_output=True, text=True)
  if proc.returncode:
    sys.stderr.write(proc.stdout[-3000:] + proc.stderr[-3000:])
    raise SystemExit(f"launch.py failed with exit code {proc.returncode}")
  with open(os.path.join(workdir, "results.json")) as f:
    res = json.load(f)
  keys = ("train_examples_per_s", "train_steps_timed", "train_seconds", "eval_seconds", "steps")
  return {**{k: res.get(k) for k in keys}, "wall_s": time.perf_counter() - start,
          "printed": next((l for l in proc.stdout.splitlines() if l.startswith("Training speed")),
                          "")}


def end_to_end(aliccp_path: str, cache_dir: str, batch: int, aliccp_steps: int,
               step_repeats: int, default_steps: int = 0) -> list[str]:
  """launch.py's steady-state examples/s next to throughput.py's step at the same shape and
  batch: the synthetic default preset (launch.py with no flag but the run folder, or
  `default_steps` steps logged every 10), and the Ali-CCP-shape data (`aliccp_steps` steps, one
  validation at the end). Returns table lines."""
  import tempfile
  from mscan_jax.data import synthetic
  synth = BuiltDataset(synthetic.ensure_synthetic("default", 0, cache_dir))
  short = ([f"--config.train.max_steps={default_steps}", "--config.train.log_every_steps=10"]
           if default_steps else [])
  cases = [
      ("synthetic default", synth.schema, "synthetic_default",
       [f"--config.data.cache_dir={cache_dir}", f"--config.train.batch_size={batch}", *short], 5),
      ("Ali-CCP shape", BuiltDataset(aliccp_path).schema, "aliccp",
       ["--config.data.name=built", f"--config.data.path={aliccp_path}",
        f"--config.train.batch_size={batch}", f"--config.train.max_steps={aliccp_steps}",
        f"--config.train.eval_every_steps={aliccp_steps}", "--config.train.log_every_steps=2",
        "--config.train.export_predictions=False"], 2),
  ]
  lines = [f"{'end to end':<18} {'launch.py ex/s':>14} {'(timed)':>16} {'step bench ex/s':>15} "
           f"{'ratio':>6}"]
  print(lines[0], flush=True)
  with tempfile.TemporaryDirectory() as tmp:
    for name, schema, shape_name, flags, steps in cases:
      run = launch_rate(flags, os.path.join(tmp, shape_name))
      step = step_rate(schema, shape_name, batch, steps, step_repeats, tmp)
      rate, ref = run["train_examples_per_s"], step["train_examples_per_s"]
      lines.append(f"{name:<18} {rate or float('nan'):14,.0f} "
                   f"{'%d st, %.0f s' % (run['train_steps_timed'], run['train_seconds']):>16} "
                   f"{ref:15,.0f} {(rate or float('nan')) / ref:6.2f}")
      print(lines[-1], f"  (launch.py: {run['steps']} steps, {run['wall_s']:.0f} s in all, "
            f"{run['eval_seconds']:.0f} s validating)", flush=True)
  lines.append("launch.py ex/s: results.json's train_examples_per_s (log windows after the first, "
               "validation and checkpoints excluded); step bench: benchmarks/throughput.py "
               "--impls=factored --retain_host_memory at the same shape and batch (batches "
               "already on the device); ratio = launch.py / step bench")
  return lines


def write_atomic(path: str, text: str) -> None:
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  tmp = f"{path}.tmp-{os.getpid()}"
  with open(tmp, "w") as f:
    f.write(text)
  os.replace(tmp, path)


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--events", type=int, default=1_200_000,
                      help="events of the Ali-CCP-shape log (all samples; ~93%% train)")
  parser.add_argument("--users", type=int, default=50_000)
  parser.add_argument("--cache_dir", default=os.path.join(REPO, "data_cache"))
  parser.add_argument("--batch", type=int, default=1024)
  parser.add_argument("--seconds", type=float, default=5.0, help="per timing")
  parser.add_argument("--repeats", type=int, default=3, help="timings per row (median shown)")
  parser.add_argument("--workers", type=int, default=pipeline.DEFAULT_WORKERS)
  parser.add_argument("--prefetch", type=int, default=2)
  parser.add_argument("--skip_old", action="store_true", help="skip the pre-#14 rows")
  parser.add_argument("--end_to_end", action="store_true",
                      help="also run launch.py and benchmarks/throughput.py at both shapes")
  parser.add_argument("--aliccp_steps", type=int, default=12,
                      help="launch.py's training steps on the Ali-CCP-shape data (--end_to_end)")
  parser.add_argument("--default_steps", type=int, default=0,
                      help="launch.py's steps on the synthetic default (0: its whole default run)")
  parser.add_argument("--step_repeats", type=int, default=3, help="throughput.py --repeats")
  parser.add_argument("--out", default="", help="also write the table here (atomically)")
  a = parser.parse_args(argv)

  t = time.perf_counter()
  path = ensure_aliccp_shape(a.cache_dir, a.events, a.users)
  ds = BuiltDataset(path)
  rows = pipeline.split_rows(ds, "train")
  sizes = {s: ds.split_size(s) for s in ("train", "valid", "test")}
  lines = [
      f"benchmarks/pipeline.py: host input pipeline, Ali-CCP shape ({len(ds.schema.user_fields)} "
      f"user + {len(ds.schema.item_fields)} item + {len(ds.schema.scenario_fields)} scenario "
      f"fields, {ds.schema.num_scenarios} scenarios, Ls {ds.schema.max_cur_len}, "
      f"Lh {ds.schema.max_all_len}), batch {a.batch}",
      f"data: {path} ({sum(sizes.values()):,} samples: train {sizes['train']:,}, valid "
      f"{sizes['valid']:,}, test {sizes['test']:,}; ready in {time.perf_counter() - t:.0f} s)",
      f"machine: {platform.machine()}, {os.cpu_count()} cores, numpy {np.__version__}; 1-min "
      f"load average at start {os.getloadavg()[0]:.1f}",
      f"each row: median of {a.repeats} timings of {a.seconds:g} s (min..max in brackets)", ""]
  print("\n".join(lines), flush=True)

  cases = []
  if not a.skip_old:
    cases.append(("gather (old)", "this thread",
                  lambda: rate_of_calls(lambda r: legacy_gather(ds, r), rows, a.batch, a.seconds, 0)))
  cases.append(("gather (new)", "this thread",
                lambda: rate_of_calls(ds.gather, rows, a.batch, a.seconds, 0)))
  if not a.skip_old:
    cases.append(("pipeline (old)", "grain per record, 2 threads",
                  lambda: rate_of_iterator(lambda: legacy_train_batches(
                      ds, rows, batch_size=a.batch, seed=0), a.batch, a.seconds)))
  table = [f"{'what':<16} {'how':<28} {'examples/s':>11}  {'(min..max)':>21}"]
  print(table[0], flush=True)

  def row(name: str, how: str, rates: list[float], extra: str = "") -> float:
    rates = sorted(rates)
    table.append(f"{name:<16} {how:<28} {np.median(rates):11,.0f}  "
                 f"({rates[0]:,.0f}..{rates[-1]:,.0f}){extra}")
    print(table[-1], flush=True)
    return float(np.median(rates))

  for name, how, run in cases:
    row(name, how, [run() for _ in range(a.repeats)])
  for workers in sorted({1, a.workers}):       # the threaded loader and grain, alternated
    how = f"{workers} thread{'s' * (workers > 1)}, prefetch {a.prefetch}"
    kw = dict(batch_size=a.batch, seed=0, prefetch=a.prefetch, workers=workers)
    threaded, grained = [], []
    for _ in range(a.repeats):
      threaded.append(rate_of_iterator(lambda: threaded_train_batches(ds, rows, **kw),
                                       a.batch, a.seconds))
      grained.append(rate_of_iterator(lambda: pipeline.train_batches(ds, rows, **kw),
                                      a.batch, a.seconds))
    base = row("threaded (#14)", how, threaded)
    row("pipeline (new)", "grain, " + how, grained,
        f"  {np.median(grained) / base:.2f} of threaded")
  table.append(f"1-min load average {os.getloadavg()[0]:.1f}")
  print(table[-1])
  if a.end_to_end:
    table += [""] + end_to_end(path, a.cache_dir, a.batch, a.aliccp_steps, a.step_repeats,
                               a.default_steps)
    table.append(f"1-min load average at end {os.getloadavg()[0]:.1f}")
    print(table[-1])
  if a.out:
    write_atomic(a.out, "\n".join(lines + table) + "\n")
    print(f"written: {a.out}")


if __name__ == "__main__":
  main()
