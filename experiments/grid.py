"""Runs an experiment grid (`experiments.grids`) through `launch.py`: resumable, K at a time.

    python -m experiments.grid --grid=table2 --dataset=synthetic --preset=tiny --seeds=2 --out=DIR
    python -m experiments.grid --grid=all --dataset=synthetic --size=small --seeds=3 --jobs=2 --out=DIR
    python -m experiments.grid --grid=table1 --dataset=aliccp --data_path=BUILT_DIR --out=DIR

Every run is a `launch.py` subprocess, `--workdir=DIR/runs/<name>` plus `--config.X=Y` overrides
(the grid's own, then the settings shared by the whole folder: dataset, `--size`, `--set`), with
stdout and stderr appended to `DIR/runs/<name>/log.txt`. `--jobs=K` runs K at a time.

Resuming: a run whose `results.json` exists is skipped; a half-finished one is started again and
the trainer resumes from the checkpoint in its workdir. A failed run is reported with its log
path and does not stop the others; the exit code is 1 if any run failed.

Target scenarios of `single` and `finetune` (`--scenarios=1,2,3`; default: every scenario of the
test split if there are at most 4, else the 3 with the most test samples, ties to the smaller id;
counted from the built dataset's `splits/test.npy` and `log/scenario.npy`, so it is deterministic).

`finetune` reuses the `mix` run of its seed instead of training Mix again: `mscan_jax.models.mlp.
finetune_stages` trains stage "mix" = the Mix model on all scenarios, then the same MLP on the
target scenario (`data.train_scenarios = data.eval_scenarios = (s,)`) from Mix's best parameters
(`train.init_from`). The runner launches exactly that second stage, `model=mix` with those
scenario restrictions and `train.init_from=<absolute path of the mix-s<seed> run>`, after the Mix
run of the same seed has finished (a dependency; a failed Mix fails its finetunes).

`DIR/grid.json` records the shared settings; a second call with other settings on the same DIR is
refused, so one folder never mixes datasets or sizes.
"""

from __future__ import annotations

import argparse
import ast
import concurrent.futures as cf
import dataclasses
import datetime
import json
import os
import shlex
import subprocess
import sys
import time
from typing import Any, Callable, Optional, Sequence

import numpy as np

from experiments import grids

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_LAUNCHER = (sys.executable, os.path.join(REPO_ROOT, "launch.py"))
RESULTS = "results.json"
LOG = "log.txt"
RUN_INFO = "run.json"
GRID_INFO = "grid.json"


class GridError(ValueError):
  """A bad command line or an output folder made with other settings."""


# ----------------------------------------------------------------------------- settings

def data_overrides(dataset: str, *, preset: str = "default", data_path: str = "",
                   cache_dir: str = "data_cache") -> grids.Overrides:
  """The dataset part of the shared overrides (paths made absolute)."""
  if dataset == "synthetic":
    return {"data.name": "synthetic", "data.preset": preset,
            "data.cache_dir": os.path.abspath(cache_dir)}
  if not data_path:
    raise GridError(f"--dataset={dataset} needs --data_path=DIR (a built dataset)")
  return {"data.name": dataset, "data.path": os.path.abspath(data_path)}


def dataset_label(base: grids.Overrides) -> str:
  """`synthetic-<preset>` or the dataset's name (as in results.json)."""
  name = base.get("data.name", "synthetic")
  return f"synthetic-{base.get('data.preset', 'default')}" if name == "synthetic" else name


def parse_set(text: str) -> tuple[str, Any]:
  """`key=value` of `--set`, the value typed like the default config's field."""
  if "=" not in text:
    raise GridError(f"--set {text!r}: expected KEY=VALUE")
  key, raw = text.split("=", 1)
  try:
    default = grids.default_value(key)
  except KeyError as e:
    raise GridError(f"--set {text!r}: {e.args[0]}") from None
  if isinstance(default, str):
    return key, raw
  try:
    value = ast.literal_eval(raw)
  except (ValueError, SyntaxError):
    raise GridError(f"--set {text!r}: cannot read {raw!r} as a {type(default).__name__}") from None
  if isinstance(default, bool):
    ok = isinstance(value, bool)
  elif isinstance(default, float):
    ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    value = float(value) if ok else value
  elif isinstance(default, int):
    ok = isinstance(value, int) and not isinstance(value, bool)
  elif isinstance(default, tuple):
    value = tuple(value) if isinstance(value, (tuple, list)) else (value,)
    ok = True
  else:
    ok = True
  if not ok:
    raise GridError(f"--set {text!r}: {key} takes a value of type {type(default).__name__}")
  return key, value


