"""experiments.sharding: a grid's shares for the tasks of a job array, and the task index from
the scheduler's environment. Pure tests on the real grids, then two local processes running two
shares into one folder (the fake launcher of test_run_grid, which fails a Finetune whose Mix run
is not finished)."""

import json
import os
import subprocess
import sys

import pytest

from experiments import grids
from experiments import run_grid as grid
from experiments import sharding
from test_run_grid import launcher  # noqa: F401  (the fake launch.py, a fixture)

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _jobs(name, **kw):
  runs = grids.build(name, **kw)
  return grid.plan(runs, "/runs", {"data.name": "synthetic"})


GRIDS = {
    "table1": dict(seeds=[0, 1, 2], scenarios=[1, 2, 3], data_seeds=[0, 1], with_truth=True),
    "table2": dict(seeds=[0, 1]),
    "all": dict(seeds=[0, 1], scenarios=[1, 2]),
    "mechanisms": dict(seeds=[0], baselines=["mix", "mmoe"]),
}


@pytest.mark.parametrize("name", GRIDS)
def test_every_run_once_units_together_in_order_and_balanced(name):
  jobs = _jobs(name, **GRIDS[name])
  names = [j.run.name for j in jobs]
  position = {n: i for i, n in enumerate(names)}
  units = sharding.units(jobs)
  unit_cost = max(sum(sharding.run_cost(j.overrides) for j in u) for u in units)
  for num_tasks in range(1, 8):
    shares = sharding.assign(jobs, num_tasks)
    assert len(shares) == num_tasks
    flat = [j.run.name for s in shares for j in s]
    assert sorted(flat) == sorted(names) and len(set(flat)) == len(flat)   # each exactly once
    task_of = {j.run.name: t for t, s in enumerate(shares) for j in s}
    for t, share in enumerate(shares):
      assert [position[j.run.name] for j in share] == sorted(position[j.run.name] for j in share)
      for j in share:
        for dep in j.deps:       # the run it starts from: same task, earlier in the task's list
          assert task_of[dep] == t
          assert [x.run.name for x in share].index(dep) < [x.run.name for x in share].index(
              j.run.name)
    loads = [sum(sharding.run_cost(j.overrides) for j in s) for s in shares]
    # Greedy to the least loaded task: the spread is at most one unit, so the makespan is within
    # one unit of the mean (a lower bound of the optimum).
    assert max(loads) - min(loads) <= unit_cost + 1e-9
    assert max(loads) <= sum(loads) / num_tasks + unit_cost + 1e-9
    # Deterministic: the same split from the jobs in another order.
    again = sharding.assign(list(reversed(jobs)), num_tasks)
    assert [sorted(j.run.name for j in s) for s in again] == [
        sorted(j.run.name for j in s) for s in shares]


def test_finetunes_and_their_mix_are_one_unit():
  jobs = _jobs("table1", seeds=[0, 1], scenarios=[1, 2])
  units = {tuple(j.run.name for j in u) for u in sharding.units(jobs) if len(u) > 1}
  assert units == {("mix-s0", "finetune-scenario=1-s0", "finetune-scenario=2-s0"),
                   ("mix-s1", "finetune-scenario=1-s1", "finetune-scenario=2-s1")}


def test_lpt_by_cost_then_name():
  """Hand-computed on 2 tasks: big 5 -> t0; mid 4 -> t1; a 3 -> t1 (4 < 5; a before b by name);
  b 3 -> t0 (5 < 7); small 2 -> t1 (7 < 8). Loads 8 and 9; each list in the jobs' order."""
  cost = {"a": 3.0, "b": 3.0, "big": 5.0, "mid": 4.0, "small": 2.0}
  jobs = [grid.Job(grids.Run(n, {}), n, {}) for n in ("small", "b", "a", "mid", "big")]
  shares = sharding.assign(jobs, 2, cost=lambda j: cost[j.run.name])
  assert [[j.run.name for j in s] for s in shares] == [["b", "big"], ["small", "a", "mid"]]


