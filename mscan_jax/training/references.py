"""The reference scorers of a dataset, over model seeds x data seeds: how learnable it is.

    python -m mscan_jax.training.references --preset=default --out=DIR [--model_seeds=3]
        [--data_seeds=2] [--cache_dir=data_cache] [--exposure_bias=X] [--transfer=X] ...

on the synthetic benchmark (`--preset` and one flag per dial, `datasets.dials("synthetic")`;
its data seeds built into `--cache_dir`, the runs into `--out`) trains every reference scorer
of the registry (popularity, bias-only LR, MF; `kind="reference"`) and scores the oracles
(`kind="oracle"`) through the same loop as every model, and prints, per scenario, each one's
test AUC (mean ± std over seeds) and the checks a measuring instrument needs
(the targets of the benchmark, fixed before any model is trained on it):

  oracle - popularity >= 0.15 AUC in every scenario   (there is signal to find)
  MF - popularity     >= 0.05 AUC in every scenario   (personalisation is learnable from the data)
  every scenario has >= 2,000 test samples
  std over seeds of each reference's mean per-scenario AUC <= (MF - popularity) / 5

No M-scan or other model runs here: the benchmark's sizes are chosen from these figures alone.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any, Callable, Sequence

import ml_collections
import numpy as np

from mscan_jax import config as config_lib
from mscan_jax import models
from mscan_jax.data import datasets
from mscan_jax.training import train

TARGETS = {"oracle_minus_popularity": 0.15, "mf_minus_popularity": 0.05,
           "min_test_per_scenario": 2000, "std_fraction_of_mf_gap": 0.2}
ORACLE = "oracle_click"     # the click oracle: what an observed-click AUC can at best reach
MF, POPULARITY = "mf", "popularity"


@dataclasses.dataclass
class ReferenceTable:
  """Per model: the results.json of every (data seed, model seed) run."""
  results: dict[str, list[dict]]
  n_per_scenario: dict[str, int]

  def per_scenario(self, model: str, metric: str = "auc") -> dict[str, tuple[float, float]]:
    """scenario -> (mean, std over runs); std 0 for a single run."""
    runs = self.results[model]
    out = {}
    for k in sorted(runs[0][metric]["per_scenario"], key=int):
      v = np.array([r[metric]["per_scenario"][k] for r in runs])
      out[k] = (float(v.mean()), float(v.std(ddof=1)) if len(v) > 1 else 0.0)
    return out

  def mean_auc(self, model: str, metric: str = "auc") -> np.ndarray:
    """Each run's mean per-scenario AUC."""
    return np.array([r[metric]["mean_per_scenario"] for r in self.results[model]])

  def checks(self) -> dict[str, Any]:
    pop, mf, orc = (self.per_scenario(m) for m in (POPULARITY, MF, ORACLE))
    mf_gap = {k: mf[k][0] - pop[k][0] for k in pop}
    oracle_gap = {k: orc[k][0] - pop[k][0] for k in pop}
    mean_gap = float(self.mean_auc(MF).mean() - self.mean_auc(POPULARITY).mean())
    stds = {m: float(self.mean_auc(m).std(ddof=1)) if len(self.results[m]) > 1 else 0.0
            for m in self.results if models.get_spec(m).kind == "reference"}
    return {
        "oracle_minus_popularity": oracle_gap,
        "mf_minus_popularity": mf_gap,
        "min_test_per_scenario": min(self.n_per_scenario.values()),
        "std_of_mean_auc": stds,
        "std_limit": TARGETS["std_fraction_of_mf_gap"] * mean_gap,
        "ok": {
            "oracle_minus_popularity": min(oracle_gap.values()) >= TARGETS["oracle_minus_popularity"],
            "mf_minus_popularity": min(mf_gap.values()) >= TARGETS["mf_minus_popularity"],
            "min_test_per_scenario":
                min(self.n_per_scenario.values()) >= TARGETS["min_test_per_scenario"],
            "std": max(stds.values()) <= TARGETS["std_fraction_of_mf_gap"] * mean_gap,
        },
    }


def run_references(base: ml_collections.ConfigDict, workdir: str, *, model_seeds: Sequence[int],
                   data_seeds: Sequence[int], echo: Callable[[str], None] = print
                   ) -> ReferenceTable:
  """Trains the reference scorers (each model seed x data seed) and scores the oracles (each
  data seed) of `base.data`, in `workdir/<model>-data<d>-s<s>` (resumed where finished)."""
  names = models.names(kind="reference") + models.names(kind="oracle")
  results: dict[str, list[dict]] = {n: [] for n in names}
  n_per_scenario: dict[str, int] = {}
  for d in data_seeds:
    for name in names:
      seeds = model_seeds if models.get_spec(name).trainable else model_seeds[:1]
      for s in seeds:
        c = base.copy_and_resolve_references()
        c.model, c.seed, c.data.seed = name, int(s), int(d)
        c.train.progress = False
        c.train.export_predictions = False
        wd = os.path.join(workdir, f"{name}-data{d}-s{s}")
        r = _finished(wd) or train.run(c, wd)
        results[name].append(r)
        n_per_scenario = r["n_per_scenario"]
        echo(f"  {name:<13} data seed {d} seed {s}: mean per-scenario AUC "
             f"{r['auc']['mean_per_scenario']:.4f}")
  return ReferenceTable(results, n_per_scenario)


