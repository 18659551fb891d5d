"""M2M (Zhang et al., WSDM 2022; paper Appendix A.2): meta attention and meta tower, whose
weights are generated from the scenario's representation, so every scenario gets its own network
without per-scenario parameters beyond its embedding.

    E   = Experts(x)                               K shared experts, expert view    (B, K, d)
    z   = LeakyReLU(W_z s)                         scenario knowledge representation (B, d_z)
    Meta(v; z) = LeakyReLU(v · W(z) + b(z))        a meta unit: W(z), b(z) generated from z
    a_k = w^T Meta([E_k ⊕ t]; z),  r = Σ_k softmax(a)_k E_k        meta attention (t: the task)
    r  <- Meta_l(r; z) + r        for l = 1..L                      meta tower (residual)
    y_m = w_o^T r + b_o

with x = [u ⊕ i ⊕ s ⊕ DIN(i, S_u)] (the baselines' shared input stands in for M2M's transformer
expert view) and t a learned task embedding (one task: click). A generated weight W(z) of shape
(in, out) is scaled by 1/sqrt(in) so that a meta unit starts at the scale of a LeCun-initialised
Dense layer (our choice; the paper does not give an initialisation).

Scenario-specific parameters: only the scenario embedding; a sample's network is generated from
its own scenario's representation.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import flax.linen as nn
import jax.numpy as jnp
import ml_collections

from mscan_jax.data.schema import Schema
from mscan_jax.models import experts, inputs

Dtype = Any

# 4 experts as Scenario-Wise-Rec's M2M (Li et al., 2024); experts of 2 ReLU layers (256, 64) so
# d = 64 (Scenario-Wise-Rec uses d = 16), scenario representation of 64, 2 meta tower layers
# (our choices); dropout 0.2 in the experts as the authors' config.
DEFAULTS = {"num_experts": 4, "expert": (256, 64), "scenario_dim": 64, "meta_layers": 2,
            "dropout": 0.2}


class MetaUnit(nn.Module):
  """v (B, ..., in), z (B, d_z) -> LeakyReLU(v W(z) + b(z)) (B, ..., out)."""
  features: int
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, v: jnp.ndarray, z: jnp.ndarray) -> jnp.ndarray:
    b, in_dim = v.shape[0], v.shape[-1]
    w = nn.Dense(in_dim * self.features, dtype=self.dtype, name="weight")(z)
    w = w.reshape(b, in_dim, self.features) / math.sqrt(in_dim)          # (B, in, out)
    bias = nn.Dense(self.features, dtype=self.dtype, name="bias")(z)     # (B, out)
    if v.ndim == 2:
      y = jnp.einsum("bi,bio->bo", v, w) + bias
    else:
      y = jnp.einsum("bki,bio->bko", v, w) + bias[:, None, :]
    return nn.leaky_relu(y)


class M2M(inputs.Baseline):
  """`__call__(batch, *, train) -> {"y_m": (B,)}` float32."""
  num_experts: int = DEFAULTS["num_experts"]
  expert: Sequence[int] = DEFAULTS["expert"]
  scenario_dim: int = DEFAULTS["scenario_dim"]
  meta_layers: int = DEFAULTS["meta_layers"]
  dropout: float = DEFAULTS["dropout"]

  @nn.compact
  def __call__(self, batch: dict, *, train: bool) -> dict:
    dt = self.dtype
    feats, _ = self.features(batch)
    x, s = feats["x"], feats["s"]                                      # (B, F), (B, Fs*D)
    e = experts.Experts(self.num_experts, self.expert, self.dropout, dt, name="experts")(
        x, train=train)                                                  # (B, K, d)
    b, k, d = e.shape
    z = nn.leaky_relu(nn.Dense(self.scenario_dim, dtype=dt, name="scenario")(s))   # (B, d_z)
    task = self.param("task", nn.initializers.normal(0.05), (d,)).astype(dt)
    meta_in = jnp.concatenate([e, jnp.broadcast_to(task, (b, k, d))], axis=-1)     # (B, K, 2d)
    hid = MetaUnit(d, dt, name="meta_attention")(meta_in, z)             # (B, K, d)
    score = nn.Dense(1, use_bias=False, dtype=dt, name="attention_v")(hid)[..., 0]  # (B, K)
    r = experts.mix(score, e)                                            # (B, d)
    for layer in range(self.meta_layers):
      r = MetaUnit(d, dt, name=f"meta_tower_{layer}")(r, z) + r          # (B, d)
    y = nn.Dense(1, dtype=dt, name="output")(r)
    return {"y_m": y[:, 0].astype(jnp.float32)}


def from_config(config: ml_collections.ConfigDict, schema: Schema) -> M2M:
  return inputs.build(M2M, config, schema, DEFAULTS, ("num_experts", "expert", "dropout"))
