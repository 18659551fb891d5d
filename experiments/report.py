"""Turns the finished runs of `experiments.grid` into the paper's tables and figures (§4).

    python -m experiments.report --out=DIR [--also=DIR2,DIR3] [--report_dir=DIR]

Reads every `DIR/runs/<name>/` holding `run.json` and `results.json` (unfinished runs are
listed, not used) and writes into DIR (or --report_dir):

  report.md          Table 1, Table 2, Figures 5 and 6, readable on GitHub
  table1.csv         AUC per scenario and #All for every model: mean, std over seeds, RelaImpr
  significance.csv   the tests behind Table 1's `*`
  table2.csv         #All AUC of the four ablation variants (use_saca x use_sbe)
  figure5_c.csv      #All AUC against c of Eq. (12), swept over saved predictions (no retraining)
  figure6_alpha.csv  #All AUC against alpha of Eq. (11) (one trained run per alpha and seed)
  figure5_c.png, figure6_alpha.png
  runs.csv           one line per finished run
With --report_dir=OTHER the files go there, beside grid.json and each used run's results.json and
config.json (no checkpoints, no predictions): a folder small enough to commit.

Several folders (`--also`), one dataset each, give one line per dataset in the figures and one
block per dataset in the tables. On data that knows the true interest (the synthetic benchmark,
`true_like` in predictions.parquet) every table and figure is also given in true-interest AUC.
Where the dataset is one of the paper's (aliccp, cloudtheme), the paper's numbers
(`experiments.paper_results`) are shown beside ours.

Definitions used:
  * mean ± std: over seeds, std the sample standard deviation (ddof 1); "n" seeds.
  * RelaImpr = ((AUC - 0.5) / (AUC_ref - 0.5) - 1) x 100 % of the mean AUCs, against Single per
    scenario and Mix on #All (§4.1.2, `metrics.relaimpr`).
  * `*`: M-scan against the best baseline of the row (highest mean AUC), on the seeds both have:
    per seed, DeLong's test of the two correlated AUCs on the same test samples (that scenario's
    test samples of the two models' predictions.parquet, joined on sample_id); the per-seed
    p-values are combined by Fisher's method; and a paired t-test of the per-seed AUCs.
    `significance.significant`: M-scan's mean is higher and both p < 0.05 (so no `*` with fewer
    than 2 seeds).
  * c sweep: score = (y_m - c) * sigmoid(y_s) (Eq. 12, `objective.inference_score`) recomputed
    from each run's saved y_m and y_s for every c; per-scenario AUCs do not depend on c, so the
    figure shows #All.
"""

from __future__ import annotations

import argparse
import collections
import csv
import dataclasses
import json
import math
import os
import shutil
import sys
from typing import Any, Iterable, Optional, Sequence

import numpy as np

from experiments import grids, paper_results
from mscan_jax.evaluation import metrics as metrics_lib
from mscan_jax.evaluation import significance

METRICS = {"auc": "AUC (observed clicks)", "true_interest_auc": "true-interest AUC"}
PRED_LABEL = {"auc": "label", "true_interest_auc": "true_like"}
MODEL_TITLES = {"single": "Single", "mix": "Mix", "shared_bottom": "Shared bottom",
                "finetune": "Finetune", "mmoe": "MMOE", "ple": "PLE", "aesm2": "AESM2",
                "m2m": "M2M", "star": "STAR", "mscan": "M-scan"}
ABLATIONS = ((True, True), (True, False), (False, True), (False, False))   # paper's row order
LEVEL = 0.05


class ReportError(ValueError):
  """Inconsistent runs (e.g. two models' predictions disagree on a sample's label)."""


# ----------------------------------------------------------------------------- loading

# Columns of predictions.parquet the report reads; the last `_CACHE_SIZE` runs read are kept
# (a paper-scale test split is tens of millions of rows per run).
PRED_COLUMNS = ("sample_id", "scenario", "label", "score", "true_like", "y_m", "y_s")
_CACHE_SIZE = 8
_PRED_CACHE: "collections.OrderedDict[str, dict]" = collections.OrderedDict()


