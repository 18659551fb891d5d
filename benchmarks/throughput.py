"""Training and inference throughput of M-scan at the shapes of the paper's two datasets.

    .venv/bin/python -m benchmarks.throughput                        # both shapes, both paths
    .venv/bin/python -m benchmarks.throughput --shapes=aliccp --impls=factored --steps=10
    .venv/bin/python -m benchmarks.throughput --impls=factored --backwards=max,autodiff --rounds=3
    .venv/bin/python -m benchmarks.throughput --breakdown            # + where a step's time goes
    .venv/bin/python benchmarks/throughput.py --dtypes=float32,bfloat16 --json_out=tp.json

Runs on whatever backend JAX finds (CPU, GPU), with the batch split over every device. It
measures the real trainer: `steps.train_step` / `steps.eval_step` with `steps.make_optimizer`,
jitted with the trainer's shardings and the state donated, on batches of
`mscan_jax.data.schema.dummy_batch` already on the devices (the input pipeline is not timed).

Shapes (paper App. A.1; vocabulary sizes are approximations of the raw datasets, `--vocab=small`
caps every table at 10,000 rows):
  aliccp      14 fields: 9 user (101 user id, 121, 122, 124-129 profile), 4 item (205 item id,
              206 category, 207 shop, 216 brand), 1 scenario (301, 3 scenarios); Ls 20, Lh 40.
              (The project's Ali-CCP loader also keeps item field 210: 15 fields.)
  cloudtheme  5 fields: 1 user (user id), 3 item (item id, leaf category, top category),
              1 scenario (theme id, 355 scenarios); Ls 5, Lh 10.
Model: embedding 32, matching FFN [512, 256], attention FFN [200, 80], scenario FFN [64],
history context on (the defaults of `mscan_jax.config`); batch 1024.

For each (shape, co-attention path and backward pass, dtype): compile time of the train and eval steps, train and
inference examples/s (after a warm-up step, median of --repeats timings of --steps steps each),
the step's memory (XLA's buffer assignment: arguments + outputs + temporaries - donated; and the
device's peak where the backend reports it), and the achieved FLOP/s next to the machine's
measured matrix-multiply FLOP/s (an (N, N) @ (N, N) product in the same dtype).

FLOPs are counted analytically per example from the parameter shapes: the multiply-adds of every
matrix product (2 FLOPs each), i.e. the GRU (Eq. 4), the co-attention FFN (Eq. 15) on Lh x Ls
pairs plus Lh fallback scores, the read-out (Eq. 5) and the two towers (Eq. 6-7); elementwise
work is not counted. A training example counts what the path runs (`mscan_train_flops`): 3x
the forward pass (backward = 2x forward), except for the co-attention's logits (Eq. 14-16):
with backward "autodiff" 3x their forward, plus one more forward where the batch is tiled
(`jax.checkpoint` recomputes a tile); with "max" one forward of every pair (no gradient)
plus 3x the forward of the Lh selected pairs and Lh fallback scores (recomputed, then
differentiated). XLA's own count (`cost_analysis`) is printed beside it; it counts elementwise work too, and a
`scan` body once, not Ls times.

`--profile` traces two factored training steps with `jax.profiler` and prints the operations
that take the most time (summed over threads or streams), each with the JAX operation it comes
from (HLO metadata): the per-op profile of one step.

`--retain_host_memory` calls `distributed.retain_host_memory()` before JAX starts: XLA:CPU's
per-step temporaries then reuse the same pages instead of page-faulting fresh ones every step
(the CPU time and page faults per step are printed for each training run).

`--rounds=N` repeats the timings of every (shape, path, dtype) in N alternating rounds after
compiling them all (so that the noise of a shared machine hits each alike); the median over
every round is reported.

`--breakdown` times variants of the factored training step to show where its time goes:
forward only, forward + backward (no optimizer), the full step, the step without the
co-attention (use_saca=False), and the full step with every table capped at 10,000 rows
(the dense Adam update of large tables).
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import os
import collections
import platform
import re
import resource
import sys
import tempfile
import time
from typing import Any, Callable

if __package__ in (None, ""):   # run as a file (python benchmarks/throughput.py): the repo root
  sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

if "--retain_host_memory" in sys.argv:   # before JAX starts its threads (see the flag's help)
  from mscan_jax.training import distributed
  RETAINED = distributed.retain_host_memory()
else:
  RETAINED = False

import jax               # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np       # noqa: E402

from mscan_jax import config as config_lib  # noqa: E402
from mscan_jax import models  # noqa: E402
from mscan_jax.data import datasets  # noqa: E402
from mscan_jax.models import sequence  # noqa: E402
from mscan_jax.data.schema import Field, Schema, dummy_batch  # noqa: E402
from mscan_jax.training import objective, sharding, steps  # noqa: E402

SMALL_VOCAB = 10_000


@dataclasses.dataclass(frozen=True)
class Shape:
  user: tuple[tuple[str, int], ...]     # (field, distinct values); vocab = values + 1 (0 = padding)
  item: tuple[tuple[str, int], ...]
  scenario: tuple[tuple[str, int], ...]
  max_cur_len: int
  max_all_len: int


SHAPES = {
    "aliccp": Shape(
        user=(("101", 238_000), ("121", 98), ("122", 14), ("124", 3), ("125", 8), ("126", 4),
              ("127", 4), ("128", 3), ("129", 5)),
        item=(("205", 467_000), ("206", 6_800), ("207", 264_000), ("216", 80_000)),
        scenario=(("301", 3),),
        max_cur_len=20, max_all_len=40),
    "cloudtheme": Shape(
        user=(("user_id", 350_000),),
        item=(("item_id", 150_000), ("leaf_cate_id", 4_000), ("cate_level1_id", 100)),
        scenario=(("theme_id", 355),),
        max_cur_len=5, max_all_len=10),
}


def make_schema(name: str, vocab: str = "full") -> Schema:
  shape = SHAPES[name]

  def fields(spec):
    return tuple(Field(f, (min(n, SMALL_VOCAB) if vocab == "small" else n) + 1) for f, n in spec)
  return Schema(user_fields=fields(shape.user), item_fields=fields(shape.item),
                scenario_fields=fields(shape.scenario), max_cur_len=shape.max_cur_len,
                max_all_len=shape.max_all_len, name=f"{name}-like")


def make_config(impl: str, dtype: str, batch: int, **mscan) -> Any:
  c = config_lib.get_config()
  c.mscan.coattention = impl
  if impl == "pairwise":            # the literal Eq. (15) is differentiated as written
    c.mscan.coattention_backward = "autodiff"
  c.dtype = dtype
  c.train.batch_size = batch
  for k, v in mscan.items():
    c.mscan[k] = v
  return c


# ----------------------------------------------------------------------------- FLOPs

def _dense_flops(layer: dict) -> int:
  """2 * in * out for each `kernel` directly under `layer` (a Dense), else 0."""
  k = layer.get("kernel")
  return 2 * int(np.prod(k.shape)) if k is not None else 0


def _coattention_flops(ca: dict, schema: Schema, impl: str, d_in: int) -> dict[str, int]:
  """Matrix-product FLOPs of one example's co-attention (Eq. 14-17, 5), by piece: `first` the
  first layer on every pair (Eq. 15; factored: the O(Lh + Ls) products), `tail` the rest of
  the FFN on one pair, `readout` R_h (Eq. 5), `pairs` Lh x Ls, `lh` Lh."""
  ls, lh = schema.max_cur_len, schema.max_all_len
  d_cat, h0 = ca["kernel_0"].shape                                          # Dh + Di + Ds
  d_i = d_s = d_in                                                          # i, s_bk: Fi * D
  d_h = d_cat - d_i - d_s
  if impl == "pairwise":                                                    # Eq. (15) as written
    first = 2 * (lh * ls + lh) * d_cat * h0
  else:                                                                     # factored first layer
    first = 2 * (lh * d_h + d_i + ls * d_s) * h0
  tail = sum(_dense_flops(v) for k, v in ca.items() if k.startswith("Dense_") or k == "score")
  return {"first": first, "tail": tail, "readout": 2 * lh * d_h, "pairs": lh * ls, "lh": lh}


def mscan_forward_flops(params: dict, schema: Schema, impl: str) -> dict[str, int]:
  """Matrix-product FLOPs of one example's forward pass, per part, from the parameter shapes."""
  ls = schema.max_cur_len
  out = {}
  gru = params["scenario_encoder"]
  d_in, three_h = gru["kernel_in"].shape
  h = three_h // 3
  out["gru"] = ls * 2 * (d_in * three_h + h * three_h)                     # Eq. (4), Ls steps
  if "coattention" in params:
    f = _coattention_flops(params["coattention"], schema, impl, d_in)
    out["coattention"] = f["first"] + (f["pairs"] + f["lh"]) * f["tail"] + f["readout"]
  out["towers"] = sum(_dense_flops(v) for tower in ("matching_tower", "scenario_tower")
                      for v in params.get(tower, {}).values())              # Eq. (6), (7)
  return out


