"""Every registered model (parametrised over the registry, so a model is tested the moment it is
registered): shapes, gradients, training, per-scenario routing; and the baselines' shared
inputs, grouped products and the single / finetune stage contracts (Appendix A.2)."""

import functools

import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from mscan_jax import config as config_lib
from mscan_jax import models
from mscan_jax.data.schema import Field, Schema, dummy_batch
from mscan_jax.models import aesm2, experts, inputs
from mscan_jax.training import objective

P = 5
SCHEMA = Schema(user_fields=(Field("user_id", 20), Field("user_segment", 4)),
                item_fields=(Field("item_id", 30), Field("item_category", 5)),
                scenario_fields=(Field("scenario_id", P + 1),), max_cur_len=4, max_all_len=6)
# Models with stacked per-scenario parameters (`group_*`); m2m and aesm2 only have the scenario
# embedding as scenario-specific parameters (see their docstrings).
PER_SCENARIO = ("shared_bottom", "mmoe", "ple", "star")
B = 30


def distinct_networks() -> list[str]:
  """One name per distinct trainable network of the registry (Single and Finetune are Mix's
  network with other training stages, so they are not compiled twice)."""
  seen, out = set(), []
  for name, spec in models.specs().items():
    if spec.trainable and spec.factory not in seen:
      seen.add(spec.factory)
      out.append(name)
  return out


NETWORKS = distinct_networks()


def tiny_config(name: str, **baseline) -> ml_collections.ConfigDict:
  c = config_lib.get_config()
  c.model = name
  c.embed_dim = 4
  c.single.scenario = 2
  c.baseline.tower = (8,)
  c.baseline.expert = (8, 6)
  c.baseline.num_experts = 3
  c.baseline.num_specific_experts = 2
  c.baseline.dropout = 0.0
  c.mscan.mlp, c.mscan.scenario_mlp, c.mscan.attn_mlp = (8,), (4,), (8, 4)
  c.mscan.dropout = 0.0
  c.reference.dim = 4
  for key, value in baseline.items():
    c.baseline[key] = value
  return c


def tiny_batch(seed: int = 0) -> dict:
  batch = dummy_batch(SCHEMA, B, seed=seed)
  batch["scenario"][:, 0] = np.arange(B) % P + 1            # every scenario present
  # Each sample's history lies in its own scenario, so a prediction may read only its own
  # scenario's parameters (the routing test); other scenarios' behaviours are M-scan's own test.
  batch["all_scenario"] = np.where(batch["all_scenario"] > 0, batch["scenario"][:, :1], 0)
  return {k: jnp.asarray(v) for k, v in batch.items()}


def numpy_params(init_fn, seed: int = 0):
  """Parameters of the shapes `init_fn()` (a module's `init`) returns, drawn with numpy at
  LeCun-like scales. A real `init` compiles one threefry draw per parameter, seconds each on
  the shared 2-core machine; tracing it (`jax.eval_shape`) still checks that `init` builds."""
  shapes = jax.eval_shape(init_fn)["params"]
  rng = np.random.default_rng(seed)

  def draw(path, leaf):
    name = path[-1].key
    if name.endswith("scale"):
      return (1 + 0.1 * rng.normal(size=leaf.shape)).astype(leaf.dtype)
    std = 0.05 if name == "embedding" else 1 / np.sqrt(leaf.shape[-2]) if leaf.ndim >= 2 else 0.1
    return (std * rng.normal(size=leaf.shape)).astype(leaf.dtype)

  return jax.tree_util.tree_map_with_path(draw, shapes)


def _perturb_scenario(params, k: int):
  """Adds noise to scenario k's parameters: row k of every scenario-id table and row k-1 of every
  stacked per-scenario parameter (`group_*`). Returns (params, number of group_* leaves, number
  of leaves perturbed)."""
  flat = flax.traverse_util.flatten_dict(params)
  n_group = n_perturbed = 0
  rng = np.random.default_rng(k)
  for path, leaf in flat.items():
    leaf = np.array(leaf)
    if path[-1].startswith("group_"):
      assert leaf.shape[0] == P, path
      leaf[k - 1] += rng.normal(size=leaf.shape[1:])
      n_group += 1
      n_perturbed += 1
    elif "scenario_scenario_id" in path and path[-1] == "embedding":
      leaf[k] += rng.normal(size=leaf.shape[1:])
      n_perturbed += 1
    flat[path] = leaf
  return flax.traverse_util.unflatten_dict(flat), n_group, n_perturbed