def test_cost_model():
  assert sharding.run_cost({"model": "mscan"}) > sharding.run_cost({"model": "mix"})
  assert sharding.run_cost({"model": "mscan", "mscan.use_saca": False}) == pytest.approx(33.0)
  assert sharding.run_cost({"model": "oracle_like"}) < sharding.run_cost({"model": "single"})
  assert sharding.run_cost({}) == sharding.run_cost({"model": "mscan"})   # the default model
  from mscan_jax import models
  like = models.UNMEASURED_COST_LIKE
  assert sharding.run_cost({"model": "a_new_model"}) == sharding.run_cost({"model": like})
  with models.registered("a_new_model", models.ModelSpec(models.get_spec("mix").factory, "New",
                                                         "u, i, s")):   # no cost measured
    assert sharding.run_cost({"model": "a_new_model"}) == models.get_spec(like).cost
  # Every built-in model has a measured cost.
  assert all(models.get_spec(n).cost for n in models.model_names())


@pytest.mark.parametrize("environ, expected", [
    ({}, (None, None)),
    ({"SLURM_ARRAY_TASK_ID": "3", "SLURM_ARRAY_TASK_COUNT": "8", "SLURM_ARRAY_TASK_MIN": "0"},
     (3, 8)),
    ({"SLURM_ARRAY_TASK_ID": "1", "SLURM_ARRAY_TASK_COUNT": "8", "SLURM_ARRAY_TASK_MIN": "1"},
     (0, 8)),                                                      # --array=1-8
    ({"SLURM_ARRAY_TASK_ID": "8", "SLURM_ARRAY_TASK_MIN": "1", "SLURM_ARRAY_TASK_MAX": "8"},
     (7, 8)),                                                      # no COUNT: from MIN, MAX
    ({"SLURM_ARRAY_TASK_ID": "6", "SLURM_ARRAY_TASK_COUNT": "4", "SLURM_ARRAY_TASK_MIN": "0",
      "SLURM_ARRAY_TASK_STEP": "2"}, (3, 4)),                      # --array=0-6:2
])
def test_task_from_env(environ, expected):
  assert sharding.task_from_env(environ) == expected


def test_resolve_task_flags_env_and_errors():
  env = {"SLURM_ARRAY_TASK_ID": "5", "SLURM_ARRAY_TASK_COUNT": "6", "SLURM_ARRAY_TASK_MIN": "1"}
  assert sharding.resolve_task(None, None, {}) == (0, 1)
  assert sharding.resolve_task(None, None, env) == (4, 6)
  assert sharding.resolve_task(1, 2, env) == (1, 2)                 # flags win
  with pytest.raises(sharding.ShardError, match=r"task index 2 \(from --task_index\) is out of "
                                                r"range for 2 tasks \(valid: 0..1\)"):
    sharding.resolve_task(2, 2, {})
  with pytest.raises(sharding.ShardError, match="out of range for 4 tasks"):
    sharding.resolve_task(None, 4, env)                             # index 4 of a 6-array
  with pytest.raises(sharding.ShardError, match="needs --task_index"):
    sharding.resolve_task(None, 3, {})
  with pytest.raises(sharding.ShardError, match=">= 1"):
    sharding.resolve_task(0, 0, {})
  with pytest.raises(sharding.ShardError, match="is not an integer"):
    sharding.task_from_env({"SLURM_ARRAY_TASK_ID": "x"})
  with pytest.raises(sharding.ShardError, match="not on the array's range"):
    sharding.task_from_env({"SLURM_ARRAY_TASK_ID": "3", "SLURM_ARRAY_TASK_STEP": "2"})


