"""MMoE (Ma et al., KDD 2018; paper Appendix A.2), with one gate and one tower per scenario.

    e_k = Expert_k(x)                 k = 1..K, shared by every scenario      (B, K, d)
    g   = softmax(W_s x)              the gate of the sample's scenario s      (B, K)
    y_m = Tower_s(Σ_k g_k e_k)                                                  (B,)

with x = [u ⊕ i ⊕ s ⊕ DIN(i, S_u)]. Gates and towers are stacked per-scenario parameters
(`experts.GroupedDense` / `ScenarioTower`); every expert runs for every sample, as in MMoE.
"""

from __future__ import annotations

from typing import Sequence

import flax.linen as nn
import ml_collections

from mscan_jax.data.schema import Schema
from mscan_jax.models import experts, inputs


# Gate: one linear layer + softmax per scenario (MMoE paper, Eq. 5). Experts of 2 ReLU layers
# and a tower of 1 hidden layer + output: 3 hidden layers on each path, as the paper's 3-layer
# networks. 8 experts: our choice. Scenario-Wise-Rec (Li et al., 2024) uses one expert per
# scenario (3 on Ali-CCP), which does not scale to Cloud Theme's 355 (paper §4.2); dropout 0.2
# as the authors' config.
DEFAULTS = {"num_experts": 8, "expert": (256, 128), "tower": (64,), "dropout": 0.2}


class MMoE(inputs.Baseline):
  """`__call__(batch, *, train) -> {"y_m": (B,)}` float32."""
  num_experts: int = DEFAULTS["num_experts"]
  expert: Sequence[int] = DEFAULTS["expert"]
  tower: Sequence[int] = DEFAULTS["tower"]
  dropout: float = DEFAULTS["dropout"]
  grouped_matmul: str = "auto"

  @nn.compact
  def __call__(self, batch: dict, *, train: bool) -> dict:
    p, dt = self.schema.num_scenarios, self.dtype
    feats, sid = self.features(batch)
    x = feats["x"]                                                       # (B, F); sid (B,)
    e = experts.Experts(self.num_experts, self.expert, self.dropout, dt, name="experts")(
        x, train=train)                                                  # (B, K, d)
    gate = experts.GroupedDense(p, self.num_experts, impl=self.grouped_matmul, dtype=dt,
                                name="gates")(x, sid)                    # (B, K)
    h = experts.mix(gate, e)                                             # (B, d)
    y = experts.ScenarioTower(p, self.tower, dropout=self.dropout, impl=self.grouped_matmul,
                              dtype=dt, name="towers")(h, sid, train=train)   # (B,)
    return {"y_m": y}


def from_config(config: ml_collections.ConfigDict, schema: Schema) -> MMoE:
  return inputs.build(MMoE, config, schema, DEFAULTS, ("num_experts", "expert", "tower", "dropout"),
                   grouped_matmul=config.baseline.grouped_matmul)
