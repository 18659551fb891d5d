"""Table 1 (AUC per scenario and #All), its significance tests, and Table 2 (ablations)."""

from __future__ import annotations

import dataclasses
import math
from typing import Optional, Sequence

from experiments import grids, paper_results
from experiments.report.loading import (METRICS, PRED_LABEL, Folder, ReportError, RunResult, Stat,
                                        joined_scores, table1_runs, table2_runs)
from mscan_jax.evaluation import metrics as metrics_lib
from mscan_jax.evaluation import significance

MODEL_TITLES = {"single": "Single", "mix": "Mix", "shared_bottom": "Shared bottom",
                "finetune": "Finetune", "mmoe": "MMOE", "ple": "PLE", "aesm2": "AESM2",
                "m2m": "M2M", "star": "STAR", "mscan": "M-scan"}
ABLATIONS = ((True, True), (True, False), (False, True), (False, False))   # paper's row order
LEVEL = 0.05


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

