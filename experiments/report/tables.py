"""Table 1 (every scenario and #All), its significance tests, and Table 2 (ablations).

Columns and titles come from the model registry (`mscan_jax.models`): Table 1's models are
`models.names(table="table1")` in display order, each followed by its runs with an information
switch of `grids.INFORMATION` present in the folder (the equal-information rows: "Mix + DIN(H_u)",
"M-scan + click flags"), then the reference scorers and oracles present, labelled as such. The
rules (also printed in report.md):

  * RelaImpr = ((AUC - 0.5) / (AUC_ref - 0.5) - 1) x 100 % of the mean values, against the first
    target-scenario model of Table 1 (Single) per scenario and the first other one (Mix) on #All
    (§4.1.2). Printed "–" where AUC_ref < `RELAIMPR_MIN_REF`: near 0.5 the ratio divides by almost
    zero (it printed -1884% and +12479% on scenarios where Single was at chance).
  * `*`: M-scan's mean is higher than the best baseline's (highest mean of the other models of the
    row) and a paired t-test over seed pairs (seed, data_seed) gives p < `LEVEL` (so no `*` with
    fewer than 2 pairs). The per-seed DeLong tests, combined by Fisher's method, are shown as an
    auxiliary column only: they are on one test set (per data seed), so not independent, and
    Fisher's method overstates their significance (5.7e-10 where the paired t-test gave 0.82).
  * Bold: the best model of the row, only where its lead over the second-best mean exceeds the
    larger of the two cells' std over seed pairs (so never with one pair). References never bold.
  * Not converged (`loading.not_converged`): a cell with a run whose step budget ran out before
    early stopping fired says so; it is never bold nor beaten in bold, and no `*` is given where
    M-scan's or the best baseline's cell has such a run.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Optional, Sequence

from experiments import grids, paper_results
from experiments.report.loading import (METRICS, MSCAN, NOT_CONVERGED, Folder, ReportError,
                                        RunKey, RunResult, Stat, cell_stat, column_information,
                                        column_model, column_of, format_keys, is_reference,
                                        joined_scores, metric_value, not_converged,
                                        reference_runs, rows_of, run_for, spec, table1_runs,
                                        table2_runs)
from mscan_jax import models
from mscan_jax.evaluation import metrics as metrics_lib
from mscan_jax.evaluation import significance

ABLATIONS = ((True, True), (True, False), (False, True), (False, False))   # paper's row order
LEVEL = 0.05
RELAIMPR_MIN_REF = 0.52


# ----------------------------------------------------------------------------- formatting

def fmt(x: Optional[float], digits: int = 4) -> str:
  return "–" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{digits}f}"


def fmt_pct(x: Optional[float]) -> str:
  return "–" if x is None or math.isnan(x) else f"{x:+.2f}%"


def fmt_p(p: Optional[float]) -> str:
  if p is None or math.isnan(p):
    return "–"
  return f"{p:.1e}" if p < 1e-3 else f"{p:.3f}"


def fmt_stat(st: Stat, bold: bool = False) -> str:
  """"mean ± std" ("mean" with one seed pair, "–" with none); the mean in bold if `bold`; then
  "(not converged: k/n)" where k of its n runs did not converge."""
  if st.n == 0:
    return "–"
  mean = f"**{fmt(st.mean)}**" if bold else fmt(st.mean)
  return (mean + (f" ± {fmt(st.std)}" if st.n >= 2 else "")
          + (f" ({NOT_CONVERGED}: {len(st.unconverged)}/{st.n})" if st.unconverged else ""))


def scenario_label(row: str) -> str:
  return "#All" if row == "all" else f"#{row}"


def column_title(column: str) -> str:
  """The registry's title, then what the column's information switches add ("Mix + DIN(H_u)");
  reference scorers and oracles labelled as such."""
  s = spec(column)
  if s is not None and s.kind != "model":
    return f"{s.title} [{'ref' if s.kind == 'reference' else 'oracle'}]"
  return " ".join([models.title(column_model(column)),
                   *(i.title for i in column_information(column))])


def column_sees(column: str) -> str:
  """What the column's input holds: the registry's `sees` and what its switches add."""
  s = spec(column)
  return ("?" if s is None else s.sees) + "".join(
      ("" if i.sees.startswith(";") else " ") + i.sees for i in column_information(column))


def sees(model_names: Sequence[str]) -> str:
  """"<titles>: <what their input holds>; ..." from each spec's `sees`, grouped."""
  groups: dict[str, list[str]] = {}
  for m in model_names:
    groups.setdefault(column_sees(m), []).append(column_title(m))
  return "; ".join(f"{', '.join(titles)}: {what}" for what, titles in groups.items())


