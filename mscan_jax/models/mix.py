"""Single, Mix and Finetune (paper Appendix A.2): one MLP over the shared baseline inputs.

    y_m = MLP([u ⊕ i ⊕ s ⊕ DIN(i, S_u)])                    (B,)

The three differ only in their training data, expressed as training *stages* (the trainer runs
them in order and never looks at the model's name, see `mscan_jax.models.ModelSpec`):
  single    trained and evaluated on the target scenario only
            (`--config.single.scenario=ID`: data.train_scenarios = data.eval_scenarios = (ID,)).
  mix       trained on all scenarios together (one stage, the run itself).
  finetune  stage "mix" (the Mix model on all scenarios), then the run itself: the same model
            initialised from the best "mix" checkpoint (train.init_from = "mix") and trained and
            evaluated on the target scenario only.
"""

from __future__ import annotations

import copy
from typing import Sequence

import flax.linen as nn
import jax.numpy as jnp
import ml_collections

from mscan_jax.data.schema import Schema
from mscan_jax.models import inputs
from mscan_jax.models.common import target_scenario
from mscan_jax.models.layers import MLP


# Paper A.2: "three-layer fully connected networks" = two hidden layers + the output layer; the
# widths and the dropout are those of M-scan's matching tower in the authors' config (512, 256;
# dropout 0.2), so Mix is M-scan's FFN on the baselines' inputs.
DEFAULTS = {"tower": (512, 256), "dropout": 0.2}


class MLPModel(inputs.Baseline):
  """`__call__(batch, *, train) -> {"y_m": (B,)}` float32."""
  tower: Sequence[int] = DEFAULTS["tower"]
  dropout: float = DEFAULTS["dropout"]

  @nn.compact
  def __call__(self, batch: dict, *, train: bool) -> dict:
    x = self.features(batch)[0]["x"]                                     # (B, F)
    y = MLP(self.tower, self.dropout, out_dim=1, dtype=self.dtype, name="tower")(x, train=train)
    return {"y_m": y[:, 0].astype(jnp.float32)}


def from_config(config: ml_collections.ConfigDict, schema: Schema) -> MLPModel:
  return inputs.build(MLPModel, config, schema, DEFAULTS, ("tower", "dropout"))


def _copy(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  return copy.deepcopy(config)


def _restrict(config: ml_collections.ConfigDict, s: int) -> ml_collections.ConfigDict:
  config.data.train_scenarios = (s,)
  config.data.eval_scenarios = (s,)
  return config


def single_stages(config: ml_collections.ConfigDict) -> list:
  """[("", config trained and evaluated on the target scenario only)]."""
  s = target_scenario(config)
  return [("", _restrict(_copy(config), s))]


def finetune_stages(config: ml_collections.ConfigDict) -> list:
  """[("mix", the Mix run on all scenarios), ("", the target scenario from the mix checkpoint)]."""
  s = target_scenario(config)
  mix = _copy(config)
  mix.model = "mix"
  mix.single.scenario = 0     # Mix is the sibling Mix run of the same seed, not per scenario
  tune = _restrict(_copy(config), s)
  tune.train.init_from = "mix"
  return [("mix", mix), ("", tune)]
