"""report.md, the CSVs, and the committable copy of a report folder (`--report_dir`).

The copy holds each folder's grid.json and each finished run's results.json and config.json (no
checkpoints, no predictions), with no absolute path (`portable`): a path inside the grid folder
(config.json's train.init_from, a sibling Mix run) becomes relative to the JSON file's own folder,
as `train.py` reads init_from; any other absolute path (data.cache_dir, data.path: folders of the
machine that ran the grid) is reduced to its last component.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import os
from typing import Any, Optional, Sequence

from experiments import grids, paper_results
from experiments.report import convergence as conv
from experiments.report import ladder as ladder_lib
from experiments.report import mechanisms as mech
from experiments.report import summary
from experiments.report.figures import (figure5_data, figure6_data, plot, plot_dose_response,
                                        plot_learning_curves, plot_sbe_c, plot_scenario_factor)
from experiments.report.loading import DERIVED_FILE, METRICS, MSCAN, Folder, metric_value
from experiments.report.tables import (LEVEL, RELAIMPR_MIN_REF, SIGNIFICANCE_CSV_FIELDS,
                                       TABLE1_CSV_FIELDS, TABLE2_CSV_FIELDS, build_table1,
                                       significance_csv_rows, significance_markdown,
                                       table1_csv_rows, table1_markdown, table2_csv_rows,
                                       table2_markdown)
from mscan_jax import models
from mscan_jax.training import rundir


def write_csv(path: str, rows: Sequence[dict], fields: Optional[Sequence[str]] = None) -> None:
  fields = list(fields or (rows[0].keys() if rows else []))
  with open(path, "w", newline="") as f:
    w = csv.DictWriter(f, fieldnames=fields)
    w.writeheader()
    for r in rows:
      w.writerow({k: (f"{v:.6g}" if isinstance(v, float) and not isinstance(v, bool) else v)
                  for k, v in r.items()})


def _blank(x: Optional[float]) -> Any:
  return "" if x is None else x


def runs_csv_rows(folders: Sequence[Folder]) -> list[dict]:
  out = []
  for f in folders:
    for r in f.runs:
      res = r.results
      out.append({"dataset": f.dataset, "name": r.name, "model": r.model, "seed": r.seed,
                  "data_seed": r.data_seed,
                  "overrides": json.dumps({k: v for k, v in r.overrides.items()
                                           if k not in ("model", "seed")}),
                  **{f"{m}_all": _blank(metric_value(res, m, "all")) for m in METRICS},
                  "logloss": res.get("logloss", ""),
                  "c": res.get("c", ""), "best_step": res.get("best_step", ""),
                  "steps": res.get("steps", ""), "stop_reason": res.get("stop_reason", ""),
                  "best_epoch": _blank(conv.best_epoch(r)), "wall_s": r.timing.get("wall_s", ""),
                  "cpu_s": r.timing.get("cpu_s", "")})
  return out


RUNS_CSV_FIELDS = ("dataset", "name", "model", "seed", "data_seed", "overrides",
                   *(f"{m}_all" for m in METRICS), "logloss", "c", "best_step", "steps",
                   "stop_reason", "best_epoch", "wall_s", "cpu_s")


def write_report(folders: Sequence[Folder], out_dir: str,
                 c_values: Sequence[float] = grids.C_VALUES) -> str:
  """Writes report.md, the CSVs and the PNGs into `out_dir`; returns report.md's path."""
  os.makedirs(out_dir, exist_ok=True)
  tables = [t for f in folders for metric in METRICS
            if (t := build_table1(f, metric)) is not None]
  fig5 = [row for f in folders for row in figure5_data(f, c_values)]
  fig6 = [row for f in folders for row in figure6_data(f)]
  studies = mechanism_studies(folders, c_values)
  ladders = [lad for f in folders if (lad := ladder_lib.build_ladder(f)) is not None]
  rows = [(f.dataset, conv.convergence_rows(f)) for f in folders]
  curves = [conv.curve_data(f) for f in folders]
  md = _markdown(folders, tables, fig5, fig6, out_dir, studies, ladders, rows, curves)
  write_csv(os.path.join(out_dir, "convergence.csv"),
            [r for ds, rs in rows for r in conv.convergence_csv_rows(ds, rs)],
            conv.CONVERGENCE_CSV_FIELDS)
  write_csv(os.path.join(out_dir, "learning_curves.csv"), [r for c, _ in curves for r in c],
            conv.CURVE_CSV_FIELDS)
  write_csv(os.path.join(out_dir, "ladder.csv"),
            [r for lad in ladders for r in ladder_lib.ladder_csv_rows(lad)],
            ladder_lib.LADDER_CSV_FIELDS)
  write_csv(os.path.join(out_dir, "table1.csv"),
            [r for t in tables for r in table1_csv_rows(t)], TABLE1_CSV_FIELDS)
  write_csv(os.path.join(out_dir, "significance.csv"),
            [r for t in tables for r in significance_csv_rows(t)], SIGNIFICANCE_CSV_FIELDS)
  write_csv(os.path.join(out_dir, "table2.csv"), table2_csv_rows(folders), TABLE2_CSV_FIELDS)
  write_csv(os.path.join(out_dir, "figure5_c.csv"), fig5,
            ["dataset", "metric", "c", "n_seeds", "mean", "std", "min", "max", "default_c"])
  write_csv(os.path.join(out_dir, "figure6_alpha.csv"), fig6,
            ["dataset", "metric", "alpha", "n_seeds", "mean", "std", "min", "max"])
  write_csv(os.path.join(out_dir, "runs.csv"), runs_csv_rows(folders), RUNS_CSV_FIELDS)
  write_csv(os.path.join(out_dir, "module_gains.csv"),
            [r for st in studies for r in mech.gains_csv_rows(st.study)], mech.GAINS_CSV_FIELDS)
  write_csv(os.path.join(out_dir, "mechanism_sbe_c.csv"),
            [r for st in studies for r in st.c_rows], mech.SBE_C_CSV_FIELDS)
  write_csv(os.path.join(out_dir, "scenario_factor.csv"),
            [r for st in studies for r in st.points], mech.SCENARIO_FACTOR_CSV_FIELDS)
  write_csv(os.path.join(out_dir, "scenario_factor_spearman.csv"),
            [r for st in studies for r in mech.spearman_csv_rows(st.study.dataset, st.spearman)],
            mech.SPEARMAN_CSV_FIELDS)
  path = os.path.join(out_dir, "report.md")
  with open(path, "w") as f:
    f.write(md)
  return path