def mscan_train_flops(params: dict, schema: Schema, impl: str, backward: str,
                      tiled: bool) -> dict[str, int]:
  """Matrix-product FLOPs of one example's training step as the path runs it, per part.

  Every part costs 3x its forward (backward = 2x forward) but the co-attention's logits
  (Eq. 14-16): backward "autodiff" (and the pairwise path) 3x their forward, + 1x where `tiled`
  (each tile's forward is recomputed under `jax.checkpoint`); backward "max" (factored path)
  the forward of every pair once, without gradient, + 3x the forward of the selected pairs
  (j, k*_j) and the fallback scores (Lh + Lh FFNs on top of the factored first layer).
  """
  fwd = mscan_forward_flops(params, schema, impl)
  out = {k: 3 * v for k, v in fwd.items()}
  if "coattention" in params:
    d_in = params["scenario_encoder"]["kernel_in"].shape[0]
    f = _coattention_flops(params["coattention"], schema, impl, d_in)
    logits = fwd["coattention"] - f["readout"]                              # all pairs + fallback
    if backward == "max" and impl == "factored":
      selected = f["first"] + 2 * f["lh"] * f["tail"]                       # (j, k*_j) + fallback
      out["coattention"] = logits + 3 * selected + 3 * f["readout"]
    else:
      out["coattention"] = (3 + int(tiled)) * logits + 3 * f["readout"]
  return out


