"""Population training: members equal their runs trained alone; folders; early stop; errors."""

import dataclasses
import json
import os
import subprocess
import sys

import numpy as np
import pyarrow.parquet as pq
import pytest

from mscan_jax import config as config_lib
from mscan_jax.training import population, rundir, train

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _tiny(tmp_path, **overrides):
  c = config_lib.get_tiny_config()
  c.data.cache_dir = str(tmp_path.parent / "data_cache")   # shared by the tests of this session
  c.train.max_steps = 12
  c.train.eval_every_steps = 3
  c.train.patience = 0          # stops at the first evaluation without gain
  for k, v in overrides.items():
    config_lib.set_field(c, k, v)
  return c


def _close(a: dict, b: dict, tol: float) -> None:
  assert a["best_step"] == b["best_step"]
  assert a["steps"] == b["steps"]
  for key in ("mean_per_scenario", "all"):
    assert abs(a["auc"][key] - b["auc"][key]) < tol, (key, a["auc"][key], b["auc"][key])
  assert abs(a["gauc"] - b["gauc"]) < tol
  assert abs(a["logloss"] - b["logloss"]) < tol
  assert abs(a["best_valid_auc"] - b["best_valid_auc"]) < tol


def test_members_equal_their_runs_alone(tmp_path):
  members = [_tiny(tmp_path, seed=0), _tiny(tmp_path, seed=1),
             _tiny(tmp_path, **{"seed": 2, "train.learning_rate": 3e-3, "mscan.alpha": 0.5,
                                "train.weight_decay": 0.0, "mscan.c": 2.0})]
  workdirs = [str(tmp_path / f"pop{i}") for i in range(3)]
  together = population.train_population(members, workdirs)
  for i, (c, res) in enumerate(zip(members, together)):
    alone = train.train_and_evaluate(c, str(tmp_path / f"alone{i}"))
    _close(res, alone, 2e-4)
    # Stopped by the same rule at the same step (loop.Run), for the same reason (here member 0
    # runs out of steps, members 1 and 2 stop early).
    assert (res["stop_reason"], res["best_epoch"]) == (alone["stop_reason"], alone["best_epoch"])
    assert res["population"]["size"] == 3 and res["population"]["member"] == i
    assert res["train_steps_timed"] == res["steps"] - 1     # all but the compiling step
    # The member's folder is a normal run folder: same files, same predictions (to rounding).
    w = workdirs[i]
    assert sorted(json.load(open(os.path.join(w, "results.json")))["outputs"]) == \
        sorted(alone["outputs"])
    assert rundir.unfinished_reason(w) is None
    p = pq.read_table(os.path.join(w, "predictions.parquet")).to_pydict()
    q = pq.read_table(os.path.join(tmp_path / f"alone{i}", "predictions.parquet")).to_pydict()
    np.testing.assert_array_equal(p["sample_id"], q["sample_id"])
    np.testing.assert_allclose(p["score"], q["score"], atol=2e-3)
    logged = [json.loads(line) for line in open(os.path.join(w, "metrics.jsonl"))]
    assert [r["step"] for r in logged if r["split"] == "valid"] == \
        [json.loads(line)["step"] for line in open(os.path.join(tmp_path / f"alone{i}",
                                                                "metrics.jsonl"))
         if json.loads(line)["split"] == "valid"]


def test_members_differing_in_shape_are_refused(tmp_path):
  with pytest.raises(population.PopulationError, match="embed_dim"):
    population.check_members([_tiny(tmp_path), _tiny(tmp_path, embed_dim=16)])
  with pytest.raises(population.PopulationError, match="one distinct run folder"):
    population.train_population([_tiny(tmp_path)] * 2, [str(tmp_path / "a")] * 2)


def test_member_datasets_may_differ_in_storage_not_in_what_the_model_sees():
  # Data seeds built at different times: one with int64 history indices (before int32 existed),
  # one with int32. The model never sees the indices, so they share a population.
  from mscan_jax.data.schema import Field, Schema
  a = Schema(user_fields=(Field("user_id", 20),), item_fields=(Field("item_id", 30),),
             scenario_fields=(Field("scenario_id", 4),), max_cur_len=5, max_all_len=8,
             name="seed0", index_dtype="int32")
  assert a.model_differences(dataclasses.replace(a, name="seed1", index_dtype="int64")) == []
  assert a.model_differences(dataclasses.replace(a, max_all_len=9, has_truth=True)) == [
      "has_truth", "max_all_len"]


def test_shape_key_ignores_member_keys_only(tmp_path):
  a = _tiny(tmp_path, seed=3, **{"data.seed": 1, "train.learning_rate": 0.01})
  assert population.shape_key(a) == population.shape_key(_tiny(tmp_path))
  assert population.shape_key(_tiny(tmp_path, **{"mscan.use_sbe": False})) != \
      population.shape_key(_tiny(tmp_path))


def test_command_line_spec_and_bad_spec(tmp_path):
  spec = [{"config": "tiny", "workdir": str(tmp_path / f"m{i}"),
           "overrides": {"seed": i, "data.cache_dir": str(tmp_path.parent / "data_cache"),
                         "train.max_steps": 4, "train.eval_every_steps": 2}}
          for i in range(2)]
  path = tmp_path / "spec.json"
  path.write_text(json.dumps(spec))
  env = {**os.environ, "PYTHONPATH": ROOT}
  out = subprocess.run([sys.executable, "-m", "mscan_jax.training.population", f"--spec={path}"],
                       capture_output=True, text=True, env=env, cwd=str(tmp_path))
  assert out.returncode == 0, out.stderr
  for i in range(2):
    assert json.load(open(tmp_path / f"m{i}" / "results.json"))["steps"] == 4
  bad = tmp_path / "bad.json"
  bad.write_text(json.dumps([{"workdir": "x", "overrides": {"no.such": 1}}]))
  out = subprocess.run([sys.executable, "-m", "mscan_jax.training.population", f"--spec={bad}"],
                       capture_output=True, text=True, env=env, cwd=str(tmp_path))
  assert out.returncode == 2
  assert "config.no.such is not a config field" in out.stderr
  assert "Traceback" not in out.stderr


@pytest.mark.parametrize("member, message", [
    ({"workdir": "x", "overrides": ["seed", 1]}, r"member 1: \"overrides\" must be an object"),
    ({"workdir": 3}, r"member 1: \"workdir\" must be a folder name \(a non-empty string\), got 3"),
    ({"workdir": "x", "overrides": {"model": "finetune"}},
     r"member 1: config.model='finetune' needs a target scenario"),
])
def test_a_bad_member_spec_names_the_member_and_field(tmp_path, member, message):
  path = tmp_path / "spec.json"
  path.write_text(json.dumps([{"workdir": "ok", "config": "tiny"}, member]))
  with pytest.raises(population.PopulationError, match=f"^{path}: {message}"):
    population.load_spec(str(path))
