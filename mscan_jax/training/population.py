"""Population training: P runs of one shape trained together, as one jitted program.

A grid's runs that share every shape (the same model, switches and sizes; datasets of one schema)
differ only in values that can be traced: the seed (initialisation, data order, dropout), the
learning rate, the weight decay, alpha of Eq. (11), c of Eq. (12) (inference only), the data seed
and the synthetic benchmark's dials (`MEMBER_KEYS`). Such runs are trained together by
`jax.vmap` of the trainer's own `steps.train_step` over their train states, batches, dropout keys
and hyper-parameters, so one compiled program advances all of them, as PureJaxRL does for agents:

    state  (P, ...)   every leaf of the parameters and Adam moments gets a leading member axis
    batch  (P, B, ...) each member's own batch, from its own shuffled order (its seed, its data)
    hp     (P,)       learning_rate, weight_decay, alpha

Each member is a run of its own in every other respect: a `loop.Run`, set up by `loop.set_up`
(including a resume from its checkpoint) and driven by the same rules as a run alone (the
`loop.Run` methods; only how a step is applied differs). It evaluates on its own validation split
on its own schedule, stops early on its own (a stopped member keeps its best parameters and its
state stops changing: the update is masked with `jnp.where(active, new, old)`), saves its own
checkpoints and writes a normal run folder (`loop.Run.finish`): config.json, metrics.jsonl,
predictions.parquet, results.json (with its own `stop_reason`). A member that diverges fails
alone (its folder gets no results.json); the others go on. Members may start at different steps
(resumed at different checkpoints).

Exactness: a member computes what the same run computes alone (`launch.py`), up to the float
rounding of batched matrix products (tests/training/test_population.py compares them).

    python -m mscan_jax.training.population --spec=members.json
    # members.json: [{"workdir": "runs/mscan-s0", "overrides": {"seed": 0, ...}}, ...]

`experiments.run_grid --population=P` writes such specs and starts one process per group.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import time
from typing import Any, Iterator, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from mscan_jax import config as config_lib
from mscan_jax import models
from mscan_jax.data import pipeline
from mscan_jax.data import datasets
from mscan_jax.training import loop, steps

# Config keys in which the members of one population may differ (traced values, or data of one
# schema). Everything else must be equal: it fixes the shapes of the compiled program.
MEMBER_KEYS = ("seed", "train.learning_rate", "train.weight_decay", "mscan.alpha", "mscan.c",
               "train.init_from", "data.seed",
               # the reference scorers' own step, copied into train.* by their stage
               "reference.learning_rate", "reference.weight_decay",
               *(f"data.synthetic.{d}" for d in datasets.dials("synthetic")))
# Traced per-member hyper-parameters of the step: name -> config key.
HYPER = {"learning_rate": "train.learning_rate", "weight_decay": "train.weight_decay",
         "alpha": "mscan.alpha"}


class PopulationError(config_lib.ConfigError):
  """Members that cannot share one program (different shapes), or an invalid member list."""


def _flat(config: ml_collections.ConfigDict, prefix: str = "") -> dict[str, Any]:
  out = {}
  for k, v in config.items():
    if isinstance(v, ml_collections.ConfigDict):
      out.update(_flat(v, f"{prefix}{k}."))
    else:
      out[f"{prefix}{k}"] = v
  return out


def shape_key(config: ml_collections.ConfigDict) -> str:
  """What must be equal for two runs to share a population: the config without `MEMBER_KEYS`.
  Two configs with the same key can be members of one population (if their data's schemas match,
  which `train_population` checks once the data is open)."""
  flat = {k: v for k, v in _flat(config).items() if k not in MEMBER_KEYS}
  return json.dumps(flat, sort_keys=True, default=str)


def check_members(configs: Sequence[ml_collections.ConfigDict]) -> None:
  """Raises PopulationError naming the first key (outside MEMBER_KEYS) in which members differ."""
  if not configs:
    raise PopulationError("a population needs at least one member")
  first = {k: v for k, v in _flat(configs[0]).items() if k not in MEMBER_KEYS}
  for i, c in enumerate(configs[1:], 1):
    other = {k: v for k, v in _flat(c).items() if k not in MEMBER_KEYS}
    diff = sorted(k for k in set(first) | set(other) if first.get(k) != other.get(k))
    if diff:
      raise PopulationError(
          f"population member {i} differs from member 0 in {diff[:5]}: members may differ only "
          f"in {', '.join(MEMBER_KEYS)} (the rest fixes the program's shapes)")
  if jax.process_count() > 1:
    raise PopulationError("population training runs in one process (jax.process_count() == 1)")
  if configs[0].shard_embeddings:
    raise PopulationError("population training does not shard embeddings "
                          "(config.shard_embeddings=False)")


# ----------------------------------------------------------------------------- the step

def population_step(state: steps.TrainState, batch: dict, hp: dict, base_rng: jax.Array,
                    active: jax.Array, *, model, clip_norm: float
                    ) -> tuple[steps.TrainState, dict]:
  """One step of every member: `steps.train_step` vmapped over the leading member axis.

  state (P, ...), batch (P, B, ...), hp {name: (P,)}, base_rng (P, 2), active (P,) bool.
  A member with active False keeps its state (step counter included); its metrics are computed
  and ignored.
  """
  def one(st, b, h, rng, on):
    tx = steps.optimizer(clip_norm, h["learning_rate"], h["weight_decay"])
    new, metrics = steps.train_step(st, b, model=model, tx=tx, alpha=h["alpha"], base_rng=rng)
    new = jax.tree.map(lambda n, o: jnp.where(on, n, o), new, st)
    return new, metrics
  return jax.vmap(one)(state, batch, hp, base_rng, active)


def _stack(trees: Sequence[Any]) -> Any:
  return jax.tree.map(lambda *xs: jnp.stack(xs), *trees)


@jax.jit
def _take(tree: Any, i: jax.Array) -> Any:
  """Member i of a stacked tree (one compilation for every i)."""
  return jax.tree.map(lambda x: x[i], tree)


@jax.jit
def _put(stacked: Any, tree: Any, i: jax.Array) -> Any:
  """`stacked` with member i replaced by member i of `tree` (both stacked)."""
  return jax.tree.map(lambda s, t: s.at[i].set(t[i]), stacked, tree)


# ----------------------------------------------------------------------------- input

def _stacked_batches(members: list[loop.Run], live: list[bool], prefetch: int
                     ) -> Iterator[dict[str, np.ndarray]]:
  """Batches (P, B, ...): member i's next training batch while `live[i]`, else its last one (its
  update is masked out). Each member reads its own order (`pipeline.train_batches` with its
  seed, from its own step), so a member sees what its run alone would see. Prepared `prefetch`
  steps ahead on a background thread (`steps.in_background`); closing the generator stops it."""
  its = [pipeline.train_batches(st.dataset, st.rows["train"], batch_size=st.config.train.batch_size,
                                seed=st.config.seed, start_step=st.step,
                                prefetch=st.config.data.prefetch, workers=1) for st in members]
  last: list[dict | None] = [None] * len(members)

  def make() -> dict[str, np.ndarray]:
    for i, it in enumerate(its):
      if live[i] or last[i] is None:
        last[i] = next(it)
    return {k: np.stack([b[k] for b in last]) for k in last[0]}

  def stacked() -> Iterator[dict[str, np.ndarray]]:
    try:
      while True:
        yield make()
    finally:                    # the members' pipelines stop their gather threads
      for it in its:
        it.close()

  return steps.in_background(stacked(), prefetch, "population_input")


# ----------------------------------------------------------------------------- the loop

def train_population(configs: Sequence[ml_collections.ConfigDict], workdirs: Sequence[str]
                     ) -> list[dict | BaseException]:
  """Trains the members (one single-stage config and run folder each) together; returns each
  member's results (as `train.train_and_evaluate`) or the error that stopped it alone
  (`steps.DivergenceError`). Holds every member's folder lock throughout."""
  if len(configs) != len(workdirs) or len(set(map(os.path.abspath, workdirs))) != len(workdirs):
    raise PopulationError("a population needs one distinct run folder per member")
  for c in configs:
    config_lib.validate(c, models.model_names())
    if len(models.stages(c)) != 1:
      raise PopulationError(
          f"config.model={c.model!r} has several stages: population members are single stages "
          "(the grid starts a later stage with train.init_from)")
  check_members(configs)
  with contextlib.ExitStack() as locks:
    for w in workdirs:
      locks.enter_context(loop.hold(w))
    return _train_population(configs, workdirs)


