"""Model registry: `config.model` -> a `ModelSpec`.

Every model takes the batch of `mscan_jax.data.schema` and returns a dict of named logits
(`y_m`, and `y_s` where the Scenario Bias Eliminator is on); see `mscan_jax.training.objective`.
A spec may also declare training *stages* (e.g. `finetune` = train `mix`, then continue on one
scenario): the trainer runs them in order and never looks at the model's name.
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Optional

import flax.linen as nn
import jax.numpy as jnp
import ml_collections

from mscan_jax.data.schema import Schema

ModelFactory = Callable[[ml_collections.ConfigDict, Schema], nn.Module]
# stages(config) -> [(subdir, stage_config), ...]; "" = the run's own workdir. The last stage is
# the one whose results are the run's results. `stage_config.train.init_from` may be a subdir name.
StagesFn = Callable[[ml_collections.ConfigDict], list]


@dataclasses.dataclass(frozen=True)
class ModelSpec:
  factory: ModelFactory
  stages: Optional[StagesFn] = None
  description: str = ""


def _registry() -> dict[str, ModelSpec]:
  from mscan_jax.models import mscan
  registry = {"mscan": ModelSpec(mscan.from_config, description="M-scan (this paper)")}
  # Baselines (Appendix A.2, issue #4): same batch, same objective, only "y_m".
  from mscan_jax.models import aesm2, m2m, mlp, mmoe, ple, shared_bottom, star
  registry.update({
      "single": ModelSpec(mlp.from_config, mlp.single_stages,
                          "3-layer MLP trained on config.single.scenario only"),
      "mix": ModelSpec(mlp.from_config, description="3-layer MLP trained on all scenarios"),
      "finetune": ModelSpec(mlp.from_config, mlp.finetune_stages,
                            "mix, then trained on config.single.scenario from its checkpoint"),
      "shared_bottom": ModelSpec(shared_bottom.from_config,
                                 description="shared embeddings, one tower per scenario"),
      "mmoe": ModelSpec(mmoe.from_config, description="MMoE (Ma et al., KDD 2018)"),
      "ple": ModelSpec(ple.from_config, description="PLE (Tang et al., RecSys 2020)"),
      "aesm2": ModelSpec(aesm2.from_config, description="AESM2 (Zou et al., SIGIR 2022)"),
      "m2m": ModelSpec(m2m.from_config, description="M2M (Zhang et al., WSDM 2022)"),
      "star": ModelSpec(star.from_config, description="STAR (Sheng et al., CIKM 2021)"),
  })
  return registry


def model_names() -> tuple[str, ...]:
  return tuple(sorted(_registry()))


def get_spec(name: str) -> ModelSpec:
  registry = _registry()
  if name not in registry:
    raise ValueError(f"config.model={name!r} is unknown; valid: {', '.join(sorted(registry))}")
  return registry[name]


def build_model(config: ml_collections.ConfigDict, schema: Schema) -> nn.Module:
  return get_spec(config.model).factory(config, schema)


def stages(config: ml_collections.ConfigDict) -> list:
  spec = get_spec(config.model)
  return spec.stages(config) if spec.stages is not None else [("", config)]


def activation_dtype(config: ml_collections.ConfigDict):
  return jnp.bfloat16 if config.dtype == "bfloat16" else jnp.float32
