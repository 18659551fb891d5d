"""Equal tuning (experiments.tuning, experiments.tune): rows, selection, the table's use by the
grid runner and launch.py. No training: the sweep's folder is written by hand."""

import json
import os
import shutil
import sys

import pytest

from experiments import grids, tune, tuning
from experiments import run_grid as grid
from mscan_jax import config as config_lib

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture
def tuned_dir(tmp_path, monkeypatch):
  """An empty experiments/tuned/ of the test's own."""
  path = tmp_path / "tuned"
  monkeypatch.setattr(tuning, "TUNED_DIR", str(path))
  return path


def _write_table(tuned_dir, key, size, rows):
  tuning.write_table({"dataset": key, "size": size, "rows": {
      row: {"settings": settings} for row, settings in rows.items()}},
      tuning.table_path(key, size))


def test_row_key_keeps_model_and_switches_and_drops_seeds_dials_and_tuned_keys():
  assert tuning.row_key({"model": "mix", "seed": 2, "data.seed": 1}) == "mix"
  assert tuning.row_key({"model": "mscan", "mscan.use_saca": False, "mscan.use_sbe": False,
                         "train.learning_rate": 0.01, "data.synthetic.exposure_bias": 0.0}
                        ) == "mscan-saca=False-sbe=False"
  assert tuning.row_key({"model": "star", "baseline.behaviours": "cur+all"}) == "star-sees=cur+all"
  assert tuning.row_key({"model": "single", "single.scenario": 2}) == "single-scenario=2"
  # a size setting is not a switch: the same row
  assert tuning.row_key({"model": "mix", "embed_dim": 16}) == "mix"


def _results(score, reason="early_stopping"):
  return {"best_valid_auc": score, "stop_reason": reason, "best_epoch": 3.0}


def test_select_takes_the_best_validation_score_ties_to_the_smaller_rate():
  lr = "train.learning_rate"
  row = tuning.select([({lr: 0.001}, _results(0.60)), ({lr: 0.003}, _results(0.65)),
                       ({lr: 0.01}, _results(0.65))])
  assert row["settings"] == {lr: 0.003} and row["valid"] == 0.65 and row["converged"]
  assert row["trials"] == {"0.001": 0.60, "0.003": 0.65, "0.01": 0.65}


def test_a_row_with_a_trial_not_finished_chooses_nothing_and_a_winner_may_not_converge():
  lr = "train.learning_rate"
  row = tuning.select([({lr: 0.001}, None), ({lr: 0.003}, _results(0.61))])
  assert row["incomplete"] and row["settings"] == {} and row["trials"]["0.001"] is None
  assert row["stop_reasons"]["0.001"] == "unfinished"
  row = tuning.select([({lr: 0.001}, _results(0.6)), ({lr: 0.003}, _results(0.61, "max_steps"))])
  assert row["settings"] == {lr: 0.003} and not row["converged"]


def test_a_partial_sweep_adds_its_rows_and_a_grown_space_undoes_the_old_choices():
  two, three = {"1": 0.6, "2": 0.7}, {"1": 0.6, "2": 0.7, "3": None}
  old = {"rows": {"mix": {"settings": {"x": 1}, "incomplete": False, "trials": two},
                  "star": {"settings": {"x": 2}, "incomplete": False, "trials": two},
                  "ple": {"settings": {"x": 2}, "incomplete": False, "trials": two},
                  "m2m": {"settings": {"x": 2}, "incomplete": False, "trials": two}}}
  new = {"rows": {"mix": {"settings": {}, "incomplete": True, "trials": two},
                  "star": {"settings": {"x": 3}, "incomplete": False, "trials": two},
                  "mmoe": {"settings": {}, "incomplete": True, "trials": two},
                  "ple": {"settings": {}, "incomplete": True, "trials": three}}}
  rows = tuning.merge_tables(old, new)["rows"]
  assert rows["mix"]["settings"] == {"x": 1} and rows["star"]["settings"] == {"x": 3}
  assert rows["mmoe"]["incomplete"] and rows["ple"]["incomplete"]       # the space grew
  assert rows["m2m"]["settings"] == {"x": 2}                             # not in this sweep


def test_settings_for_a_dataset_or_row_without_a_table_is_empty(tuned_dir):
  assert tuning.settings_for("synthetic-default", "study", {"model": "mix"}) == {}
  _write_table(tuned_dir, "synthetic-default", "study", {"mix": {"train.learning_rate": 0.003}})
  assert tuning.settings_for("synthetic-default", "study", {"model": "mix", "seed": 1}) == {
      "train.learning_rate": 0.003}
  assert tuning.settings_for("synthetic-default", "study", {"model": "star"}) == {}
  assert tuning.settings_for("synthetic-large", "study", {"model": "mix"}) == {}


