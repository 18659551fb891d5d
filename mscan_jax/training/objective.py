"""The Scenario Bias Eliminator (paper §3.1.1 and §3.3): training fusion, loss, debiased inference.

Every model returns a dict of named logits:
  "y_m" (B,)  the matching (user-interest) logit, Eq. (6); every model has it.
  "y_s" (B,)  the scenario logit, Eq. (7); only a model with the SBE switched on has it.
  "y_e" (B,)  instead of y_s, an exposure logit for the probability fusion (a documented
              variant, not the paper's): p(click) = sigmoid(y_m) * sigmoid(y_e), where
              sigmoid(y_e) is the chance that the scenario exposes the item, as position-bias
              models such as PAL factor exposure. Trained on that product alone (no Eq. 11 term:
              supervising sigmoid(y_e) with the click would contradict its meaning), and the
              debiased score is y_m (the interest, exposure removed).
  "aux_loss" (B,)  optional, training only: a model's own weighted regulariser per sample
              (AESM2's expert-selection KL terms); `loss_fn` adds its masked mean.
The rules below are the only place that combines them; the trainer and the evaluator call these
functions and never look at a model's name.

Within one scenario sigmoid(y_s) is one positive constant, so the debiased score
y_db = (y_m - c) * sigmoid(y_s) is a strictly increasing function of y_m there: it orders the
samples of one scenario exactly as y_m does, whatever c is. c only changes how samples of
different scenarios interleave in the pooled (`#All`) ranking.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax


def has_sbe(out: dict) -> bool:
  return "y_s" in out


def has_exposure(out: dict) -> bool:
  return "y_e" in out


def train_logit(out: dict) -> jnp.ndarray:
  """Eq. (8): y_uis = y_m * sigmoid(y_s); y_m alone without the SBE. With the probability
  fusion, the logit of sigmoid(y_m) * sigmoid(y_e). (B,)

  The factor sigmoid(y_s) makes the logit move that much slower under Adam than y_m does, so
  M-scan needs a larger learning rate than the same model without the SBE (README, "How the SBE
  trains"; benchmarks/sbe_plateau.py)."""
  if has_sbe(out):
    return out["y_m"] * jax.nn.sigmoid(out["y_s"])
  if has_exposure(out):
    log_p, log_1mp = _product_log_probs(out["y_m"], out["y_e"])
    return log_p - log_1mp
  return out["y_m"]


def _product_log_probs(a: jnp.ndarray, b: jnp.ndarray) -> tuple[jnp.ndarray, jnp.ndarray]:
  """log p and log(1 - p) of p = sigmoid(a) sigmoid(b), computed stably:
  1 - p = (e^-a + e^-b + e^-(a+b)) / ((1 + e^-a)(1 + e^-b))."""
  a, b = a.astype(jnp.float32), b.astype(jnp.float32)
  log_p = -jax.nn.softplus(-a) - jax.nn.softplus(-b)
  log_1mp = (jax.nn.logsumexp(jnp.stack([-a, -b, -a - b]), axis=0)
             - jax.nn.softplus(-a) - jax.nn.softplus(-b))
  return log_p, log_1mp


def loss_fn(out: dict, label: jnp.ndarray, mask: jnp.ndarray, alpha: float):
  """Eq. (9)-(11): mean BCE(sigmoid(y_uis), y) + alpha * mean BCE(sigmoid(y_s), y).

  The scenario loss is supervised by the click label (as in the authors' code). Means are over
  the real samples (mask 1). Returns (loss, {"loss_uis", "loss_s"}), all float32 scalars.
  """
  label = label.astype(jnp.float32)
  mask = mask.astype(jnp.float32)
  denom = jnp.maximum(mask.sum(), 1.0)
  if has_exposure(out):
    log_p, log_1mp = _product_log_probs(out["y_m"], out["y_e"])
    bce = -(label * log_p + (1.0 - label) * log_1mp)
  else:
    bce = optax.sigmoid_binary_cross_entropy(train_logit(out).astype(jnp.float32), label)
  loss_uis = (bce * mask).sum() / denom
  aux = {"loss_uis": loss_uis}
  loss = loss_uis
  if has_sbe(out):
    y_s = out["y_s"].astype(jnp.float32)
    loss_s = (optax.sigmoid_binary_cross_entropy(y_s, label) * mask).sum() / denom
    loss = loss + alpha * loss_s
    aux["loss_s"] = loss_s
  if "aux_loss" in out:
    # A model's own regulariser, per sample (B,), already weighted: AESM2's expert-selection KL.
    loss_aux = (out["aux_loss"].astype(jnp.float32) * mask).sum() / denom
    loss = loss + loss_aux
    aux["loss_aux"] = loss_aux
  return loss, aux


def inference_score(out: dict, c: float) -> jnp.ndarray:
  """Eq. (12): y_db = y_m * sigmoid(y_s) - c * sigmoid(y_s); y_m alone without the SBE and with
  the probability fusion (whose exposure term is removed, so c does not enter). (B,)"""
  if has_sbe(out):
    p_s = jax.nn.sigmoid(out["y_s"].astype(jnp.float32))
    return out["y_m"].astype(jnp.float32) * p_s - c * p_s
  return out["y_m"].astype(jnp.float32)


def click_prob(out: dict) -> jnp.ndarray:
  """The click probability the model was trained to fit, sigmoid(y_uis) (for log loss). (B,)"""
  if has_exposure(out):
    return jax.nn.sigmoid(out["y_m"].astype(jnp.float32)) * jax.nn.sigmoid(
        out["y_e"].astype(jnp.float32))
  return jax.nn.sigmoid(train_logit(out).astype(jnp.float32))


def scenario_factor(out: dict) -> jnp.ndarray | None:
  """sigmoid of the scenario tower's output (y_s or y_e), or None without one. (B,)"""
  for key in ("y_s", "y_e"):
    if key in out:
      return jax.nn.sigmoid(out[key].astype(jnp.float32))
  return None