@dataclasses.dataclass
class StudyData:
  """One folder's mechanism study: the gains, the SBE's c sweep per data level (only with dial
  levels: at the default data it is Figure 5), the scenario factors and their Spearman table."""
  study: mech.Study
  c_rows: list[dict]
  points: list[dict]
  spearman: dict

  @property
  def tradeoffs(self) -> list[mech.CTradeoff]:
    return mech.c_tradeoffs(self.c_rows)


def mechanism_studies(folders: Sequence[Folder], c_values: Sequence[float]) -> list[StudyData]:
  out = []
  for f in folders:
    study = mech.build_study(f, prefix=f"{mech.slug(f.dataset)}_" if len(folders) > 1 else "")
    c_rows = mech.sbe_c_data(f, c_values) if study.dials else []
    points = mech.scenario_factor_points(f)
    out.append(StudyData(study, c_rows, points, mech.spearman_cells(points)))
  return out


def _mechanism_section(studies: Sequence[StudyData], out_dir: str) -> list[str]:
  """What each module buys: Table G; with dial levels, Table M and its dose-response figure per
  module and the SBE's c trade-off per level; Table S and the scenario-factor figure."""
  L = ["## What each module buys, measured", ""]
  shown = [st for st in studies if st.study.contrasts or st.points]
  if not shown:
    return L + ["No module has runs on both sides of its contrast (`grids.MODULE_CONTRASTS`; "
                "`--grid=table2` or `--grid=mechanisms`).", ""]
  L += ["Each module of `grids.MODULE_CONTRASTS` against its control, paired by seed pair "
        "(seed, data seed): gain = treatment − control; cells: mean gain, 95 % t-based CI over "
        "the pairs (mean ± t(0.975, n − 1) · sd / √n). Data: `module_gains.csv`.", ""]
  for st in shown:
    study, ds = st.study, (f"{st.study.dataset}: " if len(studies) > 1 else "")
    if study.contrasts:
      L += [f"### {ds}{mech.DEFAULT_TABLE}: gains at the default data (every dial moderate)", ""]
      L += mech.default_table_markdown(study) + [""]
    moved = [m for m in study.contrasts if any(lv != mech.DEFAULT for lv in study.levels(m))]
    for module in moved:
      L += [f"### {ds}{mech.module_table_name(module)}", ""] + mech.module_table_markdown(
          study, module) + [""]
      if plot_dose_response(study, module, os.path.join(out_dir, study.figure_file(module))):
        L += [f"![{module}]({study.figure_file(module)})", ""]
    if st.c_rows:
      name = study.prefix + summary.SBE_C_FIGURE
      L += [f"### {ds}The SBE's c trade-off at each dial level", ""]
      if plot_sbe_c(st.c_rows, os.path.join(out_dir, name)):
        L += [f"![c trade-off]({name})", "",
              "The paper's M-scan at each dial's placebo, moderate (the default) and strong "
              "level; c swept over the saved y_m and y_s (Eq. 12); #All observed-click AUC and "
              "the per-user pooled true-interest AUC; band: 95 % CI over seed pairs; dotted: the "
              "runs' c. Data: `mechanism_sbe_c.csv`.", ""]
    if st.points:
      name = study.prefix + summary.SCENARIO_FACTOR_FIGURE
      L += [f"### {ds}{mech.SPEARMAN_TABLE}: does y_s learn the scenario bias?", ""]
      L += mech.spearman_markdown(st.spearman) + [""]
      if plot_scenario_factor(st.points, st.spearman, os.path.join(out_dir, name)):
        L += [f"![scenario factor]({name})", "",
              "Per scenario and run, the mean sigmoid(y_s) against the scenario's true "
              "examination rate (results.json `scenario_factor`), one colour per M-scan "
              "variant, one panel per exposure_bias level. Data: `scenario_factor.csv`, "
              "`scenario_factor_spearman.csv`.", ""]
  return L


