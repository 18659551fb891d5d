"""The dataset registry's reading of `config.data` (mscan_jax.data.datasets): column lists as
the command line writes them, truth columns of a user's log, the checks of the data section."""

import dataclasses
import os
import sys

import numpy as np
import pytest

from mscan_jax import config as config_lib
from mscan_jax.data import datasets
from mscan_jax.data import log as log_lib
from mscan_jax.data.schema import BuiltDataset
from mscan_jax.errors import ConfigError

CONFIG_FILE = os.path.join(os.path.dirname(os.path.abspath(config_lib.__file__)), "config.py")


def parse_flags(monkeypatch, *overrides):
  """The config exactly as launch.py and prepare read it from their command line."""
  from absl import flags
  from ml_collections import config_flags
  argv = ["prog", *overrides]
  monkeypatch.setattr(sys, "argv", argv)       # override flags are declared from sys.argv
  values = flags.FlagValues()
  config_flags.DEFINE_config_file("config", CONFIG_FILE, flag_values=values)
  values(argv)
  return values.config


@pytest.mark.parametrize("text", ["age,gender", "(age,gender)", "('age','gender')",
                                  '["age", "gender"]', "(age, gender,)"])
def test_a_column_list_from_the_command_line_is_a_list(monkeypatch, text):
  config = parse_flags(monkeypatch, f"--config.data.columns.user_extra={text}",
                       "--config.data.name=log", "--config.data.path=x.csv")
  config_lib.validate(config)
  assert config.data.columns.user_extra == ("age", "gender")
  assert datasets.log_columns(config.data).user_extra == ("age", "gender")


@pytest.mark.parametrize("text", ["()", "", "[]"])
def test_an_empty_column_list_is_no_column(monkeypatch, text):
  config = parse_flags(monkeypatch, f"--config.data.columns.item_extra={text}")
  config_lib.validate(config)
  assert config.data.columns.item_extra == ()


@pytest.mark.parametrize("value", [("(age,,gender)",), ("('age,gender)",), ("((age),gender)",),
                                   (1, 2)])
def test_an_unreadable_column_list_is_refused_naming_the_field(value):
  # Values as the flag parser leaves them (it refuses some spellings itself, naming the flag).
  config = config_lib.get_config()
  config.data.columns.scenario_extra = value
  with pytest.raises(ConfigError, match=r"^config\.data\.columns\.scenario_extra="):
    config_lib.validate(config)


def test_a_missing_required_column_and_a_column_mapped_twice_are_refused():
  config = config_lib.get_config()
  config.data.columns.item = ""
  with pytest.raises(ConfigError, match=r"config.data.columns.item is required"):
    config_lib.validate(config)
  config = config_lib.get_config()
  config.data.name, config.data.path = "log", "x.csv"
  config.data.columns.user_extra = ("item_id",)
  with pytest.raises(ConfigError, match=r"config.data.columns: .*'item_id'.* mapped more than once"):
    config_lib.validate(config)


def write_truth_log(path, n=60, exam=False) -> str:
  rng = np.random.default_rng(0)
  head = "u,i,s,y,t,like,p" + (",e" if exam else "")
  lines = [head]
  for t in range(n):
    p = rng.random()
    like = int(p > 0.5)
    row = f"{t % 3},{t % 5},{t // 3 % 2},{int(t % 4 == 0)},{t},{like},{p:.4f}"
    lines.append(row + (f",{rng.random():.4f}" if exam else ""))
  path.write_text("\n".join(lines) + "\n")
  return str(path)


def truth_config(path: str, tmp_path, **columns):
  config = config_lib.get_config()
  config.data.name, config.data.path = "log", path
  config.data.cache_dir = str(tmp_path / "cache")
  for key, value in dict(user="u", item="i", scenario="s", label="y", time="t", **columns).items():
    config.data.columns[key] = value
  return config


def test_truth_columns_of_a_log_map_from_the_config(tmp_path):
  path = write_truth_log(tmp_path / "sim.csv")
  config = truth_config(path, tmp_path, true_like="like", true_prob="p")
  config_lib.validate(config)
  ds = datasets.open_dataset(config.data)
  assert ds.schema.has_truth
  batch = ds.gather(np.asarray(ds.splits["test"]))
  # true_like is the recorded label of each row (sample_id = the file's data row).
  expected = (np.array([float(line.split(",")[6]) for line in
                        open(path).read().splitlines()[1:]]) > 0.5).astype(np.float32)
  np.testing.assert_array_equal(batch["true_like"], expected[batch["sample_id"]])
  assert "true_interest_rate" in ds.stats
  # Without the mapping the same file has no truth.
  config = truth_config(path, tmp_path)
  assert not datasets.open_dataset(config.data).schema.has_truth


def test_true_exam_is_read_where_the_log_loader_knows_it(tmp_path):
  path = write_truth_log(tmp_path / "sim.csv", exam=True)
  config = truth_config(path, tmp_path, true_like="like", true_prob="p", true_exam="e")
  if "true_exam" in {f.name for f in dataclasses.fields(log_lib.LogColumns)}:
    assert datasets.log_columns(config.data).true_exam == "e"
    assert "true_exam" in datasets.open_dataset(config.data).log
  else:
    with pytest.raises(ConfigError, match=r"config.data.columns.true_exam='e': .* no such column"):
      datasets.log_columns(config.data)
  config.data.columns.true_exam = ""                  # "" = absent, on any version
  assert datasets.log_columns(config.data).true_like == "like"


def test_label_of_a_log_follows_its_file_and_mapping_and_names_the_built_dataset(tmp_path):
  (tmp_path / "a").mkdir()
  (tmp_path / "b").mkdir()
  a = truth_config(write_truth_log(tmp_path / "a" / "sim.csv"), tmp_path)
  b = truth_config(write_truth_log(tmp_path / "b" / "sim.csv"), tmp_path)
  assert datasets.label(a.data) != datasets.label(b.data)
  assert datasets.label(a.data).startswith("log-sim-")
  # The lists' spelling does not matter: one mapping, one name.
  c = truth_config(a.data.path, tmp_path, item_extra=("(like)",))
  d = truth_config(a.data.path, tmp_path, item_extra=("like",))
  assert datasets.label(c.data) == datasets.label(d.data) != datasets.label(a.data)
  for config in (a, b):
    assert BuiltDataset(datasets.built_path(config.data)).schema.name == datasets.label(config.data)