def table_from_runs(runs_dir: str) -> ReferenceTable:
  """The ReferenceTable of the finished reference and oracle runs in a grid's `runs/` folder."""
  import json
  results: dict[str, list[dict]] = {}
  n_per_scenario: dict[str, int] = {}
  for name in models.names(kind="reference") + models.names(kind="oracle"):
    for entry in sorted(os.listdir(runs_dir)):
      path = os.path.join(runs_dir, entry, "results.json")
      if (entry == name or entry.startswith(name + "-")) and os.path.exists(path):
        with open(path) as f:
          r = json.load(f)
        if r.get("model") == name:
          results.setdefault(name, []).append(r)
          n_per_scenario = r["n_per_scenario"]
  return ReferenceTable(results, n_per_scenario)


def _finished(workdir: str) -> dict | None:
  """The results of the finished run in `workdir` (`rundir.unfinished_reason`), else None."""
  import json
  from mscan_jax.training import rundir
  if rundir.unfinished_reason(workdir) is None:
    with open(os.path.join(workdir, rundir.RESULTS)) as f:
      return json.load(f)
  return None


def format_table(table: ReferenceTable) -> str:
  """Per scenario: n and each reference's AUC mean ± std; then the checks against TARGETS."""
  names = list(table.results)
  head = f"{'scenario':>8} {'n test':>7} " + " ".join(f"{models.title(n):>17}" for n in names)
  lines = ["Observed-click test AUC, mean ± std over seeds (model seeds x data seeds):", head]
  cols = {n: table.per_scenario(n) for n in names}
  for k in cols[names[0]]:
    lines.append(f"{'#' + k:>8} {table.n_per_scenario.get(k, 0):>7} " + " ".join(
        f"{cols[n][k][0]:>9.4f} ± {cols[n][k][1]:.4f}" for n in names))
  means = {n: table.mean_auc(n) for n in names}
  lines.append(f"{'mean':>8} {'':>7} " + " ".join(
      f"{means[n].mean():>9.4f} ± {(means[n].std(ddof=1) if len(means[n]) > 1 else 0):.4f}"
      for n in names))
  c = table.checks()
  ok = c["ok"]
  lines += [
      "",
      "Targets of a measuring instrument (per scenario):",
      f"  oracle - popularity >= {TARGETS['oracle_minus_popularity']}: min "
      f"{min(c['oracle_minus_popularity'].values()):.4f}  "
      f"[{'ok' if ok['oracle_minus_popularity'] else 'NOT MET'}]",
      f"  MF - popularity >= {TARGETS['mf_minus_popularity']}: min "
      f"{min(c['mf_minus_popularity'].values()):.4f}  "
      f"[{'ok' if ok['mf_minus_popularity'] else 'NOT MET'}]  ("
      + ", ".join(f"#{k} {v:+.4f}" for k, v in c["mf_minus_popularity"].items()) + ")",
      f"  test samples per scenario >= {TARGETS['min_test_per_scenario']}: min "
      f"{c['min_test_per_scenario']}  [{'ok' if ok['min_test_per_scenario'] else 'NOT MET'}]",
      f"  std of mean AUC over seeds <= (MF - popularity) / 5 = {c['std_limit']:.4f}: "
      + ", ".join(f"{models.title(m)} {v:.4f}" for m, v in c["std_of_mean_auc"].items())
      + f"  [{'ok' if ok['std'] else 'NOT MET'}]",
  ]
  return "\n".join(lines)


def base_config(preset: str, cache_dir: str, **dials: float) -> ml_collections.ConfigDict:
  """The default config on the synthetic `preset` (dials as `config.data.synthetic`)."""
  c = config_lib.get_config()
  c.data.name = "synthetic"
  c.data.preset = preset
  c.data.cache_dir = cache_dir
  for k, v in dials.items():
    c.data.synthetic[k] = float(v)
  return c


# ---------------------------------------------------------------------------------------
# Command line


def _define_flags() -> None:
  from absl import flags
  flags.DEFINE_string("preset", "default", "Preset of the synthetic benchmark.")
  flags.DEFINE_string("out", None, "Folder of the runs (resumed where finished).", required=True)
  for dial in datasets.dials("synthetic"):
    flags.DEFINE_float(dial, None, f"Dial {dial} of the synthetic benchmark (unset: the preset's; "
                       "python -m mscan_jax.data.synthetic --help).")
  flags.DEFINE_integer("model_seeds", 3, "Model seeds.", lower_bound=1)
  flags.DEFINE_integer("data_seeds", 2, "Data seeds.", lower_bound=1)
  flags.DEFINE_string("cache_dir", "data_cache", "Where the data seeds are built.")


def main(argv) -> None:
  import sys
  import time
  from absl import flags, logging
  from mscan_jax.data.schema import DataError
  from mscan_jax.errors import ConfigError
  if len(argv) > 1:
    print(f"error: unexpected arguments: {argv[1:]}", file=sys.stderr)
    sys.exit(2)
  logging.set_verbosity(logging.WARNING)   # Orbax logs every file it writes at INFO
  f = flags.FLAGS
  dials = {k: getattr(f, k) for k in datasets.dials("synthetic") if getattr(f, k) is not None}
  base = base_config(f.preset, f.cache_dir, **dials)
  try:
    config_lib.validate(base, models.model_names())
    start = time.perf_counter()
    print(f"reference scorers: {f.model_seeds} model seeds x {f.data_seeds} data seeds")
    table = run_references(base, f.out, model_seeds=range(f.model_seeds),
                           data_seeds=range(f.data_seeds))
  except (ConfigError, DataError) as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)
  print(format_table(table))
  print(f"references in {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
  from absl import app
  _define_flags()
  app.run(main)
