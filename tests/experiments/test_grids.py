"""experiments.grids: the helpers, the grids' names, counts and overrides, the size presets."""

import pytest

from experiments import grids
from mscan_jax import config as config_lib
from mscan_jax import models


def test_axis_product_zipped():
  assert grids.axis("seed", range(2)) == [{"seed": 0}, {"seed": 1}]
  assert grids.product(grids.axis("a", [1, 2]), grids.axis("b", ["x", "y"])) == [
      {"a": 1, "b": "x"}, {"a": 1, "b": "y"}, {"a": 2, "b": "x"}, {"a": 2, "b": "y"}]
  assert grids.zipped(grids.axis("a", [1, 2]), grids.axis("b", [3, 4])) == [
      {"a": 1, "b": 3}, {"a": 2, "b": 4}]
  with pytest.raises(ValueError, match="different lengths"):
    grids.zipped(grids.axis("a", [1, 2]), grids.axis("b", [3]))
  with pytest.raises(ValueError, match="same key twice"):
    grids.product(grids.axis("a", [1]), grids.axis("a", [2]))


def test_names_drop_defaults_and_format_values():
  assert grids.run_name({"model": "mscan", "seed": 0}) == "mscan-s0"
  # Default-valued overrides vanish, so Table 2's full M-scan is Table 1's run.
  assert grids.run_name({"model": "mscan", "mscan.use_saca": True, "mscan.use_sbe": True,
                         "mscan.alpha": 0.1, "seed": 2}) == "mscan-s2"
  assert grids.run_name({"model": "mscan", "mscan.use_saca": False, "mscan.use_sbe": False,
                         "seed": 1}) == "mscan-saca=False-sbe=False-s1"
  assert grids.run_name({"model": "single", "single.scenario": 3, "seed": 0}) == "single-scenario=3-s0"
  assert grids.run_name({"model": "mscan", "train.num_epochs": 2, "seed": 0}) == \
      "mscan-train.num_epochs=2-s0"
  assert grids.format_value((2,)) == "(2,)" and grids.format_value(()) == "()"
  assert grids.format_value(False) == "False" and grids.format_value(0.3) == "0.3"
  # Strings in a tuple are quoted, so a list of column names parses back as a list.
  assert grids.format_value(("item_cat",)) == "('item_cat',)" and grids.format_value("a") == "a"
  with pytest.raises(KeyError, match="mscan.alfa"):
    grids.run_name({"model": "mscan", "mscan.alfa": 1.0, "seed": 0})


def test_table1_every_model_and_per_scenario_runs():
  runs = grids.build("table1", seeds=[0, 1], scenarios=[1, 3])
  names = [r.name for r in runs]
  assert len(names) == len(set(names))
  # The lists come from the registry: 8 multi-scenario models x 2 seeds, (single, finetune) x 2
  # scenarios x 2 seeds, and the 3 reference scorers x 2 seeds (no oracle without truth).
  table1 = models.names(table="table1")
  per = models.names(target_scenario=True)
  refs = models.names(kind="reference")
  assert (len(table1), len(per), len(refs)) == (10, 2, 3)
  assert len(runs) == 8 * 2 + 2 * 2 * 2 + 3 * 2
  assert {r.overrides["model"] for r in runs} == set(table1) | set(refs)
  assert "finetune-scenario=3-s1" in names and "ple-s0" in names and "mf-s1" in names
  ft = next(r for r in runs if r.name == "finetune-scenario=3-s1")
  assert ft.overrides == {"model": "finetune", "single.scenario": 3, "seed": 1}
  assert not any("single.scenario" in r.overrides for r in runs
                 if r.overrides["model"] not in per)
  with_truth = grids.build("table1", seeds=[0, 1], scenarios=[1, 3], with_truth=True)
  oracles = [r.name for r in with_truth if r.name.startswith("oracle")]
  assert oracles == ["oracle_click-s0", "oracle_like-s0"]       # no parameter: one seed
  with pytest.raises(ValueError, match="target scenarios"):
    grids.build("table1", seeds=[0], scenarios=[])


def test_table2_alpha_c_and_all():
  t2 = grids.build("table2", seeds=[0, 1])
  assert [r.name for r in t2] == [
      "mscan-s0", "mscan-s1", "mscan-sbe=False-s0", "mscan-sbe=False-s1",
      "mscan-saca=False-s0", "mscan-saca=False-s1", "mscan-saca=False-sbe=False-s0",
      "mscan-saca=False-sbe=False-s1", "popularity-s0", "popularity-s1", "logreg-s0",
      "logreg-s1", "mf-s0", "mf-s1"]
  assert t2[2].overrides == {"model": "mscan", "mscan.use_sbe": False, "seed": 0}
  alpha = grids.build("alpha", seeds=[0])
  assert [r.overrides.get("mscan.alpha", 0.1) for r in alpha] == list(grids.ALPHA_VALUES)
  assert "mscan-s0" in [r.name for r in alpha]                   # alpha 0.1 is the default
  assert [r.name for r in grids.build("c", seeds=[0, 1, 2])] == ["mscan-s0", "mscan-s1", "mscan-s2"]
  everything = grids.build("all", seeds=[0, 1, 2], scenarios=[1, 2, 3])
  n_alpha = len(grids.ALPHA_VALUES) - 1
  assert len(everything) == (8 * 3 + 2 * 3 * 3) + 3 * 3 + n_alpha * 3 + 3 * 3  # shared once
  # Data seeds are an axis like model seeds; data seed 0 is the default (not in the name).
  two = grids.build("c", seeds=[0], data_seeds=[0, 1])
  assert [r.name for r in two] == ["mscan-s0", "mscan-data=1-s0"]
  assert two[1].overrides == {"model": "mscan", "data.seed": 1, "seed": 0}
  with pytest.raises(ValueError, match="unknown grid"):
    grids.build("table3", seeds=[0])


def test_sizes_are_config_fields():
  tiny = grids.SIZES["tiny"]
  t = config_lib.get_tiny_config()
  assert tiny["embed_dim"] == t.embed_dim and tiny["mscan.mlp"] == tuple(t.mscan.mlp)
  assert "data.preset" not in tiny     # the data preset is the grid's --preset
  for size in grids.SIZES.values():
    for key in size:
      grids.default_value(key)          # raises on a key that is not a config field


def test_mechanisms_grid_moves_one_dial_at_a_time():
  from mscan_jax.data import synthetic
  runs = grids.build("mechanisms", seeds=[0], data_seeds=[0], baselines=("mix",))
  names = [r.name for r in runs]
  assert len(names) == len(set(names))
  dials = [{k: v for k, v in r.overrides.items() if k.startswith("data.synthetic.")} for r in runs]
  assert all(len(d) <= 1 for d in dials)                          # one dial moved at a time
  levels = {tuple(d.items()) for d in dials}
  assert len(levels) == 1 + 2 * len(synthetic.DIALS)              # default + placebo, strong
  assert (("data.synthetic.transfer", 0.0),) in levels
  per_level = len(grids.MECHANISM_VARIANTS) + len(grids.BEHAVIOUR_INPUTS) + 3   # + references
  assert len(runs) == len(levels) * per_level
  assert "mscan-transfer=0.0-s_in_m=False-s0" in names
  assert "mix-sees=cur+all+context-drift=0.0-s0" in names
  with pytest.raises(ValueError, match="unknown"):
    grids.build("mechanisms", seeds=[0], baselines=("dcn",))