def test_out_of_range_task_exits_2(tmp_path, launcher, capsys, monkeypatch):
  monkeypatch.setenv("SLURM_ARRAY_TASK_ID", "9")
  monkeypatch.setenv("SLURM_ARRAY_TASK_COUNT", "4")
  out = str(tmp_path / "out")
  code = grid.main(["--grid=c", "--dataset=aliccp", f"--data_path={tmp_path}", "--seeds=1",
                    f"--out={out}", "--launcher=" + " ".join(launcher)])
  err = capsys.readouterr().err
  assert code == 2 and "error: task index 9 (from SLURM_ARRAY_TASK_ID) is out of range" in err
  assert not os.path.exists(out)


def _task(argv, index, env=None):
  return subprocess.Popen(
      [sys.executable, "-m", "experiments.run_grid", *argv, f"--task_index={index}",
       "--num_tasks=2"], cwd=ROOT, env={**os.environ, "PYTHONPATH": ROOT, **(env or {})},
      stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def test_two_tasks_in_two_processes_fill_one_folder(tmp_path, launcher):
  """Table 1 on a built folder (one target scenario, two seeds: Finetunes depend on their Mix):
  two task processes at the same time into one folder make the run folders of a single-task run,
  each run once, with grid.json written once and agreed on; no Finetune found its Mix
  unfinished (the fake launcher would fail it)."""
  data = tmp_path / "built"
  data.mkdir()
  common = ["--grid=table1", "--dataset=aliccp", f"--data_path={data}", "--seeds=2",
            "--scenarios=1", "--launcher=" + " ".join(launcher)]
  single = str(tmp_path / "single")
  assert grid.main([*common, f"--out={single}"]) == 0
  shared = str(tmp_path / "shared")
  procs = [_task([*common, f"--out={shared}"], i) for i in (0, 1)]
  outs = [p.communicate(timeout=120)[0] for p in procs]
  assert [p.returncode for p in procs] == [0, 0], outs
  runs = sorted(os.listdir(os.path.join(single, "runs")))
  assert sorted(os.listdir(os.path.join(shared, "runs"))) == runs and len(runs) == 26
  for name in runs:
    calls = open(os.path.join(shared, "runs", name, "calls.txt")).read().splitlines()
    assert len(calls) == 1, name
  assert json.load(open(os.path.join(shared, "grid.json"))) == json.load(
      open(os.path.join(single, "grid.json")))
  assert not [f for f in os.listdir(shared) if ".tmp-" in f]
  assert "task 0 of 2: " in outs[0] and "task 1 of 2: " in outs[1]
  # A second pass of one task skips its whole share.
  again = _task([*common, f"--out={shared}"], 1)
  assert again.communicate(timeout=60)[0].count("skipped (already finished)") == 1
  assert again.returncode == 0


def test_grid_info_written_once_by_concurrent_tasks(tmp_path):
  """Eight writers at once with the same info: one grid.json, as written, no temporary file left;
  a later writer with the same info does not rewrite it; other shared settings are refused."""
  import threading
  out = str(tmp_path / "out")
  info = {"dataset": "synthetic-tiny", "size": "tiny", "shared": {"train.num_epochs": 2},
          "grids": ["table2"], "scenarios": [], "data_seeds": [0]}
  errors = []
  def write():
    try:
      grid.check_or_write_grid_info(out, info)
    except Exception as e:      # noqa: BLE001  (reported below)
      errors.append(e)
  threads = [threading.Thread(target=write) for _ in range(8)]
  for t in threads:
    t.start()
  for t in threads:
    t.join()
  assert not errors
  path = os.path.join(out, "grid.json")
  assert json.load(open(path)) == info
  assert sorted(os.listdir(out)) == ["grid.json", "grid.json.lock"]
  before = os.stat(path).st_mtime_ns
  grid.check_or_write_grid_info(out, info)
  assert os.stat(path).st_mtime_ns == before
  with pytest.raises(grid.GridError, match="train.num_epochs"):
    grid.check_or_write_grid_info(out, {**info, "shared": {"train.num_epochs": 3}})