def _definitions(folders: Sequence[Folder]) -> list[str]:
  L = ["Numbers are mean ± std over seed pairs (model seed, data seed): sample std, ddof 1; no ± "
       "with one pair. A run is identified by its seed pair, so the runs of one model seed on two "
       "data seeds count twice.",
       "",
       f"RelaImpr = ((AUC − 0.5) / (AUC_ref − 0.5) − 1) × 100 % of the mean values, against "
       f"{models.title(models.names(table='table1', target_scenario=True)[0])} per scenario and "
       f"{models.title(models.names(table='table1', target_scenario=False)[0])} on #All "
       f"(§4.1.2); printed – where AUC_ref < {RELAIMPR_MIN_REF}, where the ratio divides by "
       "almost zero and swings to thousands of percent (the tables say where).",
       "",
       f"\\*: {models.title(MSCAN)}'s mean is above the best baseline's (the highest mean among "
       f"the other models of the row) and the paired t-test over seed pairs gives p < {LEVEL} "
       "(so no \\* with fewer than 2 pairs). DeLong's test per seed pair, combined by Fisher's "
       "method, is shown beside it as an auxiliary column only (see under the significance "
       "table why). **Bold**: the best model of the row, only where its lead over the "
       "second-best exceeds the larger of the two cells' std over seed pairs and both cells' runs "
       "converged.",
       "",
       "Reference scorers ([ref]: no sequence features, nothing of M-scan) and oracles "
       "([oracle]: read the recorded truth) present in the folder are shown beside the models in "
       "every table, so a reader sees at once whether a model beats them; they are never bold and "
       "never the best baseline. Under each table: what each column's input holds (its 'sees', "
       "from the model registry `mscan_jax.models`).",
       "",
       "Metrics: " + "; ".join(f"`{m.key}`: {m.title}" for m in METRICS.values())
       + ". GAUC and the per-user true-interest AUC are single numbers per run (of the whole test "
       "set, or of a target-scenario model's one scenario), so their tables have a #All row and "
       "the target-scenario models' rows; – where a run does not hold the metric."]
  if any(paper_results.paper_key(f.dataset) for f in folders):
    L += ["", "_Italic rows/columns marked paper are the paper's own numbers "
          "(`experiments/paper_results.py`; n/a: not a column of the paper). † The paper's RelImp "
          "column is the plain ratio AUC / AUC_ref − 1, not the RelaImpr above. The paper's "
          "Aliccp #1..#3 are assumed to be our scenario ids 1..3; its Cloud Theme scenarios are "
          "unnamed, so only #All is shown._"]
  return L


