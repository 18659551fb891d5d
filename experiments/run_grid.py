"""Runs an experiment grid (`experiments.grids`) through `launch.py`: resumable, K at a time.

    python -m experiments.run_grid --grid=table2 --dataset=synthetic --preset=tiny --seeds=2 --out=DIR
    python -m experiments.run_grid --grid=all --dataset=synthetic --size=small --seeds=3 \
        --data_seeds=2 --jobs=2 --out=DIR
    python -m experiments.run_grid --grid=table1 --dataset=aliccp --data_path=BUILT_DIR --out=DIR

It prints one line per run (`[k/N] done NAME  seconds`) and a summary; the tiny table2 grid takes
about a minute on 2 CPU cores. Every run is a `launch.py` subprocess, `--workdir=DIR/runs/<name>`
plus `--config.X=Y` overrides (the grid's own, then the settings shared by the whole folder:
dataset, `--size`, `--set`), with stdout and stderr appended to `DIR/runs/<name>/log.txt`.
`--jobs=K` runs K at a time. Runs start in the current directory, so relative paths (the data
cache, a dataset) are read as given and no absolute path is written into a run's files.

Resuming: a finished run is skipped: its `results.json` (the trainer writes it last) parses and
the outputs it lists exist and read back (`mscan_jax.training.rundir.unfinished_reason`). Any
other run is started again (an unreadable or empty results.json is named in a message) and the
trainer resumes from the checkpoint in its workdir. A failed run is reported with its log path
and does not stop the others; the exit code is 1 if any run failed.

Children: each `launch.py` runs in its own process group, killed with the grid (an exception,
Ctrl-C, SIGTERM or SIGHUP kill the groups of the running children before the grid exits); a child
also asks the kernel to kill it when the grid dies by SIGKILL (`rundir.die_with_parent`).

Target scenarios of the models that have one (Single, Finetune; `--scenarios=1,2,3`; default:
every scenario of the test split if there are at most 4, else the 3 with the most test samples,
ties to the smaller id; counted from the built dataset's `splits/test.npy` and
`log/scenario.npy`, so it is deterministic).

Stages come from the registry (`mscan_jax.models.stages`): a model whose last stage starts from
an earlier stage's checkpoint (Finetune: Mix, then the target scenario) gets that earlier stage
as a sibling run of the grid (the Mix run of its seed, trained once and shared by every target
scenario), and its own run starts from it (`train.init_from=../<sibling>`) after it finished
(a dependency; a failed sibling fails its dependants).

Populations (`--population=P`; by default `AUTO_POPULATION` on a GPU host, off on a CPU): runs
of one shape (`population_key`: the same config but for `population.MEMBER_KEYS`, e.g. the seeds
and dial levels of one model row) are grouped, in grid order, into populations of at most P
members, each trained by one `python -m mscan_jax.training.population` process
(`DIR/populations/<first member>+<n>/members.json` and `log.txt`); every member still writes its
own run folder, and is reported, skipped and resumed on its own.

`DIR/grid.json` records the shared settings; a second call with other settings on the same DIR is
refused, so one folder never mixes datasets or sizes. Several calls may share DIR at once: the
check holds a lock and the file is replaced atomically.

GPU hosts (`experiments.placement`): `--devices=0,1,2,3|auto` gives each run a device (or a group
of `--devices_per_run`) as its CUDA_VISIBLE_DEVICES; `--gpu_memory=auto|fraction|grow` sets the
memory share of the runs sharing a device; a run whose log says it ran out of memory is reported
as `oom`. On a CPU host these flags set nothing.

Job arrays (`experiments.sharding`): `--task_index=I --num_tasks=N` (default: the SLURM array's
SLURM_ARRAY_TASK_ID, _MIN, _COUNT) runs task I's share of the grid: a deterministic split,
balanced by expected cost, a Finetune and its Mix run in one task.
"""

from __future__ import annotations

import ast
import concurrent.futures as cf
import contextlib
import dataclasses
import datetime
import fcntl
import json
import os
import re
import shlex
import signal
import subprocess
import sys
import threading
import time
from typing import Any, Callable, Optional, Sequence

import numpy as np

from absl import flags

from experiments import grids
from experiments import placement as placement_lib
from experiments import sharding
from experiments import tuning
from mscan_jax import config as config_lib
from mscan_jax import models
from mscan_jax.data import datasets
from mscan_jax.data.schema import DataError
from mscan_jax.training import population as population_lib
from mscan_jax.training import rundir

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_LAUNCHER = (sys.executable, os.path.join(REPO_ROOT, "launch.py"))
RESULTS = "results.json"
LOG = "log.txt"
RUN_INFO = rundir.RUN_INFO
GRID_INFO = "grid.json"
POPULATION_LAUNCHER = (sys.executable, "-m", "mscan_jax.training.population")
POPULATION_SPEC = "members.json"
# --population's default on a GPU host: one run at batch 1024 uses a small part of a GPU (#15).
AUTO_POPULATION = 16


