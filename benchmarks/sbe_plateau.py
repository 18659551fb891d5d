"""Why M-scan with the Scenario Bias Eliminator stops learning early (issue 22): variants and
diagnostics, per epoch.

    .venv/bin/python -m benchmarks.sbe_plateau [--epochs=15] [--variants=full,alpha0,...]
        [--cache_dir=data_cache] [--out=benchmarks/results/sbe_plateau_cpu_2core.txt]

Each variant is M-scan at the study size (`experiments.grids.SIZES["study"]`) on the synthetic
default preset, data seed 0, model seed 0, with some config overrides (`VARIANTS`), trained for
--epochs epochs without early stopping. Variants named `nosbe_xK` isolate the logit scale: M-scan
without the SBE whose y_m is multiplied by a constant K (`ScaledLogit`), i.e. Eq. (8) with
sigmoid(y_s) frozen at K, with no scenario tower, no alpha loss and no coupling. The run is the
project's own: `loop.set_up` makes the
data, the model, the initial state and the jitted `steps.train_step` exactly as `launch.py` does,
and this script drives the steps in the same order as `train._train` (same batches, same dropout
keys), so its validation curve is the curve `launch.py` logs. After every epoch it prints:

  val       validation mean per-scenario AUC (the select metric)
  loss      mean training loss of the epoch (Eq. 11, dropout on)
  ps10 ps50 ps90  quantiles of sigmoid(y_s) on the validation split (the factor of Eq. 8)
  ym50 ym90 quantiles of |y_m| on the validation split (the tower's own output, before any K)
  fused50   median |y_m sigmoid(y_s)| (or |K y_m|), the logit the loss sees
  g_mt      norm of the gradient of the loss w.r.t. the matching tower's parameters (Eq. 6's FFN)
  g_emb     the same for the embedding tables
  wd/g      ||weight_decay * theta|| / ||grad|| over the matching tower and the embeddings: how
            strongly the L2 term (added to the gradient before Adam, `steps.make_optimizer`)
            pulls against the data's gradient
  upd_mt    ||parameter change of the matching tower over the epoch||

The gradients are taken at the epoch's end on fixed training batches (`--diag_batches`, no
dropout), so they compare variants at equal inputs. Nothing here changes the package.
"""

from __future__ import annotations

import argparse
import functools
import os
import platform
import shlex
import shutil
import sys
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

from experiments import grids
from mscan_jax import config as config_lib
from mscan_jax import models
from mscan_jax.data import pipeline
from mscan_jax.training import loop, objective, steps

class ScaledLogit:
  """A model whose y_m is the inner model's y_m times a constant k (no scenario tower): the
  logit scale of Eq. (8) with sigmoid(y_s) frozen at k, without the SBE's scenario dependence
  or coupling. Wraps a Flax module's `init`/`apply` (same parameters)."""

  def __init__(self, inner, k: float):
    self.inner, self.k = inner, k

  def init(self, *args, **kwargs):
    return self.inner.init(*args, **kwargs)

  def apply(self, variables, batch, **kwargs):
    out = self.inner.apply(variables, batch, **kwargs)
    return {**out, "y_m": out["y_m"] * self.k, "y_raw": out["y_m"]}


# name -> (config overrides on top of the study size, model transform or None).
VARIANTS = {
    "full": ({}, None),
    "alpha0": ({"mscan.alpha": 0.0}, None),
    "wd0": ({"train.weight_decay": 0.0}, None),
    "nosbe": ({"mscan.use_sbe": False}, None),
    "full_lr4e-3": ({"train.learning_rate": 4e-3}, None),
    "nosbe_x0.27": ({"mscan.use_sbe": False}, 0.27),
    "nosbe_x0.55": ({"mscan.use_sbe": False}, 0.55),
    "nosbe_lr2.7e-4": ({"mscan.use_sbe": False, "train.learning_rate": 2.7e-4}, None),
    "nosbe_x1": ({"mscan.use_sbe": False}, 1.0),   # check: the same curve as nosbe
}
DEFAULT_VARIANTS = ("full", "alpha0", "wd0", "nosbe", "full_lr4e-3", "nosbe_x0.27", "nosbe_x0.55",
                    "nosbe_lr2.7e-4")


def make_config(overrides: dict, epochs: int, cache_dir: str):
  c = config_lib.get_config()
  settings = {**grids.SIZES["study"], "train.num_epochs": epochs,
              "train.patience": epochs + 1,             # never fires: the whole curve
              "train.progress": False, "train.export_predictions": False,
              "data.cache_dir": cache_dir, **overrides}
  for k, v in settings.items():
    config_lib.set_field(c, k, v)
  return c


def _sub_norm(tree, names) -> jnp.ndarray:
  return optax.global_norm({k: tree[k] for k in names if k in tree})


def build_model(run, scale):
  model = models.build_model(run.config, run.dataset.schema)
  return model if scale is None else ScaledLogit(model, scale)


