"""AESM2 (Zou et al., SIGIR 2022; paper Appendix A.2): automatic expert selection per scenario by
the distance between experts and scenarios. Single task (click), so only the multi-scenario
layers of AESM2 are used, followed by one tower.

At each multi-scenario layer l, for a sample of scenario s with input h (h = x at l = 1):

    E     = Experts_l(h)                         K shared experts                     (B, K, w_l)
    G     = [Gate_{l,1}(h ⊕ s) .. Gate_{l,P}(h ⊕ s)]   every scenario's gate logits   (B, P, K)
    q_k   = softmax over the P gates of G[:, :, k] (+ noise in training)
            = how expert k is spread over the scenarios
    d_sp,k = KL(onehot(s) || q_k)  = -log q_k(s)        distance to "specific to s"
    d_sh,k = KL(uniform    || q_k)                      distance to "shared by all"
    selected = the top_k_specific experts of smallest d_sp  ∪  the top_k_shared of smallest d_sh
    h    <- softmax over the selected experts of G[:, s, :] · E
    y_m  = Tower(h)

The auxiliary loss kl_weight * Σ_l (mean d_sp + mean d_sh over the selected experts) pulls the
selected specific experts towards scenario s and the selected shared ones towards uniformity
(the released code returns these two KL terms per layer). It reaches the trainer as the per-
sample output "aux_loss" (training only), which `objective.loss_fn` adds to the loss.

Differences from the released code (TensorFlow, `AEMS2` / `select_experts`): experts and gates
have no batch normalisation; unselected experts are masked with a large negative logit (the
code multiplies the logits by a -1e9 mask, which turns negative logits into large positive
ones); the KL terms use log-softmax instead of adding 1e-9 inside the logarithm.

Not per-scenario routing in the strict sense: the expert-scenario distribution q_k is a softmax
over *all* scenarios' gates, so the selection for a sample of scenario s depends on the other
scenarios' gate parameters (by design of AESM2). Every sample evaluates the P gates (B*P*K
logits), never the other scenarios' experts or towers.
"""

from __future__ import annotations

import math
from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from mscan_jax.data.schema import Schema
from mscan_jax.models import experts, inputs
from mscan_jax.models.layers import MLP


# Our choices (the released code reads its settings from a config file we could not consult):
# 8 experts per layer, 2 layers of widths 256 and 128 (the widths of MMoE's experts here), 2
# specific + 2 shared experts selected, selection noise 0.01 * K (the released code scales the
# noise by K), KL weight 0.01 (the KL terms start near log P per layer, 5.9 for Cloud Theme, so
# the click loss stays the main term); a shared tower of 1 hidden layer + output; dropout 0.2 as
# the authors' config.
DEFAULTS = {"num_experts": 8, "expert": (256, 128), "tower": (64,), "dropout": 0.2,
            "top_k_specific": 2, "top_k_shared": 2, "noise": 0.01, "kl_weight": 0.01}


def select_experts(log_q: jnp.ndarray, sid: jnp.ndarray, top_k_specific: int,
                   top_k_shared: int) -> tuple[jnp.ndarray, jnp.ndarray]:
  """AESM2's expert selection.

  log_q (B, P, K): log of each expert's distribution over scenarios; sid (B,) scenario rows.
  Returns (selected (B, K) bool, kl (B,) = mean KL of the selected specific experts to
  onehot(s) + mean KL of the selected shared experts to uniform).
  """
  p = log_q.shape[1]
  d_sp = -jnp.take_along_axis(log_q, sid[:, None, None], axis=1)[:, 0, :]   # (B, K)
  d_sh = -math.log(p) - log_q.mean(axis=1)                                  # (B, K)
  neg_sp, idx_sp = jax.lax.top_k(-d_sp, top_k_specific)                      # (B, k_sp)
  neg_sh, idx_sh = jax.lax.top_k(-d_sh, top_k_shared)                        # (B, k_sh)
  k = log_q.shape[2]
  selected = (jax.nn.one_hot(idx_sp, k).sum(1) + jax.nn.one_hot(idx_sh, k).sum(1)) > 0
  kl = -neg_sp.mean(-1) - neg_sh.mean(-1)                                    # (B,)
  return selected, kl


class AESM2(inputs.Baseline):
  """`__call__(batch, *, train) -> {"y_m": (B,)[, "aux_loss": (B,)]}` float32."""
  num_experts: int = DEFAULTS["num_experts"]
  expert: Sequence[int] = DEFAULTS["expert"]
  tower: Sequence[int] = DEFAULTS["tower"]
  dropout: float = DEFAULTS["dropout"]
  top_k_specific: int = DEFAULTS["top_k_specific"]
  top_k_shared: int = DEFAULTS["top_k_shared"]
  noise: float = DEFAULTS["noise"]
  kl_weight: float = DEFAULTS["kl_weight"]

  @nn.compact
  def __call__(self, batch: dict, *, train: bool) -> dict:
    p, k, dt = self.schema.num_scenarios, self.num_experts, self.dtype
    if not (1 <= self.top_k_specific <= k and 1 <= self.top_k_shared <= k):
      raise ValueError(f"AESM2: top_k_specific={self.top_k_specific} and top_k_shared="
                       f"{self.top_k_shared} must be in 1..num_experts={k}")
    feats, sid = self.features(batch)                                    # sid (B,)
    h, s = feats["x"], feats["s"]                                      # (B, F), (B, Fs*D)
    b = h.shape[0]
    kl = jnp.zeros((b,), jnp.float32)
    for level, width in enumerate(self.expert):
      e = experts.Experts(k, (width,), self.dropout, dt, name=f"experts_{level}")(h, train=train)
      gates = nn.Dense(p * k, dtype=dt, name=f"gates_{level}")(jnp.concatenate([h, s], -1))
      gates = gates.reshape(b, p, k).astype(jnp.float32)                 # (B, P, K)
      noisy = gates
      if train and self.noise > 0:
        noisy = gates + self.noise * k * jax.random.normal(self.make_rng("dropout"), gates.shape)
      selected, kl_l = select_experts(jax.nn.log_softmax(noisy, axis=1), sid,
                                      self.top_k_specific, self.top_k_shared)
      own = jnp.take_along_axis(gates, sid[:, None, None], axis=1)[:, 0, :]   # (B, K)
      h = experts.mix(jnp.where(selected, own, -1e9), e)                 # (B, w)
      kl = kl + kl_l
    y = MLP(self.tower, self.dropout, out_dim=1, dtype=dt, name="tower")(h, train=train)
    out = {"y_m": y[:, 0].astype(jnp.float32)}
    if train and self.kl_weight > 0:
      out["aux_loss"] = self.kl_weight * kl
    return out


def from_config(config: ml_collections.ConfigDict, schema: Schema) -> AESM2:
  k = inputs.option(config, "num_experts", DEFAULTS)
  return inputs.build(AESM2, config, schema, DEFAULTS, ("expert", "tower", "dropout"),
                   num_experts=k, top_k_specific=min(k, DEFAULTS["top_k_specific"]),
                   top_k_shared=min(k, DEFAULTS["top_k_shared"]))
