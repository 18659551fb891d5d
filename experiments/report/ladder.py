"""The ladder from Mix to M-scan (`grids.LADDER`): each row adds one module to the row above.

Per row, at the default data: the mean and 95 % t-based CI over seed pairs (seed, data_seed) of
the Table 1 measures in `LADDER_MEASURES` (mean per-scenario AUC, #All AUC, GAUC and, on data
that knows the true interest, the per-user pooled true-interest AUC); per step, the paired
difference against the row above, with its 95 % CI (a `mechanisms.Gain`: the same pairing, CI and
verdicts as the module contrasts, and the same "not converged" rule, `loading.not_converged`).
Bold: the row with the best mean, by the report's bold rule (`tables.bold_of`).
"""

from __future__ import annotations

import dataclasses
from typing import Optional, Sequence

from experiments import grids
from experiments.report import mechanisms as mech
from experiments.report.loading import (NOT_CONVERGED, Folder, RunResult, Stat, column_of,
                                        not_converged)
from experiments.report.tables import BOLD_RULE, bold_of, column_sees, fmt

LADDER_TABLE = "Table L"
LADDER_MEASURES = ("auc.mean_per_scenario", "auc.all", "gauc", "true_interest_user_auc")


@dataclasses.dataclass
class Ladder:
  dataset: str
  rows: list[tuple[str, dict]]                   # (title, overrides) of the rows present
  measures: list[str]                            # of LADDER_MEASURES, those with values
  stats: dict[tuple[str, str], Stat]             # (title, measure) -> per-seed-pair values
  steps: dict[tuple[str, str], mech.Gain]        # (title, measure) -> its row minus the one above

  def step_gains(self, title: str) -> list[mech.Gain]:
    return [g for m in self.measures if (g := self.steps.get((title, m))) is not None]


def build_ladder(folder: Folder, ladder: Sequence[tuple[str, dict]] = grids.LADDER
                 ) -> Optional[Ladder]:
  """The ladder of `folder`'s runs at the default data; None without two adjacent rows present
  (no step)."""
  index = mech.index_runs(folder.runs)
  runs_of: dict[str, list[RunResult]] = {
      title: index.get((mech.setting_of(ov), mech.DEFAULT), []) for title, ov in ladder}
  rows = [(title, ov) for title, ov in ladder if runs_of[title]]
  contrasts = {title: grids.Contrast(ov, below_ov, f"{title} against {below}")
               for (below, below_ov), (title, ov) in zip(ladder, ladder[1:])
               if runs_of[title] and runs_of[below]}
  if not contrasts:
    return None
  stats: dict[tuple[str, str], Stat] = {}
  for title, _ in rows:
    for m in LADDER_MEASURES:
      used = [r for r in runs_of[title] if mech.MEASURES[m].value(r.results) is not None]
      if used:
        stats[(title, m)] = Stat({r.key: mech.MEASURES[m].value(r.results) for r in used},
                                 not_converged(used))
  measures = [m for m in LADDER_MEASURES if any(k[1] == m for k in stats)]
  study = mech.build_study(folder, contrasts)
  steps = {(title, m): g for title in contrasts for m in measures
           if (g := study.get(title, mech.DEFAULT, m)) is not None}
  return Ladder(folder.dataset, rows, measures, stats, steps)


def row_sees(overrides: dict) -> str:
  """What the row's input holds (the registry's `sees`), and what its switches drop."""
  text = column_sees(column_of(overrides["model"], overrides))
  if overrides.get("mscan.use_saca") is False:
    text += ", without SACA(H_u, S_u): H_u unread"
  if overrides.get("mscan.use_sbe") is False:
    text += "; no SBE (trained and ranked on y_m)"
  return text


def _row_cell(st: Optional[Stat], bold: bool) -> str:
  if st is None or not st.n:
    return "–"
  mean, lo, hi = mech.mean_ci(list(st.values.values()))
  text = f"**{fmt(mean)}**" if bold else fmt(mean)
  if st.n >= 2:
    text += f" (CI {fmt(lo)}..{fmt(hi)})"
  if st.unconverged:
    text += f" ({NOT_CONVERGED}: {len(st.unconverged)}/{st.n})"
  return text


def ladder_markdown(ladder: Ladder) -> list[str]:
  """Table L: per row its means with their CI and, under them, the step from the row above."""
  head = ["Row", "sees", "pairs", *(mech.MEASURES[m].short for m in ladder.measures)]
  lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
  titles = [t for t, _ in ladder.rows]
  bold = {m: bold_of({t: ladder.stats[(t, m)] for t in titles if (t, m) in ladder.stats})
          for m in ladder.measures}
  for title, ov in ladder.rows:
    n = sorted({st.n for m in ladder.measures if (st := ladder.stats.get((title, m)))})
    cells = [title, row_sees(ov), ", ".join(map(str, n)) or "–"]
    for m in ladder.measures:
      text = _row_cell(ladder.stats.get((title, m)), bold[m] == title)
      if (g := ladder.steps.get((title, m))) is not None:
        text += f"<br>step: {g.text}"
      cells.append(text)
    lines.append("| " + " | ".join(cells) + " |")
  return lines + ["", (
      "Each row adds one module to the row above (`grids.LADDER`), at the default data. Cells: "
      "mean and 95 % t-based CI over seed pairs (seed, data seed); step: the paired difference "
      "against the row above (row − row above per seed pair), mean and 95 % CI; a step whose "
      f"runs did not all converge is printed \"{NOT_CONVERGED}\" and not judged. "
      + BOLD_RULE.replace("model of the row", "row of the column")
      + " Data: `ladder.csv`.")]


def ladder_csv_rows(ladder: Ladder) -> list[dict]:
  out = []
  for title, _ in ladder.rows:
    for m in ladder.measures:
      st, g = ladder.stats.get((title, m)), ladder.steps.get((title, m))
      if st is None:
        continue
      mean, lo, hi = mech.mean_ci(list(st.values.values()))
      out.append({"dataset": ladder.dataset, "row": title, "measure": m, "n_pairs": st.n,
                  "mean": mean, "ci_lo": lo, "ci_hi": hi,
                  "not_converged": " ".join(st.unconverged),
                  "step_n_pairs": g.n if g else "", "step_mean": g.mean if g else "",
                  "step_ci_lo": g.lo if g else "", "step_ci_hi": g.hi if g else "",
                  "step_judged": g.judged if g else ""})
  return out


LADDER_CSV_FIELDS = ("dataset", "row", "measure", "n_pairs", "mean", "ci_lo", "ci_hi",
                     "not_converged", "step_n_pairs", "step_mean", "step_ci_lo", "step_ci_hi",
                     "step_judged")