class GridError(ValueError):
  """A bad command line or an output folder made with other settings."""


# ----------------------------------------------------------------------------- settings

def data_overrides(dataset: str, *, preset: str = "default", data_path: str = "",
                   cache_dir: str = "data_cache") -> grids.Overrides:
  """The dataset part of the shared overrides (paths as given, read from the current directory)."""
  if dataset not in datasets.names():
    raise GridError(f"--dataset={dataset!r} is unknown; valid: {', '.join(datasets.names())}")
  if not datasets.get_spec(dataset).needs_path:
    return {"data.name": dataset, "data.preset": preset, "data.cache_dir": cache_dir}
  if not data_path:
    raise GridError(f"--dataset={dataset} needs --data_path=DIR (a built dataset)")
  return {"data.name": dataset, "data.path": data_path}


def data_config(base: grids.Overrides, data_seed: int = 0):
  """`config.data` of the shared settings (and a data seed)."""
  config = config_lib.get_config()
  for key, value in {**base, "data.seed": data_seed}.items():
    if key.startswith("data."):
      _set(config, key, value)
  return config.data


_set = config_lib.set_field


def dataset_label(base: grids.Overrides) -> str:
  """The dataset's name (as in results.json) of the shared settings."""
  return datasets.label(data_config(base))


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
  # The grid applies the tuning table itself (`plan`), so its runs never look it up again.
  base = {**grids.SIZES[size], "train.progress": False, "train.export_predictions": True,
          "train.tuned": False, **data}
  for text in sets:
    key, value = parse_set(text)
    if key in grids.AXIS_KEYS and key not in grids.TUNED_KEYS:
      raise GridError(f"--set {key}=...: {key} is an axis of the grids, not a shared setting")
    base[key] = value
  return base


def tuned_settings(base: grids.Overrides, size: str, *, on: bool
                   ) -> tuple[Callable[[grids.Overrides], grids.Overrides], str]:
  """(run overrides -> its row's tuned settings, the table's id for grid.json): the tuning table
  of the folder's dataset and size (`experiments.tuning`); nothing with `on` False."""
  if not on:
    return (lambda overrides: {}), "none"
  key = datasets.tuning_label(data_config(base))
  try:
    tuning.load_table(key, size)
  except tuning.TuningError as e:
    raise GridError(str(e)) from None
  return (lambda overrides: tuning.settings_for(key, size, overrides)), tuning.table_id(key, size)


def check_tuned_rows(runs: Sequence[grids.Run], base: grids.Overrides, size: str) -> None:
  """A GridError when a run's row has an unfinished sweep in the tuning table (it would train
  with the shared settings while its neighbours are tuned); rows the table lacks keep the
  shared settings, and are named on one line."""
  key = datasets.tuning_label(data_config(base))
  table = tuning.load_table(key, size)
  states: dict[str, list[str]] = {"incomplete": [], "absent": []}
  for r in runs:
    state = tuning.row_state(table, r.overrides)
    row = tuning.row_key(r.overrides)
    if state in states and row not in states[state]:
      states[state].append(row)
  if states["incomplete"]:
    raise GridError(
        f"the tuning table {tuning.table_id(key, size)} has not chosen the settings of "
        f"{len(states['incomplete'])} row(s) of this grid, whose sweep is unfinished: "
        f"{', '.join(states['incomplete'][:8])}{' ...' if len(states['incomplete']) > 8 else ''}; "
        "finish it (`python -m experiments.tune`, the table's command) or pass --tuned=false")
  if states["absent"]:
    print(f"not in the tuning table (shared settings): {', '.join(states['absent'])}")


def _jsonable(x: Any) -> Any:
  return json.loads(json.dumps(x))


# Shared settings that do not change a run's result: a folder may be resumed with other values.
_NOT_COMPARED = ("data.cache_dir", "data.prefetch", "train.progress", "train.tuned",
                 "train.export_predictions")


def check_or_write_grid_info(out: str, info: dict) -> None:
  """Writes DIR/grid.json, or checks that an existing one has the same shared settings.

  Several processes may call this on one folder at once (the tasks of a job array): the check
  and the write hold a lock on DIR/grid.json.lock (where the file system has locks), the file is
  replaced atomically (a reader never sees half of it), and the same info is not written again."""
  os.makedirs(out, exist_ok=True)
  with _locked(os.path.join(out, GRID_INFO + ".lock")):
    _check_or_write_grid_info(out, info)


