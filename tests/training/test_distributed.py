"""Data parallelism on several devices and training on two processes, on CPU.

The device count must be fixed before JAX starts, so every multi-device or multi-process run is a
subprocess (`XLA_FLAGS=--xla_force_host_platform_device_count=N`); the pytest process keeps its
one device. Each subprocess runs under a timeout after which it is killed with SIGKILL
(`subprocess` does that): a deadlocked CPU all-reduce (seen on 2 cores) fails the test, never
stalls CI.

  * one jitted `train_step`, six steps: 1 device == 4 devices with replicated parameters (loss
    and gradient norm per step), and the layout of the state with row-sharded embedding tables;
  * the real entry point `launch.py`: one process on one device (the reference) and two
    processes on 127.0.0.1 (`jax.distributed`, Gloo) with row-sharded embedding tables train
    to the same losses, validation and test metrics; only process 0 prints the results.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import numpy as np
import pytest

from mscan_jax.config import get_tiny_config
from mscan_jax.data import synthetic
from mscan_jax.training import steps

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TIMEOUT_S = 240        # per subprocess; SIGKILL after that
MAX_STEPS = 10


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> str:
  """The tiny synthetic preset, built once: its folder for `BuiltDataset`, its parent as
  `config.data.cache_dir`."""
  return synthetic.ensure_synthetic("tiny", 0, str(tmp_path_factory.mktemp("data_cache")))


def _env(n_devices: int) -> dict:
  env = dict(os.environ)
  env["JAX_PLATFORMS"] = "cpu"
  # Optimisation level 0: compiles about twice as fast; every run of a comparison uses it.
  env["XLA_FLAGS"] = (f"--xla_force_host_platform_device_count={n_devices} "
                      "--xla_backend_optimization_level=0")
  env.pop("JAX_COORDINATOR_ADDRESS", None)
  return env


def _check(proc: subprocess.CompletedProcess | subprocess.Popen, out: str, err: str) -> str:
  if proc.returncode != 0:
    raise AssertionError(f"subprocess failed (rc {proc.returncode}):\n{err[-4000:]}\n{out[-2000:]}")
  return out


def _python(code: str, n_devices: int) -> str:
  proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=_env(n_devices),
                        capture_output=True, text=True, timeout=TIMEOUT_S)
  return _check(proc, proc.stdout, proc.stderr)


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _launch_args(data: str, workdir: str, **extra) -> list[str]:
  """launch.py on the tiny config (tiny synthetic preset in the folder of `data`): 10 steps, one
  validation at the end."""
  flags = {"config.data.cache_dir": os.path.dirname(data), "config.train.max_steps": MAX_STEPS,
           "config.train.eval_every_steps": MAX_STEPS, "config.train.log_every_steps": 5,
           "config.train.export_predictions": False, **extra}
  return ([sys.executable, "launch.py", f"--config={os.path.join(ROOT, 'mscan_jax', 'config.py')}:tiny",
           f"--workdir={workdir}"] + [f"--{k}={v}" for k, v in flags.items()])


def _launch(procs_args: list[list[str]], n_devices: int) -> list[str]:
  """Starts every command at once; kills them all (SIGKILL) if one outlives TIMEOUT_S."""
  procs = [subprocess.Popen(a, cwd=ROOT, env=_env(n_devices), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True) for a in procs_args]
  outs = []
  try:
    for p in procs:
      out, err = p.communicate(timeout=TIMEOUT_S)
      outs.append(_check(p, out, err))
  finally:
    for p in procs:
      if p.poll() is None:
        p.kill()
        p.wait()
  return outs


def _metrics(workdir: str) -> tuple[list[dict], dict]:
  lines = [json.loads(l) for l in open(os.path.join(workdir, "metrics.jsonl"))]
  with open(os.path.join(workdir, "results.json")) as f:
    return lines, json.load(f)


def _assert_same_run(a: str, b: str) -> None:
  lines_a, res_a = _metrics(a)
  lines_b, res_b = _metrics(b)
  assert [(l["step"], l["split"]) for l in lines_a] == [(l["step"], l["split"]) for l in lines_b]
  assert [l["step"] for l in lines_a if l["split"] == "train"] == [5, 10]
  for la, lb in zip(lines_a, lines_b):
    for key in ("loss", "loss_uis", "loss_s", "grad_norm", "auc", "logloss"):
      if key in la:
        assert lb[key] == pytest.approx(la[key], rel=1e-4, abs=1e-5), (la, lb)
  assert res_b["steps"] == res_a["steps"] == MAX_STEPS
  assert res_b["n_test"] == res_a["n_test"]
  for key in ("logloss", "gauc"):
    assert res_b[key] == pytest.approx(res_a[key], rel=1e-4, abs=1e-5)
  assert res_b["auc"]["all"] == pytest.approx(res_a["auc"]["all"], abs=1e-4)


@pytest.fixture(scope="module")
def reference_run(built, tmp_path_factory) -> str:
  workdir = str(tmp_path_factory.mktemp("reference") / "run")
  _launch([_launch_args(built, workdir)], n_devices=1)
  return workdir


_STEP_SCRIPT = """
import functools, json
import jax, jax.numpy as jnp, numpy as np
from mscan_jax import config as config_lib, models
from mscan_jax.data.schema import BuiltDataset
from mscan_jax.training import sharding, steps

