"""experiments.run_grid: planning, skip-finished / resume, failure reporting, parallel jobs.

A fake launcher (a tiny Python script, no JAX) stands in for launch.py: it records its command
line, writes results.json, fails on request, and can wait for a sibling run (a barrier that
only two runs at a time can pass). One real tiny run goes through launch.py at the end.
"""

import csv
import json
import os
import sys
import textwrap

import numpy as np
import pytest

from experiments import grids
from experiments import run_grid as grid

FAKE = textwrap.dedent("""
    import json, os, sys, time
    args = dict(a[2:].split("=", 1) for a in sys.argv[1:])
    wd = args["workdir"]
    with open(os.path.join(wd, "calls.txt"), "a") as f:
      f.write(" ".join(sys.argv[1:]) + "\\n")
    print("fake run", os.path.basename(wd))
    with open(os.path.join(wd, "env.txt"), "a") as f:      # the devices and memory share it got
      f.write(" ".join(f"{k}={os.environ[k]}" for k in ("CUDA_VISIBLE_DEVICES",
              "XLA_PYTHON_CLIENT_MEM_FRACTION", "XLA_PYTHON_CLIENT_PREALLOCATE")
              if k in os.environ) + "\\n")
    if args.get("config.mscan.alpha") == "0.3" or args.get("config.model") == "fail":
      print("boom: this run fails"); sys.exit(3)
    if args.get("config.model") == "oom":
      print("jaxlib.xla_extension.XlaRuntimeError: RESOURCE_EXHAUSTED: Out of memory"); sys.exit(1)
    init = args.get("config.train.init_from")
    if init and not os.path.exists(os.path.join(wd, init, "results.json")):
      print("the run it starts from is not finished"); sys.exit(5)
    if args.get("config.seed") == "0" and os.environ.get("FAKE_BARRIER"):
      # Seed 0 and seed 1 runs wait for each other: passes only if they run at the same time.
      open(os.path.join(os.environ["FAKE_BARRIER"], os.path.basename(wd)), "w").close()
      for _ in range(400):
        if len(os.listdir(os.environ["FAKE_BARRIER"])) >= 2:
          break
        time.sleep(0.025)
      else:
        print("barrier: no sibling running"); sys.exit(4)
    if args.get("config.seed") == "1" and os.environ.get("FAKE_BARRIER"):
      open(os.path.join(os.environ["FAKE_BARRIER"], os.path.basename(wd)), "w").close()
    if os.environ.get("FAKE_SLEEP"):             # stands for a long run; dies with the grid
      if os.environ.get("FAKE_DIE_WITH_PARENT"):
        try:
          from mscan_jax.training import rundir
          rundir.die_with_parent()              # as launch.py does
        except ImportError:                     # a version without it
          pass
      open(os.path.join(wd, "pid"), "w").write(str(os.getpid()))
      time.sleep(120)
    with open(os.path.join(wd, "results.json"), "w") as f:
      json.dump({"auc": {"all": 0.5, "per_scenario": {}}, "outputs": []}, f)
""")


@pytest.fixture
def launcher(tmp_path):
  path = tmp_path / "fake_launch.py"
  path.write_text(FAKE)
  return [sys.executable, str(path)]


def _calls(workdir):
  p = os.path.join(workdir, "calls.txt")
  return open(p).read().splitlines() if os.path.exists(p) else []


def test_plan_finetune_reuses_the_mix_run(tmp_path):
  runs = grids.build("table1", seeds=[0], scenarios=[2])
  base = {"data.name": "synthetic", "data.preset": "tiny"}
  jobs = {j.run.name: j for j in grid.plan(runs, str(tmp_path / "runs"), base)}
  ft = jobs["finetune-scenario=2-s0"]
  # The model asked for is launched; its stages (models.stages) skip the Mix stage because the
  # sibling Mix run of its seed is given as the starting checkpoint, relative to the run folder.
  assert ft.deps == ("mix-s0",)
  assert ft.overrides == {**base, "model": "finetune", "seed": 0, "single.scenario": 2,
                          "train.init_from": os.path.join("..", "mix-s0")}
  assert ft.workdir == os.path.join(str(tmp_path / "runs"), "finetune-scenario=2-s0")
  cmd = grid.command(["L"], ft)
  assert cmd[:2] == ["L", f"--workdir={ft.workdir}"]
  assert "--config.model=finetune" in cmd and "--config.train.init_from=../mix-s0" in cmd
  single = jobs["single-scenario=2-s0"]
  assert single.deps == () and single.overrides["model"] == "single"
  # A finetune without its Mix run in the grid gets the Mix run added before it.
  only = [r for r in runs if r.overrides["model"] == "finetune"]
  assert [j.run.name for j in grid.plan(only, str(tmp_path), {})] == ["mix-s0", "finetune-scenario=2-s0"]


