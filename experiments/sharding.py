"""Shares of a grid for the tasks of a scheduler's job array (SLURM): pure functions.

    python -m experiments.run_grid --grid=table2 ... --out=/shared/runs --task_index=I --num_tasks=N

Task I of N runs `assign(jobs, N)[I]` into the shared output folder. The assignment is a pure
function of the job list and N, so every task computes the same split without talking to the
others:

  units     a run and the runs it depends on (a run that starts from a sibling run's checkpoint,
            the sibling, and every other run that starts from it) form one unit (connected
            components of `Job.deps`); a unit is never split, so no task waits on another, and
            inside a unit the runs keep the plan's order (a sibling before its dependants).
  balance   greedy longest-processing-time: units sorted by (cost descending, name), each given
            to the task with the smallest total cost so far (ties: the lower task index). The
            most loaded task then exceeds the least loaded by at most one unit's cost.
  cost      `run_cost`: each model's cost in the model registry (`ModelSpec.cost`).

Task index and count default to the array's environment (`task_from_env`):
SLURM_ARRAY_TASK_ID, SLURM_ARRAY_TASK_COUNT, and SLURM_ARRAY_TASK_MIN / SLURM_ARRAY_TASK_STEP
when the IDs start elsewhere than 0 (`--array=1-8`) or step (`--array=0-14:2`).
"""

from __future__ import annotations

import math
from typing import Mapping, Optional, Sequence

from experiments import grids
from mscan_jax import models


class ShardError(ValueError):
  """A task index or count that names no share of the grid."""


# ----------------------------------------------------------------------------- cost model

def run_cost(overrides: Mapping[str, object]) -> float:
  """The expected cost of one run from its overrides: its model's (`models.run_cost`, the
  registry's measured cost per model and variant; the default config's model where `model` is
  not overridden)."""
  return models.run_cost(str(overrides.get("model", grids.default_value("model"))), overrides)


# ----------------------------------------------------------------------------- assignment

def _name(job) -> str:
  return job.run.name        # a run_grid.Job: .run.name, .overrides, .deps


def units(jobs: Sequence) -> list[list]:
  """Jobs grouped into units: the connected components of the dependency graph (a dependency
  outside `jobs` is ignored), each in the order of `jobs` (which lists a run after its
  dependencies, as `run_grid.plan` does)."""
  names = [_name(j) for j in jobs]
  parent = {n: n for n in names}

  def root(n: str) -> str:
    while parent[n] != n:
      parent[n] = parent[parent[n]]
      n = parent[n]
    return n

  for job in jobs:
    for dep in job.deps:
      if dep in parent:
        a, b = root(_name(job)), root(dep)
        if a != b:
          parent[max(a, b)] = min(a, b)
  groups: dict[str, list] = {}
  for job in jobs:
    groups.setdefault(root(_name(job)), []).append(job)
  return list(groups.values())


def assign(jobs: Sequence, num_tasks: int, cost=None) -> list[list]:
  """`num_tasks` lists of jobs (some may be empty): every job in exactly one, a unit's jobs in
  one list, each list in the order of `jobs`. Greedy LPT over units sorted by (cost desc, name);
  `cost(job)` defaults to `run_cost(job.overrides)`."""
  if num_tasks < 1:
    raise ShardError(f"the number of tasks must be >= 1, got {num_tasks}")
  cost = cost or (lambda job: run_cost(job.overrides))
  order = {_name(j): i for i, j in enumerate(jobs)}
  if len(order) != len(jobs):
    raise ShardError("two jobs have the same name")
  sized = sorted(((sum(cost(j) for j in u), min(_name(j) for j in u), u) for u in units(jobs)),
                 key=lambda t: (-t[0], t[1]))
  loads = [0.0] * num_tasks
  shares: list[list] = [[] for _ in range(num_tasks)]
  for unit_cost, _, unit in sized:
    task = min(range(num_tasks), key=lambda t: (loads[t], t))
    loads[task] += unit_cost
    shares[task].extend(unit)
  return [sorted(s, key=lambda j: order[_name(j)]) for s in shares]


# ----------------------------------------------------------------------------- task index

def _env_int(environ: Mapping[str, str], key: str) -> Optional[int]:
  raw = environ.get(key, "").strip()
  if not raw:
    return None
  try:
    return int(raw)
  except ValueError:
    raise ShardError(f"{key}={raw!r} is not an integer") from None


def task_from_env(environ: Mapping[str, str]) -> tuple[Optional[int], Optional[int]]:
  """(task index from 0, number of tasks) of a SLURM job array, or (None, None) outside one.

  index = (SLURM_ARRAY_TASK_ID - SLURM_ARRAY_TASK_MIN) / SLURM_ARRAY_TASK_STEP (MIN 0 and STEP 1
  when unset); count = SLURM_ARRAY_TASK_COUNT, else from MIN, MAX and STEP."""
  task_id = _env_int(environ, "SLURM_ARRAY_TASK_ID")
  if task_id is None:
    return None, _env_int(environ, "SLURM_ARRAY_TASK_COUNT")
  lo = _env_int(environ, "SLURM_ARRAY_TASK_MIN") or 0
  step = _env_int(environ, "SLURM_ARRAY_TASK_STEP") or 1
  count = _env_int(environ, "SLURM_ARRAY_TASK_COUNT")
  hi = _env_int(environ, "SLURM_ARRAY_TASK_MAX")
  if count is None and hi is not None:
    count = (hi - lo) // step + 1
  if (task_id - lo) % step:
    raise ShardError(f"SLURM_ARRAY_TASK_ID={task_id} is not on the array's range "
                     f"(min {lo}, step {step}); use --array=A-B or A-B:STEP")
  return (task_id - lo) // step, count


def resolve_task(task_index: Optional[int], num_tasks: Optional[int],
                 environ: Mapping[str, str]) -> tuple[int, int]:
  """(index, count) of this task: the flags where given, else the job array's environment, else
  (0, 1). ShardError naming the problem if the index is not in [0, count)."""
  env_index, env_count = task_from_env(environ)
  count = num_tasks if num_tasks is not None else (env_count if env_count is not None else 1)
  if task_index is not None:
    index = task_index
  elif env_index is not None:
    index = env_index
  elif count == 1:
    index = 0
  else:
    raise ShardError(f"--num_tasks={count} needs --task_index (or SLURM_ARRAY_TASK_ID)")
  if count < 1:
    raise ShardError(f"--num_tasks={count}: the number of tasks must be >= 1")
  if not 0 <= index < count:
    source = "--task_index" if task_index is not None else "SLURM_ARRAY_TASK_ID"
    raise ShardError(f"task index {index} (from {source}) is out of range for {count} tasks "
                     f"(valid: 0..{count - 1}); with SLURM, use --array=0-{count - 1} or set "
                     "--num_tasks to the array's size")
  return index, count


def describe(share: Sequence, jobs: Sequence, index: int, count: int) -> str:
  """One line: which share this task runs, and its cost against the whole grid's."""
  mine = sum(run_cost(j.overrides) for j in share)
  total = sum(run_cost(j.overrides) for j in jobs) or 1.0
  return (f"task {index} of {count}: {len(share)} of {len(jobs)} runs "
          f"({math.floor(100 * mine / total + 0.5)}% of the expected cost)")
