"""Figures 5 (#All AUC against c of Eq. 12, swept over saved predictions) and 6 (against alpha of
Eq. 11, one trained run per alpha), in the pooled AUCs of `FIGURE_METRICS`; mean, std, min and
max over seed pairs (seed, data_seed)."""

from __future__ import annotations

from typing import Sequence

import numpy as np

from experiments.report.loading import (FIGURE_METRICS, METRICS, Folder, ReportError, RunKey,
                                        RunResult, Stat, alpha_runs, auc_at_c,
                                        default_mscan_runs, metric_value)


def sweep_c(run: RunResult, c_values: Sequence[float], label_key: str) -> dict[float, float]:
  """#All AUC of Eq. (12)'s score for each c, from the run's saved y_m and y_s."""
  return {float(c): auc_at_c(run, c, label_key) for c in c_values}


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



# ----------------------------------------------------------------------------- the mechanism study

def _pyplot():
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  return plt


def plot_dose_response(study, module: str, path: str) -> bool:
  """One module's gain against each dial's level (placebo, moderate = the default, strong): one
  column per dial, one row per measure, the mean gain with its 95 % CI as bars and band; a flagged
  placebo gain in red. False (nothing written) without a dial level."""
  from experiments.report.mechanisms import DIAL_VALUES, LEVELS, MEASURES, dial_levels
  if not study.dials or module not in study.contrasts:
    return False
  plt = _pyplot()
  rows, cols = len(study.measures), len(study.dials)
  fig, axes = plt.subplots(rows, cols, figsize=(3.4 * cols, 2.5 * rows), squeeze=False,
                           sharex="col")
  for j, dial in enumerate(study.dials):
    for i, measure in enumerate(study.measures):
      ax = axes[i][j]
      gains = [(x, g) for x, lv in enumerate(dial_levels(dial))
               if (g := study.get(module, lv, measure)) is not None]
      ax.axhline(0.0, color="grey", lw=0.8)
      if gains:
        x = np.array([p for p, _ in gains], float)
        m = np.array([g.mean for _, g in gains])
        lo = np.array([g.lo if g.n >= 2 else g.mean for _, g in gains])
        hi = np.array([g.hi if g.n >= 2 else g.mean for _, g in gains])
        ax.errorbar(x, m, yerr=[m - lo, hi - m], marker="o", capsize=3, color="C0")
        ax.fill_between(x, lo, hi, color="C0", alpha=0.15)
        for p, g in gains:
          if g.flagged:
            ax.plot([p], [g.mean], marker="X", ms=11, color="red", ls="none",
                    label="placebo flag")
        if any(g.flagged for _, g in gains):
          ax.legend(fontsize=7)
      ax.set_xticks(range(3), [f"{n}\n{DIAL_VALUES[dial][n]:g}" for n in LEVELS],
                    fontsize=8)
      ax.set_xlim(-0.3, 2.3)
      ax.grid(alpha=0.3)
      if i == 0:
        ax.set_title(dial)
      if j == 0:
        ax.set_ylabel(f"gain: {MEASURES[measure].short}", fontsize=8)
  fig.suptitle(f"{study.dataset}: {module}\ngain over its control against the dial level "
               "(mean, 95 % CI over seed pairs)", fontsize=9)
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)
  return True


def plot_sbe_c(rows: Sequence[dict], path: str) -> bool:
  """The SBE's c trade-off per dial level: one column per dial (placebo, default, strong as three
  lines), one row per metric (#All observed-click AUC, per-user true-interest AUC); band: 95 % CI
  over seed pairs; dotted: the runs' c."""
  from experiments.report.mechanisms import DIAL_VALUES, LEVELS, dial_levels
  dials = [d for d in DIAL_VALUES if any(r["dial"] == d for r in rows)]
  if not dials:
    return False
  metrics = [m for m in METRICS if any(r["metric"] == m for r in rows)]
  plt = _pyplot()
  fig, axes = plt.subplots(len(metrics), len(dials), figsize=(4.0 * len(dials),
                                                              3.0 * len(metrics)), squeeze=False)
  for j, dial in enumerate(dials):
    for i, metric in enumerate(metrics):
      ax = axes[i][j]
      for k, level in enumerate(dial_levels(dial)):
        sel = sorted((r for r in rows if (r["dial"], r["level"]) == level
                      and r["metric"] == metric), key=lambda r: r["c"])
        if not sel:
          continue
        x = np.array([r["c"] for r in sel])
        m = np.array([r["mean"] for r in sel])
        lo = np.array([r["ci_lo"] for r in sel])
        hi = np.array([r["ci_hi"] for r in sel])
        name = LEVELS[k]
        ax.plot(x, m, marker="o", ms=3, color=f"C{k}",
                label=f"{name} {DIAL_VALUES[dial][name]:g} "
                      f"(n={max(r['n_seeds'] for r in sel)})")
        if np.isfinite(lo).any():
          ax.fill_between(x, lo, hi, color=f"C{k}", alpha=0.15)
        ax.axvline(sel[0]["default_c"], color="grey", ls=":", lw=1)
      ax.grid(alpha=0.3)
      ax.legend(fontsize=7)
      if i == 0:
        ax.set_title(dial)
      if i == len(metrics) - 1:
        ax.set_xlabel("c (Eq. 12)")
      if j == 0:
        ax.set_ylabel({"auc": "#All AUC (observed clicks)",
                       "true_interest_user_auc": "per-user true-interest AUC"}.get(
                           metric, METRICS[metric].title), fontsize=8)
  fig.suptitle("SBE: the c trade-off at each dial level\n(saved y_m, y_s; no retraining)",
               fontsize=9)
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)
  return True