@dataclasses.dataclass
class RunResult:
  name: str
  dataset: str
  overrides: dict
  results: dict
  workdir: str
  timing: dict = dataclasses.field(default_factory=dict)   # wall_s, cpu_s of the run (run.json)

  def setting(self, key: str) -> Any:
    return self.overrides.get(key, grids.default_value(key))

  @property
  def model(self) -> str:
    return self.overrides["model"]

  @property
  def seed(self) -> int:
    return int(self.overrides["seed"])

  def predictions(self) -> dict[str, np.ndarray]:
    """The `PRED_COLUMNS` of predictions.parquet present in the file, {column: numpy array}."""
    path = os.path.join(self.workdir, "predictions.parquet")
    if path in _PRED_CACHE:
      _PRED_CACHE.move_to_end(path)
      return _PRED_CACHE[path]
    if not os.path.exists(path):
      raise ReportError(f"{path} does not exist (run with train.export_predictions=True)")
    import pyarrow.parquet as pq
    names = pq.read_schema(path).names
    missing = [c for c in ("sample_id", "scenario", "label", "score") if c not in names]
    if missing:
      raise ReportError(f"{path}: missing columns {missing}")
    table = pq.read_table(path, columns=[c for c in PRED_COLUMNS if c in names])
    pred = {c: table.column(c).to_numpy() for c in table.column_names}
    _PRED_CACHE[path] = pred
    while len(_PRED_CACHE) > _CACHE_SIZE:
      _PRED_CACHE.popitem(last=False)
    return pred


@dataclasses.dataclass
class Folder:
  path: str
  dataset: str
  info: dict
  runs: list[RunResult]
  unfinished: list[str]


def load_folder(path: str) -> Folder:
  """The finished runs of one grid folder (`run.json` + `results.json` in `runs/<name>/`)."""
  info_path = os.path.join(path, "grid.json")
  info = json.load(open(info_path)) if os.path.exists(info_path) else {}
  runs_dir = os.path.join(path, "runs")
  if not os.path.isdir(runs_dir):
    raise ReportError(f"{runs_dir} does not exist: run "
                      f"`python -m experiments.grid --out={path}` first")
  runs, unfinished = [], []
  for name in sorted(os.listdir(runs_dir)):
    wd = os.path.join(runs_dir, name)
    run_file, res_file = os.path.join(wd, "run.json"), os.path.join(wd, "results.json")
    if not os.path.exists(run_file):
      continue
    if not os.path.exists(res_file):
      unfinished.append(name)
      continue
    with open(run_file) as f:
      run = json.load(f)
    with open(res_file) as f:
      res = json.load(f)
    overrides = {k: tuple(v) if isinstance(v, list) else v for k, v in run["overrides"].items()}
    timing = {k: run[k] for k in ("wall_s", "cpu_s") if k in run}
    runs.append(RunResult(name, info.get("dataset") or res.get("dataset", "?"), overrides, res, wd,
                          timing))
  dataset = info.get("dataset") or (runs[0].dataset if runs else os.path.basename(path))
  return Folder(path, dataset, info, runs, unfinished)


def _only(run: RunResult, keys: Iterable[str]) -> bool:
  return set(run.overrides) <= set(keys) | {"model", "seed"}


def table1_runs(runs: Sequence[RunResult]) -> list[RunResult]:
  return [r for r in runs if r.model in grids.TABLE1_MODELS and _only(r, {"single.scenario"})]


def table2_runs(runs: Sequence[RunResult]) -> list[RunResult]:
  return [r for r in runs if r.model == "mscan" and _only(r, {"mscan.use_saca", "mscan.use_sbe"})]


def alpha_runs(runs: Sequence[RunResult]) -> list[RunResult]:
  return [r for r in runs if r.model == "mscan" and _only(r, {"mscan.alpha"})]


def default_mscan_runs(runs: Sequence[RunResult]) -> list[RunResult]:
  return [r for r in runs if r.model == "mscan" and _only(r, ())]


# ----------------------------------------------------------------------------- statistics

@dataclasses.dataclass
class Stat:
  values: dict[int, float]     # seed -> value

  @property
  def n(self) -> int:
    return len(self.values)

  @property
  def mean(self) -> float:
    v = [x for x in self.values.values() if not math.isnan(x)]
    return float(np.mean(v)) if v else float("nan")

  @property
  def std(self) -> float:
    v = [x for x in self.values.values() if not math.isnan(x)]
    return float(np.std(v, ddof=1)) if len(v) >= 2 else float("nan")


def _fmt(x: float, digits: int = 4) -> str:
  return "–" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{digits}f}"


def _fmt_pct(x: Optional[float]) -> str:
  return "–" if x is None or math.isnan(x) else f"{x:+.2f}%"


def _fmt_p(p: float) -> str:
  if p is None or math.isnan(p):
    return "–"
  return f"{p:.1e}" if p < 1e-3 else f"{p:.3f}"