def _convergence_section(folders: Sequence[Folder], rows, curves, out_dir: str) -> list[str]:
  """Tuning and convergence: Table C per folder, then the learning curves' figure."""
  L = ["## Tuning and convergence", ""]
  for f, (_, rs) in zip(folders, rows):
    L += [f"### {f.dataset}: {conv.CONVERGENCE_TABLE}", ""] + conv.convergence_markdown(rs) + [""]
  L += ["### Learning curves", ""]
  all_curves = [r for c, _ in curves for r in c]
  if plot_learning_curves(all_curves, [p for _, b in curves for p in b],
                          os.path.join(out_dir, conv.CURVES_FIGURE)):
    L += [f"![Learning curves]({conv.CURVES_FIGURE})", "",
          "Validation score (each run's select_metric, the early-stopping criterion) against "
          "epoch at the default data, one line per model row: the mean over the seed pairs whose "
          "runs reached the epoch; band: min..max over those runs (it thins where runs stopped, "
          "and a line ends where its last run stopped); dots: each run's best epoch. Data: "
          "`learning_curves.csv`."]
  else:
    L += ["No run holds validation records (metrics.jsonl, or their record in derived.json) "
          "with results.json steps_per_epoch."]
  return L


def _ladder_section(ladders: Sequence[ladder_lib.Ladder]) -> list[str]:
  L = ["## From Mix to M-scan: the ladder", ""]
  if not ladders:
    return L + ["No two adjacent rows of `grids.LADDER` have runs at the default data "
                "(`--grid=table1` and `--grid=table2`).", ""]
  for lad in ladders:
    L += [f"### {lad.dataset}: {ladder_lib.LADDER_TABLE}", ""] + ladder_lib.ladder_markdown(lad)
    L += [""]
  return L


def _markdown(folders, tables, fig5, fig6, out_dir, studies=(), ladders=(), rows=(),
              curves=()) -> str:
  n_runs = sum(len(f.runs) for f in folders)
  seeds = sorted({r.seed for f in folders for r in f.runs})
  data_seeds = sorted({r.data_seed for f in folders for r in f.runs})
  L = ["# M-scan: experiment report (paper §4)", "",
       f"Generated by `python -m experiments.report` from {n_runs} finished runs "
       f"(seeds {', '.join(map(str, seeds)) or '–'}; data seeds "
       f"{', '.join(map(str, data_seeds)) or '–'}) in: "
       + ", ".join(f"`{os.path.relpath(f.path, out_dir)}` ({f.dataset}, size "
                   f"{f.info.get('size', '?')})" for f in folders) + "."]
  unfinished = [f"{f.dataset}: {', '.join(f.unfinished)}" for f in folders if f.unfinished]
  if unfinished:
    L += ["", "Unfinished runs (not used): " + "; ".join(unfinished) + "."]
  L += conv.training_line(folders)
  L += [""] + summary.summary_markdown([(st.study, st.tradeoffs, st.spearman) for st in studies],
                                       ladders)
  L += _definitions(folders)
  L += [""] + _convergence_section(folders, rows, curves, out_dir)
  # Table 1
  L += ["", "## Table 1: every scenario and over all scenarios (#All)", ""]
  if not tables:
    L += ["No finished Table 1 runs (`--grid=table1`)."]
  for t in tables:
    L += [f"### {t.dataset}: {METRICS[t.metric].title}", ""] + table1_markdown(t) + [""]
  if any(t.tests for t in tables):
    L += [f"### Significance of {models.title(MSCAN)} against the best baseline", ""]
    L += significance_markdown(tables)
  # Table 2
  L += ["", "## Table 2: ablation of SACA and SBE (#All)", ""]
  any2 = False
  for metric in METRICS:
    lines = table2_markdown(folders, metric)
    if lines:
      any2 = True
      L += [f"### {METRICS[metric].title}", ""] + lines + [""]
  if not any2:
    L += ["No finished Table 2 runs (`--grid=table2`).", ""]
  L += _ladder_section(ladders)
  # Figures
  L += ["## Figure 5: #All AUC against c of Eq. (12)", ""]
  if plot(fig5, "c", os.path.join(out_dir, "figure5_c.png"),
          "M-scan: #All AUC against c (Eq. 12), no retraining", "c"):
    L += ["![Figure 5](figure5_c.png)", "",
          "c is swept over the saved y_m and y_s of the default M-scan runs (one trained model per "
          "seed pair); bars and band: ± 1 std over seed pairs; the dotted line the c the runs "
          "used. Data: `figure5_c.csv`.", ""]
  else:
    L += ["No finished default M-scan runs with the SBE (`--grid=c`).", ""]
  L += ["## Figure 6: #All AUC against α of Eq. (11)", ""]
  if len({r["alpha"] for r in fig6}) < 2:
    L += ["Fewer than two α values have finished runs (`--grid=alpha`).", ""]
  elif plot(fig6, "alpha", os.path.join(out_dir, "figure6_alpha.png"),
            "M-scan: #All AUC against α (Eq. 11), one training per α", "α", categorical=True):
    L += ["![Figure 6](figure6_alpha.png)", "",
          "One trained M-scan per α and seed pair; bars and band: ± 1 std over seed pairs; the x "
          "axis is categorical. Data: `figure6_alpha.csv`.", ""]
  else:
    L += ["No finished α runs (`--grid=alpha`).", ""]
  L += _mechanism_section(studies, out_dir)
  timed = [r.timing for f in folders for r in f.runs if "cpu_s" in r.timing]
  L += ["## Files", "",
        "`table1.csv`, `significance.csv`, `table2.csv`, `figure5_c.csv`, `figure6_alpha.csv`, "
        "`module_gains.csv`, `mechanism_sbe_c.csv`, `scenario_factor.csv`, "
        "`scenario_factor_spearman.csv`, `convergence.csv`, `learning_curves.csv`, "
        "`ladder.csv`, "
        "`runs.csv` (one line per run, with its wall and CPU seconds). In a `--report_dir` copy, "
        "each run's results.json and config.json and the grid's grid.json hold no absolute path: "
        "a path inside the grid folder (train.init_from) is relative to the file's folder, any "
        "other (data.cache_dir, data.path) is reduced to its last component.", ""]
  if timed:
    L += [f"Training time of the {len(timed)} timed runs: "
          f"{sum(t['wall_s'] for t in timed) / 3600:.2f} h wall (summed over runs, as run by "
          f"`experiments.run_grid`, possibly several at a time), "
          f"{sum(t['cpu_s'] for t in timed) / 3600:.2f} CPU hours.", ""]
  return "\n".join(L)


