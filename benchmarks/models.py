"""Cost of every model (M-scan and the baselines) at two data shapes.

    .venv/bin/python -m benchmarks.models                        # every model, both shapes
    .venv/bin/python -m benchmarks.models --models=mix,ple --shapes=cloudtheme --steps=5
    .venv/bin/python -m benchmarks.models --grouped              # gather vs ragged_dot only

Shapes (schemas built by hand, batches from `dummy_batch`, batch 1024, embedding 32):
  aliccp      Ali-CCP-like: 14 fields (8 user, 5 item, 1 scenario), 3 scenarios, Ls 20, Lh 40
  cloudtheme  Cloud-Theme-like: 5 fields (2 user, 2 item, 1 scenario), 355 scenarios, Ls 20, Lh 40
Id vocabularies are 100k (user, item) so that the tables fit a laptop; they change the parameter
count of every model alike, which is why the table also gives the parameters outside the tables.

For each (model, shape), in a fresh process (so that peak memory is the model's own): parameter
count, compile time of the train step and of the inference step, train and inference examples/s
(median of `--steps` timed steps after one warm-up), and peak memory: the device's
`peak_bytes_in_use` where `memory_stats()` has it (GPU), else the process's peak RSS minus its RSS
before the model was built (CPU). The train step is `jax.value_and_grad` of
`objective.loss_fn` + optax adam under `jax.jit` (state donated), as the trainer's.

`--grouped` times `experts.grouped_matmul` ("gather" vs "ragged") at tower and gate sizes, the
measurement behind `experts.resolve_impl`'s "auto" rule. Not a test.

Whole run (16 processes): about 7.5 minutes on the project's shared 2-core CPU with --steps=2,
about 5 minutes on one H200 with --steps=5 (most of it process start and compilation).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

from mscan_jax import config as config_lib
from mscan_jax import models
from mscan_jax.data.schema import Field, Schema, dummy_batch
from mscan_jax.models import experts
from mscan_jax.training import objective



def _networks() -> tuple[str, ...]:
  """Every distinct trainable network of the registry's models (kind "model"): Single and
  Finetune are Mix's network with other training stages, so they are not timed twice."""
  seen, out = set(), []
  for name, spec in models.specs().items():
    if (spec.kind == "model" and spec.trainable and not spec.target_scenario
        and spec.factory not in seen):
      seen.add(spec.factory)
      out.append(name)
  return tuple(out)


MODELS = _networks()


def _fields(prefix: str, vocabs) -> tuple[Field, ...]:
  return tuple(Field(f"{prefix}{j}", v) for j, v in enumerate(vocabs))


SHAPES = {
    "aliccp": Schema(user_fields=_fields("user_", (100_000, 100, 10, 10, 10, 10, 100, 1000)),
                     item_fields=_fields("item_", (100_000, 1000, 1000, 10_000, 100)),
                     scenario_fields=_fields("scenario_", (4,)), max_cur_len=20, max_all_len=40,
                     name="aliccp-like"),
    "cloudtheme": Schema(user_fields=_fields("user_", (100_000, 100)),
                         item_fields=_fields("item_", (100_000, 1000)),
                         scenario_fields=_fields("scenario_", (356,)), max_cur_len=20,
                         max_all_len=40, name="cloudtheme-like"),
}


def _rss_bytes() -> int:
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024       # Linux: KiB


def _peak_memory(rss_before: int) -> tuple[float, str]:
  stats = jax.devices()[0].memory_stats() or {}
  if "peak_bytes_in_use" in stats:
    return stats["peak_bytes_in_use"] / 2**20, "device"
  return (_rss_bytes() - rss_before) / 2**20, "rss"


def _timed(fn, *args, steps: int) -> float:
  """Median seconds of one call over `steps` calls (after one warm-up); fn returns a pytree."""
  out = fn(*args)
  jax.block_until_ready(out)
  times = []
  for _ in range(steps):
    t = time.perf_counter()
    out = fn(*args)
    jax.block_until_ready(out)
    times.append(time.perf_counter() - t)
  return statistics.median(times)