def _train_population(configs, workdirs) -> list[dict | BaseException]:
  members = [loop.set_up(c, w) for c, w in zip(configs, workdirs)]
  for i, st in enumerate(members[1:], 1):
    diff = members[0].dataset.schema.model_differences(st.dataset.schema)
    if diff:
      raise PopulationError(f"population member {i}'s data ({st.dataset.path}) differs from "
                            f"member 0's ({members[0].dataset.path}) in its schema: {diff}")
  eval_fn = members[0].eval_kwargs["eval_fn"]
  for st in members:          # one compiled evaluation step for every member
    st.eval_kwargs["eval_fn"] = eval_fn

  config = configs[0]
  model = models.build_model(config, members[0].dataset.schema)
  step_fn = jax.jit(
      lambda s, b, h, r, a: population_step(s, b, h, r, a, model=model,
                                            clip_norm=float(config.train.clip_norm)),
      donate_argnums=0)
  hp = {name: jnp.asarray([float(config_lib.get_path(st.config, key)) for st in members], jnp.float32)
        for name, key in HYPER.items()}
  base_rng = jnp.stack([jax.random.PRNGKey(st.config.seed + 2) for st in members])
  state = _stack([st.state for st in members])
  best = _stack([st.best_params for st in members])
  for st in members:          # the stacked copies are the only state from here on
    st.state = st.best_params = None

  results: list[dict | BaseException | None] = [None] * len(members)
  live = [not st.should_stop for st in members]
  n = len(members)
  batch_size = config.train.batch_size
  bar = None
  if config.train.progress:
    from tqdm import tqdm
    total = sum(max(0, st.total_steps - st.step) for st in members) * batch_size
    bar = tqdm(total=total, unit="ex", unit_scale=True, dynamic_ncols=True,
               desc=f"train {config.model} x{n}")
  pending: list[list[dict]] = [[] for _ in members]
  t_log = [time.perf_counter()] * n
  since_log = [0] * n
  # Steady-state speed: the loop's wall time after the first step (which compiles), less
  # validation and checkpoints (as the single-run driver measures a run).
  timing = {"start": None, "eval_s": 0.0, "steps": 0, "member_steps": 0}
  own = [0] * n                 # each member's timed steps
  batches = _stacked_batches(members, live, config.data.prefetch)
  try:
    while any(live):
      active_now = list(live)
      batch = jax.device_put(next(batches))
      state, m = step_fn(state, batch, hp, base_rng, jnp.asarray(active_now))
      first = timing["steps"] == 0
      timing["steps"] += 1
      due = []
      for i, st in enumerate(members):
        if not active_now[i]:
          continue
        st.step += 1
        since_log[i] += 1
        pending[i].append(m)
        if st.log_due(st.step):
          due.append((i, st.eval_due(st.step)))
      if due or first:
        jax.block_until_ready(m)
      if first:
        timing["start"] = time.perf_counter()
      else:
        timing["member_steps"] += sum(active_now)
        for i in np.flatnonzero(active_now):
          own[i] += 1
      for i, do_eval in due:
        st = members[i]
        try:
          host = [{k: float(v[i]) for k, v in h.items()} for h in jax.device_get(pending[i])]
          st.log_train(host, since_log[i], time.perf_counter() - t_log[i])
        except steps.DivergenceError as e:
          results[i], live[i] = e, False
          print(f"error: population member {i} ({st.workdir}): {e}", file=sys.stderr)
          continue
        if bar is not None:
          bar.update(since_log[i] * batch_size)
        pending[i], since_log[i] = [], 0
        if do_eval:
          t_eval = time.perf_counter()
          if st.validate(_take(state.params, i)):
            best = _put(best, state.params, i)
          st.save_checkpoint(_take(state, i), _take(best, i))
          timing["eval_s"] += time.perf_counter() - t_eval
          if st.should_stop:
            live[i] = False
        t_log[i] = time.perf_counter()
  finally:
    batches.close()
    if bar is not None:
      bar.close()

  train_s = (time.perf_counter() - timing["start"] - timing["eval_s"]) if timing["start"] else 0.0
  member_ex_s = timing["member_steps"] * batch_size / max(train_s, 1e-9)
  for i, st in enumerate(members):
    if results[i] is not None:    # failed alone
      st.ckpt.close()
      continue
    st.state, st.best_params = _take(state, i), _take(best, i)
    # Its own speed inside the population (steps after the first, which compiles), the loop's
    # time with validation included; the population's total in "population".
    st.timing = {"train_examples_per_s": own[i] * batch_size / max(train_s, 1e-9),
                 "train_steps_timed": own[i], "train_seconds": train_s,
                 "eval_seconds": timing["eval_s"]}
    results[i] = st.finish({"population": {
        "size": n, "member": i, "member_examples_per_s": round(member_ex_s, 1)}})
  return results