def table1_rows(folder: Folder, runs: Sequence[RunResult]) -> list[str]:
  """Scenario rows of Table 1: the grid's target scenarios, else those of single/finetune runs,
  else every scenario of M-scan's test results if at most 4, else its 3 largest."""
  scen = folder.info.get("scenarios") or sorted(
      {int(r.setting("single.scenario")) for r in runs if r.model in grids.PER_SCENARIO_MODELS})
  if not scen:
    from experiments.grid import choose_scenarios
    ref = next((r for r in runs if r.model not in grids.PER_SCENARIO_MODELS), None)
    if ref is not None:
      counts = {int(k): int(v) for k, v in ref.results.get("n_per_scenario", {}).items()}
      scen = choose_scenarios(counts)
  return [str(s) for s in sorted(scen)] + ["all"]


def cell_stat(runs: Sequence[RunResult], model: str, row: str, metric: str) -> Stat:
  """Per-seed values of `metric` for `model` in `row` (a scenario id or "all")."""
  values: dict[int, float] = {}
  for r in runs:
    if r.model != model or metric not in r.results:
      continue
    if model in grids.PER_SCENARIO_MODELS:
      if row == "all" or str(r.setting("single.scenario")) != row:
        continue
      values[r.seed] = float(r.results[metric]["all"])
    elif row == "all":
      values[r.seed] = float(r.results[metric]["all"])
    elif row in r.results[metric]["per_scenario"]:
      values[r.seed] = float(r.results[metric]["per_scenario"][row])
  return Stat(values)


def _run_for(runs: Sequence[RunResult], model: str, row: str, seed: int) -> Optional[RunResult]:
  for r in runs:
    if r.model == model and r.seed == seed and (
        model not in grids.PER_SCENARIO_MODELS or str(r.setting("single.scenario")) == row):
      return r
  return None