def test_skip_resume_and_failure(tmp_path, launcher):
  runs = grids.build("alpha", seeds=[0])          # alpha 0.3 fails in the fake launcher
  jobs = grid.plan(runs, str(tmp_path / "runs"), {"data.name": "synthetic"})
  # A finished run (results.json) is skipped; a half-finished one (no results.json) runs again.
  done_dir = os.path.join(str(tmp_path / "runs"), "mscan-alpha=1.0-s0")
  os.makedirs(done_dir)
  open(os.path.join(done_dir, "results.json"), "w").write('{"auc": {}, "outputs": []}')
  half_dir = os.path.join(str(tmp_path / "runs"), "mscan-s0")
  os.makedirs(half_dir)
  open(os.path.join(half_dir, "checkpoint-marker"), "w").close()
  lines = []
  s = grid.run_jobs(jobs, launcher=launcher, num_jobs=1, echo=lines.append)
  assert sorted(s.done) == ["mscan-alpha=0.0-s0", "mscan-alpha=0.03-s0", "mscan-s0"]
  assert s.skipped == ["mscan-alpha=1.0-s0"]
  assert [n for n, _ in s.failed] == ["mscan-alpha=0.3-s0"]
  log = os.path.join(str(tmp_path / "runs"), "mscan-alpha=0.3-s0", "log.txt")
  assert log in s.failed[0][1] and "exit code 3" in s.failed[0][1]
  assert "boom: this run fails" in open(log).read()
  assert not s.ok and "FAILED mscan-alpha=0.3-s0" in s.format()
  assert len(lines) == 5 and lines[0].startswith("[1/5] skipped")
  assert _calls(done_dir) == []
  call = _calls(half_dir)[0].split()
  assert f"--workdir={half_dir}" in call and "--config.model=mscan" in call
  assert "--config.data.name=synthetic" in call and "--config.seed=0" in call
  info = json.load(open(os.path.join(half_dir, "run.json")))
  assert info["overrides"] == {"model": "mscan", "seed": 0}
  # Second pass: finished runs skipped, only the failed one is tried again.
  s2 = grid.run_jobs(jobs, launcher=launcher, num_jobs=1, echo=lambda _: None)
  assert len(s2.skipped) == 4 and [n for n, _ in s2.failed] == ["mscan-alpha=0.3-s0"]
  assert len(_calls(os.path.join(str(tmp_path / "runs"), "mscan-alpha=0.3-s0"))) == 2


def test_record_dir_gets_each_finished_runs_small_files_as_it_finishes(tmp_path, launcher):
  runs = grids.build("alpha", seeds=[0])          # alpha 0.3 fails in the fake launcher
  jobs = grid.plan(runs, str(tmp_path / "runs"), {"data.name": "synthetic"})
  done_dir = os.path.join(str(tmp_path / "runs"), "mscan-alpha=1.0-s0")   # finished before
  os.makedirs(done_dir)
  open(os.path.join(done_dir, "results.json"), "w").write('{"auc": {}, "outputs": []}')
  open(os.path.join(done_dir, "checkpoint-marker"), "w").close()
  record = tmp_path / "record"
  recorded = []

  def echo(line):                   # the record is written before the run's line is printed
    name = line.split()[2]               # "[k/N] state NAME ..."
    recorded.append((name, (record / "runs" / name / "results.json").exists()))
  grid.run_jobs(jobs, launcher=launcher, num_jobs=1, echo=echo, record_dir=str(record))
  assert dict(recorded) == {"mscan-alpha=1.0-s0": True, "mscan-alpha=0.0-s0": True,
                            "mscan-alpha=0.03-s0": True, "mscan-s0": True,
                            "mscan-alpha=0.3-s0": False}
  assert sorted(os.listdir(record / "runs" / "mscan-s0")) == ["results.json", "run.json"]
  assert not (record / "runs" / "mscan-alpha=1.0-s0" / "checkpoint-marker").exists()
  # A finished run whose results changed since (e.g. rerun by hand) is recorded again.
  open(os.path.join(done_dir, "results.json"), "w").write('{"auc": {"all": 0.6}, "outputs": []}')
  grid.run_jobs(jobs, launcher=launcher, num_jobs=1, echo=lambda _: None, record_dir=str(record))
  assert "0.6" in (record / "runs" / "mscan-alpha=1.0-s0" / "results.json").read_text()