ds = BuiltDataset({path!r})
cfg = config_lib.get_tiny_config()
model = models.build_model(cfg, ds.schema)
tx = steps.make_optimizer(cfg)
params0 = jax.device_get(steps.init_params(model, ds.schema, 0))
rows = np.asarray(ds.splits["train"])
batches = [ds.gather(rows[i * 64:(i + 1) * 64]) for i in range(6)]

def place(devices, shard):
  mesh = sharding.make_mesh(devices)
  m, p = model, params0
  if shard:
    m = sharding.RowPadded(model, sharding.embedding_rows(p))
    p = jax.device_get(sharding.pad_embeddings(p, mesh.size))
  new = lambda p: steps.TrainState(step=jnp.zeros((), jnp.int32), params=p, opt_state=tx.init(p))
  shardings = sharding.state_shardings(jax.eval_shape(new, p), mesh, shard)
  return mesh, m, shardings, jax.jit(new, out_shardings=shardings)(p)

def layout(state):
  rows = lambda x: [int(s.data.shape[0]) for s in x.addressable_shards]
  table = state.params["embed"]["item"]["item_item_id"]["embedding"]
  return {{"table_rows": rows(table),
          "mu_rows": rows(state.opt_state[2][0].mu["embed"]["item"]["item_item_id"]["embedding"]),
          "dense_rows": rows(state.params["matching_tower"]["Dense_0"]["kernel"]),
          "vocab": ds.schema.item_fields[0].vocab_size,
          "padding_norm": float(jnp.abs(table[ds.schema.item_fields[0].vocab_size:]).sum())}}

def run(devices):
  mesh, m, shardings, state = place(devices, False)
  step = jax.jit(functools.partial(steps.train_step, model=m, tx=tx, alpha=0.1,
                                   base_rng=jax.random.PRNGKey(2)),
                 donate_argnums=0, out_shardings=(shardings, sharding.replicated(mesh)))
  out = {{"loss": [], "grad_norm": []}}
  for b in batches:
    batch = steps.to_global(b, sharding.data_sharding(mesh))
    out["batch_shards"] = len(batch["user"].addressable_shards)
    state, met = step(state, batch)
    out["loss"].append(float(met["loss"]))          # waits for every step
    out["grad_norm"].append(float(met["grad_norm"]))
  out.update(layout(state))
  return out

cfg.train.sync_every_steps = 100
res = {{"one": run(jax.devices()[:1]), "four": run(jax.devices()),
       "sharded": layout(place(jax.devices(), True)[3]), "sync_every": steps.sync_every(cfg)}}