def joined_scores(a: RunResult, b: RunResult, row: str, label_key: str
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
  """Labels and both runs' scores on the test samples of `row` both scored, joined on sample_id.

  Returns (labels, scores_a, scores_b, number of samples only one of the runs has)."""
  pa, pb = a.predictions(), b.predictions()
  if label_key not in pa or label_key not in pb:
    raise ReportError(f"{label_key!r} missing from the predictions of {a.name} or {b.name}")
  sel_a = np.ones(len(pa["sample_id"]), bool) if row == "all" else pa["scenario"] == int(row)
  sel_b = np.ones(len(pb["sample_id"]), bool) if row == "all" else pb["scenario"] == int(row)
  ids_a, ids_b = pa["sample_id"][sel_a], pb["sample_id"][sel_b]
  common, ia, ib = np.intersect1d(ids_a, ids_b, assume_unique=True, return_indices=True)
  y_a, y_b = pa[label_key][sel_a][ia], pb[label_key][sel_b][ib]
  if not np.array_equal(y_a, y_b):
    bad = int(common[np.flatnonzero(y_a != y_b)[0]])
    raise ReportError(f"{a.workdir} and {b.workdir}: predictions.parquet disagree on "
                      f"{label_key} of sample_id {bad}")
  unmatched = len(ids_a) + len(ids_b) - 2 * len(common)
  return (y_a.astype(np.float64), pa["score"][sel_a][ia].astype(np.float64),
          pb["score"][sel_b][ib].astype(np.float64), unmatched)


@dataclasses.dataclass
class SigTest:
  row: str
  metric: str
  baseline: str
  seeds: list[int]
  delong_p: list[float]
  fisher_p: float
  ttest_p: float
  mean_diff: float
  star: bool
  note: str = ""


def significance_test(runs: Sequence[RunResult], row: str, metric: str, baseline: str,
                      mscan_stat: Stat, base_stat: Stat) -> SigTest:
  """M-scan vs `baseline` in `row`: DeLong per seed (Fisher-combined) and a paired t-test."""
  seeds = sorted(set(mscan_stat.values) & set(base_stat.values))
  ps, notes, unmatched = [], [], 0
  for s in seeds:
    a, b = _run_for(runs, "mscan", row, s), _run_for(runs, baseline, row, s)
    try:
      y, sa, sb, n_un = joined_scores(a, b, row, PRED_LABEL[metric])
      unmatched += n_un
      ps.append(significance.delong_test(y, sa, sb)["p_value"])
    except (ReportError, ValueError) as e:
      ps.append(float("nan"))
      notes.append(f"seed {s}: {e}")
  if unmatched:
    notes.append(f"{unmatched} test samples scored by only one of the two models were left out")
  a_seeds = [mscan_stat.values[s] for s in seeds]
  b_seeds = [base_stat.values[s] for s in seeds]
  t = significance.paired_ttest(a_seeds, b_seeds) if seeds else {"p_value": float("nan"),
                                                                 "mean_diff": float("nan")}
  if ps and not any(math.isnan(p) for p in ps):
    fisher = significance.combine_pvalues(ps)
    star = significance.significant(ps, a_seeds, b_seeds, level=LEVEL)
  else:
    fisher, star = float("nan"), False
  return SigTest(row, metric, baseline, seeds, ps, fisher, t["p_value"], t["mean_diff"], star,
                 "; ".join(notes))


@dataclasses.dataclass
class Table1:
  dataset: str
  metric: str
  rows: list[str]
  models: list[str]
  stats: dict[tuple[str, str], Stat]          # (row, model) -> Stat
  relaimpr: dict[tuple[str, str], float]
  best: dict[str, str]                        # row -> model with the best mean
  tests: dict[str, SigTest]                   # row -> M-scan vs best baseline


def build_table1(folder: Folder, metric: str) -> Optional[Table1]:
  runs = table1_runs(folder.runs)
  runs = [r for r in runs if metric in r.results]
  if not runs:
    return None
  rows = table1_rows(folder, runs)
  present = {r.model for r in runs}
  models = [m for m in grids.TABLE1_MODELS if m in present]
  stats = {(row, m): cell_stat(runs, m, row, metric) for row in rows for m in models}
  relaimpr, best, tests = {}, {}, {}
  for row in rows:
    ref = "mix" if row == "all" else "single"
    ref_mean = stats[(row, ref)].mean if ref in models else float("nan")
    for m in models:
      mean = stats[(row, m)].mean
      if m != ref and not math.isnan(mean) and not math.isnan(ref_mean):
        relaimpr[(row, m)] = metrics_lib.relaimpr(mean, ref_mean)
    means = {m: stats[(row, m)].mean for m in models if not math.isnan(stats[(row, m)].mean)}
    if len(means) >= 2:
      best[row] = max(means, key=means.get)
    base_means = {m: v for m, v in means.items() if m != "mscan"}
    if "mscan" in means and base_means:
      b = max(base_means, key=base_means.get)
      tests[row] = significance_test(runs, row, metric, b, stats[(row, "mscan")], stats[(row, b)])
  return Table1(folder.dataset, metric, rows, models, stats, relaimpr, best, tests)


def _scenario_label(row: str) -> str:
  return "#All" if row == "all" else f"#{row}"


def table1_markdown(t: Table1) -> list[str]:
  key = paper_results.paper_key(t.dataset)
  paper = paper_results.TABLE1.get(key, {}) if key and t.metric == "auc" else {}
  head = ["Scenario", *(MODEL_TITLES.get(m, m) for m in t.models)]
  lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
  for row in t.rows:
    cells = [_scenario_label(row)]
    for m in t.models:
      st = t.stats[(row, m)]
      if st.n == 0:
        cells.append("–")
        continue
      text = _fmt(st.mean) + (f" ± {_fmt(st.std)}" if st.n >= 2 else "")
      if t.best.get(row) == m:
        text = f"**{_fmt(st.mean)}**" + (f" ± {_fmt(st.std)}" if st.n >= 2 else "")
      if m == "mscan" and row in t.tests and t.tests[row].star:
        text += "\\*"
      if (row, m) in t.relaimpr:
        text += f"<br>{_fmt_pct(t.relaimpr[(row, m)])}"
      cells.append(text)
    lines.append("| " + " | ".join(cells) + " |")
    if paper and row in paper and (row == "all" or paper_results.SCENARIOS_COMPARABLE[key]):
      pcells = [f"{_scenario_label(row)} paper"]
      for m in t.models:
        c = paper[row].get(m)
        if c is None:
          pcells.append("–" if m in paper_results.PAPER_MODELS.values() else "n/a")
          continue
        text = f"{c[0]:.4f}" + ("\\*" if c[2] else "")
        if c[1] is not None:
          text += f"<br>{c[1]:+.2f}%†"
        pcells.append(f"_{text}_")
      lines.append("| " + " | ".join(pcells) + " |")
  return lines


def table1_csv_rows(t: Table1) -> list[dict]:
  key = paper_results.paper_key(t.dataset)
  paper = paper_results.TABLE1.get(key, {}) if key and t.metric == "auc" else {}
  out = []
  for row in t.rows:
    for m in t.models:
      st = t.stats[(row, m)]
      pc = paper.get(row, {}).get(m) if paper and (
          row == "all" or paper_results.SCENARIOS_COMPARABLE.get(key, False)) else None
      out.append({"dataset": t.dataset, "metric": t.metric, "scenario": row, "model": m,
                  "n_seeds": st.n, "mean": st.mean, "std": st.std,
                  "seeds": " ".join(str(s) for s in sorted(st.values)),
                  "relaimpr_pct": t.relaimpr.get((row, m), float("nan")),
                  "best": t.best.get(row) == m,
                  "star": m == "mscan" and row in t.tests and t.tests[row].star,
                  "paper_auc": pc[0] if pc else "",
                  "paper_relimp_pct": pc[1] if pc and pc[1] is not None else "",
                  "paper_star": pc[2] if pc else ""})
  return out


def significance_csv_rows(t: Table1) -> list[dict]:
  return [{"dataset": t.dataset, "metric": t.metric, "scenario": row, "baseline": s.baseline,
           "seeds": " ".join(map(str, s.seeds)),
           "delong_p_per_seed": " ".join(f"{p:.4g}" for p in s.delong_p),
           "fisher_p": s.fisher_p, "ttest_p": s.ttest_p, "mean_diff": s.mean_diff,
           "star": s.star, "note": s.note} for row, s in t.tests.items()]


def significance_markdown(tables: Sequence[Table1]) -> list[str]:
  lines = ["| Dataset | Metric | Scenario | Best baseline | M-scan − baseline | DeLong p per seed "
           "| Fisher p | paired t p | `*` |", "|---|---|---|---|---|---|---|---|---|"]
  for t in tables:
    for row, s in t.tests.items():
      lines.append(f"| {t.dataset} | {METRICS[t.metric]} | {_scenario_label(row)} | "
                   f"{MODEL_TITLES.get(s.baseline, s.baseline)} | {s.mean_diff:+.4f} | "
                   f"{', '.join(_fmt_p(p) for p in s.delong_p) or '–'} | {_fmt_p(s.fisher_p)} | "
                   f"{_fmt_p(s.ttest_p)} | {'yes' if s.star else 'no'} |")
  notes = [f"- {t.dataset}, {_scenario_label(row)}: {s.note}" for t in tables
           for row, s in t.tests.items() if s.note]
  return lines + ([""] + notes if notes else [])


# ----------------------------------------------------------------------------- Table 2

def build_table2(folder: Folder, metric: str) -> dict[tuple[bool, bool], Stat]:
  runs = [r for r in table2_runs(folder.runs) if metric in r.results]
  out = {}
  for v in ABLATIONS:
    vals = {r.seed: float(r.results[metric]["all"]) for r in runs
            if (bool(r.setting("mscan.use_saca")), bool(r.setting("mscan.use_sbe"))) == v}
    out[v] = Stat(vals)
  return out


def table2_markdown(folders: Sequence[Folder], metric: str) -> list[str]:
  cols, data = [], []
  for f in folders:
    st = build_table2(f, metric)
    if not any(s.n for s in st.values()):
      continue
    cols.append(f.dataset)
    data.append(st)
    key = paper_results.paper_key(f.dataset)
    if key and metric == "auc":
      cols.append(f"{f.dataset} (paper)")
      data.append({v: paper_results.TABLE2[v][key] for v in ABLATIONS})
  if not cols:
    return []
  lines = ["| SACA | SBE | " + " | ".join(cols) + " |", "|---|---|" + "---|" * len(cols)]
  for v in ABLATIONS:
    cells = ["✓" if v[0] else "×", "✓" if v[1] else "×"]
    for d in data:
      x = d[v]
      if isinstance(x, Stat):
        best = max((s.mean for s in d.values() if s.n), default=float("nan"))
        text = "–" if x.n == 0 else (_fmt(x.mean) + (f" ± {_fmt(x.std)}" if x.n >= 2 else ""))
        if x.n and x.mean == best:
          text = f"**{_fmt(x.mean)}**" + (f" ± {_fmt(x.std)}" if x.n >= 2 else "")
        cells.append(text + (f" (n={x.n})" if x.n else ""))
      else:
        cells.append(f"_{x:.4f}_")
    lines.append("| " + " | ".join(cells) + " |")
  return lines


def table2_csv_rows(folders: Sequence[Folder]) -> list[dict]:
  out = []
  for f in folders:
    key = paper_results.paper_key(f.dataset)
    for metric in METRICS:
      for v, st in build_table2(f, metric).items():
        if st.n == 0:
          continue
        out.append({"dataset": f.dataset, "metric": metric, "use_saca": v[0], "use_sbe": v[1],
                    "n_seeds": st.n, "mean": st.mean, "std": st.std,
                    "paper_auc": paper_results.TABLE2[v][key] if key and metric == "auc" else ""})
  return out


# ----------------------------------------------------------------------------- figures

def sweep_c(run: RunResult, c_values: Sequence[float], label_key: str) -> dict[float, float]:
  """#All AUC of Eq. (12)'s score for each c, from the run's saved y_m and y_s."""
  from mscan_jax.training import objective
  pred = run.predictions()
  if "y_s" not in pred or "y_m" not in pred:
    raise ReportError(f"{run.workdir}/predictions.parquet has no y_m / y_s (the SBE is off?)")
  out = {}
  for c in c_values:
    score = np.asarray(objective.inference_score({"y_m": pred["y_m"], "y_s": pred["y_s"]}, c))
    out[float(c)] = metrics_lib.auc(pred[label_key], score)
  return out


def figure5_data(folder: Folder, c_values: Sequence[float]) -> list[dict]:
  """Rows {dataset, metric, c, n_seeds, mean, std, min, max} of the c sweep."""
  runs = [r for r in default_mscan_runs(folder.runs)]
  rows = []
  for metric in METRICS:
    label_key = PRED_LABEL[metric]
    per_seed: dict[int, dict[float, float]] = {}
    for r in runs:
      if metric not in r.results:
        continue
      cs = sorted(set(float(c) for c in c_values) | {float(r.results.get("c", 1.0))})
      try:
        per_seed[r.seed] = sweep_c(r, cs, label_key)
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
  for metric in METRICS:
    by_alpha: dict[float, dict[int, float]] = {}
    for r in runs:
      if metric in r.results:
        by_alpha.setdefault(float(r.setting("mscan.alpha")), {})[r.seed] = float(
            r.results[metric]["all"])
    for a in sorted(by_alpha):
      st = Stat(by_alpha[a])
      v = list(st.values.values())
      rows.append({"dataset": folder.dataset, "metric": metric, "alpha": a, "n_seeds": st.n,
                   "mean": st.mean, "std": st.std, "min": min(v), "max": max(v)})
  return rows


def plot(rows: Sequence[dict], x_key: str, path: str, title: str, xlabel: str,
         categorical: bool = False) -> bool:
  """Mean #All AUC against x, one line per dataset, bars and a band of ± 1 std over seeds; one panel
  per metric present. Returns False (nothing written) when there is nothing to plot."""
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
    ax.set_ylabel(f"#All {METRICS[metric]}")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
  fig.suptitle(title)
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)
  return True