@contextlib.contextmanager
def _locked(path: str):
  """An exclusive advisory lock on `path` (flock; a no-op where the file system has none)."""
  with open(path, "a") as f:
    try:
      fcntl.flock(f, fcntl.LOCK_EX)
    except OSError:
      pass
    yield


def write_json_atomically(path: str, obj: Any) -> None:
  """Writes `obj` as JSON to a temporary file beside `path`, then renames it into place."""
  tmp = f"{path}.tmp-{os.getpid()}-{threading.get_ident()}"
  with open(tmp, "w") as f:
    json.dump(obj, f, indent=2)
    f.flush()
    os.fsync(f.fileno())
  os.replace(tmp, path)


def _check_or_write_grid_info(out: str, info: dict) -> None:
  path = os.path.join(out, GRID_INFO)
  old = None
  if os.path.exists(path):
    try:
      with open(path) as f:
        old = json.load(f)
    except json.JSONDecodeError as e:
      raise GridError(f"{path} cannot be read ({e}); remove it to start the folder's settings "
                      "afresh") from None
    before, now = old.get("shared", {}), _jsonable(info["shared"])
    diff = sorted(k for k in set(before) | set(now)
                  if k not in _NOT_COMPARED and before.get(k) != now.get(k))
    if diff:
      raise GridError(f"{out} holds runs made with other shared settings ({', '.join(diff)}; see "
                      f"{path}); use another --out or the same settings")
    if old.get("tuning", "none") != info.get("tuning", "none"):
      raise GridError(f"{out} holds runs made with another tuning ({old.get('tuning', 'none')}, "
                      f"now {info.get('tuning', 'none')}; see {path}): use another --out, or "
                      "--tuned=false / the same table")
    info = {**old, **info, "grids": sorted(set(old.get("grids", [])) | set(info["grids"])),
            "scenarios": sorted(set(old.get("scenarios", [])) | set(info.get("scenarios", [])))}
  info = _jsonable(info)
  if info != old:
    write_json_atomically(path, info)


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


def dataset_path_for(base: grids.Overrides, data_seed: int = 0) -> str:
  """The built dataset directory of the shared settings (the synthetic one built here, once)."""
  return datasets.built_path(data_config(base, data_seed))


def has_truth(base: grids.Overrides) -> bool:
  """Whether the dataset records the truth (then the grids add the oracles). A dataset that is
  not built yet reads as False here; its runs then fail with the loader's own message."""
  from mscan_jax.data.schema import BuiltDataset, DataError
  try:
    return BuiltDataset(dataset_path_for(base)).schema.has_truth
  except DataError:
    return False


# ----------------------------------------------------------------------------- launching

@dataclasses.dataclass
class Job:
  run: grids.Run
  workdir: str
  overrides: grids.Overrides     # what is passed to launch.py (shared settings included)
  deps: tuple[str, ...] = ()     # names of runs that must finish first
  # A population (`populations`): these runs, trained together in one process; `workdir` then
  # holds the population's member list and log, and each member writes its own run folder.
  members: tuple["Job", ...] = ()

  def runs(self) -> tuple["Job", ...]:
    """The runs this job trains: its members, or itself."""
    return self.members or (self,)


def _config_of(overrides: grids.Overrides):
  config = config_lib.get_config()
  for key, value in overrides.items():
    _set(config, key, value)
  return config


def sibling_of(run: grids.Run) -> Optional[grids.Run]:
  """The run whose best checkpoint `run`'s last stage starts from (its model's previous stage,
  as a run of the grid), or None for a one-stage model."""
  stages = models.stages(_config_of(run.overrides))
  if len(stages) < 2:
    return None
  previous = grids.flatten(stages[-2][1])
  defaults = grids.flatten(config_lib.get_config())
  overrides = {k: v for k, v in previous.items() if not grids.same_value(defaults[k], v)}
  return grids.make_runs([overrides])[0]


def plan(runs: Sequence[grids.Run], runs_dir: str, base: grids.Overrides,
         tuned: Callable[[grids.Overrides], grids.Overrides] = lambda overrides: {}
         ) -> list[Job]:
  """Jobs for `runs`: a run with stages starts from its sibling run (added first if missing).
  Each run gets `tuned(its overrides)` (its row's tuned settings, `experiments.tuning`) under
  the shared settings (so `--set` overrides them) and its own overrides."""
  by_name = {r.name: r for r in runs}
  ordered: list[grids.Run] = []
  for r in runs:
    sib = sibling_of(r)
    if sib is not None and sib.name not in by_name:
      by_name[sib.name] = sib
      ordered.append(sib)
    ordered.append(r)
  jobs = []
  for r in ordered:
    ov = dict(r.overrides)
    deps: tuple[str, ...] = ()
    sib = sibling_of(r)
    if sib is not None:
      ov["train.init_from"] = os.path.join("..", sib.name)     # relative to the run folder
      deps = (sib.name,)
    jobs.append(Job(r, os.path.join(runs_dir, r.name), {**tuned(r.overrides), **base, **ov},
                    deps))
  return jobs


