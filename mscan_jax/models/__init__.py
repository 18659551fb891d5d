"""Model registry: `config.model` -> a constructor `(config, schema) -> flax.linen.Module`.

Every model takes the batch of `mscan_jax.data.schema` and returns a dict of named logits
(`y_m`, and `y_s` where the Scenario Bias Eliminator is on); see `mscan_jax.training.objective`.
"""

from __future__ import annotations

from typing import Callable

import flax.linen as nn
import jax.numpy as jnp
import ml_collections

from mscan_jax.data.schema import Schema

ModelFactory = Callable[[ml_collections.ConfigDict, Schema], nn.Module]


def _registry() -> dict[str, ModelFactory]:
  from mscan_jax.models import mscan
  return {"mscan": mscan.from_config}


def model_names() -> tuple[str, ...]:
  return tuple(sorted(_registry()))


def build_model(config: ml_collections.ConfigDict, schema: Schema) -> nn.Module:
  registry = _registry()
  if config.model not in registry:
    raise ValueError(f"config.model={config.model!r} is unknown; valid: {', '.join(sorted(registry))}")
  return registry[config.model](config, schema)


def activation_dtype(config: ml_collections.ConfigDict):
  return jnp.bfloat16 if config.dtype == "bfloat16" else jnp.float32