def test_the_tuning_grid_is_every_study_row_times_its_space_at_seed_0():
  runs = grids.build("tuning", seeds=range(3), data_seeds=range(2), scenarios=[1, 2])
  rows = grids.study_rows([1, 2])
  assert len(runs) == sum(len(next(iter(grids.tuning_space(r).values()))) for r in rows)
  assert all(r.overrides["seed"] == 0 and r.overrides.get("data.seed", 0) == 0 for r in runs)
  assert {tuning.row_key(r.overrides) for r in runs} == {tuning.row_key(r) for r in rows}
  ref = [r for r in runs if r.overrides["model"] == "mf"]
  assert sorted(r.overrides.get("reference.learning_rate", 0.01) for r in ref) == list(
      grids.REFERENCE_TUNING_SPACE["reference.learning_rate"])
  ladder = [tuning.row_key(o) for _, o in grids.LADDER]
  assert [tuning.row_key(r) for r in rows][:len(ladder)] == ladder     # the ladder first


def _launch_lines(capsys, tmp_path, *extra):
  code = grid.main(["--grid=table2", "--dataset=synthetic", "--preset=tiny", "--seeds=1",
                    f"--out={tmp_path / 'out'}", f"--cache_dir={tmp_path / 'cache'}",
                    "--dry_run", *extra])
  assert code == 0
  return [line for line in capsys.readouterr().out.splitlines() if "launch.py" in line]


def test_the_grid_gives_each_run_its_rows_tuned_setting_and_set_overrides_it(
    tuned_dir, tmp_path, capsys):
  _write_table(tuned_dir, "synthetic-tiny", "tiny",
               {"mscan": {"train.learning_rate": 0.003},
                "mscan-saca=False": {"train.learning_rate": 0.01}})
  lines = _launch_lines(capsys, tmp_path)
  full = [l for l in lines if "runs/mscan-s0 " in l or l.endswith("runs/mscan-s0")]
  no_saca = [l for l in lines if "mscan-saca=False-s0" in l and "sbe=False" not in l]
  assert full and "--config.train.learning_rate=0.003" in full[0]
  assert no_saca and "--config.train.learning_rate=0.01" in no_saca[0]
  untuned = [l for l in lines if "sbe=False" in l]
  assert untuned and all("train.learning_rate" not in l for l in untuned)
  assert all("--config.train.tuned=False" in l for l in lines)   # children never look again
  lines = _launch_lines(capsys, tmp_path, "--set=train.learning_rate=0.02")
  assert all("--config.train.learning_rate=0.02" in l for l in lines)
  lines = _launch_lines(capsys, tmp_path, "--tuned=false")
  assert all("train.learning_rate" not in l for l in lines)


def test_a_row_whose_sweep_is_unfinished_stops_the_grid_before_any_run(tuned_dir, tmp_path,
                                                                       capsys):
  """A table row that chose nothing yet would train with the shared settings beside tuned
  neighbours: the grid refuses it (exit code 2, the row named), unless --tuned=false."""
  tuning.write_table({"dataset": "synthetic-tiny", "size": "tiny", "rows": {
      "mscan": {"settings": {"train.learning_rate": 0.003}, "incomplete": False},
      "mscan-saca=False": {"settings": {}, "incomplete": True}}},
      tuning.table_path("synthetic-tiny", "tiny"))
  args = ["--grid=table2", "--dataset=synthetic", "--preset=tiny", "--seeds=1",
          f"--out={tmp_path / 'out'}", f"--cache_dir={tmp_path / 'cache'}", "--dry_run"]
  assert grid.main(args) == 2
  err = capsys.readouterr().err
  assert err.startswith("error:") and "mscan-saca=False" in err and "unfinished" in err
  assert grid.main([*args, "--tuned=false"]) == 0
  assert tuning.row_state(None, {"model": "mscan"}) == "absent"


def test_a_folder_started_with_another_tuning_is_refused(tmp_path):
  info = {"dataset": "synthetic-tiny", "size": "tiny", "shared": {}, "grids": ["table2"],
          "tuning": "tuned/synthetic-tiny@tiny.json@0123456789ab"}
  grid.check_or_write_grid_info(str(tmp_path), info)
  grid.check_or_write_grid_info(str(tmp_path), info)          # the same: fine
  with pytest.raises(grid.GridError, match="another tuning"):
    grid.check_or_write_grid_info(str(tmp_path), {**info, "tuning": "none"})