# ----------------------------------------------------------------------------- writing

def write_csv(path: str, rows: Sequence[dict], fields: Optional[Sequence[str]] = None) -> None:
  fields = list(fields or (rows[0].keys() if rows else []))
  with open(path, "w", newline="") as f:
    w = csv.DictWriter(f, fieldnames=fields)
    w.writeheader()
    for r in rows:
      w.writerow({k: (f"{v:.6g}" if isinstance(v, float) and not isinstance(v, bool) else v)
                  for k, v in r.items()})


def runs_csv_rows(folders: Sequence[Folder]) -> list[dict]:
  out = []
  for f in folders:
    for r in f.runs:
      res = r.results
      out.append({"dataset": f.dataset, "name": r.name, "model": r.model, "seed": r.seed,
                  "overrides": json.dumps({k: v for k, v in r.overrides.items()
                                           if k not in ("model", "seed")}),
                  "auc_all": res["auc"]["all"],
                  "true_interest_auc_all": res.get("true_interest_auc", {}).get("all", ""),
                  "gauc": res.get("gauc", ""), "logloss": res.get("logloss", ""),
                  "c": res.get("c", ""), "best_step": res.get("best_step", ""),
                  "steps": res.get("steps", ""), "wall_s": r.timing.get("wall_s", ""),
                  "cpu_s": r.timing.get("cpu_s", "")})
  return out


