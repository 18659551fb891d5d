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
