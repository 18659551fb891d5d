"""Mixed precision: `config.dtype="bfloat16"` computes the activations in bfloat16
while the parameters, the optimizer state, the logits and the loss stay float32."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from mscan_jax.config import get_tiny_config
from mscan_jax.data.schema import Field, Schema, dummy_batch
from mscan_jax.models import build_model
from mscan_jax.training import steps

SCHEMA = Schema(
    user_fields=(Field("user_id", 30), Field("segment", 5)),
    item_fields=(Field("item_id", 40), Field("category", 6)),
    scenario_fields=(Field("scenario_id", 4),),
    max_cur_len=4, max_all_len=6, name="precision")


def _dtypes(tree) -> set:
  return {str(x.dtype) for x in jax.tree.leaves(tree)}


def test_bfloat16_activations_float32_parameters_and_loss():
  config = get_tiny_config()
  config.dtype = "bfloat16"
  config.train.learning_rate = 1e-2                   # fit one batch in a few steps
  config.mscan.dropout = 0.0
  model = build_model(config, SCHEMA)
  params = steps.init_params(model, SCHEMA, seed=0)
  batch = {k: jnp.asarray(v) for k, v in dummy_batch(SCHEMA, 32, seed=1).items()}

  # The matrix products run in bfloat16 (the model really is in mixed precision) ...
  jaxpr = jax.make_jaxpr(functools.partial(model.apply, train=False))({"params": params}, batch)
  dots = [e for e in jaxpr.jaxpr.eqns if e.primitive.name == "dot_general"]
  dots += [e for eq in jaxpr.jaxpr.eqns for sub in jax.core.jaxprs_in_params(eq.params)
           for e in sub.eqns if e.primitive.name == "dot_general"]
  assert dots and all(e.outvars[0].aval.dtype == jnp.bfloat16 for e in dots)

  # ... while parameters, optimizer state, loss and metrics stay float32, and training works.
  tx = steps.make_optimizer(config)
  state = steps.TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params))
  step = jax.jit(functools.partial(steps.train_step, model=model, tx=tx, alpha=0.1,
                                   base_rng=jax.random.PRNGKey(2)))
  losses = []
  for _ in range(12):                                 # the same batch: the loss must fall
    state, metrics = step(state, batch)
    assert _dtypes(metrics) == {"float32"}
    losses.append(float(metrics["loss"]))
  assert np.all(np.isfinite(losses)) and losses[-1] < losses[0] - 0.05, losses
  assert _dtypes(state.params) == {"float32"}
  assert _dtypes(state.opt_state) <= {"float32", "int32"}

  # The bfloat16 scores are the float32 model's, to bfloat16 precision.
  out = jax.jit(functools.partial(steps.eval_step, model=model))(state.params, batch, 1.0)
  config.dtype = "float32"
  out32 = jax.jit(functools.partial(steps.eval_step, model=build_model(config, SCHEMA)))(
      state.params, batch, 1.0)
  assert out["score"].dtype == jnp.float32 and out["y_m"].dtype == jnp.float32
  np.testing.assert_allclose(out["prob"], out32["prob"], atol=0.03)
  assert not np.array_equal(np.asarray(out["prob"]), np.asarray(out32["prob"]))
