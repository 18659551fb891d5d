"""The Scenario Bias Eliminator's rules (Eq. 8-12) against hand-computed values."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mscan_jax.training import objective


def _bce(logit, y):
  p = 1 / (1 + math.exp(-logit))
  return -(y * math.log(p) + (1 - y) * math.log(1 - p))


def _sig(x):
  return 1 / (1 + math.exp(-x))


def test_loss_with_sbe_matches_hand_computation():
  y_m, y_s, y = [2.0, -1.0, 0.5], [0.0, 3.0, -2.0], [1.0, 0.0, 1.0]
  out = {"y_m": jnp.array(y_m), "y_s": jnp.array(y_s)}
  loss, aux = objective.loss_fn(out, jnp.array(y), jnp.ones(3), alpha=0.1)
  fused = [m * _sig(s) for m, s in zip(y_m, y_s)]                       # Eq. (8)
  l_uis = np.mean([_bce(f, t) for f, t in zip(fused, y)])                 # Eq. (9)
  l_s = np.mean([_bce(s, t) for s, t in zip(y_s, y)])                     # Eq. (10)
  assert float(aux["loss_uis"]) == pytest.approx(l_uis, rel=1e-6)
  assert float(aux["loss_s"]) == pytest.approx(l_s, rel=1e-6)
  assert float(loss) == pytest.approx(l_uis + 0.1 * l_s, rel=1e-6)       # Eq. (11)


def test_loss_without_sbe_is_plain_bce_and_mask_excludes_padding():
  out = {"y_m": jnp.array([1.0, -2.0, 30.0])}
  loss, aux = objective.loss_fn(out, jnp.array([1.0, 0.0, 0.0]), jnp.array([1.0, 1.0, 0.0]), alpha=5.0)
  assert "loss_s" not in aux
  assert float(loss) == pytest.approx((_bce(1.0, 1) + _bce(-2.0, 0)) / 2, rel=1e-6)


def test_inference_score_is_eq12():
  out = {"y_m": jnp.array([2.0, -1.0]), "y_s": jnp.array([0.5, -3.0])}
  got = np.asarray(objective.inference_score(out, c=1.5))
  want = [m * _sig(s) - 1.5 * _sig(s) for m, s in [(2.0, 0.5), (-1.0, -3.0)]]
  np.testing.assert_allclose(got, want, rtol=1e-6)
  np.testing.assert_allclose(objective.inference_score({"y_m": jnp.array([0.3])}, c=9.0), [0.3])


def test_debiased_score_keeps_within_scenario_order_and_c_changes_pooled_order():
  rng = np.random.default_rng(0)
  n = 400
  scen = rng.integers(0, 3, n)
  y_m = rng.normal(size=n) * 2
  y_s = np.array([2.0, -1.0, -4.0])[scen]          # one scenario logit per scenario
  out = {"y_m": jnp.array(y_m), "y_s": jnp.array(y_s)}
  orders = {}
  for c in (0.0, 1.0, 5.0, 18.0):
    score = np.asarray(objective.inference_score(out, c))
    for s in range(3):
      sel = scen == s
      # Within one scenario y_db orders samples exactly as y_m does, whatever c.
      np.testing.assert_array_equal(np.argsort(score[sel], kind="stable"),
                                    np.argsort(y_m[sel], kind="stable"))
    orders[c] = np.argsort(score, kind="stable")
  # Across scenarios c changes the pooled ranking.
  assert not np.array_equal(orders[0.0], orders[18.0])


def test_probability_fusion_is_a_product_of_probabilities():
  rng = np.random.default_rng(0)
  y_m = jnp.asarray(rng.normal(size=64) * 8, jnp.float32)        # large logits: stability
  y_e = jnp.asarray(rng.normal(size=64) * 8, jnp.float32)
  label = jnp.asarray(rng.integers(0, 2, 64), jnp.float32)
  out = {"y_m": y_m, "y_e": y_e}
  p = np.asarray(jax.nn.sigmoid(y_m), np.float64) * np.asarray(jax.nn.sigmoid(y_e), np.float64)
  np.testing.assert_allclose(objective.click_prob(out), p, rtol=1e-5, atol=1e-7)
  want = -np.mean(np.asarray(label) * np.log(p) + (1 - np.asarray(label)) * np.log1p(-p))
  loss, aux = objective.loss_fn(out, label, jnp.ones(64), alpha=0.5)
  assert float(loss) == pytest.approx(want, rel=1e-4)
  assert "loss_s" not in aux                                      # no Eq. (11) term
  grads = jax.grad(lambda o: objective.loss_fn(o, label, jnp.ones(64), 0.5)[0])(out)
  assert all(np.isfinite(np.asarray(g)).all() for g in grads.values())
  # Debiased ranking is by the interest y_m alone, whatever c.
  np.testing.assert_array_equal(objective.inference_score(out, 5.0), y_m)
  np.testing.assert_allclose(objective.scenario_factor(out), jax.nn.sigmoid(y_e))