def matmul_flops_per_s(dtype, n: int, repeats: int) -> float:
  """The machine's measured matrix-multiply rate: an (n, n) @ (n, n) product in `dtype`."""
  k1, k2 = jax.random.split(jax.random.key(0))
  a = jax.random.normal(k1, (n, n), dtype)
  b = jax.random.normal(k2, (n, n), dtype)
  f = jax.jit(lambda x, y: x @ y)
  jax.block_until_ready(f(a, b))
  times = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    jax.block_until_ready(f(a, b))
    times.append(time.perf_counter() - t0)
  return 2 * n ** 3 / float(np.median(times))


# ----------------------------------------------------------------------------- timing

def _time_steps(run_steps: Callable[[int], None], steps: int, repeats: int,
                cpu: list | None = None) -> list[float]:
  """Wall times of `repeats` runs of `steps` steps; appends (user, system) CPU seconds and page
  faults of each run to `cpu` (on a shared machine the CPU time is the steadier figure)."""
  times = []
  for _ in range(repeats):
    r0 = resource.getrusage(resource.RUSAGE_SELF)
    t0 = time.perf_counter()
    run_steps(steps)
    times.append(time.perf_counter() - t0)
    r1 = resource.getrusage(resource.RUSAGE_SELF)
    if cpu is not None:
      cpu.append((r1.ru_utime - r0.ru_utime, r1.ru_stime - r0.ru_stime, r1.ru_minflt - r0.ru_minflt))
  return times


def _cost(compiled) -> dict:
  try:
    ca = compiled.cost_analysis()
    ca = ca[0] if isinstance(ca, (list, tuple)) else ca
    return dict(ca or {})
  except Exception:                                   # not every backend implements it
    return {}


def _memory_bytes(compiled) -> int | None:
  try:
    m = compiled.memory_analysis()
    return int(m.argument_size_in_bytes + m.output_size_in_bytes + m.temp_size_in_bytes
               - m.alias_size_in_bytes)
  except Exception:
    return None


def _device_peak_bytes() -> int | None:
  stats = jax.local_devices()[0].memory_stats()
  return int(stats["peak_bytes_in_use"]) if stats and "peak_bytes_in_use" in stats else None