def test_failed_dependency_fails_its_finetunes(tmp_path, launcher):
  mix = grids.Run("mix-s0", {"model": "fail", "seed": 0})      # the fake launcher fails it
  ft = grids.Run("finetune-scenario=1-s0", {"model": "finetune", "single.scenario": 1, "seed": 0})
  jobs = [grid.Job(mix, str(tmp_path / "mix-s0"), dict(mix.overrides)),
          grid.Job(ft, str(tmp_path / "ft"), {"model": "mix"}, deps=("mix-s0",))]
  s = grid.run_jobs(jobs, launcher=launcher, num_jobs=2, echo=lambda _: None)
  assert dict(s.failed)["finetune-scenario=1-s0"] == "dependency mix-s0 failed"
  assert not os.path.exists(tmp_path / "ft")


def test_parallel_jobs_run_at_the_same_time(tmp_path, launcher, monkeypatch):
  barrier = tmp_path / "barrier"
  barrier.mkdir()
  monkeypatch.setenv("FAKE_BARRIER", str(barrier))
  jobs = grid.plan(grids.build("c", seeds=[0, 1]), str(tmp_path / "runs"), {})
  s = grid.run_jobs(jobs, launcher=launcher, num_jobs=2, echo=lambda _: None)
  assert sorted(s.done) == ["mscan-s0", "mscan-s1"] and s.ok


def _table2_argv(tmp_path, launcher, *extra):
  """(argv, out, data): the table2 grid on an (empty) built-dataset folder with a fake launcher."""
  data = tmp_path / "built"
  data.mkdir(exist_ok=True)
  out = str(tmp_path / "out")
  argv = ["--grid=table2", "--dataset=aliccp", f"--data_path={data}", "--seeds=2",
          f"--out={out}", "--launcher=" + " ".join(launcher), *extra]
  return argv, out, data


def test_main_cli_and_settings_guard(tmp_path, launcher, capsys):
  argv, out, data = _table2_argv(tmp_path, launcher, "--set=train.num_epochs=2")
  assert grid.main(argv) == 0
  runs = grids.build("table2", seeds=[0, 1])          # 8 M-scan runs + 3 references x 2 seeds
  assert len(runs) == 14
  assert sorted(os.listdir(os.path.join(out, "runs"))) == sorted(r.name for r in runs)
  info = json.load(open(os.path.join(out, "grid.json")))
  assert info["dataset"] == "aliccp" and info["shared"]["train.num_epochs"] == 2
  assert info["shared"]["data.path"] == str(data)
  assert "14 done, 0 skipped" in capsys.readouterr().out
  assert grid.main(argv) == 0 and "0 done, 14 skipped" in capsys.readouterr().out
  record = tmp_path / "record"         # a record of an already finished grid
  assert grid.main(argv + [f"--record_dir={record}"]) == 0
  assert json.loads((record / "grid.json").read_text()) == info
  assert sorted(os.listdir(record / "runs")) == sorted(r.name for r in runs)
  # Other shared settings on the same folder are refused.
  assert grid.main(argv[:-1] + ["--set=train.num_epochs=3"]) == 2
  assert "train.num_epochs" in capsys.readouterr().err
  assert grid.main(argv[:-1] + ["--set=mscan.alpha=0.5"]) == 2
  capsys.readouterr()


@pytest.mark.parametrize("argv, message", [
    (["--set=train.clip_norm=-1.0"], "config.train.clip_norm must be a finite number > 0"),
    (["--set=train.nonexistent=1"], "not a field"),
    (["--jobs=0"], "flag --jobs=0"),
    (["--dataset=nope"], "--dataset='nope' is unknown"),
])
def test_cli_user_errors_exit_2_before_any_run(tmp_path, launcher, capsys, argv, message):
  out = str(tmp_path / "out")
  code = grid.main(["--grid=c", "--dataset=aliccp", f"--data_path={tmp_path}", "--seeds=1",
                    f"--out={out}", "--launcher=" + " ".join(launcher), *argv])
  err = capsys.readouterr().err
  assert code == 2 and err.startswith("error: ") and message in err, err
  assert not os.path.exists(os.path.join(out, "runs"))


