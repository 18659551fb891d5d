"""experiments.run_grid --population: runs of one shape grouped, members' folders, resume."""

import json
import os

from experiments import grids
from experiments import run_grid as grid


def _jobs(tmp_path, name, **kw):
  base = grid.shared_overrides(grid.data_overrides("synthetic", preset="tiny",
                                                   cache_dir=str(tmp_path / "cache")), "tiny")
  runs = grids.build(name, seeds=range(2), data_seeds=range(2), with_truth=False, **kw)
  return grid.plan(runs, str(tmp_path / "runs"), base)


def test_groups_hold_one_shape_and_every_run_once(tmp_path):
  jobs = _jobs(tmp_path, "table1", scenarios=[1, 2])
  grouped = grid.populations(jobs, 3, str(tmp_path / "populations"))
  runs = [r.run.name for job in grouped for r in job.runs()]
  assert sorted(runs) == sorted(j.run.name for j in jobs)          # every run exactly once
  assert len(grouped) < len(jobs)
  for job in grouped:
    assert len(job.members) <= 3
    if job.members:
      assert len({grid.population_key(m) for m in job.members}) == 1
      names = {m.run.name for m in job.members}
      assert not names & set(job.deps)                              # never waits on itself
      assert set(job.deps) == {d for m in job.members for d in m.deps} - names
  # Finetune runs (one stage with init_from) group together and wait for their Mix runs.
  fine = [job for job in grouped if job.members and job.members[0].run.overrides["model"] == "finetune"]
  assert fine and all(d.startswith("mix-") for job in fine for d in job.deps)
  # Model switches change shapes: M-scan without SACA never shares a population with M-scan.
  t2 = grid.populations(_jobs(tmp_path, "table2"), 16, str(tmp_path / "populations"))
  for job in t2:
    assert len({json.dumps(m.run.overrides.get("mscan.use_saca")) for m in job.runs()}) == 1
  assert grid.populations(jobs, 1, "unused") == jobs


def test_population_grid_trains_members_and_skips_them_after(tmp_path, capsys):
  argv = ["--grid=table2", "--dataset=synthetic", "--preset=tiny", "--seeds=2",
          f"--cache_dir={tmp_path / 'cache'}", f"--out={tmp_path / 'out'}", "--population=4",
          "--match=^mscan-s[01]$", "--set=train.max_steps=4", "--set=train.eval_every_steps=2"]
  assert grid.main(argv) == 0
  out = capsys.readouterr().out
  assert "2 done" in out and "population of 2" in out
  for seed in (0, 1):
    run = tmp_path / "out" / "runs" / f"mscan-s{seed}"
    results = json.load(open(run / "results.json"))
    assert results["seed"] == seed and results["steps"] == 4
    assert results["population"]["size"] == 2
    info = json.load(open(run / "run.json"))
    assert info["population"] == "mscan-s0+1" and info["exit_code"] == 0
  spec = json.load(open(tmp_path / "out" / "populations" / "mscan-s0+1" / "members.json"))
  assert [os.path.basename(m["workdir"]) for m in spec] == ["mscan-s0", "mscan-s1"]
  assert grid.main(argv) == 0                                       # resumable: both skipped
  assert "0 done, 2 skipped" in capsys.readouterr().out