BOLD_RULE = ("**Bold**: the best model of the row, only where its lead over the second-best mean "
             "exceeds the larger of the two cells' std over seed pairs and both cells' runs "
             "converged; references never bold.")


def bold_of(stats: dict[str, Stat]) -> Optional[str]:
  """The key of the best mean, if its gap to the second-best exceeds the larger of their stds
  and neither of the two has a run that did not converge (`Stat.unconverged`)."""
  ranked = sorted(((st.mean, k) for k, st in stats.items() if not math.isnan(st.mean)),
                  reverse=True)
  if len(ranked) < 2:
    return None
  (m1, k1), (m2, k2) = ranked[0], ranked[1]
  if stats[k1].unconverged or stats[k2].unconverged:
    return None
  spread = max(stats[k1].std, stats[k2].std)
  return k1 if not math.isnan(spread) and m1 - m2 > spread else None


def relaimpr_reference(row: str) -> Optional[str]:
  """RelaImpr's reference model of `row`: the first target-scenario model of Table 1 (Single)
  per scenario, the first other one (Mix) on #All."""
  names = models.names(table="table1", target_scenario=row != "all")
  return names[0] if names else None


# ----------------------------------------------------------------------------- significance

@dataclasses.dataclass
class SigTest:
  row: str
  metric: str
  baseline: str
  keys: list[RunKey]               # seed pairs both models have
  delong_p: list[float]            # per seed pair (auxiliary); empty for user-averaged metrics
  fisher_p: float                  # Fisher-combined DeLong (auxiliary)
  ttest_p: float                   # paired t-test over seed pairs: the `*`
  mean_diff: float
  star: bool
  note: str = ""
  unconverged: tuple[str, ...] = ()   # runs of either side that did not converge: no `*`


def significance_test(runs: Sequence[RunResult], row: str, metric: str, baseline: str,
                      mscan_stat: Stat, base_stat: Stat) -> SigTest:
  """M-scan vs `baseline` in `row`: the paired t-test over seed pairs (the `*`), and DeLong per
  seed pair on the joined predictions, Fisher-combined (auxiliary, pooled AUCs only)."""
  keys = sorted(set(mscan_stat.values) & set(base_stat.values))
  a_vals = [mscan_stat.values[k] for k in keys]
  b_vals = [base_stat.values[k] for k in keys]
  t = significance.paired_ttest(a_vals, b_vals) if keys else {"p_value": float("nan"),
                                                              "mean_diff": float("nan")}
  ps, notes, unmatched = [], [], 0
  label = METRICS[metric].label
  if label is not None:
    for k in keys:
      a, b = run_for(runs, MSCAN, row, k), run_for(runs, baseline, row, k)
      def delong(a=a, b=b):
        y, sa, sb, n_un = joined_scores(a, b, row, label)
        return {"p": float(significance.delong_test(y, sa, sb)["p_value"]), "unmatched": n_un}
      try:
        d = a.from_predictions(f"delong[{label}] row={row} against {b.name}", delong)
        unmatched += d["unmatched"]
        ps.append(d["p"])
      except (ReportError, ValueError) as e:
        ps.append(float("nan"))
        notes.append(f"seeds {format_keys([k])}: {e}")
  if unmatched:
    notes.append(f"{unmatched} test samples scored by only one of the two models were left out")
  fisher = (significance.combine_pvalues(ps) if ps and not any(math.isnan(p) for p in ps)
            else float("nan"))
  unconverged = tuple(sorted(set(mscan_stat.unconverged) | set(base_stat.unconverged)))
  star = (significance.significant(a_vals, b_vals, LEVEL) if keys and not unconverged
          else False)
  return SigTest(row, metric, baseline, keys, ps, fisher, t["p_value"], t["mean_diff"], star,
                 "; ".join(notes), unconverged)


