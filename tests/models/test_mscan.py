"""Tests of M-scan (paper §3): shapes, gradients, masking, Eq. (4) GRU and Eq. (14)-(17) + (5)
co-attention against plain numpy loops, empty-sequence edge cases, ablations, bfloat16."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mscan_jax.config import get_config
from mscan_jax.data.schema import Field, Schema, dummy_batch
from mscan_jax.models import build_model
from mscan_jax.models.mscan import MScan, from_config
from mscan_jax.models.sequence import CoAttention, MaskedGRU

SCHEMA = Schema(
    user_fields=(Field("user_id", 10), Field("age", 7)),
    item_fields=(Field("item_id", 20), Field("category", 5)),
    scenario_fields=(Field("scenario", 5),),      # 4 scenarios
    max_cur_len=4, max_all_len=6, name="tiny")
B = 8


def _model(**kw) -> MScan:
  """A small M-scan; with the H_u context switch on (the path that reads every batch input);
  `test_defaults_are_the_papers_form` and the switch tests cover the paper's form."""
  args = dict(schema=SCHEMA, embed_dim=4, mlp=(16, 8), scenario_mlp=(8,), attn_mlp=(8, 4),
              dropout=0.1, history_context=True)
  args.update(kw)
  return MScan(**args)


def _batch(seed: int = 0) -> dict:
  return {k: jnp.asarray(v) for k, v in dummy_batch(SCHEMA, B, seed=seed).items()}


def _randomize(params, seed: int, scale: float = 0.3):
  """Every parameter (array or ShapeDtypeStruct) replaced by N(0, scale^2), biases included
  (drawn with numpy: no compilation per shape)."""
  rng = np.random.default_rng(seed)
  return jax.tree_util.tree_map(
      lambda x: jnp.asarray(scale * rng.normal(size=x.shape), x.dtype), params)


def _params(model: MScan, seed: int = 0):
  """Random parameters of `model` without compiling its init (shapes from `jax.eval_shape`)."""
  shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), _batch(), train=False))
  return _randomize(shapes, seed)


def _all_finite(tree) -> bool:
  return all(bool(jnp.all(jnp.isfinite(x))) for x in jax.tree_util.tree_leaves(tree))


@functools.lru_cache(maxsize=None)
def _run(model: MScan):
  """Jitted (params, batch) -> (outputs, grads of the sum of the outputs), train mode with a fixed
  dropout rng. Cached per model so each configuration compiles once for the whole module."""
  def f(p, batch):
    out = model.apply(p, batch, train=True, rngs={"dropout": jax.random.key(3)})
    return sum(v.sum() for v in out.values()), out
  grad_fn = jax.jit(jax.value_and_grad(f, has_aux=True))

  def run(p, batch):
    (_, out), grads = grad_fn(p, batch)
    return out, grads
  return run


# ---------------------------------------------------------------------------------------------
# Whole model


@pytest.mark.parametrize("use_saca,use_sbe,impl", [
    (True, True, "factored"), (True, True, "pairwise"), (True, False, "factored"),
    (True, False, "pairwise"), (False, True, "factored"), (False, False, "factored")])
def test_outputs_grads_and_ablation_params(use_saca, use_sbe, impl):
  model = _model(use_saca=use_saca, use_sbe=use_sbe, coattention=impl)
  params = _params(model)
  out, grads = _run(model)(params, _batch())

  assert set(out) == ({"y_m", "y_s"} if use_sbe else {"y_m"})
  for v in out.values():
    assert v.shape == (B,) and v.dtype == jnp.float32
  assert _all_finite(out) and _all_finite(grads)

  tree = params["params"]
  assert ("coattention" in tree) == use_saca
  assert ("scenario_tower" in tree) == use_sbe
  # Eq. (6) input width: u (2*4) + i (2*4) + s (1*4) + h_{N_us} (8) [+ R_h: item fields (8)
  # + click flag (4) + scenario id (4) of the H_u behaviours].
  assert tree["matching_tower"]["Dense_0"]["kernel"].shape[0] == 28 + (16 if use_saca else 0)
  # h_{N_us} really feeds the predictor (the GRU gets a gradient), and so does R_h.
  g = grads["params"]
  assert float(jnp.abs(g["scenario_encoder"]["kernel_in"]).sum()) > 0
  if use_saca:
    assert float(jnp.abs(g["coattention"]["kernel_0"]).sum()) > 0


