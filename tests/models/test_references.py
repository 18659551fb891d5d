"""Reference scorers and oracles (mscan_jax/models/references.py): what each reads, and that on
the tiny synthetic preset popularity beats a constant and the oracle beats popularity."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mscan_jax import config as config_lib
from mscan_jax import models
from mscan_jax.data.schema import Field, Schema, dummy_batch
from mscan_jax.training import train

TRUTH = Schema(user_fields=(Field("user_id", 20),), item_fields=(Field("item_id", 30),),
               scenario_fields=(Field("scenario_id", 4),), max_cur_len=3, max_all_len=4,
               has_truth=True, has_exam=True)


def _apply(name, batch, schema=TRUTH):
  c = config_lib.get_config()
  c.model = name
  c.reference.dim = 3
  model = models.build_model(c, schema)
  variables = model.init(jax.random.key(0), batch, train=False)
  return model, variables, model.apply(variables, batch, train=False)["y_m"]


def test_oracles_score_by_the_recorded_truth():
  batch = {k: jnp.asarray(v) for k, v in dummy_batch(TRUTH, 16).items()}
  _, variables, like = _apply("oracle_like", batch)
  _, _, click = _apply("oracle_click", batch)
  assert not variables.get("params")                       # nothing to train
  np.testing.assert_allclose(jax.nn.sigmoid(like), batch["true_prob"], rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(jax.nn.sigmoid(click), batch["true_prob"] * batch["true_exam"],
                             rtol=1e-4, atol=1e-5)
  plain = Schema(TRUTH.user_fields, TRUTH.item_fields, TRUTH.scenario_fields, 3, 4)
  c = config_lib.get_config()
  c.model = "oracle_like"
  with pytest.raises(ValueError, match="recorded truth"):
    models.build_model(c, plain)


def test_popularity_reads_the_item_alone_and_mf_the_pair():
  batch = {k: jnp.asarray(v) for k, v in dummy_batch(TRUTH, 16).items()}
  for name, reads in (("popularity", {"item"}), ("logreg", {"user", "item", "scenario"}),
                      ("mf", {"user", "item", "scenario"})):
    model, variables, _ = _apply(name, batch)
    # Random parameters (the biases start at zero), then change one input group at a time.
    params = jax.tree.map(lambda x: jax.random.normal(jax.random.key(1), x.shape),
                          variables["params"])
    y = model.apply({"params": params}, batch, train=False)["y_m"]
    for key in ("user", "item", "scenario", "cur_seq", "all_seq"):
      other = dict(batch, **{key: jnp.roll(batch[key], 1, axis=0)})
      changed = not np.allclose(model.apply({"params": params}, other, train=False)["y_m"], y)
      assert changed == (key in reads), (name, key)


def _run(tmp_path, name):
  c = config_lib.get_tiny_config()
  c.model = name
  c.data.cache_dir = str(tmp_path / "cache")
  c.reference.learning_rate = 0.05       # references train with config.reference.*
  c.reference.num_epochs = 3
  return train.run(c, str(tmp_path / name))


def test_references_on_the_tiny_preset(tmp_path):
  pop = _run(tmp_path, "popularity")
  oracle = _run(tmp_path, "oracle_click")
  assert oracle["steps"] == 0                                # scored, never trained
  saved = json.loads((tmp_path / "popularity" / "config.json").read_text())
  assert (saved["train"]["learning_rate"], saved["train"]["num_epochs"]) == (0.05, 3)
  # A constant scores 0.5 everywhere; the item's click propensity does better on clicks, and
  # the true click probability better still.
  assert pop["auc"]["all"] > 0.52, pop["auc"]
  assert oracle["auc"]["all"] > pop["auc"]["all"] + 0.05
  assert oracle["auc"]["mean_per_scenario"] > pop["auc"]["mean_per_scenario"]


def test_reference_table_checks_the_targets_by_hand(tmp_path):
  from mscan_jax.training import references

  def res(model, per, seed=0):
    return {"model": model, "seed": seed, "n_per_scenario": {"1": 2500, "2": 1900},
            "auc": {"per_scenario": {"1": per[0], "2": per[1]},
                    "mean_per_scenario": (per[0] + per[1]) / 2}}

  runs = {"popularity": [(0.55, 0.56), (0.56, 0.55)], "logreg": [(0.57, 0.58), (0.58, 0.57)],
          "mf": [(0.62, 0.62), (0.61, 0.60)], "oracle_click": [(0.80, 0.72)],
          "oracle_like": [(0.79, 0.70)]}
  for model, pers in runs.items():
    for seed, per in enumerate(pers):
      d = tmp_path / f"{model}-s{seed}"
      d.mkdir()
      (d / "results.json").write_text(json.dumps(res(model, per, seed)))
  table = references.table_from_runs(str(tmp_path))
  c = table.checks()
  # MF - popularity per scenario: (0.615 - 0.555, 0.61 - 0.555) = (0.06, 0.055).
  assert c["mf_minus_popularity"] == pytest.approx({"1": 0.06, "2": 0.055})
  # Oracle - popularity: 0.80 - 0.555 and 0.72 - 0.555 = 0.165.
  assert c["oracle_minus_popularity"] == pytest.approx({"1": 0.245, "2": 0.165})
  assert c["ok"]["oracle_minus_popularity"] and c["ok"]["mf_minus_popularity"]
  assert c["min_test_per_scenario"] == 1900 and not c["ok"]["min_test_per_scenario"]
  # Each run's mean AUC: popularity 0.555 twice (std 0); MF 0.62 and 0.605.
  assert c["std_of_mean_auc"]["popularity"] == pytest.approx(0.0)
  assert c["std_of_mean_auc"]["mf"] == pytest.approx(np.std([0.62, 0.605], ddof=1))
  assert "Targets of a measuring instrument" in references.format_table(table)