def population_key(job: Job) -> Optional[str]:
  """Runs with equal keys can share a population (`mscan_jax.training.population.shape_key` of
  their one stage); None for a run of several stages, which runs alone."""
  stages = models.stages(_config_of(job.overrides))
  if len(stages) != 1:
    return None
  (subdir, stage_config), = stages
  return f"{subdir}:{population_lib.shape_key(stage_config)}"


def populations(jobs: Sequence[Job], size: int, populations_dir: str) -> list[Job]:
  """`jobs` with the runs of one shape (`population_key`) grouped into populations of at most
  `size` members, in the order of their first member; a population's dependencies are its
  members' outside the population. size <= 1: the jobs unchanged."""
  if size <= 1:
    return list(jobs)
  groups: dict[str, list[Job]] = {}
  order: list[Any] = []
  for job in jobs:
    key = population_key(job)
    if key is None:
      order.append(job)
      continue
    if key not in groups or len(groups[key]) >= size:
      key_n = f"{key}#{len(order)}"
      groups[key_n] = []
      order.append(key_n)
      groups[key] = groups[key_n]      # the open group of this shape
    groups[key].append(job)
  out = []
  for item in order:
    if isinstance(item, Job):
      out.append(item)
      continue
    members = tuple(groups[item])
    if len(members) == 1:
      out.append(members[0])
      continue
    names = {m.run.name for m in members}
    deps = tuple(dict.fromkeys(d for m in members for d in m.deps if d not in names))
    name = f"{members[0].run.name}+{len(members) - 1}"
    out.append(Job(grids.Run(name, {}), os.path.join(populations_dir, name), {}, deps, members))
  return out


def command(launcher: Sequence[str], job: Job) -> list[str]:
  if job.members:
    return [*POPULATION_LAUNCHER, f"--spec={os.path.join(job.workdir, POPULATION_SPEC)}"]
  return [*launcher, f"--workdir={job.workdir}",
          *(f"--config.{k}={grids.format_value(v)}" for k, v in job.overrides.items())]


def _write_population_spec(job: Job) -> None:
  spec = [{"workdir": m.workdir, "overrides": _jsonable(m.overrides)} for m in job.members]
  rundir.write_json_atomic(os.path.join(job.workdir, POPULATION_SPEC), spec)


class _Children:
  """The running children, each the leader of its own process group, killed together."""

  def __init__(self):
    self._procs: set[subprocess.Popen] = set()
    self._lock = threading.Lock()
    self.closed = False

  def start(self, cmd: list[str], **kw) -> subprocess.Popen:
    with self._lock:
      if self.closed:
        raise OSError("the grid is stopping: no new run is started")
      proc = subprocess.Popen(cmd, start_new_session=True, **kw)
      self._procs.add(proc)
      return proc

  def done(self, proc: subprocess.Popen) -> None:
    with self._lock:
      self._procs.discard(proc)

  def kill_all(self) -> None:
    with self._lock:
      self.closed = True
      for proc in self._procs:
        try:
          os.killpg(proc.pid, signal.SIGKILL)     # the child and whatever it started
        except (ProcessLookupError, PermissionError):
          pass