def test_padding_changes_no_output_but_real_positions_do():
  batch = _batch(seed=1)
  cur_m = np.arange(SCHEMA.max_cur_len)[None] < np.asarray(batch["cur_len"])[:, None]   # (B, Ls)
  all_m = np.arange(SCHEMA.max_all_len)[None] < np.asarray(batch["all_len"])[:, None]   # (B, Lh)
  assert (~cur_m).any() and (~all_m).any() and cur_m.any() and all_m.any()
  rng = np.random.default_rng(7)
  noisy = dict(batch)
  noisy["cur_seq"] = jnp.where(cur_m[..., None], batch["cur_seq"],
                               rng.integers(1, 5, size=batch["cur_seq"].shape))
  noisy["all_seq"] = jnp.where(all_m[..., None], batch["all_seq"],
                               rng.integers(1, 5, size=batch["all_seq"].shape))
  # The click flag and scenario id of padded H_u positions are ignored too.
  noisy["all_click"] = jnp.where(all_m, batch["all_click"], 1)
  noisy["all_scenario"] = jnp.where(all_m, batch["all_scenario"], 3)
  assert not np.array_equal(noisy["cur_seq"], batch["cur_seq"])
  assert not np.array_equal(noisy["all_seq"], batch["all_seq"])

  row_c = int(np.flatnonzero(cur_m[:, 0])[0])
  row_a = int(np.flatnonzero(all_m[:, 0])[0])
  real_cur = dict(batch, cur_seq=batch["cur_seq"].at[row_c, 0, 0].set(
      batch["cur_seq"][row_c, 0, 0] % 19 + 1))
  real_all = dict(batch, all_seq=batch["all_seq"].at[row_a, 0, 0].set(
      batch["all_seq"][row_a, 0, 0] % 19 + 1))
  all_len = np.asarray(batch["all_len"])
  row_k = int(np.argmin(np.where(all_len > 0, all_len, 10**6)))   # shortest non-empty H_u
  real_click = dict(batch, all_click=batch["all_click"].at[row_k, 0].set(
      1 - batch["all_click"][row_k, 0]))

  for impl in ("factored", "pairwise"):
    model = _model(coattention=impl)
    params = _params(model, seed=2)
    run = _run(model)
    base, base_g = run(params, batch)
    pert, pert_g = run(params, noisy)
    for k in base:
      np.testing.assert_allclose(pert[k], base[k], rtol=0, atol=1e-6, err_msg=f"{impl} {k}")
    # Embedding gradients differ only at the ids the padding now holds; the rest is the same.
    np.testing.assert_allclose(pert_g["params"]["matching_tower"]["Dense_0"]["kernel"],
                               base_g["params"]["matching_tower"]["Dense_0"]["kernel"], atol=1e-6)
    for real, row in ((real_cur, row_c), (real_all, row_a), (real_click, row_k)):
      moved, _ = run(params, real)
      assert abs(float(moved["y_m"][row] - base["y_m"][row])) > 1e-6, impl   # float32 noise ~1e-8


