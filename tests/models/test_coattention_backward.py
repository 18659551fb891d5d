"""The co-attention's backward pass through the arg-max pairs (`CoAttention.backward="max"`,
Eq. 16) against plain autodiff through every pair (`backward="autodiff"`): same forward values,
same gradients w.r.t. the parameters and the inputs (masked positions, a row with N_us = 0 and a
row with N_uh = 0 included), tiled equal to untiled, ties of the max."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mscan_jax.config import get_config
from mscan_jax.models.mscan import from_config
from mscan_jax.data.schema import Field, Schema
from mscan_jax.models.sequence import CoAttention

B, LH, LS, D = 7, 5, 4, 6          # tile 3 pads the batch of 7 to 9 rows (3 tiles)
HIDDEN = (8, 4)
H_LEN = np.array([5, 3, 0, 5, 2, 1, 4])   # row 2: N_uh = 0
S_LEN = np.array([4, 0, 2, 1, 3, 4, 0])   # rows 1, 6: N_us = 0
H_MASK = jnp.arange(LH)[None] < jnp.asarray(H_LEN)[:, None]              # (B, Lh)
S_MASK = jnp.arange(LS)[None] < jnp.asarray(S_LEN)[:, None]              # (B, Ls)


def _inputs(seed: int = 0):
  rng = np.random.default_rng(seed)
  h = jnp.asarray(rng.normal(size=(B, LH, D)), jnp.float32)              # (B, Lh, D)
  i = jnp.asarray(rng.normal(size=(B, D)), jnp.float32)                  # (B, D)
  s = jnp.asarray(rng.normal(size=(B, LS, D)), jnp.float32)              # (B, Ls, D)
  return h, i, s


def _params(seed: int = 1):
  """Random parameters, biases included (numpy draws on `jax.eval_shape`: no compilation)."""
  shapes = jax.eval_shape(lambda: CoAttention(HIDDEN).init(jax.random.key(0), *_inputs(),
                                                           H_MASK, S_MASK))
  rng = np.random.default_rng(seed)
  return jax.tree.map(lambda x: jnp.asarray(0.5 * rng.normal(size=x.shape), x.dtype), shapes)


@functools.lru_cache(maxsize=None)
def _grad_fn(backward: str, tile: int):
  """Jitted (params, h, i, s) -> ((loss, (R_h, beta)), grads w.r.t. params, h, i, s); the loss
  weighs every output differently so that no gradient is trivially shared."""
  layer = CoAttention(HIDDEN, tile=tile, backward=backward)

  def loss(p, h, i, s):
    r, beta = layer.apply(p, h, i, s, H_MASK, S_MASK)                    # (B, D), (B, Lh)
    return ((r * jnp.arange(1.0, D + 1)).sum() + (beta ** 2 * jnp.arange(1.0, LH + 1)).sum(),
            (r, beta))
  return jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2, 3), has_aux=True))


def _assert_trees_close(a, b, rtol=1e-5):
  """Every leaf equal to within rtol of the leaf's largest magnitude, or of a tenth of the
  tree's for a leaf that is zero up to rounding (the score bias: softmax ignores a shift)."""
  tree_scale = max(float(np.abs(np.asarray(x)).max()) for x in jax.tree.leaves(a))
  for (path, x), y in zip(jax.tree_util.tree_leaves_with_path(a), jax.tree.leaves(b)):
    x, y = np.asarray(x), np.asarray(y)
    scale = max(float(np.abs(x).max()), 0.1 * tree_scale, 1e-30)
    np.testing.assert_allclose(y, x, rtol=0, atol=rtol * scale,
                               err_msg=jax.tree_util.keystr(path))


