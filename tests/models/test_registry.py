"""The registry is the one home of what the code knows about a model: a throw-away model,
written here as a new module would be and registered with one entry, is tested, trained by the
entry point's `train.run`, run by the grids and titled, with no other file touched."""

import flax.linen as nn
import jax.numpy as jnp
import pytest

from experiments import grids
from experiments import run_grid
from mscan_jax import config as config_lib
from mscan_jax import models
from mscan_jax.models import inputs
from mscan_jax.training import train

from tests.models import test_baselines as tb


# ---- the "new file": a baseline over the shared inputs, one linear layer.
class Linear(nn.Module):
  schema: object
  embed_dim: int = 8
  behaviours: str = "cur"
  dtype: object = jnp.float32

  @nn.compact
  def __call__(self, batch: dict, *, train: bool) -> dict:
    del train
    x = inputs.BaselineInputs(self.schema, self.embed_dim, self.behaviours, dtype=self.dtype,
                              name="inputs")(batch)["x"]
    return {"y_m": nn.Dense(1)(x)[:, 0].astype(jnp.float32)}


def linear_from_config(config, schema):
  return inputs.build(Linear, config, schema, {}, ())


# ---- the one registry entry.
SPEC = models.ModelSpec(linear_from_config, "Linear (throw-away)", "u, i, s + DIN(S_u)",
                        "a linear model over the shared inputs", tables=("table1",))


@pytest.fixture
def linear():
  with models.registered("throwaway", SPEC):
    yield "throwaway"


def test_a_registered_model_is_tested_trained_gridded_and_titled(linear, tmp_path):
  # Tested: the checks every registered network gets (test_baselines parametrises over them).
  r = tb.run_model(tb.build(linear))
  tb.check_shapes_gradients_and_training(r)
  tb.check_routing(r)
  # Trained by the entry point's trainer, results named after the model asked for.
  c = config_lib.get_tiny_config()
  c.model = linear
  c.data.cache_dir = str(tmp_path / "cache")
  c.train.num_epochs = 1
  results = train.run(c, str(tmp_path / "run"))
  assert results["model"] == linear and 0.0 <= results["auc"]["all"] <= 1.0
  # Run by the grids: a Table 1 column, one run per seed, planned as a job of its own.
  runs = grids.build("table1", seeds=[0, 1], scenarios=[1])
  assert {"throwaway-s0", "throwaway-s1"} <= {r.name for r in runs}
  jobs = run_grid.plan(runs, str(tmp_path / "grid"), {})
  assert {"throwaway-s0", "throwaway-s1"} <= {j.run.name for j in jobs}
  # Titled: the display title comes from its spec.
  assert models.title(linear) == "Linear (throw-away)"
  assert linear in models.names(table="table1") and linear in config_lib_valid_models()
  assert linear not in models.names()[:-1]                   # appended to the display order


def config_lib_valid_models():
  c = config_lib.get_config()
  c.model = "throwaway"
  config_lib.validate(c, models.model_names())                # no ConfigError
  return models.model_names()


def test_registering_twice_or_a_bad_kind_is_refused(linear):
  with pytest.raises(ValueError, match="already registered"):
    models.register(linear, SPEC)
  with pytest.raises(ValueError, match="kind"):
    models.ModelSpec(linear_from_config, "x", "y", kind="baseline")
  with pytest.raises(ValueError, match="tables"):
    models.ModelSpec(linear_from_config, "x", "y", tables=("table9",))