@dataclasses.dataclass
class Setup:
  """A model's jitted steps with the trainer's shardings, and one batch on the devices."""
  schema: Schema
  model: Any
  tx: Any
  state: Any
  batch: dict
  mesh: Any
  state_sharding: Any

  @classmethod
  def build(cls, schema: Schema, config, batch_size: int) -> "Setup":
    model = models.build_model(config, schema)
    tx = steps.make_optimizer(config)
    mesh = sharding.make_mesh()
    if batch_size % mesh.size:
      raise SystemExit(f"--batch={batch_size} must be divisible by the {mesh.size} devices")
    params = jax.device_get(steps.init_params(model, schema, 0))
    new_state = lambda p: steps.TrainState(step=jnp.zeros((), jnp.int32), params=p,  # noqa: E731
                                           opt_state=tx.init(p))
    state_sharding = sharding.state_shardings(jax.eval_shape(new_state, params), mesh)
    state = jax.jit(new_state, out_shardings=state_sharding)(params)
    batch = steps.to_global(dummy_batch(schema, batch_size, seed=1), sharding.data_sharding(mesh))
    return cls(schema, model, tx, state, batch, mesh, state_sharding)

  def train_fn(self, config):
    return jax.jit(functools.partial(steps.train_step, model=self.model, tx=self.tx,
                                     alpha=float(config.mscan.alpha),
                                     base_rng=jax.random.PRNGKey(2)),
                   donate_argnums=0,
                   out_shardings=(self.state_sharding, sharding.replicated(self.mesh)))

  def eval_fn(self):
    return jax.jit(functools.partial(steps.eval_step, model=self.model),
                   out_shardings=sharding.data_sharding(self.mesh))


class Bench:
  """One (shape, co-attention path, backward pass, dtype): built and compiled by `__init__`,
  timed by `time_round` (called once per round), summarised by `record`."""

  def __init__(self, shape: str, impl: str, backward: str, dtype: str, args):
    config = make_config(impl, dtype, args.batch, coattention_backward=backward)
    self.schema = make_schema(shape, args.vocab)
    t0 = time.perf_counter()
    s = Setup.build(self.schema, config, args.batch)
    setup_s = time.perf_counter() - t0
    self.steps = args.steps
    if impl == "pairwise" and args.pairwise_steps > 0:
      self.steps = args.pairwise_steps
    self.args, self.impl, self.backward = args, impl, config.mscan.coattention_backward
    self.tiled = 0 < config.mscan.coattention_tile < args.batch
    self.rec: dict[str, Any] = {
        "shape": shape, "impl": impl, "backward": self.backward, "dtype": dtype,
        "batch": args.batch, "steps": self.steps, "repeats": args.repeats, "setup_s": setup_s,
        "num_params": int(sum(x.size for x in jax.tree.leaves(s.state.params)))}
    t0 = time.perf_counter()
    self.step = s.train_fn(config).lower(s.state, s.batch).compile()
    self.rec["compile_train_s"] = time.perf_counter() - t0
    cost = _cost(self.step)
    self.rec["xla_train_flops_per_example"] = cost.get("flops", float("nan")) / args.batch
    self.rec["train_memory_bytes"] = _memory_bytes(self.step)
    self.state, self.batch = s.state, s.batch
    self.state, m = self.step(self.state, self.batch)                     # warm-up
    jax.block_until_ready(m)
    self.c = jnp.asarray(datasets.resolve_c(config), jnp.float32)
    t0 = time.perf_counter()
    self.ev = s.eval_fn().lower(self.state.params, self.batch, self.c).compile()
    self.rec["compile_eval_s"] = time.perf_counter() - t0
    self.rec["eval_memory_bytes"] = _memory_bytes(self.ev)
    jax.block_until_ready(self.ev(self.state.params, self.batch, self.c))
    self.train_times, self.eval_times, self.cpu = [], [], []

  def _run_train(self, n: int) -> None:
    for _ in range(n):
      self.state, metrics = self.step(self.state, self.batch)
    jax.block_until_ready(metrics)

  def _run_eval(self, n: int) -> None:
    for _ in range(n):
      out = self.ev(self.state.params, self.batch, self.c)
    jax.block_until_ready(out)

  def time_round(self) -> None:
    self.train_times += _time_steps(self._run_train, self.steps, self.args.repeats, self.cpu)
    self.eval_times += _time_steps(self._run_eval, self.steps, self.args.repeats)

  def record(self) -> dict:
    rec, steps, batch = self.rec, self.steps, self.args.batch
    rec["timings"] = len(self.train_times)
    rec["train_step_s"] = float(np.median(self.train_times)) / steps
    rec["train_cpu_user_s_per_step"] = float(np.median([c[0] for c in self.cpu])) / steps
    rec["train_cpu_sys_s_per_step"] = float(np.median([c[1] for c in self.cpu])) / steps
    rec["train_page_faults_per_step"] = float(np.median([c[2] for c in self.cpu])) / steps
    rec["train_examples_per_s"] = batch / rec["train_step_s"]
    rec["eval_step_s"] = float(np.median(self.eval_times)) / steps
    rec["infer_examples_per_s"] = batch / rec["eval_step_s"]
    rec["device_peak_bytes"] = _device_peak_bytes()
    params = jax.device_get(self.state.params)
    parts = mscan_forward_flops(params, self.schema, self.impl)
    fwd = sum(parts.values())
    train_parts = mscan_train_flops(params, self.schema, self.impl, self.backward, self.tiled)
    rec["forward_flops_per_example"] = {**parts, "total": fwd}
    rec["train_flops_per_example_parts"] = train_parts
    rec["train_flops_per_example"] = sum(train_parts.values())
    rec["train_flops_per_s"] = rec["train_flops_per_example"] * rec["train_examples_per_s"]
    rec["infer_flops_per_s"] = fwd * rec["infer_examples_per_s"]
    return rec