# ----------------------------------------------------------------------------- command line

def load_spec(path: str) -> tuple[list[ml_collections.ConfigDict], list[str]]:
  """A members file: a JSON list of {"workdir": ..., "overrides": {dotted key: value}} (the
  overrides apply to `mscan_jax.config.get_config()`; a "config": "tiny" entry starts from the
  tiny config). Relative workdirs are relative to the current directory."""
  try:
    with open(path) as f:
      spec = json.load(f)
  except (OSError, json.JSONDecodeError) as e:
    raise PopulationError(f"{path}: cannot read the population spec: {e}") from None
  if not isinstance(spec, list) or not spec:
    raise PopulationError(f"{path}: a population spec is a non-empty JSON list of members")
  configs, workdirs = [], []
  for j, member in enumerate(spec):
    if not isinstance(member, dict) or "workdir" not in member:
      raise PopulationError(f"{path}: member {j} needs a \"workdir\"")
    if not isinstance(member["workdir"], str) or not member["workdir"]:
      raise PopulationError(f"{path}: member {j}: \"workdir\" must be a folder name (a "
                            f"non-empty string), got {member['workdir']!r}")
    overrides = member.get("overrides") or {}
    if not isinstance(overrides, dict):
      raise PopulationError(f"{path}: member {j}: \"overrides\" must be an object "
                            f"{{\"dotted.key\": value}}, got {overrides!r}")
    try:                                  # the member's config, checked before any training
      config = config_lib.get_config(member.get("config") or None)
      for key, value in overrides.items():
        config_lib.set_field(config, key, value)
      config_lib.validate(config, models.model_names())
      stages = models.stages(config)
    except config_lib.ConfigError as e:
      raise PopulationError(f"{path}: member {j}: {e}") from None
    if len(stages) != 1:
      raise PopulationError(f"{path}: member {j} ({config.model}) has several stages; give "
                            "train.init_from to run its last stage")
    (subdir, stage_config), = stages
    stage_config, stage_dir = loop.stage_location(member["workdir"], subdir, stage_config)
    configs.append(stage_config)
    workdirs.append(stage_dir)
  return configs, workdirs


def main(argv: Sequence[str] | None = None) -> int:
  import argparse
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--spec", required=True, help="JSON list of members (see the module doc)")
  args = parser.parse_args(argv)
  from mscan_jax.data.schema import DataError
  from mscan_jax.training import distributed, rundir
  rundir.die_with_parent()
  distributed.retain_host_memory()
  try:
    configs, workdirs = load_spec(args.spec)
    results = train_population(configs, workdirs)
  except (config_lib.ConfigError, DataError, rundir.RunDirError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  failed = 0
  for w, r in zip(workdirs, results):
    if isinstance(r, BaseException):
      failed += 1
      print(f"error: {w}: {r}", file=sys.stderr)
    else:
      print(f"{w}: mean scenario AUC {r['auc'].get('mean_per_scenario', float('nan')):.4f}  "
            f"#All {r['auc']['all']:.4f}  best step {r['best_step']}")
  return 1 if failed else 0


if __name__ == "__main__":
  sys.exit(main())