K = 3          # the perturbed scenario
STEPS = 6


@functools.lru_cache(maxsize=None)
def run_model(model):
  """Everything the per-model tests check, from ONE compilation per model: eval outputs, eval
  outputs with scenario K's parameters perturbed, and STEPS adam steps on a fixed batch."""
  batch = tiny_batch()
  params = numpy_params(lambda: model.init(jax.random.key(0), batch, train=False))
  perturbed, n_group, n_perturbed = _perturb_scenario(params, K)
  tx = optax.adam(1e-2)
  rngs = jax.random.split(jax.random.key(1), STEPS + 1)

  def loss_of(p, rng):
    o = model.apply({"params": p}, batch, train=True, rngs={"dropout": rng})
    return objective.loss_fn(o, batch["label"], batch["mask"], 0.1)[0]

  @jax.jit
  def run(params, perturbed, rngs):
    out = model.apply({"params": params}, batch, train=False)
    y_perturbed = model.apply({"params": perturbed}, batch, train=False)["y_m"]
    train_out = model.apply({"params": params}, batch, train=True, rngs={"dropout": rngs[-1]})

    def step(carry, rng):
      p, opt = carry
      loss, grads = jax.value_and_grad(loss_of)(p, rng)
      finite = jnp.all(jnp.stack([jnp.isfinite(g).all() for g in jax.tree.leaves(grads)]))
      updates, opt = tx.update(grads, opt, p)
      return (optax.apply_updates(p, updates), opt), (loss, finite)

    _, (losses, finite) = jax.lax.scan(step, (params, tx.init(params)), rngs[:STEPS])
    return out, y_perturbed, train_out, losses, finite

  out, y_perturbed, train_out, losses, finite = run(params, perturbed, rngs)
  return {"out": out, "train_out": train_out, "y": np.asarray(out["y_m"]),
          "y_perturbed": np.asarray(y_perturbed),
          "losses": np.asarray(losses), "grads_finite": np.asarray(finite),
          "n_group": n_group, "n_perturbed": n_perturbed,
          "scenario": np.asarray(batch["scenario"][:, 0])}


# Both grouped products run inside whole models (one compilation per model, so not both for each).
IMPL = {"shared_bottom": "ragged", "ple": "ragged", "mmoe": "gather", "star": "gather"}


def build(name: str):
  return models.build_model(tiny_config(name, grouped_matmul=IMPL.get(name, "auto")), SCHEMA)


def test_single_mix_and_finetune_are_one_network():
  assert build("single") == build("mix") == build("finetune")


def check_shapes_gradients_and_training(r: dict) -> None:
  assert set(r["out"]) <= {"y_m", "y_s"} and "y_m" in r["out"]   # eval has no aux loss
  for key, y in r["out"].items():
    assert y.shape == (B,) and y.dtype == jnp.float32, key
  assert np.isfinite(r["y"]).all() and r["grads_finite"].all()
  assert r["losses"][-1] < r["losses"][0], r["losses"]


def check_routing(r: dict) -> None:
  """A prediction depends only on its own scenario's parameters; where the model has
  scenario parameters, its own scenario's predictions do depend on them."""
  own = r["scenario"] == K
  assert own.any() and (~own).any()
  np.testing.assert_allclose(r["y_perturbed"][~own], r["y"][~own], rtol=0, atol=1e-6)
  if r["n_perturbed"]:
    assert np.all(np.abs(r["y_perturbed"][own] - r["y"][own]) > 1e-6)


@pytest.mark.parametrize("name", NETWORKS)
def test_shapes_finite_and_adam_steps_lower_the_loss(name):
  check_shapes_gradients_and_training(run_model(build(name)))


@pytest.mark.parametrize("name", NETWORKS)
def test_prediction_depends_only_on_its_own_scenarios_parameters(name):
  r = run_model(build(name))
  check_routing(r)
  if name in PER_SCENARIO:
    assert r["n_group"] > 0


def test_only_aesm2_adds_a_training_loss_term():
  for name in ("mix", "aesm2"):
    out = run_model(build(name))["train_out"]
    assert set(out) == ({"y_m", "aux_loss"} if name == "aesm2" else {"y_m"})
  aux = run_model(build("aesm2"))["train_out"]["aux_loss"]
  assert aux.shape == (B,) and bool((aux >= 0).all())


