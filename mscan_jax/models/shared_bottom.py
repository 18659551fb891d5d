"""Shared Bottom (Caruana 1993; paper Appendix A.2): the embedding layer is shared, and every
scenario has its own 3-layer tower on top of it.

    y_m = Tower_{s}([u ⊕ i ⊕ s ⊕ DIN(i, S_u)])               s = the sample's scenario

The P towers are stacked parameters (`experts.ScenarioTower`); a sample runs only its own tower.
"""

from __future__ import annotations

from typing import Sequence

import flax.linen as nn
import ml_collections

from mscan_jax.data.schema import Schema
from mscan_jax.models import experts, inputs, mix


# Paper A.2: "the embedding layer as the shared part and ... 3 fully connected layers for each
# scenario on top of the shared part": two hidden layers + output, with the widths and dropout
# of the Mix MLP (512, 256; 0.2, the authors' FFN config), so the two differ only in sharing.
DEFAULTS = dict(mix.DEFAULTS)


class SharedBottom(inputs.Baseline):
  """`__call__(batch, *, train) -> {"y_m": (B,)}` float32."""
  tower: Sequence[int] = DEFAULTS["tower"]
  dropout: float = DEFAULTS["dropout"]
  grouped_matmul: str = "auto"

  @nn.compact
  def __call__(self, batch: dict, *, train: bool) -> dict:
    p = self.schema.num_scenarios
    feats, sid = self.features(batch)
    x = feats["x"]                                                       # (B, F); sid (B,)
    y = experts.ScenarioTower(p, self.tower, dropout=self.dropout, impl=self.grouped_matmul,
                              dtype=self.dtype, name="towers")(x, sid, train=train)   # (B,)
    return {"y_m": y}


def from_config(config: ml_collections.ConfigDict, schema: Schema) -> SharedBottom:
  return inputs.build(SharedBottom, config, schema, DEFAULTS, ("tower", "dropout"),
                   grouped_matmul=config.baseline.grouped_matmul)