def test_paths_share_parameters_and_agree():
  """A model trained with one co-attention path runs with the other: same tree, same numbers."""
  batch = _batch(seed=2)
  fact, pair = _model(coattention="factored"), _model(coattention="pairwise")
  params = _params(fact, seed=4)
  assert (jax.tree_util.tree_structure(params)
          == jax.tree_util.tree_structure(_params(pair, seed=4)))
  (a, ga), (b, gb) = _run(fact)(params, batch), _run(pair)(params, batch)
  np.testing.assert_allclose(a["y_m"], b["y_m"], rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(ga["params"]["coattention"]["kernel_0"],
                             gb["params"]["coattention"]["kernel_0"], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("all_empty", [False, True])
def test_empty_sequences_finite(all_empty):
  batch = _batch(seed=3)
  batch["cur_len"] = jnp.zeros(B, jnp.int32)
  batch["cur_seq"] = jnp.zeros_like(batch["cur_seq"])
  if all_empty:
    batch["all_len"] = jnp.zeros(B, jnp.int32)
    batch["all_seq"] = jnp.zeros_like(batch["all_seq"])
    batch["all_click"] = jnp.zeros_like(batch["all_click"])
    batch["all_scenario"] = jnp.zeros_like(batch["all_scenario"])
  for impl in ("factored", "pairwise"):
    model = _model(coattention=impl)
    out, grads = _run(model)(_params(model), batch)
    assert _all_finite(out) and _all_finite(grads), impl
    if all_empty:   # R_h = 0 and h_{N_us} = 0: the co-attention gets no gradient at all.
      assert float(jnp.abs(grads["params"]["coattention"]["kernel_0"]).sum()) == 0


def test_bfloat16_runs_with_float32_outputs_and_params():
  cfg = get_config()
  cfg.embed_dim, cfg.dtype, cfg.mscan.dropout = 4, "bfloat16", 0.1
  cfg.mscan.history_context = True
  cfg.mscan.mlp, cfg.mscan.attn_mlp, cfg.mscan.scenario_mlp = (16, 8), (8, 4), (8,)
  model = from_config(cfg, SCHEMA)
  assert model.dtype == jnp.bfloat16
  assert model == _model(dtype=jnp.bfloat16)
  params = _params(model)
  assert all(x.dtype == jnp.float32 for x in jax.tree_util.tree_leaves(params))
  out, grads = _run(model)(params, _batch())
  assert set(out) == {"y_m", "y_s"}
  assert all(v.dtype == jnp.float32 and v.shape == (B,) for v in out.values())
  assert _all_finite(out) and _all_finite(grads)
  assert all(x.dtype == jnp.float32 for x in jax.tree_util.tree_leaves(grads))


def test_from_config_and_registry():
  cfg = get_config()
  cfg.mscan.use_saca, cfg.mscan.coattention, cfg.mscan.attn_mlp = False, "pairwise", [7, 3]
  cfg.mscan.coattention_tile = 3
  model = build_model(cfg, SCHEMA)
  assert isinstance(model, MScan)
  assert (model.embed_dim, model.mlp, model.attn_mlp, model.use_saca, model.use_sbe) == (
      32, (512, 256), (7, 3), False, True)
  assert model.coattention == "pairwise" and model.gru_hidden == 0 and model.dtype == jnp.float32
  assert model.coattention_tile == 3
  hash(model)   # plain hashable fields only
  with pytest.raises(ValueError, match="naive"):
    _params(_model(coattention="naive"))
  with pytest.raises(ValueError, match="cur_seq"):
    bad = dict(_batch(), cur_seq=jnp.zeros((B, 3, 2), jnp.int32))
    jax.eval_shape(lambda: _model().init(jax.random.key(0), bad, train=False))


def test_gru_hidden_is_configurable():
  params = _params(_model(gru_hidden=5, use_saca=False, use_sbe=False))["params"]
  assert params["scenario_encoder"]["kernel_rec"].shape == (5, 15)
  assert params["scenario_encoder"]["kernel_in"].shape == (8, 15)


# ---------------------------------------------------------------------------------------------
# Eq. (4): the scenario encoder


def _sigmoid(x):
  return 1.0 / (1.0 + np.exp(-x))


def test_gru_matches_numpy_eq4_at_last_real_step():
  d, hd, length = 3, 5, 6
  lengths = np.array([0, 1, 4, 6])
  x = np.random.default_rng(0).normal(size=(4, length, d)).astype(np.float32)
  gru = MaskedGRU(hd)
  init = jax.jit(gru.init)(jax.random.key(0), x, lengths)   # the real initialisers run once
  assert init["params"]["kernel_rec"].shape == (hd, 3 * hd)
  np.testing.assert_allclose(init["params"]["kernel_rec"][:, :hd].T @ init["params"]["kernel_rec"][:, :hd],
                             np.eye(hd), atol=1e-5)   # each recurrent gate block is orthogonal
  params = _randomize(init, seed=1, scale=0.5)
  got = np.asarray(jax.jit(gru.apply)(params, x, lengths))

  p = jax.tree_util.tree_map(np.asarray, params["params"])
  w, u, bias = p["kernel_in"], p["kernel_rec"], p["bias"]
  wz, wr, wh = w[:, :hd], w[:, hd:2 * hd], w[:, 2 * hd:]
  uz, ur, uh = u[:, :hd], u[:, hd:2 * hd], u[:, 2 * hd:]
  bz, br, bh = bias[:hd], bias[hd:2 * hd], bias[2 * hd:]
  want = np.zeros((4, hd), np.float32)
  for b in range(4):
    h = np.zeros(hd)
    for k in range(lengths[b]):
      s = x[b, k]
      z = _sigmoid(s @ wz + h @ uz + bz)
      r = _sigmoid(s @ wr + h @ ur + br)
      h = (1 - z) * h + z * np.tanh(s @ wh + (r * h) @ uh + bh)
    want[b] = h
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
  assert np.all(got[0] == 0)   # cur_len = 0 -> h = 0


# ---------------------------------------------------------------------------------------------
# Eq. (14)-(17) and (5): Scenario-Aware Co-Attention


def _ffn_numpy(p, x):
  a = np.maximum(x @ p["kernel_0"] + p["bias_0"], 0)
  a = np.maximum(a @ p["Dense_1"]["kernel"] + p["Dense_1"]["bias"], 0)
  return float((a @ p["score"]["kernel"] + p["score"]["bias"])[0])


def test_coattention_matches_numpy_loop_both_paths():
  bsz, lh, ls, dh, di, ds = 6, 5, 4, 3, 2, 4     # distinct widths catch a wrong kernel split
  rng = np.random.default_rng(0)
  h = rng.normal(size=(bsz, lh, dh)).astype(np.float32)
  i = rng.normal(size=(bsz, di)).astype(np.float32)
  s = rng.normal(size=(bsz, ls, ds)).astype(np.float32)
  cur_len = np.array([0, 2, 4, 1, 0, 3])
  all_len = np.array([5, 3, 0, 1, 0, 5])
  h_mask = np.arange(lh)[None] < all_len[:, None]
  s_mask = np.arange(ls)[None] < cur_len[:, None]

  # Eq. (14)-(17), Eq. (5) by loops; documented fallback for N_us = 0 (s_k = 0), R_h = 0 for N_uh = 0.
  ref = CoAttention((8, 4))
  params = _randomize(jax.eval_shape(ref.init, jax.random.key(0), h, i, s, h_mask, s_mask),
                      seed=5, scale=0.5)
  p = jax.tree_util.tree_map(np.asarray, params["params"])
  want_r = np.zeros((bsz, dh))
  want_beta = np.zeros((bsz, lh))
  for b in range(bsz):
    c = np.zeros(all_len[b])
    for j in range(all_len[b]):
      if cur_len[b] == 0:
        c[j] = _ffn_numpy(p, np.concatenate([h[b, j], i[b], np.zeros(ds)]))
      else:
        c[j] = max(_ffn_numpy(p, np.concatenate([h[b, j], i[b], s[b, k]])) for k in range(cur_len[b]))
    if all_len[b]:
      e = np.exp(c - c.max())
      want_beta[b, :all_len[b]] = e / e.sum()
      want_r[b] = (want_beta[b, :all_len[b], None] * h[b, :all_len[b]]).sum(0)

  got = {}
  for impl in ("factored", "pairwise"):
    layer = CoAttention((8, 4), impl=impl)

    def f(prm, hh, ss):
      r, bt = layer.apply(prm, hh, i, ss, h_mask, s_mask)
      return r.sum() + (bt ** 2).sum(), (r, bt)
    (_, (r_h, beta)), grads = jax.jit(jax.value_and_grad(f, argnums=(0, 1, 2), has_aux=True))(
        params, h, s)
    np.testing.assert_allclose(beta, want_beta, rtol=1e-5, atol=1e-6, err_msg=impl)
    np.testing.assert_allclose(r_h, want_r, rtol=1e-5, atol=1e-6, err_msg=impl)
    # Gradients stay finite with all-masked rows, w.r.t. parameters and inputs.
    assert _all_finite(grads), impl
    got[impl] = r_h
  np.testing.assert_allclose(got["factored"], got["pairwise"], rtol=1e-5, atol=1e-6)
  assert np.all(np.asarray(got["factored"])[[2, 4]] == 0)   # N_uh = 0 -> R_h = 0


@pytest.mark.parametrize("impl", ["factored", "pairwise"])
def test_coattention_tiles_give_the_same_outputs_and_gradients(impl):
  """The pair scores computed `tile` rows at a time (lax.map + checkpoint, the batch padded to a
  multiple of the tile) equal the whole-batch computation, outputs and gradients with respect to
  the parameters and every input, with masked, empty-S_u and empty-H_u rows; 11 rows are not a
  multiple of the tiles 2, 3 and 4 (tile 11 and 16: one piece)."""
  bsz, lh, ls, dh, di, ds = 11, 5, 4, 3, 2, 4
  rng = np.random.default_rng(7)
  h = rng.normal(size=(bsz, lh, dh)).astype(np.float32)
  i = rng.normal(size=(bsz, di)).astype(np.float32)
  s = rng.normal(size=(bsz, ls, ds)).astype(np.float32)
  cur_len = np.array([0, 2, 4, 1, 0, 3, 4, 0, 2, 1, 3])
  all_len = np.array([5, 3, 0, 1, 0, 5, 2, 4, 5, 0, 1])
  h_mask = np.arange(lh)[None] < all_len[:, None]
  s_mask = np.arange(ls)[None] < cur_len[:, None]
  params = _randomize(jax.eval_shape(CoAttention((8, 4)).init, jax.random.key(0), h, i, s,
                                     h_mask, s_mask), seed=11, scale=0.5)
  w = rng.normal(size=(bsz, dh)).astype(np.float32)   # a loss that weighs every output

  def run(tile):
    layer = CoAttention((8, 4), impl=impl, tile=tile)

    def f(prm, hh, ii, ss):
      r, bt = layer.apply(prm, hh, ii, ss, h_mask, s_mask)
      return (r * w).sum() + (bt ** 2).sum(), (r, bt)
    (_, out), grads = jax.jit(jax.value_and_grad(f, argnums=(0, 1, 2, 3), has_aux=True))(
        params, h, i, s)
    return out, grads

  (want_r, want_beta), want_g = run(0)
  assert _all_finite(want_g)
  for tile in (2, 3, 4, 11, 16):
    (r, beta), g = run(tile)
    np.testing.assert_allclose(r, want_r, rtol=1e-5, atol=1e-5, err_msg=f"tile {tile}")
    np.testing.assert_allclose(beta, want_beta, rtol=1e-5, atol=1e-5, err_msg=f"tile {tile}")
    jax.tree_util.tree_map(functools.partial(np.testing.assert_allclose, rtol=1e-5, atol=1e-5,
                                             err_msg=f"tile {tile}"), g, want_g)
  assert np.abs(np.asarray(want_g[0]["params"]["score"]["kernel"])).sum() > 0
  with pytest.raises(ValueError, match="tile"):
    CoAttention((8, 4), tile=-1).apply(params, h, i, s, h_mask, s_mask)


# ---------------------------------------------------------------------------------------------
# Switches that are not the paper's form (each measured against the paper's in the study)


def test_defaults_are_the_papers_form():
  c = get_config()
  m = from_config(c, SCHEMA)
  assert (m.history_context, m.saca_scenario_aware, m.scenario_in_matching, m.fusion) == (
      False, True, True, "logit")
  # The paper's h_bj is the item alone: R_h has the item fields' width (2*4), not + 2*4.
  paper = _model(history_context=False)
  tree = _params(paper)["params"]
  assert tree["matching_tower"]["Dense_0"]["kernel"].shape[0] == 28 + 8
  assert "history_click" not in tree and "history_scenario" not in tree


def test_target_attention_ignores_the_current_scenario_behaviours():
  """saca_scenario_aware=False: c_j = FFN([h_j ⊕ i ⊕ 0]) for every row (no max over S_u), with
  the same parameters as the scenario-aware layer."""
  rng = np.random.default_rng(1)
  h = rng.normal(size=(4, 5, 3)).astype(np.float32)
  i = rng.normal(size=(4, 2)).astype(np.float32)
  s = rng.normal(size=(4, 3, 4)).astype(np.float32)
  h_mask = np.ones((4, 5), bool)
  s_mask = np.arange(3)[None] < np.array([0, 1, 3, 2])[:, None]
  aware, target = CoAttention((8, 4)), CoAttention((8, 4), scenario_aware=False)
  params = _randomize(jax.eval_shape(aware.init, jax.random.key(0), h, i, s, h_mask, s_mask), 2)
  r_t, _ = target.apply(params, h, i, s, h_mask, s_mask)
  r_t2, _ = target.apply(params, h, i, -s + 1.0, h_mask, s_mask)        # other S_u
  np.testing.assert_allclose(r_t, r_t2, atol=1e-6)
  # Equal to the scenario-aware layer where S_u is empty (its documented fallback) ...
  r_a, _ = aware.apply(params, h, i, s, h_mask, s_mask)
  np.testing.assert_allclose(r_t[0], r_a[0], atol=1e-6)
  # ... and not elsewhere.
  assert not np.allclose(r_t[2], r_a[2], atol=1e-4)


def test_scenario_kept_out_of_the_matching_tower_and_probability_fusion():
  batch = _batch()
  other = dict(batch, scenario=(batch["scenario"] % 4) + 1)           # every scenario id changed
  for keep_out in (False, True):
    m = _model(scenario_in_matching=not keep_out, dropout=0.0)
    p = _params(m)
    y, y2 = (m.apply(p, b, train=False) for b in (batch, other))
    assert np.allclose(y["y_m"], y2["y_m"]) == keep_out                 # s only via y_s
    assert not np.allclose(y["y_s"], y2["y_s"])
  m = _model(fusion="probability", dropout=0.0)
  out = m.apply(_params(m), batch, train=False)
  assert set(out) == {"y_m", "y_e"}
  with pytest.raises(ValueError, match="fusion"):
    _model(fusion="sum").apply(_params(_model()), batch, train=False)