# ----------------------------------------------------------------------------- committable copy

def portable(value: Any, *, grid_dir: str, base: str) -> Any:
  """`value` (parsed JSON) with every absolute path made portable: one inside `grid_dir` becomes
  relative to `base` (the folder of the file it is read from), any other is reduced to its last
  component."""
  if isinstance(value, dict):
    return {k: portable(v, grid_dir=grid_dir, base=base) for k, v in value.items()}
  if isinstance(value, list):
    return [portable(v, grid_dir=grid_dir, base=base) for v in value]
  if isinstance(value, str) and os.path.isabs(value):
    path, grid = os.path.normpath(value), os.path.abspath(grid_dir)
    if path == grid or path.startswith(grid + os.sep):
      return os.path.relpath(path, os.path.abspath(base))
    return os.path.basename(path) or "."
  return value


def _copy_json(src: str, dest: str, *, grid_dir: str) -> None:
  with open(src) as f:
    value = json.load(f)
  with open(dest, "w") as f:
    json.dump(portable(value, grid_dir=grid_dir, base=os.path.dirname(src)), f, indent=2)


def write_record(folder: Folder, dest: str) -> None:
  """The numbers this report computed from `folder`'s predictions (`loading.DERIVED_FILE`, see
  `RunResult.from_predictions`) into `dest`, atomically: a report made from a copy without
  predictions reads them back."""
  record = portable(folder.derived.used, grid_dir=folder.path, base=dest)
  rundir.write_text_atomic(os.path.join(dest, DERIVED_FILE),
                           json.dumps(record, indent=0, sort_keys=True))


def copy_run_files(folders: Sequence[Folder], report_dir: str) -> None:
  """Copies each folder's grid.json and each finished run's run.json, results.json and
  config.json (no checkpoints, no predictions) into `report_dir` (under `<dataset>/` when several
  folders), with no absolute path (`portable`), and the record of the numbers computed from the
  predictions (`write_record`): `python -m experiments.report --out=<report_dir>` reproduces the
  report from the copy."""
  for f in folders:
    dest = os.path.join(report_dir, f.dataset) if len(folders) > 1 else report_dir
    os.makedirs(dest, exist_ok=True)
    if os.path.exists(os.path.join(f.path, "grid.json")):
      _copy_json(os.path.join(f.path, "grid.json"), os.path.join(dest, "grid.json"),
                 grid_dir=f.path)
    write_record(f, dest)
    for r in f.runs:
      os.makedirs(os.path.join(dest, "runs", r.name), exist_ok=True)
      for name in ("run.json", "results.json", "config.json"):
        if os.path.exists(os.path.join(r.workdir, name)):
          _copy_json(os.path.join(r.workdir, name), os.path.join(dest, "runs", r.name, name),
                     grid_dir=f.path)