def test_grouped_matmul_matches_a_per_sample_product(monkeypatch):
  rng = np.random.default_rng(0)
  x = rng.normal(size=(8, 3)).astype(np.float32)
  kernel = rng.normal(size=(4, 3, 2)).astype(np.float32)
  shared = rng.normal(size=(3, 2)).astype(np.float32)
  group = np.array([2, 0, 3, 2, 1, 0, 2, 3])
  want = np.stack([x[n] @ kernel[group[n]] for n in range(8)])
  want_star = np.stack([x[n] @ (kernel[group[n]] * shared) for n in range(8)])
  monkeypatch.setattr(experts, "GATHER_CHUNK_BYTES", 2 * 3 * 2 * 4)    # chunks of 2 samples
  for impl in ("gather", "ragged"):
    both = jax.jit(lambda x, g, k, w, impl=impl: (experts.grouped_matmul(x, g, k, impl),
                                                  experts.grouped_matmul(x, g, k, impl, shared=w)))
    with jax.default_matmul_precision("highest"):                      # no TF32 on a GPU
      got, got_star = both(x, group, kernel, shared)
    np.testing.assert_allclose(np.asarray(got), want, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(np.asarray(got_star), want_star, rtol=1e-5, atol=1e-6)
  with pytest.raises(ValueError, match="grouped_matmul"):
    experts.resolve_impl("loop", 3, 1, 1)


def test_scenario_tower_gives_each_sample_its_own_scenarios_tower():
  # Tower k (k = 0, 1, 2) on h (B, 2), all entries positive: hidden layer (k + 1) * I, output
  # weights [1, 1] and bias 100 k, so Tower_k(h) = (k + 1) (h_0 + h_1) + 100 k.
  p = 3
  ks = np.arange(p, dtype=np.float32)
  params = {"GroupedDense_0": {"group_kernel": (ks + 1)[:, None, None] * np.eye(2, dtype=np.float32),
                               "group_bias": np.zeros((p, 2), np.float32)},
            "GroupedDense_1": {"group_kernel": np.ones((p, 2, 1), np.float32),
                               "group_bias": 100 * ks[:, None]}}
  h = np.random.default_rng(0).uniform(0.5, 1.5, size=(7, 2)).astype(np.float32)
  sid = np.array([2, 0, 1, 1, 0, 2, 2])
  want = (sid + 1) * h.sum(-1) + 100 * sid
  for impl in ("gather", "ragged"):
    tower = experts.ScenarioTower(p, (2,), impl=impl)
    with jax.default_matmul_precision("highest"):                      # no TF32 on a GPU
      got = tower.apply({"params": params}, h, sid, train=False)
    assert got.shape == (7,) and got.dtype == jnp.float32
    np.testing.assert_allclose(np.asarray(got), want, rtol=1e-6)

def test_aesm2_selects_experts_by_kl_distance():
  # 3 scenarios, 4 experts; q[:, k] = expert k's distribution over the scenarios.
  q = np.array([[0.8, 0.1, 1 / 3, 0.2],
                [0.1, 0.8, 1 / 3, 0.2],
                [0.1, 0.1, 1 / 3, 0.6]])
  log_q = jnp.asarray(np.log(q)[None].repeat(2, 0), jnp.float32)       # (2, 3, 4)
  sid = jnp.array([0, 2])                                               # scenario rows
  selected, kl = aesm2.select_experts(log_q, sid, top_k_specific=1, top_k_shared=1)
  # Specific: the expert with the most mass on the scenario (0 for s=0, 3 for s=2); shared: the
  # uniform expert 2 (KL 0).
  np.testing.assert_array_equal(np.asarray(selected), [[1, 0, 1, 0], [0, 0, 1, 1]])
  np.testing.assert_allclose(np.asarray(kl), [-np.log(0.8), -np.log(0.6)], rtol=1e-5)


def test_aux_loss_is_added_to_the_objective_as_a_masked_mean():
  out = {"y_m": jnp.zeros(3), "aux_loss": jnp.array([1.0, 2.0, 30.0])}
  loss, aux = objective.loss_fn(out, jnp.array([1.0, 0.0, 1.0]), jnp.array([1.0, 1.0, 0.0]), 0.1)
  assert float(aux["loss_aux"]) == pytest.approx(1.5)
  assert float(loss) == pytest.approx(np.log(2) + 1.5, rel=1e-6)


def test_din_pooling_ignores_padding_and_is_a_convex_combination():
  pool = inputs.DinPooling(hidden=(5,))
  rng = np.random.default_rng(0)
  q = jnp.asarray(rng.normal(size=(3, 4)), jnp.float32)
  keys = jnp.asarray(rng.normal(size=(3, 5, 4)), jnp.float32)
  lengths = jnp.array([2, 5, 0])
  v = {"params": numpy_params(lambda: pool.init(jax.random.key(0), q, keys, lengths))}
  apply = jax.jit(pool.apply)
  out = apply(v, q, keys, lengths)
  garbage = keys.at[0, 2:].set(100.0)                                   # only padding of row 0
  np.testing.assert_allclose(apply(v, q, garbage, lengths), out, atol=1e-6)
  np.testing.assert_array_equal(np.asarray(out[2]), 0.0)                # no behaviour: zeros
  same = jnp.broadcast_to(keys[:, :1], keys.shape)                      # all behaviours alike
  np.testing.assert_allclose(apply(v, q, same, lengths)[:2], keys[:2, 0], rtol=1e-5)


@pytest.mark.parametrize("behaviours", inputs.BEHAVIOURS)
def test_behaviour_switch_decides_which_sequences_a_baseline_reads(behaviours):
  module = inputs.BaselineInputs(SCHEMA, 4, behaviours)
  batch = tiny_batch()
  v = {"params": numpy_params(lambda: module.init(jax.random.key(0), batch))}
  apply = jax.jit(module.apply)
  x = apply(v, batch)["x"]
  assert x.shape == (B, inputs.input_dim(SCHEMA, 4, behaviours))
  reads_all = behaviours.startswith("cur+all")
  assert ("din_all" in v["params"]) == reads_all
  assert ("history_click" in v["params"]) == (behaviours == "cur+all+context")
  other = tiny_batch(seed=1)
  for seq, reads in (("cur", behaviours != "none"), ("all", reads_all)):
    changed = dict(batch, **{f"{seq}_seq": other[f"{seq}_seq"], f"{seq}_len": other[f"{seq}_len"]})
    differs = not np.allclose(apply(v, changed)["x"], x)
    assert differs == reads, (seq, behaviours)
  # With context, the click flags of H_u are read too (and only then).
  flipped = dict(batch, all_click=1 - batch["all_click"])
  assert (not np.allclose(apply(v, flipped)["x"], x)) == (behaviours == "cur+all+context")


def test_unknown_behaviours_and_model_names_are_clear_errors():
  with pytest.raises(ValueError, match="config.baseline.behaviours"):
    models.build_model(tiny_config("mix", behaviours="everything"), SCHEMA)
  with pytest.raises(ValueError, match="valid: .*aesm2.*finetune.*m2m.*mix.*mmoe.*ple"):
    models.get_spec("dcn")
  assert set(NETWORKS) <= set(models.model_names())


def test_single_trains_and_evaluates_on_its_scenario_only():
  config = tiny_config("single")
  (subdir, stage), = models.stages(config)
  assert subdir == "" and stage.model == "single"
  assert stage.data.train_scenarios == (2,) and stage.data.eval_scenarios == (2,)
  assert config.data.train_scenarios == () and config.data.eval_scenarios == ()   # not mutated


def test_finetune_starts_from_the_mix_checkpoint():
  config = tiny_config("finetune")
  (mix_dir, mix), (ft_dir, ft) = models.stages(config)
  assert (mix_dir, mix.model, mix.train.init_from) == ("mix", "mix", "")
  assert mix.data.train_scenarios == () and mix.data.eval_scenarios == ()
  assert ft_dir == "" and ft.train.init_from == "mix"
  assert ft.data.train_scenarios == (2,) and ft.data.eval_scenarios == (2,)
  # The two stages build the same network, so every mix parameter initialises finetune.
  shapes = [jax.tree.map(jnp.shape, jax.eval_shape(
      lambda c=c: models.build_model(c, SCHEMA).init(jax.random.key(0), tiny_batch(), train=False)))
      for c in (mix, ft)]
  assert shapes[0] == shapes[1]


@pytest.mark.parametrize("name", ["single", "finetune"])
def test_single_and_finetune_require_a_valid_target_scenario(name):
  config = tiny_config(name)
  config.single.scenario = 0
  with pytest.raises(ValueError, match="config.single.scenario"):
    models.stages(config)
  config.single.scenario = P + 1
  with pytest.raises(ValueError, match="config.single.scenario"):
    models.build_model(config, SCHEMA)