def _execute(launcher: Sequence[str], job: Job, children: Optional[_Children] = None,
             env: Optional[dict[str, str]] = None) -> tuple[int, float, float]:
  """Runs one job: (exit code, wall seconds, CPU seconds of the process and its children).
  `env`: variables added to the child's environment (its devices and memory share)."""
  children = children or _Children()
  env = dict(env or {})
  os.makedirs(job.workdir, exist_ok=True)
  if job.members:
    _write_population_spec(job)
  cmd = command(launcher, job)
  info = {"name": job.run.name, "overrides": job.run.overrides, "launch_overrides": job.overrides,
          "deps": list(job.deps), "command": cmd, **({"env": env} if env else {})}
  if job.members:
    info["members"] = [m.run.name for m in job.members]
  info_path = os.path.join(job.workdir, RUN_INFO)
  with open(info_path, "w") as f:
    json.dump(_jsonable(info), f, indent=2)
  member_infos = {}
  for m in job.members:     # each member's run.json and log.txt point at the population
    os.makedirs(m.workdir, exist_ok=True)
    member_infos[m.workdir] = {"name": m.run.name, "overrides": m.run.overrides,
                               "launch_overrides": m.overrides, "deps": list(m.deps),
                               "population": job.run.name, "population_size": len(job.members)}
    rundir.write_json_atomic(os.path.join(m.workdir, RUN_INFO), _jsonable(member_infos[m.workdir]))
    with open(os.path.join(m.workdir, LOG), "a") as log:
      log.write(f"=== {datetime.datetime.now().isoformat(timespec='seconds')} trained in the "
                f"population {job.run.name}: log {os.path.relpath(os.path.join(job.workdir, LOG), m.workdir)}\n")
  start = time.perf_counter()
  with open(os.path.join(job.workdir, LOG), "a") as log:
    log.write(f"=== {datetime.datetime.now().isoformat(timespec='seconds')} "
              f"{shlex.join(cmd)}\n")
    log.flush()
    if env:
      log.write(f"=== env {' '.join(f'{k}={v}' for k, v in sorted(env.items()))}\n")
      log.flush()
    child_env = {**os.environ, **env, "PYTHONUNBUFFERED": "1",
                 rundir.PARENT_ENV: str(os.getpid())}
    proc = children.start(cmd, stdout=log, stderr=subprocess.STDOUT, env=child_env,
                          stdin=subprocess.DEVNULL)
    try:
      _, status, usage = os.wait4(proc.pid, 0)   # this child's own CPU time, also with K jobs
    except BaseException:
      with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
      proc.wait()
      raise
    finally:
      children.done(proc)
    proc.returncode = rc = os.waitstatus_to_exitcode(status)
  wall, cpu = time.perf_counter() - start, usage.ru_utime + usage.ru_stime
  with open(info_path, "w") as f:
    json.dump(_jsonable({**info, "exit_code": rc, "wall_s": round(wall, 1),
                         "cpu_s": round(cpu, 1)}), f, indent=2)
  for m in job.members:     # a member's share of the population's time
    n = len(job.members)
    rundir.write_json_atomic(os.path.join(m.workdir, RUN_INFO), _jsonable(
        {**member_infos[m.workdir], "exit_code": rc, "wall_s": round(wall / n, 1),
         "cpu_s": round(cpu / n, 1), "population_wall_s": round(wall, 1)}))
  return rc, wall, cpu


@dataclasses.dataclass
class Summary:
  done: list[str] = dataclasses.field(default_factory=list)
  skipped: list[str] = dataclasses.field(default_factory=list)
  failed: list[tuple[str, str]] = dataclasses.field(default_factory=list)   # (name, why + log)
  oom: list[tuple[str, str]] = dataclasses.field(default_factory=list)      # out of memory
  seconds: float = 0.0

  @property
  def ok(self) -> bool:
    return not self.failed and not self.oom

  def format(self) -> str:
    lines = [f"{len(self.done)} done, {len(self.skipped)} skipped (already finished), "
             f"{len(self.failed)} failed" + (f", {len(self.oom)} out of memory" if self.oom else "")
             + f", in {self.seconds:.0f} s"]
    lines += [f"  FAILED {name}: {why}" for name, why in self.failed]
    lines += [f"  OOM {name}: {why}" for name, why in self.oom]
    if self.oom:
      lines.append("  (out of memory: not retried; fewer runs per device (--jobs, "
                   "--devices_per_run) or a smaller batch, then run the grid again)")
    return "\n".join(lines)


def _log_since(path: str, offset: int, limit: int = 1 << 20) -> str:
  """What a run's log gained after `offset` (its last `limit` bytes), as text."""
  try:
    with open(path, "rb") as f:
      f.seek(max(offset, os.path.getsize(path) - limit))
      return f.read().decode("utf-8", "replace")
  except OSError:
    return ""