def shared_overrides(data: grids.Overrides, size: str, sets: Sequence[str] = ()) -> grids.Overrides:
  """Overrides shared by every run of a folder: data, model size, no progress bar, `--set`."""
  if size not in grids.SIZES:
    raise GridError(f"--size={size!r} is unknown; valid: {', '.join(grids.SIZES)}")
  base = {**grids.SIZES[size], "train.progress": False, "train.export_predictions": True, **data}
  for text in sets:
    key, value = parse_set(text)
    if key in grids.AXIS_KEYS:
      raise GridError(f"--set {key}=...: {key} is an axis of the grids, not a shared setting")
    base[key] = value
  return base


def _jsonable(x: Any) -> Any:
  return json.loads(json.dumps(x))


# Shared settings that do not change a run's result: a folder may be resumed with other values.
_NOT_COMPARED = ("data.cache_dir", "data.prefetch", "train.progress")


def check_or_write_grid_info(out: str, info: dict) -> None:
  """Writes DIR/grid.json, or checks that an existing one has the same shared settings."""
  path = os.path.join(out, GRID_INFO)
  if os.path.exists(path):
    with open(path) as f:
      old = json.load(f)
    before, now = old.get("shared", {}), _jsonable(info["shared"])
    diff = sorted(k for k in set(before) | set(now)
                  if k not in _NOT_COMPARED and before.get(k) != now.get(k))
    if diff:
      raise GridError(f"{out} holds runs made with other shared settings ({', '.join(diff)}; see "
                      f"{path}); use another --out or the same settings")
    info = {**old, **info, "grids": sorted(set(old.get("grids", [])) | set(info["grids"])),
            "scenarios": sorted(set(old.get("scenarios", [])) | set(info.get("scenarios", [])))}
  os.makedirs(out, exist_ok=True)
  with open(path, "w") as f:
    json.dump(_jsonable(info), f, indent=2)


# ----------------------------------------------------------------------------- scenarios

def count_test_samples(dataset_path: str) -> dict[int, int]:
  """Test samples per scenario id of a built dataset (splits/test.npy, log/scenario.npy)."""
  split = os.path.join(dataset_path, "splits", "test.npy")
  scen_file = os.path.join(dataset_path, "log", "scenario.npy")
  for f in (split, scen_file):
    if not os.path.exists(f):
      raise GridError(f"{f} does not exist: not a built dataset; pass --scenarios=ID,ID,...")
  rows = np.load(split, mmap_mode="r")
  scen = np.asarray(np.load(scen_file, mmap_mode="r")[np.asarray(rows)][:, 0])    # (N_test,)
  counts = np.bincount(scen)
  return {int(s): int(counts[s]) for s in np.flatnonzero(counts)}


def choose_scenarios(counts: dict[int, int], max_all: int = 4, k: int = 3) -> list[int]:
  """All scenarios if there are at most `max_all`, else the `k` largest (ties: smaller id)."""
  if len(counts) <= max_all:
    return sorted(counts)
  largest = sorted(counts, key=lambda s: (-counts[s], s))[:k]
  return sorted(largest)


def dataset_path_for(base: grids.Overrides) -> str:
  """The built dataset directory of the shared settings (the synthetic one built here, once)."""
  if base["data.name"] == "synthetic":
    from mscan_jax.data import synthetic
    return synthetic.ensure_synthetic(base["data.preset"], base.get("data.seed", 0),
                                      base["data.cache_dir"])
  return base["data.path"]


# ----------------------------------------------------------------------------- launching

@dataclasses.dataclass
class Job:
  run: grids.Run
  workdir: str
  overrides: grids.Overrides     # what is passed to launch.py (shared settings included)
  deps: tuple[str, ...] = ()     # names of runs that must finish first


def plan(runs: Sequence[grids.Run], runs_dir: str, base: grids.Overrides) -> list[Job]:
  """Jobs for `runs` (finetune -> the second stage from its seed's Mix run, added if missing)."""
  by_name = {r.name: r for r in runs}
  ordered: list[grids.Run] = []
  for r in runs:
    if r.overrides["model"] == "finetune":
      mix = _mix_of(r)
      if mix.name not in by_name:
        by_name[mix.name] = mix
        ordered.append(mix)
    ordered.append(r)
  jobs = []
  for r in ordered:
    workdir = os.path.join(os.path.abspath(runs_dir), r.name)
    ov = {k: v for k, v in r.overrides.items()}
    deps: tuple[str, ...] = ()
    if ov["model"] == "finetune":
      mix = _mix_of(r)
      s = int(ov["single.scenario"])
      ov.update({"model": "mix", "data.train_scenarios": (s,), "data.eval_scenarios": (s,),
                 "train.init_from": os.path.join(os.path.abspath(runs_dir), mix.name)})
      deps = (mix.name,)
    jobs.append(Job(r, workdir, {**base, **ov}, deps))
  return jobs