def write_report(folders: Sequence[Folder], out_dir: str,
                 c_values: Sequence[float] = grids.C_VALUES) -> str:
  """Writes report.md, the CSVs and the PNGs into `out_dir`; returns report.md's path."""
  os.makedirs(out_dir, exist_ok=True)
  tables = [t for f in folders for metric in METRICS
            if (t := build_table1(f, metric)) is not None]
  fig5 = [row for f in folders for row in figure5_data(f, c_values)]
  fig6 = [row for f in folders for row in figure6_data(f)]
  md = _markdown(folders, tables, fig5, fig6, out_dir, c_values)
  write_csv(os.path.join(out_dir, "table1.csv"),
            [r for t in tables for r in table1_csv_rows(t)],
            ["dataset", "metric", "scenario", "model", "n_seeds", "mean", "std", "seeds",
             "relaimpr_pct", "best", "star", "paper_auc", "paper_relimp_pct", "paper_star"])
  write_csv(os.path.join(out_dir, "significance.csv"),
            [r for t in tables for r in significance_csv_rows(t)],
            ["dataset", "metric", "scenario", "baseline", "seeds", "delong_p_per_seed",
             "fisher_p", "ttest_p", "mean_diff", "star", "note"])
  write_csv(os.path.join(out_dir, "table2.csv"), table2_csv_rows(folders),
            ["dataset", "metric", "use_saca", "use_sbe", "n_seeds", "mean", "std", "paper_auc"])
  write_csv(os.path.join(out_dir, "figure5_c.csv"), fig5,
            ["dataset", "metric", "c", "n_seeds", "mean", "std", "min", "max", "default_c"])
  write_csv(os.path.join(out_dir, "figure6_alpha.csv"), fig6,
            ["dataset", "metric", "alpha", "n_seeds", "mean", "std", "min", "max"])
  write_csv(os.path.join(out_dir, "runs.csv"), runs_csv_rows(folders),
            ["dataset", "name", "model", "seed", "overrides", "auc_all", "true_interest_auc_all",
             "gauc", "logloss", "c", "best_step", "steps", "wall_s", "cpu_s"])
  path = os.path.join(out_dir, "report.md")
  with open(path, "w") as f:
    f.write(md)
  return path