def run_jobs(jobs: Sequence[Job], *, launcher: Sequence[str] = DEFAULT_LAUNCHER, num_jobs: int = 1,
             echo: Callable[[str], None] = print,
             placement: Optional[placement_lib.Placement] = None,
             record_dir: str = "") -> Summary:
  """Runs `jobs` (K at a time, dependencies first); finished ones are skipped
  (`rundir.unfinished_reason`). `placement` gives each child its devices and memory share
  (`experiments.placement`; None: the parent's environment). `record_dir`: each run's small
  files (`tuning.RECORD_FILES`) are copied to `record_dir/runs/<name>/` as soon as it is done
  or found finished, so that a grid of many sessions can be committed as it goes. A failed run
  whose log says it ran out of memory is reported as `oom` (not retried, like any failure in
  this call). If this call
  stops on an exception (Ctrl-C, a signal turned into SystemExit by `main`), the running
  children's process groups are killed first."""
  if num_jobs < 1:
    raise GridError(f"--jobs must be >= 1, got {num_jobs}")
  start = time.perf_counter()
  summary = Summary()
  total = sum(len(job.runs()) for job in jobs)
  finished = 0
  status: dict[str, str] = {}          # run name -> done | skipped | failed | oom
  pending: list[Job] = []

  def report(job: Job, state: str, note: str = "") -> None:
    nonlocal finished
    for run in job.runs():
      finished += 1
      status[run.run.name] = state
      if record_dir and state in ("done", "skipped"):
        rundir.copy_small_files(run.workdir, os.path.join(record_dir, "runs", run.run.name),
                                tuning.RECORD_FILES)
      echo(f"[{finished}/{total}] {state:<7} {run.run.name}{note}")

  for job in jobs:
    todo = []
    for run in job.runs():
      why = rundir.unfinished_reason(run.workdir)
      if why is None:
        summary.skipped.append(run.run.name)
        report(run, "skipped")
      else:
        if os.path.exists(os.path.join(run.workdir, RESULTS)):
          echo(f"rerun {run.run.name}: not finished: {why}")
        todo.append(run)
    if len(todo) > 1 or (todo and job.members):
      job = dataclasses.replace(job, members=tuple(todo)) if job.members else job
      pending.append(job)
    elif todo:
      pending.append(todo[0])

  children = _Children()
  with cf.ThreadPoolExecutor(max_workers=num_jobs) as pool, _killing(children):
    running: dict[cf.Future, tuple[Job, Optional[int], int]] = {}   # job, device slot, log offset
    while pending or running:
      for job in list(pending):
        if len(running) >= num_jobs:
          break
        dep_states = [status.get(d) for d in job.deps]
        if any(s in ("failed", "oom") for s in dep_states):
          pending.remove(job)
          bad = [d for d in job.deps if status.get(d) in ("failed", "oom")]
          why = f"dependency {', '.join(bad)} failed"
          summary.failed += [(run.run.name, why) for run in job.runs()]
          report(job, "failed", f"  ({why})")
          continue
        if all(s in ("done", "skipped") for s in dep_states):
          pending.remove(job)
          log_path = os.path.join(job.workdir, LOG)
          offset = os.path.getsize(log_path) if os.path.exists(log_path) else 0
          slot, env = placement.acquire() if placement else (None, {})
          running[pool.submit(_execute, launcher, job, children, env)] = (job, slot, offset)
      if not running:
        if pending:   # dependencies that are in no job list and not finished
          for job in pending:
            why = f"dependency {', '.join(job.deps)} is not finished and not in this grid"
            summary.failed += [(run.run.name, why) for run in job.runs()]
            report(job, "failed", f"  ({why})")
          pending = []
        continue
      finished_now, _ = cf.wait(running, return_when=cf.FIRST_COMPLETED)
      for fut in finished_now:
        job, slot, offset = running.pop(fut)
        if placement:
          placement.release(slot)
        log_path = os.path.join(job.workdir, LOG)
        try:
          rc, seconds, cpu = fut.result()
        except OSError as e:   # the launcher could not be started
          summary.failed += [(run.run.name, f"{e}; log {log_path}") for run in job.runs()]
          report(job, "failed", f"  ({e})")
          continue
        of = f" (population of {len(job.members)})" if job.members else ""
        for run in job.runs():   # a population's members finish or fail one by one
          unfinished = rundir.unfinished_reason(run.workdir)
          if unfinished is None:
            summary.done.append(run.run.name)
            report(run, "done", f"  {seconds:.0f} s (CPU {cpu:.0f} s){of}")
          else:
            why = f"exit code {rc}" if rc != 0 else f"exit code 0 but not finished: {unfinished}"
            state = placement_lib.classify_failure(rc, _log_since(log_path, offset))
            (summary.oom if state == "oom" else summary.failed).append(
                (run.run.name, f"{why}; log {log_path}"))
            report(run, state, f"  {seconds:.0f} s  {why}; log {log_path}")
  summary.seconds = time.perf_counter() - start
  return summary


@contextlib.contextmanager
def _killing(children: _Children):
  """Kills the children's process groups if the block is left by an exception."""
  try:
    yield
  except BaseException:
    children.kill_all()
    raise


@contextlib.contextmanager
def _signals_exit():
  """SIGTERM and SIGHUP raise SystemExit in the main thread (Ctrl-C raises KeyboardInterrupt),
  so `run_jobs` kills its children before the grid exits."""
  def handler(signum, frame):
    raise SystemExit(128 + signum)
  if threading.current_thread() is not threading.main_thread():
    yield
    return
  old = {s: signal.signal(s, handler) for s in (signal.SIGTERM, signal.SIGHUP)}
  try:
    yield
  finally:
    for s, h in old.items():
      signal.signal(s, h)


# ----------------------------------------------------------------------------- command line