def use_model(run, model) -> None:
  """Replaces the run's jitted train and eval steps by the same steps of `model` (as
  `loop.set_up` makes them, on one device)."""
  config = run.config
  run.train_step = jax.jit(functools.partial(
      steps.train_step, model=model, tx=steps.make_optimizer(config),
      alpha=float(config.mscan.alpha), base_rng=jax.random.PRNGKey(config.seed + 2)),
      donate_argnums=0)
  run.eval_kwargs["eval_fn"] = jax.jit(functools.partial(steps.eval_step, model=model))


def make_diag(run, model):
  """Jitted (params, batch) -> gradient and parameter norms per part, at no dropout."""
  wd = float(run.config.train.weight_decay)
  alpha = float(run.config.mscan.alpha)

  @jax.jit
  def diag(params, batch):
    def loss_of(p):
      out = model.apply({"params": p}, batch, train=False)
      return objective.loss_fn(out, batch["label"], batch["mask"], alpha)[0]
    g = jax.grad(loss_of)(params)
    res = {}
    for part, names in (("mt", ("matching_tower",)), ("emb", ("embed",))):
      gn, pn = _sub_norm(g, names), _sub_norm(params, names)
      res[f"g_{part}"], res[f"wd_{part}"] = gn, wd * pn
    return res
  return diag


def run_variant(name: str, variant, args) -> list[dict]:
  overrides, scale = variant
  config = make_config(overrides, args.epochs, args.cache_dir)
  config_lib.validate(config, models.model_names())
  workdir = tempfile.mkdtemp(prefix=f"sbe-{name}-", dir=args.workdir)
  rows = []
  with loop.hold(workdir):
    run = loop.set_up(config, workdir)
    model = build_model(run, scale)
    if scale is not None:
      use_model(run, model)
    diag = make_diag(run, model)
    diag_batches = []
    it = pipeline.train_batches(run.dataset, run.rows["train"], batch_size=config.train.batch_size,
                                seed=1234, prefetch=0)
    for _ in range(args.diag_batches):
      diag_batches.append(steps.to_global(next(it), run.data_sharding))
    it.close()
    batches = pipeline.train_batches(
        run.dataset, run.rows["train"], batch_size=config.train.batch_size, seed=config.seed,
        start_step=0, prefetch=config.data.prefetch)
    t0 = time.perf_counter()
    losses = []
    mt_before = jax.device_get(run.state.params["matching_tower"])
    for batch in steps.device_prefetch(batches, run.data_sharding, config.data.prefetch):
      run.state, m = run.train_step(run.state, batch)
      run.step += 1
      losses.append(m["loss"])
      if run.step % run.steps_per_epoch:
        continue
      params = run.state.params
      pred = steps.predict(params, run.dataset, run.rows["valid"], **run.eval_kwargs)
      val = steps.compute_metrics(pred)
      r = {"epoch": run.step // run.steps_per_epoch,
           "val": val["auc"]["mean_per_scenario"],
           "loss": float(np.mean(jax.device_get(losses)))}
      losses = []
      ym = np.abs(pred.get("y_raw", pred["y_m"]))     # the network's own output
      r["ym50"], r["ym90"] = np.quantile(ym, [0.5, 0.9])
      if "y_s" in pred:
        ps = 1.0 / (1.0 + np.exp(-pred["y_s"]))
        r["ps10"], r["ps50"], r["ps90"] = np.quantile(ps, [0.1, 0.5, 0.9])
        r["fused50"] = float(np.median(np.abs(pred["y_m"] * ps)))
      else:
        r["fused50"] = float(np.median(np.abs(pred["y_m"])))
      d = [jax.device_get(diag(params, b)) for b in diag_batches]
      for k in d[0]:
        r[k] = float(np.mean([x[k] for x in d]))
      mt_now = jax.device_get(params["matching_tower"])
      r["upd_mt"] = float(optax.global_norm(jax.tree.map(lambda a, b: a - b, mt_now, mt_before)))
      mt_before = mt_now
      r["seconds"] = time.perf_counter() - t0
      rows.append(r)
      print(f"  {name} epoch {r['epoch']}: val {r['val']:.4f}", file=sys.stderr, flush=True)
      if run.step >= run.total_steps:
        break
    batches.close()
    run.ckpt.close()
  shutil.rmtree(workdir, ignore_errors=True)
  return rows