def breakdown(shape: str, dtype: str, args) -> list[dict]:
  """Median step time of variants of the factored training step (see the module docstring)."""
  rows = []
  steps = args.steps

  def timed(name, fn, *fargs, donate=False):
    compiled = fn.lower(*fargs).compile()
    holder = list(fargs)

    def run(n):
      out = None
      for _ in range(n):
        out = compiled(*holder)
        if donate:
          holder[0] = out[0]
      jax.block_until_ready(out)
    run(1)
    t = float(np.median(_time_steps(run, steps, args.repeats))) / steps
    rows.append({"variant": name, "step_ms": 1e3 * t})
    print(f"  {name:44s} {1e3 * t:9.1f} ms", flush=True)

  for label, vocab, mscan in (("full step", args.vocab, {}),
                              ("full step, use_saca=False", args.vocab, {"use_saca": False}),
                              (f"full step, tables <= {SMALL_VOCAB} rows", "small", {})):
    config = make_config("factored", dtype, args.batch, **mscan)
    s = Setup.build(make_schema(shape, vocab), config, args.batch)
    if label == "full step":
      model, alpha, rng = s.model, float(config.mscan.alpha), jax.random.PRNGKey(2)

      def loss_of(params, batch):
        out = model.apply({"params": params}, batch, train=True, rngs={"dropout": rng})
        return objective.loss_fn(out, batch["label"], batch["mask"], alpha)[0]
      timed("forward (train mode, loss)", jax.jit(loss_of), s.state.params, s.batch)
      timed("forward + backward (no optimizer)", jax.jit(jax.grad(loss_of)), s.state.params,
            s.batch)
    timed(label, s.train_fn(config), s.state, s.batch, donate=True)
    del s
  return rows