def _define_flags(fv: flags.FlagValues) -> None:
  d = dict(flag_values=fv)
  flags.DEFINE_enum("grid", None, list(grids.GRID_NAMES), "Grid to run.", required=True, **d)
  flags.DEFINE_string("dataset", "synthetic", "A registered dataset (mscan_jax.data.datasets): "
                      "synthetic, or a built dataset's name (aliccp, ...) with --data_path.", **d)
  flags.DEFINE_string("preset", "default", "Synthetic preset: tiny | default | large.", **d)
  flags.DEFINE_string("data_path", "", "Built dataset directory (real datasets).", **d)
  flags.DEFINE_string("cache_dir", "data_cache", "Where the synthetic data is built.", **d)
  flags.DEFINE_enum("size", None, list(grids.SIZES),
                    "Model/training size (default: tiny with --preset=tiny, else default).", **d)
  flags.DEFINE_integer("seeds", 3, "Model seeds 0..N-1.", lower_bound=1, **d)
  flags.DEFINE_integer("data_seeds", 1, "Data seeds 0..N-1 of the synthetic benchmark.",
                       lower_bound=1, **d)
  flags.DEFINE_list("scenarios", [], "Target scenarios of Single/Finetune, e.g. 1,2,3.", **d)
  flags.DEFINE_list("baselines", ["mix"], "Baselines of the mechanisms grid (each with every "
                    "behaviour input), e.g. mix,mmoe,aesm2.", **d)
  flags.DEFINE_integer("jobs", 1, "Runs at a time.", lower_bound=1, **d)
  flags.DEFINE_multi_string("set", [], "Extra shared config override KEY=VALUE, e.g. "
                            "--set=train.num_epochs=2 (repeatable).", **d)
  flags.DEFINE_string("out", None, "Output folder.", required=True, **d)
  flags.DEFINE_string("launcher", "", "Command that runs one config (default: this Python and "
                      "launch.py); for tests.", **d)
  flags.DEFINE_integer("population", -1, "Train up to P runs of one shape together, as one "
                       "vmapped program in one process (mscan_jax.training.population); 0 or 1: "
                       "one process per run; -1 (default): AUTO_POPULATION on a GPU host, else "
                       "one process per run.", lower_bound=-1, **d)
  flags.DEFINE_bool("tuned", True, "Give every run its row's tuned settings "
                    "(experiments/tuned/<dataset>@<size>.json, `python -m experiments.tuning`); "
                    "--set overrides them. The grid `tuning` never uses them.", **d)
  flags.DEFINE_string("record_dir", "", "Copy grid.json and each finished run's small files "
                      "(config.json, results.json, metrics.jsonl, run.json; no checkpoints, no "
                      "predictions) into this folder as the runs finish: a record to commit "
                      "while a long grid runs.", **d)
  flags.DEFINE_bool("dry_run", False, "Print the commands, run nothing.", **d)
  flags.DEFINE_string("match", "", "Only the runs whose name matches this regular expression "
                      "(a slice of a grid; its sibling runs are added as needed).", **d)
  # Accelerators (experiments.placement).
  flags.DEFINE_string("devices", "", "GPUs to spread the runs over, e.g. 0,1,2,3, or auto (the "
                      "parent's CUDA_VISIBLE_DEVICES, else nvidia-smi's list; none on a CPU "
                      "host); each run gets its own group as CUDA_VISIBLE_DEVICES. Without "
                      "--jobs: one run per group at a time.", **d)
  flags.DEFINE_integer("devices_per_run", 1, "GPUs per run with --devices.", lower_bound=1, **d)
  flags.DEFINE_enum("gpu_memory", "auto", list(placement_lib.MEMORY_MODES), "Memory of the runs "
                    "sharing a GPU: fraction (XLA_PYTHON_CLIENT_MEM_FRACTION=0.9/K), grow "
                    "(XLA_PYTHON_CLIENT_PREALLOCATE=false), auto (fraction when K > 1).", **d)
  # Job arrays (experiments.sharding).
  flags.DEFINE_integer("task_index", None, "This task's share of the grid, 0..num_tasks-1 "
                       "(default: from SLURM_ARRAY_TASK_ID and SLURM_ARRAY_TASK_MIN).", **d)
  flags.DEFINE_integer("num_tasks", None, "Tasks the grid is split into (default: "
                       "SLURM_ARRAY_TASK_COUNT, else 1).", **d)


def parse_flags(argv: Sequence[str]) -> flags.FlagValues:
  """absl flags of this command, parsed into a fresh FlagValues (so main() can run twice)."""
  fv = flags.FlagValues()
  _define_flags(fv)
  try:
    fv(["run_grid", *argv])
  except flags.Error as e:
    raise GridError(str(e)) from None
  return fv