@pytest.mark.parametrize("tile", [0, 3])
def test_forward_and_gradients_equal_autodiff(tile):
  p, (h, i, s) = _params(), _inputs()
  (_, out_a), grads_a = _grad_fn("autodiff", tile)(p, h, i, s)
  (_, out_m), grads_m = _grad_fn("max", tile)(p, h, i, s)
  for x, y in zip(out_a, out_m):                                          # R_h, beta
    np.testing.assert_array_equal(np.asarray(y), np.asarray(x))
  _assert_trees_close(grads_a, grads_m)
  # The test can fail: every parameter and input gradient is non-zero somewhere (but the
  # score's bias, zero up to rounding)...
  leaves = jax.tree_util.tree_leaves_with_path(grads_m)
  assert all(float(jnp.abs(g).max()) > 0 for path, g in leaves
             if "'score'" not in jax.tree_util.keystr(path) or path[-1].key != "bias")
  dh, ds = np.asarray(grads_m[1]), np.asarray(grads_m[3])
  # ... and zero exactly where the masks say: the padded k of S_u and the row with N_uh = 0
  # (whose beta is 0), and s of the rows with N_us = 0 (the fallback reads no s_bk).
  assert np.all(ds[~np.asarray(S_MASK)] == 0) and np.all(ds[S_LEN == 0] == 0)
  assert np.all(dh[2] == 0) and np.abs(ds[S_LEN > 0]).max() > 0


def test_inference_forward_is_the_same_computation():
  """Outside differentiation both backward settings run the same forward pass, bit for bit."""
  p, (h, i, s) = _params(), _inputs()
  outs = [jax.jit(CoAttention(HIDDEN, tile=3, backward=bw).apply)(p, h, i, s, H_MASK, S_MASK)
          for bw in ("autodiff", "max")]
  for x, y in zip(*outs):
    np.testing.assert_array_equal(np.asarray(y), np.asarray(x))


def test_tiled_equals_untiled():
  p, (h, i, s) = _params(seed=4), _inputs(seed=5)
  (loss_0, out_0), grads_0 = _grad_fn("max", 0)(p, h, i, s)
  (loss_3, out_3), grads_3 = _grad_fn("max", 3)(p, h, i, s)
  np.testing.assert_allclose(float(loss_3), float(loss_0), rtol=1e-6)
  _assert_trees_close(out_0, out_3, rtol=1e-6)
  _assert_trees_close(grads_0, grads_3)


def test_ties_of_the_max_give_the_same_parameter_gradient():
  """One behaviour twice in S_u (an exact tie of Eq. 16): autodiff splits the gradient between
  the two k, "max" gives it to the first; the parameter gradient and the summed gradient of the
  two copies agree."""
  p, (h, i, s) = _params(), _inputs()
  s = s.at[:, 1].set(s[:, 0])                                             # k = 0, 1 tied
  (_, out_a), (dp_a, dh_a, di_a, ds_a) = _grad_fn("autodiff", 3)(p, h, i, s)
  (_, out_m), (dp_m, dh_m, di_m, ds_m) = _grad_fn("max", 3)(p, h, i, s)
  _assert_trees_close(out_a, out_m, rtol=0)
  _assert_trees_close((dp_a, dh_a, di_a), (dp_m, dh_m, di_m))
  _assert_trees_close(ds_a[:, 0] + ds_a[:, 1], ds_m[:, 0] + ds_m[:, 1])
  _assert_trees_close(ds_a[:, 2:], ds_m[:, 2:])
  rows = S_LEN >= 2                                                       # both copies real
  assert np.all(np.asarray(ds_m)[rows, 1] == 0)                          # the tie went to k = 0
  assert np.abs(np.asarray(ds_a)[rows, 1]).max() > 0                     # autodiff split it


def test_config_switch_reaches_the_layer():
  schema = Schema(user_fields=(Field("u", 3),), item_fields=(Field("i", 3),),
                  scenario_fields=(Field("s", 3),), max_cur_len=2, max_all_len=2, name="t")
  config = get_config()
  assert from_config(config, schema).coattention_backward == "max"        # the default
  config.mscan.coattention_backward = "autodiff"
  assert from_config(config, schema).coattention_backward == "autodiff"
  with pytest.raises(ValueError, match="CoAttention.backward='x'"):
    CoAttention(HIDDEN, backward="x").init(jax.random.key(0), *_inputs(), H_MASK, S_MASK)
