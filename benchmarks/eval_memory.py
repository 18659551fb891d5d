"""Peak memory of a full test evaluation's host part at a given size: AUC, GAUC, predictions.parquet.

    .venv/bin/python -m benchmarks.eval_memory                       # 43.0M samples, Mix's outputs
    .venv/bin/python -m benchmarks.eval_memory --samples=34105664 --model=mscan
    .venv/bin/python -m benchmarks.eval_memory --samples=1000000     # a quick check

Issue 23, item 4: predicting Ali-CCP's 43.0M test samples, the AUC over them, GAUC over their
users and `predictions.parquet` must stay within 6 GB. `benchmarks.scale` measures the whole
test phase on the split its generated log gives (34.1M samples at 85M events); this measures the
part that grows with the samples, at any size, in seconds rather than hours:

1. the prediction arrays `steps.predict` returns: the keys and dtypes of `--model`'s
   `steps.eval_step` on one batch of an Ali-CCP-like schema (`benchmarks.models.SHAPES`), plus
   the batch's label, scenario, user_id and sample_id, each `--samples` long, random values
   (labels at Ali-CCP's click rate, `--users` users);
2. `steps.compute_metrics` on them (AUC, GAUC, per-scenario AUCs, log loss);
3. `steps.write_predictions` into `--tmp` (row groups), the file then removed.

Each step's peak resident set (VmHWM, reset between steps through /proc/self/clear_refs) and its
growth above the start, per sample, are printed. The predict pass's own batches and the dataset
pages it maps do not grow with the samples (`BuiltDataset.gather`'s page budget, all released at
the pass's end), so the test phase's peak at N samples is about the resident set a run's test
phase starts from (`benchmarks.scale` prints it) plus the largest growth printed here. Figures
are printed, never asserted; seconds depend on the machine's load.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

import numpy as np

from benchmarks.launch_child import RSS

GIB = 2 ** 30
PAPER_TEST_SAMPLES = 43_000_000       # Ali-CCP's test skeleton rows (Tianchi dataset 408)
ALICCP_USERS = 400_000                # about; GAUC's groups
CLICK_RATE = 0.039                    # Ali-CCP's test click rate, about


exec(RSS)          # peak(), current(), reset(): the resident-set helpers of benchmarks.scale


def output_dtypes(model: str) -> dict[str, np.dtype]:
  """The arrays `steps.predict` returns for `model`: eval_step's outputs on one small batch of
  the Ali-CCP-like schema, plus the batch's identifiers (as `steps.predict` keeps them)."""
  import jax
  import jax.numpy as jnp
  from benchmarks.models import SHAPES
  from mscan_jax import config as config_lib
  from mscan_jax import models
  from mscan_jax.data.schema import dummy_batch
  from mscan_jax.training import steps

  schema = SHAPES["aliccp"]
  config = config_lib.get_config()
  config.model = model
  config.single.scenario = 1
  net = models.build_model(config, schema)
  host = dummy_batch(schema, 8, seed=0)
  batch = {k: jnp.asarray(v) for k, v in host.items()}
  params = net.init({"params": jax.random.key(0)}, batch, train=False)["params"]
  res = steps.eval_step(params, batch, jnp.float32(1.0), model=net)
  out = {k: np.dtype(v.dtype) for k, v in res.items()}
  for k in ("label", "user_id", "sample_id"):
    out[k] = host[k].dtype
  out["scenario"] = host["scenario"].dtype        # (N,) after predict keeps column 0
  return out


def fake_predictions(dtypes: dict[str, np.dtype], n: int, users: int, seed: int) -> dict:
  """`n` rows of each array: clicks at CLICK_RATE, scores that rank them better than chance."""
  rng = np.random.default_rng(seed)
  pred: dict[str, np.ndarray] = {}
  label = (rng.random(n, dtype=np.float32) < CLICK_RATE)
  for k, dt in dtypes.items():
    if k == "label":
      pred[k] = label.astype(dt)
    elif k == "user_id":
      pred[k] = rng.integers(1, users + 1, size=n).astype(dt)
    elif k == "sample_id":
      pred[k] = np.arange(n, dtype=dt)
    elif k == "scenario":
      pred[k] = rng.integers(1, 4, size=n).astype(dt)
    else:                                          # scores, logits, probabilities
      x = rng.standard_normal(n, dtype=np.float32) + label
      pred[k] = (1 / (1 + np.exp(-x)) if k == "prob" else x).astype(dt)
  return pred


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--samples", type=int, default=PAPER_TEST_SAMPLES)
  p.add_argument("--users", type=int, default=ALICCP_USERS)
  p.add_argument("--model", default="mix")
  p.add_argument("--tmp", default=None, help="where predictions.parquet is written (then removed)")
  p.add_argument("--seed", type=int, default=0)
  a = p.parse_args(argv)
  if a.samples < 2 or a.users < 1:
    print("error: --samples must be >= 2 and --users >= 1", file=sys.stderr)
    return 2
  if not os.path.exists("/proc/self/status"):
    print("error: this benchmark reads /proc/self/status (Linux)", file=sys.stderr)
    return 2
  from mscan_jax.training import steps

  dtypes = output_dtypes(a.model)
  start = current()
  t = time.perf_counter()
  pred = fake_predictions(dtypes, a.samples, a.users, a.seed)
  rows = [("predictions in memory", time.perf_counter() - t, peak())]
  held = current()
  can_reset = os.access("/proc/self/clear_refs", os.W_OK)
  reset()
  t = time.perf_counter()
  metrics = steps.compute_metrics(pred)
  rows.append(("AUC, GAUC, per-scenario AUC, log loss", time.perf_counter() - t, peak()))
  reset()
  with tempfile.TemporaryDirectory(dir=a.tmp) as tmp:
    path = os.path.join(tmp, "predictions.parquet")
    t = time.perf_counter()
    steps.write_predictions(path, pred)
    rows.append(("predictions.parquet", time.perf_counter() - t, peak()))
    size = os.path.getsize(path)

  load = os.getloadavg()[0]
  print(f"{a.samples:,} test samples, {a.users:,} users, outputs of {a.model}: "
        + ", ".join(f"{k} {np.dtype(v).name}" for k, v in dtypes.items())
        + f"; {os.cpu_count()} CPUs, 1-min load average {load:.1f}")
  print(f"resident before the predictions (interpreter, JAX, the model's one batch): "
        f"{start / GIB:.2f} GiB; with them: {held / GIB:.2f} GiB "
        f"({(held - start) / a.samples:.0f} B/sample)")
  print(f"{'step':<40} {'seconds':>8} {'peak RSS':>9} {'above start':>12}")
  for name, sec, top in rows:
    print(f"{name:<40} {sec:8.1f} {top / GIB:8.2f}G {(top - start) / a.samples:8.0f} B/sample")
  if not can_reset:
    print("note: /proc/self/clear_refs refused the reset; each peak includes the steps before it")
  print(f"predictions.parquet: {size / 1e6:.1f} MB; #All AUC {metrics['auc']['all']:.4f} "
        f"GAUC {metrics['gauc']:.4f} (random scores: a check of the path, not of a model)")
  return 0


if __name__ == "__main__":
  sys.exit(main())