def _mix_of(run: grids.Run) -> grids.Run:
  o = {k: v for k, v in run.overrides.items() if k != "single.scenario"}
  o["model"] = "mix"
  return grids.make_runs([o])[0]


def command(launcher: Sequence[str], job: Job) -> list[str]:
  return [*launcher, f"--workdir={job.workdir}",
          *(f"--config.{k}={grids.format_value(v)}" for k, v in job.overrides.items())]


def _execute(launcher: Sequence[str], job: Job) -> tuple[int, float, float]:
  """Runs one job: (exit code, wall seconds, CPU seconds of the process and its children)."""
  os.makedirs(job.workdir, exist_ok=True)
  cmd = command(launcher, job)
  info = {"name": job.run.name, "overrides": job.run.overrides, "launch_overrides": job.overrides,
          "deps": list(job.deps), "command": cmd}
  info_path = os.path.join(job.workdir, RUN_INFO)
  with open(info_path, "w") as f:
    json.dump(_jsonable(info), f, indent=2)
  start = time.perf_counter()
  with open(os.path.join(job.workdir, LOG), "a") as log:
    log.write(f"=== {datetime.datetime.now().isoformat(timespec='seconds')} "
              f"{shlex.join(cmd)}\n")
    log.flush()
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=REPO_ROOT, env=env,
                            stdin=subprocess.DEVNULL)
    try:
      _, status, usage = os.wait4(proc.pid, 0)   # this child's own CPU time, also with K jobs
    except BaseException:
      proc.kill()
      proc.wait()
      raise
    proc.returncode = rc = os.waitstatus_to_exitcode(status)
  wall, cpu = time.perf_counter() - start, usage.ru_utime + usage.ru_stime
  with open(info_path, "w") as f:
    json.dump(_jsonable({**info, "exit_code": rc, "wall_s": round(wall, 1),
                         "cpu_s": round(cpu, 1)}), f, indent=2)
  return rc, wall, cpu


@dataclasses.dataclass
class Summary:
  done: list[str] = dataclasses.field(default_factory=list)
  skipped: list[str] = dataclasses.field(default_factory=list)
  failed: list[tuple[str, str]] = dataclasses.field(default_factory=list)   # (name, why + log)
  seconds: float = 0.0

  @property
  def ok(self) -> bool:
    return not self.failed

  def format(self) -> str:
    lines = [f"{len(self.done)} done, {len(self.skipped)} skipped (already finished), "
             f"{len(self.failed)} failed, in {self.seconds:.0f} s"]
    lines += [f"  FAILED {name}: {why}" for name, why in self.failed]
    return "\n".join(lines)


def run_jobs(jobs: Sequence[Job], *, launcher: Sequence[str] = DEFAULT_LAUNCHER, num_jobs: int = 1,
             echo: Callable[[str], None] = print) -> Summary:
  """Runs `jobs` (K at a time, dependencies first); finished ones (results.json) are skipped."""
  if num_jobs < 1:
    raise GridError(f"--jobs must be >= 1, got {num_jobs}")
  start = time.perf_counter()
  summary = Summary()
  total = len(jobs)
  finished = 0
  status: dict[str, str] = {}          # name -> done | skipped | failed
  pending: list[Job] = []

  def report(job: Job, state: str, note: str = "") -> None:
    nonlocal finished
    finished += 1
    status[job.run.name] = state
    echo(f"[{finished}/{total}] {state:<7} {job.run.name}{note}")

  for job in jobs:
    if os.path.exists(os.path.join(job.workdir, RESULTS)):
      summary.skipped.append(job.run.name)
      report(job, "skipped")
    else:
      pending.append(job)

  with cf.ThreadPoolExecutor(max_workers=num_jobs) as pool:
    running: dict[cf.Future, Job] = {}
    while pending or running:
      for job in list(pending):
        if len(running) >= num_jobs:
          break
        dep_states = [status.get(d) for d in job.deps]
        if any(s == "failed" for s in dep_states):
          pending.remove(job)
          bad = [d for d in job.deps if status.get(d) == "failed"]
          why = f"dependency {', '.join(bad)} failed"
          summary.failed.append((job.run.name, why))
          report(job, "failed", f"  ({why})")
          continue
        if all(s in ("done", "skipped") for s in dep_states):
          pending.remove(job)
          running[pool.submit(_execute, launcher, job)] = job
      if not running:
        if pending:   # dependencies that are in no job list and not finished
          for job in pending:
            why = f"dependency {', '.join(job.deps)} is not finished and not in this grid"
            summary.failed.append((job.run.name, why))
            report(job, "failed", f"  ({why})")
          pending = []
        continue
      finished_now, _ = cf.wait(running, return_when=cf.FIRST_COMPLETED)
      for fut in finished_now:
        job = running.pop(fut)
        log_path = os.path.join(job.workdir, LOG)
        try:
          rc, seconds, cpu = fut.result()
        except OSError as e:   # the launcher could not be started
          summary.failed.append((job.run.name, f"{e}; log {log_path}"))
          report(job, "failed", f"  ({e})")
          continue
        if rc == 0 and os.path.exists(os.path.join(job.workdir, RESULTS)):
          summary.done.append(job.run.name)
          report(job, "done", f"  {seconds:.0f} s (CPU {cpu:.0f} s)")
        else:
          why = (f"exit code {rc}" if rc != 0 else f"exit code 0 but no {RESULTS}")
          summary.failed.append((job.run.name, f"{why}; log {log_path}"))
          report(job, "failed", f"  {seconds:.0f} s  {why}; log {log_path}")
  summary.seconds = time.perf_counter() - start
  return summary