def test_parse_set_types():
  assert grid.parse_set("train.num_epochs=3") == ("train.num_epochs", 3)
  assert grid.parse_set("mscan.c=2") == ("mscan.c", 2.0)
  assert grid.parse_set("mscan.mlp=(8, 4)") == ("mscan.mlp", (8, 4))
  assert grid.parse_set("train.progress=False") == ("train.progress", False)
  assert grid.parse_set("data.cache_dir=/x/y") == ("data.cache_dir", "/x/y")
  with pytest.raises(grid.GridError, match="takes a value of type int"):
    grid.parse_set("train.num_epochs=2.5")
  with pytest.raises(grid.GridError, match="not a field"):
    grid.parse_set("train.epochs=2")


def test_scenario_choice_from_the_test_split(tmp_path):
  (tmp_path / "splits").mkdir()
  (tmp_path / "log").mkdir()
  scen = np.array([1, 2, 2, 3, 3, 3, 4, 5, 5, 5, 5, 6, 6, 6], np.int32)[:, None]   # (E, 1)
  np.save(tmp_path / "log" / "scenario.npy", scen)
  np.save(tmp_path / "splits" / "test.npy", np.arange(1, 14, dtype=np.int64))   # row 0 not test
  counts = grid.count_test_samples(str(tmp_path))
  assert counts == {2: 2, 3: 3, 4: 1, 5: 4, 6: 3}
  assert grid.choose_scenarios(counts) == [3, 5, 6]            # 4, 3, 3 (tie: smaller id 3)
  assert grid.choose_scenarios({1: 5, 2: 1, 3: 9}) == [1, 2, 3]  # <= 4 scenarios: all


def test_one_real_tiny_run_then_skip_then_report(tmp_path, capsys):
  """The real launch.py on the tiny preset and tiny sizes: one M-scan run, resumed as skipped,
  and the report's c sweep over its saved y_m and y_s."""
  from experiments import report
  out = str(tmp_path / "out")
  argv = ["--grid=c", "--dataset=synthetic", "--preset=tiny", "--seeds=1", f"--out={out}",
          f"--cache_dir={tmp_path / 'cache'}", "--set=train.num_epochs=1"]
  assert grid.main(argv) == 0, open(os.path.join(out, "runs", "mscan-s0", "log.txt")).read()
  wd = os.path.join(out, "runs", "mscan-s0")
  config = json.load(open(os.path.join(wd, "config.json")))
  assert config["embed_dim"] == grids.SIZES["tiny"]["embed_dim"]
  assert config["data"]["preset"] == "tiny" and config["train"]["progress"] is False
  assert config["train"]["num_epochs"] == 1
  assert grid.main(argv) == 0 and "0 done, 1 skipped" in capsys.readouterr().out
  assert report.main([f"--out={out}"]) == 0
  rows = list(csv.DictReader(open(os.path.join(out, "figure5_c.csv"))))
  assert {float(r["c"]) for r in rows if r["metric"] == "auc"} >= set(grids.C_VALUES)
  assert os.path.exists(os.path.join(out, "figure5_c.png"))