def fmt_table(name: str, variant, rows: list[dict]) -> str:
  overrides, scale = variant
  cols = [("epoch", "{:>5d}"), ("val", "{:>6.4f}"), ("loss", "{:>6.4f}"),
          ("ps10", "{:>6.3f}"), ("ps50", "{:>6.3f}"), ("ps90", "{:>6.3f}"),
          ("ym50", "{:>7.2f}"), ("ym90", "{:>7.2f}"), ("fused50", "{:>7.2f}"),
          ("g_mt", "{:>8.4f}"), ("g_emb", "{:>8.4f}"), ("wd/g", "{:>6.3f}"), ("upd_mt", "{:>7.3f}")]
  what = (f"{overrides or '(the paper model, defaults)'}"
          + (f", y_m times {scale} (ScaledLogit)" if scale is not None else ""))
  out = [f"{name}  {what}",
         " ".join(f"{c:>{len(f.format(0) if 'd' in f else f.format(0.0))}}" for c, f in cols)]
  for r in rows:
    r = dict(r)
    r["wd/g"] = ((r["wd_mt"] ** 2 + r["wd_emb"] ** 2) ** 0.5
                 / max((r["g_mt"] ** 2 + r["g_emb"] ** 2) ** 0.5, 1e-12))
    cells = []
    for c, f in cols:
      v = r.get(c)
      w = len(f.format(0) if "d" in f else f.format(0.0))
      cells.append(f.format(v) if v is not None else f"{'-':>{w}}")
    out.append(" ".join(cells))
  best = max(rows, key=lambda r: r["val"])
  out.append(f"best val {best['val']:.4f} at epoch {best['epoch']}; "
             f"{rows[-1]['seconds']:.0f} s (under load)")
  return "\n".join(out)


def summary(names: list[str], results: list[list[dict]], escape: float) -> str:
  """One line per variant: best epoch and value, the first epoch at or above `escape` (past the
  plateau), and the median sigmoid(y_s) over the last epochs (the factor of Eq. 8)."""
  out = [f"summary (escape = first epoch with val >= {escape:g}; ps50 = median sigmoid(y_s) on "
         "validation, mean over the last 5 epochs)",
         f"{'variant':<16} {'best':>6} {'at':>3} {'escape':>6} {'ep4':>6} {'last':>6} {'ps50':>5}"]
  for name, rows in zip(names, results):
    best = max(rows, key=lambda r: r["val"])
    esc = next((r["epoch"] for r in rows if r["val"] >= escape), None)
    ep4 = next((r["val"] for r in rows if r["epoch"] == 4), float("nan"))
    ps = [r["ps50"] for r in rows[-5:] if "ps50" in r]
    out.append(f"{name:<16} {best['val']:>6.4f} {best['epoch']:>3d} "
               f"{(str(esc) if esc else '>' + str(rows[-1]['epoch'])):>6} {ep4:>6.4f} "
               f"{rows[-1]['val']:>6.4f} {(f'{np.mean(ps):.3f}' if ps else '-'):>5}")
  return "\n".join(out)


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--epochs", type=int, default=15)
  p.add_argument("--variants", default=",".join(DEFAULT_VARIANTS),
                 help=f"comma-separated, of: {', '.join(VARIANTS)}")
  p.add_argument("--diag_batches", type=int, default=4)
  p.add_argument("--escape", type=float, default=0.625,
                 help="validation AUC that marks the end of the plateau (~0.615 at this size)")
  p.add_argument("--cache_dir", default="data_cache")
  p.add_argument("--workdir", default=None, help="parent of the temporary run folders")
  p.add_argument("--out", default="")
  args = p.parse_args(argv)
  names = [v for v in args.variants.split(",") if v]
  unknown = [v for v in names if v not in VARIANTS]
  if unknown:
    print(f"error: --variants: unknown {', '.join(unknown)}; valid: {', '.join(VARIANTS)}",
          file=sys.stderr)
    return 2
  load0 = os.getloadavg()
  t0 = time.perf_counter()
  tables, results = [], []
  for name in names:
    results.append(run_variant(name, VARIANTS[name], args))
    tables.append(fmt_table(name, VARIANTS[name], results[-1]))
    print(tables[-1], flush=True)
  tables.insert(0, summary(names, results, args.escape))
  print(tables[0], flush=True)
  load1 = os.getloadavg()
  header = [
      "M-scan's early plateau with the SBE (issue 22): validation curves and diagnostics per epoch",
      f"study size, synthetic default preset, data seed 0, model seed 0, {args.epochs} epochs, "
      "no early stopping",
      "",
      "    .venv/bin/python -m benchmarks.sbe_plateau " + " ".join(shlex.quote(a) for a in
                                                                   (argv or sys.argv[1:])),
      "",
      f"backend {jax.default_backend()}, {platform.machine()}, {os.cpu_count()} cores, UNDER LOAD "
      f"(shared machine): load average {load0[0]:.1f} at start, {load1[0]:.1f} at end; "
      f"{time.perf_counter() - t0:.0f} s in all. Curves do not depend on the load, timings do.",
      "",
  ]
  text = "\n".join(header) + "\n" + "\n\n".join(tables) + "\n"
  if args.out:
    with open(args.out, "w") as f:
      f.write(text)
  return 0


if __name__ == "__main__":
  sys.exit(main())