def test_launch_applies_the_table_to_the_keys_its_command_line_does_not_give(tuned_dir):
  sys.path.insert(0, ROOT)
  try:
    import launch
  finally:
    sys.path.remove(ROOT)
  _write_table(tuned_dir, "synthetic-default", "default",
               {"mscan": {"train.learning_rate": 0.003}})
  config = config_lib.get_config()
  line = launch.apply_tuning(config, ["launch.py"])
  assert config.train.learning_rate == 0.003 and "0.003" in line
  config = config_lib.get_config()
  config.train.learning_rate = 0.02
  line = launch.apply_tuning(config, ["launch.py", "--config.train.learning_rate=0.02"])
  assert config.train.learning_rate == 0.02 and "from the command line" in line
  config = config_lib.get_config()
  config.model = "star"
  assert "no tuned setting" in launch.apply_tuning(config, ["launch.py"])
  assert config.train.learning_rate == 1e-3
  config = config_lib.get_config()
  config.train.tuned = False
  launch.apply_tuning(config, ["launch.py"])
  assert config.train.learning_rate == 1e-3


def _fake_trial(runs_dir, name, lr, score, reason="early_stopping", finished=True):
  config = config_lib.get_config()
  config.model = "mix"
  config.train.learning_rate = lr
  workdir = runs_dir / name
  workdir.mkdir(parents=True)
  (workdir / "config.json").write_text(config_lib.to_json(config))
  if finished:
    (workdir / "results.json").write_text(json.dumps(
        {"outputs": ["config.json"], **_results(score, reason)}))


LRS = grids.TUNING_SPACE["train.learning_rate"]


def _fake_sweep(out, scores, unfinished=()):
  """Trials of Mix, one per learning rate of the space, with these validation scores."""
  for lr, score in zip(LRS, scores):
    name = grids.make_runs([{"model": "mix", "train.learning_rate": lr, "seed": 0}])[0].name
    _fake_trial(out / "runs", name, lr, score, finished=lr not in unfinished)
  (out / "grid.json").write_text(json.dumps(
      {"dataset": "synthetic-default", "size": "study",
       "shared": {"data.name": "synthetic", "data.preset": "default"}}))


def test_the_command_selects_from_a_finished_sweep_and_writes_the_table(tuned_dir, tmp_path,
                                                                        capsys):
  out = tmp_path / "sweep"
  scores = [0.60 + 0.02 * i for i in range(len(LRS) - 1)] + [0.0]
  _fake_sweep(out, scores, unfinished=(LRS[-1],))
  assert tune.main([f"--out={out}", "--select_only"]) == 0
  table = tuning.load_table("synthetic-default", "study")
  assert table["rows"]["mix"]["incomplete"]            # the last rate has not finished: no choice
  assert tuning.settings_for("synthetic-default", "study", {"model": "mix"}) == {}
  shutil.rmtree(out)
  _fake_sweep(out, scores[:-1] + [scores[-2]])          # finished; ties to the smaller rate
  assert tune.main([f"--out={out}", "--select_only"]) == 0
  table = tuning.load_table("synthetic-default", "study")
  row = table["rows"]["mix"]
  assert row["settings"] == {"train.learning_rate": LRS[-2]} and not row["incomplete"]
  assert row["trials"][f"{LRS[-1]:g}"] == scores[-2]
  # the command that regenerates it: the sweep (resumable; its finished runs are only re-read)
  assert table["command"] == f"python -m experiments.tune --out={out}"
  assert "mix" in capsys.readouterr().out
  assert tune.main(["--select_only"]) == 2                    # no --out: one error line


def test_a_folder_reads_the_table_it_was_tuned_by_and_refuses_a_changed_one(tuned_dir):
  _write_table(tuned_dir, "synthetic-default", "study", {"mix": {"train.learning_rate": 0.003}})
  used = tuning.table_id("synthetic-default", "study")
  assert used.startswith("tuned/synthetic-default@study.json@")
  assert tuning.row_settings(tuning.table_of_id(used), {"model": "mix"}) == {
      "train.learning_rate": 0.003}
  assert tuning.table_of_id("none") is None
  _write_table(tuned_dir, "synthetic-default", "study", {"mix": {"train.learning_rate": 0.01}})
  with pytest.raises(tuning.TuningError, match="changed since the grid used it"):
    tuning.table_of_id(used)


def test_a_record_of_the_sweeps_small_files_selects_the_same_table(tuned_dir, tmp_path):
  out, record = tmp_path / "sweep", tmp_path / "record"
  _fake_sweep(out, [0.60, 0.66] + [0.64] * (len(LRS) - 2))
  for run in (out / "runs").iterdir():
    (run / "predictions.parquet").write_bytes(b"large")
  assert tune.main([f"--out={out}", "--select_only", f"--record_dir={record}"]) == 0
  first = tuning.load_table("synthetic-default", "study")["rows"]["mix"]
  assert not (record / "runs" / "mix-s0" / "predictions.parquet").exists()
  assert (record / "runs" / "mix-s0" / "results.json").exists()
  os.remove(tuning.table_path("synthetic-default", "study"))
  assert tune.main([f"--out={record}", "--select_only"]) == 0
  again = tuning.load_table("synthetic-default", "study")["rows"]["mix"]
  assert again["settings"] == first["settings"] == {"train.learning_rate": LRS[1]}
  assert again["trials"] == first["trials"]