# ----------------------------------------------------------------------------- Table 1

@dataclasses.dataclass
class Table1:
  dataset: str
  metric: str
  rows: list[str]                             # every scenario with a value, then "all"
  models: list[str]                           # Table 1's columns of models present: registry
                                              # order, each model's information switches after it
  references: list[str]                       # reference scorers and oracles present
  stats: dict[tuple[str, str], Stat]          # (row, column) -> Stat
  relaimpr: dict[tuple[str, str], float]
  relaimpr_ref: dict[str, tuple[str, float]]  # row -> (reference model, its mean)
  best: dict[str, str]                        # row -> model with the best mean
  bold: dict[str, str]                        # row -> model in bold (see `bold_of`)
  tests: dict[str, SigTest]                   # row -> M-scan vs best baseline

  @property
  def columns(self) -> list[str]:
    return self.models + self.references

  def relaimpr_shown(self, row: str) -> bool:
    """RelaImpr is shown in `row`: its reference has a mean >= RELAIMPR_MIN_REF."""
    ref = self.relaimpr_ref.get(row)
    return ref is not None and ref[1] >= RELAIMPR_MIN_REF


def build_table1(folder: Folder, metric: str) -> Optional[Table1]:
  runs = [r for r in table1_runs(folder.runs) if metric in r.results]
  if not runs:
    return None
  present = {r.column for r in runs}
  settings = [{}, *({k: v} for k, v in grids.INFORMATION)]
  cols = [c for m in models.names(table="table1") for ov in settings
          if (c := column_of(m, ov)) in present]
  refs = [m for m in models.specs() if is_reference(m) and m in present]
  candidates = rows_of(runs, metric)
  stats = {(row, m): cell_stat(runs, m, row, metric) for row in candidates for m in cols + refs}
  rows = [row for row in candidates if row == "all" or any(stats[(row, m)].n for m in cols + refs)]
  relaimpr, relaimpr_ref, best, bold, tests = {}, {}, {}, {}, {}
  for row in rows:
    ref = relaimpr_reference(row)
    if ref in cols and not math.isnan(ref_mean := stats[(row, ref)].mean):
      relaimpr_ref[row] = (ref, ref_mean)
      for m in cols:
        mean = stats[(row, m)].mean
        if m != ref and not math.isnan(mean):
          relaimpr[(row, m)] = metrics_lib.relaimpr(mean, ref_mean)
    row_stats = {m: stats[(row, m)] for m in cols if not math.isnan(stats[(row, m)].mean)}
    if row_stats:
      best[row] = max(row_stats, key=lambda m: row_stats[m].mean)
    if (b := bold_of(row_stats)) is not None:
      bold[row] = b
    base = {m: st for m, st in row_stats.items() if column_model(m) != MSCAN}
    if MSCAN in row_stats and base:
      b = max(base, key=lambda m: base[m].mean)
      tests[row] = significance_test(runs, row, metric, b, row_stats[MSCAN], base[b])
  return Table1(folder.dataset, metric, rows, cols, refs, stats, relaimpr, relaimpr_ref, best,
                bold, tests)


def _paper_table1(t: Table1) -> tuple[Optional[str], dict]:
  key = paper_results.paper_key(t.dataset)
  return key, (paper_results.TABLE1.get(key, {}) if key and t.metric == "auc" else {})


def _paper_row_shown(key: Optional[str], paper: dict, row: str) -> bool:
  return bool(paper) and row in paper and (row == "all" or paper_results.SCENARIOS_COMPARABLE[key])