def profile_ops(shape: str, dtype: str, args, top: int = 20) -> list[dict]:
  """Per-operation time of the factored training step from a `jax.profiler` trace.

  Every trace event whose name is an instruction of the compiled step counts (CPU: the XLA
  thread pool; GPU: the kernels of the device's streams); the source of each instruction is
  its `op_name` metadata.
  """
  config = make_config("factored", dtype, args.batch)
  s = Setup.build(make_schema(shape, args.vocab), config, args.batch)
  step = s.train_fn(config).lower(s.state, s.batch).compile()
  source = {}
  for line in step.as_text().splitlines():
    m = re.match(r"\s*(?:ROOT )?%?([\w.\-]+) = (\S+) ", line)
    if m:
      op = re.search(r'op_name="([^"]+)"', line)
      source[m.group(1)] = (m.group(2), op.group(1) if op else "")
  state, m = step(s.state, s.batch)
  jax.block_until_ready(m)
  n_steps = 2
  with tempfile.TemporaryDirectory() as d:
    with jax.profiler.trace(d):
      for _ in range(n_steps):
        state, m = step(state, s.batch)
      jax.block_until_ready(m)
    files = [os.path.join(r, f) for r, _, fs in os.walk(d) for f in fs if f.endswith(".xplane.pb")]
    data = jax.profiler.ProfileData.from_file(files[0])
    lines = [line for plane in data.planes for line in plane.lines]
    if any(line.name == "XLA Ops" for line in lines):      # GPU: one event per op there
      lines = [line for line in lines if line.name == "XLA Ops"]
    per_op: collections.Counter = collections.Counter()
    for line in lines:
      for ev in line.events:
        name = ev.name.split(":")[0]
        # A while/call/conditional event encloses the events of its body: counted there.
        if name in source and not name.startswith(("while", "call", "conditional")):
          per_op[name] += ev.duration_ns
  total = sum(per_op.values()) or 1
  rows = []
  print(f"\nPer-op profile of the factored training step ({shape}, {dtype}, batch {args.batch}): "
        f"{total / n_steps / 1e6:,.0f} ms of op time per step (summed over threads/streams)")
  for name, ns in per_op.most_common(top):
    shape_str, op_name = source[name]
    op_name = op_name.replace("jit(train_step)/", "")
    rows.append({"op": name, "ms_per_step": ns / n_steps / 1e6, "share": ns / total,
                 "shape": shape_str, "source": op_name})
    print(f"  {ns / n_steps / 1e6:8.1f} ms {100 * ns / total:5.1f}%  {name[:26]:26s} "
          f"{shape_str[:26]:26s} {op_name[-70:]}")
  return rows


# ----------------------------------------------------------------------------- report

def _fmt_bytes(n) -> str:
  return "-" if n is None else f"{n / 2 ** 20:,.0f}"


def print_table(records: list[dict], peaks: dict[str, float]) -> None:
  head = (f"{'shape':10s} {'path':9s} {'backward':8s} {'dtype':8s} {'compile s':>11s} {'train ex/s':>11s} "
          f"{'infer ex/s':>11s} {'MFLOP/ex':>9s} {'train GFLOP/s':>13s} {'matmul GFLOP/s':>14s} "
          f"{'ratio':>6s} {'step MiB':>9s} {'peak MiB':>9s}")
  print(head)
  print("-" * len(head))
  for r in records:
    peak = peaks[r["dtype"]]
    print(f"{r['shape']:10s} {r['impl']:9s} {r['backward']:8s} {r['dtype']:8s} "
          f"{r['compile_train_s']:5.1f}/{r['compile_eval_s']:<5.1f} "
          f"{r['train_examples_per_s']:11,.0f} {r['infer_examples_per_s']:11,.0f} "
          f"{r['train_flops_per_example'] / 1e6:9.1f} {r['train_flops_per_s'] / 1e9:13.1f} "
          f"{peak / 1e9:14.1f} {r['train_flops_per_s'] / peak:6.3f} "
          f"{_fmt_bytes(r['train_memory_bytes']):>9s} {_fmt_bytes(r['device_peak_bytes']):>9s}")
  print("compile s = train/eval step; MFLOP/ex = analytic training FLOPs per example of the path "
        "that runs (mscan_train_flops); "
        "ratio = train GFLOP/s / matmul GFLOP/s; step MiB = XLA buffers of the train step "
        "(arguments + outputs + temporaries - donated); peak MiB = device peak (GPU only).")