def _markdown(folders, tables, fig5, fig6, out_dir, c_values) -> str:
  n_runs = sum(len(f.runs) for f in folders)
  seeds = sorted({r.seed for f in folders for r in f.runs})
  L = ["# M-scan: experiment report (paper §4)", "",
       f"Generated by `python -m experiments.report` from {n_runs} finished runs "
       f"(seeds {', '.join(map(str, seeds)) or '–'}) in: "
       + ", ".join(f"`{os.path.relpath(f.path, out_dir)}` ({f.dataset}, size "
                   f"{f.info.get('size', '?')})" for f in folders) + "."]
  unfinished = [f"{f.dataset}: {', '.join(f.unfinished)}" for f in folders if f.unfinished]
  if unfinished:
    L += ["", "Unfinished runs (not used): " + "; ".join(unfinished) + "."]
  L += ["", "Numbers are mean ± std over seeds (sample std, ddof 1; no ± with one seed). "
        "RelaImpr = ((AUC − 0.5) / (AUC_ref − 0.5) − 1) × 100 % of the mean AUCs, against Single "
        "per scenario and Mix on #All (§4.1.2). **Bold**: best mean of the row. "
        "\\*: M-scan beats the best baseline of the row with p < 0.05 in both tests: DeLong's test "
        "of two correlated AUCs on the same test samples, one per seed, the per-seed p-values "
        "combined by Fisher's method, and a paired t-test of the per-seed AUCs (needs ≥ 2 seeds)."]
  if any(paper_results.paper_key(f.dataset) for f in folders):
    L += ["", "_Italic rows/columns marked paper_ are the paper's own numbers "
          "(`experiments/paper_results.py`). † The paper's RelImp column is the plain ratio "
          "AUC / AUC_ref − 1, not the RelaImpr above. The paper's Aliccp #1..#3 are assumed to be "
          "our scenario ids 1..3; its Cloud Theme scenarios are unnamed, so only #All is shown._"]
  # Table 1
  L += ["", "## Table 1: AUC per scenario and over all scenarios (#All)", ""]
  if not tables:
    L += ["No finished Table 1 runs (`--grid=table1`)."]
  for t in tables:
    L += [f"### {t.dataset}: {METRICS[t.metric]}", ""] + table1_markdown(t) + [""]
    n = {st.n for st in t.stats.values() if st.n}
    if n:
      L += [f"Seeds per cell: {', '.join(map(str, sorted(n)))}. "
            "Single and Finetune are trained and tested on one scenario, so they have no #All.", ""]
  if any(t.tests for t in tables):
    L += ["### Significance of M-scan against the best baseline", ""]
    L += significance_markdown(tables)
  # Table 2
  L += ["", "## Table 2: ablation of SACA and SBE (#All AUC)", ""]
  any2 = False
  for metric in METRICS:
    lines = table2_markdown(folders, metric)
    if lines:
      any2 = True
      L += [f"### {METRICS[metric]}", ""] + lines + [""]
  if not any2:
    L += ["No finished Table 2 runs (`--grid=table2`).", ""]
  # Figures
  L += ["## Figure 5: #All AUC against c of Eq. (12)", ""]
  if plot(fig5, "c", os.path.join(out_dir, "figure5_c.png"),
          "M-scan: #All AUC against c (Eq. 12), no retraining", "c"):
    L += ["![Figure 5](figure5_c.png)", "",
          "c is swept over the saved y_m and y_s of the default M-scan runs (one trained model per "
          "seed); bars and band: ± 1 std over seeds; the dotted line the c the runs used. "
          "Data: `figure5_c.csv`.", ""]
  else:
    L += ["No finished default M-scan runs with the SBE (`--grid=c`).", ""]
  L += ["## Figure 6: #All AUC against α of Eq. (11)", ""]
  if len({r["alpha"] for r in fig6}) < 2:
    L += ["Fewer than two α values have finished runs (`--grid=alpha`).", ""]
  elif plot(fig6, "alpha", os.path.join(out_dir, "figure6_alpha.png"),
          "M-scan: #All AUC against α (Eq. 11), one training per α", "α", categorical=True):
    L += ["![Figure 6](figure6_alpha.png)", "",
          "One trained M-scan per α and seed; bars and band: ± 1 std over seeds; the x axis is "
          "categorical. Data: `figure6_alpha.csv`.", ""]
  else:
    L += ["No finished α runs (`--grid=alpha`).", ""]
  timed = [r.timing for f in folders for r in f.runs if "cpu_s" in r.timing]
  L += ["## Files", "",
        "`table1.csv`, `significance.csv`, `table2.csv`, `figure5_c.csv`, `figure6_alpha.csv`, "
        "`runs.csv` (one line per run, with its wall and CPU seconds).", ""]
  if timed:
    L += [f"Training time of the {len(timed)} timed runs: "
          f"{sum(t['wall_s'] for t in timed) / 3600:.2f} h wall (summed over runs, as run by "
          f"`experiments.grid`, possibly several at a time), "
          f"{sum(t['cpu_s'] for t in timed) / 3600:.2f} CPU hours.", ""]
  return "\n".join(L)