def table1_markdown(t: Table1) -> list[str]:
  """The table, then the lines under it: what each column sees, the bold and `*` rules, where
  RelaImpr is left out and why."""
  key, paper = _paper_table1(t)
  head = ["Scenario", *(column_title(m) for m in t.columns)]
  lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
  for row in t.rows:
    cells = [scenario_label(row)]
    for m in t.columns:
      st = t.stats[(row, m)]
      text = fmt_stat(st, bold=t.bold.get(row) == m)
      if st.n and m == MSCAN and row in t.tests and t.tests[row].star:
        text += "\\*"
      if st.n and m in t.models and row in t.relaimpr_ref and m != t.relaimpr_ref[row][0]:
        text += f"<br>{fmt_pct(t.relaimpr.get((row, m)))}" if t.relaimpr_shown(row) else "<br>–"
      cells.append(text)
    lines.append("| " + " | ".join(cells) + " |")
    if _paper_row_shown(key, paper, row):
      pcells = [f"{scenario_label(row)} paper"]
      for m in t.columns:
        c = paper[row].get(m)
        if c is None:
          pcells.append("–" if m in paper_results.models() else "n/a")
          continue
        text = f"{c[0]:.4f}" + ("\\*" if c[2] else "")
        if c[1] is not None:
          text += f"<br>{c[1]:+.2f}%†"
        pcells.append(f"_{text}_")
      lines.append("| " + " | ".join(pcells) + " |")
  lines += ["", f"Sees (what each column's input holds): {sees(t.columns)}."]
  notes = [BOLD_RULE + " \\*: M-scan's mean above the best baseline's and paired t-test over seed "
           f"pairs p < {LEVEL} (see the significance table)."]
  if t.references:
    notes.append("[ref]: a reference scorer, [oracle]: reads the recorded truth; not models of "
                 "the paper, never bold, never the best baseline.")
  low = [row for row in t.rows if row in t.relaimpr_ref and not t.relaimpr_shown(row)]
  if low:
    notes.append(
        "RelaImpr –: its reference is below " + f"{RELAIMPR_MIN_REF} in "
        + ", ".join(f"{scenario_label(r)} ({models.title(t.relaimpr_ref[r][0])} "
                    f"{fmt(t.relaimpr_ref[r][1])})" for r in low)
        + "; near 0.5 the ratio (AUC − 0.5) / (AUC_ref − 0.5) divides by almost zero and swings "
        "to thousands of percent either way, so it is not printed.")
  n = sorted({st.n for st in t.stats.values() if st.n})
  if n:
    notes.append(f"Seed pairs (seed, data seed) per cell: {', '.join(map(str, n))}.")
  if any(column_information(m) for m in t.models):
    notes.append("A column whose title adds to a model's (\"+ DIN(H_u)\", \"+ click flags\") "
                 "is that model given other information: the equal-information rows, whose "
                 "input is under the table; M-scan's own variants are never the best baseline.")
  targets = [m for m in t.models if spec(m) is not None and spec(m).target_scenario]
  if targets:
    names = " and ".join(models.title(m) for m in targets)
    notes.append(f"{names} {'are' if len(targets) > 1 else 'is'} trained and tested on one "
                 "target scenario per run: no #All, and – in scenarios without a run.")
  return lines + [""] + [" ".join(notes)]


def table1_csv_rows(t: Table1) -> list[dict]:
  key, paper = _paper_table1(t)
  out = []
  for row in t.rows:
    ref = t.relaimpr_ref.get(row)
    for m in t.columns:
      st = t.stats[(row, m)]
      pc = paper[row].get(m) if _paper_row_shown(key, paper, row) else None
      out.append({"dataset": t.dataset, "metric": t.metric, "scenario": row, "model": m,
                  "kind": spec(m).kind if spec(m) is not None else "",
                  "n_seeds": st.n, "mean": st.mean, "std": st.std, "seeds": format_keys(st.values),
                  "not_converged": len(st.unconverged),
                  "relaimpr_pct": (t.relaimpr.get((row, m), "") if t.relaimpr_shown(row)
                                   else ""),
                  "relaimpr_ref": f"{ref[0]}" if ref else "",
                  "best": t.best.get(row) == m, "bold": t.bold.get(row) == m,
                  "star": m == MSCAN and row in t.tests and t.tests[row].star,
                  "paper_auc": pc[0] if pc else "",
                  "paper_relimp_pct": pc[1] if pc and pc[1] is not None else "",
                  "paper_star": pc[2] if pc else ""})
  return out