def main(argv: Sequence[str]) -> int:
  try:
    a = parse_flags(argv)
    size = a.size or ("tiny" if a.dataset == "synthetic" and a.preset == "tiny" else "default")
    base = shared_overrides(data_overrides(a.dataset, preset=a.preset, data_path=a.data_path,
                                           cache_dir=a.cache_dir), size, a.set)
    config_lib.validate(_config_of(base), models.model_names())   # a bad --set stops here
    if a.grid == "tuning" and set(base) & set(grids.TUNED_KEYS):
      raise GridError(f"--set {sorted(set(base) & set(grids.TUNED_KEYS))[0]}=...: the grid "
                      "tuning searches it")
    data_seeds = list(range(a.data_seeds))
    if data_seeds != [0] and datasets.get_spec(a.dataset).needs_path:
      raise GridError("--data_seeds applies to generated data (the synthetic benchmark) only")
    scenarios: list[int] = []
    try:
      scenarios = [int(s) for s in a.scenarios if s.strip()]
    except ValueError:
      raise GridError(f"--scenarios={','.join(a.scenarios)}: expected scenario ids") from None
    if not scenarios and grids.needs_scenarios(a.grid):
      counts = count_test_samples(dataset_path_for(base))
      scenarios = choose_scenarios(counts)
      print(f"target scenarios: {scenarios} (test samples: "
            f"{ {s: counts[s] for s in scenarios} })")
    task_index, num_tasks = sharding.resolve_task(a.task_index, a.num_tasks, os.environ)
    num_jobs = a.jobs
    placement = placement_lib.make_placement(
        devices=a.devices, devices_per_run=a.devices_per_run, num_jobs=num_jobs,
        memory=a.gpu_memory, environ=os.environ)
    if placement.groups and not a["jobs"].present:
      num_jobs = placement.num_jobs = len(placement.groups)      # one run per device group
    runs = grids.build(a.grid, seeds=range(a.seeds), scenarios=scenarios, data_seeds=data_seeds,
                       with_truth=has_truth(base), baselines=a.baselines)
    if a.match:
      try:
        pattern = re.compile(a.match)
      except re.error as e:
        raise GridError(f"--match={a.match!r}: {e}") from None
      runs = [r for r in runs if pattern.search(r.name)]
      if not runs:
        raise GridError(f"--match={a.match!r} selects no run of grid {a.grid}")
    tuned, tuning_id = tuned_settings(base, size, on=a.tuned and a.grid != "tuning")
    if tuning_id != "none":
      check_tuned_rows(runs, base, size)
    if not a.dry_run:
      check_or_write_grid_info(a.out, {"dataset": dataset_label(base), "size": size,
                                       "shared": base, "grids": [a.grid],
                                       "scenarios": scenarios, "data_seeds": data_seeds,
                                       "tuning": tuning_id})
      if not datasets.get_spec(a.dataset).needs_path:
        # Generate every dataset of the grid (data seeds x dial levels) once here, not in K
        # runs at the same time.
        for data in dict.fromkeys(json.dumps({k: v for k, v in r.overrides.items()
                                              if k.startswith("data.")}, sort_keys=True)
                                  for r in runs):
          extra = json.loads(data)
          dataset_path_for({**base, **extra}, extra.get("data.seed", 0))
  except (GridError, config_lib.ConfigError, DataError, sharding.ShardError,
          placement_lib.PlacementError) as e:                       # a bug keeps its traceback
    print(f"error: {e}", file=sys.stderr)
    return 2
  launcher = shlex.split(a.launcher) if a.launcher else list(DEFAULT_LAUNCHER)
  jobs = plan(runs, os.path.join(a.out, "runs"), base, tuned)
  if num_tasks > 1:
    share = sharding.assign(jobs, num_tasks)[task_index]
    print(sharding.describe(share, jobs, task_index, num_tasks))
    jobs = share
  pop_size = a.population if a.population >= 0 else (AUTO_POPULATION if placement.gpu else 0)
  jobs = populations(jobs, pop_size, os.path.join(a.out, "populations"))
  if a.dry_run:
    for job in jobs:
      print(shlex.join(command(launcher, job)))
    return 0
  n_pop = sum(1 for job in jobs if job.members)
  print(f"{sum(len(job.runs()) for job in jobs)} runs of grid {a.grid} on {dataset_label(base)} "
        f"(size {size}) -> {a.out}, {num_jobs} at a time"
        + (f"; {n_pop} populations of up to {pop_size}" if n_pop else ""))
  if a.devices or placement.gpu:
    print(placement.describe())
  with _signals_exit():
    if a.record_dir:
      rundir.copy_small_files(a.out, a.record_dir, [GRID_INFO])
    summary = run_jobs(jobs, launcher=launcher, num_jobs=num_jobs, placement=placement,
                       record_dir=a.record_dir)
  print(summary.format())
  return 0 if summary.ok else 1


if __name__ == "__main__":
  sys.exit(main(sys.argv[1:]))