def test_unfinished_results_are_rerun_with_a_message(tmp_path, launcher):
  """Only a results.json that parses, with every output it lists readable, marks a finished run:
  an empty one, one listing a missing or truncated predictions file, or an older one without
  its predictions is run again, and the message says why."""
  runs = grids.build("alpha", seeds=[0])
  runs_dir = str(tmp_path / "runs")
  jobs = grid.plan(runs, runs_dir, {})
  folders = {j.run.name: j.workdir for j in jobs}
  for wd in folders.values():
    os.makedirs(wd)
  open(os.path.join(folders["mscan-s0"], "results.json"), "w").close()            # empty
  with open(os.path.join(folders["mscan-alpha=0.0-s0"], "results.json"), "w") as f:
    json.dump({"auc": {}, "outputs": ["config.json", "predictions.parquet"]}, f)
  open(os.path.join(folders["mscan-alpha=0.0-s0"], "config.json"), "w").write("{}")
  open(os.path.join(folders["mscan-alpha=0.0-s0"], "predictions.parquet"), "wb").write(b"PAR1")
  with open(os.path.join(folders["mscan-alpha=0.03-s0"], "results.json"), "w") as f:
    json.dump({"auc": {}}, f)                                # older: no outputs list
  open(os.path.join(folders["mscan-alpha=0.03-s0"], "config.json"), "w").write("{}")
  with open(os.path.join(folders["mscan-alpha=1.0-s0"], "results.json"), "w") as f:
    json.dump({"auc": {}, "outputs": ["config.json"]}, f)    # finished
  open(os.path.join(folders["mscan-alpha=1.0-s0"], "config.json"), "w").write("{}")
  lines = []
  s = grid.run_jobs(jobs, launcher=launcher, num_jobs=1, echo=lines.append)
  assert s.skipped == ["mscan-alpha=1.0-s0"]
  assert sorted(s.done) == ["mscan-alpha=0.0-s0", "mscan-alpha=0.03-s0", "mscan-s0"]
  text = "\n".join(lines)
  assert "rerun mscan-s0: not finished: results.json is empty" in text
  assert "rerun mscan-alpha=0.0-s0: not finished: predictions.parquet cannot be read" in text
  assert "rerun mscan-alpha=0.03-s0: not finished: predictions.parquet is missing" in text


def _pid_alive(pid: int) -> bool:
  try:
    with open(f"/proc/{pid}/stat") as f:
      return f.read().rsplit(")", 1)[1].split()[0] != "Z"    # a zombie has exited
  except FileNotFoundError:
    return False