TABLE1_CSV_FIELDS = ("dataset", "metric", "scenario", "model", "kind", "n_seeds", "mean", "std",
                     "seeds", "not_converged", "relaimpr_pct", "relaimpr_ref", "best", "bold",
                     "star", "paper_auc", "paper_relimp_pct", "paper_star")


def significance_csv_rows(t: Table1) -> list[dict]:
  return [{"dataset": t.dataset, "metric": t.metric, "scenario": row, "baseline": s.baseline,
           "seeds": format_keys(s.keys), "mean_diff": s.mean_diff, "ttest_p": s.ttest_p,
           "star": s.star, "not_converged": " ".join(s.unconverged),
           "delong_p_per_seed_aux": " ".join(f"{p:.4g}" for p in s.delong_p),
           "fisher_p_aux": s.fisher_p, "note": s.note} for row, s in t.tests.items()]


SIGNIFICANCE_CSV_FIELDS = ("dataset", "metric", "scenario", "baseline", "seeds", "mean_diff",
                           "ttest_p", "star", "not_converged", "delong_p_per_seed_aux",
                           "fisher_p_aux", "note")

FISHER_NOTE = (
    "`*` = M-scan's mean above the best baseline's and the paired t-test over seed pairs "
    f"(seed, data seed) p < {LEVEL}. The DeLong columns are auxiliary: DeLong's test compares two "
    "correlated AUCs on one test set, and every seed pair with the same data seed reuses that "
    "test set, so the per-seed tests are not independent and Fisher's method, which assumes "
    "they are, overstates significance (it gave 5.7e-10 where the paired t-test gave 0.82). "
    "User-averaged metrics (GAUC) have no pooled test: DeLong –.")


def significance_markdown(tables: Sequence[Table1]) -> list[str]:
  lines = ["| Dataset | Metric | Scenario | Best baseline | M-scan − baseline | seed pairs "
           "| paired t p | `*` | DeLong p per seed pair (aux.) | Fisher p (aux.) |",
           "|---|---|---|---|---|---|---|---|---|---|"]
  for t in tables:
    for row, s in t.tests.items():
      lines.append(f"| {t.dataset} | {METRICS[t.metric].title} | {scenario_label(row)} | "
                   f"{models.title(s.baseline)} | {s.mean_diff:+.4f} | {len(s.keys)} | "
                   f"{fmt_p(s.ttest_p)} | "
                   f"{NOT_CONVERGED if s.unconverged else 'yes' if s.star else 'no'} | "
                   f"{', '.join(fmt_p(p) for p in s.delong_p) or '–'} | {fmt_p(s.fisher_p)} |")
  where: dict[tuple[str, str], list[str]] = {}     # (dataset, note) -> "metric #row", ...
  for t in tables:
    for row, s in t.tests.items():
      if s.note:
        where.setdefault((t.dataset, s.note), []).append(
            f"{METRICS[t.metric].title} {scenario_label(row)}")
  notes = [f"- {ds}, {', '.join(rows)}: {note}" for (ds, note), rows in where.items()]
  return lines + ["", FISHER_NOTE] + ([""] + notes if notes else [])


# ----------------------------------------------------------------------------- Table 2

def build_table2(folder: Folder, metric: str) -> dict[tuple[bool, bool], Stat]:
  """#All `metric` of M-scan's four ablation variants (use_saca, use_sbe) -> Stat."""
  runs = [r for r in table2_runs(folder.runs) if metric in r.results]
  out = {}
  for v in ABLATIONS:
    used = [r for r in runs if metric_value(r.results, metric, "all") is not None
            and (bool(r.setting("mscan.use_saca")), bool(r.setting("mscan.use_sbe"))) == v]
    out[v] = Stat({r.key: metric_value(r.results, metric, "all") for r in used},
                  not_converged(used))
  return out