def measure(name: str, shape: str, batch_size: int, steps: int) -> dict:
  rss_before = _rss_bytes()
  schema = SHAPES[shape]
  config = config_lib.get_config()
  config.model = name
  config.single.scenario = 1
  model = models.build_model(config, schema)
  batch = {k: jnp.asarray(v) for k, v in dummy_batch(schema, batch_size, seed=0).items()}
  init = jax.jit(lambda: model.init({"params": jax.random.key(0)}, batch, train=False))
  params = init()["params"]
  tables = sum(int(x.size) for p, x in jax.tree_util.tree_leaves_with_path(params)
               if p[-1].key == "embedding")
  n_params = sum(int(x.size) for x in jax.tree.leaves(params))
  tx = optax.adam(config.train.learning_rate)
  alpha = config.mscan.alpha

  def train_step(params, opt_state, batch, rng):
    def loss_of(p):
      out = model.apply({"params": p}, batch, train=True, rngs={"dropout": rng})
      return objective.loss_fn(out, batch["label"], batch["mask"], alpha)[0]
    loss, grads = jax.value_and_grad(loss_of)(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss

  def infer_step(params, batch):
    return objective.inference_score(model.apply({"params": params}, batch, train=False), 1.0)

  opt_state = jax.jit(tx.init)(params)
  rng = jax.random.key(1)
  t = time.perf_counter()
  train = jax.jit(train_step, donate_argnums=(0, 1)).lower(params, opt_state, batch, rng).compile()
  compile_train = time.perf_counter() - t
  t = time.perf_counter()
  infer = jax.jit(infer_step).lower(params, batch).compile()
  compile_infer = time.perf_counter() - t

  state = [params, opt_state]

  def one_train_step():
    state[0], state[1], loss = train(state[0], state[1], batch, rng)
    return loss

  t_train = _timed(one_train_step, steps=steps)
  t_infer = _timed(infer, state[0], batch, steps=steps)
  peak, kind = _peak_memory(rss_before)
  return {"model": name, "shape": shape, "params": n_params,
          "params_outside_tables": n_params - tables,
          "compile_train_s": compile_train, "compile_infer_s": compile_infer,
          "train_ex_per_s": batch_size / t_train, "infer_ex_per_s": batch_size / t_infer,
          "peak_mib": peak, "memory": kind, "device": jax.devices()[0].device_kind}


def _child(args) -> None:
  print("RESULT " + json.dumps(measure(args.model, args.shape, args.batch, args.steps)), flush=True)


def _run_isolated(name: str, shape: str, args) -> dict:
  cmd = [sys.executable, "-m", "benchmarks.models", "--child", f"--model={name}",
         f"--shape={shape}", f"--batch={args.batch}", f"--steps={args.steps}"]
  proc = subprocess.run(cmd, capture_output=True, text=True, timeout=args.timeout,
                        cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  for line in proc.stdout.splitlines():
    if line.startswith("RESULT "):
      return json.loads(line[len("RESULT "):])
  tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
  return {"model": name, "shape": shape, "error": " | ".join(tail)}


def _print_row(r: dict) -> None:
  if "error" in r:
    print(f"{r['model']:>14} {r['shape']:>10}  FAILED: {r['error']}", flush=True)
    return
  print(f"{r['model']:>14} {r['shape']:>10} {r['params'] / 1e6:9.2f}"
        f" {r['params_outside_tables'] / 1e6:9.2f}"
        f" {r['compile_train_s']:8.1f} {r['compile_infer_s']:8.1f} {r['train_ex_per_s']:10.0f}"
        f" {r['infer_ex_per_s']:10.0f} {r['peak_mib']:9.0f} ({r['memory']})", flush=True)


def grouped(args) -> None:
  """gather vs ragged_dot for one grouped product, forward and forward+backward."""
  print(f"grouped_matmul on {jax.devices()[0].device_kind}, B={args.batch}: "
        "median ms fwd / fwd+bwd")
  rng = np.random.default_rng(0)
  sizes = ((3, 576, 512), (3, 64, 64), (355, 576, 512), (355, 256, 128), (355, 576, 8))
  for g, k_in, k_out in sizes:
    x = jnp.asarray(rng.normal(size=(args.batch, k_in)), jnp.float32)
    kernel = jnp.asarray(rng.normal(size=(g, k_in, k_out)) / np.sqrt(k_in), jnp.float32)
    group = jnp.asarray(rng.integers(0, g, args.batch), jnp.int32)
    cells = []
    for impl in ("gather", "ragged"):
      fwd = jax.jit(lambda x, k, impl=impl: experts.grouped_matmul(x, group, k, impl))
      bwd = jax.jit(jax.grad(
          lambda k, x, impl=impl: experts.grouped_matmul(x, group, k, impl).sum()))
      cells.append(f"{impl} {_timed(fwd, x, kernel, steps=args.steps) * 1e3:8.1f} /"
                   f" {_timed(bwd, kernel, x, steps=args.steps) * 1e3:8.1f}")
    print(f"  G={g:4d} {k_in:4d}x{k_out:<4d} " + "   ".join(cells) +
          f"   auto={experts.resolve_impl('auto', g, k_in, k_out)}", flush=True)


def main() -> None:
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--models", default=",".join(MODELS))
  ap.add_argument("--shapes", default=",".join(SHAPES))
  ap.add_argument("--batch", type=int, default=1024)
  ap.add_argument("--steps", type=int, default=3, help="timed steps per measurement")
  ap.add_argument("--timeout", type=int, default=900, help="seconds per (model, shape)")
  ap.add_argument("--inprocess", action="store_true",
                  help="no subprocess (peak memory is then cumulative)")
  ap.add_argument("--grouped", action="store_true", help="only the grouped-product micro-benchmark")
  ap.add_argument("--json", default="", help="also write the rows to this file")
  ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
  ap.add_argument("--model", default="", help=argparse.SUPPRESS)
  ap.add_argument("--shape", default="", help=argparse.SUPPRESS)
  args = ap.parse_args()
  if args.child:
    return _child(args)
  if args.grouped:
    return grouped(args)
  names = [m for m in args.models.split(",") if m]
  shapes = [s for s in args.shapes.split(",") if s]
  for s in shapes:
    if s not in SHAPES:
      raise SystemExit(f"--shapes: unknown shape {s!r}; valid: {', '.join(SHAPES)}")
  valid = models.model_names()
  for m in names:
    if m not in valid:
      raise SystemExit(f"--models: unknown model {m!r}; valid: {', '.join(valid)}")
  print(f"batch {args.batch}, embedding 32, {args.steps} timed steps, "
        f"{jax.devices()[0].device_kind}")
  print(f"{'model':>14} {'shape':>10} {'params M':>9} {'non-emb M':>9} {'comp tr':>8}"
        f" {'comp inf':>8}"
        f" {'train ex/s':>10} {'infer ex/s':>10} {'peak MiB':>9}")
  rows = []
  for shape in shapes:
    for name in names:
      if args.inprocess:
        r = measure(name, shape, args.batch, args.steps)
      else:
        r = _run_isolated(name, shape, args)
      rows.append(r)
      _print_row(r)
  if args.json:
    with open(args.json, "w") as f:
      json.dump(rows, f, indent=1)


if __name__ == "__main__":
  main()
