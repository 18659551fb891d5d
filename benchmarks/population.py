"""Throughput of population training: P members in one vmapped step, in member-examples/s.

    .venv/bin/python -m benchmarks.population                          # M-scan, P = 1, 4, 16
    .venv/bin/python -m benchmarks.population --models=mscan,mix --sizes=tiny,small --members=1,4,16

Times `population.population_step` (the trainer's `train_step` vmapped over members, jitted with
the state donated, as `mscan_jax.training.population` runs it) on real batches of the synthetic
default preset (each member its own batch), after a warm-up step: the median of --repeats
timings of --steps steps. member-ex/s = P x batch x steps / seconds; the speed-up is against
P = 1 of the same model and size. The input pipeline is not timed (benchmarks/pipeline.py).
Sizes are the grid's (`experiments.grids.SIZES`).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

from experiments import grids
from mscan_jax import config as config_lib
from mscan_jax import models
from mscan_jax.data import datasets, pipeline
from mscan_jax.training import population, steps


def make_config(model: str, size: str, preset: str):
  c = config_lib.get_config()
  for k, v in {**grids.SIZES[size], "model": model, "data.preset": preset}.items():
    config_lib.set_field(c, k, v)
  return c


def bench(model: str, size: str, members: int, args) -> dict:
  config = make_config(model, size, args.preset)
  dataset = datasets.open_dataset(config.data)
  net = models.build_model(config, dataset.schema)
  rows = pipeline.split_rows(dataset, "train")
  it = pipeline.train_batches(dataset, rows, batch_size=config.train.batch_size, seed=0)
  one = [next(it) for _ in range(members)]
  batch = jax.device_put({k: np.stack([b[k] for b in one]) for k in one[0]})
  tx = steps.make_optimizer(config)
  states = []
  for m in range(members):
    p = steps.init_params(net, dataset.schema, m)
    states.append(steps.TrainState(step=jnp.zeros((), jnp.int32), params=p, opt_state=tx.init(p)))
  state = population._stack(states)
  hp = {name: jnp.full((members,), float(config_lib.get_path(config, key)), jnp.float32)
        for name, key in population.HYPER.items()}
  rng = jnp.stack([jax.random.PRNGKey(m) for m in range(members)])
  active = jnp.ones((members,), bool)
  step = jax.jit(lambda s, b: population.population_step(
      s, b, hp, rng, active, model=net, clip_norm=float(config.train.clip_norm)),
      donate_argnums=0)
  t0 = time.perf_counter()
  state, m = step(state, batch)
  jax.block_until_ready(m)
  compile_s = time.perf_counter() - t0
  times = []
  for _ in range(args.repeats):
    t0 = time.perf_counter()
    for _ in range(args.steps):
      state, m = step(state, batch)
    jax.block_until_ready(m)
    times.append(time.perf_counter() - t0)
  sec = statistics.median(times)
  ex = members * config.train.batch_size * args.steps
  return {"model": model, "size": size, "members": members, "compile_s": round(compile_s, 1),
          "member_ex_per_s": ex / sec, "batch": config.train.batch_size}


def main(argv=None) -> list[dict]:
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("--models", default="mscan")
  ap.add_argument("--sizes", default="small")
  ap.add_argument("--members", default="1,4,16")
  ap.add_argument("--preset", default="default")
  ap.add_argument("--steps", type=int, default=5)
  ap.add_argument("--repeats", type=int, default=3)
  ap.add_argument("--json_out", default="")
  args = ap.parse_args(argv)
  print(f"backend {jax.default_backend()} ({jax.devices()[0].device_kind}), "
        f"{jax.device_count()} device(s), {platform.machine()}; preset {args.preset}")
  print(f"{'model':<8} {'size':<6} {'P':>3} {'compile s':>9} {'member-ex/s':>12} {'speed-up':>8}")
  records = []
  for model in args.models.split(","):
    for size in args.sizes.split(","):
      base = None
      for p in (int(x) for x in args.members.split(",")):
        r = bench(model, size, p, args)
        base = base or r["member_ex_per_s"]
        r["speedup"] = r["member_ex_per_s"] / base
        records.append(r)
        print(f"{model:<8} {size:<6} {p:>3} {r['compile_s']:>9.1f} "
              f"{r['member_ex_per_s']:>12,.0f} {r['speedup']:>7.2f}x", flush=True)
  if args.json_out:
    with open(args.json_out, "w") as f:
      json.dump(records, f, indent=1)
  return records


if __name__ == "__main__":
  main()