def main(argv=None) -> dict:
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--shapes", default="aliccp,cloudtheme", help="comma list of: " + ", ".join(SHAPES))
  ap.add_argument("--impls", default="factored,pairwise", help="co-attention paths")
  ap.add_argument("--backwards", default="max",
                  help="backward passes of the factored co-attention: max,autodiff "
                       "(the pairwise path: autodiff)")
  ap.add_argument("--rounds", type=int, default=1,
                  help="alternating timing rounds of every path of a shape")
  ap.add_argument("--dtypes", default="float32", help="activation dtypes: float32,bfloat16")
  ap.add_argument("--batch", type=int, default=1024)
  ap.add_argument("--steps", type=int, default=5, help="steps per timing")
  ap.add_argument("--pairwise_steps", type=int, default=-1,
                  help="steps per timing of the pairwise path (-1: 1 on CPU, else --steps)")
  ap.add_argument("--repeats", type=int, default=3, help="timings; the median is reported")
  ap.add_argument("--vocab", choices=("full", "small"), default="full")
  ap.add_argument("--matmul_n", type=int, default=0, help="N of the matmul reference (0: auto)")
  ap.add_argument("--breakdown", action="store_true", help="also time variants of the step")
  ap.add_argument("--profile", action="store_true", help="also print a per-op profile of a step")
  ap.add_argument("--retain_host_memory", action="store_true",
                  help="keep freed host memory in the process (distributed.retain_host_memory): "
                       "no page faults for XLA:CPU's per-step temporaries")
  ap.add_argument("--json_out", default="", help="write every figure here as JSON")
  args = ap.parse_args(argv)
  shapes = [x for x in args.shapes.split(",") if x]
  impls = [x for x in args.impls.split(",") if x]
  backwards = [x for x in args.backwards.split(",") if x]
  dtypes = [x for x in args.dtypes.split(",") if x]
  for name, values, valid in (("shapes", shapes, SHAPES), ("impls", impls, sequence.COATTENTION_IMPLS),
                              ("backwards", backwards, sequence.COATTENTION_BACKWARDS),
                              ("dtypes", dtypes, config_lib.DTYPES)):
    bad = [v for v in values if v not in valid]
    if bad:
      ap.error(f"--{name}: unknown {bad}; valid: {', '.join(valid)}")
  backend = jax.default_backend()
  if args.pairwise_steps < 0:
    args.pairwise_steps = 1 if backend == "cpu" else args.steps
  dev = jax.devices()[0]
  print(f"jax {jax.__version__}, backend {backend}: {jax.device_count()} x "
        f"{getattr(dev, 'device_kind', dev.platform)}; host {platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} CPUs; batch {args.batch}, vocab {args.vocab}"
        + ("; host memory retained" if RETAINED else ""), flush=True)

  n = args.matmul_n or (2048 if backend == "cpu" else 8192)
  peaks = {d: matmul_flops_per_s(jnp.dtype(d), n, max(3, args.repeats)) for d in dtypes}
  for d, p in peaks.items():
    print(f"matmul reference ({n}x{n} @ {n}x{n}, {d}): {p / 1e9:,.1f} GFLOP/s", flush=True)

  records = []
  for shape in shapes:
    benches = []
    for impl in impls:
      for backward in (backwards if impl == "factored" else ("autodiff",)):
        for dtype in dtypes:
          t0 = time.perf_counter()
          benches.append(Bench(shape, impl, backward, dtype, args))
          print(f"  {shape} {impl} {backward} {dtype}: built and compiled "
                f"({time.perf_counter() - t0:.0f} s)", flush=True)
    for r in range(args.rounds):                       # alternating: noise hits each alike
      for b in benches:
        b.time_round()
    for b in benches:
      rec = b.record()
      rec["matmul_flops_per_s"] = peaks[rec["dtype"]]
      rec["flops_ratio"] = rec["train_flops_per_s"] / peaks[rec["dtype"]]
      records.append(rec)
      print(f"  {shape} {rec['impl']} {rec['backward']} {rec['dtype']}: train "
            f"{rec['train_examples_per_s']:,.0f} ex/s (CPU time per step: user "
            f"{rec['train_cpu_user_s_per_step']:.2f} s, system "
            f"{rec['train_cpu_sys_s_per_step']:.2f} s, {rec['train_page_faults_per_step']:,.0f} "
            f"page faults), infer {rec['infer_examples_per_s']:,.0f} ex/s", flush=True)
    del benches
  print()
  print_table(records, peaks)
  result = {"jax": jax.__version__, "backend": backend, "device_kind": getattr(dev, "device_kind", ""),
            "device_count": jax.device_count(), "cpu_count": os.cpu_count(), "batch": args.batch,
            "vocab": args.vocab, "retain_host_memory": RETAINED, "matmul_n": n, "matmul_flops_per_s": peaks, "records": records,
            "host_max_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}
  if args.breakdown:
    print(f"\nBreakdown of the factored training step ({shapes[0]}, {dtypes[0]}, batch {args.batch}):")
    result["breakdown"] = breakdown(shapes[0], dtypes[0], args)
  if args.profile:
    result["profile"] = profile_ops(shapes[0], dtypes[0], args)
  if args.json_out:
    os.makedirs(os.path.dirname(os.path.abspath(args.json_out)), exist_ok=True)
    with open(args.json_out, "w") as f:
      json.dump(result, f, indent=2)
    print(f"\nwrote {args.json_out}")
  return result


if __name__ == "__main__":
  main(sys.argv[1:])