@pytest.mark.parametrize("how", ["SIGTERM", "SIGKILL"])
def test_killing_the_grid_kills_its_runs(tmp_path, launcher, how):
  """SIGTERM: the grid kills its children's process groups before it exits. SIGKILL (nothing
  can run in the grid): the child dies by the parent-death signal launch.py asks for."""
  import signal
  import subprocess
  import time
  root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  out = tmp_path / "out"
  env = dict(os.environ, PYTHONPATH=root, FAKE_SLEEP="1",
             FAKE_DIE_WITH_PARENT="1" if how == "SIGKILL" else "")
  data = tmp_path / "built"
  data.mkdir()
  proc = subprocess.Popen(
      [sys.executable, "-m", "experiments.run_grid", "--grid=c", "--dataset=aliccp",
       f"--data_path={data}", "--seeds=1", f"--out={out}",
       "--launcher=" + " ".join(launcher)],
      cwd=root, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
  pid_file = out / "runs" / "mscan-s0" / "pid"
  deadline = time.time() + 60
  while not pid_file.exists() and proc.poll() is None and time.time() < deadline:
    time.sleep(0.05)
  if not pid_file.exists():
    log = out / "runs" / "mscan-s0" / "log.txt"
    pytest.fail(f"the run never started: {proc.communicate()[0]!r}; "
                f"{log.read_text() if log.exists() else 'no log'}")
  time.sleep(0.1)
  child = int(pid_file.read_text())
  assert _pid_alive(child)
  proc.send_signal(getattr(signal, how))
  proc.wait(timeout=30)
  deadline = time.time() + 10
  while _pid_alive(child) and time.time() < deadline:
    time.sleep(0.05)
  alive = _pid_alive(child)
  if alive:
    os.kill(child, signal.SIGKILL)
  assert not alive, f"the run {child} outlived the grid killed by {how}"


def test_match_runs_a_slice_of_a_grid(tmp_path, launcher, capsys):
  argv, out, _ = _table2_argv(tmp_path, launcher, "--match=^mscan-sbe=False-s")
  assert grid.main(argv) == 0
  assert sorted(os.listdir(os.path.join(out, "runs"))) == ["mscan-sbe=False-s0",
                                                           "mscan-sbe=False-s1"]
  assert grid.main(argv[:-1] + ["--match=^nothing"]) == 2
  assert "selects no run" in capsys.readouterr().err


def test_out_of_memory_is_reported_as_oom_not_retried(tmp_path, launcher):
  """A run whose log says RESOURCE_EXHAUSTED is `oom` (with its log), its dependants fail, the
  other runs finish, and nothing is started twice in the call."""
  mix = grids.Run("mix-s0", {"model": "oom", "seed": 0})
  ft = grids.Run("finetune-scenario=1-s0", {"model": "finetune", "seed": 0})
  other = grids.Run("mscan-s0", {"model": "mscan", "seed": 0})
  jobs = [grid.Job(mix, str(tmp_path / "mix-s0"), dict(mix.overrides)),
          grid.Job(ft, str(tmp_path / "ft"), dict(ft.overrides), deps=("mix-s0",)),
          grid.Job(other, str(tmp_path / "mscan-s0"), dict(other.overrides))]
  lines = []
  s = grid.run_jobs(jobs, launcher=launcher, num_jobs=1, echo=lines.append)
  log = str(tmp_path / "mix-s0" / "log.txt")
  assert [n for n, _ in s.oom] == ["mix-s0"] and log in s.oom[0][1]
  assert s.failed == [("finetune-scenario=1-s0", "dependency mix-s0 failed")]
  assert s.done == ["mscan-s0"] and not s.ok
  assert any(line.startswith("[1/3] oom") for line in lines)
  assert "1 out of memory" in s.format() and f"OOM mix-s0: exit code 1; log {log}" in s.format()
  assert len(_calls(str(tmp_path / "mix-s0"))) == 1
  # An ordinary failure after an OOM in the same log is a failure: only this attempt's lines count.
  jobs[0] = grid.Job(grids.Run("mix-s0", {"model": "fail"}), jobs[0].workdir, {"model": "fail"})
  s2 = grid.run_jobs(jobs[:1], launcher=launcher, num_jobs=1, echo=lambda _: None)
  assert [n for n, _ in s2.failed] == ["mix-s0"] and not s2.oom


def test_devices_spread_the_runs_and_share_memory(tmp_path, launcher, monkeypatch):
  """Two devices, two runs at a time: the two runs that meet at the barrier run on different
  devices; four runs on one device with --jobs=2 get half of 0.9 each."""
  from experiments import placement
  barrier = tmp_path / "barrier"
  barrier.mkdir()
  monkeypatch.setenv("FAKE_BARRIER", str(barrier))
  jobs = grid.plan(grids.build("c", seeds=[0, 1]), str(tmp_path / "runs"), {})
  p = placement.make_placement(devices="0,1", devices_per_run=1, num_jobs=2, memory="auto",
                               environ={}, list_gpus=lambda: [])
  s = grid.run_jobs(jobs, launcher=launcher, num_jobs=2, echo=lambda _: None, placement=p)
  assert s.ok
  envs = {j.run.name: open(os.path.join(j.workdir, "env.txt")).read().strip() for j in jobs}
  assert sorted(envs.values()) == ["CUDA_VISIBLE_DEVICES=0", "CUDA_VISIBLE_DEVICES=1"]
  assert json.load(open(os.path.join(jobs[0].workdir, "run.json")))["env"] in (
      {"CUDA_VISIBLE_DEVICES": "0"}, {"CUDA_VISIBLE_DEVICES": "1"})
  monkeypatch.delenv("FAKE_BARRIER")
  jobs = grid.plan(grids.build("alpha", seeds=[0]), str(tmp_path / "one"), {})
  p = placement.make_placement(devices="3", devices_per_run=1, num_jobs=2, memory="auto",
                               environ={}, list_gpus=lambda: [])
  assert grid.run_jobs(jobs, launcher=launcher, num_jobs=2, echo=lambda _: None, placement=p).failed
  for j in jobs:
    assert open(os.path.join(j.workdir, "env.txt")).read().split() == [
        "CUDA_VISIBLE_DEVICES=3", "XLA_PYTHON_CLIENT_MEM_FRACTION=0.450"]


def test_cpu_host_devices_auto_changes_nothing(tmp_path, launcher, capsys, monkeypatch):
  """On a CPU host (no CUDA_VISIBLE_DEVICES, no GPU listed) --devices=auto and --gpu_memory set
  nothing in the children's environment."""
  from experiments import placement
  monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
  monkeypatch.setattr(placement, "nvidia_smi_gpus", lambda timeout=20.0: [])
  argv, out, _ = _table2_argv(tmp_path, launcher, "--match=^mscan-s", "--devices=auto",
                              "--jobs=2", "--gpu_memory=grow")
  assert grid.main(argv) == 0
  assert "no GPU found" in capsys.readouterr().out
  for name in ("mscan-s0", "mscan-s1"):
    assert open(os.path.join(out, "runs", name, "env.txt")).read() == "\n"
