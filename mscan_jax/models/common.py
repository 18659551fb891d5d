"""Config readings shared by the model modules and the registry (`mscan_jax.models`).

They live below the registry: the registry imports every model module, so a model module never
imports the registry back (README, "Layout").
"""

from __future__ import annotations

import jax.numpy as jnp
import ml_collections

from mscan_jax.data.schema import Schema
from mscan_jax.errors import ConfigError


def target_scenario(config: ml_collections.ConfigDict, schema: Schema | None = None) -> int:
  """`config.single.scenario`, checked: required (>= 1) for models with a target scenario;
  a ConfigError (the user's to fix) otherwise."""
  s = int(config.single.scenario)
  if s < 1:
    raise ConfigError(f"config.model={config.model!r} needs a target scenario: set "
                      f"--config.single.scenario=ID (a scenario id >= 1), got {s}")
  if schema is not None and s > schema.num_scenarios:
    raise ConfigError(f"config.single.scenario={s} does not exist: the dataset has scenario ids "
                      f"1..{schema.num_scenarios}")
  return s


def activation_dtype(config: ml_collections.ConfigDict):
  """The dtype of activations (`config.dtype`); parameters and the loss stay float32."""
  return jnp.bfloat16 if config.dtype == "bfloat16" else jnp.float32