def copy_run_files(folders: Sequence[Folder], report_dir: str) -> None:
  """Copies each folder's grid.json and each finished run's results.json and config.json (no
  checkpoints, no predictions) into `report_dir` (under `<dataset>/` when several folders)."""
  for f in folders:
    dest = os.path.join(report_dir, f.dataset) if len(folders) > 1 else report_dir
    os.makedirs(dest, exist_ok=True)
    if os.path.exists(os.path.join(f.path, "grid.json")):
      shutil.copyfile(os.path.join(f.path, "grid.json"), os.path.join(dest, "grid.json"))
    for r in f.runs:
      os.makedirs(os.path.join(dest, "runs", r.name), exist_ok=True)
      for name in ("results.json", "config.json"):
        if os.path.exists(os.path.join(r.workdir, name)):
          shutil.copyfile(os.path.join(r.workdir, name), os.path.join(dest, "runs", r.name, name))


# ----------------------------------------------------------------------------- command line

def main(argv: Sequence[str]) -> int:
  p = argparse.ArgumentParser(prog="python -m experiments.report",
                              description=__doc__.split("\n")[0])
  p.add_argument("--out", required=True, help="grid folder (from experiments.grid)")
  p.add_argument("--also", default="", help="more grid folders (other datasets), comma-separated")
  p.add_argument("--report_dir", default="", help="where to write (default: --out); a folder "
                 "other than --out also gets grid.json and each run's results.json and "
                 "config.json, so it can be committed without checkpoints or predictions")
  p.add_argument("--c_values", default="", help="c values of Figure 5, comma-separated "
                 f"(default {','.join(f'{c:g}' for c in grids.C_VALUES)})")
  a = p.parse_args(list(argv))
  paths = [a.out] + [x for x in a.also.split(",") if x]
  c_values = [float(x) for x in a.c_values.split(",")] if a.c_values else grids.C_VALUES
  try:
    folders = [load_folder(x) for x in paths]
    path = write_report(folders, a.report_dir or a.out, c_values)
    if a.report_dir and os.path.abspath(a.report_dir) != os.path.abspath(a.out):
      copy_run_files(folders, a.report_dir)
  except ReportError as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  print(f"wrote {path} ({sum(len(f.runs) for f in folders)} runs)")
  return 0


if __name__ == "__main__":
  sys.exit(main(sys.argv[1:]))