print("RESULT " + json.dumps(res))
"""


def test_data_parallel_step_matches_one_device(built):
  out = _python(_STEP_SCRIPT.format(path=built), n_devices=4)
  res = json.loads(out.split("RESULT ", 1)[1])
  one, four, sharded = res["one"], res["four"], res["sharded"]
  assert one["batch_shards"] == 1 and four["batch_shards"] == 4
  np.testing.assert_allclose(four["loss"], one["loss"], rtol=2e-6)
  np.testing.assert_allclose(four["grad_norm"], one["grad_norm"], rtol=2e-5)
  assert one["loss"][-1] < one["loss"][0]
  # Replicated: every device holds the whole item table and the whole tower.
  vocab = four["vocab"]
  assert four["table_rows"] == [vocab] * 4 and four["mu_rows"] == [vocab] * 4
  assert four["dense_rows"] == [four["dense_rows"][0]] * 4
  # Row-sharded: the rows padded with zeros to a multiple of 4, a quarter per device, Adam
  # moments alike; towers replicated. (Its training is compared with one device in the
  # two-process test.)
  per_device = -(-vocab // 4)
  assert sharded["table_rows"] == [per_device] * 4 and sharded["mu_rows"] == [per_device] * 4
  assert sharded["dense_rows"] == four["dense_rows"]
  assert sharded["padding_norm"] == 0.0
  # Multi-device CPU: the loop waits every 4 steps at most, whatever the config asks.
  assert res["sync_every"] == 4


def test_sync_every_on_one_device():
  c = get_tiny_config()
  assert steps.sync_every(c) == 0                 # only at log steps
  c.train.sync_every_steps = 7
  assert steps.sync_every(c) == 7


def test_two_processes_with_sharded_embeddings_train_like_one(built, reference_run, tmp_path):
  """Two processes of one device each; the embedding tables are split between the processes
  (each process checkpoints its own rows, Orbax's multi-host save)."""
  workdir = str(tmp_path / "run")                  # one folder shared by both processes
  addr = f"127.0.0.1:{_free_port()}"
  outs = _launch([_launch_args(built, workdir, **{
      "config.distributed.coordinator_address": addr, "config.distributed.num_processes": 2,
      "config.distributed.process_id": i, "config.shard_embeddings": True}) for i in range(2)],
      n_devices=1)
  assert "#All" in outs[0] and "#All" not in outs[1]     # only process 0 prints and writes
  _assert_same_run(reference_run, workdir)
  assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == [str(MAX_STEPS)]
  data_iter = os.path.join(workdir, "checkpoints", str(MAX_STEPS), "data_iter")
  assert {"process_0-of-2.json", "process_1-of-2.json"} <= set(os.listdir(data_iter))  # grain's




def test_device_prefetch_stops_its_thread_and_passes_errors():
  import threading

  import jax
  from mscan_jax.training import sharding

  data = sharding.data_sharding(sharding.make_mesh())

  def endless():
    i = 0
    while True:
      yield {"x": np.full((4, 2), i, np.float32)}
      i += 1

  steps.to_global(next(endless()), data)             # the backend's own threads start here
  before = set(threading.enumerate())
  it = steps.device_prefetch(endless(), data, size=2)
  assert [float(next(it)["x"][0, 0]) for _ in range(3)] == [0.0, 1.0, 2.0]   # in order
  assert set(threading.enumerate()) - before           # the copying thread runs ahead ...
  it.close()                                           # ... until the consumer leaves (early stop)
  assert not set(threading.enumerate()) - before

  def broken():
    yield {"x": np.zeros((4, 2), np.float32)}
    raise ValueError("bad row 7")

  it = steps.device_prefetch(broken(), data, size=2)
  assert isinstance(next(it)["x"], jax.Array)
  with pytest.raises(ValueError, match="bad row 7"):
    next(it)
