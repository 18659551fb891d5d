"""PLE (Tang et al., RecSys 2020; paper Appendix A.2): scenario-specific and shared experts with
progressive layered extraction, one gate and one tower per scenario.

At extraction level l (l = 1..L), for a sample of scenario s:

    E_s  = SpecificExperts_{s,l}(h_s)            the scenario's own n_spec experts   (B, n_spec, w_l)
    E_sh = SharedExperts_l(h_sh)                 n_sh experts shared by everyone     (B, n_sh, w_l)
    h_s  <- softmax(G_{s,l} h_s) · [E_s ; E_sh]  the scenario's gate (CGC, PLE Eq. 3-4)
    h_sh <- softmax(G_l h_sh) · [E_s ; E_sh]     the shared gate, levels l < L only
    y_m  = Tower_s(h_s)                          after the last level

with h_s = h_sh = x = [u ⊕ i ⊕ s ⊕ DIN(i, S_u)] at level 1. Experts of level l are one ReLU
layer of width `expert[l]`, so `config.baseline.expert` lists one width per level (one width =
CGC, PLE's single-level form, Scenario-Wise-Rec's setting).

Adaptation to hundreds of scenarios: in PLE the shared gate of a level l < L mixes the experts of
*every* task. Here every sample belongs to one scenario, so the shared gate mixes the shared
experts and the sample's own scenario's experts only: a prediction then depends on its own
scenario's parameters alone (no sample ever runs the 355 x n_spec specific experts of the other
scenarios), and with L = 1 the model is exactly CGC.
"""

from __future__ import annotations

from typing import Sequence

import flax.linen as nn
import jax.numpy as jnp
import ml_collections

from mscan_jax.data.schema import Schema
from mscan_jax.models import experts, inputs


# Expert counts from Scenario-Wise-Rec's PLE on Ali-CCP (2 specific per scenario, 1 shared);
# two extraction levels of widths 256 and 128 (PLE's progressive extraction; our widths) and a
# per-scenario tower of 1 hidden layer + output, as MMoE here; dropout 0.2 as the authors' config.
DEFAULTS = {"num_experts": 1, "num_specific_experts": 2, "expert": (256, 128), "tower": (64,),
            "dropout": 0.2}


class PLE(inputs.Baseline):
  """`__call__(batch, *, train) -> {"y_m": (B,)}` float32. `num_experts` = shared experts."""
  num_experts: int = DEFAULTS["num_experts"]
  num_specific_experts: int = DEFAULTS["num_specific_experts"]
  expert: Sequence[int] = DEFAULTS["expert"]
  tower: Sequence[int] = DEFAULTS["tower"]
  dropout: float = DEFAULTS["dropout"]
  grouped_matmul: str = "auto"

  @nn.compact
  def __call__(self, batch: dict, *, train: bool) -> dict:
    p, dt = self.schema.num_scenarios, self.dtype
    n_all = self.num_specific_experts + self.num_experts
    feats, sid = self.features(batch)
    x = feats["x"]                                                       # (B, F); sid (B,)
    h_own, h_shared = x, x
    levels = len(self.expert)
    for level, width in enumerate(self.expert):
      e_own = experts.ScenarioExperts(p, self.num_specific_experts, (width,), self.dropout,
                                      self.grouped_matmul, dt, name=f"specific_{level}")(
                                          h_own, sid, train=train)       # (B, n_spec, w)
      e_shared = experts.Experts(self.num_experts, (width,), self.dropout, dt,
                                 name=f"shared_{level}")(h_shared, train=train)  # (B, n_sh, w)
      e_all = jnp.concatenate([e_own, e_shared], axis=1)                 # (B, n_all, w)
      gate_own = experts.GroupedDense(p, n_all, impl=self.grouped_matmul, dtype=dt,
                                      name=f"gate_{level}")(h_own, sid)  # (B, n_all)
      if level < levels - 1:
        gate_shared = nn.Dense(n_all, dtype=dt, name=f"shared_gate_{level}")(h_shared)
        h_shared = experts.mix(gate_shared, e_all)                       # (B, w)
      h_own = experts.mix(gate_own, e_all)                               # (B, w)
    y = experts.ScenarioTower(p, self.tower, dropout=self.dropout, impl=self.grouped_matmul,
                              dtype=dt, name="towers")(h_own, sid, train=train)   # (B,)
    return {"y_m": y}


def from_config(config: ml_collections.ConfigDict, schema: Schema) -> PLE:
  return inputs.build(PLE, config, schema, DEFAULTS,
                   ("num_experts", "num_specific_experts", "expert", "tower", "dropout"),
                   grouped_matmul=config.baseline.grouped_matmul)
