"""STAR (Sheng et al., CIKM 2021): star topology, partitioned normalisation and an auxiliary
network. Not in the paper's Table 1; offered as an extra multi-scenario baseline.

    x'  = (γ ⊙ γ_s) ⊙ (x - μ) / sqrt(σ² + ε) + (β + β_s)     partitioned normalisation (STAR Eq. 2)
    h_{l+1} = ReLU(h_l (W_l ⊙ W_{l,s}) + b_l + b_{l,s})       star topology FCN (STAR Eq. 1)
    y_m = h_L (W_L ⊙ W_{L,s}) + b_L + b_{L,s} + Aux(s)        auxiliary network on the scenario

with x = [u ⊕ i ⊕ s ⊕ DIN(i, S_u)] and s the sample's scenario. The scenario weights start at
W_s = 1, b_s = 0, γ_s = 1, β_s = 0, so every scenario starts from the shared network.

Difference from STAR: μ and σ² are the statistics of each sample's features (as LayerNorm), not
batch statistics with moving averages, so the model keeps no mutable state and the trainer's
contract (`params` only) holds; the partitioned scale and shift of STAR are kept.
"""

from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn
import jax.numpy as jnp
import ml_collections

from mscan_jax.data.schema import Schema
from mscan_jax.models import experts, inputs
from mscan_jax.models.layers import MLP

Dtype = Any

# The star FCN has the 3 layers and widths of the Mix MLP (512, 256 + output; paper A.2 and the
# authors' FFN config), dropout 0.2; the auxiliary network has one hidden layer of 64 (our
# choice; Scenario-Wise-Rec uses 16).
DEFAULTS = {"tower": (512, 256), "aux": (64,), "dropout": 0.2}


class StarDense(nn.Module):
  """x (B, in), sid (B,) -> x (W ⊙ W_s) + b + b_s (B, out)."""
  num_scenarios: int
  features: int
  impl: str = "auto"
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jnp.ndarray, sid: jnp.ndarray) -> jnp.ndarray:
    in_dim, p = x.shape[-1], self.num_scenarios
    w = self.param("kernel", nn.initializers.lecun_normal(), (in_dim, self.features))
    b = self.param("bias", nn.initializers.zeros_init(), (self.features,))
    w_s = self.param("group_kernel", nn.initializers.ones_init(), (p, in_dim, self.features))
    b_s = self.param("group_bias", nn.initializers.zeros_init(), (p, self.features))
    y = experts.grouped_matmul(x.astype(self.dtype), sid, w_s, self.impl, shared=w)   # (B, out)
    return y + (b + b_s[sid]).astype(self.dtype)


class PartitionedNorm(nn.Module):
  """x (B, F), sid (B,) -> (γ ⊙ γ_s) ⊙ normalise(x) + (β + β_s) (B, F)."""
  num_scenarios: int
  epsilon: float = 1e-6
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jnp.ndarray, sid: jnp.ndarray) -> jnp.ndarray:
    f, p = x.shape[-1], self.num_scenarios
    x32 = x.astype(jnp.float32)
    mean = x32.mean(-1, keepdims=True)
    var = ((x32 - mean) ** 2).mean(-1, keepdims=True)
    xn = (x32 - mean) / jnp.sqrt(var + self.epsilon)                     # (B, F)
    gamma = self.param("scale", nn.initializers.ones_init(), (f,))
    beta = self.param("shift", nn.initializers.zeros_init(), (f,))
    gamma_s = self.param("group_scale", nn.initializers.ones_init(), (p, f))
    beta_s = self.param("group_shift", nn.initializers.zeros_init(), (p, f))
    return ((gamma * gamma_s[sid]) * xn + beta + beta_s[sid]).astype(self.dtype)


class Star(inputs.Baseline):
  """`__call__(batch, *, train) -> {"y_m": (B,)}` float32."""
  tower: Sequence[int] = DEFAULTS["tower"]
  aux: Sequence[int] = DEFAULTS["aux"]
  dropout: float = DEFAULTS["dropout"]
  grouped_matmul: str = "auto"

  @nn.compact
  def __call__(self, batch: dict, *, train: bool) -> dict:
    p, dt = self.schema.num_scenarios, self.dtype
    feats, sid = self.features(batch)                                    # sid (B,)
    h = PartitionedNorm(p, dtype=dt, name="norm")(feats["x"], sid)      # (B, F)
    for layer, width in enumerate(self.tower):
      h = nn.relu(StarDense(p, width, self.grouped_matmul, dt, name=f"star_{layer}")(h, sid))
      if self.dropout > 0:
        h = nn.Dropout(self.dropout, deterministic=not train)(h)
    y = StarDense(p, 1, self.grouped_matmul, dt, name="star_out")(h, sid)           # (B, 1)
    y_aux = MLP(self.aux, self.dropout, out_dim=1, dtype=dt, name="aux")(feats["s"], train=train)
    return {"y_m": (y + y_aux)[:, 0].astype(jnp.float32)}


def from_config(config: ml_collections.ConfigDict, schema: Schema) -> Star:
  return inputs.build(Star, config, schema, DEFAULTS, ("tower", "dropout"),
                   grouped_matmul=config.baseline.grouped_matmul)