def plot_scenario_factor(points: Sequence[dict], cells: dict, path: str) -> bool:
  """Does y_s learn the scenario bias? Per scenario and run, the mean sigmoid(y_s) against the
  true examination rate, one colour per M-scan variant; one panel per exposure_bias level (the
  default data as its moderate). Other dials' levels are in the CSV."""
  from experiments.report.mechanisms import DEFAULT, dial_levels, level_label
  levels = [lv for lv in dial_levels("exposure_bias")
            if any((p["dial"], p["level"]) == lv for p in points)]
  if not levels:
    return False
  variants = list(dict.fromkeys(p["variant"] for p in points))
  plt = _pyplot()
  fig, axes = plt.subplots(1, len(levels), figsize=(4.6 * len(levels), 4.0), squeeze=False)
  for ax, level in zip(axes[0], levels):
    for k, v in enumerate(variants):
      sel = [p for p in points if p["variant"] == v and (p["dial"], p["level"]) == level]
      if not sel:
        continue
      cell = cells.get((v, level))
      ax.scatter([p["true_exam_rate"] for p in sel], [p["mean_factor"] for p in sel], s=14,
                 color=f"C{k}", alpha=0.7,
                 label=f"{v}: ρ {cell.text}" if cell is not None else v)
    ax.set_title(level_label(level) if level != DEFAULT else "default (exposure_bias moderate)",
                 fontsize=9)
    ax.set_xlabel("true examination rate of the scenario")
    ax.set_ylabel("mean sigmoid(y_s) of the scenario")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=6)
  fig.suptitle("Does y_s learn the scenario bias? One point per scenario and run", fontsize=9)
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)
  return True


# ----------------------------------------------------------------------------- learning curves

def plot_learning_curves(curves: Sequence[dict], best: Sequence[dict], path: str) -> bool:
  """Validation score against epoch, one panel per dataset, one line per model row: the mean over
  the runs that reached the epoch, a band from their min to their max, and a dot at each run's
  best epoch (its own score there). False (nothing written) without a curve."""
  if not curves:
    return False
  plt = _pyplot()
  datasets = list(dict.fromkeys(r["dataset"] for r in curves))
  fig, axes = plt.subplots(1, len(datasets), figsize=(7.5 * len(datasets), 4.6), squeeze=False)
  for ax, ds in zip(axes[0], datasets):
    rows = list(dict.fromkeys(r["row"] for r in curves if r["dataset"] == ds))
    for k, row in enumerate(rows):
      sel = sorted((r for r in curves if r["dataset"] == ds and r["row"] == row),
                   key=lambda r: r["epoch"])
      x = np.array([r["epoch"] for r in sel])
      color, ls = f"C{k % 10}", ("-", "--", ":")[k // 10 % 3]
      ax.plot(x, [r["mean"] for r in sel], color=color, ls=ls, lw=1.4,
              label=f"{sel[0]['title']} (n={max(r['n_runs'] for r in sel)})")
      ax.fill_between(x, [r["min"] for r in sel], [r["max"] for r in sel], color=color,
                      alpha=0.12, lw=0)
      pts = [p for p in best if p["dataset"] == ds and p["row"] == row]
      ax.plot([p["epoch"] for p in pts], [p["value"] for p in pts], "o", ms=3.5, color=color,
              ls="none")
    metrics = sorted({r["metric"] for r in curves if r["dataset"] == ds})
    ax.set_xlabel("epoch")
    ax.set_ylabel(f"validation {', '.join(metrics)}")
    ax.set_title(ds, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=6, loc="center left", bbox_to_anchor=(1.0, 0.5))
  fig.suptitle("Learning curves at the default data: mean over seed pairs,\nband min..max of "
               "the runs that reached the epoch; dots: each run's best epoch", fontsize=9)
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)
  return True