# ----------------------------------------------------------------------------- command line

def parse_args(argv: Sequence[str]) -> argparse.Namespace:
  p = argparse.ArgumentParser(prog="python -m experiments.grid", description=__doc__.split("\n")[0])
  p.add_argument("--grid", required=True, choices=grids.GRID_NAMES)
  p.add_argument("--dataset", default="synthetic", help="synthetic, or a built dataset's name "
                 "(aliccp, cloudtheme, ...) with --data_path")
  p.add_argument("--preset", default="default", help="synthetic preset: tiny | default | large")
  p.add_argument("--data_path", default="", help="built dataset directory (real datasets)")
  p.add_argument("--cache_dir", default="data_cache", help="where the synthetic data is built")
  p.add_argument("--size", default=None, choices=list(grids.SIZES),
                 help="model/training size (default: tiny with --preset=tiny, else default)")
  p.add_argument("--seeds", type=int, default=3, help="seeds 0..N-1")
  p.add_argument("--scenarios", default="", help="target scenarios of single/finetune, e.g. 1,2,3")
  p.add_argument("--jobs", type=int, default=1, help="runs at a time")
  p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                 help="extra shared config override, e.g. --set=train.num_epochs=2 (repeatable)")
  p.add_argument("--out", required=True)
  p.add_argument("--launcher", default="", help="command that runs one config "
                 "(default: this Python and launch.py); for tests")
  p.add_argument("--dry_run", action="store_true", help="print the commands, run nothing")
  return p.parse_args(list(argv))


def main(argv: Sequence[str]) -> int:
  a = parse_args(argv)
  size = a.size or ("tiny" if a.dataset == "synthetic" and a.preset == "tiny" else "default")
  try:
    base = shared_overrides(data_overrides(a.dataset, preset=a.preset, data_path=a.data_path,
                                           cache_dir=a.cache_dir), size, a.set)
    scenarios: list[int] = []
    if a.scenarios:
      scenarios = [int(s) for s in a.scenarios.split(",") if s.strip()]
    elif grids.needs_scenarios(a.grid):
      counts = count_test_samples(dataset_path_for(base))
      scenarios = choose_scenarios(counts)
      print(f"target scenarios of single/finetune: {scenarios} (test samples: "
            f"{ {s: counts[s] for s in scenarios} })")
    runs = grids.build(a.grid, seeds=range(a.seeds), scenarios=scenarios)
    if not a.dry_run:
      check_or_write_grid_info(a.out, {"dataset": dataset_label(base), "size": size,
                                       "shared": base, "grids": [a.grid],
                                       "scenarios": scenarios})
      if base["data.name"] == "synthetic":
        dataset_path_for(base)   # build the data once here, not in K runs at the same time
  except GridError as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  launcher = shlex.split(a.launcher) if a.launcher else list(DEFAULT_LAUNCHER)
  jobs = plan(runs, os.path.join(a.out, "runs"), base)
  if a.dry_run:
    for job in jobs:
      print(shlex.join(command(launcher, job)))
    return 0
  print(f"{len(jobs)} runs of grid {a.grid} on {dataset_label(base)} (size {size}) -> {a.out}, "
        f"{a.jobs} at a time")
  summary = run_jobs(jobs, launcher=launcher, num_jobs=a.jobs)
  print(summary.format())
  return 0 if summary.ok else 1


if __name__ == "__main__":
  sys.exit(main(sys.argv[1:]))