def table2_references(folder: Folder, metric: str) -> dict[str, Stat]:
  """#All `metric` of the reference scorers and oracles present (registry order) -> Stat."""
  runs = reference_runs(folder.runs)
  out = {m: cell_stat(runs, m, "all", metric) for m in models.specs() if is_reference(m)}
  return {m: st for m, st in out.items() if st.n}


def table2_markdown(folders: Sequence[Folder], metric: str) -> list[str]:
  """Rows: M-scan's variants, then the references present; one column per dataset (and the
  paper's beside it on aliccp, cloudtheme). Then what each row sees and the bold rule."""
  cols, data, refs = [], [], []     # data: one {row: Stat (ours) or float (paper)} per column
  for f in folders:
    st = build_table2(f, metric)
    if not any(s.n for s in st.values()):
      continue
    ref = table2_references(f, metric)
    cols.append(f.dataset)
    data.append({**st, **ref})
    refs += [m for m in ref if m not in refs]
    key = paper_results.paper_key(f.dataset)
    if key and metric == "auc":
      cols.append(f"{f.dataset} (paper)")
      data.append({v: paper_results.TABLE2[v][key] for v in ABLATIONS})
  if not cols:
    return []
  refs = [m for m in models.specs() if m in refs]
  title = models.title(MSCAN)
  lines = ["| Model | SACA | SBE | " + " | ".join(cols) + " |",
           "|---|---|---|" + "---|" * len(cols)]
  for row in [*ABLATIONS, *refs]:
    if isinstance(row, tuple):
      cells = [title, "✓" if row[0] else "×", "✓" if row[1] else "×"]
    else:
      cells = [column_title(row), "–", "–"]
    for col, d in zip(cols, data):
      x = d.get(row)
      if col.endswith(" (paper)"):
        cells.append("n/a" if x is None else f"_{x:.4f}_")
      elif x is None:
        cells.append("–")
      else:
        bold = bold_of({v: d[v] for v in ABLATIONS}) == row
        cells.append(fmt_stat(x, bold=bold) + (f" (n={x.n})" if x.n else ""))
    lines.append("| " + " | ".join(cells) + " |")
  mscan_sees = spec(MSCAN).sees if spec(MSCAN) is not None else "?"
  line = (f"Sees: {title} with SACA: {mscan_sees}; without SACA the co-attention term "
          "R_h = SACA(H_u, S_u) of Eq. (5)-(6) is dropped; the SBE changes the training "
          "objective and the inference rule (Eq. 8-12), not the input.")
  if refs:
    line += f" {sees(refs)}."
  notes = [line, BOLD_RULE.replace("model of the row", "variant of the column")]
  if refs:
    notes.append("Rows marked [ref] / [oracle] are references (their default runs, #All), not "
                 "ablations.")
  return lines + ["", " ".join(notes)]


def table2_csv_rows(folders: Sequence[Folder]) -> list[dict]:
  out = []
  for f in folders:
    key = paper_results.paper_key(f.dataset)
    for metric in METRICS:
      st = build_table2(f, metric)
      bold = bold_of(st)
      for v, s in st.items():
        if s.n == 0:
          continue
        out.append({"dataset": f.dataset, "metric": metric, "model": MSCAN, "use_saca": v[0],
                    "use_sbe": v[1], "n_seeds": s.n, "mean": s.mean, "std": s.std,
                    "not_converged": len(s.unconverged), "bold": bold == v,
                    "paper_auc": paper_results.TABLE2[v][key] if key and metric == "auc" else ""})
      if any(s.n for s in st.values()):
        for m, s in table2_references(f, metric).items():
          out.append({"dataset": f.dataset, "metric": metric, "model": m, "use_saca": "",
                      "use_sbe": "", "n_seeds": s.n, "mean": s.mean, "std": s.std,
                      "not_converged": len(s.unconverged), "bold": False, "paper_auc": ""})
  return out


TABLE2_CSV_FIELDS = ("dataset", "metric", "model", "use_saca", "use_sbe", "n_seeds", "mean", "std",
                     "not_converged", "bold", "paper_auc")
