"""Figures 5 (#All AUC against c of Eq. 12, swept over saved predictions) and 6 (against alpha of
Eq. 11, one trained run per alpha), in the pooled AUCs of `FIGURE_METRICS`; mean, std, min and
max over seed pairs (seed, data_seed)."""

from __future__ import annotations

from typing import Sequence

import numpy as np

from experiments.report.loading import (FIGURE_METRICS, METRICS, Folder, ReportError, RunKey,
                                        RunResult, Stat, alpha_runs, default_mscan_runs,
                                        metric_value)
from mscan_jax.evaluation import metrics as metrics_lib


def sweep_c(run: RunResult, c_values: Sequence[float], label_key: str) -> dict[float, float]:
  """#All AUC of Eq. (12)'s score for each c, from the run's saved y_m and y_s."""
  from mscan_jax.training import objective
  pred = run.predictions()
  if "y_s" not in pred or "y_m" not in pred:
    raise ReportError(f"run {run.name}: predictions.parquet has no y_m / y_s (the SBE is off?)")
  out = {}
  for c in c_values:
    score = np.asarray(objective.inference_score({"y_m": pred["y_m"], "y_s": pred["y_s"]}, c))
    out[float(c)] = metrics_lib.auc(pred[label_key], score)
  return out


def figure5_data(folder: Folder, c_values: Sequence[float]) -> list[dict]:
  """Rows {dataset, metric, c, n_seeds, mean, std, min, max} of the c sweep."""
  runs = default_mscan_runs(folder.runs)
  rows = []
  for metric in FIGURE_METRICS:
    label_key = METRICS[metric].label
    per_seed: dict[RunKey, dict[float, float]] = {}
    for r in runs:
      if metric not in r.results:
        continue
      cs = sorted(set(float(c) for c in c_values) | {float(r.results.get("c", 1.0))})
      try:
        per_seed[r.key] = sweep_c(r, cs, label_key)
      except ReportError:
        continue
    if not per_seed:
      continue
    for c in sorted(set().union(*(d.keys() for d in per_seed.values()))):
      st = Stat({s: d[c] for s, d in per_seed.items() if c in d})
      v = list(st.values.values())
      rows.append({"dataset": folder.dataset, "metric": metric, "c": c, "n_seeds": st.n,
                   "mean": st.mean, "std": st.std, "min": min(v), "max": max(v),
                   "default_c": float(runs[0].results.get("c", float("nan")))})
  return rows


def figure6_data(folder: Folder) -> list[dict]:
  rows = []
  runs = alpha_runs(folder.runs)
  for metric in FIGURE_METRICS:
    by_alpha: dict[float, dict[RunKey, float]] = {}
    for r in runs:
      if (v := metric_value(r.results, metric, "all")) is not None:
        by_alpha.setdefault(float(r.setting("mscan.alpha")), {})[r.key] = v
    for a in sorted(by_alpha):
      st = Stat(by_alpha[a])
      v = list(st.values.values())
      rows.append({"dataset": folder.dataset, "metric": metric, "alpha": a, "n_seeds": st.n,
                   "mean": st.mean, "std": st.std, "min": min(v), "max": max(v)})
  return rows


def plot(rows: Sequence[dict], x_key: str, path: str, title: str, xlabel: str,
         categorical: bool = False) -> bool:
  """Mean #All AUC against x, one line per dataset, bars and a band of ± 1 std over seed pairs;
  one panel per metric present. Returns False (nothing written) when there is nothing to plot."""
  if not rows:
    return False
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  metrics = [m for m in METRICS if any(r["metric"] == m for r in rows)]
  fig, axes = plt.subplots(1, len(metrics), figsize=(5.2 * len(metrics), 3.8), squeeze=False)
  xs_all = sorted({r[x_key] for r in rows})
  for ax, metric in zip(axes[0], metrics):
    for ds in dict.fromkeys(r["dataset"] for r in rows):
      sel = sorted((r for r in rows if r["metric"] == metric and r["dataset"] == ds),
                   key=lambda r: r[x_key])
      if not sel:
        continue
      x = np.array([xs_all.index(r[x_key]) if categorical else r[x_key] for r in sel], float)
      m = np.array([r["mean"] for r in sel])
      s = np.nan_to_num(np.array([r["std"] for r in sel]))
      bars = ax.errorbar(x, m, yerr=s, marker="o", capsize=3,
                         label=f"{ds} (n={max(r['n_seeds'] for r in sel)})")
      line = bars.lines[0]
      ax.fill_between(x, m - s, m + s, color=line.get_color(), alpha=0.15)
      if "default_c" in sel[0] and not categorical:
        ax.axvline(sel[0]["default_c"], color=line.get_color(), ls=":", lw=1)
    if categorical:
      ax.set_xticks(range(len(xs_all)), [f"{v:g}" for v in xs_all])
    ax.set_xlabel(xlabel)
    ax.set_ylabel(f"#All {METRICS[metric].title}")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
  fig.suptitle(title)
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)
  return True

